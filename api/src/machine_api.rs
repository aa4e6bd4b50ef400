//! The machine API's messages (HTTPS + JSON on port [`PORT`]), shared by the node
//! and `cairnctl`. Streams (`logs`, `dmesg` with `follow`) are plain text, a line per
//! record.
//!
//! | call | method and path | least role |
//! |---|---|---|
//! | version | `GET /v1/version` | reader |
//! | health | `GET /v1/health` | reader |
//! | services | `GET /v1/services` | reader |
//! | restart a service | `POST /v1/services/{name}/restart` | operator |
//! | a service's logs | `GET /v1/services/{name}/logs?follow=&tail=` | reader |
//! | kernel log | `GET /v1/dmesg?follow=` | reader |
//! | machine config | `GET /v1/machineconfig` (redacted for readers) | reader |
//! | apply a config | `POST /v1/machineconfig` ([`ApplyRequest`]) | admin |
//! | confirm a `try` | `POST /v1/machineconfig/confirm` | admin |
//! | reboot | `POST /v1/reboot` | operator |
//! | shutdown | `POST /v1/shutdown` | admin |
//! | bootstrap the store | `POST /v1/store/bootstrap` | admin |
//! | store members | `GET /v1/store/members` | reader |
//! | remove a member | `POST /v1/store/members/{id}/remove` | admin |
//! | read keys (debug) | `GET /v1/store/kv?key=` or `?prefix=` | admin |
//! | write a key (debug) | `POST /v1/store/kv` ([`KvPut`]) | admin |
//!
//! In maintenance mode (no config yet) the node serves only version, health and one
//! insecure apply, over TLS with a self-signed certificate and no client certificate.

use serde::{Deserialize, Serialize};

use crate::machine_config::ConfigChanges;
use crate::pki::Role;

/// The machine API's TCP port.
pub const PORT: u16 = 50000;

/// Paths of the calls.
pub mod paths {
    /// Version.
    pub const VERSION: &str = "/v1/version";
    /// Health.
    pub const HEALTH: &str = "/v1/health";
    /// Services.
    pub const SERVICES: &str = "/v1/services";
    /// Kernel log.
    pub const DMESG: &str = "/v1/dmesg";
    /// Machine config (GET) and apply (POST).
    pub const MACHINE_CONFIG: &str = "/v1/machineconfig";
    /// Confirm a `try` apply.
    pub const CONFIRM: &str = "/v1/machineconfig/confirm";
    /// Reboot.
    pub const REBOOT: &str = "/v1/reboot";
    /// Shutdown.
    pub const SHUTDOWN: &str = "/v1/shutdown";
    /// Bootstrap the store.
    pub const STORE_BOOTSTRAP: &str = "/v1/store/bootstrap";
    /// Store members.
    pub const STORE_MEMBERS: &str = "/v1/store/members";
    /// Store keys (debug access).
    pub const STORE_KV: &str = "/v1/store/kv";
    /// Pods on the node (GET); a container's log is
    /// `/v1/pods/{namespace}/{name}/containers/{container}/logs`, and a command runs in
    /// it through a WebSocket at `…/containers/{container}/exec` (see
    /// [`crate::remote_command`]).
    pub const PODS: &str = "/v1/pods";
    /// Images: list (GET), import an archive (POST), remove (`DELETE ?name=`).
    pub const IMAGES: &str = "/v1/images";
    /// The network reconciler's view: links, addresses, routes, problems.
    pub const NETWORK: &str = "/v1/network";
    /// An admin kubeconfig for the cluster's Kubernetes API (POST, admin only: it
    /// issues a `system:masters` certificate; control planes only).
    pub const KUBECONFIG: &str = "/v1/kubeconfig";
}

/// The least role each call needs.
pub fn required_role(method: &str, path: &str) -> Role {
    match (method, path) {
        // Raw store contents include secrets.
        ("GET", p) if p.starts_with(paths::STORE_KV) => Role::Admin,
        // Exec reaches everything a container holds, its secrets too.
        ("GET", p) if p.starts_with(paths::PODS) && p.ends_with("/exec") => Role::Admin,
        ("GET", _) => Role::Reader,
        ("POST", paths::REBOOT) => Role::Operator,
        // Importing images changes what the node can run: operators may.
        ("POST", paths::IMAGES) => Role::Operator,
        ("POST", p) if p.starts_with(paths::SERVICES) && p.ends_with("/restart") => Role::Operator,
        _ => Role::Admin,
    }
}

