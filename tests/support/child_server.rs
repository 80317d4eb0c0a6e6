//! The `oip-media` binary run as a child process, with its RssAnon sampled from
//! `/proc/<pid>/status`: memory measured this way belongs to the server alone, not to
//! the test or bench that drives it. Used by `tests/resolve_memory.rs` and
//! `benches/resolve_memory.rs`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A running `oip-media` child. Killed when dropped.
pub struct ChildServer {
    child: Child,
    pub addr: SocketAddr,
    _media: tempfile::TempDir,
    /// Every line the child logged (stdout), in order.
    logs: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ChildServer {
    /// Starts `binary` on a free loopback port with an empty media root and `env`
    /// (name, value) on top; waits (up to 30 s) for it to say where it listens.
    pub fn start(binary: &Path, env: &[(&str, String)]) -> ChildServer {
        let media = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(media.path().join("web")).expect("mkdir web");
        let mut command = Command::new(binary);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("BIND", "127.0.0.1")
            .env("PORT", "0")
            .env("MEDIA_DIR", media.path())
            .env("DERIVED_DIR", media.path().join(".derived"))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start oip-media");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = Arc::clone(&logs);
        std::thread::spawn(move || {
            // Read every line (so the child never blocks on a full pipe); report the
            // address once.
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                kept.lock().expect("logs").push(line.clone());
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr.parse().expect("address"),
            Err(_) => {
                let _ = child.kill();
                panic!("oip-media did not start within 30 s");
            }
        };
        ChildServer {
            child,
            addr,
            _media: media,
            logs,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line the child has logged so far, joined by newlines.
    pub fn logs(&self) -> String {
        self.logs.lock().expect("logs").join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// RssAnon of the child now, in bytes.
    pub fn rss_anon(&self) -> u64 {
        rss_anon(self.pid())
    }

    /// Samples RssAnon every 5 ms in a thread until the returned sampler is stopped.
    pub fn sample(&self) -> Sampler {
        Sampler::start(self.pid())
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// RssAnon of process `pid`, in bytes (0 if it cannot be read).
pub fn rss_anon(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// The highest RssAnon seen while it ran.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_anon(pid)));
        let thread = {
            let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_anon(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Sampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the peak seen.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// What one hostile run measured, in bytes above the idle level.
#[derive(Debug, Clone, Copy)]
pub struct MemoryRun {
    pub idle: u64,
    pub peak_above_idle: u64,
    pub retained_above_idle: u64,
}

impl MemoryRun {
    pub fn mib(bytes: u64) -> f64 {
        bytes as f64 / (1024.0 * 1024.0)
    }
}

/// Sends `body` to `/api/resolve` of `server`; the status (0 when the request failed
/// outright) and the body length.
pub async fn post_resolve(
    client: &reqwest::Client,
    server_url: &str,
    body: String,
) -> (u16, usize) {
    match client
        .post(format!("{server_url}/api/resolve"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(response) => {
            let status = response.status().as_u16();
            let len = response.bytes().await.map(|b| b.len()).unwrap_or(0);
            (status, len)
        }
        Err(_) => (0, 0),
    }
}

/// Waits `settle`, then reads RssAnon: what a burst left behind.
pub fn retained_after(pid: u32, settle: Duration) -> u64 {
    let until = Instant::now() + settle;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    rss_anon(pid)
}
