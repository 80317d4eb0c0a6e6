//! The one process-wide record cache: bounded by entry count *and* bytes, with a TTL
//! for found records and a shorter one for misses.
//!
//! This replaces the indexer's shared `recordsInDB` array, which grew to 15,000
//! records (1–2 GB), was scanned linearly, and had its records mutated in place by
//! every resolution. Here records are stored as `Arc<Value>` and only ever read: a
//! resolution builds its output as new values, so nothing one request does can show
//! in another's result.
//!
//! Built on `moka` (TinyLFU admission: a burst of one-off lookups, such as one wide
//! fan-out, does not flush the records every request needs).

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A record found by a source, shared read-only, with its size measured once.
#[derive(Debug, Clone)]
pub struct FoundRecord {
    /// The record (`{data, oip, …}`). Never mutated.
    pub record: Arc<Value>,
    /// Its length as compact JSON: what the byte bounds (cache and output) count.
    pub json_bytes: u64,
}

impl FoundRecord {
    /// Wraps `record`, measuring it.
    pub fn new(record: Value) -> FoundRecord {
        let json_bytes = json_len(&record);
        FoundRecord {
            record: Arc::new(record),
            json_bytes,
        }
    }
}

/// What the cache remembers about a DID.
#[derive(Debug, Clone)]
pub enum CachedRecord {
    /// The record.
    Found(FoundRecord),
    /// No source had it when last asked (kept for the negative TTL only).
    Missing,
}

/// The bounded record cache.
///
/// Bounds: moka applies inserts and evictions in batches, so between two maintenance
/// runs the cache can hold up to a few hundred recent inserts beyond its bounds. The
/// resolver runs the pending maintenance after each batch of inserts, so at rest
/// (and whenever [`RecordCache::run_pending_tasks`] has run) both bounds hold exactly.
pub struct RecordCache {
    inner: moka::future::Cache<String, CachedRecord>,
    max_entries: u64,
    max_bytes: u64,
}

impl RecordCache {
    /// An empty cache holding at most `max_entries` records and `max_bytes` of them
    /// (as JSON, keys included); found records live `ttl`, misses `negative_ttl`.
    pub fn new(max_entries: u64, max_bytes: u64, ttl: Duration, negative_ttl: Duration) -> Self {
        let max_entries = max_entries.max(1);
        let max_bytes = max_bytes.max(1);
        // One capacity enforcing two bounds (the trick `store` uses too): every entry
        // weighs its size but never less than `floor = max_bytes / max_entries`. Then
        // Σ weight ≤ max_bytes implies Σ size ≤ max_bytes, and also
        // count × floor ≤ max_bytes, i.e. count ≤ max_entries.
        let floor = (max_bytes / max_entries).max(1);
        let inner = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |key: &String, value: &CachedRecord| {
                let size = match value {
                    CachedRecord::Found(found) => found.json_bytes,
                    CachedRecord::Missing => 0,
                };
                let weight = (key.len() as u64).saturating_add(size).max(floor);
                u32::try_from(weight).unwrap_or(u32::MAX)
            })
            .expire_after(RecordExpiry { ttl, negative_ttl })
            .build();
        RecordCache {
            inner,
            max_entries,
            max_bytes,
        }
    }

    /// What the cache knows about `did`, if anything.
    pub async fn get(&self, did: &str) -> Option<CachedRecord> {
        self.inner.get(did).await
    }

    /// Remembers a found record.
    pub async fn insert_found(&self, did: String, record: FoundRecord) {
        self.inner.insert(did, CachedRecord::Found(record)).await;
    }

    /// Remembers that no source has `did` (for the negative TTL).
    pub async fn insert_missing(&self, did: String) {
        self.inner.insert(did, CachedRecord::Missing).await;
    }

    /// Forgets `did` (for a writer that knows the record just changed).
    pub async fn invalidate(&self, did: &str) {
        self.inner.invalidate(did).await;
    }

    /// Applies pending inserts, evictions and expirations now, so that the counts
    /// below are exact and both bounds hold.
    pub async fn run_pending_tasks(&self) {
        self.inner.run_pending_tasks().await;
    }

    /// Entries held (as of the last maintenance run).
    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }

    /// Σ weight of the entries (as of the last maintenance run); never more than
    /// [`RecordCache::max_bytes`] once maintenance has run.
    pub fn weighted_size(&self) -> u64 {
        self.inner.weighted_size()
    }

    /// The entry bound.
    pub fn max_entries(&self) -> u64 {
        self.max_entries
    }

    /// The byte bound.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Walks the entries actually held and returns (count, Σ key + JSON bytes): an
    /// independent check of the bounds that does not rely on moka's own accounting.
    /// Linear in the cache size; for tests and diagnostics.
    pub fn measure(&self) -> (u64, u64) {
        self.inner
            .iter()
            .fold((0, 0), |(count, bytes), (key, value)| {
                let size = match &value {
                    CachedRecord::Found(found) => found.json_bytes,
                    CachedRecord::Missing => 0,
                };
                (count + 1, bytes + key.len() as u64 + size)
            })
    }
}

