//! Validation of the built-in kinds on create and update, with Kubernetes' field paths
//! and messages (pkg/apis/core/validation, apps and batch validation): what makes a
//! 422 `Invalid` whose causes kubectl prints one per field.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Pod, PodSpec, PodTemplateSpec, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as Selector;
use serde_json::{Value, json};

use crate::error::FieldError;
use crate::meta::{dns1035_problem, label_problem, subdomain_problem};
use crate::selectors::LabelSelector;

type Problems = Vec<FieldError>;

fn string(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn containers(
    list: &[Container],
    path: &str,
    names: &mut BTreeSet<String>,
    problems: &mut Problems,
) {
    for (i, c) in list.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if c.name.is_empty() {
            problems.push(FieldError::required(format!("{at}.name")));
        } else if let Some(why) = label_problem(&c.name) {
            problems.push(FieldError::invalid(
                format!("{at}.name"),
                &string(&c.name),
                &why,
            ));
        } else if !names.insert(c.name.clone()) {
            problems.push(FieldError::duplicate(
                format!("{at}.name"),
                &string(&c.name),
            ));
        }
        if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
            problems.push(FieldError::required(format!("{at}.image")));
        }
        if let Some(policy) = &c.image_pull_policy
            && !matches!(policy.as_str(), "Always" | "IfNotPresent" | "Never")
        {
            problems.push(FieldError::not_supported(
                format!("{at}.imagePullPolicy"),
                &string(policy),
                &["Always", "IfNotPresent", "Never"],
            ));
        }
        let mut port_names = BTreeSet::new();
        for (j, port) in c.ports.iter().flatten().enumerate() {
            let port_at = format!("{at}.ports[{j}]");
            if !(1..=65535).contains(&port.container_port) {
                problems.push(FieldError::invalid(
                    format!("{port_at}.containerPort"),
                    &json!(port.container_port),
                    "must be between 1 and 65535, inclusive",
                ));
            }
            if let Some(protocol) = &port.protocol
                && !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP")
            {
                problems.push(FieldError::not_supported(
                    format!("{port_at}.protocol"),
                    &string(protocol),
                    &["SCTP", "TCP", "UDP"],
                ));
            }
            if let Some(name) = &port.name
                && !port_names.insert(name.clone())
            {
                problems.push(FieldError::duplicate(
                    format!("{port_at}.name"),
                    &string(name),
                ));
            }
        }
    }
}

/// A pod spec at `path` (`spec`, `spec.template.spec`, …).
pub fn pod_spec(spec: &PodSpec, path: &str, problems: &mut Problems) {
    if spec.containers.is_empty() {
        problems.push(FieldError::required(format!("{path}.containers")));
    }
    let mut names = BTreeSet::new();
    containers(
        &spec.containers,
        &format!("{path}.containers"),
        &mut names,
        problems,
    );
    if let Some(init) = &spec.init_containers {
        containers(
            init,
            &format!("{path}.initContainers"),
            &mut names,
            problems,
        );
    }
    if let Some(policy) = &spec.restart_policy
        && !matches!(policy.as_str(), "Always" | "OnFailure" | "Never")
    {
        problems.push(FieldError::not_supported(
            format!("{path}.restartPolicy"),
            &string(policy),
            &["Always", "OnFailure", "Never"],
        ));
    }
    if let Some(policy) = &spec.dns_policy
        && !matches!(
            policy.as_str(),
            "ClusterFirstWithHostNet" | "ClusterFirst" | "Default" | "None"
        )
    {
        problems.push(FieldError::not_supported(
            format!("{path}.dnsPolicy"),
            &string(policy),
            &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        ));
    }
    if let Some(grace) = spec.termination_grace_period_seconds
        && grace < 0
    {
        problems.push(FieldError::invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            &json!(grace),
            "must be greater than or equal to 0",
        ));
    }
    let mut volumes = BTreeSet::new();
    for (i, volume) in spec.volumes.iter().flatten().enumerate() {
        let at = format!("{path}.volumes[{i}].name");
        if let Some(why) = label_problem(&volume.name) {
            problems.push(FieldError::invalid(at, &string(&volume.name), &why));
        } else if !volumes.insert(volume.name.clone()) {
            problems.push(FieldError::duplicate(at, &string(&volume.name)));
        }
    }
    let all = spec.containers.iter().map(|c| ("containers", c)).chain(
        spec.init_containers
            .iter()
            .flatten()
            .map(|c| ("initContainers", c)),
    );
    let mut index = std::collections::BTreeMap::<&str, usize>::new();
    for (field, c) in all {
        let i = *index.entry(field).and_modify(|n| *n += 1).or_insert(0);
        for (j, mount) in c.volume_mounts.iter().flatten().enumerate() {
            if !volumes.contains(&mount.name) {
                problems.push(FieldError {
                    field: format!("{path}.{field}[{i}].volumeMounts[{j}].name"),
                    reason: crate::error::FieldReason::Invalid,
                    message: format!("Not found: {:?}", mount.name),
                });
            }
            if mount.mount_path.is_empty() {
                problems.push(FieldError::required(format!(
                    "{path}.{field}[{i}].volumeMounts[{j}].mountPath"
                )));
            }
        }
    }
}

