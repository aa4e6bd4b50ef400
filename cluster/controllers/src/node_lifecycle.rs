//! Node lifecycle, as kube-controller-manager's node lifecycle controller and its
//! taint-based eviction do it:
//!
//! - a node whose Lease (or, without one, whose Ready heartbeat) has not changed for
//!   the grace period, as observed here (not by comparing clocks), gets its
//!   conditions set to `Unknown` (`NodeStatusUnknown`, "Kubelet stopped posting node
//!   status.");
//! - the `node.kubernetes.io/unreachable` (Ready Unknown) or `…/not-ready` (Ready
//!   False) taints, `NoSchedule` and `NoExecute`, follow the Ready condition, and go
//!   when it is True again;
//! - the pods of a node that is not ready are marked not ready (so Services stop
//!   sending them traffic), and pods on a `NoExecute`-tainted node are deleted once
//!   their toleration runs out. A pod without a toleration for the taint gets the
//!   appliance default ([`ControllerOptions::eviction_timeout`]), which Kubernetes'
//!   `DefaultTolerationSeconds` admission gives as 300 s.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use tracing::{info, warn};

use crate::pods::finished;
use crate::{Caches, ControllerOptions};
use cairn_events::{self as events, Involved, Reporter};

/// The taint of a node whose agent stopped reporting.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// The taint of a node whose agent reports it not ready.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
/// The conditions an agent reports, set to Unknown when it stops.
const AGENT_CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];
const COMPONENT: &str = "node-controller";

/// What was last seen of a node's liveness, and when it was seen to change.
struct Probe {
    signal: Option<String>,
    changed_at: Instant,
}

struct NodeLifecycle {
    client: kube::Client,
    caches: Caches,
    options: ControllerOptions,
    probes: HashMap<String, Probe>,
    /// When a NoExecute taint of ours was first seen on each node.
    tainted_since: HashMap<String, Instant>,
    /// Pods already marked not ready or deleted, by uid.
    handled: HashSet<String>,
}

/// Runs the node lifecycle controller over `caches` (never returns; dropped to stop).
pub async fn run(client: kube::Client, caches: Caches, options: ControllerOptions) {
    let mut controller = NodeLifecycle {
        client,
        caches,
        options,
        probes: HashMap::new(),
        tainted_since: HashMap::new(),
        handled: HashSet::new(),
    };
    let mut tick = tokio::time::interval(controller.options.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        controller.pass().await;
    }
}

impl NodeLifecycle {
    async fn pass(&mut self) {
        let now = Instant::now();
        let nodes = self.caches.nodes.state();
        self.probes
            .retain(|name, _| nodes.iter().any(|n| &n.name_any() == name));
        for node in &nodes {
            let name = node.name_any();
            let signal = self.liveness_signal(node);
            let probe = self.probes.entry(name.clone()).or_insert(Probe {
                signal: signal.clone(),
                changed_at: now,
            });
            if probe.signal != signal {
                probe.signal = signal;
                probe.changed_at = now;
            }
            let silent = now.duration_since(probe.changed_at) > self.options.node_grace;
            let ready = condition(node, "Ready");
            if silent && ready.as_deref() != Some("Unknown") {
                self.mark_unknown(node).await;
                // The next pass sees the written condition.
                continue;
            }
            let wanted = taint_for(ready.as_deref());
            self.keep_taints(node, wanted).await;
            let tainted = wanted.is_some();
            if tainted {
                let since = *self.tainted_since.entry(name.clone()).or_insert(now);
                self.handle_pods(&name, wanted.unwrap_or(NOT_READY_TAINT), since)
                    .await;
            } else {
                self.tainted_since.remove(&name);
            }
        }
        let pods: HashSet<String> = self
            .caches
            .pods
            .state()
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        self.handled.retain(|uid| pods.contains(uid));
    }

