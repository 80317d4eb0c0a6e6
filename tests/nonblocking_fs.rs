//! Nothing blocks an async worker: FIFOs, sockets and devices where media is expected,
//! and a filesystem that stops answering (simulated by stalling the filesystem pool).
//!
//! The server runs on its own runtime with **2 workers**, like production's small
//! boxes, and the client side is plain blocking sockets with timeouts on the test's
//! thread: if a worker were stuck in a syscall, the client would still time out and
//! the test fail — it cannot hang with the server. Loopback only; every wait bounded.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{pattern, write_file};

/// How long any one answer may take here. Generous for a debug build on a loaded
/// 2-core machine; a blocked worker never answers at all.
const PROMPT: Duration = Duration::from_secs(5);

/// A server on a dedicated 2-worker runtime.
struct Served {
    runtime: Option<tokio::runtime::Runtime>,
    server: Option<oip_media::RunningServer>,
    addr: SocketAddr,
}

impl Served {
    fn start(media: &Path, tweak: impl FnOnce(&mut oip_media::Config)) -> Served {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let mut config = oip_media::Config::for_media_dir(media);
        config.store.generated_media_dir = Some(media.join("generated"));
        support::apply_test_runtime(&mut config);
        tweak(&mut config);
        let server = runtime
            .block_on(oip_media::start(config))
            .expect("server starts");
        let addr = server.local_addr();
        Served {
            runtime: Some(runtime),
            server: Some(server),
            addr,
        }
    }

    fn state(&self) -> &std::sync::Arc<oip_media::state::AppState> {
        self.server.as_ref().expect("running").app().state()
    }

    fn stop(mut self) {
        if let (Some(server), Some(runtime)) = (self.server.take(), &self.runtime) {
            let stopped =
                runtime.block_on(async { tokio::time::timeout(PROMPT, server.shutdown()).await });
            assert!(stopped.is_ok(), "the server stops promptly");
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        drop(self.server.take());
        // Whatever happened (a failed assertion, a worker stuck in a syscall), never
        // wait forever for the runtime's threads.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// A request sent and not yet read.
struct Pending {
    path: String,
    stream: TcpStream,
    sent: Instant,
}

/// What came back.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
    took: Duration,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

fn send(addr: SocketAddr, path: &str) -> Pending {
    let mut stream = TcpStream::connect_timeout(&addr, PROMPT).expect("connect");
    stream.set_read_timeout(Some(PROMPT)).expect("timeout");
    stream.set_write_timeout(Some(PROMPT)).expect("timeout");
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    Pending {
        path: path.to_owned(),
        stream,
        sent: Instant::now(),
    }
}

/// Reads the whole answer, or fails the test after [`PROMPT`] without one.
fn read(mut pending: Pending) -> Answer {
    let mut raw = Vec::new();
    let deadline = pending.sent + PROMPT;
    let mut buf = [0u8; 64 * 1024];
    loop {
        match pending.stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(error) => panic!(
                "{}: no answer within {PROMPT:?} ({error}); got {} bytes",
                pending.path,
                raw.len()
            ),
        }
        assert!(
            Instant::now() < deadline,
            "{}: answer too slow",
            pending.path
        );
    }
    let took = pending.sent.elapsed();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{}: no response head", pending.path));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    Answer {
        status,
        head,
        body: raw[end + 4..].to_vec(),
        took,
    }
}

fn get(addr: SocketAddr, path: &str) -> Answer {
    read(send(addr, path))
}

fn mkfifo(path: &Path) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let made = Command::new("mkfifo").arg(path).status();
    assert!(
        made.expect("mkfifo (coreutils)").success(),
        "mkfifo {path:?}"
    );
}

/// Opens every FIFO for writing without blocking when dropped, so that a reader stuck
/// in `open()` (the bug these tests guard against) is released and the test can end.
struct FifoRelease(Vec<PathBuf>);

impl Drop for FifoRelease {
    fn drop(&mut self) {
        for path in &self.0 {
            // ENXIO when nobody is reading: nothing to release.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path);
        }
    }
}

