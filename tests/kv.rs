//! The KV service over gRPC with the Rust client: every option of Range, Put, DeleteRange, Txn
//! and Compact, and the response header. Each test runs with `--shards 1` and `--shards 2`.

mod common;

use common::ops::{self, Operand};
use common::{b, each_shards, s, Client, Server};
use proto::etcdserverpb as pb;
use proto::etcdserverpb::compare::CompareResult as R;
use proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use proto::mvccpb::KeyValue;

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter().map(|kv| s(&kv.key)).collect()
}

fn range_req(key: &str, end: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: b(key),
        range_end: b(end),
        ..Default::default()
    }
}

async fn put_all(c: &mut Client, keys: &[&str]) {
    for k in keys {
        c.put(k, &format!("v-{k}")).await;
    }
}

#[test]
fn range_single_prefix_from_key_and_all() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        let all = ["a", "ab", "abc", "abd", "b", "c/1", "c/2", "d"];
        put_all(&mut c, &all).await;

        // Single key.
        let r = c.range(range_req("ab", "")).await;
        assert_eq!(keys(&r.kvs), ["ab"]);
        assert_eq!(r.kvs[0].value, b("v-ab"));
        assert_eq!((r.count, r.more), (1, false));
        assert_eq!(r.header.unwrap().revision, 1 + all.len() as i64);

        // A missing key.
        let r = c.range(range_req("abe", "")).await;
        assert!(r.kvs.is_empty());
        assert_eq!((r.count, r.more), (0, false));

        // Prefix "ab" = [ab, ac).
        let r = c.range(range_req("ab", "ac")).await;
        assert_eq!(keys(&r.kvs), ["ab", "abc", "abd"]);
        assert_eq!(r.count, 3);

        // Prefix "c/" = [c/, c0).
        let r = c.range(range_req("c/", "c0")).await;
        assert_eq!(keys(&r.kvs), ["c/1", "c/2"]);

        // A plain interval [a, b): b excluded.
        let r = c.range(range_req("a", "b")).await;
        assert_eq!(keys(&r.kvs), ["a", "ab", "abc", "abd"]);

        // From key: range_end "\0".
        let r = c.range(range_req("abd", "\0")).await;
        assert_eq!(keys(&r.kvs), ["abd", "b", "c/1", "c/2", "d"]);
        assert_eq!(r.count, 5);

        // All keys: "\0" .. "\0".
        let r = c.range(range_req("\0", "\0")).await;
        assert_eq!(keys(&r.kvs), all);
        assert_eq!(r.count, all.len() as i64);

        // An empty interval (end <= key) finds nothing.
        let r = c.range(range_req("c", "a")).await;
        assert!(r.kvs.is_empty());
        assert_eq!(r.count, 0);
        let r = c.range(range_req("b", "b")).await;
        assert!(r.kvs.is_empty());
    });
}

#[test]
fn range_limit_more_and_count() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        let all = ["p/1", "p/2", "p/3", "p/4", "p/5", "q"];
        put_all(&mut c, &all).await;
        for (limit, want, more) in [
            (1, 1, true),
            (2, 2, true),
            (4, 4, true),
            (5, 5, false),
            (6, 5, false),
            (100, 5, false),
            (0, 5, false),
        ] {
            let r = c
                .range(pb::RangeRequest {
                    limit,
                    ..range_req("p/", "p0")
                })
                .await;
            assert_eq!(r.kvs.len(), want, "limit {limit}");
            assert_eq!(keys(&r.kvs), all[..want], "limit {limit}");
            assert_eq!(r.more, more, "limit {limit}");
            assert_eq!(r.count, 5, "count ignores the limit (limit {limit})");
        }
        // Limit over every key, and limit at a past revision.
        let r = c
            .range(pb::RangeRequest {
                limit: 3,
                ..range_req("\0", "\0")
            })
            .await;
        assert_eq!(keys(&r.kvs), ["p/1", "p/2", "p/3"]);
        assert!(r.more);
        assert_eq!(r.count, 6);
        let r = c
            .range(pb::RangeRequest {
                limit: 2,
                revision: 4, // p/1..p/3 existed
                ..range_req("p/", "p0")
            })
            .await;
        assert_eq!(keys(&r.kvs), ["p/1", "p/2"]);
        assert!(r.more);
        assert_eq!(r.count, 3);
    });
}

#[test]
fn range_at_historical_revisions() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        let r1 = c.put_rev("h", "v1").await;
        let r2 = c.put_rev("h", "v2").await;
        let other = c.put_rev("h2", "x").await;
        let r3 = c
            .delete(pb::DeleteRangeRequest {
                key: b("h"),
                ..Default::default()
            })
            .await
            .header
            .unwrap()
            .revision;
        let r4 = c.put_rev("h", "v3").await;
        assert_eq!([r1, r2, other, r3, r4], [2, 3, 4, 5, 6]);

        let at = |rev: i64| pb::RangeRequest {
            revision: rev,
            ..range_req("h", "")
        };
        let r = c.range(at(1)).await;
        assert!(r.kvs.is_empty(), "nothing at revision 1");
        let r = c.range(at(r1)).await;
        assert_eq!(r.kvs.len(), 1);
        let kv = &r.kvs[0];
        assert_eq!(
            (
                s(&kv.value),
                kv.version,
                kv.create_revision,
                kv.mod_revision
            ),
            ("v1".into(), 1, r1, r1)
        );
        // The header always carries the current revision, even for a past read.
        assert_eq!(r.header.unwrap().revision, r4);
        let kv = &c.range(at(r2)).await.kvs[0];
        assert_eq!(
            (
                s(&kv.value),
                kv.version,
                kv.create_revision,
                kv.mod_revision
            ),
            ("v2".into(), 2, r1, r2)
        );
        // Still v2 at the revision of the unrelated put.
        assert_eq!(c.range(at(other)).await.kvs[0].value, b("v2"));
        assert!(c.range(at(r3)).await.kvs.is_empty(), "deleted at r3");
        let kv = &c.range(at(r4)).await.kvs[0];
        assert_eq!(
            (
                s(&kv.value),
                kv.version,
                kv.create_revision,
                kv.mod_revision
            ),
            ("v3".into(), 1, r4, r4),
            "a re-created key starts a new generation"
        );
        // Revision 0 (and negative) mean the current revision.
        assert_eq!(c.range(at(0)).await.kvs[0].value, b("v3"));
        assert_eq!(c.range(at(-5)).await.kvs[0].value, b("v3"));

        // A prefix read in the past.
        let r = c
            .range(pb::RangeRequest {
                revision: r3,
                ..range_req("h", "i")
            })
            .await;
        assert_eq!(keys(&r.kvs), ["h2"]);
        let r = c
            .range(pb::RangeRequest {
                revision: other,
                ..range_req("h", "i")
            })
            .await;
        assert_eq!(keys(&r.kvs), ["h", "h2"]);
    });
}

