//! The gRPC proxy's connections to the etcd endpoints: one lazily connected tonic channel per
//! endpoint (plain TCP or rustls, by the endpoint's scheme and the `--cert/--key/--cacert`
//! flags), failover to the next endpoint when one cannot be reached, and the endpoint list's
//! refresh from the cluster's member list (`--endpoints-auto-sync-interval`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use proto::etcdserverpb::{cluster_client::ClusterClient, MemberListRequest};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Status};

use super::endpoint_host_port;

/// How long connecting to an endpoint may take (clientv3's `DialTimeout` in etcd's proxy).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The settings every channel is built with.
#[derive(Clone)]
pub struct ChannelSettings {
    /// rustls client configuration for TLS endpoints; `None`: plain TCP only.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Whether endpoints written without a scheme use TLS (they do when TLS flags are given,
    /// as in clientv3).
    pub tls_by_default: bool,
    pub keepalive_time: Duration,
    pub keepalive_timeout: Duration,
    pub permit_without_stream: bool,
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type BoxedIo = TokioIo<Box<dyn Io>>;

/// Connects to `host:port`, with TLS when `tls` is given.
#[derive(Clone)]
struct ConnectService {
    host_port: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl tower_service::Service<Uri> for ConnectService {
    type Response = BoxedIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<BoxedIo>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let host_port = self.host_port.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&host_port).await?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = match tls {
                None => Box::new(tcp),
                Some(config) => {
                    let host = host_port
                        .rsplit_once(':')
                        .map(|(h, _)| h)
                        .unwrap_or(&host_port)
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string();
                    let name = rustls_pki_types::ServerName::try_from(host).map_err(|e| {
                        std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
                    })?;
                    let stream = tokio_rustls::TlsConnector::from(config)
                        .connect(name, tcp)
                        .await?;
                    Box::new(stream)
                }
            };
            Ok(TokioIo::new(io))
        })
    }
}

/// The endpoints and their channels.
pub struct Upstream {
    endpoints: Mutex<Vec<String>>,
    current: AtomicUsize,
    channels: Mutex<HashMap<String, Channel>>,
    settings: ChannelSettings,
}

/// Whether a call failed because the endpoint could not be reached (so another endpoint may
/// answer), rather than with an answer of the cluster.
pub fn is_transport_failure(status: &Status) -> bool {
    if status.code() != Code::Unavailable && status.code() != Code::Unknown {
        return false;
    }
    // tonic's own transport errors carry their cause; the cluster's answers do not.
    std::error::Error::source(status).is_some()
        || status.message().contains("transport error")
        || status.message().contains("error trying to connect")
        || status.message().contains("connection")
}

