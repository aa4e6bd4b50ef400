//! Applying configured interfaces: find the link, set MTU, bring it up, add addresses
//! and routes. Every step is idempotent, so applying the same spec twice changes nothing.

use std::time::{Duration, Instant};

use cairn_api::machine_config::{Interface, LinkSelector};
use tracing::{debug, info};

use crate::{Link, NetError, Netlink};

/// How often a missing link is looked for again while waiting for its driver.
const LINK_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The link among `links` that a selector names, if there is one. A MAC names the
/// device that has it, not the bonds, bridges and VLANs that copy it.
pub fn find_link<'a>(selector: &LinkSelector, links: &'a [Link]) -> Option<&'a Link> {
    match selector {
        LinkSelector::Name(name) => links.iter().find(|l| &l.name == name),
        LinkSelector::Mac(mac) => links
            .iter()
            .filter(|l| l.mac.as_ref() == Some(mac))
            .min_by_key(|l| l.kind.is_some()),
        LinkSelector::Vlan { parent, id } => {
            let parent = find_link(parent, links)?;
            links.iter().find(|l| {
                l.kind.as_deref() == Some("vlan")
                    && l.vlan_id == Some(*id)
                    && l.parent == Some(parent.index)
            })
        }
    }
}

/// Brings the loopback link up (it starts down in a new namespace and on a fresh boot).
pub async fn bring_up_loopback(netlink: &Netlink) -> Result<Link, NetError> {
    let link = wait_for_link(netlink, &LinkSelector::Name("lo".into()), Duration::ZERO).await?;
    netlink.set_up(&link).await?;
    Ok(link)
}

/// Waits up to `timeout` for a link matching `selector` to exist (drivers may still be
/// probing when boot gets here).
pub async fn wait_for_link(
    netlink: &Netlink,
    selector: &LinkSelector,
    timeout: Duration,
) -> Result<Link, NetError> {
    let started = Instant::now();
    loop {
        let links = netlink.links().await?;
        if let Some(link) = find_link(selector, &links) {
            return Ok(link.clone());
        }
        if started.elapsed() >= timeout {
            return Err(NetError::LinkNotFound {
                selector: selector.to_string(),
                waited_ms: started.elapsed().as_millis(),
                present: links
                    .iter()
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        tokio::time::sleep(LINK_POLL_INTERVAL).await;
    }
}

/// Applies one interface spec and returns the link it landed on.
pub async fn apply(
    netlink: &Netlink,
    interface: &Interface,
    link_timeout: Duration,
) -> Result<Link, NetError> {
    let link = wait_for_link(netlink, &interface.selector, link_timeout).await?;
    if let Some(mtu) = interface.mtu
        && link.mtu != Some(mtu)
    {
        netlink.set_mtu(&link, mtu).await?;
    }
    if !link.up {
        netlink.set_up(&link).await?;
    }
    let present = netlink.addresses(&link).await?;
    for address in &interface.addresses {
        if present.contains(address) {
            debug!(link = %link.name, %address, "address already present");
        } else {
            netlink.add_address(&link, *address).await?;
        }
    }
    for route in &interface.routes {
        netlink.add_route(&link, route.to, route.via).await?;
    }
    info!(
        link = %link.name,
        selector = %interface.selector,
        addresses = interface.addresses.len(),
        routes = interface.routes.len(),
        "interface configured"
    );
    Ok(link)
}
