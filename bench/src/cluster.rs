//! `bench cluster`: on a local cluster of one control plane and two workers made by
//! `cairnctl cluster create` (the README's main job), with the busybox image present
//! on every node:
//!
//! - **pod startup**: bare pods created at a steady rate; for each, the time from
//!   just before its create request to the first watch event that shows it Running.
//!   Anchor: the Kubernetes pod startup SLO (p99 ≤ 5 s); goal p99 ≤ 1 s.
//! - **failover**: a Deployment spread over the nodes; one worker's QEMU is killed
//!   (a power cut); the time until its Node is NotReady and until the Deployment has
//!   all its replicas Running and Ready off that node. Anchor: Kubernetes' defaults
//!   (40 s node-monitor grace period + 300 s not-ready/unreachable toleration =
//!   340 s); goal ≤ 15 s.
//!
//! Neither anchor can run here (no kubelet), so they are the published figures the
//! issue names, not same-run measurements; the ratios say so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use xtask::build::{self, checked};
use xtask::deps;

use crate::stats::{median, percentile};

/// The cluster's name (its VMs, state directory and cairnctl context).
const CLUSTER: &str = "cairn-bench";
/// The image every pod runs, imported on every node first.
const IMAGE: &str = "cairn.test/busybox:1.35";
/// The worker whose power is cut.
const LOST: &str = "cairn-bench-w-1";
/// Replicas of the failover Deployment (spread over the three nodes).
const REPLICAS: i32 = 6;
/// Longest wait for any one stage.
const STAGE_TIMEOUT: Duration = Duration::from_secs(300);
/// The Kubernetes SLO for pod startup, p99.
const SLO_P99_S: f64 = 5.0;
/// Kubernetes' default time from a node's loss to its pods' eviction.
const KUBERNETES_FAILOVER_S: f64 = 340.0;

/// What the run is told.
pub struct ClusterLoad {
    /// Pods to start.
    pub pods: usize,
    /// Pods created per second.
    pub rate: f64,
    /// A running cluster's kubeconfig: measure pod startup there, skip the failover.
    pub existing: Option<PathBuf>,
    /// The made cluster's `cluster.nodeLifecycle.gracePeriodSeconds`, if not the default.
    pub node_grace: Option<u64>,
    /// The made cluster's `cluster.nodeLifecycle.evictionSeconds`, if not the default.
    pub eviction: Option<u64>,
}

impl ClusterLoad {
    /// The config patch that sets the node lifecycle asked for, if any.
    fn lifecycle_patch(&self) -> Option<serde_json::Value> {
        let mut lifecycle = serde_json::Map::new();
        if let Some(grace) = self.node_grace {
            lifecycle.insert("gracePeriodSeconds".into(), grace.into());
        }
        if let Some(eviction) = self.eviction {
            lifecycle.insert("evictionSeconds".into(), eviction.into());
        }
        (!lifecycle.is_empty())
            .then(|| serde_json::json!({"cluster": {"nodeLifecycle": lifecycle}}))
    }
}

