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
}

/// The least role each call needs.
pub fn required_role(method: &str, path: &str) -> Role {
    match (method, path) {
        ("GET", _) => Role::Reader,
        ("POST", paths::REBOOT) => Role::Operator,
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

/// A plain acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// What will happen or happened.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_per_call() {
        assert_eq!(required_role("GET", paths::MACHINE_CONFIG), Role::Reader);
        assert_eq!(required_role("POST", paths::REBOOT), Role::Operator);
        assert_eq!(
            required_role("POST", "/v1/services/link-monitor/restart"),
            Role::Operator
        );
        assert_eq!(required_role("POST", paths::SHUTDOWN), Role::Admin);
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
