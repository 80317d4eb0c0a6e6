//! The record resolver's settings group.

use std::path::PathBuf;
use std::time::Duration;

use crate::secret::{Secret, UrlSetting};
use crate::settings::{Invalid, at_least_one, flag, not_zero, parse_bytes, parse_duration};

/// Settings of the record resolver (SPEC §4): where referenced records come from, and
/// the hard bounds on the work one request may cause and the memory the process-wide
/// record cache may hold.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Record resolver")]
pub struct ResolverSettings {
    /// The indexer's Elasticsearch URL (`http://host:9200` or `https://…`).
    ///
    /// The indexer's Elasticsearch URL (`http://host:9200`, or `https://` as Elasticsearch 8
    /// serves by default).
    ///
    /// Every reference is looked up there first, `did:gun:` ones included (the indexer's GUN
    /// sync indexes GUN records); only `did:gun:` ones it lacks then go to the GUN relay.
    /// Without it, references other than `did:gun:` stay unresolved and responses count them in
    /// `unresolvedNoSource`. User-info in the URL (`https://user:pass@host:9200`) is taken as
    /// the credentials when `ELASTICCLIENTUSERNAME` is not set, and is never logged.
    #[arg(long, env = "ELASTICSEARCHHOST")]
    pub elasticsearch_host: Option<UrlSetting>,

    /// User of HTTP basic auth to Elasticsearch (the indexer's variable).
    ///
    /// User of HTTP basic auth to Elasticsearch: the indexer's variable, which its client
    /// always sends.
    ///
    /// Unset (and no user-info in the URL): no credentials.
    #[arg(long, env = "ELASTICCLIENTUSERNAME")]
    pub elastic_username: Option<String>,

    /// Password of HTTP basic auth to Elasticsearch (the indexer's variable).
    ///
    /// Prefer the environment variable to the flag, which other users of the host can see in
    /// the process list. Never logged.
    #[arg(long, env = "ELASTICCLIENTPASSWORD", hide_env_values = true)]
    pub elastic_password: Option<Secret>,

    /// PEM file of CA certificates trusted for an `https://` Elasticsearch.
    ///
    /// PEM file of CA certificates trusted for an `https://` Elasticsearch, besides the
    /// system's roots: Elasticsearch 8's `config/certs/http_ca.crt`.
    ///
    /// Read at start-up; a file that cannot be read or holds no certificate stops the start.
    #[arg(long, env = "ELASTIC_CA_FILE")]
    pub elastic_ca_file: Option<PathBuf>,

    /// Time one Elasticsearch search may take before its references are left unresolved.
    ///
    /// A level's whole batch is one query, so this bounds how long one level can wait on
    /// Elasticsearch.
    #[arg(long, env = "ELASTICSEARCH_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub elasticsearch_timeout: Duration,

    /// Deepest resolution a request gets, whatever `resolveDepth` it asks for.
    ///
    /// Each level can multiply the work by the fan-out of the records, so the depth a caller
    /// may ask for must be bounded. Responses say `capped: true` when it applied.
    #[arg(long, env = "RESOLVE_MAX_DEPTH", default_value_t = 4)]
    pub resolve_max_depth: u32,

    /// Most distinct references one request may look up, cached or not.
    ///
    /// Past it, remaining references stay DIDs, the response says `budgetExhausted: true` and
    /// each record cut short says `"budget"` in its `recordStats[i].boundsHit`. Counting cache
    /// hits too keeps a response the same whatever the cache holds. Per request, i.e. per page:
    /// a page of 100 workouts of 6 exercises each with 2 references of their own needs at most
    /// 100 × (6 + 12) = 1,800 lookups at depth 2, however little the page shares. The records
    /// looked up are held until the answer is built: at ~8 KiB each, 2,500 is ~20 MiB.
    #[arg(long, env = "RESOLVE_BUDGET", default_value_t = 2500)]
    pub resolve_budget: usize,

    /// Most bytes of memory the records of one answer may take.
    ///
    /// Most bytes of memory the records of one answer may take: the input records as they are
    /// parsed, then every copy, name and stub that resolution puts into them, each counted at
    /// its heap size as it is built (not its JSON length: real records take ~3.5 times their
    /// JSON on the heap, tiny ones up to 40 times).
    ///
    /// A body whose records alone would take more is refused with 413 while it is parsed; past
    /// it during resolution, remaining references stay DIDs and the response says
    /// `outputLimitReached: true`. Sized from the real workload, workout pages resolved to
    /// depth 4 (workout → 12 exercises → their demo-GIF collections and equipment → images):
    /// one workout takes under 1 MiB, a listing of 16 about 13 MiB (3.8 MB of JSON); 32MiB
    /// holds that listing twice, and `--resolve-max-in-flight` answers of this size stay well
    /// inside the service's memory target. A batched page of 100 workouts at depth 2 (6
    /// exercises each, each exercise with its GIF and equipment records) takes 4.4 MiB
    /// (tests/resolve_admission.rs); with 12 exercises of twice the size, about 18 MiB.
    #[arg(long, env = "RESOLVE_MAX_OUTPUT_BYTES", default_value = "32MiB", value_parser = parse_bytes)]
    pub resolve_max_output_bytes: u64,

