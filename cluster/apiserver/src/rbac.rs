//! Authorization by RBAC, as Kubernetes does it: ClusterRoleBindings grant their
//! ClusterRole everywhere, RoleBindings grant their Role or ClusterRole in their
//! namespace, and a request is allowed when any granted rule matches its verb, API
//! group, resource (and subresource), name or non-resource path. `system:masters` is
//! allowed everything. The default roles (`cluster-admin`, `admin`, `edit`, `view` and
//! the `system:` discovery roles) and their bindings are written when missing.

use std::sync::RwLock;

use serde_json::{Value, json};

use crate::auth::User;

/// What a request would do, for authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    /// A resource request.
    Resource {
        /// The verb.
        verb: String,
        /// API group.
        group: String,
        /// Resource (plural).
        resource: String,
        /// Subresource.
        subresource: Option<String>,
        /// Namespace (`None`: cluster scope or all namespaces).
        namespace: Option<String>,
        /// Name.
        name: Option<String>,
    },
    /// A non-resource request (`/version`, `/openapi/v3`).
    Path {
        /// The verb (`get`, `post`, …).
        verb: String,
        /// The path.
        path: String,
    },
}

/// The RBAC objects the authorizer evaluates.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Roles.
    pub roles: Vec<Value>,
    /// ClusterRoles.
    pub cluster_roles: Vec<Value>,
    /// RoleBindings.
    pub role_bindings: Vec<Value>,
    /// ClusterRoleBindings.
    pub cluster_role_bindings: Vec<Value>,
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn covers(list: &[&str], wanted: &str) -> bool {
    list.iter().any(|item| *item == "*" || *item == wanted)
}

/// Whether one PolicyRule allows `attributes`.
pub fn rule_allows(rule: &Value, attributes: &Attributes) -> bool {
    match attributes {
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            name,
            ..
        } => {
            let verbs = strings(&rule["verbs"]);
            let groups = strings(&rule["apiGroups"]);
            let resources = strings(&rule["resources"]);
            let names = strings(&rule["resourceNames"]);
            if !covers(&verbs, verb) || !covers(&groups, group) {
                return false;
            }
            let full = match subresource {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.clone(),
            };
            let resource_ok = resources.iter().any(|r| {
                *r == "*"
                    || *r == full
                    || (subresource.is_some()
                        && *r == format!("*/{}", subresource.as_deref().unwrap_or("")))
            });
            let name_ok = names.is_empty() || name.as_deref().is_some_and(|n| names.contains(&n));
            resource_ok && name_ok
        }
        Attributes::Path { verb, path } => {
            let verbs = strings(&rule["verbs"]);
            let urls = strings(&rule["nonResourceURLs"]);
            covers(&verbs, verb)
                && urls.iter().any(|u| {
                    *u == "*"
                        || *u == path
                        || u.strip_suffix('*')
                            .is_some_and(|prefix| path.starts_with(prefix))
                })
        }
    }
}

fn subject_matches(subject: &Value, user: &User, binding_namespace: Option<&str>) -> bool {
    let name = subject["name"].as_str().unwrap_or("");
    match subject["kind"].as_str() {
        Some("User") => name == user.name,
        Some("Group") => user.in_group(name),
        Some("ServiceAccount") => {
            let namespace = subject["namespace"]
                .as_str()
                .or(binding_namespace)
                .unwrap_or("");
            user.name == format!("system:serviceaccount:{namespace}:{name}")
        }
        _ => false,
    }
}

