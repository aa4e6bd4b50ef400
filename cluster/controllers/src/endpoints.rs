//! The Endpoints and EndpointSlice controllers: each Service with a selector gets the
//! addresses of the pods it selects, as kube-controller-manager publishes them.
//!
//! - A pod counts once it has an IP and has not finished; ready pods go to
//!   `addresses` (EndpointSlice `ready: true`), others to `notReadyAddresses` (`ready:
//!   false`) — all as ready with `publishNotReadyAddresses`. A pod being deleted is
//!   left out of Endpoints and kept in its slice as `terminating` (not ready).
//! - A service port's `targetPort` is resolved per pod (a number, or a container port
//!   name; a pod without that name is left out of that port's subset); pods with the
//!   same resolved ports share a subset (Endpoints) or a slice (EndpointSlice, at most
//!   100 endpoints each).
//! - Endpoints carry `endpoints.kubernetes.io/managed-by: endpoint-controller` and are
//!   deleted with their Service; slices carry `kubernetes.io/service-name` and
//!   `endpointslice.kubernetes.io/managed-by`, are owned by the Service (the garbage
//!   collector removes them with it) and are replaced when their content changes.
//!   Endpoints of Services without a selector are the user's and left alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, ObjectReference, Pod,
    Service,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use tracing::{debug, warn};

use crate::pods::{finished, ready};
use crate::{Caches, ControllerOptions};

/// The label on Endpoints this controller manages.
pub const ENDPOINTS_MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label on slices this controller manages.
pub const SLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const ENDPOINTS_CONTROLLER: &str = "endpoint-controller";
const SLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// Endpoints in one slice at most (Kubernetes' default `--max-endpoints-per-slice`).
const SLICE_CAPACITY: usize = 100;

/// A resolved service port: its name, the number on the pod, the protocol.
type ResolvedPort = (Option<String>, i32, String);

/// A pod as a Service sees it: address, readiness, and its resolved ports.
struct Member<'a> {
    pod: &'a Pod,
    ip: String,
    ready: bool,
    terminating: bool,
    ports: Vec<ResolvedPort>,
}

/// Runs both controllers over `caches` (never returns; dropped to stop).
pub async fn run(client: kube::Client, caches: Caches, options: ControllerOptions) {
    let mut tick = tokio::time::interval(options.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let services = caches.services.state();
        let pods = caches.pods.state();
        for service in &services {
            let Some(selector) = service
                .spec
                .as_ref()
                .and_then(|s| s.selector.clone())
                .filter(|s| !s.is_empty())
            else {
                continue;
            };
            if service.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let namespace = service.namespace().unwrap_or_default();
            let members = members(service, &selector, &pods, &namespace);
            sync_endpoints(&client, &caches, service, &members).await;
            sync_slices(&client, &caches, service, &members).await;
        }
        // Endpoints of ours whose Service is gone.
        for endpoints in caches.endpoints.state() {
            let ours = endpoints
                .labels()
                .get(ENDPOINTS_MANAGED_BY)
                .map(String::as_str)
                == Some(ENDPOINTS_CONTROLLER);
            let has_service = services.iter().any(|s| {
                s.name_any() == endpoints.name_any() && s.namespace() == endpoints.namespace()
            });
            if ours && !has_service {
                let api: Api<Endpoints> =
                    Api::namespaced(client.clone(), &endpoints.namespace().unwrap_or_default());
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: endpoints.metadata.uid.clone(),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                if let Err(err) = api.delete(&endpoints.name_any(), &params).await {
                    debug!(endpoints = %endpoints.name_any(), error = %err, "deleting endpoints of a gone service failed");
                }
            }
        }
    }
}

/// The pods `service` selects, with their resolved ports.
fn members<'a>(
    service: &Service,
    selector: &BTreeMap<String, String>,
    pods: &'a [Arc<Pod>],
    namespace: &str,
) -> Vec<Member<'a>> {
    let publish_all = service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        == Some(true);
    let service_ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let mut members: Vec<Member<'a>> = pods
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace))
        .filter(|p| selector.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
        .filter(|p| !finished(p))
        .filter_map(|p| {
            let ip = p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty())?;
            let ports = service_ports
                .iter()
                .filter_map(|port| {
                    let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
                    let number =
                        resolve_target_port(p, port.target_port.as_ref(), port.port, &protocol)?;
                    Some((port.name.clone(), number, protocol))
                })
                .collect();
            let terminating = p.metadata.deletion_timestamp.is_some();
            Some(Member {
                pod: p.as_ref(),
                ip,
                ready: (publish_all || ready(p)) && !terminating,
                terminating,
                ports,
            })
        })
        .collect();
    members.sort_by(|a, b| {
        a.ip.cmp(&b.ip)
            .then_with(|| a.pod.name_any().cmp(&b.pod.name_any()))
    });
    members
}

