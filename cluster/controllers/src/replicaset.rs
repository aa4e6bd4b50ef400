//! The ReplicaSet controller: each ReplicaSet keeps `spec.replicas` pods that match
//! its selector and name it as their controller. Missing pods are created from the
//! template (`<name>-<random>`, with the ReplicaSet as controlling owner), extra ones
//! deleted, least useful first (unscheduled, then pending, then not ready, then the
//! youngest), as kube-controller-manager does. Pods being deleted or finished do not
//! count. What was asked of the API but not seen in the cache yet is remembered (the
//! controller's "expectations"), so a lagging cache never makes it create twice.
//! Status (`replicas`, `fullyLabeledReplicas`, `readyReplicas`, `availableReplicas`
//! (ready for `minReadySeconds`), `observedGeneration`) is written when it changes.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;
use tracing::{info, warn};

use crate::expectations::Expectations;
use crate::pods::{self, active, ready};
use crate::selector;
use crate::{Caches, ControllerOptions};
use cairn_events::{self as events, Involved, Reporter};

const COMPONENT: &str = "replicaset-controller";
/// Pods created or deleted for one ReplicaSet in one pass at most.
const BURST: usize = 100;

/// Runs the ReplicaSet controller over `caches` (never returns; dropped to stop).
pub async fn run(client: kube::Client, caches: Caches, options: ControllerOptions) {
    let mut expectations: HashMap<String, Expectations> = HashMap::new();
    let mut tick = tokio::time::interval(options.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sets = caches.replica_sets.state();
        let pods = caches.pods.state();
        expectations.retain(|uid, _| sets.iter().any(|s| s.metadata.uid.as_deref() == Some(uid)));
        for set in sets {
            let Some(uid) = set.metadata.uid.clone() else {
                continue;
            };
            // Its pods: those it controls that its selector still picks.
            let owned: Vec<Arc<Pod>> = pods
                .iter()
                .filter(|p| controller_uid(p) == Some(uid.as_str()))
                .filter(|p| selector::matches(&set.spec.selector, p.labels()))
                .cloned()
                .collect();
            let expected = expectations.entry(uid.clone()).or_default();
            if set.metadata.deletion_timestamp.is_none()
                && expected.settled(&owned, |p| p.metadata.name.clone())
            {
                reconcile(&client, &options, &set, &owned, expected).await;
            }
            write_status(&client, &set, &owned).await;
        }
    }
}

/// The uid of the pod's controlling owner, if that is a ReplicaSet.
fn controller_uid(pod: &Pod) -> Option<&str> {
    pods::controller_uid(&pod.metadata, "ReplicaSet")
}

/// Creates or deletes pods so `set` has as many active pods as it wants.
async fn reconcile(
    client: &kube::Client,
    options: &ControllerOptions,
    set: &ReplicaSet,
    owned: &[Arc<Pod>],
    expected: &mut Expectations,
) {
    let namespace = set.namespace().unwrap_or_else(|| "default".into());
    let name = set.name_any();
    let wanted = set.spec.replicas.unwrap_or(1).max(0);
    let wanted = usize::try_from(wanted).unwrap_or(0);
    let mut active: Vec<&Arc<Pod>> = owned.iter().filter(|p| active(p)).collect();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let reporter = Reporter {
        component: COMPONENT,
        instance: &options.instance,
    };
    let involved = Involved {
        api_version: "apps/v1",
        kind: "ReplicaSet",
        namespace: Some(&namespace),
        name: &name,
        uid: set.metadata.uid.as_deref(),
    };
    if active.len() < wanted {
        let Some(template) = pod_from_template(set) else {
            return;
        };
        for _ in 0..(wanted - active.len()).min(BURST) {
            match pods.create(&PostParams::default(), &template).await {
                Ok(pod) => {
                    let pod_name = pod.name_any();
                    info!(replicaset = %format!("{namespace}/{name}"), pod = %pod_name, "created a pod");
                    expected.created(pod_name.clone());
                    events::record(
                        client,
                        reporter,
                        involved,
                        "Normal",
                        "SuccessfulCreate",
                        &format!("Created pod: {pod_name}"),
                    )
                    .await;
                }
                Err(err) => {
                    warn!(replicaset = %name, error = %err, "creating a pod failed");
                    events::record(
                        client,
                        reporter,
                        involved,
                        "Warning",
                        "FailedCreate",
                        &format!("Error creating: {err}"),
                    )
                    .await;
                    return;
                }
            }
        }
    } else if active.len() > wanted {
        active.sort_by_key(|p| deletion_rank(p));
        for pod in active.iter().take((active.len() - wanted).min(BURST)) {
            let pod_name = pod.name_any();
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: pod.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match pods.delete(&pod_name, &params).await {
                Ok(_) => {
                    info!(replicaset = %format!("{namespace}/{name}"), pod = %pod_name, "deleted a pod");
                    if let Some(uid) = pod.metadata.uid.clone() {
                        expected.deleted(uid);
                    }
                    events::record(
                        client,
                        reporter,
                        involved,
                        "Normal",
                        "SuccessfulDelete",
                        &format!("Deleted pod: {pod_name}"),
                    )
                    .await;
                }
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
                Err(err) => {
                    warn!(replicaset = %name, pod = %pod_name, error = %err, "deleting a pod failed")
                }
            }
        }
    }
}

