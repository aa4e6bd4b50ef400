//! The store's network: frames over TCP with mutual TLS. Only certificates of the
//! cluster CA with the `cairn:node` Organization are accepted. Each RPC has a deadline;
//! a broken connection is dropped and redialled on the next call; a malformed or
//! oversized frame closes that connection with a logged reason, and nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::mux::Mux;
use crate::node::{Peers, StoreNode};
use crate::protocol::{
    ClientError, ClientReply, ClientRequest, FrameError, Reply, Rpc, read_frame, write_frame,
};
use crate::raft_types::{NodeId, TypeConfig};

/// How long dialling and the handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Multiplexed requests one connection may have in flight on the serving side;
/// reading more waits for some to finish.
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 1024;

/// The node's TLS identity for the store network.
pub struct TransportTls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    /// The local address outgoing connections come from (default: the kernel's choice).
    pub source: Option<std::net::IpAddr>,
}

impl TransportTls {
    /// From the cluster CA and this node's `cairn:node` certificate and key (PEM).
    pub fn new(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self, cairn_api::tls::TlsConfigError> {
        Ok(Self {
            server: Arc::new(cairn_api::tls::server_config(ca_pem, cert_pem, key_pem)?),
            client: Arc::new(cairn_api::tls::client_config(ca_pem, cert_pem, key_pem)?),
            source: None,
        })
    }
}

/// A client-side TLS connection.
pub(crate) type Stream = tokio_rustls::client::TlsStream<TcpStream>;

/// Why a call to another node failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The node could not be reached (dial or handshake failed).
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// The address dialled.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The call was sent, but no answer came in time or the connection broke.
    #[error("no answer from {addr}: {reason}")]
    NoAnswer {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
}

/// One connection to one node, dialled on demand and reused.
pub struct Connection {
    addr: String,
    tls: Arc<rustls::ClientConfig>,
    source: Option<std::net::IpAddr>,
    stream: Option<Stream>,
}

impl Connection {
    /// A connection to `addr` (`host:port`), not yet dialled.
    pub fn new(addr: &str, tls: &TransportTls) -> Self {
        Self {
            addr: addr.to_owned(),
            tls: Arc::clone(&tls.client),
            source: tls.source,
            stream: None,
        }
    }

    async fn tcp_connect(&self) -> std::io::Result<TcpStream> {
        let Some(source) = self.source else {
            return TcpStream::connect(&self.addr).await;
        };
        let target = tokio::net::lookup_host(&self.addr)
            .await?
            .find(|a| a.is_ipv4() == source.is_ipv4())
            .ok_or_else(|| {
                std::io::Error::other(format!("{} has no address of {source}'s family", self.addr))
            })?;
        let socket = if source.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        socket.connect(target).await
    }

    /// Dials and completes the TLS handshake.
    pub(crate) async fn dial(&self) -> Result<Stream, CallError> {
        let unreachable = |reason: String| CallError::Unreachable {
            addr: self.addr.clone(),
            reason,
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, self.tcp_connect())
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let host = self
            .addr
            .rsplit_once(':')
            .map_or(self.addr.as_str(), |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => {
                ServerName::try_from(host.to_owned()).map_err(|e| unreachable(e.to_string()))?
            }
        };
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            TlsConnector::from(Arc::clone(&self.tls)).connect(name, tcp),
        )
        .await
        .map_err(|_| unreachable("TLS handshake timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))
    }

    /// Dials now (if not connected yet) rather than on the first call.
    pub async fn connect(&mut self) -> Result<(), CallError> {
        if self.stream.is_none() {
            self.stream = Some(self.dial().await?);
        }
        Ok(())
    }

    /// Sends one message and waits for its answer within `deadline`.
    pub async fn call(&mut self, rpc: &Rpc, deadline: Duration) -> Result<Reply, CallError> {
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => self.dial().await?,
        };
        let exchange = async {
            write_frame(&mut stream, rpc).await?;
            read_frame::<_, Reply>(&mut stream).await?.ok_or_else(|| {
                FrameError::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
            })
        };
        match tokio::time::timeout(deadline, exchange).await {
            Ok(Ok(reply)) => {
                self.stream = Some(stream);
                Ok(reply)
            }
            Ok(Err(err)) => Err(CallError::NoAnswer {
                addr: self.addr.clone(),
                reason: err.to_string(),
            }),
            Err(_) => Err(CallError::NoAnswer {
                addr: self.addr.clone(),
                reason: format!("timed out after {deadline:?}"),
            }),
        }
    }
}

/// Raft's network (and the forwarding peers) over TCP + mutual TLS.
#[derive(Clone)]
pub struct TcpNetwork {
    tls: Arc<TransportTls>,
    /// Multiplexed connections for forwarded requests, by peer address.
    forwarding: Arc<Mutex<HashMap<String, Arc<Mux>>>>,
    /// Deadline of forwarded client requests.
    pub forward_timeout: Duration,
}

impl TcpNetwork {
    /// The network of a node with this identity.
    pub fn new(tls: Arc<TransportTls>) -> Self {
        Self {
            tls,
            forwarding: Arc::default(),
            forward_timeout: Duration::from_secs(10),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for TcpNetwork {
    type Network = TcpClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        TcpClient {
            target,
            connection: Connection::new(&node.addr, &self.tls),
        }
    }
}

impl Peers for TcpNetwork {
    fn forward(
        &self,
        _target: NodeId,
        node: &BasicNode,
        request: ClientRequest,
        onward: bool,
    ) -> BoxFuture<'static, Result<ClientReply, ClientError>> {
        let mux = {
            let mut forwarding = self
                .forwarding
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(
                forwarding
                    .entry(node.addr.clone())
                    .or_insert_with(|| Arc::new(Mux::new(&node.addr, Arc::clone(&self.tls)))),
            )
        };
        let deadline = self.forward_timeout;
        async move { mux.call(request, onward, deadline).await }.boxed()
    }
}

/// Raft's client for one target node.
pub struct TcpClient {
    target: NodeId,
    connection: Connection,
}

fn transport_error<E: std::error::Error>(err: CallError) -> RPCError<NodeId, BasicNode, E> {
    match &err {
        CallError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&err)),
        CallError::NoAnswer { .. } => RPCError::Network(NetworkError::new(&err)),
    }
}

