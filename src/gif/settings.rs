//! The GIF settings groups: what a GIF may cost to parse or render, the stills and their
//! workers, and the derived-file folder.

use std::path::PathBuf;
use std::time::Duration;

use crate::settings::{Invalid, at_least_one, flag, not_zero, parse_bytes, parse_duration};

/// Bounds on what a GIF may cost to parse or render, the still widths, and the decoding
/// workers (`src/gif/`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "GIF parsing and stills")]
pub struct GifSettings {
    /// Most GIF results (metadata for `/info`, still renders) kept in memory.
    ///
    /// Most GIF results kept in memory: metadata for `/info`, and the outcome of each still
    /// render (so a broken GIF is not decoded again on every request).
    ///
    /// Each is a few dozen bytes, and a result is kept per file version, so a page of ~100
    /// exercises never parses twice.
    #[arg(long, env = "GIF_INFO_CACHE_ENTRIES", default_value_t = 4096)]
    pub gif_info_cache_entries: usize,

    /// Most frames a GIF may have before `/info` refuses it with 422.
    ///
    /// Exercise GIFs have tens to a few hundred; the bound caps the CPU a hostile file can
    /// cost.
    #[arg(long, env = "GIF_MAX_FRAMES", default_value_t = 2000, global = true)]
    pub gif_max_frames: usize,

    /// Largest width or height of a GIF that is parsed or rendered; larger → 422.
    ///
    /// Largest width or height (of the screen or any frame) of a GIF that is parsed or
    /// rendered; larger → 422.
    ///
    /// 4096 is far above any exercise GIF (180–720 px).
    #[arg(long, env = "GIF_MAX_DIMENSION", default_value_t = 4096, global = true)]
    pub gif_max_dimension: u32,

    /// Most pixels in one GIF frame (and in its screen) that is parsed or rendered; larger →
    /// 422.
    ///
    /// 4 Mpx is 16 MiB of RGBA per buffer; a render at the limit holds the frame, the screen,
    /// the resize's intermediate buffer and the PNG, about 70 MiB measured, so this times
    /// `--still-workers` bounds the memory stills can take.
    #[arg(long, env = "GIF_MAX_PIXELS", default_value_t = 4 * 1024 * 1024, global = true)]
    pub gif_max_pixels: u64,

    /// Widths a still may be asked for with `&w=`; any other → 400.
    ///
    /// A short list keeps the derived cache small and its hit rate high (one still per GIF and
    /// width).
    #[arg(
        long,
        env = "STILL_WIDTHS",
        default_value = "90,180,360",
        value_delimiter = ','
    )]
    pub still_widths: Vec<u32>,

    /// GIF decodes and PNG encodes running at once (each on a blocking thread).
    ///
    /// Two keep a burst of first-time stills from starving the GIF route of CPU on a small
    /// host.
    #[arg(long, env = "STILL_WORKERS", default_value_t = 2)]
    pub still_workers: usize,

    /// Decodes allowed to wait for one of the `--still-workers`; then 503 at once.
    ///
    /// Decodes (still renders and `/info` parses) allowed to wait for one of the
    /// `--still-workers`; past it the request gets 503 + `Retry-After` at once.
    ///
    /// A render of an exercise GIF takes milliseconds, so 64 waiting is well under a second of
    /// work on two workers, and a flood of hostile GIFs cannot pile up behind them.
    #[arg(long, env = "STILL_WORKER_QUEUE", default_value_t = 64)]
    pub still_worker_queue: usize,

    /// Longest a decode waits for one of the `--still-workers`; then 503 + `Retry-After`.
    ///
    /// Generous (a first page of new stills is rendered in a burst), yet bounded: a request
    /// never waits on an unbounded line of renders.
    #[arg(long, env = "STILL_WORKER_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub still_worker_timeout: Duration,
}

impl GifSettings {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        at_least_one("still_workers", self.still_workers)?;
        not_zero("still_worker_timeout", self.still_worker_timeout)?;
        if let Some(bad) = self
            .still_widths
            .iter()
            .find(|w| **w == 0 || **w > self.gif_max_dimension)
        {
            let message = format!(
                "width {bad} is not between 1 and {} ({})",
                flag::<Self>("gif_max_dimension"),
                self.gif_max_dimension
            );
            return Err(Invalid::new("still_widths", message));
        }
        Ok(())
    }
}

/// The folder of derived files (stills and variants) and its size bound
/// (`src/gif/derived.rs`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Derived files")]
pub struct DerivedSettings {
    /// Folder of derived files (stills and MP4/WebM/WebP variants), made private.
    ///
    /// Folder of derived files (stills, and the MP4/WebM/WebP variants of GIFs), written once
    /// and served like media.
    ///
    /// Created if missing, and made private (`0700`, files `0600`): derived files of private
    /// items must not be readable by other users, so start-up fails if the folder belongs to
    /// another user. Defaults to `oip-media-derived` in the system temp folder: everything in
    /// it can be regenerated.
    #[arg(long, env = "DERIVED_DIR", default_value_os_t = default_derived_dir(), global = true)]
    pub derived_dir: PathBuf,

    /// Most bytes of derived files kept, stills and variants together; past it the oldest are
    /// deleted.
    ///
    /// Per bundled exercise GIF, a still is 15–200 KiB (90–360 px) and the three variants
    /// together about 1.1× the GIF (MP4 ~0.2×, WebM ~0.25×, WebP ~0.75×), so 1 GiB holds every
    /// variant and still of about 2,000 GIFs of the production size mix (~370 KB mean). It is
    /// disk, not memory.
    #[arg(long, env = "DERIVED_MAX_BYTES", default_value = "1GiB", value_parser = parse_bytes, global = true)]
    pub derived_max_bytes: u64,
}

/// `oip-media-derived` in the system temp folder: everything in it can be regenerated.
fn default_derived_dir() -> PathBuf {
    std::env::temp_dir().join("oip-media-derived")
}
