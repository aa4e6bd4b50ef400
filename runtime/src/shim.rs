//! `cairn shim`: one small process per container, as containerd's shims. The runtime
//! writes a [`ShimConfig`] into the container's directory and starts the shim on it;
//! the shim forks into the background (its own session, a child subreaper), mounts the
//! container's overlay root, creates and starts the container with libcontainer (so
//! the runtime's process never calls it), copies the container's stdout and stderr
//! into a CRI log, reaps it, records its exit status and OOM kills in `status.json`,
//! deletes it and unmounts the root. While it runs it answers [`Request`]s on
//! `shim.sock`. The shim and the runtime survive each other: a restarted runtime finds
//! running shims by their sockets and finished containers by their status files.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cgroups::CgroupLayout;
use crate::cri_log::{LogCopier, Stream};
use crate::rootfs::OverlayRoot;
use crate::sys;

/// The shim's instructions, `shim.json` in the container's directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimConfig {
    /// The container's id (libcontainer's, unique on the node).
    pub id: String,
    /// The OCI bundle (holds `config.json`; its `rootfs` is the overlay's target).
    pub bundle: PathBuf,
    /// libcontainer's state directory for all containers.
    pub state_root: PathBuf,
    /// The CRI log file (appended to).
    pub log: PathBuf,
    /// The root file system to mount.
    pub rootfs: OverlayRoot,
    /// The container's cgroup (read for OOM kills after it exits).
    pub cgroup: String,
    /// Enter the root with `chroot` instead of `pivot_root` (the node runs from its
    /// initramfs).
    #[serde(default)]
    pub no_pivot: bool,
}

/// What a container is doing, as its shim last recorded it (`status.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum ShimStatus {
    /// Running as `pid` (in the node's PID namespace).
    Running {
        /// The container's init process.
        pid: i32,
        /// When it started (RFC 3339).
        started_at: String,
    },
    /// Finished.
    Exited {
        /// The process it was.
        pid: i32,
        /// When it started (RFC 3339).
        started_at: String,
        /// When it was reaped (RFC 3339).
        finished_at: String,
        /// The exit code, 128 + the signal when killed by one.
        exit_code: i32,
        /// The signal that ended it, if one did.
        signal: Option<i32>,
        /// Whether the kernel's OOM killer killed a process of the container.
        oom_killed: bool,
    },
    /// The container could not be created or started.
    Failed {
        /// Why.
        message: String,
    },
}

/// A request to a running shim, one JSON line on `shim.sock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Answer the current status.
    Status,
    /// Answer once the container has exited.
    Wait,
    /// Send a signal to the container's init process.
    Kill {
        /// The signal number.
        signal: i32,
    },
}

/// The files of a container directory.
#[derive(Debug, Clone)]
pub struct ShimPaths {
    dir: PathBuf,
}

impl ShimPaths {
    /// The paths in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }
    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `shim.json`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("shim.json")
    }
    /// `status.json`.
    pub fn status(&self) -> PathBuf {
        self.dir.join("status.json")
    }
    /// `shim.sock`.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("shim.sock")
    }
    /// `shim.pid`, the background shim's process id.
    pub fn pid(&self) -> PathBuf {
        self.dir.join("shim.pid")
    }
    /// `shim.log`, the shim's own diagnostics.
    pub fn shim_log(&self) -> PathBuf {
        self.dir.join("shim.log")
    }
}

/// Why the shim could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// A file of the container directory could not be used.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `shim.json` or a status is not what it should be.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: nix::errno::Errno,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ShimError + 'a {
    move |source| ShimError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn now() -> String {
    OffsetDateTime::from(SystemTime::now())
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Writes `value` as JSON to `path` atomically (temporary file, rename): readers never
/// see a partial file. Not fsynced: these files describe processes, which a power
/// loss ends anyway, and a sync per container start and exit costs milliseconds.
pub(crate) fn write_json_atomically(path: &Path, value: &impl Serialize) -> Result<(), ShimError> {
    let temporary = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| ShimError::Json {
        path: path.to_owned(),
        source,
    })?;
    let mut file = File::create(&temporary).map_err(io_err("writing", &temporary))?;
    file.write_all(&bytes)
        .map_err(io_err("writing", &temporary))?;
    std::fs::rename(&temporary, path).map_err(io_err("renaming", &temporary))
}

