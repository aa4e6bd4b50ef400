//! The garbage collector: objects whose owners are gone are deleted, as
//! kube-controller-manager's does it for `ownerReferences`.
//!
//! - **Background**: a dependent all of whose owners are gone (checked against the API,
//!   never the cache alone: an owner and its dependent arrive on different watches) is
//!   deleted; one that keeps an owner only loses the references to the gone ones.
//! - **Foreground**: an owner being deleted with the `foregroundDeletion` finalizer has
//!   its dependents deleted (in the foreground too, so the chain unwinds from the
//!   leaves) and loses the finalizer once no dependent with `blockOwnerDeletion` is
//!   left.
//! - **Orphan**: an owner being deleted with the `orphan` finalizer has its reference
//!   removed from every dependent, then loses the finalizer.
//!
//! It follows the kinds in [`KINDS`] (owners or dependents elsewhere are left alone:
//! nothing is deleted on a guess).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{Store, store::Writer};
use kube::runtime::watcher;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::ControllerOptions;

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

/// The kinds the collector follows, as owners and as dependents.
pub fn kinds() -> Vec<ApiResource> {
    vec![
        ApiResource::erase::<Pod>(&()),
        ApiResource::erase::<ConfigMap>(&()),
        ApiResource::erase::<Secret>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<Endpoints>(&()),
        ApiResource::erase::<ServiceAccount>(&()),
        ApiResource::erase::<EndpointSlice>(&()),
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<ReplicaSet>(&()),
        ApiResource::erase::<DaemonSet>(&()),
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<Job>(&()),
        ApiResource::erase::<CronJob>(&()),
    ]
}

/// The names of [`kinds`], for documentation and logs.
pub const KINDS: &str = "pods, configmaps, secrets, services, endpoints, serviceaccounts, endpointslices, deployments, replicasets, daemonsets, statefulsets, jobs, cronjobs";

/// The collector's view of the cluster: one cache per followed kind.
#[derive(Clone)]
pub struct Graph {
    kinds: Vec<(ApiResource, Store<DynamicObject>)>,
}

/// One watch feeding a [`Graph`] cache.
pub type Feed = BoxStream<'static, Result<(), watcher::Error>>;

impl Graph {
    /// A graph over [`kinds`] and the watches that fill it (to be driven by the caller).
    pub fn new(client: &kube::Client) -> (Self, Vec<Feed>) {
        let mut stores = Vec::new();
        let mut feeds = Vec::new();
        for resource in kinds() {
            let writer = Writer::<DynamicObject>::new(resource.clone());
            stores.push((resource.clone(), writer.as_reader()));
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            feeds.push(
                watcher::watcher(api, watcher::Config::default())
                    .default_backoff()
                    .reflect(writer)
                    .map(|e| e.map(|_| ()))
                    .boxed(),
            );
        }
        (Self { kinds: stores }, feeds)
    }

    /// Waits for every cache's first list; false if a watch ended first.
    pub async fn wait_until_ready(&self) -> bool {
        for (_, store) in &self.kinds {
            if store.wait_until_ready().await.is_err() {
                return false;
            }
        }
        true
    }

    fn resource_for(&self, reference: &OwnerReference) -> Option<&ApiResource> {
        self.kinds
            .iter()
            .map(|(r, _)| r)
            .find(|r| r.api_version == reference.api_version && r.kind == reference.kind)
    }
}

/// An object with the kind it was listed as.
#[derive(Clone)]
struct Item {
    kind: usize,
    object: Arc<DynamicObject>,
}

impl Item {
    fn uid(&self) -> &str {
        self.object.metadata.uid.as_deref().unwrap_or_default()
    }
}

struct Collector {
    client: kube::Client,
    graph: Graph,
    /// Dependents deleted, by uid, until the cache stops showing them.
    deleted: HashSet<String>,
}

/// Runs the collector over `graph` (never returns; dropped to stop).
pub async fn run(client: kube::Client, graph: Graph, options: ControllerOptions) {
    let mut collector = Collector {
        client,
        graph,
        deleted: HashSet::new(),
    };
    let mut tick = tokio::time::interval(options.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        collector.pass().await;
    }
}

