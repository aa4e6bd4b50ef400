//! The pods bound to this node, kept in step with the runtime: a watch on the pods
//! whose `spec.nodeName` is this node feeds a local cache, and each pass of [`sync`]
//! compares it with what the runtime runs:
//!
//! - a bound pod the runtime does not run (and that has not finished) is started, once
//!   its config maps, secrets and token are read;
//! - a pod the runtime runs gets its status written whenever it changes;
//! - a pod with a `deletionTimestamp` is stopped within its grace period, removed from
//!   the node, and then deleted for good (grace 0, on its uid), as the kubelet does;
//! - a pod the runtime runs that the API no longer has is stopped and removed.
//!
//! Static pods (the machine config's, run by the node itself) are not the agent's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_runtime::plan::PodIdentity;
use cairn_runtime::runtime::{PodRequest, Runtime};
use cairn_runtime::volumes::SourceRefresh;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::status::{Placement, pod_status};
use crate::{events, sources};

/// How often the runtime's pods are compared with the API's even without a watch
/// event or a change in the runtime (finished start and stop tasks, retries).
const SYNC_EVERY: Duration = Duration::from_millis(500);
/// How long a pod whose start failed (its sources could not be read) waits before
/// the next try.
const START_RETRY: Duration = Duration::from_secs(5);

/// Who the pods run on.
#[derive(Debug, Clone)]
pub struct PodSyncSettings {
    /// The node's name (`spec.nodeName` of its pods).
    pub node: String,
    /// The node's address (`status.hostIP`).
    pub host_ip: Option<String>,
    /// Uids starting with this are the node's own (static) pods, never the agent's.
    pub static_uid_prefix: String,
}

/// The agent's view of its pods between passes.
struct PodSync {
    client: kube::Client,
    runtime: Arc<Runtime>,
    settings: PodSyncSettings,
    cache: Store<Pod>,
    /// The status last written for each pod, by uid (the cache may lag behind it).
    reported: HashMap<String, PodStatus>,
    /// The failed probe attempts told in `Unhealthy` events, by pod uid and container.
    probes_told: HashMap<String, BTreeMap<String, u32>>,
    /// Pods whose sources are being read before they start, by uid.
    starting: HashMap<String, JoinHandle<Result<(), String>>>,
    /// When each pod whose start failed may be tried again.
    retry_at: HashMap<String, Instant>,
    /// Pods being stopped and removed, by uid.
    terminating: HashMap<String, JoinHandle<()>>,
}

/// Runs the pods bound to `settings.node` on `runtime` until `stop` fires.
pub async fn sync(
    client: kube::Client,
    runtime: Arc<Runtime>,
    settings: PodSyncSettings,
    stop: CancellationToken,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let (cache, writer) = reflector::store();
    let watch = watcher::watcher(
        pods,
        watcher::Config::default().fields(&format!("spec.nodeName={}", settings.node)),
    )
    .default_backoff()
    .reflect(writer);
    let mut watch = std::pin::pin!(watch);
    let mut state = PodSync {
        client,
        runtime,
        settings,
        cache,
        reported: HashMap::new(),
        probes_told: HashMap::new(),
        starting: HashMap::new(),
        retry_at: HashMap::new(),
        terminating: HashMap::new(),
    };
    let mut tick = tokio::time::interval(SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut runtime_changes = state.runtime.changes();
    let mut synced = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            event = watch.next() => match event {
                Some(Ok(watcher::Event::InitDone)) => synced = true,
                Some(Ok(_)) => {}
                Some(Err(err)) => warn!(error = %err, "watching this node's pods"),
                None => break,
            },
            // A container started or ended: report it now, not at the next tick.
            changed = runtime_changes.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = tick.tick() => {}
        }
        if synced {
            state.pass().await;
        }
    }
    // The node's pods keep running when the agent stops (the runtime service stops
    // them at shutdown); only the tasks of this agent end.
    for (_, task) in state.starting.drain() {
        task.abort();
    }
}

