//! What the forwarding tests share: oip-media over a temp media root with the files a user
//! would fetch through a proxy, the checks every forwarding path must pass (bytes, ETag,
//! 304, Range, HEAD, hostile paths, private media), counters read from oip-media's own
//! `/metrics`, and a way to start a proxy process and learn its port.
//!
//! The checks take the proxy's base URL and compare what arrives through it with what
//! oip-media answers directly, so a header a proxy drops or rewrites shows as a failure.
#![allow(dead_code)] // each test file uses a different part of it

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use oip_media::Config;
use oip_media::config::Secret;
use oip_media::server::RunningServer;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// A 180 px GIF as the indexer names them.
pub const GIF: &str = "/media/fitnessally/02891301-Dumbbell-Bench-Press_Chest_180.gif";
/// A name with parentheses, requested raw and percent-encoded.
pub const PAREN_GIF: &str = "/media/fitnessally/05611301-Squat-(on-knees)_Thighs_180.gif";
pub const PAREN_GIF_ENCODED: &str =
    "/media/fitnessally/05611301-Squat-%28on-knees%29_Thighs_180.gif";
/// Generated audio (`GENERATED_MEDIA_DIR`).
pub const AUDIO: &str = "0f1e2d3c4b5a.mp3";
/// What sits beside the media root and must never come out through any path.
pub const SECRET_TEXT: &str = "outside-the-media-root: do not serve";
/// HS256 secret of the test server, and the owner of the private item.
pub const JWT_SECRET: &str = "forwarding-test-secret";
pub const OWNER: &str = "02forwarding-owner-key";

/// oip-media over a temp folder: `media/` (the root) and `secret.txt` beside it.
pub struct Site {
    pub server: RunningServer,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub gif: Vec<u8>,
    pub paren_gif: Vec<u8>,
    pub audio: Vec<u8>,
    /// The private `/api/media/<id>` item and its bytes.
    pub private_id: String,
    pub private_bytes: Vec<u8>,
}

impl Site {
    /// Starts oip-media with a JWT secret; `configure` may change the config first.
    pub async fn start(configure: impl FnOnce(&mut Config)) -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let media = dir.path().join("media");
        let gif = oip_media::sample::encode_gif(180, 7).expect("gif");
        let paren_gif = oip_media::sample::encode_gif(180, 8).expect("gif");
        let audio = pattern(48_000, 3);
        let private_id = "5a".repeat(32);
        let private_bytes = oip_media::sample::encode_gif(180, 9).expect("gif");
        write(
            &media.join("web").join(GIF.trim_start_matches("/media/")),
            &gif,
        );
        write(
            &media.join("web/fitnessally/05611301-Squat-(on-knees)_Thighs_180.gif"),
            &paren_gif,
        );
        write(&media.join("generated").join(AUDIO), &audio);
        write(&media.join(&private_id).join("original"), &private_bytes);
        let manifest = json!({"mediaId": private_id, "mimeType": "image/gif",
            "accessLevel": "private", "userPublicKey": OWNER, "originalName": "mine.gif"});
        write(
            &media.join(&private_id).join("manifest.json"),
            manifest.to_string().as_bytes(),
        );
        write(&dir.path().join("secret.txt"), SECRET_TEXT.as_bytes());

