//! `rusd grpc-proxy start` and `rusd gateway start` in front of a real rusd member, driven
//! through the Rust gRPC client and etcdctl: KV through the proxy, the range cache and its
//! invalidation, watch coalescing (several client watchers, one upstream watch, each watcher
//! still gets every event), `--namespace`, MemberList answering the proxy, forwarded calls
//! (Lease) with the cluster's own errors, failover past a dead endpoint, endpoint auto-sync,
//! and the gateway's failover.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{free_port, Client, Server};
use proto::etcdserverpb as pb;
use proto::etcdserverpb::{lease_client::LeaseClient, watch_client::WatchClient};
use tokio::sync::mpsc;

/// A proxy process (gateway or grpc-proxy), killed on drop.
struct Proxy {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl Proxy {
    /// Starts `rusd <args> --listen-addr 127.0.0.1:<free port>` and waits for `ready`.
    fn start(args: &[&str], ready: &str) -> Proxy {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_rusd"))
            .args(args)
            .arg("--listen-addr")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the proxy");
        let log = Arc::new(Mutex::new(String::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let p = Proxy { child, port, log };
        p.wait_log(ready, Duration::from_secs(10));
        p
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn wait_log(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "the proxy did not log {text:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// GET `path` over HTTP/1.1: (status line, body).
    fn http_get(&self, path: &str) -> (String, String) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        )
    }

    /// A value of the proxy's `/proxy/metrics`.
    fn metric(&self, name: &str) -> u64 {
        let (_, body) = self.http_get("/proxy/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {body}"))
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn grpc_proxy(server: &Server, extra: &[&str]) -> Proxy {
    let endpoints = server.endpoint();
    let mut args = vec!["grpc-proxy", "start", "--endpoints", endpoints.as_str()];
    args.extend_from_slice(extra);
    Proxy::start(&args, "started gRPC proxy")
}

fn get_request(key: &str, serializable: bool) -> pb::RangeRequest {
    pb::RangeRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        serializable,
        ..Default::default()
    }
}

async fn channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A client watch stream: (request sender, answers).
async fn open_watch(
    url: &str,
    key: &str,
    start_revision: i64,
) -> (
    mpsc::Sender<pb::WatchRequest>,
    tonic::Streaming<pb::WatchResponse>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                start_revision,
                ..Default::default()
            },
        )),
    })
    .await
    .unwrap();
    let requests =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut client = WatchClient::new(channel(url).await);
    let mut answers = client.watch(requests).await.unwrap().into_inner();
    let created = tokio::time::timeout(Duration::from_secs(5), answers.message())
        .await
        .expect("created in time")
        .unwrap()
        .unwrap();
    assert!(created.created, "{created:?}");
    (tx, answers)
}

/// The values of the next events until `n` of them arrived.
async fn next_values(answers: &mut tonic::Streaming<pb::WatchResponse>, n: usize) -> Vec<String> {
    let mut values = Vec::new();
    while values.len() < n {
        let a = tokio::time::timeout(Duration::from_secs(5), answers.message())
            .await
            .expect("events in time")
            .unwrap()
            .unwrap();
        for e in a.events {
            values.push(String::from_utf8(e.kv.unwrap().value.to_vec()).unwrap());
        }
    }
    values
}

#[test]
fn kv_and_the_range_cache_through_the_grpc_proxy() {
    let server = Server::start(1);
    let proxy = grpc_proxy(&server, &[]);
    runtime().block_on(async {
        let mut c = Client::connect(&proxy.url()).await;
        c.put("k", "v1").await;
        assert_eq!(c.get("k").await.unwrap().value, "v1");
        // A serializable read is cached: the second one is a hit.
        let first = c.range(get_request("k", true)).await;
        let hits = proxy.metric("etcd_grpc_proxy_cache_hits_total");
        let second = c.range(get_request("k", true)).await;
        assert_eq!(first.kvs, second.kvs);
        assert_eq!(proxy.metric("etcd_grpc_proxy_cache_hits_total"), hits + 1);
        // A put through the proxy drops the cached range: the next read sees the new value.
        c.put("k", "v2").await;
        let after = c.range(get_request("k", true)).await;
        assert_eq!(after.kvs[0].value, "v2");
        // The cluster's errors come through unchanged.
        let bad =
            c.kv.range(pb::RangeRequest {
                key: Bytes::from_static(b"k"),
                revision: 1_000_000,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::OutOfRange);
        assert_eq!(
            bad.message(),
            "etcdserver: mvcc: required revision is a future revision"
        );
        // MemberList answers the proxy itself; other calls are forwarded.
        let members = c
            .cluster
            .member_list(pb::MemberListRequest::default())
            .await
            .unwrap()
            .into_inner()
            .members;
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].client_ur_ls, ["127.0.0.1:23790"]);
        let mut lease = LeaseClient::new(channel(&proxy.url()).await);
        let granted = lease
            .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 })
            .await
            .unwrap()
            .into_inner();
        assert!(granted.id != 0);
        let missing = lease
            .lease_revoke(pb::LeaseRevokeRequest { id: 12345 })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
        assert_eq!(missing.message(), "etcdserver: requested lease not found");
    });
    let (status, body) = proxy.http_get("/health");
    assert!(status.contains("200"), "{status} {body}");
    assert_eq!(body, r#"{"health":"true","reason":""}"#);
}

