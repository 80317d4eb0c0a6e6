//! What one resolution did ([`ResolveStats`], returned with every response so a caller
//! can see why a reference stayed a DID) and what all of them did
//! ([`ResolverCounters`], process-wide, registered for `/metrics`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::metrics::by_kind;

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

/// A bound that left some of a record's references as DIDs, as named in
/// [`RecordStats::bounds_hit`] (and in the `kind` label of
/// `oip_media_resolve_bounds_hit_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Bound {
    /// `--resolve-max-depth` capped the requested depth, and this record had
    /// references at the capped depth that a deeper resolution would have replaced.
    Depth,
    /// `--resolve-budget` was spent before some of this record's references were
    /// looked up.
    Budget,
    /// `--resolve-max-output-bytes` was spent before some of this record's references
    /// were copied in.
    Output,
    /// `--resolve-timeout` ran out before some of this record's references were
    /// looked up.
    Timeout,
}

/// What resolution did for one record of a request: the `recordStats` array of an
/// answer holds one per record, in the order of `records` (one for the `record` form).
/// Serialised in camelCase.
///
/// The bounds are per request (one lookup budget, output budget, deadline and depth
/// cap for the whole batch, which is what bounds the process); this says which
/// records they cut short. Each reference counts once per place it appears in the
/// record's resolved tree: `resolved + unresolved` is every reference met while
/// building this record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordStats {
    /// References replaced by a record, a name (`resolveNamesOnly`) or a cycle stub.
    pub resolved: u64,
    /// References left as DIDs, for whatever reason (the counters below, or a bound).
    pub unresolved: u64,
    /// Of `unresolved`: looked up, and no source had the record.
    pub not_found: u64,
    /// Of `unresolved`: the source failed (error status, authentication or TLS
    /// failure, bad answer); never reported as not found.
    pub source_errors: u64,
    /// Of `unresolved`: no source is configured for that kind of DID.
    pub unresolved_no_source: u64,
    /// Memory the copies, names and stubs put into this record take, as the output
    /// budget counts it (the record's own input is not included).
    pub output_bytes: u64,
    /// The bounds that left some of this record's references as DIDs, in a fixed
    /// order (`depth`, `budget`, `output`, `timeout`); empty when none did.
    pub bounds_hit: Vec<Bound>,
}

impl RecordStats {
    /// Notes that `bound` cut this record short (once per bound).
    pub fn hit(&mut self, bound: Bound) {
        if let Err(at) = self.bounds_hit.binary_search(&bound) {
            self.bounds_hit.insert(at, bound);
        }
    }
}

/// Process-wide totals over every resolution, updated once per request; registered for
/// `/metrics` by [`ResolverCounters::register`] (`oip_media_resolve_*`).
#[derive(Debug, Default)]
pub struct ResolverCounters {
    /// Resolutions run.
    pub resolutions: Counter,
    /// Distinct references looked up, summed over resolutions.
    pub lookups: Counter,
    /// Lookups the record cache answered.
    pub cache_hits: Counter,
    /// Lookups the record cache could not answer.
    pub misses: Counter,
    /// Lookups no source had a record for.
    pub not_found: Counter,
    /// Lookups whose source failed.
    pub source_errors: Counter,
    /// Lookups with no source configured.
    pub unresolved_no_source: Counter,
    /// Requests sent to sources.
    pub source_requests: Counter,
    /// Resolutions that ran out of lookup budget.
    pub budget_exhaustions: Counter,
    /// Resolutions whose requested depth was capped.
    pub depth_caps: Counter,
    /// Resolutions that reached the output limit.
    pub output_limits: Counter,
    /// Resolutions that ran out of time.
    pub timeouts: Counter,
}

impl ResolverCounters {
    /// Adds one finished resolution.
    pub fn record(&self, stats: &ResolveStats) {
        self.resolutions.inc();
        self.lookups.inc_by(stats.lookups);
        self.cache_hits.inc_by(stats.cache_hits);
        self.misses.inc_by(stats.misses);
        self.not_found.inc_by(stats.not_found);
        self.source_errors.inc_by(stats.source_errors);
        self.unresolved_no_source.inc_by(stats.unresolved_no_source);
        self.source_requests.inc_by(stats.source_requests);
        self.budget_exhaustions
            .inc_by(u64::from(stats.budget_exhausted));
        self.depth_caps.inc_by(u64::from(stats.capped));
        self.output_limits
            .inc_by(u64::from(stats.output_limit_reached));
        self.timeouts.inc_by(u64::from(stats.timed_out));
    }

    /// Registers the counters under `registry` (the root registry: the names carry
    /// their `resolve_` prefix, as documented).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "resolve_requests",
            "Resolutions run (one per /api/resolve request)",
            self.resolutions.clone(),
        );
        registry.register(
            "resolve_lookups",
            "Reference lookups by result",
            by_kind([
                ("cache_hit", &self.cache_hits),
                ("miss", &self.misses),
                ("not_found", &self.not_found),
                ("source_error", &self.source_errors),
                ("no_source", &self.unresolved_no_source),
            ]),
        );
        registry.register(
            "resolve_source_requests",
            "Requests sent to GUN and Elasticsearch by the resolver",
            self.source_requests.clone(),
        );
        registry.register(
            "resolve_bounds_hit",
            "Resolutions cut short by a bound, by bound",
            by_kind([
                ("budget", &self.budget_exhaustions),
                ("depth", &self.depth_caps),
                ("output", &self.output_limits),
                ("timeout", &self.timeouts),
            ]),
        );
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
        assert_eq!(counters.resolutions.get(), 2);
        assert_eq!(counters.lookups.get(), 3);
        assert_eq!(counters.cache_hits.get(), 1);
        assert_eq!(counters.misses.get(), 2);
        assert_eq!(counters.depth_caps.get(), 1);
        assert_eq!(counters.budget_exhaustions.get(), 1);
        let mut record = RecordStats::default();
        record.hit(Bound::Timeout);
        record.hit(Bound::Depth);
        record.hit(Bound::Timeout);
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["boundsHit"], serde_json::json!(["depth", "timeout"]));
        assert_eq!(json["unresolvedNoSource"], 0);
        assert_eq!(
            serde_json::to_value(RecordStats::default()).unwrap()["boundsHit"],
            serde_json::json!([])
        );
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["cacheHits"], 1);
        assert_eq!(json["budgetExhausted"], false);
        assert_eq!(json["unresolvedNoSource"], 0);
        assert_eq!(json["elapsedMs"], 0);
    }
}
