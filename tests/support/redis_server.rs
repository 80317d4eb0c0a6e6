//! Debian's `redis-server` as a child process on a loopback port, with a password, no
//! persistence, killed when dropped. Tests that need it skip with a printed reason when
//! it is not installed, unless `OIP_REQUIRE_REDIS` is set (as `.ci/run` does).
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variable that turns "skipped: no redis-server" into a failure.
pub const REQUIRE_REDIS: &str = "OIP_REQUIRE_REDIS";

/// The password every test Redis requires: the tests check it never shows in a log.
pub const PASSWORD: &str = "redis-test-pw-7f3a9c";

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one on a free loopback port, or prints why `test` is skipped and returns
    /// `None` (panics instead under `OIP_REQUIRE_REDIS`).
    pub fn start_or_skip(test: &str) -> Option<RedisServer> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !installed {
            assert!(
                std::env::var_os(REQUIRE_REDIS).is_none(),
                "{test}: redis-server is not installed but {REQUIRE_REDIS} is set"
            );
            eprintln!(
                "skipped {test}: redis-server is not installed (apt-get install redis-server)"
            );
            return None;
        }
        // redis-server cannot pick a free port itself: take one from the kernel and
        // hand it over (the window between the two is tiny on loopback).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        server.restart();
        Some(server)
    }

    /// `redis://:<password>@127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://:{PASSWORD}@127.0.0.1:{}/", self.port)
    }

    /// Kills it (SIGKILL: no goodbye to its clients) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port; waits up to 10 s until it accepts.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                PASSWORD,
            ])
            .args(["--maxmemory", "64mb", "--loglevel", "warning", "--dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
