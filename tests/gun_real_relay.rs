//! The client and the `/gun-relay/` endpoints against a real GUN relay: `tests/relay/relay.js`,
//! the relay's HTTP API on the `gun` npm package, started with `node`.
//!
//! Needs `node` and `tests/relay/node_modules` (`(cd tests/relay && npm ci)`); without them
//! each test prints why it skipped and passes — unless `OIP_REQUIRE_REAL_RELAY` is set, as
//! `.ci/run` does, so that CI cannot skip it silently.

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use oip_media::Config;
use oip_media::config::GunSettings;
use oip_media::gun::{GunClient, GunError, GunRecord};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long the test relay waits before it answers a miss (the real one waits ~3 s).
const MISS_WAIT_MS: u64 = 300;

struct NodeRelay {
    base: String,
    _child: Child,
    _data: tempfile::TempDir,
}

/// Starts the relay, or says why it cannot and returns `None`.
async fn start_relay() -> Option<NodeRelay> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/relay");
    if !dir.join("node_modules/gun").is_dir() {
        return skip("tests/relay/node_modules/gun is missing; run `(cd tests/relay && npm ci)`");
    }
    let node = Command::new("node").arg("--version").output().await;
    if !node.is_ok_and(|out| out.status.success()) {
        return skip("`node` is not on PATH");
    }
    let data = tempfile::tempdir().expect("relay data dir");
    let mut child = Command::new("node")
        .arg("relay.js")
        .current_dir(&dir)
        .env("RELAY_PORT", "0")
        .env("RELAY_MISS_WAIT_MS", MISS_WAIT_MS.to_string())
        .env("RELAY_DATA_DIR", data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node relay.js");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let port = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.expect("relay stdout") {
            if let Some(port) = line.strip_prefix("RELAY_PORT=") {
                return port.trim().parse::<u16>().expect("port");
            }
        }
        panic!("relay.js exited before it listened");
    })
    .await
    .expect("relay.js did not start within 20 s");
    // Keep reading its stdout so GUN's output never fills the pipe and blocks it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Some(NodeRelay {
        base: format!("http://127.0.0.1:{port}"),
        _child: child,
        _data: data,
    })
}

fn skip(reason: &str) -> Option<NodeRelay> {
    if std::env::var_os("OIP_REQUIRE_REAL_RELAY").is_some() {
        panic!("OIP_REQUIRE_REAL_RELAY is set but the real relay cannot run: {reason}");
    }
    // Straight to stderr, past the test harness's capture: a skip must be visible.
    let _ = writeln!(std::io::stderr(), "skipped: real GUN relay test: {reason}");
    None
}

fn settings(base: &str) -> GunSettings {
    let mut settings = Config::for_media_dir("/nonexistent").gun;
    settings.gun_peers = Some(base.to_owned());
    settings.gun_summary_interval = Duration::ZERO;
    settings
}

#[tokio::test]
async fn the_client_against_a_real_gun_relay() {
    let Some(relay) = start_relay().await else {
        return;
    };
    let gun = GunClient::new(&settings(&relay.base)).expect("client");
    let soul = "0123456789ab:real-record";

    // A record as the indexer stores it: `data` as a JSON string, `oip` and `meta` nodes.
    let record = json!({
        "data": json!({"basic": {"name": "Bench press"}}).to_string(),
        "oip": {"did": format!("did:gun:{soul}"), "recordType": "exercise"},
        "meta": {"created": 1_733_616_000, "localId": "real-record"},
    });
    gun.put(soul, record).await.expect("put");
    let Ok(GunRecord::Found(found)) = gun.get(soul).await else {
        panic!("the record just put is not found");
    };
    assert_eq!(
        found["data"],
        json!({"basic": {"name": "Bench press"}}),
        "the relay parses string data"
    );
    assert_eq!(
        found["meta"],
        json!({"#": format!("{soul}/meta")}),
        "nested nodes come back as references"
    );

    // A miss takes the relay's wait once, then comes from the negative cache.
    let started = Instant::now();
    assert_eq!(
        gun.get("0123456789ab:nothing").await,
        Ok(GunRecord::Missing)
    );
    assert!(started.elapsed() >= Duration::from_millis(MISS_WAIT_MS - 50));
    let upstream = gun.counters().upstream_requests.get();
    assert_eq!(
        gun.get("0123456789ab:nothing").await,
        Ok(GunRecord::Missing)
    );
    // Answered without asking the relay (a count, where a timing would be flaky).
    assert_eq!(gun.counters().upstream_requests.get(), upstream);
    assert_eq!(gun.counters().negative_cache_hits.get(), 1);

    // A put of a cached miss: the next get reads the write.
    gun.put("0123456789ab:nothing", json!({"meta": {"created": 2}}))
        .await
        .expect("put");
    assert!(matches!(
        gun.get("0123456789ab:nothing").await,
        Ok(GunRecord::Found(_))
    ));

    // GUN refuses null at the root of a node; the client says so and does not retry.
    let result = gun.put(soul, serde_json::Value::Null).await;
    assert!(
        matches!(&result, Err(GunError::Rejected { message }) if message.contains("node")),
        "{result:?}"
    );

    // The relay's websocket path is not its HTTP API: an error, not a miss.
    let wrong = GunClient::new(&settings(&format!("{}/gun", relay.base))).expect("client");
    let result = wrong.get(soul).await;
    assert!(
        matches!(&result, Err(GunError::Misconfigured { status: 404, body, .. }) if body.contains("Endpoint not found")),
        "{result:?}"
    );
    assert_eq!(wrong.negative_cache_len(), 0);
}

#[tokio::test]
async fn the_endpoints_in_front_of_a_real_gun_relay() {
    let Some(relay) = start_relay().await else {
        return;
    };
    let gun = settings(&relay.base);
    let server = support::TestServer::start(|config| config.gun = gun).await;
    let base = format!("http://{}/gun-relay", server.local_addr());
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");

    let get = |soul: &str| {
        let url = format!("{base}/get?soul={soul}");
        let http = http.clone();
        async move {
            let response = http.get(url).send().await.expect("get");
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.expect("json");
            (status, body)
        }
    };

    assert_eq!(
        get("0123456789ab:route").await,
        (404, json!({"error": "Not found"}))
    );
    let response = http
        .post(format!("{base}/put"))
        .json(&json!({"soul": "0123456789ab:route", "data": {"meta": {"created": 3}}}))
        .send()
        .await
        .expect("put");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.expect("json"),
        json!({"success": true, "soul": "0123456789ab:route"})
    );
    let (status, body) = get("0123456789ab:route").await;
    assert_eq!(status, 200);
    assert_eq!(body["success"], true);
    assert_eq!(
        body["data"]["meta"],
        json!({"#": "0123456789ab:route/meta"})
    );

    server.shutdown().await;
}