/// Found records live `ttl`, misses `negative_ttl`, counted from the (last) insert.
struct RecordExpiry {
    ttl: Duration,
    negative_ttl: Duration,
}

impl RecordExpiry {
    fn lifetime(&self, value: &CachedRecord) -> Duration {
        match value {
            CachedRecord::Found(_) => self.ttl,
            CachedRecord::Missing => self.negative_ttl,
        }
    }
}

impl moka::Expiry<String, CachedRecord> for RecordExpiry {
    fn expire_after_create(
        &self,
        _: &String,
        value: &CachedRecord,
        _: Instant,
    ) -> Option<Duration> {
        Some(self.lifetime(value))
    }

    fn expire_after_update(
        &self,
        _: &String,
        value: &CachedRecord,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.lifetime(value))
    }
}

/// Length of `value` as compact JSON, counted without building the string.
///
/// Goes through `Value`'s `Display` (compact JSON) rather than `serde_json::to_writer`:
/// `Display` is compiled once inside serde_json, while the generic writer would be
/// instantiated here, unoptimised in debug builds and so tens of times slower.
pub(crate) fn json_len(value: &Value) -> u64 {
    struct Counter(u64);
    impl fmt::Write for Counter {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.0 += s.len() as u64;
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a `Value` to a sink that never fails cannot fail.
    let _ = write!(counter, "{value}");
    counter.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_len_matches_serialisation() {
        let v = json!({"data": {"basic": {"name": "Squat ✓"}}, "oip": {"did": "did:gun:a:b"}});
        assert_eq!(json_len(&v), serde_json::to_vec(&v).unwrap().len() as u64);
    }

    #[tokio::test]
    async fn found_and_missing_entries_expire_on_their_own_clocks() {
        let cache = RecordCache::new(
            100,
            1 << 20,
            Duration::from_millis(400),
            Duration::from_millis(100),
        );
        cache
            .insert_found("did:a".into(), FoundRecord::new(json!({"x": 1})))
            .await;
        cache.insert_missing("did:m".into()).await;
        assert!(matches!(
            cache.get("did:a").await,
            Some(CachedRecord::Found(_))
        ));
        assert!(matches!(
            cache.get("did:m").await,
            Some(CachedRecord::Missing)
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(cache.get("did:m").await.is_none(), "miss outlived its TTL");
        assert!(cache.get("did:a").await.is_some());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            cache.get("did:a").await.is_none(),
            "record outlived its TTL"
        );
        cache
            .insert_found("did:b".into(), FoundRecord::new(json!(1)))
            .await;
        cache.invalidate("did:b").await;
        assert!(cache.get("did:b").await.is_none());
    }
}
