//! PATCH bodies: JSON merge patch (RFC 7386) and JSON patch (RFC 6902) through the
//! `json-patch` crate, and Kubernetes' strategic merge patch, which merges lists by
//! the keys the built-in types declare (`containers` by `name`, `ports` by
//! `containerPort`, …) and honours its directives (`$patch`, `$retainKeys`,
//! `$setElementOrder/…`, `$deleteFromPrimitiveList/…`).

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::registry::Kind;

/// The patch formats the server takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// The patch type of a `Content-Type` (parameters ignored).
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// Applies a JSON merge patch.
pub fn merge(target: &Value, patch: &Value) -> Value {
    let mut out = target.clone();
    json_patch::merge(&mut out, patch);
    out
}

/// Applies a JSON patch; a failing operation is the 422 kube-apiserver gives.
pub fn json(target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON patch: {e}")))?;
    if ops.0.len() > 10_000 {
        return Err(ApiError::TooLarge(format!(
            "The allowed maximum operations in a JSON patch is 10000, got {}",
            ops.0.len()
        )));
    }
    let mut out = target.clone();
    json_patch::patch(&mut out, &ops).map_err(|e| ApiError::Invalid {
        kind: String::new(),
        group: String::new(),
        name: String::new(),
        causes: vec![crate::error::FieldError::invalid(
            "patch",
            &Value::String(e.to_string()),
            "the server rejected our request due to an error in our request",
        )],
    })?;
    Ok(out)
}

/// How a list field merges under a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// The patch's list replaces the object's.
    Replace,
    /// A list of scalars: union.
    Primitive,
    /// A list of maps merged by this key.
    ByKey(&'static str),
}

/// Where a kind's pod spec sits (field names from the root).
fn pod_spec_root(kind: Kind) -> Option<&'static [&'static str]> {
    match kind {
        Kind::Pod => Some(&["spec"]),
        Kind::Deployment | Kind::ReplicaSet | Kind::DaemonSet | Kind::StatefulSet | Kind::Job => {
            Some(&["spec", "template", "spec"])
        }
        Kind::CronJob => Some(&["spec", "jobTemplate", "spec", "template", "spec"]),
        _ => None,
    }
}

