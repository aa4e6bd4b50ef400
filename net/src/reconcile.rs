//! The network reconciler: keeps the node's links, addresses and routes as the machine
//! config's interfaces say, and reports what it sees. A pass reads the kernel's state
//! over netlink, changes only what differs (so a converged node sees no writes, and no
//! netlink events of its own making), removes what it put in place for an earlier spec
//! and no longer should be there, and leaves everything else alone (DHCP leases, the
//! pod network's bridge, veths and routes, the kernel's own routes). Run a pass again
//! on every netlink change (see [`crate::monitor::ChangeMonitor`]) and drift is repaired
//! as soon as it happens: an address or route removed by hand comes back, a link set
//! down goes up again, a link that comes back gets its addresses again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use cairn_api::machine_api::{AddressInfo, LinkInfo, NetworkStatus, RouteInfo};
use cairn_api::machine_config::{Interface, LinkKind, LinkSelector, vlan_link_name};
use ipnet::IpNet;
use tracing::{info, warn};

use crate::interfaces::find_link;
use crate::netlink::CAIRN_LINK_ALIAS;
use crate::{Link, Netlink, RouteEntry};

/// One interface of the desired network, with where it comes from (problems name it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecItem {
    /// Where it comes from, e.g. `machine.network.interfaces[1] (eth1)`.
    pub origin: String,
    /// What it asks for.
    pub interface: Interface,
}

/// The whole spec, layered as Talos does: built-in defaults (loopback up) < the kernel
/// command line's interface (`cairn.ip=`, left out when the config names the same
/// link) < the machine config's interfaces < the DHCP leases.
pub fn layered_spec(
    cmdline: Option<&Interface>,
    config: &[Interface],
    leases: &BTreeMap<String, crate::dhcp::Lease>,
) -> Vec<SpecItem> {
    let mut spec = vec![SpecItem {
        origin: "the built-in defaults (lo)".into(),
        interface: Interface {
            selector: LinkSelector::Name("lo".into()),
            kind: LinkKind::Existing,
            addresses: Vec::new(),
            mtu: None,
            routes: Vec::new(),
            dhcp: false,
        },
    }];
    if let Some(interface) = cmdline
        && !config.iter().any(|c| c.selector == interface.selector)
    {
        spec.push(SpecItem {
            origin: format!("the kernel command line ({})", interface.selector),
            interface: interface.clone(),
        });
    }
    spec.extend(config_layer(config));
    spec.extend(lease_layer(leases));
    spec
}

/// The machine config's layer of the spec: its interfaces, in order.
pub fn config_layer(interfaces: &[Interface]) -> Vec<SpecItem> {
    interfaces
        .iter()
        .enumerate()
        .map(|(i, interface)| SpecItem {
            origin: format!("machine.network.interfaces[{i}] ({})", interface.selector),
            interface: interface.clone(),
        })
        .collect()
}

/// The DHCP layer of the spec: each lease's address, default route and MTU.
pub fn lease_layer(leases: &BTreeMap<String, crate::dhcp::Lease>) -> Vec<SpecItem> {
    leases
        .iter()
        .map(|(link, lease)| SpecItem {
            origin: format!("the DHCP lease on {link}"),
            interface: lease.interface(link),
        })
        .collect()
}

/// An address on a link (by index).
type AddressKey = (u32, IpNet);
/// A route: link index, destination, gateway.
type RouteKey = (u32, IpNet, Option<IpAddr>);

/// Converges the node's network towards a spec, pass after pass.
pub struct Reconciler {
    netlink: Netlink,
    /// Addresses and routes put in place for the specs seen so far.
    owned_addresses: BTreeSet<AddressKey>,
    owned_routes: BTreeSet<RouteKey>,
    passes: u64,
    repairs: u64,
}

use cairn_api::error_chain as chain;

