//! Hand-written checks of the store API against etcd's documented behaviour, one scenario each.

use bytes::Bytes;
use shards::*;

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: b(key),
        value: b(value),
        ..PutRequest::default()
    }
}

fn get(key: &str) -> RangeRequest {
    RangeRequest {
        key: b(key),
        ..RangeRequest::default()
    }
}

fn all() -> RangeRequest {
    RangeRequest {
        key: b("\0"),
        range_end: b("\0"),
        ..RangeRequest::default()
    }
}

fn keys(response: &RangeResponse) -> Vec<String> {
    response
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
        .collect()
}

#[test]
fn put_then_get_tracks_create_mod_and_version() {
    let mut store = MvccStore::new();
    store.put(2, 0, &put("a", "1")).unwrap();
    let (response, event) = store
        .put(
            3,
            0,
            &PutRequest {
                prev_kv: true,
                ..put("a", "2")
            },
        )
        .unwrap();
    assert_eq!(response.prev_kv.as_ref().unwrap().value, b("1"));
    assert_eq!(event.prev_kv.unwrap().mod_revision, 2);
    let kv = &store.range(&get("a"), 3).unwrap().kvs[0];
    assert_eq!(
        (
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.value.clone()
        ),
        (2, 3, 2, b("2"))
    );
    let old = &store.range(&get("a"), 2).unwrap().kvs[0];
    assert_eq!(
        (old.mod_revision, old.version, old.value.clone()),
        (2, 1, b("1"))
    );
    assert_eq!(store.last_revision(), 3);
    assert_eq!(store.key_count(), 1);
}

#[test]
fn put_without_prev_kv_flag_still_reports_prev_in_event() {
    let mut store = MvccStore::new();
    store.put(2, 0, &put("a", "1")).unwrap();
    let (response, event) = store.put(3, 0, &put("a", "2")).unwrap();
    assert!(response.prev_kv.is_none());
    assert_eq!(event.prev_kv.unwrap().value, b("1"));
}

#[test]
fn ignore_value_on_missing_key_fails_and_changes_nothing() {
    let mut store = MvccStore::new();
    let request = PutRequest {
        ignore_value: true,
        ..put("a", "")
    };
    assert_eq!(store.put(2, 0, &request), Err(MvccError::KeyNotFound));
    assert_eq!(store.last_revision(), 0);
    assert_eq!(store.key_count(), 0);
}

#[test]
fn ignore_value_and_lease_keep_current_ones() {
    let mut store = MvccStore::new();
    store
        .put(
            2,
            0,
            &PutRequest {
                lease: 7,
                ..put("a", "v")
            },
        )
        .unwrap();
    let (_, event) = store
        .put(
            3,
            0,
            &PutRequest {
                ignore_value: true,
                ignore_lease: true,
                ..put("a", "")
            },
        )
        .unwrap();
    assert_eq!(
        (event.kv.value, event.kv.lease, event.kv.version),
        (b("v"), 7, 2)
    );
}

#[test]
fn delete_recreate_starts_new_generation() {
    let mut store = MvccStore::new();
    store.put(2, 0, &put("a", "1")).unwrap();
    let (response, events) = store.delete_range(
        3,
        0,
        &DeleteRangeRequest {
            key: b("a"),
            prev_kv: true,
            ..Default::default()
        },
    );
    assert_eq!(response.deleted, 1);
    assert_eq!(events[0].kind, EventKind::Delete);
    assert_eq!(
        events[0].kv,
        KeyValue {
            key: b("a"),
            mod_revision: 3,
            ..KeyValue::default()
        }
    );
    assert_eq!(store.key_count(), 0);
    store.put(4, 0, &put("a", "2")).unwrap();
    let kv = &store.range(&get("a"), 4).unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.version), (4, 1));
    assert!(store.range(&get("a"), 3).unwrap().kvs.is_empty());
}

#[test]
fn delete_nothing_changes_nothing() {
    let mut store = MvccStore::new();
    store.put(2, 0, &put("a", "1")).unwrap();
    let (response, events) = store.delete_range(
        3,
        0,
        &DeleteRangeRequest {
            key: b("b"),
            ..Default::default()
        },
    );
    assert_eq!(response.deleted, 0);
    assert!(events.is_empty());
    assert_eq!(store.last_revision(), 2);
}

