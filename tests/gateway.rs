//! The JSON gateway (`/v3/...`) over plain HTTP/1.1, as curl and etcd's e2e tests use it:
//! exact JSON text (proto names, 64-bit integers as strings, bytes as base64, field order),
//! grpc-gateway's error bodies and HTTP statuses, the token in `Authorization`, newline-
//! delimited stream results, and `--max-concurrent-streams` bounding gateway calls. Checked
//! against etcd itself with `RUSD_TEST_ETCD`. Each test runs with `--shards 1` and
//! `--shards 2`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{each_shards, Server, ServerOpts};
use serde_json::Value;

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn request_text(srv: &Server, method: &str, path: &str, body: &str, extra: &[&str]) -> String {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        srv.port,
        body.len()
    );
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    req
}

/// A response's status, headers and the rest (still chunked if it was).
type Head = (u16, Vec<(String, String)>, Vec<u8>);

fn parse_head(raw: &[u8]) -> Option<Head> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Some((status, headers, raw[end + 4..].to_vec()))
}

/// The data of the complete chunks in `raw`.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let Ok(len) = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap_or("x"), 16)
        else {
            break;
        };
        if len == 0 || raw.len() < eol + 2 + len + 2 {
            break;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + len]);
        raw = &raw[eol + 2 + len + 2..];
    }
    out
}

fn send(srv: &Server, method: &str, path: &str, body: &str, extra: &[&str]) -> Reply {
    let mut extra = extra.to_vec();
    extra.push("Connection: close");
    let mut conn = TcpStream::connect(("127.0.0.1", srv.port)).expect("connecting");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_all(request_text(srv, method, path, body, &extra).as_bytes())
        .unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).expect("reading the response");
    let (status, headers, rest) = parse_head(&raw).expect("an HTTP response");
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v == "chunked");
    let body = if chunked { dechunk(&rest) } else { rest };
    Reply {
        status,
        headers,
        body: String::from_utf8(body).expect("a UTF-8 body"),
    }
}

fn post(srv: &Server, path: &str, body: &str) -> Reply {
    send(srv, "POST", path, body, &[])
}

/// A streaming call left open: its response lines as they come.
struct Streaming {
    conn: TcpStream,
    raw: Vec<u8>,
}

impl Streaming {
    fn open(srv: &Server, path: &str, body: &str) -> Streaming {
        let mut conn = TcpStream::connect(("127.0.0.1", srv.port)).expect("connecting");
        conn.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        conn.write_all(request_text(srv, "POST", path, body, &[]).as_bytes())
            .unwrap();
        Streaming {
            conn,
            raw: Vec::new(),
        }
    }

    /// The response lines received within `wait` (stops early once `want` lines are there).
    fn lines(&mut self, want: usize, wait: Duration) -> (Option<u16>, Vec<String>) {
        let deadline = Instant::now() + wait;
        loop {
            let head = parse_head(&self.raw);
            let lines: Vec<String> = head
                .as_ref()
                .map(|(_, _, rest)| String::from_utf8_lossy(&dechunk(rest)).to_string())
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect();
            if lines.len() >= want || Instant::now() > deadline {
                return (head.map(|h| h.0), lines);
            }
            let mut buf = [0u8; 4096];
            match self.conn.read(&mut buf) {
                Ok(0) => return (head.map(|h| h.0), lines),
                Ok(n) => self.raw.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    }
}

fn header_of(v: &Value) -> (&str, &str) {
    (
        v["header"]["cluster_id"]
            .as_str()
            .expect("cluster_id as a string"),
        v["header"]["member_id"]
            .as_str()
            .expect("member_id as a string"),
    )
}

#[test]
fn unary_calls_answer_etcds_json() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);

