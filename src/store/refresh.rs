//! Refresh ahead: hot cached mappings `stat`ed again in batches, before their window ends,
//! so that no request of a hot file waits for the pool.
//!
//! # Why
//! A cached mapping is trusted for one `--revalidate-window` and then `stat`ed again, on
//! the filesystem pool (never on an async worker: see the store's docs). Done by the
//! request that finds the window over, that is one pool hop per hot file per window: a
//! channel send, a thread's wake-up and a reply, with their context switches. Under the
//! load bench's mix (1,000 files, ~7,000 requests/s on one worker, 1 s window) that was
//! ~1,000 hops a second, 0.5–0.7 context switches and 0.2–0.3 `futex` calls per request
//! where nginx, which makes the same `stat` inline, has under 0.1
//! (`docs/benchmarks/fast-lane.md`).
//!
//! Here a mapping used in the second half of its window is queued, and still served at
//! once; one sweep, `window / 8` after the first file was queued, `stat`s every queued
//! file in **one** pool job. A file found unchanged is trusted for another window from the
//! moment before its `stat`, so a file requested at least every half window never sees
//! its window run out, and no request of it waits for a `stat`. The hops become a few per
//! second; the `stat`s, at most two per hot file per window, are cheap (a cached inode),
//! and are made on a pool thread in one batch.
//!
//! Why from half the window, measured with the load bench's mix on one worker (1,000
//! files, ~6,000 requests/s, 1 s window): queued from half a window, 0.08 context
//! switches and 0.02 `futex` calls per request at 64 connections (0.67 and 0.30 with a
//! hop per expired file), ~1,400 `stat`s a second; from the last quarter, ~1,050 `stat`s
//! a second but 0.36 context switches per request, since a file often gets no request in
//! a quarter second and its next one waits for the hop again.
//!
//! # What does not change
//! - **The promise.** A mapping is served only within one window of a `stat` that found
//!   the same file: the sweep moves a window forward only when its `stat` found the same
//!   identity, and counts it from the clock reading taken before that `stat`.
//! - **Replaced or vanished files** are left to the request path: the sweep changes
//!   nothing for them, their window runs out, and the next request re-`stat`s and maps
//!   again (or answers `404`) exactly as before.
//! - **A hung filesystem.** A sweep the pool refuses, or that outlives `--fs-timeout`,
//!   changes nothing either: the windows run out and the request path takes over, with
//!   its `stale` fallback.
//!
//! # Bounds
//! At most [`MAX_QUEUED`] files wait for a sweep (past that a file is not queued, and its
//! request re-`stat`s as before); a file is queued at most once at a time; one sweep is
//! scheduled at a time, and it is one pool job, within the pool's queue and timeout.
//! The queue keeps two buffers for good, taking turns (one fills while the other is
//! swept), each at most `MAX_QUEUED` entries of 72 bytes (~290 KiB), sized by the
//! busiest sweep so far; the paths they point to are freed with each sweep.

use std::fs::Metadata;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Entry, FileIdentity, GuardedOpen, OpenError};
use crate::fs_pool::FsPool;
use crate::metrics::ShardedCounter;

/// Most files waiting for one sweep: ~150 bytes each (an `Arc`, the path), so at most
/// ~600 KiB whatever the request mix. (Eight in unit tests, so a test can fill it.)
#[cfg(not(test))]
pub(super) const MAX_QUEUED: usize = 4096;
#[cfg(test)]
pub(super) const MAX_QUEUED: usize = 8;

/// The `stat` that vouches for a cached file: through the root's guard when it has one
/// (the derived folder's checked open), else of the path. Blocking: pool threads only.
pub(super) fn stat_file(
    full: &Path,
    guarded: Option<(&Arc<dyn GuardedOpen>, &Path)>,
) -> io::Result<Metadata> {
    match guarded {
        Some((guard, relative)) => {
            guard
                .open_checked(relative)
                .map(|(_, meta)| meta)
                .map_err(|error| match error {
                    OpenError::Io(error) => error,
                    OpenError::NotRegular => io::ErrorKind::NotFound.into(),
                })
        }
        None => std::fs::metadata(full),
    }
}

/// A cached file due for its `stat`.
struct Due {
    entry: Arc<Entry>,
    full: PathBuf,
    guarded: Option<(Arc<dyn GuardedOpen>, PathBuf)>,
}

/// Files queued for the next sweep. Dropped unswept (the pool refused or skipped the
/// job), it lets each file be queued again.
#[derive(Default)]
struct Batch(Vec<Due>);

