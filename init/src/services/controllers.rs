//! `controllers`: the reconciliation controllers (`cairn-controllers`) on control-plane
//! nodes. Every control plane campaigns for the `kube-system/kube-controller-manager`
//! Lease; the holder runs the controllers against its own API server as
//! `system:kube-controller-manager`, with a client certificate it issues itself from
//! the cluster CA, and another control plane takes over when the holder dies.

use std::time::Duration;

use cairn_api::pki::Ca;
use cairn_apiserver::rbac::CONTROLLER_MANAGER_USER;
use cairn_controllers::{CONTROLLERS_LEASE, ControllerOptions};
use cairn_leader::ElectionOptions;
use futures::FutureExt;
use futures::future::BoxFuture;
use tracing::info;

use crate::services::apiserver::ApiServerHandle;
use crate::services::kube_client;
use crate::services::scheduler::SchedulerSettings;
use crate::supervisor::{Service, ServiceContext, ServiceError};

/// The controllers service (its settings are the scheduler's: a name and the CA).
pub struct ControllersService {
    settings: SchedulerSettings,
    api: ApiServerHandle,
}

impl ControllersService {
    /// Controllers for the control plane of `settings`, clients of the API server
    /// published in `api`.
    pub fn new(settings: SchedulerSettings, api: ApiServerHandle) -> Self {
        Self { settings, api }
    }
}

impl Service for ControllersService {
    fn name(&self) -> &str {
        "controllers"
    }

    fn run(&self, ctx: ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>> {
        let settings = self.settings.clone();
        let api = self.api.clone();
        async move {
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
                CONTROLLER_MANAGER_USER,
                None,
            )
            .await?;
            info!(api = %addr, "controllers campaigning for the {CONTROLLERS_LEASE} lease");
            let instance = settings.node_name.clone();
            cairn_leader::lead(
                client.clone(),
                ElectionOptions::new("kube-system", CONTROLLERS_LEASE, &settings.node_name),
                ctx.shutdown.clone(),
                move |term| {
                    cairn_controllers::run(
                        client.clone(),
                        ControllerOptions {
                            instance: instance.clone(),
                            ..ControllerOptions::default()
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
