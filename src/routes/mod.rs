//! Route handlers, one file per route family. Each handler turns a request into a
//! `Response<Body>`; JSON helpers here keep every error body the same shape.

pub mod api_media;
pub mod file_response;
pub mod generate;
pub mod gun_relay;
pub mod media;
pub mod ops;
pub mod resolve;
pub mod still;
pub mod variant;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use crate::body::Body;

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

/// The method gate of every byte-serving route: `None` for GET and HEAD (serve them),
/// else the answer — 204 + `Allow` for OPTIONS, 405 + `Allow` for anything else.
pub fn read_only_method(method: &http::Method) -> Option<Response<Body>> {
    const ALLOW: &str = "GET, HEAD, OPTIONS";
    match *method {
        http::Method::GET | http::Method::HEAD => None,
        http::Method::OPTIONS => Some(options(ALLOW)),
        _ => Some(method_not_allowed(ALLOW)),
    }
}

/// 204 for `OPTIONS`, with `Allow` (CORS preflights get their headers from the CORS layer).
pub fn options(allow: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}
