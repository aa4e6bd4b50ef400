//! Starting helper processes (shims, `cairn shim exec`) and learning how they ended.
//! The node's PID 1 (and `cairn node`) collects every child with one `waitpid(-1)`
//! loop, so nothing else there may wait for children: the runtime starts processes
//! through a [`Spawner`] the node provides. [`DirectSpawner`] waits for its own children
//! and serves processes that own their children (tests, benchmarks, tools).

use std::io;
use std::os::fd::OwnedFd;
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command};

/// Resolves to how a process ended: its exit code, or 128 + the signal that killed it.
pub type ExitFuture = std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<i32>> + Send>>;

/// A started process.
pub struct Spawned {
    /// Its process id.
    pub pid: u32,
    /// Its stdin, if piped.
    pub stdin: Option<ChildStdin>,
    /// Its stdout, if piped.
    pub stdout: Option<ChildStdout>,
    /// Its stderr, if piped.
    pub stderr: Option<ChildStderr>,
    /// Resolves when it has ended.
    pub exit: ExitFuture,
}

impl std::fmt::Debug for Spawned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawned").field("pid", &self.pid).finish()
    }
}

/// Starts processes and reports their ends.
pub trait Spawner: Send + Sync + std::fmt::Debug {
    /// Starts `command`.
    fn spawn(&self, command: &mut Command) -> io::Result<Spawned>;
}

/// A spawner for processes that wait for their own children: each child is waited for
/// on a blocking thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectSpawner;

impl Spawner for DirectSpawner {
    fn spawn(&self, command: &mut Command) -> io::Result<Spawned> {
        let mut child = command.spawn()?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let exit = tokio::task::spawn_blocking(move || child.wait());
        Ok(Spawned {
            pid,
            stdin,
            stdout,
            stderr,
            exit: Box::pin(async move {
                let status = exit.await.map_err(io::Error::other)??;
                Ok(exit_code(status))
            }),
        })
    }
}

/// The exit code of `status`, 128 + the signal when a signal ended it.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(255)
}

/// A pipe end of a child as a Tokio reader.
pub fn async_reader(pipe: impl Into<OwnedFd>) -> io::Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::Receiver::from_owned_fd(pipe.into())
}

/// A pipe end of a child as a Tokio writer.
pub fn async_writer(pipe: impl Into<OwnedFd>) -> io::Result<tokio::net::unix::pipe::Sender> {
    tokio::net::unix::pipe::Sender::from_owned_fd(pipe.into())
}

/// Asks the process `pid` to end with SIGTERM (for a child whose end is still
/// awaited, so its pid cannot have been reused).
pub fn terminate(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// Kills the process `pid` with SIGKILL (for a child whose end is still awaited, so
/// its pid cannot have been reused).
pub fn kill(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
