//! Entity tags and conditional requests (RFC 9110 §8.8.3, §13).
//!
//! Entity-tag lists are tokenised by hand: an opaque tag may contain commas, so a split
//! on `,` is wrong, and the grammar is three lines. Dates go through `httpdate`.
//! Unparsable validator headers are ignored, as §13.1 asks, never turned into errors.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, header};

/// An entity tag: opaque quoted text, weak or strong.
///
/// Cheap to clone (the text is shared), and its header value is rendered at most once
/// per tag, on first use: a file's tag lives as long as its mapping (see
/// `store::MappedFile::validators`), so a GIF's `ETag` is formatted once per file
/// version rather than once per request.
#[derive(Debug, Clone)]
pub struct EntityTag {
    weak: bool,
    opaque: Arc<str>,
    rendered: OnceLock<HeaderValue>,
}

impl PartialEq for EntityTag {
    fn eq(&self, other: &Self) -> bool {
        self.weak == other.weak && self.opaque == other.opaque
    }
}

impl Eq for EntityTag {}

impl EntityTag {
    fn new(weak: bool, opaque: impl Into<Arc<str>>) -> Self {
        EntityTag {
            weak,
            opaque: opaque.into(),
            rendered: OnceLock::new(),
        }
    }

    /// A strong tag with the given opaque text (no quotes).
    pub fn strong(opaque: impl Into<Arc<str>>) -> Self {
        EntityTag::new(false, opaque)
    }

    /// A weak tag with the given opaque text (no quotes).
    pub fn weak(opaque: impl Into<Arc<str>>) -> Self {
        EntityTag::new(true, opaque)
    }

    /// The indexer's (Express `etag`/serve-static) weak format for a file:
    /// `W/"<size hex>-<mtime ms hex>"`. Keeping it lets browsers that cached a GIF from
    /// the Node app revalidate with a 304 after the cut-over.
    pub fn for_file(len: u64, mtime_ms: u64) -> Self {
        EntityTag::weak(format!("{len:x}-{mtime_ms:x}"))
    }

    /// A tag for a representation derived from this one (a still of a GIF): the same
    /// strength, the opaque text with `suffix` appended. It changes whenever the
    /// source's tag does, and differs from it, so caches never mix the two.
    pub fn derived(&self, suffix: &str) -> Self {
        EntityTag::new(self.weak, format!("{}{suffix}", self.opaque))
    }

    /// A *strong* tag for a representation derived from this one and stored as one
    /// file that is served byte for byte (a video variant of a GIF): the opaque text
    /// with `suffix` appended. Strong even when the source's tag is weak, because
    /// the variant's bytes are fixed once made, and a strong tag is what lets a player
    /// resume with `If-Range` (RFC 9110 §13.1.5). `suffix` must name everything the
    /// bytes depend on besides the source (format, encoder).
    pub fn derived_strong(&self, suffix: &str) -> Self {
        EntityTag::strong(format!("{}{suffix}", self.opaque))
    }

    /// True for a weak tag.
    pub fn is_weak(&self) -> bool {
        self.weak
    }

    /// Strong comparison: both strong and the same text.
    pub fn strong_eq(&self, other: &EntityTag) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    /// Weak comparison: the same text, weakness ignored.
    pub fn weak_eq(&self, other: &EntityTag) -> bool {
        self.opaque == other.opaque
    }

    /// The header value (`"…"` or `W/"…"`), rendered on the first call and cloned after.
    pub fn to_header_value(&self) -> HeaderValue {
        self.rendered
            .get_or_init(|| {
                let text = if self.weak {
                    format!("W/\"{}\"", self.opaque)
                } else {
                    format!("\"{}\"", self.opaque)
                };
                HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
            })
            .clone()
    }
}

/// A parsed `If-Match`/`If-None-Match` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagList {
    /// `*`: any current representation.
    Any,
    /// The listed tags (possibly none, if every member was malformed).
    Tags(Vec<EntityTag>),
}

impl TagList {
    /// Parses every value of `name` in `headers` into one list; `None` when absent.
    pub fn from_headers(headers: &HeaderMap, name: header::HeaderName) -> Option<TagList> {
        let mut tags = Vec::new();
        let mut present = false;
        for value in headers.get_all(name) {
            present = true;
            let Ok(text) = value.to_str() else { continue };
            if text.trim() == "*" {
                return Some(TagList::Any);
            }
            tags.extend(parse_tags(text));
        }
        present.then_some(TagList::Tags(tags))
    }

