//! Opening a file that must be a regular file, without ever blocking on one that is not.
//!
//! `open(2)` of a FIFO for reading blocks until a writer appears, and opening some
//! devices (a serial line waiting for carrier) blocks too. Checking the type with a
//! `stat` first would leave a window in which the path is swapped, so the file is
//! opened with `O_NONBLOCK` — a FIFO or device then opens at once — and its type is
//! read from the open descriptor (`fstat`). Anything but a regular file is refused
//! before a single byte is read.
//!
//! `O_NONBLOCK` has no effect on reads of a regular file (POSIX leaves it unspecified,
//! Linux ignores it: page-cache reads simply block), so the descriptor returned is
//! fine for `read()`, `mmap` and `sendfile` as it is.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Why a path could not be opened as a regular file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// It exists but is a FIFO, socket, device or directory.
    #[error("not a regular file")]
    NotRegular,
    /// The open or the `fstat` failed (missing, no permission, I/O error …).
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Opens `path` read-only and returns it with its metadata, if it is a regular file.
/// Blocking (the path walk and the open can wait on a slow filesystem): call it on
/// the filesystem pool.
pub fn open_regular(path: &Path) -> Result<(File, Metadata), OpenError> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        // A UNIX socket cannot be opened at all: it is not a regular file either.
        Err(error) if error.raw_os_error() == Some(libc::ENXIO) => {
            return Err(OpenError::NotRegular);
        }
        Err(error) => return Err(OpenError::Io(error)),
    };
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(OpenError::NotRegular);
    }
    Ok((file, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn regular_files_open_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.gif");
        std::fs::write(&path, b"GIF89a").unwrap();
        let (mut file, meta) = open_regular(&path).unwrap();
        assert_eq!(meta.len(), 6);
        let mut read = String::new();
        file.read_to_string(&mut read).unwrap();
        assert_eq!(read, "GIF89a");
    }

    #[test]
    fn fifos_sockets_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.gif");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success(), "mkfifo (coreutils)");
        // Without O_NONBLOCK this open would wait for a writer forever.
        assert!(matches!(open_regular(&fifo), Err(OpenError::NotRegular)));

        let socket = dir.path().join("sock.gif");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        assert!(matches!(open_regular(&socket), Err(OpenError::NotRegular)));

        assert!(matches!(
            open_regular(dir.path()),
            Err(OpenError::NotRegular)
        ));
        assert!(matches!(
            open_regular(&dir.path().join("missing")),
            Err(OpenError::Io(e)) if e.kind() == io::ErrorKind::NotFound
        ));
    }
}
