//! The application: shared state built once from the [`Config`], and the router that
//! sends each request to its route family. Kept free of sockets so tests can call
//! [`App::handle`] directly.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use tower::{Layer, ServiceExt};
use tracing::Instrument;

use crate::body::Body;
use crate::config::Config;
use crate::cors::{CorsPolicy, X_REQUEST_ID};
use crate::error::StartError;
use crate::limit::{BodyLimit, BodyLimitLayer, LimitSettings, Limiter};
use crate::metrics::{HttpCounters, RouteFamily};
use crate::routes;

/// Everything a handler may need, built once at start-up and shared by every connection.
pub struct AppState {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// Mapped files of every media root, bounded by entries and bytes.
    pub store: crate::store::Store,
    /// The threads every filesystem call of a request runs on (bounded; see `fs_pool`).
    pub fs: crate::fs_pool::FsPool,
    /// The `/media/<project>/<file>` root (`MEDIA_DIR/web`), canonicalised at start-up.
    pub web_root: crate::store::Root,
    /// The media concurrency limiter (its counters feed metrics).
    pub limiter: Arc<Limiter>,
    /// Connection counters, filled by the server's accept loop and sockets.
    pub connections: Arc<crate::server::ConnCounters>,
    /// Responses by route and status class, bytes sent.
    pub http: HttpCounters,
    /// The CORS allow-list.
    pub cors: CorsPolicy,
    /// `MEDIA_DIR` itself: content-addressed media (`<mediaId>/original`).
    pub media_root: crate::store::Root,
    /// Generated audio; may appear after start-up.
    pub generated_root: crate::store::LazyRoot,
    /// Parsed `manifest.json` files, bounded and revalidated.
    pub manifests: crate::manifest::ManifestCache,
    /// Verifies owners' tokens; `None` without `JWT_SECRET` (private media → 401).
    pub jwt: Option<crate::auth::JwtVerifier>,
    /// GIF metadata and still posters.
    pub gifs: crate::gif::Gifs,
    /// The one GUN relay client of the process (its negative cache, breaker and counters
    /// are shared by every caller); `None` when `GUN_PEERS` is unset.
    pub gun: Option<Arc<crate::gun::GunClient>>,
    /// The record resolver behind `POST /api/resolve`, with its process-wide cache.
    pub resolver: Arc<crate::resolve::Resolver>,
}

impl AppState {
    /// Each media root by name, for readiness checks.
    pub fn media_roots(&self) -> Vec<(&'static str, &Path)> {
        vec![
            ("web", self.web_root.path()),
            ("media", self.media_root.path()),
        ]
    }

    /// The GUN relay's state for `/readyz`.
    pub fn gun_status(&self) -> serde_json::Value {
        match &self.gun {
            None => serde_json::json!({ "configured": false }),
            Some(gun) => serde_json::json!({
                "configured": true,
                "relay": gun.base_url(),
                "breaker": gun.breaker_state(),
            }),
        }
    }
}

/// The router. Cheap to clone (two `Arc`s), one clone per connection.
#[derive(Clone)]
pub struct App {
    state: Arc<AppState>,
    /// Every route that sends file bytes, behind the body-lifetime limiter.
    media: BodyLimit<MediaRoutes>,
}

/// The byte-serving routes as one tower service, so a single [`BodyLimitLayer`] guards
/// them all while health, metrics and GUN routes stay outside it.
#[derive(Clone)]
pub struct MediaRoutes {
    state: Arc<AppState>,
}

impl<B> tower::Service<Request<B>> for MediaRoutes
where
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            let path = request.uri().path();
            let response = if path.starts_with(routes::media::PREFIX) {
                routes::media::handle(&state, request).await
            } else if path.starts_with(routes::api_media::PREFIX) {
                routes::api_media::handle(&state, request).await
            } else if path == routes::api_media::QUERY_PATH {
                routes::api_media::handle_query(&state, request).await
            } else {
                routes::generate::handle(&state, request).await
            };
            Ok(response)
        })
    }
}

