//! In-process tier: the StatefulSet and CronJob controllers against a real API server
//! (and its store) in this process, with the test playing the node agent's part
//! (pods Running and Ready 200 ms after they appear; `stuck` pods never start).
//! Samplers watch the ordering guarantees while the controllers work: a StatefulSet
//! pod exists only when every lower ordinal is ready, a rolling update replaces one
//! pod at a time from the top, a scale-down removes the highest ordinal first.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cairn_controllers::cronjob::SCHEDULED_TIMESTAMP_ANNOTATION;
use cairn_controllers::statefulset::{POD_INDEX_LABEL, POD_NAME_LABEL};
use common::{Running, ready, until};
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const REVISION: &str = "controller-revision-hash";

fn stateful_set(name: &str, replicas: i32, image: &str, extra: serde_json::Value) -> StatefulSet {
    let mut spec = json!({
        "replicas": replicas,
        "serviceName": name,
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "c", "image": image}]}},
    });
    for (key, value) in extra.as_object().unwrap() {
        spec[key] = value.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
    .unwrap()
}

/// The live pods of `app` by ordinal: (revision, ready, uid).
async fn members(pods: &Api<Pod>, app: &str) -> BTreeMap<i32, (String, bool, String)> {
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let ordinal = p.labels()[POD_INDEX_LABEL].parse().unwrap();
            (
                ordinal,
                (
                    p.labels().get(REVISION).cloned().unwrap_or_default(),
                    ready(&p),
                    p.uid().unwrap(),
                ),
            )
        })
        .collect()
}

/// Samples `app`'s pods every 20 ms until `stop`, failing the test if `broken`
/// names a sample's fault.
fn sample(
    pods: Api<Pod>,
    app: &'static str,
    stop: CancellationToken,
    broken: impl Fn(&BTreeMap<i32, (String, bool, String)>) -> Option<String> + Send + 'static,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut samples = 0;
        while !stop.is_cancelled() {
            let seen = members(&pods, app).await;
            if let Some(fault) = broken(&seen) {
                panic!("{app}: {fault} in {seen:?}");
            }
            samples += 1;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        samples
    })
}

