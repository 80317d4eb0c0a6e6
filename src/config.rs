//! The one configuration type: every setting is a CLI flag with an environment-variable
//! twin (the indexer's names where they mean the same thing, SPEC §5) and a documented
//! default, so `oip-media --help` is enough to run the service.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};

/// Parses a duration given in whole seconds or with a unit (`500ms`, `10s`, `2m`, `1h`).
///
/// Hand-written because it is a few lines and every duration flag shares it, and because
/// `humantime` would refuse the bare seconds (`30`) the documented settings accept.
/// Arithmetic is checked: a value too large for its unit is an error, not a wrap.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (digits, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{raw}` is not a duration (try 30s, 500ms, 5m)"))?;
    let secs_per = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => {
            return Err(format!(
                "`{raw}`: unknown unit `{unit}` (use ms, s, m or h)"
            ));
        }
    };
    n.checked_mul(secs_per)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{raw}` is too large"))
}

/// Parses a byte size: a plain number of bytes or one with a binary suffix (`64KiB`, `512MiB`, `2GiB`).
pub fn parse_bytes(raw: &str) -> Result<u64, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{raw}` is not a size (try 65536, 64KiB, 512MiB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "`{raw}`: unknown unit `{other}` (use KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{raw}` is too large"))
}

/// Longest `--revalidate-window` allowed: the README promises that a file renamed into
/// place is served within a second.
pub const MAX_REVALIDATE_WINDOW: Duration = Duration::from_secs(1);

/// The layout of the threads that serve connections (`--runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeLayout {
    /// One multi-thread tokio runtime with `--workers` workers and one listening socket.
    MultiThread,
    /// `--workers` threads, each a current-thread runtime accepting on its own
    /// `SO_REUSEPORT` socket.
    PerCore,
}

/// Whether the lean HTTP/1 lane answers bodiless `GET`/`HEAD` file requests before
/// hyper (`--fast-lane`, `src/server/lane/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FastLane {
    /// The lane takes the requests it can; hyper gets the connection for anything else.
    On,
    /// hyper serves every connection.
    Off,
}

/// Smallest `--max-request-head`: a browser's ordinary head with cookies fits in 8 KiB.
pub const MIN_REQUEST_HEAD: u64 = 8 * 1024;

/// Largest `--max-request-head`: past this a head costs more than a GIF.
pub const MAX_REQUEST_HEAD: u64 = 1024 * 1024;

/// Every setting of the service. Built by clap from flags and environment variables in
/// `main`, or by tests and benches with [`Config::for_media_dir`] and plain field updates.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "oip-media",
    version,
    about = "Media service for the OIP indexer: memory-mapped, zero-copy GIF serving and a 404-caching GUN relay companion."
)]
pub struct Config {
    // ---------------------------------------------------------------- listening
    /// Address to bind. Loopback by default: the service is meant to sit behind the
    /// indexer's proxy or a front proxy.
    #[arg(long, env = "BIND", default_value = "127.0.0.1")]
    pub bind: IpAddr,

    /// TCP port to listen on (0 picks a free port; the chosen one is logged).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Threads that serve connections (0 = one per available core): the multi-thread
    /// runtime's workers, or the cores of the per-core layout (`--runtime`).
    #[arg(long, env = "WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// How the serving threads are laid out. `multi-thread`: one tokio multi-thread
    /// runtime, one listening socket, connections moved between workers by work
    /// stealing. `per-core`: one current-thread runtime per worker, each accepting on
    /// its own `SO_REUSEPORT` socket, a connection served start to end by the thread
    /// that accepted it (the kernel spreads new connections by their address hash).
    /// The connection cap, the limiters, the filesystem threads, metrics and shutdown
    /// are shared by all workers in both. Keep `multi-thread` (the default) on small
    /// hosts, with few or uneven connections (a few heavy downloads, one slow
    /// filesystem): idle workers steal work from busy ones. Try `per-core` on a host
    /// with many cores serving many keep-alive connections that the kernel's hash
    /// spreads evenly, and keep it only if `cargo bench --bench load` shows less CPU
    /// per request there (BENCHMARKS.md, "Many cores", has the figures of 2 cores).
    #[arg(long, env = "RUNTIME", value_enum, default_value_t = RuntimeLayout::MultiThread)]
    pub runtime: RuntimeLayout,

    /// The lean HTTP/1 lane (`src/server/lane/`): bodiless `GET`/`HEAD` requests of the
    /// file routes are parsed with httparse and answered by the service's own head
    /// writer through the same admissions, stall rules, timeouts, CORS, request ids and
    /// counters as hyper's; a connection whose request the lane does not take (a body,
    /// `Expect`, `Upgrade`, any other route, anything unusual in the head) is handed to
    /// hyper with the bytes already read. Off by default: as built it costs ~4 % more
    /// instructions per GIF request than hyper (docs/benchmarks/fast-lane.md).
    #[arg(long, env = "FAST_LANE", value_enum, default_value_t = FastLane::Off)]
    pub fast_lane: FastLane,

    // ---------------------------------------------------------------- connections
    /// Most open client connections. Past it the service stops accepting and new
    /// connections wait in the kernel's backlog, so descriptors and per-connection memory
    /// stay bounded whatever arrives.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Kernel send buffer of each client socket (`SO_SNDBUF`); 0 leaves it to the kernel's
    /// autotuning. The kernel buffers up to a few MiB per connection on its own, which
    /// holds a whole GIF for a slow client (and counts against the container's memory in
    /// cgroup v2); a fixed size bounds that memory and keeps slow bodies visible to the
    /// limiter. 256KiB still fills a 40 Mbit/s link at 50 ms RTT.
    #[arg(long, env = "SEND_BUFFER", default_value = "0", value_parser = parse_bytes)]
    pub send_buffer: u64,

    /// Most bytes of one request head (request line and header lines). hyper buffers a head
    /// until it is complete, and its own ceiling is ~408 KiB per connection: 1,000
    /// connections trickling an unfinished head held 211 MiB. nginx allows 4 × 8 KiB by
    /// default; 64KiB leaves room for large cookies and tokens. Past it: `431`.
    #[arg(long, env = "MAX_REQUEST_HEAD", default_value = "64KiB", value_parser = parse_bytes)]
    pub max_request_head: u64,

    /// Time a client has to send a complete request head once it has sent its first byte.
    /// Defeats slowloris clients that trickle header bytes.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Time an idle keep-alive connection (nothing in flight, nothing sent) is kept open.
    /// Also closes connections that are opened and never used.
    #[arg(long, env = "KEEP_ALIVE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub keep_alive_timeout: Duration,

    /// A client that accepts no response bytes for this long is dropped and its limiter
    /// permit released. "Accepts" is measured as bytes its TCP stack acknowledged, not as
    /// writes that completed, so a client that keeps reading, however slowly, is never
    /// dropped, whatever the kernel's buffer sizes. A GIF of 2 MB over a 256 kbit/s phone
    /// link never stalls this long.
    #[arg(long, env = "WRITE_STALL_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub write_stall_timeout: Duration,

    /// A media body whose client has accepted no bytes for this long gives its
    /// `--max-in-flight` slot back and waits in the stalled pool (`--max-stalled`), so
    /// clients that never read cannot hold every slot; it takes a slot back when its
    /// client reads again. Shorter than `--queue-timeout`, so a request queued behind
    /// non-reading clients gets a slot before it is shed. A waiting send checks its
    /// progress four times per this interval (one `getsockopt` per check).
    #[arg(long, env = "STALLED_AFTER", default_value = "500ms", value_parser = parse_duration)]
    pub stalled_after: Duration,

    /// On SIGTERM/SIGINT, how long responses under way may take to finish before the
    /// process exits anyway.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    // ---------------------------------------------------------------- media limiter
    /// Media response bodies in flight at once. A body in flight costs a few hundred KB of
    /// kernel socket buffer and a couple of chunk references here (never a copy of the
    /// file), so the bound is about fairness and kernel memory: 512 GIFs in flight is
    /// several times the indexer's peak, and still far from the connection cap.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 512)]
    pub max_in_flight: usize,

    /// Media requests allowed to wait for a slot when all are taken; past it requests are
    /// shed at once with 503 and `Retry-After`.
    #[arg(long, env = "MAX_QUEUE", default_value_t = 512)]
    pub max_queue: usize,

    /// Longest a media request waits for a slot before it is shed with 503. Short on
    /// purpose: a browser retrying in a second does better than one waiting in a line.
    #[arg(long, env = "QUEUE_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub queue_timeout: Duration,

    /// Media bodies whose clients stopped reading (`--stalled-after`) that may wait out of
    /// the in-flight bound; when the pool is full, the one stalled longest is dropped
    /// (its connection closed). A stalled body costs its connection's kernel send buffer
    /// and at most one descriptor, no CPU, so the pool is several times `--max-in-flight`;
    /// 0 keeps stalled bodies in the in-flight bound until `--write-stall-timeout`.
    #[arg(long, env = "MAX_STALLED", default_value_t = 2048)]
    pub max_stalled: usize,

    // ---------------------------------------------------------------- request bodies
    /// Bytes of request bodies (`POST /gun-relay/put`, `POST /api/resolve`) buffered at
    /// once, across every connection. Each route bounds one body (`--gun-put-body-limit`,
    /// `--resolve-body-limit`); this bounds all of them together, which the connection
    /// cap alone would let reach gigabytes. A body takes its share before its first byte
    /// is read: its `Content-Length`, or twice its route's limit when chunked (pieces,
    /// then one joined copy), so the budget must hold twice the largest limit: 256 MiB
    /// is one chunked put at the 128 MiB put limit, or two declared ones (the indexer's
    /// axios declares its length). Resolve bodies take at most `--resolve-body-budget`
    /// (64 MiB) of it. Memory is only taken by bodies actually sent.
    #[arg(long, env = "REQUEST_BODY_BUDGET", default_value = "256MiB", value_parser = parse_bytes)]
    pub request_body_budget: u64,

