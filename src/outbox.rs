//! What the responses on one connection have handed to hyper and the socket has not yet
//! sent: the files their body bytes may be sent from, and the guards (limiter permit,
//! in-flight token) to release once the last byte is on the wire.
//!
//! # Why a per-connection outbox
//! hyper writes a response by handing its socket a list of `IoSlice`s: the head it
//! rendered, then the body chunks it was given. A chunk of a mapped file is a slice of the
//! mapping, and the socket (`server::zero_copy::ZeroCopyIo`) can send those bytes with
//! `sendfile` from the file instead of copying them — if it can tell which file a slice
//! belongs to. A response body therefore *registers* its file here when it yields its
//! first chunk; the socket looks each slice's address up among the registered mappings.
//! A registration holds the mapping (and its file) alive, so an address can never be
//! reused by another allocation while it is registered.
//!
//! # Why guards wait for the flush
//! hyper polls a body for its next chunk *before* it has written the previous ones: it
//! queues the head and up to ~400 KiB of chunks (16 buffers) before it flushes, and it
//! drops a body as soon as the body has yielded its last chunk. A permit attached to the
//! body would then come back while up to two chunks were still unsent — for most GIFs,
//! the whole body. Instead, a body that has yielded its last chunk (or is dropped) parks
//! its guards and its registration here, and the socket releases them on the next
//! `poll_flush`: hyper calls its socket's `poll_flush` only once its write buffer is
//! empty, i.e. once every byte it was given has been written.
//!
//! # Why stalls are told here
//! A response whose client stops reading keeps its admission slot (the media limiter's
//! permit) until the write-stall timeout drops the connection; hundreds of clients that
//! ask for a large file and never read would hold every slot that long. The socket
//! (`server::timed_io`) is what sees a send make no progress, and the slot lives in a
//! body or in this outbox, so the outbox is where the two meet: a body hands its
//! [`Yielding`] guards to the outbox ([`Outbox::watch`], from `Body::send_through`), the
//! socket calls [`Outbox::stalled`] when the send has made no progress for a while and
//! [`Outbox::resumed`] when it moves again, and a guard moved to the limiter's bounded
//! pool of stalled bodies may ask the connection to close ([`Outbox::evict`]) when the
//! pool needs room for a newer one. The socket learns of that with
//! [`Outbox::poll_evicted`] and fails its write, so hyper closes the connection.

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::Context;

use futures_util::task::AtomicWaker;

use crate::store::MappedFile;

/// A guard that may step out of its admission bound while its connection makes no
/// progress (the media limiter's slot, `limit::Slot`). Attached to a body like any
/// guard (as an `Arc<dyn Yielding>`); the outbox keeps only a weak reference, so the
/// guard still goes when the body's guards go.
pub trait Yielding: Send + Sync {
    /// The connection has sent nothing for a while: leave the bound (idempotent).
    /// `connection` is what to [`Outbox::evict`] if the guard's new place needs it.
    fn stall(&self, connection: &Weak<Outbox>);
    /// The connection moves again: come back into the bound if there is room. True when
    /// the guard is in its bound (or never left it).
    fn resume(&self) -> bool;
}

/// A guard whose drop frees something (a limiter permit, a connection-activity token).
pub type Guard = Box<dyn Any + Send + Sync>;

/// The outbox of one connection, shared by its response bodies and its socket.
#[derive(Debug, Default)]
pub struct Outbox {
    state: Mutex<State>,
    // Set while `parked` is non-empty, so the flush after every write (hyper calls it
    // often) costs one load when there is nothing to release.
    has_parked: AtomicBool,
    // `files.len()`, so a write with nothing registered takes no lock.
    registered: AtomicUsize,
    // Set once the stalled pool dropped this connection; `evict_waker` wakes its task.
    evicted: AtomicBool,
    evict_waker: AtomicWaker,
}

#[derive(Default)]
struct State {
    files: Vec<Arc<MappedFile>>,
    parked: Vec<Parked>,
    // Guards of this connection's responses that may leave their bound on a stall.
    watched: Vec<Weak<dyn Yielding>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("files", &self.files.len())
            .field("parked", &self.parked)
            .field("watched", &self.watched.len())
            .finish()
    }
}