/// Runs the benchmark.
pub fn run(load: ClusterLoad) -> anyhow::Result<()> {
    if load.pods == 0 || load.rate <= 0.0 {
        bail!("--pods and --rate must be positive");
    }
    if let Some(kubeconfig) = &load.existing {
        if load.lifecycle_patch().is_some() {
            bail!(
                "--node-grace and --eviction set up the cluster this run makes; they do not apply with --kubeconfig"
            );
        }
        let runtime = tokio::runtime::Runtime::new()?;
        let startup = runtime.block_on(async {
            let client = client(kubeconfig).await?;
            pod_startup(&client, &load).await
        })?;
        println!(
            "cluster benchmark: the running cluster of {}",
            kubeconfig.display()
        );
        print_startup(&startup, &load);
        return Ok(());
    }
    deps::ensure()?;
    let build::ClusterTools { cairnctl, images } = build::cluster_tools("cairn-bench-images")?;
    let clusters = tempfile::tempdir().context("a directory for the cluster's state")?;
    let patch = match load.lifecycle_patch() {
        Some(patch) => {
            let path = clusters.path().join("lifecycle-patch.json");
            std::fs::write(&path, patch.to_string())
                .with_context(|| format!("writing {}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    let cluster = LocalCluster::create(&cairnctl, clusters.path(), patch.as_deref())?;
    checked(
        Command::new(&cairnctl)
            .args(["--context", CLUSTER, "image", "import"])
            .arg(images.join("busybox")),
        "cairnctl image import",
    )?;
    let runtime = tokio::runtime::Runtime::new()?;
    let (startup, failover) = runtime.block_on(async {
        let client = client(&cluster.dir.join("kubeconfig")).await?;
        wait_nodes_ready(&client, 3).await?;
        let startup = pod_startup(&client, &load).await?;
        let failover = failover(&client, &cluster).await?;
        anyhow::Ok((startup, failover))
    })?;
    drop(cluster);

    println!(
        "cluster benchmark: 1 control plane + 2 workers under QEMU (TCG), image present on every node"
    );
    print_startup(&startup, &load);
    println!("failover, a worker's power cut ({LOST}, {REPLICAS} replicas spread):");
    println!(
        "  Node NotReady after {:.1} s; its {} pod(s) Running and Ready elsewhere after {:.1} s   goal ≤ 15 s: {}   Kubernetes defaults 340 s: {:.3}×",
        failover.not_ready_s,
        failover.moved,
        failover.replaced_s,
        verdict(failover.replaced_s <= 15.0),
        failover.replaced_s / KUBERNETES_FAILOVER_S
    );
    println!(
        "  node lifecycle: {} s grace, {} s eviction toleration{}; their sum is the floor of the replacement time",
        load.node_grace
            .unwrap_or(cairn_api::machine_config::DEFAULT_NODE_GRACE_SECONDS),
        load.eviction
            .unwrap_or(cairn_api::machine_config::DEFAULT_EVICTION_SECONDS),
        if load.lifecycle_patch().is_some() {
            " (set with --node-grace/--eviction through `cairnctl cluster create --config-patch`)"
        } else {
            " (the defaults)"
        }
    );
    Ok(())
}

/// Prints the pod startup figures: percentiles, the goal and the SLO ratio.
fn print_startup(startup: &[f64], load: &ClusterLoad) {
    let p50 = percentile(startup, 50.0);
    let p99 = percentile(startup, 99.0);
    println!(
        "pod startup, create → Running seen by watch, {} pods at {:.1}/s:",
        startup.len(),
        load.rate
    );
    println!(
        "  p50 {:>7.0} ms   p99 {:>7.0} ms   max {:>7.0} ms   goal p99 ≤ 1000 ms: {}   SLO p99 5 s: {:.3}×",
        p50 * 1000.0,
        p99 * 1000.0,
        percentile(startup, 100.0) * 1000.0,
        verdict(p99 <= 1.0),
        p99 / SLO_P99_S
    );
    // A queue that grows shows as later pods waiting longer than the first ones.
    let tenth = (startup.len() / 10).max(1);
    println!(
        "  median of the first {tenth} pods {:.0} ms, of the last {tenth} {:.0} ms",
        median(startup[..tenth].to_vec()) * 1000.0,
        median(startup[startup.len() - tenth..].to_vec()) * 1000.0
    );
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// The benchmark's cluster, destroyed on drop (also when the run fails).
struct LocalCluster {
    cairnctl: PathBuf,
    clusters: PathBuf,
    dir: PathBuf,
}

impl LocalCluster {
    fn create(cairnctl: &Path, clusters: &Path, patch: Option<&Path>) -> anyhow::Result<Self> {
        let cluster = Self {
            cairnctl: cairnctl.to_owned(),
            clusters: clusters.to_owned(),
            dir: clusters.join(CLUSTER),
        };
        let mut create = Command::new(cairnctl);
        create
            .args(["cluster", "create", "--name", CLUSTER])
            .args(["--control-planes", "1", "--workers", "2"])
            .arg("--image-dir")
            .arg(build::image_dir())
            .arg("--clusters-dir")
            .arg(clusters);
        if let Some(patch) = patch {
            create.arg("--config-patch").arg(patch);
        }
        checked(&mut create, "cairnctl cluster create")?;
        Ok(cluster)
    }

    /// Cuts a node's power: SIGKILL to its QEMU (the pid QEMU wrote, checked to be the
    /// QEMU of that node's directory).
    fn pull_the_plug(&self, node: &str) -> anyhow::Result<()> {
        let node_dir = self.dir.join(node);
        let pid_file = node_dir.join("qemu.pid");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?
            .trim()
            .parse()
            .with_context(|| format!("{} holds no pid", pid_file.display()))?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ours = String::from_utf8_lossy(&cmdline).contains(&*node_dir.to_string_lossy());
        if !ours {
            bail!(
                "pid {pid} of {} is not that node's QEMU",
                pid_file.display()
            );
        }
        checked(
            Command::new("kill").args(["-KILL", &pid.to_string()]),
            "kill -KILL",
        )
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = Command::new(&self.cairnctl)
            .args(["cluster", "destroy", "--name", CLUSTER])
            .arg("--clusters-dir")
            .arg(&self.clusters)
            .status();
    }
}

async fn client(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("the cluster's kubeconfig")?;
    Ok(Client::try_from(config)?)
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Polls `check` every 200 ms until it gives a value or `STAGE_TIMEOUT` passes.
async fn until<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + STAGE_TIMEOUT;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) if Instant::now() >= deadline => return Err(err.context(what.to_owned())),
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {STAGE_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_nodes_ready(client: &Client, count: usize) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    until(&format!("{count} Ready nodes"), || async {
        let listed = nodes.list(&ListParams::default()).await?;
        Ok::<_, anyhow::Error>(
            (listed.items.iter().filter(|n| is_ready(n)).count() >= count).then_some(()),
        )
    })
    .await
}

fn startup_pod(name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "startup"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
                "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}}
            }]
        }
    }))?)
}

