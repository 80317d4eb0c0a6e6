//! The GUN relay client against a scripted relay stand-in: every claim is proved by the
//! number of requests the relay received.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use oip_media::Config;
use oip_media::config::GunSettings;
use oip_media::gun::{BreakerState, GunClient, GunError, GunRecord};
use serde_json::json;
use support::relay_stub::{RelayStub, Reply};
use support::wait_until;

/// Settings for tests: every bound short, so a failing test fails in seconds.
fn settings(base: &str) -> GunSettings {
    let mut settings = Config::for_media_dir("/nonexistent").gun;
    settings.gun_peers = Some(base.to_owned());
    settings.gun_attempts = 3;
    settings.gun_attempt_timeout = Duration::from_secs(2);
    settings.gun_deadline = Duration::from_secs(5);
    settings.gun_backoff_base = Duration::from_millis(10);
    settings.gun_negative_cache_ttl = Duration::from_secs(60);
    settings.gun_breaker_threshold = 50;
    settings.gun_summary_interval = Duration::ZERO;
    settings
}

fn client(settings: &GunSettings) -> Arc<GunClient> {
    Arc::new(GunClient::new(settings).expect("client"))
}

#[tokio::test]
async fn fifty_six_missing_souls_cost_56_requests_then_none() {
    let relay = RelayStub::start().await;
    let gun = client(&settings(&relay.base_url()));
    let souls: Vec<String> = (0..56)
        .map(|i| format!("0123456789ab:missing{i}"))
        .collect();

    for soul in &souls {
        assert_eq!(gun.get(soul).await, Ok(GunRecord::Missing));
    }
    assert_eq!(
        relay.requests(),
        56,
        "one request per missing soul, no retries"
    );

    for soul in &souls {
        assert_eq!(gun.get(soul).await, Ok(GunRecord::Missing));
    }
    assert_eq!(
        relay.requests(),
        56,
        "second pass answered from the negative cache"
    );

    let counters = gun.counters();
    assert_eq!(counters.requests.get(), 112);
    assert_eq!(counters.upstream_requests.get(), 56);
    assert_eq!(counters.upstream_404s.get(), 56);
    assert_eq!(counters.misses.get(), 112);
    assert_eq!(counters.negative_cache_hits.get(), 56);
    assert_eq!(counters.retries.get(), 0);
    assert!((counters.negative_cache_hit_rate() - 0.5).abs() < 1e-9);
}

#[tokio::test]
async fn a_hundred_concurrent_gets_of_one_soul_send_one_request() {
    let relay = RelayStub::start().await;
    let mut settings = settings(&relay.base_url());
    settings.gun_attempts = 1;
    let gun = client(&settings);
    let record = json!({"data": {"basic": {"name": "Bench press"}}});
    relay.script(
        "a:found",
        [Reply::after_ms(200, Reply::Found(record.clone()))],
    );
    relay.script("a:missing", [Reply::after_ms(200, Reply::NotFound)]);
    relay.script(
        "a:error",
        [Reply::after_ms(200, Reply::Status(503, "busy".into()))],
    );

    for (soul, expected) in [
        ("a:found", Ok(GunRecord::Found(record.clone()))),
        ("a:missing", Ok(GunRecord::Missing)),
        ("a:error", Err("unavailable")),
    ] {
        let calls = (0..100).map(|_| {
            let gun = Arc::clone(&gun);
            tokio::spawn(async move { gun.get(soul).await })
        });
        for result in futures_util::future::join_all(calls).await {
            let result = result.expect("task");
            match &expected {
                Ok(record) => assert_eq!(result.as_ref(), Ok(record), "{soul}"),
                Err(kind) => assert_eq!(result.map_err(|e| e.kind()), Err(*kind), "{soul}"),
            }
        }
        assert_eq!(relay.gets_of(soul), 1, "{soul}: 100 callers, one request");
    }
    assert_eq!(gun.counters().coalesced.get(), 297);
    assert_eq!(
        gun.in_flight(),
        0,
        "finished calls leave the single-flight map"
    );

    // An error is shared, not remembered: the next get asks again.
    relay.store("a:error", json!({"ok": true}));
    assert_eq!(
        gun.get("a:error").await,
        Ok(GunRecord::Found(json!({"ok": true})))
    );
    assert_eq!(relay.gets_of("a:error"), 2);
}

