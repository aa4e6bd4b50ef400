//! The scheduler as an API client: it follows Nodes and Pods through watches, keeps
//! the [`Cluster`] picture current, schedules each pod that names this scheduler and
//! has no node, writes the decision through the `binding` subresource, and records
//! `Scheduled` / `FailedScheduling` events and the `PodScheduled` condition as
//! kube-scheduler does.
//!
//! Pods that fit nowhere wait until the cluster changes (a node added or changed, a
//! pod gone) and are then tried again; a decision is counted on its node (assumed)
//! from the moment it is made, so the next pod sees it before the binding lands.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_events::{Involved, Reporter};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::Cluster;
use crate::node::NodeInfo;
use crate::pod::PodInfo;

/// The scheduler name pods get when they name none.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// How often waiting pods are looked at again even if nothing seemed to change.
const RETRY_ANYWAY: Duration = Duration::from_secs(30);

/// How a scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// The `spec.schedulerName` it serves.
    pub name: String,
    /// Who it is in events (`reportingInstance`), e.g. the node's name.
    pub instance: String,
    /// Bindings written at once.
    pub concurrent_bindings: usize,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            name: DEFAULT_SCHEDULER.into(),
            instance: "cairn".into(),
            concurrent_bindings: 16,
        }
    }
}

/// What came of writing one binding.
struct Bound {
    uid: String,
    node: String,
    result: Result<(), kube::Error>,
}

/// The scheduler's state between events.
struct Scheduler {
    client: kube::Client,
    options: Arc<SchedulerOptions>,
    cluster: Cluster,
    /// Unbound pods of this scheduler, by uid (the latest object seen).
    unbound: HashMap<String, Pod>,
    /// Pods to try, in order.
    queue: VecDeque<String>,
    /// Pods that fit nowhere, with the message they were last reported with.
    waiting: HashMap<String, String>,
    /// Pods whose binding is being written.
    binding: HashSet<String>,
    /// Something changed that may let waiting pods fit.
    changed: bool,
    last_retry: Instant,
    /// Objects seen during a relist, to drop those that vanished meanwhile.
    relisted_nodes: Option<HashSet<String>>,
    relisted_pods: Option<HashSet<String>>,
    nodes_synced: bool,
    pods_synced: bool,
    permits: Arc<Semaphore>,
    bound_tx: mpsc::UnboundedSender<Bound>,
}

/// Runs the scheduler with `client` until `stop` fires. Watches retry with backoff
/// when the API server is away, so this returns only when stopped.
pub async fn run(client: kube::Client, options: SchedulerOptions, stop: CancellationToken) {
    let nodes = watcher::watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff();
    let pods = watcher::watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff();
    let (bound_tx, mut bound_rx) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(options.concurrent_bindings.max(1)));
    let mut scheduler = Scheduler {
        client,
        options: Arc::new(options),
        cluster: Cluster::new(),
        unbound: HashMap::new(),
        queue: VecDeque::new(),
        waiting: HashMap::new(),
        binding: HashSet::new(),
        changed: false,
        last_retry: Instant::now(),
        relisted_nodes: None,
        relisted_pods: None,
        nodes_synced: false,
        pods_synced: false,
        permits,
        bound_tx,
    };
    info!(name = %scheduler.options.name, "scheduler starts");
    scheduler
        .serve(Box::pin(nodes), Box::pin(pods), &mut bound_rx, stop)
        .await;
    info!("scheduler stops");
}

type Watch<K> = std::pin::Pin<Box<dyn Stream<Item = Result<Event<K>, watcher::Error>> + Send>>;

