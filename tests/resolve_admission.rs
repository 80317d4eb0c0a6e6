//! `/api/resolve` admission and memory bounds through a real server: how many
//! resolutions run at once, the bounded queue (503 + `Retry-After`, counted), a slow
//! sender holding no slot, and bodies refused for the memory their records would take.

mod support;

use std::time::Duration;

use oip_media::{Config, RunningServer};
use serde_json::{Value, json};
use support::elastic::ElasticStandIn;
use support::rec;
use tokio::io::AsyncWriteExt;

struct Fixture {
    server: RunningServer,
    es: ElasticStandIn,
    client: reqwest::Client,
    _media: tempfile::TempDir,
}

impl Fixture {
    async fn start(adjust: impl FnOnce(&mut Config)) -> Fixture {
        let records = vec![rec("did:arweave:b", "B", json!({}))];
        let es = ElasticStandIn::start(records, vec![]).await;
        let media = tempfile::tempdir().unwrap();
        std::fs::create_dir(media.path().join("web")).unwrap();
        let mut config = Config::for_media_dir(media.path());
        config.resolver.elasticsearch_host = Some(es.url().into());
        adjust(&mut config);
        let server = oip_media::server::start(config).await.unwrap();
        Fixture {
            server,
            es,
            client: reqwest::Client::new(),
            _media: media,
        }
    }

    /// A resolve that needs one Elasticsearch search (so a delayed stand-in keeps it
    /// running); `n` makes each request's DID distinct, so the cache never answers.
    fn resolve(&self, n: usize) -> impl Future<Output = reqwest::Response> + 'static {
        let request = self
            .client
            .post(format!("http://{}/api/resolve", self.server.local_addr()))
            .body(
                json!({"record": rec("did:arweave:a", "A", json!({"b": format!("did:arweave:b{n}")})), "resolveDepth": 1})
                    .to_string(),
            );
        async move { request.send().await.unwrap() }
    }

    async fn metrics(&self) -> String {
        self.client
            .get(format!("http://{}/metrics", self.server.local_addr()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn metric(metrics: &str, line_start: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in {metrics}"))
}

#[tokio::test]
async fn a_full_queue_sheds_with_503_retry_after_and_no_store() {
    let fx = Fixture::start(|c| {
        c.resolver.resolve_max_in_flight = 1;
        c.resolver.resolve_max_queue = 0;
    })
    .await;
    fx.es.delay(Duration::from_millis(600));
    let running = tokio::spawn(fx.resolve(1));
    support::wait_until(
        "the first resolve holds the slot",
        Duration::from_secs(5),
        || fx.server.app().state().gates.resolve.in_flight() == 1,
    )
    .await;
    let shed = fx.resolve(2).await;
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    assert_eq!(shed.headers()["cache-control"], "no-store");
    assert_eq!(
        shed.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let body: Value = shed.json().await.unwrap();
    assert_eq!(body["reason"], "wait queue full");
    assert_eq!(running.await.unwrap().status(), 200);

    let metrics = fx.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "oip_media_resolve_shed_total{kind=\"queue_full\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &metrics,
            "oip_media_resolve_admitted_total{kind=\"at_once\"}"
        ),
        1
    );
    assert_eq!(metric(&metrics, "oip_media_resolve_in_flight "), 0);
    assert_eq!(metric(&metrics, "oip_media_resolve_in_flight_limit "), 1);
    fx.server.shutdown().await;
}

#[tokio::test]
async fn a_waiting_request_is_shed_after_the_queue_timeout_or_admitted_in_time() {
    let fx = Fixture::start(|c| {
        c.resolver.resolve_max_in_flight = 1;
        c.resolver.resolve_max_queue = 4;
        c.resolver.resolve_queue_timeout = Duration::from_millis(400);
    })
    .await;
    fx.es.delay(Duration::from_millis(1000));
    let running = tokio::spawn(fx.resolve(1));
    support::wait_until(
        "the first resolve holds the slot",
        Duration::from_secs(5),
        || fx.server.app().state().gates.resolve.in_flight() == 1,
    )
    .await;
    let started = std::time::Instant::now();
    let shed = fx.resolve(2).await;
    assert_eq!(shed.status(), 503);
    assert!(started.elapsed() >= Duration::from_millis(400));
    let body: Value = shed.json().await.unwrap();
    assert_eq!(body["reason"], "waited too long for a slot");
    assert_eq!(running.await.unwrap().status(), 200);

    // A wait shorter than the resolution ahead of it ends in an answer.
    fx.es.delay(Duration::from_millis(60));
    let first = tokio::spawn(fx.resolve(3));
    support::wait_until(
        "the next resolve holds the slot",
        Duration::from_secs(5),
        || fx.server.app().state().gates.resolve.in_flight() == 1,
    )
    .await;
    assert_eq!(fx.resolve(4).await.status(), 200);
    assert_eq!(first.await.unwrap().status(), 200);
    let metrics = fx.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "oip_media_resolve_shed_total{kind=\"queue_timeout\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &metrics,
            "oip_media_resolve_admitted_total{kind=\"after_wait\"}"
        ),
        1
    );
    fx.server.shutdown().await;
}

