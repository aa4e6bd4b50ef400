//! `manifest.json`: what an image build produced, read back by the QEMU harness.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{ImageError, io_error};

/// The file name of the manifest inside an image directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The artefacts of one image build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `uname -r` of the kernel inside.
    pub kernel_release: String,
    /// The kernel command line the image is meant to boot with.
    pub cmdline: String,
    /// Uncompressed PVH kernel, for `qemu -kernel`.
    pub vmlinux: PathBuf,
    /// The distribution's compressed kernel, for GRUB.
    pub vmlinuz: PathBuf,
    /// The zstd cpio initramfs.
    pub initramfs: PathBuf,
    /// The BIOS-bootable ISO, if built.
    pub iso: Option<PathBuf>,
    /// The modules shipped, in load order of nothing in particular (sorted).
    pub modules: Vec<String>,
}

impl Manifest {
    /// Writes `dir/manifest.json`.
    pub fn write(&self, dir: &Path) -> Result<(), ImageError> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|source| ImageError::Manifest {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, text).map_err(io_error("cannot write", &path))
    }

    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self, ImageError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(io_error("cannot read", &path))?;
        serde_json::from_str(&text).map_err(|source| ImageError::Manifest { path, source })
    }
}
