//! The one configuration type: each component's settings group (a `clap::Args` struct
//! beside the component, with its own `--help` heading), flattened. Every setting is a
//! CLI flag with an environment-variable twin (the indexer's names where they mean the
//! same thing, SPEC §5) and a documented default, so `oip-media --help` is enough to run
//! the service.
//!
//! Adding a setting touches one file: its group. The field (with its doc, flag, env and
//! default) goes into the group's struct, and a check clap cannot make goes into the
//! group's `validate`, which names the setting by its field (`Invalid::new("fs_threads",
//! …)`); `option_name` turns that into the flag and env names clap knows. This module
//! depends on no component's code, only on the groups' types, so no component that is
//! built from its settings imports it back.

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser};

pub(crate) use crate::access_log::LogSettings;
pub(crate) use crate::admission_settings::AdmissionSettings;
pub(crate) use crate::auth::AuthSettings;
pub(crate) use crate::cors::CorsSettings;
pub(crate) use crate::fs_pool::FsPoolSettings;
pub use crate::gif::settings::{DerivedSettings, GifSettings};
pub use crate::gun::settings::GunSettings;
pub(crate) use crate::replicas::settings::ReplicaSettings;
pub use crate::resolve::settings::ResolverSettings;
pub use crate::secret::{RedisUrl, Secret, UrlSetting};
pub use crate::server::settings::{
    FastLane, MAX_REQUEST_HEAD, MIN_REQUEST_HEAD, RuntimeLayout, ServerSettings,
};
use crate::settings::{Invalid, flag};
pub use crate::settings::{parse_bytes, parse_duration, parse_rate};
pub use crate::store::settings::{MAX_REVALIDATE_WINDOW, StoreSettings};
pub(crate) use crate::transcode::settings::TranscodeSettings;

/// Every setting of the service, one group per component. Built by clap from flags and
/// environment variables in `main` (through [`crate::cli::Cli`], which adds the
/// subcommands), or by tests and benches with [`Config::for_media_dir`] and plain field
/// updates (`config.admission.max_in_flight = 2`).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "oip-media",
    version,
    about = "Media service for the OIP indexer: memory-mapped, zero-copy GIF serving and a 404-caching GUN relay companion."
)]
pub struct Config {
    /// Listening sockets, serving threads, connection bounds and timeouts.
    #[command(flatten)]
    pub server: ServerSettings,

    /// The admission points' bounds and the request-body budget.
    #[command(flatten)]
    pub admission: AdmissionSettings,

    /// The threads every filesystem call runs on.
    #[command(flatten)]
    pub fs: FsPoolSettings,

    /// Media roots and the mapping cache.
    #[command(flatten)]
    pub store: StoreSettings,

    /// The CORS allow-list.
    #[command(flatten)]
    pub cors: CorsSettings,

    /// Owners' tokens for private media.
    #[command(flatten)]
    pub auth: AuthSettings,

    /// Log format, access log and summary line.
    #[command(flatten)]
    pub log: LogSettings,

    /// GIF parsing and stills.
    #[command(flatten)]
    pub gif: GifSettings,

    /// The derived-file folder.
    #[command(flatten)]
    pub derived: DerivedSettings,

    /// MP4, WebM and WebP variants of GIFs (`?format=`), made by ffmpeg off the hot path.
    #[command(flatten)]
    pub transcode: TranscodeSettings,

    /// The GUN relay client and the `/gun-relay/` endpoints.
    #[command(flatten)]
    pub gun: GunSettings,

    /// Sharing cache invalidations between replicas through Redis (`src/replicas/`).
    #[command(flatten)]
    pub replicas: ReplicaSettings,

    /// Settings of the record resolver behind `POST /api/resolve`.
    #[command(flatten)]
    pub resolver: ResolverSettings,
}

/// The flag and environment variable of the setting whose argument id (its field's
/// name) is `id`, as clap knows them: `--max-in-flight / MAX_IN_FLIGHT`. What every
/// validation message names, so none is typed by hand.
pub(crate) fn option_name(id: &str) -> String {
    crate::settings::option_name::<Config>(id)
}

impl Config {
    /// The number of serving threads `--workers` asks for: its value, or one per core
    /// this process may run on (its CPU affinity and cgroup quota) when it is 0.
    pub fn worker_threads(&self) -> usize {
        self.server.worker_threads()
    }

