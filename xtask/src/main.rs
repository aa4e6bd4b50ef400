//! `cargo xtask`: the project's recipes.
//!
//! - `image`: build the static `cairn` and the boot artefacts;
//! - `demo`: build the image and boot a local cluster under QEMU (the main job);
//! - `test`: install what is missing, then fmt, clippy and every test tier;
//! - `bench boot|store|runtime|net|api|scheduler|cluster`: boot timings, the store against
//!   etcd, the runtime against runc, the pod network against CNI, each with same-run
//!   anchors, the Kubernetes API server against its SLO and goals, and scheduling
//!   decisions against kube-scheduler's published throughput, pod startup and a
//!   worker's failover on a local cluster against the Kubernetes SLO and defaults;
//! - `store-faults`: the store's fault test with a longer schedule;
//! - `test-images`: OCI test images built without a network (busybox).

mod demo;
mod test;

use xtask::{build, deps};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Cairn's build, run and test recipes")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the static `cairn` binary, the vmlinux, the initramfs and the ISO.
    Image {
        /// Skip the ISO (faster; the ISO scenario then fails).
        #[arg(long)]
        no_iso: bool,
    },
    /// Build the image and `cairnctl`, boot a local Cairn cluster under QEMU (three
    /// control planes) and run a demo Deployment on it with kubectl.
    Demo {
        /// The cluster's name.
        #[arg(long, default_value = "demo")]
        name: String,
        /// Control-plane nodes.
        #[arg(long, default_value_t = 3)]
        control_planes: u8,
        /// Worker nodes besides the control planes.
        #[arg(long, default_value_t = 0)]
        workers: u8,
    },
    /// Install missing packages, then run fmt, clippy and every test tier.
    Test {
        /// Do not try to install missing packages.
        #[arg(long)]
        no_install: bool,
        /// Run only the tests whose name contains this, in every tier (a QEMU
        /// scenario's name picks it alone).
        #[arg(long)]
        filter: Option<String>,
    },
    /// Benchmarks (not tests): print figures against goals and same-run anchors.
    #[command(disable_help_flag = true)]
    Bench {
        /// The benchmark and its options (`cargo xtask bench --help` lists them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install the Debian packages the build and the tests need, and the venv with
    /// kubectl and the Python client.
    Deps,
    /// Build the OCI test images (busybox from `busybox-static`) under the target dir.
    TestImages,
    /// The store's multi-process fault test with a longer schedule.
    StoreFaults {
        /// Rounds of the nemesis schedule (about 30 s each).
        #[arg(long, default_value_t = 5)]
        rounds: u32,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Image { no_iso } => build::image(!no_iso).map(drop),
        Task::Demo {
            name,
            control_planes,
            workers,
        } => demo::run(&name, control_planes, workers),
        Task::Test { no_install, filter } => test::run(!no_install, filter.as_deref()),
        Task::Bench { args } => bench(&args),
        Task::Deps => deps::ensure().and_then(|()| {
            let venv = deps::ensure_python_clients()?;
            println!("kubectl and the Python client in {}", venv.display());
            Ok(())
        }),
        Task::TestImages => build::test_images().map(|dir| {
            println!("test images in {}", dir.display());
        }),
        Task::StoreFaults { rounds } => test::store_faults(rounds),
    }
}

/// Installs what the build needs, then runs `cairn-bench` (which installs its own
/// anchors' packages) with `args`.
fn bench(args: &[String]) -> anyhow::Result<()> {
    deps::ensure()?;
    let mut cargo = vec![
        "run",
        "--release",
        "--quiet",
        "--package",
        "cairn-bench",
        "--",
    ];
    cargo.extend(args.iter().map(String::as_str));
    build::cargo(&cargo)
}
