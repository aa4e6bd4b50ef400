//! The life of one pod on the node, as the kubelet leads it: the sandbox, volumes and
//! pod files, then init containers in order (restartable init containers — sidecars —
//! started and kept running), then the app containers, each supervised under the pod's
//! `restartPolicy` with the kubelet's crash-loop back-off; probes; a graceful stop
//! (SIGTERM, the grace period, SIGKILL; apps before sidecars, sidecars in reverse
//! order). Its status is kept in Kubernetes' shapes (`ContainerStatus`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, PodSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cgroups::CgroupLayout;
use crate::container::{Instance, ShimProgram};
use crate::images::ImageStore;
use crate::plan::{PlanError, PodContext, PodIdentity, plan_container};
use crate::probes::{self, ProbeTarget, Timing, Verdicts};
use crate::process::Spawner;
use crate::pull::{Credentials, Puller};
use crate::rootfs::{LayerCache, OverlayRoot};
use crate::sandbox::Sandbox;
use crate::shim::{ShimConfig, ShimStatus};
use crate::spec::{BindMount, SharedNamespaces};
use crate::volumes::{self, PodSources, PreparedVolume, SourceRefresh};
use cairn_api::error_chain;
use cairn_net::pod_network::PodNetworkSlot;

/// How a pod's setup message begins when a volume could not be set up (the
/// kubelet's `MountVolume.SetUp failed`, recorded as a `FailedMount` event).
pub const MOUNT_FAILED: &str = "MountVolume.SetUp failed";
/// How a pod's setup message begins while the node's pod network has not started
/// (recorded as a `NetworkNotReady` event, as the kubelet does).
pub const NETWORK_NOT_READY: &str = "network is not ready";

/// How long a failing container waits before its next start: doubling from
/// `initial` to `max`, back to `initial` after running `reset_after` without failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The first delay (kubelet: 10 s).
    pub initial: Duration,
    /// The longest delay (kubelet: 5 min).
    pub max: Duration,
    /// A run this long resets the delay (kubelet: 10 min).
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl BackoffPolicy {
    /// The delay after `previous` (none before the first restart) for a run of `ran`.
    pub fn next(&self, previous: Option<Duration>, ran: Duration) -> Duration {
        match previous {
            Some(previous) if ran < self.reset_after => (previous * 2).min(self.max),
            _ => self.initial,
        }
    }
}

/// What a pod worker needs from the node.
#[derive(Debug)]
pub struct NodeContext {
    /// The node's name.
    pub node_name: String,
    /// The shim program.
    pub shim: ShimProgram,
    /// How shims are started.
    pub spawner: Arc<dyn Spawner>,
    /// Images.
    pub images: ImageStore,
    /// Unpacked layers.
    pub layers: LayerCache,
    /// The host's cgroups.
    pub cgroups: CgroupLayout,
    /// The cgroup all pods live under (`/cairn`).
    pub cgroup_parent: String,
    /// `pids.max` per container.
    pub pids_limit: Option<i64>,
    /// Crash-loop back-off.
    pub backoff: BackoffPolicy,
    /// libcontainer's state directory.
    pub state_root: PathBuf,
    /// Where container logs go (`/var/log/pods`).
    pub log_root: PathBuf,
    /// The node runs from its initramfs: containers `chroot` instead of `pivot_root`.
    pub no_pivot: bool,
    /// Pulls images from registries.
    pub puller: Puller,
    /// Where the node's pod network appears, which gives pods (not `hostNetwork`
    /// ones) an interface and an address; `None`: pods have loopback only.
    pub pod_network: Option<PodNetworkSlot>,
    /// Bumped whenever any pod's state changes, so a watcher (the node agent) can
    /// report without polling.
    pub changes: Arc<watch::Sender<u64>>,
}

/// A pod as the runtime keeps it on disk (`pod.json`): no secrets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    /// Who it is.
    pub identity: PodIdentity,
    /// Its spec.
    pub spec: PodSpec,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// The phase of a pod, as Kubernetes names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Not all containers have started yet.
    Pending,
    /// Initialised, and at least one container runs or restarts.
    Running,
    /// Every container ended successfully and none will restart.
    Succeeded,
    /// Every container ended, one failed, and none will restart.
    Failed,
}

impl Phase {
    /// Kubernetes' name of the phase.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

/// What the runtime reports about a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRuntimeStatus {
    /// The phase.
    pub phase: Phase,
    /// Why the pod is where it is, when something is wrong.
    pub message: Option<String>,
    /// The init containers, in order.
    pub init_container_statuses: Vec<ContainerStatus>,
    /// The app containers, in order.
    pub container_statuses: Vec<ContainerStatus>,
    /// Every init container has completed (or, for sidecars, started).
    pub initialized: bool,
    /// Every app container is ready.
    pub containers_ready: bool,
    /// The pod is stopping or stopped.
    pub stopping: bool,
    /// Its address on the pod network (`status.podIP`), once it has one.
    pub pod_ip: Option<String>,
    /// The containers whose probes have failed, for the kubelet's `Unhealthy` events.
    pub probe_failures: Vec<ProbeFailures>,
}

/// The failed probe attempts of one container so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailures {
    /// The container.
    pub container: String,
    /// Failed attempts of any of its probes, across its instances.
    pub count: u32,
    /// The last one, as the kubelet words it (`Readiness probe failed: …`).
    pub last: String,
}

/// One Kubernetes container of the pod, across its instances.
#[derive(Debug, Clone)]
struct Tracked {
    status: ContainerStatus,
    /// Whether no further start will happen (ended under its restart policy).
    settled: bool,
    /// Failed probe attempts so far, and the last one's message.
    probe_failures: Option<(u32, String)>,
}

/// The mutable part of a pod.
#[derive(Debug)]
struct State {
    phase: Phase,
    message: Option<String>,
    pod_ip: Option<String>,
    initialized: bool,
    containers: BTreeMap<String, Tracked>,
}

/// A pod being run.
#[derive(Debug)]
pub struct Pod {
    /// What it is.
    pub record: PodRecord,
    /// Its directory (`<root>/pods/<uid>`).
    pub dir: PathBuf,
    state: Mutex<State>,
    stop: watch::Sender<Option<Duration>>,
    finished: watch::Sender<bool>,
    changes: Arc<watch::Sender<u64>>,
}

