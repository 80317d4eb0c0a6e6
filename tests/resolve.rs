//! The resolver's library API against loopback stand-ins of its sources: results are
//! compared with expected JSON, and the stand-ins count (and check) what they were asked.

mod support;

use std::time::{Duration, Instant};

use oip_media::config::ResolverSettings;
use oip_media::resolve::{FieldFilter, FoundRecord, RecordCache, ResolveOptions, Resolver};
use serde_json::{Value, json};
use support::elastic::{ElasticStandIn, Search};
use support::{rec, stub, with};

fn settings() -> ResolverSettings {
    oip_media::Config::for_media_dir("/nonexistent").resolver
}

fn with_elastic(es: &ElasticStandIn) -> ResolverSettings {
    let mut settings = settings();
    settings.elasticsearch_host = Some(es.url());
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
    let resolver = Resolver::new(&with_elastic(&es)).unwrap();
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
    let resolver = Resolver::new(&with_elastic(&es)).unwrap();
    let root = rec("did:arweave:r", "R", json!({"t": "did:arweave:tx1"}));
    let out = resolver.resolve(vec![root.clone()], &depth(1)).await;
    assert_eq!(out.records[0], with(root, "t", target));
}

#[tokio::test]
async fn without_elasticsearch_references_stay_dids_and_the_stats_say_so() {
    let resolver = Resolver::new(&settings()).unwrap();
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
    let resolver = Resolver::new(&with_elastic(&es)).unwrap();
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
    let resolver = Resolver::new(&with_elastic(&es)).unwrap();
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
    let resolver = Resolver::new(&with_elastic(&es)).unwrap();
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
    let resolver = Resolver::new(&with_elastic(&es)).unwrap();
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
            .insert_found(format!("did:small:{i}"), FoundRecord::new(record))
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
            .insert_found(format!("did:large:{i}"), FoundRecord::new(record))
            .await;
        if i % 500 == 499 {
            cache.run_pending_tasks().await;
            check("large");
        }
    }
    // Misses weigh as much as the smallest record: they cannot overflow the bound either.
    for i in 0..20_000u32 {
        cache.insert_missing(format!("did:missing:{i}")).await;
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
    let resolver = Resolver::new(&settings).unwrap();
    let root = rec("did:arweave:root", "Root", json!({"all": dids}));
    let out = resolver.resolve(vec![root], &depth(1)).await;
    assert_eq!(out.stats.lookups, 9_000);
    assert!(!out.stats.budget_exhausted);
    let searches = es.searches();
    assert_eq!(searches.len(), 9, "1024 DIDs per search at most");
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