    /// What changes while the node's agent lives: its Lease's renew time, else its
    /// Ready condition's heartbeat.
    fn liveness_signal(&self, node: &Node) -> Option<String> {
        let lease = self.caches.leases.get(
            &kube::runtime::reflector::ObjectRef::new(&node.name_any()).within("kube-node-lease"),
        );
        if let Some(renewed) = lease
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.renew_time.as_ref())
        {
            return Some(renewed.0.to_string());
        }
        node.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| t.0.to_string())
    }

    /// Sets the agent's conditions to Unknown: nobody reports them any more.
    async fn mark_unknown(&self, node: &Node) {
        let name = node.name_any();
        let now = Time(Timestamp::now());
        let mut conditions: Vec<NodeCondition> = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        for kind in AGENT_CONDITIONS {
            if !conditions.iter().any(|c| c.type_ == kind) {
                conditions.push(NodeCondition {
                    type_: kind.to_owned(),
                    ..NodeCondition::default()
                });
            }
        }
        for condition in conditions
            .iter_mut()
            .filter(|c| AGENT_CONDITIONS.contains(&c.type_.as_str()))
        {
            condition.status = "Unknown".to_owned();
            condition.reason = Some("NodeStatusUnknown".to_owned());
            condition.message = Some("Kubelet stopped posting node status.".to_owned());
            condition.last_transition_time = Some(now.clone());
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        let patch = json!({"status": {"conditions": conditions}});
        match nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                info!(node = %name, "node stopped reporting; its conditions are Unknown");
                events::record(
                    &self.client,
                    self.reporter(),
                    node_ref(node),
                    "Normal",
                    "NodeNotReady",
                    &format!("Node {name} status is now: NodeNotReady"),
                )
                .await;
            }
            Err(err) => warn!(node = %name, error = %err, "marking the node unknown failed"),
        }
    }

    /// Makes the node's lifecycle taints `wanted` (both effects), keeping others.
    async fn keep_taints(&self, node: &Node, wanted: Option<&str>) {
        let current: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let ours = |t: &Taint| t.key == UNREACHABLE_TAINT || t.key == NOT_READY_TAINT;
        let mut next: Vec<Taint> = current.iter().filter(|t| !ours(t)).cloned().collect();
        if let Some(key) = wanted {
            for effect in ["NoSchedule", "NoExecute"] {
                let kept = current
                    .iter()
                    .find(|t| t.key == key && t.effect == effect)
                    .cloned();
                next.push(kept.unwrap_or_else(|| Taint {
                    key: key.to_owned(),
                    effect: effect.to_owned(),
                    time_added: (effect == "NoExecute").then(|| Time(Timestamp::now())),
                    value: None,
                }));
            }
        }
        if next == current {
            return;
        }
        let name = node.name_any();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let patch = json!({"spec": {"taints": next}});
        match nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => info!(node = %name, taint = ?wanted, "node lifecycle taints changed"),
            Err(err) => warn!(node = %name, error = %err, "changing the node's taints failed"),
        }
    }

    /// Marks the node's pods not ready, and deletes those whose toleration of `taint`
    /// (on the node since `since`) ran out.
    async fn handle_pods(&mut self, node: &str, taint: &str, since: Instant) {
        let pods: Vec<_> = self
            .caches
            .pods
            .state()
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            .filter(|p| p.metadata.deletion_timestamp.is_none() && !finished(p))
            .collect();
        for pod in pods {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            let tolerated =
                toleration(&pod, taint).map_or(Some(self.options.eviction_timeout), |t| {
                    t.toleration_seconds
                        .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
                });
            let due = tolerated.is_some_and(|for_| since.elapsed() >= for_);
            if due {
                self.evict(&pod, node, taint).await;
            } else if !self.handled.contains(&uid) && condition_of(&pod, "Ready") == Some("True") {
                self.mark_pod_not_ready(&pod).await;
                self.handled.insert(uid);
            }
        }
    }

    async fn mark_pod_not_ready(&self, pod: &Pod) {
        let mut conditions = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        for condition in conditions.iter_mut().filter(|c| c.type_ == "Ready") {
            condition.status = "False".to_owned();
            condition.reason = Some("NodeNotReady".to_owned());
            condition.message = None;
            condition.last_transition_time = Some(Time(Timestamp::now()));
        }
        let pods: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let patch = json!({"metadata": {"uid": pod.metadata.uid},
                           "status": {"conditions": conditions}});
        if let Err(err) = pods
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            warn!(pod = %pod.name_any(), error = %err, "marking the pod not ready failed");
        }
    }

    async fn evict(&mut self, pod: &Pod, node: &str, taint: &str) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let params = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(&name, &params).await {
            Ok(_) => {
                info!(pod = %format!("{namespace}/{name}"), %node, %taint, "pod evicted from a node that is not ready");
                self.handled.insert(uid.clone());
                events::record(
                    &self.client,
                    Reporter {
                        component: "taint-eviction-controller",
                        instance: &self.options.instance,
                    },
                    Involved {
                        api_version: "v1",
                        kind: "Pod",
                        namespace: Some(&namespace),
                        name: &name,
                        uid: Some(&uid),
                    },
                    "Normal",
                    "TaintManagerEviction",
                    &format!("Marking for deletion Pod {namespace}/{name}"),
                )
                .await;
            }
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(err) => warn!(pod = %name, error = %err, "evicting the pod failed"),
        }
    }

    fn reporter(&self) -> Reporter<'_> {
        Reporter {
            component: COMPONENT,
            instance: &self.options.instance,
        }
    }
}