fn selector_matches(
    selector: Option<&Selector>,
    template: Option<&PodTemplateSpec>,
    path: &str,
    what: &str,
    problems: &mut Problems,
) {
    let Some(selector) = selector else {
        problems.push(FieldError::required(format!("{path}.selector")));
        return;
    };
    let value = serde_json::to_value(selector).unwrap_or(Value::Null);
    let parsed = LabelSelector::from_object(&value);
    let Some(parsed) = parsed else {
        problems.push(FieldError::invalid(
            format!("{path}.selector"),
            &value,
            "invalid label selector",
        ));
        return;
    };
    if parsed.is_empty() {
        problems.push(FieldError::invalid(
            format!("{path}.selector"),
            &value,
            &format!("empty selector is invalid for {what}"),
        ));
        return;
    }
    let labels = template
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    if !parsed.matches(&labels) {
        let shown = if labels.is_empty() {
            Value::Null
        } else {
            serde_json::to_value(&labels).unwrap_or(Value::Null)
        };
        problems.push(FieldError::invalid(
            format!("{path}.template.metadata.labels"),
            &shown,
            "`selector` does not match template `labels`",
        ));
    }
}

fn template_always(template: Option<&PodTemplateSpec>, path: &str, problems: &mut Problems) {
    let Some(spec) = template.and_then(|t| t.spec.as_ref()) else {
        problems.push(FieldError::required(format!("{path}.template.spec")));
        return;
    };
    pod_spec(spec, &format!("{path}.template.spec"), problems);
    if let Some(policy) = &spec.restart_policy
        && policy != "Always"
    {
        problems.push(FieldError::not_supported(
            format!("{path}.template.spec.restartPolicy"),
            &string(policy),
            &["Always"],
        ));
    }
}

fn non_negative(value: Option<i32>, path: &str, problems: &mut Problems) {
    if let Some(v) = value
        && v < 0
    {
        problems.push(FieldError::invalid(
            path,
            &json!(v),
            "must be greater than or equal to 0",
        ));
    }
}

/// A Pod.
pub fn pod(p: &Pod) -> Problems {
    let mut problems = Vec::new();
    match &p.spec {
        Some(spec) => pod_spec(spec, "spec", &mut problems),
        None => problems.push(FieldError::required("spec")),
    }
    problems
}

/// A Deployment.
pub fn deployment(d: &Deployment) -> Problems {
    let mut problems = Vec::new();
    let spec = &d.spec;
    non_negative(spec.replicas, "spec.replicas", &mut problems);
    selector_matches(
        Some(&spec.selector),
        Some(&spec.template),
        "spec",
        "deployment",
        &mut problems,
    );
    template_always(Some(&spec.template), "spec", &mut problems);
    if let Some(t) = spec.strategy.as_ref().and_then(|s| s.type_.as_deref())
        && !matches!(t, "RollingUpdate" | "Recreate")
    {
        problems.push(FieldError::not_supported(
            "spec.strategy.type",
            &string(t),
            &["Recreate", "RollingUpdate"],
        ));
    }
    problems
}