#[tokio::test]
async fn a_client_trickling_its_body_holds_no_resolve_slot() {
    let fx = Fixture::start(|c| {
        c.resolver.resolve_max_in_flight = 1;
        c.resolver.resolve_max_queue = 0;
    })
    .await;
    let mut slow = tokio::net::TcpStream::connect(fx.server.local_addr())
        .await
        .unwrap();
    slow.write_all(
        b"POST /api/resolve HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"records\":[",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fx.server.app().state().gates.resolve.in_flight(), 0);
    let response = fx.resolve(1).await;
    assert_eq!(response.status(), 200);
    drop(slow);
    fx.server.shutdown().await;
}

#[tokio::test]
async fn records_that_would_take_more_memory_than_the_budget_get_413() {
    let fx = Fixture::start(|c| c.resolver.resolve_max_output_bytes = 1 << 20).await;
    // ~320 KB of JSON, but ~13 MB of heap once parsed: refused while it is parsed.
    let body = format!(
        "{{\"records\":[{}{{}}]}}",
        "{\"data\":{\"l\":{\"r\":\"did:x\"}}},".repeat(10_000)
    );
    assert!(body.len() < 1 << 20);
    let response = fx
        .client
        .post(format!("http://{}/api/resolve", fx.server.local_addr()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let error: Value = response.json().await.unwrap();
    assert_eq!(
        error["error"],
        "Request body's records would take more than 1048576 bytes of memory to resolve"
    );
    assert!(fx.es.searches().is_empty(), "nothing was resolved");
    // The same records, fewer of them, are resolved.
    let body = format!(
        "{{\"records\":[{}{{}}]}}",
        "{\"data\":{\"l\":{\"r\":\"did:x\"}}},".repeat(100)
    );
    let response = fx
        .client
        .post(format!("http://{}/api/resolve", fx.server.local_addr()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    fx.server.shutdown().await;
}

#[tokio::test]
async fn large_answers_are_whole_json_with_the_right_length() {
    // Answers span many 64 KiB segments: the JSON is whole and Content-Length right.
    let fx = Fixture::start(|_| {}).await;
    let filler = "z".repeat(100_000);
    let records: Vec<Value> = (0..8)
        .map(|i| rec(&format!("did:arweave:r{i}"), &filler, json!({})))
        .collect();
    let response = fx
        .client
        .post(format!("http://{}/api/resolve", fx.server.local_addr()))
        .body(json!({"records": records}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let declared: usize = response.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = response.bytes().await.unwrap();
    assert_eq!(bytes.len(), declared);
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(answer["records"], json!(records));
    assert_eq!(answer["stats"]["lookups"], 0);
    fx.server.shutdown().await;
}

/// A workout page as the indexer's `getRecords` sends it: `pages` pages of `per_page`
/// workouts, each referencing 6 exercises of a shared library of 120, each exercise
/// referencing its demo GIF record and its equipment (depth 2 resolves all of it).
fn workout_library() -> Vec<Value> {
    let mut records = Vec::new();
    for i in 0..120 {
        records.push(json!({
            "oip": {"did": format!("did:arweave:ex{i}"), "didTx": format!("did:arweave:ex{i}")},
            "data": {
                "basic": {"name": format!("Exercise {i}"), "description": "x".repeat(600)},
                "exercise": {
                    "instructions": ["step one", "step two", "step three"],
                    "muscleGroups": ["legs", "core"],
                    "gif": format!("did:arweave:gif{i}"),
                    "equipmentRequired": [format!("did:arweave:eq{}", i % 20)]
                }
            }
        }));
        records.push(rec(
            &format!("did:arweave:gif{i}"),
            &format!("GIF {i}"),
            json!({}),
        ));
    }
    for e in 0..20 {
        records.push(rec(
            &format!("did:arweave:eq{e}"),
            &format!("Equipment {e}"),
            json!({}),
        ));
    }
    records
}

fn workout_page(page: usize, per_page: usize) -> Value {
    let workouts: Vec<Value> = (0..per_page)
        .map(|w| {
            let n = page * per_page + w;
            json!({
                "oip": {"did": format!("did:arweave:w{n}"), "didTx": format!("did:arweave:w{n}")},
                "data": {
                    "basic": {"name": format!("Workout {n}"), "tagItems": ["strength"]},
                    "workout": {
                        "exercise": (0..6).map(|k| format!("did:arweave:ex{}", (n * 7 + k * 13) % 120)).collect::<Vec<_>>(),
                        "exercise_amount": [10, 12, 8, 15, 10, 20],
                        "total_duration_minutes": 45
                    }
                }
            })
        })
        .collect();
    json!({"records": workouts, "resolveDepth": 2})
}

/// Whether a resolved workout has every exercise, and every exercise its GIF and
/// equipment, as records.
fn fully_resolved(workout: &Value) -> bool {
    let exercises = workout["data"]["workout"]["exercise"].as_array().unwrap();
    exercises.len() == 6
        && exercises.iter().all(|e| {
            e["data"]["exercise"]["gif"].is_object()
                && e["data"]["exercise"]["equipmentRequired"][0].is_object()
        })
}

#[tokio::test]
async fn twenty_concurrent_pages_of_a_hundred_workouts_and_the_pollers_are_never_shed() {
    // The defaults, as shipped: one admission per page, and room for the indexer's
    // 20 concurrent pages plus its internal pollers (`resolveDepth=1&limit=1`).
    let es = ElasticStandIn::start(workout_library(), vec![]).await;
    es.delay(Duration::from_millis(20));
    let media = tempfile::tempdir().unwrap();
    std::fs::create_dir(media.path().join("web")).unwrap();
    let mut config = Config::for_media_dir(media.path());
    config.resolver.elasticsearch_host = Some(es.url().into());
    let server = oip_media::server::start(config).await.unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/resolve", server.local_addr());
    let post = |body: Value| {
        let request = client.post(&url).body(body.to_string());
        async move { request.send().await.unwrap() }
    };
    let pages = (0..20).map(|p| post(workout_page(p, 100)));
    let pollers = (0..4).map(|p| {
        let mut one = workout_page(100 + p, 1);
        one["resolveDepth"] = json!(1);
        post(one)
    });
    let responses = futures_util::future::join_all(pages.chain(pollers).map(tokio::spawn)).await;
    let mut answered = 0;
    for (i, response) in responses.into_iter().enumerate() {
        let response = response.unwrap();
        assert_eq!(response.status(), 200, "request {i} was shed");
        let body: Value = response.json().await.unwrap();
        let records = body["records"].as_array().unwrap();
        let record_stats = body["recordStats"].as_array().unwrap();
        assert_eq!(records.len(), record_stats.len());
        if i < 20 {
            assert_eq!(records.len(), 100);
            assert!(records.iter().all(fully_resolved), "page {i}");
            assert_eq!(body["stats"]["budgetExhausted"], false);
            assert_eq!(body["stats"]["outputLimitReached"], false);
        }
        assert!(record_stats.iter().all(|s| s["boundsHit"] == json!([])));
        answered += 1;
    }
    assert_eq!(answered, 24);
    let metrics = reqwest::get(format!("http://{}/metrics", server.local_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let admitted = metric(
        &metrics,
        "oip_media_resolve_admitted_total{kind=\"at_once\"}",
    ) + metric(
        &metrics,
        "oip_media_resolve_admitted_total{kind=\"after_wait\"}",
    );
    assert_eq!(admitted, 24, "one admission per request, not per record");
    assert_eq!(
        metric(
            &metrics,
            "oip_media_resolve_shed_total{kind=\"queue_full\"}"
        ),
        0
    );
    assert_eq!(
        metric(
            &metrics,
            "oip_media_resolve_shed_total{kind=\"queue_timeout\"}"
        ),
        0
    );
    assert!(es.violations().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn resolve_bodies_stay_within_their_share_of_the_body_budget() {
    // The process-wide budget is large (for GUN puts); resolve bodies get 2 MiB of it.
    let fx = Fixture::start(|c| {
        c.resolver.resolve_body_limit = 1 << 20;
        c.resolver.resolve_body_budget = 2 << 20;
        c.admission.request_body_queue_timeout = Duration::from_millis(300);
    })
    .await;
    let state = fx.server.app().state();
    assert_eq!(state.config.admission.request_body_budget, 256 << 20);
    // Two senders declare 900 KiB each and stall: their shares are taken up front.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut slow = tokio::net::TcpStream::connect(fx.server.local_addr())
            .await
            .unwrap();
        slow.write_all(
            format!(
                "POST /api/resolve HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"records\":[",
                900 << 10
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        stalled.push(slow);
    }
    support::wait_until(
        "the stalled bodies hold their shares",
        Duration::from_secs(5),
        || state.gates.resolve_body.in_flight() == 1800,
    )
    .await;
    // A third body of 300 KiB does not fit the resolve share (the process-wide budget
    // has room): it waits, then 503.
    let third = json!({"records": [rec("did:arweave:a", &"n".repeat(300 << 10), json!({}))]});
    let url = format!("http://{}/api/resolve", fx.server.local_addr());
    let shed = fx
        .client
        .post(&url)
        .body(third.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    assert!(
        state.gates.request_body.in_flight() < 4096,
        "global budget had room"
    );
    let metrics = fx.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "oip_media_resolve_body_shed_total{kind=\"queue_timeout\"}"
        ),
        1
    );
    // Once the stalled senders go, their shares come back and the same body resolves.
    drop(stalled);
    support::wait_until("shares given back", Duration::from_secs(5), || {
        state.gates.resolve_body.in_flight() == 0
    })
    .await;
    let ok = fx
        .client
        .post(&url)
        .body(third.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    fx.server.shutdown().await;
}
