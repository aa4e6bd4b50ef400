//! Applying a machine config to the running machine: hostname, sysctls, extra kernel
//! modules, links/addresses/routes, resolvers, and the machine API's certificate. Used
//! at boot (from nothing to the config) and by live `apply-config` (from the old config
//! to the new one, removing what the new one no longer names).
//!
//! A hosted node changes none of the host's settings; only its own certificate.

use std::net::IpAddr;
use std::path::Path;

use cairn_api::machine_config::MachineConfig;
use cairn_net::Netlink;
use futures::FutureExt;
use futures::future::BoxFuture;
use tracing::{info, warn};

use crate::api_server::{TlsState, certificate_names};
use crate::config_manager::LiveApply;
use crate::host::Host;
use crate::services::network::NetworkHandle;

/// Why part of a config could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// `sethostname(2)` failed.
    #[error("machine.hostname: cannot set {0:?}")]
    Hostname(String, #[source] nix::errno::Errno),
    /// A sysctl could not be written.
    #[error("machine.sysctls[{key:?}]: cannot write {path}")]
    Sysctl {
        /// The sysctl.
        key: String,
        /// Its file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Netlink refused a change.
    #[error("machine.network")]
    Network(#[from] cairn_net::NetError),
    /// The network reconciler could not bring the node to the config.
    #[error("machine.network: {}", .0.join("; "))]
    NetworkProblems(Vec<String>),
    /// `/etc/resolv.conf` could not be written.
    #[error("machine.network.nameservers: cannot write /etc/resolv.conf")]
    Resolvers(#[source] std::io::Error),
    /// The machine API certificate could not be rebuilt.
    #[error("machine.certs")]
    Tls(#[from] crate::api_server::TlsError),
}

/// Sets the hostname (if the config names one).
pub fn apply_hostname(config: &MachineConfig) -> Result<(), LiveError> {
    if let Some(hostname) = &config.machine.hostname {
        nix::unistd::sethostname(hostname).map_err(|e| LiveError::Hostname(hostname.clone(), e))?;
    }
    Ok(())
}

/// The `/proc/sys` file of a dotted sysctl name.
pub fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Writes the sysctls of `new` that differ from `old`.
pub fn apply_sysctls(old: Option<&MachineConfig>, new: &MachineConfig) -> Result<(), LiveError> {
    for (key, value) in &new.machine.sysctls {
        if old.and_then(|o| o.machine.sysctls.get(key)) == Some(value) {
            continue;
        }
        let path = sysctl_path(key);
        std::fs::write(&path, format!("{value}\n")).map_err(|source| LiveError::Sysctl {
            key: key.clone(),
            path: path.clone(),
            source,
        })?;
        info!(key, value, "sysctl set");
    }
    Ok(())
}

/// Writes `/etc/resolv.conf` from the config's nameservers (left alone when none).
pub fn apply_resolvers(config: &MachineConfig) -> Result<(), LiveError> {
    let servers = config.nameservers();
    if servers.is_empty() {
        return Ok(());
    }
    write_resolvers(&servers)
}

/// Writes `/etc/resolv.conf` naming `servers`.
pub fn write_resolvers(servers: &[IpAddr]) -> Result<(), LiveError> {
    let text: String = servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect();
    std::fs::create_dir_all("/etc").map_err(LiveError::Resolvers)?;
    crate::config_manager::write_atomically(Path::new("/etc/resolv.conf"), text.as_bytes())
        .map_err(LiveError::Resolvers)
}

/// The names for the machine API certificate: the config's hostname (or the
/// kernel's), and every address the node has (PID 1) or the config names (hosted).
pub async fn node_names(config: &MachineConfig, host: &Host) -> Vec<String> {
    let hostname = config.machine.hostname.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "cairn".into())
    });
    let mut addresses: Vec<IpAddr> = config
        .interfaces()
        .unwrap_or_default()
        .iter()
        .flat_map(|i| i.addresses.iter().map(|a| a.addr()))
        .collect();
    if host.is_pid1()
        && let Ok(netlink) = Netlink::connect()
        && let Ok(links) = netlink.links().await
    {
        for link in links {
            if let Ok(nets) = netlink.addresses(&link).await {
                addresses.extend(nets.iter().map(|n| n.addr()));
            }
        }
    }
    addresses.retain(|a| !matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80));
    certificate_names(&hostname, &addresses)
}

/// The running node, as the config manager's live applier.
pub struct NodeLive {
    /// PID 1 or hosted.
    pub host: Host,
    /// The machine API's TLS state to rebuild when certificates or names change.
    pub tls: TlsState,
    /// The network reconciler, which tries a changed network before it is accepted.
    pub network: NetworkHandle,
}

impl LiveApply for NodeLive {
    fn apply<'a>(
        &'a self,
        old: &'a MachineConfig,
        new: &'a MachineConfig,
    ) -> BoxFuture<'a, Result<(), String>> {
        async move {
            let result: Result<(), LiveError> = async {
                let (a, b) = (&old.machine, &new.machine);
                if self.host.is_pid1() {
                    if a.hostname != b.hostname {
                        apply_hostname(new)?;
                    }
                    if a.sysctls != b.sysctls {
                        apply_sysctls(Some(old), new)?;
                        for key in a.sysctls.keys().filter(|k| !b.sysctls.contains_key(*k)) {
                            warn!(key, "sysctl no longer configured; its current value stays");
                        }
                    }
                    if a.network != b.network {
                        let status = self.network.pass(new).await?;
                        if !status.problems.is_empty() {
                            // The network service's next pass returns to the running
                            // config, undoing what this one changed.
                            return Err(LiveError::NetworkProblems(status.problems));
                        }
                        apply_resolvers(new)?;
                    }
                }
                if a.certs != b.certs || a.hostname != b.hostname || a.network != b.network {
                    self.tls.reload(new, &node_names(new, &self.host).await)?;
                }
                Ok(())
            }
            .await;
            result.map_err(|e| crate::error_chain(&e))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_names_map_to_proc_sys_files() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            "/proc/sys/net/ipv4/ip_forward"
        );
        assert_eq!(sysctl_path("kernel/pid_max"), "/proc/sys/kernel/pid_max");
    }
}
