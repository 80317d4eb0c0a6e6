//! RssAnon per open keep-alive connection (issue 12 §3): each server gets `N` keep-alive
//! connections, one GET on each, held idle; its RssAnon above idle divided by `N` is the
//! figure, and rounds of the same show whether memory grows after the first. See
//! `tests/support/conn_memory.rs` for the client and what each figure is.
//!
//! Run: `cargo bench --bench conn_memory`. Settings (environment, all optional):
//! - `BENCH_CONNECTIONS`: comma list of connection counts (default `1024`);
//! - `BENCH_ROUNDS`: rounds per count (default 4);
//! - `BENCH_WORKERS`: worker threads of oip-media / worker processes of nginx (default 1);
//! - `BENCH_BINARIES`: `name=path,name=path` oip-media binaries to compare (default: this
//!   build's `oip-media`), each run with the same settings, in turn;
//! - `BENCH_SKIP_NGINX=1`: no nginx (otherwise it runs when installed, for reference).
//!
//! Serves the bundled `media/` GIFs (100 KB to 1.3 MB); the page cache is warm after
//! the first request of each. Each server runs alone; nothing else is started.
//!
//! Then a heap census explains the figure: the same client against oip-media run in this
//! process (one worker thread, the system allocator wrapped in a counter), reporting the
//! heap bytes and blocks each held connection keeps, by block size. RssAnon counts only
//! the pages a block has touched, so the census is an upper bound of the heap's share.

#[path = "../tests/support/conn_memory.rs"]
mod conn_memory;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use conn_memory::Settings;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

#[path = "support/census.rs"]
mod census;

/// The system allocator, counted, for the heap census.
#[global_allocator]
static ALLOCATOR: census::Counting<std::alloc::System> = census::Counting(std::alloc::System);

struct Server {
    child: Child,
    addr: SocketAddr,
    _scratch: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first (nginx's master then stops its workers), then make sure.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> BenchResult<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(addr: SocketAddr) -> BenchResult<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("nothing listening on {addr}").into())
}

fn start_oip_media(binary: &Path, media: &Path, workers: usize) -> BenchResult<Server> {
    let port = free_port()?;
    let child = Command::new(binary)
        .env("MEDIA_DIR", media)
        .env("PORT", port.to_string())
        .env("BIND", "127.0.0.1")
        .env("WORKERS", workers.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(addr)?;
    Ok(Server {
        child,
        addr,
        _scratch: None,
    })
}

fn start_nginx(media: &Path, workers: usize) -> BenchResult<Server> {
    let scratch = tempfile::tempdir()?;
    let port = free_port()?;
    let dir = scratch.path().display();
    let conf = format!(
        "user root;\nworker_processes {workers};\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 10000000;\n  keepalive_timeout 30s;\n\
           open_file_cache max=20000 inactive=60s;\n  open_file_cache_valid 1s;\n\
           client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
           types {{ image/gif gif; }}\n  default_type application/octet-stream;\n\
           server {{\n    listen 127.0.0.1:{port};\n    location /media/ {{\n      alias {web}/;\n    }}\n  }}\n}}\n",
        web = media.join("web").display()
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
    Ok(Server {
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

/// `/media/<project>/<file>` of every GIF under `media/web`.
fn gif_paths(media: &Path) -> BenchResult<Vec<String>> {
    let mut paths = Vec::new();
    for project in std::fs::read_dir(media.join("web"))? {
        let project = project?;
        if !project.file_type()?.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(project.path())? {
            let name = file?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".gif") {
                let encoded = name.replace('(', "%28").replace(')', "%29");
                paths.push(format!(
                    "/media/{}/{encoded}",
                    project.file_name().to_string_lossy()
                ));
            }
        }
    }
    paths.sort();
    Ok(paths)
}

/// Raises this process's open-file limit to its hard limit: 1,024 client sockets do
/// not fit the usual soft limit of 1,024.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            eprintln!("note: cannot raise the open-file limit: {error}");
        }
    }
}

