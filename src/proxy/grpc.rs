//! `etcd grpc-proxy start`: a stateless etcd v3 gRPC proxy in front of the etcd endpoints, as
//! etcd's `grpcproxy`.
//!
//! - KV: forwarded; serializable ranges are answered from a bounded cache
//!   ([`super::grpc_cache`]) that writes through the proxy keep current.
//! - Watch: client watchers of the same range share upstream watches
//!   ([`super::grpc_watch`]).
//! - Cluster: MemberList answers the proxy itself (its `--advertise-client-url`), or the
//!   proxies registered under `--resolver-prefix`; the other calls are forwarded (MemberPromote
//!   answers "not implemented", as etcd's proxy does).
//! - Lease, Maintenance, Auth, Election, Lock: forwarded call by call at the HTTP/2 level, so
//!   every answer (including its gRPC status and message) is the cluster's own. Unary and
//!   server-streaming calls are buffered (at most `--max-send-bytes`) so that a call that
//!   cannot reach one endpoint is sent to the next; LeaseKeepAlive streams go to the current
//!   endpoint and the client retries if it breaks. Keep-alives are not coalesced.
//! - `--namespace` prefixes the keys of KV and Watch calls and strips it from their answers.
//! - HTTP: `/health` and `/proxy/health` (a read through the proxy's client), `/metrics` and
//!   `/proxy/metrics` (the proxy's own counters: cache hits and misses, cached keys, watchers
//!   and events coalesced, upstream watches).
//! - Auth: the caller's `token` metadata goes with every forwarded call; the range cache is
//!   keyed by it, and watchers pass a permission check before they join a shared watch.

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proto::etcdserverpb as pb;
use proto::etcdserverpb::{
    cluster_client::ClusterClient, cluster_server::Cluster, cluster_server::ClusterServer,
    kv_client::KvClient, kv_server::Kv, kv_server::KvServer, lease_client::LeaseClient,
    watch_server::Watch, watch_server::WatchServer,
};
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use tower_service::Service;

use super::grpc_cache::{CacheMiss, RangeCache};
use super::grpc_watch::{forward_metadata, WatchHub, WatchStream};
use super::namespace::Namespace;
use super::upstream::{ChannelSettings, Upstream};
use crate::config::GrpcProxyConfig;
use crate::net::tls::{self as net_tls, TlsInfo, TlsOptions};

/// Client connections served at once, at most; at the limit the proxy stops accepting until one
/// closes (the kernel's backlog holds the rest).
const CONNECTIONS_MAX: usize = 16 * 1024;
/// Largest gRPC message the proxy's own services decode (grpc-go's server default).
const DECODE_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Calls forwarded as a stream rather than buffered (bidirectional streams).
const STREAMED_PATHS: &[&str] = &["/etcdserverpb.Lease/LeaseKeepAlive"];

/// The request sent upstream: `message` with the caller's auth metadata.
fn upstream_request<T>(message: T, metadata: &MetadataMap) -> Request<T> {
    let mut r = Request::new(message);
    forward_metadata(metadata, r.metadata_mut());
    r
}