/// The strategy of the list at `path` (field names, indices left out) of a `kind`.
pub fn list_strategy(kind: Option<Kind>, path: &[String]) -> ListStrategy {
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    let last2 = if path.len() >= 2 {
        &path[path.len() - 2..]
    } else {
        &path[..]
    };
    match last2 {
        ["metadata", "finalizers"] => return ListStrategy::Primitive,
        ["metadata", "ownerReferences"] => return ListStrategy::ByKey("uid"),
        _ => {}
    }
    let Some(kind) = kind else {
        return ListStrategy::Replace;
    };
    if let Some(root) = pod_spec_root(kind)
        && path.len() > root.len()
        && path[..root.len()] == *root
    {
        let rel = &path[root.len()..];
        return match rel {
            [
                "containers"
                | "initContainers"
                | "ephemeralContainers"
                | "imagePullSecrets"
                | "schedulingGates"
                | "resourceClaims"
                | "volumes",
            ] => ListStrategy::ByKey("name"),
            ["hostAliases"] => ListStrategy::ByKey("ip"),
            ["topologySpreadConstraints"] => ListStrategy::ByKey("topologyKey"),
            [
                "containers" | "initContainers" | "ephemeralContainers",
                field,
            ] => match *field {
                "ports" => ListStrategy::ByKey("containerPort"),
                "env" => ListStrategy::ByKey("name"),
                "volumeMounts" => ListStrategy::ByKey("mountPath"),
                "volumeDevices" => ListStrategy::ByKey("devicePath"),
                _ => ListStrategy::Replace,
            },
            _ => ListStrategy::Replace,
        };
    }
    match (kind, path.as_slice()) {
        (Kind::Pod, ["status", "conditions"]) => ListStrategy::ByKey("type"),
        (Kind::Pod, ["status", "podIPs" | "hostIPs"]) => ListStrategy::ByKey("ip"),
        (Kind::Service, ["spec", "ports"]) => ListStrategy::ByKey("port"),
        (Kind::ServiceAccount, ["secrets"]) => ListStrategy::ByKey("name"),
        (Kind::Node, ["spec", "podCIDRs"]) => ListStrategy::Primitive,
        (Kind::Node, ["status", "conditions" | "addresses"]) => ListStrategy::ByKey("type"),
        (
            Kind::Namespace
            | Kind::Service
            | Kind::Deployment
            | Kind::ReplicaSet
            | Kind::DaemonSet
            | Kind::StatefulSet
            | Kind::Job,
            ["status", "conditions"],
        ) => ListStrategy::ByKey("type"),
        _ => ListStrategy::Replace,
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(message.into())
}

/// Applies a strategic merge patch to an object of `kind`.
pub fn strategic(kind: Option<Kind>, target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let Value::Object(patch) = patch else {
        return Err(bad("a strategic merge patch must be a JSON object"));
    };
    let original = match target {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    merge_map(kind, original, patch, &mut Vec::new()).map(Value::Object)
}

fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|item| item.get("$patch").is_none())
                .map(strip_directives)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn merge_map(
    kind: Option<Kind>,
    mut original: Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
) -> Result<Map<String, Value>, ApiError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut out = patch.clone();
            out.remove("$patch");
            return match strip_directives(&Value::Object(out)) {
                Value::Object(map) => Ok(map),
                _ => Ok(Map::new()),
            };
        }
        Some("delete") => return Ok(Map::new()),
        Some("merge") | None => {}
        Some(other) => {
            return Err(ApiError::Internal(format!(
                "unknown patch type: {other} in map"
            )));
        }
    }
    if let Some(retain) = patch.get("$retainKeys") {
        let keys: Vec<&str> = retain
            .as_array()
            .ok_or_else(|| bad("invalid patch format of retainKeys"))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for (key, value) in patch {
            if !key.starts_with('$') && !value.is_null() && !keys.contains(&key.as_str()) {
                return Err(bad("invalid patch format of retainKeys"));
            }
        }
        original.retain(|k, _| keys.contains(&k.as_str()));
    }
    // Deletions from primitive lists, then the ordinary keys.
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = value.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = original.get_mut(field) {
                list.retain(|item| !remove.contains(item));
            }
        }
    }
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        if value.is_null() {
            original.remove(key);
            continue;
        }
        path.push(key.clone());
        let merged = match (original.remove(key), value) {
            (Some(Value::Object(current)), Value::Object(inner)) => {
                Value::Object(merge_map(kind, current, inner, path)?)
            }
            (Some(Value::Array(current)), Value::Array(items)) => {
                let order = patch
                    .get(&format!("$setElementOrder/{key}"))
                    .and_then(Value::as_array);
                merge_list(kind, current, items, order, path)?
            }
            (_, other) => {
                if let Value::Array(items) = other
                    && items
                        .iter()
                        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
                {
                    strip_directives(&Value::Array(items.clone()))
                } else {
                    strip_directives(other)
                }
            }
        };
        path.pop();
        original.insert(key.clone(), merged);
    }
    Ok(original)
}

fn merge_list(
    kind: Option<Kind>,
    current: Vec<Value>,
    patch: &[Value],
    order: Option<&Vec<Value>>,
    path: &mut Vec<String>,
) -> Result<Value, ApiError> {
    if patch
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(strip_directives(&Value::Array(
            patch
                .iter()
                .filter(|i| i.get("$patch").is_none())
                .cloned()
                .collect(),
        )));
    }
    match list_strategy(kind, path) {
        ListStrategy::Replace => Ok(strip_directives(&Value::Array(patch.to_vec()))),
        ListStrategy::Primitive => {
            let mut out = current;
            for item in patch {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
            if let Some(order) = order {
                sort_by_order(&mut out, order, |v| v.clone());
            }
            Ok(Value::Array(out))
        }
        ListStrategy::ByKey(key) => {
            let mut out = current;
            for item in patch {
                let Value::Object(entry) = item else {
                    return Err(bad("a list merged by key must hold objects"));
                };
                let Some(id) = entry.get(key) else {
                    if entry.get("$patch").and_then(Value::as_str) == Some("merge") {
                        return Err(ApiError::Internal(
                            "merging lists cannot yet be specified in the patch".into(),
                        ));
                    }
                    return Err(ApiError::Internal(format!(
                        "map: {item} does not contain declared merge key: {key}"
                    )));
                };
                let position = out.iter().position(|o| o.get(key) == Some(id));
                if entry.get("$patch").and_then(Value::as_str) == Some("delete") {
                    out.retain(|o| o.get(key) != Some(id));
                    continue;
                }
                match position {
                    Some(i) => {
                        let existing = match out[i].clone() {
                            Value::Object(map) => map,
                            _ => Map::new(),
                        };
                        out[i] = Value::Object(merge_map(kind, existing, entry, path)?);
                    }
                    None => out.push(strip_directives(item)),
                }
            }
            if let Some(order) = order {
                sort_by_order(&mut out, order, |v| {
                    v.get(key).cloned().unwrap_or(Value::Null)
                });
            }
            Ok(Value::Array(out))
        }
    }
}

