//! `oip-media check`, run as an operator runs it (the built binary, its report on
//! stdout, its exit status): the bundled media passes; a missing or unreadable media
//! root, an Elasticsearch that refuses the credentials or the certificate, and a
//! dependency that is closed or never answers each fail with their own line, within
//! `--check-timeout`, and no credential is ever printed.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::elastic::{Access, ElasticStandIn, TestCa};
use support::relay_stub::RelayStub;

const BINARY: &str = env!("CARGO_BIN_EXE_oip-media");

/// The bundled media (`media/web/fitnessally/…`, `media/generated/`).
fn bundled_media() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("media")
}

/// Whether ffmpeg runs on this host.
fn ffmpeg_runs() -> bool {
    let runs = Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        runs || std::env::var_os("OIP_REQUIRE_FFMPEG").is_none(),
        "ffmpeg is not installed but OIP_REQUIRE_FFMPEG is set"
    );
    runs
}

/// `oip-media check` over `media`, with a clean environment: descriptor bounds that fit
/// any host's limit, no dependency but those `env` names, transcoding off unless asked.
fn check_command(media: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MEDIA_DIR", media)
        .env(
            "DERIVED_DIR",
            std::env::temp_dir().join("oip-media-check-test"),
        )
        .env("MAX_CONNECTIONS", "100")
        .env("MAP_CACHE_ENTRIES", "1000")
        .env("FFMPEG", "")
        .envs(env.iter().copied())
        .arg("check")
        .args(args)
        .stdin(Stdio::null());
    command
}

/// Runs the check; its output, stdout as text, and how long it took.
fn run(command: &mut Command) -> (Output, String, Duration) {
    let started = Instant::now();
    let output = command.output().expect("run oip-media check");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, stdout, started.elapsed())
}

/// The report's line for `name`.
fn line<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(name)))
        .unwrap_or_else(|| panic!("no `{name}` line in:\n{stdout}"))
}

/// Runs the check on a blocking thread (the stand-ins live on the test's runtime).
async fn run_async(mut command: Command) -> (Output, String, Duration) {
    tokio::task::spawn_blocking(move || run(&mut command))
        .await
        .expect("check thread")
}

#[test]
fn the_bundled_media_passes_every_check_with_exit_0() {
    let ffmpeg = if ffmpeg_runs() { "ffmpeg" } else { "" };
    let (output, stdout, _) = run(&mut check_command(
        &bundled_media(),
        &[("FFMPEG", ffmpeg)],
        &[],
    ));
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    for name in [
        "version",
        "config",
        "media root",
        "web root",
        "generated",
        "ffmpeg",
        "elasticsearch",
        "gun relay",
        "redis",
        "descriptors",
    ] {
        assert!(line(&stdout, name).starts_with("ok "), "{stdout}");
    }
    if !ffmpeg.is_empty() {
        assert!(line(&stdout, "ffmpeg").contains("libx264"), "{stdout}");
    }
    assert!(
        line(&stdout, "version").contains(env!("CARGO_PKG_VERSION")),
        "{stdout}"
    );
    assert!(stdout.ends_with("configuration ok (exit 0)\n"), "{stdout}");
}

#[test]
fn a_missing_media_root_fails_with_exit_2_and_its_line() {
    let missing = std::env::temp_dir().join("oip-media-check-no-such-root");
    let (output, stdout, _) = run(&mut check_command(&missing, &[], &[]));
    assert_eq!(output.status.code(), Some(2), "{stdout}");
    let root = line(&stdout, "media root");
    assert!(root.starts_with("FAIL "), "{stdout}");
    assert!(root.contains("MEDIA_DIR"), "{root}");
    assert!(root.contains("oip-media-check-no-such-root"), "{root}");
    assert!(root.contains("No such file"), "{root}");
}

