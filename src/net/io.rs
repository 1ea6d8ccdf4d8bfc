//! Adapts a futures-io byte stream (glommio's `TcpStream`) to hyper's `rt::Read`/`rt::Write`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

/// Bytes read from the socket per poll, at most. hyper's own read buffer grows to this order too.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A stream seen by hyper. Reads go through a buffer of our own that is zero-filled once, at
/// creation, because hyper hands out uninitialised memory and futures-io wants initialised
/// slices; zero-filling hyper's buffer on every poll would cost a memset per read.
pub struct HyperIo<S> {
    inner: S,
    scratch: Box<[u8]>,
    /// Bytes already read into `scratch` that hyper has not taken yet: `scratch[start..end]`.
    start: usize,
    end: usize,
}

impl<S> HyperIo<S> {
    pub fn new(inner: S) -> Self {
        Self::with_prefix(inner, &[])
    }

    /// Creates the adapter with bytes that were already read from the stream (e.g. while sniffing
    /// the protocol); hyper sees them first.
    pub fn with_prefix(inner: S, prefix: &[u8]) -> Self {
        let mut scratch = vec![0u8; READ_CHUNK_BYTES.max(prefix.len())].into_boxed_slice();
        scratch[..prefix.len()].copy_from_slice(prefix);
        HyperIo {
            inner,
            scratch,
            start: 0,
            end: prefix.len(),
        }
    }
}

impl<S: AsyncRead + Unpin> hyper::rt::Read for HyperIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start == this.end {
            let n = match Pin::new(&mut this.inner).poll_read(cx, &mut this.scratch) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            this.start = 0;
            this.end = n;
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
        }
        let n = (this.end - this.start).min(buf.remaining());
        buf.put_slice(&this.scratch[this.start..this.start + n]);
        this.start += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

/// hyper's executor for connection-level tasks (h2 streams): they stay on the accepting core.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: std::future::Future + 'static,
{
    fn execute(&self, fut: F) {
        glommio::spawn_local(fut).detach();
    }
}
