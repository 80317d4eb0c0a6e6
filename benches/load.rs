//! Load benchmark: oip-media and nginx side by side on the same GIF corpus, same
//! machine, same run, each server pinned to its own cores and the load generator to the
//! others. Reports, per server and connection count: throughput and latency, **CPU µs
//! per request** (user and system apart, from `/proc/<pid>/stat`, nginx's workers
//! included), **RssAnon per connection**, and the ratios to nginx; then a long run for
//! memory drift and an overload run for shedding, and one summary line with the ratios
//! at a glance.
//!
//! Run: `cargo bench --bench load` (settings via environment, see `Options`).
//! nginx is configured as a tuned production nginx would be for this job: `sendfile on`,
//! `tcp_nopush on`, `open_file_cache` (so it, like oip-media, does not re-open files per
//! request), access log off, keep-alive unlimited, same worker count as oip-media.
//! Uses `wrk` when installed (a real load generator), otherwise a Rust keep-alive client
//! built in; compares with nginx when `nginx` is installed. Both choices are printed, and
//! so is where each process runs (or why nothing could be pinned).
//!
//! Servers take turns — each oip-media layout, any extra binary, nginx, then again — for
//! `BENCH_ROUNDS` rounds, so the noise of a shared machine hits each alike; ratios are
//! taken within a round and their median and spread reported.
//!
//! It also compares several builds side by side (`BENCH_COMPARE`, e.g. a build of main
//! against this one) and measures the writev/sendfile crossover with files of one size
//! (`BENCH_FILE_SIZE`, `BENCH_MIX=get`): what `benches/cpu_per_request.sh` did before it
//! was folded in here.
//!
//! On another machine (the 16-core run in `BENCHMARKS.md`): build with
//! `cargo bench --bench load --no-run`, carry the bench binary and `target/release/oip-media`
//! there, and point `OIP_MEDIA_BIN` at the latter.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use oip_media::sample::CorpusFile;

#[path = "support/svg.rs"]
mod svg;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Settings, from environment variables (all optional).
struct Options {
    /// BENCH_FILES: corpus size (≥ 1000 for the published figures).
    files: usize,
    /// BENCH_FILE_SIZE: instead of the GIF corpus, 200 files of exactly this many bytes
    /// (the writev/sendfile crossover).
    file_size: Option<u64>,
    /// BENCH_SECS: seconds per throughput run, per long-run round and of the overload run.
    secs: u64,
    /// BENCH_WARM_SECS: warm-up seconds before each measured throughput run.
    warm_secs: u64,
    /// BENCH_CONNECTIONS: comma list of connection counts.
    connections: Vec<usize>,
    /// BENCH_ROUNDS: rounds of the throughput runs (servers take turns in each).
    rounds: usize,
    /// BENCH_LONG_SECS: seconds of the drift run (must reach 200,000 requests).
    long_secs: u64,
    /// BENCH_LONG_CONNECTIONS: connections of each round of the drift run.
    long_connections: usize,
    /// BENCH_OVERLOAD_CONNECTIONS: clients in the overload run.
    overload_connections: usize,
    /// BENCH_WORKERS: server worker threads / nginx worker processes.
    workers: usize,
    /// BENCH_CLIENT_THREADS: load generator threads.
    client_threads: usize,
    /// BENCH_RUNTIMES: comma list of this build's layouts (`--runtime`) to run side by
    /// side; `none` runs only the BENCH_COMPARE binaries (and nginx).
    runtimes: Vec<String>,
    /// BENCH_COMPARE: more oip-media binaries to run side by side, space separated
    /// `NAME=BINARY` or `NAME=BINARY@VAR=VALUE,VAR=VALUE` (e.g. a build of main).
    compare: Vec<ServerSpec>,
    /// BENCH_MIX: `bench` (80 % GET, 10 % 304, 10 % 64 KiB range) or `get` (GETs only).
    mix: String,
    /// BENCH_PIN=0 runs everything unpinned.
    pin: bool,
    /// BENCH_SKIP_NGINX=1 skips the comparison even when nginx is installed.
    skip_nginx: bool,
    /// BENCH_FORCE_RUST_CLIENT=1 uses the built-in client even when wrk is installed.
    force_rust_client: bool,
    /// BENCH_SCENARIOS: comma list of `throughput`, `long`, `overload`, `forwarding`
    /// (default: the first three; `forwarding` runs only when named).
    scenarios: Vec<String>,
}

