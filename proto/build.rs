//! Compiles `etcd/**/*.proto` with protox (pure Rust, no system `protoc`) and
//! generates prost messages plus tonic server and client stubs.

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

fn main() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR not set"));

    println!("cargo:rerun-if-changed=build.rs");
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }

    // Include root is `etcd/`, so files are named e.g. `mvccpb/kv.proto`.
    let files: Vec<&str> = PROTOS
        .iter()
        .map(|p| p.strip_prefix("etcd/").unwrap())
        .collect();
    let fds = match protox::compile(&files, ["etcd"]) {
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
}
