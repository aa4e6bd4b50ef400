//! The `MachineConfig` document: what one node should be.
//!
//! A config is parsed in two steps. Deserialising checks the shape (unknown fields and
//! wrong types are errors, reported with their line and column); [`MachineConfig::validate`]
//! then checks the meaning and reports *every* problem at once, each with its YAML path,
//! so an operator fixes a document in one round trip.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The only `apiVersion` this build understands.
pub const API_VERSION: &str = "cairn.dev/v1alpha1";
/// The `kind` of a machine configuration document.
pub const KIND: &str = "MachineConfig";

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

/// One problem in a document, located by its YAML path.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Links, addresses and routes.
    #[serde(default)]
    pub network: NetworkSpec,
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

/// The `machine.network` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Interfaces to configure; interfaces not listed are left down (except `lo`).
    #[serde(default)]
    pub interfaces: Vec<InterfaceConfig>,
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
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
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

/// How an interface is found among the machine's links.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum LinkSelector {
    /// By kernel name.
    Name(String),
    /// By hardware address (six bytes).
    Mac([u8; 6]),
}

impl fmt::Display for LinkSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkSelector::Name(name) => write!(f, "{name}"),
            LinkSelector::Mac(mac) => write!(f, "{}", format_mac(mac)),
        }
    }
}

/// A validated interface: what the network phase applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Which link this is.
    pub selector: LinkSelector,
    /// Addresses to assign.
    pub addresses: Vec<IpNet>,
    /// MTU to set, if any.
    pub mtu: Option<u32>,
    /// Routes to install through this link.
    pub routes: Vec<Route>,
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
        if let Some(hostname) = &self.machine.hostname
            && let Err(why) = check_hostname(hostname)
        {
            problems.push(FieldError::new(
                "machine.hostname",
                format!("{hostname:?} {why}"),
            ));
        }
        if let Err(mut interface_problems) = self.interfaces() {
            problems.append(&mut interface_problems);
        }
        problems
    }

    /// The configured interfaces in typed form, or every problem found in them.
    pub fn interfaces(&self) -> Result<Vec<Interface>, Vec<FieldError>> {
        let mut problems = Vec::new();
        let mut interfaces = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, raw) in self.machine.network.interfaces.iter().enumerate() {
            let path = format!("machine.network.interfaces[{i}]");
            let selector = match (&raw.name, &raw.mac) {
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
                    problems.push(FieldError::new(&path, "set either name or mac, not both"));
                    None
                }
                (None, None) => {
                    problems.push(FieldError::new(&path, "needs a name or a mac"));
                    None
                }
            };
            if let Some(selector) = &selector
                && !seen.insert(selector.clone())
            {
                problems.push(FieldError::new(
                    &path,
                    format!("interface {selector} is listed more than once"),
                ));
            }
            let mut addresses = Vec::new();
            for (j, text) in raw.addresses.iter().enumerate() {
                match text.parse::<IpNet>() {
                    Ok(net) => addresses.push(net),
                    Err(_) => problems.push(FieldError::new(
                        format!("{path}.addresses[{j}]"),
                        format!("{text:?} is not an IP prefix like 10.0.0.2/24"),
                    )),
                }
            }
            if let Some(mtu) = raw.mtu
                && !(68..=65535).contains(&mtu)
            {
                problems.push(FieldError::new(
                    format!("{path}.mtu"),
                    format!("{mtu} is outside 68..=65535"),
                ));
            }
            let mut routes = Vec::new();
            for (j, route) in raw.routes.iter().enumerate() {
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
            if let Some(selector) = selector {
                interfaces.push(Interface {
                    selector,
                    addresses,
                    mtu: raw.mtu,
                    routes,
                });
            }
        }
        if problems.is_empty() {
            Ok(interfaces)
        } else {
            Err(problems)
        }
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

fn check_hostname(name: &str) -> Result<(), &'static str> {
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

    const VALID: &str = r#"
apiVersion: cairn.dev/v1alpha1
kind: MachineConfig
machine:
  type: controlplane
  hostname: node-1
  network:
    interfaces:
      - name: eth0
        addresses: [10.0.0.2/24, "fd00::2/64"]
        mtu: 1500
        routes:
          - to: 0.0.0.0/0
            via: 10.0.0.1
      - mac: "52:54:00:AA:bb:01"
        addresses: [192.168.7.2/24]
"#;

    #[test]
    fn valid_document_parses_into_typed_interfaces() {
        let config = MachineConfig::from_yaml(VALID).expect("valid config");
        assert_eq!(config.machine.hostname.as_deref(), Some("node-1"));
        let interfaces = config.interfaces().expect("typed interfaces");
        assert_eq!(interfaces.len(), 2);
        assert_eq!(interfaces[0].selector, LinkSelector::Name("eth0".into()));
        assert_eq!(interfaces[0].addresses[1].to_string(), "fd00::2/64");
        assert_eq!(
            interfaces[0].routes[0].via,
            Some("10.0.0.1".parse().expect("ip"))
        );
        assert_eq!(
            interfaces[1].selector,
            LinkSelector::Mac([0x52, 0x54, 0, 0xaa, 0xbb, 1])
        );
    }

    #[test]
    fn unknown_field_is_an_error_naming_it() {
        let text = VALID.replace("hostname: node-1", "hostnam: node-1");
        let err = MachineConfig::from_yaml(&text).expect_err("unknown field");
        assert!(matches!(err, ConfigError::Syntax(_)));
        assert!(err.to_string().contains("hostnam"), "{err}");
    }

    #[test]
    fn every_semantic_problem_is_reported_with_its_path() {
        let text = r#"
apiVersion: cairn.dev/v2
kind: MachineConfig
machine:
  type: worker
  hostname: Not_A_Host
  network:
    interfaces:
      - name: eth0
        addresses: [10.0.0.2/24, 10.0.0.300/24]
        mtu: 10
        routes:
          - to: default
            via: fd00::1
      - {}
"#;
        let err = MachineConfig::from_yaml(text).expect_err("invalid");
        let ConfigError::Invalid(problems) = err else {
            panic!("expected field errors, got {err}");
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "apiVersion",
                "machine.hostname",
                "machine.network.interfaces[0].addresses[1]",
                "machine.network.interfaces[0].mtu",
                "machine.network.interfaces[0].routes[0].to",
                "machine.network.interfaces[1]",
            ]
        );
        assert!(
            problems[2]
                .to_string()
                .contains("\"10.0.0.300/24\" is not an IP prefix")
        );
    }

    #[test]
    fn gateway_of_another_family_is_refused() {
        let text = VALID.replace("via: 10.0.0.1", "via: fd00::1");
        let err = MachineConfig::from_yaml(&text).expect_err("family mismatch");
        assert!(
            err.to_string()
                .contains("machine.network.interfaces[0].routes[0].via"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_interfaces_are_refused() {
        let text = VALID.replace("mac: \"52:54:00:AA:bb:01\"", "name: eth0");
        let err = MachineConfig::from_yaml(&text).expect_err("duplicate");
        assert!(err.to_string().contains("listed more than once"), "{err}");
    }

    #[test]
    fn yaml_round_trips() {
        let config = MachineConfig::from_yaml(VALID).expect("valid");
        let again = MachineConfig::from_yaml(&config.to_yaml().expect("render")).expect("reparse");
        assert_eq!(config, again);
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
