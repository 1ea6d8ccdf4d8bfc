//! proptest strategies for shard operations over a tiny keyspace, so that sequences collide on
//! keys, ranges and revisions often.

#![allow(dead_code)]

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::select;
use shards::*;

#[derive(Clone, Debug)]
pub enum Op {
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    /// Compact at `pick % (revision + 1)`, then run that many bounded reclaim steps.
    Compact(u8, u8),
    /// Range at `pick % (revision + 1)` (0 = newest).
    Range(RangeRequest, u8),
    /// History of [key, end) from `from % (revision + 2)` for `length` revisions.
    History(Bytes, Bytes, u8, u8),
}

fn bytes_of(text: &'static str) -> Bytes {
    Bytes::from_static(text.as_bytes())
}

pub fn key() -> impl Strategy<Value = Bytes> {
    select(vec!["a", "ab", "b", "c", "d"]).prop_map(bytes_of)
}

pub fn range_end() -> impl Strategy<Value = Bytes> {
    select(vec!["", "", "\0", "b", "c", "e", "a"]).prop_map(bytes_of)
}

fn value() -> impl Strategy<Value = Bytes> {
    select(vec!["", "x", "y", "zz"]).prop_map(bytes_of)
}

fn small_revision() -> impl Strategy<Value = i64> {
    prop_oneof![4 => Just(0i64), 1 => 1i64..12]
}

pub fn put() -> impl Strategy<Value = PutRequest> {
    (
        key(),
        value(),
        0i64..3,
        any::<bool>(),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.15),
    )
        .prop_map(
            |(key, value, lease, prev_kv, ignore_value, ignore_lease)| PutRequest {
                key,
                value,
                lease,
                prev_kv,
                ignore_value,
                ignore_lease,
            },
        )
}

pub fn delete() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

pub fn range() -> impl Strategy<Value = RangeRequest> {
    (
        (
            key(),
            range_end(),
            0i64..4,
            select(vec![SortOrder::None, SortOrder::Ascend, SortOrder::Descend]),
        ),
        select(vec![
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
            SortTarget::Value,
        ]),
        (prop::bool::weighted(0.2), prop::bool::weighted(0.1)),
        (
            small_revision(),
            small_revision(),
            small_revision(),
            small_revision(),
        ),
    )
        .prop_map(
            |(
                (key, range_end, limit, sort_order),
                sort_target,
                (keys_only, count_only),
                filters,
            )| RangeRequest {
                key,
                range_end,
                limit,
                revision: 0,
                sort_order,
                sort_target,
                keys_only,
                count_only,
                min_mod_revision: filters.0,
                max_mod_revision: filters.1,
                min_create_revision: filters.2,
                max_create_revision: filters.3,
            },
        )
}

pub fn compare() -> impl Strategy<Value = Compare> {
    let target = prop_oneof![
        (0i64..4).prop_map(CompareTarget::Version),
        (0i64..10).prop_map(CompareTarget::Create),
        (0i64..10).prop_map(CompareTarget::Mod),
        value().prop_map(CompareTarget::Value),
        (0i64..3).prop_map(CompareTarget::Lease),
    ];
    let result = select(vec![
        CompareResult::Equal,
        CompareResult::NotEqual,
        CompareResult::Greater,
        CompareResult::Less,
    ]);
    (
        key(),
        prop_oneof![3 => Just(Bytes::new()), 1 => range_end()],
        result,
        target,
    )
        .prop_map(|(key, range_end, result, target)| Compare {
            key,
            range_end,
            result,
            target,
        })
}

fn leaf_op() -> BoxedStrategy<RequestOp> {
    prop_oneof![
        3 => put().prop_map(RequestOp::Put),
        1 => delete().prop_map(RequestOp::DeleteRange),
        2 => (range(), prop_oneof![3 => Just(0i64), 1 => 1i64..8])
            .prop_map(|(range, revision)| RequestOp::Range(RangeRequest { revision, ..range })),
    ]
    .boxed()
}

fn txn_of(op: BoxedStrategy<RequestOp>) -> impl Strategy<Value = TxnRequest> {
    (
        prop::collection::vec(compare(), 0..3),
        prop::collection::vec(op.clone(), 0..4),
        prop::collection::vec(op, 0..3),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
}

pub fn txn() -> impl Strategy<Value = TxnRequest> {
    let op = prop_oneof![5 => leaf_op(), 1 => txn_of(leaf_op()).prop_map(RequestOp::Txn)].boxed();
    txn_of(op)
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => put().prop_map(Op::Put),
        2 => delete().prop_map(Op::Delete),
        3 => txn().prop_map(Op::Txn),
        1 => (any::<u8>(), 0u8..4).prop_map(|(pick, steps)| Op::Compact(pick, steps)),
        3 => (range(), any::<u8>()).prop_map(|(range, pick)| Op::Range(range, pick)),
        1 => (key(), range_end(), any::<u8>(), 0u8..6).prop_map(|(k, e, from, length)| Op::History(k, e, from, length)),
    ]
}

pub fn op_sequence(length: usize) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..length)
}
