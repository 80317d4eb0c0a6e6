//! The transcoder: MP4, WebM and WebP variants of GIFs, made once by ffmpeg off the hot
//! path and kept in the derived folder beside stills.
//!
//! - `ffmpeg`: finding ffmpeg, its encoders, and each variant's command line.
//! - `run`: one ffmpeg child process with a timeout that kills it.
//! - [`group`]: the process group each run lives in, killed and waited for as a whole.
//! - `fault`: whose fault a failure is (the GIF's, remembered; or the host's, not).
//! - [`metrics`]: jobs by outcome, queue depth, encode seconds, bytes vs the GIFs.
//! - [`cli`]: `oip-media transcode`, which pre-makes variants for a whole media tree.
//!
//! A variant is made by a *job*, and every bound is the transcoder's own, so that
//! waiting for a transcode never holds anything the GIF path needs:
//! - **single-flight** per (file version, format): concurrent requests for one variant
//!   share one job (`crate::flight`), which runs in its own task, so a client that goes
//!   away does not cancel the work others wait for;
//! - **bounded workers** (`--transcode-workers` ffmpeg processes at once) and a **bounded
//!   queue** of jobs waiting for one (`--transcode-queue`); a job that does not fit is
//!   refused at once (503), never queued;
//! - a **per-job timeout** (`--transcode-timeout`) that kills ffmpeg and everything it
//!   started (its own process group); a worker is given back only once no process of
//!   its job is left, and [`Transcoder::stop`] (shutdown, an interrupted CLI) kills
//!   every running job's group the same way;
//! - **bounded waiting**: at most `--transcode-max-waiting` requests wait, each at most
//!   `--transcode-wait`; past either, 503 + `Retry-After` while the job goes on;
//! - **limits first**: the GIF's frame, dimension and pixel limits (`--gif-max-*`) are
//!   checked before ffmpeg starts;
//! - **the GIF's own failures remembered** for `--transcode-failure-ttl` (422), so a
//!   GIF ffmpeg cannot read is not re-encoded on every request; the host's failures
//!   (disk full, no permission, a missing folder, a killed encoder, no ffmpeg to start)
//!   are not remembered (503 + `Retry-After`), and a timeout only for
//!   `TIMEOUT_REMEMBERED` (503, with its reason on every answer meanwhile);
//! - the output goes to a `0600` temp file in the derived folder and is renamed into
//!   place, under the byte bound and eviction shared with stills
//!   (`crate::gif::derived`).
//!
//! Variant file names carry the source's identity (device, inode, size, mtime), the
//! format and the encoder's tag, so a replaced GIF or a change of encoder never serves
//! an old variant.
pub mod cli;
pub(crate) mod fault;
pub(crate) mod ffmpeg;
mod format;
pub mod group;
pub mod metrics;
pub(crate) mod run;
pub(crate) mod settings;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admission::{Bound, Place};
use crate::flight::SingleFlight;
use crate::gif::derived::{self, DerivedDir};
use crate::gif::meta::GifInfo;
use crate::gif::{GifError, GifLimits};
use crate::settings::{flag, option_name};
use crate::store::FileIdentity;
pub(crate) use fault::Fault;
pub(crate) use ffmpeg::{EncodeSettings, Ffmpeg, Recipe};
pub use format::VariantFormat;
use metrics::{Outcome, TranscodeMetrics};
pub(crate) use settings::TranscodeSettings;

