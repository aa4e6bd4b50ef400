//! Generating a new cluster's secrets and the machine configs and client credentials
//! made from them (`cairnctl gen config`, the local cluster provisioner, tests).

use time::Duration;

use crate::kubeconfig::{NODE_USER_PREFIX, NODES_GROUP};
use crate::machine_config::{
    API_VERSION, CaCerts, CertsSpec, ClusterSpec, EncryptionKeySpec, InstallSpec, InterfaceConfig,
    KIND, MachineConfig, MachineSpec, MachineType, NetworkSpec, NodeCerts, SecretsEncryptionSpec,
};
use crate::pki::{Ca, CertAndKey, PkiError, Role};

/// How long generated client and node certificates are valid.
pub const CERT_VALIDITY: Duration = Duration::days(365);

/// A cluster's secrets: its CA, join token and secrets encryption key.
pub struct Secrets {
    /// The cluster name.
    pub cluster_name: String,
    /// The cluster CA.
    pub ca: Ca,
    /// The join token.
    pub token: String,
    /// The key the API servers encrypt Secrets with (none: derived from the CA key).
    pub encryption_key: Option<EncryptionKeySpec>,
}

/// What differs between the machine configs of one cluster.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Control plane or worker.
    pub machine_type: MachineType,
    /// The node's hostname.
    pub hostname: String,
    /// Addresses of `eth0` (may be empty: DHCP then).
    pub addresses: Vec<String>,
    /// The cluster endpoint, e.g. `https://10.5.0.2:6443`.
    pub endpoint: String,
    /// Control-plane addresses.
    pub control_planes: Vec<String>,
    /// The install disk, if any.
    pub install_disk: Option<String>,
}

impl Secrets {
    /// New secrets for cluster `name`.
    pub fn generate(name: &str) -> Result<Self, PkiError> {
        Ok(Self {
            cluster_name: name.to_owned(),
            ca: Ca::generate(&format!("{name} cluster CA"))?,
            token: new_token()?,
            encryption_key: Some(EncryptionKeySpec::generate("key1")?),
        })
    }

    /// The secrets of an existing cluster.
    pub fn from_parts(name: &str, ca: Ca, token: &str) -> Self {
        Self {
            cluster_name: name.to_owned(),
            ca,
            token: token.to_owned(),
            encryption_key: None,
        }
    }

    /// A client certificate for `role`.
    pub fn client(&self, common_name: &str, role: Role) -> Result<CertAndKey, PkiError> {
        self.ca.issue_client(common_name, role, CERT_VALIDITY)
    }

