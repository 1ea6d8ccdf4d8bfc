//! Restarts through the segment log on in-memory and faulty storage: what was synced survives,
//! torn tails are cut, damaged bytes stop start-up, and WAL replay after recovery converges.

pub mod strategies;

use bytes::Bytes;
use proptest::prelude::*;
use shards::*;
use strategies::Op;

/// One raft entry as the server would log it: the write and the revision it was offered.
#[derive(Clone, Debug)]
struct Entry {
    raft_index: u64,
    main: i64,
    op: Op,
}

/// Applies a write op at `main`; returns the events and whether it consumed the revision.
fn apply(store: &mut MvccStore, main: i64, op: &Op) -> (Vec<Event>, bool) {
    match op {
        Op::Put(req) => match store.put(main, 0, req) {
            Ok((_, event)) => (vec![event], true),
            Err(_) => (vec![], false),
        },
        Op::Delete(req) => {
            let (_, events) = store.delete_range(main, 0, req);
            let wrote = !events.is_empty();
            (events, wrote)
        }
        Op::Txn(req) => match store.txn(main, req) {
            Ok(outcome) => (outcome.events, outcome.wrote),
            Err(_) => (vec![], false),
        },
        Op::Compact(pick, _) => {
            store.compact(i64::from(*pick) % main);
            (vec![], false)
        }
        Op::Range(..) | Op::History(..) => unreachable!("reads are not raft entries"),
    }
}

fn is_write(op: &Op) -> bool {
    matches!(
        op,
        Op::Put(_) | Op::Delete(_) | Op::Txn(_) | Op::Compact(..)
    )
}

/// Replays `entries` after `after` into `store`, as the server replays its WAL.
fn replay(store: &mut MvccStore, entries: &[Entry], after: u64) {
    for entry in entries.iter().filter(|entry| entry.raft_index > after) {
        apply(store, entry.main, &entry.op);
    }
}

fn assert_same(recovered: &MvccStore, expected: &MvccStore) -> Result<(), TestCaseError> {
    prop_assert_eq!(recovered.compact_revision(), expected.compact_revision());
    prop_assert_eq!(recovered.last_revision(), expected.last_revision());
    prop_assert_eq!(recovered.key_count(), expected.key_count());
    prop_assert_eq!(recovered.retained_events(), expected.retained_events());
    let revision = expected.last_revision();
    prop_assert_eq!(recovered.hash_kv(revision), expected.hash_kv(revision));
    Ok(())
}

#[derive(Clone, Debug)]
enum Step {
    Op(Op),
    Sync,
    Reclaim(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => strategies::op().prop_filter("writes only", is_write).prop_map(Step::Op),
        2 => Just(Step::Sync),
        1 => (1u64..400).prop_map(Step::Reclaim),
    ]
}

/// Applies `op` as the next raft entry and logs it (entries without events only when
/// `log_empty`, as the server skips them).
fn apply_and_log(
    store: &mut MvccStore,
    log: &mut SegmentLog<MemStorage>,
    entries: &mut Vec<Entry>,
    revision: &mut i64,
    op: &Op,
    log_empty: bool,
) {
    let raft_index = entries.len() as u64 + 1;
    let main = *revision + 1;
    let (events, wrote) = apply(store, main, op);
    if let Op::Compact(..) = op {
        log.append_compaction(raft_index, store.compact_revision())
            .unwrap();
    } else if log_empty || !events.is_empty() {
        log.append(raft_index, main, &events).unwrap();
    }
    if wrote {
        *revision += 1;
    }
    entries.push(Entry {
        raft_index,
        main,
        op: op.clone(),
    });
}

/// Runs `steps` against a live store and log, crashes keeping `kept` unsynced bytes, reopens,
/// replays the WAL and compares with the store that never crashed.
fn crash_and_recover(
    steps: &[Step],
    kept: usize,
    segment_bytes_max: u64,
) -> Result<(), TestCaseError> {
    let (mut log, mut store, _) = SegmentLog::open(MemStorage::new(), segment_bytes_max).unwrap();
    let mut entries = Vec::new();
    let mut revision = 1i64;
    for step in steps {
        match step {
            Step::Op(op) => {
                apply_and_log(&mut store, &mut log, &mut entries, &mut revision, op, true)
            }
            Step::Sync => {
                prop_assert_eq!(log.sync().unwrap(), entries.len() as u64);
            }
            Step::Reclaim(budget) => {
                log.compact_step(&store, *budget).unwrap();
            }
        }
    }
    let synced = log.synced_raft_index();
    let mut storage = log.into_storage();
    storage.crash(kept);
    let (_, mut recovered, recovered_index) = SegmentLog::open(storage, segment_bytes_max).unwrap();
    prop_assert!(
        recovered_index >= synced,
        "lost synced entries: {} < {}",
        recovered_index,
        synced
    );
    prop_assert!(recovered_index <= entries.len() as u64);
    replay(&mut recovered, &entries, recovered_index);
    assert_same(&recovered, &store)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn synced_entries_survive_any_crash(
        steps in prop::collection::vec(step(), 1..40),
        kept in prop_oneof![Just(0usize), Just(usize::MAX), 0usize..300],
        segment_bytes_max in prop_oneof![Just(256u64), Just(1024), Just(1 << 20)],
    ) {
        crash_and_recover(&steps, kept, segment_bytes_max)?;
    }
}

