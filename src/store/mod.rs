//! Memory-mapped files behind every media route: opened once, mapped once, kept in a
//! cache bounded by entry count and mapped bytes, and revalidated against the file's
//! identity so a replaced file is noticed.
//!
//! A mapped file keeps its descriptor open, so that response bodies can be sent from it
//! with `sendfile(2)` (see `server::zero_copy`). Open descriptors are therefore bounded
//! by the cache's entries plus the responses under way that still hold an evicted file;
//! start-up checks that this fits `RLIMIT_NOFILE` (see `server::fd_budget`).
//!
//! # Nothing here blocks an async worker
//! Every filesystem call — the confinement check (`canonicalize`), the open, the `fstat`,
//! the `mmap`, the revalidating `stat` — runs on the [`FsPool`], within its bounds.
//! Files are opened with `O_NONBLOCK` and refused unless they are regular files
//! ([`open_regular`]), so a FIFO or a device named like a GIF answers 404 at once.
//!
//! # The revalidation window (`--revalidate-window`, ≤ 1 s)
//! As nginx's `open_file_cache_valid`: a cached mapping checked less than one window
//! ago is served with no syscall at all (a clock read and a cache lookup). The first
//! request after the window `stat`s the path once; same identity (device, inode, size,
//! mtime) → served and trusted for another window; different → mapped again. So:
//! - a file renamed into place is served at most one window after the rename (the
//!   window is counted from *before* the `stat` that last vouched for the old file);
//! - a response never mixes two versions: it holds one `Arc<MappedFile>`, one mapping
//!   of one inode, and its headers are built from that same file;
//! - when the pool refuses or times out the `stat` (the filesystem hangs), the cached
//!   mapping is served as it is (counted as `stale`): its bytes are a complete earlier
//!   version, and a hung mount must not take down files that are already in memory.
//!   The next request tries the `stat` again.
//!
//! The revalidating `stat` goes to the pool rather than running inline: on a local disk
//! it would take a microsecond, but a `stat` of a cached path on a hung network mount
//! blocks like any other call, and inline it would block the worker that every other
//! connection on it waits for. The window is what makes the hop cheap: at most one per
//! cached file per window, whatever the request rate, while the hot path — a cached
//! file inside its window — makes no syscall and no hop at all. A file used in the second
//! half of its window is `stat`ed ahead of time, in a batch with the others due
//! ([`refresh`]): a few pool jobs a second instead of one hop per hot file, and no request
//! of a hot file waits for its `stat`.

mod mapping;
mod refresh;
mod regular;
pub mod settings;

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;
use prometheus_client::registry::Registry;

use crate::fs_pool::{FsPool, FsPoolError};
use crate::http::conditional::EntityTag;
use crate::http::file_head::{Described, FileHead};
use crate::metrics::{ReadAtScrape, ShardedCounter, by_kind};
pub use regular::{OpenError, open_regular};
pub use settings::StoreSettings;

/// What makes a file "the same file": if any of these change, the path now names a
/// different file (renamed into place, or rewritten) and must be mapped again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    /// Device of the inode.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub len: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
}

