//! Replicas that agree (issue 24): two real `oip-media` processes sharing one GUN relay
//! stand-in, one Elasticsearch stand-in and Debian's `redis-server` (with a password).
//! A put through replica A must reach replica B's GUN miss cache and record cache at
//! once, and a Redis that dies and comes back must cost neither replica an answer.
//!
//! Upstream requests are counted at the relay stand-in: B answering a record right after
//! the put, with exactly one more relay get, proves B's cached miss was invalidated
//! rather than expired (the miss TTL is an hour, the record cache's miss TTL a minute).
//!
//! Skips with a printed reason without `redis-server`, unless `OIP_REQUIRE_REDIS` is set
//! (as `.ci/run` does). Bounded: every wait has a deadline, every request a timeout, and
//! the children and Redis are killed when the test ends.

#[path = "support/child_server.rs"]
mod child_server;
#[path = "support/elastic.rs"]
mod elastic;
#[path = "support/redis_server.rs"]
mod redis_server;
#[allow(dead_code)] // each test file uses a part of the stand-in
#[path = "support/relay_stub.rs"]
mod relay_stub;

use std::path::Path;
use std::time::{Duration, Instant};

use child_server::ChildServer;
use elastic::ElasticStandIn;
use redis_server::{PASSWORD, RedisServer};
use relay_stub::RelayStub;
use serde_json::{Value, json};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_oip-media"))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

