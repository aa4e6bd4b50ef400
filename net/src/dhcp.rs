//! A DHCPv4 client: acquires a lease on one link (DISCOVER, OFFER, REQUEST, ACK) and
//! keeps it as RFC 2131 says: from T1 it renews with the server that granted it
//! (unicast), from T2 it rebinds with any server (broadcast), and at the end of the
//! lease it gives the address up and starts over. Leases are posted on a
//! [`LeaseBoard`], from which the network reconciler puts them in place (address,
//! default route, MTU) and takes them away; DNS servers and the host name offered are
//! there for whoever uses them. Maintenance mode applies a lease directly
//! ([`apply`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use cairn_api::machine_config::{Interface, LinkKind, LinkSelector, Route};

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
/// The options every request asks the server for.
const REQUESTED_OPTIONS: [OptionCode; 8] = [
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::AddressLeaseTime,
    OptionCode::Renewal,
    OptionCode::Rebinding,
    OptionCode::InterfaceMtu,
    OptionCode::Hostname,
];
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
    /// From when to renew with the granting server (T1; half the lifetime unless
    /// the server says).
    pub renew_after: Duration,
    /// From when to rebind with any server (T2; seven eighths of the lifetime unless
    /// the server says).
    pub rebind_after: Duration,
    /// The link MTU offered (option 26).
    pub mtu: Option<u32>,
    /// The host name offered (option 12).
    pub hostname: Option<String>,
    /// When the lease was granted (the answer was read).
    pub obtained: Instant,
}

/// Where a lease stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeasePhase {
    /// Valid; nothing to do before T1.
    Bound,
    /// Between T1 and T2: renew with the server that granted it.
    Renewing,
    /// Between T2 and the end: rebind with any server.
    Rebinding,
    /// Over: the address must go.
    Expired,
}

impl Lease {
    /// The lease's phase at `now`.
    pub fn phase(&self, now: Instant) -> LeasePhase {
        let age = now.saturating_duration_since(self.obtained);
        if age >= self.lifetime {
            LeasePhase::Expired
        } else if age >= self.rebind_after {
            LeasePhase::Rebinding
        } else if age >= self.renew_after {
            LeasePhase::Renewing
        } else {
            LeasePhase::Bound
        }
    }

    /// When the current phase ends (T1, T2 or the end of the lease).
    pub fn phase_ends(&self, now: Instant) -> Instant {
        let end = match self.phase(now) {
            LeasePhase::Bound => self.renew_after,
            LeasePhase::Renewing => self.rebind_after,
            LeasePhase::Rebinding | LeasePhase::Expired => self.lifetime,
        };
        self.obtained + end
    }

    /// The lease as a layer of the network spec: its address, a default route
    /// through its router, its MTU, on the link named `link`.
    pub fn interface(&self, link: &str) -> Interface {
        Interface {
            selector: LinkSelector::Name(link.to_owned()),
            kind: LinkKind::Existing,
            addresses: vec![IpNet::V4(self.address)],
            mtu: self.mtu,
            dhcp: true,
            routes: self
                .router
                .map(|router| Route {
                    to: IpNet::V4(Ipv4Net::default()),
                    via: Some(IpAddr::V4(router)),
                })
                .into_iter()
                .collect(),
        }
    }
}

/// The leases a node's DHCP clients hold, by link name: posted by [`maintain`], read
/// by the network reconciler. Clones share the board.
#[derive(Clone, Default)]
pub struct LeaseBoard {
    leases: Arc<RwLock<BTreeMap<String, Lease>>>,
    changed: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for LeaseBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.leases()).finish()
    }
}

impl LeaseBoard {
    /// Posts the lease of `link` (or its loss, with `None`).
    pub fn post(&self, link: &str, lease: Option<Lease>) {
        {
            let mut leases = self.leases.write().unwrap_or_else(PoisonError::into_inner);
            match lease {
                Some(lease) => leases.insert(link.to_owned(), lease),
                None => leases.remove(link),
            };
        }
        self.changed.notify_one();
    }

