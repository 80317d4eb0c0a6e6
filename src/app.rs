//! The application: shared state built once from the [`Config`], and the router that
//! sends each request to its route family. Kept free of sockets so tests can call
//! [`App::handle`] directly.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};

use crate::body::Body;
use crate::config::Config;
use crate::error::StartError;
use crate::routes;

/// Everything a handler may need, built once at start-up and shared by every connection.
pub struct AppState {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// Mapped files of every media root, bounded by entries and bytes.
    pub store: crate::store::Store,
    /// The `/media/<project>/<file>` root (`MEDIA_DIR/web`), canonicalised at start-up.
    pub web_root: crate::store::Root,
    /// The one GUN relay client of the process (its negative cache, breaker and counters
    /// are shared by every caller); `None` when `GUN_PEERS` is unset.
    pub gun: Option<Arc<crate::gun::GunClient>>,
    /// The record resolver behind `POST /api/resolve`, with its process-wide cache.
    pub resolver: Arc<crate::resolve::Resolver>,
}

/// The router. Cheap to clone (one `Arc`), one clone per connection.
#[derive(Clone)]
pub struct App {
    state: Arc<AppState>,
}

impl App {
    /// Builds every shared component from `config`; fails with a message naming the
    /// setting when a media root is unusable.
    pub fn new(config: Config) -> Result<App, StartError> {
        let config = Arc::new(config);
        let store = crate::store::Store::new(&config);
        let web_root = crate::store::Root::open(&config.web_root()).map_err(|source| {
            StartError::MediaRoot {
                option: "--media-dir/MEDIA_DIR",
                path: config.web_root(),
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
        Ok(App {
            state: Arc::new(AppState {
                config,
                store,
                web_root,
                gun,
                resolver: Arc::new(resolver),
            }),
        })
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
        let path = request.uri().path();
        let mut response = if path.starts_with(routes::media::PREFIX) {
            routes::media::handle(&self.state, request).await
        } else if path.starts_with(routes::gun_relay::PREFIX) {
            routes::gun_relay::handle(&self.state, request).await
        } else if path == routes::resolve::PATH {
            routes::resolve::handle(&self.state, request).await
        } else {
            routes::not_found()
        };
        // The Node app set this on every response; browsers rely on it not to sniff
        // a GIF URL into something executable.
        response.headers_mut().insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
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
