//! What the scheduler knows of a node: what it offers, its labels and taints, whether
//! it takes pods, and what the pods already placed on it use.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, Taint};

use crate::pod::PodInfo;
use crate::resources::Resources;

/// The taint kube's node lifecycle puts on a node that is not Ready.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
/// The taint kube's node lifecycle puts on a node whose agent stopped reporting.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// The taint that stands for `spec.unschedulable`.
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// A node as the scheduler sees it.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `status.allocatable`.
    pub allocatable: Resources,
    /// `spec.taints`, with the lifecycle taints for `spec.unschedulable` and a Ready
    /// condition that is not True added when the node lacks them.
    pub taints: Vec<Taint>,
    /// What the pods placed on it use.
    pub usage: Usage,
}

/// What the pods placed on a node (bound, or assumed while their binding is written)
/// use of it.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// Their requests together.
    pub requested: Resources,
    /// The host ports they take: (protocol, host IP, port).
    pub host_ports: Vec<(String, String, i32)>,
    /// How many of them each owner (controller uid) has.
    pub owners: HashMap<String, u32>,
}

impl Usage {
    /// Counts `pod` in.
    pub fn add(&mut self, pod: &PodInfo) {
        self.requested.add(&pod.requests);
        self.host_ports.extend(pod.host_ports.iter().cloned());
        if let Some(owner) = &pod.owner {
            *self.owners.entry(owner.clone()).or_default() += 1;
        }
    }

    /// Counts `pod` out again.
    pub fn remove(&mut self, pod: &PodInfo) {
        self.requested.subtract(&pod.requests);
        for port in &pod.host_ports {
            if let Some(at) = self.host_ports.iter().position(|p| p == port) {
                self.host_ports.swap_remove(at);
            }
        }
        if let Some(owner) = &pod.owner
            && let Some(count) = self.owners.get_mut(owner)
        {
            *count -= 1;
            if *count == 0 {
                self.owners.remove(owner);
            }
        }
    }
}

impl NodeInfo {
    /// The scheduler's view of `node`; a malformed allocatable amount counts as none.
    pub fn from_node(node: &Node) -> Self {
        let name = node.metadata.name.clone().unwrap_or_default();
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let status = node.status.as_ref();
        let allocatable = status
            .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()))
            .and_then(|map| Resources::from_quantities(map).ok())
            .unwrap_or_default();
        let spec = node.spec.as_ref();
        let mut taints = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        let mut ensure = |key: &str| {
            if !taints
                .iter()
                .any(|t| t.key == key && t.effect == "NoSchedule")
            {
                taints.push(Taint {
                    key: key.to_owned(),
                    effect: "NoSchedule".into(),
                    ..Taint::default()
                });
            }
        };
        if spec.and_then(|s| s.unschedulable).unwrap_or(false) {
            ensure(UNSCHEDULABLE_TAINT);
        }
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.as_str());
        match ready {
            Some("True") => {}
            Some("Unknown") => ensure(UNREACHABLE_TAINT),
            _ => ensure(NOT_READY_TAINT),
        }
        Self {
            name,
            labels,
            allocatable,
            taints,
            ..Self::default()
        }
    }
}
