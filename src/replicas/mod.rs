//! Replicas that agree: cache invalidations shared through Redis pub/sub.
//!
//! Each replica caches GUN misses (`src/gun/`, up to an hour) and resolved records
//! (`src/resolve/cache.rs`, keyed by DID). Behind a load balancer, the indexer's put
//! and its next get land on different replicas, so a put must reach every replica's
//! caches. With `REDIS_URL` set, a put publishes its soul on one channel
//! (`--redis-channel`) and every replica, on hearing it, forgets the soul's miss and
//! the `did:gun:<soul>` record.
//!
//! Redis is a helper here, never a dependency of a request:
//! - a put only queues its soul ([`Replicas::publish`]: `try_send` into a bounded queue,
//!   dropped and counted when full); one background task publishes;
//! - while Redis is unreachable, the replica runs on its own caches, trusting a miss
//!   for `--gun-miss-ttl-without-redis` only (puts elsewhere go unheard); the loss is
//!   logged once, shown in `/metrics` and `/readyz` (never failing readiness), and the
//!   task reconnects with capped exponential backoff and jitter;
//! - once connected (again), after subscribing, it forgets every cached miss and record,
//!   since any of them may have been written elsewhere meanwhile, and publishes what
//!   was queued during the outage.

pub mod settings;

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::gun::{GunClient, GunSettings};
use crate::metrics::by_kind;
use crate::resolve::Resolver;
use crate::resolve::source::GUN_PREFIX;
use crate::secret::RedisUrl;
use crate::settings::{env_name, flag};
pub use settings::ReplicaSettings;

/// How often an idle subscription is checked with a `PING`: a Redis that vanished
/// without closing the connection (a host gone, a partition) is noticed within this
/// plus `--redis-timeout`.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Largest invalidation message read; anything larger (no soul is) is ignored.
const MAX_MESSAGE: usize = 64 * 1024;

/// Why the invalidation bus could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// `--redis-url` is not a URL the client can use (shown without its password).
    #[error(
        "`{url}` is not a usable Redis URL (redis://[:password@]host:port[/db] or \
         redis+unix:///path/to/socket; this build has no TLS): {reason}"
    )]
    Url {
        /// The URL, password redacted.
        url: String,
        /// The client's reason.
        reason: String,
    },
}

/// One invalidation on the wire: JSON, so a soul may hold any character.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Invalidation<'a> {
    /// The replica that published it (it ignores its own: its caches already forgot).
    #[serde(borrow)]
    origin: Cow<'a, str>,
    /// The soul that was written.
    #[serde(borrow)]
    soul: Cow<'a, str>,
}

/// Encodes one invalidation.
fn encode(origin: &str, soul: &str) -> Vec<u8> {
    let message = Invalidation {
        origin: Cow::Borrowed(origin),
        soul: Cow::Borrowed(soul),
    };
    serde_json::to_vec(&message).unwrap_or_default()
}

/// The soul of a message from another replica (`Ok(None)` for our own), or `Err` for
/// anything that is not an invalidation (another writer on the channel, garbage).
fn decode(payload: &[u8], own_origin: &str) -> Result<Option<String>, ()> {
    let is_object = payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if payload.len() > MAX_MESSAGE || !is_object {
        return Err(());
    }
    let message: Invalidation<'_> = serde_json::from_slice(payload).map_err(|_| ())?;
    if message.soul.is_empty() {
        return Err(());
    }
    Ok((message.origin != own_origin).then(|| message.soul.into_owned()))
}

