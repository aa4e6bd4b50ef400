//! `store`: the replicated store on control-plane nodes. It listens for Raft and
//! client traffic on port 50001 (mutual TLS with `cairn:node` certificates the node
//! issues itself from the cluster CA), keeps its data under the state directory, and
//! joins the other control planes named in `cluster.controlPlanes` until one of them
//! has been bootstrapped (`cairnctl bootstrap`, once per cluster).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cairn_api::MachineConfig;
use cairn_api::pki::Ca;
use cairn_store::node::{CompactionPolicy, NodeOptions, StoreNode, default_raft_config};
use cairn_store::tcp::{TcpNetwork, TransportTls, serve};
use futures::FutureExt;
use futures::future::BoxFuture;
use openraft::BasicNode;
use tracing::{info, warn};

use crate::supervisor::{Service, ServiceContext, ServiceError};

/// The store's port.
pub const STORE_PORT: u16 = 50001;

/// The running store node, once the service has started it (the machine API reads it).
#[derive(Clone, Default)]
pub struct StoreHandle {
    node: Arc<RwLock<Option<Arc<StoreNode>>>>,
}

impl StoreHandle {
    /// The node, if the store runs.
    pub fn get(&self) -> Option<Arc<StoreNode>> {
        self.node.read().ok().and_then(|n| n.clone())
    }

    fn set(&self, node: Option<Arc<StoreNode>>) {
        if let Ok(mut slot) = self.node.write() {
            *slot = node;
        }
    }
}

/// What the store service needs from the machine config and the host.
#[derive(Clone)]
pub struct StoreSettings {
    /// Data directory.
    pub dir: PathBuf,
    /// Where to listen.
    pub listen: SocketAddr,
    /// The address others dial, if known before binding (else the bound address).
    pub advertise: Option<String>,
    /// Other control planes to join through (`host:port`).
    pub join: Vec<String>,
    /// The cluster token.
    pub token: String,
    /// The cluster CA certificate (PEM).
    pub ca_cert: String,
    /// The cluster CA key (PEM), to issue the node's store certificate.
    pub ca_key: String,
    /// This node's names for the certificate.
    pub names: Vec<String>,
    /// History kept when the leader compacts (`cluster.store`).
    pub compaction: CompactionPolicy,
}

/// Why the store cannot run on this node.
#[derive(Debug, thiserror::Error)]
pub enum StoreSetupError {
    /// The config has no cluster section.
    #[error("a control plane needs a cluster section (token, control planes)")]
    NoCluster,
    /// The config has no CA key to issue the store certificate with.
    #[error("machine.certs.ca.key is needed on a control plane to issue its store certificate")]
    NoCaKey,
}

impl StoreSettings {
    /// The settings of a control plane with `config`, its data under `state_dir`.
    pub fn from_config(
        config: &MachineConfig,
        state_dir: &Path,
        listen: SocketAddr,
        names: Vec<String>,
    ) -> Result<Self, StoreSetupError> {
        let cluster = config.cluster.as_ref().ok_or(StoreSetupError::NoCluster)?;
        let ca_key = config
            .machine
            .certs
            .ca
            .key
            .clone()
            .ok_or(StoreSetupError::NoCaKey)?;
        let own: Vec<String> = config
            .interfaces()
            .unwrap_or_default()
            .iter()
            .flat_map(|i| i.addresses.iter().map(|a| a.addr().to_string()))
            .collect();
        let advertise = own
            .iter()
            .find(|a| cluster.control_planes.contains(a))
            .or(own.first())
            .map(|ip| join_host_port(ip, listen.port()));
        let join = cluster
            .control_planes
            .iter()
            .filter(|cp| !own.contains(cp))
            .map(|cp| join_host_port(cp, STORE_PORT))
            .collect();
        Ok(Self {
            dir: state_dir.join("store"),
            listen,
            // Ephemeral ports (tests) are known only after binding.
            advertise: if listen.port() == 0 { None } else { advertise },
            join,
            token: cluster.token.clone(),
            ca_cert: config.machine.certs.ca.crt.clone(),
            ca_key,
            names,
            compaction: {
                let store = cluster.store.clone().unwrap_or_default();
                CompactionPolicy {
                    window: store.compaction_window(),
                    interval: std::time::Duration::from_secs(store.compaction_interval_seconds()),
                }
            },
        })
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The node's id in the store group: random on first start, kept in `dir/node-id`.
fn node_id(dir: &Path) -> std::io::Result<u64> {
    let file = dir.join("node-id");
    if let Ok(text) = std::fs::read_to_string(&file)
        && let Ok(id) = text.trim().parse()
    {
        return Ok(id);
    }
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| std::io::Error::other("no randomness for the node id"))?;
    // Ids stay positive and readable in logs.
    let id = u64::from_le_bytes(bytes) >> 12 | 1;
    crate::config_manager::write_atomically(&file, id.to_string().as_bytes())?;
    Ok(id)
}

/// The store service.
pub struct StoreService {
    settings: StoreSettings,
    handle: StoreHandle,
}

impl StoreService {
    /// A service running the store with `settings`, publishing it in `handle`.
    pub fn new(settings: StoreSettings, handle: StoreHandle) -> Self {
        Self { settings, handle }
    }
}

impl Service for StoreService {
    fn name(&self) -> &str {
        "store"
    }

