//! A simulated member: its disk (WAL, checkpoint and shard segments in memory, surviving
//! crashes except for what was not synced) and its process (the real raft node, applier and
//! shard workers, started on the simulation's executor and dropped whole by a crash).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::oneshot;
use raft::eraftpb::{ConfState, Entry, HardState};
use rand::Rng;
use rusd::coordinator::apply::{Applier, ApplierConfig, ApplierLinks, Restored};
use rusd::coordinator::checkpoint::CheckpointState;
use rusd::coordinator::members::Member;
use rusd::coordinator::raft::{RaftBoot, RaftMsg, RaftNode};
use rusd::coordinator::seams::{CheckpointStore, LocalFuture, RaftLog};
use rusd::coordinator::watch::WatchInput;
use rusd::coordinator::{Published, WriteRequest};
use rusd::runtime::mesh::ShardSet;
use rusd::runtime::shard::{self, Shard, ShardMsg};
use shards::{Event, MemStorage, SegmentLog, Storage};

use super::exec::{sleep, Exec};
use super::net::Net;

/// Small segments, so rotation and rewrites happen within a short run.
const SEGMENT_BYTES_MAX: u64 = 16 * 1024;

/// Every shard's segment files, by layout and shard.
type Segments = Arc<Mutex<BTreeMap<(String, usize), Arc<Mutex<MemStorage>>>>>;

/// What survives a crash: synced WAL records, the last saved checkpoint, synced segments.
pub struct Disk {
    pub wal: WalState,
    pub checkpoint: Option<CheckpointState>,
    pub segments: Segments,
}

fn open_segments(segments: &Segments, layout: &str, shard: usize) -> SharedStorage {
    let mut all = segments.lock().unwrap();
    SharedStorage(
        all.entry((layout.to_string(), shard))
            .or_insert_with(|| Arc::new(Mutex::new(MemStorage::new())))
            .clone(),
    )
}

#[derive(Default)]
pub struct WalState {
    pub entries: Vec<Entry>,
    pub hard_state: HardState,
}

/// A shard's segment files, shared between the member's shard (while it runs) and its disk.
pub struct SharedStorage(Arc<Mutex<MemStorage>>);

impl Storage for SharedStorage {
    fn list(&self) -> std::io::Result<Vec<String>> {
        self.0.lock().unwrap().list()
    }
    fn create(&mut self, name: &str) -> std::io::Result<()> {
        self.0.lock().unwrap().create(name)
    }
    fn append(&mut self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.0.lock().unwrap().append(name, bytes)
    }
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().read_at(name, offset, buf)
    }
    fn len(&self, name: &str) -> std::io::Result<u64> {
        self.0.lock().unwrap().len(name)
    }
    fn truncate(&mut self, name: &str, len: u64) -> std::io::Result<()> {
        self.0.lock().unwrap().truncate(name, len)
    }
    fn sync(&mut self, name: &str) -> std::io::Result<()> {
        self.0.lock().unwrap().sync(name)
    }
    fn remove(&mut self, name: &str) -> std::io::Result<()> {
        self.0.lock().unwrap().remove(name)
    }
}

/// The WAL on the simulated disk. A persist takes a random disk latency and counts only once
/// it finishes: a crash before that loses the whole write (nothing of it was acknowledged).
struct SimLog {
    disk: Rc<RefCell<Disk>>,
    exec: Exec,
}

impl RaftLog for SimLog {
    fn persist<'a>(
        &'a mut self,
        entries: &'a [Entry],
        hard_state: Option<&'a HardState>,
    ) -> LocalFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let latency = self
                .exec
                .rng(|r| Duration::from_micros(r.gen_range(50..2000)));
            sleep(&self.exec, latency).await;
            let mut disk = self.disk.borrow_mut();
            for e in entries {
                // A re-append of an index replaces the suffix from there, as the WAL's replay
                // rule says.
                disk.wal.entries.retain(|x| x.index < e.index);
                disk.wal.entries.push(e.clone());
            }
            if let Some(hs) = hard_state {
                disk.wal.hard_state = hs.clone();
            }
            Ok(())
        })
    }

    fn checkpoint_saved(
        &mut self,
        snapshot: &raft::eraftpb::SnapshotMetadata,
    ) -> anyhow::Result<()> {
        let index = snapshot.index;
        self.disk
            .borrow_mut()
            .wal
            .entries
            .retain(|e| e.index > index);
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        0
    }
}

/// The checkpoint file: replaced atomically once the write finishes.
struct SimCheckpoints {
    disk: Rc<RefCell<Disk>>,
    exec: Exec,
}

impl CheckpointStore for SimCheckpoints {
    fn save(&mut self, state: CheckpointState) -> LocalFuture<'static, Result<(), String>> {
        let disk = self.disk.clone();
        let exec = self.exec.clone();
        Box::pin(async move {
            let latency = exec.rng(|r| Duration::from_micros(r.gen_range(100..5000)));
            sleep(&exec, latency).await;
            disk.borrow_mut().checkpoint = Some(state);
            Ok(())
        })
    }
}

