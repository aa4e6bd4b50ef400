//! The kernel installed on the build machine (`/boot/vmlinuz-<release>` plus
//! `/lib/modules/<release>`), and extracting its uncompressed `vmlinux`.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{ImageError, io_error};

/// xz stream magic; the bzImage carries its payload as one xz stream (`CONFIG_KERNEL_XZ`).
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const ELF_MAGIC: &[u8] = b"\x7fELF";

/// An installed kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKernel {
    /// `uname -r` of that kernel.
    pub release: String,
    /// Its compressed image.
    pub vmlinuz: PathBuf,
    /// `/lib/modules/<release>`.
    pub modules_dir: PathBuf,
}

impl HostKernel {
    /// The kernel of the given release, or the newest one that has modules installed.
    pub fn find(release: Option<&str>) -> Result<Self, ImageError> {
        Self::find_in(Path::new("/boot"), Path::new("/lib/modules"), release)
    }

    /// Like [`HostKernel::find`], under other directories (for tests).
    pub fn find_in(boot: &Path, modules: &Path, release: Option<&str>) -> Result<Self, ImageError> {
        let mut releases: Vec<String> = std::fs::read_dir(boot)
            .map_err(|e| ImageError::NoKernel(format!("cannot list {}: {e}", boot.display())))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("vmlinuz-"))
                    .map(str::to_owned)
            })
            .filter(|r| modules.join(r).join("modules.dep").is_file())
            .collect();
        releases.sort_by(|a, b| compare_releases(a, b));
        let chosen = match release {
            Some(wanted) => releases.into_iter().find(|r| r == wanted).ok_or_else(|| {
                ImageError::NoKernel(format!("release {wanted} has no vmlinuz and modules.dep"))
            })?,
            None => releases.pop().ok_or_else(|| {
                ImageError::NoKernel(format!(
                    "no {}/vmlinuz-* with {}/<release>/modules.dep",
                    boot.display(),
                    modules.display()
                ))
            })?,
        };
        Ok(Self {
            vmlinuz: boot.join(format!("vmlinuz-{chosen}")),
            modules_dir: modules.join(&chosen),
            release: chosen,
        })
    }

    /// Writes the uncompressed kernel to `out`, unless `out` is already newer than
    /// the `vmlinuz` it came from.
    pub fn extract_vmlinux_to(&self, out: &Path) -> Result<(), ImageError> {
        if is_newer(out, &self.vmlinuz) {
            return Ok(());
        }
        let compressed =
            std::fs::read(&self.vmlinuz).map_err(io_error("cannot read", &self.vmlinuz))?;
        let vmlinux = extract_vmlinux(&compressed).map_err(|reason| ImageError::Vmlinux {
            path: self.vmlinuz.clone(),
            reason,
        })?;
        let partial = out.with_extension("partial");
        std::fs::write(&partial, vmlinux).map_err(io_error("cannot write", &partial))?;
        std::fs::rename(&partial, out).map_err(io_error("cannot rename to", out))
    }
}

/// Orders releases like `6.1.0-9-amd64` < `6.1.0-56-amd64` (numbers compared as numbers).
fn compare_releases(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<Result<u64, &str>> {
        s.split(['.', '-'])
            .map(|p| p.parse::<u64>().map_err(|_| p))
            .collect()
    }
    parts(a).cmp(&parts(b))
}

fn is_newer(candidate: &Path, than: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(candidate), modified(than)) {
        (Some(c), Some(t)) => c >= t && std::fs::metadata(candidate).is_ok_and(|m| m.len() > 0),
        _ => false,
    }
}

