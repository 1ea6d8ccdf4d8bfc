//! Deterministic simulation of rusd clusters (TigerBeetle's VOPR, FoundationDB's simulation):
//! 3 or 5 members running the real raft node, applier and shards in one thread, with a network
//! that drops, delays, reorders and duplicates messages and partitions members, and disks that
//! lose unsynced writes when a member crashes and restarts. Clients write and read throughout;
//! at the end every history is checked (tests/sim/check.rs) and every member must hold the
//! same data (HashKV at the last revision).
//!
//! `cargo test --release --test simulation` runs `SIM_SEEDS` seeds (default 200) from
//! `SIM_FIRST_SEED` (default 1). A failure prints its seed; `SIM_SEED=<seed>` replays exactly
//! that run (and `SIM_VERBOSE=1` prints what the nemesis did). `scripts/simulate.sh --seeds N`
//! runs a long batch.

mod sim;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::{select, Either};
use rand::Rng;
use rusd::coordinator::raft::RaftMsg;
use rusd::coordinator::{WriteOutcome, WriteRequest, WriteResponse};
use rusd::runtime::shard::ShardMsg;
use shards::{DeleteRangeRequest, PutRequest, RangeRequest};

use sim::check::{check_history, Model, Op, Outcome, Record};
use sim::exec::{sleep, Exec};
use sim::member::{Handles, SimMember};
use sim::net::{Faults, Net};

/// Virtual time clients and the nemesis run for; then the cluster is healed and must settle.
const RUN_TIME: Duration = Duration::from_secs(20);
/// Virtual time the healed cluster has to converge.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// How long a client waits for an answer before recording the operation as failed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
const KEYS: [&str; 5] = ["a", "b", "c", "d", "e"];
/// The learner the nemesis adds and removes; no member runs with this ID.
const PHANTOM_ID: u64 = 0xfeed;

struct Cluster {
    exec: Exec,
    net: Net,
    members: Vec<SimMember>,
    seed: u64,
    verbose: bool,
}

impl Cluster {
    fn roster(&self) -> Vec<(u64, String)> {
        self.members
            .iter()
            .map(|m| (m.id, m.name.clone()))
            .collect()
    }

    fn ids(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.id).collect()
    }

    fn start(&mut self, i: usize) {
        let roster = self.roster();
        let (exec, net, seed) = (self.exec.clone(), self.net.clone(), self.seed);
        self.members[i].start(&exec, &net, &roster, seed);
    }

    fn say(&self, what: impl std::fmt::Display) {
        if self.verbose {
            println!("[{:>9.3}s] {what}", self.exec.now().as_secs_f64());
        }
    }

    fn fatal(&self) -> Option<String> {
        self.members.iter().find_map(|m| m.fatal.borrow().clone())
    }
}

/// One client: operations against random members, one at a time.
async fn client(
    id: usize,
    exec: Exec,
    cluster: Rc<RefCell<Cluster>>,
    records: Rc<RefCell<Vec<Record>>>,
    until: Duration,
) {
    let mut n = 0;
    while exec.now() < until {
        let pause = exec.rng(|r| Duration::from_millis(r.gen_range(0..40)));
        sleep(&exec, pause).await;
        let up: Vec<(usize, Handles)> = cluster
            .borrow()
            .members
            .iter()
            .filter_map(|m| m.handles.clone().map(|h| (m.index, h)))
            .collect();
        if up.is_empty() {
            continue;
        }
        let (member, handles) = up[exec.rng(|r| r.gen_range(0..up.len()))].clone();
        let key = Bytes::from_static(KEYS[exec.rng(|r| r.gen_range(0..KEYS.len()))].as_bytes());
        let op = match exec.rng(|r| r.gen_range(0..10)) {
            0..=3 => {
                n += 1;
                Op::Put {
                    key,
                    value: Bytes::from(format!("c{id}-{n}")),
                }
            }
            4 => Op::Delete { key },
            5..=7 => Op::Get {
                key,
                linearizable: true,
            },
            _ => Op::Get {
                key,
                linearizable: false,
            },
        };
        let start = exec.now();
        let work = run_op(&handles, &op);
        let timeout = sleep(&exec, CLIENT_TIMEOUT);
        futures::pin_mut!(work, timeout);
        let outcome = match select(work, timeout).await {
            Either::Left((o, _)) => o,
            Either::Right(_) => Outcome::Failed("timed out".into()),
        };
        let op = op.clone();
        records.borrow_mut().push(Record {
            client: id,
            member,
            op,
            start,
            end: exec.now(),
            outcome,
        });
    }
}