/// The server's checkpoint cycle: a checkpoint rotates the log, and the server's durable
/// checkpoint index is the last one whose state file was written. A crash may come after the
/// last rotation but before its state file (`lose_last`). Reopening at the durable checkpoint
/// and replaying the WAL from there must give the store that never crashed.
fn checkpoint_and_recover(
    steps: &[Step],
    kept: usize,
    segment_bytes_max: u64,
    lose_last: bool,
) -> Result<(), TestCaseError> {
    let (mut log, mut store, _) = SegmentLog::open(MemStorage::new(), segment_bytes_max).unwrap();
    let mut entries = Vec::new();
    let mut checkpoints = vec![0u64];
    let mut revision = 1i64;
    // The server saves each checkpoint right after its rotation; only the last one's save may
    // be lost in the crash.
    let last_sync = steps.iter().rposition(|step| matches!(step, Step::Sync));
    for (position, step) in steps.iter().enumerate() {
        match step {
            // The server only records entries that touched the shard.
            Step::Op(op) => {
                apply_and_log(&mut store, &mut log, &mut entries, &mut revision, op, false)
            }
            Step::Sync => {
                log.rotate().unwrap();
                checkpoints.push(entries.len() as u64);
                if !(lose_last && Some(position) == last_sync) {
                    log.checkpoint_saved();
                }
            }
            Step::Reclaim(budget) => {
                log.compact_step(&store, *budget).unwrap();
            }
        }
    }
    if lose_last && checkpoints.len() > 1 {
        checkpoints.pop();
    }
    let checkpoint = *checkpoints.last().unwrap();
    let mut storage = log.into_storage();
    storage.crash(kept);
    let (mut log, mut recovered, recovered_index) =
        SegmentLog::open_at(storage, segment_bytes_max, Some(checkpoint)).unwrap();
    prop_assert!(recovered_index <= checkpoint);
    replay(&mut recovered, &entries, checkpoint);
    assert_same(&recovered, &store)?;
    // The reopened log takes new records after the checkpoint and can be reopened at it again.
    log.append(entries.len() as u64 + 1, revision + 1, &[])
        .unwrap();
    log.sync().unwrap();
    let (_, again, _) =
        SegmentLog::open_at(log.into_storage(), segment_bytes_max, Some(checkpoint)).unwrap();
    let mut expected = MvccStore::new();
    replay(&mut expected, &entries, 0);
    let mut replayed = again;
    replay(&mut replayed, &entries, checkpoint);
    assert_same(&replayed, &expected)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn reopening_at_a_checkpoint_drops_what_came_after_it(
        steps in prop::collection::vec(step(), 1..40),
        kept in prop_oneof![Just(0usize), Just(usize::MAX), 0usize..300],
        segment_bytes_max in prop_oneof![Just(256u64), Just(1024), Just(1 << 20)],
        lose_last in any::<bool>(),
    ) {
        checkpoint_and_recover(&steps, kept, segment_bytes_max, lose_last)?;
    }
}

#[test]
fn a_record_past_the_checkpoint_in_an_older_segment_is_an_error() {
    let (mut log, mut store, _) = SegmentLog::open(MemStorage::new(), 1 << 20).unwrap();
    fill(&mut log, &mut store, 1, 10);
    log.sync().unwrap();
    // No rotation at index 5: records 6..10 share a segment with 1..5.
    let error = SegmentLog::open_at(log.into_storage(), 1 << 20, Some(5)).unwrap_err();
    assert!(
        error.to_string().contains("past the checkpoint at 5"),
        "{error}"
    );
}

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

/// Writes `count` puts over 10 keys through store and log, one raft entry each.
fn fill<S: Storage>(log: &mut SegmentLog<S>, store: &mut MvccStore, first_index: u64, count: u64) {
    for n in 0..count {
        let raft_index = first_index + n;
        let main = store.last_revision().max(1) + 1;
        let (_, event) = store
            .put(
                main,
                0,
                &put(&format!("key{}", n % 10), &format!("value{n}")),
            )
            .unwrap();
        log.append(raft_index, main, &[event]).unwrap();
    }
}

