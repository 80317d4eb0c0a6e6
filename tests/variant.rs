//! Variants by URL (`?format=mp4|webm|webp`) on `/media/…` and `/api/media/<id>`, as a
//! client sees them: plain cacheable URLs with their own strong validators, ranges and
//! 304s; made once (single-flight), off the GIF path (no GIF-serving slot held while
//! waiting), within bounds (queue, waiting requests, wait time, job timeout); failures
//! remembered; 501 without ffmpeg; `--auto-format`; `/info`; still formats; metrics.
//!
//! Tests that run ffmpeg skip with a printed reason when it is not installed
//! (`OIP_REQUIRE_FFMPEG=1`, set by CI, makes that a failure).

mod support;
mod transcode_support;

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oip_media::transcode::VariantFormat;
use oip_media::transcode::metrics::Outcome;
use serde_json::json;
use support::TestServer as Fixture;
use support::media::{header, in_an_hour, media_id, pattern_gif, token};
use transcode_support::{
    FORKS_REAL_FFMPEG, FORKS_SLEEPERS, assert_plays, clip, fake_ffmpeg, fake_groups_alive,
    fake_pids, fake_runs, ffmpeg_or_skip, same_frames, slow_ffmpeg,
};

const SECRET: &str = "variant-test-secret";
const OWNER: &str = "owner-public-key";

async fn with_ffmpeg(configure: impl FnOnce(&mut oip_media::Config)) -> Fixture {
    Fixture::start(|c| {
        c.transcode.ffmpeg = "ffmpeg".into();
        configure(c);
    })
    .await
}

fn jobs(fx: &Fixture, format: VariantFormat, outcome: Outcome) -> u64 {
    fx.server
        .app()
        .state()
        .transcoder
        .metrics()
        .jobs(format, outcome)
}

fn opaque(etag: &str) -> String {
    etag.trim_start_matches("W/").trim_matches('"').to_owned()
}

#[tokio::test]
async fn an_mp4_variant_is_a_plain_cacheable_url_with_ranges_and_304s() {
    if !ffmpeg_or_skip("an_mp4_variant_is_a_plain_cacheable_url") {
        return;
    }
    let fx = with_ffmpeg(|_| {}).await;
    fx.put_web("Push-up-(wall)_Chest_360.gif", &pattern_gif(40, 30));
    let gif_path = "/media/fitnessally/Push-up-(wall)_Chest_360.gif";
    let gif = fx.get(gif_path).await;
    let gif_etag = header(&gif, "etag").unwrap().to_owned();
    let gif_modified = header(&gif, "last-modified").unwrap().to_owned();
    assert!(gif_etag.starts_with("W/"), "the GIF's own tag is weak");

    let url = "/media/fitnessally/Push-up-%28wall%29_Chest_360.gif?format=mp4";
    let r = fx.get(url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some("video/mp4"));
    let etag = header(&r, "etag").unwrap().to_owned();
    assert_eq!(
        etag,
        format!("\"{}-mp4-x264\"", opaque(&gif_etag)),
        "strong, derived from the GIF's, naming format and encoder"
    );
    assert_eq!(
        header(&r, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(header(&r, "last-modified"), Some(gif_modified.as_str()));
    assert_eq!(header(&r, "accept-ranges"), Some("bytes"));
    assert_eq!(header(&r, "x-content-type-options"), Some("nosniff"));
    let len: usize = header(&r, "content-length").unwrap().parse().unwrap();
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), len);
    assert_eq!(&body[4..8], b"ftyp", "an MP4 file");
    assert_eq!(jobs(&fx, VariantFormat::Mp4, Outcome::ok), 1);

    // The bytes are the derived file's, which is private to the service.
    let (files, _) = fx.derived_files();
    let variant = files.iter().find(|f| f.ends_with(".mp4")).unwrap();
    let on_disk = fx.derived_dir().join(variant);
    assert_eq!(std::fs::read(&on_disk).unwrap(), body);
    assert_eq!(std::fs::metadata(&on_disk).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(fx.derived_dir()).unwrap().mode() & 0o777,
        0o700
    );

    // Ranges, as Safari plays MP4: first bytes, then a suffix, then If-Range.
    let r = fx.get_with(url, &[("range", "bytes=0-99")]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(
        header(&r, "content-range"),
        Some(format!("bytes 0-99/{len}").as_str())
    );
    assert_eq!(r.bytes().await.unwrap(), body.slice(0..100));
    let r = fx.get_with(url, &[("range", "bytes=-10")]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), body.slice(len - 10..));
    let r = fx
        .get_with(url, &[("range", "bytes=10-19"), ("if-range", &etag)])
        .await;
    assert_eq!(r.status(), 206, "a strong tag makes If-Range work");
    let r = fx
        .get_with(url, &[("range", "bytes=10-19"), ("if-range", "\"other\"")])
        .await;
    assert_eq!(r.status(), 200, "a stale If-Range gets the whole file");
    let r = fx
        .get_with(url, &[("range", &format!("bytes={len}-"))])
        .await;
    assert_eq!(r.status(), 416);

    // Revalidation.
    let r = fx.get_with(url, &[("if-none-match", &etag)]).await;
    assert_eq!(r.status(), 304);
    assert_eq!(header(&r, "etag"), Some(etag.as_str()));
    assert_eq!(
        header(&r, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let r = fx.get_with(url, &[("if-none-match", &gif_etag)]).await;
    assert_eq!(
        r.status(),
        200,
        "the GIF's tag does not validate the variant"
    );
    let r = fx.client.head(fx.url(url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), Some(len.to_string().as_str()));
    assert_eq!(jobs(&fx, VariantFormat::Mp4, Outcome::ok), 1, "made once");
    fx.shutdown().await;
}

#[tokio::test]
async fn each_format_has_its_type_and_tag_and_the_gif_is_untouched() {
    if !ffmpeg_or_skip("each_format_has_its_type_and_tag") {
        return;
    }
    let fx = with_ffmpeg(|_| {}).await;
    let gif_bytes = pattern_gif(24, 24);
    fx.put_web("a.gif", &gif_bytes);
    let mut tags = Vec::new();
    for (format, kind) in [
        ("mp4", "video/mp4"),
        ("webm", "video/webm"),
        ("webp", "image/webp"),
    ] {
        let r = fx
            .get(&format!("/media/fitnessally/a.gif?format={format}"))
            .await;
        assert_eq!(r.status(), 200, "{format}");
        assert_eq!(header(&r, "content-type"), Some(kind));
        tags.push(header(&r, "etag").unwrap().to_owned());
        assert!(!r.bytes().await.unwrap().is_empty());
    }
    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), 3, "one tag per format");
    let r = fx.get("/media/fitnessally/a.gif").await;
    assert_eq!(header(&r, "content-type"), Some("image/gif"));
    assert_eq!(r.bytes().await.unwrap(), gif_bytes);
    fx.shutdown().await;
}