async fn settled(sets: &Api<StatefulSet>, name: &str, replicas: i32) -> StatefulSet {
    until(
        &format!("{name} has {replicas} ready and current"),
        || async {
            let set = sets.get(name).await.ok()?;
            let status = set.status.clone()?;
            (status.observed_generation >= set.metadata.generation
                && status.replicas == replicas
                && status.ready_replicas == Some(replicas)
                && status.updated_replicas == Some(replicas)
                && status.current_revision == status.update_revision)
                .then_some(set)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_set_starts_in_order_rolls_from_the_top_and_scales_down_from_the_top() {
    let running = Running::start().await;
    let (client, pods) = (running.client.clone(), running.pods.clone());
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), "default");

    // Ordered start: a pod exists only when every lower ordinal is ready.
    let watching = CancellationToken::new();
    let ordered = sample(pods.clone(), "db", watching.clone(), |seen| {
        let top = *seen.keys().last()?;
        (0..top)
            .find(|n| !seen.get(n).is_some_and(|(_, ready, _)| *ready))
            .map(|n| format!("db-{top} exists while db-{n} is not ready"))
    });
    sets.create(
        &PostParams::default(),
        &stateful_set("db", 3, "v1", json!({})),
    )
    .await
    .unwrap();
    let first = settled(&sets, "db", 3).await;
    watching.cancel();
    assert!(ordered.await.unwrap() > 0);
    let pod = pods.get("db-2").await.unwrap();
    let spec = pod.spec.clone().unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("db-2"));
    assert_eq!(spec.subdomain.as_deref(), Some("db"));
    assert_eq!(pod.labels()[POD_NAME_LABEL], "db-2");
    let v1 = first.status.clone().unwrap().update_revision.unwrap();
    assert_eq!(pod.labels()[REVISION], v1);
    let history = revisions.get(&v1).await.unwrap();
    assert_eq!(history.revision, Some(1));
    assert_eq!(history.labels()["app"], "db");

    // A deleted member comes back under its name, as a new pod.
    let old_uid = pods.get("db-1").await.unwrap().uid().unwrap();
    pods.delete("db-1", &Default::default()).await.unwrap();
    until("db-1 made again", || async {
        let seen = members(&pods, "db").await;
        seen.get(&1)
            .filter(|(_, ready, uid)| *ready && *uid != old_uid)
            .map(|_| ())
    })
    .await;

    // The rolling update: one pod at a time, the highest ordinal first.
    let updated_order = Arc::new(Mutex::new(Vec::<i32>::new()));
    let watching = CancellationToken::new();
    let order = updated_order.clone();
    let v1_seen = v1.clone();
    let one_at_a_time = sample(pods.clone(), "db", watching.clone(), move |seen| {
        let down = (0..3)
            .filter(|n| !seen.get(n).is_some_and(|(_, ready, _)| *ready))
            .count();
        let mut order = order.lock().unwrap();
        for (n, (revision, _, _)) in seen {
            if *revision != v1_seen && !order.contains(n) {
                order.push(*n);
            }
        }
        (down > 1).then(|| format!("{down} pods down at once"))
    });
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "v2"}]}}}});
    sets.patch("db", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    let second = settled(&sets, "db", 3).await;
    watching.cancel();
    one_at_a_time.await.unwrap();
    let v2 = second.status.clone().unwrap().update_revision.unwrap();
    assert_ne!(v2, v1);
    assert_eq!(*updated_order.lock().unwrap(), [2, 1, 0]);
    assert_eq!(revisions.get(&v2).await.unwrap().revision, Some(2));

    // A partition: only ordinals at or above it move to the new template, and a
    // lower one made again keeps the current template.
    let patch = json!({"spec": {
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}},
        "template": {"spec": {"containers": [{"name": "c", "image": "v3"}]}}}});
    sets.patch("db", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    let v3 = until("db-2 on the third revision", || async {
        let set = sets.get("db").await.ok()?;
        let v3 = set.status?.update_revision.filter(|r| *r != v2)?;
        let seen = members(&pods, "db").await;
        (seen.get(&2)?.0 == v3 && seen.get(&2)?.1).then_some(v3)
    })
    .await;
    pods.delete("db-0", &Default::default()).await.unwrap();
    until("db-0 made again below the partition", || async {
        let pod = pods.get("db-0").await.ok()?;
        (pod.metadata.deletion_timestamp.is_none() && ready(&pod)).then_some(())?;
        let image = pod.spec?.containers[0].image.clone()?;
        assert_eq!(image, "v2", "db-0 is below the partition");
        Some(())
    })
    .await;
    let seen = members(&pods, "db").await;
    assert_eq!(seen[&1].0, v2);
    assert_eq!(seen[&2].0, v3);

    // Scale down: the highest ordinal goes first, one at a time.
    let watching = CancellationToken::new();
    let top_first = sample(pods.clone(), "db", watching.clone(), |seen| {
        (seen.contains_key(&2) && !seen.contains_key(&1))
            .then(|| "db-1 went before db-2".to_owned())
    });
    let patch = json!({"spec": {"replicas": 1}});
    sets.patch("db", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    until("db down to one", || async {
        let seen = members(&pods, "db").await;
        (seen.keys().copied().collect::<Vec<_>>() == [0]).then_some(())
    })
    .await;
    watching.cancel();
    top_first.await.unwrap();

    // Parallel: every member at once, ready or not.
    sets.create(
        &PostParams::default(),
        &stateful_set(
            "cache",
            3,
            "stuck",
            json!({"podManagementPolicy": "Parallel"}),
        ),
    )
    .await
    .unwrap();
    until("every cache pod made", || async {
        (members(&pods, "cache").await.len() == 3).then_some(())
    })
    .await;
    // Ordered, the same template waits on its first pod.
    sets.create(
        &PostParams::default(),
        &stateful_set("queue", 3, "stuck", json!({})),
    )
    .await
    .unwrap();
    until("queue-0 made", || async {
        (members(&pods, "queue").await.len() == 1).then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(
        members(&pods, "queue").await.len(),
        1,
        "queue-1 waits for queue-0"
    );

    running.finish().await;
}

fn cron_job(name: &str, image: &str, extra: serde_json::Value) -> CronJob {
    let mut spec = json!({
        "schedule": "* * * * *",
        "jobTemplate": {"metadata": {"labels": {"cron": name}}, "spec": {"template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": image}]}}}},
    });
    for (key, value) in extra.as_object().unwrap() {
        spec[key] = value.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
    .unwrap()
}

/// A Job the test makes by hand under `cron`, as if it had scheduled it.
fn owned_job(name: &str, cron: &CronJob, image: &str) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": "default", "labels": {"cron": cron.name_any()},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob",
                "name": cron.name_any(), "uid": cron.uid().unwrap(), "controller": true}]},
        "spec": {"template": {"metadata": {"labels": {"app": cron.name_any()}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": image}]}}},
    }))
    .unwrap()
}

