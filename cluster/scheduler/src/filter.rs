//! Filters: whether a pod may go on a node, and if not, why — in the words
//! kube-scheduler uses, so a `FailedScheduling` event reads the same.

use std::fmt;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration};

use crate::node::{NodeInfo, UNSCHEDULABLE_TAINT};
use crate::pod::PodInfo;

/// Why a node cannot take a pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The node is cordoned (`spec.unschedulable`) and the pod does not tolerate it.
    Unschedulable,
    /// A NoSchedule or NoExecute taint the pod does not tolerate.
    Taint {
        /// The taint's key.
        key: String,
        /// The taint's value.
        value: String,
    },
    /// The node's labels fail the pod's node selector or required affinity.
    Affinity,
    /// A host port the pod wants is taken.
    Ports,
    /// Not enough of a resource left.
    Insufficient(String),
    /// No pod slot left.
    TooManyPods,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unschedulable => write!(f, "node(s) were unschedulable"),
            Self::Taint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Self::Affinity => write!(f, "node(s) didn't match Pod's node affinity/selector"),
            Self::Ports => write!(
                f,
                "node(s) didn't have free ports for the requested pod ports"
            ),
            Self::Insufficient(resource) => write!(f, "Insufficient {resource}"),
            Self::TooManyPods => write!(f, "Too many pods"),
        }
    }
}

/// Whether `toleration` tolerates `taint`.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    match toleration.operator.as_deref() {
        Some("Exists") => key.is_empty() || key == taint.key,
        _ => {
            key == taint.key
                && toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

fn tolerated(pod: &PodInfo, taint: &Taint) -> bool {
    pod.tolerations.iter().any(|t| tolerates(t, taint))
}

/// Whether `labels`/`name` satisfy one requirement of a node selector term.
fn requirement_holds(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    let number = |text: &str| text.parse::<i64>().ok();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(bound)) = (
                value.and_then(number),
                values.first().and_then(|v| number(v)),
            ) else {
                return false;
            };
            if requirement.operator == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => false,
    }
}

/// Whether `node` matches `term` (all its expressions and fields; an empty term
/// matches nothing, as in Kubernetes).
pub fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions
        .iter()
        .all(|r| requirement_holds(r, node.labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = (r.key == "metadata.name").then_some(node.name.as_str());
            requirement_holds(r, value)
        })
}

fn affinity_matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    let selector = pod
        .node_selector
        .iter()
        .all(|(key, value)| node.labels.get(key) == Some(value));
    selector
        && pod
            .required_terms
            .as_ref()
            .is_none_or(|terms| terms.iter().any(|term| term_matches(term, node)))
}

fn ports_free(pod: &PodInfo, node: &NodeInfo) -> bool {
    pod.host_ports.iter().all(|(protocol, ip, port)| {
        !node.usage.host_ports.iter().any(|(p, i, n)| {
            n == port && p == protocol && (i == ip || i == "0.0.0.0" || ip == "0.0.0.0")
        })
    })
}

/// Pushes each resource the node lacks for `pod` onto `reasons`.
fn fit(pod: &PodInfo, node: &NodeInfo, reasons: &mut Vec<Reason>) {
    let want = &pod.requests;
    let used = &node.usage.requested;
    let free = &node.allocatable;
    if used.pods + want.pods > free.pods {
        reasons.push(Reason::TooManyPods);
    }
    if want.cpu > 0 && used.cpu + want.cpu > free.cpu {
        reasons.push(Reason::Insufficient("cpu".into()));
    }
    if want.memory > 0 && used.memory + want.memory > free.memory {
        reasons.push(Reason::Insufficient("memory".into()));
    }
    for (name, amount) in &want.other {
        if *amount > 0 && used.get(name) + amount > free.get(name) {
            reasons.push(Reason::Insufficient(name.clone()));
        }
    }
}

/// Whether `pod` may go on `node`; when not, pushes why onto `reasons` and returns
/// false. Like kube-scheduler, the first filter that fails decides (the resource fit
/// names every resource short).
pub fn feasible(pod: &PodInfo, node: &NodeInfo, reasons: &mut Vec<Reason>) -> bool {
    for taint in &node.taints {
        if (taint.effect == "NoSchedule" || taint.effect == "NoExecute") && !tolerated(pod, taint) {
            reasons.push(if taint.key == UNSCHEDULABLE_TAINT {
                Reason::Unschedulable
            } else {
                Reason::Taint {
                    key: taint.key.clone(),
                    value: taint.value.clone().unwrap_or_default(),
                }
            });
            return false;
        }
    }
    if !affinity_matches(pod, node) {
        reasons.push(Reason::Affinity);
        return false;
    }
    if !ports_free(pod, node) {
        reasons.push(Reason::Ports);
        return false;
    }
    let before = reasons.len();
    fit(pod, node, reasons);
    reasons.len() == before
}

/// How many of `pod`'s preferred-affinity weights `node` earns.
pub fn preferred_weight(pod: &PodInfo, node: &NodeInfo) -> i64 {
    pod.preferred_terms
        .iter()
        .filter(|t| term_matches(&t.preference, node))
        .map(|t| i64::from(t.weight))
        .sum()
}

/// How many PreferNoSchedule taints of `node` the pod does not tolerate.
pub fn intolerable_preferences(pod: &PodInfo, node: &NodeInfo) -> i64 {
    node.taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(pod, t))
        .count() as i64
}
