//! The one place filesystem calls that can block are made: a small pool of dedicated
//! threads, bounded in threads, in queue length and in how long a request waits.
//!
//! # Why
//! An `open()`, `stat()` or `read()` can block for as long as the kernel likes: a FIFO
//! waits for a writer, a hung network mount waits for its server. Run on an async worker,
//! one such call freezes every connection that worker serves — with two workers, two
//! requests stop the service, `/healthz` included. Everything that touches the
//! filesystem on a request path (opening and mapping a file on a cache miss, the `stat`
//! that revalidates a cached mapping, manifest reads, GIF sniffing, confinement checks,
//! the derived folder's writes and scans, `/readyz`'s directory checks) therefore runs
//! here, and the request waits for it asynchronously.
//!
//! A thread stuck in a slow syscall stays stuck: nothing can interrupt it. The bounds are
//! what keep that from spreading:
//! - **threads** (`--fs-threads`): at most this many calls are in the kernel at once, so
//!   a hung mount costs that many threads, never the async workers;
//! - **queue** (`--fs-queue`): jobs waiting for a thread; past it a request is refused
//!   at once ([`FsPoolError::QueueFull`]);
//! - **wait** (`--fs-timeout`): the longest a request waits for its job (queued and
//!   running together); past it the request gets its answer ([`FsPoolError::TimedOut`])
//!   and the job, if it has not started yet, is skipped by the thread that picks it up.
//!
//! Routes turn a refusal into `503` + `Retry-After`, never a hung request. `/metrics`
//! shows busy threads, queued jobs, refusals and skipped jobs.
//!
//! # Why not `tokio::task::spawn_blocking` behind a semaphore
//! A semaphore in front of tokio's blocking pool would bound our share of its 512
//! threads just as well, but:
//! - tokio cannot abandon a blocking task: dropping the runtime **waits forever** for
//!   every `spawn_blocking` call to return (tokio's `Runtime` docs, "Shutdown"). One
//!   `open()` stuck on a dead NFS server would turn SIGTERM into a hang until the
//!   orchestrator's SIGKILL. These threads are detached: a stuck one is left behind at
//!   exit, and the process still stops within `--shutdown-grace`;
//! - that pool is shared with everything else that blocks (DNS lookups of the HTTP
//!   clients, still rendering, `tokio::fs`); a dedicated pool keeps a slow mount from
//!   delaying those, and those from delaying a `stat`;
//! - named threads (`oip-fs-N`) show in `top -H` and `/proc/<pid>/task`, so "which
//!   syscall is stuck" is one `cat /proc/<pid>/task/<tid>/stack` away, and their count
//!   (and stack memory) is fixed at start-up.
//!
//! The queue is a `crossbeam-channel` bounded channel (a well-kept MPMC queue): a job
//! waits in it until a thread takes it, so admitted jobs never exceed threads + queue.
//! (In a burst, an idle thread that has not yet woken up to take a job does not free
//! its slot, so slightly fewer may be admitted; the bound is what matters.)
//!
//! # Cost
//! A job costs a channel send, a thread wake-up and a oneshot reply: about 7,000
//! instructions more than the same call made inline (BENCHMARKS.md). The hot path never
//! pays it: a cached mapping within its revalidation window is served with no syscall
//! and no hop at all, and hot files are re-`stat`ed ahead of their window's end in
//! batches, one job for many files (see `store`).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

use crate::metrics::{ReadAtScrape, by_kind};
use crate::settings::{Invalid, at_least_one, flag, not_zero, parse_duration};

/// Stack of each pool thread. Jobs are shallow (a path walk, an `open`, a `stat`, a
/// 64 KiB read); parsing and decoding happen elsewhere. Only touched pages count in
/// RssAnon, so this bounds address space more than memory.
const THREAD_STACK: usize = 256 * 1024;

