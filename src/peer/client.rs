//! The dialing side of requests and snapshots: [`PeerClient`], a `Send + Clone` handle any core
//! may use, whose calls run on core 0 (one request connection per peer, bounded in flight; one
//! connection per snapshot stream, in the transport's snapshot task queue).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use futures::future::Either;
use glommio::sync::Semaphore;

use super::conn::{self, with_timeout};
use super::listener::{
    human_bytes, write_frames, Outgoing, REQUESTS_IN_FLIGHT_MAX, SNAPSHOT_STALL_TIMEOUT,
};
use super::transport::{open_any, Inner, Opened, KEEPALIVE_INTERVAL, READ_IDLE_TIMEOUT};
use super::wire::{self, pb, ConnectionKind};
use super::PeerError;
use crate::config::Url;
use crate::ids::format_id;

/// Calls and snapshot sends waiting for core 0 to take them, at most. Full: callers wait
/// (`send_async`) until core 0 takes one.
pub const JOBS_QUEUED_MAX: usize = 1024;

/// Calls and snapshot sends core 0 runs at once, at most. Full: core 0 stops taking jobs, so
/// the queue above fills and callers wait.
pub const JOBS_RUNNING_MAX: usize = 1024;

pub(super) enum Target {
    Member(u64),
    Url(String),
}

enum Job {
    Call {
        target: Target,
        body: Bytes,
        deadline: Instant,
        reply: oneshot::Sender<Result<Bytes, PeerError>>,
    },
    Snapshot {
        to: u64,
        meta: Bytes,
        chunks: flume::Receiver<Bytes>,
        reply: oneshot::Sender<Result<(), PeerError>>,
    },
}

/// Requests and snapshots to peers, from any core. Every method's future is `Send`; the work
/// runs on core 0, where the transport lives.
#[derive(Clone)]
pub struct PeerClient {
    jobs: flume::Sender<Job>,
}

fn stopped() -> PeerError {
    PeerError::Broken("the peer transport stopped".into())
}

impl PeerClient {
    /// Sends `body` to member `to` and waits for its answer, at most `timeout` (counted from
    /// this call; the time waiting for room in the queue to core 0 is not bounded by it, as
    /// that wait ends once core 0 takes jobs again).
    pub async fn call(&self, to: u64, body: Bytes, timeout: Duration) -> Result<Bytes, PeerError> {
        self.submit(Target::Member(to), body, timeout).await
    }

