//! The resolver's library API against loopback stand-ins of its sources: results are
//! compared with expected JSON, and the stand-ins count (and check) what they were asked.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use oip_media::config::ResolverSettings;
use oip_media::gun::GunClient;
use oip_media::resolve::{FieldFilter, FoundRecord, RecordCache, ResolveOptions, Resolver};
use serde_json::{Value, json};
use support::elastic::{ElasticStandIn, Search};
use support::relay_stub::{RelayStub, Reply};
use support::{rec, stub, with};

fn settings() -> ResolverSettings {
    oip_media::Config::for_media_dir("/nonexistent").resolver
}

fn with_elastic(es: &ElasticStandIn) -> ResolverSettings {
    let mut settings = settings();
    settings.elasticsearch_host = Some(es.url().into());
    settings
}

fn depth(n: u32) -> ResolveOptions {
    ResolveOptions {
        depth: n,
        ..ResolveOptions::default()
    }
}

fn search(index: &str, dids: &[&str]) -> Search {
    Search {
        index: index.to_owned(),
        dids: dids.iter().map(|d| (*d).to_owned()).collect(),
    }
}

#[tokio::test]
async fn elasticsearch_gets_one_search_per_level_and_index() {
    // root → [a, b, gone]; a → c; b → c (a diamond); c → org (in `organizations`).
    let a = rec("did:arweave:a", "A", json!({"next": "did:arweave:c"}));
    let b = rec("did:arweave:b", "B", json!({"next": "did:arweave:c"}));
    let c = rec("did:arweave:c", "C", json!({"org": "did:arweave:org"}));
    let org = rec("did:arweave:org", "Org", json!({}));
    let es = ElasticStandIn::start(vec![a.clone(), b.clone(), c.clone()], vec![org.clone()]).await;
    let resolver = Resolver::new(&with_elastic(&es), None).unwrap();
    let root = rec(
        "did:arweave:root",
        "Root",
        json!({"kids": ["did:arweave:a", "did:arweave:b", "did:arweave:gone"]}),
    );

    let out = resolver.resolve(vec![root.clone()], &depth(3)).await;

    let c_resolved = with(c, "org", org);
    let expected = with(
        root,
        "kids",
        json!([
            with(a, "next", c_resolved.clone()),
            with(b, "next", c_resolved),
            "did:arweave:gone"
        ]),
    );
    assert_eq!(out.records, vec![expected]);
    assert_eq!(
        es.searches(),
        vec![
            search(
                "records",
                &["did:arweave:a", "did:arweave:b", "did:arweave:gone"]
            ),
            search("organizations", &["did:arweave:gone"]),
            search("records", &["did:arweave:c"]),
            search("records", &["did:arweave:org"]),
            search("organizations", &["did:arweave:org"]),
        ]
    );
    assert!(es.violations().is_empty(), "{:?}", es.violations());
    assert_eq!(out.stats.lookups, 5);
    assert_eq!(out.stats.not_found, 1);
    assert_eq!(out.stats.source_requests, 5);
}

#[tokio::test]
async fn references_by_did_tx_resolve_too() {
    let target = json!({"oip": {"did": "did:arweave:new", "didTx": "did:arweave:tx1"},
                        "data": {"basic": {"name": "T"}}});
    let es = ElasticStandIn::start(vec![target.clone()], vec![]).await;
    let resolver = Resolver::new(&with_elastic(&es), None).unwrap();
    let root = rec("did:arweave:r", "R", json!({"t": "did:arweave:tx1"}));
    let out = resolver.resolve(vec![root.clone()], &depth(1)).await;
    assert_eq!(out.records[0], with(root, "t", target));
}

#[tokio::test]
async fn without_elasticsearch_references_stay_dids_and_the_stats_say_so() {
    let resolver = Resolver::new(&settings(), None).unwrap();
    let root = rec(
        "did:arweave:r",
        "R",
        json!({"x": ["did:arweave:1", "did:arweave:2"]}),
    );
    let out = resolver.resolve(vec![root.clone()], &depth(2)).await;
    assert_eq!(out.records[0], root);
    assert_eq!(out.stats.unresolved_no_source, 2);
    assert_eq!(out.stats.source_requests, 0);
}

#[tokio::test]
async fn a_failing_elasticsearch_leaves_dids_and_is_asked_again_next_time() {
    let target = rec("did:arweave:t", "T", json!({}));
    let es = ElasticStandIn::start(vec![target.clone()], vec![]).await;
    let resolver = Resolver::new(&with_elastic(&es), None).unwrap();
    let root = rec("did:arweave:r", "R", json!({"t": "did:arweave:t"}));
    es.fail_with(503);
    let out = resolver.resolve(vec![root.clone()], &depth(1)).await;
    assert_eq!(out.records[0], root);
    assert_eq!(out.stats.source_errors, 1);
    assert_eq!(out.stats.not_found, 0);
    // The failure was not cached as "missing".
    es.fail_with(0);
    let out = resolver.resolve(vec![root.clone()], &depth(1)).await;
    assert_eq!(out.records[0], with(root, "t", target));
    assert_eq!(es.searches().len(), 2);
}