impl Policy {
    fn role_rules(&self, role_ref: &Value, namespace: Option<&str>) -> Vec<Value> {
        let name = role_ref["name"].as_str().unwrap_or("");
        let source = match role_ref["kind"].as_str() {
            Some("ClusterRole") => self
                .cluster_roles
                .iter()
                .find(|r| r.pointer("/metadata/name").and_then(Value::as_str) == Some(name)),
            Some("Role") => self.roles.iter().find(|r| {
                r.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
                    && r.pointer("/metadata/namespace").and_then(Value::as_str) == namespace
            }),
            _ => None,
        };
        let Some(role) = source else {
            return Vec::new();
        };
        let mut rules: Vec<Value> = role["rules"].as_array().cloned().unwrap_or_default();
        // Aggregated ClusterRoles take the rules of the roles their selectors match.
        if let Some(selectors) = role
            .pointer("/aggregationRule/clusterRoleSelectors")
            .and_then(Value::as_array)
        {
            for selector in selectors {
                let Some(parsed) = crate::selectors::LabelSelector::from_object(selector) else {
                    continue;
                };
                for other in &self.cluster_roles {
                    if parsed.matches_object(other) && other != role {
                        rules.extend(other["rules"].as_array().cloned().unwrap_or_default());
                    }
                }
            }
        }
        rules
    }

    /// Every rule granted to `user` in `namespace` (cluster-wide rules included).
    pub fn rules_for(&self, user: &User, namespace: Option<&str>) -> Vec<Value> {
        let mut rules = Vec::new();
        for binding in &self.cluster_role_bindings {
            if strings_subjects(binding)
                .iter()
                .any(|s| subject_matches(s, user, None))
            {
                rules.extend(self.role_rules(&binding["roleRef"], None));
            }
        }
        if let Some(namespace) = namespace {
            for binding in &self.role_bindings {
                if binding
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    != Some(namespace)
                {
                    continue;
                }
                if strings_subjects(binding)
                    .iter()
                    .any(|s| subject_matches(s, user, Some(namespace)))
                {
                    rules.extend(self.role_rules(&binding["roleRef"], Some(namespace)));
                }
            }
        }
        rules
    }

    /// Whether `user` may do `attributes`.
    pub fn allows(&self, user: &User, attributes: &Attributes) -> bool {
        if user.in_group("system:masters") {
            return true;
        }
        let namespace = match attributes {
            Attributes::Resource { namespace, .. } => namespace.as_deref(),
            Attributes::Path { .. } => None,
        };
        self.rules_for(user, namespace)
            .iter()
            .any(|rule| rule_allows(rule, attributes))
    }
}

fn strings_subjects(binding: &Value) -> Vec<&Value> {
    binding["subjects"]
        .as_array()
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

/// The authorizer: the current policy, replaced whenever RBAC objects change.
#[derive(Default)]
pub struct Authorizer {
    policy: RwLock<Policy>,
}

impl Authorizer {
    /// Replaces the policy.
    pub fn set(&self, policy: Policy) {
        if let Ok(mut slot) = self.policy.write() {
            *slot = policy;
        }
    }

    /// Whether `user` may do `attributes`.
    pub fn allows(&self, user: &User, attributes: &Attributes) -> bool {
        self.policy
            .read()
            .map(|p| p.allows(user, attributes))
            .unwrap_or(false)
    }

    /// The rules granted to `user` in `namespace` (SelfSubjectRulesReview).
    pub fn rules_for(&self, user: &User, namespace: Option<&str>) -> Vec<Value> {
        self.policy
            .read()
            .map(|p| p.rules_for(user, namespace))
            .unwrap_or_default()
    }
}

/// The `403` message Kubernetes gives for `attributes` denied to `user`.
pub fn forbidden_message(user: &User, attributes: &Attributes) -> String {
    match attributes {
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            namespace,
            name,
        } => {
            let full = match subresource {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.clone(),
            };
            let qualified = if group.is_empty() {
                full.clone()
            } else {
                format!("{full}.{group}")
            };
            let target = match name {
                Some(n) => format!("{qualified} {n:?} is forbidden"),
                None => format!("{qualified} is forbidden"),
            };
            let scope = match namespace {
                Some(ns) => format!("in the namespace {ns:?}"),
                None => "at the cluster scope".into(),
            };
            format!(
                "{target}: User {:?} cannot {verb} resource {full:?} in API group {group:?} {scope}",
                user.name
            )
        }
        Attributes::Path { verb, path } => {
            format!(
                "forbidden: User {:?} cannot {verb} path {path:?}",
                user.name
            )
        }
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn view_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "pods/log",
                "pods/status",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "replicationcontrollers/status",
                "serviceaccounts",
                "services",
                "services/status",
            ],
            READ,
        ),
        rule(
            &[""],
            &[
                "bindings",
                "events",
                "limitranges",
                "namespaces/status",
                "pods/log",
                "pods/status",
                "resourcequotas",
                "resourcequotas/status",
            ],
            READ,
        ),
        rule(&[""], &["namespaces"], READ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
            READ,
        ),
        rule(
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
            READ,
        ),
        rule(
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
            READ,
        ),
        rule(
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
            READ,
        ),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
            READ,
        ),
        rule(&["coordination.k8s.io"], &["leases"], READ),
    ]
}

