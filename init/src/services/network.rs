//! `network`: the network reconciler on a node running as PID 1. It keeps the links,
//! addresses and routes of the running machine config in place (a pass on every
//! netlink change, and every second), repairs drift, and publishes what it sees for
//! `GET /v1/network` (`cairnctl get links|addresses|routes`). Boot has made the first
//! pass through the same reconciler (see [`NetworkHandle`]); live apply-config makes
//! one with the new config before it is accepted.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use cairn_api::MachineConfig;
use cairn_api::machine_api::NetworkStatus;
use cairn_api::machine_config::Interface;
use cairn_net::Netlink;
use cairn_net::dhcp::LeaseBoard;
use cairn_net::monitor::ChangeMonitor;
use cairn_net::reconcile::{Reconciler, layered_spec};
use futures::FutureExt;
use futures::future::BoxFuture;
use tracing::{info, warn};

use crate::config_manager::ConfigManager;
use crate::supervisor::{Service, ServiceContext, ServiceError};

/// How often a pass runs without any netlink change (config changes, links that
/// appear late).
const RESYNC_EVERY: Duration = Duration::from_secs(1);
/// Changes arriving this close together are handled in one pass.
const SETTLE: Duration = Duration::from_millis(20);

/// The node's one network reconciler and what it last saw, shared by the boot's
/// network phase (the first pass), live `apply-config` (a pass with the new config, its
/// problems refusing it) and the `network` service (every pass after); `GET
/// /v1/network` reads the status. A handle on a hosted node is never used.
#[derive(Clone, Default)]
pub struct NetworkHandle {
    status: Arc<RwLock<Option<NetworkStatus>>>,
    reconciler: Arc<tokio::sync::Mutex<Option<Reconciler>>>,
    cmdline: Arc<RwLock<Option<Interface>>>,
    leases: LeaseBoard,
}

impl NetworkHandle {
    /// The last status.
    pub fn get(&self) -> Option<NetworkStatus> {
        self.status.read().ok().and_then(|s| s.clone())
    }

    fn set(&self, status: NetworkStatus) {
        if let Ok(mut slot) = self.status.write() {
            *slot = Some(status);
        }
    }

    /// Where the DHCP clients post their leases (a layer of the spec).
    pub fn leases(&self) -> &LeaseBoard {
        &self.leases
    }

    /// Sets the kernel command line's layer (`cairn.ip=`).
    pub fn set_cmdline(&self, interface: Option<Interface>) {
        if let Ok(mut slot) = self.cmdline.write() {
            *slot = interface;
        }
    }

    /// One reconciler pass towards `config` (layered with the command line and the
    /// leases); the status it leaves, which is also published.
    pub async fn pass(&self, config: &MachineConfig) -> Result<NetworkStatus, cairn_net::NetError> {
        let cmdline = self.cmdline.read().ok().and_then(|c| c.clone());
        let spec = layered_spec(
            cmdline.as_ref(),
            &config.interfaces().unwrap_or_default(),
            &self.leases.leases(),
        );
        let mut slot = self.reconciler.lock().await;
        let reconciler = match slot.as_mut() {
            Some(reconciler) => reconciler,
            None => slot.insert(Reconciler::new(Netlink::connect()?)),
        };
        let status = reconciler.pass(&spec).await;
        self.set(status.clone());
        Ok(status)
    }
}

/// The service.
pub struct NetworkService {
    config: Arc<ConfigManager>,
    handle: NetworkHandle,
}

impl NetworkService {
    /// A service keeping `config`'s network (and the leases posted on `handle`) in
    /// place and publishing to `handle`.
    pub fn new(config: Arc<ConfigManager>, handle: NetworkHandle) -> Self {
        Self { config, handle }
    }
}

/// What the leases gave the node last (so it is written once per change).
#[derive(Default)]
struct FromLeases {
    dns: Vec<std::net::IpAddr>,
    hostname: Option<String>,
}

impl FromLeases {
    /// Hands the leases' DNS servers and host name to the system where the config
    /// names none.
    fn apply(
        &mut self,
        config: &cairn_api::MachineConfig,
        leases: &std::collections::BTreeMap<String, cairn_net::dhcp::Lease>,
    ) {
        let dns: Vec<std::net::IpAddr> = leases
            .values()
            .flat_map(|l| l.dns.iter().map(|d| std::net::IpAddr::V4(*d)))
            .collect();
        if config.nameservers().is_empty() && !dns.is_empty() && dns != self.dns {
            match crate::live::write_resolvers(&dns) {
                Ok(()) => info!(servers = ?dns, "resolvers from DHCP"),
                Err(err) => warn!(error = %err, "resolvers from DHCP not written"),
            }
            self.dns = dns;
        }
        let hostname = leases.values().find_map(|l| l.hostname.clone());
        if config.machine.hostname.is_none() && hostname.is_some() && hostname != self.hostname {
            if let Some(name) = &hostname {
                match nix::unistd::sethostname(name) {
                    Ok(()) => info!(hostname = %name, "hostname from DHCP"),
                    Err(err) => warn!(error = %err, "hostname from DHCP not set"),
                }
            }
            self.hostname = hostname;
        }
    }
}

impl Service for NetworkService {
    fn name(&self) -> &str {
        "network"
    }

    fn run(&self, ctx: ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>> {
        let config = Arc::clone(&self.config);
        let handle = self.handle.clone();
        async move {
            let mut changes = ChangeMonitor::subscribe()
                .map_err(|e| ServiceError::failed("cannot subscribe to network changes", e))?;
            let mut said: Vec<String> = Vec::new();
            let mut from_leases = FromLeases::default();
            info!("reconciling the network");
            loop {
                let running = config.current().await;
                let status = handle
                    .pass(&running)
                    .await
                    .map_err(|e| ServiceError::failed("cannot open a netlink socket", e))?;
                from_leases.apply(&running, &handle.leases().leases());
                if status.problems != said {
                    for problem in &status.problems {
                        warn!(%problem, "network not as configured");
                    }
                    said.clone_from(&status.problems);
                }
                tokio::select! {
                    () = ctx.shutdown.cancelled() => return Ok(()),
                    changed = changes.changed() => {
                        if !changed {
                            return Err(ServiceError::Failed {
                                message: "the netlink change socket closed".into(),
                                source: None,
                            });
                        }
                        tokio::time::sleep(SETTLE).await;
                    }
                    () = handle.leases().changed() => {}
                    () = tokio::time::sleep(RESYNC_EVERY) => {}
                }
            }
        }
        .boxed()
    }
}
