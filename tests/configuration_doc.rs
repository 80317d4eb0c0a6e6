//! `docs/configuration.md` is generated from clap's own definition of the settings
//! (`oip_media::cli::Cli::command()`), so the page cannot drift from `oip-media --help`:
//! every argument in order, grouped by its help heading, with its flag, environment
//! variable, default, possible values and help text.
//!
//! The test fails, with the lines that differ, when the file is not what the settings
//! say. After changing a setting, write the page again with
//! `OIP_BLESS=1 cargo test --test configuration_doc` and commit it.
//!
//! The generator lives here, not in `src/`: it is documentation tooling, and the service
//! should not carry it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command, CommandFactory};

/// Where the generated page lives, relative to the repository.
const DOC: &str = "docs/configuration.md";

/// What a reader needs before the list; the list itself comes from clap.
const PREAMBLE: &str = "\
Every setting of `oip-media`, generated from the same clap definitions as
`oip-media --help` by `tests/configuration_doc.rs` (do not edit by hand: change the doc
comment of the setting, then run `OIP_BLESS=1 cargo test --test configuration_doc`).

- Every setting is a flag with an environment-variable twin; a flag wins over its variable.
  The indexer's names are reused where they mean the same thing (`PORT`, `MEDIA_DIR`,
  `GUN_PEERS`, `ELASTICSEARCHHOST`, `JWT_SECRET`, …).
- Durations take `ms`, `s`, `m`, `h` (`500ms`, `30s`); sizes take `KiB`, `MiB`, `GiB`.
- An invalid value stops start-up with one line naming the setting by flag and variable;
  the effective configuration is logged once at start-up, credentials redacted.
