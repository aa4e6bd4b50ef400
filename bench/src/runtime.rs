//! `bench runtime`: create + start + wait + delete of `busybox true` on one OCI bundle,
//! alternating Cairn's path (a `cairn-shim`: overlay root, libcontainer create and
//! start, reap, delete, unmount) with `runc run` and `crun run` on the same bundle
//! (they get a plain directory root, no overlay: the comparison is conservative), and
//! pod start through the `Runtime` API (sandbox namespaces, volumes, container
//! running). Medians, and ratios against the same-run anchors and the goals.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_runtime::container::{Instance, ShimProgram};
use cairn_runtime::images::ImageStore;
use cairn_runtime::layer::{UnpackOptions, unpack};
use cairn_runtime::plan::PodIdentity;
use cairn_runtime::rootfs::OverlayRoot;
use cairn_runtime::runtime::{PodRequest, Runtime, RuntimeConfig};
use cairn_runtime::shim::{ShimConfig, ShimStatus};
use cairn_runtime::spec::{ContainerPlan, Resources, SeccompProfile, SharedNamespaces};
use cairn_runtime::test_images::{BUSYBOX_IMAGE, write_busybox_layout};
use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType, Spec};

use crate::stats::percentile;
use xtask::{build, deps};

/// The cgroup every measured container uses (one at a time).
const CGROUP: &str = "/cairn-bench/c";

fn median(values: &[f64]) -> f64 {
    crate::stats::median(values.to_vec())
}

/// The spec of the bundle: Cairn's secure defaults, with namespaces of its own (no
/// pod sandbox), running `true`.
fn bench_spec(rootfs: PathBuf) -> anyhow::Result<Spec> {
    let plan = ContainerPlan {
        args: vec!["/bin/true".into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        additional_gids: vec![],
        hostname: "bench".into(),
        namespaces: SharedNamespaces {
            net: None,
            ipc: None,
            uts: None,
        },
        cgroup: CGROUP.into(),
        resources: Resources {
            memory_bytes: Some(64 << 20),
            pids: Some(64),
            ..Resources::default()
        },
        readonly_root: false,
        privileged: false,
        add_capabilities: vec![],
        drop_capabilities: vec![],
        drop_all_capabilities: false,
        no_new_privileges: true,
        seccomp: SeccompProfile::RuntimeDefault,
        mounts: vec![],
        oom_score_adj: None,
        cgroup_namespace: false,
    };
    let mut spec = plan.oci_spec(rootfs)?;
    spec.set_hostname(Some("bench".into()));
    if let Some(linux) = spec.linux_mut() {
        let mut namespaces = linux.namespaces().clone().unwrap_or_default();
        for typ in [
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
        ] {
            namespaces.push(LinuxNamespaceBuilder::default().typ(typ).build()?);
        }
        linux.set_namespaces(Some(namespaces));
    }
    Ok(spec)
}

/// `runc`/`crun run` of the bundle, once; the error says why it failed.
fn run_oci(binary: &str, state: &Path, bundle: &Path, id: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let output = Command::new(binary)
        .arg("--root")
        .arg(state)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {binary}"))?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!(
            "{binary} run failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(elapsed)
}

/// One container through a Cairn shim, from start to its directory removed.
async fn run_cairn(
    shim: &ShimProgram,
    base: &Path,
    rootfs: &Path,
    state: &Path,
    n: usize,
) -> anyhow::Result<CairnRun> {
    let dir = base.join(format!("c{n}"));
    let bundle = dir.join("bundle");
    let config = ShimConfig {
        id: format!("bench-{n}"),
        bundle: bundle.clone(),
        state_root: state.to_owned(),
        log: dir.join("0.log"),
        rootfs: OverlayRoot {
            lowers: vec![rootfs.to_owned()],
            upper: dir.join("upper"),
            work: dir.join("work"),
            target: bundle.join("rootfs"),
        },
        cgroup: CGROUP.into(),
        no_pivot: false,
    };
    let spec = bench_spec(config.rootfs.target.clone())?;
    let started = Instant::now();
    let instance = Instance::at(&dir);
    instance.prepare(&config, &spec)?;
    let status = instance
        .start(shim, &cairn_runtime::process::DirectSpawner)
        .await?;
    let running = started.elapsed();
    if let ShimStatus::Failed { message } = status {
        bail!("the shim failed: {message}");
    }
    let ended = instance.wait().await?;
    let exited = started.elapsed();
    instance.remove().await?;
    let total = started.elapsed();
    match ended {
        ShimStatus::Exited { exit_code: 0, .. } => Ok(CairnRun {
            total_ms: total.as_secs_f64() * 1e3,
            start_ms: running.as_secs_f64() * 1e3,
            exit_ms: (exited - running).as_secs_f64() * 1e3,
            remove_ms: (total - exited).as_secs_f64() * 1e3,
        }),
        other => bail!("`true` did not succeed: {other:?}"),
    }
}

/// Where one Cairn run spent its time.
struct CairnRun {
    total_ms: f64,
    /// Files written, shim started, root mounted, container created and started.
    start_ms: f64,
    /// From running to its exit recorded (reaped, logs drained, deleted, unmounted).
    exit_ms: f64,
    /// The shim's end awaited and the directory removed.
    remove_ms: f64,
}

/// Runs the benchmark.
pub fn run(runs: usize) -> anyhow::Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    deps::ensure()?;
    deps::ensure_packages(&["runc", "crun"])?;
    build::cargo(&[
        "build",
        "--release",
        "--package",
        "cairn-runtime",
        "--bin",
        "cairn-shim",
    ])?;
    let shim = ShimProgram {
        program: build::target_dir().join("x86_64-unknown-linux-gnu/release/cairn-shim"),
        args: vec![],
    };
    let work = tempfile::Builder::new()
        .prefix("cairn-bench-runtime-")
        .tempdir_in("/var/tmp")?;
    let layout = work.path().join("busybox");
    write_busybox_layout(Path::new("/bin/busybox"), &layout)?;
    let images = ImageStore::open(&work.path().join("images"))?;
    images.import(&layout)?;
    let image = images
        .get(BUSYBOX_IMAGE)
        .context("the busybox image was not imported")?;
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    for layer in &image.layers {
        unpack(
            images.blobs().open_blob(layer)?,
            &rootfs,
            &UnpackOptions::default(),
        )?;
    }
    let bundle = work.path().join("bundle");
    std::fs::create_dir_all(&bundle)?;
    bench_spec(rootfs.clone())?.save(bundle.join("config.json"))?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    // crun only where this host's cgroups allow it: try once.
    let crun_state = work.path().join("crun");
    let crun = match run_oci("crun", &crun_state, &bundle, "probe") {
        Ok(_) => Ok(()),
        Err(err) => Err(err.to_string()),
    };
    let runc_state = work.path().join("runc");
    let cairn_state = work.path().join("libcontainer");
    let cairn_dirs = work.path().join("cairn");
    let (mut runc_ms, mut crun_ms, mut cairn_runs) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..runs {
        // Alternate who goes first so no one always runs on a warm cache.
        for turn in 0..3 {
            match (n + turn) % 3 {
                0 => runc_ms.push(
                    run_oci("runc", &runc_state, &bundle, &format!("runc-{n}"))?.as_secs_f64()
                        * 1e3,
                ),
                1 if crun.is_ok() => crun_ms.push(
                    run_oci("crun", &crun_state, &bundle, &format!("crun-{n}"))?.as_secs_f64()
                        * 1e3,
                ),
                1 => {}
                _ => cairn_runs.push(tokio.block_on(run_cairn(
                    &shim,
                    &cairn_dirs,
                    &rootfs,
                    &cairn_state,
                    n,
                ))?),
            }
        }
    }

    // Pod start through the Runtime API: sandbox, volumes, container running.
    let pod_ms = tokio.block_on(pod_starts(&shim, work.path(), &layout, runs))?;
    let _ = cairn_runtime::cgroups::CgroupLayout::detect().remove_tree("/cairn-bench");

    let part = |f: fn(&CairnRun) -> f64| median(&cairn_runs.iter().map(f).collect::<Vec<_>>());
    let (runc, cairn) = (median(&runc_ms), part(|r| r.total_ms));
    println!(
        "runtime: create + start + wait + delete of `busybox true`, {runs} runs each, alternating"
    );
    println!("{:<52} {:>9}  ratio (goal)", "figure", "median");
    println!("{:<52} {:>6.1} ms  anchor", "runc run", runc);
    match &crun {
        Ok(()) => println!("{:<52} {:>6.1} ms  anchor", "crun run", median(&crun_ms)),
        Err(reason) => println!("{:<52} {:>9}  not measured: {reason}", "crun run", "-"),
    }
    let mut versus = format!("{:.2}x runc (<= 0.5x)", cairn / runc);
    if crun.is_ok() {
        versus.push_str(&format!(
            ", {:.2}x crun (<= 1.0x)",
            cairn / median(&crun_ms)
        ));
    }
    println!(
        "{:<52} {:>6.1} ms  {versus}",
        "cairn shim (overlay + libcontainer + reap + delete)", cairn
    );
    println!(
        "{:<52} {:>6.1} ms  start {:.1} + run to exit {:.1} + removal {:.1}",
        "  of which",
        cairn,
        part(|r| r.start_ms),
        part(|r| r.exit_ms),
        part(|r| r.remove_ms)
    );
    println!(
        "{:<52} {:>6.1} ms  p99 {:.1} ms (Kubernetes SLO: p99 <= 5 s)",
        "pod start (sandbox + container running)",
        median(&pod_ms),
        percentile(&pod_ms, 99.0)
    );
    Ok(())
}