/// An error answer: what went wrong, and every problem when a config was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// One line for humans.
    pub error: String,
    /// Every problem (validation errors, fields that need a reboot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// `POST /v1/kubeconfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeconfigResponse {
    /// The kubeconfig (YAML).
    pub kubeconfig: String,
    /// The API server it points at.
    pub server: String,
}

/// `GET /v1/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Cairn's version.
    pub version: String,
    /// The kernel release.
    pub kernel: String,
    /// The node's hostname.
    pub hostname: String,
    /// Whether the node waits in maintenance mode for its config.
    pub maintenance: bool,
}

/// One boot phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseInfo {
    /// Its name.
    pub name: String,
    /// `running`, `done`, `skipped` or `failed`.
    pub state: String,
    /// How long it ran, if it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<f64>,
    /// Why it was skipped or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One supervised service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Its name.
    pub name: String,
    /// `starting`, `running`, `backing-off (… ms)`, `failed`, `finished`, `stopping`, `stopped`.
    pub state: String,
    /// How many times it was restarted.
    pub restarts: u32,
    /// How its last run ended, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}

/// Where the node keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Persistence {
    /// Nothing survives a reboot: no install disk.
    Ephemeral,
    /// State on a partition of the install disk.
    Disk {
        /// The partition, e.g. `/dev/vda1`.
        device: String,
        /// Where it is mounted.
        mount: String,
    },
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `booting`, `ready`, `maintenance` or `shutting-down`.
    pub stage: String,
    /// Why the node is in maintenance, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Boot phases, in order.
    pub phases: Vec<PhaseInfo>,
    /// Services, by name.
    pub services: Vec<ServiceInfo>,
    /// Where state lives.
    pub persistence: Persistence,
    /// Whether a staged config waits for the next boot.
    pub staged_config: bool,
    /// Seconds left before a `try` apply rolls back, if one is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub try_rollback_in_secs: Option<u64>,
}

/// How an apply-config takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ApplyMode {
    /// Live when possible, otherwise with a reboot.
    #[default]
    Auto,
    /// Live only; refused if a reboot would be needed.
    NoReboot,
    /// Always with a reboot.
    Reboot,
    /// Saved for the next boot; nothing changes now.
    Staged,
    /// Live now, rolled back after a timeout unless confirmed.
    Try,
}

impl std::str::FromStr for ApplyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(ApplyMode::Auto),
            "no-reboot" => Ok(ApplyMode::NoReboot),
            "reboot" => Ok(ApplyMode::Reboot),
            "staged" => Ok(ApplyMode::Staged),
            "try" => Ok(ApplyMode::Try),
            other => Err(format!(
                "unknown mode {other:?} (auto, no-reboot, reboot, staged, try)"
            )),
        }
    }
}

/// `POST /v1/machineconfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The whole new config, YAML.
    pub config: String,
    /// How it takes effect.
    #[serde(default)]
    pub mode: ApplyMode,
    /// For `try`: seconds before the rollback (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub try_timeout_secs: Option<u64>,
}

/// What an accepted apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApplyOutcome {
    /// Nothing differs from the running config.
    Unchanged,
    /// Applied to the running node.
    AppliedLive,
    /// Applied live; rolls back unless confirmed in time.
    AppliedWithRollback,
    /// Saved; the node reboots now to use it.
    Rebooting,
    /// Saved for the next boot.
    Staged,
    /// Accepted in maintenance mode; the node boots with it.
    Booting,
}

/// `POST /v1/machineconfig` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResponse {
    /// What happened.
    pub outcome: ApplyOutcome,
    /// What changed, split by how it applies.
    pub changes: ConfigChanges,
    /// For `try`: seconds before the rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_in_secs: Option<u64>,
}

/// One member of the replicated store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMember {
    /// Its Raft id.
    pub id: u64,
    /// Its Raft address.
    pub addr: String,
    /// Voter or learner.
    pub voter: bool,
    /// The last log index the leader knows it has (only from the leader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<u64>,
}

/// `GET /v1/store/members`: the group as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMembers {
    /// The answering node's id.
    pub this: u64,
    /// The leader, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
    /// The current term.
    pub term: u64,
    /// The last applied log index on the answering node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<u64>,
    /// The answering node's role: leader, follower, candidate or learner.
    pub state: String,
    /// The store's revision on the answering node.
    pub revision: u64,
    /// The members.
    pub members: Vec<StoreMember>,
}

