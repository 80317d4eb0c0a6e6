//! ffmpeg as a tool: finding it, listing its encoders, checking that a GPU encoder
//! really works, and the command line that makes each variant.
//!
//! The command lines are pure functions of the recipe, the settings and the GIF's
//! metadata, so what each variant promises (H.264 yuv420p with even dimensions and
//! `+faststart`, no audio, variable frame delays kept, transparency flattened onto white
//! for MP4 and kept for WebM/WebP, the loop count kept in WebP) can be read and
//! unit-tested here, and is checked with ffprobe in `tests/transcode_output.rs`.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::VariantFormat;
use crate::gif::meta::GifInfo;

/// How long discovery and the encoder probe may take before ffmpeg is given up on
/// (start-up must not hang on a broken binary).
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Encoders this service can use, as ffmpeg names them.
pub const LIBX264: &str = "libx264";
/// NVIDIA's H.264 encoder.
pub const H264_NVENC: &str = "h264_nvenc";
/// VP9 for WebM.
pub const LIBVPX_VP9: &str = "libvpx-vp9";
/// Animated WebP.
pub const LIBWEBP_ANIM: &str = "libwebp_anim";

/// Encoders worth naming in the start-up log and `/readyz`.
const INTERESTING: [&str; 6] = [
    LIBX264,
    H264_NVENC,
    "hevc_nvenc",
    LIBVPX_VP9,
    LIBWEBP_ANIM,
    "libwebp",
];

/// Why ffmpeg cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// Not found, not executable.
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        /// What was run.
        program: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// It ran but did not answer in time.
    #[error("`{program}` did not answer within {timeout:?}")]
    Timeout {
        /// What was run.
        program: String,
        /// The bound.
        timeout: Duration,
    },
    /// It answered with an error.
    #[error("`{program}` failed: {message}")]
    Failed {
        /// What was run.
        program: String,
        /// Its exit status and the end of its error output.
        message: String,
    },
}

/// An ffmpeg that answered, and the video encoders it lists.
#[derive(Debug, Clone)]
pub struct Ffmpeg {
    program: String,
    version: String,
    encoders: BTreeSet<String>,
}

impl Ffmpeg {
    /// Runs `program -version` and `program -encoders`. Blocking (two short child
    /// processes, each bounded by a timeout): called once at start-up.
    pub fn discover(program: &str) -> Result<Ffmpeg, DiscoveryError> {
        Ffmpeg::discover_within(program, DISCOVERY_TIMEOUT)
    }

    /// [`Ffmpeg::discover`] with each child process bounded by `timeout`.
    pub fn discover_within(program: &str, timeout: Duration) -> Result<Ffmpeg, DiscoveryError> {
        let version = run_bounded(program, &["-hide_banner", "-version"], timeout)?;
        let version = version
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("ffmpeg version "))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("unknown")
            .to_owned();
        let listing = run_bounded(program, &["-hide_banner", "-encoders"], timeout)?;
        Ok(Ffmpeg {
            program: program.to_owned(),
            version,
            encoders: parse_encoders(&listing),
        })
    }

    /// The program as configured.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// ffmpeg's version string (`5.1.9-0+deb12u1`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// True when ffmpeg lists the video encoder `name`.
    pub fn has(&self, name: &str) -> bool {
        self.encoders.contains(name)
    }

    /// The encoders this service cares about that ffmpeg lists.
    pub fn interesting_encoders(&self) -> Vec<&'static str> {
        INTERESTING.into_iter().filter(|e| self.has(e)).collect()
    }

    /// Encodes one black frame with `encoder`. ffmpeg lists `h264_nvenc` whether or not
    /// the host has a GPU and driver; only an encode tells. Blocking, bounded.
    pub fn probe(&self, encoder: &str) -> Result<(), DiscoveryError> {
        run_bounded(
            &self.program,
            &[
                "-nostdin",
                "-hide_banner",
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
                "color=c=black:s=256x256:d=0.1",
                "-frames:v",
                "1",
                "-c:v",
                encoder,
                "-f",
                "null",
                "-",
            ],
            DISCOVERY_TIMEOUT,
        )
        .map(|_| ())
    }
}

