//! The node's heartbeat: its Lease in `kube-node-lease`, named after the node, owned
//! by its Node (so the Lease goes with it), renewed every quarter of its duration as
//! the kubelet does. The node lifecycle controller reads `renewTime` to tell a live
//! node from a lost one.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The namespace of node Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// Renews `node`'s Lease (lasting `duration`) until `stop` fires; `node_uid` makes the
/// Node its owner. Failures are logged and retried at the next beat.
pub async fn beat(
    client: kube::Client,
    node: &str,
    node_uid: Option<String>,
    duration: Duration,
    stop: CancellationToken,
) {
    let leases: Api<Lease> = Api::namespaced(client, NODE_LEASE_NAMESPACE);
    let every = duration / 4;
    let mut held: Option<Lease> = None;
    loop {
        match renew(&leases, node, node_uid.as_deref(), duration, held.take()).await {
            Ok(lease) => {
                debug!(node, "node lease renewed");
                held = Some(lease);
            }
            Err(err) => warn!(node, error = %err, "renewing the node lease failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// One renewal: an update of the Lease last written (`held`), or of the one on the
/// server when that is unknown or stale, or a create when there is none.
async fn renew(
    leases: &Api<Lease>,
    node: &str,
    node_uid: Option<&str>,
    duration: Duration,
    held: Option<Lease>,
) -> Result<Lease, kube::Error> {
    let now = MicroTime(Timestamp::now());
    let seconds = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX);
    let mut current = held;
    let mut conflicts = 0;
    loop {
        let known = match current.take() {
            Some(lease) => Some(lease),
            None => leases.get_opt(node).await?,
        };
        let Some(mut lease) = known else {
            return leases
                .create(
                    &PostParams::default(),
                    &new_lease(node, node_uid, seconds, now),
                )
                .await;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(node.to_owned());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now.clone());
        match leases.replace(node, &PostParams::default(), &lease).await {
            // Someone else wrote it (a restarted agent, an admin): renew what is there
            // now, once.
            Err(kube::Error::Api(status)) if status.code == 409 && conflicts == 0 => {
                conflicts += 1;
            }
            result => return result,
        }
    }
}

/// The Lease of a node that has none yet.
fn new_lease(node: &str, node_uid: Option<&str>, seconds: i32, now: MicroTime) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(node.to_owned()),
            namespace: Some(NODE_LEASE_NAMESPACE.to_owned()),
            owner_references: node_uid.map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".to_owned(),
                    kind: "Node".to_owned(),
                    name: node.to_owned(),
                    uid: uid.to_owned(),
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.to_owned()),
            lease_duration_seconds: Some(seconds),
            renew_time: Some(now),
            ..LeaseSpec::default()
        }),
    }
}