#[tokio::test]
async fn unknown_formats_and_non_gifs_are_400_with_the_allowed_list() {
    // No ffmpeg needed: the request is refused before the transcoder is asked.
    let fx = Fixture::start(|_| {}).await;
    fx.put_web("a.gif", &pattern_gif(8, 8));
    fx.put_web("a.png", b"\x89PNG\r\n");
    for query in [
        "format=gif",
        "format=MP4",
        "format=",
        "format",
        "format=mp4%00",
        "format=..%2F..%2Fetc%2Fpasswd",
        "format=%E2%80%AEmp4",
    ] {
        let r = fx.get(&format!("/media/fitnessally/a.gif?{query}")).await;
        assert_eq!(r.status(), 400, "{query}");
        assert_eq!(header(&r, "cache-control"), Some("no-store"));
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "format must be one of: mp4, webm, webp");
        assert_eq!(body["allowed"], json!(["mp4", "webm", "webp"]));
    }
    let r = fx.get("/media/fitnessally/a.png?format=mp4").await;
    assert_eq!(r.status(), 400);
    let r = fx.get("/media/fitnessally/a.gif?still=1&format=mp4").await;
    assert_eq!(r.status(), 400, "with still=1, format is the still's");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["error"],
        "format must be one of: png, webp, jpeg (with still=1)"
    );
    let r = fx.get("/media/fitnessally/missing.gif?format=mp4").await;
    assert_eq!(r.status(), 404);
    fx.shutdown().await;
}

#[tokio::test]
async fn without_ffmpeg_variants_are_501_and_everything_else_works() {
    for ffmpeg in ["", "/nonexistent/ffmpeg"] {
        let fx = Fixture::start(|c| c.transcode.ffmpeg = ffmpeg.into()).await;
        fx.put_web("a.gif", &pattern_gif(8, 8));
        let r = fx.get("/media/fitnessally/a.gif?format=mp4").await;
        assert_eq!(r.status(), 501, "{ffmpeg:?}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "Variants are not available on this server");
        assert!(
            !body.to_string().contains("nonexistent") && body.get("reason").is_none(),
            "ffmpeg's path and error stay in the log: {body}"
        );
        assert_eq!(fx.get("/media/fitnessally/a.gif").await.status(), 200);
        assert_eq!(
            fx.get("/media/fitnessally/a.gif?still=1&format=jpeg")
                .await
                .status(),
            200,
            "stills need no ffmpeg"
        );
        let ready = fx.get("/readyz").await;
        assert_eq!(ready.status(), 200, "readiness does not depend on ffmpeg");
        let ready: serde_json::Value = ready.json().await.unwrap();
        assert_eq!(ready["transcoder"]["available"], false);
        assert!(ready["transcoder"]["reason"].is_string());
        assert!(
            !ready.to_string().contains("nonexistent") && !ready.to_string().contains("os error"),
            "{ready}"
        );
        fx.shutdown().await;
    }
}

#[tokio::test]
async fn readyz_reports_the_encoders_and_an_unusable_gpu_encoder_falls_back() {
    if !ffmpeg_or_skip("readyz_reports_the_encoders") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Lists h264_nvenc but cannot encode with it (as on a host without a GPU).
    let fake = fake_ffmpeg(
        dir.path(),
        "echo 'No NVENC capable devices found' >&2; exit 1",
    );
    let fx = Fixture::start(|c| {
        c.transcode.ffmpeg = fake.to_string_lossy().into_owned();
        c.transcode.mp4_encoder = "h264_nvenc".into();
    })
    .await;
    let ready: serde_json::Value = fx.get("/readyz").await.json().await.unwrap();
    let t = &ready["transcoder"];
    assert_eq!(t["available"], true);
    assert_eq!(t["formats"]["mp4"], "libx264", "{t}");
    assert_eq!(t["formats"]["webm"], "libvpx-vp9");
    assert!(
        t["notes"][0]
            .as_str()
            .unwrap()
            .contains("test encode failed"),
        "{t}"
    );
    assert!(
        t["encodersFound"]
            .as_array()
            .unwrap()
            .contains(&json!("h264_nvenc"))
    );
    fx.shutdown().await;
}

#[tokio::test]
async fn failures_are_remembered_and_answered_422_and_the_gif_is_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_ffmpeg(dir.path(), "echo 'Invalid data found' >&2; exit 1");
    let fx = Fixture::start(|c| {
        c.transcode.ffmpeg = fake.to_string_lossy().into_owned();
        c.gif.gif_max_dimension = 64;
        c.gif.still_widths = vec![32];
    })
    .await;
    fx.put_web("a.gif", &pattern_gif(8, 8));
    for _ in 0..3 {
        let r = fx.get("/media/fitnessally/a.gif?format=mp4").await;
        assert_eq!(r.status(), 422);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "This GIF cannot be transcoded");
        assert!(
            !body.to_string().contains("Invalid data found"),
            "ffmpeg's words (with the GIF's path) stay in the log: {body}"
        );
    }
    assert_eq!(
        fake_runs(dir.path()),
        1,
        "ffmpeg ran once, the failure was remembered"
    );
    assert_eq!(jobs(&fx, VariantFormat::Mp4, Outcome::failed), 1);
    assert_eq!(fx.get("/media/fitnessally/a.gif").await.status(), 200);

    // Invalid or oversized GIFs never reach ffmpeg.
    fx.put_web("broken.gif", b"GIF89a\x08\x00\x08\x00 broken");
    fx.put_web("huge.gif", &pattern_gif(65, 8));
    for name in ["broken.gif", "huge.gif"] {
        let r = fx
            .get(&format!("/media/fitnessally/{name}?format=webm"))
            .await;
        assert_eq!(r.status(), 422, "{name}");
    }
    assert_eq!(fake_runs(dir.path()), 1);
    assert!(fx.derived_files().0.is_empty(), "no temp file left behind");
    fx.shutdown().await;
}

