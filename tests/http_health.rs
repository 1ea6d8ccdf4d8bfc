//! /health, /livez and /readyz as etcd v3.5.17 answers them (server/etcdserver/api/etcdhttp):
//! the alarms /health reports and `exclude` skips, `serializable`, the checks /readyz and
//! /livez run, `verbose`, `exclude` of a check (and of one that does not exist), each check's
//! own path, and GET only. Alarms are raised through the Maintenance API. Each test runs with
//! `--shards 1` and `--shards 2`; all of it passes against etcd v3.5.17 too (`RUSD_TEST_ETCD`).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{each_shards, Server};
use proto::etcdserverpb as pb;
use proto::etcdserverpb::alarm_request::AlarmAction;

/// An HTTP/1.1 answer: status code, lower-cased headers, body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body's lines, as a set: etcd lists its checks in Go's random map order.
    fn lines(&self) -> BTreeSet<&str> {
        self.body.lines().collect()
    }
}

fn request(port: u16, method: &str, path: &str) -> Answer {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

fn get(port: u16, path: &str) -> Answer {
    request(port, "GET", path)
}

#[track_caller]
fn expect(port: u16, path: &str, status: u16, body: &str) {
    let a = get(port, path);
    assert_eq!((a.status, a.body.as_str()), (status, body), "GET {path}");
    assert_eq!(
        a.header("content-type"),
        Some("text/plain; charset=utf-8"),
        "GET {path}"
    );
}

async fn alarm(srv: &Server, action: AlarmAction, alarm: pb::AlarmType) {
    let mut c = srv.client().await;
    let member_id = c.status().await.header.unwrap().member_id;
    c.maintenance
        .alarm(pb::AlarmRequest {
            action: action as i32,
            member_id,
            alarm: alarm as i32,
        })
        .await
        .unwrap_or_else(|e| panic!("alarm {action:?} {alarm:?}: {e:?}"));
}

const HEALTHY: &str = r#"{"health":"true","reason":""}"#;

#[test]
fn healthy_member() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let port = srv.port;
        expect(port, "/health", 200, HEALTHY);
        expect(port, "/health?serializable=true", 200, HEALTHY);
        expect(port, "/livez", 200, "ok\n");
        expect(port, "/readyz", 200, "ok\n");
        expect(port, "/livez?verbose", 200, "[+]serializable_read ok\nok\n");
        let a = get(port, "/readyz");
        assert_eq!(a.header("x-content-type-options"), Some("nosniff"));

        let a = get(port, "/readyz?verbose=true");
        assert_eq!(a.status, 200);
        assert_eq!(
            a.lines(),
            BTreeSet::from([
                "[+]data_corruption ok",
                "[+]serializable_read ok",
                "[+]linearizable_read ok",
                "ok"
            ])
        );
        assert!(a.body.ends_with("ok\n"), "{:?}", a.body);
        // Excluding a check leaves it out; excluding one that does not exist changes nothing.
        let a = get(port, "/readyz?exclude=data_corruption&verbose");
        assert_eq!(
            a.lines(),
            BTreeSet::from(["[+]serializable_read ok", "[+]linearizable_read ok", "ok"])
        );
        let a = get(port, "/readyz?exclude=no_such_check&verbose");
        assert_eq!((a.status, a.lines().len()), (200, 4));
        let a = get(port, "/livez?exclude=serializable_read&verbose");
        assert_eq!((a.status, a.body.as_str()), (200, "ok\n"));
        // etcd 3.5.17 has no allowlist: it is ignored.
        let a = get(port, "/readyz?allowlist=serializable_read&verbose");
        assert_eq!((a.status, a.lines().len()), (200, 4));

        // Each check on its own path.
        expect(port, "/livez/serializable_read", 200, "ok\n");
        expect(
            port,
            "/readyz/linearizable_read?verbose",
            200,
            "[+]linearizable_read ok\nok\n",
        );
        expect(port, "/readyz/data_corruption", 200, "ok\n");
        expect(port, "/readyz/no_such_check", 404, "404 page not found\n");
        expect(
            port,
            "/livez/linearizable_read",
            404,
            "404 page not found\n",
        );
        expect(port, "/readyz/", 404, "404 page not found\n");

        // GET only.
        for (method, path) in [("HEAD", "/health"), ("POST", "/livez"), ("PUT", "/readyz")] {
            let a = request(port, method, path);
            assert_eq!(a.status, 405, "{method} {path}");
            assert_eq!(a.header("allow"), Some("GET"), "{method} {path}");
        }
        assert_eq!(
            request(port, "POST", "/readyz/serializable_read").body,
            "Method Not Allowed\n"
        );
    });
}

#[test]
fn nospace_alarm() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let port = srv.port;
        alarm(&srv, AlarmAction::Activate, pb::AlarmType::Nospace).await;
        let unhealthy = "{\"health\":\"false\",\"reason\":\"ALARM NOSPACE\"}\n";
        expect(port, "/health", 503, unhealthy);
        expect(port, "/health?serializable=true", 503, unhealthy);
        expect(port, "/health?exclude=NOSPACE", 200, HEALTHY);
        expect(
            port,
            "/health?exclude=CORRUPT&exclude=NOSPACE",
            200,
            HEALTHY,
        );
        expect(port, "/health?exclude=CORRUPT", 503, unhealthy);
        // NOSPACE stops writes, not reads: the member is live and ready.
        expect(port, "/livez", 200, "ok\n");
        let a = get(port, "/readyz?verbose");
        assert_eq!((a.status, a.lines().len()), (200, 4), "{}", a.body);

        alarm(&srv, AlarmAction::Deactivate, pb::AlarmType::Nospace).await;
        expect(port, "/health", 200, HEALTHY);
    });
}

#[test]
fn corrupt_alarm() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let port = srv.port;
        alarm(&srv, AlarmAction::Activate, pb::AlarmType::Corrupt).await;
        expect(
            port,
            "/health",
            503,
            "{\"health\":\"false\",\"reason\":\"ALARM CORRUPT\"}\n",
        );
        expect(port, "/health?exclude=CORRUPT", 200, HEALTHY);
        let a = get(port, "/readyz");
        assert_eq!(a.status, 503, "{}", a.body);
        assert_eq!(
            a.lines(),
            BTreeSet::from([
                "[-]data_corruption failed: alarm activated: CORRUPT",
                "[+]serializable_read ok",
                "[+]linearizable_read ok",
                "",
            ])
        );
        // A failed answer lists every check and ends with http.Error's newline.
        assert!(a.body.ends_with("\n\n"), "{:?}", a.body);
        expect(port, "/readyz?exclude=data_corruption", 200, "ok\n");
        expect(
            port,
            "/readyz/data_corruption",
            503,
            "[-]data_corruption failed: alarm activated: CORRUPT\n\n",
        );
        expect(port, "/livez", 200, "ok\n");
    });
}