/// Bounds of the pool every filesystem call of a request runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Filesystem calls")]
pub struct FsPoolSettings {
    /// Threads that make every filesystem call of a request (open, stat, manifest and directory
    /// reads), so none runs on an async worker.
    ///
    /// On a local disk each call takes microseconds and a few threads keep up with any load;
    /// the bound matters when the filesystem hangs (a network mount, a FIFO): then at most this
    /// many calls are stuck, and the async workers, `/healthz` and cached files keep answering.
    #[arg(long, env = "FS_THREADS", default_value_t = 8)]
    pub fs_threads: usize,

    /// Filesystem calls allowed to wait for a thread; past it a request that needs one gets 503
    /// + `Retry-After` at once.
    ///
    /// 1024 is `--max-in-flight` + `--max-queue` at their defaults, so on a healthy disk the
    /// media limiter sheds before this fills.
    #[arg(long, env = "FS_QUEUE", default_value_t = 1024)]
    pub fs_queue: usize,

    /// Longest a request waits for its filesystem call (queued and running); then 503.
    ///
    /// Longest a request waits for its filesystem call (queued and running); past it the
    /// request gets 503 + `Retry-After` (a cached file is served as it is, see
    /// `--revalidate-window`).
    ///
    /// A loaded local disk answers well within it; a call that takes longer means the
    /// filesystem is in trouble.
    #[arg(long, env = "FS_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub fs_timeout: Duration,
}

impl FsPoolSettings {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        at_least_one("fs_threads", self.fs_threads)?;
        not_zero("fs_timeout", self.fs_timeout)
    }
}

/// Why a job gave no result. `QueueFull` and `TimedOut` mean "the filesystem is slow or
/// the pool is saturated: try again shortly" (503); `Failed` is a bug (500).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FsPoolError {
    /// Every thread was busy and the queue full: refused at once.
    #[error("filesystem pool full")]
    QueueFull,
    /// The job did not finish within `--fs-timeout`.
    #[error("filesystem call timed out")]
    TimedOut,
    /// The job panicked (a bug); its thread lives on.
    #[error("filesystem job failed")]
    Failed,
}

/// A unit of work for a pool thread.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// Counters of the pool, for metrics and tests.
#[derive(Debug, Default)]
pub struct FsPoolCounters {
    /// Jobs run to completion (a result was handed back, or the caller had gone).
    pub completed: Counter,
    /// Jobs skipped because their caller stopped waiting before a thread was free.
    pub abandoned: Counter,
    /// Jobs refused because every thread was busy and the queue full.
    pub rejected: Counter,
    /// Callers that stopped waiting after `--fs-timeout`.
    pub timed_out: Counter,
    /// Jobs that panicked.
    pub failed: Counter,
}

/// State shared by the handle and the threads.
#[derive(Debug, Default)]
struct Shared {
    busy: AtomicUsize,
    counters: FsPoolCounters,
    stall: Stall,
}

/// The test hook: while set, each job sleeps before it runs, as if the filesystem were
/// hung. Cleared, sleeping jobs wake at once, so tests end promptly. Also the GIF
/// workers' hook (slow renders), hence `pub(crate)`.
#[derive(Debug, Default)]
pub(crate) struct Stall {
    until_cleared: Mutex<Option<Duration>>,
    changed: Condvar,
}

impl Stall {
    /// Sets (`Some`, the longest a job sleeps) or clears (`None`, waking sleepers) it.
    pub(crate) fn set(&self, stall: Option<Duration>) {
        let mut current = self
            .until_cleared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *current = stall;
        self.changed.notify_all();
    }

