//! The fast lane (`--fast-lane on`, `src/server/lane/`) against hyper, at the socket.
//!
//! Two servers over one media root, one with the lane and one without; the same bytes
//! are written to both and the transcripts (every response byte, and whether the server
//! closed the connection) must be equal, with only `Date` values masked. hyper's answer
//! is the reference: where the lane takes a request it must answer as hyper does, and
//! where it does not (the smuggling set, heads past the limit, other routes) hyper
//! answers, which the lane's counters show.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use oip_media::config::FastLane;
use support::media::{media_id, pattern_gif};
use support::{TestServer, start_with, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ORIGINS: &str = "https://fitnessally.io,https://*.fitnessally.io";

/// A server with the lane and one without, over the same files.
struct Pair {
    lane: TestServer,
    hyper: oip_media::RunningServer,
    /// How long a transcript waits for more bytes before it ends without a close.
    silence: Duration,
}

impl Pair {
    async fn start(tweak: impl Fn(&mut oip_media::Config)) -> Pair {
        let media = support::media_root();
        let root = media.path().to_path_buf();
        std::fs::create_dir_all(root.join("generated")).unwrap();
        support::write_file(&root.join("web/fitnessally/a.gif"), &pattern_gif(40, 30));
        support::write_file(
            &root.join("web/fitnessally/big.gif"),
            &support::pattern(300_000, 3),
        );
        support::write_file(&root.join("generated/tone.mp3"), b"ID3 not really audio");
        let id = media_id(7);
        std::fs::create_dir_all(root.join(&id)).unwrap();
        support::write_file(&root.join(&id).join("original"), &pattern_gif(20, 20));
        let configure = |c: &mut oip_media::Config| {
            c.cors.cors_origins = ORIGINS.into();
            tweak(c);
        };
        let lane = start_with(media, |c| {
            configure(c);
            c.server.fast_lane = FastLane::On;
        })
        .await;
        let mut config = oip_media::Config::for_media_dir(&root);
        support::apply_test_runtime(&mut config);
        configure(&mut config);
        config.server.fast_lane = FastLane::Off;
        let hyper = oip_media::start(config).await.expect("server starts");
        Pair {
            lane,
            hyper,
            silence: Duration::from_millis(300),
        }
    }

    fn lane_counts(&self) -> (u64, u64) {
        let c = &self.lane.app().state().connections;
        (c.lane_requests.get(), c.lane_handoffs.get())
    }

    /// Writes `raw` to both servers (in pieces of `piece` bytes, `gap` apart) and
    /// returns both transcripts, dates masked.
    async fn both(&self, raw: &[u8], piece: usize, gap: Duration) -> (Transcript, Transcript) {
        tokio::join!(
            exchange(self.lane.addr, raw, piece, gap, self.silence),
            exchange(self.hyper.local_addr(), raw, piece, gap, self.silence)
        )
    }

    /// Asserts that both servers answer `raw` alike; returns the lane's transcript.
    async fn same(&self, raw: &[u8]) -> Transcript {
        let (lane, hyper) = self.both(raw, usize::MAX, Duration::ZERO).await;
        assert_eq!(
            lane,
            hyper,
            "lane vs hyper for {:?}",
            String::from_utf8_lossy(raw)
        );
        lane
    }

    /// Asks both for `a.gif` (answered alike) and returns its `ETag`.
    async fn first_etag(&self) -> String {
        let first = self.same(&get("/media/fitnessally/a.gif", "")).await;
        first
            .text
            .lines()
            .find_map(|line| line.strip_prefix("etag: "))
            .expect("an etag")
            .to_owned()
    }

    async fn stop(self) {
        self.lane.stop().await;
        self.hyper.shutdown().await;
    }
}

/// Every byte a server sent (dates masked), and whether it closed the connection.
#[derive(Debug, PartialEq, Eq)]
struct Transcript {
    text: String,
    closed: bool,
}

impl Transcript {
    fn statuses(&self) -> Vec<u16> {
        self.text
            .split("HTTP/1.")
            .skip(1)
            .filter_map(|rest| rest.get(2..5)?.parse().ok())
            .collect()
    }
}

/// `date: <29 characters>` becomes `date: D`, and a multipart boundary (random per
/// response) `B`, so two servers' answers compare.
fn mask_dates(raw: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(raw).into_owned();
    while let Some(at) = text.find("boundary=oip-media-") {
        let start = at + "boundary=".len();
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .map_or(text.len(), |e| start + e);
        let boundary = text[start..end].to_owned();
        text = text.replace(&boundary, "B");
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = &*text;
    while let Some(at) = rest.find("\r\ndate: ") {
        let value_at = at + "\r\ndate: ".len();
        out.push_str(&rest[..value_at]);
        out.push('D');
        rest = rest.get(value_at + 29..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// Writes `raw` (in pieces), then reads until the server closes or says nothing for
/// `silence`.
async fn exchange(
    addr: std::net::SocketAddr,
    raw: &[u8],
    piece: usize,
    gap: Duration,
    silence: Duration,
) -> Transcript {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    for part in raw.chunks(piece.max(1)) {
        if stream.write_all(part).await.is_err() {
            break;
        }
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let closed = loop {
        match tokio::time::timeout(silence, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    Transcript {
        text: mask_dates(&got),
        closed,
    }
}

fn get(target: &str, extra: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: t\r\nX-Request-Id: fixed-id\r\n{extra}\r\n")
        .into_bytes()
}

#[tokio::test]
async fn the_lanes_answer_byte_for_byte_alike() {
    let pair = Pair::start(|_| {}).await;
    let etag = pair.first_etag().await;
    let id = media_id(7);
    let requests: Vec<Vec<u8>> = vec![
        get("/media/fitnessally/a.gif?x=1", ""),
        get("/media/fitnessally/big.gif", ""),
        b"HEAD /media/fitnessally/a.gif HTTP/1.1\r\nHost: t\r\nX-Request-Id: i\r\n\r\n".to_vec(),
        get("/media/fitnessally/a.gif", "Range: bytes=0-9\r\n"),
        get("/media/fitnessally/a.gif", "Range: bytes=0-1,4-5\r\n"),
        get("/media/fitnessally/a.gif", "Range: bytes=999999-\r\n"),
        get("/media/fitnessally/a.gif", &format!("If-None-Match: {etag}\r\n")),
        get(
            "/media/fitnessally/a.gif",
            "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n",
        ),
        get("/media/fitnessally/missing.gif", ""),
        get("/media/%2e%2e/secret", ""),
        get("/media/fitnessally/a.gif", "Connection: close\r\n"),
        get("/media/fitnessally/a.gif", "Connection: keep-alive\r\n"),
        get("/media/fitnessally/a.gif", "Origin: https://fitnessally.io\r\n"),
        get("/media/fitnessally/a.gif", "Origin: https://evil.example\r\n"),
        get("/media/fitnessally/a.gif", "Content-Length: 0\r\n"),
        get(&format!("/api/media/{id}"), ""),
        get(&format!("/api/media/{id}?still=1"), ""),
        get("/api/media?id=tone.mp3", ""),
        get("/api/generate/media/tone.mp3", ""),
        // No Host on HTTP/1.1: the app's head check answers, in both lanes.
        b"GET /media/fitnessally/a.gif HTTP/1.1\r\nX-Request-Id: i\r\n\r\n".to_vec(),
        b"GET /media/fitnessally/a.gif HTTP/1.1\r\nHost: a\r\nHost: b\r\nX-Request-Id: i\r\n\r\n"
            .to_vec(),
        // HTTP/1.0: closes unless asked to keep alive; answered as HTTP/1.0.
        b"GET /media/fitnessally/a.gif HTTP/1.0\r\nX-Request-Id: i\r\n\r\n".to_vec(),
        b"GET /media/fitnessally/a.gif HTTP/1.0\r\nConnection: keep-alive\r\nX-Request-Id: i\r\n\r\n"
            .to_vec(),
        b"HEAD /media/fitnessally/missing.gif HTTP/1.0\r\nX-Request-Id: i\r\n\r\n".to_vec(),
    ];
    let before = pair.lane_counts();
    for raw in &requests {
        pair.same(raw).await;
    }
    let after = pair.lane_counts();
    assert_eq!(
        after.0 - before.0,
        requests.len() as u64,
        "the lane answered every one of them itself"
    );
    assert_eq!(after.1, before.1, "none was handed to hyper");

    // A fresh request id is made the same way in both lanes: 16 hex digits.
    let (lane, hyper) = pair
        .both(
            b"GET /media/fitnessally/a.gif HTTP/1.1\r\nHost: t\r\n\r\n",
            usize::MAX,
            Duration::ZERO,
        )
        .await;
    for transcript in [&lane, &hyper] {
        let id = transcript
            .text
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .expect("an id");
        assert_eq!(id.len(), 16, "{id}");
    }
    pair.stop().await;
}

#[tokio::test]
async fn the_smuggling_set_is_left_to_hyper_which_refuses_it() {
    let pair = Pair::start(|_| {}).await;
    let target = "/media/fitnessally/a.gif";
    let cases: Vec<String> = vec![
        // CL + TE, TE alone, duplicate and differing CL, CL with a body.
        format!(
            "GET {target} HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
        format!("GET {target} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        format!(
            "GET {target} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"
        ),
        format!(
            "GET {target} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello"
        ),
        format!("GET {target} HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"),
        // obs-fold, bare LF, NUL.
        format!("GET {target} HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n"),
        format!("GET {target} HTTP/1.1\nHost: t\n\n"),
        format!("GET {target} HTTP/1.1\r\nHost: t\nX-A: 1\r\n\r\n"),
        format!("GET {target} HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n"),
        format!("GET {target}\0 HTTP/1.1\r\nHost: t\r\n\r\n"),
        // Expect, Upgrade, odd versions and targets.
        format!("GET {target} HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\r\n"),
        format!(
            "GET {target} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        ),
        format!("GET {target} HTTP/1.2\r\nHost: t\r\n\r\n"),
        format!("GET http://t{target} HTTP/1.1\r\nHost: t\r\n\r\n"),
        format!("GET {target} HTTP/1.1\r\nHost: t\r\nX{{: 1\r\n\r\n"),
    ];
    let mut statuses = Vec::new();
    for raw in &cases {
        // A fixed id, so that the two transcripts compare.
        let raw = raw.replacen("Host: t\r", "Host: t\r\nX-Request-Id: i\r", 1);
        let raw = raw.replacen("Host: t\n", "Host: t\nX-Request-Id: i\n", 1);
        let before = pair.lane_counts();
        let lane = pair.same(raw.as_bytes()).await;
        let after = pair.lane_counts();
        assert_eq!(after.0, before.0, "the lane did not answer {raw:?}");
        assert_eq!(after.1, before.1 + 1, "handed to hyper: {raw:?}");
        statuses.extend(lane.statuses());
    }
    // hyper's answers, which the lane leaves it to give: it serves a GET whose chunked
    // or zero-length body is complete (closing after a CL+TE one), and refuses a body it
    // cannot frame, obs-fold, a NUL, an unknown version and a field `http` refuses.
    assert_eq!(
        statuses,
        [
            200, 200, 200, 400, 200, 400, 200, 200, 400, 400, 200, 200, 400, 200, 400
        ]
    );
    pair.stop().await;
}

#[tokio::test]
async fn heads_past_the_limit_get_hypers_431_whole_or_trickled() {
    let pair = Pair::start(|c| c.server.max_request_head = 8 * 1024).await;
    let big = format!(
        "GET /media/fitnessally/a.gif HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "b".repeat(9 * 1024)
    );
    let lane = pair.same(big.as_bytes()).await;
    assert_eq!(lane.statuses(), [431], "{lane:?}");
    let (lane, hyper) = pair
        .both(big.as_bytes(), 1024, Duration::from_millis(5))
        .await;
    assert_eq!(lane, hyper);
    assert_eq!(lane.statuses(), [431]);
    // Just under the limit: answered.
    let fits = format!(
        "GET /media/fitnessally/a.gif HTTP/1.1\r\nHost: t\r\nX-Request-Id: i\r\nX-Big: {}\r\n\r\n",
        "b".repeat(7 * 1024)
    );
    assert_eq!(pair.same(fits.as_bytes()).await.statuses(), [200]);
    pair.stop().await;
}

#[tokio::test]
async fn trickled_and_partial_heads_are_answered_as_hyper_answers_them() {
    let pair = Pair::start(|_| {}).await;
    let raw = get("/media/fitnessally/a.gif", "Accept: image/*\r\n");
    let (lane, hyper) = pair.both(&raw, 1, Duration::from_millis(2)).await;
    assert_eq!(lane, hyper);
    assert_eq!(lane.statuses(), [200]);
    // Split inside the final CRLF CRLF.
    let (lane, hyper) = pair
        .both(&raw, raw.len() - 1, Duration::from_millis(50))
        .await;
    assert_eq!(lane, hyper);
    assert_eq!(lane.statuses(), [200]);
    // A partial head and the client's end: no answer, the connection closed.
    for addr in [pair.lane.addr, pair.hyper.local_addr()] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /media/fitnessally/a.gif HTTP/1.1\r\nHost")
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got))
            .await
            .expect("closed")
            .ok();
        assert_eq!(mask_dates(&got), "", "{addr}");
    }
    pair.stop().await;
}

#[tokio::test]
async fn pipelined_requests_mixing_lane_and_hyper_are_answered_in_order() {
    let pair = Pair::start(|_| {}).await;
    let mut raw = Vec::new();
    raw.extend(get("/media/fitnessally/a.gif", ""));
    raw.extend(b"HEAD /media/fitnessally/big.gif HTTP/1.1\r\nHost: t\r\nX-Request-Id: i\r\n\r\n");
    raw.extend(get("/media/fitnessally/a.gif", "Range: bytes=2-5\r\n"));
    // hyper's from here: another route, then a request with a body, then files again.
    raw.extend(get("/healthz", ""));
    raw.extend(
        b"POST /media/fitnessally/a.gif HTTP/1.1\r\nHost: t\r\nX-Request-Id: i\r\nContent-Length: 3\r\n\r\nabc",
    );
    raw.extend(get("/media/fitnessally/big.gif", ""));
    raw.extend(get("/media/fitnessally/a.gif", "Connection: close\r\n"));
    let before = pair.lane_counts();
    let lane = pair.same(&raw).await;
    let after = pair.lane_counts();
    assert_eq!(lane.statuses(), [200, 200, 206, 200, 405, 200, 200]);
    assert!(lane.closed);
    assert_eq!(after.0 - before.0, 3, "the first three by the lane");
    assert_eq!(after.1 - before.1, 1, "then hyper for the rest");

    // Sent one request at a time on one connection, in pieces: the same.
    let (lane, hyper) = pair.both(&raw, 100, Duration::from_millis(3)).await;
    assert_eq!(lane, hyper);
    pair.stop().await;
}

#[tokio::test]
async fn slowloris_and_idle_connections_are_closed_by_the_same_timeouts() {
    let pair = Pair::start(|c| {
        c.server.header_read_timeout = Duration::from_millis(300);
        c.server.keep_alive_timeout = Duration::from_millis(400);
    })
    .await;
    let counters = Arc::clone(pair.lane.app().state());
    let counters = &counters.connections;
    let (heads, idles) = (counters.header_timeouts.get(), counters.idle_timeouts.get());
    // A head trickled slower than the timeout allows: closed, unanswered.
    let started = Instant::now();
    let mut stream = TcpStream::connect(pair.lane.addr).await.unwrap();
    let mut closed = false;
    for byte in b"GET /media/fitnessally/a.gif HTTP/1.1\r\nHost: t\r\n\r\n" {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut probe = [0u8; 64];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slowloris head was cut");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(counters.header_timeouts.get(), heads + 1);
    // A connection that never sends: the same timeout.
    let mut silent = TcpStream::connect(pair.lane.addr).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), silent.read_to_end(&mut got))
        .await
        .expect("closed by the head timeout")
        .ok();
    assert!(got.is_empty());
    // Idle after an answer: the keep-alive timeout.
    let mut idle = TcpStream::connect(pair.lane.addr).await.unwrap();
    idle.write_all(&get("/media/fitnessally/a.gif", ""))
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), idle.read_to_end(&mut got))
        .await
        .expect("closed by the keep-alive timeout")
        .ok();
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(counters.idle_timeouts.get(), idles + 1);
    pair.stop().await;
}

#[tokio::test]
async fn a_non_reader_gives_its_slot_back_and_is_dropped_by_the_stall_rules() {
    let media = support::media_root();
    support::write_file(
        &media.path().join("web/fitnessally/huge.gif"),
        &support::pattern(32 << 20, 9),
    );
    let server = start_with(media, |c| {
        c.server.fast_lane = FastLane::On;
        c.admission.max_in_flight = 1;
        c.server.stalled_after = Duration::from_millis(100);
        c.server.write_stall_timeout = Duration::from_secs(1);
        c.server.send_buffer = 64 * 1024;
    })
    .await;
    let state = Arc::clone(server.app().state());
    let media_limiter = &state.gates.media;
    let stalls = state.connections.stall_timeouts.get();
    let client = support::send_get(server.addr, "/media/fitnessally/huge.gif").await;
    wait_until(
        "the non-reader's slot is back",
        Duration::from_secs(5),
        || media_limiter.slots_in_use() == 0 && media_limiter.stalled().len() == 1,
    )
    .await;
    // Its slot is free for a reader meanwhile.
    let small = support::get(server.addr, "/media/fitnessally/huge.gif?w=1").await;
    assert_eq!(small.status, 200);
    wait_until(
        "the write-stall timeout drops it",
        Duration::from_secs(5),
        || state.connections.stall_timeouts.get() == stalls + 1,
    )
    .await;
    wait_until("nothing in flight", Duration::from_secs(5), || {
        media_limiter.in_flight() == 0
    })
    .await;
    assert!(state.connections.lane_requests.get() >= 2);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_idle_lane_connections_at_once() {
    let pair = Pair::start(|_| {}).await;
    let mut idle = TcpStream::connect(pair.lane.addr).await.unwrap();
    idle.write_all(&get("/media/fitnessally/a.gif", ""))
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(n > 0);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), pair.stop())
        .await
        .expect("shutdown does not wait for idle keep-alive connections");
    assert!(started.elapsed() < Duration::from_secs(5));
    let rest = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf))
        .await
        .expect("closed");
    assert!(matches!(rest, Ok(0) | Err(_)));
}

/// Generated heads, a few hundred per run, each followed on the same connection by a
/// plain request that closes it, whole or in pieces, some with a few bytes changed:
/// both servers must answer every byte alike. The
/// hand-written cases above cover what we thought of; these cover combinations of
/// methods, versions, targets and fields (repeated, oddly cased or spaced, empty,
/// malformed), where the lane's rules and hyper's could part. A seed reproduces a run:
/// `OIP_LANE_FUZZ_SEED=<seed> OIP_LANE_FUZZ_CASES=<n> cargo test --test fast_lane generated`.
#[tokio::test]
async fn generated_heads_are_answered_alike_by_both_lanes() {
    let mut pair = Pair::start(|_| {}).await;
    // Every case ends with a close, so a transcript waits out its silence only if a
    // server answers late: long enough that a loaded CI machine does not cut one short.
    pair.silence = Duration::from_secs(5);
    let etag = pair.first_etag().await;
    let seed = std::env::var("OIP_LANE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let cases: usize = std::env::var("OIP_LANE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    println!("seed {seed}, {cases} cases");
    let mut rng = fastrand::Rng::with_seed(seed);
    let palette = FieldPalette::new(&etag);
    let (lane_before, handed_before) = pair.lane_counts();
    let mut differ = Vec::new();
    for case in 0..cases {
        let mut raw = generated_head(&mut rng, &palette);
        // One in three with a few bytes of its head changed.
        if rng.u8(..3) == 0 {
            mutate(&mut rng, &mut raw);
        }
        raw.extend_from_slice(
            b"GET /media/fitnessally/a.gif HTTP/1.1\r\nHost: t\r\nX-Request-Id: last\r\nConnection: close\r\n\r\n",
        );
        // One case in four arrives in up to five pieces, a millisecond apart.
        let (piece, gap) = if rng.u8(..4) == 0 {
            (
                rng.usize(raw.len() / 5 + 1..=raw.len()),
                Duration::from_millis(1),
            )
        } else {
            (usize::MAX, Duration::ZERO)
        };
        let (mut lane, mut hyper) = pair.both(&raw, piece, gap).await;
        // An id a client sent that is not kept is replaced by a fresh one, random in
        // each server.
        lane.text = mask_fresh_ids(&lane.text);
        hyper.text = mask_fresh_ids(&hyper.text);
        if lane != hyper {
            differ.push(format!(
                "case {case}: {:?}\n  lane:  {:?}\n  hyper: {:?}",
                String::from_utf8_lossy(&raw),
                lane,
                hyper
            ));
        }
    }
    let (lane_after, handed_after) = pair.lane_counts();
    assert!(
        differ.is_empty(),
        "seed {seed}: {} of {cases} differ; the first:\n{}",
        differ.len(),
        differ[..differ.len().min(3)].join("\n")
    );
    // The generator reaches both sides of the lane's rules.
    assert!(
        lane_after - lane_before > cases as u64 / 3,
        "the lane took {}",
        lane_after - lane_before
    );
    assert!(
        handed_after - handed_before > cases as u64 / 20,
        "hyper was handed {}",
        handed_after - handed_before
    );
    pair.stop().await;
}

/// A fresh request id (16 hex digits) becomes `R`.
fn mask_fresh_ids(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| match line.strip_prefix("x-request-id: ") {
            Some(id)
                if id.trim_end().len() == 16
                    && id.trim_end().bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                "x-request-id: R\r\n".to_owned()
            }
            _ => line.to_owned(),
        })
        .collect()
}

