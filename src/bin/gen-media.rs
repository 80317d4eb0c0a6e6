//! `gen-media`: writes the bundled sample GIFs or a large benchmark corpus.
//!
//! `gen-media bundled [MEDIA_ROOT]` regenerates the committed `media/` folder;
//! `gen-media corpus <MEDIA_ROOT> [--count N] [--seed S] [--project P]` writes a corpus
//! for load tests and prints a size summary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use oip_media::sample::{self, SizeClass};

/// Generates sample exercise GIFs for tests and benchmarks.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the bundled sample set into MEDIA_ROOT/web/fitnessally/.
    Bundled {
        /// Media root directory.
        #[arg(default_value = "media")]
        media_root: PathBuf,
    },
    /// Write a corpus of COUNT files with the realistic size mix into MEDIA_ROOT/web/PROJECT/.
    Corpus {
        /// Media root directory.
        media_root: PathBuf,
        /// Number of files.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Seed; the same seed writes the same files.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Project directory name under MEDIA_ROOT/web/.
        #[arg(long, default_value = "bench")]
        project: String,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gen-media: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> std::io::Result<()> {
    let start = Instant::now();
    match cli.command {
        Command::Bundled { media_root } => {
            let mut total = 0;
            for path in sample::write_bundled(&media_root)? {
                let len = std::fs::metadata(&path)?.len();
                total += len;
                println!("{len:>9}  {}", path.display());
            }
            println!("{total:>9}  total, {:.2?}", start.elapsed());
        }
        Command::Corpus {
            media_root,
            count,
            seed,
            project,
        } => {
            let files = sample::write_corpus(&media_root, &project, count, seed)?;
            let total: u64 = files.iter().map(|f| f.len).sum();
            println!(
                "{} files, {total} bytes in {}, {:.2?}",
                files.len(),
                media_root.join("web").join(&project).display(),
                start.elapsed()
            );
            for class in SizeClass::ALL {
                let sizes: Vec<u64> = files
                    .iter()
                    .filter(|f| f.width == class.width())
                    .map(|f| f.len)
                    .collect();
                let (Some(min), Some(max)) = (sizes.iter().min(), sizes.iter().max()) else {
                    continue;
                };
                let sum: u64 = sizes.iter().sum();
                println!(
                    "  {:>3} px: {:>6} files, {sum:>11} bytes, min {min}, mean {}, max {max}",
                    class.width(),
                    sizes.len(),
                    sum / sizes.len() as u64,
                );
            }
        }
    }
    Ok(())
}