/// Decompresses the payload of a bzImage to the ELF `vmlinux`. The payload's place
/// comes from the boot protocol header (`setup_sects`, `payload_offset`,
/// `payload_length`), so no guessing by magic numbers is needed.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, String> {
    let field = |at: usize, len: usize| {
        bzimage
            .get(at..at + len)
            .ok_or_else(|| format!("file too short for the boot header field at {at:#x}"))
    };
    if field(0x202, 4)? != b"HdrS" {
        return Err("no bzImage boot header (HdrS)".into());
    }
    let setup_sects = match field(0x1f1, 1)?[0] {
        0 => 4,
        n => usize::from(n),
    };
    let word = |at| -> Result<usize, String> {
        let bytes: [u8; 4] = field(at, 4)?
            .try_into()
            .map_err(|_| "short field".to_owned())?;
        Ok(u32::from_le_bytes(bytes) as usize)
    };
    let start = (setup_sects + 1) * 512 + word(0x248)?;
    let payload = bzimage
        .get(start..start + word(0x24c)?)
        .ok_or("payload lies outside the file")?;
    if !payload.starts_with(XZ_MAGIC) {
        return Err(
            "payload is not xz-compressed; is the kernel built with CONFIG_KERNEL_XZ?".into(),
        );
    }
    let mut output = Vec::new();
    liblzma::read::XzDecoder::new(payload)
        .read_to_end(&mut output)
        .map_err(|e| format!("xz payload does not decompress: {e}"))?;
    if !output.starts_with(ELF_MAGIC) {
        return Err("decompressed payload is not an ELF image".into());
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_compare_numerically() {
        let mut releases = vec!["6.1.0-56-amd64", "6.1.0-9-amd64", "6.10.0-1-amd64"];
        releases.sort_by(|a, b| compare_releases(a, b));
        assert_eq!(
            releases,
            ["6.1.0-9-amd64", "6.1.0-56-amd64", "6.10.0-1-amd64"]
        );
    }

    #[test]
    fn newest_kernel_with_modules_is_chosen() {
        let root = tempfile::tempdir().expect("tempdir");
        let boot = root.path().join("boot");
        let modules = root.path().join("modules");
        std::fs::create_dir_all(&boot).unwrap();
        for release in ["6.1.0-9-amd64", "6.1.0-56-amd64", "6.2.0-1-amd64"] {
            std::fs::write(boot.join(format!("vmlinuz-{release}")), b"").unwrap();
        }
        // 6.2 has no modules installed, so it is not usable.
        for release in ["6.1.0-9-amd64", "6.1.0-56-amd64"] {
            std::fs::create_dir_all(modules.join(release)).unwrap();
            std::fs::write(modules.join(release).join("modules.dep"), b"").unwrap();
        }
        let kernel = HostKernel::find_in(&boot, &modules, None).expect("found");
        assert_eq!(kernel.release, "6.1.0-56-amd64");
        let err =
            HostKernel::find_in(&boot, &modules, Some("6.2.0-1-amd64")).expect_err("no modules");
        assert!(err.to_string().contains("6.2.0-1-amd64"));
    }

    #[test]
    fn payload_is_found_through_the_boot_header() {
        let elf = b"\x7fELF and then some kernel".to_vec();
        let mut compressed = Vec::new();
        liblzma::read::XzEncoder::new(&elf[..], 6)
            .read_to_end(&mut compressed)
            .unwrap();
        let setup_sects = 2u8;
        let payload_offset = 16u32;
        let mut bzimage = vec![0u8; (usize::from(setup_sects) + 1) * 512 + payload_offset as usize];
        bzimage[0x1f1] = setup_sects;
        bzimage[0x202..0x206].copy_from_slice(b"HdrS");
        bzimage[0x248..0x24c].copy_from_slice(&payload_offset.to_le_bytes());
        bzimage[0x24c..0x250].copy_from_slice(&(compressed.len() as u32).to_le_bytes());
        bzimage.extend_from_slice(&compressed);
        bzimage.extend_from_slice(b"trailing setup data");
        assert_eq!(extract_vmlinux(&bzimage).expect("extracted"), elf);
        assert!(extract_vmlinux(b"no header here").is_err());
    }
}
