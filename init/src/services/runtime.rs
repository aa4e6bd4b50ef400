//! `runtime`: the node's container runtime (`cairn-runtime`). It opens the runtime's
//! state (re-attaching to containers whose shims survived a restart of this service),
//! runs the static pods of `machine.pods` (with the config maps of
//! `machine.configMaps`, pulling per `machine.registries`) and keeps them in step
//! with the running config, and publishes the runtime for the machine API (pods,
//! logs, exec, images). Shims are started through the node's reaper, which owns
//! every child's exit status. At node shutdown the pods are stopped gracefully.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cairn_api::machine_config::RegistrySpec;
use cairn_runtime::container::ShimProgram;
use cairn_runtime::plan::PodIdentity;
use cairn_runtime::process::{Spawned, Spawner};
use cairn_runtime::pull::{Credentials, RegistrySettings};
use cairn_runtime::runtime::{PodRequest, Runtime, RuntimeConfig};
use cairn_runtime::volumes::{self, PodSources};
use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use sha2::Digest as _;
use tracing::{info, warn};

use crate::config_manager::ConfigManager;
use crate::reaper::{ChildExit, Reaper};
use crate::supervisor::{Service, ServiceContext, ServiceError};

/// The longest a pod may take to stop when the node shuts down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often the static pods are compared with the running config.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// The uid prefix of static pods (the node agent's pods have the API's uids).
pub const STATIC_PREFIX: &str = "static-";

/// The running runtime, once the service has opened it (the machine API reads it).
#[derive(Clone, Default)]
pub struct RuntimeHandle {
    runtime: Arc<RwLock<Option<Arc<Runtime>>>>,
}

impl RuntimeHandle {
    /// The runtime, if it runs.
    pub fn get(&self) -> Option<Arc<Runtime>> {
        self.runtime.read().ok().and_then(|r| r.clone())
    }

    fn set(&self, runtime: Option<Arc<Runtime>>) {
        if let Ok(mut slot) = self.runtime.write() {
            *slot = runtime;
        }
    }
}

/// Starts shims through the node's reaper.
struct ReaperSpawner(Reaper);

impl std::fmt::Debug for ReaperSpawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReaperSpawner")
    }
}

impl Spawner for ReaperSpawner {
    fn spawn(&self, command: &mut std::process::Command) -> std::io::Result<Spawned> {
        let mut child = self.0.spawn(command)?;
        let pid = child.pid();
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        Ok(Spawned {
            pid,
            stdin,
            stdout,
            stderr,
            exit: Box::pin(async move {
                Ok(match child.wait().await {
                    ChildExit::Exited(code) => code,
                    ChildExit::Signaled(signal) => 128 + signal as i32,
                })
            }),
        })
    }
}

/// Where the runtime keeps its state, and who the node is.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// The state directory.
    pub root: PathBuf,
    /// The node's name.
    pub node_name: String,
    /// The state does not outlive this run (no state disk): pods are removed, not just
    /// stopped, when the node stops, so nothing is left mounted.
    pub ephemeral: bool,
    /// The cgroup under which the pods' cgroups go: `/cairn` on a machine, a name of
    /// its own for a node hosted beside others on one machine.
    pub cgroup_parent: String,
    /// Where the node's pod network appears (`None`: the node has none yet, and pods
    /// get loopback only).
    pub pod_network: Option<cairn_net::pod_network::PodNetworkSlot>,
}

/// The runtime service.
pub struct RuntimeService {
    settings: RuntimeSettings,
    config: Arc<ConfigManager>,
    handle: RuntimeHandle,
}

impl RuntimeService {
    /// A service running the runtime under `settings`, static pods from `config`.
    pub fn new(
        settings: RuntimeSettings,
        config: Arc<ConfigManager>,
        handle: RuntimeHandle,
    ) -> Self {
        Self {
            settings,
            config,
            handle,
        }
    }
}