/// The pod's state, locked; a change through it (a mutable borrow) bumps the node's
/// change counter when the lock is let go.
struct StateGuard<'a> {
    state: MutexGuard<'a, State>,
    changes: &'a watch::Sender<u64>,
    changed: bool,
}

impl std::ops::Deref for StateGuard<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.changed = true;
        &mut self.state
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        if self.changed {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

fn time(text: &str) -> Option<Time> {
    text.parse::<Timestamp>().ok().map(Time)
}

fn waiting(reason: &str, message: impl Into<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message: Some(message.into()).filter(|m: &String| !m.is_empty()),
        }),
        ..ContainerState::default()
    }
}

/// The Kubernetes state of an exited instance.
fn terminated(id: &str, status: &ShimStatus) -> ContainerState {
    let terminated = match status {
        ShimStatus::Exited {
            started_at,
            finished_at,
            exit_code,
            signal,
            oom_killed,
            ..
        } => ContainerStateTerminated {
            container_id: Some(format!("cairn://{id}")),
            exit_code: *exit_code,
            signal: *signal,
            reason: Some(
                if *oom_killed {
                    "OOMKilled"
                } else if *exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                }
                .to_owned(),
            ),
            started_at: time(started_at),
            finished_at: time(finished_at),
            message: None,
        },
        ShimStatus::Failed { message } => ContainerStateTerminated {
            container_id: Some(format!("cairn://{id}")),
            exit_code: 128,
            reason: Some("StartError".into()),
            message: Some(message.clone()),
            ..ContainerStateTerminated::default()
        },
        ShimStatus::Running { .. } => ContainerStateTerminated::default(),
    };
    ContainerState {
        terminated: Some(terminated),
        ..ContainerState::default()
    }
}

/// How one run of a container ended.
#[derive(Debug, Clone)]
struct RunEnd {
    status: ShimStatus,
    ran: Duration,
    /// Ended because the pod stops.
    stopped: bool,
}

impl RunEnd {
    fn exit_code(&self) -> i32 {
        match &self.status {
            ShimStatus::Exited { exit_code, .. } => *exit_code,
            _ => 128,
        }
    }
}

impl Pod {
    /// A pod about to be run from `record` in `dir`; its state changes bump `changes`.
    pub fn new(record: PodRecord, dir: PathBuf, changes: Arc<watch::Sender<u64>>) -> Arc<Self> {
        let mut containers = BTreeMap::new();
        for container in all_containers(&record.spec) {
            containers.insert(
                container.name.clone(),
                Tracked {
                    status: ContainerStatus {
                        name: container.name.clone(),
                        image: container.image.clone().unwrap_or_default(),
                        state: Some(waiting("ContainerCreating", "")),
                        ..ContainerStatus::default()
                    },
                    settled: false,
                    probe_failures: None,
                },
            );
        }
        Arc::new(Self {
            record,
            dir,
            state: Mutex::new(State {
                pod_ip: None,
                phase: Phase::Pending,
                message: None,
                initialized: false,
                containers,
            }),
            stop: watch::channel(None).0,
            finished: watch::channel(false).0,
            changes,
        })
    }

    fn lock(&self) -> StateGuard<'_> {
        StateGuard {
            state: self.state.lock().unwrap_or_else(PoisonError::into_inner),
            changes: &self.changes,
            changed: false,
        }
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut Tracked)) {
        if let Some(tracked) = self.lock().containers.get_mut(name) {
            change(tracked);
        }
    }

    /// Notes a failed attempt of one of the container `name`'s probes (`kind`:
    /// `Liveness`, `Readiness`, `Startup`).
    fn probe_failed(&self, name: &str, kind: &str, error: &str) {
        let last = format!("{kind} probe failed: {error}");
        self.update(name, |t| {
            let count = t.probe_failures.as_ref().map_or(0, |(count, _)| *count);
            t.probe_failures = Some((count.saturating_add(1), last));
        });
    }

    /// Asks the pod to stop, giving its containers `grace` (or the pod's
    /// `terminationGracePeriodSeconds`).
    pub fn request_stop(&self, grace: Option<Duration>) {
        let grace = grace.unwrap_or_else(|| self.grace_period());
        self.stop.send_if_modified(|current| {
            // A shorter grace period replaces a longer one, never the other way.
            if current.is_none_or(|old| grace < old) {
                *current = Some(grace);
                true
            } else {
                false
            }
        });
    }

    /// Whether a stop was asked for.
    pub fn stopping(&self) -> bool {
        self.stop.borrow().is_some()
    }

    /// Waits until the worker has finished (every container stopped).
    pub async fn finished(&self) {
        let mut finished = self.finished.subscribe();
        let _ = finished.wait_for(|done| *done).await;
    }

    /// The pod's `terminationGracePeriodSeconds` (default 30 s).
    pub fn grace_period(&self) -> Duration {
        Duration::from_secs(
            self.record
                .spec
                .termination_grace_period_seconds
                .unwrap_or(30)
                .max(0) as u64,
        )
    }

    /// The pod's status now.
    pub fn status(&self) -> PodRuntimeStatus {
        let state = self.lock();
        let pick = |containers: &[Container]| -> Vec<ContainerStatus> {
            containers
                .iter()
                .filter_map(|c| state.containers.get(&c.name).map(|t| t.status.clone()))
                .collect()
        };
        let init = pick(
            self.record
                .spec
                .init_containers
                .as_deref()
                .unwrap_or_default(),
        );
        let apps = pick(&self.record.spec.containers);
        let probe_failures = state
            .containers
            .iter()
            .filter_map(|(name, tracked)| {
                let (count, last) = tracked.probe_failures.clone()?;
                Some(ProbeFailures {
                    container: name.clone(),
                    count,
                    last,
                })
            })
            .collect();
        PodRuntimeStatus {
            phase: state.phase,
            message: state.message.clone(),
            containers_ready: apps.iter().all(|c| c.ready),
            init_container_statuses: init,
            container_statuses: apps,
            initialized: state.initialized,
            stopping: self.stopping(),
            pod_ip: state.pod_ip.clone(),
            probe_failures,
        }
    }

    /// The directory of a container's instances.
    pub fn container_dir(&self, name: &str) -> PathBuf {
        self.dir.join("containers").join(name)
    }

    /// The log directory of the pod (`<log_root>/<ns>_<name>_<uid>`).
    pub fn log_dir(&self, node: &NodeContext) -> PathBuf {
        let id = &self.record.identity;
        node.log_root
            .join(format!("{}_{}_{}", id.namespace, id.name, id.uid))
    }

    /// The attempts of a container that have a directory, in order.
    pub fn attempts(&self, name: &str) -> Vec<u32> {
        let mut attempts: Vec<u32> = std::fs::read_dir(self.container_dir(name))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        attempts.sort_unstable();
        attempts
    }

    /// Whether the container `name` currently has a running instance.
    pub fn is_running(&self, name: &str) -> bool {
        self.lock()
            .containers
            .get(name)
            .and_then(|t| t.status.state.as_ref())
            .is_some_and(|s| s.running.is_some())
    }
}

