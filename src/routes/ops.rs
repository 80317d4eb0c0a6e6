//! Operations endpoints: `/healthz` (alive), `/readyz` (can serve), `/metrics`
//! (Prometheus). Their routes are declared without an admission bound, so a saturated
//! media path never delays a health check or a scrape. Methods (`GET`, `HEAD`) are gated
//! by the route table.

use http::{HeaderValue, Method, Response, StatusCode, header};

use crate::body::Body;
use crate::response;
use crate::state::AppState;

/// `GET /healthz`: the process is up and its event loop answers.
pub fn healthz() -> Response<Body> {
    response::json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: every media root is readable. 503 when one is not, naming it; the
/// GUN relay's state is reported too but does not fail readiness, since GIF serving
/// does not depend on it.
pub fn readyz(state: &AppState) -> Response<Body> {
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
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    response::json(status, &body)
}

/// `GET /metrics`: the OpenMetrics text of the registry every component registered in.
pub fn metrics(state: &AppState, method: &Method) -> Response<Body> {
    let text = crate::metrics::encode(&state.metrics);
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
