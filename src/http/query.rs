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

/// True when the first value of `name` in `query` is one of `values`, decoded as
/// [`param`] decodes it. Copies nothing unless a key or the value is percent- or
/// `+`-encoded: the router asks this of GIF requests before admitting them.
pub fn param_is_one_of(query: Option<&str>, name: &str, values: &[&str]) -> bool {
    let Some(query) = query else {
        return false;
    };
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .is_some_and(|(_, value)| values.contains(&value.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_first_value_like_param_reads_it() {
        let q = Some("w=90&still=%31&still=0");
        assert!(param_is_one_of(q, "still", &["1", "true"]), "decoded");
        assert!(!param_is_one_of(q, "w", &["1"]));
        assert!(!param_is_one_of(q, "missing", &[""]));
        assert!(!param_is_one_of(None, "still", &["1"]));
        assert!(param_is_one_of(Some("flag"), "flag", &[""]));
        for q in ["still=1", "x=1&still=true", "still=0&still=1", "still="] {
            assert_eq!(
                param_is_one_of(Some(q), "still", &["1", "true"]),
                matches!(param(Some(q), "still").as_deref(), Some("1" | "true")),
                "{q}"
            );
        }
    }

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
