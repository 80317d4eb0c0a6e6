//! Memory-mapped files behind every media route: opened once, mapped once, kept in a
//! cache bounded by entry count and mapped bytes, and revalidated against the file's
//! identity on every lookup so a replaced file is noticed.
//!
//! A mapped file keeps its descriptor open, so that response bodies can be sent from it
//! with `sendfile(2)` (see `server::zero_copy`). Open descriptors are therefore bounded
//! by the cache's entries plus the responses under way that still hold an evicted file;
//! start-up checks that this fits `RLIMIT_NOFILE` (see `server::fd_budget`).

mod mapping;

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::config::Config;

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
}

impl MappedFile {
    /// Maps `file`, which `meta` (its `fstat`) describes, and keeps it open. The one
    /// place a `MappedFile` of a real file is built, whatever path opened it.
    pub fn map(file: File, meta: &Metadata) -> io::Result<MappedFile> {
        let bytes = mapping::map_file(&file, meta.len())?;
        Ok(MappedFile {
            // An empty file has no mapping, hence nothing to send from: close it now.
            file: (!bytes.is_empty()).then_some(file),
            bytes,
            identity: FileIdentity::of(meta),
            modified: meta.modified().unwrap_or(UNIX_EPOCH),
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

/// Why a file could not be served. Everything but `Io` is the client's "not found".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such file, a directory, or a path that resolves outside its root.
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
    /// The file exists but could not be opened or mapped.
    #[error("cannot map file: {0}")]
    Io(#[source] io::Error),
}

/// A media root, canonicalised once so that confinement checks compare real paths.
#[derive(Debug, Clone)]
pub struct Root {
    canonical: PathBuf,
}

impl Root {
    /// Resolves `path` (it must exist and be a directory).
    pub fn open(path: &Path) -> io::Result<Root> {
        let canonical = std::fs::canonicalize(path)?;
        if !std::fs::metadata(&canonical)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        Ok(Root { canonical })
    }

    /// The canonical path of the root.
    pub fn path(&self) -> &Path {
        &self.canonical
    }

    /// The real path of `relative` (already checked by `http::path`) under this root,
    /// symlinks resolved; `NotFound` when it does not exist or resolves outside the root.
    /// For code that must `read()` a file rather than map it (GIF parsing) yet keep the
    /// same confinement as [`Store::open`].
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
/// restart, and a missing one costs a `stat` per request instead of a failed start.
#[derive(Debug)]
pub struct LazyRoot {
    path: PathBuf,
    root: std::sync::OnceLock<Root>,
}

impl LazyRoot {
    /// A root at `path`, opened now if it exists.
    pub fn new(path: PathBuf) -> LazyRoot {
        let lazy = LazyRoot {
            path,
            root: std::sync::OnceLock::new(),
        };
        lazy.get();
        lazy
    }

    /// The path as configured.
    pub fn configured_path(&self) -> &Path {
        &self.path
    }

    /// The root, if the folder exists (now or at any earlier call).
    pub fn get(&self) -> Option<&Root> {
        if let Some(root) = self.root.get() {
            return Some(root);
        }
        let root = Root::open(&self.path).ok()?;
        Some(self.root.get_or_init(|| root))
    }
}

/// Weighs a cache entry so that one capacity enforces both bounds: an entry costs its
/// size, but never less than `bytes / entries`, hence total weight ≤ capacity implies
/// both Σ size ≤ bytes and count ≤ entries.
#[derive(Clone)]
struct MapWeighter {
    floor: u64,
}

impl quick_cache::Weighter<PathBuf, Arc<MappedFile>> for MapWeighter {
    fn weight(&self, _key: &PathBuf, file: &Arc<MappedFile>) -> u64 {
        file.len().max(self.floor)
    }
}

/// Counters of the mapping cache, for metrics.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Lookups answered by a cached, still-valid mapping.
    pub hits: AtomicU64,
    /// Files opened and mapped (first use, eviction, or replaced file).
    pub maps: AtomicU64,
    /// Cached mappings found stale (file replaced) and remapped.
    pub replaced: AtomicU64,
}

/// The bounded mapping cache shared by every route.
pub struct Store {
    cache: quick_cache::sync::Cache<PathBuf, Arc<MappedFile>, MapWeighter>,
    max_file_size: u64,
    counters: StoreCounters,
}

impl Store {
    /// An empty cache with the configured bounds.
    pub fn new(config: &Config) -> Store {
        let entries = config.map_cache_entries.max(1);
        let bytes = config.map_cache_bytes.max(1);
        let floor = (bytes / entries as u64).max(1);
        Store {
            cache: quick_cache::sync::Cache::with_weighter(entries, bytes, MapWeighter { floor }),
            max_file_size: config.max_file_size,
            counters: StoreCounters::default(),
        }
    }

    /// Counters for metrics.
    pub fn counters(&self) -> &StoreCounters {
        &self.counters
    }

    /// Mappings currently cached.
    pub fn cached_entries(&self) -> usize {
        self.cache.len()
    }

    /// Weight currently cached: Σ max(size, floor) — an upper bound on mapped bytes.
    pub fn cached_weight(&self) -> u64 {
        self.cache.weight()
    }

    /// The mapped file at `relative` under `root`. `relative` must already be a decoded,
    /// checked relative path (see `http::path`); symlinks are followed but the result
    /// must stay inside the root.
    ///
    /// Stats and opens run inline on the async worker: on local disk they take
    /// microseconds, less than a hop to the blocking pool would.
    pub fn open(&self, root: &Root, relative: &Path) -> Result<Arc<MappedFile>, StoreError> {
        let full = root.canonical.join(relative);
        if let Some(cached) = self.cache.get(&full) {
            match std::fs::metadata(&full) {
                Ok(meta) if FileIdentity::of(&meta) == cached.identity => {
                    self.counters.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(cached);
                }
                Ok(_) => {
                    self.counters.replaced.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    self.cache.remove(&full);
                    return Err(StoreError::NotFound);
                }
            }
        }
        let file = self.map_confined(root, relative)?;
        self.cache.insert(full, Arc::clone(&file));
        Ok(file)
    }

    fn map_confined(&self, root: &Root, relative: &Path) -> Result<Arc<MappedFile>, StoreError> {
        let canonical = root.resolve(relative)?;
        let file = File::open(&canonical).map_err(not_found_or_io)?;
        let meta = file.metadata().map_err(StoreError::Io)?;
        if !meta.is_file() {
            return Err(StoreError::NotFound);
        }
        if meta.len() > self.max_file_size {
            return Err(StoreError::TooLarge {
                len: meta.len(),
                max: self.max_file_size,
            });
        }
        let mapped = MappedFile::map(file, &meta).map_err(StoreError::Io)?;
        self.counters.maps.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(mapped))
    }
}

fn not_found_or_io(error: io::Error) -> StoreError {
    match error.kind() {
        io::ErrorKind::NotFound
        | io::ErrorKind::NotADirectory
        | io::ErrorKind::PermissionDenied => StoreError::NotFound,
        _ if error.raw_os_error() == Some(40) => StoreError::NotFound, // ELOOP
        _ => StoreError::Io(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(entries: usize, bytes: u64) -> Store {
        let mut config = Config::for_media_dir("/nonexistent");
        config.map_cache_entries = entries;
        config.map_cache_bytes = bytes;
        Store::new(&config)
    }

    #[test]
    fn maps_and_caches_then_notices_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("a.gif"), b"first").unwrap();
        let store = store_with(16, 1 << 20);
        let first = store.open(&root, Path::new("a.gif")).unwrap();
        assert_eq!(&first.bytes[..], b"first");
        let again = store.open(&root, Path::new("a.gif")).unwrap();
        assert!(Arc::ptr_eq(&first, &again));

        // Replace the way writers do: new file renamed into place.
        std::fs::write(dir.path().join("a.tmp"), b"second!").unwrap();
        std::fs::rename(dir.path().join("a.tmp"), dir.path().join("a.gif")).unwrap();
        let replaced = store.open(&root, Path::new("a.gif")).unwrap();
        assert_eq!(&replaced.bytes[..], b"second!");
        // The old mapping stays valid for whoever still holds it.
        assert_eq!(&first.bytes[..], b"first");
    }

    #[test]
    fn empty_files_directories_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("empty.gif"), b"").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let store = store_with(16, 1 << 20);
        assert!(
            store
                .open(&root, Path::new("empty.gif"))
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            store.open(&root, Path::new("sub")),
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.open(&root, Path::new("nope")),
            Err(StoreError::NotFound)
        ));
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
        std::fs::write(dir.path().join("real"), b"r").unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("inside")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        let store = store_with(16, 1 << 20);
        assert!(matches!(
            store.open(&root, Path::new("link")),
            Err(StoreError::NotFound)
        ));
        assert_eq!(
            &store.open(&root, Path::new("inside")).unwrap().bytes[..],
            b"r"
        );
    }

    #[test]
    fn too_large_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![0u8; 2048]).unwrap();
        let root = Root::open(dir.path()).unwrap();
        let mut config = Config::for_media_dir("/nonexistent");
        config.max_file_size = 1024;
        let store = Store::new(&config);
        assert!(matches!(
            store.open(&root, Path::new("big")),
            Err(StoreError::TooLarge {
                len: 2048,
                max: 1024
            })
        ));
    }

    #[test]
    fn cache_stays_within_entry_and_byte_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        for i in 0..200 {
            std::fs::write(dir.path().join(format!("f{i}")), vec![1u8; 100 + i]).unwrap();
        }
        // 10 entries, 4000 bytes: the floor is 400 bytes per entry.
        let store = store_with(10, 4000);
        for i in 0..200 {
            store.open(&root, Path::new(&format!("f{i}"))).unwrap();
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
}
