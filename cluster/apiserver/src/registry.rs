//! The resource types the server serves: the built-in kinds (from `k8s-openapi`, with
//! the names, short names, categories and subresources kube-apiserver gives them) and
//! the custom resources of established CustomResourceDefinitions, looked up by group,
//! version and plural. Discovery, OpenAPI, routing and storage all read this table.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::{ListableResource, NamespaceResourceScope, Resource};

use crate::crd::CustomSchema;

/// A built-in kind, for the behaviour that is its own (defaults, validation, tables,
/// field selectors, deletion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Service,
    Endpoints,
    ConfigMap,
    Secret,
    ServiceAccount,
    Event,
    Deployment,
    ReplicaSet,
    DaemonSet,
    StatefulSet,
    ControllerRevision,
    Job,
    CronJob,
    Ingress,
    NetworkPolicy,
    Lease,
    EndpointSlice,
    Role,
    ClusterRole,
    RoleBinding,
    ClusterRoleBinding,
    CustomResourceDefinition,
    SelfSubjectAccessReview,
    SelfSubjectRulesReview,
}

/// Where a kind's `scale` subresource reads and writes (`spec.replicas`,
/// `status.replicas`, the label selector).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    /// JSON pointer of the desired replicas.
    pub spec_replicas: String,
    /// JSON pointer of the observed replicas.
    pub status_replicas: String,
    /// JSON pointer of the label selector (a `LabelSelector` for built-ins, a string
    /// for custom resources).
    pub label_selector: Option<String>,
}

/// One served resource.
#[derive(Debug, Clone)]
pub struct ResourceType {
    /// API group (`""` for the core group).
    pub group: String,
    /// Version (`v1`).
    pub version: String,
    /// Kind (`Deployment`).
    pub kind: String,
    /// The list's kind (`DeploymentList`).
    pub list_kind: String,
    /// Plural, the URL segment (`deployments`).
    pub plural: String,
    /// Singular (`deployment`).
    pub singular: String,
    /// Namespaced (else cluster-scoped).
    pub namespaced: bool,
    /// Short names (`deploy`).
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// The built-in kind, or `None` for a custom resource.
    pub builtin: Option<Kind>,
    /// The schema of a custom resource.
    pub custom: Option<Arc<CustomSchema>>,
    /// Has a `status` subresource (the main resource then ignores status changes).
    pub status: bool,
    /// Has a `scale` subresource.
    pub scale: Option<ScalePaths>,
    /// Only `create` (access reviews): nothing is stored.
    pub create_only: bool,
}

fn is_namespaced<T: Resource>() -> bool
where
    T::Scope: 'static,
{
    TypeId::of::<T::Scope>() == TypeId::of::<NamespaceResourceScope>()
}

fn replicas_scale() -> Option<ScalePaths> {
    Some(ScalePaths {
        spec_replicas: "/spec/replicas".into(),
        status_replicas: "/status/replicas".into(),
        label_selector: Some("/spec/selector".into()),
    })
}

impl ResourceType {
    fn builtin<T: ListableResource>(
        kind: Kind,
        short_names: &[&str],
        categories: &[&str],
        status: bool,
    ) -> Self
    where
        T::Scope: 'static,
    {
        Self {
            group: T::GROUP.into(),
            version: T::VERSION.into(),
            kind: T::KIND.into(),
            list_kind: T::LIST_KIND.into(),
            plural: T::URL_PATH_SEGMENT.into(),
            singular: T::KIND.to_lowercase(),
            namespaced: is_namespaced::<T>(),
            short_names: short_names.iter().map(|s| (*s).to_owned()).collect(),
            categories: categories.iter().map(|s| (*s).to_owned()).collect(),
            builtin: Some(kind),
            custom: None,
            status,
            scale: None,
            create_only: false,
        }
    }

    fn review<T: Resource>(kind: Kind) -> Self {
        Self {
            group: T::GROUP.into(),
            version: T::VERSION.into(),
            kind: T::KIND.into(),
            list_kind: String::new(),
            plural: T::URL_PATH_SEGMENT.into(),
            singular: T::KIND.to_lowercase(),
            namespaced: false,
            short_names: Vec::new(),
            categories: Vec::new(),
            builtin: Some(kind),
            custom: None,
            status: false,
            scale: None,
            create_only: true,
        }
    }