/// Makes the controller believe `name` last ran three minutes ago, so the current
/// minute is due now.
async fn missed(cron_jobs: &Api<CronJob>, name: &str) {
    let then =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(180);
    let then = then.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let patch = json!({"status": {"lastScheduleTime": then}});
    cron_jobs
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn jobs_of(jobs: &Api<Job>, cron: &str) -> Vec<Job> {
    jobs.list(&ListParams::default().labels(&format!("cron={cron}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .collect()
}

fn complete(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        })
}

async fn reasons(events: &Api<Event>, name: &str) -> Vec<String> {
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_jobs_run_their_due_time_once_within_their_concurrency_policy() {
    let running = Running::start().await;
    let client = running.client.clone();
    let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let events: Api<Event> = Api::namespaced(client.clone(), "default");

    // Three minutes missed: one Job, for the latest, which runs to completion.
    let report = cron_jobs
        .create(
            &PostParams::default(),
            &cron_job("report", "job:ok", json!({})),
        )
        .await
        .unwrap();
    missed(&cron_jobs, "report").await;
    let job = until("report's job complete", || async {
        let made = jobs_of(&jobs, "report").await;
        made.into_iter().find(complete)
    })
    .await;
    assert_eq!(
        jobs_of(&jobs, "report").await.len(),
        1,
        "one job for three missed minutes"
    );
    let scheduled = job.annotations()[SCHEDULED_TIMESTAMP_ANNOTATION].clone();
    assert!(scheduled.ends_with(":00+00:00"), "{scheduled}");
    assert!(job.name_any().starts_with("report-"));
    let status = until("report's status", || async {
        let status = cron_jobs.get("report").await.ok()?.status?;
        (status.last_successful_time.is_some() && status.active.is_none()).then_some(status)
    })
    .await;
    assert!(status.last_schedule_time.is_some());
    let seen = reasons(&events, "report").await;
    assert!(seen.contains(&"SuccessfulCreate".to_owned()), "{seen:?}");
    assert!(seen.contains(&"SawCompletedJob".to_owned()), "{seen:?}");

    // History: finished Jobs beyond successfulJobsHistoryLimit go, oldest first.
    for n in 0..3 {
        jobs.create(
            &PostParams::default(),
            &owned_job(&format!("report-old-{n}"), &report, "job:ok"),
        )
        .await
        .unwrap();
    }
    let patch = json!({"spec": {"successfulJobsHistoryLimit": 2}});
    cron_jobs
        .patch("report", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    until("report keeps two finished jobs", || async {
        let made = jobs_of(&jobs, "report").await;
        (made.len() == 2 && made.iter().all(complete)).then_some(())
    })
    .await;

    // Forbid: a running Job holds the next one back, with an event.
    let forbid = cron_jobs
        .create(
            &PostParams::default(),
            &cron_job("forbid", "job:ok", json!({"concurrencyPolicy": "Forbid"})),
        )
        .await
        .unwrap();
    jobs.create(
        &PostParams::default(),
        &owned_job("forbid-running", &forbid, "stuck"),
    )
    .await
    .unwrap();
    until("forbid lists its running job", || async {
        let active = cron_jobs.get("forbid").await.ok()?.status?.active?;
        (active.len() == 1).then_some(())
    })
    .await;
    missed(&cron_jobs, "forbid").await;
    until("JobAlreadyActive recorded", || async {
        reasons(&events, "forbid")
            .await
            .contains(&"JobAlreadyActive".to_owned())
            .then_some(())
    })
    .await;
    let names: Vec<String> = jobs_of(&jobs, "forbid")
        .await
        .iter()
        .map(|j| j.name_any())
        .collect();
    assert_eq!(names, ["forbid-running"]);

    // Replace: the running Job is deleted and the due one made.
    let replace = cron_jobs
        .create(
            &PostParams::default(),
            &cron_job("replace", "job:ok", json!({"concurrencyPolicy": "Replace"})),
        )
        .await
        .unwrap();
    jobs.create(
        &PostParams::default(),
        &owned_job("replace-running", &replace, "stuck"),
    )
    .await
    .unwrap();
    until("replace lists its running job", || async {
        let active = cron_jobs.get("replace").await.ok()?.status?.active?;
        (active.len() == 1).then_some(())
    })
    .await;
    missed(&cron_jobs, "replace").await;
    until("the running job replaced", || async {
        let made = jobs_of(&jobs, "replace").await;
        (made.len() == 1 && made[0].name_any() != "replace-running").then_some(())
    })
    .await;

    // Suspended: nothing is made.
    cron_jobs
        .create(
            &PostParams::default(),
            &cron_job("paused", "job:ok", json!({"suspend": true})),
        )
        .await
        .unwrap();
    missed(&cron_jobs, "paused").await;
    // The API refuses a zone that does not exist, naming the field.
    let refused = cron_jobs
        .create(
            &PostParams::default(),
            &cron_job("elsewhere", "job:ok", json!({"timeZone": "Mars/Olympus"})),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = refused else {
        panic!("{refused}");
    };
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("spec.timeZone"),
        "{}",
        status.message
    );
    // Meanwhile the running CronJobs went on; the paused one made nothing.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(jobs_of(&jobs, "paused").await.is_empty());

    running.finish().await;
}
