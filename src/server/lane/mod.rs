//! The fast lane (`--fast-lane on`): bodiless `GET`/`HEAD` requests of the file routes
//! answered without hyper's HTTP/1 dispatcher; everything else handed to hyper.
//!
//! # Why
//! Nearly every request a front proxy sends here is a bodiless `GET` or `HEAD` of a file.
//! For those, hyper's dispatcher, encoder and buffers cost more than the request's own
//! work (issue 25: ~18,000 of ~22,700 instructions per GIF request), and hyper keeps two
//! 8 KiB buffers per connection at their high-water size for as long as the connection
//! lives. The lane reads a head into a buffer that starts at 1 KiB, grows only up to
//! `--max-request-head`, and is released between requests: an idle keep-alive connection
//! holds no buffer at all (reads go through one scratch buffer per thread and only what
//! arrived is kept).
//!
//! # What is shared with hyper's lane, and what is not
//! One implementation of everything but the HTTP/1 framing: the request goes through
//! [`super::answer`] (`App::respond`: request id, head checks, CORS, routing, admission,
//! counters; the body's in-flight token and the connection's outbox) exactly as hyper's
//! service does (the route is the one the lane found in the same table, not looked up
//! again), and the bytes go through the same socket stack (`TimedIo` over
//! `ZeroCopyIo`: head and idle timeouts, the stall rules and the stalled pool, `sendfile`,
//! guards released at the flush). The lane writes the head itself ([`encode`], hyper's
//! rules) and the body's chunks as hyper would: the head and the first chunk in one
//! vectored write.
//!
//! # Conservative by construction
//! The lane takes only what [`head::parse`] accepts, on a file route; anything else — a
//! body, `Expect`, `Upgrade`, another route, a head it finds unusual, a head still
//! incomplete at `--max-request-head` — goes to hyper *with the bytes already read*
//! ([`rewind::Rewind`]), and hyper serves the connection from then on, refusals (`400`,
//! `431`) included. Pipelined requests are answered in order: the lane finishes each
//! response before it looks at the next head, and hands over only between responses.
//!
//! # Where the two could differ, and which is right
//! - A client that closes its sending side while a request is in flight: hyper drops the
//!   request (its `mid_message_detect_eof`); the lane does the same, as long as no
//!   pipelined byte is buffered (hyper's condition too).
//! - Graceful shutdown: an idle connection closes at once; one with a request under way
//!   finishes it with `connection: close` (hyper's `graceful_shutdown`).
//! - `Date` comes from a per-thread cache of the current second, hyper's from its own:
//!   the two may name different seconds at a second's edge, never a different format.

mod encode;
mod head;
mod rewind;

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::Empty;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use super::timed_io::{ConnActivity, TimedIo};
use super::zero_copy::ZeroCopyIo;
use crate::app::{App, FileFields};
use crate::body::Body;
use crate::http::file_head::FileHead;
use crate::outbox::Outbox;
use crate::routes::{ROUTES, Route, RouteFamily, Router};
use encode::{Asked, Framing};
use head::Parsed;
use rewind::Rewind;

/// The socket stack under both lanes.
pub(super) type Socket = TimedIo<ZeroCopyIo>;

/// First size of a connection's head buffer: an ordinary proxied GIF request's head
/// (~300–700 bytes) fits, as in nginx's `client_header_buffer_size 1k`.
const FIRST_BUFFER: usize = 1024;

/// Bytes one read may take: the thread's scratch buffer, copied into the connection's
/// own buffer only as far as it was filled.
const SCRATCH: usize = 16 * 1024;

