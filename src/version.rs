//! What this build is: the version string of `--version`/`-V`, `oip-media check` and the
//! start-up line, from the values `build.rs` sets.
//!
//! The build date is the date of the commit built (`git log -1 --format=%cs`), not the
//! day of the build, so that building one commit twice gives the same binary and a
//! build does not re-run every day. Builds without a checkout (the image's build stage)
//! take `OIP_MEDIA_BUILD_DATE` (`YYYY-MM-DD`) or `SOURCE_DATE_EPOCH` (the reproducible-
//! builds convention), else say `unknown`.

/// The crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The short commit this binary was built from, or `unknown`.
pub const COMMIT: &str = env!("OIP_MEDIA_COMMIT");

/// The commit's date (`YYYY-MM-DD`), or `unknown`.
pub const BUILD_DATE: &str = env!("OIP_MEDIA_BUILD_DATE");

/// The cargo features this binary was built with (`jemalloc`), comma-separated, or
/// `none`.
pub const FEATURES: &str = env!("OIP_MEDIA_FEATURES");

/// `0.1.0 (commit abc1234, built 2026-12-07, features: jemalloc)`: what `--version`
/// prints after the program's name.
pub(crate) const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("OIP_MEDIA_COMMIT"),
    ", built ",
    env!("OIP_MEDIA_BUILD_DATE"),
    ", features: ",
    env!("OIP_MEDIA_FEATURES"),
    ")"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_long_version_names_every_part() {
        assert!(LONG.starts_with(VERSION), "{LONG}");
        for part in [COMMIT, BUILD_DATE, FEATURES] {
            assert!(!part.is_empty() && LONG.contains(part), "{part}: {LONG}");
        }
        assert!(
            BUILD_DATE == "unknown" || BUILD_DATE.len() == 10 && BUILD_DATE.as_bytes()[4] == b'-',
            "{BUILD_DATE}"
        );
    }
}
