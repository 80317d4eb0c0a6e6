//! `oip-media transcode [--formats …] [DIR]`, run as a user would: it pre-makes the
//! variants of every GIF under a media tree into the derived folder the service serves
//! from, skips what is up to date, and can be interrupted (Ctrl-C) and run again.

mod transcode_support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use transcode_support::{
    FORKS_SLEEPERS, assert_plays, clip, fake_ffmpeg, fake_groups_alive, fake_pids, fake_runs,
    ffmpeg_or_skip, same_frames, slow_ffmpeg, wait_until,
};

const BIN: &str = env!("CARGO_BIN_EXE_oip-media");

/// A media tree: two web GIFs, one content-addressed GIF, one MP3 (not a GIF).
fn media_tree(root: &Path) {
    let gif = clip(24, 16, &[10, 20, 30], false, gif::Repeat::Infinite);
    for (path, bytes) in [
        ("web/fitnessally/a_180.gif", &gif[..]),
        ("web/fitnessally/b_(wall)_360.gif", &gif[..]),
        (&format!("{}/original", "ab".repeat(32)), &gif[..]),
        (
            &format!("{}/original", "cd".repeat(32)),
            b"ID3\x03 not a gif",
        ),
    ] {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

fn variants(derived: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(derived)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                // The folder's naming key is not a variant.
                .filter(|name| name != ".oip-media-key")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn transcode(args: &[&str], ffmpeg: &str) -> (i32, String) {
    let output = Command::new(BIN)
        .args(args)
        .env("FFMPEG", ffmpeg)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn premakes_every_variant_once_and_skips_what_is_up_to_date() {
    if !ffmpeg_or_skip("premakes_every_variant_once") {
        return;
    }
    let media = tempfile::tempdir().unwrap();
    media_tree(media.path());
    let derived = media.path().join(".derived");
    let derived_arg = derived.to_string_lossy().into_owned();
    let dir = media.path().to_string_lossy().into_owned();

    let (code, out) = transcode(
        &[
            "transcode",
            "--formats",
            "mp4,webm",
            "--derived-dir",
            &derived_arg,
            &dir,
        ],
        "ffmpeg",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 GIFs under"), "{out}");
    assert!(out.contains("made 6 "), "{out}");
    let made = variants(&derived);
    assert_eq!(made.len(), 6, "{made:?}");
    assert_eq!(made.iter().filter(|n| n.ends_with("-x264.mp4")).count(), 3);
    assert_eq!(made.iter().filter(|n| n.ends_with("-vp9.webm")).count(), 3);
    assert_eq!(
        std::fs::metadata(&derived).unwrap().mode() & 0o777,
        0o700,
        "the derived folder is private"
    );
    for name in &made {
        let mode = std::fs::metadata(derived.join(name)).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }

    // Again, with one more format and the settings after the subcommand's name: only
    // the new format is made.
    let (code, out) = transcode(
        &[
            "transcode",
            "--derived-dir",
            &derived_arg,
            "--formats",
            "webp,mp4",
            &dir,
        ],
        "ffmpeg",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("made 3 "), "{out}");
    assert!(out.contains("3 up to date"), "{out}");
    assert_eq!(variants(&derived).len(), 9);

    // A bad format is refused by the argument parser, naming the choices.
    let (code, out) = transcode(&["transcode", "--formats", "gif", &dir], "ffmpeg");
    assert_eq!(code, 2);
    assert!(out.contains("mp4") && out.contains("webm"), "{out}");
}

#[test]
fn without_ffmpeg_it_says_why_and_fails() {
    let media = tempfile::tempdir().unwrap();
    media_tree(media.path());
    let derived = media.path().join(".derived").to_string_lossy().into_owned();
    let dir = media.path().to_string_lossy().into_owned();
    let (code, out) = transcode(
        &["transcode", "--derived-dir", &derived, &dir],
        "/nonexistent/ffmpeg",
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot make mp4"), "{out}");
    assert!(out.contains("/nonexistent/ffmpeg"), "{out}");
}

#[test]
fn an_interrupted_run_leaves_nothing_half_done_and_the_next_one_carries_on() {
    if !ffmpeg_or_skip("an_interrupted_run_leaves_nothing_half_done") {
        return;
    }
    let media = tempfile::tempdir().unwrap();
    media_tree(media.path());
    let fakes = tempfile::tempdir().unwrap();
    let slow = slow_ffmpeg(fakes.path(), 1.0);
    let derived = media.path().join(".derived");
    let derived_arg = derived.to_string_lossy().into_owned();
    let dir = media.path().to_string_lossy().into_owned();

    let mut child = Command::new(BIN)
        .args(["transcode", "--formats", "mp4", "--jobs", "1"])
        .args(["--derived-dir", &derived_arg, &dir])
        .env("FFMPEG", &slow)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the second job runs (the first is done), then press Ctrl-C.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake_runs(fakes.path()) < 2 {
        assert!(Instant::now() < deadline, "the second job never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "exit status of an interrupted run"
    );
    // SIGKILL was sent to every ffmpeg as the run stopped; give the kernel a moment.
    for pid in fake_pids(fakes.path()) {
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| !stat.contains(") Z "))
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while alive() {
            assert!(Instant::now() < deadline, "ffmpeg {pid} was left running");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let left = variants(&derived);
    assert_eq!(
        left.len(),
        1,
        "one finished variant, no temp file: {left:?}"
    );
    assert!(!left[0].starts_with('.'));

    let (code, out) = transcode(
        &[
            "transcode",
            "--formats",
            "mp4",
            "--derived-dir",
            &derived_arg,
            &dir,
        ],
        "ffmpeg",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("made 2 "), "{out}");
    assert!(out.contains("1 up to date"), "{out}");
    assert_eq!(variants(&derived).len(), 3);
}

/// Interrupts a run whose two jobs hang in wrappers that forked processes: every
/// process of every job is gone when it exits, no temp file is left, and it says so.
fn interrupted_by(signal: rustix::process::Signal, name: &str, status: i32) {
    let media = tempfile::tempdir().unwrap();
    media_tree(media.path());
    let fakes = tempfile::tempdir().unwrap();
    let fake = fake_ffmpeg(fakes.path(), FORKS_SLEEPERS);
    let derived = media.path().join(".derived");
    let derived_arg = derived.to_string_lossy().into_owned();
    let dir = media.path().to_string_lossy().into_owned();
    let child = Command::new(BIN)
        .args(["transcode", "--formats", "webm", "--jobs", "2"])
        .args(["--derived-dir", &derived_arg, &dir])
        .env("FFMPEG", &fake)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Two jobs, each a shell and its two sleepers.
    wait_until("both jobs running", || fake_groups_alive(fakes.path()) == 6);
    let temps = variants(&derived);
    assert_eq!(temps.len(), 2, "each job has its temp file: {temps:?}");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(status), "{stderr}");
    assert!(
        stderr.contains(&format!("interrupted ({name})")),
        "it says it was interrupted: {stderr}"
    );
    assert_eq!(
        fake_groups_alive(fakes.path()),
        0,
        "no process of any job is left once it has exited"
    );
    assert_eq!(
        variants(&derived),
        Vec::<String>::new(),
        "no temp file left"
    );
}

#[test]
fn sigterm_stops_every_job_and_its_forked_processes() {
    interrupted_by(rustix::process::Signal::TERM, "SIGTERM", 143);
}

#[test]
fn sigint_stops_every_job_and_its_forked_processes() {
    interrupted_by(rustix::process::Signal::INT, "SIGINT", 130);
}

#[test]
fn failures_are_listed_without_a_terminal() {
    let media = tempfile::tempdir().unwrap();
    media_tree(media.path());
    let broken = media.path().join("web/broken.gif");
    std::fs::write(&broken, b"GIF89a\x08\x00\x08\x00 not really").unwrap();
    let fakes = tempfile::tempdir().unwrap();
    let fake = fake_ffmpeg(fakes.path(), "echo 'Invalid data found' >&2; exit 1");
    let derived = media.path().join(".derived").to_string_lossy().into_owned();
    let dir = media.path().to_string_lossy().into_owned();
    // `output()` pipes stdout and stderr: no terminal anywhere.
    let (code, out) = transcode(
        &[
            "transcode",
            "--formats",
            "mp4",
            "--derived-dir",
            &derived,
            &dir,
        ],
        &fake.to_string_lossy(),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("failed: {} (mp4): ", broken.display())),
        "{out}"
    );
    let lines = out.lines().filter(|l| l.starts_with("failed: ")).count();
    assert_eq!(lines, 4, "one line per variant not made: {out}");
    assert!(out.contains("4 failed"), "{out}");
}

#[test]
fn one_frame_and_same_frame_gifs_are_made_not_failed() {
    if !ffmpeg_or_skip("one_frame_and_same_frame_gifs_are_made_not_failed") {
        return;
    }
    let media = tempfile::tempdir().unwrap();
    let web = media.path().join("web");
    std::fs::create_dir_all(&web).unwrap();
    std::fs::write(
        web.join("one.gif"),
        clip(18, 12, &[30], false, gif::Repeat::Infinite),
    )
    .unwrap();
    std::fs::write(web.join("same.gif"), same_frames(18, 12, 5, 20)).unwrap();
    let derived = media.path().join(".derived");
    let derived_arg = derived.to_string_lossy().into_owned();
    let dir = media.path().to_string_lossy().into_owned();
    let (code, out) = transcode(
        &[
            "transcode",
            "--formats",
            "mp4,webm,webp",
            "--derived-dir",
            &derived_arg,
            &dir,
        ],
        "ffmpeg",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("made 6 ") && out.contains("0 failed"), "{out}");
    let made = variants(&derived);
    assert_eq!(made.len(), 6, "{made:?}");
    for name in made {
        let format = name.rsplit('.').next().unwrap().to_owned();
        assert_plays(&derived.join(&name), &format);
    }
}

/// Without a terminal (`docker exec` without `-t`, CI) the bar draws nothing: a progress
/// line comes every `--progress-interval`, sizes are in binary units, and the service's
/// own log lines (the transcoder's `info` start-up line) stay out of the output.
#[test]
fn piped_output_has_progress_lines_human_sizes_and_no_library_lines() {
    if !ffmpeg_or_skip("piped_output_has_progress_lines") {
        return;
    }
    let media = tempfile::tempdir().unwrap();
    media_tree(media.path());
    let fakes = tempfile::tempdir().unwrap();
    let slow = slow_ffmpeg(fakes.path(), 0.6);
    let derived = media.path().join(".derived");
    let derived_arg = derived.to_string_lossy().into_owned();
    let dir = media.path().to_string_lossy().into_owned();
    let output = Command::new(BIN)
        .args(["transcode", "--formats", "mp4", "--jobs", "1"])
        .args(["--progress-interval", "200ms"])
        .args(["--derived-dir", &derived_arg, &dir])
        .env("FFMPEG", &slow)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let progress: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("progress: "))
        .collect();
    assert!(progress.len() >= 2, "{stdout}");
    assert!(progress[0].contains("/3 done"), "{stdout}");
    assert!(
        progress[0].contains("failed") && progress[0].contains("elapsed"),
        "{stdout}"
    );
    let made = stdout
        .lines()
        .find(|l| l.starts_with("made "))
        .expect("summary");
    assert!(made.contains("KiB") || made.contains(" B "), "{made}");
    assert!(!made.contains("bytes"), "{made}");
    for text in [&stdout, &stderr] {
        assert!(!text.contains("INFO"), "library lines: {text}");
        assert!(!text.contains("transcoder ready"), "library lines: {text}");
    }
}
