//! oip-media behind the indexer's own forwarding hook, run for real: node with express 4
//! and http-proxy-middleware 3 at the indexer's pinned versions (`tests/indexer-proxy/`),
//! configured from `CUSTOM_PROXY_TARGET` / `CUSTOM_PROXY_ROUTE` / `CUSTOM_PROXY_STRIP_PREFIX`
//! and mounted as the indexer mounts it. Also the indexer's GUN client URLs, built from
//! `GUN_PEERS` by the same code shape and the same axios version, against oip-media's relay
//! endpoints.
//!
//! Needs `node` and `tests/indexer-proxy/node_modules` (`(cd tests/indexer-proxy && npm ci)`);
//! without them each test prints why it skipped and passes, unless
//! `OIP_REQUIRE_INDEXER_PROXY` is set, as `.ci/run` does.

mod forwarding;
mod support;

use std::path::PathBuf;
use std::process::Stdio;

use forwarding::{GIF, Site, get, send};
use serde_json::{Value, json};
use support::relay_stub::RelayStub;
use tokio::process::{Child, Command};

const REQUIRE: &str = "OIP_REQUIRE_INDEXER_PROXY";
const WHAT: &str = "indexer forwarding test (node + express + http-proxy-middleware)";

fn harness_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/indexer-proxy")
}

/// Whether node and the pinned packages are here; `None` (after saying why) if not.
async fn node_ready() -> Option<()> {
    for package in ["express", "http-proxy-middleware", "axios"] {
        if !harness_dir().join("node_modules").join(package).is_dir() {
            return forwarding::skip(
                REQUIRE,
                WHAT,
                &format!(
                    "tests/indexer-proxy/node_modules/{package} is missing; run `(cd tests/indexer-proxy && npm ci)`"
                ),
            );
        }
    }
    if !forwarding::runs("node", "--version").await {
        return forwarding::skip(REQUIRE, WHAT, "`node` is not on PATH");
    }
    Some(())
}

/// The indexer's hook in its own node process.
struct Hook {
    base: String,
    _child: Child,
}

/// Starts the hook with the indexer's environment variables.
async fn start_hook(target: &str, route: &str, strip_prefix: Option<&str>) -> Hook {
    let mut command = Command::new("node");
    command
        .arg("indexer_proxy.js")
        .current_dir(harness_dir())
        .env("CUSTOM_PROXY_TARGET", target)
        .env("CUSTOM_PROXY_ROUTE", route)
        .env("PROXY_PORT", "0")
        .env("PROXY_LOG", "0")
        .env_remove("CUSTOM_PROXY_STRIP_PREFIX")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(strip) = strip_prefix {
        command.env("CUSTOM_PROXY_STRIP_PREFIX", strip);
    }
    let mut child = command.spawn().expect("spawn node indexer_proxy.js");
    let port = forwarding::port_from_stdout(&mut child, "PROXY_PORT=", "indexer_proxy.js").await;
    Hook {
        base: format!("http://127.0.0.1:{port}"),
        _child: child,
    }
}

#[tokio::test]
async fn gifs_through_the_indexer_hook_with_the_documented_settings() {
    if node_ready().await.is_none() {
        return;
    }
    let site = Site::start(|_| {}).await;
    // README / compose.yaml: the target carries the route, the prefix is not stripped.
    let hook = start_hook(&format!("{}/media", site.direct()), "/media", None).await;

    forwarding::check_gif_routes(&site, &hook.base).await;

    // What else a user sees through the hook: the indexer writes
    // `Access-Control-Allow-Origin: *` over oip-media's reflected origin…
    let answer = send(
        "GET",
        &format!("{}{GIF}", hook.base),
        &[("Origin", "https://app.fitnessally.io")],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("access-control-allow-origin"), Some("*"));
    // …and opens a new connection to oip-media for every request (http-proxy's default
    // `agent: false` sends `Connection: close`): the cost the front-proxy topology avoids.
    let before = site.metric("oip_media_connections_accepted_total").await;
    for _ in 0..10 {
        assert_eq!(get(&format!("{}{GIF}", hook.base)).await.status, 200);
    }
    let opened = site.metric("oip_media_connections_accepted_total").await - before;
    assert!(
        opened >= 10.0,
        "10 requests through the hook opened {opened} connections"
    );
    // Routes the hook does not cover stay with the indexer.
    let other = get(&format!(
        "{}/api/generate/media?id={}",
        hook.base,
        forwarding::AUDIO
    ))
    .await;
    assert_eq!(other.status, 404);
    assert_eq!(other.json()["indexer"], "not proxied");

    site.stop().await;
}

#[tokio::test]
async fn the_formerly_documented_target_without_the_route_answers_404() {
    if node_ready().await.is_none() {
        return;
    }
    let site = Site::start(|_| {}).await;
    // The settings README and compose.yaml gave before: express strips `/media` from the
    // path and http-proxy-middleware 3 does not put it back, so oip-media is asked for
    // `/fitnessally/<file>.gif`.
    let hook = start_hook(&site.direct(), "/media", None).await;
    let answer = get(&format!("{}{GIF}", hook.base)).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json(), json!({"error": "Not found"}));
    // The same file, asked for directly, is there.
    assert_eq!(get(&format!("{}{GIF}", site.direct())).await.status, 200);
    site.stop().await;
}

