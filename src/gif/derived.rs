//! The derived-file folder: stills written once, served through the same mapped path
//! as media, and kept under a byte bound by deleting the oldest.
//!
//! Files are written the way SPEC §2 asks of every media root — a temp file renamed
//! into place — so a mapping of a derived file never sees it change, and a crash never
//! leaves a half-written still under a real name. Names encode the source file's
//! identity and the width, so a replaced GIF gets new stills and the old ones simply
//! age out. Deleting a file that is still mapped is safe: unlinking never truncates.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::store::{FileIdentity, Root};

/// Prefix and suffix of in-progress writes. The leading dot keeps them out of every
/// route (dotfiles are refused) and out of the byte count.
const TEMP_PREFIX: &str = ".";
const TEMP_SUFFIX: &str = ".tmp";

/// The file name of the still of the file with `identity` at `width` (`None`: the
/// GIF's own size). Spelled out rather than hashed: it is unique by construction.
pub fn still_name(identity: FileIdentity, width: Option<u32>) -> String {
    let FileIdentity {
        dev,
        ino,
        len,
        mtime_ns,
    } = identity;
    let size = match width {
        Some(w) => format!("w{w}"),
        None => "full".to_owned(),
    };
    format!("still-{dev:x}-{ino:x}-{len:x}-{mtime_ns:x}-{size}.png")
}

/// The bounded folder of derived files.
#[derive(Debug)]
pub struct DerivedDir {
    root: Root,
    max_bytes: u64,
    /// Bytes written since the last scan plus what that scan found: an upper bound on
    /// what is on disk, so the folder is listed only when it may be over the bound.
    used: AtomicU64,
    /// One eviction pass at a time.
    evicting: Mutex<()>,
}

impl DerivedDir {
    /// Opens `path` (created if missing), removes temp files left by a crash, and
    /// evicts down to `max_bytes` if a previous run left more.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<DerivedDir> {
        fs::create_dir_all(path)?;
        let root = Root::open(path)?;
        for entry in fs::read_dir(root.path())?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX) {
                let _ = fs::remove_file(entry.path());
            }
        }
        let dir = DerivedDir {
            root,
            max_bytes,
            used: AtomicU64::new(0),
            evicting: Mutex::new(()),
        };
        dir.evict()?;
        Ok(dir)
    }

    /// The folder, for serving through the store.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// True when `name` exists in the folder.
    pub fn contains(&self, name: &str) -> bool {
        fs::metadata(self.root.path().join(name)).is_ok_and(|m| m.is_file())
    }

    /// Bytes of derived files on disk, counted now.
    pub fn used_bytes(&self) -> io::Result<u64> {
        Ok(self.list()?.iter().map(|f| f.len).sum())
    }

    /// Writes `bytes` as `name`: temp file, `fsync`, rename. Then evicts the oldest
    /// files if the folder may be over its bound. Blocking.
    pub fn store(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let temp = self.root.path().join(format!(
            "{TEMP_PREFIX}{name}.{:016x}{TEMP_SUFFIX}",
            fastrand::u64(..)
        ));
        let written = (|| {
            let mut file = File::create_new(&temp)?;
            file.write_all(bytes)?;
            // A still is written once and then trusted forever under its name: make
            // sure a crash cannot leave the name pointing at an empty file.
            file.sync_data()?;
            fs::rename(&temp, self.root.path().join(name))
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written?;
        let used = self.used.fetch_add(bytes.len() as u64, Ordering::Relaxed) + bytes.len() as u64;
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
                Ok(()) => used -= file.len,
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

    #[test]
    fn names_differ_by_identity_and_width() {
        let a = still_name(identity(1), Some(90));
        assert_eq!(a, "still-1-1-2-3-w90.png");
        assert_ne!(a, still_name(identity(1), Some(180)));
        assert_ne!(a, still_name(identity(2), Some(90)));
        assert_eq!(still_name(identity(1), None), "still-1-1-2-3-full.png");
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
}
