//! `cairn-bench`: Cairn's benchmarks, run by `cargo xtask bench …` once the build's
//! and the benchmarks' dependencies are installed. Not tests: each prints figures next
//! to its goals and next to an anchor measured in the same run on the same machine,
//! and never fails on a number.
//!
//! A binary of its own (not part of `xtask`) because it links the node's libraries
//! (libcontainer, which needs `libseccomp-dev` to build): `cargo xtask` itself has to
//! build on a fresh machine before it has installed anything.

mod api;
mod boot;
mod cluster;
mod net;
mod runtime;
mod scheduler;
mod stats;
mod store;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask bench",
    about = "Cairn's benchmarks, with same-run anchors"
)]
struct Cli {
    #[command(subcommand)]
    which: Which,
}

/// Which benchmark.
#[derive(Subcommand)]
enum Which {
    /// Boot timings and footprint of one node.
    Boot {
        /// Boots per figure.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Container create/start/wait/delete against runc and crun, and pod start.
    Runtime {
        /// Runs per runtime.
        #[arg(long, default_value_t = 30)]
        runs: usize,
    },
    /// Pod startup latency and a worker's power-cut failover on a local cluster of one
    /// control plane and two workers under QEMU.
    Cluster {
        /// Pods to start.
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// Pods created per second.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        /// Measure pod startup on this running cluster (its kubeconfig) instead of
        /// making one; the failover part, which cuts a worker's power, is skipped. The
        /// busybox test image must be imported on its nodes.
        #[arg(long)]
        kubeconfig: Option<std::path::PathBuf>,
        /// `cluster.nodeLifecycle.gracePeriodSeconds` of the cluster made (default: the
        /// machine config's 10 s).
        #[arg(long)]
        node_grace: Option<u64>,
        /// `cluster.nodeLifecycle.evictionSeconds` of the cluster made (default: the
        /// machine config's 10 s).
        #[arg(long)]
        eviction: Option<u64>,
    },
    /// Pod network attach + detach against the CNI bridge + host-local plugins.
    Net {
        /// Attach + detach cycles per side.
        #[arg(long, default_value_t = 200)]
        runs: usize,
    },
    /// The Kubernetes API server: creates, a full list and watch fan-out.
    Api {
        /// Pods to create.
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        /// Concurrent writers.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Concurrent watchers.
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        /// Creates every watcher must see.
        #[arg(long, default_value_t = 200)]
        events: usize,
    },
    /// Scheduling decisions for many pods over many simulated nodes.
    Scheduler {
        /// Simulated nodes.
        #[arg(long, default_value_t = 5_000)]
        nodes: usize,
        /// Pods to place.
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        /// Rounds (the median is printed).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// The replicated store against etcd 3.4 under the same load.
    Store {
        /// Seconds per phase.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().which {
        Which::Boot { runs } => boot::run(runs),
        Which::Store { seconds } => store::run(seconds),
        Which::Runtime { runs } => runtime::run(runs),
        Which::Net { runs } => net::run(runs),
        Which::Cluster {
            pods,
            rate,
            kubeconfig,
            node_grace,
            eviction,
        } => cluster::run(cluster::ClusterLoad {
            pods,
            rate,
            existing: kubeconfig,
            node_grace,
            eviction,
        }),
        Which::Scheduler {
            nodes,
            pods,
            rounds,
        } => scheduler::run(nodes, pods, rounds),
        Which::Api {
            pods,
            clients,
            watchers,
            events,
        } => api::run(api::ApiLoad {
            pods,
            clients,
            watchers,
            events,
        }),
    }
}
