//! The binary under a low hard open-file limit (`prlimit --nofile=4096:4096`, as
//! `--ulimit nofile=4096:4096` gives a container): start-up lowers every descriptor
//! bound in proportion, switches none off (the stalled pool stays non-zero), says so in
//! one `error` line naming the limit needed, and serves; `oip-media check` prints the
//! same plan and exits 1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_oip-media");

/// `oip-media` (args) under a hard and soft limit of 4096 descriptors, on loopback.
fn under_4096(media: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::new("prlimit");
    command
        .args(["--nofile=4096:4096", "--", BINARY])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BIND", "127.0.0.1")
        .env("PORT", "0")
        .env("MEDIA_DIR", media)
        .env("DERIVED_DIR", media.join(".derived"))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    command
}

/// The server, killed and waited for however the test ends (a failed assertion too).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn media_dir() -> tempfile::TempDir {
    let media = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(media.path().join("web")).expect("mkdir web");
    media
}

#[test]
fn start_up_under_4096_shrinks_every_bound_and_says_so_at_error_level() {
    let media = media_dir();
    let mut child = KillOnDrop(
        under_4096(media.path(), &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prlimit oip-media"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let addr = loop {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
            panic!("oip-media did not start within 30 s: {lines:#?}");
        };
        if let Some(rest) = line.split("listening on http://").nth(1) {
            // JSON: the address ends at the first character that is not one.
            break rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect::<String>();
        }
        lines.push(line);
    };
    // It serves.
    let mut stream = TcpStream::connect(&addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    drop(child);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let lowered: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        // JSON lines are flattened: an event's fields are top-level keys.
        .filter(|event| event["open_file_limit"].is_number())
        .collect();
    assert_eq!(lowered.len(), 1, "one line about the limit: {lines:#?}");
    let event = &lowered[0];
    assert_eq!(event["level"], "ERROR", "{event}");
    let fields = event;
    assert_eq!(fields["open_file_limit"], 4096, "{event}");
    assert_eq!(fields["needed"], 29_200, "the defaults' sum: {event}");
    let message = fields["message"].as_str().unwrap_or_default();
    assert!(message.contains("ulimit -n 29200"), "{message}");
    assert!(message.contains("nofile=29200:29200"), "{message}");
    // Every bound lowered, none switched off.
    for (field, configured) in [
        ("max_connections", 10_000),
        ("map_cache_entries", 16_384),
        ("max_in_flight", 512),
        ("max_stalled", 2048),
    ] {
        let fitted = fields[field].as_u64().unwrap_or(0);
        assert!(
            fitted > 0 && fitted < configured,
            "{field}: {fitted} of {configured}: {event}"
        );
    }
    let sum: u64 = [
        "max_connections",
        "map_cache_entries",
        "max_in_flight",
        "max_stalled",
    ]
    .iter()
    .map(|field| fields[*field].as_u64().unwrap_or(0))
    .sum();
    assert!(sum + 256 <= 4096, "fits the limit: {event}");
}

#[test]
fn check_prints_the_plan_under_4096_and_exits_1() {
    let media = media_dir();
    let output = under_4096(media.path(), &["check"])
        .output()
        .expect("run oip-media check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("open-file limit 4096 is below"), "{stdout}");
    assert!(stdout.contains("--max-stalled 2048 -> 271"), "{stdout}");
    assert!(stdout.contains("ulimit -n 29200"), "{stdout}");

    // The other checks pass too (they are tests/check.rs's): a generated-media folder,
    // transcoding off.
    std::fs::create_dir_all(media.path().join("generated")).expect("mkdir generated");
    let output = under_4096(media.path(), &["--max-connections", "100", "check"])
        .env("MAP_CACHE_ENTRIES", "1000")
        .env("FFMPEG", "")
        .output()
        .expect("run oip-media check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "fits: {stdout}");
    assert!(stdout.contains("holds the configured bounds"), "{stdout}");
}
