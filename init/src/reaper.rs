//! Reaping every child: the processes Cairn starts and the orphans the kernel hands
//! to PID 1 (or to a hosted node, which makes itself a child subreaper).
//!
//! One `waitpid(-1)` loop owns all exit statuses. Whoever starts a process through
//! [`Reaper::spawn`] gets its status back; everything else is an orphan and is simply
//! collected so no zombie stays behind. Nothing else in the process may wait for
//! children (no `tokio::process`, no `Child::wait`), or it would race this loop.

use std::collections::HashMap;
use std::io;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tracing::{debug, warn};

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    /// It called `exit` with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(Signal),
}

impl std::fmt::Display for ChildExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChildExit::Exited(code) => write!(f, "exit code {code}"),
            ChildExit::Signaled(signal) => write!(f, "killed by {signal}"),
        }
    }
}

#[derive(Default)]
struct Registry {
    waiting: HashMap<i32, oneshot::Sender<ChildExit>>,
}

/// The one owner of `waitpid`; cheap to clone.
#[derive(Clone, Default)]
pub struct Reaper {
    registry: Arc<Mutex<Registry>>,
    orphans_reaped: Arc<AtomicU64>,
}

/// A process started through the reaper.
#[derive(Debug)]
pub struct TrackedChild {
    pid: Pid,
    exit: oneshot::Receiver<ChildExit>,
    /// Its stdin, if the command asked for a pipe.
    pub stdin: Option<std::process::ChildStdin>,
    /// Its stdout, if the command asked for a pipe.
    pub stdout: Option<std::process::ChildStdout>,
    /// Its stderr, if the command asked for a pipe.
    pub stderr: Option<std::process::ChildStderr>,
}

impl TrackedChild {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }

    /// Sends a signal to the child.
    pub fn signal(&self, signal: Signal) -> Result<(), Errno> {
        kill(self.pid, signal)
    }

    /// Waits until the child has ended and been reaped.
    pub async fn wait(self) -> ChildExit {
        // The sender is dropped only if the reaper itself is gone, which happens only
        // when the whole runtime is shutting down; report that as SIGKILL.
        self.exit
            .await
            .unwrap_or(ChildExit::Signaled(Signal::SIGKILL))
    }
}

impl Reaper {
    /// A reaper with no children yet; call [`Reaper::run`] to start collecting.
    pub fn new() -> Self {
        Self::default()
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A poisoned lock only means a panic elsewhere while holding it; the map
        // itself is still consistent (single inserts/removes).
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a process and tracks its exit. The registry lock is held across the
    /// spawn so the reaping loop cannot collect the child before it is registered
    /// (or collect a child whose `exec` failed, which `std` reaps itself).
    pub fn spawn(&self, command: &mut Command) -> io::Result<TrackedChild> {
        let mut registry = self.registry();
        let mut child = command.spawn()?;
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        let (tx, rx) = oneshot::channel();
        registry.waiting.insert(pid.as_raw(), tx);
        // Dropping `std::process::Child` (after taking its pipes) neither waits nor kills.
        Ok(TrackedChild {
            pid,
            exit: rx,
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
        })
    }

    /// Collects every child that has ended; returns how many were collected.
    pub fn reap(&self) -> usize {
        let mut registry = self.registry();
        let mut collected = 0;
        loop {
            let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ChildExit::Exited(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, ChildExit::Signaled(signal)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) => continue, // stopped/continued: not an exit
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    warn!(%errno, "waitpid failed");
                    break;
                }
            };
            collected += 1;
            match registry.waiting.remove(&pid.as_raw()) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => {
                    self.orphans_reaped.fetch_add(1, Ordering::Relaxed);
                    debug!(pid = pid.as_raw(), %exit, "orphan reaped");
                }
            }
        }
        collected
    }

    /// How many processes that nobody was waiting for were collected so far.
    pub fn orphans_reaped(&self) -> u64 {
        self.orphans_reaped.load(Ordering::Relaxed)
    }

    /// Process ids of tracked children that have not ended yet.
    pub fn tracked(&self) -> Vec<u32> {
        self.registry()
            .waiting
            .keys()
            .map(|pid| pid.unsigned_abs())
            .collect()
    }

    /// Reaps on every `SIGCHLD`, and once a second in case signals were coalesced
    /// while the handler was not yet installed. Never returns.
    pub async fn run(self) {
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(stream) => Some(stream),
            Err(err) => {
                warn!(error = %err, "no SIGCHLD handler; reaping by polling only");
                None
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            self.reap();
            match sigchld.as_mut() {
                Some(stream) => {
                    tokio::select! {
                        _ = stream.recv() => {}
                        _ = tick.tick() => {}
                    }
                }
                None => {
                    tick.tick().await;
                }
            }
        }
    }
}

/// The pids of zombie processes whose parent is `parent` (from `/proc/<pid>/stat`).
pub fn zombie_children(parent: u32) -> std::collections::BTreeSet<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return std::collections::BTreeSet::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (state, ppid) = parse_stat_state_ppid(&stat)?;
            (state == 'Z' && ppid == parent).then_some(pid)
        })
        .collect()
}

/// The state letter and parent pid of a `/proc/<pid>/stat` line. The command name is
/// in parentheses and may itself contain spaces and parentheses, so fields are read
/// after the last `)`.
pub fn parse_stat_state_ppid(stat: &str) -> Option<(char, u32)> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        assert_eq!(
            parse_stat_state_ppid("42 (a (b) c) Z 1 42 42 0 -1"),
            Some(('Z', 1))
        );
        assert_eq!(parse_stat_state_ppid("7 (sh) S 3 7 7"), Some(('S', 3)));
        assert_eq!(parse_stat_state_ppid("garbage"), None);
    }

    // One test only: `waitpid(-1)` collects every child of the test process, so two
    // reapers in parallel tests would steal each other's children.
    #[tokio::test(flavor = "current_thread")]
    async fn tracked_children_report_exit_codes_and_signals() {
        let reaper = Reaper::new();
        let exits = reaper
            .spawn(Command::new("/bin/sh").args(["-c", "exit 7"]))
            .expect("spawn sh");
        let killed = reaper
            .spawn(Command::new("/bin/sleep").arg("30"))
            .expect("spawn sleep");
        killed.signal(Signal::SIGKILL).expect("kill");
        let runner = tokio::spawn(reaper.clone().run());
        assert_eq!(exits.wait().await, ChildExit::Exited(7));
        assert_eq!(killed.wait().await, ChildExit::Signaled(Signal::SIGKILL));
        assert!(reaper.tracked().is_empty());
        runner.abort();
    }
}
