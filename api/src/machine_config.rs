//! The `MachineConfig` document: what one node should be.
//!
//! A config is parsed in two steps. Deserialising checks the shape (unknown fields and
//! wrong types are errors, reported with their line and column); [`MachineConfig::validate`]
//! then checks the meaning and reports *every* problem at once, each with its YAML path,
//! so an operator fixes a document in one round trip. Typed views
//! ([`MachineConfig::interfaces`], …) are what the node applies; [`changes`] says which
//! differences between two configs can be applied live and which need a reboot.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::pki;

/// The only `apiVersion` this build understands.
pub const API_VERSION: &str = "cairn.dev/v1alpha1";
/// The `kind` of a machine configuration document.
pub const KIND: &str = "MachineConfig";
/// What secrets are replaced with for readers.
pub const REDACTED: &str = "(redacted)";
/// The pod network used when the config names none.
pub const DEFAULT_POD_SUBNET: &str = "10.244.0.0/16";
/// The service network used when the config names none.
pub const DEFAULT_SERVICE_SUBNET: &str = "10.96.0.0/12";

/// Why a machine configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The document is not YAML of the expected shape (unknown field, wrong type, syntax).
    #[error("machine config is not a valid document: {0}")]
    Syntax(String),
    /// The document is well-formed but some values are wrong; every problem is listed.
    #[error("machine config has {} problem(s): {}", .0.len(), FieldError::join(.0))]
    Invalid(Vec<FieldError>),
}

impl ConfigError {
    /// Every problem as `path: message` lines (one line for a syntax error).
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Syntax(text) => vec![text.clone()],
            ConfigError::Invalid(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }
}

/// One problem in a document, located by its YAML path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Where the problem is, e.g. `machine.network.interfaces[0].addresses[1]`.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl FieldError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }

    fn join(errors: &[FieldError]) -> String {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A node's declarative configuration (`apiVersion: cairn.dev/v1alpha1`, `kind: MachineConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MachineConfig {
    /// Must be [`API_VERSION`].
    pub api_version: String,
    /// Must be [`KIND`].
    pub kind: String,
    /// Everything about this machine.
    pub machine: MachineSpec,
    /// The cluster this machine belongs to; absent for a standalone machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSpec>,
}

/// The `machine` section: this node's own settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MachineSpec {
    /// Whether the node runs the control plane or only workloads.
    #[serde(rename = "type")]
    pub machine_type: MachineType,
    /// The node's hostname; the kernel's default is kept when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Links, addresses, routes and resolvers.
    #[serde(default)]
    pub network: NetworkSpec,
    /// The disk that holds the node's state; without one the node is ephemeral.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<InstallSpec>,
    /// Kernel parameters under `/proc/sys`, by dotted name (`net.ipv4.ip_forward: "1"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// Modules to load at boot besides the image's own set, with parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_modules: Vec<KernelModuleSpec>,
    /// The cluster CA and this node's machine API certificate.
    pub certs: CertsSpec,
    /// Static pods: Kubernetes `Pod` manifests the node runs by itself, without the
    /// cluster (as the kubelet's static pods and Talos' `machine.pods`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<serde_json::Value>,
    /// Kubernetes `ConfigMap`s the static pods may mount as volumes (in their own
    /// namespace, `default` when none is named). A static pod cannot reach the
    /// cluster's objects, so the node's config carries them; a static pod restarts
    /// when a config map it mounts changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_maps: Vec<serde_json::Value>,
    /// Settings per image registry, by `host[:port]` as image references name it:
    /// plain HTTP, and credentials for pulls that bring none (a pod's
    /// `imagePullSecrets` come first).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registries: BTreeMap<String, RegistrySpec>,
}

/// How the node talks to one image registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistrySpec {
    /// Speak plain HTTP to it (no TLS), as an insecure registry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http: bool,
    /// Credentials for pulls from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RegistryAuthSpec>,
}

/// Basic credentials for a registry (token registries exchange them for tokens).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryAuthSpec {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for RegistryAuthSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuthSpec")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// The role a node plays in its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineType {
    /// Runs the replicated store, API server, scheduler and controllers, and workloads.
    Controlplane,
    /// Runs workloads only.
    Worker,
}

impl fmt::Display for MachineType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MachineType::Controlplane => "controlplane",
            MachineType::Worker => "worker",
        })
    }
}

/// The `machine.network` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Interfaces to configure; interfaces not listed are left down (except `lo`).
    #[serde(default)]
    pub interfaces: Vec<InterfaceConfig>,
    /// DNS servers, written to `/etc/resolv.conf`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
}

/// One entry of `machine.network.interfaces`, as written in the document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InterfaceConfig {
    /// Kernel name of the link, e.g. `eth0`. Exactly one of `name` and `mac` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Hardware address of the link, e.g. `52:54:00:12:34:56`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Addresses with prefix length, e.g. `10.0.0.2/24`.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Link MTU; the driver's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Routes through this link.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// Also ask DHCP for an address (and a default route and nameservers).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp: bool,
    /// Makes this interface a bond that Cairn creates over other links (needs `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond: Option<BondConfig>,
    /// Makes this interface a bridge that Cairn creates over other links (needs `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<BridgeConfig>,
    /// VLANs on this link, each a link of its own named `<link>.<vlanId>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vlans: Vec<VlanConfig>,
}

/// An interface's `bond` section: the links it bonds and how.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BondConfig {
    /// Names of the links enslaved to the bond.
    pub interfaces: Vec<String>,
    /// The bonding mode by its kernel name (`balance-rr`, `active-backup`,
    /// `balance-xor`, `broadcast`, `802.3ad`, `balance-tlb`, `balance-alb`).
    pub mode: String,
    /// Link monitoring interval in milliseconds (the kernel's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miimon: Option<u32>,
}

/// An interface's `bridge` section: the links it bridges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BridgeConfig {
    /// Names of the links that become ports of the bridge.
    pub interfaces: Vec<String>,
    /// Spanning tree protocol settings (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stp: Option<StpConfig>,
}

/// A bridge's `stp` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StpConfig {
    /// Whether the bridge runs the spanning tree protocol.
    #[serde(default)]
    pub enabled: bool,
}

/// One entry of an interface's `vlans`, as written in the document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VlanConfig {
    /// The 802.1Q VLAN id, 1 to 4094.
    pub vlan_id: u16,
    /// Addresses with prefix length.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Link MTU (at most the parent's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Routes through this VLAN.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// Also ask DHCP for an address on the VLAN.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp: bool,
}

/// One entry of an interface's `routes`, as written in the document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteConfig {
    /// Destination prefix, e.g. `0.0.0.0/0`.
    pub to: String,
    /// Gateway; the destination is on-link when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// The `machine.install` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InstallSpec {
    /// The whole disk Cairn may partition, e.g. `/dev/vda`.
    pub disk: String,
}

/// One entry of `machine.kernelModules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KernelModuleSpec {
    /// Module name, e.g. `br_netfilter`.
    pub name: String,
    /// Parameters, `key=value` each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<String>,
}

/// The `machine.certs` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertsSpec {
    /// The cluster CA: its certificate always, its key where the node may sign (then
    /// the node issues its own machine API certificate).
    pub ca: CaCerts,
    /// This node's machine API certificate and key (needed when the CA key is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeCerts>,
    /// The node agent's client certificate for the Kubernetes API
    /// (`system:node:<hostname>` in `system:nodes`): workers need it, control planes
    /// issue their own from the CA key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<NodeCerts>,
}

/// The cluster CA, PEM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CaCerts {
    /// The CA certificate.
    pub crt: String,
    /// The CA private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A node certificate and key, PEM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeCerts {
    /// The certificate, signed by the cluster CA.
    pub crt: String,
    /// Its private key.
    pub key: String,
}

/// The `cluster` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSpec {
    /// The cluster's name.
    pub name: String,
    /// Where the cluster's API is reached, e.g. `https://10.5.0.2:6443`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Addresses of the control-plane nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_planes: Vec<String>,
    /// The join token (`[a-z0-9]{6}.[a-z0-9]{16}`).
    pub token: String,
    /// The pod network; [`DEFAULT_POD_SUBNET`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_subnet: Option<String>,
    /// The service network; [`DEFAULT_SERVICE_SUBNET`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_subnet: Option<String>,
    /// The replicated store on the control planes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreSpec>,
    /// How the API server encrypts Secrets in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_encryption: Option<SecretsEncryptionSpec>,
    /// When the controllers call a silent node lost and move its pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_lifecycle: Option<NodeLifecycleSpec>,
}

