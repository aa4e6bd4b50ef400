//! Defaulting of the built-in kinds, as Kubernetes' `SetDefaults_*` functions do it
//! (pkg/apis/core/v1/defaults.go, apps/v1, batch/v1): what a user sees filled in
//! when reading back an object they created with fields left out.

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetUpdateStrategy, Deployment, DeploymentStrategy, ReplicaSet,
    RollingUpdateDaemonSet, RollingUpdateDeployment, RollingUpdateStatefulSetStrategy, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::batch::v1::{CronJob, Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, Namespace, NamespaceSpec, NamespaceStatus, Pod, PodSpec,
    PodTemplateSpec, Probe, Secret, Service, Volume,
};
use k8s_openapi::api::core::v1::{EndpointPort, Endpoints};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn set<T>(slot: &mut Option<T>, value: T) {
    if slot.is_none() {
        *slot = Some(value);
    }
}

/// `Always` for `:latest` or untagged images, `IfNotPresent` otherwise (digests too).
pub fn image_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn probe(probe: &mut Option<Probe>) {
    let Some(probe) = probe else { return };
    set(&mut probe.timeout_seconds, 1);
    set(&mut probe.period_seconds, 10);
    set(&mut probe.success_threshold, 1);
    set(&mut probe.failure_threshold, 3);
    if let Some(http) = &mut probe.http_get {
        set(&mut http.path, "/".into());
        set(&mut http.scheme, "HTTP".into());
    }
}

fn container(c: &mut Container) {
    if let Some(image) = &c.image {
        set(&mut c.image_pull_policy, image_pull_policy(image).into());
    }
    set(
        &mut c.termination_message_path,
        "/dev/termination-log".into(),
    );
    set(&mut c.termination_message_policy, "File".into());
    for port in c.ports.iter_mut().flatten() {
        set(&mut port.protocol, "TCP".into());
    }
    probe(&mut c.liveness_probe);
    probe(&mut c.readiness_probe);
    probe(&mut c.startup_probe);
}

fn volume(v: &mut Volume) {
    let has_source = v.config_map.is_some()
        || v.secret.is_some()
        || v.empty_dir.is_some()
        || v.host_path.is_some()
        || v.downward_api.is_some()
        || v.projected.is_some()
        || v.persistent_volume_claim.is_some()
        || v.ephemeral.is_some()
        || v.csi.is_some()
        || v.nfs.is_some()
        || v.image.is_some()
        || v.iscsi.is_some()
        || v.git_repo.is_some()
        || v.fc.is_some();
    if !has_source {
        v.empty_dir = Some(EmptyDirVolumeSource::default());
    }
    if let Some(s) = &mut v.secret {
        set(&mut s.default_mode, 420);
    }
    if let Some(c) = &mut v.config_map {
        set(&mut c.default_mode, 420);
    }
    if let Some(d) = &mut v.downward_api {
        set(&mut d.default_mode, 420);
    }
    if let Some(p) = &mut v.projected {
        set(&mut p.default_mode, 420);
    }
    if let Some(h) = &mut v.host_path {
        set(&mut h.type_, String::new());
    }
}