#[test]
fn reopen_rebuilds_the_same_store() {
    let (mut log, mut store, index) = SegmentLog::open(MemStorage::new(), 1 << 20).unwrap();
    assert_eq!(index, 0);
    fill(&mut log, &mut store, 1, 50);
    assert_eq!(log.sync().unwrap(), 50);
    let (log, recovered, index) = SegmentLog::open(log.into_storage(), 1 << 20).unwrap();
    assert_eq!(index, 50);
    assert_eq!(log.synced_raft_index(), 50);
    assert_eq!(recovered.hash_kv(51), store.hash_kv(51));
    assert_eq!(recovered.retained_events(), store.retained_events());
}

#[test]
fn appends_at_or_below_the_last_index_are_ignored() {
    let (mut log, mut store, _) = SegmentLog::open(MemStorage::new(), 1 << 20).unwrap();
    fill(&mut log, &mut store, 1, 5);
    let before = log.storage().total_bytes();
    log.append(5, 99, &[]).unwrap();
    log.append(3, 99, &[]).unwrap();
    assert_eq!(log.storage().total_bytes(), before);
    log.sync().unwrap();
    let (_, recovered, index) = SegmentLog::open(log.into_storage(), 1 << 20).unwrap();
    assert_eq!(
        (index, recovered.last_revision()),
        (5, store.last_revision())
    );
}

#[test]
fn segments_rotate_at_the_size_limit() {
    let (mut log, mut store, _) = SegmentLog::open(MemStorage::new(), 512).unwrap();
    fill(&mut log, &mut store, 1, 40);
    log.sync().unwrap();
    let names = log.segment_names();
    assert!(names.len() > 3, "expected rotation, got {names:?}");
    for name in &names {
        assert!(
            log.storage().contents(name).unwrap().len() <= 512 + 200,
            "{name} too large"
        );
    }
    let (_, recovered, index) = SegmentLog::open(log.into_storage(), 512).unwrap();
    assert_eq!(index, 40);
    assert_eq!(recovered.retained_events(), store.retained_events());
}

#[test]
fn unsynced_tail_is_lost_and_torn_tail_is_truncated() {
    let (mut log, mut store, _) = SegmentLog::open(MemStorage::new(), 1 << 20).unwrap();
    fill(&mut log, &mut store, 1, 10);
    log.sync().unwrap();
    fill(&mut log, &mut store, 11, 3);
    let mut storage = log.into_storage();
    storage.crash(20);
    let name = storage.list().unwrap()[0].clone();
    let torn_len = storage.contents(&name).unwrap().len();
    let (log, recovered, index) = SegmentLog::open(storage, 1 << 20).unwrap();
    assert_eq!(index, 10);
    assert_eq!(recovered.key_count(), 10);
    assert!(
        (log.storage().contents(&name).unwrap().len()) < torn_len,
        "torn bytes were not cut"
    );
}

#[test]
fn torn_last_write_is_truncated_then_appends_continue() {
    let (mut log, mut store, _) =
        SegmentLog::open(FaultyStorage::new(MemStorage::new()), 1 << 20).unwrap();
    fill(&mut log, &mut store, 1, 4);
    log.sync().unwrap();
    log.storage_mut().tear_last_write(7).unwrap();
    let (mut log, mut recovered, index) = SegmentLog::open(log.into_storage(), 1 << 20).unwrap();
    assert_eq!(index, 3);
    fill(&mut log, &mut recovered, 4, 1);
    log.sync().unwrap();
    let (_, again, index) = SegmentLog::open(log.into_storage(), 1 << 20).unwrap();
    assert_eq!(index, 4);
    // The torn entry wrote key3; the one appended after recovery rewrote key0.
    assert_eq!(again.key_count(), 3);
    assert_eq!(again.retained_events(), recovered.retained_events());
}

#[test]
fn flipped_bits_stop_recovery_with_file_and_offset() {
    let (mut log, mut store, _) = SegmentLog::open(MemStorage::new(), 1 << 20).unwrap();
    fill(&mut log, &mut store, 1, 6);
    log.sync().unwrap();
    let storage = log.into_storage();
    let name = storage.list().unwrap()[0].clone();
    let len = storage.contents(&name).unwrap().len() as u64;
    // Every byte of the file, each bit position in turn: a flip is never silently accepted.
    for offset in 0..len {
        let mut faulty = FaultyStorage::new(storage.clone());
        faulty.flip_bit(&name, offset, (offset % 8) as u8).unwrap();
        match SegmentLog::open(faulty, 1 << 20) {
            Err(SegmentError::Corrupt {
                file, offset: at, ..
            }) => {
                assert_eq!(file, name);
                assert!(at <= offset, "error at {at} is after the flip at {offset}");
            }
            Err(other) => panic!("flip at {offset}: unexpected error {other}"),
            Ok(_) => panic!("flip at {offset} went unnoticed"),
        }
    }
}