    /// Bodies allowed to wait for room in the budget; past it 503 + `Retry-After` at once.
    #[arg(long, env = "REQUEST_BODY_QUEUE", default_value_t = 256)]
    pub request_body_queue: usize,

    /// Longest a body waits for room in the budget; then 503 + `Retry-After`.
    #[arg(long, env = "REQUEST_BODY_QUEUE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub request_body_queue_timeout: Duration,

    // ---------------------------------------------------------------- filesystem calls
    /// Threads that make every filesystem call of a request (open, stat, manifest and
    /// directory reads), so none runs on an async worker. On a local disk each call takes
    /// microseconds and a few threads keep up with any load; the bound matters when the
    /// filesystem hangs (a network mount, a FIFO): then at most this many calls are
    /// stuck, and the async workers, `/healthz` and cached files keep answering.
    #[arg(long, env = "FS_THREADS", default_value_t = 8)]
    pub fs_threads: usize,

    /// Filesystem calls allowed to wait for a thread; past it a request that needs one
    /// gets 503 + `Retry-After` at once. 1024 is `--max-in-flight` + `--max-queue` at
    /// their defaults, so on a healthy disk the media limiter sheds before this fills.
    #[arg(long, env = "FS_QUEUE", default_value_t = 1024)]
    pub fs_queue: usize,

    /// Longest a request waits for its filesystem call (queued and running); past it
    /// the request gets 503 + `Retry-After` (a cached file is served as it is, see
    /// `--revalidate-window`). A loaded local disk answers well within it; a call that
    /// takes longer means the filesystem is in trouble.
    #[arg(long, env = "FS_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub fs_timeout: Duration,

    /// How long a cached mapping (and a parsed manifest) is trusted without a `stat`,
    /// as nginx's `open_file_cache_valid`: within the window a cached file is served with
    /// no syscall at all; the first request after it `stat`s the path once (on the
    /// filesystem threads) and remaps it if it was replaced. A file renamed into place is
    /// therefore served at most one window later; a response never mixes two versions
    /// (it holds one mapping of one inode). When the filesystem does not answer within
    /// `--fs-timeout`, the cached mapping is served as it is. At most 1s; 0 stats on
    /// every request.
    #[arg(long, env = "REVALIDATE_WINDOW", default_value = "1s", value_parser = parse_duration)]
    pub revalidate_window: Duration,

    // ---------------------------------------------------------------- operation
    /// Origins allowed to read responses cross-origin (comma list). Entries are exact
    /// origins (`https://fitnessally.io`), subdomain wildcards (`https://*.fitnessally.io`)
    /// or whole schemes (`chrome-extension://*` for the browser extensions); a wildcard
    /// matches only a real origin (`scheme://host[:port]`: no path, query, fragment or
    /// userinfo), and a subdomain wildcard only on its own port (`…:8443` to name one).
    /// Other origins get normal responses without CORS headers, never an error. Empty
    /// turns CORS off.
    #[arg(
        long,
        env = "CORS_ORIGINS",
        default_value = "https://fitnessally.io,https://*.fitnessally.io,chrome-extension://*,moz-extension://*,safari-web-extension://*"
    )]
    pub cors_origins: String,

    /// Log format: `human` (default, for a terminal) or `json` (one object per line, for
    /// log shippers). The level comes from `RUST_LOG` (default `info`).
    #[arg(long, env = "LOG_FORMAT", default_value = "human", value_parser = ["human", "json"])]
    pub log_format: String,

    /// Interval of the one-line traffic summary in the log (instead of a line per GIF).
    #[arg(long, env = "SUMMARY_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub summary_interval: Duration,

    // ---------------------------------------------------------------- media roots
    /// The media root (the indexer's `data/media`): `/media/<project>/<file>` is served
    /// from its `web/` folder. Defaults to the bundled sample media.
    #[arg(long, env = "MEDIA_DIR", default_value = default_media_dir(), global = true)]
    pub media_dir: PathBuf,

    /// Largest file the service maps and serves; larger files answer 404 and are logged.
    /// 512 MiB is far above any GIF and keeps a hostile or corrupt file from pinning
    /// gigabytes of address space.
    #[arg(long, env = "MAX_FILE_SIZE", default_value = "512MiB", value_parser = parse_bytes)]
    pub max_file_size: u64,

    // ---------------------------------------------------------------- mapping cache
    /// Most mappings kept open in the cache. Each keeps its file open (the socket sends
    /// from it with `sendfile`), so this plus `--max-connections` and `--max-in-flight`
    /// must fit the open-file limit: start-up raises the soft limit to the hard one and,
    /// when they still do not fit, lowers every descriptor bound in proportion (one
    /// `error` line; `oip-media check` shows the plan).
    #[arg(long, env = "MAP_CACHE_ENTRIES", default_value_t = 16_384)]
    pub map_cache_entries: usize,

    /// Most bytes of files kept mapped by the cache (responses under way may keep an
    /// evicted mapping alive until they finish). Mapped pages are page cache, reclaimable
    /// by the kernel, so this bounds address space rather than memory.
    #[arg(long, env = "MAP_CACHE_BYTES", default_value = "8GiB", value_parser = parse_bytes)]
    pub map_cache_bytes: u64,

    /// Size of each chunk the response body hands to hyper. The body yields the next
    /// chunk only when the socket has taken the last, so this (times two, for hyper's
    /// queue) is what a slow reader pins: references into the mapping, never copies.
    #[arg(long, env = "BODY_CHUNK_SIZE", default_value = "256KiB", value_parser = parse_bytes)]
    pub body_chunk_size: u64,

    /// Shortest run of file bytes the socket sends with `sendfile(2)` (from the page
    /// cache, no copy); shorter runs are copied by the one `writev` that sends the head,
    /// which costs less than a second syscall for a small body. The default is the
    /// measured crossover (BENCHMARKS.md, "sendfile"). Set it above `--max-file-size` to
    /// never use `sendfile`.
    #[arg(long, env = "SENDFILE_MIN_BYTES", default_value = "16KiB", value_parser = parse_bytes)]
    pub sendfile_min_bytes: u64,

    // ---------------------------------------------------------------- other media routes
    /// Folder of generated audio (the indexer's `media/`: TTS output and `jfk/`, `rfk/`),
    /// served by `/api/generate/media` and `/api/media?id=`. Unset means
    /// `<MEDIA_DIR>/generated`. A missing folder does not stop start-up (those routes
    /// answer 404 until it appears): audio is a side feature, GIFs are not.
    #[arg(long, env = "GENERATED_MEDIA_DIR")]
    pub generated_media_dir: Option<PathBuf>,

    /// Secret of the tokens the indexer issues (HMAC: HS256, HS384 or HS512, checked as
    /// the indexer's jsonwebtoken checks them); private `/api/media` items are served only
    /// to their owner's token. Unset: private media is never served (401), and a warning
    /// says so at start-up. Never printed, not even by `--help`.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// Most `manifest.json` files kept parsed in memory. A manifest is about 1 KiB; each
    /// entry is also charged at least 1 KiB so the cache never holds more than this many
    /// KiB of manifest text.
    #[arg(long, env = "MANIFEST_CACHE_ENTRIES", default_value_t = 4096)]
    pub manifest_cache_entries: usize,

    /// Most GIF results kept in memory: metadata for `/info`, and the outcome of each
    /// still render (so a broken GIF is not decoded again on every request). Each is a
    /// few dozen bytes, and a result is kept per file version, so a page of ~100
    /// exercises never parses twice.
    #[arg(long, env = "GIF_INFO_CACHE_ENTRIES", default_value_t = 4096)]
    pub gif_info_cache_entries: usize,

    /// Most frames a GIF may have before `/info` refuses it with 422. Exercise GIFs have
    /// tens to a few hundred; the bound caps the CPU a hostile file can cost.
    #[arg(long, env = "GIF_MAX_FRAMES", default_value_t = 2000, global = true)]
    pub gif_max_frames: usize,

    /// Largest width or height (of the screen or any frame) of a GIF that is parsed or
    /// rendered; larger → 422. 4096 is far above any exercise GIF (180–720 px).
    #[arg(long, env = "GIF_MAX_DIMENSION", default_value_t = 4096, global = true)]
    pub gif_max_dimension: u32,

    /// Most pixels in one GIF frame (and in its screen) that is parsed or rendered;
    /// larger → 422. 4 Mpx is 16 MiB of RGBA per buffer; a render at the limit holds the
    /// frame, the screen, the resize's intermediate buffer and the PNG, about 70 MiB
    /// measured, so this times `--still-workers` bounds the memory stills can take.
    #[arg(long, env = "GIF_MAX_PIXELS", default_value_t = 4 * 1024 * 1024, global = true)]
    pub gif_max_pixels: u64,

    /// Widths a still may be asked for with `&w=`; any other → 400. A short list keeps
    /// the derived cache small and its hit rate high (one still per GIF and width).
    #[arg(
        long,
        env = "STILL_WIDTHS",
        default_value = "90,180,360",
        value_delimiter = ','
    )]
    pub still_widths: Vec<u32>,

    /// GIF decodes and PNG encodes running at once (each on a blocking thread). Two keep
    /// a burst of first-time stills from starving the GIF route of CPU on a small host.
    #[arg(long, env = "STILL_WORKERS", default_value_t = 2)]
    pub still_workers: usize,

    /// Decodes (still renders and `/info` parses) allowed to wait for one of the
    /// `--still-workers`; past it the request gets 503 + `Retry-After` at once. A render
    /// of an exercise GIF takes milliseconds, so 64 waiting is well under a second of
    /// work on two workers, and a flood of hostile GIFs cannot pile up behind them.
    #[arg(long, env = "STILL_WORKER_QUEUE", default_value_t = 64)]
    pub still_worker_queue: usize,

    /// Longest a decode waits for one of the `--still-workers`; then 503 +
    /// `Retry-After`. Generous (a first page of new stills is rendered in a burst), yet
    /// bounded: a request never waits on an unbounded line of renders.
    #[arg(long, env = "STILL_WORKER_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub still_worker_timeout: Duration,

    /// `?still=1` requests admitted at once, rendered or served from the derived folder
    /// (the admission slot is held until the still's bytes are sent). Stills have their
    /// own admission, never a GIF-serving slot (`--max-in-flight`), so waiting for a
    /// render never keeps a GIF from being served.
    #[arg(long, env = "STILL_MAX_IN_FLIGHT", default_value_t = 64)]
    pub still_max_in_flight: usize,

    /// `?still=1` requests allowed to wait for a slot; past it 503 + `Retry-After` at once.
    #[arg(long, env = "STILL_MAX_QUEUE", default_value_t = 128)]
    pub still_max_queue: usize,

    /// Longest a `?still=1` request waits for a slot; then 503 + `Retry-After`.
    #[arg(long, env = "STILL_QUEUE_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub still_queue_timeout: Duration,

    /// `/api/media/<id>/info` requests admitted at once. `/info` parses GIFs (on the
    /// `--still-workers`) and answers small JSON; its own admission keeps a flood of it
    /// off the GIF-serving slots.
    #[arg(long, env = "INFO_MAX_IN_FLIGHT", default_value_t = 32)]
    pub info_max_in_flight: usize,

    /// `/info` requests allowed to wait for a slot; past it 503 + `Retry-After` at once.
    #[arg(long, env = "INFO_MAX_QUEUE", default_value_t = 64)]
    pub info_max_queue: usize,

    /// Longest an `/info` request waits for a slot; then 503 + `Retry-After`.
    #[arg(long, env = "INFO_QUEUE_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub info_queue_timeout: Duration,

    /// Folder of derived files (stills, and the MP4/WebM/WebP variants of GIFs), written
    /// once and served like media. Created if missing, and made private (`0700`, files
    /// `0600`): derived files of private items must not be readable by other users, so
    /// start-up fails if the folder belongs to another user. Defaults to
    /// `oip-media-derived` in the system temp folder: everything in it can be regenerated.
    #[arg(long, env = "DERIVED_DIR", default_value_os_t = default_derived_dir(), global = true)]
    pub derived_dir: PathBuf,

    /// Most bytes of derived files kept, stills and variants together; past it the
    /// oldest are deleted. Per bundled exercise GIF, a still is 15–200 KiB (90–360 px)
    /// and the three variants together about 1.1× the GIF (MP4 ~0.2×, WebM ~0.25×,
    /// WebP ~0.75×), so 1 GiB holds every variant and still of about 2,000 GIFs of the
    /// production size mix (~370 KB mean). It is disk, not memory.
    #[arg(long, env = "DERIVED_MAX_BYTES", default_value = "1GiB", value_parser = parse_bytes, global = true)]
    pub derived_max_bytes: u64,

    // ---------------------------------------------------------------- variants
    /// MP4, WebM and WebP variants of GIFs (`?format=`), made by ffmpeg off the hot path.
    #[command(flatten)]
    pub transcode: TranscodeSettings,

    // ---------------------------------------------------------------- GUN relay
    /// The GUN relay client and the `/gun-relay/` endpoints.
    #[command(flatten)]
    pub gun: GunSettings,

    // ---------------------------------------------------------------- replicas
    /// Sharing cache invalidations between replicas through Redis (`src/replicas/`).
    #[command(flatten)]
    pub replicas: ReplicaSettings,

    // ---------------------------------------------------------------- record resolver
    /// Settings of the record resolver behind `POST /api/resolve`.
    #[command(flatten)]
    pub resolver: ResolverSettings,

    /// A one-off task instead of serving (no subcommand: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `oip-media` does instead of serving, when asked.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Pre-make the MP4/WebM/WebP variants of every GIF under a media tree.
    ///
    /// Shows a progress bar. Variants already made (same file version, same encoder) are skipped, so an
    /// interrupted run (Ctrl-C) can simply be run again. Uses the serve settings for the
    /// derived folder, ffmpeg and the limits (`--derived-dir`, `--ffmpeg`,
    /// `--mp4-encoder`, `--transcode-*`, `--gif-max-*`), given before or after
    /// `transcode`, or as environment variables.
    Transcode(TranscodeCommand),
    /// Check the settings against this host and exit: raises the open-file limit as
    /// serving would and prints the descriptor plan (which bounds fit, which would be
    /// lowered, and the limit that keeps them). Exit 0: everything fits; 1: bounds would
    /// be lowered; 2: the settings cannot start at all.
    Check,
}

