//! Resolver memory benchmark: peak and retained RssAnon of the `oip-media` binary
//! under issue 10's hostile resolves, for each allocator candidate side by side in
//! one run, plus the realistic workload the output budget is sized from.
//!
//! Run: `cargo bench --bench resolve_memory`. Each candidate is the `oip-media`
//! binary built with one allocator feature (see `Cargo.toml`), run as a child process
//! against an in-process Elasticsearch stand-in; RssAnon is sampled every 5 ms from
//! `/proc/<pid>/status`. The default build (jemalloc) is always measured; the others
//! are measured when their builds exist under `target/alloc-variants/`, and built
//! there first with `RESOLVE_MEMORY_BUILD=1` (dependencies once, then a minute or
//! two per candidate).
//!
//! Workloads (defaults of the service, 2 worker threads):
//! - **single**: one 516-byte request at depth 4 over 2,000 records that each
//!   reference 40 others;
//! - **burst**: eight of those and four 6.5 MB bodies of 200,000 tiny records, all
//!   at once; then RssAnon 1 s and 3 s after the last answer.
//!
//! Settings: `RESOLVE_MEMORY_ROUNDS` (default 2) rounds per candidate, the worst
//! figure of each kept; `RESOLVE_MEMORY_BUILD=1` builds missing candidates.

#[path = "../tests/support/child_server.rs"]
mod child_server;
#[path = "../tests/support/elastic.rs"]
mod elastic;
#[path = "../tests/support/oip_records.rs"]
mod oip_records;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use child_server::{ChildServer, post_resolve, rss_anon};
use elastic::ElasticStandIn;

const MIB: f64 = 1024.0 * 1024.0;

/// One allocator candidate: a binary and the environment it runs with.
struct Candidate {
    label: &'static str,
    binary: PathBuf,
    env: Vec<(&'static str, String)>,
}

/// What one candidate measured (bytes; the worst of the rounds).
#[derive(Default, Clone, Copy)]
struct Figures {
    idle: u64,
    single_peak: u64,
    single_ms: u128,
    burst_peak: u64,
    burst_ms: u128,
    after_1s: u64,
    after_3s: u64,
}

/// Builds of the other allocators: (label, feature, folder under target/alloc-variants).
const VARIANTS: [(&str, &str, &str); 3] = [
    ("glibc malloc", "", "glibc"),
    (
        "glibc + malloc_trim(0) every 1 s",
        "glibc-trim",
        "glibc-trim",
    ),
    ("mimalloc (defaults)", "mimalloc", "mimalloc"),
];

/// Where the candidates are built: one target folder of their own (so building them
/// does not wait for the lock `cargo bench` holds on `target/`), shared by all of
/// them (so dependencies are compiled once).
fn variants_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/alloc-variants")
}

fn variant_binary(folder: &str) -> PathBuf {
    variants_dir().join(format!("oip-media-{folder}"))
}

fn build_variant(feature: &str, folder: &str) -> bool {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--release",
            "--bin",
            "oip-media",
            "--no-default-features",
        ])
        .arg("--target-dir")
        .arg(variants_dir());
    if !feature.is_empty() {
        command.args(["--features", feature]);
    }
    println!("building the {folder} candidate: {command:?}");
    command.status().is_ok_and(|s| s.success())
        && std::fs::copy(
            variants_dir().join("release/oip-media"),
            variant_binary(folder),
        )
        .is_ok()
}

fn candidates() -> Vec<Candidate> {
    let default = PathBuf::from(env!("CARGO_BIN_EXE_oip-media"));
    let mut list = vec![
        Candidate {
            label: "jemalloc: background thread, 1 s decay (chosen)",
            binary: default.clone(),
            env: vec![],
        },
        Candidate {
            label: "jemalloc: background thread, no decay (dirty_decay_ms:0)",
            binary: default.clone(),
            env: vec![("_RJEM_MALLOC_CONF", "dirty_decay_ms:0".into())],
        },
        Candidate {
            label: "jemalloc: no background thread, 10 s decay",
            binary: default,
            env: vec![(
                "_RJEM_MALLOC_CONF",
                "background_thread:false,dirty_decay_ms:10000,muzzy_decay_ms:0".into(),
            )],
        },
    ];
    let build = std::env::var("RESOLVE_MEMORY_BUILD").is_ok_and(|v| v == "1");
    for (label, feature, folder) in VARIANTS {
        let binary = variant_binary(folder);
        let available = binary.exists() || (build && build_variant(feature, folder));
        if !available {
            println!(
                "skipped {label}: no build at {} (RESOLVE_MEMORY_BUILD=1 builds it)",
                binary.display()
            );
            continue;
        }
        list.push(Candidate {
            label,
            binary: binary.clone(),
            env: vec![],
        });
        if folder == "glibc" {
            list.push(Candidate {
                label: "glibc malloc, MALLOC_ARENA_MAX=2",
                binary,
                env: vec![("MALLOC_ARENA_MAX", "2".into())],
            });
        }
    }
    list
}

