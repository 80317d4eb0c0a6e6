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
//! # Checked whenever it is used, not only at start-up
//! The default folder is under `/tmp`, where cleaners run and where anyone may create a
//! folder of the same name once ours is gone. So every use checks it again:
//!
//! - **the folder**, on each write, each open of a derived file (a mapping or its
//!   revalidation, at most once per file per `--revalidate-window`) and each existence
//!   check: it is opened `O_DIRECTORY | O_NOFOLLOW` and `fstat`ed — it must be a real
//!   directory (not a symbolic link), belong to the service's user and be writable by
//!   no one else. One `open` + `fstat` per use, not a check per time window: the uses
//!   are the slow paths (the hot path serves a cached mapping with no syscall at all),
//!   which already make several calls each, and a window would leave a gap in which a
//!   swapped folder is trusted. The file is then opened *through that descriptor*
//!   (`openat`), so the folder checked is the folder read from;
//! - **missing** (a cleaner removed it): re-created `0700` on the spot, with the key
//!   (below) written back; the request that found it missing is served;
//! - **unusable** (another user's, group or world writable, not a directory, cannot be
//!   created, read-only, full): nothing is served from it or written to it; a still
//!   already rendered is answered from memory, a variant cannot be made. `/readyz`
//!   reports it (`derived`) and `/metrics` counts it
//!   (`oip_media_derived_usable`, `oip_media_derived_refusals_total{kind}`). It does not
//!   fail readiness: GIFs and their stills are served without it;
//! - **each derived file**, before it is served: `fstat` on the open descriptor — a
//!   regular file of the service's user, mode `0600`, one link. A file planted by
//!   someone else (or a hard link to one) is refused as if missing, and made again.
//!
//! # Names no one can guess
//! A name is `HMAC-SHA256(key, source identity)` (128 bits, hex) plus the width or
//! format: the key is 32 random bytes kept in the folder as `.oip-media-key` (`0600`,
//! created on first use, checked like any derived file). Someone who re-creates the
//! folder, or only `stat`s the source GIF, cannot name the file the service will look
//! for. The CLI (`oip-media transcode`) reads the same key, so the service serves what
//! the CLI made. A folder re-created by the service gets the service's key back.
//!
//! # Two processes, one folder
//! The service and `oip-media transcode` may share the folder. Temp names carry the
//! writer's pid and 64 random bits (`.<name>.<pid>-<random>.tmp`), and every temp file
//! is held under an exclusive `flock` by its writer for as long as it is being written.
//! Clean-up (at start-up of either) removes only temp files whose lock it can take —
//! their writer is gone — and that are older than a minute (so a file created an
//! instant ago, before its writer took the lock, is never taken for a dead one). A lock
//! rather than the pid in the name: a lock dies with its process whatever the pid
//! namespace (a service in a container and a CLI on the host share the folder but not
//! pids) and cannot be fooled by a reused pid.
//!
//! Two writers share it: [`DerivedDir::store`] for bytes made in memory (stills), and
//! [`DerivedDir::begin`] for files another process writes (ffmpeg's variants), which
//! hands out a temp path and renames it into place on [`PendingFile::commit`].

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use prometheus_client::metrics::counter::Counter;
use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use sha2::Sha256;

use crate::store::{FileIdentity, GuardedOpen, OpenError, Root};

/// Prefix and suffix of in-progress writes. The leading dot keeps them out of every
/// route (dotfiles are refused) and out of the byte count.
const TEMP_PREFIX: &str = ".";
const TEMP_SUFFIX: &str = ".tmp";

/// The file holding the folder's naming key (a dotfile: no route serves it).
const KEY_FILE: &str = ".oip-media-key";

/// Bytes of the naming key.
const KEY_LEN: usize = 32;

/// A temp file younger than this is never cleaned up, locked or not: its writer may not
/// have taken its lock yet.
const TEMP_GRACE: Duration = Duration::from_secs(60);

/// Mode of the folder: the service's user only.
pub const DIR_MODE: u32 = 0o700;

