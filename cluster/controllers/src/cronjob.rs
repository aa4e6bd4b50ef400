//! The CronJob controller: each CronJob makes a Job from its `jobTemplate` at every
//! time its `schedule` names (five-field cron or `@hourly`-style, in `spec.timeZone`,
//! an IANA zone, UTC when unset), as kube-controller-manager's `cronjob-controller`
//! does:
//!
//! - the Job is `<cronjob>-<minutes since the epoch of the scheduled time>`, so a
//!   scheduled time makes one Job however often the controller looks, and it carries
//!   the `batch.kubernetes.io/cronjob-scheduled-timestamp` annotation;
//! - only the most recent missed time runs (after a pause, not one Job per minute
//!   missed), and with `startingDeadlineSeconds` only one within the deadline;
//! - `concurrencyPolicy`: `Allow` runs alongside active Jobs, `Forbid` waits for them
//!   (the time stays due until they finish or its deadline passes), `Replace` deletes
//!   them first;
//! - `suspend` stops new Jobs; finished Jobs beyond `successfulJobsHistoryLimit` (3)
//!   and `failedJobsHistoryLimit` (1) are deleted, oldest first, with their pods;
//! - status keeps `active` (references to running Jobs), `lastScheduleTime` and
//!   `lastSuccessfulTime`; events say what happened (`SuccessfulCreate`,
//!   `SawCompletedJob`, `SuccessfulDelete`, `JobAlreadyActive`, `InvalidSchedule`,
//!   `UnknownTimeZone`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cairn_cron::{Schedule, ScheduleError};
use chrono::{DateTime, TimeZone, Utc};
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use serde_json::json;
use tracing::{info, warn};

use crate::expectations::Expectations;
use crate::job::finished_condition;
use crate::pods;
use crate::{Caches, ControllerOptions};
use cairn_events::{self as events, Involved, Reporter};

/// The annotation a scheduled Job carries with the time it was scheduled for.
pub const SCHEDULED_TIMESTAMP_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
const COMPONENT: &str = "cronjob-controller";

/// The name of the Job scheduled at `time`: the CronJob's name and the minutes since
/// the epoch.
pub fn job_name(cron_job: &str, time: DateTime<Utc>) -> String {
    format!("{cron_job}-{}", time.timestamp().div_euclid(60))
}

fn to_chrono(time: &Time) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(time.0.as_second(), 0).single()
}

fn to_time(time: DateTime<Utc>) -> Option<Time> {
    Timestamp::from_second(time.timestamp()).ok().map(Time)
}

/// Runs the CronJob controller over `caches` (never returns; dropped to stop).
pub async fn run(client: kube::Client, caches: Caches, options: ControllerOptions) {
    let mut expectations: HashMap<String, Expectations> = HashMap::new();
    // Warnings already given (uid, reason and detail), so a pass every half second
    // does not repeat them.
    let mut warned: HashSet<(String, String)> = HashSet::new();
    let mut tick = tokio::time::interval(options.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let cron_jobs = caches.cron_jobs.state();
        let jobs = caches.jobs.state();
        let alive = |uid: &str| {
            cron_jobs
                .iter()
                .any(|c| c.metadata.uid.as_deref() == Some(uid))
        };
        expectations.retain(|uid, _| alive(uid));
        warned.retain(|(uid, _)| alive(uid));
        for cron_job in cron_jobs.iter() {
            let Some(uid) = cron_job.metadata.uid.clone() else {
                continue;
            };
            if cron_job.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let owned: Vec<Arc<Job>> = jobs
                .iter()
                .filter(|j| pods::controller_uid(&j.metadata, "CronJob") == Some(uid.as_str()))
                .cloned()
                .collect();
            let expected = expectations.entry(uid).or_default();
            if !expected.settled(&owned, |j| j.metadata.name.clone()) {
                continue;
            }
            let mut sync = Sync {
                client: &client,
                options: &options,
                cron_job,
                expected,
                warned: &mut warned,
            };
            sync.run(&owned, Utc::now()).await;
        }
    }
}

/// One pass over one CronJob.
struct Sync<'a> {
    client: &'a kube::Client,
    options: &'a ControllerOptions,
    cron_job: &'a CronJob,
    expected: &'a mut Expectations,
    warned: &'a mut HashSet<(String, String)>,
}

