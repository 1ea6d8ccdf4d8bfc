//! Response bodies cut into pieces of at most one HTTP/2 frame, so that every stream of a
//! connection gets its turn at the connection's flow-control window.
//!
//! Why: hyper hands each body chunk to h2 whole, and h2 assigns the connection-level window
//! to the streams that want it in arrival order, each stream taking as much as its own window
//! allows before the next one gets any. A gRPC response is one chunk (tonic encodes a whole
//! message at once), so ten concurrent 5 MB range responses on one connection each claimed
//! megabytes of window ahead of a watch response of a hundred bytes, and the watch response
//! waited until the client had read all of that: 150-330 ms on a loaded machine, where etcd
//! (grpc-go's writer takes one frame per stream per turn) answers within a few milliseconds
//! (etcd's `TestWatchDelayFor*`). With chunks of one frame, a stream never holds more than
//! about two frames' worth of window, so a small response waits behind at most that much per
//! busy stream.
//!
//! Splitting is zero-copy (`Bytes::split_to`); trailers and the size hint pass through
//! unchanged, so HTTP/1.1 content lengths stay exact.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The largest piece handed to the connection: HTTP/2's default (and etcd's) maximum frame
/// size, the amount grpc-go's writer sends per stream per turn.
pub const RESPONSE_PIECE_BYTES: usize = 16 * 1024;

/// A body whose data frames are at most `RESPONSE_PIECE_BYTES` long; bytes and order are the
/// inner body's.
pub struct FairBody<B> {
    inner: B,
    /// What is left of the last data frame taken from `inner` (empty when nothing is).
    rest: Bytes,
}

impl<B> FairBody<B> {
    pub fn new(inner: B) -> Self {
        FairBody {
            inner,
            rest: Bytes::new(),
        }
    }

    fn next_piece(&mut self) -> Bytes {
        let n = self.rest.len().min(RESPONSE_PIECE_BYTES);
        self.rest.split_to(n)
    }
}

impl<B> Body for FairBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if !this.rest.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(this.next_piece()))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if data.len() > RESPONSE_PIECE_BYTES => {
                    this.rest = data;
                    Poll::Ready(Some(Ok(Frame::data(this.next_piece()))))
                }
                Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    /// Collects every frame of a body: the data pieces' lengths, all data, the trailers.
    async fn drain<B>(mut body: FairBody<B>) -> (Vec<usize>, Vec<u8>, Option<http::HeaderMap>, bool)
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Debug,
    {
        let (mut lengths, mut data, mut trailers) = (Vec::new(), Vec::new(), None);
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("the test bodies do not fail");
            match frame.into_data() {
                Ok(d) => {
                    lengths.push(d.len());
                    data.extend_from_slice(&d);
                }
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        // A body that knows its end (e.g. `Full`) must say so once drained; a stream body
        // cannot know it, so the callers check this only where it applies.
        let ended = body.is_end_stream();
        (lengths, data, trailers, ended)
    }

    #[test]
    fn a_large_chunk_leaves_as_frame_sized_pieces_in_order() {
        let payload: Vec<u8> = (0..5 * RESPONSE_PIECE_BYTES + 123)
            .map(|i| (i % 251) as u8)
            .collect();
        let body = FairBody::new(Full::new(Bytes::from(payload.clone())));
        assert_eq!(body.size_hint().exact(), Some(payload.len() as u64));
        let (lengths, data, trailers, ended) = futures::executor::block_on(drain(body));
        assert!(ended, "a drained Full body is at its end");
        assert_eq!(
            lengths,
            vec![
                RESPONSE_PIECE_BYTES,
                RESPONSE_PIECE_BYTES,
                RESPONSE_PIECE_BYTES,
                RESPONSE_PIECE_BYTES,
                RESPONSE_PIECE_BYTES,
                123
            ]
        );
        assert_eq!(data, payload);
        assert!(trailers.is_none());
    }

    #[test]
    fn small_chunks_and_trailers_pass_unchanged() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Ok(Frame::data(Bytes::from(vec![
                7u8;
                RESPONSE_PIECE_BYTES + 1
            ]))),
            Ok(Frame::data(Bytes::from_static(b"de"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let body = FairBody::new(StreamBody::new(futures::stream::iter(frames)));
        let (lengths, data, seen, _) = futures::executor::block_on(drain(body));
        assert_eq!(lengths, vec![3, RESPONSE_PIECE_BYTES, 1, 2]);
        assert_eq!(data.len(), 3 + RESPONSE_PIECE_BYTES + 1 + 2);
        assert_eq!(&data[..3], b"abc");
        assert_eq!(&data[data.len() - 2..], b"de");
        assert_eq!(seen, Some(trailers));
    }

    #[test]
    fn the_size_hint_counts_what_is_left_of_a_split_chunk() {
        let mut body = FairBody::new(Full::new(Bytes::from(vec![1u8; 3 * RESPONSE_PIECE_BYTES])));
        let first = futures::executor::block_on(body.frame())
            .expect("a frame")
            .expect("no error");
        assert_eq!(first.data_ref().map(Bytes::len), Some(RESPONSE_PIECE_BYTES));
        assert_eq!(
            body.size_hint().exact(),
            Some(2 * RESPONSE_PIECE_BYTES as u64)
        );
        assert!(!body.is_end_stream());
    }
}
