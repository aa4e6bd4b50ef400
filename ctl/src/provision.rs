//! Local clusters of Cairn VMs under QEMU (`cairnctl cluster create|destroy`).
//!
//! Each cluster lives in a state directory of its own (`~/.cairn/clusters/<name>`, or
//! under `$CAIRN_CLUSTERS_DIR`): the cluster's secrets, and per node its machine
//! config, disk, console log, QMP socket and QEMU pid file. Nothing is made outside
//! it but the client context, which `destroy` removes again; an admin kubeconfig for
//! the cluster's Kubernetes API is written into it as `kubeconfig`.
//!
//! Networking stays on this machine: the nodes share an L2 segment made of QEMU
//! multicast sockets on 127.0.0.1 with a port of the cluster's own, and each node's
//! machine API (and a control plane's Kubernetes API) is forwarded from 127.0.0.1 by a
//! second, restricted user-mode NIC (the guest cannot send anything off the machine
//! through it).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use cairn_api::bundle::{NodeSpec, Secrets};
use cairn_api::client_config::Context;
use cairn_api::machine_api::{Ack, Health, KubeconfigResponse, PORT, paths};
use cairn_api::machine_config::{InterfaceConfig, MachineConfig, MachineType};
use cairn_api::pki::{Ca, Role};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::cli::Global;
use crate::client::NodeClient;
use crate::settings;

/// Options of `cairnctl cluster create`.
#[derive(clap::Args, Debug)]
pub struct CreateOptions {
    /// The cluster's name (several can exist side by side).
    #[arg(long, default_value = "cairn")]
    pub name: String,
    /// Control-plane nodes.
    #[arg(long, default_value_t = 1)]
    pub control_planes: u8,
    /// Worker nodes.
    #[arg(long, default_value_t = 0)]
    pub workers: u8,
    /// Guest memory per node, MiB (a control plane runs the store, the API server, the
    /// controllers and pods).
    #[arg(long, default_value_t = 768)]
    pub memory: u32,
    /// Install disk size per node, MiB.
    #[arg(long, default_value_t = 1024)]
    pub disk: u32,
    /// The image built by `cargo xtask image` (default: $CAIRN_IMAGE_DIR, else
    /// ./target/cairn-image).
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
    /// How long to wait for every node to be healthy, seconds.
    #[arg(long, default_value_t = 300)]
    pub wait: u64,
    /// Where clusters keep their state (default: $CAIRN_CLUSTERS_DIR, else ~/.cairn/clusters).
    #[arg(long)]
    pub clusters_dir: Option<PathBuf>,
    /// A YAML merge patch (RFC 7386) applied to every node's machine config, in the
    /// order given (repeatable), e.g. a file with
    /// `cluster: {nodeLifecycle: {gracePeriodSeconds: 5}}`.
    #[arg(long = "config-patch", value_name = "FILE")]
    pub config_patches: Vec<PathBuf>,
}

/// The patches of `paths`, read and checked before anything is made.
fn read_patches(paths: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, serde_json::Value)>> {
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the config patch {}", path.display()))?;
            let patch: serde_json::Value = serde_saphyr::from_str(&text)
                .map_err(|e| anyhow::anyhow!("the config patch {} is not YAML: {e}", path.display()))?;
            if !patch.is_object() {
                bail!(
                    "the config patch {} is not a mapping (a merge patch names the fields it sets, e.g. `cluster: {{nodeLifecycle: {{gracePeriodSeconds: 5}}}}`)",
                    path.display()
                );
            }
            Ok((path.clone(), patch))
        })
        .collect()
}

/// `config` with `patches` merged in, parsed and validated again: an error names the
/// node, the patch files and each field that is wrong.
fn patched(
    config: MachineConfig,
    patches: &[(PathBuf, serde_json::Value)],
    node: &str,
) -> anyhow::Result<MachineConfig> {
    if patches.is_empty() {
        return Ok(config);
    }
    let mut document = serde_json::to_value(&config)?;
    for (_, patch) in patches {
        json_patch::merge(&mut document, patch);
    }
    // JSON is YAML: the machine config's own parser checks the result.
    MachineConfig::from_yaml(&document.to_string()).map_err(|err| {
        let files: Vec<String> = patches
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        anyhow::anyhow!(
            "the machine config of {node} with the config patch(es) {} is not valid: {}",
            files.join(", "),
            err.problems().join("; ")
        )
    })
}

