//! `cairn-store-node`: one store node as a process of its own, for the multi-process
//! fault tests and the store benchmark. (On a Cairn machine the store runs inside
//! `cairn`.)

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn_store::node::{CompactionPolicy, NodeOptions, StoreNode, default_raft_config};
use cairn_store::tcp::{TcpNetwork, TransportTls, serve};
use clap::Parser;
use openraft::BasicNode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "Run one Cairn store node")]
struct Args {
    /// Node id in the group.
    #[arg(long)]
    id: u64,
    /// Data directory.
    #[arg(long)]
    dir: PathBuf,
    /// Where to listen.
    #[arg(long)]
    listen: String,
    /// The address others dial (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// Source address of outgoing connections.
    #[arg(long)]
    source_ip: Option<IpAddr>,
    /// Cluster CA certificate (PEM file).
    #[arg(long)]
    ca: PathBuf,
    /// This node's certificate (PEM file, Organization cairn:node).
    #[arg(long)]
    cert: PathBuf,
    /// Its key (PEM file).
    #[arg(long)]
    key: PathBuf,
    /// The join token.
    #[arg(long)]
    token: String,
    /// Start a new cluster with this node.
    #[arg(long)]
    bootstrap: bool,
    /// Join the cluster through this member (id=address).
    #[arg(long)]
    join: Option<String>,
    /// Raft heartbeat interval, ms (elections after 5 to 10 of them).
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Build a snapshot (and purge the log behind it) after this many log entries
    /// (default: the store's default).
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// Revisions of history the leader keeps when it compacts (0: never compacts).
    #[arg(long, default_value_t = 10_000)]
    compaction_window: u64,
    /// How often the leader compacts, in seconds.
    #[arg(long, default_value_t = 300)]
    compaction_interval_secs: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let mut tls = TransportTls::new(&read(&args.ca)?, &read(&args.cert)?, &read(&args.key)?)?;
    tls.source = args.source_ip;
    let tls = Arc::new(tls);
    let network = TcpNetwork::new(Arc::clone(&tls));
    let mut raft = default_raft_config();
    raft.heartbeat_interval = args.heartbeat_ms;
    raft.election_timeout_min = args.heartbeat_ms * 5;
    raft.election_timeout_max = args.heartbeat_ms * 10;
    if let Some(every) = args.snapshot_every {
        raft.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(every);
    }
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| args.listen.clone());
    let node = StoreNode::start(
        NodeOptions {
            id: args.id,
            addr: advertise,
            dir: args.dir.clone(),
            token: args.token.clone(),
            raft,
            peers: Vec::new(),
            compaction: (args.compaction_window > 0).then(|| CompactionPolicy {
                window: args.compaction_window,
                interval: Duration::from_secs(args.compaction_interval_secs.max(1)),
            }),
        },
        network.clone(),
        Arc::new(network),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let listening = listener.local_addr()?;
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, tls, Arc::clone(&node), stop.clone()));
    if args.bootstrap {
        node.bootstrap().await?;
    }
    if let Some(join) = &args.join {
        let (id, addr) = join.split_once('=').context("--join is id=address")?;
        let via: u64 = id.parse().context("--join id")?;
        loop {
            match node
                .join(
                    via,
                    &BasicNode {
                        addr: addr.to_owned(),
                    },
                )
                .await
            {
                Ok(()) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "join failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    println!("store node {} ready listen={listening}", args.id);
    std::future::pending::<()>().await;
    Ok(())
}
