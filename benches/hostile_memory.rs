//! Every route's memory under hostile input: peak and retained RssAnon of the
//! `oip-media` binary, route by route, and beside it the kernel's TCP memory
//! (`/proc/net/sockstat` `mem`, the whole host's, above its level before the burst):
//! its peak, and what is left at the burst's end (for held connections: just before the
//! clients close them), where send queues of clients that read nothing show.
//!
//! Run: `cargo bench --bench hostile_memory`. The release binary runs as a child process
//! (defaults, `WORKERS=2`) over a generated media root (exercise GIFs, GIFs at the pixel
//! limit, frame bombs, a 65535×65535 screen, truncated GIFs, generated audio) with a GUN
//! relay stand-in that costs nothing. Each burst (`tests/support/hostile.rs`) is bounded
//! in count, concurrency (64 connections at once unless it says otherwise) and time (30 s
//! per request), loopback only. RssAnon is sampled every 5 ms from `/proc/<pid>/status`
//! while a burst runs, and read again 3 s after it ends; both are reported above the level
//! just before that burst. The resolver's own work (hostile resolves) is measured by
//! `benches/resolve_memory.rs`; here `/api/resolve` only appears with bodies at its limit.
//!
//! Settings: `HOSTILE_SCALE` (default 1.0) multiplies every burst's count;
//! `HOSTILE_SETTLE_MS` (default 3000) is the wait before the retained reading;
//! `HOSTILE_ONLY=<text>` runs only the bursts whose route or input contains it;
//! `HOSTILE_SERVER_ENV="NAME=value NAME=value"` adds settings to the server's environment
//! (to compare a bound with it turned up, say).
//! `OIP_MEDIA_BIN=<path>` runs that binary instead of this build's.

#[path = "../tests/support/child_server.rs"]
mod child_server;
#[path = "../tests/support/hostile.rs"]
mod hostile;
#[path = "support/svg.rs"]
mod svg;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use child_server::ChildServer;
use hostile::{Corpus, CorpusSize, RelaySink, mib};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if !Path::new("/proc/self/status").exists() {
        println!("skipped: no /proc to read RssAnon from");
        return;
    }
    let scale: f64 = env_or("HOSTILE_SCALE", 1.0);
    let settle = Duration::from_millis(env_or("HOSTILE_SETTLE_MS", 3000));
    let only = std::env::var("HOSTILE_ONLY").ok();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let started = Instant::now();
        let corpus = Corpus::build(CorpusSize {
            gifs: 40,
            heavy: 6,
            hostile_each: 5,
        });
        println!(
            "corpus: {} exercise GIFs, {} noise GIFs of 2048x2048, {} hostile /api/media items (built in {:.1} s)",
            corpus.gifs.len(),
            corpus.heavy.len(),
            corpus.hostile_items.len(),
            started.elapsed().as_secs_f64()
        );
        let relay = RelaySink::start().await;
        // `OIP_MEDIA_BIN` measures another build (a branch's, copied aside), as in
        // `benches/load.rs`; by default, this build's.
        let binary = std::env::var_os("OIP_MEDIA_BIN")
            .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_oip-media")), PathBuf::from);
        let mut env = corpus.env(Some(relay.addr));
        let extra = std::env::var("HOSTILE_SERVER_ENV").unwrap_or_default();
        for setting in extra.split_whitespace() {
            let (name, value) = setting
                .split_once('=')
                .expect("HOSTILE_SERVER_ENV: NAME=value pairs");
            // Names live as long as the run: leaked once, a few bytes.
            env.push((&*name.to_owned().leak(), value.to_owned()));
        }
        let server = ChildServer::start(&binary, &env);
        // Warm up: every normal GIF mapped once, the allocator's arenas made.
        let warm = hostile::bursts(&corpus, 0.05);
        let _ = warm[0].run(server.addr, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start_rss = server.rss_anon();
        println!("idle RssAnon after warm-up: {} MiB", mib(start_rss));
        println!();
        println!(
            "| route | hostile input | requests | answers | time | peak above idle (MiB) | retained after {:.0} s (MiB) | kernel TCP peak (MiB) | kernel TCP at the burst's end (MiB) |",
            settle.as_secs_f64()
        );
        println!("|---|---|---:|---|---:|---:|---:|---:|---:|");
        let mut worst_peak = (0, String::new());
        // For the chart: one row per burst, peak and retained in MiB.
        let (mut names, mut peaks, mut retained) = (Vec::new(), Vec::new(), Vec::new());
        let as_mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        for burst in hostile::bursts(&corpus, scale) {
            if let Some(only) = &only
                && !burst.route.contains(only.as_str())
                && !burst.input.contains(only.as_str())
            {
                continue;
            }
            let (tally, m) =
                hostile::measure(&server, &burst, Duration::from_secs(30), settle).await;
            println!(
                "| `{}` | {} | {} | {} | {:.1} s | {} | {} | {} | {} |",
                burst.route,
                burst.input,
                burst.count(),
                tally,
                m.elapsed.as_secs_f64(),
                mib(m.peak_above_idle()),
                mib(m.retained_above_idle()),
                mib(m.kernel_peak_above_idle()),
                mib(m.kernel_held_above_idle()),
            );
            names.push(format!("{} — {}", burst.route, burst.input));
            peaks.push(as_mib(m.peak_above_idle()));
            retained.push(as_mib(m.retained_above_idle()));
            if m.peak_above_idle() > worst_peak.0 {
                worst_peak = (m.peak_above_idle(), format!("{} — {}", burst.route, burst.input));
            }
        }
        let end_rss = server.rss_anon();
        println!();
        println!(
            "RssAnon: {} MiB after warm-up, {} MiB after every burst ({:+.1} MiB); highest peak: {} MiB above idle ({})",
            mib(start_rss),
            mib(end_rss),
            (end_rss as f64 - start_rss as f64) / (1024.0 * 1024.0),
            mib(worst_peak.0),
            worst_peak.1
        );
        let command = match &only {
            Some(only) => format!("HOSTILE_ONLY=\"{only}\" HOSTILE_SCALE={scale} cargo bench --bench hostile_memory"),
            None => format!("HOSTILE_SCALE={scale} cargo bench --bench hostile_memory"),
        };
        svg::write_chart(
            "hostile-memory.svg",
            &svg::BarChart {
                title: format!(
                    "RssAnon above idle per hostile burst: peak, and retained {:.0} s later",
                    settle.as_secs_f64()
                ),
                subtitle: format!(
                    "{command} · {} cores · release binary, WORKERS=2 · commit {}",
                    std::thread::available_parallelism().map_or(0, |n| n.get()),
                    svg::commit()
                ),
                value_label: "MiB above the level before the burst".into(),
                categories: names,
                series: vec![
                    ("peak".to_owned(), peaks),
                    (format!("retained after {:.0} s", settle.as_secs_f64()), retained),
                ],
            }
            .to_svg(),
        );
        let (files, bytes) = derived(&corpus.derived_dir());
        println!(
            "derived folder after the run: {files} files, {} MiB (bound: --derived-max-bytes, 1 GiB by default)",
            mib(bytes)
        );
        println!("total: {:.0} s", started.elapsed().as_secs_f64());
    });
}

fn derived(dir: &Path) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .flatten()
        // Not the folder's naming key (`.oip-media-key`) or temp files.
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| e.metadata().ok())
        .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
}