#[test]
fn delete_range_uses_consecutive_sub_revisions_in_key_order() {
    let mut store = MvccStore::new();
    for (i, key) in ["c", "a", "b"].iter().enumerate() {
        store.put(2 + i as i64, 0, &put(key, "x")).unwrap();
    }
    let (_, events) = store.delete_range(
        9,
        3,
        &DeleteRangeRequest {
            key: b("a"),
            range_end: b("c"),
            ..Default::default()
        },
    );
    let summary: Vec<_> = events
        .iter()
        .map(|e| (e.kv.key.clone(), e.sub_revision))
        .collect();
    assert_eq!(summary, vec![(b("a"), 3), (b("b"), 4)]);
}

#[test]
fn range_limit_count_more_and_sort() {
    let mut store = MvccStore::new();
    for (i, key) in ["a", "b", "c", "d"].iter().enumerate() {
        store
            .put(2 + i as i64, 0, &put(key, &format!("{}", 9 - i)))
            .unwrap();
    }
    let limited = store.range(&RangeRequest { limit: 2, ..all() }, 5).unwrap();
    assert_eq!(
        (keys(&limited), limited.more, limited.count),
        (vec!["a".into(), "b".into()], true, 4)
    );
    let exact = store.range(&RangeRequest { limit: 4, ..all() }, 5).unwrap();
    assert!(!exact.more);
    let by_value = store
        .range(
            &RangeRequest {
                sort_target: SortTarget::Value,
                limit: 1,
                ..all()
            },
            5,
        )
        .unwrap();
    assert_eq!(keys(&by_value), vec!["d"]);
    let descending = store
        .range(
            &RangeRequest {
                sort_order: SortOrder::Descend,
                sort_target: SortTarget::Key,
                ..all()
            },
            5,
        )
        .unwrap();
    assert_eq!(keys(&descending), vec!["d", "c", "b", "a"]);
    let counted = store
        .range(
            &RangeRequest {
                count_only: true,
                limit: 1,
                ..all()
            },
            5,
        )
        .unwrap();
    assert_eq!(
        (counted.kvs.len(), counted.count, counted.more),
        (0, 4, false)
    );
    let filtered = store
        .range(
            &RangeRequest {
                min_mod_revision: 4,
                keys_only: true,
                ..all()
            },
            5,
        )
        .unwrap();
    assert_eq!(
        (keys(&filtered), filtered.count),
        (vec!["c".into(), "d".into()], 4)
    );
    assert!(filtered.kvs[0].value.is_empty());
    let half_open = store
        .range(
            &RangeRequest {
                key: b("b"),
                range_end: b("d"),
                ..Default::default()
            },
            5,
        )
        .unwrap();
    assert_eq!(keys(&half_open), vec!["b", "c"]);
    let from = store
        .range(
            &RangeRequest {
                key: b("c"),
                range_end: b("\0"),
                ..Default::default()
            },
            5,
        )
        .unwrap();
    assert_eq!(keys(&from), vec!["c", "d"]);
    let inverted = store
        .range(
            &RangeRequest {
                key: b("c"),
                range_end: b("b"),
                ..Default::default()
            },
            5,
        )
        .unwrap();
    assert_eq!(inverted.count, 0);
}

#[test]
fn compaction_drops_history_and_tombstones() {
    let mut store = MvccStore::new();
    store.put(2, 0, &put("a", "1")).unwrap();
    store.put(3, 0, &put("a", "2")).unwrap();
    store.put(4, 0, &put("b", "1")).unwrap();
    store.delete_range(
        5,
        0,
        &DeleteRangeRequest {
            key: b("b"),
            ..Default::default()
        },
    );
    let before = store.approximate_bytes();
    store.compact(5);
    assert!(store.approximate_bytes() < before);
    assert_eq!(store.range(&get("a"), 4), Err(MvccError::Compacted));
    assert_eq!(store.range(&get("a"), 5).unwrap().kvs[0].version, 2);
    assert_eq!(store.history(b"a", b"", 4, 10), Err(MvccError::Compacted));
    // From the compact revision itself: served (etcd serves a watch there). b's tombstone at
    // 5, exactly at the compact revision, survives (as in etcd 3.5.15+), without prev_kv.
    let from_compaction = store.history(b"\0", b"\0", 5, 10).unwrap();
    assert_eq!(from_compaction.len(), 1);
    assert_eq!(from_compaction[0].kind, EventKind::Delete);
    assert_eq!(from_compaction[0].prev_kv, None);
    assert_eq!(store.history(b"a", b"", 6, 10), Ok(vec![]));
    assert!(store.is_retained(b"b", 5, 0));
    assert!(!store.is_retained(b"b", 4, 0));
    assert!(!store.is_retained(b"a", 2, 0));
    assert!(store.is_retained(b"a", 3, 0));
    assert_eq!(store.retained_events().len(), 2);
    // A version written after the compaction sees the kept one as its previous.
    let (_, event) = store.put(6, 0, &put("a", "3")).unwrap();
    assert_eq!(event.prev_kv.unwrap().version, 2);
    // The next compaction drops that tombstone.
    store.compact(6);
    assert!(!store.is_retained(b"b", 5, 0));
}

