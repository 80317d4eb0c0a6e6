//! The shared state every handler reads, built once at start-up from the [`Config`], and
//! the plain counter types the server and the router bump.
//!
//! A leaf of the architecture: it imports the components it holds (store, gates, GUN
//! client, resolver, …) and nothing above it — not `routes`, `app` or `server` — so any
//! of those may take an `&AppState` without a cycle. A unit test below keeps it so.

use std::path::Path;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::admission::{Gate, GateSettings, Gates, PermitUnit};
use crate::auth::JwtVerifier;
use crate::config::{Config, option_name};
use crate::cors::CorsPolicy;
use crate::error::StartError;
use crate::fs_pool::FsPool;
use crate::gif::{GifLimits, Gifs};
use crate::gun::{GunClient, GunError};
use crate::manifest::ManifestCache;
use crate::metrics::by_kind;
use crate::replicas::Replicas;
use crate::resolve::Resolver;
use crate::settings::env_name;
use crate::store::{LazyRoot, Root, Store};
use crate::transcode::Transcoder;

/// Everything a handler may need, built once at start-up and shared by every connection.
pub struct AppState {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// Mapped files of every media root, bounded by entries and bytes.
    pub store: Arc<Store>,
    /// The threads every filesystem call of a request runs on (bounded; see `fs_pool`).
    pub fs: FsPool,
    /// The `/media/<project>/<file>` root (`MEDIA_DIR/web`), canonicalised at start-up.
    pub web_root: Root,
    /// `MEDIA_DIR` itself: content-addressed media (`<mediaId>/original`).
    pub media_root: Root,
    /// Generated audio; may appear after start-up.
    pub generated_root: LazyRoot,
    /// Parsed `manifest.json` files, bounded and revalidated.
    pub manifests: ManifestCache,
    /// Verifies owners' tokens; `None` without `JWT_SECRET` (private media → 401).
    pub jwt: Option<JwtVerifier>,
    /// GIF metadata and still posters.
    pub gifs: Gifs,
    /// MP4/WebM/WebP variants of GIFs (ffmpeg), in the derived folder beside stills.
    pub transcoder: Transcoder,
    /// The one GUN relay client of the process (its negative cache, breaker and counters
    /// are shared by every caller); `None` when `GUN_PEERS` is unset.
    pub gun: Option<Arc<GunClient>>,
    /// The record resolver behind `POST /api/resolve`, with its process-wide cache.
    pub resolver: Arc<Resolver>,
    /// Invalidations shared with the other replicas through Redis (`REDIS_URL`); does
    /// nothing without it.
    pub replicas: Replicas,
    /// The gates (bounded admission points) routes are declared behind.
    pub gates: Gates,
    /// The CORS allow-list.
    pub cors: CorsPolicy,
    /// Connection counters, filled by the server's accept loop and sockets.
    pub connections: Arc<ConnCounters>,
    /// Every metric of the process; `/metrics` encodes it. Components registered their
    /// own families here while the state was built.
    pub metrics: Registry,
    /// `--body-chunk-size` as a `usize`: what each body hands to hyper per poll.
    pub chunk: usize,
    /// Whether each media root could be listed at the last check (`/readyz`, and every
    /// scrape of `/metrics`): `oip_media_media_root_readable{role}`, 1 or 0.
    pub roots_readable: RootsReadable,
}

/// The `role` label of `oip_media_media_root_readable`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

/// Media roots' readability as gauges by role, set by each check.
#[derive(Debug, Clone, Default)]
pub struct RootsReadable(Family<RoleLabel, Gauge>);

