//! etcd's grpc-gateway: the JSON translation of the gRPC API at `/v3/...` (and the older
//! `/v3beta/...`) on the client port, for clients that speak plain HTTP (curl, browsers).
//!
//! etcd runs grpc-gateway v1 as a gRPC client of its own server. This does the same in-process:
//! the JSON body becomes the method's request message (`json`), encoded as a gRPC frame and sent
//! through the `Router` to the very tonic services gRPC clients reach, so validation, auth (the
//! `Authorization` header is the token), size limits and errors are theirs. The gRPC frames that
//! come back are written out as JSON:
//! - unary: the response message, or `{"error":..,"code":..,"message":..}` with the gRPC code's
//!   HTTP status (grpc-gateway's `HTTPStatusFromCode`);
//! - streams (watch, lease keep-alive, election observe, snapshot): one `{"result":{..}}` line
//!   per message, an error after the first message as a last `{"error":{"grpc_code":..}}`
//!   object. A client-streaming body is a sequence of JSON objects, each sent as it arrives.
//!
//! etcd's gateway reaches its server over one gRPC connection, so `--max-concurrent-streams`
//! caps the gateway calls in flight together (an HTTP client beyond it waits, as etcd's do);
//! `StreamGate` keeps that count across cores.

pub mod json;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{SinkExt, Stream, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor, MethodDescriptor};
use tonic::{Code, Status};

use super::http::Body;
use super::router::{Router, GRPC_DECODE_OVERHEAD_BYTES};
use super::Context;

/// The gateway's paths per gRPC service (grpc-gateway patterns of etcd v3.5.17's
/// `*.pb.gw.go`): HTTP path, method. All are POST.
const ROUTES: &[(&str, &[(&str, &str)])] = &[
    (
        "etcdserverpb.KV",
        &[
            ("/v3/kv/range", "Range"),
            ("/v3/kv/put", "Put"),
            ("/v3/kv/deleterange", "DeleteRange"),
            ("/v3/kv/txn", "Txn"),
            ("/v3/kv/compaction", "Compact"),
        ],
    ),
    ("etcdserverpb.Watch", &[("/v3/watch", "Watch")]),
    (
        "etcdserverpb.Lease",
        &[
            ("/v3/lease/grant", "LeaseGrant"),
            ("/v3/lease/revoke", "LeaseRevoke"),
            ("/v3/kv/lease/revoke", "LeaseRevoke"),
            ("/v3/lease/keepalive", "LeaseKeepAlive"),
            ("/v3/lease/timetolive", "LeaseTimeToLive"),
            ("/v3/kv/lease/timetolive", "LeaseTimeToLive"),
            ("/v3/lease/leases", "LeaseLeases"),
            ("/v3/kv/lease/leases", "LeaseLeases"),
        ],
    ),
    (
        "etcdserverpb.Cluster",
        &[
            ("/v3/cluster/member/add", "MemberAdd"),
            ("/v3/cluster/member/remove", "MemberRemove"),
            ("/v3/cluster/member/update", "MemberUpdate"),
            ("/v3/cluster/member/list", "MemberList"),
            ("/v3/cluster/member/promote", "MemberPromote"),
        ],
    ),
    (
        "etcdserverpb.Maintenance",
        &[
            ("/v3/maintenance/alarm", "Alarm"),
            ("/v3/maintenance/status", "Status"),
            ("/v3/maintenance/defragment", "Defragment"),
            ("/v3/maintenance/hash", "Hash"),
            ("/v3/maintenance/hashkv", "HashKV"),
            ("/v3/maintenance/snapshot", "Snapshot"),
            ("/v3/maintenance/transfer-leadership", "MoveLeader"),
            ("/v3/maintenance/downgrade", "Downgrade"),
        ],
    ),
    (
        "etcdserverpb.Auth",
        &[
            ("/v3/auth/enable", "AuthEnable"),
            ("/v3/auth/disable", "AuthDisable"),
            ("/v3/auth/status", "AuthStatus"),
            ("/v3/auth/authenticate", "Authenticate"),
            ("/v3/auth/user/add", "UserAdd"),
            ("/v3/auth/user/get", "UserGet"),
            ("/v3/auth/user/list", "UserList"),
            ("/v3/auth/user/delete", "UserDelete"),
            ("/v3/auth/user/changepw", "UserChangePassword"),
            ("/v3/auth/user/grant", "UserGrantRole"),
            ("/v3/auth/user/revoke", "UserRevokeRole"),
            ("/v3/auth/role/add", "RoleAdd"),
            ("/v3/auth/role/get", "RoleGet"),
            ("/v3/auth/role/list", "RoleList"),
            ("/v3/auth/role/delete", "RoleDelete"),
            ("/v3/auth/role/grant", "RoleGrantPermission"),
            ("/v3/auth/role/revoke", "RoleRevokePermission"),
        ],
    ),
    (
        "v3electionpb.Election",
        &[
            ("/v3/election/campaign", "Campaign"),
            ("/v3/election/proclaim", "Proclaim"),
            ("/v3/election/leader", "Leader"),
            ("/v3/election/observe", "Observe"),
            ("/v3/election/resign", "Resign"),
        ],
    ),
    (
        "v3lockpb.Lock",
        &[("/v3/lock/lock", "Lock"), ("/v3/lock/unlock", "Unlock")],
    ),
];

