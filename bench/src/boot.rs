//! `bench boot`: over N boots, medians of PID 1 start → ready (guest clock, with and
//! without module loading), kernel start → ready (guest clock), QEMU start → ready
//! (host clock), `cairn`'s RSS at ready and the initramfs size. The anchor is the
//! same kernel booting a busybox shell as init: the cost of booting before any
//! Cairn code runs.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use qemu_tests::{Cluster, Image, VmSpec, configs};

use xtask::{build, deps};

use crate::stats::median;

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

struct Sample {
    pid1_to_ready_ms: f64,
    pid1_to_ready_without_modules_ms: f64,
    modules_ms: f64,
    kernel_to_ready_s: f64,
    qemu_to_ready_s: f64,
    rss_kib: f64,
}

/// Runs the benchmark.
pub fn run(runs: usize) -> anyhow::Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    deps::ensure()?;
    let manifest = build::image(false)?;
    let image = Image::load(&build::image_dir())?;
    let anchor_initramfs = build::image_dir().join("anchor-initramfs.cpio.zst");
    cairn_image::build_anchor_initramfs(Path::new("/bin/busybox"), &anchor_initramfs)
        .context("building the busybox anchor (install busybox-static)")?;

    let mut samples = Vec::new();
    let mut anchors = Vec::new();
    for run in 1..=runs {
        // Interleave so drift on this shared machine hits both alike.
        samples.push(boot_cairn(&image, run)?);
        anchors.push(boot_anchor(&image, &anchor_initramfs, run)?);
        eprintln!("xtask: bench boot run {run}/{runs} done");
    }

    let median_of = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    let anchor_kernel = median(anchors.iter().map(|a| a.0).collect());
    let anchor_qemu = median(anchors.iter().map(|a| a.1).collect());
    let initramfs_mib = std::fs::metadata(&manifest.initramfs)?.len() as f64 / 1048576.0;
    let kernel_to_ready = median_of(&|s| s.kernel_to_ready_s);
    let qemu_to_ready = median_of(&|s| s.qemu_to_ready_s);
    let without_modules = median_of(&|s| s.pid1_to_ready_without_modules_ms);
    let rss_mib = median_of(&|s| s.rss_kib) / 1024.0;

    println!(
        "boot benchmark: {runs} boots each, medians (TCG, 1 vCPU, kernel {})",
        manifest.kernel_release
    );
    println!("{:<44} {:>10}  goal / anchor", "figure", "median");
    println!(
        "{:<44} {:>8.1}ms  goal ≤ 300 ms: {}",
        "PID 1 start → ready, without module loading",
        without_modules,
        verdict(without_modules <= 300.0)
    );
    println!(
        "{:<44} {:>8.1}ms",
        "  module loading (incl. driver probes)",
        median_of(&|s| s.modules_ms)
    );
    println!(
        "{:<44} {:>8.1}ms",
        "PID 1 start → ready, all",
        median_of(&|s| s.pid1_to_ready_ms)
    );
    println!(
        "{:<44} {:>9.2}s  anchor (busybox init) {:.2} s, ratio {:.2}",
        "kernel start → ready (guest clock)",
        kernel_to_ready,
        anchor_kernel,
        kernel_to_ready / anchor_kernel
    );
    println!(
        "{:<44} {:>9.2}s  anchor (busybox init) {:.2} s, ratio {:.2}",
        "QEMU start → ready (host clock)",
        qemu_to_ready,
        anchor_qemu,
        qemu_to_ready / anchor_qemu
    );
    println!(
        "{:<44} {:>8.1}MiB  goal ≤ 20 MiB: {}",
        "cairn RSS at ready",
        rss_mib,
        verdict(rss_mib <= 20.0)
    );
    println!(
        "{:<44} {:>8.2}MiB  budget ≤ 16 MiB: {}",
        "initramfs (zstd)",
        initramfs_mib,
        verdict(initramfs_mib <= 16.0)
    );
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

fn boot_cairn(image: &Image, run: usize) -> anyhow::Result<Sample> {
    let cluster = Cluster::with_image(
        "bench-boot",
        image.clone(),
        build::target_dir()
            .join("bench")
            .join(format!("boot-{run}")),
    )?;
    let config = configs::node(&configs::secrets(), "bench-1", "10.5.0.2/24", false, false);
    let vm = cluster.start(VmSpec::new("bench-1").config(&configs::yaml(&config)))?;
    let line = vm.wait_for(r"\bready elapsed_ms=", BOOT_TIMEOUT)?;
    let qemu_to_ready_s = vm.started().elapsed().as_secs_f64();
    Ok(Sample {
        pid1_to_ready_ms: field(&line, "elapsed_ms")?,
        pid1_to_ready_without_modules_ms: field(&line, "without_modules_ms")?,
        modules_ms: field(&line, "modules_ms")?,
        kernel_to_ready_s: console_uptime(&line)?,
        qemu_to_ready_s,
        rss_kib: field(&line, "rss_kib")?,
    })
}

/// Returns (kernel start → marker on the guest clock, QEMU start → marker on the host clock).
fn boot_anchor(image: &Image, initramfs: &Path, run: usize) -> anyhow::Result<(f64, f64)> {
    let mut anchor = image.clone();
    anchor.manifest.initramfs = initramfs.to_owned();
    let cluster = Cluster::with_image(
        "bench-anchor",
        anchor,
        build::target_dir()
            .join("bench")
            .join(format!("anchor-{run}")),
    )?;
    let vm = cluster.start(VmSpec::new("anchor"))?;
    let started = vm.started();
    let line = vm.wait_for(cairn_image::ANCHOR_MARKER, BOOT_TIMEOUT)?;
    let host = started.elapsed().as_secs_f64();
    Ok((field(&line, "uptime")?, host))
}

fn field(line: &str, name: &str) -> anyhow::Result<f64> {
    let pattern = regex::Regex::new(&format!(r"\b{name}=([0-9.]+)"))?;
    pattern
        .captures(line)
        .and_then(|c| c[1].parse().ok())
        .with_context(|| format!("no {name}= in {line:?}"))
}

/// The `[   12.345678]` timestamp that starts a console line (seconds since boot).
fn console_uptime(line: &str) -> anyhow::Result<f64> {
    let inner = line
        .trim_start()
        .strip_prefix('[')
        .and_then(|rest| rest.split(']').next())
        .with_context(|| format!("no timestamp in {line:?}"))?;
    inner
        .trim()
        .parse()
        .with_context(|| format!("bad timestamp in {line:?}"))
}
