//! CORS for every route: allowed origins get their origin reflected; every other origin
//! gets the normal response without CORS headers (the browser then blocks it), never an
//! error status — the Node app answered those with a 500.
//!
//! Hand-written rather than tower-http's `CorsLayer`: that layer answers preflights with
//! 200 (we answer 204, as the indexer's clients expect) and its origin rules would need a
//! predicate for the extension schemes anyway; the whole policy is the small matcher and
//! two header blocks below. A leaf: it imports nothing of the crate, so the
//! configuration can check the list without depending on responses.

use crate::settings::Invalid;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

/// One allowed-origin rule. Schemes and hosts are kept lowercase; requests are compared
/// case-insensitively (RFC 6454 §4: both are case-insensitive), without allocating.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    /// An exact origin, e.g. `https://fitnessally.io`.
    Exact {
        scheme: String,
        host: String,
        port: Option<u16>,
    },
    /// Any origin of a scheme, e.g. `chrome-extension://*`.
    Scheme(String),
    /// Any subdomain of a host over a scheme, on the rule's port (none: the scheme's
    /// default, which browsers leave out of `Origin`), e.g. `https://*.fitnessally.io`.
    Subdomain {
        scheme: String,
        /// `.` + the domain.
        suffix: String,
        port: Option<u16>,
    },
}

/// A serialized origin (RFC 6454 §6.2): `scheme "://" host [ ":" port ]` and nothing
/// else — no path (not even `/`), query, fragment or userinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Origin<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<u16>,
}