/// The wait before reconnection try number `failures` (1 for the first):
/// `base · 2^(failures-1)`, capped at `max`, half fixed and half random.
fn reconnect_wait(base: Duration, max: Duration, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(24);
    let full = base.saturating_mul(1 << exponent).min(max);
    let half = full / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// The bus's counters and gauge, registered as `oip_media_redis_*`.
#[derive(Debug, Default)]
pub struct ReplicaCounters {
    /// 1 while subscribed and able to publish.
    pub connected: Gauge,
    /// Invalidations published.
    pub published: Counter,
    /// Invalidations from other replicas applied.
    pub received: Counter,
    /// Messages on the channel that were not invalidations, ignored.
    pub ignored: Counter,
    /// Invalidations dropped because the publish queue was full.
    pub dropped_queue_full: Counter,
    /// Invalidations dropped because their publish failed (the connection was lost).
    pub dropped_publish_failed: Counter,
    /// Connections made again after a loss.
    pub reconnects: Counter,
    /// Connection attempts that failed.
    pub connect_failures: Counter,
}

/// What the background task and the handlers share.
struct Shared {
    configured: bool,
    connected: AtomicBool,
    counters: ReplicaCounters,
}

impl Shared {
    /// Flips the state last, after its counters and log line, so whoever sees the new
    /// state (in `/readyz`) also sees them: the gauge first, then the flag.
    fn set_connected(&self, connected: bool) {
        self.counters.connected.set(i64::from(connected));
        self.connected.store(connected, Ordering::Release);
    }
}

/// The caches an invalidation reaches, held weakly: the bus keeps nothing alive.
struct Targets {
    gun: Option<Weak<GunClient>>,
    resolver: Weak<Resolver>,
}

impl Targets {
    async fn forget(&self, soul: &str) {
        if let Some(gun) = self.gun.as_ref().and_then(Weak::upgrade) {
            gun.forget(soul);
        }
        if let Some(resolver) = self.resolver.upgrade() {
            resolver.invalidate(&format!("{GUN_PREFIX}{soul}")).await;
        }
    }

    fn forget_all(&self) {
        if let Some(gun) = self.gun.as_ref().and_then(Weak::upgrade) {
            gun.forget_all();
        }
        if let Some(resolver) = self.resolver.upgrade() {
            resolver.invalidate_all();
        }
    }

    fn set_isolated(&self, isolated: bool) {
        if let Some(gun) = self.gun.as_ref().and_then(Weak::upgrade) {
            gun.set_isolated(isolated);
        }
    }
}

/// The invalidation bus of one replica. Without `REDIS_URL` it does nothing.
pub struct Replicas {
    queue: Option<mpsc::Sender<String>>,
    shared: Arc<Shared>,
    task: Option<tokio::task::AbortHandle>,
}

impl Replicas {
    /// A bus that shares nothing (no `REDIS_URL`).
    pub fn off() -> Replicas {
        Replicas {
            queue: None,
            shared: Arc::new(Shared {
                configured: false,
                connected: AtomicBool::new(false),
                counters: ReplicaCounters::default(),
            }),
            task: None,
        }
    }

    /// Starts sharing invalidations as `settings` say (nothing without `REDIS_URL`).
    /// Connecting happens in the background: the service starts whether Redis answers
    /// or not, with `gun`'s misses on the short TTL until it does. Needs a Tokio
    /// runtime to start the task; without one it stays disconnected (and says so).
    pub fn start(
        settings: &ReplicaSettings,
        gun: Option<&Arc<GunClient>>,
        resolver: &Arc<Resolver>,
    ) -> Result<Replicas, ReplicaError> {
        let Some(url) = &settings.redis_url else {
            return Ok(Replicas::off());
        };
        let client = redis::Client::open(url.expose()).map_err(|error| ReplicaError::Url {
            url: url.redacted(),
            reason: error.to_string(),
        })?;
        let shared = Arc::new(Shared {
            configured: true,
            connected: AtomicBool::new(false),
            counters: ReplicaCounters::default(),
        });
        let targets = Targets {
            gun: gun.map(Arc::downgrade),
            resolver: Arc::downgrade(resolver),
        };
        // Until the first connection, puts elsewhere go unheard.
        targets.set_isolated(true);
        let (sender, receiver) = mpsc::channel(settings.redis_publish_queue.max(1));
        let link = LinkSettings {
            url: url.clone(),
            channel: settings.redis_channel.clone(),
            timeout: settings.redis_timeout,
            reconnect_base: settings.redis_reconnect_base,
            reconnect_max: settings.redis_reconnect_max,
            origin: format!("{}-{:016x}", std::process::id(), fastrand::u64(..)),
        };
        let task = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let shared = Arc::clone(&shared);
                let task = runtime.spawn(run(client, link, shared, receiver, targets));
                Some(task.abort_handle())
            }
            Err(_) => {
                tracing::error!(
                    "{} is set but there is no async runtime to connect from: \
                     invalidations are not shared",
                    env_name::<ReplicaSettings>("redis_url")
                );
                None
            }
        };
        Ok(Replicas {
            queue: Some(sender),
            shared,
            task,
        })
    }

    /// Tells the other replicas that `soul` was written. Never waits: the soul is
    /// queued for the background task, or dropped (and counted) when the queue is full.
    pub fn publish(&self, soul: &str) {
        let Some(queue) = &self.queue else { return };
        if queue.try_send(soul.to_owned()).is_err() {
            self.shared.counters.dropped_queue_full.inc();
        }
    }

    /// Whether `REDIS_URL` is set.
    pub fn configured(&self) -> bool {
        self.shared.configured
    }

    /// Whether invalidations are shared now (subscribed and able to publish).
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// The counters.
    pub fn counters(&self) -> &ReplicaCounters {
        &self.shared.counters
    }

    /// The state for `/readyz`: whether Redis is configured and connected, never its
    /// URL.
    pub fn status(&self) -> serde_json::Value {
        if !self.configured() {
            return serde_json::json!({ "configured": false });
        }
        let state = if self.connected() {
            "connected"
        } else {
            "disconnected"
        };
        serde_json::json!({ "configured": true, "state": state })
    }

    /// Registers `oip_media_redis_*`.
    pub fn register(&self, registry: &mut Registry) {
        let c = &self.shared.counters;
        registry.register(
            "redis_connected",
            format!(
                "1 while invalidations are shared through Redis (0: disconnected, or {} unset)",
                env_name::<ReplicaSettings>("redis_url")
            ),
            c.connected.clone(),
        );
        registry.register(
            "redis_invalidations_published",
            "Souls published to the other replicas after a put",
            c.published.clone(),
        );
        registry.register(
            "redis_invalidations_received",
            "Souls other replicas published, forgotten by this one's caches",
            c.received.clone(),
        );
        registry.register(
            "redis_invalidations_dropped",
            "Souls not published, by reason (queue_full, publish_failed)",
            by_kind([
                ("queue_full", &c.dropped_queue_full),
                ("publish_failed", &c.dropped_publish_failed),
            ]),
        );
        registry.register(
            "redis_messages_ignored",
            "Messages on the channel that were not invalidations",
            c.ignored.clone(),
        );
        registry.register(
            "redis_reconnects",
            "Connections to Redis made again after a loss",
            c.reconnects.clone(),
        );
        registry.register(
            "redis_connect_failures",
            "Connection attempts to Redis that failed",
            c.connect_failures.clone(),
        );
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas")
            .field("configured", &self.configured())
            .field("connected", &self.connected())
            .finish_non_exhaustive()
    }
}

