//! What each kind does differently, in one place: how its body is decoded and
//! defaulted, how its name is checked, what is validated on create and update, what
//! the server sets on create (status, generation, generated selectors) and keeps on
//! update (status for the main resource, spec for `/status`), which field selectors
//! it takes, and how it is deleted (pods gracefully, namespaces through finalizers).

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::authorization::v1::{SelfSubjectAccessReview, SelfSubjectRulesReview};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, Node, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::codec::{self, FieldValidation};
use crate::defaults;
use crate::error::{ApiError, FieldError};
use crate::meta::{self, NameRule};
use crate::registry::{Kind, ResourceType};
use crate::validation;

/// Decodes `input` as `T`, applies `default`, and returns it as JSON with the
/// unknown fields' paths.
fn typed<T: DeserializeOwned + Serialize>(
    resource: &ResourceType,
    input: &Value,
    default: fn(&mut T),
) -> Result<(Value, Vec<String>), ApiError> {
    let mut object: T = codec::decode(resource, input)?;
    let known = codec::encode(&object)?;
    let unknown = codec::unknown_fields(input, &known);
    default(&mut object);
    Ok((codec::encode(&object)?, unknown))
}

fn nothing<T>(_: &mut T) {}

/// Decodes, normalizes and defaults a request body for `resource`; the object and
/// the warnings to return (unknown fields under `Warn`).
pub fn admit(
    resource: &ResourceType,
    input: &Value,
    policy: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    if !input.is_object() {
        return Err(ApiError::BadRequest(format!(
            "the body of the request is not a {} object",
            resource.kind
        )));
    }
    let (object, unknown) = match resource.builtin {
        None => match &resource.custom {
            Some(schema) => schema.prune(input),
            None => (input.clone(), Vec::new()),
        },
        Some(kind) => match kind {
            Kind::Namespace => typed::<Namespace>(resource, input, defaults::namespace)?,
            Kind::Node => typed::<Node>(resource, input, nothing)?,
            Kind::Pod => typed::<Pod>(resource, input, defaults::pod)?,
            Kind::Service => typed::<Service>(resource, input, defaults::service)?,
            Kind::Endpoints => typed::<Endpoints>(resource, input, defaults::endpoints)?,
            Kind::ConfigMap => typed::<ConfigMap>(resource, input, nothing)?,
            Kind::Secret => typed::<Secret>(resource, input, defaults::secret)?,
            Kind::ServiceAccount => typed::<ServiceAccount>(resource, input, nothing)?,
            Kind::Event => typed::<Event>(resource, input, nothing)?,
            Kind::Deployment => typed::<Deployment>(resource, input, defaults::deployment)?,
            Kind::ReplicaSet => typed::<ReplicaSet>(resource, input, defaults::replica_set)?,
            Kind::DaemonSet => typed::<DaemonSet>(resource, input, defaults::daemon_set)?,
            Kind::StatefulSet => typed::<StatefulSet>(resource, input, defaults::stateful_set)?,
            Kind::ControllerRevision => typed::<ControllerRevision>(resource, input, nothing)?,
            Kind::Job => typed::<Job>(resource, input, defaults::job)?,
            Kind::CronJob => typed::<CronJob>(resource, input, defaults::cron_job)?,
            Kind::Ingress => typed::<Ingress>(resource, input, nothing)?,
            Kind::NetworkPolicy => typed::<NetworkPolicy>(resource, input, nothing)?,
            Kind::Lease => typed::<Lease>(resource, input, nothing)?,
            Kind::EndpointSlice => {
                typed::<EndpointSlice>(resource, input, defaults::endpoint_slice)?
            }
            Kind::Role => typed::<Role>(resource, input, nothing)?,
            Kind::ClusterRole => typed::<ClusterRole>(resource, input, nothing)?,
            Kind::RoleBinding => typed::<RoleBinding>(resource, input, nothing)?,
            Kind::ClusterRoleBinding => typed::<ClusterRoleBinding>(resource, input, nothing)?,
            Kind::CustomResourceDefinition => {
                typed::<CustomResourceDefinition>(resource, input, crate::crd::default)?
            }
            Kind::SelfSubjectAccessReview => {
                typed::<SelfSubjectAccessReview>(resource, input, nothing)?
            }
            Kind::SelfSubjectRulesReview => {
                typed::<SelfSubjectRulesReview>(resource, input, nothing)?
            }
        },
    };
    let warnings = codec::check_unknown(resource, &unknown, policy)?;
    let mut object = object;
    // Every object carries its own kind and version.
    object["apiVersion"] = Value::String(resource.api_version());
    object["kind"] = Value::String(resource.kind.clone());
    Ok((object, warnings))
}

