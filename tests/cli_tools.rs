//! The tools around the command line, from the built binary: `--version`/`-V` with
//! commit, build date and features; shell completions; the man page (rendered by
//! `man` when it is installed).

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

const BINARY: &str = env!("CARGO_BIN_EXE_oip-media");

fn oip_media(args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .env_remove("MEDIA_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run oip-media")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8")
}

#[test]
fn version_names_the_commit_the_build_date_and_the_features() {
    let long = stdout(&oip_media(&["--version"]));
    let short = stdout(&oip_media(&["-V"]));
    assert_eq!(long, short);
    let line = long.trim_end();
    let prefix = format!("oip-media {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&prefix), "{line}");
    let rest = &line[prefix.len()..];
    let (commit, rest) = rest.split_once(", built ").expect("built");
    assert!(
        commit == "unknown" || commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{line}"
    );
    let (date, features) = rest.split_once(", features: ").expect("features");
    assert!(
        date == "unknown"
            || (date.len() == 10 && date.split('-').all(|p| p.parse::<u32>().is_ok())),
        "{line}"
    );
    let features = features.strip_suffix(')').expect("closing parenthesis");
    // This test binary's build enables the default features.
    assert!(
        features.split(',').any(|f| f == "jemalloc") || cfg!(not(feature = "jemalloc")),
        "{line}"
    );
}

#[test]
fn bash_completions_name_the_subcommands_and_the_flags() {
    let script = stdout(&oip_media(&["completions", "bash"]));
    for word in [
        "check",
        "transcode",
        "completions",
        "man",
        "--media-dir",
        "--check-timeout",
    ] {
        assert!(script.contains(word), "{word} missing from the bash script");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let script = stdout(&oip_media(&["completions", shell]));
        assert!(script.contains("media-dir"), "{shell}");
    }
    let unknown = oip_media(&["completions", "tcsh"]);
    assert_eq!(
        unknown.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn the_man_page_is_roff_that_man_renders() {
    let page = stdout(&oip_media(&["man"]));
    // The first request is the title, after the roff crate's two-line definition of the
    // apostrophe string (`.ie \n(.g .ds Aq …` / `.el …`), which groff needs first.
    let first = page
        .lines()
        .find(|l| !l.starts_with(".ie ") && !l.starts_with(".el "))
        .unwrap_or_default();
    assert!(first.starts_with(".TH oip-media 1 "), "{first}");
    assert!(page.contains("media\\-dir"), "the flags are in it");
    assert!(page.contains("check"), "the subcommands are listed");
    let Ok(mut man) = Command::new("man")
        .args(["-l", "-"])
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        println!("skipped: `man` is not installed (apt-get install man-db) to render the page");
        return;
    };
    man.stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let rendered = man.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    assert!(text.contains("--media-dir"), "{text}");
    assert!(text.contains("NAME"), "{text}");
}
