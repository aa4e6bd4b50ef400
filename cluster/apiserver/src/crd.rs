//! CustomResourceDefinitions and the custom resources they define: a CRD is checked
//! and defaulted like kube-apiextensions-apiserver does, marked `Established` at once,
//! and each of its served versions becomes a resource type whose objects are pruned,
//! defaulted and validated against the version's structural `openAPIV3Schema`
//! (types, required fields, enums, bounds, patterns, `x-kubernetes-preserve-unknown-fields`,
//! `x-kubernetes-int-or-string`), with `status` and `scale` subresources when asked.

use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Map, Value, json};

use crate::error::FieldError;
use crate::meta;
use crate::registry::{ResourceType, ScalePaths};

/// A custom resource version's schema and columns.
#[derive(Debug, Clone)]
pub struct CustomSchema {
    /// `openAPIV3Schema`.
    pub schema: Value,
    /// `additionalPrinterColumns`.
    pub columns: Vec<Value>,
}

fn schema_type(schema: &Value) -> Option<&str> {
    schema.get("type").and_then(Value::as_str)
}

fn preserves(schema: &Value) -> bool {
    schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl CustomSchema {
    /// The object with fields the schema does not declare removed and defaults
    /// filled in; the removed fields' paths.
    pub fn prune(&self, input: &Value) -> (Value, Vec<String>) {
        let mut object = input.clone();
        let mut unknown = Vec::new();
        if let Value::Object(map) = &mut object {
            let properties = self.schema.get("properties").and_then(Value::as_object);
            let keep_all = preserves(&self.schema);
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                match properties.and_then(|p| p.get(&key)) {
                    Some(schema) => {
                        if let Some(value) = map.get_mut(&key) {
                            prune_value(value, schema, &key, &mut unknown);
                        }
                    }
                    None if keep_all => {}
                    None => {
                        map.remove(&key);
                        unknown.push(key);
                    }
                }
            }
            if let Some(properties) = properties {
                apply_defaults(map, properties);
            }
        }
        (object, unknown)
    }

    /// The problems of `object` against the schema.
    pub fn validate(&self, object: &Value) -> Vec<FieldError> {
        let mut problems = Vec::new();
        let Some(map) = object.as_object() else {
            return problems;
        };
        let properties = self.schema.get("properties").and_then(Value::as_object);
        for required in self
            .schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !map.contains_key(required) {
                problems.push(FieldError::required(required));
            }
        }
        for (key, value) in map {
            if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(schema) = properties.and_then(|p| p.get(key)) {
                check(value, schema, key, &mut problems);
            }
        }
        problems
    }
}

fn apply_defaults(map: &mut Map<String, Value>, properties: &Map<String, Value>) {
    for (key, schema) in properties {
        if !map.contains_key(key)
            && let Some(default) = schema.get("default")
        {
            map.insert(key.clone(), default.clone());
        }
    }
}

