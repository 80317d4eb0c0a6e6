//! RssAnon per open keep-alive connection, measured from outside the server: open `N`
//! connections, make one GET on each (reading the whole response, so each connection is
//! back to idle keep-alive), hold them all open, and read the server's RssAnon from
//! `/proc/<pid>/status`; close them, let the server settle, and do it again for a few
//! rounds, so growth from one round to the next shows.
//!
//! Blocking `std` sockets only, no runtime: a client that holds 1,024 idle sockets needs
//! none, and the figures then belong to the server alone. Used by `benches/conn_memory.rs`;
//! any bench may call [`measure`] with its own server (`cargo bench --bench load` can, for
//! its per-connection column): include it with
//! `#[path = "../tests/support/conn_memory.rs"] mod conn_memory;`.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How to measure.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Keep-alive connections held open at once.
    pub connections: usize,
    /// Rounds of open, request, hold, close.
    pub rounds: usize,
    /// How long to wait after the requests (and after closing) before reading RssAnon:
    /// long enough for the allocator to return what the requests freed (jemalloc's
    /// `dirty_decay_ms` is 1 s in oip-media), short of the server's keep-alive timeout.
    pub settle: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connections: 1024,
            rounds: 4,
            settle: Duration::from_millis(2500),
        }
    }
}

/// RssAnon of the server (KiB) at the points of one round.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    /// Before the round's connections were opened.
    pub before_kib: u64,
    /// With every connection open and idle after its request.
    pub held_kib: u64,
    /// After they were all closed and the server settled.
    pub closed_kib: u64,
}

/// What [`measure`] found.
#[derive(Debug, Clone)]
pub struct ConnMemory {
    /// RssAnon (KiB) at idle, after one request on each path (files mapped, caches warm),
    /// before any round.
    pub idle_kib: u64,
    /// Connections per round.
    pub connections: usize,
    /// One entry per round.
    pub rounds: Vec<Round>,
}

impl ConnMemory {
    /// RssAnon per held connection above idle, in bytes, in round `i`.
    pub fn per_connection_bytes(&self, i: usize) -> f64 {
        let held = self.rounds[i].held_kib as f64;
        (held - self.idle_kib as f64) * 1024.0 / self.connections.max(1) as f64
    }

    /// Growth of the held RssAnon from the first round to the last, in percent.
    pub fn held_growth_percent(&self) -> f64 {
        let (Some(first), Some(last)) = (self.rounds.first(), self.rounds.last()) else {
            return 0.0;
        };
        (last.held_kib as f64 - first.held_kib as f64) * 100.0 / first.held_kib.max(1) as f64
    }

    /// Growth of the RssAnon after closing, from the first round to the last, in percent.
    pub fn closed_growth_percent(&self) -> f64 {
        let (Some(first), Some(last)) = (self.rounds.first(), self.rounds.last()) else {
            return 0.0;
        };
        (last.closed_kib as f64 - first.closed_kib as f64) * 100.0 / first.closed_kib.max(1) as f64
    }

    /// One line per round, for a bench's output.
    pub fn report(&self, name: &str) -> String {
        let mut out = format!(
            "{name}: idle RssAnon {} KiB; {} keep-alive connections per round\n",
            self.idle_kib, self.connections
        );
        for (i, r) in self.rounds.iter().enumerate() {
            out.push_str(&format!(
                "  round {}: before {:>7} KiB  held {:>7} KiB  closed {:>7} KiB  per connection {:>7.0} B ({:.1} KiB)\n",
                i + 1,
                r.before_kib,
                r.held_kib,
                r.closed_kib,
                self.per_connection_bytes(i),
                self.per_connection_bytes(i) / 1024.0
            ));
        }
        out.push_str(&format!(
            "  growth from round 1 to round {}: held {:+.2} %, after closing {:+.2} %\n",
            self.rounds.len(),
            self.held_growth_percent(),
            self.closed_growth_percent()
        ));
        out
    }
}

/// RssAnon (KiB) of `pids` together, from `/proc/<pid>/status` (0 for a pid gone).
pub fn rss_anon_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find(|l| l.starts_with("RssAnon:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// `pid` and its direct children (an nginx master and its workers).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    pids.extend(
        children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok()),
    );
    pids
}

/// Opens a connection, sends one keep-alive GET of `path`, and reads the whole response
/// (head and `Content-Length` body), leaving the connection idle and open.
pub fn request_and_keep(addr: SocketAddr, path: &str) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_nodelay(true)?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())?;
    let mut head = Vec::with_capacity(1024);
    let mut byte = [0u8; 1024];
    // Read until the end of the head; what follows it is body.
    let (head_len, mut body_read) = loop {
        let n = stream.read(&mut byte)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the response head",
            ));
        }
        head.extend_from_slice(&byte[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break (end + 4, head.len() - end - 4);
        }
        if head.len() > 64 * 1024 {
            return Err(io::Error::other("response head over 64 KiB"));
        }
    };
    let text = String::from_utf8_lossy(&head[..head_len]).to_ascii_lowercase();
    if !text.starts_with("http/1.1 200") {
        return Err(io::Error::other(format!(
            "{path}: {}",
            text.lines().next().unwrap_or_default()
        )));
    }
    let length: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no content-length"))?;
    let mut sink = vec![0u8; 64 * 1024];
    while body_read < length {
        let want = (length - body_read).min(sink.len());
        let n = stream.read(&mut sink[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed mid-body",
            ));
        }
        body_read += n;
    }
    Ok(stream)
}

/// Measures the server at `addr` (whose processes `pids` lists) with `settings`: one
/// request on each of `paths` first (caches warm), then the rounds; connection `i`
/// of a round requests `paths[i % paths.len()]`.
pub fn measure(
    addr: SocketAddr,
    paths: &[String],
    pids: &dyn Fn() -> Vec<u32>,
    settings: Settings,
) -> io::Result<ConnMemory> {
    if paths.is_empty() {
        return Err(io::Error::other("no paths to request"));
    }
    for path in paths {
        drop(request_and_keep(addr, path)?);
    }
    std::thread::sleep(settings.settle);
    let idle_kib = rss_anon_kib(&pids());
    let mut rounds = Vec::with_capacity(settings.rounds);
    for _ in 0..settings.rounds {
        let before_kib = rss_anon_kib(&pids());
        let started = Instant::now();
        let mut held = Vec::with_capacity(settings.connections);
        for i in 0..settings.connections {
            held.push(request_and_keep(addr, &paths[i % paths.len()])?);
        }
        std::thread::sleep(settings.settle);
        let held_kib = rss_anon_kib(&pids());
        if started.elapsed() > Duration::from_secs(25) {
            eprintln!(
                "conn_memory: a round took {:?}; idle connections may have timed out",
                started.elapsed()
            );
        }
        drop(held);
        std::thread::sleep(settings.settle);
        let closed_kib = rss_anon_kib(&pids());
        rounds.push(Round {
            before_kib,
            held_kib,
            closed_kib,
        });
    }
    Ok(ConnMemory {
        idle_kib,
        connections: settings.connections,
        rounds,
    })
}
