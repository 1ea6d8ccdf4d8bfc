//! Client and metrics listeners: one SO_REUSEPORT socket per core per TCP address (one socket
//! on one core for a unix path), each connection served by hyper (HTTP/1.1 and HTTP/2 on one
//! port) on the core that accepted it, over TLS when the URL asks for it.
//!
//! As in etcd, URLs that share an address share a listener: `http://localhost:2379` and
//! `https://localhost:2379` together serve plaintext and TLS on one port. The first byte tells
//! them apart (0x16 starts a TLS handshake).

pub mod fair_body;
pub mod io;
pub mod tls;

use std::convert::Infallible;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{ready, Either, Ready};
use futures_lite::{AsyncRead, AsyncWrite};
use hyper::body::Incoming;
use hyper_util::server::conn::auto;

use crate::api::http::Body;
use crate::api::router::Router;
use crate::config::Url;
use fair_body::FairBody;
use tls::{PeerCommonName, TlsInfo, HANDSHAKE_TIMEOUT};

/// Resolves a listen URL's host the way Go's net.Listen does for the common cases: `localhost`
/// means the IPv4 loopback, an empty host or `0.0.0.0` every interface.
pub fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host == "localhost" {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if host.is_empty() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    (host, port).to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("cannot resolve {host}"),
        )
    })
}

pub struct ServeLimits {
    pub max_concurrent_streams: u32,
}

/// Where a listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything: gRPC, the JSON gateway and the HTTP endpoints.
    Client,
    /// `--listen-metrics-urls`: only /metrics, /health, /livez and /readyz, as etcd.
    Metrics,
    /// `--listen-peer-urls`: the peer protocol (`crate::peer`), never in a [`ListenPlan`].
    Peer,
}

/// One listening address and the kinds of traffic on it (etcd's `serveCtx`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub addr: ListenAddr,
    /// An `https`/`unixs` URL names this address.
    pub secure: bool,
    /// An `http`/`unix` URL names this address.
    pub insecure: bool,
    pub role: Role,
    /// The URLs, as given.
    pub urls: Vec<String>,
}

impl ListenerSpec {
    /// TCP addresses are bound on every core (SO_REUSEPORT); a unix socket on one core.
    pub fn is_unix(&self) -> bool {
        matches!(self.addr, ListenAddr::Unix(_))
    }
}

/// Groups `--listen-client-urls` by address, as etcd's `configureClientListeners`: an `https`
/// or `unixs` URL needs a certificate (given or auto-TLS).
pub fn client_listeners(urls: &[Url], tls: Option<&TlsInfo>) -> anyhow::Result<Vec<ListenerSpec>> {
    for u in urls {
        if u.is_tls() {
            if tls.is_none() {
                anyhow::bail!(
                    "TLS key/cert (--cert-file, --key-file) must be provided for client url {} with HTTPS scheme",
                    u.raw
                );
            }
        } else if let Some(t) = tls {
            log_warn!(
                "scheme is http or unix while key and cert files are present; ignoring key and cert files",
                "client-url" => u.raw.clone()
            );
            if t.client_cert_auth {
                log_warn!(
                    "scheme is http or unix while --client-cert-auth is enabled; ignoring client cert auth for this URL",
                    "client-url" => u.raw.clone()
                );
            }
        }
    }
    group(urls, Role::Client)
}

/// `--listen-metrics-urls`, as etcd's `createMetricsListener`.
pub fn metrics_listeners(urls: &[Url], tls: Option<&TlsInfo>) -> anyhow::Result<Vec<ListenerSpec>> {
    if tls.is_none() && urls.iter().any(|u| u.is_tls()) {
        anyhow::bail!(
            "client TLS key/cert (--cert-file, --key-file) must be provided for metrics secure url"
        );
    }
    group(urls, Role::Metrics)
}

/// Groups URLs by the address they listen on (plaintext and TLS URLs of one address share it).
pub(crate) fn group(urls: &[Url], role: Role) -> anyhow::Result<Vec<ListenerSpec>> {
    let mut out: Vec<ListenerSpec> = Vec::new();
    for u in urls {
        let addr = if u.is_unix() {
            ListenAddr::Unix(PathBuf::from(u.unix_path()))
        } else {
            ListenAddr::Tcp(
                resolve(&u.host, u.port)
                    .map_err(|e| anyhow::anyhow!("listen {}: {e}", u.host_port()))?,
            )
        };
        let i = match out.iter().position(|s| s.addr == addr) {
            Some(i) => i,
            None => {
                out.push(ListenerSpec {
                    addr,
                    secure: false,
                    insecure: false,
                    role,
                    urls: Vec::new(),
                });
                out.len() - 1
            }
        };
        let s = &mut out[i];
        if u.is_tls() {
            s.secure = true;
        } else {
            s.insecure = true;
        }
        s.urls.push(u.raw.clone());
    }
    Ok(out)
}