/// Why a variant cannot be had (each maps to one status in `routes::variant`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VariantError {
    /// No ffmpeg, or it lacks the format's encoder: 501.
    #[error("{0}")]
    Unavailable(Arc<str>),
    /// The GIF's own fault: it is invalid or over a limit, or ffmpeg could not encode
    /// it; remembered for `--transcode-failure-ttl`: 422.
    #[error("{0}")]
    Failed(Arc<str>),
    /// ffmpeg ran past the job timeout and was killed; remembered for
    /// `TIMEOUT_REMEMBERED` only, with this reason: 503 + `Retry-After`.
    #[error("{0}")]
    TimedOut(Arc<str>),
    /// The host's fault, for now (disk full, no permission, a missing folder, a killed
    /// encoder, ffmpeg that cannot start): not remembered; 503 + `Retry-After`.
    #[error("{reason}")]
    Host {
        /// Which kind of trouble (its public wording is `Fault::public_reason`).
        fault: Fault,
        /// What happened, for the log (may name paths).
        reason: Arc<str>,
    },
    /// Too many transcodes queued or requests waiting: 503 + `Retry-After`.
    #[error("transcoder busy: {0}")]
    Busy(&'static str),
    /// The job is still running after the longest wait: 503 + `Retry-After`.
    #[error("still transcoding")]
    StillWorking,
    /// The GIF changed while it was being read: 503, try again.
    #[error("the file changed while it was being read")]
    SourceChanged,
    /// An internal error (a job's task failed, no runtime): 500.
    #[error("{0}")]
    Io(Arc<str>),
}

impl VariantError {
    /// Whose fault it is, for failures of a job.
    pub fn fault(&self) -> Option<Fault> {
        match self {
            VariantError::Failed(_) => Some(Fault::Source),
            VariantError::TimedOut(_) => Some(Fault::TimedOut),
            VariantError::Host { fault, .. } => Some(*fault),
            _ => None,
        }
    }

    /// True when the failure is the GIF's own, and may be remembered with its identity.
    pub fn is_source_fault(&self) -> bool {
        self.fault().is_some_and(Fault::is_source_fault)
    }

    /// A failure of `what` with the I/O `error`, classified by its kind.
    fn io(what: &str, error: &std::io::Error) -> VariantError {
        VariantError::of(Fault::of_io(error), format!("{what}: {error}"))
    }

    /// A failure of kind `fault`: the GIF's (`Failed`) or the host's.
    fn of(fault: Fault, reason: String) -> VariantError {
        match fault {
            Fault::Source => VariantError::Failed(reason.into()),
            Fault::TimedOut => VariantError::TimedOut(reason.into()),
            fault => VariantError::Host {
                fault,
                reason: reason.into(),
            },
        }
    }
}

/// How long a timeout is remembered (at most; never longer than
/// `--transcode-failure-ttl`): long enough that a burst of requests for a GIF that
/// takes too long does not start a burst of jobs, short enough that a timeout caused by
/// a busy host is not held against the GIF.
pub(crate) const TIMEOUT_REMEMBERED: Duration = Duration::from_secs(10);

/// What is known about a variant without doing any work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// It exists in the derived folder under `name`, `len` bytes long.
    Ready {
        /// Its file name in the derived folder.
        name: String,
        /// Its size.
        len: u64,
    },
    /// It failed recently: the GIF's fault, or a timeout (remembered briefly).
    Failed(VariantError),
    /// Not made yet (`name` is where it will be).
    Missing {
        /// Its future file name.
        name: String,
    },
}

/// A variant made: its name in the derived folder and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    /// File name in the derived folder.
    pub name: String,
    /// Bytes.
    pub len: u64,
}

/// Where the GIF of a job is.
#[derive(Debug, Clone)]
pub enum GifSource {
    /// Its real, confined path (the route resolved it).
    Path(PathBuf),
    /// `relative` under `root`, resolved and confined by the job itself (off the
    /// request: `--auto-format` queues a job without waiting for any filesystem call).
    Under {
        /// The media root.
        root: crate::store::Root,
        /// The checked path under it.
        relative: PathBuf,
    },
}

/// What to make: the `format` variant of the GIF `source` whose identity is `identity`.
#[derive(Debug, Clone)]
pub struct VariantJob {
    /// The GIF.
    pub source: GifSource,
    /// Its identity when the route looked it up (its variant's name derives from it).
    pub identity: FileIdentity,
    /// The variant asked for.
    pub format: VariantFormat,
    /// The GIF's metadata when the caller has it already (limits already checked);
    /// otherwise the job reads it, and checks the limits, before ffmpeg starts.
    pub info: Option<GifInfo>,
}