/// Times `runs` pod starts (request → container running), removing each pod after.
async fn pod_starts(
    shim: &ShimProgram,
    work: &Path,
    layout: &Path,
    runs: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut config = RuntimeConfig::new(
        &work.join("node"),
        &work.join("node-logs"),
        shim.clone(),
        "bench",
    );
    config.cgroup_parent = "/cairn-bench".into();
    let runtime = Runtime::open(config)?;
    runtime.images().import(layout)?;
    let spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(serde_json::json!({
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "main", "image": BUSYBOX_IMAGE, "command": ["sleep", "3600"],
            "resources": {"limits": {"memory": "32Mi"}}}]
    }))?;
    let mut times = Vec::new();
    for n in 0..runs {
        let uid = format!("bench-{n}");
        let started = Instant::now();
        runtime.ensure_pod(PodRequest {
            identity: PodIdentity {
                namespace: "default".into(),
                name: format!("bench-{n}"),
                uid: uid.clone(),
            },
            spec: spec.clone(),
            ..PodRequest::default()
        })?;
        loop {
            let status = runtime.pod_status(&uid).context("the pod vanished")?;
            let main = &status.container_statuses[0];
            if main.state.as_ref().is_some_and(|s| s.running.is_some()) {
                break;
            }
            if let Some(waiting) = main.state.as_ref().and_then(|s| s.waiting.as_ref())
                && waiting.reason.as_deref() != Some("ContainerCreating")
            {
                bail!("the pod did not start: {waiting:?}");
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "the pod did not start within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        times.push(started.elapsed().as_secs_f64() * 1e3);
        runtime.remove_pod(&uid).await?;
    }
    Ok(times)
}
