//! Pure HTTP decisions, free of sockets and files: path decoding and confinement,
//! conditional requests, ranges, multipart framing. Each is a plain function with
//! unit tests; routes call [`decide`] and then build the response from its outcome.

pub mod conditional;
pub mod file_head;
pub mod multipart;
pub mod path;
pub mod query;
pub mod range;
pub mod request_head;

use std::time::SystemTime;

use http::{HeaderMap, Method, header};

use conditional::{EntityTag, Precondition};
use range::{ByteRange, RangeDecision};

/// Everything a file response can turn out to be. One variant per path a request can
/// take, so each is visible and testable without a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// 200 with the whole file.
    Full,
    /// 206 with one range.
    Partial(ByteRange),
    /// 206 `multipart/byteranges`.
    Multipart(Vec<ByteRange>),
    /// 304: the client's copy is current.
    NotModified,
    /// 412: an `If-Match`/`If-Unmodified-Since` guard failed.
    PreconditionFailed,
    /// 416 with `Content-Range: bytes */len`.
    RangeNotSatisfiable,
}

/// Validators of the representation being served.
#[derive(Debug, Clone, Copy)]
pub struct Validators<'a> {
    /// Its entity tag.
    pub etag: &'a EntityTag,
    /// Its modification time.
    pub last_modified: SystemTime,
}

/// Decides the outcome of a GET or HEAD for a file of `len` bytes: preconditions first
/// (RFC 9110 §13.2.2), then `If-Range`, then `Range`. HEAD is decided exactly like GET
/// so that it sends the same headers.
pub fn decide(method: &Method, headers: &HeaderMap, len: u64, v: Validators<'_>) -> FileOutcome {
    // Nearly every request asks for the whole file without a condition: one walk over
    // its few field names answers that, where the lookups below hash each of five
    // names (~700 instructions per GIF request under callgrind).
    if !headers.keys().any(asks_for_part_or_condition) {
        return FileOutcome::Full;
    }
    match conditional::evaluate(method, headers, v.etag, v.last_modified) {
        Precondition::NotModified => return FileOutcome::NotModified,
        Precondition::Failed => return FileOutcome::PreconditionFailed,
        Precondition::Proceed => {}
    }
    let Some(range) = headers.get(header::RANGE) else {
        return FileOutcome::Full;
    };
    if !conditional::if_range_allows(headers, v.etag, v.last_modified) {
        return FileOutcome::Full;
    }
    let Ok(range) = range.to_str() else {
        return FileOutcome::Full;
    };
    match range::decide(range, len) {
        RangeDecision::Full => FileOutcome::Full,
        RangeDecision::Single(r) => FileOutcome::Partial(r),
        RangeDecision::Multiple(rs) => FileOutcome::Multipart(rs),
        RangeDecision::Unsatisfiable => FileOutcome::RangeNotSatisfiable,
    }
}

/// A field [`decide`] reads: without any, the answer is the whole file. (`If-Range`
/// only counts with `Range`.)
fn asks_for_part_or_condition(name: &header::HeaderName) -> bool {
    [
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::RANGE,
    ]
    .contains(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn preconditions_come_before_ranges() {
        let etag = EntityTag::for_file(1000, 5);
        let v = Validators {
            etag: &etag,
            last_modified: UNIX_EPOCH + Duration::from_secs(100),
        };
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-9"));
        assert_eq!(
            decide(&Method::GET, &h, 1000, v),
            FileOutcome::Partial(ByteRange { start: 0, end: 9 })
        );
        h.insert(header::IF_NONE_MATCH, etag.to_header_value());
        assert_eq!(decide(&Method::GET, &h, 1000, v), FileOutcome::NotModified);
        h.remove(header::IF_NONE_MATCH);
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"x\""));
        assert_eq!(
            decide(&Method::GET, &h, 1000, v),
            FileOutcome::PreconditionFailed
        );
        h.remove(header::IF_MATCH);
        h.insert(header::IF_RANGE, etag.to_header_value());
        assert_eq!(
            decide(&Method::GET, &h, 1000, v),
            FileOutcome::Full,
            "weak If-Range never matches"
        );
        h.remove(header::IF_RANGE);
        h.insert(header::RANGE, HeaderValue::from_static("bytes=5000-"));
        assert_eq!(
            decide(&Method::HEAD, &h, 1000, v),
            FileOutcome::RangeNotSatisfiable
        );
    }

    /// Each field `decide` reads is seen alone among others (the short cut for none of
    /// them must not hide one), and the others alone give the whole file.
    #[test]
    fn each_field_that_decides_is_seen_among_others() {
        let etag = EntityTag::for_file(1000, 5);
        let v = Validators {
            etag: &etag,
            last_modified: UNIX_EPOCH + Duration::from_secs(100),
        };
        let mut others = HeaderMap::new();
        others.insert(header::HOST, HeaderValue::from_static("h"));
        others.insert(header::IF_RANGE, etag.to_header_value());
        others.insert("x-custom", HeaderValue::from_static("1"));
        assert_eq!(decide(&Method::GET, &others, 1000, v), FileOutcome::Full);
        let late = HeaderValue::from_static("Thu, 01 Jan 1970 00:03:20 GMT");
        let early = HeaderValue::from_static("Thu, 01 Jan 1970 00:00:10 GMT");
        for (name, value, outcome) in [
            (
                header::IF_MATCH,
                HeaderValue::from_static("\"x\""),
                FileOutcome::PreconditionFailed,
            ),
            (
                header::IF_UNMODIFIED_SINCE,
                early,
                FileOutcome::PreconditionFailed,
            ),
            (
                header::IF_NONE_MATCH,
                etag.to_header_value(),
                FileOutcome::NotModified,
            ),
            (header::IF_MODIFIED_SINCE, late, FileOutcome::NotModified),
            (
                header::RANGE,
                HeaderValue::from_static("bytes=5000-"),
                FileOutcome::RangeNotSatisfiable,
            ),
        ] {
            let mut h = others.clone();
            h.remove(header::IF_RANGE);
            h.insert(name.clone(), value);
            assert_eq!(decide(&Method::GET, &h, 1000, v), outcome, "{name}");
        }
    }
}