async fn propose(h: &Handles, req: WriteRequest) -> Result<WriteOutcome, String> {
    let (reply, rx) = oneshot::channel();
    h.raft_tx
        .send_async(RaftMsg::Propose {
            req,
            reply: Some(reply),
        })
        .await
        .map_err(|_| "member down".to_string())?;
    match rx.await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("member down".into()),
    }
}

async fn run_op(h: &Handles, op: &Op) -> Outcome {
    let result: Result<Outcome, String> = async {
        match op {
            Op::Put { key, value } => {
                let out = propose(
                    h,
                    WriteRequest::Put(PutRequest {
                        key: key.clone(),
                        value: value.clone(),
                        ..Default::default()
                    }),
                )
                .await?;
                Ok(Outcome::Put {
                    revision: out.revision,
                })
            }
            Op::Delete { key } => {
                let out = propose(
                    h,
                    WriteRequest::DeleteRange(DeleteRangeRequest {
                        key: key.clone(),
                        range_end: Bytes::new(),
                        prev_kv: false,
                    }),
                )
                .await?;
                let WriteResponse::DeleteRange(resp) = out.response else {
                    return Err(format!("a delete answered {:?}", out.response));
                };
                Ok(Outcome::Delete {
                    revision: out.revision,
                    deleted: resp.deleted,
                })
            }
            Op::Get { key, linearizable } => {
                if *linearizable {
                    let (reply, rx) = oneshot::channel();
                    h.raft_tx
                        .send_async(RaftMsg::ReadIndex { reply })
                        .await
                        .map_err(|_| "member down".to_string())?;
                    rx.await
                        .map_err(|_| "member down".to_string())?
                        .map_err(|e| e.to_string())?;
                }
                let revision = h.published.revision();
                let req = RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                };
                let resp = h
                    .shards
                    .range(&req, revision)
                    .await
                    .map_err(|_| "member down".to_string())?
                    .map_err(|e| e.to_string())?;
                Ok(Outcome::Get {
                    revision,
                    found: resp
                        .kvs
                        .first()
                        .map(|kv| (kv.value.clone(), kv.mod_revision)),
                })
            }
        }
    }
    .await;
    result.unwrap_or_else(Outcome::Failed)
}

/// Crashes, restarts, partitions and network weather, until `until`.
async fn nemesis(exec: Exec, cluster: Rc<RefCell<Cluster>>, until: Duration) {
    while exec.now() < until {
        let pause = exec.rng(|r| Duration::from_millis(r.gen_range(300..2500)));
        sleep(&exec, pause).await;
        let mut c = cluster.borrow_mut();
        let n = c.members.len();
        let i = exec.rng(|r| r.gen_range(0..n));
        match exec.rng(|r| r.gen_range(0..7)) {
            6 => {
                // A membership change through a random member: a learner that never runs is
                // added, promoted (refused: it never catches up) or removed. Each is a raft
                // conf change applied under the same crashes, partitions and snapshots as
                // the writes; the members must end with the same member list.
                let req = match exec.rng(|r| r.gen_range(0..3)) {
                    0 => WriteRequest::MemberAdd(rusd::coordinator::codec::MemberAddRequest {
                        id: PHANTOM_ID,
                        peer_urls: vec!["sim://phantom/peer".into()],
                        is_learner: true,
                    }),
                    1 => WriteRequest::MemberPromote { id: PHANTOM_ID },
                    _ => WriteRequest::MemberRemove { id: PHANTOM_ID },
                };
                if let Some(h) = c.members[i].handles.clone() {
                    c.say(format!(
                        "membership change {req:?} via {}",
                        c.members[i].name
                    ));
                    exec.spawn(None, async move {
                        let _ = propose(&h, req).await;
                    });
                }
            }
            0 => {
                if c.members[i].is_up() {
                    c.say(format!("crash {}", c.members[i].name));
                    let (exec, net) = (c.exec.clone(), c.net.clone());
                    c.members[i].crash(&exec, &net);
                }
            }
            1 | 2 => {
                if let Some(down) = c.members.iter().position(|m| !m.is_up()) {
                    c.say(format!("restart {}", c.members[down].name));
                    c.start(down);
                }
            }
            3 => {
                c.say(format!("isolate {}", c.members[i].name));
                let ids = c.ids();
                c.net.isolate(c.members[i].id, &ids);
            }
            4 => {
                c.say("heal");
                c.net.heal();
            }
            _ => {
                let faults = exec.rng(|r| Faults {
                    drop: r.gen_range(0.0..0.2),
                    duplicate: r.gen_range(0.0..0.1),
                    delay_min: Duration::from_micros(100),
                    delay_max: Duration::from_millis(r.gen_range(1..60)),
                });
                c.say(format!("weather {faults:?}"));
                c.net.set_faults(faults);
            }
        }
    }
}