/// Reads the JSON file at `path`.
pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ShimError> {
    let bytes = std::fs::read(path).map_err(io_err("reading", path))?;
    serde_json::from_slice(&bytes).map_err(|source| ShimError::Json {
        path: path.to_owned(),
        source,
    })
}

/// What the shim's threads share.
struct State {
    status: ShimStatus,
    /// The container's process has been reaped: its pid may belong to another.
    reaped: bool,
}

/// The shim's state shared by its threads.
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Control connections being answered.
    answering: std::sync::atomic::AtomicUsize,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// The entry point of `cairn shim <dir>`: returns the process's exit code. The
/// foreground process returns once the container runs (or failed to start, as
/// `status.json` says); the work goes on in a background child.
pub fn main(dir: &Path) -> i32 {
    let paths = ShimPaths::new(dir);
    let config: ShimConfig = match read_json(&paths.config()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("cairn shim: {err}");
            return 2;
        }
    };
    let (ready_read, ready_write) = match nix::unistd::pipe() {
        Ok(pipe) => pipe,
        Err(err) => {
            eprintln!("cairn shim: pipe: {err}");
            return 2;
        }
    };
    // The shim has started no thread yet.
    match sys::fork_single_threaded() {
        Err(err) => {
            eprintln!("cairn shim: fork: {err}");
            2
        }
        Ok(ForkResult::Parent { .. }) => {
            drop(ready_write);
            // The background shim closes its end once the container runs or failed.
            let mut ignored = Vec::new();
            let _ = File::from(ready_read).read_to_end(&mut ignored);
            match read_json::<ShimStatus>(&paths.status()) {
                Ok(ShimStatus::Running { .. } | ShimStatus::Exited { .. }) => 0,
                Ok(ShimStatus::Failed { message }) => {
                    eprintln!("cairn shim: {message}");
                    1
                }
                Err(err) => {
                    eprintln!("cairn shim: {err}");
                    1
                }
            }
        }
        Ok(ForkResult::Child) => {
            drop(ready_read);
            match background(&paths, &config, ready_write) {
                Ok(()) => 0,
                Err(err) => {
                    eprintln!("cairn shim: {err}");
                    1
                }
            }
        }
    }
}

/// Detaches from the caller: own session, stdio to /dev/null and `shim.log`, orphans
/// of the container reparented to the shim.
fn detach(paths: &ShimPaths) -> Result<(), ShimError> {
    nix::unistd::setsid().map_err(|source| ShimError::Sys {
        what: "setsid",
        source,
    })?;
    nix::sys::prctl::set_child_subreaper(true).map_err(|source| ShimError::Sys {
        what: "becoming a child subreaper",
        source,
    })?;
    let null = File::open("/dev/null").map_err(io_err("opening", Path::new("/dev/null")))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.shim_log())
        .map_err(io_err("opening", &paths.shim_log()))?;
    let dup = |result: nix::Result<()>| {
        result.map_err(|source| ShimError::Sys {
            what: "redirecting stdio",
            source,
        })
    };
    dup(nix::unistd::dup2_stdin(&null))?;
    dup(nix::unistd::dup2_stdout(&null))?;
    dup(nix::unistd::dup2_stderr(&log))?;
    Ok(())
}

