//! Shared helpers for integration tests: the one test-server fixture ([`TestServer`]: a
//! real server on 127.0.0.1:0 over a temp media root, stopped by the test), a raw HTTP/1.1
//! client that sends paths exactly as written (no normalisation), so hostile paths reach
//! the server unchanged, and the media, relay and Elasticsearch stand-ins.
#![allow(dead_code)]

pub mod elastic;
pub mod media;
pub mod relay_stub;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use serde_json::{Value, json};

/// A running server over its own temp media root; shut down with [`TestServer::stop`].
/// Derefs to the [`oip_media::RunningServer`] (its address, app and state).
pub struct TestServer {
    pub server: oip_media::RunningServer,
    pub addr: SocketAddr,
    pub media: tempfile::TempDir,
    /// `http://<addr>`.
    pub base: String,
    /// A client for this server (no proxy from the environment).
    pub client: reqwest::Client,
}

impl std::ops::Deref for TestServer {
    type Target = oip_media::RunningServer;

    fn deref(&self) -> &oip_media::RunningServer {
        &self.server
    }
}

impl TestServer {
    /// Starts a server over a fresh media root (`web/fitnessally/` and `generated/`
    /// created), with `configure` applied to the default test config.
    pub async fn start(configure: impl FnOnce(&mut oip_media::Config)) -> TestServer {
        let media = media_root();
        std::fs::create_dir_all(media.path().join("generated")).expect("mkdir");
        start_with(media, configure).await
    }

    /// Path of `web/<rel>` inside the media root.
    pub fn web(&self, rel: &str) -> PathBuf {
        self.media.path().join("web").join(rel)
    }

    /// The media root (`MEDIA_DIR`).
    pub fn media_dir(&self) -> &Path {
        self.media.path()
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A GET through the HTTP client.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// A GET with extra headers through the HTTP client.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self.client.get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request")
    }

    /// Writes `MEDIA_DIR/<id>/original` (and the manifest, if any) the way the
    /// indexer does: temp file, then rename.
    pub fn put_media(&self, id: &str, bytes: &[u8], manifest: Option<serde_json::Value>) {
        let dir = self.media_dir().join(id);
        std::fs::create_dir_all(&dir).expect("mkdir");
        media::write_atomically(&dir.join("original"), bytes);
        if let Some(manifest) = manifest {
            media::write_atomically(
                &dir.join("manifest.json"),
                &serde_json::to_vec(&manifest).expect("json"),
            );
        }
    }

    /// Writes `MEDIA_DIR/web/fitnessally/<name>`.
    pub fn put_web(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.media_dir().join("web/fitnessally").join(name);
        media::write_atomically(&path, bytes);
        path
    }

    /// The derived folder of this server.
    pub fn derived_dir(&self) -> PathBuf {
        self.server.app().state().config.derived.derived_dir.clone()
    }

    /// Files in the derived folder (temp files included, its naming key not) and their
    /// total size.
    pub fn derived_files(&self) -> (Vec<String>, u64) {
        let mut names = Vec::new();
        let mut total = 0;
        for entry in std::fs::read_dir(self.derived_dir())
            .expect("derived dir")
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == ".oip-media-key" {
                continue;
            }
            total += entry.metadata().expect("stat").len();
            names.push(name);
        }
        names.sort();
        (names, total)
    }

    /// Status and the whole answer of a raw `GET <target>`, sent byte for byte.
    pub async fn raw_get(&self, target: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(self.addr).await.expect("connect");
        let request = format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    }

    pub async fn stop(self) {
        self.server.shutdown().await;
    }

    /// The same as [`TestServer::stop`].
    pub async fn shutdown(self) {
        self.stop().await;
    }
}

/// A media root with `web/fitnessally/` created, for tests to fill.
pub fn media_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("web/fitnessally")).expect("mkdir");
    dir
}

