//! Where media bodies whose clients read nothing wait, out of the in-flight bound: a
//! pool bounded in count that drops the longest-stalled body when it is full.
//!
//! # Why a second pool
//! The media gate (`admission::Gate`) bounds bodies in flight (`--max-in-flight`), and a body
//! holds its slot until its last byte is on the wire. A client that asks for a large
//! file and never reads holds that slot until the write-stall timeout drops it: 600 of
//! them took all 512 slots, and every normal GIF request got `503` for as long as the
//! stall window lasted, again and again for as long as the attack was repeated. Here a
//! body whose connection has sent nothing for `--stalled-after` gives its slot back and
//! takes a place in this pool instead (`--max-stalled`, several times larger: a stalled
//! body costs a connection's kernel send buffer and possibly a file descriptor, no CPU).
//! When the pool is full, the body that has been stalled longest — the one least likely
//! to ever finish — is dropped: its connection is reset (`SO_LINGER` 0, see
//! `server::timed_io`), so its kernel send queue is freed at once rather than kept in
//! FIN-WAIT-1 for as long as the client holds its end open. A normal request therefore
//! waits at most about 1.25 × `--stalled-after` behind non-reading clients (the socket
//! checks progress four times per interval), and an attacker must keep opening
//! connections faster than the pool turns over to hold any slot.
//!
//! # Coming back
//! A stalled body whose client reads again re-enters the in-flight bound if a slot is
//! free; if none is, it stays in the pool but counts as freshly stalled (moved to the
//! young end), so a client that reads, however slowly, is not the one dropped for room.
//! The write-stall timeout (`--write-stall-timeout`) still drops a body that makes no
//! progress at all, in the pool or not.
//!
//! A client that stopped reading may still see a few more segments accepted just after
//! its body was first reported stalled (its kernel grows the receive window as data
//! arrives): the body then comes back for a moment and stalls again, with a younger
//! ticket. That churn ends once the window is full, and it costs a slot for at most
//! `--stalled-after` each time.
//!
//! # Who calls what
//! The media gate attaches a [`BodyPermit`] (as an `Arc<dyn Stallable>`) to each media
//! body; the body hands it to its connection's outbox (`outbox::stall::StallWatch`); the
//! socket (`server::timed_io`) calls `stalled` and `resumed` there, which reach
//! [`Stallable::stall`] and [`Stallable::resume`] of the permit; the pool calls
//! [`Evict::evict`] on the connection it drops.
//! Lock order: a slot's lock, then the pool's; the pool never takes a slot's lock.
//!
//! # Counting
//! The pool's occupancy is a [`Bound`], the bounded count every admission point uses:
//! each entry holds a [`Place`] in it, so an entry removed for whatever reason (finished,
//! dropped for room) gives its place back by being dropped. Places are taken and entries
//! removed under the pool's lock, so the count is always the number of entries.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::bound::{Bound, Place};
use crate::outbox::stall::{Evict, Stallable};

/// Counters of a stalled pool (`…_stalled_events_total{kind}`).
#[derive(Debug, Default)]
pub struct StalledCounters {
    /// Bodies that gave their in-flight slot back and entered the pool.
    pub entered: Counter,
    /// Bodies that moved again and took an in-flight slot back.
    pub resumed: Counter,
    /// Bodies dropped (connection closed) because the pool was full.
    pub dropped: Counter,
}

/// The bounded pool of stalled bodies of one gate.
#[derive(Debug)]
pub struct StalledPool {
    // The entries' places; readable without the lock (metrics, `Gate::in_flight`).
    occupancy: Arc<Bound>,
    entries: Mutex<Entries>,
    counters: StalledCounters,
}

#[derive(Debug, Default)]
struct Entries {
    next_ticket: u64,
    // Ticket order is stall order: the first entry is the longest stalled.
    by_age: BTreeMap<u64, Entry>,
}

/// A stalled body in the pool: its connection, to drop it for room, and its place in
/// the pool's count, given back when the entry goes.
#[derive(Debug)]
struct Entry {
    connection: Weak<dyn Evict>,
    // Held for its drop, which gives the place back.
    _place: Place<Arc<Bound>>,
}

