//! Plain HTTP endpoints on the client port: /version, /health, /livez, /readyz, /metrics, and
//! the CORS answer etcd gives on every HTTP path of that port.

use std::sync::atomic::Ordering::Acquire;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;

use super::maintenance::{CLUSTER_VERSION, SERVER_VERSION};
use super::Context;

pub type Body = tonic::body::Body;

/// etcd's accessController on the client port's HTTP side (gateway included): the CORS
/// headers for an allowed origin (`--cors`; empty or `*` allows every origin, named `*`), and
/// a bare 200 for any OPTIONS preflight. `None` when the request's origin is not allowed.
pub fn cors_origin(
    allowed: &[String],
    origin: Option<&header::HeaderValue>,
) -> Option<header::HeaderValue> {
    if allowed.is_empty() || allowed.iter().any(|o| o == "*") {
        return Some(header::HeaderValue::from_static("*"));
    }
    let origin = origin?;
    let o = origin.to_str().ok()?;
    allowed.iter().any(|a| a == o).then(|| origin.clone())
}

pub fn add_cors(resp: &mut Response<Body>, origin: header::HeaderValue) {
    let h = resp.headers_mut();
    h.append(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        header::HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.append(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.append(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        header::HeaderValue::from_static("accept, content-type, authorization"),
    );
}

/// The answer to an OPTIONS request: headers only.
pub fn preflight() -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .body(Body::empty())
        .expect("static response parts are valid")
}

fn reply(code: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::new(Full::new(body.into())))
        .expect("static response parts are valid")
}

pub async fn handle<B>(ctx: Context, req: Request<B>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "Method Not Allowed\n",
        );
    }
    match req.uri().path() {
        "/version" => reply(
            StatusCode::OK,
            "application/json",
            format!(r#"{{"etcdserver":"{SERVER_VERSION}","etcdcluster":"{CLUSTER_VERSION}"}}"#),
        ),
        "/health" => health(&ctx).await,
        "/livez" | "/readyz" => reply(StatusCode::OK, "text/plain; charset=utf-8", "ok"),
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(&ctx),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "404 page not found\n",
        ),
    }
}

/// etcd's /health: healthy when there is a leader and a linearizable read goes through.
async fn health(ctx: &Context) -> Response<Body> {
    let (ok, reason) = if ctx.published.leader() == 0 {
        (false, "RAFT NO LEADER")
    } else if ctx.published.nospace.load(Acquire) {
        (false, "ALARM NOSPACE")
    } else {
        match ctx.coordinator.read_index().await {
            Ok(()) => (true, ""),
            Err(_) => (false, "QGET ERROR"),
        }
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    reply(
        code,
        "application/json",
        format!(r#"{{"health":"{ok}","reason":"{reason}"}}"#),
    )
}

/// The Prometheus text exposition of what we measure, under etcd's metric names.
fn metrics(ctx: &Context) -> String {
    let p = &ctx.published;
    let has_leader = u8::from(p.leader() != 0);
    format!(
        "# HELP etcd_server_has_leader Whether or not a leader exists. 1 is existence, 0 is not.\n\
         # TYPE etcd_server_has_leader gauge\n\
         etcd_server_has_leader {has_leader}\n\
         # HELP etcd_server_is_leader Whether or not this member is a leader.\n\
         # TYPE etcd_server_is_leader gauge\n\
         etcd_server_is_leader {is_leader}\n\
         # HELP etcd_server_version Which version is running. 1 for 'server_version' label with current version.\n\
         # TYPE etcd_server_version gauge\n\
         etcd_server_version{{server_version=\"{SERVER_VERSION}\"}} 1\n\
         # HELP etcd_cluster_version Which version is running. 1 for 'cluster_version' label with current cluster version\n\
         # TYPE etcd_cluster_version gauge\n\
         etcd_cluster_version{{cluster_version=\"{cluster}\"}} 1\n\
         # HELP etcd_mvcc_put_total Total number of puts seen by this member.\n\
         # TYPE etcd_mvcc_put_total counter\n\
         etcd_mvcc_put_total {puts}\n\
         # HELP etcd_mvcc_delete_total Total number of deletes seen by this member.\n\
         # TYPE etcd_mvcc_delete_total counter\n\
         etcd_mvcc_delete_total {deletes}\n\
         # HELP etcd_debugging_mvcc_keys_total Total number of keys.\n\
         # TYPE etcd_debugging_mvcc_keys_total gauge\n\
         etcd_debugging_mvcc_keys_total {keys}\n\
         # HELP grpc_server_handled_total Total number of RPCs completed on the server, regardless of success or failure.\n\
         # TYPE grpc_server_handled_total counter\n\
         grpc_server_handled_total{{grpc_code=\"Canceled\",grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"}} {watch_canceled}\n\
         # HELP etcd_debugging_mvcc_current_revision The current revision of store.\n\
         # TYPE etcd_debugging_mvcc_current_revision gauge\n\
         etcd_debugging_mvcc_current_revision {rev}\n\
         # HELP etcd_debugging_mvcc_compact_revision The revision of the last compaction in store.\n\
         # TYPE etcd_debugging_mvcc_compact_revision gauge\n\
         etcd_debugging_mvcc_compact_revision {compact}\n\
         # HELP etcd_mvcc_db_total_size_in_bytes Total size of the underlying database physically allocated in bytes.\n\
         # TYPE etcd_mvcc_db_total_size_in_bytes gauge\n\
         etcd_mvcc_db_total_size_in_bytes {db}\n\
         # HELP etcd_server_proposals_committed_total The total number of consensus proposals committed.\n\
         # TYPE etcd_server_proposals_committed_total gauge\n\
         etcd_server_proposals_committed_total {committed}\n\
         # HELP etcd_server_proposals_applied_total The total number of consensus proposals applied.\n\
         # TYPE etcd_server_proposals_applied_total gauge\n\
         etcd_server_proposals_applied_total {applied}\n",
        is_leader = u8::from(p.leader() == ctx.member.member_id),
        rev = p.revision(),
        compact = p.compact_revision(),
        db = p.db_size.load(Acquire),
        committed = p.committed_index.load(Acquire),
        applied = p.applied_index.load(Acquire),
        cluster = CLUSTER_VERSION.rsplit_once('.').map_or(CLUSTER_VERSION, |(major_minor, _)| major_minor),
        puts = p.puts_applied.load(Acquire),
        deletes = p.deletes_applied.load(Acquire),
        keys = p.keys.load(Acquire),
        watch_canceled = super::watch::WATCH_STREAMS_CANCELED.load(Acquire),
    )
}
