//! The gRPC proxy's Watch service with watch coalescing, as etcd's `grpcproxy` watch proxy:
//! client watchers of the same key range share one upstream watch (a *broadcast*).
//!
//! - A new watcher joins a broadcast of its range that will not make it miss events: one that
//!   has not started yet, or one whose next revision is not past the watcher's start revision
//!   (it then gets an emulated "created" answer). Otherwise it starts a broadcast of its own,
//!   an upstream watch from its start revision with `prev_kv` and progress notifications.
//! - After each upstream answer, a broadcast with fewer than [`COALESCE_RECEIVERS_MAX`]
//!   watchers merges into another started broadcast of the range that is not ahead of it, and
//!   its upstream watch is cancelled. So watchers of the current revision, which cannot join a
//!   started broadcast, end up sharing one after their first answer.
//! - Each watcher filters the shared events by its own start revision, filters (`NOPUT`,
//!   `NODELETE`) and `prev_kv` choice, and gets progress notifications only if it asked.
//! - An upstream stream that breaks is reopened (on the next endpoint) from the broadcast's
//!   next revision; its new "created" answer is not passed on.
//! - Before a watcher is created, a serializable count-only range of its keys with the
//!   client's auth token checks its permission, as etcd's proxy does.
//!
//! Not done, as in etcd's proxy: client-chosen watch IDs, progress requests and fragmenting.
//! Bounds: each client stream has an outbox of [`STREAM_OUTBOX_MAX`] answers; when it is full
//! the client stream is ended with "context canceled" (etcd's proxy gives up after 50 ms).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use proto::etcdserverpb as pb;
use proto::etcdserverpb::{kv_client::KvClient, watch_client::WatchClient};
use tokio::sync::{mpsc, oneshot};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::namespace::Namespace;
use super::upstream::{is_transport_failure, Upstream};

/// Watchers a broadcast may have and still merge into another one (etcd's
/// `maxCoalesceReceivers`).
pub const COALESCE_RECEIVERS_MAX: usize = 5;
/// Answers queued for one client stream (etcd's proxy uses 1024 too).
pub const STREAM_OUTBOX_MAX: usize = 1024;
/// Pause before an upstream watch is reopened after it broke.
const REOPEN_DELAY: Duration = Duration::from_millis(200);

/// `(client stream, watch ID)`.
type WatcherKey = (u64, i64);

struct Watcher {
    watch_id: i64,
    /// The first revision this watcher still has to see (0: the current one, set by the first
    /// answer).
    next_revision: i64,
    progress_notify: bool,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    last_header: Option<pb::ResponseHeader>,
    outbox: mpsc::Sender<pb::WatchResponse>,
    /// Tells the client stream to end (its outbox overflowed).
    overflow: Arc<tokio::sync::Notify>,
}

impl Watcher {
    /// Queues `answer` for the client; false when the outbox is full (the stream is then told
    /// to end).
    fn post(&self, answer: pb::WatchResponse) -> bool {
        if self.outbox.try_send(answer).is_err() {
            self.overflow.notify_one();
            return false;
        }
        true
    }

    /// etcd's `watcher.send`: this watcher's view of one shared answer.
    fn send(&mut self, answer: &pb::WatchResponse) {
        let revision = answer.header.as_ref().map_or(0, |h| h.revision);
        let progress = is_progress_notify(answer);
        if progress && !self.progress_notify {
            return;
        }
        if self.next_revision > revision && !answer.events.is_empty() {
            return;
        }
        if self.next_revision == 0 {
            self.next_revision = revision + 1;
        }
        let mut last_revision = 0;
        let mut events = Vec::with_capacity(answer.events.len());
        for event in &answer.events {
            let modified = event.kv.as_ref().map_or(0, |kv| kv.mod_revision);
            if modified < self.next_revision {
                continue;
            }
            last_revision = modified;
            let put = event.r#type == proto::mvccpb::event::EventType::Put as i32;
            if (put && self.no_put) || (!put && self.no_delete) {
                continue;
            }
            let mut event = event.clone();
            if !self.prev_kv {
                event.prev_kv = None;
            }
            events.push(event);
        }
        if last_revision >= self.next_revision {
            self.next_revision = last_revision + 1;
        }
        if !progress && !answer.created && events.is_empty() && answer.compact_revision == 0 {
            return;
        }
        self.last_header = answer.header;
        self.post(pb::WatchResponse {
            header: answer.header,
            watch_id: self.watch_id,
            created: answer.created,
            canceled: answer.canceled,
            compact_revision: answer.compact_revision,
            cancel_reason: answer.cancel_reason.clone(),
            fragment: false,
            events,
        });
    }
}

