//! A count with a ceiling: the one bounded-count guard every bounded wait of the service
//! takes a place in — a gate's wait queue ([`super::Gate`]), the media gate's pool of
//! stalled bodies ([`super::stalled::StalledPool`]), and the transcoder's job queue and
//! its waiting requests. A [`Place`] is taken only while the count is below
//! the ceiling, and given back when it is dropped, however the holder's work ends (a
//! client that goes away while it waits must not keep its place forever).

use std::borrow::Borrow;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::metrics::gauge::Gauge;

/// A count of places taken, at most `max`.
#[derive(Debug)]
pub(crate) struct Bound {
    taken: AtomicUsize,
    max: usize,
    // A gauge kept equal to the count, for a component that registered one (the
    // transcoder's); a gate reads its count at scrape time instead.
    gauge: Option<Gauge>,
}

impl Bound {
    /// A bound of `max` places, none taken.
    pub(crate) fn new(max: usize) -> Bound {
        Bound {
            taken: AtomicUsize::new(0),
            max,
            gauge: None,
        }
    }

    /// The same bound, mirrored in `gauge` as places are taken and given back.
    pub(crate) fn with_gauge(max: usize, gauge: Gauge) -> Bound {
        Bound {
            gauge: Some(gauge),
            ..Bound::new(max)
        }
    }

    /// Places taken now.
    pub(crate) fn len(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }

    fn take(&self) -> bool {
        let taken = self
            .taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if taken && let Some(gauge) = &self.gauge {
            gauge.inc();
        }
        taken
    }

    fn give_back(&self) {
        self.taken.fetch_sub(1, Ordering::AcqRel);
        if let Some(gauge) = &self.gauge {
            gauge.dec();
        }
    }

    /// A place if fewer than the ceiling are taken, borrowed for as long as the bound.
    pub(crate) fn enter(&self) -> Option<Place<&Bound>> {
        // Built only once taken: a place built and dropped on refusal would give back a
        // place it never took (so not `bool::then_some`).
        if self.take() { Some(Place(self)) } else { None }
    }

    /// A place that owns its bound, for work that outlives the caller (a spawned job).
    pub(crate) fn enter_owned(self: &std::sync::Arc<Self>) -> Option<Place<std::sync::Arc<Bound>>> {
        if self.take() {
            Some(Place(std::sync::Arc::clone(self)))
        } else {
            None
        }
    }
}

/// A place taken in a [`Bound`], given back when dropped. `B` is how the place reaches
/// its bound: a borrow (a wait inside one future) or an `Arc` (a spawned job).
#[derive(Debug)]
pub(crate) struct Place<B: Borrow<Bound>>(B);

impl<B: Borrow<Bound>> Drop for Place<B> {
    fn drop(&mut self) {
        self.0.borrow().give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn places_are_bounded_and_given_back_on_drop() {
        let bound = Bound::new(2);
        let a = bound.enter().expect("room");
        let b = bound.enter().expect("room");
        assert!(bound.enter().is_none(), "full");
        assert_eq!(bound.len(), 2);
        drop(a);
        let c = bound.enter().expect("a place came back");
        drop((b, c));
        assert_eq!(bound.len(), 0);
    }

    #[test]
    fn an_owned_place_outlives_its_taker_and_the_gauge_follows() {
        let gauge = Gauge::default();
        let bound = Arc::new(Bound::with_gauge(1, gauge.clone()));
        let place = bound.enter_owned().expect("room");
        assert_eq!((bound.len(), gauge.get()), (1, 1));
        assert!(bound.enter().is_none());
        let job = std::thread::spawn(move || drop(place));
        job.join().unwrap();
        assert_eq!((bound.len(), gauge.get()), (0, 0));
    }
}
