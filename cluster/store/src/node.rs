//! A store node: Raft over the redb storage, reads and watches on the local state
//! machine, writes and linearizable reads through the leader (forwarded when this node
//! is not it), and membership: bootstrap, join with the cluster token, removal.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{
    BasicNode, ChangeMembers, Config, RaftMetrics, RaftNetworkFactory, ServerState, SnapshotPolicy,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, warn};

use crate::StoreError;
use crate::log_store::LogStore;
use crate::protocol::{ClientError, ClientReply, ClientRequest, Reply, Rpc};
use crate::raft_types::{NodeId, Raft, TypeConfig};
use crate::state_machine::{Applied, StateMachine};
use crate::types::{Event, RangeRequest, RangeResponse, Request, Response};

/// Sends client requests to other nodes (for forwarding to the leader).
pub trait Peers: Send + Sync + 'static {
    /// Sends `request` to `target`; when `onward` it may forward it again (to its
    /// leader), otherwise it must serve it itself.
    fn forward(
        &self,
        target: NodeId,
        node: &BasicNode,
        request: ClientRequest,
        onward: bool,
    ) -> BoxFuture<'static, Result<ClientReply, ClientError>>;
}

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Its id in the group.
    pub id: NodeId,
    /// The address others reach it at.
    pub addr: String,
    /// Where its `log.redb` and `state.redb` live.
    pub dir: PathBuf,
    /// The token joining nodes must present.
    pub token: String,
    /// Raft timing and snapshot settings.
    pub raft: Config,
    /// Addresses of the other nodes meant to be in the group (asked before a
    /// bootstrap, so that a second one is refused).
    pub peers: Vec<String>,
}

/// Raft settings for nodes on a LAN or in VMs: 200 ms heartbeats, elections after
/// 1–2 s of silence, a snapshot every 5000 entries keeping 1000 entries behind it.
pub fn default_raft_config() -> Config {
    Config {
        cluster_name: "cairn".into(),
        heartbeat_interval: 200,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        install_snapshot_timeout: 5000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(5000),
        max_in_snapshot_log_to_keep: 1000,
        ..Default::default()
    }
}

/// One member as `members` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its id.
    pub id: NodeId,
    /// Its Raft address.
    pub addr: String,
    /// Voter (true) or learner.
    pub voter: bool,
    /// The last log index the leader knows it has (only on the leader).
    pub matched: Option<u64>,
}

/// The group as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    /// The node answering.
    pub this: NodeId,
    /// The current leader, if known.
    pub leader: Option<NodeId>,
    /// The current term.
    pub term: u64,
    /// The last log index applied on this node.
    pub applied: Option<u64>,
    /// Leader, follower, candidate or learner.
    pub state: String,
    /// The members.
    pub members: Vec<Member>,
}

/// A running store node.
pub struct StoreNode {
    id: NodeId,
    addr: String,
    known_peers: Vec<String>,
    token: String,
    raft: Raft,
    state: StateMachine,
    peers: Arc<dyn Peers>,
}