/// Runs `program args`, returns its standard output; past `timeout`, kills it and
/// every process it started (its own process group, [`super::group`]). Returns only
/// once no process of that group is left (or after [`super::group::GONE_WITHIN`], with
/// an error in the log), whether it answered, failed or hung.
fn run_bounded(program: &str, args: &[&str], timeout: Duration) -> Result<String, DiscoveryError> {
    let mut child = super::group::command(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| DiscoveryError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    let group = super::group::Group::led_by(child.id());
    // Drain both pipes on threads, so a long listing cannot fill a pipe and stall the
    // child while we wait for it. Their text comes back on a channel, waited for with
    // a bound: a pipe is at its end once the group is gone.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            let _ = tx.send(String::from_utf8_lossy(&text).into_owned());
        });
        rx
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) | Err(_) => {
                // The group first, while its leader is unreaped; then the leader.
                if let Some(group) = &group {
                    group.kill();
                }
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    if let Some(mut group) = group
        && !group.kill_and_wait(super::group::GONE_WITHIN)
    {
        tracing::error!(
            pgid = group.id(),
            "processes started by `{program}` survived SIGKILL"
        );
    }
    let Some(status) = status else {
        return Err(DiscoveryError::Timeout {
            program: program.to_owned(),
            timeout,
        });
    };
    let bound = Duration::from_secs(1);
    let out = stdout.recv_timeout(bound).unwrap_or_default();
    let err = stderr.recv_timeout(bound).unwrap_or_default();
    if !status.success() {
        return Err(DiscoveryError::Failed {
            program: program.to_owned(),
            message: format!("{status}: {}", tail(&err, 400)),
        });
    }
    Ok(out)
}

/// The last `max` bytes of `text` (on a character boundary), trimmed.
pub fn tail(text: &str, max: usize) -> &str {
    let text = text.trim();
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The video encoders in ffmpeg's `-encoders` listing: lines after the `------`
/// separator whose flags start with `V`.
pub fn parse_encoders(listing: &str) -> BTreeSet<String> {
    listing
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("---"))
        .skip(1)
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let flags = words.next()?;
            let name = words.next()?;
            flags.starts_with('V').then(|| name.to_owned())
        })
        .collect()
}

/// How one format is made: the ffmpeg encoder, and a short tag that goes into the
/// variant's file name and ETag, so a change of encoder never serves (or validates)
/// bytes another encoder made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recipe {
    /// The format made.
    pub format: VariantFormat,
    /// The ffmpeg encoder.
    pub encoder: &'static str,
    /// `x264`, `nvenc`, `vp9`, `webp`.
    pub tag: &'static str,
}

impl Recipe {
    /// The recipe for `format` with the MP4 encoder `mp4_encoder`.
    pub fn new(format: VariantFormat, mp4_encoder: &'static str) -> Recipe {
        let (encoder, tag) = match format {
            VariantFormat::Mp4 if mp4_encoder == H264_NVENC => (H264_NVENC, "nvenc"),
            VariantFormat::Mp4 => (LIBX264, "x264"),
            VariantFormat::Webm => (LIBVPX_VP9, "vp9"),
            VariantFormat::Webp => (LIBWEBP_ANIM, "webp"),
        };
        Recipe {
            format,
            encoder,
            tag,
        }
    }
}

/// Settings that shape every command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeSettings {
    /// x264 CRF / NVENC CQ of MP4 variants.
    pub mp4_crf: u8,
    /// `-threads` of each ffmpeg process.
    pub threads: usize,
    /// `-fs`: ffmpeg stops writing past this many bytes (the caller then refuses the
    /// truncated file), so a pathological GIF cannot fill the disk.
    pub max_output_bytes: u64,
}

/// VP9 quality: CRF 40 in constant-quality mode (`-b:v 0`) is where VP9 lands at about
/// the size of x264's CRF 28 on these clips (0.18–0.28× the GIF).
const VP9_CRF: &str = "40";

