//! The DaemonSet controller: one pod of each DaemonSet on every node it should run
//! on, as kube-controller-manager does.
//!
//! - A node should run the pod when it matches the template's `nodeSelector` and
//!   required node affinity and its `NoSchedule`/`NoExecute` taints are tolerated (the
//!   template's tolerations plus those Kubernetes adds to daemon pods: not-ready and
//!   unreachable `NoExecute`, the pressure and unschedulable `NoSchedule` taints). A
//!   pod already there stays while only `NoSchedule` taints are not tolerated.
//! - A pod is created per missing node, pinned to it by node affinity
//!   (`matchFields metadata.name`), so the scheduler still checks resources and ports;
//!   extra pods on a node, failed pods and pods on nodes that should not run one are
//!   deleted.
//! - `RollingUpdate` (maxUnavailable, default 1) deletes pods of an older template
//!   (`controller-revision-hash` label) while no more than maxUnavailable nodes lack an
//!   available pod; the replacements come from the step above. `OnDelete` replaces a
//!   pod only when someone deletes it.
//! - Status: desired/current/updated/misscheduled counts, ready, available,
//!   unavailable, observedGeneration (what `kubectl rollout status ds` reads).
//!
//! Not implemented: maxSurge, ControllerRevisions (so no `kubectl rollout history|undo`
//! for DaemonSets), minReadySeconds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cairn_scheduler::filter::{term_matches, tolerates};
use cairn_scheduler::node::NodeInfo;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;
use tracing::{info, warn};

use crate::deployment::template_hash;
use crate::expectations::Expectations;
use crate::pods::{self, finished, ready};
use crate::{Caches, ControllerOptions};
use cairn_events::{self as events, Involved, Reporter};

/// The label naming the template revision a daemon pod was made from.
pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";
const COMPONENT: &str = "daemonset-controller";
/// Runs the DaemonSet controller over `caches` (never returns; dropped to stop).
pub async fn run(client: kube::Client, caches: Caches, options: ControllerOptions) {
    let mut expectations: HashMap<String, Expectations> = HashMap::new();
    let mut tick = tokio::time::interval(options.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sets = caches.daemon_sets.state();
        let pods = caches.pods.state();
        let nodes = caches.nodes.state();
        expectations.retain(|uid, _| sets.iter().any(|s| s.metadata.uid.as_deref() == Some(uid)));
        for set in sets {
            let Some(uid) = set.metadata.uid.clone() else {
                continue;
            };
            if set.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let owned: Vec<Arc<Pod>> = pods
                .iter()
                .filter(|p| controller_uid(p) == Some(uid.as_str()))
                .cloned()
                .collect();
            let expected = expectations.entry(uid).or_default();
            let mut sync = Sync {
                client: &client,
                options: &options,
                set: &set,
                hash: template_hash(&set.spec.template, None),
            };
            if expected.settled(&owned, pod_node) {
                sync.reconcile(&nodes, &owned, expected).await;
            }
            sync.write_status(&nodes, &owned).await;
        }
    }
}

fn controller_uid(pod: &Pod) -> Option<&str> {
    pods::controller_uid(&pod.metadata, "DaemonSet")
}

/// The node a daemon pod is for: where it is bound, else where its affinity pins it.
fn pod_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = spec.node_name.clone().filter(|n| !n.is_empty()) {
        return Some(node);
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first().cloned())
}

/// The tolerations Kubernetes gives every daemon pod.
pub fn default_tolerations(host_network: bool) -> Vec<Toleration> {
    let toleration = |key: &str, effect: &str| Toleration {
        key: Some(key.to_owned()),
        operator: Some("Exists".to_owned()),
        effect: Some(effect.to_owned()),
        ..Toleration::default()
    };
    let mut all = vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        all.push(toleration(
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        ));
    }
    all
}

/// Where a DaemonSet stands on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A pod should run there.
    Run,
    /// No new pod, but one already there may stay (only NoSchedule taints not tolerated).
    KeepOnly,
    /// No pod belongs there.
    None,
}

