//! Owner checks for private media: the indexer's tokens, checked as the indexer's
//! `jwt.verify(token, JWT_SECRET)` checks them (SPEC §1B).
//!
//! # The rules, as Node's `jsonwebtoken` applies them
//!
//! The indexer calls `jwt.verify(token, secret)` with no options. What that does was read
//! in `verify.js` and `decode.js` of auth0/node-jsonwebtoken 9.0.2 (and `jws` 3/4, which
//! it calls to split and decode the token). Step by step, and what oip-media does:
//!
//! | step | `jsonwebtoken` 9 | here |
//! |---|---|---|
//! | shape | exactly three `.`-separated parts; header and payload non-empty base64url, the signature base64url or empty (`jws`'s regex) | the same |
//! | signature present | an empty signature with a secret: `jwt signature is required` | refused |
//! | header | base64url JSON with an `alg` | read with `jsonwebtoken::decode_header` (a header that crate cannot read is refused) |
//! | algorithm | with a string secret, `algorithms` defaults to `HS256, HS384, HS512` (the secret becomes a `secret` KeyObject); `none`, `RS*`, `PS*`, `ES*` are `invalid algorithm` | `HS256`, `HS384`, `HS512`; everything else refused before any key is used |
//! | signature | HMAC of `header.payload` with the secret | `jsonwebtoken::crypto::verify`, constant-time |
//! | payload | `typ: "JWT"` in the header: `JSON.parse` must succeed, and a `null` payload throws (`payload.nbf` of null); otherwise a payload that is not a JSON object stays a string and *verifies* | the same: such a token verifies but carries no claims, so it is "not the owner" (`403`) |
//! | `nbf` | when the key is present (even `null`) it must be a number (`invalid nbf value`); refused while `nbf > now` | the same |
//! | `exp` | when present it must be a number (`invalid exp value`); refused once `now >= exp` | the same: a token is expired *in* its `exp` second |
//! | clock | `now = Math.floor(Date.now() / 1000)`, no tolerance (`clockTolerance` 0); claims compared as JavaScript numbers (fractions count) | whole seconds of the system clock, claims compared as `f64` |
//! | `iat`, `aud`, `iss`, `sub`, `jti`, `maxAge` | not checked without options | not checked |
//!
//! Any refusal above makes the token count as no token: `401`, as the indexer answers.
//! A token that verifies is then matched against the manifest's `userPublicKey`: its
//! `publicKey` or `publisherPubKey` claim, when it is a string, must equal it. A claim of
//! another type (`publicKey: 7`), or no claim, is a token of somebody else: `403`.
//!
//! Deliberate differences: a number JSON cannot hold in an `f64` (`exp: 1e400`, which
//! JavaScript reads as `Infinity`) makes the payload unreadable (so a `typ: "JWT"` token is
//! refused) rather than a token that never expires; a `JWT_SECRET` that is a PEM public
//! key (which Node would read as an RSA/EC key) is used as an HMAC secret like any other
//! text; an empty `JWT_SECRET` disables private media (Node refuses every token then too).
//!
//! Two `Authorization` header lines are refused with `400` by the route before any of this
//! (`single_authorization`): RFC 9110 defines one credentials value per request.

use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use crate::secret::Secret;

/// Why a request may not see a private item. Each maps to the indexer's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Denied {
    /// No token, a token that does not verify (see the module's table), or no secret
    /// configured to verify it with: 401.
    #[error("Authentication required for private media")]
    Unauthenticated,
    /// A token that verifies but whose claims do not name the owner: 403.
    #[error("Access denied: not the owner")]
    NotOwner,
}

/// Why a token does not verify; for the debug log only (the client gets a 401).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts with a non-empty header and payload.
    #[error("jwt malformed")]
    Malformed,
    /// The third part is empty.
    #[error("jwt signature is required")]
    SignatureRequired,
    /// The header is not JSON with a known `alg`.
    #[error("invalid token header: {0}")]
    Header(#[source] jsonwebtoken::errors::Error),
    /// `alg` is not one of the HMAC algorithms.
    #[error("invalid algorithm {0:?}")]
    Algorithm(Algorithm),
    /// The signature does not match (or is not base64url of a signature).
    #[error("invalid signature")]
    Signature,
    /// `typ: "JWT"` and the payload is not JSON, or is `null`.
    #[error("invalid payload")]
    Payload,
    /// `exp` or `nbf` is present and not a number.
    #[error("invalid {0} value")]
    ClaimType(&'static str),
    /// `now >= exp`.
    #[error("jwt expired")]
    Expired,
    /// `nbf > now`.
    #[error("jwt not active")]
    NotYetValid,
}

/// What a token that verifies carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Verified {
    /// A JSON object of claims.
    Claims(Map<String, Value>),
    /// A payload that is not a JSON object (Node hands it back as a string or a
    /// number): it verifies, but names nobody.
    NoClaims,
}

