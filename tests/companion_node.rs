//! Runs the Node companion's suite (`companion/node`, `node --test`) against this
//! build's `oip-media` binary, so `cargo test` covers the module the indexer
//! `require`s: the indexer's semantics, batching counted at the server, every failure
//! path, unchanged inputs and a flat heap over 20,000 calls.
//!
//! Without Node it prints `skipped: …` — unless `OIP_REQUIRE_COMPANION_NODE` is set,
//! as `.ci/run` does. With `OIP_INDEXER_DIR` naming a checkout of the indexer, the
//! suite's parity test compares with the indexer's own `resolveRecords`.

use std::io::Write;
use std::path::Path;
use std::process::Command;

#[test]
fn companion_node_suite_passes_against_the_real_binary() {
    let node_version = Command::new("node").arg("--version").output();
    if !node_version.as_ref().is_ok_and(|out| out.status.success()) {
        if std::env::var_os("OIP_REQUIRE_COMPANION_NODE").is_some() {
            panic!("OIP_REQUIRE_COMPANION_NODE is set but `node` cannot run");
        }
        let _ = writeln!(
            std::io::stderr(),
            "skipped: companion/node suite: `node` is not installed"
        );
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("companion/node");
    let mut tests: Vec<String> = std::fs::read_dir(dir.join("test"))
        .expect("companion/node/test")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".test.js"))
        .map(|name| format!("test/{name}"))
        .collect();
    tests.sort();
    assert!(!tests.is_empty(), "no companion tests found");
    let out = Command::new("node")
        .arg("--test")
        .arg("--expose-gc")
        .args(&tests)
        .current_dir(&dir)
        .env("OIP_MEDIA_BIN", env!("CARGO_BIN_EXE_oip-media"))
        .output()
        .expect("node --test starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // What the suite says about skips, parity and memory shows in `cargo test -- --nocapture`.
    for line in stdout.lines() {
        if line.contains("skipped:") || line.contains("heap:") || line.contains("parity:") {
            println!("{}", line.trim_start_matches(['#', ' ']));
        }
    }
    assert!(
        out.status.success(),
        "companion/node suite failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("# fail 0"), "{stdout}");
}
