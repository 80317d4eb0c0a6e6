//! `oip-media -h` and `--help` as a person reads them (issue 23 §4): settings under one
//! heading per component, `-h` one line per flag, each default printed once, and no path
//! of the machine the binary was built on.

use std::process::Command;

use clap::CommandFactory;
use oip_media::cli::Cli;

/// The help the built binary prints for `flag`, with no setting in its environment (an
/// env value would show in `[env: …]`).
fn help(flag: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_oip-media"))
        .arg(flag)
        .env_clear()
        .current_dir(std::env::temp_dir())
        .output()
        .expect("the binary runs");
    assert!(output.status.success(), "{flag}: {output:?}");
    String::from_utf8(output.stdout).expect("UTF-8 help")
}

/// The headings every component's settings group prints.
const HEADINGS: [&str; 13] = [
    "Listening and connections",
    "Admission (bounded work, queues and waits)",
    "Filesystem calls",
    "Media roots and mapped files",
    "CORS",
    "Private media",
    "Logging",
    "GIF parsing and stills",
    "Derived files",
    "Variants (MP4, WebM, WebP)",
    "GUN relay",
    "Replicas (Redis)",
    "Record resolver",
];

/// Whether `line` starts a flag's entry (`  -h, --help`, `      --bind <BIND>`).
fn is_flag_line(line: &str) -> bool {
    let trimmed = line.trim_start();
    let indent = line.len() - trimmed.len();
    (2..=6).contains(&indent) && trimmed.starts_with('-')
}

/// The settings' long flags, from the command definition.
fn setting_flags() -> Vec<String> {
    Cli::command()
        .get_arguments()
        .filter(|arg| !matches!(arg.get_id().as_str(), "help" | "version"))
        .filter_map(|arg| arg.get_long().map(|long| format!("--{long}")))
        .collect()
}

#[test]
fn settings_are_grouped_under_headings() {
    for text in [help("-h"), help("--help")] {
        for heading in HEADINGS {
            assert!(
                text.lines().any(|line| line == format!("{heading}:")),
                "no `{heading}:` heading in\n{text}"
            );
        }
    }
    // Each heading holds its group, not everything: the first flag under "GUN relay" is
    // the relay's, and `--port` is under "Listening and connections".
    let short = help("-h");
    let under = |flag: &str| {
        let at = short
            .lines()
            .position(|line| is_flag_line(line) && line.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} in -h"));
        short
            .lines()
            .take(at)
            .filter(|line| line.ends_with(':') && !line.starts_with(' '))
            .last()
            .expect("a heading above")
            .to_owned()
    };
    assert_eq!(under("--port "), "Listening and connections:");
    assert_eq!(under("--gun-peers "), "GUN relay:");
    assert_eq!(
        under("--max-in-flight "),
        "Admission (bounded work, queues and waits):"
    );
    assert_eq!(under("--media-dir "), "Media roots and mapped files:");
}

#[test]
fn short_help_is_one_line_per_flag() {
    let text = help("-h");
    let flags = setting_flags();
    assert!(flags.len() > 90, "the settings ({})", flags.len());
    let options = text.split_once("Options:").expect("an options section").1;
    for (n, line) in options.lines().enumerate() {
        if line.is_empty() || (line.ends_with(':') && !line.starts_with(' ')) {
            continue;
        }
        assert!(
            is_flag_line(line),
            "line {n} of -h is not a flag's own line (a help spanning lines?): {line:?}"
        );
        // The summary sits beside the flag, not on a line of its own.
        let (_, summary) = line
            .trim_start()
            .split_once("  ")
            .unwrap_or_else(|| panic!("no summary beside the flag: {line:?}"));
        assert!(!summary.trim().is_empty(), "{line:?}");
    }
    for flag in &flags {
        let entries = options
            .lines()
            .filter(|line| {
                is_flag_line(line) && line.trim_start().split([' ', ',']).any(|word| word == flag)
            })
            .count();
        assert_eq!(entries, 1, "{flag} has {entries} lines in -h");
    }
}

#[test]
fn each_default_is_printed_once() {
    for text in [help("-h"), help("--help")] {
        // One entry per flag: from its flag line to the next flag line or heading.
        let mut entries: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            if is_flag_line(line) {
                entries.push((line.trim().to_owned(), String::new()));
            } else if line.ends_with(':') && !line.starts_with(' ') {
                entries.push((String::new(), String::new()));
            } else if let Some((_, body)) = entries.last_mut() {
                body.push_str(line);
                body.push('\n');
            }
        }
        let mut with_default = 0;
        for (flag_line, body) in &entries {
            let whole = format!("{flag_line}\n{body}");
            let printed = whole.matches("[default:").count();
            assert!(printed <= 1, "default printed {printed} times:\n{whole}");
            if printed == 1 {
                with_default += 1;
                // Nor restated in the text beside clap's own.
                for restated in ["(default ", "(default:", "Default:"] {
                    assert!(
                        !whole.contains(restated),
                        "default restated in the text:\n{whole}"
                    );
                }
            }
        }
        assert!(
            with_default > 80,
            "the defaults were found ({with_default})"
        );
    }
}

#[test]
fn no_path_of_the_build_machine_is_a_default() {
    let checkout = env!("CARGO_MANIFEST_DIR");
    for text in [help("-h"), help("--help")] {
        assert!(
            !text.contains(checkout),
            "the checkout's path {checkout} shows in the help"
        );
        assert!(
            text.lines()
                .any(|line| line.contains("--media-dir") && line.contains("[default: media]"))
                || text.contains("[default: media]\n"),
            "--media-dir defaults to the relative `media`"
        );
    }
}
