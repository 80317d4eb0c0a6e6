//! A stand-in for the GUN relay on loopback, scripted by the test and counting every
//! request it receives.
//!
//! It speaks the relay's API (SPEC §3): `GET /get?soul=`, `POST /put`, 404
//! `{"error":"Endpoint not found"}` for any other path. What a get answers is decided, in
//! order, by the soul's script (a queue of replies, one consumed per request), what a put
//! stored under the soul, and the default reply (404 `{"error":"Not found"}` unless set).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 `{"success":true,"data":…}` to a get, 200 `{"success":true,"soul":…}` to a put.
    Found(Value),
    /// 404 `{"error":"Not found"}`: the relay's record miss.
    NotFound,
    /// 404 `{"error":"Endpoint not found"}`: what the relay answers to an unknown path.
    EndpointNotFound,
    /// Any status with a raw body.
    Status(u16, String),
    /// Never answers (the connection stays open).
    Hang,
    /// Closes the connection without an answer.
    Drop,
    /// Waits, then answers.
    Delayed(Duration, Box<Reply>),
}

impl Reply {
    /// `Reply::Delayed` with the delay in milliseconds.
    pub fn after_ms(ms: u64, reply: Reply) -> Reply {
        Reply::Delayed(Duration::from_millis(ms), Box::new(reply))
    }
}

#[derive(Default)]
struct State {
    scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
    stored: Mutex<HashMap<String, Value>>,
    default_get: Mutex<Option<Reply>>,
    put_reply: Mutex<Option<Reply>>,
    requests: AtomicUsize,
    gets: Mutex<HashMap<String, usize>>,
    puts: Mutex<Vec<Value>>,
    queries: Mutex<Vec<String>>,
    active: AtomicUsize,
    max_active: AtomicUsize,
    connections: AtomicUsize,
}

/// The running stand-in. Stops with the test's runtime.
pub struct RelayStub {
    addr: SocketAddr,
    state: Arc<State>,
}

impl RelayStub {
    /// Starts a stand-in on 127.0.0.1 on a free port.
    pub async fn start() -> RelayStub {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind stub");
        let addr = listener.local_addr().expect("stub address");
        let state = Arc::new(State::default());
        let accept_state = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accept_state.connections.fetch_add(1, Ordering::SeqCst);
                let state = Arc::clone(&accept_state);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { serve(state, request).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RelayStub { addr, state }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues replies to the next gets of `soul` (one per request, in order).
    pub fn script(&self, soul: &str, replies: impl IntoIterator<Item = Reply>) {
        self.state
            .scripts
            .lock()
            .expect("lock")
            .entry(soul.to_owned())
            .or_default()
            .extend(replies);
    }

    /// Stores a record as if it had been put.
    pub fn store(&self, soul: &str, data: Value) {
        self.state
            .stored
            .lock()
            .expect("lock")
            .insert(soul.to_owned(), data);
    }

    /// The reply to gets of souls with no script and no stored record
    /// (`None`: 404 `{"error":"Not found"}`).
    pub fn set_default(&self, reply: Option<Reply>) {
        *self.state.default_get.lock().expect("lock") = reply;
    }

    /// The reply to every put (`None`: store the data and answer success).
    pub fn set_put_reply(&self, reply: Option<Reply>) {
        *self.state.put_reply.lock().expect("lock") = reply;
    }

    /// Every request received, on any path.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Gets received for `soul`.
    pub fn gets_of(&self, soul: &str) -> usize {
        self.state
            .gets
            .lock()
            .expect("lock")
            .get(soul)
            .copied()
            .unwrap_or(0)
    }

    /// The JSON bodies of the puts received, in order.
    pub fn put_bodies(&self) -> Vec<Value> {
        self.state.puts.lock().expect("lock").clone()
    }

    /// The raw query strings of the gets received, in order.
    pub fn queries(&self) -> Vec<String> {
        self.state.queries.lock().expect("lock").clone()
    }

    /// Most requests that were being answered at the same time.
    pub fn max_concurrent(&self) -> usize {
        self.state.max_active.load(Ordering::SeqCst)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}

/// Counts a request as being answered until dropped.
struct Active(Arc<State>);

impl Active {
    fn new(state: &Arc<State>) -> Active {
        let now = state.active.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_active.fetch_max(now, Ordering::SeqCst);
        Active(Arc::clone(state))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted connection drop")
    }
}

impl std::error::Error for DropConnection {}

async fn serve(
    state: Arc<State>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, DropConnection> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let _active = Active::new(&state);
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    if method == hyper::Method::GET && path == "/get" {
        let query = request.uri().query().unwrap_or_default().to_owned();
        state.queries.lock().expect("lock").push(query.clone());
        let soul = form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == "soul")
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default();
        if soul.is_empty() {
            return answer(Reply::Status(
                400,
                json!({"error": "Soul parameter required"}).to_string(),
            ))
            .await;
        }
        *state
            .gets
            .lock()
            .expect("lock")
            .entry(soul.clone())
            .or_default() += 1;
        let scripted = state
            .scripts
            .lock()
            .expect("lock")
            .get_mut(&soul)
            .and_then(VecDeque::pop_front);
        let reply = match scripted {
            Some(reply) => reply,
            None => match state.stored.lock().expect("lock").get(&soul) {
                Some(data) => Reply::Found(data.clone()),
                None => state
                    .default_get
                    .lock()
                    .expect("lock")
                    .clone()
                    .unwrap_or(Reply::NotFound),
            },
        };
        answer(reply).await
    } else if method == hyper::Method::POST && path == "/put" {
        let body = request
            .into_body()
            .collect()
            .await
            .map_err(|_| DropConnection)?
            .to_bytes();
        let Ok(parsed) = serde_json::from_slice::<Value>(&body) else {
            return answer(Reply::Status(
                400,
                json!({"error": "Invalid JSON"}).to_string(),
            ))
            .await;
        };
        state.puts.lock().expect("lock").push(parsed.clone());
        let scripted = state.put_reply.lock().expect("lock").clone();
        match scripted {
            Some(reply) => answer(reply).await,
            None => {
                let soul = parsed["soul"].as_str().unwrap_or_default().to_owned();
                state
                    .stored
                    .lock()
                    .expect("lock")
                    .insert(soul.clone(), parsed["data"].clone());
                json_response(200, json!({"success": true, "soul": soul}))
            }
        }
    } else {
        answer(Reply::EndpointNotFound).await
    }
}

async fn answer(reply: Reply) -> Result<Response<Full<Bytes>>, DropConnection> {
    let mut reply = reply;
    loop {
        match reply {
            Reply::Delayed(wait, next) => {
                tokio::time::sleep(wait).await;
                reply = *next;
            }
            Reply::Found(data) => {
                return json_response(200, json!({"success": true, "data": data}));
            }
            Reply::NotFound => return json_response(404, json!({"error": "Not found"})),
            Reply::EndpointNotFound => {
                return json_response(404, json!({"error": "Endpoint not found"}));
            }
            Reply::Status(status, body) => {
                let mut response = Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = StatusCode::from_u16(status).expect("status");
                return Ok(response);
            }
            Reply::Hang => {
                std::future::pending::<()>().await;
            }
            Reply::Drop => return Err(DropConnection),
        }
    }
}

fn json_response(status: u16, body: Value) -> Result<Response<Full<Bytes>>, DropConnection> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).expect("status");
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
