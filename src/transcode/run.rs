//! Runs one ffmpeg process: a child process, never work on the async runtime. Waiting
//! for it costs no thread (Tokio reaps children from its signal driver); its error
//! output is read into a small bounded buffer.
//!
//! ffmpeg runs as the leader of its own process group ([`super::group`]), and a run
//! ends only when no process of that group is left: past the job timeout, or when the
//! transcoder stops, the whole group is killed (SIGKILL) and waited for, so a wrapper
//! script's forked encoder cannot outlive its job and the worker bound holds. A run
//! dropped half-way (its runtime shutting down) kills the group as it is dropped.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::group::{self, Group};

/// Most error output kept from one run (its end, where ffmpeg says what failed).
const STDERR_KEPT: usize = 2048;

/// How long the rest of the error output is read once every process of the group is
/// gone (the pipe is at its end by then; this only bounds a pipe some process outside
/// the group still holds).
const STDERR_AFTER_EXIT: Duration = Duration::from_secs(1);

/// How one ffmpeg run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// It could not be started (or waited for).
    #[error("cannot start ffmpeg: {0}")]
    Spawn(#[source] std::io::Error),
    /// It exited with an error.
    #[error("ffmpeg failed ({status}): {stderr}")]
    Failed {
        /// The exit status.
        status: String,
        /// The end of its error output.
        stderr: String,
    },
    /// It died of a signal: its own death, or one a wrapper shell reports as exit
    /// status 128 + n.
    #[error("ffmpeg was killed by signal {signal}")]
    Killed {
        /// The signal's number.
        signal: i32,
    },
    /// It ran past the job timeout and was killed.
    #[error("ffmpeg took longer than {0:?} and was stopped")]
    TimedOut(Duration),
    /// The transcoder is stopping; it was killed.
    #[error("ffmpeg was stopped: the transcoder is stopping")]
    Stopped,
}

/// How the wait for the child ended.
enum End {
    Exited(std::io::Result<ExitStatus>),
    TimedOut,
    Stopped,
}