impl Upstream {
    pub fn new(endpoints: Vec<String>, settings: ChannelSettings) -> Arc<Upstream> {
        Arc::new(Upstream {
            endpoints: Mutex::new(endpoints),
            current: AtomicUsize::new(0),
            channels: Mutex::new(HashMap::new()),
            settings,
        })
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn channel_of(&self, endpoint: &str) -> Channel {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = channels.get(endpoint) {
            return c.clone();
        }
        let (host_port, https) = endpoint_host_port(endpoint);
        let use_tls = https || (self.settings.tls_by_default && !endpoint.starts_with("http://"));
        let tls = if use_tls {
            self.settings.tls.clone()
        } else {
            None
        };
        let mut ep = Endpoint::from_shared(format!("http://{host_port}"))
            .expect("host:port makes a URI")
            .connect_timeout(CONNECT_TIMEOUT)
            .keep_alive_while_idle(self.settings.permit_without_stream);
        if !self.settings.keepalive_time.is_zero() {
            ep = ep
                .http2_keep_alive_interval(self.settings.keepalive_time)
                .keep_alive_timeout(self.settings.keepalive_timeout);
        }
        let channel = ep.connect_with_connector_lazy(ConnectService { host_port, tls });
        channels.insert(endpoint.to_string(), channel.clone());
        channel
    }

    /// The endpoints in the order to try them: the current one first.
    fn rotation(&self) -> Vec<String> {
        let eps = self.endpoints();
        if eps.is_empty() {
            return eps;
        }
        let start = self.current.load(Ordering::Relaxed) % eps.len();
        eps[start..]
            .iter()
            .chain(eps[..start].iter())
            .cloned()
            .collect()
    }

    /// The current endpoint's channel.
    pub fn channel(&self) -> Channel {
        let eps = self.rotation();
        self.channel_of(eps.first().map(String::as_str).unwrap_or("127.0.0.1:2379"))
    }

    /// Moves off `endpoint` after it failed (if it is still the current one).
    pub fn failed(&self, endpoint: &str) {
        let eps = self.endpoints();
        if let Some(i) = eps.iter().position(|e| e == endpoint) {
            let _ = self.current.compare_exchange(
                i,
                (i + 1) % eps.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Runs `call` on the current endpoint's channel, and on the next ones while the failure
    /// is that the endpoint cannot be reached. Each endpoint is tried once.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut last = Status::unavailable("no endpoint to send the request to");
        for endpoint in self.rotation() {
            match call(self.channel_of(&endpoint)).await {
                Err(status) if is_transport_failure(&status) => {
                    log_warn!("endpoint unreachable; trying the next one",
                        "endpoint" => endpoint, "error" => status.message());
                    self.failed(&endpoint);
                    last = status;
                }
                other => return other,
            }
        }
        Err(last)
    }

    /// Replaces the endpoint list (auto-sync). Channels of endpoints that left are dropped.
    fn set_endpoints(&self, new: Vec<String>) {
        let mut eps = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if *eps == new || new.is_empty() {
            return;
        }
        let current = eps
            .get(self.current.load(Ordering::Relaxed) % eps.len().max(1))
            .cloned();
        *eps = new;
        let position = current
            .and_then(|c| eps.iter().position(|e| *e == c))
            .unwrap_or(0);
        self.current.store(position, Ordering::Relaxed);
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| eps.contains(k));
    }

    /// Every `interval`, sets the endpoints to the client URLs of the cluster's members (as
    /// clientv3's auto-sync does).
    pub async fn auto_sync(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            let listed = self
                .call(|channel| async move {
                    ClusterClient::new(channel)
                        .member_list(Request::new(MemberListRequest {
                            linearizable: false,
                        }))
                        .await
                })
                .await;
            let members = match listed {
                Ok(r) => r.into_inner().members,
                Err(status) => {
                    log_warn!("failed to sync endpoints", "error" => status.message());
                    continue;
                }
            };
            let mut urls: Vec<String> = members
                .iter()
                .flat_map(|m| m.client_ur_ls.iter().cloned())
                .collect();
            urls.sort();
            urls.dedup();
            if urls.is_empty() || urls == self.endpoints() {
                continue;
            }
            let addresses: Vec<String> = urls.iter().map(|u| endpoint_host_port(u).0).collect();
            log_info!("endpoints synced from the member list", "endpoints" => addresses, "urls" => urls.clone());
            self.set_endpoints(urls);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(eps: &[&str]) -> Arc<Upstream> {
        Upstream::new(
            eps.iter().map(|s| s.to_string()).collect(),
            ChannelSettings {
                tls: None,
                tls_by_default: false,
                keepalive_time: Duration::ZERO,
                keepalive_timeout: Duration::from_secs(20),
                permit_without_stream: false,
            },
        )
    }

    #[test]
    fn failover_rotates_and_sync_keeps_the_current_endpoint() {
        let u = upstream(&["a:1", "b:2", "c:3"]);
        assert_eq!(u.rotation(), ["a:1", "b:2", "c:3"]);
        u.failed("a:1");
        assert_eq!(u.rotation(), ["b:2", "c:3", "a:1"]);
        u.failed("a:1"); // not current: no change
        assert_eq!(u.rotation()[0], "b:2");
        u.set_endpoints(vec!["b:2".into(), "d:4".into()]);
        assert_eq!(u.rotation(), ["b:2", "d:4"]);
        u.set_endpoints(vec!["e:5".into()]);
        assert_eq!(u.rotation(), ["e:5"]);
    }
}
