//! Builds Cairn's boot artefacts from the Debian kernel installed on the build machine:
//!
//! - the uncompressed PVH `vmlinux` (QEMU boots it directly, skipping firmware and
//!   decompression) and the original `vmlinuz` (for GRUB);
//! - the initramfs: a zstd-compressed cpio (newc) with `/init` = `cairn`, the kernel
//!   modules the node needs with their dependency closure, and a matching index;
//! - a BIOS-bootable ISO made by `grub-mkrescue`, carrying the same kernel and initramfs.
//!
//! [`build`] does all of it and writes a `manifest.json` that the QEMU harness and
//! `cargo xtask` read. This crate builds files; it never boots anything.

#![forbid(unsafe_code)]

pub mod cpio_archive;
pub mod iso;
pub mod kernel;
pub mod manifest;
pub mod modules;

use std::path::{Path, PathBuf};

pub use manifest::Manifest;

/// The modules every node loads at boot; their dependencies come along.
pub const NODE_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "qemu_fw_cfg",
    "veth",
    "bridge",
    "br_netfilter",
    // Bonds and VLANs from machine.network.
    "bonding",
    "8021q",
    "overlay",
    "nf_tables",
    // The pod network's masquerade (nf_nat and conntrack come along).
    "nft_chain_nat",
    "nft_masq",
    // The state partition on the install disk.
    "ext4",
    // The ACPI power button and the event interface PID 1 reads it through.
    "button",
    "evdev",
];

/// The kernel command line for a direct (`-kernel`) boot and for the ISO.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 quiet";

/// The largest initramfs we accept (the budget).
pub const INITRAMFS_BUDGET: u64 = 16 * 1024 * 1024;

