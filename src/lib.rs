//! rusd: a thread-per-core, drop-in replacement for the etcd v3.5 server.
//!
//! The library holds the whole server; `src/main.rs` is the command line's entry point, and
//! integration tests (the deterministic simulation, fuzzing) reach the internals through it.
//! See docs/architecture.md for the map.

pub mod api;
pub mod config;
pub mod coordinator;
pub mod corrupt;
pub mod error;
pub mod etcdfmt;
pub mod failpoint;
pub mod ids;
#[macro_use]
pub mod logging;
pub mod net;
pub mod peer;
pub mod proxy;
pub mod recovery;
pub mod runtime;
pub mod server;