impl FileIdentity {
    /// The identity of the file `meta` describes. Public so that caches of things
    /// derived from a file (manifests, GIF metadata, stills) can be keyed and revalidated
    /// the same way the mapping cache is.
    pub fn of(meta: &Metadata) -> FileIdentity {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// One mapped file: its bytes (a mapping, or empty), the open file behind them (for
/// `sendfile`), and what HTTP needs to describe it.
#[derive(Debug)]
pub struct MappedFile {
    /// The whole file. Slices of it are zero-copy; never read them in user space
    /// (see the `mapping` module for why).
    pub bytes: Bytes,
    /// Identity at the time of mapping.
    pub identity: FileIdentity,
    /// Modification time (for `Last-Modified` and the indexer-compatible ETag).
    pub modified: SystemTime,
    /// The file `bytes` maps, kept open so the socket can `sendfile` from it at the
    /// offset a slice of `bytes` has in the mapping. `None` for bytes held in memory
    /// (a still rendered and evicted at once) and for empty files (nothing to send).
    file: Option<File>,
    /// The header values that describe this version, rendered on first use.
    validators: OnceLock<FileValidators>,
    /// The fields of this version's whole-file `200` as the first route to send one
    /// described it, rendered once (see [`MappedFile::whole_file_head`]).
    whole_file_head: OnceLock<Option<Arc<FileHead>>>,
}

/// The header values of one file version that every response of it repeats, rendered
/// once per mapping (a replaced file gets a new mapping, hence new values) instead of
/// once per request: the indexer's weak ETag, `Last-Modified`, and the whole file's
/// `Content-Length`. Cloning a value shares its bytes.
#[derive(Debug)]
pub struct FileValidators {
    /// `W/"<size hex>-<mtime ms hex>"`, the indexer's tag (its header value is cached
    /// inside it as well).
    pub etag: EntityTag,
    /// `Last-Modified` of the file's own modification time (`None` for a time HTTP
    /// dates cannot express).
    pub last_modified: Option<HeaderValue>,
    /// `Content-Length` of the whole file.
    pub content_length: HeaderValue,
}

impl MappedFile {
    /// Maps `file`, which [`open_regular`] opened and described as `meta`. The one place
    /// a `MappedFile` of a file on disk is built: `file` is the descriptor that was
    /// checked to be a regular file, so a send path that needs to keep it keeps that
    /// one. Blocking (`mmap`): call it on the filesystem pool.
    pub fn map(file: File, meta: &Metadata) -> io::Result<MappedFile> {
        let bytes = mapping::map_file(&file, meta.len())?;
        Ok(MappedFile {
            // Kept for sendfile; an empty file has no mapping, hence nothing to send
            // from: close it now.
            file: (!bytes.is_empty()).then_some(file),
            bytes,
            identity: FileIdentity::of(meta),
            modified: meta.modified().unwrap_or(UNIX_EPOCH),
            validators: OnceLock::new(),
            whole_file_head: OnceLock::new(),
        })
    }

    /// Bytes that live only in memory, described as a file of that length modified at
    /// `modified` (sent with `writev`: there is no file to `sendfile` from).
    pub fn in_memory(bytes: Bytes, modified: SystemTime) -> MappedFile {
        MappedFile {
            identity: FileIdentity {
                dev: 0,
                ino: 0,
                len: bytes.len() as u64,
                mtime_ns: 0,
            },
            bytes,
            modified,
            file: None,
            validators: OnceLock::new(),
            whole_file_head: OnceLock::new(),
        }
    }

    /// The open file behind the mapping, if there is one to `sendfile` from.
    pub fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// The open file and the offset in it of `slice`, when `slice` lies wholly inside
    /// this file's mapping: the bytes a socket may `sendfile` instead of copying them.
    /// Compares addresses only; never reads the bytes.
    pub fn file_range_of(&self, slice: &[u8]) -> Option<(&File, u64)> {
        let file = self.file.as_ref()?;
        let base = self.bytes.as_ptr() as usize;
        let start = slice.as_ptr() as usize;
        let offset = start.checked_sub(base)?;
        (offset.checked_add(slice.len())? <= self.bytes.len()).then_some((file, offset as u64))
    }

    /// This version's header values, rendered by the first request that asks.
    pub fn validators(&self) -> &FileValidators {
        self.validators.get_or_init(|| {
            let etag = EntityTag::for_file(self.len(), self.mtime_ms());
            // Rendered now, so that later requests only clone it.
            drop(etag.to_header_value());
            FileValidators {
                etag,
                last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(self.modified)).ok(),
                content_length: HeaderValue::from(self.len()),
            }
        })
    }

    /// The fields of a whole-file `200` of this version for a route that describes it
    /// as `described`, or `None` when the head rendered for this version describes it
    /// otherwise (another route maps the same file with another `Cache-Control`, say:
    /// that route builds its fields per request), would not fit one (see `FileHead`), or
    /// the file is empty. Rendered by the first request that asks, with the validators,
    /// and kept with the mapping (~750 bytes): a replaced file is a new mapping, hence a
    /// new head.
    pub fn whole_file_head(&self, described: Described<'_>) -> Option<&Arc<FileHead>> {
        if self.is_empty() {
            return None;
        }
        let head = self.whole_file_head.get_or_init(|| {
            let last_modified = self.last_modified_value(described.last_modified);
            FileHead::new(
                described,
                last_modified,
                self.validators().content_length.clone(),
            )
            .map(Arc::new)
        });
        head.as_ref().filter(|head| head.fits(described))
    }

    /// `Last-Modified` of this version (rendered once), or of `instead` when a route
    /// gives another time (a variant keeps its source's; rendered per call). `None` for a
    /// time HTTP dates cannot express.
    pub fn last_modified_value(&self, instead: Option<SystemTime>) -> Option<HeaderValue> {
        match instead {
            None => self.validators().last_modified.clone(),
            Some(modified) => HeaderValue::from_str(&httpdate::fmt_http_date(modified)).ok(),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.identity.len
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.identity.len == 0
    }

    /// Modification time in whole milliseconds since the epoch, as Node's `stat.mtimeMs`
    /// truncates it (the indexer's ETags are built from it).
    pub fn mtime_ms(&self) -> u64 {
        self.modified
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX)
    }
}

/// Why a file could not be served. `NotFound` and `TooLarge` are the client's "not
/// found"; `Busy` is "try again shortly" (503); `Io` is a server error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such file, not a regular file, or a path that resolves outside its root.
    #[error("not found")]
    NotFound,
    /// Larger than `--max-file-size`.
    #[error("file of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        /// The file's size.
        len: u64,
        /// The configured limit.
        max: u64,
    },
    /// The filesystem pool refused the call or it timed out (see `--fs-*`).
    #[error("filesystem busy: {0}")]
    Busy(#[source] FsPoolError),
    /// The file exists but could not be opened or mapped.
    #[error("cannot map file: {0}")]
    Io(#[source] io::Error),
}

impl StoreError {
    /// The store's view of a failed [`open_regular`] of `path`.
    pub fn from_open(path: &Path, error: OpenError) -> StoreError {
        match error {
            OpenError::NotRegular => {
                tracing::warn!(path = %path.display(), "refused: not a regular file");
                StoreError::NotFound
            }
            OpenError::Io(error) => not_found_or_io(error),
        }
    }
}

/// How a root whose files must be checked before they are served opens them: the
/// derived folder ([`crate::gif::derived`]) checks the folder and then the file, on the
/// descriptors it opened, so a file planted by another user is never served. Called on
/// the filesystem pool, for every mapping and every revalidation of the root's files.
pub trait GuardedOpen: Send + Sync + std::fmt::Debug {
    /// Opens `relative` (a checked relative path) and returns it with its metadata, or
    /// refuses it (`PermissionDenied`, which the store answers as "not found").
    fn open_checked(&self, relative: &Path) -> Result<(File, Metadata), OpenError>;
}

/// A media root, canonicalised once so that confinement checks compare real paths.
#[derive(Debug, Clone)]
pub struct Root {
    canonical: PathBuf,
    /// Names this root in the mapping cache's keys (see [`MapKey`]).
    id: u32,
    /// Opens (and checks) its files instead of the plain confined open.
    guard: Option<Arc<dyn GuardedOpen>>,
}

/// Hands out [`Root::id`]s.
static NEXT_ROOT_ID: AtomicU32 = AtomicU32::new(0);

impl Root {
    /// Resolves `path` (it must exist and be a directory). Blocking.
    pub fn open(path: &Path) -> io::Result<Root> {
        let canonical = std::fs::canonicalize(path)?;
        if !std::fs::metadata(&canonical)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        Ok(Root {
            canonical,
            id: NEXT_ROOT_ID.fetch_add(1, Ordering::Relaxed),
            guard: None,
        })
    }

    /// Like [`Root::open`], for a root whose files `guard` opens and checks.
    pub fn guarded(path: &Path, guard: Arc<dyn GuardedOpen>) -> io::Result<Root> {
        let mut root = Root::open(path)?;
        root.guard = Some(guard);
        Ok(root)
    }

    /// The canonical path of the root.
    pub fn path(&self) -> &Path {
        &self.canonical
    }

    /// The real path of `relative` (already checked by `http::path`) under this root,
    /// symlinks resolved; `NotFound` when it does not exist or resolves outside the root.
    /// For code that must `read()` a file rather than map it (GIF parsing) yet keep the
    /// same confinement as [`Store::open`]. Blocking (it walks the path): call it on the
    /// filesystem pool.
    pub fn resolve(&self, relative: &Path) -> Result<PathBuf, StoreError> {
        let full = self.canonical.join(relative);
        let canonical = std::fs::canonicalize(&full).map_err(not_found_or_io)?;
        if !canonical.starts_with(&self.canonical) {
            tracing::warn!(path = %full.display(), "refused: resolves outside its media root");
            return Err(StoreError::NotFound);
        }
        Ok(canonical)
    }
}

/// A media root that may not exist yet (the generated-audio folder): opened on first
/// use and then kept, so a folder created after start-up is picked up without a
/// restart, and a missing one costs a check on the filesystem pool per request
/// instead of a failed start.
#[derive(Debug)]
pub struct LazyRoot {
    path: PathBuf,
    root: std::sync::OnceLock<Root>,
}

impl LazyRoot {
    /// A root at `path`, opened now if it exists (blocking: for start-up).
    pub fn new(path: PathBuf) -> LazyRoot {
        let lazy = LazyRoot {
            root: std::sync::OnceLock::new(),
            path,
        };
        if let Ok(root) = Root::open(&lazy.path) {
            let _ = lazy.root.set(root);
        }
        lazy
    }

    /// The path as configured.
    pub fn configured_path(&self) -> &Path {
        &self.path
    }

    /// The root, if it was found at start-up or at an earlier [`LazyRoot::open`]. Makes
    /// no filesystem call.
    pub fn get(&self) -> Option<&Root> {
        self.root.get()
    }

    /// The root, looking for the folder again (on `fs`) if it was missing so far.
    pub async fn open(&self, fs: &FsPool) -> Result<Option<&Root>, FsPoolError> {
        if let Some(root) = self.root.get() {
            return Ok(Some(root));
        }
        let path = self.path.clone();
        let Ok(root) = fs.run(move || Root::open(&path)).await? else {
            return Ok(None);
        };
        Ok(Some(self.root.get_or_init(|| root)))
    }
}

/// A cached mapping and when the filesystem last vouched for it.
#[derive(Debug)]
struct Entry {
    file: Arc<MappedFile>,
    /// [`Store::clock`] reading taken before the `open` or `stat` that last found this
    /// file at its path.
    checked_ns: AtomicU64,
    /// Queued for a refresh-ahead sweep (see [`refresh`]).
    refreshing: AtomicBool,
}

/// The mapping cache's key: a root and the checked relative path under it, as the
/// request named it. Looked up as a borrowed [`MapQuery`], so a hit builds no path:
/// joining the root and hashing a `PathBuf` (which walks its components) cost about
/// 2,000 instructions per request under callgrind. Two spellings of one file (through
/// a symlink, say) are two entries of the same mapping's worth, as bounded as any.
#[derive(Debug, PartialEq, Eq, Hash)]
struct MapKey {
    root: u32,
    relative: Box<[u8]>,
}

/// A [`MapKey`] borrowed from the request. Hashes exactly as the key it stands for
/// (the same fields, in the same order, of the same types).
#[derive(Debug, Hash)]
struct MapQuery<'a> {
    root: u32,
    relative: &'a [u8],
}