/// Everything that can go wrong while building the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file could not be read or written.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done ("cannot read").
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA bundle is missing.
    #[error("no CA bundle at {} (install ca-certificates)", .0.display())]
    NoCaBundle(PathBuf),
    /// No installed kernel has both a `vmlinuz` and a module directory.
    #[error("no usable kernel: {0} (install linux-image-amd64)")]
    NoKernel(String),
    /// The `vmlinuz` has no xz payload that decompresses to an ELF image.
    #[error("cannot extract vmlinux from {}: {reason}", path.display())]
    Vmlinux {
        /// The `vmlinuz`.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// A wanted module is not in the kernel's `modules.dep`.
    #[error("kernel {release} has no module {name:?} (built in, or misspelt)")]
    UnknownModule {
        /// The kernel release.
        release: String,
        /// The module.
        name: String,
    },
    /// A compressed module could not be decompressed.
    #[error("cannot decompress module {}", path.display())]
    ModuleDecompress {
        /// The module file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The initramfs grew over [`INITRAMFS_BUDGET`].
    #[error("initramfs is {size} bytes, over the {budget} byte budget")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The budget.
        budget: u64,
    },
    /// A build tool (grub-mkrescue) failed or is missing.
    #[error("{tool} failed: {detail}")]
    Tool {
        /// The tool.
        tool: &'static str,
        /// Its exit status and stderr, or why it could not start.
        detail: String,
    },
    /// The manifest could not be (de)serialised.
    #[error("manifest {}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Shorthand for an I/O error on a path.
pub(crate) fn io_error(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_owned();
    move |source| ImageError::Io {
        action,
        path,
        source,
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The static `cairn` binary that becomes `/init`.
    pub cairn_binary: PathBuf,
    /// Where the artefacts go.
    pub out_dir: PathBuf,
    /// A kernel release to use instead of the newest installed one.
    pub kernel_release: Option<String>,
    /// Whether to build the ISO too (needs grub-mkrescue, xorriso).
    pub with_iso: bool,
    /// The CA certificates (PEM) the node trusts for registry pulls over HTTPS,
    /// placed where TLS clients look on Debian (`/etc/ssl/certs/ca-certificates.crt`).
    pub ca_bundle: PathBuf,
}

/// Where Debian's `ca-certificates` keeps its bundle (the usual [`ImageSpec::ca_bundle`]).
pub const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Builds every artefact and writes the manifest.
pub fn build(spec: &ImageSpec) -> Result<Manifest, ImageError> {
    std::fs::create_dir_all(&spec.out_dir).map_err(io_error("cannot create", &spec.out_dir))?;
    let kernel = kernel::HostKernel::find(spec.kernel_release.as_deref())?;

    let vmlinux = spec.out_dir.join("vmlinux");
    kernel.extract_vmlinux_to(&vmlinux)?;
    let vmlinuz = spec.out_dir.join("vmlinuz");
    std::fs::copy(&kernel.vmlinuz, &vmlinuz).map_err(io_error("cannot copy", &kernel.vmlinuz))?;

    let module_set = modules::ModuleSet::closure(&kernel, NODE_MODULES)?;
    let mut archive = cpio_archive::Archive::default();
    for dir in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "etc",
        "var",
        "var/lib",
        "var/lib/cairn",
    ] {
        archive.dir(dir, 0o755);
    }
    archive.char_device("dev/console", 0o600, 5, 1);
    archive.char_device("dev/null", 0o666, 1, 3);
    let cairn =
        std::fs::read(&spec.cairn_binary).map_err(io_error("cannot read", &spec.cairn_binary))?;
    archive.file("init", 0o755, cairn);
    if !spec.ca_bundle.is_file() {
        return Err(ImageError::NoCaBundle(spec.ca_bundle.clone()));
    }
    let ca_bundle =
        std::fs::read(&spec.ca_bundle).map_err(io_error("cannot read", &spec.ca_bundle))?;
    archive.file("etc/ssl/certs/ca-certificates.crt", 0o644, ca_bundle);
    module_set.add_to(&mut archive)?;

    let initramfs = spec.out_dir.join("initramfs.cpio.zst");
    let initramfs_size = archive.write_zstd(&initramfs)?;
    if initramfs_size > INITRAMFS_BUDGET {
        return Err(ImageError::TooLarge {
            size: initramfs_size,
            budget: INITRAMFS_BUDGET,
        });
    }

    let iso = if spec.with_iso {
        let iso = spec.out_dir.join("cairn.iso");
        iso::build(&vmlinuz, &initramfs, KERNEL_CMDLINE, &iso)?;
        Some(iso)
    } else {
        None
    };

    let manifest = Manifest {
        kernel_release: kernel.release.clone(),
        cmdline: KERNEL_CMDLINE.to_owned(),
        vmlinux,
        vmlinuz,
        initramfs,
        iso,
        modules: module_set.names(),
    };
    manifest.write(&spec.out_dir)?;
    Ok(manifest)
}

/// The marker the anchor initramfs prints once its shell runs as init.
pub const ANCHOR_MARKER: &str = "anchor-ready";

/// Builds the benchmark anchor: the same kernel with a trivial init (busybox `sh`) that
/// prints [`ANCHOR_MARKER`] with the kernel's uptime and powers off. It measures what
/// booting costs before any Cairn code runs.
pub fn build_anchor_initramfs(busybox: &Path, out: &Path) -> Result<u64, ImageError> {
    let mut archive = cpio_archive::Archive::default();
    for dir in ["dev", "proc", "sys", "bin"] {
        archive.dir(dir, 0o755);
    }
    archive.char_device("dev/console", 0o600, 5, 1);
    let busybox_bytes = std::fs::read(busybox).map_err(io_error("cannot read", busybox))?;
    archive.file("bin/busybox", 0o755, busybox_bytes);
    archive.symlink("bin/sh", "busybox");
    let script = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         read up idle < /proc/uptime\n\
         echo \"{ANCHOR_MARKER} uptime=$up\"\n\
         /bin/busybox poweroff -f\n"
    );
    archive.file("init", 0o755, script.into_bytes());
    archive.write_zstd(out)
}
