//! Routes one connection's requests: gRPC by service path to the tonic-generated servers,
//! `/v3/...` to the JSON gateway (which calls back in here), anything else to the HTTP
//! endpoints; gRPC's `grpc.health.v1.Health` as etcd registers it. An unknown gRPC service or method answers code 12
//! (Unimplemented), which clients such as Kubernetes use to detect missing RPCs.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use proto::grpc_health_v1::health_server::HealthServer;
use tower_service::Service;

use super::health::HealthService;
use super::http::Body;
use super::kv::KvService;
use super::lease::LeaseService;
use super::maintenance::{ClusterService, MaintenanceService};
use super::watch::WatchService;
use super::Context;

/// gRPC decode limit above --max-request-bytes, as etcd sets it: large enough that etcd's own
/// "request is too large" check, not the transport, answers slightly oversized requests.
pub(super) const GRPC_DECODE_OVERHEAD_BYTES: usize = 512 * 1024;

#[derive(Clone)]
pub struct Router {
    ctx: Context,
    kv: KvServer<KvService>,
    maintenance: MaintenanceServer<MaintenanceService>,
    cluster: ClusterServer<ClusterService>,
    lease: LeaseServer<LeaseService>,
    watch: WatchServer<WatchService>,
    health: HealthServer<HealthService>,
}

impl Router {
    pub fn new(ctx: Context) -> Self {
        let limit = ctx.max_request_bytes + GRPC_DECODE_OVERHEAD_BYTES;
        Router {
            kv: KvServer::new(KvService { ctx: ctx.clone() })
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX),
            maintenance: MaintenanceServer::new(MaintenanceService { ctx: ctx.clone() })
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX),
            cluster: ClusterServer::new(ClusterService { ctx: ctx.clone() })
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX),
            lease: LeaseServer::new(LeaseService { ctx: ctx.clone() })
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX),
            watch: WatchServer::new(WatchService { ctx: ctx.clone() })
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX),
            health: HealthServer::new(HealthService { ctx: ctx.clone() })
                .max_decoding_message_size(limit),
            ctx,
        }
    }
}

/// A gRPC call with `hasleader: true` metadata on a member without a leader.
fn requires_leader_missing<B>(ctx: &Context, req: &http::Request<B>) -> bool {
    req.headers()
        .get("hasleader")
        .is_some_and(|v| v.as_bytes() == b"true")
        && ctx.published.leader() == 0
        && req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// grpc-go (and so etcd) refuses a message above the receive limit with ResourceExhausted and
/// "grpc: received message larger than max (N vs. M)"; tonic says OutOfRange in other words.
/// Clients match on the code, so that status is rewritten to grpc-go's, in the headers of a
/// trailers-only answer or in the trailers.
fn grpc_go_size_status(resp: http::Response<Body>) -> http::Response<Body> {
    let (mut parts, body) = resp.into_parts();
    rewrite_size_status(&mut parts.headers);
    http::Response::from_parts(parts, Body::new(SizeStatusBody { inner: body }))
}

fn rewrite_size_status(headers: &mut http::HeaderMap) {
    let Some(message) = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .filter(|_| headers.get("grpc-status").is_some_and(|v| v == "11"))
        .filter(|m| {
            m.contains("decoded%20message%20length%20too%20large")
                || m.contains("decoded message length too large")
        })
        .map(str::to_owned)
    else {
        return;
    };
    // "...found N bytes, the limit is: M bytes"
    let nums: Vec<&str> = message
        .split("%20")
        .flat_map(|w| w.split(' '))
        .filter(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_digit()))
        .collect();
    let text = match nums.as_slice() {
        [found, limit, ..] => {
            format!("grpc: received message larger than max ({found} vs. {limit})")
        }
        _ => "grpc: received message larger than max".to_string(),
    };
    headers.remove("grpc-message");
    headers.remove("grpc-status");
    let _ = tonic::Status::resource_exhausted(text).add_header(headers);
}

struct SizeStatusBody {
    inner: Body,
}

