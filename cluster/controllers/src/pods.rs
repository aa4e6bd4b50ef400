//! What the controllers ask of a pod (and of any object's owner references): who
//! controls it, whether it has finished, whether it is ready.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;

/// The uid of the controlling owner named in `meta`, if it is of `kind`.
pub fn controller_uid<'a>(meta: &'a ObjectMeta, kind: &str) -> Option<&'a str> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == kind)
        .map(|o| o.uid.as_str())
}

/// The pod's phase as last reported.
pub fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// Whether the pod ran to its end (Succeeded or Failed).
pub fn finished(pod: &Pod) -> bool {
    matches!(phase(pod), Some("Succeeded" | "Failed"))
}

/// Whether the pod counts toward its controller: not being deleted, not finished.
pub fn active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !finished(pod)
}

/// Whether the pod's Ready condition is True.
pub fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the pod is available: ready for at least `min_ready_seconds` (a
/// workload's `minReadySeconds`) by `now`, judged from its Ready condition's last
/// change, as kube-controller-manager does. Controllers look again on their next
/// resync, so a pod becomes available within one resync of the time.
pub fn available(pod: &Pod, min_ready_seconds: Option<i32>, now: Timestamp) -> bool {
    if !ready(pod) {
        return false;
    }
    let seconds = min_ready_seconds.unwrap_or(0).max(0);
    if seconds == 0 {
        return true;
    }
    let since = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0);
    since.is_some_and(|since| {
        now.duration_since(since)
            >= k8s_openapi::jiff::SignedDuration::from_secs(i64::from(seconds))
    })
}

/// When a finished pod finished, as Kubernetes judges it: its last container's end,
/// else its Ready condition's last change, else its creation.
pub fn finished_at(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref();
    let containers = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    containers
        .or_else(|| {
            status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0)
        })
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_ready_pod_is_available_once_min_ready_seconds_have_passed() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        }))
        .unwrap();
        let at = |text: &str| text.parse::<Timestamp>().unwrap();
        assert!(available(&pod, None, at("2026-01-01T00:00:00Z")));
        assert!(available(&pod, Some(0), at("2026-01-01T00:00:00Z")));
        assert!(!available(&pod, Some(10), at("2026-01-01T00:00:09Z")));
        assert!(available(&pod, Some(10), at("2026-01-01T00:00:10Z")));
        let mut unready = pod.clone();
        unready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "False".into();
        assert!(!available(&unready, None, at("2026-01-01T00:01:00Z")));
    }

    #[test]
    fn a_pod_finished_when_its_last_container_ended() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z",
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j",
                    "uid": "j-1", "controller": true}]},
            "status": {"phase": "Failed", "containerStatuses": [
                {"name": "a", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T00:00:07Z"}}},
                {"name": "b", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T00:00:09Z"}}}]},
        }))
        .unwrap();
        assert!(finished(&pod) && !active(&pod) && !ready(&pod));
        assert_eq!(
            finished_at(&pod).unwrap().to_string(),
            "2026-01-01T00:00:09Z"
        );
        assert_eq!(controller_uid(&pod.metadata, "Job"), Some("j-1"));
        assert_eq!(controller_uid(&pod.metadata, "ReplicaSet"), None);
    }
}
