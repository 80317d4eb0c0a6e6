//! Operations endpoints: `/healthz` (alive), `/readyz` (can serve), `/metrics`
//! (Prometheus). Their routes are declared without an admission bound, so a saturated
//! media path never delays a health check or a scrape. Methods (`GET`, `HEAD`) are gated
//! by the route table.

use std::path::PathBuf;

use http::{HeaderValue, Method, Response, StatusCode, header};

use crate::body::Body;
use crate::exposition::Format;
use crate::response;
use crate::state::AppState;

/// `GET /healthz`: the process is up and its event loop answers.
pub fn healthz() -> Response<Body> {
    response::json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

/// Lists every media root on the filesystem pool (re-creating the derived folder if
/// `derived` and it is missing, as any use would), records each outcome in
/// `oip_media_media_root_readable{role}`, and logs an unreadable one. Returns whether all
/// are readable, each root's outcome by role, and the pool's error when it could not
/// answer in time (then the gauges keep their last values).
async fn check_roots(
    state: &AppState,
    derived: bool,
) -> (
    bool,
    serde_json::Map<String, serde_json::Value>,
    Option<String>,
) {
    let roots: Vec<(&'static str, PathBuf)> = state
        .media_roots()
        .into_iter()
        .map(|(name, path)| (name, path.to_path_buf()))
        .collect();
    let shared_derived = derived.then(|| state.gifs.shared_derived());
    let checked = state
        .fs
        .run(move || {
            if let Some(derived) = shared_derived {
                let _ = derived.check();
            }
            roots
                .into_iter()
                .map(|(name, path)| {
                    let read = std::fs::read_dir(&path).map(drop);
                    (name, path, read)
                })
                .collect::<Vec<_>>()
        })
        .await;
    // The body names a root by its role and says yes or no; its path and the I/O error
    // go to the log only, where the operator looks.
    let mut roots = serde_json::Map::new();
    match checked {
        Ok(checked) => {
            let mut ready = true;
            for (name, path, read) in checked {
                if let Err(error) = &read {
                    tracing::warn!(root = name, path = %path.display(), %error, "media root not readable");
                }
                ready &= read.is_ok();
                state.roots_readable.set(name, read.is_ok());
                roots.insert(name.to_owned(), serde_json::Value::Bool(read.is_ok()));
            }
            (ready, roots, None)
        }
        Err(error) => (false, roots, Some(error.to_string())),
    }
}

/// `GET /readyz`: every media root is readable. 503 when one is not, naming it; the
/// GUN relay's, Elasticsearch's, Redis's, the transcoder's and the derived folder's
/// states are reported too but do not fail readiness, since GIF serving depends on none
/// of them. The directory checks run on the filesystem
/// pool: when it cannot answer in time (a hung mount, a saturated pool) the service is
/// not ready, and says so promptly instead of hanging the probe.
pub async fn readyz(state: &AppState) -> Response<Body> {
    let (ready, roots, filesystem) = check_roots(state, true).await;
    let mut body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "mediaRoots": roots,
        "gun": state.gun_status(),
        // Reported, never failing readiness: media is served without it; a failing
        // Elasticsearch leaves references as DIDs and says why (`state`).
        "elasticsearch": state.resolver.elastic_status(),
        // Reported, never failing readiness: without Redis a replica serves from its
        // own caches (misses trusted for --gun-miss-ttl-without-redis).
        "redis": state.replicas.status(),
        // Reported, never failing readiness: GIFs are served without it.
        "transcoder": state.transcoder.status(),
        // Reported, never failing readiness: GIFs are served without it, and stills
        // from memory while it is unusable.
        "derived": state.gifs.derived().status(),
    });
    if let Some(filesystem) = filesystem {
        body["filesystem"] = filesystem.into();
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = response::json(status, &body);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /metrics`: the registry every component registered in, in the Prometheus text
/// format 0.0.4 or, when the scraper asks for it, OpenMetrics
/// ([`crate::exposition::negotiate`]).
/// Each scrape first checks the media roots (as `/readyz` does, on the filesystem pool)
/// so that `oip_media_media_root_readable` is current.
pub async fn metrics(
    state: &AppState,
    method: &Method,
    headers: &http::HeaderMap,
) -> Response<Body> {
    let _ = check_roots(state, false).await;
    let format =
        crate::exposition::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let openmetrics = crate::metrics::encode(&state.metrics);
    let text = match format {
        Format::OpenMetrics => openmetrics,
        Format::Text => crate::exposition::openmetrics_to_text(&openmetrics),
    };
    let len = text.len();
    let mut response = Response::new(if method == Method::HEAD {
        Body::empty()
    } else {
        Body::full(text)
    });
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::VARY, HeaderValue::from_static("Accept"));
    response
}
