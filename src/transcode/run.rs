//! Runs one ffmpeg process: a child process, never work on the async runtime. Waiting
//! for it costs no thread (Tokio reaps children from its signal driver); its error
//! output is read into a small bounded buffer; past the job timeout it is killed and
//! reaped. `kill_on_drop` kills it too when the job is dropped (runtime shutdown, an
//! interrupted `oip-media transcode`), and its own process group keeps a terminal's
//! Ctrl-C from killing it behind the transcoder's back.

use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// Most error output kept from one run (its end, where ffmpeg says what failed).
const STDERR_KEPT: usize = 2048;

/// How one ffmpeg run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// It could not be started.
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
    /// It ran past the job timeout and was killed.
    #[error("ffmpeg took longer than {0:?} and was stopped")]
    TimedOut(Duration),
}

/// Runs `program args` to completion within `timeout`.
pub async fn run(program: &str, args: &[OsString], timeout: Duration) -> Result<(), RunError> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .map_err(RunError::Spawn)?;
    let stderr = child.stderr.take();
    let finished = tokio::time::timeout(timeout, async {
        let read_stderr = async {
            let mut kept = Vec::new();
            if let Some(mut pipe) = stderr {
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
            }
            kept
        };
        tokio::join!(child.wait(), read_stderr)
    })
    .await;
    match finished {
        Ok((Ok(status), _)) if status.success() => Ok(()),
        Ok((Ok(status), stderr)) => Err(RunError::Failed {
            status: status.to_string(),
            stderr: super::ffmpeg::tail(&String::from_utf8_lossy(&stderr), 600).to_owned(),
        }),
        Ok((Err(error), _)) => Err(RunError::Spawn(error)),
        Err(_) => {
            // SIGKILL and reap: no zombie, no process left writing into the temp file.
            let _ = child.kill().await;
            Err(RunError::TimedOut(timeout))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<OsString> {
        vec!["-c".into(), script.into()]
    }

    #[tokio::test]
    async fn success_failure_and_its_reason() {
        run("sh", &sh("exit 0"), Duration::from_secs(5))
            .await
            .unwrap();
        let error = run(
            "sh",
            &sh("echo 'bad input' >&2; exit 3"),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&error, RunError::Failed { stderr, .. } if stderr == "bad input"),
            "{error}"
        );
        assert!(matches!(
            run("/nonexistent/ffmpeg", &[], Duration::from_secs(5)).await,
            Err(RunError::Spawn(_))
        ));
    }

    #[tokio::test]
    async fn a_process_past_its_timeout_is_killed_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("echo $$ > '{}'; exec sleep 30", pid_file.display());
        let started = std::time::Instant::now();
        let error = run("sh", &sh(&script), Duration::from_millis(300))
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

    #[tokio::test]
    async fn error_output_is_bounded() {
        let error = run(
            "sh",
            &sh("head -c 100000 /dev/zero | tr '\\0' x >&2; exit 1"),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        let RunError::Failed { stderr, .. } = error else {
            panic!("failed");
        };
        assert!(stderr.len() <= 600 && stderr.chars().all(|c| c == 'x'));
    }
}