/// The `cluster.nodeLifecycle` section: what kube-controller-manager's
/// `--node-monitor-grace-period` and the `DefaultTolerationSeconds` of the not-ready and
/// unreachable taints set in Kubernetes (40 s and 300 s there; an appliance's defaults
/// here are 10 s and 10 s).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeLifecycleSpec {
    /// Seconds without a heartbeat (the node's Lease) before its Node is NotReady
    /// (Unknown); [`DEFAULT_NODE_GRACE_SECONDS`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period_seconds: Option<u64>,
    /// Seconds a pod without a toleration of its own stays on a not-ready or
    /// unreachable node before it is evicted; [`DEFAULT_EVICTION_SECONDS`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_seconds: Option<u64>,
}

/// Seconds without a heartbeat before a Node is NotReady, when
/// `cluster.nodeLifecycle.gracePeriodSeconds` is absent.
pub const DEFAULT_NODE_GRACE_SECONDS: u64 = 10;
/// Seconds before the pods of a lost node are evicted, when
/// `cluster.nodeLifecycle.evictionSeconds` is absent.
pub const DEFAULT_EVICTION_SECONDS: u64 = 10;
/// The longest either node lifecycle setting may be (a day).
const MAX_NODE_LIFECYCLE_SECONDS: u64 = 86_400;

impl NodeLifecycleSpec {
    /// The grace period, defaulted.
    pub fn grace_period_seconds(&self) -> u64 {
        self.grace_period_seconds
            .unwrap_or(DEFAULT_NODE_GRACE_SECONDS)
    }

    /// The eviction timeout, defaulted.
    pub fn eviction_seconds(&self) -> u64 {
        self.eviction_seconds.unwrap_or(DEFAULT_EVICTION_SECONDS)
    }
}

/// The `cluster.secretsEncryption` section: AES-256-GCM keys for Secrets at rest. The
/// first key encrypts, every key decrypts: rotate by putting a new key first and
/// dropping the old one once the API servers have restarted with it (they rewrite
/// every Secret with the first key at start). Without this section the key is
/// derived from the cluster CA key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretsEncryptionSpec {
    /// The keys, the encrypting one first.
    pub keys: Vec<EncryptionKeySpec>,
}

/// One secrets encryption key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EncryptionKeySpec {
    /// Its name, stored beside each value it encrypts (`[a-z0-9-]`, at most 32).
    pub name: String,
    /// 32 random bytes, base64.
    pub secret: String,
}

impl EncryptionKeySpec {
    /// A new random key called `name`.
    pub fn generate(name: &str) -> Result<Self, crate::pki::PkiError> {
        use base64::Engine;
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| crate::pki::PkiError::Random)?;
        Ok(Self {
            name: name.to_owned(),
            secret: base64::engine::general_purpose::STANDARD.encode(bytes),
        })
    }
}

/// The `cluster.store` section: how the control planes' store keeps history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StoreSpec {
    /// How many revisions of history are kept for reads at a revision and watches
    /// (older ones are compacted); [`DEFAULT_COMPACTION_WINDOW`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction_window: Option<u64>,
    /// How often the leader compacts, in seconds;
    /// [`DEFAULT_COMPACTION_INTERVAL_SECONDS`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction_interval_seconds: Option<u64>,
}

/// Revisions of history the store keeps when `cluster.store.compactionWindow` is absent.
pub const DEFAULT_COMPACTION_WINDOW: u64 = 10_000;
/// Seconds between compactions when `cluster.store.compactionIntervalSeconds` is absent
/// (what the Kubernetes API server asks of etcd: every five minutes).
pub const DEFAULT_COMPACTION_INTERVAL_SECONDS: u64 = 300;

impl StoreSpec {
    /// The window, defaulted.
    pub fn compaction_window(&self) -> u64 {
        self.compaction_window.unwrap_or(DEFAULT_COMPACTION_WINDOW)
    }

    /// The interval, defaulted.
    pub fn compaction_interval_seconds(&self) -> u64 {
        self.compaction_interval_seconds
            .unwrap_or(DEFAULT_COMPACTION_INTERVAL_SECONDS)
    }
}

/// How an interface is found among the machine's links.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum LinkSelector {
    /// By kernel name.
    Name(String),
    /// By hardware address (six bytes).
    Mac([u8; 6]),
    /// The VLAN `id` on the link `parent` selects.
    Vlan {
        /// The link carrying the VLAN.
        parent: Box<LinkSelector>,
        /// The VLAN id.
        id: u16,
    },
}

impl fmt::Display for LinkSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkSelector::Name(name) => write!(f, "{name}"),
            LinkSelector::Mac(mac) => write!(f, "{}", format_mac(mac)),
            LinkSelector::Vlan { parent, id } => write!(f, "{parent}.{id}"),
        }
    }
}

/// The kernel's bonding modes, by the names `ip link` and sysfs use.
pub const BOND_MODES: [&str; 7] = [
    "balance-rr",
    "active-backup",
    "balance-xor",
    "broadcast",
    "802.3ad",
    "balance-tlb",
    "balance-alb",
];

/// What kind of link an interface is: one that exists by itself (a NIC, a link
/// somebody else made), or a virtual link Cairn creates and owns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LinkKind {
    /// Found, never created.
    #[default]
    Existing,
    /// A bond over `ports`; `mode` is an index into [`BOND_MODES`] (the kernel's
    /// numbering).
    Bond {
        /// Enslaved links, by name.
        ports: Vec<String>,
        /// The bonding mode's number.
        mode: u8,
        /// MII monitoring interval (ms).
        miimon: Option<u32>,
    },
    /// A bridge over `ports`.
    Bridge {
        /// Bridge ports, by name.
        ports: Vec<String>,
        /// Spanning tree on.
        stp: bool,
    },
    /// An 802.1Q VLAN (its parent and id are in the selector).
    Vlan,
}

impl LinkKind {
    /// The links this one enslaves.
    pub fn ports(&self) -> &[String] {
        match self {
            LinkKind::Bond { ports, .. } | LinkKind::Bridge { ports, .. } => ports,
            LinkKind::Existing | LinkKind::Vlan => &[],
        }
    }

    /// The kernel's name for the kind (`IFLA_INFO_KIND`), for links Cairn creates.
    pub fn kernel_kind(&self) -> Option<&'static str> {
        match self {
            LinkKind::Existing => None,
            LinkKind::Bond { .. } => Some("bond"),
            LinkKind::Bridge { .. } => Some("bridge"),
            LinkKind::Vlan => Some("vlan"),
        }
    }
}

/// A validated interface: what the network phase applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Which link this is.
    pub selector: LinkSelector,
    /// Whether Cairn creates it, and as what.
    pub kind: LinkKind,
    /// Addresses to assign.
    pub addresses: Vec<IpNet>,
    /// MTU to set, if any.
    pub mtu: Option<u32>,
    /// Routes to install through this link.
    pub routes: Vec<Route>,
    /// Whether to run DHCP on it.
    pub dhcp: bool,
}

/// A validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix.
    pub to: IpNet,
    /// Gateway, or `None` for an on-link route.
    pub via: Option<IpAddr>,
}

