//! The applier: takes committed entries from the raft node's queue, strictly in log order, and
//! applies them by driving the shards. It owns the revision counter, the compact revision,
//! leases, auth, members and alarms, answers the proposers, feeds the watch hub, and takes the
//! checkpoints. It reports its applied index through `Published::applied_index`, which the
//! raft node reads for ReadIndex, flow control and log trimming.
//!
//! Lives on core 0, beside the raft node. It may wait for the shards, the watch hub and the
//! raft node's inbox; the raft node never waits for it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use raft::eraftpb::{ConfChangeV2, ConfState, Entry, EntryType, Message};
use shards::{
    combine_compare, Compare, DeleteRangeRequest, DeleteRangeResponse, Event, PutResponse,
    RangeRequest, RequestOp, ResponseOp, TxnRequest, TxnResponse,
};

use super::raft::{
    ApplyBatch, ApplyMsg, ConfMsg, RaftMsg, ReadBatch, RoleChange, SharedSnapshotSlot,
};
use super::seams::{CheckpointStore, Clock, LocalFuture};
use super::transfer::{Chunk, ImageDecoder, SnapshotImage};
use super::watch::WatchInput;
use super::{
    auth, checkpoint, codec, compaction_hash, grows_store, lease, members, rpc, AlarmKind,
    CoordMsg, LeaseInfo, Published, WriteOutcome, WriteReply, WriteRequest, WriteResponse,
};
use crate::error::EtcdError;
use crate::peer::{PeerError, PeerIncoming};
use crate::runtime::mesh::ShardSet;
use crate::runtime::shard::ShardMsg;

/// Puts sent to the shards at once before their answers are awaited: bounds what one apply
/// step holds in flight.
const PUT_PIPELINE_MAX: usize = 1024;
/// How stale the published store size may be while writes flow.
const DB_SIZE_REFRESH_INTERVAL: Duration = Duration::from_millis(20);
/// A checkpoint is also taken this long after the last one if anything was applied since, so
/// the unsynced part of the shards' segments and the WAL replay at start-up stay small on a
/// member that writes too slowly to reach --snapshot-count.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);
/// How long a member that applied its own removal goes on before it stops (etcd: 1 s).
const REMOVED_STOP_DELAY: Duration = Duration::from_secs(1);
/// The applier's own clock: lease expiry checks, the db size refresh, forgotten waiters.
const TIMER_INTERVAL: Duration = Duration::from_millis(100);

fn member_error(e: members::MemberError) -> EtcdError {
    match e {
        members::MemberError::IdExists => EtcdError::MemberExists,
        members::MemberError::PeerUrlExists => EtcdError::PeerUrlExists,
        members::MemberError::NotFound => EtcdError::MemberNotFound,
        members::MemberError::NotLearner => EtcdError::MemberNotLearner,
        members::MemberError::TooManyLearners => EtcdError::TooManyLearners,
    }
}

/// What a member logs (as etcd does) when it learns it was removed; it then stops.
pub const REMOVED_FROM_CLUSTER: &str = "the member has been permanently removed from the cluster";

/// A committed entry applied without waiting for the one before (see `pipeline_run`).
enum Pipelined {
    Put(shards::PutRequest),
    /// A single-shard txn, and its shard.
    Txn(usize, TxnRequest),
    /// A txn without compares whose ops are plain puts on several shards: each shard gets its
    /// share in one `ShardMsg::Puts`.
    Spread(TxnRequest),
}

/// The replies of one multi-shard run of puts: one receiver per shard involved.
type PutsReplies = Vec<oneshot::Receiver<Result<Vec<(PutResponse, Event)>, shards::MvccError>>>;

pub struct ApplierConfig {
    pub member_id: u64,
    /// The cluster's ID, for the member list a joining member asks for.
    pub cluster_id: u64,
    /// etcd's minimum lease TTL: ceil(1.5 × election timeout), in seconds.
    pub lease_ttl_min_secs: i64,
    /// The members of --initial-cluster (this one with its client URLs).
    pub initial_members: Vec<members::Member>,
    /// --snapshot-count: applied entries between checkpoints.
    pub snapshot_count: u64,
    /// raft's configuration as of the checkpoint (or the initial one).
    pub conf_state: ConfState,
}

/// What start-up recovered besides the WAL: the last checkpoint, and the lease attachments
/// found in the shards' stores (they are derived state, not checkpointed).
#[derive(Default)]
pub struct Restored {
    pub checkpoint: Option<checkpoint::CheckpointState>,
    pub lease_keys: Vec<(Bytes, i64)>,
}

/// The channels the applier reads and writes.
pub struct ApplierLinks {
    pub snapshot_slot: SharedSnapshotSlot,
    pub queue: flume::Receiver<ApplyMsg>,
    pub queries: flume::Receiver<CoordMsg>,
    pub raft_tx: flume::Sender<RaftMsg>,
    pub watch_tx: flume::Sender<WatchInput>,
}

/// What woke the applier.
enum Wake {
    Apply(ApplyMsg),
    Query(CoordMsg),
    Checkpoint(Result<(), String>),
    Timer,
    Closed,
}

