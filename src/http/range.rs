//! `Range` requests (RFC 9110 §14): which bytes to send, decided from the header and the
//! file length alone.
//!
//! The grammar is parsed by `http-range-header`; what it cannot express for us is done
//! here: clamping, dropping unsatisfiable parts, merging overlapping or adjacent ranges,
//! and refusing amplification (too many ranges, or more bytes than the file has).

use std::num::NonZeroUsize;

use http_range_header::SyntacticallyCorrectRange;

/// Most ranges honoured in one request; more gets the whole file (200).
pub const MAX_RANGES: usize = 16;

/// An inclusive byte range `start..=end` within the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// `Content-Range` value for this range of a `total`-byte file.
    pub fn content_range(&self, total: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.end, total)
    }
}

/// What a `Range` header asks of a file of a given length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeDecision {
    /// No usable range: send the whole file with 200 (header absent, malformed, of
    /// another unit, or refused as amplification).
    Full,
    /// One range: 206 with `Content-Range`.
    Single(ByteRange),
    /// Several disjoint ranges, sorted: 206 `multipart/byteranges`.
    Multiple(Vec<ByteRange>),
    /// Well-formed, but no range overlaps the file: 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Decides what to send for `header` (the `Range` value) on a file of `len` bytes.
pub fn decide(header: &str, len: u64) -> RangeDecision {
    // Parse a few more than we honour so "too many" is distinguishable from malformed.
    let limit = NonZeroUsize::new(MAX_RANGES + 1).unwrap_or(NonZeroUsize::MIN);
    let parsed = match http_range_header::parse_range_header_with_max_ranges(header, limit) {
        Ok(parsed) => parsed,
        // Malformed or over the limit: RFC 9110 lets us ignore the header.
        Err(_) => return RangeDecision::Full,
    };
    let requested = parsed.into_ranges();
    if requested.len() > MAX_RANGES {
        return RangeDecision::Full;
    }
    let mut ranges: Vec<ByteRange> = requested
        .into_iter()
        .filter_map(|r| satisfiable(r, len))
        .collect();
    if ranges.is_empty() {
        return RangeDecision::Unsatisfiable;
    }
    let requested_bytes: u64 = ranges.iter().map(|r| r.len()).fold(0, u64::saturating_add);
    if requested_bytes > len {
        // Overlaps that add up to more than the file: answering them would let a small
        // header cost many times the file in bandwidth.
        return RangeDecision::Full;
    }
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<ByteRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.start <= last.end.saturating_add(1) => {
                last.end = last.end.max(range.end);
            }
            _ => merged.push(range),
        }
    }
    match merged.as_slice() {
        [single] => RangeDecision::Single(*single),
        _ => RangeDecision::Multiple(merged),
    }
}

/// The part of one requested range that lies within a `len`-byte file, if any.
fn satisfiable(range: SyntacticallyCorrectRange, len: u64) -> Option<ByteRange> {
    let last = len.checked_sub(1)?;
    match range {
        SyntacticallyCorrectRange::FromStart(start) if start <= last => {
            Some(ByteRange { start, end: last })
        }
        SyntacticallyCorrectRange::FromLast(n) if n > 0 => Some(ByteRange {
            start: len - n.min(len),
            end: last,
        }),
        SyntacticallyCorrectRange::Indexed(start, end) if start <= last => Some(ByteRange {
            start,
            end: end.min(last),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeDecision::*;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    #[test]
    fn single_ranges() {
        assert_eq!(decide("bytes=0-99", 1000), Single(r(0, 99)));
        assert_eq!(decide("bytes=500-", 1000), Single(r(500, 999)));
        assert_eq!(decide("bytes=-500", 1000), Single(r(500, 999)));
        assert_eq!(
            decide("bytes=-5000", 1000),
            Single(r(0, 999)),
            "suffix longer than file"
        );
        assert_eq!(
            decide("bytes=900-5000", 1000),
            Single(r(900, 999)),
            "end clamped"
        );
        assert_eq!(decide("bytes=999-999", 1000), Single(r(999, 999)));
        assert_eq!(decide("BYTES=0-0", 1000), Single(r(0, 0)));
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(decide("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(decide("bytes=1000-2000", 1000), Unsatisfiable);
        assert_eq!(decide("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(decide("bytes=0-10", 0), Unsatisfiable, "empty file");
        assert_eq!(decide("bytes=2000-3000, 4000-", 1000), Unsatisfiable);
    }

    #[test]
    fn partly_satisfiable_sets_keep_the_satisfiable_part() {
        assert_eq!(decide("bytes=2000-3000, 0-9", 1000), Single(r(0, 9)));
    }

    #[test]
    fn hostile_or_malformed_headers_are_ignored() {
        let ignored = [
            "",
            "bytes",
            "bytes=",
            "bytes=abc",
            "bytes=5-1",
            "bytes=--5",
            "bytes=+1-2",
            "bytes=1-2-3",
            "items=0-5",
            "bytes=0-5,,,,,,,,,,,,,,,,,,,,,",
            "bytes=0x10-20",
            "bytes=00000000000000000000000000000000000000000001-2",
            "bytes=0-1 ",
            "bytes=\u{0}0-1",
        ];
        for h in ignored {
            assert_eq!(decide(h, 1000), Full, "{h:?}");
        }
    }

    #[test]
    fn multiple_ranges_merge_and_sort() {
        assert_eq!(
            decide("bytes=0-9, 20-29", 1000),
            Multiple(vec![r(0, 9), r(20, 29)])
        );
        assert_eq!(
            decide("bytes=20-29, 0-9", 1000),
            Multiple(vec![r(0, 9), r(20, 29)])
        );
        assert_eq!(
            decide("bytes=0-9, 10-19", 1000),
            Single(r(0, 19)),
            "adjacent merge"
        );
        assert_eq!(
            decide("bytes=0-9, 5-14, 30-39", 1000),
            Multiple(vec![r(0, 14), r(30, 39)])
        );
        assert_eq!(
            decide("bytes=0-0, -1", 1000),
            Multiple(vec![r(0, 0), r(999, 999)])
        );
    }

    #[test]
    fn amplification_is_refused() {
        let seventeen = (0..17)
            .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(decide(&format!("bytes={seventeen}"), 1000), Full);
        let sixteen = (0..16)
            .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
            .collect::<Vec<_>>()
            .join(",");
        assert!(matches!(decide(&format!("bytes={sixteen}"), 1000), Multiple(v) if v.len() == 16));
        assert_eq!(
            decide("bytes=0-, 0-", 1000),
            Full,
            "overlaps adding up past the file"
        );
        assert_eq!(decide("bytes=0-599, 400-999", 1000), Full);
        let hundred = vec!["0-"; 100].join(",");
        assert_eq!(decide(&format!("bytes={hundred}"), 1000), Full);
    }
}
