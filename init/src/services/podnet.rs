//! `podnet`: the node's pod network (`cairn-net`'s [`PodNetwork`]).
//!
//! On a control plane, the `podnet` service:
//! Through the replicated store it claims a pod CIDR out of `cluster.podSubnet` (kept
//! across restarts: the claim is the node's), registers the address other nodes reach
//! it by, starts the bridge, IPAM and masquerade, and publishes the network for the
//! runtime. Then, every second, it makes the routes to the other nodes' pod CIDRs
//! match the registrations (host-gateway), which also repairs a route removed by hand.
//!
//! Workers have no store: the controllers' leader runs the node IPAM
//! ([`allocate_node_cidrs`]), which claims a CIDR for each Node that has none, the
//! same way, and sets it as the Node's `spec.podCIDR`; the worker's agent then starts
//! the network with it ([`run_on_worker`]) and routes the other Nodes' CIDRs through
//! their InternalIPs.
//!
//! Store keys: `/cairn/podnet/nodes/<node>` holds a [`NodeRegistration`] (JSON);
//! `/cairn/podnet/cidrs/<cidr>` names the node that claimed a CIDR, so two nodes can
//! never claim one (both keys are written in one compare-and-put transaction).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_net::pod_network::{PeerRoute, PodNetwork, PodNetworkConfig, PodNetworkSlot};
use cairn_store::node::StoreNode;
use cairn_store::types::{
    Compare, CompareResult, CompareTarget, Op, RangeRequest, Request, Response, Txn,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::services::store::StoreHandle;
use crate::supervisor::{Service, ServiceContext, ServiceError};

/// Where nodes register their pod network.
pub const NODES_PREFIX: &str = "/cairn/podnet/nodes/";
/// Where pod CIDR claims are kept.
pub const CIDRS_PREFIX: &str = "/cairn/podnet/cidrs/";
/// How often the routes to other nodes are reconciled.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// How often the store is asked again while it has no leader.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// A node's entry in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRegistration {
    /// The node's pod CIDR.
    pub pod_cidr: Ipv4Net,
    /// The address other nodes route its pod CIDR through.
    pub address: IpAddr,
}

/// What the service needs to know about the node.
#[derive(Debug, Clone)]
pub struct PodNetSettings {
    /// The node's name (its registration key).
    pub node_name: String,
    /// The address other nodes reach this one by.
    pub address: IpAddr,
    /// `cluster.podSubnet`.
    pub cluster_cidr: Ipv4Net,
    /// Where the IPAM state lives.
    pub state_dir: PathBuf,
}

/// The prefix length of the pod CIDR each node gets out of `cluster`: a /24 out of
/// a /20 or larger subnet, else a sixteenth of it (at most a /28).
pub fn node_prefix(cluster: Ipv4Net) -> u8 {
    if cluster.prefix_len() <= 20 {
        24
    } else {
        (cluster.prefix_len() + 4).min(28)
    }
}

/// Why a pod CIDR could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The store refused or failed.
    #[error("the cluster store: {0}")]
    Store(String),
    /// Every CIDR of the subnet is claimed.
    #[error("cluster.podSubnet {cluster} has no free /{prefix} left for this node")]
    Exhausted {
        /// The subnet.
        cluster: Ipv4Net,
        /// The per-node prefix.
        prefix: u8,
    },
    /// A registration in the store could not be read.
    #[error("{key} in the cluster store is not a pod network registration: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

fn cidr_key(cidr: Ipv4Net) -> String {
    format!("{CIDRS_PREFIX}{}-{}", cidr.network(), cidr.prefix_len())
}

fn parse(key: &[u8], value: &[u8]) -> Result<NodeRegistration, ClaimError> {
    serde_json::from_slice(value).map_err(|err| ClaimError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: err.to_string(),
    })
}

/// Who claims a pod CIDR: a node, the address other nodes route its pods through, and
/// `cluster.podSubnet`.
#[derive(Debug, Clone, Copy)]
pub struct Claimant<'a> {
    /// The node's name.
    pub node_name: &'a str,
    /// Its address.
    pub address: IpAddr,
    /// `cluster.podSubnet`.
    pub cluster_cidr: Ipv4Net,
}