#[tokio::test]
async fn a_job_past_its_timeout_is_killed_and_remembered_briefly_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_ffmpeg(dir.path(), "exec sleep 30");
    let fx = Fixture::start(|c| {
        c.transcode.ffmpeg = fake.to_string_lossy().into_owned();
        c.transcode.transcode_timeout = Duration::from_millis(400);
        // Timeouts are remembered for at most this (and at most 10 s).
        c.transcode.transcode_failure_ttl = Duration::from_millis(1500);
    })
    .await;
    fx.put_web("a.gif", &pattern_gif(8, 8));
    let started = Instant::now();
    let r = fx.get("/media/fitnessally/a.gif?format=webp").await;
    assert_eq!(r.status(), 503, "not the GIF's fault for sure: retry later");
    assert_eq!(header(&r, "retry-after"), Some("10"));
    assert_eq!(header(&r, "cache-control"), Some("no-store"));
    assert!(started.elapsed() < Duration::from_secs(5));
    let body: serde_json::Value = r.json().await.unwrap();
    let reason = body["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("was stopped"), "{body}");
    // Every answer while it is remembered carries the same reason, and ffmpeg does not
    // run again.
    for _ in 0..2 {
        let r = fx.get("/media/fitnessally/a.gif?format=webp").await;
        assert_eq!(r.status(), 503);
        assert_eq!(header(&r, "retry-after"), Some("10"));
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["reason"], reason.as_str(), "{body}");
    }
    assert_eq!(fake_runs(dir.path()), 1);
    let pids = fake_pids(dir.path());
    assert_eq!(pids.len(), 1);
    assert!(
        !std::path::Path::new(&format!("/proc/{}", pids[0])).exists(),
        "ffmpeg was killed and reaped"
    );
    assert_eq!(jobs(&fx, VariantFormat::Webp, Outcome::timeout), 1);
    assert!(fx.derived_files().0.is_empty(), "its temp file was removed");
    // Only briefly: then ffmpeg is tried again.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = fx.get("/media/fitnessally/a.gif?format=webp").await;
    assert_eq!(r.status(), 503);
    assert_eq!(fake_runs(dir.path()), 2, "tried again once forgotten");
    fx.shutdown().await;
}

/// Starts a variant request for `name` in the background.
fn request(fx: &Fixture, path: &str) -> tokio::task::JoinHandle<reqwest::Response> {
    let client = fx.client.clone();
    let url = fx.url(path);
    tokio::spawn(async move { client.get(url).send().await.unwrap() })
}

/// `/readyz`'s count of running ffmpeg jobs.
async fn running(fx: &Fixture) -> u64 {
    let ready: serde_json::Value = fx.get("/readyz").await.json().await.unwrap();
    ready["transcoder"]["jobs"]["running"].as_u64().unwrap()
}

/// With `encode` as the stand-in's work (it forks and hangs), three timed-out jobs on
/// one worker: after each, no process of its group is left, and `/readyz` never says
/// `running: 0` while one is.
async fn timed_out_jobs_leave_nothing_running(encode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_ffmpeg(dir.path(), encode);
    let fx = Fixture::start(|c| {
        c.transcode.ffmpeg = fake.to_string_lossy().into_owned();
        c.transcode.transcode_workers = 1;
        c.transcode.transcode_timeout = Duration::from_millis(700);
    })
    .await;
    let state = fx.server.app().state().clone();
    // Watches, every millisecond, for a moment when the gauge says no job runs while a
    // process of a job's group is alive.
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (state, watching) = (state.clone(), Arc::clone(&watching));
        let dir = dir.path().to_owned();
        std::thread::spawn(move || {
            let mut broken = 0;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                let alive = fake_groups_alive(&dir);
                // Read the gauge after the processes: a job whose gauge drops between
                // the two reads would be counted as alive and gone, not as a break.
                if alive > 0 && state.transcoder.metrics().running().get() == 0 {
                    let alive_again = fake_groups_alive(&dir);
                    if alive_again > 0 {
                        broken += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            broken
        })
    };
    for name in ["a.gif", "b.gif", "c.gif"] {
        fx.put_web(name, &pattern_gif(8, 8));
        let pending = request(&fx, &format!("/media/fitnessally/{name}?format=mp4"));
        let r = pending.await.unwrap();
        assert_eq!(r.status(), 503, "{name}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["reason"].as_str().unwrap().contains("was stopped"),
            "{body}"
        );
        assert_eq!(
            fake_groups_alive(dir.path()),
            0,
            "{name}: no process of the job is left after its timeout"
        );
        assert_eq!(running(&fx).await, 0);
    }
    assert_eq!(fake_pids(dir.path()).len(), 3);
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        watcher.join().unwrap(),
        0,
        "running was 0 while a job's processes were alive"
    );
    assert!(fx.derived_files().0.is_empty(), "no temp file left");
    fx.shutdown().await;
}