/// The gRPC service and method behind an HTTP path.
fn route(path: &str) -> Option<(&'static str, &'static str)> {
    ROUTES.iter().find_map(|(service, paths)| {
        paths
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, method)| (*service, *method))
    })
}

/// Buffered JSON bytes of one request object at most, and of a unary body: JSON is larger than
/// the protobuf it carries (base64 is 4/3 of the bytes, plus names and quotes), so twice the
/// gRPC receive limit lets through every request the gRPC path would take. Above it the call
/// fails with ResourceExhausted (HTTP 429), the code etcd gives a message over its limit.
fn body_limit(ctx: &Context) -> usize {
    2 * (ctx.max_request_bytes + GRPC_DECODE_OVERHEAD_BYTES)
}

/// Requests of a client-streaming body decoded ahead of the service reading them.
const STREAM_REQUESTS_AHEAD: usize = 16;

/// Is this a gateway path (the router sends it here rather than to the HTTP endpoints)?
pub fn is_gateway_path(path: &str) -> bool {
    path.starts_with("/v3/") || path.starts_with("/v3beta/")
}

/// How many gateway calls run at once, at most `--max-concurrent-streams`, across all cores.
pub struct StreamGate {
    max: u32,
    open: AtomicU32,
}

/// One gateway call's place under `StreamGate`, given back on drop.
pub struct StreamPermit(Arc<StreamGate>);

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How often a call waiting for a place looks again: places are freed on any core, and a
/// poll keeps the gate a plain atomic counter instead of a cross-core waiter list.
const GATE_POLL: Duration = Duration::from_millis(5);

impl StreamGate {
    pub fn new(max_concurrent_streams: u32) -> Arc<StreamGate> {
        Arc::new(StreamGate {
            max: max_concurrent_streams.max(1),
            open: AtomicU32::new(0),
        })
    }

    fn try_acquire(self: &Arc<Self>) -> Option<StreamPermit> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamPermit(self.clone()))
    }

    /// Waits for a place. `Send`: the waiting runs as a task of this core, which gives up as
    /// soon as the caller is gone (an HTTP client that timed out).
    async fn acquire(self: &Arc<Self>) -> Result<StreamPermit, Status> {
        if let Some(p) = self.try_acquire() {
            return Ok(p);
        }
        let (mut tx, rx) = futures::channel::oneshot::channel();
        let gate = self.clone();
        glommio::spawn_local(async move {
            loop {
                if tx.is_canceled() {
                    return;
                }
                if let Some(p) = gate.try_acquire() {
                    let _ = tx.send(p);
                    return;
                }
                let wait = std::pin::pin!(glommio::timer::sleep(GATE_POLL));
                futures::future::select(wait, tx.cancellation()).await;
            }
        })
        .detach();
        rx.await
            .map_err(|_| super::status::status(crate::error::EtcdError::Stopped))
    }
}

