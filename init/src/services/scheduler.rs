//! `scheduler`: the pod scheduler on control-plane nodes. Every control plane campaigns
//! for the `kube-system/kube-scheduler` Lease; the holder runs the scheduler against its
//! own API server, as `system:kube-scheduler` with a client certificate it issues itself
//! from the cluster CA, and another control plane takes over when the holder dies.

use std::time::Duration;

use cairn_api::MachineConfig;
use cairn_api::pki::Ca;
use cairn_apiserver::rbac::SCHEDULER_USER;
use cairn_leader::ElectionOptions;
use cairn_scheduler::SchedulerOptions;
use futures::FutureExt;
use futures::future::BoxFuture;
use tracing::info;

use crate::services::apiserver::{ApiServerHandle, ApiServerSetupError};
use crate::services::kube_client;
use crate::supervisor::{Service, ServiceContext, ServiceError};

/// The scheduler's leader-election Lease, in `kube-system`, as kube-scheduler names it.
pub const SCHEDULER_LEASE: &str = "kube-scheduler";

/// What the scheduler service needs from the machine config.
#[derive(Clone)]
pub struct SchedulerSettings {
    /// This node's name: its identity in the Lease and in events.
    pub node_name: String,
    /// The cluster CA certificate (PEM).
    pub ca_cert: String,
    /// The cluster CA key (PEM), to issue the scheduler's client certificate.
    pub ca_key: String,
}

impl SchedulerSettings {
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
        })
    }
}

/// The scheduler service.
pub struct SchedulerService {
    settings: SchedulerSettings,
    api: ApiServerHandle,
}

impl SchedulerService {
    /// A scheduler with `settings`, a client of the API server published in `api`.
    pub fn new(settings: SchedulerSettings, api: ApiServerHandle) -> Self {
        Self { settings, api }
    }
}

impl Service for SchedulerService {
    fn name(&self) -> &str {
        "scheduler"
    }

    fn run(&self, ctx: ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>> {
        let settings = self.settings.clone();
        let api = self.api.clone();
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
            let client = kube_client::issued(
                &ca,
                "cairn",
                &format!("https://{addr}"),
                SCHEDULER_USER,
                None,
            )
            .await?;
            info!(api = %addr, "scheduler campaigning for the {SCHEDULER_LEASE} lease");
            let node_name = settings.node_name.clone();
            cairn_leader::lead(
                client.clone(),
                ElectionOptions::new("kube-system", SCHEDULER_LEASE, &settings.node_name),
                ctx.shutdown.clone(),
                move |term| {
                    cairn_scheduler::run(
                        client.clone(),
                        SchedulerOptions {
                            instance: node_name.clone(),
                            ..SchedulerOptions::default()
                        },
                        term,
                    )
                },
            )
            .await;
            Ok(())
        }
        .boxed()
    }
}
