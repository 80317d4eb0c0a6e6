//! Metrics plumbing shared by every component. Each component creates its own
//! prometheus-client counters once at start-up and registers them in the one
//! [`Registry`] (prefix `oip_media`) that `/metrics` encodes; nothing is copied or
//! re-rendered at scrape time, and the hot path only bumps atomics it already holds.
//!
//! Here: the two metric shapes the components share (`by_kind`, a fixed set of counters
//! under a `kind` label; `ReadAtScrape`, a value read when `/metrics` is scraped, for
//! gauges such as cache sizes and slots in use), the per-route response accounting
//! ([`HttpMetrics`]), process memory and descriptors, and the encoding. A leaf: it
//! imports nothing of the crate, so every component may register through it.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// A `u64` counter split into cache-line-padded shards, one picked per thread: workers
/// on different cores add to different lines, so a counter bumped on every request does
/// not bounce one line between them. Reading sums the shards, so the value stays exact
/// (each add lands in exactly one shard); only the scrape pays for the sum.
///
/// Used through `ShardedCounter` wherever the request path counts (responses, body
/// bytes, mapping-cache lookups). Shards: twice the available parallelism rounded up to
/// a power of two (at most 128), 128 bytes each (a pair of lines, which adjacent-line
/// prefetchers fetch together).
#[derive(Debug)]
pub struct Sharded {
    shards: Box<[CachePadded<AtomicU64>]>,
}

/// The count of shards a new [`Sharded`] gets, decided once per process.
fn shard_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        (cores * 2).next_power_of_two().min(128)
    })
}

/// This thread's shard number, before masking: threads are numbered in the order they
/// first count, so the first `shard_count()` threads (the runtime's workers, which count
/// first and most) each get their own shard.
fn thread_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SHARD.with(|shard| *shard)
}

impl Default for Sharded {
    fn default() -> Self {
        Sharded {
            shards: (0..shard_count())
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }
}

impl Sharded {
    /// Adds `v` to this thread's shard.
    pub fn add(&self, v: u64) {
        // `shards.len()` is a power of two.
        let shard = thread_shard() & (self.shards.len() - 1);
        self.shards[shard].fetch_add(v, Ordering::Relaxed);
    }

