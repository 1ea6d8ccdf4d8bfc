//! The watch hub: every watcher of this member, fed the events of each applied revision in
//! log order. It runs as its own task on core 0 (`run`), fed by the applier through a bounded
//! queue and by the watch streams, so neither apply nor a catch-up read of shard history waits
//! for the other. The hub knows the store up to the last revision it was fed: a catch-up reads
//! history only up to there, and the revisions after it arrive through the feed, so a watcher
//! moves from catch-up to the live flow with no gap and no duplicate.
//!
//! Each gRPC stream has one bounded outbox shared by its watchers. A watcher whose outbox is
//! full is not blocked on and loses nothing: it becomes "unsynced" at the first revision it
//! missed and is caught up again from history on a later tick.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use shards::{Event, EventKind};

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{select, Either};

use super::seams::Clock;
use super::Published;
use crate::runtime::mesh::ShardSet;
use crate::runtime::shard::ShardMsg;

/// Inputs the hub's queue holds before senders (the applier, watch streams) wait: the applier
/// is paced by the hub rather than the hub dropping a revision.
pub const WATCH_FEED_MAX: usize = 16 * 1024;
/// How often watchers that fell behind (a full outbox) are caught up from history.
const CATCH_UP_INTERVAL: Duration = Duration::from_millis(50);

/// Responses a stream's outbox holds before its watchers fall back to catching up.
pub const WATCH_OUTBOX_MAX: usize = 1024;
/// Revisions read from history per catch-up step, so a watcher starting far back costs
/// bounded memory per step (etcd uses the same batch of 1000 revisions).
const CATCH_UP_REVISIONS_MAX: i64 = 1000;

#[derive(Clone, Debug)]
pub struct WatchCreate {
    pub key: Bytes,
    pub range_end: Bytes,
    pub start_revision: i64,
    pub prev_kv: bool,
    pub progress_notify: bool,
    pub filter_put: bool,
    pub filter_delete: bool,
    /// 0 = let the server pick (etcd's AutoWatchID).
    pub watch_id: i64,
}

/// What the hub sends to a stream; the API layer turns it into WatchResponses.
#[derive(Clone, Debug)]
pub enum WatchOut {
    Created {
        watch_id: i64,
        revision: i64,
    },
    /// The requested watch ID is taken on this stream.
    CreateRefused {
        watch_id: i64,
        revision: i64,
        reason: &'static str,
    },
    Events {
        watch_id: i64,
        revision: i64,
        events: Vec<Event>,
    },
    Canceled {
        watch_id: i64,
        revision: i64,
        compact_revision: i64,
    },
    Progress {
        watch_id: i64,
        revision: i64,
    },
}

/// What the hub's task reads.
pub enum WatchInput {
    Client(WatchMsg),
    /// The events of one applied revision, in the order the applier applied them.
    Applied {
        revision: i64,
        events: Vec<Event>,
    },
    /// The store jumped to `revision` (a snapshot from the leader was installed): watchers
    /// catch up from the shards' history instead of from the feed.
    Reset {
        revision: i64,
    },
}

pub enum WatchMsg {
    Create {
        stream: u64,
        req: WatchCreate,
        out: flume::Sender<WatchOut>,
    },
    Cancel {
        stream: u64,
        watch_id: i64,
    },
    RequestProgress {
        stream: u64,
    },
    Close {
        stream: u64,
    },
}

struct Watcher {
    key: Bytes,
    range_end: Bytes,
    prev_kv: bool,
    progress_notify: bool,
    filter_put: bool,
    filter_delete: bool,
    /// The first revision this watcher has not been sent yet.
    next_revision: i64,
    synced: bool,
}

impl Watcher {
    fn matches(&self, key: &[u8]) -> bool {
        key_in_range(key, &self.key, &self.range_end)
    }

    /// The events of one revision this watcher should see, shaped as it asked.
    fn select(&self, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|e| self.matches(&e.kv.key))
            .filter(|e| match e.kind {
                EventKind::Put => !self.filter_put,
                EventKind::Delete => !self.filter_delete,
            })
            .map(|e| {
                let mut e = e.clone();
                if !self.prev_kv {
                    e.prev_kv = None;
                }
                e
            })
            .collect()
    }
}

/// etcd's range rules: empty end = one key; "\0" = from key on; else [key, end).
pub fn key_in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else if end == b"\0" {
        key >= start
    } else {
        key >= start && key < end
    }
}

