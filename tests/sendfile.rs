//! Body bytes sent with `sendfile(2)` from the page cache, against the real server on
//! loopback: which bytes went by `sendfile` and which were copied (the server's own
//! counters, as `/metrics` shows them), whole files, ranges, multipart parts, the head
//! sharing its packet with the body, truncation mid-send, a stalled reader, and the
//! limiter permit held until the last byte is on the wire. Every loop is bounded.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use oip_media::state::AppState;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Bytes sent by sendfile and file bytes copied by writev so far.
fn sent(state: &AppState) -> (u64, u64) {
    let c = &state.connections;
    (c.sendfile_bytes.get(), c.copied_file_bytes.get())
}

/// Reads until EOF, an error or `limit`; returns the bytes read (head included).
async fn read_all(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_start} in:\n{text}"))
}

#[tokio::test]
async fn a_whole_file_goes_out_by_sendfile_and_metrics_say_so() {
    let media = media_root();
    let gif = pattern(300_000, 11);
    write_file(&media.path().join("web/p/a.gif"), &gif);
    let server = start_with(media, |_| {}).await;
    let state = Arc::clone(server.server.app().state());

    let r = get(server.addr, "/media/p/a.gif").await;
    assert_eq!(r.status, 200);
    assert!(r.body == gif, "exact bytes");
    assert_eq!(
        sent(&state),
        (300_000, 0),
        "every body byte by sendfile, none copied"
    );

    let metrics = get(server.addr, "/metrics").await;
    let text = String::from_utf8(metrics.body).unwrap();
    assert_eq!(
        metric(&text, "oip_media_file_body_bytes_total{kind=\"sendfile\"}"),
        300_000
    );
    assert_eq!(
        metric(&text, "oip_media_file_body_bytes_total{kind=\"copy\"}"),
        0
    );
    assert!(metric(&text, "oip_media_sendfile_calls_total") >= 1);
    assert_eq!(
        metric(&text, "oip_media_body_bytes_sent_total"),
        300_000,
        "the body byte counter is as exact as before"
    );
    let open = metric(&text, "oip_media_process_open_fds");
    let limit = metric(&text, "oip_media_process_fd_limit");
    assert!(
        open > 0 && open < limit,
        "descriptors {open} within {limit}"
    );
    server.stop().await;
}

#[tokio::test]
async fn single_ranges_go_out_by_sendfile_from_their_offset() {
    let media = media_root();
    let gif = pattern(1 << 20, 12);
    write_file(&media.path().join("web/p/a.gif"), &gif);
    let server = start_with(media, |_| {}).await;
    let state = Arc::clone(server.server.app().state());

    let r = request(
        server.addr,
        "GET",
        "/media/p/a.gif",
        &[("Range", "bytes=123457-723456")],
    )
    .await;
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some("bytes 123457-723456/1048576")
    );
    assert!(r.body == gif[123_457..=723_456]);
    let r = request(
        server.addr,
        "GET",
        "/media/p/a.gif",
        &[("Range", "bytes=-50000")],
    )
    .await;
    assert!(r.body == gif[gif.len() - 50_000..]);
    assert_eq!(sent(&state), (600_000 + 50_000, 0));
    server.stop().await;
}

#[tokio::test]
async fn multipart_parts_go_out_by_sendfile_and_their_framing_by_writev() {
    let media = media_root();
    let gif = pattern(500_000, 13);
    write_file(&media.path().join("web/p/a.gif"), &gif);
    let server = start_with(media, |_| {}).await;
    let state = Arc::clone(server.server.app().state());

    let r = request(
        server.addr,
        "GET",
        "/media/p/a.gif",
        &[("Range", "bytes=0-99999,200000-299999,400000-")],
    )
    .await;
    assert_eq!(r.status, 206);
    let boundary = r
        .header("content-type")
        .and_then(|t| t.strip_prefix("multipart/byteranges; boundary="))
        .expect("multipart")
        .to_owned();
    let parts = parse_multipart(&r.body, &boundary);
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0].0, "bytes 0-99999/500000");
    assert!(parts[0].1 == gif[..100_000]);
    assert!(parts[1].1 == gif[200_000..300_000]);
    assert!(parts[2].1 == gif[400_000..]);
    assert_eq!(
        sent(&state),
        (300_000, 0),
        "the parts' bytes by sendfile; only framing copied"
    );
    server.stop().await;
}