#[tokio::test]
async fn a_ten_thousand_wide_fan_out_spends_the_budget_in_one_search() {
    let dids: Vec<String> = (0..10_000).map(|i| format!("did:arweave:{i:05}")).collect();
    let targets: Vec<Value> = (0..10_000)
        .map(|i| rec(&dids[i], &format!("n{i}"), json!({})))
        .collect();
    let es = ElasticStandIn::start(targets.clone(), vec![]).await;
    // A budget of 1000 (a level of at most MAX_DIDS_PER_SEARCH DIDs: one search).
    let mut settings = with_elastic(&es);
    settings.resolve_budget = 1000;
    let resolver = Resolver::new(&settings, None).unwrap();
    let root = rec("did:arweave:root", "Root", json!({"all": dids}));
    let started = Instant::now();
    let out = resolver.resolve(vec![root], &depth(4)).await;
    let all = out.records[0]["data"]["links"]["all"].as_array().unwrap();
    assert!(
        all[..1000] == targets[..1000],
        "the first 1000 are resolved"
    );
    assert!(
        all[1000..].iter().zip(&dids[1000..]).all(|(v, d)| v == d),
        "the rest stay DIDs"
    );
    assert!(out.stats.budget_exhausted);
    assert_eq!(out.stats.lookups, 1000);
    let searches = es.searches();
    assert_eq!(searches.len(), 1, "one search for the level");
    assert_eq!(searches[0].dids, dids[..1000]);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_slow_elasticsearch_is_cut_off_by_the_resolution_timeout() {
    let target = rec("did:arweave:t", "T", json!({}));
    let es = ElasticStandIn::start(vec![target.clone()], vec![]).await;
    let mut settings = with_elastic(&es);
    settings.resolve_timeout = Duration::from_millis(300);
    let resolver = Resolver::new(&settings, None).unwrap();
    let root = rec("did:arweave:r", "R", json!({"t": "did:arweave:t"}));
    es.delay(Duration::from_secs(3));
    let started = Instant::now();
    let out = resolver.resolve(vec![root.clone()], &depth(2)).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.records[0], root);
    assert!(out.stats.timed_out);
    assert_eq!(resolver.counters().timeouts.get(), 1);
    // Not remembered: once Elasticsearch is quick again, the reference resolves.
    es.delay(Duration::ZERO);
    let out = resolver.resolve(vec![root.clone()], &depth(2)).await;
    assert!(!out.stats.timed_out);
    assert_eq!(out.records[0], with(root, "t", target));
}

#[tokio::test]
async fn names_only_and_field_filters_through_elasticsearch() {
    let w = json!({"oip": {"did": "did:arweave:w"}, "data": {
        "basic": {"name": "W", "avatar": "did:arweave:img"},
        "workout": {"exercise": ["did:arweave:e1", "did:arweave:e2"]}
    }});
    let e1 = json!({"oip": {"did": "did:arweave:e1"}, "data": {
        "basic": {"name": "Squat"}, "exercise": {"equipment": "did:arweave:bar"}
    }});
    let e2 = json!({"oip": {"did": "did:arweave:e2"}, "data": {
        "basic": {"name": "Lunge"}, "exercise": {"equipment": "did:arweave:none"}
    }});
    let bar = rec("did:arweave:bar", "Barbell", json!({}));
    let img = rec("did:arweave:img", "Image", json!({}));
    let es = ElasticStandIn::start(vec![e1.clone(), e2.clone(), bar, img], vec![]).await;
    let resolver = Resolver::new(&with_elastic(&es), None).unwrap();
    let options = ResolveOptions {
        depth: 2,
        names_only: true,
        fields: FieldFilter::parse("workout.exercise,exercise"),
    };
    let out = resolver.resolve(vec![w.clone()], &options).await;
    let mut expected = w;
    let mut e1_named = e1;
    e1_named["data"]["exercise"]["equipment"] = json!("Barbell");
    // e2's equipment is missing: the DID stays.
    expected["data"]["workout"]["exercise"] = json!([e1_named, e2]);
    assert_eq!(out.records[0], expected);
    let asked: Vec<String> = es.searches().into_iter().flat_map(|s| s.dids).collect();
    assert!(
        !asked.contains(&"did:arweave:img".to_owned()),
        "avatar was not selected"
    );
}

#[tokio::test]
async fn cycles_through_elasticsearch_end_in_stubs() {
    let a = rec(
        "did:arweave:a",
        "A",
        json!({"to": "did:arweave:b", "me": "did:arweave:a"}),
    );
    let b = rec("did:arweave:b", "B", json!({"to": "did:arweave:a"}));
    let es = ElasticStandIn::start(vec![a.clone(), b.clone()], vec![]).await;
    let resolver = Resolver::new(&with_elastic(&es), None).unwrap();
    let out = resolver.resolve(vec![a.clone()], &depth(3)).await;
    let expected = with(
        with(a.clone(), "to", with(b, "to", stub("did:arweave:a", "A"))),
        "me",
        stub("did:arweave:a", "A"),
    );
    assert_eq!(out.records[0], expected);
    assert_eq!(out.stats.lookups, 2);
}

