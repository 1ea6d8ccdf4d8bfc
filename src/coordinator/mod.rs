//! The coordinator: lives on core 0 only. It owns the raft `RawNode`, the WAL, the revision
//! counter and the compact revision, proposes writes, applies committed entries strictly in log
//! order by driving the shards, and answers the proposers.

pub mod auth;
pub mod checkpoint;
pub mod codec;
pub mod lease;
pub mod members;
pub mod snapshot;
pub mod wal;
pub mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::{select, Either};
use raft::eraftpb::{ConfState, Entry, EntryType, Snapshot};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole};
use shards::{
    combine_compare, Compare, DeleteRangeRequest, DeleteRangeResponse, Event, PutResponse,
    RangeRequest, RequestOp, ResponseOp, TxnRequest, TxnResponse,
};

use crate::error::EtcdError;
use crate::runtime::mesh::ShardSet;
use crate::runtime::shard::ShardMsg;
pub use codec::{AlarmKind, WriteRequest};

/// Proposals and read-index requests waiting in the coordinator's inbox before senders wait.
pub const COORDINATOR_INBOX_MAX: usize = 16 * 1024;
/// Messages taken from the inbox per loop turn: bounds the size of one Ready (and so of one
/// WAL write) while still letting a burst share one fdatasync.
const INBOX_BATCH_MAX: usize = 4096;
/// Puts sent to the shards at once before their answers are awaited: bounds what one apply
/// step holds in flight.
const PUT_PIPELINE_MAX: usize = 1024;
/// Applied entries kept in raft's in-memory log (for peers that lag, once there are peers).
const RAFT_LOG_RETAINED_ENTRIES: u64 = 5000;
/// How stale the published store size may be while writes flow.
const DB_SIZE_REFRESH_INTERVAL: Duration = Duration::from_millis(20);
/// The longest the coordinator's loop parks with nothing to do.
const IDLE_WAIT_MAX: Duration = Duration::from_millis(5);
/// etcd refuses new proposals while this many committed entries are not yet applied.
pub const UNAPPLIED_ENTRIES_MAX: u64 = 5000;
/// A checkpoint is also taken this long after the last one if anything was applied since, so
/// the unsynced part of the shards' segments and the WAL replay at start-up stay small on a
/// member that writes too slowly to reach --snapshot-count.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

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
    /// The membership after a member change.
    Members(Vec<members::Member>),
}

