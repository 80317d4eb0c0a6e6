//! The resolver's rules against an in-memory source: each test compares whole results
//! with expected JSON and checks what was looked up.

use std::sync::Arc;

use serde_json::{Value, json};

use super::memory_source::MemorySource;
use super::stats::Bound;
use super::*;
use crate::config::{Config, ResolverSettings};

fn settings() -> ResolverSettings {
    Config::for_media_dir("/nonexistent").resolver
}

/// A record `did` named `name` whose `data.links` is `links`.
fn rec(did: &str, name: &str, links: Value) -> Value {
    json!({"oip": {"did": did}, "data": {"basic": {"name": name}, "links": links}})
}

fn stub(did: &str, name: &str) -> Value {
    json!({"oip": {"did": did}, "data": {"basic": {"name": name}}, "_circular": true})
}

/// `record` with `data.links.<key>` replaced by `value`.
fn with(mut record: Value, key: &str, value: Value) -> Value {
    record["data"]["links"][key] = value;
    record
}

fn resolver(records: Vec<Value>) -> (Resolver, Arc<MemorySource>) {
    resolver_with(settings(), records)
}

fn resolver_with(settings: ResolverSettings, records: Vec<Value>) -> (Resolver, Arc<MemorySource>) {
    let source = Arc::new(MemorySource::new(records));
    let sources = Sources {
        gun: Some(source.clone()),
        indexed: Some(source.clone()),
    };
    (Resolver::with_sources(&settings, sources), source)
}

fn depth(n: u32) -> ResolveOptions {
    ResolveOptions {
        depth: n,
        ..ResolveOptions::default()
    }
}

#[tokio::test]
async fn depth_zero_returns_records_unchanged_without_lookups() {
    let a = rec("did:a", "A", json!({"b": "did:b"}));
    let (resolver, source) = resolver(vec![rec("did:b", "B", json!({}))]);
    let out = resolver.resolve(vec![a.clone()], &depth(0)).await;
    assert_eq!(out.records, vec![a]);
    assert_eq!(out.stats.lookups, 0);
    assert_eq!(source.asked_total(), 0);
}

#[tokio::test]
async fn chains_deeper_than_the_cap_stop_at_the_cap() {
    let ids = ["a", "b", "c", "d", "e", "f", "g"];
    let chain: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let next = ids
                .get(i + 1)
                .map_or(json!(null), |n| json!(format!("did:{n}")));
            rec(
                &format!("did:{id}"),
                &id.to_uppercase(),
                json!({"next": next}),
            )
        })
        .collect();
    let (resolver, source) = resolver(chain.clone());
    let out = resolver.resolve(vec![chain[0].clone()], &depth(10)).await;
    // Capped at 4: b, c, d expanded; e inserted as stored (its `next` still a DID).
    let expected = with(
        chain[0].clone(),
        "next",
        with(
            chain[1].clone(),
            "next",
            with(
                chain[2].clone(),
                "next",
                with(chain[3].clone(), "next", chain[4].clone()),
            ),
        ),
    );
    assert_eq!(out.records[0], expected);
    assert!(out.stats.capped);
    assert_eq!((out.stats.requested_depth, out.stats.depth), (10, 4));
    assert_eq!(out.stats.lookups, 4);
    assert_eq!(source.asked("did:f"), 0, "looked past the cap");
    assert_eq!(resolver.counters().depth_caps.get(), 1);

    let out = resolver.resolve(vec![chain[0].clone()], &depth(2)).await;
    assert!(!out.stats.capped);
    assert_eq!(
        out.records[0],
        with(
            chain[0].clone(),
            "next",
            with(chain[1].clone(), "next", chain[2].clone())
        )
    );
}

#[tokio::test]
async fn a_self_reference_becomes_a_stub_once_it_would_be_expanded() {
    let a = rec("did:a", "A", json!({"me": "did:a"}));
    let (resolver, _) = resolver(vec![a.clone()]);
    let out = resolver.resolve(vec![a.clone()], &depth(3)).await;
    assert_eq!(out.records[0], with(a.clone(), "me", stub("did:a", "A")));
    // At the last level the record is inserted as stored, as in the indexer.
    let out = resolver.resolve(vec![a.clone()], &depth(1)).await;
    assert_eq!(out.records[0], with(a.clone(), "me", a.clone()));
}

