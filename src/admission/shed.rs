//! The one "retry later" answer: `503 Service Unavailable` with `Retry-After` and
//! `Cache-Control: no-store`, and a JSON body saying why. Every place that turns work
//! away for now builds it here — a gate that sheds a request ([`shed_response`]), the
//! filesystem pool that is full, a GIF that changed while it was read, a transcoder that
//! is busy — so a change to what a client is told to do next is made once.

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::Body;

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Shed {
    /// The wait queue was full.
    #[error("wait queue full")]
    QueueFull,
    /// The request waited `queue_timeout` without getting a slot.
    #[error("waited too long for a slot")]
    QueueTimeout,
}

/// `503` + `Retry-After: retry_after_secs` + `Cache-Control: no-store`, with `body` as
/// JSON: what was refused was not the resource, and the next try may well succeed.
pub(crate) fn retry_later(body: &serde_json::Value, retry_after_secs: u64) -> Response<Body> {
    let mut response = crate::response::json(StatusCode::SERVICE_UNAVAILABLE, body);
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The 503 for work shed by a gate (`retry_after_secs` in `Retry-After`): JSON naming
/// the reason, never cached. Also what a handler answers when work it waits on inside
/// a component (a GIF decoding slot, a body budget) was shed.
pub fn shed_response(why: Shed, retry_after_secs: u64) -> Response<Body> {
    retry_later(
        &serde_json::json!({ "error": "Server busy, retry shortly", "reason": why.to_string() }),
        retry_after_secs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shed_request_is_told_when_to_come_back_and_nothing_keeps_the_answer() {
        let response = shed_response(Shed::QueueFull, 3);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            crate::response::json(StatusCode::OK, &serde_json::json!({})).headers()
                [header::CONTENT_TYPE]
        );
    }
}