#[tokio::test]
async fn a_timed_out_wrapper_leaves_none_of_its_forked_processes() {
    timed_out_jobs_leave_nothing_running(FORKS_SLEEPERS).await;
}

#[tokio::test]
async fn a_timed_out_wrapper_leaves_no_real_encoder_running() {
    if !ffmpeg_or_skip("a_timed_out_wrapper_leaves_no_real_encoder_running") {
        return;
    }
    timed_out_jobs_leave_nothing_running(FORKS_REAL_FFMPEG).await;
}

#[tokio::test]
async fn stopping_the_transcoder_kills_every_running_group() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_ffmpeg(dir.path(), FORKS_SLEEPERS);
    let fx = Fixture::start(|c| {
        c.transcode.ffmpeg = fake.to_string_lossy().into_owned();
        c.transcode.transcode_workers = 2;
        c.transcode.transcode_timeout = Duration::from_secs(60);
        c.transcode.transcode_wait = Duration::from_millis(200);
    })
    .await;
    let state = fx.server.app().state().clone();
    for name in ["a.gif", "b.gif"] {
        fx.put_web(name, &pattern_gif(8, 8));
        let r = fx
            .get(&format!("/media/fitnessally/{name}?format=webm"))
            .await;
        assert_eq!(r.status(), 503, "still working");
    }
    media_fixtures_wait(|| fake_groups_alive(dir.path()) == 6).await;
    assert_eq!(state.transcoder.metrics().running().get(), 2);
    let started = Instant::now();
    state.transcoder.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(fake_groups_alive(dir.path()), 0, "every group killed");
    assert_eq!(state.transcoder.metrics().running().get(), 0);
    assert!(fx.derived_files().0.is_empty(), "their temp files removed");
    // Nothing starts after a stop.
    fx.put_web("c.gif", &pattern_gif(8, 8));
    let r = fx.get("/media/fitnessally/c.gif?format=webm").await;
    assert_eq!(r.status(), 503);
    assert_eq!(fake_runs(dir.path()), 2);
    fx.shutdown().await;
}

#[tokio::test]
async fn the_hosts_faults_are_503_not_remembered_and_gone_once_fixed() {
    if !ffmpeg_or_skip("the_hosts_faults_are_503_not_remembered") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("disk-is-full");
    let killed = dir.path().join("oom-killer");
    // The real ffmpeg, writing into a full device (/dev/full: every write is ENOSPC)
    // while `full` exists, or killed as the OOM killer would while `killed` exists.
    let fake = fake_ffmpeg(
        dir.path(),
        &format!(
            r#"[ -e '{killed}' ] && kill -9 $$
[ -e '{full}' ] && exec bash -c 'exec ffmpeg "${{@:1:$#-1}}" /dev/full' bash "$@"
exec ffmpeg "$@""#,
            full = full.display(),
            killed = killed.display()
        ),
    );
    let fx = Fixture::start(|c| c.transcode.ffmpeg = fake.to_string_lossy().into_owned()).await;
    fx.put_web("a.gif", &pattern_gif(16, 16));
    std::fs::write(&full, b"").unwrap();
    let mut runs = 0;
    // ffmpeg 5.1 exits 0 for WebP and WebM on a full disk (its error output says what
    // happened), 1 for MP4: both are the disk's fault.
    for format in ["webp", "webm", "mp4"] {
        for _ in 0..2 {
            let r = fx
                .get(&format!("/media/fitnessally/a.gif?format={format}"))
                .await;
            runs += 1;
            assert_eq!(r.status(), 503, "{format}");
            assert_eq!(header(&r, "retry-after"), Some("2"));
            assert_eq!(header(&r, "cache-control"), Some("no-store"));
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(
                body["reason"], "the server's storage for variants is full",
                "{format}: {body}"
            );
            assert!(!body.to_string().contains('/'), "no path: {body}");
            assert_eq!(fake_runs(dir.path()), runs, "{format}: not remembered");
        }
    }
    assert_eq!(jobs(&fx, VariantFormat::Webp, Outcome::host_error), 2);
    assert!(fx.derived_files().0.is_empty(), "no truncated variant kept");
    std::fs::remove_file(&full).unwrap();
    std::fs::write(&killed, b"").unwrap();
    let r = fx.get("/media/fitnessally/a.gif?format=webp").await;
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "the encoder was stopped from outside");
    // Fixed: the very next request makes the variant.
    std::fs::remove_file(&killed).unwrap();
    for format in ["webp", "webm", "mp4"] {
        let r = fx
            .get(&format!("/media/fitnessally/a.gif?format={format}"))
            .await;
        assert_eq!(r.status(), 200, "{format}");
    }
    assert_eq!(fake_runs(dir.path()), runs + 4);
    fx.shutdown().await;
}