async fn measure(
    candidate: &Candidate,
    es_url: &str,
    graph_body: &str,
    tiny_body: &str,
) -> Figures {
    let mut env = candidate.env.clone();
    env.push(("ELASTICSEARCHHOST", es_url.to_owned()));
    env.push(("WORKERS", "2".into()));
    let binary = candidate.binary.clone();
    let server = tokio::task::spawn_blocking(move || ChildServer::start(&binary, &env))
        .await
        .expect("start");
    let url = server.url("");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    let warm = r#"{"record":{"data":{"l":{"r":"did:h:1"}}},"resolveDepth":1}"#;
    assert_eq!(post_resolve(&client, &url, warm.into()).await.0, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = server.rss_anon();

    let sampler = server.sample();
    let started = Instant::now();
    let (status, _) = post_resolve(&client, &url, graph_body.to_owned()).await;
    let single_ms = started.elapsed().as_millis();
    let single_peak = sampler.stop();
    assert_eq!(status, 200, "{}", candidate.label);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let sampler = server.sample();
    let started = Instant::now();
    let requests: Vec<_> = (0..12)
        .map(|i| {
            let body = if i % 3 == 2 { tiny_body } else { graph_body }.to_owned();
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { post_resolve(&client, &url, body).await.0 })
        })
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.expect("request"));
    }
    let burst_ms = started.elapsed().as_millis();
    let burst_peak = sampler.stop();
    assert!(statuses.contains(&200), "{statuses:?}");
    let pid = server.pid();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_1s = rss_anon(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_3s = rss_anon(pid);
    Figures {
        idle,
        single_peak: single_peak.saturating_sub(idle),
        single_ms,
        burst_peak: burst_peak.saturating_sub(idle),
        burst_ms,
        after_1s: after_1s.saturating_sub(idle),
        after_3s: after_3s.saturating_sub(idle),
    }
}

fn worst(a: Figures, b: Figures) -> Figures {
    Figures {
        idle: a.idle.max(b.idle),
        single_peak: a.single_peak.max(b.single_peak),
        single_ms: a.single_ms.max(b.single_ms),
        burst_peak: a.burst_peak.max(b.burst_peak),
        burst_ms: a.burst_ms.max(b.burst_ms),
        after_1s: a.after_1s.max(b.after_1s),
        after_3s: a.after_3s.max(b.after_3s),
    }
}

fn main() {
    if !Path::new("/proc/self/status").exists() {
        println!("skipped: no /proc to read RssAnon from");
        return;
    }
    let rounds: usize = std::env::var("RESOLVE_MEMORY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (graph, graph_body) = oip_records::hostile_graph(2_000, 40);
        let tiny_body = oip_records::tiny_records_body(200_000);
        let (page, page_body) = oip_records::workout_page(1, 4);
        let mut records = graph;
        records.extend(page);
        let es = ElasticStandIn::start(records, vec![]).await;
        println!(
            "single request: {} bytes; tiny-record bodies: {:.1} MB; {rounds} round(s) per candidate, worst kept",
            graph_body.len(),
            tiny_body.len() as f64 / 1e6
        );

        let mut rows = Vec::new();
        for candidate in candidates() {
            let mut figures: Option<Figures> = None;
            for _ in 0..rounds {
                let f = measure(&candidate, &es.url(), &graph_body, &tiny_body).await;
                figures = Some(figures.map_or(f, |w| worst(w, f)));
            }
            if let Some(f) = figures {
                rows.push((candidate.label, f));
            }
        }

        println!();
        println!(
            "| allocator | idle RssAnon | single: peak above idle | single: time | burst: peak above idle | burst: time | 1 s after | 3 s after |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for (label, f) in &rows {
            println!(
                "| {label} | {:.1} MiB | {:.1} MiB | {} ms | {:.1} MiB | {} ms | {:.1} MiB | {:.1} MiB |",
                f.idle as f64 / MIB,
                f.single_peak as f64 / MIB,
                f.single_ms,
                f.burst_peak as f64 / MIB,
                f.burst_ms,
                f.after_1s as f64 / MIB,
                f.after_3s as f64 / MIB
            );
        }
        println!();
        println!("targets: single ≤ 256 MiB, burst ≤ 512 MiB, ≤ 96 MiB a few seconds later (above idle)");
        if let Some((_, f)) = rows.first() {
            let met = f.single_peak <= 256 << 20 && f.burst_peak <= 512 << 20 && f.after_3s <= 96 << 20;
            println!("chosen allocator meets the targets: {met}");
        }

        // The realistic workload: one workout page at depth 4, on the default build.
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_oip-media"));
        let env = vec![("ELASTICSEARCHHOST", es.url()), ("WORKERS", "2".to_owned())];
        let server = tokio::task::spawn_blocking(move || ChildServer::start(&binary, &env))
            .await
            .expect("start");
        let client = reqwest::Client::new();
        let mut times = Vec::new();
        let mut len = 0;
        for _ in 0..20 {
            let started = Instant::now();
            let (status, n) = post_resolve(&client, &server.url(""), page_body.clone()).await;
            times.push(started.elapsed().as_micros());
            assert_eq!(status, 200);
            len = n;
        }
        times.sort_unstable();
        println!(
            "workout page at depth 4 (1 workout, 12 exercises): {} KiB answer, median {:.1} ms over 20 (first one fetches, the rest hit the cache)",
            len / 1024,
            times[times.len() / 2] as f64 / 1000.0
        );
    });
}
