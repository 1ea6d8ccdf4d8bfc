//! The real peer transport on core 0: options from the configuration, the shared state of the
//! listener, the raft links and the request side, and the raft links themselves (a bounded
//! queue and one writer task per peer, batching, reconnect with backoff).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::io::{ReadHalf, WriteHalf};
use glommio::task::JoinHandle;
use glommio::TaskQueueHandle;
use raft::eraftpb::Message;

use super::conn::{self, BoxStream, FrameReader};
use super::wire::{self, pb, ConnectionKind};
use super::{PeerClient, PeerError, PeerIncoming, SnapshotSource, Transport};
use crate::config::{Config, Url};
use crate::ids::format_id;
use crate::net::tls::{self, TlsInfo, TlsOptions};
use crate::net::{self, ListenAddr, Role};

/// Raft messages queued for one peer, at most (etcd's stream buffer holds 4096). Full: the
/// newest message is dropped and counted, raft is told the peer is unreachable, and raft
/// resends what it still needs (as etcd does).
pub const QUEUE_MESSAGES_MAX: usize = 4096;

/// Bytes of raft messages queued for one peer, at most; never below the frame limit, so the
/// largest message fits in an empty queue. Full: as [`QUEUE_MESSAGES_MAX`].
pub const QUEUE_BYTES_MAX: usize = wire::FRAME_BYTES_MAX;

/// Reconnect backoff of a raft link: doubles from the first to the cap after each failed
/// attempt, and resets once a connection is up. The cap keeps a restarted peer reachable
/// within one default election timeout (1 s); etcd redials every 100 ms.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(50);
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A connection that carries nothing for this long is dead (etcd's `ConnReadTimeout`).
pub const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// A writer with nothing to send sends a ping after this long, so the other side's idle
/// timeout only fires on a dead connection (etcd's stream writer heartbeats at a third of
/// `ConnReadTimeout`).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(1666);

/// A frame write that takes longer fails the connection (etcd's `ConnWriteTimeout`).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// etcd's `version.MinClusterVersion`, sent in handshakes and logged like etcd's header.
pub const MIN_CLUSTER_VERSION: &str = "3.0.0";

/// How the transport is set up. [`PeerOptions::from_config`] reads the flags.
#[derive(Clone)]
pub struct PeerOptions {
    pub member_id: u64,
    pub cluster_id: u64,
    /// `--listen-peer-urls` (port 0 binds any free port; see [`PeerTransport::listen_addrs`]).
    pub listen_urls: Vec<Url>,
    /// This member's advertised peer URLs, sent in handshakes (etcd's `X-PeerURLs`).
    pub advertise_urls: Vec<String>,
    /// Peer TLS for `https`/`unixs` listen URLs.
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    /// Peer TLS for dialing `https`/`unixs` peer URLs.
    pub client_tls: Option<Arc<rustls::ClientConfig>>,
    /// `--experimental-peer-skip-client-san-verification`.
    pub skip_client_san_verify: bool,
    /// Connecting and the handshake must finish within this (etcd's `PeerDialTimeout`).
    pub dial_timeout: Duration,
    /// The largest frame sent or accepted after the handshake.
    pub frame_bytes_max: usize,
    /// Per-peer raft queue bounds.
    pub queue_messages_max: usize,
    pub queue_bytes_max: usize,
}

/// The application protocol peers negotiate under TLS: an HTTP client or an etcd peer that
/// dials our peer port fails the handshake instead of sending bytes we cannot read.
const PEER_ALPN: &[u8] = b"rusd-peer/1";

impl PeerOptions {
    /// Options without TLS and with the default bounds.
    pub fn new(member_id: u64, cluster_id: u64, listen_urls: Vec<Url>) -> PeerOptions {
        PeerOptions {
            member_id,
            cluster_id,
            advertise_urls: listen_urls.iter().map(|u| u.raw.clone()).collect(),
            listen_urls,
            server_tls: None,
            client_tls: None,
            skip_client_san_verify: false,
            dial_timeout: Duration::from_secs(2),
            frame_bytes_max: wire::FRAME_BYTES_MAX,
            queue_messages_max: QUEUE_MESSAGES_MAX,
            queue_bytes_max: QUEUE_BYTES_MAX,
        }
    }

    /// Reads `--listen-peer-urls`, `--initial-advertise-peer-urls`, the `--peer-*` TLS flags
    /// (with `--peer-auto-tls`), `--cipher-suites`, `--tls-min-version`, `--tls-max-version`,
    /// `--experimental-peer-skip-client-san-verification`, `--election-timeout` (dial timeout)
    /// and `--max-request-bytes` (the frame limit grows to carry the largest entry).
    pub fn from_config(cfg: &Config, member_id: u64, cluster_id: u64) -> anyhow::Result<Self> {
        let mut options = PeerOptions::new(member_id, cluster_id, cfg.listen_peer_urls.clone());
        options.advertise_urls = cfg
            .initial_advertise_peer_urls
            .iter()
            .map(|u| u.raw.clone())
            .collect();
        let server_tls = tls::peer_server_config(cfg)?;
        if let Some(u) = cfg.listen_peer_urls.iter().find(|u| u.is_tls()) {
            if server_tls.is_none() {
                anyhow::bail!(
                    "cannot listen on TLS for {}: KeyFile and CertFile are not presented",
                    u.host_port()
                );
            }
        }
        options.server_tls = server_tls.map(with_server_alpn);
        // Without peer TLS files, an https peer URL is dialed as Go's default client would:
        // verified against the system roots, with no client certificate.
        options.client_tls = match tls::peer_client_config(cfg)? {
            Some(config) => Some(with_client_alpn(config)),
            None => tls::client_config(&TlsInfo::default(), &TlsOptions::from_config(cfg))
                .ok()
                .map(with_client_alpn),
        };
        options.skip_client_san_verify = cfg.peer_tls.skip_client_san_verify;
        options.dial_timeout =
            Duration::from_secs(1) + Duration::from_millis(cfg.election_timeout_ms);
        let largest_entry = cfg.max_request_bytes as usize + (1 << 20);
        options.frame_bytes_max = wire::FRAME_BYTES_MAX.max(largest_entry);
        options.queue_bytes_max = QUEUE_BYTES_MAX.max(options.frame_bytes_max);
        Ok(options)
    }
}

/// The peer protocol's ALPN on a server configuration built for the peer port.
pub fn with_server_alpn(config: Arc<rustls::ServerConfig>) -> Arc<rustls::ServerConfig> {
    let mut config = (*config).clone();
    config.alpn_protocols = vec![PEER_ALPN.to_vec()];
    Arc::new(config)
}

/// The peer protocol's ALPN on a client configuration built for dialing peers.
pub fn with_client_alpn(config: Arc<rustls::ClientConfig>) -> Arc<rustls::ClientConfig> {
    let mut config = (*config).clone();
    config.alpn_protocols = vec![PEER_ALPN.to_vec()];
    Arc::new(config)
}

/// Counters of what the transport did, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Raft messages written to a peer connection, and the frames that carried them.
    pub messages_sent: u64,
    pub batches_sent: u64,
    /// Raft messages dropped because the peer's queue was full.
    pub messages_dropped_queue_full: u64,
    /// Raft messages dropped because their peer could not be reached (dial or write failed).
    pub messages_dropped_unreachable: u64,
    /// Raft messages to a member that is not a peer, or larger than a frame.
    pub messages_dropped_other: u64,
    /// Raft messages delivered to the inbox, and the frames that carried them.
    pub messages_received: u64,
    pub batches_received: u64,
    /// Handshakes this listener refused.
    pub handshakes_refused: u64,
    /// Raft link connection attempts that failed.
    pub dials_failed: u64,
}

