//! In-process tier: the Deployment controller and the garbage collector against a real
//! API server (and its store) in this process. No node agent runs here, so the test
//! plays its part for the pods: it reports each one Running and Ready a moment after
//! it is created and removes it for good once it is being deleted. Throughout a
//! rolling update the test samples the pods and fails if there are ever more than
//! `replicas + maxSurge` or fewer ready than `replicas - maxUnavailable`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use cairn_apiserver::testing::TestServer;
use cairn_controllers::deployment::{POD_TEMPLATE_HASH_LABEL, REVISION_ANNOTATION};
use cairn_controllers::run;
use common::{Running, client, options, play_the_agent, ready, until};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Pods of `app` not being deleted: (all, ready, their template hashes).
async fn census(pods: &Api<Pod>, app: &str) -> (usize, usize, BTreeSet<String>) {
    let items: Vec<Pod> = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let hashes = items
        .iter()
        .filter_map(|p| p.labels().get(POD_TEMPLATE_HASH_LABEL).cloned())
        .collect();
    let ready_count = items.iter().filter(|p| ready(p)).count();
    (items.len(), ready_count, hashes)
}

/// Waits until `name` has rolled out `replicas` pods of its current template, as
/// `kubectl rollout status` judges it.
async fn rolled_out(deployments: &Api<Deployment>, name: &str, replicas: i32) -> Deployment {
    until(&format!("{name} rolled out with {replicas}"), || async {
        let d = deployments.get(name).await.ok()?;
        let status = d.status.clone()?;
        let progressing = status
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_.as_deref() == Some("Progressing"))?
            .reason
            .clone();
        (status.observed_generation >= d.metadata.generation
            && status.updated_replicas == Some(replicas)
            && status.replicas == Some(replicas)
            && status.available_replicas == Some(replicas)
            && progressing.as_deref() == Some("NewReplicaSetAvailable"))
        .then_some(d)
    })
    .await
}

async fn owned_sets(sets: &Api<ReplicaSet>) -> Vec<ReplicaSet> {
    let mut items = sets.list(&ListParams::default()).await.unwrap().items;
    items.sort_by_key(|s| {
        s.annotations()
            .get(REVISION_ANNOTATION)
            .and_then(|r| r.parse::<u32>().ok())
    });
    items
}

