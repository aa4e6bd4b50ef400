//! The events the kubelet records on a pod, as `kubectl describe pod` lists them
//! (`Pulling`, `Pulled`, `Created`, `Started`, `BackOff`, `Failed`, `Killing`, and
//! `FailedMount`, `NetworkNotReady` or `FailedCreatePodSandBox` while the pod cannot be
//! set up), derived from the change between two reported statuses, and `Unhealthy`
//! from the runtime's count of failed probe attempts. Pure, so the mapping is
//! unit-tested; [`record`] sends them, best effort.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ContainerState, ContainerStatus, Pod, PodStatus};

use cairn_events::{Involved, Reporter};
use cairn_runtime::pod::{MOUNT_FAILED, NETWORK_NOT_READY, ProbeFailures};

/// The component name the kubelet's events carry.
const COMPONENT: &str = "kubelet";

/// One event about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEvent {
    /// `Normal` or `Warning`.
    pub kind: &'static str,
    /// The machine-readable reason (`Started`).
    pub reason: &'static str,
    /// What a user reads.
    pub message: String,
}

impl PodEvent {
    fn normal(reason: &'static str, message: String) -> Self {
        Self {
            kind: "Normal",
            reason,
            message,
        }
    }

    fn warning(reason: &'static str, message: String) -> Self {
        Self {
            kind: "Warning",
            reason,
            message,
        }
    }
}

/// Waiting reasons the kubelet reports as a failed container start.
const FAILED_REASONS: [&str; 5] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// The events for the change from `previous` (the status last reported, if any) to
/// `next`, for the pod `pod` (`namespace/name`, for messages).
pub fn transitions(previous: Option<&PodStatus>, next: &PodStatus, pod: &str) -> Vec<PodEvent> {
    let mut events = Vec::new();
    if let Some(failure) = setup_failure(next)
        && previous.and_then(setup_failure) != Some(failure)
    {
        events.push(setup_failure_event(failure));
    }
    let before = |name: &str| {
        previous
            .into_iter()
            .flat_map(statuses)
            .find(|c| c.name == name)
    };
    for container in statuses(next) {
        let old = before(&container.name);
        let name = &container.name;
        let image = &container.image;
        let waiting = |state: Option<&ContainerState>| {
            state
                .and_then(|s| s.waiting.as_ref())
                .map(|w| (w.reason.clone(), w.message.clone()))
        };
        let was = waiting(old.and_then(|c| c.state.as_ref()));
        let now = waiting(container.state.as_ref());
        let pulling = |w: &Option<(Option<String>, Option<String>)>| {
            w.as_ref()
                .and_then(|(_, m)| m.as_deref())
                .is_some_and(|m| m.starts_with("pulling image"))
        };
        if pulling(&now) && !pulling(&was) {
            events.push(PodEvent::normal(
                "Pulling",
                format!("Pulling image {image:?}"),
            ));
        }
        let new_instance = container.container_id.is_some()
            && old.and_then(|c| c.container_id.as_ref()) != container.container_id.as_ref()
            && container
                .state
                .as_ref()
                .is_some_and(|s| s.running.is_some() || s.terminated.is_some());
        if new_instance {
            let pulled = if pulling(&was) {
                format!("Successfully pulled image {image:?}")
            } else {
                format!("Container image {image:?} already present on machine")
            };
            events.push(PodEvent::normal("Pulled", pulled));
            events.push(PodEvent::normal(
                "Created",
                format!("Created container: {name}"),
            ));
            events.push(PodEvent::normal(
                "Started",
                format!("Started container {name}"),
            ));
        }
        let reason_now = now.as_ref().and_then(|(r, _)| r.as_deref());
        let reason_was = was.as_ref().and_then(|(r, _)| r.as_deref());
        if reason_now == reason_was {
            continue;
        }
        let detail = now
            .as_ref()
            .and_then(|(_, m)| m.clone())
            .unwrap_or_default();
        match reason_now {
            Some("CrashLoopBackOff") => events.push(PodEvent::warning(
                "BackOff",
                format!("Back-off restarting failed container {name} in pod {pod}"),
            )),
            Some("ErrImageNeverPull") => {
                events.push(PodEvent::warning("ErrImageNeverPull", detail));
            }
            Some(reason) if FAILED_REASONS.contains(&reason) => {
                events.push(PodEvent::warning(
                    "Failed",
                    format!("Error: {reason}: {detail}"),
                ));
            }
            _ => {}
        }
    }
    events
}