/// The node-unique uid of a static pod: a hash of its manifest and of the config
/// maps it mounts (a changed manifest or config map makes a new pod, as a changed
/// manifest does with the kubelet's static pods).
pub fn static_uid(pod: &Pod, config_maps: &BTreeMap<String, ConfigMap>) -> String {
    let mut hash = sha2::Sha256::new();
    hash.update(serde_json::to_vec(pod).unwrap_or_default());
    for map in config_maps.values() {
        hash.update(serde_json::to_vec(map).unwrap_or_default());
    }
    let hex: String = hash
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{STATIC_PREFIX}{hex}")
}

/// The runtime's registry settings from `machine.registries`.
fn registry_settings(registries: &BTreeMap<String, RegistrySpec>) -> RegistrySettings {
    RegistrySettings {
        insecure: registries
            .iter()
            .filter(|(_, r)| r.http)
            .map(|(host, _)| host.clone())
            .collect(),
        credentials: registries
            .iter()
            .filter_map(|(host, r)| {
                let auth = r.auth.as_ref()?;
                Some((
                    host.clone(),
                    Credentials::Basic {
                        username: auth.username.clone(),
                        password: auth.password.clone(),
                    },
                ))
            })
            .collect(),
    }
}

/// The runtime request of a static pod, with the config maps of `config_maps` it
/// mounts (those of its namespace).
fn request(pod: &Pod, config_maps: &[ConfigMap]) -> Option<PodRequest> {
    let spec = pod.spec.clone()?;
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let wanted = volumes::referenced_config_maps(&spec);
    let mounted: BTreeMap<String, ConfigMap> = config_maps
        .iter()
        .filter(|map| map.metadata.namespace.as_deref().unwrap_or("default") == namespace)
        .filter_map(|map| {
            let name = map.metadata.name.clone()?;
            wanted.contains(&name).then(|| (name, map.clone()))
        })
        .collect();
    Some(PodRequest {
        identity: PodIdentity {
            uid: static_uid(pod, &mounted),
            namespace,
            name: pod.metadata.name.clone()?,
        },
        sources: PodSources {
            config_maps: mounted,
            ..PodSources::default()
        },
        spec,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        annotations: pod.metadata.annotations.clone().unwrap_or_default(),
        // A changed config map makes another static pod (its uid hashes them).
        refresh: None,
    })
}

/// Starts the static pods of `pods` that do not run yet and removes those no longer
/// wanted; their config map volumes come from `config_maps`.
fn reconcile(
    runtime: &Arc<Runtime>,
    pods: &[Pod],
    config_maps: &[ConfigMap],
    removing: &mut BTreeMap<String, tokio::task::JoinHandle<()>>,
) {
    let wanted: BTreeMap<String, PodRequest> = pods
        .iter()
        .filter_map(|pod| request(pod, config_maps))
        .map(|r| (r.identity.uid.clone(), r))
        .collect();
    removing.retain(|_, task| !task.is_finished());
    for present in runtime.list_pods() {
        if present.uid.starts_with(STATIC_PREFIX)
            && !wanted.contains_key(&present.uid)
            && !removing.contains_key(&present.uid)
        {
            info!(pod = %present.name, uid = %present.uid, "static pod no longer configured; removing");
            let runtime = Arc::clone(runtime);
            let uid = present.uid.clone();
            removing.insert(
                present.uid.clone(),
                tokio::spawn(async move {
                    if let Err(err) = runtime.stop_pod(&uid, None).await {
                        warn!(%uid, %err, "stopping a static pod failed");
                    }
                    if let Err(err) = runtime.remove_pod(&uid).await {
                        warn!(%uid, %err, "removing a static pod failed");
                    }
                }),
            );
        }
    }
    for (uid, request) in wanted {
        if runtime.pod_status(&uid).is_none() {
            info!(pod = %request.identity.name, %uid, "starting a static pod");
            if let Err(err) = runtime.ensure_pod(request) {
                warn!(%uid, %err, "a static pod could not be started");
            }
        }
    }
}