/// How a kind's names are checked.
pub fn name_rule(resource: &ResourceType) -> NameRule {
    match resource.builtin {
        Some(Kind::Namespace) => NameRule::Label,
        Some(Kind::Service) => NameRule::Dns1035,
        Some(Kind::Role | Kind::ClusterRole | Kind::RoleBinding | Kind::ClusterRoleBinding) => {
            NameRule::PathSegment
        }
        _ => NameRule::Subdomain,
    }
}

fn checked<T: DeserializeOwned>(
    object: &Value,
    check: fn(&T) -> Vec<FieldError>,
) -> Vec<FieldError> {
    match serde_json::from_value::<T>(object.clone()) {
        Ok(typed) => check(&typed),
        // `admit` decoded it already; a failure here is the server's own doing.
        Err(err) => vec![FieldError::invalid("", &Value::Null, &err.to_string())],
    }
}

/// The problems of `object` (after `admit` and metadata preparation); `old` is the
/// stored object on update.
pub fn validate(resource: &ResourceType, object: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut problems = meta::check_metadata(
        &object["metadata"],
        name_rule(resource),
        resource.namespaced,
    );
    problems.extend(match resource.builtin {
        Some(Kind::Pod) => checked::<Pod>(object, validation::pod),
        Some(Kind::Deployment) => checked::<Deployment>(object, validation::deployment),
        Some(Kind::ReplicaSet) => checked::<ReplicaSet>(object, validation::replica_set),
        Some(Kind::DaemonSet) => checked::<DaemonSet>(object, validation::daemon_set),
        Some(Kind::StatefulSet) => checked::<StatefulSet>(object, validation::stateful_set),
        Some(Kind::Job) => checked::<Job>(object, validation::job),
        Some(Kind::CronJob) => checked::<CronJob>(object, validation::cron_job),
        Some(Kind::Service) => checked::<Service>(object, validation::service),
        Some(Kind::ConfigMap) => checked::<ConfigMap>(object, validation::config_map),
        Some(Kind::Secret) => checked::<Secret>(object, validation::secret),
        Some(Kind::CustomResourceDefinition) => crate::crd::validate(object),
        None => resource
            .custom
            .as_ref()
            .map(|schema| schema.validate(object))
            .unwrap_or_default(),
        _ => Vec::new(),
    });
    if let Some(old) = old {
        problems.extend(validate_update(resource, object, old));
    }
    problems
}

fn validate_update(resource: &ResourceType, new: &Value, old: &Value) -> Vec<FieldError> {
    let mut problems = Vec::new();
    for (pointer, field) in [
        ("/metadata/uid", "metadata.uid"),
        ("/metadata/creationTimestamp", "metadata.creationTimestamp"),
    ] {
        problems.extend(validation::immutable(new, old, pointer, field));
    }
    match resource.builtin {
        Some(Kind::Pod) => problems.extend(validation::pod_update(new, old)),
        Some(Kind::Deployment | Kind::ReplicaSet | Kind::DaemonSet | Kind::StatefulSet) => {
            problems.extend(validation::immutable(
                new,
                old,
                "/spec/selector",
                "spec.selector",
            ));
        }
        Some(Kind::Job) => {
            problems.extend(validation::immutable(
                new,
                old,
                "/spec/selector",
                "spec.selector",
            ));
            let suspended = old.pointer("/spec/suspend") == Some(&Value::Bool(true));
            if !suspended {
                problems.extend(validation::immutable(
                    new,
                    old,
                    "/spec/template",
                    "spec.template",
                ));
            }
            problems.extend(validation::immutable(
                new,
                old,
                "/spec/completions",
                "spec.completions",
            ));
        }
        Some(Kind::Secret | Kind::ConfigMap) => {
            if old.get("immutable") == Some(&Value::Bool(true)) {
                for field in ["data", "binaryData", "stringData"] {
                    problems.extend(validation::immutable(new, old, &format!("/{field}"), field));
                }
            }
            if resource.builtin == Some(Kind::Secret) {
                problems.extend(validation::immutable(new, old, "/type", "type"));
            }
        }
        Some(Kind::CustomResourceDefinition) => {
            problems.extend(validation::immutable(new, old, "/spec/group", "spec.group"));
            problems.extend(validation::immutable(
                new,
                old,
                "/spec/names/plural",
                "spec.names.plural",
            ));
        }
        _ => {}
    }
    problems
}

