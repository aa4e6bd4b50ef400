//! Amounts of node resources (CPU, memory, pod slots, and any other named resource)
//! and what a pod asks for, computed as kube-scheduler does.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity::{QuantityError, parse_milli, parse_units};

/// Amounts of resources: what a node offers, what is in use, or what a pod requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Pod slots.
    pub pods: i64,
    /// Every other resource (`ephemeral-storage`, `hugepages-2Mi`, extended ones) in
    /// whole units.
    pub other: BTreeMap<String, i64>,
}

impl Resources {
    /// The amounts in a `resources.requests`-style map; unknown names go to `other`.
    pub fn from_quantities(
        map: &BTreeMap<String, Quantity>,
    ) -> Result<Self, (String, QuantityError)> {
        let mut out = Self::default();
        for (name, quantity) in map {
            let named = |e| (name.clone(), e);
            match name.as_str() {
                "cpu" => out.cpu = parse_milli(&quantity.0).map_err(named)?,
                "memory" => out.memory = parse_units(&quantity.0).map_err(named)?,
                "pods" => out.pods = parse_units(&quantity.0).map_err(named)?,
                _ => {
                    out.other
                        .insert(name.clone(), parse_units(&quantity.0).map_err(named)?);
                }
            }
        }
        Ok(out)
    }

    /// Adds `other` to these amounts.
    pub fn add(&mut self, other: &Self) {
        self.cpu += other.cpu;
        self.memory += other.memory;
        self.pods += other.pods;
        for (name, amount) in &other.other {
            *self.other.entry(name.clone()).or_default() += amount;
        }
    }

    /// Takes `other` from these amounts.
    pub fn subtract(&mut self, other: &Self) {
        self.cpu -= other.cpu;
        self.memory -= other.memory;
        self.pods -= other.pods;
        for (name, amount) in &other.other {
            *self.other.entry(name.clone()).or_default() -= amount;
        }
    }

    /// Each amount the larger of the two.
    fn max(&mut self, other: &Self) {
        self.cpu = self.cpu.max(other.cpu);
        self.memory = self.memory.max(other.memory);
        self.pods = self.pods.max(other.pods);
        for (name, amount) in &other.other {
            let entry = self.other.entry(name.clone()).or_default();
            *entry = (*entry).max(*amount);
        }
    }

    /// The resource named `name`.
    pub fn get(&self, name: &str) -> i64 {
        match name {
            "cpu" => self.cpu,
            "memory" => self.memory,
            "pods" => self.pods,
            other => self.other.get(other).copied().unwrap_or(0),
        }
    }
}

/// What a container requests: its `requests`, or its `limits` where a request is not
/// given (as the API server defaults them).
fn container_requests(container: &Container) -> Result<Resources, (String, QuantityError)> {
    let Some(ResourceRequirements {
        requests, limits, ..
    }) = &container.resources
    else {
        return Ok(Resources::default());
    };
    let mut map = limits.clone().unwrap_or_default();
    map.extend(requests.clone().unwrap_or_default());
    Resources::from_quantities(&map)
}

/// What a pod needs on a node, as kube-scheduler counts it: the regular containers
/// and the sidecars (restartable init containers) together, or the largest init
/// container with the sidecars started before it, whichever is more; plus the pod's
/// overhead and one pod slot. The error names the container and resource.
pub fn pod_requests(spec: &PodSpec) -> Result<Resources, String> {
    let mut regular = Resources::default();
    for container in &spec.containers {
        let requests = container_requests(container)
            .map_err(|(resource, e)| format!("container {}: {resource}: {e}", container.name))?;
        regular.add(&requests);
    }
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for container in spec.init_containers.iter().flatten() {
        let requests = container_requests(container).map_err(|(resource, e)| {
            format!("init container {}: {resource}: {e}", container.name)
        })?;
        if container.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&requests);
            // A sidecar runs from here on, alongside the later init containers.
            init_peak.max(&sidecars);
        } else {
            let mut during = sidecars.clone();
            during.add(&requests);
            init_peak.max(&during);
        }
    }
    let mut total = regular;
    total.add(&sidecars);
    total.max(&init_peak);
    if let Some(overhead) = &spec.overhead {
        let overhead = Resources::from_quantities(overhead)
            .map_err(|(resource, e)| format!("overhead {resource}: {e}"))?;
        total.add(&overhead);
    }
    total.pods = 1;
    Ok(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use k8s_openapi::api::core::v1::PodSpec;
    use serde_json::json;

    use super::pod_requests;

    fn spec(value: serde_json::Value) -> PodSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn containers_add_up_and_limits_stand_in_for_missing_requests() {
        let requests = pod_requests(&spec(json!({"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
            {"name": "b", "resources": {"limits": {"cpu": "1", "nvidia.com/gpu": "1"}}},
            {"name": "c"},
        ]})))
        .unwrap();
        assert_eq!(requests.cpu, 1100);
        assert_eq!(requests.memory, 64 << 20);
        assert_eq!(requests.get("nvidia.com/gpu"), 1);
        assert_eq!(requests.pods, 1);
    }

    #[test]
    fn the_largest_init_container_counts_with_the_sidecars_before_it() {
        let requests = pod_requests(&spec(json!({
            "initContainers": [
                {"name": "big", "resources": {"requests": {"cpu": "2"}}},
                {"name": "proxy", "restartPolicy": "Always",
                 "resources": {"requests": {"cpu": "500m"}}},
                {"name": "late", "resources": {"requests": {"cpu": "1800m"}}},
            ],
            "containers": [{"name": "app", "resources": {"requests": {"cpu": "1"}}}],
            "overhead": {"cpu": "10m"},
        })))
        .unwrap();
        // max(app 1 + proxy 0.5, big 2, proxy 0.5 + late 1.8) + overhead.
        assert_eq!(requests.cpu, 2310);
    }

    #[test]
    fn a_bad_quantity_names_its_container_and_resource() {
        let err = pod_requests(&spec(json!({"containers": [
            {"name": "web", "resources": {"requests": {"memory": "lots"}}},
        ]})))
        .unwrap_err();
        assert!(err.contains("container web: memory"), "{err}");
    }
}