/// Mode of every derived file: readable and writable by the service's user only.
pub const FILE_MODE: u32 = 0o600;

type NameMac = Hmac<Sha256>;

/// The bounded folder of derived files.
#[derive(Debug)]
pub struct DerivedDir {
    root: Root,
    folder: Arc<Folder>,
    max_bytes: u64,
    /// Bytes written since the last scan plus what that scan found: an upper bound on
    /// what is on disk, so the folder is listed only when it may be over the bound.
    used: AtomicU64,
    /// Files deleted to stay within the bound, since start-up.
    evicted: AtomicU64,
    /// One eviction pass at a time.
    evicting: Mutex<()>,
}

/// The folder itself: where it is, whose it must be, its naming key, and whether it is
/// usable now. Shared with the store (as the derived root's [`GuardedOpen`]).
#[derive(Debug)]
struct Folder {
    path: PathBuf,
    uid: u32,
    key: RwLock<Key>,
    /// Why the folder failed its last check (`None`: it passed).
    folder_problem: Mutex<Option<String>>,
    /// Why the last write failed (`None`: it succeeded, or none was tried).
    write_problem: Mutex<Option<String>>,
    usable: AtomicBool,
    refusals: Refusals,
}

/// Uses of the folder refused, by why (`oip_media_derived_refusals_total{kind}`).
#[derive(Debug, Default)]
pub struct Refusals {
    /// The folder failed its check (another user's, open to others, not a directory,
    /// cannot be created).
    pub folder: Counter,
    /// A derived file failed its check before being served (planted, wrong mode, linked).
    pub file: Counter,
    /// A write failed (read-only, full, no permission).
    pub write: Counter,
}

/// The naming key and the folder (device, inode) it was read from or written to.
struct Key {
    dir: Option<(u64, u64)>,
    secret: [u8; KEY_LEN],
    mac: NameMac,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Key {
    fn new(dir: Option<(u64, u64)>, secret: [u8; KEY_LEN]) -> Key {
        let mac = NameMac::new_from_slice(&secret).expect("HMAC takes any key length");
        Key { dir, secret, mac }
    }
}

/// A refusal: `PermissionDenied`, with a reason fit for `/readyz` (no path).
fn refused(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, reason.into())
}

/// Checks what `fstat` says of the folder: a directory of `uid` that no one else may
/// write to.
fn verify_dir(st: &rustix::fs::Stat, uid: u32) -> io::Result<()> {
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
        return Err(refused("the derived folder is not a directory"));
    }
    if st.st_uid != uid {
        return Err(refused(format!(
            "the derived folder belongs to uid {}, not to this service's uid {uid}",
            st.st_uid
        )));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(refused(format!(
            "the derived folder is writable by other users (mode {:o})",
            st.st_mode & 0o777
        )));
    }
    Ok(())
}

/// Checks a derived file (or the key file) from its open descriptor's metadata: a
/// regular file of `uid`, mode `0600`, one link.
fn verify_file(meta: &Metadata, uid: u32) -> io::Result<()> {
    if !meta.is_file() {
        return Err(refused("not a regular file"));
    }
    if meta.uid() != uid {
        return Err(refused(format!("belongs to uid {}", meta.uid())));
    }
    if meta.mode() & 0o777 != FILE_MODE {
        return Err(refused(format!("mode {:o}, not 600", meta.mode() & 0o777)));
    }
    if meta.nlink() != 1 {
        return Err(refused(format!("{} links", meta.nlink())));
    }
    Ok(())
}

/// 32 random bytes from the kernel.
fn random_key() -> io::Result<[u8; KEY_LEN]> {
    let mut key = [0u8; KEY_LEN];
    getrandom::getrandom(&mut key).map_err(io::Error::other)?;
    Ok(key)
}

/// A temp name for `name`, unique to this process and this call.
fn temp_name(name: &str) -> String {
    format!(
        "{TEMP_PREFIX}{name}.{}-{:016x}{TEMP_SUFFIX}",
        std::process::id(),
        fastrand::u64(..)
    )
}

