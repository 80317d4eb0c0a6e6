//! The decision: one relay answer (status and body) becomes an outcome, before anything
//! else happens to it. Pure functions, so every branch is tested without a socket.
//!
//! The status is read first and the body is only looked at to tell the relay's record miss
//! (`404 {"error":"Not found"}`) from a 404 of something that is not the relay's API — the
//! indexer's client lost that distinction by discarding the response before reading its
//! status, and retried every miss.

use http::StatusCode;
use serde_json::Value;

use super::error::GunError;

/// What a get can learn from one answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum GetAnswer {
    /// 200: the relay's `data` value.
    Found(Value),
    /// 404 `{"error":"Not found"}`: the relay has no such soul.
    Missing,
}

/// Longest piece of a body quoted in an error or a log line.
const SNIPPET: usize = 200;

/// Decides a `GET /get` answer.
pub(crate) fn classify_get(
    url: &str,
    status: StatusCode,
    body: &[u8],
) -> Result<GetAnswer, GunError> {
    if status == StatusCode::OK {
        let value: Value = serde_json::from_slice(body).map_err(|e| GunError::InvalidResponse {
            reason: format!("not JSON ({e}): {}", snippet(body)),
        })?;
        return match value {
            Value::Object(mut fields) => match fields.remove("data") {
                Some(data) => Ok(GetAnswer::Found(data)),
                None => Err(GunError::InvalidResponse {
                    reason: format!("no `data` field: {}", snippet(body)),
                }),
            },
            _ => Err(GunError::InvalidResponse {
                reason: format!("not a JSON object: {}", snippet(body)),
            }),
        };
    }
    if status == StatusCode::NOT_FOUND && error_message(body).as_deref() == Some("Not found") {
        return Ok(GetAnswer::Missing);
    }
    Err(classify_failure(url, status, body))
}

/// Decides a `POST /put` answer.
pub(crate) fn classify_put(url: &str, status: StatusCode, body: &[u8]) -> Result<(), GunError> {
    if status.is_success() {
        return Ok(());
    }
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        // The relay's answer when GUN's ack carries an error: GUN refused this write, and
        // will refuse it again. A 500 without that body is some other failure.
        if let Some(message) = error_message(body) {
            return Err(GunError::Rejected { message });
        }
    }
    Err(classify_failure(url, status, body))
}

/// Every answer that is neither a record, a record miss nor a stored write.
fn classify_failure(url: &str, status: StatusCode, body: &[u8]) -> GunError {
    let code = status.as_u16();
    if status == StatusCode::NOT_FOUND || status.is_redirection() {
        // Not the relay's record miss: the URL does not lead to the relay's API.
        GunError::Misconfigured {
            url: url.to_owned(),
            status: code,
            body: snippet(body),
        }
    } else if status.is_client_error() {
        // The relay's own `{"error": …}` is its protocol and reaches the caller; any other
        // body (an HTML page of whatever answered) is not quoted to the caller.
        GunError::BadRequest {
            status: code,
            message: error_message(body)
                .unwrap_or_else(|| format!("GUN relay refused the request (HTTP {code})")),
        }
    } else if status.is_server_error() {
        GunError::Unavailable {
            reason: format!("HTTP {code}: {}", snippet(body)),
            status: Some(code),
            timed_out: false,
            attempts: 1,
        }
    } else {
        // 1xx past hyper, or a 2xx other than 200 to a get: nothing a relay sends.
        GunError::InvalidResponse {
            reason: format!("unexpected HTTP {code}: {}", snippet(body)),
        }
    }
}

/// The `error` string of a `{"error": …}` body.
fn error_message(body: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(body).ok()? {
        Value::Object(mut fields) => match fields.remove("error")? {
            Value::String(message) => Some(message),
            _ => None,
        },
        _ => None,
    }
}

/// The start of a body, as text, for errors and logs.
pub(crate) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(SNIPPET) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const URL: &str = "http://relay:8765/get?soul=a:1";

    fn get(status: u16, body: &str) -> Result<GetAnswer, GunError> {
        classify_get(
            URL,
            StatusCode::from_u16(status).expect("status"),
            body.as_bytes(),
        )
    }

    #[test]
    fn found_returns_the_data_field() {
        assert_eq!(
            get(
                200,
                r##"{"success":true,"data":{"meta":{"#":"a:1/meta"}}}"##
            ),
            Ok(GetAnswer::Found(json!({"meta": {"#": "a:1/meta"}})))
        );
    }

    #[test]
    fn only_the_relays_not_found_is_a_miss() {
        assert_eq!(get(404, r#"{"error":"Not found"}"#), Ok(GetAnswer::Missing));
        for body in [
            r#"{"error":"Endpoint not found"}"#,
            "Cannot GET /gun/get",
            "",
        ] {
            assert!(
                matches!(
                    get(404, body),
                    Err(GunError::Misconfigured { status: 404, .. })
                ),
                "{body}"
            );
        }
        assert!(matches!(get(301, ""), Err(GunError::Misconfigured { .. })));
    }

    #[test]
    fn other_4xx_are_bad_requests_with_the_relays_message() {
        assert_eq!(
            get(400, r#"{"error":"Soul parameter required"}"#),
            Err(GunError::BadRequest {
                status: 400,
                message: "Soul parameter required".into()
            })
        );
        // Anything else is not quoted: it may be a page of whatever answered the URL.
        assert_eq!(
            get(
                400,
                "<pre>SyntaxError at /srv/relay/node_modules/x.js:1</pre>"
            ),
            Err(GunError::BadRequest {
                status: 400,
                message: "GUN relay refused the request (HTTP 400)".into()
            })
        );
    }

    #[test]
    fn server_errors_are_unavailable() {
        assert!(matches!(
            get(503, "busy"),
            Err(GunError::Unavailable {
                status: Some(503),
                ..
            })
        ));
    }

    #[test]
    fn a_200_that_is_not_a_relay_answer_is_invalid() {
        assert!(matches!(
            get(200, "<html>"),
            Err(GunError::InvalidResponse { .. })
        ));
        assert!(matches!(
            get(200, "[1]"),
            Err(GunError::InvalidResponse { .. })
        ));
        assert!(matches!(
            get(200, r#"{"success":true}"#),
            Err(GunError::InvalidResponse { .. })
        ));
    }

    #[test]
    fn put_answers() {
        let put = |status: u16, body: &str| {
            classify_put(
                "http://relay/put",
                StatusCode::from_u16(status).expect("status"),
                body.as_bytes(),
            )
        };
        assert_eq!(put(200, r#"{"success":true,"soul":"a:1"}"#), Ok(()));
        assert_eq!(
            put(
                500,
                r#"{"error":"Data at root of graph must be a node (an object)."}"#
            ),
            Err(GunError::Rejected {
                message: "Data at root of graph must be a node (an object).".into()
            })
        );
        assert!(matches!(
            put(500, "Internal Server Error"),
            Err(GunError::Unavailable { .. })
        ));
        assert!(matches!(
            put(404, r#"{"error":"Not found"}"#),
            Err(GunError::Misconfigured { .. })
        ));
    }

    #[test]
    fn snippets_are_bounded() {
        let long = "é".repeat(1000);
        assert!(snippet(long.as_bytes()).chars().count() <= SNIPPET + 1);
    }
}
