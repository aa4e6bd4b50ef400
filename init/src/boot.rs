//! The boot sequence, top to bottom. Read this file first.
//!
//! ```text
//! early     mount /proc /sys /dev /dev/pts /dev/shm /run /tmp and cgroup2; /dev/kmsg logging
//! modules   load the image's kernel modules in dependency order; watch the power button
//! state     find and mount the state partition (CAIRN-STATE) if a disk has one
//! config    the saved config, else cairn.config= / fw_cfg; none or invalid: maintenance
//!           mode waits for `apply-config --insecure`; a named install disk is prepared
//! system    hostname, sysctls, extra kernel modules
//! network   loopback, links, addresses, routes, resolvers, DHCP
//! services  the machine API and the other supervised services
//! ready     one line with the time from PID 1 start to ready
//! ```
//!
//! `early`, `modules`, `system` and `network` belong to PID 1; a hosted node skips them
//! and leaves the host's settings alone. A failed phase stops the sequence: the node
//! stays up in maintenance, saying why, and serves the machine API if it has a config.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::machine_api::{PORT, Persistence};
use cairn_api::machine_config::{Interface, LinkKind, LinkSelector, MachineConfig};
use cairn_net::dhcp::{self, Lease};
use cairn_net::{Link, NetError, Netlink, interfaces};
use futures::FutureExt;
use futures::future::BoxFuture;
use ipnet::IpNet;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::api_server::{MachineApiService, NodeContext, TlsState};
use crate::cmdline::KernelCmdline;
use crate::config_manager::{self, ConfigManager};
use crate::config_source::{self, ConfigSource, ConfigSourceError, RawConfig};
use crate::host::Host;
use crate::live::{self, LiveError, NodeLive};
use crate::logging::LogHandles;
use crate::maintenance;
use crate::modules::{self, ModuleReport};
use crate::mounts::{self, MountError};
use crate::phase::{NodeState, PhaseFailure, Phases, millis};
use crate::power::{self, PowerRequest};
use crate::services::agent::{AgentPodNetwork, AgentService, AgentServiceSettings};
use crate::services::apiserver::{ApiServerService, ApiServerSettings};
use crate::services::leader_elected::{ControlPlaneSettings, LeaderElectedService};
use crate::services::listen::ListenAddress;
use crate::services::network::{NetworkHandle, NetworkService};
use crate::services::podnet::{NodeIpam, PodNetService, PodNetSettings};
use crate::services::runtime::{RuntimeService, RuntimeSettings};
use crate::services::store::{StoreService, StoreSettings};
use crate::services::{self, UnknownTestService};
use crate::state_disk::{self, STATE_DIR, StateDiskError};
use crate::supervisor::{Service, ServiceContext, ServiceError, Supervisor, SupervisorError};

/// How long a configured link may take to appear (its driver may still be probing).
pub const LINK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long boot waits for a first DHCP lease before going on without one.
pub const DHCP_TIMEOUT: Duration = Duration::from_secs(15);
/// The kernel parameter naming test services to run (`cairn.test=crashloop,orphans`).
pub const TEST_SERVICES_PARAM: &str = "cairn.test";
/// The kernel parameter giving maintenance mode a static address
/// (`cairn.ip=10.5.0.9/24[,gw=10.5.0.1][,dev=eth0]`); DHCP on every link otherwise.
pub const IP_PARAM: &str = "cairn.ip";

/// Settings of a node that do not come from its machine config.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The machine config file of a hosted node.
    pub config_file: Option<PathBuf>,
    /// Test services to run besides the built-in ones.
    pub test_services: Vec<String>,
    /// Where the machine API listens.
    pub api_listen: SocketAddr,
    /// Where a hosted node keeps its state (PID 1 finds its state partition).
    pub state_dir: Option<PathBuf>,
    /// Where the store listens on a control plane.
    pub store_listen: SocketAddr,
    /// Where the Kubernetes API server listens on a control plane.
    pub kube_api_listen: SocketAddr,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            config_file: None,
            test_services: Vec::new(),
            api_listen: SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, PORT)),
            state_dir: None,
            store_listen: SocketAddr::from((
                std::net::Ipv6Addr::UNSPECIFIED,
                crate::services::store::STORE_PORT,
            )),
            kube_api_listen: SocketAddr::from((
                std::net::Ipv6Addr::UNSPECIFIED,
                crate::services::apiserver::APISERVER_PORT,
            )),
        }
    }
}