/// Arguments of `oip-media transcode`.
#[derive(Debug, Clone, clap::Args)]
pub struct TranscodeCommand {
    /// Formats to make (comma list of mp4, webm, webp).
    #[arg(long, value_delimiter = ',', default_value = "mp4,webm,webp")]
    pub formats: Vec<crate::transcode::VariantFormat>,

    /// Media tree to walk (default: `MEDIA_DIR`). Every `*.gif` under it, and every
    /// `<mediaId>/original` that is a GIF, gets its variants; hidden folders are skipped.
    pub dir: Option<PathBuf>,

    /// Transcodes run at once (default: `--transcode-workers`).
    #[arg(long)]
    pub jobs: Option<usize>,
}

fn default_media_dir() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/media")
}

fn default_derived_dir() -> PathBuf {
    std::env::temp_dir().join("oip-media-derived")
}

/// A secret setting. Its `Debug` prints `<redacted>`, so `{:?}` of a [`Config`] (in a
/// log line or a panic message) never leaks it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one component that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Ok(Secret(raw.to_owned()))
    }
}

/// A URL setting that may carry credentials as user-info (`https://user:pass@host`, as
/// some deployments write `ELASTICSEARCHHOST`). Its `Debug` prints the URL without the
/// user-info, so the start-up "effective configuration" line never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct UrlSetting(String);

impl UrlSetting {
    /// The URL as configured, user-info included, for the one component that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without its user-info: what may be logged. A value that is not a URL
    /// with a host is shown only from its last `@` on.
    pub fn redacted(&self) -> String {
        match reqwest::Url::parse(self.0.trim()) {
            Ok(mut url) if url.has_host() => {
                let _ = url.set_username("");
                let _ = url.set_password(None);
                url.to_string()
            }
            _ => match self.0.rsplit_once('@') {
                Some((_, host)) => format!("<redacted>@{host}"),
                None => self.0.clone(),
            },
        }
    }
}

impl std::fmt::Debug for UrlSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl std::str::FromStr for UrlSetting {
    type Err = std::convert::Infallible;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Ok(UrlSetting(raw.to_owned()))
    }
}

impl From<String> for UrlSetting {
    fn from(raw: String) -> Self {
        UrlSetting(raw)
    }
}

impl From<&str> for UrlSetting {
    fn from(raw: &str) -> Self {
        UrlSetting(raw.to_owned())
    }
}

impl Config {
    /// The number of serving threads `--workers` asks for: its value, or one per core
    /// this process may run on (its CPU affinity and cgroup quota) when it is 0.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Listening sockets, each with its own accept loop: one for the multi-thread
    /// runtime, one per worker for the per-core layout.
    pub fn listeners(&self) -> usize {
        match self.runtime {
            RuntimeLayout::MultiThread => 1,
            RuntimeLayout::PerCore => self.worker_threads(),
        }
    }

    /// A configuration with every default, serving `media_dir`, listening on an
    /// ephemeral loopback port: what tests and benches start from. Its derived-file
    /// folder is `<media_dir>/.oip-media-derived` (hidden, so no route serves it as
    /// media) rather than the shared one in the temp folder, so two test servers never
    /// evict each other's stills. No JWT secret and no environment is read: every
    /// setting's env twin is switched off first, so a `PORT` or `MAX_IN_FLIGHT` in the
    /// environment of `cargo test` changes nothing. ffmpeg is off (variants answer 501)
    /// unless the test sets `transcode.ffmpeg`.
    pub fn for_media_dir(media_dir: impl Into<PathBuf>) -> Self {
        let matches = Self::without_env().get_matches_from(["oip-media"]);
        // The defaults are the ones `--help` documents, all valid for clap; a failure here
        // is a broken default, caught by the unit tests, never by a request.
        let mut config = Config::from_arg_matches(&matches).expect("the defaults parse");
        config.media_dir = media_dir.into();
        config.port = 0;
        config.bind = IpAddr::from([127, 0, 0, 1]);
        config.derived_dir = config.media_dir.join(".oip-media-derived");
        config.generated_media_dir = None;
        config.jwt_secret = None;
        // No ffmpeg discovery (two child processes) per test server: the tests of
        // variants set it (`transcode.ffmpeg = "ffmpeg"`).
        config.transcode.ffmpeg = String::new();
        config
    }

    /// The command line definition with every environment twin removed.
    fn without_env() -> clap::Command {
        Config::command().mut_args(|arg| arg.env(None::<&str>))
    }

