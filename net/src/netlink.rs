//! The one netlink handle type: reads links and addresses, and changes them idempotently.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol, RouteScope};
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_route::link::{
    BondMode, InfoBond, InfoBridge, InfoData, InfoKind, InfoVeth, InfoVlan, LinkInfo,
};
use rtnetlink::{
    Handle, LinkBond, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVlan,
    RouteMessageBuilder,
};

use crate::NetError;

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Kernel name, e.g. `eth0`.
    pub name: String,
    /// Hardware address, for Ethernet-like links.
    pub mac: Option<[u8; 6]>,
    /// Current MTU.
    pub mtu: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier present (`IFF_LOWER_UP`).
    pub carrier: bool,
    /// The kind of a virtual link (`bond`, `bridge`, `vlan`, `veth`, …), as
    /// `IFLA_INFO_KIND` names it; `None` for a plain device.
    pub kind: Option<String>,
    /// The bond or bridge this link is a port of (`IFLA_MASTER`).
    pub controller: Option<u32>,
    /// The link a VLAN sits on (`IFLA_LINK`, when it differs from the link itself).
    pub parent: Option<u32>,
    /// A VLAN's id.
    pub vlan_id: Option<u16>,
    /// A bond's mode (the kernel's number).
    pub bond_mode: Option<u8>,
    /// The link's alias (`IFLA_IFALIAS`): [`CAIRN_LINK_ALIAS`] on links Cairn created.
    pub alias: Option<String>,
}

/// The alias Cairn gives the links it creates from the machine config, so they are
/// known as its own (and removed when no config names them) across restarts.
pub const CAIRN_LINK_ALIAS: &str = "cairn: machine.network";