/// Init containers, then app containers.
fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
}

/// The path of `name` in the pod spec (`spec.initContainers[1]`).
fn container_path(spec: &PodSpec, name: &str) -> String {
    if let Some(i) = spec
        .init_containers
        .iter()
        .flatten()
        .position(|c| c.name == name)
    {
        return format!("spec.initContainers[{i}]");
    }
    let i = spec
        .containers
        .iter()
        .position(|c| c.name == name)
        .unwrap_or(0);
    format!("spec.containers[{i}]")
}

/// Writes `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` for the pod.
fn write_pod_files(dir: &Path, record: &PodRecord, hostname: &str) -> std::io::Result<()> {
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc)?;
    let mut hosts = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    for alias in record.spec.host_aliases.iter().flatten() {
        let names = alias.hostnames.clone().unwrap_or_default().join("\t");
        hosts.push_str(&format!("{}\t{names}\n", alias.ip));
    }
    std::fs::write(etc.join("hosts"), hosts)?;
    std::fs::write(etc.join("hostname"), format!("{hostname}\n"))?;
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    std::fs::write(etc.join("resolv.conf"), resolv)?;
    Ok(())
}

/// The pod's hostname (`spec.hostname` or the pod's name, at most 63 characters).
fn hostname(record: &PodRecord) -> String {
    let name = record
        .spec
        .hostname
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| record.identity.name.clone());
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_owned()
}

/// Everything a container start needs that is the same for all of a pod's containers.
struct PodSetup {
    namespaces: SharedNamespaces,
    /// The pod's address, or empty without a pod network.
    pod_ip: String,
    hostname: String,
    volumes: BTreeMap<String, PreparedVolume>,
    /// Registry credentials from the pod's `imagePullSecrets`, by registry host.
    pull_credentials: BTreeMap<String, Credentials>,
}

impl PodSetup {
    /// The credentials for `reference`'s registry (anonymous when none are known).
    fn credentials_for(&self, reference: &str) -> Credentials {
        let full = crate::images::normalize_reference(reference);
        let host = full.split('/').next().unwrap_or_default();
        self.pull_credentials
            .get(host)
            .or_else(|| {
                (host == "docker.io")
                    .then(|| self.pull_credentials.get("index.docker.io"))
                    .flatten()
            })
            .cloned()
            .unwrap_or_default()
    }
}

/// Credentials of `kubernetes.io/dockerconfigjson` secrets named by the pod, by host.
fn pull_credentials(spec: &PodSpec, sources: Option<&PodSources>) -> BTreeMap<String, Credentials> {
    use base64::Engine as _;
    let mut found = BTreeMap::new();
    let Some(sources) = sources else {
        return found;
    };
    for reference in spec.image_pull_secrets.iter().flatten() {
        let Some(secret) = sources.secrets.get(&reference.name) else {
            continue;
        };
        let Some(config) = secret
            .data
            .as_ref()
            .and_then(|d| d.get(".dockerconfigjson"))
        else {
            continue;
        };
        let Ok(config) = serde_json::from_slice::<serde_json::Value>(&config.0) else {
            continue;
        };
        for (server, entry) in config["auths"].as_object().into_iter().flatten() {
            let host = server
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            let pair = match (entry["username"].as_str(), entry["password"].as_str()) {
                (Some(user), Some(password)) => Some((user.to_owned(), password.to_owned())),
                _ => entry["auth"]
                    .as_str()
                    .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
                    .and_then(|raw| String::from_utf8(raw).ok())
                    .and_then(|text| {
                        text.split_once(':')
                            .map(|(u, p)| (u.to_owned(), p.to_owned()))
                    }),
            };
            if let Some((username, password)) = pair {
                found.insert(host, Credentials::Basic { username, password });
            }
        }
    }
    found
}

/// Runs the pod until it is stopped (or, without restarts, until it ends). `sources`
/// is `None` when re-attaching after a runtime restart (volumes already prepared);
/// `refresh` reads them again before a failed setup is retried.
pub async fn run(
    node: Arc<NodeContext>,
    pod: Arc<Pod>,
    sources: Option<PodSources>,
    refresh: Option<SourceRefresh>,
) {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "pod",
        namespace = %pod.record.identity.namespace,
        name = %pod.record.identity.name
    );
    let outcome = run_inner(&node, &pod, sources, refresh)
        .instrument(span.clone())
        .await;
    if let Err(message) = outcome {
        tracing::warn!(parent: &span, %message, "pod could not run");
        pod.lock().message = Some(message);
    }
    pod.finished.send_replace(true);
}

