//! Cairn's reconciliation controllers, the kube-controller-manager's role. Each one
//! compares what the API says should be with what is, level-triggered, from caches
//! that watches keep current ([`Caches`]), and writes the difference back through the
//! API:
//!
//! - [`node_lifecycle`]: a node whose Lease is not renewed within the grace period
//!   becomes `Ready=Unknown` and tainted unreachable; its pods are marked not ready
//!   and evicted once their toleration of the taint runs out;
//! - [`replicaset`]: each ReplicaSet keeps its number of pods, creating from its
//!   template and deleting the least useful, and reports its status.
//!
//! They run together on one control plane at a time (the holder of the
//! `kube-system/kube-controller-manager` Lease, see `cairn-leader`); [`run`] returns
//! when its stop token fires.

pub mod events;
pub mod node_lifecycle;
pub mod replicaset;
pub mod selector;

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The Lease the controllers' leader holds, in `kube-system`.
pub const CONTROLLERS_LEASE: &str = "kube-controller-manager";

/// How the controllers behave.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Who runs them (events' `reportingInstance`), e.g. the node's name.
    pub instance: String,
    /// How long a node's Lease may go unrenewed before the node is not ready
    /// (`node-monitor-grace-period`; an appliance's default is 10 s).
    pub node_grace: Duration,
    /// How long pods that do not say otherwise tolerate an unreachable or not-ready
    /// node before they are evicted (Kubernetes' admission default is 300 s; an
    /// appliance's is 10 s).
    pub eviction_timeout: Duration,
    /// How often the controllers look again without a watch event.
    pub resync: Duration,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            instance: "cairn".into(),
            node_grace: Duration::from_secs(10),
            eviction_timeout: Duration::from_secs(10),
            resync: Duration::from_millis(500),
        }
    }
}

/// The objects the controllers read, kept current by watches.
#[derive(Clone)]
pub struct Caches {
    /// Every Node.
    pub nodes: Store<Node>,
    /// The node Leases of `kube-node-lease`.
    pub leases: Store<Lease>,
    /// Every Pod.
    pub pods: Store<Pod>,
    /// Every ReplicaSet.
    pub replica_sets: Store<ReplicaSet>,
}

/// Runs every controller with `client` until `stop` fires.
pub async fn run(client: kube::Client, options: ControllerOptions, stop: CancellationToken) {
    let (nodes, nodes_writer) = reflector::store();
    let (leases, leases_writer) = reflector::store();
    let (pods, pods_writer) = reflector::store();
    let (replica_sets, rs_writer) = reflector::store();
    let caches = Caches {
        nodes,
        leases,
        pods,
        replica_sets,
    };
    let config = watcher::Config::default;
    let watches = futures::stream::select_all([
        watcher::watcher(Api::<Node>::all(client.clone()), config())
            .default_backoff()
            .reflect(nodes_writer)
            .map(|e| e.map(|_| ()))
            .boxed(),
        watcher::watcher(
            Api::<Lease>::namespaced(client.clone(), "kube-node-lease"),
            config(),
        )
        .default_backoff()
        .reflect(leases_writer)
        .map(|e| e.map(|_| ()))
        .boxed(),
        watcher::watcher(Api::<Pod>::all(client.clone()), config())
            .default_backoff()
            .reflect(pods_writer)
            .map(|e| e.map(|_| ()))
            .boxed(),
        watcher::watcher(Api::<ReplicaSet>::all(client.clone()), config())
            .default_backoff()
            .reflect(rs_writer)
            .map(|e| e.map(|_| ()))
            .boxed(),
    ]);
    let drive = watches.for_each(|event| async move {
        if let Err(err) = event {
            warn!(error = %err, "a controller watch failed; retrying");
        }
    });
    info!(instance = %options.instance, "controllers start");
    tokio::select! {
        () = stop.cancelled() => {}
        () = drive => {}
        () = async {
            // Decisions need the whole picture: wait for every first list.
            let ready = futures::future::join4(
                caches.nodes.wait_until_ready(),
                caches.leases.wait_until_ready(),
                caches.pods.wait_until_ready(),
                caches.replica_sets.wait_until_ready(),
            )
            .await;
            if ready.0.is_err() || ready.1.is_err() || ready.2.is_err() || ready.3.is_err() {
                return;
            }
            tokio::join!(
                node_lifecycle::run(client.clone(), caches.clone(), options.clone()),
                replicaset::run(client.clone(), caches.clone(), options.clone()),
            );
        } => {}
    }
    info!("controllers stop");
}