pub struct Applier<K: CheckpointStore, C: Clock> {
    shards: ShardSet,
    published: Arc<Published>,
    links: ApplierLinks,
    queries_open: bool,
    checkpoints: K,
    clock: C,
    member_id: u64,
    waiters: HashMap<u64, WriteReply>,
    /// Reads whose index raft has confirmed, waiting for apply to reach it.
    reads_waiting_apply: Vec<(u64, ReadBatch)>,
    revision: i64,
    compact_revision: i64,
    applied_index: u64,
    /// The term of the entry at `applied_index`.
    applied_term: u64,
    /// The raft index of the entry being applied: shard writes carry it into their segments.
    applying_index: u64,
    role: RoleChange,
    conf_state: ConfState,
    /// Where the shards' segment logs live (`CheckpointState::layout`).
    layout: String,
    leases: lease::LeaseTable,
    auth: Arc<auth::AuthStore>,
    alarms: std::collections::BTreeSet<(u64, AlarmKind)>,
    members: members::Members,
    /// The members of --initial-cluster: this member's own name and client URLs among them.
    initial_members: Vec<members::Member>,
    /// When the db size was last read from the shards, and whether anything was applied since.
    db_size_read_at: Instant,
    db_size_stale: bool,
    snapshot_count: u64,
    /// The newest durable checkpoint, and when it was taken.
    checkpoint_index: u64,
    checkpoint_at: Instant,
    /// A checkpoint whose shard syncs and state file are being written: its index and the
    /// future that finishes it.
    checkpoint_in_flight: Option<(u64, LocalFuture<'static, Result<(), String>>)>,
    next_timer: Instant,
    /// A snapshot from the leader, staged and waiting for raft to accept it: its state and
    /// the layout its shard data was written to.
    staged: Option<(checkpoint::CheckpointState, String)>,
    /// Staging attempts so far: each writes to a layout of its own.
    staging_attempts: u64,
    /// The membership changed while the raft node could not be told (it waited for us).
    peers_changed: bool,
    /// This member applied its own removal: it stops once the proposer is answered.
    removed_self: bool,
    cluster_id: u64,
}

impl<K: CheckpointStore, C: Clock> Applier<K, C> {
    /// The applier's state as of the checkpoint (or the empty state of a new member). Entries
    /// after it are re-applied through the normal apply path, so replay and live apply are the
    /// same code.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: ApplierConfig,
        restored: Restored,
        shards: ShardSet,
        published: Arc<Published>,
        links: ApplierLinks,
        checkpoints: K,
        clock: C,
    ) -> anyhow::Result<Self> {
        let now = clock.now();
        let mut applier = Applier {
            layout: checkpoint::default_layout(shards.len()),
            shards,
            published,
            links,
            queries_open: true,
            checkpoints,
            clock,
            member_id: cfg.member_id,
            cluster_id: cfg.cluster_id,
            waiters: HashMap::new(),
            reads_waiting_apply: Vec::new(),
            revision: 1,
            compact_revision: 0,
            applied_index: 0,
            applied_term: 0,
            applying_index: 0,
            role: RoleChange {
                leader_id: 0,
                is_leader: false,
                term: 0,
            },
            conf_state: cfg.conf_state,
            leases: lease::LeaseTable::new(cfg.lease_ttl_min_secs),
            auth: Arc::new(auth::AuthStore::default()),
            alarms: Default::default(),
            members: members::Members::new(cfg.initial_members.clone()),
            initial_members: cfg.initial_members,
            db_size_read_at: now,
            db_size_stale: true,
            snapshot_count: cfg.snapshot_count.max(1),
            checkpoint_index: 0,
            checkpoint_at: now,
            checkpoint_in_flight: None,
            staged: None,
            staging_attempts: 0,
            peers_changed: false,
            removed_self: false,
            next_timer: now + TIMER_INTERVAL,
        };
        match restored.checkpoint {
            Some(state) => {
                applier.load_checkpoint(&state, restored.lease_keys)?;
                // The transport learns the members and the removed ones as of the checkpoint
                // (a removed member stays refused after a restart, as etcd's
                // `members_removed`).
                applier.peers_changed = true;
            }
            None => applier.publish_all(),
        }
        Ok(applier)
    }

