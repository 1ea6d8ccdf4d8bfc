//! HashKV equals etcd's for the same history, whatever `--shards` is: users compare these
//! hashes across members (and etcd's corruption checks do), so a member running rusd must
//! hash like etcd. That includes HashKV at a compaction's own revision, which etcd answers with
//! the hash that compaction took (compact revision: the one before it). The expected values
//! were read from etcd v3.5.17 running this very test
//! (`RUSD_TEST_ETCD=<path to etcd> cargo test --release --test hash -- --nocapture`).

mod common;

use common::{b, each_shards, ops, Client, Server};
use proto::etcdserverpb as pb;

/// Puts, overwrites, deletes, a compaction exactly at a tombstone's revision (which etcd keeps
/// until the next compaction), then more writes. Returns (revision, hash) checkpoints.
async fn workload(c: &mut Client) -> Vec<(i64, u32)> {
    let mut hashes = Vec::new();
    for i in 0..10 {
        c.put(&format!("key{i}"), &format!("value{i}")).await;
    }
    for i in (0..10).step_by(3) {
        c.put(&format!("key{i}"), &format!("again{i}")).await;
    }
    let deleted = c
        .delete(pb::DeleteRangeRequest {
            key: b("key4"),
            ..Default::default()
        })
        .await;
    let tombstone_rev = deleted.header.unwrap().revision;
    c.put("key5", "after-delete").await;
    let rev = c.revision().await;
    hashes.push((rev, c.hash_kv(0).await.hash));
    hashes.push((tombstone_rev - 2, c.hash_kv(tombstone_rev - 2).await.hash));

    c.compact(tombstone_rev).await;
    hashes.push((rev, c.hash_kv(0).await.hash));
    c.put("key4", "reborn").await;
    c.delete(pb::DeleteRangeRequest {
        key: b("key0"),
        range_end: b("key2"),
        prev_kv: false,
    })
    .await;
    let rev = c.revision().await;
    c.compact(rev - 1).await;
    hashes.push((rev, c.hash_kv(0).await.hash));
    hashes
}

#[test]
fn hash_kv_is_etcds_for_any_shard_count() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        let hashes = workload(&mut c).await;
        eprintln!("hashes: {hashes:x?}");
        // From etcd v3.5.17 (see the top of this file).
        let expected: Vec<(i64, u32)> = vec![
            (0x11, 0xcd69_5d07),
            (0xe, 0x9270_86bc),
            (0x11, 0xc3c3_7ea0),
            (0x13, 0xfb78_9b8d),
        ];
        assert_eq!(hashes, expected, "--shards {shards}");
    });
}

/// The history of etcd's e2e `populateDataForHashKV` (hashkv_test.go): 40 operations, every
/// 10th a delete of `keys[0]`, the others one txn putting the operation's number into every key.
/// Returns the tombstones' revisions and the last revision.
async fn populate(c: &mut Client, keys: &[&str]) -> (Vec<i64>, i64) {
    let mut tombstones = Vec::new();
    let mut latest = 0;
    for i in 1..=40 {
        if i % 10 == 0 {
            let r = c
                .delete(pb::DeleteRangeRequest {
                    key: b(keys[0]),
                    ..Default::default()
                })
                .await;
            latest = r.header.unwrap().revision;
            tombstones.push(latest);
            continue;
        }
        let value = i.to_string();
        let ops = keys.iter().map(|k| ops::put(k, &value)).collect();
        let r = c.txn(ops::txn_req(Vec::new(), ops, Vec::new())).await;
        assert!(r.succeeded);
        latest = r.header.unwrap().revision;
    }
    (tombstones, latest)
}

/// Where a scenario compacts, given the tombstones' revisions.
#[derive(Clone, Copy, Debug)]
enum Compaction {
    /// At the first tombstone (e2e `compactedOnTombstone=true`).
    OnFirstTombstone,
    /// Halfway between the first two tombstones, on a put (`compactedOnTombstone=false`).
    BetweenTombstones,
    /// At the first tombstone, then at the second (`TestVerifyHashKVAfterTwoCompactionsOnTombstone`).
    OnTwoTombstones,
    /// At the last tombstone (`TestVerifyHashKVAfterCompactionOnLastTombstone`).
    OnLastTombstone,
}