/// Why the pod's sandbox or volumes cannot be set up yet, if that is what its
/// containers wait for (the runtime retries, and says so in their waiting message).
fn setup_failure(status: &PodStatus) -> Option<&str> {
    statuses(status).find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let message = waiting.message.as_deref()?;
        (waiting.reason.as_deref() == Some("ContainerCreating")
            && !message.is_empty()
            && !message.starts_with("pulling image"))
        .then_some(message)
    })
}

/// The kubelet's event for a setup failure: `FailedMount`, `NetworkNotReady` or
/// `FailedCreatePodSandBox`.
fn setup_failure_event(message: &str) -> PodEvent {
    if message.starts_with(MOUNT_FAILED) {
        PodEvent::warning("FailedMount", message.to_owned())
    } else if message.starts_with(NETWORK_NOT_READY) {
        PodEvent::warning("NetworkNotReady", message.to_owned())
    } else {
        PodEvent::warning(
            "FailedCreatePodSandBox",
            format!("Failed to create pod sandbox: {message}"),
        )
    }
}

/// The `Unhealthy` events for probe attempts that failed since the counts in `told`
/// (by container; updated to the new counts): one per container whose count grew,
/// with its last failure's message. Repeats of one message add to one event's count.
pub fn unhealthy(told: &mut BTreeMap<String, u32>, failures: &[ProbeFailures]) -> Vec<PodEvent> {
    let mut events = Vec::new();
    for failure in failures {
        let before = told.insert(failure.container.clone(), failure.count);
        if before.is_none_or(|count| count < failure.count) {
            events.push(PodEvent::warning("Unhealthy", failure.last.clone()));
        }
    }
    events
}

/// The `Killing` events of a pod being stopped: one per container that runs.
pub fn killing(pod: &Pod) -> Vec<PodEvent> {
    pod.status
        .iter()
        .flat_map(statuses)
        .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        .map(|c| PodEvent::normal("Killing", format!("Stopping container {}", c.name)))
        .collect()
}

fn statuses(status: &PodStatus) -> impl Iterator<Item = &ContainerStatus> {
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
}