/// (key, create, mod, version, value) of every kv.
fn fields(kvs: &[KeyValue]) -> Vec<(String, i64, i64, i64, String)> {
    kvs.iter()
        .map(|kv| {
            (
                s(&kv.key),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
                s(&kv.value),
            )
        })
        .collect()
}

/// Four keys whose key, version, create, mod and value orders all differ.
async fn sort_fixture(c: &mut Client) -> Vec<KeyValue> {
    for (k, v) in [
        ("s/b", "2"),
        ("s/c", "x"),
        ("s/a", "x"),
        ("s/d", "x"),
        ("s/c", "x"),
        ("s/a", "x"),
        ("s/c", "x"),
        ("s/d", "1"),
        ("s/c", "3"),
        ("s/a", "4"),
    ] {
        c.put(k, v).await;
    }
    let kvs = c.range(range_req("s/", "s0")).await.kvs;
    assert_eq!(
        fields(&kvs),
        [
            ("s/a".into(), 4, 11, 3, "4".into()),
            ("s/b".into(), 2, 2, 1, "2".into()),
            ("s/c".into(), 3, 10, 4, "3".into()),
            ("s/d".into(), 5, 9, 2, "1".into()),
        ]
    );
    kvs
}

fn sorted_by(kvs: &[KeyValue], target: SortTarget, descend: bool) -> Vec<String> {
    let mut v = kvs.to_vec();
    v.sort_by(|x, y| match target {
        SortTarget::Key => x.key.cmp(&y.key),
        SortTarget::Version => x.version.cmp(&y.version),
        SortTarget::Create => x.create_revision.cmp(&y.create_revision),
        SortTarget::Mod => x.mod_revision.cmp(&y.mod_revision),
        SortTarget::Value => x.value.cmp(&y.value),
    });
    if descend {
        v.reverse();
    }
    keys(&v)
}

/// What etcd v3.5 answers for a sorted range over `kvs` (all of the range, in key order):
/// without a sort order it fetches `limit + 1` keys in key order first and sorts only those
/// (ascending, unless the target is the key itself); with an order it sorts everything, then
/// cuts at `limit`.
fn etcd_sorted(
    kvs: &[KeyValue],
    target: SortTarget,
    order: SortOrder,
    limit: usize,
) -> (Vec<String>, bool) {
    let mut fetched = kvs.to_vec();
    if limit > 0 && order == SortOrder::None {
        fetched.truncate(limit + 1);
    }
    let mut got = sorted_by(&fetched, target, order == SortOrder::Descend);
    let more = limit > 0 && got.len() > limit;
    if limit > 0 {
        got.truncate(limit);
    }
    (got, more)
}

#[test]
fn range_sort_order_by_every_target() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        let kvs = sort_fixture(&mut c).await;
        let targets = [
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
            SortTarget::Value,
        ];
        // The fixture is only useful if the five orders differ.
        let orders: std::collections::HashSet<_> =
            targets.iter().map(|t| sorted_by(&kvs, *t, false)).collect();
        assert_eq!(orders.len(), 5);

        for target in targets {
            for order in [SortOrder::None, SortOrder::Ascend, SortOrder::Descend] {
                // etcd: NONE keeps key order for KEY and sorts ascending by any other target.
                let want = sorted_by(&kvs, target, order == SortOrder::Descend);
                let req = pb::RangeRequest {
                    sort_order: order as i32,
                    sort_target: target as i32,
                    ..range_req("s/", "s0")
                };
                let r = c.range(req.clone()).await;
                assert_eq!(keys(&r.kvs), want, "{target:?} {order:?}");
                assert_eq!((r.count, r.more), (4, false));
                for limit in [1, 2, 3] {
                    let (want, more) = etcd_sorted(&kvs, target, order, limit);
                    let r = c
                        .range(pb::RangeRequest {
                            limit: limit as i64,
                            ..req.clone()
                        })
                        .await;
                    assert_eq!(keys(&r.kvs), want, "{target:?} {order:?} limit {limit}");
                    assert_eq!(r.more, more, "{target:?} {order:?} limit {limit}");
                    assert_eq!(r.count, 4, "{target:?} {order:?} limit {limit}");
                }
            }
        }
    });
}

