//! Leader-elected control-plane services: the `scheduler` and the `controllers`. Every
//! control plane runs both; each campaigns for its own `kube-system` Lease (named as
//! kube-scheduler's and kube-controller-manager's are), and only the holder does the
//! work, against its own node's API server, as its own user with a client certificate
//! it issues itself from the cluster CA. Another control plane takes over when the
//! holder dies (`cairn-leader`). The controllers' holder also runs the node IPAM,
//! which gives workers their pod CIDRs ([`podnet::allocate_node_cidrs`]).

use std::sync::Arc;
use std::time::Duration;

use cairn_api::MachineConfig;
use cairn_api::machine_config::NodeLifecycleSpec;
use cairn_api::pki::Ca;
use cairn_apiserver::rbac::{CONTROLLER_MANAGER_USER, SCHEDULER_USER};
use cairn_controllers::{CONTROLLERS_LEASE, ControllerOptions};
use cairn_leader::ElectionOptions;
use cairn_scheduler::SchedulerOptions;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::services::apiserver::ApiServerSetupError;
use crate::services::kube_client;
use crate::services::listen::ListenAddress;
use crate::services::podnet::{self, NodeIpam};
use crate::supervisor::{Service, ServiceContext, ServiceError};

/// The scheduler's leader-election Lease, in `kube-system`, as kube-scheduler names it.
pub const SCHEDULER_LEASE: &str = "kube-scheduler";

/// What a leader-elected service needs from the machine config.
#[derive(Clone)]
pub struct ControlPlaneSettings {
    /// This node's name: its identity in the Lease and in events.
    pub node_name: String,
    /// The cluster CA certificate (PEM).
    pub ca_cert: String,
    /// The cluster CA key (PEM), to issue the service's client certificate.
    pub ca_key: String,
    /// `cluster.nodeLifecycle`, defaulted.
    pub node_lifecycle: NodeLifecycleSpec,
}

impl ControlPlaneSettings {
    /// The settings of a control plane named `node_name` with `config`.
    pub fn from_config(
        config: &MachineConfig,
        node_name: &str,
    ) -> Result<Self, ApiServerSetupError> {
        let ca_key = config
            .machine
            .certs
            .ca
            .key
            .clone()
            .ok_or(ApiServerSetupError::NoCaKey)?;
        Ok(Self {
            node_name: node_name.to_owned(),
            ca_cert: config.machine.certs.ca.crt.clone(),
            ca_key,
            node_lifecycle: config
                .cluster
                .as_ref()
                .and_then(|c| c.node_lifecycle.clone())
                .unwrap_or_default(),
        })
    }
}

/// The work a leader does while its term lasts: given its API client and this node's
/// name, it runs until the term's token fires.
type Work =
    Arc<dyn Fn(kube::Client, String, CancellationToken) -> BoxFuture<'static, ()> + Send + Sync>;

/// A service that campaigns for `lease` and runs its work while it holds it.
pub struct LeaderElectedService {
    name: &'static str,
    user: &'static str,
    lease: &'static str,
    settings: ControlPlaneSettings,
    api: ListenAddress,
    work: Work,
}

impl LeaderElectedService {
    /// The `scheduler` service: `cairn-scheduler` as `system:kube-scheduler`.
    pub fn scheduler(settings: ControlPlaneSettings, api: ListenAddress) -> Self {
        Self {
            name: "scheduler",
            user: SCHEDULER_USER,
            lease: SCHEDULER_LEASE,
            settings,
            api,
            work: Arc::new(|client, instance, term| {
                let options = SchedulerOptions {
                    instance,
                    ..SchedulerOptions::default()
                };
                cairn_scheduler::run(client, options, term).boxed()
            }),
        }
    }

    /// The `controllers` service: `cairn-controllers` as
    /// `system:kube-controller-manager`, with the node IPAM when the cluster has a
    /// pod network.
    pub fn controllers(
        settings: ControlPlaneSettings,
        api: ListenAddress,
        node_ipam: Option<NodeIpam>,
    ) -> Self {
        let lifecycle = settings.node_lifecycle.clone();
        let root_ca = settings.ca_cert.clone();
        Self {
            name: "controllers",
            user: CONTROLLER_MANAGER_USER,
            lease: CONTROLLERS_LEASE,
            settings,
            api,
            work: Arc::new(move |client, instance, term| {
                let options = ControllerOptions {
                    instance,
                    node_grace: Duration::from_secs(lifecycle.grace_period_seconds()),
                    eviction_timeout: Duration::from_secs(lifecycle.eviction_seconds()),
                    root_ca: Some(root_ca.clone()),
                    ..ControllerOptions::default()
                };
                let ipam = node_ipam
                    .clone()
                    .map(|ipam| podnet::allocate_node_cidrs(client.clone(), ipam, term.clone()));
                let controllers = cairn_controllers::run(client, options, term);
                async move {
                    match ipam {
                        Some(ipam) => {
                            futures::join!(controllers, ipam);
                        }
                        None => controllers.await,
                    }
                }
                .boxed()
            }),
        }
    }
}

impl Service for LeaderElectedService {
    fn name(&self) -> &str {
        self.name
    }

    fn run(&self, ctx: ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>> {
        let settings = self.settings.clone();
        let api = self.api.clone();
        let (name, user, lease) = (self.name, self.user, self.lease);
        let work = self.work.clone();
        async move {
            // The API server on this node starts first; wait until it serves.
            let addr = loop {
                if let Some(addr) = api.addr() {
                    break addr;
                }
                tokio::select! {
                    () = ctx.shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            };
            let ca = Ca::from_pem(&settings.ca_cert, &settings.ca_key)
                .map_err(|e| ServiceError::Fatal(format!("cluster CA unusable: {e}")))?;
            let client =
                kube_client::issued(&ca, "cairn", &format!("https://{addr}"), user, None).await?;
            info!(service = name, api = %addr, %lease, "campaigning for the lease");
            let instance = settings.node_name.clone();
            cairn_leader::lead(
                client.clone(),
                ElectionOptions::new("kube-system", lease, &settings.node_name),
                ctx.shutdown.clone(),
                move |term| work(client.clone(), instance.clone(), term),
            )
            .await;
            Ok(())
        }
        .boxed()
    }
}
