//! The request-head checks RFC 9112 asks of a server and hyper leaves to the application:
//! `Host` (§3.2) and transfer codings (§6.1). Run once per request, before routing, so
//! they are a few header lookups and a scan of one short value.
//!
//! What hyper 1.x already does, before a request reaches us (read in `proto/h1/role.rs`
//! and checked by `tests/protocol.rs` on a socket):
//! - a `Transfer-Encoding` whose *last* coding is not `chunked` (`gzip`, `identity`,
//!   `chunked, gzip`) → `400` and the connection closed. RFC 9112 §6.3 requires exactly
//!   that ("the server MUST respond with the 400 (Bad Request) status code and then close
//!   the connection"): the length of the body cannot be known.
//! - `Transfer-Encoding` in an HTTP/1.0 request → `400`.
//! - `Transfer-Encoding` together with `Content-Length` → the length is ignored and the
//!   connection is closed after the response (§6.3, point 3).
//!
//! What is left for us: a chunked body under another coding (`gzip, chunked`) is framed
//! correctly but unreadable to us — `501` (§6.1: "A server that receives a request message
//! with a transfer coding it does not understand SHOULD respond with 501"); `chunked`
//! applied twice is malformed (§6.1: a sender MUST NOT) — `400`; and `Host`.

use http::{HeaderMap, HeaderValue, StatusCode, Version, header};

/// Why a request head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// An HTTP/1.1 request without `Host` (RFC 9112 §3.2: MUST respond 400).
    #[error("HTTP/1.1 requests must carry a Host header")]
    MissingHost,
    /// More than one `Host` line, in any version (§3.2: MUST respond 400).
    #[error("Send one Host header, not several")]
    SeveralHosts,
    /// A `Host` that is not `host[:port]` (§3.2: "a Host header field with an invalid
    /// field value" → 400).
    #[error("Invalid Host header")]
    InvalidHost,
    /// `chunked` more than once.
    #[error("Transfer-Encoding applies chunked more than once")]
    ChunkedTwice,
    /// A transfer coding other than `chunked`.
    #[error("Transfer codings other than chunked are not supported")]
    UnsupportedCoding,
}

impl HeadError {
    /// The status RFC 9112 gives the refusal.
    pub fn status(self) -> StatusCode {
        match self {
            HeadError::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Whether the connection must not be reused: a body we refuse to decode stays
    /// unread, and its framing is in doubt.
    pub fn closes_connection(self) -> bool {
        matches!(self, HeadError::UnsupportedCoding | HeadError::ChunkedTwice)
    }
}

/// Checks `Host` and `Transfer-Encoding` of a request of `version`. `may_have_body` is
/// false when the server already knows the body is empty (hyper's body for a request
/// without `Content-Length` or `Transfer-Encoding`): such a request carries no transfer
/// coding, and the lookup is skipped — most requests are GETs.
pub fn check(version: Version, headers: &HeaderMap, may_have_body: bool) -> Result<(), HeadError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(HeadError::SeveralHosts),
        (Some(host), None) if !is_valid_host(host) => return Err(HeadError::InvalidHost),
        (Some(_), None) => {}
        // HTTP/1.0 predates Host; HTTP/2 and 3 carry `:authority` (not served here).
        (None, _) if version == Version::HTTP_11 => return Err(HeadError::MissingHost),
        (None, _) => {}
    }
    if may_have_body && headers.contains_key(header::TRANSFER_ENCODING) {
        return check_codings(headers);
    }
    Ok(())
}

/// The codings of every `Transfer-Encoding` line, in order, must be one `chunked`
/// (empty list elements are ignored, RFC 9110 §5.6.1).
fn check_codings(headers: &HeaderMap) -> Result<(), HeadError> {
    let mut chunked = 0;
    for line in headers.get_all(header::TRANSFER_ENCODING) {
        let Ok(line) = line.to_str() else {
            return Err(HeadError::UnsupportedCoding);
        };
        for coding in line.split(',').map(|c| c.trim_matches([' ', '\t'])) {
            if coding.is_empty() {
                continue;
            }
            if !coding.eq_ignore_ascii_case("chunked") {
                return Err(HeadError::UnsupportedCoding);
            }
            chunked += 1;
        }
    }
    if chunked > 1 {
        return Err(HeadError::ChunkedTwice);
    }
    Ok(())
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2): an IP literal in brackets, or
/// a reg-name / IPv4 address of unreserved, percent-encoded and sub-delim characters; then
/// an optional port of digits. Userinfo (`@`), paths and spaces are not a host. Empty is
/// allowed: it is what a client sends for a target without an authority.
///
/// Hand-written rather than `http::uri::Authority::try_from`, which copies the value into
/// a new buffer and accepts userinfo: this runs on every request, and the common host
/// (`name:port`) costs one table lookup per byte here.
fn is_valid_host(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    // The common case: plain reg-name characters, then an optional port.
    let plain = bytes
        .iter()
        .position(|&b| !REG_NAME_PLAIN[usize::from(b)])
        .unwrap_or(bytes.len());
    match bytes.get(plain) {
        None => true,
        Some(b':') => is_port(&bytes[plain + 1..]),
        // Percent-encoding or an IP literal: the full grammar.
        Some(b'%' | b'[') => is_valid_host_slow(bytes),
        Some(_) => false,
    }
}

/// `*DIGIT` as a port number: at most five digits (RFC 3986 allows none at all).
fn is_port(digits: &[u8]) -> bool {
    digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit)
}

