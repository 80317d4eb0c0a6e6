//! What the load bench's two missed memory targets are made of (issue 12 §3): oip-media
//! run in this process on the load bench's 1,000-GIF corpus, its heap counted block by
//! block, under `wrk` with the load bench's request mix (80 % GET, 10 % 304, 10 % 64 KiB
//! range), in rounds of fresh connections like the load bench's long run.
//!
//! - **Drift**: the live heap (bytes allocated and not freed, whatever the allocator
//!   keeps around them) at the end of every round with the connections open, and one
//!   second after they closed. A leak or an unbounded cache shows as live bytes that
//!   grow from round to round; pages an allocator keeps or returns on its own schedule
//!   do not show here at all, only in RssAnon.
//! - **Busy connections**: the live heap with every connection busy, minus the heap
//!   before the round, per connection and by block size: what each busy connection
//!   holds, against the idle keep-alive census of `benches/conn_memory.rs`.
//!
//! Run: `cargo bench --bench heap_profile`. Settings (environment, all optional):
//! `BENCH_ROUNDS` (default 10), `BENCH_SECS` (seconds per round, default 5),
//! `BENCH_CONNECTIONS` (default 256; the census by block size is printed for the first
//! and the last round),
//! `BENCH_FILES` (corpus size, default 1000). One worker thread, pinned to core 0 with
//! `wrk` on core 1 when the box has two cores or more. Needs `wrk` (skips without it).
//!
//! The allocator counted is the binary's (jemalloc, with the binary's `malloc_conf`: the
//! bench re-runs itself with `_RJEM_MALLOC_CONF` set to the same options, see
//! `src/allocator.rs`), so RssAnon here is comparable with the binary's; live bytes do
//! not depend on the allocator, and RssAnon minus live bytes is the allocator's share
//! (pages it keeps or has not yet returned, slab slack) plus stacks and static data.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

#[path = "support/census.rs"]
mod census;

/// The binary's allocator (jemalloc unless built without the `jemalloc` feature), counted.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: census::Counting<tikv_jemallocator::Jemalloc> =
    census::Counting(tikv_jemallocator::Jemalloc);
#[cfg(not(feature = "jemalloc"))]
#[global_allocator]
static ALLOCATOR: census::Counting<std::alloc::System> = census::Counting(std::alloc::System);

