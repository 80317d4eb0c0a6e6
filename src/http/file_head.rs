//! The header lines of a whole file's `200`, rendered once per file version and
//! shared by every request of it (issue 25: "the response head from parts rendered once
//! per file version, plus the per-request fields").
//!
//! A GIF's `200` repeats the same six fields on every request (`ETag`, `Last-Modified`,
//! `Cache-Control`, `Content-Type`, `Content-Length`, `Accept-Ranges`); only `Date`,
//! `X-Request-Id`, CORS and `Connection` change. Building a `HeaderMap` of them per
//! request and writing it out again cost ~2,000 instructions of the fast lane's ~21,800
//! (callgrind: the inserts, the values' reference counts, and the head writer's walk).
//! [`FileHead`] keeps both forms of those six: the fields, for a lane that writes a
//! `HeaderMap` (hyper's, and every caller of `App::handle`), and the same fields as
//! `name: value\r\n` lines, which the fast lane copies into its head whole.
//!
//! The one rule that keeps both lanes' bytes the same: the file's fields come *first*,
//! before any field the app or the route adds, in both forms ([`FileHead::put_first`]
//! for the map; the fast lane writes the lines right after the status line).

use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, header};

use super::conditional::EntityTag;

/// What a route says about a file's `200`, as far as the rendered fields depend on it,
/// borrowed from the route's description: a cached [`FileHead`] serves a request only
/// when the request's route describes the file the same way (two routes may map one
/// file and describe it differently).
#[derive(Debug, Clone, Copy)]
pub struct Described<'a> {
    /// `Content-Type`.
    pub content_type: &'a HeaderValue,
    /// `Cache-Control`.
    pub cache_control: &'a HeaderValue,
    /// The entity tag.
    pub etag: &'a EntityTag,
    /// The `Last-Modified` time a route gives instead of the file's own, if any.
    pub last_modified: Option<SystemTime>,
}

/// [`Described`], owned by the head rendered from it.
#[derive(Debug)]
struct Key {
    content_type: HeaderValue,
    cache_control: HeaderValue,
    etag: EntityTag,
    last_modified: Option<SystemTime>,
}

/// A whole file's `200` header fields, in the order both lanes write them, and the
/// same rendered as lines. Kept with each cached mapping, so it holds each value once
/// (the fields are made from the key and two values).
///
/// One allocation per file version, of 720 bytes, with the lines inline. Heads live as
/// long as their mapping but are made by a request, among the request's and its
/// connection's short-lived allocations. With the lines in a second, ~200-byte block
/// (`Box<[u8]>`: jemalloc's 224-byte class, where a GIF request makes two short-lived
/// 208-byte allocations), a long run's RssAnon stepped further after its first round
/// (mean 105 KiB in twelve runs, against 63 in ten without heads), most likely as pages
/// that the first round used stayed pinned by heads made on them. In the 768-byte class, which a GIF
/// request's own allocations do not use (gdb on `malloc`, 20 requests: 8 to 208, 597,
/// 624, 1,024 and 3,568 bytes), the step is back to 58 KiB (six runs; all in
/// `docs/benchmarks/fast-lane.md`, fifth pass).
#[derive(Debug)]
pub struct FileHead {
    key: Key,
    last_modified: Option<HeaderValue>,
    content_length: HeaderValue,
    len: u16,
    lines: [u8; LINES_CAPACITY],
}

/// Most bytes of a head's lines: a GIF's six fields take ~200; a head that would not
/// fit (a long `Content-Type` from a manifest, say) is not rendered, and its route
/// builds its fields per request.
const LINES_CAPACITY: usize = 448;