#[test]
fn range_keys_only_and_count_only() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        let kvs = sort_fixture(&mut c).await;

        let r = c
            .range(pb::RangeRequest {
                keys_only: true,
                ..range_req("s/", "s0")
            })
            .await;
        assert_eq!(r.count, 4);
        assert_eq!(r.kvs.len(), 4);
        for (got, full) in r.kvs.iter().zip(&kvs) {
            assert!(got.value.is_empty(), "keys_only returns no value: {got:?}");
            assert_eq!(
                (&got.key, got.create_revision, got.mod_revision, got.version),
                (
                    &full.key,
                    full.create_revision,
                    full.mod_revision,
                    full.version
                )
            );
        }

        let r = c
            .range(pb::RangeRequest {
                count_only: true,
                ..range_req("s/", "s0")
            })
            .await;
        assert!(r.kvs.is_empty());
        assert_eq!((r.count, r.more), (4, false));

        let r = c
            .range(pb::RangeRequest {
                count_only: true,
                limit: 1,
                ..range_req("\0", "\0")
            })
            .await;
        assert!(r.kvs.is_empty());
        assert_eq!(r.count, 4);

        let r = c
            .range(pb::RangeRequest {
                count_only: true,
                revision: 3, // s/b and s/c existed
                ..range_req("s/", "s0")
            })
            .await;
        assert_eq!(r.count, 2);

        let r = c
            .range(pb::RangeRequest {
                count_only: true,
                ..range_req("s/zz", "")
            })
            .await;
        assert_eq!(r.count, 0);
    });
}

#[test]
fn range_min_max_mod_and_create_revision_filters() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        // create: a=4 b=2 c=3 d=5; mod: a=11 b=2 c=10 d=9.
        let kvs = sort_fixture(&mut c).await;
        type Filter = fn(&KeyValue, i64) -> bool;
        let cases: [(&str, Filter); 4] = [
            ("min_mod", |kv, r| kv.mod_revision >= r),
            ("max_mod", |kv, r| kv.mod_revision <= r),
            ("min_create", |kv, r| kv.create_revision >= r),
            ("max_create", |kv, r| kv.create_revision <= r),
        ];
        for (name, keep) in cases {
            for bound in [1, 2, 3, 4, 5, 9, 10, 11, 12] {
                let mut req = range_req("s/", "s0");
                match name {
                    "min_mod" => req.min_mod_revision = bound,
                    "max_mod" => req.max_mod_revision = bound,
                    "min_create" => req.min_create_revision = bound,
                    _ => req.max_create_revision = bound,
                }
                let want: Vec<String> = kvs
                    .iter()
                    .filter(|kv| keep(kv, bound))
                    .map(|kv| s(&kv.key))
                    .collect();
                let r = c.range(req).await;
                assert_eq!(keys(&r.kvs), want, "{name} = {bound}");
                // etcd counts the keys of the range before filtering.
                assert_eq!(r.count, 4, "{name} = {bound}");
            }
        }
        // Combined: created after 2 and modified by 10, with sort and limit.
        let r = c
            .range(pb::RangeRequest {
                min_create_revision: 3,
                max_mod_revision: 10,
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Mod as i32,
                ..range_req("s/", "s0")
            })
            .await;
        assert_eq!(keys(&r.kvs), ["s/c", "s/d"]);
        let r = c
            .range(pb::RangeRequest {
                min_create_revision: 3,
                max_mod_revision: 10,
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Mod as i32,
                limit: 1,
                ..range_req("s/", "s0")
            })
            .await;
        assert_eq!(keys(&r.kvs), ["s/c"]);
        assert!(r.more);
    });
}

#[test]
fn serializable_range_reads_the_same_data() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        let kvs = sort_fixture(&mut c).await;
        let r = c
            .range(pb::RangeRequest {
                serializable: true,
                ..range_req("s/", "s0")
            })
            .await;
        assert_eq!(r.kvs, kvs);
        assert_eq!(r.header.unwrap().revision, 11);
        let r = c
            .range(pb::RangeRequest {
                serializable: true,
                revision: 5,
                ..range_req("s/", "s0")
            })
            .await;
        assert_eq!(keys(&r.kvs), ["s/a", "s/b", "s/c", "s/d"]);
        assert_eq!(r.kvs[0].version, 1);
    });
}