/// Starts `load.pods` pods at `load.rate` per second; each one's create → Running, s,
/// in creation order.
async fn pod_startup(client: &Client, load: &ClusterLoad) -> anyhow::Result<Vec<f64>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watching = tokio::spawn({
        let pods = pods.clone();
        async move {
            let mut running = BTreeSet::new();
            let stream =
                watcher(pods, watcher::Config::default().labels("bench=startup")).applied_objects();
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                let Ok(pod) = event else { continue };
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                let name = pod.metadata.name.clone().unwrap_or_default();
                if phase == Some("Running") && running.insert(name.clone()) {
                    let _ = seen_tx.send((name, Instant::now()));
                }
            }
        }
    });
    // Let the watch start before the first create.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut created = BTreeMap::new();
    let every = Duration::from_secs_f64(1.0 / load.rate);
    let start = Instant::now();
    for i in 0..load.pods {
        let due = start + every.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let name = format!("startup-{i:04}");
        created.insert(name.clone(), Instant::now());
        pods.create(&PostParams::default(), &startup_pod(&name)?)
            .await
            .with_context(|| format!("creating pod {name}"))?;
    }
    // By name, which is creation order.
    let mut latencies = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + STAGE_TIMEOUT;
    while latencies.len() < load.pods {
        let Ok(Some((name, at))) = tokio::time::timeout_at(deadline, seen_rx.recv()).await else {
            bail!(
                "only {} of {} pods Running within {STAGE_TIMEOUT:?}",
                latencies.len(),
                load.pods
            );
        };
        if let Some(made) = created.get(&name) {
            latencies.insert(name, at.duration_since(*made).as_secs_f64());
        }
    }
    watching.abort();
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("bench=startup"),
    )
    .await?;
    until("the startup pods deleted", || async {
        let left = pods
            .list(&ListParams::default().labels("bench=startup"))
            .await?;
        Ok::<_, anyhow::Error>(left.items.is_empty().then_some(()))
    })
    .await?;
    Ok(latencies.into_values().collect())
}

/// The failover figures.
struct Failover {
    not_ready_s: f64,
    replaced_s: f64,
    moved: usize,
}

/// The Deployment's pods: (name, node, Running and Ready).
async fn failover_pods(pods: &Api<Pod>) -> anyhow::Result<Vec<(String, String, bool)>> {
    let listed = pods
        .list(&ListParams::default().labels("app=failover"))
        .await?;
    Ok(listed
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let status = p.status.as_ref();
            let ready = status.and_then(|s| s.phase.as_deref()) == Some("Running")
                && status
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            (
                p.metadata.name.clone().unwrap_or_default(),
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
                ready,
            )
        })
        .collect())
}

async fn failover(client: &Client, cluster: &LocalCluster) -> anyhow::Result<Failover> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let nodes: Api<Node> = Api::all(client.clone());
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "failover"},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": "failover"}},
            "template": {
                "metadata": {"labels": {"app": "failover"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                        "command": ["sleep", "3600"]
                    }]
                }
            }
        }
    }))?;
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .context("creating the failover Deployment")?;
    let lost_pods: BTreeSet<String> =
        until("the failover replicas Ready on every node", || async {
            let all = failover_pods(&pods).await?;
            let nodes: BTreeSet<&str> = all.iter().map(|p| p.1.as_str()).collect();
            let ready = all.iter().filter(|p| p.2).count() == REPLICAS as usize;
            Ok::<_, anyhow::Error>((ready && nodes.contains(LOST)).then(|| {
                all.iter()
                    .filter(|p| p.1 == LOST)
                    .map(|p| p.0.clone())
                    .collect()
            }))
        })
        .await?;
    let cut = Instant::now();
    cluster.pull_the_plug(LOST)?;
    let mut not_ready = None;
    let deadline = cut + STAGE_TIMEOUT;
    let replaced = loop {
        if not_ready.is_none() && nodes.get(LOST).await.is_ok_and(|node| !is_ready(&node)) {
            not_ready = Some(cut.elapsed());
        }
        // Reads may fail while the API server notices the loss; keep asking.
        if let Ok(all) = failover_pods(&pods).await {
            let elsewhere = all
                .iter()
                .filter(|p| p.1 != LOST && p.2 && !lost_pods.contains(&p.0))
                .count();
            if elsewhere >= REPLICAS as usize {
                break cut.elapsed();
            }
        }
        if Instant::now() >= deadline {
            bail!("the lost worker's pods not replaced within {STAGE_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    Ok(Failover {
        not_ready_s: not_ready.unwrap_or(replaced).as_secs_f64(),
        replaced_s: replaced.as_secs_f64(),
        moved: lost_pods.len(),
    })
}