/// What `cargo xtask image` wrote, as far as booting needs it.
#[derive(Debug, Deserialize)]
struct ImageManifest {
    vmlinux: PathBuf,
    initramfs: PathBuf,
    cmdline: String,
}

/// One node as recorded in the cluster's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Hostname.
    pub name: String,
    /// Control plane or worker.
    pub role: String,
    /// Address on the cluster segment.
    pub address: String,
    /// Host port forwarded to its machine API.
    pub api_port: u16,
    /// Host port forwarded to its Kubernetes API (control planes).
    #[serde(default)]
    pub kube_api_port: Option<u16>,
}

/// A cluster's state file (`cluster.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// The cluster's name.
    pub name: String,
    /// The multicast port of its segment.
    pub segment_port: u16,
    /// Its nodes.
    pub nodes: Vec<NodeRecord>,
}

/// Where clusters keep their state.
pub fn clusters_dir(chosen: Option<&Path>) -> PathBuf {
    if let Some(dir) = chosen {
        return dir.to_owned();
    }
    if let Some(dir) = std::env::var_os("CAIRN_CLUSTERS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cairn").join("clusters")
}

fn image_dir(options: &CreateOptions) -> PathBuf {
    options
        .image_dir
        .clone()
        .or_else(|| std::env::var_os("CAIRN_IMAGE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target/cairn-image"))
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// A multicast port for a new cluster: derived from its name, moved on while another
/// cluster uses it.
fn segment_port(name: &str, taken: &[u16]) -> u16 {
    let hash = name
        .bytes()
        .fold(5381u32, |h, b| h.wrapping_mul(33) ^ u32::from(b));
    let mut port = 20000 + u16::try_from(hash % 10000).unwrap_or(0);
    while taken.contains(&port) {
        port = if port >= 29999 { 20000 } else { port + 1 };
    }
    port
}

fn existing_clusters(dir: &Path) -> Vec<ClusterRecord> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("cluster.json")).ok())
        .filter_map(|text| serde_json::from_str(&text).ok())
        .collect()
}

/// Boots a new cluster and waits until every node is healthy.
pub fn create(global: &Global, options: &CreateOptions) -> anyhow::Result<()> {
    cairn_api::machine_config::check_hostname(&options.name)
        .map_err(|why| anyhow::anyhow!("cluster name {:?} {why}", options.name))?;
    if options.control_planes == 0 {
        bail!("a cluster needs at least one control plane");
    }
    let clusters = clusters_dir(options.clusters_dir.as_deref());
    let dir = clusters.join(&options.name);
    if dir.exists() {
        bail!(
            "cluster {:?} exists ({}); destroy it first with `cairnctl cluster destroy --name {}`",
            options.name,
            dir.display(),
            options.name
        );
    }
    let image_dir = image_dir(options);
    let manifest: ImageManifest = serde_json::from_str(
        &std::fs::read_to_string(image_dir.join("manifest.json")).with_context(|| {
            format!(
                "no Cairn image in {} (build it with `cargo xtask image`, or pass --image-dir)",
                image_dir.display()
            )
        })?,
    )?;
    let taken: Vec<u16> = existing_clusters(&clusters)
        .iter()
        .map(|c| c.segment_port)
        .collect();
    let port = segment_port(&options.name, &taken);
    let secrets = Secrets::generate(&options.name)?;
    let nodes = plan_nodes(options, &secrets)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let result = boot_nodes(global, options, &dir, &manifest, port, (&secrets, &nodes));
    if result.is_err() {
        eprintln!(
            "cluster {:?} did not come up; its VMs keep running for inspection (logs under {}); `cairnctl cluster destroy --name {}` removes it",
            options.name,
            dir.display(),
            options.name
        );
    }
    result
}

