//! Commands run in a running container (`kubectl exec`): each one through its own
//! `cairn shim exec`, with piped stdio or with a terminal. For a terminal the shim
//! connects to a console socket the runtime listens on, and the container sends the
//! terminal's master there; the runtime keeps it as a [`Terminal`] that is read,
//! written and resized without the shim in the way.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, Interest, ReadBuf};

use crate::container::ShimProgram;
use crate::process::{Spawned, Spawner};
use crate::sys;

/// How long a started `cairn shim exec` may take to hand over the terminal.
const TERMINAL_TIMEOUT: Duration = Duration::from_secs(30);

/// What to run and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Whether the command gets a terminal (`kubectl exec -t`): its stdin, stdout and
    /// stderr are the terminal, read and written through [`ExecSession::terminal`].
    pub tty: bool,
}

/// A command started in a container.
#[derive(Debug)]
pub struct ExecSession {
    /// The `cairn shim exec` process: its exit is the command's. Without a terminal
    /// its piped stdin, stdout and stderr are the command's; with one, its stderr says
    /// why the command could not start, if it could not.
    pub process: Spawned,
    /// The command's terminal, when asked for.
    pub terminal: Option<Terminal>,
}

/// Why a command could not be started in a container.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// `cairn shim exec` could not be started.
    #[error("starting `cairn shim exec` for {instance}: {source}")]
    Spawn {
        /// The container instance.
        instance: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The console socket could not be set up or used.
    #[error("the console socket {path}: {source}")]
    ConsoleSocket {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The command ended, or failed to start, without handing over its terminal.
    #[error("the command did not get a terminal: {0}")]
    NoTerminal(String),
}

/// The `cairn shim exec` command line running `command` in the container instance
/// `instance`, with a terminal sent to `console_socket` when given. Its stdio is null
/// until the caller says otherwise.
pub fn shim_command(
    shim: &ShimProgram,
    instance: &Path,
    command: &[String],
    console_socket: Option<&Path>,
) -> Command {
    let mut process = Command::new(&shim.program);
    process.args(&shim.args).arg("exec");
    if let Some(socket) = console_socket {
        process.arg("--console-socket").arg(socket);
    }
    process
        .arg(instance)
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    process
}

/// Starts `options.command` in the container instance `instance`. `socket_dir` holds
/// the console sockets of terminal sessions while they start.
pub async fn start(
    spawner: &dyn Spawner,
    shim: &ShimProgram,
    instance: &Path,
    options: &ExecOptions,
    socket_dir: &Path,
) -> Result<ExecSession, ExecError> {
    let spawn_error = |source| ExecError::Spawn {
        instance: instance.to_owned(),
        source,
    };
    if !options.tty {
        let mut command = shim_command(shim, instance, &options.command, None);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let process = spawner.spawn(&mut command).map_err(spawn_error)?;
        return Ok(ExecSession {
            process,
            terminal: None,
        });
    }
    let console = ConsoleSocket::bind(socket_dir)?;
    let mut command = shim_command(shim, instance, &options.command, Some(&console.path));
    command.stderr(Stdio::piped());
    let mut process = spawner.spawn(&mut command).map_err(spawn_error)?;
    // The container sends the terminal before the command runs, so it is in the
    // socket before the shim can exit: look there first.
    let received = tokio::select! {
        biased;
        received = tokio::time::timeout(TERMINAL_TIMEOUT, console.receive()) => received,
        ended = &mut process.exit => {
            // A quick command may have ended already; its terminal is still there.
            match tokio::time::timeout(Duration::from_millis(200), console.receive()).await {
                Ok(Ok(master)) => {
                    let code = ended;
                    process.exit = Box::pin(async move { code });
                    Ok(Ok(master))
                }
                _ => {
                    let said = read_some(process.stderr.take()).await;
                    return Err(ExecError::NoTerminal(match ended {
                        Ok(code) => format!("`cairn shim exec` exited with {code}: {said}"),
                        Err(err) => format!("`cairn shim exec` vanished: {err}"),
                    }));
                }
            }
        }
    };
    let master = match received {
        Ok(Ok(master)) => master,
        Ok(Err(err)) => {
            end(&mut process).await;
            return Err(err);
        }
        Err(_) => {
            end(&mut process).await;
            return Err(ExecError::NoTerminal(format!(
                "nothing arrived on the console socket within {TERMINAL_TIMEOUT:?}"
            )));
        }
    };
    Ok(ExecSession {
        process,
        terminal: Some(
            Terminal::new(master).map_err(|source| ExecError::ConsoleSocket {
                path: console.path.clone(),
                source,
            })?,
        ),
    })
}

/// Ends a `cairn shim exec` that did not deliver: SIGTERM (it kills the command it may
/// have started in the container), then SIGKILL if it has not ended within a while.
async fn end(process: &mut Spawned) {
    crate::process::terminate(process.pid);
    if tokio::time::timeout(Duration::from_secs(5), &mut process.exit)
        .await
        .is_err()
    {
        crate::process::kill(process.pid);
    }
}

/// The first few KiB a finished process wrote to `pipe`, as text.
async fn read_some(pipe: Option<std::process::ChildStderr>) -> String {
    use tokio::io::AsyncReadExt;
    let mut said = Vec::new();
    if let Some(reader) = pipe.and_then(|p| crate::process::async_reader(p).ok()) {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            reader.take(4096).read_to_end(&mut said),
        )
        .await;
    }
    String::from_utf8_lossy(&said).trim().to_owned()
}

