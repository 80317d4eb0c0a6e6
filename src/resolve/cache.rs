//! The one process-wide record cache: bounded by entry count *and* bytes of memory,
//! with a TTL for found records and a shorter one for misses.
//!
//! This replaces the indexer's shared `recordsInDB` array, which grew to 15,000
//! records (1–2 GB), was scanned linearly, and had its records mutated in place by
//! every resolution. Here records are stored as `Arc<Value>` and only ever read: a
//! resolution builds its output as new values, so nothing one request does can show
//! in another's result.
//!
//! An entry weighs what it costs in memory — the record's heap as
//! [`memory`](super::memory) counts it, its key, and the cache's own bookkeeping per
//! entry — not its JSON length, which is several times smaller.
//!
//! Built on `moka` (TinyLFU admission: a burst of one-off lookups, such as one wide
//! fan-out, does not flush the records every request needs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::memory::{Sizing, heap_bytes, str_bytes, value_bytes};

/// Bytes the cache spends per entry beyond the key and the record: moka's entry and
/// its access-order nodes, its hash-map slot, the `Arc`s' counts. Measured with a
/// counting allocator over thousands of entries (~450 bytes; the test in
/// `tests/resolve_memory_weight.rs` checks the total within 5 %).
pub const ENTRY_OVERHEAD: u64 = 448;

/// A record found by a source, shared read-only, with its memory cost measured once.
#[derive(Debug, Clone)]
pub struct FoundRecord {
    /// The record (`{data, oip, …}`). Never mutated.
    pub record: Arc<Value>,
    /// Heap the record holds as stored (its tree and its slot): what the cache
    /// weighs it at.
    pub held_bytes: u64,
    /// Heap one copy of it takes (`Value::clone` sizes containers exactly): what the
    /// output budget charges each time resolution copies it into an answer.
    pub copy_bytes: u64,
}

impl FoundRecord {
    /// Wraps `record`, measuring it.
    pub fn new(record: Value) -> FoundRecord {
        FoundRecord {
            held_bytes: value_bytes(&record, Sizing::AsHeld),
            copy_bytes: heap_bytes(&record, Sizing::AsCloned),
            record: Arc::new(record),
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
    /// Bumped by every invalidation. A lookup takes it before asking the sources and
    /// files its answers only if no invalidation came in between: otherwise a lookup
    /// that read the old state just before a put (here or on another replica) would
    /// cache that old state after the put's invalidation, for a whole TTL.
    epoch: std::sync::atomic::AtomicU64,
}

/// The cache's invalidation count when a lookup started; see [`RecordCache::epoch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch(u64);

impl RecordCache {
    /// An empty cache holding at most `max_entries` records and `max_bytes` of memory
    /// (records, keys and bookkeeping, see `entry_cost`); found records live `ttl`,
    /// misses `negative_ttl`.
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
                let weight = entry_cost(key, value).max(floor);
                u32::try_from(weight).unwrap_or(u32::MAX)
            })
            .expire_after(RecordExpiry { ttl, negative_ttl })
            .build();
        RecordCache {
            inner,
            max_entries,
            max_bytes,
            epoch: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// What the cache knows about `did`, if anything.
    pub async fn get(&self, did: &str) -> Option<CachedRecord> {
        self.inner.get(did).await
    }

    /// The invalidation count now: take it before asking the sources, and pass it to
    /// the inserts of what they answered.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Remembers a found record, unless an invalidation came since `seen`.
    pub async fn insert_found(&self, did: String, record: FoundRecord, seen: Epoch) {
        self.insert_unless_invalidated(did, CachedRecord::Found(record), seen)
            .await;
    }

    /// Remembers that no source has `did` (for the negative TTL), unless an
    /// invalidation came since `seen`.
    pub async fn insert_missing(&self, did: String, seen: Epoch) {
        self.insert_unless_invalidated(did, CachedRecord::Missing, seen)
            .await;
    }

    /// Inserts, then takes the entry back out if an invalidation raced with it. Checking
    /// after the insert (not only before) closes the window between the check and the
    /// insert without a lock held across an await: an invalidation that bumps the
    /// epoch before our insert lands is seen by the second check, and one after it
    /// removes the entry itself.
    async fn insert_unless_invalidated(&self, did: String, value: CachedRecord, seen: Epoch) {
        if self.epoch() != seen {
            return;
        }
        self.inner.insert(did.clone(), value).await;
        if self.epoch() != seen {
            self.inner.invalidate(&did).await;
        }
    }

    /// Forgets `did` (for a writer that knows the record just changed), and keeps
    /// lookups already under way from filing what they read before.
    pub async fn invalidate(&self, did: &str) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.inner.invalidate(did).await;
    }

    /// Forgets every entry (after a time when writes elsewhere went unheard), and keeps
    /// lookups already under way from filing what they read before.
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.inner.invalidate_all();
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

    /// Walks the entries actually held and returns (count, Σ `entry_cost`): an
    /// independent check of the bounds that does not rely on moka's own accounting.
    /// Linear in the cache size; for tests and diagnostics.
    pub fn measure(&self) -> (u64, u64) {
        self.inner
            .iter()
            .fold((0, 0), |(count, bytes), (key, value)| {
                (count + 1, bytes + entry_cost(&key, &value))
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

/// What one entry costs in memory: its key, the record's heap (none for a miss) and
/// [`ENTRY_OVERHEAD`].
pub fn entry_cost(key: &str, value: &CachedRecord) -> u64 {
    let record = match value {
        CachedRecord::Found(found) => found.held_bytes,
        CachedRecord::Missing => 0,
    };
    str_bytes(key.len()) + record + ENTRY_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn found_and_missing_entries_expire_on_their_own_clocks() {
        let cache = RecordCache::new(
            100,
            1 << 20,
            Duration::from_millis(400),
            Duration::from_millis(100),
        );
        cache
            .insert_found(
                "did:a".into(),
                FoundRecord::new(json!({"x": 1})),
                cache.epoch(),
            )
            .await;
        cache.insert_missing("did:m".into(), cache.epoch()).await;
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
            .insert_found("did:b".into(), FoundRecord::new(json!(1)), cache.epoch())
            .await;
        cache.invalidate("did:b").await;
        assert!(cache.get("did:b").await.is_none());
    }

    #[tokio::test]
    async fn an_answer_read_before_an_invalidation_is_not_cached_after_it() {
        let cache = RecordCache::new(
            100,
            1 << 20,
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        // A lookup starts, a put invalidates (here or through another replica), then the
        // lookup files the miss it read before the put: it must not be cached.
        let seen = cache.epoch();
        cache.invalidate("did:gun:abc:1").await;
        cache.insert_missing("did:gun:abc:1".into(), seen).await;
        cache
            .insert_found("did:x".into(), FoundRecord::new(json!(1)), seen)
            .await;
        assert!(cache.get("did:gun:abc:1").await.is_none());
        assert!(cache.get("did:x").await.is_none());
        // The same after an invalidation of everything (a reconnect to Redis).
        let seen = cache.epoch();
        cache.invalidate_all();
        cache.insert_missing("did:gun:abc:1".into(), seen).await;
        assert!(cache.get("did:gun:abc:1").await.is_none());
        // A lookup that started after the invalidation caches as usual.
        let seen = cache.epoch();
        cache.insert_missing("did:gun:abc:1".into(), seen).await;
        assert!(matches!(
            cache.get("did:gun:abc:1").await,
            Some(CachedRecord::Missing)
        ));
    }
}
