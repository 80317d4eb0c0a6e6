//! `GET /gun-relay/get?soul=` and `POST /gun-relay/put`: the relay's own API (SPEC §3),
//! served through the shared [`GunClient`], so the indexer can point `GUN_PEERS` at
//! oip-media and keep its code — and get its misses cached, its gets coalesced, a miss as a
//! 404 (never a 500) and an unavailable relay as a gateway error.
//!
//! Decide first, then build: each request becomes one [`RelayAnswer`]; one exhaustive
//! `match` turns that into a response.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::body::Body;
use crate::gun::{GunClient, GunError, GunRecord};
use crate::http::query;
use crate::request_body::{BodyError, read_bounded};
use crate::response;
use crate::state::AppState;

/// Every way a relay request can end.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayAnswer {
    /// 200 `{"success":true,"data":…}`.
    Found(Value),
    /// 200 `{"success":true,"soul":…}`.
    Stored(String),
    /// 404 `{"error":"Not found"}`: the relay has no such soul.
    Missing,
    /// A `{"error": …}` answer with this status (400, 404 unknown endpoint, 405, 408, 413,
    /// 500 GUN refusal, 502/503/504 relay trouble).
    Error {
        /// The status.
        status: StatusCode,
        /// The `error` message.
        message: String,
        /// `Retry-After` seconds, for a 503 while the breaker is open.
        retry_after: Option<u64>,
    },
}

impl RelayAnswer {
    fn error(status: StatusCode, message: impl Into<String>) -> Self {
        RelayAnswer::Error {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// The shared client, or the 503 every endpoint answers while `GUN_PEERS` is unset.
fn client(state: &AppState) -> Result<&GunClient, Box<Response<Body>>> {
    state.gun.as_deref().ok_or_else(|| {
        Box::new(respond(RelayAnswer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "GUN relay not configured",
        )))
    })
}

/// `GET /gun-relay/get?soul=`.
pub async fn handle_get<B>(state: &AppState, request: Request<B>) -> Response<Body> {
    let gun = match client(state) {
        Ok(gun) => gun,
        Err(refused) => return *refused,
    };
    // An open breaker stays open for at most its cool-down: that is when to come back.
    let retry_after = state.config.gun.gun_breaker_cooldown;
    let soul = soul_from_query(request.uri().query());
    respond(get(gun, soul.as_deref(), retry_after).await)
}

/// The `soul` query parameter, decoded like Express decodes it (`+` is a space).
fn soul_from_query(query: Option<&str>) -> Option<String> {
    query::param(query, "soul").filter(|soul| !soul.is_empty())
}

/// `POST /gun-relay/put` with `{"soul", "data"}`.
pub async fn handle_put<B>(state: &AppState, request: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let gun = match client(state) {
        Ok(gun) => gun,
        Err(refused) => return *refused,
    };
    let settings = &state.config.gun;
    let (parts, body) = request.into_parts();
    let limit = settings.gun_put_body_limit;
    let budget = &state.gates.request_body;
    let timeout = settings.gun_put_body_timeout;
    let body = match read_bounded(&parts.headers, body, limit, timeout, budget).await {
        Ok(body) => body,
        Err(BodyError::Busy(why)) => return crate::admission::shed_response(why, 1),
        Err(error) => return respond(body_error(&error)),
    };
    let answer = put(gun, &body, settings.gun_breaker_cooldown).await;
    if let RelayAnswer::Stored(soul) = &answer {
        // The resolver's record cache must not serve the old version (or a remembered
        // miss) for its TTL after a write through us.
        let did = format!("{}{soul}", crate::resolve::source::GUN_PREFIX);
        state.resolver.invalidate(&did).await;
        // And every other replica's caches, through Redis when configured: queued,
        // never waited for.
        state.replicas.publish(soul);
    }
    respond(answer)
}

/// Any other `/gun-relay/…` path: the relay's own 404 (not a record miss).
pub fn handle_unknown(state: &AppState) -> Response<Body> {
    match client(state) {
        Ok(_) => respond(RelayAnswer::error(
            StatusCode::NOT_FOUND,
            "Endpoint not found",
        )),
        Err(refused) => *refused,
    }
}

/// The relay-compatible answer to a body that could not be read.
fn body_error(error: &BodyError) -> RelayAnswer {
    match error {
        BodyError::TooLarge { limit } => RelayAnswer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Body larger than {limit} bytes"),
        ),
        BodyError::Timeout(_) => {
            RelayAnswer::error(StatusCode::REQUEST_TIMEOUT, "Body not received in time")
        }
        BodyError::Read(reason) => {
            tracing::debug!(%reason, "put body could not be read");
            RelayAnswer::error(StatusCode::BAD_REQUEST, "Body could not be read")
        }
        BodyError::Busy(why) => RelayAnswer::Error {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("Server busy, retry shortly ({why})"),
            retry_after: Some(1),
        },
    }
}

async fn get(gun: &GunClient, soul: Option<&str>, retry_after: Duration) -> RelayAnswer {
    let Some(soul) = soul else {
        return RelayAnswer::error(StatusCode::BAD_REQUEST, "Soul parameter required");
    };
    match gun.get(soul).await {
        Ok(GunRecord::Found(data)) => RelayAnswer::Found(data),
        Ok(GunRecord::Missing) => RelayAnswer::Missing,
        Err(error) => from_error(&error, retry_after),
    }
}

async fn put(gun: &GunClient, body: &[u8], retry_after: Duration) -> RelayAnswer {
    let (soul, data) = match PutFields::read(body) {
        Ok(fields) => fields,
        Err(refused) => return refused,
    };
    match gun.put(&soul, data).await {
        Ok(()) => RelayAnswer::Stored(soul),
        Err(error) => from_error(&error, retry_after),
    }
}

/// The two fields of a put body, as JSON text: checked by the parser, never built into a
/// tree. The record is passed on to the relay as it was sent, so a put costs its body
/// and one copy of it, whatever the JSON holds (a 1 MiB body of `[0,0,…]` is ~16 MiB as
/// a `serde_json::Value`, and more while its array grows).
///
/// Read like the relay's `const {soul, data} = req.body` reads it: other fields are
/// ignored, and a field sent twice counts with its last value.
#[derive(Debug, Default)]
struct PutFields<'a> {
    soul: Option<&'a RawValue>,
    data: Option<&'a RawValue>,
}

