//! Token checks, table-tested, and compared with the indexer's own check: every token
//! below gets oip-media's verdict (`JwtVerifier::verify_at` + the owner match, at a fixed
//! second) and — when Node and `tests/jwt-node/node_modules` are there — the verdict of
//! `jwt.verify(token, secret)` from jsonwebtoken 9.0.2 at the same second. The rules are
//! written down in `src/auth.rs`.
//!
//! Without Node the table still runs and the comparison prints why it skipped — unless
//! `OIP_REQUIRE_NODE_JWT` is set, as `.ci/run` does (after `npm ci` in `tests/jwt-node`).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use oip_media::auth::JwtVerifier;
use oip_media::config::Secret;
use serde_json::{Value, json};

const SECRET: &str = "test-secret";
/// A fixed clock: 2023-11-14T22:13:20Z.
const NOW: u64 = 1_700_000_000;
const OWNER: &str = "alice";

/// What the route answers for a token on an item owned by [`OWNER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// 200: verifies, names the owner.
    Owner,
    /// 403: verifies, names somebody else or nobody.
    NotOwner,
    /// 401: does not verify (counts as no token).
    NoToken,
}
use Answer::{NoToken, NotOwner, Owner};

fn token(alg: Algorithm, secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

fn hs256(claims: Value) -> String {
    token(Algorithm::HS256, SECRET, claims)
}

/// A token with a hand-written header and payload, signed (HS256) with [`SECRET`].
fn raw(header: &str, payload: &[u8]) -> String {
    let signed = format!("{}.{}", b64(header.as_bytes()), b64(payload));
    let signature = jsonwebtoken::crypto::sign(
        signed.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .expect("sign");
    format!("{signed}.{signature}")
}

/// base64url without padding, so tokens can be built by hand.
fn b64(bytes: &[u8]) -> String {
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

fn cases() -> Vec<(&'static str, String, Answer)> {
    let jwt = r#"{"alg":"HS256","typ":"JWT"}"#;
    let untyped = r#"{"alg":"HS256"}"#;
    let valid = hs256(json!({"publicKey": OWNER}));
    let last_dot = valid.rfind('.').expect("three parts");
    let now = NOW as f64;
    vec![
        // Algorithms: the HMAC family with the secret, nothing else.
        ("HS256", valid.clone(), Owner),
        (
            "HS384",
            token(Algorithm::HS384, SECRET, json!({"publicKey": OWNER})),
            Owner,
        ),
        (
            "HS512",
            token(Algorithm::HS512, SECRET, json!({"publicKey": OWNER})),
            Owner,
        ),
        (
            "alg none, empty signature",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none"}"#),
                b64(br#"{"publicKey":"alice"}"#)
            ),
            NoToken,
        ),
        (
            "alg none, HMAC signature",
            raw(r#"{"alg":"none"}"#, br#"{"publicKey":"alice"}"#),
            NoToken,
        ),
        (
            "alg RS256, HMAC signature",
            raw(r#"{"alg":"RS256"}"#, br#"{"publicKey":"alice"}"#),
            NoToken,
        ),
        (
            "alg hs256 (case matters)",
            raw(r#"{"alg":"hs256"}"#, br#"{"publicKey":"alice"}"#),
            NoToken,
        ),
        (
            "no alg",
            raw(r#"{"typ":"JWT"}"#, br#"{"publicKey":"alice"}"#),
            NoToken,
        ),
        (
            "header not JSON",
            raw("alg", br#"{"publicKey":"alice"}"#),
            NoToken,
        ),
        // Signature and shape.
        (
            "another secret",
            token(Algorithm::HS256, "other", json!({"publicKey": OWNER})),
            NoToken,
        ),
        (
            "signature cut",
            valid[..valid.len() - 2].to_owned(),
            NoToken,
        ),
        ("signature removed", valid[..=last_dot].to_owned(), NoToken),
        ("two parts", valid[..last_dot].to_owned(), NoToken),
        ("four parts", format!("{valid}.x"), NoToken),
        ("padding", format!("{valid}="), NoToken),
        ("garbage", "garbage".to_owned(), NoToken),
        ("empty parts", "..".to_owned(), NoToken),
        // exp and nbf, with jsonwebtoken's clock: expired in its exp second.
        (
            "exp now+1",
            hs256(json!({"publicKey": OWNER, "exp": NOW + 1})),
            Owner,
        ),
        (
            "exp now",
            hs256(json!({"publicKey": OWNER, "exp": NOW})),
            NoToken,
        ),
        (
            "exp now-1",
            hs256(json!({"publicKey": OWNER, "exp": NOW - 1})),
            NoToken,
        ),
        (
            "exp now+0.5",
            hs256(json!({"publicKey": OWNER, "exp": now + 0.5})),
            Owner,
        ),
        (
            "exp negative",
            hs256(json!({"publicKey": OWNER, "exp": -1})),
            NoToken,
        ),
        (
            "exp a string",
            hs256(json!({"publicKey": OWNER, "exp": (NOW + 60).to_string()})),
            NoToken,
        ),
        (
            "exp null",
            hs256(json!({"publicKey": OWNER, "exp": null})),
            NoToken,
        ),
        (
            "exp true",
            hs256(json!({"publicKey": OWNER, "exp": true})),
            NoToken,
        ),
        ("no exp", hs256(json!({"publicKey": OWNER})), Owner),
        (
            "nbf now",
            hs256(json!({"publicKey": OWNER, "nbf": NOW})),
            Owner,
        ),
        (
            "nbf now+1",
            hs256(json!({"publicKey": OWNER, "nbf": NOW + 1})),
            NoToken,
        ),
        (
            "nbf now+0.5",
            hs256(json!({"publicKey": OWNER, "nbf": now + 0.5})),
            NoToken,
        ),
        (
            "nbf now-1",
            hs256(json!({"publicKey": OWNER, "nbf": NOW - 1})),
            Owner,
        ),
        (
            "nbf a string",
            hs256(json!({"publicKey": OWNER, "nbf": "0"})),
            NoToken,
        ),
        (
            "nbf null",
            hs256(json!({"publicKey": OWNER, "nbf": null})),
            NoToken,
        ),
        (
            "nbf in the future outranks a valid exp",
            hs256(json!({"publicKey": OWNER, "nbf": NOW + 60, "exp": NOW + 120})),
            NoToken,
        ),
        (
            "iat in the future",
            hs256(json!({"publicKey": OWNER, "iat": NOW + 3600})),
            Owner,
        ),
        (
            "iat a string",
            hs256(json!({"publicKey": OWNER, "iat": "x"})),
            Owner,
        ),
        (
            "aud, iss, sub of any kind",
            hs256(json!({"publicKey": OWNER, "aud": "x", "iss": 7, "sub": []})),
            Owner,
        ),
        // Claims that verify but do not fit: not the owner.
        ("publicKey: 7", hs256(json!({"publicKey": 7})), NotOwner),
        (
            "publicKey: [alice]",
            hs256(json!({"publicKey": [OWNER]})),
            NotOwner,
        ),
        (
            "publicKey: null",
            hs256(json!({"publicKey": null})),
            NotOwner,
        ),
        ("publicKey: {}", hs256(json!({"publicKey": {}})), NotOwner),
        (
            "publicKey: true",
            hs256(json!({"publicKey": true})),
            NotOwner,
        ),
        ("someone else", hs256(json!({"publicKey": "bob"})), NotOwner),
        (
            "the owner's key in another case",
            hs256(json!({"publicKey": "ALICE"})),
            NotOwner,
        ),
        ("no key claim", hs256(json!({"userId": OWNER})), NotOwner),
        (
            "publisherPubKey",
            hs256(json!({"publisherPubKey": OWNER})),
            Owner,
        ),
        (
            "publicKey of the wrong type, publisherPubKey right",
            hs256(json!({"publicKey": 7, "publisherPubKey": OWNER})),
            Owner,
        ),
        // Payloads that are not claim objects: Node's typ-dependent parse.
        ("typ JWT, payload not JSON", raw(jwt, b"alice"), NoToken),
        ("typ JWT, payload null", raw(jwt, b"null"), NoToken),
        ("typ JWT, payload a number", raw(jwt, b"7"), NotOwner),
        (
            "typ JWT, payload an array",
            raw(jwt, b"[\"alice\"]"),
            NotOwner,
        ),
        ("no typ, payload not JSON", raw(untyped, b"alice"), NotOwner),
        ("no typ, payload null", raw(untyped, b"null"), NotOwner),
        (
            "no typ, a claims object",
            raw(untyped, br#"{"publicKey":"alice"}"#),
            Owner,
        ),
        (
            "typ jwt (lowercase) is not JWT",
            raw(r#"{"alg":"HS256","typ":"jwt"}"#, b"alice"),
            NotOwner,
        ),
    ]
}

/// oip-media's answer for `token` at [`NOW`].
fn ours(verifier: &JwtVerifier, token: &str) -> Answer {
    match verifier.verify_at(token, NOW) {
        Err(_) => NoToken,
        Ok(verified) if verified.is_owner(OWNER) => Owner,
        Ok(_) => NotOwner,
    }
}

#[test]
fn every_token_gets_the_answer_of_the_table() {
    let verifier = JwtVerifier::new(&Secret::new(SECRET)).expect("a secret");
    for (name, token, expected) in cases() {
        assert_eq!(ours(&verifier, &token), expected, "{name}: {token}");
    }
}

#[test]
fn jsonwebtoken_9_verifies_exactly_the_tokens_we_verify() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/jwt-node");
    let node = Command::new("node").arg("--version").output();
    let reason = if !matches!(&node, Ok(out) if out.status.success()) {
        Some("`node` is not installed".to_owned())
    } else if !dir.join("node_modules/jsonwebtoken").is_dir() {
        Some("run `(cd tests/jwt-node && npm ci)` once".to_owned())
    } else {
        None
    };
    if let Some(reason) = reason {
        if std::env::var_os("OIP_REQUIRE_NODE_JWT").is_some() {
            panic!("OIP_REQUIRE_NODE_JWT is set but jsonwebtoken cannot run: {reason}");
        }
        let _ = writeln!(std::io::stderr(), "skipped: jsonwebtoken parity: {reason}");
        return;
    }
    let cases = cases();
    let mut input = String::new();
    for (_, token, _) in &cases {
        input.push_str(&json!({"token": token, "secret": SECRET, "now": NOW}).to_string());
        input.push('\n');
    }
    let mut child = Command::new("node")
        .arg("verify.js")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write cases");
    let out = child.wait_with_output().expect("node ends");
    assert!(out.status.success(), "verify.js failed");
    let verdicts: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(verdicts.len(), cases.len(), "one verdict per case");
    let verifier = JwtVerifier::new(&Secret::new(SECRET)).expect("a secret");
    let mut different = Vec::new();
    for ((name, token, _), node) in cases.iter().zip(&verdicts) {
        let node_verifies = node == "verifies";
        let we_verify = ours(&verifier, token) != NoToken;
        if node_verifies != we_verify {
            different.push(format!(
                "{name}: node {node}, oip-media verifies: {we_verify}"
            ));
        }
    }
    assert!(different.is_empty(), "{different:#?}");
}
