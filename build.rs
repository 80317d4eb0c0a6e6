//! Sets `OIP_MEDIA_COMMIT` (read with `env!`): the short commit of the checkout this
//! binary is built from, or `unknown` outside a git checkout (a crate tarball).

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
