//! `agent`: the node agent (`cairn-agent`, the kubelet's role) on every node of a
//! cluster. It waits for the container runtime (and, where the node has one, for the
//! pod network, whose CIDR its Node names), then runs as `system:node:<name>` in
//! `system:nodes`: a control plane talks to its own API server with a certificate it
//! issues itself from the cluster CA; a worker talks to the cluster endpoint with the
//! certificate of `machine.certs.agent`.

use std::sync::Arc;
use std::time::Duration;

use cairn_agent::{AgentSettings, NodeFacts};
use cairn_api::MachineConfig;
use cairn_api::kubeconfig::{NODE_USER_PREFIX, NODES_GROUP};
use cairn_api::machine_config::MachineType;
use cairn_api::pki::Ca;
use cairn_net::pod_network::PodNetworkSlot;
use futures::FutureExt;
use futures::future::BoxFuture;
use tracing::{Instrument, info, info_span, warn};

use crate::services::apiserver::APISERVER_PORT;
use crate::services::kube_client;
use crate::services::listen::ListenAddress;
use crate::services::podnet::{self, PodNetSettings};
use crate::services::runtime::{RuntimeHandle, STATIC_PREFIX};
use crate::supervisor::{Service, ServiceContext, ServiceError};

/// How long the agent waits for the pod network before registering without a pod CIDR.
const POD_NETWORK_WAIT: Duration = Duration::from_secs(60);
/// How often the agent looks again for what it waits for.
const WAIT_STEP: Duration = Duration::from_millis(200);

/// How the agent reaches the API server.
#[derive(Clone)]
pub enum ApiAccess {
    /// A control plane: its own API server, with a certificate issued from the CA key.
    Local {
        /// The cluster CA key (PEM).
        ca_key: String,
    },
    /// A worker: the cluster endpoint, with the agent certificate of its config.
    Remote {
        /// The API server's URL (`https://10.5.0.2:6443`).
        endpoint: String,
        /// The agent's client certificate (PEM).
        cert: String,
        /// Its key (PEM).
        key: String,
    },
}

/// What the agent service needs from the machine config.
#[derive(Clone)]
pub struct AgentServiceSettings {
    /// The node's name.
    pub node_name: String,
    /// Whether the node is a control plane.
    pub control_plane: bool,
    /// The node's static addresses (its Node's `InternalIP`s).
    pub addresses: Vec<String>,
    /// The cluster CA certificate (PEM).
    pub ca_cert: String,
    /// The cluster's name (in the client's kubeconfig).
    pub cluster_name: String,
    /// How the API server is reached.
    pub access: ApiAccess,
}

/// Why the agent cannot run on this node.
#[derive(Debug, thiserror::Error)]
pub enum AgentSetupError {
    /// A control plane without the CA key cannot issue the agent's certificate.
    #[error(
        "machine.certs.ca.key is needed on a control plane to issue the node agent's certificate"
    )]
    NoCaKey,
    /// A worker needs the agent certificate the cluster bundle issues it.
    #[error(
        "machine.certs.agent is needed on a worker: the node agent's client certificate for the \
         Kubernetes API (cairnctl gen config issues it)"
    )]
    NoAgentCertificate,
    /// A worker needs to know where the API is.
    #[error(
        "cluster.endpoint (or cluster.controlPlanes) is needed on a worker to reach the Kubernetes API"
    )]
    NoEndpoint,
}

impl AgentServiceSettings {
    /// The agent settings of the node `node_name` with `config`; `None` when the node
    /// is in no cluster.
    pub fn from_config(
        config: &MachineConfig,
        node_name: &str,
    ) -> Result<Option<Self>, AgentSetupError> {
        let Some(cluster) = config.cluster.as_ref() else {
            return Ok(None);
        };
        let certs = &config.machine.certs;
        let control_plane = config.machine.machine_type == MachineType::Controlplane;
        let access = if control_plane {
            ApiAccess::Local {
                ca_key: certs.ca.key.clone().ok_or(AgentSetupError::NoCaKey)?,
            }
        } else {
            let agent = certs
                .agent
                .as_ref()
                .ok_or(AgentSetupError::NoAgentCertificate)?;
            let endpoint = cluster
                .endpoint
                .clone()
                .or_else(|| {
                    cluster
                        .control_planes
                        .first()
                        .map(|cp| format!("https://{cp}:{APISERVER_PORT}"))
                })
                .ok_or(AgentSetupError::NoEndpoint)?;
            ApiAccess::Remote {
                endpoint,
                cert: agent.crt.clone(),
                key: agent.key.clone(),
            }
        };
        let addresses = config
            .interfaces()
            .unwrap_or_default()
            .iter()
            .flat_map(|i| i.addresses.iter().map(|a| a.addr()))
            .filter(std::net::IpAddr::is_ipv4)
            .map(|a| a.to_string())
            .collect();
        Ok(Some(Self {
            node_name: node_name.to_owned(),
            control_plane,
            addresses,
            ca_cert: certs.ca.crt.clone(),
            cluster_name: cluster.name.clone(),
            access,
        }))
    }
}