/// What clients and checks use to reach a running member.
#[derive(Clone)]
pub struct Handles {
    pub raft_tx: flume::Sender<RaftMsg>,
    /// The applier's queries (member list).
    pub queries_tx: flume::Sender<rusd::coordinator::CoordMsg>,
    pub shards: ShardSet,
    pub published: Arc<Published>,
}

/// The events each member's applier produced, by revision: the simulation's stand-in for a
/// watcher that sees everything. It outlives crashes, so replays are compared with what was
/// first produced.
pub type Feed = Rc<RefCell<BTreeMap<i64, Vec<Event>>>>;

pub struct SimMember {
    pub index: usize,
    pub id: u64,
    pub name: String,
    pub shard_count: usize,
    pub disk: Rc<RefCell<Disk>>,
    pub feed: Feed,
    pub handles: Option<Handles>,
    pub incarnation: u64,
    /// Set by a task that failed (a fatal error in the member): the run fails with it.
    pub fatal: Rc<RefCell<Option<String>>>,
}

impl SimMember {
    pub fn new(index: usize, id: u64, shard_count: usize) -> SimMember {
        SimMember {
            index,
            id,
            name: format!("m{index}"),
            shard_count,
            disk: Rc::new(RefCell::new(Disk {
                wal: WalState::default(),
                checkpoint: None,
                segments: Arc::new(Mutex::new(BTreeMap::new())),
            })),
            feed: Rc::new(RefCell::new(BTreeMap::new())),
            handles: None,
            incarnation: 0,
            fatal: Rc::new(RefCell::new(None)),
        }
    }

    pub fn is_up(&self) -> bool {
        self.handles.is_some()
    }

    /// A crash: the process and its tasks vanish; unsynced segment bytes are lost except a
    /// random torn tail.
    pub fn crash(&mut self, exec: &Exec, net: &Net) {
        exec.kill(self.index);
        net.detach(self.id);
        self.handles = None;
        let disk = self.disk.borrow();
        for s in disk.segments.lock().unwrap().values() {
            let kept = exec.rng(|r| r.gen_range(0..64));
            s.lock().unwrap().crash(kept);
        }
    }

