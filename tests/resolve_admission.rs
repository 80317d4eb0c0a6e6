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
        || fx.server.app().state().admissions.resolve.in_flight() == 1,
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
        || fx.server.app().state().admissions.resolve.in_flight() == 1,
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
        || fx.server.app().state().admissions.resolve.in_flight() == 1,
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
    assert_eq!(fx.server.app().state().admissions.resolve.in_flight(), 0);
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
