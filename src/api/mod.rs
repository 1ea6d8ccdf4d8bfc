//! The client-facing API: gRPC services and HTTP endpoints. The only code that knows protobuf
//! and HTTP types; everything below it speaks plain Rust.

pub mod auth;
pub mod convert;
pub mod election;
pub mod gateway;
pub mod health;
pub mod http;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod router;
pub mod snapshot;
pub mod status;
pub mod watch;

use std::sync::Arc;

use proto::etcdserverpb as pb;

use crate::coordinator::{CoordinatorHandle, Published};
use crate::runtime::mesh::ShardSet;

/// What the member reports about itself in headers (MemberList comes from the coordinator).
#[derive(Clone, Debug)]
pub struct MemberInfo {
    pub member_id: u64,
    pub cluster_id: u64,
    pub client_urls: Vec<String>,
    /// `--election-timeout`: how often streams that require a leader check for one.
    pub election_timeout: std::time::Duration,
    /// --strict-reconfig-check: refuse membership changes the started members could not
    /// survive.
    pub strict_reconfig_check: bool,
}

/// Everything a handler needs; `Send + Sync`, cloned into every service on every core.
#[derive(Clone)]
pub struct Context {
    pub coordinator: CoordinatorHandle,
    pub shards: ShardSet,
    pub published: Arc<Published>,
    pub member: Arc<MemberInfo>,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// Token provider, bcrypt cost and whether client certificates name users.
    pub auth: Arc<auth::AuthConfig>,
    /// The member-wide cap on JSON gateway calls in flight (`--max-concurrent-streams`).
    pub gateway_streams: Arc<gateway::StreamGate>,
    /// `--cors`: origins the HTTP side answers with CORS headers.
    pub cors: Arc<Vec<String>>,
    /// What `grpc.health.v1.Health` answers (NOT_SERVING during a defragmentation with
    /// `--experimental-stop-grpc-service-on-defrag`).
    pub health: Arc<health::HealthState>,
    /// Requests to other members (a follower forwarding lease work to the leader); set once
    /// core 0 has started the peer transport.
    pub peers: Arc<std::sync::OnceLock<crate::peer::PeerClient>>,
}

impl Context {
    /// The response header as of `revision`.
    pub fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.member.cluster_id,
            member_id: self.member.member_id,
            revision,
            raft_term: self.published.raft_term(),
        }
    }
}
