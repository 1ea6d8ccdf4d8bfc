//! The accepting side of the peer transport on core 0: accepts on every `--listen-peer-urls`
//! address, checks the handshake (etcd's refusals and log lines), and serves raft, request and
//! snapshot connections into the raft node's inbox.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use futures::future::Either;
use futures::io::{ReadHalf, WriteHalf};
use futures::{AsyncReadExt, FutureExt};
use glommio::sync::Semaphore;

use super::conn::{self, AcceptPolicy, Accepted, BoxStream, FrameReader};
use super::transport::{
    IncomingEntry, Inner, KEEPALIVE_INTERVAL, MIN_CLUSTER_VERSION, READ_IDLE_TIMEOUT, WRITE_TIMEOUT,
};
use super::wire::{self, pb, ConnectionKind, ListenerView};
use super::{PeerError, PeerIncoming};
use crate::ids::format_id;
use crate::net::tls::HANDSHAKE_TIMEOUT;

/// Requests of one connection being answered at once, at most. Full: the connection's reader
/// stops reading until an answer goes out, so the dialer's TCP window closes (and its own
/// in-flight bound makes its callers wait).
pub const REQUESTS_IN_FLIGHT_MAX: usize = 64;

/// Snapshot chunks received but not yet taken by the raft node, at most. Full: the
/// connection's reader waits, and TCP flow control slows the sender.
pub const SNAPSHOT_CHUNKS_AHEAD: usize = 4;

/// A snapshot stream whose sender neither sends a chunk nor pings for this long, or whose
/// frame write blocks this long, is broken.
pub const SNAPSHOT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn accept_loop(
    inner: Rc<Inner>,
    listener: crate::net::Listener,
    policy: Rc<AcceptPolicy>,
) {
    match listener {
        crate::net::Listener::Tcp(l) => loop {
            match l.accept().await {
                Ok(stream) => {
                    conn::tune_accepted(&stream);
                    let remote = stream
                        .peer_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    inner.tasks.spawn(serve_connection(
                        inner.clone(),
                        stream,
                        remote,
                        policy.clone(),
                    ));
                }
                Err(e) => accept_failed(e.into()).await,
            }
        },
        crate::net::Listener::Unix(l) => loop {
            match l.accept().await {
                Ok(stream) => {
                    inner.tasks.spawn(serve_connection(
                        inner.clone(),
                        stream,
                        "@".into(),
                        policy.clone(),
                    ));
                }
                Err(e) => accept_failed(e.into()).await,
            }
        },
    }
}

async fn accept_failed(e: std::io::Error) {
    // Running out of descriptors is transient; back off instead of spinning.
    log_warn!("failed to accept a peer connection", "error" => e.to_string());
    glommio::timer::sleep(Duration::from_millis(50)).await;
}

type Reader = FrameReader<ReadHalf<BoxStream>>;
type Writer = WriteHalf<BoxStream>;
type Stop = oneshot::Receiver<Option<pb::Refusal>>;

/// Removes a connection from the registry when it ends, however it ends.
struct Registered {
    inner: Rc<Inner>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.inner.incoming.borrow_mut().remove(&self.id);
    }
}

