//! Transcode benchmark over the generated corpus (`oip_media::sample::write_corpus`):
//!
//! - **bytes**: each variant's bytes vs its GIF's, per format and size class (target:
//!   MP4 ≤ 0.3× over the corpus);
//! - **quality**: first-frame PSNR (RGB) and SSIM of the MP4 vs the GIF's first frame
//!   (flattened onto white, as the MP4 is), by ffmpeg's `psnr`/`ssim` filters (target:
//!   PSNR ≥ 35 dB); `BENCH_CRFS` adds a sweep of the MP4 quality setting;
//! - **encode throughput**: GIF-MB per CPU-second of `oip-media transcode` and its
//!   ffmpeg children (`cutime + cstime` of this process, so nothing but them counts);
//! - **serving**: CPU per byte of the server process (`utime + stime` from
//!   `/proc/<pid>/stat`) serving every ready MP4 vs every GIF, rounds interleaved in one
//!   run, as a ratio (target: ≤ 1);
//! - **hostile burst**: 200 concurrent `?format=mp4` requests for variants that do not
//!   exist, against a small queue: how many are shed at once, peak and retained RssAnon.
//!
//! Run: `cargo bench --bench transcode`. Settings (environment): `BENCH_FILES` (60),
//! `BENCH_ROUNDS` (serving rounds per kind, 30), `BENCH_CRFS` (extra MP4 CRFs to sweep,
//! e.g. `23,26`; none by default). Needs ffmpeg; says so and exits when it is missing.
//! The GPU encoder (`h264_nvenc`) is measured only where a GPU is present.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_oip-media");

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Clock ticks per second of `/proc` CPU times (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Fields of `/proc/<pid>/stat` after the command name (field 3 is index 0).
fn stat_fields(pid: &str) -> Vec<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = text.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect()
}

/// CPU seconds of the waited-for children of this process (cutime + cstime).
fn children_cpu() -> f64 {
    let f = stat_fields("self");
    (f[13] + f[14]) as f64 / clock_ticks()
}

/// CPU seconds of process `pid`, all threads, in nanoseconds from
/// `/proc/<pid>/task/*/schedstat` (field 1: time on the CPU), not the 10 ms ticks of
/// `/proc/<pid>/stat`: serving a corpus round costs only milliseconds.
fn process_cpu(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum();
    ns as f64 / 1e9
}

fn rss_anon_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `oip-media transcode` for `format` over `media` into `derived`; returns
/// (wall seconds, CPU seconds of it and its ffmpeg children).
fn pre_make(media: &Path, derived: &Path, format: &str, crf: u32) -> BenchResult<(f64, f64)> {
    let cpu = children_cpu();
    let started = Instant::now();
    let status = Command::new(BIN)
        .args(["transcode", "--formats", format, "--jobs", "1"])
        .arg("--derived-dir")
        .arg(derived)
        .arg(media)
        .env("FFMPEG", "ffmpeg")
        .env("MP4_CRF", crf.to_string())
        .env("TRANSCODE_THREADS", "1")
        .env("DERIVED_MAX_BYTES", "16GiB")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("oip-media transcode --formats {format} failed: {status}").into());
    }
    Ok((started.elapsed().as_secs_f64(), children_cpu() - cpu))
}

/// The variant of `format` made for the file at `path` (found by its identity).
fn variant_of(derived: &Path, gif: &Path, ext: &str) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(gif).ok()?;
    let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    let prefix = format!(
        "variant-{:x}-{:x}-{:x}-{:x}-",
        meta.dev(),
        meta.ino(),
        meta.len(),
        mtime_ns
    );
    std::fs::read_dir(derived)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(&format!(".{ext}"))
        })
}