#[tokio::test]
async fn the_record_cache_never_exceeds_its_entry_or_byte_bound() {
    let settings = settings();
    let cache = RecordCache::new(
        settings.record_cache_entries,
        settings.record_cache_bytes,
        settings.record_cache_ttl,
        settings.record_negative_ttl,
    );
    assert_eq!((cache.max_entries(), cache.max_bytes()), (7_500, 64 << 20));
    let check = |phase: &str| {
        let (count, bytes) = cache.measure();
        assert!(count <= 7_500, "{phase}: {count} entries");
        assert!(bytes <= 64 << 20, "{phase}: {bytes} bytes");
        assert!(cache.weighted_size() <= 64 << 20);
        (count, bytes)
    };
    // Small records: the entry bound binds.
    for i in 0..30_000u32 {
        let record = rec(&format!("did:small:{i}"), "small", json!({}));
        cache
            .insert_found(
                format!("did:small:{i}"),
                FoundRecord::new(record),
                cache.epoch(),
            )
            .await;
        if i % 1_000 == 999 {
            cache.run_pending_tasks().await;
            check("small");
        }
    }
    let (count, _) = check("small");
    assert!(
        count > 7_000,
        "the cache should fill up to its entry bound, holds {count}"
    );
    // Large records (~24 KiB): the byte bound binds, well below 7,500 entries.
    let filler = "x".repeat(24 << 10);
    for i in 0..12_000u32 {
        let record = rec(&format!("did:large:{i}"), &filler, json!({}));
        cache
            .insert_found(
                format!("did:large:{i}"),
                FoundRecord::new(record),
                cache.epoch(),
            )
            .await;
        if i % 500 == 499 {
            cache.run_pending_tasks().await;
            check("large");
        }
    }
    // Misses weigh as much as the smallest record: they cannot overflow the bound either.
    for i in 0..20_000u32 {
        cache
            .insert_missing(format!("did:missing:{i}"), cache.epoch())
            .await;
    }
    cache.run_pending_tasks().await;
    check("missing");
}

#[tokio::test]
async fn resolving_far_more_records_than_the_cache_holds_stays_within_its_bounds() {
    let dids: Vec<String> = (0..9_000).map(|i| format!("did:arweave:{i:05}")).collect();
    let filler = "y".repeat(12 << 10);
    let targets: Vec<Value> = dids.iter().map(|d| rec(d, &filler, json!({}))).collect();
    let es = ElasticStandIn::start(targets, vec![]).await;
    let mut settings = with_elastic(&es);
    settings.resolve_budget = 20_000;
    settings.resolve_max_output_bytes = 256 << 20;
    // Nine searches answering ~12 MiB each, parsed by a debug build on a loaded CI
    // machine: a timeout here would only mean fewer searches, not a cache bound.
    settings.resolve_timeout = Duration::from_secs(120);
    let resolver = Resolver::new(&settings, None).unwrap();
    let root = rec("did:arweave:root", "Root", json!({"all": dids}));
    let out = resolver.resolve(vec![root], &depth(1)).await;
    assert!(!out.stats.timed_out, "the resolve timed out");
    assert_eq!(out.stats.lookups, 9_000);
    assert!(!out.stats.budget_exhausted);
    let searches = es.searches();
    assert_eq!(
        searches.len(),
        9,
        "1024 DIDs per search at most: {:?}",
        searches
            .iter()
            .map(|s| (s.index.clone(), s.dids.len()))
            .collect::<Vec<_>>()
    );
    assert!(searches.iter().all(|s| s.dids.len() <= 1024));
    let cache = resolver.cache();
    let (count, bytes) = cache.measure();
    // 9,000 records of ~12 KiB (~105 MiB) offered: the 64 MiB bound binds.
    assert!(count <= 7_500, "{count} entries");
    assert!(bytes <= 64 << 20, "{bytes} bytes");
    assert!(
        bytes > 32 << 20,
        "the cache should be well used, holds {bytes} bytes"
    );
}

// ------------------------------------------------------------------ through the GUN relay

/// A GUN record: soul `<12 hex>:<local id>` as the indexer makes them.
fn gun(local: &str, name: &str, links: Value) -> Value {
    json!({
        "data": {"basic": {"name": name}, "links": links},
        "oip": {"did": gun_did(local), "storage": "gun"},
        "meta": {"created": 1_700_000_000, "localId": local, "encrypted": false}
    })
}

fn gun_soul(local: &str) -> String {
    format!("647f79c2a338:{local}")
}

fn gun_did(local: &str) -> String {
    format!("did:gun:{}", gun_soul(local))
}