/// One node to boot: its type, hostname, segment address and machine config.
struct PlannedNode {
    machine_type: MachineType,
    hostname: String,
    address: String,
    config: MachineConfig,
}

/// The nodes of the cluster `options` asks for, with their configs made from
/// `secrets` and the config patches, before anything is made on disk.
fn plan_nodes(options: &CreateOptions, secrets: &Secrets) -> anyhow::Result<Vec<PlannedNode>> {
    let patches = read_patches(&options.config_patches)?;
    let control_plane_address = "10.5.0.10".to_owned();
    let mut nodes = Vec::new();
    for i in 0..options.control_planes {
        nodes.push((
            MachineType::Controlplane,
            format!("{}-cp-{}", options.name, i + 1),
            format!("10.5.0.{}", 10 + u16::from(i)),
        ));
    }
    for i in 0..options.workers {
        nodes.push((
            MachineType::Worker,
            format!("{}-w-{}", options.name, i + 1),
            format!("10.5.0.{}", 100 + u16::from(i)),
        ));
    }
    nodes
        .into_iter()
        .map(|(machine_type, hostname, address)| {
            let mut config = secrets.machine_config(&NodeSpec {
                machine_type,
                hostname: hostname.clone(),
                addresses: vec![format!("{address}/24")],
                endpoint: format!("https://{control_plane_address}:6443"),
                control_planes: vec![control_plane_address.clone()],
                install_disk: Some("/dev/vda".into()),
            })?;
            // eth1 is the management NIC: QEMU's user network gives it an address by DHCP.
            config.machine.network.interfaces.push(InterfaceConfig {
                name: Some("eth1".into()),
                dhcp: true,
                ..Default::default()
            });
            let config = patched(config, &patches, &hostname)?;
            Ok(PlannedNode {
                machine_type,
                hostname,
                address,
                config,
            })
        })
        .collect()
}

fn boot_nodes(
    global: &Global,
    options: &CreateOptions,
    dir: &Path,
    manifest: &ImageManifest,
    segment_port: u16,
    (secrets, nodes): (&Secrets, &[PlannedNode]),
) -> anyhow::Result<()> {
    let mut record = ClusterRecord {
        name: options.name.clone(),
        segment_port,
        nodes: Vec::new(),
    };
    // Secrets first, so `gen client`-style tools and destroy can work with a half-made cluster.
    std::fs::write(dir.join("ca.crt"), secrets.ca.cert_pem())?;
    write_private(&dir.join("ca.key"), secrets.ca.key_pem())?;
    for (index, node) in nodes.iter().enumerate() {
        let PlannedNode {
            machine_type,
            hostname,
            address,
            config,
        } = node;
        let node_dir = dir.join(hostname);
        std::fs::create_dir_all(&node_dir)?;
        write_private(
            &node_dir.join("machine.yaml"),
            &config
                .to_yaml()
                .map_err(|e| anyhow::anyhow!(e.to_string()))?,
        )?;
        let disk = node_dir.join("disk.qcow2");
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg(format!("{}M", options.disk)))
        .context("creating the node's disk (install qemu-utils)")?;
        let api_port = free_port()?;
        let kube_api_port = match machine_type {
            MachineType::Controlplane => Some(free_port()?),
            MachineType::Worker => None,
        };
        start_vm(
            &node_dir,
            manifest,
            options.memory,
            segment_port,
            Forwards {
                api_port,
                kube_api_port,
            },
            &options.name,
            index,
        )?;
        record.nodes.push(NodeRecord {
            name: hostname.clone(),
            role: machine_type.to_string(),
            address: address.clone(),
            api_port,
            kube_api_port,
        });
        std::fs::write(
            dir.join("cluster.json"),
            serde_json::to_string_pretty(&record)?,
        )?;
    }

    let admin = secrets.client("admin", Role::Admin)?;
    let endpoints: Vec<String> = record
        .nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.api_port))
        .collect();
    let context = Context {
        endpoints: endpoints.clone(),
        nodes: Vec::new(),
        ca: secrets.ca.cert_pem().to_owned(),
        crt: admin.cert_pem,
        key: admin.key_pem,
    };
    let path = settings::config_path(global);
    let mut file = settings::load(&path)?;
    file.merge(&options.name, context.clone());
    settings::save(&path, &file)?;

    wait_healthy(&record, &context, Duration::from_secs(options.wait), dir)?;
    bootstrap(&record, &context, Duration::from_secs(options.wait))?;
    let kubeconfig = write_kubeconfig(&record, &context, Duration::from_secs(options.wait), dir)?;
    println!(
        "cluster {:?} is up: {} node(s); context {:?} written to {}",
        options.name,
        record.nodes.len(),
        options.name,
        path.display()
    );
    for node in &record.nodes {
        let kube = node
            .kube_api_port
            .map(|port| format!(", Kubernetes API 127.0.0.1:{port}"))
            .unwrap_or_default();
        println!(
            "  {:<16} {:<13} {:<10} machine API 127.0.0.1:{}{kube}",
            node.name, node.role, node.address, node.api_port
        );
    }
    println!(
        "kubeconfig (admin) in {0}: kubectl --kubeconfig {0} get nodes",
        kubeconfig.display()
    );
    Ok(())
}