impl MachineConfig {
    /// Parses and validates a YAML document; the error lists every problem found.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: MachineConfig =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Renders the document as YAML.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        serde_saphyr::to_string(self).map_err(|e| ConfigError::Syntax(e.to_string()))
    }

    /// Every semantic problem of the document, each with its YAML path; empty when valid.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut problems = Vec::new();
        if self.api_version != API_VERSION {
            problems.push(FieldError::new(
                "apiVersion",
                format!(
                    "{:?} is not supported (expected {API_VERSION:?})",
                    self.api_version
                ),
            ));
        }
        if self.kind != KIND {
            problems.push(FieldError::new(
                "kind",
                format!("{:?} is not {KIND:?}", self.kind),
            ));
        }
        let machine = &self.machine;
        if let Some(hostname) = &machine.hostname
            && let Err(why) = check_hostname(hostname)
        {
            problems.push(FieldError::new(
                "machine.hostname",
                format!("{hostname:?} {why}"),
            ));
        }
        let interfaces = match self.interfaces() {
            Ok(interfaces) => interfaces,
            Err(mut interface_problems) => {
                problems.append(&mut interface_problems);
                Vec::new()
            }
        };
        for (i, text) in machine.network.nameservers.iter().enumerate() {
            if text.parse::<IpAddr>().is_err() {
                problems.push(FieldError::new(
                    format!("machine.network.nameservers[{i}]"),
                    format!("{text:?} is not an IP address"),
                ));
            }
        }
        if let Some(install) = &machine.install
            && (!install.disk.starts_with("/dev/") || install.disk.contains(".."))
        {
            problems.push(FieldError::new(
                "machine.install.disk",
                format!("{:?} is not a device path like /dev/vda", install.disk),
            ));
        }
        for (key, value) in &machine.sysctls {
            let path = format!("machine.sysctls[{key:?}]");
            if let Err(why) = check_sysctl_key(key) {
                problems.push(FieldError::new(&path, why));
            }
            if value.contains('\n') {
                problems.push(FieldError::new(&path, "value must be one line"));
            }
        }
        for (i, module) in machine.kernel_modules.iter().enumerate() {
            let path = format!("machine.kernelModules[{i}]");
            let valid_name = !module.name.is_empty()
                && module
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid_name {
                problems.push(FieldError::new(
                    format!("{path}.name"),
                    format!("{:?} is not a module name", module.name),
                ));
            }
            for (j, parameter) in module.parameters.iter().enumerate() {
                let valid = parameter
                    .split_once('=')
                    .is_some_and(|(k, _)| !k.is_empty() && !k.contains(char::is_whitespace));
                if !valid {
                    problems.push(FieldError::new(
                        format!("{path}.parameters[{j}]"),
                        format!("{parameter:?} is not key=value"),
                    ));
                }
            }
        }
        check_certs(&machine.certs, &mut problems);
        for (i, pod) in machine.pods.iter().enumerate() {
            if let Err(mut pod_problems) = static_pod(pod, &format!("machine.pods[{i}]")) {
                problems.append(&mut pod_problems);
            }
        }
        for (host, registry) in &machine.registries {
            let path = format!("machine.registries[{host:?}]");
            let valid = !host.is_empty()
                && !host.contains("://")
                && !host.contains('/')
                && !host.contains(char::is_whitespace);
            if !valid {
                problems.push(FieldError::new(
                    &path,
                    "is not a registry host (host or host:port, no scheme or path)",
                ));
            }
            if let Some(auth) = &registry.auth
                && auth.username.is_empty()
            {
                problems.push(FieldError::new(format!("{path}.auth.username"), "is empty"));
            }
        }
        let mut config_map_names = BTreeSet::new();
        for (i, value) in machine.config_maps.iter().enumerate() {
            let path = format!("machine.configMaps[{i}]");
            match config_map(value, &path) {
                Ok(map) => {
                    let key = (
                        map.metadata
                            .namespace
                            .clone()
                            .unwrap_or_else(|| "default".into()),
                        map.metadata.name.clone().unwrap_or_default(),
                    );
                    if !config_map_names.insert(key.clone()) {
                        problems.push(FieldError::new(
                            format!("{path}.metadata.name"),
                            format!("{}/{} is given twice", key.0, key.1),
                        ));
                    }
                }
                Err(mut map_problems) => problems.append(&mut map_problems),
            }
        }
        self.check_cluster(&interfaces, &mut problems);
        problems
    }

    /// The static pods of `machine.pods`, parsed (invalid ones left out; `validate`
    /// reports them).
    pub fn static_pods(&self) -> Vec<Pod> {
        self.machine
            .pods
            .iter()
            .enumerate()
            .filter_map(|(i, pod)| static_pod(pod, &format!("machine.pods[{i}]")).ok())
            .collect()
    }

    /// The config maps of `machine.configMaps`, parsed (invalid ones left out;
    /// `validate` reports them).
    pub fn static_config_maps(&self) -> Vec<ConfigMap> {
        self.machine
            .config_maps
            .iter()
            .enumerate()
            .filter_map(|(i, map)| config_map(map, &format!("machine.configMaps[{i}]")).ok())
            .collect()
    }

    fn check_cluster(&self, interfaces: &[Interface], problems: &mut Vec<FieldError>) {
        let Some(cluster) = &self.cluster else {
            if self.machine.machine_type == MachineType::Worker {
                problems.push(FieldError::new(
                    "cluster",
                    "a worker needs a cluster section with the control plane's endpoint",
                ));
            }
            return;
        };
        if let Err(why) = check_hostname(&cluster.name) {
            problems.push(FieldError::new(
                "cluster.name",
                format!("{:?} {why}", cluster.name),
            ));
        }
        match &cluster.endpoint {
            None if self.machine.machine_type == MachineType::Worker => {
                problems.push(FieldError::new(
                    "cluster.endpoint",
                    "a worker needs the control plane's endpoint, e.g. https://10.5.0.2:6443",
                ));
            }
            Some(endpoint) if !is_https_url(endpoint) => {
                problems.push(FieldError::new(
                    "cluster.endpoint",
                    format!("{endpoint:?} is not an https:// URL with a host"),
                ));
            }
            _ => {}
        }
        for (i, address) in cluster.control_planes.iter().enumerate() {
            if address.parse::<IpAddr>().is_err() && check_hostname(address).is_err() {
                problems.push(FieldError::new(
                    format!("cluster.controlPlanes[{i}]"),
                    format!("{address:?} is neither an IP address nor a DNS name"),
                ));
            }
        }
        if let Some(store) = &cluster.store {
            if store.compaction_window == Some(0) {
                problems.push(FieldError::new(
                    "cluster.store.compactionWindow",
                    "must keep at least 1 revision",
                ));
            }
            if store.compaction_interval_seconds == Some(0) {
                problems.push(FieldError::new(
                    "cluster.store.compactionIntervalSeconds",
                    "must be at least 1 second",
                ));
            }
        }
        if let Some(encryption) = &cluster.secrets_encryption {
            check_encryption_keys(encryption, problems);
        }
        if let Some(lifecycle) = &cluster.node_lifecycle {
            let settings = [
                ("gracePeriodSeconds", lifecycle.grace_period_seconds),
                ("evictionSeconds", lifecycle.eviction_seconds),
            ];
            for (field, value) in settings {
                if value.is_some_and(|v| !(1..=MAX_NODE_LIFECYCLE_SECONDS).contains(&v)) {
                    problems.push(FieldError::new(
                        format!("cluster.nodeLifecycle.{field}"),
                        format!("must be from 1 to {MAX_NODE_LIFECYCLE_SECONDS} seconds"),
                    ));
                }
            }
        }
        if !is_token(&cluster.token) {
            problems.push(FieldError::new(
                "cluster.token",
                "is not a token like abcdef.0123456789abcdef ([a-z0-9]{6}.[a-z0-9]{16})",
            ));
        }
        let subnet = |path: &str, text: Option<&str>, default: &str| {
            let text = text.unwrap_or(default);
            text.parse::<IpNet>().map_err(|_| {
                FieldError::new(path, format!("{text:?} is not an IP prefix like {default}"))
            })
        };
        let pods = subnet(
            "cluster.podSubnet",
            cluster.pod_subnet.as_deref(),
            DEFAULT_POD_SUBNET,
        );
        let services = subnet(
            "cluster.serviceSubnet",
            cluster.service_subnet.as_deref(),
            DEFAULT_SERVICE_SUBNET,
        );
        match (pods, services) {
            (Ok(pods), Ok(services)) => {
                if overlaps(&pods, &services) {
                    problems.push(FieldError::new(
                        "cluster.serviceSubnet",
                        format!("{services} overlaps cluster.podSubnet {pods}"),
                    ));
                }
                for (i, interface) in interfaces.iter().enumerate() {
                    for address in &interface.addresses {
                        for (name, net) in [("podSubnet", pods), ("serviceSubnet", services)] {
                            if overlaps(&address.trunc(), &net) {
                                problems.push(FieldError::new(
                                    format!("machine.network.interfaces[{i}].addresses"),
                                    format!("{address} overlaps cluster.{name} {net}"),
                                ));
                            }
                        }
                    }
                }
            }
            (pods, services) => {
                problems.extend(pods.err());
                problems.extend(services.err());
            }
        }
    }

    /// The configured interfaces in typed form (each VLAN an interface of its own,
    /// after its parent), or every problem found in them.
    pub fn interfaces(&self) -> Result<Vec<Interface>, Vec<FieldError>> {
        let mut problems = Vec::new();
        let mut interfaces = Vec::new();
        let mut seen = BTreeSet::new();
        // Port name → (the path of the bond or bridge naming it, that link's name).
        let mut port_of: BTreeMap<String, (String, String)> = BTreeMap::new();
        for (i, raw) in self.machine.network.interfaces.iter().enumerate() {
            let path = format!("machine.network.interfaces[{i}]");
            let selector = interface_selector(raw, &path, &mut problems);
            if let Some(selector) = &selector
                && !seen.insert(selector.clone())
            {
                problems.push(FieldError::new(
                    &path,
                    format!("interface {selector} is listed more than once"),
                ));
            }
            let kind = link_kind(raw, &path, &mut problems);
            if let (Some(LinkSelector::Name(name)), ports) = (&selector, kind.ports()) {
                for (j, port) in ports.iter().enumerate() {
                    let section = if matches!(kind, LinkKind::Bond { .. }) {
                        "bond"
                    } else {
                        "bridge"
                    };
                    let port_path = format!("{path}.{section}.interfaces[{j}]");
                    if port == name {
                        problems.push(FieldError::new(
                            port_path,
                            format!("{name} cannot be a port of itself"),
                        ));
                    } else if let Some((_, other)) =
                        port_of.insert(port.clone(), (port_path.clone(), name.clone()))
                    {
                        problems.push(FieldError::new(
                            port_path,
                            format!("{port} is already a port of {other}"),
                        ));
                    }
                }
            }
            let addresses = parse_addresses(&raw.addresses, &path, &mut problems);
            check_mtu(raw.mtu, &path, &mut problems);
            let routes = parse_routes(&raw.routes, &path, &mut problems);
            let Some(selector) = selector else { continue };
            interfaces.push(Interface {
                selector: selector.clone(),
                kind,
                addresses,
                mtu: raw.mtu,
                routes,
                dhcp: raw.dhcp,
            });
            let mut ids = BTreeSet::new();
            for (j, vlan) in raw.vlans.iter().enumerate() {
                let vlan_path = format!("{path}.vlans[{j}]");
                if !(1..=4094).contains(&vlan.vlan_id) {
                    problems.push(FieldError::new(
                        format!("{vlan_path}.vlanId"),
                        format!("{} is outside 1..=4094", vlan.vlan_id),
                    ));
                } else if !ids.insert(vlan.vlan_id) {
                    problems.push(FieldError::new(
                        format!("{vlan_path}.vlanId"),
                        format!(
                            "VLAN {} is listed more than once on {selector}",
                            vlan.vlan_id
                        ),
                    ));
                } else if let LinkSelector::Name(parent) = &selector
                    && vlan_link_name(parent, vlan.vlan_id).is_none()
                {
                    problems.push(FieldError::new(
                        format!("{vlan_path}.vlanId"),
                        format!(
                            "the VLAN's link name {parent}.{} would be longer than 15 characters",
                            vlan.vlan_id
                        ),
                    ));
                }
                let addresses = parse_addresses(&vlan.addresses, &vlan_path, &mut problems);
                check_mtu(vlan.mtu, &vlan_path, &mut problems);
                let routes = parse_routes(&vlan.routes, &vlan_path, &mut problems);
                interfaces.push(Interface {
                    selector: LinkSelector::Vlan {
                        parent: Box::new(selector.clone()),
                        id: vlan.vlan_id,
                    },
                    kind: LinkKind::Vlan,
                    addresses,
                    mtu: vlan.mtu,
                    routes,
                    dhcp: vlan.dhcp,
                });
            }
        }
        // A port's layer-3 settings belong on the bond or bridge that enslaves it.
        for (i, raw) in self.machine.network.interfaces.iter().enumerate() {
            let Some((_, controller)) = raw.name.as_ref().and_then(|n| port_of.get(n)) else {
                continue;
            };
            if !raw.addresses.is_empty() || !raw.routes.is_empty() || raw.dhcp {
                problems.push(FieldError::new(
                    format!("machine.network.interfaces[{i}]"),
                    format!(
                        "is a port of {controller}: its addresses, routes and DHCP belong on {controller}"
                    ),
                ));
            }
        }
        if problems.is_empty() {
            Ok(interfaces)
        } else {
            Err(problems)
        }
    }

    /// The configured nameservers (invalid entries, which validation reports, skipped).
    pub fn nameservers(&self) -> Vec<IpAddr> {
        self.machine
            .network
            .nameservers
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
    }

    /// A copy safe to show a reader: private keys and the join token replaced.
    pub fn redacted(&self) -> MachineConfig {
        let mut copy = self.clone();
        let certs = &mut copy.machine.certs;
        if certs.ca.key.is_some() {
            certs.ca.key = Some(REDACTED.to_owned());
        }
        for pair in [&mut certs.node, &mut certs.agent].into_iter().flatten() {
            pair.key = REDACTED.to_owned();
        }
        if let Some(cluster) = &mut copy.cluster {
            cluster.token = REDACTED.to_owned();
            for key in cluster
                .secrets_encryption
                .iter_mut()
                .flat_map(|e| e.keys.iter_mut())
            {
                key.secret = REDACTED.to_owned();
            }
        }
        for auth in copy
            .machine
            .registries
            .values_mut()
            .filter_map(|r| r.auth.as_mut())
        {
            auth.password = REDACTED.to_owned();
        }
        copy
    }
}