/// `mknod <path> c 1 5` (a /dev/zero twin); `false` with the reason printed when this
/// user may not make devices (containers without CAP_MKNOD).
fn mkdev(path: &Path) -> bool {
    match Command::new("mknod")
        .arg(path)
        .args(["c", "1", "5"])
        .output()
    {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            println!(
                "skipped: the device case (mknod: {})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            false
        }
        Err(error) => {
            println!("skipped: the device case (mknod: {error})");
            false
        }
    }
}

/// Waits until the pool has no job running or queued (after a stall is lifted).
fn drain(fs: &oip_media::fs_pool::FsPool) {
    let deadline = Instant::now() + PROMPT;
    while fs.busy() + fs.queued() > 0 {
        assert!(Instant::now() < deadline, "the pool drains");
        std::thread::sleep(Duration::from_millis(10));
    }
}

const ID_FIFO_ORIGINAL: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const ID_FIFO_MANIFEST: &str = "2222222222222222222222222222222222222222222222222222222222222222";

#[test]
fn fifos_sockets_and_devices_answer_at_once_and_block_nobody() {
    let media = tempfile::tempdir().expect("tempdir");
    let root = media.path();
    let web = root.join("web/fitnessally");
    write_file(&web.join("normal.gif"), &pattern(40_000, 7));
    let fifos = vec![
        web.join("fifo.gif"),
        root.join(ID_FIFO_ORIGINAL).join("original"),
        root.join(ID_FIFO_MANIFEST).join("manifest.json"),
        root.join("generated/fifo.mp3"),
    ];
    for fifo in &fifos {
        mkfifo(fifo);
    }
    let _release = FifoRelease(fifos.clone());
    write_file(
        &root.join(ID_FIFO_ORIGINAL).join("manifest.json"),
        br#"{"accessLevel":"public","mimeType":"image/gif"}"#,
    );
    write_file(&root.join(ID_FIFO_MANIFEST).join("original"), b"bytes");
    let _socket = std::os::unix::net::UnixListener::bind(web.join("sock.gif")).expect("socket");
    let device = mkdev(&web.join("dev.gif"));

    let served = Served::start(root, |_| {});
    let addr = served.addr;

    // (path, statuses allowed). A manifest that is not a regular file gets whatever
    // the manifest policy says today (served as public octet-stream; /info 404) or,
    // once untrustworthy manifests fail closed, a 500 or 503: an answer either way.
    const NOT_FOUND: &[u16] = &[404];
    let mut hostile: Vec<(String, &[u16])> = vec![
        ("/media/fitnessally/fifo.gif".into(), NOT_FOUND),
        ("/media/fitnessally/fifo.gif?still=1".into(), NOT_FOUND),
        ("/media/fitnessally/fifo.gif?still=1&w=90".into(), NOT_FOUND),
        ("/media/fitnessally/sock.gif".into(), NOT_FOUND),
        (format!("/api/media/{ID_FIFO_ORIGINAL}"), NOT_FOUND),
        (format!("/api/media/{ID_FIFO_ORIGINAL}?still=1"), NOT_FOUND),
        (format!("/api/media/{ID_FIFO_ORIGINAL}/info"), NOT_FOUND),
        (format!("/api/media/{ID_FIFO_MANIFEST}"), &[200, 500, 503]),
        (
            format!("/api/media/{ID_FIFO_MANIFEST}/info"),
            &[404, 500, 503],
        ),
        ("/api/generate/media/fifo.mp3".into(), NOT_FOUND),
        ("/api/generate/media?id=fifo.mp3".into(), NOT_FOUND),
        ("/api/media?id=fifo.mp3".into(), NOT_FOUND),
    ];
    if device {
        hostile.push(("/media/fitnessally/dev.gif".into(), NOT_FOUND));
    }

    // Three rounds, each sending every hostile request (several per worker) before
    // reading any answer, with /healthz and a normal GIF asked while they are out.
    for round in 0..3 {
        let pending: Vec<_> = hostile
            .iter()
            .flat_map(|(path, expected)| (0..3).map(move |_| (path, *expected)))
            .map(|(path, expected)| (send(addr, path), expected))
            .collect();
        let health = get(addr, "/healthz");
        assert_eq!(health.status, 200, "round {round}: /healthz");
        let gif = get(addr, "/media/fitnessally/normal.gif");
        assert_eq!(gif.status, 200, "round {round}: a normal GIF");
        assert_eq!(gif.body, pattern(40_000, 7));
        assert!(health.took < PROMPT && gif.took < PROMPT);
        for (request, allowed) in pending {
            let path = request.path.clone();
            let answer = read(request);
            assert!(
                allowed.contains(&answer.status),
                "{path}: {} not in {allowed:?}",
                answer.status
            );
        }
    }
    let ready = get(addr, "/readyz");
    assert_eq!(
        ready.status,
        200,
        "{}",
        String::from_utf8_lossy(&ready.body)
    );
    served.stop();
}