impl<'a> MapQuery<'a> {
    fn new(root: &Root, relative: &'a Path) -> MapQuery<'a> {
        MapQuery {
            root: root.id,
            relative: relative.as_os_str().as_bytes(),
        }
    }

    fn to_key(&self) -> MapKey {
        MapKey {
            root: self.root,
            relative: self.relative.into(),
        }
    }
}

impl quick_cache::Equivalent<MapKey> for MapQuery<'_> {
    fn equivalent(&self, key: &MapKey) -> bool {
        self.root == key.root && self.relative == &*key.relative
    }
}

/// Weighs a cache entry so that one capacity enforces both bounds: an entry costs its
/// size, but never less than `bytes / entries`, hence total weight ≤ capacity implies
/// both Σ size ≤ bytes and count ≤ entries.
#[derive(Clone)]
struct MapWeighter {
    floor: u64,
}

impl quick_cache::Weighter<MapKey, Arc<Entry>> for MapWeighter {
    fn weight(&self, _key: &MapKey, entry: &Arc<Entry>) -> u64 {
        entry.file.len().max(self.floor)
    }
}

/// Counters of the mapping cache (`oip_media_map_cache_lookups_total{kind}`).
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Lookups answered by a cached mapping within its window: no syscall.
    pub hits: ShardedCounter,
    /// Lookups past the window whose `stat` found the same file.
    pub revalidated: ShardedCounter,
    /// Files opened and mapped (first use, eviction, or replaced file).
    pub maps: ShardedCounter,
    /// Cached mappings found stale (file replaced) and remapped.
    pub replaced: ShardedCounter,
    /// Cached mappings served unchecked because the filesystem did not answer the
    /// revalidating `stat` in time.
    pub stale: ShardedCounter,
}

