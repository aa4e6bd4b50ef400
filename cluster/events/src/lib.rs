//! Events Cairn's control-plane components record on the objects they act on (core/v1,
//! as `kubectl describe` lists them): the scheduler on pods, the controllers on their
//! workloads. Recording is best effort: a failure is logged, never fatal.

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use serde_json::json;
use tracing::debug;

/// The object an event is about.
#[derive(Debug, Clone, Copy)]
pub struct Involved<'a> {
    /// Its `apiVersion`.
    pub api_version: &'a str,
    /// Its kind.
    pub kind: &'a str,
    /// Its namespace (`None`: cluster-scoped; the event goes to `default`).
    pub namespace: Option<&'a str>,
    /// Its name.
    pub name: &'a str,
    /// Its uid.
    pub uid: Option<&'a str>,
}

/// Who records: the component (`default-scheduler`, `replicaset-controller`) and its
/// instance.
#[derive(Debug, Clone, Copy)]
pub struct Reporter<'a> {
    /// The controller's name.
    pub component: &'a str,
    /// Where it runs.
    pub instance: &'a str,
}

/// Records a `Normal` or `Warning` (`kind`) event with `reason` and `message`.
pub async fn record(
    client: &kube::Client,
    reporter: Reporter<'_>,
    involved: Involved<'_>,
    kind: &str,
    reason: &str,
    message: &str,
) {
    let namespace = involved.namespace.unwrap_or("default");
    let now = Timestamp::now().to_string();
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": format!("{}.", involved.name), "namespace": namespace},
        "involvedObject": {
            "apiVersion": involved.api_version, "kind": involved.kind,
            "namespace": involved.namespace, "name": involved.name, "uid": involved.uid,
        },
        "reason": reason,
        "message": message,
        "type": kind,
        "source": {"component": reporter.component},
        "reportingComponent": reporter.component,
        "reportingInstance": reporter.instance,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    let Ok(event) = serde_json::from_value::<Event>(event) else {
        debug!(%reason, "an event did not form");
        return;
    };
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    if let Err(err) = events.create(&PostParams::default(), &event).await {
        debug!(name = involved.name, %reason, error = %err, "could not record an event");
    }
}
