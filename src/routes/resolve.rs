//! `POST /api/resolve`: resolves the references of the records in the body (SPEC §4).
//!
//! Body: `{"records": [record, …]}` or `{"record": record}`, plus the options
//! `resolveDepth`, `resolveNamesOnly`, `resolveFieldName` as JSON fields or as query
//! parameters (a JSON field wins over a query parameter of the same name). Answer:
//! `{"records": […], "stats": {…}}` (or `{"record": {…}, "stats": {…}}`), the stats
//! being [`ResolveStats`](crate::resolve::ResolveStats) in camelCase.
//!
//! Every outcome before resolution is decided first ([`read_input`]) and then turned
//! into a response: 400 with a JSON error naming what is wrong, 413 past the body
//! limit, 408 when the body does not arrive in time.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::body::Body;
use crate::http::request_body::{BodyError, read_bounded};
use crate::resolve::{OptionsError, ResolveOptions};
use crate::response;
use crate::state::AppState;

/// A request's records and options, ready to resolve.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolveInput {
    /// The records, in order.
    pub records: Vec<Value>,
    /// Whether the body gave one `record` (answered as `record`) or `records`.
    pub single: bool,
    /// The options.
    pub options: ResolveOptions,
}

/// Why a request cannot be resolved. Each message tells the client what to fix.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Larger than `--resolve-body-limit`.
    #[error("Request body is over the {limit}-byte limit")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The body did not arrive within `--resolve-body-timeout`.
    #[error("Request body not received within {0:?}")]
    Timeout(Duration),
    /// The connection failed while the body was read.
    #[error("Request body could not be read: {0}")]
    Read(String),
    /// The body is not JSON.
    #[error("Request body is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The body is JSON but not of the expected shape.
    #[error("{0}")]
    Shape(String),
    /// An option is malformed.
    #[error(transparent)]
    Options(#[from] OptionsError),
}

impl InputError {
    /// The status that tells the client what kind of mistake it made.
    pub fn status(&self) -> StatusCode {
        match self {
            InputError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            InputError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            InputError::Read(_)
            | InputError::NotJson(_)
            | InputError::Shape(_)
            | InputError::Options(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Answers one `/api/resolve` request.
pub async fn handle<B>(state: &AppState, request: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let settings = &state.config.resolver;
    let input = match read_input(
        request,
        settings.resolve_body_limit,
        settings.resolve_body_timeout,
    )
    .await
    {
        Ok(input) => input,
        Err(error) => {
            tracing::debug!(%error, "refused resolve request");
            return response::json_error(error.status(), &error.to_string());
        }
    };
    let resolution = state.resolver.resolve(input.records, &input.options).await;
    let answer = if input.single {
        let record = resolution.records.into_iter().next().unwrap_or(Value::Null);
        json!({ "record": record, "stats": resolution.stats })
    } else {
        json!({ "records": resolution.records, "stats": resolution.stats })
    };
    response::json(StatusCode::OK, &answer)
}

/// Reads and checks the body (at most `limit` bytes, within `timeout`) and the options.
pub async fn read_input<B>(
    request: Request<B>,
    limit: u64,
    timeout: Duration,
) -> Result<ResolveInput, InputError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = request.into_parts();
    let bytes = read_bounded(&parts.headers, body, limit, timeout)
        .await
        .map_err(|error| match error {
            BodyError::TooLarge { limit } => InputError::TooLarge { limit },
            BodyError::Timeout(timeout) => InputError::Timeout(timeout),
            BodyError::Read(reason) => InputError::Read(reason),
        })?;
    parse_input(&bytes, parts.uri.query())
}

/// Parses a body (and the query string's options) into records and options.
pub fn parse_input(body: &[u8], query: Option<&str>) -> Result<ResolveInput, InputError> {
    let value: Value = serde_json::from_slice(body).map_err(InputError::NotJson)?;
    let Value::Object(mut object) = value else {
        return Err(shape(
            "Request body must be a JSON object with `records` (an array of records) or `record` (one record)",
        ));
    };
    let options = ResolveOptions::from_request(query, &object)?;
    let (records, single) = match (object.remove("records"), object.remove("record")) {
        (Some(_), Some(_)) => return Err(shape("Give either `records` or `record`, not both")),
        (Some(Value::Array(records)), None) => (records, false),
        (Some(_), None) => return Err(shape("`records` must be an array of records")),
        (None, Some(record)) => (vec![record], true),
        (None, None) => {
            return Err(shape(
                "Request body has neither `records` (an array of records) nor `record` (one record)",
            ));
        }
    };
    if let Some(index) = records.iter().position(|r| !r.is_object()) {
        return Err(shape(&if single {
            "`record` must be a JSON object".to_owned()
        } else {
            format!("`records[{index}]` is not a JSON object")
        }));
    }
    Ok(ResolveInput {
        records,
        single,
        options,
    })
}

fn shape(message: &str) -> InputError {
    InputError::Shape(message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        parse_input(body.as_bytes(), None).unwrap_err().to_string()
    }

    #[test]
    fn bodies_are_parsed_into_records_and_options() {
        let input = parse_input(
            br#"{"records":[{"data":{}},{"oip":{}}],"resolveDepth":"2"}"#,
            Some("resolveNamesOnly=true&resolveDepth=9"),
        )
        .unwrap();
        assert_eq!(input.records.len(), 2);
        assert!(!input.single);
        assert_eq!(input.options.depth, 2);
        assert!(input.options.names_only);
        let input = parse_input(br#"{"record":{"data":{}}}"#, None).unwrap();
        assert!(input.single);
        assert_eq!(input.records, vec![json!({"data": {}})]);
    }

    #[test]
    fn malformed_bodies_say_what_is_wrong() {
        assert!(err("{nope").starts_with("Request body is not valid JSON"));
        assert!(err("[1]").contains("must be a JSON object"));
        assert!(err("{}").contains("neither `records`"));
        assert!(err(r#"{"records":{}}"#).contains("`records` must be an array"));
        assert!(err(r#"{"records":[{}, 3]}"#).contains("`records[1]` is not a JSON object"));
        assert!(err(r#"{"record":"did:x"}"#).contains("`record` must be a JSON object"));
        assert!(err(r#"{"record":{},"records":[]}"#).contains("not both"));
        assert!(err(r#"{"records":[],"resolveDepth":"deep"}"#).contains("resolveDepth"));
        let status = parse_input(b"{", None).unwrap_err().status();
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}