/// The bounded mapping cache shared by every route.
pub struct Store {
    cache: quick_cache::sync::Cache<MapKey, Arc<Entry>, MapWeighter>,
    max_file_size: u64,
    counters: StoreCounters,
    fs: FsPool,
    window_ns: u64,
    epoch: Instant,
    refresh: Arc<refresh::RefreshAhead>,
}

impl Store {
    /// An empty cache with the configured bounds, making its filesystem calls on `fs`.
    pub fn new(settings: &StoreSettings, fs: FsPool) -> Store {
        let entries = settings.map_cache_entries.max(1);
        let bytes = settings.map_cache_bytes.max(1);
        let floor = (bytes / entries as u64).max(1);
        let window_ns = u64::try_from(settings.revalidate_window.as_nanos()).unwrap_or(u64::MAX);
        let epoch = Instant::now();
        Store {
            cache: quick_cache::sync::Cache::with_weighter(entries, bytes, MapWeighter { floor }),
            max_file_size: settings.max_file_size,
            counters: StoreCounters::default(),
            refresh: Arc::new(refresh::RefreshAhead::new(fs.clone(), window_ns, epoch)),
            fs,
            window_ns,
            epoch,
        }
    }

    /// Counters for metrics.
    pub fn counters(&self) -> &StoreCounters {
        &self.counters
    }

