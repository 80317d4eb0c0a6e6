//! The application: the shared [`AppState`], the route table (`routes::ROUTES`), and
//! the per-request wrapper every request goes through. Kept free of sockets so tests can
//! call [`App::handle`] directly.
//!
//! Per request, in order: the request id (the caller's, or a fresh one; carried in a
//! task-local so that `WARN`/`ERROR` lines name it, see [`crate::request_log`]), a `debug` span,
//! the RFC 9112 head checks (`Host`, transfer codings: `request_head`), a CORS preflight
//! answered before any route, one `matchit` lookup that yields the
//! route family, method gate, admission bound and handler; then the response gets its
//! CORS headers, `X-Request-Id` and `nosniff`, is counted by family and status class, and
//! its body counts the bytes it hands to the socket.
//!
//! Hand-written rather than tower-http layers, each for one reason:
//! - request id: `SetRequestIdLayer` stores the id in the request's extensions (a map
//!   allocated per request) and keeps a client's id of any length; here only a short
//!   printable id is kept and a fresh one is sliced from a pre-filled block.
//! - trace: `TraceLayer` wraps the response body in its own type (the server attaches its
//!   in-flight token to our body, and the zero-copy send recognises our body's mapped
//!   slices) and reads the clock twice per body frame even when nobody listens; our span
//!   is a `debug_span!`, a level check when disabled.
//! - `nosniff`: `SetResponseHeaderLayer` needs the app as a tower service with a boxed
//!   future (an allocation per request) to insert one static header.
//! - body limits and timeouts: `RequestBodyLimitLayer`/`TimeoutLayer` answer with their
//!   own non-JSON bodies and bound the whole request; `crate::request_body` bounds
//!   each route's body read in size and time and the route answers with its JSON error.
//! - CORS: see `crate::cors`.

use std::cell::RefCell;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Request, Response, header};
use tracing::Instrument;

use crate::access_log::{AccessLog, AccessRecord};
use crate::body::Body;
use crate::config::Config;
use crate::error::StartError;
use crate::http::request_head::{self, HeadError};
use crate::metrics::{HttpMetrics, ProcessMemory};
use crate::request_log;
use crate::response::{self, NOSNIFF, X_REQUEST_ID};
use crate::routes::{self, ROUTES, Route, RouteFamily, Router};
use crate::state::AppState;

/// Where a whole file's fields, rendered once per file version (`http::file_head`),
/// are in a response [`App::respond`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileFields {
    /// Put first into its `HeaderMap`: for hyper, and any reader of a plain `Response`.
    InMap,
    /// Left with its body ([`Body::file_head`]): for the fast lane, which writes their
    /// rendered lines whole.
    Rendered,
}

/// The router with its state. Cheap to clone (three `Arc`s), one clone per connection.
#[derive(Clone)]
pub struct App {
    state: Arc<AppState>,
    router: Arc<Router>,
    http: Arc<HttpMetrics>,
    access_log: AccessLog,
}

impl App {
    /// Builds every shared component from `config`; fails with a message naming the
    /// setting when a value or a media root is unusable.
    pub fn new(config: Config) -> Result<App, StartError> {
        let access_log = AccessLog::new(&config.log);
        let mut state = AppState::new(config)?;
        let router = Router::new(ROUTES).map_err(|message| StartError::InvalidSetting {
            option: "route table".to_owned(),
            message,
        })?;
        let http = HttpMetrics::new(RouteFamily::LABELS, &mut state.metrics);
        Ok(App {
            state: Arc::new(state),
            router: Arc::new(router),
            http: Arc::new(http),
            access_log,
        })
    }

    /// The shared state (for tests and for components that report on it).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Responses by route family and status class, and bytes sent.
    pub fn http_metrics(&self) -> &Arc<HttpMetrics> {
        &self.http
    }