/// How long a caller waits for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A request: in the transcoder's bounded admission, for `--transcode-wait`.
    Bounded,
    /// `oip-media transcode`: until the job ends (it has its own timeout).
    UntilDone,
}

/// The encoders in use, or why there are none.
#[derive(Debug)]
struct Engine {
    ffmpeg: Ffmpeg,
    /// The recipe of each format, or why that format is unavailable.
    recipes: [Result<Recipe, Arc<str>>; 3],
    /// What start-up decided about the configured MP4 encoder, for logs and `/readyz`.
    notes: Vec<String>,
}

/// What a running job needs, shared with its task.
struct Inner {
    program: String,
    settings: EncodeSettings,
    limits: GifLimits,
    timeout: Duration,
    derived: Arc<DerivedDir>,
    workers: Arc<tokio::sync::Semaphore>,
    /// How many workers there are (the semaphore's permits).
    worker_count: u32,
    /// Jobs waiting for a worker (`--transcode-queue`), mirrored in the `queued` gauge.
    queued: Arc<Bound>,
    /// The GIF's own failures, by variant name.
    failures: moka::sync::Cache<String, Arc<str>>,
    /// Timeouts, by variant name, for [`TIMEOUT_REMEMBERED`].
    timeouts: moka::sync::Cache<String, Arc<str>>,
    /// Turns true when the transcoder stops: every run kills its group and ends.
    stop: tokio::sync::watch::Sender<bool>,
    metrics: TranscodeMetrics,
}

impl Inner {
    /// A failure remembered for the variant `name`.
    fn remembered(&self, name: &str) -> Option<VariantError> {
        if let Some(reason) = self.failures.get(name) {
            return Some(VariantError::Failed(reason));
        }
        self.timeouts.get(name).map(VariantError::TimedOut)
    }
}

/// The transcoder of the process: one per service (and one per `oip-media transcode`).
pub struct Transcoder {
    engine: Result<Engine, Arc<str>>,
    inner: Arc<Inner>,
    flights: SingleFlight<Result<Made, VariantError>>,
    wait: Duration,
    /// Requests waiting for a transcode (`--transcode-max-waiting`), mirrored in the
    /// `waiting` gauge.
    waiting: Bound,
}

impl Transcoder {
    /// Finds ffmpeg and its encoders (blocking: two or three short child processes,
    /// once at start-up) and logs what was found. Never fails: without a usable ffmpeg
    /// the transcoder exists and says why every variant is unavailable.
    /// `limits` are the GIF limits a source must meet; `max_file_size`
    /// (`--max-file-size`) bounds a variant's bytes with the derived folder's own bound.
    pub fn new(
        t: &TranscodeSettings,
        limits: GifLimits,
        max_file_size: u64,
        derived: Arc<DerivedDir>,
    ) -> Transcoder {
        let engine = discover(&t.ffmpeg, &t.mp4_encoder);
        match &engine {
            Ok(engine) => {
                let formats: Vec<String> = VariantFormat::ALL
                    .iter()
                    .zip(&engine.recipes)
                    .map(|(f, r)| match r {
                        Ok(recipe) => format!("{f}={}", recipe.encoder),
                        Err(_) => format!("{f}=unavailable"),
                    })
                    .collect();
                tracing::info!(
                    ffmpeg = engine.ffmpeg.program(),
                    version = engine.ffmpeg.version(),
                    encoders_found = engine.ffmpeg.interesting_encoders().join(", "),
                    formats = formats.join(", "),
                    "transcoder ready"
                );
                for note in &engine.notes {
                    tracing::warn!("{note}");
                }
            }
            Err(reason) => tracing::warn!(
                %reason,
                "transcoder unavailable: GIFs are served as usual, ?format= variants answer 501"
            ),
        }
        // `stop` takes every permit at once, which tokio counts in u32.
        let worker_count = u32::try_from(t.transcode_workers.max(1)).unwrap_or(u32::MAX);
        let failure_ttl = t.transcode_failure_ttl.max(Duration::from_millis(1));
        let settings = EncodeSettings {
            mp4_crf: t.mp4_crf,
            threads: t.transcode_threads.max(1),
            max_output_bytes: max_file_size.min(derived.max_bytes()),
        };
        let metrics = TranscodeMetrics::default();
        let queued = Bound::with_gauge(t.transcode_queue, metrics.queued().clone());
        let waiting = Bound::with_gauge(t.transcode_max_waiting, metrics.waiting().clone());
        Transcoder {
            engine,
            inner: Arc::new(Inner {
                program: t.ffmpeg.clone(),
                settings,
                limits,
                timeout: t.transcode_timeout,
                derived,
                workers: Arc::new(tokio::sync::Semaphore::new(worker_count as usize)),
                worker_count,
                queued: Arc::new(queued),
                failures: moka::sync::Cache::builder()
                    .max_capacity(4096)
                    .time_to_live(failure_ttl)
                    .build(),
                timeouts: moka::sync::Cache::builder()
                    .max_capacity(4096)
                    .time_to_live(failure_ttl.min(TIMEOUT_REMEMBERED))
                    .build(),
                stop: tokio::sync::watch::Sender::new(false),
                metrics,
            }),
            flights: SingleFlight::new(),
            wait: t.transcode_wait,
            waiting,
        }
    }