/// The background shim: runs the container to its end.
fn background(
    paths: &ShimPaths,
    config: &ShimConfig,
    ready: std::os::fd::OwnedFd,
) -> Result<(), ShimError> {
    detach(paths)?;
    let pid_file = paths.pid();
    std::fs::write(&pid_file, std::process::id().to_string())
        .map_err(io_err("writing", &pid_file))?;
    let started = start_container(config);
    let (pid, mut container, readers) = match started {
        Ok(started) => started,
        Err(message) => {
            let _ = OverlayRoot::unmount(&config.rootfs.target);
            write_json_atomically(&paths.status(), &ShimStatus::Failed { message })?;
            drop(ready);
            return Ok(());
        }
    };
    // Everything the running container needs from the shim is set up before anyone is
    // told it runs; if any of it fails, the container goes again, so none runs without
    // a shim.
    let started_at = now();
    let running = ShimStatus::Running {
        pid: pid.as_raw(),
        started_at: started_at.clone(),
    };
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            status: running.clone(),
            reaped: false,
        }),
        changed: Condvar::new(),
        answering: std::sync::atomic::AtomicUsize::new(0),
    });
    let socket = paths.socket();
    let attended = (|| -> Result<Vec<std::thread::JoinHandle<()>>, ShimError> {
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).map_err(io_err("binding", &socket))?;
        let copiers = spawn_log_copiers(&config.log, readers)?;
        write_json_atomically(&paths.status(), &running)?;
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || serve(listener, shared));
        Ok(copiers)
    })();
    let copiers = match attended {
        Ok(copiers) => copiers,
        Err(err) => {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            let _ = container.delete(true);
            let _ = OverlayRoot::unmount(&config.rootfs.target);
            let _ = std::fs::remove_file(&socket);
            write_json_atomically(
                &paths.status(),
                &ShimStatus::Failed {
                    message: format!("the shim could not attend the container: {err}"),
                },
            )?;
            drop(ready);
            return Err(err);
        }
    };
    // The runtime may look now.
    drop(ready);

    let (exit_code, signal) = reap_until(pid, &shared);
    for copier in copiers {
        let _ = copier.join();
    }
    let oom_killed = CgroupLayout::detect()
        .oom_kills(&config.cgroup)
        .is_some_and(|kills| kills > 0);
    if let Err(err) = container.delete(true) {
        eprintln!("cairn shim: deleting container {}: {err}", config.id);
    }
    if let Err(err) = OverlayRoot::unmount(&config.rootfs.target) {
        eprintln!("cairn shim: {err}");
    }
    let exited = ShimStatus::Exited {
        pid: pid.as_raw(),
        started_at,
        finished_at: now(),
        exit_code,
        signal,
        oom_killed,
    };
    write_json_atomically(&paths.status(), &exited)?;
    shared.lock().status = exited;
    shared.changed.notify_all();
    let _ = std::fs::remove_file(&socket);
    // Let the clients that were waiting get their answers before the process ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while shared.answering.load(std::sync::atomic::Ordering::SeqCst) > 0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Ok(())
}

type Started = (
    Pid,
    libcontainer::container::Container,
    [(Stream, std::os::fd::OwnedFd); 2],
);

/// Mounts the root and creates and starts the container; the error is the message
/// for `status.json`.
fn start_container(config: &ShimConfig) -> Result<Started, String> {
    config
        .rootfs
        .mount()
        .map_err(|err| format!("preparing the root file system: {err}"))?;
    let (stdout_read, stdout_write) =
        nix::unistd::pipe().map_err(|err| format!("creating the stdout pipe: {err}"))?;
    let (stderr_read, stderr_write) =
        nix::unistd::pipe().map_err(|err| format!("creating the stderr pipe: {err}"))?;
    let null = File::open("/dev/null").map_err(|err| format!("opening /dev/null: {err}"))?;
    let mut container = ContainerBuilder::new(config.id.clone(), SyscallType::default())
        .with_root_path(&config.state_root)
        .map_err(|err| format!("libcontainer state {}: {err}", config.state_root.display()))?
        .with_stdin(null)
        .with_stdout(stdout_write)
        .with_stderr(stderr_write)
        .as_init(&config.bundle)
        .with_systemd(false)
        .with_no_pivot(config.no_pivot)
        .with_detach(true)
        .build()
        .map_err(|err| format!("creating the container: {err}"))?;
    if let Err(err) = container.start() {
        let _ = container.delete(true);
        return Err(format!("starting the container: {err}"));
    }
    let pid = container
        .pid()
        .ok_or_else(|| "the started container has no process".to_owned())?;
    Ok((
        Pid::from_raw(pid.as_raw()),
        container,
        [(Stream::Stdout, stdout_read), (Stream::Stderr, stderr_read)],
    ))
}