/// A tmpfs of `size` bytes mounted at `path` for as long as it lives (needs
/// CAP_SYS_ADMIN; `None` where mounting is not allowed).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: &std::path::Path, size: u64) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).unwrap();
        let mounted = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| SmallDisk(path.to_owned()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l"])
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_full_derived_folder_is_503_until_space_is_freed() {
    if !ffmpeg_or_skip("a_full_derived_folder_is_503") {
        return;
    }
    let place = tempfile::tempdir().unwrap();
    let derived = place.path().join("derived");
    let Some(_disk) = SmallDisk::mount(&derived, 256 * 1024) else {
        eprintln!("skipped a_full_derived_folder_is_503: cannot mount a tmpfs here (not root?)");
        return;
    };
    let fx = with_ffmpeg(|c| c.derived.derived_dir = derived.clone()).await;
    // Then every byte taken by something else.
    let filler = derived.join("filler");
    let error = std::fs::write(&filler, vec![1u8; 512 * 1024]).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(28), "ENOSPC: {error}");
    fx.put_web(
        "a.gif",
        &clip(160, 120, &[4; 30], false, gif::Repeat::Infinite),
    );
    for format in ["webm", "webp"] {
        let r = fx
            .get(&format!("/media/fitnessally/a.gif?format={format}"))
            .await;
        assert_eq!(
            r.status(),
            503,
            "{format}: a full disk is not the GIF's fault"
        );
        assert_eq!(header(&r, "retry-after"), Some("2"));
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["reason"], "the server's storage for variants is full");
    }
    let (names, _) = fx.derived_files();
    assert_eq!(names, ["filler"], "no truncated variant or temp file kept");
    std::fs::remove_file(&filler).unwrap();
    for format in ["webm", "webp"] {
        let r = fx
            .get(&format!("/media/fitnessally/a.gif?format={format}"))
            .await;
        assert_eq!(r.status(), 200, "{format}: made once space is freed");
        let bytes = r.bytes().await.unwrap();
        let copy = place.path().join(format!("copy.{format}"));
        std::fs::write(&copy, &bytes).unwrap();
        assert_plays(&copy, format);
    }
    assert_eq!(jobs(&fx, VariantFormat::Webm, Outcome::ok), 1);
    fx.shutdown().await;
}

#[tokio::test]
async fn one_frame_and_same_frame_gifs_make_every_format() {
    if !ffmpeg_or_skip("one_frame_and_same_frame_gifs_make_every_format") {
        return;
    }
    let fx = with_ffmpeg(|_| {}).await;
    fx.put_web(
        "one.gif",
        &clip(20, 14, &[50], false, gif::Repeat::Infinite),
    );
    fx.put_web(
        "one-zero-delay.gif",
        &clip(20, 14, &[0], true, gif::Repeat::Infinite),
    );
    fx.put_web("same.gif", &same_frames(20, 14, 6, 10));
    let out = tempfile::tempdir().unwrap();
    for name in ["one.gif", "one-zero-delay.gif", "same.gif"] {
        for (format, kind) in [
            ("webp", "image/webp"),
            ("mp4", "video/mp4"),
            ("webm", "video/webm"),
        ] {
            let r = fx
                .get(&format!("/media/fitnessally/{name}?format={format}"))
                .await;
            assert_eq!(r.status(), 200, "{name} {format}");
            assert_eq!(header(&r, "content-type"), Some(kind));
            let copy = out.path().join(format!("{name}.{format}"));
            std::fs::write(&copy, r.bytes().await.unwrap()).unwrap();
            assert_plays(&copy, format);
        }
    }
    for format in VariantFormat::ALL {
        assert_eq!(jobs(&fx, format, Outcome::failed), 0, "{format}");
        assert_eq!(jobs(&fx, format, Outcome::ok), 3, "{format}");
    }
    fx.shutdown().await;
}

