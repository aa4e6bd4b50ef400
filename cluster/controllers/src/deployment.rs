//! The Deployment controller: each Deployment runs its pod template through
//! ReplicaSets, one per template revision, as kube-controller-manager does.
//!
//! - The *new* ReplicaSet is the one whose template equals the Deployment's (ignoring
//!   the `pod-template-hash` label). It is named `<deployment>-<hash of the template>`
//!   and created when missing, with the revision after the highest one
//!   (`deployment.kubernetes.io/revision`); a ReplicaSet brought back by
//!   `kubectl rollout undo` gets the next revision instead.
//! - `RollingUpdate` scales the new ReplicaSet up while the total stays within
//!   `replicas + maxSurge`, and the old ones down while the available pods stay at or
//!   above `replicas - maxUnavailable` (with the rounding Kubernetes uses: surge up,
//!   unavailable down, and one unavailable pod allowed when both are zero).
//!   `Recreate` scales the old ones to zero and waits for their pods to be gone first.
//! - A paused Deployment is only scaled; old ReplicaSets beyond
//!   `revisionHistoryLimit` with no pods are deleted.
//! - Status: replicas, updated, ready, available and unavailable counts, the
//!   `Available` and `Progressing` conditions (`NewReplicaSetAvailable` when done,
//!   `ProgressDeadlineExceeded` when no progress was made in
//!   `progressDeadlineSeconds`), and `observedGeneration` — what `kubectl rollout
//!   status` reads. Scaling a ReplicaSet records `ScalingReplicaSet` events.
//!
//! Writes the cache has not shown yet are waited for (bounded), so a pass never
//! decides from ReplicaSets it has already changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;
use tracing::{info, warn};

use crate::pods;
use crate::selector;
use crate::{Caches, ControllerOptions};
use cairn_events::{self as events, Involved, Reporter};

/// The revision a ReplicaSet holds among its Deployment's.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// The Deployment's replicas when the ReplicaSet was last scaled.
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
/// `replicas + maxSurge` when the ReplicaSet was last scaled.
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";
/// The label that tells the pods of one template revision from another's.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// Annotations of a Deployment not copied to its ReplicaSets (kubectl's rollback skips
/// the same ones).
const NOT_COPIED: [&str; 5] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION_ANNOTATION,
    "deployment.kubernetes.io/revision-history",
    DESIRED_REPLICAS_ANNOTATION,
    MAX_REPLICAS_ANNOTATION,
];
const COMPONENT: &str = "deployment-controller";
/// How long a write is waited for in the cache before the controller looks afresh.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

/// ReplicaSet writes of one Deployment not yet seen in the cache: the name, and the
/// resourceVersion it had before the write (`None`: created).
#[derive(Default)]
struct Pending {
    writes: Vec<(String, Option<String>)>,
    since: Option<Instant>,
}

impl Pending {
    fn settled(&mut self, sets: &[Arc<ReplicaSet>]) -> bool {
        self.writes.retain(|(name, before)| {
            let seen = sets
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(name));
            match (seen, before) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(set), Some(version)) => {
                    set.metadata.resource_version.as_ref() == Some(version)
                }
            }
        });
        let expired = self
            .since
            .is_some_and(|s| s.elapsed() > EXPECTATION_TIMEOUT);
        if expired || self.writes.is_empty() {
            *self = Self::default();
            return true;
        }
        false
    }

    fn wrote(&mut self, set: &str, before: Option<String>) {
        self.writes.push((set.to_owned(), before));
        self.since.get_or_insert_with(Instant::now);
    }
}

/// Runs the Deployment controller over `caches` (never returns; dropped to stop).
pub async fn run(client: kube::Client, caches: Caches, options: ControllerOptions) {
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut tick = tokio::time::interval(options.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let deployments = caches.deployments.state();
        let sets = caches.replica_sets.state();
        pending.retain(|uid, _| {
            deployments
                .iter()
                .any(|d| d.metadata.uid.as_deref() == Some(uid))
        });
        for deployment in deployments {
            let Some(uid) = deployment.metadata.uid.clone() else {
                continue;
            };
            if deployment.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let owned: Vec<Arc<ReplicaSet>> = sets
                .iter()
                .filter(|s| pods::controller_uid(&s.metadata, "Deployment") == Some(uid.as_str()))
                .filter(|s| selector::matches(&deployment.spec.selector, s.labels()))
                .cloned()
                .collect();
            let expected = pending.entry(uid).or_default();
            if !expected.settled(&owned) {
                continue;
            }
            let mut sync = Sync {
                client: &client,
                options: &options,
                deployment: &deployment,
                pending: expected,
            };
            sync.run(&owned, &caches).await;
        }
    }
}

