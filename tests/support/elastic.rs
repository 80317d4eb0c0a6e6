//! An Elasticsearch stand-in on a loopback port: answers `POST /<index>/_search` from
//! records held in memory, records every search it gets, and checks that each search
//! has exactly the shape the resolver promises (one `terms` query per field over the
//! same DIDs). A search of any other shape is answered 400 and recorded as a
//! violation, so a test that checks [`ElasticStandIn::violations`] fails.
//!
//! Like Elasticsearch 8 it can require HTTP basic auth (401 with
//! `WWW-Authenticate: Basic` otherwise) and serve `https://` only, with a certificate
//! for 127.0.0.1 and `localhost` signed by a CA made at test time ([`TestCa`]).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio_rustls::rustls;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// One search received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    /// The index searched.
    pub index: String,
    /// The DIDs asked for, in the order sent.
    pub dids: Vec<String>,
}

#[derive(Default)]
struct State {
    indices: HashMap<String, Vec<Value>>,
    searches: Mutex<Vec<Search>>,
    violations: Mutex<Vec<String>>,
    /// When non-zero, every search is answered with this status.
    fail_with: AtomicU16,
    /// Milliseconds to wait before answering a search.
    delay_ms: AtomicU64,
    /// `Authorization` header value every request must carry, when set.
    authorization: Option<String>,
    /// Requests refused 401 for their credentials.
    auth_failures: AtomicU64,
    /// TLS handshakes that failed (the client did not trust the certificate, …).
    tls_failures: AtomicU64,
}

/// A CA made at test time and a server certificate it signed for 127.0.0.1 and
/// `localhost`: what Elasticsearch 8 sets up on first start (`http_ca.crt`).
pub struct TestCa {
    /// The CA certificate, PEM (the content of `http_ca.crt`).
    pub ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new() -> Arc<TestCa> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "oip-media test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "elasticsearch stand-in");
        let cert = params.signed_by(&key, &issuer).unwrap();
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
        );
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key_der)
            .unwrap();
        Arc::new(TestCa {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
        })
    }

    /// Writes the CA certificate to `dir/http_ca.crt` and returns its path.
    pub fn write_ca_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("http_ca.crt");
        std::fs::write(&path, &self.ca_pem).unwrap();
        path
    }
}

/// How the stand-in is reached, beyond its records.
#[derive(Default, Clone)]
pub struct Access {
    /// Basic-auth user and password every request must carry.
    pub credentials: Option<(String, String)>,
    /// Serve `https://` only, with this CA's server certificate.
    pub tls: Option<Arc<TestCa>>,
}

/// The running stand-in. Stops when dropped (its task is aborted).
pub struct ElasticStandIn {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
    https: bool,
}

impl Drop for ElasticStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ElasticStandIn {
    /// Serves `records` in the `records` index and `organizations` in the
    /// `organizations` index.
    pub async fn start(records: Vec<Value>, organizations: Vec<Value>) -> ElasticStandIn {
        ElasticStandIn::start_with(records, organizations, Access::default()).await
    }

