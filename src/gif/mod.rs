//! GIF metadata (`/info`) and still posters (`?still=1`).
//!
//! Everything here reads files with `read()`, never through a mapping: a GIF truncated
//! while we parse it must cost an error, not a SIGBUS (SPEC §2). Files are opened with
//! `crate::store::open_regular`, so a FIFO swapped in for a GIF is refused rather than
//! waited on. Decoding and encoding run on Tokio's blocking pool behind a semaphore
//! (`--still-workers`, a `Gate` whose wait is bounded in length by
//! `--still-worker-queue` and in time by `--still-worker-timeout`, past which the request
//! gets 503), with the frame, dimension and pixel limits checked before
//! anything is allocated, so a hostile GIF costs bounded CPU and memory and never stalls
//! the async workers. The derived folder's checks, writes and eviction scans run on the
//! filesystem pool ([`crate::fs_pool`]), within its bounds.
//!
//! - [`meta`]: width, height, frames, duration, loop count.
//! - `still`: the first frame as a PNG, WebP or JPEG, optionally resized.
//! - `derived`: the bounded, private folder stills (and the transcoder's video
//!   variants) are written to once.
//!
//! [`Gifs`] ties them together: the worker slots, a bounded cache of results (so a file
//! is parsed once per version, and a hostile one is not re-parsed on every request),
//! and single-flight rendering (concurrent requests for the same still wait for one
//! render instead of starting their own).

pub(crate) mod derived;
pub mod meta;
pub(crate) mod settings;
pub(crate) mod still;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;

use crate::admission::{Gate, GateSettings, Shed};
use crate::fs_pool::{FsPool, FsPoolError, Stall};
use crate::store::{FileIdentity, OpenError, Root, open_regular};
use derived::DerivedDir;
use meta::GifInfo;
use settings::{DerivedSettings, GifSettings};
use still::StillFormat;

/// Bounds on what a GIF may cost to parse or render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GifLimits {
    /// Most frames (`--gif-max-frames`).
    pub max_frames: usize,
    /// Largest width or height of the screen or any frame (`--gif-max-dimension`).
    pub max_dimension: u32,
    /// Most pixels of the screen or of one frame (`--gif-max-pixels`).
    pub max_pixels: u64,
}

impl GifLimits {
    /// The configured limits.
    pub fn new(config: &GifSettings) -> GifLimits {
        GifLimits {
            max_frames: config.gif_max_frames.max(1),
            max_dimension: config.gif_max_dimension.max(1),
            max_pixels: config.gif_max_pixels.max(1),
        }
    }

    /// `Ok` when a `width`×`height` area is within the dimension and pixel limits.
    pub fn check_area(&self, what: &str, width: u32, height: u32) -> Result<(), GifError> {
        if width > self.max_dimension || height > self.max_dimension {
            return Err(GifError::TooLarge(format!(
                "{what} of {width}x{height} is over the {} px limit",
                self.max_dimension
            )));
        }
        if u64::from(width) * u64::from(height) > self.max_pixels {
            return Err(GifError::TooLarge(format!(
                "{what} of {width}x{height} is over the {}-pixel limit",
                self.max_pixels
            )));
        }
        Ok(())
    }
}

/// Why a GIF could not be described or rendered. Cloneable so results can be cached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GifError {
    /// Not a GIF, or a malformed or truncated one: 422.
    #[error("not a valid GIF: {0}")]
    Invalid(String),
    /// Over a frame, dimension or pixel limit: 422.
    #[error("GIF is too large to process: {0}")]
    TooLarge(String),
    /// The file changed between the lookup and the read: try again.
    #[error("the file changed while it was being read")]
    SourceChanged,
    /// The file or the derived folder could not be read or written: 500.
    #[error("{0}")]
    Io(String),
    /// The filesystem pool refused the call or it timed out: 503, try again.
    #[error("filesystem busy: {0}")]
    Busy(FsPoolError),
    /// No decoding worker was free within `--still-worker-queue` and
    /// `--still-worker-timeout`: 503, try again.
    #[error("GIF workers busy: {0}")]
    WorkersBusy(Shed),
}

impl GifError {
    /// True for outcomes that say something about the file itself and may be cached
    /// with its identity; false for transient ones worth retrying.
    pub fn is_about_the_file(&self) -> bool {
        matches!(self, GifError::Invalid(_) | GifError::TooLarge(_))
    }

    fn from_decoding(error: ::gif::DecodingError) -> GifError {
        use ::gif::DecodingError as D;
        match error {
            D::MemoryLimit | D::OutOfMemory => GifError::TooLarge(error.to_string()),
            D::Io(io) if io.kind() != std::io::ErrorKind::UnexpectedEof => {
                GifError::Io(format!("cannot read GIF: {io}"))
            }
            other => GifError::Invalid(other.to_string()),
        }
    }
}

