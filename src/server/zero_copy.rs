//! The socket under hyper: sends the body bytes of mapped files with `sendfile(2)` from
//! the page cache, so no body byte is copied through user space or into the socket
//! buffer — the job nginx does with `sendfile on; tcp_nopush on;`.
//!
//! # Design: keep hyper, change only what the socket does with each slice
//! hyper (HTTP/1, `writev(true)`) hands its socket one `poll_write_vectored` call per
//! flush with up to 64 `IoSlice`s: the response head it rendered into its own buffer,
//! then the body chunks exactly as the body yielded them (a `Content-Length` body is
//! written as-is, no framing). A chunk of a mapped file is a slice *of the mapping*, so
//! its address says which file and which offset it comes from. Each response body that
//! sends a mapped file registers that file in the connection's [`Outbox`]; here each slice
//! is looked up among the registered mappings:
//!
//! - a run of slices of one file, contiguous in it, of at least `--sendfile-min-bytes`,
//!   goes out with one `sendfile` from the file at the matching offset;
//! - everything else (the head, `multipart/byteranges` framing, JSON, file runs too short
//!   to be worth a second syscall) goes out with one `writev` — or, when a `sendfile` run
//!   follows, with `sendmsg(MSG_MORE)` on a socket corked (`TCP_CORK`) until the flush
//!   that ends the response, so the kernel puts the head in the same packet as the
//!   first body bytes and sends only full packets until the last (one packet train for a
//!   small GIF, as `tcp_nopush` gives nginx; [`cork`] says why `MSG_MORE` alone was not
//!   enough).
//!
//! hyper only needs to know how many bytes were written: partial writes, `WouldBlock`
//! and errors are reported exactly as a plain `writev` would report them, and hyper's
//! HTTP/1 semantics (head rendering, keep-alive, pipelining, `HEAD`, `304`) are untouched.
//!
//! # Guarantees
//! - **Truncation costs one connection.** `sendfile` reads the file, not the mapping, so
//!   no page fault can reach this process. A file truncated under a send makes
//!   `sendfile` return fewer bytes than asked and then zero: a zero count for a non-empty
//!   run is reported as an error, hyper closes the connection before `Content-Length` is
//!   reached, and the client sees a short body. Small runs sent by `writev` fail with
//!   `EFAULT` instead, as before.
//! - **The stall timeout applies.** A full socket makes `sendfile` return `EAGAIN`,
//!   which is `Pending` here; [`super::timed_io::TimedIo`], which wraps this type, watches
//!   the waiting write exactly as for `writev`. This type answers its questions
//!   ([`SendProgress`]): bytes the client acknowledged (`TCP_INFO`, see
//!   [`super::tcp_progress`]), and, through the [`Outbox`], moving the response's media
//!   slot to the stalled pool and back, and whether that pool dropped the connection.
//! - **Permits last until the last byte.** [`Outbox::flushed`] is called from
//!   `poll_flush`, which hyper calls only once its write buffer is empty.
//! - **Page-cache misses.** `sendfile` of a page not in the page cache reads it from disk
//!   on the calling worker, as the page fault of a `writev` of mapped bytes did before;
//!   GIFs served often stay cached. Moving cold sends off the workers is issue 10's.
//! - **Counters are exact.** Bytes sent by `sendfile` and file bytes copied by `writev`
//!   are counted from the syscalls' return values (`ConnCounters`).
//!
//! # Extending
//! Every write goes through [`ZeroCopyIo::poll_write_vectored`] one step at a time
//! ([`next_step`] decides, `poll_send_*` perform). The "no progress" stall rule and the
//! hand-off of stalled bodies to their pool hook in above it, in `TimedIo`, which sees
//! every `Pending`, and through [`SendProgress`] here, which owns the socket and the
//! outbox.
//!
//! No `unsafe`: `rustix` wraps `sendfile` and `sendmsg` safely.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rustix::net::{SendAncillaryBuffer, SendFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use super::tcp_progress;
use super::timed_io::SendProgress;
use crate::outbox::Outbox;
use crate::state::ConnCounters;
use crate::store::MappedFile;

