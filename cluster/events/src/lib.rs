//! Events Cairn's control-plane components record on the objects they act on (core/v1,
//! as `kubectl describe` lists them): the scheduler on pods, the controllers on their
//! workloads. Recording is best effort: a failure is logged, never fatal. The same
//! occurrence again (one reporter, object, type, reason and message) adds to its
//! event's `count` and `lastTimestamp`, as client-go's aggregation does, so
//! `kubectl describe` says `(x5 over 2m)` instead of listing five events.

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
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
    let name = event_name(reporter, involved, kind, reason, message);
    let now = Timestamp::now().to_string();
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": namespace},
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
    let result = match events.create(&PostParams::default(), &event).await {
        Err(kube::Error::Api(status)) if status.code == 409 => {
            count_again(&events, &name, &now).await
        }
        other => other.map(drop),
    };
    if let Err(err) = result {
        debug!(name = involved.name, %reason, error = %err, "could not record an event");
    }
}

/// Adds one to the count of the event `name` that exists already. Recorders may
/// create and patch events but not read them (as in Kubernetes' roles), so the first
/// patch's answer gives the count the second one raises; two recorders racing may
/// lose a count, never an event.
async fn count_again(events: &Api<Event>, name: &str, now: &str) -> Result<(), kube::Error> {
    let touched = json!({"lastTimestamp": now});
    let existing = events
        .patch(name, &PatchParams::default(), &Patch::Merge(&touched))
        .await?;
    let count = existing.count.unwrap_or(1).saturating_add(1);
    let counted = json!({"count": count});
    events
        .patch(name, &PatchParams::default(), &Patch::Merge(&counted))
        .await
        .map(drop)
}

/// The name of the event for one occurrence: the involved object's name and a hash of
/// what makes occurrences the same.
fn event_name(
    reporter: Reporter<'_>,
    involved: Involved<'_>,
    kind: &str,
    reason: &str,
    message: &str,
) -> String {
    // FNV-1a: stable across builds, unlike std's hasher, so every node names alike.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let fields = [
        reporter.component,
        reporter.instance,
        involved.kind,
        involved.name,
        involved.uid.unwrap_or_default(),
        kind,
        reason,
        message,
    ];
    for field in fields {
        for byte in field.bytes().chain([0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    // A name has at most 253 characters; the hash keeps it unique.
    let object: String = involved.name.chars().take(200).collect();
    format!("{object}.{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULER: Reporter<'static> = Reporter {
        component: "default-scheduler",
        instance: "cp-1",
    };

    fn pod(name: &'static str) -> Involved<'static> {
        Involved {
            api_version: "v1",
            kind: "Pod",
            namespace: Some("default"),
            name,
            uid: Some("u-1"),
        }
    }

    #[test]
    fn one_occurrence_has_one_name_and_another_message_another() {
        let name = |message| {
            event_name(
                SCHEDULER,
                pod("web"),
                "Warning",
                "FailedScheduling",
                message,
            )
        };
        assert_eq!(name("0/3 nodes fit"), name("0/3 nodes fit"));
        assert_ne!(name("0/3 nodes fit"), name("0/4 nodes fit"));
        assert!(name("x").starts_with("web."));
        let long = "a".repeat(253);
        let long: &'static str = Box::leak(long.into_boxed_str());
        let named = event_name(SCHEDULER, pod(long), "Normal", "Scheduled", "m");
        assert!(named.len() <= 253, "{}", named.len());
    }
}
