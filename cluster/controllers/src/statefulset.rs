//! The StatefulSet controller: each StatefulSet keeps `spec.replicas` pods with stable
//! identities, `<set>-<ordinal>` from `spec.ordinals.start` up, whose hostname is
//! their name and whose subdomain is the set's governing Service. Under the default
//! `OrderedReady` policy a pod is created only when every lower ordinal is Running
//! and Ready, and on scale-down the highest goes first, one at a time; `Parallel`
//! creates and deletes them all at once. A failed pod is deleted and made again under
//! the same name.
//!
//! Template revisions are ControllerRevisions (`<set>-<hash>`, numbered, labelled
//! with the template's labels so `kubectl rollout history|undo` finds them); pods
//! carry their revision in `controller-revision-hash`. A RollingUpdate replaces the
//! out-of-date pods from the highest ordinal down to the partition, each one only
//! when the pods above are Running and Ready; ordinals below the partition are made
//! from the current revision. `OnDelete` leaves replacing to the user. Unused
//! revisions beyond `revisionHistoryLimit` are deleted. Status reports replicas,
//! ready, current and updated counts and both revisions.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;
use tracing::{info, warn};

use crate::daemonset::REVISION_HASH_LABEL;
use crate::deployment::{normalised, template_hash};
use crate::expectations::Expectations;
use crate::pods::{self, ready};
use crate::{Caches, ControllerOptions};
use cairn_events::{self as events, Involved, Reporter};

/// The label naming a StatefulSet pod (for a per-pod Service).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label giving a StatefulSet pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// The label a ControllerRevision carries with its hash.
pub const REVISION_LABEL: &str = "controller.kubernetes.io/hash";
const COMPONENT: &str = "statefulset-controller";

/// Runs the StatefulSet controller over `caches` (never returns; dropped to stop).
pub async fn run(client: kube::Client, caches: Caches, options: ControllerOptions) {
    let mut expectations: HashMap<String, Expectations> = HashMap::new();
    let mut tick = tokio::time::interval(options.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sets = caches.stateful_sets.state();
        let pods = caches.pods.state();
        let revisions = caches.controller_revisions.state();
        expectations.retain(|uid, _| sets.iter().any(|s| s.metadata.uid.as_deref() == Some(uid)));
        for set in sets {
            let Some(uid) = set.metadata.uid.clone() else {
                continue;
            };
            if set.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let owned: Vec<Arc<Pod>> = pods
                .iter()
                .filter(|p| pods::controller_uid(&p.metadata, "StatefulSet") == Some(uid.as_str()))
                .cloned()
                .collect();
            let mut history: Vec<Arc<ControllerRevision>> = revisions
                .iter()
                .filter(|r| pods::controller_uid(&r.metadata, "StatefulSet") == Some(uid.as_str()))
                .cloned()
                .collect();
            history.sort_by_key(|r| r.revision.unwrap_or(0));
            let expected = expectations.entry(uid).or_default();
            if !expected.settled(&owned, |p| p.metadata.name.clone()) {
                continue;
            }
            let mut sync = Sync {
                client: &client,
                options: &options,
                set: &set,
                expected,
            };
            let Some(revisions) = sync.revisions(&history).await else {
                continue;
            };
            sync.reconcile(&owned, &revisions).await;
            sync.write_status(&owned, &revisions).await;
            sync.trim_history(&history, &owned, &revisions).await;
        }
    }
}

/// The ordinal in a pod's name, if it is `<set>-<n>`.
pub fn ordinal(set: &str, pod: &str) -> Option<i32> {
    let number = pod.strip_prefix(set)?.strip_prefix('-')?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    number.parse().ok()
}

/// Whether a pod counts as up: Running, Ready and not being deleted.
fn healthy(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && pods::phase(pod) == Some("Running") && ready(pod)
}

fn revision_of(pod: &Pod) -> Option<&str> {
    pod.labels().get(REVISION_HASH_LABEL).map(String::as_str)
}

/// The revisions a pass works with: the one the template is now (update), the one
/// the set had before it (current), and the template each holds.
struct Revisions {
    update: String,
    update_template: PodTemplateSpec,
    current: String,
    current_template: PodTemplateSpec,
}

/// The template a ControllerRevision records.
fn revision_template(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut template = revision.data.0.get("spec")?.get("template")?.clone();
    if let Some(map) = template.as_object_mut() {
        map.remove("$patch");
    }
    serde_json::from_value(template).ok()
}

/// One pass over one StatefulSet.
struct Sync<'a> {
    client: &'a kube::Client,
    options: &'a ControllerOptions,
    set: &'a StatefulSet,
    expected: &'a mut Expectations,
}