    /// Listening sockets, each with its own accept loop: one for the multi-thread
    /// runtime, one per worker for the per-core layout.
    pub fn listeners(&self) -> usize {
        self.server.listeners()
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
        config.store.media_dir = media_dir.into();
        config.server.port = 0;
        config.server.bind = std::net::IpAddr::from([127, 0, 0, 1]);
        config.derived.derived_dir = config.store.media_dir.join(".oip-media-derived");
        config.store.generated_media_dir = None;
        config.auth.jwt_secret = None;
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
    pub fn advisories(&self) -> Vec<String> {
        self.admission
            .advisories(self.server.stalled_after, &flag::<Config>("stalled_after"))
    }

    /// Checks values clap cannot: each group checks its own, then the few that span
    /// groups; each error names the option to fix. Returns what it had to parse to check
    /// (the CORS allow-list), so nothing is parsed twice.
    pub fn validate(&self) -> Result<Checked, crate::StartError> {
        self.check()
            .map_err(|invalid| crate::StartError::InvalidSetting {
                option: option_name(invalid.id),
                message: invalid.message,
            })
    }

    fn check(&self) -> Result<Checked, Invalid> {
        self.admission.validate()?;
        self.server.validate()?;
        self.store.validate()?;
        self.fs.validate()?;
        self.resolver.validate()?;
        self.gun.validate()?;
        self.log.validate()?;
        self.replicas.validate()?;
        self.transcode.validate()?;
        self.gif.validate()?;
        // The body budget is shared by the GUN relay's puts and the resolver's bodies.
        let largest_body = self
            .resolver
            .resolve_body_limit
            .max(self.gun.gun_put_body_limit);
        if self.admission.request_body_budget < largest_body.saturating_mul(2) {
            let message = format!(
                "must be at least twice the largest body limit ({}, {}): {} bytes",
                flag::<Config>("resolve_body_limit"),
                flag::<Config>("gun_put_body_limit"),
                largest_body.saturating_mul(2)
            );
            return Err(Invalid::new("request_body_budget", message));
        }
        let cors = self.cors.policy()?;
        Ok(Checked { cors })
    }

    /// The folder `/media/<project>/<file>` is served from.
    pub fn web_root(&self) -> PathBuf {
        self.store.web_root()
    }

    /// The folder generated audio is served from (see `--generated-media-dir`).
    pub fn generated_root(&self) -> PathBuf {
        self.store.generated_root()
    }
}

/// What [`Config::validate`] parsed while checking, handed on so it is parsed once.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The CORS allow-list of `--cors-origins`.
    pub cors: crate::cors::CorsPolicy,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
        assert_eq!(c.server.port, 0);
        assert!(c.validate().is_ok());
        assert_eq!(c.generated_root(), PathBuf::from("/tmp/x/generated"));
        assert_eq!(
            c.derived.derived_dir,
            PathBuf::from("/tmp/x/.oip-media-derived")
        );
        assert_eq!(c.gif.still_widths, vec![90, 180, 360]);
    }

    #[test]
    fn invalid_values_name_their_option() {
        let mut c = Config::for_media_dir("/tmp/x");
        c.admission.max_in_flight = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--max-in-flight")
        );
        let mut c = Config::for_media_dir("/tmp/x");
        c.cors.cors_origins = "fitnessally.io".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--cors-origins")
        );
        let mut c = Config::for_media_dir("/tmp/x");
        c.store.body_chunk_size = 10;
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
        assert_eq!(c.server.write_stall_timeout, Duration::from_secs(20));
        assert_eq!(c.server.stalled_after, Duration::from_millis(500));
        assert_eq!(c.admission.max_stalled, 2048);
        assert!(c.server.stalled_after < c.admission.queue_timeout);
        let c = Config::parse_from(["oip-media", "--stalled-after", "2s", "--max-stalled", "0"]);
        assert_eq!(c.server.stalled_after, Duration::from_secs(2));
        assert_eq!(c.admission.max_stalled, 0);
        let mut c = Config::for_media_dir("/tmp/x");
        c.server.stalled_after = Duration::ZERO;
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
                c.gif.still_workers,
                c.gif.still_worker_queue,
                c.gif.still_worker_timeout
            ),
            (2, 64, Duration::from_secs(5))
        );
        assert_eq!(
            (
                c.admission.still_max_in_flight,
                c.admission.still_max_queue,
                c.admission.still_queue_timeout
            ),
            (64, 128, Duration::from_secs(1))
        );
        assert_eq!(
            (
                c.admission.info_max_in_flight,
                c.admission.info_max_queue,
                c.admission.info_queue_timeout
            ),
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
        refused(|c| c.gif.still_workers = 0, "--still-workers");
        refused(
            |c| c.admission.still_max_in_flight = 0,
            "--still-max-in-flight",
        );
        refused(
            |c| c.admission.info_max_in_flight = 0,
            "--info-max-in-flight",
        );
        refused(
            |c| c.gun.gun_put_max_in_flight = 0,
            "--gun-put-max-in-flight",
        );
        refused(
            |c| c.gif.still_worker_timeout = Duration::ZERO,
            "--still-worker-timeout",
        );
        refused(
            |c| c.admission.still_queue_timeout = Duration::ZERO,
            "--still-queue-timeout",
        );
        refused(
            |c| c.admission.info_queue_timeout = Duration::ZERO,
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
                c.admission.request_body_budget,
                c.admission.request_body_queue,
                c.admission.request_body_queue_timeout
            ),
            (256 << 20, 256, Duration::from_secs(2))
        );
        // Twice the largest body limit (the put limit, 128 MiB).
        refused(
            |c| c.admission.request_body_budget = (256 << 20) - 1,
            "--request-body-budget",
        );
        refused(
            |c| {
                c.gun.gun_put_body_limit = 1 << 20;
                c.admission.request_body_budget = 15 << 20;
            },
            "--request-body-budget",
        );
        refused(
            |c| c.resolver.resolve_body_budget = (16 << 20) - 1,
            "--resolve-body-budget",
        );
        refused(
            |c| c.admission.request_body_queue_timeout = Duration::ZERO,
            "--request-body-queue-timeout",
        );
        let c = Config::parse_from([
            "oip-media",
            "--still-max-queue",
            "0",
            "--gun-put-queue-timeout",
            "250ms",
        ]);
        assert_eq!(
            c.admission.still_max_queue, 0,
            "no queue: shed at once when full"
        );
        assert_eq!(c.gun.gun_put_queue_timeout, Duration::from_millis(250));
    }

    #[test]
    fn filesystem_settings_have_their_documented_defaults_and_bounds() {
        let c = Config::for_media_dir("/tmp/x");
        assert_eq!(c.fs.fs_threads, 8);
        assert_eq!(c.fs.fs_queue, 1024);
        assert_eq!(c.fs.fs_timeout, Duration::from_secs(2));
        assert_eq!(c.store.revalidate_window, Duration::from_secs(1));
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
        assert_eq!((c.fs.fs_threads, c.fs.fs_queue), (2, 0));
        assert_eq!(c.fs.fs_timeout, Duration::from_millis(250));
        assert!(c.store.revalidate_window.is_zero());
        for (tweak, option) in [
            (
                (|c: &mut Config| c.fs.fs_threads = 0) as fn(&mut Config),
                "--fs-threads",
            ),
            (|c| c.fs.fs_timeout = Duration::ZERO, "--fs-timeout"),
            (
                |c| c.store.revalidate_window = Duration::from_millis(1001),
                "--revalidate-window",
            ),
            (
                |c| c.server.max_request_head = 4 * 1024,
                "--max-request-head",
            ),
            (
                |c| c.server.max_request_head = 2 << 20,
                "--max-request-head",
            ),
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
            c.auth.jwt_secret.as_ref().map(Secret::expose),
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
    fn messages_take_the_flag_and_env_names_from_clap() {
        let mut c = Config::for_media_dir("/tmp/x");
        c.admission.max_in_flight = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "--max-in-flight / MAX_IN_FLIGHT: must be at least 1"
        );
        assert_eq!(
            option_name("elasticsearch_host"),
            "--elasticsearch-host / ELASTICSEARCHHOST"
        );
        assert_eq!(option_name("not_a_setting"), "not_a_setting");
        // Every setting has a flag and an env twin for a message to name.
        for arg in Config::command().get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            let name = option_name(id);
            assert!(
                name.starts_with("--") && name.contains(" / "),
                "{id}: {name}"
            );
        }
    }

    #[test]
    fn still_widths_parse_as_a_list() {
        let c = Config::parse_from(["oip-media", "--still-widths", "64,128"]);
        assert_eq!(c.gif.still_widths, vec![64, 128]);
    }
}