thread_local! {
    static SCRATCH_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Why a lane connection ended badly (logged at `debug`, as hyper's errors are).
#[derive(Debug, thiserror::Error)]
pub(super) enum LaneError {
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("the client closed the connection while a request was in flight")]
    ClosedMidRequest,
    #[error("after the hand-over to hyper: {0}")]
    Hyper(#[from] hyper::Error),
}

/// What every lane connection of a server shares.
pub(super) struct Lane {
    router: Router,
    max_head: usize,
    builder: hyper::server::conn::http1::Builder,
}

/// The routes the lane answers: those that serve files' bytes (GIFs, stills, variants,
/// `/api/media/<id>`, generated audio), the ones behind the media limiter. The ops,
/// relay and resolver routes go to hyper.
pub(crate) fn is_file_route(route: &Route) -> bool {
    matches!(
        route.family,
        RouteFamily::Media | RouteFamily::ApiMedia | RouteFamily::Generate
    )
}

impl Lane {
    /// `builder` is hyper's, for the connections handed over. Fails as `App::new` does
    /// when the route table has a conflict.
    pub(super) fn new(
        max_request_head: u64,
        builder: hyper::server::conn::http1::Builder,
    ) -> Result<Lane, String> {
        Ok(Lane {
            router: Router::new(ROUTES)?,
            max_head: usize::try_from(max_request_head).unwrap_or(usize::MAX),
            builder,
        })
    }

    /// The route of `path` when the lane takes it (a file route).
    fn route_of(&self, path: &str) -> Option<&'static Route> {
        self.router.at(path).filter(|route| is_file_route(route))
    }
}

/// One connection's handles on the app, as hyper's service holds them.
pub(super) struct Conn {
    pub(super) app: Arc<App>,
    pub(super) activity: Arc<ConnActivity>,
    pub(super) outbox: Arc<Outbox>,
    /// The client's address, for the access log.
    pub(super) peer: std::net::IpAddr,
}

/// Reads what the socket has into `buf` (through the thread's scratch buffer, so an
/// empty `buf` holds no memory while it waits). `Ok(0)`: end of stream.
fn poll_read_more(
    io: &mut Socket,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    SCRATCH_BUFFER.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut read = ReadBuf::new(&mut scratch[..]);
        ready!(Pin::new(io).poll_read(cx, &mut read))?;
        let filled = read.filled();
        if !filled.is_empty() {
            if buf.capacity() - buf.len() < filled.len() {
                buf.reserve(filled.len().max(FIRST_BUFFER).max(buf.len()));
            }
            buf.extend_from_slice(filled);
        }
        Poll::Ready(Ok(filled.len()))
    })
}

