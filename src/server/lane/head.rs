//! Which request heads the lane takes, and the request it builds from one: pure, tested
//! without a socket.
//!
//! The lane takes a strict subset of HTTP/1.0 and HTTP/1.1 and leaves everything else
//! to hyper, so that what it takes it answers exactly as hyper would and what it does
//! not take hyper answers (or refuses) as it always did:
//!
//! - `GET` or `HEAD`, HTTP/1.0 or 1.1, an origin-form target (`/…`) on a file route;
//! - no body: no `Transfer-Encoding`, no `Content-Length` but a single `0`, no `Expect`,
//!   no `Upgrade`;
//! - `Connection` naming only `close` and `keep-alive`;
//! - every line ended by CRLF (no bare LF), no NUL, no byte past ASCII, no obs-fold, no
//!   empty line before the request line, at most [`MAX_HEADERS`] fields: httparse
//!   accepts some of these and hyper answers them its own way, so they go to hyper.
//!
//! httparse (the parser hyper uses) finds the parts; the checks above are made on what
//! it found, and the request is built from slices of the same bytes, as hyper builds it.

use std::ops::Range;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body_util::Empty;

/// Most header fields the lane parses; a head with more goes to hyper (which takes 100).
pub(crate) const MAX_HEADERS: usize = 32;

/// Longest request target the lane takes; hyper answers `414` past 65,534 bytes.
const MAX_TARGET: usize = 8 * 1024;

/// What the lane makes of the bytes buffered so far.
///
/// `Take` is large (the fields' offsets) but transient: the lane builds the request from
/// it at once and never holds it across an await, so it sizes no connection's future.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// A complete head the lane may take, if its path is on a file route.
    Take(Head),
    /// hyper's: the head is complete or broken in a way the lane leaves to it.
    HandOff(&'static str),
}

/// A complete head the lane takes: where its parts lie in the buffer.
#[derive(Debug)]
pub(crate) struct Head {
    /// Bytes of the head, its final empty line included.
    pub(crate) len: usize,
    pub(crate) method: Method,
    pub(crate) version: Version,
    target: Range<usize>,
    /// Name and value of each field, as `[name start, name end, value start, value end]`
    /// (a head is at most 1 MiB: `u32` offsets keep this small to build).
    fields: [[u32; 4]; MAX_HEADERS],
    count: usize,
    /// The connection may carry another request after this one (hyper's rule: HTTP/1.1
    /// unless `close`; HTTP/1.0 only with `keep-alive`, and never after `close`).
    pub(crate) keep_alive: bool,
}

impl Head {
    /// The path of the target (before any `?`), for the route check.
    pub(crate) fn path<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        let target = &buf[self.target.clone()];
        match target.iter().position(|&b| b == b'?') {
            Some(end) => &target[..end],
            None => target,
        }
    }

    /// The request, its URI and header values slices of `head` (the head's bytes, as
    /// split off the buffer). `None` when `http` refuses the target or a field (hyper
    /// then answers it: `400`).
    pub(crate) fn request(&self, head: &Bytes) -> Option<Request<Empty<Bytes>>> {
        let uri = Uri::from_maybe_shared(head.slice(self.target.clone())).ok()?;
        let mut headers = HeaderMap::with_capacity(self.count);
        for &[name_start, name_end, value_start, value_end] in &self.fields[..self.count] {
            let name = head.get(name_start as usize..name_end as usize)?;
            let name = HeaderName::from_bytes(name).ok()?;
            let value = head.slice(value_start as usize..value_end as usize);
            let value = HeaderValue::from_maybe_shared(value).ok()?;
            headers.append(name, value);
        }
        let mut request = Request::new(Empty::new());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = headers;
        Some(request)
    }
}

