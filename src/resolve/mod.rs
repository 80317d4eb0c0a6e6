//! The record resolver (SPEC §4): replaces `did:` references in OIP records by the
//! records they name, with the indexer's results and hard bounds on what one request
//! and the process may cost.
//!
//! A resolution runs in two steps:
//! 1. **Look up, level by level.** Level 1 is every reference in the input records;
//!    level `n + 1` every reference in the records found at level `n`. Each DID is
//!    looked up once per request (a memo shared by sibling branches, so diamonds cost
//!    one lookup), first in the process-wide [`RecordCache`], then in the sources, in
//!    the indexer's order: every reference of the level, `did:gun:` ones included, in
//!    one Elasticsearch search (the indexer's GUN sync writes GUN records into its
//!    `records` index); then the `did:gun:` references Elasticsearch did not have
//!    through the 404-caching GUN client, concurrently up to `--resolve-concurrency`.
//!    A per-request budget caps the lookups and a per-request deadline the time they
//!    take; what is left over stays a DID.
//! 2. **Build** the output from the memo without I/O (see `walk`): copies of the
//!    looked-up records, paid for out of an output budget, with the indexer's cycle
//!    stubs and names-only rule. Looked-up records are shared, read-only, with the
//!    cache; nothing a request does is visible to another.
//!
//! The output budget (`--resolve-max-output-bytes`) counts memory, not JSON: the
//! input records' heap first (the route parses them within the same budget, see
//! [`bounded_parse`]), then every copy, name and stub as it is made, each at what it
//! takes on the heap (see [`memory`]).
//!
//! Looking up the DIDs a level at a time finds every DID the tree needs, each once: a
//! DID first met at level `n` gets its most generous remaining depth there, and a path
//! that meets a record twice (a cycle) has met it before at a shallower level.

pub mod bounded_parse;
pub(crate) mod cache;
pub(crate) mod elastic;
pub(crate) mod gun_source;
pub mod memory;
#[cfg(test)]
mod memory_source;
pub(crate) mod options;
pub(crate) mod recipe;
pub(crate) mod settings;
pub(crate) mod source;
pub(crate) mod stats;
mod walk;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

pub(crate) use cache::CachedRecord;
pub use cache::{FoundRecord, RecordCache};
pub(crate) use elastic::{ElasticAccess, ElasticHealth, ElasticSetupError, ElasticSource};
pub(crate) use gun_source::GunSource;
pub(crate) use options::OptionsError;
pub use options::{FieldFilter, ResolveOptions};
pub(crate) use source::{Fetched, RecordSource, SourceKind, Sources};
pub(crate) use stats::{RecordStats, ResolveStats, ResolverCounters};

use crate::gun::GunClient;
pub(crate) use settings::ResolverSettings;
use walk::{Builder, Lookup, Memo, Unresolved};

/// Resolved records and what it took to resolve them.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// The records, in input order, references replaced.
    pub records: Vec<Value>,
    /// The work done and the bounds met, for the whole request.
    pub stats: ResolveStats,
    /// What resolution did for each record, in the order of `records`.
    pub record_stats: Vec<RecordStats>,
}

/// Why a resolver could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ResolverSetupError {
    /// `--elasticsearch-host` is unusable.
    #[error(transparent)]
    Elastic(#[from] ElasticSetupError),
}

/// The resolver: sources, the bounded record cache, the bounds, and the counters.
/// One per process, shared by every request (`Arc<Resolver>` in the app state).
pub struct Resolver {
    sources: Sources,
    /// What `/readyz` and `/metrics` show of Elasticsearch, when it is configured.
    elastic: Option<ElasticView>,
    cache: RecordCache,
    counters: ResolverCounters,
    max_depth: u32,
    budget: u64,
    max_output_bytes: u64,
    timeout: Duration,
}

/// How Elasticsearch is reached and how it has answered, without its URL.
struct ElasticView {
    https: bool,
    credentials: bool,
    health: Arc<ElasticHealth>,
}

impl Resolver {
    /// A resolver with the sources the settings configure: every reference through
    /// Elasticsearch when `--elasticsearch-host` is set, and the `did:gun:` ones it
    /// does not have through `gun` (the process's one GUN client, with its negative
    /// cache) when there is one.
    pub fn new(
        settings: &ResolverSettings,
        gun: Option<Arc<GunClient>>,
    ) -> Result<Resolver, ResolverSetupError> {
        let elastic = match &settings.elasticsearch_host {
            Some(host) if !host.expose().trim().is_empty() => {
                Some(ElasticSource::with_access(&ElasticAccess {
                    host: host.expose().to_owned(),
                    timeout: settings.elasticsearch_timeout,
                    username: settings.elastic_username.clone(),
                    password: settings.elastic_password.clone(),
                    ca_file: settings.elastic_ca_file.clone(),
                })?)
            }
            _ => None,
        };
        let view = elastic.as_ref().map(|source| ElasticView {
            https: source.is_https(),
            credentials: source.has_credentials(),
            health: Arc::clone(source.health()),
        });
        let indexed = elastic.map(|source| Arc::new(source) as Arc<dyn RecordSource>);
        let gun = gun.map(|client| {
            Arc::new(GunSource::new(client, settings.resolve_concurrency)) as Arc<dyn RecordSource>
        });
        let mut resolver = Resolver::with_sources(settings, Sources { gun, indexed });
        resolver.elastic = view;
        Ok(resolver)
    }

