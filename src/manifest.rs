//! `manifest.json` of content-addressed media (SPEC §1B): read once, kept parsed in a
//! bounded cache, and revalidated against the file's identity so an edited manifest (an
//! access level changed, say) is noticed within `--revalidate-window` (≤ 1 s), as the
//! mapping cache notices a replaced file (see `store`).
//!
//! Every filesystem call (the `stat`, the confinement check, the open and the read) runs
//! on the filesystem pool; the manifest must be a regular file, opened without blocking
//! ([`crate::store::open_regular`]). Parsing happens on the caller's side: it is a
//! bounded amount of CPU, not a wait. When the pool cannot answer, the lookup fails with
//! [`ManifestError::Busy`] rather than trusting a possibly outdated access level.
//!
//! Only a path with nothing at it is "no manifest" (`Ok(None)`); a manifest that is there
//! but cannot be read, parsed or trusted is an error, and the route fails closed on it.
//!
//! The manifest's `mimeType` came from the uploader. [`ServedType`] is the one place
//! that decides what of it may reach a `Content-Type` header.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::fs_pool::{FsPool, FsPoolError};
use crate::store::{FileIdentity, OpenError, Root, StoreError, open_regular};

/// Largest manifest read. Real ones are about 1 KiB; anything near this is not one of
/// ours, and reading it whole would let a stray file cost memory on every request.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

/// Smallest weight an entry is charged, so the cache's byte capacity also bounds its
/// entry count (the same trick as the mapping cache).
const ENTRY_FLOOR: u64 = 1024;

/// A content address: 64 lowercase hex characters (the SHA-256 of the bytes). Anything
/// else is not an id, so it can be joined to a path without further checks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MediaId(String);