fn edit_rules() -> Vec<Value> {
    let mut rules = view_rules();
    rules.extend([
        rule(
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "secrets",
                "services/proxy",
            ],
            READ,
        ),
        rule(&[""], &["serviceaccounts"], &["impersonate"]),
        rule(
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
            ],
            &["create", "delete", "deletecollection", "patch", "update"],
        ),
        rule(&[""], &["pods/eviction"], &["create"]),
        rule(
            &[""],
            &[
                "configmaps",
                "events",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
            WRITE,
        ),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
            WRITE,
        ),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
        rule(&["batch"], &["cronjobs", "jobs"], WRITE),
        rule(&["policy"], &["poddisruptionbudgets"], WRITE),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
            WRITE,
        ),
        rule(&["discovery.k8s.io"], &["endpointslices"], WRITE),
        rule(&["coordination.k8s.io"], &["leases"], WRITE),
    ]);
    rules
}

fn admin_rules() -> Vec<Value> {
    let mut rules = edit_rules();
    rules.extend([
        rule(
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
            &["create"],
        ),
        rule(
            &["rbac.authorization.k8s.io"],
            &["rolebindings", "roles"],
            &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
        ),
    ]);
    rules
}

fn cluster_role(name: &str, rules: Vec<Value>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                     "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "rules": rules,
    })
}

fn cluster_binding(name: &str, role: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> = groups
        .iter()
        .map(|g| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g}))
        .collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                     "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

/// The user the scheduler authenticates as (its certificate's Common Name).
pub const SCHEDULER_USER: &str = "system:kube-scheduler";

/// What the scheduler may do, as Kubernetes' `system:kube-scheduler` role allows: follow
/// nodes and pods, bind pods, set their scheduling condition, record events and hold its
/// leader-election Lease.
fn scheduler_rules() -> Vec<Value> {
    vec![
        rule(
            &["", "events.k8s.io"],
            &["events"],
            &["create", "patch", "update"],
        ),
        rule(&["coordination.k8s.io"], &["leases"], &["create"]),
        rule_named(
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-scheduler"],
            &["get", "update"],
        ),
        rule(&[""], &["nodes"], READ),
        rule(&[""], &["namespaces"], READ),
        rule(&[""], &["pods"], &["delete", "get", "list", "watch"]),
        rule(&[""], &["bindings", "pods/binding"], &["create"]),
        rule(&[""], &["pods/status"], &["patch", "update"]),
        rule(
            &["", "apps"],
            &[
                "replicationcontrollers",
                "replicasets",
                "statefulsets",
                "services",
            ],
            READ,
        ),
        rule(
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
            READ,
        ),
    ]
}

/// The user the controllers authenticate as (their certificate's Common Name).
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";

