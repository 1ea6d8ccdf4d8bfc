//! Crash test: concurrent writers, `kill -9` at a random moment, restart, and check that
//!
//! - every acknowledged write is there with exactly the revision its response reported;
//! - no revision was given twice, none was skipped: the mod revisions of all keys (each key is
//!   written once) are exactly 2..=current revision;
//! - a txn over two keys is all-or-nothing, acknowledged or not;
//! - the next write after the restart gets the next revision.
//!
//! Five crashes per shard count, on the same data dir (recovery of a recovered log included).
//! `--snapshot-count 100` makes the member checkpoint many times per round, so crashes land
//! before, during and after checkpoints (shard segment syncs, the state file, WAL removal).
//! The schedule is seeded: the seed is printed, and `CRASH_SEED=<seed>` replays it.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::ops;
use common::{b, each_shards, s, Client, Rng, ServerOpts};

const CRASHES: usize = 5;
const PUT_WRITERS: usize = 3;
const TXN_WRITERS: usize = 1;

/// One acknowledged write: the keys it wrote (value = key) and the revision it reported.
#[derive(Clone, Debug)]
struct Acked {
    keys: Vec<String>,
    revision: i64,
}

/// Writes until the first error (the server is gone): plain puts, or txns over two keys.
async fn writer(mut c: Client, round: usize, id: usize, txn: bool) -> Vec<Acked> {
    let mut acked = Vec::new();
    for n in 0.. {
        let base = format!("r{round}/w{id}/{n:06}");
        if txn {
            let keys = vec![format!("{base}/a"), format!("{base}/z")];
            let req = ops::txn_req(
                vec![],
                keys.iter().map(|k| ops::put(k, k)).collect(),
                vec![],
            );
            match c.kv.txn(req).await {
                Ok(r) => acked.push(Acked {
                    keys,
                    revision: r.into_inner().header.unwrap().revision,
                }),
                Err(_) => break,
            }
        } else {
            let req = proto::etcdserverpb::PutRequest {
                key: b(&base),
                value: b(&base),
                ..Default::default()
            };
            match c.kv.put(req).await {
                Ok(r) => acked.push(Acked {
                    keys: vec![base],
                    revision: r.into_inner().header.unwrap().revision,
                }),
                Err(_) => break,
            }
        }
    }
    acked
}

/// Checks every invariant against the restarted server; returns the current revision.
async fn verify(c: &mut Client, acked: &[Acked], context: &str) -> i64 {
    let all = c.all().await;
    let current = all.header.unwrap().revision;

    // Acknowledged writes: present, with the reported revision; no revision reported twice.
    let mut seen_revs = HashSet::new();
    for a in acked {
        assert!(
            seen_revs.insert(a.revision),
            "{context}: revision {} acknowledged twice",
            a.revision
        );
        assert!(
            a.revision <= current,
            "{context}: acknowledged revision {} is beyond the recovered revision {current}",
            a.revision
        );
    }
    let by_key: BTreeMap<String, &proto::mvccpb::KeyValue> =
        all.kvs.iter().map(|kv| (s(&kv.key), kv)).collect();
    for a in acked {
        for k in &a.keys {
            let kv = by_key.get(k).unwrap_or_else(|| {
                panic!(
                    "{context}: acknowledged write of {k} (revision {}) is lost",
                    a.revision
                )
            });
            assert_eq!(
                (
                    s(&kv.value),
                    kv.mod_revision,
                    kv.create_revision,
                    kv.version
                ),
                (k.clone(), a.revision, a.revision, 1),
                "{context}: key {k}"
            );
        }
    }

    // No gap, no reuse: every revision 2..=current belongs to exactly one write. A txn's keys
    // share theirs; nothing else shares one.
    let mut writes: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for kv in &all.kvs {
        assert_eq!(kv.version, 1, "{context}: {} written twice", s(&kv.key));
        writes.entry(kv.mod_revision).or_default().push(s(&kv.key));
    }
    let revs: Vec<i64> = writes.keys().copied().collect();
    let want: Vec<i64> = (2..=current).collect();
    if revs != want {
        let missing: Vec<_> = want.iter().filter(|r| !writes.contains_key(r)).collect();
        let extra: Vec<_> = revs.iter().filter(|r| !want.contains(r)).collect();
        panic!(
            "{context}: revisions of the stored writes are not 2..={current}: \
             missing {missing:?}, unexpected {extra:?}"
        );
    }
    for (rev, keys) in &writes {
        let is_txn_pair = keys.len() == 2
            && keys[0].ends_with("/a")
            && keys[1].ends_with("/z")
            && keys[0][..keys[0].len() - 2] == keys[1][..keys[1].len() - 2];
        assert!(
            keys.len() == 1 || is_txn_pair,
            "{context}: revision {rev} is shared by {keys:?}"
        );
        // All or nothing: a txn key never appears without its partner.
        if keys.len() == 1 {
            let k = &keys[0];
            assert!(
                !(k.ends_with("/a") || k.ends_with("/z")),
                "{context}: half of a txn survived: {k} at revision {rev}"
            );
        }
    }
    current
}

#[test]
fn kill_9_during_concurrent_writes() {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("CRASH_SEED must be a u64"))
        .unwrap_or_else(common::time_seed);
    eprintln!("crash test seed: {seed} (replay with CRASH_SEED={seed})");

    each_shards(|shards| async move {
        let mut rng = Rng::new(seed ^ shards as u64);
        let mut srv = ServerOpts::new(shards)
            .arg("--snapshot-count")
            .arg("100")
            .start();
        let mut all_acked: Vec<Acked> = Vec::new();
        let mut current = 1;
        for round in 0..CRASHES {
            let delay = Duration::from_millis(rng.range(200, 1500));
            let context = format!("seed {seed}, --shards {shards}, crash {round} after {delay:?}");
            eprintln!("{context}");
            let mut tasks = Vec::new();
            for id in 0..PUT_WRITERS + TXN_WRITERS {
                // A connection per writer: with --shards 2 they land on both cores.
                let c = srv.client().await;
                tasks.push(tokio::spawn(writer(c, round, id, id >= PUT_WRITERS)));
            }
            tokio::time::sleep(delay).await;
            srv.kill();
            let mut acked_now = 0;
            for t in tasks {
                let acked = tokio::time::timeout(Duration::from_secs(30), t)
                    .await
                    .unwrap_or_else(|_| panic!("{context}: a writer did not stop"))
                    .expect("writer task");
                acked_now += acked.len();
                all_acked.extend(acked);
            }
            eprintln!("  {acked_now} writes acknowledged before the kill");
            assert!(
                acked_now > 0,
                "{context}: no write was acknowledged in {delay:?}; log:\n{}",
                srv.log()
            );

            srv.restart();
            let mut c = srv.client().await;
            let rev = verify(&mut c, &all_acked, &context).await;
            assert!(rev >= current, "{context}: revision went back");
            let max_acked = all_acked.iter().map(|a| a.revision).max().unwrap();
            assert!(rev >= max_acked);

            // The next write after the restart gets the next revision.
            let key = format!("r{round}/after");
            let next = c.put_rev(&key, &key).await;
            assert_eq!(next, rev + 1, "{context}: first write after the restart");
            all_acked.push(Acked {
                keys: vec![key],
                revision: next,
            });
            current = next;
        }
        // A last restart without a crash in between changes nothing.
        srv.restart();
        let mut c = srv.client().await;
        let rev = verify(&mut c, &all_acked, "final clean restart").await;
        assert_eq!(rev, current);
    });
}
