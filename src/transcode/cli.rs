//! `oip-media transcode [--formats mp4,webm] [DIR]`: pre-makes the variants of every
//! GIF under a media tree, so that no visitor waits for a first transcode.
//!
//! It uses the service's own transcoder (same recipes, limits, timeout, derived folder
//! and file names), so what it makes is exactly what the service would have made and
//! serves. Variants already there are skipped; Ctrl-C (SIGINT) or SIGTERM stops at
//! once: every ffmpeg process group is killed and waited for, the temp files are
//! removed, it says it was interrupted and exits 130 (143 for SIGTERM); a second run
//! carries on where the first stopped. Each variant that could not be made is one
//! `failed: <path> (<format>): <reason>` line on stderr, with or without a terminal.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use super::{GifSource, Known, Transcoder, VariantError, VariantFormat, VariantJob, Wait};
use crate::config::Config;
use crate::gif::derived::DerivedDir;
use crate::settings::flag;
use crate::store::FileIdentity;

/// A signal that stops the run: its name and the exit status a shell would report for
/// a death by it (128 + n).
#[derive(Debug, Clone, Copy)]
struct Interrupt {
    name: &'static str,
    status: u8,
}

/// Resolves on the first SIGINT or SIGTERM. The handlers are installed before this
/// returns (not when the future is first polled), so a signal that comes at any point
/// of the run is seen.
fn interrupts() -> std::io::Result<impl Future<Output = Interrupt>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => Interrupt { name: "SIGINT", status: 130 },
            _ = term.recv() => Interrupt { name: "SIGTERM", status: 143 },
        }
    })
}

/// One GIF found under the tree.
#[derive(Debug, Clone)]
pub struct Found {
    /// Its path (as walked, for messages).
    pub path: PathBuf,
    /// Its identity (names its variants).
    pub identity: FileIdentity,
}

/// Arguments of `oip-media transcode`.
#[derive(Debug, Clone, clap::Args)]
pub struct TranscodeCommand {
    /// Formats to make (comma list of mp4, webm, webp).
    #[arg(long, value_delimiter = ',', default_value = "mp4,webm,webp")]
    pub formats: Vec<super::VariantFormat>,

    /// Media tree to walk (default: `MEDIA_DIR`). Every `*.gif` under it, and every
    /// `<mediaId>/original` that is a GIF, gets its variants; hidden folders are skipped.
    pub dir: Option<PathBuf>,

    /// Transcodes run at once (default: `--transcode-workers`).
    #[arg(long)]
    pub jobs: Option<usize>,

    /// Interval of the progress line printed when stderr is not a terminal (`docker
    /// exec` without `-t`, CI, a log file), where the progress bar stays hidden.
    #[arg(long, default_value = "5s", value_parser = crate::settings::parse_duration)]
    pub progress_interval: std::time::Duration,
}

/// Runs the subcommand; returns the process's exit status.
pub fn run(config: Config, command: TranscodeCommand) -> ExitCode {
    let mut config = config;
    if let Some(jobs) = command.jobs {
        config.transcode.transcode_workers = jobs.max(1);
    }
    // Every job is waited for; the queue only ever holds what the workers take next.
    config.transcode.transcode_queue = config.transcode.transcode_workers.max(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("oip-media transcode: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let interrupt = match interrupts() {
            Ok(interrupt) => interrupt,
            Err(error) => {
                eprintln!("oip-media transcode: cannot handle signals: {error}");
                return ExitCode::FAILURE;
            }
        };
        let mut interrupt = std::pin::pin!(interrupt);
        transcode_tree(&config, &command, interrupt.as_mut()).await
    });
    // Every job has ended by now (on an interrupt, `Transcoder::stop` waited for them);
    // dropping the runtime drops anything left, and a dropped run still kills its group.
    runtime.shutdown_timeout(Duration::from_secs(5));
    code
}

/// The message and status of an interrupted run.
fn interrupted(interrupt: Interrupt) -> ExitCode {
    eprintln!(
        "oip-media transcode: interrupted ({}); ffmpeg stopped, temp files removed; \
         run it again to carry on",
        interrupt.name
    );
    ExitCode::from(interrupt.status)
}