fn gun_stub(local: &str, name: &str) -> Value {
    json!({"oip": {"did": gun_did(local), "storage": "gun"}, "data": {"basic": {"name": name}}, "_circular": true})
}

/// `record` with `data.links.<key>` set to `value`.
fn linked(mut record: Value, key: &str, value: Value) -> Value {
    record["data"]["links"][key] = value;
    record
}

/// A relay stand-in holding `records` the way the indexer stores them (`data` and `oip`
/// as JSON strings), and a resolver using the GUN client over it.
async fn over_relay(records: &[Value]) -> (RelayStub, Resolver, Arc<GunClient>) {
    over_relay_with(records, |_| {}).await
}

async fn over_relay_with(
    records: &[Value],
    adjust: impl FnOnce(&mut oip_media::Config),
) -> (RelayStub, Resolver, Arc<GunClient>) {
    let relay = RelayStub::start().await;
    for record in records {
        let soul = record["oip"]["did"]
            .as_str()
            .unwrap()
            .strip_prefix("did:gun:")
            .unwrap();
        relay.store(
            soul,
            json!({
                "data": record["data"].to_string(),
                "oip": record["oip"].to_string(),
                "meta": record["meta"],
            }),
        );
    }
    let mut config = oip_media::Config::for_media_dir("/nonexistent");
    config.gun.gun_peers = Some(relay.base_url());
    adjust(&mut config);
    let client = Arc::new(GunClient::new(&config.gun).unwrap());
    let resolver = Resolver::new(&config.resolver, Some(Arc::clone(&client))).unwrap();
    (relay, resolver, client)
}

#[tokio::test]
async fn gun_chains_deeper_than_the_cap_stop_at_the_cap() {
    let chain: Vec<Value> = (0..7)
        .map(|i| {
            gun(
                &format!("n{i}"),
                &format!("N{i}"),
                json!({"next": gun_did(&format!("n{}", i + 1))}),
            )
        })
        .collect();
    let (relay, resolver, _) = over_relay(&chain).await;
    let out = resolver.resolve(vec![chain[0].clone()], &depth(9)).await;
    let mut expected = chain[4].clone();
    for i in (0..4).rev() {
        expected = linked(chain[i].clone(), "next", expected);
    }
    assert_eq!(out.records[0], expected);
    assert!(out.stats.capped);
    for i in 1..=4 {
        assert_eq!(relay.gets_of(&gun_soul(&format!("n{i}"))), 1, "n{i}");
    }
    assert_eq!(relay.gets_of(&gun_soul("n5")), 0, "looked past the cap");
    assert_eq!(relay.requests(), 4);
}

#[tokio::test]
async fn gun_cycles_self_two_and_long_end_in_stubs() {
    let me = gun("me", "Me", json!({"self": gun_did("me")}));
    let a = gun("a", "A", json!({"to": gun_did("b")}));
    let b = gun("b", "B", json!({"to": gun_did("a")}));
    let x = gun("x", "X", json!({"to": gun_did("y")}));
    let y = gun("y", "Y", json!({"to": gun_did("z")}));
    let z = gun("z", "Z", json!({"to": gun_did("x")}));
    let all = [
        me.clone(),
        a.clone(),
        b.clone(),
        x.clone(),
        y.clone(),
        z.clone(),
    ];
    let (relay, resolver, _) = over_relay(&all).await;

    let out = resolver
        .resolve(vec![me.clone(), a.clone(), x.clone()], &depth(4))
        .await;
    assert_eq!(out.records[0], linked(me, "self", gun_stub("me", "Me")));
    assert_eq!(
        out.records[1],
        linked(a, "to", linked(b, "to", gun_stub("a", "A")))
    );
    assert_eq!(
        out.records[2],
        linked(
            x,
            "to",
            linked(y, "to", linked(z, "to", gun_stub("x", "X")))
        )
    );
    for local in ["me", "a", "b", "x", "y", "z"] {
        assert!(
            relay.gets_of(&gun_soul(local)) <= 1,
            "{local} fetched twice"
        );
    }
}

#[tokio::test]
async fn gun_diamonds_cost_one_relay_request_per_soul() {
    let top = gun(
        "top",
        "Top",
        json!({"kids": [gun_did("l"), gun_did("r")], "also": gun_did("bottom")}),
    );
    let l = gun("l", "L", json!({"kid": gun_did("bottom")}));
    let r = gun("r", "R", json!({"kid": gun_did("bottom")}));
    let bottom = gun("bottom", "Bottom", json!({}));
    let (relay, resolver, _) = over_relay(&[l.clone(), r.clone(), bottom.clone()]).await;
    let out = resolver
        .resolve(vec![top.clone(), top.clone()], &depth(3))
        .await;
    let expected = linked(
        linked(
            top,
            "kids",
            json!([
                linked(l, "kid", bottom.clone()),
                linked(r, "kid", bottom.clone())
            ]),
        ),
        "also",
        bottom,
    );
    assert_eq!(out.records, vec![expected.clone(), expected]);
    for local in ["l", "r", "bottom"] {
        assert_eq!(relay.gets_of(&gun_soul(local)), 1, "{local}");
    }
    assert_eq!(relay.requests(), 3);
    assert_eq!(out.stats.lookups, 3);
}