/// The combined HashKV of a member at `revision`.
async fn hash_kv(h: &Handles, revision: i64) -> Result<u32, String> {
    let parts = h
        .shards
        .call_all(|reply| ShardMsg::HashKv { revision, reply })
        .await
        .map_err(|_| "member down".to_string())?;
    Ok(shards::combine_hash_records(&parts))
}

fn run_seed(seed: u64, verbose: bool) -> Result<String, String> {
    let exec = Exec::new(seed);
    let net = Net::new(&exec);
    let member_count = if exec.chance(0.3) { 5 } else { 3 };
    let members = (0..member_count)
        .map(|i| {
            let shards = exec.rng(|r| r.gen_range(1..=2));
            SimMember::new(i, 0x1000 + i as u64 * 0x111, shards)
        })
        .collect();
    let cluster = Rc::new(RefCell::new(Cluster {
        exec: exec.clone(),
        net: net.clone(),
        members,
        seed,
        verbose,
    }));
    for i in 0..member_count {
        cluster.borrow_mut().start(i);
    }
    let records = Rc::new(RefCell::new(Vec::new()));
    let clients = exec.rng(|r| r.gen_range(2..=5));
    let finished = Rc::new(RefCell::new(0usize));
    for id in 0..clients {
        let done = finished.clone();
        let fut = client(id, exec.clone(), cluster.clone(), records.clone(), RUN_TIME);
        exec.spawn(None, async move {
            fut.await;
            *done.borrow_mut() += 1;
        });
    }
    let nemesis_done = Rc::new(RefCell::new(false));
    {
        let done = nemesis_done.clone();
        let fut = nemesis(exec.clone(), cluster.clone(), RUN_TIME);
        exec.spawn(None, async move {
            fut.await;
            *done.borrow_mut() = true;
        });
    }
    let stop = || {
        (*finished.borrow() == clients && *nemesis_done.borrow())
            || cluster.borrow().fatal().is_some()
    };
    if !exec.run_until(RUN_TIME + CLIENT_TIMEOUT * 2, stop) {
        return Err("clients did not finish".into());
    }
    if let Some(f) = cluster.borrow().fatal() {
        return Err(f);
    }

    // Heal everything and let the cluster settle: every member up, all applied to the same
    // index, for a while.
    {
        let mut c = cluster.borrow_mut();
        c.say("heal all, restart all");
        c.net.heal();
        c.net.set_faults(Faults::calm());
        for i in 0..member_count {
            if !c.members[i].is_up() {
                c.start(i);
            }
        }
    }
    let settled_since = Rc::new(RefCell::new(None::<(u64, Duration)>));
    let settle_limit = exec.now() + SETTLE_LIMIT;
    let settled = || {
        if cluster.borrow().fatal().is_some() {
            return true;
        }
        let c = cluster.borrow();
        let indexes: Vec<(u64, u64)> = c
            .members
            .iter()
            .map(|m| {
                let h = m.handles.as_ref().expect("all up");
                (
                    h.published
                        .applied_index
                        .load(std::sync::atomic::Ordering::Acquire),
                    h.published
                        .committed_index
                        .load(std::sync::atomic::Ordering::Acquire),
                )
            })
            .collect();
        let first = indexes[0];
        let same = indexes.iter().all(|x| *x == first) && first.0 == first.1 && first.0 > 0;
        let mut since = settled_since.borrow_mut();
        match (*since, same) {
            (_, false) => {
                *since = None;
                false
            }
            (Some((index, at)), true) if index == first.0 => {
                exec.now() >= at + Duration::from_secs(2)
            }
            (_, true) => {
                *since = Some((first.0, exec.now()));
                false
            }
        }
    };
    if !exec.run_until(settle_limit, settled) {
        let c = cluster.borrow();
        let states: Vec<String> = c
            .members
            .iter()
            .map(|m| {
                let p = &m.handles.as_ref().expect("all up").published;
                let o = std::sync::atomic::Ordering::Acquire;
                format!(
                    "{}: leader {:x} term {} committed {} applied {}",
                    m.name,
                    p.leader.load(o),
                    p.raft_term.load(o),
                    p.committed_index.load(o),
                    p.applied_index.load(o)
                )
            })
            .collect();
        return Err(format!(
            "the healed cluster did not settle: {}",
            states.join("; ")
        ));
    }
    if let Some(f) = cluster.borrow().fatal() {
        return Err(f);
    }

    // The watch feeds: every revision two members produced is the same on both. A member that
    // installed a snapshot from the leader skipped the revisions it covers (its watchers catch
    // up from the shards' history, which HashKV below compares).
    let c = cluster.borrow();
    let mut canonical: std::collections::BTreeMap<i64, Vec<shards::Event>> = Default::default();
    for m in &c.members {
        for (rev, events) in m.feed.borrow().iter() {
            match canonical.get(rev) {
                Some(seen) if seen != events => {
                    return Err(format!(
                        "{} produced other events at revision {rev}: {events:?} vs {seen:?}",
                        m.name
                    ))
                }
                Some(_) => {}
                None => {
                    canonical.insert(*rev, events.clone());
                }
            }
        }
    }
    let model = Model::new(&canonical)?;
    let records = records.borrow();
    check_history(&model, &records)?;

    // The member lists: equal everywhere (the phantom learner in all or in none).
    let lists = Rc::new(RefCell::new(Vec::new()));
    for m in &c.members {
        let h = m.handles.clone().expect("all up");
        let out = lists.clone();
        let name = m.name.clone();
        exec.spawn(None, async move {
            let (reply, rx) = oneshot::channel();
            let msg = rusd::coordinator::CoordMsg::MemberList { reply };
            let list = match h.queries_tx.send_async(msg).await {
                Ok(()) => rx.await.ok(),
                Err(_) => None,
            };
            let ids: Option<Vec<(u64, bool)>> =
                list.map(|l| l.iter().map(|m| (m.id, m.is_learner)).collect());
            out.borrow_mut().push((name, ids));
        });
    }
    if !exec.run_until(exec.now() + Duration::from_secs(5), || {
        lists.borrow().len() == member_count
    }) {
        return Err("MemberList did not answer".into());
    }
    {
        let lists = lists.borrow();
        let first = &lists[0].1;
        for (name, list) in lists.iter() {
            if list.is_none() || list != first {
                return Err(format!(
                    "member lists differ: {name} {list:?} vs {} {first:?}",
                    lists[0].0
                ));
            }
        }
    }

    // HashKV at the last revision: equal everywhere.
    let last = model.last_revision();
    let hashes = Rc::new(RefCell::new(Vec::new()));
    for m in &c.members {
        let h = m.handles.clone().expect("all up");
        let out = hashes.clone();
        let name = m.name.clone();
        exec.spawn(None, async move {
            let hash = hash_kv(&h, last).await;
            out.borrow_mut().push((name, hash));
        });
    }
    drop(c);
    let n = member_count;
    if !exec.run_until(exec.now() + Duration::from_secs(5), || {
        hashes.borrow().len() == n
    }) {
        return Err("HashKV did not answer".into());
    }
    let hashes = hashes.borrow();
    let first = hashes[0].1.clone()?;
    for (name, h) in hashes.iter() {
        let h = h.clone()?;
        if h != first {
            return Err(format!(
                "HashKV at {last} differs: {name} {h:x} vs {first:x}"
            ));
        }
    }
    let acked = records
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Failed(_)))
        .count();
    let (delivered, dropped) = net.stats();
    Ok(format!(
        "{member_count} members, {} revisions, {}/{} operations answered, {delivered} messages \
         delivered, {dropped} dropped, {} polls",
        last,
        acked,
        records.len(),
        exec.polls()
    ))
}

