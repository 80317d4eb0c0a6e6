//! Private media fails closed (issue 10 §4), against a real server: a manifest that is
//! there but cannot be read, parsed or trusted serves nothing on any route that reads it;
//! tokens are checked as the indexer's `jwt.verify(token, secret)` checks them; two
//! `Authorization` lines are refused; `/info` and GET agree on what exists.

mod support;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use support::TestServer as Fixture;
use support::media::{header, media_id, pattern_gif, token};

const SECRET: &str = "private-media-secret";
const OWNER: &str = "02owner-public-key";

fn with_secret(config: &mut oip_media::Config) {
    config.auth.jwt_secret = Some(oip_media::config::Secret::new(SECRET));
    // Every request reads the manifest again: what is on disk now is what counts.
    config.store.revalidate_window = Duration::ZERO;
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Error-level log lines of this test binary (each integration test file is its own
/// process, so the global subscriber sees only these tests' servers).
fn error_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::ERROR)
            .with_ansi(false)
            .with_writer(move || LogWriter(Arc::clone(&sink)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        log
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged(log: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&log.lock().expect("log")).into_owned()
}

/// A method, a target and header lines.
type Read = (&'static str, String, Vec<(&'static str, String)>);

/// Every way a request can reach an item's bytes or its description.
fn reads_of(id: &str) -> Vec<Read> {
    let owner = bearer(&token(SECRET, json!({"publicKey": OWNER})));
    let path = format!("/api/media/{id}");
    vec![
        ("GET", path.clone(), vec![]),
        ("HEAD", path.clone(), vec![]),
        ("GET", path.clone(), vec![("Authorization", owner.clone())]),
        ("GET", path.clone(), vec![("Range", "bytes=0-9".into())]),
        (
            "GET",
            path.clone(),
            vec![("If-None-Match", format!("\"{id}\""))],
        ),
        ("GET", format!("{path}?still=1"), vec![]),
        ("GET", format!("{path}?still=1&w=90"), vec![]),
        ("GET", format!("{path}?still=1&format=webp"), vec![]),
        ("GET", format!("{path}?format=mp4"), vec![]),
        ("GET", format!("{path}?format=webp"), vec![]),
        (
            "GET",
            path.clone(),
            vec![("Accept", "image/webp,*/*".into())],
        ),
        ("GET", format!("{path}/info"), vec![]),
        (
            "GET",
            format!("{path}/info"),
            vec![("Authorization", owner)],
        ),
    ]
}

async fn send(
    fx: &Fixture,
    method: &str,
    path: &str,
    headers: &[(&'static str, String)],
) -> support::RawResponse {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    support::request(fx.addr, method, path, &headers).await
}

#[tokio::test]
async fn a_manifest_that_cannot_be_trusted_serves_nothing_on_any_route() {
    let log = error_log();
    let fx = Fixture::start(with_secret).await;
    let gif = pattern_gif(16, 16);
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        outside.path().join("manifest.json"),
        br#"{"accessLevel":"public"}"#,
    )
    .expect("write");
    let outside_manifest = outside.path().join("manifest.json");

    // Each case puts something at <id>/manifest.json that is there but unusable.
    type Make = Box<dyn Fn(&std::path::Path)>;
    let cases: Vec<(&str, Make)> = vec![
        (
            "invalid JSON",
            Box::new(|p| std::fs::write(p, b"{ \"accessLevel\": \"public\"").unwrap()),
        ),
        (
            "JSON, not an object",
            Box::new(|p| std::fs::write(p, br#"["public"]"#).unwrap()),
        ),
        (
            "over the size limit",
            Box::new(|p| {
                let mut big = br#"{"accessLevel":"public","pad":""#.to_vec();
                big.extend(std::iter::repeat_n(b'x', 70 * 1024));
                big.extend_from_slice(br#""}"#);
                std::fs::write(p, big).unwrap();
            }),
        ),
        ("a directory", Box::new(|p| std::fs::create_dir(p).unwrap())),
        (
            "a FIFO",
            Box::new(|p| {
                let made = std::process::Command::new("mkfifo").arg(p).status();
                assert!(made.expect("mkfifo (coreutils)").success());
            }),
        ),
        (
            "a dangling link",
            Box::new(|p| std::os::unix::fs::symlink(p.with_extension("gone"), p).unwrap()),
        ),
        (
            "a link out of the media root",
            Box::new(move |p| std::os::unix::fs::symlink(&outside_manifest, p).unwrap()),
        ),
        (
            "a link to itself",
            Box::new(|p| std::os::unix::fs::symlink(p, p).unwrap()),
        ),
    ];
    for (n, (name, make)) in cases.iter().enumerate() {
        let id = media_id(0x60 + n as u8);
        fx.put_media(&id, &gif, None);
        make(&fx.media_dir().join(&id).join("manifest.json"));
        for (method, path, headers) in reads_of(&id) {
            let r = send(&fx, method, &path, &headers).await;
            let what = format!("{name}: {method} {path} {headers:?}");
            assert_eq!(r.status, 500, "{what}");
            assert_eq!(r.header("cache-control"), Some("no-store"), "{what}");
            assert!(r.header("etag").is_none(), "{what}");
            assert!(r.header("content-range").is_none(), "{what}");
            if method == "GET" {
                assert_eq!(
                    r.json(),
                    json!({"error": "Media temporarily unavailable"}),
                    "{what}"
                );
            }
        }
        let text = logged(&log);
        assert!(
            text.lines()
                .any(|l| l.contains("ERROR") && l.contains(&id) && l.contains("manifest")),
            "{name}: logged at error level with the id: {text}"
        );
    }
    fx.shutdown().await;
}

#[tokio::test]
async fn an_unreadable_manifest_serves_nothing() {
    // Root reads any file whatever its mode; the case is then covered by the links above.
    if unsafe_is_root() {
        println!("skipped: running as root, a mode-000 file is readable");
        return;
    }
    let fx = Fixture::start(with_secret).await;
    let id = media_id(0x70);
    fx.put_media(&id, b"bytes", Some(json!({"accessLevel": "public"})));
    let manifest = fx.media_dir().join(&id).join("manifest.json");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&manifest, std::fs::Permissions::from_mode(0o000)).unwrap();
    for (method, path, headers) in reads_of(&id) {
        let r = send(&fx, method, &path, &headers).await;
        assert_eq!(r.status, 500, "{method} {path}");
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    fx.shutdown().await;
}

fn unsafe_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn a_filesystem_that_does_not_answer_is_a_503_never_the_bytes() {
    let fx = Fixture::start(|c| {
        with_secret(c);
        c.fs.fs_timeout = Duration::from_millis(200);
    })
    .await;
    let id = media_id(0x71);
    fx.put_media(
        &id,
        &pattern_gif(8, 8),
        Some(json!({"accessLevel": "private"})),
    );
    let fs = &fx.app().state().fs;
    fs.inject_stall(Some(Duration::from_secs(2)));
    for (method, path, headers) in reads_of(&id) {
        let r = send(&fx, method, &path, &headers).await;
        assert_eq!(r.status, 503, "{method} {path}");
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    fs.inject_stall(None);
    fx.shutdown().await;
}

#[tokio::test]
async fn info_and_get_agree_on_what_exists() {
    let fx = Fixture::start(with_secret).await;
    let exists = |r: &support::RawResponse| r.status == 200;

    // An original without a manifest: GET serves it (public octet-stream, as the indexer
    // did), so /info describes it.
    let bare = media_id(0x80);
    let gif = pattern_gif(12, 10);
    fx.put_media(&bare, &gif, None);
    let get = support::get(fx.addr, &format!("/api/media/{bare}")).await;
    let info = support::get(fx.addr, &format!("/api/media/{bare}/info")).await;
    assert!(exists(&get) && exists(&info), "{get:?} {info:?}");
    assert_eq!(get.header("content-type"), Some("application/octet-stream"));
    let info = info.json();
    assert_eq!(info["mediaId"], json!(bare));
    assert_eq!(info["fileSize"], json!(gif.len()));
    assert_eq!(info["gif"]["width"], json!(12));
    assert!(
        info.get("accessLevel").is_none(),
        "nothing invented: {info}"
    );

    let plain = media_id(0x81);
    fx.put_media(&plain, b"not a gif", None);
    let info = support::get(fx.addr, &format!("/api/media/{plain}/info")).await;
    assert_eq!(info.json(), json!({"mediaId": plain, "fileSize": 9}));

    // A manifest without an original: neither finds it.
    let orphan = media_id(0x82);
    std::fs::create_dir_all(fx.media_dir().join(&orphan)).unwrap();
    support::media::write_atomically(
        &fx.media_dir().join(&orphan).join("manifest.json"),
        br#"{"accessLevel":"public","mimeType":"image/gif"}"#,
    );
    for path in [
        format!("/api/media/{orphan}"),
        format!("/api/media/{orphan}/info"),
    ] {
        let r = support::get(fx.addr, &path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json(), json!({"error": "Media not found"}));
    }

    // Nothing at all: both 404.
    let none = media_id(0x83);
    for path in [
        format!("/api/media/{none}"),
        format!("/api/media/{none}/info"),
    ] {
        assert_eq!(support::get(fx.addr, &path).await.status, 404, "{path}");
    }
    fx.shutdown().await;
}

#[tokio::test]
async fn tokens_are_checked_as_the_indexers_jwt_verify_checks_them() {
    let fx = Fixture::start(with_secret).await;
    let id = media_id(0x90);
    fx.put_media(
        &id,
        &pattern_gif(8, 8),
        Some(json!({"accessLevel": "private", "userPublicKey": OWNER, "mimeType": "image/gif"})),
    );
    let sign = |alg: jsonwebtoken::Algorithm, claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(alg),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    use jsonwebtoken::Algorithm::{HS256, HS384, HS512};
    let t = now();
    let cases: Vec<(&str, String, u16)> = vec![
        ("HS256", sign(HS256, json!({"publicKey": OWNER})), 200),
        ("HS384", sign(HS384, json!({"publicKey": OWNER})), 200),
        ("HS512", sign(HS512, json!({"publicKey": OWNER})), 200),
        (
            "exp in a minute",
            sign(HS256, json!({"publicKey": OWNER, "exp": t + 60})),
            200,
        ),
        (
            "exp this second",
            sign(HS256, json!({"publicKey": OWNER, "exp": t})),
            401,
        ),
        (
            "exp a second ago",
            sign(HS256, json!({"publicKey": OWNER, "exp": t - 1})),
            401,
        ),
        (
            "exp a string",
            sign(
                HS256,
                json!({"publicKey": OWNER, "exp": (t + 60).to_string()}),
            ),
            401,
        ),
        (
            "nbf in a minute",
            sign(HS256, json!({"publicKey": OWNER, "nbf": t + 60})),
            401,
        ),
        (
            "nbf a second ago",
            sign(HS256, json!({"publicKey": OWNER, "nbf": t - 1})),
            200,
        ),
        (
            "nbf null",
            sign(HS256, json!({"publicKey": OWNER, "nbf": null})),
            401,
        ),
        ("publicKey: 7", sign(HS256, json!({"publicKey": 7})), 403),
        (
            "publicKey: [owner]",
            sign(HS256, json!({"publicKey": [OWNER]})),
            403,
        ),
        (
            "publisherPubKey",
            sign(HS256, json!({"publisherPubKey": OWNER})),
            200,
        ),
        (
            "another owner",
            sign(HS256, json!({"publicKey": "someone-else"})),
            403,
        ),
        (
            "signed with another secret",
            token("other-secret", json!({"publicKey": OWNER})),
            401,
        ),
    ];
    for (name, jwt, status) in cases {
        for path in [format!("/api/media/{id}"), format!("/api/media/{id}/info")] {
            let r = fx
                .get_with(&path, &[("authorization", &bearer(&jwt))])
                .await;
            assert_eq!(r.status(), status, "{name} on {path}");
            if status != 200 {
                assert_eq!(header(&r, "cache-control"), Some("no-store"), "{name}");
            }
        }
    }
    fx.shutdown().await;
}

#[tokio::test]
async fn two_authorization_headers_are_a_400() {
    let fx = Fixture::start(with_secret).await;
    let id = media_id(0x91);
    fx.put_media(
        &id,
        b"private bytes",
        Some(json!({"accessLevel": "private", "userPublicKey": OWNER})),
    );
    let public = media_id(0x92);
    fx.put_media(
        &public,
        b"public bytes",
        Some(json!({"accessLevel": "public"})),
    );
    let owner = bearer(&token(SECRET, json!({"publicKey": OWNER})));
    let other = bearer(&token(SECRET, json!({"publicKey": "someone-else"})));
    for (a, b) in [(&owner, &other), (&other, &owner), (&owner, &owner)] {
        for path in [
            format!("/api/media/{id}"),
            format!("/api/media/{id}/info"),
            format!("/api/media/{id}?still=1"),
            format!("/api/media/{public}"),
        ] {
            let r = support::request(
                fx.addr,
                "GET",
                &path,
                &[("Authorization", a), ("Authorization", b)],
            )
            .await;
            assert_eq!(r.status, 400, "{path}");
            assert!(!r.body.windows(5).any(|w| w == b"bytes"), "{path}");
            assert!(r.json()["error"].is_string());
        }
    }
    // One line is still fine.
    let r = support::request(
        fx.addr,
        "GET",
        &format!("/api/media/{id}"),
        &[("Authorization", &owner)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"private bytes");
    fx.shutdown().await;
}