    /// True when at least one format can be made.
    pub fn is_available(&self) -> bool {
        self.engine
            .as_ref()
            .is_ok_and(|e| e.recipes.iter().any(Result::is_ok))
    }

    /// The transcoder's metrics.
    pub fn metrics(&self) -> &TranscodeMetrics {
        &self.inner.metrics
    }

    /// The recipe `format` is made with, or why it cannot be made.
    pub fn recipe(&self, format: VariantFormat) -> Result<Recipe, VariantError> {
        let engine = self
            .engine
            .as_ref()
            .map_err(|reason| VariantError::Unavailable(Arc::clone(reason)))?;
        engine.recipes[format as usize]
            .clone()
            .map_err(VariantError::Unavailable)
    }

    /// The file name of the `format` variant of the file with `identity`.
    pub fn variant_name(
        &self,
        identity: FileIdentity,
        format: VariantFormat,
    ) -> Result<String, VariantError> {
        let recipe = self.recipe(format)?;
        Ok(format!(
            "variant-{}-{}.{}",
            self.inner.derived.identity_part(identity),
            recipe.tag,
            format.name()
        ))
    }

    /// What is known about a variant, without any work but a `stat`.
    pub fn known(
        &self,
        identity: FileIdentity,
        format: VariantFormat,
    ) -> Result<Known, VariantError> {
        let name = self.variant_name(identity, format)?;
        if let Some(len) = self.inner.derived.len_of(&name) {
            return Ok(Known::Ready { name, len });
        }
        if let Some(error) = self.inner.remembered(&name) {
            return Ok(Known::Failed(error));
        }
        Ok(Known::Missing { name })
    }

    /// How the variant `name` failed, while that is remembered (the GIF's fault, or a
    /// recent timeout).
    pub fn failure(&self, name: &str) -> Option<VariantError> {
        self.inner.remembered(name)
    }

    /// Stops the transcoder: no job starts ffmpeg any more, every running ffmpeg's
    /// process group is killed, and this returns once every job has ended (its
    /// processes gone, its temp file removed), or after `STOP_WITHIN`.
    pub async fn stop(&self) {
        self.inner.stop.send_replace(true);
        let all = self.inner.worker_count;
        match tokio::time::timeout(STOP_WITHIN, self.inner.workers.acquire_many(all)).await {
            Ok(_) => {}
            Err(_) => tracing::error!("transcode jobs still running {STOP_WITHIN:?} after stop"),
        }
    }

