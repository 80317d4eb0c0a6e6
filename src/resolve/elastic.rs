//! The Elasticsearch source: every non-GUN reference of one resolution level in one
//! `terms` search of the indexer's `records` index, then one of `organizations` for
//! what is still missing — where the indexer sent two `term` searches per reference.
//!
//! Reached as the indexer reaches it: HTTP basic auth from `ELASTICCLIENTUSERNAME` /
//! `ELASTICCLIENTPASSWORD` (or the URL's user-info), `http://` or `https://` with
//! rustls, trusting the system's roots plus an optional CA file (Elasticsearch 8's
//! `http_ca.crt`). A failure to get an answer — refused credentials, a certificate not
//! trusted, no connection, a timeout, an error status — is never "not found": the
//! references stay DIDs and are not remembered as missing, the failure is counted
//! by kind (`oip_media_elastic_errors_total`), logged at `error` (at most once a
//! minute per kind, without credentials or user-info) and shown in `/readyz`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::settings::ResolverSettings;
use super::source::{Batch, Fetched, RecordSource};
use crate::secret::Secret;
use crate::settings::{env_name, flag};

/// The indices searched, in order; the second only for what the first did not have
/// (the indexer's order).
pub const INDICES: [&str; 2] = ["records", "organizations"];

/// Most DIDs in one search. Each DID can match by `did` and by `didTx`, so a search
/// asks for twice as many hits; 1024 keeps that well under Elasticsearch's default
/// 10,000-hit window (and a search's answer within [`MAX_RESPONSE_BYTES`]); a level
/// at the default lookup budget (2,500) takes three searches.
pub const MAX_DIDS_PER_SEARCH: usize = 1024;

/// Largest search response read. A search returns at most
/// 2 × [`MAX_DIDS_PER_SEARCH`] records; this refuses a pathological answer (a
/// misconfigured host, an index of huge documents) instead of buffering it.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Least time between two `error` lines for the same kind of failure: a dead or
/// misconfigured Elasticsearch fails every lookup, and one line a minute says so.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Why the source could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum ElasticSetupError {
    /// The URL does not parse, or is not `http`/`https`. The URL is shown without
    /// its user-info.
    #[error("`{url}` is not a usable Elasticsearch URL: {reason}")]
    Url {
        /// The URL as configured, user-info removed.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `--elastic-ca-file` cannot be read or holds no PEM certificate.
    #[error("cannot use {} `{path}`: {reason}", flag::<ResolverSettings>("elastic_ca_file"))]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built (for `https://`, also when the system has no
    /// root certificates and no CA file is given): reqwest's error and its causes.
    #[error("cannot build the Elasticsearch client: {0}")]
    Client(String),
}

/// Why one search failed.
#[derive(Debug, thiserror::Error)]
pub enum ElasticError {
    /// Connecting, sending or reading failed (including the timeout and TLS).
    #[error("Elasticsearch request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// Elasticsearch refused the credentials (401) or their rights (403). Its body is
    /// not kept: it names the user.
    #[error(
        "Elasticsearch refused the request ({status}): check {} / {} and the user's rights on the indices",
        env_name::<ResolverSettings>("elastic_username"),
        env_name::<ResolverSettings>("elastic_password")
    )]
    Auth {
        /// 401 or 403.
        status: u16,
    },
    /// Elasticsearch answered with another error status.
    #[error("Elasticsearch answered {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The start of the body, for the log.
        body: String,
    },
    /// The index name does not make a URL below the host.
    #[error("cannot build the search URL: {0}")]
    Url(String),
    /// The answer was larger than this source reads.
    #[error("Elasticsearch answer over {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// The answer was not JSON.
    #[error("Elasticsearch answer is not JSON: {0}")]
    Body(#[from] serde_json::Error),
    /// The answer was JSON but not a search response.
    #[error("Elasticsearch answer is not a search response: {0}")]
    Shape(String),
}