    /// The exact total of every add so far (adds racing with the read may or may not
    /// be in it, as with a single atomic).
    pub fn sum(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

impl prometheus_client::metrics::counter::Atomic<u64> for Sharded {
    /// Returns the shard's previous value, not the counter's: the total is known only
    /// by summing, and nothing reads the result.
    fn inc(&self) -> u64 {
        self.inc_by(1)
    }

    fn inc_by(&self, v: u64) -> u64 {
        let shard = thread_shard() & (self.shards.len() - 1);
        self.shards[shard].fetch_add(v, Ordering::Relaxed)
    }

    fn get(&self) -> u64 {
        self.sum()
    }
}

/// A prometheus-client counter over [`Sharded`]: registered, encoded and cloned like a
/// [`Counter`], but cheap to bump from every worker at once.
pub(crate) type ShardedCounter = Counter<u64, Sharded>;

/// The registry every component registers in, with the `oip_media` prefix.
pub fn registry() -> Registry {
    Registry::with_prefix("oip_media")
}

/// Encodes `registry`, then the standard unprefixed `process_*` metrics
/// (`standard_process_registry`), in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    use prometheus_client::encoding::text::{encode_eof, encode_registry};
    let mut out = String::with_capacity(16 * 1024);
    let encoded = encode_registry(&mut out, registry)
        .and_then(|()| encode_registry(&mut out, standard_process_registry()))
        .and_then(|()| encode_eof(&mut out));
    if encoded.is_err() {
        out.clear();
        let _ = writeln!(out, "# metrics encoding failed");
    }
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// Counters shown as one family with a `kind` label (`…_total{kind="hit"}`). The
/// component keeps the [`Counter`]s in its own fields and bumps them directly; this view
/// holds clones of the same atomics, so a scrape reads the live values.
#[derive(Debug)]
pub(crate) struct ByKind<A = AtomicU64>(Vec<(&'static str, Counter<u64, A>)>);

/// A [`ByKind`] view of `(kind, counter)` pairs, every kind shown even at zero.
pub(crate) fn by_kind<A, const N: usize>(
    kinds: [(&'static str, &Counter<u64, A>); N],
) -> ByKind<A> {
    ByKind(
        kinds
            .into_iter()
            .map(|(kind, counter)| (kind, counter.clone()))
            .collect(),
    )
}

impl<A> TypedMetric for ByKind<A> {
    const TYPE: MetricType = MetricType::Counter;
}

impl<A: prometheus_client::metrics::counter::Atomic<u64> + std::fmt::Debug> EncodeMetric
    for ByKind<A>
{
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (kind, counter) in &self.0 {
            let labels = KindLabel { kind };
            counter.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A gauge (or a counter kept elsewhere) whose value is read when `/metrics` is scraped:
/// slots in use, cache sizes, process memory. Nothing runs on the request path.
pub(crate) struct ReadAtScrape<F> {
    read: F,
    kind: MetricType,
}

impl<F: Fn() -> u64 + Send + Sync + 'static> ReadAtScrape<F> {
    /// A gauge reading `read()` at scrape time.
    pub fn gauge(read: F) -> Self {
        ReadAtScrape {
            read,
            kind: MetricType::Gauge,
        }
    }

    /// A counter reading `read()` at scrape time (for an atomic the hot path shares with
    /// a type that must not know about metrics, such as the response body).
    pub fn counter(read: F) -> Self {
        ReadAtScrape {
            read,
            kind: MetricType::Counter,
        }
    }
}

impl<F> std::fmt::Debug for ReadAtScrape<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAtScrape")
            .field("kind", &self.kind)
            .finish()
    }
}

impl<F: Fn() -> u64 + Send + Sync + 'static> EncodeMetric for ReadAtScrape<F> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let value = (self.read)();
        match self.kind {
            MetricType::Counter => encoder.encode_counter::<NoLabelSet, _, u64>(&value, None),
            _ => encoder.encode_gauge(&i64::try_from(value).unwrap_or(i64::MAX)),
        }
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    class: &'static str,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Responses by route family and status class, and body bytes handed to sockets
/// (`oip_media_http_responses_total{route,class}`, `oip_media_body_bytes_sent_total`).
///
/// The route families are the labels of the route table, given once at start-up; a
/// response is counted by index, so the hot path is an array lookup and one atomic add.
/// A series appears on its first response (as before: no zero lines for every pair).
///
/// Every counter here is [sharded](Sharded). `bytes_sent` is one per `HttpMetrics`
/// and lives as long as the process (leaked on purpose, a few hundred bytes per
/// server started): each response body holds a `&'static` to it rather than an `Arc`,
/// whose clone and drop per request would bounce the `Arc`'s count between workers.
#[derive(Debug)]
pub struct HttpMetrics {
    labels: &'static [&'static str],
    family: Family<RouteLabels, ShardedCounter>,
    cells: Vec<[OnceLock<ShardedCounter>; 5]>,
    /// Body bytes handed to hyper, shared with every response body.
    pub bytes_sent: &'static Sharded,
    /// Time to the response head, by route family.
    pub duration: std::sync::Arc<DurationHistogram>,
}

impl HttpMetrics {
    /// Accounting for the route families `labels` (indexed as the route table indexes
    /// them), registered in `registry`.
    pub fn new(labels: &'static [&'static str], registry: &mut Registry) -> HttpMetrics {
        let family = Family::<RouteLabels, ShardedCounter>::default();
        registry.register(
            "http_responses",
            "Responses by route family and status class",
            family.clone(),
        );
        let bytes_sent: &'static Sharded = Box::leak(Box::default());
        registry.register(
            "body_bytes_sent",
            "Response body bytes handed to sockets",
            ReadAtScrape::counter(|| bytes_sent.sum()),
        );
        let duration = std::sync::Arc::new(DurationHistogram::new(labels));
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's head to its response's head (admission wait included, body transfer not), by route family",
            DurationView(std::sync::Arc::clone(&duration)),
        );
        HttpMetrics {
            labels,
            family,
            cells: labels.iter().map(|_| Default::default()).collect(),
            bytes_sent,
            duration,
        }
    }

    fn class(status: http::StatusCode) -> usize {
        usize::from((status.as_u16() / 100).clamp(1, 5)) - 1
    }

    fn cell(&self, route: usize, class: usize) -> Option<&ShardedCounter> {
        let cell = self.cells.get(route)?.get(class)?;
        Some(cell.get_or_init(|| {
            let labels = RouteLabels {
                route: self.labels[route],
                class: CLASSES[class],
            };
            self.family.get_or_create(&labels).clone()
        }))
    }

    /// Counts one response of `status` on the route family with index `route`, whose
    /// head was ready `elapsed` after the request's.
    pub fn record(&self, route: usize, status: http::StatusCode, elapsed: std::time::Duration) {
        if let Some(counter) = self.cell(route, Self::class(status)) {
            counter.inc();
        }
        self.duration.observe(route, elapsed);
    }

    /// Responses of a route family (by index) and status class (`2` for 2xx …).
    pub fn responses(&self, route: usize, class: u16) -> u64 {
        let class = usize::from(class.clamp(1, 5)) - 1;
        self.cells
            .get(route)
            .and_then(|cells| cells[class].get())
            .map_or(0, ShardedCounter::get)
    }

    /// All responses so far.
    pub fn total(&self) -> u64 {
        self.cells
            .iter()
            .flatten()
            .filter_map(OnceLock::get)
            .map(ShardedCounter::get)
            .sum()
    }
}

/// Upper bounds (seconds) of the request-duration buckets: from a GIF answered from the
/// mapping cache (tens of µs) to a resolve that waits on Elasticsearch (seconds).
pub(crate) const DURATION_BUCKETS: [f64; 19] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// One shard of one route's histogram: a count per bucket (the last is `+Inf`) and the
/// sum of durations in nanoseconds.
#[derive(Debug, Default)]
struct HistogramShard {
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// `oip_media_http_request_duration_seconds{route}`: time from a request's head to its
/// response's head (handler, admission wait and all; not the body's transfer, which a
/// slow client sets), by route family.
///
/// Sharded as [`Sharded`] counters are, and for the same reason: prometheus-client's
/// `Histogram` takes a mutex per observation, which every worker would contend for on
/// every request. Here an observation is a bucket search over 19 bounds and two relaxed
/// adds on this thread's cache lines; the scrape sums the shards.
#[derive(Debug)]
pub struct DurationHistogram {
    labels: &'static [&'static str],
    /// Per route, per shard.
    shards: Box<[Box<[CachePadded<HistogramShard>]>]>,
    bounds_nanos: [u64; DURATION_BUCKETS.len()],
}

impl DurationHistogram {
    /// A histogram per route family in `labels` (indexed as the route table indexes them).
    pub fn new(labels: &'static [&'static str]) -> DurationHistogram {
        DurationHistogram {
            labels,
            shards: labels
                .iter()
                .map(|_| (0..shard_count()).map(|_| CachePadded::default()).collect())
                .collect(),
            bounds_nanos: DURATION_BUCKETS.map(|b| (b * 1e9).round() as u64),
        }
    }

    /// Records one request of route `route` that took `elapsed`.
    pub fn observe(&self, route: usize, elapsed: std::time::Duration) {
        let Some(shards) = self.shards.get(route) else {
            return;
        };
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self.bounds_nanos.partition_point(|&bound| bound < nanos);
        let shard = &shards[thread_shard() & (shards.len() - 1)];
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Route `route`'s count per bucket (not cumulative; the last is `+Inf`), total
    /// count and sum in seconds.
    fn snapshot(&self, route: usize) -> (Vec<(f64, u64)>, u64, f64) {
        let mut buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .map(|b| (b, 0))
            .collect();
        let mut sum_nanos = 0u64;
        for shard in self.shards.get(route).into_iter().flatten() {
            for (slot, count) in buckets.iter_mut().zip(&shard.buckets) {
                slot.1 += count.load(Ordering::Relaxed);
            }
            sum_nanos = sum_nanos.wrapping_add(shard.sum_nanos.load(Ordering::Relaxed));
        }
        let count = buckets.iter().map(|b| b.1).sum();
        (buckets, count, sum_nanos as f64 / 1e9)
    }

    /// Requests of route `route` recorded so far.
    pub fn count(&self, route: usize) -> u64 {
        self.snapshot(route).1
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

/// The registered view of a shared [`DurationHistogram`].
#[derive(Debug)]
struct DurationView(std::sync::Arc<DurationHistogram>);

impl TypedMetric for DurationView {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationView {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (route, label) in self.0.labels.iter().enumerate() {
            let (buckets, count, sum) = self.0.snapshot(route);
            encoder
                .encode_family(&RouteLabel { route: label })?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Resident memory of this process, split as the kernel reports it: anonymous memory
/// (heap, stacks: where a leak shows) and file-backed pages (our mapped GIFs: page cache,
/// reclaimable, not a leak).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ProcessMemory {
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
                    .saturating_mul(1024)
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

/// Kernel memory held by every TCP socket of the host (its network namespace), in
/// bytes: `/proc/net/sockstat`'s `TCP: … mem <pages>` times the page size; 0 where it
/// cannot be read. Not this process's alone (the kernel keeps no per-process figure),
/// but what send queues of clients that read nothing cost the host shows here: such a
/// queue is kernel memory, not RssAnon.
pub fn kernel_tcp_memory() -> u64 {
    std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|text| sockstat_tcp_pages(&text))
        .map_or(0, |pages| pages.saturating_mul(page_size()))
}

/// The `mem` field (pages) of the `TCP:` line of `/proc/net/sockstat`'s text.
pub(crate) fn sockstat_tcp_pages(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut fields = line.split_whitespace().skip(1);
    while let Some(name) = fields.next() {
        let value = fields.next()?;
        if name == "mem" {
            return value.parse().ok();
        }
    }
    None
}

/// The size of a memory page (the unit of sockstat's `mem`).
fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// Open file descriptors of this process (entries of `/proc/self/fd`).
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// Registers the process gauges (RssAnon, RssFile, open descriptors), read at scrape time.
pub(crate) fn register_process(registry: &mut Registry) {
    registry.register(
        "process_rss_anon_bytes",
        "Anonymous resident memory (heap, stacks): a leak shows here",
        ReadAtScrape::gauge(|| ProcessMemory::read().rss_anon),
    );
    registry.register(
        "process_rss_file_bytes",
        "File-backed resident memory (mapped media: page cache, reclaimable)",
        ReadAtScrape::gauge(|| ProcessMemory::read().rss_file),
    );
    registry.register(
        "process_open_fds",
        "Open file descriptors (sockets, and one per mapped file: cached or being sent)",
        ReadAtScrape::gauge(open_fds),
    );
    registry.register(
        "kernel_tcp_memory_bytes",
        "Kernel memory of all TCP sockets of the host (/proc/net/sockstat mem x page size): send queues of clients that read nothing show here, not in RssAnon",
        ReadAtScrape::gauge(kernel_tcp_memory),
    );
    registry.register(
        "process_fd_limit",
        "Soft RLIMIT_NOFILE in force (raised to the hard limit at start-up)",
        ReadAtScrape::gauge(fd_limit),
    );
}

/// CPU time, virtual size and start of this process from `/proc/self/stat` (and
/// `/proc/stat`'s boot time), for the standard `process_*` metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ProcessStat {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// Start time since the boot, in clock ticks.
    pub start_ticks: u64,
}

impl ProcessStat {
    /// Parses `/proc/<pid>/stat`'s text: the fields after the command's closing `)`
    /// (which may itself hold spaces and parentheses).
    pub fn parse(stat: &str, ticks_per_second: u64) -> Option<ProcessStat> {
        let after = &stat[stat.rfind(')')? + 1..];
        // Field 3 (state) is the first after `)`: utime is field 14, stime 15,
        // starttime 22, vsize 23.
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        let ticks = ticks_per_second.max(1) as f64;
        Some(ProcessStat {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            virtual_bytes: field(23)?,
            start_ticks: field(22)?,
        })
    }

    /// This process's, or zeros where `/proc` cannot be read.
    pub fn read() -> ProcessStat {
        std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|text| ProcessStat::parse(&text, ticks_per_second()))
            .unwrap_or_default()
    }
}

fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// The boot time (`btime` of `/proc/stat`), seconds since the epoch.
fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The process's start, seconds since the epoch: from `/proc` when it can be read,
/// else the first call's clock (registration happens at start-up).
pub(crate) fn process_start_time() -> f64 {
    static START: OnceLock<f64> = OnceLock::new();
    *START.get_or_init(|| {
        let ticks = ProcessStat::read().start_ticks;
        match boot_time() {
            Some(boot) if ticks > 0 => boot as f64 + ticks as f64 / ticks_per_second() as f64,
            _ => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    })
}

/// A gauge or counter of `f64` read at scrape time (seconds of CPU, a start time).
struct ReadF64<F> {
    read: F,
    kind: MetricType,
}

impl<F> std::fmt::Debug for ReadF64<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadF64").field("kind", &self.kind).finish()
    }
}

impl<F: Fn() -> f64 + Send + Sync + 'static> EncodeMetric for ReadF64<F> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let value = (self.read)();
        match self.kind {
            MetricType::Counter => encoder.encode_counter::<NoLabelSet, _, f64>(&value, None),
            _ => encoder.encode_gauge(&value),
        }
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

/// The standard process metrics every Prometheus client library exports, without the
/// service's prefix, so stock dashboards and alerts find them: `process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
/// `process_start_time_seconds`, `process_open_fds`, `process_max_fds`. All read from
/// `/proc` at scrape time. (The service's own `oip_media_process_rss_anon_bytes` and
/// `…_rss_file_bytes` split the resident set; `oip_media_process_open_fds` and
/// `…_fd_limit` stay for existing dashboards.)
pub(crate) fn standard_process_registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut registry = Registry::default();
        registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            ReadF64 {
                read: || ProcessStat::read().cpu_seconds,
                kind: MetricType::Counter,
            },
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes (RssAnon + RssFile + RssShmem)",
            ReadAtScrape::gauge(resident_bytes),
        );
        registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            ReadAtScrape::gauge(|| ProcessStat::read().virtual_bytes),
        );
        process_start_time();
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            ReadF64 {
                read: process_start_time,
                kind: MetricType::Gauge,
            },
        );
        registry.register(
            "process_open_fds",
            "Number of open file descriptors",
            ReadAtScrape::gauge(open_fds),
        );
        registry.register(
            "process_max_fds",
            "Maximum number of open file descriptors (the soft limit)",
            ReadAtScrape::gauge(fd_limit),
        );
        registry
    })
}