    /// Makes the variant `job` asks for unless it exists, and waits for it as `wait`
    /// says. Concurrent callers for one variant share one job.
    pub async fn make(&self, job: VariantJob, wait: Wait) -> Result<Made, VariantError> {
        let name = self.variant_name(job.identity, job.format)?;
        let recipe = self.recipe(job.format)?;
        if let Some(error) = self.inner.remembered(&name) {
            return Err(error);
        }
        let _waiting = match wait {
            Wait::Bounded => Some(self.reserve_waiting()?),
            Wait::UntilDone => None,
        };
        let (_, result) = self
            .flights
            .join(&name, || {
                start_job(Arc::clone(&self.inner), job, recipe, name.clone())
            })
            .map_err(|_| VariantError::Io("no async runtime to run the transcode on".into()))?;
        let outcome = match wait {
            Wait::Bounded => tokio::time::timeout(self.wait, result)
                .await
                .map_err(|_| VariantError::StillWorking)?,
            Wait::UntilDone => result.await,
        };
        outcome.map_err(|_| VariantError::Io("the transcode ended without an answer".into()))?
    }

    /// Starts making the variant `job` asks for, if it is not made, failed or under way,
    /// and returns at once (`--auto-format`: the GIF is served meanwhile). Subject to
    /// the queue bound like any job; returns false when it was not started.
    pub fn make_in_background(&self, job: VariantJob) -> bool {
        let (Ok(name), Ok(recipe)) = (
            self.variant_name(job.identity, job.format),
            self.recipe(job.format),
        ) else {
            return false;
        };
        if self.inner.remembered(&name).is_some() {
            return false;
        }
        self.flights
            .join(&name, || {
                start_job(Arc::clone(&self.inner), job, recipe, name.clone())
            })
            .is_ok()
    }

    /// A place among the waiting requests, given back when its wait ends however it
    /// ends, or `Busy`.
    fn reserve_waiting(&self) -> Result<Place<&Bound>, VariantError> {
        self.waiting.enter().ok_or(VariantError::Busy(
            "too many requests waiting for transcodes",
        ))
    }

    /// The transcoder's state for `/readyz`: never fails readiness, since GIFs do not
    /// depend on it.
    pub fn status(&self) -> serde_json::Value {
        let queue = serde_json::json!({
            "queued": self.inner.queued.len(),
            "running": self.inner.metrics.running().get(),
            "waitingRequests": self.waiting.len(),
        });
        match &self.engine {
            // The discovery error names ffmpeg's path and an I/O error: the start-up log
            // has it; `/readyz` says which kind of "no".
            Err(reason) => serde_json::json!({
                "available": false,
                "reason": if reason.starts_with(TURNED_OFF) {
                    TURNED_OFF
                } else {
                    "ffmpeg cannot be used (see the oip-media log)"
                },
            }),
            Ok(engine) => {
                let mut formats = serde_json::Map::new();
                for (format, recipe) in VariantFormat::ALL.iter().zip(&engine.recipes) {
                    formats.insert(
                        format.name().to_owned(),
                        match recipe {
                            Ok(recipe) => serde_json::json!(recipe.encoder),
                            Err(reason) => serde_json::json!({ "unavailable": reason.as_ref() }),
                        },
                    );
                }
                serde_json::json!({
                    "available": self.is_available(),
                    "ffmpegVersion": engine.ffmpeg.version(),
                    "encodersFound": engine.ffmpeg.interesting_encoders(),
                    "formats": formats,
                    "notes": engine.notes,
                    "jobs": queue,
                })
            }
        }
    }
}

/// How long [`Transcoder::stop`] waits for the jobs to end: their groups' bound, and
/// a little for removing their temp files.
pub(crate) const STOP_WITHIN: Duration = Duration::from_secs(group::GONE_WITHIN.as_secs() + 2);

/// Marks an ffmpeg run in the `running` gauge for as long as it lives.
struct Running<'a>(&'a TranscodeMetrics);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running().dec();
    }
}

