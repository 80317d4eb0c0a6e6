//! The derived folder is checked whenever it is used (issue 21 §3, §5), end to end on a
//! real server over loopback:
//!
//! - removed at run time (a `/tmp` cleaner): re-created, stills and variants served;
//! - re-created by another user, open to all, with files planted under the old
//!   predictable names and under every name the service used before: never served;
//! - a planted file in the service's own folder: never served, the real one made again;
//! - a folder that cannot be written: a still rendered in memory still answers `200`,
//!   and `/readyz` and `/metrics` say the folder is unusable;
//! - the service and `oip-media transcode` on one folder: the service's temp file in
//!   progress survives the CLI's clean-up, and its request answers `200`; a temp file
//!   left by a process that is gone is cleaned.
//!
//! Tests that need another user (`chown`) need root and skip with a printed reason
//! otherwise; tests that run ffmpeg skip without it (`OIP_REQUIRE_FFMPEG` makes that a
//! failure).

mod support;
mod transcode_support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use support::TestServer as Fixture;
use support::media::{header, pattern_gif};
use support::metric;
use transcode_support::{ffmpeg_or_skip, slow_ffmpeg};

const GIF: &str = "/media/fitnessally/a.gif";

/// Another user's uid, for `chown`.
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    rustix::process::geteuid().as_raw() == 0
}

async fn get(fx: &Fixture, path: &str) -> (u16, Vec<u8>) {
    let r = fx.get(path).await;
    let status = r.status().as_u16();
    (status, r.bytes().await.unwrap().to_vec())
}

async fn readyz_derived(fx: &Fixture) -> serde_json::Value {
    let r = fx.get("/readyz").await;
    assert_eq!(r.status(), 200, "the derived folder never fails readiness");
    let body: serde_json::Value = r.json().await.unwrap();
    body["derived"].clone()
}

async fn metrics(fx: &Fixture) -> String {
    String::from_utf8(get(fx, "/metrics").await.1).unwrap()
}

fn is_png(bytes: &[u8]) -> bool {
    image::load_from_memory_with_format(bytes, image::ImageFormat::Png).is_ok()
}

/// The names the first version of the folder used: spelled out from the GIF's `stat`.
fn predictable_names(gif: &Path) -> Vec<String> {
    let m = std::fs::metadata(gif).unwrap();
    let mtime_ns = m.mtime() as u128 * 1_000_000_000 + m.mtime_nsec() as u128;
    let id = format!("{:x}-{:x}-{:x}-{:x}", m.dev(), m.ino(), m.len(), mtime_ns);
    let mut names = vec![
        format!("still-{id}-full.png"),
        format!("still-{id}-w90.png"),
    ];
    for (tag, ext) in [("x264", "mp4"), ("vp9", "webm"), ("webp", "webp")] {
        names.push(format!("variant-{id}-{tag}.{ext}"));
    }
    names
}

#[tokio::test]
async fn a_derived_folder_removed_at_run_time_is_re_created_and_used() {
    let ffmpeg = ffmpeg_or_skip("a_derived_folder_removed_at_run_time (variants)");
    let fx = Fixture::start(|c| {
        if ffmpeg {
            c.transcode.ffmpeg = "ffmpeg".into();
        }
    })
    .await;
    fx.put_web("a.gif", &pattern_gif(24, 16));
    let (status, still) = get(&fx, &format!("{GIF}?still=1")).await;
    assert_eq!(status, 200);
    let derived = fx.derived_dir();

    // A cleaner removes the folder: the next uses re-create it and are served.
    std::fs::remove_dir_all(&derived).unwrap();
    let (status, body) = get(&fx, &format!("{GIF}?still=1&w=90")).await;
    assert_eq!(status, 200, "a new still with the folder gone");
    assert!(is_png(&body));
    assert!(derived.is_dir(), "re-created");
    assert_eq!(std::fs::metadata(&derived).unwrap().mode() & 0o777, 0o700);
    let (status, body) = get(&fx, &format!("{GIF}?still=1")).await;
    assert_eq!(
        (status, body == still),
        (200, true),
        "the first still again"
    );
    if ffmpeg {
        std::fs::remove_dir_all(&derived).unwrap();
        let r = fx.get(&format!("{GIF}?format=mp4")).await;
        assert_eq!(r.status(), 200, "a variant with the folder gone");
        assert_eq!(&r.bytes().await.unwrap()[4..8], b"ftyp");
    }
    assert_eq!(
        readyz_derived(&fx).await,
        serde_json::json!({ "usable": true })
    );
    let text = metrics(&fx).await;
    assert_eq!(metric(&text, "oip_media_derived_usable"), Some(1.0));
    fx.stop().await;
}

