//! /metrics on the client port: the counters Prometheus scrapes from etcd (puts, deletes, live
//! keys, canceled watch streams, versions) move with what clients do. Each test runs with
//! `--shards 1` and `--shards 2`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{b, each_shards, Server};
use futures::StreamExt;
use proto::etcdserverpb as pb;

/// A plain HTTP/1.1 GET; returns the body.
fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The value of an unlabelled or fully labelled series, e.g. `etcd_mvcc_put_total`.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn counters_follow_the_writes() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        for i in 0..5 {
            c.put(&format!("m{i}"), "v").await;
        }
        c.put("m0", "again").await;
        c.delete(pb::DeleteRangeRequest {
            key: b("m1"),
            range_end: b("m3"),
            prev_kv: false,
        })
        .await;
        // Live keys are refreshed a few milliseconds after writes.
        let deadline = Instant::now() + Duration::from_secs(5);
        let text = loop {
            let text = http_get(srv.port, "/metrics");
            if series(&text, "etcd_debugging_mvcc_keys_total") == Some(3.0)
                || Instant::now() > deadline
            {
                break text;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(series(&text, "etcd_mvcc_put_total"), Some(6.0), "{text}");
        assert_eq!(series(&text, "etcd_mvcc_delete_total"), Some(2.0), "{text}");
        assert_eq!(
            series(&text, "etcd_debugging_mvcc_keys_total"),
            Some(3.0),
            "{text}"
        );
        assert_eq!(
            series(&text, "etcd_cluster_version{cluster_version=\"3.5\"}"),
            Some(1.0)
        );
        let canceled = "grpc_server_handled_total{grpc_code=\"Canceled\",grpc_method=\"Watch\",\
                        grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"}";
        assert_eq!(series(&text, canceled), Some(0.0), "{text}");

        // A watch client that goes away (here: its runtime, connection included, is dropped,
        // as when etcdctl exits) counts as one canceled stream.
        let url = srv.url();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let channel = tonic::transport::Channel::from_shared(url)
                    .expect("a valid URL")
                    .connect()
                    .await
                    .expect("connecting");
                let mut w = pb::watch_client::WatchClient::new(channel);
                let create = pb::WatchRequest {
                    request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                        pb::WatchCreateRequest {
                            key: b("m0"),
                            ..Default::default()
                        },
                    )),
                };
                let requests =
                    futures::stream::iter(vec![create]).chain(futures::stream::pending());
                let mut responses = w.watch(requests).await.expect("watch").into_inner();
                let created = responses.message().await.expect("a response").unwrap();
                assert!(created.created);
            });
        })
        .join()
        .expect("the watch client thread");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = http_get(srv.port, "/metrics");
            if series(&text, canceled) == Some(1.0) {
                break;
            }
            assert!(Instant::now() < deadline, "watch not counted:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}
