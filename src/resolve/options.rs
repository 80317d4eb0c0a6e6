//! The three options a caller gives the resolver (`resolveDepth`, `resolveNamesOnly`,
//! `resolveFieldName`), parsed as leniently as the indexer passes them — numbers or
//! numeric strings, booleans or `"true"`/`"false"` — and no more leniently than that:
//! anything else is an [`OptionsError`] the route turns into a 400.

use serde_json::{Map, Value};

/// What a caller asked for. Built by [`ResolveOptions::from_request`] or by hand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolveOptions {
    /// Levels of references to replace. 0 (also the default when absent, as in the
    /// indexer's `resolveRecords`) returns the records unchanged. The resolver caps it
    /// at `--resolve-max-depth`.
    pub depth: u32,
    /// At the last level, replace a reference by the referenced record's
    /// `data.basic.name` (the DID when it has none) instead of the record.
    pub names_only: bool,
    /// Which `data.<category>.<key>` fields are resolved (all when empty).
    pub fields: FieldFilter,
}

/// Why the options of a request are unusable. The message names the option, so a 400
/// says exactly what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// `resolveDepth` is not a non-negative integer.
    #[error("resolveDepth must be a non-negative integer, got {0}")]
    Depth(String),
    /// `resolveNamesOnly` is not a boolean.
    #[error("resolveNamesOnly must be true or false, got {0}")]
    NamesOnly(String),
    /// `resolveFieldName` is not a string or a list of strings.
    #[error("resolveFieldName must be a comma-separated string or a list of strings, got {0}")]
    FieldName(String),
}

impl ResolveOptions {
    /// The options of one `/api/resolve` request: the query string's parameters (how the
    /// indexer passes them on its own routes), then the JSON body's fields of the same
    /// names. A body field wins over a query parameter: the body is the more specific,
    /// deliberate statement of what this call wants, while a query string is often
    /// forwarded wholesale from another request.
    pub fn from_request(
        query: Option<&str>,
        body: &Map<String, Value>,
    ) -> Result<Self, OptionsError> {
        let mut options = ResolveOptions::default();
        if let Some(query) = query {
            for (name, value) in form_urlencoded::parse(query.as_bytes()) {
                let value = Value::String(value.into_owned());
                options.set(&name, &value)?;
            }
        }
        for name in [DEPTH, NAMES_ONLY, FIELD_NAME] {
            if let Some(value) = body.get(name) {
                options.set(name, value)?;
            }
        }
        Ok(options)
    }

    /// Applies one named option; unknown names are ignored (the indexer's query strings
    /// carry many other parameters).
    fn set(&mut self, name: &str, value: &Value) -> Result<(), OptionsError> {
        match name {
            DEPTH => self.depth = parse_depth(value)?,
            NAMES_ONLY => self.names_only = parse_bool(value)?,
            FIELD_NAME => self.fields = FieldFilter::from_value(value)?,
            _ => {}
        }
        Ok(())
    }
}

const DEPTH: &str = "resolveDepth";
const NAMES_ONLY: &str = "resolveNamesOnly";
const FIELD_NAME: &str = "resolveFieldName";

fn parse_depth(value: &Value) -> Result<u32, OptionsError> {
    let number = match value {
        Value::Null => return Ok(0),
        Value::Number(n) => n.as_u64(),
        Value::String(s) if s.trim().is_empty() => return Ok(0),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    // Any depth past u32 is capped by the resolver anyway.
    number
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
        .ok_or_else(|| OptionsError::Depth(value.to_string()))
}

fn parse_bool(value: &Value) -> Result<bool, OptionsError> {
    match value {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.trim() {
            "true" => Ok(true),
            "false" | "" => Ok(false),
            _ => Err(OptionsError::NamesOnly(value.to_string())),
        },
        _ => Err(OptionsError::NamesOnly(value.to_string())),
    }
}

/// The `resolveFieldName` targets. A target `T` selects the field
/// `data.<category>.<key>` when `T` is `category.key` or `data.category.key`, or a
/// dotted parent of either (`category`, `data.category`, `data`) — the indexer's
/// matcher, which compares `category.key` and `data.category.key` with `T` and with
/// `T + '.'` as a string prefix. A bare word is therefore a category, never a key of
/// another category (SPEC §4): `exercise` selects the `exercise` category, not
/// `workout.exercise`.
///
/// A target also selects its dotted children: OIP keys may contain dots, so `links.x`
/// selects the key `x.y` in category `links`. A target never selects a mere string
/// prefix: `links.x` does not select `xy`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldFilter {
    targets: Vec<String>,
}