/// What the background task needs to know.
struct LinkSettings {
    url: RedisUrl,
    channel: String,
    timeout: Duration,
    reconnect_base: Duration,
    reconnect_max: Duration,
    origin: String,
}

/// The background task: connect, serve until the connection is lost, wait, again.
/// Returns when the bus is dropped (its queue closes).
async fn run(
    client: redis::Client,
    link: LinkSettings,
    shared: Arc<Shared>,
    mut queue: mpsc::Receiver<String>,
    targets: Targets,
) {
    let mut failures: u32 = 0;
    let mut ever_connected = false;
    // Whether "Redis is not reachable" has been logged since the last connection: a
    // state change is logged once, each failed try only at debug.
    let mut down_logged = false;
    loop {
        match connect(&client, &link).await {
            Ok(connection) => {
                // Subscribed: from now on every put elsewhere is heard. What was cached
                // before may have missed some, so it goes.
                targets.forget_all();
                targets.set_isolated(false);
                if ever_connected {
                    shared.counters.reconnects.inc();
                    tracing::info!(
                        redis = %link.url,
                        tries = failures,
                        "Redis reconnected: invalidations are shared again (caches cleared)"
                    );
                } else {
                    tracing::info!(
                        redis = %link.url,
                        channel = %link.channel,
                        "Redis connected: invalidations are shared with the other replicas"
                    );
                }
                shared.set_connected(true);
                ever_connected = true;
                failures = 0;
                let Some(reason) = connection.serve(&mut queue, &link, &shared, &targets).await
                else {
                    return; // the bus was dropped
                };
                // The loss is the state change logged; failed tries after it are not.
                targets.set_isolated(true);
                tracing::warn!(
                    redis = %link.url,
                    %reason,
                    "Redis connection lost: serving from local caches (misses trusted for \
                     {}), reconnecting with backoff",
                    flag::<GunSettings>("gun_miss_ttl_without_redis")
                );
                shared.set_connected(false);
                down_logged = true;
            }
            Err(reason) => {
                shared.counters.connect_failures.inc();
                if down_logged {
                    tracing::debug!(redis = %link.url, %reason, "Redis still unreachable");
                } else {
                    tracing::warn!(
                        redis = %link.url,
                        %reason,
                        "cannot connect to Redis: serving from local caches (misses trusted \
                         for {}), retrying with backoff",
                        flag::<GunSettings>("gun_miss_ttl_without_redis")
                    );
                    down_logged = true;
                }
            }
        }
        failures = failures.saturating_add(1);
        let wait = reconnect_wait(link.reconnect_base, link.reconnect_max, failures);
        tokio::time::sleep(wait).await;
        if queue.is_closed() {
            return;
        }
    }
}