/// Removes a stale unix socket file before binding, as etcd's `NewUnixListener` does. Call
/// once, before any core binds.
pub fn prepare_unix(spec: &ListenerSpec) -> std::io::Result<()> {
    if let ListenAddr::Unix(p) = &spec.addr {
        match std::fs::remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// A bound socket on this core.
pub enum Listener {
    Tcp(glommio::net::TcpListener),
    Unix(glommio::net::UnixListener),
}

/// Binds `spec` on the calling core's executor.
pub fn bind(spec: &ListenerSpec) -> std::io::Result<Listener> {
    match &spec.addr {
        ListenAddr::Tcp(a) => bind_tcp(*a).map(Listener::Tcp),
        ListenAddr::Unix(p) => glommio::net::UnixListener::bind(p)
            .map(Listener::Unix)
            .map_err(std::io::Error::from),
    }
}

/// Connections the kernel queues per listening socket before `accept`: Go's cap on
/// `net.core.somaxconn` (the kernel lowers it to the sysctl's value).
const LISTEN_BACKLOG: i32 = 65535;

/// A listening TCP socket for this core's executor. SO_REUSEPORT: every core binds the same
/// address and the kernel spreads connections over them. SO_REUSEADDR, as Go's `net.Listen`
/// (and so etcd) sets it: the port binds at once even while connections of an earlier
/// process on it sit in TIME_WAIT (glommio's own `bind` omits it; without it a restart on the
/// same port failed for a minute).
fn bind_tcp(addr: SocketAddr) -> std::io::Result<glommio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};

    // socket2 opens the socket with SOCK_CLOEXEC.
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    // SAFETY: the descriptor is a bound, listening TCP socket that nothing else owns; the
    // glommio listener takes it over (and closes it when dropped).
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Fails when some other socket already listens on `addr`. Each core binds the address with
/// SO_REUSEPORT, and the kernel lets any process of the same user join such a group: a second
/// rusd started on a port in use would start "successfully" and take a share of the
/// connections, so that a client's consecutive requests could reach two unrelated members
/// (one acknowledges `user add`, the other answers `grant-role` with "user name not found").
/// etcd's listener has no SO_REUSEPORT, so its second instance fails to bind; a probe bound
/// without SO_REUSEPORT fails exactly when a listener (ours or not) holds the address, and is
/// closed before the cores bind.
fn check_not_shared(addr: SocketAddr) -> anyhow::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    // A listener of a process that was just killed can outlive it briefly: io_uring releases
    // the files its in-flight accepts hold after the process is reaped, asynchronously. So a
    // restart right after a kill -9 retries for a moment before calling the address taken.
    let deadline = std::time::Instant::now() + SHARED_PORT_GRACE;
    loop {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        // As in bind_tcp: connections of an earlier process in TIME_WAIT do not count as in use.
        socket.set_reuse_address(true)?;
        match socket.bind(&addr.into()) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if std::time::Instant::now() >= deadline {
                    anyhow::bail!("listen tcp {addr}: bind: address already in use")
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => anyhow::bail!("listen tcp {addr}: bind: {e}"),
        }
    }
}

/// How long a listen address held by another socket is retried before start-up fails.
const SHARED_PORT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// What every connection of one listener shares.
pub struct Serving {
    pub router: Router,
    pub limits: Rc<ServeLimits>,
    /// The TLS configuration, when the listener has an `https`/`unixs` URL.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub insecure: bool,
    pub role: Role,
}

/// Accepts connections forever on this core. Each connection is its own task on this core.
pub async fn serve(listener: Listener, serving: Rc<Serving>) {
    match listener {
        Listener::Tcp(l) => loop {
            match l.accept().await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    let remote = stream
                        .peer_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    log_debug!("accepted a client connection", "remote-addr" => remote.clone());
                    spawn_connection(connection(stream, remote, serving.clone()));
                }
                Err(e) => accept_failed(e.into()).await,
            }
        },
        Listener::Unix(l) => loop {
            match l.accept().await {
                Ok(stream) => {
                    spawn_connection(connection(stream, "@".into(), serving.clone()));
                }
                Err(e) => accept_failed(e.into()).await,
            }
        },
    }
}

