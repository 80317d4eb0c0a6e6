//! `GET /gun-relay/get?soul=` and `POST /gun-relay/put`: the relay's own API (SPEC §3),
//! served through the shared [`GunClient`], so the indexer can point `GUN_PEERS` at
//! oip-media and keep its code — and get its misses cached, its gets coalesced, a miss as a
//! 404 (never a 500) and an unavailable relay as a gateway error.
//!
//! Decide first, then build: each request becomes one [`RelayAnswer`]; one exhaustive
//! `match` turns that into a response.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Value, json};

use crate::app::AppState;
use crate::body::Body;
use crate::gun::{GunClient, GunError, GunRecord};

/// Path prefix of this route family.
pub const PREFIX: &str = "/gun-relay/";

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

/// Answers one `/gun-relay/…` request.
pub async fn handle<B>(state: &AppState, request: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let settings = &state.config.gun;
    let Some(gun) = &state.gun else {
        return respond(RelayAnswer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "GUN relay not configured",
        ));
    };
    let endpoint = request
        .uri()
        .path()
        .strip_prefix(PREFIX)
        .unwrap_or_default();
    // An open breaker stays open for at most its cool-down: that is when to come back.
    let retry_after = settings.gun_breaker_cooldown;
    let answer = match (endpoint, request.method()) {
        ("get", &Method::GET) => {
            let soul = soul_from_query(request.uri().query());
            get(gun, soul.as_deref(), retry_after).await
        }
        ("put", &Method::POST) => {
            let body = read_body(
                request,
                settings.gun_put_body_limit,
                settings.gun_put_body_timeout,
            )
            .await;
            match body {
                Ok(body) => {
                    let answer = put(gun, &body, retry_after).await;
                    if let RelayAnswer::Stored(soul) = &answer {
                        // The resolver's record cache must not serve the old version
                        // (or a remembered miss) for its TTL after a write through us.
                        let did = format!("{}{soul}", crate::resolve::source::GUN_PREFIX);
                        state.resolver.invalidate(&did).await;
                    }
                    answer
                }
                Err(answer) => answer,
            }
        }
        ("get", _) => return super::method_not_allowed("GET"),
        ("put", _) => return super::method_not_allowed("POST"),
        _ => RelayAnswer::error(StatusCode::NOT_FOUND, "Endpoint not found"),
    };
    respond(answer)
}

/// The `soul` query parameter, decoded like Express decodes it (`+` is a space).
fn soul_from_query(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == "soul")
        .map(|(_, value)| value.into_owned())
        .filter(|soul| !soul.is_empty())
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
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return RelayAnswer::error(StatusCode::BAD_REQUEST, "Invalid JSON");
    };
    let Value::Object(mut fields) = body else {
        return RelayAnswer::error(StatusCode::BAD_REQUEST, "Soul parameter required");
    };
    let soul = match fields.remove("soul") {
        Some(Value::String(soul)) if !soul.is_empty() => soul,
        _ => return RelayAnswer::error(StatusCode::BAD_REQUEST, "Soul parameter required"),
    };
    // `data: null` is a delete: passed on, unlike the indexer's proxy did. A body without
    // `data` at all is the same as null, as it is for the relay (`const {soul, data} = …`).
    let data = fields.remove("data").unwrap_or(Value::Null);
    match gun.put(&soul, data).await {
        Ok(()) => RelayAnswer::Stored(soul),
        Err(error) => from_error(&error, retry_after),
    }
}

/// The relay-compatible answer to a client error (`retry_after`: when an open breaker lets
/// requests through again, at the latest).
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
        } => (
            StatusCode::GATEWAY_TIMEOUT,
            format!("GUN relay timed out: {error}"),
        ),
        GunError::Unavailable { .. } | GunError::InvalidResponse { .. } => {
            (StatusCode::BAD_GATEWAY, error.to_string())
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
            (StatusCode::BAD_GATEWAY, error.to_string())
        }
    };
    RelayAnswer::error(status, message)
}

/// Reads a request body of at most `limit` bytes within `timeout`: a huge body costs at
/// most `limit` bytes of memory, a slow one at most `timeout`.
async fn read_body<B>(
    request: Request<B>,
    limit: u64,
    timeout: Duration,
) -> Result<Bytes, RelayAnswer>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large = || {
        RelayAnswer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Body larger than {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|declared| declared > limit) {
        return Err(too_large()); // refused before a byte of it is read
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let body = Limited::new(request.into_body(), limit);
    match tokio::time::timeout(timeout, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(error)) => {
            tracing::debug!(%error, "put body could not be read");
            Err(RelayAnswer::error(
                StatusCode::BAD_REQUEST,
                "Body could not be read",
            ))
        }
        Err(_) => Err(RelayAnswer::error(
            StatusCode::REQUEST_TIMEOUT,
            "Body not received in time",
        )),
    }
}

/// Builds the response for an answer.
pub fn respond(answer: RelayAnswer) -> Response<Body> {
    match answer {
        RelayAnswer::Found(data) => {
            super::json(StatusCode::OK, &json!({"success": true, "data": data}))
        }
        RelayAnswer::Stored(soul) => {
            super::json(StatusCode::OK, &json!({"success": true, "soul": soul}))
        }
        RelayAnswer::Missing => super::json_error(StatusCode::NOT_FOUND, "Not found"),
        RelayAnswer::Error {
            status,
            message,
            retry_after,
        } => {
            let mut response = super::json_error(status, &message);
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