fn token_of(metadata: &MetadataMap) -> String {
    metadata
        .get("token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// KV
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct KvProxy {
    upstream: Arc<Upstream>,
    cache: Arc<Mutex<RangeCache>>,
    namespace: Namespace,
    max_send_bytes: usize,
    max_recv_bytes: usize,
}

impl KvProxy {
    fn client(&self, channel: Channel) -> KvClient<Channel> {
        KvClient::new(channel)
            .max_decoding_message_size(self.max_recv_bytes)
            .max_encoding_message_size(self.max_send_bytes)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, RangeCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn prefix_range(&self, r: &mut pb::RangeRequest) {
        (r.key, r.range_end) = self.namespace.interval(&r.key, &r.range_end);
    }

    fn prefix_op(&self, op: &mut pb::RequestOp) {
        use pb::request_op::Request as R;
        match op.request.as_mut() {
            Some(R::RequestRange(r)) => self.prefix_range(r),
            Some(R::RequestPut(p)) => p.key = self.namespace.key(&p.key),
            Some(R::RequestDeleteRange(d)) => {
                (d.key, d.range_end) = self.namespace.interval(&d.key, &d.range_end)
            }
            Some(R::RequestTxn(t)) => self.prefix_txn(t),
            None => {}
        }
    }

    fn prefix_txn(&self, t: &mut pb::TxnRequest) {
        for c in &mut t.compare {
            (c.key, c.range_end) = self.namespace.interval(&c.key, &c.range_end);
        }
        for op in t.success.iter_mut().chain(t.failure.iter_mut()) {
            self.prefix_op(op);
        }
    }

    fn strip_kvs(&self, kvs: &mut [proto::mvccpb::KeyValue]) {
        for kv in kvs {
            self.namespace.strip(&mut kv.key);
        }
    }

    fn strip_txn(&self, t: &mut pb::TxnResponse) {
        use pb::response_op::Response as R;
        for op in &mut t.responses {
            match op.response.as_mut() {
                Some(R::ResponseRange(r)) => self.strip_kvs(&mut r.kvs),
                Some(R::ResponsePut(p)) => {
                    if let Some(kv) = p.prev_kv.as_mut() {
                        self.namespace.strip(&mut kv.key);
                    }
                }
                Some(R::ResponseDeleteRange(d)) => self.strip_kvs(&mut d.prev_kvs),
                Some(R::ResponseTxn(inner)) => self.strip_txn(inner),
                None => {}
            }
        }
    }

    /// etcd's `txnToCache`, recursing into nested txns: writes drop cached ranges, reads are
    /// cached.
    fn txn_to_cache(&self, token: &str, ops: &[pb::RequestOp], answers: &[pb::ResponseOp]) {
        use pb::request_op::Request as Q;
        use pb::response_op::Response as R;
        let mut cache = self.cache();
        for (op, answer) in ops.iter().zip(answers) {
            match (op.request.as_ref(), answer.response.as_ref()) {
                (Some(Q::RequestPut(p)), _) => cache.invalidate(&p.key, &[]),
                (Some(Q::RequestDeleteRange(d)), _) => cache.invalidate(&d.key, &d.range_end),
                (Some(Q::RequestRange(r)), Some(R::ResponseRange(a))) => cache.add(token, r, a),
                (Some(Q::RequestTxn(t)), Some(R::ResponseTxn(a))) => {
                    drop(cache);
                    let branch = if a.succeeded { &t.success } else { &t.failure };
                    self.txn_to_cache(token, branch, &a.responses);
                    cache = self.cache();
                }
                _ => {}
            }
        }
    }
}

#[tonic::async_trait]
impl Kv for KvProxy {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let metadata = request.metadata().clone();
        let token = token_of(&metadata);
        let mut r = request.into_inner();
        self.prefix_range(&mut r);
        if r.serializable {
            match self.cache().get(&token, &r) {
                Ok(mut answer) => {
                    self.strip_kvs(&mut answer.kvs);
                    return Ok(Response::new(answer));
                }
                Err(CacheMiss::Compacted) => {
                    return Err(Status::out_of_range(
                        "etcdserver: mvcc: required revision has been compacted",
                    ))
                }
                Err(CacheMiss::Absent) => {}
            }
        }
        let mut answer = self
            .upstream
            .call(|channel| {
                let mut client = self.client(channel);
                let request = upstream_request(r.clone(), &metadata);
                async move { client.range(request).await }
            })
            .await?
            .into_inner();
        self.cache().add(&token, &r, &answer);
        self.strip_kvs(&mut answer.kvs);
        Ok(Response::new(answer))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let metadata = request.metadata().clone();
        let mut p = request.into_inner();
        p.key = self.namespace.key(&p.key);
        self.cache().invalidate(&p.key, &[]);
        let mut answer = self
            .upstream
            .call(|channel| {
                let mut client = self.client(channel);
                let request = upstream_request(p.clone(), &metadata);
                async move { client.put(request).await }
            })
            .await?
            .into_inner();
        if let Some(kv) = answer.prev_kv.as_mut() {
            self.namespace.strip(&mut kv.key);
        }
        Ok(Response::new(answer))
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let metadata = request.metadata().clone();
        let mut d = request.into_inner();
        (d.key, d.range_end) = self.namespace.interval(&d.key, &d.range_end);
        self.cache().invalidate(&d.key, &d.range_end);
        let mut answer = self
            .upstream
            .call(|channel| {
                let mut client = self.client(channel);
                let request = upstream_request(d.clone(), &metadata);
                async move { client.delete_range(request).await }
            })
            .await?
            .into_inner();
        self.strip_kvs(&mut answer.prev_kvs);
        Ok(Response::new(answer))
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let metadata = request.metadata().clone();
        let token = token_of(&metadata);
        let mut t = request.into_inner();
        self.prefix_txn(&mut t);
        let mut answer = self
            .upstream
            .call(|channel| {
                let mut client = self.client(channel);
                let request = upstream_request(t.clone(), &metadata);
                async move { client.txn(request).await }
            })
            .await?
            .into_inner();
        // The txn may have changed what a compare looked at: drop those ranges too.
        {
            let mut cache = self.cache();
            for c in &t.compare {
                cache.invalidate(&c.key, &c.range_end);
            }
        }
        let branch = if answer.succeeded {
            &t.success
        } else {
            &t.failure
        };
        self.txn_to_cache(&token, branch, &answer.responses);
        self.strip_txn(&mut answer);
        Ok(Response::new(answer))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let metadata = request.metadata().clone();
        let c = request.into_inner();
        let answer = self
            .upstream
            .call(|channel| {
                let mut client = self.client(channel);
                let request = upstream_request(c, &metadata);
                async move { client.compact(request).await }
            })
            .await?
            .into_inner();
        self.cache().compact(c.revision);
        Ok(Response::new(answer))
    }
}

// ---------------------------------------------------------------------------------------------
// Watch, Cluster
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct WatchProxy {
    hub: Arc<WatchHub>,
}

#[tonic::async_trait]
impl Watch for WatchProxy {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.hub.clone().serve(request).await
    }
}

#[derive(Clone)]
struct ClusterProxy {
    upstream: Arc<Upstream>,
    advertise_client_url: String,
    resolver_prefix: String,
}

/// The value etcd's endpoints manager stores for a registered proxy.
#[derive(serde::Serialize, serde::Deserialize)]
struct RegisteredEndpoint {
    #[serde(rename = "Addr")]
    addr: String,
    #[serde(rename = "Metadata", default)]
    metadata: serde_json::Value,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl ClusterProxy {
    /// The proxies registered under `--resolver-prefix`.
    async fn registered(&self) -> Result<Vec<pb::Member>, Status> {
        let prefix = format!("{}/", self.resolver_prefix);
        let range = pb::RangeRequest {
            key: prefix.clone().into_bytes().into(),
            range_end: super::namespace::prefix_end(prefix.as_bytes()).into(),
            serializable: true,
            ..Default::default()
        };
        let answer = self
            .upstream
            .call(|channel| {
                let range = range.clone();
                async move { KvClient::new(channel).range(range).await }
            })
            .await?
            .into_inner();
        let mut members = Vec::new();
        for kv in answer.kvs {
            let Ok(ep) = serde_json::from_slice::<RegisteredEndpoint>(&kv.value) else {
                continue;
            };
            let name = ep
                .metadata
                .as_str()
                .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
                .and_then(|m| m.get("name").and_then(|n| n.as_str()).map(str::to_string))
                .unwrap_or_default();
            members.push(pb::Member {
                name,
                client_ur_ls: vec![ep.addr],
                ..Default::default()
            });
        }
        Ok(members)
    }

    async fn forward<T, U, F, Fut>(
        &self,
        request: Request<T>,
        call: F,
    ) -> Result<Response<U>, Status>
    where
        T: Clone,
        F: Fn(ClusterClient<Channel>, Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<U>, Status>>,
    {
        let metadata = request.metadata().clone();
        let message = request.into_inner();
        let answer = self
            .upstream
            .call(|channel| {
                call(
                    ClusterClient::new(channel),
                    upstream_request(message.clone(), &metadata),
                )
            })
            .await?;
        Ok(Response::new(answer.into_inner()))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterProxy {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        self.forward(request, |mut c, r| async move { c.member_add(r).await })
            .await
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        self.forward(request, |mut c, r| async move { c.member_remove(r).await })
            .await
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        self.forward(request, |mut c, r| async move { c.member_update(r).await })
            .await
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if self.advertise_client_url.is_empty() {
            return self
                .forward(request, |mut c, r| async move { c.member_list(r).await })
                .await;
        }
        if !self.resolver_prefix.is_empty() {
            let members = self.registered().await?;
            if !members.is_empty() {
                return Ok(Response::new(pb::MemberListResponse {
                    members,
                    ..Default::default()
                }));
            }
        }
        Ok(Response::new(pb::MemberListResponse {
            members: vec![pb::Member {
                name: hostname(),
                client_ur_ls: vec![self.advertise_client_url.clone()],
                ..Default::default()
            }],
            ..Default::default()
        }))
    }

    async fn member_promote(
        &self,
        _request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(Status::unknown("not implemented"))
    }
}

/// Registers the proxy under `prefix/addr` with a lease of `ttl_seconds`, kept alive; a lost
/// lease is replaced (etcd's `grpcproxy.Register`).
async fn register(upstream: Arc<Upstream>, prefix: String, addr: String, ttl_seconds: i64) {
    let value = serde_json::to_vec(&RegisteredEndpoint {
        addr: addr.clone(),
        metadata: serde_json::Value::String(serde_json::json!({ "name": hostname() }).to_string()),
    })
    .expect("serializable");
    loop {
        if let Err(status) = register_once(&upstream, &prefix, &addr, &value, ttl_seconds).await {
            log_warn!("failed to create a session", "error" => status.message());
        } else {
            log_warn!("session expired; possible network partition or server restart");
            log_warn!("creating a new session to rejoin");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One registration session; returns when its lease is gone.
async fn register_once(
    upstream: &Upstream,
    prefix: &str,
    addr: &str,
    value: &[u8],
    ttl_seconds: i64,
) -> Result<(), Status> {
    let lease = upstream
        .call(|channel| async move {
            LeaseClient::new(channel)
                .lease_grant(pb::LeaseGrantRequest {
                    ttl: ttl_seconds,
                    id: 0,
                })
                .await
        })
        .await?
        .into_inner()
        .id;
    let put = pb::PutRequest {
        key: format!("{prefix}/{addr}").into_bytes().into(),
        value: value.to_vec().into(),
        lease,
        ..Default::default()
    };
    upstream
        .call(|channel| {
            let put = put.clone();
            async move { KvClient::new(channel).put(put).await }
        })
        .await?;
    log_info!("registered session with lease", "addr" => addr, "lease-ttl" => ttl_seconds);
    let (keepalives, keepalives_rx) = tokio::sync::mpsc::channel::<pb::LeaseKeepAliveRequest>(1);
    let stream = futures::stream::unfold(keepalives_rx, |mut rx| async move {
        rx.recv().await.map(|v| (v, rx))
    });
    let mut answers = LeaseClient::new(upstream.channel())
        .lease_keep_alive(stream)
        .await?
        .into_inner();
    let period = Duration::from_millis((ttl_seconds.max(1) as u64) * 1000 / 3);
    loop {
        if keepalives
            .send(pb::LeaseKeepAliveRequest { id: lease })
            .await
            .is_err()
        {
            return Ok(());
        }
        match answers.message().await? {
            Some(a) if a.ttl > 0 => {}
            _ => return Ok(()),
        }
        tokio::time::sleep(period).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Routing, forwarding, HTTP endpoints
// ---------------------------------------------------------------------------------------------

struct State {
    upstream: Arc<Upstream>,
    kv: KvServer<KvProxy>,
    watch: WatchServer<WatchProxy>,
    cluster: ClusterServer<ClusterProxy>,
    cache: Arc<Mutex<RangeCache>>,
    hub: Arc<WatchHub>,
    max_send_bytes: usize,
}

fn status_response(status: Status) -> http::Response<Body> {
    status.into_http()
}

fn http_response(code: u16, content_type: &str, body: String) -> http::Response<Body> {
    http::Response::builder()
        .status(code)
        .header("content-type", content_type)
        .body(Body::new(Full::new(Bytes::from(body))))
        .expect("valid response")
}

/// Sends one call to the endpoints as is, HTTP/2 frame for frame.
async fn forward(
    state: &State,
    request: http::Request<hyper::body::Incoming>,
) -> http::Response<Body> {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    parts.uri = match path_and_query.parse() {
        Ok(u) => u,
        Err(_) => return status_response(Status::invalid_argument("bad path")),
    };
    parts.headers.remove(http::header::HOST);
    let build = |body: Body| {
        let mut r = http::Request::new(body);
        *r.method_mut() = parts.method.clone();
        *r.uri_mut() = parts.uri.clone();
        *r.headers_mut() = parts.headers.clone();
        r
    };
    if STREAMED_PATHS.contains(&path.as_str()) {
        let mut channel = state.upstream.channel();
        if let Err(e) = futures::future::poll_fn(|cx| channel.poll_ready(cx)).await {
            return status_response(Status::unavailable(format!("transport error: {e}")));
        }
        return match channel.call(build(Body::new(body))).await {
            Ok(r) => r,
            Err(e) => status_response(Status::unavailable(format!("transport error: {e}"))),
        };
    }
    let bytes = match Limited::new(body, state.max_send_bytes + 5).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return status_response(Status::resource_exhausted(format!(
                "grpc: trying to send message larger than max ({e})"
            )))
        }
    };
    let answer = state
        .upstream
        .call(|mut channel| {
            let request = build(Body::new(Full::new(bytes.clone())));
            async move {
                futures::future::poll_fn(|cx| channel.poll_ready(cx))
                    .await
                    .map_err(|e| Status::unavailable(format!("transport error: {e}")))?;
                channel
                    .call(request)
                    .await
                    .map_err(|e| Status::unavailable(format!("transport error: {e}")))
            }
        })
        .await;
    match answer {
        Ok(r) => r,
        Err(status) => status_response(status),
    }
}

/// etcd's proxy `checkHealth`: a read of key "a" within a second; permission denied counts as
/// healthy.
async fn health(state: &State) -> http::Response<Body> {
    let check = state.upstream.call(|channel| async move {
        KvClient::new(channel)
            .range(pb::RangeRequest {
                key: Bytes::from_static(b"a"),
                ..Default::default()
            })
            .await
    });
    let reason = match tokio::time::timeout(Duration::from_secs(1), check).await {
        Ok(Ok(_)) => None,
        Ok(Err(s)) if s.code() == tonic::Code::PermissionDenied => None,
        Ok(Err(s)) => Some(format!("GET ERROR:{}", s.message())),
        Err(_) => Some("GET ERROR:context deadline exceeded".to_string()),
    };
    match reason {
        None => http_response(
            200,
            "application/json",
            r#"{"health":"true","reason":""}"#.into(),
        ),
        Some(r) => http_response(
            503,
            "application/json",
            serde_json::json!({ "health": "false", "reason": r }).to_string(),
        ),
    }
}

fn metrics(state: &State) -> http::Response<Body> {
    let (hits, misses, keys) = {
        let c = state.cache.lock().unwrap_or_else(|e| e.into_inner());
        (c.hits, c.misses, c.entries())
    };
    let (broadcasts, watchers) = state.hub.sizes();
    let text = format!(
        "# TYPE etcd_grpc_proxy_cache_hits_total gauge\netcd_grpc_proxy_cache_hits_total {hits}\n\
         # TYPE etcd_grpc_proxy_cache_misses_total gauge\netcd_grpc_proxy_cache_misses_total {misses}\n\
         # TYPE etcd_grpc_proxy_cache_keys_total gauge\netcd_grpc_proxy_cache_keys_total {keys}\n\
         # TYPE etcd_grpc_proxy_watchers_coalescing_total gauge\netcd_grpc_proxy_watchers_coalescing_total {}\n\
         # TYPE etcd_grpc_proxy_events_coalescing_total counter\netcd_grpc_proxy_events_coalescing_total {}\n\
         # TYPE rusd_grpc_proxy_upstream_watches gauge\nrusd_grpc_proxy_upstream_watches {broadcasts}\n\
         # TYPE rusd_grpc_proxy_watchers gauge\nrusd_grpc_proxy_watchers {watchers}\n",
        watchers.saturating_sub(broadcasts),
        state.hub.counters.events_coalescing.load(Ordering::Relaxed),
    );
    http_response(200, "text/plain; version=0.0.4", text)
}

async fn route(
    state: Arc<State>,
    request: http::Request<hyper::body::Incoming>,
    grpc_allowed: bool,
) -> Result<http::Response<Body>, Infallible> {
    let path = request.uri().path().to_string();
    let is_grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if is_grpc && grpc_allowed {
        let answer = if path.starts_with("/etcdserverpb.KV/") {
            state.kv.clone().call(request).await?
        } else if path.starts_with("/etcdserverpb.Watch/") {
            state.watch.clone().call(request).await?
        } else if path.starts_with("/etcdserverpb.Cluster/") {
            state.cluster.clone().call(request).await?
        } else if path.starts_with("/etcdserverpb.")
            || path.starts_with("/v3electionpb.")
            || path.starts_with("/v3lockpb.")
        {
            forward(&state, request).await
        } else {
            status_response(Status::unimplemented(format!("unknown service {path}")))
        };
        return Ok(answer);
    }
    Ok(match path.as_str() {
        "/health" | "/proxy/health" => health(&state).await,
        "/metrics" | "/proxy/metrics" => metrics(&state),
        _ => http_response(
            404,
            "text/plain; charset=utf-8",
            "404 page not found\n".into(),
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------------------------

/// The PEM certificate's Common Name, if any.
fn cert_common_name(path: &str) -> anyhow::Result<Option<String>> {
    let pem = std::fs::read(path).with_context(|| format!("open {path}"))?;
    let (_, parsed) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{path}: not a PEM certificate: {e}"))?;
    Ok(net_tls::common_name(
        &rustls_pki_types::CertificateDer::from(parsed.contents),
    ))
}

/// The client TLS towards the endpoints (etcd's `newClientCfg`): the proxy's client
/// certificate must have an empty Common Name.
fn upstream_tls(cfg: &GrpcProxyConfig) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    let given = !cfg.cacert.is_empty() || !cfg.cert.is_empty() || !cfg.key.is_empty();
    if !given && !cfg.insecure_skip_tls_verify {
        return Ok(None);
    }
    if !cfg.cert.is_empty() {
        if let Some(cn) = cert_common_name(&cfg.cert)? {
            bail!("cert has non empty Common Name ({cn}): {}", cfg.cert);
        }
    }
    let info = TlsInfo {
        cert_file: cfg.cert.clone(),
        key_file: cfg.key.clone(),
        trusted_ca_file: cfg.cacert.clone(),
        self_cert: cfg.insecure_skip_tls_verify,
        ..TlsInfo::default()
    };
    if cfg.insecure_skip_tls_verify {
        log_warn!("--insecure-skip-tls-verify was given, this grpc proxy process skips authentication of etcd server TLS certificates. This option should be enabled only for testing purposes.");
    }
    let config = net_tls::client_config(&info, &TlsOptions::default())?;
    log_info!("gRPC proxy client TLS", "tls-info" => info.to_string());
    Ok(Some(config))
}

/// The listener's TLS (etcd's `newTLS` for `--cert-file/--key-file/--trusted-ca-file`, or
/// auto-TLS).
fn listener_tls(cfg: &GrpcProxyConfig) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    let given =
        !cfg.trusted_ca_file.is_empty() || !cfg.cert_file.is_empty() || !cfg.key_file.is_empty();
    let info = if given {
        TlsInfo {
            cert_file: cfg.cert_file.clone(),
            key_file: cfg.key_file.clone(),
            trusted_ca_file: cfg.trusted_ca_file.clone(),
            client_cert_auth: !cfg.trusted_ca_file.is_empty(),
            crl_file: cfg.client_crl_file.clone(),
            ..TlsInfo::default()
        }
    } else if cfg.auto_tls {
        let dir = Path::new(&cfg.data_dir).join("fixtures").join("proxy");
        net_tls::self_cert(
            &dir,
            &[format!("https://{}", cfg.listen_addr)],
            cfg.self_signed_cert_validity,
        )?
    } else {
        return Ok(None);
    };
    let options = TlsOptions {
        cipher_suites: cfg.listen_cipher_suites.clone(),
        ..TlsOptions::default()
    };
    let config = net_tls::server_config(&info, &options)?;
    log_info!("gRPC proxy server TLS", "tls-info" => info.to_string());
    Ok(Some(config))
}

fn size_limit(v: i64, default: usize) -> usize {
    if v > 0 {
        v as usize
    } else {
        default
    }
}

/// Serves connections from `listener` until the process ends.
async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<State>,
    cfg: Arc<GrpcProxyConfig>,
    grpc_allowed: bool,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log_warn!("failed to accept a connection", "error" => e.to_string());
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let acceptor = acceptor.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service =
                hyper::service::service_fn(move |r| route(state.clone(), r, grpc_allowed));
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            {
                let mut h2 = builder.http2();
                h2.timer(hyper_util::rt::TokioTimer::new());
                h2.max_concurrent_streams(cfg.max_concurrent_streams);
                if !cfg.grpc_keepalive_interval.is_zero() {
                    h2.keep_alive_interval(cfg.grpc_keepalive_interval);
                    if !cfg.grpc_keepalive_timeout.is_zero() {
                        h2.keep_alive_timeout(cfg.grpc_keepalive_timeout);
                    }
                }
            }
            match acceptor {
                None => {
                    let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(net_tls::HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                    if let Ok(Ok(stream)) = handshake.await {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            }
        });
    }
}

/// Runs the gRPC proxy until SIGINT/SIGTERM.
pub fn run(cfg: GrpcProxyConfig) -> anyhow::Result<()> {
    if cfg.debug {
        crate::logging::set_level(crate::logging::LogLevel::Debug);
    }
    if !cfg.discovery_srv.is_empty() {
        log_warn!("DNS SRV discovery is not implemented by rusd; using --endpoints",
            "discovery-srv" => cfg.discovery_srv.clone());
    }
    let listen_tls = listener_tls(&cfg)?;
    let client_tls = upstream_tls(&cfg)?;
    let max_send_bytes = size_limit(cfg.max_send_bytes, 1_572_864);
    let max_recv_bytes = size_limit(cfg.max_recv_bytes, i32::MAX as usize);
    let cfg = Arc::new(cfg);
    let rt = super::runtime()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&cfg.listen_addr)
            .await
            .with_context(|| format!("listen tcp {}", cfg.listen_addr))?;
        log_info!("listening for gRPC proxy client requests", "address" => cfg.listen_addr.clone());
        let metrics_listener = if cfg.metrics_addr.is_empty() {
            None
        } else {
            let (host_port, _) = super::endpoint_host_port(&cfg.metrics_addr);
            let l = TcpListener::bind(&host_port)
                .await
                .with_context(|| format!("listen tcp {host_port}"))?;
            log_info!("gRPC proxy listening for metrics", "address" => cfg.metrics_addr.clone());
            Some(l)
        };

        let upstream = Upstream::new(
            cfg.endpoints.clone(),
            ChannelSettings {
                tls_by_default: client_tls.is_some(),
                tls: client_tls,
                keepalive_time: cfg.dial_keepalive_time,
                keepalive_timeout: cfg.dial_keepalive_timeout,
                permit_without_stream: cfg.permit_without_stream,
            },
        );
        let namespace = Namespace::new(&cfg.namespace);
        let cache = Arc::new(Mutex::new(RangeCache::new()));
        let hub = WatchHub::new(upstream.clone(), namespace.clone(), max_send_bytes, max_recv_bytes);
        let kv = KvProxy {
            upstream: upstream.clone(),
            cache: cache.clone(),
            namespace,
            max_send_bytes,
            max_recv_bytes,
        };
        let state = Arc::new(State {
            upstream: upstream.clone(),
            kv: KvServer::new(kv)
                .max_decoding_message_size(DECODE_MAX_BYTES)
                .max_encoding_message_size(usize::MAX),
            watch: WatchServer::new(WatchProxy { hub: hub.clone() })
                .max_decoding_message_size(DECODE_MAX_BYTES)
                .max_encoding_message_size(usize::MAX),
            cluster: ClusterServer::new(ClusterProxy {
                upstream: upstream.clone(),
                advertise_client_url: cfg.advertise_client_url.clone(),
                resolver_prefix: cfg.resolver_prefix.clone(),
            })
            .max_decoding_message_size(DECODE_MAX_BYTES)
            .max_encoding_message_size(usize::MAX),
            cache,
            hub,
            max_send_bytes,
        });

        if !cfg.endpoints_auto_sync_interval.is_zero() {
            tokio::spawn(upstream.clone().auto_sync(cfg.endpoints_auto_sync_interval));
        }
        if !cfg.resolver_prefix.is_empty() {
            tokio::spawn(register(
                upstream.clone(),
                cfg.resolver_prefix.clone(),
                cfg.advertise_client_url.clone(),
                cfg.resolver_ttl,
            ));
        }
        if let Some(l) = metrics_listener {
            tokio::spawn(serve(l, None, state.clone(), cfg.clone(), false));
        }
        log_info!("started gRPC proxy", "address" => cfg.listen_addr.clone());
        tokio::select! {
            _ = serve(listener, listen_tls, state, cfg.clone(), true) => {}
            _ = super::shutdown_signal() => {}
        }
        log_info!("stop listening gRPC proxy client requests", "address" => cfg.listen_addr.clone());
        anyhow::Ok(())
    })
}