/// HashKV after the e2e history and its compactions.
#[derive(Debug, PartialEq, Eq)]
struct Hashes {
    /// (compact revision, hash) at each compaction's revision, asked after every compaction:
    /// etcd answers these with the hash each compaction took, whose compact revision is the
    /// one before it (-1: none).
    at_compactions: Vec<(i64, u32)>,
    /// The compact revisions HashKV reported after the last compaction (all the same).
    after_compact_revisions: Vec<i64>,
    /// The hashes at every revision after the last compaction's, to the end.
    after: Vec<u32>,
}

/// Runs the e2e history for `keys`, compacts as `compaction` says, and asks HashKV at every
/// revision from the first compaction to the end.
async fn hashes_after_compaction(c: &mut Client, keys: &[&str], compaction: Compaction) -> Hashes {
    let (tombstones, latest) = populate(c, keys).await;
    let compactions = match compaction {
        Compaction::OnFirstTombstone => vec![tombstones[0]],
        Compaction::BetweenTombstones => vec![(tombstones[0] + tombstones[1]) / 2],
        Compaction::OnTwoTombstones => vec![tombstones[0], tombstones[1]],
        Compaction::OnLastTombstone => vec![tombstones[tombstones.len() - 1]],
    };
    for &at in &compactions {
        c.compact(at).await;
    }
    let mut hashes = Hashes {
        at_compactions: Vec::new(),
        after_compact_revisions: Vec::new(),
        after: Vec::new(),
    };
    for &at in &compactions {
        let r = c.hash_kv(at).await;
        hashes.at_compactions.push((r.compact_revision, r.hash));
    }
    let last = *compactions.last().unwrap();
    for revision in last + 1..=latest {
        let r = c.hash_kv(revision).await;
        hashes.after_compact_revisions.push(r.compact_revision);
        hashes.after.push(r.hash);
    }
    hashes.after_compact_revisions.dedup();
    hashes
}

/// One history of the e2e tests and what etcd v3.5.17 answers for it.
struct Case {
    keys: &'static [&'static str],
    compaction: Compaction,
    at_compactions: &'static [(i64, u32)],
    after_compact_revision: i64,
    after: &'static [u32],
}

