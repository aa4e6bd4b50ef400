//! `cargo xtask demo`: build the image and `cairnctl`, then boot a local Cairn cluster
//! under QEMU with `cairnctl cluster create` and show how to drive it.

use std::process::Command;

use anyhow::{Context, bail};

use crate::{build, deps};

/// Creates (or shows) the local cluster `name`.
pub fn run(name: &str, workers: u8) -> anyhow::Result<()> {
    deps::ensure()?;
    build::image(false)?;
    build::cargo(&["build", "--release", "--package", "cairnctl"])?;
    let cairnctl = build::target_dir().join("x86_64-unknown-linux-gnu/release/cairnctl");
    let image = build::image_dir();
    let cluster_dir = home().join(".cairn/clusters").join(name);
    if cluster_dir.exists() {
        eprintln!("xtask: cluster {name:?} exists already; showing its health");
    } else {
        let status = Command::new(&cairnctl)
            .args([
                "cluster",
                "create",
                "--name",
                name,
                "--workers",
                &workers.to_string(),
            ])
            .arg("--image-dir")
            .arg(&image)
            .status()
            .context("running cairnctl cluster create")?;
        if !status.success() {
            bail!("cairnctl cluster create failed ({status})");
        }
    }
    let status = Command::new(&cairnctl)
        .args(["--context", name, "health"])
        .status()
        .context("running cairnctl health")?;
    if !status.success() {
        bail!("cairnctl health failed ({status})");
    }
    let ctl = cairnctl.display();
    println!(
        "\nThe cluster runs in the background. Drive it with cairnctl ({ctl}), e.g.:\n\
         \x20 {ctl} --context {name} services\n\
         \x20 {ctl} --context {name} logs machine-api\n\
         \x20 {ctl} --context {name} dmesg\n\
         \x20 {ctl} --context {name} get machineconfig > node.yaml   # edit, then:\n\
         \x20 {ctl} --context {name} apply-config -f node.yaml --mode try\n\
         Remove it with:\n\
         \x20 {ctl} cluster destroy --name {name}"
    );
    Ok(())
}

fn home() -> std::path::PathBuf {
    std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/root"))
}
