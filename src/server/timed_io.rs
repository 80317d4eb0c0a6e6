//! Per-connection timeouts enforced at the socket, where they can see every byte:
//! a request-head deadline, a keep-alive idle deadline and a write-stall deadline.
//!
//! Why not hyper's own `header_read_timeout`: hyper arms it whenever a connection waits
//! for a request head, so it also closes idle keep-alive connections, and it cannot tell
//! "idle" from "trickling a header". Here the two are separate, and a connection with a
//! request in flight (its handler running or its body streaming) is never read-timed-out;
//! only the write-stall deadline applies to it.
//!
//! # "Stalled" means no progress
//! A write that waits on a full socket is not a stall in itself: with the send buffer
//! the kernel autotunes (up to 4 MiB), a socket reports writable only once a good part of
//! it has drained, which for a client reading steadily at 128 KiB/s takes seconds. So the
//! write-stall deadline runs from the last *progress*, measured as bytes the peer
//! acknowledged (`tcp_progress`, read through [`SendProgress::bytes_acked`]), and a
//! write that waits checks that progress four times per `stalled_after` (once per
//! `stalled_after` once it is reported stalled):
//!
//! - the check costs one `getsockopt` when a write starts waiting and one per check
//!   while it waits; a write that completes costs nothing more than before (no syscall
//!   per write, no timer per write: the timer is re-armed only while a write waits);
//! - why four: a check sees *that* the peer acknowledged bytes since the one before,
//!   not when, so progress counts from the check that saw it. A client that stops
//!   reading has its last bytes acknowledged just after the write starts waiting; with
//!   one check per `stalled_after` it would be reported stalled only after twice that
//!   (1 s by default, as long as a queued request waits before it is shed), with four
//!   after at most 1.25 times;
//! - progress since the last check moves the deadline (`write_stall` after it): a
//!   client that keeps accepting bytes, however slowly, is never cut off;
//! - no progress for `stalled_after` tells the socket the send is stalled
//!   ([`SendProgress::stalled`]): the response's media slot leaves the in-flight bound
//!   for the bounded pool of stalled bodies (`crate::admission::StalledPool`), and comes back on the
//!   next progress ([`SendProgress::resumed`]). A stalled connection also watches for
//!   being dropped from that pool ([`SendProgress::poll_evicted`]);
//! - no progress for `write_stall` fails the write with `TimedOut`, as before.
//!
//! # A connection dropped for stalling is reset, not closed
//! Both drops (the write-stall timeout, and the stalled pool making room) make the
//! socket's close abortive first ([`SendProgress::abort_on_close`]: `SO_LINGER` with a
//! zero timeout, as nginx's `reset_timedout_connection`). A graceful close of a socket
//! whose peer reads nothing leaves it in FIN-WAIT-1 holding its whole send queue — up to
//! the autotuned 4 MiB — for as long as the peer keeps its end open: 100 non-readers of a
//! 20 MB file held 280 MB of kernel memory after the drop. Reset, the queue is freed
//! when the descriptor closes and the client sees `ECONNRESET`. Normal closes (a
//! response finished, a keep-alive or header timeout with nothing queued) stay graceful.
//!
//! Where the transport cannot tell acknowledged bytes (`None`), only a write that
//! completes counts as progress: the old rule.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::state::ConnCounters;

/// The three deadlines, copied from the configuration once per server.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From the first byte of a request head (or from accept, for the first request)
    /// to the complete head.
    pub header_read: Duration,
    /// Nothing in flight and nothing received.
    pub keep_alive: Duration,
    /// The peer accepts no bytes while a response is being written: dropped.
    pub write_stall: Duration,
    /// The peer accepted no bytes for this long: the send is stalled (its slot leaves the
    /// in-flight bound). Also the interval between progress checks of a waiting write.
    pub stalled_after: Duration,
}

/// What [`TimedIo`] asks of the socket under it about a write that waits (see the module
/// docs). The defaults describe a transport that can tell nothing: no progress counter,
/// no slots to move, never evicted.
pub trait SendProgress {
    /// A counter that grows as the peer accepts bytes (TCP: bytes acknowledged), or
    /// `None` when the transport cannot tell.
    fn bytes_acked(&self) -> Option<u64> {
        None
    }

    /// The send has made no progress for `stalled_after` (called once per check while
    /// it lasts; must be idempotent).
    fn stalled(&self) {}

    /// The send made progress after [`SendProgress::stalled`]. True when nothing of the
    /// connection is left out of its bound.
    fn resumed(&self) -> bool {
        true
    }

    /// True once the connection must close (dropped from the pool of stalled bodies);
    /// otherwise arranges for `cx` to be woken when it must.
    fn poll_evicted(&self, _cx: &mut Context<'_>) -> bool {
        false
    }

