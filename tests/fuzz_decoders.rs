//! Structure-aware fuzzing (proptest) of every decoder of rusd that takes outside bytes and runs
//! in-process: raft entry payloads (`coordinator::codec`, from the WAL and, later, from peers),
//! WAL files, shard segment files, the checkpoint file, the JSON gateway's request mapping,
//! protobuf request bodies with etcd's request checks (`api::convert`), and gofail's term
//! language and HTTP requests. Each input is a valid encoding damaged by random mutations
//! (bit flips, cuts, splices, inserted bytes), or random bytes. Properties: no panic, ever; a
//! decoder either refuses the input with an error or returns something that re-encodes to
//! the same meaning.
//!
//! The gRPC services are fuzzed through the real binary in `tests/fuzz_grpc.rs`.
//!
//! Also: bbolt input (etcd's `db` files that rusd imports, with page-header damage besides the
//! byte mutations), etcd WAL entry payloads replayed at import, and the peer protocol (frames
//! fed in pieces as a socket delivers them, handshakes, raft batches, snapshot chunk streams).
//!
//! Budget: by default each target runs `RUSD_FUZZ_CASES` cases (256), which keeps `cargo test`
//! quick. `RUSD_FUZZ_SECONDS=N` runs each target for N seconds instead (the long-run mode), and
//! every target prints its executions and time, e.g.
//! `RUSD_FUZZ_SECONDS=60 cargo test --release --test fuzz_decoders -- --nocapture --test-threads 1`.
//! A failure prints proptest's shrunk input and seed; a crash found is kept as a named test
//! below (`found_*`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message;

use proto::etcdserverpb as pb;
use rusd::coordinator::checkpoint::{self, CheckpointState};
use rusd::coordinator::codec::{self, WriteRequest};
use rusd::coordinator::wal;
use rusd::failpoint::terms;

// ---------------------------------------------------------------------------------------------
// The harness

/// Runs `property` over inputs drawn from `strategy`: a fixed number of cases, or for
/// `RUSD_FUZZ_SECONDS` seconds. Prints the executions and time.
fn fuzz_target<S: Strategy>(
    name: &str,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let seconds: Option<u64> = std::env::var("RUSD_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok());
    let cases: u32 = std::env::var("RUSD_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let started = Instant::now();
    let mut executions: u64 = 0;
    let budget = seconds.map(Duration::from_secs);
    loop {
        let batch = if budget.is_some() { 2000 } else { cases };
        let mut runner = TestRunner::new(Config {
            cases: batch,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&strategy, &property);
        executions += u64::from(batch);
        if let Err(e) = result {
            panic!("fuzz target {name} failed after {executions} executions: {e}");
        }
        match budget {
            Some(b) if started.elapsed() < b => continue,
            _ => break,
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "fuzz {name}: {executions} executions in {:.1} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        executions as f64 / elapsed.as_secs_f64().max(1e-9)
    );
}

/// One way to damage a byte string.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit { at: usize, bit: u8 },
    SetByte { at: usize, value: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, len: usize },
    Duplicate { at: usize, len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::SetByte { at, value }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..32).prop_map(|(at, len)| Mutation::Remove { at, len }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
    ]
}

fn mutate(mut data: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = data.len();
        match m {
            Mutation::FlipBit { at, bit } if n > 0 => data[at % n] ^= 1 << bit,
            Mutation::SetByte { at, value } if n > 0 => data[at % n] = *value,
            Mutation::Truncate { at } => data.truncate(at % (n + 1)),
            Mutation::Insert { at, bytes } => {
                let at = at % (n + 1);
                data.splice(at..at, bytes.iter().copied());
            }
            Mutation::Remove { at, len } if n > 0 => {
                let at = at % n;
                data.drain(at..(at + len).min(n));
            }
            Mutation::Duplicate { at, len } if n > 0 => {
                let at = at % n;
                let piece: Vec<u8> = data[at..(at + len).min(n)].to_vec();
                data.splice(at..at, piece);
            }
            _ => {}
        }
    }
    data
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 0..6)
}

/// Either a damaged valid encoding or plain random bytes.
fn damaged(valid: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => (valid, mutations()).prop_map(|(v, m)| mutate(v, &m)),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

fn small_bytes() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..12).prop_map(Bytes::from),
        Just(Bytes::from_static(b"\0")),
        Just(Bytes::new()),
    ]
}

