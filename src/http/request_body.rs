//! Reading a request body with two bounds: at most `limit` bytes (a declared larger
//! `Content-Length` is refused before a byte is read) within `timeout` for the whole body.
//! A huge body costs at most `limit` bytes of memory, a slow one at most `timeout`.
//! Shared by every route that takes a body (`/gun-relay/put`, `/api/resolve`); each turns
//! a [`BodyError`] into its own JSON answer (413, 408, 400).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Larger than the limit (declared or actually sent).
    #[error("request body is over the {limit}-byte limit")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The whole body did not arrive within the timeout.
    #[error("request body not received within {0:?}")]
    Timeout(Duration),
    /// The connection failed while the body was read.
    #[error("request body could not be read: {0}")]
    Read(String),
}

/// Reads the body of a request whose headers are `headers`, within `limit` bytes and
/// `timeout`.
pub async fn read_bounded<B>(
    headers: &HeaderMap,
    body: B,
    limit: u64,
    timeout: Duration,
) -> Result<Bytes, BodyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|declared| declared > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    match tokio::time::timeout(timeout, Limited::new(body, cap).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(BodyError::TooLarge { limit })
        }
        Ok(Err(error)) => Err(BodyError::Read(error.to_string())),
        Err(_) => Err(BodyError::Timeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_body_util::{Full, StreamBody};

    #[tokio::test]
    async fn reads_within_bounds_and_refuses_past_them() {
        let none = HeaderMap::new();
        let ok = read_bounded(
            &none,
            Full::new(Bytes::from_static(b"abc")),
            3,
            Duration::from_secs(1),
        );
        assert_eq!(ok.await, Ok(Bytes::from_static(b"abc")));
        let big = read_bounded(
            &none,
            Full::new(Bytes::from_static(b"abcd")),
            3,
            Duration::from_secs(1),
        );
        assert_eq!(big.await, Err(BodyError::TooLarge { limit: 3 }));
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, HeaderValue::from_static("4"));
        let refused = read_bounded(
            &declared,
            Full::new(Bytes::new()),
            3,
            Duration::from_secs(1),
        );
        assert_eq!(refused.await, Err(BodyError::TooLarge { limit: 3 }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_ends_times_out() {
        let never = StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<Bytes>, std::convert::Infallible>,
        >());
        let headers = HeaderMap::new();
        let read = read_bounded(&headers, never, 10, Duration::from_secs(5));
        assert_eq!(read.await, Err(BodyError::Timeout(Duration::from_secs(5))));
    }
}