fn check_encryption_keys(encryption: &SecretsEncryptionSpec, problems: &mut Vec<FieldError>) {
    use base64::Engine;
    if encryption.keys.is_empty() {
        problems.push(FieldError::new(
            "cluster.secretsEncryption.keys",
            "must name at least one key (leave the section out to derive one from the CA key)",
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, key) in encryption.keys.iter().enumerate() {
        let path = format!("cluster.secretsEncryption.keys[{i}]");
        let name_ok = !key.name.is_empty()
            && key.name.len() <= 32
            && key
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            problems.push(FieldError::new(
                format!("{path}.name"),
                format!("{:?} is not 1 to 32 of [a-z0-9-]", key.name),
            ));
        } else if !seen.insert(key.name.as_str()) {
            problems.push(FieldError::new(
                format!("{path}.name"),
                format!("{:?} is named twice", key.name),
            ));
        }
        let decoded = base64::engine::general_purpose::STANDARD.decode(key.secret.trim());
        if decoded.map(|b| b.len()) != Ok(32) {
            problems.push(FieldError::new(
                format!("{path}.secret"),
                "is not 32 bytes of base64 (make one with `head -c 32 /dev/urandom | base64`)",
            ));
        }
    }
}

/// Where a change between two configs lands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChanges {
    /// Changed sections the node applies while running.
    pub live: Vec<String>,
    /// Changed sections that take effect only after a reboot.
    pub needs_reboot: Vec<String>,
}

impl ConfigChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.needs_reboot.is_empty()
    }
}

/// Compares two configs section by section: hostname, network, sysctls and
/// certificates apply live; the machine type, install disk, kernel modules and the
/// cluster section need a reboot.
pub fn changes(old: &MachineConfig, new: &MachineConfig) -> ConfigChanges {
    let mut result = ConfigChanges::default();
    let (a, b) = (&old.machine, &new.machine);
    let mut note = |changed: bool, path: &str, live: bool| {
        if changed {
            let list = if live {
                &mut result.live
            } else {
                &mut result.needs_reboot
            };
            list.push(path.to_owned());
        }
    };
    note(a.hostname != b.hostname, "machine.hostname", true);
    note(a.network != b.network, "machine.network", true);
    // Starting or stopping a DHCP client is done at boot.
    // The DHCP clients start at boot: which links (and VLANs of links) run one.
    let dhcp = |m: &MachineSpec| -> Vec<(Option<String>, Option<String>, Option<u16>)> {
        m.network
            .interfaces
            .iter()
            .flat_map(|i| {
                let link = (i.name.clone(), i.mac.clone());
                i.dhcp
                    .then(|| (link.0.clone(), link.1.clone(), None))
                    .into_iter()
                    .chain(
                        i.vlans
                            .iter()
                            .filter(|v| v.dhcp)
                            .map(move |v| (link.0.clone(), link.1.clone(), Some(v.vlan_id))),
                    )
            })
            .collect()
    };
    note(
        dhcp(a) != dhcp(b),
        "machine.network.interfaces[].dhcp",
        false,
    );
    note(a.sysctls != b.sysctls, "machine.sysctls", true);
    note(a.certs != b.certs, "machine.certs", true);
    note(a.pods != b.pods, "machine.pods", true);
    note(a.config_maps != b.config_maps, "machine.configMaps", true);
    note(a.registries != b.registries, "machine.registries", true);
    note(a.machine_type != b.machine_type, "machine.type", false);
    note(a.install != b.install, "machine.install", false);
    note(
        a.kernel_modules != b.kernel_modules,
        "machine.kernelModules",
        false,
    );
    note(old.cluster != new.cluster, "cluster", false);
    result
}