/// A ReplicaSet.
pub fn replica_set(r: &ReplicaSet) -> Problems {
    let mut problems = Vec::new();
    let spec = &r.spec;
    non_negative(spec.replicas, "spec.replicas", &mut problems);
    selector_matches(
        Some(&spec.selector),
        spec.template.as_ref(),
        "spec",
        "replicaset",
        &mut problems,
    );
    template_always(spec.template.as_ref(), "spec", &mut problems);
    problems
}

/// A DaemonSet.
pub fn daemon_set(d: &DaemonSet) -> Problems {
    let mut problems = Vec::new();
    let spec = &d.spec;
    selector_matches(
        Some(&spec.selector),
        Some(&spec.template),
        "spec",
        "daemonset",
        &mut problems,
    );
    template_always(Some(&spec.template), "spec", &mut problems);
    problems
}

/// A StatefulSet.
pub fn stateful_set(s: &StatefulSet) -> Problems {
    let mut problems = Vec::new();
    let spec = &s.spec;
    non_negative(spec.replicas, "spec.replicas", &mut problems);
    selector_matches(
        Some(&spec.selector),
        Some(&spec.template),
        "spec",
        "statefulset",
        &mut problems,
    );
    template_always(Some(&spec.template), "spec", &mut problems);
    if let Some(policy) = &spec.pod_management_policy
        && !matches!(policy.as_str(), "OrderedReady" | "Parallel")
    {
        problems.push(FieldError::not_supported(
            "spec.podManagementPolicy",
            &string(policy),
            &["OrderedReady", "Parallel"],
        ));
    }
    problems
}

fn job_spec(
    spec: &k8s_openapi::api::batch::v1::JobSpec,
    path: &str,
    generated: bool,
    problems: &mut Problems,
) {
    non_negative(spec.parallelism, &format!("{path}.parallelism"), problems);
    non_negative(spec.completions, &format!("{path}.completions"), problems);
    non_negative(
        spec.backoff_limit,
        &format!("{path}.backoffLimit"),
        problems,
    );
    if let Some(seconds) = spec.active_deadline_seconds
        && seconds <= 0
    {
        problems.push(FieldError::invalid(
            format!("{path}.activeDeadlineSeconds"),
            &json!(seconds),
            "must be greater than 0",
        ));
    }
    let Some(pod) = spec.template.spec.as_ref() else {
        problems.push(FieldError::required(format!("{path}.template.spec")));
        return;
    };
    pod_spec(pod, &format!("{path}.template.spec"), problems);
    match pod.restart_policy.as_deref() {
        Some("OnFailure" | "Never") => {}
        Some(other) => problems.push(FieldError::not_supported(
            format!("{path}.template.spec.restartPolicy"),
            &string(other),
            &["OnFailure", "Never"],
        )),
        None => problems.push(FieldError::required_because(
            format!("{path}.template.spec.restartPolicy"),
            "valid values: \"OnFailure\", \"Never\"",
        )),
    }
    if spec.manual_selector == Some(true) || generated {
        selector_matches(
            spec.selector.as_ref(),
            Some(&spec.template),
            path,
            "job",
            problems,
        );
    }
}

/// A Job (its selector is generated unless `manualSelector`).
pub fn job(j: &Job) -> Problems {
    let mut problems = Vec::new();
    match &j.spec {
        Some(spec) => job_spec(spec, "spec", spec.selector.is_some(), &mut problems),
        None => problems.push(FieldError::required("spec")),
    }
    problems
}

