//! Compiles `etcd/**/*.proto` with protox (pure Rust, no system `protoc`) and
//! generates prost messages plus tonic server and client stubs; compiles rusd's own peer
//! protocol (`peer/rusdpeer.proto`) into plain prost messages, kept out of the etcd
//! descriptor set.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "etcd/mvccpb/kv.proto",
    "etcd/authpb/auth.proto",
    "etcd/etcdserverpb/rpc.proto",
    "etcd/etcdserverpb/etcdserver.proto",
    "etcd/membershippb/membership.proto",
    "etcd/etcdserverpb/raft_internal.proto",
    "etcd/leasepb/lease.proto",
    "etcd/v3electionpb/v3election.proto",
    "etcd/v3lockpb/v3lock.proto",
];

/// gRPC's own protos (the health service etcd registers on its client port), under
/// `third_party/`.
const GRPC_PROTOS: &[&str] = &["third_party/grpc/health/v1/health.proto"];
/// rusd's own peer protocol (docs/peer-protocol.md).
const PEER_PROTO: &str = "peer/rusdpeer.proto";

fn main() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR not set"));

    println!("cargo:rerun-if-changed=build.rs");
    for p in PROTOS.iter().chain(GRPC_PROTOS) {
        println!("cargo:rerun-if-changed={p}");
    }

    // Include root is `etcd/`, so files are named e.g. `mvccpb/kv.proto`.
    // gRPC's files keep their `grpc/...` names, under `third_party/` as include root.
    let files: Vec<&str> = PROTOS
        .iter()
        .map(|p| p.strip_prefix("etcd/").unwrap())
        .chain(
            GRPC_PROTOS
                .iter()
                .map(|p| p.strip_prefix("third_party/").unwrap()),
        )
        .collect();
    let fds = match protox::compile(&files, ["etcd", "third_party"]) {
        Ok(fds) => fds,
        Err(e) => panic!("failed to compile etcd protos: {e:?}"),
    };

    std::fs::write(out_dir.join("file_descriptor_set.bin"), fds.encode_to_vec())
        .expect("write file_descriptor_set.bin");

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // No `connect()` helpers: they need tonic's `transport` (tokio) feature.
        .build_transport(false)
        // `bytes` fields become `bytes::Bytes` (cheap shared buffers).
        .bytes(".")
        .compile_fds(fds)
        .expect("tonic-prost-build codegen");

    // The peer protocol: messages only (no services), in its own descriptor set so the
    // gateway's and the wire-compat test's view of etcd's packages stays exactly etcd's.
    println!("cargo:rerun-if-changed={PEER_PROTO}");
    let peer_fds = match protox::compile([PEER_PROTO.strip_prefix("peer/").unwrap()], ["peer"]) {
        Ok(fds) => fds,
        Err(e) => panic!("failed to compile the peer protocol: {e:?}"),
    };
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .build_transport(false)
        .bytes(".")
        .compile_fds(peer_fds)
        .expect("peer protocol codegen");
}
