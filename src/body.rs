//! The one response body type: a queue of `Bytes` segments handed to hyper in bounded
//! chunks, plus the guards (gate permit, connection activity) that must live exactly as
//! long as the body's bytes are being sent.
//!
//! Why one hand-written body instead of `Full`/`StreamBody` combinators:
//! - **Backpressure.** hyper polls a body for its next frame only while its write buffer
//!   has room (about 400 KiB or 16 buffers), so yielding at most `chunk` bytes per poll
//!   means a slow reader pins at most a couple of chunks' worth of *references* into a
//!   mapping.
//! - **Zero copy.** Segments are `Bytes` slices of a memory mapping (`Bytes::from_owner`);
//!   `split_to` on them only moves pointers. Nothing here reads the bytes. A body built
//!   with [`Body::from_file`] also knows the file behind the mapping: once the server has
//!   given it the connection's [`Outbox`] ([`Body::send_through`]), it registers the file
//!   there, and the socket sends the slices with `sendfile` from the file (see
//!   `server::zero_copy`). A file truncated under us costs a short `sendfile` (or an
//!   `EFAULT` in `writev`) and that one connection, never a SIGBUS here.
//! - **Lifetime.** Guards attached with [`Body::attach`] live until the last byte is on
//!   the wire. hyper drops a body as soon as it has yielded its last chunk, before that
//!   chunk is written; so a body that sends through an outbox parks its guards there when
//!   it yields its last chunk (or is dropped), and the socket releases them at the next
//!   flush, once hyper's buffer is empty. That is the moment a concurrency permit must be
//!   returned — not when the handler returns, nor when the body is merely handed over.
//!   Without an outbox (a body polled directly, in tests) the guards go when the last
//!   chunk is yielded or the body is dropped.

use std::any::Any;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::access_log::AccessRecord;
use crate::http::file_head::FileHead;
use crate::metrics::Sharded;
use crate::outbox::stall::Stallable;
use crate::outbox::{Guard, Outbox};
use crate::store::MappedFile;

/// Default chunk size used by bodies built without an explicit one (JSON answers and
/// other small bodies are a single chunk anyway).
pub const DEFAULT_CHUNK: usize = 256 * 1024;