/// The future of one job, built synchronously by the single-flight leader: the queue
/// place is taken (or refused) before anything is spawned.
fn start_job(
    inner: Arc<Inner>,
    job: VariantJob,
    recipe: Recipe,
    name: String,
) -> futures_util::future::BoxFuture<'static, Result<Made, VariantError>> {
    use futures_util::FutureExt;
    // The job's place in the queue, taken before its task is spawned (so at most
    // `--transcode-queue` tasks ever wait for a worker), given back when it gets one.
    let Some(slot) = inner.queued.enter_owned() else {
        inner.metrics.job(job.format, Outcome::rejected);
        return async { Err(VariantError::Busy("transcode queue full")) }.boxed();
    };
    async move {
        let permit = Arc::clone(&inner.workers).acquire_owned().await;
        drop(slot);
        let stopping = || VariantError::Host {
            fault: Fault::Stopping,
            reason: "the transcoder is stopping".into(),
        };
        let _permit = permit.map_err(|_| stopping())?;
        if *inner.stop.borrow() {
            return Err(stopping());
        }
        let format = job.format;
        let result = run_job(&inner, job, recipe, &name).await;
        match &result {
            Ok((_, false)) => inner.metrics.job(format, Outcome::already_there),
            Ok((_, true)) => inner.metrics.job(format, Outcome::ok),
            Err(VariantError::Failed(reason)) => {
                inner.failures.insert(name.clone(), Arc::clone(reason));
                inner.metrics.job(format, Outcome::failed);
                tracing::warn!(variant = %name, %reason, "transcode failed: the GIF's fault");
            }
            Err(VariantError::TimedOut(reason)) => {
                inner.timeouts.insert(name.clone(), Arc::clone(reason));
                inner.metrics.job(format, Outcome::timeout);
                tracing::warn!(variant = %name, %reason, "transcode timed out");
            }
            Err(VariantError::Host { fault, reason }) => {
                inner.metrics.job(format, Outcome::host_error);
                tracing::error!(variant = %name, ?fault, %reason, "transcode failed: not the GIF's fault, not remembered");
            }
            Err(error) => tracing::error!(variant = %name, %error, "transcode failed"),
        }
        result.map(|(made, _)| made)
    }
    .boxed()
}

/// What a job finds before ffmpeg starts.
enum Prepared {
    /// The variant exists already (made by another process, or a job that just ended).
    Exists(u64),
    /// The GIF (at this real path) is within the limits, and a private temp file waits
    /// for ffmpeg's output.
    Go(PathBuf, GifInfo, derived::PendingFile),
}