#[tokio::test]
async fn gun_misses_stay_dids_in_arrays_and_are_not_asked_again() {
    let found = gun("found", "Found", json!({}));
    let root = gun(
        "root",
        "Root",
        json!({"mixed": [gun_did("gone"), gun_did("found"), "did:gun:", gun_did("gone2")], "one": gun_did("gone")}),
    );
    let (relay, resolver, client) = over_relay(std::slice::from_ref(&found)).await;
    let out = resolver.resolve(vec![root.clone()], &depth(2)).await;
    let expected = linked(
        root.clone(),
        "mixed",
        json!([gun_did("gone"), found, "did:gun:", gun_did("gone2")]),
    );
    assert_eq!(out.records[0], expected);
    assert_eq!(out.stats.not_found, 3, "gone, gone2 and the empty soul");
    assert_eq!(relay.requests(), 3, "no request for an empty soul");

    // The resolver's cache remembers the miss …
    let again = resolver.resolve(vec![root.clone()], &depth(2)).await;
    assert_eq!(again.records[0], expected);
    assert_eq!(relay.gets_of(&gun_soul("gone")), 1);
    // … and so does the GUN client's 404 cache, which another resolver shares.
    let settings = settings();
    let other = Resolver::new(&settings, Some(client)).unwrap();
    other.resolve(vec![root], &depth(1)).await;
    assert_eq!(
        relay.gets_of(&gun_soul("gone")),
        1,
        "the 404 cache was bypassed"
    );
    assert_eq!(
        relay.gets_of(&gun_soul("found")),
        2,
        "found records are re-read"
    );
}

#[tokio::test]
async fn gun_names_only_and_field_filters() {
    let workout = json!({
        "data": {"basic": {"name": "Legs", "avatar": gun_did("img")},
                 "workout": {"exercise": [gun_did("squat"), gun_did("lunge")]}},
        "oip": {"did": gun_did("legs")}, "meta": {}
    });
    let squat = json!({
        "data": {"basic": {"name": "Squat"}, "exercise": {"equipment": [gun_did("bar"), gun_did("gone")]}},
        "oip": {"did": gun_did("squat")}, "meta": {}
    });
    let lunge = json!({
        "data": {"basic": {"name": "Lunge"}, "exercise": {"equipment": gun_did("bench")}},
        "oip": {"did": gun_did("lunge")}, "meta": {}
    });
    let bar = gun("bar", "Barbell", json!({}));
    let bench = json!({"data": {"basic": {}}, "oip": {"did": gun_did("bench")}, "meta": {}});
    let img = gun("img", "Image", json!({}));
    let (relay, resolver, _) = over_relay(&[squat.clone(), lunge.clone(), bar, bench, img]).await;
    let options = ResolveOptions {
        depth: 2,
        names_only: true,
        fields: FieldFilter::parse("data.workout.exercise, exercise.equipment"),
    };
    let out = resolver.resolve(vec![workout.clone()], &options).await;
    let mut expected = workout;
    let mut squat_named = squat;
    squat_named["data"]["exercise"]["equipment"] = json!(["Barbell", gun_did("gone")]);
    // The bench has no name: its DID stays.
    expected["data"]["workout"]["exercise"] = json!([squat_named, lunge]);
    assert_eq!(out.records[0], expected);
    assert_eq!(
        relay.gets_of(&gun_soul("img")),
        0,
        "avatar was not selected"
    );
}