impl PodSync {
    /// One comparison of the API's pods with the runtime's.
    async fn pass(&mut self) {
        self.starting.retain(|uid, task| {
            if !task.is_finished() {
                return true;
            }
            // A finished start leaves a pod in the runtime or a retry time.
            if self.runtime.pod_status(uid).is_none() {
                self.retry_at
                    .insert(uid.clone(), Instant::now() + START_RETRY);
            }
            false
        });
        self.terminating.retain(|_, task| !task.is_finished());
        let pods = self.cache.state();
        let mut bound = HashSet::new();
        let mut reports = Vec::new();
        for pod in &pods {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            bound.insert(uid.clone());
            if pod.metadata.deletion_timestamp.is_some() {
                self.terminate(&uid, Some(pod));
            } else if let Some(runtime_status) = self.runtime.pod_status(&uid) {
                self.tell_probe_failures(pod, &uid, &runtime_status);
                reports.extend(self.report(pod, &uid, &runtime_status));
            } else if !finished(pod) {
                self.start(pod, &uid);
            }
        }
        // The status writes go out together: one slow write does not hold up the
        // others' pods.
        for (uid, written) in futures::future::join_all(reports).await {
            if let Some(status) = written {
                self.reported.insert(uid, status);
            }
        }
        self.reported.retain(|uid, _| bound.contains(uid));
        self.probes_told.retain(|uid, _| bound.contains(uid));
        self.retry_at.retain(|uid, _| bound.contains(uid));
        for identity in self.runtime.list_pods() {
            if !bound.contains(&identity.uid)
                && !identity.uid.starts_with(&self.settings.static_uid_prefix)
            {
                let uid = identity.uid.clone();
                self.terminate(&uid, None);
            }
        }
    }

