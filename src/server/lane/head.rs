//! Which request heads the lane takes, and the request it builds from one: pure, tested
//! without a socket.
//!
//! The lane takes a strict subset of HTTP/1.0 and HTTP/1.1 and leaves everything else
//! to hyper, so that what it takes it answers exactly as hyper would and what it does
//! not take hyper answers (or refuses) as it always did:
//!
//! - `GET` or `HEAD`, HTTP/1.0 or 1.1, an origin-form target (`/…`) on a route the
//!   caller names (the lane: a file route), a head of at most `--max-request-head`;
//! - no body: no `Transfer-Encoding`, no `Content-Length` but a single `0`, no `Expect`,
//!   no `Upgrade`;
//! - `Connection` naming only `close` and `keep-alive`;
//! - every line ended by CRLF (no bare LF), no control byte but tab, CR and LF, no byte
//!   past ASCII, no obs-fold, no empty line before the request line, at most
//!   [`MAX_HEADERS`] fields: httparse accepts some of these and hyper answers them its
//!   own way, so they go to hyper.
//!
//! # One pass, as hyper's
//! httparse (the parser hyper uses) finds the parts; one scan of the head's bytes makes
//! the byte checks above; the route is looked up once, here, and handed to the app with
//! the request; the request is built at once from slices of the same bytes (hyper's
//! way): no table of offsets in between, and the field values are not scanned a second
//! time by `http` (see [`field_value`]).

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body_util::Empty;

/// Most header fields the lane parses; a head with more goes to hyper (which takes 100).
pub(crate) const MAX_HEADERS: usize = 32;

/// Longest request target the lane takes; hyper answers `414` past 65,534 bytes.
const MAX_TARGET: usize = 8 * 1024;

/// What the lane makes of the bytes buffered so far.
///
/// `Take` is large (the request) but transient: the lane moves the request into its
/// future at once and never holds this across an await; a box would be an allocation
/// per request.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Parsed<R> {
    /// The head is not complete yet; the buffer is as it was.
    Partial,
    /// A request the lane answers; its head is gone from the buffer (what follows it, a
    /// pipelined request, stays).
    Take(Taken<R>),
    /// hyper's: the head is complete or broken in a way the lane leaves to it. The
    /// buffer is as it was.
    HandOff(&'static str),
}

/// A request the lane takes, with what the lane needs to answer it.
#[derive(Debug)]
pub(crate) struct Taken<R> {
    /// Its URI and header values are slices of the head's bytes, as hyper's are.
    pub(crate) request: Request<Empty<Bytes>>,
    /// What the caller's lookup found for the path.
    pub(crate) route: R,
    /// The connection may carry another request after this one (hyper's rule: HTTP/1.1
    /// unless `close`; HTTP/1.0 only with `keep-alive`, and never after `close`).
    pub(crate) keep_alive: bool,
}

/// Parses the head at the start of `buf` (see the module docs for what is taken).
/// `route_of` looks up the target's path (before any `?`); `None` leaves the request to
/// hyper. A head longer than `max_head` goes to hyper too (which answers `431`).
pub(crate) fn parse<R>(
    buf: &mut BytesMut,
    max_head: usize,
    route_of: impl FnOnce(&str) -> Option<R>,
) -> Parsed<R> {
    if buf.first().is_some_and(|&b| !b.is_ascii_uppercase()) {
        return Parsed::HandOff("the head does not start with a method");
    }
    // Frozen so that the request's parts can be slices of the bytes httparse's result
    // borrows; given back unchanged (no copy: the buffer is not shared) unless taken.
    let bytes = std::mem::take(buf).freeze();
    match read(&bytes, max_head, route_of) {
        Read::Taken(taken, len) => {
            if bytes.len() > len {
                // A pipelined request (rare): its bytes get a buffer of their own.
                *buf = BytesMut::from(&bytes[len..]);
            }
            Parsed::Take(taken)
        }
        Read::Partial => {
            *buf = bytes.into();
            Parsed::Partial
        }
        Read::HandOff(why) => {
            *buf = bytes.into();
            Parsed::HandOff(why)
        }
    }
}