/// A live link: one connection to publish on, one subscribed to the channel.
struct Connection {
    publisher: redis::aio::MultiplexedConnection,
    sink: redis::aio::PubSubSink,
    messages: redis::aio::PubSubStream,
}

/// Connects both connections and subscribes, within `--redis-timeout` each.
async fn connect(client: &redis::Client, link: &LinkSettings) -> Result<Connection, String> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(link.timeout))
        .set_response_timeout(Some(link.timeout));
    let within = |what: &'static str| move |_| format!("{what}: no answer within the timeout");
    let publisher = tokio::time::timeout(
        link.timeout,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .map_err(within("connect"))?
    .map_err(|e| e.to_string())?;
    let mut pubsub = tokio::time::timeout(link.timeout, client.get_async_pubsub())
        .await
        .map_err(within("connect for pub/sub"))?
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(link.timeout, pubsub.subscribe(&link.channel))
        .await
        .map_err(within("subscribe"))?
        .map_err(|e| e.to_string())?;
    let (sink, messages) = pubsub.split();
    Ok(Connection {
        publisher,
        sink,
        messages,
    })
}

impl Connection {
    /// Publishes queued souls and applies the other replicas' until the connection is
    /// lost (`Some(reason)`) or the bus is dropped (`None`).
    async fn serve(
        mut self,
        queue: &mut mpsc::Receiver<String>,
        link: &LinkSettings,
        shared: &Shared,
        targets: &Targets,
    ) -> Option<String> {
        let counters = &shared.counters;
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.reset();
        loop {
            tokio::select! {
                message = self.messages.next() => {
                    let Some(message) = message else {
                        return Some("the subscription's connection closed".into());
                    };
                    match decode(message.get_payload_bytes(), &link.origin) {
                        Ok(Some(soul)) => {
                            targets.forget(&soul).await;
                            counters.received.inc();
                        }
                        Ok(None) => {} // our own
                        Err(()) => {
                            counters.ignored.inc();
                        }
                    }
                }
                soul = queue.recv() => {
                    let soul = soul?;
                    let payload = encode(&link.origin, &soul);
                    let published = tokio::time::timeout(
                        link.timeout,
                        redis::AsyncCommands::publish::<_, _, i64>(
                            &mut self.publisher,
                            &link.channel,
                            payload,
                        ),
                    )
                    .await;
                    match published {
                        Ok(Ok(_)) => counters.published.inc(),
                        Ok(Err(error)) => {
                            counters.dropped_publish_failed.inc();
                            return Some(format!("publish failed: {error}"));
                        }
                        Err(_) => {
                            counters.dropped_publish_failed.inc();
                            return Some("publish: no answer within the timeout".into());
                        }
                    };
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(link.timeout, self.sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return Some(format!("ping failed: {error}")),
                        Err(_) => return Some("ping: no answer within the timeout".into()),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_our_own_are_skipped() {
        let wire = encode("me", "abc:1/x \"y\"\n");
        assert_eq!(
            decode(&wire, "other"),
            Ok(Some("abc:1/x \"y\"\n".to_owned()))
        );
        assert_eq!(decode(&wire, "me"), Ok(None));
    }

    #[test]
    fn hostile_messages_are_ignored() {
        let huge = encode("x", &"s".repeat(MAX_MESSAGE));
        for payload in [
            &b""[..],
            b"not json",
            b"abc:1",
            b"{\"soul\":\"a\"}",
            b"{\"origin\":\"x\",\"soul\":\"\"}",
            b"{\"origin\":\"x\",\"soul\":7}",
            b"[\"x\",\"a\"]",
            &huge,
        ] {
            assert_eq!(
                decode(payload, "me"),
                Err(()),
                "{}",
                String::from_utf8_lossy(&payload[..payload.len().min(40)])
            );
        }
    }

    #[test]
    fn reconnect_waits_grow_to_the_cap_with_jitter() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for _ in 0..100 {
            let first = reconnect_wait(base, max, 1);
            assert!(first >= base / 2 && first <= base, "{first:?}");
            let fourth = reconnect_wait(base, max, 4);
            assert!(
                fourth >= Duration::from_millis(400) && fourth <= Duration::from_millis(800),
                "{fourth:?}"
            );
            let late = reconnect_wait(base, max, 1000);
            assert!(late >= max / 2 && late <= max, "{late:?}");
        }
        let waits: std::collections::HashSet<_> =
            (0..50).map(|_| reconnect_wait(base, max, 3)).collect();
        assert!(waits.len() > 1, "no jitter");
    }

    fn settings(url: &str, queue: usize) -> ReplicaSettings {
        let mut settings = crate::Config::for_media_dir("/nonexistent").replicas;
        settings.redis_url = Some(url.parse().expect("infallible"));
        settings.redis_publish_queue = queue;
        settings.redis_reconnect_base = Duration::from_secs(60);
        settings.redis_reconnect_max = Duration::from_secs(60);
        settings
    }

    fn resolver() -> Arc<Resolver> {
        let config = crate::Config::for_media_dir("/nonexistent");
        Arc::new(Resolver::with_sources(
            &config.resolver,
            crate::resolve::Sources::default(),
        ))
    }

    #[tokio::test]
    async fn a_put_never_waits_for_redis_and_a_full_queue_drops_and_counts() {
        // Nothing listens on port 1: the task fails to connect and waits a minute.
        let bus = Replicas::start(&settings("redis://127.0.0.1:1/", 3), None, &resolver())
            .expect("a valid URL");
        let started = std::time::Instant::now();
        for i in 0..10 {
            bus.publish(&format!("soul:{i}"));
        }
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "publish waited"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!bus.connected());
        assert_eq!(bus.status()["state"], "disconnected");
        assert!(bus.counters().connect_failures.get() >= 1);
        // Three wait in the queue for Redis; the rest were dropped.
        assert_eq!(bus.counters().dropped_queue_full.get(), 7);
        assert_eq!(bus.counters().connected.get(), 0);
    }

    #[tokio::test]
    async fn an_unusable_url_names_the_setting_without_the_password() {
        let error = Replicas::start(&settings("http://:pw-secret@host:1", 1), None, &resolver())
            .expect_err("not a Redis URL")
            .to_string();
        assert!(!error.contains("pw-secret"), "{error}");
        assert!(error.contains("http://:***@host:1"), "{error}");
    }

    #[test]
    fn off_without_redis_url() {
        let bus = Replicas::off();
        bus.publish("a:1");
        assert_eq!(bus.status(), serde_json::json!({"configured": false}));
        assert_eq!(bus.counters().dropped_queue_full.get(), 0);
    }
}
