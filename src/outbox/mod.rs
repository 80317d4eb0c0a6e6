//! What the responses on one connection have handed to hyper and the socket has not yet
//! sent: the one handle a connection's bodies and its socket share. Its three parts, one
//! job each:
//! - [`files`]: the mapped files their body bytes may be sent from (`sendfile`);
//! - here: the guards (gate permit, in-flight token) to release once the last byte is
//!   on the wire;
//! - [`stall`]: telling admission guards that the client stopped reading, and closing the
//!   connection when a stalled pool drops it.
//!
//! # Why guards wait for the flush
//! hyper polls a body for its next chunk *before* it has written the previous ones: it
//! queues the head and up to ~400 KiB of chunks (16 buffers) before it flushes, and it
//! drops a body as soon as the body has yielded its last chunk. A permit attached to the
//! body would then come back while up to two chunks were still unsent — for most GIFs,
//! the whole body. Instead, a body that has yielded its last chunk (or is dropped) parks
//! its guards and its registration here, and the socket releases them on the next
//! `poll_flush`: hyper calls its socket's `poll_flush` only once its write buffer is
//! empty, i.e. once every byte it was given has been written. Registrations and parked
//! guards share one lock: the release that ends a registration is one step.

pub mod files;
pub mod stall;

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::Context;

use crate::store::MappedFile;
use files::Registrations;
use stall::{Evict, StallWatch, Stallable};

/// A guard whose drop frees something (a gate permit, a connection-activity token).
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
    stall: StallWatch,
}

#[derive(Default)]
struct State {
    files: Registrations,
    parked: Vec<Parked>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("files", &self.files.len())
            .field("parked", &self.parked)
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
        let registered = self.state().files.add(file);
        self.registered.store(registered, Ordering::Release);
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
                if let Some(file) = &done.file {
                    state.files.remove(file);
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
        f(self.state().files.all())
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
        let (files, parked) = {
            let mut state = self.state();
            self.has_parked.store(false, Ordering::Release);
            self.registered.store(0, Ordering::Release);
            (state.files.take(), std::mem::take(&mut state.parked))
        };
        drop(files);
        drop(parked);
        self.stall.clear();
    }

    /// Lets the socket tell `guard` about stalls ([`StallWatch::watch`]).
    pub fn watch(&self, guard: Weak<dyn Stallable>) {
        self.stall.watch(guard);
    }

    /// The socket has sent nothing for `--stalled-after` ([`StallWatch::stalled`]), with
    /// this connection as what a stalled pool may evict.
    pub fn stalled(self: &Arc<Self>) {
        let me: Weak<dyn Evict> = Arc::downgrade(self) as Weak<dyn Evict>;
        self.stall.stalled(&me);
    }

    /// The socket sends again ([`StallWatch::resumed`]).
    pub fn resumed(&self) -> bool {
        self.stall.resumed()
    }

    /// True once a stalled pool evicted this connection ([`StallWatch::poll_evicted`]).
    pub fn poll_evicted(&self, cx: &mut Context<'_>) -> bool {
        self.stall.poll_evicted(cx)
    }

    /// Mappings registered now (for tests).
    pub fn registered(&self) -> usize {
        self.state().files.len()
    }
}

impl Evict for Outbox {
    fn evict(&self) {
        self.stall.evict();
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