/// One step of a vectored write, as [`next_step`] decides it.
#[derive(Debug)]
pub enum Step {
    /// Write `bufs[start..end]` with `writev` (or `sendmsg(MSG_MORE)` when a file run
    /// follows). Bit `i` of `file_mask` says `bufs[start + i]` is a slice of a mapped
    /// file (copied because its run is short), for the byte counters.
    Memory {
        /// One past the last slice of the run.
        end: usize,
        /// Which slices of the run are file bytes.
        file_mask: u64,
    },
    /// Send `len` bytes of `file` from `offset` with `sendfile`: the slices
    /// `bufs[start..end]`, contiguous in the file.
    File {
        /// One past the last slice of the run.
        end: usize,
        /// The file the slices map.
        file: Arc<MappedFile>,
        /// Offset in the file of the first byte.
        offset: u64,
        /// Bytes in the run.
        len: usize,
    },
}

/// Decides how to send `bufs[start..]`: the longest run starting at `start` that one
/// syscall can send. A run of slices of one registered file, contiguous in it and at
/// least `min_sendfile` bytes long, is a [`Step::File`]; anything before such a run is
/// a [`Step::Memory`] run. Pure: addresses are compared, bytes are never read.
pub fn next_step(
    bufs: &[IoSlice<'_>],
    start: usize,
    files: &[Arc<MappedFile>],
    min_sendfile: usize,
) -> Step {
    let mut i = start;
    let mut file_mask = 0u64;
    while i < bufs.len() {
        let Some((file, offset)) = find(files, &bufs[i]) else {
            i += 1;
            continue;
        };
        // Extend over the following slices of the same file that continue it.
        let mut end = i + 1;
        let mut len = bufs[i].len();
        while end < bufs.len() {
            match find(files, &bufs[end]) {
                Some((next, at))
                    if Arc::ptr_eq(next, file)
                        && at == offset + len as u64
                        && !bufs[end].is_empty() =>
                {
                    len += bufs[end].len();
                    end += 1;
                }
                _ => break,
            }
        }
        if len >= min_sendfile.max(1) {
            if i == start {
                return Step::File {
                    end,
                    file: Arc::clone(file),
                    offset,
                    len,
                };
            }
            return Step::Memory { end: i, file_mask };
        }
        for copied in i..end {
            if let Some(bit) = copied.checked_sub(start).filter(|b| *b < 64) {
                file_mask |= 1 << bit;
            }
        }
        i = end;
    }
    Step::Memory {
        end: bufs.len(),
        file_mask,
    }
}

fn find<'f>(files: &'f [Arc<MappedFile>], slice: &[u8]) -> Option<(&'f Arc<MappedFile>, u64)> {
    if slice.is_empty() {
        return None;
    }
    files.iter().find_map(|file| {
        let (_, offset) = file.file_range_of(slice)?;
        Some((file, offset))
    })
}

