//! The server's settings group: listening sockets, serving threads, and each client
//! connection's bounds and timeouts.

use std::net::IpAddr;
use std::time::Duration;

use crate::settings::{Invalid, at_least_one, not_zero, parse_bytes, parse_duration};

/// The layout of the threads that serve connections (`--runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeLayout {
    /// One multi-thread tokio runtime with `--workers` workers and one listening socket.
    MultiThread,
    /// `--workers` threads, each a current-thread runtime accepting on its own
    /// `SO_REUSEPORT` socket.
    PerCore,
}

/// Smallest `--max-request-head`: a browser's ordinary head with cookies fits in 8 KiB.
pub const MIN_REQUEST_HEAD: u64 = 8 * 1024;

/// Largest `--max-request-head`: past this a head costs more than a GIF.
pub const MAX_REQUEST_HEAD: u64 = 1024 * 1024;

/// Whether the lean HTTP/1 lane answers bodiless `GET`/`HEAD` file requests before
/// hyper (`--fast-lane`, `src/server/lane/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FastLane {
    /// The lane takes the requests it can; hyper gets the connection for anything else.
    On,
    /// hyper serves every connection.
    Off,
}

/// Settings of the server (`src/server/`): the listening sockets, the serving threads, and
/// the bounds and timeouts of each client connection.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Listening and connections")]
pub struct ServerSettings {
    /// Address to bind.
    ///
    /// Loopback by default: the service is meant to sit behind the indexer's proxy or a front
    /// proxy.
    #[arg(long, env = "BIND", default_value = "127.0.0.1")]
    pub bind: IpAddr,

    /// TCP port to listen on (0 picks a free port; the chosen one is logged).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// The lean HTTP/1 lane for bodiless `GET`/`HEAD` file requests (on by default).
    ///
    /// Bodiless `GET`/`HEAD` requests of the file routes are parsed with httparse and
    /// answered through the same admissions, stall rules, timeouts, CORS, request ids,
    /// counters and access log as hyper's; a connection whose request the lane does not
    /// take (a body, `Expect`, `Upgrade`, any other route, anything unusual in the head)
    /// is handed to hyper with the bytes already read. On by default, by measurement: ~6 %
    /// fewer instructions per GIF request than hyper, 3 KiB per idle keep-alive connection
    /// against 15, 6 KiB per busy one against 19 (docs/benchmarks/fast-lane.md). `off`:
    /// hyper serves every request.
    #[arg(long, env = "FAST_LANE", value_enum, default_value_t = FastLane::On)]
    pub fast_lane: FastLane,

    /// Threads that serve connections (0 = one per available core).
    ///
    /// Threads that serve connections (0 = one per available core): the multi-thread runtime's
    /// workers, or the cores of the per-core layout (`--runtime`).
    #[arg(long, env = "WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// How the serving threads are laid out.
    ///
    /// `multi-thread`: one tokio multi-thread runtime, one listening socket, connections moved
    /// between workers by work stealing. `per-core`: one current-thread runtime per worker,
    /// each accepting on its own `SO_REUSEPORT` socket, a connection served start to end by the
    /// thread that accepted it (the kernel spreads new connections by their address hash). The
    /// connection cap, the limiters, the filesystem threads, metrics and shutdown are shared by
    /// all workers in both. Keep `multi-thread` (the default) on small hosts, with few or
    /// uneven connections (a few heavy downloads, one slow filesystem): idle workers steal work
    /// from busy ones. Try `per-core` on a host with many cores serving many keep-alive
    /// connections that the kernel's hash spreads evenly, and keep it only if `cargo bench
    /// --bench load` shows less CPU per request there (BENCHMARKS.md, "Many cores", has the
    /// figures of 2 cores).
    #[arg(long, env = "RUNTIME", value_enum, default_value_t = RuntimeLayout::MultiThread)]
    pub runtime: RuntimeLayout,

