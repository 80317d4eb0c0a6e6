//! `oip-media check`: what `nginx -t` and `caddy validate` are to those servers. Loads
//! and validates the settings as serving would, then tries every part the service
//! depends on with the same code start-up and requests use (the media roots' open and
//! listing, ffmpeg's discovery, the Elasticsearch search, the GUN client's get, the Redis
//! connection, the descriptor plan), each bounded by `--check-timeout`, and prints one
//! line per check: `ok`, `warn` or `FAIL`, its name and what it found.
//!
//! Exit status ([`Report::exit_code`]): 0 when every line is `ok`; 1 when the worst is
//! `warn` (the service would start, but not as configured: descriptor bounds lowered,
//! ffmpeg unusable so variants answer 501, the generated-media folder missing); 2 when a
//! line is `FAIL` (the settings or a media root stop start-up, or a configured
//! Elasticsearch, GUN relay or Redis refuses or does not answer).
//!
//! Credentials are never printed: URLs are shown without their user-info or password,
//! and every line passes through [`Report::redact`], which replaces each configured
//! secret that still made it into an error text with `***`.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use crate::config::{Config, option_name, parse_duration};
use crate::settings::{env_name, flag};

/// Arguments of `oip-media check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Longest each probe may take (ffmpeg, Elasticsearch, the GUN relay, Redis) before
    /// it counts as failed: `check` never hangs on a dependency that does not answer.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub check_timeout: Duration,
}

/// How one check went, in increasing severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Works as configured.
    Ok,
    /// The service would start, but run without or below what is configured.
    Warn,
    /// The service would not start, or a configured dependency fails.
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// How it went.
    pub level: Level,
    /// What was checked (`web root`, `elasticsearch`…).
    pub name: &'static str,
    /// What was found, or why it failed.
    pub detail: String,
}

impl Line {
    fn new(level: Level, name: &'static str, detail: impl Into<String>) -> Line {
        Line {
            level,
            name,
            detail: detail.into(),
        }
    }
}

/// The report: its lines, and the secrets none of them may show.
#[derive(Debug, Default)]
pub struct Report {
    lines: Vec<Line>,
    secrets: Vec<String>,
}

impl Report {
    /// A report that will hide `secrets` (each configured credential) wherever they appear.
    pub fn hiding(secrets: impl IntoIterator<Item = String>) -> Report {
        Report {
            lines: Vec::new(),
            // Very short values would blank out ordinary text; they cannot come from the
            // code paths above anyway (no error message quotes a credential), this is
            // the second line of defence.
            secrets: secrets.into_iter().filter(|s| s.len() >= 3).collect(),
        }
    }

    /// Adds a line (its detail with every secret replaced).
    pub fn push(&mut self, line: Line) {
        let detail = self.redact(&line.detail);
        self.lines.push(Line { detail, ..line });
    }

    /// `text` with every secret replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.replace(['\n', '\r'], " ");
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "***");
        }
        text
    }

    /// The lines so far.
    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// The worst level of any line (`Ok` for none).
    pub fn worst(&self) -> Level {
        self.lines
            .iter()
            .map(|l| l.level)
            .max()
            .unwrap_or(Level::Ok)
    }

    /// 0 all ok, 1 warnings only, 2 a failure (see the module's documentation).
    pub fn exit_code(&self) -> u8 {
        match self.worst() {
            Level::Ok => 0,
            Level::Warn => 1,
            Level::Fail => 2,
        }
    }
}

/// The report as printed: one line per check, then a summary line.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            writeln!(f, "{:<4}  {:<13}  {}", line.level, line.name, line.detail)?;
        }
        let count = |level| self.lines.iter().filter(|l| l.level == level).count();
        let (warnings, failures) = (count(Level::Warn), count(Level::Fail));
        let verdict = match self.worst() {
            Level::Ok => "configuration ok".to_owned(),
            Level::Warn => format!("configuration usable, {warnings} warning(s)"),
            Level::Fail => format!("{failures} check(s) failed, {warnings} warning(s)"),
        };
        writeln!(f, "oip-media check: {verdict} (exit {})", self.exit_code())
    }
}