#[tokio::test]
async fn a_folder_re_created_by_another_user_never_serves_planted_bytes() {
    if !is_root() {
        println!("skipped: needs root to chown a folder to another user");
        return;
    }
    let ffmpeg = ffmpeg_or_skip("a_folder_re_created_by_another_user (variants)");
    let fx = Fixture::start(|c| {
        if ffmpeg {
            c.transcode.ffmpeg = "ffmpeg".into();
        }
        // Revalidate cached mappings at once, so the swap is seen on the next request.
        c.store.revalidate_window = Duration::ZERO;
    })
    .await;
    let gif = fx.put_web("a.gif", &pattern_gif(24, 16));
    let (status, still) = get(&fx, &format!("{GIF}?still=1")).await;
    assert_eq!(status, 200);
    let mut mp4 = None;
    if ffmpeg {
        let (status, body) = get(&fx, &format!("{GIF}?format=mp4")).await;
        assert_eq!(status, 200);
        mp4 = Some(body);
    }
    // Every name the service used: what someone who watched the old folder would plant.
    let (used, _) = fx.derived_files();
    assert!(!used.is_empty());

    // The folder goes; another user makes it again, open to all, and plants files.
    let derived = fx.derived_dir();
    std::fs::remove_dir_all(&derived).unwrap();
    std::fs::create_dir(&derived).unwrap();
    std::os::unix::fs::chown(&derived, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&derived, std::fs::Permissions::from_mode(0o777)).unwrap();
    let planted = b"\x89PNG planted bytes, not the service's".to_vec();
    for name in used.iter().chain(predictable_names(&gif).iter()) {
        let path = derived.join(name);
        std::fs::write(&path, &planted).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
    }

    for _ in 0..2 {
        let (status, body) = get(&fx, &format!("{GIF}?still=1")).await;
        assert_eq!(status, 200, "a still from memory");
        assert!(
            body != planted && body == still,
            "the real still, never the planted bytes"
        );
    }
    if mp4.is_some() {
        // The variant cannot be made or served from a folder that is not ours: the host's
        // fault, answered 503 + Retry-After (not a 500, and not remembered as the GIF's).
        let r = fx.get(&format!("{GIF}?format=mp4")).await;
        assert_eq!(r.status().as_u16(), 503);
        assert!(r.headers().contains_key("retry-after"));
        let body = r.bytes().await.unwrap();
        assert!(
            body.as_ref() != planted.as_slice(),
            "never the planted bytes"
        );
    }
    let state = readyz_derived(&fx).await;
    assert_eq!(state["usable"], false, "{state}");
    let problem = state["problem"].as_str().unwrap();
    assert!(problem.contains("uid 65534"), "{problem}");
    assert!(
        !problem.contains(&derived.display().to_string()),
        "no path: {problem}"
    );
    let text = metrics(&fx).await;
    assert_eq!(metric(&text, "oip_media_derived_usable"), Some(0.0));
    assert!(
        metric(&text, "oip_media_derived_refusals_total{kind=\"folder\"}").unwrap() >= 1.0,
        "{text}"
    );
    // The planted files are where they were: nothing was written into that folder.
    for name in &used {
        assert_eq!(std::fs::read(derived.join(name)).unwrap(), planted);
    }
    fx.stop().await;
}

#[tokio::test]
async fn a_file_planted_in_the_services_own_folder_is_never_served() {
    if !is_root() {
        println!("skipped: needs root to plant a file owned by another user");
        return;
    }
    let fx = Fixture::start(|c| c.store.revalidate_window = Duration::ZERO).await;
    fx.put_web("a.gif", &pattern_gif(24, 16));
    let (status, still) = get(&fx, &format!("{GIF}?still=1")).await;
    assert_eq!(status, 200);
    let (names, _) = fx.derived_files();
    let name = names.iter().find(|n| n.ends_with("-full.png")).unwrap();
    // Replaced under its exact name by a file of another user (as a folder that was open
    // for a while could have had), then by one of ours that is world-readable.
    let planted = b"planted".to_vec();
    let path = fx.derived_dir().join(name);
    for (owner, mode) in [(NOBODY, 0o600), (0, 0o644)] {
        let temp = fx.derived_dir().join("plant");
        std::fs::write(&temp, &planted).unwrap();
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&temp, Some(owner), Some(owner)).unwrap();
        std::fs::rename(&temp, &path).unwrap();
        let (status, body) = get(&fx, &format!("{GIF}?still=1")).await;
        assert_eq!(status, 200);
        assert!(
            body == still,
            "the real still again (owner {owner}, mode {mode:o})"
        );
        // Made again, in place of the planted file.
        assert_eq!(std::fs::read(&path).unwrap(), still);
    }
    let text = metrics(&fx).await;
    assert!(metric(&text, "oip_media_derived_refusals_total{kind=\"file\"}").unwrap() >= 2.0);
    assert_eq!(metric(&text, "oip_media_derived_usable"), Some(1.0));
    fx.stop().await;
}

