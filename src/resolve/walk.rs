//! The pure half of resolution: finding references in a record, and building the
//! resolved output from records already looked up. No I/O here, so every rule of the
//! indexer's `resolveRecords` can be tested without a source.
//!
//! The indexer's rules, kept:
//! - Only `data.<category>.<key>` is scanned; a reference is a string starting with
//!   `did:`, or such a string inside an array at that place. A category whose value is
//!   an array has its items scanned as fields `"0"`, `"1"`, … — the indexer walks
//!   categories with `Object.keys`, which lists an array's indices — so
//!   `data.tags = ["did:…", "x"]` has its DIDs resolved there too (and `tags.0` in
//!   `resolveFieldName` selects the first item).
//! - A record resolved with `remaining` levels has each reference replaced by the
//!   referenced record resolved with `remaining - 1`; a record given 0 levels is
//!   inserted as stored. With `names_only`, a record with 1 level left gets
//!   `data.basic.name` instead (the DID when the name is missing or empty), and a
//!   recipe walked with 1 level left has its ingredient names merged with their
//!   comments afterwards (`recipe`).
//! - Before expanding a referenced record (1 level or more left), if that record is
//!   already on the current path from the root, the stub
//!   `{oip, data: {basic}, _circular: true}` is inserted instead. As in the indexer
//!   the check is made on expansion only: a record inserted as stored at the last
//!   level is a leaf and cannot loop, so it is inserted whole.
//! - A reference that was not found stays the DID string.
//!
//! What changed: nothing here mutates a looked-up record (they are shared with the
//! process-wide cache); the output is built from copies, and the copies are paid for
//! out of an output budget so that one request cannot build an unbounded tree.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value, json};

use super::cache::FoundRecord;
use super::memory::{Sizing, heap_bytes};
use super::options::FieldFilter;
use super::recipe::merge_ingredient_comments;
use super::stats::{Bound, RecordStats};

/// What one request learnt about one DID.
#[derive(Debug, Clone)]
pub(crate) enum Lookup {
    /// Found (in the cache or a source).
    Found(FoundRecord),
    /// Not found, unresolvable, or not looked up: the reference stays the DID string,
    /// for the reason given.
    Unresolved(Unresolved),
}

/// Why a reference stays a DID: what each record's [`RecordStats`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unresolved {
    /// Looked up; no source had it.
    NotFound,
    /// The source failed (never cached, never reported as not found).
    Failed,
    /// No source is configured for its kind of DID.
    NoSource,
    /// Not looked up: the request's lookup budget was spent.
    Budget,
    /// Not looked up in time: the request's deadline passed.
    Timeout,
}

/// The per-request memo: each DID is looked up at most once per request.
pub(crate) type Memo = HashMap<String, Lookup>;

/// Whether `value` is a reference string.
pub(crate) fn is_reference(value: &str) -> bool {
    value.starts_with("did:")
}