/// The layout of the serving threads every server of this fixture runs in:
/// `OIP_TEST_RUNTIME=per-core` (or `multi-thread`) runs a whole test binary's servers in
/// that layout (`.ci/run` runs the suites that test the connection guarantees once more
/// with `per-core`); unset, the service's default. `tests/runtime_layouts.rs` runs the
/// cross-core guarantees in both layouts whatever this says.
pub fn test_runtime() -> Option<oip_media::config::RuntimeLayout> {
    use clap::ValueEnum;
    let raw = std::env::var("OIP_TEST_RUNTIME").ok()?;
    Some(
        oip_media::config::RuntimeLayout::from_str(&raw, true)
            .unwrap_or_else(|_| panic!("OIP_TEST_RUNTIME={raw}: use multi-thread or per-core")),
    )
}

/// The fast lane every server of this fixture runs with: `OIP_TEST_FAST_LANE=on` (or
/// `off`) runs a whole test binary's servers with it (`.ci/run` runs the server suites
/// once more with the lane the default does not use); unset, the service's default.
/// `tests/fast_lane.rs` runs both lanes whatever this says.
pub fn test_fast_lane() -> Option<oip_media::config::FastLane> {
    use clap::ValueEnum;
    let raw = std::env::var("OIP_TEST_FAST_LANE").ok()?;
    Some(
        oip_media::config::FastLane::from_str(&raw, true)
            .unwrap_or_else(|_| panic!("OIP_TEST_FAST_LANE={raw}: use on or off")),
    )
}

/// `config` in the layout [`test_runtime`] asks for; in the per-core layout, two
/// serving threads (so connections are spread even on a one-core machine). With the
/// lane [`test_fast_lane`] asks for.
pub fn apply_test_runtime(config: &mut oip_media::Config) {
    if let Some(lane) = test_fast_lane() {
        config.server.fast_lane = lane;
    }
    if let Some(layout) = test_runtime() {
        config.server.runtime = layout;
        if layout == oip_media::config::RuntimeLayout::PerCore {
            config.server.workers = 2;
        }
    }
}

/// `RUNTIME` and `WORKERS` for a child `oip-media` process, from [`test_runtime`].
pub fn test_runtime_env() -> Vec<(&'static str, &'static str)> {
    let mut env = match test_runtime() {
        Some(oip_media::config::RuntimeLayout::PerCore) => {
            vec![("RUNTIME", "per-core"), ("WORKERS", "2")]
        }
        Some(oip_media::config::RuntimeLayout::MultiThread) => vec![("RUNTIME", "multi-thread")],
        None => Vec::new(),
    };
    match test_fast_lane() {
        Some(oip_media::config::FastLane::On) => env.push(("FAST_LANE", "on")),
        Some(oip_media::config::FastLane::Off) => env.push(("FAST_LANE", "off")),
        None => {}
    }
    env
}

/// Starts a server over `media` with `tweak` applied to the default test config (in
/// the layout [`test_runtime`] asks for, unless `tweak` sets one).
pub async fn start_with(
    media: tempfile::TempDir,
    tweak: impl FnOnce(&mut oip_media::Config),
) -> TestServer {
    let mut config = oip_media::Config::for_media_dir(media.path());
    apply_test_runtime(&mut config);
    tweak(&mut config);
    let server = oip_media::start(config).await.expect("server starts");
    let addr = server.local_addr();
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    TestServer {
        server,
        addr,
        media,
        base: format!("http://{addr}"),
        client,
    }
}

/// The service binary running in its own process over a media root, for measurements
/// that must not count what other tests in this process do (descriptors, memory).
/// Killed when dropped.
pub struct ChildServer {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl ChildServer {
    /// Starts `oip-media` on 127.0.0.1:0 over `media_dir`; returns once it listens (the
    /// address comes from its "listening on" log line).
    pub fn start(media_dir: &Path) -> ChildServer {
        ChildServer::start_with(media_dir, &[])
    }

