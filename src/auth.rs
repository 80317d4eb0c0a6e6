//! Owner checks for private media: the indexer's HS256 tokens, verified with
//! `jsonwebtoken` (SPEC §1B).
//!
//! Only HS256 is accepted. `alg: none` cannot even be expressed by the crate's header
//! type, so such a token fails to parse; every other algorithm is refused by the
//! validation's algorithm list before any key is used. `exp` is honoured when present
//! (with no leeway: the indexer runs on the same host). A token without `exp` is
//! accepted, as the indexer's `jwt.verify` accepts it; `aud` is not checked because the
//! indexer sets none.

use http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::Secret;

/// Why a request may not see a private item. Each maps to the indexer's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No token, a token that does not verify (forged, expired, wrong algorithm), or no
    /// secret configured to verify it with: 401.
    #[error("Authentication required for private media")]
    Unauthenticated,
    /// A valid token for somebody else: 403.
    #[error("Access denied: not the owner")]
    NotOwner,
}

/// The claims oip-media reads. The indexer's tokens also carry `userId`, `email` and
/// `isAdmin`; they play no part in the owner check, so they are not parsed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    /// The user's public key.
    #[serde(default)]
    pub public_key: Option<String>,
    /// Same meaning; some tokens carry this name instead of `publicKey`.
    #[serde(default)]
    pub publisher_pub_key: Option<String>,
}

impl Claims {
    /// True when either key claim names `owner`.
    pub fn is_owner(&self, owner: &str) -> bool {
        [&self.public_key, &self.publisher_pub_key]
            .into_iter()
            .flatten()
            .any(|key| key == owner)
    }
}

/// Verifies `Authorization: Bearer <jwt>` against the configured secret.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
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
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        validation.leeway = 0;
        validation.validate_aud = false;
        Some(JwtVerifier {
            key: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
        })
    }

    /// The claims of a token that verifies, or the reason (for logs) it does not.
    pub fn verify(&self, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
        jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map(|data| data.claims)
    }
}

/// The token in `Authorization: Bearer <token>` (scheme case-insensitive), if any.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
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
pub fn authorize_owner(
    verifier: Option<&JwtVerifier>,
    headers: &HeaderMap,
    owner: Option<&str>,
) -> Result<(), Denied> {
    let verifier = verifier.ok_or(Denied::Unauthenticated)?;
    let token = bearer_token(headers).ok_or(Denied::Unauthenticated)?;
    let claims = verifier.verify(token).map_err(|error| {
        tracing::debug!(%error, "bearer token refused");
        Denied::Unauthenticated
    })?;
    match owner {
        Some(owner) if claims.is_owner(owner) => Ok(()),
        _ => Err(Denied::NotOwner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const SECRET: &str = "test-secret";

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(&Secret::new(SECRET)).unwrap()
    }

    fn token(alg: Algorithm, secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        headers
    }

    fn b64(json: &str) -> String {
        base64_url_nopad(json.as_bytes())
    }

    /// Minimal base64url without padding, so the test can hand-build tokens.
    fn base64_url_nopad(bytes: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn owner_with_either_claim_name() {
        let v = verifier();
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let t = token(
            Algorithm::HS256,
            SECRET,
            serde_json::json!({"publicKey": "alice", "exp": exp}),
        );
        assert_eq!(
            authorize_owner(Some(&v), &bearer(&t), Some("alice")),
            Ok(())
        );
        assert_eq!(
            authorize_owner(Some(&v), &bearer(&t), Some("bob")),
            Err(Denied::NotOwner)
        );
        assert_eq!(
            authorize_owner(Some(&v), &bearer(&t), None),
            Err(Denied::NotOwner)
        );
        let t = token(
            Algorithm::HS256,
            SECRET,
            serde_json::json!({"publisherPubKey": "bob"}),
        );
        assert_eq!(authorize_owner(Some(&v), &bearer(&t), Some("bob")), Ok(()));
    }

    #[test]
    fn bad_tokens_are_no_tokens() {
        let v = verifier();
        let claims = serde_json::json!({"publicKey": "alice"});
        let forged = token(Algorithm::HS256, "other-secret", claims.clone());
        let hs512 = token(Algorithm::HS512, SECRET, claims.clone());
        let expired = token(
            Algorithm::HS256,
            SECRET,
            serde_json::json!({"publicKey": "alice", "exp": 1_000_000_000}),
        );
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"publicKey":"alice"}"#)
        );
        for t in [forged, hs512, expired, none, "garbage".to_owned()] {
            assert_eq!(
                authorize_owner(Some(&v), &bearer(&t), Some("alice")),
                Err(Denied::Unauthenticated),
                "{t}"
            );
        }
        assert_eq!(
            authorize_owner(Some(&v), &HeaderMap::new(), Some("alice")),
            Err(Denied::Unauthenticated)
        );
    }

    #[test]
    fn no_secret_means_nobody() {
        let t = token(
            Algorithm::HS256,
            "",
            serde_json::json!({"publicKey": "alice"}),
        );
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
}