impl MediaId {
    /// The id in `raw`, if it is one.
    pub fn parse(raw: &str) -> Option<MediaId> {
        (raw.len() == 64 && raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| MediaId(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<id>/original`, relative to `MEDIA_DIR`.
    pub fn original(&self) -> PathBuf {
        Path::new(&self.0).join("original")
    }

    /// `<id>/manifest.json`, relative to `MEDIA_DIR`.
    pub fn manifest(&self) -> PathBuf {
        Path::new(&self.0).join("manifest.json")
    }
}

/// Who may see an item (`manifest.accessLevel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLevel {
    /// Anyone.
    Public,
    /// Anyone, as far as this service goes: the indexer does not gate it either.
    Organization,
    /// The owner only. Also what an absent or unknown level means: the SPEC's default
    /// is `private`, and an unrecognised value must not open an item to everyone.
    Private,
}

impl AccessLevel {
    fn from_manifest(value: Option<&Value>) -> AccessLevel {
        match value.and_then(Value::as_str) {
            Some("public") => AccessLevel::Public,
            Some("organization") => AccessLevel::Organization,
            _ => AccessLevel::Private,
        }
    }
}

/// How the bytes of an item may be labelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServedType {
    /// Inline with this media type (`image/*`, `audio/*`, `video/*`, never SVG or XML;
    /// or `application/octet-stream`, which no browser renders).
    Inline(String),
    /// `application/octet-stream` with `Content-Disposition: attachment`: anything a
    /// browser could run or render as a document (HTML, SVG, XML, JavaScript, PDF …)
    /// or that we do not recognise, so uploaded content never runs on our origin.
    Attachment,
}

impl ServedType {
    /// What to send for the manifest's `mimeType` (`None`: no manifest or no type).
    pub fn for_mime(mime: Option<&str>) -> ServedType {
        let Some(mime) = mime else {
            return ServedType::Inline(OCTET_STREAM.to_owned());
        };
        let essence = mime
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let Some((kind, subtype)) = essence.split_once('/') else {
            return ServedType::Attachment;
        };
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
        };
        if !token(kind) || !token(subtype) {
            return ServedType::Attachment;
        }
        if essence == OCTET_STREAM {
            return ServedType::Inline(essence);
        }
        let media = matches!(kind, "image" | "audio" | "video");
        let active = subtype.contains("svg") || subtype.contains("xml");
        if media && !active {
            ServedType::Inline(essence)
        } else {
            ServedType::Attachment
        }
    }
}

const OCTET_STREAM: &str = "application/octet-stream";

/// One parsed manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The manifest as written, minus anything that names a path on this host
    /// (`filePath`, or any string under the media root): what `/info` returns.
    pub fields: Map<String, Value>,
    /// Who may see the item.
    pub access: AccessLevel,
    /// `userPublicKey`: the owner, compared with the token's key claim.
    pub owner: Option<String>,
    /// `mimeType` as the uploader gave it.
    pub mime_type: Option<String>,
    /// `originalName`, for a download's file name.
    pub original_name: Option<String>,
    raw_len: u64,
}

impl Manifest {
    /// Parses manifest text. `hide` lists path prefixes (the media root, as configured
    /// and canonical) whose appearance in a value must not reach a client.
    pub fn parse(raw: &[u8], hide: &[PathBuf]) -> Result<Manifest, ManifestError> {
        let value: Value = serde_json::from_slice(raw).map_err(ManifestError::Invalid)?;
        let Value::Object(mut fields) = value else {
            return Err(ManifestError::NotAnObject);
        };
        let text = |fields: &Map<String, Value>, key: &str| {
            fields.get(key).and_then(Value::as_str).map(str::to_owned)
        };
        let access = AccessLevel::from_manifest(fields.get("accessLevel"));
        let owner = text(&fields, "userPublicKey");
        let mime_type = text(&fields, "mimeType");
        let original_name = text(&fields, "originalName");
        fields.remove("filePath");
        fields.retain(|_, v| keep(v, hide));
        Ok(Manifest {
            fields,
            access,
            owner,
            mime_type,
            original_name,
            raw_len: raw.len() as u64,
        })
    }
}

/// False for a string under one of `hide`; objects and arrays are pruned in place.
fn keep(value: &mut Value, hide: &[PathBuf]) -> bool {
    match value {
        Value::String(s) => !hide.iter().any(|root| Path::new(s).starts_with(root)),
        Value::Array(items) => {
            items.retain_mut(|v| keep(v, hide));
            true
        }
        Value::Object(map) => {
            map.retain(|_, v| keep(v, hide));
            true
        }
        _ => true,
    }
}

/// Why a manifest that exists could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON.
    #[error("manifest is not JSON: {0}")]
    Invalid(#[source] serde_json::Error),
    /// JSON, but not an object.
    #[error("manifest is not a JSON object")]
    NotAnObject,
    /// Larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest of {0} bytes is over the {MAX_MANIFEST_BYTES}-byte limit")]
    TooLarge(u64),
    /// The path is a FIFO, socket, device or directory.
    #[error("manifest is not a regular file")]
    NotRegular,
    /// The file exists but cannot be read (a dangling link included).
    #[error("cannot read manifest: {0}")]
    Io(#[source] std::io::Error),
    /// It resolves outside the media root (a link), or vanished while it was read.
    #[error("manifest resolves outside the media root")]
    Unconfined,
    /// The filesystem pool refused the read or it timed out: nothing is known, try again.
    #[error("filesystem busy: {0}")]
    Busy(#[source] FsPoolError),
}

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<PathBuf, Arc<Cached>> for Weigh {
    fn weight(&self, _key: &PathBuf, cached: &Arc<Cached>) -> u64 {
        cached.manifest.raw_len.max(ENTRY_FLOOR)
    }
}

struct Cached {
    identity: FileIdentity,
    manifest: Arc<Manifest>,
    /// Clock reading (see [`ManifestCache::clock`]) taken before the `stat` or read that
    /// last found this manifest.
    checked_ns: AtomicU64,
}

/// What the filesystem said about a manifest, from the pool thread.
enum Found {
    /// Nothing at the manifest's path.
    Absent,
    /// The same file as the cached one.
    Unchanged,
    /// New or replaced: its identity and text.
    Read(FileIdentity, Vec<u8>),
}

/// Parsed manifests, bounded (see `--manifest-cache-entries`), keyed by path and
/// revalidated by file identity once per `--revalidate-window`.
pub struct ManifestCache {
    cache: quick_cache::sync::Cache<PathBuf, Arc<Cached>, Weigh>,
    hide: Vec<PathBuf>,
    fs: FsPool,
    window_ns: u64,
    epoch: Instant,
}

impl ManifestCache {
    /// An empty cache for at most `entries` manifests, reading them on `fs` and trusting
    /// a cached one for `window` without a `stat`. `hide` as in [`Manifest::parse`].
    pub fn new(entries: usize, hide: Vec<PathBuf>, fs: FsPool, window: Duration) -> ManifestCache {
        let entries = entries.max(1);
        ManifestCache {
            cache: quick_cache::sync::Cache::with_weighter(
                entries,
                entries as u64 * ENTRY_FLOOR,
                Weigh,
            ),
            hide,
            fs,
            window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
            epoch: Instant::now(),
        }
    }

    /// Manifests currently cached.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    fn clock(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The manifest of `id` under `root`: `Ok(None)` when there is none. A cached
    /// manifest checked within the window costs no syscall; otherwise one job on the
    /// filesystem pool `stat`s it, and reads it only when it is new or has changed.
    pub async fn get(
        &self,
        root: &Root,
        id: &MediaId,
    ) -> Result<Option<Arc<Manifest>>, ManifestError> {
        let relative = id.manifest();
        let full = root.path().join(&relative);
        let cached = self.cache.get(&full);
        let checking = self.clock();
        if let Some(cached) = &cached
            && checking.saturating_sub(cached.checked_ns.load(Ordering::Relaxed)) < self.window_ns
        {
            return Ok(Some(Arc::clone(&cached.manifest)));
        }
        let known = cached.as_ref().map(|c| c.identity);
        let (job_root, job_full) = (root.clone(), full.clone());
        let found = self
            .fs
            .run(move || read_manifest(&job_root, &relative, &job_full, known))
            .await
            .map_err(ManifestError::Busy)?;
        let (identity, raw) = match found {
            Ok(Found::Read(identity, raw)) => (identity, raw),
            Ok(Found::Unchanged) => {
                if let Some(cached) = cached {
                    cached.checked_ns.fetch_max(checking, Ordering::Relaxed);
                    return Ok(Some(Arc::clone(&cached.manifest)));
                }
                return Ok(None);
            }
            Ok(Found::Absent) => {
                self.cache.remove(&full);
                return Ok(None);
            }
            Err(error) => {
                self.cache.remove(&full);
                return Err(error);
            }
        };
        let manifest = match Manifest::parse(&raw, &self.hide) {
            Ok(manifest) => Arc::new(manifest),
            Err(error) => {
                self.cache.remove(&full);
                return Err(error);
            }
        };
        let entry = Cached {
            identity,
            manifest: Arc::clone(&manifest),
            checked_ns: AtomicU64::new(checking),
        };
        self.cache.insert(full, Arc::new(entry));
        Ok(Some(manifest))
    }
}

/// The filesystem half of [`ManifestCache::get`]: `lstat`, and if the file is not the
/// one `known` describes, confine, open (regular files only) and read it. Blocking:
/// runs on the filesystem pool.
///
/// Only "nothing at the path" is an absent manifest. Once something is there — a file,
/// a directory, a FIFO, a link — whatever stops us reading it is an error, so the caller
/// fails closed: a dangling link, a link out of the media root or a file that vanishes
/// between two calls is never taken for "no manifest, public".
fn read_manifest(
    root: &Root,
    relative: &Path,
    full: &Path,
    known: Option<FileIdentity>,
) -> Result<Found, ManifestError> {
    let meta = match std::fs::symlink_metadata(full) {
        Ok(meta) if meta.file_type().is_symlink() => {
            std::fs::metadata(full).map_err(ManifestError::Io)?
        }
        Ok(meta) => meta,
        Err(error) if is_absent(&error) => return Ok(Found::Absent),
        Err(error) => return Err(ManifestError::Io(error)),
    };
    if known == Some(FileIdentity::of(&meta)) {
        return Ok(Found::Unchanged);
    }
    let real = match root.resolve(relative) {
        Ok(real) => real,
        Err(StoreError::Io(error)) => return Err(ManifestError::Io(error)),
        Err(_) => return Err(ManifestError::Unconfined),
    };
    let (mut file, meta) = match open_regular(&real) {
        Ok(opened) => opened,
        Err(OpenError::NotRegular) => return Err(ManifestError::NotRegular),
        Err(OpenError::Io(error)) => return Err(ManifestError::Io(error)),
    };
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge(meta.len()));
    }
    let mut raw = Vec::with_capacity(meta.len() as usize);
    (&mut file)
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(ManifestError::Io)?;
    if raw.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge(raw.len() as u64));
    }
    Ok(Found::Read(FileIdentity::of(&meta), raw))
}