fn prune_value(value: &mut Value, schema: &Value, path: &str, unknown: &mut Vec<String>) {
    if preserves(schema) && schema.get("properties").is_none() {
        return;
    }
    match value {
        Value::Object(map) => {
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                let keys: Vec<String> = map.keys().cloned().collect();
                for key in keys {
                    match properties.get(&key) {
                        Some(inner) => {
                            if let Some(v) = map.get_mut(&key) {
                                prune_value(v, inner, &join(path, &key), unknown);
                            }
                        }
                        None if preserves(schema) => {}
                        None => {
                            map.remove(&key);
                            unknown.push(join(path, &key));
                        }
                    }
                }
                apply_defaults(map, properties);
            } else if let Some(additional) =
                schema.get("additionalProperties").filter(|a| a.is_object())
            {
                for (key, v) in map.iter_mut() {
                    prune_value(v, additional, &join(path, key), unknown);
                }
            } else if schema_type(schema) == Some("object")
                && schema.get("additionalProperties") != Some(&Value::Bool(true))
                && !preserves(schema)
            {
                // An object with no properties declared keeps nothing.
                for key in map.keys() {
                    unknown.push(join(path, key));
                }
                map.clear();
            }
        }
        Value::Array(items) => {
            if let Some(inner) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_value(item, inner, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check(value: &Value, schema: &Value, path: &str, problems: &mut Vec<FieldError>) {
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            problems.push(FieldError::invalid(
                path,
                value,
                &format!(
                    "{path} in body must be of type {}: \"null\"",
                    schema_type(schema).unwrap_or("object")
                ),
            ));
        }
        return;
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        if !(value.is_string() || type_name(value) == "integer") {
            problems.push(FieldError::invalid(
                path,
                value,
                &format!(
                    "{path} in body must be of type integer or string: {:?}",
                    type_name(value)
                ),
            ));
        }
        return;
    }
    if let Some(expected) = schema_type(schema) {
        let actual = type_name(value);
        let fits = actual == expected || (expected == "number" && actual == "integer");
        if !fits {
            problems.push(FieldError::invalid(
                path,
                value,
                &format!("{path} in body must be of type {expected}: {actual:?}"),
            ));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        let list: Vec<String> = options
            .iter()
            .map(|o| o.as_str().map_or(o.to_string(), str::to_owned))
            .collect();
        let refs: Vec<&str> = list.iter().map(String::as_str).collect();
        problems.push(FieldError::not_supported(path, value, &refs));
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            problems.push(FieldError::invalid(
                path,
                value,
                &format!("{path} in body should be greater than or equal to {min}"),
            ));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            problems.push(FieldError::invalid(
                path,
                value,
                &format!("{path} in body should be less than or equal to {max}"),
            ));
        }
    }
    if let Some(text) = value.as_str() {
        let len = text.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            problems.push(FieldError::invalid(
                path,
                value,
                &format!("{path} in body should be at least {min} chars long"),
            ));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            problems.push(FieldError {
                field: path.to_owned(),
                reason: crate::error::FieldReason::TooLong,
                message: format!("Too long: may not be more than {max} bytes"),
            });
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
            && let Ok(re) = regex::Regex::new(pattern)
            && !re.is_match(text)
        {
            problems.push(FieldError::invalid(
                path,
                value,
                &format!("{path} in body should match '{pattern}'"),
            ));
        }
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            for required in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !map.contains_key(required) {
                    problems.push(FieldError::required(join(path, required)));
                }
            }
            for (key, inner) in map {
                let child = join(path, key);
                if let Some(s) = properties.and_then(|p| p.get(key)) {
                    check(inner, s, &child, problems);
                } else if let Some(s) = schema.get("additionalProperties").filter(|a| a.is_object())
                {
                    check(inner, s, &child, problems);
                }
            }
        }
        Value::Array(items) => {
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                problems.push(FieldError::invalid(
                    path,
                    value,
                    &format!("{path} in body should have at least {min} items"),
                ));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && (items.len() as u64) > max
            {
                problems.push(FieldError {
                    field: path.to_owned(),
                    reason: crate::error::FieldReason::TooLong,
                    message: format!("Too many: {}: must have at most {max} items", items.len()),
                });
            }
            if let Some(inner) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item, inner, &format!("{path}[{i}]"), problems);
                }
            }
        }
        _ => {}
    }
}

/// Defaults of a CRD: singular and list kind from the kind, no conversion.
pub fn default(crd: &mut CustomResourceDefinition) {
    let names = &mut crd.spec.names;
    if names.singular.as_deref().is_none_or(str::is_empty) {
        names.singular = Some(names.kind.to_lowercase());
    }
    if names.list_kind.as_deref().is_none_or(str::is_empty) {
        names.list_kind = Some(format!("{}List", names.kind));
    }
    if crd.spec.conversion.is_none() {
        crd.spec.conversion = Some(
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceConversion {
                strategy: "None".into(),
                webhook: None,
            },
        );
    }
}

