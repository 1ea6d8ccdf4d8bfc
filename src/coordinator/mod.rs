//! The coordinator: core 0's replicated state machine, in three tasks. The raft node
//! (`raft`) owns the `RawNode`, the WAL and the peer transport; the applier (`apply`) applies
//! committed entries in log order and owns the revision counter, leases, auth, members and
//! alarms; the watch hub (`watch`) fans applied events out to watch streams. This module holds
//! what they share and the `Send` handle every core uses to reach them.

pub mod apply;
pub mod auth;
pub mod checkpoint;
pub mod codec;
pub mod compaction_hash;
pub mod lease;
pub mod members;
pub mod raft;
pub mod rpc;
pub mod seams;
pub mod snapshot;
pub mod transfer;
pub mod wal;
pub mod wal_legacy;
pub mod watch;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::{select, Either};
use shards::{DeleteRangeResponse, PutResponse, RequestOp, TxnRequest, TxnResponse};

use crate::error::EtcdError;
pub use codec::{AlarmKind, WriteRequest};

/// Proposals and read-index requests waiting in the coordinator's inbox before senders wait.
pub const COORDINATOR_INBOX_MAX: usize = 16 * 1024;
/// etcd refuses new proposals while this many committed entries are not yet applied.
pub const UNAPPLIED_ENTRIES_MAX: u64 = 5000;

/// State the coordinator publishes for every core to read without a round trip: the revisions
/// a read resolves against and what Status reports. Only the coordinator writes it.
#[derive(Debug, Default)]
pub struct Published {
    pub revision: AtomicI64,
    pub compact_revision: AtomicI64,
    pub raft_term: AtomicU64,
    pub leader: AtomicU64,
    pub committed_index: AtomicU64,
    pub applied_index: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub serving: AtomicBool,
    /// This member is a learner (replicated to, not voting).
    pub is_learner: AtomicBool,
    /// The store's size as the quota sees it: the shards' bytes, history included.
    pub db_size: AtomicI64,
    /// Some member has the NOSPACE alarm raised.
    pub nospace: AtomicBool,
    /// Live keys over all shards (refreshed with `db_size`).
    pub keys: AtomicU64,
    /// Versions written and keys deleted by applied entries since start (etcd's
    /// etcd_mvcc_put_total and etcd_mvcc_delete_total).
    pub puts_applied: AtomicU64,
    pub deletes_applied: AtomicU64,
    /// The auth state every core checks permissions against, and the member's tokens.
    pub auth: auth::AuthShared,
    /// The hashes the last compactions took, for HashKV at their revisions.
    pub compaction_hashes: compaction_hash::CompactionHashes,
}