/// A connection's task runs in this core's connection queue (`io::connection_queue` says why).
fn spawn_connection(connection: impl std::future::Future<Output = ()> + 'static) {
    glommio::spawn_local_into(connection, io::connection_queue())
        .expect("this core's connection queue exists")
        .detach();
}

async fn accept_failed(e: std::io::Error) {
    // Running out of descriptors is transient; back off instead of spinning.
    log_warn!("failed to accept a client connection", "error" => e.to_string());
    glommio::timer::sleep(Duration::from_millis(50)).await;
}

/// Streams whose first byte can be looked at without consuming it.
pub(crate) trait Peek {
    async fn peek_byte(&self) -> std::io::Result<Option<u8>>;
}

impl Peek for glommio::net::TcpStream {
    async fn peek_byte(&self) -> std::io::Result<Option<u8>> {
        let mut b = [0u8; 1];
        let n = self.peek(&mut b).await.map_err(std::io::Error::from)?;
        Ok((n == 1).then_some(b[0]))
    }
}

impl Peek for glommio::net::UnixStream {
    async fn peek_byte(&self) -> std::io::Result<Option<u8>> {
        let mut b = [0u8; 1];
        let n = self.peek(&mut b).await.map_err(std::io::Error::from)?;
        Ok((n == 1).then_some(b[0]))
    }
}

/// The first byte of every TLS connection: a handshake record.
pub(crate) const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// `f`'s output, or `None` once `d` has passed.
pub(crate) async fn timeout<F: std::future::Future>(d: Duration, f: F) -> Option<F::Output> {
    let f = std::pin::pin!(f);
    let t = std::pin::pin!(glommio::timer::sleep(d));
    match futures::future::select(f, t).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(_) => None,
    }
}

async fn connection<S>(stream: S, remote: String, serving: Rc<Serving>)
where
    S: AsyncRead + AsyncWrite + Peek + Unpin + 'static,
{
    let Some(config) = serving.tls.clone() else {
        return serve_http(stream, None, &serving).await;
    };
    if serving.insecure {
        // Plaintext and TLS on one port: a client that sends nothing is dropped like one that
        // never finishes its handshake.
        match timeout(HANDSHAKE_TIMEOUT, stream.peek_byte()).await {
            Some(Ok(Some(TLS_HANDSHAKE_RECORD))) => {}
            Some(Ok(Some(_))) => return serve_http(stream, None, &serving).await,
            _ => return,
        }
    }
    let mut server_name = String::new();
    let handshake = async {
        let start =
            futures_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                .await?;
        server_name = start
            .client_hello()
            .server_name()
            .unwrap_or_default()
            .to_string();
        start.into_stream(config).await
    };
    let result = timeout(HANDSHAKE_TIMEOUT, handshake).await;
    match result {
        Some(Ok(tls_stream)) => {
            let conn = tls_stream.get_ref().1;
            let cn = tls::peer_common_name(conn);
            log_debug!(
                "TLS handshake done",
                "remote-addr" => remote.as_str(),
                "version" => format!("{:?}", conn.protocol_version()),
                "alpn" => String::from_utf8_lossy(conn.alpn_protocol().unwrap_or_default()).to_string()
            );
            serve_http(tls_stream, cn, &serving).await;
        }
        Some(Err(e)) => rejected(&remote, &server_name, &crate::net::tls::go_tls_io_error(&e)),
        None => rejected(
            &remote,
            &server_name,
            "tls: handshake did not complete in time",
        ),
    }
}

/// etcd's handshake-failure log line (embed/config_logging.go); metrics listeners use the
/// client TLS settings, so they log the same line.
fn rejected(remote: &str, server_name: &str, error: &str) {
    log_warn!(
        "rejected connection on client endpoint",
        "remote-addr" => remote,
        "server-name" => server_name,
        "error" => error
    );
}