/// A service port's target on `pod`: the number, or the number of the container port
/// of that name and protocol (`None` when the pod has no such port).
pub fn resolve_target_port(
    pod: &Pod,
    target: Option<&IntOrString>,
    port: i32,
    protocol: &str,
) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => match name.parse::<i32>() {
            Ok(n) => Some(n),
            Err(_) => pod
                .spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port),
        },
    }
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

fn node_name(pod: &Pod) -> Option<String> {
    pod.spec.as_ref()?.node_name.clone()
}

/// Members grouped by their resolved ports, in a stable order.
fn by_ports<'m, 'a>(members: &'m [Member<'a>]) -> Vec<(Vec<ResolvedPort>, Vec<&'m Member<'a>>)> {
    let mut groups: BTreeMap<Vec<ResolvedPort>, Vec<&'m Member<'a>>> = BTreeMap::new();
    for member in members {
        groups.entry(member.ports.clone()).or_default().push(member);
    }
    groups.into_iter().collect()
}

/// The Endpoints `service` should have.
fn desired_endpoints(service: &Service, members: &[Member<'_>]) -> Endpoints {
    let subsets: Vec<EndpointSubset> = by_ports(members)
        .into_iter()
        .filter(|(ports, _)| {
            !ports.is_empty()
                || service
                    .spec
                    .as_ref()
                    .and_then(|s| s.ports.as_ref())
                    .is_none_or(Vec::is_empty)
        })
        .filter_map(|(ports, group)| {
            let address = |m: &&Member<'_>| EndpointAddress {
                ip: m.ip.clone(),
                node_name: node_name(m.pod),
                target_ref: Some(target_ref(m.pod)),
                hostname: None,
            };
            let live: Vec<&&Member<'_>> = group.iter().filter(|m| !m.terminating).collect();
            let ready: Vec<EndpointAddress> = live
                .iter()
                .filter(|m| m.ready)
                .map(|m| address(m))
                .collect();
            let not_ready: Vec<EndpointAddress> = live
                .iter()
                .filter(|m| !m.ready)
                .map(|m| address(m))
                .collect();
            if ready.is_empty() && not_ready.is_empty() {
                return None;
            }
            Some(EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then(|| {
                    ports
                        .iter()
                        .map(|(name, port, protocol)| CorePort {
                            name: name.clone(),
                            port: *port,
                            protocol: Some(protocol.clone()),
                            app_protocol: None,
                        })
                        .collect()
                }),
            })
        })
        .collect();
    let mut labels = service.labels().clone();
    labels.insert(ENDPOINTS_MANAGED_BY.into(), ENDPOINTS_CONTROLLER.into());
    Endpoints {
        metadata: ObjectMeta {
            name: service.metadata.name.clone(),
            namespace: service.metadata.namespace.clone(),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    }
}