    /// Every lease held now.
    pub fn leases(&self) -> BTreeMap<String, Lease> {
        self.leases
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits for the next post (one waiter: the reconciler; a post while nobody
    /// waits is kept for the next wait).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
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
    options.insert(DhcpOption::ParameterRequestList(REQUESTED_OPTIONS.to_vec()));
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
    // T1 and T2 as the server says, kept in order and within the lease.
    let rebind_after = match options.get(OptionCode::Rebinding) {
        Some(DhcpOption::Rebinding(secs)) => Duration::from_secs(u64::from(*secs)),
        _ => lifetime * 7 / 8,
    }
    .min(lifetime);
    let renew_after = match options.get(OptionCode::Renewal) {
        Some(DhcpOption::Renewal(secs)) => Duration::from_secs(u64::from(*secs)),
        _ => lifetime / 2,
    }
    .min(rebind_after);
    let mtu = match options.get(OptionCode::InterfaceMtu) {
        // RFC 2132: at least 68.
        Some(DhcpOption::InterfaceMtu(mtu)) if *mtu >= 68 => Some(u32::from(*mtu)),
        _ => None,
    };
    let hostname = match options.get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(name)) if !name.is_empty() => Some(name.clone()),
        _ => None,
    };
    Some(Lease {
        address,
        router,
        dns,
        server,
        lifetime,
        renew_after,
        rebind_after,
        mtu,
        hostname,
        obtained: Instant::now(),
    })
}

async fn exchange(
    socket: &UdpSocket,
    link: &Link,
    message: &Message,
    expect: &[MessageType],
    deadline: Instant,
) -> Result<Message, DhcpError> {
    exchange_with(socket, link, message, expect, deadline, Ipv4Addr::BROADCAST).await
}

/// Sends `message` to `server` (the broadcast address, or one server when
/// renewing) until an answer of a kind in `expect` comes, or `deadline`.
async fn exchange_with(
    socket: &UdpSocket,
    link: &Link,
    message: &Message,
    expect: &[MessageType],
    deadline: Instant,
    server: Ipv4Addr,
) -> Result<Message, DhcpError> {
    let bytes = message
        .to_vec()
        .map_err(|e| DhcpError::Encode(e.to_string()))?;
    let broadcast = SocketAddrV4::new(server, SERVER_PORT);
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

/// How a lease is extended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// RENEWING: ask the server that granted it, unicast.
    Renew,
    /// REBINDING: ask any server, broadcast.
    Rebind,
}