#[tokio::test]
async fn strip_prefix_true_breaks_names_that_begin_with_the_route() {
    if node_ready().await.is_none() {
        return;
    }
    let site = Site::start(|_| {}).await;
    site.put_web("media-archive/x.gif", b"GIF89a-archive");
    let target = format!("{}/media", site.direct());
    let kept = start_hook(&target, "/media", Some("false")).await;
    let stripped = start_hook(&target, "/media", Some("true")).await;

    // The strip rule runs on the path express has already stripped, so for every
    // ordinary name it changes nothing…
    for hook in [&kept, &stripped] {
        let answer = get(&format!("{}{GIF}", hook.base)).await;
        assert_eq!(answer.status, 200, "{}", hook.base);
        assert!(answer.body == site.gif);
    }
    // …but a first segment that begins with the route's text loses that text.
    let archive = "/media/media-archive/x.gif";
    let answer = get(&format!("{}{archive}", kept.base)).await;
    assert_eq!(answer.status, 200, "{archive} without stripping");
    assert_eq!(answer.body, b"GIF89a-archive");
    let answer = get(&format!("{}{archive}", stripped.base)).await;
    assert_eq!(
        answer.status, 404,
        "{archive} with CUSTOM_PROXY_STRIP_PREFIX=true"
    );
    site.stop().await;
}

#[tokio::test]
async fn private_media_through_a_hook_on_api_media_passes_authorization() {
    if node_ready().await.is_none() {
        return;
    }
    let site = Site::start(|_| {}).await;
    let hook = start_hook(&format!("{}/api/media", site.direct()), "/api/media", None).await;

    forwarding::check_private_media(&site, &hook.base).await;

    // Why README does not recommend hooking /api/media: the hook takes every method, so
    // the indexer's own upload and publish endpoints under /api/media would reach
    // oip-media, which serves bytes only.
    let upload = send(
        "POST",
        &format!("{}/api/media/upload", hook.base),
        &[("Content-Type", "application/json")],
    )
    .await;
    assert_eq!(upload.status, 405);
    assert_eq!(upload.header("allow"), Some("GET, HEAD, OPTIONS"));
    site.stop().await;
}

/// Runs `tests/indexer-proxy/gun_client.js` with `GUN_PEERS` and returns its answers.
async fn gun_client(gun_peers: &str, operations: Value) -> Vec<Value> {
    let out = Command::new("node")
        .arg("gun_client.js")
        .arg(operations.to_string())
        .current_dir(harness_dir())
        .env("GUN_PEERS", gun_peers)
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("run node gun_client.js");
    assert!(out.status.success(), "gun_client.js failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON answer per line"))
        .collect()
}

#[tokio::test]
async fn the_indexer_gun_client_urls_from_gun_peers_reach_the_relay_endpoints() {
    if node_ready().await.is_none() {
        return;
    }
    let relay = RelayStub::start().await;
    let site = Site::start(|config| config.gun.gun_peers = Some(relay.base_url())).await;
    // README: the indexer's GUN_PEERS names oip-media's relay endpoints; its client uses
    // the first entry of the list.
    let gun_peers = format!("{}/gun-relay,http://127.0.0.1:9/unused", site.direct());
    let soul = "0123456789ab:forwarded-record";
    let missing = "0123456789ab:not-published";
    let registry = "oip:registry:index:exercise";
    let record = json!({"data": {"basic": {"name": "Row"}}, "oip": {"recordType": "exercise"}});
    let answers = gun_client(
        &gun_peers,
        json!([
            {"op": "put", "soul": soul, "data": record},
            {"op": "get", "soul": soul},
            {"op": "get", "soul": missing},
            {"op": "get", "soul": missing},
            {"op": "get_encoded", "soul": missing},
            {"op": "get", "soul": registry},
            {"op": "list", "publisherHash": "0123456789ab"},
        ]),
    )
    .await;
    assert_eq!(answers.len(), 7, "{answers:?}");

    let put = &answers[0];
    assert_eq!(put["path"], "/gun-relay/put");
    assert_eq!(put["status"], 200);
    assert_eq!(put["body"], json!({"success": true, "soul": soul}));
    assert_eq!(
        relay.put_bodies(),
        vec![json!({"soul": soul, "data": record})],
        "the relay received the put as the indexer sent it"
    );

    let found = &answers[1];
    assert_eq!(
        found["path"], "/gun-relay/get?soul=0123456789ab:forwarded-record",
        "axios leaves the soul's colons unencoded"
    );
    assert_eq!(found["status"], 200);
    assert_eq!(found["body"]["success"], true);
    assert_eq!(found["body"]["data"], record);

    // A miss: the relay's exact 404, asked upstream once, then from oip-media's miss cache,
    // whichever way the soul is encoded.
    for answer in &answers[2..5] {
        assert_eq!(answer["status"], 404, "{answer}");
        assert_eq!(answer["body"], json!({"error": "Not found"}));
    }
    assert_eq!(
        answers[4]["path"],
        "/gun-relay/get?soul=0123456789ab%3Anot-published"
    );
    assert_eq!(
        relay.gets_of(missing),
        1,
        "misses after the first are cached"
    );

    assert_eq!(
        answers[5]["path"],
        "/gun-relay/get?soul=oip:registry:index:exercise"
    );
    assert_eq!(answers[5]["status"], 404);
    assert_eq!(relay.gets_of(registry), 1);

    // The relay's `/list` is not one of oip-media's endpoints: an explicit "endpoint not
    // found" (never a record miss), which the indexer's listRecordsByPublisher logs and
    // turns into an empty list.
    let list = &answers[6];
    assert_eq!(
        list["path"],
        "/gun-relay/list?publisherHash=0123456789ab&limit=50&offset=0"
    );
    assert_eq!(list["status"], 404);
    assert_eq!(list["body"], json!({"error": "Endpoint not found"}));

    site.stop().await;
}
