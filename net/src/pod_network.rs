//! The pod network of one node: a bridge holding the gateway of the node's pod CIDR,
//! one veth pair per pod (the pod's end is its `eth0`, with an address from the
//! persistent [`Ipam`] and a default route through the bridge), routes to every other
//! node's pod CIDR through that node (host-gateway), and masquerade for pod traffic
//! leaving the cluster's pod subnet. Everything is done over netlink in the namespace
//! the [`PodNetwork`] was started in; nothing runs `ip` or a CNI plugin.
//!
//! Freeing a network device makes the kernel wait for an RCU grace period (~20 ms
//! here), once per deletion request. So a detach only *retires* the pod's pair (down,
//! renamed, moved to a link group: about a millisecond, and the address can be given
//! again at once since the old end has no carrier) and a reaper task deletes the whole
//! group in one request a moment later: one grace period for every pair retired
//! meanwhile, instead of each attach queueing behind a deletion that holds the RTNL
//! lock. [`PodNetwork::settle`] has the reaper delete at once and waits until the
//! retired pairs are gone.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use tokio::sync::{Mutex, Notify};
use tracing::{debug, info, warn};

use crate::NetError;
use crate::ipam::{Ipam, IpamError};
use crate::netlink::{CAIRN_ROUTE_PROTOCOL, Link, Netlink};
use crate::nftables::{self, Masquerade, NftError};

/// The name of a pod's interface inside its namespace.
pub const POD_INTERFACE: &str = "eth0";
/// The bridge's name unless the caller picks another.
pub const DEFAULT_BRIDGE: &str = "cairn0";
/// The link group retired veth pairs wait in for the reaper ("CAIR").
pub const RETIRED_GROUP: u32 = 0x4341_4952;
/// How long the reaper gathers retired pairs before deleting them together.
const REAP_WINDOW: Duration = Duration::from_millis(500);

/// Why the pod network could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum PodNetworkError {
    /// Netlink refused a change.
    #[error("pod network")]
    Net(#[from] NetError),
    /// No address could be given or freed.
    #[error("pod network addresses")]
    Ipam(#[from] IpamError),
    /// The masquerade rule could not be written.
    #[error("pod network masquerade")]
    Nft(#[from] NftError),
    /// A sysctl could not be written.
    #[error("pod network: cannot write {path}")]
    Sysctl {
        /// The sysctl's file.
        path: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The pod's network namespace file could not be opened.
    #[error("pod network: cannot open the network namespace {path}")]
    Namespace {
        /// The namespace file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The pod's end of the veth pair did not show up in its namespace.
    #[error("pod network: {POD_INTERFACE} did not appear in {path}")]
    NoPodInterface {
        /// The namespace file.
        path: PathBuf,
    },
    /// The pod's namespace already has an interface of that name, not Cairn's.
    #[error("pod network: {path} already has an {POD_INTERFACE}")]
    PodInterfaceTaken {
        /// The namespace file.
        path: PathBuf,
    },
    /// The node's pod CIDR is not inside the cluster's pod subnet.
    #[error(
        "pod network: the node's pod CIDR {pod_cidr} is not inside the cluster's {cluster_cidr}"
    )]
    OutsideCluster {
        /// The node's CIDR.
        pod_cidr: Ipv4Net,
        /// The cluster's.
        cluster_cidr: Ipv4Net,
    },
}

/// What a node's pod network is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetworkConfig {
    /// The bridge's name.
    pub bridge: String,
    /// This node's pod CIDR (pods get addresses from it; the bridge its first one).
    pub pod_cidr: Ipv4Net,
    /// The cluster's pod subnet (`cluster.podSubnet`): traffic to it is not masqueraded.
    pub cluster_cidr: Ipv4Net,
    /// MTU of the bridge and the veth pairs (the kernel's default when `None`).
    pub mtu: Option<u32>,
    /// Where the address allocations are kept.
    pub ipam_state: PathBuf,
}

/// A pod's interface, as [`PodNetwork::attach`] made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    /// The pod's address with the pod CIDR's prefix length.
    pub address: Ipv4Net,
    /// The gateway of its default route (the bridge's address).
    pub gateway: Ipv4Addr,
    /// The host end of its veth pair.
    pub host_link: String,
}

/// Another node's pod CIDR and the address it is reached through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerRoute {
    /// The other node's pod CIDR.
    pub pod_cidr: Ipv4Net,
    /// The other node's address on a link this node shares with it.
    pub via: IpAddr,
}