#[test]
fn simulated_clusters_keep_their_promises() {
    let level = if std::env::var("SIM_LOG").is_ok_and(|v| v == "info") {
        rusd::logging::LogLevel::Info
    } else {
        rusd::logging::LogLevel::Error
    };
    let _ = rusd::logging::init(level, &[]);
    let verbose = std::env::var("SIM_VERBOSE").is_ok_and(|v| v == "1");
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED is a number")],
        Err(_) => {
            let first: u64 = std::env::var("SIM_FIRST_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1);
            let count: u64 = std::env::var("SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            (first..first + count).collect()
        }
    };
    let mut failures = Vec::new();
    for seed in &seeds {
        let outcome = std::panic::catch_unwind(|| run_seed(*seed, verbose));
        match outcome {
            Ok(Ok(summary)) => {
                if verbose || seeds.len() == 1 {
                    println!("seed {seed}: ok: {summary}");
                }
            }
            Ok(Err(e)) => {
                println!("seed {seed}: FAILED: {e}");
                failures.push(*seed);
            }
            Err(_) => {
                println!("seed {seed}: FAILED: panicked (see above)");
                failures.push(*seed);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed: {failures:?}; replay one with SIM_SEED=<seed> SIM_VERBOSE=1",
        failures.len(),
        seeds.len()
    );
}