fn is_temp(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX)
}

fn lock(mutex: &Mutex<Option<String>>) -> std::sync::MutexGuard<'_, Option<String>> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Folder {
    /// Opens the folder (re-creating it `0700` if it is missing), checks it on the
    /// descriptor, makes sure the naming key matches it, and records the outcome.
    /// Blocking.
    fn check(&self) -> io::Result<OwnedFd> {
        match self.open_dir() {
            Ok(dir) => {
                if lock(&self.folder_problem).take().is_some() {
                    tracing::info!(path = %self.path.display(), "derived folder usable again");
                }
                self.update_usable();
                Ok(dir)
            }
            Err(error) => {
                self.refusals.folder.inc();
                let reason = error.to_string();
                let mut problem = lock(&self.folder_problem);
                if problem.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(path = %self.path.display(), %reason, "derived folder unusable: nothing is served from it or written to it");
                    *problem = Some(reason);
                }
                drop(problem);
                self.update_usable();
                Err(error)
            }
        }
    }

    fn open_dir(&self) -> io::Result<OwnedFd> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dir = match rustix::fs::open(&self.path, flags, Mode::empty()) {
            Ok(dir) => dir,
            Err(Errno::NOENT) => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(DIR_MODE)
                    .create(&self.path)
                    .map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("cannot re-create the derived folder: {e}"),
                        )
                    })?;
                tracing::warn!(path = %self.path.display(), "the derived folder was missing: re-created");
                rustix::fs::open(&self.path, flags, Mode::empty())?
            }
            Err(Errno::LOOP | Errno::NOTDIR) => {
                return Err(refused(
                    "the derived folder is a symbolic link or not a directory",
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let st = rustix::fs::fstat(&dir)?;
        verify_dir(&st, self.uid)?;
        self.ensure_key(&dir, (st.st_dev, st.st_ino))?;
        Ok(dir)
    }

    /// Reads the folder's key, or writes ours into it, when the folder is not the one
    /// the key in memory belongs to (first use, or a folder re-created since).
    fn ensure_key(&self, dir: &OwnedFd, identity: (u64, u64)) -> io::Result<()> {
        let ours = {
            let key = self.key.read().unwrap_or_else(PoisonError::into_inner);
            if key.dir == Some(identity) {
                return Ok(());
            }
            key.secret
        };
        let secret = self.load_or_store_key(dir, ours)?;
        *self.key.write().unwrap_or_else(PoisonError::into_inner) =
            Key::new(Some(identity), secret);
        Ok(())
    }

    /// The key in the folder (checked like a derived file), or `ours` written there
    /// if there is none: a complete temp file linked into place, so a reader never
    /// sees half a key and two processes starting at once agree on one.
    fn load_or_store_key(&self, dir: &OwnedFd, ours: [u8; KEY_LEN]) -> io::Result<[u8; KEY_LEN]> {
        let read = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        for _ in 0..3 {
            match rustix::fs::openat(dir, KEY_FILE, read, Mode::empty()) {
                Ok(fd) => {
                    let mut file = File::from(fd);
                    let meta = file.metadata()?;
                    verify_file(&meta, self.uid)
                        .map_err(|e| refused(format!("the derived folder's key file: {e}")))?;
                    let mut secret = [0u8; KEY_LEN];
                    if meta.len() != KEY_LEN as u64 {
                        return Err(refused("the derived folder's key file has the wrong size"));
                    }
                    file.read_exact(&mut secret)?;
                    return Ok(secret);
                }
                Err(Errno::NOENT) => {
                    let temp = temp_name(KEY_FILE);
                    let create = OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC;
                    let fd =
                        rustix::fs::openat(dir, &temp, create, Mode::from_raw_mode(FILE_MODE))?;
                    let mut file = File::from(fd);
                    let written = file
                        .write_all(&ours)
                        .and_then(|()| file.sync_all())
                        .and_then(|()| {
                            rustix::fs::linkat(dir, &temp, dir, KEY_FILE, AtFlags::empty())
                                .map_err(io::Error::from)
                        });
                    let _ = rustix::fs::unlinkat(dir, &temp, AtFlags::empty());
                    match written {
                        Ok(()) => return Ok(ours),
                        // Another process linked its key first: read theirs.
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(Errno::LOOP) => {
                    return Err(refused("the derived folder's key file is a symbolic link"));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(refused("the derived folder's key file keeps changing"))
    }

    /// Opens `name` through a checked folder descriptor and checks the file on its own.
    fn open_file(&self, name: &str) -> Result<(File, Metadata), OpenError> {
        // Derived files are plain names in the folder: never paths, never dotfiles (temp
        // files, the key).
        if name.is_empty() || name.starts_with(TEMP_PREFIX) || name.contains('/') {
            return Err(OpenError::Io(io::ErrorKind::NotFound.into()));
        }
        let dir = self.check()?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => {
                self.refuse_file(name, "a symbolic link");
                return Err(OpenError::NotRegular);
            }
            Err(e) => return Err(OpenError::Io(e.into())),
        };
        let file = File::from(fd);
        let meta = file.metadata()?;
        if let Err(why) = verify_file(&meta, self.uid) {
            self.refuse_file(name, &why.to_string());
            return Err(OpenError::Io(why));
        }
        Ok((file, meta))
    }

    fn refuse_file(&self, name: &str, why: &str) {
        self.refusals.file.inc();
        tracing::warn!(%name, why, "refused a derived file that the service did not write");
    }

    /// Records the outcome of a write.
    fn wrote(&self, outcome: &io::Result<u64>) {
        match outcome {
            Ok(_) => {
                if lock(&self.write_problem).take().is_some() {
                    tracing::info!(path = %self.path.display(), "derived folder writable again");
                }
            }
            // A folder refusal is counted (and reported) as such.
            Err(e)
                if e.kind() == io::ErrorKind::PermissionDenied
                    && lock(&self.folder_problem).is_some() => {}
            Err(e) => {
                self.refusals.write.inc();
                let reason = format!("cannot write: {e}");
                let mut problem = lock(&self.write_problem);
                if problem.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(path = %self.path.display(), %reason, "derived folder not writable");
                    *problem = Some(reason);
                }
            }
        }
        self.update_usable();
    }

    fn update_usable(&self) {
        let usable = lock(&self.folder_problem).is_none() && lock(&self.write_problem).is_none();
        self.usable.store(usable, Ordering::Relaxed);
    }

    fn problem(&self) -> Option<String> {
        lock(&self.folder_problem)
            .clone()
            .or_else(|| lock(&self.write_problem).clone())
    }
}

impl GuardedOpen for Folder {
    fn open_checked(&self, relative: &Path) -> Result<(File, Metadata), OpenError> {
        let mut components = relative.components();
        match (components.next(), components.next()) {
            (Some(Component::Normal(name)), None) => match name.to_str() {
                Some(name) => self.open_file(name),
                None => Err(OpenError::Io(io::ErrorKind::NotFound.into())),
            },
            _ => Err(OpenError::Io(io::ErrorKind::NotFound.into())),
        }
    }
}

impl DerivedDir {
    /// Opens `path` (created `0700` if missing), checks that it belongs to this
    /// process's user and makes it `0700`, makes leftover files `0600`, reads or makes
    /// its naming key, removes temp files left by a writer that is gone, and evicts down
    /// to `max_bytes` if a previous run left more. Fails — so the service does not
    /// start — when the folder belongs to another user or cannot be made private:
    /// derived files of private items must not be readable by anyone else.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<DerivedDir> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(path)?;
        let canonical = fs::canonicalize(path)?;
        make_private(&canonical)?;
        let folder = Arc::new(Folder {
            path: canonical.clone(),
            uid: rustix::process::geteuid().as_raw(),
            key: RwLock::new(Key::new(None, random_key()?)),
            folder_problem: Mutex::new(None),
            write_problem: Mutex::new(None),
            usable: AtomicBool::new(true),
            refusals: Refusals::default(),
        });
        folder.open_dir()?;
        let root = Root::guarded(&canonical, Arc::clone(&folder) as Arc<dyn GuardedOpen>)?;
        for entry in fs::read_dir(root.path())?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if is_temp(&name) {
                remove_if_abandoned(&entry.path());
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
            folder,
            max_bytes,
            used: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            evicting: Mutex::new(()),
        };
        dir.evict()?;
        Ok(dir)
    }

    /// The folder, for serving through the store: its files are opened and checked by
    /// the folder (see the module docs), not by a plain open.
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

    /// Uses refused so far, by why.
    pub fn refusals(&self) -> &Refusals {
        &self.folder.refusals
    }

    /// False while the folder failed its last check or its last write failed.
    pub fn is_usable(&self) -> bool {
        self.folder.usable.load(Ordering::Relaxed)
    }

    /// Checks the folder now (re-creating it if missing). Blocking.
    pub fn check(&self) -> io::Result<()> {
        self.folder.check().map(drop)
    }

    /// The folder's state for `/readyz`: `{"usable": true}`, or `{"usable": false,
    /// "problem": "…"}` (no path: that goes to the log).
    pub fn status(&self) -> serde_json::Value {
        match self.folder.problem() {
            None => serde_json::json!({ "usable": true }),
            Some(problem) => serde_json::json!({ "usable": false, "problem": problem }),
        }
    }

    /// Registers `oip_media_derived_usable` (1 or 0) and
    /// `oip_media_derived_refusals_total{kind="folder"|"file"|"write"}`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let folder = Arc::downgrade(&self.folder);
        registry.register(
            "derived_usable",
            "1 when the derived folder passed its last check and its last write succeeded",
            crate::metrics::ReadAtScrape::gauge(move || {
                folder
                    .upgrade()
                    .map_or(0, |f| u64::from(f.usable.load(Ordering::Relaxed)))
            }),
        );
        let r = &self.folder.refusals;
        registry.register(
            "derived_refusals",
            "Uses of the derived folder refused: folder failed its check, a file failed its check before serving, a write failed",
            crate::metrics::by_kind([("folder", &r.folder), ("file", &r.file), ("write", &r.write)]),
        );
    }

    /// The part of a derived file's name that names its source's version: a keyed hash
    /// of its identity (see the module docs), 32 hex digits. No syscall.
    pub fn identity_part(&self, identity: FileIdentity) -> String {
        let FileIdentity {
            dev,
            ino,
            len,
            mtime_ns,
        } = identity;
        let mut mac = self
            .folder
            .key
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .mac
            .clone();
        for part in [dev, ino, len] {
            mac.update(&part.to_le_bytes());
        }
        mac.update(&mtime_ns.to_le_bytes());
        let tag = mac.finalize().into_bytes();
        tag[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The file name of the still of the file with `identity` at `width` (`None`: the
    /// GIF's own size) in the format whose extension is `ext` (`png`, `webp`, `jpg`).
    pub fn still_name(&self, identity: FileIdentity, width: Option<u32>, ext: &str) -> String {
        let size = match width {
            Some(w) => format!("w{w}"),
            None => "full".to_owned(),
        };
        format!("still-{}-{size}.{ext}", self.identity_part(identity))
    }

    /// True when `name` exists in the folder and passes the checks of a file to serve.
    pub fn contains(&self, name: &str) -> bool {
        self.len_of(name).is_some()
    }

    /// The size of `name` when it exists in the (checked) folder as a file the service
    /// wrote (regular, ours, `0600`, one link). Blocking.
    pub fn len_of(&self, name: &str) -> Option<u64> {
        self.folder.open_file(name).ok().map(|(_, meta)| meta.len())
    }

    /// Bytes of derived files on disk, counted now.
    pub fn used_bytes(&self) -> io::Result<u64> {
        Ok(self.list()?.iter().map(|f| f.len).sum())
    }

    /// Writes `bytes` as `name`: temp file (`0600`, locked), `fsync`, rename, in a
    /// checked folder. Then evicts the oldest files if the folder may be over its
    /// bound. Blocking.
    pub fn store(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let written = (|| {
            let dir = self.folder.check()?;
            let mut temp = TempFile::create(dir, name)?;
            temp.file.write_all(bytes)?;
            temp.commit(name)
        })();
        self.folder.wrote(&written);
        self.added(written?)
    }

    /// Starts writing `name`: creates an empty temp file with mode `0600` in a checked
    /// folder, locked for as long as it is written, for a writer (ffmpeg) to fill, which
    /// [`PendingFile::commit`] renames into place. Dropped without a commit, the temp
    /// file is removed. Blocking.
    pub fn begin(self: &Arc<Self>, name: &str) -> io::Result<PendingFile> {
        let created = self
            .folder
            .check()
            .and_then(|dir| TempFile::create(dir, name));
        if let Err(error) = &created {
            self.folder
                .wrote(&Err(io::Error::new(error.kind(), error.to_string())));
        }
        let temp = created?;
        Ok(PendingFile {
            path: self.folder.path.join(&temp.name),
            dir: Arc::clone(self),
            temp: Some(temp),
            name: name.to_owned(),
        })
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

/// Removes the temp file at `path` if its writer is gone (its lock can be taken) and it
/// is older than [`TEMP_GRACE`]; leaves it otherwise.
fn remove_if_abandoned(path: &Path) {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let Ok(fd) = rustix::fs::open(path, flags, Mode::empty()) else {
        return;
    };
    if rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_err() {
        // Its writer (this service, another one, or the CLI) is still at it.
        return;
    }
    let old = File::from(fd)
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| modified.elapsed().ok())
        .is_some_and(|age| age >= TEMP_GRACE);
    if old {
        let _ = fs::remove_file(path);
    }
}

/// A temp file being written in the folder opened as `dir`: created `0600` with a name
/// unique to this process, and locked (`flock`) until it is renamed or removed.
#[derive(Debug)]
struct TempFile {
    dir: OwnedFd,
    name: String,
    file: File,
    done: bool,
}

impl TempFile {
    fn create(dir: OwnedFd, target: &str) -> io::Result<TempFile> {
        let name = temp_name(target);
        let flags =
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&dir, &name, flags, Mode::from_raw_mode(FILE_MODE))?;
        // A fresh file no one else has opened: the lock is free.
        rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive)?;
        Ok(TempFile {
            dir,
            name,
            file: File::from(fd),
            done: false,
        })
    }

    /// `fsync`s the file and renames it to `target` in the same folder. Returns its
    /// length. Fails when the file is no longer in the folder (removed, or the folder
    /// itself was removed meanwhile): nothing is renamed into a folder not checked.
    fn commit(&mut self, target: &str) -> io::Result<u64> {
        let meta = self.file.metadata()?;
        if meta.nlink() == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the temp file was removed while it was written",
            ));
        }
        if meta.mode() & 0o777 != FILE_MODE {
            self.file
                .set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        }
        // A derived file is written once and then trusted forever under its name: make
        // sure a crash cannot leave the name pointing at an empty file.
        self.file.sync_all()?;
        rustix::fs::renameat(&self.dir, &self.name, &self.dir, target)?;
        self.done = true;
        Ok(meta.len())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = rustix::fs::unlinkat(self.dir.as_fd(), &self.name, AtFlags::empty());
        }
    }
}