#[test]
fn put_prev_kv_ignore_value_and_ignore_lease() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        let r =
            c.kv.put(pb::PutRequest {
                key: b("k"),
                value: b("one"),
                prev_kv: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.prev_kv, None, "no previous kv for a new key");
        assert_eq!(r.header.unwrap().revision, 2);

        let r =
            c.kv.put(pb::PutRequest {
                key: b("k"),
                value: b("two"),
                prev_kv: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let prev = r.prev_kv.expect("prev_kv");
        assert_eq!(
            (
                s(&prev.key),
                s(&prev.value),
                prev.create_revision,
                prev.mod_revision,
                prev.version,
                prev.lease
            ),
            ("k".into(), "one".into(), 2, 2, 1, 0)
        );
        assert_eq!(r.header.unwrap().revision, 3);

        // Without prev_kv, none comes back.
        let r = c.put("k", "three").await;
        assert_eq!(r.prev_kv, None);

        // ignore_value keeps the value and bumps version and mod revision.
        let r =
            c.kv.put(pb::PutRequest {
                key: b("k"),
                ignore_value: true,
                prev_kv: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.header.unwrap().revision, 5);
        assert_eq!(r.prev_kv.unwrap().value, b("three"));
        let kv = c.get("k").await.unwrap();
        assert_eq!(
            (
                s(&kv.value),
                kv.version,
                kv.create_revision,
                kv.mod_revision
            ),
            ("three".into(), 4, 2, 5)
        );

        // ignore_lease keeps the (zero) lease and writes the value.
        let r =
            c.kv.put(pb::PutRequest {
                key: b("k"),
                value: b("four"),
                ignore_lease: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.header.unwrap().revision, 6);
        let kv = c.get("k").await.unwrap();
        assert_eq!((s(&kv.value), kv.version, kv.lease), ("four".into(), 5, 0));

        // Both at once: a plain "touch".
        c.kv.put(pb::PutRequest {
            key: b("k"),
            ignore_value: true,
            ignore_lease: true,
            ..Default::default()
        })
        .await
        .unwrap();
        let kv = c.get("k").await.unwrap();
        assert_eq!(
            (s(&kv.value), kv.version, kv.mod_revision),
            ("four".into(), 6, 7)
        );

        // Empty values and binary keys/values are fine.
        c.put("empty", "").await;
        let kv = c.get("empty").await.unwrap();
        assert!(kv.value.is_empty());
        assert_eq!(kv.version, 1);
        let bin_key = bytes::Bytes::from_static(&[0, 1, 0xff, b'\n', 0]);
        let bin_val = bytes::Bytes::from_static(&[0xde, 0xad, 0, 0xbe, 0xef]);
        c.kv.put(pb::PutRequest {
            key: bin_key.clone(),
            value: bin_val.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        let r = c
            .range(pb::RangeRequest {
                key: bin_key.clone(),
                ..Default::default()
            })
            .await;
        assert_eq!(r.kvs.len(), 1);
        assert_eq!((&r.kvs[0].key, &r.kvs[0].value), (&bin_key, &bin_val));
    });
}

#[test]
fn delete_prev_kv_deleted_count_and_no_op_deletes() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        put_all(&mut c, &["d/1", "d/2", "d/3", "d/4", "e", "f", "g"]).await;
        assert_eq!(c.revision().await, 8);

        // A single key, with prev_kv.
        let r = c
            .delete(pb::DeleteRangeRequest {
                key: b("d/2"),
                range_end: b(""),
                prev_kv: true,
            })
            .await;
        assert_eq!(r.deleted, 1);
        assert_eq!(r.header.unwrap().revision, 9);
        assert_eq!(
            fields(&r.prev_kvs),
            [("d/2".into(), 3, 3, 1, "v-d/2".into())]
        );

        // A range: one revision for all of them; prev_kvs in key order.
        let r = c
            .delete(pb::DeleteRangeRequest {
                key: b("d/"),
                range_end: b("d0"),
                prev_kv: true,
            })
            .await;
        assert_eq!(r.deleted, 3);
        assert_eq!(r.header.unwrap().revision, 10);
        assert_eq!(keys(&r.prev_kvs), ["d/1", "d/3", "d/4"]);
        assert_eq!(r.prev_kvs[1].value, b("v-d/3"));

        // Without prev_kv: a count only.
        let r = c
            .delete(pb::DeleteRangeRequest {
                key: b("e"),
                range_end: b("\0"), // from key: e, f, g
                prev_kv: false,
            })
            .await;
        assert_eq!(r.deleted, 3);
        assert!(r.prev_kvs.is_empty());
        assert_eq!(r.header.unwrap().revision, 11);
        assert!(c.all().await.kvs.is_empty());

        // Deleting nothing changes nothing: not even the revision.
        for (key, end) in [("d/2", ""), ("zzz", ""), ("d/", "d0"), ("\0", "\0")] {
            let r = c
                .delete(pb::DeleteRangeRequest {
                    key: b(key),
                    range_end: b(end),
                    prev_kv: true,
                })
                .await;
            assert_eq!(r.deleted, 0, "{key:?}..{end:?}");
            assert!(r.prev_kvs.is_empty());
            assert_eq!(r.header.unwrap().revision, 11, "{key:?}..{end:?}");
        }
        assert_eq!(c.revision().await, 11);
        assert_eq!(c.put_rev("after", "x").await, 12, "no revision was skipped");

        // Deleted keys are still there in the past.
        let r = c
            .range(pb::RangeRequest {
                revision: 8,
                ..range_req("\0", "\0")
            })
            .await;
        assert_eq!(r.count, 7);
        let r = c
            .range(pb::RangeRequest {
                revision: 9,
                ..range_req("d/", "d0")
            })
            .await;
        assert_eq!(keys(&r.kvs), ["d/1", "d/3", "d/4"]);

        // Every key at once.
        put_all(&mut c, &["x", "y"]).await;
        let r = c
            .delete(pb::DeleteRangeRequest {
                key: b("\0"),
                range_end: b("\0"),
                prev_kv: false,
            })
            .await;
        assert_eq!(r.deleted, 3);
        assert_eq!(r.header.unwrap().revision, 15);
    });
}

/// The fields a compare target reads from a kv.
fn actual(kv: &KeyValue, target: &Operand) -> Operand {
    match target {
        Operand::Version(_) => Operand::Version(kv.version),
        Operand::Create(_) => Operand::Create(kv.create_revision),
        Operand::Mod(_) => Operand::Mod(kv.mod_revision),
        Operand::Value(_) => Operand::Value(s(&kv.value)),
        Operand::Lease(_) => Operand::Lease(kv.lease),
    }
}

/// `actual <result> operand`, as etcd compares (values bytewise).
fn holds(actual: &Operand, result: R, operand: &Operand) -> bool {
    use std::cmp::Ordering;
    let ord = match (actual, operand) {
        (Operand::Version(a), Operand::Version(b))
        | (Operand::Create(a), Operand::Create(b))
        | (Operand::Mod(a), Operand::Mod(b))
        | (Operand::Lease(a), Operand::Lease(b)) => a.cmp(b),
        (Operand::Value(a), Operand::Value(b)) => a.as_bytes().cmp(b.as_bytes()),
        _ => unreachable!(),
    };
    match result {
        R::Equal => ord == Ordering::Equal,
        R::Greater => ord == Ordering::Greater,
        R::Less => ord == Ordering::Less,
        R::NotEqual => ord != Ordering::Equal,
    }
}

/// A txn whose branches tell which one ran (reads only: the revision must not move).
fn probe(compare: Vec<pb::Compare>) -> pb::TxnRequest {
    ops::txn_req(compare, vec![ops::get("then")], vec![ops::get("else")])
}

#[test]
fn txn_compare_every_target_and_result() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        c.put("filler", "x").await;
        c.put("t", "m").await;
        c.put("t", "m").await;
        c.put("filler", "y").await;
        c.put("t", "m").await; // t: create 3, mod 6, version 3, value "m"
        let kv = c.get("t").await.unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (3, 6, 3));
        let rev = c.revision().await;

        let operands = [
            Operand::Version(2),
            Operand::Version(3),
            Operand::Version(4),
            Operand::Create(2),
            Operand::Create(3),
            Operand::Create(4),
            Operand::Mod(5),
            Operand::Mod(6),
            Operand::Mod(7),
            Operand::Value("l".into()),
            Operand::Value("m".into()),
            Operand::Value("ma".into()), // longer: greater than "m"
            Operand::Value("n".into()),
            Operand::Value("".into()),
            Operand::Lease(0),
            Operand::Lease(1),
        ];
        for operand in &operands {
            for result in [R::Equal, R::Greater, R::Less, R::NotEqual] {
                let want = holds(&actual(&kv, operand), result, operand);
                let r = c
                    .txn(probe(vec![ops::cmp("t", "", result, operand.clone())]))
                    .await;
                assert_eq!(r.succeeded, want, "t {result:?} {operand:?}");
                assert_eq!(r.responses.len(), 1);
                assert_eq!(r.header.unwrap().revision, rev);
            }
        }

        // A missing key compares as a zero kv, except that a value compare always fails.
        for (operand, result, want) in [
            (Operand::Version(0), R::Equal, true),
            (Operand::Version(0), R::Greater, false),
            (Operand::Version(1), R::Less, true),
            (Operand::Create(0), R::Equal, true),
            (Operand::Mod(0), R::Equal, true),
            (Operand::Mod(1), R::NotEqual, true),
            (Operand::Lease(0), R::Equal, true),
            (Operand::Value("".into()), R::Equal, false),
            (Operand::Value("x".into()), R::NotEqual, false),
            (Operand::Value("x".into()), R::Less, false),
        ] {
            let r = c
                .txn(probe(vec![ops::cmp(
                    "missing",
                    "",
                    result,
                    operand.clone(),
                )]))
                .await;
            assert_eq!(r.succeeded, want, "missing {result:?} {operand:?}");
        }

        // Several compares: all must hold.
        let r = c
            .txn(probe(vec![
                ops::cmp("t", "", R::Equal, Operand::Version(3)),
                ops::cmp("filler", "", R::Equal, Operand::Value("y".into())),
            ]))
            .await;
        assert!(r.succeeded);
        let r = c
            .txn(probe(vec![
                ops::cmp("t", "", R::Equal, Operand::Version(3)),
                ops::cmp("filler", "", R::Equal, Operand::Value("x".into())),
            ]))
            .await;
        assert!(!r.succeeded);
        // No compare at all: success.
        assert!(c.txn(probe(vec![])).await.succeeded);
        assert_eq!(c.revision().await, rev, "read-only txns moved the revision");
    });
}

