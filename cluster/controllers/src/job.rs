//! The Job controller: each Job runs pods from its template until `completions` of
//! them have succeeded, `parallelism` at a time, as kube-controller-manager does.
//!
//! - Pods are created with the Job as controlling owner and the
//!   `batch.kubernetes.io/job-tracking` finalizer, so none is lost before it is counted:
//!   a finished pod (or one being deleted before it succeeded, which counts as failed)
//!   goes first into `status.uncountedTerminatedPods`, then loses the finalizer, then
//!   moves into `succeeded` or `failed` — every step written to the API, so a new
//!   leader carries on where the last one stopped.
//! - A failed pod is replaced after a back-off (10 s, doubling, at most 6 min, from the
//!   last failed pod's end) until
//!   more than `backoffLimit` have failed: then the Job fails (`BackoffLimitExceeded`).
//!   `activeDeadlineSeconds` past `startTime` fails it too (`DeadlineExceeded`). A
//!   finished Job's remaining pods are deleted; `suspend` deletes the active ones.
//! - Conditions as Kubernetes 1.31+ writes them: `SuccessCriteriaMet` then `Complete`,
//!   or `FailureTarget` then `Failed`; `completionTime`, `startTime`, `active`, `ready`,
//!   `terminating`.
//! - `ttlSecondsAfterFinished`: the finished Job is deleted (in the background, its
//!   pods with it) that long after it finished.
//!
//! Indexed completion mode, pod failure and success policies, and counting container
//! restarts of `restartPolicy: OnFailure` pods as failures are not implemented; an
//! Indexed Job gets a `Warning` event and is left alone.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;
use tracing::{info, warn};

use crate::pods::{self, phase, ready};
use crate::{Caches, ControllerOptions};
use cairn_events::{self as events, Involved, Reporter};

/// The finalizer that keeps a Job's pod until the Job has counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
const COMPONENT: &str = "job-controller";
/// The first back-off before a failed pod is replaced; it doubles per failure.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);
/// How long a write is waited for in the cache before the controller looks afresh.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

/// What the controller knows of one Job between passes.
#[derive(Default)]
struct Memory {
    /// Pods created (by name) not yet seen in the cache.
    creating: Vec<String>,
    creating_since: Option<Instant>,
}

/// Runs the Job controller over `caches` (never returns; dropped to stop).
pub async fn run(client: kube::Client, caches: Caches, options: ControllerOptions) {
    let mut memory: HashMap<String, Memory> = HashMap::new();
    let mut tick = tokio::time::interval(options.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let jobs = caches.jobs.state();
        let pods = caches.pods.state();
        memory.retain(|uid, _| jobs.iter().any(|j| j.metadata.uid.as_deref() == Some(uid)));
        for job in jobs {
            let Some(uid) = job.metadata.uid.clone() else {
                continue;
            };
            let owned: Vec<Arc<Pod>> = pods
                .iter()
                .filter(|p| controller_uid(p) == Some(uid.as_str()))
                .cloned()
                .collect();
            let remembered = memory.entry(uid).or_default();
            let mut sync = Sync {
                client: &client,
                options: &options,
                job: &job,
                memory: remembered,
            };
            sync.run(&owned).await;
        }
    }
}

fn controller_uid(pod: &Pod) -> Option<&str> {
    pods::controller_uid(&pod.metadata, "Job")
}

/// How a pod ended, if it did: succeeded, or failed (also when it is deleted first).
fn outcome(pod: &Pod) -> Option<bool> {
    match phase(pod) {
        Some("Succeeded") => Some(true),
        Some("Failed") => Some(false),
        _ if pod.metadata.deletion_timestamp.is_some() => Some(false),
        _ => None,
    }
}

fn tracked(pod: &Pod) -> bool {
    pod.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
}

/// The back-off before the next pod after `failures` failures.
pub fn backoff(failures: i32) -> Duration {
    let doublings = u32::try_from(failures.saturating_sub(1).clamp(0, 16)).unwrap_or(0);
    BACKOFF_BASE
        .saturating_mul(2_u32.saturating_pow(doublings))
        .min(BACKOFF_MAX)
}

/// One pass over one Job.
struct Sync<'a> {
    client: &'a kube::Client,
    options: &'a ControllerOptions,
    job: &'a Job,
    memory: &'a mut Memory,
}

/// A Job's finish, once decided.
struct Finish {
    complete: bool,
    reason: &'static str,
    message: &'static str,
}

