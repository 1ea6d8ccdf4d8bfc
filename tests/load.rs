//! Liveness under load: every request is answered, promptly, while two servers (`--shards 1`
//! and `--shards 2`) take concurrent writes at the same time, several streams per connection,
//! with two CPU-bound threads competing for the cores: the way parallel tests (or a busy host)
//! run them. A request unanswered for 10 s fails the test with each server's thread states and
//! the socket queues of its connections.

mod common;

use std::time::{Duration, Instant};

use common::{b, Client, Server};
use proto::etcdserverpb as pb;

/// Puts per writer (env `LOAD_PUTS` overrides).
const PUTS: usize = 300;
/// CPU-bound threads competing with the servers (env `LOAD_HOGS` overrides). The defaults keep
/// the test at a few seconds; `LOAD_PUTS=1000 LOAD_HOGS=4` presses harder (slow in debug).
const HOGS: usize = 2;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}
/// Connections per server, writers per connection (HTTP/2 streams in parallel).
const CONNS: usize = 2;
const WRITERS_PER_CONN: usize = 4;
/// Far above any healthy latency, even of a debug build on a busy machine.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

async fn writer(mut c: Client, server: usize, id: usize, puts: usize) -> Result<Duration, String> {
    let mut slowest = Duration::ZERO;
    for i in 0..puts {
        let key = format!("load/{id}/{i:04}");
        let started = Instant::now();
        let put = c.kv.put(pb::PutRequest {
            key: b(&key),
            value: b(&key),
            ..Default::default()
        });
        match tokio::time::timeout(REQUEST_DEADLINE, put).await {
            Ok(Ok(_)) => slowest = slowest.max(started.elapsed()),
            Ok(Err(e)) => return Err(format!("server {server} writer {id}: put {i} failed: {e:?}")),
            Err(_) => {
                return Err(format!(
                    "server {server} writer {id}: put {i} ({key}) unanswered after {REQUEST_DEADLINE:?}"
                ))
            }
        }
    }
    Ok(slowest)
}

struct StopOnDrop(
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Option<Vec<std::thread::JoinHandle<()>>>,
);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in self.1.take().unwrap_or_default() {
            let _ = h.join();
        }
    }
}

#[test]
fn every_request_is_answered_under_concurrent_load() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Two CPU hogs for the duration: the servers compete for the cores as they do when tests
    // run in parallel.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let puts = knob("LOAD_PUTS", PUTS);
    let hogs: Vec<_> = (0..knob("LOAD_HOGS", HOGS))
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    std::hint::black_box(x);
                }
            })
        })
        .collect();
    let _stop_hogs = StopOnDrop(stop, Some(hogs));
    rt.block_on(async {
        let servers = [Server::start(1), Server::start(2)];
        let mut tasks = Vec::new();
        // Kept open until the end, so that a failure can show the connections' socket queues.
        let mut connections = Vec::new();
        for (n, srv) in servers.iter().enumerate() {
            for conn in 0..CONNS {
                let c = srv.client().await;
                connections.push(c.clone());
                for w in 0..WRITERS_PER_CONN {
                    let id = conn * WRITERS_PER_CONN + w;
                    tasks.push(tokio::spawn(writer(c.clone(), n, id, puts)));
                }
            }
        }
        let mut failures = Vec::new();
        let mut slowest = Duration::ZERO;
        for t in tasks {
            match t.await.expect("writer task") {
                Ok(d) => slowest = slowest.max(d),
                Err(e) => failures.push(e),
            }
        }
        eprintln!("slowest answered put: {slowest:?}");
        if !failures.is_empty() {
            for srv in &servers {
                eprintln!(
                    "--shards {}: {}connections (state 01 = established):\n{}",
                    srv.opts.shards,
                    srv.thread_dump(),
                    srv.socket_queues()
                );
            }
            panic!("requests went unanswered:\n{}", failures.join("\n"));
        }
        drop(connections);
        // Everything written, once.
        let per_server = (CONNS * WRITERS_PER_CONN * puts) as i64;
        for srv in &servers {
            let mut c = srv.client().await;
            let r = c
                .range(pb::RangeRequest {
                    key: b("load/"),
                    range_end: b("load0"),
                    count_only: true,
                    ..Default::default()
                })
                .await;
            assert_eq!(r.count, per_server, "--shards {}", srv.opts.shards);
            assert_eq!(r.header.unwrap().revision, per_server + 1);
        }
    });
}