impl Drop for Batch {
    fn drop(&mut self) {
        for due in &self.0 {
            due.entry.refreshing.store(false, Ordering::Release);
        }
    }
}

/// What waits for the next sweep, and the buffer it will wait in after that.
#[derive(Default)]
struct Queued {
    batch: Batch,
    /// The last sweep's buffer, emptied and handed back for the next batch to fill.
    /// A fresh `Vec` per sweep grew by doubling to ~1,000 entries eight times a second
    /// on the worker and was freed on a pool thread; the long run's RssAnon stepped up
    /// by ~100–200 KiB after its first round with that churn. Two buffers take turns.
    spare: Vec<Due>,
}

/// The queue and its sweeps (one per store, shared with the sweep's task).
pub(super) struct RefreshAhead {
    queued: Mutex<Queued>,
    pool: FsPool,
    window_ns: u64,
    epoch: Instant,
    /// Files a sweep found unchanged (`oip_media_map_cache_lookups_total{kind="refreshed"}`).
    pub(super) refreshed: ShardedCounter,
}

impl RefreshAhead {
    /// `epoch` is the store's clock's: windows are counted on the same clock.
    pub(super) fn new(pool: FsPool, window_ns: u64, epoch: Instant) -> RefreshAhead {
        RefreshAhead {
            queued: Mutex::new(Queued::default()),
            pool,
            window_ns,
            epoch,
            refreshed: ShardedCounter::default(),
        }
    }

    /// Whether a mapping checked `age_ns` ago should be queued now: in the second half
    /// of its window (see the module docs for why half). A window too short to sweep
    /// within (under 8 ms) is left to the request path.
    pub(super) fn is_due(&self, age_ns: u64) -> bool {
        self.window_ns >= 8_000_000 && age_ns >= self.window_ns / 2
    }

    /// Queues `entry` (`full`, or `relative` through `guard`) for the next sweep, unless
    /// it is queued already, the queue is full, or there is no runtime to sweep on.
    pub(super) fn queue(
        self: &Arc<Self>,
        entry: &Arc<Entry>,
        full: PathBuf,
        guarded: Option<(Arc<dyn GuardedOpen>, PathBuf)>,
    ) {
        if entry.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            entry.refreshing.store(false, Ordering::Release);
            return;
        };
        let first = {
            let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
            if queued.batch.0.len() >= MAX_QUEUED {
                entry.refreshing.store(false, Ordering::Release);
                return;
            }
            queued.batch.0.push(Due {
                entry: Arc::clone(entry),
                full,
                guarded,
            });
            queued.batch.0.len() == 1
        };
        if first {
            let this = Arc::clone(self);
            runtime.spawn(async move { this.sweep().await });
        }
    }

    /// Where the spare buffer lives and how many files it holds room for (tests).
    #[cfg(test)]
    pub(super) fn spare_buffer(&self) -> (usize, usize) {
        let queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        (queued.spare.as_ptr() as usize, queued.spare.capacity())
    }

    /// Waits `window / 8`, then `stat`s everything queued by then in one pool job.
    async fn sweep(&self) {
        tokio::time::sleep(Duration::from_nanos(self.window_ns / 8)).await;
        let batch = {
            let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
            let spare = std::mem::take(&mut queued.spare);
            std::mem::replace(&mut queued.batch, Batch(spare))
        };
        let (epoch, refreshed) = (self.epoch, self.refreshed.clone());
        // Refused or timed out: the batch is dropped (here or by the pool thread that
        // skips the job) and its files may be queued again.
        let swept = self
            .pool
            .run(move || {
                let mut batch = batch;
                for due in batch.0.drain(..) {
                    let checking = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    let guarded = due.guarded.as_ref().map(|(g, r)| (g, r.as_path()));
                    let same = stat_file(&due.full, guarded)
                        .is_ok_and(|meta| FileIdentity::of(&meta) == due.entry.file.identity);
                    if same {
                        due.entry.checked_ns.fetch_max(checking, Ordering::Relaxed);
                        refreshed.inc();
                        due.entry.refreshing.store(false, Ordering::Release);
                    }
                    // Changed or gone: left queued-looking, so it is not swept again;
                    // its window runs out and the request path replaces or drops it.
                }
                std::mem::take(&mut batch.0)
            })
            .await;
        if let Ok(buffer) = swept {
            // Empty (drained); the next sweep's batch fills it. Its room is at most
            // `MAX_QUEUED`: `queue` pushes no further.
            self.queued.lock().unwrap_or_else(|p| p.into_inner()).spare = buffer;
        }
    }
}
