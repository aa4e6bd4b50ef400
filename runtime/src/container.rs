//! One container instance as the runtime sees it: its directory (bundle, shim
//! instructions, status), the shim that runs it, and the requests the runtime sends
//! that shim. Each start of a Kubernetes container (each restart) is a new instance
//! with a fresh writable layer, as in the kubelet.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::Spec;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::cgroups::CgroupLayout;
use crate::process::Spawner;
use crate::rootfs::OverlayRoot;
use crate::shim::{Request, ShimConfig, ShimError, ShimPaths, ShimStatus, read_json};

/// How the runtime starts a shim: a program and the arguments before the container
/// directory (`/proc/self/exe shim` on a node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimProgram {
    /// The executable.
    pub program: PathBuf,
    /// Arguments before the container directory.
    pub args: Vec<String>,
}

/// Why a container instance could not be prepared, started or reached.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// A file of the instance.
    #[error(transparent)]
    Files(#[from] ShimError),
    /// The OCI spec could not be written.
    #[error("writing the OCI spec {path}: {source}")]
    Spec {
        /// The `config.json`.
        path: PathBuf,
        /// Why.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// The shim could not be started.
    #[error("starting the shim {program}: {source}")]
    Spawn {
        /// The shim program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The shim's answer was not understood, or it refused the request.
    #[error("shim of {dir}: {message}")]
    Shim {
        /// The container directory.
        dir: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The instance's directory could not be removed.
    #[error("removing {path}: {source}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A container instance, by its directory.
#[derive(Debug, Clone)]
pub struct Instance {
    paths: ShimPaths,
}

impl Instance {
    /// The instance in `dir` (which may not exist yet).
    pub fn at(dir: &Path) -> Self {
        Self {
            paths: ShimPaths::new(dir),
        }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        self.paths.dir()
    }

    /// Writes the bundle's `config.json` and the shim's instructions.
    pub fn prepare(&self, config: &ShimConfig, spec: &Spec) -> Result<(), ContainerError> {
        let dir = self.paths.dir();
        std::fs::create_dir_all(&config.bundle).map_err(|source| ShimError::Io {
            what: "creating",
            path: config.bundle.clone(),
            source,
        })?;
        let spec_path = config.bundle.join("config.json");
        spec.save(&spec_path)
            .map_err(|source| ContainerError::Spec {
                path: spec_path.clone(),
                source,
            })?;
        crate::shim::write_json_atomically(&dir.join("shim.json"), config)?;
        Ok(())
    }

    /// Starts the shim and returns once the container runs or failed to start.
    pub async fn start(
        &self,
        shim: &ShimProgram,
        spawner: &dyn Spawner,
    ) -> Result<ShimStatus, ContainerError> {
        let mut command = std::process::Command::new(&shim.program);
        command
            .args(&shim.args)
            .arg("run")
            .arg(self.paths.dir())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let spawned = spawner
            .spawn(&mut command)
            .map_err(|source| ContainerError::Spawn {
                program: shim.program.clone(),
                source,
            })?;
        // The foreground shim exits once the background one has written the status;
        // its stderr ends with it.
        let mut said = Vec::new();
        if let Some(stderr) = spawned.stderr
            && let Ok(mut reader) = crate::process::async_reader(stderr)
        {
            use tokio::io::AsyncReadExt;
            let _ = reader.read_to_end(&mut said).await;
        }
        let _ = spawned.exit.await;
        match read_json::<ShimStatus>(&self.paths.status()) {
            Ok(status) => Ok(status),
            Err(err) if !said.is_empty() => Err(ContainerError::Shim {
                dir: self.paths.dir().to_owned(),
                message: format!(
                    "{err}; shim said: {}",
                    String::from_utf8_lossy(&said).trim()
                ),
            }),
            Err(err) => Err(err.into()),
        }
    }

    /// Sends `request` to the running shim.
    async fn ask(&self, request: &Request) -> Result<ShimStatus, ContainerError> {
        let shim_err = |message: String| ContainerError::Shim {
            dir: self.paths.dir().to_owned(),
            message,
        };
        let mut stream = UnixStream::connect(self.paths.socket())
            .await
            .map_err(|err| shim_err(format!("connecting: {err}")))?;
        let mut line = serde_json::to_vec(request).map_err(|err| shim_err(err.to_string()))?;
        line.push(b'\n');
        stream
            .write_all(&line)
            .await
            .map_err(|err| shim_err(format!("sending: {err}")))?;
        let mut reply = String::new();
        BufReader::new(stream)
            .read_line(&mut reply)
            .await
            .map_err(|err| shim_err(format!("reading the answer: {err}")))?;
        let reply: Result<ShimStatus, String> =
            serde_json::from_str(&reply).map_err(|err| shim_err(format!("answer: {err}")))?;
        reply.map_err(shim_err)
    }

    /// The status as the shim or, when it is gone, its status file says. A shim that
    /// vanished while its container ran is reported as such.
    pub async fn status(&self) -> Result<ShimStatus, ContainerError> {
        if let Ok(status) = self.ask(&Request::Status).await {
            return Ok(status);
        }
        self.recorded_status().await
    }

    /// The status file, after a shim that is not answering had time to finish it.
    async fn recorded_status(&self) -> Result<ShimStatus, ContainerError> {
        for _ in 0..20 {
            let status: ShimStatus = read_json(&self.paths.status())?;
            if !matches!(status, ShimStatus::Running { .. }) {
                return Ok(status);
            }
            // The shim may be between removing its socket and exiting, or gone.
            if self.ask(&Request::Status).await.is_ok() {
                return self.ask(&Request::Status).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(ShimStatus::Failed {
            message: "the shim is gone but recorded no exit (it was killed?)".into(),
        })
    }

    /// Waits until the container has exited.
    pub async fn wait(&self) -> Result<ShimStatus, ContainerError> {
        match self.ask(&Request::Wait).await {
            Ok(status) => Ok(status),
            Err(_) => self.recorded_status().await,
        }
    }

    /// Sends `signal` to the container's init process (nothing if it has exited).
    pub async fn kill(&self, signal: i32) -> Result<ShimStatus, ContainerError> {
        match self.ask(&Request::Kill { signal }).await {
            Ok(status) => Ok(status),
            Err(err) => match self.recorded_status().await? {
                ShimStatus::Running { .. } => Err(err),
                other => Ok(other),
            },
        }
    }

    /// The background shim's process, while it lives (checked by its command line, so
    /// a reused pid is not mistaken for it).
    pub fn shim_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.paths.pid())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let dir = self.paths.dir().as_os_str().as_encoded_bytes();
        cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == dir)
            .then_some(pid)
    }

    /// Ends an instance whose shim cannot be relied on (gone, hung): kills the shim and
    /// every process left in the container's cgroup, forgets libcontainer's state of
    /// it and unmounts its root. Harmless on an instance that ended normally.
    pub async fn abandon(&self) {
        if let Some(pid) = self.shim_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let Ok(config) = read_json::<ShimConfig>(&self.paths.config()) else {
            return;
        };
        let _ = tokio::task::spawn_blocking(move || {
            CgroupLayout::detect().kill_all(&config.cgroup);
            let _ = std::fs::remove_dir_all(config.state_root.join(&config.id));
            let _ = OverlayRoot::unmount(&config.rootfs.target);
        })
        .await;
    }

    /// Removes the instance's directory once its container has exited and its shim
    /// has finished (a shim still there after 5 s is killed). Unmounts the root first
    /// in case a shim died without doing so.
    pub async fn remove(&self) -> Result<(), ContainerError> {
        if let Ok(ShimStatus::Running { .. }) = self.status().await {
            return Err(ContainerError::Shim {
                dir: self.paths.dir().to_owned(),
                message: "the container still runs; stop it first".into(),
            });
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while let Some(pid) = self.shim_pid() {
            if std::time::Instant::now() >= deadline {
                tracing::warn!(pid, dir = %self.paths.dir().display(), "killing a shim that does not exit");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Whatever the shim left (it may have died without finishing): gone now.
        self.abandon().await;
        let dir = self.paths.dir().to_owned();
        tokio::task::spawn_blocking(move || {
            if let Ok(config) = read_json::<ShimConfig>(&dir.join("shim.json")) {
                let _ = OverlayRoot::unmount(&config.rootfs.target);
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(ContainerError::Remove { path: dir, source }),
            }
        })
        .await
        .map_err(|err| ContainerError::Shim {
            dir: self.paths.dir().to_owned(),
            message: format!("removal task: {err}"),
        })?
    }
}