/// What the controllers may do: follow and taint nodes and set their conditions,
/// manage pods (create, delete, mark not ready), create ReplicaSets, Jobs and
/// ControllerRevisions for the workloads they run and write the workloads' status,
/// create each namespace's `default` ServiceAccount and `kube-root-ca.crt`
/// ConfigMap, read node Leases, hold their own
/// leader-election Lease, record events; and, as kube-controller-manager's garbage
/// collector, read, patch and delete any object (owner references and finalizers).
fn controller_manager_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &["nodes"],
            &["get", "list", "watch", "patch", "update"],
        ),
        rule(&[""], &["nodes/status"], &["patch", "update"]),
        rule(
            &[""],
            &["pods"],
            &["create", "delete", "get", "list", "watch", "patch"],
        ),
        rule(&[""], &["pods/status"], &["patch", "update"]),
        rule(&["*"], &["*"], &["get", "list", "watch", "patch", "delete"]),
        rule(
            &["apps"],
            &["replicasets", "controllerrevisions"],
            &["create"],
        ),
        rule(&["batch"], &["jobs"], &["create"]),
        rule(&[""], &["endpoints"], &["create", "update"]),
        rule(&[""], &["serviceaccounts"], &["create"]),
        rule(&[""], &["configmaps"], &["create", "update"]),
        rule(
            &["discovery.k8s.io"],
            &["endpointslices"],
            &["create", "update"],
        ),
        rule(
            &["apps"],
            &[
                "replicasets/status",
                "deployments/status",
                "daemonsets/status",
                "statefulsets/status",
            ],
            &["patch", "update"],
        ),
        rule(
            &["batch"],
            &["jobs/status", "cronjobs/status"],
            &["patch", "update"],
        ),
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["create", "get", "list", "watch"],
        ),
        rule_named(
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-controller-manager"],
            &["update"],
        ),
        rule(
            &["", "events.k8s.io"],
            &["events"],
            &["create", "patch", "update"],
        ),
    ]
}

/// The ClusterRole of node agents.
pub const NODE_ROLE: &str = "system:node";

/// What node agents may do, as Kubernetes' `system:node` role allows: register and
/// update Nodes, follow and report the pods (and read what they mount), delete a pod
/// once it stopped, hold node Leases, issue pods' service-account tokens, record
/// events. Kubernetes narrows this per node with its Node authorizer; Cairn does not
/// yet, so a node's credentials reach every node's pods and secrets.
fn node_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &["nodes"],
            &["create", "get", "list", "watch", "patch", "update"],
        ),
        rule(&[""], &["nodes/status"], &["patch", "update"]),
        rule(&[""], &["pods"], &["get", "list", "watch", "delete"]),
        rule(&[""], &["pods/status"], &["patch", "update"]),
        rule(
            &[""],
            &["configmaps", "secrets", "services", "endpoints"],
            READ,
        ),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(
            &["", "events.k8s.io"],
            &["events"],
            &["create", "patch", "update"],
        ),
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["create", "get", "update", "delete"],
        ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
    ]
}

fn rule_named(groups: &[&str], resources: &[&str], names: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "resourceNames": names, "verbs": verbs})
}

fn user_binding(name: &str, role: &str, user: &str) -> Value {
    let mut binding = cluster_binding(name, role, &[]);
    binding["subjects"] =
        json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]);
    binding
}

/// The default ClusterRoles.
pub fn default_cluster_roles() -> Vec<Value> {
    vec![
        cluster_role(
            "cluster-admin",
            vec![
                json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}),
                json!({"nonResourceURLs": ["*"], "verbs": ["*"]}),
            ],
        ),
        cluster_role("admin", admin_rules()),
        cluster_role("edit", edit_rules()),
        cluster_role("view", view_rules()),
        cluster_role(
            "system:basic-user",
            vec![rule(
                &["authorization.k8s.io"],
                &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                &["create"],
            )],
        ),
        cluster_role(
            "system:discovery",
            vec![
                json!({"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"], "verbs": ["get"]}),
            ],
        ),
        cluster_role(
            "system:public-info-viewer",
            vec![
                json!({"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}),
            ],
        ),
        cluster_role(SCHEDULER_USER, scheduler_rules()),
        cluster_role(NODE_ROLE, node_rules()),
        cluster_role(CONTROLLER_MANAGER_USER, controller_manager_rules()),
    ]
}

