//! `cargo xtask bench api`: the Kubernetes API server over a one-node store on disk
//! (redb, fsync per Raft append) in this process, driven over HTTPS/2 with an admin
//! client certificate on loopback: creates of `--pods` pod objects from `--clients`
//! concurrent clients (throughput, p50/p99), lists of all of them (latency), and
//! `--watchers` watches that each see `--events` further creates (p99 from the
//! create's request to the event's arrival at every watcher). The anchor is the
//! Kubernetes SLO (p99 ≤ 1 s for mutating calls); the goals are p99 ≤ 50 ms for
//! writes, ≤ 200 ms for the full list and ≤ 100 ms for watch delivery.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use cairn_api::pki::Ca;
use cairn_apiserver::{ApiServer, ApiServerConfig};
use cairn_store::memnet::MemNetwork;
use cairn_store::node::{NodeOptions, StoreNode, default_raft_config};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http2::SendRequest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::sync::Mutex;

use crate::stats::{median, percentile};

/// The sizes of one run.
pub struct ApiLoad {
    /// Pods created in the write phase.
    pub pods: usize,
    /// Concurrent writers.
    pub clients: usize,
    /// Concurrent watchers.
    pub watchers: usize,
    /// Creates each watcher must see.
    pub events: usize,
}

const NAMESPACE: &str = "bench";

/// Runs the benchmark and prints its figures.
pub fn run(load: ApiLoad) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(load))
}

struct Client {
    send: SendRequest<Full<Bytes>>,
}

impl Client {
    async fn connect(
        addr: std::net::SocketAddr,
        tls: Arc<rustls::ClientConfig>,
    ) -> anyhow::Result<Self> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::IpAddress(addr.ip().into());
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await?;
        let (send, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await?;
        tokio::spawn(connection);
        Ok(Self { send })
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("https://127.0.0.1{path}"))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        self.send.ready().await?;
        Ok(self.send.send_request(request).await?)
    }

    /// A call whose answer must be 2xx; the body.
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Bytes> {
        let response = self.request(method, path, body).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "{method} {path}: {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok(bytes)
    }
}

fn pod(name: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]}
    }))
    .unwrap_or_default()
}