impl<'a> From<&'a PodNetSettings> for Claimant<'a> {
    fn from(settings: &'a PodNetSettings) -> Self {
        Self {
            node_name: &settings.node_name,
            address: settings.address,
            cluster_cidr: settings.cluster_cidr,
        }
    }
}

fn store_error(err: cairn_store::protocol::ClientError) -> ClaimError {
    ClaimError::Store(err.to_string())
}

/// Claims the node's pod CIDR (or finds the one it has), registering its address.
pub async fn claim(store: &StoreNode, settings: Claimant<'_>) -> Result<Ipv4Net, ClaimError> {
    let node_key = format!("{NODES_PREFIX}{}", settings.node_name);
    let prefix = node_prefix(settings.cluster_cidr);
    loop {
        let mine = store
            .read(RangeRequest::key(node_key.clone()), true)
            .await
            .map_err(store_error)?;
        if let Some(kv) = mine.kvs.first() {
            let registration = parse(&kv.key, &kv.value)?;
            if registration.address == settings.address
                && settings.cluster_cidr.contains(&registration.pod_cidr)
            {
                return Ok(registration.pod_cidr);
            }
            if settings.cluster_cidr.contains(&registration.pod_cidr) {
                // Same CIDR, new address: update the registration.
                let updated = NodeRegistration {
                    address: settings.address,
                    ..registration
                };
                let value = serde_json::to_vec(&updated).unwrap_or_default();
                if written(
                    store
                        .write(Request::Txn(Txn::update(
                            node_key.clone(),
                            value,
                            kv.mod_revision,
                        )))
                        .await
                        .map_err(store_error)?,
                ) {
                    return Ok(updated.pod_cidr);
                }
                continue;
            }
            warn!(cidr = %registration.pod_cidr, "the claimed pod CIDR is outside cluster.podSubnet; claiming another");
        }
        let claimed = store
            .read(RangeRequest::prefix(CIDRS_PREFIX), true)
            .await
            .map_err(store_error)?;
        let taken: std::collections::BTreeSet<Vec<u8>> =
            claimed.kvs.iter().map(|kv| kv.key.clone()).collect();
        let free = settings
            .cluster_cidr
            .subnets(prefix)
            .map_err(|_| ClaimError::Exhausted {
                cluster: settings.cluster_cidr,
                prefix,
            })?
            .find(|cidr| !taken.contains(cidr_key(*cidr).as_bytes()))
            .ok_or(ClaimError::Exhausted {
                cluster: settings.cluster_cidr,
                prefix,
            })?;
        let registration = NodeRegistration {
            pod_cidr: free,
            address: settings.address,
        };
        let node_revision = mine.kvs.first().map_or(0, |kv| kv.mod_revision);
        let txn = Txn {
            compare: vec![
                Compare {
                    key: node_key.clone().into_bytes(),
                    target: CompareTarget::ModRevision(node_revision),
                    result: CompareResult::Equal,
                },
                Compare {
                    key: cidr_key(free).into_bytes(),
                    target: CompareTarget::ModRevision(0),
                    result: CompareResult::Equal,
                },
            ],
            success: vec![
                Op::Put {
                    key: node_key.clone().into_bytes(),
                    value: serde_json::to_vec(&registration).unwrap_or_default(),
                },
                Op::Put {
                    key: cidr_key(free).into_bytes(),
                    value: settings.node_name.as_bytes().to_vec(),
                },
            ],
            failure: Vec::new(),
        };
        if written(store.write(Request::Txn(txn)).await.map_err(store_error)?) {
            info!(cidr = %free, "pod CIDR claimed");
            return Ok(free);
        }
        // Somebody claimed it first (or our registration changed): look again.
    }
}