/// The kinds of failure counted in `oip_media_elastic_errors_total{kind}` and shown
/// in `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// 401 or 403: the credentials are wrong, missing, or lack rights.
    Auth,
    /// The TLS handshake failed: a certificate not trusted (see `--elastic-ca-file`),
    /// a name that does not match, `https://` to a plain-http port.
    Tls,
    /// No connection (refused, unreachable, DNS).
    Connect,
    /// No answer within `--elasticsearch-timeout`.
    Timeout,
    /// Another error status.
    Status,
    /// An answer that is not a search response (not JSON, too large, wrong shape).
    Response,
}

impl FailureKind {
    /// Every kind, in the order of the metric's labels.
    pub const ALL: [FailureKind; 6] = [
        FailureKind::Auth,
        FailureKind::Tls,
        FailureKind::Connect,
        FailureKind::Timeout,
        FailureKind::Status,
        FailureKind::Response,
    ];

    /// The label value and `/readyz` state.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Auth => "auth",
            FailureKind::Tls => "tls",
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Status => "status",
            FailureKind::Response => "response",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl ElasticError {
    /// Which kind of failure this is.
    pub fn kind(&self) -> FailureKind {
        match self {
            ElasticError::Http(error) if is_tls(error) => FailureKind::Tls,
            ElasticError::Http(error) if error.is_timeout() => FailureKind::Timeout,
            ElasticError::Http(error) if error.is_connect() => FailureKind::Connect,
            ElasticError::Http(error) if error.is_body() || error.is_decode() => {
                FailureKind::Response
            }
            ElasticError::Http(_) => FailureKind::Connect,
            ElasticError::Auth { .. } => FailureKind::Auth,
            ElasticError::Status { .. } | ElasticError::Url(_) => FailureKind::Status,
            ElasticError::TooLarge | ElasticError::Body(_) | ElasticError::Shape(_) => {
                FailureKind::Response
            }
        }
    }
}

/// Whether a request error is a TLS failure: a rustls error somewhere in its chain.
/// tokio-rustls hands it on inside an `io::Error` (itself inside another, from the
/// connector), and an `io::Error`'s `source` skips what it wraps, so each one's
/// `get_ref` is followed too.
fn is_tls(error: &reqwest::Error) -> bool {
    fn in_chain(error: &(dyn std::error::Error + 'static)) -> bool {
        if error.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && in_chain(inner)
        {
            return true;
        }
        error.source().is_some_and(in_chain)
    }
    in_chain(error)
}

/// What the source has seen of Elasticsearch: failures by kind (for `/metrics`), the
/// last outcome (for `/readyz`), and when each kind was last logged.
#[derive(Debug, Default)]
pub struct ElasticHealth {
    errors: [Counter; 6],
    /// 0: no search yet; 1: the last search was answered; 2 + kind: it failed so.
    last: AtomicU8,
    /// Searches answered.
    answered: AtomicU64,
    logged: Mutex<[Option<std::time::Instant>; 6]>,
}

impl ElasticHealth {
    /// Failures of `kind` so far.
    pub fn errors(&self, kind: FailureKind) -> u64 {
        self.errors[kind.index()].get()
    }

    /// The state `/readyz` shows: `unknown` before the first search, `ok` when the
    /// last one was answered, else the kind of its failure.
    pub fn state(&self) -> &'static str {
        match self.last.load(Ordering::Relaxed) {
            0 => "unknown",
            1 => "ok",
            n => FailureKind::ALL
                .get(usize::from(n) - 2)
                .map_or("unknown", |kind| kind.as_str()),
        }
    }

    fn answered(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        self.last.store(1, Ordering::Relaxed);
    }

    /// Counts a failure, and logs it at `error` unless that kind was logged in the
    /// last [`ERROR_LOG_INTERVAL`]. The message holds no credentials: the base URL has
    /// no user-info, and an auth failure's body (which names the user) is not kept.
    fn failed(&self, index: &str, error: &ElasticError, dids: usize) {
        let kind = error.kind();
        self.errors[kind.index()].inc();
        self.last.store(2 + kind as u8, Ordering::Relaxed);
        let now = std::time::Instant::now();
        let due = {
            let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
            let slot = &mut logged[kind.index()];
            let due = slot.is_none_or(|at| now.duration_since(at) >= ERROR_LOG_INTERVAL);
            if due {
                *slot = Some(now);
            }
            due
        };
        if due {
            tracing::error!(
                kind = kind.as_str(),
                index,
                dids,
                total = self.errors(kind),
                %error,
                "Elasticsearch search failed; its references stay DIDs (not cached as missing). \
                 Logged at most once a minute per kind; see oip_media_elastic_errors_total"
            );
        }
    }

    /// Whether the last search was answered: 1 if so, 0 if it failed or none has run
    /// yet (nothing known; `/readyz` says `unknown` then).
    pub fn up(&self) -> u64 {
        u64::from(self.last.load(Ordering::Relaxed) == 1)
    }

    /// Registers `elastic_errors` (`oip_media_elastic_errors_total{kind}`) and
    /// `elastic_up` (read from the shared health at scrape time).
    pub fn register(
        self: &std::sync::Arc<Self>,
        registry: &mut prometheus_client::registry::Registry,
    ) {
        let health = std::sync::Arc::clone(self);
        registry.register(
            "elastic_up",
            "1 when the last Elasticsearch search was answered, 0 when it failed (see elastic_errors_total) or none has run yet",
            crate::metrics::ReadAtScrape::gauge(move || health.up()),
        );
        let [auth, tls, connect, timeout, status, response] = &self.errors;
        registry.register(
            "elastic_errors",
            "Elasticsearch searches that failed, by kind (none is ever counted as not found)",
            crate::metrics::by_kind([
                ("auth", auth),
                ("tls", tls),
                ("connect", connect),
                ("timeout", timeout),
                ("status", status),
                ("response", response),
            ]),
        );
    }
}

/// How to reach Elasticsearch: its URL and timeout, and the indexer's credentials and
/// CA file when there are any.
#[derive(Debug, Clone, Default)]
pub struct ElasticAccess {
    /// `http(s)://[user:pass@]host:port[/prefix]`.
    pub host: String,
    /// Limit of one search (`--elasticsearch-timeout`).
    pub timeout: Duration,
    /// `ELASTICCLIENTUSERNAME`; wins over the URL's user-info.
    pub username: Option<String>,
    /// `ELASTICCLIENTPASSWORD`.
    pub password: Option<Secret>,
    /// `--elastic-ca-file`.
    pub ca_file: Option<PathBuf>,
}

/// HTTP basic-auth credentials; the password is a [`Secret`], so `Debug` hides it.
#[derive(Debug, Clone)]
struct Credentials {
    username: String,
    password: Secret,
}

/// Looks records up in the indexer's Elasticsearch.
pub struct ElasticSource {
    client: reqwest::Client,
    /// The host URL without user-info, ending with `/` so index paths join below any
    /// path prefix.
    base: reqwest::Url,
    credentials: Option<Credentials>,
    health: Arc<ElasticHealth>,
}

impl ElasticSource {
    /// A source reached as `access` says.
    pub fn with_access(access: &ElasticAccess) -> Result<ElasticSource, ElasticSetupError> {
        let mut base =
            reqwest::Url::parse(access.host.trim()).map_err(|e| ElasticSetupError::Url {
                url: crate::secret::UrlSetting::from(access.host.as_str()).redacted(),
                reason: e.to_string(),
            })?;
        let from_url = url_credentials(&base);
        let _ = base.set_username("");
        let _ = base.set_password(None);
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ElasticSetupError::Url {
                url: base.to_string(),
                reason: format!("scheme `{}` is not http or https", base.scheme()),
            });
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let credentials = match access.username.as_deref().filter(|u| !u.is_empty()) {
            Some(username) => Some(Credentials {
                username: username.to_owned(),
                password: access.password.clone().unwrap_or_else(|| Secret::new("")),
            }),
            None => from_url,
        };
        let mut client = reqwest::Client::builder()
            .timeout(access.timeout)
            .connect_timeout(access.timeout)
            // Never sent on to another host: a redirect would carry no credentials
            // anyway, and a search has no business being redirected.
            .redirect(reqwest::redirect::Policy::none());
        match &access.ca_file {
            Some(path) => client = client.tls_certs_merge(read_ca_file(path)?),
            // Plain http needs no root certificates: without this, the client loads the
            // system's roots and cannot be built on a host that has none.
            None if base.scheme() == "http" => {
                client = client.tls_certs_only(Vec::<reqwest::Certificate>::new());
            }
            None => {}
        }
        let client = client.build().map_err(|error| {
            // reqwest's own message is "builder error"; the cause is in its source.
            let mut reason = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                reason = format!("{reason}: {cause}");
                source = cause.source();
            }
            if base.scheme() == "https" {
                reason.push_str(&format!(
                    " (an https:// Elasticsearch needs the system's root certificates \
                     or {})",
                    flag::<ResolverSettings>("elastic_ca_file")
                ));
            }
            ElasticSetupError::Client(reason)
        })?;
        Ok(ElasticSource {
            client,
            base,
            credentials,
            health: Arc::new(ElasticHealth::default()),
        })
    }

    /// What this source has seen of Elasticsearch (shared, for `/metrics` and `/readyz`).
    pub fn health(&self) -> &Arc<ElasticHealth> {
        &self.health
    }

    /// Whether searches go over TLS.
    pub fn is_https(&self) -> bool {
        self.base.scheme() == "https"
    }

    /// Whether searches carry credentials.
    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    /// The `_source` of every hit of one `terms` search of `index` for `dids`.
    pub async fn search(&self, index: &str, dids: &[String]) -> Result<Vec<Value>, ElasticError> {
        let url = self
            .base
            .join(&format!("{index}/_search"))
            .map_err(|e| ElasticError::Url(e.to_string()))?;
        let query = search_body(dids);
        let mut request = self.client.post(url).json(&query);
        if let Some(credentials) = &self.credentials {
            request =
                request.basic_auth(&credentials.username, Some(credentials.password.expose()));
        }
        let mut response = request.send().await?;
        let status = response.status();
        if matches!(
            status,
            reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN
        ) {
            return Err(ElasticError::Auth {
                status: status.as_u16(),
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(ElasticError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        if status == reqwest::StatusCode::NOT_FOUND
            && String::from_utf8_lossy(&body).contains("index_not_found_exception")
        {
            // A fresh node may have no `organizations` index: nothing to find there.
            return Ok(Vec::new());
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(ElasticError::Status {
                status: status.as_u16(),
                body: text.chars().take(200).collect(),
            });
        }
        hit_sources(&body)
    }

    /// Looks up one chunk: `records` first, `organizations` for the rest.
    async fn fetch_chunk(&self, dids: &[String], deadline: Instant) -> Batch {
        let mut found: HashMap<String, Value> = HashMap::new();
        let mut requests = 0;
        let mut failure: Option<Fetched> = None;
        for index in INDICES {
            let wanted: Vec<String> = dids
                .iter()
                .filter(|d| !found.contains_key(d.as_str()))
                .cloned()
                .collect();
            if wanted.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                failure = Some(Fetched::TimedOut);
                break;
            }
            requests += 1;
            match tokio::time::timeout_at(deadline, self.search(index, &wanted)).await {
                Ok(Ok(hits)) => {
                    self.health.answered();
                    match_hits(&wanted, hits, &mut found);
                }
                Ok(Err(error)) => {
                    self.health.failed(index, &error, wanted.len());
                    failure = Some(Fetched::Failed(error.to_string()));
                    break;
                }
                Err(_) => {
                    failure = Some(Fetched::TimedOut);
                    break;
                }
            }
        }
        let answers = dids
            .iter()
            .map(|did| match (found.remove(did.as_str()), &failure) {
                (Some(record), _) => Fetched::Found(record),
                (None, Some(failure)) => failure.clone(),
                (None, None) => Fetched::Missing,
            })
            .collect();
        Batch { answers, requests }
    }
}

impl RecordSource for ElasticSource {
    fn fetch<'a>(&'a self, dids: &'a [String], deadline: Instant) -> BoxFuture<'a, Batch> {
        Box::pin(async move {
            let mut batch = Batch::default();
            for chunk in dids.chunks(MAX_DIDS_PER_SEARCH) {
                let part = self.fetch_chunk(chunk, deadline).await;
                batch.answers.extend(part.answers);
                batch.requests += part.requests;
            }
            batch
        })
    }
}

/// The credentials in a URL's user-info (percent-decoded), if it has a user.
fn url_credentials(url: &reqwest::Url) -> Option<Credentials> {
    if url.username().is_empty() {
        return None;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    Some(Credentials {
        username: decode(url.username()),
        password: Secret::new(decode(url.password().unwrap_or(""))),
    })
}

/// The certificates of a PEM CA file (Elasticsearch 8's `http_ca.crt`).
fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, ElasticSetupError> {
    let bad = |reason: String| ElasticSetupError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The search the indexer's two `term` queries per reference become: one `terms`
/// query per field, either matching.
pub fn search_body(dids: &[String]) -> Value {
    json!({
        "size": dids.len() * 2,
        "query": {"bool": {"should": [
            {"terms": {"oip.did.keyword": dids}},
            {"terms": {"oip.didTx.keyword": dids}},
        ]}}
    })
}

/// Files each hit under the wanted DIDs it carries as `oip.did` or `oip.didTx`; the
/// first hit for a DID wins (Elasticsearch's order).
fn match_hits(wanted: &[String], hits: Vec<Value>, found: &mut HashMap<String, Value>) {
    let wanted: HashSet<&str> = wanted.iter().map(String::as_str).collect();
    for hit in hits {
        for field in ["did", "didTx"] {
            let Some(did) = hit
                .get("oip")
                .and_then(|o| o.get(field))
                .and_then(Value::as_str)
            else {
                continue;
            };
            if wanted.contains(did) && !found.contains_key(did) {
                found.insert(did.to_owned(), hit.clone());
            }
        }
    }
}

/// The `_source` of every hit in a search response (`hits.hits[]._source`).
///
/// Parsed as a `Value` through `str::parse`, which is compiled inside serde_json,
/// rather than into typed structs, whose deserialiser would be instantiated here
/// (unoptimised in debug builds, where a level of 1,000 records is tens of MiB).
fn hit_sources(body: &[u8]) -> Result<Vec<Value>, ElasticError> {
    let text = std::str::from_utf8(body).map_err(|e| ElasticError::Shape(e.to_string()))?;
    let mut response: Value = text.parse()?;
    let hits = match response.pointer_mut("/hits/hits").map(Value::take) {
        Some(Value::Array(hits)) => hits,
        _ => return Err(ElasticError::Shape("no hits.hits array".into())),
    };
    Ok(hits
        .into_iter()
        .filter_map(|mut hit| match hit.get_mut("_source").map(Value::take) {
            Some(source @ Value::Object(_)) => Some(source),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source for the Elasticsearch at `host`, with the credentials the URL carries.
    fn source_at(host: &str, timeout: Duration) -> Result<ElasticSource, ElasticSetupError> {
        ElasticSource::with_access(&ElasticAccess {
            host: host.to_owned(),
            timeout,
            ..ElasticAccess::default()
        })
    }

    #[test]
    fn urls_are_checked_and_joined_below_a_prefix() {
        let es = source_at("http://es:9200", Duration::from_secs(1)).unwrap();
        assert_eq!(
            es.base.join("records/_search").unwrap().as_str(),
            "http://es:9200/records/_search"
        );
        let es = source_at("http://h/prefix", Duration::from_secs(1)).unwrap();
        assert_eq!(
            es.base.join("records/_search").unwrap().as_str(),
            "http://h/prefix/records/_search"
        );
        let es = source_at("https://es:9200", Duration::from_secs(1)).unwrap();
        assert!(es.is_https() && !es.has_credentials());
        assert!(source_at("es:9200 nope", Duration::from_secs(1)).is_err());
        let error = source_at("ftp://u:secret@es:21", Duration::from_secs(1))
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("not http or https"), "{error}");
        assert!(
            !error.contains("secret") && !error.contains("u:"),
            "{error}"
        );
    }

    #[test]
    fn credentials_come_from_the_settings_or_else_the_url_and_leave_the_url() {
        let es = source_at("https://el%40stic:p%3Ass@es:9200", Duration::from_secs(1)).unwrap();
        let credentials = es.credentials.as_ref().unwrap();
        assert_eq!(credentials.username, "el@stic");
        assert_eq!(credentials.password.expose(), "p:ss");
        assert_eq!(es.base.as_str(), "https://es:9200/");
        assert!(!format!("{credentials:?}").contains("p:ss"));

        let es = ElasticSource::with_access(&ElasticAccess {
            host: "http://urluser:urlpass@es:9200".into(),
            timeout: Duration::from_secs(1),
            username: Some("elastic".into()),
            password: Some(Secret::new("changeme")),
            ca_file: None,
        })
        .unwrap();
        let credentials = es.credentials.as_ref().unwrap();
        assert_eq!(
            (credentials.username.as_str(), credentials.password.expose()),
            ("elastic", "changeme")
        );
        assert_eq!(es.base.as_str(), "http://es:9200/");
    }

    #[test]
    fn an_unusable_ca_file_stops_the_start_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("http_ca.crt");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for path in [empty, dir.path().join("missing.crt")] {
            let error = ElasticSource::with_access(&ElasticAccess {
                host: "https://es:9200".into(),
                timeout: Duration::from_secs(1),
                ca_file: Some(path.clone()),
                ..ElasticAccess::default()
            })
            .err()
            .unwrap();
            assert!(matches!(error, ElasticSetupError::CaFile { .. }), "{error}");
            assert!(error.to_string().contains(&*path.to_string_lossy()));
        }
    }

    #[test]
    fn failures_are_counted_by_kind_and_shown_as_the_last_state() {
        let health = ElasticHealth::default();
        assert_eq!(health.state(), "unknown");
        health.failed("records", &ElasticError::Auth { status: 401 }, 3);
        assert_eq!(health.state(), "auth");
        health.failed("records", &ElasticError::Auth { status: 403 }, 3);
        health.failed("records", &ElasticError::TooLarge, 3);
        assert_eq!(health.state(), "response");
        health.failed(
            "records",
            &ElasticError::Status {
                status: 500,
                body: String::new(),
            },
            1,
        );
        assert_eq!(health.errors(FailureKind::Auth), 2);
        assert_eq!(health.errors(FailureKind::Response), 1);
        assert_eq!(health.errors(FailureKind::Status), 1);
        assert_eq!(health.errors(FailureKind::Tls), 0);
        health.answered();
        assert_eq!(health.state(), "ok");
        let message = ElasticError::Auth { status: 401 }.to_string();
        assert!(message.contains("ELASTICCLIENTUSERNAME"), "{message}");
    }

    #[test]
    fn hit_sources_are_taken_from_a_search_response() {
        let body = br#"{"took":1,"hits":{"total":{"value":2},"hits":[
            {"_id":"1","_source":{"oip":{"did":"did:a"}}},{"_id":"2"},{"_source":{"oip":{"did":"did:b"}}}]}}"#;
        let sources = hit_sources(body).unwrap();
        assert_eq!(
            sources,
            vec![
                json!({"oip": {"did": "did:a"}}),
                json!({"oip": {"did": "did:b"}})
            ]
        );
        assert!(matches!(
            hit_sources(b"{\"error\":{}}"),
            Err(ElasticError::Shape(_))
        ));
        assert!(matches!(hit_sources(b"<html>"), Err(ElasticError::Body(_))));
    }

    #[test]
    fn hits_match_by_did_or_did_tx_first_one_winning() {
        let all = vec!["did:a".to_owned(), "did:b".to_owned(), "did:c".to_owned()];
        let mut found = HashMap::new();
        match_hits(
            &all,
            vec![
                json!({"oip": {"did": "did:a"}, "n": 1}),
                json!({"oip": {"didTx": "did:b"}, "n": 2}),
                json!({"oip": {"did": "did:a"}, "n": 3}),
                json!({"oip": {"did": "did:zzz"}}),
            ],
            &mut found,
        );
        assert_eq!(found["did:a"]["n"], 1);
        assert_eq!(found["did:b"]["n"], 2);
        assert!(!found.contains_key("did:c"));
    }
}
