//! Whose fault a failed transcode is: the GIF's own (remembered, `422`), or the host's
//! for now (disk full, no permission, a missing folder, a killed encoder, ffmpeg that
//! cannot start, a timeout: `503` + `Retry-After`, not remembered, so the variant is
//! made as soon as the trouble is gone).
//!
//! Remembering a full disk as the GIF's fault would answer `422` for the whole failure
//! TTL after space was freed, without ffmpeg ever running again.

use std::io;

/// Why a transcode failed, by whose fault it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The GIF: invalid, over a limit, an output over the size bound, or ffmpeg could
    /// not encode it (including an ffmpeg that crashed on it).
    Source,
    /// The disk is full or over quota (`ENOSPC`, `EDQUOT`).
    DiskFull,
    /// Writing was refused (`EACCES`, `EPERM`, `EROFS`).
    NoPermission,
    /// The derived folder (or the GIF) is gone (`ENOENT`, `ENOTDIR`).
    Missing,
    /// Out of memory or processes (`ENOMEM`, `EAGAIN`).
    NoResources,
    /// The encoder was killed from outside (`SIGKILL` by the OOM killer or an operator,
    /// `SIGTERM`, a resource limit's `SIGXFSZ`/`SIGXCPU`).
    Killed,
    /// ffmpeg could not be started.
    Spawn,
    /// It ran past `--transcode-timeout`.
    TimedOut,
    /// The transcoder is stopping (shutdown, an interrupted `oip-media transcode`).
    Stopping,
    /// Another I/O error.
    Io,
}

impl Fault {
    /// True when the failure says something about the GIF itself: only then may it be
    /// remembered with the GIF's identity as a `422`.
    pub fn is_source_fault(self) -> bool {
        self == Fault::Source
    }

    /// The kind of an I/O error of ours (creating, reading or renaming a derived file).
    pub fn of_io(error: &io::Error) -> Fault {
        use io::ErrorKind as K;
        match error.kind() {
            K::StorageFull | K::QuotaExceeded | K::FileTooLarge => Fault::DiskFull,
            K::PermissionDenied | K::ReadOnlyFilesystem => Fault::NoPermission,
            K::NotFound | K::NotADirectory => Fault::Missing,
            K::OutOfMemory | K::WouldBlock => Fault::NoResources,
            _ => match error.raw_os_error() {
                Some(libc::EPERM) => Fault::NoPermission,
                _ => Fault::Io,
            },
        }
    }

    /// The kind of an ffmpeg failure from its error output (`stderr`, with the GIF's
    /// and the output's paths already taken out, so that a GIF named after an error
    /// message cannot pass for one): ffmpeg reports an I/O error with the system's
    /// words for it (`av_interleaved_write_frame(): No space left on device`). Anything
    /// else is about the GIF.
    pub fn of_ffmpeg_output(stderr: &str) -> Fault {
        const WORDS: [(&str, Fault); 11] = [
            ("No space left on device", Fault::DiskFull),
            ("Disk quota exceeded", Fault::DiskFull),
            ("File too large", Fault::DiskFull),
            ("Permission denied", Fault::NoPermission),
            ("Operation not permitted", Fault::NoPermission),
            ("Read-only file system", Fault::NoPermission),
            ("No such file or directory", Fault::Missing),
            ("Not a directory", Fault::Missing),
            ("Cannot allocate memory", Fault::NoResources),
            ("Resource temporarily unavailable", Fault::NoResources),
            ("Input/output error", Fault::Io),
        ];
        WORDS
            .iter()
            .find(|(words, _)| stderr.contains(words))
            .map_or(Fault::Source, |(_, fault)| *fault)
    }

    /// The kind of an encoder's death by `signal`. A crash (`SIGSEGV`, `SIGBUS`,
    /// `SIGILL`, `SIGFPE`, `SIGABRT`, `SIGSYS`, `SIGTRAP`) happens on the GIF's bytes
    /// and would happen again: the GIF's fault, remembered, so a GIF that crashes ffmpeg
    /// does not crash it on every request. Any other signal came from outside.
    pub fn of_signal(signal: i32) -> Fault {
        match signal {
            libc::SIGSEGV
            | libc::SIGBUS
            | libc::SIGILL
            | libc::SIGFPE
            | libc::SIGABRT
            | libc::SIGSYS
            | libc::SIGTRAP => Fault::Source,
            _ => Fault::Killed,
        }
    }

    /// What a client is told (no path, no ffmpeg words).
    pub fn public_reason(self) -> &'static str {
        match self {
            Fault::Source => "the GIF cannot be transcoded",
            Fault::DiskFull => "the server's storage for variants is full",
            Fault::NoPermission => "the server cannot write its variants",
            Fault::Missing => "the server's folder for variants is missing",
            Fault::NoResources => "the server is out of memory or processes",
            Fault::Killed => "the encoder was stopped from outside",
            Fault::Spawn => "the encoder cannot be started",
            Fault::TimedOut => "the transcode took too long",
            Fault::Stopping => "the transcoder is stopping",
            Fault::Io => "the server cannot store the variant",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_the_hosts() {
        let os = io::Error::from_raw_os_error;
        for (errno, fault) in [
            (libc::ENOSPC, Fault::DiskFull),
            (libc::EDQUOT, Fault::DiskFull),
            (libc::EACCES, Fault::NoPermission),
            (libc::EPERM, Fault::NoPermission),
            (libc::EROFS, Fault::NoPermission),
            (libc::ENOENT, Fault::Missing),
            (libc::ENOTDIR, Fault::Missing),
            (libc::ENOMEM, Fault::NoResources),
            (libc::EIO, Fault::Io),
        ] {
            assert_eq!(Fault::of_io(&os(errno)), fault, "errno {errno}");
            assert!(!fault.is_source_fault());
        }
    }

    #[test]
    fn ffmpeg_output_naming_a_system_error_is_the_hosts() {
        for (stderr, fault) in [
            (
                "[mp4 @ 0x55] av_interleaved_write_frame(): No space left on device\n\
                 Error writing trailer of : No space left on device",
                Fault::DiskFull,
            ),
            (": Disk quota exceeded", Fault::DiskFull),
            (": Permission denied", Fault::NoPermission),
            (": Read-only file system", Fault::NoPermission),
            (": No such file or directory", Fault::Missing),
            ("Cannot allocate memory", Fault::NoResources),
            (
                "[gif @ 0x55] Invalid data found when processing input",
                Fault::Source,
            ),
            ("", Fault::Source),
        ] {
            assert_eq!(Fault::of_ffmpeg_output(stderr), fault, "{stderr}");
        }
        assert!(Fault::of_ffmpeg_output("Invalid data").is_source_fault());
    }

    #[test]
    fn crashes_are_the_gifs_and_other_signals_the_hosts() {
        for signal in [libc::SIGSEGV, libc::SIGABRT, libc::SIGFPE, libc::SIGBUS] {
            assert!(Fault::of_signal(signal).is_source_fault(), "{signal}");
        }
        for signal in [libc::SIGKILL, libc::SIGTERM, libc::SIGXFSZ, libc::SIGXCPU] {
            assert_eq!(Fault::of_signal(signal), Fault::Killed, "{signal}");
        }
        for fault in [Fault::Spawn, Fault::TimedOut, Fault::Stopping] {
            assert!(!fault.is_source_fault());
            assert!(!fault.public_reason().contains('/'));
        }
    }
}