async fn sync_endpoints(
    client: &kube::Client,
    caches: &Caches,
    service: &Service,
    members: &[Member<'_>],
) {
    let want = desired_endpoints(service, members);
    let namespace = service.namespace().unwrap_or_default();
    let api: Api<Endpoints> = Api::namespaced(client.clone(), &namespace);
    let current = caches
        .endpoints
        .get(&kube::runtime::reflector::ObjectRef::new(&service.name_any()).within(&namespace));
    let result = match current {
        None => api.create(&PostParams::default(), &want).await.map(|_| ()),
        Some(have)
            if have.subsets == want.subsets && have.metadata.labels == want.metadata.labels =>
        {
            Ok(())
        }
        Some(have) => {
            let mut next = want.clone();
            next.metadata.resource_version = have.metadata.resource_version.clone();
            next.metadata.annotations = have.metadata.annotations.clone();
            api.replace(&service.name_any(), &PostParams::default(), &next)
                .await
                .map(|_| ())
        }
    };
    match result {
        Ok(()) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(err) => {
            warn!(service = %service.name_any(), error = %err, "writing the endpoints failed")
        }
    }
}

/// The endpoints and ports of the slices `service` should have.
fn desired_slices(members: &[Member<'_>]) -> Vec<(Vec<EndpointPort>, Vec<Endpoint>)> {
    let mut slices = Vec::new();
    for (ports, group) in by_ports(members) {
        let ports: Vec<EndpointPort> = ports
            .iter()
            .map(|(name, port, protocol)| EndpointPort {
                name: Some(name.clone().unwrap_or_default()),
                port: Some(*port),
                protocol: Some(protocol.clone()),
                app_protocol: None,
            })
            .collect();
        let endpoints: Vec<Endpoint> = group
            .iter()
            .map(|m| Endpoint {
                addresses: vec![m.ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(m.ready),
                    serving: Some(if m.terminating { ready(m.pod) } else { m.ready }),
                    terminating: Some(m.terminating),
                }),
                node_name: node_name(m.pod),
                target_ref: Some(target_ref(m.pod)),
                ..Endpoint::default()
            })
            .collect();
        for chunk in endpoints.chunks(SLICE_CAPACITY) {
            slices.push((ports.clone(), chunk.to_vec()));
        }
    }
    slices
}

async fn sync_slices(
    client: &kube::Client,
    caches: &Caches,
    service: &Service,
    members: &[Member<'_>],
) {
    let namespace = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &namespace);
    let mut have: Vec<Arc<EndpointSlice>> = caches
        .endpoint_slices
        .state()
        .into_iter()
        .filter(|s| s.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|s| s.labels().get(SERVICE_NAME_LABEL) == Some(&name))
        .filter(|s| s.labels().get(SLICE_MANAGED_BY).map(String::as_str) == Some(SLICE_CONTROLLER))
        .collect();
    have.sort_by_key(|s| s.name_any());
    let want = desired_slices(members);
    let matches = have.len() == want.len()
        && have.iter().zip(&want).all(|(slice, (ports, endpoints))| {
            slice.ports.as_deref().unwrap_or_default() == ports.as_slice()
                && slice.endpoints.as_deref().unwrap_or_default() == endpoints.as_slice()
        });
    if matches {
        return;
    }
    let Some(uid) = service.metadata.uid.clone() else {
        return;
    };
    // Replace what is there: update slices in place, create or delete the difference.
    for (i, (ports, endpoints)) in want.iter().enumerate() {
        let slice = EndpointSlice {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}-")),
                namespace: Some(namespace.clone()),
                labels: Some(BTreeMap::from([
                    (SERVICE_NAME_LABEL.to_owned(), name.clone()),
                    (SLICE_MANAGED_BY.to_owned(), SLICE_CONTROLLER.to_owned()),
                ])),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Service".into(),
                    name: name.clone(),
                    uid: uid.clone(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(endpoints.clone()),
            ports: Some(ports.clone()),
        };
        let result = match have.get(i) {
            Some(current) => {
                let mut next = slice;
                next.metadata.name = current.metadata.name.clone();
                next.metadata.generate_name = None;
                next.metadata.resource_version = current.metadata.resource_version.clone();
                api.replace(&current.name_any(), &PostParams::default(), &next)
                    .await
                    .map(|_| ())
            }
            None => api.create(&PostParams::default(), &slice).await.map(|_| ()),
        };
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => return,
            Err(err) => {
                warn!(service = %name, error = %err, "writing an endpoint slice failed");
                return;
            }
        }
    }
    for extra in have.iter().skip(want.len()) {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: extra.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        if let Err(err) = api.delete(&extra.name_any(), &params).await {
            debug!(slice = %extra.name_any(), error = %err, "deleting a surplus endpoint slice failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ip: &str, ready: bool, ports: serde_json::Value) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "uid": name, "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "a", "image": "x", "ports": ports}]},
                "status": {"phase": "Running", "podIP": ip, "conditions": [
                    {"type": "Ready", "status": if ready { "True" } else { "False" }}]},
            }))
            .unwrap(),
        )
    }

    fn service(target: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "s-1"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": target}]},
        }))
        .unwrap()
    }

    #[test]
    fn named_target_ports_resolve_per_pod_and_readiness_splits_addresses() {
        let pods = vec![
            pod(
                "a",
                "10.244.0.2",
                true,
                json!([{"name": "http", "containerPort": 8080}]),
            ),
            pod(
                "b",
                "10.244.0.3",
                false,
                json!([{"name": "http", "containerPort": 8080}]),
            ),
            pod(
                "c",
                "10.244.0.4",
                true,
                json!([{"name": "http", "containerPort": 9090}]),
            ),
            pod("d", "10.244.0.5", true, json!([])),
        ];
        let svc = service(json!("http"));
        let selector = svc.spec.as_ref().unwrap().selector.clone().unwrap();
        let members = members(&svc, &selector, &pods, "default");
        let endpoints = desired_endpoints(&svc, &members);
        let subsets = endpoints.subsets.unwrap();
        // d has no port named http: it serves no port of this Service.
        assert_eq!(subsets.len(), 2, "{subsets:?}");
        let on_8080 = subsets
            .iter()
            .find(|s| s.ports.as_ref().unwrap()[0].port == 8080)
            .unwrap();
        assert_eq!(on_8080.addresses.as_ref().unwrap()[0].ip, "10.244.0.2");
        assert_eq!(
            on_8080.not_ready_addresses.as_ref().unwrap()[0].ip,
            "10.244.0.3"
        );
        let on_9090 = subsets
            .iter()
            .find(|s| s.ports.as_ref().unwrap()[0].port == 9090)
            .unwrap();
        assert_eq!(
            on_9090.addresses.as_ref().unwrap()[0]
                .target_ref
                .as_ref()
                .unwrap()
                .name
                .as_deref(),
            Some("c")
        );
        let slices = desired_slices(&members);
        assert_eq!(slices.len(), 3, "the port-less pod gets a slice of its own");
        let ready: Vec<Option<bool>> = slices
            .iter()
            .flat_map(|(_, e)| e.iter().map(|e| e.conditions.as_ref().unwrap().ready))
            .collect();
        assert_eq!(ready.iter().filter(|r| **r == Some(false)).count(), 1);
    }
}
