//! What the release binary writes to its log, read as an operator would read it through
//! a pipe: the access line per response, plain text without colour codes.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{media_root, pattern, test_runtime_env, write_file};

/// The binary running over `media`, its stdout collected line by line.
struct Logged {
    child: Child,
    addr: String,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Logged {
    fn start(media: &Path, env: &[(&str, &str)]) -> Logged {
        let mut child = Command::new(env!("CARGO_BIN_EXE_oip-media"))
            .envs(test_runtime_env())
            .env_remove("NO_COLOR")
            .env_remove("LOG_FORMAT")
            .env_remove("ACCESS_LOG")
            .env_remove("ACCESS_LOG_SAMPLE")
            .env("MEDIA_DIR", media)
            .env("DERIVED_DIR", media.join(".derived"))
            .env("PORT", "0")
            .env("BIND", "127.0.0.1")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn oip-media");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let addr = rest.split(['"', ' ', '\\']).next().unwrap_or_default();
                    let _ = tx.send(addr.to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let errors = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                errors.lock().unwrap().push(format!("stderr: {line}"));
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("did not start: {:?}", lines.lock().unwrap()));
        Logged {
            child,
            addr,
            lines,
            reader: Some(reader),
        }
    }

    /// One request on its own connection; the raw response.
    fn request(&self, head: &str) -> Vec<u8> {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        write!(stream, "{head}Host: t\r\nConnection: close\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        raw
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Stops the server (SIGTERM) and returns everything it wrote.
    fn stop(mut self) -> Vec<String> {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        std::thread::sleep(Duration::from_millis(50));
        self.lines.lock().unwrap().clone()
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn access_lines(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.contains("oip_media::access"))
        .collect()
}

fn media_with_gif() -> tempfile::TempDir {
    let media = media_root();
    write_file(&media.path().join("web/p/a.gif"), &pattern(10_000, 1));
    media
}

const GIF_REQUEST: &str =
    "GET /media/p/a.gif?v=2&x=y HTTP/1.1\r\nUser-Agent: probe/1.0\r\nX-Request-Id: rid-42\r\n";

#[test]
fn one_human_access_line_per_response_with_every_field() {
    let media = media_with_gif();
    let server = Logged::start(media.path(), &[]);
    let raw = server.request(GIF_REQUEST);
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{:?}", &raw[..20]);
    server.request("HEAD /media/p/missing.gif HTTP/1.1\r\n");
    let lines = server.stop();
    let access = access_lines(&lines);
    assert_eq!(access.len(), 2, "{lines:#?}");
    let line = access[0];
    for field in [
        "method=GET",
        "path=/media/p/a.gif?v=2&x=y",
        "route=media",
        "status=200",
        "bytes=10000",
        "duration_ms=",
        "request_id=rid-42",
        "client=127.0.0.1",
        "user_agent=\"probe/1.0\"",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    let head = access[1];
    for field in ["method=HEAD", "status=404", "bytes=0", "route=media"] {
        assert!(head.contains(field), "{field} missing from {head}");
    }
    assert!(!head.contains("user_agent"), "{head}");
}

#[test]
fn json_access_lines_are_objects_with_one_field_each() {
    let media = media_with_gif();
    let server = Logged::start(media.path(), &[("LOG_FORMAT", "json")]);
    server.request(GIF_REQUEST);
    let lines = server.stop();
    let access = access_lines(&lines);
    assert_eq!(access.len(), 1, "{lines:#?}");
    let value: serde_json::Value = serde_json::from_str(access[0]).expect("one JSON object");
    assert_eq!(value["level"], "INFO");
    assert_eq!(value["method"], "GET");
    assert_eq!(value["path"], "/media/p/a.gif?v=2&x=y");
    assert_eq!(value["route"], "media");
    assert_eq!(value["status"], 200);
    assert_eq!(value["bytes"], 10_000);
    assert_eq!(value["request_id"], "rid-42");
    assert_eq!(value["client"], "127.0.0.1");
    assert_eq!(value["user_agent"], "probe/1.0");
    let ms = value["duration_ms"]
        .as_f64()
        .expect("duration_ms is a number");
    assert!((0.0..20_000.0).contains(&ms), "{ms}");
}

#[test]
fn the_access_log_can_be_turned_off_or_sampled_away() {
    let media = media_with_gif();
    for env in [
        [("ACCESS_LOG", "off"), ("ACCESS_LOG_SAMPLE", "1")],
        [("ACCESS_LOG", "on"), ("ACCESS_LOG_SAMPLE", "0")],
    ] {
        let server = Logged::start(media.path(), &env);
        for _ in 0..5 {
            server.request(GIF_REQUEST);
        }
        let lines = server.stop();
        assert_eq!(access_lines(&lines).len(), 0, "{env:?}: {lines:#?}");
        assert!(lines.iter().any(|l| l.contains("stopped")), "{lines:#?}");
    }
    // A sample rate in between logs some of them.
    let server = Logged::start(media.path(), &[("ACCESS_LOG_SAMPLE", "0.5")]);
    for _ in 0..60 {
        server.request(GIF_REQUEST);
    }
    let lines = server.stop();
    let logged = access_lines(&lines).len();
    assert!((5..=55).contains(&logged), "{logged} of 60 at 0.5");
}

#[test]
fn an_aborted_download_logs_the_bytes_it_got() {
    let media = media_root();
    write_file(&media.path().join("web/p/big.gif"), &pattern(32 << 20, 3));
    let server = Logged::start(media.path(), &[]);
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    write!(
        stream,
        "GET /media/p/big.gif HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut first = vec![0u8; 64 << 10];
    stream.read_exact(&mut first).unwrap();
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(20);
    while access_lines(&server.lines()).is_empty() {
        assert!(Instant::now() < deadline, "no access line");
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines = server.stop();
    let line = access_lines(&lines)[0].clone();
    let bytes: u64 = line
        .split("bytes=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("bytes field");
    assert!(
        bytes < 32 << 20,
        "counts what went out, not the file: {line}"
    );
}

#[test]
fn piped_output_has_no_colour_codes() {
    let media = media_with_gif();
    let server = Logged::start(media.path(), &[]);
    server.request(GIF_REQUEST);
    server.request("GET /media/p/missing.gif HTTP/1.1\r\n");
    let lines = server.stop();
    assert!(lines.len() >= 3, "{lines:#?}");
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "an escape code in {line:?}");
    }
}

/// Runs the binary to completion over `media` (as `nobody` when `as_nobody`), with a
/// short timeout; returns (exit success, stdout, stderr).
fn run_to_exit(media: &Path, as_nobody: bool, env: &[(&str, &str)]) -> (bool, String, String) {
    let bin = env!("CARGO_BIN_EXE_oip-media");
    let mut command = if as_nobody {
        let mut command = Command::new("setpriv");
        command.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            bin,
        ]);
        command
    } else {
        Command::new(bin)
    };
    let mut child = command
        .env_remove("NO_COLOR")
        .env("MEDIA_DIR", media)
        .env(
            "DERIVED_DIR",
            std::env::temp_dir().join("oip-media-logs-test-derived"),
        )
        .env("PORT", "0")
        .env("BIND", "127.0.0.1")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run oip-media");
    // A server that starts anyway is stopped after a while: that counts as a start.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut started = false;
    while command_running(&mut child) {
        if Instant::now() > deadline {
            let _ = child.kill();
            started = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success() || started,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn command_running(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

#[test]
fn a_media_dir_without_web_stops_start_up_with_one_line_and_a_layout_hint() {
    let media = tempfile::tempdir().unwrap();
    std::fs::create_dir(media.path().join("p")).unwrap();
    let (ok, stdout, stderr) = run_to_exit(media.path(), false, &[]);
    assert!(!ok, "started without web/: {stdout}");
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("MEDIA_DIR"), "{stderr}");
    assert!(errors[0].contains("must hold a web/ folder"), "{stderr}");
    assert!(!stdout.contains("listening on"), "{stdout}");
}

#[test]
fn an_unreadable_web_root_stops_start_up_instead_of_answering_404() {
    use std::os::unix::fs::PermissionsExt as _;
    let media = media_with_gif();
    // SAFETY: `geteuid` reads the process's effective user id; it cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root && Command::new("setpriv").arg("--version").output().is_err() {
        println!("skipped: running as root without setpriv to drop to an unprivileged user");
        return;
    }
    // Traversable by anyone (as an operator's volume would be), `web/` itself not.
    std::fs::set_permissions(media.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let web = media.path().join("web");
    std::fs::set_permissions(&web, std::fs::Permissions::from_mode(0o000)).unwrap();
    let (ok, stdout, stderr) = run_to_exit(media.path(), root, &[]);
    std::fs::set_permissions(&web, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(!ok, "started over an unreadable web/: {stdout}");
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("MEDIA_DIR"), "{stderr}");
    assert!(errors[0].contains("ermission denied"), "{stderr}");
}

#[test]
fn sighup_rechecks_the_roots_and_lets_a_slow_download_finish() {
    let media = media_root();
    let bytes = pattern(24 << 20, 7);
    write_file(&media.path().join("web/p/big.gif"), &bytes);
    let server = Logged::start(media.path(), &[]);
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET /media/p/big.gif HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = vec![0u8; 64 << 10];
    stream.read_exact(&mut raw).unwrap();
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server
        .lines()
        .iter()
        .any(|l| l.contains("SIGHUP: media roots re-checked"))
    {
        assert!(Instant::now() < deadline, "{:#?}", server.lines());
        std::thread::sleep(Duration::from_millis(20));
    }
    stream.read_to_end(&mut raw).unwrap();
    let body_at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(raw[body_at..] == bytes[..], "the download completed intact");
    // Still serving after the signal.
    assert!(
        server
            .request("GET /healthz HTTP/1.1\r\n")
            .starts_with(b"HTTP/1.1 200")
    );
    let lines = server.stop();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("SIGHUP: media root readable") && l.contains("root=web")),
        "{lines:#?}"
    );
}

/// Every setting that can carry a credential, with a marker value; none may reach the
/// log, in either format, whatever the log line (configuration, warnings, errors).
const SECRETS: &[(&str, &str)] = &[
    ("JWT_SECRET", "MARKER-jwt-4f1c"),
    ("ELASTICCLIENTPASSWORD", "MARKER-espw-77a0"),
    (
        "ELASTICSEARCHHOST",
        "http://elastic:MARKER-esurl-1b2c@127.0.0.1:9",
    ),
    ("GUN_PEERS", "http://gun:MARKER-gunurl-9d8e@127.0.0.1:9/gun"),
];

#[test]
fn no_credential_reaches_the_log_in_either_format() {
    let media = media_with_gif();
    for format in ["human", "json"] {
        let mut env: Vec<(&str, &str)> = SECRETS.to_vec();
        env.push(("LOG_FORMAT", format));
        let server = Logged::start(media.path(), &env);
        server.request("GET /resolve?did=x HTTP/1.1\r\n");
        server.request(GIF_REQUEST);
        let lines = server.stop();
        let text = lines.join("\n");
        assert!(text.contains("effective configuration"), "{text}");
        for (name, value) in SECRETS {
            let marker = value
                .split(|c: char| !c.is_ascii_alphanumeric() && c != '-')
                .find(|part| part.starts_with("MARKER"))
                .unwrap();
            assert!(!text.contains(marker), "{format}: {name} leaked:\n{text}");
        }
        // The hosts stay, so the operator sees where it points.
        assert!(text.contains("127.0.0.1:9"), "{text}");
    }
}

#[test]
fn the_json_configuration_is_an_object_with_units_version_and_commit() {
    let media = media_with_gif();
    let server = Logged::start(
        media.path(),
        &[("LOG_FORMAT", "json"), ("MAX_FILE_SIZE", "64MiB")],
    );
    let lines = server.stop();
    let line = lines
        .iter()
        .find(|l| l.contains("effective configuration"))
        .expect("configuration line");
    let value: serde_json::Value = serde_json::from_str(line).expect("JSON");
    assert_eq!(value["level"], "INFO");
    assert_eq!(value["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        value["commit"].as_str().is_some_and(|c| !c.is_empty()),
        "{line}"
    );
    assert_eq!(value["config"]["max-file-size"], "64MiB");
    assert_eq!(value["config"]["summary-interval"], "60s");
    assert!(value["worker_threads"].as_u64().unwrap() >= 1, "{line}");
}

#[test]
fn a_validation_error_is_the_first_and_only_error_line_in_both_formats() {
    let media = media_with_gif();
    for format in ["human", "json"] {
        let (ok, stdout, stderr) = run_to_exit(
            media.path(),
            false,
            &[
                ("LOG_FORMAT", format),
                ("MAX_IN_FLIGHT", "0"),
                // Would log a warning (advisory) if anything were logged first.
                ("STALLED_AFTER", "10s"),
            ],
        );
        assert!(!ok);
        assert_eq!(stdout, "", "{format}: nothing logged before the error");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{format}: {stderr}");
        assert!(lines[0].contains("--max-in-flight"), "{stderr}");
        if format == "json" {
            let value: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
            assert_eq!(value["level"], "ERROR");
        }
    }
}

#[test]
fn the_summary_line_counts_4xx_and_5xx_since_the_last_and_open_descriptors() {
    let media = media_with_gif();
    let server = Logged::start(media.path(), &[("SUMMARY_INTERVAL", "1s")]);
    for _ in 0..3 {
        server.request("GET /media/p/missing.gif HTTP/1.1\r\n");
    }
    server.request(GIF_REQUEST);
    let deadline = Instant::now() + Duration::from_secs(10);
    let summaries = loop {
        let summaries: Vec<String> = server
            .lines()
            .into_iter()
            .filter(|l| l.contains("traffic summary"))
            .collect();
        if summaries.iter().any(|l| l.contains("status_4xx=3")) {
            break summaries;
        }
        assert!(Instant::now() < deadline, "{summaries:#?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let line = summaries
        .iter()
        .find(|l| l.contains("status_4xx=3"))
        .unwrap();
    assert!(line.contains("status_5xx=0"), "{line}");
    assert!(line.contains("open_fds="), "{line}");
    // Fractional MiB: the ~10 KB sent show (integer MiB would say 0 on every line).
    let sent: f64 = summaries
        .iter()
        .filter_map(|l| l.split("mib_sent=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .sum();
    assert!(sent >= 0.009, "{summaries:#?}");
    assert!(line.contains("rss_anon_mib="), "{line}");
    drop(server);
}
