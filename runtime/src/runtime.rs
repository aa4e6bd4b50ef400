//! The runtime's interface for the node agent: pods in, Kubernetes-shaped statuses out.
//! [`Runtime::ensure_pod`] takes a `k8s-openapi` `PodSpec` with the pod's identity
//! (and the config maps and secrets its volumes need) and keeps it running;
//! [`Runtime::stop_pod`], [`Runtime::remove_pod`], [`Runtime::pod_status`],
//! [`Runtime::read_log`] and [`Runtime::exec`] do what their names say. State lives
//! under one directory, and a restarted runtime picks its pods up again from there,
//! re-attaching to the shims of running containers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::PodSpec;

use crate::cgroups::CgroupLayout;
use crate::container::{Instance, ShimProgram};
use crate::cri_log::{self, LogError, ReadOptions};
use crate::exec::{self, ExecError, ExecOptions, ExecSession};
use crate::images::{ImageError, ImageStore};
use crate::plan::PodIdentity;
use crate::pod::{self, BackoffPolicy, NodeContext, Pod, PodRecord, PodRuntimeStatus};
use crate::process::{DirectSpawner, Spawner};
use crate::pull::RegistrySettings;
use crate::rootfs::{LayerCache, RootfsError};
use crate::sandbox::{Sandbox, SandboxError};
use crate::shim::ShimError;
use crate::volumes::{self, PodSources, SourceRefresh};

/// How the runtime is set up on a node.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The state directory (`/var/lib/cairn/runtime`): images, layers, pods.
    pub root: PathBuf,
    /// Where container logs go (`/var/log/pods`).
    pub log_root: PathBuf,
    /// How shims are started.
    pub shim: ShimProgram,
    /// Who starts processes (the node's reaper under PID 1).
    pub spawner: Arc<dyn Spawner>,
    /// The cgroup every pod lives under.
    pub cgroup_parent: String,
    /// `pids.max` per container (`None`: unlimited).
    pub pids_limit: Option<i64>,
    /// Crash-loop back-off.
    pub backoff: BackoffPolicy,
    /// The node's name (downward API `spec.nodeName`).
    pub node_name: String,
    /// Plain-HTTP registries and the node's registry credentials (changeable later
    /// with [`Runtime::configure_registries`]).
    pub registries: RegistrySettings,
    /// Where the node's pod network appears. `None`: the node has none, and pods get
    /// loopback only. An empty slot: it is not ready yet, and pods (but `hostNetwork`
    /// ones) wait for it, as the kubelet's do while the network is not ready.
    pub pod_network: Option<cairn_net::pod_network::PodNetworkSlot>,
}

impl RuntimeConfig {
    /// A configuration with the kubelet's defaults for everything but the paths; the
    /// runtime waits for its helper processes itself ([`DirectSpawner`]).
    pub fn new(root: &Path, log_root: &Path, shim: ShimProgram, node_name: &str) -> Self {
        Self {
            root: root.to_owned(),
            log_root: log_root.to_owned(),
            shim,
            spawner: Arc::new(DirectSpawner),
            cgroup_parent: "/cairn".into(),
            pids_limit: Some(4096),
            backoff: BackoffPolicy::default(),
            node_name: node_name.to_owned(),
            registries: RegistrySettings::default(),
            pod_network: None,
        }
    }
}

