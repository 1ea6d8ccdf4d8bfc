//! Plain HTTP endpoints on the client port: /version, /health, /livez, /readyz (and each
//! check's own path, with `exclude` and `verbose` as etcd 3.5.17 reads them), /metrics, and
//! the CORS answer etcd gives on every HTTP path of that port.

use std::sync::atomic::Ordering::Acquire;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;

use super::maintenance::{CLUSTER_VERSION, SERVER_VERSION};
use super::Context;
use crate::coordinator::{AlarmKind, CoordMsg};
use crate::error::EtcdError;

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
    let path = req.uri().path();
    // etcd's health handlers answer GET only (HEAD included in the refusal).
    if is_health_path(path) && req.method() != Method::GET {
        let mut resp = plain_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        crate::log_warn!(
            "Health request error",
            "path" => path.to_string(),
            "status-code" => 405
        );
        return resp;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "Method Not Allowed\n",
        );
    }
    let query = Query::parse(req.uri().query().unwrap_or(""));
    match path {
        "/version" => reply(
            StatusCode::OK,
            "application/json",
            format!(r#"{{"etcdserver":"{SERVER_VERSION}","etcdcluster":"{CLUSTER_VERSION}"}}"#),
        ),
        "/health" => health(&ctx, &query).await,
        "/livez" => {
            let names = without_excluded(LIVEZ_CHECKS, &query);
            checks_reply(&ctx, path, &names, &query).await
        }
        "/readyz" => {
            let names = without_excluded(READYZ_CHECKS, &query);
            checks_reply(&ctx, path, &names, &query).await
        }
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(&ctx),
        ),
        _ => match single_check(path) {
            Some(check) => checks_reply(&ctx, path, &[check], &query).await,
            None => plain_error(StatusCode::NOT_FOUND, "404 page not found"),
        },
    }
}

/// Go's http.Error: the message and a newline, as plain text the client must not sniff.
fn plain_error(code: StatusCode, message: &str) -> Response<Body> {
    let mut resp = reply(code, "text/plain; charset=utf-8", format!("{message}\n"));
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    resp
}

/// The query parameters the health endpoints read, as Go's `url.Values` would give them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    /// Every non-empty `exclude` value.
    exclude: Vec<String>,
    /// `verbose` is present (with any value).
    verbose: bool,
    /// `serializable=true` (the first `serializable` value, as Go's `Get`).
    serializable: bool,
}

impl Query {
    fn parse(raw: &str) -> Query {
        let mut q = Query::default();
        let mut serializable = None;
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (Some(key), Some(value)) = (unescape(key), unescape(value)) else {
                // Go's ParseQuery drops a pair it cannot unescape.
                continue;
            };
            match key.as_str() {
                "exclude" if !value.is_empty() => q.exclude.push(value),
                "verbose" => q.verbose = true,
                "serializable" => {
                    serializable.get_or_insert(value);
                }
                _ => {}
            }
        }
        q.serializable = serializable.as_deref() == Some("true");
        q
    }
}

/// Go's query unescaping: `+` is a space, `%XX` a byte; `None` for a bad escape or bytes that
/// are not UTF-8.
fn unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// etcd's /livez and /readyz checks, in the order etcd registers them (etcd itself lists them
/// in Go's random map order).
const LIVEZ_CHECKS: &[Check] = &[Check::SerializableRead];
const READYZ_CHECKS: &[Check] = &[
    Check::DataCorruption,
    Check::SerializableRead,
    Check::LinearizableRead,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// No CORRUPT alarm is raised.
    DataCorruption,
    /// A local read goes through.
    SerializableRead,
    /// A read through the read index goes through (a leader and a quorum answer).
    LinearizableRead,
}

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
        }
    }

    async fn run(self, ctx: &Context) -> Result<(), String> {
        match self {
            Check::DataCorruption => {
                let alarms = alarms(ctx).await.map_err(message)?;
                if alarms.iter().any(|(_, a)| *a == AlarmKind::Corrupt) {
                    return Err("alarm activated: CORRUPT".into());
                }
                Ok(())
            }
            Check::SerializableRead => health_read(ctx, true).await.map_err(message),
            Check::LinearizableRead => health_read(ctx, false).await.map_err(message),
        }
    }
}

fn is_health_path(path: &str) -> bool {
    matches!(path, "/health" | "/livez" | "/readyz") || single_check(path).is_some()
}

/// A check's own path: `/livez/<name>` or `/readyz/<name>`.
fn single_check(path: &str) -> Option<Check> {
    let (list, name) = if let Some(name) = path.strip_prefix("/livez/") {
        (LIVEZ_CHECKS, name)
    } else if let Some(name) = path.strip_prefix("/readyz/") {
        (READYZ_CHECKS, name)
    } else {
        return None;
    };
    list.iter().copied().find(|c| c.name() == name)
}

/// The checks left after `exclude`; excluding a check that does not exist fails nothing (etcd
/// keeps old probes working), it is only logged.
fn without_excluded(checks: &[Check], query: &Query) -> Vec<Check> {
    let unknown: Vec<&String> = query
        .exclude
        .iter()
        .filter(|e| !checks.iter().any(|c| c.name() == e.as_str()))
        .collect();
    if !unknown.is_empty() {
        let quoted: Vec<String> = unknown.iter().map(|e| format!("{e:?}")).collect();
        crate::log_warn!(
            "some health checks cannot be excluded",
            "missing-health-checks" => quoted.join(",")
        );
    }
    checks
        .iter()
        .copied()
        .filter(|c| !query.exclude.iter().any(|e| e == c.name()))
        .collect()
}