        let mut config = Config::for_media_dir(&media);
        config.auth.jwt_secret = Some(Secret::new(JWT_SECRET));
        configure(&mut config);
        let server = oip_media::start(config).await.expect("oip-media starts");
        let addr = server.local_addr();
        Site {
            server,
            addr,
            dir,
            gif,
            paren_gif,
            audio,
            private_id,
            private_bytes,
        }
    }

    /// `http://127.0.0.1:<port>` of oip-media itself.
    pub fn direct(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The media root (`MEDIA_DIR`).
    pub fn media_dir(&self) -> PathBuf {
        self.dir.path().join("media")
    }

    /// Adds a file at `web/<rel>` (served as `/media/<rel>`).
    pub fn put_web(&self, rel: &str, bytes: &[u8]) {
        write(&self.media_dir().join("web").join(rel), bytes);
    }

    /// Sum of the samples of `name` (labels ignored) in oip-media's `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics_sum(&[name]).await
    }

    /// Sum of the samples of every metric in `names` (labels ignored), all from one
    /// scrape: two scrapes could see one response move from one gauge to the other
    /// between them and count it twice.
    pub async fn metrics_sum(&self, names: &[&str]) -> f64 {
        let text = client()
            .get(format!("{}/metrics", self.direct()))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let metric = series.split('{').next()?;
                names.contains(&metric).then(|| value.parse::<f64>().ok())?
            })
            .sum()
    }

    pub async fn stop(self) {
        self.server.shutdown().await;
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
}

/// Deterministic bytes that differ at every offset class, so a misplaced range shows.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// An HTTP client that goes straight to loopback (no proxy from the environment) and
/// does not decompress or follow redirects, so what arrives is what the proxy sent.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// An HS256 owner token as the indexer issues them.
pub fn token(public_key: &str) -> String {
    let claims =
        json!({"publicKey": public_key, "exp": jsonwebtoken::get_current_timestamp() + 3600});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("token")
}

