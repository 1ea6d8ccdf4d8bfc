//! etcd's Election service (`v3electionpb.Election`), served on the client port as etcd does.
//!
//! etcd implements it as a client of its own KV API with the `concurrency` recipes
//! (client/v3/concurrency: election.go, key.go); this is the same algorithm on the server's
//! internals: a campaigner creates `<name>/<lease-hex>` with its lease in a txn (create revision
//! 0), then waits for every key of the election with a smaller create revision to be deleted.
//! The oldest key is the leader. Waits are watches on the watch hub; they are async, and a
//! client that goes away drops them (and, like etcd on a canceled context, gives up its key).
//!
//! Errors: etcd's handlers return the errors of its internal client, which gRPC sends with code
//! Unknown and the error's text ("election: not leader", "etcdserver: requested lease not
//! found", ...). `fail` does the same.
//!
//! The helpers below (`txn`, `range`, `wait_deletes`, `KeyWatch`, ...) are shared with the Lock
//! service (`super::lock`).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use futures::Stream;
use prost::Message;
use proto::etcdserverpb as pb;
use proto::v3electionpb as epb;
use proto::v3electionpb::election_server::{Election, ElectionServer};
use shards as s;
use tonic::{Code, Request, Response, Status};

use super::convert::kv_out;
use super::status::code_and_message;
use super::Context;
use crate::coordinator::watch::{WatchCreate, WatchMsg, WatchOut, WATCH_OUTBOX_MAX};
use crate::coordinator::{CoordMsg, WriteRequest, WriteResponse};
use crate::error::EtcdError;

/// The TTL of the lease etcd's session grants when a request names lease 0
/// (concurrency.defaultSessionTTL).
const SESSION_TTL_SECS: i64 = 60;
/// gRPC decode limit above --max-request-bytes (as in `router`).
const GRPC_DECODE_OVERHEAD_BYTES: usize = 512 * 1024;

const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";
const MISSING_LEADER_KEY: &str = r#""leader" field must be provided"#;

/// The Election server for the router.
pub fn server(ctx: Context) -> ElectionServer<ElectionService> {
    let limit = ctx.max_request_bytes + GRPC_DECODE_OVERHEAD_BYTES;
    ElectionServer::new(ElectionService { ctx })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX)
}

pub struct ElectionService {
    pub ctx: Context,
}

// ---------------------------------------------------------------------------
// The recipes' building blocks (shared with `lock`)
// ---------------------------------------------------------------------------

/// An error as etcd's election and lock handlers send it: code Unknown, the error's text.
pub(super) fn fail(e: EtcdError) -> Status {
    Status::new(Code::Unknown, code_and_message(&e).1)
}

pub(super) fn fail_msg(msg: &str) -> Status {
    Status::new(Code::Unknown, msg)
}

/// etcd refuses a proposal larger than --max-request-bytes.
pub(super) fn check_size(ctx: &Context, m: &impl Message) -> Result<(), Status> {
    if m.encoded_len() > ctx.max_request_bytes {
        return Err(fail(EtcdError::RequestTooLarge));
    }
    Ok(())
}

/// `<prefix><lease as Go's %x>`: the key a session owns under an election or lock.
pub(super) fn session_key(prefix: &[u8], lease: i64) -> Bytes {
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    let mut k = BytesMut::with_capacity(prefix.len() + hex.len());
    k.put_slice(prefix);
    k.put_slice(hex.as_bytes());
    k.freeze()
}

/// `<name>/`.
pub(super) fn prefix_of(name: &[u8]) -> Bytes {
    let mut p = BytesMut::with_capacity(name.len() + 1);
    p.put_slice(name);
    p.put_u8(b'/');
    p.freeze()
}

/// etcd's GetPrefixRangeEnd: the first key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().unwrap() += 1;
            return end.into();
        }
        end.pop();
    }
    Bytes::from_static(b"\0")
}

