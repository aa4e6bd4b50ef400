//! `cargo xtask test`: the whole suite, as CI runs it, in tiers:
//! lint gates, unit and in-process tests, host tests (root: namespaces, netlink,
//! processes), then the image and the QEMU scenarios.

use crate::{build, deps};

/// Runs every tier; the first failing tier stops the run.
pub fn run(install: bool, qemu_filter: Option<&str>) -> anyhow::Result<()> {
    if install {
        deps::ensure()?;
        deps::ensure_python_clients()?;
    }
    build::cargo(&["fmt", "--all", "--", "--check"])?;
    build::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    build::test_images()?;
    // Unit, in-process and host tests; `--include-ignored` runs the ones marked as
    // needing root, which this recipe has.
    build::cargo(&[
        "test",
        "--release",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        "qemu-tests",
        "--",
        "--include-ignored",
    ])?;
    build::image(true)?;
    let mut qemu = vec![
        "test",
        "--release",
        "--no-fail-fast",
        "--package",
        "qemu-tests",
        "--",
        "--include-ignored",
        // Two booting VMs keep both cores busy; more only slows each down.
        "--test-threads=2",
    ];
    if let Some(filter) = qemu_filter {
        qemu.push(filter);
    }
    build::cargo(&qemu)?;
    eprintln!("xtask: all test tiers passed");
    Ok(())
}

/// Runs the store's multi-process fault test for `rounds` rounds of its schedule.
pub fn store_faults(rounds: u32) -> anyhow::Result<()> {
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "test",
                "--release",
                "--package",
                "cairn-store",
                "--test",
                "fault",
                "--",
                "--nocapture",
            ])
            .env("CAIRN_STORE_FAULT_ROUNDS", rounds.to_string())
            .current_dir(build::workspace_root())
            .status()?;
    if !status.success() {
        anyhow::bail!("the store fault test failed ({status})");
    }
    Ok(())
}
