//! A DHCPv4 client: acquires a lease on one link (DISCOVER, OFFER, REQUEST, ACK),
//! applies it (address, default route) over netlink, and renews it at half its
//! lifetime. Used for `dhcp: true` interfaces and for maintenance mode.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use ipnet::{IpNet, Ipv4Net};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{Link, NetError, Netlink};

const CLIENT_PORT: u16 = 68;
const SERVER_PORT: u16 = 67;
/// How long one exchange waits for an answer before sending again.
const RETRANSMIT: Duration = Duration::from_secs(2);

/// A lease as the server granted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address with its prefix.
    pub address: Ipv4Net,
    /// The default gateway, if offered.
    pub router: Option<Ipv4Addr>,
    /// DNS servers offered.
    pub dns: Vec<Ipv4Addr>,
    /// The server that granted it.
    pub server: Ipv4Addr,
    /// Lease lifetime.
    pub lifetime: Duration,
}

/// Why DHCP failed.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// The socket could not be set up.
    #[error("cannot open a DHCP socket on {link}")]
    Socket {
        /// The link.
        link: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No server answered in time.
    #[error("no DHCP answer on {link} within {waited:?}{}", .last_send_error.as_ref().map(|e| format!(" (sending failed: {e})")).unwrap_or_default())]
    Timeout {
        /// The link.
        link: String,
        /// How long we tried.
        waited: Duration,
        /// The last error sending a request, if sending failed.
        last_send_error: Option<String>,
    },
    /// The server refused (NAK).
    #[error("DHCP server {server} refused the request on {link}")]
    Refused {
        /// The link.
        link: String,
        /// Who refused.
        server: Ipv4Addr,
    },
    /// A message could not be encoded.
    #[error("cannot encode a DHCP message: {0}")]
    Encode(String),
    /// Applying the lease failed.
    #[error(transparent)]
    Apply(#[from] NetError),
}

fn socket_for(link: &Link) -> Result<UdpSocket, DhcpError> {
    let io = |source| DhcpError::Socket {
        link: link.name.clone(),
        source,
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(io)?;
    socket.set_reuse_address(true).map_err(io)?;
    socket.set_broadcast(true).map_err(io)?;
    socket.bind_device(Some(link.name.as_bytes())).map_err(io)?;
    socket
        .bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, CLIENT_PORT)).into())
        .map_err(io)?;
    socket.set_nonblocking(true).map_err(io)?;
    UdpSocket::from_std(socket.into()).map_err(io)
}

fn request_message(
    link: &Link,
    xid: u32,
    kind: MessageType,
    offer: Option<(Ipv4Addr, Option<Ipv4Addr>)>,
) -> Message {
    let mac = link.mac.unwrap_or_default();
    let mut message = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    message.set_opcode(Opcode::BootRequest);
    // Ask for broadcast answers: we have no address to receive unicast on yet.
    message.set_flags(Flags::default().set_broadcast());
    let options = message.opts_mut();
    options.insert(DhcpOption::MessageType(kind));
    options.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::AddressLeaseTime,
    ]));
    if let Some((address, server)) = offer {
        options.insert(DhcpOption::RequestedIpAddress(address));
        if let Some(server) = server {
            options.insert(DhcpOption::ServerIdentifier(server));
        }
    }
    message
}

/// Reads the lease out of an ACK (or the offer out of an OFFER).
pub fn lease_of(message: &Message) -> Option<Lease> {
    let options = message.opts();
    let mask = match options.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => *mask,
        _ => Ipv4Addr::new(255, 255, 255, 0),
    };
    let prefix = u8::try_from(u32::from(mask).leading_ones()).unwrap_or(24);
    let address = Ipv4Net::new(message.yiaddr(), prefix).ok()?;
    let router = match options.get(OptionCode::Router) {
        Some(DhcpOption::Router(routers)) => routers.first().copied(),
        _ => None,
    };
    let dns = match options.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(servers)) => servers.clone(),
        _ => Vec::new(),
    };
    let server = match options.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(server)) => *server,
        _ => message.siaddr(),
    };
    let lifetime = match options.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(secs)) => Duration::from_secs(u64::from(*secs)),
        _ => Duration::from_secs(3600),
    };
    Some(Lease {
        address,
        router,
        dns,
        server,
        lifetime,
    })
}

async fn exchange(
    socket: &UdpSocket,
    link: &Link,
    message: &Message,
    expect: &[MessageType],
    deadline: Instant,
) -> Result<Message, DhcpError> {
    let bytes = message
        .to_vec()
        .map_err(|e| DhcpError::Encode(e.to_string()))?;
    let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT);
    let mut buffer = vec![0u8; 1500];
    let mut last_send_error = None;
    loop {
        if Instant::now() >= deadline {
            return Err(DhcpError::Timeout {
                link: link.name.clone(),
                waited: RETRANSMIT,
                last_send_error,
            });
        }
        if let Err(err) = socket.send_to(&bytes, broadcast).await {
            debug!(link = %link.name, error = %err, "DHCP send failed; retrying");
            last_send_error = Some(err.to_string());
        }
        let resend_at = Instant::now() + RETRANSMIT;
        loop {
            let wait = resend_at
                .min(deadline)
                .saturating_duration_since(Instant::now());
            let Ok(received) = tokio::time::timeout(wait, socket.recv_from(&mut buffer)).await
            else {
                break;
            };
            let Ok((len, _)) = received else { break };
            let Ok(answer) = Message::from_bytes(&buffer[..len]) else {
                continue;
            };
            if answer.xid() != message.xid() || answer.opcode() != Opcode::BootReply {
                continue;
            }
            match answer.opts().msg_type() {
                Some(MessageType::Nak) => {
                    return Err(DhcpError::Refused {
                        link: link.name.clone(),
                        server: answer.siaddr(),
                    });
                }
                Some(kind) if expect.contains(&kind) => return Ok(answer),
                _ => {}
            }
        }
    }
}