/// The claims that name a user.
const KEY_CLAIMS: [&str; 2] = ["publicKey", "publisherPubKey"];

/// The algorithms `jsonwebtoken` 9 accepts for a string secret.
const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

impl Verified {
    /// True when `publicKey` or `publisherPubKey` is a string equal to `owner`.
    pub fn is_owner(&self, owner: &str) -> bool {
        let Verified::Claims(claims) = self else {
            return false;
        };
        KEY_CLAIMS
            .iter()
            .any(|name| claims.get(*name).and_then(Value::as_str) == Some(owner))
    }
}

/// Verifies `Authorization: Bearer <jwt>` against the configured secret.
pub struct JwtVerifier {
    key: DecodingKey,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier").finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// A verifier for `secret`; `None` for an empty secret, which would let anyone sign.
    pub fn new(secret: &Secret) -> Option<JwtVerifier> {
        if secret.expose().is_empty() {
            return None;
        }
        Some(JwtVerifier {
            key: DecodingKey::from_secret(secret.expose().as_bytes()),
        })
    }

    /// Verifies `token` now (see [`JwtVerifier::verify_at`]).
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        self.verify_at(token, now)
    }

    /// Verifies `token` as `jwt.verify(token, secret)` would at `now` (whole seconds
    /// since the epoch): the steps of the module's table, in its order.
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Verified, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        if header.is_empty()
            || payload.is_empty()
            || ![header, payload, signature].iter().all(|p| is_base64url(p))
        {
            return Err(TokenError::Malformed);
        }
        if signature.is_empty() {
            return Err(TokenError::SignatureRequired);
        }
        let head = jsonwebtoken::decode_header(token).map_err(TokenError::Header)?;
        if !HMAC.contains(&head.alg) {
            return Err(TokenError::Algorithm(head.alg));
        }
        let signed = &token[..header.len() + 1 + payload.len()];
        let valid = jsonwebtoken::crypto::verify(signature, signed.as_bytes(), &self.key, head.alg)
            .map_err(|_| TokenError::Signature)?;
        if !valid {
            return Err(TokenError::Signature);
        }
        // The signature is checked: reading the payload is no longer "insecure".
        let typed_jwt = head.typ.as_deref() == Some("JWT");
        let claims = match jsonwebtoken::dangerous::insecure_decode_claims::<Value>(token) {
            Ok(Value::Object(claims)) => claims,
            Ok(Value::Null) | Err(_) if typed_jwt => return Err(TokenError::Payload),
            Ok(_) | Err(_) => return Ok(Verified::NoClaims),
        };
        let now = now as f64;
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_f64().ok_or(TokenError::ClaimType("nbf"))?;
            if nbf > now {
                return Err(TokenError::NotYetValid);
            }
        }
        if let Some(exp) = claims.get("exp") {
            let exp = exp.as_f64().ok_or(TokenError::ClaimType("exp"))?;
            if now >= exp {
                return Err(TokenError::Expired);
            }
        }
        Ok(Verified::Claims(claims))
    }
}

