//! What the variants contain, checked with ffprobe and by decoding them: MP4 is H.264
//! yuv420p with even dimensions, `+faststart` and no audio; durations are the GIF's
//! within one frame and variable frame delays are kept; WebP keeps the loop count;
//! transparency is flattened onto white in MP4 and kept in WebM and WebP.
//!
//! Skips with a printed reason without ffmpeg/ffprobe (`OIP_REQUIRE_FFMPEG=1` fails).

mod support;
mod transcode_support;

use std::path::{Path, PathBuf};

use support::TestServer as Fixture;
use transcode_support::{clip, ffmpeg_or_skip, ffprobe, first_frame_rgba};

/// Delays in hundredths: every frame a different length.
const DELAYS: [u16; 5] = [10, 30, 50, 20, 40];
const WIDTH: u16 = 33;
const HEIGHT: u16 = 21;

/// Serves the test clip and saves its `format` variant into the fixture's folder.
async fn variant(fx: &Fixture, name: &str, format: &str) -> PathBuf {
    let r = fx
        .get(&format!("/media/fitnessally/{name}?format={format}"))
        .await;
    assert_eq!(r.status(), 200, "{format}");
    let path = fx.media_dir().join(format!("{name}.{format}"));
    std::fs::write(&path, r.bytes().await.unwrap()).unwrap();
    path
}

/// Presentation times of the frames, in seconds.
fn frame_times(probe: &serde_json::Value) -> Vec<f64> {
    probe["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            f["pts_time"]
                .as_str()
                .or(f["pkt_dts_time"].as_str())
                .unwrap()
                .parse::<f64>()
                .unwrap()
        })
        .collect()
}

