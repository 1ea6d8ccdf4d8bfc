//! etcd v3.5 API wire types (prost) and gRPC stubs (tonic codegen) for rusd.
//!
//! Generated from `proto/etcd/**/*.proto`, which are wire-identical to etcd
//! v3.5.17's `etcdserverpb`, `mvccpb` and `authpb` packages (checked by
//! `tests/wire_compat.rs`). `bytes` fields are `bytes::Bytes`.
//!
//! Services live in `etcdserverpb::{kv,watch,lease,cluster,maintenance,auth}_server`
//! and the matching `*_client` modules (clients are generic over any
//! `tonic::client::GrpcService`; no transport helpers are generated).

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

/// Encoded `google.protobuf.FileDescriptorSet` of the three packages (as
/// compiled from `proto/etcd`), e.g. for gRPC reflection or compat checks.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));