        let put = post(&srv, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#);
        assert_eq!(put.status, 200, "{}", put.body);
        assert_eq!(put.header("content-type"), Some("application/json"));
        assert_eq!(
            put.header("grpc-metadata-content-type"),
            Some("application/grpc")
        );
        let v = put.json();
        let (cluster, member) = header_of(&v);
        assert!(cluster.parse::<u64>().is_ok() && member.parse::<u64>().is_ok());
        // The whole body: header fields in declaration order, 64-bit values quoted, no newline.
        assert_eq!(
            put.body,
            format!(
                r#"{{"header":{{"cluster_id":"{cluster}","member_id":"{member}","revision":"2","raft_term":"2"}}}}"#
            )
        );

        // lowerCamel names and quoted numbers are read too; zero fields are left out.
        let range = post(
            &srv,
            "/v3/kv/range",
            r#"{"key":"Zm9v","keysOnly":false,"limit":"0"}"#,
        );
        assert_eq!(range.status, 200);
        assert!(
            range.body.ends_with(
                r#""kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#
            ),
            "{}",
            range.body
        );

        // The old prefix still answers.
        let range = post(
            &srv,
            "/v3beta/kv/range",
            r#"{"key":"Zm9v","count_only":true}"#,
        );
        assert_eq!(range.json()["count"], "1");

        // A txn as etcd's e2e test sends it (Go's JSONPb: enum names, camelCase, oneofs).
        let txn = post(
            &srv,
            "/v3/kv/txn",
            r#"{"compare":[{"target":"CREATE","key":"Zm9v","createRevision":"0"}],"failure":[{"requestPut":{"key":"Zm9v","value":"YmF6","prevKv":true}}]}"#,
        );
        assert!(
            txn.body.ends_with(
                r#""responses":[{"response_put":{"header":{"revision":"3"},"prev_kv":{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}}}]}"#
            ),
            "{}",
            txn.body
        );
        assert!(!txn.body.contains("succeeded"), "false is left out");

        let grant = post(&srv, "/v3/lease/grant", r#"{"ID":1234,"TTL":20}"#);
        assert!(
            grant.body.ends_with(r#""ID":"1234","TTL":"20"}"#),
            "{}",
            grant.body
        );
        let ttl = post(&srv, "/v3/kv/lease/timetolive", r#"{"ID":1234}"#);
        assert!(ttl.body.contains(r#""grantedTTL":"20""#), "{}", ttl.body);
        let leases = post(&srv, "/v3/lease/leases", "{}");
        assert!(
            leases.body.ends_with(r#""leases":[{"ID":"1234"}]}"#),
            "{}",
            leases.body
        );

        let hashkv = post(&srv, "/v3/maintenance/hashkv", r#"{"revision": 1}"#);
        assert!(
            hashkv.body.contains(r#","compact_revision":"-1"}"#),
            "{}",
            hashkv.body
        );
    });
}

#[test]
fn errors_as_grpc_gateway_writes_them() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let r = post(&srv, "/v3/kv/put", r#"{"value":"YmFy"}"#);
        assert_eq!(r.status, 400);
        assert_eq!(
            r.body,
            r#"{"error":"etcdserver: key is not provided","code":3,"message":"etcdserver: key is not provided"}"#
        );
        assert_eq!(r.header("grpc-metadata-content-type"), None);

        let r = post(&srv, "/v3/kv/lease/revoke", r#"{"ID":"77"}"#);
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["message"], "etcdserver: requested lease not found");

        // Errors of the recipes are code Unknown, hence 500.
        let r = post(&srv, "/v3/election/resign", "{}");
        assert_eq!(r.status, 500);
        assert_eq!(
            r.body,
            r#"{"error":"\"leader\" field must be provided","code":2,"message":"\"leader\" field must be provided"}"#
        );

        // Not JSON, or the wrong JSON type: InvalidArgument with Go's words.
        let r = post(&srv, "/v3/kv/put", r#"{"key":"Zm9v","#);
        assert_eq!(
            (r.status, r.json()["message"].as_str()),
            (400, Some("unexpected EOF"))
        );
        let r = post(&srv, "/v3/kv/put", r#"{"key":5}"#);
        assert_eq!(
            r.json()["error"],
            "json: cannot unmarshal number into Go value of type []uint8"
        );
        // An op with nothing in it (Go struct names are unknown, hence ignored).
        let r = post(
            &srv,
            "/v3/kv/txn",
            r#"{"success":[{"Request":{"RequestPut":{"key":"Zm9v"}}}]}"#,
        );
        assert_eq!(r.json()["message"], "etcdserver: key not found");

        let r = post(&srv, "/v3/kv/nothing", "{}");
        assert_eq!((r.status, r.body.as_str()), (404, "Not Found\n"));
        let r = send(&srv, "GET", "/v3/kv/range", "", &[]);
        assert_eq!((r.status, r.body.as_str()), (405, "Method Not Allowed\n"));
        // etcd's default --cors allows every origin.
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    });
}

#[test]
fn streams_are_newline_delimited_results() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        post(&srv, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#);

        let mut watch = Streaming::open(
            &srv,
            "/v3/watch",
            r#"{"create_request" : {"key":"Zm9v","start_revision":1,"prev_kv":true}}"#,
        );
        let (status, lines) = watch.lines(2, Duration::from_secs(10));
        assert_eq!(status, Some(200));
        assert_eq!(lines.len(), 2, "{lines:?}");
        let created: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(created["result"]["created"], true);
        assert!(
            lines[1].ends_with(
                r#""events":[{"kv":{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}}]}}"#
            ),
            "{}",
            lines[1]
        );
        // The watch outlives the request body: a later delete arrives with its previous value.
        post(&srv, "/v3/kv/deleterange", r#"{"key":"Zm9v"}"#);
        let (_, lines) = watch.lines(3, Duration::from_secs(10));
        assert!(
            lines[2].contains(r#""events":[{"type":"DELETE","kv":{"key":"Zm9v","mod_revision":"3"},"prev_kv":{"key":"Zm9v""#),
            "{lines:?}"
        );

        // Keep-alive: one answer per request object, then the stream ends.
        post(&srv, "/v3/lease/grant", r#"{"ID":99,"TTL":30}"#);
        let ka = post(&srv, "/v3/lease/keepalive", r#"{"ID":99} {"ID":"100"}"#);
        assert_eq!(ka.status, 200);
        let lines: Vec<&str> = ka.body.lines().collect();
        assert_eq!(lines.len(), 2, "{}", ka.body);
        assert!(
            lines[0].ends_with(r#""ID":"99","TTL":"30"}}"#),
            "{}",
            lines[0]
        );
        // An unknown lease answers TTL 0, left out.
        assert!(lines[1].ends_with(r#""ID":"100"}}"#), "{}", lines[1]);
        assert!(ka.body.ends_with('\n'));

        // A bad first request object is the answer, code Unknown.
        let bad = post(&srv, "/v3/watch", r#"{"create_request":{"key":5}}"#);
        assert_eq!(bad.status, 500);
        assert_eq!(bad.json()["code"], 2);
    });
}

#[test]
fn token_comes_in_the_authorization_header() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        for (path, body) in [
            ("/v3/auth/user/add", r#"{"name":"root","password":"toor"}"#),
            ("/v3/auth/role/add", r#"{"name":"root"}"#),
            ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
            ("/v3/auth/enable", "{}"),
        ] {
            let r = post(&srv, path, body);
            assert_eq!(r.status, 200, "{path}: {}", r.body);
        }
        let put = r#"{"key":"YQ==","value":"Yg=="}"#;
        let denied = post(&srv, "/v3/kv/put", put);
        assert_eq!(denied.status, 400, "{}", denied.body);
        assert_eq!(denied.json()["message"], "etcdserver: user name is empty");

        let auth = post(
            &srv,
            "/v3/auth/authenticate",
            r#"{"name":"root","password":"toor"}"#,
        );
        let token = auth.json()["token"].as_str().expect("a token").to_string();
        let header = format!("Authorization: {token}");
        let ok = send(&srv, "POST", "/v3/kv/put", put, &[&header]);
        assert_eq!(ok.status, 200, "{}", ok.body);
        let bad = send(&srv, "POST", "/v3/kv/put", put, &["Authorization: nope"]);
        assert_eq!(bad.status, 401, "{}", bad.body);
        assert_eq!(bad.json()["message"], "etcdserver: invalid auth token");
    });
}

#[test]
fn max_concurrent_streams_bounds_gateway_calls() {
    each_shards(|shards| async move {
        let srv = ServerOpts::new(shards)
            .arg("--max-concurrent-streams")
            .arg("2")
            .start();
        let mut watches: Vec<Streaming> = (0..2)
            .map(|_| Streaming::open(&srv, "/v3/watch", r#"{"create_request":{"key":"Zm9v"}}"#))
            .collect();
        for w in &mut watches {
            let (_, lines) = w.lines(1, Duration::from_secs(10));
            assert_eq!(lines.len(), 1, "the watch was created");
        }
        // Both places are taken: a range waits...
        let mut range = Streaming::open(&srv, "/v3/kv/range", r#"{"key":"Zm9v"}"#);
        let (status, _) = range.lines(1, Duration::from_secs(1));
        assert_eq!(status, None, "answered while every place was taken");
        // ...until a watch's client leaves.
        drop(watches.pop());
        let (status, _) = range.lines(1, Duration::from_secs(10));
        assert_eq!(status, Some(200));
    });
}