fn set_image(image: &str) -> Patch<serde_json::Value> {
    Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": image}]}}}}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_rolls_out_scales_rolls_back_and_is_collected() {
    let running = Running::start().await;
    let (client, pods) = (running.client.clone(), running.pods.clone());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "web:1"}]}}},
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let first = rolled_out(&deployments, "web", 4).await;
    assert_eq!(first.annotations().get(REVISION_ANNOTATION).unwrap(), "1");
    let (count, ready_count, hashes) = census(&pods, "web").await;
    assert_eq!((count, ready_count, hashes.len()), (4, 4, 1));

    // A new image rolls out within the surge and the unavailability allowed.
    let violation = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(AtomicUsize::new(0));
    let sampling = CancellationToken::new();
    let sampler = {
        let (pods, violation, samples, sampling) = (
            pods.clone(),
            violation.clone(),
            samples.clone(),
            sampling.clone(),
        );
        tokio::spawn(async move {
            let mut worst = String::new();
            while !sampling.is_cancelled() {
                let (count, ready_count, _) = census(&pods, "web").await;
                if count > 5 || ready_count < 3 {
                    violation.store(true, Ordering::SeqCst);
                    worst = format!("{count} pods, {ready_count} ready");
                }
                samples.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            worst
        })
    };
    deployments
        .patch("web", &PatchParams::default(), &set_image("web:2"))
        .await
        .unwrap();
    let second = rolled_out(&deployments, "web", 4).await;
    sampling.cancel();
    let worst = sampler.await.unwrap();
    assert!(
        !violation.load(Ordering::SeqCst),
        "the rollout went outside maxSurge 1 / maxUnavailable 1: {worst}"
    );
    assert!(samples.load(Ordering::SeqCst) > 10, "too few samples");
    assert_eq!(second.annotations().get(REVISION_ANNOTATION).unwrap(), "2");
    let revisions = owned_sets(&sets).await;
    assert_eq!(revisions.len(), 2);
    assert_eq!(revisions[0].spec.replicas, Some(0));
    assert_eq!(revisions[1].spec.replicas, Some(4));
    let new_hash = revisions[1].labels()[POD_TEMPLATE_HASH_LABEL].clone();
    until("only the new revision's pods", || async {
        let (count, _, hashes) = census(&pods, "web").await;
        (count == 4 && hashes == BTreeSet::from([new_hash.clone()])).then_some(())
    })
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let scaling = events
        .list(&ListParams::default().fields("involvedObject.name=web"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("ScalingReplicaSet"))
        .count();
    assert!(scaling >= 3, "{scaling} ScalingReplicaSet events");

    // Scaled up and down.
    for replicas in [6, 2] {
        deployments
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await
            .unwrap();
        rolled_out(&deployments, "web", replicas).await;
        until(&format!("{replicas} pods"), || async {
            let (count, _, _) = census(&pods, "web").await;
            usize::try_from(replicas)
                .is_ok_and(|r| r == count)
                .then_some(())
        })
        .await;
    }

    // Paused, a template change makes no ReplicaSet; resumed, it rolls out.
    let paused = |on: bool| Patch::Merge(json!({"spec": {"paused": on}}));
    deployments
        .patch("web", &PatchParams::default(), &paused(true))
        .await
        .unwrap();
    // The change is what `kubectl rollout undo` writes: the first ReplicaSet's template
    // without its hash label, in Go's spelling (zero values written out).
    let mut first_template =
        serde_json::to_value(owned_sets(&sets).await[0].spec.template.clone().unwrap()).unwrap();
    first_template["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove(POD_TEMPLATE_HASH_LABEL);
    first_template["metadata"]["creationTimestamp"] = serde_json::Value::Null;
    first_template["spec"]["containers"][0]["resources"] = json!({});
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": first_template}})),
        )
        .await
        .unwrap();
    until("Progressing says paused", || async {
        let d = deployments.get("web").await.ok()?;
        let status = d.status?;
        let reason = status
            .conditions?
            .into_iter()
            .find(|c| c.type_.as_deref() == Some("Progressing"))?
            .reason;
        (status.observed_generation == d.metadata.generation
            && reason.as_deref() == Some("DeploymentPaused"))
        .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, _, hashes) = census(&pods, "web").await;
    assert_eq!(
        hashes,
        BTreeSet::from([new_hash.clone()]),
        "paused, yet rolled"
    );
    assert_eq!(owned_sets(&sets).await[1].spec.replicas, Some(2));

    // Resumed, back to the first template: its ReplicaSet returns as revision 3, no
    // third one.
    deployments
        .patch("web", &PatchParams::default(), &paused(false))
        .await
        .unwrap();
    let third = rolled_out(&deployments, "web", 2).await;
    assert_eq!(third.annotations().get(REVISION_ANNOTATION).unwrap(), "3");
    let revisions = owned_sets(&sets).await;
    assert_eq!(revisions.len(), 2, "a ReplicaSet was made again");
    assert_eq!(revisions[1].name_any(), first_set_name(&revisions, "web:1"));
    assert_eq!(
        revisions[1].annotations().get(REVISION_ANNOTATION).unwrap(),
        "3"
    );

    // Deleted in the background: its ReplicaSets and their pods follow.
    deployments
        .delete("web", &DeleteParams::background())
        .await
        .unwrap();
    until("the ReplicaSets collected", || async {
        sets.list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    until("the pods collected", || async {
        pods.list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    running.finish().await;
}

/// The name of the ReplicaSet among `sets` whose template runs `image`.
fn first_set_name(sets: &[ReplicaSet], image: &str) -> String {
    sets.iter()
        .find(|s| {
            s.spec
                .template
                .as_ref()
                .unwrap()
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .image
                .as_deref()
                == Some(image)
        })
        .unwrap()
        .name_any()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_deleted_in_the_foreground_wait_and_orphaned_dependents_stay() {
    let running = Running::start().await;
    let (client, pods) = (running.client.clone(), running.pods.clone());
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let make_set = |name: &str| -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": "web:1"}]}}},
        }))
        .unwrap()
    };
    for name in ["fore", "orphaning"] {
        sets.create(&PostParams::default(), &make_set(name))
            .await
            .unwrap();
        until(&format!("{name}'s two pods"), || async {
            let (count, ready_count, _) = census(&pods, name).await;
            (count == 2 && ready_count == 2).then_some(())
        })
        .await;
    }

    // Foreground: the owner stays, being deleted, until its pods are gone.
    sets.delete("fore", &DeleteParams::foreground())
        .await
        .unwrap();
    let waiting = sets.get("fore").await.unwrap();
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert!(
        waiting
            .finalizers()
            .contains(&"foregroundDeletion".to_owned())
    );
    until("fore gone after its pods", || async {
        let gone = sets.get_opt("fore").await.ok()?.is_none();
        let (count, _, _) = census(&pods, "fore").await;
        if gone {
            assert_eq!(count, 0, "fore went before its pods");
        }
        gone.then_some(())
    })
    .await;

    // Orphan: the pods stay, without the reference, and no new owner adopts them.
    sets.delete("orphaning", &DeleteParams::orphan())
        .await
        .unwrap();
    until("orphaning gone", || async {
        sets.get_opt("orphaning")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let orphans: Vec<Pod> = pods
        .list(&ListParams::default().labels("app=orphaning"))
        .await
        .unwrap()
        .items;
    assert_eq!(orphans.len(), 2);
    assert!(orphans.iter().all(|p| p.owner_references().is_empty()));

    // A config map naming a pod as its owner goes when that pod does.
    let owner = &orphans[0];
    let map: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "owned", "ownerReferences": [{"apiVersion": "v1", "kind": "Pod",
            "name": owner.name_any(), "uid": owner.metadata.uid.clone().unwrap()}]},
        "data": {"k": "v"},
    }))
    .unwrap();
    maps.create(&PostParams::default(), &map).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        maps.get_opt("owned").await.unwrap().is_some(),
        "collected while its owner lives"
    );
    pods.delete(&owner.name_any(), &DeleteParams::default())
        .await
        .unwrap();
    until("the config map collected", || async {
        maps.get_opt("owned").await.ok()?.is_none().then_some(())
    })
    .await;
    running.finish().await;
}