#[tokio::test]
async fn a_404_or_a_400_is_exactly_one_request() {
    let relay = RelayStub::start().await;
    let gun = client(&settings(&relay.base_url()));

    assert_eq!(gun.get("a:404").await, Ok(GunRecord::Missing));
    assert_eq!(relay.requests(), 1);

    relay.script(
        "a:400",
        [Reply::Status(400, r#"{"error":"Bad soul"}"#.into())],
    );
    assert_eq!(
        gun.get("a:400").await,
        Err(GunError::BadRequest {
            status: 400,
            message: "Bad soul".into()
        })
    );
    assert_eq!(relay.requests(), 2, "a 400 is never retried");
    assert_eq!(gun.counters().retries.get(), 0);
}

#[tokio::test]
async fn a_503_is_sent_the_configured_number_of_times() {
    let relay = RelayStub::start().await;
    let mut settings = settings(&relay.base_url());
    settings.gun_attempts = 4;
    let gun = client(&settings);
    relay.set_default(Some(Reply::Status(503, "Service Unavailable".into())));

    let result = gun.get("a:busy").await;
    assert!(
        matches!(
            result,
            Err(GunError::Unavailable {
                status: Some(503),
                attempts: 4,
                timed_out: false,
                ..
            })
        ),
        "{result:?}"
    );
    assert_eq!(relay.requests(), 4);
    let counters = gun.counters();
    assert_eq!(counters.retries.get(), 3);
    assert_eq!(counters.errors.unavailable.get(), 1);
    assert_eq!(gun.negative_cache_len(), 0, "an error is not a miss");
}

#[tokio::test]
async fn a_503_then_an_answer_succeeds_on_retry() {
    let relay = RelayStub::start().await;
    let gun = client(&settings(&relay.base_url()));
    relay.script(
        "a:1",
        [
            Reply::Status(503, "restarting".into()),
            Reply::Found(json!({"n": 1})),
        ],
    );
    assert_eq!(gun.get("a:1").await, Ok(GunRecord::Found(json!({"n": 1}))));
    assert_eq!(relay.requests(), 2);
}

#[tokio::test]
async fn a_hanging_relay_times_out_per_attempt() {
    let relay = RelayStub::start().await;
    let mut settings = settings(&relay.base_url());
    settings.gun_attempts = 2;
    settings.gun_attempt_timeout = Duration::from_millis(200);
    let gun = client(&settings);
    relay.set_default(Some(Reply::Hang));

    let started = Instant::now();
    let result = gun.get("a:slow").await;
    assert!(
        matches!(
            result,
            Err(GunError::Unavailable {
                timed_out: true,
                attempts: 2,
                ..
            })
        ),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(relay.requests(), 2);
}

#[tokio::test]
async fn the_deadline_bounds_the_whole_call() {
    let relay = RelayStub::start().await;
    let mut settings = settings(&relay.base_url());
    settings.gun_attempts = 10;
    settings.gun_attempt_timeout = Duration::from_millis(400);
    settings.gun_deadline = Duration::from_millis(500);
    let gun = client(&settings);
    relay.set_default(Some(Reply::Hang));

    let started = Instant::now();
    let result = gun.get("a:slow").await;
    let elapsed = started.elapsed();
    assert!(
        matches!(
            result,
            Err(GunError::Unavailable {
                timed_out: true,
                ..
            })
        ),
        "{result:?}"
    );
    // Two attempts fit (400 ms, then the 100 ms left); the second is cut at the deadline
    // rather than given its own 400 ms.
    assert!(elapsed < Duration::from_millis(750), "{elapsed:?}");
    assert!(
        relay.requests() <= 2,
        "{} requests within 500 ms",
        relay.requests()
    );
}

#[tokio::test]
async fn dropped_connections_are_unavailable_and_retried() {
    let relay = RelayStub::start().await;
    let gun = client(&settings(&relay.base_url()));
    relay.set_default(Some(Reply::Drop));

    let result = gun.get("a:1").await;
    assert!(
        matches!(result, Err(GunError::Unavailable { attempts: 3, .. })),
        "{result:?}"
    );
    assert_eq!(relay.requests(), 3);
    assert_eq!(gun.negative_cache_len(), 0);
}

#[tokio::test]
async fn nothing_listening_is_unavailable_not_a_miss() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let gun = client(&settings(&format!("http://{closed}")));
    let result = gun.get("a:1").await;
    assert!(
        matches!(result, Err(GunError::Unavailable { attempts: 3, .. })),
        "{result:?}"
    );
    assert_eq!(gun.counters().upstream_requests.get(), 3);
}

#[tokio::test]
async fn a_wrong_base_url_is_an_error_and_never_a_cached_miss() {
    let relay = RelayStub::start().await;
    // The relay's websocket path is a common mistake in GUN_PEERS.
    let gun = client(&settings(&format!("{}/gun", relay.base_url())));

    for round in 1..=2 {
        let result = gun.get("a:1").await;
        assert!(
            matches!(&result, Err(GunError::Misconfigured { status: 404, body, .. }) if body.contains("Endpoint not found")),
            "{result:?}"
        );
        assert_eq!(relay.requests(), round, "not retried, not cached");
    }
    assert_eq!(gun.negative_cache_len(), 0);
    let counters = gun.counters();
    assert_eq!(counters.errors.misconfigured.get(), 2);
    assert_eq!(counters.misses.get(), 0);
    assert_eq!(
        gun.breaker_state(),
        BreakerState::Closed,
        "the URL answers: not an outage"
    );

    // Any 404 body other than the relay's record miss is the same error.
    let relay = RelayStub::start().await;
    let gun = client(&settings(&relay.base_url()));
    relay.script("a:1", [Reply::Status(404, "Cannot GET /get".into())]);
    assert!(matches!(
        gun.get("a:1").await,
        Err(GunError::Misconfigured { .. })
    ));
}

#[tokio::test]
async fn a_miss_expires_after_its_ttl() {
    let relay = RelayStub::start().await;
    let mut settings = settings(&relay.base_url());
    settings.gun_negative_cache_ttl = Duration::from_millis(300);
    let gun = client(&settings);

    assert_eq!(gun.get("a:1").await, Ok(GunRecord::Missing));
    assert_eq!(gun.get("a:1").await, Ok(GunRecord::Missing));
    assert_eq!(relay.requests(), 1, "cached within the TTL");

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(gun.get("a:1").await, Ok(GunRecord::Missing));
    assert_eq!(relay.requests(), 2, "expired entry not served");
}

#[tokio::test]
async fn a_put_sends_the_next_get_upstream() {
    let relay = RelayStub::start().await;
    let gun = client(&settings(&relay.base_url()));

    assert_eq!(gun.get("a:1").await, Ok(GunRecord::Missing));
    assert_eq!(gun.get("a:1").await, Ok(GunRecord::Missing));
    assert_eq!(relay.gets_of("a:1"), 1);

    let data = json!({"data": {"basic": {"name": "new"}}});
    gun.put("a:1", data.clone()).await.expect("put");
    assert_eq!(
        relay.put_bodies(),
        vec![json!({"soul": "a:1", "data": data.clone()})]
    );
    assert_eq!(gun.get("a:1").await, Ok(GunRecord::Found(data)));
    assert_eq!(relay.gets_of("a:1"), 2, "the put removed the cached miss");
}

#[tokio::test]
async fn a_miss_read_before_a_put_is_neither_cached_nor_shared_after_it() {
    let relay = RelayStub::start().await;
    let gun = client(&settings(&relay.base_url()));
    relay.script("a:1", [Reply::after_ms(300, Reply::NotFound)]);

    let early = {
        let gun = Arc::clone(&gun);
        tokio::spawn(async move { gun.get("a:1").await })
    };
    wait_until(
        "the early get reached the relay",
        Duration::from_secs(5),
        || relay.gets_of("a:1") == 1,
    )
    .await;
    gun.put("a:1", json!({"n": 1})).await.expect("put");

    // Started after the put: must not join the get that was under way before it.
    assert_eq!(gun.get("a:1").await, Ok(GunRecord::Found(json!({"n": 1}))));
    assert_eq!(early.await.expect("task"), Ok(GunRecord::Missing));
    // The early miss arrived after the put: it must not have been cached.
    assert_eq!(gun.get("a:1").await, Ok(GunRecord::Found(json!({"n": 1}))));
    assert_eq!(relay.gets_of("a:1"), 3);
}

#[tokio::test]
async fn the_breaker_opens_fails_fast_and_recovers() {
    let relay = RelayStub::start().await;
    let mut settings = settings(&relay.base_url());
    settings.gun_attempts = 1;
    settings.gun_breaker_threshold = 3;
    settings.gun_breaker_cooldown = Duration::from_millis(300);
    let gun = client(&settings);
    relay.set_default(Some(Reply::Status(503, "down".into())));

    for i in 0..3 {
        assert!(matches!(
            gun.get(&format!("a:{i}")).await,
            Err(GunError::Unavailable { .. })
        ));
    }
    assert_eq!(gun.breaker_state(), BreakerState::Open);
    assert_eq!(gun.get("a:x").await, Err(GunError::CircuitOpen));
    // Fails fast: no request and no wait (a count, where a timing would be flaky).
    assert_eq!(relay.requests(), 3, "no request while open");

    // Cool-down over, relay still down: the probe fails and the circuit opens again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(matches!(
        gun.get("a:x").await,
        Err(GunError::Unavailable { .. })
    ));
    assert_eq!(relay.requests(), 4, "exactly one probe");
    assert_eq!(gun.breaker_state(), BreakerState::Open);
    assert_eq!(gun.get("a:x").await, Err(GunError::CircuitOpen));

    // Relay back: the next probe closes the circuit.
    relay.set_default(None);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(gun.get("a:y").await, Ok(GunRecord::Missing));
    assert_eq!(gun.breaker_state(), BreakerState::Closed);
    assert_eq!(gun.get("a:z").await, Ok(GunRecord::Missing));
    assert_eq!(relay.requests(), 6);

    let counters = gun.counters();
    assert_eq!(counters.breaker_opens(), 2);
    assert_eq!(counters.errors.circuit_open.get(), 2);
    assert_eq!(counters.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn only_one_probe_goes_through_while_half_open() {
    let relay = RelayStub::start().await;
    let mut settings = settings(&relay.base_url());
    settings.gun_attempts = 1;
    settings.gun_breaker_threshold = 1;
    settings.gun_breaker_cooldown = Duration::from_millis(100);
    let gun = client(&settings);
    relay.script("a:down", [Reply::Status(503, "down".into())]);
    assert!(gun.get("a:down").await.is_err());
    assert_eq!(gun.breaker_state(), BreakerState::Open);

    tokio::time::sleep(Duration::from_millis(150)).await;
    relay.set_default(Some(Reply::after_ms(200, Reply::NotFound)));
    let probe = {
        let gun = Arc::clone(&gun);
        tokio::spawn(async move { gun.get("a:probe").await })
    };
    wait_until(
        "the probe reached the relay",
        Duration::from_secs(5),
        || relay.requests() == 2,
    )
    .await;
    assert_eq!(gun.breaker_state(), BreakerState::HalfOpen);
    assert_eq!(gun.get("a:other").await, Err(GunError::CircuitOpen));
    assert_eq!(probe.await.expect("task"), Ok(GunRecord::Missing));
    assert_eq!(gun.breaker_state(), BreakerState::Closed);
    assert_eq!(relay.requests(), 2);
}

#[tokio::test]
async fn a_cancelled_caller_does_not_wedge_the_others() {
    let relay = RelayStub::start().await;
    let gun = client(&settings(&relay.base_url()));
    relay.script("a:1", [Reply::after_ms(200, Reply::Found(json!({"n": 1})))]);

    let leader = {
        let gun = Arc::clone(&gun);
        tokio::spawn(async move { gun.get("a:1").await })
    };
    wait_until(
        "the leader's get reached the relay",
        Duration::from_secs(5),
        || relay.requests() == 1,
    )
    .await;
    let follower = {
        let gun = Arc::clone(&gun);
        tokio::spawn(async move { gun.get("a:1").await })
    };
    wait_until(
        "the follower joined the leader's get",
        Duration::from_secs(5),
        || gun.counters().coalesced.get() == 1,
    )
    .await;
    leader.abort();

    assert_eq!(
        follower.await.expect("task"),
        Ok(GunRecord::Found(json!({"n": 1})))
    );
    assert_eq!(relay.requests(), 1);
    assert_eq!(gun.in_flight(), 0);

    // A record is not cached: the next get asks the relay again (nothing is stuck).
    relay.store("a:1", json!({"n": 2}));
    assert_eq!(gun.get("a:1").await, Ok(GunRecord::Found(json!({"n": 2}))));
    assert_eq!(relay.requests(), 2);
}

#[tokio::test]
async fn the_connection_pool_is_bounded() {
    let relay = RelayStub::start().await;
    let mut settings = settings(&relay.base_url());
    settings.gun_pool_size = 2;
    let gun = client(&settings);
    relay.set_default(Some(Reply::after_ms(100, Reply::NotFound)));

    let calls = (0..10).map(|i| {
        let gun = Arc::clone(&gun);
        tokio::spawn(async move { gun.get(&format!("a:{i}")).await })
    });
    for result in futures_util::future::join_all(calls).await {
        assert_eq!(result.expect("task"), Ok(GunRecord::Missing));
    }
    assert_eq!(relay.requests(), 10);
    assert!(
        relay.max_concurrent() <= 2,
        "{} requests at once",
        relay.max_concurrent()
    );
    // Keep-alive: connections are reused (a connection may be opened while another is
    // still on its way back to the idle pool, so this is not an exact count).
    assert!(
        relay.connections() < 10,
        "{} connections for 10 requests: none reused",
        relay.connections()
    );
}

#[tokio::test]
async fn souls_are_percent_encoded_with_their_colons_kept() {
    let relay = RelayStub::start().await;
    let gun = client(&settings(&format!(
        "{}/, http://127.0.0.1:9",
        relay.base_url()
    )));
    let soul = "0123456789ab:workout/x y&z";
    relay.store(soul, json!({"ok": 1}));

    assert_eq!(gun.get(soul).await, Ok(GunRecord::Found(json!({"ok": 1}))));
    assert_eq!(
        relay.queries(),
        vec!["soul=0123456789ab:workout%2Fx%20y%26z".to_owned()]
    );
    assert_eq!(gun.base_url(), relay.base_url());
}

#[tokio::test]
async fn put_outcomes() {
    let relay = RelayStub::start().await;
    let gun = client(&settings(&relay.base_url()));

    // A delete (`data: null`) is passed on as it is.
    gun.put("a:1", serde_json::Value::Null).await.expect("put");
    assert_eq!(
        relay.put_bodies().last(),
        Some(&json!({"soul": "a:1", "data": null}))
    );

    // GUN's own refusal: one request, reported as such.
    relay.set_put_reply(Some(Reply::Status(
        500,
        r#"{"error":"Data at root of graph must be a node (an object)."}"#.into(),
    )));
    let before = relay.requests();
    assert_eq!(
        gun.put("a:1", serde_json::Value::Null).await,
        Err(GunError::Rejected {
            message: "Data at root of graph must be a node (an object).".into()
        })
    );
    assert_eq!(relay.requests(), before + 1);

    // A relay that is down: retried like a get.
    relay.set_put_reply(Some(Reply::Status(503, "down".into())));
    let before = relay.requests();
    assert!(matches!(
        gun.put("a:1", json!({})).await,
        Err(GunError::Unavailable { attempts: 3, .. })
    ));
    assert_eq!(relay.requests(), before + 3);

    assert_eq!(gun.put("", json!({})).await, Err(GunError::InvalidSoul));
    assert_eq!(gun.get("").await, Err(GunError::InvalidSoul));
    assert_eq!(relay.requests(), before + 3, "an empty soul sends nothing");
}

#[tokio::test]
async fn an_oversized_answer_is_refused() {
    let relay = RelayStub::start().await;
    let mut settings = settings(&relay.base_url());
    settings.gun_response_limit = 1024;
    let gun = client(&settings);
    relay.store("a:big", json!({"blob": "x".repeat(4096)}));
    assert!(matches!(
        gun.get("a:big").await,
        Err(GunError::InvalidResponse { .. })
    ));
    assert_eq!(relay.requests(), 1, "not retried");
}

#[test]
fn settings_that_cannot_work_are_refused() {
    let mut unset = settings("http://127.0.0.1:1");
    unset.gun_peers = None;
    assert!(matches!(
        GunClient::new(&unset),
        Err(GunError::Config { .. })
    ));
    let mut zero = settings("http://127.0.0.1:1");
    zero.gun_attempts = 0;
    assert!(matches!(
        GunClient::new(&zero),
        Err(GunError::Config { .. })
    ));
    // Outside a runtime the client builds (no summary task) and does not panic.
    assert!(GunClient::new(&settings("http://127.0.0.1:1")).is_ok());
}