/// Starts one replica over the shared relay, Redis and (optionally) Elasticsearch, with
/// a short reconnection backoff so the outage test is quick.
fn replica(redis: &RedisServer, relay: &RelayStub, extra: &[(&str, String)]) -> ChildServer {
    let mut env = vec![
        ("GUN_PEERS", relay.base_url()),
        ("REDIS_URL", redis.url()),
        ("REDIS_RECONNECT_BASE", "50ms".to_owned()),
        ("REDIS_RECONNECT_MAX", "250ms".to_owned()),
        ("REDIS_TIMEOUT", "1s".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    ChildServer::start(binary(), &env)
}

async fn get_json(client: &reqwest::Client, url: String) -> (u16, Value) {
    let response = client.get(url).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn gun_get(client: &reqwest::Client, server: &ChildServer, soul: &str) -> (u16, Value) {
    let encoded: String = form_urlencoded::byte_serialize(soul.as_bytes()).collect();
    get_json(
        client,
        server.url(&format!("/gun-relay/get?soul={encoded}")),
    )
    .await
}

async fn gun_put(client: &reqwest::Client, server: &ChildServer, soul: &str, data: Value) -> u16 {
    client
        .post(server.url("/gun-relay/put"))
        .json(&json!({"soul": soul, "data": data}))
        .send()
        .await
        .expect("put")
        .status()
        .as_u16()
}

/// The value of the sample `name` (labels included, as written) in `/metrics`.
async fn metric(client: &reqwest::Client, server: &ChildServer, name: &str) -> f64 {
    let text = client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Waits (up to 5 s) until the sample `name` reads `value`.
async fn metric_reaches(client: &reqwest::Client, server: &ChildServer, name: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = metric(client, server, name).await;
        if now == value {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {now}, not {value}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `/readyz`'s status and its `redis.state`.
async fn redis_state(client: &reqwest::Client, server: &ChildServer) -> (u16, String) {
    let (status, body) = get_json(client, server.url("/readyz")).await;
    let state = body["redis"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, state)
}

/// Waits (up to 15 s) until every server's `/readyz` says Redis is `state`; readiness
/// itself must hold throughout.
async fn wait_for_redis(client: &reqwest::Client, servers: &[&ChildServer], state: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for server in servers {
        loop {
            let (status, now) = redis_state(client, server).await;
            assert_eq!(status, 200, "Redis's state never fails readiness");
            if now == state {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never reported redis {state} (is {now})",
                server.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Gets `soul` on `server` until it is found (at most `within`); how long it took.
async fn found_within(
    client: &reqwest::Client,
    server: &ChildServer,
    soul: &str,
    within: Duration,
) -> (Duration, Value) {
    let started = Instant::now();
    loop {
        let (status, body) = gun_get(client, server, soul).await;
        if status == 200 {
            return (started.elapsed(), body["data"].clone());
        }
        assert_eq!(status, 404, "{body}");
        assert!(
            started.elapsed() < within,
            "{soul} still missing on {} after {within:?}",
            server.addr
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Asks `soul` on `server` until a miss is cached there: two 404s, one relay get.
async fn cache_a_miss(
    client: &reqwest::Client,
    server: &ChildServer,
    relay: &RelayStub,
    soul: &str,
) {
    let before = relay.gets_of(soul);
    for _ in 0..2 {
        let (status, body) = gun_get(client, server, soul).await;
        assert_eq!(status, 404, "{body}");
    }
    assert_eq!(
        relay.gets_of(soul),
        before + 1,
        "the second get was answered from the miss cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_through_one_replica_empties_the_other_replicas_miss_cache_at_once() {
    let Some(redis) = RedisServer::start_or_skip("a_put_through_one_replica_empties_the_other")
    else {
        return;
    };
    let relay = RelayStub::start().await;
    let a = replica(&redis, &relay, &[]);
    let b = replica(&redis, &relay, &[]);
    let client = client();
    wait_for_redis(&client, &[&a, &b], "connected").await;
    let connected = Instant::now();
    assert_eq!(metric(&client, &b, "oip_media_redis_connected").await, 1.0);

    let soul = "647f79c2a338:fresh-1";
    cache_a_miss(&client, &b, &relay, soul).await;
    let record = json!({"data": {"basic": {"name": "Squat"}}, "meta": {"localId": "fresh-1"}});
    assert_eq!(gun_put(&client, &a, soul, record.clone()).await, 200);
    assert_eq!(
        relay.put_bodies().len(),
        1,
        "the put reached the shared relay"
    );

    let (took, data) = found_within(&client, &b, soul, Duration::from_secs(2)).await;
    assert_eq!(data, record);
    println!("B saw A's put after {took:?}");
    assert_eq!(
        relay.gets_of(soul),
        2,
        "one miss, then one get after the invalidation: B's miss was forgotten, not expired"
    );
    // A counts its publish when Redis confirms it, which may come after B has heard it.
    metric_reaches(
        &client,
        &a,
        "oip_media_redis_invalidations_published_total",
        1.0,
    )
    .await;
    metric_reaches(
        &client,
        &b,
        "oip_media_redis_invalidations_received_total",
        1.0,
    )
    .await;
    assert_eq!(
        metric(&client, &a, "oip_media_redis_invalidations_received_total").await,
        0.0,
        "a replica ignores its own invalidations"
    );

    // The idle subscription's health-check ping (every 5 s) keeps the link up.
    tokio::time::sleep(Duration::from_millis(5500).saturating_sub(connected.elapsed())).await;
    for server in [&a, &b] {
        assert_eq!(
            metric(&client, server, "oip_media_redis_connected").await,
            1.0
        );
        let logs = server.logs();
        assert!(!logs.contains("Redis connection lost"), "{logs}");
    }

    // The password never shows: not in the effective configuration, not in any line.
    for server in [&a, &b] {
        let logs = server.logs();
        assert!(logs.contains("Redis connected"), "{logs}");
        assert!(logs.contains(":***@127.0.0.1"), "{logs}");
        assert!(
            !logs.contains(PASSWORD),
            "the Redis password was logged: {logs}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_through_one_replica_makes_the_other_resolve_the_reference_at_once() {
    let Some(redis) = RedisServer::start_or_skip("a_put_through_one_replica_makes_the_other")
    else {
        return;
    };
    // Elasticsearch, asked first, lacks the fresh record (the indexer's GUN sync has not
    // indexed it yet): it comes from the relay, through B's GUN client.
    let es = ElasticStandIn::start(vec![], vec![]).await;
    let relay = RelayStub::start().await;
    let es_env = [("ELASTICSEARCHHOST", es.url())];
    let a = replica(&redis, &relay, &es_env);
    let b = replica(&redis, &relay, &es_env);
    let client = client();
    wait_for_redis(&client, &[&a, &b], "connected").await;

    let soul = "647f79c2a338:exercise-9";
    let did = format!("did:gun:{soul}");
    let workout = json!({"oip": {"did": "did:arweave:w1"},
                         "data": {"basic": {"name": "Workout"}, "links": {"ex": [did]}}});
    let resolve = |server: &ChildServer| {
        let request = client
            .post(server.url("/api/resolve"))
            .json(&json!({"record": workout.clone(), "resolveDepth": 1}));
        async move {
            let response = request.send().await.expect("resolve");
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.expect("json")
        }
    };
    let first = resolve(&b).await;
    assert_eq!(
        first["record"]["data"]["links"]["ex"][0], did,
        "missing: stays a DID"
    );
    assert_eq!(relay.gets_of(soul), 1);
    let again = resolve(&b).await;
    assert_eq!(again["record"]["data"]["links"]["ex"][0], did);
    assert_eq!(
        again["stats"]["cacheHits"], 1,
        "the miss is in B's record cache"
    );
    assert_eq!(relay.gets_of(soul), 1);

    let exercise = json!({"data": {"basic": {"name": "Squat"}}, "oip": {"did": did}, "meta": {}});
    assert_eq!(gun_put(&client, &a, soul, exercise.clone()).await, 200);

    let started = Instant::now();
    loop {
        let answer = resolve(&b).await;
        let resolved = &answer["record"]["data"]["links"]["ex"][0];
        if *resolved == exercise {
            break;
        }
        assert_eq!(*resolved, did, "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "B still resolves a DID 2 s after the put through A (its record cache keeps \
             a miss for a minute)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("B resolved A's put after {:?}", started.elapsed());
    assert_eq!(
        relay.gets_of(soul),
        2,
        "one more relay get: the invalidation, not a TTL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_keep_answering_without_redis_and_share_again_once_it_is_back() {
    let Some(mut redis) = RedisServer::start_or_skip("replicas_keep_answering_without_redis")
    else {
        return;
    };
    let relay = RelayStub::start().await;
    // Misses are kept an hour while Redis shares puts, one second while it cannot.
    let short = [("GUN_MISS_TTL_WITHOUT_REDIS", "1s".to_owned())];
    let a = replica(&redis, &relay, &short);
    let b = replica(&redis, &relay, &short);
    let client = client();
    wait_for_redis(&client, &[&a, &b], "connected").await;

    redis.kill();
    wait_for_redis(&client, &[&a, &b], "disconnected").await;
    for server in [&a, &b] {
        assert_eq!(
            metric(&client, server, "oip_media_redis_connected").await,
            0.0
        );
    }

    // Both keep answering gets and puts, without waiting for Redis.
    let soul = "647f79c2a338:during-outage";
    cache_a_miss(&client, &b, &relay, soul).await;
    let missed_at = Instant::now();
    let started = Instant::now();
    assert_eq!(gun_put(&client, &a, soul, json!({"n": 1})).await, 200);
    assert_eq!(
        gun_put(&client, &b, "647f79c2a338:other", json!({"n": 2})).await,
        200
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "puts waited for Redis: {:?}",
        started.elapsed()
    );
    let (status, body) = gun_get(&client, &a, soul).await;
    assert_eq!(
        (status, &body["data"]),
        (200, &json!({"n": 1})),
        "A forgot its own miss"
    );
    // B cannot hear A's put: its miss is trusted for the short TTL only, not an hour.
    let (took, data) = found_within(&client, &b, soul, Duration::from_secs(4)).await;
    assert_eq!(data, json!({"n": 1}));
    assert!(
        missed_at.elapsed() >= Duration::from_millis(900),
        "found before the short TTL: {took:?}"
    );

    // One state change, one line: the loss is logged once, not per failed try.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for server in [&a, &b] {
        let logs = server.logs();
        assert_eq!(logs.matches("Redis connection lost").count(), 1, "{logs}");
        assert!(metric(&client, server, "oip_media_redis_connect_failures_total").await >= 2.0);
    }

    redis.restart();
    wait_for_redis(&client, &[&a, &b], "connected").await;
    for server in [&a, &b] {
        assert_eq!(
            metric(&client, server, "oip_media_redis_connected").await,
            1.0
        );
        assert_eq!(
            metric(&client, server, "oip_media_redis_reconnects_total").await,
            1.0
        );
        // The line is written before the state flips; the pipe's reader may lag a little.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !server.logs().contains("Redis reconnected") {
            assert!(Instant::now() < deadline, "{}", server.logs());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // Shared again: the next put propagates at once.
    let soul = "647f79c2a338:after-outage";
    cache_a_miss(&client, &b, &relay, soul).await;
    assert_eq!(gun_put(&client, &a, soul, json!({"n": 3})).await, 200);
    let (took, data) = found_within(&client, &b, soul, Duration::from_secs(2)).await;
    assert_eq!(data, json!({"n": 3}));
    println!("after the reconnection, B saw A's put after {took:?}");
    assert_eq!(relay.gets_of(soul), 2, "invalidated, not expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_url_readyz_says_so_and_misses_stay_cached() {
    let relay = RelayStub::start().await;
    let server = ChildServer::start(binary(), &[("GUN_PEERS", relay.base_url())]);
    let client = client();
    let (status, body) = get_json(&client, server.url("/readyz")).await;
    assert_eq!(status, 200);
    assert_eq!(body["redis"], json!({"configured": false}));
    assert_eq!(
        metric(&client, &server, "oip_media_redis_connected").await,
        0.0
    );
    cache_a_miss(&client, &server, &relay, "647f79c2a338:alone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatever_else_is_published_on_the_channel_is_ignored_and_counted() {
    let Some(redis) = RedisServer::start_or_skip("whatever_else_is_published_on_the_channel")
    else {
        return;
    };
    let relay = RelayStub::start().await;
    let b = replica(&redis, &relay, &[]);
    let client = client();
    wait_for_redis(&client, &[&b], "connected").await;
    let soul = "647f79c2a338:kept";
    cache_a_miss(&client, &b, &relay, soul).await;

    let mut publisher = redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let huge = format!(r#"{{"origin":"x","soul":"{}"}}"#, "s".repeat(1 << 20));
    let hostile: [&[u8]; 7] = [
        b"",
        b"647f79c2a338:kept",
        b"\xff\xfe\x00 not utf-8",
        br#"{"origin":"x"}"#,
        br#"{"origin":"x","soul":""}"#,
        br#"["x","647f79c2a338:kept"]"#,
        huge.as_bytes(),
    ];
    for payload in hostile {
        let _: i64 = redis::AsyncCommands::publish(&mut publisher, "oip-media:invalidate", payload)
            .await
            .expect("publish");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&client, &b, "oip_media_redis_messages_ignored_total").await < 7.0 {
        assert!(Instant::now() < deadline, "the messages were not all seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metric(&client, &b, "oip_media_redis_invalidations_received_total").await,
        0.0
    );
    let (status, _) = gun_get(&client, &b, soul).await;
    assert_eq!(status, 404);
    assert_eq!(relay.gets_of(soul), 1, "nothing was invalidated");
    assert_eq!(metric(&client, &b, "oip_media_redis_connected").await, 1.0);
    assert_eq!(
        metric(&client, &b, "oip_media_redis_reconnects_total").await,
        0.0
    );
}
