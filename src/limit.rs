//! The media concurrency limiter: a tower layer whose permit lives as long as the
//! response **body**, with a wait queue bounded in length and in time.
//!
//! Why not `tower::limit::ConcurrencyLimit`: it releases its permit when the handler's
//! future completes, i.e. when the headers are ready — before a single body byte was
//! sent. For a GIF service the cost is the body, so here the permit is attached to the
//! body and released when hyper drops it: after the last byte, or when the client goes
//! away, or when a timeout kills the connection.
//!
//! Why a bounded queue with shedding: the Node app queued without bound and its latency
//! and memory grew together. Here a request waits only while both the queue has room and
//! its wait is short; otherwise it gets a 503 with `Retry-After` at once.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::Body;

/// Bounds of the limiter, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    /// Media bodies in flight at once.
    pub max_in_flight: usize,
    /// Requests allowed to wait for a slot.
    pub max_queue: usize,
    /// Longest a request waits for a slot.
    pub queue_timeout: Duration,
    /// `Retry-After` seconds sent with a 503.
    pub retry_after_secs: u64,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Shed {
    /// The wait queue was full.
    #[error("wait queue full")]
    QueueFull,
    /// The request waited `queue_timeout` without getting a slot.
    #[error("waited too long for a slot")]
    QueueTimeout,
}

/// Counters of the limiter, for metrics and tests.
#[derive(Debug, Default)]
pub struct LimiterCounters {
    /// Requests admitted without waiting.
    pub admitted_at_once: AtomicU64,
    /// Requests admitted after waiting in the queue.
    pub admitted_after_wait: AtomicU64,
    /// Requests shed because the queue was full.
    pub shed_queue_full: AtomicU64,
    /// Requests shed because their wait timed out.
    pub shed_queue_timeout: AtomicU64,
}

/// The shared state of the limiter: one per process, shared by every connection.
#[derive(Debug)]
pub struct Limiter {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    settings: LimitSettings,
    counters: LimiterCounters,
}

impl Limiter {
    /// A limiter with all slots free.
    pub fn new(settings: LimitSettings) -> Limiter {
        Limiter {
            slots: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
            waiting: AtomicUsize::new(0),
            settings,
            counters: LimiterCounters::default(),
        }
    }