impl FileHead {
    /// The head of a `200` of a whole non-empty file (an empty body's `Content-Length` is
    /// the lane's to write, not the app's) of `content_length` bytes, as `described`, with
    /// `last_modified` already rendered (`None`: a time HTTP dates cannot express, and
    /// no field). The order is the one `file_response` gives a `HeaderMap`. `None` when
    /// its lines would not fit [`LINES_CAPACITY`].
    pub fn new(
        described: Described<'_>,
        last_modified: Option<HeaderValue>,
        content_length: HeaderValue,
    ) -> Option<FileHead> {
        let mut head = FileHead {
            key: Key {
                content_type: described.content_type.clone(),
                cache_control: described.cache_control.clone(),
                etag: described.etag.clone(),
                last_modified: described.last_modified,
            },
            last_modified,
            content_length,
            len: 0,
            lines: [0; LINES_CAPACITY],
        };
        let mut lines = [0; LINES_CAPACITY];
        let mut len = 0;
        for (name, value) in head.fields() {
            // Lowercase names, `: `, the value as given: hyper's own writing.
            for part in [name.as_str().as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
                let end = len + part.len();
                lines.get_mut(len..end)?.copy_from_slice(part);
                len = end;
            }
        }
        head.lines = lines;
        head.len = u16::try_from(len).ok()?;
        Some(head)
    }

    /// Whether this head is the one a route describing the file as `described` would
    /// render (`extra` fields aside: a route with any does not use a rendered head).
    pub fn fits(&self, described: Described<'_>) -> bool {
        let key = &self.key;
        key.content_type == described.content_type
            && key.cache_control == described.cache_control
            && key.etag == *described.etag
            && key.last_modified == described.last_modified
    }

    /// The fields as `name: value\r\n` lines, in order; they include `Content-Length`.
    pub fn lines(&self) -> &[u8] {
        &self.lines[..usize::from(self.len)]
    }

    /// The fields, in order (each value shares its bytes with this head's).
    pub fn fields(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        let key = &self.key;
        [
            Some((header::ETAG, key.etag.to_header_value())),
            self.last_modified
                .clone()
                .map(|date| (header::LAST_MODIFIED, date)),
            Some((header::CACHE_CONTROL, key.cache_control.clone())),
            Some((header::CONTENT_TYPE, key.content_type.clone())),
            Some((header::CONTENT_LENGTH, self.content_length.clone())),
            Some((header::ACCEPT_RANGES, HeaderValue::from_static("bytes"))),
        ]
        .into_iter()
        .flatten()
    }

    /// Puts the fields into `headers` ahead of whatever it holds already, so a lane
    /// writing the map writes them where the fast lane writes [`FileHead::lines`]: right
    /// after the status line. A map that is still empty (the common case: the app adds
    /// its own fields after this) takes them without a copy of its own entries.
    pub fn put_first(&self, headers: &mut HeaderMap) {
        if headers.is_empty() {
            // Room for the app's fields too (CORS, `X-Request-Id`, `nosniff`): one
            // allocation, as `file_response` makes for a response it builds whole.
            headers.reserve(FULL_RESPONSE_HEADERS);
            for (name, value) in self.fields() {
                headers.insert(name, value);
            }
            return;
        }
        let later = std::mem::replace(
            headers,
            HeaderMap::with_capacity(FULL_RESPONSE_HEADERS + headers.len()),
        );
        for (name, value) in self.fields() {
            headers.insert(name, value);
        }
        let mut name = None;
        for (next, value) in later {
            // `into_iter` names a field's first value only; the rest follow it.
            if let Some(next) = next {
                name = Some(next);
            }
            if let Some(name) = &name {
                headers.append(name.clone(), value);
            }
        }
    }
}