impl StoreNode {
    /// Opens the node's storage and starts Raft (not yet part of any group until it is
    /// bootstrapped or joins one, unless its storage says it already is).
    pub async fn start<N>(
        options: NodeOptions,
        network: N,
        peers: Arc<dyn Peers>,
    ) -> Result<Arc<Self>, StoreError>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        std::fs::create_dir_all(&options.dir).map_err(|e| StoreError::Storage(e.to_string()))?;
        let log = LogStore::open(&options.dir).map_err(|e| StoreError::Storage(e.to_string()))?;
        let state =
            StateMachine::open(&options.dir).map_err(|e| StoreError::Storage(e.to_string()))?;
        let config = options
            .raft
            .validate()
            .map_err(|e| StoreError::Storage(format!("raft config: {e}")))?;
        let raft = Raft::new(options.id, Arc::new(config), network, log, state.clone())
            .await
            .map_err(|e| StoreError::Storage(e.to_string()))?;
        Ok(Arc::new(Self {
            id: options.id,
            addr: options.addr,
            known_peers: options.peers,
            token: options.token,
            raft,
            state,
            peers,
        }))
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The Raft handle (metrics, tests).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Makes this node a one-member group. Refused if it is already in a group, or if
    /// any peer it can reach already is (it must join that group instead). Peers that
    /// cannot be reached are not asked.
    pub async fn bootstrap(&self) -> Result<(), ClientError> {
        for peer in &self.known_peers {
            let answer = self
                .peers
                .forward(
                    0,
                    &BasicNode { addr: peer.clone() },
                    ClientRequest::Members,
                    false,
                )
                .await;
            if let Ok(ClientReply::Members(members)) = answer
                && !members.members.is_empty()
            {
                return Err(ClientError::Refused(format!(
                    "{peer} already belongs to a store group (leader {:?}); this node joins it instead of bootstrapping",
                    members.leader
                )));
            }
        }
        let members = BTreeMap::from([(
            self.id,
            BasicNode {
                addr: self.addr.clone(),
            },
        )]);
        match self.raft.initialize(members).await {
            Ok(()) => {
                info!(id = self.id, addr = %self.addr, "store bootstrapped a new cluster");
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Err(ClientError::Refused(
                "this node is already part of a cluster; bootstrap happens once".into(),
            )),
            Err(err) => Err(ClientError::Refused(err.to_string())),
        }
    }

    /// Handles a message from the network.
    pub async fn handle(&self, rpc: Rpc) -> Reply {
        match rpc {
            Rpc::AppendEntries(request) => {
                Reply::AppendEntries(self.raft.append_entries(request).await)
            }
            Rpc::Vote(request) => Reply::Vote(self.raft.vote(request).await),
            Rpc::InstallSnapshot(request) => {
                Reply::InstallSnapshot(self.raft.install_snapshot(request).await)
            }
            Rpc::Client(request) => Reply::Client(self.client(request, true).await),
            // A request forwarded by a peer is not forwarded again (no loops).
            Rpc::Forwarded(request) => Reply::Client(self.client(request, false).await),
        }
    }

    /// Serves a client request, forwarding it to the leader when `may_forward`.
    pub async fn client(
        &self,
        request: ClientRequest,
        may_forward: bool,
    ) -> Result<ClientReply, ClientError> {
        match &request {
            ClientRequest::Write(write) => match self.raft.client_write(write.clone()).await {
                Ok(response) => Ok(ClientReply::Write(response.data)),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to))) => {
                    self.to_leader(to.leader_id, to.leader_node, request, may_forward)
                        .await
                }
                Err(err) => Err(ClientError::Unavailable(err.to_string())),
            },
            ClientRequest::Read {
                range,
                linearizable,
            } => {
                if *linearizable {
                    match self.raft.ensure_linearizable().await {
                        Ok(_) => {}
                        Err(RaftError::APIError(
                            openraft::error::CheckIsLeaderError::ForwardToLeader(to),
                        )) => {
                            return self
                                .to_leader(to.leader_id, to.leader_node, request, may_forward)
                                .await;
                        }
                        Err(err) => return Err(ClientError::NoLeader(err.to_string())),
                    }
                }
                Ok(ClientReply::Read(self.state.reader().range(range)?))
            }
            ClientRequest::Join { id, addr, token } => {
                if token != &self.token {
                    return Err(ClientError::Refused("wrong cluster token".into()));
                }
                if !self.is_leader() {
                    let (leader, node) = self.leader();
                    return self.to_leader(leader, node, request, may_forward).await;
                }
                self.add_voter(*id, addr).await?;
                Ok(ClientReply::Membership)
            }
            ClientRequest::Members => Ok(ClientReply::Members(self.members())),
            ClientRequest::Remove { id } => {
                if !self.is_leader() {
                    let (leader, node) = self.leader();
                    return self.to_leader(leader, node, request, may_forward).await;
                }
                let voters: std::collections::BTreeSet<NodeId> = [*id].into();
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters(voters), false)
                    .await
                    .map_err(|e| ClientError::Refused(e.to_string()))?;
                info!(id, "store member removed");
                Ok(ClientReply::Membership)
            }
        }
    }

    async fn add_voter(&self, id: NodeId, addr: &str) -> Result<(), ClientError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id)
        {
            debug!(id, "join of an existing voter: nothing to do");
            return Ok(());
        }
        self.raft
            .add_learner(
                id,
                BasicNode {
                    addr: addr.to_owned(),
                },
                true,
            )
            .await
            .map_err(|e| ClientError::Refused(e.to_string()))?;
        let voters: std::collections::BTreeSet<NodeId> = [id].into();
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(voters), false)
            .await
            .map_err(|e| ClientError::Refused(e.to_string()))?;
        info!(id, addr, "store member joined");
        Ok(())
    }

    fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        metrics.current_leader == Some(self.id) && metrics.state == ServerState::Leader
    }

    fn leader(&self) -> (Option<NodeId>, Option<BasicNode>) {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader;
        let node = leader.and_then(|id| {
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .cloned()
        });
        (leader, node)
    }

    async fn to_leader(
        &self,
        leader: Option<NodeId>,
        node: Option<BasicNode>,
        request: ClientRequest,
        may_forward: bool,
    ) -> Result<ClientReply, ClientError> {
        match (leader, node, may_forward) {
            (Some(id), Some(node), true) if id != self.id => {
                self.peers.forward(id, &node, request, false).await
            }
            (Some(id), _, false) => Err(ClientError::NoLeader(format!(
                "node {} is not the leader (node {id} is)",
                self.id
            ))),
            _ => Err(ClientError::NoLeader("no leader elected".into())),
        }
    }

    /// A write through the leader.
    pub async fn write(&self, request: Request) -> Result<Response, ClientError> {
        match self.client(ClientRequest::Write(request), true).await? {
            ClientReply::Write(response) => Ok(response),
            other => Err(ClientError::Unavailable(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// A read: linearizable through the leader, or serializable from this node.
    pub async fn read(
        &self,
        range: RangeRequest,
        linearizable: bool,
    ) -> Result<RangeResponse, ClientError> {
        match self
            .client(
                ClientRequest::Read {
                    range,
                    linearizable,
                },
                true,
            )
            .await?
        {
            ClientReply::Read(response) => Ok(response),
            other => Err(ClientError::Unavailable(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Asks the group (through `via`) to take this node in as a voter.
    pub async fn join(&self, via: NodeId, via_node: &BasicNode) -> Result<(), ClientError> {
        let request = ClientRequest::Join {
            id: self.id,
            addr: self.addr.clone(),
            token: self.token.clone(),
        };
        // The node asked may forward to the leader: send it as a client would.
        self.peers
            .forward(via, via_node, request, true)
            .await
            .map(drop)
    }

    /// The group as this node sees it.
    pub fn members(&self) -> Members {
        let metrics: RaftMetrics<NodeId, BasicNode> = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched: metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index),
            })
            .collect();
        Members {
            this: self.id,
            leader: metrics.current_leader,
            term: metrics.current_term,
            applied: metrics.last_applied.map(|l| l.index),
            state: format!("{:?}", metrics.state).to_lowercase(),
            members,
        }
    }

    /// The current revision and compaction point of this node's copy.
    pub fn revisions(&self) -> Result<(u64, u64), StoreError> {
        self.state.reader().revisions()
    }

    /// Follows changes to keys in `[start, end)` (`end` empty: to the end; `None`: the
    /// single key `start`) from revision `from` on, replaying stored history first.
    pub fn watch(
        &self,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        from: u64,
    ) -> Result<Watch, StoreError> {
        let (_, compacted) = self.revisions()?;
        if from < compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compacted,
            });
        }
        let (tx, rx) = mpsc::channel(256);
        let state = self.state.clone();
        let filter = KeyFilter { start, end };
        tokio::spawn(async move {
            // Subscribe before replaying so nothing falls between the two.
            let mut live = state.subscribe();
            let mut next = from.max(1);
            loop {
                let replay = match state.reader().events_since(next, 256) {
                    Ok(replay) => replay,
                    Err(err) => {
                        let _ = tx.send(Err(err)).await;
                        return;
                    }
                };
                if replay.is_empty() {
                    break;
                }
                for (revision, events) in replay {
                    next = revision + 1;
                    if !send_filtered(&tx, &filter, revision, events).await {
                        return;
                    }
                }
            }
            loop {
                match live.recv().await {
                    Ok(applied) => {
                        if applied.revision < next {
                            continue;
                        }
                        next = applied.revision + 1;
                        if !send_filtered(&tx, &filter, applied.revision, applied.events.clone())
                            .await
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Catch up from storage, then continue live.
                        loop {
                            let replay = match state.reader().events_since(next, 256) {
                                Ok(replay) => replay,
                                Err(err) => {
                                    let _ = tx.send(Err(err)).await;
                                    return;
                                }
                            };
                            if replay.is_empty() {
                                break;
                            }
                            for (revision, events) in replay {
                                next = revision + 1;
                                if !send_filtered(&tx, &filter, revision, events).await {
                                    return;
                                }
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Watch { rx })
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        if let Err(err) = self.raft.shutdown().await {
            warn!(error = %err, "store shutdown");
        }
    }

    /// Waits until a leader is known, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<NodeId> {
        let waited = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await;
        waited.ok().and_then(|m| m.current_leader)
    }
}

struct KeyFilter {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl KeyFilter {
    fn matches(&self, key: &[u8]) -> bool {
        match &self.end {
            None => key == self.start.as_slice(),
            Some(end) => key >= self.start.as_slice() && (end.is_empty() || key < end.as_slice()),
        }
    }
}

async fn send_filtered(
    tx: &mpsc::Sender<Result<Applied, StoreError>>,
    filter: &KeyFilter,
    revision: u64,
    events: Vec<Event>,
) -> bool {
    let events: Vec<Event> = events
        .into_iter()
        .filter(|e| filter.matches(&e.kv.key))
        .collect();
    if events.is_empty() {
        return true;
    }
    tx.send(Ok(Applied { revision, events })).await.is_ok()
}

/// A stream of changes: each item is one revision's matching events, in order.
pub struct Watch {
    rx: mpsc::Receiver<Result<Applied, StoreError>>,
}

impl Watch {
    /// The next revision's events; `None` when the node stops.
    pub async fn next(&mut self) -> Option<Result<Applied, StoreError>> {
        self.rx.recv().await
    }
}