#[test]
fn a_hung_filesystem_turns_into_prompt_503s_while_health_and_cached_gifs_answer() {
    let media = tempfile::tempdir().expect("tempdir");
    let root = media.path();
    let web = root.join("web/fitnessally");
    write_file(&web.join("cached.gif"), &pattern(30_000, 1));
    for i in 0..20 {
        write_file(&web.join(format!("cold-{i}.gif")), &pattern(1_000, i));
    }
    let window = Duration::from_millis(300);
    let served = Served::start(root, |c| {
        c.fs.fs_threads = 2;
        c.fs.fs_queue = 4;
        c.fs.fs_timeout = Duration::from_millis(500);
        c.store.revalidate_window = window;
    });
    let addr = served.addr;
    let fs = served.state().fs.clone();

    assert_eq!(get(addr, "/media/fitnessally/cached.gif").status, 200);
    // From now on every filesystem call hangs (for a minute, or until released).
    fs.inject_stall(Some(Duration::from_secs(60)));
    let stalled = Instant::now();

    // Twenty cold GIFs at once: 2 calls stuck on the threads, 4 queued, the rest
    // refused at once. Each one is a 503 that says why, never a hung request.
    let pending: Vec<_> = (0..20)
        .map(|i| send(addr, &format!("/media/fitnessally/cold-{i}.gif")))
        .collect();
    // While they are out: health, and the cached GIF within its window (no syscall).
    let health = get(addr, "/healthz");
    assert_eq!(health.status, 200);
    let cached = get(addr, "/media/fitnessally/cached.gif");
    assert_eq!(
        (cached.status, cached.body.len()),
        (200, 30_000),
        "cached GIF within its window"
    );
    let (mut timed_out, mut refused) = (0, 0);
    for request in pending {
        let answer = read(request);
        assert_eq!(
            answer.status,
            503,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(answer.header("retry-after"), Some("1"));
        assert_eq!(answer.header("cache-control"), Some("no-store"));
        match answer.json()["reason"].as_str() {
            Some("filesystem call timed out") => timed_out += 1,
            Some("filesystem pool full") => refused += 1,
            other => panic!("unexpected reason {other:?}"),
        }
    }
    // At most 2 on the threads + 4 queued were admitted (and timed out); the rest were
    // refused at once.
    assert!(timed_out <= 6 && refused >= 14, "{timed_out} + {refused}");

    // Past its window the cached GIF needs a stat the pool cannot make: it is served
    // as it is, at once (the pool is full), not refused.
    std::thread::sleep(window.saturating_sub(stalled.elapsed()));
    let cached = get(addr, "/media/fitnessally/cached.gif");
    assert_eq!((cached.status, cached.body), (200, pattern(30_000, 1)));
    assert!(cached.took < Duration::from_secs(2), "{:?}", cached.took);
    assert_eq!(get(addr, "/healthz").status, 200);

    // Readiness needs the filesystem: not ready, said within --fs-timeout.
    let ready = get(addr, "/readyz");
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "not ready");
    assert!(
        matches!(
            ready.json()["filesystem"].as_str(),
            Some("filesystem pool full" | "filesystem call timed out")
        ),
        "{}",
        ready.json()
    );

    // Everything above is visible in /metrics.
    let metrics = String::from_utf8(get(addr, "/metrics").body).expect("utf8");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert_eq!(value("oip_media_fs_pool_threads"), 2.0);
    assert_eq!(value("oip_media_fs_pool_busy"), 2.0, "both threads stuck");
    assert!(value("oip_media_fs_pool_queued") <= 4.0);
    assert_eq!(value("oip_media_fs_pool_queue_limit"), 4.0);
    let refused = value("oip_media_fs_pool_jobs_total{kind=\"rejected_queue_full\"}");
    let timed_out = value("oip_media_fs_pool_jobs_total{kind=\"timed_out\"}");
    assert!(
        refused >= 14.0 && (1.0..=7.0).contains(&timed_out),
        "{refused} {timed_out}"
    );
    assert!(value("oip_media_map_cache_lookups_total{kind=\"stale\"}") >= 1.0);

    // The filesystem comes back: the pool drains and cold files are served again.
    fs.inject_stall(None);
    drain(&fs);
    let cold = get(addr, "/media/fitnessally/cold-3.gif");
    assert_eq!((cold.status, cold.body), (200, pattern(1_000, 3)));
    assert_eq!(get(addr, "/readyz").status, 200);
    served.stop();
}