/// Whether `set`'s pods belong on `node`.
pub fn placement(set: &DaemonSet, node: &Node) -> Placement {
    let pod_spec = set.spec.template.spec.clone().unwrap_or_default();
    let info = NodeInfo::from_node(node);
    let selected = pod_spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| info.labels.get(k) == Some(v));
    let affine = pod_spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|s| s.node_selector_terms.iter().any(|t| term_matches(t, &info)));
    if !selected || !affine {
        return Placement::None;
    }
    let mut tolerations = pod_spec.tolerations.clone().unwrap_or_default();
    tolerations.extend(default_tolerations(pod_spec.host_network == Some(true)));
    let untolerated = |effect: &str| {
        info.taints
            .iter()
            .filter(|t| t.effect == effect)
            .any(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
    };
    if untolerated("NoExecute") {
        Placement::None
    } else if untolerated("NoSchedule") {
        Placement::KeepOnly
    } else {
        Placement::Run
    }
}

/// A pod of `set` (template revision `hash`) for `node`, owned by the DaemonSet.
pub fn daemon_pod(set: &DaemonSet, hash: &str, node: &str) -> Option<Pod> {
    let template = &set.spec.template;
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(REVISION_HASH_LABEL.to_owned(), hash.to_owned());
    let mut pod_spec = template.spec.clone()?;
    let pinned = NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.to_owned()]),
            }]),
            ..NodeSelectorTerm::default()
        }],
    };
    let affinity = pod_spec.affinity.get_or_insert_with(Affinity::default);
    affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default)
        .required_during_scheduling_ignored_during_execution = Some(pinned);
    let tolerations = pod_spec.tolerations.get_or_insert_with(Vec::new);
    for toleration in default_tolerations(pod_spec.host_network == Some(true)) {
        if !tolerations.contains(&toleration) {
            tolerations.push(toleration);
        }
    }
    Some(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", set.name_any())),
            namespace: set.namespace(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "DaemonSet".into(),
                name: set.name_any(),
                uid: set.metadata.uid.clone()?,
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(pod_spec),
        status: None,
    })
}

struct Sync<'a> {
    client: &'a kube::Client,
    options: &'a ControllerOptions,
    set: &'a DaemonSet,
    hash: String,
}