// ---------------------------------------------------------------------------------------------
// Protobuf request bodies, with etcd's checks (what the KV service runs before proposing)

fn pb_compare() -> impl Strategy<Value = pb::Compare> {
    (
        small_bytes(),
        small_bytes(),
        -1i32..6,
        -1i32..6,
        any::<i64>(),
        small_bytes(),
        0u8..6,
    )
        .prop_map(|(key, range_end, result, target, number, value, union)| {
            use pb::compare::TargetUnion as U;
            pb::Compare {
                key,
                range_end,
                result,
                target,
                target_union: match union {
                    0 => Some(U::Version(number)),
                    1 => Some(U::CreateRevision(number)),
                    2 => Some(U::ModRevision(number)),
                    3 => Some(U::Value(value)),
                    4 => Some(U::Lease(number)),
                    _ => None,
                },
            }
        })
}

fn pb_put() -> impl Strategy<Value = pb::PutRequest> {
    (
        small_bytes(),
        small_bytes(),
        any::<i64>(),
        any::<[bool; 3]>(),
    )
        .prop_map(|(key, value, lease, flags)| pb::PutRequest {
            key,
            value,
            lease: lease % 4,
            prev_kv: flags[0],
            ignore_value: flags[1],
            ignore_lease: flags[2],
        })
}

fn pb_range() -> impl Strategy<Value = pb::RangeRequest> {
    (
        small_bytes(),
        small_bytes(),
        any::<i64>(),
        any::<i64>(),
        -1i32..4,
        -1i32..6,
        any::<[bool; 4]>(),
        any::<[i64; 4]>(),
    )
        .prop_map(
            |(key, range_end, limit, revision, sort_order, sort_target, flags, revisions)| {
                pb::RangeRequest {
                    key,
                    range_end,
                    limit,
                    revision,
                    sort_order,
                    sort_target,
                    serializable: flags[0],
                    keys_only: flags[1],
                    count_only: flags[2],
                    min_mod_revision: revisions[0],
                    max_mod_revision: revisions[1],
                    min_create_revision: revisions[2],
                    max_create_revision: revisions[3],
                }
            },
        )
}

fn pb_delete() -> impl Strategy<Value = pb::DeleteRangeRequest> {
    (small_bytes(), small_bytes(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| {
        pb::DeleteRangeRequest {
            key,
            range_end,
            prev_kv,
        }
    })
}

fn pb_txn() -> impl Strategy<Value = pb::TxnRequest> {
    let leaf = prop_oneof![
        pb_put().prop_map(|p| pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(p))
        }),
        pb_range().prop_map(|r| pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(r))
        }),
        pb_delete().prop_map(|d| pb::RequestOp {
            request: Some(pb::request_op::Request::RequestDeleteRange(d))
        }),
        Just(pb::RequestOp { request: None }),
    ];
    let op = leaf.prop_recursive(3, 24, 4, |inner| {
        (
            prop::collection::vec(pb_compare(), 0..3),
            prop::collection::vec(inner.clone(), 0..4),
            prop::collection::vec(inner, 0..4),
        )
            .prop_map(|(compare, success, failure)| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestTxn(pb::TxnRequest {
                    compare,
                    success,
                    failure,
                })),
            })
    });
    (
        prop::collection::vec(pb_compare(), 0..4),
        prop::collection::vec(op.clone(), 0..5),
        prop::collection::vec(op, 0..5),
    )
        .prop_map(|(compare, success, failure)| pb::TxnRequest {
            compare,
            success,
            failure,
        })
}