#[test]
fn a_media_dir_without_web_fails_with_the_layout_hint() {
    let media = tempfile::tempdir().unwrap();
    std::fs::create_dir(media.path().join("fitnessally")).unwrap();
    let (output, stdout, _) = run(&mut check_command(media.path(), &[], &[]));
    assert_eq!(output.status.code(), Some(2), "{stdout}");
    let web = line(&stdout, "web root");
    assert!(web.starts_with("FAIL "), "{stdout}");
    assert!(web.contains("must hold a web/ folder"), "{web}");
    assert!(line(&stdout, "media root").starts_with("ok "), "{stdout}");
}

#[test]
fn an_unreadable_web_root_fails() {
    use std::os::unix::fs::PermissionsExt as _;
    // SAFETY: `geteuid` reads the process's effective user id; it cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root && Command::new("setpriv").arg("--version").output().is_err() {
        println!("skipped: running as root without setpriv to drop to an unprivileged user");
        return;
    }
    let media = support::media_root();
    std::fs::create_dir_all(media.path().join("generated")).unwrap();
    std::fs::set_permissions(media.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let web = media.path().join("web");
    std::fs::set_permissions(&web, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut command = check_command(media.path(), &[], &[]);
    if root {
        // Root reads anything: run as `nobody`, as an operator's service user would.
        let mut nobody = Command::new("setpriv");
        nobody.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        nobody.arg(command.get_program()).args(command.get_args());
        nobody.env_clear();
        for (key, value) in command.get_envs() {
            if let Some(value) = value {
                nobody.env(key, value);
            }
        }
        command = nobody;
    }
    let (output, stdout, _) = run(&mut command);
    std::fs::set_permissions(&web, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(output.status.code(), Some(2), "{stdout}");
    let web_line = line(&stdout, "web root");
    assert!(web_line.starts_with("FAIL "), "{stdout}");
    assert!(web_line.contains("ermission denied"), "{web_line}");
}

#[test]
fn invalid_settings_fail_first_and_alone() {
    let (output, stdout, _) = run(&mut check_command(
        &bundled_media(),
        &[("MAX_CONNECTIONS", "0")],
        &[],
    ));
    assert_eq!(output.status.code(), Some(2), "{stdout}");
    assert!(line(&stdout, "config").starts_with("FAIL "), "{stdout}");
    assert!(
        !stdout.contains("media root"),
        "stops at the settings: {stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elasticsearch_refusing_the_credentials_is_an_auth_failure_without_the_password() {
    let es = ElasticStandIn::start_with(
        Vec::new(),
        Vec::new(),
        Access {
            credentials: Some(("elastic".into(), "right-password".into())),
            tls: None,
        },
    )
    .await;
    let with_user_info = es.url().replace("http://", "http://elastic:url-s3cret@");
    for env in [
        vec![
            ("ELASTICSEARCHHOST", es.url()),
            ("ELASTICCLIENTUSERNAME", "elastic".to_owned()),
            ("ELASTICCLIENTPASSWORD", "env-s3cret".to_owned()),
        ],
        vec![("ELASTICSEARCHHOST", with_user_info)],
    ] {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (output, stdout, _) = run_async(check_command(
            &bundled_media(),
            &env,
            &["--check-timeout", "3s"],
        ))
        .await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stdout}");
        let es_line = line(&stdout, "elasticsearch");
        assert!(es_line.starts_with("FAIL "), "{stdout}");
        assert!(es_line.contains("auth"), "{es_line}");
        assert!(es_line.contains("401"), "{es_line}");
        for secret in ["env-s3cret", "url-s3cret"] {
            assert!(!stdout.contains(secret), "{secret} printed: {stdout}");
            assert!(!stderr.contains(secret), "{secret} printed: {stderr}");
        }
    }
    assert_eq!(es.auth_failures(), 2, "one search per run");

    // The right password: ok.
    let url = es.url();
    let env = [
        ("ELASTICSEARCHHOST", url.as_str()),
        ("ELASTICCLIENTUSERNAME", "elastic"),
        ("ELASTICCLIENTPASSWORD", "right-password"),
    ];
    let (output, stdout, _) = run_async(check_command(&bundled_media(), &env, &[])).await;
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        line(&stdout, "elasticsearch").starts_with("ok "),
        "{stdout}"
    );
    assert!(!stdout.contains("right-password"), "{stdout}");
    assert!(es.violations().is_empty(), "{:?}", es.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_a_tls_failure_and_the_ca_file_fixes_it() {
    let ca = TestCa::new();
    let es = ElasticStandIn::start_with(
        Vec::new(),
        Vec::new(),
        Access {
            credentials: None,
            tls: Some(ca.clone()),
        },
    )
    .await;
    let url = es.url();
    let (output, stdout, _) = run_async(check_command(
        &bundled_media(),
        &[("ELASTICSEARCHHOST", url.as_str())],
        &["--check-timeout", "3s"],
    ))
    .await;
    assert_eq!(output.status.code(), Some(2), "{stdout}");
    let es_line = line(&stdout, "elasticsearch");
    assert!(es_line.starts_with("FAIL "), "{stdout}");
    assert!(es_line.contains("TLS"), "{es_line}");

    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca_file(dir.path());
    let ca_file = ca_file.to_str().unwrap();
    let (output, stdout, _) = run_async(check_command(
        &bundled_media(),
        &[
            ("ELASTICSEARCHHOST", url.as_str()),
            ("ELASTIC_CA_FILE", ca_file),
        ],
        &[],
    ))
    .await;
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(line(&stdout, "elasticsearch").contains("TLS"), "{stdout}");
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn closed_and_silent_dependencies_fail_within_the_timeout() {
    let closed = format!("http://127.0.0.1:{}", closed_port());
    // Accepts connections (the kernel's backlog) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = format!("http://{}", silent.local_addr().unwrap());
    for (url, word) in [(&closed, "unreachable"), (&silent, "within 1s")] {
        let env = [
            ("ELASTICSEARCHHOST", url.as_str()),
            ("GUN_PEERS", url.as_str()),
            ("REDIS_URL", &*url.replace("http://", "redis://")),
        ];
        let (output, stdout, took) = run(&mut check_command(
            &bundled_media(),
            &env,
            &["--check-timeout", "1s"],
        ));
        assert_eq!(output.status.code(), Some(2), "{stdout}");
        for name in ["elasticsearch", "gun relay", "redis"] {
            let failed = line(&stdout, name);
            assert!(failed.starts_with("FAIL "), "{stdout}");
            if name != "redis" {
                assert!(
                    failed.contains(word)
                        || failed.contains("timed out")
                        || failed.contains("timeout"),
                    "{word}: {failed}"
                );
            }
        }
        // The probes run at once, each bounded by the timeout.
        assert!(took < Duration::from_secs(8), "took {took:?}: {stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gun_relay_that_answers_is_ok() {
    let relay = RelayStub::start().await;
    let url = relay.base_url();
    let (output, stdout, _) = run_async(check_command(
        &bundled_media(),
        &[("GUN_PEERS", url.as_str())],
        &[],
    ))
    .await;
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let gun = line(&stdout, "gun relay");
    assert!(gun.starts_with("ok "), "{stdout}");
    assert!(gun.contains(&url), "{gun}");
    assert_eq!(relay.requests(), 1, "one get");
}

#[test]
fn an_ffmpeg_that_hangs_is_a_warning_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("ffmpeg");
    std::fs::write(&fake, "#!/bin/sh\nsleep 30\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (output, stdout, took) = run(&mut check_command(
        &bundled_media(),
        &[("FFMPEG", fake.to_str().unwrap())],
        &["--check-timeout", "1s"],
    ));
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let ffmpeg = line(&stdout, "ffmpeg");
    assert!(ffmpeg.starts_with("warn "), "{stdout}");
    assert!(ffmpeg.contains("did not answer"), "{ffmpeg}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
}