impl StalledPool {
    /// A pool of at most `capacity` bodies (0: bodies never leave the in-flight bound;
    /// the gate does not stall them, and a pool asked anyway keeps the youngest one).
    pub fn new(capacity: usize) -> StalledPool {
        StalledPool {
            occupancy: Arc::new(Bound::new(capacity.max(1))),
            entries: Mutex::default(),
            counters: StalledCounters::default(),
        }
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        // Nothing panics while the lock is held; the map stays consistent if it did.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bodies in the pool now.
    pub fn len(&self) -> usize {
        self.occupancy.len()
    }

    /// True when the pool holds no body.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pool's counters.
    pub fn counters(&self) -> &StalledCounters {
        &self.counters
    }

    /// Adds the body of `connection` as the youngest entry and returns its ticket;
    /// when the pool is full, closes the connection of the oldest entry to make room.
    fn enter(&self, connection: Weak<dyn Evict>) -> u64 {
        let mut dropped = Vec::new();
        let ticket = {
            let mut entries = self.entries();
            let ticket = entries.next_ticket;
            entries.next_ticket += 1;
            let place = loop {
                if let Some(place) = self.occupancy.enter_owned() {
                    break Some(place);
                }
                // Full: the longest stalled leaves, and its place with it.
                match entries.by_age.pop_first() {
                    Some((_, oldest)) => dropped.push(oldest.connection),
                    // Every place is an entry's, taken and given back under this lock,
                    // so a full count has an entry; were it not so, the newcomer is the
                    // one dropped rather than counted nowhere.
                    None => break None,
                }
            };
            match place {
                Some(place) => {
                    let entry = Entry {
                        connection,
                        _place: place,
                    };
                    entries.by_age.insert(ticket, entry);
                }
                None => dropped.push(connection),
            }
            ticket
        };
        self.counters.entered.inc();
        // Outside the lock: waking a connection's task is not ours to hold a lock over.
        for oldest in dropped {
            self.counters.dropped.inc();
            if let Some(connection) = oldest.upgrade() {
                connection.evict();
            }
        }
        ticket
    }

    /// Removes `ticket` (a body finished or was dropped); false if it was not there
    /// (already dropped for room).
    fn leave(&self, ticket: u64) -> bool {
        // The entry's place goes back as it is dropped, still under the lock.
        self.entries().by_age.remove(&ticket).is_some()
    }

    /// The body of `ticket` moved again: back into the in-flight bound if `slots` has a
    /// free slot, else to the young end of the pool (its new ticket). A ticket dropped
    /// for room stays dropped: its connection is closing.
    fn resume(&self, ticket: u64, slots: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit, u64> {
        let mut entries = self.entries();
        if !entries.by_age.contains_key(&ticket) {
            return Err(ticket);
        }
        let result = match Arc::clone(slots).try_acquire_owned() {
            Ok(permit) => {
                entries.by_age.remove(&ticket);
                Ok(permit)
            }
            Err(_) => {
                let young = entries.next_ticket;
                entries.next_ticket += 1;
                // Present: checked above, under the same lock. It keeps its place.
                if let Some(entry) = entries.by_age.remove(&ticket) {
                    entries.by_age.insert(young, entry);
                }
                Err(young)
            }
        };
        drop(entries);
        if result.is_ok() {
            self.counters.resumed.inc();
        }
        result
    }
}

/// A media body's admission: an in-flight slot, or a place in the stalled pool. Attached
/// to the body as an `Arc<dyn Stallable>` (see [`BodyPermit::into_guard`]); dropping it frees
/// whichever it holds.
#[derive(Debug)]
pub struct BodyPermit {
    slots: Arc<Semaphore>,
    pool: Arc<StalledPool>,
    state: Mutex<Held>,
}

#[derive(Debug)]
enum Held {
    // Held for its drop, which gives the slot back.
    InFlight(#[allow(dead_code)] OwnedSemaphorePermit),
    // The body's ticket in the pool.
    Stalled(u64),
}

impl BodyPermit {
    /// The admission of a body that took `permit` from `slots` and may wait in `pool`.
    pub fn new(
        permit: OwnedSemaphorePermit,
        slots: Arc<Semaphore>,
        pool: Arc<StalledPool>,
    ) -> BodyPermit {
        BodyPermit {
            slots,
            pool,
            state: Mutex::new(Held::InFlight(permit)),
        }
    }

    /// The guard to attach to the body (`Body::attach`), in the one type the body's
    /// outbox watches for.
    pub fn into_guard(self) -> Arc<dyn Stallable> {
        Arc::new(self)
    }

    fn state(&self) -> MutexGuard<'_, Held> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Stallable for BodyPermit {
    fn stall(&self, connection: &Weak<dyn Evict>) {
        let released = {
            let mut state = self.state();
            if matches!(*state, Held::Stalled(_)) {
                return;
            }
            // Into the pool before the slot goes back, so the body is always counted.
            let ticket = self.pool.enter(connection.clone());
            std::mem::replace(&mut *state, Held::Stalled(ticket))
        };
        // The slot goes back outside the lock: it wakes the request queued first.
        drop(released);
    }

    fn resume(&self) -> bool {
        let mut state = self.state();
        let Held::Stalled(ticket) = *state else {
            return true;
        };
        match self.pool.resume(ticket, &self.slots) {
            Ok(permit) => {
                *state = Held::InFlight(permit);
                true
            }
            Err(ticket) => {
                *state = Held::Stalled(ticket);
                false
            }
        }
    }
}

impl Drop for BodyPermit {
    fn drop(&mut self) {
        if let Held::Stalled(ticket) = *self.state() {
            self.pool.leave(ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;

    struct Fixture {
        slots: Arc<Semaphore>,
        pool: Arc<StalledPool>,
    }

    impl Fixture {
        fn new(in_flight: usize, stalled: usize) -> Fixture {
            Fixture {
                slots: Arc::new(Semaphore::new(in_flight)),
                pool: Arc::new(StalledPool::new(stalled)),
            }
        }

        /// A body admitted now, sent through its own connection's outbox.
        fn admit(&self) -> (Arc<dyn Stallable>, Arc<Outbox>) {
            let permit = Arc::clone(&self.slots)
                .try_acquire_owned()
                .expect("a free slot");
            let slot = BodyPermit::new(permit, Arc::clone(&self.slots), Arc::clone(&self.pool));
            let guard = slot.into_guard();
            let outbox = Arc::new(Outbox::default());
            outbox.watch(Arc::downgrade(&guard));
            (guard, outbox)
        }
    }

    fn evicted(outbox: &Outbox) -> bool {
        let waker = futures_util::task::noop_waker();
        outbox.poll_evicted(&mut std::task::Context::from_waker(&waker))
    }

    #[test]
    fn a_stalled_body_gives_its_slot_back_and_takes_it_again_when_it_moves() {
        let fx = Fixture::new(1, 4);
        let (guard, outbox) = fx.admit();
        assert_eq!(fx.slots.available_permits(), 0);
        outbox.stalled();
        assert_eq!(
            fx.slots.available_permits(),
            1,
            "the slot is free for others"
        );
        assert_eq!(fx.pool.len(), 1);
        outbox.stalled();
        assert_eq!(fx.pool.len(), 1, "stalling twice is stalling once");
        assert!(outbox.resumed(), "a free slot: back in flight");
        assert_eq!((fx.slots.available_permits(), fx.pool.len()), (0, 0));
        let c = fx.pool.counters();
        assert_eq!(
            (c.entered.get(), c.resumed.get(), c.dropped.get()),
            (1, 1, 0)
        );
        drop(guard);
        assert_eq!(
            fx.slots.available_permits(),
            1,
            "dropped in flight: slot back"
        );
    }

    #[test]
    fn a_body_that_moves_while_every_slot_is_taken_stays_in_the_pool_as_the_youngest() {
        let fx = Fixture::new(2, 2);
        let (a, a_conn) = fx.admit();
        let (b, b_conn) = fx.admit();
        a_conn.stalled();
        b_conn.stalled();
        // Both slots go to new bodies.
        let (_c, _) = fx.admit();
        let (d, _) = fx.admit();
        assert!(!a_conn.resumed(), "no free slot: still in the pool");
        assert_eq!(fx.pool.len(), 2);
        // A third stall needs room: the oldest is now `b`, not `a`, which moved.
        let (e, e_conn) = {
            drop(d);
            fx.admit()
        };
        e_conn.stalled();
        assert!(evicted(&b_conn), "the longest stalled is dropped");
        assert!(!evicted(&a_conn));
        assert!(!evicted(&e_conn));
        assert_eq!(fx.pool.counters().dropped.get(), 1);
        // The dropped body's connection closes: its slot frees nothing twice.
        drop(b);
        assert_eq!(fx.pool.len(), 2);
        drop((a, e));
        assert_eq!(fx.pool.len(), 0);
    }

    #[test]
    fn a_pool_of_zero_asked_anyway_keeps_only_the_youngest() {
        let fx = Fixture::new(4, 0);
        let (a, a_conn) = fx.admit();
        let (b, b_conn) = fx.admit();
        a_conn.stalled();
        b_conn.stalled();
        assert!(evicted(&a_conn), "made room for the younger");
        assert!(!evicted(&b_conn));
        assert_eq!(fx.pool.len(), 1);
        drop((a, b));
        assert_eq!((fx.pool.len(), fx.slots.available_permits()), (0, 4));
    }

    #[test]
    fn the_pool_is_bounded_and_drops_the_oldest_in_stall_order() {
        let fx = Fixture::new(20, 3);
        let bodies: Vec<_> = (0..8).map(|_| fx.admit()).collect();
        for (_, outbox) in &bodies {
            outbox.stalled();
            assert!(fx.pool.len() <= 3, "bounded at every step");
        }
        let dropped: Vec<bool> = bodies.iter().map(|(_, o)| evicted(o)).collect();
        assert_eq!(dropped, [true, true, true, true, true, false, false, false]);
        assert_eq!(fx.pool.counters().dropped.get(), 5);
        assert_eq!(
            fx.slots.available_permits(),
            20,
            "no stalled body holds a slot"
        );
        // A dropped body that moves again does not come back: its connection is closing.
        assert!(!bodies[0].1.resumed());
        assert_eq!(fx.slots.available_permits(), 20);
        drop(bodies);
        assert_eq!((fx.pool.len(), fx.slots.available_permits()), (0, 20));
    }
}