    /// Settings that are valid but work against each other: logged as warnings at start.
    /// A normal request waits up to 1.25 × `--stalled-after` for non-readers' slots to be
    /// given back; past `--queue-timeout` it would get `503` behind them instead.
    pub fn advisories(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.max_stalled > 0 && self.stalled_after.mul_f64(1.25) >= self.queue_timeout {
            notes.push(format!(
                "--stalled-after ({:?}) × 1.25 is not below --queue-timeout ({:?}): requests \
                 waiting behind clients that stopped reading may get 503 before their slots \
                 move to the stalled pool",
                self.stalled_after, self.queue_timeout
            ));
        }
        notes
    }

    /// Checks values clap cannot: each error names the option to fix. Returns what it
    /// had to parse to check (the CORS allow-list), so nothing is parsed twice.
    pub fn validate(&self) -> Result<Checked, crate::StartError> {
        let invalid = |option: &'static str, message: &str| {
            Err(crate::StartError::InvalidSetting {
                option,
                message: message.to_owned(),
            })
        };
        if self.max_in_flight == 0 {
            return invalid("--max-in-flight/MAX_IN_FLIGHT", "must be at least 1");
        }
        if self.resolver.resolve_max_in_flight == 0 {
            return invalid(
                "--resolve-max-in-flight/RESOLVE_MAX_IN_FLIGHT",
                "must be at least 1",
            );
        }
        if self.max_connections == 0 {
            return invalid("--max-connections/MAX_CONNECTIONS", "must be at least 1");
        }
        if !(4096..=16 << 20).contains(&self.body_chunk_size) {
            return invalid(
                "--body-chunk-size/BODY_CHUNK_SIZE",
                "must be between 4KiB and 16MiB",
            );
        }
        if self.fs_threads == 0 {
            return invalid("--fs-threads/FS_THREADS", "must be at least 1");
        }
        let largest_body = self
            .resolver
            .resolve_body_limit
            .max(self.gun.gun_put_body_limit);
        if self.request_body_budget < largest_body.saturating_mul(2) {
            let message = format!(
                "must be at least twice the largest body limit (--resolve-body-limit, \
                 --gun-put-body-limit): {} bytes",
                largest_body.saturating_mul(2)
            );
            return invalid("--request-body-budget/REQUEST_BODY_BUDGET", &message);
        }
        if self.resolver.resolve_body_budget < self.resolver.resolve_body_limit.saturating_mul(2) {
            let message = format!(
                "must be at least twice --resolve-body-limit: {} bytes",
                self.resolver.resolve_body_limit.saturating_mul(2)
            );
            return invalid("--resolve-body-budget/RESOLVE_BODY_BUDGET", &message);
        }
        if self.request_body_budget / crate::http::request_body::BUDGET_UNIT > u64::from(u32::MAX) {
            return invalid(
                "--request-body-budget/REQUEST_BODY_BUDGET",
                "must be under 4 TiB",
            );
        }
        for (option, value) in [
            ("--still-workers/STILL_WORKERS", self.still_workers),
            (
                "--still-max-in-flight/STILL_MAX_IN_FLIGHT",
                self.still_max_in_flight,
            ),
            (
                "--info-max-in-flight/INFO_MAX_IN_FLIGHT",
                self.info_max_in_flight,
            ),
            (
                "--gun-put-max-in-flight/GUN_PUT_MAX_IN_FLIGHT",
                self.gun.gun_put_max_in_flight,
            ),
            (
                "--gun-get-max-in-flight/GUN_GET_MAX_IN_FLIGHT",
                self.gun.gun_get_max_in_flight,
            ),
        ] {
            if value == 0 {
                return invalid(option, "must be at least 1");
            }
        }
        if self.revalidate_window > MAX_REVALIDATE_WINDOW {
            return invalid(
                "--revalidate-window/REVALIDATE_WINDOW",
                "must be at most 1s (a replaced file must be noticed within a second)",
            );
        }
        if !(MIN_REQUEST_HEAD..=MAX_REQUEST_HEAD).contains(&self.max_request_head) {
            return invalid(
                "--max-request-head/MAX_REQUEST_HEAD",
                "must be between 8KiB and 1MiB",
            );
        }
        if self.map_cache_entries == 0 || self.map_cache_bytes == 0 {
            return invalid(
                "--map-cache-entries/--map-cache-bytes",
                "must be at least 1",
            );
        }
        for (option, value) in [
            (
                "--header-read-timeout/HEADER_READ_TIMEOUT",
                self.header_read_timeout,
            ),
            (
                "--keep-alive-timeout/KEEP_ALIVE_TIMEOUT",
                self.keep_alive_timeout,
            ),
            (
                "--write-stall-timeout/WRITE_STALL_TIMEOUT",
                self.write_stall_timeout,
            ),
            ("--stalled-after/STALLED_AFTER", self.stalled_after),
            ("--queue-timeout/QUEUE_TIMEOUT", self.queue_timeout),
            (
                "--resolve-queue-timeout/RESOLVE_QUEUE_TIMEOUT",
                self.resolver.resolve_queue_timeout,
            ),
            ("--fs-timeout/FS_TIMEOUT", self.fs_timeout),
            (
                "--still-worker-timeout/STILL_WORKER_TIMEOUT",
                self.still_worker_timeout,
            ),
            (
                "--still-queue-timeout/STILL_QUEUE_TIMEOUT",
                self.still_queue_timeout,
            ),
            (
                "--info-queue-timeout/INFO_QUEUE_TIMEOUT",
                self.info_queue_timeout,
            ),
            (
                "--gun-put-queue-timeout/GUN_PUT_QUEUE_TIMEOUT",
                self.gun.gun_put_queue_timeout,
            ),
            (
                "--gun-get-queue-timeout/GUN_GET_QUEUE_TIMEOUT",
                self.gun.gun_get_queue_timeout,
            ),
            (
                "--request-body-queue-timeout/REQUEST_BODY_QUEUE_TIMEOUT",
                self.request_body_queue_timeout,
            ),
            ("--summary-interval/SUMMARY_INTERVAL", self.summary_interval),
            ("--redis-timeout/REDIS_TIMEOUT", self.replicas.redis_timeout),
            (
                "--redis-reconnect-base/REDIS_RECONNECT_BASE",
                self.replicas.redis_reconnect_base,
            ),
        ] {
            if value.is_zero() {
                return invalid(option, "must be greater than zero");
            }
        }
        let replicas = &self.replicas;
        if replicas.redis_reconnect_max < replicas.redis_reconnect_base {
            return invalid(
                "--redis-reconnect-max/REDIS_RECONNECT_MAX",
                "must be at least --redis-reconnect-base",
            );
        }
        if replicas.redis_publish_queue == 0 {
            return invalid(
                "--redis-publish-queue/REDIS_PUBLISH_QUEUE",
                "must be at least 1",
            );
        }
        if replicas.redis_channel.is_empty() {
            return invalid("--redis-channel/REDIS_CHANNEL", "must not be empty");
        }
        let t = &self.transcode;
        for (option, value) in [
            ("--transcode-workers/TRANSCODE_WORKERS", t.transcode_workers),
            ("--transcode-threads/TRANSCODE_THREADS", t.transcode_threads),
        ] {
            if value == 0 {
                return invalid(option, "must be at least 1");
            }
        }
        for (option, value) in [
            ("--transcode-timeout/TRANSCODE_TIMEOUT", t.transcode_timeout),
            ("--transcode-wait/TRANSCODE_WAIT", t.transcode_wait),
        ] {
            if value.is_zero() {
                return invalid(option, "must be greater than zero");
            }
        }
        let cors = match crate::cors::CorsPolicy::parse(&self.cors_origins) {
            Ok(cors) => cors,
            Err(message) => return invalid("--cors-origins/CORS_ORIGINS", &message),
        };
        if let Some(bad) = self
            .still_widths
            .iter()
            .find(|w| **w == 0 || **w > self.gif_max_dimension)
        {
            let message = format!(
                "width {bad} is not between 1 and --gif-max-dimension ({})",
                self.gif_max_dimension
            );
            return invalid("--still-widths/STILL_WIDTHS", &message);
        }
        Ok(Checked { cors })
    }

    /// The folder `/media/<project>/<file>` is served from.
    pub fn web_root(&self) -> PathBuf {
        self.media_dir.join("web")
    }

    /// The folder generated audio is served from (see `--generated-media-dir`).
    pub fn generated_root(&self) -> PathBuf {
        self.generated_media_dir
            .clone()
            .unwrap_or_else(|| self.media_dir.join("generated"))
    }
}

/// What [`Config::validate`] parsed while checking, handed on so it is parsed once.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The CORS allow-list of `--cors-origins`.
    pub cors: crate::cors::CorsPolicy,
}

/// Settings of the GUN relay client (`src/gun/`) and of the relay-compatible
/// `/gun-relay/get` and `/gun-relay/put` endpoints (SPEC §3).
#[derive(Debug, Clone, clap::Args)]
pub struct GunSettings {
    /// Base URL of the GUN relay, as the indexer sets it: a comma list of which only the
    /// first entry is used (e.g. `http://gun-relay:8765`); a trailing slash is tolerated.
    /// Unset: the `/gun-relay/` endpoints answer 503 `{"error":"GUN relay not configured"}`.
    #[arg(long = "gun-peers", env = "GUN_PEERS")]
    pub gun_peers: Option<String>,

    /// Requests per call, first one included, when the relay is unavailable (timeout,
    /// connection error, 5xx). 3 rides out a relay restart without multiplying load; a 404 or
    /// another 4xx is never retried, whatever this says.
    #[arg(long, env = "GUN_ATTEMPTS", default_value_t = 3)]
    pub gun_attempts: u32,

    /// Time one request to the relay may take, body included. The relay answers a miss only
    /// after waiting ~3 s for its peers, so this must stay well above 3 s.
    #[arg(long, env = "GUN_ATTEMPT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub gun_attempt_timeout: Duration,

