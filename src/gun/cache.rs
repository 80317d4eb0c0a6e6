//! The negative cache: souls the relay reported missing, answered "missing" without a
//! request until their TTL runs out or a put writes them.
//!
//! Built on `moka`: its TTL is checked on every read (an expired entry is never returned,
//! whatever its housekeeping is doing), its capacity is a hard-ish bound with TinyLFU
//! admission and LRU eviction, and its operations take no lock we hold across an `.await`.
//!
//! Writes race with reads: a get may ask the relay, a put may then write the soul, and the
//! get's "missing" answer may arrive after the put. Caching that answer would hide the write
//! for a whole TTL. So every put bumps a write epoch, a get notes the epoch before it asks,
//! and its miss is cached only if no put completed in between (check and insert under the
//! same lock as the put's bump and removal).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use moka::policy::EvictionPolicy;
use moka::sync::Cache;

/// Longest TTL accepted: moka refuses (panics on) TTLs past 1000 years; a year is more than
/// anyone means.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Souls known to be missing, with a write epoch that keeps late misses from hiding puts.
pub(crate) struct NegativeCache {
    entries: Cache<String, ()>,
    epoch: Mutex<u64>,
}

/// The write epoch a get saw before asking the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Epoch(u64);

impl NegativeCache {
    /// A cache of at most `capacity` souls, each kept for `ttl` (clamped to a year).
    pub(crate) fn new(ttl: Duration, capacity: u64) -> Self {
        NegativeCache {
            entries: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl.min(MAX_TTL))
                .eviction_policy(EvictionPolicy::tiny_lfu())
                .build(),
            epoch: Mutex::new(0),
        }
    }

    /// Whether `soul` is known missing (a read: it also counts towards the soul's popularity
    /// for admission).
    pub(crate) fn is_missing(&self, soul: &str) -> bool {
        self.entries.get(soul).is_some()
    }

    /// The write epoch now; pass it to [`NegativeCache::record_miss`].
    pub(crate) fn epoch(&self) -> Epoch {
        Epoch(*self.lock())
    }

    /// Caches `soul` as missing, unless a put completed since `seen` was taken. Returns
    /// whether it was cached.
    pub(crate) fn record_miss(&self, soul: &str, seen: Epoch) -> bool {
        let epoch = self.lock();
        if *epoch != seen.0 {
            return false;
        }
        self.entries.insert(soul.to_owned(), ());
        true
    }

    /// Forgets `soul` because it was (or may have been) written, and invalidates misses
    /// of any soul still on their way from the relay.
    pub(crate) fn forget(&self, soul: &str) {
        let mut epoch = self.lock();
        *epoch = epoch.wrapping_add(1);
        self.entries.invalidate(soul);
    }

    /// Souls cached now (approximate: moka applies evictions in batches).
    pub(crate) fn len(&self) -> u64 {
        self.entries.entry_count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.epoch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn settle(&self) {
        self.entries.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn miss_is_remembered_then_forgotten_by_a_put() {
        let cache = NegativeCache::new(Duration::from_secs(60), 100);
        let seen = cache.epoch();
        assert!(cache.record_miss("a:1", seen));
        assert!(cache.is_missing("a:1"));
        cache.forget("a:1");
        assert!(!cache.is_missing("a:1"));
    }

    #[test]
    fn a_miss_that_started_before_a_put_is_not_cached() {
        let cache = NegativeCache::new(Duration::from_secs(60), 100);
        let seen = cache.epoch();
        cache.forget("a:1"); // the put completes while the get is on its way
        assert!(!cache.record_miss("a:1", seen));
        assert!(!cache.is_missing("a:1"));
    }

    #[test]
    fn expired_entries_are_never_served() {
        let cache = NegativeCache::new(Duration::from_millis(50), 100);
        cache.record_miss("a:1", cache.epoch());
        assert!(cache.is_missing("a:1"));
        std::thread::sleep(Duration::from_millis(80));
        assert!(!cache.is_missing("a:1"), "served past its TTL");
    }

    #[test]
    fn capacity_is_bounded() {
        let cache = NegativeCache::new(Duration::from_secs(60), 10);
        for i in 0..1000 {
            cache.record_miss(&format!("soul:{i}"), cache.epoch());
        }
        cache.settle();
        assert!(cache.len() <= 10, "{} entries kept", cache.len());
    }
}