    /// Makes a checkpoint (read at start-up, or a snapshot from the leader) the applier's
    /// state, with the lease attachments found in the shards' stores.
    fn load_checkpoint(
        &mut self,
        state: &checkpoint::CheckpointState,
        lease_keys: Vec<(Bytes, i64)>,
    ) -> anyhow::Result<()> {
        let mut leases = lease::LeaseTable::new(self.leases.min_ttl_secs);
        for l in &state.leases {
            leases.restore(l.id, l.ttl_secs);
        }
        for (key, id) in lease_keys {
            if !leases.attach(id, key.clone()) {
                anyhow::bail!(
                    "key {:?} is attached to lease {id:x}, which the checkpoint does not have",
                    String::from_utf8_lossy(&key)
                );
            }
        }
        if self.role.is_leader {
            leases.start_clocks(self.clock.now());
        }
        let auth = auth::AuthStore::from_record(&state.auth)
            .map_err(|e| anyhow::anyhow!("checkpoint auth state: {e}"))?;
        let mut members = members::Members::new(
            state
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
        members.restore_removed(&state.removed_members);
        // This member's name and client URLs are what it runs with now.
        if let Some(me) = self.initial_members.iter().find(|m| m.id == self.member_id) {
            members.refresh_local(me);
        }
        let mut alarms = std::collections::BTreeSet::new();
        for a in &state.alarms {
            let kind = AlarmKind::from_number(a.alarm)
                .ok_or_else(|| anyhow::anyhow!("checkpoint: unknown alarm type {}", a.alarm))?;
            alarms.insert((a.member_id, kind));
        }
        self.leases = leases;
        self.auth = Arc::new(auth);
        self.members = members;
        self.alarms = alarms;
        self.revision = state.revision.max(1);
        self.compact_revision = state.compact_revision;
        self.applied_index = state.raft_index;
        self.applied_term = state.raft_term;
        self.applying_index = state.raft_index;
        self.conf_state = ConfState::from((state.voters.clone(), state.learners.clone()));
        self.layout = state.layout_name();
        self.checkpoint_index = state.raft_index;
        self.publish_all();
        Ok(())
    }

    /// Publishes everything other cores read of the applier's state.
    fn publish_all(&self) {
        self.published.auth.publish(self.auth.clone());
        let nospace = self.alarms.iter().any(|(_, a)| *a == AlarmKind::NoSpace);
        self.published.nospace.store(nospace, Ordering::Release);
        self.published
            .compact_revision
            .store(self.compact_revision, Ordering::Release);
        self.publish_membership();
        self.published
            .revision
            .store(self.revision, Ordering::Release);
        self.published
            .applied_index
            .store(self.applied_index, Ordering::Release);
    }

    /// The revision the watch hub starts from.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub async fn run(mut self) -> anyhow::Result<()> {
        loop {
            match self.next_wake().await {
                Wake::Apply(ApplyMsg::Batch(batch)) => self.on_batch(batch).await?,
                Wake::Apply(ApplyMsg::PeerRequest { from, body, reply }) => {
                    self.on_peer_request(from, &body, reply)
                }
                Wake::Apply(ApplyMsg::GenerateSnapshot) => self.generate_snapshot().await?,
                Wake::Apply(ApplyMsg::ReceiveSnapshot { msg, chunks, done }) => {
                    self.receive_snapshot(msg, chunks, done).await?
                }
                Wake::Apply(ApplyMsg::InstallSnapshot { index, reply }) => {
                    match self.install_snapshot(index).await {
                        Ok(()) => {
                            let _ = reply.send(Ok(()));
                        }
                        Err(e) => {
                            let _ = reply.send(Err(format!("{e:#}")));
                            return Err(e);
                        }
                    }
                }
                // A snapshot's cut queues a message on every shard, between two apply steps.
                Wake::Query(CoordMsg::SnapshotState { reply }) => {
                    let state = self.checkpoint_state(self.applied_index)?;
                    let _ = reply.send(super::snapshot::cut(state, &self.shards).await?);
                }
                Wake::Query(q) => self.on_query(q),
                Wake::Checkpoint(result) => self.on_checkpoint_done(result).await?,
                Wake::Timer => {}
                // The raft node is gone: the member is stopping.
                Wake::Closed => return Ok(()),
            }
            let now = self.clock.now();
            if now >= self.next_timer {
                self.next_timer = now + TIMER_INTERVAL;
                self.on_timer(now);
            }
            if self.peers_changed {
                self.peers_changed = false;
                self.announce_peers(Vec::new())?;
            }
            self.refresh_db_size().await?;
            self.checkpoint_step().await?;
        }
    }

    /// Builds a snapshot of the applied state for raft to send a follower: the state now, and
    /// every version the shards retain (asked between two applied entries, so all of the same
    /// index). Values are shared with the stores, not copied.
    async fn generate_snapshot(&mut self) -> anyhow::Result<()> {
        let index = self.applied_index;
        let state = self.checkpoint_state(index)?;
        let parts = self
            .shards
            .call_all(|reply| ShardMsg::Retained { reply })
            .await?;
        let mut events: Vec<Event> = parts.into_iter().flatten().collect();
        events.sort_by_key(|e| (e.kv.mod_revision, e.sub_revision));
        crate::log_info!(
            "generated snapshot",
            "snapshot-index" => index,
            "revision" => self.revision,
            "events" => events.len()
        );
        let mut slot = self.links.snapshot_slot.borrow_mut();
        slot.image = Some(std::rc::Rc::new(SnapshotImage { state, events }));
        slot.generating = false;
        Ok(())
    }

    /// Stages a snapshot the leader streams: each shard writes its share into a new layout
    /// as the chunks arrive. Once the whole stream checked out, raft gets the message.
    async fn receive_snapshot(
        &mut self,
        msg: Message,
        chunks: flume::Receiver<Result<Bytes, PeerError>>,
        done: oneshot::Sender<Result<(), String>>,
    ) -> anyhow::Result<()> {
        let index = msg.get_snapshot().get_metadata().index;
        self.staging_attempts += 1;
        let layout = format!(
            "shards-{}-at-{index}-{}",
            self.shards.len(),
            self.staging_attempts
        );
        match self.stage_snapshot(index, &layout, chunks).await? {
            Ok(state) => {
                crate::log_info!(
                    "received and saved database snapshot",
                    "snapshot-index" => index,
                    "remote-peer-id" => crate::ids::format_id(msg.from)
                );
                self.staged = Some((state, layout));
                let _ = done.send(Ok(()));
                self.links
                    .raft_tx
                    .send_async(RaftMsg::Peer(PeerIncoming::Raft(vec![msg])))
                    .await
                    .map_err(|_| anyhow::anyhow!("the raft node stopped"))?;
            }
            Err(e) => {
                crate::log_warn!(
                    "failed to receive database snapshot",
                    "snapshot-index" => index,
                    "error" => e.clone()
                );
                let _ = done.send(Err(e));
            }
        }
        Ok(())
    }