    /// Starts (or restarts) the member's process from its disk.
    pub fn start(&mut self, exec: &Exec, net: &Net, members: &[(u64, String)], seed: u64) {
        assert!(self.handles.is_none(), "{} is already up", self.name);
        self.incarnation += 1;
        let disk = self.disk.clone();
        let (checkpoint, entries, hard_state) = {
            let d = disk.borrow();
            (
                d.checkpoint.clone(),
                d.wal.entries.clone(),
                d.wal.hard_state.clone(),
            )
        };
        let checkpoint_index = checkpoint.as_ref().map_or(0, |c| c.raft_index);
        let entries: Vec<Entry> = entries
            .into_iter()
            .filter(|e| e.index > checkpoint_index)
            .collect();
        if let Some(first) = entries.first() {
            assert_eq!(
                first.index,
                checkpoint_index + 1,
                "{}: the WAL must continue the checkpoint",
                self.name
            );
        }
        // The shards, as recovery opens them: each at the checkpoint, in its layout.
        let layout = checkpoint.as_ref().map_or_else(
            || rusd::coordinator::checkpoint::default_layout(self.shard_count),
            |c| c.layout_name(),
        );
        let segments = disk.borrow().segments.clone();
        let mut lease_keys = Vec::new();
        let mut shard_states = Vec::new();
        for i in 0..self.shard_count {
            let (log, store, _) = SegmentLog::open_at(
                open_segments(&segments, &layout, i),
                SEGMENT_BYTES_MAX,
                Some(checkpoint_index),
            )
            .unwrap_or_else(|e| panic!("{}: reopening shard {i}: {e}", self.name));
            lease_keys.extend(store.leased_keys());
            let all = segments.clone();
            let opener: rusd::runtime::shard::StorageOpener<SharedStorage> =
                Box::new(move |layout, shard| Ok(open_segments(&all, layout, shard)));
            shard_states.push(Shard::new(store, log, i, opener, SEGMENT_BYTES_MAX));
        }
        let conf_state = match &checkpoint {
            Some(c) => ConfState::from((c.voters.clone(), c.learners.clone())),
            None => ConfState::from((members.iter().map(|m| m.0).collect::<Vec<_>>(), vec![])),
        };
        let initial_members: Vec<Member> = members
            .iter()
            .map(|(id, name)| Member {
                id: *id,
                name: name.clone(),
                peer_urls: vec![format!("sim://{name}")],
                client_urls: if *id == self.id {
                    vec![format!("sim://{name}/client")]
                } else {
                    Vec::new()
                },
                is_learner: false,
            })
            .collect();

        let owner = Some(self.index);
        let published = Arc::new(Published::default());
        let mut shard_txs = Vec::new();
        for mut shard in shard_states {
            let (tx, rx) = flume::bounded::<ShardMsg>(rusd::runtime::mesh::SHARD_INBOX_MAX);
            shard_txs.push(tx);
            exec.spawn(owner, async move {
                while let Ok(msg) = rx.recv_async().await {
                    shard::handle(&mut shard, msg);
                    while shard.rewrite_due() && rx.is_empty() && shard.rewrite_step() {}
                }
            });
        }
        let shards = ShardSet::new(shard_txs);
        let (raft_tx, raft_rx) = flume::bounded(rusd::coordinator::COORDINATOR_INBOX_MAX);
        let (queries_tx, queries_rx) = flume::bounded(rusd::coordinator::COORDINATOR_INBOX_MAX);
        let (watch_tx, watch_rx) = flume::bounded(rusd::coordinator::watch::WATCH_FEED_MAX);
        let (apply_tx, apply_rx) = flume::unbounded();
        let clock = exec.clock();
        let slot = Rc::new(RefCell::new(Default::default()));
        let applier = Applier::new(
            ApplierConfig {
                member_id: self.id,
                // The simulation's members never ask each other for the member list.
                cluster_id: 0,
                lease_ttl_min_secs: 2,
                initial_members: initial_members.clone(),
                // Frequent checkpoints: a restarted leader keeps only the log after its last
                // one, so followers behind it are caught up by snapshots.
                snapshot_count: 40,
                conf_state: conf_state.clone(),
            },
            Restored {
                checkpoint: checkpoint.clone(),
                lease_keys,
            },
            shards.clone(),
            published.clone(),
            ApplierLinks {
                snapshot_slot: slot.clone(),
                queue: apply_rx,
                queries: queries_rx,
                raft_tx: raft_tx.clone(),
                watch_tx,
            },
            SimCheckpoints {
                disk: disk.clone(),
                exec: exec.clone(),
            },
            clock.clone(),
        )
        .unwrap_or_else(|e| panic!("{}: starting the applier: {e:#}", self.name));
        let (serving_tx, _serving_rx) = oneshot::channel();
        let node = RaftNode::new(
            RaftBoot {
                member_id: self.id,
                checkpoint_index,
                checkpoint_term: checkpoint.as_ref().map_or(0, |c| c.raft_term),
                conf_state,
                entries,
                hard_state,
                heartbeat_interval: Duration::from_millis(100),
                election_ticks: 10,
                quota_bytes: 1 << 30,
                peers: initial_members
                    .iter()
                    .filter(|m| m.id != self.id)
                    .map(|m| (m.id, m.peer_urls.clone()))
                    .collect(),
                seed: seed ^ (self.id.rotate_left(17)) ^ self.incarnation,
                publish: WriteRequest::MemberAttrs {
                    id: self.id,
                    name: self.name.clone(),
                    client_urls: vec![format!("sim://{}/client", self.name)],
                },
                strict_reconfig_check: true,
                force_new_cluster: false,
            },
            SimLog {
                disk: disk.clone(),
                exec: exec.clone(),
            },
            net.transport(self.id),
            clock,
            raft_rx,
            // The simulated network delivers into the raft inbox itself.
            flume::bounded(1).1,
            apply_tx,
            published.clone(),
            serving_tx,
            slot,
        )
        .unwrap_or_else(|e| panic!("{}: starting the raft node: {e:#}", self.name));

        let fatal = self.fatal.clone();
        let name = self.name.clone();
        exec.spawn(owner, async move {
            if let Err(e) = applier.run().await {
                fatal
                    .borrow_mut()
                    .get_or_insert(format!("{name} applier: {e:#}"));
            }
        });
        let fatal = self.fatal.clone();
        let name = self.name.clone();
        exec.spawn(owner, async move {
            if let Err(e) = node.run().await {
                fatal
                    .borrow_mut()
                    .get_or_insert(format!("{name} raft node: {e:#}"));
            }
        });
        let feed = self.feed.clone();
        let name = self.name.clone();
        let fatal = self.fatal.clone();
        exec.spawn(owner, async move {
            while let Ok(input) = watch_rx.recv_async().await {
                if let WatchInput::Applied { revision, events } = input {
                    let mut feed = feed.borrow_mut();
                    match feed.get(&revision) {
                        Some(seen) if *seen != events => {
                            fatal.borrow_mut().get_or_insert(format!(
                                "{name}: revision {revision} replayed with other events: \
                                 {seen:?} then {events:?}"
                            ));
                        }
                        Some(_) => {}
                        None => {
                            feed.insert(revision, events);
                        }
                    }
                }
            }
        });
        net.attach(self.id, raft_tx.clone());
        self.handles = Some(Handles {
            raft_tx,
            queries_tx,
            shards,
            published,
        });
    }
}
