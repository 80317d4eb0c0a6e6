//! Operations endpoints: `/healthz` (alive), `/readyz` (can serve), `/metrics`
//! (Prometheus). They are routed before the media limiter, so a saturated media path
//! never delays a health check or a scrape.

use http::{HeaderValue, Method, Response, StatusCode, header};

use crate::app::AppState;
use crate::body::Body;

/// `GET /healthz`: the process is up and its event loop answers.
pub fn healthz(method: &Method) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return super::method_not_allowed("GET, HEAD");
    }
    super::json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: every media root is readable. 503 when one is not, naming it; the
/// GUN relay's and the transcoder's states are reported too but do not fail readiness,
/// since GIF serving depends on neither.
pub fn readyz(state: &AppState, method: &Method) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return super::method_not_allowed("GET, HEAD");
    }
    let mut roots = serde_json::Map::new();
    let mut ready = true;
    for (name, path) in state.media_roots() {
        let readable = std::fs::read_dir(path).is_ok();
        ready &= readable;
        roots.insert(name.to_owned(), serde_json::Value::Bool(readable));
    }
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "mediaRoots": roots,
        "gun": state.gun_status(),
        // Reported, never failing readiness: GIFs are served without it.
        "transcoder": state.transcoder.status(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    super::json(status, &body)
}

/// `GET /metrics`: Prometheus text exposition of every counter.
pub fn metrics(state: &AppState, method: &Method) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return super::method_not_allowed("GET, HEAD");
    }
    let text = crate::metrics::render(state);
    let len = text.len();
    let mut response = Response::new(if method == Method::HEAD {
        Body::empty()
    } else {
        Body::full(text)
    });
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
