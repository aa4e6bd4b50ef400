//! `meta.k8s.io/v1` Tables: what `kubectl get` prints. The columns and cells are the
//! ones kube-apiserver's printers produce for each kind (pkg/printers/internalversion),
//! the default `NAME / CREATED AT` table for kinds without a printer, and the
//! `additionalPrinterColumns` of custom resources. Ages are computed here, as the
//! server does, in `HumanDuration` form.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::meta::parse_time;
use crate::registry::{Kind, ResourceType};
use crate::selectors::LabelSelector;

const NAME_DOC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const CREATED_DOC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// What a row's `object` holds (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// Nothing.
    None,
    /// `PartialObjectMetadata` (the default).
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// The `includeObject` query parameter.
    pub fn parse(value: Option<&str>) -> Result<Self, crate::error::ApiError> {
        match value {
            None | Some("") | Some("Metadata") => Ok(IncludeObject::Metadata),
            Some("None") => Ok(IncludeObject::None),
            Some("Object") => Ok(IncludeObject::Object),
            Some(other) => Err(crate::error::ApiError::BadRequest(format!(
                "Unable to convert to Table as requested: includeObject={other} is not supported"
            ))),
        }
    }
}

fn column(name: &str, kind: &str, priority: u8, description: &str) -> Value {
    json!({"name": name, "type": kind, "format": "", "description": description, "priority": priority})
}

fn name_column() -> Value {
    json!({"name": "Name", "type": "string", "format": "name", "description": NAME_DOC, "priority": 0})
}

fn age_column() -> Value {
    column("Age", "string", 0, CREATED_DOC)
}

/// `HumanDuration` of `seconds`, as kubectl shows ages.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 192 {
        let h = hours % 24;
        let d = hours / 24;
        return if h == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{h}h")
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    let years = hours / 24 / 365;
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{days}d")
        };
    }
    format!("{years}y")
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The age of a timestamp at `pointer`, or `<unknown>`.
fn since(object: &Value, pointer: &str) -> String {
    match object
        .pointer(pointer)
        .and_then(Value::as_str)
        .and_then(parse_time)
    {
        Some(t) => human_duration(now() - t),
        None => "<unknown>".into(),
    }
}

fn age(object: &Value) -> Value {
    Value::String(since(object, "/metadata/creationTimestamp"))
}