impl http_body::Body for SizeStatusBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(match frame.into_trailers() {
                Ok(mut trailers) => {
                    rewrite_size_status(&mut trailers);
                    http_body::Frame::trailers(trailers)
                }
                Err(frame) => frame,
            }))),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<B> Service<http::Request<B>> for Router
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let token_pending = req
            .headers()
            .get("token")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| self.ctx.simple_token_pending(t));
        if self.ctx.health.is_serving() && !token_pending {
            return self.route(req);
        }
        // As etcd: nothing is answered before the member is ready (WAL replayed, attributes
        // published), or a client could read an older revision than it wrote before a restart.
        let mut router = self.clone();
        Box::pin(async move {
            router.ctx.health.wait_serving().await;
            if token_pending {
                // The token's Authenticate was committed before its issuer answered, so a
                // ReadIndex round brings this member's apply past it. If that fails (no
                // leader), the token check below answers "invalid auth token", as etcd does
                // when its wait times out.
                let _ = router.ctx.coordinator.read_index().await;
            }
            router.route(req).await
        })
    }
}

impl Router {
    fn route<B>(&mut self, req: http::Request<B>) -> BoxFuture
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let path = req.uri().path();
        if requires_leader_missing(&self.ctx, &req) {
            // etcd's interceptors: a call marked `hasleader: true` (clientv3's
            // WithRequireLeader) fails at once while the member knows no leader.
            let resp = super::status::status(crate::error::EtcdError::NoLeader).into_http::<Body>();
            return Box::pin(async move { Ok(resp) });
        }
        if path.starts_with("/etcdserverpb.KV/") {
            let mut s = self.kv.clone();
            return Box::pin(async move { s.call(req).await.map(grpc_go_size_status) });
        }
        if path.starts_with("/etcdserverpb.Maintenance/") {
            let mut s = self.maintenance.clone();
            return Box::pin(async move { s.call(req).await.map(grpc_go_size_status) });
        }
        if path.starts_with("/etcdserverpb.Watch/") {
            let mut s = self.watch.clone();
            return Box::pin(async move { s.call(req).await.map(grpc_go_size_status) });
        }
        if path.starts_with("/etcdserverpb.Lease/") {
            let mut s = self.lease.clone();
            return Box::pin(async move { s.call(req).await.map(grpc_go_size_status) });
        }
        if path.starts_with("/etcdserverpb.Cluster/") {
            let mut s = self.cluster.clone();
            return Box::pin(async move { s.call(req).await.map(grpc_go_size_status) });
        }
        if path.starts_with("/grpc.health.v1.Health/") {
            let mut s = self.health.clone();
            return Box::pin(async move { s.call(req).await.map(grpc_go_size_status) });
        }
        if path.starts_with("/etcdserverpb.Auth/") {
            let mut s = super::auth::server(self.ctx.clone());
            return Box::pin(async move { s.call(req).await.map(grpc_go_size_status) });
        }
        if path.starts_with("/v3electionpb.Election/") {
            let mut s = super::election::server(self.ctx.clone());
            return Box::pin(async move { s.call(req).await.map(grpc_go_size_status) });
        }
        if path.starts_with("/v3lockpb.Lock/") {
            let mut s = super::lock::server(self.ctx.clone());
            return Box::pin(async move { s.call(req).await.map(grpc_go_size_status) });
        }
        let is_grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if is_grpc {
            let resp = tonic::Status::unimplemented("").into_http::<Body>();
            return Box::pin(async move { Ok(resp) });
        }
        let ctx = self.ctx.clone();
        let cors = super::http::cors_origin(&ctx.cors, req.headers().get(http::header::ORIGIN));
        let gateway = super::gateway::is_gateway_path(path).then(|| self.clone());
        Box::pin(async move {
            let mut resp = if req.method() == http::Method::OPTIONS {
                super::http::preflight()
            } else if let Some(router) = gateway {
                super::gateway::handle(router, ctx, req).await
            } else {
                super::http::handle(ctx, req).await
            };
            if let Some(origin) = cors {
                super::http::add_cors(&mut resp, origin);
            }
            Ok(resp)
        })
    }
}