/// [`parse`]'s result before the buffer is put right: a taken request with its head's
/// length. Large for the same reason as [`Parsed`].
#[allow(clippy::large_enum_variant)]
enum Read<R> {
    Taken(Taken<R>, usize),
    Partial,
    HandOff(&'static str),
}

/// Every byte is tab, CR, LF or printable ASCII (space to `~`), and every LF follows a
/// CR. One branch-free pass the compiler vectorises; the byte checks of the module docs.
fn plain_lines(head: &[u8]) -> bool {
    // Not a byte a plain head has (LF is judged with the byte before it).
    let odd = |byte: u8| {
        ((byte < 0x20) & (byte != b'\t') & (byte != b'\r') & (byte != b'\n')) | (byte >= 0x7f)
    };
    let Some((&first, rest)) = head.split_first() else {
        return true;
    };
    let mut bad = odd(first) | (first == b'\n');
    for (&before, &byte) in head.iter().zip(rest) {
        bad |= odd(byte) | ((byte == b'\n') & (before != b'\r'));
    }
    !bad
}

/// A field's value as a `HeaderValue`, without the second scan of its bytes that
/// `HeaderValue::from_maybe_shared` would make (hyper makes none either).
fn field_value(value: Bytes) -> HeaderValue {
    // SAFETY: `from_maybe_shared_unchecked` needs bytes `HeaderValue` accepts (tab and
    // the bytes from space on, DEL excepted: then they are UTF-8 too). `value` is a
    // field's value as httparse split it, a slice of a head that `plain_lines` passed:
    // all of its bytes are tab, CR, LF or space to `~`, and httparse ends a value at
    // the first CR or LF, so it holds neither. Debug builds check it again (`http`
    // panics there on a byte it refuses), which every test of the lane exercises.
    unsafe { HeaderValue::from_maybe_shared_unchecked(value) }
}

/// True when `value` lists `token` (a comma list, optional whitespace, any case).
fn lists(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The parse itself, over the frozen buffer.
fn read<R>(bytes: &Bytes, max_head: usize, route_of: impl FnOnce(&str) -> Option<R>) -> Read<R> {
    // Left uninitialised until httparse fills them, as hyper does: zeroing 32 fields
    // per request showed in the profile.
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        bytes,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Read::Partial,
        Err(_) => return Read::HandOff("httparse refused the head"),
    };
    if len > max_head {
        // hyper answers `431` to a whole head past the limit too.
        return Read::HandOff("a head past --max-request-head");
    }
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Read::HandOff("incomplete request line");
    };
    let method = match method {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        _ => return Read::HandOff("a method other than GET or HEAD"),
    };
    let (version, mut keep_alive) = match minor {
        1 => (Version::HTTP_11, true),
        0 => (Version::HTTP_10, false),
        _ => return Read::HandOff("an unknown HTTP version"),
    };
    if !target.starts_with('/') || target.len() > MAX_TARGET {
        return Read::HandOff("not an origin-form target");
    }
    // Before the target is read: httparse takes bytes past ASCII in it.
    if !plain_lines(&bytes[..len]) {
        return Read::HandOff("a bare LF, a control byte or a non-ASCII byte in the head");
    }
    let Ok(uri) = Uri::from_maybe_shared(bytes.slice_ref(target.as_bytes())) else {
        return Read::HandOff("a target http refuses");
    };
    // The path as `http` split it from the query (no second search for the `?`).
    let Some(route) = route_of(uri.path()) else {
        return Read::HandOff("not a route of the lane");
    };
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    let mut saw_close = false;
    let mut saw_length = false;
    for field in parsed.headers.iter() {
        let (name, value) = (field.name, field.value);
        // By length first: most fields are none of these five.
        match name.len() {
            14 if name.eq_ignore_ascii_case("content-length") => {
                if saw_length || value != b"0" {
                    return Read::HandOff("a body (Content-Length)");
                }
                saw_length = true;
            }
            17 if name.eq_ignore_ascii_case("transfer-encoding") => {
                return Read::HandOff("a body (Transfer-Encoding)");
            }
            6 if name.eq_ignore_ascii_case("expect") => return Read::HandOff("Expect"),
            7 if name.eq_ignore_ascii_case("upgrade") => return Read::HandOff("Upgrade"),
            10 if name.eq_ignore_ascii_case("connection") => {
                let known = value.split(|&b| b == b',').all(|item| {
                    let item = item.trim_ascii();
                    item.eq_ignore_ascii_case(b"close") || item.eq_ignore_ascii_case(b"keep-alive")
                });
                if !known {
                    return Read::HandOff("a Connection option other than close or keep-alive");
                }
                // hyper's rule: once a line asks to close, nothing reopens it.
                if saw_close || lists(value, "close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = lists(value, "keep-alive");
                }
            }
            _ => {}
        }
        // `http` refuses some names httparse takes (`{`): hyper answers those (`400`).
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            return Read::HandOff("a field name http refuses");
        };
        headers.append(name, field_value(bytes.slice_ref(value)));
    }
    let mut request = Request::new(Empty::new());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Read::Taken(
        Taken {
            request,
            route,
            keep_alive,
        },
        len,
    )
}
#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `raw` with every path on a route (the route is the path), as the lane.
    fn parse_all(raw: &[u8]) -> (Parsed<String>, BytesMut) {
        let mut buf = BytesMut::from(raw);
        let parsed = parse(&mut buf, 64 * 1024, |path| Some(path.to_owned()));
        (parsed, buf)
    }

    /// The request taken from `raw`, and what is left in the buffer.
    fn taken(raw: &str) -> (Taken<String>, BytesMut) {
        match parse_all(raw.as_bytes()) {
            (Parsed::Take(taken), rest) => (taken, rest),
            (other, _) => panic!("{raw:?}: {other:?}"),
        }
    }

    /// Whether `raw` goes to hyper; the buffer must then be as it came.
    fn handed_off(raw: &[u8]) -> bool {
        let (parsed, rest) = parse_all(raw);
        let handed = matches!(parsed, Parsed::HandOff(_));
        if handed {
            assert_eq!(&rest[..], raw, "the bytes go to hyper as they came");
        }
        handed
    }

    #[test]
    fn a_plain_get_is_taken_and_built_as_hyper_builds_it() {
        let raw = "GET /media/a/b.gif?x=1 HTTP/1.1\r\nHost: h\r\nX-Two: a\r\nx-two: b\r\n\r\nGET";
        let (taken, rest) = taken(raw);
        // The head is split off; the pipelined bytes stay.
        assert_eq!(&rest[..], b"GET");
        assert!(taken.keep_alive);
        assert_eq!(taken.route, "/media/a/b.gif");
        let request = taken.request;
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
            let (parsed, rest) = parse_all(raw.as_bytes());
            assert!(matches!(parsed, Parsed::Partial), "{raw:?}");
            assert_eq!(&rest[..], raw.as_bytes(), "{raw:?}: the buffer is kept");
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
            assert_eq!(taken(raw).0.keep_alive, expected, "{raw:?}");
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
            b"GET /a HTTP/1.1\r\nHost: h\x7f\r\n\r\n",
            b"GET /a\0 HTTP/1.1\r\n\r\n",
            b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n",
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
        let (taken, _) = taken("GET /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(taken.keep_alive);
    }

    #[test]
    fn a_field_http_refuses_is_left_to_hyper() {
        // httparse takes `{` in a name; `http` does not.
        assert!(handed_off(b"GET /a HTTP/1.1\r\nX{: 1\r\n\r\n"));
    }

    #[test]
    fn paths_off_the_route_and_heads_past_the_limit_go_to_hyper() {
        let raw = b"GET /healthz?x HTTP/1.1\r\nHost: h\r\n\r\n";
        let mut buf = BytesMut::from(&raw[..]);
        let mut looked_up = None;
        let parsed = parse(&mut buf, 1024, |path| {
            looked_up = Some(path.to_owned());
            None::<()>
        });
        assert!(matches!(parsed, Parsed::HandOff(_)));
        assert_eq!(looked_up.as_deref(), Some("/healthz"));
        assert_eq!(&buf[..], raw);

        let mut buf = BytesMut::from(&raw[..]);
        let parsed = parse(&mut buf, raw.len() - 1, |_| Some(()));
        assert!(matches!(parsed, Parsed::HandOff(_)));
        assert_eq!(&buf[..], raw);
        let mut buf = BytesMut::from(&raw[..]);
        assert!(matches!(
            parse(&mut buf, raw.len(), |_| Some(())),
            Parsed::Take(_)
        ));
        assert!(buf.is_empty());
    }

    /// The vectorised scan against the rule written byte by byte, on every pair of
    /// bytes after a method's letter.
    #[test]
    fn plain_lines_is_the_byte_rule() {
        fn by_bytes(head: &[u8]) -> bool {
            let mut previous = 0u8;
            for &byte in head {
                let control = byte < 0x20 && !matches!(byte, b'\t' | b'\r' | b'\n');
                if control || byte >= 0x7f || (byte == b'\n' && previous != b'\r') {
                    return false;
                }
                previous = byte;
            }
            true
        }
        for a in 0..=u8::MAX {
            for b in 0..=u8::MAX {
                let head = [b'G', a, b, b'x'];
                assert_eq!(plain_lines(&head), by_bytes(&head), "{head:?}");
            }
            assert_eq!(plain_lines(&[a]), by_bytes(&[a]), "{a}");
        }
        assert!(plain_lines(b""));
        let long = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n".repeat(20);
        assert!(plain_lines(long.as_bytes()));
        let mut bare = long.clone().into_bytes();
        bare[300] = b'\n';
        assert!(!plain_lines(&bare));
    }
}