/// `VmRSS` of `/proc/self/status`, bytes; 0 where unavailable.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib.saturating_mul(1024))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

/// The commit this binary was built from (`git rev-parse --short HEAD` at build time,
/// by build.rs), or `unknown` when built outside a git checkout.
pub const COMMIT: &str = env!("OIP_MEDIA_COMMIT");

/// Registers `build_info{version,commit} 1` (a gauge, as Prometheus's own
/// `prometheus_build_info`: joins on it work in both exposition formats).
pub(crate) fn register_build_info(registry: &mut Registry) {
    let family = Family::<BuildLabels, prometheus_client::metrics::gauge::Gauge>::default();
    family
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            commit: COMMIT,
        })
        .set(1);
    registry.register(
        "build_info",
        "The version and commit of the running binary (always 1)",
        family,
    );
}

/// The soft open-file limit in force (`u64::MAX` when unlimited).
pub(crate) fn fd_limit() -> u64 {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit.current.unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn status_classes() {
        let mut registry = registry();
        let c = HttpMetrics::new(&["media", "other"], &mut registry);
        let ms = std::time::Duration::from_millis;
        c.record(0, http::StatusCode::OK, ms(0));
        c.record(0, http::StatusCode::PARTIAL_CONTENT, ms(3));
        c.record(0, http::StatusCode::NOT_MODIFIED, ms(3));
        c.record(1, http::StatusCode::NOT_FOUND, ms(2_000));
        c.record(0, http::StatusCode::SERVICE_UNAVAILABLE, ms(60_000));
        assert_eq!(c.responses(0, 2), 2);
        assert_eq!(c.responses(0, 3), 1);
        assert_eq!(c.responses(0, 5), 1);
        assert_eq!(c.responses(1, 4), 1);
        assert_eq!(c.total(), 5);
        let text = encode(&registry);
        assert!(
            text.contains("oip_media_http_responses_total{route=\"media\",class=\"2xx\"} 2"),
            "{text}"
        );
        assert!(
            !text.contains("class=\"1xx\""),
            "series appear on first use: {text}"
        );
        // Durations: cumulative buckets per route, `+Inf` holding the minute-long one.
        for (series, value) in [
            ("_bucket{le=\"0.000025\",route=\"media\"} ", "1"),
            ("_bucket{le=\"0.0025\",route=\"media\"} ", "1"),
            ("_bucket{le=\"0.005\",route=\"media\"} ", "3"),
            ("_bucket{le=\"30.0\",route=\"media\"} ", "3"),
            ("_bucket{le=\"+Inf\",route=\"media\"} ", "4"),
            ("_count{route=\"media\"} ", "4"),
            ("_sum{route=\"media\"} ", "60.006"),
            ("_bucket{le=\"1.0\",route=\"other\"} ", "0"),
            ("_bucket{le=\"2.5\",route=\"other\"} ", "1"),
        ] {
            let line = format!("oip_media_http_request_duration_seconds{series}{value}\n");
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert_eq!(c.duration.count(1), 1);
    }

    #[test]
    fn counters_by_kind_and_values_read_at_scrape() {
        let mut registry = registry();
        let (hit, miss) = (ShardedCounter::default(), ShardedCounter::default());
        registry.register(
            "lookups",
            "Lookups",
            by_kind([("hit", &hit), ("miss", &miss)]),
        );
        let shared = Arc::new(AtomicU64::new(0));
        let read = Arc::clone(&shared);
        registry.register(
            "size",
            "Size",
            ReadAtScrape::gauge(move || read.load(Ordering::Relaxed)),
        );
        hit.inc();
        hit.inc();
        shared.store(7, Ordering::Relaxed);
        let text = encode(&registry);
        assert!(
            text.contains("oip_media_lookups_total{kind=\"hit\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("oip_media_lookups_total{kind=\"miss\"} 0"),
            "{text}"
        );
        assert!(text.contains("oip_media_size 7"), "{text}");
    }

    #[test]
    fn sharded_counters_are_exact_across_threads() {
        let counter = ShardedCounter::default();
        let bytes = Sharded::default();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        counter.inc();
                        bytes.add(3);
                    }
                });
            }
        });
        assert_eq!(counter.get(), 80_000);
        assert_eq!(bytes.sum(), 240_000);
        assert!(bytes.shards.len().is_power_of_two());
    }

    #[test]
    fn process_stat_fields() {
        let stat = "1234 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 5000 123456789 300 18446744073709551615";
        let parsed = ProcessStat::parse(stat, 100).unwrap();
        assert_eq!(parsed.cpu_seconds, 3.0);
        assert_eq!(parsed.start_ticks, 5000);
        assert_eq!(parsed.virtual_bytes, 123_456_789);
        assert_eq!(ProcessStat::parse("1 (x) S 1", 100), None);
        let own = ProcessStat::read();
        assert!(own.virtual_bytes > 0 && own.start_ticks > 0);
        let start = process_start_time();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start} {now}"
        );
    }

    #[test]
    fn standard_process_metrics_and_build_info_are_encoded() {
        let mut registry = registry();
        register_build_info(&mut registry);
        let text = encode(&registry);
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_start_time_seconds ",
            "process_open_fds ",
            "process_max_fds ",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{name} in {text}"
            );
        }
        assert!(
            text.contains(&format!(
                "oip_media_build_info{{version=\"{}\",commit=\"{COMMIT}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
    }

    #[test]
    fn process_memory_is_read_on_linux() {
        let m = ProcessMemory::read();
        assert!(m.rss_anon > 0);
        assert!(open_fds() > 0);
    }

    #[test]
    fn kernel_tcp_memory_is_sockstat_pages_in_bytes() {
        let text =
            "sockets: used 182\nTCP: inuse 5 orphan 0 tw 2 alloc 9 mem 37\nUDP: inuse 1 mem 4\n";
        assert_eq!(sockstat_tcp_pages(text), Some(37));
        assert_eq!(sockstat_tcp_pages("TCP: inuse 5\n"), None);
        assert_eq!(sockstat_tcp_pages(""), None);
        // A listening socket exists, so the line is there; its value may be 0 pages.
        let _listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let text = std::fs::read_to_string("/proc/net/sockstat").unwrap();
        assert!(sockstat_tcp_pages(&text).is_some(), "{text}");
        assert_eq!(page_size().count_ones(), 1, "a power of two");
    }
}
