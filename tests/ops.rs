//! Operation: health, readiness, metrics, request ids, CORS, configuration errors and
//! graceful shutdown of the real binary.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn health_and_readiness() {
    let media = media_root();
    let server = start_with(media, |_| {}).await;
    let r = get(server.addr, "/healthz").await;
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let r = get(server.addr, "/readyz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["mediaRoots"]["web"], true);

    // A media root that becomes unreadable makes the service not ready, and says which.
    std::fs::rename(server.web(""), server.media.path().join("web-moved")).unwrap();
    let r = get(server.addr, "/readyz").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["mediaRoots"]["web"], false);
    std::fs::rename(server.media.path().join("web-moved"), server.web("")).unwrap();
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_bytes_and_memory() {
    let media = media_root();
    write_file(&media.path().join("web/p/a.gif"), &pattern(10_000, 1));
    let server = start_with(media, |_| {}).await;
    for _ in 0..3 {
        assert_eq!(get(server.addr, "/media/p/a.gif").await.status, 200);
    }
    assert_eq!(get(server.addr, "/media/p/missing.gif").await.status, 404);
    let r = get(server.addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").unwrap(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(r.body).unwrap();
    assert_eq!(
        metric(
            &text,
            "oip_media_http_responses_total{route=\"media\",class=\"2xx\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "oip_media_http_responses_total{route=\"media\",class=\"4xx\"}"
        ),
        Some(1.0)
    );
    assert!(metric(&text, "oip_media_body_bytes_sent_total").unwrap() >= 30_000.0);
    assert_eq!(metric(&text, "oip_media_map_cache_entries"), Some(1.0));
    assert!(metric(&text, "oip_media_process_rss_anon_bytes").unwrap() > 0.0);
    assert!(metric(&text, "oip_media_process_rss_file_bytes").is_some());
    assert!(metric(&text, "oip_media_process_open_fds").unwrap() > 0.0);
    assert_eq!(metric(&text, "oip_media_media_in_flight"), Some(0.0));
    assert!(metric(&text, "oip_media_media_shed_total{kind=\"queue_full\"}").is_some());
    assert!(
        metric(
            &text,
            "oip_media_connection_timeouts_total{kind=\"write_stall\"}"
        )
        .is_some()
    );
    server.stop().await;
}

#[tokio::test]
async fn health_and_metrics_are_never_queued_behind_media() {
    let media = media_root();
    let big = media.path().join("web/fitnessally/big.gif");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let server = start_with(media, |c| {
        c.admission.max_in_flight = 1;
        c.admission.max_queue = 100;
        c.admission.queue_timeout = Duration::from_secs(30);
    })
    .await;
    let state = std::sync::Arc::clone(server.server.app().state());
    // One slow reader holds the only slot; a second media request waits in the queue.
    let holder = send_get(server.addr, "/media/fitnessally/big.gif").await;
    let waiter = send_get(server.addr, "/media/fitnessally/big.gif").await;
    wait_until(
        "the second request is queued",
        Duration::from_secs(5),
        || state.gates.media.waiting() >= 1,
    )
    .await;
    assert_eq!(get(server.addr, "/healthz").await.status, 200);
    let metrics = get(server.addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert_eq!(get(server.addr, "/readyz").await.status, 200);
    // Answered while the media request still waited (counts, where a timing would be
    // flaky): health and metrics never queue behind media.
    assert_eq!(state.gates.media.waiting(), 1);
    let text = String::from_utf8(metrics.body).unwrap();
    assert_eq!(
        metric(&text, "oip_media_media_queue_waiting"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metric(&text, "oip_media_media_in_flight"), Some(1.0));
    drop((holder, waiter));
    server.stop().await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let server = start_with(media_root(), |_| {}).await;
    let r = request(
        server.addr,
        "GET",
        "/healthz",
        &[("X-Request-Id", "abc-123")],
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    let a = get(server.addr, "/healthz").await;
    let b = get(server.addr, "/nope").await;
    let (a, b) = (
        a.header("x-request-id").unwrap(),
        b.header("x-request-id").unwrap(),
    );
    assert_eq!(a.len(), 16);
    assert_ne!(a, b);
    let long = "x".repeat(200);
    let r = request(server.addr, "GET", "/healthz", &[("X-Request-Id", &long)]).await;
    assert_ne!(
        r.header("x-request-id"),
        Some(long.as_str()),
        "overlong ids are replaced"
    );
    server.stop().await;
}

#[tokio::test]
async fn cors_reflects_allowed_origins_and_never_errors_for_others() {
    let media = media_root();
    write_file(&media.path().join("web/p/a.gif"), b"gif");
    let server = start_with(media, |c| {
        c.cors.cors_origins =
            "https://fitnessally.io,https://*.fitnessally.io,chrome-extension://*".into();
    })
    .await;
    for origin in [
        "https://fitnessally.io",
        "https://app.fitnessally.io",
        "chrome-extension://abcdef",
    ] {
        let r = request(server.addr, "GET", "/media/p/a.gif", &[("Origin", origin)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert_eq!(r.header("vary"), Some("Origin"));
        let exposed = r.header("access-control-expose-headers").unwrap();
        for h in ["Content-Length", "Content-Range", "ETag"] {
            assert!(exposed.contains(h), "{h} exposed");
        }
    }
    let r = request(
        server.addr,
        "GET",
        "/media/p/a.gif",
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(r.status, 200, "other origins get the normal response");
    assert_eq!(r.body, b"gif");
    assert_eq!(r.header("access-control-allow-origin"), None);

    let pre = request(
        server.addr,
        "OPTIONS",
        "/media/p/a.gif",
        &[
            ("Origin", "https://app.fitnessally.io"),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "range"),
        ],
    )
    .await;
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("https://app.fitnessally.io")
    );
    assert!(
        pre.header("access-control-allow-methods")
            .unwrap()
            .contains("GET")
    );
    assert!(
        pre.header("access-control-allow-headers")
            .unwrap()
            .contains("Range")
    );
    let blocked = request(
        server.addr,
        "OPTIONS",
        "/media/p/a.gif",
        &[
            ("Origin", "https://evil.example"),
            ("Access-Control-Request-Method", "GET"),
        ],
    )
    .await;
    assert_eq!(blocked.status, 204);
    assert_eq!(blocked.header("access-control-allow-origin"), None);
    server.stop().await;
}

#[test]
fn invalid_configuration_fails_at_start_naming_the_option() {
    let bin = env!("CARGO_BIN_EXE_oip-media");
    let out = Command::new(bin)
        .args(["--port", "0", "--max-in-flight", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--max-in-flight"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(bin)
        .args(["--write-stall-timeout", "soon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--write-stall-timeout"));
    let out = Command::new(bin)
        .args(["--port", "0", "--media-dir", "/definitely/not/here"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MEDIA_DIR"));
}

#[test]
fn help_documents_every_option_with_its_default() {
    let out = Command::new(env!("CARGO_BIN_EXE_oip-media"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--media-dir",
        "--port",
        "--bind",
        "--max-in-flight",
        "--max-queue",
        "--queue-timeout",
        "--header-read-timeout",
        "--keep-alive-timeout",
        "--write-stall-timeout",
        "--stalled-after",
        "--max-stalled",
        "--max-connections",
        "--cors-origins",
        "--log-format",
    ] {
        assert!(help.contains(flag), "{flag} in --help");
    }
    assert!(help.contains("[env: MEDIA_DIR="), "env twins shown");
    assert!(help.contains("[default: 8080]"));
    assert!(help.contains("[env: STALLED_AFTER"));
    assert!(
        help.contains("[default: 500ms]"),
        "--stalled-after's default"
    );
}

#[test]
fn sigterm_lets_a_slow_download_finish_then_exits_zero() {
    let media = media_root();
    let bytes = pattern(24 << 20, 5);
    write_file(&media.path().join("web/p/big.gif"), &bytes);
    let mut child = Command::new(env!("CARGO_BIN_EXE_oip-media"))
        .envs(test_runtime_env())
        .env("MEDIA_DIR", media.path())
        .env("PORT", "0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The port comes from the "listening on" line.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "server printed its address"
        );
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = out.read_to_string(&mut rest);
        rest
    });

    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "GET /media/p/big.gif HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = vec![0u8; 64 * 1024];
    stream.read_exact(&mut raw).unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Keep reading slowly for a while: the download must still complete.
    std::thread::sleep(Duration::from_millis(300));
    stream.read_to_end(&mut raw).unwrap();
    let response = parse(&raw, false);
    assert_eq!(response.status, 200);
    assert!(
        response.body == bytes,
        "the download under way completed intact"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "exits after the download");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit 0 after a graceful shutdown: {exit:?}");
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "no longer listening"
    );
    let log = drain.join().unwrap();
    assert!(log.contains("shutting down"), "{log}");
}

#[tokio::test]
async fn every_byte_serving_route_shares_the_limiter() {
    let media = media_root();
    let big = media.path().join("web/fitnessally/big.gif");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let id = "ab".repeat(32);
    write_file(
        &media.path().join(&id).join("original"),
        b"content-addressed",
    );
    write_file(&media.path().join("generated/tts.mp3"), b"audio");
    let server = start_with(media, |c| {
        c.admission.max_in_flight = 1;
        c.admission.max_queue = 0;
    })
    .await;
    let state = std::sync::Arc::clone(server.server.app().state());
    let holder = send_get(server.addr, "/media/fitnessally/big.gif").await;
    wait_until("the slot is taken", Duration::from_secs(5), || {
        state.gates.media.in_flight() >= 1
    })
    .await;
    for path in [
        format!("/api/media/{id}"),
        "/api/generate/media?id=tts.mp3".to_owned(),
        "/api/media?id=tts.mp3".to_owned(),
    ] {
        let r = get(server.addr, &path).await;
        assert_eq!(r.status, 503, "{path} is behind the media limiter");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert_eq!(get(server.addr, "/healthz").await.status, 200);
    drop(holder);
    wait_until("the slot is released", Duration::from_secs(5), || {
        state.gates.media.in_flight() == 0
    })
    .await;
    assert_eq!(
        get(server.addr, &format!("/api/media/{id}")).await.status,
        200
    );
    assert_eq!(
        get(server.addr, "/api/generate/media?id=tts.mp3")
            .await
            .status,
        200
    );
    server.stop().await;
}

#[tokio::test]
async fn gun_counters_and_breaker_show_in_metrics_and_readiness() {
    let relay = support::relay_stub::RelayStub::start().await;
    relay.store("abc123:rec", serde_json::json!({ "name": "x" }));
    let base = relay.base_url();
    let server = start_with(media_root(), |c| c.gun.gun_peers = Some(base.clone())).await;
    assert_eq!(
        get(server.addr, "/gun-relay/get?soul=abc123:rec")
            .await
            .status,
        200
    );
    assert_eq!(
        get(server.addr, "/gun-relay/get?soul=abc123:missing")
            .await
            .status,
        404
    );
    assert_eq!(
        get(server.addr, "/gun-relay/get?soul=abc123:missing")
            .await
            .status,
        404
    );
    let text = String::from_utf8(get(server.addr, "/metrics").await.body).unwrap();
    assert_eq!(
        metric(&text, "oip_media_gun_gets_total"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "oip_media_gun_upstream_requests_total"),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            "oip_media_gun_get_results_total{kind=\"negative_cache_hit\"}"
        ),
        Some(1.0)
    );
    assert_eq!(metric(&text, "oip_media_gun_breaker_state"), Some(0.0));
    assert_eq!(
        metric(
            &text,
            "oip_media_http_responses_total{route=\"gun_relay\",class=\"4xx\"}"
        ),
        Some(2.0)
    );
    let ready = get(server.addr, "/readyz").await.json();
    assert_eq!(ready["gun"]["configured"], true);
    assert_eq!(ready["gun"]["breaker"], "closed");
    server.stop().await;
}

#[tokio::test]
async fn resolver_counters_show_in_metrics() {
    let server = start_with(media_root(), |_| {}).await;
    let body = r#"{"records":[{"data":{"basic":{"name":"a"},"links":{"x":"did:arweave:nope"}},"oip":{"did":"did:arweave:a"}}],"resolveDepth":1}"#;
    let len = body.len().to_string();
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let text = format!(
        "POST /api/resolve HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}"
    );
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut raw)
        .await
        .unwrap();
    assert_eq!(parse(&raw, false).status, 200);
    let text = String::from_utf8(get(server.addr, "/metrics").await.body).unwrap();
    assert_eq!(
        metric(&text, "oip_media_resolve_requests_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "oip_media_resolve_lookups_total{kind=\"no_source\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "oip_media_http_responses_total{route=\"resolve\",class=\"2xx\"}"
        ),
        Some(1.0)
    );
    assert!(metric(&text, "oip_media_resolve_cache_entries").is_some());
    server.stop().await;
}

#[test]
fn the_readme_run_command_starts_the_service() {
    // `cargo run --release` must pick the service, not the sample generator.
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    assert!(manifest.contains("default-run = \"oip-media\""));
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let first_block: Vec<&str> = readme.split("```").nth(1).unwrap().lines().collect();
    assert!(
        first_block
            .iter()
            .any(|l| l.starts_with("cargo run --release"))
    );
    assert!(first_block.iter().any(|l| l.starts_with("cargo test")));
}