/// Sets the pod up, retrying while it cannot be (a missing config map, say) until
/// stopped, with its sources read again through `refresh` before each retry.
async fn setup(
    node: &Arc<NodeContext>,
    pod: &Arc<Pod>,
    mut sources: Option<PodSources>,
    refresh: Option<SourceRefresh>,
) -> Result<PodSetup, String> {
    let mut stop = pod.stop.subscribe();
    let began = Instant::now();
    loop {
        let attempt = {
            let pod = Arc::clone(pod);
            let sources = sources.clone();
            let node = Arc::clone(node);
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || setup_once(&pod, sources.as_ref(), &node, &runtime))
                .await
                .map_err(|err| format!("pod setup task: {err}"))?
        };
        match attempt {
            Ok(setup) => {
                tracing::info!(
                    pod_ip = %setup.pod_ip,
                    elapsed_ms = millis(began.elapsed()),
                    "pod sandbox ready"
                );
                return Ok(setup);
            }
            Err(message) => {
                pod.lock().message = Some(message.clone());
                for tracked in pod.lock().containers.values_mut() {
                    tracked.status.state = Some(waiting("ContainerCreating", message.clone()));
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop_requested(&mut stop) => return Err("stopped before it was set up".into()),
        }
        if let (Some(SourceRefresh(reader)), Some(current)) = (&refresh, &mut sources) {
            match reader.read().await {
                Ok(fresh) => *current = fresh,
                Err(message) => {
                    tracing::warn!(%message, "reading the pod's sources again failed; retrying with the previous ones");
                }
            }
        }
    }
}

fn setup_once(
    pod: &Pod,
    sources: Option<&PodSources>,
    node: &NodeContext,
    runtime: &tokio::runtime::Handle,
) -> Result<PodSetup, String> {
    let record = &pod.record;
    let hostname = hostname(record);
    let sandbox = Sandbox::at(&pod.dir.join("ns"));
    let mut namespaces = sandbox.create(&hostname).map_err(|e| e.to_string())?;
    let mut pod_ip = String::new();
    if record.spec.host_network == Some(true) {
        namespaces.net = None;
        namespaces.uts = None;
    } else if let (Some(slot), Some(netns)) = (&node.pod_network, &namespaces.net) {
        let network = slot.get().ok_or_else(|| {
            format!(
                "{NETWORK_NOT_READY}: the node's pod network has not started yet (a control \
                 plane claims its pod CIDR through the cluster store, see `cairnctl \
                 bootstrap`; a worker waits for the control planes to set its Node's \
                 spec.podCIDR)"
            )
        })?;
        // Attaching again (after a restart of the runtime) keeps the address.
        let interface = runtime
            .block_on(network.attach(&record.identity.uid, netns))
            .map_err(|e| format!("attaching the pod to the pod network: {}", error_chain(&e)))?;
        pod_ip = interface.address.addr().to_string();
        pod.lock().pod_ip = Some(pod_ip.clone());
    }
    if record.spec.host_ipc == Some(true) {
        namespaces.ipc = None;
    }
    write_pod_files(&pod.dir, record, &hostname)
        .map_err(|e| format!("writing the pod's /etc files: {e}"))?;
    let ctx = PodContext {
        identity: &record.identity,
        spec: &record.spec,
        labels: &record.labels,
        annotations: &record.annotations,
        node_name: &node.node_name,
        pod_ip: &pod_ip,
        host_ip: "",
        namespaces: &namespaces,
        hostname: &hostname,
        pids_limit: node.pids_limit,
    };
    let volume_root = pod.dir.join("volumes");
    let volumes = match sources {
        Some(sources) => volumes::prepare(&volume_root, &ctx, sources),
        // Re-attaching: volumes are in place; only their paths are needed.
        None => volumes::prepare(&volume_root, &ctx, &PodSources::default())
            .or_else(|_| volumes::existing(&volume_root, &record.spec)),
    }
    .map_err(|e| format!("{MOUNT_FAILED}: {e}"))?;
    Ok(PodSetup {
        namespaces,
        pod_ip,
        hostname,
        volumes,
        pull_credentials: pull_credentials(&record.spec, sources),
    })
}

async fn run_inner(
    node: &Arc<NodeContext>,
    pod: &Arc<Pod>,
    sources: Option<PodSources>,
    refresh: Option<SourceRefresh>,
) -> Result<(), String> {
    let setup = Arc::new(setup(node, pod, sources, refresh).await?);
    pod.lock().message = None;
    let spec = &pod.record.spec;
    let policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let mut sidecars: Vec<Sidecar> = Vec::new();
    // Init containers, in order.
    for init in spec.init_containers.iter().flatten() {
        if pod.stopping() {
            break;
        }
        if init.restart_policy.as_deref() == Some("Always") {
            // A sidecar outlives the pod's stop request until the app containers are
            // gone: it has a stop signal of its own.
            let (stop_tx, stop_rx) = watch::channel(None);
            let task = tokio::spawn(supervise(
                Arc::clone(node),
                Arc::clone(pod),
                Arc::clone(&setup),
                init.clone(),
                "Always".into(),
                stop_rx,
            ));
            // The next init container starts once the sidecar runs (and passed its
            // startup probe).
            let mut stop = pod.stop.subscribe();
            loop {
                let started = pod
                    .lock()
                    .containers
                    .get(&init.name)
                    .is_some_and(|t| t.status.started == Some(true));
                if started || stop.borrow().is_some() {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.changed() => {}
                }
            }
            sidecars.push(Sidecar {
                stop: stop_tx,
                task,
            });
            continue;
        }
        let init_policy = if policy == "Never" {
            "Never"
        } else {
            "OnFailure"
        };
        supervise(
            Arc::clone(node),
            Arc::clone(pod),
            Arc::clone(&setup),
            init.clone(),
            init_policy.into(),
            pod.stop.subscribe(),
        )
        .await;
        let succeeded = pod
            .lock()
            .containers
            .get(&init.name)
            .and_then(|t| {
                t.status
                    .state
                    .as_ref()?
                    .terminated
                    .as_ref()
                    .map(|t| t.exit_code == 0)
            })
            .unwrap_or(false);
        if !succeeded {
            if !pod.stopping() {
                let mut state = pod.lock();
                state.phase = Phase::Failed;
                state.message = Some(format!("init container {} failed", init.name));
            }
            stop_sidecars(pod, sidecars).await;
            return Ok(());
        }
    }
    {
        let mut state = pod.lock();
        state.initialized = !pod.stopping();
    }
    let mut apps = Vec::new();
    if !pod.stopping() {
        for container in &spec.containers {
            apps.push(tokio::spawn(supervise(
                Arc::clone(node),
                Arc::clone(pod),
                Arc::clone(&setup),
                container.clone(),
                policy.clone(),
                pod.stop.subscribe(),
            )));
        }
    }
    refresh_phase(pod);
    for app in apps {
        let _ = app.await;
        refresh_phase(pod);
    }
    // Every app container has ended for good (or the pod stops): sidecars go too.
    stop_sidecars(pod, sidecars).await;
    refresh_phase(pod);
    Ok(())
}

/// A running sidecar: its supervisor and its own stop signal.
struct Sidecar {
    stop: watch::Sender<Option<Duration>>,
    task: tokio::task::JoinHandle<()>,
}

/// Stops sidecars one after the other in the reverse order of their start, each with
/// the pod's grace period (or the one its stop asked for).
async fn stop_sidecars(pod: &Arc<Pod>, sidecars: Vec<Sidecar>) {
    for sidecar in sidecars.into_iter().rev() {
        let mut pod_stop = pod.stop.subscribe();
        let grace = pod_stop
            .borrow_and_update()
            .unwrap_or_else(|| pod.grace_period());
        sidecar.stop.send_replace(Some(grace));
        let mut task = sidecar.task;
        loop {
            tokio::select! {
                _ = &mut task => break,
                changed = pod_stop.changed() => {
                    // A shorter grace period for the pod (a forced removal) reaches the
                    // sidecar being stopped too.
                    let shorter = match changed {
                        Ok(()) => *pod_stop.borrow(),
                        Err(_) => Some(Duration::ZERO),
                    };
                    if let Some(shorter) = shorter {
                        sidecar.stop.send_if_modified(|current| {
                            if current.is_none_or(|old| shorter < old) {
                                *current = Some(shorter);
                                true
                            } else {
                                false
                            }
                        });
                    }
                    if changed.is_err() {
                        let _ = (&mut task).await;
                        break;
                    }
                }
            }
        }
    }
}

/// Recomputes the phase from the app containers.
fn refresh_phase(pod: &Pod) {
    let mut state = pod.lock();
    if state.phase == Phase::Failed && !state.initialized {
        return;
    }
    let apps: Vec<&Tracked> = pod
        .record
        .spec
        .containers
        .iter()
        .filter_map(|c| state.containers.get(&c.name))
        .collect();
    let all_settled = apps.iter().all(|t| t.settled);
    let any_started = apps.iter().any(|t| {
        t.status
            .state
            .as_ref()
            .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
            || t.status.restart_count > 0
    });
    let exit_code = |t: &&Tracked| {
        t.status
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code)
    };
    state.phase = if !state.initialized {
        Phase::Pending
    } else if all_settled && !apps.is_empty() {
        if apps.iter().all(|t| exit_code(t) == Some(0)) {
            Phase::Succeeded
        } else {
            Phase::Failed
        }
    } else if any_started {
        Phase::Running
    } else {
        Phase::Pending
    };
}

