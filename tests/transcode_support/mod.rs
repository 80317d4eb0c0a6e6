//! Shared by the transcoding tests: whether ffmpeg (and ffprobe) can run here, stand-in
//! ffmpeg programs that fail, hang or count their runs, and test GIFs with variable
//! delays and transparency.
#![allow(dead_code)] // each test file uses a different part of it

use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variable that turns "skipped: no ffmpeg" into a failure (set by CI).
pub const REQUIRE_FFMPEG: &str = "OIP_REQUIRE_FFMPEG";

/// True when `program -version` runs.
pub fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// True when ffmpeg and ffprobe are installed; otherwise prints why the calling test
/// is skipped — or fails it when CI demands ffmpeg.
pub fn ffmpeg_or_skip(test: &str) -> bool {
    if runs("ffmpeg") && runs("ffprobe") {
        return true;
    }
    assert!(
        std::env::var(REQUIRE_FFMPEG).is_err(),
        "{test}: ffmpeg/ffprobe are not installed but {REQUIRE_FFMPEG} is set"
    );
    eprintln!("skipped {test}: ffmpeg/ffprobe are not installed (apt-get install ffmpeg)");
    false
}

/// Writes an executable stand-in for ffmpeg into `dir`: it answers `-version` and
/// `-encoders` like Debian's ffmpeg, appends a line to `runs.log` for every encode and
/// its pid to `pids.log`, then runs `encode` (a shell snippet; `"$@"` are ffmpeg's
/// arguments). Returns its path.
pub fn fake_ffmpeg(dir: &Path, encode: &str) -> PathBuf {
    let path = dir.join("fake-ffmpeg");
    let log = dir.join("runs.log");
    let pids = dir.join("pids.log");
    let script = format!(
        r#"#!/bin/sh
case "$*" in
  *-version*) echo "ffmpeg version 5.1.9-fake Copyright"; exit 0 ;;
  *-encoders*) printf ' V..... = Video\n ------\n V....D libx264 x\n V....D h264_nvenc x\n V....D libvpx-vp9 x\n V....D libwebp_anim x\n'; exit 0 ;;
esac
echo run >> '{log}'
echo $$ >> '{pids}'
{encode}
"#,
        log = log.display(),
        pids = pids.display(),
    );
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// How many encodes a [`fake_ffmpeg`] ran.
pub fn fake_runs(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("runs.log"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// The pids a [`fake_ffmpeg`] ran as.
pub fn fake_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("pids.log"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// How many processes of the groups [`fake_ffmpeg`] runs led are alive (not zombies):
/// each run is the leader of its job's process group, so this counts everything the
/// jobs started, forked children included.
pub fn fake_groups_alive(dir: &Path) -> usize {
    fake_pids(dir)
        .into_iter()
        .map(|pgid| oip_media::transcode::group::live_members(pgid as i32))
        .sum()
}

/// Waits up to 10 s until `done`.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The `encode` of a [`fake_ffmpeg`] that forks two processes that never end and waits
/// for them (a wrapper script whose encoder hangs).
pub const FORKS_SLEEPERS: &str = "sleep 1000 & sleep 1000 & wait";

/// The `encode` of a [`fake_ffmpeg`] that forks a real ffmpeg which encodes for a long
/// time (`-re`: at the input's own pace), and waits for it.
pub const FORKS_REAL_FFMPEG: &str = "ffmpeg -nostdin -loglevel error -re -f lavfi \
    -i color=c=black:s=32x32:r=25 -t 1000 -f null - & wait";

/// A GIF of `frames` identical frames (one colour), `delay` hundredths each.
pub fn same_frames(width: u16, height: u16, frames: usize, delay: u16) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = gif::Encoder::new(&mut out, width, height, &PALETTE).unwrap();
        encoder.set_repeat(gif::Repeat::Infinite).unwrap();
        for _ in 0..frames {
            let frame = gif::Frame {
                width,
                height,
                delay,
                buffer: vec![1u8; usize::from(width) * usize::from(height)].into(),
                ..gif::Frame::default()
            };
            encoder.write_frame(&frame).unwrap();
        }
    }
    out
}

/// Checks that `path` is a valid, fully decodable `format` variant: ffprobe reads it as
/// that codec, and ffmpeg decodes every frame without a word of error. WebP, which
/// ffmpeg 5.1 cannot decode when animated, is decoded by the `image` crate instead.
pub fn assert_plays(path: &Path, format: &str) {
    if format == "webp" {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..4], b"RIFF");
        assert_eq!(&bytes[8..12], b"WEBP");
        image::load_from_memory_with_format(&bytes, image::ImageFormat::WebP)
            .unwrap_or_else(|e| panic!("{}: not a valid WebP: {e}", path.display()));
        return;
    }
    let probe = ffprobe(path, false);
    let codec = probe["streams"][0]["codec_name"]
        .as_str()
        .unwrap_or_default();
    let expected = if format == "mp4" { "h264" } else { "vp9" };
    assert_eq!(codec, expected, "{}: {probe}", path.display());
    let decoded = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        decoded.status.success() && decoded.stderr.is_empty(),
        "{} does not decode cleanly: {}",
        path.display(),
        String::from_utf8_lossy(&decoded.stderr)
    );
}