/// etcd's e2e TestVerifyHashKVAfterCompact, TestVerifyHashKVAfterTwoCompactionsOnTombstone and
/// TestVerifyHashKVAfterCompactionOnLastTombstone histories on one member, against the hashes
/// etcd v3.5.17 gives for them (see the top of this file): compactions on a tombstone and on a
/// put, with one key and with two.
#[test]
fn hash_kv_after_compactions_on_and_off_tombstones_is_etcds() {
    use Compaction::*;
    let cases = [
        Case {
            keys: &["key0"],
            compaction: BetweenTombstones,
            at_compactions: &[(-1, 0x945efbb9)],
            after_compact_revision: 16,
            after: &[
                0xfc1bfacc, 0xc277108d, 0x85f21a29, 0x95bc6cc8, 0x4f4d0182, 0x4ea1bd9c, 0xcc345cf4,
                0xaabd84a4, 0xb5d623df, 0x82886799, 0xa00f56c9, 0xff278550, 0x592550b3, 0xb2bcaf55,
                0xe1f734ce, 0x658e788f, 0xe11c80ba, 0x30578ab3, 0xd27f63b4, 0x246b353c, 0x142b2832,
                0x428f96ed, 0x3ccd1b8e, 0x2f4ef99f, 0x19398828,
            ],
        },
        Case {
            keys: &["key0", "key1"],
            compaction: BetweenTombstones,
            at_compactions: &[(-1, 0xb3f54d55)],
            after_compact_revision: 16,
            after: &[
                0x7835a00d, 0x16c3b8f2, 0x7089dd8b, 0x80cc2329, 0x2c1f211c, 0xb5af3fe7, 0xd285e801,
                0x13194a12, 0xe5a9e6c4, 0x82bcd31a, 0x6d00237c, 0xdf11440f, 0xc38bf21d, 0xf0d5efa7,
                0x19bf26b2, 0x075b5ae0, 0xaf07c5d6, 0x0f7756f9, 0x981900ee, 0xe31f5e9c, 0xfa92dcfb,
                0x8656d23b, 0x785b4707, 0x6897cf5c, 0x18838868,
            ],
        },
        Case {
            keys: &["key0"],
            compaction: OnFirstTombstone,
            at_compactions: &[(-1, 0x0cf6d010)],
            after_compact_revision: 11,
            after: &[
                0xbd8e1127, 0x94e83b11, 0xd49a678f, 0x2e6f7d66, 0xa0f1ed6e, 0xe1608765, 0xba658b75,
                0x4d50600c, 0x021f0bab, 0x3c6e7f0c, 0xb9104f33, 0xc2a67d9d, 0x2a2dd57f, 0x34ecbbfc,
                0xef8fd0dd, 0x361952a9, 0xfc3e5e94, 0xe1e56709, 0x24269e54, 0xb2f826b9, 0x4f2f37e7,
                0x7ef9b3fc, 0x097f7856, 0x83cda103, 0x89f84497, 0xf8c20dde, 0x3aca04c0, 0x4e52be2e,
                0x06827c81, 0x0b459a1f,
            ],
        },
        Case {
            keys: &["key0", "key1"],
            compaction: OnFirstTombstone,
            at_compactions: &[(-1, 0x8c3f41a7)],
            after_compact_revision: 11,
            after: &[
                0x44caaae8, 0x69334cd2, 0xc3d69109, 0x2a26f788, 0xbebc2dbb, 0xb3d061f7, 0xf3df0688,
                0xdbc86134, 0xcfb06e4b, 0xf5af63dd, 0x465afaba, 0xd3ef01bd, 0x5d259701, 0x0cbe49b6,
                0x315e53b8, 0xdd009267, 0x2a1eca61, 0x4a1d9efa, 0x33cafa4d, 0x09119479, 0x35cf526d,
                0x13fe7ffa, 0x2f84b97f, 0xfa65ce35, 0x0d2c6720, 0x3065b9f2, 0xdb56301a, 0x9f8d60a8,
                0xfa16a81f, 0x97ef10c9,
            ],
        },
        Case {
            keys: &["key0"],
            compaction: OnTwoTombstones,
            at_compactions: &[(-1, 0x0cf6d010), (11, 0x3c6e7f0c)],
            after_compact_revision: 21,
            after: &[
                0x4905af77, 0x44b96543, 0x462f8e20, 0xffeb1860, 0x5874fe98, 0x496d0ff9, 0x60fbffb7,
                0x481c27ec, 0x49537e5c, 0x60a6c7aa, 0x9bcb683f, 0x12215e4e, 0x3612f156, 0xfdc04fb9,
                0x9f5a666e, 0x5128a151, 0xdbb99082, 0xfa3b5bf2, 0x4fa9ec13, 0x2a9502cb,
            ],
        },
        Case {
            keys: &["key0"],
            compaction: OnLastTombstone,
            at_compactions: &[(-1, 0xfc0bde1b)],
            after_compact_revision: 0,
            after: &[],
        },
    ];
    each_shards(|shards| {
        let cases = &cases;
        async move {
            for case in cases {
                let srv = Server::start(shards);
                let mut c = srv.client().await;
                let got = hashes_after_compaction(&mut c, case.keys, case.compaction).await;
                eprintln!("{:?} {:?}: {got:x?}", case.keys, case.compaction);
                let expected = Hashes {
                    at_compactions: case.at_compactions.to_vec(),
                    after_compact_revisions: if case.after.is_empty() {
                        Vec::new()
                    } else {
                        vec![case.after_compact_revision]
                    },
                    after: case.after.to_vec(),
                };
                assert_eq!(
                    got, expected,
                    "--shards {shards}, keys {:?}, {:?}",
                    case.keys, case.compaction
                );
            }
        }
    });
}