/// What the server sets on a new object: uid, creation time, generation and the
/// kind's own (status reset, a Job's generated selector, a Pod's `Pending`).
pub fn on_create(resource: &ResourceType, object: &mut Value) {
    let uid = meta::uid();
    meta::set_meta(object, "uid", Value::String(uid.clone()));
    meta::set_meta(object, "creationTimestamp", Value::String(meta::now()));
    for field in [
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        meta::remove_meta(object, field);
    }
    let generation = matches!(
        resource.builtin,
        Some(
            Kind::Deployment
                | Kind::ReplicaSet
                | Kind::DaemonSet
                | Kind::StatefulSet
                | Kind::Job
                | Kind::CronJob
                | Kind::Pod
                | Kind::CustomResourceDefinition
        )
    ) || resource.custom.is_some();
    if generation {
        meta::set_meta(object, "generation", json!(1));
    } else {
        meta::remove_meta(object, "generation");
    }
    if resource.status
        && !matches!(
            resource.builtin,
            Some(Kind::Namespace | Kind::Node | Kind::Service)
        )
        && let Some(map) = object.as_object_mut()
    {
        map.remove("status");
    }
    match resource.builtin {
        Some(Kind::Pod) => {
            object["status"] = json!({"phase": "Pending", "qosClass": qos_class(object)});
        }
        Some(Kind::Namespace) => {
            object["status"] = json!({"phase": "Active"});
        }
        Some(Kind::Job) => job_selector(object, &uid),
        Some(Kind::Service) => {
            if let Some(map) = object.as_object_mut() {
                map.insert("status".into(), json!({"loadBalancer": {}}));
            }
        }
        Some(Kind::CustomResourceDefinition) => crate::crd::on_create(object),
        _ => {}
    }
}

/// A Pod's QoS class from its containers' requests and limits.
fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|c| c.iter().collect())
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        if requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for resource in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(resource));
            let request = requests.and_then(|r| r.get(resource)).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    if guaranteed {
        "Guaranteed"
    } else if any {
        "Burstable"
    } else {
        "BestEffort"
    }
}

/// A Job's generated selector and template labels (unless `manualSelector`).
fn job_selector(job: &mut Value, uid: &str) {
    if job.pointer("/spec/manualSelector") == Some(&Value::Bool(true)) {
        return;
    }
    let name = meta::name_of(job).to_owned();
    let Some(spec) = job.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    spec.insert(
        "selector".into(),
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
    );
    let template = spec.entry("template").or_insert_with(|| json!({}));
    if !template.get("metadata").is_some_and(Value::is_object) {
        template["metadata"] = json!({});
    }
    let labels = &mut template["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    for (key, value) in [
        ("batch.kubernetes.io/controller-uid", uid),
        ("batch.kubernetes.io/job-name", name.as_str()),
        ("controller-uid", uid),
        ("job-name", name.as_str()),
    ] {
        labels[key] = Value::String(value.to_owned());
    }
}

/// Whether a spec change bumps the generation (and, for Deployments, annotations).
fn spec_changed(resource: &ResourceType, new: &Value, old: &Value) -> bool {
    let spec_field = match resource.builtin {
        Some(Kind::Namespace | Kind::Node | Kind::Service) => return false,
        _ => "spec",
    };
    if new.get(spec_field) != old.get(spec_field) {
        return true;
    }
    resource.builtin == Some(Kind::Deployment)
        && new.pointer("/metadata/annotations") != old.pointer("/metadata/annotations")
}