struct Parked {
    file: Option<Arc<MappedFile>>,
    guards: Vec<Guard>,
}

impl std::fmt::Debug for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parked")
            .field("file", &self.file.is_some())
            .field("guards", &self.guards.len())
            .finish()
    }
}

impl Outbox {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing here can panic while holding the lock; if it ever did, the data (a
        // list of Arcs) is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `file`'s mapping known to the socket: slices inside it may be sent from
    /// the file. Called by a body before it yields its first chunk of `file`.
    pub fn register(&self, file: Arc<MappedFile>) {
        let mut state = self.state();
        state.files.push(file);
        self.registered.store(state.files.len(), Ordering::Release);
    }

    /// Releases `guards` and ends the registration of `file` (if any) once everything
    /// handed to hyper so far has been written. Called by a body that has yielded its
    /// last chunk, or that is dropped.
    pub fn release_after_flush(&self, file: Option<Arc<MappedFile>>, guards: Vec<Guard>) {
        if file.is_none() && guards.is_empty() {
            return;
        }
        self.state().parked.push(Parked { file, guards });
        self.has_parked.store(true, Ordering::Release);
    }

    /// The socket has written everything hyper gave it: release what was parked.
    pub fn flushed(&self) {
        if !self.has_parked.load(Ordering::Acquire) {
            return;
        }
        let parked = {
            let mut state = self.state();
            let parked = std::mem::take(&mut state.parked);
            for done in &parked {
                if let Some(file) = &done.file
                    && let Some(at) = state.files.iter().position(|f| Arc::ptr_eq(f, file))
                {
                    state.files.swap_remove(at);
                }
            }
            self.has_parked.store(false, Ordering::Release);
            self.registered.store(state.files.len(), Ordering::Release);
            parked
        };
        // Dropped outside the lock: a permit's drop wakes other tasks.
        drop(parked);
    }

    /// Runs `f` over the registered mappings (one lock for a whole write).
    pub fn with_files<R>(&self, f: impl FnOnce(&[Arc<MappedFile>]) -> R) -> R {
        f(&self.state().files)
    }

    /// The file and offset `slice` can be sent from, if it lies inside a registered
    /// mapping that has a file.
    pub fn lookup(&self, slice: &[u8]) -> Option<(Arc<MappedFile>, u64)> {
        self.with_files(|files| {
            files.iter().find_map(|file| {
                let (_, offset) = file.file_range_of(slice)?;
                Some((Arc::clone(file), offset))
            })
        })
    }

    /// True when no mapping is registered: every slice is plain memory.
    pub fn is_idle(&self) -> bool {
        self.registered.load(Ordering::Acquire) == 0
    }

    /// The connection is gone: drop every registration and release every guard.
    pub fn clear(&self) {
        let (files, parked, watched) = {
            let mut state = self.state();
            self.has_parked.store(false, Ordering::Release);
            self.registered.store(0, Ordering::Release);
            (
                std::mem::take(&mut state.files),
                std::mem::take(&mut state.parked),
                std::mem::take(&mut state.watched),
            )
        };
        drop(files);
        drop(parked);
        drop(watched);
    }

    /// Lets the socket tell `guard` about stalls (see the module docs). Called by a body
    /// when it is given this outbox, for each [`Yielding`] guard it holds.
    pub fn watch(&self, guard: Weak<dyn Yielding>) {
        let mut state = self.state();
        // Forget the guards of finished responses (at most a couple live at a time).
        state.watched.retain(|w| w.strong_count() > 0);
        state.watched.push(guard);
    }

    fn watched(&self) -> Vec<Arc<dyn Yielding>> {
        let state = self.state();
        state.watched.iter().filter_map(Weak::upgrade).collect()
    }

    /// The socket has sent nothing for `--stalled-after`: every watched guard leaves its
    /// bound. Called once per stall check, never on the write path.
    pub fn stalled(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        // Outside the lock: a guard's own lock and its pool's are taken below.
        for guard in self.watched() {
            guard.stall(&me);
        }
    }

    /// The socket sends again: watched guards come back into their bound if there is
    /// room. True when all of them are in it (nothing is left in a stalled pool).
    pub fn resumed(&self) -> bool {
        let mut all_back = true;
        for guard in self.watched() {
            all_back &= guard.resume();
        }
        all_back
    }

    /// Asks the connection to close: a stalled pool dropped it to make room. Its socket
    /// fails its next write (see [`Outbox::poll_evicted`]).
    pub fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.evict_waker.wake();
    }