/// The problems of a CRD.
pub fn validate(crd: &Value) -> Vec<FieldError> {
    let mut problems = Vec::new();
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or("");
    let plural = spec
        .pointer("/names/plural")
        .and_then(Value::as_str)
        .unwrap_or("");
    if group.is_empty() {
        problems.push(FieldError::required("spec.group"));
    } else if !group.contains('.') {
        problems.push(FieldError::invalid(
            "spec.group",
            &Value::String(group.into()),
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        problems.push(FieldError::required("spec.names.plural"));
    }
    if spec
        .pointer("/names/kind")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        problems.push(FieldError::required("spec.names.kind"));
    }
    let name = meta::name_of(crd);
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        problems.push(FieldError::invalid(
            "metadata.name",
            &Value::String(name.into()),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    match spec["scope"].as_str() {
        Some("Namespaced" | "Cluster") => {}
        Some(other) => problems.push(FieldError::not_supported(
            "spec.scope",
            &Value::String(other.into()),
            &["Cluster", "Namespaced"],
        )),
        None => problems.push(FieldError::required("spec.scope")),
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        problems.push(FieldError::invalid(
            "spec.versions",
            &json!([]),
            "must have exactly one version marked as storage version",
        ));
    }
    let storage = versions
        .iter()
        .filter(|v| v["storage"] == Value::Bool(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        problems.push(FieldError::invalid(
            "spec.versions",
            &json!(
                versions
                    .iter()
                    .map(|v| v["name"].clone())
                    .collect::<Vec<_>>()
            ),
            "must have exactly one version marked as storage version",
        ));
    }
    for (i, version) in versions.iter().enumerate() {
        if version.pointer("/schema/openAPIV3Schema").is_none() {
            problems.push(FieldError::required_because(
                format!("spec.versions[{i}].schema.openAPIV3Schema"),
                "schemas are required",
            ));
        }
    }
    problems
}

/// A new CRD is accepted and established at once (there is no other server to wait for).
pub fn on_create(crd: &mut Value) {
    established(crd);
}

/// Sets a CRD's status: names accepted, established, its storage version.
pub fn established(crd: &mut Value) {
    let now = meta::now();
    let storage: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v["storage"] == Value::Bool(true))
                .map(|v| v["name"].clone())
                .collect()
        })
        .unwrap_or_default();
    let names = crd.pointer("/spec/names").cloned().unwrap_or(Value::Null);
    crd["status"] = json!({
        "acceptedNames": names,
        "storedVersions": storage,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
    });
}

/// The resource types the served versions of `crd` define.
pub fn resource_types(crd: &Value) -> Vec<ResourceType> {
    let spec = &crd["spec"];
    let text = |pointer: &str| {
        spec.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let strings = |pointer: &str| -> Vec<String> {
        spec.pointer(pointer)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    if meta::is_deleting(crd) {
        return Vec::new();
    }
    let kind = text("/names/kind");
    let mut out = Vec::new();
    for version in spec["versions"].as_array().into_iter().flatten() {
        if version["served"] != Value::Bool(true) {
            continue;
        }
        let schema = version
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .unwrap_or_else(
                || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
        let scale = version
            .pointer("/subresources/scale")
            .map(|scale| ScalePaths {
                spec_replicas: jsonpath_to_pointer(
                    scale["specReplicasPath"]
                        .as_str()
                        .unwrap_or(".spec.replicas"),
                ),
                status_replicas: jsonpath_to_pointer(
                    scale["statusReplicasPath"]
                        .as_str()
                        .unwrap_or(".status.replicas"),
                ),
                label_selector: scale["labelSelectorPath"].as_str().map(jsonpath_to_pointer),
            });
        out.push(ResourceType {
            group: text("/group"),
            version: version["name"].as_str().unwrap_or("").to_owned(),
            kind: kind.clone(),
            list_kind: {
                let list = text("/names/listKind");
                if list.is_empty() {
                    format!("{kind}List")
                } else {
                    list
                }
            },
            plural: text("/names/plural"),
            singular: {
                let singular = text("/names/singular");
                if singular.is_empty() {
                    kind.to_lowercase()
                } else {
                    singular
                }
            },
            namespaced: text("/scope") == "Namespaced",
            short_names: strings("/names/shortNames"),
            categories: strings("/names/categories"),
            builtin: None,
            custom: Some(Arc::new(CustomSchema {
                schema,
                columns: version
                    .get("additionalPrinterColumns")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            })),
            status: version.pointer("/subresources/status").is_some(),
            scale,
            create_only: false,
        });
    }
    out
}

/// `.spec.replicas` as a JSON pointer (`/spec/replicas`).
pub fn jsonpath_to_pointer(path: &str) -> String {
    path.trim_start_matches('.')
        .split('.')
        .fold(String::new(), |acc, part| format!("{acc}/{part}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crontab() -> Value {
        json!({
            "metadata": {"name": "crontabs.stable.example.com"},
            "spec": {"group": "stable.example.com", "scope": "Namespaced",
                "names": {"plural": "crontabs", "kind": "CronTab", "shortNames": ["ct"]},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "required": ["cronSpec"], "properties": {
                            "cronSpec": {"type": "string", "pattern": "^(\\S+ ){4}\\S+$"},
                            "image": {"type": "string"},
                            "replicas": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
                            "mode": {"type": "string", "enum": ["a", "b"]},
                            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
                        "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}}}}}}]}
        })
    }

    #[test]
    fn custom_resources_are_pruned_defaulted_and_validated_by_their_schema() {
        let crd = crontab();
        assert!(validate(&crd).is_empty(), "{:?}", validate(&crd));
        let types = resource_types(&crd);
        assert_eq!(types.len(), 1);
        let rt = &types[0];
        assert_eq!(
            (
                rt.plural.as_str(),
                rt.singular.as_str(),
                rt.namespaced,
                rt.status
            ),
            ("crontabs", "crontab", true, true)
        );
        assert_eq!(rt.scale.as_ref().unwrap().spec_replicas, "/spec/replicas");
        let schema = rt.custom.as_ref().unwrap();
        let (pruned, unknown) = schema.prune(&json!({"apiVersion": "stable.example.com/v1", "kind": "CronTab",
            "metadata": {"name": "x"}, "spec": {"cronSpec": "* * * * *", "bogus": 1, "extra": {"anything": [1]}}, "top": 2}));
        assert_eq!(unknown, ["spec.bogus", "top"]);
        assert_eq!(pruned["spec"]["replicas"], 1, "defaulted");
        assert_eq!(pruned["spec"]["extra"]["anything"], json!([1]));
        assert!(schema.validate(&pruned).is_empty());
        let bad = json!({"spec": {"cronSpec": "nope", "replicas": 50, "mode": "c", "image": 3}});
        let text: Vec<String> = schema
            .validate(&bad)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(text.contains(&"spec.cronSpec: Invalid value: \"nope\": spec.cronSpec in body should match '^(\\S+ ){4}\\S+$'".to_owned()), "{text:?}");
        assert!(text.iter().any(|t| t.starts_with("spec.replicas: Invalid value: 50: spec.replicas in body should be less than or equal to 10")), "{text:?}");
        assert!(
            text.iter()
                .any(|t| t.starts_with("spec.mode: Unsupported value: \"c\"")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("spec.image in body must be of type string")),
            "{text:?}"
        );
        let mut wrong = crontab();
        wrong["metadata"]["name"] = json!("wrong");
        wrong["spec"]["group"] = json!("nodot");
        assert_eq!(validate(&wrong).len(), 2);
    }
}