impl RootsReadable {
    /// Gauges for `roles`, at 1 (start-up has checked the roots), registered in `registry`.
    fn new(roles: &[&'static str], registry: &mut Registry) -> RootsReadable {
        let readable = RootsReadable::default();
        for role in roles {
            readable.set(role, true);
        }
        registry.register(
            "media_root_readable",
            "1 when the media root (by role) could be listed at the last check (/readyz, or this scrape), 0 when not: its media answer errors",
            readable.0.clone(),
        );
        readable
    }

    /// Records the outcome of a check of the root `role`.
    pub fn set(&self, role: &'static str, readable: bool) {
        self.0
            .get_or_create(&RoleLabel { role })
            .set(i64::from(readable));
    }
}

impl AppState {
    /// Builds every shared component from `config` and registers its metrics; fails with
    /// a message naming the setting when a value or a media root is unusable.
    pub fn new(config: Config) -> Result<AppState, StartError> {
        let checked = config.validate()?;
        let config = Arc::new(config);
        let mut metrics = crate::metrics::registry();
        let fs = FsPool::new(config.fs).map_err(|error| StartError::InvalidSetting {
            option: option_name("fs_threads"),
            message: format!("cannot start the filesystem threads: {error}"),
        })?;
        let store = Arc::new(Store::new(&config.store, fs.clone()));
        store.register(&mut metrics);
        fs.register(&mut metrics);
        // Listed, not only resolved: a `web/` the service's user cannot read (mode 000,
        // another owner) would otherwise start "healthy" and answer every GIF with 404.
        let web_root = Root::open(&config.web_root())
            .and_then(|root| std::fs::read_dir(root.path()).map(|_| root))
            .map_err(|source| StartError::MediaRoot {
                option: option_name("media_dir"),
                path: config.web_root(),
                source: with_layout_hint(source, &config.store.media_dir),
            })?;
        let media_root =
            Root::open(&config.store.media_dir).map_err(|source| StartError::MediaRoot {
                option: option_name("media_dir"),
                path: config.store.media_dir.clone(),
                source,
            })?;
        let generated_root = LazyRoot::new(config.generated_root());
        if generated_root.get().is_none() {
            tracing::warn!(
                path = %generated_root.configured_path().display(),
                "generated-media folder ({}) is missing; \
                 /api/generate/media and /api/media?id= answer 404 until it exists",
                option_name("generated_media_dir")
            );
        }
        let jwt = config.auth.jwt_secret.as_ref().and_then(JwtVerifier::new);
        if jwt.is_none() {
            tracing::warn!(
                "{} is not set: private /api/media items will not be served (401)",
                env_name::<Config>("jwt_secret")
            );
        }
        let manifests = ManifestCache::new(
            config.store.manifest_cache_entries,
            vec![
                config.store.media_dir.clone(),
                media_root.path().to_path_buf(),
            ],
            fs.clone(),
            config.store.revalidate_window,
        );
        let gifs = Gifs::new(&config.gif, &config.derived, fs.clone()).map_err(|source| {
            StartError::DerivedDir {
                option: option_name("derived_dir"),
                path: config.derived.derived_dir.clone(),
                source,
            }
        })?;
        gifs.register(&mut metrics);
        let transcoder = Transcoder::new(
            &config.transcode,
            GifLimits::new(&config.gif),
            config.store.max_file_size,
            gifs.shared_derived(),
        );
        transcoder.metrics().register(&mut metrics);
        let gun = match config.gun.gun_peers {
            Some(_) => {
                let client = GunClient::new(&config.gun).map_err(|error| match error {
                    GunError::Config { option, message } => {
                        StartError::InvalidSetting { option, message }
                    }
                    other => StartError::InvalidSetting {
                        option: option_name("gun_peers"),
                        message: other.to_string(),
                    },
                })?;
                client.register(&mut metrics);
                Some(Arc::new(client))
            }
            None => None,
        };
        let resolver = Resolver::new(&config.resolver, gun.clone()).map_err(|error| {
            StartError::InvalidSetting {
                option: option_name("elasticsearch_host"),
                message: error.to_string(),
            }
        })?;
        let resolver = Arc::new(resolver);
        resolver.register(&mut metrics);
        let replicas =
            Replicas::start(&config.replicas, gun.as_ref(), &resolver).map_err(|error| {
                StartError::InvalidSetting {
                    option: option_name("redis_url"),
                    message: error.to_string(),
                }
            })?;
        replicas.register(&mut metrics);
        let gates = gates(&config, &mut metrics);
        let connections = Arc::new(ConnCounters::new(config.listeners()));
        connections.register(&mut metrics);
        crate::metrics::register_process(&mut metrics);
        crate::metrics::register_build_info(&mut metrics);
        let roots_readable = RootsReadable::new(&["web", "media"], &mut metrics);
        let chunk =
            usize::try_from(config.store.body_chunk_size).unwrap_or(crate::body::DEFAULT_CHUNK);
        Ok(AppState {
            config,
            store,
            fs,
            web_root,
            media_root,
            generated_root,
            manifests,
            jwt,
            gifs,
            transcoder,
            gun,
            resolver,
            replicas,
            gates,
            cors: checked.cors,
            connections,
            metrics,
            chunk,
            roots_readable,
        })
    }

