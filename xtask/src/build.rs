//! Building the static `cairn` binary and the image around it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use cairn_image::{ImageSpec, Manifest};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cargo target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    qemu_tests::target_dir()
}

/// Where `cargo xtask image` puts the artefacts.
pub fn image_dir() -> PathBuf {
    target_dir().join("cairn-image")
}

/// Variables `cargo run` sets for the program it runs (xtask), which a cargo started
/// from xtask would otherwise inherit. Some build scripts (ring's) declare
/// `rerun-if-env-changed` on `CARGO_MANIFEST_DIR` and `CARGO_PKG_*`, and cargo compares
/// its own environment: with xtask's values, ring and everything above it (rustls, kube,
/// every workspace crate) rebuilt whenever cargo alternated between a shell and xtask,
/// or the checkout moved.
const CARGO_RUN_VARIABLES: [&str; 7] = [
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "OUT_DIR",
];

/// A cargo command in the workspace, with the environment a shell would give it (see
/// [`CARGO_RUN_VARIABLES`]).
pub fn cargo_command() -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(workspace_root());
    for name in CARGO_RUN_VARIABLES {
        command.env_remove(name);
    }
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("CARGO_PKG_")) {
            command.env_remove(name);
        }
    }
    command
}

/// Runs cargo in the workspace with the given arguments; fails on a non-zero exit.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = cargo_command()
        .args(args)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Where the target's release binaries land.
fn release_dir() -> PathBuf {
    target_dir().join("x86_64-unknown-linux-gnu/release")
}

/// Builds the static release `cairn` and returns its path. The target and static
/// linking flags come from `.cargo/config.toml`.
pub fn cairn_binary() -> anyhow::Result<PathBuf> {
    cargo(&[
        "build",
        "--release",
        "--package",
        "cairn-init",
        "--bin",
        "cairn",
    ])?;
    built_cairn()
}

/// The `cairn` the last build left (checked to be static).
fn built_cairn() -> anyhow::Result<PathBuf> {
    let binary = release_dir().join("cairn");
    ensure_static(&binary)?;
    Ok(binary)
}

/// A copy of `binary` without its symbol tables, beside the image: a node has no
/// debugger to read them, and they are a quarter of the binary. Panic messages keep
/// their file and line; backtraces on a node lose function names.
fn stripped(binary: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(image_dir())
        .with_context(|| format!("creating {}", image_dir().display()))?;
    let out = image_dir().join("cairn.stripped");
    let status = Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&out)
        .arg(binary)
        .status()
        .context("running strip (Debian's binutils; cargo xtask deps installs it)")?;
    if !status.success() {
        bail!("strip --strip-all {} failed ({status})", binary.display());
    }
    Ok(out)
}

/// Refuses a dynamically linked `/init`: the kernel would fail to start it with an
/// unhelpful "No working init found".
fn ensure_static(binary: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    if has_interpreter(&bytes) {
        bail!(
            "{} is dynamically linked (has PT_INTERP); check the crt-static flags in .cargo/config.toml",
            binary.display()
        );
    }
    Ok(())
}

/// Whether a 64-bit little-endian ELF file has a `PT_INTERP` program header.
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8).map(|b| {
            let mut word = [0u8; 8];
            word.copy_from_slice(b);
            u64::from_le_bytes(word)
        })
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..usize::from(phnum)).any(|i| {
        let at = phoff as usize + i * usize::from(phentsize);
        u32_at(at) == Some(3) // PT_INTERP
    })
}

/// Builds the whole image and prints each artefact's size.
pub fn image(with_iso: bool) -> anyhow::Result<Manifest> {
    image_of(&cairn_binary()?, with_iso)
}

