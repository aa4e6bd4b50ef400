//! In-process tier: the Endpoints and EndpointSlice controllers, and the ServiceAccount
//! and root-CA publishers, against a real API server in this process. The test writes
//! the pod status a node agent would (IP and readiness) and reads what kubectl and a
//! proxy would read.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use cairn_apiserver::testing::TestServer;
use cairn_controllers::endpoints::{SERVICE_NAME_LABEL, SLICE_MANAGED_BY};
use cairn_controllers::run;
use cairn_controllers::service_accounts::{DEFAULT_ACCOUNT, ROOT_CA_CONFIG_MAP};
use common::{ROOT_CA, client, options, until};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn report(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    let status = json!({"status": {"phase": "Running", "podIP": ip, "conditions": [
        {"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// (ready addresses, not-ready addresses, ports) of the Endpoints `web`.
async fn endpoints_of(api: &Api<Endpoints>) -> Option<(Vec<String>, Vec<String>, Vec<i32>)> {
    let endpoints = api.get_opt("web").await.ok()??;
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    let mut ports = Vec::new();
    for subset in endpoints.subsets.unwrap_or_default() {
        ready.extend(
            subset
                .addresses
                .unwrap_or_default()
                .into_iter()
                .map(|a| a.ip),
        );
        not_ready.extend(
            subset
                .not_ready_addresses
                .unwrap_or_default()
                .into_iter()
                .map(|a| a.ip),
        );
        ports.extend(subset.ports.unwrap_or_default().into_iter().map(|p| p.port));
    }
    ready.sort();
    not_ready.sort();
    ports.sort();
    ports.dedup();
    Some((ready, not_ready, ports))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_publishes_its_pods_as_endpoints_and_slices() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = TestServer::start().await.unwrap();
    let client = client(&server).await;
    let stop = CancellationToken::new();
    let controllers = tokio::spawn(run(client.clone(), options(), stop.clone()));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    for (name, app, ip) in [
        ("a", "web", "10.244.1.2"),
        ("b", "web", "10.244.2.2"),
        ("other", "db", "10.244.1.9"),
    ] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "x",
                "ports": [{"name": "http", "containerPort": 8080}]}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        report(&pods, name, ip, true).await;
    }
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]},
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let both = (
        vec!["10.244.1.2".to_owned(), "10.244.2.2".to_owned()],
        Vec::<String>::new(),
        vec![8080],
    );
    until("both pods behind web on 8080", || async {
        (endpoints_of(&endpoints).await? == both).then_some(())
    })
    .await;
    let slice = until("one slice for web", || async {
        let list = slices
            .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}=web")))
            .await
            .ok()?;
        (list.items.len() == 1
            && list.items[0]
                .endpoints
                .as_ref()
                .is_some_and(|e| e.len() == 2))
        .then(|| list.items[0].clone())
    })
    .await;
    assert_eq!(slice.address_type, "IPv4");
    assert!(
        slice
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .contains_key(SLICE_MANAGED_BY)
    );
    assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(8080));

    // Not ready: moved aside in both.
    report(&pods, "b", "10.244.2.2", false).await;
    let split = (
        vec!["10.244.1.2".to_owned()],
        vec!["10.244.2.2".to_owned()],
        vec![8080],
    );
    until("b not ready", || async {
        (endpoints_of(&endpoints).await? == split).then_some(())
    })
    .await;
    until("b not ready in the slice", || async {
        let list = slices
            .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}=web")))
            .await
            .ok()?;
        let ready: Vec<Option<bool>> = list
            .items
            .first()?
            .endpoints
            .as_ref()?
            .iter()
            .map(|e| e.conditions.as_ref().and_then(|c| c.ready))
            .collect();
        (ready == [Some(true), Some(false)]).then_some(())
    })
    .await;

    // The Service goes: its Endpoints and slices go with it.
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    until("endpoints and slices gone", || async {
        let endpoints_gone = endpoints.get_opt("web").await.ok()?.is_none();
        let slices_gone = slices
            .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}=web")))
            .await
            .ok()?
            .items
            .is_empty();
        (endpoints_gone && slices_gone).then_some(())
    })
    .await;
    stop.cancel();
    controllers.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_gets_its_default_account_and_the_cluster_ca() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = TestServer::start().await.unwrap();
    let client = client(&server).await;
    let stop = CancellationToken::new();
    let controllers = tokio::spawn(run(client.clone(), options(), stop.clone()));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
        )
        .await
        .unwrap();
    let published = |namespace: &str| {
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        async move {
            accounts.get_opt(DEFAULT_ACCOUNT).await.ok()??;
            let map = maps.get_opt(ROOT_CA_CONFIG_MAP).await.ok()??;
            (map.data?.get("ca.crt")? == ROOT_CA).then_some(())
        }
    };
    for namespace in ["default", "kube-system", "team"] {
        until(&format!("{namespace}'s account and CA"), || {
            published(namespace)
        })
        .await;
    }

    // Deleted or changed, they come back as they were.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "team");
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    accounts
        .delete(DEFAULT_ACCOUNT, &DeleteParams::default())
        .await
        .unwrap();
    maps.patch(
        ROOT_CA_CONFIG_MAP,
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"ca.crt": "tampered"}})),
    )
    .await
    .unwrap();
    until("team's account and CA again", || published("team")).await;

    // A namespace being deleted gets nothing new: it goes, and stays gone.
    namespaces
        .delete("team", &DeleteParams::default())
        .await
        .unwrap();
    until("team gone", || async {
        namespaces
            .get_opt("team")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        accounts
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    stop.cancel();
    controllers.await.unwrap();
}