- Defaults that depend on the machine are written as `<repository>` (the checkout the
  binary was built from) and `$TMPDIR` (the system's temporary folder).
- What each bound does to hostile input: [hostile-input.md](hostile-input.md); the ones a
  newcomer needs: the [README](../README.md#running-it).
";

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A default value as a reader on any machine should see it: this checkout's path and the
/// temporary folder are machine-specific, so they are named instead of spelled out.
fn portable(value: &str) -> String {
    let mut value = value.to_owned();
    let repo = repository();
    let repo = repo.to_string_lossy();
    if !repo.is_empty() {
        value = value.replace(repo.as_ref(), "<repository>");
    }
    let tmp = std::env::temp_dir();
    let tmp = tmp.to_string_lossy();
    let tmp = tmp.trim_end_matches('/');
    if !tmp.is_empty() {
        value = value.replace(tmp, "$TMPDIR");
    }
    value
}

/// Arguments a page of settings leaves out: clap's own `--help` / `--version`, and
/// anything hidden.
fn documented(arg: &Arg) -> bool {
    !arg.is_hide_set() && !matches!(arg.get_id().as_str(), "help" | "version")
}

/// `--name <VALUE>` (or `<VALUE>` for a positional argument, `--name` for a switch).
fn usage(arg: &Arg) -> String {
    let value = arg
        .get_value_names()
        .and_then(|names| names.first())
        .map(|name| name.to_string())
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
    let takes_value = arg.get_action().takes_values();
    match (arg.get_long(), arg.get_short()) {
        (Some(long), short) => {
            let mut s = String::new();
            if let Some(short) = short {
                let _ = write!(s, "-{short}, ");
            }
            let _ = write!(s, "--{long}");
            if takes_value {
                let _ = write!(s, " <{value}>");
            }
            s
        }
        (None, Some(short)) if takes_value => format!("-{short} <{value}>"),
        (None, Some(short)) => format!("-{short}"),
        (None, None) => format!("<{value}>"),
    }
}

/// The help text clap shows for `--help` (the long form when the doc comment has one),
/// as Markdown paragraphs.
fn help_text(arg: &Arg) -> String {
    arg.get_long_help()
        .or_else(|| arg.get_help())
        .map(|s| s.to_string())
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// One argument: a heading with its flag, a line with its environment variable, default
/// and possible values, then its help.
fn render_arg(out: &mut String, arg: &Arg) {
    let _ = writeln!(out, "### `{}`\n", usage(arg));
    let mut facts = Vec::new();
    if let Some(env) = arg.get_env() {
        facts.push(format!("env `{}`", env.to_string_lossy()));
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| format!("`{}`", portable(&v.to_string_lossy())))
        .collect();
    if !defaults.is_empty() {
        facts.push(format!("default {}", defaults.join(", ")));
    } else if matches!(arg.get_action(), ArgAction::SetTrue) {
        facts.push("a switch: off unless given".to_owned());
    } else if arg.is_required_set() {
        facts.push("required".to_owned());
    } else {
        facts.push("unset by default".to_owned());
    }
    let values: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| format!("`{}`", v.get_name()))
        .collect();
    if !values.is_empty() {
        facts.push(format!("one of {}", values.join(", ")));
    }
    if arg.is_global_set() {
        facts.push("also for subcommands".to_owned());
    }
    let _ = writeln!(out, "{}\n", facts.join(" · "));
    let help = help_text(arg);
    if !help.is_empty() {
        let _ = writeln!(out, "{help}\n");
    }
}

/// A GitHub-style anchor for a heading (lower case, punctuation dropped, spaces to `-`).
fn anchor(heading: &str) -> String {
    heading
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// The arguments of `command` grouped by help heading, in the order clap lists them: a
/// group appears where its first argument does. Arguments without a heading come first,
/// under `untitled`.
fn groups<'a>(command: &'a Command, untitled: &str) -> Vec<(String, Vec<&'a Arg>)> {
    let mut groups: Vec<(String, Vec<&Arg>)> = Vec::new();
    for arg in command.get_arguments().filter(|a| documented(a)) {
        let heading = arg.get_help_heading().unwrap_or(untitled).to_owned();
        match groups.iter_mut().find(|(h, _)| *h == heading) {
            Some((_, args)) => args.push(arg),
            None => groups.push((heading, vec![arg])),
        }
    }
    // An untitled group, when there is one, leads (clap prints it first too).
    groups.sort_by_key(|(h, _)| h != untitled);
    groups
}

/// The whole page for `command`.
fn render(command: &Command) -> String {
    let mut out = String::new();
    let name = command.get_name();
    let _ = writeln!(out, "# Configuration\n");
    let _ = writeln!(
        out,
        "<!-- Generated by tests/configuration_doc.rs from `{name} --help`'s definitions. Do not edit. -->\n"
    );
    if let Some(about) = command.get_about() {
        let _ = writeln!(out, "`{name}`: {}\n", about.to_string().trim());
    }
    let _ = writeln!(out, "{PREAMBLE}");

    // Untitled arguments go under "Options", as `--help` prints them.
    let serve = groups(command, "Options");
    let subcommands: Vec<&Command> = command
        .get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
        .collect();
    let _ = writeln!(out, "Settings of the service, by group:\n");
    for (heading, args) in &serve {
        let _ = writeln!(out, "- [{heading}](#{}) ({})", anchor(heading), args.len());
    }
    for sub in &subcommands {
        let title = format!("{name} {}", sub.get_name());
        let _ = writeln!(out, "- [`{title}`](#{})", anchor(&title));
    }
    let _ = writeln!(out);
    for (heading, args) in &serve {
        let _ = writeln!(out, "## {heading}\n");
        for arg in args {
            render_arg(&mut out, arg);
        }
    }
    for sub in subcommands {
        let _ = writeln!(out, "## `{name} {}`\n", sub.get_name());
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            let _ = writeln!(out, "{}\n", about.to_string().trim());
        }
        // The service's global settings apply here too; only the subcommand's own are listed.
        let own: Vec<&Arg> = sub
            .get_arguments()
            .filter(|a| documented(a) && !a.is_global_set())
            .collect();
        if own.is_empty() {
            let _ = writeln!(out, "No settings of its own: it takes the service's.\n");
        }
        for arg in own {
            render_arg(&mut out, arg);
        }
    }
    // One trailing newline, whatever the last block left.
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out.push('\n');
    out
}

/// The lines that differ, numbered, at most `limit` of them: enough to see what changed
/// without a diff tool.
fn differences(on_disk: &str, generated: &str, limit: usize) -> String {
    let a: Vec<&str> = on_disk.lines().collect();
    let b: Vec<&str> = generated.lines().collect();
    let mut report = String::new();
    let mut shown = 0;
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (a.get(i), b.get(i));
        if x != y {
            if shown == limit {
                let _ = writeln!(report, "  … (more lines differ)");
                break;
            }
            let _ = writeln!(report, "  line {}:", i + 1);
            let _ = writeln!(report, "    {DOC}: {}", x.copied().unwrap_or("<no line>"));
            let _ = writeln!(
                report,
                "    from clap: {}",
                y.copied().unwrap_or("<no line>")
            );
            shown += 1;
        }
    }
    if a.len() != b.len() {
        let _ = writeln!(
            report,
            "  ({DOC} has {} lines; clap's settings make {})",
            a.len(),
            b.len()
        );
    }
    report
}

