//! Records the commit the binary is built from (`OIP_MEDIA_COMMIT`, logged at start-up):
//! `git rev-parse --short HEAD`, or `unknown` outside a git checkout (a crate tarball, a
//! Docker build without `.git`). Re-run only when HEAD moves, so a build stays cheap.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=OIP_MEDIA_COMMIT={commit}");
    println!("cargo:rerun-if-changed=build.rs");
    // Every commit, checkout and reset appends to the HEAD log.
    for path in ["HEAD", "logs/HEAD"] {
        if let Some(path) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
