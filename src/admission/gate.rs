//! A gate: one bounded admission point — a count of permits (`max_in_flight`), a wait
//! queue bounded in length (a [`Bound`]) and in time (`queue_timeout`) — whose permit
//! lives as long as the response **body**. The router runs a route's handler through
//! [`Gate::admit`] when the route table declares the route behind a gate (see
//! [`super::GateId`]); one gate per admission point (GIF bytes, stills, `/info`, GUN
//! puts, …), each registering its own metrics under its prefix with the same shape
//! (`<prefix>_in_flight`, `_queue_waiting`, `_in_flight_limit`, `_queue_limit`,
//! `_admitted_total{kind}`, `_shed_total{kind}`). A component whose work is not a
//! request (the GIF decoding workers) bounds itself with the same type through
//! [`Gate::acquire`], holding the permit for as long as the work runs.
//!
//! Why not `tower::limit::ConcurrencyLimit`: it releases its permit when the handler's
//! future completes, i.e. when the headers are ready — before a single body byte was
//! sent. For a GIF service the cost is the body, so here the permit is attached to the
//! body and released when hyper drops it: after the last byte, or when the client goes
//! away, or when a timeout kills the connection.
//!
//! Why a bounded queue with shedding: the Node app queued without bound and its latency
//! and memory grew together. Here a request waits only while both the queue has room and
//! its wait is short; otherwise it gets [`super::shed_response`] at once.
//!
//! Why a pool of stalled bodies (`max_stalled`, the media gate's): a body whose client
//! reads nothing would hold its permit until the write-stall timeout, and a few hundred
//! such clients would hold them all. With a pool, the body's permit is a [`BodyPermit`]
//! that the socket moves out of the in-flight count into the bounded pool once the send
//! makes no progress, and back when it moves again; see [`super::stalled`].

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::Response;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Shed;
use super::bound::Bound;
use super::stalled::{BodyPermit, StalledPool};
use crate::body::Body;
use crate::metrics::{ReadAtScrape, by_kind};

/// What one permit of a [`Gate`] stands for, in its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermitUnit {
    /// A request (a slot).
    Request,
    /// This many bytes of a budget.
    Bytes(u64),
}

/// Bounds of a gate, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct GateSettings {
    /// Admitted at once (for the media gate: bodies in flight).
    pub max_in_flight: usize,
    /// Requests allowed to wait for a slot.
    pub max_queue: usize,
    /// Longest a request waits for a slot.
    pub queue_timeout: Duration,
    /// `Retry-After` seconds sent with a 503.
    pub retry_after_secs: u64,
    /// Bodies whose clients read nothing that may wait out of the in-flight bound (see
    /// `stalled`); past it the longest stalled is dropped. 0: a body keeps its slot
    /// until it is done (for admissions whose bodies cost memory, as resolves' do).
    pub max_stalled: usize,
}

/// Admission counters of a gate (`…_admitted_total{kind}`, `…_shed_total{kind}`).
#[derive(Debug, Default)]
pub struct GateCounters {
    /// Requests admitted without waiting.
    pub admitted_at_once: Counter,
    /// Requests admitted after waiting in the queue.
    pub admitted_after_wait: Counter,
    /// Requests shed because the queue was full.
    pub shed_queue_full: Counter,
    /// Requests shed because their wait timed out.
    pub shed_queue_timeout: Counter,
}

/// One gate: one per admission point and process, shared by every connection.
#[derive(Debug)]
pub struct Gate {
    slots: Arc<Semaphore>,
    queue: Arc<Bound>,
    settings: GateSettings,
    counters: GateCounters,
    stalled: Arc<StalledPool>,
}

impl Gate {
    /// A gate with all slots free.
    pub fn new(settings: GateSettings) -> Gate {
        Gate {
            slots: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
            queue: Arc::new(Bound::new(settings.max_queue)),
            settings,
            counters: GateCounters::default(),
            stalled: Arc::new(StalledPool::new(settings.max_stalled)),
        }
    }

    /// Bodies admitted and not finished: those holding a slot and those waiting in the
    /// stalled pool. (A body the pool dropped for room is not counted while its
    /// connection closes.)
    pub fn in_flight(&self) -> usize {
        self.slots_in_use() + self.stalled.len()
    }

    /// Slots held now: bodies in the in-flight bound (and handlers still running).
    pub fn slots_in_use(&self) -> usize {
        self.settings.max_in_flight.max(1) - self.slots.available_permits()
    }