impl<'a> Origin<'a> {
    /// Parses `text` as an origin; `None` for anything that is not one: a wildcard
    /// must never match `https://evil.example/.fitnessally.io` or
    /// `https://fitnessally.io@evil.example`.
    fn parse(text: &'a str) -> Option<Origin<'a>> {
        let (scheme, rest) = text.split_once("://")?;
        if !is_scheme(scheme) {
            return None;
        }
        let (host, tail) = if rest.starts_with('[') {
            // An IPv6 literal: `[...]`, then an optional port.
            let close = rest.find(']')?;
            rest[1..close].parse::<std::net::Ipv6Addr>().ok()?;
            rest.split_at(close + 1)
        } else {
            match rest.find(':') {
                Some(colon) => rest.split_at(colon),
                None => (rest, ""),
            }
        };
        let port = tail_port(tail)?;
        if !host.starts_with('[') && !is_dns_host(host) {
            return None;
        }
        Some(Origin { scheme, host, port })
    }
}

/// `""` → no port; `":" 1*5DIGIT` up to 65535 → that port; anything else → not an origin.
fn tail_port(tail: &str) -> Option<Option<u16>> {
    if tail.is_empty() {
        return Some(None);
    }
    let digits = tail.strip_prefix(':')?;
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u16>().ok().map(Some)
}

/// RFC 3986 `scheme`: a letter, then letters, digits, `+`, `-`, `.`.
fn is_scheme(scheme: &str) -> bool {
    let mut bytes = scheme.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// A host name as browsers serialize it (IDNs in punycode): dot-separated labels of
/// 1–63 letters, digits, `-` or `_`, at most 253 characters; an IPv4 address is one too.
fn is_dns_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// True when `text` ends with `suffix` (lowercase), compared case-insensitively.
fn ends_with_ignore_case(text: &str, suffix: &str) -> bool {
    text.len() >= suffix.len()
        && text.as_bytes()[text.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// The allow-list, parsed once from `--cors-origins`.
#[derive(Debug, Clone, Default)]
pub struct CorsPolicy {
    rules: Vec<OriginRule>,
}

/// Headers a browser script may read from our responses.
const EXPOSE: &str =
    "Content-Length, Content-Range, ETag, Accept-Ranges, Last-Modified, Retry-After, X-Request-Id";
/// Methods any route accepts.
const METHODS: &str = "GET, HEAD, POST, OPTIONS";
/// Sent on every response when CORS is on; a constant, so no request validates it.
const VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");
/// Request headers clients send us.
const ALLOW_HEADERS: &str = "Authorization, Content-Type, Range, If-None-Match, If-Modified-Since, If-Range, If-Match, If-Unmodified-Since, X-Request-Id";

impl CorsPolicy {
    /// Parses a comma list of origins (`https://a.example`, `https://*.a.example`,
    /// `https://*.a.example:8443`, `chrome-extension://*`). Returns the offending entry
    /// when one is not an origin or a supported wildcard.
    pub fn parse(list: &str) -> Result<CorsPolicy, String> {
        let mut rules = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let entry = entry.trim_end_matches('/').to_ascii_lowercase();
            let not_an_origin = || {
                format!(
                    "`{entry}` is not an origin (expected scheme://host[:port], \
                     scheme://*.domain[:port] or scheme://*)"
                )
            };
            let rule = if let Some(scheme) = entry.strip_suffix("://*") {
                if !is_scheme(scheme) {
                    return Err(not_an_origin());
                }
                OriginRule::Scheme(scheme.to_owned())
            } else if let Some((scheme, domain)) = entry.split_once("://*.") {
                // The domain, as an origin of the same scheme, must parse.
                let candidate = format!("{scheme}://{domain}");
                let origin = Origin::parse(&candidate)
                    .filter(|o| !o.host.starts_with('['))
                    .ok_or_else(not_an_origin)?;
                OriginRule::Subdomain {
                    scheme: scheme.to_owned(),
                    suffix: format!(".{}", origin.host),
                    port: origin.port,
                }
            } else {
                let origin = Origin::parse(&entry).ok_or_else(not_an_origin)?;
                OriginRule::Exact {
                    scheme: origin.scheme.to_owned(),
                    host: origin.host.to_owned(),
                    port: origin.port,
                }
            };
            rules.push(rule);
        }
        Ok(CorsPolicy { rules })
    }

    /// True when no origin is allowed (CORS off).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `origin` (the request's `Origin` value) is a real origin on the list.
    pub fn allows(&self, origin: &str) -> bool {
        let Some(origin) = Origin::parse(origin) else {
            return false;
        };
        self.rules.iter().any(|rule| match rule {
            OriginRule::Exact { scheme, host, port } => {
                origin.scheme.eq_ignore_ascii_case(scheme)
                    && origin.host.eq_ignore_ascii_case(host)
                    && origin.port == *port
            }
            OriginRule::Scheme(scheme) => origin.scheme.eq_ignore_ascii_case(scheme),
            OriginRule::Subdomain {
                scheme,
                suffix,
                port,
            } => {
                origin.scheme.eq_ignore_ascii_case(scheme)
                    && origin.host.len() > suffix.len()
                    && ends_with_ignore_case(origin.host, suffix)
                    && origin.port == *port
            }
        })
    }

    /// The allowed `Origin` of a request, as a header value to reflect.
    fn allowed_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        self.allows(origin.to_str().ok()?).then(|| origin.clone())
    }

    /// A preflight (`OPTIONS` with `Access-Control-Request-Method`) answered here, before
    /// any route: 204, with CORS headers only for an allowed origin. Bodiless, so this
    /// module needs no body type; the router gives it an empty one.
    pub fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<Response<()>> {
        if method != Method::OPTIONS || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::NO_CONTENT;
        // `Vary: Origin` is added by `decorate`, as on every response: once.
        let out = response.headers_mut();
        if let Some(origin) = self.allowed_origin(headers.get(header::ORIGIN)) {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            out.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(METHODS),
            );
            out.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            out.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        }
        Some(response)
    }

    /// Adds CORS headers to a normal response when the request's origin is allowed.
    /// `Vary: Origin` goes on every response while CORS is on, so a shared cache never
    /// hands a response without CORS headers to an allowed origin.
    pub fn decorate(&self, origin: Option<&HeaderValue>, response: &mut HeaderMap) {
        if self.is_empty() {
            return;
        }
        response.append(header::VARY, VARY_ORIGIN);
        if let Some(origin) = self.allowed_origin(origin) {
            response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            response.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE),
            );
        }
    }
}