/// First-frame PSNR (RGB average, dB) and SSIM (all planes) of `mp4` vs `gif`.
fn first_frame_quality(gif: &Path, mp4: &Path) -> Option<(f64, f64)> {
    let graph = "[0:v]trim=end_frame=1,format=rgba,split[fg][bg];\
        [bg]drawbox=x=0:y=0:w=iw:h=ih:color=white:t=fill[w];[w][fg]overlay=format=auto,\
        format=gbrp,split[r1][r2];\
        [1:v]trim=end_frame=1,scale=in_color_matrix=bt709:in_range=tv,format=gbrp,\
        split[d1][d2];[d1][r1]psnr;[d2][r2]ssim";
    let output = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-f", "gif", "-i"])
        .arg(gif)
        .arg("-i")
        .arg(mp4)
        .args(["-filter_complex", graph, "-f", "null", "-"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stderr);
    let after = |key: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.contains(key))?;
        let tail = &line[line.find(key)? + key.len()..];
        tail.split_whitespace().next()?.parse().ok()
    };
    Some((after("average:")?, after("All:")?))
}

/// A keep-alive HTTP/1.1 client that reads whole bodies (Content-Length).
struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> BenchResult<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream: BufReader::with_capacity(1 << 16, stream),
        })
    }

    /// GET `path`; returns (status, body bytes read).
    fn get(&mut self, path: &str) -> BenchResult<(u16, u64)> {
        write!(
            self.stream.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n"
        )?;
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        let status: u16 = line.split(' ').nth(1).unwrap_or("0").parse()?;
        let mut len = 0u64;
        loop {
            line.clear();
            self.stream.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse()?;
            }
        }
        let copied = std::io::copy(&mut (&mut self.stream).take(len), &mut std::io::sink())?;
        Ok((status, copied))
    }
}

/// The service as a child process on a free loopback port.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(media: &Path, derived: &Path, extra: &[(&str, &str)]) -> BenchResult<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut command = Command::new(BIN);
    command
        .env("MEDIA_DIR", media)
        .env("DERIVED_DIR", derived)
        .env("DERIVED_MAX_BYTES", "16GiB")
        .env("PORT", port.to_string())
        .env("WORKERS", "1")
        .env("FFMPEG", "ffmpeg")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra {
        command.env(k, v);
    }
    let child = command.spawn()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err("the server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Server { child, addr })
}

struct Corpus {
    files: Vec<oip_media::sample::CorpusFile>,
    total: u64,
}