    /// The pool of bodies whose clients read nothing.
    pub fn stalled(&self) -> &StalledPool {
        &self.stalled
    }

    /// Registers this gate's metrics in `registry` (a sub-registry named after the
    /// admission, e.g. `media`): slots in use and waiters (read at scrape time), the
    /// limit, and the admission and shedding counters.
    ///
    /// `units` says what a permit is: a request, or `Bytes(n)` for a budget counted in
    /// units of `n` bytes, whose gauges are then shown in bytes (`in_flight_bytes`,
    /// `in_flight_limit_bytes`), Prometheus's base unit.
    pub fn register(&self, registry: &mut Registry, units: PermitUnit) {
        let (slots, limit) = (Arc::clone(&self.slots), self.settings.max_in_flight.max(1));
        let (scale, in_flight, in_flight_help, limit_name, limit_help) = match units {
            PermitUnit::Request => (
                1,
                "in_flight",
                "Bodies in flight (limiter permits held)",
                "in_flight_limit",
                "Configured limit of bodies in flight",
            ),
            PermitUnit::Bytes(unit) => (
                unit,
                "in_flight_bytes",
                "Bytes of request bodies held against the budget (each body charged its share before its first byte is read)",
                "in_flight_limit_bytes",
                "Configured budget of request-body bytes held at once",
            ),
        };
        registry.register(
            in_flight,
            in_flight_help,
            ReadAtScrape::gauge(move || {
                ((limit - slots.available_permits()) as u64).saturating_mul(scale)
            }),
        );
        let queue = Arc::clone(&self.queue);
        registry.register(
            "queue_waiting",
            "Requests waiting for a limiter slot",
            ReadAtScrape::gauge(move || queue.len() as u64),
        );
        let max_in_flight = (self.settings.max_in_flight as u64).saturating_mul(scale);
        registry.register(
            limit_name,
            limit_help,
            ReadAtScrape::gauge(move || max_in_flight),
        );
        let max_queue = self.settings.max_queue as u64;
        registry.register(
            "queue_limit",
            "Configured limit of requests waiting for a slot",
            ReadAtScrape::gauge(move || max_queue),
        );
        let c = &self.counters;
        registry.register(
            "admitted",
            "Requests admitted, at once or after waiting",
            by_kind([
                ("at_once", &c.admitted_at_once),
                ("after_wait", &c.admitted_after_wait),
            ]),
        );
        registry.register(
            "shed",
            "Requests shed with 503, by reason",
            by_kind([
                ("queue_full", &c.shed_queue_full),
                ("queue_timeout", &c.shed_queue_timeout),
            ]),
        );
        if self.settings.max_stalled == 0 {
            return;
        }
        let pool = Arc::clone(&self.stalled);
        registry.register(
            "stalled_bodies",
            "Bodies whose clients read nothing, out of the in-flight bound in the stalled pool",
            ReadAtScrape::gauge(move || pool.len() as u64),
        );
        let max_stalled = self.settings.max_stalled as u64;
        registry.register(
            "stalled_limit",
            "Configured bound of the stalled pool",
            ReadAtScrape::gauge(move || max_stalled),
        );
        let s = self.stalled.counters();
        registry.register(
            "stalled_events",
            "Bodies that entered the stalled pool, resumed into the in-flight bound, or were dropped because the pool was full (oldest first)",
            by_kind([
                ("entered", &s.entered),
                ("resumed", &s.resumed),
                ("dropped", &s.dropped),
            ]),
        );
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// The configured bounds.
    pub fn settings(&self) -> GateSettings {
        self.settings
    }

    /// Admission counters.
    pub fn counters(&self) -> &GateCounters {
        &self.counters
    }

    /// Takes a slot: at once if one is free, else after a bounded wait in a FIFO queue
    /// (tokio's semaphore is fair), else sheds.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, Shed> {
        self.acquire_many(1).await
    }

