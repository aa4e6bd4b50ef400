//! What the in-process controller tests share: an admin client of the test API server,
//! a bounded wait, and the node agent's part (no agent runs in process).

#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::time::{Duration, Instant};

use cairn_apiserver::testing::TestServer;
use cairn_controllers::ControllerOptions;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// A `kube` client of `server` as a `system:masters` admin.
pub async fn client(server: &TestServer) -> kube::Client {
    let text = server.kubeconfig("admin", Some("system:masters")).unwrap();
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&text).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// A test API server with the controllers running against it and the test playing
/// the node agent for the `default` namespace's pods.
pub struct Running {
    /// Kept alive for the test: dropping it stops the server.
    _server: TestServer,
    /// An admin client of the server.
    pub client: kube::Client,
    /// The `default` namespace's pods.
    pub pods: Api<Pod>,
    stop: CancellationToken,
    controllers: tokio::task::JoinHandle<()>,
    agent: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts the server, the controllers and the agent's part.
    pub async fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let server = TestServer::start().await.unwrap();
        let client = client(&server).await;
        let stop = CancellationToken::new();
        let controllers = tokio::spawn(cairn_controllers::run(
            client.clone(),
            options(),
            stop.clone(),
        ));
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let agent = tokio::spawn(play_the_agent(pods.clone(), stop.clone()));
        Self {
            _server: server,
            client,
            pods,
            stop,
            controllers,
            agent,
        }
    }

    /// Stops the controllers and the agent's part, failing the test if either panicked.
    pub async fn finish(self) {
        self.stop.cancel();
        self.controllers.await.unwrap();
        self.agent.await.unwrap();
    }
}

/// Polls `check` every 50 ms until it gives a value; fails the test naming `what`
/// after 30 s.
pub async fn until<T, Fut: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> Fut,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The "cluster CA" the tests' controllers publish as `kube-root-ca.crt`.
pub const ROOT_CA: &str = "-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n";

/// Controllers that look again every 100 ms, with a minute's node grace.
pub fn options() -> ControllerOptions {
    ControllerOptions {
        instance: "test".into(),
        node_grace: Duration::from_secs(60),
        eviction_timeout: Duration::from_secs(60),
        resync: Duration::from_millis(100),
        root_ca: Some(ROOT_CA.into()),
    }
}

pub fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The node agent's part: pods become Running and Ready 200 ms after they appear
/// (those of image `stuck` stay Pending); pods being deleted are removed for good.
pub async fn play_the_agent(pods: Api<Pod>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        for pod in pods.list(&ListParams::default()).await.unwrap().items {
            let name = pod.name_any();
            if pod.metadata.deletion_timestamp.is_some() {
                let _ = pods
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
            } else if let Some(phase) = job_outcome(&pod) {
                // A Job's container runs to its end.
                let status = json!({"status": {"phase": phase}});
                let _ = pods
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await;
            } else if !ready(&pod) && !stuck(&pod) {
                let age = pod
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| k8s_openapi::jiff::Timestamp::now().duration_since(t.0))
                    .unwrap_or_default();
                if age.as_millis() >= 200 {
                    let now = k8s_openapi::jiff::Timestamp::now().to_string();
                    let status = json!({"status": {"phase": "Running", "conditions": [
                        {"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
                    let _ = pods
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the pod's image is `stuck`: it never starts.
pub fn stuck(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.as_deref())
        == Some("stuck")
}

/// The phase a pod of image `job:ok` or `job:fail` ends in, once 200 ms old and not
/// ended yet.
pub fn job_outcome(pod: &Pod) -> Option<&'static str> {
    let image = pod.spec.as_ref()?.containers.first()?.image.as_deref()?;
    let phase = match image {
        "job:ok" => "Succeeded",
        "job:fail" => "Failed",
        _ => return None,
    };
    let current = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let age = k8s_openapi::jiff::Timestamp::now()
        .duration_since(pod.metadata.creation_timestamp.as_ref()?.0)
        .as_millis();
    (age >= 200 && current != Some(phase)).then_some(phase)
}