    /// A machine config for one node. Control planes carry the CA key and issue their
    /// own machine API certificate; workers get one issued now, naming their hostname,
    /// their addresses and the loopback address.
    pub fn machine_config(&self, node: &NodeSpec) -> Result<MachineConfig, PkiError> {
        let certs = match node.machine_type {
            MachineType::Controlplane => CertsSpec {
                ca: CaCerts {
                    crt: self.ca.cert_pem().to_owned(),
                    key: Some(self.ca.key_pem().to_owned()),
                },
                node: None,
                agent: None,
            },
            MachineType::Worker => {
                let mut names = vec![
                    node.hostname.clone(),
                    "localhost".to_owned(),
                    "127.0.0.1".to_owned(),
                ];
                names.extend(
                    node.addresses
                        .iter()
                        .filter_map(|a| a.split('/').next().map(str::to_owned)),
                );
                let issued = self
                    .ca
                    .issue_server(&node.hostname, &names, CERT_VALIDITY)?;
                let agent = self.ca.issue_user(
                    &format!("{NODE_USER_PREFIX}{}", node.hostname),
                    Some(NODES_GROUP),
                    CERT_VALIDITY,
                )?;
                CertsSpec {
                    ca: CaCerts {
                        crt: self.ca.cert_pem().to_owned(),
                        key: None,
                    },
                    node: Some(NodeCerts {
                        crt: issued.cert_pem,
                        key: issued.key_pem,
                    }),
                    agent: Some(NodeCerts {
                        crt: agent.cert_pem,
                        key: agent.key_pem,
                    }),
                }
            }
        };
        Ok(MachineConfig {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            machine: MachineSpec {
                machine_type: node.machine_type,
                hostname: Some(node.hostname.clone()),
                network: NetworkSpec {
                    interfaces: vec![InterfaceConfig {
                        name: Some("eth0".to_owned()),
                        addresses: node.addresses.clone(),
                        dhcp: node.addresses.is_empty(),
                        ..Default::default()
                    }],
                    nameservers: Vec::new(),
                },
                install: node
                    .install_disk
                    .as_ref()
                    .map(|disk| InstallSpec { disk: disk.clone() }),
                sysctls: Default::default(),
                kernel_modules: Vec::new(),
                certs,
                pods: Vec::new(),
                config_maps: Vec::new(),
                registries: std::collections::BTreeMap::new(),
            },
            cluster: Some(ClusterSpec {
                name: self.cluster_name.clone(),
                endpoint: Some(node.endpoint.clone()),
                control_planes: node.control_planes.clone(),
                token: self.token.clone(),
                pod_subnet: None,
                service_subnet: None,
                store: None,
                secrets_encryption: match node.machine_type {
                    MachineType::Controlplane => self
                        .encryption_key
                        .clone()
                        .map(|key| SecretsEncryptionSpec { keys: vec![key] }),
                    MachineType::Worker => None,
                },
                node_lifecycle: None,
            }),
        })
    }
}

/// A new join token: six and sixteen random lowercase letters and digits.
pub fn new_token() -> Result<String, PkiError> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 22];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| PkiError::Random)?;
    let symbol = |b: &u8| ALPHABET[usize::from(*b) % ALPHABET.len()] as char;
    let id: String = bytes[..6].iter().map(symbol).collect();
    let secret: String = bytes[6..].iter().map(symbol).collect();
    Ok(format!("{id}.{secret}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(machine_type: MachineType) -> NodeSpec {
        NodeSpec {
            machine_type,
            hostname: "n1".into(),
            addresses: vec!["10.5.0.3/24".into()],
            endpoint: "https://10.5.0.2:6443".into(),
            control_planes: vec!["10.5.0.2".into()],
            install_disk: Some("/dev/vda".into()),
        }
    }

    #[test]
    fn generated_configs_are_valid_for_both_roles() {
        let secrets = Secrets::generate("demo").unwrap();
        for role in [MachineType::Controlplane, MachineType::Worker] {
            let config = secrets.machine_config(&node(role)).unwrap();
            assert!(config.validate().is_empty(), "{:?}", config.validate());
        }
        let worker = secrets.machine_config(&node(MachineType::Worker)).unwrap();
        let names = crate::pki::cert_info(&worker.machine.certs.node.unwrap().crt, "node")
            .unwrap()
            .alt_names;
        assert!(names.contains(&"10.5.0.3".to_owned()) && names.contains(&"127.0.0.1".to_owned()));
        // The worker's node agent is system:node:<hostname> in system:nodes.
        let worker = secrets.machine_config(&node(MachineType::Worker)).unwrap();
        let agent =
            crate::pki::cert_info(&worker.machine.certs.agent.unwrap().crt, "agent").unwrap();
        assert_eq!(agent.common_name.as_deref(), Some("system:node:n1"));
        assert_eq!(agent.organizations, [NODES_GROUP]);
        let control_plane = secrets
            .machine_config(&node(MachineType::Controlplane))
            .unwrap();
        assert!(control_plane.machine.certs.agent.is_none());
    }

    #[test]
    fn tokens_have_the_kubeadm_shape_and_differ() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 23);
        assert_eq!(a.as_bytes()[6], b'.');
    }
}