/// Bytes of the first `written` bytes of `bufs` that lie in slices marked in `mask`.
fn masked_bytes(bufs: &[IoSlice<'_>], mask: u64, mut written: usize) -> u64 {
    let mut total = 0;
    for (i, buf) in bufs.iter().enumerate() {
        if written == 0 {
            break;
        }
        let n = buf.len().min(written);
        if i < 64 && mask & (1 << i) != 0 {
            total += n as u64;
        }
        written -= n;
    }
    total
}

/// A TCP stream that sends registered file slices with `sendfile` (see the module docs).
pub struct ZeroCopyIo {
    stream: TcpStream,
    outbox: Arc<Outbox>,
    min_sendfile: usize,
    counters: Arc<ConnCounters>,
    /// `TCP_CORK` is set: a file is being sent, and the flush that ends the response
    /// lifts it (see [`cork`]).
    corked: bool,
}

impl ZeroCopyIo {
    /// Wraps an accepted stream; `outbox` is the one its responses' bodies send
    /// through, `min_sendfile` the shortest file run worth a `sendfile`.
    pub fn new(
        stream: TcpStream,
        outbox: Arc<Outbox>,
        min_sendfile: u64,
        counters: Arc<ConnCounters>,
    ) -> Self {
        ZeroCopyIo {
            stream,
            outbox,
            min_sendfile: usize::try_from(min_sendfile).unwrap_or(usize::MAX),
            counters,
            corked: false,
        }
    }
}

/// Sets `TCP_CORK` before the first step of a response that sends a file, as nginx's
/// `tcp_nopush on` does: until the flush that ends the response lifts it, the kernel
/// sends only full segments, so the head goes out in the same packet as the first body
/// bytes and no `sendfile` call ends in a part-filled packet.
///
/// `MSG_MORE` on the head alone is not enough under load: the `sendmsg` that queues the
/// head processes the acknowledgements that arrived meanwhile as it releases the socket,
/// and with `TCP_NODELAY` that pushes the head out on its own. Measured on loopback at
/// 1,024 connections (the load bench's mix): 23,276 packets of 100–1,500 bytes for
/// ~20,000 responses without the cork, one per GET head; nginx sent 2,900 (its `304`s).
/// The price is two `setsockopt` calls per file response, as nginx's.
fn cork(stream: &TcpStream, corked: &mut bool, on: bool) {
    if *corked == on {
        return;
    }
    *corked = on;
    if let Err(error) = rustix::net::sockopt::set_tcp_cork(stream, on) {
        // Not fatal: the bytes still go, in more packets (and `MSG_MORE` still helps).
        tracing::debug!(%error, on, "cannot set TCP_CORK");
    }
}

/// Runs `op` (a non-blocking syscall on the socket) when the socket is writable,
/// waiting for writability again whenever it reports `WouldBlock`.
fn poll_socket(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    mut op: impl FnMut() -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(stream.poll_write_ready(cx))?;
        match stream.try_io(Interest::WRITABLE, &mut op) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return Poll::Ready(other),
        }
    }
}

/// Sends memory slices; with `more`, tells the kernel that more bytes follow at once, so
/// it packs these with the next step's (the head with the first body bytes).
fn poll_send_memory(
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
    more: bool,
) -> Poll<io::Result<usize>> {
    if !more {
        return Pin::new(stream).poll_write_vectored(cx, bufs);
    }
    let socket = &*stream;
    poll_socket(socket, cx, || {
        let flags = SendFlags::MORE | SendFlags::NOSIGNAL;
        let mut control = SendAncillaryBuffer::default();
        Ok(rustix::net::sendmsg(socket, bufs, &mut control, flags)?)
    })
}

/// Sends `len` bytes of `file` from `offset`, straight from the page cache.
fn poll_send_file(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    file: &MappedFile,
    offset: u64,
    len: usize,
) -> Poll<io::Result<usize>> {
    let Some(fd) = file.file() else {
        // `next_step` only plans file steps for mappings with a file.
        return Poll::Ready(Err(io::Error::other("mapping has no file to send from")));
    };
    poll_socket(stream, cx, || {
        let mut at = offset;
        Ok(rustix::fs::sendfile(stream, fd, Some(&mut at), len)?)
    })
}