/// Whether `name` is a DNS-1123 label (container names) or, with `dots`, subdomain
/// (pod names).
fn is_dns_name(name: &str, dots: bool) -> bool {
    let max = if dots { 253 } else { 63 };
    !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Parses and checks one config map at `path`: a name, and keys as Kubernetes allows
/// them (`[-._a-zA-Z0-9]`, at most 253, not `.` or `..`), each in `data` or
/// `binaryData`, not both.
fn config_map(value: &serde_json::Value, path: &str) -> Result<ConfigMap, Vec<FieldError>> {
    let map: ConfigMap = serde_json::from_value(value.clone())
        .map_err(|e| vec![FieldError::new(path, format!("is not a ConfigMap: {e}"))])?;
    // (k8s-openapi refuses another `kind` or `apiVersion` while parsing.)
    let mut problems = Vec::new();
    check_object_name(&map.metadata, path, &mut problems);
    let binary_keys: BTreeSet<&String> = map.binary_data.iter().flatten().map(|(k, _)| k).collect();
    let keys = map
        .data
        .iter()
        .flatten()
        .map(|(k, _)| ("data", k))
        .chain(binary_keys.iter().map(|k| ("binaryData", *k)));
    for (field, key) in keys {
        let valid = !key.is_empty()
            && key.len() <= 253
            && key != "."
            && key != ".."
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            problems.push(FieldError::new(
                format!("{path}.{field}.{key}"),
                "is not a valid key (letters, digits, '-', '_' and '.')",
            ));
        } else if field == "data" && binary_keys.contains(key) {
            problems.push(FieldError::new(
                format!("{path}.data.{key}"),
                "is also in binaryData",
            ));
        }
    }
    if problems.is_empty() {
        Ok(map)
    } else {
        Err(problems)
    }
}

/// Checks an object's `metadata.name` (a DNS-1123 subdomain, required) and
/// `metadata.namespace` (a DNS-1123 label, optional).
fn check_object_name(metadata: &ObjectMeta, path: &str, problems: &mut Vec<FieldError>) {
    match metadata.name.as_deref() {
        Some(name) if is_dns_name(name, true) => {}
        Some(name) => problems.push(FieldError::new(
            format!("{path}.metadata.name"),
            format!("{name:?} is not a DNS-1123 subdomain"),
        )),
        None => problems.push(FieldError::new(
            format!("{path}.metadata.name"),
            "is required",
        )),
    }
    if let Some(namespace) = &metadata.namespace
        && !is_dns_name(namespace, false)
    {
        problems.push(FieldError::new(
            format!("{path}.metadata.namespace"),
            format!("{namespace:?} is not a DNS-1123 label"),
        ));
    }
}

/// Parses and checks one static pod manifest at `path`.
fn static_pod(value: &serde_json::Value, path: &str) -> Result<Pod, Vec<FieldError>> {
    let pod: Pod = serde_json::from_value(value.clone())
        .map_err(|e| vec![FieldError::new(path, format!("is not a Pod: {e}"))])?;
    let mut problems = Vec::new();
    if let Some(kind) = value.get("kind").and_then(|k| k.as_str())
        && kind != "Pod"
    {
        problems.push(FieldError::new(
            format!("{path}.kind"),
            format!("{kind:?} is not Pod"),
        ));
    }
    check_object_name(&pod.metadata, path, &mut problems);
    let Some(spec) = &pod.spec else {
        problems.push(FieldError::new(format!("{path}.spec"), "is required"));
        return Err(problems);
    };
    if spec.containers.is_empty() {
        problems.push(FieldError::new(
            format!("{path}.spec.containers"),
            "needs at least one container",
        ));
    }
    if let Some(policy) = &spec.restart_policy
        && !["Always", "OnFailure", "Never"].contains(&policy.as_str())
    {
        problems.push(FieldError::new(
            format!("{path}.spec.restartPolicy"),
            format!("{policy:?} is not Always, OnFailure or Never"),
        ));
    }
    let mut seen = BTreeSet::new();
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| (format!("{path}.spec.initContainers[{i}]"), c))
        .chain(
            spec.containers
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("{path}.spec.containers[{i}]"), c)),
        );
    for (container_path, container) in all {
        if !is_dns_name(&container.name, false) {
            problems.push(FieldError::new(
                format!("{container_path}.name"),
                format!("{:?} is not a DNS-1123 label", container.name),
            ));
        } else if !seen.insert(container.name.clone()) {
            problems.push(FieldError::new(
                format!("{container_path}.name"),
                format!(
                    "{:?} is used by another container of the pod",
                    container.name
                ),
            ));
        }
        if container.image.as_deref().is_none_or(str::is_empty) {
            problems.push(FieldError::new(
                format!("{container_path}.image"),
                "is required",
            ));
        }
    }
    if problems.is_empty() {
        Ok(pod)
    } else {
        Err(problems)
    }
}

fn check_certs(certs: &CertsSpec, problems: &mut Vec<FieldError>) {
    let ca_ok = match pki::cert_info(&certs.ca.crt, "machine.certs.ca.crt") {
        Ok(info) if info.is_ca => true,
        Ok(_) => {
            problems.push(FieldError::new(
                "machine.certs.ca.crt",
                "is not a CA certificate (basic constraints CA:TRUE)",
            ));
            false
        }
        Err(_) => {
            problems.push(FieldError::new(
                "machine.certs.ca.crt",
                "is not a PEM X.509 certificate",
            ));
            false
        }
    };
    if let Some(key) = &certs.ca.key {
        check_key(&certs.ca.crt, key, ca_ok, "machine.certs.ca.key", problems);
    }
    match &certs.node {
        None if certs.ca.key.is_none() => problems.push(FieldError::new(
            "machine.certs.node",
            "is required unless machine.certs.ca.key is given (the node then issues its own)",
        )),
        None => {}
        Some(node) => check_issued(node, "machine.certs.node", &certs.ca.crt, ca_ok, problems),
    }
    if let Some(agent) = &certs.agent {
        check_issued(agent, "machine.certs.agent", &certs.ca.crt, ca_ok, problems);
    }
}

/// Checks a certificate and key the cluster CA (`ca`, usable when `ca_ok`) issued.
fn check_issued(
    pair: &NodeCerts,
    path: &str,
    ca: &str,
    ca_ok: bool,
    problems: &mut Vec<FieldError>,
) {
    let crt = format!("{path}.crt");
    let cert_ok = pki::cert_info(&pair.crt, "certificate").is_ok();
    if !cert_ok {
        problems.push(FieldError::new(&crt, "is not a PEM X.509 certificate"));
    } else if ca_ok && !pki::is_signed_by(&pair.crt, ca).unwrap_or(false) {
        problems.push(FieldError::new(
            &crt,
            "is not signed by machine.certs.ca.crt",
        ));
    }
    check_key(
        &pair.crt,
        &pair.key,
        cert_ok,
        &format!("{path}.key"),
        problems,
    );
}