impl FieldFilter {
    /// A filter from a comma-separated list; blanks are dropped, so `""` selects every field.
    pub fn parse(list: &str) -> FieldFilter {
        FieldFilter::from_targets(list.split(','))
    }

    /// A filter from separate targets (trimmed; blanks dropped).
    pub fn from_targets<S: AsRef<str>>(targets: impl IntoIterator<Item = S>) -> FieldFilter {
        FieldFilter {
            targets: targets
                .into_iter()
                .map(|t| t.as_ref().trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect(),
        }
    }

    /// From a JSON value: a comma-separated string or an array of strings (the two
    /// forms the indexer accepts).
    pub fn from_value(value: &Value) -> Result<FieldFilter, OptionsError> {
        match value {
            Value::Null => Ok(FieldFilter::default()),
            Value::String(s) => Ok(FieldFilter::parse(s)),
            Value::Array(items) => {
                let strings: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
                strings
                    .map(FieldFilter::from_targets)
                    .ok_or_else(|| OptionsError::FieldName(value.to_string()))
            }
            _ => Err(OptionsError::FieldName(value.to_string())),
        }
    }

    /// True when no target was given: every field is resolved.
    pub fn is_all(&self) -> bool {
        self.targets.is_empty()
    }

    /// The targets, as given (trimmed).
    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    /// Whether `data.<category>.<key>` is to be resolved.
    pub fn allows(&self, category: &str, key: &str) -> bool {
        self.is_all()
            || self
                .targets
                .iter()
                .any(|target| covers(target, category, key))
    }
}

/// The match, without building strings: `target` is a dotted prefix of
/// `category.key` or `data.category.key`, the whole of either included.
fn covers(target: &str, category: &str, key: &str) -> bool {
    target == "data"
        || is_dotted_prefix(target, [category, key])
        || target
            .strip_prefix("data.")
            .is_some_and(|short| is_dotted_prefix(short, [category, key]))
}

/// Whether `target` is the dotted path `segments` joined with `.`, or a prefix of it
/// ending just before a `.` (`links.x` of `links.x.y`, not of `links.xy`). Compared
/// byte by byte over the segments, so no path is built per field.
fn is_dotted_prefix<const N: usize>(target: &str, segments: [&str; N]) -> bool {
    let mut path = segments
        .iter()
        .enumerate()
        .flat_map(|(i, segment)| (i > 0).then_some(b'.').into_iter().chain(segment.bytes()));
    target.bytes().all(|byte| path.next() == Some(byte)) && matches!(path.next(), None | Some(b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn field_targets_match_like_the_indexer() {
        let f = FieldFilter::parse("workout.exercise, data.basic.avatar,recipe");
        assert!(f.allows("workout", "exercise"));
        assert!(f.allows("basic", "avatar"));
        assert!(f.allows("recipe", "ingredient"));
        assert!(f.allows("recipe", "anything"));
        assert!(!f.allows("workout", "exerciseComment"));
        assert!(!f.allows("basic", "name"));
        assert!(!f.allows("recipes", "x"));
        // A bare word is a category (the indexer's prefix match, SPEC §4), never a
        // key of another category.
        let word = FieldFilter::parse("exercise");
        assert!(word.allows("exercise", "equipment"));
        assert!(word.allows("exercise", "exercise"));
        assert!(!word.allows("workout", "exercise"));
        assert!(!word.allows("plan", "exercise"));
        assert!(!word.allows("exercises", "x"));
        assert!(!word.allows("workout", "exerciseComment"));
        assert!(FieldFilter::parse("data").allows("any", "thing"));
        assert!(FieldFilter::parse("data.workout").allows("workout", "x"));
        assert!(FieldFilter::parse(" , ").is_all());
        // Dotted children of a field target are not other fields.
        assert!(!FieldFilter::parse("workout.exercise.name").allows("workout", "exercise"));
        // A category that is itself called `data`.
        assert!(FieldFilter::parse("data.x").allows("data", "x"));
        assert!(FieldFilter::parse("data.data.x").allows("data", "x"));
    }

    #[test]
    fn a_target_selects_its_dotted_children() {
        // Keys that contain dots: `links.x` selects `x.y` and `x.y.z` in `links`.
        let f = FieldFilter::parse("links.x");
        assert!(f.allows("links", "x"));
        assert!(f.allows("links", "x.y"));
        assert!(f.allows("links", "x.y.z"));
        assert!(!f.allows("links", "xy"));
        assert!(!f.allows("links", "x-y"));
        assert!(!f.allows("links", ".x"));
        assert!(!f.allows("other", "x.y"));
        // With the `data.` prefix, and deeper targets.
        assert!(FieldFilter::parse("data.links.x").allows("links", "x.y"));
        assert!(FieldFilter::parse("links.x.y").allows("links", "x.y.z"));
        assert!(FieldFilter::parse("links.x.y").allows("links", "x.y"));
        assert!(!FieldFilter::parse("links.x.y").allows("links", "x"));
        assert!(!FieldFilter::parse("links.x.y").allows("links", "x.yz"));
        // A category name with a dot in it matches like any path.
        assert!(FieldFilter::parse("a.b").allows("a.b", "c"));
        assert!(FieldFilter::parse("a.b.c").allows("a.b", "c"));
        assert!(!FieldFilter::parse("a.bc").allows("a.b", "c"));
        // A single word: the category of that name only, not the key (or its dotted
        // children) in other categories.
        let word = FieldFilter::parse("x");
        assert!(word.allows("x", "anything"));
        assert!(word.allows("x", "y.z"));
        assert!(!word.allows("links", "x.y"));
        assert!(!word.allows("other", "x"));
        assert!(!word.allows("links", "xy"));
        // Array categories' items are fields named by their index.
        assert!(FieldFilter::parse("tags.0").allows("tags", "0"));
        assert!(!FieldFilter::parse("tags.0").allows("tags", "01"));
        assert!(FieldFilter::parse("tags").allows("tags", "7"));
    }

    #[test]
    fn options_from_query_and_body_with_body_winning() {
        let o = ResolveOptions::from_request(
            Some("resolveDepth=3&resolveNamesOnly=true&resolveFieldName=a.b%2Cc&limit=5"),
            &Map::new(),
        )
        .unwrap();
        assert_eq!(o.depth, 3);
        assert!(o.names_only);
        assert_eq!(o.fields.targets(), ["a.b", "c"]);

        let o = ResolveOptions::from_request(
            Some("resolveDepth=3&resolveNamesOnly=true"),
            &body(json!({"resolveDepth": "2", "resolveNamesOnly": false, "resolveFieldName": ["x.y"]})),
        )
        .unwrap();
        assert_eq!(o.depth, 2);
        assert!(!o.names_only);
        assert_eq!(o.fields.targets(), ["x.y"]);

        assert_eq!(
            ResolveOptions::from_request(None, &Map::new()).unwrap(),
            ResolveOptions::default()
        );
    }

    #[test]
    fn malformed_options_are_errors() {
        let bad = |v: Value| ResolveOptions::from_request(None, &body(v)).unwrap_err();
        assert!(matches!(
            bad(json!({"resolveDepth": -1})),
            OptionsError::Depth(_)
        ));
        assert!(matches!(
            bad(json!({"resolveDepth": 1.5})),
            OptionsError::Depth(_)
        ));
        assert!(matches!(
            bad(json!({"resolveDepth": "two"})),
            OptionsError::Depth(_)
        ));
        assert!(matches!(
            bad(json!({"resolveNamesOnly": "yes"})),
            OptionsError::NamesOnly(_)
        ));
        assert!(matches!(
            bad(json!({"resolveNamesOnly": 1})),
            OptionsError::NamesOnly(_)
        ));
        assert!(matches!(
            bad(json!({"resolveFieldName": 3})),
            OptionsError::FieldName(_)
        ));
        assert!(matches!(
            bad(json!({"resolveFieldName": ["a", 1]})),
            OptionsError::FieldName(_)
        ));
        assert!(matches!(
            ResolveOptions::from_request(Some("resolveDepth=x"), &Map::new()),
            Err(OptionsError::Depth(_))
        ));
        assert!(matches!(
            bad(json!({"resolveDepth": 1e20})),
            OptionsError::Depth(_)
        ));
        assert_eq!(
            ResolveOptions::from_request(None, &body(json!({"resolveDepth": 99999999999u64})))
                .map(|o| o.depth),
            Ok(u32::MAX)
        );
    }
}
