//! What one resolution did ([`ResolveStats`], returned with every response so a caller
//! can see why a reference stayed a DID) and what all of them did
//! ([`ResolverCounters`], process-wide, for a metrics endpoint).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// The work and the outcome of one request. Serialised in camelCase, like the
/// indexer's JSON.
///
/// `lookups = cacheHits + misses`: every distinct reference looked up, once per
/// request, whether the process-wide cache answered it or not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolveStats {
    /// Distinct references looked up (each counts once against the budget).
    pub lookups: u64,
    /// Lookups the record cache answered (found, or remembered as missing).
    pub cache_hits: u64,
    /// Lookups the record cache could not answer (asked of a source, or left
    /// unresolved for want of one).
    pub misses: u64,
    /// Lookups no source had a record for (they stay DIDs).
    pub not_found: u64,
    /// Lookups whose source failed (error status, bad answer, the source's own
    /// timeout); they stay DIDs and are not remembered, so a later request tries again.
    pub source_errors: u64,
    /// Lookups with no source configured for their kind of DID (`did:gun:` without
    /// `ELASTICSEARCHHOST` or a GUN relay, others without `ELASTICSEARCHHOST`); they
    /// stay DIDs.
    pub unresolved_no_source: u64,
    /// Requests sent to sources: Elasticsearch searches (one per level and index, unless
    /// a level has more references than one search carries) and GUN gets (one per
    /// `did:gun:` reference neither the cache nor Elasticsearch had).
    pub source_requests: u64,
    /// Wall time of the resolution, in milliseconds.
    pub elapsed_ms: u64,
    /// The depth the caller asked for.
    pub requested_depth: u32,
    /// The depth actually used (`requestedDepth` capped by `--resolve-max-depth`).
    pub depth: u32,
    /// True when the requested depth was over the cap.
    pub capped: bool,
    /// True when the lookup budget ran out: some references stayed DIDs for that reason.
    pub budget_exhausted: bool,
    /// True when the output limit was reached: some references stayed DIDs so the
    /// response would not grow past `--resolve-max-output-bytes`.
    pub output_limit_reached: bool,
    /// True when `--resolve-timeout` ran out: some references stayed DIDs because
    /// their lookups did not finish in time.
    pub timed_out: bool,
}

/// Process-wide totals over every resolution, updated once per request.
#[derive(Debug, Default)]
pub struct ResolverCounters {
    resolutions: AtomicU64,
    lookups: AtomicU64,
    cache_hits: AtomicU64,
    misses: AtomicU64,
    not_found: AtomicU64,
    source_errors: AtomicU64,
    unresolved_no_source: AtomicU64,
    source_requests: AtomicU64,
    budget_exhaustions: AtomicU64,
    depth_caps: AtomicU64,
    output_limits: AtomicU64,
    timeouts: AtomicU64,
}

/// A copy of the [`ResolverCounters`] at one moment, for a metrics endpoint or a test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CountersSnapshot {
    /// Resolutions run.
    pub resolutions: u64,
    /// Distinct references looked up, summed over resolutions.
    pub lookups: u64,
    /// Lookups the record cache answered.
    pub cache_hits: u64,
    /// Lookups the record cache could not answer.
    pub misses: u64,
    /// Lookups no source had a record for.
    pub not_found: u64,
    /// Lookups whose source failed.
    pub source_errors: u64,
    /// Lookups with no source configured.
    pub unresolved_no_source: u64,
    /// Requests sent to sources.
    pub source_requests: u64,
    /// Resolutions that ran out of lookup budget.
    pub budget_exhaustions: u64,
    /// Resolutions whose requested depth was capped.
    pub depth_caps: u64,
    /// Resolutions that reached the output limit.
    pub output_limits: u64,
    /// Resolutions that ran out of time.
    pub timeouts: u64,
}

impl ResolverCounters {
    /// Adds one finished resolution.
    pub fn record(&self, stats: &ResolveStats) {
        let add = |counter: &AtomicU64, n: u64| {
            counter.fetch_add(n, Ordering::Relaxed);
        };
        add(&self.resolutions, 1);
        add(&self.lookups, stats.lookups);
        add(&self.cache_hits, stats.cache_hits);
        add(&self.misses, stats.misses);
        add(&self.not_found, stats.not_found);
        add(&self.source_errors, stats.source_errors);
        add(&self.unresolved_no_source, stats.unresolved_no_source);
        add(&self.source_requests, stats.source_requests);
        add(&self.budget_exhaustions, u64::from(stats.budget_exhausted));
        add(&self.depth_caps, u64::from(stats.capped));
        add(&self.output_limits, u64::from(stats.output_limit_reached));
        add(&self.timeouts, u64::from(stats.timed_out));
    }

    /// The totals so far.
    pub fn snapshot(&self) -> CountersSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CountersSnapshot {
            resolutions: get(&self.resolutions),
            lookups: get(&self.lookups),
            cache_hits: get(&self.cache_hits),
            misses: get(&self.misses),
            not_found: get(&self.not_found),
            source_errors: get(&self.source_errors),
            unresolved_no_source: get(&self.unresolved_no_source),
            source_requests: get(&self.source_requests),
            budget_exhaustions: get(&self.budget_exhaustions),
            depth_caps: get(&self.depth_caps),
            output_limits: get(&self.output_limits),
            timeouts: get(&self.timeouts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_and_stats_serialise_in_camel_case() {
        let counters = ResolverCounters::default();
        let stats = ResolveStats {
            lookups: 3,
            cache_hits: 1,
            misses: 2,
            capped: true,
            ..ResolveStats::default()
        };
        counters.record(&stats);
        counters.record(&ResolveStats {
            budget_exhausted: true,
            ..ResolveStats::default()
        });
        let snap = counters.snapshot();
        assert_eq!(snap.resolutions, 2);
        assert_eq!(snap.lookups, 3);
        assert_eq!(snap.cache_hits, 1);
        assert_eq!(snap.misses, 2);
        assert_eq!(snap.depth_caps, 1);
        assert_eq!(snap.budget_exhaustions, 1);
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["cacheHits"], 1);
        assert_eq!(json["budgetExhausted"], false);
        assert_eq!(json["unresolvedNoSource"], 0);
        assert_eq!(json["elapsedMs"], 0);
    }
}