/// Local tasks of the transport, cancelled all at once when it stops.
pub(super) struct Tasks {
    next: Cell<u64>,
    handles: RefCell<HashMap<u64, JoinHandle<()>>>,
    closed: Cell<bool>,
}

impl Tasks {
    fn new() -> Rc<Tasks> {
        Rc::new(Tasks {
            next: Cell::new(1),
            handles: RefCell::new(HashMap::new()),
            closed: Cell::new(false),
        })
    }

    /// Spawns `future` on this executor; returns its ID (0 once the transport stopped, when
    /// nothing is spawned).
    pub fn spawn(self: &Rc<Self>, future: impl Future<Output = ()> + 'static) -> u64 {
        self.spawn_into(None, future)
    }

    pub fn spawn_into(
        self: &Rc<Self>,
        queue: Option<TaskQueueHandle>,
        future: impl Future<Output = ()> + 'static,
    ) -> u64 {
        if self.closed.get() {
            return 0;
        }
        let id = self.next.get();
        self.next.set(id + 1);
        let tasks = Rc::downgrade(self);
        let wrapped = async move {
            future.await;
            if let Some(tasks) = tasks.upgrade() {
                tasks.handles.borrow_mut().remove(&id);
            }
        };
        let task = match queue {
            Some(q) => glommio::spawn_local_into(wrapped, q).expect("the transport's queue exists"),
            None => glommio::spawn_local(wrapped),
        };
        // The task runs no earlier than our next await, so it cannot finish before this.
        self.handles.borrow_mut().insert(id, task.detach());
        id
    }

    /// Stops a task: its future is dropped without being polled again.
    pub fn cancel(&self, id: u64) {
        let handle = self.handles.borrow_mut().remove(&id);
        if let Some(handle) = handle {
            handle.cancel();
        }
    }

    pub(super) fn shutdown(&self) {
        self.closed.set(true);
        let handles: Vec<_> = self.handles.borrow_mut().drain().map(|(_, h)| h).collect();
        for handle in handles {
            handle.cancel();
        }
    }
}

/// A connection accepted by the listener, while it runs.
pub(super) struct IncomingEntry {
    pub from: u64,
    pub kind: ConnectionKind,
    /// Closes the connection: with a goodbye frame for `Some(reason)`, silently for `None`.
    pub stop: Option<futures::channel::oneshot::Sender<Option<pb::Refusal>>>,
}

