//! A store node: Raft over the redb storage, reads and watches on the local state
//! machine, writes and linearizable reads through the leader (forwarded when this node
//! is not it), and membership: bootstrap, join with the cluster token, removal.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::error::{
    ChangeMembershipError, CheckIsLeaderError, ClientWriteError, InitializeError, RaftError,
};
use openraft::{
    BasicNode, ChangeMembers, Config, RaftMetrics, RaftNetworkFactory, ServerState, SnapshotPolicy,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
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
    /// How much history the leader keeps when it compacts; `None`: never on its own.
    pub compaction: Option<CompactionPolicy>,
}

/// Automatic compaction: every `interval` the leader compacts history older than the
/// last `window` revisions (etcd's revision-mode auto-compaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Revisions of history kept.
    pub window: u64,
    /// How often the leader checks.
    pub interval: Duration,
}

/// Compacts on the leader as `policy` says while the node is running.
async fn run_compactor(node: std::sync::Weak<StoreNode>, policy: CompactionPolicy) {
    let mut ticks = tokio::time::interval(policy.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(node) = node.upgrade() else {
            return;
        };
        if node.raft.metrics().borrow().running_state.is_err() {
            return;
        }
        if !node.is_leader() {
            continue;
        }
        let (current, compacted) = match node.revisions() {
            Ok(revisions) => revisions,
            Err(err) => {
                warn!(error = %err, "store: cannot read revisions to compact");
                continue;
            }
        };
        let target = current.saturating_sub(policy.window);
        if target <= compacted {
            continue;
        }
        match node.write(Request::Compact { revision: target }).await {
            Ok(_) => info!(revision = target, current, "store history compacted"),
            Err(err) => warn!(revision = target, error = %err, "store: compaction failed"),
        }
    }
}

/// Raft settings for nodes on a LAN or in VMs: 200 ms heartbeats, elections after
/// 1–2 s of silence, a snapshot every 10,000 entries keeping 1000 entries behind it.
pub fn default_raft_config() -> Config {
    Config {
        cluster_name: "cairn".into(),
        heartbeat_interval: 200,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        install_snapshot_timeout: 5000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(10_000),
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

/// What a leadership check answers: the node was leader (and has applied what was
/// committed when the check began), or why not.
type BarrierResult = Result<(), RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>>;

/// Confirms leadership for batches of linearizable reads. A read waits for a check that
/// *starts after* it arrived; one check (a heartbeat round to a quorum) then serves every
/// read queued while the previous one was in flight.
async fn run_read_barrier(
    raft: Raft,
    mut waiters: mpsc::UnboundedReceiver<oneshot::Sender<BarrierResult>>,
) {
    while let Some(first) = waiters.recv().await {
        let mut batch = vec![first];
        while let Ok(next) = waiters.try_recv() {
            batch.push(next);
        }
        let result = match raft.ensure_linearizable().await {
            Ok(_) => catch_up_with_own_log(&raft).await,
            Err(err) => Err(err),
        };
        for waiter in batch {
            let _ = waiter.send(result.clone());
        }
    }
}

/// How long a confirmed leader waits to apply its own log before a read gives up.
const READ_CATCH_UP: Duration = Duration::from_secs(5);
/// How long a linearizable read keeps asking a quorum to confirm the leader.
const READ_QUORUM_PATIENCE: Duration = Duration::from_secs(3);
/// The pause between those rounds.
const READ_QUORUM_RETRY: Duration = Duration::from_millis(100);

/// Waits until this leader has applied every entry in its log, after a leadership
/// check succeeded.
///
/// openraft's read index is the larger of its commit index and the first entry of the
/// leader's term. A leader that restarts and resumes its term (its vote was committed)
/// starts with the commit index of its state machine, so entries committed and
/// acknowledged before the crash but not applied (or not yet durable in the state
/// machine) lie above the read index, and the read would miss writes that clients saw
/// succeed. Every committed entry is in the leader's log, so the log's end bounds
/// them all; the entries up to it commit in this term as replication goes on.
async fn catch_up_with_own_log(raft: &Raft) -> BarrierResult {
    let (last_log, applied) = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        (
            metrics.last_log_index,
            metrics.last_applied.map(|l| l.index),
        )
    };
    if last_log <= applied {
        return Ok(());
    }
    match raft
        .wait(Some(READ_CATCH_UP))
        .applied_index_at_least(last_log, "a linearizable read")
        .await
    {
        Ok(_) => Ok(()),
        Err(openraft::metrics::WaitError::ShuttingDown) => {
            Err(RaftError::Fatal(openraft::error::Fatal::Stopped))
        }
        Err(openraft::metrics::WaitError::Timeout(..)) => Err(RaftError::APIError(
            CheckIsLeaderError::QuorumNotEnough(openraft::error::QuorumNotEnough {
                cluster: format!(
                    "this leader did not apply its log up to {} within {READ_CATCH_UP:?}",
                    last_log.unwrap_or_default()
                ),
                got: Default::default(),
            }),
        )),
    }
}

/// What a proposed write answers: its response, or why Raft refused it.
type ProposalResult = Result<Response, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>;

/// A write waiting to be proposed.
struct Proposal {
    request: Request,
    answer: oneshot::Sender<ProposalResult>,
}

/// Batches proposed to Raft at once; while one is in flight, writes queue up and go as
/// the next batch (group commit one level above the log). One measured best.
const PROPOSALS_IN_FLIGHT: usize = 1;
/// The most writes in one batch.
const MAX_BATCH_WRITES: usize = 256;
/// The most key and value bytes in one batch (well under the frame limit).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Proposes queued writes to Raft in batches. openraft appends (and fsyncs) one entry
/// per proposal, one after the other; a batch costs one entry for many writes, so a
/// burst of writes does not queue behind a line of fsyncs. A lone write goes alone, at
/// once.
async fn run_proposer(raft: Raft, mut queue: mpsc::UnboundedReceiver<Proposal>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(PROPOSALS_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut weight = first.request.weight();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_WRITES && weight < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(next) => {
                    weight += next.request.weight();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose(&raft, batch).await;
            drop(slot);
        });
    }
}

