//! Load benchmark: oip-media and nginx side by side on the same GIF corpus, same
//! machine, same run. Reports throughput, latency, errors, and the server's RssAnon and
//! RssFile from /proc, plus a long run for memory drift and an overload run for shedding.
//!
//! Run: `cargo bench --bench load` (settings via environment, see `Options`).
//! nginx is configured as a tuned production nginx would be for this job: `sendfile on`,
//! `tcp_nopush on`, `open_file_cache` (so it, like oip-media, does not re-open files per
//! request), access log off, keep-alive unlimited, same worker count as oip-media.
//! Uses `wrk` when installed (a real load generator), otherwise a Rust keep-alive client
//! built in; compares with nginx when `nginx` is installed. Both choices are printed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Settings, from environment variables (all optional).
struct Options {
    /// BENCH_FILES: corpus size (≥ 1000 for the published figures).
    files: usize,
    /// BENCH_SECS: seconds per throughput scenario.
    secs: u64,
    /// BENCH_CONNECTIONS: comma list of connection counts.
    connections: Vec<usize>,
    /// BENCH_LONG_SECS: seconds of the drift run (must reach 200,000 requests).
    long_secs: u64,
    /// BENCH_OVERLOAD_CONNECTIONS: clients in the overload run.
    overload_connections: usize,
    /// BENCH_WORKERS: server worker threads / nginx worker processes.
    workers: usize,
    /// BENCH_CLIENT_THREADS: load generator threads.
    client_threads: usize,
    /// BENCH_SKIP_NGINX=1 skips the comparison even when nginx is installed.
    skip_nginx: bool,
    /// BENCH_FORCE_RUST_CLIENT=1 uses the built-in client even when wrk is installed.
    force_rust_client: bool,
    /// BENCH_SCENARIOS: comma list of `throughput`, `long`, `overload`, `forwarding`
    /// (default: the first three; `forwarding` runs only when named).
    scenarios: Vec<String>,
}

impl Options {
    fn from_env() -> Options {
        let var = |k: &str| std::env::var(k).ok();
        let num = |k: &str, d: u64| var(k).and_then(|v| v.parse().ok()).unwrap_or(d);
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let workers = num("BENCH_WORKERS", (cores / 2).max(1) as u64) as usize;
        Options {
            files: num("BENCH_FILES", 1000) as usize,
            secs: num("BENCH_SECS", 15),
            connections: var("BENCH_CONNECTIONS")
                .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
                .unwrap_or_else(|| vec![64, 256]),
            long_secs: num("BENCH_LONG_SECS", 40),
            overload_connections: num("BENCH_OVERLOAD_CONNECTIONS", 1024) as usize,
            workers,
            client_threads: num("BENCH_CLIENT_THREADS", (cores - workers).max(1) as u64) as usize,
            skip_nginx: var("BENCH_SKIP_NGINX").is_some_and(|v| v == "1"),
            force_rust_client: var("BENCH_FORCE_RUST_CLIENT").is_some_and(|v| v == "1"),
            scenarios: var("BENCH_SCENARIOS")
                .unwrap_or_else(|| "throughput,long,overload".to_owned())
                .split(',')
                .map(|s| s.trim().to_owned())
                .collect(),
        }
    }

    fn runs(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }
}

// ------------------------------------------------------------------ memory sampling

#[derive(Debug, Clone, Copy, Default)]
struct Rss {
    anon_kib: u64,
    file_kib: u64,
}

/// RssAnon and RssFile of a process and its children (nginx workers), from /proc.
fn rss_of(pid: u32) -> Rss {
    let mut pids = vec![pid];
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    let mut total = Rss::default();
    for p in pids {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) else {
            continue;
        };
        for line in status.lines() {
            let value = || {
                line.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("RssAnon:") {
                total.anon_kib += value();
            } else if line.starts_with("RssFile:") {
                total.file_kib += value();
            }
        }
    }
    total
}