/// The pod network the agent works with.
#[derive(Clone)]
pub enum AgentPodNetwork {
    /// None: pods get no network namespace of their own (a hosted node).
    None,
    /// A control plane's, claimed through the store by the `podnet` service: the agent
    /// waits (a while) for it, to register the Node with its pod CIDR.
    Claimed(PodNetworkSlot),
    /// A worker's, which the agent starts itself once the node IPAM has given the Node
    /// a pod CIDR.
    Worker(PodNetSettings, PodNetworkSlot),
}

/// The agent service.
pub struct AgentService {
    settings: AgentServiceSettings,
    runtime: RuntimeHandle,
    pod_network: AgentPodNetwork,
    api: Option<ListenAddress>,
    machine_api: ListenAddress,
}

impl AgentService {
    /// An agent with `settings` for the pods of `runtime`; `pod_network` is the node's
    /// pod network, if it has one; `api` is this node's API server on a control plane;
    /// `machine_api` is where this node's machine API listens (its port goes on the
    /// Node, for the API server's log and exec relay).
    pub fn new(
        settings: AgentServiceSettings,
        runtime: RuntimeHandle,
        pod_network: AgentPodNetwork,
        api: Option<ListenAddress>,
        machine_api: ListenAddress,
    ) -> Self {
        Self {
            settings,
            runtime,
            pod_network,
            api,
            machine_api,
        }
    }
}

impl Service for AgentService {
    fn name(&self) -> &str {
        "agent"
    }

    fn run(&self, ctx: ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>> {
        let settings = self.settings.clone();
        let runtime = self.runtime.clone();
        let pod_network = self.pod_network.clone();
        let api = self.api.clone();
        let machine_api = self.machine_api.clone();
        async move {
            let Some(runtime) = wait_for(&ctx, || runtime.get()).await else {
                return Ok(());
            };
            let Some(machine_api) = wait_for(&ctx, || machine_api.addr()).await else {
                return Ok(());
            };
            let pod_cidr = match &pod_network {
                AgentPodNetwork::None | AgentPodNetwork::Worker(..) => None,
                AgentPodNetwork::Claimed(slot) => {
                    let network =
                        tokio::time::timeout(POD_NETWORK_WAIT, wait_for(&ctx, || slot.get())).await;
                    match network {
                        Ok(Some(network)) => Some(network.config().pod_cidr.to_string()),
                        Ok(None) => return Ok(()),
                        Err(_) => {
                            warn!("the pod network is not ready; registering without a pod CIDR");
                            None
                        }
                    }
                }
            };
            let user = format!("{NODE_USER_PREFIX}{}", settings.node_name);
            let client = match &settings.access {
                ApiAccess::Local { ca_key } => {
                    let Some(api) = api else {
                        return Err(ServiceError::Fatal(
                            "a control plane's agent needs its API server".into(),
                        ));
                    };
                    let Some(addr) = wait_for(&ctx, || api.addr()).await else {
                        return Ok(());
                    };
                    let ca = Ca::from_pem(&settings.ca_cert, ca_key)
                        .map_err(|e| ServiceError::Fatal(format!("cluster CA unusable: {e}")))?;
                    kube_client::issued(
                        &ca,
                        &settings.cluster_name,
                        &format!("https://{addr}"),
                        &user,
                        Some(NODES_GROUP),
                    )
                    .await?
                }
                ApiAccess::Remote {
                    endpoint,
                    cert,
                    key,
                } => {
                    kube_client::with_certificate(
                        &settings.ca_cert,
                        &settings.cluster_name,
                        endpoint,
                        &user,
                        cert,
                        key,
                    )
                    .await?
                }
            };
            let kubelet_version = cairn_apiserver::discovery::version()["gitVersion"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let mut facts = NodeFacts::detect(
                &settings.node_name,
                settings.control_plane,
                settings.addresses.clone(),
                pod_cidr,
                &kubelet_version,
                &format!("Cairn {}", env!("CARGO_PKG_VERSION")),
            );
            facts.machine_api_port = Some(machine_api.port());
            info!(node = %settings.node_name, pod_cidr = ?facts.pod_cidr, "node agent starts");
            // A worker's pod network runs beside the agent, with its client, and
            // ends with it.
            let worker_network = async {
                if let AgentPodNetwork::Worker(settings, slot) = pod_network {
                    podnet::run_on_worker(client.clone(), settings, slot, ctx.shutdown.clone())
                        .instrument(info_span!("podnet"))
                        .await
                } else {
                    Ok(())
                }
            };
            let agent = cairn_agent::run(
                client.clone(),
                Arc::clone(&runtime),
                AgentSettings::new(facts, STATIC_PREFIX),
                ctx.shutdown.clone(),
            );
            let ((), network) = futures::join!(agent, worker_network);
            network
        }
        .boxed()
    }
}

/// Polls `get` until it gives something; `None` when the service is asked to stop first.
async fn wait_for<T>(ctx: &ServiceContext, mut get: impl FnMut() -> Option<T>) -> Option<T> {
    loop {
        if let Some(value) = get() {
            return Some(value);
        }
        tokio::select! {
            () = ctx.shutdown.cancelled() => return None,
            () = tokio::time::sleep(WAIT_STEP) => {}
        }
    }
}