/// Runs every check for `config` and prints the report on stdout; returns its exit code.
pub fn run(config: &Config, args: &CheckArgs) -> std::process::ExitCode {
    let report = check(config, args.check_timeout);
    print!("{report}");
    std::process::ExitCode::from(report.exit_code())
}

/// Every check for `config`, each probe bounded by `timeout`.
pub fn check(config: &Config, timeout: Duration) -> Report {
    let mut report = Report::hiding(secrets(config));
    report.push(Line::new(
        Level::Ok,
        "version",
        crate::version::LONG.to_owned(),
    ));
    if let Err(error) = config.validate() {
        // Nothing else can be judged from settings that do not load.
        report.push(Line::new(Level::Fail, "config", error.to_string()));
        return report;
    }
    report.push(Line::new(Level::Ok, "config", "settings are valid"));
    for line in media_roots(config) {
        report.push(line);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            report.push(Line::new(
                Level::Fail,
                "runtime",
                format!("cannot start the async runtime for the probes: {error}"),
            ));
            return report;
        }
    };
    let probes = runtime.block_on(async {
        // At once: the whole check takes about one timeout, not one per dependency.
        let (ffmpeg, elastic, gun, redis) = tokio::join!(
            ffmpeg(config, timeout),
            bounded(timeout, "elasticsearch", elasticsearch(config, timeout)),
            bounded(timeout, "gun relay", gun_relay(config, timeout)),
            bounded(timeout, "redis", redis(config, timeout)),
        );
        [ffmpeg, elastic, gun, redis]
    });
    // A probe's blocking part (ffmpeg) is bounded on its own; don't wait past it.
    runtime.shutdown_timeout(timeout);
    for line in probes {
        report.push(line);
    }
    report.push(descriptors(config));
    report
}

/// Every credential the settings hold, to be hidden from the report.
fn secrets(config: &Config) -> Vec<String> {
    let mut secrets = Vec::new();
    let resolver = &config.resolver;
    if let Some(password) = &resolver.elastic_password {
        secrets.push(password.expose().to_owned());
    }
    for url in [
        resolver.elasticsearch_host.as_ref().map(|u| u.expose()),
        config.replicas.redis_url.as_ref().map(|u| u.expose()),
        config.gun.gun_peers.as_deref(),
    ]
    .into_iter()
    .flatten()
    {
        if let Ok(url) = reqwest::Url::parse(url.trim())
            && let Some(password) = url.password()
        {
            secrets.push(password.to_owned());
            if let Ok(decoded) = percent_encoding::percent_decode_str(password).decode_utf8() {
                secrets.push(decoded.into_owned());
            }
        }
    }
    if let Some(secret) = &config.auth.jwt_secret {
        secrets.push(secret.expose().to_owned());
    }
    secrets
}

/// `future`, or a `FAIL` line saying it did not finish within `timeout`.
async fn bounded(
    timeout: Duration,
    name: &'static str,
    future: impl Future<Output = Line>,
) -> Line {
    // A little over the probe's own bound, so the probe's message (more precise) wins.
    match tokio::time::timeout(timeout + Duration::from_millis(250), future).await {
        Ok(line) => line,
        Err(_) => Line::new(
            Level::Fail,
            name,
            format!(
                "no answer within {} ({})",
                human(timeout),
                flag::<CheckArgs>("check_timeout")
            ),
        ),
    }
}