/// Samples a process's RSS every 100 ms until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(Duration, Rss)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (Arc::clone(&stop), Arc::clone(&samples));
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let rss = rss_of(pid);
                if let Ok(mut v) = v.lock() {
                    v.push((started.elapsed(), rss));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(Duration, Rss)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.samples.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

// ------------------------------------------------------------------ servers

/// A server process under test.
struct ServerProc {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    _scratch: Option<tempfile::TempDir>,
}

impl ServerProc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProc {
    /// SIGTERM first, SIGKILL only if the process is still there after 5 s: nginx's workers
    /// outlive a SIGKILLed master (re-parented, still running), and would load every later
    /// run of the machine.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..250 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> BenchResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_listening(addr: SocketAddr) -> BenchResult<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("nothing listening on {addr}").into())
}

fn start_oip_media(
    media: &Path,
    workers: usize,
    env: &[(&str, String)],
) -> BenchResult<ServerProc> {
    let port = free_port()?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oip-media"));
    cmd.env("MEDIA_DIR", media)
        .env("PORT", port.to_string())
        .env("BIND", "127.0.0.1")
        .env("WORKERS", workers.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(addr)?;
    Ok(ServerProc {
        name: "oip-media",
        child,
        addr,
        _scratch: None,
    })
}

fn start_nginx(media: &Path, workers: usize) -> BenchResult<ServerProc> {
    let scratch = tempfile::tempdir()?;
    let port = free_port()?;
    let dir = scratch.path().display();
    let web = media.join("web");
    let conf = format!(
        "user root;\nworker_processes {workers};\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 10000000;\n  keepalive_timeout 30s;\n\
           open_file_cache max=20000 inactive=60s;\n  open_file_cache_valid 1s;\n\
           client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
           types {{ image/gif gif; }}\n  default_type application/octet-stream;\n\
           server {{\n    listen 127.0.0.1:{port} reuseport;\n    location /media/ {{\n      alias {web}/;\n      add_header Cache-Control \"public, max-age=31536000, immutable\";\n    }}\n  }}\n}}\n",
        web = web.display()
    );
    let conf_path = scratch.path().join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(scratch.path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(addr)?;
    Ok(ServerProc {
        name: "nginx",
        child,
        addr,
        _scratch: Some(scratch),
    })
}

fn installed(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ------------------------------------------------------------------ load generation

/// One request of the mix: path and `Last-Modified` (for revalidations).
#[derive(Clone)]
struct Target {
    path: String,
    last_modified: String,
}

/// Results of one load run.
#[derive(Debug, Default, Clone)]
struct LoadResult {
    requests: u64,
    bytes: u64,
    secs: f64,
    /// Connect/read/write/timeout errors.
    socket_errors: u64,
    /// Responses with status ≥ 400 (503s in the overload run).
    status_errors: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

impl LoadResult {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }
    fn mbps(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
}

/// The request mix in the shape of real traffic: 80 % plain GETs, 10 % revalidations
/// (`If-Modified-Since`, answered 304 by both servers), 10 % first-64-KiB ranges.
const WRK_SCRIPT: &str = r#"
local paths, dates = {}, {}
init = function(args)
  for line in io.lines(os.getenv("BENCH_TARGETS")) do
    local p, d = line:match("([^\t]+)\t(.+)")
    paths[#paths + 1] = p
    dates[#dates + 1] = d
  end
  math.randomseed(os.time() + (tonumber(tostring({}):sub(8)) or 0))
end
request = function()
  local i = math.random(1, #paths)
  local r = math.random(100)
  if r <= 10 then
    return wrk.format("GET", paths[i], { ["If-Modified-Since"] = dates[i] })
  elseif r <= 20 then
    return wrk.format("GET", paths[i], { ["Range"] = "bytes=0-65535" })
  end
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d bytes=%d duration_us=%d socket=%d status=%d p50=%d p99=%d max=%d\n",
    summary.requests, summary.bytes, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"#;

enum Generator {
    Wrk {
        script: PathBuf,
        targets: PathBuf,
    },
    Rust {
        targets: Arc<Vec<Target>>,
    },
    /// The built-in client with every connection reading at `rate` bytes/s.
    Slow {
        targets: Arc<Vec<Target>>,
        rate: u64,
    },
}

impl Generator {
    fn name(&self) -> &'static str {
        match self {
            Generator::Wrk { .. } => "wrk",
            Generator::Rust { .. } => "built-in Rust keep-alive client",
            Generator::Slow { .. } => "built-in Rust client, throttled readers",
        }
    }

    fn run(
        &self,
        addr: SocketAddr,
        connections: usize,
        threads: usize,
        secs: u64,
    ) -> BenchResult<LoadResult> {
        match self {
            Generator::Wrk { script, targets } => {
                let out = Command::new("wrk")
                    .arg(format!("-t{}", threads.min(connections)))
                    .arg(format!("-c{connections}"))
                    .arg(format!("-d{secs}s"))
                    .arg("--timeout")
                    .arg("10s")
                    .arg("-s")
                    .arg(script)
                    .arg(format!("http://{addr}"))
                    .env("BENCH_TARGETS", targets)
                    .output()?;
                let text = String::from_utf8_lossy(&out.stdout);
                let line = text
                    .lines()
                    .find(|l| l.starts_with("RESULT "))
                    .ok_or_else(|| {
                        format!(
                            "wrk printed no result: {text} {}",
                            String::from_utf8_lossy(&out.stderr)
                        )
                    })?;
                let fields: HashMap<&str, u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|kv| kv.split_once('='))
                    .filter_map(|(k, v)| v.parse().ok().map(|v| (k, v)))
                    .collect();
                let get = |k: &str| fields.get(k).copied().unwrap_or(0);
                Ok(LoadResult {
                    requests: get("requests"),
                    bytes: get("bytes"),
                    secs: get("duration_us") as f64 / 1e6,
                    socket_errors: get("socket"),
                    status_errors: get("status"),
                    p50_us: get("p50"),
                    p99_us: get("p99"),
                    max_us: get("max"),
                })
            }
            Generator::Rust { targets } => {
                rust_client(addr, connections, threads, secs, targets, None)
            }
            Generator::Slow { targets, rate } => {
                rust_client(addr, connections, threads, secs, targets, Some(*rate))
            }
        }
    }
}

/// The built-in load generator: `connections` keep-alive clients as tasks on a
/// `threads`-thread runtime, the same request mix as the wrk script. With `read_rate`
/// each client reads at most that many bytes per second (phones on a slow link), and
/// honours `Retry-After` on a 503 as a well-behaved client does. Latency percentiles are
/// those of admitted requests; shed ones are counted in `status_errors`.
fn rust_client(
    addr: SocketAddr,
    connections: usize,
    threads: usize,
    secs: u64,
    targets: &Arc<Vec<Target>>,
    read_rate: Option<u64>,
) -> BenchResult<LoadResult> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let results = runtime.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for c in 0..connections {
            let targets = Arc::clone(targets);
            set.spawn(
                async move { one_client(addr, deadline, &targets, c as u64, read_rate).await },
            );
        }
        let mut all = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                all.push(r);
            }
        }
        all
    });
    let secs = started.elapsed().as_secs_f64();
    let mut latencies: Vec<u64> = Vec::new();
    let mut out = LoadResult {
        secs,
        ..Default::default()
    };
    for (lat, bytes, socket_errors, status_errors) in results {
        out.requests += lat.len() as u64 + status_errors;
        latencies.extend(lat);
        out.bytes += bytes;
        out.socket_errors += socket_errors;
        out.status_errors += status_errors;
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    out.p50_us = pct(0.50);
    out.p99_us = pct(0.99);
    out.max_us = latencies.last().copied().unwrap_or(0);
    Ok(out)
}

async fn one_client(
    addr: SocketAddr,
    deadline: Instant,
    targets: &[Target],
    seed: u64,
    read_rate: Option<u64>,
) -> (Vec<u64>, u64, u64, u64) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut latencies, mut bytes, mut socket_errors, mut status_errors) =
        (Vec::new(), 0u64, 0u64, 0u64);
    'connect: while Instant::now() < deadline {
        let connected = async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            if read_rate.is_some() {
                // A slow link's small receive window: the server's socket buffer fills
                // and the body really stays in flight, as it does for a phone.
                socket.set_recv_buffer_size(32 * 1024)?;
            }
            socket.connect(addr).await
        };
        let Ok(stream) = connected.await else {
            socket_errors += 1;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut stream = tokio::io::BufReader::with_capacity(256 * 1024, stream);
        // A throttled client reads in small pieces, as a slow link delivers them.
        let mut sink = vec![
            0u8;
            if read_rate.is_some() {
                16 * 1024
            } else {
                256 * 1024
            }
        ];
        while Instant::now() < deadline {
            let t = &targets[rng.usize(..targets.len())];
            let extra = match rng.u8(0..100) {
                0..10 => format!("If-Modified-Since: {}\r\n", t.last_modified),
                10..20 => "Range: bytes=0-65535\r\n".to_owned(),
                _ => String::new(),
            };
            let req = format!("GET {} HTTP/1.1\r\nHost: bench\r\n{extra}\r\n", t.path);
            let sent = Instant::now();
            if stream.get_mut().write_all(req.as_bytes()).await.is_err() {
                socket_errors += 1;
                continue 'connect;
            }
            let mut status = 0u16;
            let mut len = 0u64;
            let mut first_byte = None;
            let mut line = String::new();
            loop {
                line.clear();
                match stream.read_line(&mut line).await {
                    Ok(0) | Err(_) => {
                        socket_errors += 1;
                        continue 'connect;
                    }
                    Ok(n) => bytes += n as u64,
                }
                if status == 0 {
                    first_byte = Some(sent.elapsed());
                    status = line
                        .split(' ')
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                } else if line == "\r\n" {
                    break;
                } else if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut left = len;
            while left > 0 {
                let want = left.min(sink.len() as u64) as usize;
                match stream.read(&mut sink[..want]).await {
                    Ok(0) | Err(_) => {
                        socket_errors += 1;
                        continue 'connect;
                    }
                    Ok(n) => {
                        left -= n as u64;
                        if let Some(rate) = read_rate {
                            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64))
                                .await;
                        }
                    }
                }
            }
            bytes += len;
            if status >= 400 {
                status_errors += 1;
                if status == 503 && read_rate.is_some() {
                    // Retry-After: 1
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            } else {
                // Throttled clients: time to the first byte (queueing), since the whole
                // transfer takes as long as the client's link makes it take.
                let latency = match (read_rate, first_byte) {
                    (Some(_), Some(ttfb)) => ttfb,
                    _ => sent.elapsed(),
                };
                latencies.push(latency.as_micros() as u64);
            }
        }
    }
    (latencies, bytes, socket_errors, status_errors)
}

// ------------------------------------------------------------------ scenarios

struct Measured {
    load: LoadResult,
    idle: Rss,
    peak: Rss,
    last: Rss,
}

fn measure(
    server: &ServerProc,
    generator: &Generator,
    connections: usize,
    threads: usize,
    secs: u64,
) -> BenchResult<(Measured, Vec<(Duration, Rss)>)> {
    let idle = rss_of(server.pid());
    let sampler = Sampler::start(server.pid());
    let load = generator.run(server.addr, connections, threads, secs)?;
    let samples = sampler.finish();
    let peak = samples.iter().fold(Rss::default(), |m, (_, r)| Rss {
        anon_kib: m.anon_kib.max(r.anon_kib),
        file_kib: m.file_kib.max(r.file_kib),
    });
    let last = samples.last().map(|(_, r)| *r).unwrap_or(idle);
    Ok((
        Measured {
            load,
            idle,
            peak,
            last,
        },
        samples,
    ))
}

fn print_row(name: &str, connections: usize, m: &Measured) {
    let l = &m.load;
    let per_stream =
        (m.peak.anon_kib.saturating_sub(m.idle.anon_kib)) as f64 * 1024.0 / connections as f64;
    println!(
        "{name:<10} {connections:>5} {:>10.0} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>7} {:>9} {:>9} {:>9} {:>10.0}",
        l.rps(),
        l.mbps(),
        l.p50_us as f64 / 1000.0,
        l.p99_us as f64 / 1000.0,
        l.max_us as f64 / 1000.0,
        l.socket_errors,
        l.status_errors,
        m.idle.anon_kib,
        m.peak.anon_kib,
        m.peak.file_kib,
        per_stream,
    );
}

fn header() {
    println!(
        "{:<10} {:>5} {:>10} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7} {:>9} {:>9} {:>9} {:>10}",
        "server",
        "conns",
        "req/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "sockerr",
        "status",
        "anon0 KiB",
        "anonpk KiB",
        "filepk KiB",
        "anon B/strm"
    );
}

fn write_targets(
    dir: &Path,
    files: &[oip_media::sample::CorpusFile],
) -> BenchResult<(PathBuf, Vec<Target>)> {
    let mut targets = Vec::with_capacity(files.len());
    for f in files {
        let modified = std::fs::metadata(&f.fs_path)?
            .modified()
            .unwrap_or(SystemTime::UNIX_EPOCH);
        targets.push(Target {
            path: f.url_path.clone(),
            last_modified: httpdate::fmt_http_date(modified),
        });
    }
    let path = dir.join("targets.tsv");
    let mut out = std::fs::File::create(&path)?;
    for t in &targets {
        writeln!(out, "{}\t{}", t.path, t.last_modified)?;
    }
    Ok((path, targets))
}

fn main() -> BenchResult<()> {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let opts = Options::from_env();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!("# oip-media load benchmark");
    println!(
        "machine: {cores} cores; server workers: {}; load threads: {}",
        opts.workers, opts.client_threads
    );

    let corpus = tempfile::tempdir()?;
    let started = Instant::now();
    let files = oip_media::sample::write_corpus(corpus.path(), "fitnessally", opts.files, 42)?;
    let total: u64 = files.iter().map(|f| f.len).sum();
    println!(
        "corpus: {} GIFs, {:.1} MB ({} x180, {} x360, {} x720), generated in {:.1}s",
        files.len(),
        total as f64 / 1e6,
        files.iter().filter(|f| f.width == 180).count(),
        files.iter().filter(|f| f.width == 360).count(),
        files.iter().filter(|f| f.width == 720).count(),
        started.elapsed().as_secs_f64()
    );
    // Warm the page cache so neither server pays the first read.
    for f in &files {
        let mut buf = Vec::new();
        std::fs::File::open(&f.fs_path)?.read_to_end(&mut buf)?;
    }

    let (targets_path, targets) = write_targets(corpus.path(), &files)?;
    let targets = Arc::new(targets);
    let generator = if installed("wrk") && !opts.force_rust_client {
        let script = corpus.path().join("mix.lua");
        std::fs::write(&script, WRK_SCRIPT)?;
        Generator::Wrk {
            script,
            targets: targets_path,
        }
    } else {
        Generator::Rust {
            targets: Arc::clone(&targets),
        }
    };
    println!("load generator: {}", generator.name());
    println!(
        "request mix: 80% GET, 10% If-Modified-Since (304), 10% Range bytes=0-65535; uniform over the corpus"
    );

    let nginx_available = installed("nginx") && !opts.skip_nginx;
    if !nginx_available {
        println!(
            "nginx comparison: SKIPPED ({})",
            if opts.skip_nginx {
                "BENCH_SKIP_NGINX=1"
            } else {
                "nginx is not installed"
            }
        );
    }

    // ---- throughput, side by side
    if opts.runs("throughput") {
        throughput(&opts, corpus.path(), &generator, nginx_available)?;
    }
    if opts.runs("long") {
        long_run(&opts, corpus.path(), &generator)?;
    }
    if opts.runs("overload") {
        overload(&opts, corpus.path(), &targets, &files)?;
    }
    if opts.runs("forwarding") {
        forwarding(&opts, corpus.path(), &generator)?;
    }
    Ok(())
}

fn throughput(
    opts: &Options,
    corpus: &Path,
    generator: &Generator,
    nginx_available: bool,
) -> BenchResult<()> {
    println!("\n## Throughput ({} s per run)", opts.secs);
    header();
    for &connections in &opts.connections {
        let oip = start_oip_media(corpus, opts.workers, &[])?;
        let _ = generator.run(oip.addr, connections.min(64), opts.client_threads, 2)?; // warm-up
        let (o, _) = measure(&oip, generator, connections, opts.client_threads, opts.secs)?;
        print_row(oip.name, connections, &o);
        drop(oip);
        if nginx_available {
            let ngx = start_nginx(corpus, opts.workers)?;
            let _ = generator.run(ngx.addr, connections.min(64), opts.client_threads, 2)?;
            let (n, _) = measure(&ngx, generator, connections, opts.client_threads, opts.secs)?;
            print_row(ngx.name, connections, &n);
            println!(
                "ratio oip-media/nginx at {connections} conns: req/s {:.2}x, MB/s {:.2}x, p99 {:.2}x",
                o.load.rps() / n.load.rps(),
                o.load.mbps() / n.load.mbps(),
                o.load.p99_us as f64 / n.load.p99_us.max(1) as f64
            );
        }
    }

    Ok(())
}

fn long_run(opts: &Options, corpus: &Path, generator: &Generator) -> BenchResult<()> {
    println!(
        "\n## Long run ({} s, 64 connections): RSS drift",
        opts.long_secs
    );
    let oip = start_oip_media(corpus, opts.workers, &[])?;
    let (m, samples) = measure(&oip, generator, 64, opts.client_threads, opts.long_secs)?;
    header();
    print_row(oip.name, 64, &m);
    let at = |frac: f64| {
        let t = Duration::from_secs_f64(opts.long_secs as f64 * frac);
        samples
            .iter()
            .find(|(d, _)| *d >= t)
            .map(|(_, r)| *r)
            .unwrap_or(m.last)
    };
    let (early, late) = (at(0.2), at(0.9));
    let drift = |a: u64, b: u64| (b as f64 - a as f64) / a.max(1) as f64 * 100.0;
    println!(
        "requests: {} ({}); RssAnon early {} KiB → late {} KiB (drift {:+.2}%); RssFile early {} KiB → late {} KiB; final RssAnon {} KiB, RssFile {} KiB",
        m.load.requests,
        if m.load.requests >= 200_000 {
            "≥ 200,000"
        } else {
            "UNDER 200,000: raise BENCH_LONG_SECS"
        },
        early.anon_kib,
        late.anon_kib,
        drift(early.anon_kib, late.anon_kib),
        early.file_kib,
        late.file_kib,
        m.last.anon_kib,
        m.last.file_kib
    );
    drop(oip);

    Ok(())
}

fn overload(
    opts: &Options,
    corpus: &Path,
    targets: &Arc<Vec<Target>>,
    files: &[oip_media::sample::CorpusFile],
) -> BenchResult<()> {
    // Slow clients (phones on a 2 Mbit/s link), far more of them than the limit: on
    // loopback wrk drains every body at once, so only throttled readers keep bodies in
    // flight the way real overload does.
    let limit = 64;
    let rate: u64 = 256 * 1024;
    println!(
        "\n## Overload: {} slow clients (each reads {} KiB/s, honours Retry-After) against MAX_IN_FLIGHT={limit}, MAX_QUEUE={limit}, QUEUE_TIMEOUT=250ms, SEND_BUFFER=64KiB ({} s, built-in client)",
        opts.overload_connections,
        rate / 1024,
        opts.secs
    );
    let env = [
        ("MAX_IN_FLIGHT", limit.to_string()),
        ("MAX_QUEUE", limit.to_string()),
        ("QUEUE_TIMEOUT", "250ms".to_owned()),
        // Bounded kernel buffers (see --send-buffer): without them loopback's autotuned
        // buffers swallow whole GIFs and no body stays in flight long enough to matter.
        ("SEND_BUFFER", "64KiB".to_owned()),
    ];
    let oip = start_oip_media(corpus, opts.workers, &env)?;
    let slow = Generator::Slow {
        targets: Arc::clone(targets),
        rate,
    };
    let (m, _) = measure(
        &oip,
        &slow,
        opts.overload_connections,
        opts.client_threads,
        opts.secs,
    )?;
    header();
    print_row(oip.name, opts.overload_connections, &m);
    println!(
        "shed (503 + Retry-After): {} of {} responses ({:.1}%); latency columns: time to first byte of admitted requests; \
         peak RssAnon {} KiB ({} KiB above idle with {limit} bodies in flight)",
        m.load.status_errors,
        m.load.requests,
        m.load.status_errors as f64 / m.load.requests.max(1) as f64 * 100.0,
        m.peak.anon_kib,
        m.peak.anon_kib.saturating_sub(m.idle.anon_kib)
    );
    std::thread::sleep(Duration::from_millis(500));
    let probe = &files[0].url_path;
    let t = Instant::now();
    let mut s = TcpStream::connect(oip.addr)?;
    write!(
        s,
        "GET {probe} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
    )?;
    let mut status_line = String::new();
    BufReader::new(&mut s).read_line(&mut status_line)?;
    println!(
        "recovery: first request after the load stopped answered `{}` in {:.2} ms",
        status_line.trim(),
        t.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}

// ------------------------------------------------------------------ forwarding

// `BENCH_SCENARIOS=forwarding`: the same GIF traffic to oip-media three ways — directly,
// behind nginx configured with README's snippet (`deploy/nginx.conf`, the file
// tests/forwarding_front_proxy.rs checks), and behind the indexer's own forwarding hook
// (`tests/indexer-proxy/indexer_proxy.js`: express 4 + http-proxy-middleware 3 at the
// indexer's versions, its per-request log line included, stdout to /dev/null). Reports
// req/s and p99 as the client sees them, and the RSS of the proxy in the path.
// Self-contained: only the shared load generator, sampler and oip-media launcher are used.

/// nginx in front of `oip_media` with `deploy/nginx.conf`, its upstream and listen
/// addresses swapped for loopback ones (the indexer upstream points at a closed port: the
/// benchmark only requests media routes).
fn start_forwarding_nginx(oip_media: SocketAddr, workers: usize) -> BenchResult<ServerProc> {
    let scratch = tempfile::tempdir()?;
    let port = free_port()?;
    let snippet =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.conf"))?;
    let mut site = snippet;
    for (from, to) in [
        ("server oip-media:8080;", format!("server {oip_media};")),
        ("server indexer:3005;", "server 127.0.0.1:9;".to_owned()),
        ("listen 80;", format!("listen 127.0.0.1:{port} reuseport;")),
    ] {
        if !site.contains(from) {
            return Err(format!("deploy/nginx.conf no longer contains `{from}`").into());
        }
        site = site.replace(from, &to);
    }
    let dir = scratch.path().display();
    std::fs::write(scratch.path().join("site.conf"), site)?;
    // Around the snippet, the same process settings as the static-file nginx above.
    let conf = format!(
        "user root;\nworker_processes {workers};\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 30s;\n\
           client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
           include {dir}/site.conf;\n}}\n"
    );
    let conf_path = scratch.path().join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let child = Command::new("nginx")
        .arg("-p")
        .arg(scratch.path())
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(scratch.path().join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(addr)?;
    Ok(ServerProc {
        name: "nginx",
        child,
        addr,
        _scratch: Some(scratch),
    })
}

/// The indexer's hook in front of `oip_media`, configured as README's fallback says.
fn start_indexer_hook(oip_media: SocketAddr) -> BenchResult<ServerProc> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/indexer-proxy");
    if !dir.join("node_modules/http-proxy-middleware").is_dir() {
        return Err(
            "tests/indexer-proxy/node_modules is missing: run `(cd tests/indexer-proxy && npm ci)`"
                .into(),
        );
    }
    let port = free_port()?;
    let child = Command::new("node")
        .arg("indexer_proxy.js")
        .current_dir(&dir)
        .env("CUSTOM_PROXY_TARGET", format!("http://{oip_media}/media"))
        .env("CUSTOM_PROXY_ROUTE", "/media")
        .env_remove("CUSTOM_PROXY_STRIP_PREFIX")
        .env("PROXY_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(addr)?;
    Ok(ServerProc {
        name: "node hook",
        child,
        addr,
        _scratch: None,
    })
}

/// One forwarding run: load against `front` (oip-media itself when `proxy` is `None`),
/// RSS sampled on oip-media and on the proxy, and the CPU time each spent.
struct ForwardingRun {
    load: LoadResult,
    oip_peak: Rss,
    proxy_peak: Option<Rss>,
    oip_cpu: Duration,
    proxy_cpu: Option<Duration>,
}

/// User + system CPU time of a process and its children (nginx's workers), from
/// `/proc/<pid>/stat`. On a small shared machine req/s mostly says who got the cores;
/// CPU time per request says what forwarding costs wherever it runs.
fn cpu_of(pid: u32) -> Duration {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    });
    let mut pids = vec![pid];
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    let mut total = 0u64;
    for p in pids {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| {
            fields
                .get(n - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        total += field(14) + field(15);
    }
    Duration::from_secs_f64(total as f64 / ticks)
}

fn measure_forwarding(
    oip: &ServerProc,
    proxy: Option<&ServerProc>,
    generator: &Generator,
    connections: usize,
    threads: usize,
    secs: u64,
) -> BenchResult<ForwardingRun> {
    let front = proxy.unwrap_or(oip);
    let _ = generator.run(front.addr, connections.min(64), threads, 2)?; // warm-up
    let oip_sampler = Sampler::start(oip.pid());
    let proxy_sampler = proxy.map(|p| Sampler::start(p.pid()));
    let (oip_cpu0, proxy_cpu0) = (cpu_of(oip.pid()), proxy.map(|p| cpu_of(p.pid())));
    let load = generator.run(front.addr, connections, threads, secs)?;
    let oip_cpu = cpu_of(oip.pid()).saturating_sub(oip_cpu0);
    let proxy_cpu = proxy
        .zip(proxy_cpu0)
        .map(|(p, before)| cpu_of(p.pid()).saturating_sub(before));
    let peak = |samples: Vec<(Duration, Rss)>| {
        samples.iter().fold(Rss::default(), |m, (_, r)| Rss {
            anon_kib: m.anon_kib.max(r.anon_kib),
            file_kib: m.file_kib.max(r.file_kib),
        })
    };
    Ok(ForwardingRun {
        load,
        oip_peak: peak(oip_sampler.finish()),
        proxy_peak: proxy_sampler.map(|s| peak(s.finish())),
        oip_cpu,
        proxy_cpu,
    })
}

fn print_forwarding_row(path: &str, connections: usize, run: &ForwardingRun, direct_rps: f64) {
    let l = &run.load;
    let per_request = |cpu: Duration| cpu.as_secs_f64() * 1e6 / l.requests.max(1) as f64;
    let proxy = match (run.proxy_peak, run.proxy_cpu) {
        (Some(r), Some(cpu)) => format!(
            "{:>9.1} {:>9.1} {:>9.1}",
            (r.anon_kib + r.file_kib) as f64 / 1024.0,
            r.anon_kib as f64 / 1024.0,
            per_request(cpu)
        ),
        _ => format!("{:>9} {:>9} {:>9}", "-", "-", "-"),
    };
    println!(
        "{path:<22} {connections:>5} {:>9.0} {:>7.2}x {:>8.2} {:>8.2} {:>7} {:>7} {proxy} {:>9.1} {:>9.1}",
        l.rps(),
        l.rps() / direct_rps.max(1.0),
        l.p50_us as f64 / 1000.0,
        l.p99_us as f64 / 1000.0,
        l.socket_errors,
        l.status_errors,
        run.oip_peak.anon_kib as f64 / 1024.0,
        per_request(run.oip_cpu),
    );
}

fn forwarding(opts: &Options, corpus: &Path, generator: &Generator) -> BenchResult<()> {
    println!(
        "\n## Forwarding: oip-media direct, behind nginx (deploy/nginx.conf), behind the indexer's node hook ({} s per run)",
        opts.secs
    );
    println!(
        "{:<22} {:>5} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "path",
        "conns",
        "req/s",
        "vs dir",
        "p50 ms",
        "p99 ms",
        "sockerr",
        "status",
        "proxy RSS",
        "prx anon",
        "prx us/rq",
        "oip anon",
        "oip us/rq"
    );
    let nginx = installed("nginx");
    let node = installed("node");
    for &connections in &opts.connections {
        let oip = start_oip_media(corpus, opts.workers, &[])?;
        let direct = measure_forwarding(
            &oip,
            None,
            generator,
            connections,
            opts.client_threads,
            opts.secs,
        )?;
        let direct_rps = direct.load.rps();
        print_forwarding_row("direct", connections, &direct, direct_rps);
        if nginx {
            let front = start_forwarding_nginx(oip.addr, opts.workers)?;
            let run = measure_forwarding(
                &oip,
                Some(&front),
                generator,
                connections,
                opts.client_threads,
                opts.secs,
            )?;
            print_forwarding_row("nginx -> oip-media", connections, &run, direct_rps);
        } else {
            println!("nginx -> oip-media: SKIPPED (nginx is not installed)");
        }
        match node.then(|| start_indexer_hook(oip.addr)) {
            Some(Ok(hook)) => {
                let run = measure_forwarding(
                    &oip,
                    Some(&hook),
                    generator,
                    connections,
                    opts.client_threads,
                    opts.secs,
                )?;
                print_forwarding_row("node hook -> oip-media", connections, &run, direct_rps);
            }
            Some(Err(e)) => println!("node hook -> oip-media: SKIPPED ({e})"),
            None => println!("node hook -> oip-media: SKIPPED (node is not installed)"),
        }
    }
    println!(
        "proxy RSS: peak RssAnon + RssFile of the proxy process (nginx: master + workers), MiB; \
         prx anon: its peak RssAnon, MiB; prx us/rq: its CPU time (user + system) per request, µs; \
         oip anon, oip us/rq: the same for oip-media"
    );
    Ok(())
}
