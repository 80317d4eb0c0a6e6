//! The transcoder's settings group.

use std::time::Duration;

use crate::settings::{Invalid, at_least_one, not_zero, parse_duration};

/// Settings of the transcoder (`src/transcode/`): which ffmpeg and encoders, and the
/// bounds on the work and the waiting that variants may cause. Global, so `oip-media
/// transcode` takes them after its name too.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Variants (MP4, WebM, WebP)")]
pub struct TranscodeSettings {
    /// The ffmpeg program (a path, or a name looked up on `PATH`).
    ///
    /// ffmpeg is optional: when it cannot be run (or this is empty), the service runs as
    /// without variants, logs a warning, answers `?format=` with 501 and says so in `/readyz`.
    #[arg(long, env = "FFMPEG", default_value = "ffmpeg", global = true)]
    pub ffmpeg: String,

    /// H.264 encoder of MP4 variants: `libx264` (CPU) or `h264_nvenc` (an NVIDIA GPU).
    ///
    /// H.264 encoder of MP4 variants: `libx264` (CPU), or `h264_nvenc` (an NVIDIA GPU).
    ///
    /// `h264_nvenc` is used only when ffmpeg lists it and a one-frame test encode works at
    /// start-up (ffmpeg lists it even on hosts without a GPU); otherwise the service logs why
    /// and uses `libx264`.
    #[arg(long, env = "MP4_ENCODER", default_value = "libx264", value_parser = ["libx264", "h264_nvenc"], global = true)]
    pub mp4_encoder: String,

    /// Constant-quality level of MP4 variants (x264 CRF, NVENC CQ): lower is better and larger.
    ///
    /// 28 gives 0.12–0.3× the GIF's bytes on the exercise GIFs; see BENCHMARKS.md for the
    /// size/quality trade-off measured on the corpus.
    #[arg(long, env = "MP4_CRF", default_value_t = 28, value_parser = clap::value_parser!(u8).range(0..=51), global = true)]
    pub mp4_crf: u8,

    /// ffmpeg processes running at once.
    ///
    /// Each is one CPU-heavy process (one GPU session with `h264_nvenc`); one keeps transcoding
    /// from competing with GIF serving for more than `--transcode-threads` cores.
    #[arg(long, env = "TRANSCODE_WORKERS", default_value_t = 1, global = true)]
    pub transcode_workers: usize,

    /// Threads of each ffmpeg process (`-threads`).
    ///
    /// 2 halves the wait for a first request on a small host; CPU time per variant hardly
    /// changes.
    #[arg(long, env = "TRANSCODE_THREADS", default_value_t = 2, global = true)]
    pub transcode_threads: usize,

    /// Transcodes allowed to wait for a worker; a request that would start one more gets 503 +
    /// `Retry-After`.
    ///
    /// 64 × ~1 s of encoding is about what a page of exercises asks for the first time.
    #[arg(long, env = "TRANSCODE_QUEUE", default_value_t = 64, global = true)]
    pub transcode_queue: usize,

    /// Longest one ffmpeg run may take; then the process is killed and the failure remembered
    /// (422).
    ///
    /// A 720 px exercise GIF takes about a second.
    #[arg(long, env = "TRANSCODE_TIMEOUT", default_value = "60s", value_parser = parse_duration, global = true)]
    pub transcode_timeout: Duration,

    /// Longest a variant request waits for its transcode; then 503 + `Retry-After`.
    ///
    /// Longest a variant request waits for its transcode (holding no GIF-serving slot); then
    /// 503 + `Retry-After` while the transcode goes on for the next request.
    #[arg(long, env = "TRANSCODE_WAIT", default_value = "15s", value_parser = parse_duration, global = true)]
    pub transcode_wait: Duration,

    /// Variant requests waiting for transcodes at once; more get 503 + `Retry-After` at once.
    ///
    /// Each costs a connection and a few hundred bytes.
    #[arg(
        long,
        env = "TRANSCODE_MAX_WAITING",
        default_value_t = 256,
        global = true
    )]
    pub transcode_max_waiting: usize,

    /// How long a failed transcode is answered 422 without trying again.
    ///
    /// How long a failed transcode (ffmpeg error, timeout, a GIF over the limits) is answered
    /// 422 without trying again.
    #[arg(long, env = "TRANSCODE_FAILURE_TTL", default_value = "10m", value_parser = parse_duration, global = true)]
    pub transcode_failure_ttl: Duration,

    /// Send the WebP variant to plain `<img>` GIF requests whose `Accept` lists it.
    ///
    /// Content negotiation for plain `<img>` GIF requests: when `Accept` lists `image/webp` and
    /// the WebP variant exists, send it instead (with `Vary: Accept`); when it does not exist
    /// yet, queue it and send the GIF at once.
    ///
    /// Off by default: every GIF response then carries `Vary: Accept`, which splits shared
    /// caches by `Accept` header and disables some CDNs' caching; the WebP is ~0.75× the GIF's
    /// bytes; and a response's type changes under one URL, which `<a download>` links and tools
    /// that trust the `.gif` extension may not expect.
    #[arg(long, env = "AUTO_FORMAT", global = true)]
    pub auto_format: bool,
}

impl TranscodeSettings {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        at_least_one("transcode_workers", self.transcode_workers)?;
        at_least_one("transcode_threads", self.transcode_threads)?;
        not_zero("transcode_timeout", self.transcode_timeout)?;
        not_zero("transcode_wait", self.transcode_wait)
    }
}
