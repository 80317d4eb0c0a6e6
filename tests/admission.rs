//! Each admission point has its own bound: stills, `/info`, GUN puts and GUN gets wait in
//! their own bounded queues and never hold a GIF-serving (media) slot while they wait,
//! and the GIF decoding workers' own wait is bounded in length and time. Past any bound:
//! `503`, `Retry-After`, `Cache-Control: no-store` and a JSON body, counted in
//! `/metrics`.
//!
//! Slow decodes are simulated with the GIF workers' stall hook (a render of a sane GIF
//! is too quick to hold a worker deterministically). Loopback only; every wait bounded.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::media::{media_id, pattern_gif};
use support::relay_stub::{RelayStub, Reply};
use support::{RawResponse, TestServer, metric, send_get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a prompt answer may take here: generous for a debug build on a loaded
/// 2-core machine, far below the waits the bounds are tested against.
const PROMPT: Duration = Duration::from_secs(3);

/// Reads the whole answer of a request sent with `send_get` (or by hand).
async fn finish(mut stream: TcpStream, limit: Duration) -> RawResponse {
    let mut raw = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut raw))
        .await
        .expect("answered in time")
        .expect("read");
    support::parse(&raw, false)
}

/// `/metrics` as text.
async fn metrics(server: &TestServer) -> String {
    server.get("/metrics").await.text().await.expect("metrics")
}

/// The value of one metric line (0 when absent).
async fn gauge(server: &TestServer, name: &str) -> f64 {
    metric(&metrics(server).await, name).unwrap_or(0.0)
}

