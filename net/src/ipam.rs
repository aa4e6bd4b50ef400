//! Persistent IPv4 address management for a node's pod CIDR: each pod (its owner
//! key, the pod's uid) gets one address of the CIDR, kept across restarts in a state
//! file that is replaced atomically (and synced) on every change, so that a crash never
//! leaves two pods with one address or an address that nobody can free. Allocation is
//! next-fit after the last address given (as CNI's `host-local`), so a just-freed
//! address is not handed out again at once. The network address, the gateway (the
//! first host address, the pod bridge's) and the broadcast address are never given.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Why an address could not be given or freed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every usable address of the CIDR is taken.
    #[error("no free address left in {cidr} ({used} in use)")]
    Exhausted {
        /// The pod CIDR.
        cidr: Ipv4Net,
        /// How many addresses are in use.
        used: usize,
    },
    /// The CIDR has no address to give besides the network, gateway and broadcast.
    #[error("{0} is too small for pods (needs a /30 or larger)")]
    TooSmall(Ipv4Net),
    /// The state file could not be read or written.
    #[error("IPAM state {path}: {source}")]
    Io {
        /// The state file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The state file is not valid, or belongs to another CIDR.
    #[error("IPAM state {path}: {reason}")]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// What the state file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    /// The CIDR the addresses come from.
    cidr: Ipv4Net,
    /// The last address given (next-fit starts after it).
    last: Option<Ipv4Addr>,
    /// Owner → address.
    allocations: BTreeMap<String, Ipv4Addr>,
}

/// The addresses of one pod CIDR, persisted in one file.
#[derive(Debug)]
pub struct Ipam {
    path: PathBuf,
    state: State,
}