/// [`is_valid_host`] for hosts with `%` or brackets.
fn is_valid_host_slow(bytes: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = bytes.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        // An IPv6 address (IPvFuture, never seen in practice, is not accepted).
        let literal = std::str::from_utf8(&rest[..close]).ok();
        if literal
            .and_then(|l| l.parse::<std::net::Ipv6Addr>().ok())
            .is_none()
        {
            return false;
        }
        (&[][..], &rest[close + 1..])
    } else {
        match bytes.iter().position(|&b| b == b':') {
            Some(colon) => (&bytes[..colon], &bytes[colon..]),
            None => (bytes, &[][..]),
        }
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => is_port(digits),
        Some(_) => false,
    };
    port_ok && is_reg_name(host)
}

/// RFC 3986 `reg-name` characters other than `%`: unreserved and sub-delims.
const REG_NAME_PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

/// RFC 3986 `reg-name`: unreserved / pct-encoded / sub-delims (IPv4 addresses are of it).
fn is_reg_name(host: &[u8]) -> bool {
    let mut i = 0;
    while i < host.len() {
        if host[i] == b'%' {
            let pair = host.get(i + 1..i + 3);
            if !pair.is_some_and(|p| p.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            i += 3;
            continue;
        }
        if !REG_NAME_PLAIN[usize::from(host[i])] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    /// A version, its header lines, and the verdict.
    type HostCase = (
        Version,
        &'static [(&'static str, &'static str)],
        Result<(), HeadError>,
    );

    const V11: Version = Version::HTTP_11;
    const V10: Version = Version::HTTP_10;

    #[test]
    fn host_table() {
        use HeadError::*;
        let cases: &[HostCase] = &[
            (V11, &[("host", "media.example")], Ok(())),
            (V11, &[("host", "media.example:8080")], Ok(())),
            (V11, &[("host", "127.0.0.1:8080")], Ok(())),
            (V11, &[("host", "[::1]:8080")], Ok(())),
            (V11, &[("host", "[::1]")], Ok(())),
            (V11, &[("host", "oip-media")], Ok(())),
            (V11, &[("host", "xn--caf-dma.example")], Ok(())),
            (V11, &[("host", "a%2Eb")], Ok(())),
            (V11, &[("host", "host:")], Ok(())),
            (V11, &[("host", "")], Ok(())),
            (V11, &[], Err(MissingHost)),
            (V10, &[], Ok(())),
            (V11, &[("host", "a"), ("host", "a")], Err(SeveralHosts)),
            (V10, &[("host", "a"), ("host", "b")], Err(SeveralHosts)),
            (V11, &[("host", "user@media.example")], Err(InvalidHost)),
            (V11, &[("host", "media.example/path")], Err(InvalidHost)),
            (V11, &[("host", "media example")], Err(InvalidHost)),
            (V11, &[("host", "a:b")], Err(InvalidHost)),
            (V11, &[("host", "a:123456")], Err(InvalidHost)),
            (V11, &[("host", "a:1:2")], Err(InvalidHost)),
            (V11, &[("host", "[::1")], Err(InvalidHost)),
            (V11, &[("host", "[]")], Err(InvalidHost)),
            (V11, &[("host", "[1.2.3.4]")], Err(InvalidHost)),
            (V11, &[("host", "[::1]x")], Err(InvalidHost)),
            (V11, &[("host", "[::1]]")], Err(InvalidHost)),
            (V11, &[("host", "a%zz")], Err(InvalidHost)),
            (V11, &[("host", "a%2")], Err(InvalidHost)),
            (V11, &[("host", "a?b")], Err(InvalidHost)),
            (V11, &[("host", "a#b")], Err(InvalidHost)),
            (V11, &[("host", "a%2Eb:80")], Ok(())),
            (V11, &[("host", "a%2Eb/x")], Err(InvalidHost)),
            (V11, &[("host", "a:8x")], Err(InvalidHost)),
            (V11, &[("host", "a\tb")], Err(InvalidHost)),
        ];
        for (version, lines, expected) in cases {
            assert_eq!(
                check(*version, &head(lines), false),
                *expected,
                "{version:?} {lines:?}"
            );
        }
    }

    #[test]
    fn transfer_coding_table() {
        use HeadError::*;
        let cases: &[(&[&'static str], Result<(), HeadError>)] = &[
            (&["chunked"], Ok(())),
            (&["Chunked"], Ok(())),
            (&[" chunked\t"], Ok(())),
            (&[", chunked"], Ok(())),
            (&["gzip, chunked"], Err(UnsupportedCoding)),
            (&["identity, chunked"], Err(UnsupportedCoding)),
            (&["gzip", "chunked"], Err(UnsupportedCoding)),
            (&["x-custom, chunked"], Err(UnsupportedCoding)),
            (&["gzip"], Err(UnsupportedCoding)),
            (&["chunked, chunked"], Err(ChunkedTwice)),
            (&["chunked", "chunked"], Err(ChunkedTwice)),
        ];
        for (lines, expected) in cases {
            let mut headers = head(&[("host", "a")]);
            for line in *lines {
                headers.append(header::TRANSFER_ENCODING, HeaderValue::from_static(line));
            }
            assert_eq!(check(V11, &headers, true), *expected, "{lines:?}");
        }
        // Without a body, the coding is not looked at (hyper sets one for any coding).
        let mut headers = head(&[("host", "a")]);
        headers.append(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(check(V11, &headers, false), Ok(()));
        assert_eq!(UnsupportedCoding.status(), StatusCode::NOT_IMPLEMENTED);
        assert_eq!(ChunkedTwice.status(), StatusCode::BAD_REQUEST);
        assert_eq!(MissingHost.status(), StatusCode::BAD_REQUEST);
        assert!(UnsupportedCoding.closes_connection());
        assert!(!SeveralHosts.closes_connection());
    }
}
