//! Fuzzing of every gRPC method of the client port through the real binary: KV, Watch, Lease,
//! Cluster, Maintenance, Auth, Election, Lock and grpc.health.v1.Health. Each request body is
//! a random message of the method's input type, built field by field from the compiled
//! descriptors (so it reaches the handlers, not only the decoder), and a third of them are
//! then damaged at the byte level. Properties: the server never panics or stops, every call
//! ends with a response or a gRPC status, and afterwards the member still serves reads and
//! writes on every core.
//!
//! Budget: `RUSD_FUZZ_CASES` requests (default 400) or `RUSD_FUZZ_SECONDS` seconds; the seed is
//! printed, and `RUSD_FUZZ_SEED` replays it.

mod common;

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use common::{Rng, Server};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, Value};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Passes request and response bodies through as bytes.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// A small integer most of the time (so that IDs, revisions and enum values meet the
/// server's), sometimes an extreme.
fn number(rng: &mut Rng) -> i64 {
    match rng.below(10) {
        0 => i64::MAX,
        1 => i64::MIN,
        2 => -1,
        3 => rng.next_u64() as i64,
        _ => rng.below(6) as i64,
    }
}

fn short_bytes(rng: &mut Rng) -> Vec<u8> {
    match rng.below(6) {
        0 => Vec::new(),
        1 => vec![0],
        2 => b"foo".to_vec(),
        _ => (0..rng.below(6))
            .map(|_| b"abz\0\xff"[rng.below(5) as usize])
            .collect(),
    }
}

fn value_of(kind: &Kind, rng: &mut Rng, depth: u32) -> Value {
    match kind {
        Kind::Bool => Value::Bool(rng.below(2) == 1),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(number(rng) as i32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(number(rng)),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(number(rng) as u32),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(number(rng) as u64),
        Kind::Float => Value::F32(rng.below(4) as f32),
        Kind::Double => Value::F64(rng.below(4) as f64),
        Kind::String => Value::String(String::from_utf8_lossy(&short_bytes(rng)).into_owned()),
        Kind::Bytes => Value::Bytes(short_bytes(rng).into()),
        Kind::Enum(_) => Value::EnumNumber(rng.below(6) as i32 - 1),
        Kind::Message(m) => Value::Message(random_message(m, rng, depth + 1)),
    }
}

/// A message with each field set or not at random, nested messages to depth 3.
fn random_message(desc: &MessageDescriptor, rng: &mut Rng, depth: u32) -> DynamicMessage {
    let mut m = DynamicMessage::new(desc.clone());
    if depth > 3 {
        return m;
    }
    for field in desc.fields() {
        if rng.below(2) == 0 {
            continue;
        }
        let kind = field.kind();
        let value = if field.is_list() {
            Value::List(
                (0..rng.below(4))
                    .map(|_| value_of(&kind, rng, depth))
                    .collect(),
            )
        } else if field.is_map() {
            continue;
        } else {
            value_of(&kind, rng, depth)
        };
        m.set_field(&field, value);
    }
    m
}

fn damage(mut body: Vec<u8>, rng: &mut Rng) -> Vec<u8> {
    for _ in 0..rng.range(1, 4) {
        let n = body.len();
        match rng.below(4) {
            0 if n > 0 => body[rng.below(n as u64) as usize] ^= 1 << rng.below(8),
            1 => body.truncate(rng.below(n as u64 + 1) as usize),
            2 => {
                let at = rng.below(n as u64 + 1) as usize;
                body.insert(at, rng.next_u64() as u8);
            }
            _ => body.extend((0..rng.below(8)).map(|_| rng.next_u64() as u8)),
        }
    }
    body
}

#[test]
fn fuzz_every_grpc_method() {
    let seed: u64 = std::env::var("RUSD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(common::time_seed);
    let seconds: Option<u64> = std::env::var("RUSD_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok());
    let cases: u64 = std::env::var("RUSD_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    eprintln!("fuzz grpc: seed {seed} (RUSD_FUZZ_SEED={seed} replays it)");
    let pool = DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
    let methods: Vec<(String, MessageDescriptor, bool, bool)> = pool
        .services()
        .flat_map(|s| {
            s.methods()
                .map(|m| {
                    (
                        format!("/{}/{}", s.full_name(), m.name()),
                        m.input(),
                        m.is_client_streaming(),
                        m.is_server_streaming(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(methods.len() >= 40, "only {} methods found", methods.len());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut server = Server::start(2);
    let url = server.url();
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut executions = 0u64;
    let mut answered_ok = 0u64;
    rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        loop {
            let done = match seconds {
                Some(s) => started.elapsed() >= Duration::from_secs(s),
                None => executions >= cases,
            };
            if done {
                break;
            }
            let (path, input, client_streaming, server_streaming) =
                &methods[rng.below(methods.len() as u64) as usize];
            let mut body = random_message(input, &mut rng, 0).encode_to_vec();
            if rng.below(3) == 0 {
                body = damage(body, &mut rng);
            }
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.unwrap();
            let path: http::uri::PathAndQuery = path.parse().unwrap();
            let call = async {
                if *client_streaming || *server_streaming {
                    let requests = futures::stream::iter(vec![body]);
                    let mut stream = grpc
                        .streaming(tonic::Request::new(requests), path, RawCodec)
                        .await?
                        .into_inner();
                    stream.message().await.map(|_| ())
                } else {
                    grpc.unary(tonic::Request::new(body), path, RawCodec)
                        .await
                        .map(|_| ())
                }
            };
            // Campaign, Lock and watches may wait for events that never come: a timeout is
            // an answer too.
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(300), call).await {
                answered_ok += 1;
            }
            executions += 1;
            if executions % 100 == 0 {
                assert!(
                    server.is_running(),
                    "the server stopped after {executions} requests (seed {seed})\n{}",
                    server.log()
                );
            }
        }
    });
    let elapsed = started.elapsed();
    eprintln!(
        "fuzz grpc: {executions} requests over {} methods in {:.1} s ({answered_ok} answered without error)",
        methods.len(),
        elapsed.as_secs_f64()
    );
    assert!(
        server.is_running(),
        "the server stopped (seed {seed})\n{}",
        server.log()
    );
    let log = server.log();
    assert!(
        !log.contains("panicked"),
        "the server panicked (seed {seed}):\n{log}"
    );
    // Clients may raise alarms (Maintenance.Alarm ACTIVATE), and the fuzzer does: disarm them
    // as an operator would, then the member must serve writes and linearizable reads again,
    // on both cores' connections.
    server.etcdctl(&["alarm", "disarm"]).ok();
    rt.block_on(async {
        for _ in 0..4 {
            let mut client = server.client().await;
            let revision = client.put_rev("fuzz/after", "ok").await;
            let kv = client
                .get("fuzz/after")
                .await
                .expect("the key just written");
            assert_eq!(kv.mod_revision, revision);
        }
    });
    server.kill();
}