/// Serves one gateway request (`is_gateway_path`).
pub async fn handle<B>(router: Router, ctx: Context, req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
{
    // etcd still answers the pre-3.4 prefix.
    let path = match req.uri().path().strip_prefix("/v3beta/") {
        Some(rest) => format!("/v3/{rest}"),
        None => req.uri().path().to_string(),
    };
    let Some((service, method)) = route(&path) else {
        return plain(StatusCode::NOT_FOUND, "Not Found\n");
    };
    if req.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
    }
    // etcd's accessController: with client certificate auth and auth enabled, a certificate
    // that names a user is refused here, since the gateway would not act as that user.
    let cn = req.extensions().get::<crate::net::tls::PeerCommonName>();
    if ctx.gateway_ignores_common_name(cn) {
        return plain(
            StatusCode::BAD_REQUEST,
            "CommonName of client sending a request against gateway will be ignored and not used as expected\n",
        );
    }
    let method = json::pool()
        .get_service_by_name(service)
        .and_then(|s| s.methods().find(|m| m.name() == method))
        .expect("every route names a method of the compiled protos (tests::routes)");
    let grpc_path = format!("/{service}/{}", method.name());
    let (parts, body) = req.into_parts();
    let metadata = forwarded_metadata(&parts.headers);
    let limit = body_limit(&ctx);
    let mut reader = JsonReader::new(Box::pin(body), limit);

    if method.is_client_streaming() {
        return client_stream(router, &ctx, method, &grpc_path, metadata, reader).await;
    }
    // A unary request body: the first JSON value of the whole body (grpc-gateway reads it all
    // and decodes one value; an empty body is an empty request).
    let request = match reader.read_to_end().await {
        Ok(()) => match reader.next_value() {
            Ok(v) => v.unwrap_or(serde_json::Value::Null),
            Err(e) => return error_response(&e),
        },
        Err(e) => return error_response(&e),
    };
    let msg = match json::read_message(&method.input(), &request) {
        Ok(m) => m,
        Err(e) => return error_response(&Status::invalid_argument(e)),
    };
    let permit = match ctx.gateway_streams.acquire().await {
        Ok(p) => p,
        Err(s) => return error_response(&s),
    };
    let body = Full::new(grpc_frame(&msg));
    let resp = call(router, &grpc_path, metadata, body).await;
    if method.is_server_streaming() {
        stream_response(resp, method.output(), permit, None).await
    } else {
        let out = unary_response(resp, &method.output()).await;
        drop(permit);
        out
    }
}

/// A client-streaming call (watch, lease keep-alive): the body's JSON objects are sent as they
/// arrive, decoded by a task of this core while the responses stream back.
async fn client_stream(
    router: Router,
    ctx: &Context,
    method: MethodDescriptor,
    grpc_path: &str,
    metadata: HeaderMap,
    mut reader: JsonReader,
) -> Response<Body> {
    let permit = match ctx.gateway_streams.acquire().await {
        Ok(p) => p,
        Err(s) => return error_response(&s),
    };
    let input = method.input();
    let (mut tx, rx) = futures::channel::mpsc::channel::<Bytes>(STREAM_REQUESTS_AHEAD);
    // As grpc-gateway: the first object is decoded before anything else, and a bad one is the
    // answer (code Unknown: the gateway passes its decoder's error on as it is).
    match reader.next_request(&input).await {
        Ok(Some(first)) => {
            let _ = tx.send(first).await;
        }
        Ok(None) => {}
        Err(e) if e.code() == Code::ResourceExhausted => return error_response(&e),
        Err(e) => return error_response(&Status::unknown(e.message().to_string())),
    }
    // etcd's watch server keeps its watchers when the client stops sending, and so does the
    // gateway's watch after the body ends: the stream stays open until the HTTP client leaves.
    // A keep-alive stream ends once its requests are answered.
    let keep_open = (method.name() == "Watch").then(|| tx.clone());
    glommio::spawn_local(async move {
        // A later bad object ends the sending side only (as grpc-gateway does).
        while let Ok(Some(next)) = reader.next_request(&input).await {
            if tx.send(next).await.is_err() {
                return;
            }
        }
    })
    .detach();
    let body = StreamBody::new(rx.map(|b| Ok::<_, Infallible>(Frame::data(b))));
    let resp = call(router, grpc_path, metadata, body).await;
    stream_response(resp, method.output(), permit, keep_open).await
}