async fn serve_connection<S: Accepted>(
    inner: Rc<Inner>,
    stream: S,
    remote: String,
    policy: Rc<AcceptPolicy>,
) {
    let Some(stream) = conn::secure_server(stream, &remote, &policy).await else {
        return;
    };
    let (read_half, mut writer) = stream.split();
    let mut reader = FrameReader::new(read_half, wire::HANDSHAKE_FRAME_BYTES_MAX);
    let hello = async {
        let preamble = reader.read_prefix(wire::PREAMBLE.len()).await?;
        wire::check_preamble(&preamble)?;
        match reader.next().await? {
            Some(payload) => Ok(wire::decode_handshake(payload)?),
            None => Err(conn::ReadError::Wire(wire::WireError::Truncated {
                have: 0,
                need: wire::FRAME_HEADER_BYTES,
            })),
        }
    };
    let handshake = match conn::with_timeout(HANDSHAKE_TIMEOUT, hello).await {
        Some(Ok(h)) => h,
        Some(Err(e)) => {
            log_debug!(
                "closed a peer connection without a valid handshake",
                "remote-addr" => remote.as_str(),
                "error" => e.to_string()
            );
            return;
        }
        None => return,
    };
    let verdict = {
        let links = inner.links.borrow();
        let removed = inner.removed.borrow();
        let is_peer = |id: u64| links.contains_key(&id);
        let is_removed = |id: u64| removed.contains(&id);
        wire::check_handshake(
            &handshake,
            &ListenerView {
                member_id: inner.member_id(),
                cluster_id: inner.cluster_id.get(),
                is_peer: &is_peer,
                is_removed: &is_removed,
            },
        )
    };
    let refusal = verdict.err().unwrap_or(pb::Refusal::None);
    let answer = pb::HandshakeAnswer {
        refusal: refusal as i32,
        cluster_id: inner.cluster_id.get(),
        member_id: inner.member_id(),
        detail: wire::refusal_text(refusal).to_string(),
    };
    let mut bytes = BytesMut::new();
    wire::encode_frame(&answer, wire::HANDSHAKE_FRAME_BYTES_MAX, &mut bytes)
        .expect("an answer is small");
    let written = conn::write_within(&mut writer, &bytes, WRITE_TIMEOUT).await;
    let kind = match verdict {
        Ok(kind) => kind,
        Err(refusal) => {
            inner.stat(|s| s.handshakes_refused += 1);
            log_refusal(&inner, &handshake, refusal);
            return;
        }
    };
    if let Err(e) = written {
        log_debug!("failed to answer a peer handshake", "remote-addr" => remote.as_str(), "error" => e.to_string());
        return;
    }
    reader.set_limit(inner.options.frame_bytes_max);

    let from = handshake.from;
    let (stop_tx, stop) = oneshot::channel();
    let id = inner.next_incoming.get();
    inner.next_incoming.set(id + 1);
    let replaced: Vec<_> = if kind == ConnectionKind::Raft {
        // A peer has one raft connection to us: a new one replaces the old (it reconnected
        // before we noticed the old one died), as etcd's attachOutgoingConn does.
        inner
            .incoming
            .borrow_mut()
            .values_mut()
            .filter(|e| e.from == from && e.kind == ConnectionKind::Raft)
            .filter_map(|e| e.stop.take())
            .collect()
    } else {
        Vec::new()
    };
    for stop in replaced {
        let _ = stop.send(None);
    }
    inner.incoming.borrow_mut().insert(
        id,
        IncomingEntry {
            from,
            kind,
            stop: Some(stop_tx),
        },
    );
    let _registered = Registered {
        inner: inner.clone(),
        id,
    };
    match kind {
        ConnectionKind::Raft => serve_raft(&inner, from, reader, writer, stop).await,
        ConnectionKind::Request => serve_requests(&inner, from, reader, writer, stop).await,
        ConnectionKind::Snapshot => serve_snapshot(&inner, from, reader, writer, stop).await,
    }
}