/// A derived file being written: an empty `0600` temp file in the folder, locked by
/// this process, removed on drop unless [`PendingFile::commit`] renamed it into place.
#[derive(Debug)]
pub struct PendingFile {
    dir: Arc<DerivedDir>,
    temp: Option<TempFile>,
    path: PathBuf,
    name: String,
}

impl PendingFile {
    /// Where the writer writes (a dotfile no route serves).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name the file will have.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `fsync`s the temp file, renames it to its name and accounts its bytes (evicting
    /// the oldest files if the folder is over its bound). Returns its length. Blocking.
    pub fn commit(mut self) -> io::Result<u64> {
        let mut temp = self.temp.take().expect("a pending file has its temp file");
        let committed = temp.commit(&self.name);
        self.dir.folder.wrote(&committed);
        let len = committed?;
        self.dir.added(len)?;
        Ok(len)
    }
}

/// Refuses a folder that belongs to another user (someone could read or replace what
/// is written there), and makes ours `0700`.
fn make_private(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
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
        let dir = tempfile::tempdir().unwrap();
        let derived = DerivedDir::open(dir.path(), 1 << 20).unwrap();
        let a = derived.still_name(identity(1), Some(90), "png");
        assert!(a.starts_with("still-") && a.ends_with("-w90.png"), "{a}");
        assert_eq!(a.len(), "still-".len() + 32 + "-w90.png".len(), "{a}");
        assert_ne!(a, derived.still_name(identity(1), Some(180), "png"));
        assert_ne!(a, derived.still_name(identity(2), Some(90), "png"));
        assert_ne!(a, derived.still_name(identity(1), Some(90), "webp"));
        assert!(
            derived
                .still_name(identity(1), None, "png")
                .ends_with("-full.png")
        );
        assert_eq!(
            a,
            derived.still_name(identity(1), Some(90), "png"),
            "stable"
        );
    }

    #[test]
    fn names_are_keyed_by_a_secret_kept_in_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let one = DerivedDir::open(dir.path(), 1 << 20).unwrap();
        let name = one.identity_part(identity(7));
        // Nothing of the identity shows, and the old spelled-out name is not it.
        assert!(!name.contains("1-7-2-3"), "{name}");
        let key = dir.path().join(KEY_FILE);
        assert_eq!(mode(&key), 0o600);
        assert_eq!(fs::metadata(&key).unwrap().len(), KEY_LEN as u64);
        // A second process on the same folder (the CLI) reads the same key.
        let two = DerivedDir::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(two.identity_part(identity(7)), name);
        // Another installation names the same source differently.
        let elsewhere = tempfile::tempdir().unwrap();
        let other = DerivedDir::open(elsewhere.path(), 1 << 20).unwrap();
        assert_ne!(other.identity_part(identity(7)), name);
        // A key file someone else could have written is refused.
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let error = DerivedDir::open(dir.path(), 1 << 20).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied, "{error}");
    }

    #[test]
    fn a_removed_folder_is_re_created_on_use_with_the_same_key() {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("derived");
        let derived = DerivedDir::open(&path, 1 << 20).unwrap();
        let name = derived.still_name(identity(1), None, "png");
        derived.store(&name, b"png").unwrap();
        fs::remove_dir_all(&path).unwrap();
        assert!(!derived.contains(&name));
        assert!(path.is_dir(), "re-created by the check");
        assert_eq!(mode(&path), 0o700);
        derived.store(&name, b"png2").unwrap();
        assert_eq!(derived.len_of(&name), Some(4));
        assert_eq!(
            derived.still_name(identity(1), None, "png"),
            name,
            "same key"
        );
        assert!(derived.is_usable());
        assert_eq!(derived.refusals().folder.get(), 0);
    }

    #[test]
    fn a_file_the_service_did_not_write_is_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        let derived = DerivedDir::open(dir.path(), 1 << 20).unwrap();
        let root = derived.root().clone();
        derived.store("ok.png", b"ours").unwrap();
        assert_eq!(derived.len_of("ok.png"), Some(4));
        // World-readable (not 0600).
        fs::write(dir.path().join("open.png"), b"planted").unwrap();
        fs::set_permissions(
            dir.path().join("open.png"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        // A second link to one of ours (could be the other end of a planted link).
        fs::hard_link(dir.path().join("ok.png"), dir.path().join("linked.png")).unwrap();
        // A symbolic link.
        std::os::unix::fs::symlink(dir.path().join("ok.png"), dir.path().join("sym.png")).unwrap();
        for name in [
            "open.png",
            "linked.png",
            "sym.png",
            ".oip-media-key",
            "../x",
        ] {
            assert_eq!(derived.len_of(name), None, "{name}");
            let guard = derived.folder.as_ref() as &dyn GuardedOpen;
            assert!(guard.open_checked(Path::new(name)).is_err(), "{name}");
        }
        assert!(derived.refusals().file.get() >= 3);
        drop(root);
        // Owned by another user (only root can make one here).
        if rustix::process::geteuid().as_raw() == 0 {
            let theirs = dir.path().join("theirs.png");
            fs::write(&theirs, b"planted").unwrap();
            fs::set_permissions(&theirs, fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            assert_eq!(derived.len_of("theirs.png"), None);
        }
    }

    #[test]
    fn a_folder_open_to_others_is_unusable_until_it_is_private_again() {
        let dir = tempfile::tempdir().unwrap();
        let derived = Arc::new(DerivedDir::open(dir.path(), 1 << 20).unwrap());
        derived.store("a.png", b"ours").unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let error = derived.store("b.png", b"x").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
        assert!(derived.begin("c.mp4").is_err());
        assert_eq!(derived.len_of("a.png"), None, "nothing served from it");
        assert!(!derived.is_usable());
        let status = derived.status();
        assert_eq!(status["usable"], false);
        let problem = status["problem"].as_str().unwrap();
        assert!(problem.contains("writable by other users"), "{problem}");
        assert!(
            !problem.contains(&dir.path().display().to_string()),
            "no path in the status: {problem}"
        );
        assert!(derived.refusals().folder.get() >= 3);
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(derived.len_of("a.png"), Some(4));
        assert!(derived.is_usable());
        assert_eq!(derived.status(), serde_json::json!({ "usable": true }));
    }

    #[test]
    fn a_folder_replaced_by_a_symbolic_link_or_a_file_is_unusable() {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("derived");
        let derived = DerivedDir::open(&path, 1 << 20).unwrap();
        fs::remove_dir_all(&path).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), &path).unwrap();
        assert!(derived.store("a.png", b"x").is_err());
        assert_eq!(
            fs::read_dir(elsewhere.path()).unwrap().count(),
            0,
            "nothing written there"
        );
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"not a folder").unwrap();
        assert!(derived.store("a.png", b"x").is_err());
        assert!(!derived.is_usable());
        fs::remove_file(&path).unwrap();
        derived.store("a.png", b"x").unwrap();
        assert!(derived.is_usable());
    }

    #[test]
    fn temp_files_are_unique_per_process_and_only_abandoned_ones_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let derived = Arc::new(DerivedDir::open(dir.path(), 1 << 20).unwrap());
        // Ours, in progress: named with our pid, locked.
        let pending = derived.begin("clip.mp4").unwrap();
        let temp = pending.path().to_path_buf();
        let temp_name = temp.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            temp_name.starts_with(&format!(".clip.mp4.{}-", std::process::id())),
            "{temp_name}"
        );
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&temp)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
        // Left by a writer that is gone: old and unlocked.
        let dead = dir.path().join(".clip.webm.999999-00.tmp");
        File::create(&dead)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
        // Just created by a writer that has not locked it yet.
        let fresh = dir.path().join(".clip.webp.999998-00.tmp");
        File::create(&fresh).unwrap();
        // Another process opening the folder (the CLI) cleans only the abandoned one.
        let _other = DerivedDir::open(dir.path(), 1 << 20).unwrap();
        assert!(temp.exists(), "a temp file in progress is left alone");
        assert!(!dead.exists(), "an abandoned temp file is removed");
        assert!(fresh.exists(), "a fresh one is given time");
        fs::write(pending.path(), b"mp4").unwrap();
        assert_eq!(pending.commit().unwrap(), 3);
        assert_eq!(derived.len_of("clip.mp4"), Some(3));
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
        File::options()
            .write(true)
            .open(dir.path().join(".x.0000.tmp"))
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
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
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, [KEY_FILE], "only the naming key");
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