    /// Answers one request. Never fails: every error becomes a response.
    // Not `async`: the future is `respond`'s own, with no layer around it to size,
    // move or poll.
    pub fn handle<B>(&self, request: Request<B>) -> impl Future<Output = Response<Body>> + '_
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let route = self.route_of(request.uri().path());
        self.respond(route, request, FileFields::InMap)
    }

    /// The route of a request's path (`request.uri().path()`), in [`ROUTES`].
    pub(crate) fn route_of(&self, path: &str) -> Option<&'static Route> {
        self.router.at(path)
    }

    /// [`App::handle`] for a request whose route the caller looked up with
    /// [`App::route_of`], or in [`ROUTES`] from the same path: hyper's lane looks it up
    /// as it makes the request's future; the fast lane, which needs the route to know
    /// that it takes the request, hands over the one it found rather than have it
    /// looked up twice.
    ///
    /// `fields` says where a whole file's rendered fields (`http::file_head`) are to be
    /// in the response: put first into its map, or left with its body for a lane that
    /// writes them whole.
    pub(crate) async fn respond<B>(
        &self,
        route: Option<&'static Route>,
        request: Request<B>,
        fields: FileFields,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = std::time::Instant::now();
        let id = request_id(request.headers());
        let family = route.map_or(RouteFamily::Other, |route| route.family);
        // `debug`: at the default `info` level the span is never built, so it costs a
        // level check rather than a formatted id, method and path per request.
        let span = tracing::debug_span!(
            "request",
            request_id = id.to_str().unwrap_or_default(),
            method = %request.method(),
            path = request.uri().path(),
        );
        // Only the Origin is needed after the request is consumed: keep just that, and
        // what the access line names (when this response is logged).
        let origin = request.headers().get(header::ORIGIN).cloned();
        let has_body = !http_body::Body::is_end_stream(request.body());
        // Boxed before the await (the box the body carries later anyway): across the
        // await the future holds a pointer, not the method, path and user agent, which
        // keeps it under `future_size`'s bound.
        let access = self.access_log.sampled().then(|| {
            Box::new(AccessRecord {
                started,
                method: request.method().clone(),
                path: request.uri().path_and_query().cloned(),
                route: family.label(),
                status: 0,
                request_id: HeaderValue::from_static(""),
                user_agent: request.headers().get(header::USER_AGENT).cloned(),
                client: None,
                bytes: 0,
            })
        });
        // The id rides along in a task-local, so that a warning or an error logged by
        // the handler names it at any log level (see `request_log`).
        let mut handled = std::pin::pin!(request_log::scope(
            id,
            self.dispatch(route, request).instrument(span.clone())
        ));
        let mut response = handled.as_mut().await;
        if fields == FileFields::InMap
            && let Some(file_head) = response.body_mut().take_file_head()
        {
            // Before the app's own fields, where the fast lane writes the lines.
            file_head.put_first(response.headers_mut());
        }
        let id = handled
            .as_mut()
            .take_value()
            .unwrap_or_else(|| HeaderValue::from_static("unknown"));

        let state = &self.state;
        self.http
            .record(family.index(), response.status(), started.elapsed());
        span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "answered"));
        state.cors.decorate(origin.as_ref(), response.headers_mut());
        if let Some(mut record) = access {
            record.status = response.status().as_u16();
            record.request_id = id.clone();
            response.body_mut().log_access(record);
        }
        let closes = has_body && response::closes_after_body(response.status());
        let headers = response.headers_mut();
        headers.insert(X_REQUEST_ID.clone(), id);
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF);
        if closes {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response.body_mut().count_into(self.http.bytes_sent);
        response
    }

    async fn dispatch<B>(
        &self,
        route: Option<&'static Route>,
        request: Request<B>,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let state = &*self.state;
        // A body hyper knows to be empty has no transfer coding (see `request_head`).
        let may_have_body = !http_body::Body::is_end_stream(request.body());
        if let Err(refused) =
            request_head::check(request.version(), request.headers(), may_have_body)
        {
            return refuse_head(refused);
        }
        if let Some(preflight) = state.cors.preflight(request.method(), request.headers()) {
            return preflight.map(|()| Body::empty());
        }
        let Some(route) = route else {
            if request.uri().path() == "*" {
                return routes::asterisk(request.method());
            }
            return response::not_found();
        };
        if let Some(refused) = route.methods.gate(request.method()) {
            return refused;
        }
        match state.gates.gate(route.gate.pick(request.uri())) {
            Some(gate) => {
                let mut request = request;
                gate.admit(|lease| {
                    // The handler may give its slot back while it waits for a
                    // transcode (`routes::variant`), which only a query string
                    // (`?format=`) asks for: the extensions' map is allocated on
                    // first insert, and a plain GIF request needs none.
                    if request.uri().query().is_some() {
                        request.extensions_mut().insert(lease);
                    }
                    route.handler.call(state, request)
                })
                .await
            }
            None => route.handler.call(state, request).await,
        }
    }
}

