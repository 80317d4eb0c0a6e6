//! Hostile input for every route, and the media it needs: what
//! `benches/hostile_memory.rs` fires route by route while it samples the server's
//! RssAnon, and what `tests/hostile_memory.rs` fires for the worst routes with bounds.
//!
//! Requests go out as raw HTTP/1.1 bytes over loopback (paths and headers exactly as
//! written, no client normalising them), one connection each with `Connection: close`.
//! Every burst is bounded in count, in concurrency and in time (each request has a
//! deadline; a burst never waits for more than its requests' deadlines).
//!
//! Include with `#[path]` next to `child_server.rs` (as `crate::child_server`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::child_server::ChildServer;

// ---------------------------------------------------------------- the media

/// A media root with everything the bursts ask for: exercise GIFs, GIFs at the pixel
/// limit, hostile GIFs (frame bombs, huge declared screens, truncated files) as
/// `/media` files and as `/api/media` items, a 1 MiB file for ranges, and generated
/// audio.
pub struct Corpus {
    dir: tempfile::TempDir,
    /// Exercise GIFs under `web/fitnessally/`.
    pub gifs: Vec<String>,
    /// 2048×2048 noise GIFs (at `--gif-max-pixels`) under `web/fitnessally/`: the most
    /// a still render may cost.
    pub heavy: Vec<String>,
    /// `/api/media` ids of hostile GIFs, with what each is.
    pub hostile_items: Vec<(&'static str, String)>,
    /// `/api/media` ids of ordinary GIFs.
    pub items: Vec<String>,
}

/// How many of each kind of file a corpus holds.
#[derive(Debug, Clone, Copy)]
pub struct CorpusSize {
    /// Exercise GIFs (360 px, like the bundled ones).
    pub gifs: usize,
    /// GIFs at the pixel limit.
    pub heavy: usize,
    /// `/api/media` items of each hostile kind.
    pub hostile_each: usize,
}

fn item_id(n: usize) -> String {
    format!("{n:064x}")
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, bytes).expect("write");
}

/// A `width`×`height` GIF whose one frame is noise over 256 colours: LZW cannot
/// compress it, and a still of it costs a full-size decode, resize and PNG encode.
pub fn noise_gif(width: u16, height: u16, seed: u64) -> Vec<u8> {
    let palette: Vec<u8> = (0..=255u8)
        .flat_map(|i| [i, i.wrapping_mul(7), !i])
        .collect();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut pixels = vec![0u8; usize::from(width) * usize::from(height)];
    rng.fill(&mut pixels);
    let mut out = Vec::new();
    {
        let mut encoder = gif::Encoder::new(&mut out, width, height, &palette).expect("encoder");
        let frame = gif::Frame {
            width,
            height,
            buffer: pixels.into(),
            ..gif::Frame::default()
        };
        encoder.write_frame(&frame).expect("frame");
    }
    out
}

/// A 1×1 GIF of `frames` frames: one pass over it is cheap, but a parser that keeps
/// something per frame, or never stops counting, is not.
pub fn frame_bomb(frames: usize) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder =
            gif::Encoder::new(&mut out, 1, 1, &[0, 0, 0, 255, 255, 255]).expect("encoder");
        encoder.set_repeat(gif::Repeat::Infinite).expect("repeat");
        for n in 0..frames {
            let frame = gif::Frame {
                width: 1,
                height: 1,
                delay: 1,
                buffer: vec![(n % 2) as u8].into(),
                ..gif::Frame::default()
            };
            encoder.write_frame(&frame).expect("frame");
        }
    }
    out
}

/// A GIF that declares a 65535×65535 screen (16 GiB of RGBA) and holds one pixel.
pub fn huge_screen() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder =
            gif::Encoder::new(&mut out, u16::MAX, u16::MAX, &[0, 0, 0, 255, 255, 255])
                .expect("encoder");
        let frame = gif::Frame {
            width: 1,
            height: 1,
            buffer: vec![1u8].into(),
            ..gif::Frame::default()
        };
        encoder.write_frame(&frame).expect("frame");
    }
    out
}

