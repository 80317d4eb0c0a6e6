//! The derived-file folder: stills and video variants written once, served through the
//! same mapped path as media, and kept under one byte bound by deleting the oldest.
//!
//! Files are written the way SPEC §2 asks of every media root — a temp file renamed
//! into place — so a mapping of a derived file never sees it change, and a crash never
//! leaves a half-written file under a real name. Names encode the source file's
//! identity (and the width or format), so a replaced GIF gets new derived files and the
//! old ones simply age out. Deleting a file that is still mapped is safe: unlinking
//! never truncates.
//!
//! Derived files of private items are as secret as the items themselves, so the folder
//! is private to the service: it must belong to the service's user, it is made `0700`
//! at start-up, and every file is created `0600` (a temp file is created with that mode
//! *before* any byte — or ffmpeg — writes to it). One private folder serves public and
//! private items alike; nothing in it is readable by another user.
//!
//! Two writers share it: [`DerivedDir::store`] for bytes made in memory (stills), and
//! [`DerivedDir::begin`] for files another process writes (ffmpeg's variants), which
//! hands out a temp path and renames it into place on [`PendingFile::commit`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::store::{FileIdentity, Root};

/// Prefix and suffix of in-progress writes. The leading dot keeps them out of every
/// route (dotfiles are refused) and out of the byte count.
const TEMP_PREFIX: &str = ".";
const TEMP_SUFFIX: &str = ".tmp";

/// Mode of the folder: the service's user only.
pub const DIR_MODE: u32 = 0o700;

/// Mode of every derived file: readable and writable by the service's user only.
pub const FILE_MODE: u32 = 0o600;

/// The file name of the still of the file with `identity` at `width` (`None`: the
/// GIF's own size) in the format whose extension is `ext` (`png`, `webp`, `jpg`).
/// Spelled out rather than hashed: it is unique by construction.
pub fn still_name(identity: FileIdentity, width: Option<u32>, ext: &str) -> String {
    let size = match width {
        Some(w) => format!("w{w}"),
        None => "full".to_owned(),
    };
    format!("still-{}-{size}.{ext}", identity_part(identity))
}

/// The part of a derived file's name that names its source's version.
pub fn identity_part(identity: FileIdentity) -> String {
    let FileIdentity {
        dev,
        ino,
        len,
        mtime_ns,
    } = identity;
    format!("{dev:x}-{ino:x}-{len:x}-{mtime_ns:x}")
}

/// The bounded folder of derived files.
#[derive(Debug)]
pub struct DerivedDir {
    root: Root,
    max_bytes: u64,
    /// Bytes written since the last scan plus what that scan found: an upper bound on
    /// what is on disk, so the folder is listed only when it may be over the bound.
    used: AtomicU64,
    /// Files deleted to stay within the bound, since start-up.
    evicted: AtomicU64,
    /// One eviction pass at a time.
    evicting: Mutex<()>,
}