/// The gRPC metadata a gateway call carries (grpc-gateway's `AnnotateContext`): the
/// `Authorization` header (etcd reads its token from it) and every `Grpc-Metadata-*` header
/// under its own name.
fn forwarded_metadata(headers: &HeaderMap) -> HeaderMap {
    let mut md = HeaderMap::new();
    for (name, value) in headers {
        if name == header::AUTHORIZATION {
            md.append(header::AUTHORIZATION, value.clone());
        } else if let Some(key) = name.as_str().strip_prefix("grpc-metadata-") {
            if let Ok(key) = http::HeaderName::from_bytes(key.as_bytes()) {
                md.append(key, value.clone());
            }
        }
    }
    md
}

/// Sends one gRPC request through the router, as a gRPC client on a connection would.
async fn call<B>(router: Router, grpc_path: &str, metadata: HeaderMap, body: B) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
{
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(grpc_path)
        .version(http::Version::HTTP_2)
        .body(body)
        .expect("a gRPC method path is a valid URI");
    let headers = req.headers_mut();
    headers.extend(metadata);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    let mut router = router;
    match tower_service::Service::call(&mut router, req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

/// One uncompressed gRPC length-prefixed message.
fn grpc_frame(msg: &DynamicMessage) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    msg.encode_raw(&mut buf);
    buf.freeze()
}

/// Reads the messages of a gRPC response body, then its status.
struct GrpcReader {
    body: Body,
    buf: BytesMut,
    done: bool,
}

impl GrpcReader {
    /// A response whose headers already carry the status (no message will come) is `Err`.
    fn new(resp: Response<Body>) -> Result<GrpcReader, Status> {
        let (parts, body) = resp.into_parts();
        if let Some(s) = Status::from_header_map(&parts.headers) {
            return Err(s);
        }
        Ok(GrpcReader {
            body,
            buf: BytesMut::new(),
            done: false,
        })
    }

    /// The next message, `None` after an OK status, `Err` with any other.
    async fn next(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let need = 5 + len as usize;
                if self.buf.len() >= need {
                    let mut frame = self.buf.split_to(need);
                    frame.advance(5);
                    return Ok(Some(frame.freeze()));
                }
            }
            if self.done {
                return Err(Status::internal(
                    "server closed the stream without sending trailers",
                ));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buf.extend_from_slice(&data),
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        return match Status::from_header_map(&trailers) {
                            Some(s) if s.code() != Code::Ok => Err(s),
                            _ => Ok(None),
                        };
                    }
                },
                Some(Err(s)) => return Err(s),
                None => self.done = true,
            }
        }
    }
}

fn decode(desc: &MessageDescriptor, bytes: Bytes) -> Result<DynamicMessage, Status> {
    DynamicMessage::decode(desc.clone(), bytes)
        .map_err(|e| Status::internal(format!("gateway: undecodable response: {e}")))
}

async fn unary_response(resp: Response<Body>, output: &MessageDescriptor) -> Response<Body> {
    let mut reader = match GrpcReader::new(resp) {
        Ok(r) => r,
        Err(s) => return error_response(&s),
    };
    let msg = match reader.next().await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return error_response(&Status::internal("gateway: no response message")),
        Err(s) => return error_response(&s),
    };
    // The status that follows the message still decides (a unary call has one message).
    if let Err(s) = reader.next().await {
        return error_response(&s);
    }
    match decode(output, msg) {
        Ok(m) => {
            let mut out = Vec::with_capacity(msg_json_capacity(&m));
            json::write_message(&mut out, &m);
            json_response(StatusCode::OK, Body::new(Full::new(Bytes::from(out))))
        }
        Err(s) => error_response(&s),
    }
}