impl AsyncRead for ZeroCopyIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ZeroCopyIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let ZeroCopyIo {
            stream,
            outbox,
            min_sendfile,
            counters,
            corked,
        } = self.get_mut();
        if outbox.is_idle() {
            // No mapped file in flight (JSON, HEAD, 304): a plain writev.
            return Pin::new(stream).poll_write_vectored(cx, bufs);
        }
        let sends = &**counters;
        let mut written = 0usize;
        let mut start = 0usize;
        while start < bufs.len() {
            if bufs[start].is_empty() {
                // Nothing to send: no syscall (an empty `sendmsg` before each chunk cost
                // one per chunk when a caller passed an empty head).
                start += 1;
                continue;
            }
            let step = outbox.with_files(|files| next_step(bufs, start, files, *min_sendfile));
            let (end, wanted, result) = match &step {
                Step::Memory { end, .. } => {
                    let run = &bufs[start..*end];
                    let wanted = run.iter().map(|b| b.len()).sum::<usize>();
                    // A file run follows.
                    let more = *end < bufs.len();
                    if more {
                        cork(stream, corked, true);
                    }
                    (*end, wanted, poll_send_memory(stream, cx, run, more))
                }
                Step::File {
                    end,
                    file,
                    offset,
                    len,
                } => {
                    cork(stream, corked, true);
                    (*end, *len, poll_send_file(stream, cx, file, *offset, *len))
                }
            };
            let sent = match result {
                Poll::Ready(Ok(sent)) => sent,
                // Report what was written so far; the error or the wait comes back on
                // hyper's next call, with the rest.
                Poll::Pending | Poll::Ready(Err(_)) if written > 0 => {
                    return Poll::Ready(Ok(written));
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            };
            match &step {
                Step::Memory { file_mask, .. } => {
                    if *file_mask != 0 {
                        let copied = masked_bytes(&bufs[start..end], *file_mask, sent);
                        sends.copied_file_bytes.inc_by(copied);
                    }
                }
                Step::File { .. } if sent == 0 && wanted > 0 => {
                    if written > 0 {
                        return Poll::Ready(Ok(written));
                    }
                    sends.short_file_sends.inc();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file ended before the response did (truncated while being sent)",
                    )));
                }
                Step::File { .. } => {
                    sends.sendfile_calls.inc();
                    sends.sendfile_bytes.inc_by(sent as u64);
                }
            }
            written += sent;
            if sent < wanted {
                break;
            }
            start = end;
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        // hyper queues body chunks (instead of copying them into its buffer) only for a
        // transport that writes vectored: the chunks must reach us as they are.
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.stream).poll_flush(cx))?;
        // The response's bytes are all queued: lifting the cork sends its last,
        // part-filled packet now.
        cork(&this.stream, &mut this.corked, false);
        // hyper flushes its socket only once its own buffer is empty: every byte of the
        // bodies that finished is on the wire, so their guards can go.
        this.outbox.flushed();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl SendProgress for ZeroCopyIo {
    fn bytes_acked(&self) -> Option<u64> {
        tcp_progress::bytes_acked(&self.stream)
    }

    fn stalled(&self) {
        self.outbox.stalled();
    }

    fn resumed(&self) -> bool {
        self.outbox.resumed()
    }

    fn poll_evicted(&self, cx: &mut Context<'_>) -> bool {
        self.outbox.poll_evicted(cx)
    }

    fn abort_on_close(&self) {
        // Takes effect when hyper drops the connection, right after the failed write.
        if let Err(error) = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO)) {
            tracing::debug!(%error, "cannot set SO_LINGER 0 on a dropped connection");
        }
    }
}