impl Collector {
    fn api(&self, kind: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, kind),
            None => Api::all_with(self.client.clone(), kind),
        }
    }

    async fn pass(&mut self) {
        let nodes: Vec<Item> = self
            .graph
            .kinds
            .iter()
            .enumerate()
            .flat_map(|(kind, (_, store))| {
                store
                    .state()
                    .into_iter()
                    .map(move |object| Item { kind, object })
            })
            .collect();
        let by_uid: HashMap<&str, &Item> = nodes.iter().map(|n| (n.uid(), n)).collect();
        let mut dependents: HashMap<&str, Vec<&Item>> = HashMap::new();
        for node in &nodes {
            for reference in node.object.owner_references() {
                dependents
                    .entry(reference.uid.as_str())
                    .or_default()
                    .push(node);
            }
        }
        self.deleted.retain(|uid| by_uid.contains_key(uid.as_str()));
        for owner in nodes
            .iter()
            .filter(|n| n.object.metadata.deletion_timestamp.is_some())
        {
            let finalizers = owner.object.finalizers();
            let deps = dependents.get(owner.uid()).cloned().unwrap_or_default();
            if finalizers.iter().any(|f| f == ORPHAN) {
                self.orphan(owner, &deps).await;
            } else if finalizers.iter().any(|f| f == FOREGROUND) {
                let parents: HashSet<&str> = deps
                    .iter()
                    .map(|d| d.uid())
                    .filter(|uid| dependents.contains_key(uid))
                    .collect();
                self.foreground(owner, &deps, &parents).await;
            }
        }
        let candidates: Vec<&Item> = nodes
            .iter()
            .filter(|n| {
                n.object.metadata.deletion_timestamp.is_none()
                    && !n.object.owner_references().is_empty()
                    && !self.deleted.contains(n.uid())
            })
            .collect();
        for node in candidates {
            let references = node.object.owner_references();
            let mut gone = Vec::new();
            for reference in references {
                if by_uid.contains_key(reference.uid.as_str()) {
                    continue;
                }
                if self.owner_is_gone(node, reference).await {
                    gone.push(reference.uid.clone());
                }
            }
            if gone.is_empty() {
                continue;
            }
            if gone.len() == references.len() {
                self.delete(node, DeleteParams::background(), "its owners are gone")
                    .await;
            } else {
                self.drop_references(node, &gone).await;
            }
        }
    }

    /// Whether the owner named by `reference` is gone, asked of the API (a kind the
    /// collector does not follow is never taken as gone).
    async fn owner_is_gone(&self, dependent: &Item, reference: &OwnerReference) -> bool {
        let Some(resource) = self.graph.resource_for(reference) else {
            return false;
        };
        let api = self.api(resource, dependent.object.metadata.namespace.as_deref());
        match api.get_opt(&reference.name).await {
            Ok(None) => true,
            Ok(Some(owner)) => owner.metadata.uid.as_deref() != Some(reference.uid.as_str()),
            Err(err) => {
                debug!(owner = %reference.name, error = %err, "could not look the owner up");
                false
            }
        }
    }

    /// Deletes `node` (with `params`), precondition its uid.
    async fn delete(&mut self, node: &Item, params: DeleteParams, why: &str) {
        let (resource, _) = &self.graph.kinds[node.kind];
        let object = &node.object;
        let name = object.name_any();
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: object.metadata.uid.clone(),
                resource_version: None,
            }),
            ..params
        };
        let api = self.api(resource, object.metadata.namespace.as_deref());
        match api.delete(&name, &params).await {
            Ok(_) => {
                info!(kind = %resource.kind, namespace = ?object.metadata.namespace, %name, why, "garbage collected");
                self.deleted.insert(node.uid().to_owned());
            }
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(err) => {
                warn!(kind = %resource.kind, %name, error = %err, "garbage collection failed")
            }
        }
    }

    /// Removes the owner references to `uids` from `node`.
    async fn drop_references(&self, node: &Item, uids: &[String]) -> bool {
        let (resource, _) = &self.graph.kinds[node.kind];
        let object = &node.object;
        let kept: Vec<&OwnerReference> = object
            .owner_references()
            .iter()
            .filter(|r| !uids.contains(&r.uid))
            .collect();
        let patch = json!({"metadata": {
            "ownerReferences": kept,
            "resourceVersion": object.metadata.resource_version,
        }});
        self.patch(resource, object, &patch, "removing owner references")
            .await
    }

    async fn patch(
        &self,
        resource: &ApiResource,
        object: &DynamicObject,
        patch: &serde_json::Value,
        what: &str,
    ) -> bool {
        let api = self.api(resource, object.metadata.namespace.as_deref());
        match api
            .patch(
                &object.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => true,
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => false,
            Err(err) => {
                warn!(kind = %resource.kind, name = %object.name_any(), error = %err, what, "failed");
                false
            }
        }
    }

    /// Removes `finalizer` from the owner being deleted.
    async fn finish(&self, owner: &Item, finalizer: &str) {
        let (resource, _) = &self.graph.kinds[owner.kind];
        let object = &owner.object;
        let kept: Vec<&String> = object
            .finalizers()
            .iter()
            .filter(|f| *f != finalizer)
            .collect();
        let patch = json!({"metadata": {
            "finalizers": kept,
            "resourceVersion": object.metadata.resource_version,
        }});
        if self
            .patch(resource, object, &patch, "removing a finalizer")
            .await
        {
            info!(kind = %resource.kind, name = %object.name_any(), finalizer, "dependents handled; finalizer removed");
        }
    }

    /// Orphan propagation: every dependent forgets the owner, then the owner goes.
    async fn orphan(&self, owner: &Item, dependents: &[&Item]) {
        let mut all = true;
        for dependent in dependents {
            all &= self
                .drop_references(dependent, &[owner.uid().to_owned()])
                .await;
        }
        if all {
            self.finish(owner, ORPHAN).await;
        }
    }

    /// Foreground propagation: dependents deleted first (those in `parents`, having
    /// dependents of their own, in the foreground too), the owner once the blocking
    /// ones are gone.
    async fn foreground(&mut self, owner: &Item, dependents: &[&Item], parents: &HashSet<&str>) {
        let uid = owner.uid().to_owned();
        let mut blocking = false;
        for dependent in dependents {
            let reference = dependent
                .object
                .owner_references()
                .iter()
                .find(|r| r.uid == uid);
            blocking |= reference.is_some_and(|r| r.block_owner_deletion == Some(true));
            if dependent.object.metadata.deletion_timestamp.is_some()
                || self.deleted.contains(dependent.uid())
            {
                continue;
            }
            if dependent.object.owner_references().len() > 1 {
                // It has other owners: it only stops naming this one.
                self.drop_references(dependent, std::slice::from_ref(&uid))
                    .await;
            } else {
                let params = if parents.contains(dependent.uid()) {
                    DeleteParams::foreground()
                } else {
                    DeleteParams::background()
                };
                self.delete(dependent, params, "its owner is deleted in the foreground")
                    .await;
            }
        }
        if !blocking {
            self.finish(owner, FOREGROUND).await;
        }
    }
}