    /// Takes `n` slots at once (a gate whose slots are units of something, such as
    /// KiB of buffered request bodies), with the same bounded wait as [`Gate::acquire`];
    /// more than the limit is never granted (shed as a timeout). One permit holds all `n`;
    /// permits of one holder can be [merged](OwnedSemaphorePermit::merge). Each call
    /// counts once in the admission counters.
    pub async fn acquire_many(&self, n: u32) -> Result<OwnedSemaphorePermit, Shed> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_many_owned(n) {
            self.counters.admitted_at_once.inc();
            return Ok(permit);
        }
        // Reserve a place in the queue, or shed if there is none. The place is given
        // back when this future ends or is dropped (a client that goes away while it
        // waits must not keep its place forever).
        let Some(_place) = self.queue.enter() else {
            self.counters.shed_queue_full.inc();
            return Err(Shed::QueueFull);
        };
        let waited = tokio::time::timeout(
            self.settings.queue_timeout,
            Arc::clone(&self.slots).acquire_many_owned(n),
        )
        .await;
        match waited {
            Ok(Ok(permit)) => {
                self.counters.admitted_after_wait.inc();
                Ok(permit)
            }
            // The semaphore is never closed; treat it like a timeout if it ever were.
            Ok(Err(_)) | Err(_) => {
                self.counters.shed_queue_timeout.inc();
                Err(Shed::QueueTimeout)
            }
        }
    }

    /// Runs `handler` once a slot is taken and attaches the permit to the response body,
    /// so the slot stays taken until the body is finished or dropped; a shed request gets
    /// [`Gate::shed_response`] and `handler` never runs. `handler` makes its future only
    /// once admitted, so a request waiting in the queue holds no handler state. It gets
    /// the slot as a [`Lease`], which it may give back while it waits for something
    /// other than sending bytes (a transcode); a slot given back is not attached.
    pub async fn admit<F, Fut>(&self, handler: F) -> Response<Body>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = Response<Body>>,
    {
        let permit = match self.acquire().await {
            Ok(permit) => permit,
            Err(why) => return self.shed_response(why),
        };
        let held = Lease::new(permit);
        let mut response = handler(held.clone()).await;
        if let Some(permit) = held.take() {
            self.attach(response.body_mut(), permit);
        }
        response
    }

    /// Attaches `permit` (taken from this gate) to `body`, so the slot stays taken
    /// until the body is finished or dropped; with a stalled pool, as a [`BodyPermit`] the
    /// body's connection can move out of the bound while its client reads nothing.
    pub fn attach(&self, body: &mut Body, permit: OwnedSemaphorePermit) {
        if self.settings.max_stalled == 0 {
            body.attach(permit);
        } else {
            let permit =
                BodyPermit::new(permit, Arc::clone(&self.slots), Arc::clone(&self.stalled));
            body.attach(permit.into_guard());
        }
    }

    /// The 503 a shed request gets: JSON, `Retry-After`, never cached.
    pub fn shed_response(&self, why: Shed) -> Response<Body> {
        super::shed_response(why, self.settings.retry_after_secs)
    }
}

