//! The GUN relay client: one correct, bounded path from oip-media (and the indexer, through
//! the `/gun-relay/` endpoints) to the relay's HTTP API (SPEC §3).
//!
//! A call goes: empty soul? → negative cache → single-flight → (breaker → connection slot →
//! one request → `classify`) × attempts, with backoff, all within one deadline. Only
//! "unavailable" answers are retried; a record miss is cached, a put forgets it.
//!
//! Build one client per process (the application does, in `App::new`) and share it as
//! `Arc<GunClient>`: the cache, the breaker and the counters are per client, and the
//! indexer's leak came partly from a cache per instance with instances made per request.

mod backoff;
mod breaker;
mod cache;
mod classify;
mod counters;
mod error;
pub(crate) mod settings;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::flight::{Role, SingleFlight};
use crate::settings::{flag, option_name};
use backoff::backoff;
use breaker::Breaker;
use cache::NegativeCache;
use classify::{GetAnswer, classify_get, classify_put};
use counters::bump;

pub use breaker::BreakerState;
pub(crate) use counters::GunCounters;
pub use error::GunError;
pub(crate) use settings::GunSettings;

/// What the relay holds for a soul.
#[derive(Debug, Clone, PartialEq)]
pub enum GunRecord {
    /// The relay's `data` value for the soul (nested nodes appear as `{"#": "<soul>/<key>"}`).
    Found(Value),
    /// The relay has no such soul (404 `{"error":"Not found"}`, or a cached one).
    Missing,
}

/// Characters of a soul sent as they are in the query string: unreserved ones and `:`,
/// which every soul contains and the relay reads back either way. Everything else is
/// percent-encoded (`/` of nested souls, `&`, `=`, `#`, `+`, spaces, non-ASCII).
const SOUL_IN_QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':');

/// How long an idle relay connection is kept for reuse. Below Node's default
/// `keepAliveTimeout` of 5 s, so we drop a connection before the relay does and never send
/// a request on a socket the relay is closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// The relay client. Cheap to share as `Arc<GunClient>`; every clone of the `Arc` shares one
/// negative cache, one breaker, one connection pool and one set of counters.
pub struct GunClient {
    inner: Arc<Inner>,
    summary: Option<tokio::task::AbortHandle>,
}

/// The part of the client the spawned single-flight calls and the summary task use.
struct Inner {
    http: reqwest::Client,
    base: String,
    attempts: u32,
    attempt_timeout: Duration,
    deadline: Duration,
    backoff_base: Duration,
    response_limit: u64,
    connections: Semaphore,
    cache: NegativeCache,
    flights: SingleFlight<Result<GunRecord, GunError>>,
    breaker: Breaker,
    counters: GunCounters,
    warned_misconfigured: AtomicBool,
}

impl GunClient {
    /// Builds a client for the relay named by `settings.gun_peers`. Starts the periodic
    /// summary log when called inside a Tokio runtime; it stops when the client is dropped.
    pub fn new(settings: &GunSettings) -> Result<GunClient, GunError> {
        let base = base_url(settings.gun_peers.as_deref())?;
        if settings.gun_attempts == 0 {
            return Err(GunError::Config {
                option: option_name::<GunSettings>("gun_attempts"),
                message: "must be at least 1 (the first request counts)".into(),
            });
        }
        if settings.gun_pool_size == 0 {
            return Err(GunError::Config {
                option: option_name::<GunSettings>("gun_pool_size"),
                message: "must be at least 1".into(),
            });
        }
        let mut http = reqwest::Client::builder()
            .pool_max_idle_per_host(settings.gun_pool_size)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            // A redirect means the URL is not the relay's API: report it, don't follow it.
            .redirect(reqwest::redirect::Policy::none())
            // The relay sits on the compose network; an HTTP_PROXY meant for the outside
            // world must not capture it.
            .no_proxy()
            .tcp_nodelay(true);
        if base.starts_with("http://") {
            // Plain http needs no root certificates: without this, the HTTP client (built
            // with rustls for an `https://` Elasticsearch) loads the system's roots and
            // cannot be built on a host that has none.
            http = http.tls_certs_only(Vec::<reqwest::Certificate>::new());
        }
        let http = http.build().map_err(|e| GunError::Config {
            option: option_name::<GunSettings>("gun_peers"),
            message: format!("cannot build the HTTP client: {e}"),
        })?;
        let counters = GunCounters::default();
        let breaker = Breaker::new(
            settings.gun_breaker_threshold,
            settings.gun_breaker_cooldown,
            Arc::clone(&counters.breaker),
        );
        let inner = Arc::new(Inner {
            http,
            base,
            attempts: settings.gun_attempts,
            attempt_timeout: settings.gun_attempt_timeout,
            deadline: settings.gun_deadline,
            backoff_base: settings.gun_backoff_base,
            response_limit: settings.gun_response_limit,
            connections: Semaphore::new(settings.gun_pool_size.min(Semaphore::MAX_PERMITS)),
            cache: NegativeCache::new(
                settings.gun_negative_cache_ttl,
                settings.gun_negative_cache_capacity,
                settings.gun_miss_ttl_without_redis,
            ),
            flights: SingleFlight::new(),
            breaker,
            counters,
            warned_misconfigured: AtomicBool::new(false),
        });
        let summary = spawn_summary(Arc::downgrade(&inner), settings.gun_summary_interval);
        Ok(GunClient { inner, summary })
    }

