//! The response head, written byte for byte as hyper 1.x writes it for the responses the
//! app gives (a body of known length, never `Transfer-Encoding`): pure, tested without a
//! socket; `tests/fast_lane.rs` compares whole responses of both lanes.
//!
//! What hyper does and this repeats (`proto/h1/role.rs` `Server::encode`,
//! `proto/h1/conn.rs` `enforce_version`):
//! - to an HTTP/1.0 request it answers `HTTP/1.0`, adding `connection: keep-alive` when
//!   the connection stays open; to an HTTP/1.1 request that closes it, `connection: close`
//!   (appended to the app's own `Connection` value if it has one);
//! - header lines in the map's order, names lowercase, every value of `connection` on
//!   one line joined by `, `;
//! - `content-length` from the app's header when the body has bytes (or the request was
//!   `HEAD`); otherwise `content-length: 0` at the end, except for `HEAD`, `204` and
//!   `304`; no body bytes for `HEAD`, `204` and `304`;
//! - `date` last, unless the app set one; then the empty line.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{CONNECTION, CONTENT_LENGTH, DATE, HeaderValue, TRAILER, TRANSFER_ENCODING};
use http::{HeaderMap, StatusCode, Version};

/// How the response goes out once its head is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Framing {
    /// Body bytes to send after the head (0 for `HEAD`, `204`, `304`).
    pub(crate) body_len: u64,
    /// Close the connection after this response.
    pub(crate) close: bool,
}

/// What [`encode`] needs to know about the request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asked {
    /// The request was `HEAD`.
    pub(crate) is_head: bool,
    pub(crate) version: Version,
    /// The connection may stay open after this request (the request's own wish, and
    /// the server not shutting down).
    pub(crate) keep_alive: bool,
}