/// The answer to a request head RFC 9112 refuses (see [`request_head`]): `400` or `501`,
/// closing the connection when the body's framing is in doubt.
fn refuse_head(error: HeadError) -> Response<Body> {
    tracing::debug!(%error, "request head refused");
    let mut response = response::json_error(error.status(), &error.to_string());
    if error.closes_connection() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Fresh ids per block: one allocation and one fill for this many requests.
const IDS_PER_BLOCK: usize = 256;
/// Hex digits of an id (64 random bits).
const ID_LEN: usize = 16;

thread_local! {
    /// Fresh request ids of this worker thread, each `ID_LEN` bytes; taken from the front.
    static FRESH_IDS: RefCell<Bytes> = const { RefCell::new(Bytes::new()) };
}

/// A fresh request id: 16 lowercase hex digits of a random `u64`, sliced from a block
/// filled `IDS_PER_BLOCK` at a time, so a request pays neither `format!` nor an allocation.
fn fresh_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let id = FRESH_IDS.with(|block| {
        let mut block = block.borrow_mut();
        if block.len() < ID_LEN {
            let mut fill = BytesMut::with_capacity(ID_LEN * IDS_PER_BLOCK);
            for _ in 0..IDS_PER_BLOCK {
                let n = fastrand::u64(..);
                for shift in (0..ID_LEN).rev() {
                    fill.put_u8(HEX[(n >> (shift * 4)) as usize & 0xf]);
                }
            }
            *block = fill.freeze();
        }
        block.split_to(ID_LEN)
    });
    HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The request id to use: the caller's `X-Request-Id` when it is short and printable
/// (so a proxy's id follows the request through our logs), else a fresh one.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    if let Some(given) = headers.get(&X_REQUEST_ID)
        && (1..=128).contains(&given.len())
        && given.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return given.clone();
    }
    fresh_request_id()
}

/// Logs one line of traffic totals every `interval` until the returned task is aborted:
/// the replacement for the Node app's line per GIF and its "Memory Monitor". Counts
/// (requests, 4xx, 5xx, MiB sent) are since the previous line; the rest are now.
pub(crate) fn spawn_summary(
    app: &App,
    interval: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    let (state, http) = (Arc::clone(&app.state), Arc::clone(&app.http));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let (mut last_requests, mut last_bytes) = (0u64, 0u64);
        let (mut last_4xx, mut last_5xx) = (0u64, 0u64);
        let mib = |bytes: u64| (bytes as f64 / f64::from(1 << 20) * 100.0).round() / 100.0;
        loop {
            ticker.tick().await;
            let requests = http.total();
            let bytes = http.bytes_sent.sum();
            let class = |class: u16| {
                (0..RouteFamily::LABELS.len())
                    .map(|route| http.responses(route, class))
                    .sum::<u64>()
            };
            let (client_errors, server_errors) = (class(4), class(5));
            let media = &state.gates.media;
            let shed =
                media.counters().shed_queue_full.get() + media.counters().shed_queue_timeout.get();
            let memory = ProcessMemory::read();
            // Entries of /proc/self/fd: sockets, mapped files kept open, pipes.
            let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count());
            tracing::info!(
                requests = requests - last_requests,
                status_4xx = client_errors - last_4xx,
                status_5xx = server_errors - last_5xx,
                mib_sent = mib(bytes - last_bytes),
                // Same meanings as the metrics: slots taken, and bodies in the stalled pool.
                in_flight = media.slots_in_use(),
                stalled = media.stalled().len(),
                shed_total = shed,
                connections = state.connections.open.get(),
                mapped_files = state.store.cached_entries(),
                open_fds,
                rss_anon_mib = mib(memory.rss_anon),
                rss_file_mib = mib(memory.rss_file),
                "traffic summary"
            );
            (last_requests, last_bytes) = (requests, bytes);
            (last_4xx, last_5xx) = (client_errors, server_errors);
        }
    })
}