    /// The record stored under `soul`, or `Missing`. Known misses are answered from the
    /// negative cache; concurrent gets of one soul share one upstream call.
    pub async fn get(&self, soul: &str) -> Result<GunRecord, GunError> {
        let counters = &self.inner.counters;
        bump(&counters.requests);
        let result = self.lookup(soul).await;
        match &result {
            Ok(GunRecord::Found(_)) => bump(&counters.found),
            Ok(GunRecord::Missing) => bump(&counters.misses),
            Err(error) => counters.error(error),
        }
        result
    }

    /// Stores `data` under `soul` (`Value::Null` is passed on as it is: the relay and GUN
    /// decide what a null write means). On success — and when the outcome is unknown because
    /// the relay did not answer — the soul leaves the negative cache at once, so the next get
    /// asks the relay.
    ///
    /// `data` is anything that serializes to JSON: a `Value`, or the JSON text a client
    /// sent (`&serde_json::value::RawValue`), which `/gun-relay/put` passes on without
    /// ever building a tree of it. It is serialized once, before the first request.
    pub async fn put(&self, soul: &str, data: impl Serialize) -> Result<(), GunError> {
        let counters = &self.inner.counters;
        bump(&counters.puts);
        let result = match serde_json::to_vec(&PutRequest { soul, data }) {
            Ok(body) => self.store(soul, Bytes::from(body)).await,
            Err(e) => Err(GunError::Internal {
                reason: format!("cannot serialise the put body: {e}"),
            }),
        };
        if let Err(error) = &result {
            counters.error(error);
        }
        result
    }

    /// Forgets what this client remembers about `soul` because it was written elsewhere
    /// (a put through another replica): its cached miss, and any get of it under way
    /// (whose answer may predate the write and is not cached).
    pub fn forget(&self, soul: &str) {
        self.inner.cache.forget(soul);
        self.inner.flights.forget(soul);
    }

    /// Forgets every cached miss: after a time when puts through other replicas could
    /// not be heard (a Redis outage), any of them may be stale.
    pub fn forget_all(&self) {
        self.inner.cache.forget_all();
    }

    /// Whether puts through other replicas can go unheard (`REDIS_URL` set, Redis not
    /// connected): while true, a cached miss is trusted for
    /// `--gun-miss-ttl-without-redis` only, instead of `--gun-negative-cache-ttl`.
    pub fn set_isolated(&self, isolated: bool) {
        self.inner.cache.set_isolated(isolated);
    }

    /// The client's counters.
    pub fn counters(&self) -> &GunCounters {
        &self.inner.counters
    }

