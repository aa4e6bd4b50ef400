//! `cargo xtask test`: the whole suite, as CI runs it, in tiers:
//! lint gates, unit and in-process tests, host tests (root: namespaces, netlink,
//! processes), then the image and the QEMU scenarios.

use crate::{build, deps};

/// Runs the lint gates, then every test tier in one cargo run (see
/// [`build::build_tests`] for why one); `filter` keeps only the tests whose name
/// contains it, in every tier.
pub fn run(install: bool, filter: Option<&str>) -> anyhow::Result<()> {
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
    // Every test binary, and the OCI images the runtime and QEMU tiers import.
    build::test_images()?;
    build::tested_image()?;
    // Packages run in name order: unit, in-process and host tests of the `cairn-*`
    // crates, then `qemu-tests`. `--include-ignored` runs the tests marked as needing
    // root, kubectl or QEMU, which this recipe provides.
    let mut args = vec![
        "test",
        "--release",
        "--no-fail-fast",
        "--workspace",
        "--",
        "--include-ignored",
        // Two booting VMs keep both cores busy; more only slows each down. (It is also
        // the default of the other tiers on CI's two cores.)
        "--test-threads=2",
    ];
    if let Some(filter) = filter {
        args.push(filter);
    }
    build::cargo(&args)?;
    eprintln!("xtask: all test tiers passed");
    Ok(())
}

/// Runs the store's multi-process fault test for `rounds` rounds of its schedule.
pub fn store_faults(rounds: u32) -> anyhow::Result<()> {
    let status = build::cargo_command()
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
        .status()?;
    if !status.success() {
        anyhow::bail!("the store fault test failed ({status})");
    }
    Ok(())
}