fn is_absent(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn media_ids_are_64_lowercase_hex() {
        assert!(MediaId::parse(ID).is_some());
        assert!(MediaId::parse(&ID.to_uppercase()).is_none());
        assert!(MediaId::parse(&ID[1..]).is_none());
        assert!(MediaId::parse(&format!("{ID}0")).is_none());
        assert!(MediaId::parse(&ID.replace('a', "g")).is_none());
        assert!(MediaId::parse("..").is_none());
    }

    #[test]
    fn served_types() {
        use ServedType::*;
        let inline = |s: &str| Inline(s.to_owned());
        let cases = [
            (None, inline("application/octet-stream")),
            (Some("image/gif"), inline("image/gif")),
            (Some("IMAGE/PNG"), inline("image/png")),
            (Some("audio/ogg; codecs=opus"), inline("audio/ogg")),
            (Some("video/mp4"), inline("video/mp4")),
            (
                Some("application/octet-stream"),
                inline("application/octet-stream"),
            ),
            (Some("text/html"), Attachment),
            (Some("text/html; charset=utf-8"), Attachment),
            (Some("image/svg+xml"), Attachment),
            (Some("application/xml"), Attachment),
            (Some("text/xml"), Attachment),
            (Some("application/xhtml+xml"), Attachment),
            (Some("application/javascript"), Attachment),
            (Some("text/javascript"), Attachment),
            (Some("application/pdf"), Attachment),
            (Some("image/gif\r\nSet-Cookie: x"), Attachment),
            (Some("nonsense"), Attachment),
            (Some(""), Attachment),
        ];
        for (mime, expected) in cases {
            assert_eq!(ServedType::for_mime(mime), expected, "{mime:?}");
        }
    }

    #[test]
    fn parse_reads_fields_and_hides_paths() {
        let hide = vec![PathBuf::from("/data/media")];
        let raw = br#"{"mediaId":"x","mimeType":"image/gif","userPublicKey":"pk",
            "accessLevel":"public","filePath":"/data/media/x/original",
            "httpUrl":"/api/media/x","scratch":{"tmp":"/data/media/temp/1","n":1},
            "list":["/data/media/a","ok"]}"#;
        let m = Manifest::parse(raw, &hide).unwrap();
        assert_eq!(m.access, AccessLevel::Public);
        assert_eq!(m.owner.as_deref(), Some("pk"));
        assert_eq!(m.mime_type.as_deref(), Some("image/gif"));
        let json = serde_json::to_string(&m.fields).unwrap();
        assert!(!json.contains("/data/media"), "{json}");
        assert!(json.contains("/api/media/x"), "relative URLs stay: {json}");
        assert!(json.contains(r#""list":["ok"]"#), "{json}");
    }

    #[test]
    fn access_defaults_to_private() {
        for raw in [
            &br#"{}"#[..],
            br#"{"accessLevel":"PUBLIC"}"#,
            br#"{"accessLevel":7}"#,
            br#"{"accessLevel":"private"}"#,
        ] {
            assert_eq!(
                Manifest::parse(raw, &[]).unwrap().access,
                AccessLevel::Private
            );
        }
        assert_eq!(
            Manifest::parse(br#"{"accessLevel":"organization"}"#, &[])
                .unwrap()
                .access,
            AccessLevel::Organization
        );
        assert!(matches!(
            Manifest::parse(b"[1]", &[]),
            Err(ManifestError::NotAnObject)
        ));
        assert!(matches!(
            Manifest::parse(b"{", &[]),
            Err(ManifestError::Invalid(_))
        ));
    }

    fn pool() -> FsPool {
        FsPool::new(crate::fs_pool::FsPoolSettings {
            fs_threads: 2,
            fs_queue: 16,
            fs_timeout: Duration::from_millis(300),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn cache_revalidates_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let id = MediaId::parse(ID).unwrap();
        let cache = ManifestCache::new(4, vec![], pool(), Duration::ZERO);
        assert!(cache.get(&root, &id).await.unwrap().is_none(), "no dir yet");
        std::fs::create_dir(dir.path().join(ID)).unwrap();
        let path = dir.path().join(ID).join("manifest.json");
        std::fs::write(&path, br#"{"accessLevel":"public"}"#).unwrap();
        let first = cache.get(&root, &id).await.unwrap().unwrap();
        assert_eq!(first.access, AccessLevel::Public);
        let again = cache.get(&root, &id).await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again), "served from the cache");

        let tmp = dir.path().join(ID).join("manifest.tmp");
        std::fs::write(&tmp, br#"{"accessLevel":"private","userPublicKey":"k"}"#).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let replaced = cache.get(&root, &id).await.unwrap().unwrap();
        assert_eq!(replaced.access, AccessLevel::Private);

        std::fs::write(&path, vec![b' '; MAX_MANIFEST_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            cache.get(&root, &id).await,
            Err(ManifestError::TooLarge(_))
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(cache.get(&root, &id).await.unwrap().is_none());

        for i in 0..20 {
            let other = format!("{:064x}", i);
            std::fs::create_dir(dir.path().join(&other)).unwrap();
            std::fs::write(dir.path().join(&other).join("manifest.json"), b"{}").unwrap();
            cache
                .get(&root, &MediaId::parse(&other).unwrap())
                .await
                .unwrap();
            assert!(cache.len() <= 4, "{}", cache.len());
        }
    }

    #[tokio::test]
    async fn only_nothing_at_the_path_is_no_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let id = MediaId::parse(ID).unwrap();
        std::fs::create_dir(dir.path().join(ID)).unwrap();
        let path = dir.path().join(ID).join("manifest.json");
        let cache = ManifestCache::new(4, vec![], pool(), Duration::ZERO);
        assert!(cache.get(&root, &id).await.unwrap().is_none());

        // A link to a manifest inside the root is followed.
        std::fs::write(dir.path().join("real.json"), br#"{"accessLevel":"public"}"#).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real.json"), &path).unwrap();
        let found = cache.get(&root, &id).await.unwrap().unwrap();
        assert_eq!(found.access, AccessLevel::Public);
        std::fs::remove_file(&path).unwrap();

        // Dangling, out of the root, a directory: there, unreadable, so errors.
        std::os::unix::fs::symlink(dir.path().join("gone.json"), &path).unwrap();
        assert!(matches!(
            cache.get(&root, &id).await,
            Err(ManifestError::Io(_))
        ));
        std::fs::remove_file(&path).unwrap();
        std::fs::write(
            outside.path().join("m.json"),
            br#"{"accessLevel":"public"}"#,
        )
        .unwrap();
        std::os::unix::fs::symlink(outside.path().join("m.json"), &path).unwrap();
        assert!(matches!(
            cache.get(&root, &id).await,
            Err(ManifestError::Unconfined)
        ));
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(matches!(
            cache.get(&root, &id).await,
            Err(ManifestError::NotRegular)
        ));
    }

    #[tokio::test]
    async fn within_the_window_no_stat_after_it_a_change_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let id = MediaId::parse(ID).unwrap();
        std::fs::create_dir(dir.path().join(ID)).unwrap();
        let path = dir.path().join(ID).join("manifest.json");
        std::fs::write(&path, br#"{"accessLevel":"public"}"#).unwrap();
        let fs = pool();
        let window = Duration::from_millis(200);
        let cache = ManifestCache::new(4, vec![], fs.clone(), window);
        let first = cache.get(&root, &id).await.unwrap().unwrap();
        let jobs = fs.counters().completed.get();
        let tmp = dir.path().join(ID).join("manifest.tmp");
        std::fs::write(&tmp, br#"{"accessLevel":"private"}"#).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let changed = Instant::now();
        let during = cache.get(&root, &id).await.unwrap().unwrap();
        if changed.elapsed() < window {
            assert!(Arc::ptr_eq(&first, &during));
            assert_eq!(fs.counters().completed.get(), jobs, "no stat");
        }
        tokio::time::sleep(window).await;
        let after = cache.get(&root, &id).await.unwrap().unwrap();
        assert_eq!(after.access, AccessLevel::Private);
    }

    #[tokio::test]
    async fn a_fifo_manifest_is_an_error_not_a_hang_and_a_busy_pool_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let id = MediaId::parse(ID).unwrap();
        std::fs::create_dir(dir.path().join(ID)).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(dir.path().join(ID).join("manifest.json"))
            .status();
        assert!(made.unwrap().success(), "mkfifo (coreutils)");
        let fs = pool();
        let cache = ManifestCache::new(4, vec![], fs.clone(), Duration::from_secs(1));
        assert!(matches!(
            cache.get(&root, &id).await,
            Err(ManifestError::NotRegular)
        ));
        fs.inject_stall(Some(Duration::from_secs(30)));
        assert!(matches!(
            cache.get(&root, &id).await,
            Err(ManifestError::Busy(FsPoolError::TimedOut))
        ));
        fs.inject_stall(None);
    }
}