/// Carries over what an update may not change: identity and creation metadata, the
/// status (main resource, for kinds with a status subresource) or everything but the
/// status (`/status`); bumps the generation when the spec changed.
pub fn on_update(resource: &ResourceType, new: &mut Value, old: &Value, status_only: bool) {
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match old.pointer(&format!("/metadata/{field}")) {
            Some(value) => meta::set_meta(new, field, value.clone()),
            None => {
                meta::remove_meta(new, field);
            }
        }
    }
    if status_only {
        let status = new.get("status").cloned();
        let mut kept = old.clone();
        match status {
            Some(status) => kept["status"] = status,
            None => {
                if let Some(map) = kept.as_object_mut() {
                    map.remove("status");
                }
            }
        }
        // The resourceVersion the client sent stays for the conflict check.
        if let Some(rv) = new.pointer("/metadata/resourceVersion").cloned() {
            meta::set_meta(&mut kept, "resourceVersion", rv);
        }
        *new = kept;
        return;
    }
    if resource.status {
        match old.get("status") {
            Some(status) => new["status"] = status.clone(),
            None => {
                if let Some(map) = new.as_object_mut() {
                    map.remove("status");
                }
            }
        }
    }
    let generation = old.pointer("/metadata/generation").and_then(Value::as_i64);
    if let Some(generation) = generation
        && spec_changed(resource, new, old)
    {
        meta::set_meta(new, "generation", json!(generation + 1));
    }
}

/// The value of a field selector's label for `object`, or the 400 for a label the
/// kind does not take.
pub fn field_value(object: &Value, field: &str) -> String {
    let text = |pointer: &str| match object.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    match field {
        "metadata.name" => text("/metadata/name"),
        "metadata.namespace" => text("/metadata/namespace"),
        "spec.host" => text("/spec/nodeName"),
        "status.podIPs" => text("/status/podIP"),
        "spec.hostNetwork" => {
            if object.pointer("/spec/hostNetwork") == Some(&Value::Bool(true)) {
                "true".into()
            } else {
                "false".into()
            }
        }
        "spec.unschedulable" => {
            if object.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
                "true".into()
            } else {
                "false".into()
            }
        }
        "source" => text("/source/component"),
        "status.successful" => object
            .pointer("/status/succeeded")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .to_string(),
        other => text(&format!("/{}", other.replace('.', "/"))),
    }
}

/// The field selector labels a kind takes (beyond `metadata.name` and
/// `metadata.namespace`), or the error for one it does not.
pub fn check_field(resource: &ResourceType, field: &str) -> Result<(), ApiError> {
    if matches!(field, "metadata.name" | "metadata.namespace") {
        return Ok(());
    }
    let allowed: &[&str] = match resource.builtin {
        Some(Kind::Pod) => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
            "spec.host",
        ],
        Some(Kind::Node) => &["spec.unschedulable"],
        Some(Kind::Event) => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        Some(Kind::Namespace) => &["status.phase"],
        Some(Kind::Secret) => &["type"],
        Some(Kind::Service) => &["spec.clusterIP", "spec.type"],
        Some(Kind::Job) => &["status.successful"],
        _ => &[],
    };
    if allowed.contains(&field) {
        return Ok(());
    }
    Err(ApiError::BadRequest(match resource.builtin {
        Some(
            Kind::Pod | Kind::Node | Kind::Event | Kind::Namespace | Kind::Secret | Kind::Service,
        ) => {
            format!("field label not supported: {field}")
        }
        Some(Kind::Job) => format!("field label {field:?} not supported for batchv1.Job"),
        _ => format!(
            "{field:?} is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
        ),
    }))
}

/// How a delete proceeds for an object of this kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Deletion {
    /// Removed from the store now.
    Now,
    /// Kept, marked with a deletion timestamp `grace` seconds ahead (a pod on a node
    /// that must stop its containers first; finalizers to clear).
    Graceful {
        /// The grace period.
        grace: i64,
    },
}

