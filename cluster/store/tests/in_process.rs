//! In-process tier: three store nodes over an in-memory network whose links the tests
//! cut. Leader failover, snapshot installation on a lagging node, watches across
//! compaction, membership rules.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use cairn_store::StoreError;
use cairn_store::memnet::MemNetwork;
use cairn_store::node::{CompactionPolicy, NodeOptions, StoreNode, default_raft_config};
use cairn_store::protocol::ClientError;
use cairn_store::types::{EventKind, RangeRequest, Request, Response, Txn};
use openraft::{BasicNode, SnapshotPolicy};

const TOKEN: &str = "abcdef.0123456789abcdef";
const T: Duration = Duration::from_secs(10);

struct Cluster {
    _dirs: Vec<tempfile::TempDir>,
    network: MemNetwork,
    nodes: Vec<Arc<StoreNode>>,
}

fn options(
    id: u64,
    dir: &tempfile::TempDir,
    snapshot_every: u64,
    compaction: Option<CompactionPolicy>,
) -> NodeOptions {
    let mut raft = default_raft_config();
    raft.heartbeat_interval = 50;
    raft.election_timeout_min = 300;
    raft.election_timeout_max = 600;
    raft.snapshot_policy = SnapshotPolicy::LogsSinceLast(snapshot_every);
    raft.max_in_snapshot_log_to_keep = 5;
    NodeOptions {
        id,
        addr: format!("mem-{id}"),
        dir: dir.path().to_owned(),
        token: TOKEN.into(),
        raft,
        peers: Vec::new(),
        compaction,
    }
}

async fn cluster(snapshot_every: u64) -> Cluster {
    cluster_with(snapshot_every, None).await
}

async fn cluster_with(snapshot_every: u64, compaction: Option<CompactionPolicy>) -> Cluster {
    let network = MemNetwork::new();
    let mut dirs = Vec::new();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let dir = tempfile::tempdir().unwrap();
        let node = StoreNode::start(
            options(id, &dir, snapshot_every, compaction),
            network.factory(id),
            network.peers(id),
        )
        .await
        .unwrap();
        network.register(Arc::clone(&node));
        dirs.push(dir);
        nodes.push(node);
    }
    nodes[0].bootstrap().await.unwrap();
    nodes[0].wait_for_leader(T).await.expect("leader");
    let first = BasicNode {
        addr: "mem-1".into(),
    };
    nodes[1].join(1, &first).await.unwrap();
    nodes[2].join(1, &first).await.unwrap();
    Cluster {
        _dirs: dirs,
        network,
        nodes,
    }
}

fn revision(response: Response) -> u64 {
    match response {
        Response::Txn(t) => t.revision,
        other => panic!("{other:?}"),
    }
}