#[test]
fn a_busy_filesystem_never_serves_private_media_on_a_guess() {
    let media = tempfile::tempdir().expect("tempdir");
    let root = media.path();
    std::fs::create_dir_all(root.join("web")).expect("mkdir");
    let id = "3333333333333333333333333333333333333333333333333333333333333333";
    write_file(&root.join(id).join("original"), b"secret bytes");
    write_file(
        &root.join(id).join("manifest.json"),
        br#"{"accessLevel":"private","userPublicKey":"owner"}"#,
    );
    let served = Served::start(root, |c| {
        c.fs.fs_threads = 1;
        c.fs.fs_queue = 1;
        c.fs.fs_timeout = Duration::from_millis(300);
    });
    let addr = served.addr;
    served
        .state()
        .fs
        .inject_stall(Some(Duration::from_secs(60)));
    for _ in 0..3 {
        let answer = get(addr, &format!("/api/media/{id}"));
        assert_eq!(answer.status, 503, "not served, not 'no manifest'");
        assert_eq!(answer.header("cache-control"), Some("no-store"));
        assert_ne!(answer.body, b"secret bytes");
    }
    served.state().fs.inject_stall(None);
    drain(&served.state().fs);
    assert_eq!(get(addr, &format!("/api/media/{id}")).status, 401);
    served.stop();
}

#[test]
fn a_renamed_in_file_is_served_within_one_window_and_never_mixed() {
    let media = tempfile::tempdir().expect("tempdir");
    let root = media.path();
    let path = root.join("web/fitnessally/a.gif");
    let (one, two) = (pattern(200_000, 1), pattern(150_000, 2));
    write_file(&path, &one);
    let id = "4444444444444444444444444444444444444444444444444444444444444444";
    write_file(&root.join(id).join("original"), b"bytes");
    let manifest = root.join(id).join("manifest.json");
    write_file(&manifest, br#"{"accessLevel":"public"}"#);
    // The default window (1 s), as in production.
    let served = Served::start(root, |_| {});
    let window = served.state().config.store.revalidate_window;
    assert_eq!(window, Duration::from_secs(1));
    let addr = served.addr;
    assert_eq!(get(addr, "/media/fitnessally/a.gif").body, one);
    assert_eq!(get(addr, &format!("/api/media/{id}")).status, 200);

    let replace = |target: &Path, bytes: &[u8]| {
        let temp = target.with_extension("tmp");
        std::fs::write(&temp, bytes).expect("write");
        std::fs::rename(&temp, target).expect("rename");
    };
    replace(&path, &two);
    replace(
        &manifest,
        br#"{"accessLevel":"private","userPublicKey":"k"}"#,
    );
    let renamed = Instant::now();
    // Until the window is over, each answer is one whole version (Content-Length and
    // body agree, bytes equal to one of the two files), never a mix.
    while renamed.elapsed() < window + Duration::from_millis(200) {
        let answer = get(addr, "/media/fitnessally/a.gif");
        assert_eq!(answer.status, 200);
        let length: usize = answer
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .expect("length");
        assert_eq!(length, answer.body.len());
        assert!(answer.body == one || answer.body == two, "one version");
        std::thread::sleep(Duration::from_millis(50));
    }
    // One window after the rename, the new file and the new manifest are in force.
    let answer = get(addr, "/media/fitnessally/a.gif");
    assert_eq!(answer.body, two);
    assert_eq!(get(addr, &format!("/api/media/{id}")).status, 401);
    served.stop();
}