/// etcd's log line for each refusal, on the listener's side.
fn log_refusal(inner: &Inner, handshake: &pb::Handshake, refusal: pb::Refusal) {
    let local = format_id(inner.member_id());
    let from = format_id(handshake.from);
    match refusal {
        pb::Refusal::ClusterIdMismatch => log_warn!(
            "request cluster ID mismatch",
            "local-member-id" => local,
            "local-member-cluster-id" => format_id(inner.cluster_id.get()),
            "local-member-server-version" => crate::config::ETCD_VERSION,
            "local-member-server-minimum-cluster-version" => MIN_CLUSTER_VERSION,
            "remote-peer-server-name" => from,
            "remote-peer-server-version" => handshake.server_version.clone(),
            "remote-peer-server-minimum-cluster-version" => handshake.min_cluster_version.clone(),
            "remote-peer-cluster-id" => format_id(handshake.cluster_id)
        ),
        pb::Refusal::RemovedMember => log_warn!(
            "rejected stream from remote peer because it was removed",
            "local-member-id" => local.clone(),
            "remote-peer-id-stream-handler" => local,
            "remote-peer-id-from" => from
        ),
        pb::Refusal::UnknownSender => log_warn!(
            "failed to find remote peer in cluster",
            "local-member-id" => local.clone(),
            "remote-peer-id-stream-handler" => local,
            "remote-peer-id-from" => from,
            "cluster-id" => format_id(inner.cluster_id.get())
        ),
        pb::Refusal::ReceiverMismatch => log_warn!(
            "ignored streaming request; ID mismatch",
            "local-member-id" => local.clone(),
            "remote-peer-id-stream-handler" => local,
            "remote-peer-id-header" => format_id(handshake.to),
            "remote-peer-id-from" => from,
            "cluster-id" => format_id(inner.cluster_id.get())
        ),
        pb::Refusal::VersionUnsupported => log_warn!(
            "failed to check version compatibility",
            "local-member-id" => local,
            "local-member-cluster-id" => format_id(inner.cluster_id.get()),
            "local-member-server-version" => crate::config::ETCD_VERSION,
            "remote-peer-server-name" => from,
            "remote-peer-server-version" => handshake.server_version.clone(),
            "remote-peer-protocol-version" => handshake.protocol_version,
            "error" => wire::refusal_text(refusal)
        ),
        pb::Refusal::UnknownKind | pb::Refusal::ShuttingDown | pb::Refusal::None => log_warn!(
            "ignored a peer connection of an unknown kind",
            "local-member-id" => local,
            "remote-peer-id-from" => from,
            "kind" => handshake.kind
        ),
    }
}