/// Opens `path` for reading and checks that it is still the file `expected` describes
/// (the one the route looked up and whose ETag it will send).
fn open_checked(path: &Path, expected: FileIdentity) -> Result<File, GifError> {
    let (file, meta) = match open_regular(path) {
        Ok(opened) => opened,
        // Gone, or no longer a regular file: not the file the route looked up.
        Err(OpenError::NotRegular) => return Err(GifError::SourceChanged),
        Err(OpenError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(GifError::SourceChanged);
        }
        Err(OpenError::Io(e)) => return Err(GifError::Io(format!("cannot open GIF: {e}"))),
    };
    if FileIdentity::of(&meta) != expected {
        return Err(GifError::SourceChanged);
    }
    Ok(file)
}

/// A still that is ready: its name in the derived folder, and its bytes when this
/// request rendered it (so it can be answered even if the file was evicted at once).
#[derive(Debug, Clone)]
pub struct Still {
    /// File name under [`Gifs::derived_root`].
    pub name: String,
    /// The PNG, when this call rendered it.
    pub fresh: Option<Bytes>,
}

/// Counters of GIF work, for metrics (and for tests that check work is not repeated).
#[derive(Debug, Default)]
pub struct GifCounters {
    /// GIFs parsed for metadata.
    pub infos_parsed: Counter,
    /// Stills rendered and written.
    pub stills_rendered: Counter,
}

impl GifCounters {
    /// Registers `oip_media_gif_work_total{kind}`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "gif_work",
            "GIF decoding work: metadata parses and stills rendered",
            crate::metrics::by_kind([
                ("info_parsed", &self.infos_parsed),
                ("still_rendered", &self.stills_rendered),
            ]),
        );
    }
}

/// GIF metadata and stills, shared by every route.
pub struct Gifs {
    counters: Arc<GifCounters>,
    limits: GifLimits,
    widths: Vec<u32>,
    workers: Gate,
    /// Test hook: slow decodes (see [`Gifs::inject_decode_stall`]).
    stall: Arc<Stall>,
    info: quick_cache::sync::Cache<FileIdentity, Result<GifInfo, GifError>>,
    renders: quick_cache::sync::Cache<String, Result<(), GifError>>,
    derived: Arc<DerivedDir>,
    fs: FsPool,
}

impl Gifs {
    /// Builds the workers and caches and opens (creating it if needed) the derived
    /// folder; fails only when that folder cannot be created or listed. The derived
    /// folder's filesystem calls run on `fs`.
    pub fn new(
        config: &GifSettings,
        derived: &DerivedSettings,
        fs: FsPool,
    ) -> std::io::Result<Gifs> {
        let entries = config.gif_info_cache_entries.max(1);
        Ok(Gifs {
            counters: Arc::default(),
            limits: GifLimits::new(config),
            widths: config.still_widths.clone(),
            workers: Gate::new(GateSettings {
                max_in_flight: config.still_workers.max(1),
                max_queue: config.still_worker_queue,
                queue_timeout: config.still_worker_timeout,
                retry_after_secs: 1,
                max_stalled: 0,
            }),
            stall: Arc::default(),
            info: quick_cache::sync::Cache::new(entries),
            renders: quick_cache::sync::Cache::new(entries),
            derived: Arc::new(DerivedDir::open(
                &derived.derived_dir,
                derived.derived_max_bytes,
            )?),
            fs,
        })
    }

    /// Work done so far.
    pub fn counters(&self) -> &GifCounters {
        &self.counters
    }