impl Ipam {
    /// Opens the allocations of `cidr` kept at `path` (none yet when the file does not
    /// exist). A file of another CIDR is refused: its pods would keep addresses the
    /// new CIDR does not hold.
    pub fn open(path: &Path, cidr: Ipv4Net) -> Result<Self, IpamError> {
        let cidr = cidr.trunc();
        if cidr.prefix_len() > 30 {
            return Err(IpamError::TooSmall(cidr));
        }
        let state = match std::fs::read(path) {
            Ok(bytes) => {
                let state: State =
                    serde_json::from_slice(&bytes).map_err(|err| IpamError::Corrupt {
                        path: path.to_owned(),
                        reason: err.to_string(),
                    })?;
                if state.cidr != cidr {
                    return Err(IpamError::Corrupt {
                        path: path.to_owned(),
                        reason: format!("it holds {}, not {cidr}", state.cidr),
                    });
                }
                let mut seen = std::collections::BTreeSet::new();
                for (owner, address) in &state.allocations {
                    if !usable(cidr, *address) || !seen.insert(*address) {
                        return Err(IpamError::Corrupt {
                            path: path.to_owned(),
                            reason: format!("{owner} holds {address}, which cannot be given"),
                        });
                    }
                }
                state
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => State {
                cidr,
                last: None,
                allocations: BTreeMap::new(),
            },
            Err(source) => {
                return Err(IpamError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Ok(Self {
            path: path.to_owned(),
            state,
        })
    }

    /// The CIDR.
    pub fn cidr(&self) -> Ipv4Net {
        self.state.cidr
    }

    /// The gateway address (the first host address), which pods route through.
    pub fn gateway(&self) -> Ipv4Addr {
        gateway(self.state.cidr)
    }

    /// The address of `owner`: the one it has, or a free one, recorded durably before
    /// it is returned.
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some(address) = self.state.allocations.get(owner) {
            return Ok(*address);
        }
        let cidr = self.state.cidr;
        let first = u32::from(gateway(cidr)) + 1;
        let last = u32::from(cidr.broadcast()) - 1;
        let taken: std::collections::BTreeSet<Ipv4Addr> =
            self.state.allocations.values().copied().collect();
        let start = self
            .state
            .last
            .map(|a| u32::from(a).saturating_add(1))
            .filter(|a| (first..=last).contains(a))
            .unwrap_or(first);
        let found = (start..=last)
            .chain(first..start)
            .map(Ipv4Addr::from)
            .find(|a| !taken.contains(a))
            .ok_or(IpamError::Exhausted {
                cidr,
                used: taken.len(),
            })?;
        let mut next = self.state.clone();
        next.allocations.insert(owner.to_owned(), found);
        next.last = Some(found);
        self.save(next)?;
        Ok(found)
    }

    /// Frees the address of `owner`; the address it had, if any.
    pub fn release(&mut self, owner: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        let mut next = self.state.clone();
        let Some(address) = next.allocations.remove(owner) else {
            return Ok(None);
        };
        self.save(next)?;
        Ok(Some(address))
    }

    /// The address of `owner`, if it has one.
    pub fn address_of(&self, owner: &str) -> Option<Ipv4Addr> {
        self.state.allocations.get(owner).copied()
    }

    /// Every allocation, by owner.
    pub fn allocations(&self) -> &BTreeMap<String, Ipv4Addr> {
        &self.state.allocations
    }

    /// Writes `next` durably (temporary file, fsync, rename, directory fsync), then
    /// makes it current; on failure the current state and file stay as they were.
    fn save(&mut self, next: State) -> Result<(), IpamError> {
        let io = |source| IpamError::Io {
            path: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(&next).map_err(|err| IpamError::Corrupt {
            path: self.path.clone(),
            reason: err.to_string(),
        })?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.as_file().sync_all().map_err(io)?;
        file.persist(&self.path).map_err(|err| io(err.error))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        self.state = next;
        Ok(())
    }
}

/// The first host address of `cidr`.
pub(crate) fn gateway(cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()) + 1)
}

/// Whether `address` may be given to a pod of `cidr`.
fn usable(cidr: Ipv4Net, address: Ipv4Addr) -> bool {
    cidr.contains(&address)
        && address != cidr.network()
        && address != gateway(cidr)
        && address != cidr.broadcast()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_skip_network_gateway_and_broadcast_and_are_stable_per_owner() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(&dir.path().join("ipam.json"), cidr("10.244.1.0/29")).unwrap();
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        let given: Vec<Ipv4Addr> = (0..5)
            .map(|i| ipam.allocate(&format!("pod-{i}")).unwrap())
            .collect();
        assert_eq!(
            given,
            (2..=6)
                .map(|h| Ipv4Addr::new(10, 244, 1, h))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            ipam.allocate("pod-3").unwrap(),
            given[3],
            "same owner, same address"
        );
        let err = ipam.allocate("one-too-many").unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { used: 5, .. }), "{err}");
        // Next-fit: a freed address is given again only after the others.
        assert_eq!(ipam.release("pod-1").unwrap(), Some(given[1]));
        assert_eq!(ipam.release("pod-1").unwrap(), None);
        assert_eq!(ipam.allocate("late").unwrap(), given[1]);
    }

    #[test]
    fn allocations_survive_a_restart_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/ipam.json");
        let net = cidr("10.244.2.0/24");
        let mut ipam = Ipam::open(&path, net).unwrap();
        let a = ipam.allocate("a").unwrap();
        let b = ipam.allocate("b").unwrap();
        ipam.release("a").unwrap();
        drop(ipam);
        let mut again = Ipam::open(&path, net).unwrap();
        assert_eq!(again.address_of("b"), Some(b));
        assert_eq!(again.address_of("a"), None);
        let c = again.allocate("c").unwrap();
        assert!(c != b && c != a, "next-fit continues after a restart: {c}");
    }

    #[test]
    fn two_thousand_create_delete_cycles_leak_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.json");
        let net = cidr("10.244.3.0/26");
        let mut ipam = Ipam::open(&path, net).unwrap();
        let mut live: Vec<(String, Ipv4Addr)> = Vec::new();
        for cycle in 0..2000 {
            let owner = format!("pod-{cycle}");
            let address = ipam.allocate(&owner).unwrap();
            assert!(
                live.iter().all(|(_, a)| *a != address),
                "{address} given twice"
            );
            live.push((owner, address));
            // Keep up to 40 pods alive, freeing the oldest.
            if live.len() > 40 {
                let (old, address) = live.remove(0);
                assert_eq!(ipam.release(&old).unwrap(), Some(address));
            }
        }
        for (owner, _) in live.drain(..) {
            ipam.release(&owner).unwrap();
        }
        assert!(ipam.allocations().is_empty());
        assert!(Ipam::open(&path, net).unwrap().allocations().is_empty());
    }

    #[test]
    fn bad_state_is_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.json");
        let mut ipam = Ipam::open(&path, cidr("10.244.4.0/24")).unwrap();
        ipam.allocate("a").unwrap();
        let err = Ipam::open(&path, cidr("10.244.5.0/24")).unwrap_err();
        assert!(
            err.to_string().contains("ipam.json") && err.to_string().contains("10.244.4.0/24"),
            "{err}"
        );
        std::fs::write(&path, "{not json").unwrap();
        let err = Ipam::open(&path, cidr("10.244.4.0/24")).unwrap_err();
        assert!(matches!(err, IpamError::Corrupt { .. }), "{err}");
        std::fs::write(
            &path,
            r#"{"cidr":"10.244.4.0/24","last":null,"allocations":{"a":"10.244.4.1"}}"#,
        )
        .unwrap();
        let err = Ipam::open(&path, cidr("10.244.4.0/24")).unwrap_err();
        assert!(err.to_string().contains("a holds 10.244.4.1"), "{err}");
        assert!(matches!(
            Ipam::open(&path, cidr("10.0.0.0/31")),
            Err(IpamError::TooSmall(_))
        ));
    }
}
