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