impl Options {
    fn from_env(cores: usize) -> BenchResult<Options> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let num = |k: &str, d: u64| var(k).and_then(|v| v.parse().ok()).unwrap_or(d);
        let list = |k: &str, d: &str| -> Vec<String> {
            var(k)
                .unwrap_or_else(|| d.to_owned())
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let workers = num("BENCH_WORKERS", (cores / 2).max(1) as u64) as usize;
        let compare = var("BENCH_COMPARE")
            .map(|v| {
                v.split_whitespace()
                    .map(ServerSpec::parse_compare)
                    .collect::<BenchResult<Vec<_>>>()
            })
            .transpose()?
            .unwrap_or_default();
        let mix = var("BENCH_MIX").unwrap_or_else(|| "bench".to_owned());
        if mix != "bench" && mix != "get" {
            return Err(format!("BENCH_MIX={mix}: use bench or get").into());
        }
        Ok(Options {
            files: num("BENCH_FILES", 1000) as usize,
            file_size: var("BENCH_FILE_SIZE").and_then(|v| v.parse().ok()),
            secs: num("BENCH_SECS", 15),
            warm_secs: num("BENCH_WARM_SECS", 3),
            connections: list("BENCH_CONNECTIONS", "64,256,1024")
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
            rounds: num("BENCH_ROUNDS", 2).max(1) as usize,
            long_secs: num("BENCH_LONG_SECS", 120),
            long_connections: num("BENCH_LONG_CONNECTIONS", 256) as usize,
            overload_connections: num("BENCH_OVERLOAD_CONNECTIONS", 1024) as usize,
            workers,
            client_threads: num(
                "BENCH_CLIENT_THREADS",
                cores.saturating_sub(workers).max(1) as u64,
            ) as usize,
            runtimes: list("BENCH_RUNTIMES", "multi-thread,per-core")
                .into_iter()
                .filter(|r| r != "none")
                .collect(),
            compare,
            mix,
            pin: var("BENCH_PIN").is_none_or(|v| v != "0"),
            skip_nginx: var("BENCH_SKIP_NGINX").is_some_and(|v| v == "1"),
            force_rust_client: var("BENCH_FORCE_RUST_CLIENT").is_some_and(|v| v == "1"),
            scenarios: list("BENCH_SCENARIOS", "throughput,long,overload"),
        })
    }

    fn runs(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }
}

// ------------------------------------------------------------------ placement

/// Where the processes run. The bench pins itself (and so wrk, its child, and the
/// built-in client's threads) to the load generator's cores; each server is started
/// under `taskset` on its own.
struct Placement {
    /// `taskset -c` list for servers; `None`: nothing is pinned.
    server: Option<String>,
    /// Every core this bench may use, for servers that should not be pinned (the
    /// forwarding runs) while the bench itself is.
    all: String,
    /// What was done, or why nothing could be: printed with the results.
    note: String,
}

/// The CPUs this process may run on, from `Cpus_allowed_list` in `/proc/self/status`.
fn allowed_cpus() -> Vec<usize> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Vec::new();
    };
    let Some(list) = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
    else {
        return Vec::new();
    };
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.parse::<usize>().ok()),
        }
    }
    cpus
}

fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl Placement {
    fn decide(opts: &Options) -> Placement {
        let cpus = allowed_cpus();
        let all = cpu_list(&cpus);
        let unpinned = |why: String| Placement {
            server: None,
            all: all.clone(),
            note: format!("NOT PINNED: {why}; servers and load generator share the cores"),
        };
        if !opts.pin {
            return unpinned("BENCH_PIN=0".to_owned());
        }
        if !installed("taskset") {
            return unpinned("taskset is not installed".to_owned());
        }
        if cpus.len() <= opts.workers {
            return unpinned(format!(
                "{} cores allowed ({all}) and {} server workers leave none for the load generator",
                cpus.len(),
                opts.workers
            ));
        }
        let (server, client) = cpus.split_at(opts.workers);
        let (server, client) = (cpu_list(server), cpu_list(client));
        // Every thread of the bench (there is only this one yet) and what it starts.
        let pinned = Command::new("taskset")
            .args(["-a", "-p", "-c", &client, &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status();
        if !pinned.is_ok_and(|s| s.success()) {
            return unpinned(format!("`taskset -p -c {client}` on the bench failed"));
        }
        Placement {
            note: format!(
                "pinned: each server on core(s) {server} (taskset -c), the load generator on core(s) {client}"
            ),
            server: Some(server),
            all,
        }
    }

    /// `program` run on the server cores (or on every core when nothing is pinned).
    fn server_command(&self, program: &Path) -> Command {
        self.command_on(self.server.as_deref().unwrap_or(&self.all), program)
    }

    /// `program` on every core this bench may use (the forwarding runs).
    fn unpinned_command(&self, program: &Path) -> Command {
        self.command_on(&self.all, program)
    }

    fn command_on(&self, cpus: &str, program: &Path) -> Command {
        if cpus.is_empty() || !installed("taskset") {
            return Command::new(program);
        }
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(cpus).arg(program);
        cmd
    }
}

// ------------------------------------------------------------------ /proc readings

#[derive(Debug, Clone, Copy, Default)]
struct Rss {
    anon_kib: u64,
    file_kib: u64,
}

/// A process and its children (nginx's workers), from `/proc/<pid>/task/<pid>/children`.
fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    pids
}

/// RssAnon and RssFile of a process and its children (nginx workers), from /proc.
fn rss_of(pid: u32) -> Rss {
    let mut total = Rss::default();
    for p in with_children(pid) {
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

/// CPU time a process (all its threads) and its children (nginx's workers) spent.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    user: Duration,
    system: Duration,
}

impl Cpu {
    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            user: self.user.saturating_sub(before.user),
            system: self.system.saturating_sub(before.system),
        }
    }

    fn total(self) -> Duration {
        self.user + self.system
    }
}