/// The URL path of one GIF under the web root, to print at start-up so a newcomer has
/// something to click. Looks one project folder deep; `None` if there is no GIF.
pub fn sample_url_path(config: &Config) -> Option<String> {
    let web = config.web_root();
    let mut projects: Vec<_> = std::fs::read_dir(&web).ok()?.flatten().collect();
    projects.sort_by_key(|e| e.file_name());
    for project in projects {
        let mut files: Vec<_> = std::fs::read_dir(project.path()).ok()?.flatten().collect();
        files.sort_by_key(|e| e.file_name());
        if let Some(gif) = files.iter().find(|f| {
            f.path()
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gif"))
        }) {
            return Some(format!(
                "/media/{}/{}",
                project.file_name().to_string_lossy(),
                gif.file_name().to_string_lossy()
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_16_hex_digits_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..(3 * IDS_PER_BLOCK) {
            let id = fresh_request_id();
            let text = id.to_str().expect("ascii");
            assert_eq!(text.len(), 16);
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert!(seen.insert(text.to_owned()), "ids repeat: {text}");
        }
    }

    #[test]
    fn caller_ids_are_kept_only_when_short_and_printable() {
        let mut headers = http::HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(
            &X_REQUEST_ID,
            HeaderValue::from_str(&"x".repeat(200)).unwrap(),
        );
        assert_eq!(request_id(&headers).len(), 16);
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&headers).len(), 16);
    }
}

#[cfg(test)]
mod future_size {
    //! hyper keeps one request future per connection (allocated with the connection)
    //! and moves it by value, so its size is memory per connection, idle ones included,
    //! and bytes copied per request. Rare routes box their state; these bounds keep a
    //! new inline await on a GIF route from growing it again unnoticed (it was 4,224
    //! bytes before the still, variant, negotiation and generated-audio states were
    //! boxed).
    use super::*;
    use std::path::Path;

    fn request() -> Request<http_body_util::Empty<Bytes>> {
        Request::new(http_body_util::Empty::new())
    }

    #[test]
    fn request_futures_stay_small() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("web")).unwrap();
        let app = App::new(Config::for_media_dir(dir.path())).unwrap();
        let state = app.state();
        let sizes = [
            (
                "App::handle",
                std::mem::size_of_val(&app.handle(request())),
                3072,
            ),
            (
                "Handler::call",
                std::mem::size_of_val(&routes::Handler::Media.call(state, request())),
                1536,
            ),
            (
                "media::handle",
                std::mem::size_of_val(&routes::media::handle(state, request())),
                1152,
            ),
            (
                "api_media::handle",
                std::mem::size_of_val(&routes::api_media::handle(state, request())),
                1152,
            ),
            (
                "Store::open",
                std::mem::size_of_val(&state.store.open(&state.web_root, Path::new("a.gif"))),
                512,
            ),
        ];
        for (future, size, bound) in sizes {
            assert!(size <= bound, "{future}: {size} bytes, bound {bound}");
        }
    }
}
