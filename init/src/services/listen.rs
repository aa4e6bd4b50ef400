//! Where a service of this node can be dialled while it listens: the API server (for
//! the scheduler, the controllers and the agent on this node) and the machine API
//! (for the API server's log and exec relay, and the port the Node publishes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};

/// The address a listening service can be dialled at, set while it listens.
#[derive(Clone, Default, Debug)]
pub struct ListenAddress {
    addr: Arc<RwLock<Option<SocketAddr>>>,
}

impl ListenAddress {
    /// The address to dial, if the service listens: its listening address, with
    /// loopback for an unspecified one.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr.read().ok().and_then(|a| *a)
    }

    /// Records where the service listens (`None` when it stops).
    pub fn set(&self, addr: Option<SocketAddr>) {
        if let Ok(mut slot) = self.addr.write() {
            *slot = addr.map(dialable);
        }
    }
}

/// `addr` with loopback in place of an unspecified IP.
fn dialable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listening_address_is_dialled_on_loopback() {
        let any: SocketAddr = "0.0.0.0:6443".parse().unwrap();
        assert_eq!(dialable(any), "127.0.0.1:6443".parse().unwrap());
        let any6: SocketAddr = "[::]:6443".parse().unwrap();
        assert_eq!(dialable(any6), "[::1]:6443".parse().unwrap());
        let own: SocketAddr = "10.5.0.2:6443".parse().unwrap();
        assert_eq!(dialable(own), own);
        let handle = ListenAddress::default();
        assert_eq!(handle.addr(), None);
        handle.set(Some(any));
        assert_eq!(handle.addr(), Some("127.0.0.1:6443".parse().unwrap()));
    }
}
