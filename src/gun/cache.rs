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
//!
//! Replicas share puts through Redis (`src/replicas/`): another replica's put reaches
//! this cache as [`NegativeCache::forget`], and a reconnection after an outage clears it
//! ([`NegativeCache::forget_all`]). While invalidations cannot arrive (Redis configured
//! but unreachable), a miss is trusted only for the short fallback TTL, whenever it was
//! cached: entries carry the instant they were cached, checked on every read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use moka::policy::EvictionPolicy;
use moka::sync::Cache;

/// Longest TTL accepted: moka refuses (panics on) TTLs past 1000 years; a year is more than
/// anyone means.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Souls known to be missing, with a write epoch that keeps late misses from hiding puts.
pub(crate) struct NegativeCache {
    entries: Cache<String, Instant>,
    epoch: Mutex<u64>,
    /// How long a miss is trusted while `isolated`.
    isolated_ttl: Duration,
    /// Whether puts through other replicas may go unheard (Redis configured, not
    /// connected): then misses older than `isolated_ttl` are not served.
    isolated: AtomicBool,
}

/// The write epoch a get saw before asking the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Epoch(u64);

impl NegativeCache {
    /// A cache of at most `capacity` souls, each kept for `ttl` (clamped to a year), or
    /// `isolated_ttl` while [`NegativeCache::set_isolated`] says so.
    pub(crate) fn new(ttl: Duration, capacity: u64, isolated_ttl: Duration) -> Self {
        NegativeCache {
            isolated_ttl,
            isolated: AtomicBool::new(false),
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
        let Some(cached) = self.entries.get(soul) else {
            return false;
        };
        if self.isolated.load(Ordering::Relaxed) && cached.elapsed() >= self.isolated_ttl {
            // Possibly written through another replica since: ask the relay again.
            self.entries.invalidate(soul);
            return false;
        }
        true
    }

    /// Whether puts through other replicas may go unheard: while true, misses are
    /// trusted for the short TTL only.
    pub(crate) fn set_isolated(&self, isolated: bool) {
        self.isolated.store(isolated, Ordering::Relaxed);
    }

    /// Forgets every soul (after an outage during which puts elsewhere went unheard),
    /// and invalidates misses still on their way from the relay.
    pub(crate) fn forget_all(&self) {
        let mut epoch = self.lock();
        *epoch = epoch.wrapping_add(1);
        self.entries.invalidate_all();
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
        self.entries.insert(soul.to_owned(), Instant::now());
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
        let cache = NegativeCache::new(Duration::from_secs(60), 100, Duration::from_secs(60));
        let seen = cache.epoch();
        assert!(cache.record_miss("a:1", seen));
        assert!(cache.is_missing("a:1"));
        cache.forget("a:1");
        assert!(!cache.is_missing("a:1"));
    }

    #[test]
    fn a_miss_that_started_before_a_put_is_not_cached() {
        let cache = NegativeCache::new(Duration::from_secs(60), 100, Duration::from_secs(60));
        let seen = cache.epoch();
        cache.forget("a:1"); // the put completes while the get is on its way
        assert!(!cache.record_miss("a:1", seen));
        assert!(!cache.is_missing("a:1"));
    }

    #[test]
    fn expired_entries_are_never_served() {
        let cache = NegativeCache::new(Duration::from_millis(50), 100, Duration::from_secs(60));
        cache.record_miss("a:1", cache.epoch());
        assert!(cache.is_missing("a:1"));
        std::thread::sleep(Duration::from_millis(80));
        assert!(!cache.is_missing("a:1"), "served past its TTL");
    }

    #[test]
    fn while_isolated_a_miss_is_trusted_for_the_short_ttl_only() {
        let cache = NegativeCache::new(Duration::from_secs(3600), 100, Duration::from_millis(50));
        cache.record_miss("old", cache.epoch());
        std::thread::sleep(Duration::from_millis(80));
        assert!(cache.is_missing("old"), "connected: the long TTL applies");
        cache.set_isolated(true);
        cache.record_miss("new", cache.epoch());
        assert!(cache.is_missing("new"), "a fresh miss is still trusted");
        assert!(
            !cache.is_missing("old"),
            "isolated: a miss older than the short TTL is asked again, whenever cached"
        );
        std::thread::sleep(Duration::from_millis(80));
        assert!(!cache.is_missing("new"), "served past the short TTL");
        cache.set_isolated(false);
        cache.record_miss("again", cache.epoch());
        std::thread::sleep(Duration::from_millis(80));
        assert!(cache.is_missing("again"), "back to the long TTL");
    }

    #[test]
    fn forget_all_clears_and_stops_misses_on_their_way() {
        let cache = NegativeCache::new(Duration::from_secs(60), 100, Duration::from_secs(60));
        cache.record_miss("a:1", cache.epoch());
        let seen = cache.epoch();
        cache.forget_all();
        assert!(!cache.is_missing("a:1"));
        assert!(!cache.record_miss("b:1", seen), "started before the clear");
    }

    #[test]
    fn capacity_is_bounded() {
        let cache = NegativeCache::new(Duration::from_secs(60), 10, Duration::from_secs(60));
        for i in 0..1000 {
            cache.record_miss(&format!("soul:{i}"), cache.epoch());
        }
        cache.settle();
        assert!(cache.len() <= 10, "{} entries kept", cache.len());
    }
}