    /// [`ChildServer::start`] with extra settings as environment variables.
    pub fn start_with(media_dir: &Path, env: &[(&str, &str)]) -> ChildServer {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_oip-media"))
            .envs(test_runtime_env())
            .envs(env.iter().copied())
            .env("MEDIA_DIR", media_dir)
            .env("PORT", "0")
            .env("BIND", "127.0.0.1")
            .env("RUST_LOG", "info")
            .env("DERIVED_DIR", media_dir.join(".oip-media-derived"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn oip-media");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout);
        let mut line = String::new();
        let addr = loop {
            line.clear();
            assert!(
                lines.read_line(&mut line).expect("read log") > 0,
                "the service exited before listening"
            );
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().expect("address");
                break addr.parse().expect("socket address");
            }
        };
        // Keep draining the log so the child never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
        ChildServer { child, addr }
    }

    /// Open descriptors of the child process that refer to files under `root`.
    pub fn open_fds_under(&self, root: &Path) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| {
                d.flatten()
                    .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                    .filter(|target| target.starts_with(root))
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one line of a `/metrics` text (`name{labels} value`).
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Deterministic pseudo-random bytes, so range bodies can be compared exactly.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

pub fn write_file(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, bytes).expect("write");
}

/// Opens a connection and sends a GET without reading the answer.
pub async fn send_get(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let text = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    stream.write_all(text.as_bytes()).await.expect("send");
    stream
}

/// Polls `done` every 20 ms until it holds; fails the test after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

/// Sends `method path` with extra header lines and `Connection: close`, reads the whole
/// answer. HEAD answers are read without a body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(text.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .expect("response within 20 s")
        .expect("read");
    parse(&raw, method == "HEAD")
}

pub async fn get(addr: SocketAddr, path: &str) -> RawResponse {
    request(addr, "GET", path, &[]).await
}

/// Parses one response; checks Content-Length against the body it read.
pub fn parse(raw: &[u8], head: bool) -> RawResponse {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    let head_text = std::str::from_utf8(&raw[..end]).expect("utf8 head");
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .expect("status")
        .parse()
        .expect("numeric status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body = raw[end + 4..].to_vec();
    let response = RawResponse {
        status,
        headers,
        body,
    };
    if !head && status != 304 {
        if let Some(len) = response.header("content-length") {
            assert_eq!(
                len.parse::<usize>().expect("length"),
                response.body.len(),
                "Content-Length matches body"
            );
        }
    } else {
        assert!(response.body.is_empty(), "no body for HEAD/304");
    }
    response
}

/// Splits a multipart/byteranges body into (Content-Range, bytes) parts.
pub fn parse_multipart(body: &[u8], boundary: &str) -> Vec<(String, Vec<u8>)> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    loop {
        let start = find(rest, delimiter.as_bytes()).expect("delimiter");
        rest = &rest[start + delimiter.len()..];
        if rest.starts_with(b"--") {
            return parts;
        }
        let head_end = find(rest, b"\r\n\r\n").expect("part head");
        let head = std::str::from_utf8(&rest[..head_end]).expect("utf8");
        let range = head
            .split("\r\n")
            .find_map(|l| l.strip_prefix("Content-Range: "))
            .expect("part has Content-Range")
            .to_owned();
        rest = &rest[head_end + 4..];
        let next = find(rest, format!("\r\n{delimiter}").as_bytes()).expect("next delimiter");
        parts.push((range, rest[..next].to_vec()));
        rest = &rest[next + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------- record fixtures

/// A record known as `did`, named `name`, whose `data.links` is `links`.
pub fn rec(did: &str, name: &str, links: Value) -> Value {
    json!({"oip": {"did": did, "didTx": did}, "data": {"basic": {"name": name}, "links": links}})
}

/// The indexer's stub for a record met again on its own path.
pub fn stub(did: &str, name: &str) -> Value {
    json!({"oip": {"did": did, "didTx": did}, "data": {"basic": {"name": name}}, "_circular": true})
}

/// `record` with `data.links.<key>` replaced by `value`.
pub fn with(mut record: Value, key: &str, value: Value) -> Value {
    record["data"]["links"][key] = value;
    record
}