impl Sync<'_> {
    fn name(&self) -> String {
        self.cron_job.name_any()
    }

    fn namespace(&self) -> String {
        self.cron_job
            .namespace()
            .unwrap_or_else(|| "default".into())
    }

    async fn event(&self, kind: &str, reason: &str, message: &str) {
        let reporter = Reporter {
            component: COMPONENT,
            instance: &self.options.instance,
        };
        let involved = Involved {
            api_version: "batch/v1",
            kind: "CronJob",
            namespace: self.cron_job.metadata.namespace.as_deref(),
            name: self.cron_job.metadata.name.as_deref().unwrap_or_default(),
            uid: self.cron_job.metadata.uid.as_deref(),
        };
        events::record(self.client, reporter, involved, kind, reason, message).await;
    }

    /// Records a warning once per distinct `detail`.
    async fn warn_once(&mut self, reason: &str, detail: &str) {
        let uid = self.cron_job.metadata.uid.clone().unwrap_or_default();
        if self.warned.insert((uid, format!("{reason}/{detail}"))) {
            self.event("Warning", reason, detail).await;
        }
    }

    async fn run(&mut self, owned: &[Arc<Job>], now: DateTime<Utc>) {
        let spec = &self.cron_job.spec;
        let status = self.cron_job.status.clone().unwrap_or_default();
        let mut next = status.clone();
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &self.namespace());

        // What ran: finished Jobs leave `active`, running ones join it.
        let mut active: Vec<&Arc<Job>> = Vec::new();
        for job in owned {
            match finished_condition(job.status.as_ref()) {
                None if job.metadata.deletion_timestamp.is_none() => active.push(job),
                None => {}
                Some(succeeded) => {
                    let was_active = status
                        .active
                        .iter()
                        .flatten()
                        .any(|r| r.uid.is_some() && r.uid == job.metadata.uid);
                    if was_active {
                        let outcome = if succeeded { "Complete" } else { "Failed" };
                        self.event(
                            "Normal",
                            "SawCompletedJob",
                            &format!(
                                "Saw completed job: {}, condition: {outcome}",
                                job.name_any()
                            ),
                        )
                        .await;
                    }
                    if succeeded {
                        let done = job.status.as_ref().and_then(|s| s.completion_time.clone());
                        if done.as_ref().map(|t| t.0)
                            > next.last_successful_time.as_ref().map(|t| t.0)
                        {
                            next.last_successful_time = done;
                        }
                    }
                }
            }
        }

        self.schedule(spec, &status, &mut next, &mut active, &jobs, now)
            .await;

        next.active = (!active.is_empty()).then(|| {
            let mut refs: Vec<ObjectReference> = active
                .iter()
                .map(|j| ObjectReference {
                    api_version: Some("batch/v1".into()),
                    kind: Some("Job".into()),
                    name: j.metadata.name.clone(),
                    namespace: j.metadata.namespace.clone(),
                    uid: j.metadata.uid.clone(),
                    resource_version: j.metadata.resource_version.clone(),
                    ..ObjectReference::default()
                })
                .collect();
            refs.sort_by(|a, b| a.name.cmp(&b.name));
            refs
        });
        // Only what this controller owns is compared (resourceVersions churn).
        let names = |s: &CronJobStatus| -> Vec<Option<String>> {
            s.active.iter().flatten().map(|r| r.name.clone()).collect()
        };
        if names(&next) != names(&status)
            || next.last_schedule_time != status.last_schedule_time
            || next.last_successful_time != status.last_successful_time
        {
            let cron_jobs: Api<CronJob> = Api::namespaced(self.client.clone(), &self.namespace());
            let patch = json!({"status": {
                "active": next.active,
                "lastScheduleTime": next.last_schedule_time,
                "lastSuccessfulTime": next.last_successful_time,
            }});
            if let Err(err) = cron_jobs
                .patch_status(&self.name(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                warn!(cronjob = %self.name(), error = %err, "writing the status failed");
            }
        }

        self.trim_history(spec, owned, &jobs).await;
    }

    /// Starts the Job of the most recent due time, if one is due and allowed.
    async fn schedule(
        &mut self,
        spec: &k8s_openapi::api::batch::v1::CronJobSpec,
        status: &CronJobStatus,
        next: &mut CronJobStatus,
        active: &mut Vec<&Arc<Job>>,
        jobs: &Api<Job>,
        now: DateTime<Utc>,
    ) {
        let schedule = match Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
            Ok(schedule) => schedule,
            Err(err @ ScheduleError::TimeZone(_)) => {
                self.warn_once("UnknownTimeZone", &err.to_string()).await;
                return;
            }
            Err(err) => {
                self.warn_once("InvalidSchedule", &err.to_string()).await;
                return;
            }
        };
        if spec.suspend == Some(true) {
            return;
        }
        let created = self
            .cron_job
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(to_chrono)
            .unwrap_or(now);
        let mut earliest = status
            .last_schedule_time
            .as_ref()
            .and_then(to_chrono)
            .unwrap_or(created);
        if let Some(deadline) = spec.starting_deadline_seconds {
            earliest = earliest.max(now - chrono::Duration::seconds(deadline));
        }
        let Some(due) = schedule.most_recent(earliest, now) else {
            return;
        };
        let name = job_name(&self.name(), due);
        // Made already (an earlier pass whose status write was lost).
        if active
            .iter()
            .any(|j| j.metadata.name.as_deref() == Some(name.as_str()))
        {
            next.last_schedule_time = to_time(due);
            return;
        }
        match spec.concurrency_policy.as_deref() {
            Some("Forbid") if !active.is_empty() => {
                self.warn_once(
                    "JobAlreadyActive",
                    &format!(
                        "Not starting job because prior execution is running and concurrency policy is Forbid (scheduled {})",
                        schedule.local(due)
                    ),
                )
                .await;
                return;
            }
            Some("Replace") => {
                for job in active.drain(..) {
                    self.delete(jobs, job).await;
                }
            }
            _ => {}
        }
        let Some(job) = self.job(&name, &schedule, due) else {
            return;
        };
        match jobs.create(&PostParams::default(), &job).await {
            Ok(_) => {
                info!(cronjob = %self.name(), job = %name, scheduled = %schedule.local(due), "created a job");
                self.expected.created(name.clone());
                self.event("Normal", "SuccessfulCreate", &format!("Created job {name}"))
                    .await;
                next.last_schedule_time = to_time(due);
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                // Ours, not yet in the cache, or someone else's Job of that name.
                next.last_schedule_time = to_time(due);
            }
            Err(err) => {
                warn!(cronjob = %self.name(), job = %name, error = %err, "creating a job failed");
                self.event(
                    "Warning",
                    "FailedCreate",
                    &format!("Error creating job: {err}"),
                )
                .await;
            }
        }
    }

    /// The Job for the time `due`, from the template, owned by the CronJob.
    fn job(&self, name: &str, schedule: &Schedule, due: DateTime<Utc>) -> Option<Job> {
        let template = &self.cron_job.spec.job_template;
        let meta = template.metadata.clone().unwrap_or_default();
        let mut annotations = meta.annotations.unwrap_or_default();
        annotations.insert(SCHEDULED_TIMESTAMP_ANNOTATION.into(), schedule.local(due));
        Some(Job {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: self.cron_job.namespace(),
                labels: meta.labels,
                annotations: Some(annotations),
                owner_references: Some(vec![OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "CronJob".into(),
                    name: self.name(),
                    uid: self.cron_job.metadata.uid.clone()?,
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..ObjectMeta::default()
            },
            spec: template.spec.clone(),
            status: None,
        })
    }

    async fn delete(&mut self, jobs: &Api<Job>, job: &Job) {
        let name = job.name_any();
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match jobs.delete(&name, &params).await {
            Ok(_) => {
                info!(cronjob = %self.name(), job = %name, "deleted a job");
                if let Some(uid) = job.metadata.uid.clone() {
                    self.expected.deleted(uid);
                }
                self.event("Normal", "SuccessfulDelete", &format!("Deleted job {name}"))
                    .await;
            }
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(err) => {
                warn!(cronjob = %self.name(), job = %name, error = %err, "deleting a job failed")
            }
        }
    }

    /// Deletes finished Jobs beyond the history limits, oldest first.
    async fn trim_history(
        &mut self,
        spec: &k8s_openapi::api::batch::v1::CronJobSpec,
        owned: &[Arc<Job>],
        jobs: &Api<Job>,
    ) {
        let started = |j: &Job| {
            j.status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .or(j.metadata.creation_timestamp.as_ref())
                .map(|t| t.0)
        };
        for (succeeded, limit) in [
            (true, spec.successful_jobs_history_limit.unwrap_or(3)),
            (false, spec.failed_jobs_history_limit.unwrap_or(1)),
        ] {
            let mut finished: Vec<&Arc<Job>> = owned
                .iter()
                .filter(|j| j.metadata.deletion_timestamp.is_none())
                .filter(|j| finished_condition(j.status.as_ref()) == Some(succeeded))
                .collect();
            finished.sort_by_key(|j| started(j));
            let extra = finished
                .len()
                .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
            for job in finished.into_iter().take(extra) {
                self.delete(jobs, job).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_named_for_its_minute() {
        let time = Utc.with_ymd_and_hms(2026, 1, 1, 0, 5, 0).unwrap();
        assert_eq!(job_name("report", time), "report-29453765");
    }
}