/// Lossy WebP quality: 75 is libwebp's own default, and at ~0.75× the GIF's bytes the
/// frames are indistinguishable from the GIF's at their size.
const WEBP_QUALITY: &str = "75";

/// The MP4 filter graph: every frame composited onto opaque white (H.264 in MP4 has no
/// alpha, and a transparent GIF on a white page looks like this), padded with white to
/// even dimensions (yuv420p needs them; padding keeps every pixel instead of scaling),
/// converted with the BT.709 matrix that the output is tagged with.
const MP4_FILTER: &str = "[0:v]format=rgba,split[fg][bg];\
    [bg]drawbox=x=0:y=0:w=iw:h=ih:color=white:t=fill[white];\
    [white][fg]overlay=format=auto,\
    pad=w=ceil(iw/2)*2:h=ceil(ih/2)*2:color=white,\
    scale=out_color_matrix=bt709:out_range=tv,format=yuv420p[v]";

/// The filter that gives a video's last frame its full delay.
///
/// MP4 and WebM store when each frame *starts*; the last frame's length is whatever
/// the muxer guesses, and ffmpeg 5.1 guesses one frame period (its encoders drop the
/// GIF's per-frame durations), so a clip would end a frame early or late. Instead, the
/// last frame is cloned once (`tpad`) and the clone placed one time-base tick (10 ms,
/// `-r 100` below) before the GIF's end (`setpts`): the real last frame then lasts its
/// delay less 10 ms, the identical clone the last 10 ms, and the clip ends exactly when
/// the GIF does.
fn last_frame_held(info: &GifInfo) -> String {
    let end = info.played_ms.saturating_sub(10) as f64 / 1000.0;
    format!(
        "tpad=stop_mode=clone:stop=1,setpts='if(eq(N,{}),{end:.3}/TB,PTS)'",
        info.frame_count
    )
}

