//! Installing what the build and the tests need, so a fresh machine of this kind only
//! needs the repository: Debian packages through apt.

use std::process::Command;

use anyhow::{Context, bail};

/// Debian packages: QEMU, the kernel the image is built from, image tools, and the
/// C library libcontainer's seccomp support links statically.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-utils",
    "linux-image-amd64",
    "busybox-static",
    "cpio",
    "zstd",
    "grub-pc-bin",
    "xorriso",
    "mtools",
    "libseccomp-dev",
    "iproute2",
    // e2fsck checks the state partitions Cairn formats.
    "e2fsprogs",
    // A real DHCP server for the DHCP client's host test (no service, just the binary).
    "dnsmasq-base",
    // A real registry for the runtime's pull tests, and htpasswd for its basic auth.
    "docker-registry",
    "apache2-utils",
    // The CA bundle the image carries for registry pulls over HTTPS.
    "ca-certificates",
];

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs the missing Debian packages the build and tests need.
pub fn ensure() -> anyhow::Result<()> {
    ensure_packages(DEBIAN_PACKAGES)
}

/// Installs whichever of `packages` are missing (apt-get update first, once).
pub fn ensure_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let update = Command::new("apt-get")
        .args(["update", "-q"])
        .status()
        .context("running apt-get update")?;
    if !update.success() {
        bail!("apt-get update failed ({update})");
    }
    let install = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !install.success() {
        bail!("apt-get install {} failed ({install})", missing.join(" "));
    }
    Ok(())
}