impl<'a> PutFields<'a> {
    /// The soul (a non-empty string) and the data (`null` when absent) of `body`, or
    /// the relay's 400: `Invalid JSON`, or `Soul parameter required` for JSON that is
    /// not an object with a non-empty string `soul`.
    fn read(body: &'a [u8]) -> Result<(String, &'a RawValue), RelayAnswer> {
        let soul_required =
            || RelayAnswer::error(StatusCode::BAD_REQUEST, "Soul parameter required");
        let fields = match serde_json::from_slice::<PutFields<'a>>(body) {
            Ok(fields) => fields,
            // Well-formed JSON of another shape (an array, a string…).
            Err(error) if error.is_data() => return Err(soul_required()),
            Err(_) => return Err(RelayAnswer::error(StatusCode::BAD_REQUEST, "Invalid JSON")),
        };
        let soul = fields
            .soul
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
            .filter(|soul| !soul.is_empty())
            .ok_or_else(soul_required)?;
        // `data: null` is a delete: passed on, unlike the indexer's proxy did. A body
        // without `data` at all is the same as null, as it is for the relay.
        let data = fields.data.unwrap_or(RawValue::NULL);
        Ok((soul, data))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for PutFields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Fields<'a> {
            type Value = PutFields<'a>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object with `soul` and `data`")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<PutFields<'a>, M::Error> {
                let mut fields = PutFields::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "soul" => fields.soul = Some(map.next_value()?),
                        "data" => fields.data = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(fields)
            }
        }
        deserializer.deserialize_map(Fields(std::marker::PhantomData))
    }
}

/// The relay-compatible answer to a client error (`retry_after`: when an open breaker lets
/// requests through again, at the latest).
///
/// The messages name the kind of trouble, never its details: an unavailable relay's
/// error carries the relay's URL and the socket error, a misconfigured one the URL and
/// the start of whatever answered. Those go to the log (here, at `warn`; the client
/// logs a misconfiguration at `error` itself); the caller learns what it can act on.
fn from_error(error: &GunError, retry_after: Duration) -> RelayAnswer {
    let (status, message) = match error {
        GunError::InvalidSoul => (StatusCode::BAD_REQUEST, "Soul parameter required".into()),
        // The relay's own refusal of this request, passed on as the relay gave it.
        GunError::BadRequest { status, message } => (
            StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
            message.clone(),
        ),
        // GUN refused the write: the relay's 500 and message, as the indexer knows them.
        GunError::Rejected { message } => (StatusCode::INTERNAL_SERVER_ERROR, message.clone()),
        GunError::Unavailable {
            timed_out: true, ..
        } => {
            tracing::warn!(%error, "GUN relay call failed");
            (StatusCode::GATEWAY_TIMEOUT, "GUN relay timed out".into())
        }
        GunError::Unavailable { status, .. } => {
            tracing::warn!(%error, "GUN relay call failed");
            let message = match status {
                Some(code) => format!("GUN relay unavailable (it answered HTTP {code})"),
                None => "GUN relay unavailable".into(),
            };
            (StatusCode::BAD_GATEWAY, message)
        }
        GunError::InvalidResponse { .. } => {
            tracing::warn!(%error, "GUN relay call failed");
            (
                StatusCode::BAD_GATEWAY,
                "GUN relay answered with an invalid body".into(),
            )
        }
        GunError::Misconfigured { .. } => (
            StatusCode::BAD_GATEWAY,
            "GUN relay misconfigured (see the oip-media log)".into(),
        ),
        GunError::CircuitOpen => {
            return RelayAnswer::Error {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: error.to_string(),
                retry_after: Some(retry_after.as_secs().max(1)),
            };
        }
        GunError::Config { .. } | GunError::Internal { .. } => {
            tracing::error!(%error, "GUN relay call failed");
            (
                StatusCode::BAD_GATEWAY,
                "GUN relay call failed (see the oip-media log)".into(),
            )
        }
    };
    RelayAnswer::error(status, message)
}