/// While a request is in flight: hyper's check for a client that went away. With
/// nothing buffered, a read that ends the stream ends the request; bytes that arrive
/// are kept (a pipelined request) and end the watch, as in hyper.
fn poll_gone(io: &mut Socket, buf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<LaneError> {
    if !buf.is_empty() {
        return Poll::Pending;
    }
    match poll_read_more(io, buf, cx) {
        Poll::Ready(Ok(0)) => Poll::Ready(LaneError::ClosedMidRequest),
        Poll::Ready(Ok(_)) | Poll::Pending => Poll::Pending,
        Poll::Ready(Err(error)) => Poll::Ready(error.into()),
    }
}

/// Serves one connection until it closes: the lane's requests here, the rest by hyper.
pub(super) async fn serve(
    lane: Arc<Lane>,
    mut io: Socket,
    conn: Conn,
    stop: watch::Receiver<bool>,
) -> Result<(), LaneError> {
    let mut buf = BytesMut::new();
    // One watch on the stop signal for the connection's whole life, polled at each idle
    // wait: a fresh one per wait joined and left the channel's waiter list every time,
    // ~400 instructions per request under callgrind. Polled only while idle and never
    // after it resolves (the connection ends then); a stop that comes while a request is
    // under way wakes the task once, and the next idle wait sees it.
    let mut stopped = pin!(stopping(stop.clone()));
    loop {
        // A complete head the lane takes, or the connection's end or hand-over.
        let mut parse_from = 0;
        let (request, asked, route) = loop {
            if buf.len() > parse_from {
                // A head can only have completed if a line ended in the new bytes.
                let new_line = buf[parse_from..].contains(&b'\n') || parse_from == 0;
                parse_from = buf.len();
                // No await while the parse result lives: it is large, and would be kept
                // in this connection's future for its whole life.
                let hand_over = match new_line.then(|| next_request(&lane, &mut buf, &stop)) {
                    Some(Next::Take(request, asked, route)) => break (request, asked, route),
                    Some(Next::HandOver) => true,
                    // hyper answers `431` from here.
                    Some(Next::Wait) | None => buf.len() >= lane.max_head,
                };
                if hand_over {
                    return Box::pin(hand_off(lane, io, buf.freeze(), conn, stop)).await;
                }
            }
            let read = if buf.is_empty() {
                // Idle between requests: shutting down closes the connection here.
                if *stop.borrow() {
                    return Ok(());
                }
                tokio::select! {
                    read = poll_fn(|cx| poll_read_more(&mut io, &mut buf, cx)) => read?,
                    () = stopped.as_mut() => return Ok(()),
                }
            } else {
                poll_fn(|cx| poll_read_more(&mut io, &mut buf, cx)).await?
            };
            if read == 0 {
                // The client is done (an unfinished head gets no answer, as from hyper).
                return Ok(());
            }
        };

        conn.app.state().connections.lane_requests.inc();
        // Boxed, and only while a request is under way: the request's and the response's
        // futures are ~4 KB, and a connection's own future is what it keeps for its whole
        // life (a release build kept 8,112 bytes inline per connection, idle or not).
        // The box costs one allocation and one copy per request (callgrind figures:
        // docs/benchmarks/fast-lane.md); it buys an idle connection that holds ~1 KB.
        let framing = Box::pin(exchange(&mut io, &mut buf, &conn, route, request, asked)).await?;
        if framing.close {
            let _ = io.shutdown().await;
            return Ok(());
        }
        if buf.is_empty() {
            // Nothing pipelined: the buffer goes back until the next request.
            buf = BytesMut::new();
        }
    }
}

/// One request's exchange: the app answers it (while the client is watched for going
/// away, as hyper does), then the response is written and flushed.
async fn exchange(
    io: &mut Socket,
    buf: &mut BytesMut,
    conn: &Conn,
    route: &'static Route,
    request: Request<Empty<Bytes>>,
    asked: Asked,
) -> Result<Framing, LaneError> {
    let in_flight = conn.activity.begin();
    let response = {
        // The route the lane found: the app does not look it up again.
        let mut answering = pin!(super::answer(
            Arc::clone(&conn.app),
            Some(route),
            FileFields::Rendered,
            in_flight,
            Arc::clone(&conn.outbox),
            conn.peer,
            request,
        ));
        poll_fn(|cx| match answering.as_mut().poll(cx) {
            Poll::Ready(response) => Poll::Ready(Ok(response)),
            Poll::Pending => poll_gone(io, buf, cx).map(Err),
        })
        .await?
    };
    send(io, buf, asked, response).await
}

/// What the buffered bytes hold, as far as the lane is concerned. Consumed where it is
/// made (the request moves into the request's future), so its size stays off the
/// connection.
#[allow(clippy::large_enum_variant)]
enum Next {
    /// A request the lane answers, how it was asked, and its route.
    Take(Request<Empty<Bytes>>, Asked, &'static Route),
    /// hyper's: hand the connection over with everything buffered.
    HandOver,
    /// The head is not complete.
    Wait,
}

/// Parses the head at the start of `buf` and, when the lane takes it, splits it off and
/// builds its request. A plain function, so the parse's large state never lives in the
/// connection's future.
fn next_request(lane: &Lane, buf: &mut BytesMut, stop: &watch::Receiver<bool>) -> Next {
    let taken = match head::parse(buf, lane.max_head, |path| lane.route_of(path)) {
        Parsed::Take(taken) => taken,
        Parsed::HandOff(why) => {
            tracing::trace!(why, "handing the connection to hyper");
            return Next::HandOver;
        }
        Parsed::Partial => return Next::Wait,
    };
    let asked = Asked {
        is_head: taken.request.method() == http::Method::HEAD,
        version: taken.request.version(),
        // Shutting down: this response is the connection's last.
        keep_alive: taken.keep_alive && !*stop.borrow(),
    };
    Next::Take(taken.request, asked, taken.route)
}

/// Most body chunks one write hands the socket.
const GATHER_CHUNKS: usize = 8;

/// Most body bytes one write hands the socket: a file sent in one `sendfile` where it
/// fits, as nginx's `sendfile_max_chunk` (2 MiB) does, rather than one call (and one
/// push of a part-filled packet) per chunk the body yields. Also the most that a
/// response can count as sent ahead of the socket (the body counts what it yields), as
/// hyper's write buffer (~400 KiB, 16 buffers) allows for its lane.
const GATHER_BYTES: usize = 1 << 20;

/// The body chunks gathered for the next write, in order: `chunks[first..end]`.
#[derive(Default)]
struct Gathered {
    chunks: [Bytes; GATHER_CHUNKS],
    first: usize,
    end: usize,
    bytes: usize,
}

impl Gathered {
    fn is_empty(&self) -> bool {
        self.first == self.end
    }

    /// Room for another chunk in this write.
    fn has_room(&self) -> bool {
        self.end - self.first < GATHER_CHUNKS && self.bytes < GATHER_BYTES
    }

    fn push(&mut self, chunk: Bytes) {
        if self.end == GATHER_CHUNKS {
            self.chunks.rotate_left(self.first);
            self.end -= self.first;
            self.first = 0;
        }
        self.bytes += chunk.len();
        self.chunks[self.end] = chunk;
        self.end += 1;
    }

    /// Drops the first `written` bytes.
    fn advance(&mut self, mut written: usize) {
        self.bytes -= written;
        while written > 0 {
            let chunk = &mut self.chunks[self.first];
            let step = written.min(chunk.len());
            chunk.advance(step);
            written -= step;
            if chunk.is_empty() {
                *chunk = Bytes::new();
                self.first += 1;
            }
        }
        if self.first == self.end {
            (self.first, self.end) = (0, 0);
        }
    }
}

/// Writes `response`: its head, then its body's chunks, gathered (see `GATHER_BYTES`) so
/// that the head and as much of the body as fits go in one vectored write (one
/// `sendmsg(MSG_MORE)` of the head and one `sendfile` of the file's run, below), then
/// flushes, which releases the response's guards.
async fn send(
    io: &mut Socket,
    buf: &mut BytesMut,
    asked: Asked,
    response: Response<Body>,
) -> Result<Framing, LaneError> {
    let (mut parts, body) = response.into_parts();
    // A whole file's fields, rendered once per file version, go in as they are.
    let file_lines = body.file_head().map(FileHead::lines);
    let mut head =
        Vec::with_capacity(256 + parts.headers.len() * 48 + file_lines.map_or(0, <[u8]>::len));
    let framing = encode::encode(
        asked,
        parts.status,
        parts.version,
        &mut parts.headers,
        file_lines,
        body.remaining(),
        &mut head,
    );
    drop(parts);
    let mut head = Bytes::from(head);
    // `HEAD`, `204`, `304`: the body is dropped unsent; its guards wait for the flush.
    let mut body = (framing.body_len > 0).then_some(body);
    let mut gathered = Gathered::default();
    poll_fn(|cx| {
        loop {
            let mut waiting = false;
            while gathered.has_room()
                && let Some(pending) = body.as_mut()
            {
                match Pin::new(pending).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data()
                            && !data.is_empty()
                        {
                            gathered.push(data);
                        }
                    }
                    Poll::Ready(None) => body = None,
                    Poll::Ready(Some(Err(never))) => match never {},
                    // Our bodies never wait; a body that did is written as far as it got.
                    Poll::Pending => {
                        waiting = true;
                        break;
                    }
                }
            }
            if head.is_empty() && gathered.is_empty() {
                if waiting {
                    return poll_gone(io, buf, cx).map(Err);
                }
                if body.is_some() {
                    continue;
                }
                return Pin::new(&mut *io).poll_flush(cx).map_err(LaneError::from);
            }
            // No empty slice: the socket would spend a syscall on it.
            let mut slices = [IoSlice::new(&[]); GATHER_CHUNKS + 1];
            let mut count = 0;
            for part in std::iter::once(&head).chain(&gathered.chunks[gathered.first..gathered.end])
            {
                if !part.is_empty() {
                    slices[count] = IoSlice::new(part);
                    count += 1;
                }
            }
            let written = match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                Poll::Ready(Ok(written)) => written,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                Poll::Pending => return poll_gone(io, buf, cx).map(Err),
            };
            let from_head = written.min(head.len());
            head.advance(from_head);
            gathered.advance(written - from_head);
        }
    })
    .await?;
    Ok(framing)
}

