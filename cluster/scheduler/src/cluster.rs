//! The scheduler's picture of the cluster (nodes and the pods placed on them) and the
//! decision for one pod: filter the nodes, score the feasible ones, pick the best.
//!
//! As kube-scheduler does, large clusters are not searched whole for every pod: the
//! search starts where the last one stopped and ends once enough feasible nodes are
//! found (`percentageOfNodesToScore`'s adaptive default), which keeps the cost per pod
//! flat as nodes are added while every node still gets its turn.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::filter::{self, Reason};
use crate::node::{NodeInfo, Usage};
use crate::pod::PodInfo;

/// Weights of the scores, kube-scheduler's defaults.
const LEAST_ALLOCATED_WEIGHT: i64 = 1;
const BALANCED_WEIGHT: i64 = 1;
const TAINT_WEIGHT: i64 = 3;
const AFFINITY_WEIGHT: i64 = 2;
const SPREAD_WEIGHT: i64 = 2;
/// The highest score one plugin gives.
const MAX_SCORE: i64 = 100;

/// No node can take the pod, with the count of nodes per reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    /// How many nodes there are.
    pub nodes: usize,
    /// How many nodes failed for each reason.
    pub reasons: BTreeMap<Reason, usize>,
}

impl fmt::Display for Unschedulable {
    /// kube-scheduler's message: `0/3 nodes are available: 1 Insufficient cpu, 2
    /// node(s) didn't match Pod's node affinity/selector.`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0/{} nodes are available", self.nodes)?;
        if self.reasons.is_empty() {
            return write!(f, ".");
        }
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(reason, count)| format!("{count} {reason}"))
            .collect();
        parts.sort();
        write!(f, ": {}.", parts.join(", "))
    }
}

impl std::error::Error for Unschedulable {}

/// Nodes and the pods placed on them.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<NodeInfo>,
    by_name: HashMap<String, usize>,
    /// Pods counted on a node, by uid: the node and what they were counted as.
    placed: HashMap<String, (String, PodInfo)>,
    /// Usage of nodes the scheduler has not seen yet (or no longer sees) but that
    /// pods are bound to.
    unknown_usage: HashMap<String, Usage>,
    /// Where the next search starts.
    next_start: usize,
    /// The state of the tie-breaking sequence.
    random_state: Cell<u64>,
}

impl Default for Cluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Cluster {
    /// An empty cluster.
    pub fn new() -> Self {
        Self {
            nodes: Vec::new(),
            by_name: HashMap::new(),
            placed: HashMap::new(),
            unknown_usage: HashMap::new(),
            next_start: 0,
            // Any non-zero seed; xorshift never leaves zero.
            random_state: Cell::new(0x9E37_79B9_7F4A_7C15),
        }
    }