    /// Resolutions running at once.
    ///
    /// Each may hold up to `--resolve-max-output-bytes` of records plus its serialized answer
    /// until the answer is sent, so this times that bounds the resolver's memory under any
    /// load. A resolution mostly waits on Elasticsearch; 4 at a time serve tens of pages a
    /// second.
    #[arg(long, env = "RESOLVE_MAX_IN_FLIGHT", default_value_t = 4)]
    pub resolve_max_in_flight: usize,

    /// Resolve requests allowed to wait for a slot; more get 503 with `Retry-After` at once.
    ///
    /// One request is one admission however many records it carries, so the indexer's 20
    /// concurrent pages (one batched request each), its internal pollers and a second indexer
    /// fit with room to spare. A waiting request holds only its body, which the process-wide
    /// `--request-body-budget` bounds, so a longer queue costs no more memory.
    #[arg(long, env = "RESOLVE_MAX_QUEUE", default_value_t = 64)]
    pub resolve_max_queue: usize,

    /// Longest a resolve request waits for a slot before it gets 503 with `Retry-After`.
    ///
    /// A page of 100 records at depth 2 resolves in tens to a few hundred milliseconds, so 20
    /// pages queued behind 4 slots wait about a second; 10 s rides out a slow Elasticsearch
    /// without shedding a page the indexer would otherwise serve unresolved, and stays under
    /// the companion's request timeout.
    #[arg(long, env = "RESOLVE_QUEUE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub resolve_queue_timeout: Duration,

    /// Time one resolution may spend looking records up.
    ///
    /// The relay answers a miss only after ~3 s, and a GUN call may take up to
    /// `--gun-deadline`; without this, a level of a thousand slow misses could keep a caller
    /// waiting for minutes. What is not looked up in time stays a DID and the response says
    /// `timedOut: true`.
    #[arg(long, env = "RESOLVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub resolve_timeout: Duration,

    /// Lookups of one resolution level that run at the same time.
    ///
    /// Enough to hide the GUN relay's latency without queueing hundreds of requests on it.
    #[arg(long, env = "RESOLVE_CONCURRENCY", default_value_t = 16)]
    pub resolve_concurrency: usize,

    /// Largest `POST /api/resolve` body accepted; larger bodies get 413.
    ///
    /// A page of the indexer's records is well under a megabyte.
    #[arg(long, env = "RESOLVE_BODY_LIMIT", default_value = "8MiB", value_parser = parse_bytes)]
    pub resolve_body_limit: u64,

    /// Bytes of `POST /api/resolve` bodies buffered at once (a share of the body budget).
    ///
    /// Bytes of `POST /api/resolve` bodies buffered at once, a share of `--request-body-budget`
    /// that resolve bodies cannot exceed: they are read before a resolve slot is taken (so a
    /// slow sender holds none), and this keeps them, and the resolutions they lead to, where
    /// they were when the budget was theirs alone, however large the budget is made for GUN
    /// puts.
    ///
    /// Charged like the budget (the `Content-Length`, or twice `--resolve-body-limit` when
    /// chunked); past it a body waits `--request-body-queue-timeout`, then gets 503. Must hold
    /// twice `--resolve-body-limit`.
    #[arg(long, env = "RESOLVE_BODY_BUDGET", default_value = "64MiB", value_parser = parse_bytes)]
    pub resolve_body_budget: u64,

    /// Time a client has to send the whole `POST /api/resolve` body.
    ///
    /// Time a client has to send the whole `POST /api/resolve` body, so a client trickling
    /// bytes cannot hold a buffer forever.
    #[arg(long, env = "RESOLVE_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub resolve_body_timeout: Duration,

    /// Most records kept in the process-wide record cache.
    #[arg(long, env = "RECORD_CACHE_ENTRIES", default_value_t = 7500)]
    pub record_cache_entries: u64,

    /// Most bytes of memory the record cache holds (heap size, not JSON length).
    ///
    /// Most bytes of memory the record cache holds: each entry weighs its record's heap size,
    /// its key and the cache's bookkeeping, not its JSON length.
    ///
    /// A real record takes ~8 KiB this way, so the default holds about as many as the entry
    /// bound. Whichever bound is reached first applies. The cache stays full after a burst, so
    /// this is memory the process keeps.
    #[arg(long, env = "RECORD_CACHE_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub record_cache_bytes: u64,

    /// How long a found record is served from the cache.
    ///
    /// Records are mostly immutable; an edit shows after at most this long.
    #[arg(long, env = "RECORD_CACHE_TTL", default_value = "5m", value_parser = parse_duration)]
    pub record_cache_ttl: Duration,

    /// How long "not found" is remembered.
    ///
    /// Short, because a reference to a record being published right now should start resolving
    /// soon.
    #[arg(long, env = "RECORD_NEGATIVE_TTL", default_value = "60s", value_parser = parse_duration)]
    pub record_negative_ttl: Duration,
}

impl ResolverSettings {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        at_least_one("resolve_max_in_flight", self.resolve_max_in_flight)?;
        not_zero("resolve_queue_timeout", self.resolve_queue_timeout)?;
        if self.resolve_body_budget < self.resolve_body_limit.saturating_mul(2) {
            let message = format!(
                "must be at least twice {}: {} bytes",
                flag::<Self>("resolve_body_limit"),
                self.resolve_body_limit.saturating_mul(2)
            );
            return Err(Invalid::new("resolve_body_budget", message));
        }
        Ok(())
    }
}