/// Calls `each` with every reference in `record` that `filter` selects, in document
/// order (the order in which the indexer walks, and so the order in which a lookup
/// budget is spent).
pub(crate) fn for_each_reference<'r>(
    record: &'r Value,
    filter: &FieldFilter,
    mut each: impl FnMut(&'r str),
) {
    let Some(Value::Object(data)) = record.get("data") else {
        return;
    };
    for (category, properties) in data {
        match properties {
            Value::Object(properties) => {
                for (key, value) in properties {
                    if filter.allows(category, key) {
                        references_in(value, &mut each);
                    }
                }
            }
            Value::Array(items) => {
                for (index, value) in items.iter().enumerate() {
                    if allows_index(filter, category, index) {
                        references_in(value, &mut each);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The references a field's value holds: itself, or the reference strings of an array.
fn references_in<'r>(value: &'r Value, each: &mut impl FnMut(&'r str)) {
    match value {
        Value::String(s) if is_reference(s) => each(s),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| is_reference(s))
            .for_each(each),
        _ => {}
    }
}

/// Whether `filter` selects item `index` of a category whose value is an array. The
/// indexer walks such a category with `Object.keys`, which lists an array's indices,
/// so its items are fields named `"0"`, `"1"`, … (`tags.0` selects the first).
fn allows_index(filter: &FieldFilter, category: &str, index: usize) -> bool {
    filter.is_all() || filter.allows(category, &index.to_string())
}

/// The references of `records` not yet in `memo`, each once, in document order.
pub(crate) fn new_references<'r>(
    records: impl IntoIterator<Item = &'r Value>,
    filter: &FieldFilter,
    memo: &Memo,
) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for record in records {
        for_each_reference(record, filter, |did| {
            if !memo.contains_key(did) && seen.insert(did) {
                out.push(did.to_owned());
            }
        });
    }
    out
}

/// The DID a record is known by (`oip.did`, else `oip.didTx`), as the indexer
/// identifies records on a path.
fn identity(record: &Value) -> Option<&str> {
    let oip = record.get("oip")?;
    [oip.get("did"), oip.get("didTx")]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|s| !s.is_empty())
}

/// The indexer's stand-in for a record already on the path.
fn circular_stub(record: &Value) -> Value {
    let mut stub = Map::new();
    if let Some(oip) = record.get("oip") {
        stub.insert("oip".into(), oip.clone());
    }
    let basic = record
        .pointer("/data/basic")
        .filter(|b| is_truthy(b))
        .cloned()
        .unwrap_or_else(|| json!({}));
    stub.insert("data".into(), json!({ "basic": basic }));
    stub.insert("_circular".into(), Value::Bool(true));
    Value::Object(stub)
}

/// JavaScript truthiness, because the indexer writes `name || did` and `basic || {}`.
fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Builds resolved records from a filled memo.
pub(crate) struct Builder<'m> {
    memo: &'m Memo,
    filter: &'m FieldFilter,
    names_only: bool,
    /// Bytes of memory (as [`memory`](super::memory) counts them) that copies may
    /// still add to the output.
    output_left: u64,
    /// Set when a replacement was refused for lack of output budget; from then on
    /// every remaining reference stays a DID, so the cut is easy to describe.
    output_limit_reached: bool,
    /// Whether the request's depth was capped: a record inserted at the last level
    /// with references of its own was then cut by the depth bound.
    capped: bool,
    /// What building the current root record did.
    record: RecordStats,
    /// DIDs of the records on the current path (the root's, then each expanded
    /// record's identity and the reference that reached it).
    path: Vec<String>,
}

impl<'m> Builder<'m> {
    /// A builder over `memo`, allowed to add `output_left` bytes of memory to the
    /// output (every copy, name and stub counted as it is made); `capped` says
    /// whether the depth it is given was cut by `--resolve-max-depth`.
    pub(crate) fn new(
        memo: &'m Memo,
        filter: &'m FieldFilter,
        names_only: bool,
        output_left: u64,
        capped: bool,
    ) -> Self {
        Builder {
            memo,
            filter,
            names_only,
            output_left,
            output_limit_reached: false,
            capped,
            record: RecordStats::default(),
            path: Vec::new(),
        }
    }

    /// True once some reference stayed a DID for lack of output budget.
    pub(crate) fn output_limit_reached(&self) -> bool {
        self.output_limit_reached
    }

    /// Resolves one input record `depth` levels deep, with what that did. The input
    /// is the caller's own value, so it is changed in place; everything inserted into
    /// it is a copy.
    pub(crate) fn root(&mut self, mut record: Value, depth: u32) -> (Value, RecordStats) {
        self.record = RecordStats::default();
        if depth == 0 {
            self.note_depth_cut(&record);
            return (record, std::mem::take(&mut self.record));
        }
        let pushed = self.push(identity(&record).map(str::to_owned), None);
        self.replace_references(&mut record, depth);
        self.path.truncate(self.path.len() - pushed);
        (record, std::mem::take(&mut self.record))
    }

    /// Replaces the references of `record`, which has `remaining` levels left (1 or
    /// more). With `names_only` and one level left, the references become names, and
    /// then a recipe's ingredient names are merged with their comments (see `recipe`),
    /// as the indexer does at that level.
    fn replace_references(&mut self, record: &mut Value, remaining: u32) {
        let Some(Value::Object(data)) = record.get_mut("data") else {
            return;
        };
        for (category, properties) in data.iter_mut() {
            match properties {
                Value::Object(properties) => {
                    for (key, value) in properties.iter_mut() {
                        if self.filter.allows(category, key) {
                            self.replace_in(value, remaining);
                        }
                    }
                }
                Value::Array(items) => {
                    for (index, value) in items.iter_mut().enumerate() {
                        if allows_index(self.filter, category, index) {
                            self.replace_in(value, remaining);
                        }
                    }
                }
                _ => {}
            }
        }
        if self.names_only && remaining == 1 {
            merge_ingredient_comments(record);
        }
    }

    /// Replaces the reference a field's `value` is, or the references in it when it is
    /// an array; anything else is left as it is.
    fn replace_in(&mut self, value: &mut Value, remaining: u32) {
        match value {
            Value::String(did) if is_reference(did) => {
                if let Some(resolved) = self.replacement(did, remaining) {
                    *value = resolved;
                }
            }
            Value::Array(items) => {
                for item in items.iter_mut() {
                    let resolved = match item {
                        Value::String(did) if is_reference(did) => self.replacement(did, remaining),
                        _ => None,
                    };
                    if let Some(resolved) = resolved {
                        *item = resolved;
                    }
                }
            }
            _ => {}
        }
    }

    /// What replaces the reference `did` in a record with `remaining` levels left;
    /// `None` keeps the DID.
    fn replacement(&mut self, did: &str, remaining: u32) -> Option<Value> {
        let memo = self.memo;
        let found = match memo.get(did) {
            Some(Lookup::Found(found)) => found,
            Some(Lookup::Unresolved(why)) => {
                self.stays_a_did(Some(*why));
                return None;
            }
            None => {
                self.stays_a_did(None);
                return None;
            }
        };
        if self.output_limit_reached {
            self.record.unresolved += 1;
            self.record.hit(Bound::Output);
            return None;
        }
        let target = &*found.record;
        if self.names_only && remaining == 1 {
            self.note_depth_cut(target);
            let Some(name) = target
                .pointer("/data/basic/name")
                .filter(|n| is_truthy(n))
                .cloned()
            else {
                // The indexer's rule: no name, the DID stays.
                self.stays_a_did(None);
                return None;
            };
            return self
                .charge(heap_bytes(&name, Sizing::AsHeld))
                .then_some(name);
        }
        let next = remaining - 1;
        let expandable = next > 0 && matches!(target.get("data"), Some(Value::Object(_)));
        if expandable && self.on_path(did, target) {
            let stub = circular_stub(target);
            return self
                .charge(heap_bytes(&stub, Sizing::AsHeld))
                .then_some(stub);
        }
        if !self.charge(found.copy_bytes) {
            return None;
        }
        if next == 0 {
            self.note_depth_cut(target);
        }
        let mut copy = target.clone();
        if expandable {
            let pushed = self.push(identity(target).map(str::to_owned), Some(did));
            self.replace_references(&mut copy, next);
            self.path.truncate(self.path.len() - pushed);
        }
        Some(copy)
    }

    fn on_path(&self, did: &str, target: &Value) -> bool {
        let id = identity(target);
        self.path.iter().any(|p| p == did || Some(p.as_str()) == id)
    }

    /// Puts a record's identity (and the reference that reached it, which differs for
    /// records without an `oip.did`) on the path; returns how many entries it pushed.
    fn push(&mut self, identity: Option<String>, reference: Option<&str>) -> usize {
        let before = self.path.len();
        if let Some(reference) = reference
            && identity.as_deref() != Some(reference)
        {
            self.path.push(reference.to_owned());
        }
        if let Some(identity) = identity {
            self.path.push(identity);
        }
        self.path.len() - before
    }

    /// Pays `bytes` out of the output budget for one replacement; when it cannot,
    /// the reference stays a DID for that reason.
    fn charge(&mut self, bytes: u64) -> bool {
        if bytes > self.output_left {
            self.output_limit_reached = true;
            self.record.unresolved += 1;
            self.record.hit(Bound::Output);
            return false;
        }
        self.output_left -= bytes;
        self.record.output_bytes += bytes;
        self.record.resolved += 1;
        true
    }

    /// Counts a reference of the current record that stays a DID, and why.
    fn stays_a_did(&mut self, why: Option<Unresolved>) {
        let record = &mut self.record;
        record.unresolved += 1;
        match why {
            Some(Unresolved::NotFound) => record.not_found += 1,
            Some(Unresolved::Failed) => record.source_errors += 1,
            Some(Unresolved::NoSource) => record.unresolved_no_source += 1,
            Some(Unresolved::Budget) => record.hit(Bound::Budget),
            Some(Unresolved::Timeout) => record.hit(Bound::Timeout),
            None => {}
        }
    }

    /// `record` goes into the output with no levels left: if the depth was capped and
    /// it has references a deeper resolution would have replaced, the depth bound cut
    /// the current record short.
    fn note_depth_cut(&mut self, record: &Value) {
        if !self.capped || self.record.bounds_hit.contains(&Bound::Depth) {
            return;
        }
        let mut any = false;
        for_each_reference(record, self.filter, |_| any = true);
        if any {
            self.record.hit(Bound::Depth);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(did: &str, name: Option<&str>, refs: Value) -> Value {
        let mut basic = json!({});
        if let Some(name) = name {
            basic["name"] = json!(name);
        }
        json!({"oip": {"did": did}, "data": {"basic": basic, "links": refs}})
    }

    fn memo_of(records: &[Value]) -> Memo {
        records
            .iter()
            .map(|r| {
                (
                    identity(r).unwrap().to_owned(),
                    Lookup::Found(FoundRecord::new(r.clone())),
                )
            })
            .collect()
    }

    #[test]
    fn references_are_found_in_document_order_and_filtered() {
        let r = json!({"data": {
            "basic": {"name": "did:not-a-ref?", "avatar": "did:x:avatar", "n": 3},
            "workout": {"exercise": ["did:x:1", 7, "plain", "did:x:2"], "notes": {"k": "did:x:deep"}},
            "weird": "did:x:category-not-object",
            "tags": ["did:x:t0", "no", ["did:x:t2"], {"k": "did:x:nested"}]
        }});
        let mut all = Vec::new();
        for_each_reference(&r, &FieldFilter::default(), |d| all.push(d));
        assert_eq!(
            all,
            [
                "did:not-a-ref?",
                "did:x:avatar",
                "did:x:1",
                "did:x:2",
                "did:x:t0",
                "did:x:t2"
            ]
        );
        let mut tagged = Vec::new();
        for_each_reference(&r, &FieldFilter::parse("tags.2"), |d| tagged.push(d));
        assert_eq!(tagged, ["did:x:t2"]);
        let mut some = Vec::new();
        for_each_reference(&r, &FieldFilter::parse("workout.exercise"), |d| {
            some.push(d)
        });
        assert_eq!(some, ["did:x:1", "did:x:2"]);
        let memo: Memo = [(
            "did:x:1".to_owned(),
            Lookup::Unresolved(Unresolved::NotFound),
        )]
        .into();
        assert_eq!(
            new_references([&r, &r], &FieldFilter::default(), &memo),
            [
                "did:not-a-ref?",
                "did:x:avatar",
                "did:x:2",
                "did:x:t0",
                "did:x:t2"
            ]
        );
    }

    #[test]
    fn names_only_uses_the_name_at_the_last_level_and_keeps_the_did_otherwise() {
        let a = rec("did:a", Some("A"), json!({"b": "did:b"}));
        let b = rec(
            "did:b",
            Some("B"),
            json!({"c": "did:c", "n": "did:noname", "e": "did:empty"}),
        );
        let c = rec("did:c", Some("C"), json!({}));
        let noname = rec("did:noname", None, json!({}));
        let empty = rec("did:empty", Some(""), json!({}));
        let memo = memo_of(&[a.clone(), b, c, noname, empty]);
        let filter = FieldFilter::default();
        let mut builder = Builder::new(&memo, &filter, true, u64::MAX, false);
        let (out, _) = builder.root(a.clone(), 1);
        assert_eq!(out["data"]["links"]["b"], "B");
        let (out, stats) = builder.root(a, 2);
        assert_eq!((stats.resolved, stats.unresolved), (2, 2), "{stats:?}");
        assert!(stats.bounds_hit.is_empty());
        assert_eq!(out["data"]["links"]["b"]["data"]["basic"]["name"], "B");
        assert_eq!(
            out["data"]["links"]["b"]["data"]["links"],
            json!({"c": "C", "n": "did:noname", "e": "did:empty"})
        );
    }

    #[test]
    fn the_output_budget_stops_copying_and_says_so() {
        let a = rec("did:a", None, json!({"x": ["did:b", "did:c"]}));
        let b = rec("did:b", None, json!({}));
        let c = rec("did:c", None, json!({}));
        let memo = memo_of(&[a.clone(), b.clone(), c]);
        let filter = FieldFilter::default();
        let one = heap_bytes(&b, Sizing::AsCloned);
        let mut builder = Builder::new(&memo, &filter, false, one + one / 2, false);
        let (out, stats) = builder.root(a.clone(), 1);
        assert_eq!(out["data"]["links"]["x"][0], b);
        assert_eq!(out["data"]["links"]["x"][1], "did:c");
        assert!(builder.output_limit_reached());
        assert_eq!((stats.resolved, stats.unresolved), (1, 1));
        assert_eq!(stats.output_bytes, one);
        assert_eq!(stats.bounds_hit, [Bound::Output]);
        // The next record of the batch is cut by the same spent budget, and says so.
        let (_, stats) = builder.root(a, 1);
        assert_eq!((stats.resolved, stats.unresolved), (0, 2));
        assert_eq!(stats.bounds_hit, [Bound::Output]);
    }

    #[test]
    fn each_record_says_why_its_references_stayed_dids() {
        let a = rec(
            "did:a",
            None,
            json!({"x": ["did:b", "did:gone", "did:err", "did:nosrc", "did:late", "did:spent"]}),
        );
        let plain = rec("did:p", None, json!({"only": "did:gone"}));
        let b = rec("did:b", None, json!({"deeper": "did:c"}));
        let mut memo = memo_of(std::slice::from_ref(&b));
        for (did, why) in [
            ("did:gone", Unresolved::NotFound),
            ("did:err", Unresolved::Failed),
            ("did:nosrc", Unresolved::NoSource),
            ("did:late", Unresolved::Timeout),
            ("did:spent", Unresolved::Budget),
        ] {
            memo.insert(did.to_owned(), Lookup::Unresolved(why));
        }
        let filter = FieldFilter::default();
        // Depth capped at 1: `b` goes in as a leaf with a reference of its own.
        let mut builder = Builder::new(&memo, &filter, false, u64::MAX, true);
        let (_, stats) = builder.root(a.clone(), 1);
        assert_eq!(stats.resolved, 1);
        assert_eq!(stats.unresolved, 5);
        assert_eq!(
            (
                stats.not_found,
                stats.source_errors,
                stats.unresolved_no_source
            ),
            (1, 1, 1)
        );
        assert_eq!(
            stats.bounds_hit,
            [Bound::Depth, Bound::Budget, Bound::Timeout]
        );
        // A record of the same batch that met none of them says so.
        let (_, stats) = builder.root(plain, 1);
        assert_eq!(
            (stats.resolved, stats.unresolved, stats.not_found),
            (0, 1, 1)
        );
        assert!(stats.bounds_hit.is_empty());
        // Not capped: the same leaf is no depth cut.
        let mut builder = Builder::new(&memo, &filter, false, u64::MAX, false);
        assert_eq!(
            builder.root(a, 1).1.bounds_hit,
            [Bound::Budget, Bound::Timeout]
        );
    }

    #[test]
    fn stubs_keep_oip_and_basic_only() {
        let r = json!({"oip": {"did": "did:a", "didTx": "did:t"}, "data": {"basic": {"name": "A"}, "x": {"y": 1}}});
        assert_eq!(
            circular_stub(&r),
            json!({"oip": {"did": "did:a", "didTx": "did:t"}, "data": {"basic": {"name": "A"}}, "_circular": true})
        );
        assert_eq!(
            circular_stub(&json!({"oip": {"didTx": "did:t"}, "data": {}})),
            json!({"oip": {"didTx": "did:t"}, "data": {"basic": {}}, "_circular": true})
        );
    }
}