/// Why a runtime call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image store failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The layer cache failed.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// A pod's namespaces could not be removed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The pod network could not take a pod off.
    #[error("pod {pod}: detaching it from the pod network")]
    Network {
        /// The pod's uid.
        pod: String,
        /// Why.
        #[source]
        source: Box<cairn_net::pod_network::PodNetworkError>,
    },
    /// A state file could not be used.
    #[error(transparent)]
    State(#[from] ShimError),
    /// A log could not be read.
    #[error(transparent)]
    Log(#[from] LogError),
    /// No pod with this uid runs here.
    #[error("no pod with uid {0} on this node")]
    NoSuchPod(String),
    /// The pod has no such container, or it never ran.
    #[error("pod {pod}: {message}")]
    Container {
        /// The pod's uid.
        pod: String,
        /// What is wrong.
        message: String,
    },
    /// A command could not be started in a container.
    #[error("pod {pod}: {source}")]
    Exec {
        /// The pod's uid.
        pod: String,
        /// Why.
        #[source]
        source: ExecError,
    },
    /// Pods are still on the node.
    #[error("{0} pods are still on the node")]
    PodsRemain(usize),
    /// A file or directory could not be handled.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A pod the runtime is responsible for, and its worker.
struct Entry {
    pod: Arc<Pod>,
    worker: tokio::task::JoinHandle<()>,
}

/// What to run: a pod and what its volumes need.
#[derive(Debug, Clone, Default)]
pub struct PodRequest {
    /// Who the pod is.
    pub identity: PodIdentity,
    /// Its spec.
    pub spec: PodSpec,
    /// Its labels (for the downward API).
    pub labels: BTreeMap<String, String>,
    /// Its annotations (for the downward API).
    pub annotations: BTreeMap<String, String>,
    /// Config maps, secrets and token the volumes project.
    pub sources: PodSources,
    /// Reads `sources` again when the pod's setup is retried (`None`: they never
    /// change).
    pub refresh: Option<SourceRefresh>,
}

/// The container runtime of a node.
pub struct Runtime {
    node: Arc<NodeContext>,
    root: PathBuf,
    pods: Mutex<BTreeMap<String, Entry>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("root", &self.root).finish()
    }
}

/// The marker of a pod asked to stop (so a restarted runtime does not start it again).
const STOPPED: &str = "stopped";

impl Runtime {
    /// Opens the runtime's state and resumes every pod found there (re-attaching to
    /// running containers). Must be called inside a Tokio runtime.
    pub fn open(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let root = config.root.clone();
        for dir in ["pods", "containers"] {
            std::fs::create_dir_all(root.join(dir)).map_err(io("creating", &root.join(dir)))?;
        }
        std::fs::create_dir_all(&config.log_root).map_err(io("creating", &config.log_root))?;
        let node = Arc::new(NodeContext {
            node_name: config.node_name.clone(),
            shim: config.shim.clone(),
            spawner: Arc::clone(&config.spawner),
            images: ImageStore::open(&root.join("images"))?,
            layers: LayerCache::open(&root.join("layers"))?,
            cgroups: CgroupLayout::detect(),
            cgroup_parent: config.cgroup_parent.clone(),
            pids_limit: config.pids_limit,
            backoff: config.backoff,
            state_root: root.join("containers"),
            log_root: config.log_root.clone(),
            no_pivot: crate::rootfs::host_root_is_ramfs(),
            puller: crate::pull::Puller::with_settings(config.registries.clone()),
            pod_network: config.pod_network.clone(),
            changes: Arc::new(tokio::sync::watch::channel(0).0),
        });
        let runtime = Self {
            node,
            root,
            pods: Mutex::new(BTreeMap::new()),
        };
        runtime.resume()?;
        Ok(runtime)
    }

    fn pods(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.pods.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }

    /// Picks up the pods recorded on disk.
    fn resume(&self) -> Result<(), RuntimeError> {
        let base = self.root.join("pods");
        for entry in std::fs::read_dir(&base).map_err(io("listing", &base))? {
            let dir = entry.map_err(io("listing", &base))?.path();
            let record: PodRecord = match crate::shim::read_json(&dir.join("pod.json")) {
                Ok(record) => record,
                Err(err) => {
                    tracing::warn!(%err, dir = %dir.display(), "skipping an unreadable pod record");
                    continue;
                }
            };
            let pod = Pod::new(record, dir.clone(), Arc::clone(&self.node.changes));
            if dir.join(STOPPED).exists() {
                pod.request_stop(Some(Duration::ZERO));
            }
            tracing::info!(pod = %pod.record.identity.name, "resuming a pod");
            self.spawn(pod, None, None);
        }
        Ok(())
    }

    fn spawn(&self, pod: Arc<Pod>, sources: Option<PodSources>, refresh: Option<SourceRefresh>) {
        let uid = pod.record.identity.uid.clone();
        let worker = tokio::spawn(pod::run(
            Arc::clone(&self.node),
            Arc::clone(&pod),
            sources,
            refresh,
        ));
        self.pods().insert(uid, Entry { pod, worker });
    }

    /// The node's images.
    pub fn images(&self) -> &ImageStore {
        &self.node.images
    }

    /// The runtime's state directory.
    pub fn state_dir(&self) -> &Path {
        &self.root
    }

    /// Removes the image `name` with its blobs and unpacked layers that no other image
    /// uses; refused while a pod on the node uses it. `Ok(false)`: no such image.
    pub fn remove_image(&self, name: &str) -> Result<bool, RuntimeError> {
        let Some(image) = self.node.images.get(name) else {
            return Ok(false);
        };
        for entry in self.pods().values() {
            let spec = &entry.pod.record.spec;
            let users = spec
                .init_containers
                .iter()
                .flatten()
                .chain(&spec.containers)
                .filter_map(|c| c.image.as_deref())
                .filter_map(|reference| self.node.images.resolve(reference));
            for used in users {
                if used.manifest == image.manifest {
                    return Err(RuntimeError::Container {
                        pod: entry.pod.record.identity.uid.clone(),
                        message: format!(
                            "image {name} is used by pod {}/{}; remove the pod first",
                            entry.pod.record.identity.namespace, entry.pod.record.identity.name
                        ),
                    });
                }
            }
        }
        self.node.images.remove(name)?;
        self.node.images.gc()?;
        let keep = self
            .node
            .images
            .list()
            .into_iter()
            .flat_map(|image| image.layers)
            .collect();
        self.node.layers.retain(&keep)?;
        Ok(true)
    }

    /// Runs the pod unless it already runs here (pods are immutable; a changed spec
    /// for a known uid is ignored, as the kubelet does for all but images).
    pub fn ensure_pod(&self, request: PodRequest) -> Result<(), RuntimeError> {
        let uid = request.identity.uid.clone();
        if uid.is_empty()
            || !uid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(RuntimeError::Container {
                pod: uid,
                message: "a pod uid must be letters, digits, '-' and '_'".into(),
            });
        }
        if self.pods().contains_key(&uid) {
            return Ok(());
        }
        let dir = self.pod_dir(&uid);
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let record = PodRecord {
            identity: request.identity,
            spec: request.spec,
            labels: request.labels,
            annotations: request.annotations,
        };
        crate::shim::write_json_atomically(&dir.join("pod.json"), &record)?;
        self.spawn(
            Pod::new(record, dir, Arc::clone(&self.node.changes)),
            Some(request.sources),
            request.refresh,
        );
        Ok(())
    }

    fn pod(&self, uid: &str) -> Result<Arc<Pod>, RuntimeError> {
        self.pods()
            .get(uid)
            .map(|entry| Arc::clone(&entry.pod))
            .ok_or_else(|| RuntimeError::NoSuchPod(uid.to_owned()))
    }

    /// Stops every container of the pod (SIGTERM, `grace` or the pod's grace period,
    /// SIGKILL) and returns once they have exited. The pod stays, stopped, until
    /// removed.
    pub async fn stop_pod(&self, uid: &str, grace: Option<Duration>) -> Result<(), RuntimeError> {
        let pod = self.pod(uid)?;
        let marker = pod.dir.join(STOPPED);
        std::fs::write(&marker, b"").map_err(io("writing", &marker))?;
        pod.request_stop(grace);
        pod.finished().await;
        Ok(())
    }

    /// Stops every pod's containers for a node shutdown, each within its own grace
    /// period capped at `grace`, without marking the pods stopped: a runtime opened on
    /// the same state later runs them again.
    pub async fn stop_all(&self, grace: Duration) {
        let pods: Vec<Arc<Pod>> = self.pods().values().map(|e| Arc::clone(&e.pod)).collect();
        for pod in &pods {
            pod.request_stop(Some(grace.min(pod.grace_period())));
        }
        for pod in pods {
            pod.finished().await;
        }
    }

    /// Stops the pod if needed (without a grace period unless it already stopped) and
    /// removes everything it had on the node: instances, namespaces, volumes,
    /// cgroups, logs and state.
    pub async fn remove_pod(&self, uid: &str) -> Result<(), RuntimeError> {
        let pod = self.pod(uid)?;
        self.stop_pod(uid, Some(Duration::ZERO)).await?;
        let containers = pod.dir.join("containers");
        if let Ok(names) = std::fs::read_dir(&containers) {
            for name in names.filter_map(Result::ok) {
                for attempt in std::fs::read_dir(name.path())
                    .into_iter()
                    .flatten()
                    .filter_map(Result::ok)
                {
                    Instance::at(&attempt.path())
                        .remove()
                        .await
                        .map_err(|err| RuntimeError::Container {
                            pod: uid.to_owned(),
                            message: err.to_string(),
                        })?;
                }
            }
        }
        if let Some(network) = self.node.pod_network.as_ref().and_then(|slot| slot.get()) {
            network
                .detach(uid)
                .await
                .map_err(|source| RuntimeError::Network {
                    pod: uid.to_owned(),
                    source: Box::new(source),
                })?;
        }
        // Unmounting and deleting (volumes may be large) is blocking work.
        let cgroup = format!("{}/pod{uid}", self.node.cgroup_parent.trim_end_matches('/'));
        let layout = self.node.cgroups;
        let logs = pod.log_dir(&self.node);
        let dir = pod.dir.clone();
        tokio::task::spawn_blocking(move || -> Result<(), RuntimeError> {
            Sandbox::at(&dir.join("ns")).destroy()?;
            let volume_root = dir.join("volumes");
            volumes::remove(&volume_root).map_err(io("removing", &volume_root))?;
            layout
                .remove_tree(&cgroup)
                .map_err(io("removing the cgroup", Path::new(&cgroup)))?;
            match std::fs::remove_dir_all(&logs) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("removing", &logs)(e)),
            }
            std::fs::remove_dir_all(&dir).map_err(io("removing", &dir))
        })
        .await
        .map_err(|err| RuntimeError::Container {
            pod: uid.to_owned(),
            message: format!("removal task: {err}"),
        })??;
        self.pods().remove(uid);
        Ok(())
    }

    /// The pod's status, if it is here.
    pub fn pod_status(&self, uid: &str) -> Option<PodRuntimeStatus> {
        self.pods().get(uid).map(|entry| entry.pod.status())
    }

    /// Changes whenever a pod's state does (a container started or ended, its
    /// readiness flipped, the pod finished): a reporter waits on it instead of polling.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.node.changes.subscribe()
    }

    /// The pods on the node.
    pub fn list_pods(&self) -> Vec<PodIdentity> {
        self.pods()
            .values()
            .map(|entry| entry.pod.record.identity.clone())
            .collect()
    }

    /// The log file of a container's current (or `previous`) instance.
    pub fn log_path(
        &self,
        uid: &str,
        container: &str,
        previous: bool,
    ) -> Result<PathBuf, RuntimeError> {
        let pod = self.pod(uid)?;
        let attempts = pod.attempts(container);
        let no = |message: &str| RuntimeError::Container {
            pod: uid.to_owned(),
            message: format!("container {container:?}: {message}"),
        };
        let attempt = if previous {
            attempts
                .len()
                .checked_sub(2)
                .map(|i| attempts[i])
                .ok_or_else(|| no("has no previous instance"))?
        } else {
            *attempts.last().ok_or_else(|| no("has not run yet"))?
        };
        Ok(pod
            .log_dir(&self.node)
            .join(container)
            .join(format!("{attempt}.log")))
    }

    /// Reads a container's log as `kubectl logs` shows it, passing chunks to `out`;
    /// with `follow`, until that instance ends, `out` fails or `wanted()` says the
    /// reader has gone. Blocking: call it from a blocking task.
    pub fn read_log(
        &self,
        uid: &str,
        container: &str,
        previous: bool,
        options: &ReadOptions,
        wanted: impl Fn() -> bool,
        out: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), RuntimeError> {
        let path = self.log_path(uid, container, previous)?;
        let pod = self.pod(uid)?;
        let name = container.to_owned();
        let followed = pod.attempts(&name).last().copied();
        // Following ends with the instance followed, not with the container: after a
        // restart a new instance writes another file.
        let still_running = || {
            !previous
                && wanted()
                && pod.is_running(&name)
                && pod.attempts(&name).last().copied() == followed
        };
        cri_log::read_log(&path, options, still_running, out)?;
        Ok(())
    }

    /// Starts a command in the running container `container` of pod `uid`, as
    /// `kubectl exec` does: with piped stdin, stdout and stderr, or with a terminal.
    /// The session's process exit code is the command's.
    pub async fn exec(
        &self,
        uid: &str,
        container: &str,
        options: &ExecOptions,
    ) -> Result<ExecSession, RuntimeError> {
        let pod = self.pod(uid)?;
        if !pod.is_running(container) {
            return Err(RuntimeError::Container {
                pod: uid.to_owned(),
                message: format!("container {container:?} is not running"),
            });
        }
        let attempt = pod.attempts(container).last().copied().unwrap_or(0);
        let instance = pod.container_dir(container).join(attempt.to_string());
        exec::start(
            self.node.spawner.as_ref(),
            &self.node.shim,
            &instance,
            options,
            &self.root.join("exec"),
        )
        .await
        .map_err(|source| RuntimeError::Exec {
            pod: uid.to_owned(),
            source,
        })
    }

    /// Replaces the registry settings (plain-HTTP registries, the node's registry
    /// credentials); pulls from now on use them.
    pub fn configure_registries(&self, settings: RegistrySettings) {
        self.node.puller.configure(settings);
    }

    /// Removes the node's parent cgroup of pods (`RuntimeConfig::cgroup_parent`) once
    /// no pod is left, as a node that goes away for good does. Only an empty cgroup
    /// goes: with a pod (of this or another runtime) still in it, it fails and changes
    /// nothing.
    pub fn remove_cgroup_parent(&self) -> Result<(), RuntimeError> {
        let remaining = self.pods().len();
        if remaining > 0 {
            return Err(RuntimeError::PodsRemain(remaining));
        }
        let parent = PathBuf::from(&self.node.cgroup_parent);
        self.node
            .cgroups
            .remove_if_empty(&self.node.cgroup_parent)
            .map_err(io("removing the cgroup", &parent))
    }

    /// Stops managing pods without touching their containers, as when the runtime
    /// service restarts: the shims keep the containers running, and the next
    /// [`Runtime::open`] re-attaches to them. Dropping the runtime does the same.
    pub fn detach(self) {
        drop(self);
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for (_, entry) in std::mem::take(&mut *self.pods()) {
            entry.worker.abort();
        }
    }
}