    /// How many nodes there are.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The nodes known.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter()
    }

    /// The uids of the pods counted on nodes.
    pub fn placed_uids(&self) -> impl Iterator<Item = String> + '_ {
        self.placed.keys().cloned()
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.by_name.get(name).map(|&i| &self.nodes[i])
    }

    /// Adds `node` or replaces what is known of it, keeping the pods placed on it.
    pub fn upsert_node(&mut self, mut node: NodeInfo) {
        match self.by_name.get(&node.name) {
            Some(&i) => {
                node.usage = std::mem::take(&mut self.nodes[i].usage);
                self.nodes[i] = node;
            }
            None => {
                node.usage = self.unknown_usage.remove(&node.name).unwrap_or_default();
                self.by_name.insert(node.name.clone(), self.nodes.len());
                self.nodes.push(node);
            }
        }
    }

    /// Forgets the node named `name` (its pods stay counted should it come back).
    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.by_name.remove(name) else {
            return;
        };
        let node = self.nodes.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            self.by_name.insert(moved.name.clone(), i);
        }
        self.unknown_usage.insert(node.name, node.usage);
    }

    fn usage_mut(&mut self, node: &str) -> &mut Usage {
        match self.by_name.get(node) {
            Some(&i) => &mut self.nodes[i].usage,
            None => self.unknown_usage.entry(node.to_owned()).or_default(),
        }
    }

    /// Counts `pod` on `node` (bound there, or assumed while its binding is written);
    /// a pod counted before is moved.
    pub fn place(&mut self, pod: PodInfo, node: &str) {
        self.remove_pod(&pod.uid);
        self.usage_mut(node).add(&pod);
        self.placed.insert(pod.uid.clone(), (node.to_owned(), pod));
    }

    /// Stops counting the pod with `uid` (deleted, finished, or its binding failed).
    pub fn remove_pod(&mut self, uid: &str) {
        if let Some((node, pod)) = self.placed.remove(uid) {
            self.usage_mut(&node).remove(&pod);
        }
    }

    /// Whether the pod with `uid` is counted on a node.
    pub fn is_placed(&self, uid: &str) -> bool {
        self.placed.contains_key(uid)
    }

    /// How many feasible nodes to find before choosing, out of `all`.
    fn feasible_wanted(all: usize) -> usize {
        const MIN: usize = 100;
        if all < MIN {
            return all;
        }
        let percent = (50 - all as i64 / 125).max(5) as usize;
        (all * percent / 100).max(MIN)
    }

    /// The best node for `pod`, or why there is none. The pod is not counted: call
    /// [`Cluster::place`] once it is bound (or assumed).
    pub fn schedule(&mut self, pod: &PodInfo) -> Result<String, Unschedulable> {
        let all = self.nodes.len();
        let wanted = Self::feasible_wanted(all);
        let mut feasible: Vec<usize> = Vec::with_capacity(wanted);
        let mut reasons = Vec::new();
        let mut failures: BTreeMap<Reason, usize> = BTreeMap::new();
        let mut examined = 0;
        while examined < all && feasible.len() < wanted {
            let i = (self.next_start + examined) % all;
            examined += 1;
            if filter::feasible(pod, &self.nodes[i], &mut reasons) {
                feasible.push(i);
            } else {
                for reason in reasons.drain(..) {
                    *failures.entry(reason).or_default() += 1;
                }
            }
        }
        if all > 0 {
            self.next_start = (self.next_start + examined) % all;
        }
        if feasible.is_empty() {
            return Err(Unschedulable {
                nodes: all,
                reasons: failures,
            });
        }
        let best = self.best(pod, &feasible);
        Ok(self.nodes[best].name.clone())
    }

    /// The highest-scoring of `feasible` (one at random among equals).
    fn best(&self, pod: &PodInfo, feasible: &[usize]) -> usize {
        if feasible.len() == 1 {
            return feasible[0];
        }
        // Scores normalised against the other feasible nodes need their extremes.
        let spread = pod.owner.as_ref().map(|owner| {
            let counts: Vec<i64> = feasible
                .iter()
                .map(|&i| i64::from(self.nodes[i].usage.owners.get(owner).copied().unwrap_or(0)))
                .collect();
            let most = counts.iter().copied().max().unwrap_or(0);
            (counts, most)
        });
        let preferred: Vec<i64> = if pod.preferred_terms.is_empty() {
            Vec::new()
        } else {
            feasible
                .iter()
                .map(|&i| filter::preferred_weight(pod, &self.nodes[i]))
                .collect()
        };
        let most_preferred = preferred.iter().copied().max().unwrap_or(0);
        let intolerable: Vec<i64> = feasible
            .iter()
            .map(|&i| filter::intolerable_preferences(pod, &self.nodes[i]))
            .collect();
        let most_intolerable = intolerable.iter().copied().max().unwrap_or(0);

        let mut best = (i64::MIN, feasible[0]);
        let mut ties = 0u64;
        for (k, &i) in feasible.iter().enumerate() {
            let node = &self.nodes[i];
            let mut score = LEAST_ALLOCATED_WEIGHT * least_allocated(pod, node)
                + BALANCED_WEIGHT * balanced(pod, node);
            if let Some((counts, most)) = &spread {
                score += SPREAD_WEIGHT * reverse_normalised(counts[k], *most);
            }
            if most_preferred > 0 {
                score += AFFINITY_WEIGHT * preferred[k] * MAX_SCORE / most_preferred;
            }
            score += TAINT_WEIGHT * reverse_normalised(intolerable[k], most_intolerable);
            if score > best.0 {
                best = (score, i);
                ties = 1;
            } else if score == best.0 {
                // Equals are picked at random (reservoir sampling), as kube-scheduler
                // does, so that nodes with the same score share the pods.
                ties += 1;
                if self.random().is_multiple_of(ties) {
                    best.1 = i;
                }
            }
        }
        best.1
    }

    /// The next number of a xorshift sequence: cheap, and reproducible from run to run.
    fn random(&self) -> u64 {
        let mut x = self.random_state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random_state.set(x);
        x
    }
}