    /// Sleeps while a stall is set, for at most its duration.
    pub(crate) fn wait(&self) {
        let mut current = self
            .until_cleared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(longest) = *current else { return };
        let deadline = Instant::now() + longest;
        while current.is_some() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            current = match self.changed.wait_timeout(current, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// The bounded pool of filesystem threads. Cheap to clone; the threads stop once every
/// clone is dropped (a thread stuck in a syscall ends when the syscall does).
#[derive(Debug, Clone)]
pub struct FsPool {
    jobs: Sender<Job>,
    // A receiving end for `/metrics` to count waiting jobs; it keeps no thread alive
    // (threads stop when every sender is gone).
    queue: Receiver<Job>,
    shared: Arc<Shared>,
    settings: FsPoolSettings,
}

impl FsPool {
    /// Starts `settings.fs_threads` threads (at least one).
    pub fn new(settings: FsPoolSettings) -> std::io::Result<FsPool> {
        let threads = settings.fs_threads.max(1);
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(settings.fs_queue);
        let shared = Arc::new(Shared::default());
        for n in 0..threads {
            let queue = queue.clone();
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("oip-fs-{n}"))
                .stack_size(THREAD_STACK)
                .spawn(move || work(&queue, &shared))?;
        }
        Ok(FsPool {
            jobs,
            queue,
            shared,
            settings: FsPoolSettings {
                fs_threads: threads,
                ..settings
            },
        })
    }

    /// Runs `job` on a pool thread and waits for its result, within the pool's bounds.
    /// Dropping the returned future (the client went away) is safe: a job that has not
    /// started is skipped, one that has runs to its end and its result is dropped.
    pub async fn run<T, F>(&self, job: F) -> Result<T, FsPoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let shared = Arc::clone(&self.shared);
        let job: Job = Box::new(move || {
            if reply.is_closed() {
                shared.counters.abandoned.inc();
                return;
            }
            shared.stall.wait();
            // A panic drops `reply`, which the caller sees as `Failed`; the thread lives.
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(job));
            match outcome {
                Ok(value) => {
                    shared.counters.completed.inc();
                    let _ = reply.send(value);
                }
                Err(_) => {
                    shared.counters.failed.inc();
                }
            }
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.counters.rejected.inc();
                return Err(FsPoolError::QueueFull);
            }
        }
        match tokio::time::timeout(self.settings.fs_timeout, result).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(FsPoolError::Failed),
            Err(_) => {
                self.shared.counters.timed_out.inc();
                Err(FsPoolError::TimedOut)
            }
        }
    }

    /// The bounds the pool runs with.
    pub fn settings(&self) -> FsPoolSettings {
        self.settings
    }

    /// Threads running a job now (a stuck one included).
    pub fn busy(&self) -> usize {
        self.shared.busy.load(Ordering::Relaxed)
    }

    /// Jobs waiting for a thread now (including ones whose caller has given up, until
    /// a thread discards them).
    pub fn queued(&self) -> usize {
        self.jobs.len()
    }

    /// Counters, for metrics.
    pub fn counters(&self) -> &FsPoolCounters {
        &self.shared.counters
    }

    /// Test hook: from now on every job sleeps up to `stall` before it runs, as if the
    /// filesystem had hung; `None` ends the stall and wakes sleeping jobs at once. Not
    /// a setting: it exists so tests can show what the bounds do when the filesystem
    /// stops answering, which no temp folder can be made to do.
    #[doc(hidden)]
    pub fn inject_stall(&self, stall: Option<Duration>) {
        self.shared.stall.set(stall);
    }
}

