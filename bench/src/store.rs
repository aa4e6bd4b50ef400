//! `cargo xtask bench store`: a 3-node Cairn store against a 3-member etcd 3.4 on
//! loopback, both with mutual TLS and data on disk, under the same load generator:
//! N clients writing 256-byte keys and 1 KiB values at a target rate (etcd's
//! `check perf` loads s and m), then linearizable reads as fast as they go.
//! Throughput and p50/p99 latency for both, and Cairn/etcd ratios, from one run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use cairn_store::protocol::{ClientReply, ClientRequest};
use cairn_store::tcp::{StoreClient, TransportTls, request};
use cairn_store::types::{RangeRequest, Request, Txn};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use xtask::build;

/// A load: clients and a target write rate.
#[derive(Debug, Clone, Copy)]
struct Load {
    name: &'static str,
    clients: usize,
    rate: u32,
}

const LOADS: [Load; 2] = [
    Load {
        name: "s",
        clients: 50,
        rate: 150,
    },
    Load {
        name: "m",
        clients: 200,
        rate: 1000,
    },
];

/// Latencies of one phase.
struct Phase {
    ok: usize,
    failed: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index]
    }
}

/// Kills its processes when dropped.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Processes {
    /// CPU time (user + system) its processes have used so far, from `/proc/PID/stat`.
    fn cpu_time(&self) -> Duration {
        // sysconf(_SC_CLK_TCK) is 100 on every Linux this runs on.
        const TICKS_PER_SECOND: f64 = 100.0;
        let ticks: u64 = self
            .0
            .iter()
            .filter_map(|child| std::fs::read_to_string(format!("/proc/{}/stat", child.id())).ok())
            .filter_map(|stat| {
                // Fields after the command name (which may hold spaces) in parentheses.
                let rest = &stat[stat.rfind(')')? + 2..];
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let utime: u64 = fields.get(11)?.parse().ok()?;
                let stime: u64 = fields.get(12)?.parse().ok()?;
                Some(utime + stime)
            })
            .sum();
        Duration::from_secs_f64(ticks as f64 / TICKS_PER_SECOND)
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        let ca = cairn_api::pki::Ca::generate("bench")?;
        let node = ca.issue_node(
            "bench",
            &["127.0.0.1".into(), "localhost".into()],
            time::Duration::days(1),
        )?;
        std::fs::write(dir.join("ca.crt"), ca.cert_pem())?;
        std::fs::write(dir.join("node.crt"), &node.cert_pem)?;
        std::fs::write(dir.join("node.key"), &node.key_pem)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.path(name))?)
    }
}

fn start_cairn(root: &Path, certs: &Certs) -> anyhow::Result<(Processes, Vec<String>)> {
    build::cargo(&[
        "build",
        "--release",
        "--package",
        "cairn-store",
        "--bin",
        "cairn-store-node",
    ])?;
    let binary = build::target_dir().join("x86_64-unknown-linux-gnu/release/cairn-store-node");
    let mut children = Vec::new();
    let mut addrs = Vec::new();
    for id in 1..=3u64 {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let mut command = Command::new(&binary);
        command
            .args(["--id", &id.to_string(), "--listen", &addr])
            .arg("--dir")
            .arg(root.join(format!("cairn-{id}")))
            .arg("--ca")
            .arg(certs.path("ca.crt"))
            .arg("--cert")
            .arg(certs.path("node.crt"))
            .arg("--key")
            .arg(certs.path("node.key"))
            .args([
                "--token",
                "abcdef.0123456789abcdef",
                "--heartbeat-ms",
                "100",
            ])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(root.join(format!("cairn-{id}.log")))?);
        if id == 1 {
            command.arg("--bootstrap");
        } else {
            command.args(["--join", &format!("1={}", addrs[0])]);
        }
        let mut child = command.spawn().context("starting cairn-store-node")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        if !line.contains("ready") {
            bail!("cairn-store-node {id} did not start: {line:?}");
        }
        children.push(child);
        addrs.push(addr);
    }
    Ok((Processes(children), addrs))
}