    fn with_scale(mut self) -> Self {
        self.scale = replicas_scale();
        self
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The plural qualified with the group as messages name it (`deployments.apps`).
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The store prefix every object of the type lives under.
    pub fn key_prefix(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        format!("/registry/{group}/{}/", self.plural)
    }

    /// The store prefix of the objects in one namespace (or of all, for `None`).
    pub fn namespace_prefix(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{ns}/", self.key_prefix()),
            _ => self.key_prefix(),
        }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{ns}/{name}", self.key_prefix()),
            _ => format!("{}{name}", self.key_prefix()),
        }
    }

    /// The verbs of the main resource, in the order discovery lists them.
    pub fn verbs(&self) -> Vec<&'static str> {
        if self.create_only {
            return vec!["create"];
        }
        let mut verbs = vec!["create", "delete"];
        if self.builtin != Some(Kind::Namespace) {
            verbs.push("deletecollection");
        }
        verbs.extend(["get", "list", "patch", "update", "watch"]);
        verbs
    }

    /// The subresources with their kinds' `group/version`, kind and verbs.
    pub fn subresources(&self) -> Vec<Subresource> {
        let mut out = Vec::new();
        let own = |name: &'static str, verbs: &'static [&'static str]| Subresource {
            name,
            group: self.group.clone(),
            version: self.version.clone(),
            kind: self.kind.clone(),
            verbs,
        };
        if self.status {
            out.push(own("status", &["get", "patch", "update"]));
        }
        if self.scale.is_some() {
            out.push(Subresource {
                name: "scale",
                group: "autoscaling".into(),
                version: "v1".into(),
                kind: "Scale".into(),
                verbs: &["get", "patch", "update"],
            });
        }
        match self.builtin {
            Some(Kind::Pod) => out.push(Subresource {
                name: "binding",
                group: String::new(),
                version: "v1".into(),
                kind: "Binding".into(),
                verbs: &["create"],
            }),
            Some(Kind::Namespace) => out.push(own("finalize", &["update"])),
            Some(Kind::ServiceAccount) => out.push(Subresource {
                name: "token",
                group: "authentication.k8s.io".into(),
                version: "v1".into(),
                kind: "TokenRequest".into(),
                verbs: &["create"],
            }),
            _ => {}
        }
        out
    }
}

/// A subresource as discovery shows it.
#[derive(Debug, Clone)]
pub struct Subresource {
    /// `status`, `scale`, …
    pub name: &'static str,
    /// Its kind's group.
    pub group: String,
    /// Its kind's version.
    pub version: String,
    /// Its kind.
    pub kind: String,
    /// Verbs.
    pub verbs: &'static [&'static str],
}