/// Asks to extend `lease` (a REQUEST carrying our address as `ciaddr`), as RFC 2131's
/// RENEWING or REBINDING state does; the extended lease.
pub async fn extend(
    link: &Link,
    lease: &Lease,
    how: Extension,
    timeout: Duration,
) -> Result<Lease, DhcpError> {
    let socket = socket_for(link)?;
    let mac = link.mac.unwrap_or_default();
    let mut message = Message::new_with_id(
        new_xid(),
        lease.address.addr(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    message.set_opcode(Opcode::BootRequest);
    let options = message.opts_mut();
    options.insert(DhcpOption::MessageType(MessageType::Request));
    options.insert(DhcpOption::ParameterRequestList(REQUESTED_OPTIONS.to_vec()));
    let server = match how {
        Extension::Renew => lease.server,
        Extension::Rebind => Ipv4Addr::BROADCAST,
    };
    let ack = exchange_with(
        &socket,
        link,
        &message,
        &[MessageType::Ack],
        Instant::now() + timeout,
        server,
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

/// The longest one renewal or rebinding exchange waits for an answer.
const EXTEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest pause between two renewal or rebinding attempts.
const EXTEND_PAUSE: Duration = Duration::from_secs(1);

/// How keeping a lease ended.
enum Kept {
    /// A server extended it.
    Extended(Lease),
    /// Nobody did before it ended.
    Expired,
    /// The client must stop.
    Stopped,
}

/// Holds `lease` through its phases: waits for T1, renews with its server until T2
/// (pausing half the time left between attempts, as RFC 2131 suggests), rebinds with
/// any server until it ends.
async fn keep(link: &Link, lease: &Lease, stop: &CancellationToken) -> Kept {
    loop {
        let now = Instant::now();
        let how = match lease.phase(now) {
            LeasePhase::Expired => return Kept::Expired,
            LeasePhase::Bound => {
                if sleep_or_stop(stop, lease.phase_ends(now) - now).await {
                    return Kept::Stopped;
                }
                continue;
            }
            LeasePhase::Renewing => Extension::Renew,
            LeasePhase::Rebinding => Extension::Rebind,
        };
        let left = lease.phase_ends(now).saturating_duration_since(now);
        let attempt = left.min(EXTEND_TIMEOUT).max(Duration::from_millis(500));
        let extended = tokio::select! {
            extended = extend(link, lease, how, attempt) => extended,
            () = stop.cancelled() => return Kept::Stopped,
        };
        match extended {
            Ok(new) => {
                debug!(link = %link.name, ?how, address = %new.address, "DHCP lease extended");
                return Kept::Extended(new);
            }
            Err(err) => {
                debug!(link = %link.name, ?how, error = %err, "DHCP lease not extended yet");
                let now = Instant::now();
                let left = lease.phase_ends(now).saturating_duration_since(now);
                let pause = (left / 2).max(EXTEND_PAUSE).min(left);
                if sleep_or_stop(stop, pause).await {
                    return Kept::Stopped;
                }
            }
        }
    }
}

/// Keeps a link's lease and posts it on `board`: acquires (retrying forever with a
/// pause), holds it through renewal and rebinding, and when it ends unextended posts
/// its loss (the reconciler removes the address) and acquires anew. Returns only
/// when `stop` fires; the lease stays posted then (the node is going down).
pub async fn maintain(
    link: Link,
    first: Option<Lease>,
    board: LeaseBoard,
    stop: CancellationToken,
) {
    let mut lease = first;
    loop {
        let current = match lease.take() {
            Some(lease) => lease,
            None => match acquire(&link, Duration::from_secs(30)).await {
                Ok(new) => {
                    info!(link = %link.name, address = %new.address, router = ?new.router, lifetime_s = new.lifetime.as_secs(), "DHCP lease acquired");
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
        board.post(&link.name, Some(current.clone()));
        match keep(&link, &current, &stop).await {
            Kept::Extended(new) => lease = Some(new),
            Kept::Expired => {
                warn!(link = %link.name, address = %current.address, "DHCP lease expired unextended; its address goes");
                board.post(&link.name, None);
            }
            Kept::Stopped => return,
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
        let lease = lease_with(&[
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
            DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2)]),
            DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 0, 2, 3)]),
            DhcpOption::AddressLeaseTime(86400),
        ]);
        assert_eq!(lease.address.to_string(), "10.0.2.15/24");
        assert_eq!(lease.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(lease.dns, [Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(lease.lifetime, Duration::from_secs(86400));
        assert_eq!(lease.server, Ipv4Addr::new(10, 0, 2, 2));
        // T1 and T2 default to a half and seven eighths of the lifetime.
        assert_eq!(lease.renew_after, Duration::from_secs(43200));
        assert_eq!(lease.rebind_after, Duration::from_secs(75600));
        assert_eq!((lease.mtu, lease.hostname.as_deref()), (None, None));
    }

    /// The lease of an ACK for 10.0.2.15 from 10.0.2.2 carrying `options`.
    fn lease_with(options: &[DhcpOption]) -> Lease {
        let mut ack = Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 2, 15),
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::UNSPECIFIED,
            &[0x52, 0x54, 0, 0, 0, 1],
        );
        ack.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Ack));
        for option in options {
            ack.opts_mut().insert(option.clone());
        }
        lease_of(&Message::from_bytes(&ack.to_vec().unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn server_timers_mtu_and_hostname_are_taken_and_kept_in_order() {
        let lease = lease_with(&[
            DhcpOption::AddressLeaseTime(100),
            DhcpOption::Renewal(30),
            DhcpOption::Rebinding(60),
            DhcpOption::InterfaceMtu(1400),
            DhcpOption::Hostname("node-7".into()),
        ]);
        assert_eq!(lease.renew_after, Duration::from_secs(30));
        assert_eq!(lease.rebind_after, Duration::from_secs(60));
        assert_eq!(lease.mtu, Some(1400));
        assert_eq!(lease.hostname.as_deref(), Some("node-7"));
        // Timers past the lifetime, or T1 after T2, are pulled back in.
        let odd = lease_with(&[
            DhcpOption::AddressLeaseTime(100),
            DhcpOption::Renewal(90),
            DhcpOption::Rebinding(500),
            DhcpOption::InterfaceMtu(20),
        ]);
        assert_eq!(odd.rebind_after, Duration::from_secs(100));
        assert_eq!(odd.renew_after, Duration::from_secs(90));
        assert_eq!(odd.mtu, None, "an MTU under 68 is ignored");
    }

    #[test]
    fn a_lease_goes_bound_renewing_rebinding_expired() {
        let lease = lease_with(&[
            DhcpOption::AddressLeaseTime(100),
            DhcpOption::Renewal(50),
            DhcpOption::Rebinding(80),
        ]);
        let at = |secs| lease.obtained + Duration::from_secs(secs);
        assert_eq!(lease.phase(at(0)), LeasePhase::Bound);
        assert_eq!(lease.phase_ends(at(0)), at(50));
        assert_eq!(lease.phase(at(50)), LeasePhase::Renewing);
        assert_eq!(lease.phase_ends(at(60)), at(80));
        assert_eq!(lease.phase(at(80)), LeasePhase::Rebinding);
        assert_eq!(lease.phase_ends(at(99)), at(100));
        assert_eq!(lease.phase(at(100)), LeasePhase::Expired);
        // As a spec layer: the address, a default route through the router.
        let interface = lease.interface("eth1");
        assert_eq!(
            interface.addresses,
            [IpNet::V4("10.0.2.15/24".parse().unwrap())]
        );
        assert!(interface.routes.is_empty(), "no router offered");
    }
}