    /// Registers the cache's metrics: lookups by result, and its size read at scrape
    /// time (through a weak reference, so the registry keeps no store alive).
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        let store = Arc::downgrade(self);
        registry.register(
            "map_cache_entries",
            "Files mapped in the cache",
            ReadAtScrape::gauge(move || store.upgrade().map_or(0, |s| s.cached_entries() as u64)),
        );
        let store = Arc::downgrade(self);
        registry.register(
            "map_cache_weight_bytes",
            "Mapped bytes held by the cache (upper bound, see docs)",
            ReadAtScrape::gauge(move || store.upgrade().map_or(0, |s| s.cached_weight())),
        );
        let c = &self.counters;
        registry.register(
            "map_cache_lookups",
            "Mapping cache lookups by result",
            by_kind([
                ("hit", &c.hits),
                ("refreshed", &self.refresh.refreshed),
                ("revalidated", &c.revalidated),
                ("mapped", &c.maps),
                ("replaced", &c.replaced),
                ("stale", &c.stale),
            ]),
        );
    }

    /// Mappings currently cached.
    pub fn cached_entries(&self) -> usize {
        self.cache.len()
    }

    /// Weight currently cached: Σ max(size, floor) — an upper bound on mapped bytes.
    pub fn cached_weight(&self) -> u64 {
        self.cache.weight()
    }

    /// Monotonic nanoseconds since the store was made (a vDSO clock read, no syscall).
    fn clock(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The mapped file at `relative` under `root`. `relative` must already be a decoded,
    /// checked relative path (see `http::path`); symlinks are followed but the result
    /// must stay inside the root, and it must be a regular file.
    ///
    /// A cached mapping within its revalidation window is answered without any
    /// syscall; everything else runs on the filesystem pool (see the module docs).
    pub async fn open(&self, root: &Root, relative: &Path) -> Result<Arc<MappedFile>, StoreError> {
        let key = MapQuery::new(root, relative);
        if let Some(entry) = self.cache.get(&key) {
            let checking = self.clock();
            let age = checking.saturating_sub(entry.checked_ns.load(Ordering::Relaxed));
            if age < self.window_ns {
                if self.refresh.is_due(age) && !entry.refreshing.load(Ordering::Relaxed) {
                    self.refresh.queue(
                        &entry,
                        root.canonical.join(relative),
                        guarded(root, relative),
                    );
                }
                self.counters.hits.inc();
                return Ok(Arc::clone(&entry.file));
            }
            let full = root.canonical.join(relative);
            let (path, guarded) = (full.clone(), guarded(root, relative));
            let stat = move || {
                let guarded = guarded.as_ref().map(|(g, r)| (g, r.as_path()));
                refresh::stat_file(&path, guarded)
            };
            match self.fs.run(stat).await {
                Ok(Ok(meta)) if FileIdentity::of(&meta) == entry.file.identity => {
                    entry.checked_ns.fetch_max(checking, Ordering::Relaxed);
                    // A sweep that failed to vouch for it may have left it marked.
                    entry.refreshing.store(false, Ordering::Relaxed);
                    self.counters.revalidated.inc();
                    return Ok(Arc::clone(&entry.file));
                }
                Ok(Ok(_)) => {
                    self.counters.replaced.inc();
                }
                Ok(Err(error)) => {
                    self.cache.remove(&key);
                    return Err(not_found_or_io(error));
                }
                Err(busy) => {
                    self.counters.stale.inc();
                    tracing::debug!(path = %full.display(), %busy, "serving a cached mapping unchecked");
                    return Ok(Arc::clone(&entry.file));
                }
            }
        }
        let mapping = self.clock();
        let (job_root, job_relative) = (root.clone(), relative.to_path_buf());
        let max_file_size = self.max_file_size;
        let mapped = self
            .fs
            .run(move || map_confined(&job_root, &job_relative, max_file_size))
            .await
            .map_err(StoreError::Busy)?;
        let file = match mapped {
            Ok(file) => Arc::new(file),
            Err(error) => {
                // A replaced file that can no longer be served must not stay cached.
                self.cache.remove(&key);
                return Err(error);
            }
        };
        self.counters.maps.inc();
        let entry = Entry {
            file: Arc::clone(&file),
            checked_ns: AtomicU64::new(mapping),
            refreshing: AtomicBool::new(false),
        };
        self.cache.insert(key.to_key(), Arc::new(entry));
        Ok(file)
    }
}

/// The guard of `root`, if it has one, with the path it opens.
fn guarded(root: &Root, relative: &Path) -> Option<(Arc<dyn GuardedOpen>, PathBuf)> {
    root.guard
        .as_ref()
        .map(|guard| (Arc::clone(guard), relative.to_path_buf()))
}

/// Confines, opens (regular files only) and maps `relative` under `root`. Blocking:
/// runs on the filesystem pool.
fn map_confined(
    root: &Root,
    relative: &Path,
    max_file_size: u64,
) -> Result<MappedFile, StoreError> {
    let (file, meta) = match &root.guard {
        Some(guard) => guard
            .open_checked(relative)
            .map_err(|error| StoreError::from_open(relative, error))?,
        None => {
            let canonical = root.resolve(relative)?;
            open_regular(&canonical).map_err(|error| StoreError::from_open(&canonical, error))?
        }
    };
    if meta.len() > max_file_size {
        return Err(StoreError::TooLarge {
            len: meta.len(),
            max: max_file_size,
        });
    }
    MappedFile::map(file, &meta).map_err(StoreError::Io)
}