    /// As [`PeerClient::call`], to whichever member listens on `peer_url` (a joining member
    /// knows only its peers' URLs): the handshake names no receiver (ID 0). Uses a connection
    /// of its own, closed after the answer.
    pub async fn call_url(
        &self,
        peer_url: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, PeerError> {
        self.submit(Target::Url(peer_url.to_string()), body, timeout)
            .await
    }

    async fn submit(
        &self,
        target: Target,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, PeerError> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Call {
            target,
            body,
            deadline: Instant::now() + timeout,
            reply,
        };
        self.jobs.send_async(job).await.map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Streams a snapshot to member `to` on a connection of its own: `meta` first, then the
    /// chunks in order until the channel closes, then a CRC-32C over all chunk bytes. Resolves
    /// with the receiver's answer once it stored (or refused) the snapshot. Memory stays
    /// bounded: chunks are read from the caller's (bounded) channel only as the connection
    /// takes them. Raft messages keep flowing on their own connection meanwhile.
    pub async fn send_snapshot(
        &self,
        to: u64,
        meta: Bytes,
        chunks: flume::Receiver<Bytes>,
    ) -> Result<(), PeerError> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Snapshot {
            to,
            meta,
            chunks,
            reply,
        };
        self.jobs.send_async(job).await.map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// Starts core 0's side of the client.
pub(super) fn start(inner: &Rc<Inner>) -> PeerClient {
    let (jobs, queue) = flume::bounded(JOBS_QUEUED_MAX);
    inner.tasks.spawn(run_jobs(Rc::downgrade(inner), queue));
    PeerClient { jobs }
}

async fn run_jobs(inner: std::rc::Weak<Inner>, queue: flume::Receiver<Job>) {
    let running = Rc::new(Semaphore::new(JOBS_RUNNING_MAX as u64));
    while let Ok(job) = queue.recv_async().await {
        let Ok(permit) = running.acquire_static_permit(1).await else {
            return;
        };
        let Some(inner) = inner.upgrade() else { return };
        match job {
            Job::Call {
                target,
                body,
                deadline,
                reply,
            } => {
                let task_inner = inner.clone();
                inner.tasks.spawn(async move {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let call = call(&task_inner, target, body);
                    let result = with_timeout(left, call)
                        .await
                        .unwrap_or(Err(PeerError::Timeout));
                    let _ = reply.send(result);
                    drop(permit);
                });
            }
            Job::Snapshot {
                to,
                meta,
                chunks,
                reply,
            } => {
                let task_inner = inner.clone();
                inner.tasks.spawn_into(inner.snapshot_queue, async move {
                    let result = send_snapshot(&task_inner, to, meta, chunks).await;
                    let _ = reply.send(result);
                    drop(permit);
                });
            }
        }
    }
}

pub(super) async fn call(
    inner: &Rc<Inner>,
    target: Target,
    body: Bytes,
) -> Result<Bytes, PeerError> {
    match target {
        Target::Member(to) => {
            let connection = inner.requests.get_or_open(inner, to).await?;
            connection.call(body).await
        }
        Target::Url(raw) => {
            let url = Url::parse(&raw).map_err(|e| PeerError::Unreachable { id: 0, reason: e })?;
            let opened = open_any(
                inner,
                std::slice::from_ref(&url),
                ConnectionKind::Request,
                0,
            )
            .await?;
            // Closed however the call ends, the caller's timeout included.
            let connection = CloseOnDrop(RequestConnection::start(inner, 0, opened));
            connection.0.call(body).await
        }
    }
}

struct CloseOnDrop(Rc<RequestConnection>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

// ---------------------------------------------------------------------------------------------
// Request connections

/// The open request connection to each peer, and a lock per peer so concurrent first calls
/// dial once.
#[derive(Default)]
pub(super) struct RequestConnections {
    open: RefCell<HashMap<u64, Rc<RequestConnection>>>,
    dialing: RefCell<HashMap<u64, Rc<Semaphore>>>,
}

impl RequestConnections {
    async fn get_or_open(
        &self,
        inner: &Rc<Inner>,
        to: u64,
    ) -> Result<Rc<RequestConnection>, PeerError> {
        let lock = self
            .dialing
            .borrow_mut()
            .entry(to)
            .or_insert_with(|| Rc::new(Semaphore::new(1)))
            .clone();
        let _dialing = lock.acquire_permit(1).await.map_err(|_| stopped())?;
        let existing = self.open.borrow().get(&to).cloned();
        if let Some(connection) = existing {
            if connection.broken.borrow().is_none() {
                return Ok(connection);
            }
        }
        let urls = inner.peer_urls(to).ok_or(PeerError::UnknownPeer(to))?;
        let opened = open_any(inner, &urls, ConnectionKind::Request, to).await?;
        let connection = RequestConnection::start(inner, to, opened);
        if let Some(old) = self.open.borrow_mut().insert(to, connection.clone()) {
            old.close();
        }
        Ok(connection)
    }

    /// Closes the connection to `to` (it left the cluster); calls in flight fail.
    pub fn close(&self, to: u64) {
        let connection = self.open.borrow_mut().remove(&to);
        if let Some(connection) = connection {
            connection.close();
        }
        self.dialing.borrow_mut().remove(&to);
    }

    pub fn close_all(&self) {
        let all: Vec<_> = self.open.borrow_mut().drain().map(|(_, c)| c).collect();
        for connection in all {
            connection.close();
        }
    }
}

/// One request connection: requests go out through a writer task, answers come back through
/// a reader task and find their caller by correlation ID.
pub(super) struct RequestConnection {
    peer: u64,
    next_id: Cell<u64>,
    pending: RefCell<HashMap<u64, oneshot::Sender<Result<Bytes, PeerError>>>>,
    /// Requests in flight on this connection, at most [`REQUESTS_IN_FLIGHT_MAX`] (the
    /// listener answers that many at once). Full: callers wait for a slot, within their
    /// timeout.
    slots: Semaphore,
    out: async_channel::Sender<Outgoing>,
    broken: RefCell<Option<PeerError>>,
    frame_bytes_max: usize,
    tasks: Rc<super::transport::Tasks>,
    task_ids: Cell<(u64, u64)>,
}

/// Removes a call's entry when the caller stops waiting (its timeout fired).
struct PendingCall<'a> {
    connection: &'a RequestConnection,
    id: u64,
}

impl Drop for PendingCall<'_> {
    fn drop(&mut self) {
        self.connection.pending.borrow_mut().remove(&self.id);
    }
}

impl RequestConnection {
    fn start(inner: &Rc<Inner>, peer: u64, opened: Opened) -> Rc<RequestConnection> {
        let (out, frames) = async_channel::bounded(REQUESTS_IN_FLIGHT_MAX);
        let connection = Rc::new(RequestConnection {
            peer,
            next_id: Cell::new(1),
            pending: RefCell::new(HashMap::new()),
            slots: Semaphore::new(REQUESTS_IN_FLIGHT_MAX as u64),
            out,
            broken: RefCell::new(None),
            frame_bytes_max: inner.options.frame_bytes_max,
            tasks: inner.tasks.clone(),
            task_ids: Cell::new((0, 0)),
        });
        let writer = {
            let connection = connection.clone();
            let writer = opened.writer;
            inner.tasks.spawn(async move {
                if let Some(e) = write_frames(writer, frames).await {
                    connection.fail(PeerError::Broken(e.to_string()));
                }
            })
        };
        let reader = inner.tasks.spawn(read_responses(
            Rc::downgrade(inner),
            connection.clone(),
            opened.reader,
        ));
        connection.task_ids.set((writer, reader));
        connection
    }

    async fn call(&self, body: Bytes) -> Result<Bytes, PeerError> {
        if let Some(e) = self.broken.borrow().clone() {
            return Err(e);
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let mut frame = BytesMut::new();
        let bytes = body.len();
        wire::encode_body(
            pb::frame::Body::Request(pb::Request { id, body }),
            self.frame_bytes_max,
            &mut frame,
        )
        .map_err(|_| PeerError::TooLarge {
            bytes,
            limit: self.frame_bytes_max,
        })?;
        let _slot = self
            .slots
            .acquire_permit(1)
            .await
            .map_err(|_| self.broken_error())?;
        let (reply, answer) = oneshot::channel();
        self.pending.borrow_mut().insert(id, reply);
        let _pending = PendingCall {
            connection: self,
            id,
        };
        self.out
            .send(Outgoing::Frame(frame.freeze()))
            .await
            .map_err(|_| self.broken_error())?;
        answer.await.unwrap_or_else(|_| Err(self.broken_error()))
    }

    fn broken_error(&self) -> PeerError {
        self.broken
            .borrow()
            .clone()
            .unwrap_or_else(|| PeerError::Broken("the request connection closed".into()))
    }

    /// Fails every call in flight and every later call with `error`.
    fn fail(&self, error: PeerError) {
        if self.broken.borrow().is_some() {
            return;
        }
        *self.broken.borrow_mut() = Some(error.clone());
        self.slots.close();
        self.out.close();
        let pending: Vec<_> = self
            .pending
            .borrow_mut()
            .drain()
            .map(|(_, tx)| tx)
            .collect();
        for tx in pending {
            let _ = tx.send(Err(error.clone()));
        }
    }

    fn close(&self) {
        self.fail(PeerError::Broken("the request connection closed".into()));
        let (writer, reader) = self.task_ids.get();
        self.tasks.cancel(writer);
        self.tasks.cancel(reader);
    }
}

async fn read_responses(
    inner: std::rc::Weak<Inner>,
    connection: Rc<RequestConnection>,
    mut reader: conn::FrameReader<futures::io::ReadHalf<conn::BoxStream>>,
) {
    let error = loop {
        let payload = match reader.next().await {
            Ok(Some(payload)) => payload,
            Ok(None) => break PeerError::Broken("EOF".into()),
            Err(e) => break PeerError::Broken(e.to_string()),
        };
        match wire::decode_frame(payload) {
            Ok(pb::frame::Body::Response(response)) => {
                let waiting = connection.pending.borrow_mut().remove(&response.id);
                // A caller that timed out is gone; its late answer is dropped.
                if let Some(tx) = waiting {
                    let result = if response.error.is_empty() {
                        Ok(response.body)
                    } else {
                        Err(PeerError::Remote(response.error))
                    };
                    let _ = tx.send(result);
                }
            }
            Ok(pb::frame::Body::Ping(_)) => {}
            Ok(pb::frame::Body::Goodbye(goodbye)) => {
                let reason = pb::Refusal::try_from(goodbye.reason).unwrap_or_default();
                if reason == pb::Refusal::RemovedMember {
                    if let Some(inner) = inner.upgrade() {
                        inner.report_removed(connection.peer);
                    }
                }
                break PeerError::Refused(wire::refusal_text(reason).into());
            }
            Ok(other) => {
                break PeerError::Broken(
                    wire::WireError::Unexpected {
                        frame: wire::frame_name(&other),
                        kind: ConnectionKind::Request,
                    }
                    .to_string(),
                )
            }
            Err(e) => break PeerError::Broken(e.to_string()),
        }
    };
    connection.fail(error);
}

// ---------------------------------------------------------------------------------------------
// Snapshots

async fn send_snapshot(
    inner: &Rc<Inner>,
    to: u64,
    meta: Bytes,
    chunks: flume::Receiver<Bytes>,
) -> Result<(), PeerError> {
    let peer = format_id(to);
    let sent = Cell::new(0u64);
    log_info!(
        "sending database snapshot",
        "remote-peer-id" => peer.clone(),
        "meta-bytes" => meta.len()
    );
    let result = stream_snapshot(inner, to, meta, chunks, &sent).await;
    let bytes = sent.get();
    match &result {
        Ok(()) => log_info!(
            "sent database snapshot",
            "remote-peer-id" => peer,
            "bytes" => bytes,
            "size" => human_bytes(bytes)
        ),
        Err(e) => log_warn!(
            "failed to send database snapshot",
            "remote-peer-id" => peer,
            "bytes" => bytes,
            "size" => human_bytes(bytes),
            "error" => e.to_string()
        ),
    }
    result
}

async fn stream_snapshot(
    inner: &Rc<Inner>,
    to: u64,
    meta: Bytes,
    chunks: flume::Receiver<Bytes>,
    sent: &Cell<u64>,
) -> Result<(), PeerError> {
    let urls = inner.peer_urls(to).ok_or(PeerError::UnknownPeer(to))?;
    let Opened {
        mut reader,
        mut writer,
    } = open_any(inner, &urls, ConnectionKind::Snapshot, to).await?;
    let frame_limit = inner.options.frame_bytes_max;
    let mut first = BytesMut::new();
    wire::encode_body(
        pb::frame::Body::SnapshotMeta(pb::SnapshotMeta { meta: meta.clone() }),
        frame_limit,
        &mut first,
    )
    .map_err(|_| PeerError::TooLarge {
        bytes: meta.len(),
        limit: frame_limit,
    })?;
    let write_all = async {
        conn::write_within(&mut writer, &first, SNAPSHOT_STALL_TIMEOUT)
            .await
            .map_err(|e| PeerError::Broken(e.to_string()))?;
        let mut crc = 0u32;
        let mut frame = BytesMut::new();
        loop {
            // A producer slower than the keep-alive interval gets pings in between, so the
            // receiver's idle timeout only fires on a dead connection.
            let chunk = match with_timeout(KEEPALIVE_INTERVAL, chunks.recv_async()).await {
                None => {
                    frame.clear();
                    wire::encode_body(pb::frame::Body::Ping(pb::Ping {}), usize::MAX, &mut frame)
                        .expect("unbounded");
                    conn::write_within(&mut writer, &frame, SNAPSHOT_STALL_TIMEOUT)
                        .await
                        .map_err(|e| PeerError::Broken(e.to_string()))?;
                    continue;
                }
                Some(Err(_)) => break,
                Some(Ok(chunk)) => chunk,
            };
            let mut rest = chunk;
            while !rest.is_empty() {
                let piece = rest.split_to(rest.len().min(wire::SNAPSHOT_CHUNK_BYTES_MAX));
                crc = wire::snapshot_crc(crc, &piece);
                let length = piece.len() as u64;
                frame.clear();
                wire::encode_body(
                    pb::frame::Body::SnapshotChunk(pb::SnapshotChunk { data: piece }),
                    usize::MAX,
                    &mut frame,
                )
                .expect("unbounded");
                conn::write_within(&mut writer, &frame, SNAPSHOT_STALL_TIMEOUT)
                    .await
                    .map_err(|e| PeerError::Broken(e.to_string()))?;
                sent.set(sent.get() + length);
            }
        }
        frame.clear();
        let end = pb::SnapshotEnd {
            total_bytes: sent.get(),
            crc32c: crc,
        };
        wire::encode_body(pb::frame::Body::SnapshotEnd(end), usize::MAX, &mut frame)
            .expect("unbounded");
        conn::write_within(&mut writer, &frame, SNAPSHOT_STALL_TIMEOUT)
            .await
            .map_err(|e| PeerError::Broken(e.to_string()))
    };
    let mut write_all = std::pin::pin!(write_all);
    let mut written = false;
    loop {
        // Read the receiver's frames while writing too: it may answer before the end (a
        // refusal), and then its reason beats a broken pipe.
        let frame = if written {
            match reader.next_within(READ_IDLE_TIMEOUT).await {
                Ok(frame) => frame,
                Err(e) => return Err(PeerError::Broken(e.to_string())),
            }
        } else {
            let next = std::pin::pin!(reader.next());
            match futures::future::select(next, write_all.as_mut()).await {
                Either::Left((Ok(frame), _)) => frame,
                Either::Left((Err(e), _)) => return Err(PeerError::Broken(e.to_string())),
                Either::Right((Ok(()), _)) => {
                    written = true;
                    continue;
                }
                Either::Right((Err(e), next)) => {
                    // The receiver may have said why before it closed.
                    return match with_timeout(Duration::from_secs(1), next).await {
                        Some(Ok(Some(payload))) => answer_of(inner, to, payload).unwrap_or(Err(e)),
                        _ => Err(e),
                    };
                }
            }
        };
        let Some(payload) = frame else {
            return Err(PeerError::Broken("EOF".into()));
        };
        if let Some(result) = answer_of(inner, to, payload) {
            return result;
        }
    }
}

/// The receiver's answer in a frame, or `None` for a ping.
fn answer_of(inner: &Rc<Inner>, to: u64, payload: Bytes) -> Option<Result<(), PeerError>> {
    match wire::decode_frame(payload) {
        Ok(pb::frame::Body::Ping(_)) => None,
        Ok(pb::frame::Body::SnapshotDone(done)) => Some(if done.ok {
            Ok(())
        } else {
            Err(PeerError::Remote(done.error))
        }),
        Ok(pb::frame::Body::Goodbye(goodbye)) => {
            let reason = pb::Refusal::try_from(goodbye.reason).unwrap_or_default();
            if reason == pb::Refusal::RemovedMember {
                inner.report_removed(to);
            }
            Some(Err(PeerError::Refused(wire::refusal_text(reason).into())))
        }
        Ok(other) => Some(Err(PeerError::Broken(
            wire::WireError::Unexpected {
                frame: wire::frame_name(&other),
                kind: ConnectionKind::Snapshot,
            }
            .to_string(),
        ))),
        Err(e) => Some(Err(PeerError::Broken(e.to_string()))),
    }
}
