//! The client's counters: plain atomics bumped on the request path, read by the periodic
//! summary log and (later) the metrics endpoint through [`GunCounters::snapshot`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::breaker::{BreakerGauge, BreakerState};
use super::error::GunError;

/// Counters of one client. Relaxed atomics: each number is exact, but a snapshot taken
/// while requests run may mix values from slightly different instants.
#[derive(Debug, Default)]
pub struct GunCounters {
    pub(crate) requests: AtomicU64,
    pub(crate) puts: AtomicU64,
    pub(crate) upstream_requests: AtomicU64,
    pub(crate) found: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) negative_cache_hits: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) upstream_404s: AtomicU64,
    pub(crate) retries: AtomicU64,
    errors: ErrorCounters,
    pub(crate) breaker: Arc<BreakerGauge>,
}

#[derive(Debug, Default)]
struct ErrorCounters {
    config: AtomicU64,
    invalid_soul: AtomicU64,
    misconfigured: AtomicU64,
    bad_request: AtomicU64,
    rejected: AtomicU64,
    unavailable: AtomicU64,
    circuit_open: AtomicU64,
    invalid_response: AtomicU64,
    internal: AtomicU64,
}

/// A copy of the counters at one instant, ready to serialise for metrics or a log line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GunCountersSnapshot {
    /// `get` calls.
    pub requests: u64,
    /// `put` calls.
    pub puts: u64,
    /// HTTP requests sent to the relay (every attempt of every get and put).
    pub upstream_requests: u64,
    /// Gets answered with a record.
    pub found: u64,
    /// Gets answered "missing" (from the relay or from the negative cache).
    pub misses: u64,
    /// Gets answered "missing" from the negative cache, without a request.
    pub negative_cache_hits: u64,
    /// Gets that joined another caller's request for the same soul instead of sending one.
    pub coalesced: u64,
    /// 404 answers from the relay: record misses and misconfiguration alike.
    pub upstream_404s: u64,
    /// Requests sent again after an "unavailable" outcome.
    pub retries: u64,
    /// Calls that ended in an error, by kind.
    pub errors: GunErrorCounts,
    /// The circuit breaker's state.
    pub breaker_state: BreakerState,
    /// Times the breaker opened since start.
    pub breaker_opens: u64,
    /// Share of gets answered from the negative cache (0 when there was no get).
    pub negative_cache_hit_rate: f64,
}

/// Calls that ended in an error, by [`GunError`] kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GunErrorCounts {
    /// [`GunError::Config`].
    pub config: u64,
    /// [`GunError::InvalidSoul`].
    pub invalid_soul: u64,
    /// [`GunError::Misconfigured`].
    pub misconfigured: u64,
    /// [`GunError::BadRequest`].
    pub bad_request: u64,
    /// [`GunError::Rejected`].
    pub rejected: u64,
    /// [`GunError::Unavailable`].
    pub unavailable: u64,
    /// [`GunError::CircuitOpen`].
    pub circuit_open: u64,
    /// [`GunError::InvalidResponse`].
    pub invalid_response: u64,
    /// [`GunError::Internal`].
    pub internal: u64,
}

impl GunErrorCounts {
    /// All errors together.
    pub fn total(&self) -> u64 {
        self.config
            + self.invalid_soul
            + self.misconfigured
            + self.bad_request
            + self.rejected
            + self.unavailable
            + self.circuit_open
            + self.invalid_response
            + self.internal
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl GunCounters {
    /// Counts one call that ended in `error`.
    pub(crate) fn error(&self, error: &GunError) {
        let e = &self.errors;
        bump(match error {
            GunError::Config { .. } => &e.config,
            GunError::InvalidSoul => &e.invalid_soul,
            GunError::Misconfigured { .. } => &e.misconfigured,
            GunError::BadRequest { .. } => &e.bad_request,
            GunError::Rejected { .. } => &e.rejected,
            GunError::Unavailable { .. } => &e.unavailable,
            GunError::CircuitOpen => &e.circuit_open,
            GunError::InvalidResponse { .. } => &e.invalid_response,
            GunError::Internal { .. } => &e.internal,
        });
    }

    /// Every counter now, with the breaker state and the negative-cache hit rate.
    pub fn snapshot(&self) -> GunCountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let e = &self.errors;
        let requests = get(&self.requests);
        let negative_cache_hits = get(&self.negative_cache_hits);
        GunCountersSnapshot {
            requests,
            puts: get(&self.puts),
            upstream_requests: get(&self.upstream_requests),
            found: get(&self.found),
            misses: get(&self.misses),
            negative_cache_hits,
            coalesced: get(&self.coalesced),
            upstream_404s: get(&self.upstream_404s),
            retries: get(&self.retries),
            errors: GunErrorCounts {
                config: get(&e.config),
                invalid_soul: get(&e.invalid_soul),
                misconfigured: get(&e.misconfigured),
                bad_request: get(&e.bad_request),
                rejected: get(&e.rejected),
                unavailable: get(&e.unavailable),
                circuit_open: get(&e.circuit_open),
                invalid_response: get(&e.invalid_response),
                internal: get(&e.internal),
            },
            breaker_state: self.breaker.state(),
            breaker_opens: self.breaker.opens(),
            negative_cache_hit_rate: if requests == 0 {
                0.0
            } else {
                negative_cache_hits as f64 / requests as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_counts_errors_by_kind_and_hit_rate() {
        let c = GunCounters::default();
        for _ in 0..4 {
            bump(&c.requests);
        }
        bump(&c.negative_cache_hits);
        c.error(&GunError::CircuitOpen);
        c.error(&GunError::InvalidSoul);
        let s = c.snapshot();
        assert_eq!(s.requests, 4);
        assert_eq!(s.errors.circuit_open, 1);
        assert_eq!(s.errors.invalid_soul, 1);
        assert_eq!(s.errors.total(), 2);
        assert!((s.negative_cache_hit_rate - 0.25).abs() < f64::EPSILON);
        assert_eq!(s.breaker_state, BreakerState::Closed);
        let json = serde_json::to_value(&s).expect("serialisable");
        assert_eq!(json["breaker_state"], "closed");
    }
}