/// What the listener, the raft links and the request side share, on core 0.
pub(super) struct Inner {
    pub member_id: Cell<u64>,
    pub cluster_id: Cell<u64>,
    pub options: PeerOptions,
    pub inbox: flume::Sender<PeerIncoming>,
    pub links: RefCell<HashMap<u64, Rc<Link>>>,
    pub removed: RefCell<HashSet<u64>>,
    pub incoming: RefCell<HashMap<u64, IncomingEntry>>,
    pub next_incoming: Cell<u64>,
    pub tasks: Rc<Tasks>,
    pub stats: RefCell<PeerStats>,
    /// Snapshot streams run in this queue, with fewer shares than raft traffic.
    pub snapshot_queue: Option<TaskQueueHandle>,
    pub requests: super::client::RequestConnections,
}

impl Inner {
    /// The shared state with nothing running yet: no listener, no links.
    pub fn new(
        options: PeerOptions,
        inbox: flume::Sender<PeerIncoming>,
        snapshot_queue: Option<TaskQueueHandle>,
    ) -> Rc<Inner> {
        Rc::new(Inner {
            member_id: Cell::new(options.member_id),
            cluster_id: Cell::new(options.cluster_id),
            options,
            inbox,
            links: RefCell::new(HashMap::new()),
            removed: RefCell::new(HashSet::new()),
            incoming: RefCell::new(HashMap::new()),
            next_incoming: Cell::new(1),
            tasks: Tasks::new(),
            stats: RefCell::new(PeerStats::default()),
            snapshot_queue,
            requests: Default::default(),
        })
    }

    pub fn member_id(&self) -> u64 {
        self.member_id.get()
    }

    pub fn stat(&self, update: impl FnOnce(&mut PeerStats)) {
        update(&mut self.stats.borrow_mut());
    }

    pub fn peer_urls(&self, id: u64) -> Option<Vec<Url>> {
        self.links
            .borrow()
            .get(&id)
            .map(|l| l.urls.borrow().clone())
    }

    pub fn is_removed(&self, id: u64) -> bool {
        self.removed.borrow().contains(&id)
    }

    /// The handshake this member sends.
    pub fn handshake(&self, kind: ConnectionKind, to: u64) -> pb::Handshake {
        pb::Handshake {
            protocol_version: wire::PROTOCOL_VERSION,
            cluster_id: self.cluster_id.get(),
            from: self.member_id(),
            to,
            kind: kind.to_pb() as i32,
            peer_urls: self.options.advertise_urls.clone(),
            server_version: crate::config::ETCD_VERSION.to_string(),
            min_cluster_version: MIN_CLUSTER_VERSION.to_string(),
        }
    }

    /// Tells the raft node something without waiting: an advisory report (a peer is
    /// unreachable) is dropped when the inbox is full, since raft learns again at the next
    /// failure; a removal is waited for in a task of its own.
    pub fn report(self: &Rc<Self>, incoming: PeerIncoming) {
        match self.inbox.try_send(incoming) {
            Ok(()) | Err(flume::TrySendError::Disconnected(_)) => {}
            Err(flume::TrySendError::Full(incoming)) => {
                if matches!(incoming, PeerIncoming::RemovedFromCluster { .. }) {
                    let inbox = self.inbox.clone();
                    self.tasks.spawn(async move {
                        let _ = inbox.send_async(incoming).await;
                    });
                }
            }
        }
    }

    /// A peer refused us because we were removed from the cluster: the raft node must stop.
    pub fn report_removed(self: &Rc<Self>, by: u64) {
        self.report(PeerIncoming::RemovedFromCluster { by });
    }
}

// ---------------------------------------------------------------------------------------------
// Dialing with the handshake

/// A dialed connection whose handshake was accepted.
pub(super) struct Opened {
    pub reader: FrameReader<ReadHalf<BoxStream>>,
    pub writer: WriteHalf<BoxStream>,
}

pub(super) enum OpenError {
    /// Connecting or the handshake failed: the peer is unreachable.
    Unreachable(String),
    /// The peer answered and refused.
    Refused(pb::Refusal, pb::HandshakeAnswer),
}

