//! Decoding request bodies into the built-in kinds' `k8s-openapi` types, as
//! kube-apiserver's strict decoder does: a value of the wrong type is a 400 naming the
//! field, a required field that is missing is a 422 `Required value`, and fields the
//! type does not have are reported (refused under `fieldValidation=Strict`, warned
//! about under `Warn`, dropped under `Ignore`).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ApiError, FieldError};
use crate::registry::ResourceType;

/// What to do with fields the schema does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and warn the client.
    Warn,
    /// Refuse the request.
    Strict,
}

impl FieldValidation {
    /// The `fieldValidation` query parameter (kube-apiserver's default is `Warn`).
    pub fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::BadRequest(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\" or \"Strict\", not {other:?}"
            ))),
        }
    }
}

/// Decodes `input` as `T`, path-aware.
pub fn decode<T: DeserializeOwned>(resource: &ResourceType, input: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(input.clone()).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.inner().to_string();
        if let Some(field) = inner
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            let full = if path == "." || path.is_empty() {
                field.to_owned()
            } else {
                format!("{path}.{field}")
            };
            let name = input
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            return ApiError::invalid(resource, name, vec![FieldError::required(full)]);
        }
        ApiError::BadRequest(format!(
            "{kind} in version {version:?} cannot be handled as a {kind}: {inner} at {path}",
            kind = resource.kind,
            version = resource.version,
        ))
    })
}

/// Encodes a typed value back to JSON.
pub fn encode<T: Serialize>(value: &T) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(|e| ApiError::Internal(e.to_string()))
}

/// The paths of fields in `input` that `known` (the same object after a round trip
/// through its type) does not have. `null`s are not counted: they decode to absent.
pub fn unknown_fields(input: &Value, known: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(input, known, "", &mut out);
    out
}

fn walk(input: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(given), Value::Object(kept)) => {
            for (key, value) in given {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match kept.get(key) {
                    Some(inner) => walk(value, inner, &child, out),
                    None if value.is_null() => {}
                    None => out.push(child),
                }
            }
        }
        (Value::Array(given), Value::Array(kept)) => {
            for (i, (value, inner)) in given.iter().zip(kept).enumerate() {
                walk(value, inner, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Round-trips `input` through `T`: the normalized object (unknown fields dropped) and
/// the unknown fields' paths.
pub fn normalize<T: DeserializeOwned + Serialize>(
    resource: &ResourceType,
    input: &Value,
) -> Result<(Value, Vec<String>), ApiError> {
    let typed: T = decode(resource, input)?;
    let known = encode(&typed)?;
    let unknown = unknown_fields(input, &known);
    Ok((known, unknown))
}

/// Applies the field validation policy to `unknown` fields: the warnings to send, or
/// the 400 kube-apiserver sends under `Strict`.
pub fn check_unknown(
    resource: &ResourceType,
    unknown: &[String],
    policy: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    if unknown.is_empty() || policy == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let messages: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field {f:?}"))
        .collect();
    if policy == FieldValidation::Strict {
        return Err(ApiError::BadRequest(format!(
            "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
            messages.join(", "),
            kind = resource.kind,
            version = resource.version,
        )));
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Kind, Registry};
    use k8s_openapi::api::apps::v1::Deployment;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_found_by_path_and_nulls_are_not() {
        let registry = Registry::new();
        let deployments = registry.builtin(Kind::Deployment);
        let input = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": null, "bogus": 1},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "replicaz": 3,
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox", "imagePolicy": "x"}]}}}
        });
        let (known, unknown) = normalize::<Deployment>(&deployments, &input).unwrap();
        assert_eq!(
            unknown,
            [
                "metadata.bogus",
                "spec.replicaz",
                "spec.template.spec.containers[0].imagePolicy"
            ]
        );
        assert!(known["spec"].get("replicaz").is_none());
        let err = check_unknown(&deployments, &unknown, FieldValidation::Strict).unwrap_err();
        assert!(err.to_string().contains("strict decoding error: unknown field \"metadata.bogus\", unknown field \"spec.replicaz\""), "{err}");
        assert_eq!(
            check_unknown(&deployments, &unknown, FieldValidation::Warn)
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn type_errors_are_bad_requests_and_missing_required_fields_are_invalid() {
        let registry = Registry::new();
        let deployments = registry.builtin(Kind::Deployment);
        let wrong = json!({"metadata": {"name": "web"}, "spec": {"replicas": "three",
            "selector": {}, "template": {}}});
        let err = decode::<Deployment>(&deployments, &wrong).unwrap_err();
        assert_eq!(err.code(), 400);
        assert!(err.to_string().contains("spec.replicas"), "{err}");
        // k8s-openapi decodes a missing required string as empty; validation then
        // names it as kube-apiserver does.
        let missing = json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"image": "busybox"}]}}}});
        let decoded = decode::<Deployment>(&deployments, &missing).unwrap();
        let problems = crate::validation::deployment(&decoded);
        assert!(
            problems.iter().any(|p| p
                .to_string()
                .contains("spec.template.spec.containers[0].name: Required value")),
            "{problems:?}"
        );
    }
}