/// Runs one container under `policy` until it settles or the pod stops.
async fn supervise(
    node: Arc<NodeContext>,
    pod: Arc<Pod>,
    setup: Arc<PodSetup>,
    container: Container,
    policy: String,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let name = container.name.clone();
    let mut delay: Option<Duration> = None;
    // Re-attach to the newest instance, if one exists.
    let mut pending_instance = pod.attempts(&name).last().copied();
    loop {
        // An instance found on disk is always looked at, even when stopping (a stopped
        // pod's container still running is then terminated).
        if pending_instance.is_none() && stop.borrow().is_some() {
            break;
        }
        let end = match pending_instance.take() {
            Some(attempt) => {
                match reattach(&node, &pod, &setup, &container, attempt, stop.clone()).await {
                    Some(end) => end,
                    None => continue,
                }
            }
            None => {
                let attempt = pod.attempts(&name).last().map_or(0, |a| a + 1);
                match start(&node, &pod, &setup, &container, attempt).await {
                    Ok(instance) => {
                        watch_run(
                            &node,
                            &pod,
                            &setup,
                            &container,
                            attempt,
                            instance,
                            stop.clone(),
                        )
                        .await
                    }
                    Err((reason, message)) => {
                        tracing::warn!(container = %name, %reason, %message, "container could not start");
                        pod.update(&name, |t| t.status.state = Some(waiting(&reason, message)));
                        // Not a restart: the container never ran. Try again after a pause.
                        let pause = node.backoff.initial;
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = stop_requested(&mut stop) => {}
                        }
                        continue;
                    }
                }
            }
        };
        let code = end.exit_code();
        let restart = !end.stopped
            && match policy.as_str() {
                "Always" => true,
                "OnFailure" => code != 0,
                _ => false,
            };
        if !restart {
            pod.update(&name, |t| t.settled = true);
            break;
        }
        let next = node.backoff.next(delay, end.ran);
        delay = Some(next);
        let message = format!(
            "back-off {} restarting failed container={name} pod={}_{}({})",
            humanize(next),
            pod.record.identity.name,
            pod.record.identity.namespace,
            pod.record.identity.uid
        );
        tracing::info!(container = %name, delay = ?next, "container restarts after a back-off");
        pod.update(&name, |t| {
            t.status.last_state = t.status.state.take();
            t.status.state = Some(waiting("CrashLoopBackOff", message));
            t.status.ready = false;
            t.status.started = Some(false);
        });
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = stop_requested(&mut stop) => {
                // Stopped while waiting: the last run's end is its state again.
                pod.update(&name, |t| {
                    t.status.state = t.status.last_state.take();
                    t.settled = true;
                });
                break;
            }
        }
        pod.update(&name, |t| t.status.restart_count += 1);
        prune_attempts(&node, &pod, &name).await;
    }
    pod.update(&name, |t| t.settled = true);
    refresh_phase(&pod);
}