    /// Most open client connections.
    ///
    /// Past it the service stops accepting and new connections wait in the kernel's backlog, so
    /// descriptors and per-connection memory stay bounded whatever arrives.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Kernel send buffer of each client socket (`SO_SNDBUF`); 0: the kernel autotunes.
    ///
    /// The kernel buffers up to a few MiB per connection on its own, which holds a whole GIF
    /// for a slow client (and counts against the container's memory in cgroup v2); a fixed size
    /// bounds that memory and keeps slow bodies visible to the limiter. 256KiB still fills a 40
    /// Mbit/s link at 50 ms RTT.
    #[arg(long, env = "SEND_BUFFER", default_value = "0", value_parser = parse_bytes)]
    pub send_buffer: u64,

    /// Most bytes of one request head (request line and header lines).
    ///
    /// hyper buffers a head until it is complete, and its own ceiling is ~408 KiB per
    /// connection: 1,000 connections trickling an unfinished head held 211 MiB. nginx allows 4
    /// × 8 KiB by default; 64KiB leaves room for large cookies and tokens. Past it: `431`.
    #[arg(long, env = "MAX_REQUEST_HEAD", default_value = "64KiB", value_parser = parse_bytes)]
    pub max_request_head: u64,

    /// Time a client has to send a complete request head once it has sent its first byte.
    ///
    /// Defeats slowloris clients that trickle header bytes.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Time an idle keep-alive connection (nothing in flight, nothing sent) is kept open.
    ///
    /// Also closes connections that are opened and never used.
    #[arg(long, env = "KEEP_ALIVE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub keep_alive_timeout: Duration,

    /// A client that accepts no response bytes for this long is dropped.
    ///
    /// A client that accepts no response bytes for this long is dropped and its limiter permit
    /// released.
    ///
    /// "Accepts" is measured as bytes its TCP stack acknowledged, not as writes that completed,
    /// so a client that keeps reading, however slowly, is never dropped, whatever the kernel's
    /// buffer sizes. A GIF of 2 MB over a 256 kbit/s phone link never stalls this long.
    #[arg(long, env = "WRITE_STALL_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub write_stall_timeout: Duration,

    /// Time without progress after which a media body leaves its slot for the stalled pool.
    ///
    /// A media body whose client has accepted no bytes for this long gives its
    /// `--max-in-flight` slot back and waits in the stalled pool (`--max-stalled`), so clients
    /// that never read cannot hold every slot; it takes a slot back when its client reads
    /// again.
    ///
    /// Shorter than `--queue-timeout`, so a request queued behind non-reading clients gets a
    /// slot before it is shed. A waiting send checks its progress four times per this interval
    /// (one `getsockopt` per check).
    #[arg(long, env = "STALLED_AFTER", default_value = "500ms", value_parser = parse_duration)]
    pub stalled_after: Duration,

    /// On SIGTERM/SIGINT, how long responses under way may take to finish before the process
    /// exits anyway.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl ServerSettings {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        at_least_one("max_connections", self.max_connections)?;
        if !(MIN_REQUEST_HEAD..=MAX_REQUEST_HEAD).contains(&self.max_request_head) {
            return Err(Invalid::new(
                "max_request_head",
                "must be between 8KiB and 1MiB",
            ));
        }
        not_zero("header_read_timeout", self.header_read_timeout)?;
        not_zero("keep_alive_timeout", self.keep_alive_timeout)?;
        not_zero("write_stall_timeout", self.write_stall_timeout)?;
        not_zero("stalled_after", self.stalled_after)
    }

    /// The number of serving threads `--workers` asks for: its value, or one per core
    /// this process may run on (its CPU affinity and cgroup quota) when it is 0.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Listening sockets, each with its own accept loop: one for the multi-thread
    /// runtime, one per worker for the per-core layout.
    pub fn listeners(&self) -> usize {
        match self.runtime {
            RuntimeLayout::MultiThread => 1,
            RuntimeLayout::PerCore => self.worker_threads(),
        }
    }
}