    /// Elasticsearch's state for `/readyz`: whether it is configured, over TLS, with
    /// credentials, and how the last search went (`unknown`, `ok`, or the kind of its
    /// failure: `auth`, `tls`, `connect`, `timeout`, `status`, `response`). Never its
    /// URL or user. Reported, never failing readiness: media is served without it.
    pub fn elastic_status(&self) -> serde_json::Value {
        match &self.elastic {
            None => serde_json::json!({ "configured": false }),
            Some(view) => serde_json::json!({
                "configured": true,
                "https": view.https,
                "credentials": view.credentials,
                "state": view.health.state(),
            }),
        }
    }

    /// A resolver over the given sources (tests, or records from elsewhere), with the
    /// settings' bounds and cache.
    pub fn with_sources(settings: &ResolverSettings, sources: Sources) -> Resolver {
        Resolver {
            sources,
            elastic: None,
            cache: RecordCache::new(
                settings.record_cache_entries,
                settings.record_cache_bytes,
                settings.record_cache_ttl,
                settings.record_negative_ttl,
            ),
            counters: ResolverCounters::default(),
            max_depth: settings.resolve_max_depth,
            budget: u64::try_from(settings.resolve_budget).unwrap_or(u64::MAX),
            max_output_bytes: settings.resolve_max_output_bytes,
            timeout: settings.resolve_timeout,
        }
    }

    /// The process-wide record cache.
    pub fn cache(&self) -> &RecordCache {
        &self.cache
    }

    /// Totals over every resolution so far.
    pub fn counters(&self) -> &ResolverCounters {
        &self.counters
    }

    /// Registers the resolver's metrics: its counters, and the record cache's size read
    /// at scrape time (through a weak reference, so the registry keeps nothing alive).
    pub fn register(self: &Arc<Self>, registry: &mut prometheus_client::registry::Registry) {
        use crate::metrics::ReadAtScrape;
        self.counters.register(registry);
        // Registered whether or not Elasticsearch is configured, so dashboards and
        // alerts see the same series everywhere (all zero without it).
        match &self.elastic {
            Some(view) => view.health.register(registry),
            None => Arc::new(ElasticHealth::default()).register(registry),
        }
        let resolver = Arc::downgrade(self);
        registry.register(
            "resolve_cache_entries",
            "Records (and misses) in the resolver cache",
            ReadAtScrape::gauge(move || resolver.upgrade().map_or(0, |r| r.cache.entry_count())),
        );
        let resolver = Arc::downgrade(self);
        registry.register(
            "resolve_cache_weight_bytes",
            "Memory the resolver cache's entries take (records, keys, bookkeeping)",
            ReadAtScrape::gauge(move || resolver.upgrade().map_or(0, |r| r.cache.weighted_size())),
        );
    }

    /// Forgets what the cache knows about `did` (call after writing that record).
    pub async fn invalidate(&self, did: &str) {
        self.cache.invalidate(did).await;
    }

    /// Forgets everything the cache holds (after a time when writes through other
    /// replicas could not be heard).
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    /// Resolves `records` as `options` ask, within the configured bounds. Never fails:
    /// a reference that cannot be resolved, for whatever reason, stays its DID, and
    /// the stats say why.
    pub async fn resolve(&self, records: Vec<Value>, options: &ResolveOptions) -> Resolution {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let depth = options.depth.min(self.max_depth);
        let mut stats = ResolveStats {
            requested_depth: options.depth,
            depth,
            capped: options.depth > self.max_depth,
            ..ResolveStats::default()
        };
        let mut memo = Memo::new();
        let mut frontier = walk::new_references(&records, &options.fields, &memo);
        for level in 1..=depth {
            if frontier.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                stats.timed_out = true;
                memo.extend(
                    frontier
                        .into_iter()
                        .map(|did| (did, Lookup::Unresolved(Unresolved::Timeout))),
                );
                break;
            }
            let found = self
                .look_up_level(frontier, deadline, &mut memo, &mut stats)
                .await;
            frontier = if level < depth {
                let found_records = found.iter().filter_map(|did| match memo.get(did) {
                    Some(Lookup::Found(f)) => Some(&*f.record),
                    _ => None,
                });
                walk::new_references(found_records, &options.fields, &memo)
            } else {
                Vec::new()
            };
        }

