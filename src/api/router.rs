//! Routes one connection's requests: gRPC by service path to the tonic-generated servers,
//! anything else to the HTTP endpoints. An unknown gRPC service or method answers code 12
//! (Unimplemented), which clients such as Kubernetes use to detect missing RPCs.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use tower_service::Service;

use super::http::Body;
use super::kv::KvService;
use super::lease::LeaseService;
use super::maintenance::{ClusterService, MaintenanceService};
use super::watch::WatchService;
use super::Context;

/// gRPC decode limit above --max-request-bytes, as etcd sets it: large enough that etcd's own
/// "request is too large" check, not the transport, answers slightly oversized requests.
const GRPC_DECODE_OVERHEAD_BYTES: usize = 512 * 1024;

#[derive(Clone)]
pub struct Router {
    ctx: Context,
    kv: KvServer<KvService>,
    maintenance: MaintenanceServer<MaintenanceService>,
    cluster: ClusterServer<ClusterService>,
    lease: LeaseServer<LeaseService>,
    watch: WatchServer<WatchService>,
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
            ctx,
        }
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
        let path = req.uri().path();
        if path.starts_with("/etcdserverpb.KV/") {
            let mut s = self.kv.clone();
            return Box::pin(async move { s.call(req).await });
        }
        if path.starts_with("/etcdserverpb.Maintenance/") {
            let mut s = self.maintenance.clone();
            return Box::pin(async move { s.call(req).await });
        }
        if path.starts_with("/etcdserverpb.Watch/") {
            let mut s = self.watch.clone();
            return Box::pin(async move { s.call(req).await });
        }
        if path.starts_with("/etcdserverpb.Lease/") {
            let mut s = self.lease.clone();
            return Box::pin(async move { s.call(req).await });
        }
        if path.starts_with("/etcdserverpb.Cluster/") {
            let mut s = self.cluster.clone();
            return Box::pin(async move { s.call(req).await });
        }
        if path.starts_with("/v3electionpb.Election/") {
            let mut s = super::election::server(self.ctx.clone());
            return Box::pin(async move { s.call(req).await });
        }
        if path.starts_with("/v3lockpb.Lock/") {
            let mut s = super::lock::server(self.ctx.clone());
            return Box::pin(async move { s.call(req).await });
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
        Box::pin(async move { Ok(super::http::handle(ctx, req).await) })
    }
}