/// Starts a thread per stream copying it into the log.
fn spawn_log_copiers(
    log: &Path,
    readers: [(Stream, std::os::fd::OwnedFd); 2],
) -> Result<Vec<std::thread::JoinHandle<()>>, ShimError> {
    let mut threads = Vec::new();
    for (stream, fd) in readers {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_err("opening", log))?;
        threads.push(std::thread::spawn(move || {
            if let Err(err) = LogCopier::new(file, stream).copy(File::from(fd)) {
                eprintln!("cairn shim: copying {stream:?}: {err}");
            }
        }));
    }
    Ok(threads)
}

/// Reaps children (the shim is their subreaper) until `pid` has exited; returns its
/// exit code (128 + signal when killed) and the signal. The container's process is
/// reaped under the state lock with `reaped` set, so a `Kill` never reaches a process
/// that reused its pid.
fn reap_until(pid: Pid, shared: &Shared) -> (i32, Option<i32>) {
    loop {
        // Look without reaping, then reap exactly the child seen.
        let seen = nix::sys::wait::waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT);
        let (child, outcome) = match seen {
            Ok(WaitStatus::Exited(child, code)) => (child, (code, None)),
            Ok(WaitStatus::Signaled(child, signal, _)) => {
                (child, (128 + signal as i32, Some(signal as i32)))
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => {
                // No children left although the container's was never seen: it cannot
                // be reaped any more, so its end is unknown.
                eprintln!("cairn shim: waiting for the container: {err}");
                return (255, None);
            }
        };
        if child == pid {
            let mut state = shared.lock();
            state.reaped = true;
            let _ = nix::sys::wait::waitpid(child, None);
            drop(state);
            return outcome;
        }
        let _ = nix::sys::wait::waitpid(child, None);
    }
}

/// Answers requests on the control socket, a thread per connection.
fn serve(listener: UnixListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(&shared);
        shared
            .answering
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::spawn(move || {
            if let Err(err) = answer(stream, &shared) {
                eprintln!("cairn shim: control connection: {err}");
            }
            shared
                .answering
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
    }
}

fn answer(stream: UnixStream, shared: &Shared) -> io::Result<()> {
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let request: Request = serde_json::from_str(&line)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
    let reply: Result<ShimStatus, String> = match request {
        Request::Status => Ok(shared.lock().status.clone()),
        Request::Wait => {
            let mut state = shared.lock();
            while matches!(state.status, ShimStatus::Running { .. }) {
                state = match shared.changed.wait(state) {
                    Ok(state) => state,
                    Err(poisoned) => poisoned.into_inner(),
                };
            }
            Ok(state.status.clone())
        }
        Request::Kill { signal } => {
            // Under the lock: the container cannot be reaped (its pid reused) meanwhile.
            let state = shared.lock();
            match (&state.status, Signal::try_from(signal)) {
                (_, Err(err)) => Err(format!("signal {signal}: {err}")),
                (ShimStatus::Running { pid, .. }, Ok(signal)) if !state.reaped => {
                    nix::sys::signal::kill(Pid::from_raw(*pid), signal)
                        .map(|()| state.status.clone())
                        .map_err(|err| format!("kill: {err}"))
                }
                (other, Ok(_)) => Ok(other.clone()),
            }
        }
    };
    let mut bytes = serde_json::to_vec(&reply)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
    bytes.push(b'\n');
    (&stream).write_all(&bytes)
}

/// The entry point of `cairn shim exec [--console-socket <path>] <dir> -- <command…>`:
/// runs `command` inside the running container of `dir` as the container's own process
/// runs (its user, environment, working directory, capabilities and limits) and returns
/// its exit code (128 + signal when killed; 126 when it could not be started).
///
/// Without a console socket the command has the caller's stdin, stdout and stderr.
/// With one, it gets a new terminal of the container's `/dev/pts` as its controlling
/// terminal and stdio, and the terminal's master goes to whoever listens on the socket
/// (as runc's `--console-socket`).
pub fn exec_main(dir: &Path, console_socket: Option<&Path>, command: &[String]) -> i32 {
    match exec_in_container(dir, console_socket, command) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("cairn shim exec: {message}");
            126
        }
    }
}

