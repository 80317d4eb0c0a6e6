//! CORS for every route: allowed origins get their origin reflected; every other origin
//! gets the normal response without CORS headers (the browser then blocks it), never an
//! error status — the Node app answered those with a 500.
//!
//! Hand-written rather than tower-http's `CorsLayer`: that layer answers preflights with
//! 200 (we answer 204, as the indexer's clients expect) and its origin rules would need a
//! predicate for the extension schemes anyway; the whole policy is the small matcher and
//! two header blocks below. A leaf: it imports nothing of the crate, so the
//! configuration can check the list without depending on responses.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

/// One allowed-origin rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    /// An exact origin, e.g. `https://fitnessally.io`.
    Exact(String),
    /// Any origin of a scheme, e.g. `chrome-extension://*`.
    Scheme(String),
    /// Any subdomain of a host over a scheme, e.g. `https://*.fitnessally.io`.
    Subdomain { scheme: String, suffix: String },
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
/// Request headers clients send us.
const ALLOW_HEADERS: &str = "Authorization, Content-Type, Range, If-None-Match, If-Modified-Since, If-Range, If-Match, If-Unmodified-Since, X-Request-Id";

impl CorsPolicy {
    /// Parses a comma list of origins (`https://a.example`, `https://*.a.example`,
    /// `chrome-extension://*`). Returns the offending entry when one is malformed.
    pub fn parse(list: &str) -> Result<CorsPolicy, String> {
        let mut rules = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let entry = entry.trim_end_matches('/').to_ascii_lowercase();
            let Some((scheme, rest)) = entry.split_once("://") else {
                return Err(format!(
                    "`{entry}` is not an origin (expected scheme://host)"
                ));
            };
            if scheme.is_empty() || rest.is_empty() {
                return Err(format!(
                    "`{entry}` is not an origin (expected scheme://host)"
                ));
            }
            let rule = if rest == "*" {
                OriginRule::Scheme(scheme.to_owned())
            } else if let Some(suffix) = rest.strip_prefix("*.") {
                OriginRule::Subdomain {
                    scheme: scheme.to_owned(),
                    suffix: format!(".{suffix}"),
                }
            } else if rest.contains('*') || rest.contains('/') {
                return Err(format!(
                    "`{entry}`: only `scheme://*` and `scheme://*.domain` wildcards are supported"
                ));
            } else {
                OriginRule::Exact(entry.clone())
            };
            rules.push(rule);
        }
        Ok(CorsPolicy { rules })
    }

    /// True when no origin is allowed (CORS off).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `origin` (the request's `Origin` value) is on the list.
    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        let Some((scheme, host)) = origin.split_once("://") else {
            return false;
        };
        self.rules.iter().any(|rule| match rule {
            OriginRule::Exact(o) => *o == origin,
            OriginRule::Scheme(s) => s == scheme && !host.is_empty(),
            OriginRule::Subdomain { scheme: s, suffix } => {
                s == scheme && host.len() > suffix.len() && host.ends_with(suffix.as_str())
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
        let out = response.headers_mut();
        out.append(header::VARY, HeaderValue::from_static("Origin"));
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
        response.append(header::VARY, HeaderValue::from_static("Origin"));
        if let Some(origin) = self.allowed_origin(origin) {
            response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            response.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CorsPolicy {
        CorsPolicy::parse("https://fitnessally.io, https://*.fitnessally.io, chrome-extension://*, moz-extension://*").unwrap()
    }

    #[test]
    fn matching_rules() {
        let p = policy();
        assert!(p.allows("https://fitnessally.io"));
        assert!(p.allows("HTTPS://FitnessAlly.io"));
        assert!(p.allows("https://app.fitnessally.io"));
        assert!(p.allows("chrome-extension://abcdefghijklmnop"));
        assert!(p.allows("moz-extension://1234-5678"));
        assert!(!p.allows("http://fitnessally.io"), "scheme matters");
        assert!(
            !p.allows("https://evilfitnessally.io"),
            "suffix must be a subdomain"
        );
        assert!(!p.allows("https://fitnessally.io.evil.com"));
        assert!(
            !p.allows("https://.fitnessally.io"),
            "an empty label is no subdomain"
        );
        assert!(!p.allows("chrome-extension://"));
        assert!(!p.allows("null"));
        assert!(!p.allows("https://example.com"));
    }

    #[test]
    fn malformed_entries_are_errors() {
        assert!(CorsPolicy::parse("fitnessally.io").is_err());
        assert!(CorsPolicy::parse("https://a*.b").is_err());
        assert!(CorsPolicy::parse("").unwrap().is_empty());
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