/// The CORS allow-list (`src/cors.rs`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "CORS")]
pub struct CorsSettings {
    /// Origins allowed to read responses cross-origin (comma list).
    ///
    /// Origins allowed to read responses cross-origin (comma list).
    ///
    /// Entries are exact origins (`https://fitnessally.io`), subdomain wildcards
    /// (`https://*.fitnessally.io`) or whole schemes (`chrome-extension://*` for the browser
    /// extensions); a wildcard matches only a real origin (`scheme://host[:port]`: no path,
    /// query, fragment or userinfo), and a subdomain wildcard only on its own port (`…:8443` to
    /// name one). Other origins get normal responses without CORS headers, never an error.
    /// Empty turns CORS off.
    #[arg(
        long,
        env = "CORS_ORIGINS",
        default_value = "https://fitnessally.io,https://*.fitnessally.io,chrome-extension://*,moz-extension://*,safari-web-extension://*"
    )]
    pub cors_origins: String,
}

impl CorsSettings {
    /// The allow-list, parsed: what clap cannot check.
    pub fn policy(&self) -> Result<CorsPolicy, Invalid> {
        CorsPolicy::parse(&self.cors_origins)
            .map_err(|message| Invalid::new("cors_origins", message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CorsPolicy {
        CorsPolicy::parse("https://fitnessally.io, https://*.fitnessally.io, chrome-extension://*, moz-extension://*").unwrap()
    }

    #[test]
    fn only_real_origins_match_the_wildcards() {
        let p = CorsPolicy::parse(
            "https://fitnessally.io, https://*.fitnessally.io, https://*.staging.example:8443, \
             chrome-extension://*, moz-extension://*, http://localhost:3000, http://[::1]:8080",
        )
        .unwrap();
        let cases: &[(&str, bool)] = &[
            // Exact.
            ("https://fitnessally.io", true),
            ("HTTPS://FitnessAlly.io", true),
            ("http://fitnessally.io", false),
            ("https://fitnessally.io:443", false),
            ("https://fitnessally.io/", false),
            ("http://localhost:3000", true),
            ("http://localhost:3001", false),
            ("http://localhost", false),
            ("http://[::1]:8080", true),
            ("http://[::1]", false),
            // Subdomain wildcard: a real host under the domain, nothing after it.
            ("https://app.fitnessally.io", true),
            ("https://a.b.fitnessally.io", true),
            ("https://APP.FitnessAlly.IO", true),
            ("https://app.fitnessally.io:8443", false),
            ("https://app.fitnessally.io/", false),
            ("https://app.fitnessally.io/x", false),
            ("https://evil.example/.fitnessally.io", false),
            ("https://evil.example?.fitnessally.io", false),
            ("https://evil.example#.fitnessally.io", false),
            ("https://user@app.fitnessally.io", false),
            ("https://fitnessally.io@evil.example", false),
            ("https://evil.example\\.fitnessally.io", false),
            ("https://evil%2eexample.fitnessally.io", false),
            ("https://evil example.fitnessally.io", false),
            ("https://.fitnessally.io", false),
            ("https://a..fitnessally.io", false),
            ("https://app.fitnessally.io.", false),
            ("https://evilfitnessally.io", false),
            ("https://fitnessally.io.evil.com", false),
            ("http://app.fitnessally.io", false),
            ("https://app.fitnessally.io:", false),
            ("https://app.fitnessally.io:99999", false),
            // A wildcard with a port matches that port only.
            ("https://x.staging.example:8443", true),
            ("https://x.staging.example", false),
            ("https://x.staging.example:443", false),
            // Scheme wildcard: any real host of the scheme.
            ("chrome-extension://abcdefghijklmnop", true),
            ("moz-extension://1234-5678-9abc", true),
            ("chrome-extension://abc:1", true),
            ("chrome-extension://", false),
            ("chrome-extension://abc/", false),
            ("chrome-extension://abc/x", false),
            ("chrome-extension://a@b", false),
            ("chrome-extension://abc?x", false),
            ("safari-web-extension://abc", false),
            // Not origins at all.
            ("null", false),
            ("", false),
            ("https://", false),
            ("://fitnessally.io", false),
            ("1https://fitnessally.io", false),
            ("https://fitnessally.io https://app.fitnessally.io", false),
        ];
        for (origin, allowed) in cases {
            assert_eq!(p.allows(origin), *allowed, "{origin}");
        }
    }

    #[test]
    fn malformed_entries_are_errors() {
        for bad in [
            "fitnessally.io",
            "https://a*.b",
            "https://*.",
            "https://*.a/b",
            "https://a.b/path",
            "https://user@a.b",
            "https://a.b:port",
            "*://a.b",
            "1x://*",
        ] {
            assert!(CorsPolicy::parse(bad).is_err(), "{bad}");
        }
        assert!(CorsPolicy::parse("").unwrap().is_empty());
        assert!(
            CorsPolicy::parse("https://a.b/").is_ok(),
            "a trailing slash is trimmed"
        );
    }

    #[test]
    fn vary_origin_once_on_a_preflight_and_on_any_response() {
        let p = policy();
        let mut req = HeaderMap::new();
        req.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://fitnessally.io"),
        );
        req.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("GET"),
        );
        let mut preflight = p.preflight(&Method::OPTIONS, &req).unwrap();
        // The app decorates every response, preflights included.
        p.decorate(req.get(header::ORIGIN), preflight.headers_mut());
        assert_eq!(
            preflight.headers().get_all(header::VARY).iter().count(),
            1,
            "{:?}",
            preflight.headers()
        );
        let mut other = HeaderMap::new();
        other.insert(header::VARY, HeaderValue::from_static("Authorization"));
        p.decorate(req.get(header::ORIGIN), &mut other);
        let vary: Vec<_> = other.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Authorization", "Origin"]);
        // CORS off: no Vary at all.
        let off = CorsPolicy::parse("").unwrap();
        let mut preflight = off.preflight(&Method::OPTIONS, &req).unwrap();
        off.decorate(req.get(header::ORIGIN), preflight.headers_mut());
        assert!(preflight.headers().get(header::VARY).is_none());
    }

    #[test]
    fn decorate_reflects_only_allowed_origins() {
        let p = policy();
        let mut req = HeaderMap::new();
        req.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://app.fitnessally.io"),
        );
        let mut out = HeaderMap::new();
        p.decorate(req.get(header::ORIGIN), &mut out);
        assert_eq!(
            out[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.fitnessally.io"
        );
        assert_eq!(out[header::VARY], "Origin");
        assert!(
            out[header::ACCESS_CONTROL_EXPOSE_HEADERS]
                .to_str()
                .unwrap()
                .contains("Content-Range")
        );

        req.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        let mut out = HeaderMap::new();
        p.decorate(req.get(header::ORIGIN), &mut out);
        assert!(!out.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(out[header::VARY], "Origin");
    }

    #[test]
    fn preflight_is_204_either_way() {
        let p = policy();
        let mut req = HeaderMap::new();
        req.insert(
            header::ORIGIN,
            HeaderValue::from_static("chrome-extension://x"),
        );
        req.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("GET"),
        );
        let ok = p.preflight(&Method::OPTIONS, &req).unwrap();
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            ok.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "chrome-extension://x"
        );
        req.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        let blocked = p.preflight(&Method::OPTIONS, &req).unwrap();
        assert_eq!(blocked.status(), StatusCode::NO_CONTENT);
        assert!(
            !blocked
                .headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        );
        assert!(p.preflight(&Method::GET, &req).is_none());
    }
}