struct Stream {
    out: flume::Sender<WatchOut>,
    watchers: BTreeMap<i64, Watcher>,
    next_watch_id: i64,
}

#[derive(Default)]
pub struct WatchHub {
    streams: HashMap<u64, Stream>,
}

enum Delivery {
    Sent,
    Full,
    Gone,
}

fn deliver(out: &flume::Sender<WatchOut>, msg: WatchOut) -> Delivery {
    match out.try_send(msg) {
        Ok(()) => Delivery::Sent,
        Err(flume::TrySendError::Full(_)) => Delivery::Full,
        Err(flume::TrySendError::Disconnected(_)) => Delivery::Gone,
    }
}

impl WatchHub {
    pub fn watcher_count(&self) -> usize {
        self.streams.values().map(|s| s.watchers.len()).sum()
    }

    /// Handles one request from a stream. Catch-up reads shard history, hence async.
    pub async fn handle(
        &mut self,
        msg: WatchMsg,
        shards: &ShardSet,
        current: i64,
        compacted: i64,
    ) -> anyhow::Result<()> {
        match msg {
            WatchMsg::Create { stream, req, out } => {
                let s = self.streams.entry(stream).or_insert_with(|| Stream {
                    out,
                    watchers: BTreeMap::new(),
                    next_watch_id: 0,
                });
                let watch_id = if req.watch_id == 0 {
                    while s.watchers.contains_key(&s.next_watch_id) {
                        s.next_watch_id += 1;
                    }
                    s.next_watch_id
                } else {
                    req.watch_id
                };
                if s.watchers.contains_key(&watch_id) {
                    let _ = deliver(
                        &s.out,
                        WatchOut::CreateRefused {
                            watch_id,
                            revision: current,
                            reason: "mvcc: duplicate watch ID provided on the WatchStream",
                        },
                    );
                    return Ok(());
                }
                let start = if req.start_revision <= 0 {
                    current + 1
                } else {
                    req.start_revision
                };
                s.watchers.insert(
                    watch_id,
                    Watcher {
                        key: req.key,
                        range_end: req.range_end,
                        prev_kv: req.prev_kv,
                        progress_notify: req.progress_notify,
                        filter_put: req.filter_put,
                        filter_delete: req.filter_delete,
                        next_revision: start,
                        synced: start > current,
                    },
                );
                if let Delivery::Gone = deliver(
                    &s.out,
                    WatchOut::Created {
                        watch_id,
                        revision: current,
                    },
                ) {
                    self.streams.remove(&stream);
                    return Ok(());
                }
                self.catch_up(stream, watch_id, shards, current, compacted)
                    .await?;
            }
            WatchMsg::Cancel { stream, watch_id } => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    if s.watchers.remove(&watch_id).is_some() {
                        let _ = deliver(
                            &s.out,
                            WatchOut::Canceled {
                                watch_id,
                                revision: current,
                                compact_revision: 0,
                            },
                        );
                    }
                }
            }
            WatchMsg::RequestProgress { stream } => {
                if let Some(s) = self.streams.get(&stream) {
                    // etcd answers only when every watcher of the stream is up to date, so the
                    // revision it reports is one the client has seen everything up to.
                    if s.watchers.values().all(|w| w.synced) {
                        let _ = deliver(
                            &s.out,
                            WatchOut::Progress {
                                watch_id: -1,
                                revision: current,
                            },
                        );
                    }
                }
            }
            WatchMsg::Close { stream } => {
                self.streams.remove(&stream);
            }
        }
        Ok(())
    }

    /// Sends a watcher everything from its next revision to `current` out of shard history,
    /// in bounded steps; it ends synced, or unsynced where its outbox filled.
    async fn catch_up(
        &mut self,
        stream: u64,
        watch_id: i64,
        shards: &ShardSet,
        current: i64,
        compacted: i64,
    ) -> anyhow::Result<()> {
        loop {
            let Some(s) = self.streams.get_mut(&stream) else {
                return Ok(());
            };
            let Some(w) = s.watchers.get_mut(&watch_id) else {
                return Ok(());
            };
            if w.next_revision > current {
                w.synced = true;
                return Ok(());
            }
            if w.next_revision < compacted {
                let _ = deliver(
                    &s.out,
                    WatchOut::Canceled {
                        watch_id,
                        revision: current,
                        compact_revision: compacted,
                    },
                );
                s.watchers.remove(&watch_id);
                return Ok(());
            }
            let from = w.next_revision;
            let to = (from + CATCH_UP_REVISIONS_MAX - 1).min(current);
            let (key, range_end) = (w.key.clone(), w.range_end.clone());
            let Some(events) = history(shards, &key, &range_end, from, to).await? else {
                // A compaction applied after the check above reached the history first.
                let _ = deliver(
                    &s_out(self, stream),
                    WatchOut::Canceled {
                        watch_id,
                        revision: current,
                        compact_revision: compacted,
                    },
                );
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.watchers.remove(&watch_id);
                }
                return Ok(());
            };
            let s = self.streams.get_mut(&stream).expect("checked above");
            let w = s.watchers.get_mut(&watch_id).expect("checked above");
            let selected = w.select(&events);
            if !selected.is_empty() {
                match deliver(
                    &s.out,
                    WatchOut::Events {
                        watch_id,
                        revision: to,
                        events: selected,
                    },
                ) {
                    Delivery::Sent => {}
                    Delivery::Full => {
                        w.synced = false;
                        return Ok(());
                    }
                    Delivery::Gone => {
                        self.streams.remove(&stream);
                        return Ok(());
                    }
                }
            }
            w.next_revision = to + 1;
        }
    }

    /// Feeds the events of one applied revision to every synced watcher that wants them.
    pub fn on_apply(&mut self, revision: i64, events: &[Event]) {
        let mut gone = Vec::new();
        for (id, s) in self.streams.iter_mut() {
            for (watch_id, w) in s.watchers.iter_mut() {
                if !w.synced {
                    continue;
                }
                let selected = w.select(events);
                if selected.is_empty() {
                    w.next_revision = revision + 1;
                    continue;
                }
                match deliver(
                    &s.out,
                    WatchOut::Events {
                        watch_id: *watch_id,
                        revision,
                        events: selected,
                    },
                ) {
                    Delivery::Sent => w.next_revision = revision + 1,
                    Delivery::Full => w.synced = false,
                    Delivery::Gone => {
                        gone.push(*id);
                        break;
                    }
                }
            }
        }
        for id in gone {
            self.streams.remove(&id);
        }
    }

    /// Periodic work: catch up watchers that fell behind, and send progress notifications to
    /// synced watchers that asked for them (when `notify` is set).
    pub async fn tick(
        &mut self,
        shards: &ShardSet,
        current: i64,
        compacted: i64,
        notify: bool,
    ) -> anyhow::Result<()> {
        let behind: Vec<(u64, i64)> = self
            .streams
            .iter()
            .flat_map(|(sid, s)| {
                s.watchers
                    .iter()
                    .filter(|(_, w)| !w.synced)
                    .map(move |(wid, _)| (*sid, *wid))
            })
            .collect();
        for (sid, wid) in behind {
            self.catch_up(sid, wid, shards, current, compacted).await?;
        }
        if notify {
            for s in self.streams.values() {
                for (watch_id, w) in &s.watchers {
                    if w.synced && w.progress_notify {
                        let _ = deliver(
                            &s.out,
                            WatchOut::Progress {
                                watch_id: *watch_id,
                                revision: current,
                            },
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// The hub's task: runs until every sender of its queue is gone. `start_revision` is the
/// store's revision when the applier starts (everything before it is in the shards).
pub async fn run<C: Clock>(
    inbox: flume::Receiver<WatchInput>,
    shards: ShardSet,
    published: Arc<Published>,
    start_revision: i64,
    progress_interval: Duration,
    clock: C,
) -> anyhow::Result<()> {
    let mut hub = WatchHub::default();
    let mut current = start_revision;
    let mut next_progress = clock.now() + progress_interval;
    let mut next_catch_up = clock.now() + CATCH_UP_INTERVAL;
    loop {
        let now = clock.now();
        let deadline = next_progress.min(next_catch_up);
        if now < deadline {
            let recv = inbox.recv_async();
            let sleep = clock.sleep(deadline - now);
            futures::pin_mut!(recv);
            match select(recv, sleep).await {
                Either::Left((Ok(input), _)) => {
                    hub.take(input, &shards, &mut current, &published).await?
                }
                Either::Left((Err(_), _)) => return Ok(()),
                Either::Right(_) => {}
            }
        }
        // Whatever else is queued goes first, so timers never see a stale revision; bounded so
        // the timers below still run under a steady feed.
        for _ in 0..WATCH_FEED_MAX {
            match inbox.try_recv() {
                Ok(input) => hub.take(input, &shards, &mut current, &published).await?,
                Err(_) => break,
            }
        }
        let now = clock.now();
        if now >= next_catch_up || now >= next_progress {
            let notify = now >= next_progress;
            if notify {
                next_progress = next_tick(next_progress, progress_interval, now);
            }
            if hub.watcher_count() > 0 {
                hub.tick(&shards, current, published.compact_revision(), notify)
                    .await?;
            }
            next_catch_up = now + CATCH_UP_INTERVAL;
        }
    }
}

/// The first tick of a fixed-rate schedule (`last`, `last + interval`, ...) after `now`. Ticks
/// keep to the schedule as etcd's ticker does: one that ran late does not push every later one
/// back (counting from the late run made each interval as long as the interval plus the
/// lateness), and ticks missed altogether are skipped rather than sent in a burst.
fn next_tick(last: Instant, interval: Duration, now: Instant) -> Instant {
    let next = last + interval;
    if next > now {
        return next;
    }
    let behind = (now - last).as_nanos() / interval.as_nanos().max(1);
    let ticks = u32::try_from(behind + 1).unwrap_or(u32::MAX);
    interval
        .checked_mul(ticks)
        .and_then(|d| last.checked_add(d))
        .filter(|t| *t > now)
        .unwrap_or(now + interval)
}

impl WatchHub {
    async fn take(
        &mut self,
        input: WatchInput,
        shards: &ShardSet,
        current: &mut i64,
        published: &Published,
    ) -> anyhow::Result<()> {
        match input {
            WatchInput::Client(msg) => {
                self.handle(msg, shards, *current, published.compact_revision())
                    .await
            }
            WatchInput::Applied { revision, events } => {
                assert!(revision > *current, "the hub is fed revisions in order");
                *current = revision;
                self.on_apply(revision, &events);
                Ok(())
            }
            WatchInput::Reset { revision } => {
                *current = revision;
                for s in self.streams.values_mut() {
                    for w in s.watchers.values_mut() {
                        w.synced = false;
                    }
                }
                Ok(())
            }
        }
    }
}

fn s_out(hub: &WatchHub, stream: u64) -> flume::Sender<WatchOut> {
    hub.streams[&stream].out.clone()
}

/// Events in [from, to] for a key range, from every shard it touches, in (revision,
/// sub-revision) order; `None` when part of that history is compacted away.
async fn history(
    shards: &ShardSet,
    key: &Bytes,
    range_end: &Bytes,
    from: i64,
    to: i64,
) -> anyhow::Result<Option<Vec<Event>>> {
    let mut all = Vec::new();
    for shard in shards.shards_for(key, range_end) {
        let (k, e) = (key.clone(), range_end.clone());
        let part = shards
            .call(shard, |reply| ShardMsg::History {
                key: k,
                range_end: e,
                from,
                to,
                reply,
            })
            .await?;
        match part {
            Ok(evs) => all.extend(evs),
            Err(shards::MvccError::Compacted) => return Ok(None),
            Err(e) => anyhow::bail!("reading watch history [{from}, {to}]: {e}"),
        }
    }
    all.sort_by_key(|e| (e.kv.mod_revision, e.sub_revision));
    Ok(Some(all))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_ticks_keep_a_fixed_rate() {
        let start = Instant::now();
        let interval = Duration::from_millis(100);
        let at = |ms: u64| start + Duration::from_millis(ms);
        // A tick that ran 30 ms late keeps the next one on the schedule.
        assert_eq!(next_tick(at(100), interval, at(130)), at(200));
        // On time.
        assert_eq!(next_tick(at(100), interval, at(100)), at(200));
        // Ticks missed altogether are skipped, not sent in a burst.
        assert_eq!(next_tick(at(100), interval, at(350)), at(400));
        assert_eq!(next_tick(at(100), interval, at(400)), at(500));
    }

    #[test]
    fn ranges_follow_etcd_rules() {
        assert!(key_in_range(b"a", b"a", b""));
        assert!(!key_in_range(b"ab", b"a", b""));
        assert!(key_in_range(b"zzz", b"a", b"\0"));
        assert!(key_in_range(b"ab", b"a", b"b"));
        assert!(!key_in_range(b"b", b"a", b"b"));
    }
}