fn text(object: &Value, pointer: &str) -> String {
    match object.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

fn int(object: &Value, pointer: &str) -> i64 {
    object.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

fn array<'a>(object: &'a Value, pointer: &str) -> &'a [Value] {
    object
        .pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Sorted `k=v` pairs, or `<none>`.
fn format_labels(map: Option<&Value>) -> String {
    let pairs: Vec<String> = map
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    or_none(pairs.join(","))
}

/// A label selector object in query form, sorted by key, or `<none>`.
fn format_selector(selector: Option<&Value>) -> String {
    let Some(selector) = selector else {
        return "<none>".into();
    };
    match LabelSelector::from_object(selector) {
        Some(mut parsed) => {
            parsed.requirements.sort_by_key(|r| format!("{r:?}"));
            let mut parts: Vec<String> = parsed
                .to_query()
                .split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
            parts.sort_by_key(|p| {
                p.trim_start_matches('!')
                    .split(['=', '!', ' '])
                    .next()
                    .unwrap_or("")
                    .to_owned()
            });
            or_none(parts.join(","))
        }
        None => "<error>".into(),
    }
}

fn containers_cells(spec: Option<&Value>) -> (String, String) {
    let containers = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let names: Vec<&str> = containers
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let images: Vec<&str> = containers
        .iter()
        .filter_map(|c| c["image"].as_str())
        .collect();
    (names.join(","), images.join(","))
}

fn capped(items: Vec<String>, empty: &str) -> String {
    if items.is_empty() {
        return empty.into();
    }
    let shown: Vec<&str> = items.iter().take(3).map(String::as_str).collect();
    let mut out = shown.join(",");
    if items.len() > 3 {
        out.push_str(&format!(" + {} more...", items.len() - 3));
    }
    out
}

/// The columns of `resource`'s table.
pub fn columns(resource: &ResourceType) -> Vec<Value> {
    let c = column;
    let mut out = vec![name_column()];
    match resource.builtin {
        Some(Kind::Namespace) => {
            out.push(c("Status", "string", 0, "The status of the namespace"));
            out.push(age_column());
        }
        Some(Kind::Node) => {
            out.push(c("Status", "string", 0, "The status of the node"));
            out.push(c("Roles", "string", 0, "The roles of the node"));
            out.push(age_column());
            out.push(c(
                "Version",
                "string",
                0,
                "Kubelet Version reported by the node.",
            ));
            out.push(c("Internal-IP", "string", 1, "List of addresses reachable to the node. Queried from cloud provider, if available."));
            out.push(c("External-IP", "string", 1, "List of addresses reachable to the node. Queried from cloud provider, if available."));
            out.push(c("OS-Image", "string", 1, "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."));
            out.push(c(
                "Kernel-Version",
                "string",
                1,
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            ));
            out.push(c("Container-Runtime", "string", 1, "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."));
        }
        Some(Kind::Pod) => {
            out.push(c(
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ));
            out.push(c(
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ));
            out.push(c("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."));
            out.push(age_column());
            out.push(c("IP", "string", 1, "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."));
            out.push(c(
                "Node",
                "string",
                1,
                "NodeName is a request to schedule this pod onto a specific node.",
            ));
            out.push(c(
                "Nominated Node",
                "string",
                1,
                "nominatedNodeName is set only when this pod preempts other pods on the node.",
            ));
            out.push(c(
                "Readiness Gates",
                "string",
                1,
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ));
        }
        Some(Kind::Service) => {
            out.push(c(
                "Type",
                "string",
                0,
                "type determines how the Service is exposed.",
            ));
            out.push(c(
                "Cluster-IP",
                "string",
                0,
                "clusterIP is the IP address of the service and is usually assigned randomly.",
            ));
            out.push(c("External-IP", "string", 0, "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."));
            out.push(c(
                "Port(s)",
                "string",
                0,
                "The list of ports that are exposed by this service.",
            ));
            out.push(age_column());
            out.push(c(
                "Selector",
                "string",
                1,
                "Route service traffic to pods with label keys and values matching this selector.",
            ));
        }
        Some(Kind::Endpoints) => {
            out.push(c("Endpoints", "string", 0, "Endpoints of the service"));
            out.push(age_column());
        }
        Some(Kind::EndpointSlice) => {
            out.push(c(
                "AddressType",
                "string",
                0,
                "addressType specifies the type of address carried by this EndpointSlice.",
            ));
            out.push(c(
                "Ports",
                "string",
                0,
                "ports specifies the list of network ports exposed by each endpoint in this slice.",
            ));
            out.push(c(
                "Endpoints",
                "string",
                0,
                "endpoints is a list of unique endpoints in this slice.",
            ));
            out.push(age_column());
        }
        Some(Kind::ConfigMap) => {
            out.push(c(
                "Data",
                "string",
                0,
                "Data contains the configuration data.",
            ));
            out.push(age_column());
        }
        Some(Kind::Secret) => {
            out.push(c(
                "Type",
                "string",
                0,
                "Used to facilitate programmatic handling of secret data.",
            ));
            out.push(c("Data", "string", 0, "Data contains the secret data."));
            out.push(age_column());
        }
        Some(Kind::ServiceAccount) => {
            out.push(c("Secrets", "string", 0, "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."));
            out.push(age_column());
        }
        Some(Kind::Event) => {
            out = vec![
                c(
                    "Last Seen",
                    "string",
                    0,
                    "The time at which the most recent occurrence of this event was recorded.",
                ),
                c(
                    "Type",
                    "string",
                    0,
                    "Type of this event (Normal, Warning), new types could be added in the future.",
                ),
                c(
                    "Reason",
                    "string",
                    0,
                    "This should be a short, machine understandable string that gives the reason for this event being generated.",
                ),
                c(
                    "Object",
                    "string",
                    0,
                    "The object that this event is about.",
                ),
                c(
                    "Subobject",
                    "string",
                    1,
                    "The subobject that this event is about.",
                ),
                c(
                    "Source",
                    "string",
                    1,
                    "The component reporting this event. Should be a short machine understandable string.",
                ),
                c(
                    "Message",
                    "string",
                    0,
                    "A human-readable description of the status of this operation.",
                ),
                c(
                    "First Seen",
                    "string",
                    1,
                    "The time at which the event was first recorded.",
                ),
                c(
                    "Count",
                    "string",
                    1,
                    "The number of times this event has occurred.",
                ),
                json!({"name": "Name", "type": "string", "format": "name", "description": NAME_DOC, "priority": 1}),
            ];
        }
        Some(Kind::Deployment) => {
            out.push(c(
                "Ready",
                "string",
                0,
                "Number of the pod with ready state",
            ));
            out.push(c("Up-to-date", "string", 0, "Total number of non-terminated pods targeted by this deployment that have the desired template spec."));
            out.push(c("Available", "string", 0, "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."));
            out.push(age_column());
            out.push(c(
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ));
            out.push(c(
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ));
            out.push(c("Selector", "string", 1, "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment."));
        }
        Some(Kind::ReplicaSet) => {
            out.push(c(
                "Desired",
                "integer",
                0,
                "Replicas is the number of desired replicas.",
            ));
            out.push(c(
                "Current",
                "integer",
                0,
                "Replicas is the most recently observed number of replicas.",
            ));
            out.push(c(
                "Ready",
                "integer",
                0,
                "The number of ready replicas for this replica set.",
            ));
            out.push(age_column());
            out.push(c(
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ));
            out.push(c(
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ));
            out.push(c(
                "Selector",
                "string",
                1,
                "Selector is a label query over pods that should match the replica count.",
            ));
        }
        Some(Kind::DaemonSet) => {
            out.push(c(
                "Desired",
                "integer",
                0,
                "The total number of nodes that should be running the daemon pod.",
            ));
            out.push(c("Current", "integer", 0, "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."));
            out.push(c("Ready", "integer", 0, "numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition."));
            out.push(c(
                "Up-to-date",
                "integer",
                0,
                "The total number of nodes that are running updated daemon pod",
            ));
            out.push(c("Available", "integer", 0, "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)"));
            out.push(c(
                "Node Selector",
                "string",
                0,
                "NodeSelector is a selector which must be true for the pod to fit on a node.",
            ));
            out.push(age_column());
            out.push(c(
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ));
            out.push(c(
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ));
            out.push(c(
                "Selector",
                "string",
                1,
                "A label query over pods that are managed by the daemon set.",
            ));
        }
        Some(Kind::StatefulSet) => {
            out.push(c(
                "Ready",
                "string",
                0,
                "Number of the pod with ready state",
            ));
            out.push(age_column());
            out.push(c(
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ));
            out.push(c(
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ));
        }
        Some(Kind::Job) => {
            out.push(c("Status", "string", 0, "Status of the job."));
            out.push(c(
                "Completions",
                "string",
                0,
                "The desired number of successfully finished pods the job should be run with.",
            ));
            out.push(c(
                "Duration",
                "string",
                0,
                "Time required to complete the job.",
            ));
            out.push(age_column());
            out.push(c(
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ));
            out.push(c(
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ));
            out.push(c(
                "Selector",
                "string",
                1,
                "A label query over pods that should match the pod count.",
            ));
        }
        Some(Kind::CronJob) => {
            out.push(c(
                "Schedule",
                "string",
                0,
                "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
            ));
            out.push(c("Timezone", "string", 0, "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones."));
            out.push(c("Suspend", "boolean", 0, "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions."));
            out.push(c(
                "Active",
                "integer",
                0,
                "A list of pointers to currently running jobs.",
            ));
            out.push(c(
                "Last Schedule",
                "string",
                0,
                "Information when was the last time the job was successfully scheduled.",
            ));
            out.push(age_column());
            out.push(c(
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ));
            out.push(c(
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ));
            out.push(c(
                "Selector",
                "string",
                1,
                "A label query over pods that should match the pod count.",
            ));
        }
        Some(Kind::Ingress) => {
            out.push(c(
                "Class",
                "string",
                0,
                "The name of the IngressClass resource that should be used for this Ingress.",
            ));
            out.push(c(
                "Hosts",
                "string",
                0,
                "Hosts that incoming requests are matched against before the ingress rule",
            ));
            out.push(c(
                "Address",
                "string",
                0,
                "Address is a list containing ingress points for the load-balancer",
            ));
            out.push(c(
                "Ports",
                "string",
                0,
                "Ports of TLS configurations that open",
            ));
            out.push(age_column());
        }
        Some(Kind::NetworkPolicy) => {
            out.push(c(
                "Pod-Selector",
                "string",
                0,
                "Selects the pods to which this NetworkPolicy object applies.",
            ));
            out.push(age_column());
        }
        Some(Kind::ControllerRevision) => {
            out.push(c(
                "Controller",
                "string",
                0,
                "The workload whose template history this revision is.",
            ));
            out.push(c(
                "Revision",
                "integer",
                0,
                "Revision indicates the revision of the state represented by Data.",
            ));
            out.push(age_column());
        }
        Some(Kind::Lease) => {
            out.push(c(
                "Holder",
                "string",
                0,
                "holderIdentity contains the identity of the holder of a current lease.",
            ));
            out.push(age_column());
        }
        Some(Kind::RoleBinding | Kind::ClusterRoleBinding) => {
            let what = if resource.builtin == Some(Kind::RoleBinding) {
                "roleBinding"
            } else {
                "clusterRoleBinding"
            };
            out.push(c("Role", "string", 0, &format!("Role in the {what}")));
            out.push(age_column());
            out.push(c("Users", "string", 1, &format!("Users in the {what}")));
            out.push(c("Groups", "string", 1, &format!("Groups in the {what}")));
            out.push(c(
                "ServiceAccounts",
                "string",
                1,
                &format!("ServiceAccounts in the {what}"),
            ));
        }
        Some(Kind::CustomResourceDefinition) => {
            out.push(c("Scope", "string", 0, "Cluster/Namespaced"));
            out.push(c("Versions", "string", 0, "Served versions"));
            out.push(column("Created At", "date", 0, CREATED_DOC));
            out.push(c("Group", "string", 1, "API group"));
            out.push(c("Kind", "string", 1, "CustomResource kind"));
            out.push(c("ShortNames", "string", 1, "Short names"));
            out.push(c("Established", "string", 1, "Established status"));
        }
        None => {
            let custom: Vec<Value> = resource
                .custom
                .as_ref()
                .map(|s| s.columns.clone())
                .unwrap_or_default();
            if custom.is_empty() {
                out.push(column("Age", "date", 0, CREATED_DOC));
            }
            for col in custom {
                let path = col["jsonPath"].as_str().unwrap_or("");
                let description = match col["description"].as_str() {
                    Some(d) if !d.is_empty() => d.to_owned(),
                    _ => format!("Custom resource definition column (in JSONPath format): {path}"),
                };
                out.push(json!({
                    "name": col["name"], "type": col["type"],
                    "format": col["format"].as_str().unwrap_or(""),
                    "description": description,
                    "priority": col["priority"].as_i64().unwrap_or(0),
                }));
            }
        }
        _ => out.push(column("Created At", "date", 0, CREATED_DOC)),
    }
    out
}

/// The cells of one object's row.
pub fn cells(resource: &ResourceType, o: &Value) -> Vec<Value> {
    let name = Value::String(text(o, "/metadata/name"));
    let s = |v: String| Value::String(v);
    match resource.builtin {
        Some(Kind::Namespace) => vec![name, s(text(o, "/status/phase")), age(o)],
        Some(Kind::Node) => node_cells(o, name),
        Some(Kind::Pod) => pod_cells(o, name),
        Some(Kind::Service) => service_cells(o, name),
        Some(Kind::Endpoints) => {
            let mut items = Vec::new();
            for subset in array(o, "/subsets") {
                let addresses: Vec<String> = array(subset, "/addresses")
                    .iter()
                    .filter_map(|a| a["ip"].as_str().map(str::to_owned))
                    .collect();
                let ports = array(subset, "/ports");
                if ports.is_empty() {
                    items.extend(addresses);
                } else {
                    for port in ports {
                        for ip in &addresses {
                            let p = port["port"].as_i64().unwrap_or(0);
                            items.push(if ip.contains(':') {
                                format!("[{ip}]:{p}")
                            } else {
                                format!("{ip}:{p}")
                            });
                        }
                    }
                }
            }
            let cell = if array(o, "/subsets").is_empty() {
                "<none>".to_owned()
            } else {
                capped(items, "")
            };
            vec![name, s(cell), age(o)]
        }
        Some(Kind::EndpointSlice) => {
            let ports: Vec<String> = array(o, "/ports")
                .iter()
                .map(
                    |p| match (p.get("port").and_then(Value::as_i64), p["name"].as_str()) {
                        (Some(n), _) => n.to_string(),
                        (None, Some(name)) => name.to_owned(),
                        _ => "*".into(),
                    },
                )
                .collect();
            let endpoints: Vec<String> = array(o, "/endpoints")
                .iter()
                .flat_map(|e| {
                    array(e, "/addresses")
                        .iter()
                        .filter_map(|a| a.as_str().map(str::to_owned))
                })
                .collect();
            vec![
                name,
                s(text(o, "/addressType")),
                s(capped(ports, "<unset>")),
                s(capped(endpoints, "<unset>")),
                age(o),
            ]
        }
        Some(Kind::ConfigMap) => {
            let n = o["data"].as_object().map_or(0, |m| m.len())
                + o["binaryData"].as_object().map_or(0, |m| m.len());
            vec![name, json!(n), age(o)]
        }
        Some(Kind::Secret) => {
            let n = o["data"].as_object().map_or(0, |m| m.len());
            vec![name, s(text(o, "/type")), json!(n), age(o)]
        }
        Some(Kind::ServiceAccount) => vec![name, json!(array(o, "/secrets").len()), age(o)],
        Some(Kind::Event) => event_cells(o, name),
        Some(Kind::Deployment) => {
            let (containers, images) = containers_cells(o.pointer("/spec/template/spec"));
            let selector = o
                .pointer("/spec/selector")
                .map(|sel| format_selector(Some(sel)))
                .map(|s| if s == "<none>" { String::new() } else { s })
                .unwrap_or_default();
            vec![
                name,
                s(format!(
                    "{}/{}",
                    int(o, "/status/readyReplicas"),
                    int(o, "/spec/replicas")
                )),
                json!(int(o, "/status/updatedReplicas")),
                json!(int(o, "/status/availableReplicas")),
                age(o),
                s(containers),
                s(images),
                s(selector),
            ]
        }
        Some(Kind::ReplicaSet) => {
            let (containers, images) = containers_cells(o.pointer("/spec/template/spec"));
            vec![
                name,
                json!(int(o, "/spec/replicas")),
                json!(int(o, "/status/replicas")),
                json!(int(o, "/status/readyReplicas")),
                age(o),
                s(containers),
                s(images),
                s(format_selector(o.pointer("/spec/selector"))),
            ]
        }
        Some(Kind::DaemonSet) => {
            let (containers, images) = containers_cells(o.pointer("/spec/template/spec"));
            vec![
                name,
                json!(int(o, "/status/desiredNumberScheduled")),
                json!(int(o, "/status/currentNumberScheduled")),
                json!(int(o, "/status/numberReady")),
                json!(int(o, "/status/updatedNumberScheduled")),
                json!(int(o, "/status/numberAvailable")),
                s(format_labels(o.pointer("/spec/template/spec/nodeSelector"))),
                age(o),
                s(containers),
                s(images),
                s(format_selector(o.pointer("/spec/selector"))),
            ]
        }
        Some(Kind::StatefulSet) => {
            let (containers, images) = containers_cells(o.pointer("/spec/template/spec"));
            vec![
                name,
                s(format!(
                    "{}/{}",
                    int(o, "/status/readyReplicas"),
                    int(o, "/spec/replicas")
                )),
                age(o),
                s(containers),
                s(images),
            ]
        }
        Some(Kind::Job) => job_cells(o, name),
        Some(Kind::CronJob) => {
            let (containers, images) =
                containers_cells(o.pointer("/spec/jobTemplate/spec/template/spec"));
            let suspend = match o.pointer("/spec/suspend").and_then(Value::as_bool) {
                Some(true) => "True",
                Some(false) => "False",
                None => "<unset>",
            };
            let last = if o.pointer("/status/lastScheduleTime").is_some() {
                since(o, "/status/lastScheduleTime")
            } else {
                "<none>".into()
            };
            vec![
                name,
                s(text(o, "/spec/schedule")),
                s(or_none(text(o, "/spec/timeZone"))),
                s(suspend.into()),
                json!(array(o, "/status/active").len()),
                s(last),
                age(o),
                s(containers),
                s(images),
                s(format_selector(
                    o.pointer("/spec/jobTemplate/spec/selector"),
                )),
            ]
        }
        Some(Kind::Ingress) => {
            let rules = array(o, "/spec/rules");
            let hosts: Vec<String> = rules
                .iter()
                .filter_map(|r| r["host"].as_str())
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect();
            let hosts = if hosts.is_empty() {
                "*".to_owned()
            } else {
                let mut out = hosts.iter().take(3).cloned().collect::<Vec<_>>().join(",");
                if rules.len() > 3 {
                    out.push_str(&format!(" + {} more...", rules.len() - 3));
                }
                out
            };
            let addresses: BTreeSet<String> = array(o, "/status/loadBalancer/ingress")
                .iter()
                .filter_map(|i| {
                    i["ip"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .or(i["hostname"].as_str())
                        .map(str::to_owned)
                })
                .collect();
            let ports = if array(o, "/spec/tls").is_empty() {
                "80"
            } else {
                "80, 443"
            };
            vec![
                name,
                s(or_none(text(o, "/spec/ingressClassName"))),
                s(hosts),
                s(addresses.into_iter().collect::<Vec<_>>().join(",")),
                s(ports.into()),
                age(o),
            ]
        }
        Some(Kind::NetworkPolicy) => vec![
            name,
            s(format_selector(o.pointer("/spec/podSelector"))),
            age(o),
        ],
        Some(Kind::ControllerRevision) => {
            let controller = array(o, "/metadata/ownerReferences")
                .iter()
                .find(|r| r["controller"] == true)
                .map(|r| {
                    let group = r["apiVersion"]
                        .as_str()
                        .and_then(|v| v.split_once('/'))
                        .map(|(g, _)| format!(".{g}"))
                        .unwrap_or_default();
                    let kind = r["kind"].as_str().unwrap_or_default().to_lowercase();
                    format!("{kind}{group}/{}", r["name"].as_str().unwrap_or_default())
                })
                .unwrap_or_else(|| "<none>".into());
            vec![
                name,
                s(controller),
                Value::from(int(o, "/revision")),
                age(o),
            ]
        }
        Some(Kind::Lease) => vec![name, s(text(o, "/spec/holderIdentity")), age(o)],
        Some(Kind::RoleBinding | Kind::ClusterRoleBinding) => {
            let of_kind = |kind: &str| -> String {
                array(o, "/subjects")
                    .iter()
                    .filter(|subject| subject["kind"] == kind)
                    .map(|subject| {
                        if kind == "ServiceAccount" {
                            format!(
                                "{}/{}",
                                subject["namespace"].as_str().unwrap_or(""),
                                subject["name"].as_str().unwrap_or("")
                            )
                        } else {
                            subject["name"].as_str().unwrap_or("").to_owned()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                name,
                s(format!(
                    "{}/{}",
                    text(o, "/roleRef/kind"),
                    text(o, "/roleRef/name")
                )),
                age(o),
                s(of_kind("User")),
                s(of_kind("Group")),
                s(of_kind("ServiceAccount")),
            ]
        }
        Some(Kind::CustomResourceDefinition) => {
            let mut versions: Vec<String> = array(o, "/spec/versions")
                .iter()
                .filter(|v| v["served"] == true)
                .map(|v| {
                    let n = v["name"].as_str().unwrap_or("").to_owned();
                    if v["storage"] == true {
                        format!("{n}(storage)")
                    } else {
                        n
                    }
                })
                .collect();
            versions.sort();
            let short: Vec<&str> = array(o, "/spec/names/shortNames")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let established = array(o, "/status/conditions")
                .iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True");
            vec![
                name,
                s(text(o, "/spec/scope")),
                s(versions.join(",")),
                s(text(o, "/metadata/creationTimestamp")),
                s(text(o, "/spec/group")),
                s(text(o, "/spec/names/kind")),
                s(short.join(",")),
                json!(established),
            ]
        }
        None => custom_cells(resource, o, name),
        _ => vec![name, s(text(o, "/metadata/creationTimestamp"))],
    }
}

fn node_cells(o: &Value, name: Value) -> Vec<Value> {
    let ready = array(o, "/status/conditions")
        .iter()
        .find(|c| c["type"] == "Ready");
    let mut status = match ready.and_then(|c| c["status"].as_str()) {
        Some("True") => "Ready".to_owned(),
        Some(_) => "NotReady".to_owned(),
        None => "Unknown".to_owned(),
    };
    if o.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles = BTreeSet::new();
    if let Some(labels) = o.pointer("/metadata/labels").and_then(Value::as_object) {
        for (key, value) in labels {
            if let Some(role) = key.strip_prefix("node-role.kubernetes.io/")
                && !role.is_empty()
            {
                roles.insert(role.to_owned());
            }
            if key == "kubernetes.io/role"
                && let Some(role) = value.as_str().filter(|r| !r.is_empty())
            {
                roles.insert(role.to_owned());
            }
        }
    }
    let address = |kind: &str| {
        array(o, "/status/addresses")
            .iter()
            .find(|a| a["type"] == kind)
            .and_then(|a| a["address"].as_str())
            .unwrap_or("<none>")
            .to_owned()
    };
    let info = |field: &str| {
        let v = text(o, &format!("/status/nodeInfo/{field}"));
        if v.is_empty() {
            "<unknown>".to_owned()
        } else {
            v
        }
    };
    vec![
        name,
        Value::String(status),
        Value::String(or_none(roles.into_iter().collect::<Vec<_>>().join(","))),
        age(o),
        Value::String(text(o, "/status/nodeInfo/kubeletVersion")),
        Value::String(address("InternalIP")),
        Value::String(address("ExternalIP")),
        Value::String(info("osImage")),
        Value::String(info("kernelVersion")),
        Value::String(info("containerRuntimeVersion")),
    ]
}

fn latest(current: &mut Option<i64>, candidate: Option<i64>) {
    if let Some(c) = candidate
        && current.is_none_or(|now| c > now)
    {
        *current = Some(c);
    }
}

fn pod_cells(o: &Value, name: Value) -> Vec<Value> {
    let mut reason = text(o, "/status/phase");
    if !text(o, "/status/reason").is_empty() {
        reason = text(o, "/status/reason");
    }
    let conditions = array(o, "/status/conditions");
    if conditions
        .iter()
        .any(|c| c["type"] == "PodScheduled" && c["reason"] == "SchedulingGated")
    {
        reason = "SchedulingGated".into();
    }
    let init_specs = array(o, "/spec/initContainers");
    let sidecar = |name: &str| {
        init_specs
            .iter()
            .any(|c| c["name"] == name && c["restartPolicy"] == "Always")
    };
    let total = array(o, "/spec/containers").len()
        + init_specs
            .iter()
            .filter(|c| c["restartPolicy"] == "Always")
            .count();
    let mut ready = 0;
    let mut restarts = 0;
    let mut last_restart: Option<i64> = None;
    let mut sidecar_restarts = 0;
    let mut sidecar_last: Option<i64> = None;
    let finished = |status: &Value| {
        status
            .pointer("/lastState/terminated/finishedAt")
            .and_then(Value::as_str)
            .and_then(parse_time)
    };
    let mut initializing = false;
    for (i, st) in array(o, "/status/initContainerStatuses").iter().enumerate() {
        let count = st["restartCount"].as_i64().unwrap_or(0);
        restarts += count;
        latest(&mut last_restart, finished(st));
        let is_sidecar = sidecar(st["name"].as_str().unwrap_or(""));
        if is_sidecar {
            sidecar_restarts += count;
            latest(&mut sidecar_last, finished(st));
        }
        let terminated = st.pointer("/state/terminated");
        let waiting = st.pointer("/state/waiting");
        if terminated.is_some_and(|t| t["exitCode"].as_i64() == Some(0)) {
            continue;
        }
        if is_sidecar && st["started"] == true {
            if st["ready"] == true {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            let r = t["reason"].as_str().unwrap_or("");
            reason = if !r.is_empty() {
                format!("Init:{r}")
            } else if t["signal"].as_i64().unwrap_or(0) != 0 {
                format!("Init:Signal:{}", t["signal"])
            } else {
                format!("Init:ExitCode:{}", t["exitCode"].as_i64().unwrap_or(0))
            };
        } else if let Some(r) = waiting
            .and_then(|w| w["reason"].as_str())
            .filter(|r| !r.is_empty() && *r != "PodInitializing")
        {
            reason = format!("Init:{r}");
        } else {
            reason = format!("Init:{i}/{}", init_specs.len());
        }
        initializing = true;
        break;
    }
    let initialized = conditions
        .iter()
        .any(|c| c["type"] == "Initialized" && c["status"] == "True");
    if !initializing || initialized {
        restarts = sidecar_restarts;
        last_restart = sidecar_last;
        let mut has_running = false;
        for st in array(o, "/status/containerStatuses").iter().rev() {
            restarts += st["restartCount"].as_i64().unwrap_or(0);
            latest(&mut last_restart, finished(st));
            let waiting = st
                .pointer("/state/waiting/reason")
                .and_then(Value::as_str)
                .unwrap_or("");
            let terminated = st.pointer("/state/terminated");
            if !waiting.is_empty() {
                reason = waiting.to_owned();
            } else if let Some(t) = terminated {
                let r = t["reason"].as_str().unwrap_or("");
                reason = if !r.is_empty() {
                    r.to_owned()
                } else if t["signal"].as_i64().unwrap_or(0) != 0 {
                    format!("Signal:{}", t["signal"])
                } else {
                    format!("ExitCode:{}", t["exitCode"].as_i64().unwrap_or(0))
                };
            } else if st["ready"] == true && st.pointer("/state/running").is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = conditions
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            reason = if pod_ready {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    let deleting = o
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null());
    let phase = text(o, "/status/phase");
    if deleting && text(o, "/status/reason") == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".into();
    }
    let restarts_cell = match (restarts, last_restart) {
        (0, _) | (_, None) => restarts.to_string(),
        (n, Some(t)) => format!("{n} ({} ago)", human_duration(now() - t)),
    };
    let ip = array(o, "/status/podIPs")
        .first()
        .and_then(|p| p["ip"].as_str())
        .map(str::to_owned)
        .or_else(|| Some(text(o, "/status/podIP")).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "<none>".into());
    let gates = array(o, "/spec/readinessGates");
    let gates_cell = if gates.is_empty() {
        "<none>".to_owned()
    } else {
        let true_count = gates
            .iter()
            .filter(|g| {
                conditions
                    .iter()
                    .find(|c| c["type"] == g["conditionType"])
                    .is_some_and(|c| c["status"] == "True")
            })
            .count();
        format!("{true_count}/{}", gates.len())
    };
    vec![
        name,
        Value::String(format!("{ready}/{total}")),
        Value::String(reason),
        Value::String(restarts_cell),
        age(o),
        Value::String(ip),
        Value::String(or_none(text(o, "/spec/nodeName"))),
        Value::String(or_none(text(o, "/status/nominatedNodeName"))),
        Value::String(gates_cell),
    ]
}

/// The row conditions of a pod (`Completed` for finished ones).
pub fn row_conditions(resource: &ResourceType, o: &Value) -> Option<Value> {
    if resource.builtin != Some(Kind::Pod) {
        return None;
    }
    match text(o, "/status/phase").as_str() {
        "Succeeded" => Some(
            json!([{"type": "Completed", "status": "True", "reason": "Succeeded", "message": "The pod has completed successfully."}]),
        ),
        "Failed" => Some(
            json!([{"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}]),
        ),
        _ => None,
    }
}

fn service_cells(o: &Value, name: Value) -> Vec<Value> {
    let kind = text(o, "/spec/type");
    let cluster_ip = array(o, "/spec/clusterIPs")
        .first()
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| Some(text(o, "/spec/clusterIP")).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "<none>".into());
    let external: Vec<String> = array(o, "/spec/externalIPs")
        .iter()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect();
    let external_cell = match kind.as_str() {
        "ClusterIP" | "NodePort" => or_none(external.join(",")),
        "LoadBalancer" => {
            let lb: BTreeSet<String> = array(o, "/status/loadBalancer/ingress")
                .iter()
                .filter_map(|i| {
                    i["ip"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .or(i["hostname"].as_str())
                        .map(str::to_owned)
                })
                .collect();
            let mut all: Vec<String> = lb.into_iter().collect();
            all.extend(external);
            if all.is_empty() {
                "<pending>".into()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => text(o, "/spec/externalName"),
        _ => "<unknown>".into(),
    };
    let ports: Vec<String> = array(o, "/spec/ports")
        .iter()
        .map(|p| {
            let port = p["port"].as_i64().unwrap_or(0);
            let protocol = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(n) if n > 0 => format!("{port}:{n}/{protocol}"),
                _ => format!("{port}/{protocol}"),
            }
        })
        .collect();
    vec![
        name,
        Value::String(kind),
        Value::String(cluster_ip),
        Value::String(external_cell),
        Value::String(or_none(ports.join(","))),
        age(o),
        Value::String(format_labels(o.pointer("/spec/selector"))),
    ]
}

fn event_cells(o: &Value, name: Value) -> Vec<Value> {
    let first = if o.pointer("/firstTimestamp").is_some_and(|t| !t.is_null()) {
        since(o, "/firstTimestamp")
    } else {
        since(o, "/eventTime")
    };
    let mut count = int(o, "/count");
    let last = if o.pointer("/series").is_some_and(|s| !s.is_null()) {
        count = int(o, "/series/count");
        since(o, "/series/lastObservedTime")
    } else if o.pointer("/lastTimestamp").is_some_and(|t| !t.is_null()) {
        since(o, "/lastTimestamp")
    } else {
        first.clone()
    };
    if count == 0 {
        count = 1;
    }
    let kind = text(o, "/involvedObject/kind").to_lowercase();
    let object = match text(o, "/involvedObject/name") {
        n if n.is_empty() => kind,
        n => format!("{kind}/{n}"),
    };
    let component = Some(text(o, "/source/component"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| text(o, "/reportingComponent"));
    let host = Some(text(o, "/source/host"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| text(o, "/reportingInstance"));
    let source = if host.is_empty() {
        component
    } else {
        format!("{component}, {host}")
    };
    vec![
        Value::String(last),
        Value::String(text(o, "/type")),
        Value::String(text(o, "/reason")),
        Value::String(object),
        Value::String(text(o, "/involvedObject/fieldPath")),
        Value::String(source),
        Value::String(text(o, "/message").trim().to_owned()),
        Value::String(first),
        json!(count),
        name,
    ]
}

fn job_cells(o: &Value, name: Value) -> Vec<Value> {
    let conditions = array(o, "/status/conditions");
    let has = |kind: &str| {
        conditions
            .iter()
            .find(|c| c["type"] == kind)
            .is_some_and(|c| c["status"] == "True")
    };
    let status = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if o
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        "Terminating"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let succeeded = int(o, "/status/succeeded");
    let completions = match o.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => {
            let parallelism = int(o, "/spec/parallelism");
            if parallelism > 1 {
                format!("{succeeded}/1 of {parallelism}")
            } else {
                format!("{succeeded}/1")
            }
        }
    };
    let start = o
        .pointer("/status/startTime")
        .and_then(Value::as_str)
        .and_then(parse_time);
    let end = o
        .pointer("/status/completionTime")
        .and_then(Value::as_str)
        .and_then(parse_time);
    let duration = match (start, end) {
        (None, _) => String::new(),
        (Some(s), None) => human_duration(now() - s),
        (Some(s), Some(e)) => human_duration(e - s),
    };
    let (containers, images) = containers_cells(o.pointer("/spec/template/spec"));
    vec![
        name,
        Value::String(status.into()),
        Value::String(completions),
        Value::String(duration),
        age(o),
        Value::String(containers),
        Value::String(images),
        Value::String(format_selector(o.pointer("/spec/selector"))),
    ]
}

/// Evaluates a simple JSONPath (`.spec.replicas`, `.status.conditions[0].type`).
pub fn jsonpath<'a>(o: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = o;
    let trimmed = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('.');
    if trimmed.is_empty() {
        return Some(o);
    }
    for part in trimmed.split('.') {
        let (field, index) = match part.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !field.is_empty() {
            current = current.get(field)?;
        }
        if let Some(i) = index {
            current = current.get(i)?;
        }
    }
    Some(current)
}

fn custom_cells(resource: &ResourceType, o: &Value, name: Value) -> Vec<Value> {
    let columns: Vec<Value> = resource
        .custom
        .as_ref()
        .map(|s| s.columns.clone())
        .unwrap_or_default();
    if columns.is_empty() {
        return vec![name, age(o)];
    }
    let mut cells = vec![name];
    for col in columns {
        let found = jsonpath(o, col["jsonPath"].as_str().unwrap_or(""));
        cells.push(match (col["type"].as_str(), found) {
            (_, None) => Value::Null,
            (Some("integer"), Some(v)) => v
                .as_i64()
                .or_else(|| v.as_f64().map(|f| f as i64))
                .map_or(Value::Null, |n| json!(n)),
            (Some("number"), Some(v)) => v.as_f64().map_or(Value::Null, |n| json!(n)),
            (Some("boolean"), Some(v)) => v.as_bool().map_or(Value::Null, Value::Bool),
            (Some("date"), Some(Value::String(t))) => match parse_time(t) {
                Some(t) => Value::String(human_duration(now() - t)),
                None => Value::String("<invalid>".into()),
            },
            (Some("date"), Some(_)) => Value::Null,
            (Some("string"), Some(Value::String(s))) => Value::String(s.clone()),
            (Some("string"), Some(other)) => Value::String(other.to_string()),
            (_, Some(_)) => Value::Null,
        });
    }
    cells
}

/// The row for `object`.
pub fn row(resource: &ResourceType, object: &Value, include: IncludeObject) -> Value {
    let embedded = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => object.clone(),
        IncludeObject::Metadata => partial_metadata(object),
    };
    let mut row = json!({"cells": cells(resource, object), "object": embedded});
    if let Some(conditions) = row_conditions(resource, object) {
        row["conditions"] = conditions;
    }
    row
}

/// An object's `PartialObjectMetadata`.
pub fn partial_metadata(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// A Table of `objects` with list metadata `metadata`; `headers` false leaves the
/// column definitions out (watch events after the first).
pub fn table(
    resource: &ResourceType,
    objects: &[Value],
    metadata: Value,
    include: IncludeObject,
    headers: bool,
) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": if headers { Value::Array(columns(resource)) } else { Value::Null },
        "rows": objects.iter().map(|o| row(resource, o, include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn durations_read_as_kubectl_prints_ages() {
        for (seconds, text) in [
            (45, "45s"),
            (119, "119s"),
            (182, "3m2s"),
            (300, "5m"),
            (2700, "45m"),
            (11100, "3h5m"),
            (8 * 3600, "8h"),
            (2 * 86400 + 3 * 3600, "2d3h"),
            (10 * 86400, "10d"),
            (3 * 365 * 86400 + 45 * 86400, "3y45d"),
        ] {
            assert_eq!(human_duration(seconds), text);
        }
    }

    #[test]
    fn pods_print_ready_status_and_restarts_like_kubectl() {
        let registry = Registry::new();
        let pods = registry.builtin(Kind::Pod);
        let pod = json!({"metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let cells = cells(&pods, &pod);
        assert_eq!(cells[0], "web");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[5], "10.244.0.5");
        assert_eq!(cells[6], "n1");
        assert_eq!(cells.len(), columns(&pods).len());
        let init = json!({"metadata": {"name": "i"}, "spec": {"initContainers": [{"name": "x"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [{"name": "x", "state": {"running": {}}}]}});
        assert_eq!(super::cells(&pods, &init)[2], "Init:0/1");
    }

    #[test]
    fn every_kind_has_as_many_cells_as_columns() {
        let registry = Registry::new();
        for resource in registry.all() {
            let object =
                json!({"metadata": {"name": "x", "creationTimestamp": "2020-01-01T00:00:00Z"}});
            assert_eq!(
                cells(&resource, &object).len(),
                columns(&resource).len(),
                "{}",
                resource.plural
            );
        }
        let nodes = registry.builtin(Kind::Node);
        let node = json!({"metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.37.0"}}});
        let c = cells(&nodes, &node);
        assert_eq!(
            (c[1].as_str(), c[2].as_str(), c[4].as_str()),
            (
                Some("Ready,SchedulingDisabled"),
                Some("control-plane"),
                Some("v1.37.0")
            )
        );
        let services = registry.builtin(Kind::Service);
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIPs": ["10.96.0.10"],
            "ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "nodePort": 30001, "protocol": "TCP"}], "selector": {"app": "web"}}});
        let c = cells(&services, &svc);
        assert_eq!(c[4], "80/TCP,443:30001/TCP");
        assert_eq!(c[3], "<none>");
        assert_eq!(c[6], "app=web");
    }
}
