//! etcd v3.5's on-disk formats at rusd's edges: the bbolt database (`bbolt`, `schema`) that
//! `Maintenance.Snapshot` streams (`snapshot`) and that an etcd data dir holds.

pub mod bbolt;
pub mod schema;
pub mod snapshot;