#[test]
fn txn_range_compares() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        // r/1 v1, r/2 v2, r/3 v3 (versions), values a b c.
        c.put("r/1", "a").await;
        c.put("r/2", "x").await;
        c.put("r/3", "x").await;
        c.put("r/2", "b").await;
        c.put("r/3", "x").await;
        c.put("r/3", "c").await;
        c.put("s", "outside").await;
        for (key, end, result, operand, want) in [
            ("r/", "r0", R::Greater, Operand::Version(0), true),
            ("r/", "r0", R::Greater, Operand::Version(1), false),
            ("r/", "r0", R::Less, Operand::Version(4), true),
            ("r/", "r0", R::Less, Operand::Version(3), false),
            ("r/", "r0", R::Equal, Operand::Version(2), false),
            ("r/2", "r0", R::Greater, Operand::Version(1), true),
            ("r/", "r0", R::NotEqual, Operand::Version(5), true),
            ("r/", "r0", R::Greater, Operand::Create(1), true),
            ("r/", "r0", R::Less, Operand::Create(5), true),
            ("r/", "r0", R::Less, Operand::Create(4), false),
            ("r/", "r0", R::Greater, Operand::Mod(1), true),
            ("r/", "r0", R::Greater, Operand::Mod(2), false),
            ("r/", "r0", R::Less, Operand::Value("d".into()), true),
            ("r/", "r0", R::Less, Operand::Value("c".into()), false),
            ("r/", "r0", R::NotEqual, Operand::Value("z".into()), true),
            ("r/", "r0", R::Equal, Operand::Lease(0), true),
            // From key: r/1 .. s (s has version 1).
            ("r/", "\0", R::Greater, Operand::Version(0), true),
            ("r/2", "\0", R::Greater, Operand::Version(1), false),
            // An empty range compares as a zero kv; a value compare fails.
            ("x/", "x0", R::Equal, Operand::Version(0), true),
            ("x/", "x0", R::Equal, Operand::Mod(0), true),
            ("x/", "x0", R::Greater, Operand::Version(0), false),
            ("x/", "x0", R::Equal, Operand::Value("".into()), false),
        ] {
            let r = c
                .txn(probe(vec![ops::cmp(key, end, result, operand.clone())]))
                .await;
            assert_eq!(
                r.succeeded, want,
                "[{key:?}, {end:?}) {result:?} {operand:?}"
            );
        }
        assert_eq!(c.revision().await, 8);
    });
}