/// clientv3's `IsProgressNotify`.
fn is_progress_notify(answer: &pb::WatchResponse) -> bool {
    answer.events.is_empty()
        && !answer.canceled
        && !answer.created
        && answer.compact_revision == 0
        && answer.header.as_ref().is_some_and(|h| h.revision != 0)
}

struct Broadcast {
    key: Bytes,
    range_end: Bytes,
    next_revision: i64,
    answers: u64,
    watchers: HashMap<WatcherKey, Watcher>,
    stop: Option<oneshot::Sender<()>>,
}

impl Broadcast {
    /// etcd's `watchBroadcast.add`.
    fn try_add(&mut self, key: WatcherKey, watcher: Watcher) -> Result<(), Watcher> {
        if self.next_revision > watcher.next_revision
            || (self.next_revision == 0 && watcher.next_revision != 0)
        {
            return Err(watcher);
        }
        if self.answers > 0 {
            // The upstream "created" answer went out already: emulate one.
            let created = pb::WatchResponse {
                header: Some(pb::ResponseHeader {
                    revision: watcher.next_revision,
                    ..Default::default()
                }),
                watch_id: watcher.watch_id,
                created: true,
                ..Default::default()
            };
            if !watcher.post(created) {
                return Err(watcher);
            }
        }
        self.watchers.insert(key, watcher);
        Ok(())
    }
}

#[derive(Default)]
struct HubState {
    next_broadcast: u64,
    broadcasts: HashMap<u64, Broadcast>,
    /// Broadcasts by `(key, range_end)`.
    ranges: HashMap<(Bytes, Bytes), Vec<u64>>,
    /// Which broadcast serves each watcher.
    watcher_broadcast: HashMap<WatcherKey, u64>,
}

impl HubState {
    fn remove_broadcast(&mut self, id: u64) -> Option<Broadcast> {
        let mut b = self.broadcasts.remove(&id)?;
        let range = (b.key.clone(), b.range_end.clone());
        if let Some(ids) = self.ranges.get_mut(&range) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.ranges.remove(&range);
            }
        }
        for key in b.watchers.keys() {
            self.watcher_broadcast.remove(key);
        }
        if let Some(stop) = b.stop.take() {
            let _ = stop.send(());
        }
        Some(b)
    }

    /// etcd's `watchBroadcasts.coalesce`: moves the watchers of broadcast `id` into another
    /// started broadcast of the range that is not ahead of it.
    fn coalesce(&mut self, id: u64) {
        let Some(b) = self.broadcasts.get(&id) else {
            return;
        };
        if b.watchers.len() >= COALESCE_RECEIVERS_MAX {
            return;
        }
        let next_revision = b.next_revision;
        let range = (b.key.clone(), b.range_end.clone());
        let target = self.ranges.get(&range).and_then(|ids| {
            ids.iter().copied().find(|other| {
                *other != id
                    && self
                        .broadcasts
                        .get(other)
                        .is_some_and(|o| o.answers > 0 && next_revision >= o.next_revision)
            })
        });
        let Some(target) = target else {
            return;
        };
        let Some(mut from) = self.remove_broadcast(id) else {
            return;
        };
        let watchers: Vec<(WatcherKey, Watcher)> = from.watchers.drain().collect();
        let into = self.broadcasts.get_mut(&target).expect("found above");
        for (key, watcher) in watchers {
            into.watchers.insert(key, watcher);
            self.watcher_broadcast.insert(key, target);
        }
        log_debug!("coalesced a watch broadcast", "into" => target, "watchers" => into.watchers.len());
    }
}

