//! Per-connection timeouts enforced at the socket, where they can see every byte:
//! a request-head deadline, a keep-alive idle deadline and a write-stall deadline.
//!
//! Why not hyper's own `header_read_timeout`: hyper arms it whenever a connection waits
//! for a request head, so it also closes idle keep-alive connections, and it cannot tell
//! "idle" from "trickling a header". Here the two are separate, and a connection with a
//! request in flight (its handler running or its body streaming) is never read-timed-out;
//! only the write-stall deadline applies to it.

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
    /// The socket accepts no bytes while a response is being written.
    pub write_stall: Duration,
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
/// limiter permit). The timers are boxed so the wrapper stays `Unpin`, as hyper needs.
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
    write_armed: bool,
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
            write_armed: false,
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

impl<T: AsyncWrite + Unpin> TimedIo<T> {
    /// Arms the stall timer when the socket stops taking bytes, disarms it when it
    /// takes some, and fails the write when the timer fires.
    fn on_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match result {
            Poll::Ready(r) => {
                self.write_armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !self.write_armed {
                    self.write_armed = true;
                    let deadline = Instant::now() + self.timeouts.write_stall;
                    self.write_timer.as_mut().reset(deadline);
                }
                match self.write_timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.counters.stall_timeouts.inc();
                        Poll::Ready(Err(timed_out("client stopped reading")))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.on_write(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.on_write(cx, result)
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
        this.on_write(cx, result)
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
        }
    }

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