    /// Registers the client's metrics (`oip_media_gun_*`): its counters, the breaker, and
    /// the negative cache's size read at scrape time (through a weak reference, so the
    /// registry never keeps a dropped client alive).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        self.inner.counters.register(registry);
        let inner = Arc::downgrade(&self.inner);
        registry.register(
            "gun_negative_cache_entries",
            "Souls cached as missing",
            crate::metrics::ReadAtScrape::gauge(move || {
                inner.upgrade().map_or(0, |inner| inner.cache.len())
            }),
        );
    }

    /// The circuit breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// Souls in the negative cache now (approximate: evictions are applied in batches).
    pub fn negative_cache_len(&self) -> u64 {
        self.inner.cache.len()
    }

    /// Upstream gets under way (one per soul, however many callers wait on it).
    pub fn in_flight(&self) -> usize {
        self.inner.flights.len()
    }

    /// The relay base URL in use (first `GUN_PEERS` entry, without a trailing slash).
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    async fn lookup(&self, soul: &str) -> Result<GunRecord, GunError> {
        if soul.is_empty() {
            return Err(GunError::InvalidSoul);
        }
        if self.inner.cache.is_missing(soul) {
            bump(&self.inner.counters.negative_cache_hits);
            return Ok(GunRecord::Missing);
        }
        let inner = Arc::clone(&self.inner);
        let owned = soul.to_owned();
        let (role, shared) = self
            .inner
            .flights
            .join(soul, move || async move { inner.fetch(&owned).await })
            .map_err(|_| GunError::Internal {
                reason: "no Tokio runtime to run the request on".into(),
            })?;
        if role == Role::Follower {
            bump(&self.inner.counters.coalesced);
        }
        shared.await.unwrap_or_else(|_| {
            Err(GunError::Internal {
                reason: "the shared request ended without an answer".into(),
            })
        })
    }

    /// Sends one put whose serialized `{"soul","data"}` is `body`.
    async fn store(&self, soul: &str, body: Bytes) -> Result<(), GunError> {
        if soul.is_empty() {
            return Err(GunError::InvalidSoul);
        }
        let inner = &self.inner;
        let url = format!("{}/put", inner.base);
        let result = inner
            .call(
                &url,
                || {
                    inner
                        .http
                        .post(&url)
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(body.clone())
                },
                classify_put,
            )
            .await;
        if matches!(result, Ok(()) | Err(GunError::Unavailable { .. })) {
            inner.cache.forget(soul);
            inner.flights.forget(soul);
        }
        result
    }
}

/// The relay's put body, `{"soul": …, "data": …}`, in that order.
#[derive(Serialize)]
struct PutRequest<'a, D> {
    soul: &'a str,
    data: D,
}

impl Drop for GunClient {
    fn drop(&mut self) {
        if let Some(summary) = &self.summary {
            summary.abort();
        }
    }
}

impl std::fmt::Debug for GunClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GunClient")
            .field("base", &self.inner.base)
            .field("breaker", &self.breaker_state())
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// One upstream get, in the single-flight task: the call, then the cache.
    async fn fetch(&self, soul: &str) -> Result<GunRecord, GunError> {
        let seen = self.cache.epoch();
        let url = format!(
            "{}/get?soul={}",
            self.base,
            utf8_percent_encode(soul, SOUL_IN_QUERY)
        );
        match self
            .call(&url, || self.http.get(&url), classify_get)
            .await?
        {
            GetAnswer::Found(data) => Ok(GunRecord::Found(data)),
            GetAnswer::Missing => {
                self.cache.record_miss(soul, seen);
                Ok(GunRecord::Missing)
            }
        }
    }

    /// Sends the request until it gets an answer that is not "unavailable", the attempts are
    /// used up, or the deadline is near.
    async fn call<T>(
        &self,
        url: &str,
        request: impl Fn() -> reqwest::RequestBuilder,
        classify: fn(&str, StatusCode, &[u8]) -> Result<T, GunError>,
    ) -> Result<T, GunError> {
        let deadline = Instant::now() + self.deadline;
        let mut sent = 0;
        let mut last: Option<GunError> = None;
        loop {
            let result = self.attempt(url, request(), classify, deadline).await;
            let error = match result {
                Ok(answer) => return Ok(answer),
                // The breaker opened under our own retries: what stopped us is the failure
                // before it.
                Err(GunError::CircuitOpen) => return Err(last.unwrap_or(GunError::CircuitOpen)),
                Err(error) => error,
            };
            sent += 1;
            if let GunError::Misconfigured { .. } = &error {
                self.warn_misconfigured(&error);
            }
            if !error.is_retryable() || sent >= self.attempts {
                return Err(with_attempts(error, sent));
            }
            let wait = backoff(self.backoff_base, sent);
            if Instant::now() + wait >= deadline {
                return Err(with_attempts(error, sent));
            }
            last = Some(with_attempts(error, sent));
            tokio::time::sleep(wait).await;
            bump(&self.counters.retries);
        }
    }

    /// One request: breaker, connection slot, send, read, classify — within the attempt
    /// timeout and the call's deadline.
    async fn attempt<T>(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
        classify: fn(&str, StatusCode, &[u8]) -> Result<T, GunError>,
        deadline: Instant,
    ) -> Result<T, GunError> {
        let permit = self.breaker.acquire().ok_or(GunError::CircuitOpen)?;
        let Ok(Ok(_slot)) = tokio::time::timeout_at(deadline, self.connections.acquire()).await
        else {
            // Our own pool is saturated: nothing to hold against the relay (the permit is
            // dropped unreported).
            return Err(unavailable(
                "every relay connection stayed busy until the deadline".into(),
                None,
                true,
            ));
        };
        bump(&self.counters.upstream_requests);
        let started = Instant::now();
        let until = deadline.min(started + self.attempt_timeout);
        let exchange = self.exchange(url, request, classify);
        let result = match tokio::time::timeout_at(until, exchange).await {
            Ok(result) => result,
            Err(_) => Err(unavailable(
                format!(
                    "no answer within {} ms (attempt timeout or call deadline)",
                    until.saturating_duration_since(started).as_millis()
                ),
                None,
                true,
            )),
        };
        permit.record(!matches!(result, Err(GunError::Unavailable { .. })));
        result
    }

    /// Sends the request and decides its answer from the status first, then a bounded body.
    async fn exchange<T>(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
        classify: fn(&str, StatusCode, &[u8]) -> Result<T, GunError>,
    ) -> Result<T, GunError> {
        let mut response = request
            .send()
            .await
            .map_err(|e| unavailable(describe(&e), None, e.is_timeout()))?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            bump(&self.counters.upstream_404s);
        }
        let mut body = Vec::new();
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    return Err(unavailable(
                        format!("HTTP {}: body cut short: {}", status.as_u16(), describe(&e)),
                        status.is_server_error().then_some(status.as_u16()),
                        e.is_timeout(),
                    ));
                }
            };
            if (body.len() + chunk.len()) as u64 > self.response_limit {
                if status.is_success() {
                    return Err(GunError::InvalidResponse {
                        reason: format!(
                            "body larger than {} ({} bytes)",
                            flag::<GunSettings>("gun_response_limit"),
                            self.response_limit
                        ),
                    });
                }
                // An error answer is decided by its status; its start is enough.
                break;
            }
            body.extend_from_slice(&chunk);
        }
        classify(url, status, &body)
    }

    fn warn_misconfigured(&self, error: &GunError) {
        // Loud once at once, then in every summary while it lasts: a wrong URL at hundreds
        // of requests per second must not become hundreds of log lines per second.
        if !self.warned_misconfigured.swap(true, Ordering::Relaxed) {
            tracing::error!(
                %error,
                "{} does not lead to a GUN relay's API: fix the URL (not cached as a miss)",
                option_name::<GunSettings>("gun_peers")
            );
        }
    }
}