#[test]
fn history_orders_by_revision_and_fills_prev() {
    let mut store = MvccStore::new();
    store.put(2, 0, &put("b", "1")).unwrap();
    store.put(3, 0, &put("a", "1")).unwrap();
    store.put(4, 0, &put("b", "2")).unwrap();
    store.delete_range(
        5,
        0,
        &DeleteRangeRequest {
            key: b("a"),
            range_end: b("c"),
            ..Default::default()
        },
    );
    let events = store.history(b"a", b"c", 3, 5).unwrap();
    let summary: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.kv.mod_revision,
                e.sub_revision,
                e.kv.key.clone(),
                e.prev_kv.is_some(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (3, 0, b("a"), false),
            (4, 0, b("b"), true),
            (5, 0, b("a"), true),
            (5, 1, b("b"), true)
        ]
    );
}

#[test]
fn compare_and_combine_follow_etcd_rules() {
    let mut store = MvccStore::new();
    store.put(2, 0, &put("a", "x")).unwrap();
    let missing_version = Compare {
        key: b("zz"),
        range_end: b(""),
        result: CompareResult::Equal,
        target: CompareTarget::Version(0),
    };
    let outcome = store.compare(&missing_version);
    assert!(!outcome.keys_found);
    assert!(combine_compare(&missing_version, &[outcome]));
    let missing_value = Compare {
        target: CompareTarget::Value(b("")),
        ..missing_version.clone()
    };
    assert!(!combine_compare(
        &missing_value,
        &[store.compare(&missing_value)]
    ));
    let present = Compare {
        key: b("a"),
        range_end: b(""),
        result: CompareResult::Greater,
        target: CompareTarget::Mod(1),
    };
    assert!(combine_compare(
        &present,
        &[
            store.compare(&present),
            CompareOutcome {
                keys_found: false,
                all_true: true
            }
        ]
    ));
    let failing = CompareOutcome {
        keys_found: true,
        all_true: false,
    };
    assert!(!combine_compare(
        &present,
        &[store.compare(&present), failing]
    ));
}

#[test]
fn txn_takes_branch_and_reads_its_own_writes() {
    let mut store = MvccStore::new();
    store.put(2, 0, &put("a", "1")).unwrap();
    let request = TxnRequest {
        compare: vec![Compare {
            key: b("a"),
            range_end: b(""),
            result: CompareResult::Equal,
            target: CompareTarget::Value(b("1")),
        }],
        success: vec![
            RequestOp::Put(put("a", "2")),
            RequestOp::Put(put("b", "3")),
            RequestOp::Range(RangeRequest {
                key: b("a"),
                range_end: b("c"),
                ..Default::default()
            }),
        ],
        failure: vec![RequestOp::Range(get("a"))],
    };
    let outcome = store.txn(3, &request).unwrap();
    assert!(outcome.wrote && outcome.response.succeeded);
    assert_eq!(
        outcome
            .events
            .iter()
            .map(|e| e.sub_revision)
            .collect::<Vec<_>>(),
        vec![0, 1]
    );
    let ResponseOp::Range(range) = &outcome.response.responses[2] else {
        panic!("range response expected")
    };
    assert_eq!(
        range
            .kvs
            .iter()
            .map(|kv| kv.value.clone())
            .collect::<Vec<_>>(),
        vec![b("2"), b("3")]
    );
    let again = store.txn(4, &request).unwrap();
    assert!(!again.response.succeeded && !again.wrote);
    assert_eq!(store.last_revision(), 3);
}

#[test]
fn txn_validation_errors_change_nothing() {
    let mut store = MvccStore::new();
    store.put(2, 0, &put("a", "1")).unwrap();
    let bad = TxnRequest {
        success: vec![
            RequestOp::Put(put("b", "1")),
            RequestOp::Put(PutRequest {
                ignore_lease: true,
                ..put("c", "1")
            }),
        ],
        ..TxnRequest::default()
    };
    assert_eq!(store.txn(3, &bad), Err(MvccError::KeyNotFound));
    assert_eq!(store.key_count(), 1);
    let future = TxnRequest {
        success: vec![RequestOp::Range(RangeRequest {
            revision: 3,
            ..get("a")
        })],
        ..TxnRequest::default()
    };
    assert_eq!(store.txn(3, &future), Err(MvccError::FutureRevision));
    store.put(3, 0, &put("a", "2")).unwrap();
    store.compact(3);
    let compacted = TxnRequest {
        success: vec![RequestOp::Range(RangeRequest {
            revision: 2,
            ..get("a")
        })],
        ..TxnRequest::default()
    };
    assert_eq!(store.txn(4, &compacted), Err(MvccError::Compacted));
}