fn msg_json_capacity(m: &DynamicMessage) -> usize {
    // base64 and names make JSON about a third larger than the message.
    m.encoded_len() * 3 / 2 + 64
}

/// One piece of a streamed answer: a `{"result":..}` line, or the closing error object with
/// the HTTP status it calls for when nothing was written before it.
enum Chunk {
    Result(Bytes),
    Error(StatusCode, Bytes),
}

/// Held while a streamed answer is being written: the call's place under the gate and, for a
/// watch, the request channel kept open.
struct StreamHold {
    _permit: StreamPermit,
    _keep_open: Option<futures::channel::mpsc::Sender<Bytes>>,
}

async fn stream_response(
    resp: Response<Body>,
    output: MessageDescriptor,
    permit: StreamPermit,
    keep_open: Option<futures::channel::mpsc::Sender<Bytes>>,
) -> Response<Body> {
    let reader = match GrpcReader::new(resp) {
        Ok(r) => r,
        // Refused before any header: grpc-gateway answers as for a unary call.
        Err(s) => return error_response(&s),
    };
    let hold = StreamHold {
        _permit: permit,
        _keep_open: keep_open,
    };
    let chunks = futures::stream::unfold(Some((reader, output, hold)), |state| async move {
        let (mut reader, output, hold) = state?;
        let next = reader.next().await.and_then(|m| match m {
            Some(bytes) => decode(&output, bytes).map(Some),
            None => Ok(None),
        });
        match next {
            Ok(Some(m)) => {
                let mut out = Vec::with_capacity(msg_json_capacity(&m) + 12);
                out.extend_from_slice(b"{\"result\":");
                json::write_message(&mut out, &m);
                out.extend_from_slice(b"}\n");
                Some((Chunk::Result(out.into()), Some((reader, output, hold))))
            }
            Ok(None) => None,
            Err(s) => {
                let (status, body) = stream_error(&s);
                Some((Chunk::Error(status, body), None))
            }
        }
    });
    let mut chunks = Box::pin(chunks);
    // Like Go's ResponseWriter, the status line waits for the first piece: an error before any
    // result gets its own HTTP status.
    let (status, first) = match chunks.next().await {
        None => (StatusCode::OK, None),
        Some(Chunk::Result(b)) => (StatusCode::OK, Some(b)),
        Some(Chunk::Error(status, b)) => (status, Some(b)),
    };
    let rest = chunks.map(|c| match c {
        Chunk::Result(b) | Chunk::Error(_, b) => b,
    });
    let all: Pin<Box<dyn Stream<Item = Bytes> + Send>> =
        Box::pin(futures::stream::iter(first).chain(rest));
    let body = StreamBody::new(all.map(|b| Ok::<_, Infallible>(Frame::data(b))));
    json_response(status, Body::new(body))
}

fn json_response(status: StatusCode, body: Body) -> Response<Body> {
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("static response parts are valid");
    // grpc-gateway passes the server's response headers on under this prefix; a refused call
    // had none.
    if status == StatusCode::OK {
        resp.headers_mut().insert(
            "grpc-metadata-content-type",
            HeaderValue::from_static("application/grpc"),
        );
    }
    resp
}

/// Go's `http.Error`.
fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("x-content-type-options", "nosniff")
        .body(Body::new(Full::new(Bytes::from_static(text.as_bytes()))))
        .expect("static response parts are valid")
}

/// grpc-gateway's `HTTPStatusFromCode`.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// grpc-gateway's error body (its `internal.Error` message through the same marshaler: empty
/// fields left out).
fn error_body(s: &Status) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.message().len() * 2 + 48);
    out.push(b'{');
    if !s.message().is_empty() {
        out.extend_from_slice(b"\"error\":");
        json::write_str(&mut out, s.message());
        out.push(b',');
    }
    out.extend_from_slice(format!("\"code\":{}", s.code() as i32).as_bytes());
    if !s.message().is_empty() {
        out.extend_from_slice(b",\"message\":");
        json::write_str(&mut out, s.message());
    }
    out.push(b'}');
    out
}

fn error_response(s: &Status) -> Response<Body> {
    json_response(
        http_status(s.code()),
        Body::new(Full::new(Bytes::from(error_body(s)))),
    )
}

