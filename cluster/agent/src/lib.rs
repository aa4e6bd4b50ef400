//! Cairn's node agent, the kubelet's role: a client of the cluster's API server that
//!
//! - registers this node's Node (labels, addresses, pod CIDR, capacity, system info)
//!   and keeps its status and conditions current ([`node`]);
//! - renews the node's Lease in `kube-node-lease` as its heartbeat ([`heartbeat`]);
//! - runs the pods bound to the node through the container runtime, reports their
//!   status, and honours their deletion with its grace period ([`pods`],
//!   [`status`]), recording the kubelet's events on them ([`events`]).
//!
//! The agent owns the API side of a node's pods; the runtime ([`cairn_runtime`]) owns
//! containers, images and volumes. Static pods of the machine config are the node's
//! own and not touched here.

pub mod events;
pub mod heartbeat;
pub mod node;
pub mod pods;
mod sources;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use cairn_runtime::runtime::Runtime;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

pub use node::NodeFacts;

/// How long a node's Lease lasts without renewal: the node lifecycle controller calls
/// a node lost after this (the kubelet's default is 40 s; an appliance wants to know
/// sooner).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(10);
/// How often the Node's status (conditions and their heartbeat) is written, as the
/// kubelet's `nodeStatusUpdateFrequency`.
pub const DEFAULT_STATUS_EVERY: Duration = Duration::from_secs(10);

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// What the Node says about this node.
    pub facts: NodeFacts,
    /// How long the node's Lease lasts.
    pub lease_duration: Duration,
    /// How often the Node's status is written.
    pub status_every: Duration,
    /// Uids with this prefix are the node's own static pods, not the agent's.
    pub static_uid_prefix: String,
}

impl AgentSettings {
    /// The kubelet's behaviour with Cairn's shorter lease, for a node with `facts`.
    pub fn new(facts: NodeFacts, static_uid_prefix: &str) -> Self {
        Self {
            facts,
            lease_duration: DEFAULT_LEASE_DURATION,
            status_every: DEFAULT_STATUS_EVERY,
            static_uid_prefix: static_uid_prefix.to_owned(),
        }
    }
}

/// Runs the agent for the node of `settings` with `client` and `runtime` until `stop`
/// fires. API failures are logged and retried, so this returns only when stopped.
pub async fn run(
    client: kube::Client,
    runtime: Arc<Runtime>,
    settings: AgentSettings,
    stop: CancellationToken,
) {
    let span = info_span!("agent", node = %settings.facts.name);
    async move {
        let Some(registered) = register(&client, &settings.facts, &stop).await else {
            return;
        };
        let node_uid = registered.metadata.uid.clone();
        info!("node registered");
        let pods = pods::PodSyncSettings {
            node: settings.facts.name.clone(),
            host_ip: settings.facts.addresses.first().cloned(),
            static_uid_prefix: settings.static_uid_prefix.clone(),
        };
        tokio::join!(
            heartbeat::beat(
                client.clone(),
                &settings.facts.name,
                node_uid,
                settings.lease_duration,
                stop.clone(),
            ),
            report_node_status(&client, &settings, registered, &stop),
            pods::sync(client.clone(), runtime, pods, stop.clone()),
        );
        info!("agent stopped");
    }
    .instrument(span)
    .await;
}

/// Creates the Node (or, when it exists, brings the agent's labels and pod CIDR onto
/// it) and writes its first status; retries until it succeeds or `stop` fires.
/// Returns the Node as written, `None` when stopped.
async fn register(
    client: &kube::Client,
    facts: &NodeFacts,
    stop: &CancellationToken,
) -> Option<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut wait = Duration::from_millis(200);
    loop {
        match register_once(&nodes, facts).await {
            Ok(node) => return Some(node),
            Err(err) => warn!(error = %err, "registering the node failed; retrying"),
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(7));
    }
}

async fn register_once(nodes: &Api<Node>, facts: &NodeFacts) -> Result<Node, kube::Error> {
    let node = match nodes.create(&PostParams::default(), &facts.node()).await {
        Ok(node) => node,
        Err(kube::Error::Api(status)) if status.code == 409 => {
            // Registered before (a restart, a reinstall under the same name): take
            // the labels the agent owns and the pod CIDR where it has none.
            let existing = nodes.get(&facts.name).await?;
            let mut patch = json!({"metadata": {"labels": facts.labels()}});
            let has_cidr = existing
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidr.as_ref())
                .is_some();
            if !has_cidr && let Some(cidr) = &facts.pod_cidr {
                patch["spec"] = json!({"podCIDR": cidr, "podCIDRs": [cidr]});
            }
            nodes
                .patch(&facts.name, &PatchParams::default(), &Patch::Merge(patch))
                .await?
        }
        Err(err) => return Err(err),
    };
    write_node_status(nodes, facts, node.status.as_ref()).await
}

async fn write_node_status(
    nodes: &Api<Node>,
    facts: &NodeFacts,
    previous: Option<&k8s_openapi::api::core::v1::NodeStatus>,
) -> Result<Node, kube::Error> {
    let status = facts.status(previous, Timestamp::now());
    nodes
        .patch_status(
            &facts.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
}

/// Writes the Node's status every `status_every` until `stop` fires; `registered` is
/// the Node as registration left it.
async fn report_node_status(
    client: &kube::Client,
    settings: &AgentSettings,
    registered: Node,
    stop: &CancellationToken,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut last = Some(registered);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(settings.status_every) => {}
        }
        let previous = last.as_ref().and_then(|n| n.status.as_ref());
        match write_node_status(&nodes, &settings.facts, previous).await {
            Ok(node) => last = Some(node),
            Err(err) => warn!(error = %err, "writing the node's status failed"),
        }
    }
}
