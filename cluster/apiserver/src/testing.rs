//! A one-node store and an API server in the calling process, on loopback, for the
//! in-process tests of the API server and of its clients (scheduler, controllers,
//! node agent). Behind the `testing` feature: nothing on a node uses it.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use cairn_api::kubeconfig::Credentials;
use cairn_api::pki::Ca;
use cairn_store::memnet::MemNetwork;
use cairn_store::node::{NodeOptions, StoreNode, default_raft_config};

use crate::{ApiServer, ApiServerConfig};

/// Why the test server did not start.
#[derive(Debug, thiserror::Error)]
pub enum TestServerError {
    /// A scratch directory could not be made.
    #[error("making a scratch directory")]
    Scratch(#[source] std::io::Error),
    /// The store failed.
    #[error("starting the one-node store: {0}")]
    Store(String),
    /// Certificates failed.
    #[error("making test certificates: {0}")]
    Pki(String),
    /// The API server failed.
    #[error("starting the API server")]
    Server(#[source] crate::StartError),
}

/// A store and an API server serving it, stopped when dropped.
pub struct TestServer {
    /// The server.
    pub server: ApiServer,
    /// The cluster CA that signed the serving certificate and signs clients'.
    pub ca: Ca,
    /// The store node.
    pub store: Arc<StoreNode>,
    /// The store's directory.
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a store (fast elections) and an API server with one secrets key.
    pub async fn start() -> Result<Self, TestServerError> {
        let dir = tempfile::tempdir().map_err(TestServerError::Scratch)?;
        let network = MemNetwork::new();
        let mut raft = default_raft_config();
        raft.heartbeat_interval = 50;
        raft.election_timeout_min = 150;
        raft.election_timeout_max = 300;
        let store = StoreNode::start(
            NodeOptions {
                id: 1,
                addr: "mem-1".into(),
                dir: dir.path().join("store"),
                token: "abcdef.0123456789abcdef".into(),
                raft,
                peers: Vec::new(),
                compaction: None,
            },
            network.factory(1),
            network.peers(1),
        )
        .await
        .map_err(|e| TestServerError::Store(e.to_string()))?;
        network.register(Arc::clone(&store));
        store
            .bootstrap()
            .await
            .map_err(|e| TestServerError::Store(e.to_string()))?;
        store
            .wait_for_leader(Duration::from_secs(10))
            .await
            .ok_or_else(|| TestServerError::Store("no leader within 10 s".into()))?;
        let pki = |e: cairn_api::pki::PkiError| TestServerError::Pki(e.to_string());
        let ca = Ca::generate("cairn-test").map_err(pki)?;
        let serving = ca
            .issue_server(
                "apiserver",
                &["127.0.0.1".into(), "localhost".into()],
                time::Duration::days(1),
            )
            .map_err(pki)?;
        let server = ApiServer::start(
            ApiServerConfig {
                listen: "127.0.0.1:0"
                    .parse()
                    .map_err(|_| TestServerError::Pki("127.0.0.1:0 is an address".into()))?,
                ca_cert: ca.cert_pem().to_owned(),
                ca_key: Some(ca.key_pem().to_owned()),
                serving_cert: serving.cert_pem,
                serving_key: serving.key_pem,
                encryption_keys: vec![(
                    "key1".into(),
                    base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
                )],
                nodes: None,
            },
            Arc::clone(&store),
        )
        .await
        .map_err(TestServerError::Server)?;
        Ok(Self {
            server,
            ca,
            store,
            dir,
        })
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.server.addr.port())
    }

    /// A kubeconfig (YAML) for `user` in `group`, with a day-long certificate.
    pub fn kubeconfig(&self, user: &str, group: Option<&str>) -> Result<String, TestServerError> {
        cairn_api::kubeconfig::render(
            &self.ca,
            "cairn",
            &self.url(),
            Credentials::Certificate {
                user,
                group,
                valid_for: time::Duration::days(1),
            },
        )
        .map_err(|e| TestServerError::Pki(e.to_string()))
    }

    /// A kubeconfig (YAML) that authenticates with a bearer token.
    pub fn token_kubeconfig(&self, token: &str) -> Result<String, TestServerError> {
        cairn_api::kubeconfig::render(&self.ca, "cairn", &self.url(), Credentials::Token(token))
            .map_err(|e| TestServerError::Pki(e.to_string()))
    }
}