/// Everything the boot phases use.
pub struct BootContext {
    /// PID 1 or hosted.
    pub host: Host,
    /// Settings from `cairn node`'s command line.
    pub options: NodeOptions,
    /// The logger's handles.
    pub logs: LogHandles,
    /// Runs the services.
    pub supervisor: Supervisor,
    /// Where power requests are sent.
    pub power_requests: mpsc::UnboundedSender<PowerRequest>,
    /// The boot record.
    pub state: NodeState,
    /// The store, once it runs (control planes).
    pub store: crate::services::store::StoreHandle,
    /// The container runtime, once it runs.
    pub runtime: crate::services::runtime::RuntimeHandle,
    /// The network reconciler's status, once it runs (PID 1).
    pub network: crate::services::network::NetworkHandle,
    /// Where the machine API can be dialled, once it listens.
    pub machine_api: ListenAddress,
    /// When the process started.
    pub started: Instant,
}

/// The node reached ready.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    /// From process start to ready.
    pub elapsed: Duration,
    /// Of which spent loading modules (with the drivers' probing).
    pub modules: Duration,
}

/// What the config phase settled.
struct Settled {
    config: MachineConfig,
    state_dir: Option<PathBuf>,
    persistence: Persistence,
}

/// Runs every phase in order; the first failure ends boot (the machine API is still
/// started if a config is known, so the node can be fixed remotely).
pub async fn boot(ctx: &BootContext, phases: &Phases<'_>) -> Result<Ready, PhaseFailure> {
    let mut modules_elapsed = Duration::ZERO;
    let mut cmdline = KernelCmdline::default();
    let mut state_partition = None;
    match &ctx.host {
        Host::Pid1 { sys } => {
            cmdline = phases.run("early", early(ctx, sys.as_ref())).await?;
            let report = phases
                .run("modules", load_modules(ctx, sys.as_ref()))
                .await?;
            modules_elapsed = report.elapsed;
            state_partition = phases.run("state", mount_state(sys.as_ref())).await?;
        }
        Host::Hosted => {
            phases.skip("early", "hosted node: the host has mounted its filesystems");
            phases.skip("modules", "hosted node: the host loads its modules");
            phases.skip("state", "hosted node: state lives in --state-dir, if given");
        }
    }
    let settled = phases
        .run("config", settle_config(ctx, &cmdline, state_partition))
        .await?;
    let config = &settled.config;

    let rest = async {
        if ctx.host.is_pid1() {
            phases.run("system", apply_system(ctx, config)).await?;
            let leases = phases
                .run("network", configure_network(config, &cmdline, &ctx.network))
                .await?;
            Ok::<_, PhaseFailure>(leases)
        } else {
            phases.skip(
                "system",
                "hosted node: the host's hostname and sysctls stay",
            );
            phases.skip(
                "network",
                "hosted node: the host's links, addresses and routes stay",
            );
            Ok(Vec::new())
        }
    }
    .await;
    let leases = match rest {
        Ok(leases) => leases,
        Err(failure) => {
            if let Err(err) = start_machine_api(ctx, &settled).await {
                warn!(error = %crate::error_chain(&err), "machine API not started");
            }
            return Err(failure);
        }
    };
    let mut test_services = ctx.options.test_services.clone();
    test_services.extend(cmdline.list(TEST_SERVICES_PARAM));
    phases
        .run(
            "services",
            start_services(ctx, &settled, leases, &test_services),
        )
        .await?;

    let ready = Ready {
        elapsed: ctx.started.elapsed(),
        modules: modules_elapsed,
    };
    info!(
        elapsed_ms = millis(ready.elapsed),
        modules_ms = millis(ready.modules),
        without_modules_ms = millis(ready.elapsed.saturating_sub(ready.modules)),
        rss_kib = resident_kib().unwrap_or(0),
        "ready"
    );
    Ok(ready)
}

