//! The shard worker: one per core, owning that core's `MvccStore`. It runs requests from the
//! other cores one at a time, synchronously; the store itself never awaits.

use bytes::Bytes;
use futures::channel::oneshot;

use super::disk::FileStorage;
use shards::{
    Compare, CompareOutcome, DeleteRangeRequest, DeleteRangeResponse, Event, KeyValue, MvccError,
    MvccStore, PutRequest, PutResponse, RangeRequest, RangeResponse, SegmentLog, Storage,
    TxnOutcome, TxnRequest,
};

/// Messages a shard worker accepts. Replies travel over `Send` oneshots.
pub enum ShardMsg {
    Range {
        req: RangeRequest,
        revision: i64,
        reply: oneshot::Sender<Result<RangeResponse, MvccError>>,
    },
    Put {
        /// The raft entry this write belongs to: the shard's segment log records it.
        index: u64,
        main: i64,
        sub: i64,
        req: PutRequest,
        reply: oneshot::Sender<Result<(PutResponse, Event), MvccError>>,
    },
    /// Several puts of one raft entry at one main revision, each at its sub-revision: this
    /// shard's share of a multi-shard txn in one message, written all or nothing
    /// (`MvccStore::put_many`). Answers in the order of `puts`.
    Puts {
        index: u64,
        main: i64,
        puts: Vec<(i64, PutRequest)>,
        reply: oneshot::Sender<Result<Vec<(PutResponse, Event)>, MvccError>>,
    },
    DeleteRange {
        index: u64,
        main: i64,
        first_sub: i64,
        req: DeleteRangeRequest,
        reply: oneshot::Sender<(DeleteRangeResponse, Vec<Event>)>,
    },
    /// Delete exactly these keys, each at its given sub-revision (multi-shard delete ranges,
    /// whose sub-revisions follow the global key order).
    DeleteKeys {
        index: u64,
        main: i64,
        keys: Vec<(Bytes, i64)>,
        reply: oneshot::Sender<(Vec<KeyValue>, Vec<Event>)>,
    },
    Compare {
        compares: Vec<Compare>,
        reply: oneshot::Sender<Vec<CompareOutcome>>,
    },
    Txn {
        index: u64,
        main: i64,
        req: TxnRequest,
        reply: oneshot::Sender<Result<TxnOutcome, MvccError>>,
    },
    /// Compacts at `revision`; answers the records etcd's compaction hashes (taken just before
    /// it), which the coordinator combines into the hash HashKV at `revision` answers later.
    Compact {
        index: u64,
        revision: i64,
        reply: oneshot::Sender<Vec<shards::HashRecord>>,
    },
    /// Make every entry up to `index` durable in the segment log and rotate it (see
    /// `SegmentLog::rotate`). Sent by the coordinator after everything up to `index` was
    /// applied and before anything after it, so the log holds exactly the entries ≤ `index`.
    Checkpoint {
        index: u64,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// The checkpoint of the last `Checkpoint` is saved: its compaction may now shrink old
    /// segments (`SegmentLog::checkpoint_saved`).
    CheckpointSaved,
    History {
        key: Bytes,
        range_end: Bytes,
        from: i64,
        to: i64,
        reply: oneshot::Sender<Result<Vec<Event>, MvccError>>,
    },
    /// This shard's part of etcd's HashKV stream (see `shards::combine_hash_records`).
    HashKv {
        revision: i64,
        reply: oneshot::Sender<Vec<shards::HashRecord>>,
    },
    Stats {
        reply: oneshot::Sender<ShardStats>,
    },
    /// Every version this shard retains, for a snapshot to a follower: sent between two
    /// applied entries, so every shard answers as of the same one.
    Retained {
        reply: oneshot::Sender<Vec<Event>>,
    },
    /// Part of a snapshot from the leader: write `events` (this shard's share, in revision
    /// order) into a new segment log in `layout`. The message with `finish` (the snapshot's
    /// raft index and compact revision) completes it and syncs it.
    Stage {
        layout: String,
        events: Vec<Event>,
        finish: Option<(u64, i64)>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// The snapshot staged in `layout` is now the checkpoint (its state file is saved): the
    /// shard switches to it, rebuilding its store, and answers the keys attached to leases.
    Install {
        layout: String,
        index: u64,
        reply: oneshot::Sender<Result<Vec<(Bytes, i64)>, String>>,
    },
    /// Every version this shard retains, detached from the store (`MvccStore::snapshot_view`):
    /// sent by the coordinator between two applied entries, so every shard's view is of the
    /// same applied index.
    SnapshotView {
        reply: oneshot::Sender<shards::SnapshotView>,
    },
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ShardStats {
    pub bytes: usize,
    /// Live keys at the newest revision.
    pub keys: usize,
}

/// Segment bytes before rotation: big enough that rotation is rare, small enough that a
/// rewrite after compaction copies a bounded file.
pub const SEGMENT_BYTES_MAX: u64 = 64 << 20;
/// Bytes of old segments a rewrite reads between two inbox checks: keeps a core's latency flat
/// while it reclaims disk after a compaction.
const REWRITE_BUDGET_BYTES: u64 = 256 * 1024;

/// Opens the storage of shard `shard` in a layout (a directory of the data dir in the server,
/// a map entry in the simulation): how a shard builds a new segment log for a snapshot.
pub type StorageOpener<S> = Box<dyn Fn(&str, usize) -> std::io::Result<S> + Send>;

/// One shard: its store, and the segment log that makes it durable at checkpoints. The server
/// keeps segments in files; the simulation in memory.
pub struct Shard<S: Storage = FileStorage> {
    pub store: MvccStore,
    log: SegmentLog<S>,
    /// Which shard this is, and how to open its storage in another layout.
    index: usize,
    opener: StorageOpener<S>,
    segment_bytes_max: u64,
    /// A snapshot being staged: its layout and the new segment log.
    staging: Option<(String, SegmentLog<S>)>,
    /// The events of the raft entry being applied: one entry can reach a shard as several
    /// messages (multi-shard txns and delete ranges), and the log takes one record per entry.
    pending: Option<(u64, i64, Vec<Event>)>,
    /// Old segments may hold versions a durable compaction dropped.
    rewrite_due: bool,
    /// The first segment-log failure. Durability rests on the WAL, so serving goes on; the next
    /// checkpoint reports it and the coordinator stops the member instead of truncating the WAL.
    failure: Option<String>,
}

impl<S: Storage> Shard<S> {
    pub fn new(
        store: MvccStore,
        log: SegmentLog<S>,
        index: usize,
        opener: StorageOpener<S>,
        segment_bytes_max: u64,
    ) -> Self {
        Shard {
            store,
            log,
            index,
            opener,
            segment_bytes_max,
            staging: None,
            pending: None,
            rewrite_due: true,
            failure: None,
        }
    }

    fn note(&mut self, result: Result<(), shards::SegmentError>) {
        if let Err(e) = result {
            self.failure.get_or_insert_with(|| e.to_string());
        }
    }

    /// Queues the events `index` produced here; an entry's record is written when the next
    /// entry (or a checkpoint) arrives.
    fn record(&mut self, index: u64, revision: i64, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        match &mut self.pending {
            Some((held, _, list)) if *held == index => list.extend_from_slice(events),
            _ => {
                self.flush();
                self.pending = Some((index, revision, events.to_vec()));
            }
        }
    }

    /// `record` for events that are not in one slice (they come paired with responses).
    fn record_each<'a>(
        &mut self,
        index: u64,
        revision: i64,
        events: impl Iterator<Item = &'a Event>,
    ) {
        match &mut self.pending {
            Some((held, _, list)) if *held == index => list.extend(events.cloned()),
            _ => {
                let list: Vec<Event> = events.cloned().collect();
                if list.is_empty() {
                    return;
                }
                self.flush();
                self.pending = Some((index, revision, list));
            }
        }
    }

    fn flush(&mut self) {
        if let Some((index, revision, events)) = self.pending.take() {
            let result = self.log.append(index, revision, &events);
            self.note(result);
        }
    }

    fn checkpoint(&mut self, index: u64) -> Result<(), String> {
        self.flush();
        let result = self.log.rotate();
        self.note(result);
        match &self.failure {
            Some(e) => Err(e.clone()),
            None => {
                debug_assert!(self.log.synced_raft_index() <= index);
                Ok(())
            }
        }
    }

    /// Appends this shard's part of a leader's snapshot to the staged segment log. Each
    /// revision is recorded at raft index revision - 1: below the snapshot's index, and
    /// increasing (the entry that made revision r has index at least r - 1, since the leader's
    /// first entry, index 1, writes nothing).
    fn stage(
        &mut self,
        layout: String,
        events: Vec<Event>,
        finish: Option<(u64, i64)>,
    ) -> Result<(), String> {
        if self.staging.as_ref().is_none_or(|(l, _)| *l != layout) {
            let storage = (self.opener)(&layout, self.index)
                .map_err(|e| format!("creating the staged shard {}: {e}", self.index))?;
            let (log, _, last) =
                SegmentLog::open(storage, self.segment_bytes_max).map_err(|e| e.to_string())?;
            if last != 0 {
                return Err(format!("the staged shard {} is not empty", self.index));
            }
            self.staging = Some((layout, log));
        }
        let (_, log) = self.staging.as_mut().expect("just set");
        let mut start = 0;
        while start < events.len() {
            let revision = events[start].kv.mod_revision;
            let end = start
                + events[start..]
                    .iter()
                    .take_while(|e| e.kv.mod_revision == revision)
                    .count();
            let index = u64::try_from(revision - 1).map_err(|_| "a revision below 1")?;
            if index <= log.last_raft_index() && log.last_raft_index() != 0 {
                return Err(format!("snapshot revision {revision} out of order"));
            }
            log.append(index, revision, &events[start..end])
                .map_err(|e| e.to_string())?;
            start = end;
        }
        if let Some((snapshot_index, compact_revision)) = finish {
            if log.last_raft_index() >= snapshot_index {
                return Err(format!(
                    "revisions reach raft index {} at or past the snapshot's {snapshot_index}",
                    log.last_raft_index()
                ));
            }
            if compact_revision > 0 {
                log.append_compaction(snapshot_index, compact_revision)
                    .map_err(|e| e.to_string())?;
            }
            log.sync().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Switches to the staged snapshot: its log becomes this shard's, opened (and the store
    /// rebuilt) as of the snapshot's raft index.
    fn install(&mut self, layout: &str, index: u64) -> Result<Vec<(Bytes, i64)>, String> {
        let storage = match self.staging.take() {
            Some((l, log)) if l == layout => log.into_storage(),
            _ => (self.opener)(layout, self.index).map_err(|e| e.to_string())?,
        };
        let (log, store, _) = SegmentLog::open_at(storage, self.segment_bytes_max, Some(index))
            .map_err(|e| format!("opening the installed shard {}: {e}", self.index))?;
        let leased = store.leased_keys();
        self.store = store;
        self.log = log;
        self.pending = None;
        self.failure = None;
        self.rewrite_due = true;
        Ok(leased)
    }

    /// Whether old segments wait to be rewritten after a compaction.
    pub fn rewrite_due(&self) -> bool {
        self.rewrite_due
    }

    /// One bounded step of rewriting old segments; false when there is nothing left to do.
    pub fn rewrite_step(&mut self) -> bool {
        if !self.rewrite_due || self.failure.is_some() {
            return false;
        }
        crate::failpoint!("compactBeforeCommitBatch");
        let step = self.log.compact_step(&self.store, REWRITE_BUDGET_BYTES);
        crate::failpoint!("compactAfterCommitBatch");
        match step {
            Ok(more) => self.rewrite_due = more,
            Err(e) => {
                self.failure.get_or_insert_with(|| e.to_string());
                self.rewrite_due = false;
            }
        }
        self.rewrite_due
    }
}

/// Runs until every sender is gone. A dropped reply receiver (the client went away) is not an
/// error: the work is done either way, which keeps apply deterministic. Between messages the
/// worker rewrites old segments after a compaction, a budget at a time.
pub async fn run(rx: flume::Receiver<ShardMsg>, mut shard: Shard) {
    loop {
        let msg = if shard.rewrite_due {
            match rx.try_recv() {
                Ok(msg) => msg,
                Err(flume::TryRecvError::Disconnected) => return,
                Err(flume::TryRecvError::Empty) => {
                    if shard.rewrite_step() {
                        glommio::yield_if_needed().await;
                    }
                    continue;
                }
            }
        } else {
            match rx.recv_async().await {
                Ok(msg) => msg,
                Err(_) => return,
            }
        };
        handle(&mut shard, msg);
    }
}

pub fn handle<S: Storage>(shard: &mut Shard<S>, msg: ShardMsg) {
    let store = &mut shard.store;
    match msg {
        ShardMsg::Range {
            req,
            revision,
            reply,
        } => {
            let _ = reply.send(store.range(&req, revision));
        }
        ShardMsg::Put {
            index,
            main,
            sub,
            req,
            reply,
        } => {
            let result = store.put(main, sub, &req);
            if let Ok((_, event)) = &result {
                shard.record(index, main, std::slice::from_ref(event));
            }
            let _ = reply.send(result);
        }
        ShardMsg::Puts {
            index,
            main,
            puts,
            reply,
        } => {
            let result = store.put_many(main, &puts);
            if let Ok(done) = &result {
                shard.record_each(index, main, done.iter().map(|(_, event)| event));
            }
            let _ = reply.send(result);
        }
        ShardMsg::DeleteRange {
            index,
            main,
            first_sub,
            req,
            reply,
        } => {
            let (resp, events) = store.delete_range(main, first_sub, &req);
            shard.record(index, main, &events);
            let _ = reply.send((resp, events));
        }
        ShardMsg::DeleteKeys {
            index,
            main,
            keys,
            reply,
        } => {
            let mut prev = Vec::with_capacity(keys.len());
            let mut events = Vec::with_capacity(keys.len());
            for (key, sub) in keys {
                let req = DeleteRangeRequest {
                    key,
                    range_end: Bytes::new(),
                    prev_kv: true,
                };
                let (resp, evs) = store.delete_range(main, sub, &req);
                prev.extend(resp.prev_kvs);
                events.extend(evs);
            }
            shard.record(index, main, &events);
            let _ = reply.send((prev, events));
        }
        ShardMsg::Compare { compares, reply } => {
            let _ = reply.send(compares.iter().map(|c| store.compare(c)).collect());
        }
        ShardMsg::Txn {
            index,
            main,
            req,
            reply,
        } => {
            let result = store.txn(main, &req);
            if let Ok(outcome) = &result {
                shard.record(index, main, &outcome.events);
            }
            let _ = reply.send(result);
        }
        ShardMsg::Compact {
            index,
            revision,
            reply,
        } => {
            let hashed = store.compaction_hash_records(revision);
            store.compact(revision);
            shard.flush();
            crate::failpoint!("compactBeforeCommitScheduledCompact");
            let result = shard.log.append_compaction(index, revision);
            crate::failpoint!("compactAfterCommitScheduledCompact");
            shard.note(result);
            let _ = reply.send(hashed);
        }
        ShardMsg::Checkpoint { index, reply } => {
            // etcd's backend commit makes the applied state durable; here the segment sync is.
            crate::failpoint!("beforeCommit");
            let result = shard.checkpoint(index);
            crate::failpoint!("afterCommit");
            let _ = reply.send(result);
        }
        ShardMsg::CheckpointSaved => {
            shard.log.checkpoint_saved();
            shard.rewrite_due = true;
        }
        ShardMsg::History {
            key,
            range_end,
            from,
            to,
            reply,
        } => {
            let _ = reply.send(store.history(&key, &range_end, from, to));
        }
        ShardMsg::HashKv { revision, reply } => {
            let _ = reply.send(store.hash_records(revision));
        }
        ShardMsg::Retained { reply } => {
            let mut events = store.retained_events();
            events.sort_by_key(|e| (e.kv.mod_revision, e.sub_revision));
            let _ = reply.send(events);
        }
        ShardMsg::Stage {
            layout,
            events,
            finish,
            reply,
        } => {
            let _ = reply.send(shard.stage(layout, events, finish));
        }
        ShardMsg::Install {
            layout,
            index,
            reply,
        } => {
            let _ = reply.send(shard.install(&layout, index));
        }
        ShardMsg::SnapshotView { reply } => {
            let _ = reply.send(store.snapshot_view());
        }
        ShardMsg::Stats { reply } => {
            let _ = reply.send(ShardStats {
                bytes: store.approximate_bytes(),
                keys: store.key_count(),
            });
        }
    }
}