/// Gives back the pod CIDR claimed for the node `node_name` (a deleted worker's):
/// its registration and its claim go in one transaction, unless the registration
/// changed meanwhile. Returns the CIDR released, if there was one.
pub async fn release(store: &StoreNode, node_name: &str) -> Result<Option<Ipv4Net>, ClaimError> {
    let node_key = format!("{NODES_PREFIX}{node_name}");
    let mine = store
        .read(RangeRequest::key(node_key.clone()), true)
        .await
        .map_err(store_error)?;
    let Some(kv) = mine.kvs.first() else {
        return Ok(None);
    };
    let registration = parse(&kv.key, &kv.value)?;
    let txn = Txn {
        compare: vec![Compare {
            key: node_key.clone().into_bytes(),
            target: CompareTarget::ModRevision(kv.mod_revision),
            result: CompareResult::Equal,
        }],
        success: vec![
            Op::Delete {
                key: node_key.into_bytes(),
            },
            Op::Delete {
                key: cidr_key(registration.pod_cidr).into_bytes(),
            },
        ],
        failure: Vec::new(),
    };
    let released = written(store.write(Request::Txn(txn)).await.map_err(store_error)?);
    Ok(released.then_some(registration.pod_cidr))
}

fn written(response: Response) -> bool {
    matches!(response, Response::Txn(t) if t.succeeded)
}

/// Every other node's registration, from this node's copy of the store.
pub async fn peers(store: &StoreNode, node_name: &str) -> Result<Vec<PeerRoute>, ClaimError> {
    let nodes = store
        .read(RangeRequest::prefix(NODES_PREFIX), false)
        .await
        .map_err(|e| ClaimError::Store(e.to_string()))?;
    let own = format!("{NODES_PREFIX}{node_name}");
    let mut peers = Vec::new();
    for kv in &nodes.kvs {
        if kv.key == own.as_bytes() {
            continue;
        }
        match parse(&kv.key, &kv.value) {
            Ok(registration) => peers.push(PeerRoute {
                pod_cidr: registration.pod_cidr,
                via: registration.address,
            }),
            Err(err) => warn!(%err, "skipping a registration"),
        }
    }
    Ok(peers)
}

/// The service.
pub struct PodNetService {
    settings: PodNetSettings,
    store: StoreHandle,
    slot: PodNetworkSlot,
}

impl PodNetService {
    /// A service claiming through `store` and publishing the network in `slot`.
    pub fn new(settings: PodNetSettings, store: StoreHandle, slot: PodNetworkSlot) -> Self {
        Self {
            settings,
            store,
            slot,
        }
    }
}

