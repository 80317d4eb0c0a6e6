//! The global allocator of the `oip-media` binary (not of the library: tests and
//! benches that link the library keep the system allocator, and may install their
//! own counting one).
//!
//! Why not glibc's malloc: after a burst of hostile resolves it kept every page it
//! had grown to — 100 MiB and more above idle, for good — because freed small chunks
//! stay in each thread's arena. jemalloc with a background purging thread gave the
//! memory back within a second or two at the same or lower peak; the measurements of
//! every candidate (glibc, glibc trimmed every second, mimalloc, jemalloc) are in
//! BENCHMARKS.md, "Resolver memory", with the command that produced them.
//!
//! The choice is a cargo feature (`jemalloc`, the default; `mimalloc`; `glibc-trim`;
//! none for plain glibc) so the comparison can be re-run on any build.

#[cfg(feature = "jemalloc")]
mod chosen {
    #[global_allocator]
    static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

    /// jemalloc's options, read once when it initialises (before `main`), as its
    /// `malloc_conf` symbol (`_rjem_` prefixed by tikv-jemalloc-sys):
    /// - `background_thread:true`: a jemalloc thread purges freed pages on its own,
    ///   so memory goes back even when no request comes to trigger a purge;
    /// - `dirty_decay_ms:1000`: freed pages are returned to the kernel within about a
    ///   second (default 10 s), so RssAnon falls back "a few seconds" after a burst;
    /// - `muzzy_decay_ms:0`: returned with `MADV_DONTNEED`, which RssAnon shows at once,
    ///   rather than `MADV_FREE`, which the kernel reclaims only under pressure.
    ///
    /// The `_RJEM_MALLOC_CONF` environment variable still overrides these.
    // SAFETY: jemalloc reads this symbol as `const char *malloc_conf`: one pointer to
    // a NUL-terminated string. A `&[u8; N]` is exactly one (thin) pointer, the bytes
    // end with NUL, and they are static, so they outlive every read.
    #[unsafe(export_name = "_rjem_malloc_conf")]
    static MALLOC_CONF: &[u8; 60] =
        b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

    /// Nothing to start: jemalloc's background thread starts itself.
    pub fn start() {}
}

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
mod chosen {
    #[global_allocator]
    static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

    /// Nothing to start: mimalloc purges freed pages on its own timer.
    pub fn start() {}
}

#[cfg(all(
    feature = "glibc-trim",
    not(feature = "jemalloc"),
    not(feature = "mimalloc")
))]
mod chosen {
    /// glibc's malloc, with a thread that hands free heap pages back to the kernel
    /// every second (`malloc_trim(0)` walks every arena).
    pub fn start() {
        let spawned = std::thread::Builder::new()
            .name("malloc-trim".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    // SAFETY: `malloc_trim` only releases memory glibc's allocator
                    // holds free; it may be called from any thread at any time.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the malloc-trim thread");
        }
    }
}

#[cfg(not(any(feature = "jemalloc", feature = "mimalloc", feature = "glibc-trim")))]
mod chosen {
    /// The system allocator, untuned.
    pub fn start() {}
}

/// Starts whatever the chosen allocator needs running beside the service.
pub fn start() {
    chosen::start();
}

/// The allocator this binary was built with, for the start-up log.
pub const NAME: &str = if cfg!(feature = "jemalloc") {
    "jemalloc"
} else if cfg!(feature = "mimalloc") {
    "mimalloc"
} else if cfg!(feature = "glibc-trim") {
    "glibc malloc + malloc_trim every 1s"
} else {
    "glibc malloc"
};
