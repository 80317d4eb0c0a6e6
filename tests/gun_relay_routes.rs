//! `/gun-relay/get` and `/gun-relay/put` on a running oip-media, in front of a scripted
//! relay stand-in: same bodies and statuses as the relay, misses cached, trouble mapped to
//! gateway errors, put bodies bounded.

mod support;

use std::sync::Arc;
use std::time::Duration;

use oip_media::Config;
use oip_media::config::GunSettings;
use serde_json::{Value, json};
use support::TestServer;
use support::relay_stub::{RelayStub, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Service {
    server: TestServer,
    base: String,
    http: reqwest::Client,
}

impl Service {
    /// oip-media with the relay at `gun_peers` and short bounds, adjusted by `tweak`.
    async fn start(gun_peers: Option<String>, tweak: impl FnOnce(&mut GunSettings)) -> Service {
        let server = TestServer::start(|config| {
            config.gun.gun_peers = gun_peers;
            config.gun.gun_attempts = 1;
            config.gun.gun_attempt_timeout = Duration::from_secs(2);
            config.gun.gun_deadline = Duration::from_secs(3);
            config.gun.gun_backoff_base = Duration::from_millis(10);
            config.gun.gun_put_body_timeout = Duration::from_secs(2);
            config.gun.gun_summary_interval = Duration::ZERO;
            tweak(&mut config.gun);
        })
        .await;
        let base = server.base.clone();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        Service { server, base, http }
    }

    async fn get(&self, path_and_query: &str) -> (u16, Value, reqwest::header::HeaderMap) {
        let response = self
            .http
            .get(format!("{}{path_and_query}", self.base))
            .send()
            .await
            .expect("request");
        decode(response).await
    }

    async fn put(
        &self,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let response = self
            .http
            .post(format!("{}/gun-relay/put", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        decode(response).await
    }

    async fn shutdown(self) {
        self.server.stop().await;
    }
}

async fn decode(response: reqwest::Response) -> (u16, Value, reqwest::header::HeaderMap) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("body");
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body)));
    (status, value, headers)
}

#[tokio::test]
async fn get_answers_like_the_relay_and_caches_misses() {
    let relay = RelayStub::start().await;
    let service = Service::start(Some(relay.base_url()), |_| {}).await;
    let record = json!({"data": {"basic": {"name": "Squat"}}, "meta": {"#": "ab:1/meta"}});
    relay.store("0123456789ab:squat", record.clone());

    let (status, body, headers) = service.get("/gun-relay/get?soul=0123456789ab:squat").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"success": true, "data": record}));
    assert!(
        headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/json")
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");

    for _ in 0..3 {
        let (status, body, _) = service.get("/gun-relay/get?soul=0123456789ab%3Agone").await;
        assert_eq!(status, 404, "a miss is a 404, never a 500");
        assert_eq!(body, json!({"error": "Not found"}));
    }
    assert_eq!(relay.gets_of("0123456789ab:gone"), 1, "misses cached");
    assert_eq!(relay.requests(), 2);
    service.shutdown().await;
}

#[tokio::test]
async fn concurrent_gets_through_the_endpoint_send_one_request() {
    let relay = RelayStub::start().await;
    let service = Arc::new(Service::start(Some(relay.base_url()), |_| {}).await);
    relay.script("ab:hot", [Reply::after_ms(300, Reply::NotFound)]);

    let calls = (0..50).map(|_| {
        let service = Arc::clone(&service);
        tokio::spawn(async move { service.get("/gun-relay/get?soul=ab:hot").await.0 })
    });
    for status in futures_util::future::join_all(calls).await {
        assert_eq!(status.expect("task"), 404);
    }
    assert_eq!(relay.requests(), 1);
    let Ok(service) = Arc::try_unwrap(service) else {
        panic!("service still shared");
    };
    service.shutdown().await;
}

#[tokio::test]
async fn a_missing_soul_is_a_400_without_a_request() {
    let relay = RelayStub::start().await;
    let service = Service::start(Some(relay.base_url()), |_| {}).await;
    for path in [
        "/gun-relay/get",
        "/gun-relay/get?soul=",
        "/gun-relay/get?other=1",
    ] {
        let (status, body, _) = service.get(path).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(body, json!({"error": "Soul parameter required"}));
    }
    assert_eq!(relay.requests(), 0);
    service.shutdown().await;
}

