//! The worst routes of `benches/hostile_memory.rs`, with memory bounds: the `oip-media`
//! binary runs as a child process, and its RssAnon (from `/proc/<pid>/status`, sampled
//! every 5 ms) must stay under a peak while a hostile burst runs and come back near its
//! idle level 3 s later.
//!
//! The bounds are generous — several times what the release binary measures (see
//! BENCHMARKS.md) — so they catch a bound that stopped holding, not noise: each burst
//! took hundreds of MiB before its fix (a put's record parsed into a tree, request
//! bodies buffered without a budget, stills waiting on GIF-serving slots).
//! Loopback only; every burst bounded in count, concurrency and time.

#[path = "support/child_server.rs"]
mod child_server;
#[path = "support/hostile.rs"]
mod hostile;

use std::path::PathBuf;
use std::time::Duration;

use child_server::ChildServer;
use hostile::{Burst, Corpus, CorpusSize, RelaySink, get, mib};

const MIB: u64 = 1 << 20;

/// True when ffmpeg runs here; otherwise says why the variants burst is skipped — or
/// fails when CI demands ffmpeg (`OIP_REQUIRE_FFMPEG`).
fn ffmpeg_or_skip() -> bool {
    let runs = std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        runs || std::env::var_os("OIP_REQUIRE_FFMPEG").is_none(),
        "ffmpeg is not installed but OIP_REQUIRE_FFMPEG is set"
    );
    if !runs {
        println!("variants burst skipped: ffmpeg is not installed (apt-get install ffmpeg)");
    }
    runs
}

/// One hostile burst and what it may cost above the idle level.
struct Case {
    burst: Burst,
    peak: u64,
    retained: u64,
    /// The burst must be answered with this status at least once (it did the work).
    answered: u16,
}

#[test]
fn the_worst_hostile_bursts_stay_within_their_memory_bounds() {
    if !std::path::Path::new("/proc/self/status").exists() {
        println!("skipped: no /proc to read RssAnon from");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let corpus = Corpus::build(CorpusSize {
            gifs: 4,
            heavy: 2,
            hostile_each: 1,
        });
        let relay = RelaySink::start().await;
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_oip-media"));
        let server = ChildServer::start(&binary, &corpus.env(Some(relay.addr)));
        let mut all: Vec<Option<Burst>> = hostile::bursts(&corpus, 0.5)
            .into_iter()
            .map(Some)
            .collect();
        let mut take = |input: &str| {
            all.iter_mut()
                .find(|b| b.as_ref().is_some_and(|b| b.input.starts_with(input)))
                .and_then(Option::take)
                .unwrap_or_else(|| panic!("no burst `{input}`"))
        };

        let heavy = corpus.heavy.clone();
        let mut cases = vec![
            Case {
                // 16 puts at once (--gun-put-max-in-flight) of 1 MiB each, 64 trying.
                // Parsed into trees, six of them took 260 MiB.
                burst: take("bodies of exactly 1 MiB"),
                peak: 160 * MIB,
                retained: 32 * MIB,
                answered: 200,
            },
            Case {
                // 32 bodies of 8 MiB at once: without the body budget, 560 MiB (the
                // release binary now peaks near 310 MiB: 64 MiB of bodies, the rest
                // four bounded resolves).
                burst: take("bodies at `--resolve-body-limit`"),
                peak: 320 * MIB,
                retained: 32 * MIB,
                answered: 413,
            },
            Case {
                // Stills at the pixel limit: at most --still-workers renders at once.
                burst: Burst::requests(
                    "/media/<file>?still=1",
                    "stills of 2048x2048 noise GIFs",
                    heavy.len() * 2,
                    16,
                    move |i| {
                        let w = if i % 2 == 0 { "" } else { "&w=360" };
                        get(
                            &format!("/media/fitnessally/{}?still=1{w}", heavy[i / 2]),
                            &[],
                        )
                    },
                ),
                peak: 320 * MIB,
                retained: 32 * MIB,
                answered: 200,
            },
            Case {
                burst: take("slow bodies"),
                peak: 160 * MIB,
                retained: 32 * MIB,
                answered: 200,
            },
        ];
        if ffmpeg_or_skip() {
            cases.push(Case {
                // First-time variants: requests wait for ffmpeg (one job at a time)
                // holding no GIF-serving slot; the hostile GIFs are refused before it.
                burst: take("first-time variants"),
                peak: 64 * MIB,
                retained: 32 * MIB,
                answered: 422,
            });
        }
        for case in cases {
            let (tally, measured) = hostile::measure(
                &server,
                &case.burst,
                Duration::from_secs(60),
                Duration::from_secs(3),
            )
            .await;
            println!(
                "{} — {}: {tally}; peak {} MiB, retained {} MiB above idle ({} MiB), {:.1} s",
                case.burst.route,
                case.burst.input,
                mib(measured.peak_above_idle()),
                mib(measured.retained_above_idle()),
                mib(measured.idle),
                measured.elapsed.as_secs_f64()
            );
            assert!(
                tally.count(case.answered) > 0,
                "{}: the burst did its work ({tally})",
                case.burst.input
            );
            assert!(
                measured.peak_above_idle() <= case.peak,
                "{}: peak {} MiB above idle, bound {} MiB",
                case.burst.input,
                mib(measured.peak_above_idle()),
                mib(case.peak)
            );
            assert!(
                measured.retained_above_idle() <= case.retained,
                "{}: {} MiB above idle remain 3 s later, bound {} MiB",
                case.burst.input,
                mib(measured.retained_above_idle()),
                mib(case.retained)
            );
        }
    });
}
