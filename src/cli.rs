//! The command line: the settings ([`Config`]) and, beside them, what `oip-media` does
//! instead of serving when asked (a subcommand). Settings may come before or after the
//! subcommand's name: the ones subcommands use are `global`.

use crate::config::Config;

/// `oip-media [SETTINGS] [COMMAND]`.
///
/// `term_width = 0`: help is never wrapped (this clap has no terminal-width support), so
/// each flag of `-h` keeps its one-line summary on its own line beside the flag.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "oip-media",
    version = crate::version::LONG,
    term_width = 0,
    about = "Media service for the OIP indexer: memory-mapped, zero-copy GIF serving and a 404-caching GUN relay companion."
)]
pub struct Cli {
    /// Every setting of the service.
    #[command(flatten)]
    pub config: Config,

    /// A one-off task instead of serving (no subcommand: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `oip-media` does instead of serving, when asked.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Pre-make the MP4/WebM/WebP variants of every GIF under a media tree.
    ///
    /// Shows a progress bar. Variants already made (same file version, same encoder) are skipped, so an
    /// interrupted run (Ctrl-C) can simply be run again. Uses the serve settings for the
    /// derived folder, ffmpeg and the limits (`--derived-dir`, `--ffmpeg`,
    /// `--mp4-encoder`, `--transcode-*`, `--gif-max-*`), given before or after
    /// `transcode`, or as environment variables.
    Transcode(crate::transcode::cli::TranscodeCommand),
    /// Check the settings, the media roots and the dependencies, then exit (like `nginx -t`).
    ///
    /// Validates the settings as serving would; opens and lists the media roots; runs
    /// ffmpeg (when transcoding is on); sends one bounded request to Elasticsearch, the
    /// GUN relay and Redis (those configured); prints the descriptor plan. One line per
    /// check: `ok`, `warn` or `FAIL`. Exit 0: all ok; 1: warnings (the service would start
    /// but not as configured: bounds lowered, no ffmpeg, no generated-media folder); 2: a
    /// failure (it would not start, or a configured dependency refuses or does not answer).
    Check(crate::check::CheckArgs),
    /// Print a shell completion script to stdout.
    ///
    /// For example `oip-media completions bash > /etc/bash_completion.d/oip-media`.
    Completions(crate::cli_docs::CompletionsArgs),
    /// Print the man page (roff) to stdout (`oip-media man | man -l -`).
    Man,
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use clap::Parser;

    use super::*;

    #[test]
    fn transcode_defaults_and_the_subcommand() {
        let cli = Cli::parse_from(["oip-media"]);
        let c = &cli.config;
        let t = &c.transcode;
        assert_eq!(t.ffmpeg, "ffmpeg");
        assert_eq!(t.mp4_encoder, "libx264");
        assert_eq!(t.mp4_crf, 28);
        assert_eq!((t.transcode_workers, t.transcode_threads), (1, 2));
        assert_eq!((t.transcode_queue, t.transcode_max_waiting), (64, 256));
        assert_eq!(t.transcode_timeout, Duration::from_secs(60));
        assert_eq!(t.transcode_wait, Duration::from_secs(15));
        assert_eq!(t.transcode_failure_ttl, Duration::from_secs(600));
        assert!(!t.auto_format);
        assert!(cli.command.is_none(), "no subcommand: serve");
        assert_eq!(c.derived.derived_max_bytes, 1 << 30);
        assert!(Cli::try_parse_from(["oip-media", "--mp4-encoder", "x265"]).is_err());

        // Settings before or after the subcommand's name both count.
        let Cli { config: c, command } = Cli::parse_from([
            "oip-media",
            "--derived-dir",
            "/d",
            "transcode",
            "--formats",
            "mp4,webm",
            "--mp4-encoder",
            "h264_nvenc",
            "/media",
        ]);
        assert_eq!(c.derived.derived_dir, PathBuf::from("/d"));
        assert_eq!(c.transcode.mp4_encoder, "h264_nvenc");
        let Some(Command::Transcode(cmd)) = command else {
            panic!("transcode subcommand");
        };
        use crate::transcode::VariantFormat;
        assert_eq!(cmd.formats, vec![VariantFormat::Mp4, VariantFormat::Webm]);
        assert_eq!(cmd.dir, Some(PathBuf::from("/media")));
        assert!(Cli::try_parse_from(["oip-media", "transcode", "--formats", "gif"]).is_err());
        let Some(Command::Check(_)) = Cli::parse_from(["oip-media", "check"]).command else {
            panic!("check subcommand");
        };
    }
}
