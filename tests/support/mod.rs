//! Shared helpers for integration tests: a server on 127.0.0.1:0 over a temp media root,
//! and a raw HTTP/1.1 client that sends paths exactly as written (no normalisation), so
//! hostile paths reach the server unchanged.
#![allow(dead_code)]

pub mod elastic;
pub mod relay_stub;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use serde_json::{Value, json};

/// A running server over its own temp media root; shut down with [`TestServer::stop`].
pub struct TestServer {
    pub server: oip_media::RunningServer,
    pub addr: SocketAddr,
    pub media: tempfile::TempDir,
}

impl TestServer {
    /// Path of `web/<rel>` inside the media root.
    pub fn web(&self, rel: &str) -> PathBuf {
        self.media.path().join("web").join(rel)
    }

    pub async fn stop(self) {
        self.server.shutdown().await;
    }
}

/// A media root with `web/fitnessally/` created, for tests to fill.
pub fn media_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("web/fitnessally")).expect("mkdir");
    dir
}

/// Starts a server over `media` with `tweak` applied to the default test config.
pub async fn start_with(
    media: tempfile::TempDir,
    tweak: impl FnOnce(&mut oip_media::Config),
) -> TestServer {
    let mut config = oip_media::Config::for_media_dir(media.path());
    tweak(&mut config);
    let server = oip_media::start(config).await.expect("server starts");
    let addr = server.local_addr();
    TestServer {
        server,
        addr,
        media,
    }
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
