//! Reading a request body with three bounds: at most `limit` bytes (a declared larger
//! `Content-Length` is refused before a byte is read) within `timeout` for the whole
//! body, and a share of one process-wide budget of buffered body bytes
//! (`--request-body-budget`) for every byte held. Shared by every route that takes a
//! body (`/gun-relay/put`, `/api/resolve`); each turns a [`BodyError`] into its own JSON
//! answer (413, 408, 400, 503).
//!
//! Why a budget on top of each route's limit: a route's own admission may come after
//! its body is read (`/api/resolve` reads first, so a slow sender holds no resolve slot),
//! and then nothing but the connection cap bounds how many bodies are buffered at once —
//! 32 concurrent 8 MiB resolve bodies took 560 MiB. The budget is charged as bytes
//! arrive, so a slow sender holds only what it has sent; past the budget a body waits in
//! a bounded queue for a bounded time, then gets `503`. The budget is a
//! [`Limiter`] whose slots are KiB, so it has the same bounds and metrics as every
//! admission point (`oip_media_request_body_kib_*`).

use std::ops::Deref;
use std::pin::pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, header};
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;

use crate::limit::{Limiter, Shed};

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

impl BoundedBody {
    /// The body's bytes (the share stays with `self`).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

impl Deref for BoundedBody {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The budget's unit: bytes are charged in whole KiB, rounded up.
pub const BUDGET_UNIT: u64 = 1024;

fn units(bytes: usize) -> u32 {
    u32::try_from((bytes as u64).div_ceil(BUDGET_UNIT)).unwrap_or(u32::MAX)
}

/// Adds `share` to `held`.
fn merge(held: &mut Option<OwnedSemaphorePermit>, share: OwnedSemaphorePermit) {
    match held {
        Some(held) => held.merge(share),
        None => *held = Some(share),
    }
}

/// Reads the body of a request whose headers are `headers`, within `limit` bytes and
/// `timeout`, charging every byte held to `budget` (a [`Limiter`] counting
/// [`BUDGET_UNIT`]s) as it arrives.
pub async fn read_bounded<B>(
    headers: &HeaderMap,
    body: B,
    limit: u64,
    timeout: Duration,
    budget: &Limiter,
) -> Result<BoundedBody, BodyError>
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
    match tokio::time::timeout(timeout, read_charged(body, limit, budget)).await {
        Ok(read) => read,
        Err(_) => Err(BodyError::Timeout(timeout)),
    }
}

/// The frames of `body`, each charged to `budget` before it is kept, joined into one
/// buffer at the end (the join charged too, for the moment both exist).
async fn read_charged<B>(body: B, limit: u64, budget: &Limiter) -> Result<BoundedBody, BodyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = pin!(body);
    let mut frames: Vec<Bytes> = Vec::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut total: u64 = 0;
    while let Some(frame) = body.as_mut().frame().await {
        let frame = frame.map_err(|error| BodyError::Read(error.into().to_string()))?;
        // Trailers carry nothing a route reads.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        total += data.len() as u64;
        if total > limit {
            return Err(BodyError::TooLarge { limit });
        }
        let share = budget
            .acquire_many(units(data.len()))
            .await
            .map_err(BodyError::Busy)?;
        merge(&mut held, share);
        frames.push(data);
    }
    if frames.len() <= 1 {
        return Ok(BoundedBody {
            bytes: frames.pop().unwrap_or_default(),
            _share: held,
        });
    }
    // Parsers need one slice. While it is copied, the frames and the copy both exist:
    // the copy is charged before it is made, the frames' share given back after.
    let len = usize::try_from(total).unwrap_or(usize::MAX);
    let copy = budget
        .acquire_many(units(len))
        .await
        .map_err(BodyError::Busy)?;
    let mut joined = BytesMut::with_capacity(len);
    for frame in frames.drain(..) {
        joined.extend_from_slice(&frame);
    }
    drop(held);
    Ok(BoundedBody {
        bytes: joined.freeze(),
        _share: Some(copy),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::LimitSettings;
    use http::HeaderValue;
    use http_body_util::{Full, StreamBody};

    /// A budget of `kib` KiB, `queue` waiting, 200 ms of wait.
    fn budget(kib: usize, queue: usize) -> Limiter {
        Limiter::new(LimitSettings {
            max_in_flight: kib,
            max_queue: queue,
            queue_timeout: Duration::from_millis(200),
            retry_after_secs: 1,
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
        read.map(|body| body.bytes().clone())
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
        let b = budget(1, 0);
        let read = read_bounded(&headers, never, 10, Duration::from_secs(5), &b);
        assert_eq!(
            bytes(read.await),
            Err(BodyError::Timeout(Duration::from_secs(5)))
        );
    }

    #[tokio::test]
    async fn every_byte_held_is_charged_until_the_body_is_dropped() {
        let b = budget(64, 0);
        let frames = vec![vec![1u8; 3000], vec![2u8; 5000], vec![3u8; 100]];
        let read = read_bounded(
            &HeaderMap::new(),
            framed(frames, false),
            1 << 20,
            Duration::from_secs(1),
            &b,
        )
        .await
        .expect("read");
        assert_eq!(read.len(), 8100);
        assert_eq!(&read[2999..3001], &[1, 2]);
        assert_eq!(b.in_flight(), 8, "the joined copy: 8100 bytes, 8 KiB");
        drop(read);
        assert_eq!(b.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_budget_bodies_wait_then_get_busy_and_slow_senders_hold_only_what_they_sent() {
        let b = budget(8, 1);
        let headers = HeaderMap::new();
        let long = Duration::from_secs(60);
        // A slow sender: 3 KiB sent, the rest never comes. It holds 3 KiB, not its limit.
        let slow = read_bounded(
            &headers,
            framed(vec![vec![0; 3 << 10]], true),
            1 << 20,
            long,
            &b,
        );
        let slow = async {
            let _ = slow.await;
        };
        tokio::pin!(slow);
        assert!(
            futures_util::poll!(slow.as_mut()).is_pending(),
            "still reading"
        );
        assert_eq!(b.in_flight(), 3);
        // Another body of 4 KiB fits beside it.
        let fits = read_bounded(
            &headers,
            framed(vec![vec![1; 4 << 10]], false),
            1 << 20,
            long,
            &b,
        )
        .await
        .expect("fits");
        assert_eq!(b.in_flight(), 7);
        // One that does not fit waits (200 ms here), then is busy: a 503, never memory.
        let over = read_bounded(
            &headers,
            framed(vec![vec![2; 2 << 10]], false),
            1 << 20,
            long,
            &b,
        );
        assert_eq!(bytes(over.await), Err(BodyError::Busy(Shed::QueueTimeout)));
        drop(fits);
        let now_fits = read_bounded(
            &headers,
            framed(vec![vec![2; 2 << 10]], false),
            1 << 20,
            long,
            &b,
        )
        .await;
        assert_eq!(now_fits.map(|r| r.len()), Ok(2 << 10));
    }
}
