//! An in-memory network between store nodes of one process, with links that tests
//! can cut: the in-process tier of the store's tests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::FutureExt;
use futures::future::BoxFuture;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};

use crate::node::{Peers, StoreNode};
use crate::protocol::{ClientError, ClientReply, ClientRequest};
use crate::raft_types::{NodeId, TypeConfig};

#[derive(Default)]
struct State {
    nodes: BTreeMap<NodeId, Arc<StoreNode>>,
    cut: BTreeSet<(NodeId, NodeId)>,
}

/// The network: nodes by id, and the directed links currently cut.
#[derive(Default, Clone)]
pub struct MemNetwork {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, thiserror::Error)]
#[error("link {0} -> {1} is cut or node {1} is down")]
struct LinkDown(NodeId, NodeId);

impl MemNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a node reachable.
    pub fn register(&self, node: Arc<StoreNode>) {
        self.lock().nodes.insert(node.id(), node);
    }

    /// Makes a node unreachable (as if it crashed).
    pub fn unregister(&self, id: NodeId) -> Option<Arc<StoreNode>> {
        self.lock().nodes.remove(&id)
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: NodeId) {
        let mut state = self.lock();
        let others: Vec<NodeId> = state.nodes.keys().copied().filter(|n| *n != id).collect();
        for other in others {
            state.cut.insert((id, other));
            state.cut.insert((other, id));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    fn reach(&self, from: NodeId, to: NodeId) -> Result<Arc<StoreNode>, LinkDown> {
        let state = self.lock();
        if state.cut.contains(&(from, to)) {
            return Err(LinkDown(from, to));
        }
        state.nodes.get(&to).cloned().ok_or(LinkDown(from, to))
    }

    /// The Raft network factory of node `from`.
    pub fn factory(&self, from: NodeId) -> MemFactory {
        MemFactory {
            from,
            network: self.clone(),
        }
    }

    /// The forwarding peers of node `from`.
    pub fn peers(&self, from: NodeId) -> Arc<dyn Peers> {
        Arc::new(MemFactory {
            from,
            network: self.clone(),
        })
    }
}

/// Node `from`'s view of the network.
pub struct MemFactory {
    from: NodeId,
    network: MemNetwork,
}

impl RaftNetworkFactory<TypeConfig> for MemFactory {
    type Network = MemClient;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Self::Network {
        MemClient {
            from: self.from,
            target,
            network: self.network.clone(),
        }
    }
}

impl Peers for MemFactory {
    fn forward(
        &self,
        target: NodeId,
        _node: &BasicNode,
        request: ClientRequest,
        onward: bool,
    ) -> BoxFuture<'static, Result<ClientReply, ClientError>> {
        let reached = self.network.reach(self.from, target);
        async move {
            let node = reached.map_err(|e| ClientError::NotSent(e.to_string()))?;
            node.client(request, onward).await
        }
        .boxed()
    }
}

/// A client from one node to another.
pub struct MemClient {
    from: NodeId,
    target: NodeId,
    network: MemNetwork,
}

impl MemClient {
    fn node(&self) -> Result<Arc<StoreNode>, Unreachable> {
        self.network
            .reach(self.from, self.target)
            .map_err(|e| Unreachable::new(&e))
    }
}

impl RaftNetwork<TypeConfig> for MemClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let node = self.node().map_err(RPCError::Unreachable)?;
        node.raft()
            .append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let node = self.node().map_err(RPCError::Unreachable)?;
        node.raft()
            .install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let node = self.node().map_err(RPCError::Unreachable)?;
        node.raft()
            .vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}