/// The lifecycle taint a node with this Ready status carries.
fn taint_for(ready: Option<&str>) -> Option<&'static str> {
    match ready {
        Some("True") => None,
        Some("False") => Some(NOT_READY_TAINT),
        // Unknown, or a node that never reported.
        _ => Some(UNREACHABLE_TAINT),
    }
}

/// The pod's toleration of the NoExecute `taint`, if it has one.
fn toleration<'a>(pod: &'a Pod, taint: &str) -> Option<&'a Toleration> {
    pod.spec.as_ref()?.tolerations.as_ref()?.iter().find(|t| {
        let key = t.key.as_deref().unwrap_or("");
        let exists = t.operator.as_deref() == Some("Exists");
        let key_ok = key == taint || (key.is_empty() && exists);
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == "NoExecute");
        key_ok && effect_ok
    })
}

fn condition(node: &Node, kind: &str) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

fn condition_of<'a>(pod: &'a Pod, kind: &str) -> Option<&'a str> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.as_str())
}

fn node_ref(node: &Node) -> Involved<'_> {
    Involved {
        api_version: "v1",
        kind: "Node",
        namespace: None,
        name: node.metadata.name.as_deref().unwrap_or_default(),
        uid: node.metadata.uid.as_deref(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(tolerations: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "image": "x"}], "tolerations": tolerations},
        }))
        .unwrap()
    }

    #[test]
    fn tolerations_match_by_key_or_by_an_empty_key_that_exists() {
        let exact = pod(
            serde_json::json!([{"key": UNREACHABLE_TAINT, "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 30}]),
        );
        assert_eq!(
            toleration(&exact, UNREACHABLE_TAINT)
                .unwrap()
                .toleration_seconds,
            Some(30)
        );
        assert!(toleration(&exact, NOT_READY_TAINT).is_none());
        let everything = pod(serde_json::json!([{"operator": "Exists"}]));
        assert!(toleration(&everything, NOT_READY_TAINT).is_some());
        let schedule_only = pod(serde_json::json!([{"key": UNREACHABLE_TAINT,
            "operator": "Exists", "effect": "NoSchedule"}]));
        assert!(toleration(&schedule_only, UNREACHABLE_TAINT).is_none());
    }

    #[test]
    fn the_taint_follows_the_ready_condition() {
        assert_eq!(taint_for(Some("True")), None);
        assert_eq!(taint_for(Some("False")), Some(NOT_READY_TAINT));
        assert_eq!(taint_for(Some("Unknown")), Some(UNREACHABLE_TAINT));
        assert_eq!(taint_for(None), Some(UNREACHABLE_TAINT));
    }
}