async fn run_async(load: ApiLoad) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let network = MemNetwork::new();
    let store = StoreNode::start(
        NodeOptions {
            id: 1,
            addr: "mem-1".into(),
            dir: dir.path().join("store"),
            token: "abcdef.0123456789abcdef".into(),
            raft: default_raft_config(),
            peers: Vec::new(),
            compaction: None,
        },
        network.factory(1),
        network.peers(1),
    )
    .await?;
    network.register(Arc::clone(&store));
    store.bootstrap().await?;
    store
        .wait_for_leader(Duration::from_secs(10))
        .await
        .context("no store leader")?;
    let ca = Ca::generate("bench")?;
    let serving = ca.issue_server("apiserver", &["127.0.0.1".into()], time::Duration::days(1))?;
    let server = ApiServer::start(
        ApiServerConfig {
            listen: "127.0.0.1:0".parse()?,
            ca_cert: ca.cert_pem().to_owned(),
            ca_key: Some(ca.key_pem().to_owned()),
            serving_cert: serving.cert_pem,
            serving_key: serving.key_pem,
            encryption_keys: Vec::new(),
            nodes: None,
        },
        Arc::clone(&store),
    )
    .await?;
    let admin = ca.issue_user("admin", Some("system:masters"), time::Duration::days(1))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes())?)?;
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(admin.cert_pem.as_bytes())?],
            PrivateKeyDer::from_pem_slice(admin.key_pem.as_bytes())?,
        )?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tls = Arc::new(tls);
    let addr = server.addr;

    // The server writes its defaults once the store has a leader; make the namespace.
    let mut setup = Client::connect(addr, Arc::clone(&tls)).await?;
    let namespace = serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(err) = setup
        .call("POST", "/api/v1/namespaces", Some(namespace.clone()))
        .await
    {
        if Instant::now() > deadline {
            return Err(err.context("creating the benchmark namespace"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pods_path = format!("/api/v1/namespaces/{NAMESPACE}/pods");

    // Writes.
    println!(
        "api: creating {} pods with {} clients (HTTP/2, one connection each)…",
        load.pods, load.clients
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..load.clients {
        let mut client = Client::connect(addr, Arc::clone(&tls)).await?;
        let next = Arc::clone(&next);
        let path = pods_path.clone();
        let total = load.pods;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let begun = Instant::now();
                client
                    .call("POST", &path, Some(pod(&format!("pod-{i:05}"))))
                    .await?;
                latencies.push(begun.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    let mut writes = Vec::new();
    for task in tasks {
        writes.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();

    // Lists.
    let mut lists = Vec::new();
    let mut listed = 0;
    for _ in 0..5 {
        let begun = Instant::now();
        let body = setup.call("GET", &pods_path, None).await?;
        lists.push(begun.elapsed().as_secs_f64() * 1000.0);
        let value: serde_json::Value = serde_json::from_slice(&body)?;
        listed = value["items"].as_array().map_or(0, Vec::len);
    }
    if listed != load.pods {
        bail!("the list returned {listed} pods, not {}", load.pods);
    }

    // Watch fan-out.
    println!(
        "api: {} watchers, {} creates each must see…",
        load.watchers, load.events
    );
    let list: serde_json::Value = serde_json::from_slice(
        &setup
            .call("GET", &format!("{pods_path}?limit=1"), None)
            .await?,
    )?;
    let from = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned();
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut watchers = Vec::new();
    for _ in 0..load.watchers {
        let mut client = Client::connect(addr, Arc::clone(&tls)).await?;
        let path =
            format!("{pods_path}?watch=true&resourceVersion={from}&allowWatchBookmarks=false");
        let sent = Arc::clone(&sent);
        let wanted = load.events;
        let response = client.request("GET", &path, None).await?;
        if !response.status().is_success() {
            bail!("watch: {}", response.status());
        }
        watchers.push(tokio::spawn(async move {
            let _keep = client;
            let mut body = response.into_body();
            let mut buffer = Vec::new();
            let mut latencies = Vec::new();
            while latencies.len() < wanted {
                let Some(frame) = body.frame().await else {
                    break;
                };
                let Ok(data) = frame?.into_data() else {
                    continue;
                };
                let arrived = Instant::now();
                buffer.extend_from_slice(&data);
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let event: serde_json::Value = serde_json::from_slice(&line)?;
                    let name = event["object"]["metadata"]["name"].as_str().unwrap_or("");
                    if event["type"] == "ADDED"
                        && let Some(at) = sent.lock().await.get(name)
                    {
                        latencies.push(arrived.duration_since(*at).as_secs_f64() * 1000.0);
                    }
                }
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    for i in 0..load.events {
        let name = format!("watched-{i:04}");
        sent.lock().await.insert(name.clone(), Instant::now());
        setup.call("POST", &pods_path, Some(pod(&name))).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut deliveries = Vec::new();
    for watcher in watchers {
        match tokio::time::timeout(Duration::from_secs(60), watcher).await {
            Ok(done) => deliveries.extend(done??),
            Err(_) => bail!("a watcher did not see every create within 60 s"),
        }
    }
    server.stop();
    store.shutdown().await;

    let row = |what: &str, values: &[f64], goal: f64| {
        let p99 = percentile(values, 99.0);
        println!(
            "  {what:<34} p50 {:>8.2} ms   p99 {:>8.2} ms   goal p99 ≤ {goal:>4.0} ms: {}   SLO 1000 ms: {:.3}×",
            median(values.to_vec()),
            p99,
            if p99 <= goal { "met" } else { "missed" },
            p99 / 1000.0,
        );
    };
    println!("\napi: one-node store on disk, in process, HTTPS/2 on loopback");
    println!(
        "  creates: {} in {:.2} s = {:.0} per second with {} clients",
        writes.len(),
        elapsed,
        writes.len() as f64 / elapsed,
        load.clients
    );
    row("create (POST pods)", &writes, 50.0);
    row(&format!("list of all {listed} pods"), &lists, 200.0);
    row(
        &format!("watch delivery to {} watchers", load.watchers),
        &deliveries,
        100.0,
    );
    println!("  watch events measured: {}", deliveries.len());
    Ok(())
}