/// `10s`, `1m20s`, `5m0s`, as Go prints durations in kubelet messages.
/// A duration in whole milliseconds, for log fields.
fn millis(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

fn humanize(delay: Duration) -> String {
    let seconds = delay.as_secs();
    if seconds >= 60 {
        format!("{}m{}s", seconds / 60, seconds % 60)
    } else {
        format!("{}s", delay.as_secs_f64())
    }
}

/// Removes instances and logs older than the previous one (`kubectl logs --previous`
/// reads the previous one's log).
async fn prune_attempts(node: &NodeContext, pod: &Pod, name: &str) {
    let attempts = pod.attempts(name);
    if attempts.len() <= 2 {
        return;
    }
    for attempt in &attempts[..attempts.len() - 2] {
        let instance = Instance::at(&pod.container_dir(name).join(attempt.to_string()));
        if let Err(err) = instance.remove().await {
            tracing::warn!(container = %name, %err, "removing an old instance failed");
        }
        let log = pod.log_dir(node).join(name).join(format!("{attempt}.log"));
        let _ = std::fs::remove_file(log);
    }
}

/// Picks up an instance that existed before the runtime started: keeps watching it if
/// it runs, or takes its end. `None` when the instance is unusable (then removed).
async fn reattach(
    node: &Arc<NodeContext>,
    pod: &Arc<Pod>,
    setup: &PodSetup,
    container: &Container,
    attempt: u32,
    stop: watch::Receiver<Option<Duration>>,
) -> Option<RunEnd> {
    let name = &container.name;
    let instance = Instance::at(&pod.container_dir(name).join(attempt.to_string()));
    pod.update(name, |t| t.status.restart_count = attempt as i32);
    let status = instance.status().await;
    match status {
        Ok(ShimStatus::Running { .. }) => {
            tracing::info!(container = %name, attempt, "re-attached to a running container");
            Some(watch_run(node, pod, setup, container, attempt, instance, stop).await)
        }
        Ok(status) => {
            let id = container_id(&pod.record.identity, name, attempt);
            let state = terminated(&id, &status);
            pod.update(name, |t| {
                t.status.state = Some(state);
                t.status.container_id = Some(format!("cairn://{id}"));
            });
            Some(RunEnd {
                status,
                ran: Duration::ZERO,
                stopped: false,
            })
        }
        Err(err) => {
            tracing::warn!(container = %name, attempt, %err, "an earlier instance is unusable; removing it");
            let _ = instance.remove().await;
            None
        }
    }
}

/// When a container's image is pulled (Kubernetes' `imagePullPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// The container's pull policy, defaulted as the API server does: `Always` for
/// `:latest` or untagged images, else `IfNotPresent`.
fn pull_policy(container: &Container) -> PullPolicy {
    match container.image_pull_policy.as_deref() {
        Some("Always") => PullPolicy::Always,
        Some("Never") => PullPolicy::Never,
        Some("IfNotPresent") => PullPolicy::IfNotPresent,
        _ => {
            let reference = container.image.as_deref().unwrap_or_default();
            let last = reference.rsplit('/').next().unwrap_or_default();
            let latest =
                !last.contains('@') && last.split_once(':').is_none_or(|(_, tag)| tag == "latest");
            if latest {
                PullPolicy::Always
            } else {
                PullPolicy::IfNotPresent
            }
        }
    }
}

/// The node-unique id of an instance (libcontainer's id, `cairn://` in statuses).
pub fn container_id(identity: &PodIdentity, name: &str, attempt: u32) -> String {
    format!("{}-{name}-{attempt}", identity.uid)
}

/// Creates and starts a new instance; the error is a waiting reason and message.
async fn start(
    node: &Arc<NodeContext>,
    pod: &Arc<Pod>,
    setup: &Arc<PodSetup>,
    container: &Container,
    attempt: u32,
) -> Result<Instance, (String, String)> {
    let name = container.name.clone();
    let reference = container.image.clone().unwrap_or_default();
    let present = node.images.resolve(&reference);
    let image = match (pull_policy(container), present) {
        (PullPolicy::Never, None) => {
            return Err((
                "ErrImageNeverPull".into(),
                format!(
                    "image {reference:?} is not present on the node and imagePullPolicy is Never (import it with `cairnctl image import`)"
                ),
            ));
        }
        (PullPolicy::Never | PullPolicy::IfNotPresent, Some(image)) => image,
        _ => {
            pod.update(&name, |t| {
                t.status.state = Some(waiting(
                    "ContainerCreating",
                    format!("pulling image {reference:?}"),
                ));
            });
            let credentials = setup.credentials_for(&reference);
            match node
                .puller
                .pull(&node.images, &reference, &credentials)
                .await
            {
                Ok(image) => image,
                Err(err) => return Err(("ErrImagePull".into(), err.to_string())),
            }
        }
    };
    let repository = match image.name.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => repository.to_owned(),
        _ => image.name.clone(),
    };
    pod.update(&name, |t| {
        t.status.image_id = format!("{repository}@{}", image.manifest)
    });
    let dir = pod.container_dir(&name).join(attempt.to_string());
    let id = container_id(&pod.record.identity, &name, attempt);
    let log_dir = pod.log_dir(node).join(&name);
    let preparing = Instant::now();
    let prepared = {
        let node = Arc::clone(node);
        let pod = Arc::clone(pod);
        let setup = Arc::clone(setup);
        let container = container.clone();
        let dir = dir.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || {
            prepare_instance(
                &node, &pod, &setup, &container, &dir, &id, attempt, &log_dir,
            )
        })
        .await
        .map_err(|err| ("CreateContainerError".to_owned(), err.to_string()))?
    };
    let instance = match prepared {
        Ok(instance) => instance,
        Err((reason, message)) => {
            let _ = Instance::at(&dir).remove().await;
            return Err((reason, message));
        }
    };
    let prepare_ms = millis(preparing.elapsed());
    let starting = Instant::now();
    let started = tokio::time::timeout(
        SHIM_START_TIMEOUT,
        instance.start(&node.shim, node.spawner.as_ref()),
    )
    .await;
    let Ok(started) = started else {
        // A shim that hangs while creating the container is killed, and the container
        // with it if it got that far.
        instance.abandon().await;
        let _ = instance.remove().await;
        return Err((
            "RunContainerError".into(),
            format!("the shim did not start the container within {SHIM_START_TIMEOUT:?}"),
        ));
    };
    match started {
        Ok(ShimStatus::Running { .. } | ShimStatus::Exited { .. }) => {
            tracing::info!(
                container = %name,
                attempt,
                prepare_ms,
                start_ms = millis(starting.elapsed()),
                "container started"
            );
            Ok(instance)
        }
        Ok(ShimStatus::Failed { message }) => {
            let _ = instance.remove().await;
            Err(("RunContainerError".into(), message))
        }
        Err(err) => {
            let _ = instance.remove().await;
            Err(("RunContainerError".into(), err.to_string()))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn prepare_instance(
    node: &NodeContext,
    pod: &Pod,
    setup: &PodSetup,
    container: &Container,
    dir: &Path,
    id: &str,
    attempt: u32,
    log_dir: &Path,
) -> Result<Instance, (String, String)> {
    let create_error = |message: String| ("CreateContainerError".to_owned(), message);
    let config_error = |err: PlanError| ("CreateContainerConfigError".to_owned(), err.to_string());
    let reference = container.image.clone().unwrap_or_default();
    let image = node
        .images
        .resolve(&reference)
        .ok_or_else(|| create_error(format!("image {reference:?} vanished")))?;
    let configuration = node
        .images
        .configuration(&image)
        .map_err(|e| create_error(e.to_string()))?;
    let lowers = node
        .layers
        .lowers(node.images.blobs(), &image.layers)
        .map_err(|e| create_error(e.to_string()))?;
    let path = container_path(&pod.record.spec, &container.name);
    let mut mounts =
        volumes::container_mounts(container, &path, &setup.volumes).map_err(config_error)?;
    for file in ["hosts", "hostname", "resolv.conf"] {
        let target = format!("/etc/{file}");
        if !mounts.iter().any(|m| m.destination == Path::new(&target)) {
            mounts.push(BindMount {
                source: pod.dir.join("etc").join(file),
                destination: target.into(),
                readonly: false,
            });
        }
    }
    let record = &pod.record;
    let ctx = PodContext {
        identity: &record.identity,
        spec: &record.spec,
        labels: &record.labels,
        annotations: &record.annotations,
        node_name: &node.node_name,
        pod_ip: &setup.pod_ip,
        host_ip: "",
        namespaces: &setup.namespaces,
        hostname: &setup.hostname,
        pids_limit: node.pids_limit,
    };
    let cgroup = format!(
        "{}/pod{}/{}-{attempt}",
        node.cgroup_parent.trim_end_matches('/'),
        record.identity.uid,
        container.name
    );
    let mut plan = plan_container(
        &ctx,
        container,
        &path,
        &configuration,
        &lowers,
        cgroup.clone(),
        mounts,
    )
    .map_err(config_error)?;
    plan.cgroup_namespace = node.cgroups == CgroupLayout::Unified;
    std::fs::create_dir_all(log_dir)
        .map_err(|e| create_error(format!("creating {}: {e}", log_dir.display())))?;
    let bundle = dir.join("bundle");
    let config = ShimConfig {
        id: id.to_owned(),
        bundle: bundle.clone(),
        state_root: node.state_root.clone(),
        log: log_dir.join(format!("{attempt}.log")),
        rootfs: OverlayRoot {
            lowers,
            upper: dir.join("upper"),
            work: dir.join("work"),
            target: bundle.join("rootfs"),
        },
        cgroup,
        no_pivot: node.no_pivot,
    };
    let spec = plan
        .oci_spec(config.rootfs.target.clone())
        .map_err(|e| create_error(format!("building the OCI spec: {e}")))?;
    let instance = Instance::at(dir);
    instance
        .prepare(&config, &spec)
        .map_err(|e| create_error(e.to_string()))?;
    Ok(instance)
}

/// Watches a started instance: probes, the pod's stop, its exit. Returns how it ended.
async fn watch_run(
    node: &Arc<NodeContext>,
    pod: &Arc<Pod>,
    setup: &PodSetup,
    container: &Container,
    attempt: u32,
    instance: Instance,
    mut stop: watch::Receiver<Option<Duration>>,
) -> RunEnd {
    let name = container.name.clone();
    let id = container_id(&pod.record.identity, &name, attempt);
    let began = Instant::now();
    let started_at = match instance.status().await {
        Ok(ShimStatus::Running { started_at, .. }) => time(&started_at),
        _ => None,
    };
    let has_startup = container.startup_probe.is_some();
    let has_readiness = container.readiness_probe.is_some();
    pod.update(&name, |t| {
        t.status.container_id = Some(format!("cairn://{id}"));
        t.status.restart_count = attempt as i32;
        t.status.state = Some(ContainerState {
            running: Some(ContainerStateRunning { started_at }),
            ..ContainerState::default()
        });
        t.status.started = Some(!has_startup);
        t.status.ready = !has_startup && !has_readiness;
    });
    refresh_phase(pod);
    let target = ProbeTarget {
        shim: node.shim.clone(),
        spawner: Arc::clone(&node.spawner),
        instance: instance.dir().to_owned(),
        netns: setup
            .namespaces
            .net
            .clone()
            .unwrap_or_else(|| PathBuf::from("/proc/1/ns/net")),
    };
    let (kill_tx, mut kill_rx) = tokio::sync::mpsc::channel::<String>(1);
    let prober = tokio::spawn(run_probes(
        Arc::clone(pod),
        container.clone(),
        target,
        kill_tx,
    ));
    let mut stopped = false;
    let mut stop_closed = false;
    // When SIGKILL goes out, once a termination has begun; a later, shorter grace
    // period (a forced delete) moves it earlier, never later.
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut killed = false;
    let waited = instance.wait();
    tokio::pin!(waited);
    let status = loop {
        let deadline = kill_at;
        tokio::select! {
            status = &mut waited => break status,
            signal = stop_signal(&mut stop, stopped), if !stop_closed => {
                stopped = true;
                let grace = signal.unwrap_or_else(|| {
                    // The pod is gone: end at once.
                    stop_closed = true;
                    Duration::ZERO
                });
                kill_at = Some(begin_termination(&instance, grace, kill_at, &name).await);
            }
            Some(reason) = kill_rx.recv() => {
                tracing::info!(container = %name, %reason, "probe failed; restarting the container");
                let grace = probe_grace(container).unwrap_or_else(|| pod.grace_period());
                kill_at = Some(begin_termination(&instance, grace, kill_at, &name).await);
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                if deadline.is_some() && !killed =>
            {
                killed = true;
                tracing::info!(container = %name, "grace period over; killing");
                if let Err(err) = instance.kill(SIGKILL).await {
                    tracing::warn!(container = %name, %err, "SIGKILL failed");
                }
            }
        }
    };
    prober.abort();
    let status = status.unwrap_or_else(|err| ShimStatus::Failed {
        message: err.to_string(),
    });
    if let ShimStatus::Failed { message } = &status {
        // The shim vanished without recording an end: its container may still run.
        // It must not outlive the shim, or a restart would run it twice.
        tracing::warn!(container = %name, %message, "the shim is gone; killing what is left of the container");
        instance.abandon().await;
    }
    let state = terminated(&id, &status);
    pod.update(&name, |t| {
        t.status.state = Some(state);
        t.status.ready = false;
        t.status.started = Some(false);
    });
    RunEnd {
        status,
        ran: began.elapsed(),
        stopped,
    }
}

/// The pod's stop request (before `seen`), or a change of its grace period after it;
/// `None` when the pod's stop signal is gone.
async fn stop_signal(stop: &mut watch::Receiver<Option<Duration>>, seen: bool) -> Option<Duration> {
    if !seen {
        return Some(stop_requested(stop).await);
    }
    match stop.changed().await {
        Ok(()) => Some(stop.borrow().unwrap_or_default()),
        Err(_) => None,
    }
}

/// Waits until the pod is asked to stop; returns the grace period.
async fn stop_requested(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    match stop.wait_for(Option::is_some).await {
        Ok(grace) => grace.unwrap_or_default(),
        // The pod is gone: stop at once.
        Err(_) => Duration::ZERO,
    }
}

/// The liveness probe's own grace period, if it has one.
fn probe_grace(container: &Container) -> Option<Duration> {
    container
        .liveness_probe
        .as_ref()
        .and_then(|p| p.termination_grace_period_seconds)
        .map(|s| Duration::from_secs(s.max(0) as u64))
}

const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;
/// The longest a shim may take to create and start a container.
const SHIM_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts (or hurries) a termination: SIGTERM on the first call unless `grace` is
/// zero; returns when SIGKILL is due, the earlier of `current` and now + `grace`.
async fn begin_termination(
    instance: &Instance,
    grace: Duration,
    current: Option<tokio::time::Instant>,
    name: &str,
) -> tokio::time::Instant {
    let due = tokio::time::Instant::now() + grace;
    if current.is_none()
        && !grace.is_zero()
        && let Err(err) = instance.kill(SIGTERM).await
    {
        tracing::warn!(container = %name, %err, "SIGTERM failed");
    }
    current.map_or(due, |current| current.min(due))
}

/// Runs the container's probes while it runs: startup first, then liveness and
/// readiness. A failed startup or liveness probe sends the reason on `kill`.
async fn run_probes(
    pod: Arc<Pod>,
    container: Container,
    target: ProbeTarget,
    kill: tokio::sync::mpsc::Sender<String>,
) {
    let name = container.name.clone();
    if let Some(startup) = &container.startup_probe {
        let timing = Timing::of(startup);
        tokio::time::sleep(timing.initial_delay).await;
        let mut verdicts = Verdicts::new(timing);
        loop {
            let result = probes::run_once(startup, &container, &target).await;
            let passed = result.is_ok();
            if let Err(error) = &result {
                pod.probe_failed(&name, "Startup", error);
            }
            match verdicts.record(passed) {
                Some(true) => break,
                Some(false) => {
                    let reason =
                        format!("Startup probe failed: {}", result.err().unwrap_or_default());
                    let _ = kill.send(reason).await;
                    return;
                }
                None => {}
            }
            tokio::time::sleep(timing.period).await;
        }
        let has_readiness = container.readiness_probe.is_some();
        pod.update(&name, |t| {
            t.status.started = Some(true);
            t.status.ready = !has_readiness;
        });
    }
    let mut tasks = Vec::new();
    if let Some(liveness) = container.liveness_probe.clone() {
        let (pod, container, target, kill) = (
            Arc::clone(&pod),
            container.clone(),
            target.clone(),
            kill.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let timing = Timing::of(&liveness);
            tokio::time::sleep(timing.initial_delay).await;
            let mut verdicts = Verdicts::new(timing);
            loop {
                let result = probes::run_once(&liveness, &container, &target).await;
                if let Err(error) = &result {
                    pod.probe_failed(&container.name, "Liveness", error);
                }
                if verdicts.record(result.is_ok()) == Some(false) {
                    let reason = format!(
                        "Liveness probe failed: {}",
                        result.err().unwrap_or_default()
                    );
                    let _ = kill.send(reason).await;
                    return;
                }
                tokio::time::sleep(timing.period).await;
            }
        }));
    }
    if let Some(readiness) = container.readiness_probe.clone() {
        let (pod, container, target) = (Arc::clone(&pod), container.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let timing = Timing::of(&readiness);
            tokio::time::sleep(timing.initial_delay).await;
            let mut verdicts = Verdicts::new(timing);
            loop {
                let result = probes::run_once(&readiness, &container, &target).await;
                if let Err(error) = &result {
                    pod.probe_failed(&container.name, "Readiness", error);
                }
                if let Some(ready) = verdicts.record(result.is_ok()) {
                    if !ready {
                        tracing::info!(container = %container.name, error = ?result.err(), "readiness probe failed");
                    }
                    pod.update(&container.name, |t| t.status.ready = ready);
                }
                tokio::time::sleep(timing.period).await;
            }
        }));
    }
    // Aborting this task must end the probe tasks too.
    struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            for task in &self.0 {
                task.abort();
            }
        }
    }
    let _guard = AbortOnDrop(tasks);
    std::future::pending::<()>().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_to_the_cap_and_resets_after_a_long_run() {
        let policy = BackoffPolicy::default();
        let short = Duration::from_secs(1);
        let mut delay = None;
        let mut seen = Vec::new();
        for _ in 0..7 {
            let next = policy.next(delay, short);
            seen.push(next.as_secs());
            delay = Some(next);
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(policy.next(delay, Duration::from_secs(601)).as_secs(), 10);
    }

    #[test]
    fn exits_become_kubernetes_terminated_states() {
        let exited = |code, oom| ShimStatus::Exited {
            pid: 1,
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: "2026-01-01T00:00:01Z".into(),
            exit_code: code,
            signal: None,
            oom_killed: oom,
        };
        let reason = |s: &ShimStatus| terminated("x", s).terminated.unwrap().reason.unwrap();
        assert_eq!(reason(&exited(0, false)), "Completed");
        assert_eq!(reason(&exited(1, false)), "Error");
        assert_eq!(reason(&exited(137, true)), "OOMKilled");
        let state = terminated("x", &exited(0, false)).terminated.unwrap();
        assert!(state.started_at.is_some() && state.finished_at.is_some());
        assert_eq!(humanize(Duration::from_secs(10)), "10s");
        assert_eq!(humanize(Duration::from_secs(300)), "5m0s");
    }
}