/// The slot of a request admitted by [`Gate::admit`], handed to the handler (the
/// router puts it in the request's extensions). A handler that must wait for something
/// other than sending bytes — a transcode — [`releases`](Lease::release) it, so
/// waiting never holds a GIF-serving slot, and takes a new one with
/// [`Gate::acquire`] when it has bytes to send. Whatever is still held when the
/// handler returns is attached to the body.
#[derive(Debug, Clone)]
pub struct Lease(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl Lease {
    fn new(permit: OwnedSemaphorePermit) -> Lease {
        Lease(Arc::new(Mutex::new(Some(permit))))
    }

    fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// Gives the slot back now; true if it was still held.
    pub fn release(&self) -> bool {
        self.take().is_some()
    }

    /// True while the slot is held.
    pub fn is_held(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{StatusCode, header};
    use http_body_util::BodyExt;

    fn settings(max_in_flight: usize, max_queue: usize, queue_ms: u64) -> GateSettings {
        GateSettings {
            max_in_flight,
            max_queue,
            queue_timeout: Duration::from_millis(queue_ms),
            retry_after_secs: 1,
            max_stalled: 0,
        }
    }

    /// A handler whose body is much larger than one chunk, admitted through `gate`.
    async fn serve(gate: Arc<Gate>) -> Response<Body> {
        gate.admit(|_| async {
            Response::new(Body::from_segments(
                vec![bytes::Bytes::from(vec![0u8; 100_000])],
                1000,
            ))
        })
        .await
    }

    #[tokio::test]
    async fn permit_is_held_until_the_body_is_done() {
        let gate = Arc::new(Gate::new(settings(2, 0, 10)));
        let mut first = serve(Arc::clone(&gate)).await;
        assert_eq!(
            gate.in_flight(),
            1,
            "handler returned, body not sent: still held"
        );
        let second = serve(Arc::clone(&gate)).await;
        let third = serve(Arc::clone(&gate)).await;
        assert_eq!(
            third.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "no queue: shed"
        );
        assert_eq!(third.headers()[header::RETRY_AFTER], "1");
        // Drain the first body completely: its permit comes back.
        while first.body_mut().frame().await.is_some() {}
        assert_eq!(gate.in_flight(), 1);
        // Abandon the second mid-way: dropping releases too.
        drop(second);
        assert_eq!(gate.in_flight(), 0);
        assert_eq!(gate.counters().shed_queue_full.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn queue_is_bounded_in_time() {
        let gate = Arc::new(Gate::new(settings(1, 10, 500)));
        let held = serve(Arc::clone(&gate)).await;
        let started = tokio::time::Instant::now();
        let waited = serve(Arc::clone(&gate)).await;
        assert_eq!(waited.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        assert_eq!(gate.counters().shed_queue_timeout.get(), 1);
        assert_eq!(gate.waiting(), 0);
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn queued_request_gets_the_slot_when_a_body_finishes() {
        let gate = Arc::new(Gate::new(settings(1, 10, 5_000)));
        let held = serve(Arc::clone(&gate)).await;
        let waiter = tokio::spawn(serve(Arc::clone(&gate)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(gate.waiting(), 1);
        drop(held);
        let response = waiter.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(gate.counters().admitted_after_wait.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_goes_away_gives_its_place_back() {
        let gate = Arc::new(Gate::new(settings(1, 1, 60_000)));
        let held = serve(Arc::clone(&gate)).await;
        let waiter = tokio::spawn(serve(Arc::clone(&gate)));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(gate.waiting(), 1);
        // The client goes away (its connection and request future are dropped).
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(gate.waiting(), 0, "the place is free again");
        let next = tokio::spawn(serve(Arc::clone(&gate)));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(gate.waiting(), 1, "and the next request may wait in it");
        drop(held);
        assert_eq!(next.await.unwrap().status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn many_slots_are_taken_and_given_back_together() {
        let gate = Gate::new(settings(10, 1, 500));
        let six = gate.acquire_many(6).await.expect("free");
        assert_eq!(gate.in_flight(), 6);
        let started = tokio::time::Instant::now();
        assert_eq!(gate.acquire_many(5).await.unwrap_err(), Shed::QueueTimeout);
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        let mut four = gate.acquire_many(4).await.expect("fits");
        four.merge(six);
        assert_eq!(gate.in_flight(), 10);
        drop(four);
        assert_eq!(gate.in_flight(), 0);
        assert_eq!(
            gate.acquire_many(11).await.unwrap_err(),
            Shed::QueueTimeout,
            "more than the limit is never granted"
        );
    }

    #[tokio::test]
    async fn a_handler_can_give_its_slot_back_while_it_waits() {
        let gate = Arc::new(Gate::new(settings(1, 0, 10)));
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let waiting = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                gate.admit(|held| async move {
                    assert!(held.is_held());
                    assert!(held.release());
                    assert!(!held.release(), "only once");
                    let _ = entered_tx.send(());
                    let _ = go_rx.await;
                    Response::new(Body::from_segments(
                        vec![bytes::Bytes::from(vec![0u8; 10])],
                        10,
                    ))
                })
                .await
            })
        };
        entered_rx.await.unwrap();
        assert_eq!(gate.in_flight(), 0, "the waiting handler holds no slot");
        let other = serve(Arc::clone(&gate)).await;
        assert_eq!(other.status(), StatusCode::OK, "so another request gets it");
        assert_eq!(gate.in_flight(), 1);
        drop(other);
        go_tx.send(()).unwrap();
        let released = waiting.await.unwrap();
        assert_eq!(released.status(), StatusCode::OK);
        assert_eq!(gate.in_flight(), 0, "nothing attached after a release");
    }

    #[tokio::test]
    async fn queue_is_bounded_in_length() {
        let gate = Arc::new(Gate::new(settings(1, 2, 60_000)));
        let held = serve(Arc::clone(&gate)).await;
        let w1 = tokio::spawn(serve(Arc::clone(&gate)));
        let w2 = tokio::spawn(serve(Arc::clone(&gate)));
        while gate.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        let shed = serve(Arc::clone(&gate)).await;
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(held);
        let r1 = w1.await.unwrap();
        drop(r1);
        let r2 = w2.await.unwrap();
        assert_eq!(r2.status(), StatusCode::OK);
    }
}
