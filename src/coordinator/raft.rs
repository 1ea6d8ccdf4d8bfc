//! The raft node: owns the raft-rs `RawNode`, the raft log's durable storage (the WAL) and the
//! peer transport. Its loop ticks, steps peer messages, proposes, takes each Ready, persists it
//! with one sync, sends the messages and hands the committed entries to the applier. It never
//! awaits the applier, a shard, the watch hub or a client, so heartbeats are never late behind
//! an apply, a compaction or a large range: the only thing it awaits is its own WAL sync.
//!
//! Lives on core 0. Everything it touches outside itself goes through a seam
//! (`super::seams::{Clock, RaftLog}`, `crate::peer::Transport`) or a channel, so the
//! simulation runs it unchanged.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::{select, Either};
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, HardState, Message,
    MessageType, Snapshot, SnapshotMetadata,
};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole};
use rand::{Rng, SeedableRng};

use super::codec;
use super::seams::{Clock, RaftLog};
use super::transfer::{ImageEncoder, SnapshotImage};
use super::{grows_store, AlarmKind, Published, WriteReply, WriteRequest, UNAPPLIED_ENTRIES_MAX};
use crate::error::EtcdError;
use crate::peer::{PeerIncoming, Transport};

/// Messages taken from the inbox per loop turn: bounds the size of one Ready (and so of one
/// WAL write) while still letting a burst share one fdatasync.
const INBOX_BATCH_MAX: usize = 4096;
/// Committed entries handed to the applier and not applied yet, beyond which the raft node
/// stops taking Readies (it keeps ticking and stepping messages, so its election clock and its
/// view of the leader stay current) until the applier catches up. On a leader the proposal
/// limit (`UNAPPLIED_ENTRIES_MAX`) is hit first; on a follower this paces the leader, which
/// sees its appends acknowledged later.
pub const APPLY_BACKLOG_ENTRIES_MAX: u64 = 2 * UNAPPLIED_ENTRIES_MAX;
/// Applied entries kept in raft's in-memory log, so a follower that lags this much catches up
/// from the log (etcd's --experimental-snapshot-catchup-entries default).
const RAFT_LOG_RETAINED_ENTRIES: u64 = 5000;
/// A read index not confirmed by then is asked again (raft may have dropped the request with a
/// message to a leader that changed); etcd retries after the same time.
const READ_INDEX_RETRY: Duration = Duration::from_millis(500);
/// A peer heard from within this long counts as connected for --strict-reconfig-check
/// (etcd's HealthInterval).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// How long this member's publication of its name and client URLs may take before it is
/// proposed again (a proposal can be lost with a leader change).
const PUBLISH_RETRY: Duration = Duration::from_secs(2);

/// The answer to a MoveLeader request.
pub type TransferReply = oneshot::Sender<Result<(), EtcdError>>;

/// Linearizable reads waiting together for one read index.
pub type ReadBatch = Vec<ReadReply>;
pub type ReadReply = oneshot::Sender<Result<(), EtcdError>>;

/// The raft node's inbox.
pub enum RaftMsg {
    /// A write to propose: a client's (with its answer channel) or the member's own (lease
    /// revokes from the applier, alarms), which nobody waits for.
    Propose {
        req: WriteRequest,
        reply: Option<WriteReply>,
    },
    /// Answered once this member has applied everything committed when the request arrived.
    ReadIndex { reply: ReadReply },
    /// Something a peer sent.
    Peer(PeerIncoming),
    /// The applier applied more entries (its index is in `Published::applied_index`).
    Applied,
    /// The applier's checkpoint at `index` is durable.
    CheckpointSaved { index: u64 },
    /// MoveLeader: hand leadership to `target` (a voter), answered once it leads, or with
    /// etcd's error when this member does not lead or `timeout` passes first.
    TransferLeader {
        target: u64,
        timeout: Duration,
        reply: oneshot::Sender<Result<(), EtcdError>>,
    },
}

/// What the applier tells the raft node about membership, on a channel of its own (in the
/// `SnapshotSlot`) that the raft node reads even while it waits for a snapshot install: the
/// applier may be applying a conf change queued before that snapshot and waits for the answer.
/// Unbounded in type only: the applier waits for each conf change's answer before the next,
/// and sends one `SetPeers` after each, so at most two messages are ever queued.
pub enum ConfMsg {
    /// A committed conf-change entry at `index` passed the applier's checks: apply it to
    /// raft's configuration and answer the new one.
    Apply {
        index: u64,
        cc: ConfChangeV2,
        reply: oneshot::Sender<ConfState>,
    },
    /// The members changed: the transport's peers follow.
    SetPeers {
        peers: Vec<(u64, Vec<String>)>,
        removed: Vec<u64>,
    },
}

/// Who leads, as of the entries that follow it in the applier's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleChange {
    pub leader_id: u64,
    pub is_leader: bool,
    pub term: u64,
}

/// One loop turn's worth of work for the applier, in log order.
#[derive(Default)]
pub struct ApplyBatch {
    /// Answer channels of the proposals made since the last batch, by request ID. They are
    /// registered before their entries can commit, because they travel in an earlier batch or
    /// earlier in this one.
    pub waiters: Vec<(u64, WriteReply)>,
    pub role: Option<RoleChange>,
    pub entries: Vec<Entry>,
    /// Reads to release once the applied index reaches theirs.
    pub reads: Vec<(u64, ReadBatch)>,
}

impl ApplyBatch {
    fn is_empty(&self) -> bool {
        self.waiters.is_empty()
            && self.role.is_none()
            && self.entries.is_empty()
            && self.reads.is_empty()
    }
}