/// One job, holding a worker: limits, ffmpeg into a private temp file, rename into
/// place. The flag is false when the variant turned out to exist already.
async fn run_job(
    inner: &Arc<Inner>,
    job: VariantJob,
    recipe: Recipe,
    name: &str,
) -> Result<(Made, bool), VariantError> {
    let io =
        |what: &str, e: &dyn std::fmt::Display| VariantError::Io(format!("{what}: {e}").into());
    // Limits before any work, and a temp file created 0600 before ffmpeg writes a byte.
    // The job's filesystem work runs on tokio's blocking pool, not the request path's
    // filesystem pool: it includes parsing a whole GIF, which is not the short call that
    // pool's threads are sized for, and at most `--transcode-workers` jobs do it at once.
    let prepared = {
        let inner = Arc::clone(inner);
        let (source, identity, info) = (job.source.clone(), job.identity, job.info);
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            if let Some(len) = inner.derived.len_of(&name) {
                return Ok(Prepared::Exists(len));
            }
            let path = match source {
                GifSource::Path(path) => path,
                GifSource::Under { root, relative } => root
                    .resolve(&relative)
                    .map_err(|e| VariantError::Io(format!("cannot resolve the GIF: {e}").into()))?,
            };
            let info = match info {
                Some(info) => info,
                None => crate::gif::meta::read_info(&path, identity, &inner.limits)
                    .map_err(from_gif_error)?,
            };
            let pending = inner
                .derived
                .begin(&name)
                .map_err(|e| VariantError::io("cannot create a derived file", &e))?;
            Ok(Prepared::Go(path, info, pending))
        })
        .await
        .map_err(|e| io("transcode task failed", &e))??
    };
    let (path, info, pending) = match prepared {
        Prepared::Exists(len) => {
            let made = Made {
                name: name.to_owned(),
                len,
            };
            return Ok((made, false));
        }
        Prepared::Go(path, info, pending) => (path, info, pending),
    };
    let args = ffmpeg::args(recipe, &inner.settings, &path, pending.path(), &info);
    inner.metrics.running().inc();
    let running = Running(&inner.metrics);
    let started = Instant::now();
    let ran = run::run(&inner.program, &args, inner.timeout, inner.stop.subscribe()).await;
    let seconds = started.elapsed().as_secs_f64();
    drop(running);
    let max = inner.settings.max_output_bytes;
    let identity = job.identity;
    let webp_last_delay = (job.format == VariantFormat::Webp).then_some(info.last_delay_ms);
    let committed = tokio::task::spawn_blocking(move || {
        // Dropping an uncommitted file removes it: on this thread, not the runtime's.
        // ffmpeg's words, without the two paths it was given: a GIF named "No space left
        // on device.gif" is not a full disk.
        let without_paths = |stderr: &str| {
            stderr
                .replace(&*path.to_string_lossy(), "")
                .replace(&*pending.path().to_string_lossy(), "")
        };
        let said = ran.map_err(|error| {
            let fault = match &error {
                run::RunError::Spawn(_) => Fault::Spawn,
                run::RunError::TimedOut(_) => Fault::TimedOut,
                run::RunError::Stopped => Fault::Stopping,
                run::RunError::Killed { signal } => Fault::of_signal(*signal),
                run::RunError::Failed { stderr, .. } => {
                    Fault::of_ffmpeg_output(&without_paths(stderr))
                }
            };
            VariantError::of(fault, error.to_string())
        })?;
        // ffmpeg 5.1 exits 0 when the disk fills up under it, with a truncated file and
        // the system's words on its error output: that file must not be kept.
        let fault = Fault::of_ffmpeg_output(&without_paths(&said));
        if !fault.is_source_fault() {
            return Err(VariantError::of(
                fault,
                format!("ffmpeg could not write its output: {said}"),
            ));
        }
        let len = std::fs::metadata(pending.path())
            .map_err(|e| VariantError::io("cannot read ffmpeg's output", &e))?
            .len();
        if len == 0 || len >= max {
            return Err(VariantError::Failed(
                format!(
                    "ffmpeg's output was {len} bytes (allowed: 1 to {} bytes)",
                    max - 1
                )
                .into(),
            ));
        }
        if let Some(ms) = webp_last_delay {
            ffmpeg::set_last_webp_frame_duration(pending.path(), ms).map_err(|e| {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    VariantError::Failed(format!("ffmpeg's WebP cannot be read: {e}").into())
                } else {
                    VariantError::io("cannot finish ffmpeg's WebP", &e)
                }
            })?;
        }
        // ffmpeg opened the GIF by path: had it been replaced since the route looked it
        // up, the variant would carry the old version's name with the new version's
        // pictures. Keep it only if the path still names the same file.
        let still_there = std::fs::metadata(&path).map(|m| FileIdentity::of(&m));
        if still_there.ok() != Some(identity) {
            return Err(VariantError::SourceChanged);
        }
        pending
            .commit()
            .map_err(|e| VariantError::io("cannot store the variant", &e))
    })
    .await
    .map_err(|e| io("transcode task failed", &e))??;
    inner
        .metrics
        .made(job.format, seconds, job.identity.len, committed);
    let made = Made {
        name: name.to_owned(),
        len: committed,
    };
    Ok((made, true))
}