impl Sync<'_> {
    fn namespace(&self) -> String {
        self.set.namespace().unwrap_or_else(|| "default".into())
    }

    fn involved(&self) -> Involved<'_> {
        Involved {
            api_version: "apps/v1",
            kind: "DaemonSet",
            namespace: self.set.metadata.namespace.as_deref(),
            name: self.set.metadata.name.as_deref().unwrap_or_default(),
            uid: self.set.metadata.uid.as_deref(),
        }
    }

    async fn event(&self, kind: &str, reason: &str, message: &str) {
        let reporter = Reporter {
            component: COMPONENT,
            instance: &self.options.instance,
        };
        events::record(
            self.client,
            reporter,
            self.involved(),
            kind,
            reason,
            message,
        )
        .await;
    }

    fn updated(&self, pod: &Pod) -> bool {
        pod.labels().get(REVISION_HASH_LABEL) == Some(&self.hash)
    }

    async fn reconcile(
        &mut self,
        nodes: &[Arc<Node>],
        owned: &[Arc<Pod>],
        expected: &mut Expectations,
    ) {
        let mut by_node: BTreeMap<String, Vec<&Arc<Pod>>> = BTreeMap::new();
        let mut doomed: Vec<&Arc<Pod>> = Vec::new();
        // A node's replacement waits until the pod it replaces has stopped.
        let stopping: Vec<String> = owned
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
            .filter_map(|p| pod_node(p))
            .collect();
        for pod in owned
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
        {
            match pod_node(pod) {
                Some(node) => by_node.entry(node).or_default().push(pod),
                None => doomed.push(pod),
            }
        }
        let mut missing: Vec<String> = Vec::new();
        let now = k8s_openapi::jiff::Timestamp::now();
        // Nodes without an available pod, for the rolling update's budget.
        let mut unavailable = 0;
        let mut desired = 0;
        let mut old_pods: Vec<&Arc<Pod>> = Vec::new();
        for node in nodes {
            let name = node.name_any();
            let pods = by_node.remove(&name).unwrap_or_default();
            let (failed, mut live): (Vec<&Arc<Pod>>, Vec<&Arc<Pod>>) =
                pods.into_iter().partition(|p| finished(p));
            doomed.extend(failed);
            match placement(self.set, node) {
                Placement::None => {
                    doomed.extend(live);
                    continue;
                }
                Placement::KeepOnly if live.is_empty() => continue,
                Placement::Run if live.is_empty() => {
                    desired += 1;
                    unavailable += 1;
                    if !stopping.contains(&name) {
                        missing.push(name);
                    }
                    continue;
                }
                _ => desired += 1,
            }
            // One pod per node: the updated, then ready, then oldest stays.
            live.sort_by_key(|p| {
                (
                    !self.updated(p),
                    !ready(p),
                    p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                )
            });
            let keep = live.remove(0);
            doomed.extend(live);
            if !crate::pods::available(keep, self.set.spec.min_ready_seconds, now) {
                unavailable += 1;
            }
            if !self.updated(keep) {
                old_pods.push(keep);
            }
        }
        // Pods on nodes that no longer exist.
        doomed.extend(by_node.into_values().flatten());

        let rolling = self
            .set
            .spec
            .update_strategy
            .as_ref()
            .is_none_or(|s| s.type_.as_deref() != Some("OnDelete"));
        if rolling {
            let max_unavailable = self.max_unavailable(desired);
            // Old pods that are not ready go at once; ready ones within the budget.
            let (old_unready, old_ready): (Vec<&Arc<Pod>>, Vec<&Arc<Pod>>) =
                old_pods.into_iter().partition(|p| !ready(p));
            doomed.extend(old_unready);
            let budget = usize::try_from((max_unavailable - unavailable).max(0)).unwrap_or(0);
            doomed.extend(old_ready.into_iter().take(budget));
        }

        for node in missing {
            if let Some(pod) = daemon_pod(self.set, &self.hash, &node) {
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace());
                match pods.create(&PostParams::default(), &pod).await {
                    Ok(pod) => {
                        info!(daemonset = %self.set.name_any(), %node, pod = %pod.name_any(), "created a daemon pod");
                        expected.created(node);
                        self.event(
                            "Normal",
                            "SuccessfulCreate",
                            &format!("Created pod: {}", pod.name_any()),
                        )
                        .await;
                    }
                    Err(err) => {
                        warn!(daemonset = %self.set.name_any(), %node, error = %err, "creating a daemon pod failed");
                        self.event("Warning", "FailedCreate", &format!("Error creating: {err}"))
                            .await;
                    }
                }
            }
        }
        for pod in doomed {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace());
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: pod.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match pods.delete(&pod.name_any(), &params).await {
                Ok(_) => {
                    info!(daemonset = %self.set.name_any(), pod = %pod.name_any(), "deleted a daemon pod");
                    if let Some(uid) = pod.metadata.uid.clone() {
                        expected.deleted(uid);
                    }
                    self.event(
                        "Normal",
                        "SuccessfulDelete",
                        &format!("Deleted pod: {}", pod.name_any()),
                    )
                    .await;
                }
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
                Err(err) => {
                    warn!(pod = %pod.name_any(), error = %err, "deleting a daemon pod failed")
                }
            }
        }
    }

    fn max_unavailable(&self, desired: i32) -> i32 {
        let value = self
            .set
            .spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.max_unavailable.clone())
            .unwrap_or(IntOrString::Int(1));
        let count = match value {
            IntOrString::Int(n) => n,
            IntOrString::String(text) => {
                let percent: i64 = text.trim_end_matches('%').parse().unwrap_or(0);
                // Rounded up, as Kubernetes does for daemon sets.
                i32::try_from((i64::from(desired) * percent + 99) / 100).unwrap_or(i32::MAX)
            }
        };
        count.max(1)
    }

    async fn write_status(&self, nodes: &[Arc<Node>], owned: &[Arc<Pod>]) {
        let mut desired = 0;
        let mut current = 0;
        let mut misscheduled = 0;
        let mut ready_count = 0;
        let mut available = 0;
        let mut updated = 0;
        let now = k8s_openapi::jiff::Timestamp::now();
        for node in nodes {
            let name = node.name_any();
            let pods: Vec<&Arc<Pod>> = owned
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none() && !finished(p))
                .filter(|p| pod_node(p).as_deref() == Some(name.as_str()))
                .collect();
            let placement = placement(self.set, node);
            let wanted = placement == Placement::Run
                || (placement == Placement::KeepOnly && !pods.is_empty());
            if wanted {
                desired += 1;
                if !pods.is_empty() {
                    current += 1;
                }
                if pods.iter().any(|p| ready(p)) {
                    ready_count += 1;
                }
                if pods
                    .iter()
                    .any(|p| crate::pods::available(p, self.set.spec.min_ready_seconds, now))
                {
                    available += 1;
                }
                if pods.iter().any(|p| self.updated(p)) {
                    updated += 1;
                }
            } else if !pods.is_empty() {
                misscheduled += 1;
            }
        }
        let current_status = self.set.status.clone().unwrap_or_default();
        let next = DaemonSetStatus {
            desired_number_scheduled: desired,
            current_number_scheduled: current,
            number_misscheduled: misscheduled,
            number_ready: ready_count,
            number_available: Some(available),
            number_unavailable: Some(desired - available),
            updated_number_scheduled: Some(updated),
            observed_generation: self.set.metadata.generation,
            ..current_status.clone()
        };
        if next == current_status {
            return;
        }
        let sets: Api<DaemonSet> = Api::namespaced(self.client.clone(), &self.namespace());
        let patch = json!({"status": next});
        if let Err(err) = sets
            .patch_status(
                &self.set.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            warn!(daemonset = %self.set.name_any(), error = %err, "writing the status failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": labels},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap()
    }

    fn set(pod_spec: serde_json::Value) -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "kube-system", "uid": "ds-1"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                "template": {"metadata": {"labels": {"app": "agent"}}, "spec": pod_spec}},
        }))
        .unwrap()
    }

    #[test]
    fn placement_follows_selectors_and_taints() {
        let plain = set(json!({"containers": [{"name": "a", "image": "x"}]}));
        assert_eq!(
            placement(&plain, &node(json!({}), json!([]))),
            Placement::Run
        );
        let picky = set(
            json!({"nodeSelector": {"disk": "ssd"}, "containers": [{"name": "a", "image": "x"}]}),
        );
        assert_eq!(
            placement(&picky, &node(json!({}), json!([]))),
            Placement::None
        );
        assert_eq!(
            placement(&picky, &node(json!({"disk": "ssd"}), json!([]))),
            Placement::Run
        );
        let no_schedule = json!([{"key": "dedicated", "effect": "NoSchedule"}]);
        assert_eq!(
            placement(&plain, &node(json!({}), no_schedule)),
            Placement::KeepOnly
        );
        let no_execute = json!([{"key": "dedicated", "effect": "NoExecute"}]);
        assert_eq!(
            placement(&plain, &node(json!({}), no_execute.clone())),
            Placement::None
        );
        let tolerant = set(
            json!({"tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "containers": [{"name": "a", "image": "x"}]}),
        );
        assert_eq!(
            placement(&tolerant, &node(json!({}), no_execute)),
            Placement::Run
        );
        // Daemon pods tolerate an unschedulable node.
        let cordoned = serde_json::from_value::<Node>(json!({
            "metadata": {"name": "n1"}, "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        assert_eq!(placement(&plain, &cordoned), Placement::Run);
    }

    #[test]
    fn a_daemon_pod_is_pinned_to_its_node_and_tolerates_the_defaults() {
        let ds = set(json!({"containers": [{"name": "a", "image": "x"}]}));
        let pod = daemon_pod(&ds, "abc", "n7").unwrap();
        assert_eq!(pod_node(&pod).as_deref(), Some("n7"));
        assert_eq!(controller_uid(&pod), Some("ds-1"));
        assert_eq!(pod.labels()[REVISION_HASH_LABEL], "abc");
        let tolerations = pod.spec.unwrap().tolerations.unwrap();
        assert!(
            tolerations
                .iter()
                .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unreachable"))
        );
    }
}