#[test]
fn txn_branches_and_their_responses() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        c.put("a", "1").await;
        c.put("z", "26").await; // rev 3

        let success = vec![
            ops::put("a", "2"),
            ops::get("a"), // sees the txn's own put
            ops::put("b", "new"),
            ops::del("z", ""),
            ops::range(range_req("\0", "\0")),
        ];
        let failure = vec![ops::put("fail", "1"), ops::get("a")];

        // Success branch.
        let r = c
            .txn(ops::txn_req(
                vec![ops::cmp("a", "", R::Equal, Operand::Value("1".into()))],
                success.clone(),
                failure.clone(),
            ))
            .await;
        assert!(r.succeeded);
        let rev = r.header.unwrap().revision;
        assert_eq!(rev, 4, "a txn takes one revision");
        assert_eq!(r.responses.len(), 5);
        assert_eq!(ops::as_put(&r.responses[0]).prev_kv, None);
        let got = ops::as_range(&r.responses[1]);
        assert_eq!(fields(&got.kvs), [("a".into(), 2, 4, 2, "2".into())]);
        ops::as_put(&r.responses[2]);
        assert_eq!(ops::as_del(&r.responses[3]).deleted, 1);
        let all = ops::as_range(&r.responses[4]);
        assert_eq!(keys(&all.kvs), ["a", "b"]);
        // Every write of the txn has the txn's revision.
        let a = c.get("a").await.unwrap();
        let b_kv = c.get("b").await.unwrap();
        assert_eq!((a.mod_revision, b_kv.mod_revision), (4, 4));
        assert_eq!(b_kv.create_revision, 4);
        assert!(c.get("z").await.is_none());
        assert!(c.get("fail").await.is_none());

        // Failure branch (the compare no longer holds).
        let r = c
            .txn(ops::txn_req(
                vec![ops::cmp("a", "", R::Equal, Operand::Value("1".into()))],
                success.clone(),
                failure.clone(),
            ))
            .await;
        assert!(!r.succeeded);
        assert_eq!(r.header.unwrap().revision, 5);
        assert_eq!(r.responses.len(), 2);
        ops::as_put(&r.responses[0]);
        assert_eq!(ops::as_range(&r.responses[1]).kvs[0].value, b("2"));
        assert_eq!(c.get("fail").await.unwrap().mod_revision, 5);
        assert_eq!(
            c.get("a").await.unwrap().version,
            2,
            "success branch not run"
        );

        // Txn puts with prev_kv, and a delete with prev_kv.
        let r = c
            .txn(ops::txn_req(
                vec![],
                vec![
                    ops::put_req(pb::PutRequest {
                        key: b("a"),
                        value: b("3"),
                        prev_kv: true,
                        ..Default::default()
                    }),
                    ops::del_req(pb::DeleteRangeRequest {
                        key: b("b"),
                        range_end: b(""),
                        prev_kv: true,
                    }),
                ],
                vec![],
            ))
            .await;
        assert!(r.succeeded);
        assert_eq!(
            ops::as_put(&r.responses[0]).prev_kv.as_ref().unwrap().value,
            b("2")
        );
        let d = ops::as_del(&r.responses[1]);
        assert_eq!((d.deleted, keys(&d.prev_kvs)), (1, vec!["b".to_string()]));

        // A failing compare with an empty else branch changes nothing.
        let before = c.revision().await;
        let r = c
            .txn(ops::txn_req(
                vec![ops::cmp("a", "", R::Equal, Operand::Value("nope".into()))],
                vec![ops::put("a", "never")],
                vec![],
            ))
            .await;
        assert!(!r.succeeded);
        assert!(r.responses.is_empty());
        assert_eq!(r.header.unwrap().revision, before);
        assert_eq!(c.revision().await, before);

        // A txn whose only write deletes nothing does not move the revision either.
        let r = c
            .txn(ops::txn_req(vec![], vec![ops::del("nothing", "")], vec![]))
            .await;
        assert_eq!(ops::as_del(&r.responses[0]).deleted, 0);
        assert_eq!(c.revision().await, before);

        // Multi-key writes across key space (both shards when --shards 2) in one txn.
        let puts: Vec<_> = (0..20)
            .map(|i| ops::put(&format!("m/{i:02}"), "v"))
            .collect();
        let r = c.txn(ops::txn_req(vec![], puts, vec![])).await;
        let rev = r.header.unwrap().revision;
        assert_eq!(rev, before + 1);
        let all = c.range(range_req("m/", "m0")).await;
        assert_eq!(all.count, 20);
        assert!(all.kvs.iter().all(|kv| kv.mod_revision == rev));
    });
}

/// A txn's puts reach each shard as one message (its share): the answers must still come back
/// in op order, each with its own key's previous version, on the pipelined path (no compares)
/// and on the general one (a compare, and reads between runs of puts that must see the txn's
/// earlier writes).
#[test]
fn multi_key_txn_answers_in_op_order() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        for i in 0..12 {
            c.put(&format!("s/{i:02}"), &format!("old{i}")).await;
        }
        let with_prev = |key: String, value: &str| {
            ops::put_req(pb::PutRequest {
                key: b(&key),
                value: b(value),
                prev_kv: true,
                ..Default::default()
            })
        };
        // Pipelined path: no compares, only puts, keys on every shard, in reverse key order.
        let puts: Vec<_> = (0..12)
            .rev()
            .map(|i| with_prev(format!("s/{i:02}"), "new"))
            .collect();
        let r = c.txn(ops::txn_req(vec![], puts, vec![])).await;
        let rev = r.header.unwrap().revision;
        for (position, i) in (0..12).rev().enumerate() {
            let prev = ops::as_put(&r.responses[position])
                .prev_kv
                .as_ref()
                .unwrap();
            assert_eq!(prev.key, b(&format!("s/{i:02}")));
            assert_eq!(prev.value, b(&format!("old{i}")));
        }
        // General path: a compare that holds, puts, a read of the first puts, more puts.
        let mut success: Vec<_> = (0..6).map(|i| with_prev(format!("t/{i}"), "a")).collect();
        success.push(ops::range(pb::RangeRequest {
            key: b("t/"),
            range_end: b("t0"),
            ..Default::default()
        }));
        success.extend((6..12).map(|i| with_prev(format!("s/{i:02}"), "b")));
        let r = c
            .txn(ops::txn_req(
                vec![ops::cmp("s/00", "", R::Equal, Operand::Value("new".into()))],
                success,
                vec![],
            ))
            .await;
        assert!(r.succeeded);
        assert_eq!(r.header.unwrap().revision, rev + 1);
        assert!((0..6).all(|i| ops::as_put(&r.responses[i]).prev_kv.is_none()));
        let read = ops::as_range(&r.responses[6]);
        assert_eq!(read.count, 6);
        assert!(read.kvs.iter().all(|kv| kv.mod_revision == rev + 1));
        for (position, i) in (6..12).enumerate() {
            let prev = ops::as_put(&r.responses[7 + position])
                .prev_kv
                .as_ref()
                .unwrap();
            assert_eq!(prev.key, b(&format!("s/{i:02}")));
            assert_eq!((prev.value.clone(), prev.mod_revision), (b("new"), rev));
        }
    });
}