/// Status, headers and body of one request.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "not JSON ({}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends `method url` with `headers` and reads the whole answer.
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = client().request(method.parse().expect("method"), url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(Duration::from_secs(30), request.send())
        .await
        .unwrap_or_else(|_| panic!("{method} {url}: no answer within 30 s"))
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("body").to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

pub async fn get(url: &str) -> Answer {
    send("GET", url, &[]).await
}

/// Sends a request target byte for byte (no client-side normalisation of `..` or
/// `%2e%2e`) and returns the status and the raw answer.
pub async fn raw_get(base: &str, target: &str) -> (u16, Vec<u8>) {
    let host = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .expect("answer within 20 s")
        .expect("read");
    let status = std::str::from_utf8(&raw[..raw.len().min(16)])
        .ok()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, raw)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ------------------------------------------------------------------ the checks

/// Headers that must arrive through a proxy exactly as oip-media sent them.
const KEPT: [&str; 6] = [
    "etag",
    "last-modified",
    "content-type",
    "content-length",
    "cache-control",
    "accept-ranges",
];

/// `/media/…` through `base`: a GIF's bytes, status and validators; `304` by
/// `If-None-Match` and by `If-Modified-Since`; single, suffix and multipart ranges; `HEAD`
/// without a body byte leaving oip-media; names with parentheses; a miss; hostile paths.
pub async fn check_gif_routes(site: &Site, base: &str) {
    let direct = get(&format!("{}{GIF}", site.direct())).await;
    assert_eq!(direct.status, 200);
    let through = get(&format!("{base}{GIF}")).await;
    assert_eq!(through.status, 200, "GIF through {base}");
    assert!(through.body == site.gif, "the GIF's bytes through {base}");
    for name in KEPT {
        assert_eq!(
            through.header(name),
            direct.header(name),
            "{name} through {base}"
        );
    }
    let etag = direct.header("etag").expect("etag").to_owned();
    assert!(etag.starts_with("W/\""), "the indexer's weak ETag: {etag}");
    let last_modified = direct.header("last-modified").expect("lm").to_owned();

    // Revalidation, both ways a browser does it.
    for (name, value) in [
        ("If-None-Match", etag.as_str()),
        ("If-Modified-Since", last_modified.as_str()),
    ] {
        let answer = send("GET", &format!("{base}{GIF}"), &[(name, value)]).await;
        assert_eq!(answer.status, 304, "{name} through {base}");
        assert!(answer.body.is_empty(), "a 304 has no body");
        assert_eq!(
            answer.header("etag"),
            Some(etag.as_str()),
            "304 keeps the ETag"
        );
    }
    let stale = send(
        "GET",
        &format!("{base}{GIF}"),
        &[("If-None-Match", "W/\"0-0\"")],
    )
    .await;
    assert_eq!(stale.status, 200, "a stale validator gets the file");

    // Ranges: one, a suffix, and two (multipart/byteranges, passed through untouched).
    let len = site.gif.len();
    let one = send(
        "GET",
        &format!("{base}{GIF}"),
        &[("Range", "bytes=100-1099")],
    )
    .await;
    assert_eq!(one.status, 206, "Range through {base}");
    assert_eq!(
        one.header("content-range"),
        Some(format!("bytes 100-1099/{len}").as_str())
    );
    assert!(one.body == site.gif[100..1100], "the range's bytes");
    let suffix = send("GET", &format!("{base}{GIF}"), &[("Range", "bytes=-500")]).await;
    assert_eq!(suffix.status, 206);
    assert!(suffix.body == site.gif[len - 500..], "the suffix's bytes");
    let two = send(
        "GET",
        &format!("{base}{GIF}"),
        &[("Range", "bytes=0-9,1000-1009")],
    )
    .await;
    assert_eq!(two.status, 206);
    let kind = two.header("content-type").unwrap_or_default();
    assert!(
        kind.starts_with("multipart/byteranges; boundary="),
        "{kind}"
    );
    assert!(
        contains(&two.body, &site.gif[1000..1010]),
        "second part's bytes"
    );
    let unsatisfiable = send(
        "GET",
        &format!("{base}{GIF}"),
        &[("Range", &format!("bytes={len}-"))],
    )
    .await;
    assert_eq!(unsatisfiable.status, 416);
    assert_eq!(
        unsatisfiable.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );

    // HEAD: GET's headers, no body, and no body byte sent by oip-media either (a proxy that
    // turned HEAD into GET would make oip-media send the whole file).
    let sent_before = site.metric("oip_media_body_bytes_sent_total").await;
    let head = send("HEAD", &format!("{base}{GIF}"), &[]).await;
    assert_eq!(head.status, 200, "HEAD through {base}");
    assert!(head.body.is_empty());
    assert_eq!(head.header("etag"), Some(etag.as_str()));
    assert_eq!(
        head.header("content-length"),
        Some(len.to_string().as_str())
    );
    let sent_after = site.metric("oip_media_body_bytes_sent_total").await;
    // The difference also holds the first `/metrics` answer (a few KiB); a HEAD turned
    // into a GET would add the whole file.
    assert!(
        sent_after - sent_before < len as f64,
        "HEAD through {base} made oip-media send {} body bytes",
        sent_after - sent_before
    );

    // Names with parentheses, raw and encoded.
    for path in [PAREN_GIF, PAREN_GIF_ENCODED] {
        let answer = get(&format!("{base}{path}")).await;
        assert_eq!(answer.status, 200, "{path} through {base}");
        assert!(answer.body == site.paren_gif, "{path}'s bytes");
    }

    // A miss is oip-media's JSON 404.
    let missing = get(&format!("{base}/media/fitnessally/not-there.gif")).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json(), json!({"error": "Not found"}));

    check_hostile_paths(base).await;
}