impl Link {
    /// Reads the fields Cairn cares about out of a netlink link message.
    pub fn from_message(message: &LinkMessage) -> Self {
        let mut link = Link {
            index: message.header.index,
            name: String::new(),
            mac: None,
            mtu: None,
            up: message.header.flags.contains(LinkFlags::Up),
            carrier: message.header.flags.contains(LinkFlags::LowerUp),
            kind: None,
            controller: None,
            parent: None,
            vlan_id: None,
            bond_mode: None,
            alias: None,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name.clone_from(name),
                LinkAttribute::Address(bytes) => link.mac = <[u8; 6]>::try_from(&bytes[..]).ok(),
                LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
                LinkAttribute::Controller(index) => link.controller = Some(*index),
                LinkAttribute::Link(index) if *index != link.index => link.parent = Some(*index),
                LinkAttribute::IfAlias(alias) => link.alias = Some(alias.clone()),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                            LinkInfo::Data(InfoData::Vlan(data)) => {
                                link.vlan_id = data.iter().find_map(|d| match d {
                                    InfoVlan::Id(id) => Some(*id),
                                    _ => None,
                                });
                            }
                            LinkInfo::Data(InfoData::Bond(data)) => {
                                link.bond_mode = data.iter().find_map(|d| match d {
                                    InfoBond::Mode(mode) => Some(u8::from(*mode)),
                                    _ => None,
                                });
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// A route as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination prefix (`0.0.0.0/0` or `::/0` for a default route).
    pub to: IpNet,
    /// Gateway, if the route has one.
    pub via: Option<IpAddr>,
    /// Output link index, if the route has one.
    pub link_index: Option<u32>,
    /// Who installed it (`RTPROT_*`); Cairn's own routes carry [`CAIRN_ROUTE_PROTOCOL`].
    pub protocol: u8,
}

/// The route protocol number marking routes Cairn installs for the pod network, so
/// they can be told from everybody else's when reconciling (iproute2 names 0–4, 8–16,
/// 42 and 186–192; this one is free).
pub const CAIRN_ROUTE_PROTOCOL: u8 = 202;

/// A connection to the kernel's routing netlink (`NETLINK_ROUTE`) in the caller's
/// network namespace, as it was when [`Netlink::connect`] ran.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink socket and drives it on the current tokio runtime.
    pub fn connect() -> Result<Self, NetError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetError::Connect)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Opens a netlink socket inside the network namespace `namespace` (an open
    /// `nsfs` file) and drives it on the current tokio runtime: the socket keeps
    /// talking to that namespace whatever thread uses it.
    pub fn connect_in(namespace: BorrowedFd<'_>) -> Result<Self, NetError> {
        let runtime = tokio::runtime::Handle::current();
        let (connection, handle, _) = crate::netns::run_in(namespace, move || {
            // The socket registers with the caller's runtime, which then drives it.
            let _entered = runtime.enter();
            rtnetlink::new_connection().map_err(NetError::Connect)
        })??;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// The link named `name`, if there is one.
    pub async fn link_named(&self, name: &str) -> Result<Option<Link>, NetError> {
        let found: Result<Vec<LinkMessage>, _> = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_collect()
            .await;
        match found {
            Ok(messages) => Ok(messages.first().map(Link::from_message)),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => {
                Ok(None)
            }
            Err(source) => Err(request(format!("look up link {name}"), source)),
        }
    }

    /// Creates a bridge, administratively up.
    pub async fn add_bridge(&self, name: &str) -> Result<(), NetError> {
        self.handle
            .link()
            .add(rtnetlink::LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(|source| request(format!("add bridge {name}"), source))
    }

    /// Creates a bond named `name` in `mode` (the kernel's number), down, carrying
    /// [`CAIRN_LINK_ALIAS`].
    pub async fn add_bond(
        &self,
        name: &str,
        mode: u8,
        miimon: Option<u32>,
    ) -> Result<(), NetError> {
        let mut builder = LinkBond::new(name).mode(BondMode::from(mode));
        if let Some(miimon) = miimon {
            builder = builder.miimon(miimon);
        }
        self.add_owned(name, builder.down().build(), format!("add bond {name}"))
            .await
    }

    /// Creates a bridge named `name` with spanning tree on or off, carrying
    /// [`CAIRN_LINK_ALIAS`].
    pub async fn add_owned_bridge(&self, name: &str, stp: bool) -> Result<(), NetError> {
        let message = LinkBridge::new(name)
            .append_info_data(InfoBridge::StpState(if stp {
                netlink_packet_route::link::BridgeStpState::KernelStp
            } else {
                netlink_packet_route::link::BridgeStpState::Disabled
            }))
            .build();
        self.add_owned(name, message, format!("add bridge {name}"))
            .await
    }

    /// Creates VLAN `id` on `parent`, named `name`, carrying [`CAIRN_LINK_ALIAS`].
    pub async fn add_vlan(&self, name: &str, parent: &Link, id: u16) -> Result<(), NetError> {
        let message = LinkVlan::new(name, parent.index, id).build();
        self.add_owned(
            name,
            message,
            format!("add VLAN {id} on {} as {name}", parent.name),
        )
        .await
    }

    /// Creates the link `message` describes, then marks it with [`CAIRN_LINK_ALIAS`]
    /// (the kernel takes an alias only on links that exist).
    async fn add_owned(
        &self,
        name: &str,
        message: LinkMessage,
        operation: String,
    ) -> Result<(), NetError> {
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|source| request(operation, source))?;
        let Some(link) = self.link_named(name).await? else {
            return Err(NetError::LinkNotFound {
                selector: name.to_owned(),
                waited_ms: 0,
                present: "(it was just created)".into(),
            });
        };
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(link.index)
                    .alias(CAIRN_LINK_ALIAS)
                    .build(),
            )
            .execute()
            .await
            .map_err(|source| request(format!("mark {name} as Cairn's"), source))
    }

    /// Makes `port` a port of the bond or bridge `controller` (a bond's port is set
    /// down first, as the bonding driver wants), then sets it up.
    pub async fn set_controller(&self, port: &Link, controller: &Link) -> Result<(), NetError> {
        if controller.kind.as_deref() == Some("bond") && port.up {
            self.set_down(port).await?;
        }
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(port.index)
                    .controller(controller.index)
                    .build(),
            )
            .execute()
            .await
            .map_err(|source| {
                request(
                    format!("make {} a port of {}", port.name, controller.name),
                    source,
                )
            })?;
        self.set_up(port).await
    }

    /// Takes `port` out of whatever bond or bridge it is a port of.
    pub async fn release_port(&self, port: &Link) -> Result<(), NetError> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(port.index)
                    .nocontroller()
                    .build(),
            )
            .execute()
            .await
            .map_err(|source| request(format!("release {} from its controller", port.name), source))
    }

    /// Creates a veth pair in one request: `host` here, enslaved to the bridge
    /// `bridge` and up; `peer` directly inside the namespace `namespace`, down.
    pub async fn add_veth_to_namespace(
        &self,
        host: &str,
        bridge: &Link,
        peer: &str,
        namespace: BorrowedFd<'_>,
        mtu: Option<u32>,
    ) -> Result<(), NetError> {
        let mut peer_message = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_owned())
            .setns_by_fd(namespace.as_raw_fd());
        let mut message = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_owned())
            .controller(bridge.index)
            .up();
        if let Some(mtu) = mtu {
            peer_message = peer_message.mtu(mtu);
            message = message.mtu(mtu);
        }
        let message = message
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_message.build())))
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|source| {
                request(
                    format!(
                        "add veth {host} (on {}) <-> {peer} (in the pod)",
                        bridge.name
                    ),
                    source,
                )
            })
    }

    /// Renames a link and sets it up (its name can only change while it is down,
    /// which a fresh veth end is).
    pub async fn rename_up(&self, link: &Link, name: &str) -> Result<(), NetError> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(link.index)
                    .name(name.to_owned())
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|source| {
                request(
                    format!("rename {} to {name} and set it up", link.name),
                    source,
                )
            })
    }

    /// Deletes a link; deleting one that is already gone is not an error.
    pub async fn delete_link(&self, link: &Link) -> Result<(), NetError> {
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => Ok(()),
            Err(source) => Err(request(format!("delete link {}", link.name), source)),
        }
    }

    /// Takes a link out of service without waiting for the kernel to free it: sets it
    /// down, then renames it to `new_name` and puts it in the link group `group`, for a
    /// later [`Netlink::delete_group`] that frees many links for the price of one.
    pub async fn retire_link(
        &self,
        link: &Link,
        new_name: &str,
        group: u32,
    ) -> Result<(), NetError> {
        self.set_down(link).await?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(link.index)
                    .name(new_name.to_owned())
                    .link_group(group)
                    .build(),
            )
            .execute()
            .await
            .map_err(|source| {
                request(
                    format!("rename {} to {new_name} in link group {group}", link.name),
                    source,
                )
            })
    }

    /// Deletes every link of the link group `group` in one request (the kernel waits
    /// for one RCU grace period for all of them, where deleting them one by one waits
    /// once each). An empty group is not an error.
    pub async fn delete_group(&self, group: u32) -> Result<(), NetError> {
        let mut delete = self.handle.link().del(0);
        delete
            .message_mut()
            .attributes
            .push(LinkAttribute::Group(group));
        match delete.execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e))
                if matches!(e.raw_code().abs(), libc::ENODEV | libc::ENOENT) =>
            {
                Ok(())
            }
            Err(source) => Err(request(
                format!("delete the links of group {group}"),
                source,
            )),
        }
    }

    /// Installs (or replaces) a route to `to` through the gateway `via`, marked with
    /// [`CAIRN_ROUTE_PROTOCOL`]; the kernel picks the link that reaches `via`.
    pub async fn replace_gateway_route(&self, to: IpNet, via: IpAddr) -> Result<(), NetError> {
        let message = gateway_route(to, via)?;
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(|source| request(format!("add route {to} via {via}"), source))
    }

    /// Removes a route Cairn installed with [`Netlink::replace_gateway_route`]; one
    /// that is already gone is not an error.
    pub async fn del_gateway_route(&self, to: IpNet, via: IpAddr) -> Result<(), NetError> {
        let message = gateway_route(to, via)?;
        match self.handle.route().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ESRCH => Ok(()),
            Err(source) => Err(request(format!("remove route {to} via {via}"), source)),
        }
    }

    /// Every link in the namespace.
    pub async fn links(&self) -> Result<Vec<Link>, NetError> {
        let messages: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| request("list links", source))?;
        Ok(messages.iter().map(Link::from_message).collect())
    }

    /// Sets a link administratively up.
    pub async fn set_up(&self, link: &Link) -> Result<(), NetError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(link.index).up().build())
            .execute()
            .await
            .map_err(|source| request(format!("set {} up", link.name), source))
    }

    /// Sets a link administratively down.
    pub async fn set_down(&self, link: &Link) -> Result<(), NetError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(link.index).down().build())
            .execute()
            .await
            .map_err(|source| request(format!("set {} down", link.name), source))
    }

    /// Sets a link's MTU.
    pub async fn set_mtu(&self, link: &Link, mtu: u32) -> Result<(), NetError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(link.index).mtu(mtu).build())
            .execute()
            .await
            .map_err(|source| request(format!("set mtu {mtu} on {}", link.name), source))
    }

    /// The addresses assigned to a link.
    pub async fn addresses(&self, link: &Link) -> Result<Vec<IpNet>, NetError> {
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute()
            .try_collect()
            .await
            .map_err(|source| request(format!("list addresses of {}", link.name), source))?;
        let mut nets = Vec::new();
        for message in messages {
            let prefix = message.header.prefix_len;
            for attribute in &message.attributes {
                if let AddressAttribute::Address(ip) = attribute
                    && let Ok(net) = IpNet::new(*ip, prefix)
                {
                    nets.push(net);
                }
            }
        }
        Ok(nets)
    }

    /// Assigns an address to a link; assigning one that is already there is not an error.
    pub async fn add_address(&self, link: &Link, address: IpNet) -> Result<(), NetError> {
        self.handle
            .address()
            .add(link.index, address.addr(), address.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(|source| request(format!("add address {address} to {}", link.name), source))
    }

    /// Installs (or replaces) a static route through a link.
    pub async fn add_route(
        &self,
        link: &Link,
        to: IpNet,
        via: Option<IpAddr>,
    ) -> Result<(), NetError> {
        let invalid = |reason: String| NetError::InvalidRoute {
            to: to.to_string(),
            reason,
        };
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(to.addr(), to.prefix_len())
            .map_err(|e| invalid(e.to_string()))?
            .output_interface(link.index)
            .protocol(RouteProtocol::Static);
        builder = match via {
            Some(gateway) => builder
                .gateway(gateway)
                .map_err(|e| invalid(e.to_string()))?,
            None => builder.scope(RouteScope::Link),
        };
        let via_text = via.map(|g| format!(" via {g}")).unwrap_or_default();
        self.handle
            .route()
            .add(builder.build())
            .replace()
            .execute()
            .await
            .map_err(|source| {
                request(
                    format!("add route {to}{via_text} dev {}", link.name),
                    source,
                )
            })
    }

    /// Removes an address from a link; removing one that is not there is not an error.
    pub async fn del_address(&self, link: &Link, address: IpNet) -> Result<(), NetError> {
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute()
            .try_collect()
            .await
            .map_err(|source| request(format!("list addresses of {}", link.name), source))?;
        for message in messages {
            let matches = message.header.prefix_len == address.prefix_len()
                && message
                    .attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Address(ip) if *ip == address.addr()));
            if matches {
                self.handle
                    .address()
                    .del(message)
                    .execute()
                    .await
                    .map_err(|source| {
                        request(
                            format!("remove address {address} from {}", link.name),
                            source,
                        )
                    })?;
            }
        }
        Ok(())
    }

    /// Removes a static route through a link; removing one that is not there is not an error.
    pub async fn del_route(
        &self,
        link: &Link,
        to: IpNet,
        via: Option<IpAddr>,
    ) -> Result<(), NetError> {
        let invalid = |reason: String| NetError::InvalidRoute {
            to: to.to_string(),
            reason,
        };
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(to.addr(), to.prefix_len())
            .map_err(|e| invalid(e.to_string()))?
            .output_interface(link.index);
        if let Some(gateway) = via {
            builder = builder
                .gateway(gateway)
                .map_err(|e| invalid(e.to_string()))?;
        }
        match self.handle.route().del(builder.build()).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ESRCH => Ok(()),
            Err(source) => Err(request(
                format!("remove route {to} dev {}", link.name),
                source,
            )),
        }
    }

    /// Creates a veth pair (used by tests now, and by the pod network later).
    pub async fn add_veth(&self, name: &str, peer: &str) -> Result<(), NetError> {
        self.handle
            .link()
            .add(rtnetlink::LinkVeth::new(name, peer).build())
            .execute()
            .await
            .map_err(|source| request(format!("add veth {name} <-> {peer}"), source))
    }

    /// Moves a link into another network namespace (given by an open namespace file).
    pub async fn move_to_namespace(
        &self,
        link: &Link,
        namespace: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), NetError> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(link.index)
                    .setns_by_fd(namespace.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(|source| request(format!("move {} to another namespace", link.name), source))
    }

    /// Every route of the main table, IPv4 and IPv6.
    pub async fn routes(&self) -> Result<Vec<RouteEntry>, NetError> {
        let mut entries = Vec::new();
        for message in [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let messages: Vec<_> = self
                .handle
                .route()
                .get(message)
                .execute()
                .try_collect()
                .await
                .map_err(|source| request("list routes", source))?;
            for message in messages {
                let mut to = None;
                let mut via = None;
                let mut link_index = None;
                for attribute in &message.attributes {
                    match attribute {
                        RouteAttribute::Destination(address) => to = route_ip(address),
                        RouteAttribute::Gateway(address) => via = route_ip(address),
                        RouteAttribute::Oif(index) => link_index = Some(*index),
                        _ => {}
                    }
                }
                let prefix = message.header.destination_prefix_length;
                let to = match (to, message.header.address_family) {
                    (Some(ip), _) => ip,
                    (None, netlink_packet_route::AddressFamily::Inet6) => {
                        IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
                    }
                    (None, _) => IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED),
                };
                if let Ok(to) = IpNet::new(to, prefix) {
                    entries.push(RouteEntry {
                        to,
                        via,
                        link_index,
                        protocol: u8::from(message.header.protocol),
                    });
                }
            }
        }
        Ok(entries)
    }
}

/// The message of a pod network route: `to` through the gateway `via`, marked with
/// [`CAIRN_ROUTE_PROTOCOL`].
fn gateway_route(
    to: IpNet,
    via: IpAddr,
) -> Result<netlink_packet_route::route::RouteMessage, NetError> {
    let invalid = |reason: String| NetError::InvalidRoute {
        to: to.to_string(),
        reason,
    };
    Ok(RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(to.addr(), to.prefix_len())
        .map_err(|e| invalid(e.to_string()))?
        .gateway(via)
        .map_err(|e| invalid(e.to_string()))?
        .protocol(RouteProtocol::Other(CAIRN_ROUTE_PROTOCOL))
        .build())
}

fn request(operation: impl Into<String>, source: rtnetlink::Error) -> NetError {
    NetError::Request {
        operation: operation.into(),
        source,
    }
}

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}