#[test]
fn txn_failing_midway_rolls_back() {
    // Server validation forbids this shape; the store must still stay all-or-nothing.
    let mut store = MvccStore::new();
    store.put(2, 0, &put("a", "1")).unwrap();
    let request = TxnRequest {
        success: vec![
            RequestOp::Put(put("z", "new")),
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: b("a"),
                ..Default::default()
            }),
            RequestOp::Put(PutRequest {
                ignore_value: true,
                ..put("a", "")
            }),
        ],
        ..TxnRequest::default()
    };
    let hash = store.hash_kv(2);
    assert_eq!(store.txn(3, &request), Err(MvccError::KeyNotFound));
    assert_eq!(store.hash_kv(2), hash);
    assert_eq!(store.key_count(), 1);
    assert_eq!(store.last_revision(), 2);
    assert!(store.range(&get("z"), 3).unwrap().kvs.is_empty());
}

#[test]
fn nested_txn_compares_see_pre_txn_state() {
    let mut store = MvccStore::new();
    let request = TxnRequest {
        success: vec![
            RequestOp::Put(put("a", "1")),
            RequestOp::Txn(TxnRequest {
                compare: vec![Compare {
                    key: b("a"),
                    range_end: b(""),
                    result: CompareResult::Equal,
                    target: CompareTarget::Version(0),
                }],
                success: vec![RequestOp::Put(put("b", "yes"))],
                failure: vec![RequestOp::Put(put("b", "no"))],
            }),
        ],
        ..TxnRequest::default()
    };
    let outcome = store.txn(2, &request).unwrap();
    assert_eq!(outcome.events[1].kv.value, b("yes"));
    let ResponseOp::Txn(nested) = &outcome.response.responses[1] else {
        panic!("txn response expected")
    };
    assert!(nested.succeeded);
}

#[test]
fn hash_is_equal_for_equal_histories_and_ignores_compacted_versions() {
    let build = |compact: bool| {
        let mut store = MvccStore::new();
        store.put(2, 0, &put("a", "1")).unwrap();
        store.put(3, 0, &put("a", "2")).unwrap();
        if compact {
            store.compact(3);
        }
        store
    };
    assert_eq!(build(false).hash_kv(3), build(false).hash_kv(3));
    assert_ne!(build(false).hash_kv(2), build(false).hash_kv(3));
    let mut lazy = build(false);
    lazy.start_compaction(3);
    assert_eq!(lazy.hash_kv(3), build(true).hash_kv(3));
}

#[test]
fn store_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<MvccStore>();
}

#[test]
fn put_many_writes_each_key_at_its_sub_revision() {
    let mut store = MvccStore::new();
    store.put(2, 0, &put("b", "old")).unwrap();
    let done = store
        .put_many(
            3,
            &[(1, put("a", "1")), (4, put("b", "2")), (7, put("c", "3"))],
        )
        .unwrap();
    let subs: Vec<i64> = done.iter().map(|(_, event)| event.sub_revision).collect();
    assert_eq!(subs, vec![1, 4, 7]);
    // The event of an overwritten key carries its previous version, as a single put's does.
    assert_eq!(done[1].1.prev_kv.as_ref().unwrap().value, b("old"));
    assert!(done[0].1.prev_kv.is_none());
    let response = store.range(&all(), 3).unwrap();
    assert_eq!(keys(&response), vec!["a", "b", "c"]);
    assert!(response.kvs.iter().all(|kv| kv.mod_revision == 3));
    assert_eq!(response.kvs[1].version, 2);
    assert_eq!(response.kvs[1].create_revision, 2);
    assert_eq!(store.last_revision(), 3);
}

#[test]
fn put_many_with_a_put_that_needs_a_missing_key_writes_nothing() {
    let mut store = MvccStore::new();
    store.put(2, 0, &put("a", "1")).unwrap();
    let needs_key = PutRequest {
        ignore_value: true,
        ..put("missing", "")
    };
    let result = store.put_many(3, &[(0, put("a", "2")), (1, needs_key)]);
    assert!(matches!(result, Err(MvccError::KeyNotFound)));
    // The first put, checked before any write, did not happen either.
    let kv = &store.range(&get("a"), 0).unwrap().kvs[0];
    assert_eq!((kv.value.clone(), kv.mod_revision), (b("1"), 2));
    assert_eq!(store.last_revision(), 2);
}
