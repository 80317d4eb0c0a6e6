//! The client's counters: prometheus-client counters bumped on the request path, read
//! directly by the periodic summary log and by tests, and registered once for `/metrics`
//! by [`GunCounters::register`] (`oip_media_gun_*`).

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use super::breaker::{BreakerGauge, BreakerState};
use super::error::GunError;
use crate::metrics::{ReadAtScrape, by_kind};

/// Counters of one client. Each number is exact; values read while requests run may
/// come from slightly different instants.
#[derive(Debug, Default)]
pub struct GunCounters {
    /// `get` calls.
    pub requests: Counter,
    /// `put` calls.
    pub puts: Counter,
    /// HTTP requests sent to the relay (every attempt of every get and put).
    pub upstream_requests: Counter,
    /// Gets answered with a record.
    pub found: Counter,
    /// Gets answered "missing" (from the relay or from the negative cache).
    pub misses: Counter,
    /// Gets answered "missing" from the negative cache, without a request.
    pub negative_cache_hits: Counter,
    /// Gets that joined another caller's request for the same soul instead of sending one.
    pub coalesced: Counter,
    /// 404 answers from the relay: record misses and misconfiguration alike.
    pub upstream_404s: Counter,
    /// Requests sent again after an "unavailable" outcome.
    pub retries: Counter,
    /// Calls that ended in an error, by kind.
    pub errors: GunErrorCounters,
    pub(crate) breaker: Arc<BreakerGauge>,
}

/// Calls that ended in an error, by [`GunError`] kind.
#[derive(Debug, Default)]
pub struct GunErrorCounters {
    /// [`GunError::Config`].
    pub config: Counter,
    /// [`GunError::InvalidSoul`].
    pub invalid_soul: Counter,
    /// [`GunError::Misconfigured`].
    pub misconfigured: Counter,
    /// [`GunError::BadRequest`].
    pub bad_request: Counter,
    /// [`GunError::Rejected`].
    pub rejected: Counter,
    /// [`GunError::Unavailable`].
    pub unavailable: Counter,
    /// [`GunError::CircuitOpen`].
    pub circuit_open: Counter,
    /// [`GunError::InvalidResponse`].
    pub invalid_response: Counter,
    /// [`GunError::Internal`].
    pub internal: Counter,
}

impl GunErrorCounters {
    fn all(&self) -> [(&'static str, &Counter); 9] {
        [
            ("config", &self.config),
            ("invalid_soul", &self.invalid_soul),
            ("misconfigured", &self.misconfigured),
            ("bad_request", &self.bad_request),
            ("rejected", &self.rejected),
            ("unavailable", &self.unavailable),
            ("circuit_open", &self.circuit_open),
            ("invalid_response", &self.invalid_response),
            ("internal", &self.internal),
        ]
    }

    /// All errors together.
    pub fn total(&self) -> u64 {
        self.all().iter().map(|(_, c)| c.get()).sum()
    }
}

pub(crate) fn bump(counter: &Counter) {
    counter.inc();
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

    /// Share of gets answered from the negative cache (0 when there was no get).
    pub fn negative_cache_hit_rate(&self) -> f64 {
        let requests = self.requests.get();
        if requests == 0 {
            0.0
        } else {
            self.negative_cache_hits.get() as f64 / requests as f64
        }
    }

    /// The circuit breaker's state at its last transition.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Times the breaker opened since start.
    pub fn breaker_opens(&self) -> u64 {
        self.breaker.opens()
    }

    /// Registers every counter, and the breaker's state, under `registry` (the root
    /// registry: the names carry their `gun_` prefix, as documented).
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "gun_gets",
            "GUN record gets asked of the client",
            self.requests.clone(),
        );
        registry.register(
            "gun_puts",
            "GUN puts asked of the client",
            self.puts.clone(),
        );
        registry.register(
            "gun_upstream_requests",
            "HTTP requests sent to the relay (every attempt)",
            self.upstream_requests.clone(),
        );
        registry.register(
            "gun_get_results",
            "GUN gets by result",
            by_kind([
                ("found", &self.found),
                ("missing", &self.misses),
                ("negative_cache_hit", &self.negative_cache_hits),
                ("coalesced", &self.coalesced),
            ]),
        );
        registry.register(
            "gun_upstream_404s",
            "404 answers from the relay",
            self.upstream_404s.clone(),
        );
        registry.register(
            "gun_retries",
            "Relay requests retried after an unavailable outcome",
            self.retries.clone(),
        );
        registry.register(
            "gun_errors",
            "GUN calls that ended in an error, by kind",
            by_kind(self.errors.all()),
        );
        let breaker = Arc::clone(&self.breaker);
        registry.register(
            "gun_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
            ReadAtScrape::gauge(move || match breaker.state() {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            }),
        );
        let breaker = Arc::clone(&self.breaker);
        registry.register(
            "gun_breaker_opens",
            "Times the breaker opened",
            ReadAtScrape::counter(move || breaker.opens()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_by_kind_hit_rate_and_registration() {
        let c = GunCounters::default();
        for _ in 0..4 {
            bump(&c.requests);
        }
        bump(&c.negative_cache_hits);
        c.error(&GunError::CircuitOpen);
        c.error(&GunError::InvalidSoul);
        assert_eq!(c.requests.get(), 4);
        assert_eq!(c.errors.circuit_open.get(), 1);
        assert_eq!(c.errors.invalid_soul.get(), 1);
        assert_eq!(c.errors.total(), 2);
        assert!((c.negative_cache_hit_rate() - 0.25).abs() < f64::EPSILON);
        assert_eq!(c.breaker_state(), BreakerState::Closed);
        let mut registry = crate::metrics::registry();
        c.register(&mut registry);
        let text = crate::metrics::encode(&registry);
        assert!(text.contains("oip_media_gun_gets_total 4"), "{text}");
        assert!(
            text.contains("oip_media_gun_errors_total{kind=\"circuit_open\"} 1"),
            "{text}"
        );
        assert!(text.contains("oip_media_gun_breaker_state 0"), "{text}");
    }
}