/// utime and stime of a process and its children, from `/proc/<pid>/stat` (the
/// process's figures count every thread, those that ended included).
fn cpu_of(pid: u32) -> Cpu {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    });
    let (mut user, mut system) = (0u64, 0u64);
    for p in with_children(pid) {
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
        user += field(14);
        system += field(15);
    }
    Cpu {
        user: Duration::from_secs_f64(user as f64 / ticks),
        system: Duration::from_secs_f64(system as f64 / ticks),
    }
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

fn peak_of(samples: &[(Duration, Rss)]) -> Rss {
    samples.iter().fold(Rss::default(), |m, (_, r)| Rss {
        anon_kib: m.anon_kib.max(r.anon_kib),
        file_kib: m.file_kib.max(r.file_kib),
    })
}

// ------------------------------------------------------------------ servers

/// A server the throughput runs compare.
#[derive(Clone)]
enum ServerSpec {
    /// An oip-media binary with extra environment (`RUNTIME=…`, or what BENCH_COMPARE
    /// gave).
    Oip {
        label: String,
        binary: PathBuf,
        env: Vec<(String, String)>,
    },
    Nginx,
}

impl ServerSpec {
    /// This build in one `--runtime` layout.
    fn layout(runtime: &str) -> ServerSpec {
        ServerSpec::Oip {
            label: format!("oip-media/{runtime}"),
            binary: this_build(),
            env: vec![("RUNTIME".to_owned(), runtime.to_owned())],
        }
    }

    /// `NAME=BINARY[@VAR=VALUE,VAR=VALUE]`.
    fn parse_compare(raw: &str) -> BenchResult<ServerSpec> {
        let (label, rest) = raw
            .split_once('=')
            .ok_or_else(|| format!("BENCH_COMPARE entry `{raw}`: use NAME=BINARY[@VAR=VALUE,…]"))?;
        let (binary, env) = rest.split_once('@').unwrap_or((rest, ""));
        let env = env
            .split(',')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .ok_or_else(|| format!("BENCH_COMPARE `{raw}`: `{kv}` is not VAR=VALUE"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ServerSpec::Oip {
            label: label.to_owned(),
            binary: PathBuf::from(binary),
            env,
        })
    }

    fn label(&self) -> &str {
        match self {
            ServerSpec::Oip { label, .. } => label,
            ServerSpec::Nginx => "nginx",
        }
    }

    fn start(
        &self,
        corpus: &Path,
        workers: usize,
        placement: &Placement,
    ) -> BenchResult<ServerProc> {
        match self {
            ServerSpec::Oip { binary, env, .. } => {
                let env: Vec<(&str, String)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                start_oip_media_with(placement.server_command(binary), corpus, workers, &env)
            }
            ServerSpec::Nginx => start_nginx(
                corpus,
                workers,
                placement.server_command(Path::new("nginx")),
            ),
        }
    }
}

/// The oip-media binary this bench measures: Cargo's build of this checkout, or
/// `OIP_MEDIA_BIN` when the prebuilt bench runs on another machine (the 16-core run in
/// BENCHMARKS.md carried both binaries there; Cargo's absolute path does not travel).
fn this_build() -> PathBuf {
    std::env::var_os("OIP_MEDIA_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_oip-media")))
}

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

/// This build of oip-media (the service's default layout unless `env` says otherwise),
/// on the server cores when `pinned`, else on every core.
fn start_oip_media(
    media: &Path,
    workers: usize,
    env: &[(&str, String)],
    placement: &Placement,
    pinned: bool,
) -> BenchResult<ServerProc> {
    let binary = this_build();
    let cmd = if pinned {
        placement.server_command(&binary)
    } else {
        placement.unpinned_command(&binary)
    };
    start_oip_media_with(cmd, media, workers, env)
}