async fn serve_http<S>(stream: S, cn: Option<PeerCommonName>, serving: &Serving)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let mut builder = auto::Builder::new(io::LocalExec);
    builder
        .http2()
        .max_concurrent_streams(serving.limits.max_concurrent_streams)
        // Large windows: a LIST of many MiB should not stall on flow control.
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_send_buf_size(4 << 20);
    let svc = ConnService {
        router: serving.router.clone(),
        cn,
        metrics_only: serving.role == Role::Metrics,
    };
    if let Err(e) = builder
        .serve_connection(io::HyperIo::new(stream), svc)
        .await
    {
        log_debug!("client connection closed with an error", "error" => e.to_string());
    }
}

/// The per-connection hyper service: the router, with the client certificate's CN in every
/// request's extensions, restricted to the metrics paths on a metrics listener.
struct ConnService {
    router: Router,
    cn: Option<PeerCommonName>,
    metrics_only: bool,
}

type RouterFuture = <Router as tower_service::Service<http::Request<Incoming>>>::Future;
type FairResponse = http::Response<FairBody<Body>>;
type Fair = fn(Result<http::Response<Body>, Infallible>) -> Result<FairResponse, Infallible>;

/// Every response leaves in frame-sized pieces (`fair_body` says why: a small watch response
/// must not wait for the connection's window behind large range responses).
fn fair(response: Result<http::Response<Body>, Infallible>) -> Result<FairResponse, Infallible> {
    response.map(|r| r.map(FairBody::new))
}

impl hyper::service::Service<http::Request<Incoming>> for ConnService {
    type Response = FairResponse;
    type Error = Infallible;
    type Future =
        Either<futures::future::Map<RouterFuture, Fair>, Ready<Result<FairResponse, Infallible>>>;

    fn call(&self, mut req: http::Request<Incoming>) -> Self::Future {
        if self.metrics_only && !is_metrics_path(req.uri().path()) {
            return Either::Right(ready(fair(Ok(not_found()))));
        }
        if let Some(cn) = &self.cn {
            req.extensions_mut().insert(cn.clone());
        }
        if req.version() == http::Version::HTTP_2 && is_latency_sensitive(req.uri().path()) {
            io::mark_next_stream_urgent();
        }
        let mut router = self.router.clone();
        let responded = tower_service::Service::call(&mut router, req);
        Either::Left(futures::FutureExt::map(responded, fair as Fair))
    }
}

/// Watch streams (gRPC and the JSON gateway's): their responses must not wait behind other
/// requests' work (`io::connection_queue`).
fn is_latency_sensitive(p: &str) -> bool {
    p == "/etcdserverpb.Watch/Watch" || p == "/v3/watch"
}

/// The paths etcd's metrics listener serves (`HandleMetrics` and `HandleHealth`).
fn is_metrics_path(p: &str) -> bool {
    p == "/metrics"
        || p == "/health"
        || p == "/livez"
        || p.starts_with("/livez/")
        || p == "/readyz"
        || p.starts_with("/readyz/")
}

/// Go's `http.NotFound`.
fn not_found() -> http::Response<Body> {
    http::Response::builder()
        .status(http::StatusCode::NOT_FOUND)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("x-content-type-options", "nosniff")
        .body(Body::new(http_body_util::Full::new(
            bytes::Bytes::from_static(b"404 page not found\n"),
        )))
        .expect("static response parts are valid")
}

/// Every listener of this member, decided once at start-up and shared by the cores.
#[derive(Clone)]
pub struct ListenPlan {
    pub specs: Vec<ListenerSpec>,
    /// The client TLS configuration (also used by `https` metrics URLs).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl ListenPlan {
    /// Resolves TLS (generating auto-TLS certificates), checks the URLs against it as etcd
    /// does, validates the peer TLS settings (there is no peer listener yet) and removes stale
    /// unix socket files.
    pub fn new(cfg: &crate::config::Config) -> anyhow::Result<ListenPlan> {
        let opts = tls::TlsOptions::from_config(cfg);
        check_peer_tls(cfg, &opts)?;

        let info = tls::client_tls_info(cfg)?;
        let mut specs = client_listeners(&cfg.listen_client_urls, info.as_ref())?;
        let metrics = metrics_listeners(&cfg.listen_metrics_urls, info.as_ref())?;
        for m in &metrics {
            if specs.iter().any(|s| s.addr == m.addr) {
                anyhow::bail!("listen tcp {}: bind: address already in use", m.addr);
            }
        }
        specs.extend(metrics);
        for s in &specs {
            if let ListenAddr::Tcp(addr) = s.addr {
                check_not_shared(addr)?;
            }
        }
        let needs_tls = specs.iter().any(|s| s.secure);
        let tls = match (&info, needs_tls) {
            (Some(info), true) => {
                crate::log_info!(
                    "starting with client TLS",
                    "tls-info" => info.to_string(),
                    "cipher-suites" => cfg.cipher_suites.clone()
                );
                Some(tls::server_config(info, &opts)?)
            }
            _ => None,
        };
        for s in &specs {
            prepare_unix(s)?;
        }
        Ok(ListenPlan { specs, tls })
    }

