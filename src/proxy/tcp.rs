//! `etcd gateway start`: a TCP proxy with endpoint failover, as etcd's `tcpproxy`. Each client
//! connection is piped to one endpoint, chosen in turn among the active ones; an endpoint that
//! refuses a connection is deactivated, and a monitor retries deactivated endpoints every
//! `--retry-delay` and reactivates those that accept a connection again. When every endpoint is
//! inactive the client connection is closed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};

use super::{endpoint_host_port, DIAL_TIMEOUT};
use crate::config::GatewayConfig;

/// Client connections piped at once, at most. At the limit the gateway stops accepting (the
/// kernel's backlog holds further clients) until a connection ends.
const CONNECTIONS_MAX: usize = 8192;

struct Remote {
    addr: String,
    active: bool,
}

/// The endpoints and which of them are active.
pub struct Remotes {
    remotes: Mutex<Vec<Remote>>,
    next: AtomicUsize,
}

impl Remotes {
    pub fn new(addrs: Vec<String>) -> Remotes {
        Remotes {
            remotes: Mutex::new(
                addrs
                    .into_iter()
                    .map(|addr| Remote { addr, active: true })
                    .collect(),
            ),
            next: AtomicUsize::new(0),
        }
    }

    /// The next active endpoint in turn, if any is active.
    pub fn pick(&self) -> Option<String> {
        let remotes = self.remotes.lock().unwrap_or_else(|e| e.into_inner());
        let n = remotes.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &remotes[(start + i) % n])
            .find(|r| r.active)
            .map(|r| r.addr.clone())
    }

    fn set_active(&self, addr: &str, active: bool) -> bool {
        let mut remotes = self.remotes.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        for r in remotes.iter_mut().filter(|r| r.addr == addr) {
            changed |= r.active != active;
            r.active = active;
        }
        changed
    }

    fn inactive(&self) -> Vec<String> {
        let remotes = self.remotes.lock().unwrap_or_else(|e| e.into_inner());
        remotes
            .iter()
            .filter(|r| !r.active)
            .map(|r| r.addr.clone())
            .collect()
    }
}

async fn dial(addr: &str) -> std::io::Result<TcpStream> {
    match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "i/o timeout",
        )),
    }
}

/// Pipes one client connection to the first active endpoint that accepts it.
async fn serve(remotes: Arc<Remotes>, mut client: TcpStream) {
    loop {
        let Some(addr) = remotes.pick() else {
            log_warn!("no active endpoint to proxy the connection to; closing it");
            return;
        };
        match dial(&addr).await {
            Ok(mut upstream) => {
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                return;
            }
            Err(e) => {
                if remotes.set_active(&addr, false) {
                    log_warn!("deactivated endpoint", "address" => addr, "error" => e.to_string());
                }
            }
        }
    }
}

/// Every `retry_delay`, tries the inactive endpoints again.
async fn monitor(remotes: Arc<Remotes>, retry_delay: std::time::Duration) {
    let period = retry_delay.max(std::time::Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        for addr in remotes.inactive() {
            match dial(&addr).await {
                Ok(_) => {
                    if remotes.set_active(&addr, true) {
                        log_info!("activated", "address" => addr);
                    }
                }
                Err(e) => {
                    log_warn!("failed to activate endpoint (stay inactive for another interval)",
                        "address" => addr, "interval" => crate::config::GatewayConfig::retry_text(retry_delay), "error" => e.to_string());
                }
            }
        }
    }
}

/// Runs the gateway until SIGINT/SIGTERM.
pub fn run(cfg: GatewayConfig) -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    log_info!("Running: ", "args" => args);
    if !cfg.discovery_srv.is_empty() {
        log_warn!("DNS SRV discovery is not implemented by rusd; using --endpoints",
            "discovery-srv" => cfg.discovery_srv);
    }
    let endpoints: Vec<String> = cfg
        .endpoints
        .iter()
        .map(|e| endpoint_host_port(e).0)
        .collect();
    if endpoints.is_empty() {
        println!("no endpoints found");
        std::process::exit(1);
    }
    for ep in &endpoints {
        if split_host_port(ep).is_none() {
            print!("error parsing endpoint {ep:?}");
            std::process::exit(1);
        }
    }
    let Some((_, listen_port)) = split_host_port(&cfg.listen_addr) else {
        println!("failed to validate listen address: {}", cfg.listen_addr);
        std::process::exit(1);
    };
    // etcd refuses an endpoint that is the gateway's own address (it would proxy to itself).
    let listen_ips = resolve(&cfg.listen_addr);
    for ep in &endpoints {
        let (_, port) = split_host_port(ep).expect("checked above");
        if port != listen_port {
            continue;
        }
        if let Some(ip) = resolve(ep).into_iter().find(|ip| listen_ips.contains(ip)) {
            println!(
                "SRV or endpoint ({ep}->{ip}:{port}) should not resolve to the gateway listen addr ({})",
                cfg.listen_addr
            );
            std::process::exit(1);
        }
    }

    let rt = super::runtime()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&cfg.listen_addr)
            .await
            .with_context(|| format!("listen tcp {}", cfg.listen_addr))?;
        let remotes = Arc::new(Remotes::new(endpoints.clone()));
        tokio::spawn(monitor(remotes.clone(), cfg.retry_delay));
        log_info!("ready to proxy client requests", "endpoints" => endpoints);
        let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
        let accept = async {
            loop {
                let permit = permits.clone().acquire_owned().await.expect("never closed");
                let (client, _) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        log_warn!("failed to accept a connection", "error" => e.to_string());
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = client.set_nodelay(true);
                let remotes = remotes.clone();
                tokio::spawn(async move {
                    serve(remotes, client).await;
                    drop(permit);
                });
            }
        };
        tokio::select! {
            _ = accept => {}
            _ = super::shutdown_signal() => {}
        }
        anyhow::Ok(())
    })
}

/// Go's `net.SplitHostPort` for the cases the gateway meets.
fn split_host_port(s: &str) -> Option<(String, String)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.to_string()))
}

fn resolve(host_port: &str) -> Vec<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    host_port
        .to_socket_addrs()
        .map(|it| it.map(|a: SocketAddr| a.ip()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_skips_inactive_endpoints_and_fails_when_none_is_left() {
        let r = Remotes::new(vec!["a:1".into(), "b:2".into()]);
        let first = r.pick().unwrap();
        let second = r.pick().unwrap();
        assert_ne!(first, second, "round robin over active endpoints");
        r.set_active("a:1", false);
        for _ in 0..4 {
            assert_eq!(r.pick().as_deref(), Some("b:2"));
        }
        r.set_active("b:2", false);
        assert_eq!(r.pick(), None);
        assert_eq!(r.inactive().len(), 2);
        r.set_active("a:1", true);
        assert_eq!(r.pick().as_deref(), Some("a:1"));
    }
}