/// Builds the response for an answer.
pub fn respond(answer: RelayAnswer) -> Response<Body> {
    match answer {
        RelayAnswer::Found(data) => {
            response::json(StatusCode::OK, &json!({"success": true, "data": data}))
        }
        RelayAnswer::Stored(soul) => {
            response::json(StatusCode::OK, &json!({"success": true, "soul": soul}))
        }
        RelayAnswer::Missing => response::json_error(StatusCode::NOT_FOUND, "Not found"),
        RelayAnswer::Error {
            status,
            message,
            retry_after,
        } => {
            let mut response = response::json_error(status, &message);
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soul_is_decoded_like_express_does() {
        assert_eq!(
            soul_from_query(Some("soul=abc%3A1%2Fx+y&z=1")),
            Some("abc:1/x y".to_owned())
        );
        assert_eq!(
            soul_from_query(Some("soul=abc:1")),
            Some("abc:1".to_owned())
        );
        assert_eq!(soul_from_query(Some("soul=")), None);
        assert_eq!(soul_from_query(Some("other=1")), None);
        assert_eq!(soul_from_query(None), None);
    }

    #[test]
    fn put_fields_are_read_like_the_relay_reads_them() {
        let read = |body: &str| match PutFields::read(body.as_bytes()) {
            Ok((soul, data)) => Ok((soul, data.get().to_owned())),
            Err(RelayAnswer::Error {
                status, message, ..
            }) => Err((status.as_u16(), message)),
            Err(other) => panic!("{other:?}"),
        };
        let stored = |soul: &str, data: &str| Ok((soul.to_owned(), data.to_owned()));
        assert_eq!(
            read(r#"{"soul":"a:1","data":{"x":[1, 2]}}"#),
            stored("a:1", r#"{"x":[1, 2]}"#),
            "passed on as sent"
        );
        assert_eq!(read(r#"{"soul":"a:1","data":null}"#), stored("a:1", "null"));
        assert_eq!(read(r#"{"soul":"a:1"}"#), stored("a:1", "null"));
        assert_eq!(
            read(r#"{"data":1,"other":{"deep":[]},"soul":"a\u003a1"}"#),
            stored("a:1", "1"),
            "other fields ignored, escapes decoded"
        );
        assert_eq!(
            read(r#"{"soul":7,"soul":"b","data":1,"data":2}"#),
            stored("b", "2"),
            "the last value counts, as in JSON.parse"
        );
        let invalid = Err((400, "Invalid JSON".to_owned()));
        let required = Err((400, "Soul parameter required".to_owned()));
        for body in [
            "{not json",
            "",
            r#"{"soul":"a"} x"#,
            r#"{"soul":"a","data":[}"#,
        ] {
            assert_eq!(read(body), invalid, "{body}");
        }
        for body in [
            "[]",
            r#"["a", null]"#,
            r#""soul""#,
            "null",
            r#"{"data":{}}"#,
            r#"{"soul":"","data":{}}"#,
            r#"{"soul":7,"data":{}}"#,
            r#"{"soul":null}"#,
        ] {
            assert_eq!(read(body), required, "{body}");
        }
    }

    #[test]
    fn errors_map_to_gateway_statuses() {
        let status = |error: GunError| match from_error(&error, Duration::from_secs(10)) {
            RelayAnswer::Error { status, .. } => status.as_u16(),
            other => panic!("{other:?}"),
        };
        let unavailable = |timed_out| GunError::Unavailable {
            reason: String::new(),
            status: None,
            timed_out,
            attempts: 3,
        };
        assert_eq!(status(unavailable(false)), 502);
        assert_eq!(status(unavailable(true)), 504);
        assert_eq!(status(GunError::CircuitOpen), 503);
        assert_eq!(
            status(GunError::Misconfigured {
                url: String::new(),
                status: 404,
                body: String::new()
            }),
            502
        );
        assert_eq!(
            status(GunError::BadRequest {
                status: 400,
                message: String::new()
            }),
            400
        );
        assert_eq!(
            status(GunError::Rejected {
                message: String::new()
            }),
            500
        );
        assert_eq!(status(GunError::InvalidSoul), 400);
    }
}