impl FsPool {
    /// Registers the pool's metrics once: configured bounds, busy threads and queued jobs
    /// (read at scrape time), and jobs by outcome (refusals and timeouts are what turned
    /// into 503s). The gauges hold the shared state, not a handle, so the registry never
    /// keeps the threads alive.
    pub fn register(&self, registry: &mut Registry) {
        let settings = self.settings;
        registry.register(
            "fs_pool_threads",
            format!(
                "Filesystem threads ({})",
                flag::<FsPoolSettings>("fs_threads")
            ),
            ReadAtScrape::gauge(move || settings.fs_threads as u64),
        );
        registry.register(
            "fs_pool_queue_limit",
            format!(
                "Filesystem calls allowed to wait for a thread ({})",
                flag::<FsPoolSettings>("fs_queue")
            ),
            ReadAtScrape::gauge(move || settings.fs_queue as u64),
        );
        let shared = Arc::clone(&self.shared);
        registry.register(
            "fs_pool_busy",
            "Filesystem threads running a call now (stuck ones included)",
            ReadAtScrape::gauge(move || shared.busy.load(Ordering::Relaxed) as u64),
        );
        let queue = self.queue.clone();
        registry.register(
            "fs_pool_queued",
            "Filesystem calls waiting for a thread now",
            ReadAtScrape::gauge(move || queue.len() as u64),
        );
        let c = &self.shared.counters;
        registry.register(
            "fs_pool_jobs",
            "Filesystem calls by outcome: completed, abandoned (skipped: the request had given up), \
             rejected_queue_full and timed_out (answered 503), failed (a bug)",
            by_kind([
                ("completed", &c.completed),
                ("abandoned", &c.abandoned),
                ("rejected_queue_full", &c.rejected),
                ("timed_out", &c.timed_out),
                ("failed", &c.failed),
            ]),
        );
    }
}

/// A pool thread: takes jobs until every handle is gone.
fn work(queue: &Receiver<Job>, shared: &Shared) {
    while let Ok(job) = queue.recv() {
        shared.busy.fetch_add(1, Ordering::Relaxed);
        job();
        shared.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize, queue: usize, timeout_ms: u64) -> FsPool {
        FsPool::new(FsPoolSettings {
            fs_threads: threads,
            fs_queue: queue,
            fs_timeout: Duration::from_millis(timeout_ms),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn runs_jobs_off_the_runtime() {
        let pool = pool(2, 4, 5_000);
        let name = pool
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("oip-fs-"));
        assert_eq!(pool.run(|| 6 * 7).await, Ok(42));
        assert_eq!(pool.counters().completed.get(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stall_turns_into_timeouts_then_refusals_never_a_hang() {
        // 1 thread + 2 queued: the 4th concurrent job is refused at once.
        let pool = pool(1, 2, 300);
        pool.inject_stall(Some(Duration::from_secs(30)));
        let started = Instant::now();
        let admit = |i: u32| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(move || i).await })
        };
        let until = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !done() {
                assert!(Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        // One job on the thread (stalled), then two in the queue.
        let mut waiting = vec![admit(0)];
        until("first job running", &|| pool.busy() == 1);
        waiting.push(admit(1));
        waiting.push(admit(2));
        until("two jobs queued", &|| pool.queued() == 2);
        assert_eq!(pool.run(|| 9).await, Err(FsPoolError::QueueFull));
        for task in waiting {
            assert_eq!(task.await.unwrap(), Err(FsPoolError::TimedOut));
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "bounded by the timeout"
        );
        let c = pool.counters();
        assert_eq!(c.rejected.get(), 1);
        assert_eq!(c.timed_out.get(), 3);

        // Clearing the stall frees the thread; the two queued jobs whose callers gave
        // up are skipped, not run, and new jobs run again.
        pool.inject_stall(None);
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.abandoned.get() < 2 {
            assert!(Instant::now() < deadline, "queued jobs skipped");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(c.completed.get(), 1, "only the started one ran");
        assert_eq!(pool.run(|| 7).await, Ok(7));
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone() {
        let pool = pool(1, 1, 5_000);
        let failed = pool.run(|| -> u8 { panic!("bug in a job") }).await;
        assert_eq!(failed, Err(FsPoolError::Failed));
        assert_eq!(pool.run(|| 1).await, Ok(1), "the thread survived");
        assert_eq!(pool.counters().failed.get(), 1);
    }

    #[tokio::test]
    async fn threads_stop_when_the_pool_is_dropped() {
        let pool = pool(3, 1, 5_000);
        let probe = Arc::downgrade(&pool.shared);
        assert_eq!(pool.run(|| 1).await, Ok(1));
        drop(pool);
        let deadline = Instant::now() + Duration::from_secs(5);
        while probe.upgrade().is_some() {
            assert!(Instant::now() < deadline, "threads exited");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