/// Offset of `part` (a slice of `buf`) in `buf`.
fn range_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// True when `value` lists `token` (a comma list, optional whitespace, any case).
fn lists(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Every line ends with CRLF, and no NUL or non-ASCII byte: checked over the head only.
fn plain_lines(head: &[u8]) -> bool {
    let mut previous = 0u8;
    for &byte in head {
        if byte == 0 || byte >= 0x80 || (byte == b'\n' && previous != b'\r') {
            return false;
        }
        previous = byte;
    }
    true
}

/// Parses the start of `buf` (see the module docs for what is taken).
pub(crate) fn parse(buf: &[u8]) -> Parsed {
    if buf.first().is_some_and(|&b| !b.is_ascii_uppercase()) {
        return Parsed::HandOff("the head does not start with a method");
    }
    // Left uninitialised until httparse fills them, as hyper does: zeroing 32 fields
    // per request showed in the profile.
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::HandOff("httparse refused the head"),
    };
    let (Some(method), Some(target), Some(minor)) = (request.method, request.path, request.version)
    else {
        return Parsed::HandOff("incomplete request line");
    };
    let method = match method {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        _ => return Parsed::HandOff("a method other than GET or HEAD"),
    };
    let (version, mut keep_alive) = match minor {
        1 => (Version::HTTP_11, true),
        0 => (Version::HTTP_10, false),
        _ => return Parsed::HandOff("an unknown HTTP version"),
    };
    if !target.starts_with('/') || target.len() > MAX_TARGET {
        return Parsed::HandOff("not an origin-form target");
    }
    if !plain_lines(&buf[..len]) {
        return Parsed::HandOff("a bare LF, a NUL or a non-ASCII byte in the head");
    }
    let mut head = Head {
        len,
        method,
        version,
        target: range_in(buf, target.as_bytes()),
        fields: [[0; 4]; MAX_HEADERS],
        count: request.headers.len(),
        keep_alive,
    };
    let mut saw_close = false;
    let mut saw_length = false;
    for (field, slot) in request.headers.iter().zip(head.fields.iter_mut()) {
        let name = field.name;
        let value = field.value;
        if name.eq_ignore_ascii_case("content-length") {
            if saw_length || value != b"0" {
                return Parsed::HandOff("a body (Content-Length)");
            }
            saw_length = true;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::HandOff("a body (Transfer-Encoding)");
        } else if name.eq_ignore_ascii_case("expect") {
            return Parsed::HandOff("Expect");
        } else if name.eq_ignore_ascii_case("upgrade") {
            return Parsed::HandOff("Upgrade");
        } else if name.eq_ignore_ascii_case("connection") {
            let known = value.split(|&b| b == b',').all(|item| {
                let item = item.trim_ascii();
                item.eq_ignore_ascii_case(b"close") || item.eq_ignore_ascii_case(b"keep-alive")
            });
            if !known {
                return Parsed::HandOff("a Connection option other than close or keep-alive");
            }
            // hyper's rule: once a line asks to close, nothing reopens it.
            if saw_close || lists(value, "close") {
                saw_close = true;
                keep_alive = false;
            } else if !keep_alive {
                keep_alive = lists(value, "keep-alive");
            }
        }
        let (name, value) = (range_in(buf, name.as_bytes()), range_in(buf, value));
        // Offsets below 2^32: `--max-request-head` is at most 1 MiB.
        let offset = |at: usize| u32::try_from(at).unwrap_or(u32::MAX);
        *slot = [
            offset(name.start),
            offset(name.end),
            offset(value.start),
            offset(value.end),
        ];
    }
    head.keep_alive = keep_alive;
    Parsed::Take(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(raw: &str) -> Head {
        match parse(raw.as_bytes()) {
            Parsed::Take(head) => head,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    fn handed_off(raw: &[u8]) -> bool {
        matches!(parse(raw), Parsed::HandOff(_))
    }

    #[test]
    fn a_plain_get_is_taken_and_built_as_hyper_builds_it() {
        let raw = "GET /media/a/b.gif?x=1 HTTP/1.1\r\nHost: h\r\nX-Two: a\r\nx-two: b\r\n\r\nGET";
        let head = taken(raw);
        assert_eq!(head.len, raw.len() - 3);
        assert!(head.keep_alive);
        assert_eq!(head.path(raw.as_bytes()), b"/media/a/b.gif");
        let bytes = Bytes::copy_from_slice(&raw.as_bytes()[..head.len]);
        let request = head.request(&bytes).expect("builds");
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.uri(), "/media/a/b.gif?x=1");
        assert_eq!(request.headers()["host"], "h");
        let twos: Vec<_> = request.headers().get_all("x-two").iter().collect();
        assert_eq!(twos, ["a", "b"]);
    }

    #[test]
    fn partial_heads_wait_for_more() {
        for raw in ["G", "GET /a HTTP/1.1\r\n", "GET /a HTTP/1.1\r\nHost: h\r\n"] {
            assert!(matches!(parse(raw.as_bytes()), Parsed::Partial), "{raw:?}");
        }
    }

    #[test]
    fn keep_alive_follows_hypers_rules() {
        for (raw, expected) in [
            ("GET / HTTP/1.1\r\n\r\n", true),
            ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
            (
                "GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n",
                false,
            ),
            (
                "GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
                false,
            ),
            ("GET / HTTP/1.0\r\n\r\n", false),
            ("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
            ("HEAD / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n", true),
        ] {
            assert_eq!(taken(raw).keep_alive, expected, "{raw:?}");
        }
    }

    #[test]
    fn bodies_and_unusual_heads_go_to_hyper() {
        for raw in [
            // Methods with (possible) bodies, and others.
            &b"POST /api/resolve HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"[..],
            b"OPTIONS /media/a.gif HTTP/1.1\r\n\r\n",
            b"get /media/a.gif HTTP/1.1\r\n\r\n",
            // Body framing: the smuggling set.
            b"GET /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /a HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            b"GET /a HTTP/1.1\r\nContent-Length: 00\r\n\r\n",
            b"GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET /a HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /a HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
            b"GET /a HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            b"GET /a HTTP/1.1\nHost: h\n\n",
            b"GET /a HTTP/1.1\r\nHost: h\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: h\0\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: \xc3\xa9\r\n\r\n",
            b"GET /a\0 HTTP/1.1\r\n\r\n",
            // Expectations, upgrades, connection options.
            b"GET /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET /a HTTP/1.1\r\nConnection: te\r\n\r\n",
            // Targets and versions.
            b"GET http://h/a HTTP/1.1\r\n\r\n",
            b"GET * HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/2.0\r\n\r\n",
            b"GET /a HTTP/1.2\r\n\r\n",
            // An empty line before the request line.
            b"\r\nGET /a HTTP/1.1\r\n\r\n",
        ] {
            assert!(handed_off(raw), "{:?}", String::from_utf8_lossy(raw));
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(handed_off(
            format!("GET /a HTTP/1.1\r\n{many}\r\n").as_bytes()
        ));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_TARGET));
        assert!(handed_off(long.as_bytes()));
    }

    #[test]
    fn an_empty_body_is_still_taken() {
        let head = taken("GET /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(head.keep_alive);
    }

    #[test]
    fn a_field_http_refuses_is_left_to_hyper() {
        // httparse takes `{` in a name; `http` does not.
        let raw = "GET /a HTTP/1.1\r\nX{: 1\r\n\r\n";
        if let Parsed::Take(head) = parse(raw.as_bytes()) {
            let bytes = Bytes::copy_from_slice(raw.as_bytes());
            assert!(head.request(&bytes).is_none());
        }
    }
}
