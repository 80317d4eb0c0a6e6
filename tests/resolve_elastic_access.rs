//! `/api/resolve` against an Elasticsearch reached as the indexer reaches it: basic
//! auth (`ELASTICCLIENTUSERNAME` / `ELASTICCLIENTPASSWORD`, or the URL's user-info) and
//! `https://` with a CA made at test time (`--elastic-ca-file`). A refused credential or
//! an untrusted certificate is an error — counted in `/metrics`, shown in `/readyz`,
//! logged without secrets — never "not found", and never cached as a miss.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oip_media::Config;
use serde_json::{Value, json};
use support::elastic::{Access, ElasticStandIn, TestCa};
use support::{TestServer, rec, with};

const USER: &str = "oip-reader";
const PASSWORD: &str = "es-pass-Zq81";

fn target() -> Value {
    rec("did:arweave:b", "B", json!({}))
}

fn page() -> Value {
    json!({"records": [rec("did:arweave:a", "A", json!({"b": "did:arweave:b"}))], "resolveDepth": 1})
}

async fn stand_in(credentials: bool, tls: Option<Arc<TestCa>>) -> ElasticStandIn {
    let access = Access {
        credentials: credentials.then(|| (USER.to_owned(), PASSWORD.to_owned())),
        tls,
    };
    ElasticStandIn::start_with(vec![target()], vec![], access).await
}

async fn server(es: &ElasticStandIn, adjust: impl FnOnce(&mut Config)) -> TestServer {
    let url = es.url();
    TestServer::start(move |c| {
        c.resolver.elasticsearch_host = Some(url.into());
        adjust(c);
    })
    .await
}