fn duration(probe: &serde_json::Value) -> f64 {
    probe["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Each frame starts where the GIF's delays say (10 ms resolution). A video may end
/// with one more frame, a copy of the last held until the GIF's end (see
/// `last_frame_held` in `src/transcode/ffmpeg.rs`): it must start within the last
/// 10 ms.
fn assert_delays_kept(times: &[f64], what: &str) {
    let total = total_seconds();
    let times = match times.len() {
        n if n == DELAYS.len() + 1 => {
            let hold = times[n - 1] - times[0];
            assert!(
                hold >= total - 0.011 && hold < total,
                "{what}: the held copy of the last frame starts at {hold}"
            );
            &times[..n - 1]
        }
        _ => times,
    };
    assert_eq!(times.len(), DELAYS.len(), "{what}: one frame per GIF frame");
    let mut expected = 0.0;
    for (i, (t, delay)) in times.iter().zip(DELAYS).enumerate() {
        assert!(
            (t - times[0] - expected).abs() < 0.011,
            "{what}: frame {i} at {t}, expected {expected} after the first ({times:?})"
        );
        expected += f64::from(delay) / 100.0;
    }
}

fn total_seconds() -> f64 {
    DELAYS.iter().map(|d| f64::from(*d)).sum::<f64>() / 100.0
}

/// The shortest frame: "within one frame" uses the strictest frame length.
fn one_frame() -> f64 {
    f64::from(*DELAYS.iter().min().unwrap()) / 100.0
}

fn rgba_at(frame: &[u8], width: usize, x: usize, y: usize) -> [u8; 4] {
    let i = (y * width + x) * 4;
    [frame[i], frame[i + 1], frame[i + 2], frame[i + 3]]
}

/// Top-level MP4 box types, in file order.
fn top_level_boxes(bytes: &[u8]) -> Vec<String> {
    let mut boxes = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        boxes.push(String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned());
        if size < 8 {
            break;
        }
        at += size;
    }
    boxes
}

#[tokio::test]
async fn mp4_is_h264_yuv420p_even_faststart_silent_with_the_gifs_timing_on_white() {
    if !ffmpeg_or_skip("mp4_is_h264_yuv420p") {
        return;
    }
    let fx = Fixture::start(|c| c.transcode.ffmpeg = "ffmpeg".into()).await;
    fx.put_web(
        "clip.gif",
        &clip(WIDTH, HEIGHT, &DELAYS, true, gif::Repeat::Finite(2)),
    );
    let mp4 = variant(&fx, "clip.gif", "mp4").await;
    let probe = ffprobe(&mp4, true);
    let streams = probe["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 1, "video only, no audio track: {probe}");
    let video = &streams[0];
    assert_eq!(video["codec_type"], "video");
    assert_eq!(video["codec_name"], "h264");
    assert_eq!(video["pix_fmt"], "yuv420p");
    let (w, h) = (
        video["width"].as_u64().unwrap(),
        video["height"].as_u64().unwrap(),
    );
    assert_eq!((w % 2, h % 2), (0, 0), "even dimensions: {w}x{h}");
    assert_eq!((w, h), (34, 22), "padded by one pixel, not scaled");

    let d = duration(&probe);
    assert!(
        (d - total_seconds()).abs() <= one_frame(),
        "duration {d} vs the GIF's {}",
        total_seconds()
    );
    assert_delays_kept(&frame_times(&probe), "mp4");

    let bytes = std::fs::read(&mp4).unwrap();
    let boxes = top_level_boxes(&bytes);
    let moov = boxes.iter().position(|b| b == "moov").unwrap();
    let mdat = boxes.iter().position(|b| b == "mdat").unwrap();
    assert!(moov < mdat, "faststart: the index comes first: {boxes:?}");

    // Left half transparent → white; right half red.
    let frame = first_frame_rgba(&mp4, None);
    let width = w as usize;
    let left = rgba_at(&frame, width, 4, 10);
    assert!(left[..3].iter().all(|c| *c >= 235), "white: {left:?}");
    let right = rgba_at(&frame, width, 28, 10);
    assert!(
        right[0] >= 200 && right[1] <= 60 && right[2] <= 60,
        "red: {right:?}"
    );
    fx.shutdown().await;
}

#[tokio::test]
async fn webm_is_vp9_with_alpha_and_the_gifs_timing() {
    if !ffmpeg_or_skip("webm_is_vp9_with_alpha") {
        return;
    }
    let fx = Fixture::start(|c| c.transcode.ffmpeg = "ffmpeg".into()).await;
    fx.put_web(
        "clip.gif",
        &clip(WIDTH, HEIGHT, &DELAYS, true, gif::Repeat::Infinite),
    );
    let webm = variant(&fx, "clip.gif", "webm").await;
    let probe = ffprobe(&webm, true);
    let video = &probe["streams"][0];
    assert_eq!(probe["streams"].as_array().unwrap().len(), 1, "no audio");
    assert_eq!(video["codec_name"], "vp9");
    assert_eq!(video["tags"]["alpha_mode"], "1", "alpha kept: {video}");
    assert_delays_kept(&frame_times(&probe), "webm");
    let d = duration(&probe);
    assert!(
        (d - total_seconds()).abs() <= one_frame(),
        "duration {d} vs {}",
        total_seconds()
    );
    // libvpx's decoder reads the alpha channel; ffmpeg's native one ignores it.
    let frame = first_frame_rgba(&webm, Some("libvpx-vp9"));
    let left = rgba_at(&frame, usize::from(WIDTH), 4, 10);
    assert!(left[3] <= 16, "transparent kept: {left:?}");
    let right = rgba_at(&frame, usize::from(WIDTH), 28, 10);
    assert!(right[3] >= 240 && right[0] >= 200, "opaque red: {right:?}");
    fx.shutdown().await;
}

/// The chunks of a RIFF/WebP file: (fourcc, payload).
fn webp_chunks(bytes: &[u8]) -> Vec<(String, &[u8])> {
    assert_eq!(&bytes[..4], b"RIFF");
    assert_eq!(&bytes[8..12], b"WEBP");
    let mut chunks = Vec::new();
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let name = String::from_utf8_lossy(&bytes[at..at + 4]).into_owned();
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let end = (at + 8 + len).min(bytes.len());
        chunks.push((name, &bytes[at + 8..end]));
        at = at + 8 + len + (len & 1);
    }
    chunks
}

fn u24(b: &[u8]) -> u32 {
    u32::from(b[0]) | (u32::from(b[1]) << 8) | (u32::from(b[2]) << 16)
}

#[tokio::test]
async fn webp_keeps_the_loop_count_the_delays_and_transparency() {
    if !ffmpeg_or_skip("webp_keeps_the_loop_count") {
        return;
    }
    let fx = Fixture::start(|c| c.transcode.ffmpeg = "ffmpeg".into()).await;
    // NETSCAPE count 2 = plays three times; Infinite = 0 (forever) in WebP.
    for (name, repeat, loops) in [
        ("thrice.gif", gif::Repeat::Finite(2), 3u16),
        ("forever.gif", gif::Repeat::Infinite, 0),
    ] {
        fx.put_web(name, &clip(WIDTH, HEIGHT, &DELAYS, true, repeat));
        let path = variant(&fx, name, "webp").await;
        let bytes = std::fs::read(&path).unwrap();
        let chunks = webp_chunks(&bytes);
        let (_, vp8x) = chunks.iter().find(|(n, _)| n == "VP8X").unwrap();
        assert_ne!(vp8x[0] & 0x02, 0, "{name}: animated");
        assert_ne!(
            vp8x[0] & 0x10,
            0,
            "{name}: with alpha {:?}",
            chunks.iter().map(|c| c.0.clone()).collect::<Vec<_>>()
        );
        let (_, anim) = chunks.iter().find(|(n, _)| n == "ANIM").unwrap();
        assert_eq!(u16::from_le_bytes([anim[4], anim[5]]), loops, "{name}");
        let durations: Vec<u32> = chunks
            .iter()
            .filter(|(n, _)| n == "ANMF")
            .map(|(_, f)| u24(&f[12..15]))
            .collect();
        let expected: Vec<u32> = DELAYS.iter().map(|d| u32::from(*d) * 10).collect();
        assert_eq!(durations, expected, "{name}: the GIF's variable delays");
        check_webp_alpha(&path);
    }
    fx.shutdown().await;
}

/// The first frame, decoded by the `image` crate: transparent on the left.
fn check_webp_alpha(path: &Path) {
    use image::AnimationDecoder;
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let decoder = image::codecs::webp::WebPDecoder::new(file).unwrap();
    let first = decoder.into_frames().next().unwrap().unwrap().into_buffer();
    assert_eq!(first.get_pixel(4, 10).0[3], 0, "transparent kept");
    let right = first.get_pixel(28, 10).0;
    assert!(right[3] == 255 && right[0] >= 200, "opaque red: {right:?}");
}

#[tokio::test]
async fn a_bundled_exercise_gif_keeps_its_frames_and_duration() {
    if !ffmpeg_or_skip("a_bundled_exercise_gif_keeps_its_frames") {
        return;
    }
    let fx = Fixture::start(|c| c.transcode.ffmpeg = "ffmpeg".into()).await;
    let sample = oip_media::sample::encode_gif(180, 7).unwrap();
    fx.put_web("sample.gif", &sample);
    let gif_probe = ffprobe(&fx.media_dir().join("web/fitnessally/sample.gif"), true);
    let gif_frames = gif_probe["frames"].as_array().unwrap().len();
    let gif_duration = duration(&gif_probe);
    let frame_len = gif_duration / gif_frames as f64;
    for format in ["mp4", "webm"] {
        let path = variant(&fx, "sample.gif", format).await;
        let probe = ffprobe(&path, true);
        assert_eq!(
            probe["frames"].as_array().unwrap().len(),
            gif_frames + 1,
            "{format}: every frame, and the last one's held copy"
        );
        let d = duration(&probe);
        assert!(
            (d - gif_duration).abs() <= frame_len + 1e-6,
            "{format}: {d} vs {gif_duration}"
        );
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(
            size * 2 < sample.len() as u64,
            "{format}: {size} bytes is not much smaller than the GIF's {}",
            sample.len()
        );
    }
    fx.shutdown().await;
}