    /// The connection is being dropped for stalling (the write-stall timeout, or the
    /// stalled pool made room): make its close abortive, so the kernel frees its send
    /// queue at once instead of keeping it for a client that reads nothing.
    fn abort_on_close(&self) {}
}

/// A write waiting on the socket, and the progress seen since it started waiting.
#[derive(Debug, Clone, Copy)]
struct WaitingWrite {
    /// When the peer last accepted bytes (or the write started waiting).
    last_progress: Instant,
    /// The acknowledged-bytes counter at `last_progress`.
    acked: Option<u64>,
}

/// What the connection's service tells its socket: how many requests are in flight, and
/// how many have finished (so the socket knows when an idle period starts).
#[derive(Debug, Default)]
pub struct ConnActivity {
    in_flight: AtomicUsize,
    finished: AtomicU64,
    // The reader parked while a request was in flight: woken when it ends so the idle
    // deadline gets armed even if the client sends nothing more.
    reader: AtomicWaker,
}

impl ConnActivity {
    /// Marks a request as in flight until the returned token is dropped. The router
    /// attaches the token to the response body, so "in flight" lasts until the last
    /// byte is written or the body is abandoned.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    fn finished(&self) -> u64 {
        self.finished.load(Ordering::Acquire)
    }
}

/// A request in flight on one connection; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight(Arc<ConnActivity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.reader.wake();
    }
}

/// A socket wrapper that fails reads and writes with `TimedOut` when a deadline passes,
/// which makes hyper close the connection and drop the response body (and so its
/// gate permit). The timers are boxed so the wrapper stays `Unpin`, as hyper needs.
pub struct TimedIo<T> {
    io: T,
    activity: Arc<ConnActivity>,
    timeouts: Timeouts,
    counters: Arc<ConnCounters>,
    read_timer: Pin<Box<Sleep>>,
    // `finished` count when the current idle period started.
    seen_finished: u64,
    // Start of the current idle period, and of the request head once a byte of it arrived.
    idle_since: Instant,
    head_started: Option<Instant>,
    write_timer: Pin<Box<Sleep>>,
    // Some while a write waits on the socket.
    waiting: Option<WaitingWrite>,
    // The send was reported stalled and its slots are not all back in their bound.
    stalled: bool,
}