    /// Each media root by name, for readiness checks.
    pub fn media_roots(&self) -> Vec<(&'static str, &Path)> {
        vec![
            ("web", self.web_root.path()),
            ("media", self.media_root.path()),
        ]
    }

    /// The GUN relay's state for `/readyz`: whether one is configured and its breaker,
    /// never its URL (an internal address is the operator's to know, not a prober's).
    pub fn gun_status(&self) -> serde_json::Value {
        match &self.gun {
            None => serde_json::json!({ "configured": false }),
            Some(gun) => serde_json::json!({
                "configured": true,
                "breaker": gun.breaker_state(),
            }),
        }
    }
}

/// Builds every gate from its settings and registers its metrics.
fn gates(config: &Config, registry: &mut Registry) -> Gates {
    // Only media bodies may leave their slot for the stalled pool: every other
    // admission's work holds memory (a rendered still, an answer) until it is sent.
    let mut bounded =
        |prefix: &str, units: PermitUnit, max_in_flight, max_queue, queue_timeout, max_stalled| {
            let gate = Arc::new(Gate::new(GateSettings {
                max_in_flight,
                max_queue,
                queue_timeout,
                retry_after_secs: 1,
                max_stalled,
            }));
            gate.register(registry.sub_registry_with_prefix(prefix), units);
            gate
        };
    let requests = PermitUnit::Request;
    let budget_bytes = PermitUnit::Bytes(crate::admission_settings::BUDGET_UNIT);
    let gun = &config.gun;
    Gates {
        media: bounded(
            "media",
            requests,
            config.admission.max_in_flight,
            config.admission.max_queue,
            config.admission.queue_timeout,
            config.admission.max_stalled,
        ),
        still: bounded(
            "still",
            requests,
            config.admission.still_max_in_flight,
            config.admission.still_max_queue,
            config.admission.still_queue_timeout,
            0,
        ),
        info: bounded(
            "info",
            requests,
            config.admission.info_max_in_flight,
            config.admission.info_max_queue,
            config.admission.info_queue_timeout,
            0,
        ),
        gun_put: bounded(
            "gun_put",
            requests,
            gun.gun_put_max_in_flight,
            gun.gun_put_max_queue,
            gun.gun_put_queue_timeout,
            0,
        ),
        gun_get: bounded(
            "gun_get",
            requests,
            gun.gun_get_max_in_flight,
            gun.gun_get_max_queue,
            gun.gun_get_queue_timeout,
            0,
        ),
        resolve: bounded(
            "resolve",
            requests,
            config.resolver.resolve_max_in_flight,
            config.resolver.resolve_max_queue,
            config.resolver.resolve_queue_timeout,
            0,
        ),
        request_body: bounded(
            "request_body",
            budget_bytes,
            usize::try_from(
                config
                    .admission
                    .request_body_budget
                    .div_ceil(crate::admission_settings::BUDGET_UNIT),
            )
            .unwrap_or(usize::MAX),
            config.admission.request_body_queue,
            config.admission.request_body_queue_timeout,
            0,
        ),
        resolve_body: bounded(
            "resolve_body",
            budget_bytes,
            usize::try_from(
                config
                    .resolver
                    .resolve_body_budget
                    .div_ceil(crate::admission_settings::BUDGET_UNIT),
            )
            .unwrap_or(usize::MAX),
            config.admission.request_body_queue,
            config.admission.request_body_queue_timeout,
            0,
        ),
    }
}

/// The `listener` label of `oip_media_connections_accepted_by_listener_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: usize,
}

