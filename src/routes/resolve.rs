//! `POST /api/resolve`: resolves the references of the records in the body (SPEC §4).
//!
//! Body: `{"records": [record, …]}` or `{"record": record}`, plus the options
//! `resolveDepth`, `resolveNamesOnly`, `resolveFieldName` as JSON fields or as query
//! parameters (a JSON field wins over a query parameter of the same name). Answer:
//! `{"records": […], "stats": {…}, "recordStats": […]}` (or `{"record": {…}, "stats":
//! {…}, "recordStats": [{…}]}`): `stats` is the whole request's
//! [`ResolveStats`](crate::resolve::ResolveStats), `recordStats` one
//! [`RecordStats`](crate::resolve::RecordStats) per record, index by index with
//! `records` (one element for `record`), each in camelCase with its `boundsHit`.
//!
//! Every outcome before resolution is decided first ([`read_body`], [`parse_input`])
//! and then turned into a response: 400 with a JSON error naming what is wrong, 413
//! past the body limit or when the records would take more memory than the output
//! budget, 408 when the body does not arrive in time, 503 + `Retry-After` when too
//! many resolutions are running and waiting already.
//!
//! Memory, in order: the body's bytes (bounded by `--resolve-body-limit`); then,
//! once admitted, the records parsed within the output budget
//! ([`bounded_parse`](crate::resolve::bounded_parse)) and resolved within what is
//! left of it; then the answer, serialized record by record straight into the
//! response's byte segments, each record's tree freed as soon as it is written, so
//! the tree and its JSON never both exist whole.
//!
//! Admission comes after the body is read and before anything is built from it: a
//! client trickling its body holds no resolve slot, and a waiting request holds only
//! its bytes. The slot (a [`Gate`] permit) travels in the
//! response body and is released when the answer has been sent or abandoned, since
//! the serialized answer is memory until then.

use std::fmt::{self, Write as _};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use serde_json::Value;

use crate::admission::{Gate, Shed};
use crate::body::Body;
use crate::request_body::{BodyError, BoundedBody, read_bounded, share_units};
use crate::resolve::bounded_parse::{BoundedParseError, parse_within};
use crate::resolve::{OptionsError, Resolution, ResolveOptions};
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
    /// The connection failed while the body was read. The reason (a socket or framing
    /// error) is for the log only.
    #[error("Request body could not be read")]
    Read(String),
    /// The process-wide budget of buffered bodies had no room in time (503).
    #[error("Server busy, retry shortly: {0}")]
    Busy(Shed),
    /// The body is not JSON.
    #[error("Request body is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The records would take more memory than one answer may (`--resolve-max-output-bytes`).
    #[error("Request body's records would take more than {limit} bytes of memory to resolve")]
    OverBudget {
        /// The output budget.
        limit: u64,
    },
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
            InputError::TooLarge { .. } | InputError::OverBudget { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            InputError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            InputError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
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
    // Resolve bodies' own share of the body budget (`--resolve-body-budget`), taken
    // first and held as long as the body: however large the process-wide budget is
    // made for GUN puts, resolve bodies stay within theirs.
    let units = share_units(request.headers(), settings.resolve_body_limit);
    let resolve_share = if units == 0 {
        None
    } else {
        match state.gates.resolve_body.acquire_many(units).await {
            Ok(share) => Some(share),
            Err(why) => return refused(&InputError::Busy(why)),
        }
    };
    let (query, body) = match read_body(
        request,
        settings.resolve_body_limit,
        settings.resolve_body_timeout,
        &state.gates.request_body,
    )
    .await
    {
        Ok(read) => read,
        Err(error) => return refused(&error),
    };
    let admission = &state.gates.resolve;
    let permit = match admission.acquire().await {
        Ok(permit) => permit,
        Err(why) => return admission.shed_response(why),
    };
    // Parsing, building and serializing up to the output budget's worth of records
    // (and freeing them) is CPU work of tens of milliseconds: on the blocking pool,
    // not on an async worker. The admission above bounds how many run at once.
    let budget = settings.resolve_max_output_bytes;
    let parsed = blocking(move || {
        let parsed = parse_input(&body, query.as_deref(), budget);
        // The body's bytes and its shares go together, once parsed.
        drop((body, resolve_share));
        parsed
    })
    .await;
    let input = match parsed {
        Some(Ok(input)) => input,
        Some(Err(error)) => return refused(&error),
        None => return internal_error(),
    };
    let resolution = state.resolver.resolve(input.records, &input.options).await;
    let single = input.single;
    let Some(mut response) = blocking(move || answer(resolution, single)).await else {
        return internal_error();
    };
    response.body_mut().attach(permit);
    response
}

/// Runs `work` on the blocking pool; `None` if it could not finish (it panicked, a
/// bug that is logged, or the runtime is shutting down).
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => Some(done),
        Err(error) => {
            tracing::error!(%error, "resolve work on the blocking pool failed");
            None
        }
    }
}

fn internal_error() -> Response<Body> {
    response::json_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal error")
}