#[tokio::test]
async fn bodies_under_the_threshold_are_copied_with_the_head() {
    let media = media_root();
    let small = pattern(3_000, 14);
    write_file(&media.path().join("web/p/small.gif"), &small);
    let server = start_with(media, |c| c.store.sendfile_min_bytes = 4096).await;
    let state = Arc::clone(server.server.app().state());
    let r = get(server.addr, "/media/p/small.gif").await;
    assert!(r.body == small);
    assert_eq!(sent(&state), (0, 3_000), "one writev, no sendfile");
    server.stop().await;

    // At 0, even a tiny body goes by sendfile.
    let media = media_root();
    write_file(&media.path().join("web/p/small.gif"), &small);
    let server = start_with(media, |c| c.store.sendfile_min_bytes = 0).await;
    let state = Arc::clone(server.server.app().state());
    let r = get(server.addr, "/media/p/small.gif").await;
    assert!(r.body == small);
    assert_eq!(sent(&state), (3_000, 0));
    server.stop().await;
}

#[tokio::test]
async fn head_304_and_keep_alive_send_no_body_bytes() {
    let media = media_root();
    let gif = pattern(200_000, 15);
    write_file(&media.path().join("web/p/a.gif"), &gif);
    let server = start_with(media, |_| {}).await;
    let state = Arc::clone(server.server.app().state());

    let h = request(server.addr, "HEAD", "/media/p/a.gif", &[]).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), Some("200000"));
    let etag = h.header("etag").unwrap().to_owned();
    let n = request(
        server.addr,
        "GET",
        "/media/p/a.gif",
        &[("If-None-Match", &etag)],
    )
    .await;
    assert_eq!(n.status, 304);
    assert_eq!(sent(&state), (0, 0), "HEAD and 304 send no body");

    // Three requests pipelined on one keep-alive connection: each answer is framed
    // exactly, and the HEAD in the middle sends nothing.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"GET /media/p/a.gif HTTP/1.1\r\nHost: t\r\n\r\n\
              HEAD /media/p/a.gif HTTP/1.1\r\nHost: t\r\n\r\n\
              GET /media/p/a.gif HTTP/1.1\r\nHost: t\r\nRange: bytes=100000-\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let raw = read_all(&mut stream, Duration::from_secs(20)).await;
    let first_end = find(&raw, b"\r\n\r\n").unwrap() + 4;
    assert!(raw[first_end..first_end + 200_000] == gif[..]);
    let rest = &raw[first_end + 200_000..];
    assert!(rest.starts_with(b"HTTP/1.1 200 OK\r\n"), "HEAD answer next");
    let head_end = find(rest, b"\r\n\r\n").unwrap() + 4;
    let third = parse(&rest[head_end..], false);
    assert_eq!(
        third.status, 206,
        "then the range, right after the HEAD's head"
    );
    assert!(third.body == gif[100_000..]);
    assert_eq!(sent(&state), (300_000, 0));
    server.stop().await;
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Data segments the server has sent on its side of the connection `client` opened,
/// from `ss` (TCP_INFO's `data_segs_out`); `None` when `ss` cannot tell.
fn server_data_segments(server: std::net::SocketAddr, client: &TcpStream) -> Option<u64> {
    let local = client.local_addr().unwrap();
    let filter = format!(
        "( sport = :{} and dport = :{} )",
        server.port(),
        local.port()
    );
    let out = std::process::Command::new("ss")
        .args(["-Htin", "state", "established", &filter])
        .output()
        .ok()?;
    // A connection that has sent data always reports it; no field means `ss` could not
    // see the socket (no sock_diag), which counts as "cannot count".
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|field| field.strip_prefix("data_segs_out:"))
        .map(|n| n.parse().expect("a count"))
}

