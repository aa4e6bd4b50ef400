//! Multi-process fault tests: three `cairn-store-node` processes on loopback, each
//! behind a proxy that can drop the traffic of chosen peers (partitions), clients
//! recording every operation, a nemesis that partitions, kills -9, restarts and wipes
//! nodes, and a checker that proves the history linearizable.
//!
//! The schedule runs `CAIRN_STORE_FAULT_ROUNDS` times (1 by default; `cargo xtask
//! store-faults --rounds N` runs longer).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod checker;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_store::protocol::{ClientError, ClientReply, ClientRequest};
use cairn_store::tcp::{StoreClient, TransportTls, request};
use cairn_store::types::{
    Compare, CompareResult, CompareTarget, Op as StoreOp, RangeRequest, Request, Response, Txn,
};
use checker::{Kind, Op, Outcome, check};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "abcdef.0123456789abcdef";
const KEYS: [&str; 3] = ["k0", "k1", "k2"];
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 100);

fn node_ip(slot: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, u8::try_from(slot).unwrap() + 10)
}

/// A proxy in front of one node that drops connections from blocked source addresses.
struct Proxy {
    addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    blocked: Arc<Mutex<BTreeSet<IpAddr>>>,
    live: Arc<Mutex<Vec<(IpAddr, tokio::task::AbortHandle)>>>,
}

impl Proxy {
    async fn start(ip: Ipv4Addr) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            target: Arc::default(),
            blocked: Arc::default(),
            live: Arc::default(),
        };
        let (target, blocked, live) = (
            proxy.target.clone(),
            proxy.blocked.clone(),
            proxy.live.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, peer)) = listener.accept().await else {
                    return;
                };
                let source = peer.ip();
                let to = *target.lock().unwrap();
                if blocked.lock().unwrap().contains(&source) || to.is_none() {
                    continue; // dropped: the connection closes
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to.unwrap()).await {
                        let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                live.lock().unwrap().push((source, task.abort_handle()));
            }
        });
        proxy
    }

    fn point_at(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = Some(target);
    }

    fn block(&self, source: IpAddr) {
        self.blocked.lock().unwrap().insert(source);
        for (from, task) in self.live.lock().unwrap().iter() {
            if *from == source {
                task.abort();
            }
        }
    }

    fn heal(&self) {
        self.blocked.lock().unwrap().clear();
    }
}

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Self {
        let ca = cairn_api::pki::Ca::generate("fault test").unwrap();
        std::fs::write(dir.join("ca.crt"), ca.cert_pem()).unwrap();
        let node = ca
            .issue_node("store", &["127.0.0.1".into()], time::Duration::days(1))
            .unwrap();
        std::fs::write(dir.join("node.crt"), &node.cert_pem).unwrap();
        std::fs::write(dir.join("node.key"), &node.key_pem).unwrap();
        Pki {
            dir: dir.to_owned(),
        }
    }

    fn tls(&self, source: IpAddr) -> Arc<TransportTls> {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap();
        let mut tls =
            TransportTls::new(&read("ca.crt"), &read("node.crt"), &read("node.key")).unwrap();
        tls.source = Some(source);
        Arc::new(tls)
    }
}

/// One node slot: its proxy, and the process currently running in it.
struct Slot {
    index: usize,
    id: u64,
    proxy: Proxy,
    child: Option<Child>,
    dir: PathBuf,
}

struct Cluster {
    root: tempfile::TempDir,
    pki: Pki,
    slots: Vec<Slot>,
    next_id: u64,
}

