//! Mapped-file registration: which files the slices handed to hyper on one connection
//! may be sent from.
//!
//! hyper writes a response by handing its socket a list of `IoSlice`s: the head it
//! rendered, then the body chunks it was given. A chunk of a mapped file is a slice of the
//! mapping, and the socket (`server::zero_copy::ZeroCopyIo`) can send those bytes with
//! `sendfile` from the file instead of copying them — if it can tell which file a slice
//! belongs to. A response body therefore *registers* its file when it yields its first
//! chunk; the socket looks each slice's address up among the registered mappings. A
//! registration holds the mapping (and its file) alive, so an address can never be
//! reused by another allocation while it is registered.
//!
//! Plain data: the [`Outbox`](super::Outbox) keeps it under the same lock as the
//! guards parked until the flush, since ending a registration is part of that release.

use std::sync::Arc;

use crate::store::MappedFile;

/// The mappings registered on one connection.
#[derive(Default)]
pub(super) struct Registrations {
    files: Vec<Arc<MappedFile>>,
}

impl Registrations {
    /// Registers `file`; returns how many are registered now.
    pub(super) fn add(&mut self, file: Arc<MappedFile>) -> usize {
        self.files.push(file);
        self.files.len()
    }

    /// Ends one registration of `file` (if it has one); returns how many are left.
    pub(super) fn remove(&mut self, file: &Arc<MappedFile>) -> usize {
        if let Some(at) = self.files.iter().position(|f| Arc::ptr_eq(f, file)) {
            self.files.swap_remove(at);
        }
        self.files.len()
    }

    /// Every registered mapping.
    pub(super) fn all(&self) -> &[Arc<MappedFile>] {
        &self.files
    }

    /// Ends every registration, handing the mappings back to drop outside the lock.
    pub(super) fn take(&mut self) -> Vec<Arc<MappedFile>> {
        std::mem::take(&mut self.files)
    }

    /// Mappings registered now.
    pub(super) fn len(&self) -> usize {
        self.files.len()
    }
}