        // Building copies up to the output budget is CPU work of tens of
        // milliseconds: done on the blocking pool, not on an async worker (the
        // resolve admission bounds how many run at once).
        let output_budget = self.max_output_bytes;
        let (fields, names_only, capped) =
            (options.fields.clone(), options.names_only, stats.capped);
        let build = move || {
            let shape = Shape {
                fields: &fields,
                names_only,
                depth,
                capped,
            };
            build(records, &memo, &shape, output_budget)
        };
        let built = match tokio::task::spawn_blocking(build).await {
            Ok(built) => built,
            Err(error) => match error.try_into_panic() {
                // A panic while building is a bug: let it unwind here, as it would
                // have had the build run inline.
                Ok(panic) => std::panic::resume_unwind(panic),
                // Cancelled: only when the runtime shuts down.
                Err(_) => Built::default(),
            },
        };
        stats.output_limit_reached = built.output_limit_reached;
        stats.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.counters.record(&stats);
        tracing::debug!(?stats, "resolved");
        Resolution {
            records: built.records,
            stats,
            record_stats: built.record_stats,
        }
    }

    /// Looks up one level's DIDs (none already in `memo`), within what is left of the
    /// budget, filling `memo`. Returns the DIDs found, in the order given.
    async fn look_up_level(
        &self,
        mut dids: Vec<String>,
        deadline: Instant,
        memo: &mut Memo,
        stats: &mut ResolveStats,
    ) -> Vec<String> {
        let left = usize::try_from(self.budget.saturating_sub(stats.lookups)).unwrap_or(usize::MAX);
        if dids.len() > left {
            for did in dids.drain(left..) {
                memo.insert(did, Lookup::Unresolved(Unresolved::Budget));
            }
            stats.budget_exhausted = true;
        }
        stats.lookups += dids.len() as u64;

        let mut asked = Vec::new();
        for did in &dids {
            match self.cache.get(did).await {
                Some(CachedRecord::Found(found)) => {
                    stats.cache_hits += 1;
                    memo.insert(did.clone(), Lookup::Found(found));
                }
                Some(CachedRecord::Missing) => {
                    stats.cache_hits += 1;
                    stats.not_found += 1;
                    memo.insert(did.clone(), Lookup::Unresolved(Unresolved::NotFound));
                }
                None => {
                    stats.misses += 1;
                    asked.push(did.clone());
                }
            }
        }

        // Taken before the sources are asked: what they answer is cached only if no
        // put invalidated anything meanwhile (`RecordCache::epoch`).
        let seen = self.cache.epoch();
        let answers = self.fetch_level(&asked, deadline, stats).await;
        if self.absorb(asked, answers, seen, memo, stats).await {
            // Keep the cache within its bounds now rather than at moka's next
            // housekeeping (see `RecordCache`).
            self.cache.run_pending_tasks().await;
        }
        dids.into_iter()
            .filter(|did| matches!(memo.get(did), Some(Lookup::Found(_))))
            .collect()
    }

    /// Asks the sources for `dids` (those of a level the cache could not answer), in
    /// the indexer's order: every DID, `did:gun:` ones included, in Elasticsearch's
    /// one batched search (the indexer's GUN sync writes GUN records into its `records`
    /// index, and it finds them there like any other DID); then the `did:gun:` DIDs
    /// Elasticsearch did not have (fresh records not yet synced, or no Elasticsearch
    /// configured) through the 404-caching GUN client. One answer per DID, in order;
    /// `None` where no configured source serves the DID.
    async fn fetch_level(
        &self,
        dids: &[String],
        deadline: Instant,
        stats: &mut ResolveStats,
    ) -> Vec<Option<Fetched>> {
        let mut answers: Vec<Option<Fetched>> = vec![None; dids.len()];
        if dids.is_empty() {
            return answers;
        }
        if let Some(indexed) = &self.sources.indexed {
            let batch = indexed.fetch(dids, deadline).await;
            stats.source_requests += batch.requests;
            for (slot, answer) in answers
                .iter_mut()
                .zip(one_per_did(dids.len(), batch.answers))
            {
                *slot = Some(answer);
            }
        }
        let Some(gun) = &self.sources.gun else {
            return answers;
        };
        let (positions, souls): (Vec<usize>, Vec<String>) = dids
            .iter()
            .enumerate()
            .filter(|(i, did)| {
                SourceKind::of(did) == SourceKind::Gun && asks_gun_after(answers[*i].as_ref())
            })
            .map(|(i, did)| (i, did.clone()))
            .unzip();
        if souls.is_empty() {
            return answers;
        }
        let batch = gun.fetch(&souls, deadline).await;
        stats.source_requests += batch.requests;
        for (i, answer) in positions
            .into_iter()
            .zip(one_per_did(souls.len(), batch.answers))
        {
            answers[i] = Some(after_gun(answers[i].take(), answer));
        }
        answers
    }

    /// Files the sources' answers in the memo and the cache; true if anything was
    /// cached.
    async fn absorb(
        &self,
        asked: Vec<String>,
        answers: Vec<Option<Fetched>>,
        seen: cache::Epoch,
        memo: &mut Memo,
        stats: &mut ResolveStats,
    ) -> bool {
        let mut inserted = false;
        for (did, answer) in asked.into_iter().zip(answers) {
            let Some(answer) = answer else {
                stats.unresolved_no_source += 1;
                memo.insert(did, Lookup::Unresolved(Unresolved::NoSource));
                continue;
            };
            match answer {
                Fetched::Found(record) => {
                    let found = FoundRecord::new(record);
                    self.cache
                        .insert_found(did.clone(), found.clone(), seen)
                        .await;
                    memo.insert(did, Lookup::Found(found));
                    inserted = true;
                }
                Fetched::Missing => {
                    stats.not_found += 1;
                    self.cache.insert_missing(did.clone(), seen).await;
                    memo.insert(did, Lookup::Unresolved(Unresolved::NotFound));
                    inserted = true;
                }
                Fetched::Failed(reason) => {
                    stats.source_errors += 1;
                    tracing::debug!(%did, %reason, "lookup failed");
                    memo.insert(did, Lookup::Unresolved(Unresolved::Failed));
                }
                Fetched::TimedOut => {
                    stats.timed_out = true;
                    memo.insert(did, Lookup::Unresolved(Unresolved::Timeout));
                }
            }
        }
        inserted
    }
}

