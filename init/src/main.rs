//! `cairn`: PID 1 of a Cairn node when the kernel starts it, otherwise a CLI
//! (`cairn node` runs the node role on an existing host).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use cairn_init::boot::NodeOptions;
use cairn_init::host::Host;
use cairn_init::{internal, logging, node, pid1};

#[derive(Parser)]
#[command(name = "cairn", version, about = "Cairn node OS")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node role on this (existing) Linux host, as an ordinary process.
    Node {
        /// The machine configuration (YAML); without one the node waits in maintenance
        /// mode for `cairnctl apply-config --insecure`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the machine API listens.
        #[arg(long, default_value = "[::]:50000")]
        api_listen: std::net::SocketAddr,
        /// Where to keep the accepted config across restarts (ephemeral without).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Where the replicated store listens (control planes).
        #[arg(long, default_value = "[::]:50001")]
        store_listen: std::net::SocketAddr,
        /// Where the Kubernetes API server listens (control planes).
        #[arg(long, default_value = "[::]:6443")]
        kube_api_listen: std::net::SocketAddr,
        /// Also run a test service (crashloop, orphans); repeatable.
        #[arg(long = "test-service")]
        test_services: Vec<String>,
        /// Log filter, e.g. `info` or `info,cairn_net=debug`.
        #[arg(long, default_value = logging::DEFAULT_FILTER)]
        log: String,
    },
    /// The per-container shim the runtime starts (`run <dir>`, `exec <dir> -- cmd…`).
    #[command(hide = true)]
    Shim {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Helpers the node runs as child processes.
    #[command(hide = true, subcommand)]
    Internal(Internal),
}

#[derive(Subcommand)]
enum Internal {
    /// Start children that outlive this process (orphans), then exit.
    SpawnOrphans {
        #[arg(long)]
        count: u32,
        #[arg(long)]
        linger_ms: u64,
    },
    /// Block SIGTERM and sleep until killed.
    IgnoreTerm,
    /// Sleep, then exit.
    Linger {
        #[arg(long)]
        ms: u64,
    },
}

fn main() -> ExitCode {
    let first_arg = std::env::args().nth(1);
    let is_subcommand = matches!(first_arg.as_deref(), Some("node" | "internal" | "shim"));
    if std::process::id() == 1 && !is_subcommand {
        // The kernel passes unknown undotted boot parameters as arguments; ignore them.
        pid1::main();
    }
    match Cli::parse().command {
        Command::Node {
            config,
            api_listen,
            state_dir,
            store_listen,
            kube_api_listen,
            test_services,
            log,
        } => run_hosted_node(
            NodeOptions {
                config_file: config,
                test_services,
                api_listen,
                state_dir,
                store_listen,
                kube_api_listen,
            },
            &log,
        ),
        Command::Shim { args } => {
            ExitCode::from(u8::try_from(cairn_runtime::shim::cli(&args)).unwrap_or(u8::MAX))
        }
        Command::Internal(Internal::SpawnOrphans { count, linger_ms }) => {
            match internal::spawn_orphans(count, Duration::from_millis(linger_ms)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("cairn internal spawn-orphans: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Internal(Internal::IgnoreTerm) => internal::ignore_term(),
        Command::Internal(Internal::Linger { ms }) => {
            internal::linger(Duration::from_millis(ms));
            ExitCode::SUCCESS
        }
    }
}

fn run_hosted_node(options: NodeOptions, log: &str) -> ExitCode {
    let started = Instant::now();
    let logs = logging::init(log);
    logging::install_panic_hook();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cairn")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cairn node: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let host = Host::Hosted;
    let action = runtime.block_on(node::run(host.clone(), options, logs, started));
    match host.finish(action) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}