/// Fields a whole file's `200` can carry with the app's and CORS's: a map of this
/// capacity never grows for one.
pub const FULL_RESPONSE_HEADERS: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    const GIF: HeaderValue = HeaderValue::from_static("image/gif");
    const A_DAY: HeaderValue = HeaderValue::from_static("public, max-age=86400");

    fn etag() -> EntityTag {
        EntityTag::for_file(10, 1_700_000_000_000)
    }

    fn head_of(etag: &EntityTag, last_modified: Option<HeaderValue>) -> FileHead {
        FileHead::new(
            Described {
                content_type: &GIF,
                cache_control: &A_DAY,
                etag,
                last_modified: None,
            },
            last_modified,
            HeaderValue::from(10u64),
        )
        .expect("a GIF's head fits")
    }

    fn head() -> FileHead {
        head_of(
            &etag(),
            Some(HeaderValue::from_static("Tue, 14 Nov 2023 22:13:20 GMT")),
        )
    }

    #[test]
    fn the_lines_are_the_fields_as_hyper_writes_them() {
        let head = head();
        assert_eq!(
            std::str::from_utf8(head.lines()).unwrap(),
            "etag: W/\"a-18bcfe56800\"\r\n\
             last-modified: Tue, 14 Nov 2023 22:13:20 GMT\r\n\
             cache-control: public, max-age=86400\r\n\
             content-type: image/gif\r\n\
             content-length: 10\r\n\
             accept-ranges: bytes\r\n"
        );
        let mut written = Vec::new();
        for (name, value) in head.fields() {
            written.extend_from_slice(name.as_str().as_bytes());
            written.extend_from_slice(b": ");
            written.extend_from_slice(value.as_bytes());
            written.extend_from_slice(b"\r\n");
        }
        assert_eq!(written, head.lines());
    }

    #[test]
    fn a_head_is_one_block_of_at_most_768_bytes() {
        // With `Arc`'s two counts: jemalloc's 768-byte class, which a GIF request's own
        // allocations do not use (see `FileHead`).
        let size = std::mem::size_of::<FileHead>() + 16;
        assert!(size <= 768, "{size}");
        assert!(
            size > 640,
            "{size}: the 640-byte class holds requests' header maps"
        );
    }

    #[test]
    fn a_head_too_long_to_fit_is_not_rendered() {
        let long =
            HeaderValue::from_str(&format!("text/x-{}", "a".repeat(LINES_CAPACITY))).unwrap();
        let etag = etag();
        let described = Described {
            content_type: &long,
            cache_control: &A_DAY,
            etag: &etag,
            last_modified: None,
        };
        assert!(FileHead::new(described, None, HeaderValue::from(10u64)).is_none());
    }

    #[test]
    fn a_time_http_cannot_express_has_no_last_modified() {
        let head = head_of(&etag(), None);
        assert!(head.fields().all(|(name, _)| name != header::LAST_MODIFIED));
        assert!(
            !std::str::from_utf8(head.lines())
                .unwrap()
                .contains("last-modified")
        );
    }

    #[test]
    fn put_first_puts_the_files_fields_ahead_of_the_maps_own() {
        let head = head();
        let mut empty = HeaderMap::new();
        head.put_first(&mut empty);
        let names: Vec<_> = empty.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "etag",
                "last-modified",
                "cache-control",
                "content-type",
                "content-length",
                "accept-ranges"
            ]
        );
        assert!(empty.capacity() >= FULL_RESPONSE_HEADERS);

        let mut map = HeaderMap::new();
        map.insert("x-route", HeaderValue::from_static("1"));
        map.append(header::VARY, HeaderValue::from_static("Accept"));
        map.append(header::VARY, HeaderValue::from_static("Origin"));
        head.put_first(&mut map);
        let fields: Vec<_> = map
            .iter()
            .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap()))
            .collect();
        let lines = std::str::from_utf8(head.lines()).unwrap();
        assert_eq!(
            fields[..6].join("\n"),
            lines.trim_end().replace("\r\n", "\n")
        );
        assert_eq!(
            fields[6..],
            ["x-route: 1", "vary: Accept", "vary: Origin"].map(String::from)
        );
    }

    #[test]
    fn a_head_fits_only_the_description_it_was_rendered_for() {
        let head = head();
        let etag = etag();
        let same = Described {
            content_type: &GIF,
            cache_control: &A_DAY,
            etag: &etag,
            last_modified: None,
        };
        assert!(head.fits(same));
        let private = HeaderValue::from_static("private, no-store");
        assert!(!head.fits(Described {
            cache_control: &private,
            ..same
        }));
        let png = HeaderValue::from_static("image/png");
        assert!(!head.fits(Described {
            content_type: &png,
            ..same
        }));
        assert!(!head.fits(Described {
            last_modified: Some(SystemTime::UNIX_EPOCH),
            ..same
        }));
        let other = EntityTag::strong("other");
        assert!(!head.fits(Described {
            etag: &other,
            ..same
        }));
    }
}
