//! `oip-media`: configuration → tracing → run (or a one-off subcommand). Nothing else
//! lives here.

mod allocator;

use clap::{CommandFactory, FromArgMatches};
use oip_media::Config;
use oip_media::cli::{Cli, Command};
use oip_media::config::RuntimeLayout;
use oip_media::request_log::RequestIdFormat;

fn main() -> std::process::ExitCode {
    let cli = Cli::command();
    let matches = cli.clone().get_matches();
    let Cli { config, command } =
        Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    // Descriptions of the CLI itself: no settings needed, nothing logged.
    match command {
        Some(Command::Completions(args)) => {
            return oip_media::cli_docs::completions(cli, args.shell);
        }
        Some(Command::Man) => return oip_media::cli_docs::man(cli),
        _ => {}
    }
    let json = config.log.log_format == "json";
    // Before anything is logged: a setting that cannot work is the first and only
    // error line, not the third after the configuration and a warning.
    if command.is_none()
        && let Err(error) = config.validate()
    {
        return fail(json, &error.to_string());
    }
    if let Some(Command::Transcode(_) | Command::Check(_)) = command {
        // A CLI: its own lines on stdout, the service's modules' log lines kept out of
        // them (stderr, `warn` and up unless RUST_LOG says otherwise).
        use std::io::IsTerminal as _;
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(
                std::io::stderr().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            )
            .init();
        return match command {
            Some(Command::Check(args)) => oip_media::check::run(&config, &args),
            Some(Command::Transcode(transcode)) => {
                oip_media::transcode::cli::run(config, transcode)
            }
            _ => std::process::ExitCode::FAILURE,
        };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Both formats add the request id to WARN and ERROR lines (`request_log`), under
    // the same top-level name as the access line's (`request_id`).
    if config.log.log_format == "json" {
        // Flattened: an event's fields are top-level keys, so the access line's
        // `status` is `.status`, not `.fields.status`.
        let format = tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(true);
        tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_env_filter(filter)
            .event_format(RequestIdFormat::json(format))
            .init();
        oip_media::access_log::write_directly(oip_media::access_log::LineFormat::Json);
    } else {
        let ansi = colour_wanted();
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            .event_format(RequestIdFormat::human(
                tracing_subscriber::fmt::format().with_ansi(ansi),
            ))
            .init();
        // With colour (a terminal) the line keeps going through `tracing`, which
        // colours it; it costs there what it costs, nobody reads 10,000 lines a second.
        if !ansi {
            oip_media::access_log::write_directly(oip_media::access_log::LineFormat::Human);
        }
    }
    allocator::start();

    // Multi-thread: the workers serve connections. Per-core: the server starts its own
    // serving threads, and this thread's runtime only waits for the signal and logs
    // the summary.
    let mut runtime = match config.server.runtime {
        RuntimeLayout::MultiThread => {
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            runtime.worker_threads(config.worker_threads());
            runtime
        }
        RuntimeLayout::PerCore => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("oip-media: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    log_configuration(&cli, &matches, &config, json);
    match runtime.block_on(run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => fail(json, &error.to_string()),
    }
}

/// The one line that says why the service stops: on stderr, as a JSON object in JSON
/// mode (so a log shipper parses it like every other line).
fn fail(json: bool, message: &str) -> std::process::ExitCode {
    if json {
        let line = serde_json::json!({
            "timestamp": oip_media::startup_log::rfc3339_now(),
            "level": "ERROR",
            "target": "oip_media",
            "message": format!("cannot start: {message}"),
        });
        eprintln!("{line}");
    } else {
        eprintln!("oip-media: {message}");
    }
    std::process::ExitCode::FAILURE
}

/// The start-up configuration: version, commit and every setting (redacted, with its
/// units). JSON: one object per line with the settings as an object under `config`;
/// human: the settings that differ from their defaults.
fn log_configuration(cli: &clap::Command, matches: &clap::ArgMatches, config: &Config, json: bool) {
    use oip_media::startup_log::{self, COMMIT, VERSION};
    if !tracing::enabled!(target: "oip_media", tracing::Level::INFO) {
        return;
    }
    let settings = startup_log::settings(cli, matches);
    let workers = config.worker_threads();
    if json {
        // Written whole here: a tracing field cannot hold an object.
        let line = serde_json::json!({
            "timestamp": startup_log::rfc3339_now(),
            "level": "INFO",
            "target": "oip_media",
            "message": "effective configuration",
            "version": VERSION,
            "commit": COMMIT,
            "built": oip_media::version::BUILD_DATE,
            "features": oip_media::version::FEATURES,
            "allocator": allocator::NAME,
            "worker_threads": workers,
            "config": startup_log::as_json(&settings),
        });
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    } else {
        let changed = startup_log::changed_pairs(&settings);
        tracing::info!(
            version = VERSION,
            commit = COMMIT,
            built = oip_media::version::BUILD_DATE,
            features = oip_media::version::FEATURES,
            allocator = allocator::NAME,
            worker_threads = workers,
            "effective configuration: {} (others at their defaults: oip-media --help)",
            if changed.is_empty() {
                "all defaults"
            } else {
                &changed
            }
        );
    }
}

async fn run(config: Config) -> Result<(), oip_media::StartError> {
    let sample = oip_media::app::sample_url_path(&config);
    for note in config.advisories() {
        tracing::warn!("{note}");
    }
    // Taken over before the first connection, so a SIGHUP from then on never kills.
    #[cfg(unix)]
    let hangup_signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let server = oip_media::server::start_with_shutdown(config, shutdown_signal()).await?;
    let addr = server.local_addr();
    match sample {
        Some(path) => tracing::info!("listening on http://{addr} — try http://{addr}{path}"),
        None => tracing::info!("listening on http://{addr}"),
    }
    // Kept past `wait` (which consumes the server) to stop the transcoder after the
    // last connection: every running ffmpeg's process group is killed and waited for,
    // its temp file removed, before the process exits.
    let state = std::sync::Arc::clone(server.app().state());
    #[cfg(unix)]
    let hangup = tokio::spawn(on_hangup(std::sync::Arc::clone(&state), hangup_signal));
    server.wait().await;
    #[cfg(unix)]
    hangup.abort();
    state.transcoder.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP (a terminal closed, `kill -HUP`, `docker kill -s HUP`): nothing stops, no
/// response under way is touched; the media roots and the derived folder are checked
/// again and the result logged, one line each (settings are not re-read: they come from
/// the command line and the environment, which a signal cannot change).
#[cfg(unix)]
async fn on_hangup(
    state: std::sync::Arc<oip_media::state::AppState>,
    hangup: Option<tokio::signal::unix::Signal>,
) {
    {
        let Some(mut hangup) = hangup else {
            return;
        };
        while hangup.recv().await.is_some() {
            let roots: Vec<(&'static str, std::path::PathBuf)> = state
                .media_roots()
                .into_iter()
                .map(|(name, path)| (name, path.to_path_buf()))
                .collect();
            let derived = state.gifs.shared_derived();
            let checked = tokio::task::spawn_blocking(move || {
                let _ = derived.check();
                roots
                    .into_iter()
                    .map(|(name, path)| {
                        let read = std::fs::read_dir(&path).map(drop);
                        (name, path, read)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
            for (name, path, read) in checked.unwrap_or_default() {
                match read {
                    Ok(()) => {
                        tracing::info!(root = %name, path = %path.display(), "SIGHUP: media root readable")
                    }
                    Err(error) => {
                        tracing::warn!(root = %name, path = %path.display(), %error, "SIGHUP: media root not readable")
                    }
                }
            }
            tracing::info!(derived = %state.gifs.derived().status(), "SIGHUP: media roots re-checked; still serving");
        }
    }
}

/// Resolves on SIGTERM (docker stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Colour codes only where someone reads them: the log (stdout) is a terminal and
/// `NO_COLOR` is unset or empty (<https://no-color.org>). Files, pipes and log shippers
/// get plain text.
fn colour_wanted() -> bool {
    use std::io::IsTerminal as _;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
