//! Every guarantee of the server holds in both layouts of its serving threads
//! (`--runtime multi-thread` and `--runtime per-core`): the connection cap, the media
//! limiter and the filesystem pool are one for the whole server, not one per core;
//! metrics count what every core did; timeouts close silent connections on every core;
//! shutdown lets downloads on every core finish and stops every core; the request-head
//! checks answer alike on every core; and a second server can never join a per-core
//! server's port.
//!
//! Each test runs once per layout; the per-core layout gets two serving threads, and a
//! test that needs connections on both cores opens enough of them that the kernel's
//! hash puts some on each (it checks that it did, per listener). Loopback only; every
//! wait bounded.

mod support;

use std::time::Duration;

use oip_media::config::RuntimeLayout;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Runs `$test(layout)` as one `#[tokio::test]` per layout.
macro_rules! in_both_layouts {
    ($test:ident) => {
        mod $test {
            #[tokio::test]
            async fn multi_thread() {
                super::$test(oip_media::config::RuntimeLayout::MultiThread).await;
            }

            #[tokio::test]
            async fn per_core() {
                super::$test(oip_media::config::RuntimeLayout::PerCore).await;
            }
        }
    };
}

/// A server in `layout` (two serving threads when per core) with `tweak` applied.
async fn serve(
    media: tempfile::TempDir,
    layout: RuntimeLayout,
    tweak: impl FnOnce(&mut oip_media::Config),
) -> TestServer {
    start_with(media, |c| {
        c.server.runtime = layout;
        c.server.workers = 2;
        tweak(c);
    })
    .await
}

/// Listening sockets the layout has: one, or one per serving thread.
fn listeners(layout: RuntimeLayout) -> usize {
    match layout {
        RuntimeLayout::MultiThread => 1,
        RuntimeLayout::PerCore => 2,
    }
}

/// Connections each listening socket accepted.
fn accepted_by_listener(server: &TestServer) -> Vec<u64> {
    server
        .app()
        .state()
        .connections
        .accepted_by_listener
        .iter()
        .map(|c| c.get())
        .collect()
}

/// Asserts that every listening socket accepted at least one connection, so that what
/// the test checked was checked across cores.
fn assert_every_listener_served(server: &TestServer, layout: RuntimeLayout) {
    let by_listener = accepted_by_listener(server);
    assert_eq!(by_listener.len(), listeners(layout));
    assert!(
        by_listener.iter().all(|&n| n > 0),
        "connections reached every listening socket: {by_listener:?}"
    );
}

/// A 64 MiB sparse GIF (far more than loopback buffers hold) and a small one.
fn big_and_small(media: &tempfile::TempDir) {
    std::fs::File::create(media.path().join("web/fitnessally/big.gif"))
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    write_file(&media.path().join("web/fitnessally/a.gif"), b"GIF89a");
}

in_both_layouts!(the_connection_cap_is_one_for_all_cores);
async fn the_connection_cap_is_one_for_all_cores(layout: RuntimeLayout) {
    let media = media_root();
    big_and_small(&media);
    let server = serve(media, layout, |c| c.server.max_connections = 2).await;
    let state = std::sync::Arc::clone(server.app().state());
    // Two idle connections take both slots.
    let first = TcpStream::connect(server.addr).await.unwrap();
    let second = TcpStream::connect(server.addr).await.unwrap();
    wait_until("both accepted", Duration::from_secs(5), || {
        state.connections.open.get() == 2
    })
    .await;
    // Twenty-four more clients send a request each. Spread over the listening sockets by
    // the kernel, they stop every accept loop at the cap: a cap per core would have let
    // another core accept them.
    let mut waiting = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let addr = server.addr;
        waiting.spawn(async move { get(addr, "/media/fitnessally/a.gif").await });
    }
    wait_until(
        "every accept loop stopped at the cap",
        Duration::from_secs(5),
        || state.connections.cap_reached.get() >= listeners(layout) as u64,
    )
    .await;
    assert_eq!(state.connections.open.get(), 2, "never more than the cap");
    assert_eq!(state.connections.accepted.get(), 2);
    assert!(waiting.try_join_next().is_none(), "the others wait");
    // Slots free: every waiting client is served, a connection at a time per slot.
    drop((first, second));
    let mut served = 0;
    while let Some(response) = tokio::time::timeout(Duration::from_secs(10), waiting.join_next())
        .await
        .expect("every waiting client is served")
    {
        assert_eq!(response.unwrap().status, 200);
        served += 1;
    }
    assert_eq!(served, 24);
    assert_eq!(state.connections.accepted.get(), 26);
    assert_every_listener_served(&server, layout);
    server.stop().await;
}

