//! `cargo xtask bench scheduler`: scheduling decisions for N pods over M simulated
//! nodes (kube-scheduler's `scheduler_perf` shape: every node 4 CPUs, 16 GiB and 110
//! pod slots; pods requesting 100m and 128 MiB, owned by ReplicaSets of 100), each pod
//! read from its API object, filtered, scored and counted on its node.
//!
//! The anchor is published, not measured here (kube-scheduler cannot run on this
//! machine): `scheduler_perf`'s floor of about 680–810 pods/s at 5,000 nodes, which
//! includes writing each binding to a real API server. These figures are decisions
//! only; the binding a running scheduler writes costs one API call per pod (see
//! `cargo xtask bench api` for what a write costs).

use std::time::Instant;

use anyhow::Context as _;
use cairn_scheduler::{Cluster, NodeInfo, PodInfo};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;

use crate::stats::{median, percentile};

/// kube-scheduler's published throughput at 5,000 nodes, pods per second (low end).
const ANCHOR_PODS_PER_SECOND: f64 = 680.0;
/// The goal, pods per second.
const GOAL_PODS_PER_SECOND: f64 = 10_000.0;

fn node(i: usize) -> anyhow::Result<Node> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": format!("node-{i:05}"), "labels": {
            "kubernetes.io/hostname": format!("node-{i:05}"),
            "topology.kubernetes.io/zone": format!("zone-{}", i % 3),
        }},
        "status": {
            "allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }))?)
}

fn pod(i: usize) -> anyhow::Result<Pod> {
    let owner = i / 100;
    Ok(serde_json::from_value(json!({
        "metadata": {
            "name": format!("pod-{i:05}"), "namespace": "default", "uid": format!("uid-{i}"),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("rs-{owner}"), "uid": format!("rs-{owner}"), "controller": true}],
        },
        "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]},
    }))?)
}

/// Schedules `pods` pods over `nodes` nodes `rounds` times and prints the throughput.
pub fn run(nodes: usize, pods: usize, rounds: usize) -> anyhow::Result<()> {
    let node_objects: Vec<Node> = (0..nodes).map(node).collect::<anyhow::Result<_>>()?;
    let pod_objects: Vec<Pod> = (0..pods).map(pod).collect::<anyhow::Result<_>>()?;
    println!("scheduler: {pods} pods over {nodes} nodes, {rounds} rounds");
    let mut rates = Vec::new();
    let mut latencies = Vec::new();
    let mut spread = (0, 0);
    for _ in 0..rounds {
        let mut cluster = Cluster::new();
        for object in &node_objects {
            cluster.upsert_node(NodeInfo::from_node(object));
        }
        let begun = Instant::now();
        for object in &pod_objects {
            let started = Instant::now();
            let pod = PodInfo::from_pod(object).map_err(anyhow::Error::msg)?;
            let at = cluster
                .schedule(&pod)
                .with_context(|| format!("{} did not fit", pod.name))?;
            cluster.place(pod, &at);
            latencies.push(started.elapsed().as_secs_f64() * 1e6);
        }
        rates.push(pods as f64 / begun.elapsed().as_secs_f64());
        let per_node: Vec<i64> = (0..nodes)
            .filter_map(|i| cluster.node(&format!("node-{i:05}")))
            .map(|n| n.usage.requested.pods)
            .collect();
        spread = (
            per_node.iter().copied().min().unwrap_or(0),
            per_node.iter().copied().max().unwrap_or(0),
        );
    }
    let rate = median(rates);
    println!(
        "  decisions: median {rate:.0} pods/s   ({:.1}× kube-scheduler's published {ANCHOR_PODS_PER_SECOND:.0} pods/s, \
         not measured here; goal ≥ {GOAL_PODS_PER_SECOND:.0}: {})",
        rate / ANCHOR_PODS_PER_SECOND,
        if rate >= GOAL_PODS_PER_SECOND {
            "met"
        } else {
            "missed"
        },
    );
    println!(
        "  per pod: p50 {:.1} µs   p99 {:.1} µs   pods per node after a round: {}–{}",
        median(latencies.clone()),
        percentile(&latencies, 99.0),
        spread.0,
        spread.1,
    );
    println!("  (decisions only: filter, score and count each pod; no binding is written)");
    Ok(())
}