/// Runs `program args` to completion within `timeout`, or until `stop` turns true.
/// Returns once no process of the run's group is left (or, should one survive SIGKILL
/// in the kernel, after [`group::GONE_WITHIN`], with an error in the log).
///
/// A success comes with the end of the error output: ffmpeg 5.1 exits 0 after failing
/// to write its trailer to a full disk (`Error writing trailer of …: No space left on
/// device`), leaving a truncated file, so the caller must read it.
pub async fn run(
    program: &str,
    args: &[OsString],
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<String, RunError> {
    let mut command = group::command(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    let mut child = command.spawn().map_err(RunError::Spawn)?;
    // `id()` is the pid until the child is reaped, which has not happened yet.
    let group = child.id().and_then(Group::led_by);
    let stderr = child
        .stderr
        .take()
        .map(|pipe| tokio::spawn(read_tail(pipe)));
    let end = {
        let stopped = async {
            if stop.wait_for(|stop| *stop).await.is_err() {
                // No one can stop the transcoder any more: never.
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            status = child.wait() => End::Exited(status),
            _ = tokio::time::sleep(timeout) => End::TimedOut,
            _ = stopped => End::Stopped,
        }
    };
    if !matches!(end, End::Exited(Ok(_))) {
        // Kill the group while its leader is not reaped (its id cannot have been
        // reused), then reap the leader.
        if let Some(group) = &group {
            group.kill();
        }
        let _ = child.kill().await;
    }
    // Whatever the leader's fate, its group goes with it: a wrapper's forked encoder,
    // or something ffmpeg left behind, would otherwise run on with parent pid 1.
    if let Some(group) = group {
        let gone = tokio::task::spawn_blocking(move || {
            let mut group = group;
            (group.kill_and_wait(group::GONE_WITHIN), group.id())
        })
        .await;
        if let Ok((false, pgid)) = gone {
            tracing::error!(
                pgid,
                "processes of an ffmpeg run survived SIGKILL for {:?}; giving its worker back",
                group::GONE_WITHIN
            );
        }
    }
    let stderr = match stderr {
        Some(task) => tokio::time::timeout(STDERR_AFTER_EXIT, task)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default(),
        None => Vec::new(),
    };
    match end {
        End::TimedOut => Err(RunError::TimedOut(timeout)),
        End::Stopped => Err(RunError::Stopped),
        End::Exited(Err(error)) => Err(RunError::Spawn(error)),
        End::Exited(Ok(status)) if status.success() => Ok(stderr_text(&stderr)),
        End::Exited(Ok(status)) => Err(failure(status, &stderr)),
    }
}

/// How an exit `status` with error output `stderr` failed.
fn failure(status: ExitStatus, stderr: &[u8]) -> RunError {
    if let Some(signal) = status.signal() {
        return RunError::Killed { signal };
    }
    // A shell (a wrapper script) reports a child killed by signal n as 128 + n; ffmpeg
    // itself exits 0, 1 or 255.
    if let Some(code @ 129..=192) = status.code() {
        return RunError::Killed { signal: code - 128 };
    }
    RunError::Failed {
        status: status.to_string(),
        stderr: stderr_text(stderr),
    }
}

/// The end of an error output, as text.
fn stderr_text(stderr: &[u8]) -> String {
    super::ffmpeg::tail(&String::from_utf8_lossy(stderr), 600).to_owned()
}

/// Reads `pipe` to its end, keeping the last [`STDERR_KEPT`] bytes.
async fn read_tail(mut pipe: tokio::process::ChildStderr) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > STDERR_KEPT {
            kept.drain(..kept.len() - STDERR_KEPT);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn sh(script: &str) -> Vec<OsString> {
        vec!["-c".into(), script.into()]
    }

    /// A stop signal that never comes.
    fn never() -> watch::Receiver<bool> {
        watch::channel(false).1
    }

    #[tokio::test]
    async fn success_failure_and_its_reason() {
        let said = run(
            "sh",
            &sh("echo 'a warning' >&2"),
            Duration::from_secs(5),
            never(),
        )
        .await
        .unwrap();
        assert_eq!(said, "a warning", "a success's error output is kept too");
        let error = run(
            "sh",
            &sh("echo 'bad input' >&2; exit 3"),
            Duration::from_secs(5),
            never(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&error, RunError::Failed { stderr, .. } if stderr == "bad input"),
            "{error}"
        );
        assert!(matches!(
            run("/nonexistent/ffmpeg", &[], Duration::from_secs(5), never()).await,
            Err(RunError::Spawn(_))
        ));
    }

    #[tokio::test]
    async fn a_death_by_signal_is_told_apart_from_a_failure() {
        let own = run("sh", &sh("kill -9 $$"), Duration::from_secs(5), never()).await;
        assert!(
            matches!(own, Err(RunError::Killed { signal: 9 })),
            "{own:?}"
        );
        // A wrapper that reports its child's death as 128 + n.
        let wrapped = run(
            "sh",
            &sh("sh -c 'kill -TERM $$'; exit $?"),
            Duration::from_secs(5),
            never(),
        )
        .await;
        assert!(
            matches!(wrapped, Err(RunError::Killed { signal: 15 })),
            "{wrapped:?}"
        );
    }

    #[tokio::test]
    async fn a_process_past_its_timeout_is_killed_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("echo $$ > '{}'; exec sleep 30", pid_file.display());
        let started = Instant::now();
        let error = run("sh", &sh(&script), Duration::from_millis(300), never())
            .await
            .unwrap_err();
        assert!(matches!(error, RunError::TimedOut(_)), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let proc_dir = format!("/proc/{}", pid.trim());
        assert!(
            !std::path::Path::new(&proc_dir).exists(),
            "the child is gone, not even a zombie"
        );
    }

    /// Runs `script` (which writes its pid, the group's id, first) and returns the
    /// outcome and the group's id.
    async fn in_group(
        script: &str,
        timeout: Duration,
        stop: watch::Receiver<bool>,
    ) -> (Result<String, RunError>, i32) {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("echo $$ > '{}'; {script}", pid_file.display());
        let outcome = run("sh", &sh(&script), timeout, stop).await;
        let pgid = std::fs::read_to_string(&pid_file).unwrap();
        (outcome, pgid.trim().parse().unwrap())
    }

    #[tokio::test]
    async fn what_a_timed_out_child_forked_dies_with_it() {
        let started = Instant::now();
        let (outcome, pgid) = in_group(
            "sleep 1000 & sleep 1000 & wait",
            Duration::from_millis(300),
            never(),
        )
        .await;
        assert!(matches!(outcome, Err(RunError::TimedOut(_))), "{outcome:?}");
        assert_eq!(
            group::live_members(pgid),
            0,
            "no process of the job left when run returns"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn what_a_successful_child_left_behind_is_killed() {
        // The background sleeper holds the error pipe open: run must neither wait
        // for it to end nor leave it running.
        let started = Instant::now();
        let (outcome, pgid) =
            in_group("sleep 1000 & exit 0", Duration::from_secs(30), never()).await;
        outcome.unwrap();
        assert_eq!(group::live_members(pgid), 0);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_stop_kills_the_group() {
        let (tx, rx) = watch::channel(false);
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            tx.send_replace(true);
            tx
        });
        let (outcome, pgid) = in_group("sleep 1000 & wait", Duration::from_secs(30), rx).await;
        assert!(matches!(outcome, Err(RunError::Stopped)), "{outcome:?}");
        assert_eq!(group::live_members(pgid), 0);
        drop(stopper.await);
    }

    #[tokio::test]
    async fn error_output_is_bounded() {
        let error = run(
            "sh",
            &sh("head -c 100000 /dev/zero | tr '\\0' x >&2; exit 1"),
            Duration::from_secs(5),
            never(),
        )
        .await
        .unwrap_err();
        let RunError::Failed { stderr, .. } = error else {
            panic!("failed");
        };
        assert!(stderr.len() <= 600 && stderr.chars().all(|c| c == 'x'));
    }
}