impl<T> TimedIo<T> {
    /// Wraps a freshly accepted socket. The first request must arrive within the
    /// header-read timeout: a connection opened and never used is a slowloris.
    pub fn new(
        io: T,
        activity: Arc<ConnActivity>,
        timeouts: Timeouts,
        counters: Arc<ConnCounters>,
    ) -> Self {
        let now = Instant::now();
        TimedIo {
            io,
            activity,
            timeouts,
            counters,
            read_timer: Box::pin(tokio::time::sleep_until(now + timeouts.header_read)),
            seen_finished: 0,
            idle_since: now,
            head_started: Some(now),
            write_timer: Box::pin(tokio::time::sleep_until(now + timeouts.write_stall)),
            waiting: None,
            stalled: false,
        }
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before
                    && !this.activity.busy()
                    && this.head_started.is_none()
                {
                    this.head_started = Some(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.activity.busy() {
                    this.activity.reader.register(cx.waker());
                    // Re-check: the request may have ended between the load and the
                    // registration, and then nobody would wake us.
                    if this.activity.busy() {
                        return Poll::Pending;
                    }
                }
                let finished = this.activity.finished();
                if finished != this.seen_finished {
                    // A response completed since we last looked: a new idle period.
                    this.seen_finished = finished;
                    this.idle_since = Instant::now();
                    this.head_started = None;
                }
                let (deadline, what, counter) = match this.head_started {
                    Some(start) => (
                        start + this.timeouts.header_read,
                        "request head timed out",
                        &this.counters.header_timeouts,
                    ),
                    None => (
                        this.idle_since + this.timeouts.keep_alive,
                        "keep-alive idle timeout",
                        &this.counters.idle_timeouts,
                    ),
                };
                if this.read_timer.deadline() != deadline {
                    this.read_timer.as_mut().reset(deadline);
                }
                match this.read_timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        counter.inc();
                        Poll::Ready(Err(timed_out(what)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + SendProgress + Unpin> TimedIo<T> {
    /// Time between progress checks of a waiting write.
    fn check_every(&self) -> Duration {
        let every = if self.stalled {
            // Out of the bound already: only resuming and the write-stall deadline are
            // left to see, and a write that completes resumes without a check.
            self.timeouts.stalled_after
        } else {
            self.timeouts.stalled_after / 4
        };
        every
            .min(self.timeouts.write_stall)
            .max(Duration::from_millis(1))
    }

    /// Passes a completed write through (it ends any wait; `took_bytes` says the socket
    /// took some, which brings stalled slots back), or watches a waiting one.
    fn on_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<R>>,
        took_bytes: bool,
    ) -> Poll<io::Result<R>> {
        match result {
            Poll::Ready(r) => {
                self.waiting = None;
                if self.stalled && took_bytes {
                    self.stalled = !self.io.resumed();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.watch_waiting_write(cx),
        }
    }

    /// A write waits on the socket: check the peer's progress every `check_every`, report
    /// a stall, and fail the write when nothing moved for `write_stall` or the stalled
    /// pool dropped the connection.
    fn watch_waiting_write<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let mut waiting = match self.waiting {
            Some(waiting) => waiting,
            None => {
                let now = Instant::now();
                let started = WaitingWrite {
                    last_progress: now,
                    acked: self.io.bytes_acked(),
                };
                let first_check = now + self.check_every();
                self.write_timer.as_mut().reset(first_check);
                started
            }
        };
        let result = loop {
            if self.stalled && self.io.poll_evicted(cx) {
                self.io.abort_on_close();
                break Poll::Ready(Err(timed_out(
                    "client stalled longest: dropped to make room in the stalled pool",
                )));
            }
            if self.write_timer.as_mut().poll(cx).is_pending() {
                break Poll::Pending;
            }
            // A check is due.
            let now = Instant::now();
            let acked = self.io.bytes_acked();
            if let (Some(before), Some(after)) = (waiting.acked, acked)
                && after > before
            {
                waiting.last_progress = now;
                if self.stalled {
                    self.stalled = !self.io.resumed();
                }
            }
            waiting.acked = acked.or(waiting.acked);
            let idle = now.saturating_duration_since(waiting.last_progress);
            if idle >= self.timeouts.write_stall {
                self.counters.stall_timeouts.inc();
                self.io.abort_on_close();
                break Poll::Ready(Err(timed_out("client stopped reading")));
            }
            if idle >= self.timeouts.stalled_after {
                self.io.stalled();
                self.stalled = true;
            }
            let next =
                (now + self.check_every()).min(waiting.last_progress + self.timeouts.write_stall);
            self.write_timer.as_mut().reset(next);
        };
        self.waiting = Some(waiting);
        result
    }
}

impl<T: AsyncWrite + SendProgress + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        let took = matches!(result, Poll::Ready(Ok(n)) if n > 0);
        this.on_write(cx, result, took)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        let took = matches!(result, Poll::Ready(Ok(n)) if n > 0);
        this.on_write(cx, result, took)
    }

    fn is_write_vectored(&self) -> bool {
        // Must be forwarded: hyper only queues body chunks without copying them when the
        // transport supports vectored writes, and copying would read mapped pages in
        // user space (SIGBUS on a truncated file, SPEC §2).
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_flush(cx);
        this.on_write(cx, result, false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn timeouts() -> Timeouts {
        Timeouts {
            header_read: Duration::from_secs(10),
            keep_alive: Duration::from_secs(30),
            write_stall: Duration::from_secs(5),
            stalled_after: Duration::from_secs(1),
        }
    }

    // The duplex pipe of the tests tells no progress: the old rule applies to it.
    impl SendProgress for tokio::io::DuplexStream {}

    #[tokio::test(start_paused = true)]
    async fn silent_connection_times_out_after_header_timeout() {
        let (client, server) = tokio::io::duplex(64);
        let mut io = TimedIo::new(server, Arc::default(), timeouts(), Arc::default());
        let started = Instant::now();
        let mut buf = [0u8; 8];
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_after_response_uses_keep_alive_timeout() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Arc::new(ConnActivity::default());
        let mut io = TimedIo::new(server, activity.clone(), timeouts(), Arc::default());
        client.write_all(b"GET").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        // The head completes, a request runs and finishes.
        drop(activity.begin());
        let started = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connection_is_not_read_timed_out() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Arc::new(ConnActivity::default());
        let mut io = TimedIo::new(server, activity.clone(), timeouts(), Arc::default());
        let token = activity.begin();
        let read = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            io.read(&mut buf).await
        });
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(
            !read.is_finished(),
            "a request in flight keeps the read side open"
        );
        client.write_all(b"x").await.unwrap();
        assert_eq!(read.await.unwrap().unwrap(), 1);
        drop(token);
    }

    #[tokio::test(start_paused = true)]
    async fn reader_parked_while_busy_arms_idle_deadline_when_request_ends() {
        let (_client, server) = tokio::io::duplex(64);
        let activity = Arc::new(ConnActivity::default());
        let mut io = TimedIo::new(server, activity.clone(), timeouts(), Arc::default());
        let token = activity.begin();
        let read = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            io.read(&mut buf).await
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        let ended = Instant::now();
        drop(token);
        let err = read.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(ended.elapsed(), Duration::from_secs(30));
    }

    /// A socket that never takes a byte but whose peer acknowledges what the test says
    /// (as a kernel's send queue drains to a slow reader), recording what it is told.
    #[derive(Default, Clone)]
    struct Draining {
        acked: Arc<std::sync::atomic::AtomicU64>,
        stalls: Arc<std::sync::atomic::AtomicUsize>,
        resumes: Arc<std::sync::atomic::AtomicUsize>,
        evicted: Arc<std::sync::atomic::AtomicBool>,
        evict_waker: Arc<futures_util::task::AtomicWaker>,
        aborts: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Draining {
        fn acked_more(&self, n: u64) {
            self.acked
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        fn stalls(&self) -> usize {
            self.stalls.load(std::sync::atomic::Ordering::Relaxed)
        }
        fn resumes(&self) -> usize {
            self.resumes.load(std::sync::atomic::Ordering::Relaxed)
        }
        fn aborts(&self) -> usize {
            self.aborts.load(std::sync::atomic::Ordering::Relaxed)
        }
        fn evict(&self) {
            self.evicted
                .store(true, std::sync::atomic::Ordering::Relaxed);
            self.evict_waker.wake();
        }
    }

    impl AsyncWrite for Draining {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncRead for Draining {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl SendProgress for Draining {
        fn bytes_acked(&self) -> Option<u64> {
            Some(self.acked.load(std::sync::atomic::Ordering::Relaxed))
        }
        fn stalled(&self) {
            self.stalls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn resumed(&self) -> bool {
            self.resumes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            true
        }
        fn poll_evicted(&self, cx: &mut Context<'_>) -> bool {
            self.evict_waker.register(cx.waker());
            self.evicted.load(std::sync::atomic::Ordering::Relaxed)
        }
        fn abort_on_close(&self) {
            self.aborts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn busy_writer(socket: &Draining) -> TimedIo<Draining> {
        let activity = Arc::new(ConnActivity::default());
        // A request in flight for the whole test: only the write side's rules apply.
        std::mem::forget(activity.begin());
        TimedIo::new(socket.clone(), activity, timeouts(), Arc::default())
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_waits_while_the_peer_acknowledges_bytes_is_never_timed_out() {
        let socket = Draining::default();
        let mut io = busy_writer(&socket);
        let write = tokio::spawn(async move { io.write_all(&[0u8; 16]).await });
        // The socket stays unwritable for a minute (twelve write-stall timeouts) while the
        // peer acknowledges 1 KB every 400 ms: steady progress, never a stall.
        for _ in 0..150 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            socket.acked_more(1024);
        }
        assert!(!write.is_finished(), "not cut off while making progress");
        assert_eq!(socket.stalls(), 0, "never reported stalled");
        assert_eq!(socket.aborts(), 0, "nothing to reset yet");
        // The peer stops acknowledging: stalled after `stalled_after`, dropped after
        // `write_stall`, both counted from the last progress.
        let stopped = Instant::now();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(socket.stalls() >= 1, "reported stalled");
        let err = write.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let took = stopped.elapsed();
        assert!(
            took >= Duration::from_millis(4600) && took <= Duration::from_millis(5400),
            "write-stall timeout from the last progress ({took:?})"
        );
        assert_eq!(
            socket.aborts(),
            1,
            "dropped for stalling: reset, not closed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_send_is_resumed_by_progress_and_fails_at_once_when_evicted() {
        let socket = Draining::default();
        let mut io = busy_writer(&socket);
        let write = tokio::spawn(async move { io.write_all(&[0u8; 16]).await });
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            socket.stalls() >= 1,
            "stalled after a second without progress"
        );
        assert_eq!(socket.resumes(), 0);
        socket.acked_more(1);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(socket.resumes(), 1, "progress resumes the send");
        let stalls = socket.stalls();
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert!(socket.stalls() > stalls, "stalled again");
        // The stalled pool drops this connection: the write fails without waiting for
        // the write-stall timeout.
        assert_eq!(socket.aborts(), 0, "stalled is not dropped");
        let evicted = Instant::now();
        socket.evict();
        let err = write.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(evicted.elapsed() < Duration::from_millis(10), "at once");
        assert_eq!(
            socket.aborts(),
            1,
            "dropped from the pool: reset, not closed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_writer_times_out() {
        let (_client, server) = tokio::io::duplex(16);
        let mut io = TimedIo::new(server, Arc::default(), timeouts(), Arc::default());
        let started = Instant::now();
        let err = io.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