impl DerivedDir {
    /// Opens `path` (created `0700` if missing), checks that it belongs to this
    /// process's user and makes it `0700`, makes leftover files `0600`, removes temp
    /// files left by a crash, and evicts down to `max_bytes` if a previous run left
    /// more. Fails — so the service does not start — when the folder belongs to another
    /// user or cannot be made private: derived files of private items must not be
    /// readable by anyone else.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<DerivedDir> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(path)?;
        let root = Root::open(path)?;
        make_private(root.path())?;
        for entry in fs::read_dir(root.path())?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX) {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            // Files written by a version that did not restrict them.
            if let Ok(meta) = entry.metadata()
                && meta.is_file()
                && meta.mode() & 0o777 != FILE_MODE
            {
                fs::set_permissions(entry.path(), fs::Permissions::from_mode(FILE_MODE))?;
            }
        }
        let dir = DerivedDir {
            root,
            max_bytes,
            used: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            evicting: Mutex::new(()),
        };
        dir.evict()?;
        Ok(dir)
    }

    /// The folder, for serving through the store.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The byte bound (`--derived-max-bytes`).
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Files deleted to stay within the bound since start-up.
    pub fn evicted_files(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// True when `name` exists in the folder.
    pub fn contains(&self, name: &str) -> bool {
        self.len_of(name).is_some()
    }

    /// The size of `name` when it exists in the folder as a regular file.
    pub fn len_of(&self, name: &str) -> Option<u64> {
        fs::metadata(self.root.path().join(name))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Bytes of derived files on disk, counted now.
    pub fn used_bytes(&self) -> io::Result<u64> {
        Ok(self.list()?.iter().map(|f| f.len).sum())
    }

    /// Writes `bytes` as `name`: temp file (`0600`), `fsync`, rename. Then evicts the
    /// oldest files if the folder may be over its bound. Blocking.
    pub fn store(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let temp = self.create_temp(name)?;
        let written = (|| {
            let mut file = OpenOptions::new().write(true).open(&temp)?;
            file.write_all(bytes)?;
            drop(file);
            self.commit_temp(&temp, name)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written.map(|_| ())
    }

    /// Starts writing `name`: creates an empty temp file with mode `0600` for a writer
    /// (ffmpeg) to fill, which [`PendingFile::commit`] renames into place. Dropped
    /// without a commit, the temp file is removed. Blocking.
    pub fn begin(self: &Arc<Self>, name: &str) -> io::Result<PendingFile> {
        let temp = self.create_temp(name)?;
        Ok(PendingFile {
            dir: Arc::clone(self),
            temp,
            name: name.to_owned(),
            done: false,
        })
    }

    /// Creates an empty, private temp file for `name`.
    fn create_temp(&self, name: &str) -> io::Result<PathBuf> {
        let temp = self.root.path().join(format!(
            "{TEMP_PREFIX}{name}.{:016x}{TEMP_SUFFIX}",
            fastrand::u64(..)
        ));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&temp)?;
        Ok(temp)
    }

    /// `fsync`s `temp`, renames it to `name` and accounts its bytes. Returns its length.
    fn commit_temp(&self, temp: &Path, name: &str) -> io::Result<u64> {
        let file = File::open(temp)?;
        let meta = file.metadata()?;
        if meta.mode() & 0o777 != FILE_MODE {
            file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        }
        // A derived file is written once and then trusted forever under its name: make
        // sure a crash cannot leave the name pointing at an empty file.
        file.sync_all()?;
        drop(file);
        fs::rename(temp, self.root.path().join(name))?;
        self.added(meta.len())?;
        Ok(meta.len())
    }

    /// Accounts `len` new bytes and evicts if the folder may be over its bound.
    fn added(&self, len: u64) -> io::Result<()> {
        let used = self.used.fetch_add(len, Ordering::Relaxed) + len;
        if used > self.max_bytes {
            self.evict()?;
        }
        Ok(())
    }

    /// Deletes the oldest files until the folder is within its bound.
    fn evict(&self) -> io::Result<()> {
        let _one_at_a_time = self
            .evicting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut files = self.list()?;
        let mut used: u64 = files.iter().map(|f| f.len).sum();
        files.sort_by(|a, b| a.modified.cmp(&b.modified).then(a.name.cmp(&b.name)));
        for file in files {
            if used <= self.max_bytes {
                break;
            }
            match fs::remove_file(self.root.path().join(&file.name)) {
                Ok(()) => {
                    used -= file.len;
                    self.evicted.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => used -= file.len,
                Err(e) => {
                    tracing::warn!(name = %file.name, error = %e, "cannot evict derived file")
                }
            }
        }
        self.used.store(used, Ordering::Relaxed);
        Ok(())
    }

    fn list(&self) -> io::Result<Vec<Listed>> {
        let mut files = Vec::new();
        for entry in fs::read_dir(self.root.path())?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_file() {
                files.push(Listed {
                    name,
                    len: meta.len(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        Ok(files)
    }
}

struct Listed {
    name: String,
    len: u64,
    modified: SystemTime,
}

/// A derived file being written: an empty `0600` temp file in the folder, removed on
/// drop unless [`PendingFile::commit`] renamed it into place.
#[derive(Debug)]
pub struct PendingFile {
    dir: Arc<DerivedDir>,
    temp: PathBuf,
    name: String,
    done: bool,
}

impl PendingFile {
    /// Where the writer writes (a dotfile no route serves).
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// The name the file will have.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `fsync`s the temp file, renames it to its name and accounts its bytes (evicting
    /// the oldest files if the folder is over its bound). Returns its length. Blocking.
    pub fn commit(mut self) -> io::Result<u64> {
        let len = self.dir.commit_temp(&self.temp, &self.name)?;
        self.done = true;
        Ok(len)
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Refuses a folder that belongs to another user (someone could read or replace what
/// is written there), and makes ours `0700`.
fn make_private(path: &Path) -> io::Result<()> {
    let meta = fs::metadata(path)?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}, not to this service's uid {me}: derived files of \
                 private media must not be readable by other users",
                path.display(),
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o777 != DIR_MODE {
        fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn identity(ino: u64) -> FileIdentity {
        FileIdentity {
            dev: 1,
            ino,
            len: 2,
            mtime_ns: 3,
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn names_differ_by_identity_width_and_format() {
        let a = still_name(identity(1), Some(90), "png");
        assert_eq!(a, "still-1-1-2-3-w90.png");
        assert_ne!(a, still_name(identity(1), Some(180), "png"));
        assert_ne!(a, still_name(identity(2), Some(90), "png"));
        assert_ne!(a, still_name(identity(1), Some(90), "webp"));
        assert_eq!(
            still_name(identity(1), None, "png"),
            "still-1-1-2-3-full.png"
        );
    }

    #[test]
    fn stays_within_its_bound_evicting_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let derived = DerivedDir::open(dir.path(), 2500).unwrap();
        for i in 0..10 {
            derived.store(&format!("f{i}"), &[0u8; 1000]).unwrap();
            assert!(derived.used_bytes().unwrap() <= 2500);
            // Distinct modification times, so "oldest" is well defined.
            std::thread::sleep(Duration::from_millis(15));
        }
        assert!(derived.contains("f9") && derived.contains("f8"));
        assert!(!derived.contains("f0") && !derived.contains("f7"));
        assert_eq!(derived.used_bytes().unwrap(), 2000);
        assert_eq!(derived.evicted_files(), 8);
    }

    #[test]
    fn leftovers_are_cleaned_and_bounds_applied_at_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".x.0000.tmp"), b"partial").unwrap();
        for i in 0..5 {
            std::fs::write(dir.path().join(format!("f{i}")), [0u8; 100]).unwrap();
        }
        let derived = DerivedDir::open(dir.path(), 250).unwrap();
        assert!(!dir.path().join(".x.0000.tmp").exists());
        assert!(derived.used_bytes().unwrap() <= 250);
    }

    #[test]
    fn the_folder_is_0700_and_every_file_0600() {
        let parent = tempfile::tempdir().unwrap();
        // A folder and a file left world-readable by an earlier version.
        let path = parent.path().join("derived");
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(path.join("old.png"), b"old").unwrap();
        fs::set_permissions(path.join("old.png"), fs::Permissions::from_mode(0o644)).unwrap();
        let derived = Arc::new(DerivedDir::open(&path, 1 << 20).unwrap());
        assert_eq!(mode(&path), 0o700);
        assert_eq!(mode(&path.join("old.png")), 0o600);

        // Written from memory (stills).
        derived.store("still.png", b"png").unwrap();
        assert_eq!(mode(&path.join("still.png")), 0o600);

        // Written by another process (ffmpeg): 0600 from creation, before any byte.
        let pending = derived.begin("clip.mp4").unwrap();
        assert_eq!(mode(pending.path()), 0o600);
        fs::write(pending.path(), b"mp4").unwrap();
        assert_eq!(pending.commit().unwrap(), 3);
        assert_eq!(mode(&path.join("clip.mp4")), 0o600);
        assert_eq!(fs::read(path.join("clip.mp4")).unwrap(), b"mp4");

        // A folder created from nothing, parents included, is private too.
        let fresh = parent.path().join("a/b");
        DerivedDir::open(&fresh, 1 << 20).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }

    #[test]
    fn an_uncommitted_file_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let derived = Arc::new(DerivedDir::open(dir.path(), 1 << 20).unwrap());
        let pending = derived.begin("clip.webm").unwrap();
        fs::write(pending.path(), b"half").unwrap();
        let temp = pending.path().to_path_buf();
        drop(pending);
        assert!(!temp.exists());
        assert!(!derived.contains("clip.webm"));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_folder_of_another_user_is_refused() {
        // Only root can make a folder owned by someone else here.
        if rustix::process::geteuid().as_raw() != 0 {
            eprintln!("skipped: needs root to chown a folder to another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("theirs");
        fs::create_dir(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        let error = DerivedDir::open(&path, 1 << 20).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
        assert!(error.to_string().contains("uid 65534"), "{error}");
    }
}