/// `Get(prefix, WithFirstCreate())`: the key under `prefix` created first.
pub(super) fn first_created(prefix: &Bytes) -> s::RangeRequest {
    s::RangeRequest {
        key: prefix.clone(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: s::SortOrder::Ascend,
        sort_target: s::SortTarget::Create,
        ..Default::default()
    }
}

/// `Get(prefix, WithLastCreate(), WithMaxCreateRev(max))`.
fn last_created_up_to(prefix: &Bytes, max_create_revision: i64) -> s::RangeRequest {
    s::RangeRequest {
        key: prefix.clone(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: s::SortOrder::Descend,
        sort_target: s::SortTarget::Create,
        max_create_revision,
        ..Default::default()
    }
}

pub(super) fn get(key: &Bytes) -> s::RequestOp {
    s::RequestOp::Range(s::RangeRequest {
        key: key.clone(),
        ..Default::default()
    })
}

pub(super) fn put(key: &Bytes, value: Bytes, lease: i64) -> s::RequestOp {
    s::RequestOp::Put(s::PutRequest {
        key: key.clone(),
        value,
        lease,
        ..Default::default()
    })
}

/// `Compare(CreateRevision(key), "=", rev)`.
pub(super) fn created_at(key: &Bytes, rev: i64) -> s::Compare {
    s::Compare {
        key: key.clone(),
        range_end: Bytes::new(),
        result: s::CompareResult::Equal,
        target: s::CompareTarget::Create(rev),
    }
}

/// The range answer of op `i` of a txn response.
pub(super) fn range_at(resp: &s::TxnResponse, i: usize) -> &[s::KeyValue] {
    match resp.responses.get(i) {
        Some(s::ResponseOp::Range(r)) => &r.kvs,
        _ => &[],
    }
}

pub(super) async fn txn(
    ctx: &Context,
    t: s::TxnRequest,
) -> Result<(s::TxnResponse, pb::ResponseHeader), Status> {
    let out = ctx
        .coordinator
        .propose(WriteRequest::Txn(t))
        .await
        .map_err(fail)?;
    let WriteResponse::Txn(resp) = out.response else {
        unreachable!("a txn answers with a txn response")
    };
    Ok((resp, ctx.header(out.revision)))
}

pub(super) async fn delete(ctx: &Context, key: Bytes) -> Result<pb::ResponseHeader, Status> {
    let req = super::convert::delete_in(pb::DeleteRangeRequest {
        key,
        ..Default::default()
    })
    .map_err(fail)?;
    let out = ctx
        .coordinator
        .propose(WriteRequest::DeleteRange(req))
        .await
        .map_err(fail)?;
    Ok(ctx.header(out.revision))
}

/// A linearizable read at the current revision.
pub(super) async fn range(
    ctx: &Context,
    r: s::RangeRequest,
) -> Result<(s::RangeResponse, pb::ResponseHeader), Status> {
    ctx.coordinator.read_index().await.map_err(fail)?;
    let rev = ctx.published.revision();
    let resp = ctx
        .shards
        .range(&r, rev)
        .await
        .map_err(|_| fail(EtcdError::Stopped))?
        .map_err(|e| fail(e.into()))?;
    Ok((resp, ctx.header(rev)))
}

/// The session's lease: the one asked for, or (lease 0) a new one with etcd's session TTL.
pub(super) async fn session_lease(ctx: &Context, lease: i64) -> Result<i64, Status> {
    if lease != 0 {
        return Ok(lease);
    }
    let out = ctx
        .coordinator
        .propose(WriteRequest::LeaseGrant {
            id: 0,
            ttl_secs: SESSION_TTL_SECS,
        })
        .await
        .map_err(fail)?;
    let WriteResponse::LeaseGrant { id, .. } = out.response else {
        unreachable!("a grant answers with a grant")
    };
    Ok(id)
}

/// Stream IDs of the watch hub for these internal watches; far from the Watch service's.
static NEXT_STREAM_ID: AtomicU64 = AtomicU64::new(1 << 62);

/// One watcher on the watch hub, on a stream of its own; dropping it closes the stream.
pub(super) struct KeyWatch {
    ctx: Context,
    stream: u64,
    rx: flume::Receiver<WatchOut>,
}

impl KeyWatch {
    pub(super) async fn open(
        ctx: &Context,
        key: Bytes,
        range_end: Bytes,
        start_revision: i64,
    ) -> Result<Self, Status> {
        let stream = NEXT_STREAM_ID.fetch_add(1, Ordering::Relaxed);
        let (out, rx) = flume::bounded(WATCH_OUTBOX_MAX);
        let w = KeyWatch {
            ctx: ctx.clone(),
            stream,
            rx,
        };
        let req = WatchCreate {
            key,
            range_end,
            start_revision,
            prev_kv: false,
            progress_notify: false,
            filter_put: false,
            filter_delete: false,
            watch_id: 0,
        };
        ctx.coordinator
            .send(CoordMsg::Watch(WatchMsg::Create { stream, req, out }))
            .await
            .map_err(fail)?;
        Ok(w)
    }

    /// The next batch of events and its response revision.
    pub(super) async fn next(&mut self) -> Result<(i64, Vec<s::Event>), Status> {
        loop {
            match self.rx.recv_async().await {
                Ok(WatchOut::Events {
                    revision, events, ..
                }) => return Ok((revision, events)),
                Ok(WatchOut::Created { .. } | WatchOut::Progress { .. }) => continue,
                Ok(WatchOut::Canceled {
                    compact_revision, ..
                }) if compact_revision != 0 => return Err(fail(EtcdError::Compacted)),
                Ok(WatchOut::Canceled { .. } | WatchOut::CreateRefused { .. }) | Err(_) => {
                    return Err(fail_msg("lost watcher waiting for delete"))
                }
            }
        }
    }
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        let coordinator = self.ctx.coordinator.clone();
        let stream = self.stream;
        glommio::spawn_local(async move {
            let _ = coordinator
                .send(CoordMsg::Watch(WatchMsg::Close { stream }))
                .await;
        })
        .detach();
    }
}

/// key.go `waitDelete`: returns once `key` is deleted at or after `revision`.
async fn wait_delete(ctx: &Context, key: Bytes, revision: i64) -> Result<(), Status> {
    let mut w = KeyWatch::open(ctx, key, Bytes::new(), revision).await?;
    loop {
        let (_, events) = w.next().await?;
        if events.iter().any(|e| e.kind == s::EventKind::Delete) {
            return Ok(());
        }
    }
}

/// key.go `waitDeletes`: returns once no key under `prefix` has a create revision up to
/// `max_create_revision`.
pub(super) async fn wait_deletes(
    ctx: &Context,
    prefix: &Bytes,
    max_create_revision: i64,
) -> Result<(), Status> {
    loop {
        let (resp, header) = range(ctx, last_created_up_to(prefix, max_create_revision)).await?;
        let Some(last) = resp.kvs.into_iter().next() else {
            return Ok(());
        };
        wait_delete(ctx, last.key, header.revision).await?;
    }
}

/// A write proposed when dropped while armed: how a request that is given up (its client went
/// away) cleans up after itself, as etcd's recipes do on a canceled context.
pub(super) struct CleanupOnDrop {
    ctx: Context,
    req: Option<WriteRequest>,
}

impl CleanupOnDrop {
    pub(super) fn new(ctx: &Context, req: WriteRequest) -> Self {
        CleanupOnDrop {
            ctx: ctx.clone(),
            req: Some(req),
        }
    }

    pub(super) fn disarm(&mut self) {
        self.req = None;
    }
}

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        if let Some(req) = self.req.take() {
            let coordinator = self.ctx.coordinator.clone();
            glommio::spawn_local(async move {
                let _ = coordinator.propose(req).await;
            })
            .detach();
        }
    }
}