fn check_key(cert: &str, key: &str, cert_ok: bool, path: &str, problems: &mut Vec<FieldError>) {
    match pki::key_matches_cert(cert, key) {
        Ok(true) => {}
        Ok(false) => problems.push(FieldError::new(path, "does not match its certificate")),
        Err(pki::PkiError::Key { .. }) => {
            problems.push(FieldError::new(path, "is not a PEM private key"))
        }
        // The certificate itself is already reported.
        Err(_) if !cert_ok => {}
        Err(err) => problems.push(FieldError::new(path, err.to_string())),
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn is_https_url(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("https://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    !authority.is_empty() && !authority.starts_with(':')
}

fn is_token(text: &str) -> bool {
    let lower_alnum = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    match text.split_once('.') {
        Some((id, secret)) => {
            id.len() == 6 && secret.len() == 16 && lower_alnum(id) && lower_alnum(secret)
        }
        None => false,
    }
}

fn check_sysctl_key(key: &str) -> Result<(), String> {
    let valid = !key.is_empty()
        && !key.starts_with(['.', '/'])
        && !key.contains("..")
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{key:?} is not a sysctl name like net.ipv4.ip_forward"
        ))
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (case-insensitive).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut bytes = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut bytes {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(bytes)
}

/// Formats six bytes as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The link name of VLAN `id` on `parent` (`eth0.100`), if it fits IFNAMSIZ.
pub fn vlan_link_name(parent: &str, id: u16) -> Option<String> {
    let name = format!("{parent}.{id}");
    (name.len() <= 15).then_some(name)
}

/// How an interface entry finds its link: by `name` or by `mac`, exactly one.
fn interface_selector(
    raw: &InterfaceConfig,
    path: &str,
    problems: &mut Vec<FieldError>,
) -> Option<LinkSelector> {
    match (&raw.name, &raw.mac) {
        (Some(name), None) => match check_link_name(name) {
            Ok(()) => Some(LinkSelector::Name(name.clone())),
            Err(why) => {
                problems.push(FieldError::new(
                    format!("{path}.name"),
                    format!("{name:?} {why}"),
                ));
                None
            }
        },
        (None, Some(mac)) => match parse_mac(mac) {
            Some(bytes) => Some(LinkSelector::Mac(bytes)),
            None => {
                problems.push(FieldError::new(
                    format!("{path}.mac"),
                    format!("{mac:?} is not a MAC address like 52:54:00:12:34:56"),
                ));
                None
            }
        },
        (Some(_), Some(_)) => {
            problems.push(FieldError::new(path, "set either name or mac, not both"));
            None
        }
        (None, None) => {
            problems.push(FieldError::new(path, "needs a name or a mac"));
            None
        }
    }
}

/// What an interface entry asks Cairn to create: nothing, a bond or a bridge.
fn link_kind(raw: &InterfaceConfig, path: &str, problems: &mut Vec<FieldError>) -> LinkKind {
    let virtual_section = match (&raw.bond, &raw.bridge) {
        (Some(_), Some(_)) => {
            problems.push(FieldError::new(path, "set either bond or bridge, not both"));
            return LinkKind::Existing;
        }
        (Some(_), None) => "bond",
        (None, Some(_)) => "bridge",
        (None, None) => return LinkKind::Existing,
    };
    if raw.name.is_none() {
        problems.push(FieldError::new(
            format!("{path}.{virtual_section}"),
            format!("a {virtual_section} is created by Cairn and needs a name, not a mac"),
        ));
    }
    let ports = |interfaces: &[String], problems: &mut Vec<FieldError>| {
        let section = format!("{path}.{virtual_section}.interfaces");
        if interfaces.is_empty() {
            problems.push(FieldError::new(&section, "names no link"));
        }
        let mut seen = BTreeSet::new();
        for (j, port) in interfaces.iter().enumerate() {
            if let Err(why) = check_link_name(port) {
                problems.push(FieldError::new(
                    format!("{section}[{j}]"),
                    format!("{port:?} {why}"),
                ));
            } else if !seen.insert(port) {
                problems.push(FieldError::new(
                    format!("{section}[{j}]"),
                    format!("{port} is listed more than once"),
                ));
            }
        }
        interfaces.to_vec()
    };
    if let Some(bond) = &raw.bond {
        let mode = match BOND_MODES.iter().position(|m| *m == bond.mode) {
            Some(index) => u8::try_from(index).unwrap_or_default(),
            None => {
                problems.push(FieldError::new(
                    format!("{path}.bond.mode"),
                    format!("{:?} is not one of {}", bond.mode, BOND_MODES.join(", ")),
                ));
                0
            }
        };
        LinkKind::Bond {
            ports: ports(&bond.interfaces, problems),
            mode,
            miimon: bond.miimon,
        }
    } else if let Some(bridge) = &raw.bridge {
        LinkKind::Bridge {
            ports: ports(&bridge.interfaces, problems),
            stp: bridge.stp.as_ref().is_some_and(|s| s.enabled),
        }
    } else {
        LinkKind::Existing
    }
}

/// The addresses of an interface or VLAN entry at `path`.
fn parse_addresses(texts: &[String], path: &str, problems: &mut Vec<FieldError>) -> Vec<IpNet> {
    let mut addresses = Vec::new();
    for (j, text) in texts.iter().enumerate() {
        match text.parse::<IpNet>() {
            Ok(net) => addresses.push(net),
            Err(_) => problems.push(FieldError::new(
                format!("{path}.addresses[{j}]"),
                format!("{text:?} is not an IP prefix like 10.0.0.2/24"),
            )),
        }
    }
    addresses
}

/// Checks the MTU of an interface or VLAN entry at `path`.
fn check_mtu(mtu: Option<u32>, path: &str, problems: &mut Vec<FieldError>) {
    if let Some(mtu) = mtu
        && !(68..=65535).contains(&mtu)
    {
        problems.push(FieldError::new(
            format!("{path}.mtu"),
            format!("{mtu} is outside 68..=65535"),
        ));
    }
}

/// The routes of an interface or VLAN entry at `path`.
fn parse_routes(raw: &[RouteConfig], path: &str, problems: &mut Vec<FieldError>) -> Vec<Route> {
    let mut routes = Vec::new();
    for (j, route) in raw.iter().enumerate() {
        let route_path = format!("{path}.routes[{j}]");
        let to = route.to.parse::<IpNet>().map_err(|_| {
            FieldError::new(
                format!("{route_path}.to"),
                format!("{:?} is not an IP prefix like 0.0.0.0/0", route.to),
            )
        });
        let via = match &route.via {
            None => Ok(None),
            Some(text) => text.parse::<IpAddr>().map(Some).map_err(|_| {
                FieldError::new(
                    format!("{route_path}.via"),
                    format!("{text:?} is not an IP address"),
                )
            }),
        };
        match (to, via) {
            (Ok(to), Ok(via)) => {
                if let Some(gateway) = via
                    && gateway.is_ipv4() != matches!(to, IpNet::V4(_))
                {
                    problems.push(FieldError::new(
                        format!("{route_path}.via"),
                        format!("gateway {gateway} is not of the same family as {to}"),
                    ));
                } else {
                    routes.push(Route { to, via });
                }
            }
            (to, via) => {
                problems.extend(to.err());
                problems.extend(via.err());
            }
        }
    }
    routes
}

fn check_link_name(name: &str) -> Result<(), &'static str> {
    // IFNAMSIZ is 16 including the terminating NUL.
    if name.is_empty() || name.len() > 15 {
        return Err("must be 1 to 15 characters long");
    }
    if name.contains(['/', ':']) || name.chars().any(char::is_whitespace) {
        return Err("must not contain '/', ':' or whitespace");
    }
    Ok(())
}

/// Checks a DNS name (hostname or cluster name).
pub fn check_hostname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("must be 1 to 253 characters long");
    }
    for label in name.split('.') {
        let valid_chars = label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if label.is_empty()
            || label.len() > 63
            || !valid_chars
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err("is not a DNS name (lowercase letters, digits and '-', labels of 1 to 63)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{NodeSpec, Secrets};

    fn valid() -> MachineConfig {
        let secrets = Secrets::generate("demo").unwrap();
        let mut config = secrets
            .machine_config(&NodeSpec {
                machine_type: MachineType::Controlplane,
                hostname: "node-1".into(),
                addresses: vec!["10.0.0.2/24".into()],
                endpoint: "https://10.0.0.2:6443".into(),
                control_planes: vec!["10.0.0.2".into()],
                install_disk: None,
            })
            .unwrap();
        config.machine.network.interfaces[0]
            .addresses
            .push("fd00::2/64".into());
        config.machine.network.interfaces[0]
            .routes
            .push(RouteConfig {
                to: "0.0.0.0/0".into(),
                via: Some("10.0.0.1".into()),
            });
        config.machine.network.interfaces.push(InterfaceConfig {
            mac: Some("52:54:00:AA:bb:01".into()),
            addresses: vec!["192.168.7.2/24".into()],
            ..Default::default()
        });
        config
    }

    fn problems_of(config: &MachineConfig) -> Vec<String> {
        config.validate().iter().map(ToString::to_string).collect()
    }

    fn paths_of(config: &MachineConfig) -> Vec<String> {
        config.validate().into_iter().map(|p| p.path).collect()
    }

    #[test]
    fn valid_document_round_trips_through_yaml_into_typed_interfaces() {
        let config = valid();
        assert!(config.validate().is_empty(), "{:?}", problems_of(&config));
        let again = MachineConfig::from_yaml(&config.to_yaml().unwrap()).expect("reparse");
        assert_eq!(config, again);
        let interfaces = again.interfaces().unwrap();
        assert_eq!(interfaces[0].selector, LinkSelector::Name("eth0".into()));
        assert_eq!(interfaces[0].addresses[1].to_string(), "fd00::2/64");
        assert_eq!(
            interfaces[0].routes[0].via,
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            interfaces[1].selector,
            LinkSelector::Mac([0x52, 0x54, 0, 0xaa, 0xbb, 1])
        );
    }

    #[test]
    fn static_pods_are_checked_and_parsed_and_change_live() {
        let mut config = valid();
        let mut with_pod = config.clone();
        with_pod.machine.pods = vec![serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "main", "image": "busybox",
                "resources": {"limits": {"memory": "64Mi"}}}]}})];
        let yaml = with_pod.to_yaml().unwrap();
        assert!(yaml.contains("memory: 64Mi"), "{yaml}");
        let with_pod = MachineConfig::from_yaml(&yaml).expect("a config with a static pod");
        assert!(
            with_pod.validate().is_empty(),
            "{:?}",
            problems_of(&with_pod)
        );
        let pods = with_pod.static_pods();
        assert_eq!(pods[0].metadata.name.as_deref(), Some("web"));
        assert_eq!(changes(&config, &with_pod).live, ["machine.pods"]);
        config.machine.pods = vec![
            serde_json::json!({"metadata": {"name": "Bad_Name"}, "spec": {"containers": [
                {"name": "a", "image": "x"}, {"name": "a"}]}}),
            serde_json::json!({"metadata": {"name": "ok"}, "spec": {"containers": [],
                "restartPolicy": "Sometimes"}}),
            serde_json::json!({"metadata": {"name": 7}}),
        ];
        assert_eq!(
            paths_of(&config),
            [
                "machine.pods[0].metadata.name",
                "machine.pods[0].spec.containers[1].name",
                "machine.pods[0].spec.containers[1].image",
                "machine.pods[1].spec.containers",
                "machine.pods[1].spec.restartPolicy",
                "machine.pods[2]",
            ]
        );
        assert!(config.static_pods().is_empty());
    }

    #[test]
    fn registries_are_checked_change_live_and_hide_passwords() {
        let config = valid();
        let yaml = config.to_yaml().unwrap().replace(
            "machine:\n",
            "machine:\n  registries:\n    10.5.0.1:5000:\n      http: true\n      auth:\n        username: puller\n        password: s3cret\n",
        );
        let with = MachineConfig::from_yaml(&yaml).expect("a config with registries");
        assert!(with.validate().is_empty(), "{:?}", problems_of(&with));
        let registry = &with.machine.registries["10.5.0.1:5000"];
        assert!(registry.http);
        assert_eq!(registry.auth.as_ref().unwrap().password, "s3cret");
        assert!(!format!("{with:?}").contains("s3cret"));
        assert!(!with.redacted().to_yaml().unwrap().contains("s3cret"));
        assert_eq!(changes(&config, &with).live, ["machine.registries"]);
        let mut bad = with.clone();
        bad.machine.registries.insert(
            "https://example.com".into(),
            RegistrySpec {
                http: false,
                auth: Some(RegistryAuthSpec {
                    username: String::new(),
                    password: "x".into(),
                }),
            },
        );
        assert_eq!(
            paths_of(&bad),
            [
                "machine.registries[\"https://example.com\"]",
                "machine.registries[\"https://example.com\"].auth.username",
            ]
        );
    }

    #[test]
    fn static_config_maps_are_checked_and_change_live() {
        let config = valid();
        let mut with_map = config.clone();
        with_map.machine.config_maps = vec![serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
            "data": {"greeting": "hi", "app.conf": "x=1"}})];
        let yaml = with_map.to_yaml().unwrap();
        let with_map = MachineConfig::from_yaml(&yaml).expect("a config with a config map");
        assert!(
            with_map.validate().is_empty(),
            "{:?}",
            problems_of(&with_map)
        );
        assert_eq!(
            with_map.static_config_maps()[0].data.as_ref().unwrap()["greeting"],
            "hi"
        );
        assert_eq!(changes(&config, &with_map).live, ["machine.configMaps"]);
        let mut bad = config;
        bad.machine.config_maps = vec![
            serde_json::json!({"kind": "Secret", "metadata": {"name": "a"}}),
            serde_json::json!({"metadata": {"name": "b"}, "data": {"../x": "1", "k": "1"},
                "binaryData": {"k": "MQ=="}}),
            serde_json::json!({"metadata": {"name": "c"}}),
            serde_json::json!({"metadata": {"name": "c", "namespace": "default"}}),
            serde_json::json!({"metadata": {}, "data": {"k": 1}}),
        ];
        assert_eq!(
            paths_of(&bad),
            [
                "machine.configMaps[0]",
                "machine.configMaps[1].data.../x",
                "machine.configMaps[1].data.k",
                "machine.configMaps[3].metadata.name",
                "machine.configMaps[4]",
            ]
        );
        assert_eq!(bad.static_config_maps().len(), 2);
    }

    #[test]
    fn unknown_field_is_an_error_naming_it() {
        let text = valid()
            .to_yaml()
            .unwrap()
            .replace("hostname: node-1", "hostnam: node-1");
        let err = MachineConfig::from_yaml(&text).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax(_)));
        assert!(err.to_string().contains("hostnam"), "{err}");
    }

    #[test]
    fn every_semantic_problem_is_reported_with_its_path() {
        let mut config = valid();
        config.api_version = "cairn.dev/v2".into();
        config.machine.hostname = Some("Not_A_Host".into());
        let eth0 = &mut config.machine.network.interfaces[0];
        eth0.addresses[1] = "10.0.0.300/24".into();
        eth0.mtu = Some(10);
        eth0.routes[0].to = "default".into();
        config.machine.network.interfaces[1] = InterfaceConfig::default();
        config.machine.network.nameservers = vec!["1.1.1.1".into(), "dns".into()];
        config.machine.install = Some(InstallSpec { disk: "vda".into() });
        config
            .machine
            .sysctls
            .insert("../etc/passwd".into(), "x".into());
        config.machine.kernel_modules.push(KernelModuleSpec {
            name: "veth".into(),
            parameters: vec!["noequals".into()],
        });
        assert_eq!(
            paths_of(&config),
            [
                "apiVersion",
                "machine.hostname",
                "machine.network.interfaces[0].addresses[1]",
                "machine.network.interfaces[0].mtu",
                "machine.network.interfaces[0].routes[0].to",
                "machine.network.interfaces[1]",
                "machine.network.nameservers[1]",
                "machine.install.disk",
                "machine.sysctls[\"../etc/passwd\"]",
                "machine.kernelModules[0].parameters[0]",
            ]
        );
        let text = problems_of(&config).join("\n");
        assert!(text.contains(
            "machine.network.interfaces[0].addresses[1]: \"10.0.0.300/24\" is not an IP prefix"
        ));
    }

    #[test]
    fn a_store_that_keeps_no_history_is_refused() {
        let mut config = valid();
        config.cluster.as_mut().unwrap().store = Some(StoreSpec {
            compaction_window: Some(0),
            compaction_interval_seconds: Some(0),
        });
        assert_eq!(
            paths_of(&config),
            [
                "cluster.store.compactionWindow",
                "cluster.store.compactionIntervalSeconds"
            ]
        );
        let yaml = "compactionWindow: 500\ncompactionIntervalSeconds: 60\n";
        let spec: StoreSpec = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(spec.compaction_window(), 500);
        assert_eq!(StoreSpec::default().compaction_interval_seconds(), 300);
    }

    #[test]
    fn node_lifecycle_settings_out_of_range_are_refused_and_absent_ones_default() {
        let mut config = valid();
        config.cluster.as_mut().unwrap().node_lifecycle = Some(NodeLifecycleSpec {
            grace_period_seconds: Some(0),
            eviction_seconds: Some(MAX_NODE_LIFECYCLE_SECONDS + 1),
        });
        assert_eq!(
            paths_of(&config),
            [
                "cluster.nodeLifecycle.gracePeriodSeconds",
                "cluster.nodeLifecycle.evictionSeconds"
            ]
        );
        let spec: NodeLifecycleSpec = serde_saphyr::from_str("gracePeriodSeconds: 4\n").unwrap();
        assert_eq!(spec.grace_period_seconds(), 4);
        assert_eq!(spec.eviction_seconds(), DEFAULT_EVICTION_SECONDS);
        let mut config = valid();
        config.cluster.as_mut().unwrap().node_lifecycle = Some(spec);
        assert!(paths_of(&config).is_empty());
    }

    #[test]
    fn gateway_of_another_family_is_refused() {
        let mut config = valid();
        config.machine.network.interfaces[0].routes[0].via = Some("fd00::1".into());
        assert_eq!(
            paths_of(&config),
            ["machine.network.interfaces[0].routes[0].via"]
        );
    }

    #[test]
    fn bonds_bridges_and_vlans_parse_from_yaml_into_typed_interfaces() {
        let mut config = valid();
        let before = config.clone();
        let yaml = r#"
- name: eth1
- name: eth2
- name: bond0
  bond: {interfaces: [eth1, eth2], mode: 802.3ad, miimon: 100}
  addresses: [10.1.0.2/24]
  vlans:
    - vlanId: 100
      addresses: [192.168.100.2/24]
      routes: [{to: 192.168.200.0/24, via: 192.168.100.1}]
- name: br0
  bridge: {interfaces: [eth3], stp: {enabled: true}}
- mac: 52:54:00:00:00:09
  vlans: [{vlanId: 7, dhcp: true}]
"#;
        config.machine.network.interfaces = serde_saphyr::from_str(yaml).unwrap();
        assert!(config.validate().is_empty(), "{:?}", problems_of(&config));
        let interfaces = config.interfaces().unwrap();
        let selectors: Vec<String> = interfaces.iter().map(|i| i.selector.to_string()).collect();
        assert_eq!(
            selectors,
            [
                "eth1",
                "eth2",
                "bond0",
                "bond0.100",
                "br0",
                "52:54:00:00:00:09",
                "52:54:00:00:00:09.7"
            ]
        );
        assert_eq!(
            interfaces[2].kind,
            LinkKind::Bond {
                ports: vec!["eth1".into(), "eth2".into()],
                mode: 4,
                miimon: Some(100)
            }
        );
        assert_eq!(interfaces[3].kind, LinkKind::Vlan);
        assert_eq!(interfaces[3].routes[0].to.to_string(), "192.168.200.0/24");
        assert_eq!(
            interfaces[4].kind,
            LinkKind::Bridge {
                ports: vec!["eth3".into()],
                stp: true
            }
        );
        assert!(interfaces[6].dhcp);
        let again = MachineConfig::from_yaml(&config.to_yaml().unwrap()).unwrap();
        assert_eq!(config, again);
        // Links, bonds and VLANs change live; a DHCP client (the VLAN's) starts at boot.
        assert_eq!(
            changes(&before, &config).needs_reboot,
            ["machine.network.interfaces[].dhcp"]
        );
        let mut without_dhcp = config.clone();
        without_dhcp.machine.network.interfaces[4].vlans[0].dhcp = false;
        assert!(changes(&before, &without_dhcp).needs_reboot.is_empty());
    }

    #[test]
    fn bad_bonds_bridges_and_vlans_are_named_by_path() {
        let mut config = valid();
        let yaml = r#"
- name: eth1
  addresses: [10.9.0.2/24]
- mac: 52:54:00:00:00:09
  bond: {interfaces: [eth1], mode: fastest}
- name: br0
  bond: {interfaces: [eth2], mode: active-backup}
  bridge: {interfaces: [eth2]}
- name: br1
  bridge: {interfaces: [br1, eth1, eth5, eth5]}
- name: averylongname0
  vlans: [{vlanId: 100}, {vlanId: 0}, {vlanId: 5000}]
- name: eth6
  vlans: [{vlanId: 3}, {vlanId: 3}]
"#;
        config.machine.network.interfaces = serde_saphyr::from_str(yaml).unwrap();
        let problems = problems_of(&config).join("\n");
        for expected in [
            "machine.network.interfaces[1].bond: a bond is created by Cairn and needs a name, not a mac",
            "machine.network.interfaces[1].bond.mode: \"fastest\" is not one of balance-rr",
            "machine.network.interfaces[2]: set either bond or bridge, not both",
            "machine.network.interfaces[3].bridge.interfaces[0]: br1 cannot be a port of itself",
            "machine.network.interfaces[3].bridge.interfaces[3]: eth5 is listed more than once",
            "machine.network.interfaces[4].vlans[0].vlanId: the VLAN's link name averylongname0.100 would be longer than 15 characters",
            "machine.network.interfaces[4].vlans[1].vlanId: 0 is outside 1..=4094",
            "machine.network.interfaces[4].vlans[2].vlanId: 5000 is outside 1..=4094",
            "machine.network.interfaces[5].vlans[1].vlanId: VLAN 3 is listed more than once on eth6",
            "machine.network.interfaces[0]: is a port of br1: its addresses, routes and DHCP belong on br1",
        ] {
            assert!(
                problems.contains(expected),
                "missing {expected:?} in:\n{problems}"
            );
        }
    }

    #[test]
    fn duplicate_interfaces_are_refused() {
        let mut config = valid();
        config.machine.network.interfaces[1].mac = None;
        config.machine.network.interfaces[1].name = Some("eth0".into());
        assert!(problems_of(&config)[0].contains("listed more than once"));
    }

    #[test]
    fn overlapping_subnets_and_node_addresses_are_refused() {
        let mut config = valid();
        let cluster = config.cluster.as_mut().unwrap();
        cluster.service_subnet = Some("10.244.128.0/20".into());
        config.machine.network.interfaces[1].addresses = vec!["10.244.3.9/24".into()];
        let text = problems_of(&config).join("\n");
        assert!(
            text.contains(
                "cluster.serviceSubnet: 10.244.128.0/20 overlaps cluster.podSubnet 10.244.0.0/16"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "machine.network.interfaces[1].addresses: 10.244.3.9/24 overlaps cluster.podSubnet"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_worker_needs_an_endpoint_and_a_valid_token() {
        let mut config = valid();
        config.machine.machine_type = MachineType::Worker;
        let cluster = config.cluster.as_mut().unwrap();
        cluster.endpoint = None;
        cluster.token = "short".into();
        assert_eq!(paths_of(&config), ["cluster.endpoint", "cluster.token"]);
        config.cluster = None;
        assert_eq!(paths_of(&config), ["cluster"]);
    }

    #[test]
    fn keys_that_do_not_match_their_certificates_are_refused() {
        let mut config = valid();
        let other = pki::Ca::generate("other").unwrap();
        config.machine.certs.ca.key = Some(other.key_pem().to_owned());
        assert_eq!(
            problems_of(&config),
            ["machine.certs.ca.key: does not match its certificate"]
        );
        let mut config = valid();
        let foreign = other
            .issue_server("node-1", &["node-1".into()], time::Duration::days(1))
            .unwrap();
        config.machine.certs.node = Some(NodeCerts {
            crt: foreign.cert_pem,
            key: foreign.key_pem,
        });
        assert_eq!(
            problems_of(&config),
            ["machine.certs.node.crt: is not signed by machine.certs.ca.crt"]
        );
        let mut config = valid();
        let stranger = other
            .issue_user(
                "system:node:node-1",
                Some("system:nodes"),
                time::Duration::days(1),
            )
            .unwrap();
        config.machine.certs.agent = Some(NodeCerts {
            crt: stranger.cert_pem,
            key: other
                .issue_user("x", None, time::Duration::days(1))
                .unwrap()
                .key_pem,
        });
        assert_eq!(
            problems_of(&config),
            [
                "machine.certs.agent.crt: is not signed by machine.certs.ca.crt",
                "machine.certs.agent.key: does not match its certificate"
            ]
        );
        let mut config = valid();
        config.machine.certs.ca.key = None;
        config.machine.certs.node = None;
        assert_eq!(paths_of(&config), ["machine.certs.node"]);
    }

    #[test]
    fn readers_see_no_secrets() {
        let config = valid();
        let text = config.redacted().to_yaml().unwrap();
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(!text.contains(&config.cluster.as_ref().unwrap().token));
        assert!(text.contains(REDACTED));
    }

    #[test]
    fn changes_are_split_into_live_and_reboot() {
        let old = valid();
        let mut new = old.clone();
        new.machine.hostname = Some("node-2".into());
        new.machine
            .sysctls
            .insert("net.ipv4.ip_forward".into(), "1".into());
        new.machine.install = Some(InstallSpec {
            disk: "/dev/vda".into(),
        });
        let changed = changes(&old, &new);
        assert_eq!(changed.live, ["machine.hostname", "machine.sysctls"]);
        assert_eq!(changed.needs_reboot, ["machine.install"]);
        assert!(changes(&old, &old).is_empty());
    }

    #[test]
    fn mac_parsing_is_strict() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(parse_mac("5:54:00:12:34:56"), None);
        assert_eq!(
            format_mac(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            "52:54:00:12:34:56"
        );
    }
}
