//! The one response body type: a queue of `Bytes` segments handed to hyper in bounded
//! chunks, plus the guards (limiter permit, connection activity) that must live exactly as
//! long as the body does.
//!
//! Why one hand-written body instead of `Full`/`StreamBody` combinators:
//! - **Backpressure.** hyper polls a body for its next frame only after the socket has
//!   taken the previous one, so yielding at most `chunk` bytes per poll means a slow reader
//!   pins at most a couple of chunks' worth of *references* into a mapping.
//! - **Zero copy.** Segments are `Bytes` slices of a memory mapping (`Bytes::from_owner`);
//!   `split_to` on them only moves pointers. Nothing here reads the bytes, so a file that is
//!   truncated under us costs an `EFAULT` in the kernel's `writev`, never a SIGBUS here.
//! - **Lifetime.** Guards attached with [`Body::attach`] are dropped when hyper drops the
//!   body: after the last byte was written, or when the client went away mid-stream. That is
//!   the moment a concurrency permit must be returned, not when the handler returns.

use std::any::Any;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// Default chunk size used by bodies built without an explicit one (JSON answers and
/// other small bodies are a single chunk anyway).
pub const DEFAULT_CHUNK: usize = 256 * 1024;

/// A response body made of `Bytes` segments, yielded in chunks of at most `chunk` bytes.
pub struct Body {
    segments: VecDeque<Bytes>,
    remaining: u64,
    chunk: usize,
    guards: Vec<Box<dyn Any + Send + Sync>>,
    sent: Option<Arc<AtomicU64>>,
}

impl Body {
    /// A body with no bytes (HEAD, 304, 204, 416 ...).
    pub fn empty() -> Self {
        Body::from_segments(Vec::new(), DEFAULT_CHUNK)
    }

    /// A body of one in-memory buffer (JSON answers, small generated content).
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Body::from_segments(vec![bytes.into()], DEFAULT_CHUNK)
    }

    /// A body made of several segments — a whole mapped file, a range of one, or the
    /// parts of a `multipart/byteranges` answer — yielded `chunk` bytes at a time.
    pub fn from_segments(segments: Vec<Bytes>, chunk: usize) -> Self {
        let segments: VecDeque<Bytes> = segments.into_iter().filter(|s| !s.is_empty()).collect();
        let remaining = segments.iter().map(|s| s.len() as u64).sum();
        Body {
            segments,
            remaining,
            chunk: chunk.max(1),
            guards: Vec::new(),
            sent: None,
        }
    }

    /// Keeps `guard` alive until the body is finished or dropped (a limiter permit, a
    /// connection-activity token). Order of release is the order of attachment.
    pub fn attach(&mut self, guard: impl Any + Send + Sync) {
        self.guards.push(Box::new(guard));
    }

    /// Adds every chunk handed to hyper to `counter` (the "bytes sent" metric counts what
    /// left, not what was promised: an aborted download counts only its part).
    pub fn count_into(&mut self, counter: Arc<AtomicU64>) {
        self.sent = Some(counter);
    }

    /// Bytes still to be yielded.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        let front = self.segments.front_mut()?;
        let chunk = if front.len() > self.chunk {
            front.split_to(self.chunk)
        } else {
            self.segments.pop_front()?
        };
        self.remaining -= chunk.len() as u64;
        if let Some(sent) = &self.sent {
            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        Some(chunk)
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("remaining", &self.remaining)
            .field("segments", &self.segments.len())
            .field("guards", &self.guards.len())
            .finish()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        match this.next_chunk() {
            Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
            None => {
                // Release permits as soon as the last byte is handed over, even if hyper
                // keeps the (finished) body around a little longer.
                this.guards.clear();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn yields_bounded_chunks_in_order() {
        let data = Bytes::from((0..=255u8).cycle().take(1000).collect::<Vec<_>>());
        let body = Body::from_segments(vec![data.slice(0..700), data.slice(700..)], 256);
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(1000));
        let mut body = body;
        let mut sizes = Vec::new();
        let mut all = Vec::new();
        while let Some(frame) = body.frame().await {
            let chunk = frame.unwrap().into_data().unwrap();
            sizes.push(chunk.len());
            all.extend_from_slice(&chunk);
        }
        assert_eq!(sizes, vec![256, 256, 188, 256, 44]);
        assert_eq!(Bytes::from(all), data);
    }

    struct CountOnDrop(Arc<AtomicUsize>);
    impl Drop for CountOnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn guards_released_at_end_and_on_drop() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let mut body = Body::full("hello");
        body.attach(CountOnDrop(dropped.clone()));
        let _ = body.frame().await;
        assert_eq!(dropped.load(Ordering::SeqCst), 0, "held while bytes remain");
        assert!(body.frame().await.is_none());
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            1,
            "released at end of stream"
        );

        let mut aborted = Body::full(vec![0u8; 10_000]);
        aborted.attach(CountOnDrop(dropped.clone()));
        let _ = aborted.frame().await;
        drop(aborted);
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            2,
            "released when dropped mid-stream"
        );
    }

    #[test]
    fn empty_body_is_end_of_stream() {
        assert!(http_body::Body::is_end_stream(&Body::empty()));
        assert!(http_body::Body::is_end_stream(&Body::full("")));
    }
}