/// `MAX_SCORE` for the fewest, 0 for the most.
fn reverse_normalised(value: i64, most: i64) -> i64 {
    if most == 0 {
        MAX_SCORE
    } else {
        MAX_SCORE - value * MAX_SCORE / most
    }
}

/// The share of `node`'s CPU and memory left once `pod` is on it, 0–100.
fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let left = |used: i64, want: i64, total: i64| {
        if total <= 0 {
            0
        } else {
            ((total - used - want).max(0) * MAX_SCORE) / total
        }
    };
    let used = &node.usage.requested;
    (left(used.cpu, pod.requests.cpu, node.allocatable.cpu)
        + left(used.memory, pod.requests.memory, node.allocatable.memory))
        / 2
}

/// How evenly `node`'s CPU and memory would be used once `pod` is on it, 0–100.
fn balanced(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let share = |used: i64, want: i64, total: i64| {
        if total <= 0 {
            1.0
        } else {
            ((used + want) as f64 / total as f64).min(1.0)
        }
    };
    let used = &node.usage.requested;
    let cpu = share(used.cpu, pod.requests.cpu, node.allocatable.cpu);
    let memory = share(used.memory, pod.requests.memory, node.allocatable.memory);
    // The standard deviation of two shares is half their difference.
    ((1.0 - (cpu - memory).abs() / 2.0) * MAX_SCORE as f64) as i64
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::{Value, json};

    use super::Cluster;
    use crate::node::NodeInfo;
    use crate::pod::PodInfo;

    fn node(name: &str, cpu: &str, extra: Value) -> NodeInfo {
        let mut value = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {
                "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        });
        merge(&mut value, extra);
        NodeInfo::from_node(&serde_json::from_value::<Node>(value).unwrap())
    }

    fn pod(name: &str, cpu: &str, extra: Value) -> PodInfo {
        let mut value = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]},
        });
        merge(&mut value, extra);
        PodInfo::from_pod(&serde_json::from_value::<Pod>(value).unwrap()).unwrap()
    }

    fn merge(into: &mut Value, from: Value) {
        match (into, from) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (slot, value) => *slot = value,
        }
    }

    fn cluster(nodes: Vec<NodeInfo>) -> Cluster {
        let mut cluster = Cluster::new();
        for node in nodes {
            cluster.upsert_node(node);
        }
        cluster
    }

    #[test]
    fn requests_fill_nodes_and_then_the_pod_is_unschedulable_with_the_reason() {
        let mut c = cluster(vec![node("a", "1", json!({})), node("b", "1", json!({}))]);
        for i in 0..4 {
            let p = pod(&format!("p{i}"), "500m", json!({}));
            let at = c.schedule(&p).unwrap();
            c.place(p, &at);
        }
        let err = c.schedule(&pod("p4", "500m", json!({}))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/2 nodes are available: 2 Insufficient cpu."
        );
        // A deleted pod frees its share.
        c.remove_pod("uid-p0");
        assert!(c.schedule(&pod("p4", "500m", json!({}))).is_ok());
    }

    #[test]
    fn the_least_used_node_wins_and_an_owners_pods_spread_out() {
        let mut c = cluster(vec![
            node("a", "4", json!({})),
            node("b", "4", json!({})),
            node("c", "4", json!({})),
        ]);
        let busy = pod("busy", "2", json!({}));
        c.place(busy, "a");
        let owned = |name: &str| {
            pod(
                name,
                "100m",
                json!({"metadata": {"ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
                    "uid": "rs-1", "controller": true,
                }]}}),
            )
        };
        let mut placed = Vec::new();
        for i in 0..3 {
            let p = owned(&format!("web-{i}"));
            let at = c.schedule(&p).unwrap();
            c.place(p, &at);
            placed.push(at);
        }
        placed.sort();
        assert_eq!(placed, ["a", "b", "c"], "one replica per node");
        let next = c.schedule(&pod("solo", "100m", json!({}))).unwrap();
        assert_ne!(next, "a", "a carries the busy pod");
    }

    #[test]
    fn selectors_affinity_and_taints_decide_with_kube_messages() {
        let mut c = cluster(vec![
            node(
                "cp",
                "4",
                json!({
                    "metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}},
                    "spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]},
                }),
            ),
            node(
                "w1",
                "4",
                json!({"metadata": {"labels": {"disk": "ssd", "cores": "8"}}}),
            ),
            node("w2", "4", json!({"spec": {"unschedulable": true}})),
        ]);
        let err = c
            .schedule(&pod(
                "p",
                "1",
                json!({"spec": {"nodeSelector": {"disk": "hdd"}}}),
            ))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
             1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, \
             1 node(s) were unschedulable."
        );
        let affinity = json!({"spec": {"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]},
            ]},
        }}}});
        assert_eq!(c.schedule(&pod("fast", "1", affinity)).unwrap(), "w1");
        let tolerant = json!({"spec": {
            "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
            "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}],
        }});
        assert_eq!(c.schedule(&pod("sys", "1", tolerant)).unwrap(), "cp");
    }

    #[test]
    fn not_ready_nodes_take_only_pods_that_tolerate_it() {
        let mut c = cluster(vec![node(
            "a",
            "4",
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        )]);
        let err = c.schedule(&pod("p", "1", json!({}))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/1 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }."
        );
        let daemon = json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"},
        ]}});
        assert_eq!(c.schedule(&pod("d", "1", daemon)).unwrap(), "a");
    }

    #[test]
    fn host_ports_conflict_only_on_the_same_protocol_and_address() {
        let mut c = cluster(vec![node("a", "4", json!({}))]);
        let with_port = |name: &str, protocol: &str| {
            pod(
                name,
                "100m",
                json!({"spec": {"containers": [{"name": "c", "ports": [
                    {"containerPort": 80, "hostPort": 8080, "protocol": protocol},
                ]}]}}),
            )
        };
        let first = with_port("one", "TCP");
        c.place(first, "a");
        assert_eq!(
            c.schedule(&with_port("two", "TCP"))
                .unwrap_err()
                .to_string(),
            "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports."
        );
        assert_eq!(c.schedule(&with_port("three", "UDP")).unwrap(), "a");
    }

    #[test]
    fn node_updates_keep_usage_and_pods_may_arrive_before_their_node() {
        let mut c = Cluster::new();
        c.place(pod("early", "3", json!({})), "late-node");
        c.upsert_node(node("late-node", "4", json!({})));
        assert!(
            c.schedule(&pod("big", "2", json!({}))).is_err(),
            "3 of 4 cpus used"
        );
        c.upsert_node(node(
            "late-node",
            "4",
            json!({"metadata": {"labels": {"x": "y"}}}),
        ));
        assert!(
            c.schedule(&pod("big", "2", json!({}))).is_err(),
            "still used after an update"
        );
        c.remove_node("late-node");
        c.upsert_node(node("late-node", "8", json!({})));
        assert_eq!(
            c.schedule(&pod("big", "2", json!({}))).unwrap(),
            "late-node"
        );
    }

    #[test]
    fn large_clusters_are_searched_in_turns_so_every_node_gets_pods() {
        let nodes = (0..1000)
            .map(|i| node(&format!("n{i:04}"), "4", json!({})))
            .collect();
        let mut c = cluster(nodes);
        let mut per_node = std::collections::HashMap::<String, usize>::new();
        for i in 0..2000 {
            let p = pod(&format!("p{i}"), "100m", json!({}));
            let at = c.schedule(&p).unwrap();
            c.place(p, &at);
            *per_node.entry(at).or_default() += 1;
        }
        // Each search sees only part of the cluster, yet no node is left out or piled on.
        assert_eq!(per_node.len(), 1000, "every node was chosen");
        assert!(per_node.values().all(|&n| n <= 3), "{per_node:?}");
    }

    #[test]
    fn equal_nodes_share_pods_at_random() {
        let nodes = (0..10)
            .map(|i| node(&format!("n{i}"), "1000", json!({})))
            .collect();
        let mut c = cluster(nodes);
        let mut chosen = std::collections::HashSet::new();
        for i in 0..50 {
            // Tiny requests on huge nodes: every node scores the same every time.
            chosen.insert(c.schedule(&pod(&format!("p{i}"), "1m", json!({}))).unwrap());
        }
        assert!(chosen.len() > 5, "{chosen:?}");
    }
}