    /// True once [`Outbox::evict`] was called; otherwise arranges for `cx` to be woken
    /// when it is. The socket asks only while its send is stalled.
    pub fn poll_evicted(&self, cx: &mut Context<'_>) -> bool {
        if self.evicted.load(Ordering::Acquire) {
            return true;
        }
        self.evict_waker.register(cx.waker());
        self.evicted.load(Ordering::Acquire)
    }

    /// Mappings registered now (for tests).
    pub fn registered(&self) -> usize {
        self.state().files.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::atomic::AtomicUsize;
    use std::time::SystemTime;

    struct CountOnDrop(Arc<AtomicUsize>);
    impl Drop for CountOnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn mapped(dir: &std::path::Path, name: &str, len: usize) -> Arc<MappedFile> {
        let path = dir.join(name);
        std::fs::write(&path, vec![7u8; len]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        Arc::new(MappedFile::map(file, &meta).unwrap())
    }

    #[test]
    fn slices_of_registered_mappings_are_found_with_their_offset() {
        let dir = tempfile::tempdir().unwrap();
        let a = mapped(dir.path(), "a", 10_000);
        let b = mapped(dir.path(), "b", 5_000);
        let outbox = Outbox::default();
        assert!(outbox.is_idle());
        outbox.register(Arc::clone(&a));
        outbox.register(Arc::clone(&b));
        let (file, offset) = outbox.lookup(&a.bytes[1000..2000]).unwrap();
        assert!(Arc::ptr_eq(&file, &a));
        assert_eq!(offset, 1000);
        let (file, offset) = outbox.lookup(&b.bytes[4999..]).unwrap();
        assert!(Arc::ptr_eq(&file, &b));
        assert_eq!(offset, 4999);
        // Memory that is not a registered mapping is not a file.
        let heap = vec![7u8; 100];
        assert!(outbox.lookup(&heap).is_none());
        // Bytes held in memory have no file to send from.
        let memory = Arc::new(MappedFile::in_memory(
            Bytes::from(vec![1u8; 64]),
            SystemTime::now(),
        ));
        outbox.register(Arc::clone(&memory));
        assert!(outbox.lookup(&memory.bytes[..]).is_none());
    }

    #[test]
    fn parked_guards_and_registrations_go_at_the_flush() {
        let dir = tempfile::tempdir().unwrap();
        let a = mapped(dir.path(), "a", 4096);
        let outbox = Outbox::default();
        let dropped = Arc::new(AtomicUsize::new(0));
        outbox.register(Arc::clone(&a));
        outbox.release_after_flush(
            Some(Arc::clone(&a)),
            vec![Box::new(CountOnDrop(Arc::clone(&dropped)))],
        );
        assert_eq!(dropped.load(Ordering::SeqCst), 0, "held until the flush");
        assert!(
            outbox.lookup(&a.bytes[..10]).is_some(),
            "still sendable until flushed"
        );
        outbox.flushed();
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        assert_eq!(outbox.registered(), 0);
        assert!(outbox.lookup(&a.bytes[..10]).is_none());
    }

    #[test]
    fn clearing_releases_everything() {
        let dir = tempfile::tempdir().unwrap();
        let a = mapped(dir.path(), "a", 4096);
        let outbox = Outbox::default();
        let dropped = Arc::new(AtomicUsize::new(0));
        outbox.register(Arc::clone(&a));
        outbox.release_after_flush(None, vec![Box::new(CountOnDrop(Arc::clone(&dropped)))]);
        outbox.clear();
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        assert_eq!(outbox.registered(), 0);
        assert_eq!(Arc::strong_count(&a), 1, "the mapping is no longer held");
    }
}