/// The ffmpeg arguments that make `recipe`'s variant of the GIF at `input`, described
/// by `info`, into `output` (an existing, empty `0600` file: ffmpeg overwrites it in
/// place).
pub fn args(
    recipe: Recipe,
    settings: &EncodeSettings,
    input: &Path,
    output: &Path,
    info: &GifInfo,
) -> Vec<OsString> {
    let loop_count = info.loop_count;
    let mut a: Vec<OsString> = Vec::with_capacity(64);
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&["-nostdin", "-hide_banner", "-loglevel", "error", "-y"]);
    // The input is a GIF whatever its name (`<mediaId>/original` has none). Read once
    // (`-ignore_loop 1`): the loop is the player's job, not the file's.
    push(&["-f", "gif", "-ignore_loop", "1", "-i"]);
    a.push(input.as_os_str().to_owned());
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    // Only the picture: no audio, subtitle or data track, no metadata carried over.
    push(&["-an", "-sn", "-dn", "-map_metadata", "-1"]);
    // Each frame keeps its own timestamp: GIF delays vary from frame to frame, and a
    // constant-rate output would duplicate or drop frames to fake them.
    push(&["-fps_mode", "passthrough"]);
    let threads = settings.threads.max(1).to_string();
    let crf = settings.mp4_crf.to_string();
    let max_bytes = settings.max_output_bytes.max(1).to_string();
    match recipe.format {
        VariantFormat::Mp4 => {
            let graph = format!("{MP4_FILTER};[v]{}[out]", last_frame_held(info));
            push(&["-filter_complex", &graph, "-map", "[out]", "-r", "100"]);
            if recipe.encoder == H264_NVENC {
                push(&[
                    "-c:v",
                    H264_NVENC,
                    "-preset",
                    "p5",
                    "-tune",
                    "hq",
                    "-rc",
                    "vbr",
                    "-cq",
                    &crf,
                    "-b:v",
                    "0",
                    "-profile:v",
                    "high",
                ]);
            } else {
                // `animation` tuning: more reference frames and deblocking suited to
                // flat, repeating pictures.
                push(&[
                    "-c:v",
                    LIBX264,
                    "-preset",
                    "medium",
                    "-tune",
                    "animation",
                    "-crf",
                    &crf,
                    "-profile:v",
                    "high",
                ]);
            }
            push(&[
                "-pix_fmt",
                "yuv420p",
                "-colorspace",
                "bt709",
                "-color_primaries",
                "bt709",
                "-color_trc",
                "bt709",
                "-color_range",
                "tv",
                // The index (moov) before the data: a browser can start playing, and
                // seek with ranges, before the last byte arrived.
                "-movflags",
                "+faststart",
                "-threads",
                &threads,
                "-fs",
                &max_bytes,
                "-f",
                "mp4",
            ]);
        }
        VariantFormat::Webm => {
            // yuva420p: VP9 keeps the GIF's transparency as an alpha channel.
            let filter = format!("format=yuva420p,{}", last_frame_held(info));
            push(&["-map", "0:v:0", "-vf", &filter, "-r", "100"]);
            push(&["-c:v", LIBVPX_VP9, "-crf", VP9_CRF, "-b:v", "0"]);
            push(&["-deadline", "good", "-cpu-used", "4", "-row-mt", "1"]);
            push(&["-threads", &threads, "-fs", &max_bytes, "-f", "webm"]);
        }
        VariantFormat::Webp => {
            // WebP's loop count is the number of plays (0 = forever), which is how
            // GifInfo counts a GIF's too. ffmpeg 5.1's libwebp_anim drops the alpha
            // channel of lossy frames (checked: no ALPH chunk, whatever the pixel
            // format), so a GIF that may be transparent is encoded lossless (VP8L keeps
            // alpha, and the exact pixels of a palette image compress well); opaque
            // GIFs get lossy q75.
            let loops = loop_count.min(u32::from(u16::MAX)).to_string();
            push(&["-map", "0:v:0", "-c:v", LIBWEBP_ANIM]);
            if info.transparent {
                push(&["-pix_fmt", "bgra", "-lossless", "1"]);
            } else {
                push(&["-lossless", "0", "-q:v", WEBP_QUALITY]);
            }
            push(&["-compression_level", "4", "-loop", &loops]);
            push(&["-threads", &threads, "-fs", &max_bytes, "-f", "webp"]);
        }
    }
    a.push(output.as_os_str().to_owned());
    a
}