#[tokio::test]
async fn waiting_for_a_transcode_holds_no_gif_slot() {
    if !ffmpeg_or_skip("waiting_for_a_transcode_holds_no_gif_slot") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slow = slow_ffmpeg(dir.path(), 1.5);
    // One GIF-serving slot and no queue: if the waiting variant request held it, the
    // plain GIF request below would be shed with 503.
    let fx = Fixture::start(|c| {
        c.transcode.ffmpeg = slow.to_string_lossy().into_owned();
        c.admission.max_in_flight = 1;
        c.admission.max_queue = 0;
    })
    .await;
    fx.put_web("a.gif", &pattern_gif(16, 16));
    let variant = {
        let client = fx.client.clone();
        let url = fx.url("/media/fitnessally/a.gif?format=mp4");
        tokio::spawn(async move { client.get(url).send().await.unwrap() })
    };
    let state = fx.server.app().state().clone();
    media_fixtures_wait(|| state.transcoder.metrics().running().get() == 1).await;
    assert_eq!(
        state.gates.media.in_flight(),
        0,
        "the waiting request holds no slot"
    );
    let started = Instant::now();
    let gif = fx.get("/media/fitnessally/a.gif").await;
    assert_eq!(
        gif.status(),
        200,
        "a GIF is served while the transcode runs"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(fx.get("/healthz").await.status(), 200);
    let variant = variant.await.unwrap();
    assert_eq!(variant.status(), 200);
    assert_eq!(header(&variant, "content-type"), Some("video/mp4"));
    assert!(!variant.bytes().await.unwrap().is_empty());
    assert_eq!(
        state.gates.media.in_flight(),
        0,
        "and the slot it took to send is back"
    );
    fx.shutdown().await;
}

/// Polls `done` every 20 ms for up to 10 s.
async fn media_fixtures_wait(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn concurrent_requests_share_one_transcode() {
    if !ffmpeg_or_skip("concurrent_requests_share_one_transcode") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slow = slow_ffmpeg(dir.path(), 0.5);
    let fx = Fixture::start(|c| c.transcode.ffmpeg = slow.to_string_lossy().into_owned()).await;
    fx.put_web("a.gif", &pattern_gif(16, 16));
    let mut waiting = Vec::new();
    for _ in 0..12 {
        let client = fx.client.clone();
        let url = fx.url("/media/fitnessally/a.gif?format=webm");
        waiting.push(tokio::spawn(async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap())
        }));
    }
    let mut bodies = Vec::new();
    for w in waiting {
        let (status, body) = w.await.unwrap();
        assert_eq!(status, 200);
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(
        fake_runs(dir.path()),
        1,
        "one ffmpeg run for twelve requests"
    );
    assert_eq!(jobs(&fx, VariantFormat::Webm, Outcome::ok), 1);
    fx.shutdown().await;
}

#[tokio::test]
async fn admission_is_bounded_in_queue_waiters_and_time() {
    if !ffmpeg_or_skip("admission_is_bounded") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slow = slow_ffmpeg(dir.path(), 1.0);
    let fx = Fixture::start(|c| {
        c.transcode.ffmpeg = slow.to_string_lossy().into_owned();
        c.transcode.transcode_workers = 1;
        c.transcode.transcode_queue = 1;
        c.transcode.transcode_max_waiting = 2;
        c.transcode.transcode_wait = Duration::from_millis(300);
    })
    .await;
    for name in ["a.gif", "b.gif", "c.gif"] {
        fx.put_web(name, &pattern_gif(16, 16));
    }
    let state = fx.server.app().state().clone();

    // A waits past the wait bound: 503 + Retry-After, while its job goes on.
    let started = Instant::now();
    let r = fx.get("/media/fitnessally/a.gif?format=mp4").await;
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() < Duration::from_millis(1200));
    assert_eq!(header(&r, "retry-after"), Some("2"));
    assert_eq!(header(&r, "cache-control"), Some("no-store"));
    assert_eq!(
        state.transcoder.metrics().running().get(),
        1,
        "A still running"
    );

    // B fills the one queue place; C finds the queue full and is refused at once.
    let b = {
        let client = fx.client.clone();
        let url = fx.url("/media/fitnessally/b.gif?format=mp4");
        tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
    };
    media_fixtures_wait(|| state.transcoder.metrics().queued().get() == 1).await;
    let started = Instant::now();
    let r = fx.get("/media/fitnessally/c.gif?format=mp4").await;
    assert_eq!(r.status(), 503);
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "refused, not queued"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "transcode queue full");
    assert_eq!(jobs(&fx, VariantFormat::Mp4, Outcome::rejected), 1);
    assert_eq!(b.await.unwrap(), 503, "B waited past the bound too");

    // Once the jobs are done, the variants are there for the next request.
    media_fixtures_wait(|| jobs(&fx, VariantFormat::Mp4, Outcome::ok) == 2).await;
    for name in ["a.gif", "b.gif"] {
        let r = fx
            .get(&format!("/media/fitnessally/{name}?format=mp4"))
            .await;
        assert_eq!(r.status(), 200, "{name}");
    }
    assert_eq!(state.transcoder.metrics().waiting().get(), 0);
    fx.shutdown().await;
}

#[tokio::test]
async fn waiting_requests_are_bounded_in_number() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_ffmpeg(dir.path(), "exec sleep 3");
    let fx = Fixture::start(|c| {
        c.transcode.ffmpeg = fake.to_string_lossy().into_owned();
        c.transcode.transcode_max_waiting = 2;
        c.transcode.transcode_timeout = Duration::from_secs(2);
    })
    .await;
    fx.put_web("a.gif", &pattern_gif(8, 8));
    let state = fx.server.app().state().clone();
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let client = fx.client.clone();
        let url = fx.url("/media/fitnessally/a.gif?format=mp4");
        waiters.push(tokio::spawn(async move {
            client.get(url).send().await.unwrap().status()
        }));
    }
    media_fixtures_wait(|| state.transcoder.metrics().waiting().get() == 2).await;
    let r = fx.get("/media/fitnessally/a.gif?format=mp4").await;
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "too many requests waiting for transcodes");
    for w in waiters {
        assert_eq!(w.await.unwrap(), 503, "then the job timed out");
    }
    fx.shutdown().await;
}

#[tokio::test]
async fn private_items_keep_their_owner_check() {
    if !ffmpeg_or_skip("private_items_keep_their_owner_check") {
        return;
    }
    let fx =
        with_ffmpeg(|c| c.auth.jwt_secret = Some(oip_media::config::Secret::new(SECRET))).await;
    let id = media_id(7);
    fx.put_media(
        &id,
        &pattern_gif(16, 16),
        Some(json!({"mediaId": id, "mimeType": "image/gif", "accessLevel": "private", "userPublicKey": OWNER})),
    );
    let url = format!("/api/media/{id}?format=mp4");
    assert_eq!(fx.get(&url).await.status(), 401);
    let other = token(SECRET, json!({"publicKey": "mallory", "exp": in_an_hour()}));
    let r = fx
        .get_with(&url, &[("authorization", &format!("Bearer {other}"))])
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        jobs(&fx, VariantFormat::Mp4, Outcome::ok),
        0,
        "nothing made for strangers"
    );
    let owner = token(SECRET, json!({"publicKey": OWNER, "exp": in_an_hour()}));
    let auth = format!("Bearer {owner}");
    let r = fx.get_with(&url, &[("authorization", &auth)]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some("video/mp4"));
    assert_eq!(header(&r, "cache-control"), Some("private, no-store"));
    assert_eq!(header(&r, "vary"), Some("Authorization"));
    assert_eq!(
        header(&r, "etag"),
        Some(format!("\"{id}-mp4-x264\"").as_str())
    );
    // Once made, still the owner's only.
    assert_eq!(fx.get(&url).await.status(), 401);
    let (files, _) = fx.derived_files();
    for file in files {
        let mode = std::fs::metadata(fx.derived_dir().join(&file))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o077, 0, "{file} is not readable by other users");
    }
    // A manifest that says "not a GIF" gets 400, whatever the bytes.
    let png_id = media_id(8);
    fx.put_media(
        &png_id,
        &pattern_gif(8, 8),
        Some(json!({"mediaId": png_id, "mimeType": "image/png", "accessLevel": "public"})),
    );
    assert_eq!(
        fx.get(&format!("/api/media/{png_id}?format=webm"))
            .await
            .status(),
        400
    );
    fx.shutdown().await;
}