/// Connection-level counters shared by every connection: bumped by the accept loop and
/// the sockets' timeouts, registered once for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnCounters {
    /// Connections accepted since start.
    pub accepted: Counter,
    /// Connections accepted by each listening socket: one in the multi-thread layout,
    /// one per core in the per-core layout, where the kernel's hash decides which core
    /// serves a connection and an uneven spread shows here.
    pub accepted_by_listener: Vec<Counter>,
    /// The same counters as one family for `/metrics` (`{listener="0"}`, …).
    by_listener: Family<ListenerLabel, Counter>,
    /// Connections open now.
    pub open: Gauge,
    /// Times the connection cap was reached and accepting paused until one closed.
    pub cap_reached: Counter,
    /// Connections closed because a request head took too long (or never came).
    pub header_timeouts: Counter,
    /// Idle keep-alive connections closed.
    pub idle_timeouts: Counter,
    /// Connections dropped because the client stopped reading the response.
    pub stall_timeouts: Counter,
    /// Bytes of mapped files sent by `sendfile`, straight from the page cache.
    pub sendfile_bytes: Counter,
    /// `sendfile` calls that sent at least one byte.
    pub sendfile_calls: Counter,
    /// Bytes of mapped files sent by `writev` instead (runs under
    /// `--sendfile-min-bytes`): copied into the socket buffer by the kernel.
    pub copied_file_bytes: Counter,
    /// Responses cut short because their file ended before them (truncated while
    /// being sent): each closed its connection.
    pub short_file_sends: Counter,
    /// Requests the fast lane answered itself (`--fast-lane on`).
    pub lane_requests: Counter,
    /// Connections the fast lane handed to hyper (a request it does not take).
    pub lane_handoffs: Counter,
}

impl ConnCounters {
    /// Counters for a server with `listeners` listening sockets (accept loops).
    pub fn new(listeners: usize) -> ConnCounters {
        let by_listener = Family::<ListenerLabel, Counter>::default();
        // Clones share the family's atomics: the accept loops bump these directly.
        let accepted_by_listener = (0..listeners)
            .map(|listener| {
                by_listener
                    .get_or_create(&ListenerLabel { listener })
                    .clone()
            })
            .collect();
        ConnCounters {
            accepted_by_listener,
            by_listener,
            ..ConnCounters::default()
        }
    }

    /// Registers `oip_media_connections_*` (accepted in all and
    /// `…_accepted_by_listener_total{listener}`, open), `…_connection_timeouts_total{kind}`,
    /// `…_connection_cap_reached_total`, and how body bytes left:
    /// `…_file_body_bytes_total{kind}`, `…_sendfile_calls_total`, `…_short_file_sends_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_accepted",
            "Connections accepted",
            self.accepted.clone(),
        );
        registry.register(
            "connections_accepted_by_listener",
            "Connections accepted by each listening socket (one per core in the per-core layout)",
            self.by_listener.clone(),
        );
        registry.register(
            "connections_open",
            "Connections open now",
            self.open.clone(),
        );
        registry.register(
            "connection_timeouts",
            "Connections closed by a timeout, by kind",
            by_kind([
                ("header_read", &self.header_timeouts),
                ("keep_alive", &self.idle_timeouts),
                ("write_stall", &self.stall_timeouts),
            ]),
        );
        registry.register(
            "connection_cap_reached",
            "Times the connection cap paused accepting",
            self.cap_reached.clone(),
        );
        registry.register(
            "file_body_bytes",
            "Body bytes of mapped files sent, by how: sendfile (from the page cache) or copy (writev, short runs)",
            by_kind([
                ("sendfile", &self.sendfile_bytes),
                ("copy", &self.copied_file_bytes),
            ]),
        );
        registry.register(
            "sendfile_calls",
            "sendfile(2) calls that sent bytes",
            self.sendfile_calls.clone(),
        );
        registry.register(
            "short_file_sends",
            "Responses cut short (connection closed) because their file ended early: truncated while sent",
            self.short_file_sends.clone(),
        );
        registry.register(
            "fast_lane_requests",
            format!(
                "Requests answered by the fast lane ({} on)",
                crate::settings::flag::<Config>("fast_lane")
            ),
            self.lane_requests.clone(),
        );
        registry.register(
            "fast_lane_handoffs",
            "Connections the fast lane handed to hyper (a request it does not take)",
            self.lane_handoffs.clone(),
        );
    }
}

