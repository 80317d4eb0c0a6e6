//! The GUN relay's settings group: the client, its miss cache and breaker, and the
//! `/gun-relay/` endpoints' bodies and admission.

use std::time::Duration;

use crate::settings::{Invalid, at_least_one, not_zero, parse_bytes, parse_duration};

/// Settings of the GUN relay client (`src/gun/`) and of the relay-compatible
/// `/gun-relay/get` and `/gun-relay/put` endpoints (SPEC §3).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "GUN relay")]
pub struct GunSettings {
    /// Base URL of the GUN relay (the first entry of the indexer's comma list).
    ///
    /// Base URL of the GUN relay, as the indexer sets it: a comma list of which only the first
    /// entry is used (e.g. `http://gun-relay:8765`); a trailing slash is tolerated.
    ///
    /// Unset: the `/gun-relay/` endpoints answer 503 `{"error":"GUN relay not configured"}`.
    #[arg(long = "gun-peers", env = "GUN_PEERS")]
    pub gun_peers: Option<String>,

    /// Requests per call, first one included, when the relay is unavailable.
    ///
    /// Requests per call, first one included, when the relay is unavailable (timeout,
    /// connection error, 5xx).
    ///
    /// 3 rides out a relay restart without multiplying load; a 404 or another 4xx is never
    /// retried, whatever this says.
    #[arg(long, env = "GUN_ATTEMPTS", default_value_t = 3)]
    pub gun_attempts: u32,

    /// Time one request to the relay may take, body included.
    ///
    /// The relay answers a miss only after waiting ~3 s for its peers, so this must stay well
    /// above 3 s.
    #[arg(long, env = "GUN_ATTEMPT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub gun_attempt_timeout: Duration,

    /// Time one call (every attempt and backoff together) may take before it fails as
    /// unavailable.
    ///
    /// The indexer's client could spend ~40 s on one record. 8 s leaves room for a slow miss
    /// (~3 s) and a retry, and stays under the indexer's own 10 s request timeout, so through
    /// `/gun-relay/` it gets our answer (at worst a JSON 504) rather than timing out and
    /// retrying on its side.
    #[arg(long, env = "GUN_DEADLINE", default_value = "8s", value_parser = parse_duration)]
    pub gun_deadline: Duration,

    /// First backoff before a retry; doubled on each further retry, jittered.
    ///
    /// First backoff before a retry; it doubles on each further retry and is jittered (half
    /// fixed, half random) so that callers who failed together do not retry together.
    #[arg(long, env = "GUN_BACKOFF_BASE", default_value = "100ms", value_parser = parse_duration)]
    pub gun_backoff_base: Duration,

    /// How long a soul the relay reported missing is answered as missing without asking again.
    ///
    /// 1 h, as the indexer's cache meant to; checked on every read, so an entry is never served
    /// past it. A put through this service forgets the soul at once.
    #[arg(long, env = "GUN_NEGATIVE_CACHE_TTL", default_value = "1h", value_parser = parse_duration)]
    pub gun_negative_cache_ttl: Duration,

    /// How long a cached miss is trusted while `REDIS_URL` is set but Redis is unreachable.
    ///
    /// With `REDIS_URL` set but Redis unreachable, how long a cached miss is trusted instead of
    /// `--gun-negative-cache-ttl`: a put through another replica cannot reach this one then, so
    /// a soul it stored shows here after at most this long.
    ///
    /// 5s is above the ~3 s the relay itself takes to answer a miss, so a hot missing soul
    /// still costs the relay at most one get per 5 s per replica (concurrent gets share one),
    /// while a record published during an outage is seen within seconds. Without `REDIS_URL`
    /// there is no one to hear from, and `--gun-negative-cache-ttl` applies.
    #[arg(long, env = "GUN_MISS_TTL_WITHOUT_REDIS", default_value = "5s", value_parser = parse_duration)]
    pub gun_miss_ttl_without_redis: Duration,

    /// Most souls kept in the negative cache (TinyLFU admission, LRU eviction).
    ///
    /// 10,000 souls of ~80 bytes each is under a few MiB, and matches the indexer's bound.
    #[arg(long, env = "GUN_NEGATIVE_CACHE_CAPACITY", default_value_t = 10_000)]
    pub gun_negative_cache_capacity: u64,

    /// Consecutive "unavailable" outcomes that open the circuit breaker (0 disables it).
    ///
    /// Consecutive "unavailable" outcomes (each attempt counts, retries included) that open the
    /// circuit breaker, after which calls fail fast until the cool-down ends (0 disables the
    /// breaker).
    ///
    /// 5 is past what one relay restart causes at a low request rate, yet stops a dead relay
    /// from costing every caller a full deadline.
    #[arg(long, env = "GUN_BREAKER_THRESHOLD", default_value_t = 5)]
    pub gun_breaker_threshold: u32,

    /// How long an open breaker fails calls fast before it lets one probe request through.
    #[arg(long, env = "GUN_BREAKER_COOLDOWN", default_value = "10s", value_parser = parse_duration)]
    pub gun_breaker_cooldown: Duration,

