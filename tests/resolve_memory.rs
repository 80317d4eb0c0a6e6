//! Issue 10's memory targets for `/api/resolve`, checked on the real binary: the
//! `oip-media` executable runs as a child process (so nothing this test does shows in
//! its memory), resolving against an Elasticsearch stand-in, while its RssAnon is
//! sampled from `/proc/<pid>/status`.
//!
//! - one hostile resolve (516 bytes, depth 4, records that each reference 40 others)
//!   peaks at ≤ 256 MiB above idle;
//! - a burst of them, with four 6.5 MB bodies of 200,000 tiny records, peaks at
//!   ≤ 512 MiB above idle;
//! - ≤ 96 MiB above idle remains a few seconds later.
//!
//! Bounded: a fixed number of requests, each with a client timeout.

#[path = "support/child_server.rs"]
mod child_server;
#[path = "support/elastic.rs"]
mod elastic;
#[path = "support/oip_records.rs"]
mod oip_records;

use std::path::Path;
use std::time::Duration;

use child_server::{ChildServer, MemoryRun, post_resolve, rss_anon};
use elastic::ElasticStandIn;
use oip_media::resolve::bounded_parse::parse_within;
use oip_media::resolve::memory::{Sizing, value_bytes};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_resolves_stay_within_the_memory_targets() {
    if !Path::new("/proc/self/status").exists() {
        println!("skipped: no /proc to read RssAnon from");
        return;
    }
    let (graph, graph_body) = oip_records::hostile_graph(2_000, 40);
    assert!(
        (480..=560).contains(&graph_body.len()),
        "the hostile request is ~516 bytes, is {}",
        graph_body.len()
    );
    let tiny_body = oip_records::tiny_records_body(200_000);
    assert!((6_000_000..7_000_000).contains(&tiny_body.len()));
    let es = ElasticStandIn::start(graph, vec![]).await;
    let es_url = es.url();
    let server = tokio::task::spawn_blocking(move || {
        ChildServer::start(
            Path::new(env!("CARGO_BIN_EXE_oip-media")),
            &[("ELASTICSEARCHHOST", es_url), ("WORKERS", "2".into())],
        )
    })
    .await
    .unwrap();
    let url = server.url("");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();

    // Warm up: the runtime's threads, the connection pools, one small resolve.
    let (status, _) = post_resolve(
        &client,
        &url,
        r#"{"record":{"data":{"l":{"r":"did:h:1"}}},"resolveDepth":1}"#.into(),
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = server.rss_anon();

    // One hostile request.
    let sampler = server.sample();
    let (status, len) = post_resolve(&client, &url, graph_body.clone()).await;
    let single_peak = sampler.stop();
    assert_eq!(status, 200);
    println!(
        "single: {} B answer, idle {:.1} MiB, peak {:.1} MiB above idle",
        len,
        MemoryRun::mib(idle),
        MemoryRun::mib(single_peak.saturating_sub(idle))
    );
    assert!(
        single_peak.saturating_sub(idle) <= 256 * MIB,
        "one hostile resolve peaked at {:.1} MiB above idle",
        MemoryRun::mib(single_peak - idle)
    );

    // A burst: eight hostile graphs and four tiny-record bodies at once.
    let sampler = server.sample();
    let mut burst = Vec::new();
    for i in 0..12 {
        let body = if i % 3 == 2 {
            tiny_body.clone()
        } else {
            graph_body.clone()
        };
        let (client, url) = (client.clone(), url.clone());
        burst.push(tokio::spawn(async move {
            post_resolve(&client, &url, body).await
        }));
    }
    let mut statuses = Vec::new();
    for request in burst {
        statuses.push(request.await.unwrap().0);
    }
    let burst_peak = sampler.stop();
    let pid = server.pid();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let retained = rss_anon(pid);
    let run = MemoryRun {
        idle,
        peak_above_idle: burst_peak.saturating_sub(idle),
        retained_above_idle: retained.saturating_sub(idle),
    };
    println!(
        "burst: statuses {statuses:?}, peak {:.1} MiB above idle, {:.1} MiB above idle 3 s later",
        MemoryRun::mib(run.peak_above_idle),
        MemoryRun::mib(run.retained_above_idle)
    );
    assert!(
        statuses.iter().all(|s| [200, 413, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses
            .iter()
            .enumerate()
            .all(|(i, s)| i % 3 != 2 || *s != 200),
        "a body of 200,000 tiny records is over the output budget: {statuses:?}"
    );
    assert!(
        run.peak_above_idle <= 512 * MIB,
        "burst peaked at {:.1} MiB above idle",
        MemoryRun::mib(run.peak_above_idle)
    );
    assert!(
        run.retained_above_idle <= 96 * MIB,
        "{:.1} MiB above idle remained 3 s after the burst",
        MemoryRun::mib(run.retained_above_idle)
    );

    // Every slot was given back; what was shed is counted.
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("oip_media_resolve_in_flight 0"),
        "{metrics}"
    );
    let shed = statuses.iter().filter(|s| **s == 503).count();
    let counted: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("oip_media_resolve_shed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(counted, shed as u64, "{metrics}");
}

/// The realistic workload the default output budget is sized from: workouts resolved
/// to depth 4 (workout → exercises → demo-GIF collections and equipment → images).
/// One workout page takes under 1 MiB; a listing of 16 of them resolves whole, and
/// the default budget holds it twice over.
#[tokio::test]
async fn sixteen_workouts_at_depth_four_fit_the_default_budget_twice() {
    let (records, body) = oip_records::workout_page(16, 4);
    let es = ElasticStandIn::start(records, vec![]).await;
    let media = tempfile::tempdir().unwrap();
    std::fs::create_dir(media.path().join("web")).unwrap();
    let mut config = oip_media::Config::for_media_dir(media.path());
    config.resolver.elasticsearch_host = Some(es.url().into());
    let budget = config.resolver.resolve_max_output_bytes;
    let server = oip_media::server::start(config).await.unwrap();
    let client = reqwest::Client::new();
    let response = client
        .post(format!("http://{}/api/resolve", server.local_addr()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.unwrap();
    let (answer, _) = parse_within(&bytes, u64::MAX).unwrap();
    let stats = &answer["stats"];
    assert_eq!(stats["outputLimitReached"], false, "{stats}");
    assert_eq!(stats["budgetExhausted"], false, "{stats}");
    let first = &answer["records"][0]["data"]["workout"]["exercise"][0];
    assert_eq!(
        first["data"]["basic"]["avatar"]["data"]["multiResolutionGif"]["gif_media_refs"][0]["data"]
            ["image"]["contentType"],
        "image/gif",
        "resolved four levels deep"
    );
    // What the answer's records take on the heap, as the output budget counts them.
    let heap: u64 = answer["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| value_bytes(r, Sizing::AsCloned))
        .sum();
    println!(
        "16 workouts at depth 4: {} KiB of JSON, {:.1} MiB of heap, budget {} MiB",
        bytes.len() / 1024,
        heap as f64 / MIB as f64,
        budget / MIB
    );
    assert!(
        heap * 2 <= budget,
        "{heap} B of records vs a {budget} B budget"
    );
    server.shutdown().await;
}