impl Drop for ZeroCopyIo {
    fn drop(&mut self) {
        // The connection is gone: nothing it held is waiting to be sent any more.
        self.outbox.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(dir: &std::path::Path, name: &str, len: usize) -> Arc<MappedFile> {
        let path = dir.join(name);
        std::fs::write(&path, vec![3u8; len]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        Arc::new(MappedFile::map(file, &meta).unwrap())
    }

    fn memory_end(step: &Step) -> (usize, u64) {
        match step {
            Step::Memory { end, file_mask } => (*end, *file_mask),
            Step::File { .. } => panic!("expected a memory step, got {step:?}"),
        }
    }

    fn file_run(step: &Step) -> (usize, u64, usize) {
        match step {
            Step::File {
                end, offset, len, ..
            } => (*end, *offset, *len),
            Step::Memory { .. } => panic!("expected a file step, got {step:?}"),
        }
    }

    #[test]
    fn the_head_is_memory_and_a_long_file_run_is_sendfile() {
        let dir = tempfile::tempdir().unwrap();
        let gif = mapped(dir.path(), "a.gif", 100_000);
        let files = [Arc::clone(&gif)];
        let head = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        let bufs = [IoSlice::new(&head), IoSlice::new(&gif.bytes[..])];
        assert_eq!(memory_end(&next_step(&bufs, 0, &files, 16_384)), (1, 0));
        assert_eq!(
            file_run(&next_step(&bufs, 1, &files, 16_384)),
            (2, 0, 100_000)
        );
    }

    #[test]
    fn contiguous_chunks_of_one_file_make_one_run() {
        let dir = tempfile::tempdir().unwrap();
        let gif = mapped(dir.path(), "a.gif", 600_000);
        let files = [Arc::clone(&gif)];
        // hyper advanced into the first chunk after a partial write.
        let bufs = [
            IoSlice::new(&gif.bytes[10_000..262_144]),
            IoSlice::new(&gif.bytes[262_144..524_288]),
            IoSlice::new(&gif.bytes[524_288..]),
        ];
        assert_eq!(
            file_run(&next_step(&bufs, 0, &files, 16_384)),
            (3, 10_000, 590_000)
        );
    }

    #[test]
    fn multipart_framing_splits_the_runs() {
        let dir = tempfile::tempdir().unwrap();
        let gif = mapped(dir.path(), "a.gif", 300_000);
        let files = [Arc::clone(&gif)];
        let (head, part, tail) = (b"head".to_vec(), b"--b\r\n\r\n".to_vec(), b"--b--".to_vec());
        let bufs = [
            IoSlice::new(&head),
            IoSlice::new(&part),
            IoSlice::new(&gif.bytes[0..50_000]),
            IoSlice::new(&part),
            IoSlice::new(&gif.bytes[100_000..200_000]),
            IoSlice::new(&tail),
        ];
        assert_eq!(memory_end(&next_step(&bufs, 0, &files, 16_384)), (2, 0));
        assert_eq!(
            file_run(&next_step(&bufs, 2, &files, 16_384)),
            (3, 0, 50_000)
        );
        assert_eq!(memory_end(&next_step(&bufs, 3, &files, 16_384)), (4, 0));
        assert_eq!(
            file_run(&next_step(&bufs, 4, &files, 16_384)),
            (5, 100_000, 100_000)
        );
        assert_eq!(memory_end(&next_step(&bufs, 5, &files, 16_384)), (6, 0));
    }

    #[test]
    fn short_runs_unknown_memory_and_fileless_bytes_are_copied() {
        let dir = tempfile::tempdir().unwrap();
        let gif = mapped(dir.path(), "a.gif", 10_000);
        let other = mapped(dir.path(), "b.gif", 100_000);
        let in_memory = Arc::new(MappedFile::in_memory(
            bytes::Bytes::from(vec![1u8; 50_000]),
            std::time::SystemTime::now(),
        ));
        let files = [Arc::clone(&gif), Arc::clone(&in_memory)];
        let head = b"head".to_vec();
        let bufs = [
            IoSlice::new(&head),
            IoSlice::new(&gif.bytes[..]),
            IoSlice::new(&in_memory.bytes[..]),
            // Mapped, but not registered for this connection.
            IoSlice::new(&other.bytes[..]),
        ];
        // Only the registered file's short run counts as copied file bytes.
        assert_eq!(memory_end(&next_step(&bufs, 0, &files, 16_384)), (4, 0b10));
        assert_eq!(masked_bytes(&bufs, 0b10, 4 + 6_000), 6_000);
        assert_eq!(masked_bytes(&bufs, 0b10, 4 + 10_000 + 50_000), 10_000);
        // With no threshold, the same file is sent from the file.
        assert_eq!(file_run(&next_step(&bufs, 1, &files, 0)), (2, 0, 10_000));
    }
}