/// `error` about `MEDIA_DIR/web`, with a hint about the expected layout when `web/` is
/// missing from a `MEDIA_DIR` that exists (a root pointed one level too deep or too high).
pub(crate) fn with_layout_hint(
    error: std::io::Error,
    media_dir: &std::path::Path,
) -> std::io::Error {
    if error.kind() == std::io::ErrorKind::NotFound && media_dir.is_dir() {
        return std::io::Error::new(
            error.kind(),
            format!(
                "{error} ({media} is the indexer's data/media: it must hold a web/ folder, \
                 /media/<project>/<file> being served from {media}/web/<project>/<file>)",
                media = env_name::<Config>("media_dir")
            ),
        );
    }
    error
}

#[cfg(test)]
mod tests {
    /// Modules above the leaves: `state` and `response` must not name them, or the
    /// import graph has a cycle again (issue 11).
    const ABOVE_THE_LEAVES: [&str; 4] = ["app", "routes", "server", "main"];

    /// Every `crate::<module>` a source file names outside its tests, in `use` lines and
    /// in paths.
    fn crate_modules(source: &str) -> Vec<String> {
        let mut named = Vec::new();
        let code = source.split("#[cfg(test)]").next().unwrap_or_default();
        for line in code.lines() {
            let code = line.split("//").next().unwrap_or_default();
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                let module: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !module.is_empty() {
                    named.push(module);
                }
            }
            if let Some(group) = code.trim_start().strip_prefix("use crate::{") {
                let group = group.split('}').next().unwrap_or_default();
                for part in group.split(',') {
                    let module = part.trim().split("::").next().unwrap_or_default();
                    if !module.is_empty() {
                        named.push(module.to_owned());
                    }
                }
            }
        }
        named
    }

    #[test]
    fn state_and_response_are_leaves() {
        for (file, source) in [
            ("src/state.rs", include_str!("state.rs")),
            ("src/response.rs", include_str!("response.rs")),
        ] {
            let named = crate_modules(source);
            for module in ABOVE_THE_LEAVES {
                assert!(
                    !named.iter().any(|m| m == module),
                    "{file} names crate::{module}: the leaves must not import from above"
                );
            }
        }
        assert!(
            !crate_modules(include_str!("response.rs"))
                .iter()
                .any(|m| m == "state"),
            "response needs no state"
        );
    }

    #[test]
    fn components_never_reach_up_into_the_app() {
        // Everything but the app's own layers (main, lib, cli, config, server, app,
        // routes, and `check`, which tries the whole app's parts) and the state leaf sits below `state`: it must not name it or anything
        // above it. Components are built from their own settings groups, so none names
        // `config` either, except the `transcode` subcommand's entry point (at the `cli`
        // layer) and a test module file (docs/architecture-layers.md).
        const MAY_NAME_CONFIG: [&str; 2] = ["transcode/cli.rs", "resolve/tests.rs"];
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src.clone()];
        let mut checked = 0;
        while let Some(path) = files.pop() {
            if path.is_dir() {
                for entry in std::fs::read_dir(&path).expect("src is readable") {
                    files.push(entry.expect("entry").path());
                }
                continue;
            }
            let relative = path.strip_prefix(&src).expect("under src");
            let top = relative
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .unwrap_or_default()
                .trim_end_matches(".rs");
            let above = [
                "main", "lib", "cli", "config", "server", "app", "routes", "state", "check",
            ];
            if above.contains(&top) || top == "bin" {
                continue;
            }
            let source = std::fs::read_to_string(&path).expect("source is readable");
            let named = crate_modules(&source);
            let may_name_config = MAY_NAME_CONFIG
                .iter()
                .any(|file| relative == std::path::Path::new(file));
            for module in ["app", "routes", "server", "state", "cli", "config"] {
                if module == "config" && may_name_config {
                    continue;
                }
                assert!(
                    !named.iter().any(|m| m == module),
                    "src/{} names crate::{module}: components sit below the app, its state \
                     and the configuration",
                    relative.display()
                );
            }
            checked += 1;
        }
        assert!(checked > 20, "the walk found the components ({checked})");
    }

    #[test]
    fn the_leaf_check_sees_every_form_of_import() {
        let named = crate_modules(
            "use crate::app::App;\nuse crate::{body::Body, routes};\nfn f() { crate::server::start(); }\n// crate::main in a comment",
        );
        assert_eq!(named, ["app", "body", "routes", "server"]);
    }
}
