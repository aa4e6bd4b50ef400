//! Cairn's networking, straight over rtnetlink (never by running `ip`).
//!
//! This crate owns the kernel's view of links, addresses and routes: reading it,
//! converging it towards a desired state, and following its changes. It knows nothing
//! about where the desired state comes from (machine config, pods, services); callers
//! hand it typed specs from `cairn-api`.
//!
//! - [`netlink`]: the one netlink handle type, with idempotent link/address/route calls.
//! - [`dhcp`]: a DHCPv4 client that keeps a lease on a link.
//! - [`interfaces`]: applying a configured interface (wait for it, MTU, up, addresses, routes).
//! - [`ipam`]: persistent addresses of a node's pod CIDR.
//! - [`monitor`]: streams of link changes and of any network change.
//! - [`reconcile`]: keeping links, addresses and routes as the machine config says.
//! - [`netns`]: network namespaces held by a file descriptor (tests and benchmarks).
//! - [`nftables`]: Cairn's nf_tables table (the pod network's masquerade), over netlink.
//! - [`pod_network`]: the node's pod bridge, per-pod veth pairs, routes to other nodes.

#![forbid(unsafe_code)]

pub mod dhcp;
pub mod interfaces;
pub mod ipam;
pub mod monitor;
pub mod netlink;
pub mod netns;
pub mod nftables;
pub mod pod_network;
pub mod reconcile;

pub use netlink::{Link, Netlink, RouteEntry};

/// Everything that can go wrong while talking to the kernel's network stack.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket")]
    Connect(#[source] std::io::Error),
    /// The kernel refused or failed a netlink request.
    #[error("netlink request failed: {operation}")]
    Request {
        /// What was asked, e.g. `add address 10.0.0.2/24 to eth0`.
        operation: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// A configured interface did not appear in time.
    #[error("no link matches {selector} after waiting {waited_ms} ms (links present: {present})")]
    LinkNotFound {
        /// How the link was looked for.
        selector: String,
        /// How long we waited.
        waited_ms: u128,
        /// Names of the links that do exist, to help spot a typo.
        present: String,
    },
    /// A route could not be expressed as a netlink message.
    #[error("route to {to} is not valid: {reason}")]
    InvalidRoute {
        /// The route's destination.
        to: String,
        /// Why the message builder refused it.
        reason: String,
    },
    /// A network namespace could not be created or entered.
    #[error("network namespace: {what}")]
    Namespace {
        /// The step that failed.
        what: &'static str,
        /// The system call's error.
        #[source]
        source: std::io::Error,
    },
}
