//! The replicas' settings group: the Redis that shares invalidations.

use std::time::Duration;

use crate::secret::RedisUrl;
use crate::settings::{Invalid, at_least_one, flag, not_zero, parse_duration};

/// Settings of cache invalidation shared between replicas (`src/replicas/`): with
/// `REDIS_URL` set, a put through any replica removes the soul from every replica's GUN
/// miss cache and record cache, through Redis pub/sub.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Replicas (Redis)")]
pub struct ReplicaSettings {
    /// Redis that replicas share invalidations through (`redis://…` or `redis+unix://…`).
    ///
    /// Redis that replicas share invalidations through (`redis://[:password@]host:port[/db]` or
    /// `redis+unix:///path/to/socket`).
    ///
    /// Unset: this replica's caches are its own, and a put through another replica shows here
    /// only when the cached miss expires (`--gun-negative-cache-ttl`, `--record-negative-ttl`,
    /// `--record-cache-ttl`). The password is never logged.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<RedisUrl>,

    /// Pub/sub channel of the invalidations, shared by the replicas of one deployment.
    ///
    /// Pub/sub channel of the invalidations; replicas of one deployment must share it,
    /// deployments sharing one Redis must not.
    #[arg(long, env = "REDIS_CHANNEL", default_value = "oip-media:invalidate")]
    pub redis_channel: String,

    /// Time to connect to Redis and for one publish or ping to be answered.
    ///
    /// Time to connect to Redis, and for one publish or health-check ping to be answered; past
    /// it the connection counts as lost.
    #[arg(long, env = "REDIS_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// First wait before reconnecting to Redis; doubled on each failed try, jittered.
    ///
    /// First wait before reconnecting to Redis; it doubles on each failed try up to
    /// `--redis-reconnect-max`, half fixed and half random, so replicas that lost Redis
    /// together do not reconnect together.
    #[arg(long, env = "REDIS_RECONNECT_BASE", default_value = "250ms", value_parser = parse_duration)]
    pub redis_reconnect_base: Duration,

    /// Longest wait between two reconnection tries.
    #[arg(long, env = "REDIS_RECONNECT_MAX", default_value = "10s", value_parser = parse_duration)]
    pub redis_reconnect_max: Duration,

    /// Invalidations waiting to be published.
    ///
    /// A put never waits for Redis: its soul is queued, and dropped (and counted) when the
    /// queue is full. 4096 souls cover the puts of a Redis outage of minutes at the indexer's
    /// rates; they are published once Redis is back.
    #[arg(long, env = "REDIS_PUBLISH_QUEUE", default_value_t = 4096)]
    pub redis_publish_queue: usize,
}

impl ReplicaSettings {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        not_zero("redis_timeout", self.redis_timeout)?;
        not_zero("redis_reconnect_base", self.redis_reconnect_base)?;
        if self.redis_reconnect_max < self.redis_reconnect_base {
            return Err(Invalid::new(
                "redis_reconnect_max",
                format!("must be at least {}", flag::<Self>("redis_reconnect_base")),
            ));
        }
        at_least_one("redis_publish_queue", self.redis_publish_queue)?;
        if self.redis_channel.is_empty() {
            return Err(Invalid::new("redis_channel", "must not be empty"));
        }
        Ok(())
    }
}
