//! Byte streams between members: dialing a peer URL (TCP or a unix socket, under TLS for
//! `https`/`unixs`), securing an accepted connection (TLS, the client certificate's SAN), and
//! reading and writing frames under time limits. Core 0 only (glommio sockets).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::Either;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use rustls_pki_types::{CertificateDer, ServerName};

use super::wire::{FrameDecoder, WireError, FRAME_HEADER_BYTES};
use crate::config::Url;
use crate::net::tls::HANDSHAKE_TIMEOUT;
use crate::net::{Peek, TLS_HANDSHAKE_RECORD};

/// Any byte stream a peer connection runs over.
pub trait PeerStream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> PeerStream for T {}

pub type BoxStream = Box<dyn PeerStream>;

/// TCP keep-alive on peer sockets: a peer that vanished without a FIN or RST (power loss, a
/// partition) is noticed after about 10 + 3 * 5 = 25 s even on a connection we only read.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;

/// Bytes read from a socket per call, at most.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// While a large frame arrives, its buffer grows by at most this much at a time, so memory
/// follows the bytes received rather than the length claimed.
const RESERVE_STEP_BYTES: usize = 1 << 20;

/// `f`'s output, or `None` once `d` has passed.
pub async fn with_timeout<F: Future>(d: Duration, f: F) -> Option<F::Output> {
    let f = std::pin::pin!(f);
    let t = std::pin::pin!(glommio::timer::sleep(d));
    match futures::future::select(f, t).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(_) => None,
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Reads frames off a stream, holding at most one frame (plus one read's worth) at a time.
pub struct FrameReader<R> {
    inner: R,
    buffer: BytesMut,
    scratch: Box<[u8]>,
    decoder: FrameDecoder,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, limit: usize) -> FrameReader<R> {
        FrameReader {
            inner,
            buffer: BytesMut::new(),
            scratch: vec![0u8; READ_CHUNK_BYTES].into_boxed_slice(),
            decoder: FrameDecoder::new(limit),
        }
    }

    /// The frame limit from now on (raised after the handshake).
    pub fn set_limit(&mut self, limit: usize) {
        self.decoder = FrameDecoder::new(limit);
    }

    /// Reads more bytes into the buffer; `Ok(false)` at the end of the stream.
    async fn fill(&mut self) -> io::Result<bool> {
        let n = self.inner.read(&mut self.scratch).await?;
        self.buffer.extend_from_slice(&self.scratch[..n]);
        Ok(n > 0)
    }

    /// The first `n` bytes of the stream (the preamble).
    pub async fn read_prefix(&mut self, n: usize) -> Result<Bytes, ReadError> {
        while self.buffer.len() < n {
            if !self.fill().await? {
                return Err(WireError::Truncated {
                    have: self.buffer.len(),
                    need: n,
                }
                .into());
            }
        }
        Ok(self.buffer.split_to(n).freeze())
    }

    /// The next frame's payload; `None` when the stream ended cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ReadError> {
        loop {
            if let Some(payload) = self.decoder.decode(&mut self.buffer)? {
                return Ok(Some(payload));
            }
            if let Some(total) = self.decoder.frame_bytes(&self.buffer)? {
                let missing = total.saturating_sub(self.buffer.len());
                self.buffer.reserve(missing.min(RESERVE_STEP_BYTES));
            } else {
                self.buffer.reserve(FRAME_HEADER_BYTES);
            }
            if !self.fill().await? {
                self.decoder.check_end(&self.buffer)?;
                return Ok(None);
            }
        }
    }

    /// [`FrameReader::next`], failing once `limit` passes without a whole frame.
    pub async fn next_within(&mut self, limit: Duration) -> Result<Option<Bytes>, ReadError> {
        match with_timeout(limit, self.next()).await {
            Some(r) => r,
            None => Err(timed_out("reading from the peer").into()),
        }
    }
}

/// Writes `bytes` and flushes (TLS needs the flush), failing once `limit` passes.
pub async fn write_within<W: AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
    limit: Duration,
) -> io::Result<()> {
    let write = async {
        writer.write_all(bytes).await?;
        writer.flush().await
    };
    with_timeout(limit, write)
        .await
        .unwrap_or_else(|| Err(timed_out("writing to the peer")))
}

// ---------------------------------------------------------------------------------------------
// Dialing

/// Connects to a peer URL: TCP for `http`/`https`, a unix socket for `unix`/`unixs`, then TLS
/// for `https`/`unixs`. The whole of it must finish within `limit`.
pub async fn dial(
    url: &Url,
    tls: Option<&Arc<rustls::ClientConfig>>,
    limit: Duration,
) -> Result<BoxStream, String> {
    if url.is_tls() && tls.is_none() {
        return Err(format!(
            "cannot dial {}: no peer TLS configuration (--peer-cert-file/--peer-key-file or --peer-auto-tls)",
            url.raw
        ));
    }
    let connect = async {
        if url.is_unix() {
            let stream = glommio::net::UnixStream::connect(url.unix_path())
                .await
                .map_err(|e| format!("dial unix {}: {e}", url.unix_path()))?;
            secure_client(Box::new(stream), url, tls).await
        } else {
            let address = resolve(url).await?;
            let stream = glommio::net::TcpStream::connect_timeout(address, limit)
                .await
                .map_err(|e| format!("dial tcp {address}: {e}"))?;
            tune_tcp(&stream);
            secure_client(Box::new(stream), url, tls).await
        }
    };
    with_timeout(limit, connect)
        .await
        .unwrap_or_else(|| Err(format!("dial {}: timed out after {limit:?}", url.raw)))
}

