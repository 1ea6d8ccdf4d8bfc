//! criterion benches of one shard's hot loops: put, one shard's share of a multi-shard txn
//! (`put_many` and its segment record), point get, a 100-key range, compaction, segment
//! append and recovery.
//!
//! Recovery replays 10,000 keys by default so `cargo bench --no-run` and quick runs stay cheap;
//! `RUSD_BENCH_RECOVERY_KEYS=1000000 cargo bench -p rusd-bench --bench shards recovery` gives
//! the 1M-key figure.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rusd_bench::{key, value};
use shards::{MemStorage, MvccStore, PutRequest, RangeRequest, SegmentLog};

const VALUE_BYTES: usize = 256;

fn loaded_store(keys: u64) -> MvccStore {
    let mut store = MvccStore::new();
    for i in 0..keys {
        let request = PutRequest {
            key: key(i),
            value: value(i, VALUE_BYTES),
            ..PutRequest::default()
        };
        store.put(i as i64 + 2, 0, &request).unwrap();
    }
    store
}

fn put(c: &mut Criterion) {
    let mut group = c.benchmark_group("put");
    group.throughput(Throughput::Elements(1));
    let payload = value(1, VALUE_BYTES);
    group.bench_function("new_key_into_100k", |b| {
        let mut store = loaded_store(100_000);
        let mut next = 100_000u64;
        b.iter(|| {
            next += 1;
            let request = PutRequest {
                key: key(next),
                value: payload.clone(),
                ..PutRequest::default()
            };
            black_box(store.put(next as i64 + 2, 0, &request).unwrap());
        });
    });
    group.bench_function("overwrite_in_100k", |b| {
        let mut store = loaded_store(100_000);
        let mut revision = 200_000i64;
        b.iter(|| {
            revision += 1;
            let request = PutRequest {
                key: key(revision as u64 % 100_000),
                value: payload.clone(),
                ..PutRequest::default()
            };
            black_box(store.put(revision, 0, &request).unwrap());
        });
    });
    group.finish();
}

/// One shard's share of a 100-put txn on two shards: 50 puts at one revision in one step, and
/// the entry's segment record, as the shard worker runs a `ShardMsg::Puts`.
fn txn_share(c: &mut Criterion) {
    const PUTS: u64 = 50;
    let mut group = c.benchmark_group("txn_share");
    group.throughput(Throughput::Elements(PUTS));
    let payload = value(4, VALUE_BYTES);
    group.bench_function("put_many_50_into_100k", |b| {
        let mut store = loaded_store(100_000);
        let mut revision = 200_000i64;
        b.iter(|| {
            revision += 1;
            let puts: Vec<(i64, PutRequest)> = (0..PUTS)
                .map(|i| {
                    let request = PutRequest {
                        key: key((revision as u64 * PUTS + i) % 100_000),
                        value: payload.clone(),
                        ..PutRequest::default()
                    };
                    (2 * i as i64, request)
                })
                .collect();
            black_box(store.put_many(revision, &puts).unwrap());
        });
    });
    group.bench_function("put_many_50_and_segment_record", |b| {
        let (mut log, mut store, _) = SegmentLog::open(MemStorage::new(), 64 << 20).unwrap();
        let mut raft_index = 0u64;
        b.iter(|| {
            raft_index += 1;
            let revision = raft_index as i64 + 1;
            let puts: Vec<(i64, PutRequest)> = (0..PUTS)
                .map(|i| {
                    let request = PutRequest {
                        key: key((raft_index * PUTS + i) % 100_000),
                        value: payload.clone(),
                        ..PutRequest::default()
                    };
                    (2 * i as i64, request)
                })
                .collect();
            let done = store.put_many(revision, &puts).unwrap();
            let events: Vec<_> = done.into_iter().map(|(_, event)| event).collect();
            log.append(raft_index, revision, &events).unwrap();
            if raft_index % 1_000 == 0 {
                // Keeps the in-memory files from growing without bound across samples.
                log.sync().unwrap();
                store.compact(revision);
                while log.compact_step(&store, u64::MAX).unwrap() {}
            }
        });
    });
    group.finish();
}