fn start_etcd(root: &Path, certs: &Certs) -> anyhow::Result<(Processes, Vec<String>)> {
    let peers: Vec<(String, u16, u16)> = (1..=3)
        .map(|i| Ok((format!("e{i}"), free_port()?, free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let initial: Vec<String> = peers
        .iter()
        .map(|(name, _, peer)| format!("{name}=https://127.0.0.1:{peer}"))
        .collect();
    let mut children = Vec::new();
    let mut addrs = Vec::new();
    for (name, client, peer) in &peers {
        let tls = |flag: &str, file: &str| format!("--{flag}={}", certs.path(file).display());
        let child = Command::new("etcd")
            .arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", root.join(name).display()))
            .arg(format!("--listen-client-urls=https://127.0.0.1:{client}"))
            .arg(format!(
                "--advertise-client-urls=https://127.0.0.1:{client}"
            ))
            .arg(format!("--listen-peer-urls=https://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=https://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=bench")
            .args([
                tls("cert-file", "node.crt"),
                tls("key-file", "node.key"),
                tls("trusted-ca-file", "ca.crt"),
            ])
            .arg("--client-cert-auth")
            .args([
                tls("peer-cert-file", "node.crt"),
                tls("peer-key-file", "node.key"),
                tls("peer-trusted-ca-file", "ca.crt"),
            ])
            .arg("--peer-client-cert-auth")
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join(format!("{name}.log")))?)
            .spawn()
            .context("starting etcd (install etcd-server)")?;
        children.push(child);
        addrs.push(format!("127.0.0.1:{client}"));
    }
    Ok((Processes(children), addrs))
}

/// One store under test, as the load generator sees it.
#[derive(Clone)]
enum Target {
    Cairn {
        client: Arc<StoreClient>,
        addrs: Vec<String>,
    },
    Etcd {
        tls: Arc<rustls::ClientConfig>,
        addrs: Vec<String>,
    },
}

/// A connection of one load client.
enum Conn {
    Cairn(Box<cairn_store::tcp::Connection>),
    Etcd(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl Target {
    async fn connect(&self, index: usize) -> anyhow::Result<Conn> {
        match self {
            Target::Cairn { client, addrs } => {
                // Connected before the clock starts, as the etcd clients are.
                let mut connection = client.connect(&addrs[index % addrs.len()]);
                connection.connect().await?;
                Ok(Conn::Cairn(Box::new(connection)))
            }
            Target::Etcd { tls, addrs } => {
                let addr = &addrs[index % addrs.len()];
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let _ = tcp.set_nodelay(true);
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
                let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
                    .connect(name, tcp)
                    .await?;
                let (sender, connection) = hyper::client::conn::http2::handshake(
                    hyper_util::rt::TokioExecutor::new(),
                    hyper_util::rt::TokioIo::new(stream),
                )
                .await?;
                tokio::spawn(connection);
                Ok(Conn::Etcd(sender))
            }
        }
    }
}

/// Protobuf: a length-delimited field.
fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
    out.push((number << 3) | 2);
    let mut len = bytes.len();
    while len >= 0x80 {
        out.push((len as u8) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(bytes);
}

async fn grpc(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    method: &str,
    message: Vec<u8>,
) -> anyhow::Result<()> {
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
    body.extend_from_slice(&message);
    let request = hyper::Request::post(format!("https://127.0.0.1{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(body)))?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    if response.status() != 200 {
        bail!("HTTP {}", response.status());
    }
    let collected = response.into_body().collect().await?;
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .unwrap_or_else(|| "missing".into());
    if status != "0" {
        bail!("grpc-status {status}");
    }
    Ok(())
}

impl Conn {
    async fn put(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        match self {
            Conn::Cairn(connection) => {
                let reply = request(
                    connection,
                    ClientRequest::Write(Request::Txn(Txn::put(key, value))),
                    TIMEOUT,
                )
                .await?;
                match reply {
                    ClientReply::Write(_) => Ok(()),
                    other => bail!("unexpected {other:?}"),
                }
            }
            Conn::Etcd(sender) => {
                let mut message = Vec::new();
                field(&mut message, 1, key);
                field(&mut message, 2, value);
                grpc(sender, "/etcdserverpb.KV/Put", message).await
            }
        }
    }

    async fn get(&mut self, key: &[u8]) -> anyhow::Result<()> {
        match self {
            Conn::Cairn(connection) => {
                let read = ClientRequest::Read {
                    range: RangeRequest::key(key),
                    linearizable: true,
                };
                match request(connection, read, TIMEOUT).await? {
                    ClientReply::Read(_) => Ok(()),
                    other => bail!("unexpected {other:?}"),
                }
            }
            Conn::Etcd(sender) => {
                let mut message = Vec::new();
                field(&mut message, 1, key);
                grpc(sender, "/etcdserverpb.KV/Range", message).await
            }
        }
    }
}

fn key(client: usize, n: u64) -> Vec<u8> {
    let mut key = format!("/bench/{client:04}/{n:012}/").into_bytes();
    key.resize(256, b'k');
    key
}

/// Runs `clients` clients for `duration`, writing at `rate` in total (or reading as
/// fast as they can when `rate` is `None`).
async fn phase(
    target: &Target,
    clients: usize,
    rate: Option<u32>,
    duration: Duration,
    write: bool,
) -> anyhow::Result<Phase> {
    let value = vec![b'v'; 1024];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..clients {
        let target = target.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = target.connect(index).await?;
            let interval = rate.map(|r| Duration::from_secs_f64(clients as f64 / f64::from(r)));
            let mut latencies = Vec::new();
            let (mut ok, mut failed) = (0usize, 0usize);
            let mut n = 0u64;
            let mut next = Instant::now()
                + interval
                    .map(|i| i.mul_f64(index as f64 / clients as f64))
                    .unwrap_or_default();
            while started.elapsed() < duration {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += interval;
                }
                n += 1;
                let begun = Instant::now();
                let result = if write {
                    conn.put(&key(index, n), &value).await
                } else {
                    conn.get(&key(index, 1)).await
                };
                match result {
                    Ok(()) => {
                        ok += 1;
                        latencies.push(begun.elapsed());
                    }
                    Err(_) => failed += 1,
                }
            }
            Ok::<_, anyhow::Error>((ok, failed, latencies))
        }));
    }
    let mut total = Phase {
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for task in tasks {
        let (ok, failed, latencies) = task.await??;
        total.ok += ok;
        total.failed += failed;
        total.latencies.extend(latencies);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

async fn wait_writable(target: &Target) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let mut conn = target.connect(0).await?;
            conn.put(b"/bench/probe", b"x").await
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(err) if Instant::now() > deadline => {
                return Err(err.context("store never became writable"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Runs the benchmark.
pub fn run(seconds: u64) -> anyhow::Result<()> {
    xtask::deps::ensure_packages(&["etcd-server"])?;
    let root = tempfile::tempdir()?;

    let certs = Certs::new(root.path())?;
    let (cairn_processes, cairn_addrs) = start_cairn(root.path(), &certs)?;
    let (etcd_processes, etcd_addrs) = start_etcd(root.path(), &certs)?;
    let mut cairn_tls = TransportTls::new(
        &certs.read("ca.crt")?,
        &certs.read("node.crt")?,
        &certs.read("node.key")?,
    )?;
    cairn_tls.source = None;
    let mut etcd_tls = cairn_api::tls::client_config(
        &certs.read("ca.crt")?,
        &certs.read("node.crt")?,
        &certs.read("node.key")?,
    )?;
    etcd_tls.alpn_protocols = vec![b"h2".to_vec()];
    let cairn = Target::Cairn {
        client: Arc::new(StoreClient::new(Arc::new(cairn_tls))),
        addrs: cairn_addrs,
    };
    let etcd = Target::Etcd {
        tls: Arc::new(etcd_tls),
        addrs: etcd_addrs,
    };
    let duration = Duration::from_secs(seconds);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        wait_writable(&cairn).await?;
        wait_writable(&etcd).await?;
        println!(
            "store benchmark: 3 nodes each, mutual TLS, data on disk; keys 256 B, values 1 KiB; {seconds} s per phase"
        );
        println!(
            "{:<22} {:>12} {:>10} {:>10}   {:>12} {:>10} {:>10}   {:>7} {:>7}",
            "phase", "cairn op/s", "p50 ms", "p99 ms", "etcd op/s", "p50 ms", "p99 ms", "tput ×", "p99 ×"
        );
        let mut phases: Vec<(String, usize, Option<u32>, bool)> = LOADS
            .iter()
            .map(|l| (format!("write {} ({} clients, {}/s)", l.name, l.clients, l.rate), l.clients, Some(l.rate), true))
            .collect();
        phases.push(("linearizable reads (50)".into(), 50, None, false));
        for (name, clients, rate, write) in phases {
            // Interleaved: the same moment of this shared machine for both.
            let cpu_before = cairn_processes.cpu_time();
            let c = phase(&cairn, clients, rate, duration, write).await?;
            let cairn_cpu = cairn_processes.cpu_time().saturating_sub(cpu_before);
            let cpu_before = etcd_processes.cpu_time();
            let e = phase(&etcd, clients, rate, duration, write).await?;
            let etcd_cpu = etcd_processes.cpu_time().saturating_sub(cpu_before);
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "{:<22} {:>12.1} {:>10.2} {:>10.2}   {:>12.1} {:>10.2} {:>10.2}   {:>7.2} {:>7.2}",
                name,
                c.throughput(),
                ms(c.percentile(0.5)),
                ms(c.percentile(0.99)),
                e.throughput(),
                ms(e.percentile(0.5)),
                ms(e.percentile(0.99)),
                c.throughput() / e.throughput(),
                ms(c.percentile(0.99)) / ms(e.percentile(0.99)),
            );
            println!(
                "{:<22} server CPU per 1000 ops: cairn {:.2} s, etcd {:.2} s ({:.2}×)",
                "",
                cairn_cpu.as_secs_f64() * 1000.0 / c.ok.max(1) as f64,
                etcd_cpu.as_secs_f64() * 1000.0 / e.ok.max(1) as f64,
                (cairn_cpu.as_secs_f64() / c.ok.max(1) as f64)
                    / (etcd_cpu.as_secs_f64() / e.ok.max(1) as f64).max(f64::MIN_POSITIVE),
            );
            if c.failed + e.failed > 0 {
                println!("{:<22} failures: cairn {}, etcd {}", "", c.failed, e.failed);
            }
        }
        println!("goal: throughput × ≥ 1.00 and p99 × ≤ 1.00 (Cairn / etcd)");
        Ok::<_, anyhow::Error>(())
    })
}