fn from_gif_error(error: GifError) -> VariantError {
    match error {
        GifError::Invalid(_) | GifError::TooLarge(_) => {
            VariantError::Failed(error.to_string().into())
        }
        GifError::SourceChanged => VariantError::SourceChanged,
        GifError::Io(reason) => VariantError::Host {
            fault: Fault::Io,
            reason: reason.into(),
        },
        GifError::Busy(_) => VariantError::Busy("storage busy"),
        GifError::WorkersBusy(_) => VariantError::Busy("GIF workers busy"),
    }
}

/// How the reason there is no engine starts when `--ffmpeg` is empty, which `/readyz`
/// tells apart from an ffmpeg that cannot be used.
const TURNED_OFF: &str = "transcoding is turned off";

/// Finds ffmpeg and decides the recipe of each format.
fn discover(program: &str, mp4_encoder: &str) -> Result<Engine, Arc<str>> {
    if program.trim().is_empty() {
        let setting = option_name::<TranscodeSettings>("ffmpeg");
        return Err(format!("{TURNED_OFF} ({setting} is empty)").into());
    }
    let ffmpeg = Ffmpeg::discover(program).map_err(|e| Arc::from(e.to_string()))?;
    let mut notes = Vec::new();
    let missing = |encoder: &str| -> Arc<str> {
        format!(
            "ffmpeg {} does not list the {encoder} encoder",
            ffmpeg.version()
        )
        .into()
    };
    let mut mp4 = ffmpeg::LIBX264;
    if mp4_encoder == ffmpeg::H264_NVENC {
        if !ffmpeg.has(ffmpeg::H264_NVENC) {
            notes.push(format!(
                "{} h264_nvenc: ffmpeg does not list it; using {}",
                flag::<TranscodeSettings>("mp4_encoder"),
                ffmpeg::LIBX264
            ));
        } else {
            match ffmpeg.probe(ffmpeg::H264_NVENC) {
                Ok(()) => mp4 = ffmpeg::H264_NVENC,
                Err(error) => {
                    // The note is shown by `/readyz`; ffmpeg's path and words go to the
                    // log only.
                    tracing::warn!(%error, "h264_nvenc test encode failed");
                    notes.push(format!(
                        "{} h264_nvenc: ffmpeg lists it but a test encode failed \
                         (no NVIDIA GPU or driver?); using {}",
                        flag::<TranscodeSettings>("mp4_encoder"),
                        ffmpeg::LIBX264
                    ));
                }
            }
        }
    }
    let recipes = VariantFormat::ALL.map(|format| {
        let recipe = Recipe::new(format, mp4);
        if ffmpeg.has(recipe.encoder) {
            Ok(recipe)
        } else {
            Err(missing(recipe.encoder))
        }
    });
    Ok(Engine {
        ffmpeg,
        recipes,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_gifs_own_failures_are_source_faults() {
        let os = std::io::Error::from_raw_os_error;
        for (errno, fault) in [
            (libc::ENOSPC, Fault::DiskFull),
            (libc::EDQUOT, Fault::DiskFull),
            (libc::EACCES, Fault::NoPermission),
            (libc::EROFS, Fault::NoPermission),
            (libc::ENOENT, Fault::Missing),
        ] {
            let error = VariantError::io("cannot create a derived file", &os(errno));
            assert!(
                matches!(&error, VariantError::Host { fault: f, .. } if *f == fault),
                "{error:?}"
            );
            assert!(!error.is_source_fault());
        }
        let gif = VariantError::of(Fault::Source, "ffmpeg failed: Invalid data".into());
        assert!(matches!(gif, VariantError::Failed(_)) && gif.is_source_fault());
        let slow = VariantError::of(Fault::TimedOut, "took longer than 1s".into());
        assert!(matches!(slow, VariantError::TimedOut(_)) && !slow.is_source_fault());
        let killed = VariantError::of(Fault::of_signal(libc::SIGKILL), "killed".into());
        assert_eq!(killed.fault(), Some(Fault::Killed));
        assert!(!killed.is_source_fault());
        assert_eq!(VariantError::StillWorking.fault(), None);
    }
}