#[tokio::test]
async fn a_folder_that_cannot_be_written_still_answers_stills_from_memory() {
    let ffmpeg = ffmpeg_or_skip("a_folder_that_cannot_be_written (variants)");
    let fx = Fixture::start(|c| {
        if ffmpeg {
            c.transcode.ffmpeg = "ffmpeg".into();
        }
    })
    .await;
    fx.put_web("a.gif", &pattern_gif(24, 16));
    let derived = fx.derived_dir();
    // Where the folder was, a file: it can be neither used nor re-created.
    std::fs::remove_dir_all(&derived).unwrap();
    std::fs::write(&derived, b"not a folder").unwrap();
    let (status, body) = get(&fx, &format!("{GIF}?still=1&w=90")).await;
    assert_eq!(status, 200, "the still in hand is the answer");
    assert!(is_png(&body));
    let state = readyz_derived(&fx).await;
    assert_eq!(state["usable"], false, "{state}");
    let text = metrics(&fx).await;
    assert_eq!(metric(&text, "oip_media_derived_usable"), Some(0.0));
    assert!(metric(&text, "oip_media_derived_refusals_total{kind=\"folder\"}").unwrap() >= 1.0);
    if ffmpeg {
        // A variant has no bytes in hand: the host's fault, 503 + Retry-After, not a 500
        // and not remembered once the folder is back (below).
        let r = fx.get(&format!("{GIF}?format=mp4")).await;
        assert_eq!(r.status().as_u16(), 503);
        assert!(r.headers().contains_key("retry-after"));
    }

    // Once the path is free again, the folder comes back.
    std::fs::remove_file(&derived).unwrap();
    let (status, _) = get(&fx, &format!("{GIF}?still=1&w=90")).await;
    assert_eq!(status, 200);
    if ffmpeg {
        let (status, _) = get(&fx, &format!("{GIF}?format=mp4")).await;
        assert_eq!(
            status, 200,
            "the variant is made once the folder is usable again"
        );
    }
    assert!(derived.is_dir());
    assert_eq!(readyz_derived(&fx).await["usable"], true);

    // Not writable (only a user other than root is stopped by a mode).
    if !is_root() {
        std::fs::set_permissions(&derived, std::fs::Permissions::from_mode(0o500)).unwrap();
        let (status, body) = get(&fx, &format!("{GIF}?still=1")).await;
        assert_eq!(status, 200);
        assert!(is_png(&body));
        let state = readyz_derived(&fx).await;
        assert_eq!(state["usable"], false, "{state}");
        let text = metrics(&fx).await;
        assert!(metric(&text, "oip_media_derived_refusals_total{kind=\"write\"}").unwrap() >= 1.0);
        std::fs::set_permissions(&derived, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    fx.stop().await;
}

#[tokio::test]
async fn the_cli_and_the_service_share_one_folder_safely() {
    if !ffmpeg_or_skip("the_cli_and_the_service_share_one_folder_safely") {
        return;
    }
    let tools = tempfile::tempdir().unwrap();
    let slow = slow_ffmpeg(tools.path(), 3.0);
    let fx = Fixture::start(|c| c.transcode.ffmpeg = slow.to_string_lossy().into_owned()).await;
    fx.put_web("a.gif", &pattern_gif(24, 16));
    let derived = fx.derived_dir();

    // A temp file left by a writer that is gone (an hour old, unlocked).
    let dead = derived.join(".variant-x.mp4.999999-0000000000000000.tmp");
    std::fs::write(&dead, b"half").unwrap();
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let set_old = |path: &Path| {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
    };
    set_old(&dead);

    // The service starts a variant: ffmpeg (slow) will write into a temp file.
    let variant = {
        let client = fx.client.clone();
        let url = fx.url(&format!("{GIF}?format=mp4"));
        tokio::spawn(async move { client.get(url).send().await.unwrap() })
    };
    let state = fx.server.app().state().clone();
    let temp = loop {
        let (names, _) = fx.derived_files();
        if let Some(name) = names
            .iter()
            .find(|n| n.ends_with(".tmp") && n.contains(&format!(".{}-", std::process::id())))
        {
            break derived.join(name);
        }
        assert!(!variant.is_finished(), "the variant is still being made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(state.transcoder.metrics().running().get(), 1);
    // Old enough to be taken for a dead writer's if only its age counted: its lock is
    // what keeps it.
    set_old(&temp);

    // Meanwhile the CLI runs on the same folder, over another tree.
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(other.path().join("web")).unwrap();
    std::fs::write(other.path().join("web/b.gif"), pattern_gif(16, 16)).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_oip-media"))
        .args(["transcode", "--formats", "webm", "--derived-dir"])
        .arg(&derived)
        .arg(other.path())
        .env("FFMPEG", "ffmpeg")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(
        temp.exists(),
        "the service's temp file in progress survives the CLI"
    );
    assert!(!dead.exists(), "a dead writer's temp file is cleaned");

    let r = variant.await.unwrap();
    assert_eq!(r.status(), 200, "the waiting request gets its variant");
    assert_eq!(header(&r, "content-type"), Some("video/mp4"));
    assert_eq!(&r.bytes().await.unwrap()[4..8], b"ftyp");
    // Both made their variants under the one key: the service sees the CLI's too.
    let (names, _) = fx.derived_files();
    assert!(names.iter().any(|n| n.ends_with(".webm")), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with(".mp4")), "{names:?}");
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    fx.stop().await;
}
