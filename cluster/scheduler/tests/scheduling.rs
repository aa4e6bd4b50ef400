//! In-process tier: the scheduler against a real API server (and its store) in this
//! process, through the same kube client a node runs: pods are bound to nodes that
//! fit and spread, a pod that fits nowhere stays Pending with kube-scheduler's event
//! and condition, and it is bound once a node that fits joins.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::{Duration, Instant};

use cairn_apiserver::testing::TestServer;
use cairn_scheduler::{SchedulerOptions, run};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

async fn client(server: &TestServer) -> kube::Client {
    let text = server.kubeconfig("admin", Some("system:masters")).unwrap();
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&text).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

async fn add_node(nodes: &Api<Node>, name: &str, cpu: &str) {
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let status = json!({"status": {
        "allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
        "capacity": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

fn pod(name: &str, cpu: &str, owner: Option<&str>) -> Pod {
    let mut value = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "busybox",
            "resources": {"requests": {"cpu": cpu}}}]},
    });
    if let Some(owner) = owner {
        value["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1",
            "kind": "ReplicaSet", "name": "web", "uid": owner, "controller": true}]);
    }
    serde_json::from_value(value).unwrap()
}

async fn node_of(pods: &Api<Pod>, name: &str) -> Option<String> {
    pods.get(name)
        .await
        .ok()
        .and_then(|p| p.spec)
        .and_then(|s| s.node_name)
}

async fn until<T, Fut: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> Fut,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_bound_where_they_fit_and_wait_with_a_reason_when_nothing_does() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = TestServer::start().await.unwrap();
    let client = client(&server).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for name in ["n1", "n2", "n3"] {
        add_node(&nodes, name, "1").await;
    }
    let stop = CancellationToken::new();
    let scheduler = tokio::spawn(run(
        client.clone(),
        SchedulerOptions {
            instance: "test".into(),
            ..SchedulerOptions::default()
        },
        stop.clone(),
    ));

    // Three replicas of one owner spread over the three nodes.
    for i in 0..3 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("web-{i}"), "600m", Some("rs-1")),
        )
        .await
        .unwrap();
    }
    let mut placed = Vec::new();
    for i in 0..3 {
        let name = format!("web-{i}");
        placed.push(until("a replica is bound", || node_of(&pods, &name)).await);
    }
    placed.sort();
    assert_eq!(placed, ["n1", "n2", "n3"]);
    let scheduled = pods.get("web-0").await.unwrap();
    let condition = scheduled
        .status
        .and_then(|s| s.conditions)
        .and_then(|c| c.into_iter().find(|c| c.type_ == "PodScheduled"))
        .expect("the binding sets PodScheduled");
    assert_eq!(condition.status, "True");

    // No node has 1500m left: the pod waits, and says why as kube-scheduler would.
    pods.create(&PostParams::default(), &pod("big", "1500m", None))
        .await
        .unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let message = until("a FailedScheduling event", || async {
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=big"))
            .await
            .ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedScheduling"))
            .and_then(|e| e.message)
    })
    .await;
    assert_eq!(message, "0/3 nodes are available: 3 Insufficient cpu.");
    let waiting = pods.get("big").await.unwrap();
    assert_eq!(waiting.spec.unwrap().node_name, None);
    let condition = waiting
        .status
        .and_then(|s| s.conditions)
        .and_then(|c| c.into_iter().find(|c| c.type_ == "PodScheduled"))
        .expect("PodScheduled");
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_deref()),
        ("False", Some("Unschedulable"))
    );

    // A node that fits joins: the waiting pod goes there.
    add_node(&nodes, "n4", "2").await;
    assert_eq!(until("big is bound", || node_of(&pods, "big")).await, "n4");

    // A deleted pod frees its share for the next one (n4 has only 500m left).
    let freed_node = node_of(&pods, "web-0").await.unwrap();
    pods.delete("web-0", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let freed = until("web-0 gone", || async {
        match pods.get_opt("web-0").await {
            Ok(None) => Some(()),
            _ => None,
        }
    });
    freed.await;
    pods.create(&PostParams::default(), &pod("after", "600m", None))
        .await
        .unwrap();
    let at = until("after is bound", || node_of(&pods, "after")).await;
    assert_eq!(at, freed_node);
    let scheduled_events = events
        .list(&ListParams::default().fields("reason=Scheduled"))
        .await
        .unwrap();
    let value: Value = serde_json::to_value(&scheduled_events.items[0]).unwrap();
    assert!(
        value["message"]
            .as_str()
            .unwrap()
            .starts_with("Successfully assigned default/"),
        "{value}"
    );
    stop.cancel();
    scheduler.await.unwrap();
}
