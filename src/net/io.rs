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

/// hyper's executor for connection-level tasks (h2 streams): they stay on the accepting core,
/// each in its core's request queue (glommio's default queue), except a stream marked urgent
/// (`mark_next_stream_urgent`: watches), which runs in the connection queue.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: std::future::Future + 'static,
{
    fn execute(&self, fut: F) {
        let urgent = NEXT_STREAM_IS_URGENT.with(|u| u.replace(false));
        let queue = if urgent {
            connection_queue()
        } else {
            glommio::TaskQueueHandle::default()
        };
        glommio::spawn_local_into(fut, queue)
            .expect("this core's task queues exist")
            .detach();
    }
}

/// How soon the connection queue runs once it has work (glommio preempts other queues at
/// their next task boundary after this).
pub const CONNECTION_LATENCY: std::time::Duration = std::time::Duration::from_millis(1);

thread_local! {
    static CONNECTION_QUEUE: std::cell::Cell<Option<glommio::TaskQueueHandle>> =
        const { std::cell::Cell::new(None) };
    static NEXT_STREAM_IS_URGENT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// This core's queue for client connections (the tasks that read and write the sockets, h2's
/// framing) and watch streams, apart from the request queue where other requests do their
/// work (ranges, encoding of their responses). glommio runs the tasks of one queue in order, so in a
/// shared queue a watch response, or the connection task that writes it, waited behind every
/// request task queued before it: with ten 5 MB range responses in progress, up to 100 ms
/// (etcd's `TestWatchDelayFor*`). Created on first use, once per executor.
pub fn connection_queue() -> glommio::TaskQueueHandle {
    CONNECTION_QUEUE.with(|queue| {
        if let Some(handle) = queue.get() {
            return handle;
        }
        let handle = glommio::executor().create_task_queue(
            glommio::Shares::Static(1000),
            glommio::Latency::Matters(CONNECTION_LATENCY),
            "client-connections",
        );
        queue.set(Some(handle));
        handle
    })
}

/// The next h2 stream hyper spawns on this core runs in the connection queue. hyper calls the
/// service for a new stream and spawns that stream's task right after, on the same thread, so
/// the service marks a stream it recognises as latency-sensitive while handling its request
/// head.
pub fn mark_next_stream_urgent() {
    NEXT_STREAM_IS_URGENT.with(|u| u.set(true));
}