/// Sets the duration of the last frame of the animated WebP at `path` to `ms`.
///
/// The WebP muxer stores a duration per frame; ffmpeg 5.1 guesses the last one (the
/// mean of the others), so a clip whose last delay differs would be cut short or
/// stretched. The field is three bytes at a fixed place in the last `ANMF` chunk
/// (WebP container spec, "Animation"): walking the RIFF chunks and rewriting them in
/// place is exact and cheaper than any re-encode. Blocking.
///
/// A still WebP (no `ANMF` chunk, one `VP8 `/`VP8L` image) is left as it is: ffmpeg
/// writes one for a GIF of one frame, or whose frames are all the same (libwebp's
/// animation encoder merges identical frames), and it shows exactly what the GIF does.
pub fn set_last_webp_frame_duration(path: &Path, ms: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let len = file.metadata()?.len();
    let mut header = [0u8; 12];
    file.read_exact_at(&mut header, 0)?;
    if &header[..4] != b"RIFF" || &header[8..] != b"WEBP" {
        return Err(invalid("not a WebP file"));
    }
    let mut at: u64 = 12;
    let mut last_anmf = None;
    let mut still_image = false;
    while at + 8 <= len {
        let mut chunk = [0u8; 8];
        file.read_exact_at(&mut chunk, at)?;
        let size = u64::from(u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]));
        if &chunk[..4] == b"ANMF" {
            if size < 16 {
                return Err(invalid("ANMF chunk too short"));
            }
            last_anmf = Some(at + 8);
        }
        still_image |= &chunk[..4] == b"VP8 " || &chunk[..4] == b"VP8L";
        at += 8 + size + (size & 1);
    }
    let Some(payload) = last_anmf else {
        return if still_image {
            Ok(())
        } else {
            Err(invalid("neither an ANMF chunk nor an image"))
        };
    };
    let ms = u32::try_from(ms.min(0xFF_FFFF)).unwrap_or(0xFF_FFFF);
    file.write_all_at(&ms.to_le_bytes()[..3], payload + 12)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_webp_frame_gets_its_duration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.webp");
        // RIFF/WEBP with VP8X, two ANMF chunks (16-byte headers, durations 100 and 7).
        let anmf = |duration: u32| {
            let mut c = b"ANMF".to_vec();
            c.extend_from_slice(&16u32.to_le_bytes());
            c.extend_from_slice(&[0; 12]);
            c.extend_from_slice(&duration.to_le_bytes()[..3]);
            c.push(0);
            c
        };
        let mut body = b"WEBP".to_vec();
        body.extend_from_slice(b"VP8X");
        body.extend_from_slice(&10u32.to_le_bytes());
        body.extend_from_slice(&[0; 10]);
        body.extend(anmf(100));
        body.extend(anmf(7));
        let mut file = b"RIFF".to_vec();
        file.extend_from_slice(&(body.len() as u32).to_le_bytes());
        file.extend(body);
        std::fs::write(&path, &file).unwrap();
        set_last_webp_frame_duration(&path, 400).unwrap();
        let patched = std::fs::read(&path).unwrap();
        let last = patched.len() - 16 + 12;
        assert_eq!(&patched[last..last + 3], &400u32.to_le_bytes()[..3]);
        let first = 12 + 18 + 8 + 12;
        assert_eq!(&patched[first..first + 3], &100u32.to_le_bytes()[..3]);
        assert_eq!(patched.len(), file.len());
        std::fs::write(&path, b"RIFF\0\0\0\0WAVE").unwrap();
        assert!(set_last_webp_frame_duration(&path, 400).is_err());
        // A still WebP (one VP8L image, as ffmpeg writes for a one-frame GIF) is kept
        // as it is; a WebP with no image at all is refused.
        let mut still = b"RIFF\x12\0\0\0WEBPVP8L\x06\0\0\0".to_vec();
        still.extend_from_slice(&[0x2f, 0, 0, 0, 0, 0]);
        std::fs::write(&path, &still).unwrap();
        set_last_webp_frame_duration(&path, 400).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), still);
        std::fs::write(&path, b"RIFF\x04\0\0\0WEBP").unwrap();
        assert!(set_last_webp_frame_duration(&path, 400).is_err());
    }

    const LISTING: &str = "Encoders:
 V..... = Video
 A..... = Audio
 ------
 V....D libx264              libx264 H.264 / AVC / MPEG-4 AVC / MPEG-4 part 10 (codec h264)
 V....D h264_nvenc           NVIDIA NVENC H.264 encoder (codec h264)
 V....D libvpx-vp9           libvpx VP9 (codec vp9)
 V....D libwebp_anim         libwebp WebP image (codec webp)
 A....D aac                  AAC (Advanced Audio Coding)