#[test]
fn watchers_of_one_key_share_one_upstream_watch() {
    let server = Server::start(1);
    let proxy = grpc_proxy(&server, &[]);
    runtime().block_on(async {
        let mut c = Client::connect(&proxy.url()).await;
        let start = c.put_rev("w", "v0").await;
        let mut streams = Vec::new();
        for _ in 0..3 {
            streams.push(open_watch(&proxy.url(), "w", 0).await);
        }
        // Current-revision watchers start apart and merge after their first answer.
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy.metric("rusd_grpc_proxy_upstream_watches") != 1 {
            assert!(
                Instant::now() < deadline,
                "never coalesced: {}",
                proxy.http_get("/proxy/metrics").1
            );
            c.put("unrelated", "x").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(proxy.metric("rusd_grpc_proxy_watchers"), 3);
        assert_eq!(proxy.metric("etcd_grpc_proxy_watchers_coalescing_total"), 2);
        // A watcher from an old revision gets the history on its own, then the live events.
        let (_keep, mut historical) = open_watch(&proxy.url(), "w", start).await;
        for v in ["v1", "v2", "v3"] {
            c.put("w", v).await;
        }
        for (_tx, answers) in &mut streams {
            assert_eq!(next_values(answers, 3).await, ["v1", "v2", "v3"]);
        }
        assert_eq!(
            next_values(&mut historical, 4).await,
            ["v0", "v1", "v2", "v3"]
        );
        assert!(proxy.metric("etcd_grpc_proxy_events_coalescing_total") >= 3 * 2);
        // Closing the client streams ends their upstream watches.
        drop(streams);
        drop(_keep);
        drop(historical);
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy.metric("rusd_grpc_proxy_upstream_watches") != 0 {
            assert!(Instant::now() < deadline, "upstream watches left open");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[test]
fn namespace_prefixes_keys_both_ways() {
    let server = Server::start(1);
    let proxy = grpc_proxy(&server, &["--namespace", "t/"]);
    runtime().block_on(async {
        let mut through = Client::connect(&proxy.url()).await;
        let mut direct = Client::connect(&server.url()).await;
        let (_tx, mut answers) = open_watch(&proxy.url(), "a", 0).await;
        through.put("a", "1").await;
        assert_eq!(direct.get("t/a").await.unwrap().value, "1");
        assert!(direct.get("a").await.is_none());
        let kv = through.get("a").await.unwrap();
        assert_eq!(kv.key, "a");
        let all = through.all().await;
        assert_eq!(all.kvs.len(), 1);
        assert_eq!(all.kvs[0].key, "a");
        let a = tokio::time::timeout(Duration::from_secs(5), answers.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(a.events[0].kv.as_ref().unwrap().key, "a");
    });
}

#[test]
fn grpc_proxy_fails_over_and_syncs_its_endpoints() {
    let server = Server::start(1);
    let dead = format!("127.0.0.1:{}", free_port());
    let endpoints = format!("{dead},{}", server.endpoint());
    let proxy = Proxy::start(
        &[
            "grpc-proxy",
            "start",
            "--endpoints",
            &endpoints,
            "--endpoints-auto-sync-interval",
            "500ms",
        ],
        "started gRPC proxy",
    );
    runtime().block_on(async {
        let mut c = Client::connect(&proxy.url()).await;
        c.put("f", "1").await;
        assert_eq!(c.get("f").await.unwrap().value, "1");
    });
    assert!(
        proxy.log().contains("endpoint unreachable"),
        "{}",
        proxy.log()
    );
    // The member list names the member's client URL: the dead endpoint is dropped.
    proxy.wait_log(
        "endpoints synced from the member list",
        Duration::from_secs(10),
    );
    let synced = proxy
        .log()
        .lines()
        .find(|l| l.contains("endpoints synced"))
        .unwrap()
        .to_string();
    assert!(synced.contains(&server.endpoint()), "{synced}");
    assert!(!synced.contains(&dead), "{synced}");
}

#[test]
fn gateway_pipes_to_the_first_live_endpoint() {
    let server = Server::start(1);
    let dead = format!("127.0.0.1:{}", free_port());
    let endpoints = format!("--endpoints={dead},{}", server.endpoint());
    let gateway = Proxy::start(
        &["gateway", &endpoints, "start", "--retry-delay", "1m"],
        "ready to proxy client requests",
    );
    for i in 0..3 {
        let out = common::etcdctl(&gateway.endpoint(), &["put", "g", &i.to_string()], None);
        assert!(out.stdout.contains("OK"), "{out:?}");
    }
    assert!(
        gateway.log().contains("deactivated endpoint"),
        "{}",
        gateway.log()
    );
    runtime().block_on(async {
        let mut direct = Client::connect(&server.url()).await;
        assert_eq!(direct.get("g").await.unwrap().value, "2");
    });
}