// ---------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------

/// `Resign`'s txn: delete the leader key if it is still the one created at `rev`.
fn resign_txn(key: &Bytes, rev: i64) -> s::TxnRequest {
    s::TxnRequest {
        compare: vec![created_at(key, rev)],
        success: vec![s::RequestOp::DeleteRange(s::DeleteRangeRequest {
            key: key.clone(),
            ..Default::default()
        })],
        failure: vec![],
    }
}

/// `Proclaim`'s txn: put `value` on the leader key if it is still the one created at `rev`.
async fn proclaim(
    ctx: &Context,
    key: &Bytes,
    rev: i64,
    lease: i64,
    value: Bytes,
) -> Result<pb::ResponseHeader, Status> {
    let (resp, header) = txn(
        ctx,
        s::TxnRequest {
            compare: vec![created_at(key, rev)],
            success: vec![put(key, value, lease)],
            failure: vec![],
        },
    )
    .await?;
    if !resp.succeeded {
        return Err(fail_msg(NOT_LEADER));
    }
    Ok(header)
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<epb::LeaderResponse, Status>> + Send>>;

/// election.go `observe`, as a stream: the current leader, then its proclamations until its key
/// is deleted, then the next leader, and so on. Ends (without an error, as etcd's does) when a
/// read or a watch fails.
struct Observer {
    ctx: Context,
    prefix: Bytes,
    following: Option<KeyWatch>,
    pending: VecDeque<epb::LeaderResponse>,
}

impl Observer {
    /// Finds the leader (waiting for one if there is none) and starts following its key.
    async fn find_leader(&mut self) -> Result<(), Status> {
        let (resp, mut header) = range(&self.ctx, first_created(&self.prefix)).await?;
        let kv = match resp.kvs.into_iter().next() {
            Some(kv) => kv,
            None => {
                let mut w = KeyWatch::open(
                    &self.ctx,
                    self.prefix.clone(),
                    prefix_end(&self.prefix),
                    header.revision,
                )
                .await?;
                loop {
                    let (revision, events) = w.next().await?;
                    if let Some(e) = events.into_iter().find(|e| e.kind == s::EventKind::Put) {
                        header = self.ctx.header(revision);
                        header.revision = e.kv.mod_revision;
                        break e.kv;
                    }
                }
            }
        };
        let watch =
            KeyWatch::open(&self.ctx, kv.key.clone(), Bytes::new(), header.revision + 1).await?;
        self.pending.push_back(epb::LeaderResponse {
            header: Some(header),
            kv: Some(kv_out(kv)),
        });
        self.following = Some(watch);
        Ok(())
    }

    /// One step: queues responses or learns the leader key was deleted.
    async fn step(&mut self) -> Result<(), Status> {
        let Some(w) = self.following.as_mut() else {
            return self.find_leader().await;
        };
        let (revision, events) = w.next().await?;
        for e in events {
            if e.kind == s::EventKind::Delete {
                self.following = None;
                break;
            }
            self.pending.push_back(epb::LeaderResponse {
                header: Some(self.ctx.header(revision)),
                kv: Some(kv_out(e.kv)),
            });
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<epb::CampaignRequest>,
    ) -> Result<Response<epb::CampaignResponse>, Status> {
        let ctx = &self.ctx;
        let r = request.into_inner();
        check_size(ctx, &r)?;
        let lease = session_lease(ctx, r.lease).await?;
        let prefix = prefix_of(&r.name);
        let key = session_key(&prefix, lease);
        let (resp, header) = txn(
            ctx,
            s::TxnRequest {
                compare: vec![created_at(&key, 0)],
                success: vec![put(&key, r.value.clone(), lease)],
                failure: vec![get(&key)],
            },
        )
        .await?;
        let mut rev = header.revision;
        if !resp.succeeded {
            let Some(kv) = range_at(&resp, 0).first() else {
                return Err(fail_msg(NOT_LEADER));
            };
            rev = kv.create_revision;
            if kv.value != r.value {
                if let Err(e) = proclaim(ctx, &key, rev, lease, r.value.clone()).await {
                    let _ = txn(ctx, resign_txn(&key, rev)).await;
                    return Err(e);
                }
            }
        }
        // Given up while waiting (the client went away): resign, as etcd does.
        let mut resign = CleanupOnDrop::new(ctx, WriteRequest::Txn(resign_txn(&key, rev)));
        let waited = wait_deletes(ctx, &prefix, rev - 1).await;
        resign.disarm();
        waited?;
        Ok(Response::new(epb::CampaignResponse {
            header: Some(header),
            leader: Some(epb::LeaderKey {
                name: r.name,
                key,
                rev,
                lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<epb::ProclaimRequest>,
    ) -> Result<Response<epb::ProclaimResponse>, Status> {
        let ctx = &self.ctx;
        let r = request.into_inner();
        check_size(ctx, &r)?;
        let leader = r.leader.ok_or_else(|| fail_msg(MISSING_LEADER_KEY))?;
        let lease = session_lease(ctx, leader.lease).await?;
        let header = proclaim(ctx, &leader.key, leader.rev, lease, r.value).await?;
        Ok(Response::new(epb::ProclaimResponse {
            header: Some(header),
        }))
    }

    async fn leader(
        &self,
        request: Request<epb::LeaderRequest>,
    ) -> Result<Response<epb::LeaderResponse>, Status> {
        let prefix = prefix_of(&request.into_inner().name);
        let (resp, header) = range(&self.ctx, first_created(&prefix)).await?;
        let kv = resp
            .kvs
            .into_iter()
            .next()
            .ok_or_else(|| fail_msg(NO_LEADER))?;
        Ok(Response::new(epb::LeaderResponse {
            header: Some(header),
            kv: Some(kv_out(kv)),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<epb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let observer = Observer {
            ctx: self.ctx.clone(),
            prefix: prefix_of(&request.into_inner().name),
            following: None,
            pending: VecDeque::new(),
        };
        // Dropping the stream (the client went away) drops the observer and its watch.
        let responses = futures::stream::unfold(observer, |mut o| async move {
            loop {
                if let Some(r) = o.pending.pop_front() {
                    return Some((Ok(r), o));
                }
                if o.step().await.is_err() {
                    return None;
                }
            }
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn resign(
        &self,
        request: Request<epb::ResignRequest>,
    ) -> Result<Response<epb::ResignResponse>, Status> {
        let ctx = &self.ctx;
        let leader = request
            .into_inner()
            .leader
            .ok_or_else(|| fail_msg(MISSING_LEADER_KEY))?;
        // etcd's handler opens a session first: lease 0 grants one (unused).
        session_lease(ctx, leader.lease).await?;
        let (_, header) = txn(ctx, resign_txn(&leader.key, leader.rev)).await?;
        Ok(Response::new(epb::ResignResponse {
            header: Some(header),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_ranges_are_etcds() {
        assert_eq!(&session_key(b"e/", 0x694d_7a2f_03b1)[..], b"e/694d7a2f03b1");
        assert_eq!(&session_key(b"e/", -26)[..], b"e/-1a");
        assert_eq!(&prefix_of(b"e")[..], b"e/");
        assert_eq!(&prefix_end(b"e/")[..], b"e0");
        assert_eq!(&prefix_end(b"a\xff")[..], b"b");
        assert_eq!(&prefix_end(b"\xff\xff")[..], b"\0");
    }
}
