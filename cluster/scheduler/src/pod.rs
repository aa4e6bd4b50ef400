//! What the scheduler needs of a pod: what it requests, where it may go, what it
//! tolerates, the host ports it takes and who owns it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorTerm, Pod, PreferredSchedulingTerm, Toleration};

use crate::resources::{Resources, pod_requests};

/// A pod as the scheduler sees it.
#[derive(Debug, Clone, Default)]
pub struct PodInfo {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// What it needs on a node (one pod slot included).
    pub requests: Resources,
    /// `spec.nodeSelector`.
    pub node_selector: BTreeMap<String, String>,
    /// The terms of required node affinity (one must match), if any.
    pub required_terms: Option<Vec<NodeSelectorTerm>>,
    /// Preferred node affinity terms with their weights.
    pub preferred_terms: Vec<PreferredSchedulingTerm>,
    /// `spec.tolerations`.
    pub tolerations: Vec<Toleration>,
    /// The host ports its containers take: (protocol, host IP, port).
    pub host_ports: Vec<(String, String, i32)>,
    /// The uid of its controlling owner (ReplicaSet, StatefulSet, …), for spreading.
    pub owner: Option<String>,
    /// `spec.nodeName`, once bound.
    pub node_name: Option<String>,
}

impl PodInfo {
    /// The scheduler's view of `pod`; the error says which request is malformed.
    pub fn from_pod(pod: &Pod) -> Result<Self, String> {
        let meta = &pod.metadata;
        let spec = pod.spec.clone().unwrap_or_default();
        let requests = pod_requests(&spec)?;
        let affinity = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref());
        let required_terms = affinity
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|s| s.node_selector_terms.clone());
        let preferred_terms = affinity
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default();
        let mut host_ports = Vec::new();
        for container in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            for port in container.ports.iter().flatten() {
                if let Some(host_port) = port.host_port.filter(|p| *p > 0) {
                    host_ports.push((
                        port.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        port.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                        host_port,
                    ));
                }
            }
        }
        let owner = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        Ok(Self {
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            requests,
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            required_terms,
            preferred_terms,
            tolerations: spec.tolerations.clone().unwrap_or_default(),
            host_ports,
            owner,
            node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
        })
    }
}
