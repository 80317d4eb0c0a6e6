//! The command line described for the tools around it: shell completion scripts
//! (`oip-media completions <shell>`, `clap_complete`) and the man page (`oip-media man`,
//! `clap_mangen`), both generated from the same `clap` definition as `--help`, so they
//! never drift from the flags the binary takes.

use std::io::Write as _;
use std::process::ExitCode;

/// Arguments of `oip-media completions`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Writes the completion script for `shell` of `command` (the whole CLI) to stdout.
pub fn completions(mut command: clap::Command, shell: clap_complete::Shell) -> ExitCode {
    let name = command.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    write_out(&script)
}

/// Writes the man page of `command` (roff, section 1) to stdout.
pub fn man(command: clap::Command) -> ExitCode {
    let mut page = Vec::new();
    if let Err(error) = man_page(command, &mut page) {
        eprintln!("oip-media man: {error}");
        return ExitCode::FAILURE;
    }
    write_out(&page)
}

/// The man page of `command` (its subcommands listed in it) into `out`.
pub(crate) fn man_page(
    command: clap::Command,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    clap_mangen::Man::new(command).render(out)
}

/// `bytes` to stdout; a closed pipe (`| head`) is not an error worth a message.
fn write_out(bytes: &[u8]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("oip-media: cannot write to stdout: {error}");
            ExitCode::FAILURE
        }
    }
}