fn protocol_name(protocol: u8) -> String {
    match protocol {
        2 => "kernel".into(),
        3 => "boot".into(),
        4 => "static".into(),
        16 => "dhcp".into(),
        crate::netlink::CAIRN_ROUTE_PROTOCOL => "cairn".into(),
        other => other.to_string(),
    }
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Reconciler {
    /// A reconciler working through `netlink`, owning nothing yet.
    pub fn new(netlink: Netlink) -> Self {
        Self {
            netlink,
            owned_addresses: BTreeSet::new(),
            owned_routes: BTreeSet::new(),
            passes: 0,
            repairs: 0,
        }
    }

    /// One pass towards `spec` (its layers, e.g. [`config_layer`] then
    /// [`lease_layer`]); the state seen afterwards, with what could not be done.
    pub async fn pass(&mut self, spec: &[SpecItem]) -> NetworkStatus {
        self.passes += 1;
        let mut problems = Vec::new();
        let mut changes = 0u64;
        let links = match self.netlink.links().await {
            Ok(links) => links,
            Err(err) => {
                return NetworkStatus {
                    problems: vec![format!("cannot read the links: {}", chain(&err))],
                    passes: self.passes,
                    repairs: self.repairs,
                    ..NetworkStatus::default()
                };
            }
        };
        let mut links = links;
        let created = self
            .create_virtual_links(spec, &mut links, &mut problems)
            .await;
        let ported = self.converge_ports(spec, &links, &mut problems).await;
        if ported > 0 {
            match self.netlink.links().await {
                Ok(now) => links = now,
                Err(err) => problems.push(format!("cannot read the links: {}", chain(&err))),
            }
        }
        changes += created + ported;
        let routes = self.netlink.routes().await.unwrap_or_else(|err| {
            problems.push(format!("cannot read the routes: {}", chain(&err)));
            Vec::new()
        });
        let mut wanted_addresses = BTreeSet::new();
        let mut wanted_routes = BTreeSet::new();
        let mut configured_links = BTreeSet::new();
        for SpecItem {
            origin: place,
            interface,
        } in spec
        {
            let Some(link) = find_link(&interface.selector, &links) else {
                problems.push(format!("{place}: no link matches"));
                continue;
            };
            configured_links.insert(link.index);
            changes += self
                .converge_link(place, link, interface, &routes, &mut problems)
                .await;
            for address in &interface.addresses {
                wanted_addresses.insert((link.index, *address));
            }
            for route in &interface.routes {
                wanted_routes.insert((link.index, route.to, route.via));
            }
        }
        changes += self
            .remove_stale(&links, &wanted_addresses, &wanted_routes, &mut problems)
            .await;
        changes += self
            .remove_stale_links(&links, &configured_links, &mut problems)
            .await;
        self.owned_addresses = wanted_addresses;
        self.owned_routes = wanted_routes;
        if changes > 0 && self.passes > 1 {
            self.repairs += changes;
        }
        self.status(configured_links, problems).await
    }

    /// Creates the bonds, bridges and VLANs the spec names that do not exist yet (and
    /// re-creates one of Cairn's own whose kind or bond mode no longer matches), bonds
    /// and bridges first so VLANs can sit on them; `links` is read again after any
    /// change. How many links were created.
    async fn create_virtual_links(
        &mut self,
        spec: &[SpecItem],
        links: &mut Vec<Link>,
        problems: &mut Vec<String>,
    ) -> u64 {
        let mut created = 0;
        for vlans in [false, true] {
            let mut created_now = 0;
            for SpecItem { origin, interface } in spec {
                let Some(kind) = interface.kind.kernel_kind() else {
                    continue;
                };
                if (interface.kind == LinkKind::Vlan) != vlans {
                    continue;
                }
                if let Some(link) = find_link(&interface.selector, links) {
                    let ours = link.alias.as_deref() == Some(CAIRN_LINK_ALIAS);
                    let mode_differs = match &interface.kind {
                        LinkKind::Bond { mode, .. } => link.bond_mode.is_some_and(|m| m != *mode),
                        _ => false,
                    };
                    let kind_differs = link.kind.as_deref() != Some(kind);
                    if !kind_differs && !mode_differs {
                        continue;
                    }
                    if !ours {
                        problems.push(format!(
                            "{origin}: {} exists but is {} and not Cairn's to replace",
                            link.name,
                            if kind_differs {
                                format!(
                                    "a {} link, not a {kind}",
                                    link.kind.as_deref().unwrap_or("plain")
                                )
                            } else {
                                "a bond in another mode".to_owned()
                            }
                        ));
                        continue;
                    }
                    if let Err(err) = self.netlink.delete_link(link).await {
                        problems.push(format!(
                            "{origin}: replacing {}: {}",
                            link.name,
                            chain(&err)
                        ));
                        continue;
                    }
                    info!(link = %link.name, "link no longer as configured; re-creating it");
                }
                let result = match (&interface.kind, &interface.selector) {
                    (LinkKind::Bond { mode, miimon, .. }, LinkSelector::Name(name)) => self
                        .netlink
                        .add_bond(name, *mode, *miimon)
                        .await
                        .map(|()| name.clone()),
                    (LinkKind::Bridge { stp, .. }, LinkSelector::Name(name)) => self
                        .netlink
                        .add_owned_bridge(name, *stp)
                        .await
                        .map(|()| name.clone()),
                    (LinkKind::Vlan, LinkSelector::Vlan { parent, id }) => {
                        let Some(parent_link) = find_link(parent, links) else {
                            problems.push(format!("{origin}: no link matches its parent {parent}"));
                            continue;
                        };
                        let Some(name) = vlan_link_name(&parent_link.name, *id) else {
                            problems.push(format!(
                                "{origin}: the VLAN's link name {}.{id} would be longer than 15 characters",
                                parent_link.name
                            ));
                            continue;
                        };
                        self.netlink
                            .add_vlan(&name, parent_link, *id)
                            .await
                            .map(|()| name)
                    }
                    _ => {
                        problems.push(format!("{origin}: a {kind} needs a name"));
                        continue;
                    }
                };
                match result {
                    Ok(name) => {
                        info!(link = %name, kind, "link created");
                        created_now += 1;
                    }
                    Err(err) => problems.push(format!("{origin}: {}", chain(&err))),
                }
            }
            if created_now > 0 {
                match self.netlink.links().await {
                    Ok(now) => *links = now,
                    Err(err) => problems.push(format!("cannot read the links: {}", chain(&err))),
                }
                created += created_now;
            }
        }
        created
    }

    /// Makes each bond's and bridge's ports exactly the ones the spec names (a port
    /// taken out by hand is put back, and up); ports of Cairn's own links that the
    /// spec no longer names are released. How many changes that took.
    async fn converge_ports(
        &mut self,
        spec: &[SpecItem],
        links: &[Link],
        problems: &mut Vec<String>,
    ) -> u64 {
        let mut changes = 0;
        for SpecItem { origin, interface } in spec {
            let ports = interface.kind.ports();
            if interface.kind.kernel_kind().is_none() || interface.kind == LinkKind::Vlan {
                continue;
            }
            let Some(controller) = find_link(&interface.selector, links) else {
                continue; // reported by the creation step
            };
            for name in ports {
                let Some(port) = links.iter().find(|l| &l.name == name) else {
                    problems.push(format!("{origin}: port {name}: no such link"));
                    continue;
                };
                let result =
                    if port.controller != Some(controller.index) {
                        self.netlink.set_controller(port, controller).await.map(|()| {
                        info!(port = %port.name, controller = %controller.name, "port added");
                    })
                    } else if !port.up {
                        self.netlink.set_up(port).await.map(|()| {
                            info!(port = %port.name, "port set up");
                        })
                    } else {
                        continue;
                    };
                match result {
                    Ok(()) => changes += 1,
                    Err(err) => problems.push(format!("{origin}: port {name}: {}", chain(&err))),
                }
            }
            if controller.alias.as_deref() != Some(CAIRN_LINK_ALIAS) {
                continue; // somebody else's bridge: its other ports are theirs
            }
            for port in links
                .iter()
                .filter(|l| l.controller == Some(controller.index) && !ports.contains(&l.name))
            {
                match self.netlink.release_port(port).await {
                    Ok(()) => {
                        info!(port = %port.name, controller = %controller.name, "port no longer configured; released");
                        changes += 1;
                    }
                    Err(err) => problems.push(format!("{origin}: {}", chain(&err))),
                }
            }
        }
        changes
    }

    /// Deletes the links Cairn created for earlier specs that this one does not name
    /// (known by [`CAIRN_LINK_ALIAS`], so also those of a config from before a
    /// restart). How many were deleted.
    async fn remove_stale_links(
        &mut self,
        links: &[Link],
        configured: &BTreeSet<u32>,
        problems: &mut Vec<String>,
    ) -> u64 {
        let mut changes = 0;
        for link in links.iter().filter(|l| {
            l.alias.as_deref() == Some(CAIRN_LINK_ALIAS) && !configured.contains(&l.index)
        }) {
            match self.netlink.delete_link(link).await {
                Ok(()) => {
                    info!(link = %link.name, "link no longer configured; deleted");
                    changes += 1;
                }
                Err(err) => problems.push(format!("removing {}: {}", link.name, chain(&err))),
            }
        }
        changes
    }

    /// Brings one configured link to its spec; how many changes that took.
    async fn converge_link(
        &mut self,
        place: &str,
        link: &Link,
        interface: &Interface,
        routes: &[RouteEntry],
        problems: &mut Vec<String>,
    ) -> u64 {
        let mut changes = 0;
        let mut fail = |what: String, err: crate::NetError| {
            problems.push(format!("{place}: {what}: {}", chain(&err)));
        };
        if let Some(mtu) = interface.mtu
            && link.mtu != Some(mtu)
        {
            match self.netlink.set_mtu(link, mtu).await {
                Ok(()) => {
                    info!(link = %link.name, mtu, "mtu set");
                    changes += 1;
                }
                Err(err) => fail(format!("mtu {mtu}"), err),
            }
        }
        if !link.up {
            match self.netlink.set_up(link).await {
                Ok(()) => {
                    info!(link = %link.name, "link set up");
                    changes += 1;
                }
                Err(err) => fail("set up".into(), err),
            }
        }
        let present = match self.netlink.addresses(link).await {
            Ok(present) => present,
            Err(err) => {
                fail("read addresses".into(), err);
                return changes;
            }
        };
        for address in interface.addresses.iter().filter(|a| !present.contains(a)) {
            match self.netlink.add_address(link, *address).await {
                Ok(()) => {
                    info!(link = %link.name, %address, "address added");
                    changes += 1;
                }
                Err(err) => fail(format!("address {address}"), err),
            }
        }
        for route in &interface.routes {
            let there = routes.iter().any(|r| {
                r.to == route.to && r.via == route.via && r.link_index == Some(link.index)
            });
            if there {
                continue;
            }
            match self.netlink.add_route(link, route.to, route.via).await {
                Ok(()) => {
                    info!(link = %link.name, to = %route.to, "route added");
                    changes += 1;
                }
                Err(err) => fail(format!("route to {}", route.to), err),
            }
        }
        changes
    }

    /// Removes what earlier specs had put in place and this one does not want.
    async fn remove_stale(
        &mut self,
        links: &[Link],
        wanted_addresses: &BTreeSet<AddressKey>,
        wanted_routes: &BTreeSet<RouteKey>,
        problems: &mut Vec<String>,
    ) -> u64 {
        let by_index: BTreeMap<u32, &Link> = links.iter().map(|l| (l.index, l)).collect();
        let mut changes = 0;
        for (index, address) in self.owned_addresses.difference(wanted_addresses) {
            // A link that is gone took its addresses with it.
            let Some(link) = by_index.get(index) else {
                continue;
            };
            match self.netlink.del_address(link, *address).await {
                Ok(()) => {
                    info!(link = %link.name, %address, "address no longer configured; removed");
                    changes += 1;
                }
                Err(err) => problems.push(format!(
                    "removing {address} from {}: {}",
                    link.name,
                    chain(&err)
                )),
            }
        }
        for (index, to, via) in self.owned_routes.difference(wanted_routes) {
            let Some(link) = by_index.get(index) else {
                continue;
            };
            match self.netlink.del_route(link, *to, *via).await {
                Ok(()) => {
                    info!(link = %link.name, %to, "route no longer configured; removed");
                    changes += 1;
                }
                Err(err) => problems.push(format!(
                    "removing the route to {to} from {}: {}",
                    link.name,
                    chain(&err)
                )),
            }
        }
        changes
    }

    /// The state as it is now, marked with what the spec asks for.
    async fn status(
        &self,
        configured_links: BTreeSet<u32>,
        mut problems: Vec<String>,
    ) -> NetworkStatus {
        let links = match self.netlink.links().await {
            Ok(links) => links,
            Err(err) => {
                problems.push(format!("cannot read the links: {}", chain(&err)));
                Vec::new()
            }
        };
        let names: BTreeMap<u32, String> =
            links.iter().map(|l| (l.index, l.name.clone())).collect();
        let mut addresses = Vec::new();
        for link in &links {
            match self.netlink.addresses(link).await {
                Ok(nets) => addresses.extend(nets.into_iter().map(|address| AddressInfo {
                    link: link.name.clone(),
                    address: address.to_string(),
                    configured: self.owned_addresses.contains(&(link.index, address)),
                })),
                Err(err) => warn!(link = %link.name, error = %err, "addresses not read"),
            }
        }
        let routes = match self.netlink.routes().await {
            Ok(routes) => routes,
            Err(err) => {
                problems.push(format!("cannot read the routes: {}", chain(&err)));
                Vec::new()
            }
        };
        NetworkStatus {
            links: links
                .iter()
                .map(|link| LinkInfo {
                    name: link.name.clone(),
                    index: link.index,
                    mac: link.mac.as_ref().map(mac_text),
                    mtu: link.mtu,
                    up: link.up,
                    carrier: link.carrier,
                    kind: link.kind.clone(),
                    controller: link.controller.and_then(|i| names.get(&i).cloned()),
                    configured: configured_links.contains(&link.index),
                })
                .collect(),
            addresses,
            routes: routes
                .iter()
                .map(|route| RouteInfo {
                    to: route.to.to_string(),
                    via: route.via.map(|v| v.to_string()),
                    link: route.link_index.and_then(|i| names.get(&i).cloned()),
                    protocol: protocol_name(route.protocol),
                    configured: route.link_index.is_some_and(|index| {
                        self.owned_routes.contains(&(index, route.to, route.via))
                    }),
                })
                .collect(),
            problems,
            passes: self.passes,
            repairs: self.repairs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_api::machine_config::Route;

    fn named(name: &str, address: &str) -> Interface {
        Interface {
            selector: LinkSelector::Name(name.into()),
            kind: LinkKind::Existing,
            addresses: vec![address.parse().unwrap()],
            mtu: None,
            routes: vec![Route {
                to: "0.0.0.0/0".parse().unwrap(),
                via: Some("10.0.0.1".parse().unwrap()),
            }],
            dhcp: false,
        }
    }

    #[test]
    fn the_config_overrides_the_command_line_for_the_same_link_only() {
        let cmdline = named("eth0", "10.0.0.9/24");
        let leases = BTreeMap::new();
        let spec = layered_spec(Some(&cmdline), &[named("eth1", "10.1.0.2/24")], &leases);
        let origins: Vec<&str> = spec.iter().map(|i| i.origin.as_str()).collect();
        assert_eq!(
            origins,
            [
                "the built-in defaults (lo)",
                "the kernel command line (eth0)",
                "machine.network.interfaces[0] (eth1)"
            ]
        );
        let spec = layered_spec(Some(&cmdline), &[named("eth0", "10.0.0.2/24")], &leases);
        assert_eq!(spec.len(), 2, "{spec:?}");
        assert_eq!(spec[1].interface.addresses[0].to_string(), "10.0.0.2/24");
    }
}