impl Cluster {
    async fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        let pki = Pki::new(root.path());
        let mut slots = Vec::new();
        for index in 0..3 {
            let proxy = Proxy::start(node_ip(index)).await;
            slots.push(Slot {
                index,
                id: index as u64 + 1,
                proxy,
                child: None,
                dir: root.path().join(format!("node{}", index + 1)),
            });
        }
        let mut cluster = Cluster {
            root,
            pki,
            slots,
            next_id: 4,
        };
        cluster.spawn(0, true, None);
        let first = format!("1={}", cluster.slots[0].proxy.addr);
        cluster.spawn(1, false, Some(&first));
        cluster.spawn(2, false, Some(&first));
        cluster
    }

    fn spawn(&mut self, index: usize, bootstrap: bool, join: Option<&str>) {
        let slot = &mut self.slots[index];
        let ip = node_ip(index);
        let mut command = Command::new(env!("CARGO_BIN_EXE_cairn-store-node"));
        command
            .args(["--id", &slot.id.to_string()])
            .arg("--dir")
            .arg(&slot.dir)
            .args(["--listen", &format!("{ip}:0")])
            .args(["--advertise", &slot.proxy.addr.to_string()])
            .args(["--source-ip", &ip.to_string()])
            .arg("--ca")
            .arg(self.pki.dir.join("ca.crt"))
            .arg("--cert")
            .arg(self.pki.dir.join("node.crt"))
            .arg("--key")
            .arg(self.pki.dir.join("node.key"))
            .args(["--token", TOKEN, "--heartbeat-ms", "100"])
            // Frequent snapshots: the wiped node catches up from one, under faults.
            .args(["--snapshot-every", "500"])
            .stdout(Stdio::piped())
            .stderr(
                std::fs::File::create(self.root.path().join(format!(
                    "node{}-{}.log",
                    index + 1,
                    slot.id
                )))
                .unwrap(),
            );
        if bootstrap {
            command.arg("--bootstrap");
        }
        if let Some(join) = join {
            command.args(["--join", join]);
        }
        let mut child = command.spawn().expect("start cairn-store-node");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let listen: SocketAddr = line
            .rsplit("listen=")
            .next()
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("no listen address in {line:?}"));
        slot.proxy.point_at(listen);
        slot.child = Some(child);
    }

    fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.slots[index].child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    /// Cuts `index` off from the other nodes, both ways.
    fn partition(&self, index: usize) {
        for other in self.slots.iter().filter(|s| s.index != index) {
            other.proxy.block(IpAddr::V4(node_ip(index)));
            self.slots[index]
                .proxy
                .block(IpAddr::V4(node_ip(other.index)));
        }
    }

    fn heal(&self) {
        for slot in &self.slots {
            slot.proxy.heal();
        }
    }

    fn addrs(&self) -> Vec<String> {
        self.slots
            .iter()
            .map(|s| s.proxy.addr.to_string())
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.slots.len() {
            self.kill(index);
        }
        if std::thread::panicking() {
            let kept = self.root.path().to_owned();
            std::mem::forget(std::mem::replace(
                &mut self.root,
                tempfile::tempdir().unwrap(),
            ));
            eprintln!("fault test state and node logs kept in {}", kept.display());
        }
    }
}