/// The host ports forwarded (from 127.0.0.1) into a node.
struct Forwards {
    /// To its machine API.
    api_port: u16,
    /// To its Kubernetes API, on control planes.
    kube_api_port: Option<u16>,
}

fn start_vm(
    node_dir: &Path,
    manifest: &ImageManifest,
    memory: u32,
    segment_port: u16,
    forwards: Forwards,
    cluster: &str,
    index: usize,
) -> anyhow::Result<()> {
    let mut user_net = format!(
        "user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{}-:{PORT}",
        forwards.api_port
    );
    if let Some(port) = forwards.kube_api_port {
        user_net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{port}-:{KUBE_API_PORT}"));
    }
    let accel = match std::env::var("CAIRN_QEMU_ACCEL").as_deref() {
        Ok("kvm") => "kvm",
        _ => "tcg",
    };
    let cluster_byte = cluster
        .bytes()
        .fold(0u8, |h, b| h.wrapping_mul(31).wrapping_add(b));
    let mac = |nic: u8| format!("52:54:{cluster_byte:02x}:{nic:02x}:00:{:02x}", index + 1);
    let path = |name: &str| node_dir.join(name).display().to_string();
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-daemonize",
        ])
        .args(["-pidfile", &path("qemu.pid")])
        .args([
            "-machine",
            &format!("pc,accel={accel}"),
            "-cpu",
            "max",
            "-smp",
            "1",
        ])
        .args(["-m", &memory.to_string()])
        .args(["-serial", &format!("file:{}", path("console.log"))])
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", path("qmp.sock")),
        ])
        .arg("-kernel")
        .arg(&manifest.vmlinux)
        .arg("-initrd")
        .arg(&manifest.initramfs)
        .args(["-append", &manifest.cmdline])
        .args([
            "-fw_cfg",
            &format!("name=opt/cairn/machine.yaml,file={}", path("machine.yaml")),
        ])
        .args([
            "-drive",
            &format!("file={},if=virtio,format=qcow2", path("disk.qcow2")),
        ])
        .args([
            "-netdev",
            &format!("socket,id=segment,mcast=230.0.0.1:{segment_port},localaddr=127.0.0.1"),
            "-device",
            &format!("virtio-net-pci,netdev=segment,mac={},romfile=", mac(0)),
        ])
        .args([
            "-netdev",
            &user_net,
            "-device",
            &format!("virtio-net-pci,netdev=mgmt,mac={},romfile=", mac(1)),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(node_dir.join("qemu.stderr"))?);
    run(&mut command).context("starting QEMU (install qemu-system-x86)")
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command.status()?;
    if !status.success() {
        bail!("{:?} failed ({status})", command.get_program());
    }
    Ok(())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn wait_healthy(
    record: &ClusterRecord,
    context: &Context,
    timeout: Duration,
    dir: &Path,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{spinner} {prefix:<16} {msg}")
        .map_err(|e| anyhow::anyhow!(e.to_string()))?;
    let deadline = Instant::now() + timeout;
    runtime.block_on(async {
        let waits = record.nodes.iter().map(|node| {
            let bar = bars.add(ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.set_prefix(node.name.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            let target = format!("127.0.0.1:{}", node.api_port);
            async move {
                let client = NodeClient::new(&target, context)?;
                loop {
                    match client.get::<Health>(paths::HEALTH).await {
                        Ok(health) if health.stage == "ready" => {
                            bar.finish_with_message("ready");
                            return Ok(());
                        }
                        Ok(health) => bar.set_message(format!(
                            "{}{}",
                            health.stage,
                            health
                                .phases
                                .last()
                                .map(|p| format!(" ({} {})", p.name, p.state))
                                .unwrap_or_default()
                        )),
                        Err(_) => bar.set_message("booting (machine API not up yet)"),
                    }
                    if Instant::now() >= deadline {
                        bar.abandon_with_message("timed out");
                        bail!(
                            "{} not healthy after {:?}; see {}",
                            node.name,
                            timeout,
                            dir.join(&node.name).join("console.log").display()
                        );
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
        futures::future::try_join_all(waits).await.map(drop)
    })
}

/// Bootstraps the cluster store on the first control plane (as `cairnctl bootstrap`
/// would), so the others join it and the pod network can start.
fn bootstrap(record: &ClusterRecord, context: &Context, timeout: Duration) -> anyhow::Result<()> {
    let Some(first) = record.nodes.iter().find(|n| n.role == "controlplane") else {
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = NodeClient::new(&format!("127.0.0.1:{}", first.api_port), context)?;
    let deadline = Instant::now() + timeout;
    runtime.block_on(async {
        loop {
            match client
                .post::<_, Ack>(paths::STORE_BOOTSTRAP, &serde_json::json!({}))
                .await
            {
                Ok(_) => return Ok(()),
                Err(err) if Instant::now() >= deadline => {
                    bail!("bootstrapping the store on {} failed: {err}", first.name)
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    })
}

/// The port the Kubernetes API serves on, on control planes.
const KUBE_API_PORT: u16 = 6443;

/// Asks the first control plane for an admin kubeconfig (once its API server is up)
/// and writes it as `<dir>/kubeconfig`, pointed at the port forwarded to it (its
/// serving certificate names 127.0.0.1).
fn write_kubeconfig(
    record: &ClusterRecord,
    context: &Context,
    timeout: Duration,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let first = record
        .nodes
        .iter()
        .find(|n| n.role == "controlplane")
        .context("the cluster has no control plane")?;
    let port = first
        .kube_api_port
        .context("the first control plane has no forwarded Kubernetes API port")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = NodeClient::new(&format!("127.0.0.1:{}", first.api_port), context)?;
    let deadline = Instant::now() + timeout;
    let answer: KubeconfigResponse = runtime.block_on(async {
        loop {
            match client
                .post::<_, KubeconfigResponse>(paths::KUBECONFIG, &serde_json::json!({}))
                .await
            {
                Ok(answer) => return Ok(answer),
                Err(err) if Instant::now() >= deadline => {
                    bail!("{} gave no kubeconfig: {err}", first.name)
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    })?;
    let text = answer
        .kubeconfig
        .replace(&answer.server, &format!("https://127.0.0.1:{port}"));
    let path = dir.join("kubeconfig");
    write_private(&path, &text)?;
    Ok(path)
}

/// Stops a cluster's VMs (by the pids QEMU recorded) and removes its state and context.
pub fn destroy(global: &Global, name: &str, clusters: Option<&Path>) -> anyhow::Result<()> {
    let clusters = clusters_dir(clusters);
    let dir = clusters.join(name);
    if !dir.exists() {
        bail!("no cluster named {name:?} (in {})", clusters.display());
    }
    let mut stopped = 0;
    for entry in std::fs::read_dir(&dir)?.filter_map(Result::ok) {
        let pid_file = entry.path().join("qemu.pid");
        let Ok(text) = std::fs::read_to_string(&pid_file) else {
            continue;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            continue;
        };
        if is_our_qemu(pid, &entry.path()) {
            stop(pid);
            stopped += 1;
        }
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    let path = settings::config_path(global);
    let mut file = settings::load(&path)?;
    if file.contexts.remove(name).is_some() {
        if file.context == name {
            file.context = file.contexts.keys().next().cloned().unwrap_or_default();
        }
        settings::save(&path, &file)?;
    }
    println!(
        "cluster {name:?} destroyed: {stopped} VM(s) stopped, {} removed",
        dir.display()
    );
    Ok(())
}

/// Whether `pid` is still the QEMU started for `node_dir` (pids are reused).
fn is_our_qemu(pid: i32, node_dir: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| {
            let text = String::from_utf8_lossy(&cmdline);
            text.contains("qemu-system") && text.contains(&node_dir.display().to_string())
        })
        .unwrap_or(false)
}

fn stop(pid: i32) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if kill(pid, None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// The cluster's CA, for tools that issue more credentials.
pub fn cluster_ca(name: &str, clusters: Option<&Path>) -> anyhow::Result<Ca> {
    let dir = clusters_dir(clusters).join(name);
    let cert = std::fs::read_to_string(dir.join("ca.crt"))?;
    let key = std::fs::read_to_string(dir.join("ca.key"))?;
    Ok(Ca::from_pem(&cert, &key)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker_config() -> MachineConfig {
        let secrets = Secrets::generate("t").unwrap();
        secrets
            .machine_config(&NodeSpec {
                machine_type: MachineType::Worker,
                hostname: "t-w-1".into(),
                addresses: vec!["10.5.0.100/24".into()],
                endpoint: "https://10.5.0.10:6443".into(),
                control_planes: vec!["10.5.0.10".into()],
                install_disk: None,
            })
            .unwrap()
    }

    fn patch_file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn config_patches_merge_in_order_and_a_bad_one_names_its_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let first = patch_file(
            dir.path(),
            "fast.yaml",
            "cluster:\n  nodeLifecycle:\n    gracePeriodSeconds: 5\n    evictionSeconds: 4\n",
        );
        let second = patch_file(
            dir.path(),
            "later.yaml",
            "cluster: {nodeLifecycle: {evictionSeconds: 3}}\n",
        );
        let patches = read_patches(&[first, second]).unwrap();
        let config = patched(worker_config(), &patches, "t-w-1").unwrap();
        let lifecycle = config.cluster.unwrap().node_lifecycle.unwrap();
        assert_eq!(lifecycle.grace_period_seconds(), 5);
        assert_eq!(lifecycle.eviction_seconds(), 3);

        let zero = patch_file(
            dir.path(),
            "zero.yaml",
            "cluster: {nodeLifecycle: {gracePeriodSeconds: 0}}\n",
        );
        let err = patched(worker_config(), &read_patches(&[zero]).unwrap(), "t-w-1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("t-w-1") && err.contains("zero.yaml"), "{err}");
        assert!(
            err.contains("cluster.nodeLifecycle.gracePeriodSeconds"),
            "{err}"
        );

        let typo = patch_file(dir.path(), "typo.yaml", "cluster: {nodeLifecycel: {}}\n");
        let err = patched(worker_config(), &read_patches(&[typo]).unwrap(), "t-w-1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nodeLifecycel"), "{err}");

        let list = patch_file(dir.path(), "list.yaml", "- a\n- b\n");
        let err = read_patches(&[list]).unwrap_err().to_string();
        assert!(
            err.contains("list.yaml") && err.contains("not a mapping"),
            "{err}"
        );
        let missing = dir.path().join("absent.yaml");
        let err = read_patches(&[missing]).unwrap_err().to_string();
        assert!(err.contains("absent.yaml"), "{err}");
    }

    #[test]
    fn segment_ports_differ_per_name_and_avoid_taken_ones() {
        let a = segment_port("alpha", &[]);
        assert!((20000..30000).contains(&a));
        assert_ne!(segment_port("alpha", &[a]), a);
        assert_eq!(segment_port("alpha", &[]), a, "stable for a name");
    }
}