fn point_get(c: &mut Criterion) {
    let store = loaded_store(100_000);
    let mut i = 0u64;
    c.bench_function("point_get_in_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % 100_000;
            let request = RangeRequest {
                key: key(i),
                ..RangeRequest::default()
            };
            black_box(store.range(&request, 0).unwrap());
        });
    });
}

fn range_100(c: &mut Criterion) {
    let store = loaded_store(100_000);
    let mut group = c.benchmark_group("range");
    group.throughput(Throughput::Elements(100));
    group.bench_function("100_keys_in_100k", |b| {
        let mut start = 0u64;
        b.iter(|| {
            start = (start + 7919) % 99_000;
            let request = RangeRequest {
                key: key(start),
                range_end: key(start + 100),
                ..RangeRequest::default()
            };
            let response = store.range(&request, 0).unwrap();
            assert_eq!(response.kvs.len(), 100);
            black_box(response);
        });
    });
    group.finish();
}

fn compaction(c: &mut Criterion) {
    let mut group = c.benchmark_group("compaction");
    group.sample_size(10);
    // Every key overwritten once, so compaction drops half the versions.
    let build = || {
        let mut store = loaded_store(20_000);
        for i in 0..20_000u64 {
            let request = PutRequest {
                key: key(i),
                value: value(i + 1, VALUE_BYTES),
                ..PutRequest::default()
            };
            store.put(20_002 + i as i64, 0, &request).unwrap();
        }
        store
    };
    group.bench_function("full_20k_keys_40k_versions", |b| {
        // The store is returned so that dropping it is not timed.
        b.iter_batched(
            build,
            |mut store| {
                store.compact(store.last_revision());
                store
            },
            BatchSize::LargeInput,
        );
    });
    group.bench_function("bounded_step_1000_keys", |b| {
        b.iter_batched(
            || {
                let mut store = build();
                store.start_compaction(store.last_revision());
                store
            },
            |mut store| {
                store.compaction_step(1_000);
                store
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

fn segment_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("segment");
    group.throughput(Throughput::Elements(1));
    group.bench_function("append_one_put", |b| {
        let (mut log, mut store, _) = SegmentLog::open(MemStorage::new(), 64 << 20).unwrap();
        let mut raft_index = 0u64;
        let payload = value(3, VALUE_BYTES);
        b.iter(|| {
            raft_index += 1;
            let revision = raft_index as i64 + 1;
            let request = PutRequest {
                key: key(raft_index % 100_000),
                value: payload.clone(),
                ..PutRequest::default()
            };
            let (_, event) = store.put(revision, 0, &request).unwrap();
            log.append(raft_index, revision, &[event]).unwrap();
            if raft_index % 10_000 == 0 {
                // Keeps the in-memory files from growing without bound across samples.
                log.sync().unwrap();
                store.compact(revision);
                while log.compact_step(&store, u64::MAX).unwrap() {}
            }
        });
    });
    group.finish();
}

fn recovery(c: &mut Criterion) {
    let keys: u64 = std::env::var("RUSD_BENCH_RECOVERY_KEYS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(10_000);
    let (mut log, mut store, _) = SegmentLog::open(MemStorage::new(), 64 << 20).unwrap();
    for i in 0..keys {
        let revision = i as i64 + 2;
        let request = PutRequest {
            key: key(i),
            value: value(i, VALUE_BYTES),
            ..PutRequest::default()
        };
        let (_, event) = store.put(revision, 0, &request).unwrap();
        log.append(i + 1, revision, &[event]).unwrap();
    }
    log.sync().unwrap();
    let storage = log.into_storage();
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10);
    group.throughput(Throughput::Elements(keys));
    group.bench_function(format!("open_{keys}_keys"), |b| {
        b.iter_batched(
            || storage.clone(),
            |storage| {
                let (_, store, index) = SegmentLog::open(storage, 64 << 20).unwrap();
                assert_eq!(index, keys);
                black_box(store)
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(
    benches,
    put,
    txn_share,
    point_get,
    range_100,
    compaction,
    segment_append,
    recovery
);
criterion_main!(benches);