fn unavailable(reason: String, status: Option<u16>, timed_out: bool) -> GunError {
    GunError::Unavailable {
        reason,
        status,
        timed_out,
        attempts: 1,
    }
}

fn with_attempts(error: GunError, sent: u32) -> GunError {
    match error {
        GunError::Unavailable {
            reason,
            status,
            timed_out,
            ..
        } => GunError::Unavailable {
            reason,
            status,
            timed_out,
            attempts: sent,
        },
        other => other,
    }
}

/// An error with its causes: reqwest's own message names the URL, the cause says why.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The relay base URL: the first entry of the `GUN_PEERS` comma list, trimmed, without a
/// trailing slash; plain `http://` with a host, no query or fragment.
fn base_url(peers: Option<&str>) -> Result<String, GunError> {
    let config = |message: String| GunError::Config {
        option: option_name::<GunSettings>("gun_peers"),
        message,
    };
    let first = peers
        .and_then(|peers| peers.split(',').next())
        .map(str::trim)
        .filter(|first| !first.is_empty())
        .ok_or_else(|| config("not set: no GUN relay to talk to".into()))?;
    let base = first.trim_end_matches('/');
    let url = reqwest::Url::parse(base).map_err(|e| config(format!("`{first}`: {e}")))?;
    if url.scheme() != "http" {
        return Err(config(format!(
            "`{first}`: only http:// relays are supported (this build has no TLS; the relay \
             is reached on the internal network)"
        )));
    }
    if url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
        return Err(config(format!(
            "`{first}`: expected a base URL like http://gun-relay:8765"
        )));
    }
    Ok(base.to_owned())
}

/// Logs a summary every `every` while the client lives (0 = never). Needs a Tokio runtime;
/// holds only a weak reference, and the client aborts it when dropped.
fn spawn_summary(inner: Weak<Inner>, every: Duration) -> Option<tokio::task::AbortHandle> {
    if every.is_zero() {
        return None;
    }
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let task = runtime.spawn(async move {
        let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Totals::default();
        loop {
            ticker.tick().await;
            let Some(inner) = inner.upgrade() else { break };
            last = log_summary(&inner.counters, last, inner.cache.len());
        }
    });
    Some(task.abort_handle())
}

