//! The circuit breaker: after `threshold` consecutive "unavailable" outcomes the client
//! stops sending requests for a cool-down, then lets exactly one probe through; the probe's
//! outcome closes the circuit or opens it for another cool-down.
//!
//! Why: a dead relay otherwise costs every caller a full deadline of attempts and backoffs,
//! and the retries pile more load on a relay that is trying to come back.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// What the breaker currently does with calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Requests go to the relay.
    Closed,
    /// Calls fail fast with `GunError::CircuitOpen`; once the cool-down is over, the next
    /// call becomes the probe.
    Open,
    /// One probe request is under way; other calls fail fast until it answers.
    HalfOpen,
}

impl BreakerState {
    fn to_u8(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    fn from_u8(raw: u8) -> Self {
        match raw {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

/// The breaker's state as lock-free numbers, for counters and metrics: updated under the
/// breaker's lock at every transition, read without it.
#[derive(Debug, Default)]
pub struct BreakerGauge {
    state: AtomicU8,
    opens: AtomicU64,
}

impl BreakerGauge {
    /// The state at the last transition.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// How many times the breaker has opened since start.
    pub fn opens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
enum Phase {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// The breaker. One per client; every request attempt asks it first.
#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    phase: Mutex<Phase>,
    gauge: std::sync::Arc<BreakerGauge>,
}

/// Leave to send one request. Report its outcome with [`Permit::record`]; a probe permit
/// dropped unreported (its caller was cancelled) lets the next call probe instead, so a
/// cancelled probe cannot keep the circuit half-open for ever.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    recorded: bool,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` consecutive failures (0: never) and
    /// stays open for `cooldown`. Transitions are published to `gauge`.
    pub(crate) fn new(
        threshold: u32,
        cooldown: Duration,
        gauge: std::sync::Arc<BreakerGauge>,
    ) -> Self {
        gauge
            .state
            .store(BreakerState::Closed.to_u8(), Ordering::Relaxed);
        Breaker {
            threshold,
            cooldown,
            phase: Mutex::new(Phase::Closed { failures: 0 }),
            gauge,
        }
    }

    /// The current state (as of the last transition: an open breaker whose cool-down is over
    /// still reads `Open` until a call arrives to probe).
    pub(crate) fn state(&self) -> BreakerState {
        self.gauge.state()
    }

    /// Leave to send a request, or `None` to fail fast.
    pub(crate) fn acquire(&self) -> Option<Permit<'_>> {
        let mut phase = self.lock();
        let probe = match *phase {
            Phase::Closed { .. } => false,
            Phase::Open { until } if Instant::now() < until => return None,
            Phase::Open { .. } => {
                self.set(&mut phase, Phase::HalfOpen { probing: true });
                true
            }
            Phase::HalfOpen { probing: true } => return None,
            Phase::HalfOpen { probing: false } => {
                *phase = Phase::HalfOpen { probing: true };
                true
            }
        };
        Some(Permit {
            breaker: self,
            probe,
            recorded: false,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        // The lock guards a few integers; a panic elsewhere cannot leave them inconsistent.
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, phase: &mut Phase, next: Phase) {
        let state = match next {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        };
        let previous = self.gauge.state();
        if state == BreakerState::Open {
            self.gauge.opens.fetch_add(1, Ordering::Relaxed);
        }
        self.gauge.state.store(state.to_u8(), Ordering::Relaxed);
        *phase = next;
        if previous != state {
            match state {
                BreakerState::Open => tracing::warn!(
                    cooldown_ms = self.cooldown.as_millis() as u64,
                    "GUN relay circuit breaker open: failing fast"
                ),
                BreakerState::Closed => tracing::info!("GUN relay circuit breaker closed"),
                BreakerState::HalfOpen => {
                    tracing::info!("GUN relay circuit breaker half-open: probing")
                }
            }
        }
    }

    fn record(&self, probe: bool, healthy: bool) {
        let mut phase = self.lock();
        let open = Phase::Open {
            until: Instant::now() + self.cooldown,
        };
        match (&*phase, healthy) {
            (Phase::Closed { .. }, true) => *phase = Phase::Closed { failures: 0 },
            (Phase::Closed { failures }, false) => {
                let failures = failures.saturating_add(1);
                if self.threshold > 0 && failures >= self.threshold {
                    self.set(&mut phase, open);
                } else {
                    *phase = Phase::Closed { failures };
                }
            }
            (Phase::HalfOpen { .. }, true) if probe => {
                self.set(&mut phase, Phase::Closed { failures: 0 })
            }
            (Phase::HalfOpen { .. }, false) if probe => self.set(&mut phase, open),
            // Answers to requests sent before the circuit opened say nothing about now.
            _ => {}
        }
    }

    fn abandon_probe(&self) {
        let mut phase = self.lock();
        if let Phase::HalfOpen { probing: true } = *phase {
            *phase = Phase::HalfOpen { probing: false };
        }
    }
}

impl Permit<'_> {
    /// Reports the request's outcome: `healthy` when the relay answered (whatever it
    /// answered), not when it was unavailable.
    pub(crate) fn record(mut self, healthy: bool) {
        self.recorded = true;
        self.breaker.record(self.probe, healthy);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            self.breaker.abandon_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn breaker(threshold: u32, cooldown_ms: u64) -> Breaker {
        Breaker::new(
            threshold,
            Duration::from_millis(cooldown_ms),
            Arc::new(BreakerGauge::default()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_probes_after_cooldown() {
        let b = breaker(3, 1000);
        for _ in 0..2 {
            b.acquire().expect("closed").record(false);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.acquire().expect("closed").record(false);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.acquire().is_none(), "fails fast while open");

        tokio::time::advance(Duration::from_millis(1001)).await;
        let probe = b.acquire().expect("cool-down over: one probe");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.acquire().is_none(), "only one probe at a time");
        probe.record(true);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.acquire().is_some());
        assert_eq!(b.gauge.opens(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens() {
        let b = breaker(1, 1000);
        b.acquire().expect("closed").record(false);
        tokio::time::advance(Duration::from_millis(1001)).await;
        b.acquire().expect("probe").record(false);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.acquire().is_none());
        assert_eq!(b.gauge.opens(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_probe_lets_the_next_call_probe() {
        let b = breaker(1, 1000);
        b.acquire().expect("closed").record(false);
        tokio::time::advance(Duration::from_millis(1001)).await;
        drop(b.acquire().expect("probe"));
        assert!(
            b.acquire().is_some(),
            "a cancelled probe must not wedge the breaker"
        );
    }

    #[test]
    fn success_resets_the_failure_count() {
        let b = breaker(2, 1000);
        b.acquire().expect("closed").record(false);
        b.acquire().expect("closed").record(true);
        b.acquire().expect("closed").record(false);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "failures were not consecutive"
        );
    }

    #[test]
    fn threshold_zero_never_opens() {
        let b = breaker(0, 1000);
        for _ in 0..100 {
            b.acquire().expect("closed").record(false);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