in_both_layouts!(the_media_limiter_is_one_for_all_cores);
async fn the_media_limiter_is_one_for_all_cores(layout: RuntimeLayout) {
    let media = media_root();
    big_and_small(&media);
    let server = serve(media, layout, |c| {
        c.admission.max_in_flight = 2;
        c.admission.max_queue = 1;
        c.admission.queue_timeout = Duration::from_millis(100);
    })
    .await;
    let state = std::sync::Arc::clone(server.app().state());
    // Twelve slow readers, each on its own connection (spread over the cores): two get
    // the slots, however the connections were spread.
    let mut readers = Vec::new();
    for _ in 0..12 {
        readers.push(send_get(server.addr, "/media/fitnessally/big.gif").await);
    }
    let mut statuses = Vec::new();
    for reader in &mut readers {
        let mut head = [0u8; 12];
        reader.read_exact(&mut head).await.unwrap();
        statuses.push(String::from_utf8_lossy(&head[9..12]).into_owned());
    }
    let admitted = statuses.iter().filter(|s| *s == "200").count();
    let shed = statuses.iter().filter(|s| *s == "503").count();
    assert_eq!(
        (admitted, shed),
        (2, 10),
        "two slots for the whole server: {statuses:?}"
    );
    assert_eq!(state.gates.media.in_flight(), 2);
    assert_every_listener_served(&server, layout);
    drop(readers);
    wait_until("slots released", Duration::from_secs(5), || {
        state.gates.media.in_flight() == 0
    })
    .await;
    assert_eq!(
        get(server.addr, "/media/fitnessally/a.gif").await.status,
        200
    );
    server.stop().await;
}

in_both_layouts!(the_filesystem_pool_is_one_for_all_cores);
async fn the_filesystem_pool_is_one_for_all_cores(layout: RuntimeLayout) {
    let media = media_root();
    for i in 0..16 {
        write_file(
            &media.path().join(format!("web/fitnessally/cold-{i}.gif")),
            &pattern(1000, i),
        );
    }
    let server = serve(media, layout, |c| {
        c.fs.fs_threads = 1;
        c.fs.fs_queue = 1;
        c.fs.fs_timeout = Duration::from_millis(300);
    })
    .await;
    let fs = server.app().state().fs.clone();
    fs.inject_stall(Some(Duration::from_secs(60)));
    // Sixteen cold GIFs at once over the cores: one call on the thread and one queued,
    // whichever core asked; every other one is refused at once.
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..16 {
        let addr = server.addr;
        pending.spawn(async move { get(addr, &format!("/media/fitnessally/cold-{i}.gif")).await });
    }
    let (mut timed_out, mut refused) = (0, 0);
    while let Some(answer) = pending.join_next().await {
        let answer = answer.unwrap();
        assert_eq!(answer.status, 503);
        match answer.json()["reason"].as_str() {
            Some("filesystem call timed out") => timed_out += 1,
            Some("filesystem pool full") => refused += 1,
            other => panic!("unexpected reason {other:?}"),
        }
    }
    assert!(
        timed_out <= 2 && refused >= 14,
        "one pool for the server: {timed_out} timed out, {refused} refused"
    );
    assert_every_listener_served(&server, layout);
    fs.inject_stall(None);
    server.stop().await;
}