fn replicas(set: &ReplicaSet) -> i32 {
    set.spec.replicas.unwrap_or(1).max(0)
}

/// Available pods of `set`, at most as many as it is meant to keep (a ReplicaSet just
/// scaled down still reports the pods it is about to delete).
fn available(set: &ReplicaSet) -> i32 {
    set.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
        .min(replicas(set))
}

fn revision(set: &ReplicaSet) -> u64 {
    set.annotations()
        .get(REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// `maxSurge` and `maxUnavailable` of a rolling update as pod counts for `replicas`.
pub fn surge_and_unavailable(deployment: &Deployment) -> (i32, i32) {
    let desired = deployment.spec.replicas.unwrap_or(1).max(0);
    let rolling = deployment
        .spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let quarter = IntOrString::String("25%".into());
    let surge = resolve(
        rolling
            .and_then(|r| r.max_surge.as_ref())
            .unwrap_or(&quarter),
        desired,
        true,
    );
    let unavailable = resolve(
        rolling
            .and_then(|r| r.max_unavailable.as_ref())
            .unwrap_or(&quarter),
        desired,
        false,
    );
    if surge == 0 && unavailable == 0 {
        // Kubernetes lets one pod go so the rollout can move at all.
        return (0, 1);
    }
    (surge, unavailable.min(desired))
}

/// An absolute or percent value out of `total`, rounded up or down.
fn resolve(value: &IntOrString, total: i32, round_up: bool) -> i32 {
    match value {
        IntOrString::Int(n) => (*n).max(0),
        IntOrString::String(text) => {
            let percent: i64 = text.trim_end_matches('%').parse().unwrap_or(0);
            let scaled = i64::from(total) * percent.max(0);
            let count = if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            };
            i32::try_from(count).unwrap_or(i32::MAX)
        }
    }
}

/// The `pod-template-hash` of `template` (FNV-1a over its serialised form and the
/// collision count, spelled in the alphabet Kubernetes uses for names).
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(count) = collision_count {
        bytes.extend_from_slice(&count.to_le_bytes());
    }
    let hash = bytes.iter().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    });
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string()
        .bytes()
        .map(|digit| char::from(ALPHABET[usize::from(digit) % ALPHABET.len()]))
        .collect()
}

/// Whether a ReplicaSet's template is `template`, leaving its hash label aside.
fn same_template(set_template: Option<&PodTemplateSpec>, template: &PodTemplateSpec) -> bool {
    let Some(set_template) = set_template else {
        return false;
    };
    let mut stripped = set_template.clone();
    let meta = stripped.metadata.get_or_insert_with(ObjectMeta::default);
    if let Some(labels) = meta.labels.as_mut() {
        labels.remove(POD_TEMPLATE_HASH_LABEL);
    }
    normalised(&stripped) == normalised(template)
}

/// A template as JSON with nulls and empty objects and lists dropped at every level,
/// for comparison: `resources: {}` from a client that writes zero values (kubectl's
/// rollback does) is the same template as one without it, as Go's semantic equality
/// in Kubernetes has it.
pub(crate) fn normalised(template: &PodTemplateSpec) -> serde_json::Value {
    fn prune(value: &mut serde_json::Value) -> bool {
        match value {
            serde_json::Value::Null => true,
            serde_json::Value::Object(map) => {
                map.retain(|_, v| !prune(v));
                map.is_empty()
            }
            serde_json::Value::Array(items) => {
                for item in items.iter_mut() {
                    prune(item);
                }
                items.is_empty()
            }
            _ => false,
        }
    }
    let mut value = serde_json::to_value(template).unwrap_or_default();
    prune(&mut value);
    value
}