    /// Time one call (every attempt and backoff together) may take before it fails as
    /// unavailable. The indexer's client could spend ~40 s on one record. 8 s leaves room for
    /// a slow miss (~3 s) and a retry, and stays under the indexer's own 10 s request
    /// timeout, so through `/gun-relay/` it gets our answer (at worst a JSON 504) rather than
    /// timing out and retrying on its side.
    #[arg(long, env = "GUN_DEADLINE", default_value = "8s", value_parser = parse_duration)]
    pub gun_deadline: Duration,

    /// First backoff before a retry; it doubles on each further retry and is jittered
    /// (half fixed, half random) so that callers who failed together do not retry together.
    #[arg(long, env = "GUN_BACKOFF_BASE", default_value = "100ms", value_parser = parse_duration)]
    pub gun_backoff_base: Duration,

    /// How long a soul the relay reported missing is answered as missing without asking
    /// again. 1 h, as the indexer's cache meant to; checked on every read, so an entry is
    /// never served past it. A put through this service forgets the soul at once.
    #[arg(long, env = "GUN_NEGATIVE_CACHE_TTL", default_value = "1h", value_parser = parse_duration)]
    pub gun_negative_cache_ttl: Duration,

    /// With `REDIS_URL` set but Redis unreachable, how long a cached miss is trusted
    /// instead of `--gun-negative-cache-ttl`: a put through another replica cannot reach
    /// this one then, so a soul it stored shows here after at most this long. 5s is above
    /// the ~3 s the relay itself takes to answer a miss, so a hot missing soul still costs
    /// the relay at most one get per 5 s per replica (concurrent gets share one), while a
    /// record published during an outage is seen within seconds. Without `REDIS_URL`
    /// there is no one to hear from, and `--gun-negative-cache-ttl` applies.
    #[arg(long, env = "GUN_MISS_TTL_WITHOUT_REDIS", default_value = "5s", value_parser = parse_duration)]
    pub gun_miss_ttl_without_redis: Duration,

    /// Most souls kept in the negative cache (TinyLFU admission, LRU eviction). 10,000 souls
    /// of ~80 bytes each is under a few MiB, and matches the indexer's bound.
    #[arg(long, env = "GUN_NEGATIVE_CACHE_CAPACITY", default_value_t = 10_000)]
    pub gun_negative_cache_capacity: u64,

    /// Consecutive "unavailable" outcomes (each attempt counts, retries included) that open
    /// the circuit breaker, after which calls fail fast until the cool-down ends (0 disables
    /// the breaker). 5 is past what one
    /// relay restart causes at a low request rate, yet stops a dead relay from costing every
    /// caller a full deadline.
    #[arg(long, env = "GUN_BREAKER_THRESHOLD", default_value_t = 5)]
    pub gun_breaker_threshold: u32,

    /// How long an open breaker fails calls fast before it lets one probe request through.
    #[arg(long, env = "GUN_BREAKER_COOLDOWN", default_value = "10s", value_parser = parse_duration)]
    pub gun_breaker_cooldown: Duration,

    /// Most requests in flight to the relay at once, and most idle keep-alive connections
    /// kept for reuse. Requests past it wait for a slot (within their deadline), so a burst
    /// cannot open thousands of sockets; 32 is well above what one Node relay serves in
    /// parallel.
    #[arg(long, env = "GUN_POOL_SIZE", default_value_t = 32)]
    pub gun_pool_size: usize,

    /// Largest request body `POST /gun-relay/put` accepts (413 past it): every record the
    /// indexer can publish. Its own JSON limit is 50 MB; `putRecord` stores `data` as a
    /// JSON string inside the put's JSON, which escapes every `"` and `\` again (at
    /// most 2×: 100 MB), and an encrypted record's `data` is that string encrypted and
    /// base64-encoded (4/3 of it: at most 133.4 MB = 127.2 MiB). 128 MiB holds both. A
    /// body is buffered only once its bytes arrive, each within `--request-body-budget`.
    #[arg(long, env = "GUN_PUT_BODY_LIMIT", default_value = "128MiB", value_parser = parse_bytes)]
    pub gun_put_body_limit: u64,

    /// Time a client has to send the whole body of `POST /gun-relay/put` (408 past it), so
    /// a slow sender holds a connection and its buffer for a bounded time.
    #[arg(long, env = "GUN_PUT_BODY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub gun_put_body_timeout: Duration,

    /// `POST /gun-relay/put` requests admitted at once, from the first body byte to the
    /// relay's answer; half of `--gun-pool-size`, so puts never take every relay
    /// connection from gets. Their buffered bodies together stay within
    /// `--request-body-budget` (a put past it waits, then gets 503), plus one copy of
    /// each record on its way to the relay.
    #[arg(long, env = "GUN_PUT_MAX_IN_FLIGHT", default_value_t = 16)]
    pub gun_put_max_in_flight: usize,

    /// Puts allowed to wait for a slot; past it 503 + `Retry-After` at once.
    #[arg(long, env = "GUN_PUT_MAX_QUEUE", default_value_t = 64)]
    pub gun_put_max_queue: usize,

    /// Longest a put waits for a slot; then 503 + `Retry-After`. A put holds its slot for
    /// at most the body timeout plus `--gun-deadline`, so a short wait is the fair one.
    #[arg(long, env = "GUN_PUT_QUEUE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub gun_put_queue_timeout: Duration,

    /// `GET /gun-relay/get` requests admitted at once, from the request to its answer. A
    /// get is answered from the miss cache in microseconds or waits on the relay (a miss
    /// takes it ~3 s) for one of `--gun-pool-size` connections, within `--gun-deadline`:
    /// this bounds how many such waits there are. 256 is eight gets per relay connection.
    #[arg(long, env = "GUN_GET_MAX_IN_FLIGHT", default_value_t = 256)]
    pub gun_get_max_in_flight: usize,

    /// Gets allowed to wait for a slot; past it 503 + `Retry-After` at once.
    #[arg(long, env = "GUN_GET_MAX_QUEUE", default_value_t = 1024)]
    pub gun_get_max_queue: usize,

    /// Longest a get waits for a slot; then 503 + `Retry-After`.
    #[arg(long, env = "GUN_GET_QUEUE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub gun_get_queue_timeout: Duration,

    /// Largest response body read from the relay; a larger answer is an error, not a record.
    /// Bounds what one answer can make us buffer; records are KiB, not MiB.
    #[arg(long, env = "GUN_RESPONSE_LIMIT", default_value = "8MiB", value_parser = parse_bytes)]
    pub gun_response_limit: u64,

    /// Interval of the client's summary log line (requests, misses, cache hits, errors,
    /// breaker state; 0 = never). A summary per interval instead of a line per request keeps
    /// logs readable at hundreds of lookups per second; intervals without calls log nothing.
    #[arg(long, env = "GUN_SUMMARY_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub gun_summary_interval: Duration,
}

/// Settings of cache invalidation shared between replicas (`src/replicas/`): with
/// `REDIS_URL` set, a put through any replica removes the soul from every replica's GUN
/// miss cache and record cache, through Redis pub/sub.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplicaSettings {
    /// Redis that replicas share invalidations through (`redis://[:password@]host:port[/db]`
    /// or `redis+unix:///path/to/socket`). Unset: this replica's caches are its own, and a
    /// put through another replica shows here only when the cached miss expires
    /// (`--gun-negative-cache-ttl`, `--record-negative-ttl`, `--record-cache-ttl`). The
    /// password is never logged.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<RedisUrl>,

    /// Pub/sub channel of the invalidations; replicas of one deployment must share it,
    /// deployments sharing one Redis must not.
    #[arg(long, env = "REDIS_CHANNEL", default_value = "oip-media:invalidate")]
    pub redis_channel: String,

    /// Time to connect to Redis, and for one publish or health-check ping to be answered;
    /// past it the connection counts as lost.
    #[arg(long, env = "REDIS_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// First wait before reconnecting to Redis; it doubles on each failed try up to
    /// `--redis-reconnect-max`, half fixed and half random, so replicas that lost Redis
    /// together do not reconnect together.
    #[arg(long, env = "REDIS_RECONNECT_BASE", default_value = "250ms", value_parser = parse_duration)]
    pub redis_reconnect_base: Duration,

    /// Longest wait between two reconnection tries.
    #[arg(long, env = "REDIS_RECONNECT_MAX", default_value = "10s", value_parser = parse_duration)]
    pub redis_reconnect_max: Duration,

    /// Invalidations waiting to be published. A put never waits for Redis: its soul is
    /// queued, and dropped (and counted) when the queue is full. 4096 souls cover the
    /// puts of a Redis outage of minutes at the indexer's rates; they are published once
    /// Redis is back.
    #[arg(long, env = "REDIS_PUBLISH_QUEUE", default_value_t = 4096)]
    pub redis_publish_queue: usize,
}

/// A Redis URL whose password never shows: `Debug` and `Display` print it with the
/// password replaced by `***`, so the effective configuration and connection errors can
/// be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(Secret);

