//! Stall signalling: how the socket of a connection tells the admission guards of its
//! responses that the client stopped reading, and how a stalled pool asks that
//! connection to close.
//!
//! # Why
//! A response whose client stops reading keeps its admission permit (the media gate's)
//! until the write-stall timeout drops the connection; hundreds of clients that ask for
//! a large file and never read would hold every permit that long. The socket
//! (`server::timed_io`) is what sees a send make no progress, and the permit lives in a
//! body, so the connection is where the two meet: a body hands its [`Stallable`] guards
//! to the connection's [`StallWatch`] ([`StallWatch::watch`], from `Body::send_through`),
//! the socket calls [`StallWatch::stalled`] when the send has made no progress for a
//! while and [`StallWatch::resumed`] when it moves again, and a guard moved to a gate's
//! bounded pool of stalled bodies may ask the connection to close ([`Evict::evict`])
//! when the pool needs room for a newer one. The socket learns of that with
//! [`StallWatch::poll_evicted`] and fails its write, so hyper closes the connection.
//!
//! This module knows nothing of gates or pools: guards reach it through [`Stallable`],
//! and it reaches the connection through [`Evict`], so the admission module may import
//! it without a cycle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::Context;

use futures_util::task::AtomicWaker;

/// A guard that may step out of its admission bound while its connection makes no
/// progress (the media gate's `BodyPermit`). Attached to a body like any guard (as an
/// `Arc<dyn Stallable>`); the watch keeps only a weak reference, so the guard still goes
/// when the body's guards go.
pub trait Stallable: Send + Sync {
    /// The connection has sent nothing for a while: leave the bound (idempotent).
    /// `connection` is what to [`Evict::evict`] if the guard's new place needs it.
    fn stall(&self, connection: &Weak<dyn Evict>);
    /// The connection moves again: come back into the bound if there is room. True when
    /// the guard is in its bound (or never left it).
    fn resume(&self) -> bool;
}

/// A connection that can be asked to close (a stalled pool dropped its body for room).
pub trait Evict: Send + Sync {
    /// Asks the connection to close: its socket fails its next write.
    fn evict(&self);
}

/// The stall side of one connection: the guards to tell, and whether it was evicted.
#[derive(Default)]
pub struct StallWatch {
    // Guards of this connection's responses that may leave their bound on a stall.
    watched: Mutex<Vec<Weak<dyn Stallable>>>,
    // Set once a stalled pool dropped this connection; `evict_waker` wakes its task.
    evicted: AtomicBool,
    evict_waker: AtomicWaker,
}

impl std::fmt::Debug for StallWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StallWatch")
            .field("watched", &self.watched().len())
            .field("evicted", &self.evicted.load(Ordering::Relaxed))
            .finish()
    }
}

impl StallWatch {
    fn watched(&self) -> MutexGuard<'_, Vec<Weak<dyn Stallable>>> {
        // Nothing panics while the lock is held; a list of weak references stays
        // consistent if it did.
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets the socket tell `guard` about stalls. Called by a body when it is given its
    /// connection, for each [`Stallable`] guard it holds.
    pub fn watch(&self, guard: Weak<dyn Stallable>) {
        let mut watched = self.watched();
        // Forget the guards of finished responses (at most a couple live at a time).
        watched.retain(|w| w.strong_count() > 0);
        watched.push(guard);
    }

    fn live(&self) -> Vec<Arc<dyn Stallable>> {
        self.watched().iter().filter_map(Weak::upgrade).collect()
    }

    /// The socket has sent nothing for `--stalled-after`: every watched guard leaves its
    /// bound; `connection` is what a pool may evict. Called once per stall check, never
    /// on the write path.
    pub fn stalled(&self, connection: &Weak<dyn Evict>) {
        // Outside the lock: a guard's own lock and its pool's are taken below.
        for guard in self.live() {
            guard.stall(connection);
        }
    }

    /// The socket sends again: watched guards come back into their bound if there is
    /// room. True when all of them are in it (nothing is left in a stalled pool).
    pub fn resumed(&self) -> bool {
        let mut all_back = true;
        for guard in self.live() {
            all_back &= guard.resume();
        }
        all_back
    }

    /// True once [`Evict::evict`] was called; otherwise arranges for `cx` to be woken
    /// when it is. The socket asks only while its send is stalled.
    pub fn poll_evicted(&self, cx: &mut Context<'_>) -> bool {
        if self.evicted.load(Ordering::Acquire) {
            return true;
        }
        self.evict_waker.register(cx.waker());
        self.evicted.load(Ordering::Acquire)
    }

    /// The connection is gone: forget every guard.
    pub fn clear(&self) {
        let watched = std::mem::take(&mut *self.watched());
        drop(watched);
    }
}

impl Evict for StallWatch {
    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.evict_waker.wake();
    }
}