fn job(name: &str, image: &str, extra: serde_json::Value) -> Job {
    let mut spec = json!({"template": {"metadata": {"labels": {"app": name}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": image}]}}});
    for (key, value) in extra.as_object().unwrap() {
        spec[key] = value.clone();
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

/// The Job's condition of `kind`, if True: its reason.
fn finished(job: &Job, kind: &str) -> Option<String> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind && c.status == "True")
        .map(|c| c.reason.clone().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_fail_at_their_backoff_limit_and_expire() {
    let running = Running::start().await;
    let (client, pods) = (running.client.clone(), running.pods.clone());
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");

    // Three completions, two at a time: never more than two running, exactly three
    // counted, every pod released by the tracking finalizer.
    jobs.create(
        &PostParams::default(),
        &job(
            "work",
            "job:ok",
            json!({"completions": 3, "parallelism": 2}),
        ),
    )
    .await
    .unwrap();
    let most_running = Arc::new(AtomicUsize::new(0));
    let done = until("work Complete", || async {
        let running = pods
            .list(&ListParams::default().labels("app=work"))
            .await
            .ok()?
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Succeeded"))
            .count();
        most_running.fetch_max(running, Ordering::SeqCst);
        let job = jobs.get("work").await.ok()?;
        finished(&job, "Complete").map(|_| job)
    })
    .await;
    let most_running = most_running.load(Ordering::SeqCst);
    assert!(most_running <= 2, "{most_running} pods at once");
    let status = done.status.clone().unwrap();
    assert_eq!(status.succeeded, Some(3));
    assert_eq!(status.failed.unwrap_or(0), 0);
    assert!(status.completion_time.is_some());
    assert_eq!(
        finished(&done, "SuccessCriteriaMet").as_deref(),
        Some("CompletionsReached")
    );
    let left = pods
        .list(&ListParams::default().labels("app=work"))
        .await
        .unwrap()
        .items;
    assert_eq!(left.len(), 3, "{} pods", left.len());
    assert!(left.iter().all(|p| p.finalizers().is_empty()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        jobs.get("work").await.unwrap().status.unwrap().succeeded,
        Some(3),
        "counted again"
    );

    // Failing pods: retried after the back-off until more than backoffLimit failed.
    jobs.create(
        &PostParams::default(),
        &job("doomed", "job:fail", json!({"backoffLimit": 1})),
    )
    .await
    .unwrap();
    let failed = until("doomed Failed", || async {
        let job = jobs.get("doomed").await.ok()?;
        finished(&job, "Failed").map(|reason| (job, reason))
    })
    .await;
    assert_eq!(failed.1, "BackoffLimitExceeded");
    assert_eq!(failed.0.status.unwrap().failed, Some(2));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut attempts: Vec<k8s_openapi::jiff::Timestamp> = pods
        .list(&ListParams::default().labels("app=doomed"))
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.metadata.creation_timestamp.clone().unwrap().0)
        .collect();
    assert_eq!(attempts.len(), 2, "retried past the limit");
    attempts.sort();
    let gap = attempts[1].duration_since(attempts[0]).as_secs();
    assert!(
        gap >= 9,
        "the retry came {gap} s after the failure, not after the 10 s back-off"
    );

    // A TTL of zero: the finished Job and its pod are deleted.
    jobs.create(
        &PostParams::default(),
        &job("brief", "job:ok", json!({"ttlSecondsAfterFinished": 0})),
    )
    .await
    .unwrap();
    until("brief deleted with its pod", || async {
        let gone = jobs.get_opt("brief").await.ok()?.is_none();
        let pods_left = pods
            .list(&ListParams::default().labels("app=brief"))
            .await
            .ok()?
            .items
            .len();
        (gone && pods_left == 0).then_some(())
    })
    .await;
    running.finish().await;
}

/// The node each daemon pod of `app` is pinned to, and its image.
async fn daemon_pods(pods: &Api<Pod>, app: &str) -> Vec<(String, String, bool)> {
    let mut placed: Vec<(String, String, bool)> = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let spec = p.spec.clone().unwrap();
            let node = spec
                .affinity
                .unwrap()
                .node_affinity
                .unwrap()
                .required_during_scheduling_ignored_during_execution
                .unwrap()
                .node_selector_terms[0]
                .match_fields
                .clone()
                .unwrap()[0]
                .values
                .clone()
                .unwrap()[0]
                .clone();
            (
                node,
                spec.containers[0].image.clone().unwrap_or_default(),
                ready(&p),
            )
        })
        .collect();
    placed.sort();
    placed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_set_runs_one_pod_per_eligible_node_and_rolls_node_by_node() {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::core::v1::Node;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = TestServer::start().await.unwrap();
    let client = client(&server).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let add_node = |name: &str, taints: serde_json::Value| {
        let (nodes, name) = (nodes.clone(), name.to_owned());
        async move {
            let node: Node = serde_json::from_value(
                json!({"metadata": {"name": name}, "spec": {"taints": taints}}),
            )
            .unwrap();
            nodes.create(&PostParams::default(), &node).await.unwrap();
            let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
            nodes
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .unwrap();
        }
    };
    for name in ["n1", "n2", "n3"] {
        add_node(name, json!([])).await;
    }
    add_node(
        "dedicated",
        json!([{"key": "team", "value": "db", "effect": "NoSchedule"}]),
    )
    .await;
    let stop = CancellationToken::new();
    let controllers = tokio::spawn(run(client.clone(), options(), stop.clone()));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let agent = tokio::spawn(play_the_agent(pods.clone(), stop.clone()));
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let set: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "app", "image": "agent:1"}]}}},
    }))
    .unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    let expect = |image: &str| -> Vec<(String, String, bool)> {
        ["n1", "n2", "n3"]
            .iter()
            .map(|n| (n.to_string(), image.to_owned(), true))
            .collect()
    };
    until("one ready pod on each untainted node", || async {
        (daemon_pods(&pods, "agent").await == expect("agent:1")).then_some(())
    })
    .await;
    until("the status counts three", || async {
        let status = sets.get("agent").await.ok()?.status?;
        (status.desired_number_scheduled == 3
            && status.number_ready == 3
            && status.updated_number_scheduled == Some(3))
        .then_some(())
    })
    .await;

    // A new node gets its pod; a deleted pod comes back.
    add_node("n4", json!([])).await;
    let victim = pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap()
        .items[0]
        .name_any();
    pods.delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    let four: Vec<(String, String, bool)> = ["n1", "n2", "n3", "n4"]
        .iter()
        .map(|n| (n.to_string(), "agent:1".to_owned(), true))
        .collect();
    until("n4 covered and the deleted pod back", || async {
        (daemon_pods(&pods, "agent").await == four).then_some(())
    })
    .await;

    // A new image rolls node by node: never two nodes without a ready pod.
    let violation = Arc::new(AtomicBool::new(false));
    let sampling = CancellationToken::new();
    let sampler = {
        let (pods, violation, sampling) = (pods.clone(), violation.clone(), sampling.clone());
        tokio::spawn(async move {
            while !sampling.is_cancelled() {
                let placed = daemon_pods(&pods, "agent").await;
                let covered: BTreeSet<&String> =
                    placed.iter().filter(|p| p.2).map(|p| &p.0).collect();
                if covered.len() < 3 {
                    violation.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    sets.patch("agent", &PatchParams::default(), &set_image("agent:2"))
        .await
        .unwrap();
    let updated: Vec<(String, String, bool)> = ["n1", "n2", "n3", "n4"]
        .iter()
        .map(|n| (n.to_string(), "agent:2".to_owned(), true))
        .collect();
    until("every node on the new image", || async {
        (daemon_pods(&pods, "agent").await == updated).then_some(())
    })
    .await;
    sampling.cancel();
    sampler.await.unwrap();
    assert!(
        !violation.load(Ordering::SeqCst),
        "more than one node lacked a ready pod"
    );
    stop.cancel();
    controllers.await.unwrap();
    agent.await.unwrap();
}
