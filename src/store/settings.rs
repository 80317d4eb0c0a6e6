//! The store's settings group: the media roots, the bounded mapping cache, and how a
//! mapped file's bytes leave.

use std::path::PathBuf;
use std::time::Duration;

use crate::settings::{Invalid, parse_bytes, parse_duration};

/// Longest `--revalidate-window` allowed: the README promises that a file renamed into
/// place is served within a second.
pub const MAX_REVALIDATE_WINDOW: Duration = Duration::from_secs(1);

/// `media`, relative to the working directory: the bundled sample media when run from a
/// checkout (`cargo run --release`), and no build machine's path baked into an installed
/// binary (`cargo install`), where `MEDIA_DIR` names the real root.
const DEFAULT_MEDIA_DIR: &str = "media";

/// Settings of the media roots and the bounded cache of mapped files (`src/store/`), and
/// of how a mapped file's bytes leave (chunks, `sendfile`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Media roots and mapped files")]
pub struct StoreSettings {
    /// The media root (the indexer's `data/media`): `/media/<project>/<file>` is served from
    /// its `web/` folder.
    ///
    /// Defaults to the bundled sample media.
    #[arg(long, env = "MEDIA_DIR", default_value = DEFAULT_MEDIA_DIR, global = true)]
    pub media_dir: PathBuf,

    /// Folder of generated audio, served by `/api/generate/media` and `/api/media?id=`.
    ///
    /// Folder of generated audio (the indexer's `media/`: TTS output and `jfk/`, `rfk/`),
    /// served by `/api/generate/media` and `/api/media?id=`.
    ///
    /// Unset means `<MEDIA_DIR>/generated`. A missing folder does not stop start-up (those
    /// routes answer 404 until it appears): audio is a side feature, GIFs are not.
    #[arg(long, env = "GENERATED_MEDIA_DIR")]
    pub generated_media_dir: Option<PathBuf>,

    /// Largest file the service maps and serves; larger files answer 404.
    ///
    /// Largest file the service maps and serves; larger files answer 404 and are logged.
    ///
    /// 512 MiB is far above any GIF and keeps a hostile or corrupt file from pinning gigabytes
    /// of address space.
    #[arg(long, env = "MAX_FILE_SIZE", default_value = "512MiB", value_parser = parse_bytes)]
    pub max_file_size: u64,

    /// Most mappings kept open in the cache.
    ///
    /// Each keeps its file open (the socket sends from it with `sendfile`), so this plus
    /// `--max-connections` and `--max-in-flight` must fit the open-file limit: start-up raises
    /// the soft limit to the hard one and, when they still do not fit, lowers every descriptor
    /// bound in proportion (one `error` line; `oip-media check` shows the plan). Each also
    /// keeps under 1 KiB of heap: the header values its responses repeat and its whole-file
    /// `200` fields, rendered once (16,384 entries: under 16 MiB).
    #[arg(long, env = "MAP_CACHE_ENTRIES", default_value_t = 16_384)]
    pub map_cache_entries: usize,

    /// Most bytes of files kept mapped by the cache.
    ///
    /// Most bytes of files kept mapped by the cache (responses under way may keep an evicted
    /// mapping alive until they finish).
    ///
    /// Mapped pages are page cache, reclaimable by the kernel, so this bounds address space
    /// rather than memory.
    #[arg(long, env = "MAP_CACHE_BYTES", default_value = "8GiB", value_parser = parse_bytes)]
    pub map_cache_bytes: u64,

    /// How long a cached mapping (and a parsed manifest) is trusted without a `stat`.
    ///
    /// How long a cached mapping (and a parsed manifest) is trusted without a `stat`, as
    /// nginx's `open_file_cache_valid`: within the window a cached file is served with no
    /// syscall at all; the first request after it `stat`s the path once (on the filesystem
    /// threads) and remaps it if it was replaced.
    ///
    /// A file renamed into place is therefore served at most one window later; a response never
    /// mixes two versions (it holds one mapping of one inode). When the filesystem does not
    /// answer within `--fs-timeout`, the cached mapping is served as it is. At most 1s; 0 stats
    /// on every request.
    #[arg(long, env = "REVALIDATE_WINDOW", default_value = "1s", value_parser = parse_duration)]
    pub revalidate_window: Duration,

    /// Size of each chunk the response body hands to hyper.
    ///
    /// The body yields the next chunk only when the socket has taken the last, so this (times
    /// two, for hyper's queue) is what a slow reader pins: references into the mapping, never
    /// copies.
    #[arg(long, env = "BODY_CHUNK_SIZE", default_value = "256KiB", value_parser = parse_bytes)]
    pub body_chunk_size: u64,

    /// Shortest run of file bytes sent with `sendfile(2)`; shorter runs are copied.
    ///
    /// Shortest run of file bytes the socket sends with `sendfile(2)` (from the page cache, no
    /// copy); shorter runs are copied by the one `writev` that sends the head, which costs less
    /// than a second syscall for a small body.
    ///
    /// The default is the measured crossover (BENCHMARKS.md, "sendfile"). Set it above
    /// `--max-file-size` to never use `sendfile`.
    #[arg(long, env = "SENDFILE_MIN_BYTES", default_value = "16KiB", value_parser = parse_bytes)]
    pub sendfile_min_bytes: u64,

    /// Most `manifest.json` files kept parsed in memory.
    ///
    /// A manifest is about 1 KiB; each entry is also charged at least 1 KiB so the cache never
    /// holds more than this many KiB of manifest text.
    #[arg(long, env = "MANIFEST_CACHE_ENTRIES", default_value_t = 4096)]
    pub manifest_cache_entries: usize,
}

impl StoreSettings {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(4096..=16 << 20).contains(&self.body_chunk_size) {
            return Err(Invalid::new(
                "body_chunk_size",
                "must be between 4KiB and 16MiB",
            ));
        }
        if self.revalidate_window > MAX_REVALIDATE_WINDOW {
            return Err(Invalid::new(
                "revalidate_window",
                "must be at most 1s (a replaced file must be noticed within a second)",
            ));
        }
        if self.map_cache_entries == 0 {
            return Err(Invalid::new("map_cache_entries", "must be at least 1"));
        }
        if self.map_cache_bytes == 0 {
            return Err(Invalid::new("map_cache_bytes", "must be at least 1"));
        }
        Ok(())
    }

    /// The folder `/media/<project>/<file>` is served from.
    pub fn web_root(&self) -> PathBuf {
        self.media_dir.join("web")
    }

    /// The folder generated audio is served from (see `--generated-media-dir`).
    pub fn generated_root(&self) -> PathBuf {
        self.generated_media_dir
            .clone()
            .unwrap_or_else(|| self.media_dir.join("generated"))
    }
}