fn main() -> BenchResult<()> {
    if !have("ffmpeg") {
        println!("transcode bench skipped: ffmpeg is not installed (apt-get install ffmpeg)");
        return Ok(());
    }
    let files = env_num("BENCH_FILES", 60) as usize;
    let rounds = env_num("BENCH_ROUNDS", 30);
    let crfs: Vec<u32> = std::env::var("BENCH_CRFS")
        .ok()
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_default();
    let dir = tempfile::tempdir()?;
    let media = dir.path().join("media");
    let derived = dir.path().join("derived");
    let written = oip_media::sample::write_corpus(&media, "bench", files, 1)?;
    let corpus = Corpus {
        total: written.iter().map(|f| f.len).sum(),
        files: written,
    };
    let gif_mb = corpus.total as f64 / 1e6;
    println!(
        "corpus: {} GIFs, {:.1} MB ({} × 180 px, {} × 360 px, {} × 720 px); ffmpeg {}",
        corpus.files.len(),
        gif_mb,
        corpus.files.iter().filter(|f| f.width == 180).count(),
        corpus.files.iter().filter(|f| f.width == 360).count(),
        corpus.files.iter().filter(|f| f.width == 720).count(),
        ffmpeg_version()
    );

    println!(
        "\n## Bytes and encode throughput (libx264 CRF 28, VP9 CRF 40, WebP q75; 1 job, 1 thread)\n"
    );
    println!(
        "| format | variant bytes / GIF bytes | 180 px | 360 px | 720 px | wall s | CPU s | GIF-MB per CPU-s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (format, ext) in [("mp4", "mp4"), ("webm", "webm"), ("webp", "webp")] {
        let (wall, cpu) = pre_make(&media, &derived, format, 28)?;
        let ratio = |width: Option<u16>| -> String {
            let (mut gif, mut var) = (0u64, 0u64);
            for f in corpus
                .files
                .iter()
                .filter(|f| width.is_none_or(|w| f.width == w))
            {
                if let Some(v) = variant_of(&derived, &f.fs_path, ext) {
                    gif += f.len;
                    var += std::fs::metadata(v).map(|m| m.len()).unwrap_or(0);
                }
            }
            if gif == 0 {
                "–".to_owned()
            } else {
                format!("{:.3}", var as f64 / gif as f64)
            }
        };
        println!(
            "| {format} | **{}** | {} | {} | {} | {wall:.1} | {cpu:.1} | {:.2} |",
            ratio(None),
            ratio(Some(180)),
            ratio(Some(360)),
            ratio(Some(720)),
            gif_mb / cpu
        );
    }

    println!("\n## First-frame quality of the MP4 vs the GIF (flattened onto white)\n");
    println!("| MP4 CRF | bytes / GIF | PSNR mean dB | PSNR min dB | SSIM mean | SSIM min |");
    println!("|---|---|---|---|---|---|");
    let mut sweeps = vec![(28u32, derived.clone())];
    for crf in crfs {
        let d = dir.path().join(format!("derived-crf{crf}"));
        pre_make(&media, &d, "mp4", crf)?;
        sweeps.push((crf, d));
    }
    for (crf, d) in &sweeps {
        let (mut psnrs, mut ssims, mut gif, mut var) = (Vec::new(), Vec::new(), 0u64, 0u64);
        for f in &corpus.files {
            let Some(mp4) = variant_of(d, &f.fs_path, "mp4") else {
                continue;
            };
            gif += f.len;
            var += std::fs::metadata(&mp4)?.len();
            if let Some((psnr, ssim)) = first_frame_quality(&f.fs_path, &mp4) {
                psnrs.push(psnr);
                ssims.push(ssim);
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let min = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
        println!(
            "| {crf} | {:.3} | {:.2} | {:.2} | {:.4} | {:.4} |",
            var as f64 / gif.max(1) as f64,
            mean(&psnrs),
            min(&psnrs),
            mean(&ssims),
            min(&ssims)
        );
    }

    // Serving: every GIF, every ready MP4 through `?format=mp4`, and the same MP4 bytes
    // copied under `web/` as plain files — interleaved rounds on one connection. The
    // third kind has the MP4's sizes and the GIF's route, so it tells the variant
    // route's own cost apart from the cost of sending fewer bytes per request.
    let copies = media.join("web").join("mp4copy");
    std::fs::create_dir_all(&copies)?;
    let mut kinds: [(&str, Vec<String>); 3] = [
        ("GIF", vec![]),
        ("MP4 variant (?format=mp4)", vec![]),
        ("same MP4 bytes as plain files", vec![]),
    ];
    for (i, f) in corpus.files.iter().enumerate() {
        let Some(mp4) = variant_of(&derived, &f.fs_path, "mp4") else {
            continue;
        };
        std::fs::copy(&mp4, copies.join(format!("{i}.mp4")))?;
        kinds[0].1.push(encode(&f.url_path));
        kinds[1]
            .1
            .push(format!("{}?format=mp4", encode(&f.url_path)));
        kinds[2].1.push(format!("/media/mp4copy/{i}.mp4"));
    }
    let server = start_server(&media, &derived, &[])?;
    let pid = server.child.id();
    let mut client = Client::connect(server.addr)?;
    for (_, paths) in &kinds {
        for path in paths {
            client.get(path)?;
        }
    }
    let mut spent = [(0.0f64, 0u64, 0u64); 3];
    for _ in 0..rounds {
        for (k, (_, paths)) in kinds.iter().enumerate() {
            let cpu = process_cpu(pid);
            for path in paths {
                let (status, n) = client.get(path)?;
                if status != 200 {
                    return Err(format!("{path}: {status}").into());
                }
                spent[k].1 += n;
                spent[k].2 += 1;
            }
            spent[k].0 += process_cpu(pid) - cpu;
        }
    }
    let per_byte = |(cpu, bytes, _): (f64, u64, u64)| cpu * 1e9 / bytes.max(1) as f64;
    let per_request = |(cpu, _, requests): (f64, u64, u64)| cpu * 1e6 / requests.max(1) as f64;
    println!(
        "\n## Serving (server process CPU from schedstat, 1 worker, loopback, {rounds} interleaved rounds)\n"
    );
    println!(
        "| what | requests | bytes sent | server CPU s | CPU ns per byte | CPU µs per request |"
    );
    println!("|---|---|---|---|---|---|");
    for (k, (what, _)) in kinds.iter().enumerate() {
        println!(
            "| {what} | {} | {} | {:.3} | {:.3} | {:.1} |",
            spent[k].2,
            spent[k].1,
            spent[k].0,
            per_byte(spent[k]),
            per_request(spent[k])
        );
    }
    println!(
        "\nMP4 variant vs the same bytes as plain files: **{:.2}×** CPU per byte. \
         MP4 variant vs GIF: {:.2}× CPU per byte, {:.2}× CPU per request, {:.3}× bytes per request.",
        per_byte(spent[1]) / per_byte(spent[2]),
        per_byte(spent[1]) / per_byte(spent[0]),
        per_request(spent[1]) / per_request(spent[0]),
        spent[1].1 as f64 / spent[0].1.max(1) as f64
    );
    drop(client);
    drop(server);

    // Hostile burst: variants that do not exist, far more than the queue holds.
    let empty = dir.path().join("derived-empty");
    let server = start_server(
        &media,
        &empty,
        &[
            ("TRANSCODE_QUEUE", "8"),
            ("TRANSCODE_MAX_WAITING", "64"),
            ("TRANSCODE_WAIT", "2s"),
            ("TRANSCODE_THREADS", "1"),
        ],
    )?;
    let pid = server.child.id();
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_anon_kib(pid);
    let burst = 200usize;
    let started = Instant::now();
    let sampler = {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = std::sync::Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_anon_kib(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        (stop, handle)
    };
    let paths: Vec<String> = (0..burst)
        .map(|i| {
            let f = &corpus.files[i % corpus.files.len()];
            let format = ["mp4", "webm", "webp"][(i / corpus.files.len()) % 3];
            format!("{}?format={format}", encode(&f.url_path))
        })
        .collect();
    let addr = server.addr;
    let results: Vec<(u16, f64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = paths
            .iter()
            .map(|path| {
                scope.spawn(move || {
                    let t = Instant::now();
                    let status = Client::connect(addr)
                        .and_then(|mut c| c.get(path))
                        .map(|(s, _)| s)
                        .unwrap_or(0);
                    (status, t.elapsed().as_secs_f64())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, 0.0)))
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let count = |s: u16| results.iter().filter(|(st, _)| *st == s).count();
    let slowest_503 = results
        .iter()
        .filter(|(s, _)| *s == 503)
        .map(|(_, t)| *t)
        .fold(0.0, f64::max);
    std::thread::sleep(Duration::from_secs(3));
    sampler.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.1.join().unwrap_or(0);
    let after = rss_anon_kib(pid);
    println!(
        "\n## Hostile burst: {burst} concurrent requests for missing variants (queue 8, 64 waiting, 2 s wait)\n"
    );
    println!(
        "200: {}, 503: {} (slowest 503 after {:.2} s), other: {}; all answered in {elapsed:.2} s. RssAnon idle {idle} KiB, peak {peak} KiB, 3 s later {after} KiB.",
        count(200),
        count(503),
        slowest_503,
        burst - count(200) - count(503)
    );
    drop(server);
    Ok(())
}

/// Percent-encodes what a raw request line cannot carry (the corpus names have
/// parentheses, which may stay raw).
fn encode(path: &str) -> String {
    path.replace(' ', "%20")
}

fn ffmpeg_version() -> String {
    Command::new("ffmpeg")
        .arg("-version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(2).map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}