/// Resolves once the server is told to stop (or its controller is gone).
async fn stopping(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|&stop| stop).await;
}

/// Hands the connection to hyper with the bytes the lane had read: hyper serves it from
/// then on, through the same service as every hyper connection.
async fn hand_off(
    lane: Arc<Lane>,
    io: Socket,
    prefix: Bytes,
    conn: Conn,
    stop: watch::Receiver<bool>,
) -> Result<(), LaneError> {
    let Conn {
        app,
        activity,
        outbox,
        peer,
    } = conn;
    app.state().connections.lane_handoffs.inc();
    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
        let in_flight = activity.begin();
        let route = app.route_of(request.uri().path());
        let app = Arc::clone(&app);
        let outbox = Arc::clone(&outbox);
        async move {
            Ok::<_, Infallible>(
                super::answer(
                    app,
                    route,
                    FileFields::InMap,
                    in_flight,
                    outbox,
                    peer,
                    request,
                )
                .await,
            )
        }
    });
    let mut connection = pin!(
        lane.builder
            .serve_connection(TokioIo::new(Rewind::new(io, prefix)), service)
    );
    if *stop.borrow() {
        connection.as_mut().graceful_shutdown();
        return Ok(connection.await?);
    }
    tokio::select! {
        served = connection.as_mut() => Ok(served?),
        () = stopping(stop) => {
            connection.as_mut().graceful_shutdown();
            Ok(connection.await?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lane_takes_the_file_routes_only() {
        let lane = Lane::new(64 * 1024, hyper::server::conn::http1::Builder::new()).unwrap();
        for (path, taken) in [
            ("/media/fitnessally/a.gif", true),
            ("/api/media/abc", true),
            ("/api/media/abc/info", true),
            ("/api/media", true),
            ("/api/generate/media/a.mp3", true),
            ("/gun-relay/get", false),
            ("/api/resolve", false),
            ("/metrics", false),
            ("/healthz", false),
            ("/", false),
            ("/nope", false),
        ] {
            assert_eq!(lane.route_of(path).is_some(), taken, "{path}");
        }
        // A path that is not text never reaches the lookup.
        let mut buf = BytesMut::from(&b"GET /media/\xff HTTP/1.1\r\nHost: h\r\n\r\n"[..]);
        let parsed = head::parse(&mut buf, lane.max_head, |path| lane.route_of(path));
        assert!(matches!(parsed, Parsed::HandOff(_)));
    }

    #[test]
    fn gathered_chunks_advance_in_order_across_partial_writes() {
        let mut gathered = Gathered::default();
        let data: Vec<u8> = (0..=255u8).cycle().take(40).collect();
        let data = Bytes::from(data);
        for i in 0..4 {
            gathered.push(data.slice(i * 10..(i + 1) * 10));
        }
        assert_eq!((gathered.bytes, gathered.end), (40, 4));
        // A partial write that ends inside the second chunk.
        gathered.advance(15);
        assert_eq!((gathered.first, gathered.bytes), (1, 25));
        assert_eq!(&gathered.chunks[1][..], &data[15..20]);
        // Full: the live chunks move to the front to make room.
        for i in 0..(GATHER_CHUNKS - 4) {
            assert!(gathered.has_room(), "room at {i}");
            gathered.push(Bytes::from_static(b"abc"));
        }
        assert_eq!(gathered.end, GATHER_CHUNKS);
        assert!(
            gathered.has_room(),
            "one chunk was written: one slot is free"
        );
        gathered.push(Bytes::from_static(b"xyz"));
        assert!(!gathered.has_room());
        assert_eq!((gathered.first, gathered.end), (0, GATHER_CHUNKS));
        assert_eq!(&gathered.chunks[0][..], &data[15..20]);
        assert_eq!(&gathered.chunks[GATHER_CHUNKS - 1][..], b"xyz");
        gathered.advance(gathered.bytes);
        assert!(gathered.is_empty());
        assert_eq!((gathered.first, gathered.end, gathered.bytes), (0, 0, 0));
        // The byte budget closes a write before the chunk count does.
        gathered.push(Bytes::from(vec![0u8; GATHER_BYTES]));
        assert!(!gathered.has_room());
    }

    /// The connection's future is allocated once per connection and kept while it is
    /// idle: its size is the lane's memory per idle keep-alive connection, beside the
    /// socket stack's timers and the connection's shared handles. The head buffer is
    /// released between requests, so it does not count here; this keeps a new inline await
    /// from growing it unnoticed (the target: 4 KiB per idle connection, all in;
    /// `benches/conn_memory.rs` measures that figure).
    #[tokio::test]
    async fn the_connection_future_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("web")).unwrap();
        let app = App::new(crate::config::Config::for_media_dir(dir.path())).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (_client, (stream, _)) = (client.unwrap(), accepted.unwrap());
        let counters = Arc::clone(&app.state().connections);
        let outbox = Arc::new(Outbox::default());
        let activity = Arc::new(ConnActivity::default());
        let socket = ZeroCopyIo::new(
            stream,
            Arc::clone(&outbox),
            16 * 1024,
            Arc::clone(&counters),
        );
        let timeouts = super::super::timed_io::Timeouts {
            header_read: std::time::Duration::from_secs(1),
            keep_alive: std::time::Duration::from_secs(1),
            write_stall: std::time::Duration::from_secs(1),
            stalled_after: std::time::Duration::from_secs(1),
        };
        let io = TimedIo::new(socket, Arc::clone(&activity), timeouts, counters);
        let lane =
            Arc::new(Lane::new(64 * 1024, hyper::server::conn::http1::Builder::new()).unwrap());
        let (_stop_tx, stop) = watch::channel(false);
        let conn = Conn {
            app: Arc::new(app),
            activity,
            outbox,
            peer: std::net::Ipv4Addr::LOCALHOST.into(),
        };
        let serve = serve(lane, io, conn, stop);
        let size = std::mem::size_of_val(&serve);
        // 872 bytes in a test build: the socket stack (240), the head buffer's handle,
        // the shared handles and the idle read's state. A request's exchange (the app's
        // future and `send`'s, ~4 KB) is boxed only while it is under way; inline it made
        // this 3,984 here and 8,112 in a release build, kept for the connection's life.
        assert!(size <= 1024, "lane::serve: {size} bytes");
    }
}