fn member_error(e: members::MemberError) -> EtcdError {
    match e {
        members::MemberError::IdExists => EtcdError::MemberExists,
        members::MemberError::PeerUrlExists => EtcdError::PeerUrlExists,
        members::MemberError::NotFound => EtcdError::MemberNotFound,
    }
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
    LeaseTimeToLive {
        id: i64,
        keys: bool,
        reply: oneshot::Sender<Option<LeaseInfo>>,
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

/// A `Send` handle to the coordinator, for any core.
#[derive(Clone)]
pub struct CoordinatorHandle {
    tx: flume::Sender<CoordMsg>,
    /// etcd's request timeout (5 s + 2 election timeouts): a proposal or linearizable read not
    /// answered by then fails with "etcdserver: request timed out" (it may still apply later,
    /// as in etcd).
    request_timeout: Duration,
}

impl CoordinatorHandle {
    pub fn new(tx: flume::Sender<CoordMsg>, request_timeout: Duration) -> Self {
        CoordinatorHandle {
            tx,
            request_timeout,
        }
    }

    pub async fn propose(&self, req: WriteRequest) -> Result<WriteOutcome, EtcdError> {
        self.ask_within(|reply| CoordMsg::Propose { req, reply })
            .await?
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

    /// Sends a message that needs no answer.
    pub async fn send(&self, msg: CoordMsg) -> Result<(), EtcdError> {
        self.tx
            .send_async(msg)
            .await
            .map_err(|_| EtcdError::Stopped)
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
        let tx = self.tx.clone();
        let (done_tx, done_rx) = oneshot::channel();
        glommio::spawn_local(async move {
            let answer = async move {
                tx.send_async(msg).await.ok()?;
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

pub struct CoordinatorConfig {
    pub member_id: u64,
    pub heartbeat_interval: Duration,
    pub election_ticks: usize,
    /// etcd's minimum lease TTL: ceil(1.5 × election timeout), in seconds.
    pub lease_ttl_min_secs: i64,
    /// --experimental-watch-progress-notify-interval.
    pub watch_progress_interval: Duration,
    /// --quota-backend-bytes, resolved (etcd's 2 GiB default for 0).
    pub quota_bytes: i64,
    /// The members of --initial-cluster (this one with its client URLs).
    pub initial_members: Vec<members::Member>,
    /// --snapshot-count: applied entries between checkpoints.
    pub snapshot_count: u64,
    /// Where the checkpoint file lives (`member/snap`).
    pub checkpoint_dir: std::path::PathBuf,
}

/// What start-up recovered besides the WAL: the last checkpoint, and the lease attachments
/// found in the shards' stores (they are derived state, not checkpointed).
#[derive(Default)]
pub struct Restored {
    pub checkpoint: Option<checkpoint::CheckpointState>,
    pub lease_keys: Vec<(Bytes, i64)>,
}

/// A checkpoint whose shard syncs and state file are being written.
struct CheckpointInFlight {
    index: u64,
    done: oneshot::Receiver<Result<(), String>>,
}

/// A committed entry applied without waiting for the one before (see `pipeline_run`).
enum Pipelined {
    Put(shards::PutRequest),
    /// A single-shard txn, and its shard.
    Txn(usize, TxnRequest),
}

/// Linearizable reads waiting together for one read index.
type ReadBatch = Vec<oneshot::Sender<Result<(), EtcdError>>>;

pub struct Coordinator {
    node: RawNode<MemStorage>,
    wal: wal::Wal,
    shards: ShardSet,
    published: Arc<Published>,
    inbox: flume::Receiver<CoordMsg>,
    heartbeat_interval: Duration,
    waiters: HashMap<u64, WriteReply>,
    /// Read-index batches sent to raft, by the context that names them.
    reads_in_raft: HashMap<u64, ReadBatch>,
    /// Reads whose index raft has confirmed, waiting for apply to reach it.
    reads_waiting_apply: Vec<(u64, ReadBatch)>,
    next_request_id: u64,
    next_read_ctx: u64,
    revision: i64,
    compact_revision: i64,
    applied_index: u64,
    /// Fired once this member serves: it has a leader and has applied an entry of its term.
    on_serving: Option<oneshot::Sender<()>>,
    leases: lease::LeaseTable,
    auth: Arc<auth::AuthStore>,
    member_id: u64,
    was_leader: bool,
    watch: watch::WatchHub,
    watch_progress_interval: Duration,
    next_watch_progress: Instant,
    alarms: std::collections::BTreeSet<(u64, AlarmKind)>,
    members: members::Members,
    quota_bytes: i64,
    /// When the db size was last read from the shards, and whether anything was applied since.
    db_size_read_at: Instant,
    db_size_stale: bool,
    /// The raft index of the entry being applied: shard writes carry it into their segments.
    applying_index: u64,
    snapshot_count: u64,
    checkpoint_dir: std::path::PathBuf,
    /// The newest durable checkpoint, and when it was taken.
    checkpoint_index: u64,
    checkpoint_at: Instant,
    checkpoint_in_flight: Option<CheckpointInFlight>,
}

impl Coordinator {
    /// Builds the raft node from what the WAL recovered. Entries after the shards' state are
    /// re-applied through the normal apply path, so replay and live apply are the same code.
    #[allow(clippy::too_many_arguments)]
    pub async fn new(
        cfg: CoordinatorConfig,
        recovered: wal::Recovered,
        restored: Restored,
        wal_dir: &std::path::Path,
        shards: ShardSet,
        published: Arc<Published>,
        inbox: flume::Receiver<CoordMsg>,
        on_serving: oneshot::Sender<()>,
    ) -> anyhow::Result<Coordinator> {
        let checkpoint = restored.checkpoint.unwrap_or_default();
        let storage = if checkpoint.raft_index == 0 {
            MemStorage::new_with_conf_state(ConfState::from((vec![cfg.member_id], vec![])))
        } else {
            // Raft starts from the checkpoint as from a snapshot: its log begins after it.
            let storage = MemStorage::new();
            let mut snapshot = Snapshot::default();
            let meta = snapshot.mut_metadata();
            meta.index = checkpoint.raft_index;
            meta.term = checkpoint.raft_term;
            *meta.mut_conf_state() =
                ConfState::from((checkpoint.voters.clone(), checkpoint.learners.clone()));
            storage
                .wl()
                .apply_snapshot(snapshot)
                .map_err(|e| anyhow::anyhow!("restoring the checkpoint into raft: {e}"))?;
            storage
        };
        {
            let mut w = storage.wl();
            w.append(&recovered.entries)
                .map_err(|e| anyhow::anyhow!("restoring raft log: {e}"))?;
            let mut hs = recovered.hard_state.clone();
            // etcd bootstraps a new member at term 1 (its membership entries) and then elects
            // at term 2; clients see that term in every header, so a new member starts there.
            if checkpoint.raft_index == 0 && recovered.entries.is_empty() && hs.term == 0 {
                hs.term = 1;
            }
            w.set_hardstate(hs);
        }
        let raft_cfg = raft::Config {
            id: cfg.member_id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: 1,
            applied: checkpoint.raft_index,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_cfg.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut node = RawNode::new(&raft_cfg, storage, &logger)?;
        // A single voter needs no election timeout: campaign at once, as etcd effectively does.
        node.campaign()?;
        let wal = wal::Wal::open(wal_dir, &recovered).await?;
        published
            .wal_bytes
            .store(wal.size_bytes(), Ordering::Release);

        // Coordinator state as of the checkpoint (or the empty state of a new member).
        let revision = checkpoint.revision.max(1);
        let mut leases = lease::LeaseTable::new(cfg.lease_ttl_min_secs);
        for l in &checkpoint.leases {
            leases.restore(l.id, l.ttl_secs);
        }
        for (key, id) in restored.lease_keys {
            if !leases.attach(id, key.clone()) {
                anyhow::bail!(
                    "recovery: key {:?} is attached to lease {id:x}, which the checkpoint does \
                     not have",
                    String::from_utf8_lossy(&key)
                );
            }
        }
        let auth = if checkpoint.raft_index == 0 {
            auth::AuthStore::default()
        } else {
            auth::AuthStore::from_record(&checkpoint.auth)
                .map_err(|e| anyhow::anyhow!("checkpoint auth state: {e}"))?
        };
        let auth = Arc::new(auth);
        published.auth.publish(auth.clone());
        let mut members = members::Members::new(cfg.initial_members.clone());
        if checkpoint.raft_index > 0 {
            members = members::Members::new(
                checkpoint
                    .members
                    .iter()
                    .map(|m| members::Member {
                        id: m.id,
                        name: m.name.clone(),
                        peer_urls: m.peer_urls.clone(),
                        client_urls: m.client_urls.clone(),
                        is_learner: m.is_learner,
                    })
                    .collect(),
            );
            // This member's name and client URLs are what it runs with now.
            if let Some(me) = cfg.initial_members.iter().find(|m| m.id == cfg.member_id) {
                members.refresh_local(me);
            }
        }
        let mut alarms = std::collections::BTreeSet::new();
        for a in &checkpoint.alarms {
            let kind = AlarmKind::from_number(a.alarm)
                .ok_or_else(|| anyhow::anyhow!("checkpoint: unknown alarm type {}", a.alarm))?;
            alarms.insert((a.member_id, kind));
        }
        let nospace = alarms.iter().any(|(_, a)| *a == AlarmKind::NoSpace);
        published.nospace.store(nospace, Ordering::Release);
        published.revision.store(revision, Ordering::Release);
        published
            .compact_revision
            .store(checkpoint.compact_revision, Ordering::Release);
        published
            .applied_index
            .store(checkpoint.raft_index, Ordering::Release);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Ok(Coordinator {
            node,
            wal,
            shards,
            published,
            inbox,
            heartbeat_interval: cfg.heartbeat_interval,
            waiters: HashMap::new(),
            reads_in_raft: HashMap::new(),
            reads_waiting_apply: Vec::new(),
            next_request_id: seed,
            next_read_ctx: 1,
            revision,
            compact_revision: checkpoint.compact_revision,
            applied_index: checkpoint.raft_index,
            on_serving: Some(on_serving),
            leases,
            auth,
            member_id: cfg.member_id,
            was_leader: false,
            watch: watch::WatchHub::default(),
            watch_progress_interval: cfg.watch_progress_interval,
            next_watch_progress: Instant::now() + cfg.watch_progress_interval,
            alarms,
            members,
            quota_bytes: cfg.quota_bytes,
            db_size_read_at: Instant::now(),
            db_size_stale: true,
            applying_index: checkpoint.raft_index,
            snapshot_count: cfg.snapshot_count.max(1),
            checkpoint_dir: cfg.checkpoint_dir,
            checkpoint_index: checkpoint.raft_index,
            checkpoint_at: Instant::now(),
            checkpoint_in_flight: None,
        })
    }

    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut next_tick = Instant::now() + self.heartbeat_interval;
        loop {
            let now = Instant::now();
            if now >= next_tick {
                self.node.tick();
                self.expire_leases(now);
                if self.watch.watcher_count() > 0 {
                    let notify = now >= self.next_watch_progress;
                    if notify {
                        self.next_watch_progress = now + self.watch_progress_interval;
                    }
                    self.watch
                        .tick(&self.shards, self.revision, self.compact_revision, notify)
                        .await?;
                }
                next_tick += self.heartbeat_interval;
                if next_tick < now {
                    next_tick = now + self.heartbeat_interval;
                }
            } else if !self.node.has_ready() {
                // Park at most IDLE_WAIT_MAX, so a finished checkpoint (polled, not woken) is
                // taken up promptly.
                let wait = (next_tick - now).min(IDLE_WAIT_MAX);
                let inbox = self.inbox.clone();
                let recv = inbox.recv_async();
                let sleep = glommio::timer::sleep(wait);
                futures::pin_mut!(recv, sleep);
                let got = match select(recv, sleep).await {
                    Either::Left((Ok(msg), _)) => Some(msg),
                    Either::Left((Err(_), _)) => return Ok(()), // every handle dropped: shutdown
                    Either::Right(_) => None,
                };
                if let Some(msg) = got {
                    self.handle(msg).await?;
                }
            }
            let mut read_batch = Vec::new();
            for _ in 0..INBOX_BATCH_MAX {
                match self.inbox.try_recv() {
                    Ok(CoordMsg::ReadIndex { reply }) => read_batch.push(reply),
                    Ok(msg) => self.handle(msg).await?,
                    Err(_) => break,
                }
            }
            if !read_batch.is_empty() {
                self.start_read(read_batch);
            }
            self.on_ready().await?;
            self.release_reads();
            self.refresh_db_size().await?;
            self.checkpoint_step().await?;
        }
    }

    /// Finishes a checkpoint whose state file is written, or starts one when --snapshot-count
    /// entries (or `CHECKPOINT_INTERVAL` with any entry) were applied since the last.
    async fn checkpoint_step(&mut self) -> anyhow::Result<()> {
        if let Some(flight) = &mut self.checkpoint_in_flight {
            match flight.done.try_recv() {
                Ok(None) => return Ok(()),
                Ok(Some(Ok(()))) => {
                    let index = flight.index;
                    self.checkpoint_in_flight = None;
                    self.checkpoint_index = index;
                    crate::log_info!(
                        "saved snapshot",
                        "snapshot-index" => index
                    );
                    for shard in 0..self.shards.len() {
                        self.shards.send(shard, ShardMsg::CheckpointSaved).await?;
                    }
                    // Replay never needs the older WAL files again.
                    self.wal
                        .remove_through(index)
                        .map_err(|e| anyhow::anyhow!("removing old WAL files: {e}"))?;
                    crate::log_info!(
                        "compacted Raft logs",
                        "compact-index" => index,
                        "wal-files" => self.wal.file_count()
                    );
                    self.published
                        .wal_bytes
                        .store(self.wal.size_bytes(), Ordering::Release);
                }
                Ok(Some(Err(e))) => anyhow::bail!("checkpoint at raft index {}: {e}", flight.index),
                Err(_) => anyhow::bail!("checkpoint at raft index {}: abandoned", flight.index),
            }
        }
        let since = self.applied_index - self.checkpoint_index;
        let due = since > self.snapshot_count
            || (since > 0 && self.checkpoint_at.elapsed() >= CHECKPOINT_INTERVAL);
        if !due {
            return Ok(());
        }
        self.start_checkpoint().await
    }

    async fn start_checkpoint(&mut self) -> anyhow::Result<()> {
        let index = self.applied_index;
        crate::log_info!(
            "triggering snapshot",
            "local-member-id" => crate::ids::format_id(self.member_id),
            "local-member-applied-index" => index,
            "local-member-snapshot-index" => self.checkpoint_index,
            "local-member-snapshot-count" => self.snapshot_count
        );
        let state = self.checkpoint_state(index)?;
        // Every shard has been sent everything up to `index` and nothing after it, so each
        // syncs exactly the entries the state file will claim.
        let mut replies = Vec::with_capacity(self.shards.len());
        for shard in 0..self.shards.len() {
            let (reply, rx) = oneshot::channel();
            self.shards
                .send(shard, ShardMsg::Checkpoint { index, reply })
                .await?;
            replies.push(rx);
        }
        // Entries from here on go to a new WAL file, so the older ones can go once the state
        // file is durable.
        let hard_state = self.node.store().rl().hard_state().clone();
        let next = self.node.raft.raft_log.last_index() + 1;
        self.wal
            .rotate(next, &hard_state)
            .map_err(|e| anyhow::anyhow!("rotating the WAL: {e}"))?;
        let dir = self.checkpoint_dir.clone();
        let (done_tx, done) = oneshot::channel();
        glommio::spawn_local(async move {
            let result = async {
                for rx in replies {
                    rx.await
                        .map_err(|_| "a shard worker stopped".to_string())??;
                }
                // The state file is a few blocking writes and fsyncs: off the executor.
                let (tx, rx) = oneshot::channel();
                std::thread::Builder::new()
                    .name("rusd-checkpoint".into())
                    .spawn(move || {
                        let _ = tx.send(checkpoint::write(&dir, &state).map_err(|e| e.to_string()));
                    })
                    .map_err(|e| e.to_string())?;
                rx.await
                    .map_err(|_| "the checkpoint writer stopped".to_string())?
            }
            .await;
            let _ = done_tx.send(result);
        })
        .detach();
        self.checkpoint_in_flight = Some(CheckpointInFlight { index, done });
        self.checkpoint_at = Instant::now();
        Ok(())
    }

    /// The coordinator's replicated state as of `index` (the applied index).
    fn checkpoint_state(&self, index: u64) -> anyhow::Result<checkpoint::CheckpointState> {
        let term = self
            .node
            .raft
            .raft_log
            .term(index)
            .map_err(|e| anyhow::anyhow!("term of raft index {index}: {e}"))?;
        let conf = self.node.raft.prs().conf().to_conf_state();
        Ok(checkpoint::CheckpointState {
            format_version: 0,
            raft_index: index,
            raft_term: term,
            voters: conf.voters.clone(),
            learners: conf.learners.clone(),
            shard_count: self.shards.len() as u32,
            revision: self.revision,
            compact_revision: self.compact_revision,
            leases: self
                .leases
                .records()
                .into_iter()
                .map(|(id, ttl_secs)| checkpoint::LeaseRecord { id, ttl_secs })
                .collect(),
            auth: self.auth.to_record(),
            members: self
                .members
                .list()
                .into_iter()
                .map(|m| checkpoint::MemberRecord {
                    id: m.id,
                    name: m.name,
                    peer_urls: m.peer_urls,
                    client_urls: m.client_urls,
                    is_learner: m.is_learner,
                })
                .collect(),
            alarms: self
                .alarms
                .iter()
                .map(|(member_id, kind)| checkpoint::AlarmRecord {
                    member_id: *member_id,
                    alarm: kind.number(),
                })
                .collect(),
        })
    }

    async fn handle(&mut self, msg: CoordMsg) -> anyhow::Result<()> {
        match msg {
            CoordMsg::Watch(m) => {
                self.watch
                    .handle(m, &self.shards, self.revision, self.compact_revision)
                    .await?;
            }
            CoordMsg::Propose { req, reply } => self.propose(req, reply),
            CoordMsg::ReadIndex { reply } => self.start_read(vec![reply]),
            CoordMsg::LeaseKeepAlive { id, reply } => {
                let r = if self.node.raft.state == StateRole::Leader {
                    Ok(self.leases.renew(id, Instant::now()))
                } else if self.node.raft.leader_id == raft::INVALID_ID {
                    Err(EtcdError::NoLeader)
                } else {
                    Err(EtcdError::NotLeader)
                };
                let _ = reply.send(r);
            }
            CoordMsg::LeaseTimeToLive { id, keys, reply } => {
                let info = self.leases.get(id).map(|l| LeaseInfo {
                    remaining_secs: self.leases.remaining_secs(id, Instant::now()).unwrap_or(0),
                    granted_ttl_secs: l.ttl_secs,
                    keys: if keys {
                        l.keys.iter().cloned().collect()
                    } else {
                        Vec::new()
                    },
                });
                let _ = reply.send(info);
            }
            CoordMsg::LeaseLeases { reply } => {
                let _ = reply.send(self.leases.ids());
            }
            CoordMsg::MemberList { reply } => {
                let _ = reply.send(self.members.list());
            }
            CoordMsg::AlarmList { reply } => {
                let _ = reply.send(self.alarms.iter().copied().collect());
            }
            CoordMsg::SnapshotState { reply } => {
                let state = self.checkpoint_state(self.applied_index)?;
                let _ = reply.send(snapshot::cut(state, &self.shards).await?);
            }
        }
        Ok(())
    }

    /// Leader only: proposes a revoke for every lease whose time ran out.
    fn expire_leases(&mut self, now: Instant) {
        if self.node.raft.state != StateRole::Leader {
            return;
        }
        for id in self.leases.take_expired(now) {
            let data = codec::encode(0, &WriteRequest::LeaseRevoke { id });
            if self.node.propose(Vec::new(), data).is_err() {
                self.leases.revoke_failed(id);
            }
        }
    }

    /// A lease ID for a grant that asked the server to pick: unique on this member (member
    /// bits, then the clock, then a counter, as etcd's generator), positive, and unused.
    fn new_lease_id(&mut self) -> i64 {
        loop {
            let id = (self.next_request_id ^ (self.member_id << 48)) as i64 & i64::MAX;
            self.next_request_id = self.next_request_id.wrapping_add(1);
            if id != 0 && !self.leases.contains(id) {
                return id;
            }
        }
    }

    fn propose(&mut self, mut req: WriteRequest, reply: WriteReply) {
        if let WriteRequest::LeaseGrant { id, .. } = &mut req {
            if *id == 0 {
                *id = self.new_lease_id();
            }
        }
        if self.node.raft.state != StateRole::Leader && self.node.raft.leader_id == raft::INVALID_ID
        {
            let _ = reply.send(Err(EtcdError::NoLeader));
            return;
        }
        if let Some(size) = grows_store(&req) {
            // etcd's quota: refuse a write that would take the store past the quota, and
            // raise the NOSPACE alarm so that every member refuses writes until disarmed.
            let db_size = self.published.db_size.load(Ordering::Acquire);
            let over = db_size + size as i64 > self.quota_bytes;
            if self.published.nospace.load(Ordering::Acquire) || over {
                if over && !self.published.nospace.load(Ordering::Acquire) {
                    let alarm = WriteRequest::Alarm {
                        activate: true,
                        member_id: self.member_id,
                        alarm: AlarmKind::NoSpace,
                    };
                    let _ = self.node.propose(Vec::new(), codec::encode(0, &alarm));
                }
                let _ = reply.send(Err(EtcdError::NoSpace));
                return;
            }
        }
        let committed = self.node.raft.raft_log.committed;
        if committed.saturating_sub(self.applied_index) > UNAPPLIED_ENTRIES_MAX {
            let _ = reply.send(Err(EtcdError::TooManyRequests));
            return;
        }
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        let data = codec::encode(id, &req);
        match self.node.propose(Vec::new(), data) {
            Ok(()) => {
                self.waiters.insert(id, reply);
            }
            Err(_) => {
                let _ = reply.send(Err(EtcdError::NoLeader));
            }
        }
    }

    fn start_read(&mut self, batch: ReadBatch) {
        if self.node.raft.leader_id == raft::INVALID_ID {
            for r in batch {
                let _ = r.send(Err(EtcdError::NoLeader));
            }
            return;
        }
        if self.node.raft.state == StateRole::Leader && self.node.raft.prs().is_singleton() {
            // The only voter cannot be deposed without a configuration change it applies
            // itself, so its commit index is the read index; no round through raft (whose
            // read-index path can park requests until the next write commits).
            let index = self.node.raft.raft_log.committed;
            self.reads_waiting_apply.push((index, batch));
            self.release_reads();
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        self.node.read_index(ctx.to_le_bytes().to_vec());
        self.reads_in_raft.insert(ctx, batch);
    }

    async fn on_ready(&mut self) -> anyhow::Result<()> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut ready = self.node.ready();
        // A single voter sends no messages; peers arrive with the cluster issue.
        drop(ready.take_messages());
        if let Some(ss) = ready.ss() {
            self.published.leader.store(ss.leader_id, Ordering::Release);
            let leader = ss.raft_state == StateRole::Leader;
            if leader && !self.was_leader {
                self.leases.start_clocks(Instant::now());
            } else if !leader && self.was_leader {
                self.leases.stop_clocks();
            }
            self.was_leader = leader;
        }
        let committed = ready.take_committed_entries();
        self.apply_entries(committed).await?;

        let mut records = Vec::new();
        let mut last_index = 0;
        for e in ready.entries() {
            wal::frame_entry(&mut records, e);
            last_index = e.index;
        }
        if let Some(hs) = ready.hs() {
            wal::frame_hard_state(&mut records, hs);
            self.published.raft_term.store(hs.term, Ordering::Release);
        }
        if !records.is_empty() {
            // A failed WAL write leaves us unable to promise durability: stop rather than ack.
            self.wal
                .append_and_sync(records, last_index)
                .await
                .map_err(|e| anyhow::anyhow!("writing the WAL: {e}"))?;
            self.published
                .wal_bytes
                .store(self.wal.size_bytes(), Ordering::Release);
        }
        {
            let store = self.node.mut_store();
            let mut w = store.wl();
            w.append(ready.entries())?;
            if let Some(hs) = ready.hs() {
                w.set_hardstate(hs.clone());
            }
        }
        for rs in ready.take_read_states() {
            let ctx = u64::from_le_bytes(rs.request_ctx.as_slice().try_into().unwrap_or([0; 8]));
            if let Some(batch) = self.reads_in_raft.remove(&ctx) {
                self.reads_waiting_apply.push((rs.index, batch));
            }
        }
        drop(ready.take_persisted_messages());

        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node
                .mut_store()
                .wl()
                .mut_hard_state()
                .set_commit(commit);
        }
        drop(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply_entries(committed).await?;
        self.node.advance_apply();
        self.trim_raft_log()?;
        self.published
            .committed_index
            .store(self.node.raft.raft_log.committed, Ordering::Release);
        self.release_reads();
        Ok(())
    }

    /// Adds a learner: raft replicates to it without counting it in the quorum. Voters are
    /// refused before proposing (see api::maintenance) until the peer transport exists.
    fn add_member(&mut self, m: codec::MemberAddRequest) -> Result<WriteResponse, EtcdError> {
        self.members
            .add(members::Member {
                id: m.id,
                name: String::new(),
                peer_urls: m.peer_urls,
                client_urls: Vec::new(),
                is_learner: m.is_learner,
            })
            .map_err(member_error)?;
        let mut cc = raft::eraftpb::ConfChange::default();
        cc.set_change_type(if m.is_learner {
            raft::eraftpb::ConfChangeType::AddLearnerNode
        } else {
            raft::eraftpb::ConfChangeType::AddNode
        });
        cc.node_id = m.id;
        let cs = self
            .node
            .apply_conf_change(&cc)
            .expect("adding a new node id to the configuration cannot fail");
        self.node.mut_store().wl().set_conf_state(cs);
        Ok(WriteResponse::Members(self.members.list()))
    }

    /// Re-reads the store size from the shards after writes, at most every
    /// `DB_SIZE_REFRESH_INTERVAL`: the quota and Status read the published figure.
    async fn refresh_db_size(&mut self) -> anyhow::Result<()> {
        if !self.db_size_stale || self.db_size_read_at.elapsed() < DB_SIZE_REFRESH_INTERVAL {
            return Ok(());
        }
        let stats = self
            .shards
            .call_all(|reply| ShardMsg::Stats { reply })
            .await?;
        let bytes: usize = stats.iter().map(|s| s.bytes).sum();
        let keys: usize = stats.iter().map(|s| s.keys).sum();
        self.published.keys.store(keys as u64, Ordering::Release);
        self.published
            .db_size
            .store(bytes as i64, Ordering::Release);
        self.db_size_read_at = Instant::now();
        self.db_size_stale = false;
        Ok(())
    }

    fn count_events(&self, events: &[Event]) {
        let puts = events
            .iter()
            .filter(|e| e.kind == shards::EventKind::Put)
            .count() as u64;
        let deletes = events.len() as u64 - puts;
        if puts > 0 {
            self.published
                .puts_applied
                .fetch_add(puts, Ordering::Relaxed);
        }
        if deletes > 0 {
            self.published
                .deletes_applied
                .fetch_add(deletes, Ordering::Relaxed);
        }
    }

    /// Drops applied entries from raft's in-memory log, keeping a tail. The WAL file still has
    /// them (restart replays it); memory must not grow with the history.
    fn trim_raft_log(&mut self) -> anyhow::Result<()> {
        let store = self.node.mut_store();
        let first = raft::Storage::first_index(store)?;
        if self.applied_index > first + RAFT_LOG_RETAINED_ENTRIES * 2 {
            store
                .wl()
                .compact(self.applied_index - RAFT_LOG_RETAINED_ENTRIES)?;
        }
        Ok(())
    }

    fn release_reads(&mut self) {
        let applied = self.applied_index;
        self.reads_waiting_apply.retain_mut(|(index, batch)| {
            if *index <= applied {
                for r in batch.drain(..) {
                    let _ = r.send(Ok(()));
                }
                false
            } else {
                true
            }
        });
    }

    async fn apply_entries(&mut self, entries: Vec<Entry>) -> anyhow::Result<()> {
        let mut i = 0;
        while i < entries.len() {
            let run = self.pipeline_run(&entries[i..])?;
            if run.len() > 1 {
                i += run.len();
                self.apply_pipelined(run).await?;
                continue;
            }
            let e = &entries[i];
            self.applying_index = e.index;
            self.apply_entry(e).await?;
            self.mark_applied(e.index);
            i += 1;
        }
        self.published
            .revision
            .store(self.revision, Ordering::Release);
        Ok(())
    }

    fn mark_applied(&mut self, index: u64) {
        self.applied_index = index;
        self.published.applied_index.store(index, Ordering::Release);
    }

    /// The leading entries that certainly succeed and write exactly one revision: puts with no
    /// ignore_value/ignore_lease (the only puts a shard can refuse) and a lease that exists,
    /// and single-shard txns whose every branch that can be taken is such puts only. No
    /// NOSPACE alarm, no auth wrapper. Since each consumes exactly one revision whatever the
    /// store holds, a run of them can be sent to the shards all at once instead of one round
    /// trip after another, and still get the revisions serial apply would give.
    fn pipeline_run(&self, entries: &[Entry]) -> anyhow::Result<Vec<(u64, u64, Pipelined)>> {
        let mut run = Vec::new();
        if self.published.nospace.load(Ordering::Acquire) {
            return Ok(run);
        }
        let plain = |p: &shards::PutRequest| {
            !p.ignore_value && !p.ignore_lease && (p.lease == 0 || self.leases.contains(p.lease))
        };
        for e in entries.iter().take(PUT_PIPELINE_MAX) {
            if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
                break;
            }
            let (id, req) = codec::decode(&e.data)
                .map_err(|err| anyhow::anyhow!("raft entry {}: {err}", e.index))?;
            let item = match req {
                WriteRequest::Put(p) if plain(&p) => Pipelined::Put(p),
                WriteRequest::Txn(t) => {
                    let only_plain_puts = |ops: &[RequestOp]| {
                        !ops.is_empty()
                            && ops
                                .iter()
                                .all(|op| matches!(op, RequestOp::Put(p) if plain(p)))
                    };
                    let certain = only_plain_puts(&t.success)
                        && (t.compare.is_empty() || only_plain_puts(&t.failure));
                    match single_shard_of_txn(&t, &self.shards) {
                        Some(shard) if certain => Pipelined::Txn(shard, t),
                        _ => break,
                    }
                }
                _ => break,
            };
            run.push((e.index, id, item));
        }
        Ok(run)
    }

    async fn apply_pipelined(&mut self, run: Vec<(u64, u64, Pipelined)>) -> anyhow::Result<()> {
        enum Reply {
            Put(oneshot::Receiver<Result<(PutResponse, Event), shards::MvccError>>),
            Txn(oneshot::Receiver<Result<shards::TxnOutcome, shards::MvccError>>),
        }
        let mut pending = Vec::with_capacity(run.len());
        for (index, id, item) in run {
            let main = self.revision + 1;
            self.revision = main;
            let reply = match item {
                Pipelined::Put(req) => {
                    let (reply, rx) = oneshot::channel();
                    let owner = self.shards.owner(&req.key);
                    let msg = ShardMsg::Put {
                        index,
                        main,
                        sub: 0,
                        req,
                        reply,
                    };
                    self.shards.send(owner, msg).await?;
                    Reply::Put(rx)
                }
                Pipelined::Txn(shard, req) => {
                    let (reply, rx) = oneshot::channel();
                    let msg = ShardMsg::Txn {
                        index,
                        main,
                        req,
                        reply,
                    };
                    self.shards.send(shard, msg).await?;
                    Reply::Txn(rx)
                }
            };
            pending.push((index, id, main, reply));
        }
        self.db_size_stale = true;
        for (index, id, main, reply) in pending {
            let gone = || anyhow::anyhow!("a shard worker stopped");
            let failed = |e| anyhow::anyhow!("raft entry {index}: a certain write failed: {e}");
            let (events, response) = match reply {
                Reply::Put(rx) => {
                    let (resp, event) = rx.await.map_err(|_| gone())?.map_err(failed)?;
                    (vec![event], WriteResponse::Put(resp))
                }
                Reply::Txn(rx) => {
                    let outcome = rx.await.map_err(|_| gone())?.map_err(failed)?;
                    anyhow::ensure!(
                        outcome.wrote,
                        "raft entry {index}: a txn of plain puts wrote nothing"
                    );
                    (outcome.events, WriteResponse::Txn(outcome.response))
                }
            };
            self.count_events(&events);
            self.leases.observe(&events);
            self.watch.on_apply(main, &events);
            if let Some(tx) = self.waiters.remove(&id) {
                let _ = tx.send(Ok(WriteOutcome {
                    revision: main,
                    response,
                }));
            }
            self.mark_applied(index);
        }
        Ok(())
    }

    async fn apply_entry(&mut self, e: &Entry) -> anyhow::Result<()> {
        match e.get_entry_type() {
            EntryType::EntryNormal if e.data.is_empty() => {
                // The empty entry a new leader commits: once ours is applied, we serve.
                if e.term == self.node.raft.term && self.node.raft.state == StateRole::Leader {
                    if let Some(tx) = self.on_serving.take() {
                        self.published.serving.store(true, Ordering::Release);
                        let _ = tx.send(());
                    }
                }
                Ok(())
            }
            EntryType::EntryNormal => {
                // An undecodable committed entry means the log is corrupt: stop, never skip.
                let (id, req) = codec::decode(&e.data)
                    .map_err(|err| anyhow::anyhow!("raft entry {}: {err}", e.index))?;
                let result = self.execute(req).await?;
                if let Some(tx) = self.waiters.remove(&id) {
                    let _ = tx.send(result);
                }
                Ok(())
            }
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                anyhow::bail!(
                    "raft entry {}: membership changes are not supported yet",
                    e.index
                )
            }
        }
    }

    /// Applies one request. The outer `Result` is fatal (a shard is gone); the inner one is the
    /// client's answer.
    async fn execute(
        &mut self,
        req: WriteRequest,
    ) -> anyhow::Result<Result<WriteOutcome, EtcdError>> {
        let req = match req {
            WriteRequest::Authed { info, req } => {
                let keys = |id| {
                    self.leases
                        .get(id)
                        .map_or(Vec::new(), |l| l.keys.iter().cloned().collect())
                };
                if let Err(e) = auth::check_apply(&self.auth, &info, &req, &keys) {
                    return Ok(Err(e));
                }
                *req
            }
            req => req,
        };
        let main = self.revision + 1;
        let mut events = Vec::new();
        self.db_size_stale = true;
        if self.published.nospace.load(Ordering::Acquire) && grows_store(&req).is_some() {
            // While NOSPACE is raised, writes that add data fail at apply on every member.
            return Ok(Err(EtcdError::NoSpace));
        }
        let result = match req {
            WriteRequest::Put(p) if p.lease != 0 && !self.leases.contains(p.lease) => {
                Err(EtcdError::LeaseNotFound)
            }
            WriteRequest::Put(p) => {
                let owner = self.shards.owner(&p.key);
                let index = self.applying_index;
                let r = self
                    .shards
                    .call(owner, |reply| ShardMsg::Put {
                        index,
                        main,
                        sub: 0,
                        req: p,
                        reply,
                    })
                    .await?;
                r.map(|(resp, ev)| {
                    events.push(ev);
                    WriteResponse::Put(resp)
                })
                .map_err(EtcdError::from)
            }
            WriteRequest::DeleteRange(d) => {
                let mut sub = 0;
                let resp = self.delete_range(main, &mut sub, &d, &mut events).await?;
                Ok(WriteResponse::DeleteRange(resp))
            }
            WriteRequest::Txn(t) => self
                .txn(main, &t, &mut events)
                .await?
                .map(WriteResponse::Txn),
            WriteRequest::Compact { revision } => {
                if revision <= self.compact_revision {
                    Err(EtcdError::Compacted)
                } else if revision > self.revision {
                    Err(EtcdError::FutureRevision)
                } else {
                    let index = self.applying_index;
                    self.shards
                        .call_all(|reply| ShardMsg::Compact {
                            index,
                            revision,
                            reply,
                        })
                        .await?;
                    self.compact_revision = revision;
                    self.published
                        .compact_revision
                        .store(revision, Ordering::Release);
                    Ok(WriteResponse::Compact)
                }
            }
            WriteRequest::LeaseGrant { id, ttl_secs } => {
                let now = (self.node.raft.state == StateRole::Leader).then(Instant::now);
                match self.leases.grant(id, ttl_secs, now) {
                    Ok(ttl_secs) => Ok(WriteResponse::LeaseGrant { id, ttl_secs }),
                    Err(lease::GrantError::Exists) => Err(EtcdError::LeaseExists),
                    Err(lease::GrantError::TtlTooLarge) => Err(EtcdError::LeaseTtlTooLarge),
                    Err(lease::GrantError::NoId) => Err(EtcdError::LeaseNotFound),
                }
            }
            WriteRequest::MemberAdd(m) => self.add_member(m),
            WriteRequest::MemberUpdate { id, peer_urls } => self
                .members
                .update_peer_urls(id, peer_urls)
                .map(|()| WriteResponse::Members(self.members.list()))
                .map_err(member_error),
            WriteRequest::Alarm {
                activate,
                member_id,
                alarm,
            } => {
                let changed = if activate {
                    self.alarms.insert((member_id, alarm))
                } else {
                    self.alarms.remove(&(member_id, alarm))
                };
                let nospace = self.alarms.iter().any(|(_, a)| *a == AlarmKind::NoSpace);
                self.published.nospace.store(nospace, Ordering::Release);
                Ok(WriteResponse::Alarm { changed })
            }
            WriteRequest::Auth(a) => auth::apply_published(&mut self.auth, &self.published.auth, a)
                .map(|()| WriteResponse::Auth),
            WriteRequest::Authed { .. } => Err(EtcdError::InvalidAuthMgmt), // unwrapped above
            WriteRequest::LeaseRevoke { id } => match self.leases.get(id) {
                None => Err(EtcdError::LeaseNotFound),
                Some(l) => {
                    // All attached keys go in one revision, in key order.
                    let keys: Vec<Bytes> = l.keys.iter().cloned().collect();
                    self.delete_keys(main, 0, keys, &mut events).await?;
                    self.leases.remove(id);
                    Ok(WriteResponse::LeaseRevoke)
                }
            },
        };
        self.count_events(&events);
        self.leases.observe(&events);
        if !events.is_empty() {
            assert!(
                result.is_ok(),
                "a failed request must not have changed the store"
            );
            self.revision = main;
            self.watch.on_apply(main, &events);
        }
        Ok(result.map(|response| WriteOutcome {
            revision: self.revision,
            response,
        }))
    }

    async fn delete_range(
        &mut self,
        main: i64,
        sub: &mut i64,
        d: &DeleteRangeRequest,
        events: &mut Vec<Event>,
    ) -> anyhow::Result<DeleteRangeResponse> {
        let targets = self.shards.shards_for(&d.key, &d.range_end);
        if targets.len() == 1 {
            let first_sub = *sub;
            let req = d.clone();
            let index = self.applying_index;
            let (resp, evs) = self
                .shards
                .call(targets[0], |reply| ShardMsg::DeleteRange {
                    index,
                    main,
                    first_sub,
                    req,
                    reply,
                })
                .await?;
            *sub += evs.len() as i64;
            events.extend(evs);
            return Ok(resp);
        }
        // Several shards: sub-revisions follow the global key order, as in one etcd store, so
        // find the live keys first, then delete each at its place in that order.
        let probe = RangeRequest {
            key: d.key.clone(),
            range_end: d.range_end.clone(),
            keys_only: true,
            ..Default::default()
        };
        let live = self
            .shards
            .range(&probe, main)
            .await?
            .map_err(|e| anyhow::anyhow!("listing keys to delete: {e}"))?;
        let keys: Vec<Bytes> = live.kvs.into_iter().map(|kv| kv.key).collect();
        let deleted = keys.len() as i64;
        let prev_kvs = self.delete_keys(main, *sub, keys, events).await?;
        *sub += deleted;
        Ok(DeleteRangeResponse {
            deleted,
            prev_kvs: if d.prev_kv { prev_kvs } else { Vec::new() },
        })
    }

    /// Deletes exactly `keys` (sorted, live) at `main`, sub-revisions from `first_sub` in key
    /// order; returns their previous values in key order.
    async fn delete_keys(
        &mut self,
        main: i64,
        first_sub: i64,
        keys: Vec<Bytes>,
        events: &mut Vec<Event>,
    ) -> anyhow::Result<Vec<shards::KeyValue>> {
        let mut per_shard: Vec<Vec<(Bytes, i64)>> = vec![Vec::new(); self.shards.len()];
        for (i, key) in keys.into_iter().enumerate() {
            let owner = self.shards.owner(&key);
            per_shard[owner].push((key, first_sub + i as i64));
        }
        let mut prev_kvs = Vec::new();
        let mut new_events = Vec::new();
        for (shard, keys) in per_shard.into_iter().enumerate() {
            if keys.is_empty() {
                continue;
            }
            let index = self.applying_index;
            let (prev, evs) = self
                .shards
                .call(shard, |reply| ShardMsg::DeleteKeys {
                    index,
                    main,
                    keys,
                    reply,
                })
                .await?;
            prev_kvs.extend(prev);
            new_events.extend(evs);
        }
        prev_kvs.sort_by(|a, b| a.key.cmp(&b.key));
        new_events.sort_by_key(|e| e.sub_revision);
        events.extend(new_events);
        Ok(prev_kvs)
    }

    async fn txn(
        &mut self,
        main: i64,
        t: &TxnRequest,
        events: &mut Vec<Event>,
    ) -> anyhow::Result<Result<TxnResponse, EtcdError>> {
        if let Some(check) = check_txn_revisions(t, self.revision, self.compact_revision) {
            return Ok(Err(check));
        }
        let leases_known = all_put_leases(t).iter().all(|l| self.leases.contains(*l));
        let single = if leases_known {
            single_shard_of_txn(t, &self.shards)
        } else {
            None
        };
        if let Some(shard) = single {
            let req = t.clone();
            let index = self.applying_index;
            let outcome = self
                .shards
                .call(shard, |reply| ShardMsg::Txn {
                    index,
                    main,
                    req,
                    reply,
                })
                .await?;
            return Ok(match outcome {
                Ok(o) => {
                    events.extend(o.events);
                    Ok(o.response)
                }
                Err(e) => Err(e.into()),
            });
        }
        // Several shards. etcd settles every branch of every nested txn against the state
        // before the txn, then checks the taken path, then runs it.
        let path = self.decide_path(t).await?;
        if let Some(err) = self.check_path(t, &path).await? {
            return Ok(Err(err));
        }
        let mut sub = 0;
        let mut cursor = 0;
        let resp = self
            .run_path(main, t, &path, &mut cursor, &mut sub, events)
            .await?;
        Ok(Ok(resp))
    }

    async fn eval_compares(&self, compares: &[Compare]) -> anyhow::Result<bool> {
        for c in compares {
            let mut outcomes = Vec::new();
            for shard in self.shards.shards_for(&c.key, &c.range_end) {
                let one = vec![c.clone()];
                let mut r = self
                    .shards
                    .call(shard, |reply| ShardMsg::Compare {
                        compares: one,
                        reply,
                    })
                    .await?;
                outcomes.push(r.remove(0));
            }
            if !combine_compare(c, &outcomes) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The branch taken by the txn and by each nested txn on the taken path, in visiting order.
    async fn decide_path(&self, t: &TxnRequest) -> anyhow::Result<Vec<bool>> {
        let mut path = Vec::new();
        let mut stack = vec![t];
        while let Some(txn) = stack.pop() {
            let ok = self.eval_compares(&txn.compare).await?;
            path.push(ok);
            let ops = if ok { &txn.success } else { &txn.failure };
            // Visit nested txns in op order: push in reverse.
            for op in ops.iter().rev() {
                if let RequestOp::Txn(inner) = op {
                    stack.push(inner);
                }
            }
        }
        Ok(path)
    }

    /// etcd's pre-apply checks of the taken path: a put with ignore_value/ignore_lease needs an
    /// existing key (as of before the txn).
    async fn check_path(&self, t: &TxnRequest, path: &[bool]) -> anyhow::Result<Option<EtcdError>> {
        let mut puts = Vec::new();
        let mut leases = Vec::new();
        let mut cursor = 0;
        collect_taken_puts(t, path, &mut cursor, &mut puts, &mut leases);
        if leases.iter().any(|l| !self.leases.contains(*l)) {
            return Ok(Some(EtcdError::LeaseNotFound));
        }
        for key in puts {
            let probe = RangeRequest {
                key: key.clone(),
                count_only: true,
                ..Default::default()
            };
            let r = self
                .shards
                .range(&probe, self.revision)
                .await?
                .map_err(|e| anyhow::anyhow!("checking txn puts: {e}"))?;
            if r.count == 0 {
                return Ok(Some(EtcdError::KeyNotFound));
            }
        }
        Ok(None)
    }

    async fn run_path(
        &mut self,
        main: i64,
        t: &TxnRequest,
        path: &[bool],
        cursor: &mut usize,
        sub: &mut i64,
        events: &mut Vec<Event>,
    ) -> anyhow::Result<TxnResponse> {
        let succeeded = path[*cursor];
        *cursor += 1;
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let r = match op {
                RequestOp::Range(r) => {
                    // Reads inside a txn see the txn's own earlier writes.
                    let rev = if r.revision > 0 { r.revision } else { main };
                    let resp = self
                        .shards
                        .range(r, rev)
                        .await?
                        .map_err(|e| anyhow::anyhow!("txn range after checks: {e}"))?;
                    ResponseOp::Range(resp)
                }
                RequestOp::Put(p) => {
                    let s = *sub;
                    let req = p.clone();
                    let index = self.applying_index;
                    let (resp, ev) = self
                        .shards
                        .call(self.shards.owner(&p.key), |reply| ShardMsg::Put {
                            index,
                            main,
                            sub: s,
                            req,
                            reply,
                        })
                        .await?
                        .map_err(|e| anyhow::anyhow!("txn put after checks: {e}"))?;
                    *sub += 1;
                    events.push(ev);
                    ResponseOp::Put(resp)
                }
                RequestOp::DeleteRange(d) => {
                    ResponseOp::DeleteRange(self.delete_range(main, sub, d, events).await?)
                }
                RequestOp::Txn(inner) => ResponseOp::Txn(
                    Box::pin(self.run_path(main, inner, path, cursor, sub, events)).await?,
                ),
            };
            responses.push(r);
        }
        Ok(TxnResponse {
            succeeded,
            responses,
        })
    }
}

/// The keys of the taken path's puts that need an existing key, and the leases its puts name.
fn collect_taken_puts(
    t: &TxnRequest,
    path: &[bool],
    cursor: &mut usize,
    out: &mut Vec<Bytes>,
    leases: &mut Vec<i64>,
) {
    let ok = path[*cursor];
    *cursor += 1;
    for op in if ok { &t.success } else { &t.failure } {
        match op {
            RequestOp::Put(p) => {
                if p.ignore_value || p.ignore_lease {
                    out.push(p.key.clone());
                }
                if p.lease != 0 {
                    leases.push(p.lease);
                }
            }
            RequestOp::Txn(inner) => collect_taken_puts(inner, path, cursor, out, leases),
            _ => {}
        }
    }
}

/// The bytes a request may add to the store, if it is one the quota applies to (etcd's quota
/// covers puts, txns with puts and lease grants).
fn grows_store(req: &WriteRequest) -> Option<usize> {
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

/// Every lease any put of the txn names, on either branch.
fn all_put_leases(t: &TxnRequest) -> Vec<i64> {
    let mut out = Vec::new();
    for op in t.success.iter().chain(t.failure.iter()) {
        match op {
            RequestOp::Put(p) if p.lease != 0 => out.push(p.lease),
            RequestOp::Txn(inner) => out.extend(all_put_leases(inner)),
            _ => {}
        }
    }
    out
}

/// Range revisions anywhere in a txn are checked against the store before it runs, as etcd
/// checks them (a compacted or future revision fails the whole txn and changes nothing).
fn check_txn_revisions(t: &TxnRequest, current: i64, compacted: i64) -> Option<EtcdError> {
    for op in t.success.iter().chain(t.failure.iter()) {
        match op {
            RequestOp::Range(r) if r.revision > current => return Some(EtcdError::FutureRevision),
            RequestOp::Range(r) if r.revision > 0 && r.revision < compacted => {
                return Some(EtcdError::Compacted)
            }
            RequestOp::Txn(inner) => {
                if let Some(e) = check_txn_revisions(inner, current, compacted) {
                    return Some(e);
                }
            }
            _ => {}
        }
    }
    None
}

/// The one shard every key of the txn lives on, if there is one.
fn single_shard_of_txn(t: &TxnRequest, shards: &ShardSet) -> Option<usize> {
    if shards.len() == 1 {
        return Some(0);
    }
    let mut owner = None;
    let mut visit = |key: &[u8], range_end: &[u8]| -> bool {
        if !range_end.is_empty() {
            return false;
        }
        let o = shards.owner(key);
        match owner {
            None => {
                owner = Some(o);
                true
            }
            Some(x) => x == o,
        }
    };
    fn walk(t: &TxnRequest, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> bool {
        t.compare.iter().all(|c| visit(&c.key, &c.range_end))
            && t.success.iter().chain(t.failure.iter()).all(|op| match op {
                RequestOp::Range(r) => visit(&r.key, &r.range_end),
                RequestOp::Put(p) => visit(&p.key, &[]),
                RequestOp::DeleteRange(d) => visit(&d.key, &d.range_end),
                RequestOp::Txn(inner) => walk(inner, visit),
            })
    }
    if walk(t, &mut visit) {
        Some(owner.unwrap_or(0))
    } else {
        None
    }
}