impl Sync<'_> {
    fn namespace(&self) -> String {
        self.job.namespace().unwrap_or_else(|| "default".into())
    }

    fn reporter(&self) -> Reporter<'_> {
        Reporter {
            component: COMPONENT,
            instance: &self.options.instance,
        }
    }

    fn involved(&self) -> Involved<'_> {
        Involved {
            api_version: "batch/v1",
            kind: "Job",
            namespace: self.job.metadata.namespace.as_deref(),
            name: self.job.metadata.name.as_deref().unwrap_or_default(),
            uid: self.job.metadata.uid.as_deref(),
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace())
    }

    async fn event(&self, kind: &str, reason: &str, message: &str) {
        events::record(
            self.client,
            self.reporter(),
            self.involved(),
            kind,
            reason,
            message,
        )
        .await;
    }

    async fn run(&mut self, owned: &[Arc<Pod>]) {
        let Some(spec) = self.job.spec.as_ref() else {
            return;
        };
        let status = self.job.status.clone().unwrap_or_default();
        let finished = finished_condition(self.job.status.as_ref());
        // Counting goes on even for a finished or deleted Job: its pods hold finalizers.
        let counted = self.count(owned).await;
        if self.job.metadata.deletion_timestamp.is_some() {
            return;
        }
        if let Some(complete) = finished {
            self.delete_pods(
                owned.iter().filter(|p| outcome(p).is_none()),
                "the job finished",
            )
            .await;
            self.expire(complete, &status).await;
            return;
        }
        if spec.completion_mode.as_deref() == Some("Indexed") {
            if status.start_time.is_none() {
                self.event(
                    "Warning",
                    "Unsupported",
                    "Indexed jobs are not supported by Cairn yet",
                )
                .await;
                self.write_status(json!({"startTime": Timestamp::now().to_string()}))
                    .await;
            }
            return;
        }
        if self
            .memory
            .creating_since
            .is_some_and(|s| s.elapsed() > EXPECTATION_TIMEOUT)
        {
            self.memory.creating.clear();
            self.memory.creating_since = None;
        }
        self.memory.creating.retain(|name| {
            !owned
                .iter()
                .any(|p| p.metadata.name.as_deref() == Some(name))
        });
        if !counted {
            // The status moved on: decide from the written one next pass.
            return;
        }
        // Pods finished but not counted yet count already (they are listed in the
        // status: a pass decides only once every finished pod is).
        let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
        let listed = |uids: &Option<Vec<String>>| {
            i32::try_from(uids.as_ref().map_or(0, Vec::len)).unwrap_or(i32::MAX)
        };
        let succeeded = status.succeeded.unwrap_or(0) + listed(&uncounted.succeeded);
        let failed = status.failed.unwrap_or(0) + listed(&uncounted.failed);
        let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| outcome(p).is_none()).collect();
        let active_count =
            i32::try_from(active.len() + self.memory.creating.len()).unwrap_or(i32::MAX);
        let completions = spec.completions;
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let suspended = spec.suspend == Some(true);

        // Finished?
        let deadline_passed = spec
            .active_deadline_seconds
            .zip(status.start_time.as_ref())
            .is_some_and(|(seconds, start)| {
                Timestamp::now().duration_since(start.0).as_secs() >= seconds
            });
        let finish = if completions.is_some_and(|c| succeeded >= c)
            || (completions.is_none() && succeeded > 0 && active_count == 0)
        {
            Some(Finish {
                complete: true,
                reason: "CompletionsReached",
                message: "Reached expected number of succeeded pods",
            })
        } else if failed > spec.backoff_limit.unwrap_or(6) {
            Some(Finish {
                complete: false,
                reason: "BackoffLimitExceeded",
                message: "Job has reached the specified backoff limit",
            })
        } else if deadline_passed && !suspended {
            Some(Finish {
                complete: false,
                reason: "DeadlineExceeded",
                message: "Job was active longer than specified deadline",
            })
        } else {
            None
        };
        if let Some(finish) = finish {
            // The final condition waits until every finished pod is counted.
            if listed(&uncounted.succeeded) + listed(&uncounted.failed) == 0 {
                self.finish(&finish, &status).await;
            }
            return;
        }

        if suspended {
            self.delete_pods(active.iter().copied(), "the job is suspended")
                .await;
        } else {
            let wanted = match completions {
                Some(c) => parallelism.min(c - succeeded),
                // Work queue: parallel pods until one succeeds.
                None if succeeded > 0 => 0,
                None => parallelism,
            };
            if active_count > wanted {
                let extra = usize::try_from(active_count - wanted).unwrap_or(0);
                let mut newest: Vec<&Arc<Pod>> = active.clone();
                newest.sort_by_key(|p| {
                    std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0))
                });
                self.delete_pods(newest.into_iter().take(extra), "too many active pods")
                    .await;
            } else if active_count < wanted {
                // The back-off runs from the last failed pod's end, as the API tells
                // it (a new leader keeps it).
                let last_failure = owned
                    .iter()
                    .filter(|p| phase(p) == Some("Failed"))
                    .filter_map(|p| pods::finished_at(p))
                    .max();
                let waited = last_failure.is_none_or(|at| {
                    let since = Timestamp::now().duration_since(at);
                    since.as_secs_f64() >= backoff(failed).as_secs_f64()
                });
                if waited {
                    for _ in 0..(wanted - active_count) {
                        if !self.create_pod().await {
                            break;
                        }
                    }
                }
            }
        }
        let ready_count = i32::try_from(active.iter().filter(|p| ready(p)).count()).unwrap_or(0);
        let terminating = i32::try_from(
            owned
                .iter()
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_some()
                        && !matches!(phase(p), Some("Succeeded" | "Failed"))
                })
                .count(),
        )
        .unwrap_or(0);
        let mut next = json!({});
        if status.start_time.is_none() && !suspended {
            next["startTime"] = json!(Timestamp::now().to_string());
        }
        let live_active = i32::try_from(active.len()).unwrap_or(i32::MAX);
        if status.active.unwrap_or(0) != live_active {
            next["active"] = json!(live_active);
        }
        if status.ready.unwrap_or(0) != ready_count {
            next["ready"] = json!(ready_count);
        }
        if status.terminating.unwrap_or(0) != terminating {
            next["terminating"] = json!(terminating);
        }
        let suspended_now = condition_status(self.job.status.as_ref(), "Suspended") == Some("True");
        if suspended != suspended_now {
            let (state, reason, message) = if suspended {
                ("True", "JobSuspended", "Job suspended")
            } else {
                ("False", "JobResumed", "Job resumed")
            };
            let mut conditions = status.conditions.clone().unwrap_or_default();
            set_condition(&mut conditions, "Suspended", state, reason, message);
            next["conditions"] = json!(conditions);
        }
        if next.as_object().is_some_and(|o| !o.is_empty()) {
            self.write_status(next).await;
        }
    }

    /// Moves finished pods through `uncountedTerminatedPods` into the counts; true when
    /// the written status is the one this pass decided from (nothing moved).
    async fn count(&mut self, owned: &[Arc<Pod>]) -> bool {
        let status = self.job.status.clone().unwrap_or_default();
        let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
        let mut pending_succeeded: BTreeSet<String> = uncounted
            .succeeded
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut pending_failed: BTreeSet<String> = uncounted
            .failed
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        // 1. Finished pods still tracked and not listed yet get listed.
        let mut newly = false;
        for pod in owned.iter().filter(|p| tracked(p)) {
            let (Some(uid), Some(succeeded)) = (pod.metadata.uid.clone(), outcome(pod)) else {
                continue;
            };
            if pending_succeeded.contains(&uid) || pending_failed.contains(&uid) {
                continue;
            }
            newly = true;
            if succeeded {
                pending_succeeded.insert(uid);
            } else {
                pending_failed.insert(uid);
            }
        }
        if newly {
            let patch = json!({"uncountedTerminatedPods": {
                "succeeded": pending_succeeded, "failed": pending_failed}});
            self.write_status(patch).await;
            return false;
        }
        // 2. Listed pods lose the finalizer.
        for pod in owned.iter().filter(|p| tracked(p)) {
            if pod
                .metadata
                .uid
                .as_ref()
                .is_some_and(|uid| pending_succeeded.contains(uid) || pending_failed.contains(uid))
            {
                self.untrack(pod).await;
            }
        }
        // 3. Listed pods without the finalizer (or gone) are counted.
        let still_tracked = |uid: &String| {
            owned
                .iter()
                .any(|p| p.metadata.uid.as_ref() == Some(uid) && tracked(p))
        };
        let done_succeeded: Vec<String> = pending_succeeded
            .iter()
            .filter(|u| !still_tracked(u))
            .cloned()
            .collect();
        let done_failed: Vec<String> = pending_failed
            .iter()
            .filter(|u| !still_tracked(u))
            .cloned()
            .collect();
        if done_succeeded.is_empty() && done_failed.is_empty() {
            return true;
        }
        for uid in &done_succeeded {
            pending_succeeded.remove(uid);
        }
        for uid in &done_failed {
            pending_failed.remove(uid);
        }
        let added = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        let patch = json!({
            "succeeded": status.succeeded.unwrap_or(0) + added(done_succeeded.len()),
            "failed": status.failed.unwrap_or(0) + added(done_failed.len()),
            "uncountedTerminatedPods": {"succeeded": pending_succeeded, "failed": pending_failed},
        });
        self.write_status(patch).await;
        false
    }

    async fn untrack(&self, pod: &Pod) {
        let kept: Vec<&String> = pod
            .finalizers()
            .iter()
            .filter(|f| *f != TRACKING_FINALIZER)
            .collect();
        let patch = json!({"metadata": {
            "finalizers": kept, "resourceVersion": pod.metadata.resource_version}});
        match self
            .pods()
            .patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(err) => {
                warn!(job = %self.job.name_any(), pod = %pod.name_any(), error = %err, "removing the tracking finalizer failed")
            }
        }
    }

    /// Writes `patch` into the Job's status (merge); whether it landed.
    async fn write_status(&self, mut patch: serde_json::Value) -> bool {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &self.namespace());
        // The status decided from must still be the one stored.
        let body = json!({"metadata": {"resourceVersion": self.job.metadata.resource_version},
            "status": patch.take()});
        match jobs
            .patch_status(
                &self.job.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&body),
            )
            .await
        {
            Ok(_) => true,
            Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => false,
            Err(err) => {
                warn!(job = %self.job.name_any(), error = %err, "writing the status failed");
                false
            }
        }
    }

    async fn create_pod(&mut self) -> bool {
        let Some(pod) = pod_from_template(self.job) else {
            return false;
        };
        match self.pods().create(&PostParams::default(), &pod).await {
            Ok(pod) => {
                let name = pod.name_any();
                info!(job = %format!("{}/{}", self.namespace(), self.job.name_any()), pod = %name, "created a pod");
                self.memory.creating.push(name.clone());
                self.memory.creating_since.get_or_insert_with(Instant::now);
                self.event(
                    "Normal",
                    "SuccessfulCreate",
                    &format!("Created pod: {name}"),
                )
                .await;
                true
            }
            Err(err) => {
                warn!(job = %self.job.name_any(), error = %err, "creating a pod failed");
                self.event("Warning", "FailedCreate", &format!("Error creating: {err}"))
                    .await;
                false
            }
        }
    }

    async fn delete_pods<'p>(&self, pods: impl Iterator<Item = &'p Arc<Pod>>, why: &str) {
        for pod in pods.filter(|p| p.metadata.deletion_timestamp.is_none()) {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: pod.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match self.pods().delete(&pod.name_any(), &params).await {
                Ok(_) => {
                    info!(job = %self.job.name_any(), pod = %pod.name_any(), why, "deleted a pod");
                    self.event(
                        "Normal",
                        "SuccessfulDelete",
                        &format!("Deleted pod: {}", pod.name_any()),
                    )
                    .await;
                }
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
                Err(err) => {
                    warn!(job = %self.job.name_any(), pod = %pod.name_any(), error = %err, "deleting a pod failed")
                }
            }
        }
    }

    /// Writes the interim and the final condition of a finished Job.
    async fn finish(&self, finish: &Finish, status: &k8s_openapi::api::batch::v1::JobStatus) {
        let mut conditions = status.conditions.clone().unwrap_or_default();
        let (interim, last) = if finish.complete {
            ("SuccessCriteriaMet", "Complete")
        } else {
            ("FailureTarget", "Failed")
        };
        set_condition(
            &mut conditions,
            interim,
            "True",
            finish.reason,
            finish.message,
        );
        set_condition(&mut conditions, last, "True", finish.reason, finish.message);
        let now = Timestamp::now().to_string();
        let mut patch = json!({"conditions": conditions, "active": 0, "ready": 0});
        if finish.complete {
            patch["completionTime"] = json!(now);
        }
        if self.write_status(patch).await {
            info!(job = %self.job.name_any(), reason = finish.reason, "job finished");
            if finish.complete {
                self.event("Normal", "Completed", "Job completed").await;
            } else {
                self.event("Warning", finish.reason, finish.message).await;
            }
        }
    }

    /// Deletes a finished Job whose `ttlSecondsAfterFinished` has run out.
    async fn expire(&self, complete: bool, status: &k8s_openapi::api::batch::v1::JobStatus) {
        let Some(ttl) = self
            .job
            .spec
            .as_ref()
            .and_then(|s| s.ttl_seconds_after_finished)
        else {
            return;
        };
        let kind = if complete { "Complete" } else { "Failed" };
        let Some(finished_at) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == kind)
            .and_then(|c| c.last_transition_time.as_ref())
        else {
            return;
        };
        if Timestamp::now().duration_since(finished_at.0).as_secs() < i64::from(ttl) {
            return;
        }
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &self.namespace());
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: self.job.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match jobs.delete(&self.job.name_any(), &params).await {
            Ok(_) => info!(job = %self.job.name_any(), ttl, "deleted a finished job after its TTL"),
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(err) => {
                warn!(job = %self.job.name_any(), error = %err, "deleting an expired job failed")
            }
        }
    }
}