impl Published {
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Acquire)
    }
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision.load(Ordering::Acquire)
    }
    pub fn raft_term(&self) -> u64 {
        self.raft_term.load(Ordering::Acquire)
    }
    pub fn leader(&self) -> u64 {
        self.leader.load(Ordering::Acquire)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteResponse {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact,
    LeaseGrant {
        id: i64,
        ttl_secs: i64,
    },
    LeaseRevoke,
    /// Whether the alarm was actually raised or cleared by this request.
    Alarm {
        changed: bool,
    },
    /// An auth mutation was applied.
    Auth,
    /// The simple token every member recorded for an Authenticate.
    Authenticated {
        token: String,
    },
    /// The membership after a member change.
    Members(Vec<members::Member>),
}

/// What LeaseTimeToLive reports.
#[derive(Clone, Debug)]
pub struct LeaseInfo {
    pub remaining_secs: i64,
    pub granted_ttl_secs: i64,
    pub keys: Vec<Bytes>,
}

#[derive(Clone, Debug)]
pub struct WriteOutcome {
    /// The store revision after the write: the response header's revision.
    pub revision: i64,
    pub response: WriteResponse,
}

pub type WriteReply = oneshot::Sender<Result<WriteOutcome, EtcdError>>;

pub enum CoordMsg {
    Propose {
        req: WriteRequest,
        reply: WriteReply,
    },
    /// Answered once this member has applied everything committed when the request arrived
    /// (raft ReadIndex): a read after that is linearizable.
    ReadIndex {
        reply: oneshot::Sender<Result<(), EtcdError>>,
    },
    /// Restarts a lease's clock (leader only); answers its TTL.
    LeaseKeepAlive {
        id: i64,
        reply: oneshot::Sender<Result<Option<i64>, EtcdError>>,
    },
    /// Only the leader keeps lease time: a follower answers `NotLeader` and the caller asks
    /// the leader.
    LeaseTimeToLive {
        id: i64,
        keys: bool,
        reply: oneshot::Sender<Result<Option<LeaseInfo>, EtcdError>>,
    },
    LeaseLeases {
        reply: oneshot::Sender<Vec<i64>>,
    },
    AlarmList {
        reply: oneshot::Sender<Vec<(u64, AlarmKind)>>,
    },
    MemberList {
        reply: oneshot::Sender<Vec<members::Member>>,
    },
    /// The state at the applied index and every shard's view of it (`snapshot::cut`).
    SnapshotState {
        reply: oneshot::Sender<snapshot::Cut>,
    },
    Watch(watch::WatchMsg),
}

/// A `Send` handle to the coordinator, for any core. Each message goes to the task that owns
/// what it needs: writes and linearizable reads to the raft node, watches to the watch hub,
/// queries of leases, members and alarms to the applier.
#[derive(Clone)]
pub struct CoordinatorHandle {
    raft_tx: flume::Sender<raft::RaftMsg>,
    queries_tx: flume::Sender<CoordMsg>,
    watch_tx: flume::Sender<watch::WatchInput>,
    /// etcd's request timeout (5 s + 2 election timeouts): a proposal or linearizable read not
    /// answered by then fails with "etcdserver: request timed out" (it may still apply later,
    /// as in etcd).
    request_timeout: Duration,
}

impl CoordinatorHandle {
    pub fn new(
        raft_tx: flume::Sender<raft::RaftMsg>,
        queries_tx: flume::Sender<CoordMsg>,
        watch_tx: flume::Sender<watch::WatchInput>,
        request_timeout: Duration,
    ) -> Self {
        CoordinatorHandle {
            raft_tx,
            queries_tx,
            watch_tx,
            request_timeout,
        }
    }

    /// etcd's request timeout, for work that waits on other members (a forwarded promotion).
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub async fn propose(&self, req: WriteRequest) -> Result<WriteOutcome, EtcdError> {
        self.ask_within(|reply| CoordMsg::Propose { req, reply })
            .await?
    }

    /// MoveLeader: answered once `target` leads, or with etcd's error (this member does not
    /// lead, the target is no voter, or the request timeout passed first).
    pub async fn move_leader(&self, target: u64) -> Result<(), EtcdError> {
        let timeout = self.request_timeout;
        let (reply, rx) = oneshot::channel();
        self.raft_tx
            .send_async(raft::RaftMsg::TransferLeader {
                target,
                timeout,
                reply,
            })
            .await
            .map_err(|_| EtcdError::Stopped)?;
        rx.await.map_err(|_| EtcdError::Stopped)?
    }

    pub async fn read_index(&self) -> Result<(), EtcdError> {
        self.ask_within(|reply| CoordMsg::ReadIndex { reply })
            .await?
    }

    /// `ask`, failing with `EtcdError::Timeout` after the request timeout.
    async fn ask_within<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> CoordMsg,
    ) -> Result<T, EtcdError> {
        self.ask_for(make, self.request_timeout).await
    }

    /// Sends a message that needs no answer. Every inbox is bounded: a full one makes the
    /// sender wait.
    pub async fn send(&self, msg: CoordMsg) -> Result<(), EtcdError> {
        let sent = match msg {
            CoordMsg::Propose { req, reply } => self
                .raft_tx
                .send_async(raft::RaftMsg::Propose {
                    req,
                    reply: Some(reply),
                })
                .await
                .is_ok(),
            CoordMsg::ReadIndex { reply } => self
                .raft_tx
                .send_async(raft::RaftMsg::ReadIndex { reply })
                .await
                .is_ok(),
            CoordMsg::Watch(m) => self
                .watch_tx
                .send_async(watch::WatchInput::Client(m))
                .await
                .is_ok(),
            other => self.queries_tx.send_async(other).await.is_ok(),
        };
        if sent {
            Ok(())
        } else {
            Err(EtcdError::Stopped)
        }
    }

    /// Sends a message built around a fresh oneshot and waits for the answer.
    pub async fn ask<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> CoordMsg,
    ) -> Result<T, EtcdError> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply)).await?;
        rx.await.map_err(|_| EtcdError::Stopped)
    }

    /// `ask` with the deadline. glommio's timer is not `Send` and the gRPC handlers' futures
    /// must be, so the race between the answer and the timer runs as a task of this core.
    async fn ask_for<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> CoordMsg,
        timeout: Duration,
    ) -> Result<T, EtcdError> {
        let (reply, rx) = oneshot::channel();
        let msg = make(reply);
        let handle = self.clone();
        let (done_tx, done_rx) = oneshot::channel();
        glommio::spawn_local(async move {
            let answer = async move {
                handle.send(msg).await.ok()?;
                rx.await.ok()
            };
            let timer = glommio::timer::sleep(timeout);
            futures::pin_mut!(answer, timer);
            let result = match select(answer, timer).await {
                Either::Left((answer, _)) => answer.ok_or(EtcdError::Stopped),
                Either::Right(_) => Err(EtcdError::Timeout),
            };
            let _ = done_tx.send(result);
        })
        .detach();
        done_rx.await.unwrap_or(Err(EtcdError::Stopped))
    }
}

/// The bytes a request may add to the store, if it is one the quota applies to (etcd's quota
/// covers puts, txns with puts and lease grants).
pub(crate) fn grows_store(req: &WriteRequest) -> Option<usize> {
    fn txn_put_bytes(t: &TxnRequest) -> usize {
        t.success
            .iter()
            .chain(t.failure.iter())
            .map(|op| match op {
                RequestOp::Put(p) => p.key.len() + p.value.len(),
                RequestOp::Txn(inner) => txn_put_bytes(inner),
                _ => 0,
            })
            .sum()
    }
    match req {
        WriteRequest::Put(p) => Some(p.key.len() + p.value.len()),
        WriteRequest::Txn(t) => {
            let n = txn_put_bytes(t);
            (n > 0 || has_put(t)).then_some(n)
        }
        WriteRequest::LeaseGrant { .. } => Some(0),
        WriteRequest::Authed { req, .. } => grows_store(req),
        _ => None,
    }
}

fn has_put(t: &TxnRequest) -> bool {
    t.success.iter().chain(t.failure.iter()).any(|op| match op {
        RequestOp::Put(_) => true,
        RequestOp::Txn(inner) => has_put(inner),
        _ => false,
    })
}
