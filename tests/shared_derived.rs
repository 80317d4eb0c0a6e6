//! One derived folder shared by two replicas (issue 24): two real `oip-media` processes
//! over one `MEDIA_DIR` and one `DERIVED_DIR` make the same MP4 variant at the same time.
//! Each writes its own temp file and renames it into place, so the folder ends with one
//! complete file and no temp file, and each answer is a whole, playable MP4 (a mapping
//! holds one inode: a rename by the other replica never changes bytes being sent).
//!
//! Both jobs run through a stand-in that sleeps a second before the real ffmpeg, so
//! they overlap whatever the machine's speed. Skips with a printed reason without
//! ffmpeg, unless `OIP_REQUIRE_FFMPEG` is set (as `.ci/run` does).

#[path = "support/child_server.rs"]
mod child_server;
mod transcode_support;

use std::path::Path;
use std::time::Duration;

use child_server::ChildServer;
use transcode_support::{assert_plays, ffmpeg_or_skip, same_frames, slow_ffmpeg};

const GIF: &str = "Squat_Legs_360.gif";

async fn fetch(client: &reqwest::Client, server: &ChildServer) -> (u16, Option<usize>, Vec<u8>) {
    let response = client
        .get(server.url(&format!("/media/fitnessally/{GIF}?format=mp4")))
        .send()
        .await
        .expect("variant request");
    let status = response.status().as_u16();
    let length = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body = response.bytes().await.expect("body").to_vec();
    (status, length, body)
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("derived dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_making_one_variant_at_once_leave_one_complete_file() {
    if !ffmpeg_or_skip("two_replicas_making_one_variant_at_once_leave_one_complete_file") {
        return;
    }
    let media = tempfile::tempdir().expect("tempdir");
    let web = media.path().join("web/fitnessally");
    std::fs::create_dir_all(&web).expect("mkdir");
    std::fs::write(web.join(GIF), same_frames(160, 120, 40, 5)).expect("gif");
    let tools = tempfile::tempdir().expect("tempdir");
    let ffmpeg = slow_ffmpeg(tools.path(), 1.0);
    let derived = media.path().join(".derived-shared");
    let env = [
        ("MEDIA_DIR", media.path().display().to_string()),
        ("DERIVED_DIR", derived.display().to_string()),
        ("FFMPEG", ffmpeg.display().to_string()),
        ("TRANSCODE_WAIT", "30s".to_owned()),
        ("TRANSCODE_TIMEOUT", "60s".to_owned()),
    ];
    let a = ChildServer::start(Path::new(env!("CARGO_BIN_EXE_oip-media")), &env);
    let b = ChildServer::start(Path::new(env!("CARGO_BIN_EXE_oip-media")), &env);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");

    let (from_a, from_b) = tokio::join!(fetch(&client, &a), fetch(&client, &b));
    let runs = std::fs::read_to_string(tools.path().join("runs.log")).unwrap_or_default();
    assert_eq!(
        runs.lines().count(),
        2,
        "each replica made the variant itself"
    );

    let out = tempfile::tempdir().expect("tempdir");
    for (name, (status, length, body)) in [("a", &from_a), ("b", &from_b)] {
        assert_eq!(*status, 200, "replica {name}");
        assert_eq!(*length, Some(body.len()), "replica {name}: a whole body");
        assert_eq!(&body[4..8], b"ftyp", "replica {name}: an MP4");
        let path = out.path().join(format!("{name}.mp4"));
        std::fs::write(&path, body).expect("write");
        assert_plays(&path, "mp4");
    }

    let files = names(&derived);
    assert!(
        !files.iter().any(|f| f.ends_with(".tmp")),
        "a temp file was left: {files:?}"
    );
    let variants: Vec<&String> = files.iter().filter(|f| f.ends_with(".mp4")).collect();
    assert_eq!(variants.len(), 1, "one file for one variant: {files:?}");
    let on_disk = std::fs::read(derived.join(variants[0])).expect("variant");
    assert!(
        on_disk == from_a.2 || on_disk == from_b.2,
        "the file on disk is one of the two complete encodes"
    );

    // And from now on both serve that one file (once the replica whose file was
    // renamed over has revalidated its mapping: `--revalidate-window`, 1 s).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for server in [&a, &b] {
        let (status, _, body) = fetch(&client, server).await;
        assert_eq!(status, 200);
        assert_eq!(body, on_disk);
    }
}