fn refused(error: &InputError) -> Response<Body> {
    tracing::debug!(?error, "refused resolve request");
    if let InputError::Busy(why) = error {
        return crate::admission::shed_response(*why, 1);
    }
    response::json_error(error.status(), &error.to_string())
}

/// Reads the body (at most `limit` bytes, within `timeout`, charged to the body
/// `budget` until it is dropped); returns it with the query string, which may carry
/// options.
pub async fn read_body<B>(
    request: Request<B>,
    limit: u64,
    timeout: Duration,
    budget: &Gate,
) -> Result<(Option<String>, BoundedBody), InputError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = request.into_parts();
    let bytes = read_bounded(&parts.headers, body, limit, timeout, budget)
        .await
        .map_err(|error| match error {
            BodyError::TooLarge { limit } => InputError::TooLarge { limit },
            BodyError::Timeout(timeout) => InputError::Timeout(timeout),
            BodyError::Read(reason) => InputError::Read(reason),
            BodyError::Busy(why) => InputError::Busy(why),
        })?;
    Ok((parts.uri.query().map(str::to_owned), bytes))
}

/// The answer `{"records":[…],"stats":{…},"recordStats":[…]}` (or
/// `{"record":…,"stats":…,"recordStats":[…]}`), written straight into the response's
/// byte segments one record at a time; each record's tree is dropped as soon as it is
/// written.
pub fn answer(resolution: Resolution, single: bool) -> Response<Body> {
    let Resolution {
        records,
        stats,
        record_stats,
    } = resolution;
    let mut out = Segments::default();
    // Writing into memory cannot fail (`Segments::write_str` never errs), and a
    // `Value` or the derived stats always serialize.
    let _ = if single {
        let record = records.into_iter().next().unwrap_or(Value::Null);
        write!(out, "{{\"record\":{record}")
    } else {
        let _ = out.write_str("{\"records\":[");
        for (i, record) in records.into_iter().enumerate() {
            if i > 0 {
                let _ = out.write_char(',');
            }
            let _ = write!(out, "{record}");
        }
        out.write_char(']')
    };
    // The derived stats always serialize (plain numbers, booleans and enum names).
    if let Ok(stats) = serde_json::to_string(&stats) {
        let _ = write!(out, ",\"stats\":{stats}");
    }
    if let Ok(record_stats) = serde_json::to_string(&record_stats) {
        let _ = write!(out, ",\"recordStats\":{record_stats}");
    }
    let _ = out.write_char('}');
    let (segments, len) = out.finish();
    let mut response = Response::new(Body::from_segments(segments, crate::body::DEFAULT_CHUNK));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

/// Size of each byte segment of a serialized answer: large enough that hyper writes
/// few frames, small enough that the last, partly filled one wastes little.
const SEGMENT: usize = 64 << 10;

/// A `fmt::Write` sink that fills fixed-size buffers and freezes each into `Bytes`
/// when full: the answer is never one growing buffer, so it is never copied by a
/// reallocation and never holds twice its size.
#[derive(Default)]
struct Segments {
    done: Vec<Bytes>,
    current: Vec<u8>,
    len: usize,
}

impl Segments {
    fn finish(mut self) -> (Vec<Bytes>, usize) {
        if !self.current.is_empty() {
            self.done
                .push(Bytes::from(std::mem::take(&mut self.current)));
        }
        (self.done, self.len)
    }
}

impl fmt::Write for Segments {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s.as_bytes();
        self.len += rest.len();
        while !rest.is_empty() {
            if self.current.capacity() == 0 {
                self.current = Vec::with_capacity(SEGMENT);
            }
            let take = rest.len().min(SEGMENT - self.current.len());
            self.current.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.current.len() == SEGMENT {
                self.done
                    .push(Bytes::from(std::mem::take(&mut self.current)));
            }
        }
        Ok(())
    }
}

/// Parses a body (and the query string's options) into records and options, its tree
/// taking at most `max_bytes` of memory.
pub fn parse_input(
    body: &[u8],
    query: Option<&str>,
    max_bytes: u64,
) -> Result<ResolveInput, InputError> {
    let value = match parse_within(body, max_bytes) {
        Ok((value, _)) => value,
        Err(BoundedParseError::OverBudget { limit }) => {
            return Err(InputError::OverBudget { limit });
        }
        Err(BoundedParseError::Json(error)) => return Err(InputError::NotJson(error)),
    };
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
    use serde_json::json;

    fn err(body: &str) -> String {
        parse_input(body.as_bytes(), None, u64::MAX)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bodies_are_parsed_into_records_and_options() {
        let input = parse_input(
            br#"{"records":[{"data":{}},{"oip":{}}],"resolveDepth":"2"}"#,
            Some("resolveNamesOnly=true&resolveDepth=9"),
            u64::MAX,
        )
        .unwrap();
        assert_eq!(input.records.len(), 2);
        assert!(!input.single);
        assert_eq!(input.options.depth, 2);
        assert!(input.options.names_only);
        let input = parse_input(br#"{"record":{"data":{}}}"#, None, u64::MAX).unwrap();
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
        let status = parse_input(b"{", None, u64::MAX).unwrap_err().status();
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}