/// Requests that try to leave the media root, sent raw: never the secret, never a 2xx
/// from oip-media.
pub async fn check_hostile_paths(base: &str) {
    for target in [
        "/media/fitnessally/../../secret.txt",
        "/media/fitnessally/..%2f..%2fsecret.txt",
        "/media/%2e%2e/%2e%2e/secret.txt",
        "/media/fitnessally/%2e%2e%5c%2e%2e%5csecret.txt",
        "/media/fitnessally/..\\..\\secret.txt",
        "/media//..//..//secret.txt",
        "/api/media/..%2f..%2fsecret.txt",
        "/api/generate/media?id=../../secret.txt",
        "/api/generate/media?id=%2e%2e%2f%2e%2e%2fsecret.txt",
    ] {
        let (status, raw) = raw_get(base, target).await;
        // A front proxy may normalise `..` away and hand the request to the indexer
        // (whose stand-in answers everything); oip-media itself must never answer 2xx.
        assert!(
            !(200..300).contains(&status) || contains(&raw, br#""indexer":true"#),
            "{target} through {base} answered {status}"
        );
        assert!(
            !contains(&raw, SECRET_TEXT.as_bytes()),
            "{target} through {base} leaked the file outside the media root"
        );
    }
}

/// A private `/api/media/<id>` item: the owner's `Authorization` reaches oip-media (200,
/// the bytes, `private, no-store`), no token is a 401 and another owner's a 403.
pub async fn check_private_media(site: &Site, base: &str) {
    let url = format!("{base}/api/media/{}", site.private_id);
    let owner = format!("Bearer {}", token(OWNER));
    let answer = send("GET", &url, &[("Authorization", &owner)]).await;
    assert_eq!(
        answer.status, 200,
        "private item with the owner's token through {base}"
    );
    assert!(
        answer.body == site.private_bytes,
        "the private item's bytes"
    );
    assert_eq!(answer.header("cache-control"), Some("private, no-store"));
    assert!(
        answer
            .headers
            .get_all("vary")
            .iter()
            .any(|v| v.to_str().unwrap_or("").contains("Authorization")),
        "Vary: Authorization through {base}: {:?}",
        answer.headers
    );
    let ranged = send(
        "GET",
        &url,
        &[("Authorization", &owner), ("Range", "bytes=6-9")],
    )
    .await;
    assert_eq!(ranged.status, 206);
    assert!(ranged.body == site.private_bytes[6..10]);

    let anonymous = get(&url).await;
    assert_eq!(anonymous.status, 401, "no token through {base}");
    assert_eq!(
        anonymous.json(),
        json!({"error": "Authentication required for private media"})
    );
    let stranger = format!("Bearer {}", token("02someone-else"));
    let other = send("GET", &url, &[("Authorization", &stranger)]).await;
    assert_eq!(other.status, 403, "another owner's token through {base}");
    assert_eq!(
        other.json(),
        json!({"error": "Access denied: not the owner"})
    );
}

// ------------------------------------------------------------------ proxy processes

/// Why a forwarding test cannot run here: panics when `require` (an environment
/// variable CI sets) is set, otherwise prints the reason past the test harness's
/// capture and returns `None`.
pub fn skip<T>(require: &str, what: &str, reason: &str) -> Option<T> {
    if std::env::var_os(require).is_some() {
        panic!("{require} is set but the {what} cannot run: {reason}");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {what}: {reason}");
    None
}

/// Whether `program --version`-style probing succeeds.
pub async fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// A free loopback port (bound, then released for the proxy to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Waits until something accepts connections on `port`; an error (with `log`'s text, if
/// any) when `child` exits first or nothing listens within 20 s.
pub async fn wait_listening(
    child: &mut Child,
    port: u16,
    log: Option<&Path>,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let log_text = || {
        log.and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    };
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "exited before it listened ({status}): {}",
                log_text()
            ));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "did not listen on {port} within 20 s: {}",
                log_text()
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Reads `PREFIX<port>` from a child's stdout, then keeps draining it so the child never
/// blocks on a full pipe.
pub async fn port_from_stdout(child: &mut Child, prefix: &str, what: &str) -> u16 {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let port = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(port) = line.strip_prefix(prefix) {
                return port.trim().parse::<u16>().ok();
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| panic!("{what} did not print {prefix}<port> within 20 s"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    port
}

/// Stops a proxy process the way its service manager would: SIGTERM, then up to 5 s for
/// it to exit, then SIGKILL. nginx's workers outlive a SIGKILLed master (they are
/// re-parented and keep running), so a plain kill would leak them.
pub fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        for _ in 0..250 {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.start_kill();
}