/// Sort key of a pod to delete: lower goes first (kube-controller-manager's
/// `ActivePods` order: unscheduled, pending, not ready, younger).
fn deletion_rank(pod: &Pod) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    (
        u8::from(scheduled),
        match phase {
            Some("Pending") | None => 0,
            Some("Unknown") => 1,
            _ => 2,
        },
        u8::from(ready(pod)),
        std::cmp::Reverse(created),
    )
}

/// A new pod from `set`'s template, owned by it.
fn pod_from_template(set: &ReplicaSet) -> Option<Pod> {
    let template = set.spec.template.as_ref()?;
    let meta = template.metadata.clone().unwrap_or_default();
    Some(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", set.name_any())),
            namespace: set.namespace(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: set.name_any(),
                uid: set.metadata.uid.clone()?,
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    })
}

/// Writes `set`'s status from its pods when it differs from what the server holds.
async fn write_status(client: &kube::Client, set: &ReplicaSet, owned: &[Arc<Pod>]) {
    let template_labels = set
        .spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| active(p)).collect();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let fully_labeled = count(&|p: &Pod| {
        template_labels
            .iter()
            .all(|(k, v)| p.labels().get(k) == Some(v))
    });
    let ready_count = count(&ready);
    let now = k8s_openapi::jiff::Timestamp::now();
    let available_count = count(&|p: &Pod| pods::available(p, set.spec.min_ready_seconds, now));
    let current = set.status.clone().unwrap_or_default();
    let next = ReplicaSetStatus {
        replicas: count(&|_| true),
        fully_labeled_replicas: Some(fully_labeled),
        ready_replicas: Some(ready_count),
        available_replicas: Some(available_count),
        observed_generation: set.metadata.generation,
        conditions: current.conditions.clone(),
        ..current.clone()
    };
    if next == current {
        return;
    }
    let sets: Api<ReplicaSet> =
        Api::namespaced(client.clone(), &set.namespace().unwrap_or_default());
    let patch = json!({"status": next});
    if let Err(err) = sets
        .patch_status(
            &set.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        warn!(replicaset = %set.name_any(), error = %err, "writing the status failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(node: Option<&str>, phase: &str, ready: bool, created: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": created, "creationTimestamp": created},
            "spec": {"nodeName": node, "containers": [{"name": "a", "image": "x"}]},
            "status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    #[test]
    fn the_least_useful_pods_are_deleted_first() {
        let mut pods = [
            pod(Some("n1"), "Running", true, "2026-01-01T00:00:00Z"),
            pod(Some("n1"), "Running", true, "2026-01-02T00:00:00Z"),
            pod(Some("n1"), "Running", false, "2026-01-01T00:00:00Z"),
            pod(Some("n1"), "Pending", false, "2026-01-01T00:00:00Z"),
            pod(None, "Pending", false, "2026-01-01T00:00:00Z"),
        ];
        pods.sort_by_key(deletion_rank);
        let order: Vec<(Option<&str>, &str, bool, &str)> = pods
            .iter()
            .map(|p| {
                (
                    p.spec.as_ref().unwrap().node_name.as_deref(),
                    p.status.as_ref().unwrap().phase.as_deref().unwrap(),
                    ready(p),
                    p.metadata.name.as_deref().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            order,
            [
                (None, "Pending", false, "2026-01-01T00:00:00Z"),
                (Some("n1"), "Pending", false, "2026-01-01T00:00:00Z"),
                (Some("n1"), "Running", false, "2026-01-01T00:00:00Z"),
                (Some("n1"), "Running", true, "2026-01-02T00:00:00Z"),
                (Some("n1"), "Running", true, "2026-01-01T00:00:00Z"),
            ]
        );
    }

    #[test]
    fn a_template_pod_is_owned_by_its_replica_set() {
        let set: ReplicaSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-5d8", "namespace": "prod", "uid": "rs-1"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "a", "image": "x"}]}}},
        }))
        .unwrap();
        let pod = pod_from_template(&set).unwrap();
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("web-5d8-"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("prod"));
        assert_eq!(controller_uid(&pod), Some("rs-1"));
        assert_eq!(pod.metadata.labels.unwrap()["app"], "web");
    }
}
