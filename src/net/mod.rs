//! Client listeners: one SO_REUSEPORT socket per core per URL, each connection served by hyper
//! (HTTP/1.1 and HTTP/2 on one port) on the core that accepted it.

pub mod io;

use std::net::{SocketAddr, ToSocketAddrs};

use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;

use crate::api::router::Router;
use crate::{log_debug, log_warn};

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

/// Accepts connections forever on this core. Each connection is its own task on this core.
pub async fn serve(
    listener: glommio::net::TcpListener,
    router: Router,
    limits: std::rc::Rc<ServeLimits>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Running out of descriptors is transient; back off instead of spinning.
                log_warn!("failed to accept a client connection", "error" => e.to_string());
                glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let limits = limits.clone();
        glommio::spawn_local(async move {
            let mut builder = auto::Builder::new(io::LocalExec);
            builder
                .http2()
                .max_concurrent_streams(limits.max_concurrent_streams)
                // Large windows: a LIST of many MiB should not stall on flow control.
                .initial_stream_window_size(4 << 20)
                .initial_connection_window_size(16 << 20)
                .max_send_buf_size(4 << 20);
            let svc = TowerToHyperService::new(router);
            if let Err(e) = builder
                .serve_connection(io::HyperIo::new(stream), svc)
                .await
            {
                log_debug!("client connection closed with an error", "error" => e.to_string());
            }
        })
        .detach();
    }
}