";

    #[test]
    fn encoders_are_read_from_the_listing() {
        let found = parse_encoders(LISTING);
        assert!(found.contains("libx264") && found.contains("h264_nvenc"));
        assert!(found.contains("libvpx-vp9") && found.contains("libwebp_anim"));
        assert!(
            !found.contains("aac"),
            "audio encoders are not video encoders"
        );
        assert!(!found.contains("="), "the legend is not an encoder");
        assert!(parse_encoders("garbage\nwithout a separator").is_empty());
    }

    fn joined(recipe: Recipe, loops: u32) -> String {
        let settings = EncodeSettings {
            mp4_crf: 28,
            threads: 2,
            max_output_bytes: 1 << 20,
        };
        let info = GifInfo {
            width: 33,
            height: 21,
            frame_count: 5,
            duration_ms: 1500,
            loop_count: loops,
            played_ms: 1500,
            transparent: loops == 3,
            last_delay_ms: 400,
        };
        args(
            recipe,
            &settings,
            Path::new("/in put.gif"),
            Path::new("/out"),
            &info,
        )
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
    }

    #[test]
    fn mp4_is_h264_yuv420p_faststart_without_audio_on_white() {
        let line = joined(Recipe::new(VariantFormat::Mp4, LIBX264), 0);
        for part in [
            "-f gif -ignore_loop 1 -i /in put.gif",
            "-an -sn -dn",
            "-fps_mode passthrough",
            "-c:v libx264",
            "-crf 28",
            "-pix_fmt yuv420p",
            "-movflags +faststart",
            "-fs 1048576",
            "-f mp4 /out",
            "color=white",
            "pad=w=ceil(iw/2)*2:h=ceil(ih/2)*2",
            "setpts='if(eq(N,5),1.490/TB,PTS)'",
        ] {
            assert!(line.contains(part), "{part} missing from {line}");
        }
        let nvenc = joined(Recipe::new(VariantFormat::Mp4, H264_NVENC), 0);
        assert!(nvenc.contains("-c:v h264_nvenc") && nvenc.contains("-cq 28"));
        assert_eq!(Recipe::new(VariantFormat::Mp4, H264_NVENC).tag, "nvenc");
        assert_eq!(Recipe::new(VariantFormat::Mp4, LIBX264).tag, "x264");
    }

    #[test]
    fn webm_and_webp_keep_alpha_and_webp_the_loop_count() {
        let webm = joined(Recipe::new(VariantFormat::Webm, LIBX264), 0);
        assert!(webm.contains("format=yuva420p") && webm.contains("-c:v libvpx-vp9"));
        assert!(!webm.contains("color=white"), "WebM keeps transparency");
        let webp = joined(Recipe::new(VariantFormat::Webp, LIBX264), 3);
        assert!(webp.contains("-c:v libwebp_anim") && webp.contains("-loop 3"));
        assert!(
            webp.contains("-lossless 1"),
            "transparent: lossless keeps alpha"
        );
        let opaque = joined(Recipe::new(VariantFormat::Webp, LIBX264), 0);
        assert!(opaque.contains("-lossless 0 -q:v 75"));
        assert!(joined(Recipe::new(VariantFormat::Webp, LIBX264), 0).contains("-loop 0"));
        assert!(joined(Recipe::new(VariantFormat::Webp, LIBX264), 1 << 20).contains("-loop 65535"));
    }

    /// A stand-in for ffmpeg in `dir` whose `-version` runs `version` (shell).
    fn fake(dir: &Path, version: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("ffmpeg");
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho $$ > '{}/pid'\n{version}\n", dir.display()),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_string_lossy().into_owned()
    }

    fn group_of(dir: &Path) -> i32 {
        std::fs::read_to_string(dir.join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn a_hanging_probe_is_killed_with_everything_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let program = fake(dir.path(), "sleep 1000 & sleep 1000");
        let started = Instant::now();
        let error = Ffmpeg::discover_within(&program, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(error, DiscoveryError::Timeout { .. }), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(super::super::group::live_members(group_of(dir.path())), 0);
    }

    #[test]
    fn a_probe_that_answers_but_leaves_a_process_behind_does_not_hang() {
        // The sleeper keeps the output pipe open: without the group kill, reading the
        // answer to its end would wait for it.
        let dir = tempfile::tempdir().unwrap();
        let program = fake(
            dir.path(),
            "sleep 1000 & echo 'ffmpeg version 9.9-test Copyright'; exit 0",
        );
        let started = Instant::now();
        let answer = run_bounded(&program, &["-version"], Duration::from_secs(30)).unwrap();
        assert!(answer.starts_with("ffmpeg version 9.9-test"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(super::super::group::live_members(group_of(dir.path())), 0);
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let error = Ffmpeg::discover("/nonexistent/ffmpeg").unwrap_err();
        assert!(matches!(error, DiscoveryError::Spawn { .. }), "{error}");
        assert_eq!(tail("  abcdef  ", 3), "def");
        assert_eq!(tail("é", 1), "");
    }
}