/// Writes a goodbye frame (best effort: the connection closes either way).
async fn goodbye(writer: &mut Writer, reason: pb::Refusal) {
    let mut bytes = BytesMut::new();
    let body = pb::frame::Body::Goodbye(pb::Goodbye {
        reason: reason as i32,
        detail: wire::refusal_text(reason).to_string(),
    });
    if wire::encode_body(body, usize::MAX, &mut bytes).is_ok() {
        let _ = conn::write_within(writer, &bytes, WRITE_TIMEOUT).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Raft

async fn serve_raft(
    inner: &Rc<Inner>,
    from: u64,
    mut reader: Reader,
    mut writer: Writer,
    mut stop: Stop,
) {
    let local = format_id(inner.member_id());
    log_info!(
        "established TCP streaming connection with remote peer",
        "stream-reader-type" => ConnectionKind::Raft.to_string(),
        "local-member-id" => local.clone(),
        "remote-peer-id" => format_id(from)
    );
    let end: String = loop {
        let next = std::pin::pin!(reader.next_within(READ_IDLE_TIMEOUT));
        let payload = match futures::future::select(next, &mut stop).await {
            Either::Left((Ok(Some(payload)), _)) => payload,
            Either::Left((Ok(None), _)) => break "EOF".into(),
            Either::Left((Err(e), _)) => break e.to_string(),
            Either::Right((Ok(Some(reason)), _)) => {
                goodbye(&mut writer, reason).await;
                break wire::refusal_text(reason).into();
            }
            Either::Right(_) => break "replaced by a newer connection".into(),
        };
        let batch = match wire::decode_frame(payload) {
            Ok(pb::frame::Body::Raft(batch)) => batch,
            Ok(pb::frame::Body::Ping(_)) => continue,
            Ok(other) => {
                break wire::WireError::Unexpected {
                    frame: wire::frame_name(&other),
                    kind: ConnectionKind::Raft,
                }
                .to_string()
            }
            Err(e) => break e.to_string(),
        };
        let messages = match wire::decode_raft_batch(batch) {
            Ok(m) => m,
            Err(e) => {
                log_warn!(
                    "failed to unmarshal Raft message",
                    "local-member-id" => local.clone(),
                    "error" => e.to_string()
                );
                break e.to_string();
            }
        };
        if inner.is_removed(from) {
            log_warn!(
                "rejected Raft message from removed member",
                "local-member-id" => local.clone(),
                "removed-member-id" => format_id(from)
            );
            goodbye(&mut writer, pb::Refusal::RemovedMember).await;
            break wire::refusal_text(pb::Refusal::RemovedMember).into();
        }
        let me = inner.member_id();
        let mut accepted = Vec::with_capacity(messages.len());
        for m in messages {
            if m.to != me {
                log_warn!(
                    "rejected Raft message to mismatch member",
                    "local-member-id" => local.clone(),
                    "mismatch-member-id" => format_id(m.to)
                );
            } else if m.from != from {
                // The handshake said who is on the other end; a message claiming another
                // sender would let one member speak for another.
                log_warn!(
                    "rejected Raft message from another member than the connection's",
                    "local-member-id" => local.clone(),
                    "remote-peer-id" => format_id(from),
                    "message-from" => format_id(m.from)
                );
            } else {
                accepted.push(m);
            }
        }
        if accepted.is_empty() {
            continue;
        }
        let count = accepted.len() as u64;
        inner.stat(|s| {
            s.messages_received += count;
            s.batches_received += 1;
        });
        // The inbox is bounded: waiting here stops reading, TCP pushes back, and the sender's
        // bounded queue drops what raft will resend.
        if inner
            .inbox
            .send_async(PeerIncoming::Raft(accepted))
            .await
            .is_err()
        {
            break "the raft node stopped".into();
        }
    };
    log_warn!(
        "lost TCP streaming connection with remote peer",
        "stream-reader-type" => ConnectionKind::Raft.to_string(),
        "local-member-id" => local,
        "remote-peer-id" => format_id(from),
        "error" => end
    );
}

// ---------------------------------------------------------------------------------------------
// Requests

/// A frame for a connection's writer task; the writer stops after a `Last`.
pub(super) enum Outgoing {
    Frame(Bytes),
    Last(Bytes),
}

/// Frames written at once by a writer task, at most: what is queued is coalesced into one
/// write up to this size.
const WRITE_COALESCE_BYTES_MAX: usize = 1 << 20;

/// Writes the frames it is given, coalescing what is queued into one write; ends at the first
/// error, after a `Last`, or when every sender is gone. Returns the error, if any.
pub(super) async fn write_frames(
    mut writer: Writer,
    frames: async_channel::Receiver<Outgoing>,
) -> Option<std::io::Error> {
    while let Ok(first) = frames.recv().await {
        let mut last = false;
        let mut bytes = BytesMut::new();
        let mut take = |item: Outgoing, bytes: &mut BytesMut| match item {
            Outgoing::Frame(b) => bytes.extend_from_slice(&b),
            Outgoing::Last(b) => {
                bytes.extend_from_slice(&b);
                last = true;
            }
        };
        take(first, &mut bytes);
        while bytes.len() < WRITE_COALESCE_BYTES_MAX {
            match frames.try_recv() {
                Ok(item) => take(item, &mut bytes),
                Err(_) => break,
            }
        }
        if let Err(e) = conn::write_within(&mut writer, &bytes, WRITE_TIMEOUT).await {
            return Some(e);
        }
        if last {
            return None;
        }
    }
    None
}

async fn serve_requests(
    inner: &Rc<Inner>,
    from: u64,
    mut reader: Reader,
    writer: Writer,
    mut stop: Stop,
) {
    let (out, frames) = async_channel::bounded::<Outgoing>(REQUESTS_IN_FLIGHT_MAX + 1);
    inner.tasks.spawn(async move {
        write_frames(writer, frames).await;
    });
    let slots = Rc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX as u64));
    loop {
        let next = std::pin::pin!(reader.next());
        let payload = match futures::future::select(next, &mut stop).await {
            Either::Left((Ok(Some(payload)), _)) => payload,
            Either::Left(_) => break,
            Either::Right((Ok(Some(reason)), _)) => {
                let mut bytes = BytesMut::new();
                let body = pb::frame::Body::Goodbye(pb::Goodbye {
                    reason: reason as i32,
                    detail: wire::refusal_text(reason).to_string(),
                });
                if wire::encode_body(body, usize::MAX, &mut bytes).is_ok() {
                    let _ = out.send(Outgoing::Last(bytes.freeze())).await;
                }
                break;
            }
            Either::Right(_) => break,
        };
        let request = match wire::decode_frame(payload) {
            Ok(pb::frame::Body::Request(r)) => r,
            Ok(pb::frame::Body::Ping(_)) => continue,
            Ok(other) => {
                log_warn!(
                    "closed a peer request connection after an unexpected frame",
                    "remote-peer-id" => format_id(from),
                    "frame" => wire::frame_name(&other)
                );
                break;
            }
            Err(e) => {
                log_warn!(
                    "closed a peer request connection after an undecodable frame",
                    "remote-peer-id" => format_id(from),
                    "error" => e.to_string()
                );
                break;
            }
        };
        let Ok(permit) = slots.clone().acquire_static_permit(1).await else {
            break;
        };
        let (reply, answer) = oneshot::channel();
        let incoming = PeerIncoming::Request {
            from,
            body: request.body,
            reply,
        };
        if inner.inbox.send_async(incoming).await.is_err() {
            break;
        }
        let out = out.clone();
        let frame_limit = inner.options.frame_bytes_max;
        inner.tasks.spawn(async move {
            let response = match answer.await {
                Ok(body) => pb::Response {
                    id: request.id,
                    body,
                    error: String::new(),
                },
                Err(_) => pb::Response {
                    id: request.id,
                    body: Bytes::new(),
                    error: "the peer dropped the request without answering".into(),
                },
            };
            let mut bytes = BytesMut::new();
            let id = response.id;
            if let Err(e) =
                wire::encode_body(pb::frame::Body::Response(response), frame_limit, &mut bytes)
            {
                let fallback = pb::Response {
                    id,
                    body: Bytes::new(),
                    error: format!("the answer does not fit in a frame: {e}"),
                };
                bytes.clear();
                wire::encode_body(pb::frame::Body::Response(fallback), usize::MAX, &mut bytes)
                    .expect("a short error fits");
            }
            let _ = out.send(Outgoing::Frame(bytes.freeze())).await;
            drop(permit);
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshots

/// The raft node's end of a snapshot's chunks. Only a verified stream ends with the empty
/// chunk (`PeerIncoming::Snapshot`'s end marker); a stream that breaks ends with an error when
/// there is room for one, and in any case without the marker, even when its task is dropped
/// (the transport stopped).
struct ChunkSender {
    tx: Option<flume::Sender<Result<Bytes, PeerError>>>,
    /// The raft node dropped its receiver: chunks are read and discarded.
    consumer_gone: bool,
}

impl ChunkSender {
    async fn send(&mut self, chunk: Bytes) {
        // An empty chunk would read as the end marker; it carries nothing anyway.
        if self.consumer_gone || chunk.is_empty() {
            return;
        }
        let tx = self.tx.as_ref().expect("not finished");
        if tx.send_async(Ok(chunk)).await.is_err() {
            self.consumer_gone = true;
        }
    }

    /// Ends the stream cleanly: the checksum matched.
    async fn finish(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send_async(Ok(Bytes::new())).await;
        }
    }

    async fn fail(&mut self, error: PeerError) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send_async(Err(error)).await;
        }
    }
}

impl Drop for ChunkSender {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            // Best effort: without the end marker the stream reads as broken anyway.
            let _ = tx.try_send(Err(PeerError::Broken(
                "the snapshot stream ended early".into(),
            )));
        }
    }
}