/// The route family a path belongs to (for dispatch and metrics).
fn route_family(path: &str) -> RouteFamily {
    if path.starts_with(routes::media::PREFIX) {
        RouteFamily::Media
    } else if path.starts_with(routes::api_media::PREFIX) || path == routes::api_media::QUERY_PATH {
        RouteFamily::ApiMedia
    } else if routes::generate::matches(path) {
        RouteFamily::Generate
    } else if path.starts_with(routes::gun_relay::PREFIX) {
        RouteFamily::GunRelay
    } else if path == routes::resolve::PATH {
        RouteFamily::Resolve
    } else if matches!(path, "/healthz" | "/readyz" | "/metrics") {
        RouteFamily::Ops
    } else {
        RouteFamily::Other
    }
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
    let fresh = format!("{:016x}", fastrand::u64(..));
    HeaderValue::from_str(&fresh).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

impl App {
    /// Builds every shared component from `config`; fails with a message naming the
    /// setting when a value or a media root is unusable.
    pub fn new(config: Config) -> Result<App, StartError> {
        config.validate()?;
        let config = Arc::new(config);
        let fs = crate::fs_pool::FsPool::new(crate::fs_pool::FsPoolSettings::from_config(&config))
            .map_err(|error| StartError::InvalidSetting {
                option: "--fs-threads/FS_THREADS",
                message: format!("cannot start the filesystem threads: {error}"),
            })?;
        let store = crate::store::Store::new(&config, fs.clone());
        let web_root = crate::store::Root::open(&config.web_root()).map_err(|source| {
            StartError::MediaRoot {
                option: "--media-dir/MEDIA_DIR",
                path: config.web_root(),
                source,
            }
        })?;
        let media_root = crate::store::Root::open(&config.media_dir).map_err(|source| {
            StartError::MediaRoot {
                option: "--media-dir/MEDIA_DIR",
                path: config.media_dir.clone(),
                source,
            }
        })?;
        let generated_root = crate::store::LazyRoot::new(config.generated_root());
        if generated_root.get().is_none() {
            tracing::warn!(
                path = %generated_root.configured_path().display(),
                "generated-media folder (--generated-media-dir/GENERATED_MEDIA_DIR) is missing; \
                 /api/generate/media and /api/media?id= answer 404 until it exists"
            );
        }
        let jwt = config
            .jwt_secret
            .as_ref()
            .and_then(crate::auth::JwtVerifier::new);
        if jwt.is_none() {
            tracing::warn!(
                "JWT_SECRET is not set: private /api/media items will not be served (401)"
            );
        }
        let manifests = crate::manifest::ManifestCache::new(
            config.manifest_cache_entries,
            vec![config.media_dir.clone(), media_root.path().to_path_buf()],
            fs.clone(),
            config.revalidate_window,
        );
        let gifs = crate::gif::Gifs::new(&config, fs.clone()).map_err(|source| {
            StartError::DerivedDir {
                path: config.derived_dir.clone(),
                source,
            }
        })?;
        let gun = match config.gun.gun_peers {
            Some(_) => {
                let client =
                    crate::gun::GunClient::new(&config.gun).map_err(|error| match error {
                        crate::gun::GunError::Config { option, message } => {
                            StartError::InvalidSetting { option, message }
                        }
                        other => StartError::InvalidSetting {
                            option: "--gun-peers/GUN_PEERS",
                            message: other.to_string(),
                        },
                    })?;
                Some(Arc::new(client))
            }
            None => None,
        };
        let resolver =
            crate::resolve::Resolver::new(&config.resolver, gun.clone()).map_err(|error| {
                StartError::InvalidSetting {
                    option: "--elasticsearch-host/ELASTICSEARCHHOST",
                    message: error.to_string(),
                }
            })?;
        let cors = CorsPolicy::parse(&config.cors_origins).map_err(|message| {
            StartError::InvalidSetting {
                option: "--cors-origins/CORS_ORIGINS",
                message,
            }
        })?;
        let limiter = Arc::new(Limiter::new(LimitSettings {
            max_in_flight: config.max_in_flight,
            max_queue: config.max_queue,
            queue_timeout: config.queue_timeout,
            retry_after_secs: 1,
        }));
        let state = Arc::new(AppState {
            config,
            fs,
            store,
            web_root,
            limiter: Arc::clone(&limiter),
            connections: Arc::default(),
            http: HttpCounters::default(),
            cors,
            media_root,
            generated_root,
            manifests,
            jwt,
            gifs,
            gun,
            resolver: Arc::new(resolver),
        });
        let media = BodyLimitLayer::new(limiter).layer(MediaRoutes {
            state: Arc::clone(&state),
        });
        Ok(App { state, media })
    }

    /// The shared state (for tests and for components that report on it).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Answers one request. Never fails: every error becomes a response.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let id = request_id(request.headers());
        let family = route_family(request.uri().path());
        let span = tracing::info_span!(
            "request",
            id = id.to_str().unwrap_or_default(),
            method = %request.method(),
            path = request.uri().path(),
        );
        // Only the Origin is needed after the request is consumed: keep just that.
        let origin = request.headers().get(header::ORIGIN).cloned();
        let mut response = self
            .dispatch(family, request)
            .instrument(span.clone())
            .await;

        let state = &self.state;
        state.http.record(family, response.status());
        span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "answered"));
        let headers = response.headers_mut();
        state.cors.decorate(origin.as_ref(), headers);
        headers.insert(X_REQUEST_ID.clone(), id);
        // The Node app set this on every response; browsers rely on it not to sniff
        // a GIF URL into something executable.
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
            .body_mut()
            .count_into(Arc::clone(&state.http.bytes_sent));
        response
    }

    async fn dispatch<B>(&self, family: RouteFamily, request: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Some(preflight) = self
            .state
            .cors
            .preflight(request.method(), request.headers())
        {
            return preflight;
        }
        let method: &Method = request.method();
        match family {
            RouteFamily::Media | RouteFamily::ApiMedia | RouteFamily::Generate => {
                match self.media.clone().oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
            RouteFamily::Ops => match request.uri().path() {
                "/healthz" => routes::ops::healthz(method),
                "/readyz" => routes::ops::readyz(&self.state, method).await,
                _ => routes::ops::metrics(&self.state, method),
            },
            RouteFamily::GunRelay => routes::gun_relay::handle(&self.state, request).await,
            RouteFamily::Resolve => routes::resolve::handle(&self.state, request).await,
            _ => routes::not_found(),
        }
    }
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