#[test]
fn nested_txns() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        c.put("n", "outer").await; // rev 2
        let inner_then = vec![ops::put("inner", "then"), ops::get("n")];
        let inner_else = vec![ops::put("inner", "else")];
        let inner = |value: &str| {
            ops::txn(ops::txn_req(
                vec![ops::cmp("n", "", R::Equal, Operand::Value(value.into()))],
                inner_then.clone(),
                inner_else.clone(),
            ))
        };

        // Outer then, inner then.
        let r = c
            .txn(ops::txn_req(
                vec![ops::cmp("n", "", R::Equal, Operand::Version(1))],
                vec![ops::put("o", "then"), inner("outer")],
                vec![ops::put("o", "else")],
            ))
            .await;
        assert!(r.succeeded);
        assert_eq!(r.header.unwrap().revision, 3);
        assert_eq!(r.responses.len(), 2);
        let t = ops::as_txn(&r.responses[1]);
        assert!(t.succeeded);
        assert_eq!(t.responses.len(), 2);
        assert_eq!(ops::as_range(&t.responses[1]).kvs[0].value, b("outer"));
        assert_eq!(c.get("inner").await.unwrap().value, b("then"));
        assert_eq!(c.get("o").await.unwrap().value, b("then"));
        assert_eq!(c.get("inner").await.unwrap().mod_revision, 3);

        // Outer then, inner else.
        let r = c
            .txn(ops::txn_req(
                vec![ops::cmp("n", "", R::Equal, Operand::Version(1))],
                vec![inner("something else"), ops::put("o", "then2")],
                vec![],
            ))
            .await;
        assert!(r.succeeded);
        let t = ops::as_txn(&r.responses[0]);
        assert!(!t.succeeded);
        assert_eq!(t.responses.len(), 1);
        assert_eq!(c.get("inner").await.unwrap().value, b("else"));
        assert_eq!(c.get("o").await.unwrap().value, b("then2"));
        assert_eq!(r.header.unwrap().revision, 4);

        // Outer else with an inner txn two levels deep.
        let deep = ops::txn(ops::txn_req(
            vec![],
            vec![ops::txn(ops::txn_req(
                vec![ops::cmp("o", "", R::Equal, Operand::Value("then2".into()))],
                vec![ops::put("deep", "yes"), ops::del("inner", "")],
                vec![ops::put("deep", "no")],
            ))],
            vec![],
        ));
        let r = c
            .txn(ops::txn_req(
                vec![ops::cmp("n", "", R::Greater, Operand::Version(1))],
                vec![ops::put("o", "unreachable")],
                vec![deep],
            ))
            .await;
        assert!(!r.succeeded);
        let lvl1 = ops::as_txn(&r.responses[0]);
        assert!(lvl1.succeeded);
        let lvl2 = ops::as_txn(&lvl1.responses[0]);
        assert!(lvl2.succeeded);
        assert_eq!(ops::as_del(&lvl2.responses[1]).deleted, 1);
        assert_eq!(c.get("deep").await.unwrap().value, b("yes"));
        assert!(c.get("inner").await.is_none());
        assert_eq!(r.header.unwrap().revision, 5);

        // A read-only nested txn does not move the revision.
        let r = c
            .txn(ops::txn_req(vec![], vec![ops::txn(probe(vec![]))], vec![]))
            .await;
        assert!(r.succeeded);
        assert_eq!(r.header.unwrap().revision, 5);
        assert_eq!(c.revision().await, 5);
    });
}

#[test]
fn compaction_and_reads_of_compacted_revisions() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        for i in 0..6 {
            c.put("c", &format!("v{i}")).await; // revs 2..=7
        }
        c.put("other", "o").await; // rev 8
        let r = c.compact(5).await;
        assert_eq!(
            r.header.unwrap().revision,
            8,
            "a compaction takes no revision"
        );
        assert_eq!(c.revision().await, 8);

        let at = |rev: i64| pb::RangeRequest {
            revision: rev,
            ..range_req("c", "")
        };
        for rev in [1, 2, 4] {
            common::assert_status(
                c.kv.range(at(rev)).await,
                tonic::Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            );
        }
        // The compaction revision itself is still readable, and everything after it.
        assert_eq!(c.range(at(5)).await.kvs[0].value, b("v3"));
        assert_eq!(c.range(at(6)).await.kvs[0].value, b("v4"));
        assert_eq!(c.range(at(0)).await.kvs[0].value, b("v5"));
        assert_eq!(c.get("c").await.unwrap().version, 6);
        assert_eq!(c.get("c").await.unwrap().create_revision, 2);

        // HashKV reports the compaction.
        assert_eq!(c.hash_kv(0).await.compact_revision, 5);

        // Compacting at or below the compacted revision, or in the future, is refused.
        for rev in [5, 3] {
            common::assert_status(
                c.kv.compact(pb::CompactionRequest {
                    revision: rev,
                    physical: false,
                })
                .await,
                tonic::Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            );
        }
        common::assert_status(
            c.kv.compact(pb::CompactionRequest {
                revision: 9,
                physical: false,
            })
            .await,
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        );
        // A later compaction, up to the current revision.
        c.compact(8).await;
        common::assert_status(
            c.kv.range(at(7)).await,
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
        assert_eq!(c.range(at(8)).await.kvs[0].value, b("v5"));
        assert_eq!(c.put_rev("c", "after").await, 9);
        assert_eq!(c.revision().await, 9);
    });
}

