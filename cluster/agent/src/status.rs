//! A pod's `status` as the kubelet reports it, from what the runtime knows: phase,
//! the five conditions with kubelet's reasons and messages, container statuses,
//! addresses and start time. Pure, so the mapping is unit-tested; the previous status
//! keeps transition times and the start time stable.

use k8s_openapi::api::core::v1::{ContainerStatus, HostIP, PodCondition, PodIP, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use cairn_runtime::pod::{Phase, PodRuntimeStatus};

/// Where the pod runs, for its addresses.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    /// The node's address (`status.hostIP`).
    pub host_ip: Option<&'a str>,
    /// The pod shares the node's network (its pod IP is the host IP).
    pub host_network: bool,
}

/// The status to report for a pod the runtime runs: `previous` is the status on the
/// server, `now` the time of this report.
pub fn pod_status(
    runtime: &PodRuntimeStatus,
    previous: Option<&PodStatus>,
    placement: Placement<'_>,
    now: Timestamp,
) -> PodStatus {
    let terminal = matches!(runtime.phase, Phase::Succeeded | Phase::Failed);
    let pod_ip = if placement.host_network {
        placement.host_ip.map(str::to_owned)
    } else {
        runtime.pod_ip.clone()
    };
    // The sandbox is ready once the pod has its address, or (on a node without a pod
    // network) once any container of it has run.
    let ran = runtime
        .init_container_statuses
        .iter()
        .chain(&runtime.container_statuses)
        .any(|c| {
            c.state
                .as_ref()
                .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
        });
    let sandbox_ready = (pod_ip.is_some() || placement.host_network || ran) && !terminal;
    let unready = names(&runtime.container_statuses, |c| !c.ready);
    let incomplete = names(&runtime.init_container_statuses, |c| !init_done(c));
    let containers_ready = runtime.containers_ready && !terminal;
    let condition = |kind: &str, ok: bool, reason: Option<&str>, message: Option<String>| {
        let status = if ok { "True" } else { "False" };
        let transition = previous
            .and_then(|p| p.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == kind))
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        PodCondition {
            type_: kind.to_owned(),
            status: status.to_owned(),
            reason: reason.map(str::to_owned),
            message,
            last_transition_time: Some(transition),
            ..PodCondition::default()
        }
    };
    let (ready_reason, ready_message) = if terminal {
        (Some("PodCompleted"), None)
    } else if containers_ready {
        (None, None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!("containers with unready status: [{unready}]")),
        )
    };
    let scheduled = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
        .cloned()
        .unwrap_or_else(|| condition("PodScheduled", true, None, None));
    let conditions = vec![
        condition("PodReadyToStartContainers", sandbox_ready, None, None),
        if runtime.initialized || terminal {
            condition(
                "Initialized",
                true,
                terminal.then_some("PodCompleted"),
                None,
            )
        } else {
            condition(
                "Initialized",
                false,
                Some("ContainersNotInitialized"),
                Some(format!("containers with incomplete status: [{incomplete}]")),
            )
        },
        condition(
            "Ready",
            containers_ready,
            ready_reason,
            ready_message.clone(),
        ),
        condition(
            "ContainersReady",
            containers_ready,
            ready_reason,
            ready_message,
        ),
        scheduled,
    ];
    PodStatus {
        phase: Some(runtime.phase.as_str().to_owned()),
        message: runtime.message.clone(),
        conditions: Some(conditions),
        host_ip: placement.host_ip.map(str::to_owned),
        host_ips: placement
            .host_ip
            .map(|ip| vec![HostIP { ip: ip.to_owned() }]),
        pod_ips: pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        pod_ip,
        start_time: previous
            .and_then(|p| p.start_time.clone())
            .or(Some(Time(now))),
        container_statuses: Some(runtime.container_statuses.clone()),
        init_container_statuses: (!runtime.init_container_statuses.is_empty())
            .then(|| runtime.init_container_statuses.clone()),
        qos_class: previous.and_then(|p| p.qos_class.clone()),
        ..PodStatus::default()
    }
}