/// A CronJob.
pub fn cron_job(c: &CronJob) -> Problems {
    let mut problems = Vec::new();
    let spec = &c.spec;
    if spec.schedule.is_empty() {
        problems.push(FieldError::required("spec.schedule"));
    } else {
        match cairn_cron::Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
            Ok(_) => {}
            Err(cairn_cron::ScheduleError::TimeZone(zone)) => problems.push(FieldError::invalid(
                "spec.timeZone",
                &string(&zone),
                &format!("unknown time zone {zone}"),
            )),
            Err(cairn_cron::ScheduleError::Schedule { reason, .. }) => problems.push(
                FieldError::invalid("spec.schedule", &string(&spec.schedule), &reason),
            ),
        }
    }
    if let Some(policy) = &spec.concurrency_policy
        && !matches!(policy.as_str(), "Allow" | "Forbid" | "Replace")
    {
        problems.push(FieldError::not_supported(
            "spec.concurrencyPolicy",
            &string(policy),
            &["Allow", "Forbid", "Replace"],
        ));
    }
    match &spec.job_template.spec {
        Some(job) => job_spec(job, "spec.jobTemplate.spec", false, &mut problems),
        None => problems.push(FieldError::required("spec.jobTemplate.spec")),
    }
    problems
}

/// A Service.
pub fn service(s: &Service) -> Problems {
    let mut problems = Vec::new();
    if let Some(name) = &s.metadata.name
        && let Some(why) = dns1035_problem(name)
    {
        problems.push(FieldError::invalid("metadata.name", &string(name), &why));
    }
    let Some(spec) = &s.spec else {
        problems.push(FieldError::required("spec"));
        return problems;
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(
        kind,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        problems.push(FieldError::not_supported(
            "spec.type",
            &string(kind),
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if ports.is_empty() && kind != "ExternalName" && !headless {
        problems.push(FieldError::required("spec.ports"));
    }
    let mut names = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        if !(1..=65535).contains(&port.port) {
            problems.push(FieldError::invalid(
                format!("{at}.port"),
                &json!(port.port),
                "must be between 1 and 65535, inclusive",
            ));
        }
        match &port.name {
            Some(name) if !names.insert(name.clone()) => {
                problems.push(FieldError::duplicate(format!("{at}.name"), &string(name)));
            }
            None if ports.len() > 1 => problems.push(FieldError::required(format!("{at}.name"))),
            _ => {}
        }
        if let Some(node_port) = port.node_port
            && kind == "ClusterIP"
            && node_port != 0
        {
            problems.push(FieldError::forbidden(
                format!("{at}.nodePort"),
                "may not be used when `type` is 'ClusterIP'",
            ));
        }
    }
    if kind == "ExternalName"
        && spec
            .external_name
            .as_deref()
            .is_none_or(|n| subdomain_problem(n).is_some())
    {
        problems.push(FieldError::required("spec.externalName"));
    }
    problems
}

fn data_keys<'a>(keys: impl Iterator<Item = &'a String>, field: &str, problems: &mut Problems) {
    for key in keys {
        let valid = !key.is_empty()
            && key.len() <= 253
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            problems.push(FieldError::invalid(
                field,
                &string(key),
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
            ));
        }
    }
}

/// A ConfigMap.
pub fn config_map(c: &ConfigMap) -> Problems {
    let mut problems = Vec::new();
    data_keys(c.data.iter().flat_map(|d| d.keys()), "data", &mut problems);
    data_keys(
        c.binary_data.iter().flat_map(|d| d.keys()),
        "binaryData",
        &mut problems,
    );
    if let (Some(data), Some(binary)) = (&c.data, &c.binary_data) {
        for key in data.keys().filter(|k| binary.contains_key(*k)) {
            problems.push(FieldError::invalid(
                "data",
                &string(key),
                "duplicate of key present in binaryData",
            ));
        }
    }
    problems
}

/// A Secret.
pub fn secret(s: &Secret) -> Problems {
    let mut problems = Vec::new();
    data_keys(s.data.iter().flat_map(|d| d.keys()), "data", &mut problems);
    data_keys(
        s.string_data.iter().flat_map(|d| d.keys()),
        "stringData",
        &mut problems,
    );
    if s.type_.as_deref() == Some("kubernetes.io/tls") {
        for key in ["tls.crt", "tls.key"] {
            if !s.data.as_ref().is_some_and(|d| d.contains_key(key))
                && !s.string_data.as_ref().is_some_and(|d| d.contains_key(key))
            {
                problems.push(FieldError::required(format!("data[{key}]")));
            }
        }
    }
    problems
}

/// The pod spec fields a user may change on a running pod.
const POD_UPDATABLE: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// An update of a Pod: only images, the active deadline, added tolerations and the
/// grace period may change in the spec.
pub fn pod_update(new: &Value, old: &Value) -> Problems {
    let mask = |spec: &Value| {
        let mut spec = spec.clone();
        for list in ["containers", "initContainers"] {
            if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
                for c in cs {
                    if let Some(c) = c.as_object_mut() {
                        c.remove("image");
                    }
                }
            }
        }
        if let Some(s) = spec.as_object_mut() {
            for field in [
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
                "nodeName",
            ] {
                s.remove(field);
            }
        }
        spec
    };
    let (new_spec, old_spec) = (&new["spec"], &old["spec"]);
    let mut problems = Vec::new();
    if mask(new_spec) != mask(old_spec) {
        problems.push(FieldError::forbidden("spec", POD_UPDATABLE));
    }
    // nodeName is set once, by binding.
    let (was, is) = (old_spec.get("nodeName"), new_spec.get("nodeName"));
    if was.is_some_and(|w| !w.is_null()) && was != is {
        problems.push(FieldError::forbidden("spec", POD_UPDATABLE));
    }
    problems
}