impl RedisUrl {
    /// The URL itself, password included, for the Redis client only.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The URL with its password (and a `pass=`/`password=` query value) replaced by
    /// `***`; a URL that does not parse is not shown at all.
    pub fn redacted(&self) -> String {
        let Ok(mut url) = reqwest::Url::parse(self.expose()) else {
            return "<unparsable URL, not shown>".to_owned();
        };
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(key, value)| {
                    let hidden = matches!(key.as_ref(), "pass" | "password");
                    let value = if hidden {
                        "***".into()
                    } else {
                        value.into_owned()
                    };
                    (key.into_owned(), value)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::str::FromStr for RedisUrl {
    type Err = std::convert::Infallible;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Ok(RedisUrl(Secret::new(raw.trim())))
    }
}

/// Settings of the transcoder (`src/transcode/`): which ffmpeg and encoders, and the
/// bounds on the work and the waiting that variants may cause. Global, so `oip-media
/// transcode` takes them after its name too.
#[derive(Debug, Clone, clap::Args)]
pub struct TranscodeSettings {
    /// The ffmpeg program (a path, or a name looked up on `PATH`). ffmpeg is optional:
    /// when it cannot be run (or this is empty), the service runs as without variants,
    /// logs a warning, answers `?format=` with 501 and says so in `/readyz`.
    #[arg(long, env = "FFMPEG", default_value = "ffmpeg", global = true)]
    pub ffmpeg: String,

    /// H.264 encoder of MP4 variants: `libx264` (CPU), or `h264_nvenc` (an NVIDIA GPU).
    /// `h264_nvenc` is used only when ffmpeg lists it and a one-frame test encode works at
    /// start-up (ffmpeg lists it even on hosts without a GPU); otherwise the service logs
    /// why and uses `libx264`.
    #[arg(long, env = "MP4_ENCODER", default_value = "libx264", value_parser = ["libx264", "h264_nvenc"], global = true)]
    pub mp4_encoder: String,

    /// Constant-quality level of MP4 variants (x264 CRF, NVENC CQ): lower is better and
    /// larger. 28 gives 0.12–0.3× the GIF's bytes on the exercise GIFs; see BENCHMARKS.md
    /// for the size/quality trade-off measured on the corpus.
    #[arg(long, env = "MP4_CRF", default_value_t = 28, value_parser = clap::value_parser!(u8).range(0..=51), global = true)]
    pub mp4_crf: u8,

    /// ffmpeg processes running at once. Each is one CPU-heavy process (one GPU session
    /// with `h264_nvenc`); one keeps transcoding from competing with GIF serving for more
    /// than `--transcode-threads` cores.
    #[arg(long, env = "TRANSCODE_WORKERS", default_value_t = 1, global = true)]
    pub transcode_workers: usize,

    /// Threads of each ffmpeg process (`-threads`). 2 halves the wait for a first
    /// request on a small host; CPU time per variant hardly changes.
    #[arg(long, env = "TRANSCODE_THREADS", default_value_t = 2, global = true)]
    pub transcode_threads: usize,

    /// Transcodes allowed to wait for a worker; a request that would start one more gets
    /// 503 + `Retry-After`. 64 × ~1 s of encoding is about what a page of exercises asks
    /// for the first time.
    #[arg(long, env = "TRANSCODE_QUEUE", default_value_t = 64, global = true)]
    pub transcode_queue: usize,

    /// Longest one ffmpeg run may take; then the process is killed and the failure
    /// remembered (422). A 720 px exercise GIF takes about a second.
    #[arg(long, env = "TRANSCODE_TIMEOUT", default_value = "60s", value_parser = parse_duration, global = true)]
    pub transcode_timeout: Duration,

    /// Longest a variant request waits for its transcode (holding no GIF-serving slot);
    /// then 503 + `Retry-After` while the transcode goes on for the next request.
    #[arg(long, env = "TRANSCODE_WAIT", default_value = "15s", value_parser = parse_duration, global = true)]
    pub transcode_wait: Duration,

    /// Variant requests waiting for transcodes at once; more get 503 + `Retry-After`
    /// at once. Each costs a connection and a few hundred bytes.
    #[arg(
        long,
        env = "TRANSCODE_MAX_WAITING",
        default_value_t = 256,
        global = true
    )]
    pub transcode_max_waiting: usize,

    /// How long a failed transcode (ffmpeg error, timeout, a GIF over the limits) is
    /// answered 422 without trying again.
    #[arg(long, env = "TRANSCODE_FAILURE_TTL", default_value = "10m", value_parser = parse_duration, global = true)]
    pub transcode_failure_ttl: Duration,

    /// Content negotiation for plain `<img>` GIF requests: when `Accept` lists
    /// `image/webp` and the WebP variant exists, send it instead (with `Vary: Accept`);
    /// when it does not exist yet, queue it and send the GIF at once. Off by default:
    /// every GIF response then carries `Vary: Accept`, which splits shared caches by
    /// `Accept` header and disables some CDNs' caching; the WebP is ~0.75× the GIF's
    /// bytes; and a response's type changes under one URL, which `<a download>` links
    /// and tools that trust the `.gif` extension may not expect.
    #[arg(long, env = "AUTO_FORMAT", global = true)]
    pub auto_format: bool,
}

/// Settings of the record resolver (SPEC §4): where referenced records come from, and
/// the hard bounds on the work one request may cause and the memory the process-wide
/// record cache may hold.
#[derive(Debug, Clone, clap::Args)]
pub struct ResolverSettings {
    /// The indexer's Elasticsearch URL (`http://host:9200`, or `https://` as
    /// Elasticsearch 8 serves by default). Every reference is looked up there first,
    /// `did:gun:` ones included (the indexer's GUN sync indexes GUN records); only
    /// `did:gun:` ones it lacks then go to the GUN relay. Without it, references other
    /// than `did:gun:` stay unresolved and responses count them in
    /// `unresolvedNoSource`. User-info in the URL (`https://user:pass@host:9200`) is
    /// taken as the credentials when `ELASTICCLIENTUSERNAME` is not set, and is never
    /// logged.
    #[arg(long, env = "ELASTICSEARCHHOST")]
    pub elasticsearch_host: Option<UrlSetting>,

    /// User of HTTP basic auth to Elasticsearch: the indexer's variable, which its
    /// client always sends. Unset (and no user-info in the URL): no credentials.
    #[arg(long, env = "ELASTICCLIENTUSERNAME")]
    pub elastic_username: Option<String>,

    /// Password of HTTP basic auth to Elasticsearch (the indexer's variable). Prefer
    /// the environment variable to the flag, which other users of the host can see in
    /// the process list. Never logged.
    #[arg(long, env = "ELASTICCLIENTPASSWORD", hide_env_values = true)]
    pub elastic_password: Option<Secret>,

    /// PEM file of CA certificates trusted for an `https://` Elasticsearch, besides
    /// the system's roots: Elasticsearch 8's `config/certs/http_ca.crt`. Read at
    /// start-up; a file that cannot be read or holds no certificate stops the start.
    #[arg(long, env = "ELASTIC_CA_FILE")]
    pub elastic_ca_file: Option<PathBuf>,

    /// Time one Elasticsearch search may take before its references are left
    /// unresolved (default 10s). A level's whole batch is one query, so this bounds
    /// how long one level can wait on Elasticsearch.
    #[arg(long, env = "ELASTICSEARCH_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub elasticsearch_timeout: Duration,

    /// Deepest resolution a request gets, whatever `resolveDepth` it asks for (default
    /// 4). Each level can multiply the work by the fan-out of the records, so the depth
    /// a caller may ask for must be bounded. Responses say `capped: true` when it applied.
    #[arg(long, env = "RESOLVE_MAX_DEPTH", default_value_t = 4)]
    pub resolve_max_depth: u32,

    /// Most distinct references one request may look up, cached or not (default 2500).
    /// Past it, remaining references stay DIDs, the response says
    /// `budgetExhausted: true` and each record cut short says `"budget"` in its
    /// `recordStats[i].boundsHit`. Counting cache hits too keeps a response the same
    /// whatever the cache holds. Per request, i.e. per page: a page of 100 workouts of
    /// 6 exercises each with 2 references of their own needs at most 100 × (6 + 12) =
    /// 1,800 lookups at depth 2, however little the page shares. The records looked up
    /// are held until the answer is built: at ~8 KiB each, 2,500 is ~20 MiB.
    #[arg(long, env = "RESOLVE_BUDGET", default_value_t = 2500)]
    pub resolve_budget: usize,

    /// Most bytes of memory the records of one answer may take (default 32MiB):
    /// the input records as they are parsed, then every copy, name and stub that
    /// resolution puts into them, each counted at its heap size as it is built (not
    /// its JSON length: real records take ~3.5 times their JSON on the heap, tiny ones
    /// up to 40 times). A body whose records alone would
    /// take more is refused with 413 while it is parsed; past it during resolution,
    /// remaining references stay DIDs and the response says `outputLimitReached: true`.
    /// Sized from the real workload, workout pages resolved to depth 4 (workout → 12
    /// exercises → their demo-GIF collections and equipment → images): one workout
    /// takes under 1 MiB, a listing of 16 about 13 MiB (3.8 MB of JSON); 32MiB holds
    /// that listing twice, and `--resolve-max-in-flight` answers of this size stay
    /// well inside the service's memory target. A batched page of 100 workouts at
    /// depth 2 (6 exercises each, each exercise with its GIF and equipment records)
    /// takes 4.4 MiB (tests/resolve_admission.rs); with 12 exercises of twice the
    /// size, about 18 MiB.
    #[arg(long, env = "RESOLVE_MAX_OUTPUT_BYTES", default_value = "32MiB", value_parser = parse_bytes)]
    pub resolve_max_output_bytes: u64,

    /// Resolutions running at once (default 4). Each may hold up to
    /// `--resolve-max-output-bytes` of records plus its serialized answer until the
    /// answer is sent, so this times that bounds the resolver's memory under any load.
    /// A resolution mostly waits on Elasticsearch; 4 at a time serve tens of pages a
    /// second.
    #[arg(long, env = "RESOLVE_MAX_IN_FLIGHT", default_value_t = 4)]
    pub resolve_max_in_flight: usize,