/// Whether an init container has done its part: exited 0, or (a sidecar) started.
fn init_done(status: &ContainerStatus) -> bool {
    let state = status.state.as_ref();
    let completed = state
        .and_then(|s| s.terminated.as_ref())
        .is_some_and(|t| t.exit_code == 0);
    let running = state.is_some_and(|s| s.running.is_some());
    completed || running
}

/// The names of the containers `which` picks, space-separated as kubelet prints them.
fn names(statuses: &[ContainerStatus], which: impl Fn(&ContainerStatus) -> bool) -> String {
    statuses
        .iter()
        .filter(|c| which(c))
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateRunning};

    fn running(name: &str, ready: bool) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            ready,
            started: Some(true),
            image: "busybox".into(),
            image_id: String::new(),
            restart_count: 0,
            state: Some(ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }
    }

    fn runtime(phase: Phase, ready: bool) -> PodRuntimeStatus {
        PodRuntimeStatus {
            phase,
            message: None,
            init_container_statuses: vec![],
            container_statuses: vec![running("app", ready), running("side", true)],
            initialized: true,
            containers_ready: ready,
            stopping: false,
            pod_ip: Some("10.244.0.5".into()),
            probe_failures: vec![],
        }
    }

    const ON_NODE: Placement<'static> = Placement {
        host_ip: Some("10.5.0.2"),
        host_network: false,
    };

    fn condition<'a>(status: &'a PodStatus, kind: &str) -> &'a PodCondition {
        status
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == kind)
            .unwrap()
    }

    #[test]
    fn an_unready_container_is_named_and_readiness_keeps_its_transition_time() {
        let start = Timestamp::UNIX_EPOCH;
        let first = pod_status(&runtime(Phase::Running, false), None, ON_NODE, start);
        assert_eq!(first.phase.as_deref(), Some("Running"));
        assert_eq!(first.pod_ip.as_deref(), Some("10.244.0.5"));
        assert_eq!(first.host_ip.as_deref(), Some("10.5.0.2"));
        let ready = condition(&first, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [app]")
        );
        let later = Timestamp::from_second(30).unwrap();
        let same = pod_status(
            &runtime(Phase::Running, false),
            Some(&first),
            ON_NODE,
            later,
        );
        assert_eq!(first, same, "nothing changed, nothing to write");
        let now_ready = pod_status(&runtime(Phase::Running, true), Some(&first), ON_NODE, later);
        assert_eq!(condition(&now_ready, "Ready").status, "True");
        assert_eq!(
            condition(&now_ready, "Ready").last_transition_time,
            Some(Time(later))
        );
        assert_eq!(
            condition(&now_ready, "Initialized").last_transition_time,
            Some(Time(start))
        );
        assert_eq!(now_ready.start_time, Some(Time(start)));
    }

    #[test]
    fn a_completed_pod_is_not_ready_because_it_completed() {
        let status = pod_status(
            &runtime(Phase::Succeeded, true),
            None,
            ON_NODE,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(status.phase.as_deref(), Some("Succeeded"));
        assert_eq!(condition(&status, "Ready").status, "False");
        assert_eq!(
            condition(&status, "Ready").reason.as_deref(),
            Some("PodCompleted")
        );
        assert_eq!(
            condition(&status, "PodReadyToStartContainers").status,
            "False"
        );
    }

    #[test]
    fn a_host_network_pod_has_the_host_address() {
        let mut on_host = runtime(Phase::Running, true);
        on_host.pod_ip = None;
        let placement = Placement {
            host_network: true,
            ..ON_NODE
        };
        let status = pod_status(&on_host, None, placement, Timestamp::UNIX_EPOCH);
        assert_eq!(status.pod_ip.as_deref(), Some("10.5.0.2"));
        assert_eq!(status.pod_ips.unwrap()[0].ip, "10.5.0.2");
    }
}