/// Records `events` on the pod `namespace/name` (`uid`) as the kubelet of `node`.
pub async fn record(
    client: &kube::Client,
    node: &str,
    (namespace, name, uid): (&str, &str, &str),
    events: Vec<PodEvent>,
) {
    let reporter = Reporter {
        component: COMPONENT,
        instance: node,
    };
    let involved = Involved {
        api_version: "v1",
        kind: "Pod",
        namespace: Some(namespace),
        name,
        uid: Some(uid),
    };
    for event in events {
        cairn_events::record(
            client,
            reporter,
            involved,
            event.kind,
            event.reason,
            &event.message,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(containers: serde_json::Value) -> PodStatus {
        serde_json::from_value(serde_json::json!({ "containerStatuses": containers })).unwrap()
    }

    fn reasons(events: &[PodEvent]) -> Vec<&str> {
        events.iter().map(|e| e.reason).collect()
    }

    #[test]
    fn each_new_probe_failure_is_told_once_as_unhealthy() {
        let failed = |count, last: &str| {
            vec![ProbeFailures {
                container: "web".into(),
                count,
                last: last.into(),
            }]
        };
        let mut told = BTreeMap::new();
        assert!(unhealthy(&mut told, &[]).is_empty());
        let first = unhealthy(&mut told, &failed(1, "Readiness probe failed: exit 1"));
        assert_eq!(reasons(&first), ["Unhealthy"]);
        assert_eq!(first[0].kind, "Warning");
        assert_eq!(first[0].message, "Readiness probe failed: exit 1");
        // Nothing new: nothing told.
        assert!(unhealthy(&mut told, &failed(1, "Readiness probe failed: exit 1")).is_empty());
        let later = unhealthy(&mut told, &failed(3, "Liveness probe failed: refused"));
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].message, "Liveness probe failed: refused");
    }

    #[test]
    fn a_container_that_starts_is_pulled_created_and_started_once() {
        let creating = status(serde_json::json!([{
            "name": "main", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating"}}
        }]));
        let running = status(serde_json::json!([{
            "name": "main", "image": "busybox", "imageID": "", "ready": true, "restartCount": 0,
            "containerID": "cairn://a-0",
            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
        }]));
        let events = transitions(Some(&creating), &running, "default/web");
        assert_eq!(reasons(&events), ["Pulled", "Created", "Started"]);
        assert_eq!(
            events[0].message,
            "Container image \"busybox\" already present on machine"
        );
        assert_eq!(events[2].message, "Started container main");
        assert!(transitions(Some(&running), &running, "default/web").is_empty());
        // No previous report (a pod first seen running): its start is still told.
        assert_eq!(
            reasons(&transitions(None, &running, "default/web")).len(),
            3
        );
    }

    #[test]
    fn a_pull_is_told_before_and_after_and_a_crash_loop_warns_once() {
        let pulling = status(serde_json::json!([{
            "name": "main", "image": "r/app", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating", "message": "pulling image \"r/app\""}}
        }]));
        assert_eq!(
            reasons(&transitions(None, &pulling, "default/app")),
            ["Pulling"]
        );
        let started = status(serde_json::json!([{
            "name": "main", "image": "r/app", "imageID": "", "ready": false, "restartCount": 0,
            "containerID": "cairn://a-0",
            "state": {"terminated": {"exitCode": 1}}
        }]));
        let events = transitions(Some(&pulling), &started, "default/app");
        assert_eq!(events[0].message, "Successfully pulled image \"r/app\"");
        let backoff = status(serde_json::json!([{
            "name": "main", "image": "r/app", "imageID": "", "ready": false, "restartCount": 1,
            "containerID": "cairn://a-0",
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}}
        }]));
        let events = transitions(Some(&started), &backoff, "default/app");
        assert_eq!(reasons(&events), ["BackOff"]);
        assert_eq!(events[0].kind, "Warning");
        assert!(transitions(Some(&backoff), &backoff, "default/app").is_empty());
    }

    #[test]
    fn a_missing_image_under_never_is_a_warning_with_the_runtimes_message() {
        let never = status(serde_json::json!([{
            "name": "main", "image": "nope", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImageNeverPull", "message": "image \"nope\" is not present"}}
        }]));
        let events = transitions(None, &never, "default/x");
        assert_eq!(reasons(&events), ["ErrImageNeverPull"]);
        assert_eq!(events[0].message, "image \"nope\" is not present");
    }

    #[test]
    fn a_volume_that_cannot_be_set_up_is_one_failed_mount_per_new_reason() {
        let creating = |message: &str| {
            status(serde_json::json!([
                {"name": "a", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "ContainerCreating", "message": message}}},
                {"name": "b", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "ContainerCreating", "message": message}}}
            ]))
        };
        let missing =
            format!("{MOUNT_FAILED}: spec.volumes[0].configMap.name: config map \"cfg\" not found");
        let events = transitions(Some(&creating("")), &creating(&missing), "default/x");
        assert_eq!(reasons(&events), ["FailedMount"]);
        assert_eq!(events[0].kind, "Warning");
        assert_eq!(events[0].message, missing);
        // The runtime retries with the same message: no new event until it changes.
        assert!(
            transitions(Some(&creating(&missing)), &creating(&missing), "default/x").is_empty()
        );
        let no_network = format!("{NETWORK_NOT_READY}: the node's pod network has not started");
        let events = transitions(
            Some(&creating(&missing)),
            &creating(&no_network),
            "default/x",
        );
        assert_eq!(reasons(&events), ["NetworkNotReady"]);
        let events = transitions(None, &creating("creating namespaces: EPERM"), "default/x");
        assert_eq!(reasons(&events), ["FailedCreatePodSandBox"]);
        assert_eq!(
            events[0].message,
            "Failed to create pod sandbox: creating namespaces: EPERM"
        );
        // Pulling is not a failure.
        assert!(
            transitions(None, &creating("pulling image \"i\""), "default/x")
                .iter()
                .all(|e| e.reason == "Pulling")
        );
    }

    #[test]
    fn killing_names_each_running_container() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "status": {"containerStatuses": [
                {"name": "a", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                 "state": {"running": {}}},
                {"name": "b", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 0}}}
            ]}
        }))
        .unwrap();
        let events = killing(&pod);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].message, "Stopping container a");
    }
}
