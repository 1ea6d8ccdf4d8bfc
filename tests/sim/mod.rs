//! The deterministic simulation of a rusd cluster: several members' real raft node, applier
//! and shards in one thread (`exec`), a faulty network (`net`), crashing disks (`member`), and
//! clients whose histories are checked (`check`). See tests/simulation.rs for the runner.

pub mod check;
pub mod exec;
pub mod member;
pub mod net;