#[test]
fn failed_write_poisons_and_synced_data_survives() {
    let (mut log, mut store, _) =
        SegmentLog::open(FaultyStorage::new(MemStorage::new()), 1 << 20).unwrap();
    fill(&mut log, &mut store, 1, 5);
    log.sync().unwrap();
    log.storage_mut().fail_nth_write(2);
    let (_, first) = store.put(7, 0, &put("x", "1")).unwrap();
    log.append(6, 7, &[first]).unwrap();
    let (_, second) = store.put(8, 0, &put("y", "1")).unwrap();
    assert!(matches!(
        log.append(7, 8, std::slice::from_ref(&second)),
        Err(SegmentError::Io { .. })
    ));
    assert!(matches!(log.append(8, 9, &[]), Err(SegmentError::Poisoned)));
    assert!(matches!(log.sync(), Err(SegmentError::Poisoned)));
    // Without a crash the half-written record is a torn tail; with one, only the synced part.
    let storage = log.into_storage().into_inner();
    let (_, recovered, index) = SegmentLog::open(storage.clone(), 1 << 20).unwrap();
    assert_eq!((index, recovered.key_count()), (6, 6));
    let mut crashed = storage;
    crashed.crash(0);
    let (_, recovered, index) = SegmentLog::open(crashed, 1 << 20).unwrap();
    assert_eq!((index, recovered.key_count()), (5, 5));
}

#[test]
fn failed_sync_is_not_a_checkpoint() {
    let (mut log, mut store, _) =
        SegmentLog::open(FaultyStorage::new(MemStorage::new()), 1 << 20).unwrap();
    fill(&mut log, &mut store, 1, 3);
    assert_eq!(log.sync().unwrap(), 3);
    fill(&mut log, &mut store, 4, 2);
    log.storage_mut().fail_nth_sync(1);
    assert!(matches!(log.sync(), Err(SegmentError::Io { .. })));
    assert_eq!(log.synced_raft_index(), 3);
    let mut storage = log.into_storage().into_inner();
    storage.crash(0);
    let (_, _, index) = SegmentLog::open(storage, 1 << 20).unwrap();
    assert_eq!(index, 3);
}

#[test]
fn compaction_rewrites_old_segments_in_bounded_steps() {
    let (mut log, mut store, _) = SegmentLog::open(MemStorage::new(), 1024).unwrap();
    fill(&mut log, &mut store, 1, 300);
    let compact_at = store.last_revision() - 5;
    store.compact(compact_at);
    log.append_compaction(301, compact_at).unwrap();
    // Nothing is dropped before the compaction is durable.
    let before = log.storage().total_bytes();
    assert!(!log.compact_step(&store, u64::MAX).unwrap());
    assert_eq!(log.storage().total_bytes(), before);
    log.sync().unwrap();
    let mut calls = 0;
    while log.compact_step(&store, 300).unwrap() {
        calls += 1;
        assert!(calls < 10_000, "compaction does not finish");
    }
    assert!(calls > 3, "work was not split: {calls} calls");
    let after = log.storage().total_bytes();
    assert!(after * 3 < before, "only shrank from {before} to {after}");
    // A second pass at the same compaction has nothing to do.
    assert!(!log.compact_step(&store, u64::MAX).unwrap());
    let (_, recovered, index) = SegmentLog::open(log.into_storage(), 1024).unwrap();
    assert_eq!(index, 301);
    assert_eq!(recovered.retained_events(), store.retained_events());
    assert_eq!(recovered.compact_revision(), compact_at);
    assert_eq!(
        recovered.hash_kv(store.last_revision()),
        store.hash_kv(store.last_revision())
    );
}

#[test]
fn crash_during_a_rewrite_keeps_one_good_copy() {
    for failing_write in 1..12 {
        let (mut log, mut store, _) =
            SegmentLog::open(FaultyStorage::new(MemStorage::new()), 1024).unwrap();
        fill(&mut log, &mut store, 1, 200);
        let compact_at = store.last_revision() - 3;
        store.compact(compact_at);
        log.append_compaction(201, compact_at).unwrap();
        log.sync().unwrap();
        log.storage_mut().fail_nth_write(failing_write);
        let mut failed = false;
        for _ in 0..10_000 {
            match log.compact_step(&store, 200) {
                Ok(true) => {}
                Ok(false) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "write {failing_write} was never reached");
        let mut storage = log.into_storage().into_inner();
        storage.crash(0);
        let (_, recovered, index) = SegmentLog::open(storage, 1024).unwrap();
        assert_eq!(index, 201);
        assert_eq!(
            recovered.retained_events(),
            store.retained_events(),
            "write {failing_write}"
        );
    }
}