    /// Most requests in flight to the relay at once, and most idle connections kept.
    ///
    /// Most requests in flight to the relay at once, and most idle keep-alive connections kept
    /// for reuse.
    ///
    /// Requests past it wait for a slot (within their deadline), so a burst cannot open
    /// thousands of sockets; 32 is well above what one Node relay serves in parallel.
    #[arg(long, env = "GUN_POOL_SIZE", default_value_t = 32)]
    pub gun_pool_size: usize,

    /// Largest request body `POST /gun-relay/put` accepts (413 past it).
    ///
    /// Largest request body `POST /gun-relay/put` accepts (413 past it): every record the
    /// indexer can publish.
    ///
    /// Its own JSON limit is 50 MB; `putRecord` stores `data` as a JSON string inside the put's
    /// JSON, which escapes every `"` and `\` again (at most 2×: 100 MB), and an encrypted
    /// record's `data` is that string encrypted and base64-encoded (4/3 of it: at most 133.4 MB
    /// = 127.2 MiB). 128 MiB holds both. A body is buffered only once its bytes arrive, each
    /// within `--request-body-budget`.
    #[arg(long, env = "GUN_PUT_BODY_LIMIT", default_value = "128MiB", value_parser = parse_bytes)]
    pub gun_put_body_limit: u64,

    /// Time a client has to send the whole body of `POST /gun-relay/put` (408 past it).
    ///
    /// Time a client has to send the whole body of `POST /gun-relay/put` (408 past it), so a
    /// slow sender holds a connection and its buffer for a bounded time.
    #[arg(long, env = "GUN_PUT_BODY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub gun_put_body_timeout: Duration,

    /// `POST /gun-relay/put` requests admitted at once.
    ///
    /// `POST /gun-relay/put` requests admitted at once, from the first body byte to the relay's
    /// answer; half of `--gun-pool-size`, so puts never take every relay connection from gets.
    ///
    /// Their buffered bodies together stay within `--request-body-budget` (a put past it waits,
    /// then gets 503), plus one copy of each record on its way to the relay.
    #[arg(long, env = "GUN_PUT_MAX_IN_FLIGHT", default_value_t = 16)]
    pub gun_put_max_in_flight: usize,

    /// Puts allowed to wait for a slot; past it 503 + `Retry-After` at once.
    #[arg(long, env = "GUN_PUT_MAX_QUEUE", default_value_t = 64)]
    pub gun_put_max_queue: usize,

    /// Longest a put waits for a slot; then 503 + `Retry-After`.
    ///
    /// A put holds its slot for at most the body timeout plus `--gun-deadline`, so a short wait
    /// is the fair one.
    #[arg(long, env = "GUN_PUT_QUEUE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub gun_put_queue_timeout: Duration,

    /// `GET /gun-relay/get` requests admitted at once.
    ///
    /// `GET /gun-relay/get` requests admitted at once, from the request to its answer.
    ///
    /// A get is answered from the miss cache in microseconds or waits on the relay (a miss
    /// takes it ~3 s) for one of `--gun-pool-size` connections, within `--gun-deadline`: this
    /// bounds how many such waits there are. 256 is eight gets per relay connection.
    #[arg(long, env = "GUN_GET_MAX_IN_FLIGHT", default_value_t = 256)]
    pub gun_get_max_in_flight: usize,

    /// Gets allowed to wait for a slot; past it 503 + `Retry-After` at once.
    #[arg(long, env = "GUN_GET_MAX_QUEUE", default_value_t = 1024)]
    pub gun_get_max_queue: usize,

    /// Longest a get waits for a slot; then 503 + `Retry-After`.
    #[arg(long, env = "GUN_GET_QUEUE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub gun_get_queue_timeout: Duration,

    /// Largest response body read from the relay; a larger answer is an error, not a record.
    ///
    /// Bounds what one answer can make us buffer; records are KiB, not MiB.
    #[arg(long, env = "GUN_RESPONSE_LIMIT", default_value = "8MiB", value_parser = parse_bytes)]
    pub gun_response_limit: u64,

    /// Interval of the GUN client's summary log line (0 = never).
    ///
    /// Interval of the client's summary log line (requests, misses, cache hits, errors, breaker
    /// state; 0 = never).
    ///
    /// A summary per interval instead of a line per request keeps logs readable at hundreds of
    /// lookups per second; intervals without calls log nothing.
    #[arg(long, env = "GUN_SUMMARY_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub gun_summary_interval: Duration,
}

impl GunSettings {
    /// Checks what clap cannot (the client checks its own URL, attempts and pool).
    pub fn validate(&self) -> Result<(), Invalid> {
        at_least_one("gun_put_max_in_flight", self.gun_put_max_in_flight)?;
        at_least_one("gun_get_max_in_flight", self.gun_get_max_in_flight)?;
        not_zero("gun_put_queue_timeout", self.gun_put_queue_timeout)?;
        not_zero("gun_get_queue_timeout", self.gun_get_queue_timeout)
    }
}
