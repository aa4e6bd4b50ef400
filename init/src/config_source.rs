//! Where a node's machine configuration comes from, in order of precedence:
//! the kernel parameter `cairn.config=` (base64 of the YAML, or of the YAML gzipped so
//! that a config with certificates fits the kernel's 2,048-byte command line), then the
//! QEMU fw_cfg entry
//! `opt/cairn/machine.yaml`; a hosted node reads the file given with `--config`.

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use cairn_api::{ConfigError, MachineConfig};
use tracing::warn;

use crate::cmdline::KernelCmdline;
use crate::sys::Syscalls;

/// The kernel parameter carrying a base64 machine config (plain or gzipped YAML).
pub const CMDLINE_PARAM: &str = "cairn.config";
/// The fw_cfg entry name (`-fw_cfg name=opt/cairn/machine.yaml,file=…`).
pub const FW_CFG_NAME: &str = "opt/cairn/machine.yaml";
/// The most a gzipped `cairn.config=` may inflate to: far beyond any machine config,
/// and small enough that a hostile one cannot exhaust PID 1's memory.
pub const MAX_INFLATED_CONFIG: u64 = 1 << 20;
/// The two bytes every gzip stream starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
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
    /// `cairn.config=` is gzip that does not inflate.
    #[error("kernel parameter {CMDLINE_PARAM}= is gzip that does not inflate")]
    Gzip(#[source] std::io::Error),
    /// `cairn.config=` inflates past [`MAX_INFLATED_CONFIG`].
    #[error("kernel parameter {CMDLINE_PARAM}= inflates to more than {MAX_INFLATED_CONFIG} bytes")]
    TooLarge,
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
        let bytes = inflate_if_gzip(bytes)?;
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

/// Inflates `bytes` if they are a gzip stream; anything else is returned as it is.
fn inflate_if_gzip(bytes: Vec<u8>) -> Result<Vec<u8>, ConfigSourceError> {
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(bytes);
    }
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(bytes.as_slice())
        .take(MAX_INFLATED_CONFIG + 1)
        .read_to_end(&mut inflated)
        .map_err(ConfigSourceError::Gzip)?;
    if inflated.len() as u64 > MAX_INFLATED_CONFIG {
        return Err(ConfigSourceError::TooLarge);
    }
    Ok(inflated)
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

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(bytes).expect("gzip into memory");
        encoder.finish().expect("gzip into memory")
    }

    #[test]
    fn gzipped_cmdline_config_is_inflated() {
        let encoded = base64::engine::general_purpose::STANDARD.encode(gzip(DOC.as_bytes()));
        let line = KernelCmdline::parse(&format!("{CMDLINE_PARAM}={encoded}"));
        let raw = find_for_pid1(&RecordingSyscalls::default(), &line).expect("found");
        assert_eq!(raw.text, DOC);
    }

    #[test]
    fn truncated_gzip_is_named() {
        let mut stream = gzip(DOC.as_bytes());
        stream.truncate(stream.len() / 2);
        let encoded = base64::engine::general_purpose::STANDARD.encode(stream);
        let line = KernelCmdline::parse(&format!("{CMDLINE_PARAM}={encoded}"));
        let err = find_for_pid1(&RecordingSyscalls::default(), &line).expect_err("truncated");
        assert!(matches!(err, ConfigSourceError::Gzip(_)), "{err}");
    }

    #[test]
    fn a_gzip_bomb_is_refused() {
        let bomb = vec![b' '; MAX_INFLATED_CONFIG as usize + 1];
        let encoded = base64::engine::general_purpose::STANDARD.encode(gzip(&bomb));
        let line = KernelCmdline::parse(&format!("{CMDLINE_PARAM}={encoded}"));
        let err = find_for_pid1(&RecordingSyscalls::default(), &line).expect_err("too large");
        assert!(matches!(err, ConfigSourceError::TooLarge), "{err}");
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
