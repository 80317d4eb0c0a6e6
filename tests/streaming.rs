//! Streaming under hostile conditions, against the real server on loopback: files
//! truncated or replaced mid-response, aborted downloads, stalled readers, slowloris
//! clients, overload. Every loop here is bounded in count and time.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until EOF or error; returns the bytes read (head included).
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

#[tokio::test]
async fn truncating_a_mapped_file_mid_response_costs_only_that_connection() {
    let media = media_root();
    let big = media.path().join("web/p/big.gif");
    // 64 MiB, far more than loopback socket buffers hold, so the server is mid-body
    // when the file shrinks. Sparse, so it costs no disk.
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    write_file(&media.path().join("web/p/small.gif"), b"still here");
    // Window 0: the request after the truncation must see it at once (with the default
    // window it is seen at most one window later; tests/nonblocking_fs.rs covers that).
    let server = start_with(media, |c| c.store.revalidate_window = Duration::ZERO).await;

    let mut slow = send_get(server.addr, "/media/p/big.gif").await;
    let mut first = vec![0u8; 64 * 1024];
    slow.read_exact(&mut first).await.unwrap();
    let state = std::sync::Arc::clone(server.server.app().state());
    wait_until("the body is under way", Duration::from_secs(5), || {
        state.gates.media.in_flight() == 1
    })
    .await;
    // Break the write-once rule the way a careless writer would: truncate in place.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(0)
        .unwrap();
    let rest = read_all(&mut slow, Duration::from_secs(20)).await;
    let total = first.len() + rest.len();
    assert!(
        total < 64 << 20,
        "the truncated response must end early (got {total} bytes)"
    );

    // The process survived (no SIGBUS) and serves everyone else.
    let r = get(server.addr, "/media/p/small.gif").await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, b"still here".as_slice())
    );
    let r = get(server.addr, "/media/p/big.gif").await;
    assert_eq!(
        (r.status, r.body.len()),
        (200, 0),
        "the truncated file is re-mapped at its new size"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_replaced_file_is_remapped_while_the_old_response_finishes_intact() {
    let media = media_root();
    let path = media.path().join("web/p/a.gif");
    let old = pattern(16 << 20, 1);
    write_file(&path, &old);
    // Window 0: the next request must see the new file at once.
    let server = start_with(media, |c| c.store.revalidate_window = Duration::ZERO).await;

    let mut slow = send_get(server.addr, "/media/p/a.gif").await;
    let mut first = vec![0u8; 4096];
    slow.read_exact(&mut first).await.unwrap();

    let new = pattern(1 << 20, 2);
    let tmp = server.web("p/a.gif.tmp");
    write_file(&tmp, &new);
    std::fs::rename(&tmp, &path).unwrap();
    let fresh = get(server.addr, "/media/p/a.gif").await;
    assert_eq!(fresh.body, new, "new requests see the new file");

    let mut raw = first;
    raw.extend(read_all(&mut slow, Duration::from_secs(30)).await);
    let old_response = parse(&raw, false);
    assert_eq!(old_response.status, 200);
    assert!(
        old_response.body == old,
        "the response under way finished with the old bytes"
    );
    server.stop().await;
}

#[tokio::test]
async fn thousands_of_aborted_downloads_leak_no_permit() {
    let media = media_root();
    write_file(&media.path().join("web/p/a.gif"), &pattern(2 << 20, 3));
    let server = start_with(media, |c| {
        c.admission.max_in_flight = 8;
        c.admission.max_queue = 4096;
        c.admission.queue_timeout = Duration::from_secs(10);
    })
    .await;
    let addr = server.addr;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..32 {
        tasks.spawn(async move {
            for i in 0..64 {
                let mut stream = send_get(addr, "/media/p/a.gif").await;
                // Vary where the client gives up: before, during and after the head.
                let mut buf = vec![0u8; (worker * 64 + i) % 3 * 40_000 + 1];
                let _ = stream.read(&mut buf).await;
                drop(stream);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let limiter = std::sync::Arc::clone(&server.server.app().state().gates.media);
    wait_until("all permits are back", Duration::from_secs(15), || {
        limiter.in_flight() == 0
    })
    .await;
    assert_eq!(limiter.waiting(), 0);
    let admitted =
        limiter.counters().admitted_at_once.get() + limiter.counters().admitted_after_wait.get();
    assert!(
        admitted >= 2000,
        "the downloads were really admitted ({admitted})"
    );
    let r = get(addr, "/media/p/a.gif").await;
    assert_eq!(r.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_its_permit_released() {
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
    let state = std::sync::Arc::clone(server.server.app().state());

    let stalled = send_get(server.addr, "/media/p/big.gif").await;
    wait_until("the download is admitted", Duration::from_secs(5), || {
        state.gates.media.in_flight() == 1
    })
    .await;
    wait_until(
        "the stalled client is dropped",
        Duration::from_secs(10),
        || state.gates.media.in_flight() == 0,
    )
    .await;
    assert_eq!(state.connections.stall_timeouts.get(), 1);
    drop(stalled);
    server.stop().await;
}

#[tokio::test]
async fn slowloris_clients_do_not_stop_a_normal_client() {
    let media = media_root();
    let gif = pattern(400_000, 9);
    write_file(&media.path().join("web/p/a.gif"), &gif);
    let big = media.path().join("web/p/big.gif");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    // Default limits and timeouts: the defence must hold as shipped.
    let server = start_with(media, |_| {}).await;
    let addr = server.addr;

    let mut hostile = Vec::new();
    for i in 0..300 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        match i % 3 {
            0 => {} // sends nothing
            1 => stream
                .write_all(b"GET /media/p/a.gif HTTP/1.1\r\nHo")
                .await
                .unwrap(), // never finishes its head
            _ => stream // asks for a big file, reads nothing
                .write_all(b"GET /media/p/big.gif HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap(),
        }
        hostile.push(stream);
    }
    let started = Instant::now();
    let r = get(addr, "/media/p/a.gif").await;
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    assert!(r.body == gif);
    assert!(
        took < Duration::from_secs(2),
        "normal client served promptly ({took:?})"
    );
    drop(hostile);
    server.stop().await;
}

#[tokio::test]
async fn idle_and_silent_connections_are_closed_by_their_timeouts() {
    let media = media_root();
    write_file(&media.path().join("web/p/a.gif"), b"gif");
    let server = start_with(media, |c| {
        c.server.header_read_timeout = Duration::from_millis(300);
        c.server.keep_alive_timeout = Duration::from_millis(600);
    })
    .await;
    let state = std::sync::Arc::clone(server.server.app().state());

    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(started.elapsed() >= Duration::from_millis(250));

    let mut keep_alive = TcpStream::connect(server.addr).await.unwrap();
    keep_alive
        .write_all(b"GET /media/p/a.gif HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"gif") {
        let n = keep_alive.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let idle_from = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), keep_alive.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(500),
        "keep-alive lasted {idle:?}, not the 300 ms head timeout"
    );
    assert_eq!(state.connections.header_timeouts.get(), 1);
    assert_eq!(state.connections.idle_timeouts.get(), 1);
    server.stop().await;
}

#[tokio::test]
async fn overload_is_shed_with_503_and_retry_after_then_recovers() {
    let media = media_root();
    let big = media.path().join("web/p/big.gif");
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    std::fs::File::create(&big)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    write_file(&media.path().join("web/p/a.gif"), b"gif");
    let server = start_with(media, |c| {
        c.admission.max_in_flight = 4;
        c.admission.max_queue = 4;
        c.admission.queue_timeout = Duration::from_millis(200);
    })
    .await;
    let state = std::sync::Arc::clone(server.server.app().state());
    // Four slow readers take every slot.
    let mut holders = Vec::new();
    for _ in 0..4 {
        holders.push(send_get(server.addr, "/media/p/big.gif").await);
    }
    wait_until("slots taken", Duration::from_secs(5), || {
        state.gates.media.in_flight() == 4
    })
    .await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let addr = server.addr;
        tasks.spawn(async move { get(addr, "/media/p/a.gif").await });
    }
    let mut shed = 0;
    while let Some(r) = tasks.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.json()["error"], "Server busy, retry shortly");
        shed += 1;
    }
    assert_eq!(shed, 20);
    let c = state.gates.media.counters();
    assert!(c.shed_queue_full.get() >= 12, "queue bounded in length");
    assert!(c.shed_queue_timeout.get() >= 1, "queue bounded in time");
    drop(holders);
    wait_until("slots released", Duration::from_secs(5), || {
        state.gates.media.in_flight() == 0
    })
    .await;
    assert_eq!(
        get(server.addr, "/media/p/a.gif").await.status,
        200,
        "recovers once load stops"
    );
    server.stop().await;
}

#[tokio::test]
async fn open_descriptors_do_not_grow_with_files_served() {
    // Each mapped file keeps its descriptor (for sendfile), so descriptors are bounded
    // by the cache's entries, whatever the number of files served.
    let media = media_root();
    for i in 0..300 {
        write_file(
            &media.path().join(format!("web/p/{i}.gif")),
            &pattern(1000 + i, 4),
        );
    }
    // Counted in a process of its own, and only descriptors of files under the media
    // root: the other tests of this binary run at the same time and open sockets.
    let server = ChildServer::start_with(media.path(), &[("MAP_CACHE_ENTRIES", "32")]);
    let root = std::fs::canonicalize(media.path()).unwrap();
    let _ = get(server.addr, "/media/p/0.gif").await;
    let before = server.open_fds_under(&root);
    for i in 0..300 {
        assert_eq!(
            get(server.addr, &format!("/media/p/{i}.gif")).await.status,
            200
        );
    }
    let after = server.open_fds_under(&root);
    assert!(
        before >= 1 && after <= 32,
        "one descriptor per cached file, bounded by the cache: {before} → {after} after 300 files"
    );
    let metrics = String::from_utf8(get(server.addr, "/metrics").await.body).unwrap();
    assert!(metric(&metrics, "oip_media_map_cache_entries").unwrap() <= 32.0);
}

#[tokio::test]
async fn the_connection_cap_pauses_accepting_until_a_connection_closes() {
    let media = media_root();
    write_file(&media.path().join("web/p/a.gif"), b"gif");
    let server = start_with(media, |c| c.server.max_connections = 2).await;
    let state = std::sync::Arc::clone(server.server.app().state());
    let first = TcpStream::connect(server.addr).await.unwrap();
    let second = TcpStream::connect(server.addr).await.unwrap();
    wait_until("both accepted", Duration::from_secs(5), || {
        state.connections.open.get() == 2
    })
    .await;
    let addr = server.addr;
    let waiting = tokio::spawn(async move { get(addr, "/media/p/a.gif").await });
    // The accept loop counts each time it stops at the cap: wait for that count rather
    // than for a while.
    wait_until("the cap is reached", Duration::from_secs(5), || {
        state.connections.cap_reached.get() >= 1
    })
    .await;
    assert!(
        !waiting.is_finished(),
        "a third client waits in the backlog"
    );
    assert!(state.connections.cap_reached.get() >= 1);
    drop(first);
    let r = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200, "served once a slot frees");
    drop(second);
    server.stop().await;
}