/// A stand-in that sleeps `secs` and then runs the real ffmpeg with the same arguments.
pub fn slow_ffmpeg(dir: &Path, secs: f64) -> PathBuf {
    fake_ffmpeg(dir, &format!("sleep {secs}\nexec ffmpeg \"$@\""))
}

/// Four colours and a transparent index 3.
const PALETTE: [u8; 12] = [255, 0, 0, 0, 0, 255, 0, 160, 0, 0, 0, 0];

/// A GIF of `width`×`height` whose frames have `delays` (hundredths of a second):
/// frame i is a solid colour (red, blue, green in turn) except its left half, which is
/// transparent when `transparent` is true. Loops `repeat`.
pub fn clip(
    width: u16,
    height: u16,
    delays: &[u16],
    transparent: bool,
    repeat: gif::Repeat,
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = gif::Encoder::new(&mut out, width, height, &PALETTE).unwrap();
        encoder.set_repeat(repeat).unwrap();
        for (i, delay) in delays.iter().enumerate() {
            let colour = (i % 3) as u8;
            let mut pixels = Vec::with_capacity(usize::from(width) * usize::from(height));
            for _ in 0..height {
                for x in 0..width {
                    pixels.push(if transparent && x < width / 2 {
                        3
                    } else {
                        colour
                    });
                }
            }
            let frame = gif::Frame {
                width,
                height,
                delay: *delay,
                transparent: transparent.then_some(3),
                dispose: gif::DisposalMethod::Background,
                buffer: pixels.into(),
                ..gif::Frame::default()
            };
            encoder.write_frame(&frame).unwrap();
        }
    }
    out
}

/// ffprobe's JSON about `path` (`-show_streams -show_format`, plus frames if asked).
pub fn ffprobe(path: &Path, frames: bool) -> serde_json::Value {
    let mut command = Command::new("ffprobe");
    command.args([
        "-v",
        "error",
        "-of",
        "json",
        "-show_streams",
        "-show_format",
    ]);
    if frames {
        command.arg("-show_frames");
    }
    let output = command.arg(path).output().unwrap();
    assert!(
        output.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The first frame of the video at `path` as raw RGBA (decoded by ffmpeg; `decoder`
/// forces one, e.g. `libvpx-vp9`, which decodes VP9's alpha).
pub fn first_frame_rgba(path: &Path, decoder: Option<&str>) -> Vec<u8> {
    let mut command = Command::new("ffmpeg");
    command.args(["-nostdin", "-v", "error"]);
    if let Some(decoder) = decoder {
        command.args(["-c:v", decoder]);
    }
    let output = command
        .arg("-i")
        .arg(path)
        .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgba", "-"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}