/// [`exec_main`]'s work; the error says why the command could not run.
fn exec_in_container(
    dir: &Path,
    console_socket: Option<&Path>,
    command: &[String],
) -> Result<i32, String> {
    let paths = ShimPaths::new(dir);
    let config: ShimConfig = read_json(&paths.config()).map_err(|err| err.to_string())?;
    if command.is_empty() {
        return Err("no command".into());
    }
    let process_file = exec_process_file(&config, dir, command, console_socket.is_some())?;
    let built = ContainerBuilder::new(config.id.clone(), SyscallType::default())
        .with_root_path(&config.state_root)
        .map_err(|err| format!("libcontainer state: {err}"))
        .map(|builder| {
            builder
                .with_console_socket(console_socket)
                .as_tenant()
                .with_process(Some(process_file.path()))
                .with_detach(true)
                .build()
        });
    drop(process_file);
    let pid = built?.map_err(|err| err.to_string())?;
    // SIGTERM or SIGINT to this process (a probe's timeout, a client gone) ends the
    // command too, so nothing is left running in the container.
    let child = Pid::from_raw(pid.as_raw());
    let mut stop = nix::sys::signal::SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    if stop.thread_block().is_ok() {
        std::thread::spawn(move || {
            if stop.wait().is_ok() {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            }
        });
    }
    loop {
        match nix::sys::wait::waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => return Err(format!("waiting: {err}")),
        }
    }
}

/// Writes the exec'd process's OCI description into a temporary file of `dir`: the
/// container's own process (as its `config.json` in the bundle says) with `command`
/// as its arguments and a terminal when asked.
fn exec_process_file(
    config: &ShimConfig,
    dir: &Path,
    command: &[String],
    terminal: bool,
) -> Result<tempfile::NamedTempFile, String> {
    let spec_path = config.bundle.join("config.json");
    let spec = oci_spec::runtime::Spec::load(&spec_path)
        .map_err(|err| format!("reading {}: {err}", spec_path.display()))?;
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| format!("{} has no process", spec_path.display()))?;
    process
        .set_args(Some(command.to_vec()))
        .set_terminal(Some(terminal))
        .set_console_size(None);
    let file = tempfile::Builder::new()
        .prefix("exec-")
        .suffix(".json")
        .tempfile_in(dir)
        .map_err(|err| format!("creating the process file in {}: {err}", dir.display()))?;
    serde_json::to_writer(file.as_file(), &process)
        .map_err(|err| format!("writing {}: {err}", file.path().display()))?;
    Ok(file)
}

/// The `cairn shim` command line: `run <dir>` or `exec [--console-socket <path>] <dir>
/// -- <command…>`; returns the process's exit code.
pub fn cli(args: &[String]) -> i32 {
    match args {
        [verb, dir] if verb == "run" => main(Path::new(dir)),
        [verb, dir, separator, command @ ..] if verb == "exec" && separator == "--" => {
            exec_main(Path::new(dir), None, command)
        }
        [verb, option, socket, dir, separator, command @ ..]
            if verb == "exec" && option == "--console-socket" && separator == "--" =>
        {
            exec_main(Path::new(dir), Some(Path::new(socket)), command)
        }
        _ => {
            eprintln!(
                "usage: cairn shim run <container-dir> | exec [--console-socket <path>] <container-dir> -- <command…>"
            );
            2
        }
    }
}