#[test]
fn fuzz_grpc_kv_request_bodies() {
    let bodies = prop_oneof![
        pb_put().prop_map(|m| (0u8, m.encode_to_vec())),
        pb_range().prop_map(|m| (1u8, m.encode_to_vec())),
        pb_delete().prop_map(|m| (2u8, m.encode_to_vec())),
        pb_txn().prop_map(|m| (3u8, m.encode_to_vec())),
    ];
    let input = (bodies, mutations()).prop_map(|((kind, bytes), m)| (kind, mutate(bytes, &m)));
    fuzz_target("grpc-kv-bodies", input, |(kind, bytes)| {
        // Decoding is prost's; what follows is rusd's own: etcd's request checks.
        match kind {
            0 => {
                if let Ok(m) = pb::PutRequest::decode(bytes.as_slice()) {
                    let _ = rusd::api::convert::put_in(m);
                }
            }
            1 => {
                if let Ok(m) = pb::RangeRequest::decode(bytes.as_slice()) {
                    let _ = rusd::api::convert::range_in(m);
                }
            }
            2 => {
                if let Ok(m) = pb::DeleteRangeRequest::decode(bytes.as_slice()) {
                    let _ = rusd::api::convert::delete_in(m);
                }
            }
            _ => {
                if let Ok(m) = pb::TxnRequest::decode(bytes.as_slice()) {
                    // A txn that passes the checks must encode as a raft entry and decode back
                    // to itself.
                    if let Ok(txn) = rusd::api::convert::txn_in(m, 128) {
                        let req = WriteRequest::Txn(txn);
                        let back = codec::decode(&codec::encode(1, &req))
                            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                        prop_assert_eq!(back, (1, req));
                    }
                }
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Raft entry payloads (the WAL's entries today, peers' appends later)

fn write_request() -> impl Strategy<Value = WriteRequest> {
    let plain = prop_oneof![
        pb_put().prop_filter_map("refused put", |p| rusd::api::convert::put_in(p)
            .ok()
            .map(WriteRequest::Put)),
        pb_delete().prop_filter_map("refused delete", |d| rusd::api::convert::delete_in(d)
            .ok()
            .map(WriteRequest::DeleteRange)),
        pb_txn().prop_filter_map("refused txn", |t| rusd::api::convert::txn_in(t, 128)
            .ok()
            .map(WriteRequest::Txn)),
        any::<i64>().prop_map(|revision| WriteRequest::Compact { revision }),
        (any::<i64>(), any::<i64>())
            .prop_map(|(id, ttl_secs)| WriteRequest::LeaseGrant { id, ttl_secs }),
        any::<i64>().prop_map(|id| WriteRequest::LeaseRevoke { id }),
    ];
    (plain, any::<bool>(), "[a-z]{0,6}", any::<u64>()).prop_map(|(req, authed, user, revision)| {
        if authed {
            WriteRequest::Authed {
                info: rusd::coordinator::auth::AuthInfo { user, revision },
                req: Box::new(req),
            }
        } else {
            req
        }
    })
}

/// rusd's first payload encoding, still read when an old WAL is converted.
#[test]
fn fuzz_legacy_raft_entry_payloads() {
    let input =
        damaged((any::<u64>(), write_request()).prop_map(|(id, r)| codec::encode_legacy(id, &r)));
    fuzz_target("legacy-raft-entry-payload", input, |bytes| {
        if let Ok((id, req)) = codec::decode_legacy(&bytes) {
            let again = codec::decode_legacy(&codec::encode_legacy(id, &req))
                .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert_eq!(again, (id, req));
            // What it converts to reads back as the same request.
            let mut entry = raft::eraftpb::Entry {
                data: bytes.clone().into(),
                ..Default::default()
            };
            if codec::convert_legacy_entry(&mut entry).is_ok() {
                let converted = codec::decode(&entry.data)
                    .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                prop_assert_eq!(converted.0, id);
            }
        }
        Ok(())
    });
}

#[test]
fn fuzz_raft_entry_payloads() {
    let input = damaged((any::<u64>(), write_request()).prop_map(|(id, r)| codec::encode(id, &r)));
    fuzz_target("raft-entry-payload", input, |bytes| {
        if let Ok((id, req)) = codec::decode(&bytes) {
            let again = codec::decode(&codec::encode(id, &req))
                .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert_eq!(again, (id, req));
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// WAL files

fn wal_file() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec((1u64..4, write_request()), 0..8),
    )
        .prop_map(|(member_id, cluster_id, entries)| {
            // etcd's layout of a first WAL file: CRC record, metadata, snapshot record.
            let mut out = Vec::new();
            let mut encoder = wal::Encoder::new(0);
            encoder.crc_record(&mut out);
            encoder.metadata(
                &mut out,
                wal::Metadata {
                    member_id,
                    cluster_id,
                },
            );
            encoder.snapshot(&mut out, 0, 0, None);
            let hard_state = raft::eraftpb::HardState {
                term: 1,
                ..Default::default()
            };
            encoder.hard_state(&mut out, &hard_state);
            for (i, (term, req)) in entries.iter().enumerate() {
                let e = raft::eraftpb::Entry {
                    index: i as u64 + 1,
                    term: *term,
                    data: codec::encode(i as u64, req).into(),
                    ..Default::default()
                };
                encoder.entry(&mut out, &e);
            }
            out
        })
}

#[test]
fn fuzz_wal_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = (damaged(wal_file()), 0u64..3);
    fuzz_target("wal-file", input, |(bytes, checkpoint)| {
        let wal_dir = dir.path().join("wal");
        std::fs::create_dir_all(&wal_dir).unwrap();
        let path = wal_dir.join(wal::WAL_FILE_NAME);
        std::fs::write(&path, &bytes).unwrap();
        let mark = raft::eraftpb::SnapshotMetadata {
            index: checkpoint,
            ..Default::default()
        };
        match wal::recover(&wal_dir, &dir.path().join("snap"), &mark) {
            Ok(recovered) => {
                // Whatever was accepted is a prefix of the file, in order, and its entries
                // decode (a committed entry that does not decode would stop the server).
                prop_assert!(recovered.end_offset <= bytes.len() as u64);
                for pair in recovered.entries.windows(2) {
                    prop_assert_eq!(pair[1].index, pair[0].index + 1);
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// The checkpoint file

fn checkpoint_state() -> impl Strategy<Value = CheckpointState> {
    (
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(any::<u64>(), 0..4),
        1u32..8,
        any::<i64>(),
        any::<i64>(),
        prop::collection::vec((any::<i64>(), any::<i64>()), 0..4),
    )
        .prop_map(
            |(raft_index, raft_term, voters, shard_count, revision, compact_revision, leases)| {
                CheckpointState {
                    raft_index,
                    raft_term,
                    voters,
                    shard_count,
                    revision,
                    compact_revision,
                    leases: leases
                        .into_iter()
                        .map(|(id, ttl_secs)| checkpoint::LeaseRecord { id, ttl_secs })
                        .collect(),
                    ..CheckpointState::default()
                }
            },
        )
}

#[test]
fn fuzz_checkpoint_file() {
    let dir = tempfile::tempdir().unwrap();
    let valid = {
        let dir = dir.path().to_path_buf();
        checkpoint_state().prop_map(move |state| {
            let scratch = dir.join("scratch");
            checkpoint::write(&scratch, &state).unwrap();
            std::fs::read(scratch.join("checkpoint")).unwrap()
        })
    };
    fuzz_target("checkpoint-file", damaged(valid), |bytes| {
        let target = dir.path().join("target");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(target.join("checkpoint"), &bytes).unwrap();
        match checkpoint::read(&target) {
            // An accepted file re-encodes to the same bytes: nothing was guessed.
            Ok(Some(state)) => {
                let again = dir.path().join("again");
                checkpoint::write(&again, &state).unwrap();
                prop_assert_eq!(std::fs::read(again.join("checkpoint")).unwrap(), bytes);
            }
            Ok(None) => prop_assert!(false, "a present file read as absent"),
            Err(e) => prop_assert!(
                e.to_string().contains("checkpoint"),
                "error without the file: {e}"
            ),
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Shard segment files

fn event(key: &[u8], value: &[u8], revision: i64, lease: i64) -> shards::Event {
    shards::Event {
        kind: shards::EventKind::Put,
        kv: shards::KeyValue {
            key: Bytes::copy_from_slice(key),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            value: Bytes::copy_from_slice(value),
            lease,
        },
        prev_kv: None,
        sub_revision: 0,
    }
}

#[test]
fn fuzz_segment_files() {
    use shards::{MemStorage, SegmentLog, Storage};
    let valid = prop::collection::vec(
        (
            prop::collection::vec(any::<u8>(), 1..6),
            prop::collection::vec(any::<u8>(), 0..6),
            0i64..3,
        ),
        0..10,
    )
    .prop_map(|puts| {
        let (mut log, _, _) = SegmentLog::open(MemStorage::new(), 1 << 20).unwrap();
        for (i, (key, value, lease)) in puts.iter().enumerate() {
            let revision = i as i64 + 2;
            log.append(
                i as u64 + 1,
                revision,
                &[event(key, value, revision, *lease)],
            )
            .unwrap();
        }
        log.rotate().unwrap();
        let storage = log.into_storage();
        let mut files: Vec<(String, Vec<u8>)> = storage
            .list()
            .unwrap()
            .into_iter()
            .map(|name| {
                let bytes = storage.contents(&name).unwrap().to_vec();
                (name, bytes)
            })
            .collect();
        files.sort();
        files
    });
    let input = (valid, mutations(), any::<usize>());
    fuzz_target("segment-file", input, |(files, damage, which)| {
        let mut storage = MemStorage::new();
        let damaged_file = if files.is_empty() {
            usize::MAX
        } else {
            which % files.len()
        };
        for (i, (name, bytes)) in files.into_iter().enumerate() {
            let bytes = if i == damaged_file {
                mutate(bytes, &damage)
            } else {
                bytes
            };
            storage.create(name.as_str()).unwrap();
            storage.append(name.as_str(), &bytes).unwrap();
            storage.sync(name.as_str()).unwrap();
        }
        match SegmentLog::open(storage, 1 << 20) {
            Ok((_, store, _)) => prop_assert!(store.key_count() <= 10),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// The JSON gateway: etcd's jsonpb mapping over the compiled descriptors

fn json_value(field_names: Vec<String>) -> impl Strategy<Value = serde_json::Value> {
    let names = prop::sample::select(field_names);
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|i| serde_json::json!(i)),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        "[A-Za-z0-9+/=_-]{0,12}".prop_map(serde_json::Value::String),
        any::<i64>().prop_map(|i| serde_json::Value::String(i.to_string())),
        Just(serde_json::Value::String("PUT".into())),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::vec((names.clone(), inner), 0..6)
                .prop_map(|fields| serde_json::Value::Object(fields.into_iter().collect())),
        ]
    })
}

#[test]
fn fuzz_gateway_json() {
    use prost_reflect::ReflectMessage;
    let pool = rusd::api::gateway::json::pool();
    let messages: Vec<prost_reflect::MessageDescriptor> = pool
        .services()
        .flat_map(|s| s.methods().map(|m| m.input()).collect::<Vec<_>>())
        .collect();
    let mut names: Vec<String> = pool
        .all_messages()
        .flat_map(|m| {
            m.fields()
                .flat_map(|f| [f.name().to_string(), f.json_name().to_string()])
                .collect::<Vec<_>>()
        })
        .collect();
    names.sort();
    names.dedup();
    let input = (0..messages.len(), json_value(names), any::<bool>());
    fuzz_target("gateway-json", input, |(which, json, as_text)| {
        let desc = &messages[which];
        let parsed = if as_text {
            // The gateway parses the body text first: damage it too.
            let text = json.to_string();
            let cut = text.len() / 2;
            match serde_json::from_str::<serde_json::Value>(&text[..cut]) {
                Ok(v) => v,
                Err(e) => {
                    prop_assert!(!rusd::api::gateway::json::syntax_error(&e).is_empty());
                    return Ok(());
                }
            }
        } else {
            json
        };
        if let Ok(m) = rusd::api::gateway::json::read_message(desc, &parsed) {
            // An accepted message is a well-formed protobuf of that type.
            let bytes = m.encode_to_vec();
            let back = prost_reflect::DynamicMessage::decode(m.descriptor(), bytes.as_slice());
            prop_assert!(back.is_ok());
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// gofail's controls (the GOFAIL_HTTP endpoint and GOFAIL_FAILPOINTS)

fn term_text() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        Just("off"),
        Just("panic"),
        Just("return"),
        Just("sleep"),
        Just("print"),
        Just("break"),
        Just("x")
    ];
    let arg = prop_oneof![
        Just(String::new()),
        Just("()".to_string()),
        any::<i32>().prop_map(|i| format!("({i})")),
        "[a-z0-9.\"-> ()]{0,8}".prop_map(|s| format!("(\"{s}\")")),
        Just("(true)".to_string()),
    ];
    let modifier = prop_oneof![
        Just(String::new()),
        (0u32..200).prop_map(|n| format!("{n}%")),
        (0u32..9).prop_map(|n| format!("{n}*")),
        "[0-9.%*]{0,4}"
    ];
    prop::collection::vec((modifier, word, arg), 1..4).prop_map(|terms| {
        terms
            .into_iter()
            .map(|(m, w, a)| format!("{m}{w}{a}"))
            .collect::<Vec<_>>()
            .join("->")
    })
}

#[test]
fn fuzz_failpoint_terms_and_requests() {
    let text = prop_oneof![term_text(), ".{0,40}"];
    fuzz_target("failpoint-terms", text, |text| {
        if let Ok(parsed) = terms::parse_terms(&text) {
            prop_assert!(!parsed.is_empty());
            // What is accepted translates for fail-rs, or is refused with a reason.
            let _ = terms::to_fail_actions(&parsed);
        }
        let _ = terms::parse_list(&text);
        Ok(())
    });
    let request = (
        prop_oneof![Just("PUT"), Just("GET"), Just("DELETE"), Just("get")],
        "[a-zA-Z/]{0,20}",
        term_text(),
    )
        .prop_map(|(method, key, body)| {
            format!(
                "{method} /{key} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        });
    fuzz_target("failpoint-http", damaged(request), |bytes| {
        if let Ok(r) = terms::parse_request(&bytes) {
            prop_assert!(r.body.len() <= terms::REQUEST_BODY_BYTES_MAX);
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// bbolt input: etcd's `member/snap/db` (and `etcdutl snapshot restore` output) that rusd imports

/// Buckets by name, each with its (key, value) elements.
type Buckets = Vec<(Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>)>;

/// A small bbolt file as etcd's bbolt lays it out: `buckets` buckets of sorted elements.
fn bbolt_file(buckets: Buckets) -> Vec<u8> {
    use rusd::etcdfmt::bbolt::{header_pages, TreeWriter, FIRST_DATA_PGID, PAGE_SIZE};
    let mut out = vec![0u8; FIRST_DATA_PGID as usize * PAGE_SIZE];
    let mut next = FIRST_DATA_PGID;
    let mut roots = Vec::new();
    for (name, mut elements) in buckets {
        elements.sort();
        elements.dedup_by(|a, b| a.0 == b.0);
        let mut sink = |page: &[u8]| out.extend_from_slice(page);
        let mut tree = TreeWriter::write(next, &mut sink);
        for (key, value) in &elements {
            tree.put(key, value.len(), Some(value));
        }
        let layout = tree.finish();
        next += layout.pages;
        roots.push((name, layout.root));
    }
    roots.sort();
    roots.dedup_by(|a, b| a.0 == b.0);
    let mut sink = |page: &[u8]| out.extend_from_slice(page);
    let mut tree = TreeWriter::write(next, &mut sink);
    for (name, root) in &roots {
        tree.put_bucket(name, *root);
    }
    let root = tree.finish();
    let header = header_pages(root.root, next + root.pages, 2);
    out[..header.len()].copy_from_slice(&header);
    out
}

fn bbolt_buckets() -> impl Strategy<Value = Buckets> {
    let name = prop_oneof![
        Just(b"key".to_vec()),
        Just(b"meta".to_vec()),
        Just(b"lease".to_vec()),
        Just(b"members".to_vec()),
        prop::collection::vec(any::<u8>(), 1..8),
    ];
    // Enough elements (some large) that trees span several leaf and branch pages.
    let element = (
        prop::collection::vec(any::<u8>(), 1..24),
        prop_oneof![
            3 => prop::collection::vec(any::<u8>(), 0..64),
            1 => prop::collection::vec(any::<u8>(), 1000..5000),
        ],
    );
    prop::collection::vec((name, prop::collection::vec(element, 0..120)), 1..4)
}

/// Pages are 4 KiB, so the byte-level mutations above rarely reach the page headers and
/// pointers that matter; these hit them directly.
fn page_mutation() -> impl Strategy<Value = (usize, usize, u64)> {
    // (page, offset inside the first 64 bytes of the page, value written as u64 LE)
    (any::<usize>(), 0usize..64, any::<u64>())
}

#[test]
fn fuzz_bbolt_input() {
    use rusd::etcdfmt::bbolt::{Reader, PAGE_SIZE};
    let valid = (
        bbolt_buckets(),
        prop::collection::vec(page_mutation(), 0..4),
        mutations(),
    )
        .prop_map(|(buckets, page_hits, byte_hits)| {
            let mut file = bbolt_file(buckets);
            let pages = file.len() / PAGE_SIZE;
            for (page, offset, value) in page_hits {
                let at = (page % pages) * PAGE_SIZE + offset;
                let end = (at + 8).min(file.len());
                file[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
            }
            mutate(file, &byte_hits)
        });
    let input = prop_oneof![
        8 => valid,
        1 => prop::collection::vec(any::<u8>(), 0..3 * 4096),
    ];
    fuzz_target("bbolt-input", input, |bytes| {
        // Every read either fails with an error naming the file or completes; it never
        // panics, loops or recurses without end (a damaged page may point at itself or at an
        // ancestor), and never returns more elements than the file can hold.
        let Ok(reader) = Reader::open(bytes.clone(), "fuzz.db") else {
            return Ok(());
        };
        let Ok(buckets) = reader.buckets() else {
            return Ok(());
        };
        for (_, root) in buckets {
            let mut seen = 0usize;
            let walked = reader.walk(&root, &mut |e| {
                seen += 1;
                if seen > bytes.len() {
                    return Err(format!(
                        "runaway walk: {seen} elements from {} bytes",
                        bytes.len()
                    ));
                }
                let _ = (e.key.len(), e.value.len(), e.is_bucket);
                Ok(())
            });
            if let Err(e) = walked {
                prop_assert!(
                    e.to_string().contains("fuzz.db"),
                    "error without the file: {e}"
                );
                prop_assert!(
                    !e.to_string().contains("runaway walk"),
                    "the walk did not terminate: {e}"
                );
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// etcd's WAL entries replayed at import (InternalRaftRequest payloads from an etcd WAL)

#[test]
fn fuzz_etcd_wal_entry_payloads() {
    use raft::eraftpb::{Entry, EntryType};
    let valid = pb_put().prop_map(|put| {
        pb::InternalRaftRequest {
            header: Some(pb::RequestHeader {
                id: 7,
                ..Default::default()
            }),
            put: Some(put),
            ..Default::default()
        }
        .encode_to_vec()
    });
    fuzz_target("etcd-wal-entry-payloads", damaged(valid), |bytes| {
        let mut entry = Entry::default();
        entry.set_entry_type(EntryType::EntryNormal);
        entry.index = 10;
        entry.term = 2;
        entry.data = bytes.into();
        // A payload is translated or refused with an error; never a panic.
        let _ = rusd::etcdfmt::import::translate(&entry);
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Peer protocol: the frames a peer (or anything that connects to the peer port) sends

fn peer_frames() -> impl Strategy<Value = Vec<u8>> {
    use rusd::peer::wire;
    use rusd::peer::wire::pb as wpb;
    let raft_message = (any::<u64>(), any::<u64>(), any::<u64>(), small_bytes()).prop_map(
        |(from, to, index, data)| {
            let entry = raft::eraftpb::Entry {
                data: data.to_vec().into(),
                ..Default::default()
            };
            let m = raft::eraftpb::Message {
                from,
                to,
                index,
                entries: vec![entry].into(),
                ..Default::default()
            };
            wire::encode_raft_message(&m)
        },
    );
    prop::collection::vec(prop::collection::vec(raft_message, 0..4), 1..4).prop_map(|batches| {
        let mut out = bytes::BytesMut::new();
        for messages in batches {
            let body = wpb::frame::Body::Raft(wpb::RaftBatch {
                messages: messages.into_iter().collect(),
            });
            wire::encode_body(body, 1 << 20, &mut out).unwrap();
        }
        out.to_vec()
    })
}

#[test]
fn fuzz_peer_frames() {
    use rusd::peer::wire::{self, FrameDecoder};
    const LIMIT: usize = 64 * 1024;
    fuzz_target("peer-frames", damaged(peer_frames()), |bytes| {
        let decoder = FrameDecoder::new(LIMIT);
        // Fed in pieces, as a socket delivers them.
        let mut buffer = bytes::BytesMut::new();
        for piece in bytes.chunks(7) {
            buffer.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buffer) {
                    Ok(Some(payload)) => {
                        prop_assert!(payload.len() <= LIMIT, "a frame above the limit");
                        let _ = wire::decode_handshake(payload.clone());
                        let _ = wire::decode_handshake_answer(payload.clone());
                        if let Ok(wire::pb::frame::Body::Raft(batch)) = wire::decode_frame(payload)
                        {
                            let _ = wire::decode_raft_batch(batch);
                        }
                    }
                    Ok(None) => break,
                    // A bad header ends the connection: nothing more is read.
                    Err(_) => return Ok(()),
                }
            }
        }
        let _ = decoder.check_end(&buffer);
        Ok(())
    });
}

#[test]
fn fuzz_peer_snapshot_chunks() {
    use rusd::coordinator::transfer::{Chunk, ImageDecoder, ImageEncoder, SnapshotImage};
    let valid = (
        checkpoint_state(),
        prop::collection::vec(
            (
                prop::collection::vec(any::<u8>(), 1..6),
                prop::collection::vec(any::<u8>(), 0..6),
            ),
            0..20,
        ),
    )
        .prop_map(|(state, kvs)| {
            let events = kvs
                .iter()
                .enumerate()
                .map(|(i, (k, v))| event(k, v, i as i64 + 1, 0))
                .collect();
            let mut encoder = ImageEncoder::new(std::rc::Rc::new(SnapshotImage { state, events }));
            let mut chunks = Vec::new();
            while let Some(c) = encoder.next_chunk() {
                chunks.push(c.to_vec());
            }
            chunks
        });
    let input = (valid, any::<usize>(), mutations()).prop_map(|(original, which, m)| {
        let mut chunks = original.clone();
        let i = which % chunks.len();
        chunks[i] = mutate(std::mem::take(&mut chunks[i]), &m);
        (original, chunks)
    });
    fuzz_target("peer-snapshot-chunks", input, |(original, chunks)| {
        // A damaged stream is refused (its CRC, counts or layout), never accepted: a stream
        // that decodes to its end is exactly the one the leader sent.
        let mut decoder = ImageDecoder::default();
        for chunk in &chunks {
            match decoder.feed(chunk) {
                Ok(Chunk::End) => {
                    prop_assert!(decoder.ended());
                    prop_assert_eq!(&chunks, &original, "a damaged stream was accepted");
                    return Ok(());
                }
                Ok(_) => {}
                Err(_) => return Ok(()),
            }
        }
        prop_assert!(chunks != original, "the undamaged stream did not end");
        Ok(())
    });
}