/// A pod spec's defaults (`for_pod`: the ones only pods get, not templates).
pub fn pod_spec(spec: &mut PodSpec, for_pod: bool) {
    set(&mut spec.dns_policy, "ClusterFirst".into());
    set(&mut spec.restart_policy, "Always".into());
    set(&mut spec.security_context, Default::default());
    set(&mut spec.termination_grace_period_seconds, 30);
    set(&mut spec.scheduler_name, "default-scheduler".into());
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        container(c);
        if for_pod
            && let Some(resources) = &mut c.resources
            && let Some(limits) = &resources.limits
        {
            let requests = resources.requests.get_or_insert_with(Default::default);
            for (key, value) in limits {
                requests.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        if for_pod && spec.host_network == Some(true) {
            for port in c.ports.iter_mut().flatten() {
                set(&mut port.host_port, port.container_port);
            }
        }
    }
    for v in spec.volumes.iter_mut().flatten() {
        volume(v);
    }
    if for_pod {
        set(&mut spec.enable_service_links, true);
    }
}

fn template(t: &mut PodTemplateSpec) {
    if let Some(spec) = &mut t.spec {
        pod_spec(spec, false);
    }
}

/// A Pod.
pub fn pod(p: &mut Pod) {
    if let Some(spec) = &mut p.spec {
        pod_spec(spec, true);
    }
}

/// A Deployment.
pub fn deployment(d: &mut Deployment) {
    let spec = &mut d.spec;
    set(&mut spec.replicas, 1);
    set(&mut spec.revision_history_limit, 10);
    set(&mut spec.progress_deadline_seconds, 600);
    let strategy = spec
        .strategy
        .get_or_insert_with(DeploymentStrategy::default);
    set(&mut strategy.type_, "RollingUpdate".into());
    if strategy.type_.as_deref() == Some("RollingUpdate") {
        let rolling = strategy
            .rolling_update
            .get_or_insert_with(RollingUpdateDeployment::default);
        set(
            &mut rolling.max_unavailable,
            IntOrString::String("25%".into()),
        );
        set(&mut rolling.max_surge, IntOrString::String("25%".into()));
    }
    template(&mut spec.template);
}

/// A ReplicaSet.
pub fn replica_set(r: &mut ReplicaSet) {
    let spec = &mut r.spec;
    set(&mut spec.replicas, 1);
    if let Some(t) = &mut spec.template {
        template(t);
    }
}

/// A DaemonSet.
pub fn daemon_set(d: &mut DaemonSet) {
    let spec = &mut d.spec;
    set(&mut spec.revision_history_limit, 10);
    let strategy = spec
        .update_strategy
        .get_or_insert_with(DaemonSetUpdateStrategy::default);
    set(&mut strategy.type_, "RollingUpdate".into());
    if strategy.type_.as_deref() == Some("RollingUpdate") {
        let rolling = strategy
            .rolling_update
            .get_or_insert_with(RollingUpdateDaemonSet::default);
        set(&mut rolling.max_unavailable, IntOrString::Int(1));
        set(&mut rolling.max_surge, IntOrString::Int(0));
    }
    template(&mut spec.template);
}

/// A StatefulSet.
pub fn stateful_set(s: &mut StatefulSet) {
    let spec = &mut s.spec;
    set(&mut spec.replicas, 1);
    set(&mut spec.revision_history_limit, 10);
    set(&mut spec.pod_management_policy, "OrderedReady".into());
    let strategy = spec
        .update_strategy
        .get_or_insert_with(StatefulSetUpdateStrategy::default);
    set(&mut strategy.type_, "RollingUpdate".into());
    if strategy.type_.as_deref() == Some("RollingUpdate") {
        let rolling = strategy
            .rolling_update
            .get_or_insert_with(RollingUpdateStatefulSetStrategy::default);
        set(&mut rolling.partition, 0);
    }
    let retention = spec
        .persistent_volume_claim_retention_policy
        .get_or_insert_with(StatefulSetPersistentVolumeClaimRetentionPolicy::default);
    set(&mut retention.when_deleted, "Retain".into());
    set(&mut retention.when_scaled, "Retain".into());
    template(&mut spec.template);
}

/// A Job's spec.
pub fn job_spec(spec: &mut JobSpec) {
    if spec.completions.is_none() && spec.parallelism.is_none() {
        spec.completions = Some(1);
    }
    set(&mut spec.parallelism, 1);
    if spec.backoff_limit_per_index.is_some() {
        set(&mut spec.backoff_limit, i32::MAX);
    }
    set(&mut spec.backoff_limit, 6);
    set(&mut spec.completion_mode, "NonIndexed".into());
    set(&mut spec.suspend, false);
    set(&mut spec.manual_selector, false);
    let replacement = if spec.pod_failure_policy.is_some() {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    set(&mut spec.pod_replacement_policy, replacement.into());
    template(&mut spec.template);
}

/// A Job.
pub fn job(j: &mut Job) {
    if let Some(spec) = &mut j.spec {
        job_spec(spec);
        // The job's labels default to its template's.
        if j.metadata.labels.as_ref().is_none_or(|l| l.is_empty())
            && let Some(labels) = spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
        {
            j.metadata.labels = Some(labels);
        }
    }
}

/// A CronJob.
pub fn cron_job(c: &mut CronJob) {
    let spec = &mut c.spec;
    set(&mut spec.concurrency_policy, "Allow".into());
    set(&mut spec.suspend, false);
    set(&mut spec.successful_jobs_history_limit, 3);
    set(&mut spec.failed_jobs_history_limit, 1);
    if let Some(job) = &mut spec.job_template.spec {
        template(&mut job.template);
    }
}

/// A Service (addresses are the allocator's, not defaults).
pub fn service(s: &mut Service) {
    let Some(spec) = &mut s.spec else { return };
    set(&mut spec.type_, "ClusterIP".into());
    set(&mut spec.session_affinity, "None".into());
    let kind = spec.type_.clone().unwrap_or_default();
    for port in spec.ports.iter_mut().flatten() {
        set(&mut port.protocol, "TCP".into());
        let unset = match &port.target_port {
            None => true,
            Some(IntOrString::Int(0)) => true,
            Some(IntOrString::String(s)) => s.is_empty(),
            _ => false,
        };
        if unset {
            port.target_port = Some(IntOrString::Int(port.port));
        }
    }
    if kind != "ExternalName" {
        set(&mut spec.internal_traffic_policy, "Cluster".into());
    }
    if matches!(kind.as_str(), "NodePort" | "LoadBalancer") {
        set(&mut spec.external_traffic_policy, "Cluster".into());
    }
    if kind == "LoadBalancer" {
        set(&mut spec.allocate_load_balancer_node_ports, true);
    }
}

/// A Secret.
pub fn secret(s: &mut Secret) {
    set(&mut s.type_, "Opaque".into());
}

/// A Namespace (its name label, `Active`, the `kubernetes` finalizer).
pub fn namespace(n: &mut Namespace) {
    if let Some(name) = n.metadata.name.clone() {
        n.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("kubernetes.io/metadata.name".into(), name);
    }
    let spec = n.spec.get_or_insert_with(NamespaceSpec::default);
    set(&mut spec.finalizers, vec!["kubernetes".into()]);
    let status = n.status.get_or_insert_with(NamespaceStatus::default);
    set(&mut status.phase, "Active".into());
}

fn endpoint_port(p: &mut EndpointPort) {
    set(&mut p.protocol, "TCP".into());
}

/// Endpoints.
pub fn endpoints(e: &mut Endpoints) {
    for subset in e.subsets.iter_mut().flatten() {
        for port in subset.ports.iter_mut().flatten() {
            endpoint_port(port);
        }
    }
}

/// An EndpointSlice.
pub fn endpoint_slice(e: &mut EndpointSlice) {
    for port in e.ports.iter_mut().flatten() {
        set(&mut port.protocol, "TCP".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_get_kubernetes_defaults() {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "a", "image": "busybox", "ports": [{"containerPort": 80}],
                 "resources": {"limits": {"memory": "64Mi"}},
                 "readinessProbe": {"httpGet": {"port": 80}}},
                {"name": "b", "image": "registry:5000/x:1.2"},
                {"name": "c", "image": "x@sha256:abcd"}],
                "volumes": [{"name": "v"}, {"name": "s", "secret": {"secretName": "s"}}]}
        }))
        .unwrap();
        pod(&mut p);
        let v = serde_json::to_value(&p).unwrap();
        let spec = &v["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["schedulerName"], "default-scheduler");
        assert_eq!(spec["enableServiceLinks"], true);
        assert_eq!(spec["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(spec["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(spec["containers"][2]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(spec["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(
            spec["containers"][0]["resources"]["requests"]["memory"],
            "64Mi"
        );
        assert_eq!(
            spec["containers"][0]["readinessProbe"]["httpGet"]["path"],
            "/"
        );
        assert_eq!(spec["containers"][0]["readinessProbe"]["periodSeconds"], 10);
        assert_eq!(spec["volumes"][0]["emptyDir"], json!({}));
        assert_eq!(spec["volumes"][1]["secret"]["defaultMode"], 420);
    }

    #[test]
    fn workloads_get_kubernetes_defaults() {
        let mut d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "d"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}
        }))
        .unwrap();
        deployment(&mut d);
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["spec"]["replicas"], 1);
        assert_eq!(v["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(v["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(v["spec"]["progressDeadlineSeconds"], 600);
        assert!(
            v["spec"]["template"]["spec"]
                .get("enableServiceLinks")
                .is_none(),
            "pods only"
        );
        let mut j: Job = serde_json::from_value(json!({"metadata": {"name": "j"},
            "spec": {"template": {"metadata": {"labels": {"x": "y"}}, "spec": {"containers": [], "restartPolicy": "Never"}}}})).unwrap();
        job(&mut j);
        let v = serde_json::to_value(&j).unwrap();
        assert_eq!(
            (
                v["spec"]["completions"].clone(),
                v["spec"]["parallelism"].clone(),
                v["spec"]["backoffLimit"].clone()
            ),
            (json!(1), json!(1), json!(6))
        );
        assert_eq!(v["metadata"]["labels"]["x"], "y");
        let mut s: Service = serde_json::from_value(json!({"metadata": {"name": "s"},
            "spec": {"ports": [{"port": 80}]}}))
        .unwrap();
        service(&mut s);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(v["spec"]["type"], "ClusterIP");
        assert_eq!(v["spec"]["sessionAffinity"], "None");
    }
}