    /// Resolve requests allowed to wait for a slot (default 64); more get 503 with
    /// `Retry-After` at once. One request is one admission however many records it
    /// carries, so the indexer's 20 concurrent pages (one batched request each), its
    /// internal pollers and a second indexer fit with room to spare. A waiting request
    /// holds only its body, which the process-wide `--request-body-budget` bounds,
    /// so a longer queue costs no more memory.
    #[arg(long, env = "RESOLVE_MAX_QUEUE", default_value_t = 64)]
    pub resolve_max_queue: usize,

    /// Longest a resolve request waits for a slot before it gets 503 with
    /// `Retry-After` (default 10s). A page of 100 records at depth 2 resolves in tens
    /// to a few hundred milliseconds, so 20 pages queued behind 4 slots wait about a
    /// second; 10 s rides out a slow Elasticsearch without shedding a page the
    /// indexer would otherwise serve unresolved, and stays under the companion's
    /// request timeout.
    #[arg(long, env = "RESOLVE_QUEUE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub resolve_queue_timeout: Duration,

    /// Time one resolution may spend looking records up (default 20s). The relay
    /// answers a miss only after ~3 s, and a GUN call may take up to `--gun-deadline`;
    /// without this, a level of a thousand slow misses could keep a caller waiting for
    /// minutes. What is not looked up in time stays a DID and the response says
    /// `timedOut: true`.
    #[arg(long, env = "RESOLVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub resolve_timeout: Duration,

    /// Lookups of one resolution level that run at the same time (default 16). Enough
    /// to hide the GUN relay's latency without queueing hundreds of requests on it.
    #[arg(long, env = "RESOLVE_CONCURRENCY", default_value_t = 16)]
    pub resolve_concurrency: usize,

    /// Largest `POST /api/resolve` body accepted (default 8MiB); larger bodies get 413.
    /// A page of the indexer's records is well under a megabyte.
    #[arg(long, env = "RESOLVE_BODY_LIMIT", default_value = "8MiB", value_parser = parse_bytes)]
    pub resolve_body_limit: u64,

    /// Bytes of `POST /api/resolve` bodies buffered at once (default 64MiB), a share
    /// of `--request-body-budget` that resolve bodies cannot exceed: they are read
    /// before a resolve slot is taken (so a slow sender holds none), and this keeps
    /// them, and the resolutions they lead to, where they were when the budget was
    /// theirs alone, however large the budget is made for GUN puts. Charged like the
    /// budget (the `Content-Length`, or twice `--resolve-body-limit` when chunked);
    /// past it a body waits `--request-body-queue-timeout`, then gets 503. Must hold
    /// twice `--resolve-body-limit`.
    #[arg(long, env = "RESOLVE_BODY_BUDGET", default_value = "64MiB", value_parser = parse_bytes)]
    pub resolve_body_budget: u64,

    /// Time a client has to send the whole `POST /api/resolve` body (default 30s), so a
    /// client trickling bytes cannot hold a buffer forever.
    #[arg(long, env = "RESOLVE_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub resolve_body_timeout: Duration,

    /// Most records kept in the process-wide record cache (default 7500, the cap the
    /// indexer settled on after its unbounded array reached 15,000 records).
    #[arg(long, env = "RECORD_CACHE_ENTRIES", default_value_t = 7500)]
    pub record_cache_entries: u64,

    /// Most bytes of memory the record cache holds (default 64MiB): each entry weighs
    /// its record's heap size, its key and the cache's bookkeeping, not its JSON
    /// length. A real record takes ~8 KiB this way, so the default holds about as many
    /// as the entry bound. Whichever bound is reached first applies. The cache stays
    /// full after a burst, so this is memory the process keeps.
    #[arg(long, env = "RECORD_CACHE_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub record_cache_bytes: u64,

    /// How long a found record is served from the cache (default 5m). Records are
    /// mostly immutable; an edit shows after at most this long.
    #[arg(long, env = "RECORD_CACHE_TTL", default_value = "5m", value_parser = parse_duration)]
    pub record_cache_ttl: Duration,