/// Dials `url`, sends the preamble and handshake and reads the answer, all within the dial
/// timeout.
pub(super) async fn open(
    inner: &Inner,
    url: &Url,
    kind: ConnectionKind,
    to: u64,
) -> Result<Opened, OpenError> {
    use futures::AsyncReadExt;
    let limit = inner.options.dial_timeout;
    let stream = conn::dial(url, inner.options.client_tls.as_ref(), limit)
        .await
        .map_err(OpenError::Unreachable)?;
    let (read_half, mut writer) = stream.split();
    let mut hello = BytesMut::from(&wire::PREAMBLE[..]);
    wire::encode_frame(
        &inner.handshake(kind, to),
        wire::HANDSHAKE_FRAME_BYTES_MAX,
        &mut hello,
    )
    .map_err(|e| OpenError::Unreachable(e.to_string()))?;
    conn::write_within(&mut writer, &hello, limit)
        .await
        .map_err(|e| {
            OpenError::Unreachable(format!("sending the handshake to {}: {e}", url.raw))
        })?;
    let mut reader = FrameReader::new(read_half, wire::HANDSHAKE_FRAME_BYTES_MAX);
    let answer = match reader.next_within(limit).await {
        Ok(Some(payload)) => wire::decode_handshake_answer(payload)
            .map_err(|e| OpenError::Unreachable(e.to_string()))?,
        Ok(None) => {
            return Err(OpenError::Unreachable(format!(
                "{} closed the connection during the handshake",
                url.raw
            )))
        }
        Err(e) => {
            return Err(OpenError::Unreachable(format!(
                "handshake with {}: {e}",
                url.raw
            )))
        }
    };
    let refusal = pb::Refusal::try_from(answer.refusal).unwrap_or(pb::Refusal::UnknownKind);
    if refusal != pb::Refusal::None {
        return Err(OpenError::Refused(refusal, answer));
    }
    reader.set_limit(inner.options.frame_bytes_max);
    Ok(Opened { reader, writer })
}

/// What a dialer does when a peer refuses it: etcd's log line, the removal report, and the
/// error for the caller.
pub(super) fn refused(
    inner: &Rc<Inner>,
    to: u64,
    refusal: pb::Refusal,
    answer: &pb::HandshakeAnswer,
) -> PeerError {
    let text = wire::refusal_text(refusal);
    match refusal {
        pb::Refusal::ClusterIdMismatch => log_warn!(
            "request sent was ignored by remote peer due to cluster ID mismatch",
            "remote-peer-id" => format_id(to),
            "remote-peer-cluster-id" => format_id(answer.cluster_id),
            "local-member-id" => format_id(inner.member_id()),
            "local-member-cluster-id" => format_id(inner.cluster_id.get()),
            "error" => text
        ),
        pb::Refusal::VersionUnsupported => log_warn!(
            "request sent was ignored by remote peer due to server version incompatibility",
            "local-member-id" => format_id(inner.member_id()),
            "remote-peer-id" => format_id(to),
            "error" => text
        ),
        pb::Refusal::RemovedMember => {
            let by = if answer.member_id != 0 {
                answer.member_id
            } else {
                to
            };
            inner.report_removed(by);
        }
        _ => {}
    }
    PeerError::Refused(text.to_string())
}