/// Whether the delete of `object` with `requested` grace (the DeleteOptions') is
/// graceful: pods bound to a node get their grace period; everything else with
/// finalizers is kept until they are gone.
pub fn deletion(resource: &ResourceType, object: &Value, requested: Option<i64>) -> Deletion {
    if resource.builtin == Some(Kind::Pod) {
        let bound = object
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let finished = matches!(
            object.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        );
        let grace = requested.unwrap_or_else(|| {
            object
                .pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30)
        });
        let grace = if !bound || finished { 0 } else { grace.max(0) };
        if grace > 0 {
            return Deletion::Graceful { grace };
        }
    }
    if resource.builtin == Some(Kind::Namespace) {
        return Deletion::Graceful { grace: 0 };
    }
    if !meta::finalizers(object).is_empty() {
        return Deletion::Graceful { grace: 0 };
    }
    Deletion::Now
}

/// Whether a kind answers a delete with the deleted object (else a `Status`).
pub fn returns_deleted_object(resource: &ResourceType) -> bool {
    matches!(resource.builtin, Some(Kind::Pod | Kind::ServiceAccount))
}

/// The propagation policy a kind gets when the client names none.
pub fn default_propagation(resource: &ResourceType) -> &'static str {
    match resource.builtin {
        Some(Kind::Job) => "Orphan",
        _ => "Background",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn creating_a_job_generates_its_selector_and_template_labels() {
        let registry = Registry::new();
        let jobs = registry.builtin(Kind::Job);
        let input = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "pi", "namespace": "default"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}},
            "status": {"succeeded": 5}});
        let (mut job, warnings) = admit(&jobs, &input, FieldValidation::Strict).unwrap();
        assert!(warnings.is_empty());
        on_create(&jobs, &mut job);
        let uid = job["metadata"]["uid"].as_str().unwrap().to_owned();
        assert_eq!(
            job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            uid
        );
        assert_eq!(
            job["spec"]["template"]["metadata"]["labels"]["job-name"],
            "pi"
        );
        assert_eq!(job["metadata"]["generation"], 1);
        assert!(job.get("status").is_none(), "status is the controller's");
        assert!(
            validate(&jobs, &job, None).is_empty(),
            "{:?}",
            validate(&jobs, &job, None)
        );
    }

    #[test]
    fn updates_keep_status_or_spec_and_bump_the_generation_on_spec_changes() {
        let registry = Registry::new();
        let deployments = registry.builtin(Kind::Deployment);
        let old = json!({"metadata": {"name": "d", "uid": "u1", "generation": 3, "creationTimestamp": "t"},
            "spec": {"replicas": 1}, "status": {"replicas": 1}});
        let mut new =
            json!({"metadata": {"name": "d"}, "spec": {"replicas": 2}, "status": {"replicas": 9}});
        on_update(&deployments, &mut new, &old, false);
        assert_eq!(new["status"]["replicas"], 1);
        assert_eq!(new["metadata"]["generation"], 4);
        assert_eq!(new["metadata"]["uid"], "u1");
        let mut status =
            json!({"metadata": {"name": "d"}, "spec": {"replicas": 7}, "status": {"replicas": 2}});
        on_update(&deployments, &mut status, &old, true);
        assert_eq!(status["spec"]["replicas"], 1);
        assert_eq!(status["status"]["replicas"], 2);
        assert_eq!(status["metadata"]["generation"], 3);
    }

    #[test]
    fn pods_on_nodes_are_deleted_gracefully_and_unbound_ones_at_once() {
        let registry = Registry::new();
        let pods = registry.builtin(Kind::Pod);
        let bound = json!({"spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 20}});
        assert_eq!(
            deletion(&pods, &bound, None),
            Deletion::Graceful { grace: 20 }
        );
        assert_eq!(deletion(&pods, &bound, Some(0)), Deletion::Now);
        assert_eq!(deletion(&pods, &json!({"spec": {}}), None), Deletion::Now);
        assert!(check_field(&pods, "spec.nodeName").is_ok());
        assert_eq!(
            check_field(&pods, "spec.bogus").unwrap_err().to_string(),
            "field label not supported: spec.bogus"
        );
        assert_eq!(field_value(&bound, "spec.nodeName"), "n1");
    }
}