/// `1.5s`, `250ms`.
fn human(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else if duration.as_secs() == 0 {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

/// `MEDIA_DIR`, its `web/` (opened and listed as start-up does, with the same layout
/// hint) and the generated-media folder (a warning when missing, as at start-up).
fn media_roots(config: &Config) -> Vec<Line> {
    let listed = |path: &Path| -> std::io::Result<std::path::PathBuf> {
        let root = crate::store::Root::open(path)?;
        std::fs::read_dir(root.path())?;
        Ok(root.path().to_path_buf())
    };
    let mut lines = Vec::new();
    lines.push(match listed(&config.store.media_dir) {
        Ok(path) => Line::new(
            Level::Ok,
            "media root",
            format!("{} readable", path.display()),
        ),
        Err(error) => Line::new(
            Level::Fail,
            "media root",
            format!(
                "{} {}: {error}",
                option_name("media_dir"),
                config.store.media_dir.display()
            ),
        ),
    });
    let web = config.web_root();
    lines.push(match listed(&web) {
        Ok(path) => Line::new(
            Level::Ok,
            "web root",
            format!("{} readable", path.display()),
        ),
        Err(error) => Line::new(
            Level::Fail,
            "web root",
            format!(
                "{}: {}",
                web.display(),
                crate::state::with_layout_hint(error, &config.store.media_dir)
            ),
        ),
    });
    let generated = config.generated_root();
    lines.push(match listed(&generated) {
        Ok(path) => Line::new(
            Level::Ok,
            "generated",
            format!("{} readable", path.display()),
        ),
        Err(error) => Line::new(
            Level::Warn,
            "generated",
            format!(
                "{}: {error}: /api/generate/media and /api/media?id= answer 404 until it \
                 exists ({})",
                generated.display(),
                option_name("generated_media_dir")
            ),
        ),
    });
    lines
}

/// ffmpeg, discovered as the transcoder does (`-version`, `-encoders`), when
/// transcoding is on.
async fn ffmpeg(config: &Config, timeout: Duration) -> Line {
    use crate::transcode::ffmpeg::{Ffmpeg, LIBVPX_VP9, LIBWEBP_ANIM, LIBX264};
    let program = config.transcode.ffmpeg.trim().to_owned();
    if program.is_empty() {
        return Line::new(
            Level::Ok,
            "ffmpeg",
            format!(
                "transcoding is off ({} is empty): ?format= answers 501",
                option_name("ffmpeg")
            ),
        );
    }
    // Two child processes, each bounded (and killed with its group) by half the timeout.
    let step = (timeout / 2).max(Duration::from_millis(100));
    let found = tokio::task::spawn_blocking(move || Ffmpeg::discover_within(&program, step)).await;
    let ffmpeg = match found {
        Ok(Ok(ffmpeg)) => ffmpeg,
        Ok(Err(error)) => {
            return Line::new(
                Level::Warn,
                "ffmpeg",
                format!("{error}: the service would run without variants (?format= answers 501)"),
            );
        }
        Err(error) => return Line::new(Level::Warn, "ffmpeg", format!("probe failed: {error}")),
    };
    let missing: Vec<&str> = [
        ("mp4", LIBX264),
        ("webm", LIBVPX_VP9),
        ("webp", LIBWEBP_ANIM),
    ]
    .into_iter()
    .filter(|(_, encoder)| !ffmpeg.has(encoder))
    .map(|(format, _)| format)
    .collect();
    let found = format!(
        "ffmpeg {} (`{}`), encoders: {}",
        ffmpeg.version(),
        ffmpeg.program(),
        ffmpeg.interesting_encoders().join(", ")
    );
    if missing.is_empty() {
        Line::new(Level::Ok, "ffmpeg", found)
    } else {
        Line::new(
            Level::Warn,
            "ffmpeg",
            format!(
                "{found}; no encoder for {}: those variants answer 501",
                missing.join(", ")
            ),
        )
    }
}

/// A reference no record has: the probe searches for it the way the resolver searches.
const PROBE_DID: &str = "did:arweave:oip-media-check-probe";

/// Elasticsearch, when configured: one search of the `records` index for a reference
/// no record has, through the resolver's own source (its URL, credentials, CA file and
/// TLS), the request bounded by `timeout`.
async fn elasticsearch(config: &Config, timeout: Duration) -> Line {
    use crate::resolve::elastic::{ElasticAccess, ElasticSource, FailureKind};
    const NAME: &str = "elasticsearch";
    let settings = &config.resolver;
    let Some(host) = settings
        .elasticsearch_host
        .as_ref()
        .filter(|h| !h.expose().trim().is_empty())
    else {
        return Line::new(
            Level::Ok,
            NAME,
            format!(
                "not configured ({} unset): only did:gun: references resolve",
                env_name::<Config>("elasticsearch_host")
            ),
        );
    };
    let shown = host.redacted();
    let source = match ElasticSource::with_access(&ElasticAccess {
        host: host.expose().to_owned(),
        timeout,
        username: settings.elastic_username.clone(),
        password: settings.elastic_password.clone(),
        ca_file: settings.elastic_ca_file.clone(),
    }) {
        Ok(source) => source,
        Err(error) => return Line::new(Level::Fail, NAME, error.to_string()),
    };
    let how = format!(
        "{shown} ({}, {})",
        if source.is_https() {
            "TLS"
        } else {
            "plain http"
        },
        if source.has_credentials() {
            "with credentials"
        } else {
            "no credentials"
        }
    );
    let error = match source.search("records", &[PROBE_DID.to_owned()]).await {
        Ok(_) => return Line::new(Level::Ok, NAME, format!("{how} answered a search")),
        Err(error) => error,
    };
    let cause = error_chain(&error);
    let detail = match error.kind() {
        FailureKind::Auth => format!(
            "auth: {how} refused the credentials: {error} (Elasticsearch's answer names \
             the user and is not shown)"
        ),
        FailureKind::Tls => format!(
            "TLS: the handshake with {shown} failed: {cause} (an untrusted certificate? \
             {}; https:// to a plain-http port?)",
            option_name("elastic_ca_file")
        ),
        FailureKind::Timeout => {
            format!("timeout: {shown} did not answer within {}", human(timeout))
        }
        FailureKind::Connect => format!("unreachable: {shown}: {cause}"),
        FailureKind::Status | FailureKind::Response => format!("{how}: {error}"),
    };
    Line::new(Level::Fail, NAME, detail)
}

/// A soul no record has: the probe asks the relay for it.
const PROBE_SOUL: &str = "oip-media-check-probe";

/// The GUN relay, when configured: one get through the service's own client (one
/// attempt, bounded by `timeout`); a 404 for the probe's soul is a relay that answers.
async fn gun_relay(config: &Config, timeout: Duration) -> Line {
    use crate::gun::{GunClient, GunError, GunRecord};
    const NAME: &str = "gun relay";
    if config
        .gun
        .gun_peers
        .as_deref()
        .is_none_or(|p| p.trim().is_empty())
    {
        return Line::new(
            Level::Ok,
            NAME,
            format!(
                "not configured ({} unset): /gun-relay/ answers 503",
                env_name::<Config>("gun_peers")
            ),
        );
    }
    let mut settings = config.gun.clone();
    settings.gun_attempts = 1;
    settings.gun_attempt_timeout = timeout;
    settings.gun_deadline = timeout;
    settings.gun_summary_interval = Duration::ZERO;
    let client = match GunClient::new(&settings) {
        Ok(client) => client,
        Err(error) => return Line::new(Level::Fail, NAME, error.to_string()),
    };
    let base = client.base_url().to_owned();
    match client.get(PROBE_SOUL).await {
        Ok(GunRecord::Missing) => Line::new(
            Level::Ok,
            NAME,
            format!("{base} answered a get (404 for a probe soul, as expected)"),
        ),
        Ok(GunRecord::Found(_)) => Line::new(Level::Ok, NAME, format!("{base} answered a get")),
        Err(GunError::Unavailable {
            timed_out: true, ..
        }) => Line::new(
            Level::Fail,
            NAME,
            format!("timeout: {base} did not answer within {}", human(timeout)),
        ),
        Err(error @ GunError::Unavailable { .. }) => {
            Line::new(Level::Fail, NAME, format!("unreachable: {base}: {error}"))
        }
        Err(error) => Line::new(
            Level::Fail,
            NAME,
            format!("{}: {base}: {error}", error.kind()),
        ),
    }
}

/// Redis, when configured: a connection and a `PING`, each bounded by `timeout`.
async fn redis(config: &Config, timeout: Duration) -> Line {
    const NAME: &str = "redis";
    let Some(url) = &config.replicas.redis_url else {
        return Line::new(
            Level::Ok,
            NAME,
            format!(
                "not configured ({} unset): invalidations stay on this replica",
                env_name::<Config>("redis_url")
            ),
        );
    };
    let shown = url.redacted();
    let client = match redis::Client::open(url.expose()) {
        Ok(client) => client,
        Err(error) => {
            return Line::new(
                Level::Fail,
                NAME,
                format!("`{shown}` is not a usable Redis URL: {error}"),
            );
        }
    };
    let settings = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let connected = client
        .get_multiplexed_async_connection_with_config(&settings)
        .await;
    let mut connection = match connected {
        Ok(connection) => connection,
        Err(error) => {
            let what = if error.kind() == redis::ErrorKind::AuthenticationFailed {
                "auth"
            } else {
                "unreachable"
            };
            return Line::new(Level::Fail, NAME, format!("{what}: {shown}: {error}"));
        }
    };
    match redis::cmd("PING")
        .query_async::<String>(&mut connection)
        .await
    {
        Ok(_) => Line::new(Level::Ok, NAME, format!("{shown} answered PING")),
        Err(error) => Line::new(Level::Fail, NAME, format!("{shown}: PING failed: {error}")),
    }
}

/// The descriptor plan start-up would apply (`src/server/fd_budget.rs`).
fn descriptors(config: &Config) -> Line {
    use crate::server::fd_budget;
    match fd_budget::plan(fd_budget::raise_limit(), config) {
        Ok(plan) if plan.lowered() => Line::new(Level::Warn, "descriptors", plan.to_string()),
        Ok(plan) => Line::new(Level::Ok, "descriptors", plan.to_string()),
        Err(message) => Line::new(Level::Fail, "descriptors", message),
    }
}

/// The causes of `error` below its own message, joined: what went wrong at the bottom
/// (`Connection refused`, `invalid peer certificate: UnknownIssuer`).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut causes: Vec<String> = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        source = cause.source();
    }
    if causes.is_empty() {
        error.to_string()
    } else {
        causes.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_code_is_the_worst_line() {
        let mut report = Report::default();
        assert_eq!(report.exit_code(), 0);
        report.push(Line::new(Level::Ok, "a", "fine"));
        assert_eq!(report.exit_code(), 0);
        report.push(Line::new(Level::Warn, "b", "meh"));
        assert_eq!(report.exit_code(), 1);
        report.push(Line::new(Level::Fail, "c", "broken"));
        report.push(Line::new(Level::Ok, "d", "fine"));
        assert_eq!(report.exit_code(), 2);
        let printed = report.to_string();
        assert!(
            printed.contains("FAIL  c              broken\n"),
            "{printed}"
        );
        assert!(printed.contains("warn  b              meh\n"), "{printed}");
        assert!(
            printed.ends_with("1 check(s) failed, 1 warning(s) (exit 2)\n"),
            "{printed}"
        );
    }

    #[test]
    fn secrets_are_hidden_wherever_they_appear() {
        let mut report = Report::hiding(["s3cret".to_owned(), "ab".to_owned()]);
        report.push(Line::new(Level::Fail, "x", "refused s3cret at\nhost ab"));
        assert_eq!(report.lines()[0].detail, "refused *** at host ab");
    }

    #[test]
    fn every_configured_credential_is_a_secret() {
        let mut config = Config::for_media_dir(Path::new("/nonexistent"));
        config.resolver.elasticsearch_host =
            Some("http://elastic:url%40pass@es:9200".parse().unwrap());
        config.resolver.elastic_password = Some("env-pass".parse().unwrap());
        config.replicas.redis_url = Some("redis://:redis-pass@r:6379".parse().unwrap());
        let found = secrets(&config);
        for secret in ["url%40pass", "url@pass", "env-pass", "redis-pass"] {
            assert!(found.iter().any(|s| s == secret), "{secret}: {found:?}");
        }
    }

    #[test]
    fn durations_read_as_set() {
        assert_eq!(human(Duration::from_secs(3)), "3s");
        assert_eq!(human(Duration::from_millis(300)), "300ms");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
    }
}