/// A response body made of `Bytes` segments, yielded in chunks of at most `chunk` bytes.
pub struct Body {
    segments: VecDeque<Bytes>,
    remaining: u64,
    chunk: usize,
    guards: Vec<Guard>,
    sent: Option<&'static Sharded>,
    /// The file the segments' mapped slices come from (other segments are memory).
    file: Option<Arc<MappedFile>>,
    /// The connection's outbox, once the server has attached it.
    outbox: Option<Arc<Outbox>>,
    /// `file` is registered in `outbox`.
    registered: bool,
    /// The response's access-log line, released with the guards once the body ends.
    access: Option<Box<AccessRecord>>,
    /// The whole file's `200` fields, rendered once per file version, that belong to
    /// this response but are not in its `HeaderMap` yet (see
    /// [`Body::set_file_head`]).
    file_head: Option<Arc<FileHead>>,
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
            file: None,
            outbox: None,
            registered: false,
            access: None,
            file_head: None,
        }
    }

    /// A body whose segments are slices of `file`'s mapping (a whole file, a range, or
    /// the parts of a `multipart/byteranges` answer, whose framing segments are memory),
    /// so the socket may send them with `sendfile` from `file`.
    pub fn from_file(file: Arc<MappedFile>, segments: Vec<Bytes>, chunk: usize) -> Self {
        let mut body = Body::from_segments(segments, chunk);
        body.file = Some(file);
        body
    }

    /// Marks `head`'s fields as this response's, kept here rather than in its
    /// `HeaderMap`: the fast lane writes them from their rendered lines, and any other
    /// reader of the response has them put first into the map
    /// ([`Body::take_file_head`], `App::respond`) before it sees the response.
    pub fn set_file_head(&mut self, head: Arc<FileHead>) {
        self.file_head = Some(head);
    }

    /// The fields marked by [`Body::set_file_head`], still outside the map.
    pub fn file_head(&self) -> Option<&FileHead> {
        self.file_head.as_deref()
    }

    /// Takes the fields marked by [`Body::set_file_head`], to put them into the map.
    pub fn take_file_head(&mut self) -> Option<Arc<FileHead>> {
        self.file_head.take()
    }

    /// Sends this body through the connection's `outbox`: its file is registered there
    /// for `sendfile`, its guards are released only once its last byte was written, and
    /// those that may leave their bound while the client reads nothing (attached as an
    /// `Arc<dyn Stallable>`: the media gate's slot) are told of stalls by the socket.
    /// Called by the server for every response, after the handler attached its guards.
    pub fn send_through(&mut self, outbox: Arc<Outbox>) {
        for guard in &self.guards {
            if let Some(yielding) = (**guard).downcast_ref::<Arc<dyn Stallable>>() {
                outbox.watch(Arc::downgrade(yielding));
            }
        }
        self.outbox = Some(outbox);
    }

    /// Keeps `guard` alive until the body's last byte was written, or the body is
    /// abandoned (a gate permit, a connection-activity token). Order of release is the
    /// order of attachment.
    pub fn attach(&mut self, guard: impl Any + Send + Sync) {
        self.guards.push(Box::new(guard));
    }

    /// Adds every chunk handed to hyper to `counter` (the "bytes sent" metric counts what
    /// left, not what was promised: an aborted download counts only its part).
    pub fn count_into(&mut self, counter: &'static Sharded) {
        self.sent = Some(counter);
    }

    /// Writes `record` as the access-log line of this response once its last byte was
    /// written (or the body is abandoned), with the bytes actually yielded.
    pub fn log_access(&mut self, mut record: Box<AccessRecord>) {
        // Counted down as chunks go: what is left at the end was never handed over.
        record.bytes = self.remaining;
        self.access = Some(record);
    }

    /// Names the client in the access-log line, if this response has one.
    pub fn note_client(&mut self, client: std::net::IpAddr) {
        if let Some(record) = &mut self.access {
            record.client = Some(client);
        }
    }

    /// Bytes still to be yielded.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        if !self.registered
            && let (Some(file), Some(outbox)) = (&self.file, &self.outbox)
        {
            outbox.register(Arc::clone(file));
            self.registered = true;
        }
        let front = self.segments.front_mut()?;
        let chunk = if front.len() > self.chunk {
            front.split_to(self.chunk)
        } else {
            self.segments.pop_front()?
        };
        self.remaining -= chunk.len() as u64;
        if let Some(sent) = &self.sent {
            sent.add(chunk.len() as u64);
        }
        Some(chunk)
    }

    /// Everything has been handed over (or the body is abandoned): release the guards,
    /// or park them in the outbox until the bytes handed over are written.
    fn finish(&mut self) {
        if let Some(mut record) = self.access.take() {
            // `bytes` held the body's length: what was yielded is that less what is left.
            record.bytes -= self.remaining;
            // Last, so the line is written once everything else was released.
            self.guards.push(record);
        }
        match &self.outbox {
            Some(outbox) => {
                let file = if self.registered {
                    self.registered = false;
                    self.file.clone()
                } else {
                    None
                };
                outbox.release_after_flush(file, std::mem::take(&mut self.guards));
            }
            None => self.guards.clear(),
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        self.finish();
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
            Some(chunk) => {
                if this.remaining == 0 && this.outbox.is_some() {
                    // The last chunk: hyper may drop the body before writing it, so the
                    // guards move to the outbox now (see the module docs).
                    this.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            None => {
                this.finish();
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
    use std::sync::atomic::Ordering;

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

    #[tokio::test]
    async fn through_an_outbox_guards_wait_for_the_flush_after_the_last_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.gif");
        std::fs::write(&path, vec![5u8; 1000]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        let file = Arc::new(MappedFile::map(file, &meta).unwrap());
        let outbox = Arc::new(Outbox::default());
        let dropped = Arc::new(AtomicUsize::new(0));

        let segments = vec![file.bytes.slice(0..600), file.bytes.slice(600..)];
        let mut body = Body::from_file(Arc::clone(&file), segments, 4096);
        body.attach(CountOnDrop(dropped.clone()));
        body.send_through(Arc::clone(&outbox));
        assert_eq!(outbox.registered(), 0, "nothing registered before a chunk");
        let _ = body.frame().await;
        assert_eq!(outbox.registered(), 1, "registered with its first chunk");
        let _ = body.frame().await;
        // hyper drops the body once it has the last chunk, before writing it.
        drop(body);
        assert_eq!(dropped.load(Ordering::SeqCst), 0, "held until written");
        assert!(outbox.lookup(&file.bytes[600..]).is_some());
        outbox.flushed();
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "released at the flush");
        assert_eq!(outbox.registered(), 0);

        // An empty body (HEAD, 304) dropped unpolled: held until its head is flushed.
        let mut empty = Body::empty();
        empty.attach(CountOnDrop(dropped.clone()));
        empty.send_through(Arc::clone(&outbox));
        drop(empty);
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        outbox.flushed();
        assert_eq!(dropped.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn empty_body_is_end_of_stream() {
        assert!(http_body::Body::is_end_stream(&Body::empty()));
        assert!(http_body::Body::is_end_stream(&Body::full("")));
    }
}
