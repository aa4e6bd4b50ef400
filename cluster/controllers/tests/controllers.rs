//! In-process tier: the controllers against a real API server (and its store) in this
//! process, through the same kube client a control plane runs. A ReplicaSet gets its
//! pods, replaces a deleted one and scales down; a node whose Lease stops being renewed
//! becomes Unknown and tainted, its pods are marked not ready and evicted (a pod
//! tolerating the taint stays), and the taint goes when the node reports again. A
//! ReplicaSet with `minReadySeconds` counts its ready pods available only after that.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use cairn_apiserver::testing::TestServer;
use cairn_controllers::node_lifecycle::UNREACHABLE_TAINT;
use cairn_controllers::{ControllerOptions, run};
use common::{client, play_the_agent, until};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The shared options, with a node grace and eviction timeout short enough to watch.
fn options() -> ControllerOptions {
    ControllerOptions {
        node_grace: Duration::from_secs(2),
        eviction_timeout: Duration::from_secs(1),
        ..common::options()
    }
}

async fn owned_pods(pods: &Api<Pod>, set: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("app={set}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_set_keeps_its_pods_and_scales() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = TestServer::start().await.unwrap();
    let client = client(&server).await;
    let stop = CancellationToken::new();
    let controllers = tokio::spawn(run(client.clone(), options(), stop.clone()));
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let set: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]}}},
    }))
    .unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    let three = until("three pods", || async {
        let owned = owned_pods(&pods, "web").await;
        (owned.len() == 3).then_some(owned)
    })
    .await;
    let owner = &three[0].metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("ReplicaSet", Some(true))
    );
    assert!(three[0].metadata.name.as_ref().unwrap().starts_with("web-"));
    until("the status counts three", || async {
        let status = sets.get("web").await.ok()?.status?;
        (status.replicas == 3 && status.observed_generation == Some(1)).then_some(())
    })
    .await;
    // No more than asked for, even as the cache catches up: still three a moment later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(owned_pods(&pods, "web").await.len(), 3);

    // A deleted pod is replaced.
    let victim = three[0].metadata.name.clone().unwrap();
    pods.delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    until("a replacement", || async {
        let owned = owned_pods(&pods, "web").await;
        (owned.len() == 3
            && owned
                .iter()
                .all(|p| p.metadata.name.as_ref() != Some(&victim)))
        .then_some(())
    })
    .await;
    // Three creations and one replacement, each told in an event.
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    until("four SuccessfulCreate events", || async {
        let created = events
            .list(&ListParams::default().fields("involvedObject.name=web"))
            .await
            .ok()?
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("SuccessfulCreate"))
            .count();
        (created == 4).then_some(())
    })
    .await;

    // Scaled to one: two are deleted.
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    until("one pod left", || async {
        (owned_pods(&pods, "web").await.len() == 1).then_some(())
    })
    .await;
    until("the status counts one", || async {
        let status = sets.get("web").await.ok()?.status?;
        (status.replicas == 1 && status.observed_generation == Some(2)).then_some(())
    })
    .await;
    stop.cancel();
    controllers.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_pods_become_available_after_min_ready_seconds() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = TestServer::start().await.unwrap();
    let client = client(&server).await;
    let stop = CancellationToken::new();
    let controllers = tokio::spawn(run(client.clone(), options(), stop.clone()));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let agent = tokio::spawn(play_the_agent(pods.clone(), stop.clone()));
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let set: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "steady"},
        "spec": {"replicas": 2, "minReadySeconds": 5,
            "selector": {"matchLabels": {"app": "steady"}},
            "template": {"metadata": {"labels": {"app": "steady"}},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]}}},
    }))
    .unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    let counted = |status: &k8s_openapi::api::apps::v1::ReplicaSetStatus| {
        (status.ready_replicas, status.available_replicas)
    };
    let ready = until("two ready pods", || async {
        let status = sets.get("steady").await.ok()?.status?;
        (status.ready_replicas == Some(2)).then_some(status)
    })
    .await;
    // Ready, but not for five seconds yet.
    assert_eq!(counted(&ready), (Some(2), Some(0)));
    until("two available pods", || async {
        let status = sets.get("steady").await.ok()?.status?;
        (counted(&status) == (Some(2), Some(2))).then_some(())
    })
    .await;
    stop.cancel();
    controllers.await.unwrap();
    agent.await.unwrap();
}

async fn renew(leases: &Api<Lease>, name: &str) {
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 2},
    }))
    .unwrap();
    let now = MicroTime(Timestamp::now());
    match leases.get_opt(name).await.unwrap() {
        None => {
            let mut lease = lease;
            lease.spec.as_mut().unwrap().renew_time = Some(now);
            leases.create(&PostParams::default(), &lease).await.unwrap();
        }
        Some(mut current) => {
            current.spec.as_mut().unwrap().renew_time = Some(now);
            leases
                .replace(name, &PostParams::default(), &current)
                .await
                .unwrap();
        }
    }
}

async fn report_ready(nodes: &Api<Node>, name: &str) {
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
        "reason": "KubeletReady", "lastHeartbeatTime": Timestamp::now().to_string()}]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

fn taint_keys(node: &Node) -> Vec<(String, String)> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key, t.effect))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_tainted_and_its_pods_evicted_until_it_reports_again() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = TestServer::start().await.unwrap();
    let client = client(&server).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    report_ready(&nodes, "n1").await;
    renew(&leases, "n1").await;
    for (name, tolerations) in [
        ("plain", json!([])),
        (
            "patient",
            json!([{"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute"}]),
        ),
    ] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": "n1", "tolerations": tolerations,
                "containers": [{"name": "app", "image": "busybox"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let status = json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True"}]}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }
    let stop = CancellationToken::new();
    let controllers = tokio::spawn(run(client.clone(), options(), stop.clone()));

    // While the lease is renewed the node stays as it is.
    for _ in 0..6 {
        renew(&leases, "n1").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let node = nodes.get("n1").await.unwrap();
    assert!(taint_keys(&node).is_empty(), "{:?}", taint_keys(&node));

    // Silent: Unknown, tainted, pods not ready, the intolerant one evicted.
    let tainted = until("the node tainted unreachable", || async {
        let node = nodes.get("n1").await.ok()?;
        let keys = taint_keys(&node);
        keys.contains(&(UNREACHABLE_TAINT.to_owned(), "NoExecute".to_owned()))
            .then_some(node)
    })
    .await;
    let ready = tainted
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "Unknown");
    assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
    until("plain evicted", || async {
        pods.get("plain")
            .await
            .ok()?
            .metadata
            .deletion_timestamp
            .map(|_| ())
    })
    .await;
    let patient = until("patient marked not ready", || async {
        let pod = pods.get("patient").await.ok()?;
        let ready = pod
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Ready")?
            .status
            .clone();
        (ready == "False").then_some(pod)
    })
    .await;
    assert!(patient.metadata.deletion_timestamp.is_none());

    // Reporting again: Ready, and the taints go.
    renew(&leases, "n1").await;
    report_ready(&nodes, "n1").await;
    until("the taints removed", || async {
        let node = nodes.get("n1").await.ok()?;
        taint_keys(&node).is_empty().then_some(())
    })
    .await;
    assert!(
        pods.get("patient")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none()
    );
    stop.cancel();
    controllers.await.unwrap();
}