#[tokio::test]
async fn info_lists_the_variants_that_exist() {
    if !ffmpeg_or_skip("info_lists_the_variants_that_exist") {
        return;
    }
    let fx = with_ffmpeg(|_| {}).await;
    let id = media_id(9);
    fx.put_media(
        &id,
        &pattern_gif(16, 16),
        Some(json!({"mediaId": id, "mimeType": "image/gif", "accessLevel": "public"})),
    );
    let info: serde_json::Value = fx
        .get(&format!("/api/media/{id}/info"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(info["variants"], json!({}));
    let mp4 = fx.get(&format!("/api/media/{id}?format=mp4")).await;
    assert_eq!(mp4.status(), 200);
    let len = mp4.bytes().await.unwrap().len();
    let info: serde_json::Value = fx
        .get(&format!("/api/media/{id}/info"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        info["variants"],
        json!({"mp4": {"bytes": len, "contentType": "video/mp4"}})
    );
    fx.shutdown().await;
}

#[tokio::test]
async fn auto_format_sends_an_existing_webp_and_never_waits() {
    if !ffmpeg_or_skip("auto_format_sends_an_existing_webp") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slow = slow_ffmpeg(dir.path(), 0.5);
    let fx = Fixture::start(|c| {
        c.transcode.ffmpeg = slow.to_string_lossy().into_owned();
        c.transcode.auto_format = true;
    })
    .await;
    let gif_bytes = pattern_gif(16, 16);
    fx.put_web("a.gif", &gif_bytes);
    let path = "/media/fitnessally/a.gif";
    let accept = [("accept", "image/avif,image/webp,image/apng,*/*;q=0.8")];

    // Missing: the GIF at once, the WebP queued.
    let started = Instant::now();
    let r = fx.get_with(path, &accept).await;
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "never waits for ffmpeg"
    );
    assert_eq!(header(&r, "content-type"), Some("image/gif"));
    assert!(r.headers().get_all("vary").iter().any(|v| v == "Accept"));
    assert_eq!(r.bytes().await.unwrap(), gif_bytes);
    let state = fx.server.app().state().clone();
    media_fixtures_wait(|| {
        state
            .transcoder
            .metrics()
            .jobs(VariantFormat::Webp, Outcome::ok)
            == 1
    })
    .await;

    // Now it exists: a WebP-capable client gets it, under the variant's own tag.
    let r = fx.get_with(path, &accept).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some("image/webp"));
    assert!(r.headers().get_all("vary").iter().any(|v| v == "Accept"));
    let etag = header(&r, "etag").unwrap().to_owned();
    assert!(etag.ends_with("-webp-webp\""), "{etag}");
    let webp = r.bytes().await.unwrap();
    assert_eq!(&webp[..4], b"RIFF");
    let r = fx
        .get_with(path, &[accept[0], ("if-none-match", &etag)])
        .await;
    assert_eq!(r.status(), 304);

    // A client that does not list WebP gets the GIF, told that it depends on Accept.
    for value in ["image/gif", "*/*", "image/webp;q=0"] {
        let r = fx.get_with(path, &[("accept", value)]).await;
        assert_eq!(header(&r, "content-type"), Some("image/gif"), "{value}");
        assert!(r.headers().get_all("vary").iter().any(|v| v == "Accept"));
    }
    fx.shutdown().await;

    // Off by default: no negotiation, no Vary: Accept.
    let fx = with_ffmpeg(|_| {}).await;
    fx.put_web("a.gif", &gif_bytes);
    let r = fx.get_with(path, &accept).await;
    assert_eq!(header(&r, "content-type"), Some("image/gif"));
    assert!(!r.headers().get_all("vary").iter().any(|v| v == "Accept"));
    fx.shutdown().await;
}

#[tokio::test]
async fn stills_come_in_webp_and_jpeg_too() {
    let fx = Fixture::start(|_| {}).await;
    let bytes = pattern_gif(40, 30);
    fx.put_web("a.gif", &bytes);
    let png = fx.get("/media/fitnessally/a.gif?still=1&w=90").await;
    let png_tag = header(&png, "etag").unwrap().to_owned();
    let png = image::load_from_memory(&png.bytes().await.unwrap())
        .unwrap()
        .to_rgba8();
    let r = fx
        .get("/media/fitnessally/a.gif?still=1&w=90&format=webp")
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some("image/webp"));
    assert_eq!(
        header(&r, "etag"),
        Some(png_tag.replace("-still-w90", "-still-w90-webp").as_str())
    );
    let webp =
        image::load_from_memory_with_format(&r.bytes().await.unwrap(), image::ImageFormat::WebP)
            .unwrap()
            .to_rgba8();
    assert_eq!(webp, png, "lossless: the same pixels as the PNG");
    let r = fx.get("/media/fitnessally/a.gif?still=1&format=jpg").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some("image/jpeg"));
    let jpeg =
        image::load_from_memory_with_format(&r.bytes().await.unwrap(), image::ImageFormat::Jpeg)
            .unwrap();
    assert_eq!((jpeg.width(), jpeg.height()), (40, 30));
    let rendered = fx
        .server
        .app()
        .state()
        .gifs
        .counters()
        .stills_rendered
        .get();
    assert_eq!(rendered, 3, "one render per format");
    fx.shutdown().await;
}