async fn transcode_tree(
    config: &Config,
    command: &TranscodeCommand,
    mut interrupt: Pin<&mut impl Future<Output = Interrupt>>,
) -> ExitCode {
    // Before any job runs, an interrupt has nothing to stop.
    let transcoder = tokio::select! {
        ready = prepare(config, command) => ready,
        which = interrupt.as_mut() => return interrupted(which),
    };
    let (transcoder, derived, dir, gifs, todo, formats) = match transcoder {
        Ok(ready) => ready,
        Err(code) => return code,
    };
    println!(
        "{} GIFs under {}, {} variants ({}) into {}",
        gifs.len(),
        dir.display(),
        todo.len(),
        formats
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(", "),
        derived.root().path().display()
    );

    let bar = ProgressBar::new(todo.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta} left) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    // Without a terminal the bar draws nothing: a line every `--progress-interval` says
    // where the run is instead.
    let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut progress = tokio::time::interval_at(
        tokio::time::Instant::now() + command.progress_interval,
        command
            .progress_interval
            .max(std::time::Duration::from_millis(10)),
    );
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let total = todo.len();
    let workers = config.transcode.transcode_workers.max(1);
    let mut tally = Tally::default();
    let mut results = futures_util::stream::iter(todo)
        .map(|(gif, format)| {
            let transcoder = Arc::clone(&transcoder);
            async move {
                let outcome = one(&transcoder, &gif, format).await;
                (gif, format, outcome)
            }
        })
        .buffer_unordered(workers);
    loop {
        let next = tokio::select! {
            next = results.next() => next,
            _ = progress.tick(), if plain => {
                println!("{}", progress_line(&tally, total, started));
                continue;
            }
            which = interrupt.as_mut() => {
                bar.abandon();
                // Kill every job's process group, wait until they are gone and their
                // temp files removed, then say so.
                drop(results);
                transcoder.stop().await;
                return interrupted(which);
            }
        };
        let Some((gif, format, outcome)) = next else {
            break;
        };
        bar.set_message(
            gif.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        match outcome {
            Outcome::UpToDate => tally.up_to_date += 1,
            Outcome::Made(len) => {
                tally.made += 1;
                tally.source_bytes += gif.identity.len;
                tally.variant_bytes += len;
            }
            Outcome::Failed(reason) => {
                tally.failed += 1;
                // Printed directly: the bar's own `println` prints nothing when stderr
                // is not a terminal, and these lines matter most in logs and CI.
                bar.suspend(|| {
                    eprintln!("failed: {} ({format}): {reason}", gif.path.display());
                });
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    summary(&tally, started, &derived)
}

/// What [`prepare`] hands over: the transcoder, the derived folder, the tree, its GIFs,
/// the variants to make and the formats.
type Prepared = (
    Arc<Transcoder>,
    Arc<DerivedDir>,
    PathBuf,
    Vec<Found>,
    Vec<(Found, VariantFormat)>,
    Vec<VariantFormat>,
);

/// Opens the derived folder, finds ffmpeg and the GIFs: everything before the first
/// job. An error has been printed when it returns one.
async fn prepare(config: &Config, command: &TranscodeCommand) -> Result<Prepared, ExitCode> {
    let dir = command
        .dir
        .clone()
        .unwrap_or_else(|| config.store.media_dir.clone());
    let derived = match DerivedDir::open(
        &config.derived.derived_dir,
        config.derived.derived_max_bytes,
    ) {
        Ok(derived) => Arc::new(derived),
        Err(error) => {
            eprintln!(
                "oip-media transcode: cannot use the derived folder {} ({}): {error}",
                config.derived.derived_dir.display(),
                flag::<Config>("derived_dir")
            );
            return Err(ExitCode::FAILURE);
        }
    };
    let transcoder = {
        let config = config.clone();
        let derived = Arc::clone(&derived);
        match tokio::task::spawn_blocking(move || {
            let limits = crate::gif::GifLimits::new(&config.gif);
            Transcoder::new(
                &config.transcode,
                limits,
                config.store.max_file_size,
                derived,
            )
        })
        .await
        {
            Ok(transcoder) => Arc::new(transcoder),
            Err(error) => {
                eprintln!("oip-media transcode: {error}");
                return Err(ExitCode::FAILURE);
            }
        }
    };
    let mut formats = command.formats.clone();
    formats.sort();
    formats.dedup();
    for format in &formats {
        if let Err(error) = transcoder.recipe(*format) {
            eprintln!("oip-media transcode: cannot make {format}: {error}");
            return Err(ExitCode::FAILURE);
        }
    }
    let walked = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || find_gifs(&dir)).await
    };
    let gifs = match walked {
        Ok(Ok(gifs)) => gifs,
        Ok(Err(error)) => {
            eprintln!(
                "oip-media transcode: cannot read {}: {error}",
                dir.display()
            );
            return Err(ExitCode::FAILURE);
        }
        Err(error) => {
            eprintln!("oip-media transcode: {error}");
            return Err(ExitCode::FAILURE);
        }
    };
    let todo: Vec<(Found, VariantFormat)> = gifs
        .iter()
        .flat_map(|gif| formats.iter().map(move |f| (gif.clone(), *f)))
        .collect();
    Ok((transcoder, derived, dir, gifs, todo, formats))
}

/// One progress line: jobs done of all, failures, bytes made, time so far.
fn progress_line(tally: &Tally, total: usize, started: Instant) -> String {
    let done = tally.made + tally.up_to_date + tally.failed;
    format!(
        "progress: {done}/{total} done ({} made, {} up to date, {} failed), {} written, {:.0?} elapsed",
        tally.made,
        tally.up_to_date,
        tally.failed,
        human_bytes(tally.variant_bytes),
        std::time::Duration::from_secs(started.elapsed().as_secs())
    )
}

/// `bytes` in binary units with one decimal (`512 B`, `1.5 KiB`, `3.2 MiB`, `1.1 GiB`).
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Prints the totals and the derived folder's state; the exit status.
fn summary(tally: &Tally, started: Instant, derived: &DerivedDir) -> ExitCode {
    let ratio = if tally.source_bytes > 0 {
        tally.variant_bytes as f64 / tally.source_bytes as f64
    } else {
        0.0
    };
    println!(
        "made {} ({} from {} of GIF, {ratio:.2}x), {} up to date, {} failed, in {:.1?}",
        tally.made,
        human_bytes(tally.variant_bytes),
        human_bytes(tally.source_bytes),
        tally.up_to_date,
        tally.failed,
        started.elapsed()
    );
    let used = derived.used_bytes().unwrap_or(0);
    println!(
        "derived folder: {} of {} ({}), {} files evicted",
        human_bytes(used),
        human_bytes(derived.max_bytes()),
        flag::<Config>("derived_max_bytes"),
        derived.evicted_files()
    );
    if derived.evicted_files() > 0 {
        println!(
            "warning: the derived folder is too small to hold every variant; raise {}",
            flag::<Config>("derived_max_bytes")
        );
    }
    if tally.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[derive(Debug, Default)]
struct Tally {
    made: u64,
    up_to_date: u64,
    failed: u64,
    source_bytes: u64,
    variant_bytes: u64,
}

enum Outcome {
    UpToDate,
    Made(u64),
    Failed(String),
}

async fn one(transcoder: &Transcoder, gif: &Found, format: VariantFormat) -> Outcome {
    match transcoder.known(gif.identity, format) {
        Ok(Known::Ready { .. }) => return Outcome::UpToDate,
        Ok(Known::Failed(error)) => return Outcome::Failed(error.to_string()),
        Ok(Known::Missing { .. }) => {}
        Err(error) => return Outcome::Failed(error.to_string()),
    }
    let job = VariantJob {
        source: GifSource::Path(gif.path.clone()),
        identity: gif.identity,
        format,
        info: None,
    };
    match transcoder.make(job, Wait::UntilDone).await {
        Ok(made) => Outcome::Made(made.len),
        Err(VariantError::SourceChanged) => {
            Outcome::Failed("the file changed while it was read; run again".to_owned())
        }
        Err(error) => Outcome::Failed(error.to_string()),
    }
}

/// Every GIF under `dir`: `*.gif` files (any case) and `original` files (the
/// content-addressed store's) that start with a GIF signature. Hidden files and
/// folders (the derived folder, temp files) are skipped, and symlinked folders are not
/// followed (no cycles). Sorted by path, so runs are repeatable. Blocking.
pub(crate) fn find_gifs(dir: &Path) -> std::io::Result<Vec<Found>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder)?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
                continue;
            }
            let by_name = path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gif"))
                || name == "original";
            if !by_name || !crate::gif::meta::looks_like_gif(&path).unwrap_or(false) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_file() {
                found.push(Found {
                    path,
                    identity: FileIdentity::of(&meta),
                });
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_gifs_by_name_and_signature_and_skips_hidden_things() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let gif = b"GIF89a\x01\x00\x01\x00";
        for (path, bytes) in [
            ("web/p/a.gif", &gif[..]),
            ("web/p/B.GIF", &gif[..]),
            ("web/p/fake.gif", b"\x89PNG...."),
            ("web/p/c.png", &gif[..]),
            ("0123/original", &gif[..]),
            ("4567/original", b"ID3 mp3"),
            (".oip-media-derived/variant.gif", &gif[..]),
            ("web/.hidden.gif", &gif[..]),
        ] {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        let found: Vec<String> = find_gifs(root)
            .unwrap()
            .iter()
            .map(|f| {
                f.path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(found, ["0123/original", "web/p/B.GIF", "web/p/a.gif"]);
    }
}