    fn run(&self, ctx: ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>> {
        let settings = self.settings.clone();
        let handle = self.handle.clone();
        async move {
            std::fs::create_dir_all(&settings.dir)
                .map_err(|e| ServiceError::failed(format!("cannot create {}", settings.dir.display()), e))?;
            let id = node_id(&settings.dir).map_err(|e| ServiceError::failed("cannot keep the store node id", e))?;
            let ca = Ca::from_pem(&settings.ca_cert, &settings.ca_key)
                .map_err(|e| ServiceError::Fatal(format!("cluster CA unusable: {e}")))?;
            let cert = ca
                .issue_node(&format!("store-{id}"), &settings.names, ::time::Duration::days(365))
                .map_err(|e| ServiceError::Fatal(format!("cannot issue the store certificate: {e}")))?;
            let tls = Arc::new(
                TransportTls::new(&settings.ca_cert, &cert.cert_pem, &cert.key_pem)
                    .map_err(|e| ServiceError::Fatal(e.to_string()))?,
            );
            let listener = crate::api_server::bind(settings.listen)
                .await
                .map_err(|e| ServiceError::failed(format!("cannot listen on {}", settings.listen), e))?;
            let bound = listener
                .local_addr()
                .map_err(|e| ServiceError::failed("no local address", e))?;
            let advertise = settings.advertise.clone().unwrap_or_else(|| bound.to_string());
            let network = TcpNetwork::new(Arc::clone(&tls));
            let node = StoreNode::start(
                NodeOptions {
                    id,
                    addr: advertise.clone(),
                    dir: settings.dir.clone(),
                    token: settings.token.clone(),
                    raft: default_raft_config(),
                    peers: settings.join.clone(),
                    compaction: Some(settings.compaction),
                },
                network.clone(),
                Arc::new(network),
            )
            .await
            .map_err(|e| ServiceError::failed("cannot start the store", e))?;
            handle.set(Some(Arc::clone(&node)));
            info!(id, address = %advertise, listen = %bound, "store listening");
            let serving = tokio::spawn(serve(listener, tls, Arc::clone(&node), ctx.shutdown.clone()));

            // Join until this node is a voter: being a learner (initialized) is not
            // enough, the promotion may have been refused while another was under way.
            if !settings.join.is_empty() && !node.is_voter() {
                let joining = Arc::clone(&node);
                let peers = settings.join.clone();
                let stop = ctx.shutdown.clone();
                tokio::spawn(async move {
                    loop {
                        for peer in &peers {
                            if joining.is_voter() {
                                return;
                            }
                            match joining.join(0, &BasicNode { addr: peer.clone() }).await {
                                Ok(()) => {
                                    info!(via = %peer, "store joined the cluster");
                                    return;
                                }
                                Err(err) => tracing::debug!(via = %peer, error = %err, "store join not possible yet"),
                            }
                        }
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(2)) => {}
                        }
                    }
                });
            }

            ctx.shutdown.cancelled().await;
            handle.set(None);
            let _ = serving.await;
            node.shutdown().await;
            if Arc::strong_count(&node) > 1 {
                warn!("store node still referenced at shutdown");
            }
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = node_id(dir.path()).unwrap();
        assert_eq!(node_id(dir.path()).unwrap(), first);
        assert_ne!(first, 0);
    }

    #[test]
    fn settings_advertise_the_address_listed_as_a_control_plane_and_join_the_others() {
        let secrets = cairn_api::bundle::Secrets::generate("t").unwrap();
        let config = secrets
            .machine_config(&cairn_api::bundle::NodeSpec {
                machine_type: cairn_api::machine_config::MachineType::Controlplane,
                hostname: "cp-2".into(),
                addresses: vec!["10.5.0.3/24".into()],
                endpoint: "https://10.5.0.2:6443".into(),
                control_planes: vec!["10.5.0.2".into(), "10.5.0.3".into(), "10.5.0.4".into()],
                install_disk: None,
            })
            .unwrap();
        let settings = StoreSettings::from_config(
            &config,
            Path::new("/var/lib/cairn"),
            SocketAddr::from(([0, 0, 0, 0], STORE_PORT)),
            vec![],
        )
        .unwrap();
        assert_eq!(settings.advertise.as_deref(), Some("10.5.0.3:50001"));
        assert_eq!(settings.join, ["10.5.0.2:50001", "10.5.0.4:50001"]);
        assert_eq!(settings.dir, PathBuf::from("/var/lib/cairn/store"));
    }
}
