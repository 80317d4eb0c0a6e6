//! Sets, for `src/version.rs` (read with `env!`):
//! - `OIP_MEDIA_COMMIT`: the short commit of the checkout this binary is built from, or
//!   `unknown` outside a git checkout (a crate tarball);
//! - `OIP_MEDIA_BUILD_DATE`: that commit's date, `YYYY-MM-DD` (not the day of the build:
//!   one commit builds the same binary any day, and nothing re-runs daily); without a
//!   checkout, from `OIP_MEDIA_BUILD_DATE` or `SOURCE_DATE_EPOCH`, else `unknown`;
//! - `OIP_MEDIA_FEATURES`: the cargo features enabled, comma-separated, or `none`.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    // A build without a checkout (the container image's build stage) can be told the
    // commit: `--build-arg OIP_MEDIA_COMMIT=$(git rev-parse --short HEAD)`.
    println!("cargo:rerun-if-env-changed=OIP_MEDIA_COMMIT");
    let commit = std::env::var("OIP_MEDIA_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=OIP_MEDIA_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=OIP_MEDIA_BUILD_DATE");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let date = std::env::var("OIP_MEDIA_BUILD_DATE")
        .ok()
        .filter(|d| !d.is_empty())
        .or_else(|| {
            let epoch = std::env::var("SOURCE_DATE_EPOCH").ok()?;
            epoch.trim().parse::<i64>().ok().map(date_of_epoch)
        })
        .or_else(|| git(&["log", "-1", "--format=%cs"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=OIP_MEDIA_BUILD_DATE={date}");
    // Cargo sets CARGO_FEATURE_<NAME> for each enabled feature (`glibc-trim` ->
    // `GLIBC_TRIM`); none of this crate's feature names holds an underscore.
    let mut features: Vec<String> = std::env::vars()
        .filter_map(|(key, _)| {
            let name = key.strip_prefix("CARGO_FEATURE_")?;
            (name != "DEFAULT").then(|| name.to_ascii_lowercase().replace('_', "-"))
        })
        .collect();
    features.sort();
    let features = if features.is_empty() {
        "none".to_owned()
    } else {
        features.join(",")
    };
    println!("cargo:rustc-env=OIP_MEDIA_FEATURES={features}");
    println!("cargo:rerun-if-changed=build.rs");
    // Re-run on a new commit or checkout: this worktree's HEAD and the shared refs. Only
    // paths that exist (a missing one would re-run this, and rebuild the crate, always).
    let dirs = [
        git(&["rev-parse", "--absolute-git-dir"]),
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
    ];
    for (dir, names) in dirs
        .iter()
        .zip([&["HEAD"][..], &["packed-refs", "refs/heads"]])
    {
        let Some(dir) = dir else { continue };
        for name in names {
            let path = PathBuf::from(dir).join(name);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}

/// `YYYY-MM-DD` of a Unix time (UTC), for `SOURCE_DATE_EPOCH`: days to a civil date
/// (Howard Hinnant's `civil_from_days`), to need no crate in the build script.
fn date_of_epoch(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