/// Every built-in resource, in the order discovery lists them.
pub fn builtins() -> Vec<ResourceType> {
    use k8s_openapi::api::{
        apps::v1 as apps, authorization::v1 as authz, batch::v1 as batch,
        coordination::v1 as coordination, core::v1 as core, discovery::v1 as discovery,
        networking::v1 as networking, rbac::v1 as rbac,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
    let mut endpoints =
        ResourceType::builtin::<core::Endpoints>(Kind::Endpoints, &["ep"], &[], false);
    endpoints.singular = "endpoints".into();
    vec![
        ResourceType::builtin::<core::Namespace>(Kind::Namespace, &["ns"], &[], true),
        ResourceType::builtin::<core::Node>(Kind::Node, &["no"], &[], true),
        ResourceType::builtin::<core::Pod>(Kind::Pod, &["po"], &["all"], true),
        ResourceType::builtin::<core::Service>(Kind::Service, &["svc"], &["all"], true),
        endpoints,
        ResourceType::builtin::<core::ConfigMap>(Kind::ConfigMap, &["cm"], &[], false),
        ResourceType::builtin::<core::Secret>(Kind::Secret, &[], &[], false),
        ResourceType::builtin::<core::ServiceAccount>(Kind::ServiceAccount, &["sa"], &[], false),
        ResourceType::builtin::<core::Event>(Kind::Event, &["ev"], &[], false),
        ResourceType::builtin::<apps::Deployment>(Kind::Deployment, &["deploy"], &["all"], true)
            .with_scale(),
        ResourceType::builtin::<apps::ReplicaSet>(Kind::ReplicaSet, &["rs"], &["all"], true)
            .with_scale(),
        ResourceType::builtin::<apps::DaemonSet>(Kind::DaemonSet, &["ds"], &["all"], true),
        ResourceType::builtin::<apps::StatefulSet>(Kind::StatefulSet, &["sts"], &["all"], true)
            .with_scale(),
        ResourceType::builtin::<apps::ControllerRevision>(
            Kind::ControllerRevision,
            &[],
            &[],
            false,
        ),
        ResourceType::builtin::<batch::Job>(Kind::Job, &[], &["all"], true),
        ResourceType::builtin::<batch::CronJob>(Kind::CronJob, &["cj"], &["all"], true),
        ResourceType::builtin::<networking::Ingress>(Kind::Ingress, &["ing"], &[], true),
        ResourceType::builtin::<networking::NetworkPolicy>(
            Kind::NetworkPolicy,
            &["netpol"],
            &[],
            false,
        ),
        ResourceType::builtin::<coordination::Lease>(Kind::Lease, &[], &[], false),
        ResourceType::builtin::<discovery::EndpointSlice>(Kind::EndpointSlice, &[], &[], false),
        ResourceType::builtin::<rbac::Role>(Kind::Role, &[], &[], false),
        ResourceType::builtin::<rbac::ClusterRole>(Kind::ClusterRole, &[], &[], false),
        ResourceType::builtin::<rbac::RoleBinding>(Kind::RoleBinding, &[], &[], false),
        ResourceType::builtin::<rbac::ClusterRoleBinding>(
            Kind::ClusterRoleBinding,
            &[],
            &[],
            false,
        ),
        ResourceType::builtin::<apiextensions::CustomResourceDefinition>(
            Kind::CustomResourceDefinition,
            &["crd", "crds"],
            &["api-extensions"],
            true,
        ),
        ResourceType::review::<authz::SelfSubjectAccessReview>(Kind::SelfSubjectAccessReview),
        ResourceType::review::<authz::SelfSubjectRulesReview>(Kind::SelfSubjectRulesReview),
    ]
}

/// The table of served resources: the built-ins, and the custom resources of the
/// established CRDs (replaced whenever CRDs change).
pub struct Registry {
    builtins: Vec<Arc<ResourceType>>,
    custom: RwLock<Vec<Arc<ResourceType>>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// The built-ins and no custom resources.
    pub fn new() -> Self {
        Self {
            builtins: builtins().into_iter().map(Arc::new).collect(),
            custom: RwLock::new(Vec::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Changes each time the custom resources change (for caches of derived
    /// documents).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every resource type, built-ins first.
    pub fn all(&self) -> Vec<Arc<ResourceType>> {
        let mut all = self.builtins.clone();
        if let Ok(custom) = self.custom.read() {
            all.extend(custom.iter().cloned());
        }
        all
    }

    /// The resource `plural` of `group`/`version`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.all()
            .into_iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// The built-in resource of `kind`.
    pub fn builtin(&self, kind: Kind) -> Arc<ResourceType> {
        self.builtins
            .iter()
            .find(|r| r.builtin == Some(kind))
            .cloned()
            .unwrap_or_else(|| {
                // Invariant: `builtins()` lists every `Kind`.
                Arc::new(builtins().remove(0))
            })
    }

    /// The resource serving `kind` in `api_version`, if any.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.all()
            .into_iter()
            .find(|r| r.api_version() == api_version && r.kind == kind)
    }

    /// Replaces the custom resources.
    pub fn set_custom(&self, types: Vec<ResourceType>) {
        if let Ok(mut custom) = self.custom.write() {
            *custom = types.into_iter().map(Arc::new).collect();
        }
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// The groups, each with its versions (preferred first), in discovery order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut order: Vec<String> = Vec::new();
        let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for resource in self.all() {
            if !order.contains(&resource.group) {
                order.push(resource.group.clone());
            }
            let list = versions.entry(resource.group.clone()).or_default();
            if !list.contains(&resource.version) {
                list.push(resource.version.clone());
            }
        }
        order
            .into_iter()
            .map(|group| {
                let list = versions.remove(&group).unwrap_or_default();
                (group, list)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_carry_kubernetes_names_and_scopes() {
        let registry = Registry::new();
        let deployments = registry.lookup("apps", "v1", "deployments").unwrap();
        assert_eq!(deployments.kind, "Deployment");
        assert_eq!(deployments.list_kind, "DeploymentList");
        assert!(deployments.namespaced);
        assert_eq!(
            deployments.key(Some("ns1"), "web").as_str(),
            "/registry/apps/deployments/ns1/web"
        );
        let nodes = registry.lookup("", "v1", "nodes").unwrap();
        assert!(!nodes.namespaced);
        assert_eq!(nodes.key(Some("x"), "n1"), "/registry/core/nodes/n1");
        assert_eq!(registry.builtin(Kind::Endpoints).singular, "endpoints");
        let subresources: Vec<&str> = deployments.subresources().iter().map(|s| s.name).collect();
        assert_eq!(subresources, ["status", "scale"]);
        assert!(
            !registry
                .builtin(Kind::Namespace)
                .verbs()
                .contains(&"deletecollection")
        );
        let groups = registry.groups();
        assert_eq!(groups[0], (String::new(), vec!["v1".to_owned()]));
        assert!(groups.iter().any(|(g, _)| g == "apiextensions.k8s.io"));
    }
}
