//! The recommended topology, run for real: a front proxy sends the media routes straight
//! to oip-media and everything else to the indexer. The proxies are Debian's nginx and
//! Caddy, configured with the very files docs/deployment.md tells users to paste (`deploy/nginx.conf`,
//! `deploy/Caddyfile`); the test only swaps their host names and ports for loopback ones.
//! The indexer is a stand-in that echoes what it received.
//!
//! Checked through each proxy: a GIF's bytes and validators, `304`, ranges, `HEAD` (no
//! body leaves oip-media), hostile paths, private media with `Authorization`, generated
//! audio, which upstream each route reaches, `X-Forwarded-*` and `X-Request-Id` handling,
//! keep-alive to oip-media, and that a large body streams (a paused client keeps it in
//! flight at oip-media instead of the proxy spooling it).
//!
//! Needs `nginx` / `caddy` on PATH; without one, its test prints why it skipped and passes,
//! unless `OIP_REQUIRE_FRONT_PROXIES` is set, as `.ci/run` does.

mod forwarding;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use forwarding::{AUDIO, GIF, Site, get, send};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

const REQUIRE: &str = "OIP_REQUIRE_FRONT_PROXIES";

// ------------------------------------------------------------------ the indexer stand-in

/// Answers every request `200 {"indexer": true, method, uri, headers}` and remembers the
/// request targets it saw.
struct IndexerStandIn {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl IndexerStandIn {
    async fn start() -> IndexerStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let service = service_fn(move |request: hyper::Request<_>| {
                        let log = Arc::clone(&log);
                        async move {
                            let uri = request.uri().to_string();
                            log.lock().expect("lock").push(uri.clone());
                            let headers: BTreeMap<String, String> = request
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                })
                                .collect();
                            let body = json!({"indexer": true, "method": request.method().as_str(),
                                              "uri": uri, "headers": headers});
                            let mut response =
                                hyper::Response::new(Full::new(Bytes::from(body.to_string())));
                            response.headers_mut().insert(
                                "content-type",
                                hyper::header::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        IndexerStandIn { addr, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

// ------------------------------------------------------------------ the front proxies

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Nginx,
    Caddy,
}

/// A front proxy process with its scratch folder (config, logs, temp files).
struct FrontProxy {
    kind: Kind,
    base: String,
    scratch: tempfile::TempDir,
    child: Child,
}

impl Drop for FrontProxy {
    fn drop(&mut self) {
        forwarding::terminate(&mut self.child);
    }
}

impl FrontProxy {
    fn log(&self) -> String {
        std::fs::read_to_string(self.scratch.path().join("error.log")).unwrap_or_default()
    }
}

fn deploy_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `text` with `from` replaced by `to`, which must occur exactly once: a snippet edit that
/// breaks what this test relies on fails here rather than testing something else.
fn swap(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "the snippet should contain `{from}` once"
    );
    text.replace(from, to)
}

/// Says why `kind` cannot run here, or `None` when it can.
async fn missing(kind: Kind) -> Option<String> {
    let (program, arg) = match kind {
        Kind::Nginx => ("nginx", "-v"),
        Kind::Caddy => ("caddy", "version"),
    };
    (!forwarding::runs(program, arg).await)
        .then(|| format!("`{program}` is not installed (Debian: apt-get install {program})"))
}

async fn start_front_proxy(kind: Kind, oip_media: SocketAddr, indexer: SocketAddr) -> FrontProxy {
    let scratch = tempfile::tempdir().expect("scratch");
    let port = forwarding::free_port();
    let dir = scratch.path();
    let log = std::fs::File::create(dir.join("error.log")).expect("log");
    let mut command = match kind {
        Kind::Nginx => {
            let site = deploy_file("nginx.conf");
            let site = swap(
                &site,
                "server oip-media:8080;",
                &format!("server {oip_media};"),
            );
            let site = swap(&site, "server indexer:3005;", &format!("server {indexer};"));
            let site = swap(&site, "listen 80;", &format!("listen 127.0.0.1:{port};"));
            std::fs::write(dir.join("site.conf"), site).expect("site.conf");
            // The minimum around the snippet: one worker (so keep-alive counts are exact),
            // logs and temp paths in the scratch folder.
            let d = dir.display();
            let main = format!(
                "user root;\nworker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 include {d}/site.conf;\n}}\n"
            );
            std::fs::write(dir.join("nginx.conf"), main).expect("nginx.conf");
            let mut command = Command::new("nginx");
            command
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .arg("-e")
                .arg(dir.join("error.log"));
            command
        }
        Kind::Caddy => {
            let site = deploy_file("Caddyfile");
            let site = swap(
                &site,
                "api.example.com {",
                // Any Host (the test sends its own), on loopback only.
                &format!("http://:{port} {{\n\tbind 127.0.0.1"),
            );
            let site = swap(
                &site,
                "reverse_proxy oip-media:8080 {",
                &format!("reverse_proxy {oip_media} {{"),
            );
            let site = swap(
                &site,
                "reverse_proxy indexer:3005",
                &format!("reverse_proxy {indexer}"),
            );
            // No admin endpoint (parallel test runs would fight over :2019).
            let config = format!("{{\n\tadmin off\n}}\n\n{site}");
            std::fs::write(dir.join("Caddyfile"), config).expect("Caddyfile");
            let mut command = Command::new("caddy");
            command
                .arg("run")
                .arg("--config")
                .arg(dir.join("Caddyfile"))
                .arg("--adapter")
                .arg("caddyfile")
                .env("HOME", dir)
                .env("XDG_DATA_HOME", dir.join("data"))
                .env("XDG_CONFIG_HOME", dir.join("config"));
            command
        }
    };
    let mut child = command
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {kind:?}: {e}"));
    if let Err(why) =
        forwarding::wait_listening(&mut child, port, Some(&dir.join("error.log"))).await
    {
        panic!("{kind:?} {why}");
    }
    FrontProxy {
        kind,
        base: format!("http://127.0.0.1:{port}"),
        scratch,
        child,
    }
}

// ------------------------------------------------------------------ the checks

/// The size of the body that must stream: far more than the kernel buffers between
/// oip-media, the proxy and the client can hold.
const LARGE: usize = 48 << 20;

async fn check_front_proxy(kind: Kind) {
    if let Some(reason) = missing(kind).await {
        let _: Option<()> =
            forwarding::skip(REQUIRE, &format!("{kind:?} front-proxy test"), &reason);
        return;
    }
    // A fixed, small send buffer on oip-media's sockets, so what the kernel holds is small
    // next to LARGE and a paused client really pauses oip-media's send.
    let site = Site::start(|config| config.server.send_buffer = 64 * 1024).await;
    let large = forwarding::pattern(LARGE, 11);
    site.put_web("fitnessally/large.gif", &large);
    let indexer = IndexerStandIn::start().await;
    let proxy = start_front_proxy(kind, site.addr, indexer.addr).await;
    let base = proxy.base.clone();

    forwarding::check_gif_routes(&site, &base).await;
    forwarding::check_private_media(&site, &base).await;
    check_other_media_routes(&site, &base).await;
    check_the_indexer_keeps_its_routes(&base).await;
    check_forwarding_headers(&site, &indexer, &base).await;
    check_keep_alive(&site, &base).await;
    check_large_body_streams(&site, &proxy, &large).await;

    assert!(
        !indexer
            .seen()
            .iter()
            .any(|uri| uri.starts_with("/media/fitnessally/0")),
        "a GIF request reached the indexer: {:?}",
        indexer.seen()
    );
    site.stop().await;
}

/// `/api/media/<id>/info` and the three generated-audio forms reach oip-media.
async fn check_other_media_routes(site: &Site, base: &str) {
    let owner = format!("Bearer {}", forwarding::token(forwarding::OWNER));
    let info = send(
        "GET",
        &format!("{base}/api/media/{}/info", site.private_id),
        &[("Authorization", &owner)],
    )
    .await;
    assert_eq!(info.status, 200, "/info through {base}");
    assert_eq!(info.json()["mediaId"], site.private_id);
    for path in [
        format!("/api/generate/media?id={AUDIO}"),
        format!("/api/generate/media/{AUDIO}"),
        format!("/api/media?id={AUDIO}"),
    ] {
        let answer = get(&format!("{base}{path}")).await;
        assert_eq!(answer.status, 200, "{path} through {base}");
        assert!(answer.body == site.audio, "{path}'s bytes");
        assert_eq!(answer.header("cache-control"), Some("public, max-age=0"));
    }
}

/// Everything outside the media routes reaches the indexer with its path and query as
/// sent: its uploads under `/api/media/`, look-alike prefixes, and oip-media's own
/// operational routes, which stay private.
async fn check_the_indexer_keeps_its_routes(base: &str) {
    for (method, target) in [
        ("GET", "/"),
        ("GET", "/api/records?recordType=exercise&limit=5"),
        ("POST", "/api/media/upload"),
        ("POST", "/api/media/createRecord"),
        ("GET", "/api/media/5a5a/info"),
        ("GET", "/mediakit/x.gif"),
        ("POST", "/api/generate/text"),
        ("GET", "/api/generate/media-list"),
        ("GET", "/gun-relay/get?soul=0123456789ab:x"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
    ] {
        let answer = send(method, &format!("{base}{target}"), &[]).await;
        assert_eq!(answer.status, 200, "{method} {target} through {base}");
        let echoed = answer.json();
        assert_eq!(
            echoed["indexer"], true,
            "{method} {target} reached oip-media"
        );
        assert_eq!(echoed["uri"], target, "{method} {target} arrived changed");
        assert_eq!(echoed["method"], method);
    }
}

/// What a client says about itself in `X-Forwarded-*` or `X-Request-Id` is replaced by
/// what the proxy knows; WebSocket upgrades reach the indexer; a media request that asks
/// for an upgrade still gets its bytes.
async fn check_forwarding_headers(site: &Site, indexer: &IndexerStandIn, base: &str) {
    let spoofed = [
        ("Host", "api.example.com"),
        ("X-Forwarded-For", "203.0.113.66"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Proto", "https"),
        ("X-Request-Id", "client-chosen"),
    ];
    let echoed = send("GET", &format!("{base}/api/records"), &spoofed)
        .await
        .json();
    let headers = &echoed["headers"];
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{echoed}");
    assert_eq!(headers["x-forwarded-proto"], "http", "{echoed}");
    assert_eq!(headers["x-forwarded-host"], "api.example.com", "{echoed}");
    assert_eq!(headers["host"], "api.example.com", "{echoed}");

    let media = send("GET", &format!("{base}{GIF}"), &spoofed).await;
    assert_eq!(media.status, 200);
    let id = media.header("x-request-id").unwrap_or_default();
    assert!(
        id.len() >= 32 && id != "client-chosen",
        "oip-media logs and answers the proxy's request id, not the client's: {id:?}"
    );

    let upgrade = [("Upgrade", "websocket"), ("Connection", "Upgrade")];
    let seen_before = indexer.seen().len();
    let echoed = send(
        "GET",
        &format!("{base}/socket.io/?EIO=4&transport=websocket"),
        &upgrade,
    )
    .await
    .json();
    assert_eq!(echoed["headers"]["upgrade"], "websocket", "{echoed}");
    assert!(
        echoed["headers"]["connection"]
            .as_str()
            .unwrap_or_default()
            .eq_ignore_ascii_case("upgrade"),
        "{echoed}"
    );
    assert_eq!(indexer.seen().len(), seen_before + 1);
    let media = send("GET", &format!("{base}{GIF}"), &upgrade).await;
    assert_eq!(media.status, 200);
    assert!(media.body == site.gif);
}

/// Sequential requests through the proxy reuse one upstream connection to oip-media.
async fn check_keep_alive(site: &Site, base: &str) {
    // Let connections from earlier checks settle into the pool first.
    assert_eq!(get(&format!("{base}{GIF}")).await.status, 200);
    let before = site.metric("oip_media_connections_accepted_total").await;
    for _ in 0..30 {
        // A new client connection each time: the proxy still reuses its upstream one.
        assert_eq!(get(&format!("{base}{GIF}")).await.status, 200);
    }
    // `metric` itself opens one connection (to oip-media directly).
    let opened = site.metric("oip_media_connections_accepted_total").await - before - 1.0;
    assert!(
        opened <= 1.0,
        "30 requests through {base} opened {opened} connections to oip-media"
    );
}

/// A large body streams through the proxy: while the client pauses, the body stays in
/// flight at oip-media (the proxy did not read it all into buffers or temp files), and
/// once the client reads on, every byte arrives.
async fn check_large_body_streams(site: &Site, proxy: &FrontProxy, large: &[u8]) {
    let host = proxy.base.trim_start_matches("http://");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(64 * 1024).expect("rcvbuf");
    let mut stream = socket
        .connect(host.parse().expect("addr"))
        .await
        .expect("connect");
    let request = format!(
        "GET /media/fitnessally/large.gif HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut received = Vec::with_capacity(LARGE + 4096);
    let mut chunk = vec![0u8; 64 * 1024];
    while received.len() < (1 << 20) {
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the proxy closed early");
        received.extend_from_slice(&chunk[..n]);
    }
    for pause in [Duration::from_millis(500), Duration::from_millis(1000)] {
        tokio::time::sleep(pause).await;
        // Still at oip-media: in a slot, or (the proxy accepting nothing for
        // `--stalled-after`) in the pool of stalled bodies.
        // One scrape: the body moves from its slot to the stalled pool after
        // `--stalled-after` (500 ms), and two scrapes straddling that move counted it
        // twice (seen once in CI, under a full test run's load).
        let held = site
            .metrics_sum(&[
                "oip_media_media_in_flight",
                "oip_media_media_stalled_bodies",
            ])
            .await;
        assert_eq!(
            held, 1.0,
            "{:?} read the body ahead of a paused client",
            proxy.kind
        );
    }
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut received))
        .await
        .expect("the rest within 30 s")
        .expect("read the rest");
    let head_end = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head")
        + 4;
    let head = String::from_utf8_lossy(&received[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains(&format!("content-length: {LARGE}")), "{head}");
    assert!(received[head_end..] == *large, "the large body's bytes");
    no_body_in_flight(site).await;
    if proxy.kind == Kind::Nginx {
        let log = proxy.log();
        assert!(
            !log.contains("buffered to a temporary file"),
            "nginx spooled a media body to disk: {log}"
        );
    }
}

/// Waits until oip-media has no media body in flight.
async fn no_body_in_flight(site: &Site) {
    for _ in 0..100 {
        if site.metric("oip_media_media_in_flight").await == 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("a media body stayed in flight after the client finished");
}

#[tokio::test]
async fn nginx_in_front_with_the_readme_snippet() {
    check_front_proxy(Kind::Nginx).await;
}

#[tokio::test]
async fn caddy_in_front_with_the_readme_snippet() {
    check_front_proxy(Kind::Caddy).await;
}

/// docs/deployment.md shows the snippets users paste; they must be the files tested here.
#[test]
fn readme_shows_the_tested_snippets() {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deployment.md");
    let readme = std::fs::read_to_string(&doc).expect("docs/deployment.md");
    for (file, fence) in [
        ("nginx.conf", "```nginx\n"),
        ("Caddyfile", "```caddyfile\n"),
    ] {
        let block = format!("{fence}{}```", deploy_file(file));
        assert!(
            readme.contains(&block),
            "docs/deployment.md must show deploy/{file} verbatim in a {fence:?} block"
        );
    }
}
