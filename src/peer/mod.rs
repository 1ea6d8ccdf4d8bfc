//! The peer transport: how members of one cluster talk to each other on `--listen-peer-urls`.
//!
//! Three kinds of traffic, each on its own connection so that one never waits behind another:
//! - raft messages (heartbeats, appends, votes), batched, through a bounded queue per peer;
//! - requests a member sends to another and waits an answer for (a follower forwarding a lease
//!   keep-alive to the leader, a joining member asking for the member list), as opaque bytes
//!   the coordinator encodes;
//! - snapshots, streamed in bounded chunks.
//!
//! The raft node sees only the [`Transport`] trait, so the deterministic simulation can put an
//! in-memory network in its place. Everything a peer sends us arrives as a [`PeerIncoming`] on
//! the channel the transport was built with.
//!
//! The real transport ([`PeerTransport`], core 0) speaks rusd's own protocol
//! (`proto/peer/rusdpeer.proto`, byte layout in docs/peer-protocol.md): `wire` is the codec and
//! the handshake checks as plain functions, `conn` the sockets and TLS, `transport` the raft
//! links, `listener` the accepting side, `client` requests and snapshot sends ([`PeerClient`],
//! usable from any core).

mod client;
mod conn;
pub mod join;
mod listener;
mod transport;
pub mod wire;

#[cfg(test)]
mod tests;

use bytes::Bytes;
use futures::channel::oneshot;
use raft::eraftpb::Message;

pub use client::{PeerClient, JOBS_QUEUED_MAX, JOBS_RUNNING_MAX};
pub use listener::{REQUESTS_IN_FLIGHT_MAX, SNAPSHOT_CHUNKS_AHEAD, SNAPSHOT_STALL_TIMEOUT};
pub use transport::{
    PeerOptions, PeerStats, PeerTransport, BACKOFF_FIRST, BACKOFF_MAX, KEEPALIVE_INTERVAL,
    QUEUE_BYTES_MAX, QUEUE_MESSAGES_MAX, READ_IDLE_TIMEOUT, WRITE_TIMEOUT,
};

/// Starts the peer transport for this member from the configuration: binds every
/// `--listen-peer-urls` URL and starts accepting. Call on core 0's executor (the raft node's);
/// the [`PeerClient`] may be cloned to any core. What peers send arrives on `inbox`.
pub fn start(
    cfg: &crate::config::Config,
    member_id: u64,
    cluster_id: u64,
    inbox: flume::Sender<PeerIncoming>,
) -> anyhow::Result<(PeerTransport, PeerClient)> {
    PeerTransport::start(PeerOptions::from_config(cfg, member_id, cluster_id)?, inbox)
}

/// What the raft node needs from the network. Calls never block and never fail: delivery is
/// best effort, and raft retries what is lost.
pub trait Transport {
    /// Queues raft messages for their destinations (`Message::to`). A message to an unknown
    /// peer, or to a peer whose queue is full, is dropped; raft resends (as etcd does).
    fn send(&mut self, msgs: Vec<Message>);
    /// The other members and their peer URLs: the whole set, replacing the previous one.
    fn set_peers(&mut self, peers: &[(u64, Vec<String>)]);
    /// Members removed from the cluster: their connections are refused from now on, and the
    /// ones they have are closed with a goodbye that tells them. Cumulative: the IDs join the
    /// removed set (a removal is permanent, as in etcd).
    fn set_removed(&mut self, ids: &[u64]);
    /// Sends a snapshot to `to` on a connection of its own, so it never delays raft messages:
    /// `meta` is the raft message that announces it, `source` yields the body's chunks. The
    /// outcome arrives later as `PeerIncoming::SnapshotStatus`.
    fn send_snapshot(&mut self, to: u64, meta: Bytes, source: Box<dyn SnapshotSource>);
}

/// The body of a snapshot, produced a chunk at a time (bounded memory whatever its size).
pub trait SnapshotSource {
    fn next_chunk(&mut self) -> Option<Bytes>;
}

/// Something a peer sent, delivered to the raft node's inbox.
pub enum PeerIncoming {
    /// Raft messages addressed to this member.
    Raft(Vec<Message>),
    /// Sending to this peer failed (connection refused or lost): raft should know
    /// (`RawNode::report_unreachable`), so it stops optimistic replication to it.
    Unreachable(u64),
    /// A request from `from` (0 when the sender does not know its own ID yet, e.g. a joining
    /// member asking for the member list). The body is opaque to the transport.
    Request {
        from: u64,
        body: Bytes,
        reply: oneshot::Sender<Bytes>,
    },
    /// A snapshot stream from `from`: `meta` (opaque) first, then the chunks in order. The
    /// receiver answers `done` once it has stored (or refused) the whole snapshot; answering
    /// before the end refuses it (the sender gets the error).
    ///
    /// The stream is complete only when an empty chunk (`Ok` of zero bytes, the end marker)
    /// arrives: the transport sends it after the stream's checksum matched, and never sends
    /// an empty chunk otherwise. An `Err`, or the channel closing before the marker, means the
    /// stream broke (connection lost, checksum mismatch, transport stopped): discard it.
    Snapshot {
        from: u64,
        meta: Bytes,
        chunks: flume::Receiver<Result<Bytes, PeerError>>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// How a snapshot this member sent to `to` ended: raft learns it
    /// (`RawNode::report_snapshot`) and retries a failed one.
    SnapshotStatus { to: u64, result: Result<(), String> },
    /// A peer told us we were removed from the cluster: this member must stop.
    RemovedFromCluster { by: u64 },
}

/// Why a request or snapshot to a peer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("peer {0:x} is unknown")]
    UnknownPeer(u64),
    #[error("peer {id:x} is unreachable: {reason}")]
    Unreachable { id: u64, reason: String },
    #[error("peer refused the connection: {0}")]
    Refused(String),
    #[error("the peer connection broke: {0}")]
    Broken(String),
    #[error("timed out")]
    Timeout,
    /// A request body, response or snapshot meta larger than a frame.
    #[error("a message of {bytes} bytes exceeds the peer frame limit of {limit} bytes")]
    TooLarge { bytes: usize, limit: usize },
    /// The peer received the request (or snapshot) and answered with an error.
    #[error("the peer failed the request: {0}")]
    Remote(String),
}

/// The transport of a member with no peers (a one-member cluster): raft addresses nobody, so
/// there is nothing to send. A message to a peer is dropped as for an unknown peer.
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&mut self, _msgs: Vec<Message>) {}
    fn set_peers(&mut self, _peers: &[(u64, Vec<String>)]) {}
    fn set_removed(&mut self, _ids: &[u64]) {}
    fn send_snapshot(&mut self, _to: u64, _meta: Bytes, _source: Box<dyn SnapshotSource>) {}
}