#[test]
fn configuration_doc_matches_the_settings() {
    let generated = render(&oip_media::cli::Cli::command());
    let path = repository().join(DOC);
    if std::env::var_os("OIP_BLESS").is_some_and(|v| !v.is_empty()) {
        std::fs::write(&path, &generated).expect("write docs/configuration.md");
        println!("wrote {}", path.display());
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{DOC} differs from the settings clap defines (oip-media --help).\n\
         Write it again with `OIP_BLESS=1 cargo test --test configuration_doc` and commit it.\n\
         First differences:\n{}",
        differences(&on_disk, &generated, 12)
    );
}

/// The page lists every setting `--help` has, each with its variable and default: the
/// check above could not notice a generator that dropped arguments.
#[test]
fn every_setting_is_on_the_page() {
    let command = oip_media::cli::Cli::command();
    let page = render(&command);
    let mut count = 0;
    for arg in command.get_arguments().filter(|a| documented(a)) {
        let flag = format!("`{}", usage(arg));
        assert!(page.contains(&flag), "{flag} missing from the page");
        if let Some(env) = arg.get_env() {
            let env = format!("env `{}`", env.to_string_lossy());
            assert!(page.contains(&env), "{env} missing from the page");
        }
        count += 1;
    }
    assert!(
        count >= 80,
        "only {count} settings found: is this the service's command?"
    );
}

/// The generator on a small command of known shape: headings group and order the
/// arguments, and every fact a reader needs is written out.
#[test]
fn the_generator_writes_what_clap_knows() {
    // clap keeps defaults as `&'static str`: a computed one is leaked, as derive's are kept.
    let scratch: &'static str = Box::leak(
        std::env::temp_dir()
            .join("x")
            .to_string_lossy()
            .into_owned()
            .into_boxed_str(),
    );
    let command = Command::new("demo")
        .about("A demo.")
        .arg(
            Arg::new("port")
                .long("port")
                .env("PORT")
                .default_value("8080")
                .help("Port to listen on."),
        )
        .next_help_heading("Logs")
        .arg(
            Arg::new("log_format")
                .long("log-format")
                .env("LOG_FORMAT")
                .value_parser(["human", "json"])
                .default_value("human")
                .help("How lines look."),
        )
        .arg(
            Arg::new("derived")
                .long("derived-dir")
                .default_value(scratch)
                .help("Scratch."),
        )
        .arg(
            Arg::new("quiet")
                .long("quiet")
                .action(ArgAction::SetTrue)
                .help("Say less."),
        )
        .subcommand(Command::new("check").about("Check and exit."));
    let page = render(&command);
    let general = page.find("## Options").expect("untitled group first");
    let logs = page.find("## Logs").expect("the Logs heading");
    assert!(general < logs);
    assert!(
        page.contains("### `--port <PORT>`\n\nenv `PORT` · default `8080`\n\nPort to listen on.")
    );
    assert!(page.contains("env `LOG_FORMAT` · default `human` · one of `human`, `json`"));
    assert!(
        page.contains("default `$TMPDIR/x`"),
        "machine paths named, not spelled out"
    );
    assert!(page.contains("### `--quiet`\n\na switch: off unless given"));
    assert!(page.contains("## `demo check`\n\nCheck and exit."));
    assert!(page.contains("- [Logs](#logs) (3)"));
    // The port comes before the Logs group's first setting, in clap's order.
    assert!(page.find("`--port").unwrap() < page.find("`--log-format").unwrap());
}

#[test]
fn differences_name_the_lines() {
    let report = differences("a\nb\nc\n", "a\nB\nc\nd\n", 12);
    assert!(report.contains("line 2:"));
    assert!(report.contains(&format!("{DOC}: b")));
    assert!(report.contains("from clap: B"));
    assert!(report.contains("line 4:"));
    assert!(!report.contains("line 1:"));
    assert!(Path::new(DOC).is_relative());
}