fn new_xid() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

/// Acquires a lease on `link` within `timeout` (the link must be up).
pub async fn acquire(link: &Link, timeout: Duration) -> Result<Lease, DhcpError> {
    let socket = socket_for(link)?;
    let deadline = Instant::now() + timeout;
    let xid = new_xid();
    let timeout_error = || DhcpError::Timeout {
        link: link.name.clone(),
        waited: timeout,
        last_send_error: None,
    };
    let offer = exchange(
        &socket,
        link,
        &request_message(link, xid, MessageType::Discover, None),
        &[MessageType::Offer],
        deadline,
    )
    .await
    .map_err(|e| match e {
        DhcpError::Timeout {
            last_send_error, ..
        } => DhcpError::Timeout {
            link: link.name.clone(),
            waited: timeout,
            last_send_error,
        },
        other => other,
    })?;
    let offered = lease_of(&offer).ok_or_else(timeout_error)?;
    let ack = exchange(
        &socket,
        link,
        &request_message(
            link,
            xid,
            MessageType::Request,
            Some((offered.address.addr(), Some(offered.server))),
        ),
        &[MessageType::Ack],
        deadline,
    )
    .await
    .map_err(|e| match e {
        DhcpError::Timeout {
            last_send_error, ..
        } => DhcpError::Timeout {
            link: link.name.clone(),
            waited: timeout,
            last_send_error,
        },
        other => other,
    })?;
    lease_of(&ack).ok_or_else(timeout_error)
}

/// Asks to extend a lease (an INIT-REBOOT style broadcast REQUEST for our address).
pub async fn renew(link: &Link, lease: &Lease, timeout: Duration) -> Result<Lease, DhcpError> {
    let socket = socket_for(link)?;
    let message = request_message(
        link,
        new_xid(),
        MessageType::Request,
        Some((lease.address.addr(), None)),
    );
    let ack = exchange(
        &socket,
        link,
        &message,
        &[MessageType::Ack],
        Instant::now() + timeout,
    )
    .await?;
    lease_of(&ack).ok_or(DhcpError::Timeout {
        link: link.name.clone(),
        waited: timeout,
        last_send_error: None,
    })
}

/// Puts a lease on the link: the address, and a default route through its router.
pub async fn apply(netlink: &Netlink, link: &Link, lease: &Lease) -> Result<(), NetError> {
    netlink.add_address(link, IpNet::V4(lease.address)).await?;
    if let Some(router) = lease.router {
        let default = IpNet::V4(Ipv4Net::default());
        netlink
            .add_route(link, default, Some(IpAddr::V4(router)))
            .await?;
    }
    info!(
        link = %link.name,
        address = %lease.address,
        router = ?lease.router,
        lifetime_s = lease.lifetime.as_secs(),
        "DHCP lease applied"
    );
    Ok(())
}

/// Keeps a link's lease: acquires (retrying forever with a pause), applies, renews at
/// half the lifetime, starts over when a renewal fails. Returns only when `stop` fires.
pub async fn maintain(netlink: Netlink, link: Link, first: Option<Lease>, stop: CancellationToken) {
    let mut lease = first;
    loop {
        let current = match lease.take() {
            Some(lease) => lease,
            None => match acquire(&link, Duration::from_secs(30)).await {
                Ok(new) => {
                    if let Err(err) = apply(&netlink, &link, &new).await {
                        warn!(link = %link.name, error = %err, "cannot apply the DHCP lease");
                    }
                    new
                }
                Err(err) => {
                    warn!(link = %link.name, error = %err, "DHCP failed; retrying");
                    if sleep_or_stop(&stop, Duration::from_secs(5)).await {
                        return;
                    }
                    continue;
                }
            },
        };
        if sleep_or_stop(&stop, current.lifetime / 2).await {
            return;
        }
        match renew(&link, &current, Duration::from_secs(10)).await {
            Ok(renewed) => {
                debug!(link = %link.name, address = %renewed.address, "DHCP lease renewed");
                lease = Some(renewed);
            }
            Err(err) => {
                warn!(link = %link.name, error = %err, "DHCP renewal failed; acquiring anew")
            }
        }
    }
}

/// Sleeps; `true` if `stop` fired meanwhile.
async fn sleep_or_stop(stop: &CancellationToken, duration: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => false,
        () = stop.cancelled() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_options_become_a_lease() {
        let mut ack = Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 2, 15),
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::UNSPECIFIED,
            &[0x52, 0x54, 0, 0, 0, 1],
        );
        let options = ack.opts_mut();
        options.insert(DhcpOption::MessageType(MessageType::Ack));
        options.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        options.insert(DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2)]));
        options.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
            10, 0, 2, 3,
        )]));
        options.insert(DhcpOption::AddressLeaseTime(86400));
        let bytes = ack.to_vec().unwrap();
        let lease = lease_of(&Message::from_bytes(&bytes).unwrap()).unwrap();
        assert_eq!(lease.address.to_string(), "10.0.2.15/24");
        assert_eq!(lease.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(lease.dns, [Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(lease.lifetime, Duration::from_secs(86400));
        assert_eq!(lease.server, Ipv4Addr::new(10, 0, 2, 2));
    }
}