async fn wait_applied(node: &StoreNode, revision: u64) {
    for _ in 0..200 {
        if node.revisions().unwrap().0 >= revision {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("node {} never reached revision {revision}", node.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_a_new_leader_takes_over_when_the_leader_dies() {
    let cluster = cluster(5000).await;
    let members = cluster.nodes[0].members();
    assert_eq!(
        members.members.iter().filter(|m| m.voter).count(),
        3,
        "{members:?}"
    );

    let mut last = 0;
    for i in 0..10 {
        // Writes through any node reach the leader.
        let node = &cluster.nodes[i % 3];
        last = revision(
            node.write(Request::Txn(Txn::put(format!("k{i}"), format!("v{i}"))))
                .await
                .unwrap(),
        );
    }
    assert_eq!(last, 10);
    for node in &cluster.nodes {
        wait_applied(node, 10).await;
        let value = node.read(RangeRequest::key("k9"), false).await.unwrap();
        assert_eq!(value.kvs[0].value, b"v9");
    }

    let leader = cluster.nodes[0].members().leader.unwrap();
    let dead = cluster.network.unregister(leader).unwrap();
    dead.shutdown().await;
    let survivors: Vec<_> = cluster.nodes.iter().filter(|n| n.id() != leader).collect();
    let mut new_leader = None;
    for _ in 0..200 {
        let seen = survivors[0].members().leader;
        if seen.is_some() && seen != Some(leader) {
            new_leader = seen;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let new_leader = new_leader.expect("a new leader among the survivors");
    assert_ne!(new_leader, leader);
    let after = revision(
        survivors[1]
            .write(Request::Txn(Txn::put("after", "failover")))
            .await
            .unwrap(),
    );
    assert_eq!(
        after, 11,
        "no acknowledged write was lost and revisions keep growing"
    );
    let read = survivors[0]
        .read(RangeRequest::prefix("k"), true)
        .await
        .unwrap();
    assert_eq!(read.kvs.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_node_catches_up_from_a_snapshot() {
    let cluster = cluster(20).await;
    cluster.network.isolate(3);
    for i in 0..100 {
        cluster.nodes[0]
            .write(Request::Txn(Txn::put(
                format!("k{}", i % 7),
                format!("v{i}"),
            )))
            .await
            .unwrap();
    }
    // Snapshots are built and the log purged in the background: wait for it.
    let mut purged = None;
    for _ in 0..400 {
        purged = cluster.nodes[0].raft().metrics().borrow().purged;
        if purged.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        purged.is_some(),
        "the leader purged its log behind a snapshot"
    );
    cluster.network.heal();
    wait_applied(&cluster.nodes[2], 100).await;
    let lagging = cluster.nodes[2].raft().metrics().borrow().clone();
    assert!(
        lagging.snapshot.is_some(),
        "node 3 installed a snapshot: {lagging:?}"
    );
    let theirs = cluster.nodes[2]
        .read(RangeRequest::prefix("k"), false)
        .await
        .unwrap();
    let ours = cluster.nodes[0]
        .read(RangeRequest::prefix("k"), false)
        .await
        .unwrap();
    assert_eq!(theirs.kvs, ours.kvs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_replay_then_follow_and_refuse_compacted_revisions() {
    let cluster = cluster(5000).await;
    let node = &cluster.nodes[0];
    for i in 0..5 {
        node.write(Request::Txn(Txn::put(format!("/pods/p{i}"), "x")))
            .await
            .unwrap();
    }
    node.write(Request::Txn(Txn::put("/other/o", "y")))
        .await
        .unwrap();
    let mut watch = cluster.nodes[1]
        .watch(b"/pods/".to_vec(), Some(b"/pods0".to_vec()), 2)
        .unwrap();
    for expected in 2..=5 {
        let applied = tokio::time::timeout(T, watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(applied.revision, expected);
    }
    node.write(Request::Txn(Txn::delete("/pods/p0")))
        .await
        .unwrap();
    let applied = tokio::time::timeout(T, watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(applied.revision, 7, "revision 6 touched another prefix");
    assert_eq!(applied.events[0].kind, EventKind::Delete);

    let compacted = node.write(Request::Compact { revision: 6 }).await.unwrap();
    assert_eq!(compacted, Response::Compacted { revision: 6 });
    wait_applied(&cluster.nodes[2], 7).await;
    for _ in 0..100 {
        if cluster.nodes[2].revisions().unwrap().1 == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match cluster.nodes[2].watch(b"/pods/".to_vec(), Some(b"/pods0".to_vec()), 3) {
        Err(StoreError::Compacted { compacted: 6, .. }) => {}
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a watch from a compacted revision must be refused"),
    }
    let mut old_read = RangeRequest::prefix("/pods/");
    old_read.revision = Some(4);
    assert!(matches!(
        node.read(old_read, false).await,
        Err(ClientError::Store(StoreError::Compacted { .. }))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_happens_once_and_joining_needs_the_token() {
    let cluster = cluster(5000).await;
    assert!(matches!(
        cluster.nodes[1].bootstrap().await,
        Err(ClientError::Refused(_))
    ));
    let dir = tempfile::tempdir().unwrap();
    let mut stranger_options = options(9, &dir, 5000, None);
    stranger_options.token = "wrong0.wrongwrongwrong00".into();
    let stranger = StoreNode::start(
        stranger_options,
        cluster.network.factory(9),
        cluster.network.peers(9),
    )
    .await
    .unwrap();
    cluster.network.register(Arc::clone(&stranger));
    let refused = stranger
        .join(
            2,
            &BasicNode {
                addr: "mem-2".into(),
            },
        )
        .await;
    assert!(
        matches!(refused, Err(ClientError::Refused(ref why)) if why.contains("token")),
        "{refused:?}"
    );
    assert_eq!(cluster.nodes[0].members().members.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_minority_serves_stale_reads_but_no_linearizable_ones() {
    let cluster = cluster(5000).await;
    cluster.nodes[0]
        .write(Request::Txn(Txn::put("k", "1")))
        .await
        .unwrap();
    for node in &cluster.nodes {
        wait_applied(node, 1).await;
    }
    let leader = cluster.nodes[0].members().leader.unwrap();
    let minority = cluster.nodes.iter().find(|n| n.id() != leader).unwrap();
    cluster.network.isolate(minority.id());
    let stale = minority.read(RangeRequest::key("k"), false).await.unwrap();
    assert_eq!(stale.kvs[0].value, b"1");
    let linearizable = tokio::time::timeout(
        Duration::from_secs(5),
        minority.read(RangeRequest::key("k"), true),
    )
    .await;
    assert!(
        !matches!(linearizable, Ok(Ok(_))),
        "an isolated node must not answer a linearizable read: {linearizable:?}"
    );
    let write = tokio::time::timeout(
        Duration::from_secs(5),
        minority.write(Request::Txn(Txn::put("k", "2"))),
    )
    .await;
    assert!(
        !matches!(write, Ok(Ok(_))),
        "an isolated node must not accept a write: {write:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_compacts_history_beyond_the_configured_window() {
    let cluster = cluster_with(
        5000,
        Some(CompactionPolicy {
            window: 5,
            interval: Duration::from_millis(100),
        }),
    )
    .await;
    for i in 0..20 {
        cluster.nodes[1]
            .write(Request::Txn(Txn::put("/k", format!("v{i}"))))
            .await
            .unwrap();
    }
    let current = cluster.nodes[0].revisions().unwrap().0;
    // Every member applies the leader's compaction: history keeps the last 5 revisions.
    for node in &cluster.nodes {
        let mut compacted = 0;
        for _ in 0..200 {
            compacted = node.revisions().unwrap().1;
            if compacted == current - 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(compacted, current - 5, "node {}", node.id());
        assert!(matches!(
            node.watch(b"/k".to_vec(), None, current - 6),
            Err(StoreError::Compacted { .. })
        ));
        let mut inside = RangeRequest::key("/k");
        inside.revision = Some(current - 5);
        let read = node.read(inside, false).await.unwrap();
        assert_eq!(read.kvs.len(), 1, "revisions in the window stay readable");
    }
}