/// A listening console socket, removed when dropped.
struct ConsoleSocket {
    path: PathBuf,
    listener: tokio::net::UnixListener,
}

impl ConsoleSocket {
    /// Listens on a new socket in `dir`.
    fn bind(dir: &Path) -> Result<Self, ExecError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = dir.join(format!(
            "tty-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let error = |source| ExecError::ConsoleSocket {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(error)?;
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).map_err(error)?;
        Ok(Self { path, listener })
    }

    /// Waits for the container's connection and takes the terminal master it sends.
    async fn receive(&self) -> Result<OwnedFd, ExecError> {
        let error = |source| ExecError::ConsoleSocket {
            path: self.path.clone(),
            source,
        };
        let (stream, _) = self.listener.accept().await.map_err(error)?;
        loop {
            stream.readable().await.map_err(error)?;
            // Through `try_io`, so that a spurious wake-up clears the readiness.
            match stream.try_io(Interest::READABLE, || sys::receive_fd(stream.as_raw_fd())) {
                Ok(Some(fd)) => return Ok(fd),
                Ok(None) => {
                    return Err(error(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed without a terminal",
                    )));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(error(err)),
            }
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The master side of a command's terminal: what is written is the command's input,
/// what is read its output (stdout and stderr together, as on any terminal), through
/// `&Terminal` as an [`AsyncRead`]; reading ends once the command and everything it
/// started have closed the terminal. Reading and writing may go on at once from two
/// tasks.
#[derive(Debug)]
pub struct Terminal {
    master: AsyncFd<OwnedFd>,
}

impl Terminal {
    fn new(master: OwnedFd) -> io::Result<Self> {
        sys::set_nonblocking(&master)?;
        Ok(Self {
            master: sys::async_fd(master)?,
        })
    }

    /// Writes all of `data` as input.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut ready = self.master.writable().await?;
            match ready.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets the terminal's size, in characters (the command gets SIGWINCH).
    pub fn resize(&self, columns: u16, rows: u16) -> io::Result<()> {
        sys::set_window_size(self.master.get_ref(), columns, rows)
    }
}

impl AsyncRead for &Terminal {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut ready = std::task::ready!(self.master.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match ready
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The kernel says EIO on a master whose slave side is all closed.
                Ok(Err(err)) if err.raw_os_error() == Some(libc::EIO) => {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(err)) => return Poll::Ready(Err(err)),
                Err(_would_block) => continue,
            }
        }
    }
}