/// Builds the image around an already built `cairn` and prints each artefact's size.
fn image_of(built: &Path, with_iso: bool) -> anyhow::Result<Manifest> {
    let cairn = stripped(built)?;
    let spec = ImageSpec {
        cairn_binary: cairn.clone(),
        out_dir: image_dir(),
        kernel_release: std::env::var("CAIRN_KERNEL_RELEASE").ok(),
        with_iso,
        ca_bundle: cairn_image::HOST_CA_BUNDLE.into(),
    };
    let manifest = cairn_image::build(&spec).context("building the image")?;
    eprintln!(
        "xtask: image for kernel {} in {}",
        manifest.kernel_release,
        spec.out_dir.display()
    );
    let mut artefacts = vec![
        ("cairn (static, /init)", cairn),
        ("vmlinux (PVH)", manifest.vmlinux.clone()),
        ("vmlinuz", manifest.vmlinuz.clone()),
        ("initramfs.cpio.zst", manifest.initramfs.clone()),
    ];
    if let Some(iso) = &manifest.iso {
        artefacts.push(("cairn.iso", iso.clone()));
    }
    for (what, path) in artefacts {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!(
            "{what:<24} {:>8.2} MiB  {}",
            size as f64 / 1048576.0,
            path.display()
        );
    }
    println!("modules shipped: {}", manifest.modules.join(" "));
    Ok(manifest)
}

/// What drives a local cluster from the host (the demo, `bench cluster`): the release
/// `cairnctl` and the OCI test images it imports.
pub struct ClusterTools {
    /// The release `cairnctl`.
    pub cairnctl: PathBuf,
    /// The OCI test images (an OCI layout per image).
    pub images: PathBuf,
}

/// Builds the node image, the release `cairnctl` and the test image writer, and writes
/// the test images to `<target>/<images>`. One cargo run builds the three binaries, so
/// their dependencies are resolved, and built, once.
pub fn cluster_tools(images: &str) -> anyhow::Result<ClusterTools> {
    cargo(&[
        "build",
        "--release",
        "--package",
        "cairn-init",
        "--package",
        "cairnctl",
        "--package",
        "cairn-runtime",
        "--bin",
        "cairn",
        "--bin",
        "cairnctl",
        "--bin",
        "cairn-test-images",
    ])?;
    image_of(&built_cairn()?, false)?;
    let images = target_dir().join(images);
    checked(
        Command::new(release_dir().join("cairn-test-images")).arg(&images),
        "cairn-test-images",
    )?;
    Ok(ClusterTools {
        cairnctl: release_dir().join("cairnctl"),
        images,
    })
}

/// Runs `command` (called `what` in errors) and fails unless it exits with 0.
pub fn checked(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Builds the OCI test images (an OCI layout per image) under
/// `<target>/cairn-test-images/` and returns that directory. The writer is a binary of
/// the runtime's (it links libcontainer, which `cargo xtask` must not); it comes from
/// the workspace's test build ([`build_tests`]), which shares its artefacts instead of
/// building the stack again with another feature set.
pub fn test_images() -> anyhow::Result<PathBuf> {
    build_tests()?;
    let dir = target_dir().join("cairn-test-images");
    checked(
        Command::new(release_dir().join("cairn-test-images")).arg(&dir),
        "cairn-test-images (building the OCI test images)",
    )?;
    Ok(dir)
}

/// Builds every test binary of the workspace, QEMU scenarios included, and the
/// binaries of packages with integration tests (`cairn`, `cairn-test-images`), in one
/// cargo run. Each set of selected packages resolves features on its own, so a second
/// run for a subset (`--package qemu-tests`, `--bin cairn`) would build the
/// dependencies above the differing features, and the workspace, again.
pub fn build_tests() -> anyhow::Result<()> {
    cargo(&["test", "--release", "--workspace", "--no-run"])
}

/// The image around the `cairn` of the test build ([`build_tests`]): the binary the
/// host tests ran is the one the QEMU scenarios boot.
pub fn tested_image() -> anyhow::Result<Manifest> {
    image_of(&built_cairn()?, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_static_like_everything_built_for_the_target() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!has_interpreter(&me), "crt-static is not in effect");
        let dynamic = std::fs::read("/bin/sh").unwrap();
        assert!(has_interpreter(&dynamic));
    }
}