/// The load bench's request mix (its `WRK_SCRIPT`, `bench` mix).
const WRK_SCRIPT: &str = r#"
local paths, dates = {}, {}
init = function(args)
  for line in io.lines(os.getenv("BENCH_TARGETS")) do
    local p, d = line:match("([^\t]+)\t(.+)")
    paths[#paths + 1] = p
    dates[#dates + 1] = d
  end
  math.randomseed(os.time() + (tonumber(tostring({}):sub(8)) or 0))
end
request = function()
  local i = math.random(1, #paths)
  local r = math.random(100)
  if r <= 10 then
    return wrk.format("GET", paths[i], { ["If-Modified-Since"] = dates[i] })
  elseif r <= 20 then
    return wrk.format("GET", paths[i], { ["Range"] = "bytes=0-65535" })
  end
  return wrk.format("GET", paths[i])
end
"#;

fn rss_anon_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("RssAnon:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// One `/metrics` gauge of the server, read over a fresh connection.
fn gauge(addr: SocketAddr, name: &str) -> Option<u64> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

fn installed(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Pins this process's main thread (and the threads it starts later) to `core`, with
/// `taskset` as the load bench does.
fn pin_to(core: usize) {
    let pinned = Command::new("taskset")
        .args([
            "-p",
            "-c",
            &core.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !pinned {
        eprintln!("note: cannot pin to core {core} (taskset)");
    }
}

/// jemalloc's options in the `oip-media` binary (`src/allocator.rs`, `MALLOC_CONF`).
const BINARY_MALLOC_CONF: &str = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0";

fn main() -> BenchResult<()> {
    // jemalloc reads its options once, before `main`: run again with them set.
    if cfg!(feature = "jemalloc") && std::env::var_os("_RJEM_MALLOC_CONF").is_none() {
        let status = Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env("_RJEM_MALLOC_CONF", BINARY_MALLOC_CONF)
            .status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let num = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let rounds = num("BENCH_ROUNDS", 10).max(1);
    let secs = num("BENCH_SECS", 5).max(1);
    let connections = num("BENCH_CONNECTIONS", 256).max(1) as usize;
    let files = num("BENCH_FILES", 1000) as usize;
    if !installed("wrk") {
        println!("heap_profile: skipped, wrk is not installed");
        return Ok(());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = cores >= 2 && installed("taskset");
    if pinned {
        pin_to(0); // the server's runtime and pool threads inherit it
    }

    let corpus = tempfile::tempdir()?;
    let written = oip_media::sample::write_corpus(corpus.path(), "fitnessally", files, 42)?;
    let mut targets = String::new();
    for f in &written {
        let mut buf = Vec::new();
        std::fs::File::open(&f.fs_path)?.read_to_end(&mut buf)?; // page cache warm
        let modified = std::fs::metadata(&f.fs_path)?
            .modified()
            .unwrap_or(SystemTime::UNIX_EPOCH);
        targets.push_str(&format!(
            "{}\t{}\n",
            f.url_path,
            httpdate::fmt_http_date(modified)
        ));
    }
    let targets_path = corpus.path().join("targets.tsv");
    std::fs::write(&targets_path, targets)?;
    let script = corpus.path().join("mix.lua");
    std::fs::write(&script, WRK_SCRIPT)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let server = runtime.block_on(oip_media::start(oip_media::Config::for_media_dir(
        corpus.path(),
    )))?;
    let addr = server.local_addr();
    // Let the allocator return what writing and reading the corpus freed (jemalloc's
    // dirty pages decay within `dirty_decay_ms`, 1 s in the binary).
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "# heap profile: {} GIFs, {rounds} rounds of {secs} s, {connections} new connections each, 1 worker, allocator {} ({}), {}",
        written.len(),
        if cfg!(feature = "jemalloc") {
            "jemalloc"
        } else {
            "system"
        },
        std::env::var("_RJEM_MALLOC_CONF").unwrap_or_default(),
        if pinned {
            "server on core 0, wrk on core 1"
        } else {
            "unpinned (one core)"
        }
    );
    println!(
        "live heap and RssAnon before the first round: {} KiB, {} KiB",
        census::live() / 1024,
        rss_anon_kib()
    );
    println!(
        "{:<5} {:>9} {:>14} {:>16} {:>16} {:>18} {:>11} {:>12} {:>15}",
        "round",
        "requests",
        "live open KiB",
        "live closed KiB",
        "RssAnon open KiB",
        "RssAnon closed KiB",
        "map entries",
        "live/conn B",
        "RssAnon/conn B"
    );
    let (mut open_live, mut closed_live) = (Vec::new(), Vec::new());
    let (mut open_rsss, mut closed_rsss) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let before = census::snapshot();
        let before_exact = census::exact();
        let before_rss = rss_anon_kib();
        let mut wrk = Command::new(if pinned { "taskset" } else { "wrk" });
        if pinned {
            wrk.args(["-c", "1", "wrk"]);
        }
        let child = wrk
            .arg("-t1")
            .arg(format!("-c{connections}"))
            .arg(format!("-d{secs}s"))
            .arg("-s")
            .arg(&script)
            .arg(format!("http://{addr}"))
            .env("BENCH_TARGETS", &targets_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        // The load bench reads RssAnon at 95 % of the round; the census is taken there.
        std::thread::sleep(Duration::from_secs_f64(secs as f64 * 0.95));
        let open = census::snapshot();
        let open_exact = census::exact();
        let open_rss = rss_anon_kib();
        let output = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let requests = text
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("?")
            .to_owned();
        std::thread::sleep(Duration::from_secs(1)); // as the load bench: 1 s after close
        let closed_rss = rss_anon_kib();
        let closed = census::live();
        let live_open: i64 = open.iter().map(|c| c.0).sum();
        let before_live: i64 = before.iter().map(|c| c.0).sum();
        let per_conn = (live_open - before_live) as f64 / connections as f64;
        let rss_per_conn = (open_rss as f64 - before_rss as f64) * 1024.0 / connections as f64;
        println!(
            "{round:<5} {requests:>9} {:>14} {:>16} {:>16} {:>18} {:>11} {:>12.0} {:>15.0}",
            live_open / 1024,
            closed / 1024,
            open_rss,
            closed_rss,
            gauge(addr, "oip_media_map_cache_entries")
                .map_or_else(|| "?".to_owned(), |v| v.to_string()),
            per_conn,
            rss_per_conn
        );
        if round == 1 || round == rounds {
            println!(
                "  round {round}, live heap per busy connection by block size (open − before the round):"
            );
            for c in 0..census::CLASSES {
                let (db, dn) = (open[c].0 - before[c].0, open[c].1 - before[c].1);
                if dn.abs() as f64 >= connections as f64 / 8.0 {
                    println!(
                        "    blocks of {:>6}–{:>6} B: {:>5.2} blocks, {:>7.0} B",
                        census::class_limit(c) / 2 + 1,
                        census::class_limit(c),
                        dn as f64 / connections as f64,
                        db as f64 / connections as f64
                    );
                }
            }
            for (i, (o, b)) in open_exact.iter().zip(&before_exact).enumerate() {
                let dn = o - b;
                if dn.abs() as f64 >= connections as f64 / 8.0 {
                    println!(
                        "      of which {:>5} B (to 16 B): {:>5.2} blocks",
                        i * 16,
                        dn as f64 / connections as f64
                    );
                }
            }
        }
        open_live.push(live_open);
        open_rsss.push(open_rss as i64);
        closed_rsss.push(closed_rss as i64);
        closed_live.push(closed);
    }
    let pct = |v: &[i64]| {
        let (first, last) = (v[0] as f64, v[v.len() - 1] as f64);
        (last - first) / first.max(1.0) * 100.0
    };
    println!(
        "live heap, end of round 1 → end of round {rounds}: {:+.2} % with the connections open, {:+.2} % after they closed",
        pct(&open_live),
        pct(&closed_live)
    );
    println!(
        "RssAnon, the same rounds: {:+.2} % with the connections open (the load bench's drift), {:+.2} % after they closed",
        pct(&open_rsss),
        pct(&closed_rsss)
    );
    runtime.block_on(server.shutdown());
    drop(corpus);
    Ok(())
}