/// Tries the URLs in order until one answers; a refusal ends the search (every URL of a
/// member reaches the same member).
pub(super) async fn open_any(
    inner: &Rc<Inner>,
    urls: &[Url],
    kind: ConnectionKind,
    to: u64,
) -> Result<Opened, PeerError> {
    let mut reasons = Vec::new();
    for url in urls {
        match open(inner, url, kind, to).await {
            Ok(opened) => return Ok(opened),
            Err(OpenError::Unreachable(reason)) => reasons.push(reason),
            Err(OpenError::Refused(refusal, answer)) => {
                return Err(refused(inner, to, refusal, &answer))
            }
        }
    }
    Err(PeerError::Unreachable {
        id: to,
        reason: if reasons.is_empty() {
            "no peer URLs".into()
        } else {
            reasons.join("; ")
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Raft links

/// The outgoing raft traffic to one peer: a bounded queue and the state its writer task
/// shares with `send` and with the connection's reader.
pub(super) struct Link {
    pub id: u64,
    pub urls: RefCell<Vec<Url>>,
    /// The URL to dial next; moves on after a failure (etcd's urlPicker).
    next_url: Cell<usize>,
    queue: RefCell<VecDeque<Bytes>>,
    queued_bytes: Cell<usize>,
    waker: RefCell<Option<Waker>>,
    /// Set by the connection's reader when the connection ended: (connection number, why).
    lost: RefCell<Option<(u64, String)>>,
    /// The peer told us we were removed: nothing more is sent to it.
    removed_us: Cell<bool>,
    active: Cell<bool>,
    writer_task: Cell<u64>,
    last_drop_log: Cell<Option<Instant>>,
}

impl Link {
    fn new(id: u64, urls: Vec<Url>) -> Link {
        Link {
            id,
            urls: RefCell::new(urls),
            next_url: Cell::new(0),
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            waker: RefCell::new(None),
            lost: RefCell::new(None),
            removed_us: Cell::new(false),
            active: Cell::new(false),
            writer_task: Cell::new(0),
            last_drop_log: Cell::new(None),
        }
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Queues one encoded message; `false` when the queue is full (the message is dropped).
    /// An empty queue takes any message, so the largest one allowed always gets through.
    fn push(&self, message: Bytes, options: &PeerOptions) -> bool {
        let mut queue = self.queue.borrow_mut();
        let bytes = self.queued_bytes.get();
        if !queue.is_empty()
            && (queue.len() >= options.queue_messages_max
                || bytes + message.len() > options.queue_bytes_max)
        {
            return false;
        }
        self.queued_bytes.set(bytes + message.len());
        queue.push_back(message);
        drop(queue);
        self.wake();
        true
    }

    /// Drops everything queued; returns how many messages.
    fn clear(&self) -> usize {
        let n = self.queue.borrow().len();
        self.queue.borrow_mut().clear();
        self.queued_bytes.set(0);
        n
    }

    /// The next batch: queued messages in order up to [`wire::BATCH_BYTES_MAX`] (at least one).
    fn take_batch(&self) -> Vec<Bytes> {
        let mut queue = self.queue.borrow_mut();
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(front) = queue.front() {
            if !batch.is_empty() && bytes + front.len() > wire::BATCH_BYTES_MAX {
                break;
            }
            bytes += front.len();
            batch.push(queue.pop_front().expect("front exists"));
        }
        self.queued_bytes.set(self.queued_bytes.get() - bytes);
        batch
    }

    /// Waits until there is something to do: messages queued, the connection lost, or the
    /// peer removed us; or until `deadline` (time for a keep-alive).
    async fn wait(&self, deadline: Option<Instant>) {
        let ready = futures::future::poll_fn(|cx| {
            if !self.queue.borrow().is_empty()
                || self.lost.borrow().is_some()
                || self.removed_us.get()
            {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                conn::with_timeout(left, ready).await;
            }
            None => ready.await,
        }
    }

    /// etcd's peerStatus.activate.
    fn activate(&self) {
        if !self.active.replace(true) {
            log_info!("peer became active", "peer-id" => format_id(self.id));
        }
    }

    /// etcd's peerStatus.deactivate.
    fn deactivate(&self, action: &str, reason: &str) {
        let message = format!(
            "failed to {action} {} on {} ({reason})",
            format_id(self.id),
            ConnectionKind::Raft
        );
        if self.active.replace(false) {
            log_warn!(
                "peer became inactive (message send to peer failed)",
                "peer-id" => format_id(self.id),
                "error" => message
            );
        } else {
            log_debug!(
                "peer deactivated again",
                "peer-id" => format_id(self.id),
                "error" => message
            );
        }
    }

    /// etcd's line for a message dropped at a full queue, at most once a second per peer (a
    /// flood of drops would otherwise flood the log), with the count so far.
    fn log_drop(&self, inner: &Inner, message: &Message) {
        let now = Instant::now();
        if self
            .last_drop_log
            .get()
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_drop_log.set(Some(now));
        log_warn!(
            "dropped internal Raft message since sending buffer is full (overloaded network)",
            "message-type" => format!("{:?}", message.get_msg_type()),
            "local-member-id" => format_id(inner.member_id()),
            "from" => format_id(message.from),
            "remote-peer-id" => format_id(self.id),
            "remote-peer-name" => ConnectionKind::Raft.to_string(),
            "remote-peer-active" => self.active.get(),
            "dropped-messages-total" => inner.stats.borrow().messages_dropped_queue_full
        );
    }
}

/// An open raft connection of a link: the write half, and the task reading the other half.
struct RaftConnection {
    writer: WriteHalf<BoxStream>,
    number: u64,
    reader_task: u64,
    tasks: Rc<Tasks>,
}

impl Drop for RaftConnection {
    fn drop(&mut self) {
        self.tasks.cancel(self.reader_task);
    }
}

enum DialOutcome {
    Connected(RaftConnection),
    Removed,
    Failed(String),
}

/// The writer task of a link: waits for messages, connects when needed, and sends what is
/// queued as one frame at a time.
async fn run_link(inner: Rc<Inner>, link: Rc<Link>) {
    let mut backoff = BACKOFF_FIRST;
    let mut connection: Option<RaftConnection> = None;
    let mut connections = 0u64;
    let mut last_write = Instant::now();
    loop {
        let keepalive_at = connection.as_ref().map(|_| last_write + KEEPALIVE_INTERVAL);
        link.wait(keepalive_at).await;
        if link.removed_us.get() {
            let dropped = link.clear();
            inner.stat(|s| s.messages_dropped_unreachable += dropped as u64);
            return;
        }
        let lost = link.lost.borrow_mut().take();
        if let Some((number, reason)) = lost {
            if connection.as_ref().is_some_and(|c| c.number == number) {
                connection = None;
                connection_lost(&inner, &link, "read", &reason);
            }
        }
        if link.queue.borrow().is_empty() {
            // Nothing queued: keep the connection alive.
            if let Some(c) = &mut connection {
                let mut ping = BytesMut::new();
                wire::encode_body(pb::frame::Body::Ping(pb::Ping {}), usize::MAX, &mut ping)
                    .expect("a ping always fits");
                match conn::write_within(&mut c.writer, &ping, WRITE_TIMEOUT).await {
                    Ok(()) => last_write = Instant::now(),
                    Err(e) => {
                        connection = None;
                        connection_lost(&inner, &link, "heartbeat", &e.to_string());
                    }
                }
            }
            continue;
        }
        if connection.is_none() {
            connections += 1;
            match dial_link(&inner, &link, connections).await {
                DialOutcome::Connected(c) => {
                    connection = Some(c);
                    backoff = BACKOFF_FIRST;
                    link.activate();
                    log_info!(
                        "established TCP streaming connection with remote peer",
                        "stream-writer-type" => ConnectionKind::Raft.to_string(),
                        "local-member-id" => format_id(inner.member_id()),
                        "remote-peer-id" => format_id(link.id)
                    );
                }
                DialOutcome::Removed => {
                    link.removed_us.set(true);
                    link.deactivate("dial", wire::refusal_text(pb::Refusal::RemovedMember));
                    continue;
                }
                DialOutcome::Failed(reason) => {
                    link.deactivate("dial", &reason);
                    let dropped = link.clear();
                    inner.stat(|s| {
                        s.dials_failed += 1;
                        s.messages_dropped_unreachable += dropped as u64;
                    });
                    inner.report(PeerIncoming::Unreachable(link.id));
                    glommio::timer::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
        }
        let batch = link.take_batch();
        let count = batch.len() as u64;
        let mut frame = BytesMut::new();
        let body = pb::frame::Body::Raft(pb::RaftBatch { messages: batch });
        wire::encode_body(body, inner.options.frame_bytes_max, &mut frame)
            .expect("send() admits only messages that fit in a frame, and batches stay below it");
        let c = connection.as_mut().expect("connected above");
        match conn::write_within(&mut c.writer, &frame, WRITE_TIMEOUT).await {
            Ok(()) => {
                last_write = Instant::now();
                inner.stat(|s| {
                    s.messages_sent += count;
                    s.batches_sent += 1;
                });
            }
            Err(e) => {
                connection = None;
                inner.stat(|s| s.messages_dropped_unreachable += count);
                connection_lost(&inner, &link, "write", &e.to_string());
            }
        }
    }
}

/// A raft connection broke: etcd's lines, and raft learns the peer is unreachable.
fn connection_lost(inner: &Rc<Inner>, link: &Link, action: &str, reason: &str) {
    link.deactivate(action, reason);
    log_warn!(
        "lost TCP streaming connection with remote peer",
        "stream-writer-type" => ConnectionKind::Raft.to_string(),
        "local-member-id" => format_id(inner.member_id()),
        "remote-peer-id" => format_id(link.id),
        "error" => reason
    );
    inner.report(PeerIncoming::Unreachable(link.id));
}

/// One connection attempt to the link's current URL; the next attempt tries the next URL
/// after a failure.
async fn dial_link(inner: &Rc<Inner>, link: &Rc<Link>, number: u64) -> DialOutcome {
    let url = {
        let urls = link.urls.borrow();
        if urls.is_empty() {
            return DialOutcome::Failed("no peer URLs".into());
        }
        urls[link.next_url.get() % urls.len()].clone()
    };
    log_debug!(
        "dial stream writer",
        "from" => format_id(inner.member_id()),
        "to" => format_id(link.id),
        "address" => url.raw.clone()
    );
    match open(inner, &url, ConnectionKind::Raft, link.id).await {
        Ok(opened) => {
            let reader_task = inner.tasks.spawn(watch_raft_connection(
                Rc::downgrade(inner),
                link.clone(),
                number,
                opened.reader,
            ));
            DialOutcome::Connected(RaftConnection {
                writer: opened.writer,
                number,
                reader_task,
                tasks: inner.tasks.clone(),
            })
        }
        Err(OpenError::Unreachable(reason)) => {
            link.next_url.set(link.next_url.get() + 1);
            DialOutcome::Failed(reason)
        }
        Err(OpenError::Refused(refusal, answer)) => {
            let error = refused(inner, link.id, refusal, &answer);
            if refusal == pb::Refusal::RemovedMember {
                DialOutcome::Removed
            } else {
                DialOutcome::Failed(match error {
                    PeerError::Refused(text) if refusal == pb::Refusal::UnknownSender => format!(
                        "peer {} failed to find local node {} ({text})",
                        format_id(link.id),
                        format_id(inner.member_id())
                    ),
                    other => other.to_string(),
                })
            }
        }
    }
}

/// Reads the listener's side of a raft connection, which sends only a goodbye (we were
/// removed) or closes; tells the writer when the connection ends.
async fn watch_raft_connection(
    inner: std::rc::Weak<Inner>,
    link: Rc<Link>,
    number: u64,
    mut reader: FrameReader<ReadHalf<BoxStream>>,
) {
    let reason = loop {
        match reader.next().await {
            Ok(Some(payload)) => match wire::decode_frame(payload) {
                Ok(pb::frame::Body::Ping(_)) => continue,
                Ok(pb::frame::Body::Goodbye(goodbye)) => {
                    let reason = pb::Refusal::try_from(goodbye.reason).unwrap_or_default();
                    if reason == pb::Refusal::RemovedMember {
                        link.removed_us.set(true);
                        if let Some(inner) = inner.upgrade() {
                            inner.report_removed(link.id);
                        }
                    }
                    break format!(
                        "the peer closed the connection: {}",
                        wire::refusal_text(reason)
                    );
                }
                Ok(other) => {
                    break wire::WireError::Unexpected {
                        frame: wire::frame_name(&other),
                        kind: ConnectionKind::Raft,
                    }
                    .to_string()
                }
                Err(e) => break e.to_string(),
            },
            Ok(None) => break "EOF".to_string(),
            Err(e) => break e.to_string(),
        }
    };
    *link.lost.borrow_mut() = Some((number, reason));
    link.wake();
}

// ---------------------------------------------------------------------------------------------
// The transport

/// The peer transport of this member. Lives on core 0 (it is `!Send`); the raft node calls
/// [`Transport`] on it. Dropping it stops the listeners, the links and every connection.
pub struct PeerTransport {
    inner: Rc<Inner>,
    listen_addrs: Vec<ListenAddr>,
    /// For snapshots, which go through the client's own connections.
    client: PeerClient,
}

impl PeerTransport {
    /// Binds every listen URL and starts accepting. Must run on core 0's executor; the
    /// returned [`PeerClient`] may be cloned to any core.
    pub fn start(
        options: PeerOptions,
        inbox: flume::Sender<PeerIncoming>,
    ) -> anyhow::Result<(PeerTransport, PeerClient)> {
        let specs = net::group(&options.listen_urls, Role::Peer)?;
        let mut bound = Vec::new();
        let mut listen_addrs = Vec::new();
        for spec in &specs {
            if spec.secure && options.server_tls.is_none() {
                anyhow::bail!(
                    "cannot listen on TLS for {}: KeyFile and CertFile are not presented",
                    spec.addr
                );
            }
            net::prepare_unix(spec)?;
            let listener = net::bind(spec)
                .map_err(|e| anyhow::anyhow!("listening for peers on {}: {e}", spec.addr))?;
            let addr = match &listener {
                net::Listener::Tcp(l) => {
                    ListenAddr::Tcp(l.local_addr().map_err(std::io::Error::from)?)
                }
                net::Listener::Unix(_) => spec.addr.clone(),
            };
            listen_addrs.push(addr);
            bound.push((listener, spec.clone()));
        }
        let snapshot_queue = glommio::executor().create_task_queue(
            glommio::Shares::Static(250),
            glommio::Latency::NotImportant,
            "peer-snapshots",
        );
        let inner = Inner::new(options, inbox, Some(snapshot_queue));
        for ((listener, spec), addr) in bound.into_iter().zip(&listen_addrs) {
            let policy = Rc::new(conn::AcceptPolicy {
                tls: if spec.secure {
                    inner.options.server_tls.clone()
                } else {
                    None
                },
                insecure: spec.insecure,
                skip_client_san_verify: inner.options.skip_client_san_verify,
            });
            log_info!("serving peer traffic", "address" => addr.to_string());
            inner.tasks.spawn(super::listener::accept_loop(
                inner.clone(),
                listener,
                policy,
            ));
        }
        let client = super::client::start(&inner);
        Ok((
            PeerTransport {
                inner,
                listen_addrs,
                client: client.clone(),
            },
            client,
        ))
    }

    /// Where each listen URL is bound (with the port the kernel chose for port 0).
    pub fn listen_addrs(&self) -> &[ListenAddr] {
        &self.listen_addrs
    }

    pub fn stats(&self) -> PeerStats {
        *self.inner.stats.borrow()
    }

    pub fn member_id(&self) -> u64 {
        self.inner.member_id()
    }

    /// Sets this member's identity once it is known (a joining member learns its ID and the
    /// cluster ID from its peers); later handshakes use it.
    pub fn set_identity(&self, member_id: u64, cluster_id: u64) {
        self.inner.member_id.set(member_id);
        self.inner.cluster_id.set(cluster_id);
    }

    /// Messages queued for `id`, for tests.
    pub fn queued(&self, id: u64) -> usize {
        self.inner
            .links
            .borrow()
            .get(&id)
            .map_or(0, |l| l.queue.borrow().len())
    }

    fn stop_link(&self, id: u64) {
        let link = self.inner.links.borrow_mut().remove(&id);
        if let Some(link) = link {
            self.inner.tasks.cancel(link.writer_task.get());
            let dropped = link.clear();
            self.inner
                .stat(|s| s.messages_dropped_unreachable += dropped as u64);
        }
        self.inner.requests.close(id);
    }
}

impl Drop for PeerTransport {
    fn drop(&mut self) {
        self.inner.tasks.shutdown();
        self.inner.links.borrow_mut().clear();
        self.inner.incoming.borrow_mut().clear();
        self.inner.requests.close_all();
    }
}

impl Transport for PeerTransport {
    fn send_snapshot(&mut self, to: u64, meta: Bytes, mut source: Box<dyn SnapshotSource>) {
        let client = self.client.clone();
        let inbox = self.inner.inbox.clone();
        self.inner.tasks.spawn(async move {
            // The source is read only as the connection takes chunks: a few in flight at most.
            let (chunks_tx, chunks) = flume::bounded(super::SNAPSHOT_CHUNKS_AHEAD);
            let send = client.send_snapshot(to, meta, chunks);
            let pump = async move {
                while let Some(chunk) = source.next_chunk() {
                    if chunks_tx.send_async(chunk).await.is_err() {
                        break;
                    }
                }
            };
            let (result, ()) = futures::join!(send, pump);
            let _ = inbox
                .send_async(PeerIncoming::SnapshotStatus {
                    to,
                    result: result.map_err(|e| e.to_string()),
                })
                .await;
        });
    }

    fn send(&mut self, msgs: Vec<Message>) {
        let inner = &self.inner;
        let mut unreachable: Vec<u64> = Vec::new();
        for message in msgs {
            let link = inner.links.borrow().get(&message.to).cloned();
            let Some(link) = link else {
                inner.stat(|s| s.messages_dropped_other += 1);
                log_debug!(
                    "dropped a raft message to a member that is not a peer",
                    "local-member-id" => format_id(inner.member_id()),
                    "to" => format_id(message.to)
                );
                continue;
            };
            if link.removed_us.get() {
                inner.stat(|s| s.messages_dropped_unreachable += 1);
                continue;
            }
            let bytes = wire::encode_raft_message(&message);
            if bytes.len() + wire::FRAME_OVERHEAD_BYTES_MAX > inner.options.frame_bytes_max {
                inner.stat(|s| s.messages_dropped_other += 1);
                log_warn!(
                    "dropped a raft message larger than the peer frame limit",
                    "message-type" => format!("{:?}", message.get_msg_type()),
                    "remote-peer-id" => format_id(link.id),
                    "bytes" => bytes.len(),
                    "limit" => inner.options.frame_bytes_max
                );
                continue;
            }
            if !link.push(bytes, &inner.options) {
                inner.stat(|s| s.messages_dropped_queue_full += 1);
                link.log_drop(inner, &message);
                if !unreachable.contains(&link.id) {
                    unreachable.push(link.id);
                }
            }
        }
        // As etcd does on a full buffer: raft backs off from optimistic replication.
        for id in unreachable {
            inner.report(PeerIncoming::Unreachable(id));
        }
    }

    fn set_peers(&mut self, peers: &[(u64, Vec<String>)]) {
        let me = self.inner.member_id();
        let mut wanted: HashMap<u64, (Vec<String>, Vec<Url>)> = HashMap::new();
        for (id, raw) in peers {
            if *id == me || *id == 0 {
                continue;
            }
            let urls = raw
                .iter()
                .filter_map(|u| match Url::parse(u) {
                    Ok(url) => Some(url),
                    Err(e) => {
                        log_warn!(
                            "ignoring an invalid peer URL",
                            "remote-peer-id" => format_id(*id),
                            "url" => u.clone(),
                            "error" => e
                        );
                        None
                    }
                })
                .collect();
            wanted.insert(*id, (raw.clone(), urls));
        }
        let gone: Vec<u64> = self
            .inner
            .links
            .borrow()
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            self.stop_link(id);
            log_info!(
                "removed remote peer",
                "local-member-id" => format_id(me),
                "removed-remote-peer-id" => format_id(id)
            );
        }
        for (id, (raw, urls)) in wanted {
            let existing = self.inner.links.borrow().get(&id).cloned();
            match existing {
                Some(link) => {
                    if *link.urls.borrow() != urls {
                        *link.urls.borrow_mut() = urls;
                        link.next_url.set(0);
                        log_info!(
                            "updated remote peer",
                            "local-member-id" => format_id(me),
                            "updated-remote-peer-id" => format_id(id),
                            "updated-remote-peer-urls" => raw
                        );
                    }
                }
                None => {
                    log_info!("starting remote peer", "remote-peer-id" => format_id(id));
                    let link = Rc::new(Link::new(id, urls));
                    let task = self
                        .inner
                        .tasks
                        .spawn(run_link(self.inner.clone(), link.clone()));
                    link.writer_task.set(task);
                    self.inner.links.borrow_mut().insert(id, link);
                    log_info!("started remote peer", "remote-peer-id" => format_id(id));
                    log_info!(
                        "added remote peer",
                        "local-member-id" => format_id(me),
                        "remote-peer-id" => format_id(id),
                        "remote-peer-urls" => raw
                    );
                }
            }
        }
    }

    fn set_removed(&mut self, ids: &[u64]) {
        let fresh: Vec<u64> = {
            let mut removed = self.inner.removed.borrow_mut();
            ids.iter()
                .copied()
                .filter(|id| removed.insert(*id))
                .collect()
        };
        for id in &fresh {
            self.stop_link(*id);
        }
        // Connections a removed member already has are closed with a goodbye, so it learns
        // it was removed even if it never dials again.
        let stops: Vec<_> = self
            .inner
            .incoming
            .borrow_mut()
            .values_mut()
            .filter(|entry| fresh.contains(&entry.from))
            .filter_map(|entry| entry.stop.take())
            .collect();
        for stop in stops {
            let _ = stop.send(Some(pb::Refusal::RemovedMember));
        }
    }
}