#[tokio::test]
async fn relay_trouble_becomes_a_gateway_error() {
    let relay = RelayStub::start().await;
    let service = Service::start(Some(relay.base_url()), |gun| {
        gun.gun_attempt_timeout = Duration::from_millis(200);
        gun.gun_breaker_threshold = 2;
        gun.gun_breaker_cooldown = Duration::from_secs(30);
    })
    .await;

    relay.script("ab:500", [Reply::Status(500, "boom".into())]);
    let (status, body, _) = service.get("/gun-relay/get?soul=ab:500").await;
    assert_eq!(status, 502);
    assert!(body["error"].as_str().expect("error").contains("HTTP 500"));

    relay.script("ab:hang", [Reply::Hang]);
    let (status, body, _) = service.get("/gun-relay/get?soul=ab:hang").await;
    assert_eq!(status, 504);
    assert!(body["error"].is_string());

    // Two unavailable outcomes opened the breaker: fail fast, with a hint when to return.
    let before = relay.requests();
    let (status, body, headers) = service.get("/gun-relay/get?soul=ab:any").await;
    assert_eq!(status, 503);
    assert!(body["error"].as_str().expect("error").contains("circuit"));
    assert_eq!(headers["retry-after"], "30");
    assert_eq!(relay.requests(), before);
    service.shutdown().await;
}

#[tokio::test]
async fn a_wrong_relay_url_is_a_502_never_a_404() {
    let relay = RelayStub::start().await;
    let service = Service::start(Some(format!("{}/gun", relay.base_url())), |_| {}).await;
    for round in 1..=2 {
        let (status, body, _) = service.get("/gun-relay/get?soul=ab:1").await;
        assert_eq!(status, 502);
        assert!(
            body["error"]
                .as_str()
                .expect("error")
                .contains("misconfigured")
        );
        assert_eq!(relay.requests(), round, "not cached as a miss");
    }
    service.shutdown().await;
}

#[tokio::test]
async fn put_stores_answers_like_the_relay_and_ends_a_cached_miss() {
    let relay = RelayStub::start().await;
    let service = Service::start(Some(relay.base_url()), |_| {}).await;

    assert_eq!(service.get("/gun-relay/get?soul=ab:new").await.0, 404);
    let data = json!({"data": {"basic": {"name": "Row"}}, "meta": {"created": 1}});
    let (status, body, _) = service
        .put(json!({"soul": "ab:new", "data": data}).to_string())
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"success": true, "soul": "ab:new"}));
    assert_eq!(
        relay.put_bodies(),
        vec![json!({"soul": "ab:new", "data": data})]
    );

    let (status, body, _) = service.get("/gun-relay/get?soul=ab:new").await;
    assert_eq!(status, 200, "the put removed the cached miss");
    assert_eq!(body["data"], data);
    assert_eq!(relay.gets_of("ab:new"), 2);
    service.shutdown().await;
}

#[tokio::test]
async fn put_passes_a_null_delete_through_and_gun_refusals_back() {
    let relay = RelayStub::start().await;
    let service = Service::start(Some(relay.base_url()), |_| {}).await;

    let (status, body, _) = service
        .put(json!({"soul": "ab:1", "data": null}).to_string())
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"success": true, "soul": "ab:1"}));
    assert_eq!(
        relay.put_bodies(),
        vec![json!({"soul": "ab:1", "data": null})]
    );

    // The real relay's answer when GUN refuses a write: passed back as the relay gave it.
    let refusal = json!({"error": "Data at root of graph must be a node (an object)."});
    relay.set_put_reply(Some(Reply::Status(500, refusal.to_string())));
    let (status, body, _) = service
        .put(json!({"soul": "ab:1", "data": null}).to_string())
        .await;
    assert_eq!(status, 500);
    assert_eq!(body, refusal);
    assert_eq!(relay.put_bodies().len(), 2, "a GUN refusal is not retried");
    service.shutdown().await;
}