    /// The outer error is fatal (a shard is gone); the inner one fails this snapshot only.
    async fn stage_snapshot(
        &mut self,
        index: u64,
        layout: &str,
        chunks: flume::Receiver<Result<Bytes, PeerError>>,
    ) -> anyhow::Result<Result<checkpoint::CheckpointState, String>> {
        let mut decoder = ImageDecoder::default();
        let mut state = None;
        loop {
            let chunk = match chunks.recv_async().await {
                Ok(Ok(chunk)) => chunk,
                Ok(Err(e)) => return Ok(Err(e.to_string())),
                Err(_) => return Ok(Err("the snapshot stream ended early".into())),
            };
            match decoder.feed(&chunk) {
                Err(e) => return Ok(Err(e.to_string())),
                Ok(Chunk::Header(s)) if s.raft_index != index => {
                    return Ok(Err(format!(
                        "the stream holds index {}, the message says {index}",
                        s.raft_index
                    )))
                }
                Ok(Chunk::Header(s)) => state = Some(s),
                Ok(Chunk::Events(events)) => {
                    let mut routed: Vec<Vec<Event>> = vec![Vec::new(); self.shards.len()];
                    for e in events {
                        routed[self.shards.owner(&e.kv.key)].push(e);
                    }
                    for (shard, events) in routed.into_iter().enumerate() {
                        if events.is_empty() {
                            continue;
                        }
                        let layout = layout.to_string();
                        let staged = self
                            .shards
                            .call(shard, |reply| ShardMsg::Stage {
                                layout,
                                events,
                                finish: None,
                                reply,
                            })
                            .await?;
                        if let Err(e) = staged {
                            return Ok(Err(e));
                        }
                    }
                }
                Ok(Chunk::End) => break,
            }
        }
        // The transport closes a stream it checked with an empty chunk; a stream that breaks
        // after our end frame still failed.
        if let Ok(Err(e)) = chunks.recv_async().await {
            return Ok(Err(e.to_string()));
        }
        let state = state.expect("a stream that ended had its header");
        for shard in 0..self.shards.len() {
            let layout = layout.to_string();
            let finish = Some((index, state.compact_revision));
            let staged = self
                .shards
                .call(shard, |reply| ShardMsg::Stage {
                    layout,
                    events: Vec::new(),
                    finish,
                    reply,
                })
                .await?;
            if let Err(e) = staged {
                return Ok(Err(e));
            }
        }
        Ok(Ok(*state))
    }

    /// Makes the staged snapshot at `index` this member's state. The checkpoint file naming
    /// the staged layout is the commit point: a crash before it leaves the old state, after it
    /// the new one (and the WAL's older entries are then below the checkpoint).
    async fn install_snapshot(&mut self, index: u64) -> anyhow::Result<()> {
        let (state, layout) = match self.staged.take() {
            Some((state, layout)) if state.raft_index == index => (state, layout),
            _ => anyhow::bail!("raft accepted a snapshot at {index} that was not staged"),
        };
        // A checkpoint being written would land after ours and take the member back.
        if let Some((_, done)) = self.checkpoint_in_flight.take() {
            let _ = done.await;
        }
        let mut state = state;
        state.layout = layout.clone();
        state.shard_count = self.shards.len() as u32;
        self.checkpoints
            .save(state.clone())
            .await
            .map_err(|e| anyhow::anyhow!("saving the snapshot's checkpoint: {e}"))?;
        let installed = self
            .shards
            .call_all(|reply| ShardMsg::Install {
                layout: layout.clone(),
                index,
                reply,
            })
            .await?;
        let mut lease_keys = Vec::new();
        for keys in installed {
            lease_keys.extend(keys.map_err(|e| anyhow::anyhow!("{e}"))?);
        }
        self.load_checkpoint(&state, lease_keys)?;
        for shard in 0..self.shards.len() {
            self.shards.send(shard, ShardMsg::CheckpointSaved).await?;
        }
        self.links
            .watch_tx
            .send_async(WatchInput::Reset {
                revision: self.revision,
            })
            .await
            .map_err(|_| anyhow::anyhow!("the watch hub stopped"))?;
        self.db_size_stale = true;
        self.peers_changed = true;
        self.release_reads();
        Ok(())
    }