/// `POST /v1/store/kv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvPut {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

/// A key as the debug reads return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value (lossy UTF-8).
    pub value: String,
    /// The revision of its last write.
    pub mod_revision: u64,
}

/// `GET /v1/store/kv` and `POST /v1/store/kv` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvList {
    /// The store's revision seen.
    pub revision: u64,
    /// The keys.
    pub entries: Vec<KvEntry>,
}

/// One container of a pod, as `GET /v1/pods` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerInfo {
    /// Its name.
    pub name: String,
    /// Its image reference.
    pub image: String,
    /// An init container (or sidecar).
    pub init: bool,
    /// `running`, `waiting` or `terminated`.
    pub state: String,
    /// Why it waits or how it ended (`CrashLoopBackOff`, `OOMKilled`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// More about the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The exit code, once terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Whether it is ready.
    pub ready: bool,
    /// How often it was restarted.
    pub restart_count: i32,
}

/// A pod on the node, as `GET /v1/pods` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid on the node.
    pub uid: String,
    /// `Pending`, `Running`, `Succeeded` or `Failed`.
    pub phase: String,
    /// Its address on the pod network, once it has one.
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// What is wrong, if something is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Its containers, init containers first.
    pub containers: Vec<ContainerInfo>,
}

/// An image on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageInfo {
    /// Its name.
    pub name: String,
    /// The manifest digest.
    pub digest: String,
    /// Bytes of its blobs.
    pub size: u64,
}

/// A plain acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// What will happen or happened.
    pub message: String,
}

/// `GET /v1/network`: the node's links, addresses and routes as the reconciler last saw
/// them, each marked when the machine config asks for it, and what it could not do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
    /// Every link.
    pub links: Vec<LinkInfo>,
    /// Every address.
    pub addresses: Vec<AddressInfo>,
    /// Every route of the main table.
    pub routes: Vec<RouteInfo>,
    /// What the spec asks for that is not so, one line each (empty when converged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Passes made since the reconciler started.
    pub passes: u64,
    /// Items added back or changed because they had drifted from the spec, in all.
    pub repairs: u64,
}

/// A link, as `GET /v1/network` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkInfo {
    /// Kernel name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// Hardware address, `aa:bb:…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// Carrier present.
    pub carrier: bool,
    /// The kind of a virtual link (`bond`, `bridge`, `vlan`, `veth`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The bond or bridge it is a port of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
    /// The machine config names it.
    pub configured: bool,
}

/// An address, as `GET /v1/network` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddressInfo {
    /// The link's name.
    pub link: String,
    /// Address and prefix.
    pub address: String,
    /// The machine config asks for it.
    pub configured: bool,
}

/// A route, as `GET /v1/network` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteInfo {
    /// Destination prefix.
    pub to: String,
    /// Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Output link's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// Who installed it: `kernel`, `boot`, `static` (Cairn's machine config), `dhcp`,
    /// `cairn` (the pod network) or a number.
    pub protocol: String,
    /// The machine config asks for it.
    pub configured: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_per_call() {
        assert_eq!(required_role("GET", paths::MACHINE_CONFIG), Role::Reader);
        assert_eq!(required_role("POST", paths::REBOOT), Role::Operator);
        assert_eq!(required_role("POST", paths::KUBECONFIG), Role::Admin);
        assert_eq!(
            required_role("POST", "/v1/services/link-monitor/restart"),
            Role::Operator
        );
        assert_eq!(required_role("POST", paths::SHUTDOWN), Role::Admin);
        assert_eq!(
            required_role("GET", "/v1/pods/default/web/containers/main/logs"),
            Role::Reader
        );
        assert_eq!(
            required_role("GET", "/v1/pods/default/web/containers/main/exec"),
            Role::Admin
        );
        assert_eq!(required_role("POST", paths::MACHINE_CONFIG), Role::Admin);
        assert_eq!(required_role("POST", paths::CONFIRM), Role::Admin);
    }

    #[test]
    fn apply_modes_parse_and_serialise_alike() {
        for mode in ["auto", "no-reboot", "reboot", "staged", "try"] {
            let parsed: ApplyMode = mode.parse().unwrap();
            assert_eq!(
                serde_json::to_string(&parsed).unwrap(),
                format!("\"{mode}\"")
            );
        }
        assert!("sometimes".parse::<ApplyMode>().is_err());
    }
}
