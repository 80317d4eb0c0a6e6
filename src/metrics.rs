//! Request accounting on the hot path (plain atomics), and the Prometheus text
//! rendering of every counter in the service at scrape time (`prometheus-client`).
//!
//! Counters live next to what they count (limiter, store, sockets, GUN client,
//! resolver); this module only adds per-route request counts and bytes sent, and reads
//! the rest when `/metrics` is scraped. A fresh registry per scrape costs microseconds
//! and keeps the hot path free of any registry lookup.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::app::AppState;

/// Route families, as metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteFamily {
    /// `/media/<project>/<file>`
    Media,
    /// `/api/media/…`
    ApiMedia,
    /// `/api/generate/media…`
    Generate,
    /// `/gun-relay/…`
    GunRelay,
    /// `/api/resolve`
    Resolve,
    /// `/healthz`, `/readyz`, `/metrics`
    Ops,
    /// Anything else (404s).
    Other,
}

impl RouteFamily {
    const ALL: [RouteFamily; 7] = [
        RouteFamily::Media,
        RouteFamily::ApiMedia,
        RouteFamily::Generate,
        RouteFamily::GunRelay,
        RouteFamily::Resolve,
        RouteFamily::Ops,
        RouteFamily::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteFamily::Media => "media",
            RouteFamily::ApiMedia => "api_media",
            RouteFamily::Generate => "generate",
            RouteFamily::GunRelay => "gun_relay",
            RouteFamily::Resolve => "resolve",
            RouteFamily::Ops => "ops",
            RouteFamily::Other => "other",
        }
    }
}

/// Responses by route family and status class, and bytes of bodies handed to sockets.
#[derive(Debug, Default)]
pub struct HttpCounters {
    responses: [[AtomicU64; 5]; 7],
    /// Body bytes handed to hyper (shared with every response body).
    pub bytes_sent: Arc<AtomicU64>,
}

impl HttpCounters {
    /// Counts one response of `status` on `route`.
    pub fn record(&self, route: RouteFamily, status: http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.responses[route as usize][class].fetch_add(1, Ordering::Relaxed);
    }

    /// Responses of a route family and status class (`2` for 2xx …).
    pub fn responses(&self, route: RouteFamily, class: u16) -> u64 {
        let class = class.clamp(1, 5) as usize - 1;
        self.responses[route as usize][class].load(Ordering::Relaxed)
    }

    /// All responses so far.
    pub fn total(&self) -> u64 {
        self.responses
            .iter()
            .flatten()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// Resident memory of this process, split as the kernel reports it: anonymous memory
/// (heap, stacks: where a leak shows) and file-backed pages (our mapped GIFs: page cache,
/// reclaimable, not a leak).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// `RssAnon`, bytes.
    pub rss_anon: u64,
    /// `RssFile`, bytes.
    pub rss_file: u64,
}

impl ProcessMemory {
    /// Reads `/proc/self/status`; zeros where it is unavailable.
    pub fn read() -> ProcessMemory {
        let mut memory = ProcessMemory::default();
        let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
            return memory;
        };
        for line in status.lines() {
            let kib = || {
                line.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    * 1024
            };
            if line.starts_with("RssAnon:") {
                memory.rss_anon = kib();
            } else if line.starts_with("RssFile:") {
                memory.rss_file = kib();
            }
        }
        memory
    }
}

/// Open file descriptors of this process (entries of `/proc/self/fd`).
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// Logs one line of traffic totals every `interval` until the returned task is aborted:
/// the replacement for the Node app's line per GIF.
pub fn spawn_summary(
    state: Arc<AppState>,
    interval: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let (mut last_requests, mut last_bytes) = (0u64, 0u64);
        loop {
            ticker.tick().await;
            let requests = state.http.total();
            let bytes = state.http.bytes_sent.load(Ordering::Relaxed);
            let lc = state.limiter.counters();
            let shed = lc.shed_queue_full.load(Ordering::Relaxed)
                + lc.shed_queue_timeout.load(Ordering::Relaxed);
            let memory = ProcessMemory::read();
            tracing::info!(
                requests = requests - last_requests,
                mib_sent = (bytes - last_bytes) / (1 << 20),
                in_flight = state.limiter.in_flight(),
                shed_total = shed,
                connections = state.connections.open.load(Ordering::Relaxed),
                mapped_files = state.store.cached_entries(),
                rss_anon_mib = memory.rss_anon >> 20,
                rss_file_mib = memory.rss_file >> 20,
                "traffic summary"
            );
            (last_requests, last_bytes) = (requests, bytes);
        }
    })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let g = Gauge::<i64>::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