    /// Like [`ElasticStandIn::start`], reached as `access` says (basic auth, TLS).
    pub async fn start_with(
        records: Vec<Value>,
        organizations: Vec<Value>,
        access: Access,
    ) -> ElasticStandIn {
        let authorization = access.credentials.map(|(user, password)| {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {token}")
        });
        let state = Arc::new(State {
            indices: HashMap::from([
                ("records".to_owned(), records),
                ("organizations".to_owned(), organizations),
            ]),
            authorization,
            ..State::default()
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::clone(&state);
        let acceptor = access
            .tls
            .as_ref()
            .map(|ca| tokio_rustls::TlsAcceptor::from(Arc::clone(&ca.server)));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&served);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = {
                        let state = Arc::clone(&state);
                        service_fn(move |request| {
                            let state = Arc::clone(&state);
                            async move {
                                Ok::<_, std::convert::Infallible>(answer(&state, request).await)
                            }
                        })
                    };
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => {
                                let _ = http.serve_connection(TokioIo::new(tls), service).await;
                            }
                            Err(_) => {
                                state.tls_failures.fetch_add(1, Ordering::SeqCst);
                            }
                        },
                    }
                });
            }
        });
        ElasticStandIn {
            addr,
            state,
            task,
            https: access.tls.is_some(),
        }
    }

    /// The URL to configure as `ELASTICSEARCHHOST`.
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Requests refused 401 for missing or wrong credentials so far.
    pub fn auth_failures(&self) -> u64 {
        self.state.auth_failures.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed so far.
    pub fn tls_failures(&self) -> u64 {
        self.state.tls_failures.load(Ordering::SeqCst)
    }

    /// Every search received so far.
    pub fn searches(&self) -> Vec<Search> {
        self.state.searches.lock().unwrap().clone()
    }

    /// Searches of malformed shape received so far (should stay empty).
    pub fn violations(&self) -> Vec<String> {
        self.state.violations.lock().unwrap().clone()
    }

    /// From now on, wait `delay` before answering each search.
    pub fn delay(&self, delay: std::time::Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// From now on, answer every search with `status` (0: answer normally again).
    pub fn fail_with(&self, status: u16) {
        self.state.fail_with.store(status, Ordering::SeqCst);
    }
}

async fn answer(state: &State, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if let Some(expected) = &state.authorization {
        let given = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            state.auth_failures.fetch_add(1, Ordering::SeqCst);
            // Elasticsearch's answer, which names the user: the resolver must not log it.
            let mut response = respond(
                StatusCode::UNAUTHORIZED,
                json!({"error": {"type": "security_exception",
                       "reason": "unable to authenticate user [elastic] for REST request [/records/_search]"},
                       "status": 401}),
            );
            response.headers_mut().insert(
                "www-authenticate",
                "Basic realm=\"security\" charset=\"UTF-8\""
                    .parse()
                    .unwrap(),
            );
            return response;
        }
    }
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let Some(index) = path
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix("/_search"))
        .filter(|_| method == hyper::Method::POST)
    else {
        return violation(state, format!("unexpected request {method} {path}"));
    };
    let query: Value = match serde_json::from_slice(&body) {
        Ok(query) => query,
        Err(e) => return violation(state, format!("search body is not JSON: {e}")),
    };
    let dids = match check_shape(&query) {
        Ok(dids) => dids,
        Err(message) => return violation(state, message),
    };
    state.searches.lock().unwrap().push(Search {
        index: index.to_owned(),
        dids: dids.clone(),
    });
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let status = state.fail_with.load(Ordering::SeqCst);
    if status != 0 {
        return respond(
            StatusCode::from_u16(status).unwrap(),
            json!({"error": {"type": "stand_in_failure"}, "status": status}),
        );
    }
    let Some(documents) = state.indices.get(index) else {
        return respond(
            StatusCode::NOT_FOUND,
            json!({"error": {"type": "index_not_found_exception"}, "status": 404}),
        );
    };
    let size = query["size"].as_u64().unwrap_or(10) as usize;
    let hits: Vec<Value> = documents
        .iter()
        .filter(|doc| {
            ["did", "didTx"].iter().any(|field| {
                doc["oip"][field]
                    .as_str()
                    .is_some_and(|d| dids.iter().any(|w| w == d))
            })
        })
        .take(size)
        .map(|doc| json!({"_index": index, "_id": doc["oip"]["did"], "_source": doc}))
        .collect();
    respond(
        StatusCode::OK,
        json!({"took": 1, "hits": {"total": {"value": hits.len()}, "hits": hits}}),
    )
}

/// The DIDs of a well-formed search, or what is wrong with it.
fn check_shape(query: &Value) -> Result<Vec<String>, String> {
    let keys: Vec<&String> = query
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    if keys.len() != 2 || query.get("size").is_none() || query.get("query").is_none() {
        return Err(format!(
            "search must have exactly `size` and `query`: {query}"
        ));
    }
    let should = query
        .pointer("/query/bool/should")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("no query.bool.should: {query}"))?;
    if should.len() != 2 {
        return Err(format!("should must hold two clauses: {query}"));
    }
    let terms = |i: usize, field: &str| -> Result<Vec<String>, String> {
        should[i]
            .pointer(&format!("/terms/{}", field.replace('/', "~1")))
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect())
            .ok_or_else(|| format!("clause {i} is not a terms query on {field}: {query}"))
    };
    let by_did = terms(0, "oip.did.keyword")?;
    let by_tx = terms(1, "oip.didTx.keyword")?;
    if by_did != by_tx {
        return Err(format!("the two terms lists differ: {query}"));
    }
    let mut distinct = by_did.clone();
    distinct.sort();
    distinct.dedup();
    if distinct.len() != by_did.len() || by_did.is_empty() {
        return Err(format!("terms must be distinct and non-empty: {query}"));
    }
    if query["size"].as_u64().unwrap_or(0) < by_did.len() as u64 {
        return Err(format!("size is smaller than the number of DIDs: {query}"));
    }
    Ok(by_did)
}

fn violation(state: &State, message: String) -> Response<Full<Bytes>> {
    state.violations.lock().unwrap().push(message.clone());
    respond(StatusCode::BAD_REQUEST, json!({"error": message}))
}

fn respond(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}