/// How the output is built: the options, the depth used, and whether it was capped.
struct Shape<'a> {
    fields: &'a FieldFilter,
    names_only: bool,
    depth: u32,
    capped: bool,
}

/// The output of [`build`].
#[derive(Default)]
struct Built {
    records: Vec<Value>,
    record_stats: Vec<RecordStats>,
    output_limit_reached: bool,
}

/// Builds the output records from `memo`, the input records paid for first out of
/// `output_budget` (they are part of the answer), with what was done for each record
/// and whether the budget ran out.
fn build(records: Vec<Value>, memo: &Memo, shape: &Shape<'_>, output_budget: u64) -> Built {
    let input_bytes: u64 = records
        .iter()
        .map(|record| memory::value_bytes(record, memory::Sizing::AsHeld))
        .sum();
    let mut builder = Builder::new(
        memo,
        shape.fields,
        shape.names_only,
        output_budget.saturating_sub(input_bytes),
        shape.capped,
    );
    let (records, record_stats) = records
        .into_iter()
        .map(|record| builder.root(record, shape.depth))
        .unzip();
    Built {
        records,
        record_stats,
        output_limit_reached: builder.output_limit_reached(),
    }
}

/// A source's answers to `asked` DIDs, exactly one per DID. A source that answers
/// short is a bug there; its unanswered DIDs count as failures rather than as
/// "missing" (which would be cached).
fn one_per_did(asked: usize, answers: Vec<Fetched>) -> impl Iterator<Item = Fetched> {
    answers
        .into_iter()
        .chain(std::iter::repeat_with(|| {
            Fetched::Failed("source gave no answer".into())
        }))
        .take(asked)
}

/// Whether a `did:gun:` DID is asked of GUN after Elasticsearch's `answer` (`None`:
/// no Elasticsearch). Found: Elasticsearch wins. Timed out: the request's deadline has
/// passed, GUN could not answer either. Missing or failed: GUN may have it.
fn asks_gun_after(answer: Option<&Fetched>) -> bool {
    match answer {
        None | Some(Fetched::Missing) | Some(Fetched::Failed(_)) => true,
        Some(Fetched::Found(_)) | Some(Fetched::TimedOut) => false,
    }
}

/// One answer for a `did:gun:` DID from Elasticsearch's answer (if any) and GUN's.
/// GUN's answer stands, except that a miss at GUN after Elasticsearch failed is a
/// failure: Elasticsearch may have the record, so the miss must not be cached.
fn after_gun(indexed: Option<Fetched>, gun: Fetched) -> Fetched {
    match (indexed, gun) {
        (Some(failed @ Fetched::Failed(_)), Fetched::Missing) => failed,
        (_, gun) => gun,
    }
}

#[cfg(test)]
mod tests;
