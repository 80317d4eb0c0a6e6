//! Responses every layer builds the same way: JSON bodies, the `{"error": …}` shape the
//! indexer's clients parse, the 404/405/204 answers, and the headers every response
//! carries. A leaf: it imports only the body type, so the gates, the router and every
//! handler can use it without reaching up the chain.

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use crate::body::Body;

/// `X-Request-Id`, accepted from the client or proxy when it is short and printable.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The Node app set `X-Content-Type-Options: nosniff` on every response; browsers rely
/// on it not to sniff a GIF URL into something executable.
pub const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");

/// A JSON response with the given status. Serialisation of our own types cannot fail in
/// practice; if it ever did, the client gets a plain 500 rather than a panic.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => json_bytes(status, Bytes::from(bytes)),
        Err(_) => json_bytes(
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from_static(br#"{"error":"Internal error"}"#),
        ),
    }
}

/// `{"error": message}` with the given status: the error shape every route uses
/// (and the one the indexer's clients already parse).
pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

/// The JSON 404 for unknown routes and for anything a path check refuses.
pub fn not_found() -> Response<Body> {
    json_error(StatusCode::NOT_FOUND, "Not found")
}

fn json_bytes(status: StatusCode, bytes: Bytes) -> Response<Body> {
    let len = bytes.len();
    let mut response = Response::new(Body::full(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

/// 405 with the `Allow` header a client needs to correct itself.
pub fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = json_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// 204 for `OPTIONS`, with `Allow` (CORS preflights get their headers from the CORS policy).
pub fn options(allow: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// Whether a response to a request that carried a body must close the connection: a
/// `413` or a `408` answers before the body was read to its end, so the connection
/// cannot carry another request (hyper closes it once it cannot drain the rest). Saying
/// `Connection: close` tells the client so; without it a keep-alive client (Node's
/// agent, the indexer's companion) puts the socket back in its pool and its next
/// request fails with `EPIPE` on a connection the server has closed, as nginx's
/// `413` avoids the same way.
pub(crate) fn closes_after_body(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_json_with_a_length() {
        let r = json_error(StatusCode::BAD_REQUEST, "nope");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/json; charset=utf-8"
        );
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "16");
        let r = method_not_allowed("GET, HEAD");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
        let r = options("POST, OPTIONS");
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()[header::ALLOW], "POST, OPTIONS");
    }

    #[test]
    fn only_answers_given_before_the_body_was_read_close_the_connection() {
        assert!(closes_after_body(StatusCode::PAYLOAD_TOO_LARGE));
        assert!(closes_after_body(StatusCode::REQUEST_TIMEOUT));
        for kept in [
            StatusCode::OK,
            StatusCode::BAD_REQUEST,
            StatusCode::NOT_FOUND,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            assert!(!closes_after_body(kept), "{kept}");
        }
    }
}