/// One GET of `path` on `stream` (kept alive), read to the end of its `body_len`-byte
/// body through `buf`.
async fn get_on(stream: &mut TcpStream, path: &str, body_len: usize, buf: &mut [u8]) {
    let ask = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    stream.write_all(ask.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    while find(&raw, b"\r\n\r\n").is_none_or(|end| raw.len() < end + 4 + body_len) {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early");
        raw.extend_from_slice(&buf[..n]);
    }
}

/// Sends `count` GETs of `path` on one keep-alive connection, each read to its end,
/// and returns the data segments the server sent for all but the first (a warm-up:
/// the first packets of a connection are sized by its start-up pacing).
async fn segments_for(
    server: std::net::SocketAddr,
    path: &str,
    body_len: usize,
    count: usize,
) -> Option<u64> {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let mut after_warm_up = 0;
    let mut buf = vec![0u8; 256 * 1024];
    for i in 0..count {
        get_on(&mut stream, path, body_len, &mut buf).await;
        if i == 0 {
            after_warm_up = server_data_segments(server, &stream)?;
        }
    }
    Some(server_data_segments(server, &stream)? - after_warm_up)
}

#[tokio::test]
async fn the_head_shares_its_packets_with_the_body() {
    // A 40 KB GIF and its head fit one loopback segment (MSS ~64 KiB): one writev of
    // both sends one segment per response, and so must sendmsg(MSG_MORE) + sendfile.
    let gif = pattern(40_000, 16);
    let mut segments = Vec::new();
    for min in [0, 1 << 30] {
        let media = media_root();
        write_file(&media.path().join("web/p/a.gif"), &gif);
        let server = start_with(media, |c| c.store.sendfile_min_bytes = min).await;
        let state = Arc::clone(server.server.app().state());
        let Some(count) = segments_for(server.addr, "/media/p/a.gif", gif.len(), 4).await else {
            assert!(
                std::env::var_os("OIP_REQUIRE_SS").is_none(),
                "OIP_REQUIRE_SS is set but `ss` (iproute2) cannot run"
            );
            println!(
                "skipped: `ss` (iproute2) is missing or sees no socket: cannot count segments"
            );
            server.stop().await;
            return;
        };
        let by_sendfile = sent(&state).0;
        assert_eq!(by_sendfile, if min == 0 { 4 * 40_000 } else { 0 });
        segments.push(count);
        server.stop().await;
    }
    assert_eq!(
        segments[0], segments[1],
        "sendfile sends as few segments as one writev of head and body (sendfile, writev)"
    );
    assert_eq!(segments[1], 3, "one segment per response");
}

/// Sends `count` GETs of `path` on one keep-alive connection, one after the other, each
/// read to the end of its `body_len`-byte body; returns how long they all took.
async fn sequential_gets(
    server: std::net::SocketAddr,
    path: &str,
    body_len: usize,
    count: usize,
) -> Duration {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let started = Instant::now();
    for _ in 0..count {
        get_on(&mut stream, path, body_len, &mut buf).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn the_cork_is_lifted_when_each_response_ends() {
    // A file response is sent corked (TCP_CORK, as nginx's tcp_nopush) and the flush
    // that ends it lifts the cork. Were it left on, the last part-filled packet of every
    // response would wait for the kernel's 200 ms cork timer: 20 responses of a
    // 3,000-byte file (sent by sendfile, below one segment) would take 4 s or more.
    let small = pattern(3_000, 17);
    let big = pattern(700_000, 18);
    let media = media_root();
    write_file(&media.path().join("web/p/small.gif"), &small);
    write_file(&media.path().join("web/p/big.gif"), &big);
    let server = start_with(media, |c| c.store.sendfile_min_bytes = 0).await;
    let state = Arc::clone(server.server.app().state());
    let took = sequential_gets(server.addr, "/media/p/small.gif", small.len(), 20).await;
    assert_eq!(sent(&state), (20 * 3_000, 0), "all by sendfile, corked");
    assert!(
        took < Duration::from_secs(3),
        "20 small responses took {took:?}: a response waited for the cork timer"
    );
    // Files that end in a part-filled packet after many full ones.
    let took = sequential_gets(server.addr, "/media/p/big.gif", big.len(), 5).await;
    assert!(
        took < Duration::from_secs(3),
        "5 large responses took {took:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_lane_sends_a_file_in_one_sendfile_when_the_socket_has_room() {
    // The body yields 256 KiB chunks; the fast lane gathers them (up to 1 MiB) into one
    // write, so a 900 KB file is one `sendfile`, not four, when the socket's buffer
    // can take it all (a fixed 4 MiB one here; autotuning starts smaller).
    let gif = pattern(900_000, 19);
    let media = media_root();
    write_file(&media.path().join("web/p/a.gif"), &gif);
    let server = start_with(media, |c| {
        c.server.fast_lane = oip_media::config::FastLane::On;
        c.server.send_buffer = 4 << 20;
    })
    .await;
    let state = Arc::clone(server.server.app().state());
    let calls = || state.connections.sendfile_calls.get();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // The client reads nothing until the server has written: every byte the server
    // sends must fit the buffers at once.
    stream
        .write_all(b"GET /media/p/a.gif HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sent(&state).0 < 900_000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let raw = read_all(&mut stream, Duration::from_secs(10)).await;
    let body_start = find(&raw, b"\r\n\r\n").unwrap() + 4;
    assert!(raw[body_start..] == gif[..], "exact bytes");
    assert_eq!(sent(&state), (900_000, 0));
    assert_eq!(calls(), 1, "one sendfile for the four chunks");
    server.stop().await;
}

#[tokio::test]
async fn a_file_truncated_mid_sendfile_closes_only_that_connection() {
    let media = media_root();
    let big = media.path().join("web/p/big.gif");
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    write_file(&media.path().join("web/p/small.gif"), &pattern(50_000, 17));
    let server = start_with(media, |_| {}).await;
    let state = Arc::clone(server.server.app().state());

    let mut slow = send_get(server.addr, "/media/p/big.gif").await;
    let mut first = vec![0u8; 64 * 1024];
    slow.read_exact(&mut first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Truncate in place to a size the response has not reached yet.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let started = Instant::now();
    let rest = read_all(&mut slow, Duration::from_secs(30)).await;
    let body = first.len() + rest.len() - (find(&first, b"\r\n\r\n").unwrap() + 4);
    assert!(
        body < 64 << 20,
        "the response ends before Content-Length ({body} bytes)"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "closed, not hung"
    );
    let sends = &state.connections;
    assert_eq!(sends.short_file_sends.get(), 1);
    assert!(sends.sendfile_bytes.get() >= 64 * 1024);

    // The process lives and serves everyone else, by sendfile still.
    let r = get(server.addr, "/media/p/small.gif").await;
    assert_eq!((r.status, r.body.len()), (200, 50_000));
    wait_until("the permit is back", Duration::from_secs(5), || {
        state.gates.media.in_flight() == 0
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_reader_on_sendfile_is_dropped_and_its_permit_released() {
    let media = media_root();
    let big = media.path().join("web/p/big.gif");
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let server = start_with(media, |c| {
        c.server.write_stall_timeout = Duration::from_millis(500)
    })
    .await;
    let state = Arc::clone(server.server.app().state());

    let stalled = send_get(server.addr, "/media/p/big.gif").await;
    wait_until("bytes went by sendfile", Duration::from_secs(5), || {
        sent(&state).0 > 0
    })
    .await;
    wait_until(
        "the stalled client is dropped",
        Duration::from_secs(10),
        || state.gates.media.in_flight() == 0,
    )
    .await;
    assert_eq!(state.connections.stall_timeouts.get(), 1);
    assert_eq!(sent(&state).1, 0, "nothing copied");
    drop(stalled);
    server.stop().await;
}

#[tokio::test]
async fn the_permit_is_held_until_the_last_byte_is_sent() {
    // 300 KB: two chunks, both handed to hyper (and the body dropped by it) long before
    // a client that reads nothing lets them out of a small socket buffer.
    let media = media_root();
    let gif = pattern(300_000, 18);
    write_file(&media.path().join("web/p/a.gif"), &gif);
    let server = start_with(media, |c| c.server.send_buffer = 4096).await;
    let state = Arc::clone(server.server.app().state());

    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(server.addr).await.unwrap();
    client
        .write_all(b"GET /media/p/a.gif HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    wait_until("the body is admitted", Duration::from_secs(5), || {
        state.gates.media.in_flight() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        state.gates.media.in_flight(),
        1,
        "bytes are still unsent: the permit is still held"
    );
    let raw = read_all(&mut client, Duration::from_secs(20)).await;
    let r = parse(&raw, false);
    assert!(r.body == gif);
    wait_until(
        "the permit comes back once all is sent",
        Duration::from_secs(5),
        || state.gates.media.in_flight() == 0,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn descriptors_stay_bounded_while_files_are_replaced_under_load() {
    // A replaced file leaves the cache, but a response under way still sends from the
    // old one: its descriptor lives exactly as long as that response.
    let media = media_root();
    let path = media.path().join("web/p/a.gif");
    write_file(&path, &pattern(100_000, 19));
    let server = start_with(media, |c| {
        c.store.map_cache_entries = 4;
        // Revalidate on every request, so each replacement is seen at once.
        c.store.revalidate_window = Duration::ZERO;
    })
    .await;
    // Descriptors of files under this media root only (other tests run alongside).
    let root = std::fs::canonicalize(server.media.path()).unwrap();
    let fds = || {
        std::fs::read_dir("/proc/self/fd")
            .map(|d| {
                d.flatten()
                    .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                    .filter(|target| target.starts_with(&root))
                    .count()
            })
            .unwrap_or(0)
    };
    let _ = get(server.addr, "/media/p/a.gif").await;
    let before = fds();
    for round in 0..50u8 {
        let tmp = server.web("p/a.gif.tmp");
        write_file(&tmp, &pattern(100_000, round));
        std::fs::rename(&tmp, &path).unwrap();
        let r = get(server.addr, "/media/p/a.gif").await;
        assert!(r.body == pattern(100_000, round));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = fds();
    assert!(
        before >= 1 && after <= 4,
        "replaced files do not keep descriptors: {before} → {after}"
    );
    server.stop().await;
}