#[tokio::test]
async fn two_cycles_and_long_cycles_end_in_stubs() {
    let a = rec("did:a", "A", json!({"to": "did:b"}));
    let b = rec("did:b", "B", json!({"to": "did:a"}));
    let (resolver, source) = resolver(vec![a.clone(), b.clone()]);
    let out = resolver.resolve(vec![a.clone()], &depth(4)).await;
    assert_eq!(
        out.records[0],
        with(a.clone(), "to", with(b.clone(), "to", stub("did:a", "A")))
    );
    assert_eq!(source.asked("did:a"), 1);
    assert_eq!(source.asked("did:b"), 1);

    let x = rec("did:x", "X", json!({"to": "did:y"}));
    let y = rec("did:y", "Y", json!({"to": "did:z"}));
    let z = rec("did:z", "Z", json!({"to": "did:x"}));
    let (resolver, _) = self::resolver(vec![x.clone(), y.clone(), z.clone()]);
    let out = resolver.resolve(vec![x.clone()], &depth(4)).await;
    assert_eq!(
        out.records[0],
        with(
            x.clone(),
            "to",
            with(y.clone(), "to", with(z.clone(), "to", stub("did:x", "X")))
        )
    );
    // Entering the cycle from elsewhere: the stub is for the record met again.
    let w = rec("did:w", "W", json!({"to": "did:y"}));
    let mut deeper = settings();
    deeper.resolve_max_depth = 5;
    let (resolver, _) = resolver_with(deeper, vec![x.clone(), y.clone(), z.clone()]);
    let out = resolver.resolve(vec![w.clone()], &depth(4)).await;
    // At depth 4, y is met again at the last level: inserted as stored.
    assert_eq!(
        out.records[0],
        with(
            w.clone(),
            "to",
            with(
                y.clone(),
                "to",
                with(z.clone(), "to", with(x.clone(), "to", y.clone()))
            )
        )
    );
    let out = resolver.resolve(vec![w.clone()], &depth(5)).await;
    assert_eq!(
        out.records[0],
        with(
            w,
            "to",
            with(
                y.clone(),
                "to",
                with(z.clone(), "to", with(x.clone(), "to", stub("did:y", "Y")))
            )
        )
    );
}

#[tokio::test]
async fn diamonds_cost_one_lookup_per_did() {
    let a = rec("did:a", "A", json!({"kids": ["did:b", "did:c"]}));
    let b = rec("did:b", "B", json!({"kid": "did:d"}));
    let c = rec("did:c", "C", json!({"kid": "did:d"}));
    let d = rec("did:d", "D", json!({}));
    let (resolver, source) = resolver(vec![b.clone(), c.clone(), d.clone()]);
    let out = resolver
        .resolve(vec![a.clone(), a.clone()], &depth(3))
        .await;
    let expected = with(
        a,
        "kids",
        json!([with(b, "kid", d.clone()), with(c, "kid", d)]),
    );
    assert_eq!(out.records, vec![expected.clone(), expected]);
    assert_eq!(out.stats.lookups, 3);
    for did in ["did:b", "did:c", "did:d"] {
        assert_eq!(source.asked(did), 1, "{did}");
    }
}

#[tokio::test]
async fn missing_references_stay_dids_also_inside_arrays() {
    let a = rec(
        "did:a",
        "A",
        json!({"one": "did:gone", "many": ["did:b", "did:gone2", 7, "text", "did:c"]}),
    );
    let b = rec("did:b", "B", json!({}));
    let c = rec("did:c", "C", json!({}));
    let (resolver, _) = resolver(vec![b.clone(), c.clone()]);
    let out = resolver.resolve(vec![a.clone()], &depth(2)).await;
    assert_eq!(
        out.records[0],
        with(a, "many", json!([b, "did:gone2", 7, "text", c]))
    );
    assert_eq!(out.stats.not_found, 2);
    assert_eq!(out.stats.lookups, 4);
}