/// Proposes one batch and answers each of its writes.
async fn propose(raft: &Raft, mut batch: Vec<Proposal>) {
    if batch.len() == 1 {
        if let Some(only) = batch.pop() {
            let result = raft.client_write(only.request).await.map(|r| r.data);
            let _ = only.answer.send(result);
        }
        return;
    }
    let (requests, answers): (Vec<Request>, Vec<_>) =
        batch.into_iter().map(|p| (p.request, p.answer)).unzip();
    let count = requests.len();
    match raft.client_write(Request::Batch(requests)).await {
        Ok(written) => match written.data {
            Response::Batch(responses) if responses.len() == count => {
                for (answer, response) in answers.into_iter().zip(responses) {
                    let _ = answer.send(Ok(response));
                }
            }
            other => {
                // Cannot happen: a batch is answered by a batch of the same length.
                warn!(?other, "store: a batch got an answer of another shape");
                for answer in answers {
                    let _ = answer.send(Err(RaftError::Fatal(openraft::error::Fatal::Panicked)));
                }
            }
        },
        Err(err) => {
            for answer in answers {
                let _ = answer.send(Err(err.clone()));
            }
        }
    }
}

/// How often a join retries a membership change refused because another is under way
/// (200 ms apart).
const MEMBERSHIP_CHANGE_ATTEMPTS: u32 = 25;