    /// Registers the work counters (`oip_media_gif_work_total{kind}`), the derived
    /// folder's state (`oip_media_derived_*`) and the decoding
    /// workers' admission (`oip_media_gif_workers_*`: slots in use, waiting decodes,
    /// admitted and shed).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        self.counters.register(registry);
        self.derived.register(registry);
        self.workers.register(
            registry.sub_registry_with_prefix("gif_workers"),
            crate::admission::PermitUnit::Request,
        );
    }

    /// The decoding workers' admission (slots in use, waiting decodes).
    pub fn workers(&self) -> &Gate {
        &self.workers
    }

    /// Test hook: from now on every decode (still render or `/info` parse) holds its
    /// worker up to `stall` longer before it starts, as if the GIF were slow to decode;
    /// `None` ends the stall and wakes stalled decodes at once. Not a setting: it lets
    /// tests fill the workers deterministically, which no GIF of a sane size can.
    #[doc(hidden)]
    pub fn inject_decode_stall(&self, stall: Option<Duration>) {
        self.stall.set(stall);
    }

    /// Widths a still may be asked for.
    pub fn widths(&self) -> &[u32] {
        &self.widths
    }

    /// The folder stills are served from.
    pub fn derived_root(&self) -> &Root {
        self.derived.root()
    }

    /// The derived folder (for its byte count).
    pub fn derived(&self) -> &DerivedDir {
        &self.derived
    }

    /// The derived folder, shared: the transcoder writes its variants there, under the
    /// same byte bound and eviction as stills.
    pub fn shared_derived(&self) -> Arc<DerivedDir> {
        Arc::clone(&self.derived)
    }

    /// The configured GIF limits (checked before any work, by the transcoder too).
    pub fn limits(&self) -> GifLimits {
        self.limits
    }

    /// True when `name` is in the derived folder (a `stat`, on the filesystem pool).
    async fn derived_contains(&self, name: &str) -> Result<bool, GifError> {
        let derived = Arc::clone(&self.derived);
        let name = name.to_owned();
        self.fs
            .run(move || derived.contains(&name))
            .await
            .map_err(GifError::Busy)
    }

    /// Runs `work` on the blocking pool once a worker slot is free; waits for one in a
    /// queue bounded in length and time, else fails with [`GifError::WorkersBusy`].
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, GifError> + Send + 'static,
    ) -> Result<T, GifError> {
        let permit = self
            .workers
            .acquire()
            .await
            .map_err(GifError::WorkersBusy)?;
        let stall = Arc::clone(&self.stall);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            stall.wait();
            work()
        })
        .await
        .map_err(|e| GifError::Io(format!("GIF worker failed: {e}")))?
    }

    /// Metadata of the GIF at `path` (confined, real path) whose identity is
    /// `identity`; parsed once per file version, concurrent callers wait for one parse.
    pub async fn info(&self, path: PathBuf, identity: FileIdentity) -> Result<GifInfo, GifError> {
        let limits = self.limits;
        let counters = Arc::clone(&self.counters);
        let outcome = self
            .info
            .get_or_insert_async(&identity, async {
                match self
                    .blocking(move || {
                        counters.infos_parsed.inc();
                        meta::read_info(&path, identity, &limits)
                    })
                    .await
                {
                    Err(error) if !error.is_about_the_file() => Err(error),
                    settled => Ok(settled),
                }
            })
            .await;
        outcome.and_then(|settled| settled)
    }

    /// Makes sure the still of the GIF at `path` (identity `identity`) at `width`
    /// (`None`: the GIF's own size) in `format` exists in the derived folder, rendering
    /// it if not. Concurrent callers for the same still share one render.
    pub async fn still(
        &self,
        path: PathBuf,
        identity: FileIdentity,
        width: Option<u32>,
        format: StillFormat,
    ) -> Result<Still, GifError> {
        let name = self.derived.still_name(identity, width, format.extension());
        if self.derived_contains(&name).await? {
            return Ok(Still { name, fresh: None });
        }
        if matches!(self.renders.peek(&name), Some(Ok(()))) {
            // Either a render finished since the check above, or the file it wrote has
            // been evicted since: look again before forgetting the success.
            if self.derived_contains(&name).await? {
                return Ok(Still { name, fresh: None });
            }
            self.renders.remove(&name);
        }
        let mut fresh = None;
        let limits = self.limits;
        let derived = Arc::clone(&self.derived);
        let counters = Arc::clone(&self.counters);
        let key = name.clone();
        let outcome = self
            .renders
            .get_or_insert_async(&name, async {
                let rendered = self
                    .blocking(move || {
                        counters.stills_rendered.inc();
                        still::render(&path, identity, width, format, &limits).map(Bytes::from)
                    })
                    .await;
                // Writing (temp file, fsync, rename) and the eviction scan it may start
                // are filesystem work: on the filesystem pool, not a render worker. When
                // the pool cannot take it, or the folder cannot be written (unusable,
                // read-only, full: the folder reports it), the image in hand is still
                // the answer; the next request finds no file and renders again.
                let stored = match rendered {
                    Ok(png) => {
                        let written = png.clone();
                        match self.fs.run(move || derived.store(&key, &written)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(error)) => {
                                tracing::debug!(%error, "still rendered but not written; answered from memory");
                            }
                            Err(busy) => {
                                tracing::debug!(%busy, "still rendered but not written");
                            }
                        }
                        Ok(png)
                    }
                    Err(error) => Err(error),
                };
                match stored {
                    Ok(png) => {
                        fresh = Some(png);
                        Ok(Ok(()))
                    }
                    Err(error) if !error.is_about_the_file() => Err(error),
                    Err(error) => Ok(Err(error)),
                }
            })
            .await;
        outcome.and_then(|settled| settled)?;
        Ok(Still { name, fresh })
    }
}