/// The go-humanize size etcd logs next to byte counts ("52 MB").
pub(super) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 10 {
        return format!("{bytes} B");
    }
    let exponent = ((bytes as f64).ln() / 1000f64.ln()).floor() as usize;
    let exponent = exponent.min(UNITS.len() - 1);
    let value = bytes as f64 / 1000f64.powi(exponent as i32);
    let rounded = (value * 10.0 + 0.5).floor() / 10.0;
    if rounded < 10.0 {
        format!("{rounded:.1} {}", UNITS[exponent])
    } else {
        format!("{rounded:.0} {}", UNITS[exponent])
    }
}

async fn write_done(writer: &mut Writer, result: &Result<(), String>) -> std::io::Result<()> {
    let done = pb::SnapshotDone {
        ok: result.is_ok(),
        error: result.as_ref().err().cloned().unwrap_or_default(),
    };
    let mut bytes = BytesMut::new();
    wire::encode_body(pb::frame::Body::SnapshotDone(done), usize::MAX, &mut bytes)
        .expect("unbounded");
    conn::write_within(writer, &bytes, WRITE_TIMEOUT).await
}

async fn serve_snapshot(
    inner: &Rc<Inner>,
    from: u64,
    mut reader: Reader,
    mut writer: Writer,
    mut stop: Stop,
) {
    let local = format_id(inner.member_id());
    let sender = format_id(from);
    let meta = match reader.next_within(READ_IDLE_TIMEOUT).await {
        Ok(Some(payload)) => match wire::decode_frame(payload) {
            Ok(pb::frame::Body::SnapshotMeta(m)) => m.meta,
            Ok(other) => {
                log_warn!(
                    "unexpected Raft message type",
                    "local-member-id" => local,
                    "remote-snapshot-sender-id" => sender,
                    "message-type" => wire::frame_name(&other)
                );
                return;
            }
            Err(e) => {
                log_warn!(
                    "failed to decode Raft message",
                    "local-member-id" => local,
                    "remote-snapshot-sender-id" => sender,
                    "error" => e.to_string()
                );
                return;
            }
        },
        _ => return,
    };
    let started = Instant::now();
    log_info!(
        "receiving database snapshot",
        "local-member-id" => local.clone(),
        "remote-snapshot-sender-id" => sender.clone(),
        "incoming-snapshot-message-size-bytes" => meta.len(),
        "incoming-snapshot-message-size" => human_bytes(meta.len() as u64)
    );
    let (chunks_tx, chunks) = flume::bounded(SNAPSHOT_CHUNKS_AHEAD);
    let (done, mut answer) = oneshot::channel::<Result<(), String>>();
    let mut chunk_sender = ChunkSender {
        tx: Some(chunks_tx),
        consumer_gone: false,
    };
    let incoming = PeerIncoming::Snapshot {
        from,
        meta,
        chunks,
        done,
    };
    if inner.inbox.send_async(incoming).await.is_err() {
        return;
    }
    let mut crc = 0u32;
    let mut total = 0u64;
    // Chunks until the end frame, unless the raft node answers first or we must stop.
    let streamed: Result<(), String> = loop {
        let next = reader.next_within(READ_IDLE_TIMEOUT).fuse();
        let mut next = std::pin::pin!(next);
        futures::select_biased! {
            result = next => match result {
                Ok(Some(payload)) => match wire::decode_frame(payload) {
                    Ok(pb::frame::Body::SnapshotChunk(chunk)) => {
                        crc = wire::snapshot_crc(crc, &chunk.data);
                        total += chunk.data.len() as u64;
                        chunk_sender.send(chunk.data).await;
                    }
                    Ok(pb::frame::Body::Ping(_)) => {}
                    Ok(pb::frame::Body::SnapshotEnd(end)) => {
                        if end.total_bytes != total || end.crc32c != crc {
                            let error = format!(
                                "snapshot checksum mismatch: received {total} bytes with CRC-32C {crc:08x}, the sender sent {} bytes with CRC-32C {:08x}",
                                end.total_bytes, end.crc32c
                            );
                            chunk_sender.fail(PeerError::Broken(error.clone())).await;
                            break Err(error);
                        }
                        chunk_sender.finish().await;
                        break Ok(());
                    }
                    Ok(other) => {
                        let error = wire::WireError::Unexpected {
                            frame: wire::frame_name(&other),
                            kind: ConnectionKind::Snapshot,
                        }
                        .to_string();
                        chunk_sender.fail(PeerError::Broken(error.clone())).await;
                        break Err(error);
                    }
                    Err(e) => {
                        chunk_sender.fail(PeerError::Broken(e.to_string())).await;
                        break Err(e.to_string());
                    }
                },
                Ok(None) => {
                    chunk_sender.fail(PeerError::Broken("EOF".into())).await;
                    log_snapshot_failed(&local, &sender, "EOF");
                    return;
                }
                Err(e) => {
                    chunk_sender.fail(PeerError::Broken(e.to_string())).await;
                    log_snapshot_failed(&local, &sender, &e.to_string());
                    return;
                }
            },
            early = answer => {
                // The raft node decided before the end (it refused the snapshot).
                let result = early.unwrap_or_else(|_| Err("the receiver dropped the snapshot".into()));
                chunk_sender.fail(PeerError::Broken("the receiver ended the snapshot early".into())).await;
                let _ = write_done(&mut writer, &result).await;
                if let Err(e) = &result {
                    log_snapshot_failed(&local, &sender, e);
                }
                return;
            },
            reason = stop => {
                chunk_sender.fail(PeerError::Broken("the connection was closed".into())).await;
                if let Ok(Some(reason)) = reason {
                    goodbye(&mut writer, reason).await;
                }
                return;
            },
        }
    };
    let result = match streamed {
        Err(e) => Err(e),
        Ok(()) => loop {
            // The raft node stores the snapshot; ping meanwhile so the sender knows we live.
            let wait = conn::with_timeout(KEEPALIVE_INTERVAL, &mut answer).fuse();
            let mut wait = std::pin::pin!(wait);
            futures::select_biased! {
                answered = wait => match answered {
                    Some(Ok(result)) => break result,
                    Some(Err(_)) => break Err("the receiver dropped the snapshot".into()),
                    None => {
                        let mut ping = BytesMut::new();
                        wire::encode_body(pb::frame::Body::Ping(pb::Ping {}), usize::MAX, &mut ping)
                            .expect("unbounded");
                        if conn::write_within(&mut writer, &ping, WRITE_TIMEOUT).await.is_err() {
                            return;
                        }
                    }
                },
                reason = stop => {
                    if let Ok(Some(reason)) = reason {
                        goodbye(&mut writer, reason).await;
                    }
                    return;
                },
            }
        },
    };
    let _ = write_done(&mut writer, &result).await;
    match result {
        Ok(()) => log_info!(
            "received and saved database snapshot",
            "local-member-id" => local,
            "remote-snapshot-sender-id" => sender,
            "incoming-snapshot-size-bytes" => total,
            "incoming-snapshot-size" => human_bytes(total),
            "download-took" => format!("{:?}", started.elapsed())
        ),
        Err(e) => log_snapshot_failed(&local, &sender, &e),
    }
}

fn log_snapshot_failed(local: &str, sender: &str, error: &str) {
    log_warn!(
        "failed to save incoming database snapshot",
        "local-member-id" => local,
        "remote-snapshot-sender-id" => sender,
        "error" => error
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_bytes_reads_like_go_humanize() {
        use super::human_bytes;
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(9), "9 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1000), "1.0 kB");
        assert_eq!(human_bytes(52_428_800), "52 MB");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
    }
}
