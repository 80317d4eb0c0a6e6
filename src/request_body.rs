//! Reading a request body with three bounds: at most `limit` bytes (a declared larger
//! `Content-Length` is refused before a byte is read) within `timeout` for the whole
//! body, and a share of one process-wide budget of buffered body bytes
//! (`--request-body-budget`). Shared by every route that takes a body
//! (`/gun-relay/put`, `/api/resolve`); each turns a [`BodyError`] into its own JSON
//! answer (413, 408, 400, 503).
//!
//! Why a budget on top of each route's limit: a route's own admission may come after
//! its body is read (`/api/resolve` reads first, so a slow sender holds no resolve slot),
//! and then nothing but the connection cap bounds how many bodies are buffered at once —
//! 32 concurrent 8 MiB resolve bodies took 560 MiB. A body takes its whole share before
//! its first byte is read — its declared `Content-Length`, or twice the route's limit for
//! a chunked body (frames, then one joined copy) — all or nothing: bodies charged a
//! piece at a time held the budget against each other (32 bodies of 8 MiB, each holding
//! 2 MiB and waiting for more, took 17 s to shed). Past the budget a body waits in a
//! bounded queue for a bounded time, then gets `503`; a slow sender holds its share for
//! at most the route's body timeout. The budget is a [`Gate`] whose slots are KiB,
//! with the same bounds and metrics as every admission point
//! (`oip_media_request_body_*`, in bytes).

use std::ops::Deref;
use std::pin::pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, header};
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;

use crate::admission::{Gate, Shed};

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
    /// The process-wide budget of buffered bodies had no room within its wait: 503.
    #[error("too many request bodies buffered: {0}")]
    Busy(Shed),
}

/// A request body read whole, with its share of the body budget. The share is given
/// back when this is dropped: keep it as long as the bytes are in memory.
#[derive(Debug)]
pub struct BoundedBody {
    bytes: Bytes,
    _share: Option<OwnedSemaphorePermit>,
}