#[tokio::test]
async fn names_only_applies_at_the_last_level() {
    let w = rec(
        "did:w",
        "Workout",
        json!({"ex": ["did:e1", "did:e2", "did:gone"]}),
    );
    let e1 = rec("did:e1", "Squat", json!({"eq": "did:q"}));
    let e2 = json!({"oip": {"did": "did:e2"}, "data": {"basic": {}, "links": {"eq": "did:q"}}});
    let q = rec("did:q", "Barbell", json!({}));
    let (resolver, _) = resolver(vec![e1.clone(), e2.clone(), q]);
    let names = |n| ResolveOptions {
        depth: n,
        names_only: true,
        ..ResolveOptions::default()
    };
    let out = resolver.resolve(vec![w.clone()], &names(1)).await;
    assert_eq!(
        out.records[0],
        with(w.clone(), "ex", json!(["Squat", "did:e2", "did:gone"]))
    );
    let out = resolver.resolve(vec![w.clone()], &names(2)).await;
    assert_eq!(
        out.records[0],
        with(
            w,
            "ex",
            json!([
                with(e1, "eq", json!("Barbell")),
                with(e2, "eq", json!("Barbell")),
                "did:gone"
            ])
        )
    );
}

#[tokio::test]
async fn field_filters_limit_resolution_at_every_level() {
    let w = json!({"oip": {"did": "did:w"}, "data": {
        "basic": {"name": "W", "avatar": "did:img"},
        "workout": {"exercise": ["did:e"], "coach": "did:coach"}
    }});
    let e = json!({"oip": {"did": "did:e"}, "data": {
        "basic": {"name": "E"}, "exercise": {"equipment": "did:eq"}
    }});
    let others = ["did:img", "did:coach", "did:eq"].map(|d| rec(d, d, json!({})));
    let mut all = vec![e.clone()];
    all.extend(others.iter().cloned());
    let (resolver, source) = resolver(all);
    let options = ResolveOptions {
        depth: 2,
        fields: FieldFilter::parse("data.workout.exercise"),
        ..ResolveOptions::default()
    };
    let out = resolver.resolve(vec![w.clone()], &options).await;
    let mut expected = w.clone();
    expected["data"]["workout"]["exercise"] = json!([e.clone()]);
    assert_eq!(out.records[0], expected);
    assert_eq!(
        source.asked_total(),
        1,
        "only the selected field was looked up"
    );

    // A category target covers its keys; `exercise` names the category.
    let options = ResolveOptions {
        depth: 2,
        fields: FieldFilter::parse("workout,exercise"),
        ..ResolveOptions::default()
    };
    let out = resolver.resolve(vec![w.clone()], &options).await;
    let mut expected = w;
    let mut e_resolved = e;
    e_resolved["data"]["exercise"]["equipment"] = others[2].clone();
    expected["data"]["workout"]["exercise"] = json!([e_resolved]);
    expected["data"]["workout"]["coach"] = others[1].clone();
    assert_eq!(out.records[0], expected);
}

#[tokio::test]
async fn a_wide_fan_out_spends_the_budget_and_says_so() {
    let budget = settings().resolve_budget;
    let wide = budget * 4;
    let dids: Vec<String> = (0..wide).map(|i| format!("did:arweave:{i:05}")).collect();
    let targets: Vec<Value> = (0..wide)
        .map(|i| rec(&dids[i], &format!("n{i}"), json!({})))
        .collect();
    let root = rec("did:root", "Root", json!({"all": dids}));
    let (resolver, source) = resolver(targets.clone());
    let out = resolver.resolve(vec![root], &depth(2)).await;
    let all = out.records[0]["data"]["links"]["all"].as_array().unwrap();
    assert_eq!(all.len(), wide);
    assert!(
        all[..budget] == targets[..budget],
        "the first {budget} are resolved"
    );
    assert_eq!(all[budget], json!(dids[budget]));
    assert!(all[budget..].iter().all(Value::is_string));
    assert!(out.stats.budget_exhausted);
    assert_eq!(out.stats.lookups, budget as u64);
    assert_eq!(source.asked_total(), budget as u64);
    assert_eq!(resolver.counters().budget_exhaustions.get(), 1);
    assert_eq!(out.record_stats.len(), 1);
    assert_eq!(out.record_stats[0].bounds_hit, [Bound::Budget]);
    assert_eq!(out.record_stats[0].resolved, budget as u64);
    assert_eq!(out.record_stats[0].unresolved, (wide - budget) as u64);
}