    /// Bodies in flight now (permits held).
    pub fn in_flight(&self) -> usize {
        self.settings.max_in_flight.max(1) - self.slots.available_permits()
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The configured bounds.
    pub fn settings(&self) -> LimitSettings {
        self.settings
    }

    /// Admission counters.
    pub fn counters(&self) -> &LimiterCounters {
        &self.counters
    }

    /// Takes a slot: at once if one is free, else after a bounded wait in a FIFO queue
    /// (tokio's semaphore is fair), else sheds.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, Shed> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            self.counters
                .admitted_at_once
                .fetch_add(1, Ordering::Relaxed);
            return Ok(permit);
        }
        // Reserve a place in the queue, or shed if there is none.
        let reserved = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < self.settings.max_queue).then_some(w + 1)
            })
            .is_ok();
        if !reserved {
            self.counters
                .shed_queue_full
                .fetch_add(1, Ordering::Relaxed);
            return Err(Shed::QueueFull);
        }
        let waited = tokio::time::timeout(
            self.settings.queue_timeout,
            Arc::clone(&self.slots).acquire_owned(),
        )
        .await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(permit)) => {
                self.counters
                    .admitted_after_wait
                    .fetch_add(1, Ordering::Relaxed);
                Ok(permit)
            }
            // The semaphore is never closed; treat it like a timeout if it ever were.
            Ok(Err(_)) | Err(_) => {
                self.counters
                    .shed_queue_timeout
                    .fetch_add(1, Ordering::Relaxed);
                Err(Shed::QueueTimeout)
            }
        }
    }

    /// The 503 a shed request gets: JSON, `Retry-After`, never cached.
    pub fn shed_response(&self, why: Shed) -> Response<Body> {
        let mut response = crate::routes::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "error": "Server busy, retry shortly", "reason": why.to_string() }),
        );
        let headers = response.headers_mut();
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(self.settings.retry_after_secs),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// The permit of a request admitted by [`BodyLimit`], handed to the handler in the
/// request's extensions. A handler that must wait for something other than sending
/// bytes — a transcode — [`releases`](HeldPermit::release) it, so waiting never holds a
/// GIF-serving slot, and takes a new one with [`Limiter::acquire`] when it has bytes
/// to send. Whatever is still held when the handler returns is attached to the body.
#[derive(Debug, Clone)]
pub struct HeldPermit(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl HeldPermit {
    fn new(permit: OwnedSemaphorePermit) -> HeldPermit {
        HeldPermit(Arc::new(Mutex::new(Some(permit))))
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

/// Tower layer that puts a service behind a [`Limiter`].
#[derive(Debug, Clone)]
pub struct BodyLimitLayer {
    limiter: Arc<Limiter>,
}

impl BodyLimitLayer {
    /// A layer sharing `limiter` (one limiter can guard several route services).
    pub fn new(limiter: Arc<Limiter>) -> Self {
        BodyLimitLayer { limiter }
    }
}

impl<S> tower::Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;

    fn layer(&self, inner: S) -> BodyLimit<S> {
        BodyLimit {
            inner,
            limiter: Arc::clone(&self.limiter),
        }
    }
}

/// A service whose responses each hold a limiter permit until their body is done.
#[derive(Debug, Clone)]
pub struct BodyLimit<S> {
    inner: S,
    limiter: Arc<Limiter>,
}

impl<S, B> tower::Service<Request<B>> for BodyLimit<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Admission happens per request in `call`, so a full limiter sheds instead of
        // leaving callers parked in `poll_ready` without bound.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let limiter = Arc::clone(&self.limiter);
        // Take the instance that was "ready" and leave a fresh clone behind (tower's rule
        // for services that are polled ready once and called later).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let permit = match limiter.acquire().await {
                Ok(permit) => permit,
                Err(why) => return Ok(limiter.shed_response(why)),
            };
            let held = HeldPermit::new(permit);
            request.extensions_mut().insert(held.clone());
            let mut response = inner.call(request).await?;
            if let Some(permit) = held.take() {
                response.body_mut().attach(permit);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};

    fn settings(max_in_flight: usize, max_queue: usize, queue_ms: u64) -> LimitSettings {
        LimitSettings {
            max_in_flight,
            max_queue,
            queue_timeout: Duration::from_millis(queue_ms),
            retry_after_secs: 1,
        }
    }

    fn big_body_service() -> impl tower::Service<
        Request<()>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Future + Send,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Body::from_segments(
                vec![bytes::Bytes::from(vec![0u8; 100_000])],
                1000,
            )))
        })
    }

    #[tokio::test]
    async fn permit_is_held_until_the_body_is_done() {
        let limiter = Arc::new(Limiter::new(settings(2, 0, 10)));
        let svc = BodyLimitLayer::new(Arc::clone(&limiter)).layer(big_body_service());
        let mut first = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(
            limiter.in_flight(),
            1,
            "handler returned, body not sent: still held"
        );
        let second = svc.clone().oneshot(Request::new(())).await.unwrap();
        let third = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(
            third.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "no queue: shed"
        );
        assert_eq!(third.headers()[header::RETRY_AFTER], "1");
        // Drain the first body completely: its permit comes back.
        while first.body_mut().frame().await.is_some() {}
        assert_eq!(limiter.in_flight(), 1);
        // Abandon the second mid-way: dropping releases too.
        drop(second);
        assert_eq!(limiter.in_flight(), 0);
        assert_eq!(
            limiter.counters().shed_queue_full.load(Ordering::Relaxed),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn queue_is_bounded_in_time() {
        let limiter = Arc::new(Limiter::new(settings(1, 10, 500)));
        let svc = BodyLimitLayer::new(Arc::clone(&limiter)).layer(big_body_service());
        let held = svc.clone().oneshot(Request::new(())).await.unwrap();
        let started = tokio::time::Instant::now();
        let waited = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(waited.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        assert_eq!(
            limiter
                .counters()
                .shed_queue_timeout
                .load(Ordering::Relaxed),
            1
        );
        assert_eq!(limiter.waiting(), 0);
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn queued_request_gets_the_slot_when_a_body_finishes() {
        let limiter = Arc::new(Limiter::new(settings(1, 10, 5_000)));
        let svc = BodyLimitLayer::new(Arc::clone(&limiter)).layer(big_body_service());
        let held = svc.clone().oneshot(Request::new(())).await.unwrap();
        let waiter = tokio::spawn(svc.clone().oneshot(Request::new(())));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(limiter.waiting(), 1);
        drop(held);
        let response = waiter.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            limiter
                .counters()
                .admitted_after_wait
                .load(Ordering::Relaxed),
            1
        );
    }

    #[tokio::test]
    async fn a_handler_can_give_its_slot_back_while_it_waits() {
        let limiter = Arc::new(Limiter::new(settings(1, 0, 10)));
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let slots = Arc::new(Mutex::new(Some((entered_tx, go_rx))));
        let waiting = tower::service_fn(move |req: Request<()>| {
            let slots = Arc::clone(&slots);
            async move {
                let held = req.extensions().get::<HeldPermit>().cloned();
                let channels = slots.lock().unwrap().take();
                if let (Some(held), Some((entered, go))) = (held, channels) {
                    assert!(held.release());
                    assert!(!held.release(), "only once");
                    let _ = entered.send(());
                    let _ = go.await;
                }
                Ok::<_, Infallible>(Response::new(Body::from_segments(
                    vec![bytes::Bytes::from(vec![0u8; 10])],
                    10,
                )))
            }
        });
        let svc = BodyLimitLayer::new(Arc::clone(&limiter)).layer(waiting);
        let waiter = tokio::spawn(svc.clone().oneshot(Request::new(())));
        entered_rx.await.unwrap();
        assert_eq!(limiter.in_flight(), 0, "the waiting handler holds no slot");
        let other = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(other.status(), StatusCode::OK, "so another request gets it");
        assert_eq!(limiter.in_flight(), 1);
        drop(other);
        go_tx.send(()).unwrap();
        let released = waiter.await.unwrap().unwrap();
        assert_eq!(limiter.in_flight(), 0, "nothing attached after a release");
        drop(released);
    }

    #[tokio::test]
    async fn queue_is_bounded_in_length() {
        let limiter = Arc::new(Limiter::new(settings(1, 2, 60_000)));
        let svc = BodyLimitLayer::new(Arc::clone(&limiter)).layer(big_body_service());
        let held = svc.clone().oneshot(Request::new(())).await.unwrap();
        let w1 = tokio::spawn(svc.clone().oneshot(Request::new(())));
        let w2 = tokio::spawn(svc.clone().oneshot(Request::new(())));
        while limiter.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        let shed = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(held);
        let r1 = w1.await.unwrap().unwrap();
        drop(r1);
        let r2 = w2.await.unwrap().unwrap();
        assert_eq!(r2.status(), StatusCode::OK);
    }
}