    /// How long "not found" is remembered (default 60s). Short, because a reference to
    /// a record being published right now should start resolving soon.
    #[arg(long, env = "RECORD_NEGATIVE_TTL", default_value = "60s", value_parser = parse_duration)]
    pub record_negative_ttl: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(
            parse_duration("18446744073709551615h").is_err(),
            "too large for its unit: an error, not a wrapped value"
        );
    }

    #[test]
    fn the_test_config_reads_no_environment() {
        assert!(
            Config::without_env()
                .get_arguments()
                .all(|arg| arg.get_env().is_none()),
            "every env twin is off"
        );
        assert!(
            Config::command()
                .get_arguments()
                .any(|arg| arg.get_env().is_some()),
            "while the service itself reads them"
        );
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_bytes("64KiB"), Ok(65_536));
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("99999999999999999999GiB").is_err());
    }

    #[test]
    fn resolver_defaults_are_the_documented_ones() {
        let r = Config::for_media_dir("/tmp/x").resolver;
        assert_eq!(r.elasticsearch_timeout, Duration::from_secs(10));
        assert_eq!(r.resolve_max_depth, 4);
        assert_eq!(r.resolve_budget, 2500);
        assert_eq!(r.resolve_max_output_bytes, 32 << 20);
        assert_eq!(r.resolve_max_in_flight, 4);
        assert_eq!(r.resolve_max_queue, 64);
        assert_eq!(r.resolve_queue_timeout, Duration::from_secs(10));
        // Pages, not records, are admitted: the indexer's 20 concurrent pages and its
        // pollers fit several times over.
        assert!(r.resolve_max_in_flight + r.resolve_max_queue >= 3 * 20);
        assert_eq!(r.resolve_timeout, Duration::from_secs(20));
        assert_eq!(r.resolve_concurrency, 16);
        assert_eq!(r.resolve_body_limit, 8 << 20);
        assert_eq!(r.resolve_body_budget, 64 << 20);
        assert_eq!(r.resolve_body_timeout, Duration::from_secs(30));
        assert_eq!(r.record_cache_entries, 7500);
        assert_eq!(r.record_cache_bytes, 64 << 20);
        assert_eq!(r.record_cache_ttl, Duration::from_secs(300));
        assert_eq!(r.record_negative_ttl, Duration::from_secs(60));
        let c = Config::parse_from([
            "oip-media",
            "--elasticsearch-host",
            "http://es:9200",
            "--resolve-max-depth",
            "2",
        ]);
        assert_eq!(
            c.resolver
                .elasticsearch_host
                .as_ref()
                .map(UrlSetting::expose),
            Some("http://es:9200")
        );
        assert_eq!(c.resolver.resolve_max_depth, 2);
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::for_media_dir("/tmp/x");
        assert_eq!(c.web_root(), PathBuf::from("/tmp/x/web"));
        assert_eq!(c.port, 0);
        assert!(c.validate().is_ok());
        assert_eq!(c.generated_root(), PathBuf::from("/tmp/x/generated"));
        assert_eq!(c.derived_dir, PathBuf::from("/tmp/x/.oip-media-derived"));
        assert_eq!(c.still_widths, vec![90, 180, 360]);
    }

    #[test]
    fn invalid_values_name_their_option() {
        let mut c = Config::for_media_dir("/tmp/x");
        c.max_in_flight = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--max-in-flight")
        );
        let mut c = Config::for_media_dir("/tmp/x");
        c.cors_origins = "fitnessally.io".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--cors-origins")
        );
        let mut c = Config::for_media_dir("/tmp/x");
        c.body_chunk_size = 10;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--body-chunk-size")
        );
        assert!(Config::try_parse_from(["oip-media", "--port", "http"]).is_err());
        assert!(Config::try_parse_from(["oip-media", "--queue-timeout", "soon"]).is_err());
    }

    #[test]
    fn stall_and_queue_timeouts_that_work_against_each_other_are_reported() {
        let c = Config::for_media_dir("/tmp/x");
        assert!(c.advisories().is_empty(), "{:?}", c.advisories());
        let c = Config::parse_from(["oip-media", "--stalled-after", "900ms"]);
        let notes = c.advisories();
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("--stalled-after"), "{notes:?}");
        let c = Config::parse_from([
            "oip-media",
            "--stalled-after",
            "900ms",
            "--max-stalled",
            "0",
        ]);
        assert!(c.advisories().is_empty(), "no pool, nothing to wait for");
    }

    #[test]
    fn stall_settings_have_their_documented_defaults() {
        let c = Config::for_media_dir("/tmp/x");
        assert_eq!(c.write_stall_timeout, Duration::from_secs(20));
        assert_eq!(c.stalled_after, Duration::from_millis(500));
        assert_eq!(c.max_stalled, 2048);
        assert!(c.stalled_after < c.queue_timeout);
        let c = Config::parse_from(["oip-media", "--stalled-after", "2s", "--max-stalled", "0"]);
        assert_eq!(c.stalled_after, Duration::from_secs(2));
        assert_eq!(c.max_stalled, 0);
        let mut c = Config::for_media_dir("/tmp/x");
        c.stalled_after = Duration::ZERO;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--stalled-after")
        );
    }

    #[test]
    fn admission_settings_have_their_documented_defaults_and_bounds() {
        let c = Config::for_media_dir("/tmp/x");
        assert_eq!(
            (
                c.still_workers,
                c.still_worker_queue,
                c.still_worker_timeout
            ),
            (2, 64, Duration::from_secs(5))
        );
        assert_eq!(
            (
                c.still_max_in_flight,
                c.still_max_queue,
                c.still_queue_timeout
            ),
            (64, 128, Duration::from_secs(1))
        );
        assert_eq!(
            (c.info_max_in_flight, c.info_max_queue, c.info_queue_timeout),
            (32, 64, Duration::from_secs(1))
        );
        let g = &c.gun;
        assert_eq!(
            (
                g.gun_put_max_in_flight,
                g.gun_put_max_queue,
                g.gun_put_queue_timeout
            ),
            (16, 64, Duration::from_secs(2))
        );
        assert_eq!(
            (
                g.gun_get_max_in_flight,
                g.gun_get_max_queue,
                g.gun_get_queue_timeout
            ),
            (256, 1024, Duration::from_secs(2))
        );
        let refused = |tweak: fn(&mut Config), option: &str| {
            let mut c = Config::for_media_dir("/tmp/x");
            tweak(&mut c);
            let error = c.validate().expect_err(option).to_string();
            assert!(error.contains(option), "{error}");
        };
        refused(|c| c.still_workers = 0, "--still-workers");
        refused(|c| c.still_max_in_flight = 0, "--still-max-in-flight");
        refused(|c| c.info_max_in_flight = 0, "--info-max-in-flight");
        refused(
            |c| c.gun.gun_put_max_in_flight = 0,
            "--gun-put-max-in-flight",
        );
        refused(
            |c| c.still_worker_timeout = Duration::ZERO,
            "--still-worker-timeout",
        );
        refused(
            |c| c.still_queue_timeout = Duration::ZERO,
            "--still-queue-timeout",
        );
        refused(
            |c| c.info_queue_timeout = Duration::ZERO,
            "--info-queue-timeout",
        );
        refused(
            |c| c.gun.gun_put_queue_timeout = Duration::ZERO,
            "--gun-put-queue-timeout",
        );
        refused(
            |c| c.gun.gun_get_max_in_flight = 0,
            "--gun-get-max-in-flight",
        );
        refused(
            |c| c.gun.gun_get_queue_timeout = Duration::ZERO,
            "--gun-get-queue-timeout",
        );
        assert_eq!(
            (
                c.request_body_budget,
                c.request_body_queue,
                c.request_body_queue_timeout
            ),
            (256 << 20, 256, Duration::from_secs(2))
        );
        // Twice the largest body limit (the put limit, 128 MiB).
        refused(
            |c| c.request_body_budget = (256 << 20) - 1,
            "--request-body-budget",
        );
        refused(
            |c| {
                c.gun.gun_put_body_limit = 1 << 20;
                c.request_body_budget = 15 << 20;
            },
            "--request-body-budget",
        );
        refused(
            |c| c.resolver.resolve_body_budget = (16 << 20) - 1,
            "--resolve-body-budget",
        );
        refused(
            |c| c.request_body_queue_timeout = Duration::ZERO,
            "--request-body-queue-timeout",
        );
        let c = Config::parse_from([
            "oip-media",
            "--still-max-queue",
            "0",
            "--gun-put-queue-timeout",
            "250ms",
        ]);
        assert_eq!(c.still_max_queue, 0, "no queue: shed at once when full");
        assert_eq!(c.gun.gun_put_queue_timeout, Duration::from_millis(250));
    }

    #[test]
    fn filesystem_settings_have_their_documented_defaults_and_bounds() {
        let c = Config::for_media_dir("/tmp/x");
        assert_eq!(c.fs_threads, 8);
        assert_eq!(c.fs_queue, 1024);
        assert_eq!(c.fs_timeout, Duration::from_secs(2));
        assert_eq!(c.revalidate_window, Duration::from_secs(1));
        let c = Config::parse_from([
            "oip-media",
            "--fs-threads",
            "2",
            "--fs-queue",
            "0",
            "--fs-timeout",
            "250ms",
            "--revalidate-window",
            "0",
        ]);
        assert_eq!((c.fs_threads, c.fs_queue), (2, 0));
        assert_eq!(c.fs_timeout, Duration::from_millis(250));
        assert!(c.revalidate_window.is_zero());
        for (tweak, option) in [
            (
                (|c: &mut Config| c.fs_threads = 0) as fn(&mut Config),
                "--fs-threads",
            ),
            (|c| c.fs_timeout = Duration::ZERO, "--fs-timeout"),
            (
                |c| c.revalidate_window = Duration::from_millis(1001),
                "--revalidate-window",
            ),
            (|c| c.max_request_head = 4 * 1024, "--max-request-head"),
            (|c| c.max_request_head = 2 << 20, "--max-request-head"),
        ] {
            let mut c = Config::for_media_dir("/tmp/x");
            tweak(&mut c);
            let error = c.validate().unwrap_err().to_string();
            assert!(error.contains(option), "{error}");
        }
    }

    #[test]
    fn the_jwt_secret_never_shows_in_debug_output() {
        let c = Config::parse_from(["oip-media", "--jwt-secret", "hunter2-very-secret"]);
        assert_eq!(
            c.jwt_secret.as_ref().map(Secret::expose),
            Some("hunter2-very-secret")
        );
        let printed = format!("{c:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }

    #[test]
    fn elasticsearch_credentials_never_show_in_debug_output() {
        let c = Config::parse_from([
            "oip-media",
            "--elasticsearch-host",
            "https://urluser:urlpass-s3cret@es.internal:9200/prefix",
            "--elastic-username",
            "elastic",
            "--elastic-password",
            "pw-hunter2",
            "--elastic-ca-file",
            "/certs/http_ca.crt",
        ]);
        let r = &c.resolver;
        assert_eq!(
            r.elasticsearch_host.as_ref().map(UrlSetting::expose),
            Some("https://urluser:urlpass-s3cret@es.internal:9200/prefix")
        );
        assert_eq!(
            r.elastic_password.as_ref().map(Secret::expose),
            Some("pw-hunter2")
        );
        let printed = format!("{c:?}");
        for hidden in ["pw-hunter2", "urlpass-s3cret", "urluser", "@es.internal"] {
            assert!(!printed.contains(hidden), "{hidden} in {printed}");
        }
        assert!(
            printed.contains("https://es.internal:9200/prefix"),
            "{printed}"
        );
        // A value that is not a URL still hides what comes before its `@`.
        let odd = UrlSetting::from("u:p@ not a url");
        assert_eq!(format!("{odd:?}"), "\"<redacted>@ not a url\"");
    }

    #[test]
    fn the_redis_password_never_shows_in_debug_output() {
        let c = Config::parse_from([
            "oip-media",
            "--redis-url",
            "redis://:hunter2-very-secret@redis:6379/0",
        ]);
        let url = c.replicas.redis_url.as_ref().expect("set");
        assert_eq!(url.expose(), "redis://:hunter2-very-secret@redis:6379/0");
        let printed = format!("{c:?} {url}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("redis://:***@redis:6379/0"), "{printed}");
        for (raw, shown) in [
            ("redis://user:pw-secret@h:1", "redis://user:***@h:1"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=pw-secret",
                "redis+unix:///run/redis.sock?db=1&pass=***",
            ),
            ("redis://h:1", "redis://h:1"),
            ("::pw-secret::", "<unparsable URL, not shown>"),
        ] {
            let url: RedisUrl = raw.parse().expect("infallible");
            assert_eq!(url.redacted(), shown, "{raw}");
        }
        // `--help` prints an environment variable's value unless told not to.
        for secret in ["redis_url", "jwt_secret"] {
            let command = Config::command();
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == secret)
                .expect("the argument");
            assert!(arg.is_hide_env_values_set(), "--help would show {secret}");
        }
        let d = Config::for_media_dir("/tmp/x");
        assert!(d.replicas.redis_url.is_none(), "off unless set");
        assert_eq!(d.gun.gun_miss_ttl_without_redis, Duration::from_secs(5));
        assert_eq!(d.replicas.redis_publish_queue, 4096);
    }

    #[test]
    fn transcode_defaults_and_the_subcommand() {
        let c = Config::parse_from(["oip-media"]);
        let t = &c.transcode;
        assert_eq!(t.ffmpeg, "ffmpeg");
        assert_eq!(t.mp4_encoder, "libx264");
        assert_eq!(t.mp4_crf, 28);
        assert_eq!((t.transcode_workers, t.transcode_threads), (1, 2));
        assert_eq!((t.transcode_queue, t.transcode_max_waiting), (64, 256));
        assert_eq!(t.transcode_timeout, Duration::from_secs(60));
        assert_eq!(t.transcode_wait, Duration::from_secs(15));
        assert_eq!(t.transcode_failure_ttl, Duration::from_secs(600));
        assert!(!t.auto_format);
        assert!(c.command.is_none(), "no subcommand: serve");
        assert_eq!(c.derived_max_bytes, 1 << 30);
        assert!(Config::try_parse_from(["oip-media", "--mp4-encoder", "x265"]).is_err());

        // Settings before or after the subcommand's name both count.
        let c = Config::parse_from([
            "oip-media",
            "--derived-dir",
            "/d",
            "transcode",
            "--formats",
            "mp4,webm",
            "--mp4-encoder",
            "h264_nvenc",
            "/media",
        ]);
        assert_eq!(c.derived_dir, PathBuf::from("/d"));
        assert_eq!(c.transcode.mp4_encoder, "h264_nvenc");
        let Some(Command::Transcode(cmd)) = c.command else {
            panic!("transcode subcommand");
        };
        use crate::transcode::VariantFormat;
        assert_eq!(cmd.formats, vec![VariantFormat::Mp4, VariantFormat::Webm]);
        assert_eq!(cmd.dir, Some(PathBuf::from("/media")));
        assert!(Config::try_parse_from(["oip-media", "transcode", "--formats", "gif"]).is_err());
    }

    #[test]
    fn still_widths_parse_as_a_list() {
        let c = Config::parse_from(["oip-media", "--still-widths", "64,128"]);
        assert_eq!(c.still_widths, vec![64, 128]);
    }
}