/// A stream's closing error object (grpc-gateway's `StreamError`), and its HTTP status.
fn stream_error(s: &Status) -> (StatusCode, Bytes) {
    let http = http_status(s.code());
    let mut out = Vec::with_capacity(s.message().len() * 2 + 96);
    out.extend_from_slice(
        format!(
            "{{\"error\":{{\"grpc_code\":{},\"http_code\":{}",
            s.code() as i32,
            http.as_u16()
        )
        .as_bytes(),
    );
    if !s.message().is_empty() {
        out.extend_from_slice(b",\"message\":");
        json::write_str(&mut out, s.message());
    }
    if let Some(reason) = http.canonical_reason() {
        out.extend_from_slice(b",\"http_status\":");
        json::write_str(&mut out, reason);
    }
    out.extend_from_slice(b"}}");
    (http, Bytes::from(out))
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

type BoxedBody = Pin<Box<dyn http_body::Body<Data = Bytes, Error = String> + Send>>;

/// Reads JSON values one after another from a request body, as Go's `json.Decoder` does,
/// holding at most `limit` bytes.
struct JsonReader {
    body: BoxedBody,
    buf: Vec<u8>,
    ended: bool,
    limit: usize,
    /// The buffer length at the last attempt that found an unfinished value: parsing again
    /// waits until the buffer has grown by half, so a large value costs O(n log n), not O(n²).
    tried_at: usize,
}

impl JsonReader {
    fn new<B>(body: Pin<Box<B>>, limit: usize) -> JsonReader
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError> + Send + 'static,
    {
        JsonReader {
            body: Box::pin(body.map_err(|e| e.into().to_string())),
            buf: Vec::new(),
            ended: false,
            limit,
            tried_at: 0,
        }
    }

    /// Reads more of the body into the buffer; false once it ended.
    async fn fill(&mut self) -> Result<bool, Status> {
        loop {
            match self.body.frame().await {
                None => {
                    self.ended = true;
                    return Ok(false);
                }
                Some(Err(e)) => return Err(Status::invalid_argument(e)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                        if self.buf.len() > self.limit {
                            return Err(too_large(self.buf.len(), self.limit));
                        }
                        return Ok(true);
                    }
                }
            }
        }
    }

    async fn read_to_end(&mut self) -> Result<(), Status> {
        while self.fill().await? {}
        Ok(())
    }

    /// The next complete value in the buffer: `Ok(None)` when there is none yet (or, once the
    /// body ended, none at all).
    fn next_value(&mut self) -> Result<Option<serde_json::Value>, Status> {
        let skip = self
            .buf
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(self.buf.len());
        self.buf.drain(..skip);
        if self.buf.is_empty() {
            return Ok(None);
        }
        if !self.ended && self.buf.len() < self.tried_at + self.tried_at / 2 {
            return Ok(None);
        }
        let mut values =
            serde_json::Deserializer::from_slice(&self.buf).into_iter::<serde_json::Value>();
        match values.next() {
            Some(Ok(v)) => {
                let used = values.byte_offset();
                self.buf.drain(..used);
                self.tried_at = 0;
                Ok(Some(v))
            }
            Some(Err(e)) if e.is_eof() && !self.ended => {
                self.tried_at = self.buf.len();
                Ok(None)
            }
            Some(Err(e)) => Err(Status::invalid_argument(json::syntax_error(&e))),
            None => Ok(None),
        }
    }

    /// The next request of a client stream, encoded as a gRPC frame; `None` at the body's end.
    async fn next_request(&mut self, input: &MessageDescriptor) -> Result<Option<Bytes>, Status> {
        loop {
            if let Some(v) = self.next_value()? {
                let msg = json::read_message(input, &v).map_err(Status::invalid_argument)?;
                return Ok(Some(grpc_frame(&msg)));
            }
            if self.ended {
                return Ok(None);
            }
            self.fill().await?;
        }
    }
}

fn too_large(len: usize, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "gateway: request body larger than max ({len} vs. {limit} bytes)"
    ))
}

#[cfg(test)]
mod tests;