/// An update that must keep `pointer` (a JSON pointer) as it was.
pub fn immutable(new: &Value, old: &Value, pointer: &str, field: &str) -> Problems {
    let (a, b) = (new.pointer(pointer), old.pointer(pointer));
    if a != b {
        vec![FieldError::invalid(
            field,
            a.unwrap_or(&Value::Null),
            "field is immutable",
        )]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_deployment_without_a_matching_selector_or_image_names_each_field() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "temp"},
            "spec": {"selector": {"matchLabels": {"app": "x"}},
                     "template": {"metadata": {"labels": {"app": "y"}},
                                  "spec": {"containers": [{"name": "c"}], "restartPolicy": "Never"}}}
        }))
        .unwrap();
        let fields: Vec<String> = deployment(&d).iter().map(ToString::to_string).collect();
        assert_eq!(
            fields,
            [
                "spec.template.metadata.labels: Invalid value: {\"app\":\"y\"}: `selector` does not match template `labels`",
                "spec.template.spec.containers[0].image: Required value",
                "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
            ]
        );
    }

    #[test]
    fn pods_may_only_change_their_images_once_created() {
        let old =
            json!({"spec": {"containers": [{"name": "a", "image": "x:1"}], "nodeName": "n1"}});
        let image =
            json!({"spec": {"containers": [{"name": "a", "image": "x:2"}], "nodeName": "n1"}});
        assert!(pod_update(&image, &old).is_empty());
        let renamed =
            json!({"spec": {"containers": [{"name": "b", "image": "x:1"}], "nodeName": "n1"}});
        assert!(
            pod_update(&renamed, &old)[0]
                .message
                .starts_with("Forbidden: pod updates may not change fields other than")
        );
        let cron = |schedule: &str, zone: Option<&str>| -> Vec<String> {
            let mut c: CronJob = serde_json::from_value(json!({
                "metadata": {"name": "c"},
                "spec": {"schedule": schedule, "jobTemplate": {"spec": {"template": {"spec": {
                    "restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}},
            }))
            .unwrap();
            c.spec.time_zone = zone.map(str::to_owned);
            cron_job(&c).iter().map(|p| p.field.clone()).collect()
        };
        assert!(cron("*/5 * * * *", None).is_empty());
        assert!(cron("@hourly", Some("Europe/Berlin")).is_empty());
        assert_eq!(cron("* * *", None), ["spec.schedule"]);
        assert_eq!(cron("0 * * * *", Some("Mars/Olympus")), ["spec.timeZone"]);
    }
}
