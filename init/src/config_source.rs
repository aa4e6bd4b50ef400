//! Where a node's machine configuration comes from, in order of precedence:
//! the kernel parameter `cairn.config=` (base64), then the QEMU fw_cfg entry
//! `opt/cairn/machine.yaml`; a hosted node reads the file given with `--config`.

use std::path::{Path, PathBuf};

use base64::Engine;
use cairn_api::{ConfigError, MachineConfig};
use tracing::warn;

use crate::cmdline::KernelCmdline;
use crate::sys::Syscalls;

/// The kernel parameter carrying a base64 machine config.
pub const CMDLINE_PARAM: &str = "cairn.config";
/// The fw_cfg entry name (`-fw_cfg name=opt/cairn/machine.yaml,file=…`).
pub const FW_CFG_NAME: &str = "opt/cairn/machine.yaml";
/// Where the `qemu_fw_cfg` driver exposes that entry.
pub const FW_CFG_PATH: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/cairn/machine.yaml/raw";

/// Where a config was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// `cairn.config=` on the kernel command line.
    KernelCmdline,
    /// QEMU fw_cfg.
    FwCfg,
    /// A file (hosted node).
    File(PathBuf),
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::KernelCmdline => write!(f, "kernel parameter {CMDLINE_PARAM}="),
            ConfigSource::FwCfg => write!(f, "fw_cfg {FW_CFG_NAME}"),
            ConfigSource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// Why no usable config was found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigSourceError {
    /// No source had a config.
    #[error(
        "no machine configuration found (looked at kernel parameter {CMDLINE_PARAM}= and fw_cfg {FW_CFG_NAME})"
    )]
    NotFound,
    /// `cairn.config=` is not base64.
    #[error("kernel parameter {CMDLINE_PARAM}= is not valid base64")]
    Base64(#[source] base64::DecodeError),
    /// A source could not be read.
    #[error("cannot read the machine configuration from {source_name}")]
    Read {
        /// The source.
        source_name: ConfigSource,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The document is not UTF-8 text.
    #[error("machine configuration from {0} is not UTF-8 text")]
    NotText(ConfigSource),
    /// The document was found but refused.
    #[error("machine configuration from {source_name} is invalid")]
    Invalid {
        /// The source.
        source_name: ConfigSource,
        /// Every problem.
        #[source]
        source: ConfigError,
    },
}

/// A config document and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawConfig {
    /// Its origin.
    pub source: ConfigSource,
    /// The YAML text.
    pub text: String,
}

impl RawConfig {
    /// Parses and validates the document.
    pub fn parse(&self) -> Result<MachineConfig, ConfigSourceError> {
        MachineConfig::from_yaml(&self.text).map_err(|source| ConfigSourceError::Invalid {
            source_name: self.source.clone(),
            source,
        })
    }
}

/// Finds the raw config of a PID 1 node (fw_cfg needs the `qemu_fw_cfg` module).
pub fn find_for_pid1(
    sys: &dyn Syscalls,
    cmdline: &KernelCmdline,
) -> Result<RawConfig, ConfigSourceError> {
    let from_fw_cfg = match sys.read(Path::new(FW_CFG_PATH)) {
        Ok(bytes) => Some(text(bytes, ConfigSource::FwCfg)?),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(ConfigSourceError::Read {
                source_name: ConfigSource::FwCfg,
                source,
            });
        }
    };
    if let Some(encoded) = cmdline.get(CMDLINE_PARAM) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(ConfigSourceError::Base64)?;
        if from_fw_cfg.is_some() {
            warn!("both {CMDLINE_PARAM}= and fw_cfg carry a config; using {CMDLINE_PARAM}=");
        }
        return Ok(RawConfig {
            source: ConfigSource::KernelCmdline,
            text: text(bytes, ConfigSource::KernelCmdline)?,
        });
    }
    from_fw_cfg
        .map(|text| RawConfig {
            source: ConfigSource::FwCfg,
            text,
        })
        .ok_or(ConfigSourceError::NotFound)
}

/// Reads the config file of a hosted node.
pub fn read_file(path: &Path) -> Result<RawConfig, ConfigSourceError> {
    let source = ConfigSource::File(path.to_owned());
    let bytes = std::fs::read(path).map_err(|err| ConfigSourceError::Read {
        source_name: source.clone(),
        source: err,
    })?;
    Ok(RawConfig {
        text: text(bytes, source.clone())?,
        source,
    })
}

fn text(bytes: Vec<u8>, source: ConfigSource) -> Result<String, ConfigSourceError> {
    String::from_utf8(bytes).map_err(|_| ConfigSourceError::NotText(source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::RecordingSyscalls;

    const DOC: &str =
        "apiVersion: cairn.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  type: worker\n";

    #[test]
    fn fw_cfg_entry_is_used_when_the_cmdline_has_none() {
        let sys = RecordingSyscalls::default().with_file(FW_CFG_PATH, DOC);
        let raw = find_for_pid1(&sys, &KernelCmdline::parse("console=ttyS0")).expect("found");
        assert_eq!(raw.source, ConfigSource::FwCfg);
        assert_eq!(raw.text, DOC);
    }

    #[test]
    fn cmdline_config_wins_over_fw_cfg() {
        let encoded = base64::engine::general_purpose::STANDARD.encode(DOC);
        let sys = RecordingSyscalls::default().with_file(FW_CFG_PATH, "garbage");
        let line = KernelCmdline::parse(&format!("{CMDLINE_PARAM}={encoded}"));
        let raw = find_for_pid1(&sys, &line).expect("found");
        assert_eq!(raw.source, ConfigSource::KernelCmdline);
        assert_eq!(raw.text, DOC);
    }

    #[test]
    fn missing_config_says_where_it_looked() {
        let err = find_for_pid1(&RecordingSyscalls::default(), &KernelCmdline::default())
            .expect_err("none");
        let text = err.to_string();
        assert!(
            text.contains(CMDLINE_PARAM) && text.contains(FW_CFG_NAME),
            "{text}"
        );
    }

    #[test]
    fn bad_base64_is_named() {
        let line = KernelCmdline::parse("cairn.config=%%%");
        let err = find_for_pid1(&RecordingSyscalls::default(), &line).expect_err("bad");
        assert!(matches!(err, ConfigSourceError::Base64(_)));
    }

    #[test]
    fn invalid_document_names_its_source_and_problem() {
        let sys = RecordingSyscalls::default().with_file(FW_CFG_PATH, "machine: [");
        let raw = find_for_pid1(&sys, &KernelCmdline::default()).expect("found");
        let err = raw.parse().expect_err("invalid");
        let chain = crate::error_chain(&err);
        assert!(
            chain.starts_with("machine configuration from fw_cfg"),
            "{chain}"
        );
    }
}