#[tokio::test]
async fn bad_put_bodies_are_400_without_a_request() {
    let relay = RelayStub::start().await;
    let service = Service::start(Some(relay.base_url()), |_| {}).await;
    for (body, error) in [
        ("{not json", "Invalid JSON"),
        ("[]", "Soul parameter required"),
        (r#"{"data":{}}"#, "Soul parameter required"),
        (r#"{"soul":"","data":{}}"#, "Soul parameter required"),
        (r#"{"soul":7,"data":{}}"#, "Soul parameter required"),
    ] {
        let (status, answer, _) = service.put(body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(answer, json!({"error": error}), "{body}");
    }
    assert_eq!(relay.requests(), 0);
    service.shutdown().await;
}

#[tokio::test]
async fn put_bodies_over_the_limit_are_413() {
    let relay = RelayStub::start().await;
    let service = Service::start(Some(relay.base_url()), |gun| {
        gun.gun_put_body_limit = 1024;
    })
    .await;
    let big = json!({"soul": "ab:1", "data": {"blob": "x".repeat(4096)}}).to_string();

    // Declared length over the limit.
    let (status, body, _) = service.put(big.clone()).await;
    assert_eq!(status, 413);
    assert!(body["error"].is_string());

    // Chunked, no declared length: refused once the limit is passed.
    let mut request =
        b"POST /gun-relay/put HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
        Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for chunk in big.as_bytes().chunks(512) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(service.server.local_addr(), &request, Duration::ZERO).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Under the limit is fine.
    let (status, _, _) = service
        .put(json!({"soul": "ab:1", "data": {}}).to_string())
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        relay.put_bodies().len(),
        1,
        "only the small put reached the relay"
    );
    service.shutdown().await;
}

#[tokio::test]
async fn a_put_body_that_never_arrives_is_408() {
    let relay = RelayStub::start().await;
    let service = Service::start(Some(relay.base_url()), |gun| {
        gun.gun_put_body_timeout = Duration::from_millis(200);
    })
    .await;
    let request = b"POST /gun-relay/put HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
        Content-Length: 100\r\nConnection: close\r\n\r\n{\"soul\":";
    let started = std::time::Instant::now();
    let answer = raw_exchange(service.server.local_addr(), request, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(relay.requests(), 0);
    service.shutdown().await;
}

#[tokio::test]
async fn without_gun_peers_the_endpoints_answer_503() {
    let service = Service::start(None, |_| {}).await;
    for path in ["/gun-relay/get?soul=ab:1", "/gun-relay/anything"] {
        let (status, body, _) = service.get(path).await;
        assert_eq!(status, 503, "{path}");
        assert_eq!(body, json!({"error": "GUN relay not configured"}));
    }
    let (status, body, _) = service.put(r#"{"soul":"ab:1","data":{}}"#).await;
    assert_eq!(status, 503);
    assert_eq!(body, json!({"error": "GUN relay not configured"}));
    service.shutdown().await;
}

#[tokio::test]
async fn unknown_endpoints_and_methods() {
    let relay = RelayStub::start().await;
    let service = Service::start(Some(relay.base_url()), |_| {}).await;
    let (status, body, _) = service.get("/gun-relay/nope").await;
    assert_eq!(status, 404);
    assert_eq!(body, json!({"error": "Endpoint not found"}));

    let (status, _, headers) = service.get("/gun-relay/put").await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "POST");
    let response = service
        .http
        .post(format!("{}/gun-relay/get?soul=ab:1", service.base))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(relay.requests(), 0);
    service.shutdown().await;
}

#[tokio::test]
async fn an_unusable_gun_peers_stops_the_start() {
    let media = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(media.path().join("web")).expect("web dir");
    let mut config = Config::for_media_dir(media.path());
    config.gun.gun_peers = Some("gun-relay:8765".into());
    let error = oip_media::server::start(config)
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("GUN_PEERS"), "{error}");
}

/// Writes `request` on a fresh connection, waits up to `wait` (or until the server closes),
/// and returns what came back as text.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before it has read everything: ignore write errors.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        wait.max(Duration::from_secs(3)),
        stream.read_to_end(&mut answer),
    )
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}
