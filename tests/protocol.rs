//! Protocol strictness (issue 10 §5) and error bodies that leak nothing (§4), at the
//! socket: requests are written byte for byte, so what hyper refuses before the
//! application sees it is tested too.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use support::media::{media_id, token};
use support::relay_stub::{RelayStub, Reply};
use support::{RawResponse, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ORIGINS: &str = "https://fitnessally.io,https://*.fitnessally.io,chrome-extension://*";

/// Writes `raw` as it is, reads until the server closes the connection or `wait` passes.
/// Returns the first response and whether the server closed the connection.
async fn exchange(addr: SocketAddr, raw: &str, wait: Duration) -> (RawResponse, bool) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(raw.as_bytes()).await.expect("send");
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    (first_response(&bytes, raw.starts_with("HEAD")), closed)
}

/// The first response in `bytes` (a keep-alive connection may hold only it).
fn first_response(bytes: &[u8], head: bool) -> RawResponse {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let text = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let len = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse::<usize>().expect("length"));
    let body_len = if head { 0 } else { len.min(bytes.len() - end) };
    support::parse(&bytes[..end + body_len], head)
}

async fn server() -> TestServer {
    TestServer::start(|c| c.cors.cors_origins = ORIGINS.into()).await
}

#[tokio::test]
async fn http_1_1_needs_exactly_one_valid_host() {
    let fx = server().await;
    fx.put_web("a.gif", b"GIF89a");
    let target = "/media/fitnessally/a.gif";
    let wait = Duration::from_secs(5);
    let cases: &[(&str, &str, u16)] = &[
        ("HTTP/1.1", "Host: media.example\r\n", 200),
        ("HTTP/1.1", "Host: 127.0.0.1:8080\r\n", 200),
        ("HTTP/1.1", "Host: [::1]:8080\r\n", 200),
        ("HTTP/1.1", "", 400),
        ("HTTP/1.1", "Host: a\r\nHost: a\r\n", 400),
        ("HTTP/1.1", "Host: a\r\nHost: b\r\n", 400),
        ("HTTP/1.1", "Host: user@media.example\r\n", 400),
        ("HTTP/1.1", "Host: media.example/x\r\n", 400),
        ("HTTP/1.1", "Host: a:b\r\n", 400),
        ("HTTP/1.0", "", 200),
        ("HTTP/1.0", "Host: a\r\n", 200),
        ("HTTP/1.0", "Host: a\r\nHost: b\r\n", 400),
    ];
    for (version, hosts, status) in cases {
        let raw = format!("GET {target} {version}\r\n{hosts}Connection: close\r\n\r\n");
        let (r, _) = exchange(fx.addr, &raw, wait).await;
        assert_eq!(r.status, *status, "{version} {hosts:?}");
        if *status == 400 {
            assert!(r.json()["error"].as_str().unwrap().contains("Host"));
            assert_ne!(r.body, b"GIF89a");
        } else {
            assert_eq!(r.body, b"GIF89a");
        }
    }
    // An absolute-form target still needs its Host line in HTTP/1.1.
    let raw = format!("GET http://media.example{target} HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(exchange(fx.addr, &raw, wait).await.0.status, 400);
    fx.stop().await;
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_refused() {
    let fx = server().await;
    let wait = Duration::from_secs(3);
    let post = |te: &str, body: &str| {
        format!(
            "POST /api/resolve HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{te}\r\n{body}"
        )
    };
    let body = "e\r\n{\"records\":[]}\r\n0\r\n\r\n";

    // Plain chunked: read and answered, the connection kept.
    let (r, closed) = exchange(fx.addr, &post("Transfer-Encoding: chunked\r\n", body), wait).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(!closed, "a plain chunked request keeps the connection");

    // Chunked under another coding: framed, but not ours to decode. 501, then closed.
    for te in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: identity, chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: x-custom, chunked\r\n",
    ] {
        let (r, closed) = exchange(fx.addr, &post(te, body), wait).await;
        assert_eq!(r.status, 501, "{te:?}");
        assert_eq!(r.header("connection"), Some("close"), "{te:?}");
        assert!(closed, "{te:?}");
        assert!(r.json()["error"].is_string());
    }
    // Chunked twice: malformed.
    let (r, closed) = exchange(
        fx.addr,
        &post("Transfer-Encoding: chunked, chunked\r\n", body),
        wait,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(closed);

    // What hyper refuses before us, as RFC 9112 §6.3 requires: a last coding that is not
    // chunked (the body's length is unknowable), and any coding in HTTP/1.0.
    for (te, version) in [
        ("Transfer-Encoding: gzip\r\n", "HTTP/1.1"),
        ("Transfer-Encoding: chunked, gzip\r\n", "HTTP/1.1"),
        ("Transfer-Encoding: chunked\r\n", "HTTP/1.0"),
    ] {
        let raw = format!("POST /api/resolve {version}\r\nHost: t\r\n{te}\r\n{body}");
        let (r, closed) = exchange(fx.addr, &raw, wait).await;
        assert_eq!(r.status, 400, "{te:?} {version}");
        assert!(closed, "{te:?} {version}");
    }

    // A GET with a chunked coding under gzip is refused the same way.
    let raw =
        "GET /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(exchange(fx.addr, raw, wait).await.0.status, 501);
    fx.stop().await;
}

#[tokio::test]
async fn options_star_is_answered_as_the_readme_says() {
    let fx = server().await;
    let wait = Duration::from_secs(5);
    let (r, _) = exchange(
        fx.addr,
        "OPTIONS * HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        wait,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST, OPTIONS"));
    assert!(r.body.is_empty());

    // A preflight to `*` is a preflight.
    let (r, _) = exchange(
        fx.addr,
        "OPTIONS * HTTP/1.1\r\nHost: t\r\nOrigin: https://fitnessally.io\r\n\
         Access-Control-Request-Method: GET\r\nConnection: close\r\n\r\n",
        wait,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://fitnessally.io")
    );

    // `*` names the server, and only OPTIONS may use it.
    for method in ["GET", "HEAD", "POST"] {
        let raw = format!(
            "{method} * HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        let (r, _) = exchange(fx.addr, &raw, wait).await;
        assert_eq!(r.status, 400, "{method}");
        if method != "HEAD" {
            assert!(r.json()["error"].is_string(), "our answer, not hyper's");
        }
    }
    fx.stop().await;
}

/// A name, a method, a target and header lines.
type Case<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, &'a str)>);

/// How many times `Origin` is named by the `Vary` lines of `r`.
fn vary_origin(r: &RawResponse) -> usize {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("vary"))
        .flat_map(|(_, v)| v.split(','))
        .filter(|t| t.trim().eq_ignore_ascii_case("origin"))
        .count()
}

#[tokio::test]
async fn vary_origin_is_sent_exactly_once_on_every_path() {
    const SECRET: &str = "vary-secret";
    let fx = TestServer::start(|c| {
        c.cors.cors_origins = ORIGINS.into();
        c.admission.max_in_flight = 1;
        c.admission.max_queue = 0;
        c.auth.jwt_secret = Some(oip_media::config::Secret::new(SECRET));
    })
    .await;
    fx.put_web("a.gif", b"GIF89a");
    fx.put_web("big.bin", &vec![7u8; 32 << 20]);
    let id = media_id(0xa0);
    fx.put_media(
        &id,
        b"private",
        Some(json!({"accessLevel": "private", "userPublicKey": "k"})),
    );
    let owner = format!("Bearer {}", token(SECRET, json!({"publicKey": "k"})));
    let etag = support::get(fx.addr, "/media/fitnessally/a.gif")
        .await
        .header("etag")
        .expect("etag")
        .to_owned();

    let private = format!("/api/media/{id}");
    for origin in ["https://app.fitnessally.io", "https://evil.example"] {
        let o = ("Origin", origin);
        let acrm = ("Access-Control-Request-Method", "GET");
        let cases: Vec<Case> = vec![
            (
                "preflight",
                "OPTIONS",
                "/media/fitnessally/a.gif",
                vec![o, acrm],
            ),
            (
                "preflight of an unknown path",
                "OPTIONS",
                "/nope",
                vec![o, acrm],
            ),
            (
                "OPTIONS without preflight",
                "OPTIONS",
                "/media/fitnessally/a.gif",
                vec![o],
            ),
            ("200", "GET", "/media/fitnessally/a.gif", vec![o]),
            ("HEAD", "HEAD", "/media/fitnessally/a.gif", vec![o]),
            (
                "304",
                "GET",
                "/media/fitnessally/a.gif",
                vec![o, ("If-None-Match", etag.as_str())],
            ),
            (
                "206",
                "GET",
                "/media/fitnessally/a.gif",
                vec![o, ("Range", "bytes=0-1")],
            ),
            ("404", "GET", "/media/fitnessally/none.gif", vec![o]),
            ("404 unknown route", "GET", "/nope", vec![o]),
            ("405", "POST", "/healthz", vec![o, ("Content-Length", "0")]),
            (
                "private 200",
                "GET",
                &private,
                vec![o, ("Authorization", owner.as_str())],
            ),
            ("private 401", "GET", &private, vec![o]),
            (
                "400 two Authorization",
                "GET",
                &private,
                vec![o, ("Authorization", "a"), ("Authorization", "b")],
            ),
            ("readyz", "GET", "/readyz", vec![o]),
        ];
        for (name, method, path, headers) in cases {
            let r = support::request(fx.addr, method, path, &headers).await;
            assert_eq!(vary_origin(&r), 1, "{name} from {origin}: {:?}", r.headers);
            let allowed = origin == "https://app.fitnessally.io";
            assert_eq!(
                r.header("access-control-allow-origin").is_some(),
                allowed,
                "{name} from {origin}"
            );
        }
    }

    // 503: the one slot held by a body nobody reads, no queue.
    let _holder = support::send_get(fx.addr, "/media/fitnessally/big.bin").await;
    let media = &fx.app().state().gates.media;
    support::wait_until("the slot is held", Duration::from_secs(10), || {
        media.in_flight() == 1
    })
    .await;
    let r = support::request(
        fx.addr,
        "GET",
        "/media/fitnessally/a.gif",
        &[("Origin", "https://app.fitnessally.io")],
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(vary_origin(&r), 1, "{:?}", r.headers);
    // 400 from the head checks.
    let (r, _) = exchange(
        fx.addr,
        "GET /healthz HTTP/1.1\r\nOrigin: https://app.fitnessally.io\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(vary_origin(&r), 1, "{:?}", r.headers);
    drop(_holder);
    fx.stop().await;
}

#[tokio::test]
async fn cors_wildcards_reflect_only_real_origins() {
    let fx = server().await;
    fx.put_web("a.gif", b"GIF89a");
    for (origin, allowed) in [
        ("https://app.fitnessally.io", true),
        ("chrome-extension://abcdefgh", true),
        ("https://evil.example/.fitnessally.io", false),
        ("https://evil.example?.fitnessally.io", false),
        ("https://evil.example#.fitnessally.io", false),
        ("https://fitnessally.io@evil.example", false),
        ("https://user@app.fitnessally.io", false),
        ("https://app.fitnessally.io/", false),
        ("chrome-extension://abc/path", false),
        ("chrome-extension://", false),
        ("null", false),
    ] {
        for (method, extra) in [
            ("GET", None),
            ("OPTIONS", Some(("Access-Control-Request-Method", "GET"))),
        ] {
            let mut headers = vec![("Origin", origin)];
            headers.extend(extra);
            let r = support::request(fx.addr, method, "/media/fitnessally/a.gif", &headers).await;
            assert_eq!(
                r.header("access-control-allow-origin"),
                allowed.then_some(origin),
                "{method} {origin}"
            );
            assert!(r.status == 200 || r.status == 204, "never an error status");
        }
    }
    fx.stop().await;
}

/// A port on 127.0.0.1 nothing listens on.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("addr").port()
}

fn assert_reveals_nothing(body: &[u8], secrets: &[&str], what: &str) {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    for secret in secrets {
        assert!(
            !text.contains(&secret.to_ascii_lowercase()),
            "{what} reveals {secret:?}: {text}"
        );
    }
}

#[tokio::test]
async fn error_bodies_and_readyz_reveal_no_internal_address_path_or_socket_error() {
    // A relay nobody listens on: connection refused.
    let port = closed_port().await;
    let relay_url = format!("http://127.0.0.1:{port}");
    let fx = TestServer::start(|c| {
        c.gun.gun_peers = Some(relay_url.clone());
        c.gun.gun_attempts = 1;
        c.gun.gun_breaker_threshold = 100;
    })
    .await;
    let secrets = [
        relay_url.as_str(),
        &port.to_string(),
        "127.0.0.1",
        "refused",
        "os error",
        "tcp",
        "http://",
        fx.media_dir().to_str().unwrap(),
    ];
    let r = support::get(fx.addr, "/gun-relay/get?soul=ab:1").await;
    assert_eq!(r.status, 502);
    assert_reveals_nothing(&r.body, &secrets, "relay unreachable");
    let put = "{\"soul\":\"ab:1\",\"data\":{\"x\":1}}";
    let (r, _) = exchange(
        fx.addr,
        &format!(
            "POST /gun-relay/put HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{put}",
            put.len()
        ),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(r.status, 502);
    assert_reveals_nothing(&r.body, &secrets, "put to an unreachable relay");

    let r = support::get(fx.addr, "/readyz").await;
    assert_eq!(
        r.json()["gun"],
        json!({"configured": true, "breaker": "closed"})
    );
    assert_reveals_nothing(&r.body, &secrets, "/readyz");

    // A root that cannot be read: /readyz names its role, not its path.
    std::fs::remove_dir_all(fx.media_dir().join("web")).unwrap();
    let r = support::get(fx.addr, "/readyz").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["mediaRoots"]["web"], json!(false));
    assert_reveals_nothing(&r.body, &secrets, "/readyz, a root gone");
    fx.stop().await;
}

#[tokio::test]
async fn a_relay_answer_that_is_not_the_relays_is_not_quoted() {
    let relay = RelayStub::start().await;
    let fx = TestServer::start(|c| {
        c.gun.gun_peers = Some(relay.base_url());
        c.gun.gun_attempts = 1;
    })
    .await;
    let page = "<pre>SyntaxError at /srv/gun-relay/node_modules/body-parser/lib/read.js:92</pre>";
    relay.script("ab:400", [Reply::Status(400, page.into())]);
    relay.script("ab:500", [Reply::Status(500, page.into())]);
    relay.script("ab:200", [Reply::Status(200, page.into())]);
    for soul in ["ab:400", "ab:500", "ab:200"] {
        let r = support::get(fx.addr, &format!("/gun-relay/get?soul={soul}")).await;
        assert!(r.status >= 400, "{soul}");
        assert_reveals_nothing(
            &r.body,
            &["/srv", "node_modules", "syntaxerror", &relay.base_url()],
            soul,
        );
    }
    // The relay's own JSON error is its protocol, passed on.
    relay.script(
        "ab:bad",
        [Reply::Status(400, r#"{"error":"Bad soul"}"#.into())],
    );
    let r = support::get(fx.addr, "/gun-relay/get?soul=ab:bad").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json(), json!({"error": "Bad soul"}));
    fx.stop().await;
}

#[tokio::test]
async fn heads_past_hypers_bounds_are_431() {
    let fx = server().await;
    let wait = Duration::from_secs(5);
    // A head past --max-request-head (64KiB by default), a huge one, then a hundred and one
    // small lines (hyper's line limit): all refused before a route runs.
    let header = |len: usize| {
        format!(
            "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
            "a".repeat(len)
        )
    };
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{many}\r\n");
    for (name, raw) in [
        ("a 65 KiB header", header(65 * 1024)),
        ("a 500 KiB header", header(500 * 1024)),
        ("101 header lines", many),
    ] {
        let (r, closed) = exchange(fx.addr, &raw, wait).await;
        assert_eq!(r.status, 431, "{name}");
        assert!(closed, "{name}");
    }
    // Large cookies and tokens still fit.
    let fits = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(48 * 1024)
    );
    let (r, _) = exchange(fx.addr, &fits, wait).await;
    assert_eq!(r.status, 200, "a 48 KiB header");
    fx.stop().await;
}
