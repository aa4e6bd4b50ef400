//! OpenAPI v3: the `/openapi/v3` index and one document per group-version, built from
//! `k8s-openapi`'s schemas (with `x-kubernetes-group-version-kind`) and the CRDs'
//! `openAPIV3Schema`s. kubectl reads them for `explain` and to learn that the server
//! validates fields itself (every PATCH operation declares `fieldValidation`). PATCH
//! operations of built-in kinds leave strategic merge patch out of their content
//! types on purpose: kubectl then computes such patches from its own compiled-in
//! types, which carry the merge keys these schemas lack.

use std::collections::BTreeMap;
use std::sync::Mutex;

use schemars::JsonSchema;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha512};

use crate::registry::{Kind, Registry, ResourceType};

/// Built documents by path (`api/v1`, `apis/apps/v1`): (hash, JSON).
type Documents = BTreeMap<String, (String, Vec<u8>)>;

/// The OpenAPI v3 documents, built once per registry generation.
#[derive(Default)]
pub struct OpenApi {
    cache: Mutex<Option<(u64, Documents)>>,
}

fn definitions() -> Map<String, Value> {
    use k8s_openapi::api::{
        apps::v1 as apps, authorization::v1 as authz, batch::v1 as batch,
        coordination::v1 as coordination, core::v1 as core, discovery::v1 as discovery,
        networking::v1 as networking, rbac::v1 as rbac,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
    let mut generator: SchemaGenerator = SchemaSettings::openapi3().into_generator();
    fn add<T: JsonSchema>(g: &mut SchemaGenerator) {
        let _ = g.subschema_for::<T>();
    }
    add::<core::Namespace>(&mut generator);
    add::<core::Node>(&mut generator);
    add::<core::Pod>(&mut generator);
    add::<core::Service>(&mut generator);
    add::<core::Endpoints>(&mut generator);
    add::<core::ConfigMap>(&mut generator);
    add::<core::Secret>(&mut generator);
    add::<core::ServiceAccount>(&mut generator);
    add::<core::Event>(&mut generator);
    add::<core::Binding>(&mut generator);
    add::<apps::Deployment>(&mut generator);
    add::<apps::ReplicaSet>(&mut generator);
    add::<apps::DaemonSet>(&mut generator);
    add::<apps::StatefulSet>(&mut generator);
    add::<apps::ControllerRevision>(&mut generator);
    add::<batch::Job>(&mut generator);
    add::<batch::CronJob>(&mut generator);
    add::<networking::Ingress>(&mut generator);
    add::<networking::NetworkPolicy>(&mut generator);
    add::<coordination::Lease>(&mut generator);
    add::<discovery::EndpointSlice>(&mut generator);
    add::<rbac::Role>(&mut generator);
    add::<rbac::ClusterRole>(&mut generator);
    add::<rbac::RoleBinding>(&mut generator);
    add::<rbac::ClusterRoleBinding>(&mut generator);
    add::<apiextensions::CustomResourceDefinition>(&mut generator);
    add::<authz::SelfSubjectAccessReview>(&mut generator);
    add::<authz::SelfSubjectRulesReview>(&mut generator);
    add::<k8s_openapi::api::autoscaling::v1::Scale>(&mut generator);
    add::<meta::Status>(&mut generator);
    add::<meta::DeleteOptions>(&mut generator);
    add::<meta::Patch>(&mut generator);
    generator.take_definitions(true)
}

/// The schema name k8s-openapi gives a built-in kind (`io.k8s.api.apps.v1.Deployment`).
fn builtin_schema_name(resource: &ResourceType) -> String {
    match resource.builtin {
        Some(Kind::CustomResourceDefinition) => {
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition"
                .into()
        }
        _ => {
            // `rbac.authorization.k8s.io` → `rbac`, `networking.k8s.io` → `networking`.
            let group = if resource.group.is_empty() {
                "core"
            } else {
                resource.group.split('.').next().unwrap_or("")
            };
            format!("io.k8s.api.{group}.{}.{}", resource.version, resource.kind)
        }
    }
}

/// The schema name of a custom resource (`com.example.stable.v1.CronTab`).
fn custom_schema_name(resource: &ResourceType) -> String {
    let reversed: Vec<&str> = resource.group.split('.').rev().collect();
    format!(
        "{}.{}.{}",
        reversed.join("."),
        resource.version,
        resource.kind
    )
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn gvk(resource: &ResourceType) -> Value {
    json!({"group": resource.group, "kind": resource.kind, "version": resource.version})
}

fn query(name: &str, kind: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": kind}, "uniqueItems": true})
}

fn response(schema: &Value) -> Value {
    json!({"200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
           "401": {"description": "Unauthorized"}})
}

fn operation(
    resource: &ResourceType,
    action: &str,
    id: &str,
    schema: &Value,
    extra: Vec<Value>,
    body: Option<Vec<&str>>,
) -> Value {
    let mut op = json!({
        "operationId": id,
        "responses": response(schema),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(resource),
        "parameters": extra,
    });
    if let Some(types) = body {
        let content: Map<String, Value> = types
            .into_iter()
            .map(|t| (t.to_owned(), json!({"schema": schema})))
            .collect();
        op["requestBody"] = json!({"required": true, "content": content});
    }
    op
}

fn resource_paths(resource: &ResourceType, schema_name: &str, paths: &mut Map<String, Value>) {
    let prefix = if resource.group.is_empty() {
        format!("/api/{}", resource.version)
    } else {
        format!("/apis/{}/{}", resource.group, resource.version)
    };
    let scoped = if resource.namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{}", resource.plural)
    } else {
        format!("{prefix}/{}", resource.plural)
    };
    let schema = schema_ref(schema_name);
    let id = format!("{}{}", resource.kind, resource.version);
    let path_params = |named: bool| {
        let mut params = Vec::new();
        if named {
            params.push(json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}));
        }
        if resource.namespaced {
            params.push(json!({"name": "namespace", "in": "path", "required": true, "schema": {"type": "string"}}));
        }
        params
    };
    let write_params = || {
        vec![
            query("dryRun", "string"),
            query("fieldManager", "string"),
            query("fieldValidation", "string"),
        ]
    };
    let mut patch_params = write_params();
    patch_params.push(query("force", "boolean"));
    // No strategic merge patch here, for built-ins too: see the module comment.
    let patch_types = vec![
        "application/apply-patch+yaml",
        "application/json-patch+json",
        "application/merge-patch+json",
    ];
    if resource.create_only {
        let mut item = Map::new();
        item.insert(
            "post".into(),
            operation(
                resource,
                "post",
                &format!("create{id}"),
                &schema,
                write_params(),
                Some(vec!["application/json"]),
            ),
        );
        paths.insert(format!("{prefix}/{}", resource.plural), Value::Object(item));
        return;
    }
    let list_params = vec![
        query("labelSelector", "string"),
        query("fieldSelector", "string"),
        query("limit", "integer"),
        query("continue", "string"),
        query("resourceVersion", "string"),
        query("watch", "boolean"),
    ];
    let mut collection = Map::new();
    collection.insert("parameters".into(), Value::Array(path_params(false)));
    collection.insert(
        "get".into(),
        operation(
            resource,
            "list",
            &format!("list{id}"),
            &schema,
            list_params.clone(),
            None,
        ),
    );
    collection.insert(
        "post".into(),
        operation(
            resource,
            "post",
            &format!("create{id}"),
            &schema,
            write_params(),
            Some(vec!["application/json", "application/yaml"]),
        ),
    );
    collection.insert(
        "delete".into(),
        operation(
            resource,
            "deletecollection",
            &format!("deleteCollection{id}"),
            &schema,
            Vec::new(),
            None,
        ),
    );
    paths.insert(scoped.clone(), Value::Object(collection));
    let mut item = Map::new();
    item.insert("parameters".into(), Value::Array(path_params(true)));
    item.insert(
        "get".into(),
        operation(
            resource,
            "get",
            &format!("read{id}"),
            &schema,
            Vec::new(),
            None,
        ),
    );
    item.insert(
        "put".into(),
        operation(
            resource,
            "put",
            &format!("replace{id}"),
            &schema,
            write_params(),
            Some(vec!["application/json", "application/yaml"]),
        ),
    );
    item.insert(
        "patch".into(),
        operation(
            resource,
            "patch",
            &format!("patch{id}"),
            &schema,
            patch_params.clone(),
            Some(patch_types.clone()),
        ),
    );
    item.insert(
        "delete".into(),
        operation(
            resource,
            "delete",
            &format!("delete{id}"),
            &schema,
            Vec::new(),
            None,
        ),
    );
    paths.insert(format!("{scoped}/{{name}}"), Value::Object(item));
    if resource.status {
        let mut status = Map::new();
        status.insert("parameters".into(), Value::Array(path_params(true)));
        status.insert(
            "get".into(),
            operation(
                resource,
                "get",
                &format!("read{id}Status"),
                &schema,
                Vec::new(),
                None,
            ),
        );
        status.insert(
            "put".into(),
            operation(
                resource,
                "put",
                &format!("replace{id}Status"),
                &schema,
                write_params(),
                Some(vec!["application/json"]),
            ),
        );
        status.insert(
            "patch".into(),
            operation(
                resource,
                "patch",
                &format!("patch{id}Status"),
                &schema,
                patch_params,
                Some(patch_types),
            ),
        );
        paths.insert(format!("{scoped}/{{name}}/status"), Value::Object(status));
    }
    if resource.namespaced {
        let mut all = Map::new();
        all.insert(
            "get".into(),
            operation(
                resource,
                "list",
                &format!("list{id}ForAllNamespaces"),
                &schema,
                list_params,
                None,
            ),
        );
        paths.insert(format!("{prefix}/{}", resource.plural), Value::Object(all));
    }
}

