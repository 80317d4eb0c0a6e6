//! The store's only `unsafe`: mapping a file into memory. (The other two blocks of the
//! crate are a `TCP_INFO` read in `server::tcp_progress` and jemalloc's `malloc_conf`
//! symbol in `allocator`, each with its own SAFETY comment.)
//!
//! # The storage rule this relies on
//! Files under the media roots are **write-once**: writers create a temp file and
//! `rename` it into place (SPEC §2). A rename gives the path a new inode; the inode we
//! mapped is never modified, so the bytes behind a mapping never change under us.
//!
//! If someone breaks that rule and truncates a mapped file, any *user-space* read of a
//! page past the new end raises SIGBUS and kills the process. oip-media therefore never
//! reads mapped bytes itself: the response path hands `Bytes` slices of the mapping to
//! the socket, which sends them with `sendfile` from the file behind the mapping (a
//! truncated file gives a short or zero count, and the connection is closed) or, for
//! small bodies, with `writev` (the kernel fails the read with `EFAULT`) — either way
//! that one connection breaks and the process lives. Anything that parses file contents
//! (GIF metadata, stills) uses `read()` on the file instead of the mapping.

use std::fs::File;
use std::io;

use bytes::Bytes;
use memmap2::Mmap;

/// Owner of a read-only shared mapping, kept alive by every `Bytes` slice of it.
struct MappedRegion(Mmap);

impl AsRef<[u8]> for MappedRegion {
    fn as_ref(&self) -> &[u8] {
        // Producing the slice reads nothing; only dereferencing its bytes would.
        &self.0
    }
}

/// Maps all of `file` (which is `len` bytes long per its `fstat`) read-only and returns
/// the mapping as `Bytes`, so that slices of it can be handed to hyper without copying.
/// An empty file yields empty `Bytes` (a zero-length mapping is an error on Linux).
pub fn map_file(file: &File, len: u64) -> io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let len = usize::try_from(len).map_err(|_| io::Error::other("file too large to map"))?;
    // SAFETY: memmap2 requires that the mapped file is not modified or truncated while
    // the mapping lives. Media roots are write-once (new files are renamed into place,
    // never rewritten), so this inode's bytes do not change. If that rule is broken by
    // truncation, the only accesses to these pages are the kernel's own (writev from
    // the response body), which return EFAULT instead of faulting this process, or
    // none at all (sendfile reads the file, not the mapping); no code in oip-media
    // dereferences mapped bytes in user space.
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(file)? };
    Ok(Bytes::from_owner(MappedRegion(map)))
}