/// The slot of the current leader, asked of every reachable node.
async fn leader_slot(cluster: &Cluster, client: &StoreClient) -> Option<usize> {
    for _ in 0..40 {
        for addr in cluster.addrs() {
            let mut connection = client.connect(&addr);
            if let Ok(ClientReply::Members(members)) = request(
                &mut connection,
                ClientRequest::Members,
                Duration::from_secs(1),
            )
            .await
                && let Some(leader) = members.leader
                && let Some(slot) = cluster
                    .slots
                    .iter()
                    .find(|s| s.id == leader && s.child.is_some())
            {
                return Some(slot.index);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap()
    }
}

async fn client_loop(
    id: usize,
    client: Arc<StoreClient>,
    addrs: Vec<String>,
    recorder: Arc<Recorder>,
    until: Instant,
) {
    let mut n = 0u64;
    let mut last_seen: Option<String> = None;
    let mut connections: Vec<_> = addrs.iter().map(|a| client.connect(a)).collect();
    while Instant::now() < until {
        n += 1;
        let key = KEYS[(n as usize + id) % KEYS.len()].to_owned();
        let value = format!("c{id}-{n}");
        let target = (n as usize + id) % connections.len();
        let (kind, req) = match n % 3 {
            0 => (
                Kind::Write(value.clone()),
                ClientRequest::Write(Request::Txn(Txn::put(key.clone(), value.clone()))),
            ),
            1 => {
                let expected = last_seen.clone().unwrap_or_default();
                let txn = Txn {
                    compare: vec![Compare {
                        key: key.clone().into_bytes(),
                        target: CompareTarget::Value(expected.clone().into_bytes()),
                        result: CompareResult::Equal,
                    }],
                    success: vec![StoreOp::Put {
                        key: key.clone().into_bytes(),
                        value: value.clone().into_bytes(),
                    }],
                    failure: vec![],
                };
                (
                    Kind::Cas {
                        expected,
                        new: value.clone(),
                    },
                    ClientRequest::Write(Request::Txn(txn)),
                )
            }
            _ => (
                Kind::Read,
                ClientRequest::Read {
                    range: RangeRequest::key(key.clone()),
                    linearizable: true,
                },
            ),
        };
        let invoke = recorder.now();
        let reply = request(&mut connections[target], req, Duration::from_secs(2)).await;
        let complete = recorder.now();
        let outcome = match reply {
            Ok(ClientReply::Write(Response::Txn(t))) => Outcome::Ok {
                applied: t.succeeded,
                value: None,
                revision: t.revision,
            },
            Ok(ClientReply::Read(r)) => {
                let value = r
                    .kvs
                    .first()
                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                last_seen = value.clone().or(last_seen);
                Outcome::Ok {
                    applied: true,
                    value,
                    revision: r.revision,
                }
            }
            Ok(other) => panic!("unexpected reply {other:?}"),
            // The node refused before replicating anything.
            Err(ClientError::NoLeader(_))
            | Err(ClientError::Refused(_))
            | Err(ClientError::Store(_))
            | Err(ClientError::NotSent(_)) => Outcome::Fail,
            Err(ClientError::Unavailable(_)) => Outcome::Unknown,
        };
        recorder.ops.lock().unwrap().push(Op {
            key,
            kind,
            invoke,
            complete,
            outcome,
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_stays_linearizable_through_partitions_kills_and_a_wiped_node() {
    let rounds: u32 = std::env::var("CAIRN_STORE_FAULT_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let mut cluster = Cluster::start().await;
    eprintln!("fault test: node logs in {}", cluster.root.path().display());
    let client = Arc::new(StoreClient::new(cluster.pki.tls(IpAddr::V4(CLIENT_IP))));
    let recorder = Arc::new(Recorder {
        start: Instant::now(),
        ops: Mutex::new(Vec::new()),
    });

    for round in 0..rounds {
        eprintln!(
            "fault test: round {round} at {:?}",
            recorder.start.elapsed()
        );
        let until = Instant::now() + Duration::from_secs(26);
        let clients: Vec<_> = (0..3)
            .map(|id| {
                tokio::spawn(client_loop(
                    id,
                    client.clone(),
                    cluster.addrs(),
                    recorder.clone(),
                    until,
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The leader partitioned from the majority, then healed.
        let isolated = leader_slot(&cluster, &client).await.expect("a leader");
        cluster.partition(isolated);
        tokio::time::sleep(Duration::from_secs(4)).await;
        cluster.heal();
        tokio::time::sleep(Duration::from_secs(2)).await;
        // kill -9 of the leader, restarted on the same data.
        let killed = leader_slot(&cluster, &client).await.expect("a leader");
        cluster.kill(killed);
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.spawn(killed, false, None);
        tokio::time::sleep(Duration::from_secs(2)).await;
        // A minority partition: one follower cut off, then healed.
        let leader = leader_slot(&cluster, &client).await.expect("a leader");
        let follower = (leader + 1 + round as usize % 2) % 3;
        cluster.partition(follower);
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.heal();
        // Wipe a follower: kill it, remove it from the group, start a fresh one in its place.
        let leader = leader_slot(&cluster, &client).await.expect("a leader");
        let wiped = (leader + 1 + (round as usize + 1) % 2) % 3;
        cluster.kill(wiped);
        let old_id = cluster.slots[wiped].id;
        let survivor = cluster.addrs()[(wiped + 1) % 3].clone();
        let mut connection = client.connect(&survivor);
        let mut removed = false;
        for _ in 0..40 {
            if request(
                &mut connection,
                ClientRequest::Remove { id: old_id },
                Duration::from_secs(3),
            )
            .await
            .is_ok()
            {
                removed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(removed, "could not remove wiped node {old_id}");
        std::fs::remove_dir_all(&cluster.slots[wiped].dir).unwrap();
        cluster.slots[wiped].id = cluster.next_id;
        cluster.next_id += 1;
        let via = format!("{}={survivor}", cluster.slots[(wiped + 1) % 3].id);
        eprintln!(
            "fault test: wiped node rejoining at {:?}",
            recorder.start.elapsed()
        );
        cluster.spawn(wiped, false, Some(&via));
        eprintln!(
            "fault test: wiped node rejoined at {:?}",
            recorder.start.elapsed()
        );
        for handle in clients {
            handle.await.unwrap();
        }
    }

    // Heal everything and read every key linearizably once more.
    cluster.heal();
    let mut connection = client.connect(&cluster.addrs()[0]);
    for key in KEYS {
        let mut done = false;
        for _ in 0..40 {
            let invoke = recorder.now();
            let reply = request(
                &mut connection,
                ClientRequest::Read {
                    range: RangeRequest::key(key),
                    linearizable: true,
                },
                Duration::from_secs(2),
            )
            .await;
            let complete = recorder.now();
            if let Ok(ClientReply::Read(r)) = reply {
                let value = r
                    .kvs
                    .first()
                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                recorder.ops.lock().unwrap().push(Op {
                    key: key.to_owned(),
                    kind: Kind::Read,
                    invoke,
                    complete,
                    outcome: Outcome::Ok {
                        applied: true,
                        value,
                        revision: r.revision,
                    },
                });
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(done, "the healed cluster did not answer a read of {key}");
    }

    let history = recorder.ops.lock().unwrap().clone();
    let acknowledged = history
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Ok { .. }))
        .count();
    let unknown = history
        .iter()
        .filter(|o| o.outcome == Outcome::Unknown)
        .count();
    eprintln!(
        "history: {} operations, {acknowledged} acknowledged, {unknown} unknown",
        history.len()
    );
    assert!(
        acknowledged > 50,
        "too few operations succeeded to mean anything: {acknowledged}"
    );
    let checking = Instant::now();
    let anomalies = check(&history);
    eprintln!("fault test: history checked in {:?}", checking.elapsed());
    assert!(anomalies.is_empty(), "anomalies: {anomalies:#?}");
}