    /// Reads what `pod` needs and hands it to the runtime, in the background.
    fn start(&mut self, pod: &Pod, uid: &str) {
        if self.starting.contains_key(uid)
            || self.terminating.contains_key(uid)
            || self
                .retry_at
                .get(uid)
                .is_some_and(|at| Instant::now() < *at)
        {
            return;
        }
        let (Some(name), Some(spec)) = (pod.metadata.name.clone(), pod.spec.clone()) else {
            return;
        };
        let namespace = namespace_of(pod);
        let span = info_span!("pod", pod = %format!("{namespace}/{name}"), %uid);
        let (client, runtime, pod, uid_owned) = (
            self.client.clone(),
            Arc::clone(&self.runtime),
            pod.clone(),
            uid.to_owned(),
        );
        let task = tokio::spawn(
            async move {
                let gathering = Instant::now();
                let sources = sources::gather(&client, &namespace, &pod)
                    .await
                    .map_err(|err| {
                        warn!(error = %err, "reading the pod's volumes' sources failed");
                        err.to_string()
                    })?;
                info!(
                    sources_ms = u64::try_from(gathering.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "starting the pod"
                );
                let labels = pod.metadata.labels.clone().unwrap_or_default();
                let annotations = pod.metadata.annotations.clone().unwrap_or_default();
                let refresh = SourceRefresh(Arc::new(sources::Reread::new(
                    client,
                    namespace.clone(),
                    pod,
                )));
                runtime
                    .ensure_pod(PodRequest {
                        identity: PodIdentity {
                            namespace,
                            name,
                            uid: uid_owned,
                        },
                        spec,
                        labels,
                        annotations,
                        sources,
                        refresh: Some(refresh),
                    })
                    .map_err(|err| {
                        warn!(error = %err, "the runtime refused the pod");
                        err.to_string()
                    })
            }
            .instrument(span),
        );
        self.starting.insert(uid.to_owned(), task);
    }

    /// Records an `Unhealthy` event for each container of `pod` whose probes failed
    /// since the last pass, in the background. (An agent that restarts tells the last
    /// failure of each container once more.)
    fn tell_probe_failures(
        &mut self,
        pod: &Pod,
        uid: &str,
        runtime_status: &cairn_runtime::pod::PodRuntimeStatus,
    ) {
        if runtime_status.probe_failures.is_empty() {
            return;
        }
        let told = self.probes_told.entry(uid.to_owned()).or_default();
        let events = events::unhealthy(told, &runtime_status.probe_failures);
        let Some(name) = pod.metadata.name.clone() else {
            return;
        };
        if events.is_empty() {
            return;
        }
        let namespace = namespace_of(pod);
        let (client, node, uid) = (
            self.client.clone(),
            self.settings.node.clone(),
            uid.to_owned(),
        );
        tokio::spawn(async move {
            let pod = (namespace.as_str(), name.as_str(), uid.as_str());
            events::record(&client, &node, pod, events).await;
        });
    }

    /// The write of `pod`'s status, when what the runtime says differs from what was
    /// last written; it resolves to the pod's uid and, once written, the status.
    fn report(
        &self,
        pod: &Pod,
        uid: &str,
        runtime_status: &cairn_runtime::pod::PodRuntimeStatus,
    ) -> Option<impl std::future::Future<Output = (String, Option<PodStatus>)> + use<>> {
        let previous = self.reported.get(uid).or(pod.status.as_ref());
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let next = pod_status(
            runtime_status,
            previous,
            Placement {
                host_ip: self.settings.host_ip.as_deref(),
                host_network,
            },
            Timestamp::now(),
        );
        if same_report(previous, &next) {
            return None;
        }
        let name = pod.metadata.name.clone()?;
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let phase_changed = previous.and_then(|p| p.phase.as_ref()) != next.phase.as_ref();
        let events = events::transitions(previous, &next, &format!("{name}_{namespace}({uid})"));
        let (client, node, namespace) = (
            self.client.clone(),
            self.settings.node.clone(),
            namespace.to_owned(),
        );
        let uid = uid.to_owned();
        Some(async move {
            let patch = status_patch(&uid, &next);
            match pods
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {
                    if phase_changed {
                        info!(pod = name, uid, phase = ?next.phase, "pod phase written");
                    } else {
                        debug!(pod = name, uid, phase = ?next.phase, "pod status written");
                    }
                    // Told once the status that shows them is written, so a failed
                    // write (tried again next pass) does not tell them twice.
                    if !events.is_empty() {
                        let uid = uid.clone();
                        tokio::spawn(async move {
                            let pod = (namespace.as_str(), name.as_str(), uid.as_str());
                            events::record(&client, &node, pod, events).await;
                        });
                    }
                    (uid, Some(next))
                }
                Err(err) => {
                    warn!(pod = name, uid, error = %err, "writing the pod's status failed");
                    (uid, None)
                }
            }
        })
    }