    fn any_matches(&self, current: &EntityTag, strong: bool) -> bool {
        match self {
            TagList::Any => true,
            TagList::Tags(tags) => tags.iter().any(|t| {
                if strong {
                    t.strong_eq(current)
                } else {
                    t.weak_eq(current)
                }
            }),
        }
    }
}

/// Tokenises `#entity-tag` (comma-separated, optional whitespace); malformed members
/// end the list.
fn parse_tags(text: &str) -> Vec<EntityTag> {
    let mut tags = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return tags;
        }
        let weak = rest.starts_with("W/");
        if weak {
            rest = &rest[2..];
        }
        let Some(after_quote) = rest.strip_prefix('"') else {
            return tags;
        };
        let Some(close) = after_quote.find('"') else {
            return tags;
        };
        tags.push(EntityTag::new(weak, &after_quote[..close]));
        rest = &after_quote[close + 1..];
    }
}

/// The outcome of evaluating preconditions (RFC 9110 §13.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Serve the request normally.
    Proceed,
    /// 304 Not Modified (GET/HEAD whose cached copy is current).
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

/// HTTP dates have one-second resolution; compare at that resolution.
fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn date_header(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    let value = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(value).ok()
}

/// Evaluates `If-Match`, `If-Unmodified-Since`, `If-None-Match` and `If-Modified-Since`
/// in the order §13.2.2 gives, for a representation with `etag` and `last_modified`.
pub fn evaluate(
    method: &Method,
    headers: &HeaderMap,
    etag: &EntityTag,
    last_modified: SystemTime,
) -> Precondition {
    let modified = whole_seconds(last_modified);
    // Step 1/2: the client's own update guards. A weak tag never matches strongly.
    if let Some(list) = TagList::from_headers(headers, header::IF_MATCH) {
        if !list.any_matches(etag, true) {
            return Precondition::Failed;
        }
    } else if let Some(since) = date_header(headers, header::IF_UNMODIFIED_SINCE)
        && modified > since
    {
        return Precondition::Failed;
    }
    let safe = method == Method::GET || method == Method::HEAD;
    // Step 3/4: cache revalidation. If-Modified-Since only counts without If-None-Match.
    if let Some(list) = TagList::from_headers(headers, header::IF_NONE_MATCH) {
        if list.any_matches(etag, false) {
            return if safe {
                Precondition::NotModified
            } else {
                Precondition::Failed
            };
        }
    } else if safe
        && let Some(since) = date_header(headers, header::IF_MODIFIED_SINCE)
        && modified <= since
    {
        return Precondition::NotModified;
    }
    Precondition::Proceed
}