/// A running store node.
pub struct StoreNode {
    id: NodeId,
    addr: String,
    known_peers: Vec<String>,
    token: String,
    raft: Raft,
    state: StateMachine,
    peers: Arc<dyn Peers>,
    read_barrier: mpsc::UnboundedSender<oneshot::Sender<BarrierResult>>,
    proposals: mpsc::UnboundedSender<Proposal>,
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
        let (read_barrier, waiters) = mpsc::unbounded_channel();
        tokio::spawn(run_read_barrier(raft.clone(), waiters));
        let (proposals, queue) = mpsc::unbounded_channel();
        tokio::spawn(run_proposer(raft.clone(), queue));
        let node = Arc::new(Self {
            read_barrier,
            proposals,
            id: options.id,
            addr: options.addr,
            known_peers: options.peers,
            token: options.token,
            raft,
            state,
            peers,
        });
        if let Some(policy) = options.compaction {
            tokio::spawn(run_compactor(Arc::downgrade(&node), policy));
        }
        Ok(node)
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
                // Answer once this node shows itself as a member, so that a bootstrap
                // asked of another node right after ours is refused.
                let id = self.id;
                let _ = self
                    .raft
                    .wait(Some(Duration::from_secs(5)))
                    .metrics(
                        |m| {
                            m.membership_config
                                .membership()
                                .voter_ids()
                                .any(|v| v == id)
                        },
                        "the bootstrapped membership",
                    )
                    .await;
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
            Rpc::Multiplexed {
                id,
                request,
                onward,
            } => Reply::Multiplexed {
                id,
                result: self.client(request, onward).await,
            },
        }
    }

    /// Serves a client request, forwarding it to the leader when `may_forward`.
    pub async fn client(
        &self,
        request: ClientRequest,
        may_forward: bool,
    ) -> Result<ClientReply, ClientError> {
        match &request {
            ClientRequest::Write(write) => match self.propose(write.clone()).await {
                Ok(response) => Ok(ClientReply::Write(response)),
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
                    // A round of heartbeats a loaded peer answers late (TCG VMs) is
                    // no reason to fail a read: ask again for a while. A read is
                    // safe to repeat; a deposed leader is told where to go instead.
                    let patience = tokio::time::Instant::now() + READ_QUORUM_PATIENCE;
                    loop {
                        match self.confirm_leadership().await {
                            Ok(()) => break,
                            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(to))) => {
                                return self
                                    .to_leader(to.leader_id, to.leader_node, request, may_forward)
                                    .await;
                            }
                            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(why)))
                                if tokio::time::Instant::now() < patience =>
                            {
                                debug!(%why, "no quorum confirmed this read yet; asking again");
                                tokio::time::sleep(READ_QUORUM_RETRY).await;
                            }
                            Err(err) => return Err(ClientError::NoLeader(err.to_string())),
                        }
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

    /// Proposes a write (batched with others queued meanwhile, see [`run_proposer`]).
    async fn propose(&self, request: Request) -> ProposalResult {
        let (answer, result) = oneshot::channel();
        if self.proposals.send(Proposal { request, answer }).is_err() {
            return Err(RaftError::Fatal(openraft::error::Fatal::Stopped));
        }
        result
            .await
            .unwrap_or(Err(RaftError::Fatal(openraft::error::Fatal::Stopped)))
    }

    /// Waits for a leadership check that began after this call (see
    /// [`run_read_barrier`]).
    async fn confirm_leadership(&self) -> BarrierResult {
        let (answer, result) = oneshot::channel();
        if self.read_barrier.send(answer).is_err() {
            return Err(RaftError::Fatal(openraft::error::Fatal::Stopped));
        }
        result
            .await
            .unwrap_or(Err(RaftError::Fatal(openraft::error::Fatal::Stopped)))
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
        // Nodes joining together each ask for a membership change; Raft takes one at a
        // time and refuses the others while it is in progress: wait for our turn.
        let mut attempts = 0;
        loop {
            let voters: std::collections::BTreeSet<NodeId> = [id].into();
            match self
                .raft
                .change_membership(ChangeMembers::AddVoterIds(voters), false)
                .await
            {
                Ok(_) => break,
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                ))) if attempts < MEMBERSHIP_CHANGE_ATTEMPTS => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => return Err(ClientError::Refused(err.to_string())),
            }
        }
        info!(id, addr, "store member joined");
        Ok(())
    }

    /// Whether this node is a voter of its group (not a learner, not outside one).
    pub fn is_voter(&self) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.id)
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
            if !catch_up(&state, &tx, &filter, &mut next).await {
                return;
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
                        if !catch_up(&state, &tx, &filter, &mut next).await {
                            return;
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

/// Sends every stored revision from `next` on (moving `next` past them); false when
/// the watch is over (reading failed, which the watcher is told, or it went away).
async fn catch_up(
    state: &StateMachine,
    tx: &mpsc::Sender<Result<Applied, StoreError>>,
    filter: &KeyFilter,
    next: &mut u64,
) -> bool {
    loop {
        let replay = match state.reader().events_since(*next, 256) {
            Ok(replay) => replay,
            Err(err) => {
                let _ = tx.send(Err(err)).await;
                return false;
            }
        };
        if replay.is_empty() {
            return true;
        }
        for (revision, events) in replay {
            *next = revision + 1;
            if !send_filtered(tx, filter, revision, events).await {
                return false;
            }
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
