//! `manifest.json` of content-addressed media (SPEC §1B): read once, kept parsed in a
//! bounded cache, and revalidated against the file's identity on every lookup so an
//! edited manifest (an access level changed, say) is noticed on the next request.
//!
//! The manifest's `mimeType` came from the uploader. [`ServedType`] is the one place
//! that decides what of it may reach a `Content-Type` header.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::store::{FileIdentity, Root, StoreError};

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
    /// The file exists but cannot be read.
    #[error("cannot read manifest: {0}")]
    Io(#[source] std::io::Error),
}

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<PathBuf, Cached> for Weigh {
    fn weight(&self, _key: &PathBuf, cached: &Cached) -> u64 {
        cached.manifest.raw_len.max(ENTRY_FLOOR)
    }
}

#[derive(Clone)]
struct Cached {
    identity: FileIdentity,
    manifest: Arc<Manifest>,
}

/// Parsed manifests, bounded (see `--manifest-cache-entries`), keyed by path and
/// revalidated by file identity.
pub struct ManifestCache {
    cache: quick_cache::sync::Cache<PathBuf, Cached, Weigh>,
    hide: Vec<PathBuf>,
}

impl ManifestCache {
    /// An empty cache for at most `entries` manifests. `hide` as in [`Manifest::parse`].
    pub fn new(entries: usize, hide: Vec<PathBuf>) -> ManifestCache {
        let entries = entries.max(1);
        ManifestCache {
            cache: quick_cache::sync::Cache::with_weighter(
                entries,
                entries as u64 * ENTRY_FLOOR,
                Weigh,
            ),
            hide,
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

    /// The manifest of `id` under `root`: `Ok(None)` when there is none. A `stat` per
    /// lookup; the file is read and parsed only when it is new or has changed.
    pub fn get(&self, root: &Root, id: &MediaId) -> Result<Option<Arc<Manifest>>, ManifestError> {
        let relative = id.manifest();
        let full = root.path().join(&relative);
        let meta = match std::fs::metadata(&full) {
            Ok(meta) => meta,
            Err(error) if is_absent(&error) => {
                self.cache.remove(&full);
                return Ok(None);
            }
            Err(error) => return Err(ManifestError::Io(error)),
        };
        if let Some(cached) = self.cache.get(&full)
            && cached.identity == FileIdentity::of(&meta)
        {
            return Ok(Some(cached.manifest));
        }
        let real = match root.resolve(&relative) {
            Ok(real) => real,
            Err(StoreError::Io(error)) => return Err(ManifestError::Io(error)),
            // Gone since the stat, or a link out of the root: no manifest.
            Err(_) => return Ok(None),
        };
        let mut file = std::fs::File::open(&real).map_err(ManifestError::Io)?;
        let meta = file.metadata().map_err(ManifestError::Io)?;
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
        let manifest = Arc::new(Manifest::parse(&raw, &self.hide)?);
        self.cache.insert(
            full,
            Cached {
                identity: FileIdentity::of(&meta),
                manifest: Arc::clone(&manifest),
            },
        );
        Ok(Some(manifest))
    }
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

    #[test]
    fn cache_revalidates_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let id = MediaId::parse(ID).unwrap();
        let cache = ManifestCache::new(4, vec![]);
        assert!(cache.get(&root, &id).unwrap().is_none(), "no dir yet");
        std::fs::create_dir(dir.path().join(ID)).unwrap();
        let path = dir.path().join(ID).join("manifest.json");
        std::fs::write(&path, br#"{"accessLevel":"public"}"#).unwrap();
        let first = cache.get(&root, &id).unwrap().unwrap();
        assert_eq!(first.access, AccessLevel::Public);
        let again = cache.get(&root, &id).unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again), "served from the cache");

        let tmp = dir.path().join(ID).join("manifest.tmp");
        std::fs::write(&tmp, br#"{"accessLevel":"private","userPublicKey":"k"}"#).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let replaced = cache.get(&root, &id).unwrap().unwrap();
        assert_eq!(replaced.access, AccessLevel::Private);

        std::fs::write(&path, vec![b' '; MAX_MANIFEST_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            cache.get(&root, &id),
            Err(ManifestError::TooLarge(_))
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(cache.get(&root, &id).unwrap().is_none());

        for i in 0..20 {
            let other = format!("{:064x}", i);
            std::fs::create_dir(dir.path().join(&other)).unwrap();
            std::fs::write(dir.path().join(&other).join("manifest.json"), b"{}").unwrap();
            cache.get(&root, &MediaId::parse(&other).unwrap()).unwrap();
            assert!(cache.len() <= 4, "{}", cache.len());
        }
    }
}