/// `If-Range` (§13.1.5): true when a `Range` should be honoured — no `If-Range`, or one
/// whose validator still matches strongly. A weak ETag never does; a date must equal
/// `Last-Modified` exactly.
pub fn if_range_allows(headers: &HeaderMap, etag: &EntityTag, last_modified: SystemTime) -> bool {
    let Some(value) = headers.get(header::IF_RANGE) else {
        return true;
    };
    let Ok(text) = value.to_str() else {
        return false;
    };
    let text = text.trim();
    if text.starts_with('"') || text.starts_with("W/") {
        return parse_tags(text).first().is_some_and(|t| t.strong_eq(etag));
    }
    httpdate::parse_http_date(text).is_ok_and(|date| date == whole_seconds(last_modified))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(at(secs))
    }

    #[test]
    fn indexer_etag_format() {
        let tag = EntityTag::for_file(0x39c1b, 0x1a204213997);
        assert_eq!(tag.to_header_value(), "W/\"39c1b-1a204213997\"");
    }

    #[test]
    fn derived_tags_keep_strength() {
        let weak = EntityTag::for_file(0x10, 0x20).derived("-still-w90");
        assert_eq!(weak.to_header_value(), "W/\"10-20-still-w90\"");
        let strong = EntityTag::strong("abc").derived("-still");
        assert_eq!(strong.to_header_value(), "\"abc-still\"");
    }

    #[test]
    fn tag_lists_parse_with_commas_inside_quotes() {
        assert_eq!(
            parse_tags(r#""a", W/"b,c" ,"d""#),
            vec![
                EntityTag::strong("a"),
                EntityTag::weak("b,c"),
                EntityTag::strong("d")
            ]
        );
        assert_eq!(parse_tags("garbage"), vec![]);
    }

    type Case<'a> = (
        &'a EntityTag,
        Method,
        Vec<(&'static str, String)>,
        Precondition,
    );

    #[test]
    fn precondition_table() {
        let weak = EntityTag::for_file(10, 20);
        let strong = EntityTag::strong("abc");
        let lm = at(1_000_000) + Duration::from_millis(700);
        let get = Method::GET;
        use Precondition::*;
        let cases: Vec<Case> = vec![
            (&weak, get.clone(), vec![], Proceed),
            (
                &weak,
                get.clone(),
                vec![("if-none-match", "W/\"a-14\"".into())],
                NotModified,
            ),
            (
                &weak,
                get.clone(),
                vec![("if-none-match", "\"a-14\"".into())],
                NotModified,
            ),
            (
                &weak,
                get.clone(),
                vec![("if-none-match", "\"x\", W/\"a-14\"".into())],
                NotModified,
            ),
            (
                &weak,
                get.clone(),
                vec![("if-none-match", "*".into())],
                NotModified,
            ),
            (
                &weak,
                get.clone(),
                vec![("if-none-match", "\"other\"".into())],
                Proceed,
            ),
            (
                &weak,
                Method::HEAD,
                vec![("if-none-match", "W/\"a-14\"".into())],
                NotModified,
            ),
            // If-Modified-Since ignored when If-None-Match is present.
            (
                &weak,
                get.clone(),
                vec![
                    ("if-none-match", "\"other\"".into()),
                    ("if-modified-since", date(2_000_000)),
                ],
                Proceed,
            ),
            (
                &weak,
                get.clone(),
                vec![("if-modified-since", date(1_000_000))],
                NotModified,
            ),
            (
                &weak,
                get.clone(),
                vec![("if-modified-since", date(999_999))],
                Proceed,
            ),
            (
                &weak,
                get.clone(),
                vec![("if-modified-since", "not a date".into())],
                Proceed,
            ),
            // If-Match needs a strong match: a weak ETag never matches.
            (
                &weak,
                get.clone(),
                vec![("if-match", "W/\"a-14\"".into())],
                Failed,
            ),
            (&weak, get.clone(), vec![("if-match", "*".into())], Proceed),
            (
                &strong,
                get.clone(),
                vec![("if-match", "\"abc\"".into())],
                Proceed,
            ),
            (
                &strong,
                get.clone(),
                vec![("if-match", "\"nope\"".into())],
                Failed,
            ),
            (
                &strong,
                get.clone(),
                vec![("if-match", "W/\"abc\"".into())],
                Failed,
            ),
            (
                &weak,
                get.clone(),
                vec![("if-unmodified-since", date(999_999))],
                Failed,
            ),
            (
                &weak,
                get.clone(),
                vec![("if-unmodified-since", date(1_000_000))],
                Proceed,
            ),
            (
                &weak,
                get.clone(),
                vec![("if-unmodified-since", "garbage".into())],
                Proceed,
            ),
            // If-Unmodified-Since ignored when If-Match is present.
            (
                &strong,
                get.clone(),
                vec![
                    ("if-match", "\"abc\"".into()),
                    ("if-unmodified-since", date(1)),
                ],
                Proceed,
            ),
        ];
        for (tag, method, pairs, expected) in cases {
            let pairs: Vec<(&'static str, &str)> =
                pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!(
                evaluate(&method, &headers(&pairs), tag, lm),
                expected,
                "{pairs:?} on {tag:?}"
            );
        }
    }

    #[test]
    fn if_range() {
        let weak = EntityTag::for_file(10, 20);
        let strong = EntityTag::strong("abc");
        let lm = at(1_000_000);
        assert!(if_range_allows(&HeaderMap::new(), &weak, lm));
        assert!(!if_range_allows(
            &headers(&[("if-range", "W/\"a-14\"")]),
            &weak,
            lm
        ));
        assert!(if_range_allows(
            &headers(&[("if-range", "\"abc\"")]),
            &strong,
            lm
        ));
        assert!(!if_range_allows(
            &headers(&[("if-range", "\"old\"")]),
            &strong,
            lm
        ));
        assert!(if_range_allows(
            &headers(&[("if-range", &date(1_000_000))]),
            &weak,
            lm
        ));
        assert!(!if_range_allows(
            &headers(&[("if-range", &date(999_000))]),
            &weak,
            lm
        ));
        assert!(!if_range_allows(
            &headers(&[("if-range", "junk")]),
            &weak,
            lm
        ));
    }
}