/// Waits until the metric `name` reads `value`.
async fn until_metric(server: &TestServer, name: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = gauge(server, name).await;
        if now == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {now}, not {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The shape every shed request gets.
fn assert_shed(response: &RawResponse, reason: &str) {
    assert_eq!(
        response.status,
        503,
        "{:?}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json"))
    );
    let body = response.json();
    assert_eq!(body["error"], "Server busy, retry shortly");
    assert_eq!(body["reason"], reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stills_waiting_for_renders_never_hold_a_gif_serving_slot() {
    let server = TestServer::start(|c| {
        c.gif.still_workers = 1;
        c.gif.still_worker_queue = 8;
        c.gif.still_worker_timeout = Duration::from_secs(60);
        c.admission.still_max_in_flight = 2;
        c.admission.still_max_queue = 2;
        c.admission.still_queue_timeout = Duration::from_secs(60);
        // As few GIF slots as stills waiting: before stills had their own admission,
        // the four waiting stills held all of them and every GIF got 503.
        c.admission.max_in_flight = 4;
        c.admission.max_queue = 0;
    })
    .await;
    let gif = pattern_gif(64, 48);
    for n in 0..6 {
        server.put_web(&format!("s{n}.gif"), &gif);
    }
    server.put_web("plain.gif", &gif);
    server
        .app()
        .state()
        .gifs
        .inject_decode_stall(Some(Duration::from_secs(60)));

    // Two stills admitted (one decoding, one waiting for the worker), two queued.
    let mut waiting = Vec::new();
    for n in 0..4 {
        waiting.push(
            send_get(
                server.addr,
                &format!("/media/fitnessally/s{n}.gif?still=1&w=90"),
            )
            .await,
        );
        let (in_flight, queued) = if n < 2 { (n + 1, 0) } else { (2, n - 1) };
        until_metric(&server, "oip_media_still_in_flight", in_flight as f64).await;
        until_metric(&server, "oip_media_still_queue_waiting", queued as f64).await;
    }
    until_metric(&server, "oip_media_gif_workers_in_flight", 1.0).await;
    until_metric(&server, "oip_media_gif_workers_queue_waiting", 1.0).await;

    // Past the still queue: shed at once.
    for n in 4..6 {
        let started = Instant::now();
        let shed = support::get(server.addr, &format!("/media/fitnessally/s{n}.gif?still=1")).await;
        assert_shed(&shed, "wait queue full");
        assert!(
            started.elapsed() < PROMPT,
            "shed at once: {:?}",
            started.elapsed()
        );
    }

    // GIFs are served promptly, again and again, while the stills wait.
    for round in 0..3 {
        let mut gets = Vec::new();
        for _ in 0..4 {
            gets.push(tokio::spawn(support::get(
                server.addr,
                "/media/fitnessally/plain.gif",
            )));
        }
        for get in gets {
            let started = Instant::now();
            let response = get.await.expect("task");
            assert_eq!(response.status, 200, "round {round}");
            assert_eq!(response.body, gif);
            assert!(started.elapsed() < PROMPT);
        }
    }
    let text = metrics(&server).await;
    assert_eq!(
        metric(&text, "oip_media_media_in_flight"),
        Some(0.0),
        "the waiting stills take no GIF slot"
    );
    assert_eq!(metric(&text, "oip_media_media_queue_waiting"), Some(0.0));
    assert_eq!(metric(&text, "oip_media_still_in_flight"), Some(2.0));
    assert_eq!(metric(&text, "oip_media_still_queue_waiting"), Some(2.0));
    assert_eq!(metric(&text, "oip_media_still_in_flight_limit"), Some(2.0));
    assert_eq!(metric(&text, "oip_media_still_queue_limit"), Some(2.0));
    assert_eq!(
        metric(&text, "oip_media_still_shed_total{kind=\"queue_full\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, "oip_media_media_shed_total{kind=\"queue_full\"}"),
        Some(0.0)
    );

    // The renders go on once decoding is fast again: every waiting still is a PNG.
    server.app().state().gifs.inject_decode_stall(None);
    for stream in waiting {
        let still = finish(stream, Duration::from_secs(20)).await;
        assert_eq!(still.status, 200);
        assert_eq!(still.header("content-type"), Some("image/png"));
    }
    until_metric(&server, "oip_media_still_in_flight", 0.0).await;
    let text = metrics(&server).await;
    assert_eq!(
        metric(&text, "oip_media_still_admitted_total{kind=\"after_wait\"}"),
        Some(2.0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decoding_workers_wait_is_bounded_in_length_and_time() {
    let server = TestServer::start(|c| {
        c.gif.still_workers = 1;
        c.gif.still_worker_queue = 1;
        c.gif.still_worker_timeout = Duration::from_millis(400);
    })
    .await;
    let gif = pattern_gif(32, 32);
    for n in 0..3 {
        server.put_web(&format!("w{n}.gif"), &gif);
    }
    server
        .app()
        .state()
        .gifs
        .inject_decode_stall(Some(Duration::from_secs(60)));
    let decoding = send_get(server.addr, "/media/fitnessally/w0.gif?still=1").await;
    until_metric(&server, "oip_media_gif_workers_in_flight", 1.0).await;
    let queued = send_get(server.addr, "/media/fitnessally/w1.gif?still=1").await;
    let sent = Instant::now();
    until_metric(&server, "oip_media_gif_workers_queue_waiting", 1.0).await;

    let refused = support::get(server.addr, "/media/fitnessally/w2.gif?still=1").await;
    assert_shed(&refused, "wait queue full");

    let timed_out = finish(queued, Duration::from_secs(10)).await;
    assert_shed(&timed_out, "waited too long for a slot");
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_millis(400) + PROMPT,
        "bounded by --still-worker-timeout: {waited:?}"
    );
    let text = metrics(&server).await;
    assert_eq!(
        metric(
            &text,
            "oip_media_gif_workers_shed_total{kind=\"queue_full\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "oip_media_gif_workers_shed_total{kind=\"queue_timeout\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "oip_media_gif_workers_in_flight_limit"),
        Some(1.0)
    );

    // A shed decode is not remembered: once the worker is free, the same still renders.
    server.app().state().gifs.inject_decode_stall(None);
    assert_eq!(finish(decoding, Duration::from_secs(20)).await.status, 200);
    let again = support::get(server.addr, "/media/fitnessally/w1.gif?still=1").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("content-type"), Some("image/png"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_has_its_own_admission_and_gifs_are_served_while_it_waits() {
    let server = TestServer::start(|c| {
        c.admission.info_max_in_flight = 1;
        c.admission.info_max_queue = 1;
        c.admission.info_queue_timeout = Duration::from_millis(400);
        c.admission.max_in_flight = 1;
        c.admission.max_queue = 0;
    })
    .await;
    let gif = pattern_gif(40, 30);
    let manifest = json!({"mimeType": "image/gif", "accessLevel": "public"});
    for n in 1..=2 {
        server.put_media(&media_id(n), &gif, Some(manifest.clone()));
    }
    server
        .app()
        .state()
        .gifs
        .inject_decode_stall(Some(Duration::from_secs(60)));
    let parsing = send_get(server.addr, &format!("/api/media/{}/info", media_id(1))).await;
    until_metric(&server, "oip_media_info_in_flight", 1.0).await;
    until_metric(&server, "oip_media_gif_workers_in_flight", 1.0).await;
    let queued = send_get(server.addr, &format!("/api/media/{}/info", media_id(2))).await;
    until_metric(&server, "oip_media_info_queue_waiting", 1.0).await;
    let full = support::get(server.addr, &format!("/api/media/{}/info", media_id(2))).await;
    assert_shed(&full, "wait queue full");

    // The one GIF slot is free: the item's bytes are served at once.
    for _ in 0..3 {
        let started = Instant::now();
        let bytes = support::get(server.addr, &format!("/api/media/{}", media_id(1))).await;
        assert_eq!(bytes.status, 200);
        assert_eq!(bytes.body, gif);
        assert!(started.elapsed() < PROMPT);
    }
    assert_eq!(gauge(&server, "oip_media_media_in_flight").await, 0.0);

    let timed_out = finish(queued, Duration::from_secs(10)).await;
    assert_shed(&timed_out, "waited too long for a slot");
    server.app().state().gifs.inject_decode_stall(None);
    let info = finish(parsing, Duration::from_secs(20)).await;
    assert_eq!(info.status, 200);
    assert_eq!(info.json()["gif"]["width"], 40);
    let text = metrics(&server).await;
    assert_eq!(
        metric(&text, "oip_media_info_shed_total{kind=\"queue_full\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "oip_media_info_shed_total{kind=\"queue_timeout\"}"),
        Some(1.0)
    );
    server.stop().await;
}

/// A put of `body` on a fresh connection, sent whole; the connection, to read later.
async fn send_put(addr: std::net::SocketAddr, body: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /gun-relay/put HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("send head");
    stream.write_all(body.as_bytes()).await.expect("send body");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gun_puts_are_admitted_before_their_body_is_read_and_bounded() {
    let relay = RelayStub::start().await;
    relay.set_put_reply(Some(Reply::Hang));
    relay.store("known", json!({"a": 1}));
    let server = TestServer::start(|c| {
        c.gun.gun_peers = Some(relay.base_url());
        c.gun.gun_attempts = 1;
        c.gun.gun_attempt_timeout = Duration::from_secs(3);
        c.gun.gun_deadline = Duration::from_secs(3);
        c.gun.gun_put_body_timeout = Duration::from_secs(3);
        c.gun.gun_summary_interval = Duration::ZERO;
        c.gun.gun_put_max_in_flight = 2;
        c.gun.gun_put_max_queue = 1;
        c.gun.gun_put_queue_timeout = Duration::from_millis(400);
    })
    .await;
    // One put waits on the relay; one client sends its head and never its body: both
    // hold a put slot (admission comes before the body, so buffered bodies are bounded
    // by the slots), neither holds anything else.
    let waiting_on_relay = send_put(server.addr, r#"{"soul":"s1","data":{"x":1}}"#).await;
    let mut slow_sender = TcpStream::connect(server.addr).await.expect("connect");
    slow_sender
        .write_all(b"POST /gun-relay/put HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"so")
        .await
        .expect("send");
    until_metric(&server, "oip_media_gun_put_in_flight", 2.0).await;
    let queued = send_put(server.addr, r#"{"soul":"s2","data":null}"#).await;
    let sent = Instant::now();
    until_metric(&server, "oip_media_gun_put_queue_waiting", 1.0).await;
    let started = Instant::now();
    let full = finish(
        send_put(server.addr, r#"{"soul":"s3","data":null}"#).await,
        PROMPT,
    )
    .await;
    assert_shed(&full, "wait queue full");
    assert!(started.elapsed() < PROMPT);
    let timed_out = finish(queued, Duration::from_secs(10)).await;
    assert_shed(&timed_out, "waited too long for a slot");
    assert!(sent.elapsed() >= Duration::from_millis(350));

    // Gets are not behind the put bound, and no GIF slot was taken.
    let got = server.get("/gun-relay/get?soul=known").await;
    assert_eq!(got.status(), 200);
    let text = metrics(&server).await;
    assert_eq!(metric(&text, "oip_media_media_in_flight"), Some(0.0));
    assert_eq!(
        metric(&text, "oip_media_gun_put_shed_total{kind=\"queue_full\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "oip_media_gun_put_in_flight_limit"),
        Some(2.0)
    );

    // Each slot comes back within its own bounds: the relay's deadline (504), the
    // body timeout (408). Then the next put goes through.
    relay.set_put_reply(None);
    assert_eq!(
        finish(waiting_on_relay, Duration::from_secs(10))
            .await
            .status,
        504
    );
    assert_eq!(
        finish(slow_sender, Duration::from_secs(10)).await.status,
        408
    );
    until_metric(&server, "oip_media_gun_put_in_flight", 0.0).await;
    let stored = finish(
        send_put(server.addr, r#"{"soul":"s4","data":{"y":2}}"#).await,
        PROMPT,
    )
    .await;
    assert_eq!(
        stored.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&stored.body)
    );
    assert_eq!(stored.json(), json!({"success": true, "soul": "s4"}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_share_one_budget_taken_before_they_are_read() {
    let relay = RelayStub::start().await;
    let server = TestServer::start(|c| {
        c.gun.gun_peers = Some(relay.base_url());
        c.gun.gun_summary_interval = Duration::ZERO;
        c.gun.gun_put_body_limit = 512 << 10;
        c.resolver.resolve_body_limit = 512 << 10;
        c.resolver.resolve_body_timeout = Duration::from_secs(3);
        c.admission.request_body_budget = 1 << 20;
        c.admission.request_body_queue = 0;
    })
    .await;
    // Two slow resolve senders: 400 KiB declared, 200 KiB sent, then nothing. Each
    // holds its declared share (no resolve slot: that is taken after the body).
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        let head = format!(
            "POST /api/resolve HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            400 << 10
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        stream
            .write_all(&vec![b' '; 200 << 10])
            .await
            .expect("part");
        slow.push(stream);
    }
    until_metric(
        &server,
        "oip_media_request_body_in_flight_bytes",
        800.0 * 1024.0,
    )
    .await;
    assert_eq!(gauge(&server, "oip_media_resolve_in_flight").await, 0.0);

    // 300 KiB more does not fit in the 1 MiB budget: 503 at once (no queue here).
    let body = format!(r#"{{"soul":"big","data":"{}"}}"#, "x".repeat(300 << 10));
    let refused = finish(send_put(server.addr, &body).await, PROMPT).await;
    assert_shed(&refused, "wait queue full");
    // 64 KiB does: it is read, put, answered, and its share given back.
    let body = format!(r#"{{"soul":"small","data":"{}"}}"#, "x".repeat(64 << 10));
    let stored = finish(send_put(server.addr, &body).await, PROMPT).await;
    assert_eq!(
        stored.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&stored.body)
    );
    let text = metrics(&server).await;
    assert_eq!(
        metric(&text, "oip_media_request_body_in_flight_bytes"),
        Some(800.0 * 1024.0)
    );
    assert_eq!(
        metric(
            &text,
            "oip_media_request_body_shed_total{kind=\"queue_full\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "oip_media_request_body_in_flight_limit_bytes"),
        Some(1024.0 * 1024.0)
    );
    // The slow senders time out (408) and give their share back.
    for stream in slow {
        assert_eq!(finish(stream, Duration::from_secs(10)).await.status, 408);
    }
    until_metric(&server, "oip_media_request_body_in_flight_bytes", 0.0).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gun_gets_have_their_own_bounded_admission() {
    let relay = RelayStub::start().await;
    relay.set_default(Some(Reply::Hang));
    relay.store("known", json!({"a": 1}));
    let server = TestServer::start(|c| {
        c.gun.gun_peers = Some(relay.base_url());
        c.gun.gun_attempts = 1;
        c.gun.gun_attempt_timeout = Duration::from_secs(3);
        c.gun.gun_deadline = Duration::from_secs(3);
        c.gun.gun_summary_interval = Duration::ZERO;
        c.gun.gun_get_max_in_flight = 2;
        c.gun.gun_get_max_queue = 1;
        c.gun.gun_get_queue_timeout = Duration::from_millis(400);
    })
    .await;
    // Two gets wait on a relay that does not answer: both slots are taken.
    let first = send_get(server.addr, "/gun-relay/get?soul=slow-1").await;
    let second = send_get(server.addr, "/gun-relay/get?soul=slow-2").await;
    until_metric(&server, "oip_media_gun_get_in_flight", 2.0).await;
    let queued = send_get(server.addr, "/gun-relay/get?soul=slow-3").await;
    let sent = Instant::now();
    until_metric(&server, "oip_media_gun_get_queue_waiting", 1.0).await;
    let started = Instant::now();
    let full = finish(
        send_get(server.addr, "/gun-relay/get?soul=slow-4").await,
        PROMPT,
    )
    .await;
    assert_shed(&full, "wait queue full");
    assert!(started.elapsed() < PROMPT);
    let timed_out = finish(queued, Duration::from_secs(10)).await;
    assert_shed(&timed_out, "waited too long for a slot");
    assert!(sent.elapsed() >= Duration::from_millis(350));
    assert_eq!(relay.requests(), 2, "shed gets never reached the relay");

    // Nothing else waits behind the get bound: health and puts are answered, and no
    // GIF-serving slot was taken.
    assert_eq!(server.get("/healthz").await.status(), 200);
    let put = finish(
        send_put(server.addr, r#"{"soul":"p","data":{"x":1}}"#).await,
        PROMPT,
    )
    .await;
    assert_eq!(put.status, 200, "{:?}", String::from_utf8_lossy(&put.body));
    let text = metrics(&server).await;
    assert_eq!(metric(&text, "oip_media_media_in_flight"), Some(0.0));
    assert_eq!(
        metric(&text, "oip_media_gun_get_shed_total{kind=\"queue_full\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "oip_media_gun_get_in_flight_limit"),
        Some(2.0)
    );

    // The slots come back within the relay's deadline (504), then gets go through.
    assert_eq!(finish(first, Duration::from_secs(10)).await.status, 504);
    assert_eq!(finish(second, Duration::from_secs(10)).await.status, 504);
    until_metric(&server, "oip_media_gun_get_in_flight", 0.0).await;
    let got = finish(
        send_get(server.addr, "/gun-relay/get?soul=known").await,
        PROMPT,
    )
    .await;
    assert_eq!(got.status, 200);
    server.stop().await;
}