/// Counters shown at `/proxy/metrics`.
#[derive(Default)]
pub struct WatchCounters {
    /// Answers given to more than one watcher, counted once per extra watcher.
    pub events_coalescing: AtomicU64,
}

/// The shared state of every client watch stream of the proxy.
pub struct WatchHub {
    state: Mutex<HubState>,
    upstream: Arc<Upstream>,
    namespace: Namespace,
    next_stream: AtomicU64,
    pub counters: WatchCounters,
    max_send_bytes: usize,
    max_recv_bytes: usize,
}

/// The auth metadata a proxied call carries upstream.
pub fn forward_metadata(from: &MetadataMap, to: &mut MetadataMap) {
    for key in ["token", "authorization", "hasleader"] {
        if let Some(v) = from.get(key) {
            to.insert(key, v.clone());
        }
    }
}

impl WatchHub {
    pub fn new(
        upstream: Arc<Upstream>,
        namespace: Namespace,
        max_send_bytes: usize,
        max_recv_bytes: usize,
    ) -> Arc<WatchHub> {
        Arc::new(WatchHub {
            state: Mutex::new(HubState::default()),
            upstream,
            namespace,
            next_stream: AtomicU64::new(1),
            counters: WatchCounters::default(),
            max_send_bytes,
            max_recv_bytes,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Upstream watches open, and client watchers served (for `/proxy/metrics` and tests).
    pub fn sizes(&self) -> (usize, usize) {
        let s = self.lock();
        (s.broadcasts.len(), s.watcher_broadcast.len())
    }

    /// Adds a watcher to a fitting broadcast, or starts one.
    fn add(
        self: &Arc<Self>,
        key: WatcherKey,
        range: (Bytes, Bytes),
        watcher: Watcher,
        metadata: &MetadataMap,
    ) {
        let mut s = self.lock();
        let mut watcher = watcher;
        let ids = s.ranges.get(&range).cloned().unwrap_or_default();
        for id in ids {
            let b = s
                .broadcasts
                .get_mut(&id)
                .expect("ranges lists live broadcasts");
            match b.try_add(key, watcher) {
                Ok(()) => {
                    s.watcher_broadcast.insert(key, id);
                    return;
                }
                Err(w) => watcher = w,
            }
        }
        s.next_broadcast += 1;
        let id = s.next_broadcast;
        let (stop_tx, stop_rx) = oneshot::channel();
        let start_revision = watcher.next_revision;
        let mut watchers = HashMap::new();
        watchers.insert(key, watcher);
        s.broadcasts.insert(
            id,
            Broadcast {
                key: range.0.clone(),
                range_end: range.1.clone(),
                next_revision: start_revision,
                answers: 0,
                watchers,
                stop: Some(stop_tx),
            },
        );
        s.ranges.entry(range.clone()).or_default().push(id);
        s.watcher_broadcast.insert(key, id);
        let mut auth = MetadataMap::new();
        forward_metadata(metadata, &mut auth);
        tokio::spawn(self.clone().run_broadcast(id, range, auth, stop_rx));
    }

    /// Removes a watcher; returns it (for its last header).
    fn delete(&self, key: WatcherKey) -> Option<Watcher> {
        let mut s = self.lock();
        let id = s.watcher_broadcast.remove(&key)?;
        let b = s.broadcasts.get_mut(&id)?;
        let w = b.watchers.remove(&key);
        if b.watchers.is_empty() {
            s.remove_broadcast(id);
        }
        w
    }

    /// Hands one upstream answer to the broadcast's watchers.
    fn dispatch(&self, id: u64, mut answer: pb::WatchResponse) -> bool {
        for event in &mut answer.events {
            if let Some(kv) = event.kv.as_mut() {
                self.namespace.strip(&mut kv.key);
            }
            if let Some(kv) = event.prev_kv.as_mut() {
                self.namespace.strip(&mut kv.key);
            }
        }
        let mut s = self.lock();
        let Some(b) = s.broadcasts.get_mut(&id) else {
            return false;
        };
        if answer.created && b.answers > 0 {
            // A reopened upstream watch: the watchers were created long ago.
            return true;
        }
        if b.answers > 0 || b.next_revision == 0 {
            b.next_revision = answer.header.as_ref().map_or(0, |h| h.revision) + 1;
        }
        b.answers += 1;
        for w in b.watchers.values_mut() {
            w.send(&answer);
        }
        if b.watchers.len() > 1 {
            self.counters
                .events_coalescing
                .fetch_add(b.watchers.len() as u64 - 1, Ordering::Relaxed);
        }
        if answer.canceled {
            // Compacted or refused upstream: the watchers got the cancellation.
            s.remove_broadcast(id);
            return false;
        }
        s.coalesce(id);
        true
    }

    fn next_revision(&self, id: u64) -> Option<i64> {
        self.lock().broadcasts.get(&id).map(|b| b.next_revision)
    }

    /// One broadcast's upstream watch, reopened while it breaks, until stopped.
    async fn run_broadcast(
        self: Arc<Self>,
        id: u64,
        range: (Bytes, Bytes),
        auth: MetadataMap,
        mut stop: oneshot::Receiver<()>,
    ) {
        loop {
            let Some(start_revision) = self.next_revision(id) else {
                return;
            };
            let create = pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                    pb::WatchCreateRequest {
                        key: range.0.clone(),
                        range_end: range.1.clone(),
                        start_revision,
                        progress_notify: true,
                        prev_kv: true,
                        ..Default::default()
                    },
                )),
            };
            // The request stream stays open (its sender lives in this task) until the
            // broadcast stops; dropping it then cancels the upstream watch.
            let (requests, requests_rx) = mpsc::channel::<pb::WatchRequest>(1);
            let _ = requests.try_send(create);
            let mut request = Request::new(tokio_stream_from(requests_rx));
            *request.metadata_mut() = auth.clone();
            let channel = self.upstream.channel();
            let mut client = WatchClient::new(channel)
                .max_decoding_message_size(self.max_recv_bytes)
                .max_encoding_message_size(self.max_send_bytes);
            let opened = tokio::select! {
                _ = &mut stop => return,
                r = client.watch(request) => r,
            };
            let mut answers = match opened {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    if !self.upstream_failed(id, &status) {
                        return;
                    }
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(REOPEN_DELAY) => continue,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    _ = &mut stop => return,
                    n = answers.message() => n,
                };
                match next {
                    Ok(Some(answer)) => {
                        if !self.dispatch(id, answer) {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        if !self.upstream_failed(id, &status) {
                            return;
                        }
                        break;
                    }
                }
            }
            drop(requests);
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(REOPEN_DELAY) => {}
            }
        }
    }

    /// An upstream watch failed with `status`. A lost endpoint is retried (true); an answer of
    /// the cluster (permission, no leader, ...) ends the broadcast's watchers with it (false).
    fn upstream_failed(&self, id: u64, status: &Status) -> bool {
        if is_transport_failure(status) {
            let endpoints = self.upstream.endpoints();
            if let Some(first) = endpoints.first() {
                self.upstream.failed(first);
            }
            log_warn!("upstream watch broke; reopening it", "error" => status.message());
            return true;
        }
        let mut s = self.lock();
        if let Some(b) = s.broadcasts.get_mut(&id) {
            for w in b.watchers.values_mut() {
                w.post(pb::WatchResponse {
                    header: w.last_header,
                    watch_id: w.watch_id,
                    canceled: true,
                    cancel_reason: status.message().to_string(),
                    ..Default::default()
                });
            }
        }
        s.remove_broadcast(id);
        false
    }

    /// Checks the client may watch `[key, range_end)`: a serializable count-only range with
    /// its token, as etcd's proxy does.
    async fn permitted(
        &self,
        key: &Bytes,
        range_end: &Bytes,
        metadata: &MetadataMap,
    ) -> Result<(), Status> {
        let (key, range_end) = if key.is_empty() {
            (Bytes::from_static(&[0]), Bytes::from_static(&[0]))
        } else {
            (key.clone(), range_end.clone())
        };
        let check = pb::RangeRequest {
            key,
            range_end,
            serializable: true,
            count_only: true,
            limit: 1,
            ..Default::default()
        };
        self.upstream
            .call(|channel| {
                let mut request = Request::new(check.clone());
                forward_metadata(metadata, request.metadata_mut());
                async move { KvClient::new(channel).range(request).await }
            })
            .await
            .map(|_| ())
    }

    /// Serves one client Watch stream.
    pub async fn serve(
        self: Arc<Self>,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let metadata = request.metadata().clone();
        let mut incoming = request.into_inner();
        let stream_id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (outbox, outbox_rx) = mpsc::channel::<pb::WatchResponse>(STREAM_OUTBOX_MAX);
        let overflow = Arc::new(tokio::sync::Notify::new());
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let hub = self.clone();
        let reader_overflow = overflow.clone();
        tokio::spawn(async move {
            let mut next_watch_id: i64 = 0;
            let mut ids: Vec<i64> = Vec::new();
            while let Ok(Some(message)) = incoming.message().await {
                match message.request_union {
                    Some(pb::watch_request::RequestUnion::CreateRequest(create)) => {
                        // clientv3's namespace watcher prefixes the range.
                        let (key, range_end) =
                            hub.namespace.interval(&create.key, &create.range_end);
                        if let Err(status) = hub.permitted(&key, &range_end, &metadata).await {
                            let _ = outbox.try_send(pb::WatchResponse {
                                header: Some(pb::ResponseHeader::default()),
                                watch_id: -1,
                                created: true,
                                canceled: true,
                                cancel_reason: status.message().to_string(),
                                ..Default::default()
                            });
                            continue;
                        }
                        let valid =
                            range_end.is_empty() || range_end > key || range_end.as_ref() == [0];
                        if !valid {
                            let _ = outbox.try_send(pb::WatchResponse {
                                watch_id: -1,
                                created: true,
                                canceled: true,
                                ..Default::default()
                            });
                            continue;
                        }
                        let watch_id = next_watch_id;
                        next_watch_id += 1;
                        ids.push(watch_id);
                        let watcher = Watcher {
                            watch_id,
                            next_revision: create.start_revision,
                            progress_notify: create.progress_notify,
                            prev_kv: create.prev_kv,
                            no_put: create
                                .filters
                                .contains(&(pb::watch_create_request::FilterType::Noput as i32)),
                            no_delete: create
                                .filters
                                .contains(&(pb::watch_create_request::FilterType::Nodelete as i32)),
                            last_header: None,
                            outbox: outbox.clone(),
                            overflow: reader_overflow.clone(),
                        };
                        hub.add((stream_id, watch_id), (key, range_end), watcher, &metadata);
                    }
                    Some(pb::watch_request::RequestUnion::CancelRequest(cancel)) => {
                        if let Some(w) = hub.delete((stream_id, cancel.watch_id)) {
                            ids.retain(|i| *i != cancel.watch_id);
                            let _ = outbox.try_send(pb::WatchResponse {
                                header: w.last_header,
                                watch_id: cancel.watch_id,
                                canceled: true,
                                ..Default::default()
                            });
                        }
                    }
                    other => {
                        log_warn!("not supported request type by gRPC proxy", "request" => format!("{other:?}"));
                    }
                }
            }
            for id in ids {
                hub.delete((stream_id, id));
            }
            let _ = done_tx.send(());
        });
        let stream = ClientStream {
            outbox: outbox_rx,
            overflow,
            done: done_rx,
            finished: false,
        };
        Ok(Response::new(Box::pin(stream.into_stream())))
    }
}

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// The answers of one client stream, until the client stops sending, the outbox overflows, or
/// the client goes away (the stream is dropped; the reader task then ends with the request
/// stream).
struct ClientStream {
    outbox: mpsc::Receiver<pb::WatchResponse>,
    overflow: Arc<tokio::sync::Notify>,
    done: oneshot::Receiver<()>,
    finished: bool,
}