/// What the previous summary line saw: enough to tell whether anything happened since.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    calls: u64,
    misconfigured: u64,
}

/// Logs one summary line if there were calls since `last`; returns the new totals.
fn log_summary(now: &GunCounters, last: Totals, cached: u64) -> Totals {
    let totals = Totals {
        calls: now.requests.get() + now.puts.get(),
        misconfigured: now.errors.misconfigured.get(),
    };
    let calls = totals.calls.saturating_sub(last.calls);
    if calls == 0 {
        return totals; // nothing happened since the last line
    }
    macro_rules! summary {
        ($level:ident, $($message:tt)+) => {
            tracing::$level!(
                calls_since_last = calls,
                requests = now.requests.get(),
                puts = now.puts.get(),
                upstream_requests = now.upstream_requests.get(),
                found = now.found.get(),
                misses = now.misses.get(),
                negative_cache_hits = now.negative_cache_hits.get(),
                negative_cache_hit_rate = format_args!("{:.3}", now.negative_cache_hit_rate()),
                negative_cache_entries = cached,
                coalesced = now.coalesced.get(),
                upstream_404s = now.upstream_404s.get(),
                retries = now.retries.get(),
                errors = now.errors.total(),
                misconfigured = totals.misconfigured,
                unavailable = now.errors.unavailable.get(),
                circuit_open = now.errors.circuit_open.get(),
                breaker = ?now.breaker_state(),
                $($message)+
            )
        };
    }
    if totals.misconfigured > last.misconfigured {
        summary!(
            error,
            "GUN relay summary: {} is misconfigured",
            option_name::<GunSettings>("gun_peers")
        );
    } else {
        summary!(info, "GUN relay summary");
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_takes_the_first_peer_without_its_slash() {
        assert_eq!(
            base_url(Some("http://gun-relay:8765/, http://other:8765")),
            Ok("http://gun-relay:8765".to_owned())
        );
        assert_eq!(
            base_url(Some(" http://127.0.0.1:1/prefix/ ")),
            Ok("http://127.0.0.1:1/prefix".to_owned())
        );
    }

    #[test]
    fn base_url_refuses_what_cannot_work() {
        for bad in [
            None,
            Some(""),
            Some(" ,http://x"),
            Some("gun-relay:8765"),
            Some("https://relay"),
            Some("http://relay/?x=1"),
        ] {
            assert!(
                matches!(base_url(bad), Err(GunError::Config { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_config_error_names_the_setting_as_clap_does() {
        let mut settings = crate::Config::for_media_dir("/nonexistent").gun;
        settings.gun_peers = Some("http://127.0.0.1:1".into());
        settings.gun_attempts = 0;
        let error = GunClient::new(&settings).map(drop).expect_err("refused");
        assert!(
            error
                .to_string()
                .starts_with("--gun-attempts / GUN_ATTEMPTS: "),
            "{error}"
        );
        settings.gun_attempts = 1;
        settings.gun_pool_size = 0;
        let error = GunClient::new(&settings).map(drop).expect_err("refused");
        assert!(
            error
                .to_string()
                .starts_with("--gun-pool-size / GUN_POOL_SIZE: "),
            "{error}"
        );
        let error = base_url(None).expect_err("no peers");
        assert!(
            error.to_string().starts_with("--gun-peers / GUN_PEERS: "),
            "{error}"
        );
    }

    #[tokio::test]
    async fn the_summary_task_stops_with_the_client() {
        let mut settings = crate::Config::for_media_dir("/nonexistent").gun;
        settings.gun_peers = Some("http://127.0.0.1:1".into());
        settings.gun_summary_interval = Duration::from_millis(10);
        let client = GunClient::new(&settings).expect("client");
        let summary = client.summary.clone().expect("spawned inside a runtime");
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!summary.is_finished());
        drop(client);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            summary.is_finished(),
            "the summary task outlived its client"
        );
    }

    #[test]
    fn souls_keep_their_colons_and_encode_the_rest() {
        let encoded = utf8_percent_encode("abc123:x/y z&w=é", SOUL_IN_QUERY).to_string();
        assert_eq!(encoded, "abc123:x%2Fy%20z%26w%3D%C3%A9");
    }
}