/// Waits until the store runs and has a leader (or the service must stop).
async fn store_with_leader(
    store: &StoreHandle,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<Arc<StoreNode>> {
    let mut said = false;
    loop {
        if let Some(node) = store.get()
            && node.wait_for_leader(STORE_RETRY).await.is_some()
        {
            return Some(node);
        }
        if !said {
            info!(
                "waiting for the cluster store (bootstrapped with `cairnctl bootstrap`) to claim a pod CIDR"
            );
            said = true;
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(STORE_RETRY) => {}
        }
    }
}

impl Service for PodNetService {
    fn name(&self) -> &str {
        "podnet"
    }

    fn run(&self, ctx: ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>> {
        let settings = self.settings.clone();
        let store = self.store.clone();
        let slot = self.slot.clone();
        async move {
            let Some(node) = store_with_leader(&store, &ctx.shutdown).await else {
                return Ok(());
            };
            let pod_cidr = claim(&node, Claimant::from(&settings))
                .await
                .map_err(|e| ServiceError::failed("cannot claim a pod CIDR", e))?;
            let network = start_network(&settings, pod_cidr).await?;
            slot.set(Some(Arc::clone(&network)));
            info!(%pod_cidr, address = %settings.address, "pod network ready");
            loop {
                match peers(&node, &settings.node_name).await {
                    Ok(peers) => {
                        if let Err(err) = network.set_peer_routes(&peers).await {
                            warn!(error = %err, "routes to other nodes' pods not reconciled");
                        }
                    }
                    Err(err) => warn!(%err, "other nodes' pod CIDRs unknown"),
                }
                tokio::select! {
                    () = ctx.shutdown.cancelled() => break,
                    () = tokio::time::sleep(RECONCILE_EVERY) => {}
                }
            }
            Ok(())
        }
        .boxed()
    }
}

/// Starts the bridge, IPAM and masquerade of `pod_cidr`, the IPAM state kept per CIDR.
async fn start_network(
    settings: &PodNetSettings,
    pod_cidr: Ipv4Net,
) -> Result<Arc<PodNetwork>, ServiceError> {
    let ipam_state = settings.state_dir.join(format!(
        "ipam-{}-{}.json",
        pod_cidr.network(),
        pod_cidr.prefix_len()
    ));
    let network = PodNetwork::start(PodNetworkConfig {
        bridge: cairn_net::pod_network::DEFAULT_BRIDGE.into(),
        pod_cidr,
        cluster_cidr: settings.cluster_cidr,
        mtu: None,
        ipam_state,
    })
    .await
    .map_err(|e| ServiceError::failed("cannot start the pod network", e))?;
    Ok(Arc::new(network))
}

/// What the node IPAM (on the controllers' leader) needs: the store the claims are
/// made in, and `cluster.podSubnet`.
#[derive(Clone)]
pub struct NodeIpam {
    /// This control plane's store.
    pub store: StoreHandle,
    /// `cluster.podSubnet`.
    pub cluster_cidr: Ipv4Net,
}

/// A Node's InternalIP, if it has one.
fn internal_ip(node: &Node) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()
}

/// A Node's pod CIDR (`spec.podCIDR`), if it has a valid one.
fn node_pod_cidr(node: &Node) -> Option<Ipv4Net> {
    node.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()
}

/// The node IPAM, as kube-controller-manager's `--allocate-node-cidrs`: until `term`
/// fires, every Node with an InternalIP and no `spec.podCIDR` (a worker: a control
/// plane claims its own) gets one, claimed in the store exactly as control planes
/// claim theirs, so no two nodes ever share one and a node keeps its CIDR; the claim
/// also registers the node's address, so control planes route its pods to it.
///
/// A worker Node that is deleted gives its CIDR back, as kube-controller-manager's
/// IPAM does. Only deletions this leader sees are noticed: a worker deleted while no
/// leader ran keeps its claim. (A control plane's claim is its own, never released.)
pub async fn allocate_node_cidrs(client: kube::Client, ipam: NodeIpam, term: CancellationToken) {
    let nodes: Api<Node> = Api::all(client);
    let mut workers = std::collections::BTreeSet::new();
    loop {
        if let Some(store) = ipam.store.get() {
            match allocate_once(&nodes, &store, ipam.cluster_cidr).await {
                Ok(listed) => {
                    for gone in workers.difference(&listed) {
                        match release(&store, gone).await {
                            Ok(Some(cidr)) => {
                                info!(node = %gone, %cidr, "deleted node's pod CIDR released")
                            }
                            Ok(None) => {}
                            Err(err) => {
                                warn!(node = %gone, error = %err, "deleted node's pod CIDR not released")
                            }
                        }
                    }
                    workers = listed;
                }
                Err(err) => warn!(error = %err, "node pod CIDRs not allocated; retrying"),
            }
        }
        tokio::select! {
            () = term.cancelled() => return,
            () = tokio::time::sleep(RECONCILE_EVERY) => {}
        }
    }
}

/// Why a pass of the node IPAM failed.
#[derive(Debug, thiserror::Error)]
enum AllocateError {
    /// Nodes could not be listed or patched.
    #[error("the Kubernetes API: {0}")]
    Api(#[source] kube::Error),
    /// The claim failed.
    #[error("claiming a pod CIDR for node {node}: {source}")]
    Claim {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: ClaimError,
    },
}

/// One pass of the node IPAM; returns the workers' names the API listed.
async fn allocate_once(
    nodes: &Api<Node>,
    store: &StoreNode,
    cluster_cidr: Ipv4Net,
) -> Result<std::collections::BTreeSet<String>, AllocateError> {
    let listed = nodes
        .list(&ListParams::default())
        .await
        .map_err(AllocateError::Api)?;
    let mut first_failure = None;
    let mut workers = std::collections::BTreeSet::new();
    for node in listed {
        let name = node.metadata.name.clone().unwrap_or_default();
        let control_plane = node
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(cairn_agent::node::CONTROL_PLANE_LABEL));
        if !control_plane {
            workers.insert(name.clone());
        }
        if node_pod_cidr(&node).is_some() {
            continue;
        }
        let Some(address) = internal_ip(&node) else {
            continue;
        };
        // One node's failure (a full podSubnet, say) must not hold back the others.
        if let Err(err) = allocate_one(nodes, store, cluster_cidr, &name, address).await {
            warn!(node = %name, error = %err, "pod CIDR not allocated");
            first_failure.get_or_insert(err);
        }
    }
    first_failure.map_or(Ok(workers), Err)
}

/// Claims a pod CIDR for the Node `name` reached at `address` and sets it in its spec.
async fn allocate_one(
    nodes: &Api<Node>,
    store: &StoreNode,
    cluster_cidr: Ipv4Net,
    name: &str,
    address: IpAddr,
) -> Result<(), AllocateError> {
    let claimant = Claimant {
        node_name: name,
        address,
        cluster_cidr,
    };
    let cidr = claim(store, claimant)
        .await
        .map_err(|source| AllocateError::Claim {
            node: name.to_owned(),
            source,
        })?;
    let patch =
        serde_json::json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
    nodes
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(AllocateError::Api)?;
    info!(node = %name, %cidr, "pod CIDR allocated");
    Ok(())
}

/// A worker's pod network: it has no store, so it waits for the node IPAM to set its
/// Node's `spec.podCIDR`, starts the network with it, publishes it in `slot`, and then
/// every second routes the other Nodes' pod CIDRs through their InternalIPs.
pub async fn run_on_worker(
    client: kube::Client,
    settings: PodNetSettings,
    slot: PodNetworkSlot,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let nodes: Api<Node> = Api::all(client);
    let mut said = false;
    let pod_cidr = loop {
        match nodes.get_opt(&settings.node_name).await {
            Ok(Some(node)) => {
                if let Some(cidr) = node_pod_cidr(&node) {
                    break cidr;
                }
            }
            Ok(None) => {}
            Err(err) => warn!(error = %err, "reading this node's pod CIDR failed; retrying"),
        }
        if !said {
            info!("waiting for the control planes to allocate this node's pod CIDR");
            said = true;
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(STORE_RETRY) => {}
        }
    };
    if !settings.cluster_cidr.contains(&pod_cidr) {
        return Err(ServiceError::Fatal(format!(
            "this Node's spec.podCIDR {pod_cidr} is not inside cluster.podSubnet {}",
            settings.cluster_cidr
        )));
    }
    let network = start_network(&settings, pod_cidr).await?;
    slot.set(Some(Arc::clone(&network)));
    info!(%pod_cidr, "pod network ready");
    loop {
        match nodes.list(&ListParams::default()).await {
            Ok(listed) => {
                let peers: Vec<PeerRoute> = listed
                    .iter()
                    .filter(|n| n.metadata.name.as_deref() != Some(&settings.node_name))
                    .filter_map(|n| {
                        Some(PeerRoute {
                            pod_cidr: node_pod_cidr(n)?,
                            via: internal_ip(n)?,
                        })
                    })
                    .collect();
                if let Err(err) = network.set_peer_routes(&peers).await {
                    warn!(error = %err, "routes to other nodes' pods not reconciled");
                }
            }
            Err(err) => warn!(error = %err, "other nodes' pod CIDRs unknown"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(RECONCILE_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_get_a_24_out_of_large_subnets_and_a_sixteenth_of_small_ones() {
        assert_eq!(node_prefix("10.244.0.0/16".parse().unwrap()), 24);
        assert_eq!(node_prefix("10.244.0.0/20".parse().unwrap()), 24);
        assert_eq!(node_prefix("10.244.0.0/22".parse().unwrap()), 26);
        assert_eq!(node_prefix("10.244.0.0/26".parse().unwrap()), 28);
    }

    /// A one-node store in memory, bootstrapped.
    async fn store(dir: &tempfile::TempDir) -> Arc<StoreNode> {
        let network = cairn_store::memnet::MemNetwork::new();
        let node = StoreNode::start(
            cairn_store::node::NodeOptions {
                id: 1,
                addr: "mem-1".into(),
                dir: dir.path().to_owned(),
                token: "abcdef.0123456789abcdef".into(),
                raft: cairn_store::node::default_raft_config(),
                peers: Vec::new(),
                compaction: None,
            },
            network.factory(1),
            network.peers(1),
        )
        .await
        .unwrap();
        network.register(Arc::clone(&node));
        node.bootstrap().await.unwrap();
        node.wait_for_leader(Duration::from_secs(10)).await.unwrap();
        node
    }

    fn settings(name: &str, address: &str, cluster: &str) -> PodNetSettings {
        PodNetSettings {
            node_name: name.into(),
            address: address.parse().unwrap(),
            cluster_cidr: cluster.parse().unwrap(),
            state_dir: PathBuf::from("/nonexistent"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_claiming_at_once_get_distinct_cidrs_kept_across_claims() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let claims = futures::future::join_all((1..=4).map(|n| {
            let store = Arc::clone(&store);
            async move {
                claim(
                    &store,
                    Claimant::from(&settings(
                        &format!("node-{n}"),
                        &format!("10.5.0.{n}"),
                        "10.244.0.0/26",
                    )),
                )
                .await
            }
        }))
        .await;
        let cidrs: std::collections::BTreeSet<Ipv4Net> =
            claims.into_iter().map(|c| c.unwrap()).collect();
        assert_eq!(cidrs.len(), 4, "{cidrs:?}");
        assert!(cidrs.iter().all(|c| c.prefix_len() == 28));
        // Claiming again (a restart) keeps the CIDR; a new address is registered.
        let first = claim(
            &store,
            Claimant::from(&settings("node-1", "10.5.0.1", "10.244.0.0/26")),
        )
        .await
        .unwrap();
        let moved = claim(
            &store,
            Claimant::from(&settings("node-1", "10.5.0.99", "10.244.0.0/26")),
        )
        .await
        .unwrap();
        assert_eq!(first, moved);
        let seen = peers(&store, "node-2").await.unwrap();
        assert_eq!(seen.len(), 3);
        assert!(seen.contains(&PeerRoute {
            pod_cidr: first,
            via: "10.5.0.99".parse().unwrap()
        }));
        // The subnet holds four: a fifth node is told which setting to grow.
        let full = claim(
            &store,
            Claimant::from(&settings("node-5", "10.5.0.5", "10.244.0.0/26")),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(full.contains("cluster.podSubnet 10.244.0.0/26"), "{full}");
        // A deleted node's CIDR goes back, and the next node can have it.
        let second = peers(&store, "node-1")
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.via == "10.5.0.2".parse::<IpAddr>().unwrap())
            .unwrap()
            .pod_cidr;
        assert_eq!(release(&store, "node-2").await.unwrap(), Some(second));
        assert_eq!(release(&store, "node-2").await.unwrap(), None);
        assert_eq!(peers(&store, "node-1").await.unwrap().len(), 2);
        let fifth = claim(
            &store,
            Claimant::from(&settings("node-5", "10.5.0.5", "10.244.0.0/26")),
        )
        .await
        .unwrap();
        assert_eq!(fifth, second);
        store.shutdown().await;
    }

    #[test]
    fn claim_keys_name_the_cidr() {
        assert_eq!(
            cidr_key("10.244.3.0/24".parse().unwrap()),
            "/cairn/podnet/cidrs/10.244.3.0-24"
        );
    }
}