/// Why the early phase failed.
#[derive(Debug, thiserror::Error)]
pub enum EarlyError {
    /// A mount failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// `/proc/cmdline` is unreadable.
    #[error("cannot read /proc/cmdline")]
    Cmdline(#[source] std::io::Error),
}

/// Mounts the early filesystems, turns on `/dev/kmsg` logging and cgroup controllers,
/// and returns the kernel command line (readable now that `/proc` is mounted).
async fn early(
    ctx: &BootContext,
    sys: &dyn crate::sys::Syscalls,
) -> Result<KernelCmdline, EarlyError> {
    let mounted = mounts::mount_early(sys)?;
    debug!(?mounted, "early filesystems mounted");
    let cmdline = KernelCmdline::parse(
        &sys.read_to_string(Path::new("/proc/cmdline"))
            .map_err(EarlyError::Cmdline)?,
    );
    match ctx.logs.kmsg.open() {
        Ok(()) => {
            // Our records must not be rate-limited, and must not be echoed to the
            // console a second time (we write the console ourselves), unless the user
            // asked the kernel for a verbose console.
            let _ = sys.write(Path::new("/proc/sys/kernel/printk_devkmsg"), "on\n");
            if !["loglevel", "debug", "ignore_loglevel"]
                .iter()
                .any(|p| cmdline.has(p))
            {
                let _ = sys.write(Path::new("/proc/sys/kernel/printk"), "4\n");
            }
        }
        Err(err) => warn!(error = %err, "no /dev/kmsg; logging to the console only"),
    }
    let controllers = mounts::enable_cgroup_controllers(sys)?;
    info!(
        controllers = controllers.join(" "),
        "cgroup controllers enabled for children"
    );
    Ok(cmdline)
}

/// Why the modules phase failed (only an unreadable kernel release does).
#[derive(Debug, thiserror::Error)]
#[error("cannot read the kernel release from /proc/sys/kernel/osrelease")]
pub struct ModulesError(#[source] std::io::Error);

fn modules_dir(sys: &dyn crate::sys::Syscalls) -> Result<PathBuf, ModulesError> {
    let release = sys
        .read_to_string(Path::new("/proc/sys/kernel/osrelease"))
        .map_err(ModulesError)?;
    Ok(Path::new("/lib/modules").join(release.trim()))
}

async fn load_modules(
    ctx: &BootContext,
    sys: &dyn crate::sys::Syscalls,
) -> Result<ModuleReport, ModulesError> {
    let dir = modules_dir(sys)?;
    let report = match modules::load_all(sys, &dir) {
        Ok(report) => report,
        Err(err) => {
            warn!(dir = %dir.display(), error = %err, "no module index; loading no modules");
            ModuleReport::default()
        }
    };
    info!(
        loaded = report.loaded.len(),
        already_loaded = report.already_loaded.len(),
        failed = report.failed.len(),
        skipped = report.skipped.len(),
        elapsed_ms = millis(report.elapsed),
        "modules"
    );
    let buttons = power::watch_power_buttons(ctx.power_requests.clone());
    if buttons == 0 {
        warn!("no ACPI power button found; power off with SIGTERM/SIGPWR instead");
    }
    Ok(report)
}

/// Mounts an existing state partition, if a disk has one.
async fn mount_state(sys: &dyn crate::sys::Syscalls) -> Result<Option<PathBuf>, StateDiskError> {
    match state_disk::find_state_partition(Path::new("/sys/class/block")) {
        Some(device) => {
            state_disk::mount_state(sys, &device)?;
            info!(device = %device.display(), mount = STATE_DIR, "state partition mounted");
            Ok(Some(device))
        }
        None => {
            info!("no state partition on any disk (yet)");
            Ok(None)
        }
    }
}

/// Why the config phase failed.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    /// Maintenance mode could not start.
    #[error(transparent)]
    Maintenance(#[from] maintenance::MaintenanceError),
    /// The install disk could not be prepared.
    #[error(transparent)]
    Disk(#[from] StateDiskError),
    /// The saved config could not be read.
    #[error("cannot read the saved config in {0}")]
    Saved(String, #[source] std::io::Error),
    /// The accepted config could not be saved.
    #[error("cannot save the config on the state partition")]
    Save(#[source] std::io::Error),
}

async fn settle_config(
    ctx: &BootContext,
    cmdline: &KernelCmdline,
    state_partition: Option<PathBuf>,
) -> Result<Settled, SettleError> {
    let mut state_dir = match (&ctx.host, &ctx.options.state_dir) {
        (Host::Pid1 { .. }, _) => state_partition.as_ref().map(|_| PathBuf::from(STATE_DIR)),
        (Host::Hosted, Some(dir)) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| SettleError::Saved(dir.display().to_string(), e))?;
            Some(dir.clone())
        }
        (Host::Hosted, None) => None,
    };
    let mut from_state = false;
    let found = match &state_dir {
        Some(dir) => match config_manager::load_saved(dir)
            .map_err(|e| SettleError::Saved(dir.display().to_string(), e))?
        {
            Some((text, promoted)) => {
                if promoted {
                    info!("the staged config becomes the running config");
                }
                from_state = true;
                Ok(RawConfig {
                    source: ConfigSource::File(dir.join(config_manager::CONFIG_FILE)),
                    text,
                })
            }
            None => find_raw_config(ctx, cmdline),
        },
        None => find_raw_config(ctx, cmdline),
    };
    let parsed = found.and_then(|raw| {
        let config = raw.parse()?;
        Ok((raw, config))
    });
    let config = match parsed {
        Ok((raw, config)) => {
            info!(
                source = %raw.source,
                machine_type = %config.machine.machine_type,
                hostname = config.machine.hostname.as_deref().unwrap_or("(kernel default)"),
                "machine config accepted"
            );
            config
        }
        Err(why) => {
            let reason = crate::error_chain(&why);
            warn!(%reason, "maintenance: waiting for a machine config");
            let names = if ctx.host.is_pid1() {
                maintenance_network(cmdline).await
            } else {
                Vec::new()
            };
            let names = crate::api_server::certificate_names("cairn-maintenance", &names);
            maintenance::wait_for_config(ctx.options.api_listen, &names, &reason, &ctx.state)
                .await?
        }
    };
    // A disk named by the config becomes the state partition on first boot.
    let mut device = state_partition;
    if let (Host::Pid1 { sys }, None, Some(install)) = (&ctx.host, &device, &config.machine.install)
    {
        let partition = state_disk::install(Path::new(&install.disk))?;
        state_disk::mount_state(sys.as_ref(), &partition)?;
        device = Some(partition);
        state_dir = Some(PathBuf::from(STATE_DIR));
    }
    if let Some(dir) = &state_dir
        && !from_state
    {
        let text = config
            .to_yaml()
            .map_err(|e| SettleError::Save(std::io::Error::other(e.to_string())))?;
        config_manager::write_atomically(&dir.join(config_manager::CONFIG_FILE), text.as_bytes())
            .map_err(SettleError::Save)?;
    }
    let persistence = match (&state_dir, &device) {
        (Some(dir), Some(device)) => Persistence::Disk {
            device: device.display().to_string(),
            mount: dir.display().to_string(),
        },
        (Some(dir), None) => Persistence::Disk {
            device: "(host directory)".into(),
            mount: dir.display().to_string(),
        },
        _ => Persistence::Ephemeral,
    };
    if persistence == Persistence::Ephemeral {
        info!("no install disk: this node is ephemeral; nothing survives a reboot");
    }
    Ok(Settled {
        config,
        state_dir,
        persistence,
    })
}

fn find_raw_config(
    ctx: &BootContext,
    cmdline: &KernelCmdline,
) -> Result<RawConfig, ConfigSourceError> {
    match &ctx.host {
        Host::Pid1 { sys } => config_source::find_for_pid1(sys.as_ref(), cmdline),
        Host::Hosted => match &ctx.options.config_file {
            Some(path) => config_source::read_file(path),
            None => Err(ConfigSourceError::NotFound),
        },
    }
}

/// Gives a config-less node an address: `cairn.ip=` if given (applied now), else DHCP
/// on every Ethernet link in the background, so the maintenance API (listening on
/// every address) is up at once. Returns the addresses known now.
async fn maintenance_network(cmdline: &KernelCmdline) -> Vec<IpAddr> {
    let result: Result<Vec<IpAddr>, NetError> = async {
        let netlink = Netlink::connect()?;
        interfaces::bring_up_loopback(&netlink).await?;
        if let Some(spec) = cmdline.get(IP_PARAM) {
            match parse_ip_param(spec) {
                Some((interface, _)) => {
                    let link = interfaces::apply(&netlink, &interface, LINK_TIMEOUT).await?;
                    info!(link = %link.name, param = spec, "maintenance address from {IP_PARAM}=");
                    return Ok(interface.addresses.iter().map(|a| a.addr()).collect());
                }
                None => warn!(
                    param = spec,
                    "{IP_PARAM}= is not ADDRESS/PREFIX[,gw=IP][,dev=NAME]; using DHCP"
                ),
            }
        }
        let links: Vec<Link> = netlink
            .links()
            .await?
            .into_iter()
            .filter(|l| l.name != "lo" && l.mac.is_some())
            .collect();
        for link in links {
            netlink.set_up(&link).await?;
            let netlink = netlink.clone();
            tokio::spawn(async move {
                match dhcp::acquire(&link, DHCP_TIMEOUT).await {
                    Ok(lease) => {
                        if let Err(err) = dhcp::apply(&netlink, &link, &lease).await {
                            warn!(link = %link.name, error = %err, "cannot apply DHCP lease");
                        }
                    }
                    Err(err) => warn!(link = %link.name, error = %err, "no DHCP lease"),
                }
            });
        }
        Ok(Vec::new())
    }
    .await;
    result.unwrap_or_else(|err| {
        warn!(error = %crate::error_chain(&err), "maintenance network incomplete");
        Vec::new()
    })
}

/// Parses `ADDRESS/PREFIX[,gw=IP][,dev=NAME]` into an interface spec (default `eth0`).
pub fn parse_ip_param(spec: &str) -> Option<(Interface, Option<IpAddr>)> {
    let mut parts = spec.split(',');
    let address: IpNet = parts.next()?.parse().ok()?;
    let mut gateway = None;
    let mut device = "eth0".to_owned();
    for part in parts {
        match part.split_once('=') {
            Some(("gw", ip)) => gateway = Some(ip.parse().ok()?),
            Some(("dev", name)) => device = name.to_owned(),
            _ => return None,
        }
    }
    let default = match address {
        IpNet::V4(_) => IpNet::V4(ipnet::Ipv4Net::default()),
        IpNet::V6(_) => IpNet::V6(ipnet::Ipv6Net::default()),
    };
    let routes = gateway
        .map(|via| {
            vec![cairn_api::machine_config::Route {
                to: default,
                via: Some(via),
            }]
        })
        .unwrap_or_default();
    Some((
        Interface {
            selector: LinkSelector::Name(device),
            kind: LinkKind::Existing,
            addresses: vec![address],
            mtu: None,
            routes,
            dhcp: false,
        },
        gateway,
    ))
}

/// Why the system phase failed.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// Hostname or sysctls.
    #[error(transparent)]
    Live(#[from] LiveError),
    /// An extra kernel module.
    #[error("machine.kernelModules[{index}]: cannot load {name}: {reason}")]
    Module {
        /// Its index in the config.
        index: usize,
        /// Its name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The modules directory is unknown.
    #[error(transparent)]
    Modules(#[from] ModulesError),
}

async fn apply_system(ctx: &BootContext, config: &MachineConfig) -> Result<(), SystemError> {
    live::apply_hostname(config)?;
    live::apply_sysctls(None, config)?;
    let Host::Pid1 { sys } = &ctx.host else {
        return Ok(());
    };
    if config.machine.kernel_modules.is_empty() {
        return Ok(());
    }
    let dir = modules_dir(sys.as_ref())?;
    let index = sys
        .read_to_string(&dir.join("modules.dep"))
        .map(|dep| modules::ModuleIndex::parse(&dep, ""))
        .unwrap_or_default();
    for (i, module) in config.machine.kernel_modules.iter().enumerate() {
        let error = |reason: String| SystemError::Module {
            index: i,
            name: module.name.clone(),
            reason,
        };
        let path = index
            .path_of(&module.name)
            .ok_or_else(|| error("the image does not ship it".into()))?;
        let parameters = module.parameters.join(" ");
        match sys.load_module_with(&dir.join(path), &parameters) {
            Ok(()) => info!(module = %module.name, parameters, "kernel module loaded"),
            Err(err) if err.is_already_loaded() => {
                if !parameters.is_empty() {
                    warn!(module = %module.name, "already loaded at boot; its parameters are not applied");
                }
            }
            Err(err) => return Err(error(crate::error_chain(&err))),
        }
    }
    Ok(())
}

/// Why the network phase failed.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct NetworkPhaseError(#[from] LiveError);

/// The first pass of the network reconciler (links, bonds, bridges, VLANs,
/// addresses, routes; the command line's `cairn.ip=` layered under the config), once
/// the links the config names have appeared (drivers may still be probing); then the
/// resolvers, and a first DHCP lease on each `dhcp: true` link (boot goes on without
/// one after [`DHCP_TIMEOUT`]).
async fn configure_network(
    config: &MachineConfig,
    cmdline: &KernelCmdline,
    network: &NetworkHandle,
) -> Result<Vec<(Link, Option<Lease>)>, NetworkPhaseError> {
    let netlink = Netlink::connect().map_err(LiveError::from)?;
    let wanted = config.interfaces().unwrap_or_default();
    // The links that exist by themselves: those the config names and the ports of
    // its bonds and bridges that are not virtual links of its own.
    let mut existing: Vec<LinkSelector> = wanted
        .iter()
        .filter(|i| i.kind == LinkKind::Existing)
        .map(|i| i.selector.clone())
        .collect();
    for port in wanted.iter().flat_map(|i| i.kind.ports()) {
        let port = LinkSelector::Name(port.clone());
        if !wanted.iter().any(|i| i.selector == port) && !existing.contains(&port) {
            existing.push(port);
        }
    }
    for selector in &existing {
        interfaces::wait_for_link(&netlink, selector, LINK_TIMEOUT)
            .await
            .map_err(LiveError::from)?;
    }
    let from_cmdline = cmdline.get(IP_PARAM).and_then(|spec| {
        let parsed = parse_ip_param(spec).map(|(interface, _)| interface);
        if parsed.is_none() {
            warn!(
                param = spec,
                "{IP_PARAM}= is not ADDRESS/PREFIX[,gw=IP][,dev=NAME]; ignored"
            );
        }
        parsed
    });
    network.set_cmdline(from_cmdline);
    let status = network.pass(config).await.map_err(LiveError::from)?;
    if !status.problems.is_empty() {
        return Err(LiveError::NetworkProblems(status.problems).into());
    }
    live::apply_resolvers(config)?;
    let links = netlink.links().await.map_err(LiveError::from)?;
    let mut tries = Vec::new();
    for interface in wanted.into_iter().filter(|i| i.dhcp) {
        let Some(link) = interfaces::find_link(&interface.selector, &links).cloned() else {
            continue; // the pass reported it
        };
        let netlink = netlink.clone();
        tries.push(async move {
            let lease = match dhcp::acquire(&link, DHCP_TIMEOUT).await {
                Ok(lease) => match dhcp::apply(&netlink, &link, &lease).await {
                    Ok(()) => Some(lease),
                    Err(err) => {
                        warn!(link = %link.name, error = %err, "cannot apply the DHCP lease");
                        None
                    }
                },
                Err(err) => {
                    warn!(link = %link.name, error = %err, "no DHCP lease yet; the dhcp service keeps trying");
                    None
                }
            };
            (link, lease)
        });
    }
    Ok(futures::future::join_all(tries).await)
}

/// Why the services phase failed.
#[derive(Debug, thiserror::Error)]
pub enum ServicesPhaseError {
    /// A requested test service does not exist.
    #[error(transparent)]
    UnknownTestService(#[from] UnknownTestService),
    /// The supervisor refused a service.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// The machine API's TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] crate::api_server::TlsError),
    /// The store cannot run on this control plane.
    #[error(transparent)]
    Store(#[from] crate::services::store::StoreSetupError),
    /// The Kubernetes API server cannot run on this control plane.
    #[error(transparent)]
    ApiServer(#[from] crate::services::apiserver::ApiServerSetupError),
}

/// Starts the machine API; returns the config manager it serves.
async fn start_machine_api(
    ctx: &BootContext,
    settled: &Settled,
) -> Result<Arc<ConfigManager>, ServicesPhaseError> {
    let tls = TlsState::default();
    tls.reload(
        &settled.config,
        &live::node_names(&settled.config, &ctx.host).await,
    )?;
    let live = Arc::new(NodeLive {
        host: ctx.host.clone(),
        tls: tls.clone(),
        network: ctx.network.clone(),
    });
    let manager = ConfigManager::new(
        settled.config.clone(),
        settled.state_dir.clone(),
        live,
        ctx.power_requests.clone(),
    );
    let node = Arc::new(NodeContext {
        state: ctx.state.clone(),
        supervisor: ctx.supervisor.clone(),
        logs: ctx.logs.clone(),
        config: manager,
        power: ctx.power_requests.clone(),
        persistence: settled.persistence.clone(),
        tls,
        listen: ctx.options.api_listen,
        bound: ctx.machine_api.clone(),
        store: ctx.store.clone(),
        runtime: ctx.runtime.clone(),
        network: ctx.network.clone(),
    });
    let manager = Arc::clone(&node.config);
    ctx.supervisor
        .start(Arc::new(MachineApiService::new(node)))?;
    Ok(manager)
}

async fn start_services(
    ctx: &BootContext,
    settled: &Settled,
    dhcp_links: Vec<(Link, Option<Lease>)>,
    test_services: &[String],
) -> Result<(), ServicesPhaseError> {
    let config_manager = start_machine_api(ctx, settled).await?;
    // DHCP clients post their leases here; the network reconciler puts them in place.
    let leases = ctx.network.leases().clone();
    if ctx.host.is_pid1() {
        // Boot applied the network once; from here on it is kept so.
        ctx.supervisor.start(Arc::new(NetworkService::new(
            Arc::clone(&config_manager),
            ctx.network.clone(),
        )))?;
    }
    let state_dir = settled.state_dir.clone().unwrap_or_else(|| match ctx.host {
        // Without a disk the store and the runtime live in RAM, like the rest of an
        // ephemeral node.
        Host::Pid1 { .. } => PathBuf::from("/run/cairn"),
        Host::Hosted => std::env::temp_dir().join(format!("cairn-node-{}", std::process::id())),
    });
    let node_name = settled
        .config
        .machine
        .hostname
        .clone()
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .map(|h| h.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "node".into());
    let control_plane =
        settled.config.machine.machine_type == cairn_api::machine_config::MachineType::Controlplane;
    // The pod network needs the cluster store to claim a CIDR, which control planes
    // run; a hosted node keeps its bridge out of the host's namespace by having none.
    // A worker's comes up once the control planes' node IPAM has given its Node a pod
    // CIDR (the agent starts it, with its API client).
    let pod_net = pod_net_settings(&settled.config, &node_name, &state_dir);
    let node_ipam = pod_net
        .as_ref()
        .filter(|_| matches!(ctx.host, Host::Pid1 { .. }))
        .map(|settings| NodeIpam {
            store: ctx.store.clone(),
            cluster_cidr: settings.cluster_cidr,
        });
    let mut worker_pod_network = None;
    let pod_network = match (&ctx.host, control_plane, pod_net) {
        (Host::Pid1 { .. }, true, Some(settings)) => {
            let slot = cairn_net::pod_network::PodNetworkSlot::default();
            ctx.supervisor.start(Arc::new(PodNetService::new(
                settings,
                ctx.store.clone(),
                slot.clone(),
            )))?;
            Some(slot)
        }
        (Host::Pid1 { .. }, false, Some(settings)) => {
            let slot = cairn_net::pod_network::PodNetworkSlot::default();
            worker_pod_network = Some((settings, slot.clone()));
            Some(slot)
        }
        _ => None,
    };
    ctx.supervisor.start(Arc::new(RuntimeService::new(
        RuntimeSettings {
            root: state_dir.join("runtime"),
            node_name: node_name.clone(),
            ephemeral: settled.state_dir.is_none(),
            cgroup_parent: match ctx.host {
                Host::Pid1 { .. } => "/cairn".to_owned(),
                Host::Hosted => format!("/cairn-node-{}", std::process::id()),
            },
            pod_network: pod_network.clone(),
        },
        config_manager,
        ctx.runtime.clone(),
    )))?;
    let mut local_api = None;
    if control_plane {
        let names = live::node_names(&settled.config, &ctx.host).await;
        let settings = StoreSettings::from_config(
            &settled.config,
            &state_dir,
            ctx.options.store_listen,
            names.clone(),
        )?;
        ctx.supervisor
            .start(Arc::new(StoreService::new(settings, ctx.store.clone())))?;
        let api =
            ApiServerSettings::from_config(&settled.config, ctx.options.kube_api_listen, names)?;
        let api_handle = ListenAddress::default();
        ctx.supervisor.start(Arc::new(ApiServerService::new(
            api,
            ctx.store.clone(),
            api_handle.clone(),
            (node_name.clone(), ctx.machine_api.clone()),
        )))?;
        let control_plane = ControlPlaneSettings::from_config(&settled.config, &node_name)?;
        ctx.supervisor
            .start(Arc::new(LeaderElectedService::controllers(
                control_plane.clone(),
                api_handle.clone(),
                node_ipam,
            )))?;
        ctx.supervisor
            .start(Arc::new(LeaderElectedService::scheduler(
                control_plane,
                api_handle.clone(),
            )))?;
        local_api = Some(api_handle);
    }
    match AgentServiceSettings::from_config(&settled.config, &node_name) {
        Ok(Some(settings)) => ctx.supervisor.start(Arc::new(AgentService::new(
            settings,
            ctx.runtime.clone(),
            match worker_pod_network {
                Some(worker) => AgentPodNetwork::Worker(worker.0, worker.1),
                None => pod_network.map_or(AgentPodNetwork::None, AgentPodNetwork::Claimed),
            },
            local_api,
            ctx.machine_api.clone(),
        )))?,
        Ok(None) => {}
        // The node still serves its machine API, where a fixed config can be applied.
        Err(err) => warn!(error = %err, "no node agent on this node"),
    }
    if !dhcp_links.is_empty() {
        ctx.supervisor.start(Arc::new(DhcpService {
            links: std::sync::Mutex::new(dhcp_links),
            board: leases.clone(),
        }))?;
    }
    let mut wanted = services::builtin();
    for name in test_services {
        wanted.push(services::test_service(name)?);
    }
    for service in wanted {
        ctx.supervisor.start(service)?;
    }
    Ok(())
}

/// The pod network settings of a node with `config`: its address is the first static
/// IPv4 address that is a control plane's (else the first static IPv4 address); none
/// without a cluster section or such an address.
fn pod_net_settings(
    config: &cairn_api::MachineConfig,
    node_name: &str,
    state_dir: &std::path::Path,
) -> Option<PodNetSettings> {
    let cluster = config.cluster.as_ref()?;
    let cluster_cidr: ipnet::Ipv4Net = cluster
        .pod_subnet
        .as_deref()
        .unwrap_or(cairn_api::machine_config::DEFAULT_POD_SUBNET)
        .parse()
        .ok()?;
    let own: Vec<std::net::IpAddr> = config
        .interfaces()
        .unwrap_or_default()
        .iter()
        .flat_map(|i| i.addresses.iter().map(|a| a.addr()))
        .filter(std::net::IpAddr::is_ipv4)
        .collect();
    let address = own
        .iter()
        .find(|a| cluster.control_planes.contains(&a.to_string()))
        .or(own.first())
        .copied()?;
    Some(PodNetSettings {
        node_name: node_name.to_owned(),
        address,
        cluster_cidr,
        state_dir: state_dir.join("podnet"),
    })
}

/// `dhcp`: keeps the leases of the `dhcp: true` links, posting them for the network
/// reconciler.
struct DhcpService {
    /// The links, with the lease boot got (taken by the first run).
    links: std::sync::Mutex<Vec<(Link, Option<Lease>)>>,
    /// Where leases are posted.
    board: dhcp::LeaseBoard,
}

impl Service for DhcpService {
    fn name(&self) -> &str {
        "dhcp"
    }

    fn run(&self, ctx: ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>> {
        let mut links = self.links.lock().map(|l| l.clone()).unwrap_or_default();
        // A restarted run starts from scratch (no remembered lease).
        if let Ok(mut stored) = self.links.lock() {
            for (_, lease) in stored.iter_mut() {
                *lease = None;
            }
        }
        let board = self.board.clone();
        async move {
            let keepers: Vec<_> = links
                .drain(..)
                .map(|(link, lease)| {
                    dhcp::maintain(link, lease, board.clone(), ctx.shutdown.clone())
                })
                .collect();
            futures::future::join_all(keepers).await;
            Ok(())
        }
        .boxed()
    }
}

/// This process's resident memory in KiB (`VmRSS` of `/proc/self/status`).
pub fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_parameter_gives_address_gateway_and_device() {
        let (interface, gateway) = parse_ip_param("10.5.0.9/24,gw=10.5.0.1,dev=eth1").unwrap();
        assert_eq!(interface.selector, LinkSelector::Name("eth1".into()));
        assert_eq!(interface.addresses[0].to_string(), "10.5.0.9/24");
        assert_eq!(gateway, Some("10.5.0.1".parse().unwrap()));
        assert_eq!(interface.routes[0].to.to_string(), "0.0.0.0/0");
        let (plain, none) = parse_ip_param("fd00::9/64").unwrap();
        assert_eq!(plain.selector, LinkSelector::Name("eth0".into()));
        assert!(none.is_none() && plain.routes.is_empty());
        assert!(parse_ip_param("10.5.0.9").is_none());
        assert!(parse_ip_param("10.5.0.9/24,via=1.2.3.4").is_none());
    }
}