async fn resolve(server: &TestServer) -> Value {
    let response = server
        .client
        .post(server.url("/api/resolve"))
        .body(page().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn readyz(server: &TestServer) -> Value {
    let response = server.get("/readyz").await;
    assert_eq!(
        response.status(),
        200,
        "Elasticsearch never fails readiness"
    );
    let body: Value = response.json().await.unwrap();
    let text = body.to_string();
    assert!(!text.contains("127.0.0.1"), "no URL in /readyz: {text}");
    assert!(!text.contains(PASSWORD) && !text.contains(USER), "{text}");
    body["elasticsearch"].clone()
}

async fn elastic_errors(server: &TestServer, kind: &str) -> u64 {
    let text = server.get("/metrics").await.text().await.unwrap();
    let line = format!("oip_media_elastic_errors_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {line} in /metrics"))
}

fn resolved(body: &Value) {
    let a = rec("did:arweave:a", "A", json!({"b": "did:arweave:b"}));
    assert_eq!(body["records"][0], with(a, "b", target()));
    assert_eq!(body["stats"]["sourceErrors"], 0);
}

/// The DID stayed, as a source error (in `stats` and `recordStats`), never a miss.
fn failed_not_missing(body: &Value) {
    assert_eq!(body["records"][0]["data"]["links"]["b"], "did:arweave:b");
    assert_eq!(body["stats"]["sourceErrors"], 1);
    assert_eq!(body["stats"]["notFound"], 0);
    assert_eq!(body["stats"]["cacheHits"], 0, "a failure is not cached");
    assert_eq!(body["recordStats"][0]["sourceErrors"], 1);
    assert_eq!(body["recordStats"][0]["notFound"], 0);
}

#[tokio::test]
async fn the_right_credentials_resolve() {
    let es = stand_in(true, None).await;
    let server = server(&es, |c| {
        c.resolver.elastic_username = Some(USER.into());
        c.resolver.elastic_password = Some(oip_media::config::Secret::new(PASSWORD));
    })
    .await;
    assert_eq!(readyz(&server).await["state"], "unknown");
    resolved(&resolve(&server).await);
    assert_eq!(es.auth_failures(), 0);
    assert_eq!(
        readyz(&server).await,
        json!({"configured": true, "https": false, "credentials": true, "state": "ok"})
    );
    assert_eq!(elastic_errors(&server, "auth").await, 0);
    server.stop().await;
}

#[tokio::test]
async fn credentials_in_the_url_are_used_when_no_user_is_set() {
    let es = stand_in(true, None).await;
    let url = es
        .url()
        .replace("http://", &format!("http://{USER}:{PASSWORD}@"));
    let server = TestServer::start(move |c| c.resolver.elasticsearch_host = Some(url.into())).await;
    resolved(&resolve(&server).await);
    assert_eq!(es.auth_failures(), 0);
    server.stop().await;
}

#[tokio::test]
async fn wrong_credentials_are_an_error_counted_and_shown_never_a_miss() {
    let es = stand_in(true, None).await;
    let server = server(&es, |c| {
        c.resolver.elastic_username = Some(USER.into());
        c.resolver.elastic_password = Some(oip_media::config::Secret::new("wrong"));
    })
    .await;
    let body = resolve(&server).await;
    failed_not_missing(&body);
    assert!(!body.to_string().contains(PASSWORD));
    let searched = es.auth_failures();
    assert!(searched >= 1);
    assert_eq!(elastic_errors(&server, "auth").await, 1);
    assert_eq!(readyz(&server).await["state"], "auth");

    // Not remembered as missing: the next request asks Elasticsearch again.
    failed_not_missing(&resolve(&server).await);
    assert!(es.auth_failures() > searched);
    assert_eq!(elastic_errors(&server, "auth").await, 2);
    let counters = server.app().state().resolver.counters();
    assert_eq!(counters.not_found.get(), 0);
    assert_eq!(counters.source_errors.get(), 2);
    server.stop().await;
}

#[tokio::test]
async fn https_with_the_ca_file_resolves() {
    let ca = TestCa::new();
    let es = stand_in(true, Some(Arc::clone(&ca))).await;
    assert!(es.url().starts_with("https://"));
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca_file(dir.path());
    let server = server(&es, |c| {
        c.resolver.elastic_username = Some(USER.into());
        c.resolver.elastic_password = Some(oip_media::config::Secret::new(PASSWORD));
        c.resolver.elastic_ca_file = Some(ca_file);
    })
    .await;
    resolved(&resolve(&server).await);
    assert_eq!(es.tls_failures(), 0);
    assert_eq!(
        readyz(&server).await,
        json!({"configured": true, "https": true, "credentials": true, "state": "ok"})
    );
    server.stop().await;
}

#[tokio::test]
async fn a_ca_that_is_not_trusted_is_a_tls_error_never_a_miss() {
    let ca = TestCa::new();
    let es = stand_in(false, Some(ca)).await;
    // Trusts the system roots and another test CA, not the stand-in's.
    let other = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let other_file = other.write_ca_file(dir.path());
    for ca_file in [None, Some(other_file)] {
        let server = server(&es, |c| c.resolver.elastic_ca_file = ca_file).await;
        let body = resolve(&server).await;
        failed_not_missing(&body);
        assert!(es.searches().is_empty(), "no search got through");
        assert_eq!(elastic_errors(&server, "tls").await, 1);
        assert_eq!(elastic_errors(&server, "auth").await, 0);
        assert_eq!(readyz(&server).await["state"], "tls");
        failed_not_missing(&resolve(&server).await);
        assert_eq!(elastic_errors(&server, "tls").await, 2);
        server.stop().await;
    }
    assert!(es.tls_failures() >= 4);
}

#[tokio::test]
async fn a_plain_http_port_behind_an_https_url_is_a_tls_error() {
    let es = stand_in(false, None).await;
    let url = es.url().replace("http://", "https://");
    let server = TestServer::start(move |c| c.resolver.elasticsearch_host = Some(url.into())).await;
    failed_not_missing(&resolve(&server).await);
    assert_eq!(elastic_errors(&server, "tls").await, 1);
    server.stop().await;
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let server = TestServer::start(move |c| c.resolver.elasticsearch_host = Some(url.into())).await;
    failed_not_missing(&resolve(&server).await);
    assert_eq!(elastic_errors(&server, "connect").await, 1);
    assert_eq!(readyz(&server).await["state"], "connect");
    server.stop().await;
}

/// The binary's own log: the start-up "effective configuration" line and the
/// rate-limited `error` line of an auth failure, with neither password nor user-info.
#[tokio::test]
async fn the_log_shows_the_auth_failure_and_never_the_credentials() {
    let es = stand_in(true, None).await;
    let url_password = "url-secret-Qx7";
    let host = es
        .url()
        .replace("http://", &format!("http://urluser:{url_password}@"));
    let media = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(media.path().join("web")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_oip-media"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BIND", "127.0.0.1")
        .env("PORT", "0")
        .env("MEDIA_DIR", media.path())
        .env("DERIVED_DIR", media.path().join(".derived"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("ELASTICSEARCHHOST", &host)
        .env("ELASTICCLIENTUSERNAME", USER)
        .env("ELASTICCLIENTPASSWORD", "env-secret-Wm3")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    for (pipe, tx) in [
        (
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Some(tx),
        ),
        (Box::new(child.stderr.take().unwrap()), None),
    ] {
        let lines = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let (Some(tx), Some(rest)) = (&tx, line.split("listening on http://").nth(1)) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
    }
    let addr = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => addr,
        Err(_) => {
            let _ = child.kill();
            panic!("oip-media did not start: {:?}", lines.lock().unwrap());
        }
    };
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let response = client
            .post(format!("http://{addr}/api/resolve"))
            .body(page().to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert!(es.auth_failures() >= 3);
    support::wait_until("the error is logged", Duration::from_secs(5), || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("Elasticsearch"))
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.lock().unwrap().clone();
    let log = lines.join("\n");
    assert!(log.contains("effective configuration"), "{log}");
    // Elasticsearch's error lines only: on a host whose open-file limit is below what the
    // default bounds need, start-up logs its own error line too (fd_budget).
    let errors: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("ERROR") && l.contains("oip_media::resolve"))
        .collect();
    assert_eq!(errors.len(), 1, "rate-limited to one line: {errors:?}");
    assert!(errors[0].contains("auth"), "{}", errors[0]);
    for secret in [
        url_password,
        "env-secret-Wm3",
        "urluser",
        "unable to authenticate",
    ] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

/// Runs the binary with no system root certificates (rustls-native-certs reads
/// `SSL_CERT_FILE` / `SSL_CERT_DIR`) and `env`; its exit status if it stopped within
/// 20 s, `None` if it started listening (then it is killed).
fn start_without_system_roots(env: &[(&str, String)]) -> (Option<i32>, String) {
    let media = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(media.path().join("web")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_oip-media"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BIND", "127.0.0.1")
        .env("PORT", "0")
        .env("MEDIA_DIR", media.path())
        .env("DERIVED_DIR", media.path().join(".derived"))
        .env("FFMPEG", "")
        .env("NO_COLOR", "1")
        .env("SSL_CERT_FILE", media.path().join("no-roots.pem"))
        .env("SSL_CERT_DIR", media.path().join("no-roots"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            if line.contains("listening on http://") {
                let _ = tx.send(());
            }
        }
    });
    let listening = rx.recv_timeout(Duration::from_secs(20)).is_ok();
    if listening {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let errors = errors.join().unwrap();
    (if listening { None } else { status.code() }, errors)
}

#[test]
fn plain_http_sources_start_without_system_roots_and_https_says_what_it_needs() {
    // http:// Elasticsearch and GUN relay: no certificate is needed, none is loaded.
    let (exit, errors) = start_without_system_roots(&[
        ("ELASTICSEARCHHOST", "http://127.0.0.1:9".into()),
        ("GUN_PEERS", "http://127.0.0.1:9".into()),
    ]);
    assert_eq!(exit, None, "it started: {errors}");
    // https:// with neither system roots nor a CA file: a start-up error naming the fix.
    let (exit, errors) =
        start_without_system_roots(&[("ELASTICSEARCHHOST", "https://127.0.0.1:9".into())]);
    assert_eq!(exit, Some(1), "{errors}");
    assert!(errors.contains("--elastic-ca-file"), "{errors}");
    // With the CA file it starts.
    let dir = tempfile::tempdir().unwrap();
    let ca_file = TestCa::new().write_ca_file(dir.path());
    let (exit, errors) = start_without_system_roots(&[
        ("ELASTICSEARCHHOST", "https://127.0.0.1:9".into()),
        ("ELASTIC_CA_FILE", ca_file.display().to_string()),
    ]);
    assert_eq!(exit, None, "it started: {errors}");
}
