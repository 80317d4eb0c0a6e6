//! Query-string parameters, decoded the way the indexer's Express app decoded them
//! (`application/x-www-form-urlencoded`: `+` is a space, one percent-decoding pass), so
//! links that worked against Node keep working here. The decoding is `form_urlencoded`'s.

/// The first value of `name` in `query` (the part after `?`, without it), decoded.
/// `None` when the parameter is absent. A parameter without `=` has the empty value.
/// Bytes that are not UTF-8 become U+FFFD: such a value can never name a file or match
/// an allowed option, so it fails the caller's own check instead of needing a variant.
pub fn param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_decodes_the_first_value() {
        let q = Some("still=1&w=180&id=a%2Fb+c.mp3&w=90&flag");
        assert_eq!(param(q, "still").as_deref(), Some("1"));
        assert_eq!(param(q, "w").as_deref(), Some("180"), "first one wins");
        assert_eq!(param(q, "id").as_deref(), Some("a/b c.mp3"));
        assert_eq!(param(q, "flag").as_deref(), Some(""));
        assert_eq!(param(q, "missing"), None);
        assert_eq!(param(None, "id"), None);
        assert_eq!(
            param(Some("%69d=x"), "id").as_deref(),
            Some("x"),
            "keys decode too"
        );
        assert_eq!(
            param(Some("id=%252e%252e"), "id").as_deref(),
            Some("%2e%2e"),
            "one pass only"
        );
        assert_eq!(param(Some("id=%ff"), "id").as_deref(), Some("\u{fffd}"));
    }
}