    /// Waits for the next thing to do; the apply queue goes first.
    async fn next_wake(&mut self) -> Wake {
        let queue = self.links.queue.clone();
        let queries = self.links.queries.clone();
        let apply = queue.recv_async();
        let query = queries.recv_async();
        let now = self.clock.now();
        let mut timer = self
            .clock
            .sleep(self.next_timer.saturating_duration_since(now));
        futures::pin_mut!(apply, query);
        let queries_open = &mut self.queries_open;
        let in_flight = &mut self.checkpoint_in_flight;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(m) = apply.as_mut().poll(cx) {
                return Poll::Ready(m.map_or(Wake::Closed, Wake::Apply));
            }
            if let Some((_, done)) = in_flight {
                if let Poll::Ready(result) = done.as_mut().poll(cx) {
                    return Poll::Ready(Wake::Checkpoint(result));
                }
            }
            if *queries_open {
                match query.as_mut().poll(cx) {
                    Poll::Ready(Ok(q)) => return Poll::Ready(Wake::Query(q)),
                    Poll::Ready(Err(_)) => *queries_open = false,
                    Poll::Pending => {}
                }
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Timer);
            }
            Poll::Pending
        })
        .await
    }

    async fn on_batch(&mut self, batch: ApplyBatch) -> anyhow::Result<()> {
        for (id, reply) in batch.waiters {
            self.waiters.insert(id, reply);
        }
        if let Some(role) = batch.role {
            self.on_role(role);
        }
        self.apply_entries(batch.entries).await?;
        self.reads_waiting_apply.extend(batch.reads);
        self.release_reads();
        // Only a wake-up: the index itself is in `Published`. A full inbox means the raft node
        // has work queued and will read the index anyway.
        let _ = self.links.raft_tx.try_send(RaftMsg::Applied);
        Ok(())
    }

    fn on_role(&mut self, role: RoleChange) {
        let now = self.clock.now();
        if role.is_leader && !self.role.is_leader {
            // etcd's Promote: a new leader gives every lease a fresh TTL.
            self.leases.start_clocks(now);
        } else if !role.is_leader && self.role.is_leader {
            self.leases.stop_clocks();
        }
        self.role = role;
    }

    fn on_timer(&mut self, now: Instant) {
        self.expire_leases(now);
        // Answer channels of proposals whose clients gave up and whose entries never came
        // (lost with a leader change): nothing will answer them.
        self.waiters.retain(|_, reply| !reply.is_canceled());
    }

    /// Leader only: proposes a revoke for every lease whose time ran out.
    fn expire_leases(&mut self, now: Instant) {
        if !self.role.is_leader {
            return;
        }
        for id in self.leases.take_expired(now) {
            let msg = RaftMsg::Propose {
                req: WriteRequest::LeaseRevoke { id },
                reply: None,
            };
            if self.links.raft_tx.try_send(msg).is_err() {
                self.leases.revoke_failed(id);
            }
        }
    }

    fn on_query(&mut self, msg: CoordMsg) {
        match msg {
            CoordMsg::LeaseKeepAlive { id, reply } => {
                let _ = reply.send(self.keep_alive(id));
            }
            CoordMsg::LeaseTimeToLive { id, keys, reply } => {
                let _ = reply.send(self.time_to_live(id, keys));
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
            CoordMsg::Propose { .. }
            | CoordMsg::ReadIndex { .. }
            | CoordMsg::Watch(_)
            | CoordMsg::SnapshotState { .. } => {
                unreachable!("the coordinator handle and the apply loop route these elsewhere")
            }
        }
    }

    /// Restarts a lease's clock; only the leader keeps lease time.
    fn keep_alive(&mut self, id: i64) -> Result<Option<i64>, EtcdError> {
        if self.role.is_leader {
            Ok(self.leases.renew(id, self.clock.now()))
        } else if self.role.leader_id == raft::INVALID_ID {
            Err(EtcdError::NoLeader)
        } else {
            Err(EtcdError::NotLeader)
        }
    }

    /// A lease's remaining time as the leader counts it (the only clock there is).
    fn time_to_live(&self, id: i64, keys: bool) -> Result<Option<LeaseInfo>, EtcdError> {
        if self.role.is_leader {
            Ok(self.lease_info(id, keys))
        } else if self.role.leader_id == raft::INVALID_ID {
            Err(EtcdError::NoLeader)
        } else {
            Err(EtcdError::NotLeader)
        }
    }

    fn lease_info(&self, id: i64, keys: bool) -> Option<LeaseInfo> {
        self.leases.get(id).map(|l| LeaseInfo {
            remaining_secs: self
                .leases
                .remaining_secs(id, self.clock.now())
                .unwrap_or(0),
            granted_ttl_secs: l.ttl_secs,
            keys: if keys {
                l.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        })
    }

    /// A peer's request: a follower forwarding lease work or a promotion to this leader, a
    /// joining member asking for the members.
    fn on_peer_request(&mut self, _from: u64, body: &[u8], reply: oneshot::Sender<Bytes>) {
        let answer = match rpc::decode_request(body) {
            Ok(rpc::PeerRequest::LeaseKeepAlive { id }) => {
                rpc::PeerResponse::LeaseKeepAlive(self.keep_alive(id))
            }
            Ok(rpc::PeerRequest::LeaseTimeToLive { id, keys }) => {
                rpc::PeerResponse::LeaseTimeToLive(self.time_to_live(id, keys))
            }
            Ok(rpc::PeerRequest::MemberList) => rpc::PeerResponse::MemberList {
                cluster_id: self.cluster_id,
                members: self.members.list(),
            },
            Ok(rpc::PeerRequest::MemberPromote { id }) => {
                // Proposed here like a client's promotion (the raft node judges whether the
                // learner is in sync, which only a leader can); answered when applied, in a
                // task of its own so the apply loop never waits for it.
                let raft_tx = self.links.raft_tx.clone();
                glommio::spawn_local(async move {
                    let (tx, rx) = oneshot::channel();
                    let propose = RaftMsg::Propose {
                        req: WriteRequest::MemberPromote { id },
                        reply: Some(tx),
                    };
                    let outcome = match raft_tx.send_async(propose).await {
                        Ok(()) => rx.await.unwrap_or(Err(EtcdError::Stopped)),
                        Err(_) => Err(EtcdError::Stopped),
                    };
                    let answer = outcome.map(|out| match out.response {
                        super::WriteResponse::Members(members) => members,
                        _ => Vec::new(),
                    });
                    let _ = reply.send(rpc::encode_response(&rpc::PeerResponse::MemberPromote(
                        answer,
                    )));
                })
                .detach();
                return;
            }
            Err(e) => rpc::PeerResponse::Refused(e.to_string()),
        };
        let _ = reply.send(rpc::encode_response(&answer));
    }

    async fn feed_watch(&mut self, revision: i64, events: Vec<Event>) -> anyhow::Result<()> {
        // A full feed makes apply wait for the hub: the hub never drops a revision.
        self.links
            .watch_tx
            .send_async(WatchInput::Applied { revision, events })
            .await
            .map_err(|_| anyhow::anyhow!("the watch hub stopped"))
    }

    /// Starts a checkpoint when --snapshot-count entries (or `CHECKPOINT_INTERVAL` with any
    /// entry) were applied since the last one and none is being written.
    async fn checkpoint_step(&mut self) -> anyhow::Result<()> {
        if self.checkpoint_in_flight.is_some() {
            return Ok(());
        }
        let since = self.applied_index - self.checkpoint_index;
        let due = since > self.snapshot_count
            || (since > 0
                && self.clock.now().duration_since(self.checkpoint_at) >= CHECKPOINT_INTERVAL);
        if due {
            self.start_checkpoint().await?;
        }
        Ok(())
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
        let save = self.checkpoints.save(state);
        let done = async move {
            for rx in replies {
                rx.await
                    .map_err(|_| "a shard worker stopped".to_string())??;
            }
            save.await
        };
        self.checkpoint_in_flight = Some((index, Box::pin(done)));
        self.checkpoint_at = self.clock.now();
        Ok(())
    }

    async fn on_checkpoint_done(&mut self, result: Result<(), String>) -> anyhow::Result<()> {
        let (index, _) = self
            .checkpoint_in_flight
            .take()
            .expect("only a checkpoint in flight finishes");
        result.map_err(|e| anyhow::anyhow!("checkpoint at raft index {index}: {e}"))?;
        self.checkpoint_index = index;
        crate::log_info!("saved snapshot", "snapshot-index" => index);
        for shard in 0..self.shards.len() {
            self.shards.send(shard, ShardMsg::CheckpointSaved).await?;
        }
        // Replay never needs the older WAL entries again.
        self.links
            .raft_tx
            .send_async(RaftMsg::CheckpointSaved { index })
            .await
            .map_err(|_| anyhow::anyhow!("the raft node stopped"))
    }

    /// Applies a committed membership change with etcd's checks against the members as of
    /// its turn in the log (every member decides the same); one that passes changes the
    /// members and, through the raft node, raft's configuration and the transport's peers.
    /// One that fails changes nothing: raft-rs needs no word of it (its pending conf change
    /// ends with the entry's apply).
    async fn change_membership(
        &mut self,
        index: u64,
        req: WriteRequest,
    ) -> anyhow::Result<Result<WriteOutcome, EtcdError>> {
        let Some(change) = super::raft::conf_change_of(&req) else {
            anyhow::bail!("raft entry {index}: a conf change without a membership request");
        };
        let mut removed = Vec::new();
        let checked = match req {
            WriteRequest::MemberAdd(m) => self.members.add(members::Member {
                id: m.id,
                name: String::new(),
                peer_urls: m.peer_urls,
                client_urls: Vec::new(),
                is_learner: m.is_learner,
            }),
            WriteRequest::MemberRemove { id } => self.members.remove(id).map(|_| {
                removed.push(id);
            }),
            WriteRequest::MemberPromote { id } => self.members.promote(id),
            _ => unreachable!("conf_change_of knows only these"),
        };
        if let Err(e) = checked {
            return Ok(Err(member_error(e)));
        }
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(change.clone());
        let (reply, rx) = oneshot::channel();
        let conf_tx = self.links.snapshot_slot.borrow().conf_tx.clone();
        conf_tx
            .send(ConfMsg::Apply { index, cc, reply })
            .map_err(|_| anyhow::anyhow!("the raft node stopped"))?;
        self.conf_state = rx
            .await
            .map_err(|_| anyhow::anyhow!("the raft node stopped"))?;
        crate::log_info!(
            "applied a configuration change",
            "local-member-id" => crate::ids::format_id(self.member_id),
            "raft-conf-change" => format!("{:?}", change.get_change_type()),
            "raft-conf-change-node-id" => crate::ids::format_id(change.node_id),
            "voters" => format!("{:?}", self.conf_state.voters),
            "learners" => format!("{:?}", self.conf_state.learners)
        );
        if removed.contains(&self.member_id) {
            self.removed_self = true;
        }
        self.announce_peers(removed)?;
        Ok(Ok(WriteOutcome {
            revision: self.revision,
            response: WriteResponse::Members(self.members.list()),
        }))
    }

    /// Publishes what other cores read about the membership.
    fn publish_membership(&self) {
        let learner = self
            .members
            .list()
            .iter()
            .any(|m| m.id == self.member_id && m.is_learner);
        self.published.is_learner.store(learner, Ordering::Release);
    }

    /// Tells the raft node's transport who the other members are now, and every member ever
    /// removed (`removed`, just now, and the ones before).
    fn announce_peers(&mut self, mut removed: Vec<u64>) -> anyhow::Result<()> {
        removed.extend(self.members.removed_ids());
        removed.sort_unstable();
        removed.dedup();
        self.publish_membership();
        let peers = self
            .members
            .list()
            .into_iter()
            .filter(|m| m.id != self.member_id)
            .map(|m| (m.id, m.peer_urls))
            .collect();
        let conf_tx = self.links.snapshot_slot.borrow().conf_tx.clone();
        conf_tx
            .send(ConfMsg::SetPeers { peers, removed })
            .map_err(|_| anyhow::anyhow!("the raft node stopped"))
    }

    pub fn checkpoint_state(&self, index: u64) -> anyhow::Result<checkpoint::CheckpointState> {
        assert_eq!(
            index, self.applied_index,
            "a checkpoint is of the applied state"
        );
        let term = self.applied_term;
        let conf = &self.conf_state;
        Ok(checkpoint::CheckpointState {
            format_version: 0,
            raft_index: index,
            raft_term: term,
            voters: conf.voters.clone(),
            learners: conf.learners.clone(),
            shard_count: self.shards.len() as u32,
            layout: self.layout.clone(),
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
            removed_members: self.members.removed_ids(),
        })
    }

    async fn refresh_db_size(&mut self) -> anyhow::Result<()> {
        if !self.db_size_stale
            || self.clock.now().duration_since(self.db_size_read_at) < DB_SIZE_REFRESH_INTERVAL
        {
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
        self.db_size_read_at = self.clock.now();
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
            let answer = self.apply_entry(e).await?;
            self.mark_applied(e.index, self.revision);
            if let Some((id, result)) = answer {
                if let Some(tx) = self.waiters.remove(&id) {
                    let _ = tx.send(result);
                }
            }
            if self.removed_self {
                crate::log_warn!(
                    REMOVED_FROM_CLUSTER,
                    "local-member-id" => crate::ids::format_id(self.member_id),
                    "applied-index" => e.index
                );
                // As etcd, stop a moment later, so the answer to whoever removed us (maybe
                // through this member) gets out first.
                self.clock.sleep(REMOVED_STOP_DELAY).await;
                anyhow::bail!(REMOVED_FROM_CLUSTER);
            }
            i += 1;
        }
        if let Some(last) = entries.last() {
            self.applied_term = last.term;
        }
        Ok(())
    }

    /// Publishes an applied entry and the revision after it. Always before the entry's client
    /// is answered: a client that got an answer must find the state it produced whatever core
    /// its next request lands on.
    fn mark_applied(&mut self, index: u64, revision: i64) {
        self.applied_index = index;
        self.published.revision.store(revision, Ordering::Release);
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
                        // Several shards: certain only without compares (the success branch),
                        // since each shard sees only its own keys.
                        None if certain && t.compare.is_empty() => Pipelined::Spread(t),
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
            Spread(usize, PutsReplies),
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
                Pipelined::Spread(req) => {
                    let puts: Vec<(i64, shards::PutRequest)> = req
                        .success
                        .into_iter()
                        .enumerate()
                        .map(|(sub, op)| match op {
                            RequestOp::Put(p) => (sub as i64, p),
                            _ => unreachable!("pipeline_run takes txns of puts only"),
                        })
                        .collect();
                    let count = puts.len();
                    Reply::Spread(count, self.send_puts(index, main, puts).await?)
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
                Reply::Spread(count, replies) => {
                    let (responses, events) = gather_puts(count, replies).await?.map_err(failed)?;
                    let responses = responses.into_iter().map(ResponseOp::Put).collect();
                    let response = TxnResponse {
                        succeeded: true,
                        responses,
                    };
                    (events, WriteResponse::Txn(response))
                }
            };
            self.count_events(&events);
            self.leases.observe(&events);
            self.feed_watch(main, events).await?;
            self.mark_applied(index, main);
            if let Some(tx) = self.waiters.remove(&id) {
                let _ = tx.send(Ok(WriteOutcome {
                    revision: main,
                    response,
                }));
            }
        }
        Ok(())
    }

    /// Sends puts of one entry at `main` (each with its sub-revision) to their shards, one
    /// `ShardMsg::Puts` per shard involved, without waiting for the answers (`gather_puts`).
    async fn send_puts(
        &self,
        index: u64,
        main: i64,
        puts: Vec<(i64, shards::PutRequest)>,
    ) -> anyhow::Result<PutsReplies> {
        let mut per_shard: Vec<Vec<(i64, shards::PutRequest)>> =
            (0..self.shards.len()).map(|_| Vec::new()).collect();
        for (sub, put) in puts {
            per_shard[self.shards.owner(&put.key)].push((sub, put));
        }
        let mut replies = Vec::new();
        for (shard, puts) in per_shard.into_iter().enumerate() {
            if puts.is_empty() {
                continue;
            }
            let (reply, rx) = oneshot::channel();
            let msg = ShardMsg::Puts {
                index,
                main,
                puts,
                reply,
            };
            self.shards.send(shard, msg).await?;
            replies.push(rx);
        }
        Ok(replies)
    }

    /// Applies one entry; returns the request ID and the answer for its proposer, if any.
    async fn apply_entry(
        &mut self,
        e: &Entry,
    ) -> anyhow::Result<Option<(u64, Result<WriteOutcome, EtcdError>)>> {
        match e.get_entry_type() {
            // The empty entry a new leader commits changes nothing.
            EntryType::EntryNormal if e.data.is_empty() => Ok(None),
            EntryType::EntryNormal => {
                // An undecodable committed entry means the log is corrupt: stop, never skip.
                let (id, req) = codec::decode(&e.data)
                    .map_err(|err| anyhow::anyhow!("raft entry {}: {err}", e.index))?;
                let result = self.execute(req).await?;
                Ok(Some((id, result)))
            }
            // etcd's conf changes; version 2 ones only in logs written before rusd wrote
            // etcd's.
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                let (id, req, _) = codec::decode_conf_change(e)
                    .map_err(|err| anyhow::anyhow!("raft entry {}: {err}", e.index))?;
                let result = self.change_membership(e.index, req).await?;
                Ok(Some((id, result)))
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
                    let hashed = self
                        .shards
                        .call_all(|reply| ShardMsg::Compact {
                            index,
                            revision,
                            reply,
                        })
                        .await?;
                    self.published
                        .compaction_hashes
                        .store(compaction_hash::CompactionHash {
                            revision,
                            previous_compact_revision: self.compact_revision,
                            hash: shards::combine_hash_records(&hashed),
                        });
                    self.compact_revision = revision;
                    self.published
                        .compact_revision
                        .store(revision, Ordering::Release);
                    Ok(WriteResponse::Compact)
                }
            }
            WriteRequest::LeaseGrant { id, ttl_secs } => {
                let now = self.role.is_leader.then(|| self.clock.now());
                match self.leases.grant(id, ttl_secs, now) {
                    Ok(ttl_secs) => Ok(WriteResponse::LeaseGrant { id, ttl_secs }),
                    Err(lease::GrantError::Exists) => Err(EtcdError::LeaseExists),
                    Err(lease::GrantError::TtlTooLarge) => Err(EtcdError::LeaseTtlTooLarge),
                    Err(lease::GrantError::NoId) => Err(EtcdError::LeaseNotFound),
                }
            }
            // Entries of versions before conf-change entries: a learner add as a normal entry.
            req @ (WriteRequest::MemberAdd(_)
            | WriteRequest::MemberRemove { .. }
            | WriteRequest::MemberPromote { .. }) => {
                return self.change_membership(self.applying_index, req).await
            }
            WriteRequest::MemberAttrs {
                id,
                name,
                client_urls,
            } => self
                .members
                .set_attributes(id, name, client_urls)
                .map(|()| WriteResponse::Members(self.members.list()))
                .map_err(member_error),
            WriteRequest::MemberUpdate { id, peer_urls } => {
                let updated = self.members.update_peer_urls(id, peer_urls);
                // The transport dials the new URLs.
                self.peers_changed |= updated.is_ok();
                updated
                    .map(|()| WriteResponse::Members(self.members.list()))
                    .map_err(member_error)
            }
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
            WriteRequest::Authenticate { name, token_prefix } => {
                // The password was checked by the member that proposed this; apply re-checks
                // only what can have changed since (etcd's authStore.Authenticate).
                if !self.auth.enabled() {
                    Err(EtcdError::AuthNotEnabled)
                } else if self
                    .auth
                    .user(&name)
                    .is_none_or(|u| u.password_hash.is_none())
                {
                    Err(EtcdError::AuthFailed)
                } else {
                    let token = format!("{token_prefix}.{}", self.applying_index);
                    self.published.auth.add_simple_token(token.clone(), name);
                    Ok(WriteResponse::Authenticated { token })
                }
            }
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
            self.feed_watch(main, events).await?;
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
        // The shards delete their shares concurrently.
        let index = self.applying_index;
        let calls = per_shard
            .into_iter()
            .enumerate()
            .filter(|(_, keys)| !keys.is_empty())
            .map(|(shard, keys)| {
                self.shards.call(shard, move |reply| ShardMsg::DeleteKeys {
                    index,
                    main,
                    keys,
                    reply,
                })
            });
        let mut prev_kvs = Vec::new();
        let mut new_events = Vec::new();
        for (prev, evs) in futures::future::try_join_all(calls).await? {
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

    /// Whether every compare holds. Each shard gets the compares that touch it in one message,
    /// and the shards answer concurrently (compares only read, so evaluating all of them is
    /// the same as stopping at the first that fails).
    async fn eval_compares(&self, compares: &[Compare]) -> anyhow::Result<bool> {
        if compares.is_empty() {
            return Ok(true);
        }
        let mut per_shard: Vec<Vec<usize>> = vec![Vec::new(); self.shards.len()];
        for (i, c) in compares.iter().enumerate() {
            for shard in self.shards.shards_for(&c.key, &c.range_end) {
                per_shard[shard].push(i);
            }
        }
        let calls = per_shard
            .iter()
            .enumerate()
            .filter(|(_, which)| !which.is_empty())
            .map(|(shard, which)| {
                let part: Vec<Compare> = which.iter().map(|&i| compares[i].clone()).collect();
                self.shards.call(shard, move |reply| ShardMsg::Compare {
                    compares: part,
                    reply,
                })
            });
        let answers = futures::future::try_join_all(calls).await?;
        let mut outcomes: Vec<Vec<shards::CompareOutcome>> = vec![Vec::new(); compares.len()];
        let touched = per_shard.iter().filter(|which| !which.is_empty());
        for (which, answer) in touched.zip(answers) {
            for (&i, outcome) in which.iter().zip(answer) {
                outcomes[i].push(outcome);
            }
        }
        Ok(compares
            .iter()
            .zip(&outcomes)
            .all(|(c, outcomes)| combine_compare(c, outcomes)))
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
        let mut next = 0;
        while next < ops.len() {
            // A run of puts goes to the shards at once, one message per shard: they touch
            // distinct keys (etcd refuses a txn that writes a key twice), so their order between
            // shards does not matter, only their sub-revisions.
            let run = ops[next..]
                .iter()
                .take_while(|op| matches!(op, RequestOp::Put(_)))
                .count();
            if run > 1 {
                let first_sub = *sub;
                let puts = ops[next..next + run]
                    .iter()
                    .enumerate()
                    .map(|(i, op)| match op {
                        RequestOp::Put(p) => (first_sub + i as i64, p.clone()),
                        _ => unreachable!("a run of puts"),
                    })
                    .collect();
                let replies = self.send_puts(self.applying_index, main, puts).await?;
                let (done, evs) = gather_puts(run, replies)
                    .await?
                    .map_err(|e| anyhow::anyhow!("txn put after checks: {e}"))?;
                *sub += run as i64;
                events.extend(evs);
                responses.extend(done.into_iter().map(ResponseOp::Put));
                next += run;
                continue;
            }
            let op = &ops[next];
            next += 1;
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

/// Waits for the answers of `send_puts` (`count` puts in all) and puts them back in
/// sub-revision order: the responses, and the events. The outer error is fatal (a shard
/// stopped); the inner one is a put a shard refused.
async fn gather_puts(
    count: usize,
    replies: PutsReplies,
) -> anyhow::Result<Result<(Vec<PutResponse>, Vec<Event>), shards::MvccError>> {
    let mut done = Vec::with_capacity(count);
    for rx in replies {
        match rx
            .await
            .map_err(|_| anyhow::anyhow!("a shard worker stopped"))?
        {
            Ok(part) => done.extend(part),
            Err(e) => return Ok(Err(e)),
        }
    }
    done.sort_unstable_by_key(|(_, event)| event.sub_revision);
    let (responses, events) = done.into_iter().unzip();
    Ok(Ok((responses, events)))
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