#[tokio::test]
async fn the_cache_answers_repeat_lookups_including_misses() {
    let a = rec("did:a", "A", json!({"b": "did:b", "gone": "did:gone"}));
    let b = rec("did:b", "B", json!({}));
    let (resolver, source) = resolver(vec![b.clone()]);
    let first = resolver.resolve(vec![a.clone()], &depth(1)).await;
    assert_eq!((first.stats.cache_hits, first.stats.misses), (0, 2));
    let second = resolver.resolve(vec![a.clone()], &depth(1)).await;
    assert_eq!((second.stats.cache_hits, second.stats.misses), (2, 0));
    assert_eq!(second.stats.not_found, 1);
    assert_eq!(first.records, second.records);
    assert_eq!(source.asked("did:b"), 1);
    assert_eq!(source.asked("did:gone"), 1);
    resolver.invalidate("did:b").await;
    resolver.resolve(vec![a], &depth(1)).await;
    assert_eq!(source.asked("did:b"), 2);
}

#[tokio::test]
async fn concurrent_requests_never_see_each_others_resolution() {
    let a = rec("did:a", "A", json!({"b": "did:b"}));
    let b = rec("did:b", "B", json!({"c": "did:c"}));
    let c = rec("did:c", "C", json!({}));
    let (resolver, _) = resolver(vec![b.clone(), c.clone()]);
    let names = ResolveOptions {
        depth: 2,
        names_only: true,
        ..ResolveOptions::default()
    };
    let (two, one) = (depth(2), depth(1));
    for _ in 0..20 {
        let (deep, shallow, named) = tokio::join!(
            resolver.resolve(vec![a.clone()], &two),
            resolver.resolve(vec![a.clone()], &one),
            resolver.resolve(vec![a.clone()], &names),
        );
        assert_eq!(
            deep.records[0],
            with(a.clone(), "b", with(b.clone(), "c", c.clone()))
        );
        assert_eq!(shallow.records[0], with(a.clone(), "b", b.clone()));
        assert_eq!(
            named.records[0],
            with(a.clone(), "b", with(b.clone(), "c", json!("C")))
        );
    }
    // The cached record is the one the source gave, untouched.
    match resolver.cache().get("did:b").await {
        Some(CachedRecord::Found(found)) => assert_eq!(*found.record, b),
        other => panic!("did:b not cached: {other:?}"),
    }
}

#[tokio::test]
async fn references_without_a_source_stay_dids_and_are_counted() {
    let a = rec(
        "did:a",
        "A",
        json!({"g": "did:gun:abc:1", "e": "did:arweave:x"}),
    );
    let resolver = Resolver::with_sources(&settings(), Sources::default());
    let out = resolver.resolve(vec![a.clone()], &depth(2)).await;
    assert_eq!(out.records[0], a);
    assert_eq!(out.stats.unresolved_no_source, 2);
    assert_eq!(out.stats.lookups, 2);
}

#[tokio::test]
async fn the_output_limit_bounds_what_a_request_builds() {
    // 50 records, each referencing all 50: at depth 4 the tree would be 50^4 copies.
    let dids: Vec<String> = (0..50).map(|i| format!("did:n{i}")).collect();
    let nodes: Vec<Value> = dids
        .iter()
        .map(|d| rec(d, d, json!({"all": dids})))
        .collect();
    let mut settings = settings();
    settings.resolve_max_output_bytes = 1 << 20;
    let (resolver, _) = resolver_with(settings, nodes.clone());
    let out = resolver.resolve(vec![nodes[0].clone()], &depth(4)).await;
    assert!(out.stats.output_limit_reached);
    let size = serde_json::to_vec(&out.records).unwrap().len();
    assert!(size < 2 << 20, "output {size} bytes");
    assert_eq!(out.stats.lookups, 50);
}

#[tokio::test]
async fn records_without_data_pass_through() {
    let odd = json!({"oip": {"did": "did:odd"}, "data": "not an object"});
    let (resolver, _) = resolver(vec![]);
    let out = resolver
        .resolve(vec![odd.clone(), json!(5)], &depth(2))
        .await;
    assert_eq!(out.records, vec![odd, json!(5)]);
}

// ------------------------------------------------------- parity with the indexer (issue 13)