/// A node's pod network, ready to attach pods.
pub struct PodNetwork {
    netlink: Netlink,
    config: PodNetworkConfig,
    bridge: Link,
    ipam: Mutex<Ipam>,
    retired: Arc<Retired>,
    reaper: tokio::task::JoinHandle<()>,
}

/// Retired veth pairs waiting for the reaper.
#[derive(Default)]
struct Retired {
    /// How many were retired and not yet deleted.
    pending: AtomicUsize,
    /// Wakes the reaper.
    wake: Notify,
    /// Ends the reaper's gathering window early.
    hurry: Notify,
    /// Tells [`PodNetwork::settle`] a deletion finished.
    deleted: Notify,
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        // Pairs still retired stay in their group until the next start deletes them.
        self.reaper.abort();
    }
}

/// Deletes the retired group whenever pairs were retired; a failure is retried.
async fn reap(netlink: Netlink, retired: Arc<Retired>) {
    loop {
        retired.wake.notified().await;
        tokio::select! {
            _ = tokio::time::sleep(REAP_WINDOW) => {}
            _ = retired.hurry.notified() => {}
        }
        let pending = retired.pending.load(Ordering::SeqCst);
        if pending == 0 {
            continue;
        }
        match netlink.delete_group(RETIRED_GROUP).await {
            Ok(()) => {
                retired.pending.fetch_sub(pending, Ordering::SeqCst);
                retired.deleted.notify_waiters();
            }
            Err(err) => {
                warn!(error = %err, pending, "retired pod links not deleted; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                retired.wake.notify_one();
            }
        }
    }
}

impl std::fmt::Debug for PodNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodNetwork")
            .field("config", &self.config)
            .field("bridge", &self.bridge.name)
            .finish_non_exhaustive()
    }
}

/// Where a node's pod network is published once it runs, for those who attach pods
/// (the runtime) — empty until then. Clones share the slot.
#[derive(Clone, Default)]
pub struct PodNetworkSlot {
    network: Arc<std::sync::RwLock<Option<Arc<PodNetwork>>>>,
}

impl std::fmt::Debug for PodNetworkSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodNetworkSlot")
            .field("ready", &self.get().is_some())
            .finish()
    }
}

impl PodNetworkSlot {
    /// A slot holding `network` already.
    pub fn ready(network: Arc<PodNetwork>) -> Self {
        let slot = Self::default();
        slot.set(Some(network));
        slot
    }

    /// The pod network, if it runs.
    pub fn get(&self) -> Option<Arc<PodNetwork>> {
        self.network
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Publishes (or withdraws, with `None`) the pod network.
    pub fn set(&self, network: Option<Arc<PodNetwork>>) {
        *self
            .network
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = network;
    }
}

/// Gives the pod's end of its pair (through `inside`, a netlink connection in the
/// pod's namespace) its address, sets it up and routes everything through the
/// gateway; each step is idempotent.
async fn configure_pod_end(
    inside: &Netlink,
    eth0: &Link,
    interface: &PodInterface,
) -> Result<(), NetError> {
    inside
        .add_address(eth0, IpNet::V4(interface.address))
        .await?;
    inside.set_up(eth0).await?;
    inside
        .add_route(
            eth0,
            IpNet::V4(Ipv4Net::default()),
            Some(IpAddr::V4(interface.gateway)),
        )
        .await
}

/// Runs `f` in the network namespace `namespace` (on a thread that enters it), or
/// right here when `None`.
fn in_namespace<R: Send>(
    namespace: Option<BorrowedFd<'_>>,
    f: impl FnOnce() -> Result<R, PodNetworkError> + Send,
) -> Result<R, PodNetworkError> {
    match namespace {
        Some(namespace) => crate::netns::run_in(namespace, f)?,
        None => f(),
    }
}

/// The host end of the veth pair of `owner`: stable across restarts (FNV-1a of the
/// owner key) and within the kernel's 15 characters.
pub fn host_link_name(owner: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in owner.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("cv{:012x}", hash & 0xffff_ffff_ffff)
}

impl PodNetwork {
    /// Sets up the node's side in the caller's network namespace: IPv4 forwarding, the
    /// bridge with the gateway address, the masquerade rule, and the address
    /// allocations kept in `config.ipam_state`. Idempotent: starting again over a
    /// running pod network keeps its pods' links and addresses.
    pub async fn start(config: PodNetworkConfig) -> Result<Self, PodNetworkError> {
        Self::start_in(config, None).await
    }