/// An oip-media binary started by `cmd` (the binary, or `taskset … binary`).
fn start_oip_media_with(
    mut cmd: Command,
    media: &Path,
    workers: usize,
    env: &[(&str, String)],
) -> BenchResult<ServerProc> {
    let port = free_port()?;
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

fn start_nginx(media: &Path, workers: usize, mut cmd: Command) -> BenchResult<ServerProc> {
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
    let child = cmd
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
/// (`If-Modified-Since`, answered 304 by both servers), 10 % first-64-KiB ranges; or
/// plain GETs only with `BENCH_MIX=get`.
const WRK_SCRIPT: &str = r#"
local paths, dates = {}, {}
local mix = os.getenv("BENCH_MIX") or "bench"
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
  if mix == "bench" and r <= 10 then
    return wrk.format("GET", paths[i], { ["If-Modified-Since"] = dates[i] })
  elseif mix == "bench" and r <= 20 then
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
        mix: String,
    },
    Rust {
        targets: Arc<Vec<Target>>,
        gets_only: bool,
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
            Generator::Wrk {
                script,
                targets,
                mix,
            } => {
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
                    .env("BENCH_MIX", mix)
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
            Generator::Rust { targets, gets_only } => {
                rust_client(addr, connections, threads, secs, targets, None, *gets_only)
            }
            Generator::Slow { targets, rate } => rust_client(
                addr,
                connections,
                threads,
                secs,
                targets,
                Some(*rate),
                false,
            ),
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
    gets_only: bool,
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
            set.spawn(async move {
                one_client(addr, deadline, &targets, c as u64, read_rate, gets_only).await
            });
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
    gets_only: bool,
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
                _ if gets_only => String::new(),
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

/// One measured run of one server.
#[derive(Clone)]
struct Measured {
    load: LoadResult,
    /// CPU time the server spent during the run.
    cpu: Cpu,
    /// Before the run (after the warm-up), at the peak, and at the last sample.
    idle: Rss,
    peak: Rss,
    last: Rss,
    connections: usize,
}

impl Measured {
    fn per_request_us(&self, time: Duration) -> f64 {
        time.as_secs_f64() * 1e6 / self.load.requests.max(1) as f64
    }
    fn user_us(&self) -> f64 {
        self.per_request_us(self.cpu.user)
    }
    fn sys_us(&self) -> f64 {
        self.per_request_us(self.cpu.system)
    }
    fn total_us(&self) -> f64 {
        self.per_request_us(self.cpu.total())
    }
    /// RssAnon above the warmed-up idle server, at the peak of the run, per connection.
    fn anon_per_conn_kib(&self) -> f64 {
        self.peak.anon_kib.saturating_sub(self.idle.anon_kib) as f64 / self.connections as f64
    }
}

fn measure(
    server: &ServerProc,
    generator: &Generator,
    connections: usize,
    threads: usize,
    secs: u64,
) -> BenchResult<(Measured, Vec<(Duration, Rss)>)> {
    let pid = server.pid();
    let idle = rss_of(pid);
    let sampler = Sampler::start(pid);
    let before = cpu_of(pid);
    let load = generator.run(server.addr, connections, threads, secs)?;
    let cpu = cpu_of(pid).since(before);
    let samples = sampler.finish();
    let peak = peak_of(&samples);
    let last = samples.last().map(|(_, r)| *r).unwrap_or(idle);
    Ok((
        Measured {
            load,
            cpu,
            idle,
            peak,
            last,
            connections,
        },
        samples,
    ))
}

const LABEL: usize = 24;

fn header() {
    println!(
        "{:<5} {:<LABEL$} {:>5} {:>8} {:>7} {:>7} {:>7} {:>6} {:>7} {:>7} {:>8} {:>9} {:>9} {:>8}",
        "round",
        "server",
        "conns",
        "req/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "user µs",
        "sys µs",
        "total µs",
        "anon0 KiB",
        "anonpk KiB",
        "KiB/conn"
    );
}

fn print_row(round: &str, label: &str, m: &Measured) {
    let l = &m.load;
    println!(
        "{round:<5} {label:<LABEL$} {:>5} {:>8.0} {:>7.0} {:>7.2} {:>7.2} {:>6} {:>7.1} {:>7.1} {:>8.1} {:>9} {:>9} {:>8.2}",
        m.connections,
        l.rps(),
        l.mbps(),
        l.p50_us as f64 / 1000.0,
        l.p99_us as f64 / 1000.0,
        l.socket_errors + l.status_errors,
        m.user_us(),
        m.sys_us(),
        m.total_us(),
        m.idle.anon_kib,
        m.peak.anon_kib,
        m.anon_per_conn_kib(),
    );
}

/// One throughput run, kept for the summary.
struct Row {
    round: usize,
    label: String,
    m: Measured,
}

/// The side-by-side runs: every server at every connection count, servers taking turns,
/// `rounds` times.
fn throughput(
    opts: &Options,
    corpus: &Path,
    generator: &Generator,
    servers: &[ServerSpec],
    placement: &Placement,
) -> BenchResult<Vec<Row>> {
    println!(
        "\n## Throughput and CPU per request ({} s per run after {} s of warm-up, {} round(s), servers in turn)",
        opts.secs, opts.warm_secs, opts.rounds
    );
    header();
    let mut rows = Vec::new();
    for round in 1..=opts.rounds {
        for &connections in &opts.connections {
            let mut this_round = Vec::new();
            for spec in servers {
                let server = spec.start(corpus, opts.workers, placement)?;
                if opts.warm_secs > 0 {
                    let _ = generator.run(
                        server.addr,
                        connections.min(64),
                        opts.client_threads,
                        opts.warm_secs,
                    )?;
                }
                let (m, _) = measure(
                    &server,
                    generator,
                    connections,
                    opts.client_threads,
                    opts.secs,
                )?;
                drop(server);
                print_row(&round.to_string(), spec.label(), &m);
                this_round.push((spec.label().to_owned(), m));
            }
            if let Some((_, nginx)) = this_round.iter().find(|(l, _)| l == "nginx") {
                for (label, m) in this_round.iter().filter(|(l, _)| l != "nginx") {
                    println!(
                        "      {label} / nginx at {connections}: CPU/request {:.2}x (user {:.2}x, sys {:.2}x), req/s {:.2}x",
                        m.total_us() / nginx.total_us(),
                        m.user_us() / nginx.user_us(),
                        m.sys_us() / nginx.sys_us(),
                        m.load.rps() / nginx.load.rps()
                    );
                }
            }
            rows.extend(
                this_round
                    .into_iter()
                    .map(|(label, m)| Row { round, label, m }),
            );
        }
    }
    Ok(rows)
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn spread(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// Ratios of `label` to nginx, taken within each round: (median, min, max).
fn ratio_to_nginx(
    rows: &[Row],
    label: &str,
    connections: usize,
    value: impl Fn(&Measured) -> f64,
) -> Option<(f64, f64, f64)> {
    let ratios: Vec<f64> = rows
        .iter()
        .filter(|r| r.label == label && r.m.connections == connections)
        .filter_map(|r| {
            rows.iter()
                .find(|n| {
                    n.label == "nginx" && n.round == r.round && n.m.connections == connections
                })
                .map(|n| value(&r.m) / value(&n.m))
        })
        .collect();
    if ratios.is_empty() {
        return None;
    }
    let (lo, hi) = spread(&ratios);
    Some((median(&ratios), lo, hi))
}

fn print_throughput_summary(opts: &Options, rows: &[Row], labels: &[String]) {
    println!(
        "\nmeans over {} round(s) [min–max of total µs/request]; ratios to nginx taken within each round: median [min–max]",
        opts.rounds
    );
    println!(
        "{:<LABEL$} {:>5} {:>8} {:>7} {:>7} {:>8} {:>15} {:>8} {:>20} {:>20}",
        "server",
        "conns",
        "req/s",
        "user µs",
        "sys µs",
        "total µs",
        "[range]",
        "KiB/conn",
        "CPU/req vs nginx",
        "req/s vs nginx"
    );
    for &connections in &opts.connections {
        for label in labels {
            let runs: Vec<&Measured> = rows
                .iter()
                .filter(|r| &r.label == label && r.m.connections == connections)
                .map(|r| &r.m)
                .collect();
            if runs.is_empty() {
                continue;
            }
            let of = |f: fn(&Measured) -> f64| runs.iter().map(|m| f(m)).collect::<Vec<f64>>();
            let totals = of(Measured::total_us);
            let (lo, hi) = spread(&totals);
            let ratio = |value: fn(&Measured) -> f64| {
                ratio_to_nginx(rows, label, connections, value)
                    .filter(|_| label != "nginx")
                    .map(|(m, lo, hi)| format!("{m:.2}x [{lo:.2}–{hi:.2}]"))
                    .unwrap_or_else(|| "-".to_owned())
            };
            println!(
                "{label:<LABEL$} {connections:>5} {:>8.0} {:>7.1} {:>7.1} {:>8.1} {:>15} {:>8.2} {:>20} {:>20}",
                mean(&of(|m| m.load.rps())),
                mean(&of(Measured::user_us)),
                mean(&of(Measured::sys_us)),
                mean(&totals),
                format!("[{lo:.1}–{hi:.1}]"),
                mean(&of(Measured::anon_per_conn_kib)),
                ratio(Measured::total_us),
                ratio(|m| m.load.rps()),
            );
        }
    }
}

/// RssAnon, KiB, at the end of a round: the median of the samples taken in the second
/// up to `cutoff` (None when there are none).
fn end_of_round(samples: &[(Duration, Rss)], cutoff: Duration) -> Option<u64> {
    let from = cutoff.saturating_sub(Duration::from_secs(1));
    let mut last_second: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t > from && *t <= cutoff)
        .map(|(_, r)| r.anon_kib)
        .collect();
    last_second.sort_unstable();
    last_second.get(last_second.len() / 2).copied()
}

/// The least-squares slope of `kib` against its index, KiB per round (None for fewer
/// than two values).
fn trend_per_round(kib: &[u64]) -> Option<f64> {
    if kib.len() < 2 {
        return None;
    }
    let n = kib.len() as f64;
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = kib.iter().map(|&k| k as f64).sum::<f64>() / n;
    let (mut covariance, mut variance) = (0.0, 0.0);
    for (i, &k) in kib.iter().enumerate() {
        let dx = i as f64 - mean_x;
        covariance += dx * (k as f64 - mean_y);
        variance += dx * dx;
    }
    Some(covariance / variance)
}

/// What the long run found.
struct Drift {
    /// RssAnon change, %, from the end of the first round to the end of the last, with
    /// the connections open.
    under_load_pct: f64,
    /// The same, one second after each round's connections closed (what stays).
    after_pct: f64,
    requests: u64,
}

/// Rounds of `BENCH_LONG_CONNECTIONS` fresh connections each, back to back on one
/// server, for `BENCH_LONG_SECS`: RssAnon at the end of every round (the median of its
/// last second), with the connections open, and one second after they closed.
fn long_run(
    opts: &Options,
    corpus: &Path,
    generator: &Generator,
    placement: &Placement,
    cores: usize,
) -> BenchResult<Drift> {
    let rounds = (opts.long_secs / opts.secs.max(1)).max(2);
    let connections = opts.long_connections;
    println!(
        "\n## Long run: memory drift ({rounds} rounds of {} s, {connections} new connections each, oip-media in its default layout)",
        opts.secs
    );
    let oip = start_oip_media(corpus, opts.workers, &[], placement, true)?;
    println!(
        "{:<5} {:>10} {:>8} {:>6} {:>22} {:>18} {:>22}",
        "round",
        "requests",
        "req/s",
        "errors",
        "RssAnon at end, KiB",
        "last sample, KiB",
        "1 s after close, KiB"
    );
    let started = rss_of(oip.pid());
    let (mut ends, mut afters, mut requests) = (Vec::new(), Vec::new(), 0);
    for round in 1..=rounds {
        let (m, samples) = measure(&oip, generator, connections, opts.client_threads, opts.secs)?;
        // The round's end: the samples of its last second while the load generator still
        // held its connections. One sample alone moves by ±100 KiB (~2 % here) with the
        // number of requests in flight at that instant and the allocator's decay, as
        // much as the target it decides; their median does not.
        let cutoff = Duration::from_secs_f64(opts.secs as f64 * 0.95);
        let last = samples
            .iter()
            .rev()
            .find(|(t, _)| *t <= cutoff)
            .map_or(m.last, |(_, r)| *r);
        let end = end_of_round(&samples, cutoff).unwrap_or(last.anon_kib);
        std::thread::sleep(Duration::from_secs(1));
        let after = rss_of(oip.pid());
        requests += m.load.requests;
        println!(
            "{round:<5} {:>10} {:>8.0} {:>6} {:>22} {:>18} {:>22}",
            m.load.requests,
            m.load.rps(),
            m.load.socket_errors + m.load.status_errors,
            end,
            last.anon_kib,
            after.anon_kib
        );
        ends.push(end);
        afters.push(after.anon_kib);
    }
    let drift = |v: &[u64]| {
        let (first, last) = (v[0] as f64, v[v.len() - 1] as f64);
        (last - first) / first.max(1.0) * 100.0
    };
    let trend = trend_per_round(&ends[1..]);
    let result = Drift {
        under_load_pct: drift(&ends),
        after_pct: drift(&afters),
        requests,
    };
    println!(
        "RssAnon idle {} KiB before the first round; end of round 1 → end of round {rounds}: {} → {} KiB under load (drift {:+.2} %), {} → {} KiB after close (drift {:+.2} %); {} requests ({})",
        started.anon_kib,
        ends[0],
        ends[ends.len() - 1],
        result.under_load_pct,
        afters[0],
        afters[afters.len() - 1],
        result.after_pct,
        requests,
        if requests >= 200_000 {
            "≥ 200,000"
        } else {
            "UNDER 200,000: raise BENCH_LONG_SECS"
        },
    );
    if let Some(trend) = trend {
        println!(
            "trend of the round ends from round 2 on (least squares): {trend:+.1} KiB per round (a leak grows every round; warm-up ends in round 1 or 2)"
        );
    }
    // The table's two RssAnon columns, round by round.
    let per_round = |kib: &[u64]| {
        kib.iter()
            .enumerate()
            .map(|(i, &k)| ((i + 1) as f64, k as f64 / 1024.0))
            .collect::<Vec<_>>()
    };
    svg::write_chart(
        "load-long-run-rssanon.svg",
        &svg::LineChart {
            title: format!(
                "oip-media RssAnon over the long run: {rounds} rounds of {} s, {connections} new connections each",
                opts.secs
            ),
            subtitle: chart_subtitle(opts, placement, cores),
            x_label: format!("round ({requests} requests in all)"),
            y_label: "RssAnon (MiB)".into(),
            x_ticks: Some((1..=rounds).map(|r| (r as f64, r.to_string())).collect()),
            y_from_zero: true,
            series: vec![
                svg::Series::new(
                    "at the end of the round (median of its last second), connections open",
                    per_round(&ends),
                    svg::Style::Line,
                ),
                svg::Series::new(
                    "1 s after the connections closed",
                    per_round(&afters),
                    svg::Style::Line,
                ),
            ],
        }
        .to_svg(),
    );
    Ok(result)
}

/// What a chart's second line says: the command's settings, the machine, the commit.
fn chart_subtitle(opts: &Options, placement: &Placement, cores: usize) -> String {
    format!(
        "cargo bench --bench load · BENCH_SECS={} BENCH_ROUNDS={} BENCH_WORKERS={} · {cores} cores ({}), {} · commit {}",
        opts.secs,
        opts.rounds,
        opts.workers,
        cpu_model(),
        if placement.server.is_some() {
            "pinned"
        } else {
            "unpinned"
        },
        svg::commit()
    )
}

/// CPU µs per request (user + system, mean over the rounds) against connections, one
/// line per server: the throughput table's `total µs` column as a picture.
fn chart_cpu_per_request(
    opts: &Options,
    rows: &[Row],
    labels: &[String],
    placement: &Placement,
    cores: usize,
) {
    let series = labels
        .iter()
        .map(|label| {
            let points = opts
                .connections
                .iter()
                .filter_map(|&connections| {
                    let totals: Vec<f64> = rows
                        .iter()
                        .filter(|r| &r.label == label && r.m.connections == connections)
                        .map(|r| r.m.total_us())
                        .collect();
                    (!totals.is_empty()).then(|| ((connections as f64).log2(), mean(&totals)))
                })
                .collect();
            svg::Series::new(label.clone(), points, svg::Style::Line)
        })
        .collect();
    svg::write_chart(
        "load-cpu-per-request.svg",
        &svg::LineChart {
            title: format!(
                "CPU per request against connections (user + system, mean of {} round(s))",
                opts.rounds
            ),
            subtitle: chart_subtitle(opts, placement, cores),
            x_label: "connections (keep-alive, wrk)".into(),
            y_label: "CPU µs per request".into(),
            x_ticks: Some(
                opts.connections
                    .iter()
                    .map(|&c| ((c as f64).log2(), c.to_string()))
                    .collect(),
            ),
            y_from_zero: true,
            series,
        }
        .to_svg(),
    );
}

fn overload(
    opts: &Options,
    corpus: &Path,
    targets: &Arc<Vec<Target>>,
    files: &[CorpusFile],
    placement: &Placement,
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
    let oip = start_oip_media(corpus, opts.workers, &env, placement, true)?;
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
    print_row("-", oip.name, &m);
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

/// The ratios at a glance, one line per oip-media server, against the issue's targets.
fn print_summary(
    opts: &Options,
    rows: &[Row],
    labels: &[String],
    drift: Option<&Drift>,
    placement: &Placement,
) {
    println!();
    let at = |label: &str, value: fn(&Measured) -> f64| {
        opts.connections
            .iter()
            .map(|&c| match ratio_to_nginx(rows, label, c, value) {
                Some((m, _, _)) => format!("{c}: {m:.2}x"),
                None => format!("{c}: -"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pinned = if placement.server.is_some() {
        "pinned"
    } else {
        "NOT pinned"
    };
    for label in labels.iter().filter(|l| *l != "nginx") {
        let anon = opts
            .connections
            .iter()
            .map(|&c| {
                let v: Vec<f64> = rows
                    .iter()
                    .filter(|r| &r.label == label && r.m.connections == c)
                    .map(|r| r.m.anon_per_conn_kib())
                    .collect();
                format!("{c}: {:.1}", mean(&v))
            })
            .collect::<Vec<_>>()
            .join(", ");
        let drift = drift.map_or_else(
            || "drift: not run".to_owned(),
            |d| {
                format!(
                    "drift (long run, default layout) {:+.2} % under load, {:+.2} % after close (target < 2 %)",
                    d.under_load_pct, d.after_pct
                )
            },
        );
        println!(
            "summary {label} / nginx ({pinned}, {} worker(s), median of {} round(s)): CPU/request {} (target ≤ 1.0x) | user {} | sys {} | req/s {} (target ≥ 1.0x) | RssAnon KiB/conn {} (target ≤ 16 at 1024) | {drift}",
            opts.workers,
            opts.rounds,
            at(label, Measured::total_us),
            at(label, Measured::user_us),
            at(label, Measured::sys_us),
            at(label, |m| m.load.rps()),
            anon,
        );
    }
    if let Some(d) = drift
        && (labels.iter().all(|l| l == "nginx") || rows.is_empty())
    {
        println!(
            "summary drift: {:+.2} % under load, {:+.2} % after close over {} requests (target < 2 %)",
            d.under_load_pct, d.after_pct, d.requests
        );
    }
}

/// The files to serve: the generated GIF corpus, or `count` files of exactly `size`
/// bytes (random, so nothing compresses or dedupes).
fn write_media(dir: &Path, opts: &Options) -> BenchResult<Vec<CorpusFile>> {
    let Some(size) = opts.file_size else {
        return Ok(oip_media::sample::write_corpus(
            dir,
            "fitnessally",
            opts.files,
            42,
        )?);
    };
    let folder = dir.join("web/bench");
    std::fs::create_dir_all(&folder)?;
    let mut rng = fastrand::Rng::with_seed(42);
    let mut files = Vec::new();
    for i in 0..200 {
        let fs_path = folder.join(format!("f{i}.gif"));
        let bytes: Vec<u8> = (0..size).map(|_| rng.u8(..)).collect();
        std::fs::write(&fs_path, bytes)?;
        files.push(CorpusFile {
            url_path: format!("/media/bench/f{i}.gif"),
            fs_path,
            len: size,
            width: 0,
        });
    }
    Ok(files)
}

fn write_targets(dir: &Path, files: &[CorpusFile]) -> BenchResult<(PathBuf, Vec<Target>)> {
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

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "?".to_owned())
}

fn main() -> BenchResult<()> {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let opts = Options::from_env(cores)?;
    // Before any thread starts: the bench and its children (wrk) go to the load
    // generator's cores.
    let placement = Placement::decide(&opts);
    println!("# oip-media load benchmark");
    println!(
        "machine: {cores} cores ({}), load average {} at start; server workers: {}; load threads: {}",
        cpu_model(),
        load_average(),
        opts.workers,
        opts.client_threads
    );
    println!("placement: {}", placement.note);

    let corpus = tempfile::tempdir()?;
    let started = Instant::now();
    let files = write_media(corpus.path(), &opts)?;
    let total: u64 = files.iter().map(|f| f.len).sum();
    println!(
        "corpus: {} files, {:.1} MB ({} x180, {} x360, {} x720, {} of a fixed size), written in {:.1}s",
        files.len(),
        total as f64 / 1e6,
        files.iter().filter(|f| f.width == 180).count(),
        files.iter().filter(|f| f.width == 360).count(),
        files.iter().filter(|f| f.width == 720).count(),
        files.iter().filter(|f| f.width == 0).count(),
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
            mix: opts.mix.clone(),
        }
    } else {
        Generator::Rust {
            targets: Arc::clone(&targets),
            gets_only: opts.mix == "get",
        }
    };
    println!("load generator: {}", generator.name());
    println!(
        "request mix: {}; uniform over the corpus",
        if opts.mix == "get" {
            "plain GETs only (BENCH_MIX=get)"
        } else {
            "80% GET, 10% If-Modified-Since (304), 10% Range bytes=0-65535"
        }
    );
    println!(
        "CPU µs per request: utime and stime of the server process (all threads; nginx: master + workers) from /proc/<pid>/stat over the measured run, / requests answered; \
         KiB/conn: (peak RssAnon during the run − RssAnon of the warmed-up idle server) / connections"
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
    let mut servers: Vec<ServerSpec> = opts
        .runtimes
        .iter()
        .map(|r| ServerSpec::layout(r))
        .collect();
    servers.extend(opts.compare.iter().cloned());
    if nginx_available {
        servers.push(ServerSpec::Nginx);
    }
    let labels: Vec<String> = servers.iter().map(|s| s.label().to_owned()).collect();

    let mut rows = Vec::new();
    if opts.runs("throughput") {
        rows = throughput(&opts, corpus.path(), &generator, &servers, &placement)?;
        print_throughput_summary(&opts, &rows, &labels);
        chart_cpu_per_request(&opts, &rows, &labels, &placement, cores);
    }
    let mut drift = None;
    if opts.runs("long") {
        drift = Some(long_run(
            &opts,
            corpus.path(),
            &generator,
            &placement,
            cores,
        )?);
    }
    if opts.runs("overload") {
        overload(&opts, corpus.path(), &targets, &files, &placement)?;
    }
    if opts.runs("forwarding") {
        forwarding(&opts, corpus.path(), &generator, &placement)?;
    }
    println!("\nload average {} at the end", load_average());
    print_summary(&opts, &rows, &labels, drift.as_ref(), &placement);
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
fn start_forwarding_nginx(
    oip_media: SocketAddr,
    workers: usize,
    placement: &Placement,
) -> BenchResult<ServerProc> {
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
    let child = placement
        .unpinned_command(Path::new("nginx"))
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
fn start_indexer_hook(oip_media: SocketAddr, placement: &Placement) -> BenchResult<ServerProc> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/indexer-proxy");
    if !dir.join("node_modules/http-proxy-middleware").is_dir() {
        return Err(
            "tests/indexer-proxy/node_modules is missing: run `(cd tests/indexer-proxy && npm ci)`"
                .into(),
        );
    }
    let port = free_port()?;
    let child = placement
        .unpinned_command(Path::new("node"))
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
    let oip_cpu = cpu_of(oip.pid()).since(oip_cpu0).total();
    let proxy_cpu = proxy
        .zip(proxy_cpu0)
        .map(|(p, before)| cpu_of(p.pid()).since(before).total());
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

fn forwarding(
    opts: &Options,
    corpus: &Path,
    generator: &Generator,
    placement: &Placement,
) -> BenchResult<()> {
    println!(
        "\n## Forwarding: oip-media direct, behind nginx (deploy/nginx.conf), behind the indexer's node hook ({} s per run; servers and proxies NOT pinned, they share every core)",
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
        let oip = start_oip_media(corpus, opts.workers, &[], placement, false)?;
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
            let front = start_forwarding_nginx(oip.addr, opts.workers, placement)?;
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
        match node.then(|| start_indexer_hook(oip.addr, placement)) {
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