/// The applier's queue.
pub enum ApplyMsg {
    Batch(ApplyBatch),
    /// Raft wants a snapshot to send: build one of the applied state into the shared slot.
    GenerateSnapshot,
    /// A snapshot from the leader arrives: stage it, then hand `msg` back to the raft node.
    ReceiveSnapshot {
        msg: Message,
        chunks: flume::Receiver<Result<Bytes, crate::peer::PeerError>>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Raft accepted the staged snapshot at `index`: make it this member's state.
    InstallSnapshot {
        index: u64,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// A peer's request that needs the applier's state (a follower forwarding a lease
    /// keep-alive to this leader, say); the body is `super::rpc`'s encoding.
    PeerRequest {
        from: u64,
        body: Bytes,
        reply: oneshot::Sender<Bytes>,
    },
}

/// What the raft node and the applier share on core 0: the snapshot the leader offers
/// followers (the raft node hands raft its metadata and streams its body, the applier builds
/// it) and the channel of membership changes (`ConfMsg`).
pub struct SnapshotSlot {
    pub image: Option<Rc<SnapshotImage>>,
    /// Raft asked for a snapshot newer than the one here.
    pub wanted: bool,
    /// The applier is building one.
    pub generating: bool,
    pub conf_tx: flume::Sender<ConfMsg>,
    pub conf_rx: flume::Receiver<ConfMsg>,
}

impl Default for SnapshotSlot {
    fn default() -> Self {
        let (conf_tx, conf_rx) = flume::unbounded();
        SnapshotSlot {
            image: None,
            wanted: false,
            generating: false,
            conf_tx,
            conf_rx,
        }
    }
}

pub type SharedSnapshotSlot = Rc<RefCell<SnapshotSlot>>;

/// raft-rs's in-memory log, and the snapshot rule: raft gets the image in the slot if it
/// covers everything before the log's first entry; otherwise it waits (raft retries) while
/// the applier builds a newer one.
pub struct RaftStore {
    mem: MemStorage,
    slot: SharedSnapshotSlot,
}

impl raft::Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<raft::RaftState> {
        self.mem.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: raft::GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let first = self.mem.first_index()?;
        if let Some(image) = &self.slot.borrow().image {
            // An image from before `to` was added does not name it in its configuration, and
            // raft's follower refuses such a snapshot (a joining member would be sent the
            // same refused image forever): a newer one is built instead.
            let names_receiver =
                image.state.voters.contains(&to) || image.state.learners.contains(&to);
            if image.index() >= request_index && image.index() + 1 >= first && names_receiver {
                return Ok(snapshot_of(image));
            }
        }
        self.slot.borrow_mut().wanted = true;
        Err(raft::Error::Store(
            raft::StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

/// The raft configuration change a membership request makes, if it makes one.
pub fn conf_change_of(req: &WriteRequest) -> Option<ConfChangeSingle> {
    let (kind, node_id) = match req {
        WriteRequest::MemberAdd(m) if m.is_learner => (ConfChangeType::AddLearnerNode, m.id),
        WriteRequest::MemberAdd(m) => (ConfChangeType::AddNode, m.id),
        // raft promotes a learner by adding it as a voter.
        WriteRequest::MemberPromote { id } => (ConfChangeType::AddNode, *id),
        WriteRequest::MemberRemove { id } => (ConfChangeType::RemoveNode, *id),
        _ => return None,
    };
    let mut cc = ConfChangeSingle::default();
    cc.set_change_type(kind);
    cc.node_id = node_id;
    Some(cc)
}

/// The member IDs raft's configuration holds after `entries` (every conf change in them
/// applied to `conf_state`), as etcd's getIDs computes them for --force-new-cluster.
fn members_after(conf_state: &ConfState, entries: &[Entry]) -> anyhow::Result<Vec<u64>> {
    let mut ids: std::collections::BTreeSet<u64> = conf_state
        .voters
        .iter()
        .chain(&conf_state.learners)
        .copied()
        .collect();
    for entry in entries {
        let changes: Vec<(ConfChangeType, u64)> = match entry.get_entry_type() {
            raft::eraftpb::EntryType::EntryConfChangeV2 => {
                ConfChangeV2::parse_from_bytes(&entry.data)?
                    .changes
                    .iter()
                    .map(|c| (c.get_change_type(), c.node_id))
                    .collect()
            }
            raft::eraftpb::EntryType::EntryConfChange => {
                let cc = raft::eraftpb::ConfChange::parse_from_bytes(&entry.data)?;
                vec![(cc.get_change_type(), cc.node_id)]
            }
            raft::eraftpb::EntryType::EntryNormal => continue,
        };
        for (kind, id) in changes {
            match kind {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    ids.insert(id);
                }
                ConfChangeType::RemoveNode => {
                    ids.remove(&id);
                }
            }
        }
    }
    Ok(ids.into_iter().collect())
}

/// Raft's view of an image: its index, term and configuration. The body travels apart.
fn snapshot_of(image: &SnapshotImage) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let meta = snapshot.mut_metadata();
    meta.index = image.state.raft_index;
    meta.term = image.state.raft_term;
    *meta.mut_conf_state() =
        ConfState::from((image.state.voters.clone(), image.state.learners.clone()));
    snapshot
}

/// What the raft node starts from: the last checkpoint and the WAL after it.
pub struct RaftBoot {
    pub member_id: u64,
    /// The checkpoint's raft index and term (0 and 0 without one), and the configuration then.
    pub checkpoint_index: u64,
    pub checkpoint_term: u64,
    pub conf_state: ConfState,
    pub entries: Vec<Entry>,
    pub hard_state: HardState,
    pub heartbeat_interval: Duration,
    pub election_ticks: usize,
    pub quota_bytes: i64,
    /// The other members and their peer URLs.
    pub peers: Vec<(u64, Vec<String>)>,
    /// Seeds the election jitter (the simulation's seed; the OS's randomness in the server).
    pub seed: u64,
    /// This member's name and client URLs, published through raft once a leader exists (as
    /// etcd's publish): the member serves once that entry is applied.
    pub publish: WriteRequest,
    /// --strict-reconfig-check: the leader refuses a voter add or remove that the members it
    /// has heard from lately could not survive.
    pub strict_reconfig_check: bool,
    /// --force-new-cluster: `entries` hold only committed entries, and conf changes removing
    /// every other member are appended and committed before anything else happens (etcd's
    /// restartAsStandaloneNode), so this member becomes a one-member cluster with its data.
    pub force_new_cluster: bool,
}

pub struct RaftNode<T: Transport, L: RaftLog, C: Clock> {
    node: RawNode<RaftStore>,
    log: L,
    transport: T,
    clock: C,
    rng: rand::rngs::StdRng,
    inbox: flume::Receiver<RaftMsg>,
    /// What the peer transport delivers; read before the local inbox, so heartbeats are
    /// never queued behind a burst of proposals.
    peer_inbox: flume::Receiver<PeerIncoming>,
    apply_tx: flume::Sender<ApplyMsg>,
    published: Arc<Published>,
    member_id: u64,
    heartbeat_interval: Duration,
    election_ticks: usize,
    quota_bytes: i64,
    next_request_id: u64,
    next_read_ctx: u64,
    /// Read-index batches sent to raft, by the context that names them, and when they were
    /// last asked.
    reads_in_raft: BTreeMap<u64, (ReadBatch, Instant)>,
    /// The batch being filled this loop turn.
    batch: ApplyBatch,
    /// The last committed index handed to the applier.
    handed_out: u64,
    /// Term and role as last seen, to redraw the election jitter when raft resets its timer.
    seen_term: u64,
    seen_role: StateRole,
    last_leader: u64,
    publish: WriteRequest,
    /// The publication in flight (its answer, when it was proposed), or `None` once done.
    publishing: Option<(
        oneshot::Receiver<Result<super::WriteOutcome, EtcdError>>,
        Instant,
    )>,
    published_self: bool,
    on_serving: Option<oneshot::Sender<()>>,
    slot: SharedSnapshotSlot,
    conf_rx: flume::Receiver<ConfMsg>,
    strict_reconfig_check: bool,
    /// When each peer last sent this member a raft message: etcd's "active since" of the peer
    /// link, for --strict-reconfig-check.
    heard_from: std::collections::HashMap<u64, Instant>,
    /// MoveLeader requests waiting for their transferee to lead: target, deadline, answer.
    transfers: Vec<(u64, Instant, TransferReply)>,
}

impl<T: Transport, L: RaftLog, C: Clock> RaftNode<T, L, C> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        boot: RaftBoot,
        log: L,
        mut transport: T,
        clock: C,
        inbox: flume::Receiver<RaftMsg>,
        peer_inbox: flume::Receiver<PeerIncoming>,
        apply_tx: flume::Sender<ApplyMsg>,
        published: Arc<Published>,
        on_serving: oneshot::Sender<()>,
        slot: SharedSnapshotSlot,
    ) -> anyhow::Result<Self> {
        let mem = if boot.checkpoint_index == 0 {
            MemStorage::new_with_conf_state(boot.conf_state.clone())
        } else {
            // Raft starts from the checkpoint as from a snapshot: its log begins after it.
            let mem = MemStorage::new();
            let mut snapshot = Snapshot::default();
            let meta = snapshot.mut_metadata();
            meta.index = boot.checkpoint_index;
            meta.term = boot.checkpoint_term;
            *meta.mut_conf_state() = boot.conf_state.clone();
            mem.wl()
                .apply_snapshot(snapshot)
                .map_err(|e| anyhow::anyhow!("restoring the checkpoint into raft: {e}"))?;
            mem
        };
        {
            let mut w = mem.wl();
            w.append(&boot.entries)
                .map_err(|e| anyhow::anyhow!("restoring raft log: {e}"))?;
            let mut hs = boot.hard_state.clone();
            // A commit index beyond the log is possible after a crash that lost a snapshot
            // install's WAL tail; a lower commit index is always safe (raft learns it again).
            let last = boot
                .entries
                .last()
                .map_or(boot.checkpoint_index, |e| e.index);
            hs.commit = hs.commit.min(last).max(boot.checkpoint_index);
            // etcd bootstraps a new member at term 1 (its membership entries) and then elects
            // at term 2; clients see that term in every header, so a new member starts there.
            if boot.checkpoint_index == 0 && boot.entries.is_empty() && hs.term == 0 {
                hs.term = 1;
            }
            w.set_hardstate(hs);
        }
        let raft_cfg = raft::Config {
            id: boot.member_id,
            election_tick: boot.election_ticks,
            heartbeat_tick: 1,
            applied: boot.checkpoint_index,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_cfg.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut node = RawNode::new(
            &raft_cfg,
            RaftStore {
                mem,
                slot: slot.clone(),
            },
            &logger,
        )?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(boot.seed);
        let mut next_request_id = boot.seed | 1;
        if boot.force_new_cluster {
            let others = members_after(&boot.conf_state, &boot.entries)?
                .into_iter()
                .filter(|id| *id != boot.member_id)
                .collect::<Vec<_>>();
            if !members_after(&boot.conf_state, &boot.entries)?.contains(&boot.member_id) {
                anyhow::bail!(
                    "--force-new-cluster: this member ({}) is not in the configuration its log \
                     ends with",
                    crate::ids::format_id(boot.member_id)
                );
            }
            let term = node.raft.term.max(1);
            let mut index = node.raft.raft_log.last_index();
            let mut appended = Vec::new();
            for id in others {
                index += 1;
                // etcd's own form of the removal (a `ConfChange` with the request's ID), as
                // every conf change rusd writes.
                let cc =
                    codec::encode_conf_change(next_request_id, &WriteRequest::MemberRemove { id })
                        .expect("a member removal is a conf change");
                next_request_id = next_request_id.wrapping_add(1);
                let mut entry = Entry::default();
                entry.set_entry_type(raft::eraftpb::EntryType::EntryConfChange);
                entry.term = term;
                entry.index = index;
                entry.data = cc.write_to_bytes()?.into();
                appended.push(entry);
            }
            crate::log_info!(
                "forcing restart member as a standalone cluster",
                "local-member-id" => crate::ids::format_id(boot.member_id),
                "commit-index" => node.raft.raft_log.committed,
                "removed-members" => appended.len()
            );
            if !appended.is_empty() {
                // Into raft's unstable log: the first Ready persists them to the WAL, and
                // they commit at once (they are committed by fiat, as etcd's are).
                node.raft.raft_log.append(&appended);
                node.raft.raft_log.commit_to(index);
            }
        }
        let voters = node.raft.prs().conf().voters().ids().len();
        let single_voter = node.raft.prs().conf().voters().contains(boot.member_id)
            && voters == 1
            && node.raft.prs().conf().learners().is_empty();
        if single_voter {
            // A single voter needs no election timeout: campaign at once, as etcd effectively
            // does.
            node.campaign()?;
        } else {
            // etcd's --initial-election-tick-advance: a restarted or new member need not sit
            // out a whole election timeout before it may campaign; the randomized part still
            // separates the members.
            let timeout = rng.gen_range(boot.election_ticks..2 * boot.election_ticks);
            node.raft.set_randomized_election_timeout(timeout);
            for _ in 0..boot.election_ticks.saturating_sub(1) {
                node.tick();
            }
        }
        transport.set_peers(&boot.peers);
        published
            .wal_bytes
            .store(log.size_bytes(), Ordering::Release);
        let seen_term = node.raft.term;
        let seen_role = node.raft.state;
        let conf_rx = slot.borrow().conf_rx.clone();
        Ok(RaftNode {
            node,
            log,
            transport,
            clock,
            rng,
            inbox,
            peer_inbox,
            apply_tx,
            published,
            member_id: boot.member_id,
            heartbeat_interval: boot.heartbeat_interval,
            election_ticks: boot.election_ticks,
            quota_bytes: boot.quota_bytes,
            next_request_id,
            next_read_ctx: 1,
            reads_in_raft: BTreeMap::new(),
            batch: ApplyBatch::default(),
            handed_out: boot.checkpoint_index,
            seen_term,
            seen_role,
            last_leader: raft::INVALID_ID,
            publish: boot.publish,
            publishing: None,
            published_self: false,
            on_serving: Some(on_serving),
            conf_rx,
            slot,
            strict_reconfig_check: boot.strict_reconfig_check,
            transfers: Vec::new(),
            heard_from: std::collections::HashMap::new(),
        })
    }

    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut next_tick = self.clock.now() + self.heartbeat_interval;
        loop {
            let now = self.clock.now();
            if now >= next_tick {
                self.on_tick(now);
                next_tick += self.heartbeat_interval;
                if next_tick < now {
                    next_tick = now + self.heartbeat_interval;
                }
            } else if !self.ready_due() {
                let inbox = self.inbox.clone();
                let peer_inbox = self.peer_inbox.clone();
                let conf_rx = self.conf_rx.clone();
                let recv = inbox.recv_async();
                // A transport that stopped delivering (none in a one-member test) is never
                // ready again rather than ready with an error at every turn.
                let from_peer = async {
                    match peer_inbox.recv_async().await {
                        Ok(incoming) => incoming,
                        Err(_) => futures::future::pending().await,
                    }
                };
                // The slot holds a sender, so this channel never closes while we run.
                let conf = async {
                    match conf_rx.recv_async().await {
                        Ok(msg) => msg,
                        Err(_) => futures::future::pending().await,
                    }
                };
                let sleep = self.clock.sleep(next_tick - now);
                futures::pin_mut!(recv, from_peer, conf);
                match select(select(select(from_peer, conf), recv), sleep).await {
                    Either::Left((Either::Left((Either::Left((incoming, _)), _)), _)) => {
                        self.on_peer(incoming)?
                    }
                    Either::Left((Either::Left((Either::Right((msg, _)), _)), _)) => {
                        self.on_conf(msg)?
                    }
                    Either::Left((Either::Right((Ok(msg), _)), _)) => self.handle(msg)?,
                    // Every handle dropped: the member is shutting down.
                    Either::Left((Either::Right((Err(_), _)), _)) => return Ok(()),
                    Either::Right(_) => {}
                }
            }
            while let Ok(msg) = self.conf_rx.try_recv() {
                self.on_conf(msg)?;
            }
            for _ in 0..INBOX_BATCH_MAX {
                match self.peer_inbox.try_recv() {
                    Ok(incoming) => self.on_peer(incoming)?,
                    Err(_) => break,
                }
            }
            let mut reads = Vec::new();
            for _ in 0..INBOX_BATCH_MAX {
                match self.inbox.try_recv() {
                    Ok(RaftMsg::ReadIndex { reply }) => reads.push(reply),
                    Ok(msg) => self.handle(msg)?,
                    Err(_) => break,
                }
            }
            if !reads.is_empty() {
                self.start_read(reads);
            }
            self.check_publish()?;
            self.follow_election_timer();
            self.on_ready().await?;
            self.flush_batch()?;
            self.request_snapshot()?;
            self.check_transfers();
        }
    }

    fn on_tick(&mut self, now: Instant) {
        self.node.tick();
        // Reads whose clients gave up go; reads raft may have lost are asked again.
        let mut again = Vec::new();
        self.reads_in_raft.retain(|ctx, (batch, asked)| {
            batch.retain(|r| !r.is_canceled());
            if batch.is_empty() {
                return false;
            }
            if now.duration_since(*asked) >= READ_INDEX_RETRY {
                *asked = now;
                again.push(*ctx);
            }
            true
        });
        for ctx in again {
            self.node.read_index(ctx.to_le_bytes().to_vec());
        }
    }

    /// Whether a Ready is waiting and the applier has room for what it may commit.
    fn ready_due(&self) -> bool {
        self.node.has_ready() && !self.apply_backlog_full()
    }

    fn apply_backlog_full(&self) -> bool {
        let applied = self.published.applied_index.load(Ordering::Acquire);
        self.handed_out.saturating_sub(applied) > APPLY_BACKLOG_ENTRIES_MAX
    }

    /// raft-rs draws a new election timeout from its own thread-local generator whenever it
    /// resets its timer (a new term or role); the seeded generator's draw replaces it, so a
    /// simulation seed replays exactly.
    fn follow_election_timer(&mut self) {
        let (term, role) = (self.node.raft.term, self.node.raft.state);
        if term != self.seen_term || role != self.seen_role {
            self.seen_term = term;
            self.seen_role = role;
            let timeout = self
                .rng
                .gen_range(self.election_ticks..2 * self.election_ticks);
            self.node.raft.set_randomized_election_timeout(timeout);
        }
    }

    fn handle(&mut self, msg: RaftMsg) -> anyhow::Result<()> {
        match msg {
            RaftMsg::Propose { req, reply } => self.propose(req, reply),
            RaftMsg::ReadIndex { reply } => self.start_read(vec![reply]),
            RaftMsg::Peer(incoming) => self.on_peer(incoming)?,
            RaftMsg::Applied => {}
            RaftMsg::CheckpointSaved { index } => self.on_checkpoint_saved(index)?,
            RaftMsg::TransferLeader {
                target,
                timeout,
                reply,
            } => self.transfer_leader(target, timeout, reply),
        }
        Ok(())
    }

    fn on_conf(&mut self, msg: ConfMsg) -> anyhow::Result<()> {
        match msg {
            ConfMsg::Apply { index, cc, reply } => {
                // A snapshot raft restored since this entry was handed out already holds its
                // effect (and maybe later ones): applying it again would take the
                // configuration back.
                let first = self.node.raft.raft_log.first_index();
                let cs = if index < first {
                    self.node.raft.prs().conf().to_conf_state()
                } else {
                    let joins = cc
                        .changes
                        .iter()
                        .any(|c| self.node.raft.prs().get(c.node_id).is_none());
                    let cs = self
                        .node
                        .apply_conf_change(&cc)
                        .map_err(|e| anyhow::anyhow!("applying a configuration change: {e}"))?;
                    let mut store = self.node.mut_store().mem.wl();
                    store.set_conf_state(cs.clone());
                    // A log that still starts at index 1 lacks the first configuration (each
                    // member takes it from --initial-cluster, not from the log), so a new
                    // member must start from a snapshot, which carries the configuration:
                    // the entries up to this one leave raft's log and anyone needing them
                    // gets a snapshot instead. (raft-rs's in-memory log keeps at least its
                    // last entry: this one stays.)
                    if joins && first == 1 && index <= self.handed_out {
                        store.compact(index)?;
                    }
                    cs
                };
                let _ = reply.send(cs);
            }
            ConfMsg::SetPeers { peers, removed } => {
                self.transport.set_peers(&peers);
                self.transport.set_removed(&removed);
            }
        }
        Ok(())
    }

    /// etcd's MoveLeader on the leader: raft's leader transfer, answered when the target
    /// leads.
    fn transfer_leader(
        &mut self,
        target: u64,
        timeout: Duration,
        reply: oneshot::Sender<Result<(), EtcdError>>,
    ) {
        if self.node.raft.state != StateRole::Leader {
            let _ = reply.send(Err(EtcdError::NotLeader));
            return;
        }
        if !self.node.raft.prs().conf().voters().contains(target) {
            let _ = reply.send(Err(EtcdError::BadLeaderTransferee));
            return;
        }
        if target == self.member_id {
            let _ = reply.send(Ok(()));
            return;
        }
        crate::log_info!(
            "leadership transfer starting",
            "local-member-id" => crate::ids::format_id(self.member_id),
            "current-leader-member-id" => crate::ids::format_id(self.member_id),
            "transferee-member-id" => crate::ids::format_id(target)
        );
        self.node.transfer_leader(target);
        let deadline = self.clock.now() + timeout;
        self.transfers.push((target, deadline, reply));
    }

    /// Answers the MoveLeader requests whose target now leads or whose time ran out. raft
    /// abandons a transfer after an election timeout; the request keeps waiting for its
    /// deadline all the same, as etcd's does.
    fn check_transfers(&mut self) {
        if self.transfers.is_empty() {
            return;
        }
        let now = self.clock.now();
        let leader = self.node.raft.leader_id;
        for (target, deadline, reply) in std::mem::take(&mut self.transfers) {
            if leader == target {
                crate::log_info!(
                    "leadership transfer finished",
                    "local-member-id" => crate::ids::format_id(self.member_id),
                    "new-leader-member-id" => crate::ids::format_id(target)
                );
                let _ = reply.send(Ok(()));
            } else if now >= deadline {
                let _ = reply.send(Err(EtcdError::LeaderTransferTimeout));
            } else if !reply.is_canceled() {
                self.transfers.push((target, deadline, reply));
            }
        }
    }

    fn on_peer(&mut self, incoming: PeerIncoming) -> anyhow::Result<()> {
        match incoming {
            PeerIncoming::Raft(msgs) => {
                if let Some(m) = msgs.first() {
                    self.heard_from.insert(m.from, self.clock.now());
                }
                for m in msgs {
                    // A message from a member raft does not know (removed, or not yet added
                    // here) is refused by raft itself; nothing to do but drop it.
                    let _ = self.node.step(m);
                }
            }
            PeerIncoming::Unreachable(id) => self.node.report_unreachable(id),
            PeerIncoming::Request { from, body, reply } => {
                // Requests need the applier's state (leases, members); its queue is unbounded
                // in messages but these are bounded per peer connection by the transport.
                let _ = self
                    .apply_tx
                    .send(ApplyMsg::PeerRequest { from, body, reply });
            }
            PeerIncoming::Snapshot {
                from,
                meta,
                chunks,
                done,
            } => match Message::parse_from_bytes(&meta) {
                Ok(msg) if msg.get_msg_type() == MessageType::MsgSnapshot && msg.from == from => {
                    // The applier stages the body, then hands the message back to be stepped.
                    self.apply_tx
                        .send(ApplyMsg::ReceiveSnapshot { msg, chunks, done })
                        .map_err(|_| anyhow::anyhow!("the applier stopped"))?;
                }
                _ => {
                    let _ = done.send(Err("not a snapshot message".into()));
                }
            },
            PeerIncoming::SnapshotStatus { to, result } => {
                let status = match result {
                    Ok(()) => raft::SnapshotStatus::Finish,
                    Err(e) => {
                        crate::log_warn!(
                            "failed to send database snapshot",
                            "remote-peer-id" => crate::ids::format_id(to),
                            "error" => e
                        );
                        raft::SnapshotStatus::Failure
                    }
                };
                self.node.report_snapshot(to, status);
            }
            PeerIncoming::RemovedFromCluster { by } => {
                crate::log_warn!(
                    super::apply::REMOVED_FROM_CLUSTER,
                    "local-member-id" => crate::ids::format_id(self.member_id),
                    "removed-by" => crate::ids::format_id(by)
                );
                anyhow::bail!(super::apply::REMOVED_FROM_CLUSTER);
            }
        }
        Ok(())
    }

    fn on_checkpoint_saved(&mut self, index: u64) -> anyhow::Result<()> {
        // The term is raft's while it still has the entry (or the snapshot at it); the WAL
        // knows it otherwise. The configuration is today's: the WAL's snapshot record and
        // `.snap` file carry it for etcd's tools.
        let mut snapshot = SnapshotMetadata {
            index,
            term: self.node.raft.raft_log.term(index).unwrap_or(0),
            ..Default::default()
        };
        snapshot.set_conf_state(self.node.raft.prs().conf().to_conf_state());
        self.log.checkpoint_saved(&snapshot)?;
        self.published
            .wal_bytes
            .store(self.log.size_bytes(), Ordering::Release);
        Ok(())
    }

    /// A lease ID for a grant that asked the server to pick: member bits, then a counter that
    /// started from the clock, as etcd's generator (a collision fails the grant at apply with
    /// "lease already exists", as in etcd).
    fn new_lease_id(&mut self) -> i64 {
        loop {
            let id = (self.next_request_id ^ (self.member_id << 48)) as i64 & i64::MAX;
            self.next_request_id = self.next_request_id.wrapping_add(1);
            if id != 0 {
                return id;
            }
        }
    }

    fn propose(&mut self, mut req: WriteRequest, reply: Option<WriteReply>) {
        let refuse = |reply: Option<WriteReply>, e: EtcdError| {
            if let Some(r) = reply {
                let _ = r.send(Err(e));
            }
        };
        if let WriteRequest::LeaseGrant { id, .. } = &mut req {
            if *id == 0 {
                *id = self.new_lease_id();
            }
        }
        if self.node.raft.leader_id == raft::INVALID_ID {
            return refuse(reply, EtcdError::NoLeader);
        }
        if let Some(size) = grows_store(&req) {
            // etcd's quota: refuse a write that would take the store past the quota, and
            // raise the NOSPACE alarm so that every member refuses writes until disarmed.
            let db_size = self.published.db_size.load(Ordering::Acquire);
            let nospace = self.published.nospace.load(Ordering::Acquire);
            let over = db_size + size as i64 > self.quota_bytes;
            if nospace || over {
                if over && !nospace {
                    let alarm = WriteRequest::Alarm {
                        activate: true,
                        member_id: self.member_id,
                        alarm: AlarmKind::NoSpace,
                    };
                    let _ = self.node.propose(Vec::new(), codec::encode(0, &alarm));
                }
                return refuse(reply, EtcdError::NoSpace);
            }
        }
        let committed = self.node.raft.raft_log.committed;
        let applied = self.published.applied_index.load(Ordering::Acquire);
        if committed.saturating_sub(applied) > UNAPPLIED_ENTRIES_MAX {
            return refuse(reply, EtcdError::TooManyRequests);
        }
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        // A membership change raft must know of is a conf-change entry as etcd v3.5 writes
        // it (`raftpb.ConfChange` with the member's JSON); anything else a normal entry.
        let proposed = match codec::encode_conf_change(id, &req) {
            Some(cc) => {
                if let Err(e) = self.may_change_membership(&req) {
                    return refuse(reply, e);
                }
                self.node.propose_conf_change(Vec::new(), cc)
            }
            None => self.node.propose(Vec::new(), codec::encode(id, &req)),
        };
        match proposed {
            Ok(()) => {
                if let Some(r) = reply {
                    self.batch.waiters.push((id, r));
                }
            }
            Err(_) => refuse(reply, EtcdError::NoLeader),
        }
    }

    /// etcd's checks before a membership change is proposed, which need what only the leader
    /// knows: a learner is promoted only once in sync (its match index at least 90% of the
    /// leader's), and with --strict-reconfig-check a voter is added only when every voter was
    /// heard from lately, and removed only when the voters heard from lately keep a quorum
    /// without it. A follower forwards the change to the leader and leaves the connectivity
    /// checks to etcd's started-members count (`api::maintenance`); the promotion, which it
    /// cannot judge at all, it refuses with "not leader".
    fn may_change_membership(&self, req: &WriteRequest) -> Result<(), EtcdError> {
        let is_leader = self.node.raft.state == StateRole::Leader;
        let prs = self.node.raft.prs();
        let now = self.clock.now();
        let connected = |id: u64| {
            id == self.member_id
                || self
                    .heard_from
                    .get(&id)
                    .is_some_and(|at| now.duration_since(*at) < HEALTH_INTERVAL)
        };
        match req {
            WriteRequest::MemberPromote { id } => {
                if !is_leader {
                    return Err(EtcdError::NotLeader);
                }
                let Some(learner) = prs.get(*id) else {
                    return Err(EtcdError::MemberNotFound);
                };
                let leader_match = prs.get(self.member_id).map_or(0, |p| p.matched);
                if (learner.matched as f64) < (leader_match as f64) * 0.9 {
                    return Err(EtcdError::LearnerNotReady);
                }
                Ok(())
            }
            _ if !is_leader || !self.strict_reconfig_check => Ok(()),
            WriteRequest::MemberAdd(m) if !m.is_learner => {
                if prs.conf().voters().ids().iter().all(connected) {
                    Ok(())
                } else {
                    Err(EtcdError::Unhealthy)
                }
            }
            WriteRequest::MemberRemove { id } => {
                let voters = prs.conf().voters().ids();
                if !voters.contains(*id) {
                    return Ok(());
                }
                // A member that is down is no part of the active quorum: removing it is safe.
                if *id != self.member_id && !connected(*id) {
                    return Ok(());
                }
                let active = voters.iter().filter(|v| connected(*v)).count();
                if active.saturating_sub(1) < 1 + (voters.len() - 1) / 2 {
                    Err(EtcdError::Unhealthy)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
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
            self.batch.reads.push((index, batch));
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        self.node.read_index(ctx.to_le_bytes().to_vec());
        self.reads_in_raft.insert(ctx, (batch, self.clock.now()));
    }

    async fn on_ready(&mut self) -> anyhow::Result<()> {
        if !self.ready_due() {
            return Ok(());
        }
        let mut ready = self.node.ready();
        if let Some(ss) = ready.ss() {
            let leader_id = ss.leader_id;
            let is_leader = ss.raft_state == StateRole::Leader;
            self.published.leader.store(leader_id, Ordering::Release);
            if leader_id != self.last_leader {
                // etcd's raft log lines, which operators and etcd's e2e tests look for.
                let term = self.node.raft.term;
                if is_leader {
                    crate::log_info!(format!("{:x} became leader at term {term}", self.member_id));
                }
                if leader_id != raft::INVALID_ID {
                    crate::log_info!(format!(
                        "raft.node: {:x} elected leader {leader_id:x} at term {term}",
                        self.member_id
                    ));
                } else {
                    crate::log_info!(format!(
                        "raft.node: {:x} lost leader {:x} at term {term}",
                        self.member_id, self.last_leader
                    ));
                }
                // etcd: a read waiting for its index when the leader changes fails.
                for (_, (batch, _)) in std::mem::take(&mut self.reads_in_raft) {
                    for r in batch {
                        let _ = r.send(Err(EtcdError::LeaderChanged));
                    }
                }
                self.last_leader = leader_id;
            }
            self.batch.role = Some(RoleChange {
                leader_id,
                is_leader,
                term: self.node.raft.term,
            });
        }
        // A leader's appends may go out before its own sync (raft thesis 10.2.1).
        let msgs = ready.take_messages();
        self.send(msgs);
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone()).await?;
        }
        self.batch.entries.extend(ready.take_committed_entries());
        if let Some(hs) = ready.hs() {
            self.published.raft_term.store(hs.term, Ordering::Release);
        }
        self.log.persist(ready.entries(), ready.hs()).await?;
        self.published
            .wal_bytes
            .store(self.log.size_bytes(), Ordering::Release);
        {
            let mut w = self.node.mut_store().mem.wl();
            w.append(ready.entries())?;
            if let Some(hs) = ready.hs() {
                w.set_hardstate(hs.clone());
            }
        }
        for rs in ready.take_read_states() {
            let ctx = u64::from_le_bytes(rs.request_ctx.as_slice().try_into().unwrap_or([0; 8]));
            if let Some((batch, _)) = self.reads_in_raft.remove(&ctx) {
                self.batch.reads.push((rs.index, batch));
            }
        }
        let msgs = ready.take_persisted_messages();
        self.send(msgs);
        let mut light = self.node.advance_append(ready);
        if let Some(commit) = light.commit_index() {
            self.node
                .mut_store()
                .mem
                .wl()
                .mut_hard_state()
                .set_commit(commit);
        }
        let msgs = light.take_messages();
        self.send(msgs);
        self.batch.entries.extend(light.take_committed_entries());
        self.published
            .committed_index
            .store(self.node.raft.raft_log.committed, Ordering::Release);
        Ok(())
    }

    /// Sends raft's messages; a snapshot goes on its own stream with the image's body.
    fn send(&mut self, msgs: Vec<Message>) {
        let mut plain = Vec::with_capacity(msgs.len());
        for m in msgs {
            if m.get_msg_type() != MessageType::MsgSnapshot {
                plain.push(m);
                continue;
            }
            let image = self.slot.borrow().image.clone();
            match image {
                Some(image) if image.index() == m.get_snapshot().get_metadata().index => {
                    crate::log_info!(
                        "sending database snapshot",
                        "remote-peer-id" => crate::ids::format_id(m.to),
                        "snapshot-index" => image.index(),
                        "events" => image.events.len()
                    );
                    let meta = Bytes::from(
                        m.write_to_bytes()
                            .expect("encoding a raft message cannot fail"),
                    );
                    self.transport
                        .send_snapshot(m.to, meta, Box::new(ImageEncoder::new(image)));
                }
                _ => self
                    .node
                    .report_snapshot(m.to, raft::SnapshotStatus::Failure),
            }
        }
        if !plain.is_empty() {
            self.transport.send(plain);
        }
    }

    /// Asks the applier for a snapshot when raft wanted one and none is being built.
    fn request_snapshot(&mut self) -> anyhow::Result<()> {
        let mut slot = self.slot.borrow_mut();
        if slot.wanted && !slot.generating {
            slot.wanted = false;
            slot.generating = true;
            self.apply_tx
                .send(ApplyMsg::GenerateSnapshot)
                .map_err(|_| anyhow::anyhow!("the applier stopped"))?;
        }
        Ok(())
    }

    /// A follower's raft accepted a snapshot (its body already staged by the applier): the
    /// applier makes it the member's state before the log goes on past it. The raft node
    /// waits for that, the one time it waits for the applier: nothing after the snapshot can
    /// be persisted or applied before it.
    async fn install_snapshot(&mut self, snapshot: Snapshot) -> anyhow::Result<()> {
        let index = snapshot.get_metadata().index;
        crate::log_info!(
            "applying snapshot",
            "local-member-id" => crate::ids::format_id(self.member_id),
            "snapshot-index" => index
        );
        // Everything handed out so far goes first: the applier's queue stays in log order.
        self.flush_batch()?;
        let (reply, rx) = oneshot::channel();
        self.apply_tx
            .send(ApplyMsg::InstallSnapshot { index, reply })
            .map_err(|_| anyhow::anyhow!("the applier stopped"))?;
        // The applier may first apply a conf change handed out before the snapshot, and
        // waits for its answer: conf messages are served while we wait.
        let installed = {
            let conf_rx = self.conf_rx.clone();
            futures::pin_mut!(rx);
            loop {
                let conf = conf_rx.recv_async();
                futures::pin_mut!(conf);
                match select(rx.as_mut(), conf).await {
                    Either::Left((answer, _)) => break answer,
                    Either::Right((Ok(msg), _)) => self.on_conf(msg)?,
                    Either::Right((Err(_), _)) => break rx.as_mut().await,
                }
            }
        };
        installed
            .map_err(|_| anyhow::anyhow!("the applier stopped"))?
            .map_err(|e| anyhow::anyhow!("installing the snapshot at {index}: {e}"))?;
        self.node
            .mut_store()
            .mem
            .wl()
            .apply_snapshot(snapshot)
            .map_err(|e| anyhow::anyhow!("applying the snapshot to raft's log: {e}"))?;
        self.handed_out = index;
        // The WAL's entries up to the snapshot are never replayed again.
        self.on_checkpoint_saved(index)?;
        crate::log_info!(
            "applied snapshot",
            "local-member-id" => crate::ids::format_id(self.member_id),
            "snapshot-index" => index
        );
        Ok(())
    }

    /// Hands this turn's batch to the applier and tells raft how far apply got.
    fn flush_batch(&mut self) -> anyhow::Result<()> {
        if let Some(last) = self.batch.entries.last() {
            self.handed_out = last.index;
        }
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            self.apply_tx
                .send(ApplyMsg::Batch(batch))
                .map_err(|_| anyhow::anyhow!("the applier stopped"))?;
        }
        let applied = self
            .published
            .applied_index
            .load(Ordering::Acquire)
            .min(self.handed_out);
        if applied > self.node.raft.raft_log.applied {
            self.node.advance_apply_to(applied);
            self.trim_raft_log(applied)?;
        }
        Ok(())
    }

    /// Drops applied entries from raft's in-memory log, keeping a tail for followers that lag.
    /// The WAL still has them until a checkpoint covers them.
    fn trim_raft_log(&mut self, applied: u64) -> anyhow::Result<()> {
        let store = self.node.mut_store();
        let first = raft::Storage::first_index(store)?;
        if applied > first + RAFT_LOG_RETAINED_ENTRIES * 2 {
            store
                .mem
                .wl()
                .compact(applied - RAFT_LOG_RETAINED_ENTRIES)?;
        }
        Ok(())
    }

    /// Proposes this member's attributes once a leader exists, and declares the member serving
    /// once they are applied here (etcd's publish before "ready to serve client requests").
    fn check_publish(&mut self) -> anyhow::Result<()> {
        if self.published_self {
            return Ok(());
        }
        if let Some((rx, proposed_at)) = &mut self.publishing {
            match rx.try_recv() {
                Ok(None) => {
                    if self.clock.now().duration_since(*proposed_at) < PUBLISH_RETRY {
                        return Ok(());
                    }
                }
                Ok(Some(Ok(_))) => {
                    self.published_self = true;
                    self.publishing = None;
                    self.published.serving.store(true, Ordering::Release);
                    if let Some(tx) = self.on_serving.take() {
                        let _ = tx.send(());
                    }
                    return Ok(());
                }
                Ok(Some(Err(e))) => {
                    crate::log_warn!("failed to publish local member to cluster", "error" => e.to_string());
                }
                Err(_) => {}
            }
            self.publishing = None;
        }
        if self.node.raft.leader_id == raft::INVALID_ID {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.propose(self.publish.clone(), Some(reply));
        self.publishing = Some((rx, self.clock.now()));
        Ok(())
    }
}
