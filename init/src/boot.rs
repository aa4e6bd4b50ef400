//! The boot sequence, top to bottom. Read this file first.
//!
//! ```text
//! early     mount /proc /sys /dev /dev/pts /dev/shm /run /tmp and cgroup2; /dev/kmsg logging
//! modules   load the image's kernel modules in dependency order; watch the power button
//! config    find and validate the machine configuration
//! network   loopback, hostname, configured links with their addresses and routes
//! services  start the supervised services
//! ready     one line with the time from PID 1 start to ready
//! ```
//!
//! `early` and `modules` belong to PID 1; a hosted node skips them, and the network
//! phase leaves a host's links alone. A failed phase stops the sequence: the node
//! stays up in maintenance, saying why (see [`crate::node`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::MachineConfig;
use cairn_net::{NetError, Netlink, interfaces};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::cmdline::KernelCmdline;
use crate::config_source::{self, ConfigSourceError};
use crate::host::Host;
use crate::logging::LogHandles;
use crate::modules::{self, ModuleReport};
use crate::mounts::{self, MountError};
use crate::phase::{PhaseFailure, Phases, millis};
use crate::power::{self, PowerRequest};
use crate::services::{self, UnknownTestService};
use crate::supervisor::{Supervisor, SupervisorError};

/// How long a configured link may take to appear (its driver may still be probing).
pub const LINK_TIMEOUT: Duration = Duration::from_secs(10);

/// The kernel parameter naming test services to run (`cairn.test=crashloop,orphans`).
pub const TEST_SERVICES_PARAM: &str = "cairn.test";

/// Settings of a node that do not come from its machine config.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// The machine config file of a hosted node.
    pub config_file: Option<PathBuf>,
    /// Test services to run besides the built-in ones.
    pub test_services: Vec<String>,
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
    /// Where power-button presses are sent.
    pub power_requests: mpsc::UnboundedSender<PowerRequest>,
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

/// Runs every phase in order; the first failure ends boot.
pub async fn boot(ctx: &BootContext, phases: &Phases<'_>) -> Result<Ready, PhaseFailure> {
    let mut modules_elapsed = Duration::ZERO;
    let mut cmdline = KernelCmdline::default();
    match &ctx.host {
        Host::Pid1 { sys } => {
            cmdline = phases.run("early", early(ctx, sys.as_ref())).await?;
            let report = phases
                .run("modules", load_modules(ctx, sys.as_ref()))
                .await?;
            modules_elapsed = report.elapsed;
        }
        Host::Hosted => {
            phases.skip("early", "hosted node: the host has mounted its filesystems");
            phases.skip("modules", "hosted node: the host loads its modules");
        }
    }
    let config = phases.run("config", find_config(ctx, &cmdline)).await?;
    phases
        .run("network", configure_network(ctx, &config))
        .await?;
    let mut test_services = ctx.options.test_services.clone();
    test_services.extend(cmdline.list(TEST_SERVICES_PARAM));
    phases
        .run("services", start_services(ctx, &test_services))
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

async fn load_modules(
    ctx: &BootContext,
    sys: &dyn crate::sys::Syscalls,
) -> Result<ModuleReport, ModulesError> {
    let release = sys
        .read_to_string(Path::new("/proc/sys/kernel/osrelease"))
        .map_err(ModulesError)?;
    let dir = Path::new("/lib/modules").join(release.trim());
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

/// Why the config phase failed.
#[derive(Debug, thiserror::Error)]
pub enum FindConfigError {
    /// No config, or a refused one.
    #[error(transparent)]
    Source(#[from] ConfigSourceError),
    /// A hosted node was started without `--config`.
    #[error("a hosted node needs --config <file>")]
    NoConfigFile,
}

async fn find_config(
    ctx: &BootContext,
    cmdline: &KernelCmdline,
) -> Result<MachineConfig, FindConfigError> {
    let raw = match &ctx.host {
        Host::Pid1 { sys } => config_source::find_for_pid1(sys.as_ref(), cmdline)?,
        Host::Hosted => {
            let path = ctx
                .options
                .config_file
                .as_deref()
                .ok_or(FindConfigError::NoConfigFile)?;
            config_source::read_file(path)?
        }
    };
    let config = raw.parse()?;
    info!(
        source = %raw.source,
        machine_type = ?config.machine.machine_type,
        hostname = config.machine.hostname.as_deref().unwrap_or("(kernel default)"),
        "machine config accepted"
    );
    Ok(config)
}

/// Why the network phase failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkPhaseError {
    /// Netlink refused something.
    #[error(transparent)]
    Net(#[from] NetError),
    /// `sethostname(2)` failed.
    #[error("cannot set the hostname to {0:?}")]
    Hostname(String, #[source] nix::errno::Errno),
    /// The config's interfaces did not convert (validation should have caught this).
    #[error("invalid interfaces: {0}")]
    Interfaces(String),
}

async fn configure_network(
    ctx: &BootContext,
    config: &MachineConfig,
) -> Result<(), NetworkPhaseError> {
    if !ctx.host.is_pid1() {
        info!("hosted node: leaving the host's links, addresses and hostname alone");
        return Ok(());
    }
    if let Some(hostname) = &config.machine.hostname {
        nix::unistd::sethostname(hostname)
            .map_err(|errno| NetworkPhaseError::Hostname(hostname.clone(), errno))?;
    }
    let netlink = Netlink::connect()?;
    interfaces::bring_up_loopback(&netlink).await?;
    let wanted = config.interfaces().map_err(|problems| {
        NetworkPhaseError::Interfaces(
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    for interface in &wanted {
        interfaces::apply(&netlink, interface, LINK_TIMEOUT).await?;
    }
    Ok(())
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
}

async fn start_services(
    ctx: &BootContext,
    test_services: &[String],
) -> Result<(), ServicesPhaseError> {
    let mut wanted = services::builtin();
    for name in test_services {
        wanted.push(services::test_service(name)?);
    }
    for service in wanted {
        let name = service.name().to_owned();
        ctx.supervisor.start(Arc::clone(&service))?;
        debug!(service = %name, "service started");
    }
    Ok(())
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