#[tokio::test]
async fn metrics_show_jobs_queue_encode_seconds_and_bytes() {
    if !ffmpeg_or_skip("metrics_show_jobs") {
        return;
    }
    let fx = with_ffmpeg(|_| {}).await;
    let gif = pattern_gif(32, 32);
    fx.put_web("a.gif", &gif);
    let r = fx.get("/media/fitnessally/a.gif?format=mp4").await;
    let mp4_len = r.bytes().await.unwrap().len();
    let text = fx.get("/metrics").await.text().await.unwrap();
    for line in [
        "oip_media_transcode_jobs_total{format=\"mp4\",outcome=\"ok\"} 1".to_owned(),
        "oip_media_transcode_queue_depth 0".to_owned(),
        "oip_media_transcode_running 0".to_owned(),
        "oip_media_transcode_waiting_requests 0".to_owned(),
        "oip_media_transcode_encode_seconds_count{format=\"mp4\"} 1".to_owned(),
        format!(
            "oip_media_transcode_source_bytes_total{{format=\"mp4\"}} {}",
            gif.len()
        ),
        format!("oip_media_transcode_variant_bytes_total{{format=\"mp4\"}} {mp4_len}"),
    ] {
        assert!(text.contains(&line), "{line} missing from\n{text}");
    }
    fx.shutdown().await;
}

#[tokio::test]
async fn a_client_that_gives_up_frees_its_place_and_the_job_still_finishes() {
    if !ffmpeg_or_skip("a_client_that_gives_up_frees_its_place") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slow = slow_ffmpeg(dir.path(), 2.5);
    let fx = Fixture::start(|c| c.transcode.ffmpeg = slow.to_string_lossy().into_owned()).await;
    fx.put_web("a.gif", &pattern_gif(16, 16));
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    for _ in 0..3 {
        let gave_up = impatient
            .get(fx.url("/media/fitnessally/a.gif?format=mp4"))
            .send()
            .await;
        assert!(gave_up.is_err(), "the client timed out");
    }
    let state = fx.server.app().state().clone();
    media_fixtures_wait(|| state.transcoder.metrics().waiting().get() == 0).await;
    assert_eq!(state.gates.media.in_flight(), 0);
    media_fixtures_wait(|| jobs(&fx, VariantFormat::Mp4, Outcome::ok) == 1).await;
    assert_eq!(fake_runs(dir.path()), 1, "one job for the three who left");
    let r = fx.get("/media/fitnessally/a.gif?format=mp4").await;
    assert_eq!(r.status(), 200, "made for the next one");
    fx.shutdown().await;
}

#[tokio::test]
async fn the_service_shutting_down_kills_its_jobs_groups() {
    let media = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(media.path().join("web/fitnessally")).unwrap();
    std::fs::write(
        media.path().join("web/fitnessally/a.gif"),
        pattern_gif(8, 8),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_ffmpeg(dir.path(), FORKS_SLEEPERS);
    let fake = fake.to_string_lossy().into_owned();
    let mut server = support::ChildServer::start_with(
        media.path(),
        &[
            ("FFMPEG", fake.as_str()),
            ("TRANSCODE_TIMEOUT", "60s"),
            ("TRANSCODE_WAIT", "200ms"),
        ],
    );
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!(
            "http://{}/media/fitnessally/a.gif?format=mp4",
            server.addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "still transcoding");
    media_fixtures_wait(|| fake_groups_alive(dir.path()) == 3).await;
    let pid = rustix::process::Pid::from_raw(server.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the service did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    assert_eq!(
        fake_groups_alive(dir.path()),
        0,
        "no process of the job outlives the service"
    );
    let derived = media.path().join(".oip-media-derived");
    let left: Vec<String> = std::fs::read_dir(&derived)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // The folder's naming key (where there is one) is not a leftover.
        .filter(|name| name != ".oip-media-key")
        .collect();
    assert!(left.is_empty(), "no temp file left: {left:?}");
}

#[tokio::test]
async fn a_hanging_ffmpeg_probe_at_start_up_leaves_nothing_behind() {
    // `-version` forks two processes and hangs: start-up gives up after its 10 s bound,
    // kills the probe's whole group, and serves without variants.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("ffmpeg");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho $$ >> '{}'\nsleep 1000 & sleep 1000\n",
            dir.path().join("pids.log").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let started = Instant::now();
    let fx = Fixture::start(|c| c.transcode.ffmpeg = fake.to_string_lossy().into_owned()).await;
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(fake_pids(dir.path()).len(), 1, "one probe ran");
    assert_eq!(
        fake_groups_alive(dir.path()),
        0,
        "neither the probe nor what it forked is left"
    );
    fx.put_web("a.gif", &pattern_gif(8, 8));
    assert_eq!(
        fx.get("/media/fitnessally/a.gif?format=mp4").await.status(),
        501
    );
    let ready: serde_json::Value = fx.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["transcoder"]["available"], false);
    fx.shutdown().await;
}