/// etcd's IDs for the default flags (name "default", token "etcd-cluster", peer URL
/// http://localhost:2380), a revision, a term.
#[track_caller]
fn check_header(h: Option<pb::ResponseHeader>, rev: i64, what: &str) {
    let h = h.unwrap_or_else(|| panic!("{what}: no header"));
    assert_eq!(h.member_id, 0x8e9e05c52164694d, "{what}");
    assert_eq!(h.cluster_id, 0xcdf818194e3a8c32, "{what}");
    assert_eq!(h.revision, rev, "{what}");
    assert_ne!(h.raft_term, 0, "{what}");
}

#[test]
fn response_header_ids_revision_and_term() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        check_header(c.status().await.header, 1, "status of a new member");
        let r = c.put("k", "v").await;
        check_header(r.header, 2, "put");
        let r = c.range(range_req("k", "")).await;
        check_header(r.header, 2, "range");
        let r = c
            .delete(pb::DeleteRangeRequest {
                key: b("k"),
                ..Default::default()
            })
            .await;
        check_header(r.header, 3, "delete");
        let r = c.txn(probe(vec![])).await;
        check_header(r.header, 3, "read-only txn");
        let r = c
            .txn(ops::txn_req(vec![], vec![ops::put("k2", "v")], vec![]))
            .await;
        check_header(r.header, 4, "txn with a write");
        let r = c.compact(2).await;
        check_header(r.header, 4, "compact");
        let r = c.hash_kv(0).await;
        check_header(r.header, 4, "hashkv");
        let r = c.hash_kv(3).await;
        check_header(r.header, 4, "hashkv at a past revision");
        // The term does not change on a single member that keeps running.
        let t1 = c.status().await.raft_term;
        c.put("k", "v").await;
        assert_eq!(c.status().await.raft_term, t1);
        assert_eq!(c.status().await.header.unwrap().raft_term, t1);
    });
}

/// etcd fills only the revision in the headers of a txn's inner responses (the revision as of
/// that op), and leaves a nested txn's own header empty.
#[test]
fn txn_inner_response_headers_carry_only_the_revision() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        c.put("k", "v").await;
        let only = |revision: i64| {
            Some(pb::ResponseHeader {
                revision,
                ..Default::default()
            })
        };
        let r = c.txn(probe(vec![])).await;
        check_header(r.header, 2, "read-only txn");
        assert_eq!(
            ops::as_range(&r.responses[0]).header,
            only(2),
            "range inside a read-only txn"
        );
        let r = c
            .txn(ops::txn_req(
                vec![],
                vec![
                    ops::put("k2", "v"),
                    ops::del("nothing", ""),
                    ops::txn(probe(vec![])),
                ],
                vec![],
            ))
            .await;
        check_header(r.header, 3, "txn with writes");
        assert_eq!(ops::as_put(&r.responses[0]).header, only(3), "inner put");
        assert_eq!(ops::as_del(&r.responses[1]).header, only(3), "inner delete");
        let nested = ops::as_txn(&r.responses[2]);
        assert_eq!(
            nested.header,
            Some(pb::ResponseHeader::default()),
            "nested txn"
        );
        assert_eq!(
            ops::as_range(&nested.responses[0]).header,
            only(3),
            "range in a nested txn"
        );
    });
}

/// etcd's MemberList header has the IDs and the term but no revision.
#[test]
fn member_list_header_has_no_revision() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        c.put("k", "v").await;
        for linearizable in [false, true] {
            let r = c
                .cluster
                .member_list(pb::MemberListRequest { linearizable })
                .await
                .unwrap()
                .into_inner();
            check_header(r.header, 0, "member list");
            assert_eq!(r.members.len(), 1);
            assert_eq!(r.members[0].id, 0x8e9e05c52164694d);
            assert_eq!(r.members[0].name, "default");
            assert_eq!(r.members[0].peer_ur_ls, ["http://localhost:2380"]);
            assert_eq!(r.members[0].client_ur_ls, [srv.url()]);
        }
    });
}

/// Txns of plain puts are applied without waiting for each other (they certainly write one
/// revision each): under concurrency, every txn — compare true or false — still gets its own
/// revision, with none skipped, and the taken branch is the one the store state implies.
#[test]
fn concurrent_certain_txns_get_distinct_revisions() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        const TASKS: usize = 8;
        const EACH: usize = 40;
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let mut c = srv.client().await;
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..EACH {
                    // The first txn on a key takes the success branch, later ones the failure.
                    let key = format!("ct/{}", (t * EACH + i) % 50);
                    let r = c
                        .txn(ops::txn_req(
                            vec![ops::cmp(&key, "", R::Equal, Operand::Version(0))],
                            vec![ops::put(&key, "first")],
                            vec![ops::put(&key, "again"), ops::put(&format!("{key}/n"), "x")],
                        ))
                        .await;
                    out.push((r.header.unwrap().revision, r.succeeded, key));
                }
                out
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let mut revisions: Vec<i64> = all.iter().map(|(rev, _, _)| *rev).collect();
        revisions.sort_unstable();
        let expected: Vec<i64> = (2..2 + (TASKS * EACH) as i64).collect();
        assert_eq!(revisions, expected, "one revision per txn, none skipped");
        // Exactly one txn per key took the success branch: the one at the key's lowest revision.
        let mut by_key: std::collections::BTreeMap<String, Vec<(i64, bool)>> = Default::default();
        for (rev, ok, key) in all {
            by_key.entry(key).or_default().push((rev, ok));
        }
        for (key, mut seen) in by_key {
            seen.sort_unstable();
            assert!(seen[0].1, "{key}: the first txn must succeed: {seen:?}");
            assert!(seen[1..].iter().all(|(_, ok)| !ok), "{key}: {seen:?}");
        }
    });
}