/// One pass over one Deployment.
struct Sync<'a> {
    client: &'a kube::Client,
    options: &'a ControllerOptions,
    deployment: &'a Deployment,
    pending: &'a mut Pending,
}

impl Sync<'_> {
    fn namespace(&self) -> String {
        self.deployment
            .namespace()
            .unwrap_or_else(|| "default".into())
    }

    fn desired(&self) -> i32 {
        self.deployment.spec.replicas.unwrap_or(1).max(0)
    }

    fn reporter(&self) -> Reporter<'_> {
        Reporter {
            component: COMPONENT,
            instance: &self.options.instance,
        }
    }

    async fn run(&mut self, owned: &[Arc<ReplicaSet>], caches: &Caches) {
        let template = &self.deployment.spec.template;
        let mut new = owned
            .iter()
            .find(|s| same_template(s.spec.template.as_ref(), template))
            .map(|s| (**s).clone());
        let mut old: Vec<ReplicaSet> = owned
            .iter()
            .filter(|s| {
                Some(s.metadata.uid.as_deref()) != new.as_ref().map(|n| n.metadata.uid.as_deref())
            })
            .map(|s| (**s).clone())
            .collect();
        old.sort_by_key(|s| {
            (
                s.metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default(),
                s.name_any(),
            )
        });
        let paused = self.deployment.spec.paused == Some(true);
        let mut created = None;
        if paused {
            self.scale_paused(new.as_ref(), &old).await;
        } else {
            let max_old_revision = old.iter().map(revision).max().unwrap_or(0);
            if let Some(set) = &new {
                self.keep_revision(set, max_old_revision).await;
            } else {
                match self.create_new(max_old_revision, &old).await {
                    Some(set) => {
                        created = Some(set.name_any());
                        new = Some(set);
                    }
                    // A collision was counted or the create failed: next pass.
                    None => return,
                }
            }
            let Some(new_set) = new.as_ref() else {
                return;
            };
            let recreate = self
                .deployment
                .spec
                .strategy
                .as_ref()
                .and_then(|s| s.type_.as_deref())
                == Some("Recreate");
            if recreate {
                self.recreate(new_set, &old, caches).await;
            } else {
                self.roll(new_set, &old).await;
            }
            self.clean_up(&old).await;
        }
        self.write_status(new.as_ref(), &old, created.as_deref())
            .await;
        if let Some(set) = &new {
            self.record_revision(set).await;
        }
    }

    /// Creates the new ReplicaSet for the current template (`None` when it could not
    /// be, or a name collision was counted in the status).
    async fn create_new(
        &mut self,
        max_old_revision: u64,
        old: &[ReplicaSet],
    ) -> Option<ReplicaSet> {
        let deployment = self.deployment;
        let namespace = self.namespace();
        let collisions = deployment.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&deployment.spec.template, collisions);
        let name = format!("{}-{hash}", deployment.name_any());
        let (surge, _) = surge_and_unavailable(deployment);
        let desired = self.desired();
        let recreate = deployment
            .spec
            .strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            == Some("Recreate");
        // Rolling: as many as the surge allows now; Recreate: scaled once the old are gone.
        let start = if recreate {
            0
        } else {
            let total: i32 = old.iter().map(replicas).sum();
            (desired + surge - total).clamp(0, desired)
        };
        let mut template = deployment.spec.template.clone();
        let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.clone());
        let mut selector: LabelSelector = deployment.spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.clone());
        let mut annotations: BTreeMap<String, String> = deployment
            .annotations()
            .iter()
            .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        annotations.insert(
            REVISION_ANNOTATION.into(),
            (max_old_revision + 1).to_string(),
        );
        annotations.insert(DESIRED_REPLICAS_ANNOTATION.into(), desired.to_string());
        annotations.insert(
            MAX_REPLICAS_ANNOTATION.into(),
            (desired + surge).to_string(),
        );
        let set = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                labels: meta.labels.clone(),
                annotations: Some(annotations),
                owner_references: Some(vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    name: deployment.name_any(),
                    uid: deployment.metadata.uid.clone()?,
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..ObjectMeta::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(start),
                min_ready_seconds: deployment.spec.min_ready_seconds,
                selector,
                template: Some(template),
            },
            status: None,
        };
        let sets: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &namespace);
        match sets.create(&PostParams::default(), &set).await {
            Ok(set) => {
                info!(deployment = %format!("{namespace}/{}", deployment.name_any()), replicaset = %name, replicas = start, "created the new replica set");
                self.pending.wrote(&name, None);
                if start > 0 {
                    self.scaled_event(&name, 0, start).await;
                }
                Some(set)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                // Ours, not yet in the cache? Then it is the new one; else a collision.
                match sets.get(&name).await {
                    Ok(existing)
                        if pods::controller_uid(&existing.metadata, "Deployment")
                            == deployment.metadata.uid.as_deref()
                            && same_template(
                                existing.spec.template.as_ref(),
                                &deployment.spec.template,
                            ) =>
                    {
                        Some(existing)
                    }
                    Ok(_) => {
                        self.count_collision(collisions).await;
                        None
                    }
                    Err(err) => {
                        warn!(replicaset = %name, error = %err, "reading a colliding replica set failed");
                        None
                    }
                }
            }
            Err(err) => {
                warn!(replicaset = %name, error = %err, "creating the new replica set failed");
                events::record(
                    self.client,
                    self.reporter(),
                    self.involved(),
                    "Warning",
                    "FailedCreate",
                    &format!("Failed to create new replica set \"{name}\": {err}"),
                )
                .await;
                None
            }
        }
    }

    fn involved(&self) -> Involved<'_> {
        Involved {
            api_version: "apps/v1",
            kind: "Deployment",
            namespace: self.deployment.metadata.namespace.as_deref(),
            name: self.deployment.metadata.name.as_deref().unwrap_or_default(),
            uid: self.deployment.metadata.uid.as_deref(),
        }
    }

    async fn count_collision(&self, current: Option<i32>) {
        let next = current.unwrap_or(0).saturating_add(1);
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace());
        let patch = json!({"status": {"collisionCount": next}});
        if let Err(err) = deployments
            .patch_status(
                &self.deployment.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            warn!(deployment = %self.deployment.name_any(), error = %err, "counting a hash collision failed");
        }
    }

    /// Gives a ReplicaSet that became new again (a rollback) the next revision.
    async fn keep_revision(&mut self, set: &ReplicaSet, max_old_revision: u64) {
        if revision(set) > max_old_revision {
            return;
        }
        let patch = json!({"metadata": {"annotations": {
            REVISION_ANNOTATION: (max_old_revision + 1).to_string()}}});
        self.patch_set(set, &patch).await;
    }

    /// Writes the Deployment's own revision annotation from its new ReplicaSet.
    async fn record_revision(&self, set: &ReplicaSet) {
        let Some(revision) = set.annotations().get(REVISION_ANNOTATION) else {
            return;
        };
        if self.deployment.annotations().get(REVISION_ANNOTATION) == Some(revision) {
            return;
        }
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace());
        let patch = json!({"metadata": {"annotations": {REVISION_ANNOTATION: revision}}});
        if let Err(err) = deployments
            .patch(
                &self.deployment.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            warn!(deployment = %self.deployment.name_any(), error = %err, "recording the revision failed");
        }
    }

    async fn patch_set(&mut self, set: &ReplicaSet, patch: &serde_json::Value) -> bool {
        let sets: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.namespace());
        match sets
            .patch(
                &set.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => {
                self.pending
                    .wrote(&set.name_any(), set.metadata.resource_version.clone());
                true
            }
            Err(err) => {
                warn!(replicaset = %set.name_any(), error = %err, "updating the replica set failed");
                false
            }
        }
    }

    /// Scales `set` to `to`, with the annotations and the event Kubernetes gives.
    async fn scale(&mut self, set: &ReplicaSet, to: i32) {
        let from = replicas(set);
        if from == to {
            return;
        }
        let (surge, _) = surge_and_unavailable(self.deployment);
        let desired = self.desired();
        let patch = json!({
            "metadata": {"annotations": {
                DESIRED_REPLICAS_ANNOTATION: desired.to_string(),
                MAX_REPLICAS_ANNOTATION: (desired + surge).to_string(),
            }},
            "spec": {"replicas": to},
        });
        if self.patch_set(set, &patch).await {
            info!(deployment = %self.deployment.name_any(), replicaset = %set.name_any(), from, to, "scaled a replica set");
            self.scaled_event(&set.name_any(), from, to).await;
        }
    }

    async fn scaled_event(&self, set: &str, from: i32, to: i32) {
        let direction = if to > from { "up" } else { "down" };
        events::record(
            self.client,
            self.reporter(),
            self.involved(),
            "Normal",
            "ScalingReplicaSet",
            &format!("Scaled {direction} replica set {set} from {from} to {to}"),
        )
        .await;
    }

    /// A paused Deployment follows `replicas` only, on the one ReplicaSet running.
    async fn scale_paused(&mut self, new: Option<&ReplicaSet>, old: &[ReplicaSet]) {
        let running: Vec<&ReplicaSet> = new
            .into_iter()
            .chain(old.iter())
            .filter(|s| replicas(s) > 0)
            .collect();
        let target = match running.as_slice() {
            [only] => Some(*only),
            [] => new,
            _ => None,
        };
        if let Some(set) = target {
            let desired = self.desired();
            self.scale(set, desired).await;
        }
    }

    /// One step of a rolling update: the new ReplicaSet up within the surge, the old
    /// ones down within the unavailability allowed.
    async fn roll(&mut self, new: &ReplicaSet, old: &[ReplicaSet]) {
        let desired = self.desired();
        let (surge, max_unavailable) = surge_and_unavailable(self.deployment);
        let new_replicas = replicas(new);
        let total: i32 = old.iter().map(replicas).sum::<i32>() + new_replicas;
        if new_replicas > desired {
            self.scale(new, desired).await;
            return;
        }
        if new_replicas < desired && total < desired + surge {
            let up = (desired + surge - total).min(desired - new_replicas);
            self.scale(new, new_replicas + up).await;
            return;
        }
        let old_pods: i32 = old.iter().map(replicas).sum();
        if old_pods == 0 {
            return;
        }
        let min_available = desired - max_unavailable;
        let new_unavailable = (new_replicas - available(new)).max(0);
        let mut budget = total - min_available - new_unavailable;
        if budget <= 0 {
            return;
        }
        // Unhealthy old pods go first: they count for nothing.
        let mut next: Vec<i32> = old.iter().map(replicas).collect();
        for (i, set) in old.iter().enumerate() {
            let unhealthy = (next[i] - available(set)).max(0).min(budget);
            next[i] -= unhealthy;
            budget -= unhealthy;
        }
        // Then healthy ones, oldest first, while enough stay available.
        let available_now: i32 = old
            .iter()
            .zip(&next)
            .map(|(s, n)| available(s).min(*n))
            .sum::<i32>()
            + available(new);
        let mut spare = (available_now - min_available).min(budget).max(0);
        for count in next.iter_mut() {
            let down = (*count).min(spare);
            *count -= down;
            spare -= down;
        }
        for (set, to) in old.iter().zip(next) {
            self.scale(set, to).await;
        }
    }

    /// Recreate: every old pod gone before the new ReplicaSet is scaled up.
    async fn recreate(&mut self, new: &ReplicaSet, old: &[ReplicaSet], caches: &Caches) {
        let mut scaled_down = false;
        for set in old.iter().filter(|s| replicas(s) > 0) {
            self.scale(set, 0).await;
            scaled_down = true;
        }
        if scaled_down {
            return;
        }
        let old_uids: Vec<&str> = old
            .iter()
            .filter_map(|s| s.metadata.uid.as_deref())
            .collect();
        let old_pods_remain = caches.pods.state().iter().any(|p: &Arc<Pod>| {
            pods::controller_uid(&p.metadata, "ReplicaSet")
                .is_some_and(|uid| old_uids.contains(&uid))
                && !pods::finished(p)
        });
        if !old_pods_remain {
            let desired = self.desired();
            self.scale(new, desired).await;
        }
    }

    /// Deletes old ReplicaSets with no pods beyond `revisionHistoryLimit`, oldest
    /// revision first.
    async fn clean_up(&self, old: &[ReplicaSet]) {
        let limit = usize::try_from(
            self.deployment
                .spec
                .revision_history_limit
                .unwrap_or(10)
                .max(0),
        )
        .unwrap_or(0);
        let mut idle: Vec<&ReplicaSet> = old
            .iter()
            .filter(|s| {
                replicas(s) == 0
                    && s.status.as_ref().is_none_or(|st| st.replicas == 0)
                    && s.metadata.deletion_timestamp.is_none()
            })
            .collect();
        if idle.len() <= limit {
            return;
        }
        idle.sort_by_key(|s| revision(s));
        let sets: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.namespace());
        for set in &idle[..idle.len() - limit] {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: set.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            match sets.delete(&set.name_any(), &params).await {
                Ok(_) => {
                    info!(deployment = %self.deployment.name_any(), replicaset = %set.name_any(), "deleted an old replica set beyond the history limit")
                }
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
                Err(err) => {
                    warn!(replicaset = %set.name_any(), error = %err, "deleting an old replica set failed")
                }
            }
        }
    }

    /// Writes the Deployment's status from its ReplicaSets when it changed.
    async fn write_status(
        &self,
        new: Option<&ReplicaSet>,
        old: &[ReplicaSet],
        created: Option<&str>,
    ) {
        let deployment = self.deployment;
        let desired = self.desired();
        let all: Vec<&ReplicaSet> = new.into_iter().chain(old.iter()).collect();
        let status_of = |s: &ReplicaSet| s.status.clone().unwrap_or_default();
        let current = deployment.status.clone().unwrap_or_default();
        let (_, max_unavailable) = surge_and_unavailable(deployment);
        let spec_total: i32 = all.iter().map(|s| replicas(s)).sum();
        let available_total: i32 = all
            .iter()
            .map(|s| status_of(s).available_replicas.unwrap_or(0))
            .sum();
        let mut next = DeploymentStatus {
            observed_generation: deployment.metadata.generation,
            replicas: Some(all.iter().map(|s| status_of(s).replicas).sum()),
            updated_replicas: Some(new.map(|s| status_of(s).replicas).unwrap_or(0)),
            ready_replicas: Some(
                all.iter()
                    .map(|s| status_of(s).ready_replicas.unwrap_or(0))
                    .sum(),
            ),
            available_replicas: Some(available_total),
            unavailable_replicas: Some((spec_total - available_total).max(0)),
            conditions: current.conditions.clone(),
            collision_count: current.collision_count,
            terminating_replicas: current.terminating_replicas,
        };
        let now = Time(Timestamp::now());
        let mut conditions = current.conditions.clone().unwrap_or_default();
        let (status, reason, message) = if available_total >= desired - max_unavailable {
            (
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            )
        } else {
            (
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        };
        set_condition(
            &mut conditions,
            "Available",
            status,
            reason,
            message.to_owned(),
            &now,
            false,
        );
        let counts = |s: &DeploymentStatus| {
            (
                s.replicas,
                s.updated_replicas,
                s.ready_replicas,
                s.available_replicas,
            )
        };
        let new_name = new.map(|s| s.name_any()).unwrap_or_default();
        let complete = new.is_some()
            && next.updated_replicas == Some(desired)
            && next.replicas == Some(desired)
            && available_total >= desired
            && new.map(|s| status_of(s).observed_generation)
                == Some(new.and_then(|s| s.metadata.generation));
        if deployment.spec.paused == Some(true) {
            set_condition(
                &mut conditions,
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
                &now,
                false,
            );
        } else if complete {
            set_condition(
                &mut conditions,
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                &now,
                false,
            );
        } else if let Some(name) = created {
            set_condition(
                &mut conditions,
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                format!("Created new replica set \"{name}\""),
                &now,
                true,
            );
        } else if counts(&next) != counts(&current)
            || condition_reason(&conditions, "Progressing") == Some("DeploymentPaused")
        {
            set_condition(
                &mut conditions,
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
                &now,
                true,
            );
        } else if let Some(deadline) = deployment.spec.progress_deadline_seconds {
            let last_progress = conditions
                .iter()
                .find(|c| {
                    c.type_.as_deref() == Some("Progressing") && c.status.as_deref() == Some("True")
                })
                .and_then(|c| c.last_update_time.as_ref())
                .map(|t| t.0);
            let overdue = last_progress.is_some_and(|t| {
                Timestamp::now().duration_since(t).as_secs() > i64::from(deadline)
            });
            if overdue {
                set_condition(
                    &mut conditions,
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                    &now,
                    false,
                );
            }
        }
        next.conditions = Some(conditions);
        if next == current {
            return;
        }
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace());
        let patch = json!({"status": next});
        if let Err(err) = deployments
            .patch_status(
                &deployment.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            warn!(deployment = %deployment.name_any(), error = %err, "writing the status failed");
        }
    }
}

