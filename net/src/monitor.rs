//! Following changes as the kernel announces them: links (`RTNLGRP_LINK`), and every
//! change of links, addresses and routes for reconcilers.

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::sys::SocketAddr;

use crate::{Link, NetError};

/// One change of one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The link appeared or changed (flags, carrier, MTU, name).
    Changed(Link),
    /// The link went away.
    Removed(Link),
}

/// A subscription to link changes in the caller's network namespace.
pub struct LinkMonitor {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
}

impl LinkMonitor {
    /// Subscribes; the netlink connection is driven on the current tokio runtime.
    pub fn subscribe() -> Result<Self, NetError> {
        let (connection, _handle, messages) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
                .map_err(NetError::Connect)?;
        tokio::spawn(connection);
        Ok(Self { messages })
    }

    /// The next link change, or `None` when the socket closed.
    pub async fn next(&mut self) -> Option<LinkEvent> {
        while let Some((message, _)) = self.messages.next().await {
            if let NetlinkPayload::InnerMessage(inner) = message.payload {
                match inner {
                    RouteNetlinkMessage::NewLink(link) => {
                        return Some(LinkEvent::Changed(Link::from_message(&link)));
                    }
                    RouteNetlinkMessage::DelLink(link) => {
                        return Some(LinkEvent::Removed(Link::from_message(&link)));
                    }
                    _ => {}
                }
            }
        }
        None
    }
}

/// A subscription to every change of links, addresses and routes (IPv4 and IPv6) in
/// the caller's network namespace, for reconcilers that only need to know that
/// something changed.
pub struct ChangeMonitor {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
}

impl ChangeMonitor {
    /// Subscribes; the netlink connection is driven on the current tokio runtime.
    pub fn subscribe() -> Result<Self, NetError> {
        let (connection, _handle, messages) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
        ])
        .map_err(NetError::Connect)?;
        tokio::spawn(connection);
        Ok(Self { messages })
    }

    /// Waits for the next change, then takes every change already queued with it;
    /// `false` when the socket closed.
    pub async fn changed(&mut self) -> bool {
        if self.messages.next().await.is_none() {
            return false;
        }
        while self.messages.try_recv().is_ok() {}
        true
    }
}
