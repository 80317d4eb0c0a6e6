//! Single-flight: concurrent callers for one key share one call, whatever it ends in —
//! GUN gets of one soul (`gun`), transcodes of one (file version, format) (`transcode`).
//!
//! Hand-written (a map of shared futures) because the crates that do this either tie the
//! call to the first caller — cancel that caller and the others wait on nothing — or keep
//! results around. Here the call runs in its own task:
//! - the first caller (the leader) spawns it and every caller, leader included, awaits a
//!   `Shared` receiver of its result, so dropping any caller, the leader too, leaves the
//!   call running for the others;
//! - the task removes its map entry when it ends, on success, error, panic or runtime
//!   shutdown alike (a drop guard), so a finished soul is never "in flight" for ever;
//! - entries carry an id, so a task only ever removes its own entry, not a newer call's
//!   that started after [`SingleFlight::forget`].
//!
//! The caller bounds the task (the GUN client's call deadline, the transcoder's job
//! timeout), so a call nobody waits for any more still ends soon.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::sync::oneshot;

/// The result every caller of one flight receives; `Err` when the task ended without one.
type Outcome<V> = Result<V, oneshot::error::RecvError>;

/// One call under way: its id and the shared receiver of its result.
type Flight<V> = (u64, Shared<BoxFuture<'static, Outcome<V>>>);

type FlightMap<V> = Mutex<HashMap<String, Flight<V>>>;

/// Whether this caller started the upstream call or joined one under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Started it.
    Leader,
    /// Joined one under way.
    Follower,
}

/// Calls under way, by key.
pub(crate) struct SingleFlight<V> {
    flights: Arc<FlightMap<V>>,
    next_id: AtomicU64,
}

/// Why no flight could be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NoRuntime;

impl<V: Clone + Send + Sync + 'static> SingleFlight<V> {
    pub(crate) fn new() -> Self {
        SingleFlight {
            flights: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
        }
    }

    /// Joins the call under way for `key`, or starts `start()` in a new task. Returns the
    /// caller's role and a future of the shared result. Needs a Tokio runtime.
    pub(crate) fn join<F, Fut>(
        &self,
        key: &str,
        start: F,
    ) -> Result<(Role, impl Future<Output = Outcome<V>> + use<V, F, Fut>), NoRuntime>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NoRuntime)?;
        let mut flights = lock(&self.flights);
        if let Some((_, result)) = flights.get(key) {
            return Ok((Role::Follower, result.clone()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let result = rx.boxed().shared();
        flights.insert(key.to_owned(), (id, result.clone()));
        drop(flights);

        let guard = RemoveOnDrop {
            flights: Arc::clone(&self.flights),
            key: key.to_owned(),
            id,
        };
        let work = start();
        runtime.spawn(async move {
            let value = work.await;
            // Leave the map before answering: a caller that arrives after this starts a
            // new call, and the state the call updated (the negative cache) is already set.
            drop(guard);
            let _ = tx.send(value);
        });
        Ok((Role::Leader, result))
    }

    /// Detaches the call under way for `key`, if any: callers already waiting keep waiting
    /// on it, the next caller starts a new one. A put does this so a get that starts after
    /// the write never receives an answer read before it.
    pub(crate) fn forget(&self, key: &str) {
        lock(&self.flights).remove(key);
    }

    /// Calls under way.
    pub(crate) fn len(&self) -> usize {
        lock(&self.flights).len()
    }
}

fn lock<V>(flights: &FlightMap<V>) -> std::sync::MutexGuard<'_, HashMap<String, Flight<V>>> {
    // Held only for map operations; a panic elsewhere leaves the map usable.
    flights.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes a flight's entry when its task ends in any way.
struct RemoveOnDrop<V> {
    flights: Arc<FlightMap<V>>,
    key: String,
    id: u64,
}

impl<V> Drop for RemoveOnDrop<V> {
    fn drop(&mut self) {
        let mut flights = lock(&self.flights);
        if flights.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            flights.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_call() {
        let flights = SingleFlight::<u32>::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut waiting = Vec::new();
        for _ in 0..20 {
            let calls = Arc::clone(&calls);
            let (_, result) = flights
                .join("k", move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    7
                })
                .expect("runtime");
            waiting.push(result);
        }
        for result in futures_util::future::join_all(waiting).await {
            assert_eq!(result, Ok(7));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(flights.len(), 0, "entry removed when done");
    }

    #[tokio::test]
    async fn a_dropped_leader_does_not_wedge_followers() {
        let flights = SingleFlight::<u32>::new();
        let (role, leader) = flights
            .join("k", || async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                1
            })
            .expect("runtime");
        assert_eq!(role, Role::Leader);
        let (role, follower) = flights.join("k", || async { 2 }).expect("runtime");
        assert_eq!(role, Role::Follower);
        drop(leader);
        assert_eq!(follower.await, Ok(1));
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn a_panicking_call_answers_an_error_and_leaves_the_map() {
        let flights = SingleFlight::<u32>::new();
        let (_, result) = flights
            .join("k", || async { panic!("boom") })
            .expect("runtime");
        assert!(result.await.is_err());
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn forget_starts_a_new_call_and_the_old_one_keeps_its_hands_off() {
        let flights = SingleFlight::<u32>::new();
        let (_, old) = flights
            .join("k", || async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                1
            })
            .expect("runtime");
        flights.forget("k");
        let (role, new) = flights
            .join("k", || async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                2
            })
            .expect("runtime");
        assert_eq!(role, Role::Leader);
        assert_eq!(old.await, Ok(1));
        assert_eq!(
            flights.len(),
            1,
            "the old call must not remove the new entry"
        );
        assert_eq!(new.await, Ok(2));
        assert_eq!(flights.len(), 0);
    }

    #[test]
    fn without_a_runtime_it_says_so() {
        let flights = SingleFlight::<u32>::new();
        assert!(flights.join("k", || async { 1 }).is_err());
    }
}
