//! etcd v3.5's on-disk formats at rusd's edges: the bbolt database (`bbolt`, `schema`) that
//! `Maintenance.Snapshot` streams (`snapshot`) and that an etcd data dir holds, etcd's WAL
//! (`walpb`), and the import of an etcd data dir at start-up (`import`).

pub mod bbolt;
pub mod import;
pub mod schema;
pub mod snapshot;
pub mod walpb;