fn main() -> BenchResult<()> {
    let var = |k: &str| std::env::var(k).ok();
    let counts: Vec<usize> = var("BENCH_CONNECTIONS")
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1024]);
    let rounds = var("BENCH_ROUNDS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let workers = var("BENCH_WORKERS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let binaries: Vec<(String, PathBuf)> = match var("BENCH_BINARIES") {
        Some(list) => list
            .split(',')
            .filter_map(|e| e.split_once('='))
            .map(|(n, p)| (n.to_owned(), PathBuf::from(p)))
            .collect(),
        None => vec![(
            "oip-media".to_owned(),
            PathBuf::from(env!("CARGO_BIN_EXE_oip-media")),
        )],
    };
    let nginx = var("BENCH_SKIP_NGINX").is_none_or(|v| v != "1") && installed("nginx");
    let media = Path::new(env!("CARGO_MANIFEST_DIR")).join("media");
    let paths = gif_paths(&media)?;
    raise_fd_limit();
    println!(
        "# RssAnon per keep-alive connection: {} GIFs, {workers} worker(s), {rounds} rounds{}",
        paths.len(),
        if nginx {
            ", nginx for reference"
        } else {
            ", nginx skipped (not installed or BENCH_SKIP_NGINX=1)"
        }
    );
    for &connections in &counts {
        let settings = Settings {
            connections,
            rounds,
            ..Settings::default()
        };
        for (name, binary) in &binaries {
            let server = start_oip_media(binary, &media, workers)?;
            let pid = server.child.id();
            let found = conn_memory::measure(server.addr, &paths, &|| vec![pid], settings)?;
            print!("{}", found.report(&format!("{name}, {connections} conns")));
        }
        if nginx {
            let server = start_nginx(&media, workers)?;
            let pid = server.child.id();
            let found = conn_memory::measure(
                server.addr,
                &paths,
                &|| conn_memory::process_tree(pid),
                settings,
            )?;
            print!("{}", found.report(&format!("nginx, {connections} conns")));
        }
    }
    heap_census(&media, &paths, *counts.last().unwrap_or(&1024))?;
    Ok(())
}

/// Heap kept per held connection by oip-media in this process, by block size.
fn heap_census(media: &Path, paths: &[String], connections: usize) -> BenchResult<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut config = oip_media::Config::for_media_dir(media);
    // The census follows `FAST_LANE` as the measured servers do, so that it explains the
    // lane's figure when the lane is on.
    if std::env::var("FAST_LANE").is_ok_and(|lane| lane == "on") {
        config.server.fast_lane = oip_media::config::FastLane::On;
    }
    let lane = config.server.fast_lane;
    let server = runtime.block_on(oip_media::start(config))?;
    let addr = server.local_addr();
    for path in paths {
        drop(conn_memory::request_and_keep(addr, path)?);
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = census::snapshot();
    let mut held = Vec::with_capacity(connections);
    for i in 0..connections {
        held.push(conn_memory::request_and_keep(
            addr,
            &paths[i % paths.len()],
        )?);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = census::snapshot();
    let n = connections as f64;
    let (mut bytes, mut blocks) = (0i64, 0i64);
    println!(
        "heap census, oip-media in-process ({connections} held connections, 1 worker, fast lane {lane:?}): per connection"
    );
    for c in 0..census::CLASSES {
        let (db, dn) = (after[c].0 - before[c].0, after[c].1 - before[c].1);
        bytes += db;
        blocks += dn;
        if dn.abs() as f64 >= n / 4.0 {
            println!(
                "  blocks of {:>6}–{:>6} B: {:>5.2} blocks, {:>7.0} B",
                census::class_limit(c) / 2 + 1,
                census::class_limit(c),
                dn as f64 / n,
                db as f64 / n
            );
        }
    }
    println!(
        "  total: {:.1} blocks, {:.0} B ({:.1} KiB) of heap per connection",
        blocks as f64 / n,
        bytes as f64 / n,
        bytes as f64 / n / 1024.0
    );
    drop(held);
    runtime.block_on(server.shutdown());
    Ok(())
}