in_both_layouts!(metrics_count_what_every_core_did);
async fn metrics_count_what_every_core_did(layout: RuntimeLayout) {
    let media = media_root();
    big_and_small(&media);
    let server = serve(media, layout, |_| {}).await;
    // Twenty connections, one GIF request each.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let addr = server.addr;
        tasks.spawn(async move { get(addr, "/media/fitnessally/a.gif").await.status });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    let text = String::from_utf8(get(server.addr, "/metrics").await.body).unwrap();
    assert_eq!(
        metric(
            &text,
            "oip_media_http_responses_total{route=\"media\",class=\"2xx\"}"
        ),
        Some(20.0),
        "{text}"
    );
    let accepted = metric(&text, "oip_media_connections_accepted_total").unwrap();
    assert_eq!(accepted, 21.0, "twenty GIF connections and the scrape's");
    let by_listener: f64 = (0..listeners(layout))
        .map(|listener| {
            metric(
                &text,
                &format!(
                    "oip_media_connections_accepted_by_listener_total{{listener=\"{listener}\"}}"
                ),
            )
            .unwrap_or_else(|| panic!("listener {listener} in {text}"))
        })
        .sum();
    assert_eq!(
        by_listener, accepted,
        "each accept counted once, by its listener"
    );
    assert_every_listener_served(&server, layout);
    server.stop().await;
}