/// Runs `checks` and answers as etcd's /livez and /readyz: 200 with "ok" (after each check's
/// line when `verbose` is given), or 503 with every check's line.
async fn checks_reply(
    ctx: &Context,
    path: &str,
    checks: &[Check],
    query: &Query,
) -> Response<Body> {
    let mut lines = String::new();
    let mut failed = false;
    for check in checks {
        match check.run(ctx).await {
            Ok(()) => lines.push_str(&format!("[+]{} ok\n", check.name())),
            Err(e) => {
                failed = true;
                lines.push_str(&format!("[-]{} failed: {e}\n", check.name()));
            }
        }
    }
    if failed {
        crate::log_error!(
            "Health check error",
            "path" => path.to_string(),
            "reason" => lines.clone(),
            "status-code" => 503
        );
        return plain_error(StatusCode::SERVICE_UNAVAILABLE, &lines);
    }
    let body = if query.verbose {
        format!("{lines}ok\n")
    } else {
        "ok\n".to_string()
    };
    let mut resp = reply(StatusCode::OK, "text/plain; charset=utf-8", body);
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    resp
}

/// The member's alarms, from the coordinator (which applies alarm changes).
async fn alarms(ctx: &Context) -> Result<Vec<(u64, AlarmKind)>, EtcdError> {
    ctx.coordinator
        .ask(|reply| CoordMsg::AlarmList { reply })
        .await
}

/// etcd's health read: a keys-only range of one key, serializable (the shards only) or
/// linearizable (after the read index).
async fn health_read(ctx: &Context, serializable: bool) -> Result<(), EtcdError> {
    if !serializable {
        ctx.coordinator.read_index().await?;
    }
    let probe = shards::RangeRequest {
        keys_only: true,
        limit: 1,
        ..Default::default()
    };
    ctx.shards
        .range(&probe, ctx.published.revision())
        .await
        .map_err(|_| EtcdError::Stopped)?
        .map_err(EtcdError::from)?;
    Ok(())
}

/// etcd's message for an error, as a client would read it.
fn message(e: EtcdError) -> String {
    super::status::status(e).message().to_string()
}

/// etcd's /health: unhealthy with a raised alarm that `exclude` does not name, without a
/// leader (unless `serializable=true`), or when a read (linearizable unless
/// `serializable=true`) fails.
async fn health(ctx: &Context, query: &Query) -> Response<Body> {
    let verdict = async {
        let alarms = alarms(ctx)
            .await
            .map_err(|e| format!("RANGE ERROR:{}", message(e)))?;
        for (member_id, alarm) in alarms {
            let name = match alarm {
                AlarmKind::NoSpace => "NOSPACE",
                AlarmKind::Corrupt => "CORRUPT",
            };
            if query.exclude.iter().any(|e| e == name) {
                continue;
            }
            crate::log_warn!(
                "serving /health false due to an alarm",
                "alarm" => format!("memberID:{member_id} alarm:{name} ")
            );
            return Err(format!("ALARM {name}"));
        }
        if !query.serializable && ctx.published.leader() == 0 {
            crate::log_warn!("serving /health false; no leader");
            return Err("RAFT NO LEADER".to_string());
        }
        health_read(ctx, query.serializable)
            .await
            .map_err(|e| format!("RANGE ERROR:{}", message(e)))
    }
    .await;
    match verdict {
        Ok(()) => reply(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            r#"{"health":"true","reason":""}"#,
        ),
        Err(reason) => {
            let reason = serde_json::Value::String(reason);
            let body = format!(r#"{{"health":"false","reason":{reason}}}"#);
            crate::log_warn!(
                "/health error",
                "output" => body.clone(),
                "status-code" => 503
            );
            plain_error(StatusCode::SERVICE_UNAVAILABLE, &body)
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_as_go_reads_it() {
        let q = Query::parse("exclude=NOSPACE&exclude=&exclude=CORRUPT&verbose&serializable=true");
        assert_eq!(q.exclude, ["NOSPACE", "CORRUPT"]);
        assert!(q.verbose && q.serializable);
        // Go's Get takes the first value; escapes are decoded; a bad escape drops the pair.
        let q = Query::parse(
            "serializable=false&serializable=true&exclude=data%5Fcorruption&verbose=%zz",
        );
        assert_eq!(q.exclude, ["data_corruption"]);
        assert!(!q.verbose && !q.serializable);
        assert_eq!(Query::parse(""), Query::default());
    }

    #[test]
    fn check_paths() {
        assert_eq!(
            single_check("/livez/serializable_read"),
            Some(Check::SerializableRead)
        );
        assert_eq!(
            single_check("/readyz/data_corruption"),
            Some(Check::DataCorruption)
        );
        assert_eq!(single_check("/livez/linearizable_read"), None);
        assert_eq!(single_check("/readyz/"), None);
        assert!(is_health_path("/health") && !is_health_path("/healthz"));
        let q = Query::parse("exclude=data_corruption&exclude=bogus");
        assert_eq!(
            without_excluded(READYZ_CHECKS, &q),
            [Check::SerializableRead, Check::LinearizableRead]
        );
    }
}
