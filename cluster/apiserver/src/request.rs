//! What a request asks for, read off its path and method the way kube-apiserver's
//! `RequestInfoFactory` does: the API group and version, the namespace, the resource,
//! the name, the subresource and the verb (for authorization and dispatch); plus its
//! query parameters and the media types it sends and accepts.

use std::collections::HashMap;

use axum::http::{HeaderMap, Method};

use crate::error::ApiError;

/// A request for a resource (as opposed to discovery and the other fixed paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRequest {
    /// API group (`""` for `/api`).
    pub group: String,
    /// Version.
    pub version: String,
    /// Namespace from the path.
    pub namespace: Option<String>,
    /// Resource (plural).
    pub resource: String,
    /// Object name.
    pub name: Option<String>,
    /// Subresource (`status`, `scale`, …).
    pub subresource: Option<String>,
    /// The Kubernetes verb (`get`, `list`, `watch`, `create`, `update`, `patch`,
    /// `delete`, `deletecollection`).
    pub verb: &'static str,
}

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/api`.
    CoreVersions,
    /// `/apis`.
    Groups,
    /// `/apis/<group>`.
    Group(String),
    /// `/api/v1`, `/apis/<group>/<version>`.
    Resources {
        /// Group.
        group: String,
        /// Version.
        version: String,
    },
    /// A resource.
    Resource(ResourceRequest),
    /// `/version`.
    Version,
    /// `/openapi/v3` (`None`) or one group-version document.
    OpenApiV3(Option<String>),
    /// `/openapi/v2`.
    OpenApiV2,
    /// `/healthz`, `/livez`, `/readyz` (and their `/…` checks).
    Health,
    /// Anything else.
    Unknown,
}

/// Subresources of a namespace that look like a namespaced path.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

/// Reads the target of `path` for `method` (with `watch` from the query).
pub fn parse(method: &Method, path: &str, watch: bool) -> Target {
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    match parts.as_slice() {
        ["version"] => return Target::Version,
        ["openapi", "v3"] => return Target::OpenApiV3(None),
        ["openapi", "v3", rest @ ..] => return Target::OpenApiV3(Some(rest.join("/"))),
        ["openapi", "v2"] => return Target::OpenApiV2,
        [health, ..] if matches!(*health, "healthz" | "livez" | "readyz") => return Target::Health,
        ["api"] => return Target::CoreVersions,
        ["apis"] => return Target::Groups,
        ["apis", group] => return Target::Group((*group).to_owned()),
        ["api", version] => {
            return Target::Resources {
                group: String::new(),
                version: (*version).to_owned(),
            };
        }
        ["apis", group, version] => {
            return Target::Resources {
                group: (*group).to_owned(),
                version: (*version).to_owned(),
            };
        }
        _ => {}
    }
    let (group, version, mut rest): (&str, &str, &[&str]) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Target::Unknown,
    };
    let mut namespace = None;
    if rest.first() == Some(&"namespaces") && rest.len() > 1 {
        namespace = Some(rest[1].to_owned());
        if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
            rest = &rest[2..];
        }
    }
    let (resource, name, subresource) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub] => (*resource, Some(*name), Some(*sub)),
        _ => return Target::Unknown,
    };
    // `/api/v1/namespaces/x` and its subresources: the namespace is the object.
    if resource == "namespaces" && rest.first() == Some(&"namespaces") {
        namespace = None;
    }
    let verb = match (method.as_str(), name.is_some()) {
        ("GET" | "HEAD", true) if watch => "watch",
        ("GET" | "HEAD", true) => "get",
        ("GET" | "HEAD", false) if watch => "watch",
        ("GET" | "HEAD", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    };
    Target::Resource(ResourceRequest {
        group: group.to_owned(),
        version: version.to_owned(),
        namespace,
        resource: resource.to_owned(),
        name: name.map(str::to_owned),
        subresource: subresource.map(str::to_owned),
        verb,
    })
}

/// A request's query parameters.
#[derive(Debug, Clone, Default)]
pub struct Query {
    params: HashMap<String, String>,
}

impl Query {
    /// Parses a query string.
    pub fn parse(query: Option<&str>) -> Self {
        let params = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Self { params }
    }

    /// A parameter's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// A boolean parameter in any of Go's `ParseBool` spellings; an unparsable one is a
    /// 400.
    pub fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(false),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(other) => Err(ApiError::BadRequest(format!(
                "invalid value {other:?} for the boolean parameter {key}"
            ))),
        }
    }

    /// A non-negative integer parameter.
    pub fn number(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|_| {
                ApiError::BadRequest(format!("invalid value {text:?} for the parameter {key}"))
            }),
        }
    }

    /// `dryRun=All` (any other value is refused).
    pub fn dry_run(&self) -> Result<bool, ApiError> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::Invalid {
                kind: "CreateOptions".into(),
                group: "meta.k8s.io".into(),
                name: String::new(),
                causes: vec![crate::error::FieldError::not_supported(
                    "dryRun",
                    &serde_json::Value::String(other.into()),
                    &["All"],
                )],
            }),
        }
    }
}

/// What the client wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    /// The objects themselves.
    Object,
    /// A `meta.k8s.io/v1` Table.
    Table,
    /// `PartialObjectMetadata` (or its list).
    Metadata,
}

/// Reads the `Accept` header: Tables and partial metadata when asked for (with
/// `g=meta.k8s.io`), JSON otherwise; `406` when only protobuf or CBOR is acceptable.
pub fn representation(headers: &HeaderMap) -> Result<Representation, ApiError> {
    let Some(accept) = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(Representation::Object);
    };
    let mut json_ok = false;
    for option in accept.split(',') {
        let mut params = option.split(';').map(str::trim);
        let media = params.next().unwrap_or("");
        let rest: Vec<&str> = params.collect();
        let is_json = matches!(
            media,
            "application/json" | "*/*" | "application/*" | "application/yaml"
        );
        if !is_json {
            continue;
        }
        let has = |p: &str| rest.iter().any(|r| r.replace(' ', "") == p);
        if has("as=Table") && has("g=meta.k8s.io") {
            return Ok(Representation::Table);
        }
        if (has("as=PartialObjectMetadata") || has("as=PartialObjectMetadataList"))
            && has("g=meta.k8s.io")
        {
            return Ok(Representation::Metadata);
        }
        if !rest.iter().any(|r| r.starts_with("as=")) {
            json_ok = true;
        }
    }
    if json_ok {
        Ok(Representation::Object)
    } else {
        Err(ApiError::NotAcceptable)
    }
}

/// Whether the client asked for aggregated discovery (`apidiscovery.k8s.io/v2`).
pub fn wants_aggregated_discovery(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept.split(',').any(|option| {
                let compact = option.replace(' ', "");
                compact.starts_with("application/json")
                    && compact.contains("g=apidiscovery.k8s.io")
                    && compact.contains("v=v2")
                    && compact.contains("as=APIGroupDiscoveryList")
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(method: Method, path: &str) -> ResourceRequest {
        match parse(&method, path, false) {
            Target::Resource(r) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn paths_read_like_kube_apiservers_request_info() {
        let r = resource(
            Method::GET,
            "/apis/apps/v1/namespaces/ns1/deployments/web/scale",
        );
        assert_eq!(
            (
                r.group.as_str(),
                r.namespace.as_deref(),
                r.resource.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref(),
                r.verb
            ),
            (
                "apps",
                Some("ns1"),
                "deployments",
                Some("web"),
                Some("scale"),
                "get"
            )
        );
        let r = resource(Method::GET, "/api/v1/namespaces/ns1/pods");
        assert_eq!((r.namespace.as_deref(), r.verb), (Some("ns1"), "list"));
        let r = resource(Method::DELETE, "/api/v1/namespaces/ns1");
        assert_eq!(
            (r.resource.as_str(), r.namespace, r.name.as_deref(), r.verb),
            ("namespaces", None, Some("ns1"), "delete")
        );
        let r = resource(Method::PUT, "/api/v1/namespaces/ns1/finalize");
        assert_eq!(
            (
                r.resource.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            ("namespaces", Some("ns1"), Some("finalize"))
        );
        let r = resource(Method::GET, "/api/v1/pods");
        assert_eq!((r.namespace, r.verb), (None, "list"));
        assert_eq!(
            parse(&Method::GET, "/apis/apps", false),
            Target::Group("apps".into())
        );
        assert!(
            matches!(parse(&Method::GET, "/api/v1/pods", true), Target::Resource(r) if r.verb == "watch")
        );
    }

    #[test]
    fn accept_headers_choose_tables_metadata_or_json() {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
                .parse()
                .unwrap(),
        );
        assert_eq!(representation(&headers).unwrap(), Representation::Table);
        headers.insert(
            axum::http::header::ACCEPT,
            "application/vnd.kubernetes.protobuf".parse().unwrap(),
        );
        assert!(representation(&headers).is_err());
        headers.insert(
            axum::http::header::ACCEPT,
            "application/vnd.kubernetes.protobuf, */*".parse().unwrap(),
        );
        assert_eq!(representation(&headers).unwrap(), Representation::Object);
    }
}