    /// Stops and removes the pod `uid` in the background; `pod` is its API object,
    /// deleted for good afterwards (`None`: the API has no such pod any more).
    fn terminate(&mut self, uid: &str, pod: Option<&Pod>) {
        if self.terminating.contains_key(uid) {
            return;
        }
        if let Some(task) = self.starting.remove(uid) {
            task.abort();
        }
        let grace = pod
            .and_then(|p| p.metadata.deletion_grace_period_seconds)
            .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)));
        let api = pod.and_then(|p| Some((namespace_of(p), p.metadata.name.clone()?)));
        let label = api
            .as_ref()
            .map(|(ns, name)| format!("{ns}/{name}"))
            .unwrap_or_default();
        let killing = pod.map(events::killing).unwrap_or_default();
        let node = self.settings.node.clone();
        let span = info_span!("pod", pod = %label, %uid);
        let (client, runtime, uid_owned) = (
            self.client.clone(),
            Arc::clone(&self.runtime),
            uid.to_owned(),
        );
        let task = tokio::spawn(
            async move {
                if runtime.pod_status(&uid_owned).is_some() {
                    info!(grace_seconds = ?grace.map(|g| g.as_secs()), "stopping the pod");
                    if let Some((namespace, name)) = api.clone() {
                        let (client, uid) = (client.clone(), uid_owned.clone());
                        tokio::spawn(async move {
                            let pod = (namespace.as_str(), name.as_str(), uid.as_str());
                            events::record(&client, &node, pod, killing).await;
                        });
                    }
                    if let Err(err) = runtime.stop_pod(&uid_owned, grace).await {
                        warn!(error = %err, "stopping the pod failed");
                    }
                    if let Err(err) = runtime.remove_pod(&uid_owned).await {
                        warn!(error = %err, "removing the pod from the node failed");
                        return;
                    }
                    info!("pod removed from the node");
                }
                if let Some((namespace, name)) = api {
                    let pods: Api<Pod> = Api::namespaced(client, &namespace);
                    let params = DeleteParams {
                        grace_period_seconds: Some(0),
                        preconditions: Some(Preconditions {
                            uid: Some(uid_owned),
                            resource_version: None,
                        }),
                        ..DeleteParams::default()
                    };
                    match pods.delete(&name, &params).await {
                        Ok(_) => info!("pod deleted"),
                        Err(kube::Error::Api(status)) if status.code == 404 => {}
                        Err(err) => warn!(error = %err, "the final delete of the pod failed"),
                    }
                }
            }
            .instrument(span),
        );
        self.terminating.insert(uid.to_owned(), task);
    }
}

/// Whether the pod has run to its end (nothing of it should run any more).
fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether `next` says nothing `previous` does not, ignoring the fields the agent does
/// not own (the API server's QoS class, the scheduler's own conditions).
fn same_report(previous: Option<&PodStatus>, next: &PodStatus) -> bool {
    previous.is_some_and(|p| {
        p.phase == next.phase
            && p.message == next.message
            && p.pod_ip == next.pod_ip
            && p.host_ip == next.host_ip
            && p.conditions == next.conditions
            && p.container_statuses == next.container_statuses
            && p.init_container_statuses == next.init_container_statuses
            && p.start_time == next.start_time
    })
}

/// The pod's namespace (`default` when it names none).
fn namespace_of(pod: &Pod) -> String {
    pod.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

/// The merge patch writing `status` to the pod `uid`. Fields the agent leaves unset are
/// cleared (null), so a message that no longer applies goes; the uid makes the patch
/// fail on a newer pod of the same name.
fn status_patch(uid: &str, status: &PodStatus) -> Value {
    let mut value = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
    if let Some(fields) = value.as_object_mut() {
        for owned in ["message", "reason", "podIP", "podIPs"] {
            fields.entry(owned).or_insert(Value::Null);
        }
    }
    json!({"metadata": {"uid": uid}, "status": value})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_patch_clears_what_no_longer_applies_and_names_the_pod_uid() {
        let status = PodStatus {
            phase: Some("Running".into()),
            ..PodStatus::default()
        };
        let patch = status_patch("u-1", &status);
        assert_eq!(patch["metadata"]["uid"], "u-1");
        assert_eq!(patch["status"]["phase"], "Running");
        assert!(patch["status"]["message"].is_null());
        assert!(patch["status"].as_object().unwrap().contains_key("message"));
    }

    #[test]
    fn a_report_that_only_lacks_the_qos_class_is_not_written_again() {
        let mut server = PodStatus {
            phase: Some("Running".into()),
            qos_class: Some("BestEffort".into()),
            ..PodStatus::default()
        };
        let next = PodStatus {
            phase: Some("Running".into()),
            ..PodStatus::default()
        };
        assert!(same_report(Some(&server), &next));
        server.phase = Some("Pending".into());
        assert!(!same_report(Some(&server), &next));
        assert!(!same_report(None, &next));
    }
}