impl Corpus {
    /// Writes a corpus of `size` into a fresh temp folder (a few seconds for the
    /// bench's size).
    pub fn build(size: CorpusSize) -> Corpus {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let web = root.join("web/fitnessally");
        let mut gifs = Vec::new();
        for n in 0..size.gifs {
            let name = format!("exercise-{n}.gif");
            let bytes = oip_media::sample::encode_gif(360, n as u64).expect("sample gif");
            write(&web.join(&name), &bytes);
            gifs.push(name);
        }
        let mut heavy = Vec::new();
        for n in 0..size.heavy {
            let name = format!("heavy-{n}.gif");
            write(&web.join(&name), &noise_gif(2048, 2048, n as u64));
            heavy.push(name);
        }
        write(&web.join("range.bin"), &vec![7u8; 1 << 20]);
        // 20 MB for the non-readers, sparse: reads as zeros, no disk written.
        std::fs::File::create(web.join("big.bin"))
            .and_then(|f| f.set_len(20_000_000))
            .expect("sparse file");

        let manifest = serde_json::to_vec(&serde_json::json!({
            "mimeType": "image/gif",
            "accessLevel": "public",
            "originalName": "x.gif"
        }))
        .expect("json");
        let truncated = {
            let whole = oip_media::sample::encode_gif(360, 99).expect("sample gif");
            whole[..whole.len() * 2 / 5].to_vec()
        };
        let kinds: [(&'static str, Vec<u8>); 4] = [
            ("frames over the limit (100,000)", frame_bomb(100_000)),
            ("frames at the limit (2,000)", frame_bomb(2_000)),
            ("65535x65535 screen", huge_screen()),
            ("truncated", truncated),
        ];
        let mut hostile_items = Vec::new();
        let mut next = 1;
        for (kind, bytes) in &kinds {
            for _ in 0..size.hostile_each {
                let id = item_id(next);
                next += 1;
                write(&root.join(&id).join("original"), bytes);
                write(&root.join(&id).join("manifest.json"), &manifest);
                hostile_items.push((*kind, id));
            }
        }
        let mut items = Vec::new();
        for name in gifs.iter().take(8) {
            let id = item_id(next);
            next += 1;
            let bytes = std::fs::read(web.join(name)).expect("read");
            write(&root.join(&id).join("original"), &bytes);
            write(&root.join(&id).join("manifest.json"), &manifest);
            items.push(id);
        }
        write(&root.join("generated/speech.mp3"), &vec![1u8; 64 << 10]);
        write(&root.join("generated/jfk/a.mp3"), &vec![2u8; 64 << 10]);
        std::fs::write(root.join("secret.txt"), b"outside every served root").expect("write");
        Corpus {
            dir,
            gifs,
            heavy,
            hostile_items,
            items,
        }
    }

    /// `MEDIA_DIR`.
    pub fn media_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The environment that points a child server at this corpus (and at `relay`).
    pub fn env(&self, relay: Option<SocketAddr>) -> Vec<(&'static str, String)> {
        let root = self.media_dir();
        let mut env = vec![
            ("MEDIA_DIR", root.display().to_string()),
            ("DERIVED_DIR", root.join(".derived").display().to_string()),
            (
                "GENERATED_MEDIA_DIR",
                root.join("generated").display().to_string(),
            ),
            ("WORKERS", "2".to_owned()),
            ("SUMMARY_INTERVAL", "1h".to_owned()),
            ("GUN_SUMMARY_INTERVAL", "0".to_owned()),
            // The put bursts below are sized at a 1 MiB put limit (bodies at it, and
            // over it); the default limit (128 MiB, every record the indexer can
            // publish) and its budget are checked by tests/gun_put_large.rs.
            ("GUN_PUT_BODY_LIMIT", "1MiB".to_owned()),
        ];
        if let Some(relay) = relay {
            env.push(("GUN_PEERS", format!("http://{relay}")));
        }
        env
    }

    /// Path of the derived folder (stills).
    pub fn derived_dir(&self) -> PathBuf {
        self.media_dir().join(".derived")
    }
}

// ---------------------------------------------------------------- a relay that answers

/// A GUN relay stand-in that costs nothing per request: gets are misses (404
/// `{"error":"Not found"}`), puts are drained and acknowledged. The relay itself is not
/// what is measured. A get for a soul that starts with `slow-` is answered after
/// [`SLOW_MISS`], as a real relay answers a miss only after waiting for its peers.
/// How long the stand-in takes to answer a get for a `slow-` soul.
pub const SLOW_MISS: Duration = Duration::from_secs(3);

pub struct RelaySink {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl RelaySink {
    pub async fn start() -> RelaySink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |request: hyper::Request<hyper::body::Incoming>| async move {
                            let put = request.uri().path().ends_with("/put");
                            let slow = request
                                .uri()
                                .query()
                                .is_some_and(|q| q.contains("soul=slow-"));
                            // Drained without keeping it.
                            let mut body = request.into_body();
                            while let Some(frame) = body.frame().await {
                                if frame.is_err() {
                                    break;
                                }
                            }
                            if slow {
                                tokio::time::sleep(SLOW_MISS).await;
                            }
                            let (status, text) = if put {
                                (200, r#"{"success":true}"#)
                            } else {
                                (404, r#"{"error":"Not found"}"#)
                            };
                            let mut response = hyper::Response::new(Full::new(Bytes::from_static(
                                text.as_bytes(),
                            )));
                            *response.status_mut() =
                                hyper::StatusCode::from_u16(status).expect("status");
                            Ok::<_, std::convert::Infallible>(response)
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RelaySink { addr, task }
    }
}

impl Drop for RelaySink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------- requests

/// A raw `GET` with extra header lines.
pub fn get(target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut text = format!("GET {target} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.into_bytes()
}

/// A raw JSON `POST` with its `Content-Length`.
pub fn post(target: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST {target} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// A raw chunked `POST` (no declared length) of `body`, in 64 KiB chunks.
pub fn post_chunked(target: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST {target} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(64 << 10) {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    raw
}

/// A GUN put body of exactly `len` bytes whose data is an array of zeros: the JSON
/// that takes the most memory per byte once parsed into a tree.
pub fn put_body(soul: &str, len: usize) -> Vec<u8> {
    let head = format!(r#"{{"soul":"{soul}","data":{{"zeros":[0"#);
    let tail = "]}}";
    let mut body = head.into_bytes();
    while body.len() + 2 + tail.len() <= len {
        body.extend_from_slice(b",0");
    }
    while body.len() + tail.len() < len {
        body.push(b' ');
    }
    body.extend_from_slice(tail.as_bytes());
    body
}

// ---------------------------------------------------------------- bursts

/// What a burst's requests were answered: status → count (`0`: no answer, the
/// connection was closed or the deadline passed).
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub statuses: BTreeMap<u16, usize>,
    /// Kernel TCP memory read just before a burst of held connections closed them.
    pub kernel_held: Option<u64>,
}

impl Tally {
    pub fn requests(&self) -> usize {
        self.statuses.values().sum()
    }

    pub fn count(&self, status: u16) -> usize {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    fn add(&mut self, status: u16) {
        *self.statuses.entry(status).or_default() += 1;
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .statuses
            .iter()
            .map(|(status, n)| match status {
                0 => format!("{n} closed"),
                s => format!("{n}×{s}"),
            })
            .collect();
        f.write_str(&parts.join(", "))
    }
}

/// Sends `raw` on a fresh connection and reads the answer to its end, within `deadline`;
/// the status (0 when there was none). The body is counted, not kept.
pub async fn exchange(addr: SocketAddr, raw: &[u8], deadline: Duration) -> u16 {
    let work = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        // A server that answers early (413, 503) may close before the whole request
        // is written: read its answer anyway.
        let _ = stream.write_all(raw).await;
        read_status(&mut stream).await
    };
    tokio::time::timeout(deadline, work)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

async fn read_status(stream: &mut TcpStream) -> Option<u16> {
    let mut head = Vec::with_capacity(64);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if head.len() < 16 {
                    head.extend_from_slice(&buf[..n.min(16)]);
                }
            }
        }
    }
    std::str::from_utf8(&head)
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// What a burst does.
pub enum Work {
    /// `count` requests made by `make(i)`, `concurrency` at a time.
    Requests {
        count: usize,
        concurrency: usize,
        make: Arc<dyn Fn(usize) -> Vec<u8> + Send + Sync>,
    },
    /// `count` posts whose `body_len`-byte body is sent `chunk` bytes every `pause`.
    SlowPosts {
        count: usize,
        target: &'static str,
        body_len: usize,
        chunk: usize,
        pause: Duration,
    },
    /// `count` clients that ask for `target` (a large file) with a 4 KiB receive buffer
    /// and never read, held open for `hold` (past the write-stall timeout, so the server
    /// drops them while they are still open), then closed.
    NonReaders {
        count: usize,
        target: &'static str,
        hold: Duration,
    },
    /// `count` connections opened and held for `hold`; every other one sends the start
    /// of a request head, `head_bytes` long, that it never finishes.
    Idle {
        count: usize,
        hold: Duration,
        head_bytes: usize,
    },
}

/// One burst of hostile requests at one route.
pub struct Burst {
    /// The route, as the table shows it.
    pub route: &'static str,
    /// What is sent.
    pub input: String,
    pub work: Work,
}

impl Burst {
    /// `count` requests made by `make(i)`, `concurrency` at a time.
    pub fn requests(
        route: &'static str,
        input: impl Into<String>,
        count: usize,
        concurrency: usize,
        make: impl Fn(usize) -> Vec<u8> + Send + Sync + 'static,
    ) -> Burst {
        Burst {
            route,
            input: input.into(),
            work: Work::Requests {
                count,
                concurrency,
                make: Arc::new(make),
            },
        }
    }

    /// Requests (or connections) it sends.
    pub fn count(&self) -> usize {
        match &self.work {
            Work::Requests { count, .. }
            | Work::SlowPosts { count, .. }
            | Work::NonReaders { count, .. }
            | Work::Idle { count, .. } => *count,
        }
    }

    /// Fires the burst at `addr`; every request has `deadline` to be answered.
    pub async fn run(&self, addr: SocketAddr, deadline: Duration) -> Tally {
        let mut tally = Tally::default();
        match &self.work {
            Work::Requests {
                count,
                concurrency,
                make,
            } => {
                let slots = Arc::new(Semaphore::new(*concurrency));
                let mut tasks = Vec::with_capacity(*count);
                for i in 0..*count {
                    let permit = Arc::clone(&slots).acquire_owned().await.expect("semaphore");
                    let raw = make(i);
                    tasks.push(tokio::spawn(async move {
                        let _permit = permit;
                        exchange(addr, &raw, deadline).await
                    }));
                }
                for task in tasks {
                    tally.add(task.await.unwrap_or(0));
                }
            }
            Work::SlowPosts {
                count,
                target,
                body_len,
                chunk,
                pause,
            } => {
                let mut tasks = Vec::with_capacity(*count);
                for i in 0..*count {
                    let (target, chunk, pause) = (*target, *chunk, *pause);
                    let body = put_body(&format!("slow-{i}"), *body_len);
                    tasks.push(tokio::spawn(async move {
                        let work = async {
                            let mut stream = TcpStream::connect(addr).await.ok()?;
                            let head = format!(
                                "POST {target} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            );
                            stream.write_all(head.as_bytes()).await.ok()?;
                            for piece in body.chunks(chunk) {
                                if stream.write_all(piece).await.is_err() {
                                    break;
                                }
                                tokio::time::sleep(pause).await;
                            }
                            read_status(&mut stream).await
                        };
                        tokio::time::timeout(deadline, work).await.ok().flatten().unwrap_or(0)
                    }));
                }
                for task in tasks {
                    tally.add(task.await.unwrap_or(0));
                }
            }
            Work::NonReaders {
                count,
                target,
                hold,
            } => {
                let mut held = Vec::with_capacity(*count);
                for _ in 0..*count {
                    let connected = async {
                        let socket = tokio::net::TcpSocket::new_v4().ok()?;
                        socket.set_recv_buffer_size(4096).ok()?;
                        let mut stream = socket.connect(addr).await.ok()?;
                        let head = format!(
                            "GET {target} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
                        );
                        stream.write_all(head.as_bytes()).await.ok()?;
                        Some(stream)
                    };
                    match connected.await {
                        Some(stream) => held.push(stream),
                        None => tally.add(0),
                    }
                }
                tokio::time::sleep(*hold).await;
                // What the kernel holds now, the clients still open (the server has
                // dropped them by now if `hold` is past its write-stall timeout).
                tally.kernel_held = Some(oip_media::metrics::kernel_tcp_memory());
                for _ in held {
                    tally.add(0);
                }
            }
            Work::Idle {
                count,
                hold,
                head_bytes,
            } => {
                let mut head =
                    b"GET /media/fitnessally/exercise-0.gif HTTP/1.1\r\nHost: bench\r\nX-Pad: "
                        .to_vec();
                head.resize((*head_bytes).max(head.len()), b'x');
                let mut held = Vec::with_capacity(*count);
                for i in 0..*count {
                    let Ok(mut stream) = TcpStream::connect(addr).await else {
                        tally.add(0);
                        continue;
                    };
                    if i % 2 == 1 {
                        let _ = stream.write_all(&head).await;
                    }
                    held.push(stream);
                }
                tokio::time::sleep(*hold).await;
                for _ in held {
                    // Held open for the whole hold: counted as `0` (no answer asked).
                    tally.add(0);
                }
            }
        }
        tally
    }
}

/// Every burst the benchmark fires, in order, `scale` times their full count (at least
/// one request each). The test picks the worst of them by route.
pub fn bursts(corpus: &Corpus, scale: f64) -> Vec<Burst> {
    let n = |full: usize| ((full as f64 * scale).round() as usize).max(1);
    let gifs = Arc::new(corpus.gifs.clone());
    let heavy = Arc::new(corpus.heavy.clone());
    let hostile = Arc::new(corpus.hostile_items.clone());
    let items = Arc::new(corpus.items.clone());
    let mut list = Vec::new();

    let g = Arc::clone(&gifs);
    list.push(Burst::requests(
        "/media/<file>",
        "plain GIF requests (the baseline)",
        n(4000),
        64,
        move |i| get(&format!("/media/fitnessally/{}", g[i % g.len()]), &[]),
    ));
    let many: String = (0..2000).map(|i| format!("{}-{},", i * 2, i * 2)).collect();
    let many = format!("bytes={}", many.trim_end_matches(','));
    list.push(Burst::requests(
        "/media/<file>",
        "Range of 2,000 ranges (16 KiB header, 1 MiB file)",
        n(1000),
        64,
        move |_| get("/media/fitnessally/range.bin", &[("Range", &many)]),
    ));
    let sixteen: String = (0..16)
        .map(|i| format!("{}-{},", i * 65536, i * 65536 + 4095))
        .collect();
    let sixteen = format!("bytes={}", sixteen.trim_end_matches(','));
    list.push(Burst::requests(
        "/media/<file>",
        "multipart: 16 ranges of 4 KiB",
        n(2000),
        64,
        move |_| get("/media/fitnessally/range.bin", &[("Range", &sixteen)]),
    ));
    let overlapping = format!("bytes={}", vec!["0-1048575"; 16].join(","));
    list.push(Burst::requests(
        "/media/<file>",
        "16 overlapping whole-file ranges (amplification)",
        n(500),
        64,
        move |_| get("/media/fitnessally/range.bin", &[("Range", &overlapping)]),
    ));
    let pad = "x".repeat(200 << 10);
    list.push(Burst::requests(
        "/media/<file>",
        "200 KiB header",
        n(500),
        64,
        move |_| get("/media/fitnessally/exercise-0.gif", &[("X-Pad", &pad)]),
    ));
    let over = "x".repeat(1 << 20);
    list.push(Burst::requests(
        "/media/<file>",
        "1 MiB header (over hyper's buffer)",
        n(200),
        64,
        move |_| get("/media/fitnessally/exercise-0.gif", &[("X-Pad", &over)]),
    ));
    let headers: Vec<(String, String)> = (0..150)
        .map(|i| (format!("X-H{i}"), "v".repeat(64)))
        .collect();
    list.push(Burst::requests(
        "/media/<file>",
        "150 header lines",
        n(1000),
        64,
        move |_| {
            let refs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            get("/media/fitnessally/exercise-0.gif", &refs)
        },
    ));
    let long = "a".repeat(64 << 10);
    list.push(Burst::requests(
        "/media/<file>",
        "64 KiB path",
        n(1000),
        64,
        move |_| get(&format!("/media/fitnessally/{long}.gif"), &[]),
    ));
    let query = "q=".to_owned() + &"%41".repeat(20 << 10);
    let g = Arc::clone(&gifs);
    list.push(Burst::requests(
        "/media/<file>",
        "60 KiB query string",
        n(1000),
        64,
        move |i| {
            get(
                &format!("/media/fitnessally/{}?{query}", g[i % g.len()]),
                &[],
            )
        },
    ));
    const TRAVERSALS: [&str; 10] = [
        "/media/../secret.txt",
        "/media/fitnessally/../../secret.txt",
        "/media/%2e%2e/secret.txt",
        "/media/fitnessally/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/media/fitnessally/..%5c..%5csecret.txt",
        "/media/fitnessally/%252e%252e/secret.txt",
        "/media//etc/passwd",
        "/media/fitnessally/a.gif%00.png",
        "/media/.derived/x.png",
        "/media/fitnessally/....//....//secret.txt",
    ];
    list.push(Burst::requests(
        "/media/<file>",
        "path traversal, 10 encodings",
        n(4000),
        64,
        move |i| get(TRAVERSALS[i % TRAVERSALS.len()], &[]),
    ));

    let (g, h) = (Arc::clone(&gifs), Arc::clone(&heavy));
    let widths = ["", "&w=90", "&w=180", "&w=360"];
    let plain_stills = g.len() * widths.len();
    let total_stills = (g.len() + h.len()) * widths.len();
    list.push(Burst::requests(
        "/media/<file>?still=1",
        format!(
            "every still of {} GIFs and of {} 2048x2048 noise GIFs ({} distinct, first render)",
            g.len(),
            h.len(),
            total_stills
        ),
        n(total_stills),
        64,
        move |i| {
            let i = i % total_stills;
            let w = widths[i % widths.len()];
            let name = if i < plain_stills {
                &g[i / widths.len()]
            } else {
                &h[(i - plain_stills) / widths.len()]
            };
            get(&format!("/media/fitnessally/{name}?still=1{w}"), &[])
        },
    ));
    let it = Arc::clone(&items);
    list.push(Burst::requests(
        "/api/media/<id>?still=1",
        format!("stills of {} items, again and again", it.len()),
        n(2000),
        64,
        move |i| {
            get(
                &format!("/api/media/{}?still=1&w=180", it[i % it.len()]),
                &[],
            )
        },
    ));
    let hi = Arc::clone(&hostile);
    list.push(Burst::requests(
        "/api/media/<id>/info",
        format!(
            "{} hostile GIFs: 100,000 frames, 2,000 frames, 65535x65535 screen, truncated",
            hi.len()
        ),
        n(hi.len() * 4),
        64,
        move |i| get(&format!("/api/media/{}/info", hi[i % hi.len()].1), &[]),
    ));
    let hi = Arc::clone(&hostile);
    list.push(Burst::requests(
        "/api/media/<id>?still=1",
        "stills of the hostile GIFs",
        n(hi.len() * 2),
        64,
        move |i| get(&format!("/api/media/{}?still=1", hi[i % hi.len()].1), &[]),
    ));
    list.push(Burst::requests(
        "/api/media/<id>",
        "malformed ids and paths",
        n(4000),
        64,
        move |i| {
            let target = match i % 5 {
                0 => format!("/api/media/{}", "G".repeat(64)),
                1 => format!("/api/media/{}/../../secret.txt", "a".repeat(64)),
                2 => format!("/api/media/{}", "a".repeat(8 << 10)),
                3 => "/api/media/%2e%2e%2fsecret.txt".to_owned(),
                _ => format!("/api/media/{}/info/x", "b".repeat(64)),
            };
            get(&target, &[])
        },
    ));
    const AUDIO: [&str; 8] = [
        "/api/generate/media?id=../secret.txt",
        "/api/generate/media?id=%2e%2e%2fsecret.txt",
        "/api/generate/media?id=/etc/passwd",
        "/api/generate/media/..%2fsecret.txt",
        "/api/generate/media/jfk/../../secret.txt",
        "/api/media?id=..%252fsecret.txt",
        "/api/media?id=jfk%2f..%2f..%2fsecret.txt",
        "/api/generate/media?id=speech.mp3",
    ];
    list.push(Burst::requests(
        "/api/generate/media, /api/media?id=",
        "generated-audio traversal, 7 encodings (+ one real file)",
        n(4000),
        64,
        move |i| get(AUDIO[i % AUDIO.len()], &[]),
    ));

    let limit = 1 << 20;
    list.push(Burst::requests(
        "/gun-relay/put",
        "bodies of exactly 1 MiB (`--gun-put-body-limit`) of [0,0,…], 64 at once",
        n(128),
        64,
        move |i| post("/gun-relay/put", &put_body(&format!("at-{i}"), limit)),
    ));
    list.push(Burst::requests(
        "/gun-relay/put",
        "2 MiB bodies: declared (refused before reading) and chunked (cut at 1 MiB)",
        n(128),
        64,
        move |i| {
            let body = put_body(&format!("over-{i}"), 2 * limit);
            if i % 2 == 0 {
                post("/gun-relay/put", &body)
            } else {
                post_chunked("/gun-relay/put", &body)
            }
        },
    ));
    list.push(Burst {
        route: "/gun-relay/put",
        input: "slow bodies: 64 clients sending 512 KiB at 16 KiB per 50 ms".into(),
        work: Work::SlowPosts {
            count: n(64),
            target: "/gun-relay/put",
            body_len: 512 << 10,
            chunk: 16 << 10,
            pause: Duration::from_millis(50),
        },
    });
    list.push(Burst::requests(
        "/gun-relay/get",
        "distinct souls, every one a miss (negative cache fills)",
        n(8000),
        64,
        move |i| {
            get(
                &format!("/gun-relay/get?soul=miss-{i}-{}", "s".repeat(100)),
                &[],
            )
        },
    ));
    list.push(Burst::requests(
        "/gun-relay/get",
        "distinct souls on a relay that takes 3 s per miss, 1,024 at once (the get admission)",
        n(2048),
        1024,
        |i| get(&format!("/gun-relay/get?soul=slow-{i}"), &[]),
    ));
    let resolve_body = {
        let record = r#"{"data":{"basic":{"name":"x"}}}"#;
        let mut body = String::from(r#"{"records":["#);
        while body.len() + record.len() + 2 < (8 << 20) - 64 {
            body.push_str(record);
            body.push(',');
        }
        body.push_str(record);
        body.push_str("]}");
        Arc::new(body.into_bytes())
    };
    list.push(Burst::requests(
        "/api/resolve",
        "bodies at `--resolve-body-limit` (8 MiB), 32 at once (buffered before admission)",
        n(64),
        32,
        move |_| post("/api/resolve", &resolve_body),
    ));
    list.push(Burst::requests("/metrics", "flood", n(4000), 64, |_| {
        get("/metrics", &[])
    }));
    list.push(Burst::requests("/readyz", "flood", n(4000), 64, |_| {
        get("/readyz", &[])
    }));
    list.push(Burst::requests(
        "(no route)",
        "unknown paths and methods",
        n(4000),
        64,
        |i| match i % 3 {
            0 => get(&format!("/nope/{i}"), &[]),
            1 => b"DELETE /media/fitnessally/exercise-0.gif HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".to_vec(),
            _ => b"GET * HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".to_vec(),
        },
    ));
    list.push(Burst {
        route: "/media/<file>",
        input: "100 clients that never read a 20 MB file (4 KiB receive buffers), held 23 s: past the 20 s write-stall timeout".into(),
        work: Work::NonReaders {
            count: n(100),
            target: "/media/fitnessally/big.bin",
            hold: Duration::from_secs(23),
        },
    });
    list.push(Burst {
        route: "(connections)",
        input: "2,000 idle connections held 3 s, half with 40 bytes of a request head".into(),
        work: Work::Idle {
            count: n(2000),
            hold: Duration::from_secs(3),
            head_bytes: 0,
        },
    });
    list.push(Burst {
        route: "(connections)",
        input: "1,000 connections held 3 s, half with 400 KiB of a request head never finished"
            .into(),
        work: Work::Idle {
            count: n(1000),
            hold: Duration::from_secs(3),
            head_bytes: 400 << 10,
        },
    });
    // Last, because ffmpeg keeps working through the jobs these requests queued after
    // they gave up waiting, and it would take CPU from the bursts after it.
    list.push(variants_burst(&gifs, &hostile, n));
    list
}

/// Variants (`?format=`) that do not exist yet, on `/media` GIFs and on the hostile
/// `/api/media` items, and formats that do not exist. Each new one queues an ffmpeg run
/// (`--transcode-workers` at once, `--transcode-queue` queued); its request waits at
/// most `--transcode-wait` among `--transcode-max-waiting` others, holding no GIF-serving
/// slot, then gets `503`. Hostile GIFs are refused (`422`) by the GIF limits before
/// ffmpeg; unknown formats get `400`. ffmpeg's own memory is its process's, not the
/// server's: what is measured is what waiting costs the server.
fn variants_burst(
    gifs: &Arc<Vec<String>>,
    hostile: &Arc<Vec<(&'static str, String)>>,
    n: impl Fn(usize) -> usize,
) -> Burst {
    const FORMATS: [&str; 3] = ["mp4", "webm", "webp"];
    let (g, hi) = (Arc::clone(gifs), Arc::clone(hostile));
    let plain = g.len() * FORMATS.len();
    let bad = 16;
    let total = plain + hi.len() * FORMATS.len() + bad;
    Burst::requests(
        "/media/<file>?format=, /api/media/<id>?format=",
        format!(
            "first-time variants of {} GIFs in 3 formats, of the {} hostile GIFs, and unknown formats",
            g.len(),
            hi.len()
        ),
        n(total),
        64,
        move |i| {
            let i = i % total;
            let format = FORMATS[i % FORMATS.len()];
            if i < plain {
                get(
                    &format!(
                        "/media/fitnessally/{}?format={format}",
                        g[i / FORMATS.len()]
                    ),
                    &[],
                )
            } else if i < total - bad {
                let item = &hi[(i - plain) / FORMATS.len()].1;
                get(&format!("/api/media/{item}?format={format}"), &[])
            } else if i.is_multiple_of(2) {
                get("/media/fitnessally/exercise-0.gif?format=avif", &[])
            } else {
                let long = "x".repeat(4 << 10);
                get(
                    &format!("/media/fitnessally/exercise-0.gif?format={long}"),
                    &[],
                )
            }
        },
    )
}

// ---------------------------------------------------------------- measuring

/// RssAnon (and the host's kernel TCP memory) around one burst, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Kernel TCP memory (`/proc/net/sockstat` `mem`) before the burst: the whole
    /// host's, so only what a burst adds is its own.
    pub kernel_idle: u64,
    /// Highest kernel TCP memory seen while it ran (sampled every 20 ms).
    pub kernel_peak: u64,
    /// Kernel TCP memory just before a burst of held connections closed them (the
    /// server had dropped them by then), or at the burst's end.
    pub kernel_held: u64,
    /// Before the burst.
    pub idle: u64,
    /// Highest seen while it ran (sampled every 5 ms).
    pub peak: u64,
    /// `settle` after it ended.
    pub retained: u64,
    /// How long the burst took.
    pub elapsed: Duration,
}

impl Measured {
    pub fn peak_above_idle(&self) -> u64 {
        self.peak.saturating_sub(self.idle)
    }

    pub fn retained_above_idle(&self) -> u64 {
        self.retained.saturating_sub(self.idle)
    }

    pub fn kernel_peak_above_idle(&self) -> u64 {
        self.kernel_peak.saturating_sub(self.kernel_idle)
    }

    pub fn kernel_held_above_idle(&self) -> u64 {
        self.kernel_held.saturating_sub(self.kernel_idle)
    }
}

/// Fires `burst` at `server` while sampling its RssAnon; reads it again `settle` after.
pub async fn measure(
    server: &ChildServer,
    burst: &Burst,
    deadline: Duration,
    settle: Duration,
) -> (Tally, Measured) {
    let idle = server.rss_anon();
    let kernel_idle = oip_media::metrics::kernel_tcp_memory();
    let kernel_sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let kernel_sampler = {
        let sampling = Arc::clone(&kernel_sampling);
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(oip_media::metrics::kernel_tcp_memory());
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let sampler = server.sample();
    let started = Instant::now();
    let tally = burst.run(server.addr, deadline).await;
    let elapsed = started.elapsed();
    let kernel_held = tally
        .kernel_held
        .unwrap_or_else(oip_media::metrics::kernel_tcp_memory);
    // Keep sampling a little: a burst's memory can peak as its last answers go out.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let peak = sampler.stop();
    kernel_sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let kernel_peak = kernel_sampler.join().unwrap_or(0);
    tokio::time::sleep(settle).await;
    let retained = server.rss_anon();
    (
        tally,
        Measured {
            kernel_idle,
            kernel_peak,
            kernel_held,
            idle,
            peak,
            retained,
            elapsed,
        },
    )
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}