/// The address of an `http(s)` URL. Names other than `localhost` are resolved on a blocking
/// thread: a DNS lookup must not stall core 0.
async fn resolve(url: &Url) -> Result<SocketAddr, String> {
    let host = url.host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, url.port));
    }
    if host.is_empty() || host == "localhost" {
        return crate::net::resolve(host, url.port).map_err(|e| e.to_string());
    }
    let (host, port) = (host.to_string(), url.port);
    glommio::executor()
        .spawn_blocking(move || crate::net::resolve(&host, port))
        .await
        .map_err(|e| format!("resolve {}: {e}", url.host_port()))
}

fn tune_tcp<S: AsRawFd>(stream: &S) {
    // SAFETY: the descriptor belongs to `stream`, which outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let socket = socket2::SockRef::from(&fd);
    let _ = socket.set_tcp_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let _ = socket.set_tcp_keepalive(&keepalive);
}

async fn secure_client(
    stream: BoxStream,
    url: &Url,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<BoxStream, String> {
    if !url.is_tls() {
        return Ok(stream);
    }
    let config = tls.expect("checked by dial").clone();
    // A unix URL's host part is a file name, not a host: verify the server as "localhost".
    let host = url.host.trim_start_matches('[').trim_end_matches(']');
    let name = if url.is_unix() || host.is_empty() {
        ServerName::try_from("localhost".to_string())
    } else {
        ServerName::try_from(host.to_string())
    }
    .map_err(|e| format!("TLS server name {host:?}: {e}"))?;
    let tls_stream = futures_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS handshake with {}: {e}", url.raw))?;
    Ok(Box::new(tls_stream))
}

// ---------------------------------------------------------------------------------------------
// Accepting

/// How an accepted connection is secured.
pub struct AcceptPolicy {
    /// The peer TLS configuration, when the listener has an `https`/`unixs` URL.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The listener also has an `http`/`unix` URL: plaintext is accepted too (the first byte
    /// tells them apart).
    pub insecure: bool,
    /// `--experimental-peer-skip-client-san-verification`.
    pub skip_client_san_verify: bool,
}

/// An accepted TCP or unix stream before TLS.
pub trait Accepted: PeerStream + Peek + 'static {
    /// The remote IP for etcd's client-certificate SAN check (none on unix sockets).
    fn remote_ip(&self) -> Option<IpAddr>;
}

impl Accepted for glommio::net::TcpStream {
    fn remote_ip(&self) -> Option<IpAddr> {
        self.peer_addr().ok().map(|a| a.ip())
    }
}

impl Accepted for glommio::net::UnixStream {
    fn remote_ip(&self) -> Option<IpAddr> {
        None
    }
}

/// Applies the listener's security to an accepted stream: plaintext, or a TLS handshake and
/// etcd's checks of the client certificate (the CA, CRL and allowed CN/hostname checks run
/// inside the handshake, in `net::tls`'s verifier; the SAN check after it). `None`: the
/// connection was refused and logged with etcd's line, or went silent.
pub async fn secure_server<S: Accepted>(
    stream: S,
    remote: &str,
    policy: &AcceptPolicy,
) -> Option<BoxStream> {
    let Some(config) = policy.tls.clone() else {
        return Some(Box::new(stream));
    };
    if policy.insecure {
        match with_timeout(HANDSHAKE_TIMEOUT, stream.peek_byte()).await {
            Some(Ok(Some(TLS_HANDSHAKE_RECORD))) => {}
            Some(Ok(Some(_))) => return Some(Box::new(stream)),
            _ => return None,
        }
    }
    let remote_ip = stream.remote_ip();
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
    let tls_stream = match with_timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            rejected(
                remote,
                &server_name,
                None,
                &crate::net::tls::go_tls_io_error(&e),
            );
            return None;
        }
        None => {
            rejected(
                remote,
                &server_name,
                None,
                "tls: handshake did not complete in time",
            );
            return None;
        }
    };
    let certificate: Option<CertificateDer<'static>> = tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned());
    if let (Some(cert), Some(ip), false) = (&certificate, remote_ip, policy.skip_client_san_verify)
    {
        // The SAN check may resolve DNS names: off the executor thread.
        let owned = cert.clone();
        let verdict = glommio::executor()
            .spawn_blocking(move || crate::net::tls::check_client_cert_san(&owned, ip))
            .await;
        if let Err(e) = verdict {
            rejected(remote, &server_name, Some(cert), &e);
            return None;
        }
    }
    Some(Box::new(tls_stream))
}

/// etcd's handshake-failure line for the peer listener (embed/config_logging.go).
fn rejected(remote: &str, server_name: &str, cert: Option<&CertificateDer<'_>>, error: &str) {
    match cert {
        Some(cert) => {
            let (dns, ips) = crate::net::tls::sans(cert);
            log_warn!(
                "rejected connection on peer endpoint",
                "remote-addr" => remote,
                "server-name" => server_name,
                "ip-addresses" => ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                "dns-names" => dns,
                "error" => error
            );
        }
        None => log_warn!(
            "rejected connection on peer endpoint",
            "remote-addr" => remote,
            "server-name" => server_name,
            "error" => error
        ),
    }
}

/// Keep-alive and no-delay on an accepted TCP stream.
pub fn tune_accepted(stream: &glommio::net::TcpStream) {
    tune_tcp(stream);
}