#[tokio::test]
async fn a_category_that_is_an_array_has_its_references_resolved() {
    // The indexer walks a category with `Object.keys`, which lists an array's indices:
    // each item is a field named by its index.
    let root = json!({"oip": {"did": "did:root"}, "data": {
        "basic": {"name": "Root"},
        "tags": ["did:b", "x", ["did:c", 5], {"k": "did:d"}, "did:gone"]
    }});
    let b = rec("did:b", "B", json!({}));
    let c = rec("did:c", "C", json!({}));
    let d = rec("did:d", "D", json!({}));
    let (resolver, source) = resolver(vec![b.clone(), c.clone(), d]);
    let out = resolver.resolve(vec![root.clone()], &depth(1)).await;
    assert_eq!(
        out.records[0],
        json!({"oip": {"did": "did:root"}, "data": {
            "basic": {"name": "Root"},
            "tags": [b.clone(), "x", [c, 5], {"k": "did:d"}, "did:gone"]
        }})
    );
    assert_eq!(out.stats.lookups, 3, "b, c and gone; not d (nested deeper)");
    assert_eq!(source.asked("did:d"), 0);

    // Names only, and `tags.0` selecting the first item alone.
    let options = ResolveOptions {
        depth: 1,
        names_only: true,
        fields: FieldFilter::parse("tags.0"),
    };
    let out = resolver.resolve(vec![root], &options).await;
    assert_eq!(
        out.records[0],
        json!({"oip": {"did": "did:root"}, "data": {
            "basic": {"name": "Root"},
            "tags": ["B", "x", ["did:c", 5], {"k": "did:d"}, "did:gone"]
        }})
    );
}

#[tokio::test]
async fn array_categories_resolve_at_deeper_levels_and_cycles_still_stub() {
    let a = json!({"oip": {"did": "did:a"}, "data": {"basic": {"name": "A"}, "list": ["did:b"]}});
    let b = json!({"oip": {"did": "did:b"}, "data": {"basic": {"name": "B"}, "list": ["did:a"]}});
    let (resolver, _) = resolver(vec![a.clone(), b.clone()]);
    let out = resolver.resolve(vec![a.clone()], &depth(3)).await;
    assert_eq!(
        out.records[0],
        json!({"oip": {"did": "did:a"}, "data": {"basic": {"name": "A"}, "list": [
            {"oip": {"did": "did:b"}, "data": {"basic": {"name": "B"}, "list": [stub("did:a", "A")]}}
        ]}})
    );
}

#[tokio::test]
async fn a_field_target_selects_keys_that_contain_dots_below_it() {
    let root = json!({"oip": {"did": "did:root"}, "data": {
        "basic": {"name": "Root"},
        "links": {"x": "did:x", "x.y": "did:xy", "x.y.z": "did:xyz", "xy": "did:no1"},
        "other": {"x.y": "did:no2"}
    }});
    let targets = ["did:x", "did:xy", "did:xyz", "did:no1", "did:no2"]
        .map(|d| rec(d, &d.to_uppercase(), json!({})));
    let (resolver, source) = resolver(targets.to_vec());
    let names = |fields: &str| ResolveOptions {
        depth: 1,
        names_only: true,
        fields: FieldFilter::parse(fields),
    };
    let out = resolver
        .resolve(vec![root.clone()], &names("links.x"))
        .await;
    assert_eq!(
        out.records[0],
        json!({"oip": {"did": "did:root"}, "data": {
            "basic": {"name": "Root"},
            "links": {"x": "DID:X", "x.y": "DID:XY", "x.y.z": "DID:XYZ", "xy": "did:no1"},
            "other": {"x.y": "did:no2"}
        }})
    );
    assert_eq!(source.asked("did:no1") + source.asked("did:no2"), 0);

    let out = resolver
        .resolve(vec![root.clone()], &names("data.links.x.y"))
        .await;
    assert_eq!(
        out.records[0]["data"]["links"],
        json!({"x": "did:x", "x.y": "DID:XY", "x.y.z": "DID:XYZ", "xy": "did:no1"})
    );
}

/// A recipe whose ingredients are references, with the indexer's comments.
fn recipe(did: &str, name: &str, ingredients: Value, comments: Value) -> Value {
    json!({"oip": {"did": did}, "data": {
        "basic": {"name": name},
        "recipe": {"ingredient": ingredients, "ingredient_comment": comments, "servings": 4}
    }})
}