fn condition_reason<'a>(conditions: &'a [DeploymentCondition], kind: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_.as_deref() == Some(kind))
        .and_then(|c| c.reason.as_deref())
}

/// Sets a condition, keeping its transition time unless the status changes and its
/// update time unless the reason or message changes (or `progressed` says so).
fn set_condition(
    conditions: &mut Vec<DeploymentCondition>,
    kind: &str,
    status: &str,
    reason: &str,
    message: String,
    now: &Time,
    progressed: bool,
) {
    let existing = conditions
        .iter_mut()
        .find(|c| c.type_.as_deref() == Some(kind));
    match existing {
        Some(c) => {
            let changed = c.status.as_deref() != Some(status);
            let reworded = c.reason.as_deref() != Some(reason)
                || c.message.as_deref() != Some(message.as_str());
            if changed {
                c.last_transition_time = Some(now.clone());
            }
            if changed || reworded || progressed {
                c.last_update_time = Some(now.clone());
            }
            c.status = Some(status.to_owned());
            c.reason = Some(reason.to_owned());
            c.message = Some(message);
        }
        None => conditions.push(DeploymentCondition {
            type_: Some(kind.to_owned()),
            status: Some(status.to_owned()),
            reason: Some(reason.to_owned()),
            message: Some(message),
            last_transition_time: Some(now.clone()),
            last_update_time: Some(now.clone()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(
        replicas: i32,
        surge: serde_json::Value,
        unavailable: serde_json::Value,
    ) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "d-1"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "a", "image": "x"}]}},
            },
        }))
        .unwrap()
    }

    #[test]
    fn surge_rounds_up_unavailability_down_and_both_zero_allow_one() {
        assert_eq!(
            surge_and_unavailable(&deployment(10, json!("25%"), json!("25%"))),
            (3, 2)
        );
        assert_eq!(
            surge_and_unavailable(&deployment(3, json!(1), json!(0))),
            (1, 0)
        );
        assert_eq!(
            surge_and_unavailable(&deployment(3, json!(0), json!(0))),
            (0, 1)
        );
        assert_eq!(
            surge_and_unavailable(&deployment(1, json!("0%"), json!("10%"))),
            (0, 1)
        );
        assert_eq!(
            surge_and_unavailable(&deployment(2, json!("50%"), json!(5))),
            (1, 2)
        );
    }

    #[test]
    fn the_hash_follows_the_template_and_the_collision_count() {
        let d = deployment(1, json!(1), json!(0));
        let hash = template_hash(&d.spec.template, None);
        assert_eq!(hash, template_hash(&d.spec.template, None));
        assert!(
            hash.chars()
                .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
            "{hash}"
        );
        assert_ne!(hash, template_hash(&d.spec.template, Some(1)));
        let mut changed = d.spec.template.clone();
        changed.spec.as_mut().unwrap().containers[0].image = Some("y".into());
        assert_ne!(hash, template_hash(&changed, None));
    }

    #[test]
    fn a_replica_set_template_equals_the_deployment_s_but_for_its_hash_label() {
        let d = deployment(1, json!(1), json!(0));
        let mut template = d.spec.template.clone();
        template
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(POD_TEMPLATE_HASH_LABEL.into(), "abc".into());
        assert!(same_template(Some(&template), &d.spec.template));
        // Zero values a client wrote out are no difference.
        let mut written = template.clone();
        written.spec.as_mut().unwrap().containers[0].resources = Some(Default::default());
        written.metadata.as_mut().unwrap().annotations = Some(Default::default());
        assert!(same_template(Some(&written), &d.spec.template));
        template.spec.as_mut().unwrap().containers[0].image = Some("y".into());
        assert!(!same_template(Some(&template), &d.spec.template));
        assert!(!same_template(None, &d.spec.template));
    }
}