/// Orders `items` as `order` lists them (by `id`), keeping the others where they
/// were relative to each other, after the ordered ones they followed.
fn sort_by_order(items: &mut [Value], order: &[Value], id: impl Fn(&Value) -> Value) {
    let wanted: Vec<Value> = order
        .iter()
        .map(|o| match o {
            Value::Object(map) if map.len() == 1 => {
                map.values().next().cloned().unwrap_or(Value::Null)
            }
            other => other.clone(),
        })
        .collect();
    let rank = |v: &Value| -> usize {
        let key = id(v);
        wanted.iter().position(|w| *w == key).unwrap_or(usize::MAX)
    };
    // Stable: server-only items keep their relative order, after the listed ones.
    items.sort_by_key(|v| rank(v));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({"metadata": {"name": "web", "labels": {"app": "web", "tier": "x"}, "finalizers": ["a"]},
            "spec": {"replicas": 1, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
                "template": {"spec": {"containers": [
                    {"name": "web", "image": "nginx:1", "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 80}]},
                    {"name": "side", "image": "busybox"}]}}}})
    }

    #[test]
    fn containers_merge_by_name_and_env_by_name() {
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
            "containers": [{"name": "web", "image": "nginx:2", "env": [{"name": "B", "value": "2"}]}]}}}});
        let out = strategic(Some(Kind::Deployment), &deployment(), &patch).unwrap();
        let containers = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers.as_array().unwrap().len(), 2);
        assert_eq!(containers[0]["image"], "nginx:2");
        assert_eq!(
            containers[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
        );
        assert_eq!(containers[0]["ports"], json!([{"containerPort": 80}]));
        assert_eq!(containers[1]["name"], "side");
    }

    #[test]
    fn directives_delete_replace_and_retain() {
        let patch = json!({
            "metadata": {"labels": {"tier": null}, "finalizers": ["b"], "$deleteFromPrimitiveList/finalizers": ["a"]},
            "spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null},
                "template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}});
        let out = strategic(Some(Kind::Deployment), &deployment(), &patch).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let replace = json!({"spec": {"template": {"spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "x"}]}}}});
        let out = strategic(Some(Kind::Deployment), &deployment(), &replace).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "only", "image": "x"}])
        );
        let missing_key = json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
        assert_eq!(
            strategic(Some(Kind::Deployment), &deployment(), &missing_key)
                .unwrap_err()
                .code(),
            500
        );
    }

    #[test]
    fn lists_without_a_strategy_are_replaced_and_json_patches_apply_in_order() {
        let pod = json!({"spec": {"tolerations": [{"key": "a"}], "containers": [{"name": "c", "image": "i"}]}});
        let out = strategic(
            Some(Kind::Pod),
            &pod,
            &json!({"spec": {"tolerations": [{"key": "b"}]}}),
        )
        .unwrap();
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "b"}]));
        let patched = json(
            &pod,
            &json!([{"op": "replace", "path": "/spec/containers/0/image", "value": "j"},
            {"op": "test", "path": "/spec/containers/0/image", "value": "j"}]),
        )
        .unwrap();
        assert_eq!(patched["spec"]["containers"][0]["image"], "j");
        assert_eq!(
            json(&pod, &json!([{"op": "remove", "path": "/nope"}]))
                .unwrap_err()
                .code(),
            422
        );
        assert_eq!(
            merge(&pod, &json!({"spec": {"tolerations": null}}))["spec"].get("tolerations"),
            None
        );
    }
}