fn ingredient_records() -> Vec<Value> {
    [
        ("did:garlic", "garlic"),
        ("did:oil", "olive oil"),
        ("did:salt", "salt"),
        ("did:pepper", "black pepper"),
        ("did:chicken", "chicken thighs"),
    ]
    .map(|(did, name)| rec(did, name, json!({})))
    .to_vec()
}

#[tokio::test]
async fn names_only_merges_a_recipes_ingredient_names_with_their_comments() {
    let dish = recipe(
        "did:dish",
        "Roast chicken",
        json!([
            "did:garlic",
            "did:oil",
            "did:salt",
            "did:pepper",
            "did:chicken",
            "did:gone",
            "water"
        ]),
        json!([
            "minced",
            "extra virgin, divided",
            "",
            "freshly ground",
            "boneless skinless",
            "chopped",
            "boiling"
        ]),
    );
    let (resolver, _) = resolver(ingredient_records());
    let names = ResolveOptions {
        depth: 1,
        names_only: true,
        ..ResolveOptions::default()
    };
    let out = resolver.resolve(vec![dish.clone()], &names).await;
    assert_eq!(
        out.records[0],
        recipe(
            "did:dish",
            "Roast chicken",
            json!([
                "garlic, minced",
                "extra virgin, olive oil, divided",
                "salt",
                "freshly ground black pepper",
                "boneless skinless chicken thighs",
                "did:gone, chopped",
                "water, boiling"
            ]),
            json!([
                "minced",
                "extra virgin, divided",
                "",
                "freshly ground",
                "boneless skinless",
                "chopped",
                "boiling"
            ]),
        )
    );

    // Without names-only, nothing is merged: the ingredients are records.
    let out = resolver.resolve(vec![dish.clone()], &depth(1)).await;
    let ingredients = out.records[0]["data"]["recipe"]["ingredient"]
        .as_array()
        .unwrap();
    assert_eq!(ingredients[0], ingredient_records()[0]);
    assert_eq!(ingredients[6], "water");

    // The indexer merges whatever the ingredient list holds at that level, whether
    // `resolveFieldName` selected it or not: unselected references stay DIDs, merged.
    let unselected = ResolveOptions {
        depth: 1,
        names_only: true,
        fields: FieldFilter::parse("basic.avatar"),
    };
    let out = resolver.resolve(vec![dish], &unselected).await;
    assert_eq!(
        out.records[0]["data"]["recipe"]["ingredient"],
        json!([
            "did:garlic, minced",
            "extra virgin, did:oil, divided",
            "did:salt",
            "freshly ground did:pepper",
            "boneless skinless did:chicken",
            "did:gone, chopped",
            "water, boiling"
        ])
    );
}

#[tokio::test]
async fn recipes_are_merged_only_at_the_last_level_and_never_in_the_cache() {
    // A meal plan (itself carrying a recipe section) → recipe → ingredients.
    let soup = recipe(
        "did:soup",
        "Soup",
        json!(["did:garlic", "did:salt"]),
        json!(["crushed", ""]),
    );
    let plan = json!({"oip": {"did": "did:plan"}, "data": {
        "basic": {"name": "Plan"},
        "plan": {"meals": ["did:soup"]},
        "recipe": {"ingredient": ["did:garlic"], "ingredient_comment": ["sliced"]}
    }});
    let mut records = ingredient_records();
    records.push(soup.clone());
    let (resolver, _) = resolver(records);
    let names = ResolveOptions {
        depth: 2,
        names_only: true,
        ..ResolveOptions::default()
    };
    let out = resolver.resolve(vec![plan], &names).await;
    // The plan has two levels left: its garlic becomes a record, unmerged; the soup
    // has one left: its ingredients become names, merged.
    assert_eq!(
        out.records[0],
        json!({"oip": {"did": "did:plan"}, "data": {
            "basic": {"name": "Plan"},
            "plan": {"meals": [recipe(
                "did:soup",
                "Soup",
                json!(["garlic, crushed", "salt"]),
                json!(["crushed", ""]),
            )]},
            "recipe": {"ingredient": [ingredient_records()[0]], "ingredient_comment": ["sliced"]}
        }})
    );
    // The copy was merged; the cached record is as the source gave it.
    match resolver.cache().get("did:soup").await {
        Some(CachedRecord::Found(found)) => assert_eq!(*found.record, soup),
        other => panic!("did:soup not cached: {other:?}"),
    }
}