impl Sync<'_> {
    fn name(&self) -> String {
        self.set.name_any()
    }

    fn namespace(&self) -> String {
        self.set.namespace().unwrap_or_else(|| "default".into())
    }

    fn owner(&self) -> Option<OwnerReference> {
        Some(OwnerReference {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            name: self.name(),
            uid: self.set.metadata.uid.clone()?,
            controller: Some(true),
            block_owner_deletion: Some(true),
        })
    }

    async fn event(&self, kind: &str, reason: &str, message: &str) {
        let reporter = Reporter {
            component: COMPONENT,
            instance: &self.options.instance,
        };
        let involved = Involved {
            api_version: "apps/v1",
            kind: "StatefulSet",
            namespace: self.set.metadata.namespace.as_deref(),
            name: self.set.metadata.name.as_deref().unwrap_or_default(),
            uid: self.set.metadata.uid.as_deref(),
        };
        events::record(self.client, reporter, involved, kind, reason, message).await;
    }

    /// Finds or records the revision of the current template, and the current one.
    async fn revisions(&self, history: &[Arc<ControllerRevision>]) -> Option<Revisions> {
        let spec = &self.set.spec;
        let template = &spec.template;
        let status = self.set.status.as_ref();
        let collisions = status.and_then(|s| s.collision_count);
        let wanted = normalised(template);
        let next_number = history.last().map_or(1, |r| r.revision.unwrap_or(0) + 1);
        let api: Api<ControllerRevision> = Api::namespaced(self.client.clone(), &self.namespace());
        let update = match history
            .iter()
            .find(|r| revision_template(r).is_some_and(|t| normalised(&t) == wanted))
        {
            // Back to an earlier template (a rollback): it becomes the newest.
            Some(existing) => {
                if existing.revision.unwrap_or(0) + 1 != next_number {
                    let patch = json!({"revision": next_number});
                    if let Err(err) = api
                        .patch(
                            &existing.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await
                    {
                        warn!(statefulset = %self.name(), error = %err, "renumbering a revision failed");
                        return None;
                    }
                }
                existing.name_any()
            }
            None => {
                let hash = template_hash(template, collisions);
                let name = format!("{}-{hash}", self.name());
                let mut labels = template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                labels.insert(REVISION_LABEL.into(), hash);
                let mut recorded = serde_json::to_value(template).ok()?;
                recorded
                    .as_object_mut()?
                    .insert("$patch".into(), json!("replace"));
                let revision = ControllerRevision {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: self.set.namespace(),
                        labels: Some(labels),
                        owner_references: Some(vec![self.owner()?]),
                        ..ObjectMeta::default()
                    },
                    data: RawExtension(json!({"spec": {"template": recorded}})),
                    revision: Some(next_number),
                };
                match api.create(&PostParams::default(), &revision).await {
                    Ok(_) => {
                        info!(statefulset = %self.name(), revision = %name, number = next_number, "recorded a revision")
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        // The name is taken by another template: hash again with
                        // one more collision (or the cache has not seen ours yet).
                        if history.iter().any(|r| r.name_any() == name) {
                            let count = collisions.unwrap_or(0) + 1;
                            let sets: Api<StatefulSet> =
                                Api::namespaced(self.client.clone(), &self.namespace());
                            let patch = json!({"status": {"collisionCount": count}});
                            if let Err(err) = sets
                                .patch_status(
                                    &self.name(),
                                    &PatchParams::default(),
                                    &Patch::Merge(&patch),
                                )
                                .await
                            {
                                warn!(statefulset = %self.name(), error = %err, "recording a hash collision failed");
                            }
                        }
                        return None;
                    }
                    Err(err) => {
                        warn!(statefulset = %self.name(), error = %err, "recording a revision failed");
                        return None;
                    }
                }
                name
            }
        };
        let current = status
            .and_then(|s| s.current_revision.clone())
            .filter(|c| *c == update || history.iter().any(|r| r.name_any() == *c))
            .unwrap_or_else(|| update.clone());
        let current_template = history
            .iter()
            .find(|r| r.name_any() == current)
            .and_then(|r| revision_template(r))
            .unwrap_or_else(|| template.clone());
        Some(Revisions {
            update,
            update_template: template.clone(),
            current,
            current_template,
        })
    }

    /// The pod of `ordinal`, made from `template` of `revision`.
    fn pod(&self, ordinal: i32, template: &PodTemplateSpec, revision: &str) -> Option<Pod> {
        let set = self.name();
        let name = format!("{set}-{ordinal}");
        let meta = template.metadata.clone().unwrap_or_default();
        let mut labels = meta.labels.unwrap_or_default();
        labels.insert(POD_NAME_LABEL.into(), name.clone());
        labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
        labels.insert(REVISION_HASH_LABEL.into(), revision.to_owned());
        let mut spec = template.spec.clone()?;
        spec.hostname = Some(name.clone());
        let service = &self.set.spec.service_name;
        if let Some(service) = service.as_ref().filter(|s| !s.is_empty()) {
            spec.subdomain = Some(service.clone());
        }
        Some(Pod {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: self.set.namespace(),
                labels: Some(labels),
                annotations: meta.annotations,
                finalizers: meta.finalizers,
                owner_references: Some(vec![self.owner()?]),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
            status: None,
        })
    }

    /// Creates, replaces and deletes pods toward the spec, in order where it asks.
    async fn reconcile(&mut self, owned: &[Arc<Pod>], revisions: &Revisions) {
        let spec = &self.set.spec;
        if spec
            .volume_claim_templates
            .as_ref()
            .is_some_and(|t| !t.is_empty())
        {
            self.event(
                "Warning",
                "FailedCreate",
                "volumeClaimTemplates are not supported: Cairn has no PersistentVolumeClaims",
            )
            .await;
            return;
        }
        let set = self.name();
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let start = spec
            .ordinals
            .as_ref()
            .and_then(|o| o.start)
            .unwrap_or(0)
            .max(0);
        let ordered = spec.pod_management_policy.as_deref() != Some("Parallel");
        let rolling = spec
            .update_strategy
            .as_ref()
            .is_none_or(|s| s.type_.as_deref() != Some("OnDelete"));
        let partition = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0)
            .max(0);
        let mut slots: Vec<Option<&Arc<Pod>>> = vec![None; usize::try_from(replicas).unwrap_or(0)];
        let mut condemned: Vec<(i32, &Arc<Pod>)> = Vec::new();
        for pod in owned {
            let Some(n) = ordinal(&set, &pod.name_any()) else {
                continue;
            };
            match usize::try_from(n - start).ok().filter(|i| *i < slots.len()) {
                Some(i) => slots[i] = Some(pod),
                None => condemned.push((n, pod)),
            }
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace());

        // Missing and failed members, lowest ordinal first.
        for (i, slot) in slots.iter().enumerate() {
            let n = start + i32::try_from(i).unwrap_or(i32::MAX);
            match slot {
                None => {
                    let (template, revision) = if rolling && n < start + partition {
                        (&revisions.current_template, &revisions.current)
                    } else {
                        (&revisions.update_template, &revisions.update)
                    };
                    let Some(pod) = self.pod(n, template, revision) else {
                        return;
                    };
                    let name = pod.name_any();
                    match pods.create(&PostParams::default(), &pod).await {
                        Ok(_) => {
                            info!(statefulset = %set, pod = %name, "created a pod");
                            self.expected.created(name.clone());
                            self.event(
                                "Normal",
                                "SuccessfulCreate",
                                &format!("create Pod {name} in StatefulSet {set} successful"),
                            )
                            .await;
                        }
                        // Made already; the cache will show it.
                        Err(kube::Error::Api(status)) if status.code == 409 => return,
                        Err(err) => {
                            warn!(statefulset = %set, pod = %name, error = %err, "creating a pod failed");
                            self.event(
                                "Warning",
                                "FailedCreate",
                                &format!(
                                    "create Pod {name} in StatefulSet {set} failed error: {err}"
                                ),
                            )
                            .await;
                            return;
                        }
                    }
                    if ordered {
                        return;
                    }
                }
                Some(pod) if pods::finished(pod) && pod.metadata.deletion_timestamp.is_none() => {
                    info!(statefulset = %set, pod = %pod.name_any(), "deleting a finished pod to make it again");
                    self.delete(&pods, pod, "recreate").await;
                    if ordered {
                        return;
                    }
                }
                Some(pod) if ordered && !healthy(pod) => return,
                Some(_) => {}
            }
        }

        // Members beyond the replicas, highest ordinal first.
        condemned.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        for (_, pod) in &condemned {
            if pod.metadata.deletion_timestamp.is_some() {
                if ordered {
                    return;
                }
                continue;
            }
            self.delete(&pods, pod, "scale down").await;
            if ordered {
                return;
            }
        }
        if !condemned.is_empty() || !rolling {
            return;
        }

        // The rolling update: one out-of-date pod at a time, from the top down.
        for (i, slot) in slots.iter().enumerate().rev() {
            let n = start + i32::try_from(i).unwrap_or(i32::MAX);
            if n < start + partition {
                break;
            }
            let Some(pod) = slot else {
                return;
            };
            if revision_of(pod) != Some(revisions.update.as_str())
                && pod.metadata.deletion_timestamp.is_none()
            {
                info!(statefulset = %set, pod = %pod.name_any(), revision = %revisions.update, "replacing a pod with the update revision");
                self.delete(&pods, pod, "update").await;
                return;
            }
            if !healthy(pod) {
                return;
            }
        }
    }

    async fn delete(&mut self, pods: &Api<Pod>, pod: &Pod, why: &str) {
        let name = pod.name_any();
        let set = self.name();
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(&name, &params).await {
            Ok(_) => {
                info!(statefulset = %set, pod = %name, why, "deleted a pod");
                if let Some(uid) = pod.metadata.uid.clone() {
                    self.expected.deleted(uid);
                }
                self.event(
                    "Normal",
                    "SuccessfulDelete",
                    &format!("delete Pod {name} in StatefulSet {set} successful"),
                )
                .await;
            }
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(err) => {
                warn!(statefulset = %set, pod = %name, error = %err, "deleting a pod failed");
                self.event(
                    "Warning",
                    "FailedDelete",
                    &format!("delete Pod {name} in StatefulSet {set} failed error: {err}"),
                )
                .await;
            }
        }
    }

    /// Writes the status when it differs from what the server holds.
    async fn write_status(&self, owned: &[Arc<Pod>], revisions: &Revisions) {
        let live: Vec<&Arc<Pod>> = owned
            .iter()
            .filter(|p| ordinal(&self.name(), &p.name_any()).is_some())
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let count = |f: &dyn Fn(&Pod) -> bool| {
            i32::try_from(live.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
        };
        let replicas = count(&|_| true);
        let ready_count = count(&healthy);
        let now = k8s_openapi::jiff::Timestamp::now();
        let min_ready = self.set.spec.min_ready_seconds;
        let available_count = count(&|p| healthy(p) && pods::available(p, min_ready, now));
        let updated = count(&|p| revision_of(p) == Some(revisions.update.as_str()));
        let mut current_revision = revisions.current.clone();
        let mut current = count(&|p| revision_of(p) == Some(revisions.current.as_str()));
        let wanted = self.set.spec.replicas.unwrap_or(1);
        let rolling = self
            .set
            .spec
            .update_strategy
            .as_ref()
            .is_none_or(|s| s.type_.as_deref() != Some("OnDelete"));
        // A finished rolling update: the update revision becomes current.
        if rolling && updated == wanted && ready_count == wanted && replicas == wanted {
            current_revision = revisions.update.clone();
            current = updated;
        }
        let existing = self.set.status.clone().unwrap_or_default();
        let next = StatefulSetStatus {
            replicas,
            ready_replicas: Some(ready_count),
            available_replicas: Some(available_count),
            current_replicas: Some(current),
            updated_replicas: Some(updated),
            current_revision: Some(current_revision),
            update_revision: Some(revisions.update.clone()),
            observed_generation: self.set.metadata.generation,
            collision_count: existing.collision_count,
            conditions: existing.conditions.clone(),
        };
        if next == existing {
            return;
        }
        let sets: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.namespace());
        let patch = json!({"status": next});
        if let Err(err) = sets
            .patch_status(&self.name(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            warn!(statefulset = %self.name(), error = %err, "writing the status failed");
        }
    }

    /// Deletes the oldest revisions no pod uses beyond `revisionHistoryLimit`.
    async fn trim_history(
        &self,
        history: &[Arc<ControllerRevision>],
        owned: &[Arc<Pod>],
        revisions: &Revisions,
    ) {
        let limit = self.set.spec.revision_history_limit.unwrap_or(10).max(0);
        let unused: Vec<&Arc<ControllerRevision>> = history
            .iter()
            .filter(|r| {
                let name = r.name_any();
                name != revisions.update
                    && name != revisions.current
                    && !owned.iter().any(|p| revision_of(p) == Some(name.as_str()))
            })
            .collect();
        let extra = unused
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        let api: Api<ControllerRevision> = Api::namespaced(self.client.clone(), &self.namespace());
        for revision in unused.into_iter().take(extra) {
            match api
                .delete(&revision.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {
                    info!(statefulset = %self.name(), revision = %revision.name_any(), "deleted an old revision")
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => {
                    warn!(statefulset = %self.name(), error = %err, "deleting an old revision failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_come_from_names_of_the_set_only() {
        assert_eq!(ordinal("web", "web-0"), Some(0));
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "web-db-1"), None);
        assert_eq!(ordinal("web", "web-"), None);
        assert_eq!(ordinal("web", "webs-1"), None);
        assert_eq!(ordinal("web", "web-+1"), None);
    }

    #[test]
    fn a_revision_gives_back_the_template_it_recorded() {
        let revision: ControllerRevision = serde_json::from_value(json!({
            "metadata": {"name": "web-abc"},
            "revision": 2,
            "data": {"spec": {"template": {"$patch": "replace",
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}}},
        }))
        .unwrap();
        let template = revision_template(&revision).unwrap();
        assert_eq!(
            template.spec.unwrap().containers[0].image.as_deref(),
            Some("busybox:1")
        );
    }
}
