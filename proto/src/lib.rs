//! etcd v3.5 API wire types (prost) and gRPC stubs (tonic codegen) for rusd, and rusd's own
//! peer protocol (`rusdpeer`).
//!
//! Generated from `proto/etcd/**/*.proto`, which are wire-identical to etcd
//! v3.5.17's `etcdserverpb` (rpc, etcdserver and raft_internal), `mvccpb`, `authpb`, `membershippb`,
//! `leasepb`, `v3electionpb` and `v3lockpb` packages (checked by
//! `tests/wire_compat.rs`). `bytes` fields are `bytes::Bytes`.
//!
//! Services live in `etcdserverpb::{kv,watch,lease,cluster,maintenance,auth}_server`
//! and the matching `*_client` modules (clients are generic over any
//! `tonic::client::GrpcService`; no transport helpers are generated).
//! `v3electionpb::election_server` and `v3lockpb::lock_server` are the
//! Election and Lock services etcd also serves on its client port.

#![allow(clippy::all, clippy::pedantic, clippy::nursery)]
#![allow(missing_docs, rustdoc::all, unused_qualifications)]

/// MVCC key-value and event types (`mvccpb`).
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
}

/// Auth persistence types (`authpb`).
pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
}

/// Client API messages and the KV, Watch, Lease, Cluster, Maintenance and
/// Auth services (`etcdserverpb`).
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

/// Membership messages carried in raft entries (`membershippb`).
pub mod membershippb {
    include!(concat!(env!("OUT_DIR"), "/membershippb.rs"));
}

/// The `lease` bucket's record (`leasepb`).
pub mod leasepb {
    include!(concat!(env!("OUT_DIR"), "/leasepb.rs"));
}

/// The Election service of the client port (`v3electionpb`).
pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
}

/// The Lock service of the client port (`v3lockpb`).
pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
}

/// gRPC's health checking protocol (`grpc.health.v1`), which etcd serves on its client port.
pub mod grpc_health_v1 {
    include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs"));
}

/// rusd's peer protocol (`proto/peer/rusdpeer.proto`, docs/peer-protocol.md): handshake,
/// raft batches, requests and snapshot streams between members. Not part of etcd's API and not
/// in [`FILE_DESCRIPTOR_SET`].
pub mod rusdpeer {
    include!(concat!(env!("OUT_DIR"), "/rusdpeer.rs"));
}

/// Encoded `google.protobuf.FileDescriptorSet` of the five packages (as
/// compiled from `proto/etcd`) and of `grpc.health.v1`, e.g. for gRPC reflection or compat checks.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));
