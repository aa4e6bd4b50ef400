//! The command line of `cairnctl`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Drive Cairn nodes through their machine API.
#[derive(Parser, Debug)]
#[command(
    name = "cairnctl",
    version,
    about = "Drive Cairn nodes through their machine API"
)]
pub struct Cli {
    /// Connection and output options.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options for every command.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The client file (default: $CAIRNCONFIG, else ~/.cairn/config).
    #[arg(long, global = true)]
    pub cairnconfig: Option<PathBuf>,
    /// The context of the client file to use (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Machine API endpoints, overriding the context's (host or host:port).
    #[arg(short = 'e', long, global = true, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Nodes to act on (host or host:port); results are labelled per node.
    #[arg(short = 'n', long, global = true, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// How results are printed.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Human-readable tables.
    Table,
    /// JSON, for scripts.
    Json,
    /// YAML, for scripts.
    Yaml,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate configs and credentials for a new cluster.
    #[command(subcommand)]
    Gen(GenCommand),
    /// Check a machine config file offline.
    Validate {
        /// The file.
        #[arg(short = 'f', long)]
        file: PathBuf,
    },
    /// Cairn and kernel versions of the nodes.
    Version,
    /// Boot phases, services and persistence of the nodes.
    Health,
    /// The supervised services of the nodes.
    Services,
    /// Act on one service.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// A service's recent log lines.
    Logs {
        /// The service.
        service: String,
        /// Keep following new lines.
        #[arg(short = 'f', long)]
        follow: bool,
        /// How many recent lines (all kept lines by default).
        #[arg(long)]
        tail: Option<usize>,
    },
    /// The kernel log.
    Dmesg {
        /// Keep following new records.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Read resources of the nodes.
    #[command(subcommand)]
    Get(GetCommand),
    /// Send a new machine config to the nodes.
    ApplyConfig {
        /// The config file.
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// auto, no-reboot, reboot, staged or try.
        #[arg(long, default_value = "auto")]
        mode: String,
        /// For `try`: seconds before the automatic rollback.
        #[arg(long)]
        timeout: Option<u64>,
        /// A node in maintenance mode: no client certificate, server certificate unchecked.
        #[arg(long)]
        insecure: bool,
    },
    /// Keep a config applied with `--mode try`.
    ConfirmConfig,
    /// Reboot the nodes (orderly).
    Reboot,
    /// Power the nodes off (orderly).
    Shutdown,
    /// Local clusters of Cairn VMs under QEMU.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Start the replicated store on this control plane (once per cluster).
    Bootstrap,
    /// Write an admin kubeconfig for the cluster's Kubernetes API (issued by the
    /// control plane asked; needs an admin client).
    Kubeconfig {
        /// Where to write it (default: $KUBECONFIG, else ~/.kube/config); `-` prints it.
        path: Option<PathBuf>,
        /// Replace the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// The replicated store's members as the nodes see them.
    Members {
        /// What to do.
        #[command(subcommand)]
        action: Option<MembersCommand>,
    },
    /// Read or write store keys directly (debugging; admin only).
    #[command(subcommand)]
    Store(StoreCommand),
    /// Container images on the nodes.
    #[command(subcommand)]
    Image(ImageCommand),
    /// The pods on the nodes, with their containers.
    Pods,
    /// Run a command in a running container, as `kubectl exec` does; exits with the
    /// command's exit code.
    Exec {
        /// The pod: `name` (namespace `default`) or `namespace/name`.
        pod: String,
        /// The container (needed when the pod has several).
        #[arg(short = 'c', long)]
        container: Option<String>,
        /// Pass stdin to the command.
        #[arg(short = 'i', long)]
        stdin: bool,
        /// Give the command a terminal (this one, in raw mode, when stdin is one).
        #[arg(short = 't', long)]
        tty: bool,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// A container's log, as `kubectl logs` shows it.
    PodLogs {
        /// The pod: `name` (namespace `default`) or `namespace/name`.
        pod: String,
        /// The container (needed when the pod has several).
        #[arg(short = 'c', long)]
        container: Option<String>,
        /// Keep following the log.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last lines.
        #[arg(long)]
        tail: Option<usize>,
        /// The previous instance of a restarted container.
        #[arg(short = 'p', long)]
        previous: bool,
        /// Prefix lines with their times.
        #[arg(long)]
        timestamps: bool,
        /// Only what the last this many seconds wrote.
        #[arg(long)]
        since_seconds: Option<u64>,
        /// At most this many bytes.
        #[arg(long)]
        limit_bytes: Option<u64>,
    },
}

/// `cairnctl image …`.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import an OCI image layout (directory or tar) or a `docker save` archive.
    Import {
        /// The archive or layout directory.
        file: PathBuf,
    },
    /// The images on the nodes.
    #[command(alias = "list")]
    Ls,
    /// Remove an image (and its blobs no other image uses).
    #[command(alias = "remove")]
    Rm {
        /// The image's name, as `image ls` shows it.
        name: String,
    },
}

/// `cairnctl members …`.
#[derive(Subcommand, Debug)]
pub enum MembersCommand {
    /// Remove a member (by id) from the store group.
    Remove {
        /// The member's id.
        id: u64,
    },
}

/// `cairnctl store …`.
#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Read one key, or every key with `--prefix`.
    Get {
        /// The key (or prefix).
        key: String,
        /// Treat the key as a prefix.
        #[arg(long)]
        prefix: bool,
    },
    /// Write a key.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
}

/// `cairnctl gen …`.
#[derive(Subcommand, Debug)]
pub enum GenCommand {
    /// A CA, an admin client file, and control-plane and worker machine configs.
    Config {
        /// The cluster's name.
        cluster_name: String,
        /// The cluster endpoint, e.g. https://10.5.0.2:6443.
        endpoint: String,
        /// Where to write controlplane.yaml, worker.yaml and cairnconfig.
        #[arg(long, default_value = ".")]
        output_dir: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
        /// The install disk for the node's state, e.g. /dev/vda.
        #[arg(long)]
        install_disk: Option<String>,
    },
    /// A client file for another person or tool, with a role of its own.
    Client {
        /// The certificate's Common Name (who it is for).
        name: String,
        /// os:admin, os:operator or os:reader.
        #[arg(long, default_value = "os:reader")]
        role: String,
        /// A control-plane machine config holding the cluster CA and its key.
        #[arg(long)]
        ca_from: PathBuf,
        /// Where to write the client file.
        #[arg(long)]
        output: PathBuf,
    },
}

/// `cairnctl service …`.
#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Stop and start a service again.
    Restart {
        /// The service.
        name: String,
    },
}

/// `cairnctl get …`.
#[derive(Subcommand, Debug)]
pub enum GetCommand {
    /// The running machine config (secrets redacted unless you are an admin).
    #[command(alias = "mc")]
    Machineconfig,
    /// The node's links, marked when the machine config names them.
    Links,
    /// The node's addresses, marked when the machine config asks for them; problems
    /// the network reconciler has are listed below.
    Addresses,
    /// The node's routes (main table) with who installed them.
    Routes,
}

/// `cairnctl cluster …`.
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Boot a local cluster of Cairn VMs and write its client context.
    Create(crate::provision::CreateOptions),
    /// Stop a local cluster's VMs and remove everything it made.
    Destroy {
        /// The cluster.
        #[arg(long, default_value = "cairn")]
        name: String,
        /// Where clusters keep their state (default: $CAIRN_CLUSTERS_DIR, else ~/.cairn/clusters).
        #[arg(long)]
        clusters_dir: Option<PathBuf>,
    },
}