fn not_found_or_io(error: io::Error) -> StoreError {
    match error.kind() {
        io::ErrorKind::NotFound
        | io::ErrorKind::NotADirectory
        | io::ErrorKind::PermissionDenied => StoreError::NotFound,
        _ if error.raw_os_error() == Some(libc::ELOOP) => StoreError::NotFound,
        _ => StoreError::Io(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::fs_pool::FsPoolSettings;

    fn pool() -> FsPool {
        FsPool::new(FsPoolSettings {
            fs_threads: 2,
            fs_queue: 16,
            fs_timeout: Duration::from_millis(300),
        })
        .unwrap()
    }

    fn config_with(tweak: impl FnOnce(&mut Config)) -> Config {
        let mut config = Config::for_media_dir("/nonexistent");
        tweak(&mut config);
        config
    }

    fn store_with(entries: usize, bytes: u64) -> Store {
        let config = config_with(|c| {
            c.store.map_cache_entries = entries;
            c.store.map_cache_bytes = bytes;
        });
        Store::new(&config.store, pool())
    }

    fn store_with_window(window: Duration) -> Store {
        Store::new(
            &config_with(|c| c.store.revalidate_window = window).store,
            pool(),
        )
    }

    /// Replaces `name` the way writers do: a new file renamed into place.
    fn replace(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::write(dir.join("replacing.tmp"), bytes).unwrap();
        std::fs::rename(dir.join("replacing.tmp"), dir.join(name)).unwrap();
    }

    fn count(counter: &ShardedCounter) -> u64 {
        counter.get()
    }

    #[tokio::test]
    async fn maps_and_caches_then_notices_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("a.gif"), b"first").unwrap();
        let store = store_with_window(Duration::ZERO);
        let first = store.open(&root, Path::new("a.gif")).await.unwrap();
        assert_eq!(&first.bytes[..], b"first");
        let again = store.open(&root, Path::new("a.gif")).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(count(&store.counters().revalidated), 1, "window 0: a stat");

        replace(dir.path(), "a.gif", b"second!");
        let replaced = store.open(&root, Path::new("a.gif")).await.unwrap();
        assert_eq!(&replaced.bytes[..], b"second!");
        assert_eq!(count(&store.counters().replaced), 1);
        // The old mapping stays valid for whoever still holds it.
        assert_eq!(&first.bytes[..], b"first");
    }

    #[tokio::test]
    async fn a_file_versions_head_is_rendered_once_and_only_for_its_description() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("a.gif"), b"first").unwrap();
        std::fs::write(dir.path().join("empty.gif"), b"").unwrap();
        let store = store_with_window(Duration::ZERO);
        let gif = HeaderValue::from_static("image/gif");
        let a_day = HeaderValue::from_static("public, max-age=86400");
        let file = store.open(&root, Path::new("a.gif")).await.unwrap();
        let etag = file.validators().etag.clone();
        let described = Described {
            content_type: &gif,
            cache_control: &a_day,
            etag: &etag,
            last_modified: None,
        };
        let head = Arc::clone(file.whole_file_head(described).expect("a head"));
        let lines = std::str::from_utf8(head.lines()).unwrap();
        assert!(lines.contains("content-length: 5\r\n"), "{lines}");
        assert!(lines.contains("content-type: image/gif\r\n"), "{lines}");
        let again = store.open(&root, Path::new("a.gif")).await.unwrap();
        assert!(
            Arc::ptr_eq(&head, again.whole_file_head(described).unwrap()),
            "the same version's requests share one head"
        );
        // Another route's description of the same file builds its own fields.
        let no_store = HeaderValue::from_static("no-store");
        assert!(
            again
                .whole_file_head(Described {
                    cache_control: &no_store,
                    ..described
                })
                .is_none()
        );
        // A replaced file is a new version with a new head.
        replace(dir.path(), "a.gif", b"second!");
        let replaced = store.open(&root, Path::new("a.gif")).await.unwrap();
        let etag = replaced.validators().etag.clone();
        let new_head = replaced
            .whole_file_head(Described {
                etag: &etag,
                ..described
            })
            .unwrap();
        assert!(
            std::str::from_utf8(new_head.lines())
                .unwrap()
                .contains("content-length: 7\r\n")
        );
        // An empty file has no body, so no app `Content-Length` to render.
        let empty = store.open(&root, Path::new("empty.gif")).await.unwrap();
        let etag = empty.validators().etag.clone();
        assert!(
            empty
                .whole_file_head(Described {
                    etag: &etag,
                    ..described
                })
                .is_none()
        );
    }

    #[tokio::test]
    async fn the_same_name_under_two_roots_is_two_files() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(one.path().join("a.gif"), b"one").unwrap();
        std::fs::write(two.path().join("a.gif"), b"two").unwrap();
        let (root_one, root_two) = (
            Root::open(one.path()).unwrap(),
            Root::open(two.path()).unwrap(),
        );
        let store = store_with_window(Duration::from_secs(3600));
        for _ in 0..2 {
            let a = store.open(&root_one, Path::new("a.gif")).await.unwrap();
            let b = store.open(&root_two, Path::new("a.gif")).await.unwrap();
            assert_eq!((&a.bytes[..], &b.bytes[..]), (&b"one"[..], &b"two"[..]));
        }
        let c = store.counters();
        assert_eq!((count(&c.maps), count(&c.hits)), (2, 2));
        assert_eq!(store.cached_entries(), 2);
    }

    #[tokio::test]
    async fn within_the_window_a_cached_mapping_costs_no_syscall() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("a.gif"), b"first").unwrap();
        // A window far longer than the test: every lookup after the first is a hit.
        let store = store_with_window(Duration::from_secs(3600));
        let first = store.open(&root, Path::new("a.gif")).await.unwrap();
        replace(dir.path(), "a.gif", b"second!");
        std::fs::remove_file(dir.path().join("a.gif")).unwrap();
        // Even a deleted file is not noticed: nothing looked at the filesystem.
        for _ in 0..10 {
            let again = store.open(&root, Path::new("a.gif")).await.unwrap();
            assert!(Arc::ptr_eq(&first, &again));
        }
        let c = store.counters();
        assert_eq!((count(&c.hits), count(&c.maps)), (10, 1));
        assert_eq!(count(&c.revalidated) + count(&c.replaced), 0);
        assert_eq!(store.fs.counters().completed.get(), 1);
    }

    #[tokio::test]
    async fn a_renamed_in_file_is_served_at_most_one_window_later() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("a.gif"), b"first").unwrap();
        let window = Duration::from_millis(200);
        let store = store_with_window(window);
        let first = store.open(&root, Path::new("a.gif")).await.unwrap();
        replace(dir.path(), "a.gif", b"second!");
        let renamed = Instant::now();
        // Until the window is over the old version may be served, whole.
        let during = store.open(&root, Path::new("a.gif")).await.unwrap();
        assert!(renamed.elapsed() >= window || Arc::ptr_eq(&first, &during));
        tokio::time::sleep(window).await;
        let after = store.open(&root, Path::new("a.gif")).await.unwrap();
        assert_eq!(&after.bytes[..], b"second!");
        assert_eq!(count(&store.counters().replaced), 1);
    }

    /// Opens `name` every 20 ms for `run`; returns what each open served, with when.
    async fn keep_opening(
        store: &Store,
        root: &Root,
        name: &str,
        run: Duration,
    ) -> Vec<(Instant, Result<Arc<MappedFile>, StoreError>)> {
        let started = Instant::now();
        let mut served = Vec::new();
        while started.elapsed() < run {
            served.push((Instant::now(), store.open(root, Path::new(name)).await));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        served
    }

    #[tokio::test]
    async fn a_hot_file_is_refreshed_ahead_and_no_request_waits_for_its_stat() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("a.gif"), b"hot").unwrap();
        let store = store_with_window(Duration::from_millis(400));
        let served = keep_opening(&store, &root, "a.gif", Duration::from_millis(1500)).await;
        assert!(served.iter().all(|(_, r)| r.is_ok()));
        // Past the last sweep (window / 8 after the last queueing), so the counts settle.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let c = store.counters();
        let refreshed = count(&store.refresh.refreshed);
        assert_eq!(count(&c.maps), 1);
        assert_eq!(
            count(&c.revalidated),
            0,
            "no request found the window over: the sweeps kept it open"
        );
        assert!(refreshed >= 2, "about one sweep per window: {refreshed}");
        assert_eq!(count(&c.hits), served.len() as u64 - 1);
        // One pool job per sweep (one file each here), besides the first map.
        assert_eq!(store.fs.counters().completed.get(), 1 + refreshed);
    }

    /// Opens `0.gif` … `{files - 1}.gif`, each once.
    async fn open_all(store: &Store, root: &Root, files: usize) {
        for n in 0..files {
            store
                .open(root, Path::new(&format!("{n}.gif")))
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn the_refresh_queue_is_bounded_and_the_rest_revalidate_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let files = refresh::MAX_QUEUED * 3;
        for n in 0..files {
            std::fs::write(dir.path().join(format!("{n}.gif")), b"gif").unwrap();
        }
        let window = Duration::from_millis(800);
        let store = store_with_window(window);
        open_all(&store, &root, files).await;
        // Into the second half of every window at once: each file is due, one sweep takes
        // only the queue's worth.
        tokio::time::sleep(window / 2 + Duration::from_millis(20)).await;
        open_all(&store, &root, files).await;
        tokio::time::sleep(window / 8 + Duration::from_millis(150)).await;
        assert_eq!(
            count(&store.refresh.refreshed),
            refresh::MAX_QUEUED as u64,
            "the queue's bound"
        );
        // The others' windows run out; their requests re-stat them as before.
        tokio::time::sleep(window / 2).await;
        open_all(&store, &root, files).await;
        let c = store.counters();
        assert_eq!(count(&c.revalidated), (files - refresh::MAX_QUEUED) as u64);
        assert_eq!(count(&c.maps), files as u64);
    }

    #[tokio::test]
    async fn the_sweeps_reuse_their_queue_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let files = refresh::MAX_QUEUED;
        for n in 0..files {
            std::fs::write(dir.path().join(format!("{n}.gif")), b"gif").unwrap();
        }
        let window = Duration::from_millis(800);
        let store = store_with_window(window);
        open_all(&store, &root, files).await;
        let mut spares = Vec::new();
        for _ in 0..4 {
            // Into the second half of every window: each file is queued, then swept.
            tokio::time::sleep(window / 2 + Duration::from_millis(20)).await;
            open_all(&store, &root, files).await;
            tokio::time::sleep(window / 8 + Duration::from_millis(150)).await;
            spares.push(store.refresh.spare_buffer());
        }
        assert_eq!(count(&store.refresh.refreshed), 4 * files as u64);
        // Two buffers take turns (one fills while the other is swept); none is made anew.
        assert!(spares.iter().all(|&(_, room)| room >= files), "{spares:?}");
        assert_eq!(spares[0], spares[2], "{spares:?}");
        assert_eq!(spares[1], spares[3], "{spares:?}");
    }

    #[tokio::test]
    async fn a_hot_file_replaced_or_deleted_is_noticed_within_one_window() {
        let window = Duration::from_millis(400);
        for delete in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let root = Root::open(dir.path()).unwrap();
            std::fs::write(dir.path().join("a.gif"), b"first").unwrap();
            let store = store_with_window(window);
            // Hot for a while: its window is carried forward by the sweeps.
            keep_opening(&store, &root, "a.gif", Duration::from_millis(700)).await;
            assert!(count(&store.refresh.refreshed) >= 1);
            if delete {
                std::fs::remove_file(dir.path().join("a.gif")).unwrap();
            } else {
                replace(dir.path(), "a.gif", b"second!");
            }
            let changed = Instant::now();
            let served = keep_opening(&store, &root, "a.gif", Duration::from_millis(1000)).await;
            for (at, result) in served {
                if at.duration_since(changed) < window {
                    continue;
                }
                // One window after the change, every open sees it.
                match (delete, result) {
                    (true, Err(StoreError::NotFound)) => {}
                    (false, Ok(file)) => assert_eq!(&file.bytes[..], b"second!"),
                    (_, other) => panic!("delete {delete}: {other:?}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn a_hung_filesystem_serves_cached_mappings_and_refuses_misses() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("a.gif"), b"cached").unwrap();
        std::fs::write(dir.path().join("b.gif"), b"not yet").unwrap();
        let store = store_with_window(Duration::ZERO);
        let cached = store.open(&root, Path::new("a.gif")).await.unwrap();
        store.fs.inject_stall(Some(Duration::from_secs(30)));
        let started = Instant::now();
        let again = store.open(&root, Path::new("a.gif")).await.unwrap();
        assert!(Arc::ptr_eq(&cached, &again), "served as it is");
        assert_eq!(count(&store.counters().stale), 1);
        assert!(matches!(
            store.open(&root, Path::new("b.gif")).await,
            Err(StoreError::Busy(
                FsPoolError::TimedOut | FsPoolError::QueueFull
            ))
        ));
        assert!(started.elapsed() < Duration::from_secs(10), "bounded waits");
        store.fs.inject_stall(None);
    }

    #[tokio::test]
    async fn empty_files_directories_fifos_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("empty.gif"), b"").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(dir.path().join("fifo.gif"))
            .status();
        assert!(made.unwrap().success(), "mkfifo (coreutils)");
        let store = store_with(16, 1 << 20);
        assert!(
            store
                .open(&root, Path::new("empty.gif"))
                .await
                .unwrap()
                .is_empty()
        );
        for refused in ["sub", "nope", "fifo.gif"] {
            assert!(
                matches!(
                    store.open(&root, Path::new(refused)).await,
                    Err(StoreError::NotFound)
                ),
                "{refused}"
            );
        }
    }

    #[tokio::test]
    async fn symlinks_out_of_the_root_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
        std::fs::write(dir.path().join("real"), b"r").unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("inside")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        let store = store_with(16, 1 << 20);
        assert!(matches!(
            store.open(&root, Path::new("link")).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(
            &store.open(&root, Path::new("inside")).await.unwrap().bytes[..],
            b"r"
        );
    }

    #[tokio::test]
    async fn too_large_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![0u8; 2048]).unwrap();
        let root = Root::open(dir.path()).unwrap();
        let store = Store::new(&config_with(|c| c.store.max_file_size = 1024).store, pool());
        assert!(matches!(
            store.open(&root, Path::new("big")).await,
            Err(StoreError::TooLarge {
                len: 2048,
                max: 1024
            })
        ));
    }

    #[tokio::test]
    async fn cache_stays_within_entry_and_byte_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        for i in 0..200 {
            std::fs::write(dir.path().join(format!("f{i}")), vec![1u8; 100 + i]).unwrap();
        }
        // 10 entries, 4000 bytes: the floor is 400 bytes per entry.
        let store = store_with(10, 4000);
        for i in 0..200 {
            store
                .open(&root, Path::new(&format!("f{i}")))
                .await
                .unwrap();
            assert!(
                store.cached_entries() <= 10,
                "entries {}",
                store.cached_entries()
            );
            assert!(
                store.cached_weight() <= 4000,
                "weight {}",
                store.cached_weight()
            );
        }
    }

    #[tokio::test]
    async fn a_missing_root_appears_later() {
        let dir = tempfile::tempdir().unwrap();
        let lazy = LazyRoot::new(dir.path().join("generated"));
        let fs = pool();
        assert!(lazy.get().is_none());
        assert!(lazy.open(&fs).await.unwrap().is_none());
        std::fs::create_dir(dir.path().join("generated")).unwrap();
        assert!(lazy.open(&fs).await.unwrap().is_some());
        assert!(lazy.get().is_some(), "kept");
    }
}