/// `jws`'s alphabet: base64url without padding.
fn is_base64url(part: &str) -> bool {
    part.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// False when the request carries more than one `Authorization` line: the route answers
/// `400` rather than pick one (RFC 9110 §11.6.2 defines a single credentials value, and
/// two proxies disagreeing on which one counts is how access checks get bypassed).
pub(crate) fn single_authorization(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_none()
}

/// The token in `Authorization: Bearer <token>` (scheme case-insensitive), if any.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// Decides whether the request behind `headers` may see an item owned by `owner`
/// (`None` when the manifest names no owner: nobody matches). Without a verifier
/// (no `JWT_SECRET`) nobody is authenticated.
pub(crate) fn authorize_owner(
    verifier: Option<&JwtVerifier>,
    headers: &HeaderMap,
    owner: Option<&str>,
) -> Result<(), Denied> {
    let verifier = verifier.ok_or(Denied::Unauthenticated)?;
    let token = bearer_token(headers).ok_or(Denied::Unauthenticated)?;
    let verified = verifier.verify(token).map_err(|error| {
        tracing::debug!(%error, "bearer token refused");
        Denied::Unauthenticated
    })?;
    match owner {
        Some(owner) if verified.is_owner(owner) => Ok(()),
        _ => Err(Denied::NotOwner),
    }
}

/// Owners' tokens for private `/api/media` items (`src/auth.rs`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Private media")]
pub struct AuthSettings {
    /// Secret of the tokens the indexer issues, for private `/api/media` items.
    ///
    /// Secret of the tokens the indexer issues (HMAC: HS256, HS384 or HS512, checked as the
    /// indexer's jsonwebtoken checks them); private `/api/media` items are served only to their
    /// owner's token.
    ///
    /// Unset: private media is never served (401), and a warning says so at start-up. Never
    /// printed, not even by `--help`.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "test-secret";
    /// A fixed clock for the table: 2023-11-14T22:13:20Z.
    const NOW: u64 = 1_700_000_000;

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(&Secret::new(SECRET)).unwrap()
    }

    fn token(alg: Algorithm, secret: &str, claims: Value) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn hs256(claims: Value) -> String {
        token(Algorithm::HS256, SECRET, claims)
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        headers
    }

    // The table of every case, compared with jsonwebtoken 9 itself, is
    // tests/jwt_parity.rs; here, the clock and the claims at a fixed second.
    #[test]
    fn expired_in_its_exp_second_active_from_its_nbf_second() {
        let v = verifier();
        let at = |claims: Value| v.verify_at(&hs256(claims), NOW).is_ok();
        assert!(at(json!({"exp": NOW + 1})));
        assert!(!at(json!({"exp": NOW})));
        assert!(at(json!({"exp": NOW as f64 + 0.5})));
        assert!(!at(json!({"exp": null})));
        assert!(at(json!({"nbf": NOW})));
        assert!(!at(json!({"nbf": NOW as f64 + 0.5})));
        assert!(!at(json!({"nbf": "0"})));
        let verified = v.verify_at(&hs256(json!({"publicKey": 7})), NOW).unwrap();
        assert!(!verified.is_owner("7"), "a number is not a key");
    }

    #[test]
    fn the_real_clock_is_used_by_default() {
        let v = verifier();
        let now = jsonwebtoken::get_current_timestamp();
        let t = hs256(json!({"publicKey": "alice", "exp": now + 600}));
        assert_eq!(
            authorize_owner(Some(&v), &bearer(&t), Some("alice")),
            Ok(())
        );
        let t = hs256(json!({"publicKey": "alice", "exp": now - 600}));
        assert_eq!(
            authorize_owner(Some(&v), &bearer(&t), Some("alice")),
            Err(Denied::Unauthenticated)
        );
        let t = hs256(json!({"publicKey": "alice", "nbf": now + 600}));
        assert_eq!(
            authorize_owner(Some(&v), &bearer(&t), Some("alice")),
            Err(Denied::Unauthenticated)
        );
    }

    #[test]
    fn an_owner_must_be_named_by_the_manifest() {
        let v = verifier();
        let t = hs256(json!({"publicKey": "alice"}));
        assert_eq!(
            authorize_owner(Some(&v), &bearer(&t), Some("bob")),
            Err(Denied::NotOwner)
        );
        assert_eq!(
            authorize_owner(Some(&v), &bearer(&t), None),
            Err(Denied::NotOwner)
        );
        assert_eq!(
            authorize_owner(Some(&v), &HeaderMap::new(), Some("alice")),
            Err(Denied::Unauthenticated)
        );
    }

    #[test]
    fn no_secret_means_nobody() {
        let t = token(Algorithm::HS256, "", json!({"publicKey": "alice"}));
        assert!(JwtVerifier::new(&Secret::new("")).is_none());
        assert_eq!(
            authorize_owner(None, &bearer(&t), Some("alice")),
            Err(Denied::Unauthenticated)
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_required() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&h), None);
    }

    #[test]
    fn two_authorization_lines_are_not_single() {
        let mut h = HeaderMap::new();
        assert!(single_authorization(&h));
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        assert!(single_authorization(&h));
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        assert!(!single_authorization(&h));
    }
}