impl Service for RuntimeService {
    fn name(&self) -> &str {
        "runtime"
    }

    fn run(&self, ctx: ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>> {
        let settings = self.settings.clone();
        let config_manager = Arc::clone(&self.config);
        let handle = self.handle.clone();
        async move {
            let exe = std::fs::read_link("/proc/self/exe")
                .map_err(|e| ServiceError::failed("cannot find the cairn binary for shims", e))?;
            let mut config = RuntimeConfig::new(
                &settings.root,
                &settings.root.join("logs"),
                ShimProgram {
                    program: exe,
                    args: vec!["shim".into()],
                },
                &settings.node_name,
            );
            config.spawner = Arc::new(ReaperSpawner(ctx.reaper.clone()));
            config.pod_network = settings.pod_network.clone();
            config.cgroup_parent = settings.cgroup_parent.clone();
            let runtime = Arc::new(
                Runtime::open(config)
                    .map_err(|e| ServiceError::failed("cannot open the container runtime", e))?,
            );
            handle.set(Some(Arc::clone(&runtime)));
            info!(
                cgroups = %settings.cgroup_parent,
                root = %settings.root.display(),
                "container runtime ready"
            );
            let mut removing = BTreeMap::new();
            loop {
                let config = config_manager.current().await;
                runtime.configure_registries(registry_settings(&config.machine.registries));
                let (pods, config_maps) = (config.static_pods(), config.static_config_maps());
                reconcile(&runtime, &pods, &config_maps, &mut removing);
                tokio::select! {
                    () = ctx.shutdown.cancelled() => break,
                    () = tokio::time::sleep(RECONCILE_EVERY) => {}
                }
            }
            handle.set(None);
            // The node goes down: stop every pod, each within its grace period (capped).
            let stopping = runtime.stop_all(SHUTDOWN_GRACE);
            if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(2), stopping)
                .await
                .is_err()
            {
                warn!("pods did not all stop in time");
            }
            if settings.ephemeral {
                for pod in runtime.list_pods() {
                    if let Err(err) = runtime.remove_pod(&pod.uid).await {
                        warn!(pod = %pod.name, %err, "removing a pod at shutdown failed");
                    }
                }
                if let Err(err) = runtime.remove_cgroup_parent() {
                    warn!(%err, "the pods' parent cgroup stays");
                }
            }
            info!("container runtime stopped");
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {
                "volumes": [{"name": "conf", "configMap": {"name": "settings"}}],
                "containers": [{"name": "main", "image": "busybox"}]
            }
        }))
        .unwrap()
    }

    fn map(name: &str, namespace: Option<&str>, value: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": namespace},
            "data": {"greeting": value}
        }))
        .unwrap()
    }

    #[test]
    fn static_pods_get_the_config_maps_they_mount_and_restart_when_those_change() {
        let maps = [
            map("settings", None, "hi"),
            map("other", None, "x"),
            map("settings", Some("kube-system"), "elsewhere"),
        ];
        let first = request(&pod(), &maps).unwrap();
        assert_eq!(
            first.sources.config_maps.keys().collect::<Vec<_>>(),
            ["settings"]
        );
        assert_eq!(
            first.sources.config_maps["settings"].data.as_ref().unwrap()["greeting"],
            "hi"
        );
        let unrelated = [maps[0].clone(), map("other", None, "y"), maps[2].clone()];
        assert_eq!(
            request(&pod(), &unrelated).unwrap().identity.uid,
            first.identity.uid
        );
        let changed = [map("settings", None, "hello"), maps[1].clone()];
        assert_ne!(
            request(&pod(), &changed).unwrap().identity.uid,
            first.identity.uid
        );
        // Without its config map the pod still starts, and says what is missing.
        let missing = request(&pod(), &[]).unwrap();
        assert!(missing.sources.config_maps.is_empty());
        assert_ne!(missing.identity.uid, first.identity.uid);
    }
}