fn kinds(registry: &mut Registry, name: &str, help: &str, values: &[(&'static str, u64)]) {
    let family = Family::<KindLabels, Counter>::default();
    for (kind, value) in values {
        family.get_or_create(&KindLabels { kind }).inc_by(*value);
    }
    registry.register(name, help, family);
}

/// Renders every counter of the service in the Prometheus/OpenMetrics text format.
pub fn render(state: &AppState) -> String {
    let mut r = Registry::with_prefix("oip_media");
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

    let responses = Family::<RouteLabels, Counter>::default();
    const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    for route in RouteFamily::ALL {
        for (i, class) in CLASSES.iter().enumerate() {
            let n = state.http.responses(route, i as u16 + 1);
            if n > 0 {
                responses
                    .get_or_create(&RouteLabels {
                        route: route.as_str(),
                        class,
                    })
                    .inc_by(n);
            }
        }
    }
    r.register(
        "http_responses",
        "Responses by route family and status class",
        responses,
    );
    counter(
        &mut r,
        "body_bytes_sent",
        "Response body bytes handed to sockets",
        load(&state.http.bytes_sent),
    );

    let limiter = &state.limiter;
    let lc = limiter.counters();
    gauge(
        &mut r,
        "media_in_flight",
        "Media bodies in flight (limiter permits held)",
        limiter.in_flight() as u64,
    );
    gauge(
        &mut r,
        "media_queue_waiting",
        "Media requests waiting for a limiter slot",
        limiter.waiting() as u64,
    );
    gauge(
        &mut r,
        "media_in_flight_limit",
        "Configured limit of media bodies in flight",
        limiter.settings().max_in_flight as u64,
    );
    kinds(
        &mut r,
        "media_admitted",
        "Media requests admitted, at once or after waiting",
        &[
            ("at_once", load(&lc.admitted_at_once)),
            ("after_wait", load(&lc.admitted_after_wait)),
        ],
    );
    kinds(
        &mut r,
        "media_shed",
        "Media requests shed with 503, by reason",
        &[
            ("queue_full", load(&lc.shed_queue_full)),
            ("queue_timeout", load(&lc.shed_queue_timeout)),
        ],
    );

    let store = &state.store;
    gauge(
        &mut r,
        "map_cache_entries",
        "Files mapped in the cache",
        store.cached_entries() as u64,
    );
    gauge(
        &mut r,
        "map_cache_weight_bytes",
        "Mapped bytes held by the cache (upper bound, see docs)",
        store.cached_weight(),
    );
    let sc = store.counters();
    kinds(
        &mut r,
        "map_cache_lookups",
        "Mapping cache lookups by result",
        &[
            ("hit", load(&sc.hits)),
            ("revalidated", load(&sc.revalidated)),
            ("mapped", load(&sc.maps)),
            ("replaced", load(&sc.replaced)),
            ("stale", load(&sc.stale)),
        ],
    );
    crate::fs_pool::register_metrics(&mut r, &state.fs);

    let cc = &state.connections;
    counter(
        &mut r,
        "connections_accepted",
        "Connections accepted",
        load(&cc.accepted),
    );
    gauge(
        &mut r,
        "connections_open",
        "Connections open now",
        load(&cc.open),
    );
    kinds(
        &mut r,
        "connection_timeouts",
        "Connections closed by a timeout, by kind",
        &[
            ("header_read", load(&cc.header_timeouts)),
            ("keep_alive", load(&cc.idle_timeouts)),
            ("write_stall", load(&cc.stall_timeouts)),
        ],
    );
    counter(
        &mut r,
        "connection_cap_reached",
        "Times the connection cap paused accepting",
        load(&cc.cap_reached),
    );
    let sends = &cc.sends;
    kinds(
        &mut r,
        "file_body_bytes",
        "Body bytes of mapped files sent, by how: sendfile (from the page cache) or copy (writev, short runs)",
        &[
            ("sendfile", load(&sends.sendfile_bytes)),
            ("copy", load(&sends.copied_file_bytes)),
        ],
    );
    counter(
        &mut r,
        "sendfile_calls",
        "sendfile(2) calls that sent bytes",
        load(&sends.sendfile_calls),
    );
    counter(
        &mut r,
        "short_file_sends",
        "Responses cut short (connection closed) because their file ended early: truncated while sent",
        load(&sends.short_file_sends),
    );

    let gc = state.gifs.counters();
    kinds(
        &mut r,
        "gif_work",
        "GIF decoding work: metadata parses and stills rendered",
        &[
            ("info_parsed", load(&gc.infos_parsed)),
            ("still_rendered", load(&gc.stills_rendered)),
        ],
    );

    if let Some(gun) = &state.gun {
        let g = gun.counters().snapshot();
        counter(
            &mut r,
            "gun_gets",
            "GUN record gets asked of the client",
            g.requests,
        );
        counter(&mut r, "gun_puts", "GUN puts asked of the client", g.puts);
        counter(
            &mut r,
            "gun_upstream_requests",
            "HTTP requests sent to the relay (every attempt)",
            g.upstream_requests,
        );
        kinds(
            &mut r,
            "gun_get_results",
            "GUN gets by result",
            &[
                ("found", g.found),
                ("missing", g.misses),
                ("negative_cache_hit", g.negative_cache_hits),
                ("coalesced", g.coalesced),
            ],
        );
        counter(
            &mut r,
            "gun_upstream_404s",
            "404 answers from the relay",
            g.upstream_404s,
        );
        counter(
            &mut r,
            "gun_retries",
            "Relay requests retried after an unavailable outcome",
            g.retries,
        );
        let e = &g.errors;
        kinds(
            &mut r,
            "gun_errors",
            "GUN calls that ended in an error, by kind",
            &[
                ("config", e.config),
                ("invalid_soul", e.invalid_soul),
                ("misconfigured", e.misconfigured),
                ("bad_request", e.bad_request),
                ("rejected", e.rejected),
                ("unavailable", e.unavailable),
                ("circuit_open", e.circuit_open),
                ("invalid_response", e.invalid_response),
                ("internal", e.internal),
            ],
        );
        let breaker = match g.breaker_state {
            crate::gun::BreakerState::Closed => 0,
            crate::gun::BreakerState::HalfOpen => 1,
            crate::gun::BreakerState::Open => 2,
        };
        gauge(
            &mut r,
            "gun_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
            breaker,
        );
        counter(
            &mut r,
            "gun_breaker_opens",
            "Times the breaker opened",
            g.breaker_opens,
        );
        gauge(
            &mut r,
            "gun_negative_cache_entries",
            "Souls cached as missing",
            gun.negative_cache_len(),
        );
    }

    let rs = state.resolver.counters().snapshot();
    counter(
        &mut r,
        "resolve_requests",
        "Resolutions run (one per /api/resolve request)",
        rs.resolutions,
    );
    kinds(
        &mut r,
        "resolve_lookups",
        "Reference lookups by result",
        &[
            ("cache_hit", rs.cache_hits),
            ("miss", rs.misses),
            ("not_found", rs.not_found),
            ("source_error", rs.source_errors),
            ("no_source", rs.unresolved_no_source),
        ],
    );
    counter(
        &mut r,
        "resolve_source_requests",
        "Requests sent to GUN and Elasticsearch by the resolver",
        rs.source_requests,
    );
    kinds(
        &mut r,
        "resolve_bounds_hit",
        "Resolutions cut short by a bound, by bound",
        &[
            ("budget", rs.budget_exhaustions),
            ("depth", rs.depth_caps),
            ("output", rs.output_limits),
            ("timeout", rs.timeouts),
        ],
    );
    let cache = state.resolver.cache();
    gauge(
        &mut r,
        "resolve_cache_entries",
        "Records (and misses) in the resolver cache",
        cache.entry_count(),
    );
    gauge(
        &mut r,
        "resolve_cache_weight_bytes",
        "Weighted size of the resolver cache",
        cache.weighted_size(),
    );

    let memory = ProcessMemory::read();
    gauge(
        &mut r,
        "process_rss_anon_bytes",
        "Anonymous resident memory (heap, stacks): a leak shows here",
        memory.rss_anon,
    );
    gauge(
        &mut r,
        "process_rss_file_bytes",
        "File-backed resident memory (mapped media: page cache, reclaimable)",
        memory.rss_file,
    );
    gauge(
        &mut r,
        "process_open_fds",
        "Open file descriptors (sockets, and one per mapped file: cached or being sent)",
        open_fds(),
    );
    if let Some(limit) = crate::server::fd_budget::limit() {
        gauge(
            &mut r,
            "process_fd_limit",
            "Soft RLIMIT_NOFILE in force (raised to the hard limit at start-up)",
            limit,
        );
    }

    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &r).is_err() {
        out.clear();
        let _ = writeln!(out, "# metrics encoding failed");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        let c = HttpCounters::default();
        c.record(RouteFamily::Media, http::StatusCode::OK);
        c.record(RouteFamily::Media, http::StatusCode::PARTIAL_CONTENT);
        c.record(RouteFamily::Media, http::StatusCode::NOT_MODIFIED);
        c.record(RouteFamily::Other, http::StatusCode::NOT_FOUND);
        c.record(RouteFamily::Media, http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(c.responses(RouteFamily::Media, 2), 2);
        assert_eq!(c.responses(RouteFamily::Media, 3), 1);
        assert_eq!(c.responses(RouteFamily::Media, 5), 1);
        assert_eq!(c.responses(RouteFamily::Other, 4), 1);
        assert_eq!(c.total(), 5);
    }

    #[test]
    fn process_memory_is_read_on_linux() {
        let m = ProcessMemory::read();
        assert!(m.rss_anon > 0);
        assert!(open_fds() > 0);
    }
}