fn unexpected<E: std::error::Error>(reply: &Reply) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
        "unexpected reply {reply:?}"
    ))))
}

impl RaftNetwork<TypeConfig> for TcpClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .connection
            .call(&Rpc::AppendEntries(rpc), option.hard_ttl())
            .await
        {
            Ok(Reply::AppendEntries(result)) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(reply) => Err(unexpected(&reply)),
            Err(err) => Err(transport_error(err)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .connection
            .call(&Rpc::InstallSnapshot(rpc), option.hard_ttl())
            .await
        {
            Ok(Reply::InstallSnapshot(result)) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(reply) => Err(unexpected(&reply)),
            Err(err) => Err(transport_error(err)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .connection
            .call(&Rpc::Vote(rpc), option.hard_ttl())
            .await
        {
            Ok(Reply::Vote(result)) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(reply) => Err(unexpected(&reply)),
            Err(err) => Err(transport_error(err)),
        }
    }
}

/// Serves the store network on `listener` until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<TransportTls>,
    node: Arc<StoreNode>,
    stop: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(Arc::clone(&tls.server));
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(error = %err, "store: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let node = Arc::clone(&node);
        let stop = stop.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    info!(%peer, error = %err, "store: TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let organizations =
                cairn_api::tls::peer_organizations(stream.get_ref().1.peer_certificates());
            if !organizations
                .iter()
                .any(|o| o == cairn_api::pki::NODE_ORGANIZATION)
            {
                info!(%peer, ?organizations, "store: refused a certificate that is not a node's");
                return;
            }
            let (mut reader, writer) = tokio::io::split(stream);
            let writer = Arc::new(tokio::sync::Mutex::new(writer));
            let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION));
            loop {
                let rpc = tokio::select! {
                    () = stop.cancelled() => return,
                    read = read_frame::<_, Rpc>(&mut reader) => read,
                };
                let rpc = match rpc {
                    Ok(Some(rpc)) => rpc,
                    Ok(None) => return,
                    Err(err) => {
                        warn!(%peer, error = %err, "store: closing connection");
                        return;
                    }
                };
                if matches!(rpc, Rpc::Multiplexed { .. }) {
                    // Served concurrently; answered whenever it is done.
                    let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                        return;
                    };
                    let node = Arc::clone(&node);
                    let writer = Arc::clone(&writer);
                    tokio::spawn(async move {
                        let reply = node.handle(rpc).await;
                        if let Err(err) = write_frame(&mut *writer.lock().await, &reply).await {
                            debug!(%peer, error = %err, "store: reply not delivered");
                        }
                        drop(permit);
                    });
                    continue;
                }
                let reply = node.handle(rpc).await;
                if let Err(err) = write_frame(&mut *writer.lock().await, &reply).await {
                    debug!(%peer, error = %err, "store: reply not delivered");
                    return;
                }
            }
        });
    }
}

/// A client of the store network (tests, benchmarks, tools), with a node identity.
pub struct StoreClient {
    tls: Arc<TransportTls>,
}

impl StoreClient {
    /// A client with this identity.
    pub fn new(tls: Arc<TransportTls>) -> Self {
        Self { tls }
    }

    /// A reusable connection to one node.
    pub fn connect(&self, addr: &str) -> Connection {
        Connection::new(addr, &self.tls)
    }
}

/// Sends a client request over a connection and unwraps the answer.
pub async fn request(
    connection: &mut Connection,
    request: ClientRequest,
    deadline: Duration,
) -> Result<ClientReply, ClientError> {
    match connection.call(&Rpc::Client(request), deadline).await {
        Ok(Reply::Client(result)) => result,
        Ok(other) => Err(ClientError::Unavailable(format!(
            "unexpected reply {other:?}"
        ))),
        Err(err) => Err(client_error(err)),
    }
}

fn client_error(err: CallError) -> ClientError {
    match err {
        CallError::Unreachable { .. } => ClientError::NotSent(err.to_string()),
        CallError::NoAnswer { .. } => ClientError::Unavailable(err.to_string()),
    }
}