/// Every schema name `value` refers to.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref")
                && let Some(name) = r.strip_prefix("#/components/schemas/")
            {
                out.push(name.to_owned());
            }
            for v in map.values() {
                refs(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

fn custom_schema(resource: &ResourceType) -> Value {
    let mut schema = resource
        .custom
        .as_ref()
        .map(|c| c.schema.clone())
        .unwrap_or_else(|| json!({"type": "object"}));
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
        props.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
        props.insert(
            "metadata".into(),
            json!({"allOf": [schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")], "description": "Standard object's metadata."}),
        );
    }
    schema
}

impl OpenApi {
    fn build(registry: &Registry) -> BTreeMap<String, (String, Vec<u8>)> {
        let defs = definitions();
        let mut by_gv: BTreeMap<String, Vec<std::sync::Arc<ResourceType>>> = BTreeMap::new();
        for resource in registry.all() {
            let key = if resource.group.is_empty() {
                format!("api/{}", resource.version)
            } else {
                format!("apis/{}/{}", resource.group, resource.version)
            };
            by_gv.entry(key).or_default().push(resource);
        }
        let mut out = BTreeMap::new();
        for (key, resources) in by_gv {
            let mut paths = Map::new();
            let mut schemas = Map::new();
            let mut wanted = vec![
                "io.k8s.apimachinery.pkg.apis.meta.v1.Status".to_owned(),
                "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".to_owned(),
            ];
            for resource in &resources {
                let name = if resource.builtin.is_some() {
                    builtin_schema_name(resource)
                } else {
                    let name = custom_schema_name(resource);
                    schemas.insert(name.clone(), custom_schema(resource));
                    name
                };
                resource_paths(resource, &name, &mut paths);
                wanted.push(name);
            }
            // The closure of the schemas the kinds refer to.
            while let Some(name) = wanted.pop() {
                if schemas.contains_key(&name)
                    && !resources
                        .iter()
                        .any(|r| r.builtin.is_none() && custom_schema_name(r) == name)
                {
                    continue;
                }
                let schema = match schemas.get(&name) {
                    Some(s) => s.clone(),
                    None => match defs.get(&name) {
                        Some(s) => s.clone(),
                        None => continue,
                    },
                };
                let mut found = Vec::new();
                refs(&schema, &mut found);
                schemas.insert(name, schema);
                wanted.extend(found.into_iter().filter(|f| !schemas.contains_key(f)));
            }
            for resource in &resources {
                let name = if resource.builtin.is_some() {
                    builtin_schema_name(resource)
                } else {
                    custom_schema_name(resource)
                };
                if let Some(schema) = schemas.get_mut(&name)
                    && let Some(map) = schema.as_object_mut()
                {
                    map.insert(
                        "x-kubernetes-group-version-kind".into(),
                        json!([gvk(resource)]),
                    );
                }
            }
            let document = json!({
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": "v1.37.0"},
                "paths": paths,
                "components": {"schemas": schemas},
            });
            let bytes = document.to_string().into_bytes();
            let hash: String = Sha512::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect();
            out.insert(key, (hash, bytes));
        }
        out
    }

    fn documents(&self, registry: &Registry) -> BTreeMap<String, (String, Vec<u8>)> {
        let generation = registry.generation();
        if let Ok(cache) = self.cache.lock()
            && let Some((built, docs)) = cache.as_ref()
            && *built == generation
        {
            return docs.clone();
        }
        let docs = Self::build(registry);
        if let Ok(mut cache) = self.cache.lock() {
            *cache = Some((generation, docs.clone()));
        }
        docs
    }

    /// The `/openapi/v3` index.
    pub fn index(&self, registry: &Registry) -> Value {
        let paths: Map<String, Value> = self
            .documents(registry)
            .into_iter()
            .map(|(key, (hash, _))| {
                let url = format!("/openapi/v3/{key}?hash={hash}");
                (key, json!({"serverRelativeURL": url}))
            })
            .collect();
        json!({"paths": paths})
    }

    /// One group-version document (`api/v1`, `apis/apps/v1`) with its hash.
    pub fn document(&self, registry: &Registry, key: &str) -> Option<(String, Vec<u8>)> {
        self.documents(registry).remove(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_name_kinds_and_declare_field_validation() {
        let registry = Registry::new();
        let openapi = OpenApi::default();
        let index = openapi.index(&registry);
        assert!(
            index["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1?hash=")
        );
        let (_, bytes) = openapi.document(&registry, "apis/apps/v1").unwrap();
        let doc: Value = serde_json::from_slice(&bytes).unwrap();
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": "apps", "kind": "Deployment", "version": "v1"})
        );
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        );
        let schema = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            schema["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert!(
            doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
                .is_object()
        );
        let (_, core) = openapi.document(&registry, "api/v1").unwrap();
        let core: Value = serde_json::from_slice(&core).unwrap();
        assert_eq!(
            core["components"]["schemas"]["io.k8s.api.core.v1.Pod"]["x-kubernetes-group-version-kind"]
                [0]["group"],
            ""
        );
        let (_, coord) = openapi
            .document(&registry, "apis/coordination.k8s.io/v1")
            .unwrap();
        let coord: Value = serde_json::from_slice(&coord).unwrap();
        assert!(coord["components"]["schemas"]["io.k8s.api.coordination.v1.Lease"].is_object());
    }
}
