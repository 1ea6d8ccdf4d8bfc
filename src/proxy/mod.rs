//! The proxy process modes: `etcd gateway start` ([`tcp`]) and `etcd grpc-proxy start`
//! ([`grpc`]), plus what they share (the runtime, endpoint addresses, signals).
//!
//! Why tokio here: the proxies are separate processes that never run the server, and the
//! gRPC proxy is above all a gRPC *client* of the etcd endpoints (unary calls, the Watch and
//! LeaseKeepAlive streams, reconnection, HTTP/2 keep-alive). tonic's `channel` client does all
//! of that, and it runs on tokio; a hyper/h2 client on glommio would mean writing and
//! maintaining our own connection pool, reconnect and keep-alive logic for a process mode whose
//! cost is network hops, not per-core throughput. So each proxy process runs one multi-thread
//! tokio runtime ([`runtime`]) and the server keeps glommio alone: nothing in `src/proxy` is
//! reachable from `server::serve`, and nothing in the server starts tokio.

pub mod grpc;
mod grpc_cache;
mod grpc_watch;
mod namespace;
pub mod tcp;
mod upstream;

use std::time::Duration;

/// Worker threads of a proxy's runtime: the machine's CPUs, at most 4 (a proxy forwards bytes
/// and does little work per request).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let workers = crate::config::affinity_cpus().clamp(1, 4);
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("rusd-proxy")
        .enable_all()
        .build()?)
}

/// `host:port` of an endpoint given as `host:port` or as a URL (`http://host:port`), as
/// etcd's `stripSchema` does for the gateway. The second value says whether the URL asked for
/// TLS (`https://`, `unixs://`).
pub fn endpoint_host_port(endpoint: &str) -> (String, bool) {
    for (scheme, tls) in [
        ("https://", true),
        ("http://", false),
        ("unixs://", true),
        ("unix://", false),
    ] {
        if let Some(rest) = endpoint.strip_prefix(scheme) {
            let host = rest.split('/').next().unwrap_or(rest);
            return (host.to_string(), tls);
        }
    }
    (endpoint.to_string(), false)
}

/// Resolves when the process gets SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}

/// How long connecting to an endpoint may take before it counts as failed. etcd's gateway uses
/// the system's TCP timeout; a bound keeps one dead host from holding a client for minutes.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_lose_their_scheme() {
        assert_eq!(
            endpoint_host_port("127.0.0.1:2379"),
            ("127.0.0.1:2379".into(), false)
        );
        assert_eq!(
            endpoint_host_port("http://localhost:12379"),
            ("localhost:12379".into(), false)
        );
        assert_eq!(
            endpoint_host_port("https://[::1]:2379"),
            ("[::1]:2379".into(), true)
        );
    }
}