impl Scheduler {
    async fn serve(
        &mut self,
        mut nodes: Watch<Node>,
        mut pods: Watch<Pod>,
        bound_rx: &mut mpsc::UnboundedReceiver<Bound>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                Some(event) = nodes.next() => match event {
                    Ok(event) => self.on_node(event),
                    Err(err) => warn!(error = %err, "watching nodes"),
                },
                Some(event) = pods.next() => match event {
                    Ok(event) => self.on_pod(event),
                    Err(err) => warn!(error = %err, "watching pods"),
                },
                Some(bound) = bound_rx.recv() => self.on_bound(bound),
                _ = tick.tick() => self.retry_waiting(),
            }
            if self.nodes_synced && self.pods_synced {
                self.schedule_queued();
            }
        }
    }

    fn on_node(&mut self, event: Event<Node>) {
        match event {
            Event::Init => self.relisted_nodes = Some(HashSet::new()),
            Event::InitApply(node) | Event::Apply(node) => {
                let info = NodeInfo::from_node(&node);
                if let Some(seen) = &mut self.relisted_nodes {
                    seen.insert(info.name.clone());
                }
                self.cluster.upsert_node(info);
                self.changed = true;
            }
            Event::Delete(node) => {
                if let Some(name) = node.metadata.name.as_deref() {
                    self.cluster.remove_node(name);
                }
            }
            Event::InitDone => {
                if let Some(seen) = self.relisted_nodes.take() {
                    let known: Vec<String> = self.cluster.nodes().map(|n| n.name.clone()).collect();
                    for name in known {
                        if !seen.contains(&name) {
                            self.cluster.remove_node(&name);
                        }
                    }
                }
                self.nodes_synced = true;
                self.changed = true;
            }
        }
    }

    fn on_pod(&mut self, event: Event<Pod>) {
        match event {
            Event::Init => self.relisted_pods = Some(HashSet::new()),
            Event::InitApply(pod) | Event::Apply(pod) => {
                if let Some(seen) = &mut self.relisted_pods
                    && let Some(uid) = pod.metadata.uid.as_deref()
                {
                    seen.insert(uid.to_owned());
                }
                self.pod_changed(pod);
            }
            Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    self.forget_pod(uid);
                }
            }
            Event::InitDone => {
                if let Some(seen) = self.relisted_pods.take() {
                    let gone: Vec<String> = self
                        .cluster
                        .placed_uids()
                        .chain(self.unbound.keys().cloned())
                        .filter(|uid| !seen.contains(uid))
                        .collect();
                    for uid in gone {
                        self.forget_pod(&uid);
                    }
                }
                self.pods_synced = true;
            }
        }
    }

    fn forget_pod(&mut self, uid: &str) {
        if self.cluster.is_placed(uid) {
            self.changed = true;
        }
        self.cluster.remove_pod(uid);
        self.unbound.remove(uid);
        self.waiting.remove(uid);
    }

    fn pod_changed(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        let spec = pod.spec.as_ref();
        let node = spec
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty());
        if finished {
            // A finished pod holds no resources.
            self.forget_pod(&uid);
            return;
        }
        if let Some(node) = node {
            let node = node.to_owned();
            self.unbound.remove(&uid);
            self.waiting.remove(&uid);
            match PodInfo::from_pod(&pod) {
                Ok(info) => self.cluster.place(info, &node),
                Err(reason) => warn!(pod = %uid, %reason, "a bound pod's requests do not parse"),
            }
            return;
        }
        let ours = spec
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or(DEFAULT_SCHEDULER)
            == self.options.name;
        if !ours || pod.metadata.deletion_timestamp.is_some() {
            self.forget_pod(&uid);
            return;
        }
        let previous = self.unbound.insert(uid.clone(), pod);
        match previous {
            None => self.queue.push_back(uid),
            Some(previous) => {
                // Only a change to what decides placement sends a waiting pod back;
                // the condition this scheduler writes does not.
                let now = &self.unbound[&uid];
                if self.waiting.contains_key(&uid)
                    && (previous.spec != now.spec
                        || previous.metadata.labels != now.metadata.labels)
                {
                    self.waiting.remove(&uid);
                    self.queue.push_back(uid);
                }
            }
        }
    }

    fn on_bound(&mut self, bound: Bound) {
        self.binding.remove(&bound.uid);
        let Err(err) = bound.result else {
            debug!(pod = %bound.uid, node = %bound.node, "bound");
            return;
        };
        // The watch may already have shown where the pod went; if not, the assumed
        // placement is undone.
        if !self.unbound.contains_key(&bound.uid) {
            return;
        }
        self.cluster.remove_pod(&bound.uid);
        match &err {
            kube::Error::Api(status) if status.code == 404 => {
                self.unbound.remove(&bound.uid);
            }
            _ => {
                warn!(pod = %bound.uid, node = %bound.node, error = %err, "binding failed; will retry");
                self.waiting
                    .insert(bound.uid.clone(), format!("binding failed: {err}"));
                self.changed = true;
            }
        }
    }

    fn retry_waiting(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        if !self.changed && self.last_retry.elapsed() < RETRY_ANYWAY {
            return;
        }
        self.changed = false;
        self.last_retry = Instant::now();
        let mut uids: Vec<String> = self.waiting.keys().cloned().collect();
        uids.sort();
        self.queue.extend(uids);
    }

    fn schedule_queued(&mut self) {
        while let Some(uid) = self.queue.pop_front() {
            if self.binding.contains(&uid) {
                continue;
            }
            let Some(pod) = self.unbound.get(&uid) else {
                continue;
            };
            let info = match PodInfo::from_pod(pod) {
                Ok(info) => info,
                Err(reason) => {
                    let message = format!("the pod's resources are malformed: {reason}");
                    self.report_unschedulable(&uid, message);
                    continue;
                }
            };
            match self.cluster.schedule(&info) {
                Ok(node) => {
                    let was_waiting = self.waiting.remove(&uid).is_some();
                    self.cluster.place(info, &node);
                    self.binding.insert(uid.clone());
                    self.spawn_binding(uid, node, was_waiting);
                }
                Err(unschedulable) => self.report_unschedulable(&uid, unschedulable.to_string()),
            }
        }
    }

    fn report_unschedulable(&mut self, uid: &str, message: String) {
        let repeated = self.waiting.get(uid) == Some(&message);
        self.waiting.insert(uid.to_owned(), message.clone());
        if repeated {
            return;
        }
        let Some(pod) = self.unbound.get(uid) else {
            return;
        };
        info!(pod = %pod_name(pod), %message, "unschedulable");
        let client = self.client.clone();
        let options = Arc::clone(&self.options);
        let pod = pod.clone();
        tokio::spawn(async move {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
            let condition = json!({"status": {"conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message, "lastTransitionTime": Timestamp::now().to_string(),
            }]}});
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            if let Err(err) = pods
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&condition))
                .await
            {
                debug!(pod = %name, error = %err, "could not set PodScheduled");
            }
            record_event(
                &client,
                &options,
                &pod,
                "Warning",
                "FailedScheduling",
                &message,
            )
            .await;
        });
    }

    fn spawn_binding(&self, uid: String, node: String, was_waiting: bool) {
        let Some(pod) = self.unbound.get(&uid).cloned() else {
            return;
        };
        let client = self.client.clone();
        let options = Arc::clone(&self.options);
        let permits = Arc::clone(&self.permits);
        let tx = self.bound_tx.clone();
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let result = bind(&client, &pod, &node).await;
            if result.is_ok() {
                let message = format!("Successfully assigned {} to {node}", pod_name(&pod));
                if was_waiting {
                    info!(pod = %pod_name(&pod), %node, "scheduled after waiting");
                }
                record_event(&client, &options, &pod, "Normal", "Scheduled", &message).await;
            }
            let _ = tx.send(Bound { uid, node, result });
        });
    }
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Writes the binding of `pod` to `node`.
async fn bind(client: &kube::Client, pod: &Pod, node: &str) -> Result<(), kube::Error> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": namespace, "uid": pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    pods.create_subresource::<Value, Value>("binding", name, &PostParams::default(), &binding)
        .await
        .map(drop)
}

/// Records an event about `pod` (failures to record are logged, not fatal).
async fn record_event(
    client: &kube::Client,
    options: &SchedulerOptions,
    pod: &Pod,
    kind: &str,
    reason: &str,
    message: &str,
) {
    let reporter = Reporter {
        component: &options.name,
        instance: &options.instance,
    };
    let involved = Involved {
        api_version: "v1",
        kind: "Pod",
        namespace: pod.metadata.namespace.as_deref(),
        name: pod.metadata.name.as_deref().unwrap_or_default(),
        uid: pod.metadata.uid.as_deref(),
    };
    cairn_events::record(client, reporter, involved, kind, reason, message).await;
}