fn token_in(value: &HeaderValue, token: &str) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// hyper's `enforce_version`: fixes `Connection` for the request's version and the
/// connection's fate. Returns whether the connection stays open as far as it knows.
fn enforce_version(asked: Asked, response_version: Version, headers: &mut HeaderMap) -> bool {
    let mut keep_alive = asked.keep_alive;
    match asked.version {
        Version::HTTP_10 => {
            let outgoing_keep_alive = headers
                .get_all(CONNECTION)
                .iter()
                .any(|v| token_in(v, "keep-alive"));
            if !outgoing_keep_alive {
                if response_version == Version::HTTP_10 {
                    keep_alive = false;
                } else if keep_alive {
                    headers.append(CONNECTION, HeaderValue::from_static("keep-alive"));
                }
            }
        }
        _ if !keep_alive
            && !headers
                .get_all(CONNECTION)
                .iter()
                .any(|v| token_in(v, "close")) =>
        {
            headers.append(CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    keep_alive
}

fn can_have_body(is_head: bool, status: StatusCode) -> bool {
    !is_head
        && !status.is_informational()
        && !matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
}

fn can_have_content_length(status: StatusCode) -> bool {
    !status.is_informational()
        && !matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
}

/// Writes the head of a response with `body_len` body bytes to a request as `asked` into
/// `dst`, and says how the rest goes out. `headers` gets hyper's `Connection` fix-ups.
///
/// `file_lines`: a whole file's fields, rendered once per file version
/// (`http::file_head`), which belong first among the response's fields: hyper writes
/// them there from the map (`FileHead::put_first`). They hold the app's
/// `Content-Length`, which a `200` with a body or to `HEAD` keeps (as hyper keeps the
/// map's); the app sends them only for a non-empty file's `200`.
pub(crate) fn encode(
    asked: Asked,
    status: StatusCode,
    response_version: Version,
    headers: &mut HeaderMap,
    file_lines: Option<&[u8]>,
    body_len: u64,
    dst: &mut Vec<u8>,
) -> Framing {
    let keep_alive = enforce_version(asked, response_version, headers);
    let mut close = !keep_alive;
    let version = if asked.version == Version::HTTP_10 {
        Version::HTTP_10
    } else {
        response_version
    };
    dst.reserve(64 + headers.len() * 32);
    if version == Version::HTTP_11 && status == StatusCode::OK {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(if version == Version::HTTP_10 {
            b"HTTP/1.0 "
        } else {
            b"HTTP/1.1 "
        });
        dst.extend_from_slice(status.as_str().as_bytes());
        dst.push(b' ');
        dst.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    // The body as hyper sees it: none when empty, else of known length.
    let body = (body_len > 0).then_some(body_len);
    let is_head = asked.is_head;
    let mut wrote_len = false;
    if let Some(lines) = file_lines {
        debug_assert!(
            status == StatusCode::OK && (body.is_some() || is_head),
            "a file's rendered fields with a {status} of {body_len} bytes"
        );
        dst.extend_from_slice(lines);
        wrote_len = true;
    }
    let mut wrote_date = false;
    let mut previous: Option<&http::HeaderName> = None;
    // The line of a name written without its end yet (content-length, connection).
    let mut open_line = false;
    for (name, value) in headers.iter() {
        let same_name = previous == Some(name);
        if !same_name && open_line {
            dst.extend_from_slice(b"\r\n");
            open_line = false;
        }
        previous = Some(name);
        if *name == CONTENT_LENGTH {
            if body.is_some() {
                if !same_name {
                    dst.extend_from_slice(b"content-length: ");
                    dst.extend_from_slice(value.as_bytes());
                    open_line = true;
                    wrote_len = true;
                }
                continue;
            }
            if !is_head {
                continue;
            }
            wrote_len = true;
        } else if *name == CONNECTION {
            if token_in(value, "close") {
                close = true;
            }
            if same_name && open_line {
                dst.extend_from_slice(b", ");
            } else {
                dst.extend_from_slice(b"connection: ");
            }
            dst.extend_from_slice(value.as_bytes());
            open_line = true;
            continue;
        } else if *name == TRANSFER_ENCODING || *name == TRAILER {
            // Never set by the app (its bodies have a known length); hyper would frame
            // a chunked body, which the lane does not write.
            continue;
        } else if *name == DATE {
            wrote_date = true;
        }
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    if open_line {
        dst.extend_from_slice(b"\r\n");
    }
    if !wrote_len {
        match body {
            None if can_have_content_length(status) && !is_head => {
                dst.extend_from_slice(b"content-length: 0\r\n");
            }
            Some(len) if can_have_content_length(status) => {
                dst.extend_from_slice(b"content-length: ");
                dst.extend_from_slice(itoa(len).as_bytes());
                dst.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
    }
    if wrote_date {
        dst.extend_from_slice(b"\r\n");
    } else {
        dst.extend_from_slice(b"date: ");
        extend_date(dst);
        dst.extend_from_slice(b"\r\n\r\n");
    }
    let body_len = if can_have_body(asked.is_head, status) {
        body_len
    } else {
        0
    };
    Framing { body_len, close }
}

fn itoa(n: u64) -> String {
    n.to_string()
}

/// The `Date` value of the current second, rendered once per second per thread (as
/// hyper caches its own).
#[derive(Clone, Copy)]
struct CachedDate {
    second: u64,
    text: [u8; 29],
}

thread_local! {
    static DATE_CACHE: RefCell<CachedDate> = const {
        RefCell::new(CachedDate { second: u64::MAX, text: [0; 29] })
    };
}

fn extend_date(dst: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.second != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == cache.text.len() {
                cache.text.copy_from_slice(text.as_bytes());
                cache.second = second;
            } else {
                dst.extend_from_slice(text.as_bytes());
                return;
            }
        }
        dst.extend_from_slice(&cache.text);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn head(
        method: &Method,
        version: Version,
        keep_alive: bool,
        status: StatusCode,
        headers: &[(&'static str, &'static str)],
        body_len: u64,
    ) -> (String, Framing) {
        head_with(method, version, keep_alive, status, headers, None, body_len)
    }

    /// [`head`], with a file's rendered lines (`file_lines`).
    fn head_with(
        method: &Method,
        version: Version,
        keep_alive: bool,
        status: StatusCode,
        headers: &[(&'static str, &'static str)],
        file_lines: Option<&[u8]>,
        body_len: u64,
    ) -> (String, Framing) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, HeaderValue::from_static(value));
        }
        let asked = Asked {
            is_head: *method == Method::HEAD,
            version,
            keep_alive,
        };
        let mut dst = Vec::new();
        let framing = encode(
            asked,
            status,
            Version::HTTP_11,
            &mut map,
            file_lines,
            body_len,
            &mut dst,
        );
        let text = String::from_utf8(dst).unwrap();
        // The date's value changes; its place and shape do not.
        let (before, date) = text.rsplit_once("date: ").expect("a date line");
        assert_eq!(date.len(), 29 + 4, "{date:?}");
        assert!(date.ends_with(" GMT\r\n\r\n"), "{date:?}");
        (format!("{before}date: D\r\n\r\n"), framing)
    }

    const GET: &Method = &Method::GET;
    const HEAD: &Method = &Method::HEAD;

    #[test]
    fn a_get_of_a_file_keeps_the_apps_length_and_order() {
        let (text, framing) = head(
            GET,
            Version::HTTP_11,
            true,
            StatusCode::OK,
            &[("content-type", "image/gif"), ("content-length", "10")],
            10,
        );
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-type: image/gif\r\ncontent-length: 10\r\ndate: D\r\n\r\n"
        );
        assert_eq!(
            framing,
            Framing {
                body_len: 10,
                close: false
            }
        );
    }

    #[test]
    fn an_empty_body_gets_a_zero_length_at_the_end_except_head_204_304() {
        let (text, framing) = head(
            GET,
            Version::HTTP_11,
            true,
            StatusCode::NOT_FOUND,
            &[("content-length", "0"), ("x-a", "1")],
            0,
        );
        assert_eq!(
            text,
            "HTTP/1.1 404 Not Found\r\nx-a: 1\r\ncontent-length: 0\r\ndate: D\r\n\r\n"
        );
        assert_eq!(framing.body_len, 0);
        let (text, _) = head(
            GET,
            Version::HTTP_11,
            true,
            StatusCode::NOT_MODIFIED,
            &[("etag", "\"e\"")],
            0,
        );
        assert_eq!(
            text,
            "HTTP/1.1 304 Not Modified\r\netag: \"e\"\r\ndate: D\r\n\r\n"
        );
        // HEAD keeps the app's length of the body it does not send.
        let (text, framing) = head(
            HEAD,
            Version::HTTP_11,
            true,
            StatusCode::OK,
            &[("content-length", "99")],
            0,
        );
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-length: 99\r\ndate: D\r\n\r\n"
        );
        assert_eq!(framing.body_len, 0);
        let (text, _) = head(GET, Version::HTTP_11, true, StatusCode::OK, &[], 7);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-length: 7\r\ndate: D\r\n\r\n"
        );
    }

    #[test]
    fn a_files_rendered_fields_come_first_and_carry_the_length() {
        let lines: &[u8] = b"etag: \"e\"\r\ncontent-length: 10\r\n";
        let written = |method: &Method, version, keep_alive, body_len| {
            head_with(
                method,
                version,
                keep_alive,
                StatusCode::OK,
                &[("x-request-id", "i")],
                Some(lines),
                body_len,
            )
        };
        let (text, framing) = written(GET, Version::HTTP_11, true, 10);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\netag: \"e\"\r\ncontent-length: 10\r\nx-request-id: i\r\ndate: D\r\n\r\n"
        );
        assert_eq!(
            framing,
            Framing {
                body_len: 10,
                close: false
            }
        );
        // HEAD keeps the length of the body it does not send, and no second one.
        let (text, framing) = written(HEAD, Version::HTTP_11, true, 0);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\netag: \"e\"\r\ncontent-length: 10\r\nx-request-id: i\r\ndate: D\r\n\r\n"
        );
        assert_eq!(framing.body_len, 0);
        // hyper's own `Connection` goes after the app's fields, as it appends it to the map.
        let (text, framing) = written(GET, Version::HTTP_11, false, 10);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\netag: \"e\"\r\ncontent-length: 10\r\nx-request-id: i\r\nconnection: close\r\ndate: D\r\n\r\n"
        );
        assert!(framing.close);
        let (text, _) = written(GET, Version::HTTP_10, true, 10);
        assert_eq!(
            text,
            "HTTP/1.0 200 OK\r\netag: \"e\"\r\ncontent-length: 10\r\nx-request-id: i\r\nconnection: keep-alive\r\ndate: D\r\n\r\n"
        );
    }

    #[test]
    fn connection_follows_the_request() {
        let (text, framing) = head(GET, Version::HTTP_11, false, StatusCode::OK, &[], 0);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\ndate: D\r\n\r\n"
        );
        assert!(framing.close);
        let (text, framing) = head(GET, Version::HTTP_10, true, StatusCode::OK, &[], 0);
        assert_eq!(
            text,
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\ndate: D\r\n\r\n"
        );
        assert!(!framing.close);
        let (text, framing) = head(GET, Version::HTTP_10, false, StatusCode::OK, &[], 0);
        assert_eq!(
            text,
            "HTTP/1.0 200 OK\r\ncontent-length: 0\r\ndate: D\r\n\r\n"
        );
        assert!(framing.close);
        // The app's own `close` closes, once, on one line with any other value.
        let (text, framing) = head(
            GET,
            Version::HTTP_11,
            true,
            StatusCode::BAD_REQUEST,
            &[("connection", "close"), ("x", "y")],
            0,
        );
        assert_eq!(
            text,
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\nx: y\r\ncontent-length: 0\r\ndate: D\r\n\r\n"
        );
        assert!(framing.close);
    }
}
