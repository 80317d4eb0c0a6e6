//! ffmpeg's process group: whatever a job starts — ffmpeg itself, or a wrapper script
//! and every process it forks — lives in one process group of its own, so that a
//! timeout, an interrupt or a shutdown kills all of it at once, and a job knows when
//! none of it is left.
//!
//! Killing only the direct child is not enough: with `FFMPEG` pointing at a wrapper
//! (`nice ffmpeg "$@"`, a script that forks), the real encoder would be left running
//! with parent pid 1 while the worker bound counted it as gone.
//!
//! - [`command`] starts a program as the leader of a new group (`setpgid(0, 0)`, which
//!   also keeps a terminal's Ctrl-C from reaching it behind the transcoder's back), and
//!   asks the kernel to SIGKILL it if this process dies (`PR_SET_PDEATHSIG`), so even
//!   an `oip-media` killed by the OOM killer leaves no encoder behind (the signal goes
//!   to the direct child only: the group kill below covers the rest, whenever this
//!   process lives to send it).
//! - `Group` kills the group (`killpg(SIGKILL)`) and waits, bounded, until no member
//!   is alive; dropped without that, it still kills the group, so a job dropped with
//!   its runtime leaves nothing running.
//!
//! The only `unsafe` of the transcoder is here: the `pre_exec` hook.

use std::io;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// How long a job waits for its killed group to be gone before it gives up waiting
/// (and says so in the log). SIGKILL ends a process within milliseconds unless it is
/// stuck in the kernel.
pub(crate) const GONE_WITHIN: Duration = Duration::from_secs(5);

/// `program`, set up to run as the leader of a new process group that dies with this
/// process.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that started the child ends, not only the
/// process: jobs start ffmpeg from the async runtime's worker threads, which live as
/// long as the runtime, and discovery from a thread that waits for it.
pub fn command(program: &str) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    command.process_group(0);
    let parent = rustix::process::getpid();
    // SAFETY: the hook runs in the forked child before `exec`, where only
    // async-signal-safe calls are allowed. It makes two raw system calls (`prctl`,
    // `getppid`) and builds an `io::Error` from an error number, none of which
    // allocates, locks or touches state shared with the parent's other threads.
    unsafe {
        command.pre_exec(move || die_with(parent));
    }
    command
}

/// In the child: SIGKILL when `parent` dies; and if it died already (between `fork`
/// and here the child was re-parented), do not start at all.
fn die_with(parent: Pid) -> io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
    if rustix::process::getppid() != Some(parent) {
        return Err(io::Error::from(rustix::io::Errno::SRCH));
    }
    Ok(())
}

/// The process group of one job (its id is the pid of the child [`command`] started).
#[derive(Debug)]
pub(crate) struct Group {
    pgid: Pid,
    /// Set once the group is known to be empty: its id may then be reused, and must
    /// not be signalled any more.
    gone: bool,
}

impl Group {
    /// The group led by the child `pid`.
    pub fn led_by(pid: u32) -> Option<Group> {
        let pgid = Pid::from_raw(i32::try_from(pid).ok()?)?;
        Some(Group { pgid, gone: false })
    }

    /// The group's id.
    pub fn id(&self) -> i32 {
        self.pgid.as_raw_nonzero().get()
    }

    /// SIGKILL to every process of the group. Call it while the leader is not reaped
    /// yet (so its id cannot have been reused), or after [`Group::has_live_members`]
    /// said some member still holds it.
    pub fn kill(&self) {
        if !self.gone {
            let _ = rustix::process::kill_process_group(self.pgid, Signal::KILL);
        }
    }

    /// True while a process of the group runs. Zombies do not count: they run nothing
    /// and hold no memory, and whether one is reaped is up to its parent (for an
    /// orphan, pid 1, which in a container may never do it).
    pub fn has_live_members(&self) -> bool {
        if self.gone {
            return false;
        }
        // The cheap answer first: no process at all in the group.
        if let Err(rustix::io::Errno::SRCH) = rustix::process::test_kill_process_group(self.pgid) {
            return false;
        }
        live_members(self.id()) > 0
    }

    /// Kills the group if any member is alive and waits (blocking, polling every few
    /// milliseconds) up to `bound` until none is. True when none is left.
    pub fn kill_and_wait(&mut self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while self.has_live_members() {
            self.kill();
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.gone = true;
        true
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // A job dropped before it waited for its group (its runtime shut down, or
        // it was cancelled): nothing it started may outlive it.
        if !self.gone && self.has_live_members() {
            self.kill();
        }
    }
}

/// How many processes of the group `pgid` are alive (not zombies), from `/proc`.
pub fn live_members(pgid: i32) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| stat_says_alive_in(stat, pgid))
        .count()
}

/// Reads `/proc/<pid>/stat`: true when the process is in group `pgid` and not a
/// zombie. The command name (field 2) may hold spaces and parentheses; the fields after
/// its last `)` are `state ppid pgrp …`.
fn stat_says_alive_in(stat: &str, pgid: i32) -> bool {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next().unwrap_or("Z");
    let group = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
    group == Some(pgid) && state != "Z" && state != "X"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_after_the_command_name() {
        let line = "4242 (ff mpeg) (x)) S 1 777 777 0 -1 4194560 0 0";
        assert!(stat_says_alive_in(line, 777));
        assert!(!stat_says_alive_in(line, 4242));
        assert!(!stat_says_alive_in("4242 (ffmpeg) Z 1 777 777 0", 777));
        assert!(!stat_says_alive_in("garbage", 777));
    }

    #[test]
    fn the_whole_group_is_killed_and_waited_for() {
        // A shell that forks two sleepers and waits: killing the shell alone would
        // leave both running with parent pid 1.
        let mut child = command("sh")
            .args(["-c", "sleep 1000 & sleep 1000 & wait"])
            .spawn()
            .unwrap();
        let mut group = Group::led_by(child.id()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while live_members(group.id()) < 3 {
            assert!(Instant::now() < deadline, "the sleepers never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        group.kill();
        child.wait().unwrap();
        assert!(group.kill_and_wait(GONE_WITHIN), "no member left");
        assert_eq!(live_members(group.id()), 0);
        assert!(!group.has_live_members());
    }

    #[test]
    fn a_dropped_group_is_killed() {
        let mut child = command("sh")
            .args(["-c", "sleep 1000 & wait"])
            .spawn()
            .unwrap();
        let id = {
            let group = Group::led_by(child.id()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while live_members(group.id()) < 2 {
                assert!(Instant::now() < deadline, "the sleeper never started");
                std::thread::sleep(Duration::from_millis(5));
            }
            group.id()
        };
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while live_members(id) > 0 {
            assert!(Instant::now() < deadline, "a member outlived its group");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