/// The fields [`generated_head`] draws from: each a list of whole lines (with CRLF) of
/// which one is picked, some of them a field twice.
struct FieldPalette {
    groups: Vec<Vec<String>>,
}

impl FieldPalette {
    fn new(etag: &str) -> FieldPalette {
        let owned = |lines: &[&str]| lines.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>();
        let mut groups = vec![
            owned(&[
                "Host: t\r\n",
                "host: t:8080\r\n",
                "HOST:t\r\n",
                "Host:\r\n",
                "Host: a\r\nHost: b\r\n",
                "Host: t \r\n",
                "Host: \tt\r\n",
            ]),
            owned(&[
                "Connection: close\r\n",
                "Connection: keep-alive\r\n",
                "connection: Keep-Alive\r\n",
                "Connection:  close \r\n",
                "Connection: keep-alive, close\r\n",
                "Connection: close,keep-alive\r\n",
                "Connection: ,\r\n",
                "Connection:\r\n",
                "Connection: keep-alive,\r\n",
                "Connection: keep-alive\r\nConnection: close\r\n",
                "Connection: closed\r\n",
                "Connection: te, close\r\n",
            ]),
            owned(&[
                "Range: bytes=0-9\r\n",
                "Range: bytes=-5\r\n",
                "Range: bytes=5-\r\n",
                "Range: bytes=0-1,4-5\r\n",
                "Range: bytes=9-0\r\n",
                "Range: bytes=abc\r\n",
                "Range: bytes = 0-1\r\n",
                "Range: items=0-1\r\n",
                "Range: bytes=0-0,-1\r\n",
                "Range: bytes=999999-\r\n",
                "Range: bytes=0-9\r\nRange: bytes=2-3\r\n",
                "range: BYTES=1-2\r\n",
            ]),
            vec![
                format!("If-None-Match: {etag}\r\n"),
                format!("If-None-Match: {}\r\n", etag.trim_start_matches("W/")),
                format!("If-None-Match: \"x\", {etag}\r\n"),
                "If-None-Match: *\r\n".into(),
                "If-None-Match: \"nope\"\r\n".into(),
                "If-None-Match: garbage\r\n".into(),
                format!("If-None-Match: \"x\"\r\nIf-None-Match: {etag}\r\n"),
            ],
            vec![
                "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n".into(),
                "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n".into(),
                "If-Modified-Since: yesterday\r\n".into(),
                "If-Unmodified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n".into(),
                format!("If-Range: {etag}\r\n"),
                "If-Range: \"other\"\r\n".into(),
                "If-Range: Fri, 01 Jan 2100 00:00:00 GMT\r\n".into(),
            ],
            owned(&[
                "Origin: https://fitnessally.io\r\n",
                "Origin: https://app.fitnessally.io\r\n",
                "Origin: https://evil.example\r\n",
                "Origin: null\r\n",
                "Origin:\r\n",
                "Origin: https://fitnessally.io\r\nOrigin: https://evil.example\r\n",
                "Access-Control-Request-Method: GET\r\nOrigin: https://fitnessally.io\r\n",
            ]),
            owned(&[
                "X-Request-Id: fixed-id\r\n",
                "X-Request-Id: \r\n",
                "X-Request-Id: has space\r\n",
                "X-Request-Id: ok\r\nX-Request-Id: twice\r\n",
                "x-request-id: {}<>\"\r\n",
                "X-Request-Id: \t\r\n",
            ]),
            owned(&[
                "Content-Length: 0\r\n",
                "Content-Length: 00\r\n",
                "Content-Length: +0\r\n",
                "Content-Length: 0, 0\r\n",
                "Content-Length: 3\r\n\r\nabc",
                "Transfer-Encoding: chunked\r\n",
                "Transfer-Encoding: identity\r\n",
                "Expect: 100-continue\r\n",
                "Upgrade: h2c\r\n",
            ]),
            owned(&[
                "Accept-Encoding: gzip, br\r\n",
                "Accept: image/*\r\n",
                "Authorization: Bearer not.a.token\r\n",
                "Cookie: a=b\r\n",
                "X-Forwarded-For: 10.0.0.1\r\n",
                "X-Empty:\r\n",
                "X-Tabs:\tv\t\r\n",
                "X-Odd-!#$%&'*+.^_`|~: v\r\n",
                "X-Quote: \"a, b\"\r\n",
                "X-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
                "Te: trailers\r\n",
                "Keep-Alive: timeout=5\r\n",
                "Proxy-Connection: keep-alive\r\n",
            ]),
        ];
        // A line the lane leaves to hyper or hyper refuses, rare among the rest.
        groups.push(owned(&[
            "X-Fold: a\r\n b\r\n",
            "X-Bad Name: v\r\n",
            "X-Colon : v\r\n",
            ": novalue\r\n",
            "X-Ctl: a\x01b\r\n",
            "X-Del: a\x7fb\r\n",
        ]));
        FieldPalette { groups }
    }
}