in_both_layouts!(silent_connections_time_out_on_every_core);
async fn silent_connections_time_out_on_every_core(layout: RuntimeLayout) {
    let media = media_root();
    let server = serve(media, layout, |c| {
        c.server.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let state = std::sync::Arc::clone(server.app().state());
    // Sixteen connections that never send a byte; the server closes each one.
    let mut silent = Vec::new();
    for _ in 0..16 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    for stream in &mut silent {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("closed by the server within its timeout");
        assert!(matches!(read, Ok(0) | Err(_)), "closed, nothing sent");
    }
    wait_until("every timeout counted", Duration::from_secs(5), || {
        state.connections.header_timeouts.get() == 16
    })
    .await;
    assert_every_listener_served(&server, layout);
    server.stop().await;
}

in_both_layouts!(shutdown_lets_downloads_on_every_core_finish);
async fn shutdown_lets_downloads_on_every_core_finish(layout: RuntimeLayout) {
    let media = media_root();
    let bytes = pattern(8 << 20, 9);
    write_file(&media.path().join("web/fitnessally/big.gif"), &bytes);
    let server = serve(media, layout, |c| {
        c.server.shutdown_grace = Duration::from_secs(10)
    })
    .await;
    let addr = server.addr;
    // Eight downloads under way (spread over the cores), each stopped after its first
    // 64 KiB while the server is told to stop.
    let mut downloads = Vec::new();
    for _ in 0..8 {
        let mut stream = send_get(addr, "/media/fitnessally/big.gif").await;
        let mut first = vec![0u8; 64 * 1024];
        stream.read_exact(&mut first).await.unwrap();
        downloads.push((stream, first));
    }
    assert_every_listener_served(&server, layout);
    let stopping = tokio::spawn(server.server.shutdown());
    wait_until("no longer accepting", Duration::from_secs(5), || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    for (mut stream, mut raw) in downloads {
        tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
            .await
            .expect("the download finishes")
            .unwrap();
        let response = parse(&raw, false);
        assert_eq!(response.status, 200);
        assert!(response.body == bytes, "every download completed intact");
    }
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown ends once the downloads have")
        .unwrap();
}

in_both_layouts!(idle_keep_alive_connections_do_not_hold_up_shutdown);
async fn idle_keep_alive_connections_do_not_hold_up_shutdown(layout: RuntimeLayout) {
    let media = media_root();
    big_and_small(&media);
    let server = serve(media, layout, |c| {
        c.server.shutdown_grace = Duration::from_secs(30)
    })
    .await;
    // Keep-alive connections that each had an answer and now sit idle, on every core.
    let mut idle = Vec::new();
    for _ in 0..12 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /media/fitnessally/a.gif HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut answer = vec![0u8; 4096];
        let n = stream.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
        idle.push(stream);
    }
    assert_every_listener_served(&server, layout);
    // Far within the 30 s grace: idle connections are closed at once.
    tokio::time::timeout(Duration::from_secs(5), server.stop())
        .await
        .expect("shutdown does not wait for idle connections");
    for mut stream in idle {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("closed");
        assert!(matches!(read, Ok(0) | Err(_)));
    }
}

in_both_layouts!(head_checks_answer_alike_on_every_core);
async fn head_checks_answer_alike_on_every_core(layout: RuntimeLayout) {
    let media = media_root();
    big_and_small(&media);
    let server = serve(media, layout, |_| {}).await;
    // One request per connection, a bad head (two Host lines) and a good one in turn,
    // until the kernel has put some of each on every listening socket.
    let exchange = |raw: &'static str| {
        let addr = server.addr;
        async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(raw.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
                .await
                .expect("answered and closed")
                .unwrap();
            String::from_utf8_lossy(&answer).into_owned()
        }
    };
    for _ in 0..12 {
        let bad = exchange(
            "GET /media/fitnessally/a.gif HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
        assert!(bad.contains("Host"), "the error names the Host line: {bad}");
        let good = exchange(
            "GET /media/fitnessally/a.gif HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(good.starts_with("HTTP/1.1 200 "), "{good}");
        assert!(good.ends_with("GIF89a"), "{good}");
    }
    assert_every_listener_served(&server, layout);
    server.stop().await;
}

#[tokio::test]
async fn a_second_server_cannot_join_a_per_core_servers_port() {
    let first = serve(media_root(), RuntimeLayout::PerCore, |_| {}).await;
    for layout in [RuntimeLayout::PerCore, RuntimeLayout::MultiThread] {
        let media = media_root();
        let mut config = oip_media::Config::for_media_dir(media.path());
        config.server.runtime = layout;
        config.server.workers = 2;
        config.server.port = first.addr.port();
        match oip_media::start(config).await {
            Err(oip_media::StartError::Bind { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse, "{layout:?}");
            }
            Err(other) => panic!("{layout:?}: {other}"),
            Ok(_) => panic!("{layout:?}: a second server shared the port"),
        }
    }
    first.stop().await;
}

#[test]
fn the_binary_stops_every_core_on_sigterm_after_the_downloads_finish() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Command, Stdio};
    let media = media_root();
    let bytes = pattern(8 << 20, 3);
    write_file(&media.path().join("web/p/big.gif"), &bytes);
    let mut child = Command::new(env!("CARGO_BIN_EXE_oip-media"))
        .env("MEDIA_DIR", media.path())
        .env("PORT", "0")
        .env("RUNTIME", "per-core")
        .env("WORKERS", "2")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "printed its address");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = out.read_to_string(&mut rest);
        rest
    });
    let mut downloads = Vec::new();
    for _ in 0..8 {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            stream,
            "GET /media/p/big.gif HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = vec![0u8; 64 * 1024];
        stream.read_exact(&mut raw).unwrap();
        downloads.push((stream, raw));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for (mut stream, mut raw) in downloads {
        stream.read_to_end(&mut raw).unwrap();
        let response = parse(&raw, false);
        assert_eq!(response.status, 200);
        assert!(response.body == bytes, "the download completed intact");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "exits after the downloads"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit 0: {exit:?}");
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "no longer listening"
    );
    let log = drain.join().unwrap();
    assert_eq!(log.matches("shutting down").count(), 1, "{log}");
}
