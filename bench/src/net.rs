//! `bench net`: attaching a pod to the node's pod network and detaching it again
//! (veth pair on a bridge, the pod's address from IPAM, its default route, then all of
//! it removed), Cairn's `PodNetwork` against the CNI `bridge` + `host-local` plugins
//! (Debian's `containernetworking-plugins`) doing the same job, alternating, in one
//! run. Everything happens in network namespaces the benchmark creates: a node
//! namespace with each side's bridge, and one pod namespace both attach to.
//!
//! CNI runs with `ipMasq: false` (its per-pod iptables rules would only add to its
//! time; Cairn's masquerade is one rule per node, written at start) and its IPAM
//! state in a directory next to Cairn's, on the same filesystem.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use cairn_net::netns::NetNamespace;
use cairn_net::pod_network::{PodNetwork, PodNetworkConfig};

use crate::stats::{median, percentile};
use xtask::deps;

/// How many pod namespaces the cycles take turns with.
const POD_NAMESPACES: usize = 32;

/// Where Debian installs the CNI plugins.
const CNI_PATH: &str = "/usr/lib/cni";

/// The CNI network configuration equivalent to Cairn's pod network.
fn cni_config(ipam_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.245.0.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": ipam_dir,
        }
    })
    .to_string()
}

/// Runs the `bridge` plugin once (`ADD` or `DEL`) for `container` in `netns`.
fn cni(command: &str, container: &str, netns: &Path, config: &str) -> anyhow::Result<()> {
    let mut child = Command::new(Path::new(CNI_PATH).join("bridge"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running the CNI bridge plugin")?;
    child
        .stdin
        .take()
        .context("the plugin's stdin")?
        .write_all(config.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "CNI {command} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs the benchmark.
pub fn run(runs: usize) -> anyhow::Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    deps::ensure_packages(&["containernetworking-plugins"])?;
    let work = tempfile::Builder::new()
        .prefix("cairn-bench-net-")
        .tempdir_in("/var/tmp")?;
    let node = NetNamespace::create()?;
    // Each pod has a namespace of its own, as on a node; a few dozen are reused in turn.
    let pods = (0..runs.min(POD_NAMESPACES))
        .map(|_| NetNamespace::create())
        .collect::<Result<Vec<_>, _>>()?;
    let pod_path = |n: usize| pods[n % pods.len()].path();
    let config = PodNetworkConfig {
        bridge: "cairn0".into(),
        pod_cidr: "10.244.0.0/24".parse()?,
        cluster_cidr: "10.244.0.0/16".parse()?,
        mtu: None,
        ipam_state: work.path().join("cairn-ipam.json"),
    };
    let cni_config = cni_config(&work.path().join("cni-ipam"));
    let (cairn_ms, cni_ms, attach_ms, sustained_ms) = node.run_async(|| async {
        let network = PodNetwork::start(config).await?;
        let (mut cairn_ms, mut cni_ms, mut attach_ms) = (Vec::new(), Vec::new(), Vec::new());
        for n in 0..runs {
            // Alternate who goes first so neither always runs on a warm cache.
            for turn in 0..2 {
                if (n + turn) % 2 == 0 {
                    let owner = format!("bench-{n}");
                    let started = Instant::now();
                    network.attach(&owner, &pod_path(n)).await?;
                    let attached = started.elapsed();
                    network.detach(&owner).await?;
                    let total = started.elapsed();
                    cairn_ms.push(total.as_secs_f64() * 1e3);
                    attach_ms.push(attached.as_secs_f64() * 1e3);
                    // The deletion of the retired pair must not run into the CNI turn.
                    network.settle().await;
                } else {
                    // The plugin inherits this thread's (the node's) namespace.
                    let container = format!("bench-{n}");
                    let started = Instant::now();
                    cni("ADD", &container, &pod_path(n), &cni_config)?;
                    cni("DEL", &container, &pod_path(n), &cni_config)?;
                    cni_ms.push(started.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        // Back to back, the deletions included: what a node sustains under churn.
        let started = Instant::now();
        for n in 0..runs {
            let owner = format!("sustained-{n}");
            network.attach(&owner, &pod_path(n)).await?;
            network.detach(&owner).await?;
        }
        network.settle().await;
        let sustained_ms = started.elapsed().as_secs_f64() * 1e3 / runs as f64;
        anyhow::Ok((cairn_ms, cni_ms, attach_ms, sustained_ms))
    })??;
    let (cairn, cni) = (median(cairn_ms.clone()), median(cni_ms.clone()));
    println!(
        "net: pod network attach + detach (veth on a bridge, IPAM address, default route), {runs} runs each, alternating"
    );
    println!(
        "{:<44} {:>9} {:>9}  ratio (goal)",
        "figure", "median", "p99"
    );
    println!(
        "{:<44} {:>6.2} ms {:>6.2} ms  anchor",
        "CNI bridge + host-local (ADD + DEL)",
        cni,
        percentile(&cni_ms, 99.0)
    );
    println!(
        "{:<44} {:>6.2} ms {:>6.2} ms  {:.2}x CNI (<= 0.25x)",
        "cairn PodNetwork (attach + detach)",
        cairn,
        percentile(&cairn_ms, 99.0),
        cairn / cni
    );
    println!(
        "{:<44} {:>6.2} ms {:>6.2} ms",
        "  of which attach",
        median(attach_ms.clone()),
        percentile(&attach_ms, 99.0)
    );
    println!(
        "{:<44} {:>6.2} ms {:>9}  {:.2}x CNI",
        "cairn back to back, pair deletions included",
        sustained_ms,
        "(mean)",
        sustained_ms / cni
    );
    Ok(())
}
