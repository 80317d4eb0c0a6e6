//! The per-core layout (`--runtime per-core`): one thread per worker, each running a
//! current-thread tokio runtime that accepts on its own `SO_REUSEPORT` socket and serves
//! every connection it accepted from start to end.
//!
//! What it saves against the multi-thread runtime: no work stealing, no cross-thread
//! wake-ups of connection tasks, no shared run queue; what it gives up: a connection
//! stays on the thread the kernel's hash gave it, busy or not. BENCHMARKS.md ("Many
//! cores") measures both; the default follows the measurement.
//!
//! Nothing of the application is per thread: the connection cap, the gates, the
//! caches, the filesystem threads and the metrics are the same objects for every
//! thread, all `Sync`, their waiters woken across runtimes by tokio's sync primitives.
//! What is per thread: the timers and the socket readiness of the connections it
//! serves, and the blocking-task pool `spawn_blocking` uses on that thread (its use is
//! bounded by the same global admissions as before).
//!
//! Threads are not pinned to CPUs: the production host runs the indexer, Elasticsearch
//! and ffmpeg beside us, and a pinned thread could not move off a core they occupy.
//! `taskset` on the process places it where that is wanted (the load bench does).

use std::io;
use std::net::TcpListener;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::{Shared, accept_loop};

/// How long a stopped thread's runtime waits for blocking work it started (a resolve
/// build, a variant's commit) before letting go of it; the connections are done by then.
const BLOCKING_GRACE: Duration = Duration::from_secs(1);

/// Starts one serving thread per listening socket. Each reports on its receiver, once it
/// has stopped, whether its connections finished within the grace period. Threads
/// already started when a later one fails stop by themselves: the stop channel's sender
/// is dropped with the error.
pub(super) fn spawn(
    listeners: Vec<TcpListener>,
    shared: &Shared,
    stop: &watch::Receiver<bool>,
) -> io::Result<Vec<oneshot::Receiver<bool>>> {
    let mut done = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Registered with the thread's own runtime, so its readiness is that runtime's.
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let serve = accept_loop(index, listener, shared.clone(), stop.clone());
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("oip-media-core-{index}"))
            .spawn(move || {
                let in_time = runtime.block_on(serve);
                // Connections still open past the grace period are dropped here.
                runtime.shutdown_timeout(BLOCKING_GRACE);
                let _ = done_tx.send(in_time);
            })?;
        done.push(done_rx);
    }
    Ok(done)
}