impl Deref for BoundedBody {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The budget's unit: bytes are charged in whole KiB, rounded up.
pub use crate::admission_settings::BUDGET_UNIT;

fn units(bytes: usize) -> u32 {
    u32::try_from((bytes as u64).div_ceil(BUDGET_UNIT)).unwrap_or(u32::MAX)
}

/// The share, in [`BUDGET_UNIT`]s, that [`read_bounded`] takes for a body of these
/// `headers` under `limit`: its declared length, or twice the limit when it declares
/// none (0 when it declares more than the limit: it is refused unread). For a route
/// that also charges its bodies to a budget of its own.
pub fn share_units(headers: &HeaderMap, limit: u64) -> u32 {
    match declared_length(headers) {
        Some(len) if len > limit => 0,
        Some(len) => units(to_usize(len)),
        None => units(to_usize(limit)).saturating_mul(2),
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
}

/// Reads the body of a request whose headers are `headers`, within `limit` bytes and
/// `timeout`, once its share of `budget` (a [`Gate`] counting [`BUDGET_UNIT`]s) is
/// taken.
pub async fn read_bounded<B>(
    headers: &HeaderMap,
    body: B,
    limit: u64,
    timeout: Duration,
    budget: &Gate,
) -> Result<BoundedBody, BodyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = declared_length(headers);
    if declared.is_some_and(|declared| declared > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    let read = async {
        match declared {
            Some(len) => read_declared(body, len, budget).await,
            None => read_chunked(body, limit, budget).await,
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(read) => read,
        Err(_) => Err(BodyError::Timeout(timeout)),
    }
}

fn to_usize(len: u64) -> usize {
    usize::try_from(len).unwrap_or(usize::MAX)
}

/// The next data frame of `body` (trailers carry nothing a route reads), `None` at
/// its end.
async fn next_data<B>(body: &mut std::pin::Pin<&mut B>) -> Result<Option<Bytes>, BodyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    while let Some(frame) = body.as_mut().frame().await {
        let frame = frame.map_err(|error| BodyError::Read(error.into().to_string()))?;
        if let Ok(data) = frame.into_data() {
            return Ok(Some(data));
        }
    }
    Ok(None)
}

/// A body of a declared `len` (at most the limit): its share taken first, then its
/// frames copied into one buffer of that size as they arrive (each frame freed once
/// copied), so it costs `len` and one frame. hyper ends the body at `len` bytes.
async fn read_declared<B>(body: B, len: u64, budget: &Gate) -> Result<BoundedBody, BodyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let share = if len == 0 {
        None
    } else {
        let units = units(to_usize(len));
        Some(budget.acquire_many(units).await.map_err(BodyError::Busy)?)
    };
    let mut body = pin!(body);
    let mut joined = BytesMut::new();
    while let Some(data) = next_data(&mut body).await? {
        if joined.is_empty() && data.len() as u64 >= len {
            // All of it in one frame: no copy.
            return Ok(BoundedBody {
                bytes: data,
                _share: share,
            });
        }
        if joined.capacity() == 0 {
            joined.reserve(to_usize(len));
        }
        joined.extend_from_slice(&data);
    }
    Ok(BoundedBody {
        bytes: joined.freeze(),
        _share: share,
    })
}

/// A body of no declared length: twice `limit` taken first (its frames, then one joined
/// copy of them), the unused part given back once it is joined.
async fn read_chunked<B>(body: B, limit: u64, budget: &Gate) -> Result<BoundedBody, BodyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut share = budget
        .acquire_many(units(to_usize(limit)).saturating_mul(2))
        .await
        .map_err(BodyError::Busy)?;
    let mut body = pin!(body);
    let mut frames: Vec<Bytes> = Vec::new();
    let mut total: u64 = 0;
    while let Some(data) = next_data(&mut body).await? {
        total += data.len() as u64;
        if total > limit {
            return Err(BodyError::TooLarge { limit });
        }
        frames.push(data);
    }
    let bytes = if frames.len() <= 1 {
        frames.pop().unwrap_or_default()
    } else {
        let mut joined = BytesMut::with_capacity(to_usize(total));
        for frame in frames.drain(..) {
            joined.extend_from_slice(&frame);
        }
        joined.freeze()
    };
    // Keep what the bytes take; the rest goes back now.
    let keep = usize::try_from(units(bytes.len())).unwrap_or(usize::MAX);
    let excess = share.num_permits().saturating_sub(keep);
    drop(share.split(excess));
    Ok(BoundedBody {
        bytes,
        _share: Some(share),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::GateSettings;
    use http::HeaderValue;
    use http_body_util::{Full, StreamBody};

    /// A budget of `kib` KiB, `queue` waiting, 200 ms of wait.
    fn budget(kib: usize, queue: usize) -> Gate {
        Gate::new(GateSettings {
            max_in_flight: kib,
            max_queue: queue,
            queue_timeout: Duration::from_millis(200),
            retry_after_secs: 1,
            max_stalled: 0,
        })
    }

    /// A body of `frames`, then (if `then_hang`) no end.
    fn framed(
        frames: Vec<Vec<u8>>,
        then_hang: bool,
    ) -> impl http_body::Body<Data = Bytes, Error = std::convert::Infallible> {
        use futures_util::StreamExt;
        let sent = futures_util::stream::iter(
            frames
                .into_iter()
                .map(|f| Ok(http_body::Frame::data(Bytes::from(f)))),
        );
        let rest = if then_hang {
            futures_util::stream::pending().left_stream()
        } else {
            futures_util::stream::empty().right_stream()
        };
        StreamBody::new(sent.chain(rest))
    }

    fn bytes(read: Result<BoundedBody, BodyError>) -> Result<Bytes, BodyError> {
        read.map(|body| Bytes::copy_from_slice(&body))
    }

    #[tokio::test]
    async fn reads_within_bounds_and_refuses_past_them() {
        let b = budget(1024, 0);
        let none = HeaderMap::new();
        let second = Duration::from_secs(1);
        let ok = read_bounded(&none, Full::new(Bytes::from_static(b"abc")), 3, second, &b);
        assert_eq!(bytes(ok.await), Ok(Bytes::from_static(b"abc")));
        let big = read_bounded(&none, Full::new(Bytes::from_static(b"abcd")), 3, second, &b);
        assert_eq!(bytes(big.await), Err(BodyError::TooLarge { limit: 3 }));
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, HeaderValue::from_static("4"));
        let refused = read_bounded(&declared, Full::new(Bytes::new()), 3, second, &b);
        assert_eq!(bytes(refused.await), Err(BodyError::TooLarge { limit: 3 }));
        let chunked = framed(vec![vec![1; 2], vec![2; 2]], false);
        let refused = read_bounded(&none, chunked, 3, second, &b);
        assert_eq!(bytes(refused.await), Err(BodyError::TooLarge { limit: 3 }));
        assert_eq!(b.in_flight(), 0, "nothing held after a refusal");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_ends_times_out() {
        let never = StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<Bytes>, std::convert::Infallible>,
        >());
        let headers = HeaderMap::new();
        let b = budget(1024, 0);
        let read = read_bounded(&headers, never, 10, Duration::from_secs(5), &b);
        assert_eq!(
            bytes(read.await),
            Err(BodyError::Timeout(Duration::from_secs(5)))
        );
        assert_eq!(b.in_flight(), 0, "its share is back");
    }

    fn declared(len: usize) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        headers
    }