/// `Some(true)` once a Job is Complete, `Some(false)` once Failed, `None` while it runs.
pub fn finished_condition(status: Option<&k8s_openapi::api::batch::v1::JobStatus>) -> Option<bool> {
    if condition_status(status, "Complete") == Some("True") {
        Some(true)
    } else if condition_status(status, "Failed") == Some("True") {
        Some(false)
    } else {
        None
    }
}

fn condition_status<'a>(
    status: Option<&'a k8s_openapi::api::batch::v1::JobStatus>,
    kind: &str,
) -> Option<&'a str> {
    status?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.as_str())
}

fn set_condition(
    conditions: &mut Vec<JobCondition>,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
) {
    let now = Time(Timestamp::now());
    match conditions.iter_mut().find(|c| c.type_ == kind) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Some(now.clone());
            }
            c.status = status.to_owned();
            c.reason = Some(reason.to_owned());
            c.message = Some(message.to_owned());
            c.last_probe_time = Some(now);
        }
        None => conditions.push(JobCondition {
            type_: kind.to_owned(),
            status: status.to_owned(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            last_probe_time: Some(now.clone()),
            last_transition_time: Some(now),
        }),
    }
}

/// A new pod from the Job's template, owned and tracked by it.
fn pod_from_template(job: &Job) -> Option<Pod> {
    let template = &job.spec.as_ref()?.template;
    let meta = template.metadata.clone().unwrap_or_default();
    let mut finalizers = meta.finalizers.unwrap_or_default();
    finalizers.push(TRACKING_FINALIZER.to_owned());
    Some(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", job.name_any())),
            namespace: job.namespace(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: Some(finalizers),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name: job.name_any(),
                uid: job.metadata.uid.clone()?,
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_off_doubles_from_ten_seconds_up_to_six_minutes() {
        let seconds: Vec<u64> = [1, 2, 3, 4, 6, 7, 50]
            .iter()
            .map(|f| backoff(*f).as_secs())
            .collect();
        assert_eq!(seconds, [10, 20, 40, 80, 320, 360, 360]);
        assert_eq!(backoff(0).as_secs(), 10);
    }

    #[test]
    fn a_pod_deleted_before_it_succeeded_counts_as_failed() {
        let pod = |phase: &str, deleting: bool| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "p", "deletionTimestamp": deleting.then_some("2026-01-01T00:00:00Z")},
                "status": {"phase": phase},
            }))
            .unwrap()
        };
        assert_eq!(outcome(&pod("Running", false)), None);
        assert_eq!(outcome(&pod("Running", true)), Some(false));
        assert_eq!(outcome(&pod("Succeeded", true)), Some(true));
        assert_eq!(outcome(&pod("Failed", false)), Some(false));
    }

    #[test]
    fn template_pods_carry_the_tracking_finalizer_and_the_owner() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "pi", "namespace": "default", "uid": "j-1"},
            "spec": {"template": {"metadata": {"labels": {"job-name": "pi"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}},
        }))
        .unwrap();
        let pod = pod_from_template(&job).unwrap();
        assert!(tracked(&pod));
        assert_eq!(controller_uid(&pod), Some("j-1"));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("pi-"));
    }
}
