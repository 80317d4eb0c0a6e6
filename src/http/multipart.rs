//! `multipart/byteranges` bodies (RFC 9110 §14.6) built as a list of segments: small
//! part headers in memory, part bodies as zero-copy slices of the mapped file.
//!
//! Hand-written: no maintained crate builds multipart *responses* from borrowed slices,
//! and the format is a few lines of framing.

use bytes::Bytes;

use super::range::ByteRange;

/// A multipart body ready to send.
#[derive(Debug)]
pub struct Multipart {
    /// `multipart/byteranges; boundary=…`
    pub content_type: String,
    /// Framing and file slices, in order.
    pub segments: Vec<Bytes>,
    /// Total length (the response's `Content-Length`).
    pub len: u64,
}

/// A boundary unlikely to occur in any file: 24 random hex digits after a fixed prefix.
pub fn new_boundary() -> String {
    format!(
        "oip-media-{:016x}{:08x}",
        fastrand::u64(..),
        fastrand::u32(..)
    )
}

/// Frames `ranges` of `file` (a `total`-byte file of type `part_type`).
pub fn byteranges(
    file: &Bytes,
    total: u64,
    ranges: &[ByteRange],
    part_type: &str,
    boundary: &str,
) -> Multipart {
    let mut segments = Vec::with_capacity(ranges.len() * 2 + 1);
    let mut len = 0u64;
    for (i, range) in ranges.iter().enumerate() {
        let lead = if i == 0 { "" } else { "\r\n" };
        let head = format!(
            "{lead}--{boundary}\r\nContent-Type: {part_type}\r\nContent-Range: {}\r\n\r\n",
            range.content_range(total)
        );
        len += head.len() as u64 + range.len();
        segments.push(Bytes::from(head));
        // Ranges were validated against this file's length, so the slice is in bounds.
        segments.push(file.slice(range.start as usize..=range.end as usize));
    }
    let tail = format!("\r\n--{boundary}--\r\n");
    len += tail.len() as u64;
    segments.push(Bytes::from(tail));
    Multipart {
        content_type: format!("multipart/byteranges; boundary={boundary}"),
        segments,
        len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parts_with_headers_and_exact_length() {
        let file = Bytes::from_static(b"0123456789abcdefghij");
        let ranges = [
            ByteRange { start: 0, end: 2 },
            ByteRange { start: 10, end: 12 },
        ];
        let m = byteranges(&file, 20, &ranges, "image/gif", "XYZ");
        let body: Vec<u8> = m.segments.iter().flat_map(|s| s.to_vec()).collect();
        let expected = "--XYZ\r\nContent-Type: image/gif\r\nContent-Range: bytes 0-2/20\r\n\r\n012\
                        \r\n--XYZ\r\nContent-Type: image/gif\r\nContent-Range: bytes 10-12/20\r\n\r\nabc\
                        \r\n--XYZ--\r\n";
        assert_eq!(String::from_utf8(body).unwrap(), expected);
        assert_eq!(m.len, expected.len() as u64);
        assert_eq!(m.content_type, "multipart/byteranges; boundary=XYZ");
    }

    #[test]
    fn boundaries_differ() {
        assert_ne!(new_boundary(), new_boundary());
    }
}