    /// Binds this core's sockets: every TCP address, and unix sockets on the last core only
    /// (a path can be bound once). The error is the message to stop with.
    pub fn bind(&self, core: usize, cores: usize) -> Result<Vec<(Listener, usize)>, String> {
        let mut out = Vec::new();
        for (i, s) in self.specs.iter().enumerate() {
            if s.is_unix() && core + 1 != cores {
                continue;
            }
            let l = bind(s).map_err(|e| match s.role {
                Role::Client => format!("listening for client requests on {}: {e}", s.addr),
                Role::Metrics => format!("listening for metrics on {}: {e}", s.addr),
                Role::Peer => format!("listening for peers on {}: {e}", s.addr),
            })?;
            out.push((l, i));
        }
        Ok(out)
    }

    /// Serves the sockets [`ListenPlan::bind`] returned, until the process ends.
    pub async fn serve(&self, bound: Vec<(Listener, usize)>, router: Router, limits: ServeLimits) {
        let limits = Rc::new(limits);
        let mut tasks = Vec::new();
        for (l, i) in bound {
            let s = &self.specs[i];
            let serving = Rc::new(Serving {
                router: router.clone(),
                limits: limits.clone(),
                tls: if s.secure { self.tls.clone() } else { None },
                insecure: s.insecure,
                role: s.role,
            });
            tasks.push(glommio::spawn_local(serve(l, serving)));
        }
        futures::future::join_all(tasks).await;
    }

    /// The lines etcd logs once the member serves: per client address "ready to serve client
    /// requests" and how it serves (embed/serve.go), per metrics URL "serving metrics".
    pub fn log_ready(&self) {
        for s in &self.specs {
            match s.role {
                Role::Client => {
                    crate::log_info!("ready to serve client requests");
                    if s.insecure {
                        crate::log_warn!(
                            "serving client traffic insecurely; this is strongly discouraged!",
                            "traffic" => "grpc+http",
                            "address" => s.addr.to_string()
                        );
                    }
                    if s.secure {
                        crate::log_info!(
                            "serving client traffic securely",
                            "traffic" => "grpc+http",
                            "address" => s.addr.to_string()
                        );
                    }
                }
                Role::Metrics => {
                    for u in &s.urls {
                        crate::log_info!("serving metrics", "address" => u.clone());
                    }
                }
                // The peer transport logs its own listeners (`crate::peer`).
                Role::Peer => {}
            }
        }
    }
}

/// Checks the peer TLS settings as etcd's `configurePeerListeners` would, generating the
/// `--peer-auto-tls` certificate; the configurations are built (and dropped) so that a bad
/// file fails at start, as in etcd.
fn check_peer_tls(cfg: &crate::config::Config, opts: &tls::TlsOptions) -> anyhow::Result<()> {
    let info = tls::peer_tls_info(cfg)?;
    if let Some(info) = &info {
        crate::log_info!(
            "starting with peer TLS",
            "tls-info" => info.to_string(),
            "cipher-suites" => cfg.cipher_suites.clone()
        );
    }
    for u in &cfg.listen_peer_urls {
        if u.is_tls() {
            let Some(info) = &info else {
                anyhow::bail!(
                    "cannot listen on TLS for {}: KeyFile and CertFile are not presented",
                    u.host_port()
                );
            };
            tls::server_config(info, opts)?;
            tls::client_config(info, opts)?;
        } else if let Some(info) = &info {
            log_warn!(
                "scheme is HTTP while key and cert files are present; ignoring key and cert files",
                "peer-url" => u.raw.clone()
            );
            if info.client_cert_auth {
                log_warn!(
                    "scheme is HTTP while --peer-client-cert-auth is enabled; ignoring client cert auth for this URL",
                    "peer-url" => u.raw.clone()
                );
            }
        }
    }
    Ok(())
}