    #[tokio::test]
    async fn a_body_holds_its_share_until_it_is_dropped() {
        let b = budget(4096, 0);
        let frames = || vec![vec![1u8; 3000], vec![2u8; 5000], vec![3u8; 100]];
        let second = Duration::from_secs(1);
        // Declared: its length, taken before reading, the frames copied into one buffer.
        let read = read_bounded(
            &declared(8100),
            framed(frames(), false),
            1 << 20,
            second,
            &b,
        )
        .await
        .expect("read");
        assert_eq!(read.len(), 8100);
        assert_eq!(&read[2999..3001], &[1, 2]);
        assert_eq!(b.in_flight(), 8, "8100 bytes: 8 KiB");
        drop(read);
        assert_eq!(b.in_flight(), 0);
        // Chunked: twice the limit while it is read, what it takes once joined.
        let read = read_bounded(
            &HeaderMap::new(),
            framed(frames(), false),
            1 << 20,
            second,
            &b,
        )
        .await
        .expect("read");
        assert_eq!(read.len(), 8100);
        assert_eq!(b.in_flight(), 8);
        drop(read);
        assert_eq!(b.in_flight(), 0);
        let one = read_bounded(
            &declared(3),
            Full::new(Bytes::from_static(b"abc")),
            3,
            second,
            &b,
        )
        .await
        .expect("read");
        assert_eq!(&one[..], b"abc");
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_budget_bodies_wait_then_get_busy_all_or_nothing() {
        let b = budget(8, 2);
        let long = Duration::from_secs(60);
        // A slow sender: 5 KiB declared, 3 KiB sent, the rest never comes. It holds
        // its declared share while it sends, for at most the body timeout.
        let (five, four, three) = (declared(5 << 10), declared(4 << 10), declared(3 << 10));
        let slow = read_bounded(
            &five,
            framed(vec![vec![0; 3 << 10]], true),
            1 << 20,
            long,
            &b,
        );
        let mut slow = Box::pin(async {
            let _ = slow.await;
        });
        assert!(
            futures_util::poll!(slow.as_mut()).is_pending(),
            "still reading"
        );
        assert_eq!(b.in_flight(), 5);
        // 4 KiB does not fit beside it: it waits (200 ms here), holding nothing, then
        // is busy: a 503, never memory.
        let over = read_bounded(
            &four,
            framed(vec![vec![1; 4 << 10]], false),
            1 << 20,
            long,
            &b,
        );
        assert_eq!(bytes(over.await), Err(BodyError::Busy(Shed::QueueTimeout)));
        assert_eq!(b.in_flight(), 5, "nothing taken by the body that waited");
        // 3 KiB does.
        let fits = read_bounded(
            &three,
            framed(vec![vec![2; 3 << 10]], false),
            1 << 20,
            long,
            &b,
        )
        .await
        .expect("fits");
        assert_eq!(b.in_flight(), 8);
        drop(fits);
        drop(slow);
        assert_eq!(
            b.in_flight(),
            0,
            "a sender that goes away gives its share back"
        );
    }
}