#[tokio::test]
async fn a_ten_thousand_wide_gun_fan_out_spends_the_budget_with_bounded_concurrency() {
    let targets: Vec<Value> = (0..10_000)
        .map(|i| gun(&format!("t{i:05}"), &format!("T{i}"), json!({})))
        .collect();
    let dids: Vec<String> = (0..10_000).map(|i| gun_did(&format!("t{i:05}"))).collect();
    let (relay, resolver, _) =
        over_relay_with(&targets, |c| c.resolver.resolve_budget = 1000).await;
    let root = gun("root", "Root", json!({"all": dids}));
    let started = Instant::now();
    let out = resolver.resolve(vec![root], &depth(3)).await;
    let all = out.records[0]["data"]["links"]["all"].as_array().unwrap();
    assert!(
        all[..1000] == targets[..1000],
        "the first 1000 are resolved"
    );
    assert!(all[1000..].iter().zip(&dids[1000..]).all(|(v, d)| v == d));
    assert!(out.stats.budget_exhausted);
    assert_eq!(out.stats.lookups, 1000);
    assert_eq!(relay.requests(), 1000);
    assert!(
        relay.max_concurrent() <= 16,
        "{} at once",
        relay.max_concurrent()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn gun_lookups_of_a_level_run_concurrently_up_to_the_bound() {
    let dids: Vec<String> = (0..24).map(|i| gun_did(&format!("slow{i}"))).collect();
    let (relay, resolver, _) = over_relay_with(&[], |c| c.resolver.resolve_concurrency = 4).await;
    for (i, _) in dids.iter().enumerate() {
        let record = gun(&format!("slow{i}"), "S", json!({}));
        let stored = json!({"data": record["data"], "oip": record["oip"], "meta": record["meta"]});
        relay.script(
            &gun_soul(&format!("slow{i}")),
            [Reply::after_ms(40, Reply::Found(stored))],
        );
    }
    let root = gun("root", "Root", json!({"all": dids}));
    let started = Instant::now();
    let out = resolver.resolve(vec![root], &depth(1)).await;
    let elapsed = started.elapsed();
    assert!(
        out.records[0]["data"]["links"]["all"]
            .as_array()
            .unwrap()
            .iter()
            .all(Value::is_object)
    );
    assert_eq!(relay.max_concurrent(), 4);
    // 24 gets of 40 ms, 4 at a time: about 240 ms, far from 960 ms one by one.
    assert!(elapsed < Duration::from_millis(700), "{elapsed:?}");
}

#[tokio::test]
async fn slow_gun_lookups_are_cut_off_by_the_resolution_timeout() {
    let fast = gun("fast", "Fast", json!({}));
    let (relay, resolver, _) = over_relay_with(std::slice::from_ref(&fast), |c| {
        c.resolver.resolve_timeout = Duration::from_millis(300);
    })
    .await;
    relay.script(&gun_soul("hangs"), [Reply::Hang]);
    relay.script(&gun_soul("slow"), [Reply::after_ms(5_000, Reply::NotFound)]);
    let root = gun(
        "root",
        "Root",
        json!({"all": [gun_did("hangs"), gun_did("fast"), gun_did("slow")]}),
    );
    let started = Instant::now();
    let out = resolver.resolve(vec![root.clone()], &depth(3)).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        out.records[0],
        linked(
            root,
            "all",
            json!([gun_did("hangs"), fast, gun_did("slow")])
        )
    );
    assert!(out.stats.timed_out);
    assert_eq!(out.stats.not_found, 0, "a timeout is not a miss");
}

#[tokio::test]
async fn gun_and_elasticsearch_references_resolve_side_by_side() {
    let g = gun("g", "G", json!({"back": "did:arweave:e"}));
    let e = rec("did:arweave:e", "E", json!({"back": gun_did("g")}));
    let es = ElasticStandIn::start(vec![e.clone()], vec![]).await;
    let es_url = es.url();
    let (relay, resolver, _) = over_relay_with(std::slice::from_ref(&g), |c| {
        c.resolver.elasticsearch_host = Some(es_url.into());
    })
    .await;
    let root = rec(
        "did:arweave:root",
        "Root",
        json!({"g": gun_did("g"), "e": "did:arweave:e"}),
    );
    let out = resolver.resolve(vec![root.clone()], &depth(2)).await;
    let expected = with(
        with(root, "g", linked(g.clone(), "back", e.clone())),
        "e",
        with(e, "back", g),
    );
    assert_eq!(out.records[0], expected);
    // The `did:gun:` reference is in Elasticsearch's batch too (issue 13: the indexer
    // finds GUN records there); Elasticsearch does not have it, so GUN is asked.
    assert_eq!(
        es.searches(),
        vec![
            search("records", &[&gun_did("g"), "did:arweave:e"]),
            search("organizations", &[&gun_did("g")]),
        ]
    );
    assert_eq!(relay.requests(), 1);
}

#[tokio::test]
async fn a_misconfigured_relay_is_an_error_not_a_miss() {
    let (relay, resolver, _) = over_relay(&[]).await;
    relay.script(&gun_soul("x"), [Reply::EndpointNotFound]);
    let root = gun("root", "Root", json!({"x": gun_did("x")}));
    let out = resolver.resolve(vec![root.clone()], &depth(1)).await;
    assert_eq!(out.records[0], root);
    assert_eq!(out.stats.source_errors, 1);
    assert_eq!(out.stats.not_found, 0);
    // Not remembered as missing: asked again (and now found).
    let x = gun("x", "X", json!({}));
    relay.store(
        &gun_soul("x"),
        json!({"data": x["data"], "oip": x["oip"], "meta": x["meta"]}),
    );
    let out = resolver.resolve(vec![root.clone()], &depth(1)).await;
    assert_eq!(out.records[0], linked(root, "x", x));
}

// ------------------------------------ did:gun: from Elasticsearch first, then GUN (issue 13)

/// A GUN record as the indexer's GUN sync writes it into the `records` index: `data`
/// and `oip` only (no `meta`), `oip.did` and `oip.didTx` both the `did:gun:` DID, and
/// `oip.storage` "gun".
fn synced(record: &Value) -> Value {
    let mut oip = record["oip"].clone();
    oip["didTx"] = oip["did"].clone();
    oip["storage"] = json!("gun");
    json!({"data": record["data"], "oip": oip})
}

/// A relay holding `on_relay`, an Elasticsearch holding `in_elastic`, and a resolver
/// over both (the indexer's deployment: `GUN_PEERS` and `ELASTICSEARCHHOST` set).
async fn over_both(
    on_relay: &[Value],
    in_elastic: Vec<Value>,
) -> (RelayStub, ElasticStandIn, Resolver, Arc<GunClient>) {
    let es = ElasticStandIn::start(in_elastic, vec![]).await;
    let es_url = es.url();
    let (relay, resolver, client) = over_relay_with(on_relay, |c| {
        c.resolver.elasticsearch_host = Some(es_url.into());
    })
    .await;
    (relay, es, resolver, client)
}

fn workout_using(local: &str) -> Value {
    rec("did:arweave:w", "W", json!({"ex": gun_did(local)}))
}

#[tokio::test]
async fn a_did_gun_record_in_elasticsearch_only_resolves_without_asking_gun() {
    let squat = gun("squat", "Squat", json!({}));
    let (relay, es, resolver, _) = over_both(&[], vec![synced(&squat)]).await;
    let root = workout_using("squat");
    let out = resolver.resolve(vec![root.clone()], &depth(2)).await;
    assert_eq!(
        out.records[0],
        with(
            root,
            "ex",
            json!({
                "data": {"basic": {"name": "Squat"}, "links": {}},
                "oip": {"did": gun_did("squat"), "storage": "gun", "didTx": gun_did("squat")}
            })
        )
    );
    assert_eq!(es.searches(), vec![search("records", &[&gun_did("squat")])]);
    assert_eq!(
        relay.requests(),
        0,
        "Elasticsearch had it: GUN is not asked"
    );
    assert_eq!(out.stats.source_requests, 1);
    assert!(es.violations().is_empty(), "{:?}", es.violations());
}

#[tokio::test]
async fn a_did_gun_record_on_the_relay_only_is_asked_of_gun_after_elasticsearch() {
    let fresh = gun("fresh", "Fresh", json!({}));
    let (relay, es, resolver, _) = over_both(std::slice::from_ref(&fresh), vec![]).await;
    let root = workout_using("fresh");
    let out = resolver.resolve(vec![root.clone()], &depth(2)).await;
    assert_eq!(out.records[0], with(root.clone(), "ex", fresh));
    assert_eq!(
        es.searches(),
        vec![
            search("records", &[&gun_did("fresh")]),
            search("organizations", &[&gun_did("fresh")]),
        ]
    );
    assert_eq!(relay.gets_of(&gun_soul("fresh")), 1);
    assert_eq!(relay.requests(), 1);
    assert_eq!(out.stats.source_requests, 3);
    // Cached: the next request asks neither.
    let again = resolver.resolve(vec![root], &depth(2)).await;
    assert_eq!(again.records, out.records);
    assert_eq!(es.searches().len(), 2);
    assert_eq!(relay.requests(), 1);
}

#[tokio::test]
async fn a_did_gun_record_in_both_comes_from_elasticsearch() {
    // The relay holds a newer edit the sync has not indexed yet: the indexer answers
    // with Elasticsearch's copy, and so does this resolver.
    let indexed = gun("both", "Deadlift", json!({}));
    let newer = gun("both", "Romanian deadlift", json!({}));
    let (relay, es, resolver, _) =
        over_both(std::slice::from_ref(&newer), vec![synced(&indexed)]).await;
    let root = workout_using("both");
    let out = resolver.resolve(vec![root.clone()], &depth(1)).await;
    assert_eq!(
        out.records[0],
        with(
            root,
            "ex",
            json!({
                "data": {"basic": {"name": "Deadlift"}, "links": {}},
                "oip": {"did": gun_did("both"), "storage": "gun", "didTx": gun_did("both")}
            })
        )
    );
    assert_eq!(es.searches(), vec![search("records", &[&gun_did("both")])]);
    assert_eq!(relay.requests(), 0);
}

#[tokio::test]
async fn a_did_gun_record_in_neither_stays_a_did_and_both_misses_are_remembered() {
    let (relay, es, resolver, client) = over_both(&[], vec![]).await;
    let root = workout_using("nowhere");
    let out = resolver.resolve(vec![root.clone()], &depth(2)).await;
    assert_eq!(out.records[0], root);
    assert_eq!(out.stats.not_found, 1);
    assert_eq!(out.stats.source_errors, 0);
    assert_eq!(
        es.searches(),
        vec![
            search("records", &[&gun_did("nowhere")]),
            search("organizations", &[&gun_did("nowhere")]),
        ]
    );
    assert_eq!(relay.gets_of(&gun_soul("nowhere")), 1);
    assert_eq!(out.stats.source_requests, 3);

    // The resolver's record cache remembers the miss: nothing is asked again.
    let again = resolver.resolve(vec![root.clone()], &depth(2)).await;
    assert_eq!(again.records[0], root);
    assert_eq!(
        (again.stats.cache_hits, again.stats.source_requests),
        (1, 0)
    );
    assert_eq!(es.searches().len(), 2);
    assert_eq!(relay.requests(), 1);

    // A resolver with a cold record cache asks Elasticsearch again (a sync may have
    // indexed the record since), but the GUN client's 404 cache answers for the relay.
    let settings = with_elastic(&es);
    let other = Resolver::new(&settings, Some(client)).unwrap();
    let out = other.resolve(vec![root.clone()], &depth(2)).await;
    assert_eq!(out.records[0], root);
    assert_eq!(es.searches().len(), 4);
    assert_eq!(relay.requests(), 1, "the GUN 404 cache was bypassed");
}

#[tokio::test]
async fn one_level_sends_every_did_in_one_search_and_only_the_gun_leftovers_to_gun() {
    let arweave = rec("did:arweave:a", "A", json!({}));
    let es_only = gun("es-only", "ES only", json!({}));
    let both = gun("both", "Both", json!({}));
    let relay_only = gun("relay-only", "Relay only", json!({}));
    let (relay, es, resolver, _) = over_both(
        &[both.clone(), relay_only.clone()],
        vec![arweave.clone(), synced(&es_only), synced(&both)],
    )
    .await;
    let root = rec(
        "did:arweave:root",
        "Root",
        json!({"all": [
            "did:arweave:a", gun_did("es-only"), gun_did("both"), gun_did("relay-only"),
            gun_did("neither"), "did:arweave:gone"
        ]}),
    );
    let out = resolver.resolve(vec![root.clone()], &depth(1)).await;
    assert_eq!(
        out.records[0],
        with(
            root,
            "all",
            json!([
                arweave,
                synced(&es_only),
                synced(&both),
                relay_only,
                gun_did("neither"),
                "did:arweave:gone"
            ])
        )
    );
    assert_eq!(
        es.searches(),
        vec![
            search(
                "records",
                &[
                    "did:arweave:a",
                    &gun_did("es-only"),
                    &gun_did("both"),
                    &gun_did("relay-only"),
                    &gun_did("neither"),
                    "did:arweave:gone"
                ]
            ),
            search(
                "organizations",
                &[
                    &gun_did("relay-only"),
                    &gun_did("neither"),
                    "did:arweave:gone"
                ]
            ),
        ]
    );
    for (local, gets) in [
        ("es-only", 0),
        ("both", 0),
        ("relay-only", 1),
        ("neither", 1),
    ] {
        assert_eq!(relay.gets_of(&gun_soul(local)), gets, "{local}");
    }
    assert_eq!(relay.requests(), 2);
    assert_eq!(out.stats.lookups, 6);
    assert_eq!(out.stats.not_found, 2);
    assert_eq!(out.stats.source_requests, 4);
}

#[tokio::test]
async fn a_failing_elasticsearch_falls_back_to_gun_and_caches_no_miss() {
    let there = gun("there", "There", json!({}));
    let (relay, es, resolver, _) = over_both(std::slice::from_ref(&there), vec![]).await;
    es.fail_with(503);
    let root = rec(
        "did:arweave:r",
        "R",
        json!({"a": gun_did("there"), "b": gun_did("gone"), "c": "did:arweave:x"}),
    );
    let out = resolver.resolve(vec![root.clone()], &depth(1)).await;
    // GUN answers for its own DIDs; the miss is not a miss (Elasticsearch could not
    // say), and the arweave DID has no other source.
    assert_eq!(out.records[0], with(root.clone(), "a", there));
    assert_eq!(out.stats.source_errors, 2);
    assert_eq!(out.stats.not_found, 0);
    assert_eq!(relay.requests(), 2);
    assert_eq!(es.searches().len(), 1);
    // Nothing was remembered as missing: all three are asked again.
    es.fail_with(0);
    let again = resolver.resolve(vec![root], &depth(1)).await;
    assert_eq!(again.stats.cache_hits, 1);
    assert_eq!(
        es.searches()[1],
        search("records", &[&gun_did("gone"), "did:arweave:x"])
    );
}

#[tokio::test]
async fn without_a_relay_did_gun_records_come_from_elasticsearch_alone() {
    let synced_one = synced(&gun("synced", "Synced", json!({})));
    let es = ElasticStandIn::start(vec![synced_one.clone()], vec![]).await;
    let resolver = Resolver::new(&with_elastic(&es), None).unwrap();
    let root = rec(
        "did:arweave:r",
        "R",
        json!({"s": gun_did("synced"), "f": gun_did("fresh")}),
    );
    let out = resolver.resolve(vec![root.clone()], &depth(1)).await;
    assert_eq!(out.records[0], with(root, "s", synced_one));
    // The fresh one is missing (Elasticsearch answered), not unresolved for want of a
    // source.
    assert_eq!(out.stats.not_found, 1);
    assert_eq!(out.stats.unresolved_no_source, 0);
    assert_eq!(es.searches().len(), 2);
}