impl ClientStream {
    fn into_stream(self) -> impl Stream<Item = Result<pb::WatchResponse, Status>> + Send {
        futures::stream::unfold(self, |mut s| async move {
            if s.finished {
                return None;
            }
            tokio::select! {
                biased;
                answer = s.outbox.recv() => answer.map(|a| (Ok(a), s)),
                _ = s.overflow.notified() => {
                    s.finished = true;
                    Some((Err(Status::cancelled("context canceled")), s))
                }
                _ = &mut s.done => {
                    s.finished = true;
                    Some((Err(Status::cancelled("context canceled")), s))
                }
            }
        })
    }
}

/// A `Stream` over an mpsc receiver.
fn tokio_stream_from<T: Send + 'static>(rx: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::mvccpb::{Event, KeyValue};

    fn watcher(id: i64, next_revision: i64) -> (Watcher, mpsc::Receiver<pb::WatchResponse>) {
        let (tx, rx) = mpsc::channel(8);
        (
            Watcher {
                watch_id: id,
                next_revision,
                progress_notify: false,
                prev_kv: false,
                no_put: false,
                no_delete: false,
                last_header: None,
                outbox: tx,
                overflow: Arc::new(tokio::sync::Notify::new()),
            },
            rx,
        )
    }

    fn put(revision: i64) -> Event {
        Event {
            r#type: 0,
            kv: Some(KeyValue {
                key: b"k".to_vec().into(),
                mod_revision: revision,
                ..Default::default()
            }),
            prev_kv: Some(KeyValue::default()),
        }
    }

    fn answer(revision: i64, events: Vec<Event>) -> pb::WatchResponse {
        pb::WatchResponse {
            header: Some(pb::ResponseHeader {
                revision,
                ..Default::default()
            }),
            events,
            ..Default::default()
        }
    }

    #[test]
    fn watcher_skips_events_before_its_start_and_drops_prev_kv() {
        let (mut w, mut rx) = watcher(7, 5);
        w.send(&answer(6, vec![put(4), put(5), put(6)]));
        let got = rx.try_recv().unwrap();
        assert_eq!(got.watch_id, 7);
        let revisions: Vec<i64> = got
            .events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect();
        assert_eq!(revisions, [5, 6]);
        assert!(got.events.iter().all(|e| e.prev_kv.is_none()));
        assert_eq!(w.next_revision, 7);
        // Progress notifications only when asked for.
        w.send(&answer(9, vec![]));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn current_watchers_coalesce_after_their_first_answer() {
        let mut s = HubState::default();
        let range = (Bytes::from_static(b"k"), Bytes::new());
        for id in [1u64, 2] {
            let (w, _rx) = watcher(id as i64, 0);
            let mut watchers = HashMap::new();
            watchers.insert((id, 0), w);
            s.broadcasts.insert(
                id,
                Broadcast {
                    key: range.0.clone(),
                    range_end: range.1.clone(),
                    next_revision: 11,
                    answers: 1,
                    watchers,
                    stop: None,
                },
            );
            s.ranges.entry(range.clone()).or_default().push(id);
            s.watcher_broadcast.insert((id, 0), id);
        }
        s.coalesce(2);
        assert_eq!(s.broadcasts.len(), 1);
        assert_eq!(s.broadcasts[&1].watchers.len(), 2);
        assert_eq!(s.watcher_broadcast[&(2, 0)], 1);
        assert_eq!(s.ranges[&range], vec![1]);
    }

    #[test]
    fn a_watcher_never_joins_a_broadcast_ahead_of_it() {
        let mut b = Broadcast {
            key: Bytes::from_static(b"k"),
            range_end: Bytes::new(),
            next_revision: 10,
            answers: 3,
            watchers: HashMap::new(),
            stop: None,
        };
        let (w, _rx) = watcher(1, 5);
        assert!(b.try_add((1, 1), w).is_err(), "would miss revisions 5..9");
        let (w, _rx) = watcher(1, 0);
        assert!(
            b.try_add((1, 1), w).is_err(),
            "current watchers wait for their own created"
        );
        let (w, mut rx) = watcher(2, 12);
        assert!(b.try_add((1, 2), w).is_ok());
        let created = rx.try_recv().unwrap();
        assert!(created.created);
        assert_eq!(created.header.unwrap().revision, 12);
    }
}
