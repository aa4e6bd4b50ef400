//! Cairn's reconciliation controllers, the kube-controller-manager's role. Each one
//! compares what the API says should be with what is, level-triggered, from caches
//! that watches keep current ([`Caches`]), and writes the difference back through the
//! API:
//!
//! - [`node_lifecycle`]: a node whose Lease is not renewed within the grace period
//!   becomes `Ready=Unknown` and tainted unreachable; its pods are marked not ready
//!   and evicted once their toleration of the taint runs out;
//! - [`replicaset`]: each ReplicaSet keeps its number of pods, creating from its
//!   template and deleting the least useful, and reports its status;
//! - [`deployment`]: each Deployment rolls its template out through ReplicaSets
//!   (rolling update or recreate), keeps their revision history and reports progress;
//! - [`daemonset`]: each DaemonSet keeps one pod on every node it should run on and
//!   rolls its template out node by node;
//! - [`statefulset`]: each StatefulSet keeps its ordinal-named pods, made and
//!   removed in order, and rolls its template out from the highest ordinal down;
//! - [`job`]: each Job runs pods to `completions` within its parallelism, back-off
//!   limit and deadline, counts them without losing one, and expires after its TTL;
//! - [`cronjob`]: each CronJob makes a Job at every time its schedule names, in its
//!   time zone and concurrency policy, and keeps a bounded history;
//! - [`endpoints`]: each Service with a selector gets Endpoints and EndpointSlices
//!   with the addresses and resolved ports of the pods it selects;
//! - [`service_accounts`]: every namespace has a `default` ServiceAccount and the
//!   `kube-root-ca.crt` ConfigMap with the cluster CA;
//! - [`gc`]: objects whose owners are gone are deleted, and owners deleted in the
//!   foreground or orphaning are finished once their dependents are handled.
//!
//! They run together on one control plane at a time (the holder of the
//! `kube-system/kube-controller-manager` Lease, see `cairn-leader`); [`run`] returns
//! when its stop token fires.

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod expectations;
pub mod gc;
pub mod job;
pub mod node_lifecycle;
pub mod pods;
pub mod replicaset;
pub mod selector;
pub mod service_accounts;
pub mod statefulset;

use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Namespace, Node, Pod, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
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
    /// The cluster CA (PEM) published in every namespace as `kube-root-ca.crt`
    /// (`None`: not published).
    pub root_ca: Option<String>,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            instance: "cairn".into(),
            node_grace: Duration::from_secs(10),
            eviction_timeout: Duration::from_secs(10),
            resync: Duration::from_millis(500),
            root_ca: None,
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
    /// Every Deployment.
    pub deployments: Store<Deployment>,
    /// Every Job.
    pub jobs: Store<Job>,
    /// Every DaemonSet.
    pub daemon_sets: Store<DaemonSet>,
    /// Every StatefulSet.
    pub stateful_sets: Store<StatefulSet>,
    /// Every ControllerRevision (the StatefulSets' template history).
    pub controller_revisions: Store<ControllerRevision>,
    /// Every CronJob.
    pub cron_jobs: Store<CronJob>,
    /// Every Service.
    pub services: Store<Service>,
    /// Every Endpoints object.
    pub endpoints: Store<Endpoints>,
    /// Every EndpointSlice.
    pub endpoint_slices: Store<EndpointSlice>,
    /// Every Namespace.
    pub namespaces: Store<Namespace>,
    /// Every ServiceAccount.
    pub service_accounts: Store<ServiceAccount>,
    /// The `kube-root-ca.crt` ConfigMaps (no other ConfigMap).
    pub root_ca_maps: Store<ConfigMap>,
}

/// The watches that fill [`Caches`] (to be driven by the caller), and whether each
/// cache has had its first list.
#[derive(Default)]
struct Feeds {
    streams: Vec<gc::Feed>,
    ready: Vec<futures::future::BoxFuture<'static, bool>>,
}

impl Feeds {
    /// A cache of what `api` lists under `config`, fed by a watch added to `self`.
    fn cache<K>(&mut self, api: Api<K>, config: watcher::Config) -> Store<K>
    where
        K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
        K: Send + Sync + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let (store, writer) = reflector::store();
        self.streams.push(
            watcher::watcher(api, config)
                .default_backoff()
                .reflect(writer)
                .map(|e| e.map(|_| ()))
                .boxed(),
        );
        let first_list = store.clone();
        self.ready
            .push(async move { first_list.wait_until_ready().await.is_ok() }.boxed());
        store
    }

    /// A cache of every `K` in the cluster.
    fn cache_all<K>(&mut self, client: &kube::Client) -> Store<K>
    where
        K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
        K: Send + Sync + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    {
        self.cache(Api::all(client.clone()), watcher::Config::default())
    }

    /// The watches, and a future that says whether every cache has had its first
    /// list (`false`: a watch ended first).
    fn split(self) -> (Vec<gc::Feed>, impl Future<Output = bool>) {
        let ready = futures::future::join_all(self.ready);
        (
            self.streams,
            async move { ready.await.into_iter().all(|ok| ok) },
        )
    }
}

/// Runs every controller with `client` until `stop` fires.
pub async fn run(client: kube::Client, options: ControllerOptions, stop: CancellationToken) {
    let mut feeds = Feeds::default();
    let caches = Caches {
        nodes: feeds.cache_all(&client),
        leases: feeds.cache(
            Api::namespaced(client.clone(), "kube-node-lease"),
            watcher::Config::default(),
        ),
        pods: feeds.cache_all(&client),
        replica_sets: feeds.cache_all(&client),
        deployments: feeds.cache_all(&client),
        jobs: feeds.cache_all(&client),
        daemon_sets: feeds.cache_all(&client),
        stateful_sets: feeds.cache_all(&client),
        controller_revisions: feeds.cache_all(&client),
        cron_jobs: feeds.cache_all(&client),
        services: feeds.cache_all(&client),
        endpoints: feeds.cache_all(&client),
        endpoint_slices: feeds.cache_all(&client),
        namespaces: feeds.cache_all(&client),
        service_accounts: feeds.cache_all(&client),
        root_ca_maps: feeds.cache(
            Api::all(client.clone()),
            watcher::Config::default().fields(&format!(
                "metadata.name={}",
                service_accounts::ROOT_CA_CONFIG_MAP
            )),
        ),
    };
    let (graph, graph_feeds) = gc::Graph::new(&client);
    let (streams, typed_ready) = feeds.split();
    let watches = futures::stream::select_all(streams.into_iter().chain(graph_feeds));
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
            if !typed_ready.await || !graph.wait_until_ready().await {
                return;
            }
            tokio::join!(
                node_lifecycle::run(client.clone(), caches.clone(), options.clone()),
                replicaset::run(client.clone(), caches.clone(), options.clone()),
                deployment::run(client.clone(), caches.clone(), options.clone()),
                job::run(client.clone(), caches.clone(), options.clone()),
                daemonset::run(client.clone(), caches.clone(), options.clone()),
                statefulset::run(client.clone(), caches.clone(), options.clone()),
                cronjob::run(client.clone(), caches.clone(), options.clone()),
                endpoints::run(client.clone(), caches.clone(), options.clone()),
                service_accounts::run(client.clone(), caches.clone(), options.clone()),
                gc::run(client.clone(), graph.clone(), options.clone()),
            );
        } => {}
    }
    info!("controllers stop");
}