    /// Like [`PodNetwork::start`], with the node's side in the network namespace
    /// `namespace` (an open `nsfs` file) when given: a hosted node, or a test, keeps
    /// its bridge out of the host's own namespace.
    pub async fn start_in(
        config: PodNetworkConfig,
        namespace: Option<BorrowedFd<'_>>,
    ) -> Result<Self, PodNetworkError> {
        let pod_cidr = config.pod_cidr.trunc();
        let cluster_cidr = config.cluster_cidr.trunc();
        if !cluster_cidr.contains(&pod_cidr) {
            return Err(PodNetworkError::OutsideCluster {
                pod_cidr,
                cluster_cidr,
            });
        }
        let ipam = Ipam::open(&config.ipam_state, pod_cidr)?;
        in_namespace(namespace, || {
            const FORWARDING: &str = "/proc/sys/net/ipv4/ip_forward";
            std::fs::write(FORWARDING, "1\n").map_err(|source| PodNetworkError::Sysctl {
                path: FORWARDING,
                source,
            })?;
            nftables::apply_masquerade(Masquerade {
                pod_cidr,
                cluster_cidr,
            })?;
            Ok(())
        })?;
        let netlink = match namespace {
            Some(namespace) => Netlink::connect_in(namespace)?,
            None => Netlink::connect()?,
        };
        let bridge = match netlink.link_named(&config.bridge).await? {
            Some(link) => link,
            None => {
                netlink.add_bridge(&config.bridge).await?;
                netlink
                    .link_named(&config.bridge)
                    .await?
                    .ok_or_else(|| NetError::LinkNotFound {
                        selector: config.bridge.clone(),
                        waited_ms: 0,
                        present: "the bridge just made".into(),
                    })?
            }
        };
        if let Some(mtu) = config.mtu
            && bridge.mtu != Some(mtu)
        {
            netlink.set_mtu(&bridge, mtu).await?;
        }
        let gateway = Ipv4Net::new(ipam.gateway(), pod_cidr.prefix_len()).unwrap_or(pod_cidr);
        netlink.add_address(&bridge, IpNet::V4(gateway)).await?;
        netlink.set_up(&bridge).await?;
        // Pairs retired before a restart.
        netlink.delete_group(RETIRED_GROUP).await?;
        info!(bridge = %bridge.name, %pod_cidr, %cluster_cidr, "pod network ready");
        let retired = Arc::new(Retired::default());
        let reaper = tokio::spawn(reap(netlink.clone(), Arc::clone(&retired)));
        Ok(Self {
            netlink,
            config: PodNetworkConfig {
                pod_cidr,
                cluster_cidr,
                ..config
            },
            bridge,
            ipam: Mutex::new(ipam),
            reaper,
            retired,
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &PodNetworkConfig {
        &self.config
    }

    /// Gives the pod `owner` (its uid) an interface in the network namespace file
    /// `netns`: an address (the one it already has, if any), a veth pair whose pod end
    /// is `eth0`, and a default route through the bridge. Attaching again replaces the
    /// pair and keeps the address.
    pub async fn attach(&self, owner: &str, netns: &Path) -> Result<PodInterface, PodNetworkError> {
        let namespace = File::open(netns).map_err(|source| PodNetworkError::Namespace {
            path: netns.to_owned(),
            source,
        })?;
        let address = self.ipam.lock().await.allocate(owner)?;
        let attached = self.attach_with(owner, netns, &namespace, address).await;
        if attached.is_err() {
            let host_link = host_link_name(owner);
            if let Ok(Some(link)) = self.netlink.link_named(&host_link).await {
                let _ = self.netlink.delete_link(&link).await;
            }
            let _ = self.ipam.lock().await.release(owner);
        }
        attached
    }

    async fn attach_with(
        &self,
        owner: &str,
        netns: &Path,
        namespace: &File,
        address: Ipv4Addr,
    ) -> Result<PodInterface, PodNetworkError> {
        let interface = PodInterface {
            address: Ipv4Net::new(address, self.config.pod_cidr.prefix_len())
                .unwrap_or(self.config.pod_cidr),
            gateway: crate::ipam::gateway(self.config.pod_cidr),
            host_link: host_link_name(owner),
        };
        let inside = Netlink::connect_in(namespace.as_fd())?;
        if let Some(existing) = self.netlink.link_named(&interface.host_link).await? {
            // Attached before (the runtime restarted): a whole pair stays, so the
            // pod's connections do not notice.
            if let Some(eth0) = inside.link_named(POD_INTERFACE).await?
                && inside
                    .addresses(&eth0)
                    .await?
                    .contains(&IpNet::V4(interface.address))
            {
                if !existing.up {
                    self.netlink.set_up(&existing).await?;
                }
                configure_pod_end(&inside, &eth0, &interface).await?;
                debug!(owner, address = %interface.address, "pod still attached");
                return Ok(interface);
            }
            // A pair left half made: its pod end goes with it.
            self.netlink.delete_link(&existing).await?;
        }
        if inside.link_named(POD_INTERFACE).await?.is_some() {
            // The end of a pair this pod had, retired but not deleted yet.
            self.settle().await;
            if inside.link_named(POD_INTERFACE).await?.is_some() {
                return Err(PodNetworkError::PodInterfaceTaken {
                    path: netns.to_owned(),
                });
            }
        }
        self.netlink
            .add_veth_to_namespace(
                &interface.host_link,
                &self.bridge,
                POD_INTERFACE,
                namespace.as_fd(),
                self.config.mtu,
            )
            .await?;
        let eth0 = inside.link_named(POD_INTERFACE).await?.ok_or_else(|| {
            PodNetworkError::NoPodInterface {
                path: netns.to_owned(),
            }
        })?;
        configure_pod_end(&inside, &eth0, &interface).await?;
        debug!(owner, address = %interface.address, link = %interface.host_link, "pod attached");
        Ok(interface)
    }

    /// Takes the pod `owner` off the network: its veth pair is retired (down at once,
    /// deleted with its namespace end by the reaper) and its address is freed.
    /// Detaching a pod that is not attached is fine.
    pub async fn detach(&self, owner: &str) -> Result<(), PodNetworkError> {
        let host_link = host_link_name(owner);
        if let Some(link) = self.netlink.link_named(&host_link).await? {
            let retired_name = format!("cx{:x}", link.index);
            self.netlink
                .retire_link(&link, &retired_name, RETIRED_GROUP)
                .await?;
            self.retired.pending.fetch_add(1, Ordering::SeqCst);
            self.retired.wake.notify_one();
        }
        self.ipam.lock().await.release(owner)?;
        debug!(owner, "pod detached");
        Ok(())
    }

    /// Has the reaper delete the retired pairs now and waits until they are gone.
    pub async fn settle(&self) {
        loop {
            let deleted = self.retired.deleted.notified();
            if self.retired.pending.load(Ordering::SeqCst) == 0 {
                return;
            }
            self.retired.hurry.notify_one();
            deleted.await;
        }
    }

    /// The pods holding an address: owner → address.
    pub async fn attached(&self) -> BTreeMap<String, Ipv4Addr> {
        self.ipam.lock().await.allocations().clone()
    }

    /// Makes the routes to other nodes' pod CIDRs exactly `peers`: missing or changed
    /// ones are (re)installed, ones Cairn installed for peers no longer named are
    /// removed, routes of anybody else are left alone. A peer naming this node's own
    /// CIDR is skipped. Returns how many routes changed.
    pub async fn set_peer_routes(&self, peers: &[PeerRoute]) -> Result<usize, PodNetworkError> {
        let wanted: BTreeSet<(IpNet, IpAddr)> = peers
            .iter()
            .filter(|peer| peer.pod_cidr.trunc() != self.config.pod_cidr)
            .map(|peer| (IpNet::V4(peer.pod_cidr.trunc()), peer.via))
            .collect();
        let present: BTreeSet<(IpNet, IpAddr)> = self
            .netlink
            .routes()
            .await?
            .into_iter()
            .filter(|route| route.protocol == CAIRN_ROUTE_PROTOCOL)
            .filter_map(|route| route.via.map(|via| (route.to, via)))
            .collect();
        let mut changed = 0;
        for (to, via) in present.difference(&wanted) {
            self.netlink.del_gateway_route(*to, *via).await?;
            info!(%to, %via, "pod route removed");
            changed += 1;
        }
        for (to, via) in wanted.difference(&present) {
            self.netlink.replace_gateway_route(*to, *via).await?;
            info!(%to, %via, "pod route installed");
            changed += 1;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_link_names_are_stable_distinct_and_short() {
        let a = host_link_name("0b7c6a2e-3f4d-4d57-9e1a-1d2f3a4b5c6d");
        assert_eq!(a, host_link_name("0b7c6a2e-3f4d-4d57-9e1a-1d2f3a4b5c6d"));
        assert_ne!(a, host_link_name("0b7c6a2e-3f4d-4d57-9e1a-1d2f3a4b5c6e"));
        assert!(a.len() <= 15, "{a} is longer than IFNAMSIZ-1");
        assert!(a.starts_with("cv"));
    }
}