/// One generated request (bodies only where a `Content-Length` line carries one).
fn generated_head(rng: &mut fastrand::Rng, palette: &FieldPalette) -> Vec<u8> {
    const METHODS: &[&str] = &["GET", "GET", "GET", "HEAD", "HEAD", "POST", "OPTIONS"];
    const VERSIONS: &[&str] = &["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0"];
    let id = media_id(7);
    let targets = [
        "/media/fitnessally/a.gif".to_owned(),
        "/media/fitnessally/a.gif?x=1".to_owned(),
        "/media/fitnessally/a.gif?".to_owned(),
        "/media/fitnessally/a.gif#frag".to_owned(),
        "/media/fitnessally/%61.gif".to_owned(),
        "/media/fitnessally/A.GIF".to_owned(),
        "/media//fitnessally/a.gif".to_owned(),
        "/media/fitnessally/./a.gif".to_owned(),
        "/media/fitnessally/../fitnessally/a.gif".to_owned(),
        "/media/%2e%2e/secret".to_owned(),
        "/media/fitnessally/missing.gif".to_owned(),
        "/media/fitnessally/a.gif?w=1".to_owned(),
        "/media/fitnessally/big.gif?w=1".to_owned(),
        format!("/api/media/{id}"),
        format!("/api/media/{id}?still=1"),
        format!("/api/media/{id}/info"),
        "/api/media?id=tone.mp3".to_owned(),
        "/api/generate/media/tone.mp3".to_owned(),
        "/api/generate/media/..%2ftone.mp3".to_owned(),
        "/healthz".to_owned(),
        "/media/fitnessally/a gif".to_owned(),
        "/media/fitnessally/a.gif?q=%zz".to_owned(),
    ];
    let mut head = format!(
        "{} {} {}\r\n",
        METHODS[rng.usize(..METHODS.len())],
        targets[rng.usize(..targets.len())],
        VERSIONS[rng.usize(..VERSIONS.len())]
    );
    // Each group at most once, in a random order; the last group (the odd lines) rarely.
    let mut order: Vec<usize> = (0..palette.groups.len()).collect();
    rng.shuffle(&mut order);
    let mut body = None;
    for group in order {
        let odd = group == palette.groups.len() - 1;
        if rng.u8(..100) >= if odd { 6 } else { 35 } {
            continue;
        }
        let lines = &palette.groups[group];
        let line = &lines[rng.usize(..lines.len())];
        match line.split_once("\r\n\r\n") {
            // A field line with its body after the head.
            Some((field, rest)) => {
                head.push_str(field);
                head.push_str("\r\n");
                body = Some(rest.to_owned());
            }
            None => head.push_str(line),
        }
    }
    if !head.to_ascii_lowercase().contains("\nx-request-id:") {
        head.push_str("X-Request-Id: fixed-id\r\n");
    }
    head.push_str("\r\n");
    head.push_str(body.as_deref().unwrap_or_default());
    head.into_bytes()
}

/// Overwrites one to three bytes of a generated head with bytes that sit on the lane's
/// edges (line ends, separators, controls, bytes past ASCII), or inserts them.
fn mutate(rng: &mut fastrand::Rng, raw: &mut Vec<u8>) {
    const EDGES: &[u8] = b"\r\n\t\0 :,;=\"\\/?#%\x01\x7f\x80\xff0aZ-";
    for _ in 0..rng.usize(1..=3) {
        let at = rng.usize(..raw.len());
        let byte = EDGES[rng.usize(..EDGES.len())];
        if rng.bool() {
            raw[at] = byte;
        } else {
            raw.insert(at, byte);
        }
    }
}