/// The default ClusterRoleBindings.
pub fn default_cluster_role_bindings() -> Vec<Value> {
    vec![
        cluster_binding("cluster-admin", "cluster-admin", &["system:masters"]),
        cluster_binding(
            "system:basic-user",
            "system:basic-user",
            &["system:authenticated"],
        ),
        cluster_binding(
            "system:discovery",
            "system:discovery",
            &["system:authenticated"],
        ),
        cluster_binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &["system:authenticated", "system:unauthenticated"],
        ),
        user_binding(SCHEDULER_USER, SCHEDULER_USER, SCHEDULER_USER),
        cluster_binding(NODE_ROLE, NODE_ROLE, &[cairn_api::kubeconfig::NODES_GROUP]),
        user_binding(
            CONTROLLER_MANAGER_USER,
            CONTROLLER_MANAGER_USER,
            CONTROLLER_MANAGER_USER,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(resource: &str, namespace: Option<&str>) -> Attributes {
        Attributes::Resource {
            verb: "get".into(),
            group: String::new(),
            resource: resource.into(),
            subresource: None,
            namespace: namespace.map(str::to_owned),
            name: Some("x".into()),
        }
    }

    fn policy() -> Policy {
        Policy {
            cluster_roles: default_cluster_roles(),
            cluster_role_bindings: default_cluster_role_bindings(),
            role_bindings: vec![json!({"metadata": {"name": "b", "namespace": "team"},
                "roleRef": {"kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "User", "name": "reader"}, {"kind": "ServiceAccount", "name": "bot"}]})],
            ..Policy::default()
        }
    }

    #[test]
    fn bindings_grant_roles_in_their_namespace_only() {
        let policy = policy();
        let reader = User::from_certificate("reader", &[]);
        assert!(policy.allows(&reader, &get("pods", Some("team"))));
        assert!(!policy.allows(&reader, &get("pods", Some("other"))));
        assert!(
            !policy.allows(&reader, &get("secrets", Some("team"))),
            "view cannot read secrets"
        );
        let bot = crate::auth::TokenClaims {
            namespace: "team".into(),
            name: "bot".into(),
            uid: "u".into(),
            expires: 0,
            bound: None,
        }
        .user();
        assert!(policy.allows(&bot, &get("configmaps", Some("team"))));
        let admin = User::from_certificate("root", &["system:masters".into()]);
        assert!(policy.allows(&admin, &get("secrets", None)));
        assert!(policy.allows(
            &reader,
            &Attributes::Path {
                verb: "get".into(),
                path: "/apis/apps/v1".into()
            }
        ));
        assert!(!policy.allows(
            &User::anonymous(),
            &Attributes::Path {
                verb: "get".into(),
                path: "/apis".into()
            }
        ));
        assert!(policy.allows(
            &User::anonymous(),
            &Attributes::Path {
                verb: "get".into(),
                path: "/version".into()
            }
        ));
        assert_eq!(
            forbidden_message(&reader, &get("secrets", Some("team"))),
            "secrets \"x\" is forbidden: User \"reader\" cannot get resource \"secrets\" in API group \"\" in the namespace \"team\""
        );
    }

    fn request(
        verb: &str,
        group: &str,
        resource: &str,
        sub: Option<&str>,
        name: &str,
    ) -> Attributes {
        Attributes::Resource {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.map(str::to_owned),
            namespace: Some("kube-system".into()),
            name: Some(name.into()),
        }
    }

    #[test]
    fn the_scheduler_binds_pods_and_holds_its_own_lease_only() {
        let policy = policy();
        let scheduler = User::from_certificate(SCHEDULER_USER, &[]);
        let allowed = [
            request("create", "", "pods", Some("binding"), "web-1"),
            request("patch", "", "pods", Some("status"), "web-1"),
            request("watch", "", "pods", None, ""),
            request("list", "", "nodes", None, ""),
            request("create", "", "events", None, ""),
            request(
                "update",
                "coordination.k8s.io",
                "leases",
                None,
                "kube-scheduler",
            ),
        ];
        for attributes in &allowed {
            assert!(policy.allows(&scheduler, attributes), "{attributes:?}");
        }
        let refused = [
            request("create", "", "pods", None, "web-1"),
            request("get", "", "secrets", None, "token"),
            request(
                "update",
                "coordination.k8s.io",
                "leases",
                None,
                "kube-controller-manager",
            ),
            request("patch", "", "nodes", None, "n1"),
        ];
        for attributes in &refused {
            assert!(!policy.allows(&scheduler, attributes), "{attributes:?}");
        }
    }

    #[test]
    fn node_agents_register_report_and_finish_pods_but_create_none() {
        let policy = policy();
        let agent = User::from_certificate(
            "system:node:n1",
            &[cairn_api::kubeconfig::NODES_GROUP.to_owned()],
        );
        let allowed = [
            request("create", "", "nodes", None, "n1"),
            request("patch", "", "nodes", Some("status"), "n1"),
            request("watch", "", "pods", None, ""),
            request("patch", "", "pods", Some("status"), "web-1"),
            request("delete", "", "pods", None, "web-1"),
            request("get", "", "secrets", None, "creds"),
            request("create", "", "serviceaccounts", Some("token"), "default"),
            request("update", "coordination.k8s.io", "leases", None, "n1"),
        ];
        for attributes in &allowed {
            assert!(policy.allows(&agent, attributes), "{attributes:?}");
        }
        let refused = [
            request("create", "", "pods", None, "web-1"),
            request("create", "", "pods", Some("binding"), "web-1"),
            request("delete", "", "nodes", None, "n2"),
            request("create", "", "secrets", None, "x"),
        ];
        for attributes in &refused {
            assert!(!policy.allows(&agent, attributes), "{attributes:?}");
        }
    }

    #[test]
    fn the_controllers_manage_workloads_and_collect_garbage_but_bind_nothing() {
        let policy = policy();
        let controllers = User::from_certificate(CONTROLLER_MANAGER_USER, &[]);
        let allowed = [
            request("create", "", "pods", None, "web-1"),
            request("delete", "", "pods", None, "web-1"),
            request("patch", "", "pods", Some("status"), "web-1"),
            request("patch", "", "nodes", None, "n1"),
            request("patch", "", "nodes", Some("status"), "n1"),
            request("watch", "apps", "replicasets", None, ""),
            request("update", "apps", "replicasets", Some("status"), "web"),
            request("list", "coordination.k8s.io", "leases", None, ""),
            request(
                "update",
                "coordination.k8s.io",
                "leases",
                None,
                "kube-controller-manager",
            ),
            request("create", "", "events", None, ""),
            request("create", "apps", "replicasets", None, "web-5d8"),
            request("patch", "apps", "deployments", Some("status"), "web"),
            request("delete", "", "secrets", None, "owned"),
            request("update", "", "endpoints", None, "web"),
            request(
                "create",
                "discovery.k8s.io",
                "endpointslices",
                None,
                "web-x",
            ),
        ];
        for attributes in &allowed {
            assert!(policy.allows(&controllers, attributes), "{attributes:?}");
        }
        let refused = [
            request("create", "", "secrets", None, "token"),
            request("create", "apps", "deployments", None, "web"),
            request(
                "update",
                "coordination.k8s.io",
                "leases",
                None,
                "kube-scheduler",
            ),
            request("create", "", "pods", Some("binding"), "web-1"),
        ];
        for attributes in &refused {
            assert!(!policy.allows(&controllers, attributes), "{attributes:?}");
        }
    }
}
