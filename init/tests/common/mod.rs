//! Shared by the host-tier tests: a `cairn node` process and its log lines.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use regex::Regex;

/// A `cairn node` process with its log lines, killed on drop if still running.
pub struct HostedNode {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl HostedNode {
    /// Starts `cairn node --config <config>` with test services.
    pub fn start(config: &Path, test_services: &[&str]) -> Self {
        let mut args = vec!["--config".to_owned(), config.display().to_string()];
        for service in test_services {
            args.push("--test-service".into());
            args.push((*service).to_owned());
        }
        Self::start_with(&args)
    }

    /// Starts `cairn node` with these arguments (the API on an ephemeral loopback port
    /// unless they say otherwise).
    pub fn start_with(args: &[String]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cairn"));
        command.arg("node");
        if !args.iter().any(|a| a == "--api-listen") {
            command.args(["--api-listen", "127.0.0.1:0"]);
        }
        if !args.iter().any(|a| a == "--kube-api-listen") {
            command.args(["--kube-api-listen", "127.0.0.1:0"]);
        }
        command.args(args);
        let mut child = command
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start cairn node");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// A line matching `pattern` among those already read, else the next one (for
    /// lines of services that start in no fixed order).
    pub fn seen_or_wait_for(&mut self, pattern: &str, timeout: Duration) -> String {
        let re = Regex::new(pattern).expect("pattern");
        match self.seen.iter().find(|line| re.is_match(line)) {
            Some(line) => line.clone(),
            None => self.wait_for(pattern, timeout),
        }
    }

    /// Waits for a line matching `pattern` and returns it.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> String {
        let re = Regex::new(pattern).expect("pattern");
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if re.is_match(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line matching {pattern:?} within {timeout:?}; log so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "cairn node did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl HostedNode {
    /// Waits until every pattern has matched a line, in any order; returns the lines.
    pub fn wait_for_each(&mut self, patterns: &[&str], timeout: Duration) -> Vec<String> {
        let res: Vec<Regex> = patterns
            .iter()
            .map(|p| Regex::new(p).expect("pattern"))
            .collect();
        let mut found: Vec<Option<String>> = vec![None; patterns.len()];
        let deadline = Instant::now() + timeout;
        while found.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!(
                    "not all of {patterns:?} within {timeout:?}; log so far:\n{}",
                    self.seen.join("\n")
                );
            };
            self.seen.push(line.clone());
            for (slot, re) in found.iter_mut().zip(&res) {
                if slot.is_none() && re.is_match(&line) {
                    *slot = Some(line.clone());
                }
            }
        }
        found.into_iter().flatten().collect()
    }

    /// Every line logged so far (for a failing test's report).
    pub fn log_so_far(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    /// Waits for the API's listening line and returns its address.
    pub fn api_address(&mut self, timeout: Duration) -> String {
        let line = self.wait_for(
            r"(machine API listening|maintenance: machine API waiting).* address=",
            timeout,
        );
        line.rsplit("address=")
            .next()
            .unwrap()
            .trim()
            .trim_matches('"')
            .to_owned()
    }
}

impl Drop for HostedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary file holding `text`.
pub fn config_file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), text).expect("write config");
    file
}

/// The number after `name=` in a log line.
pub fn field(line: &str, name: &str) -> u64 {
    let re = Regex::new(&format!(r"\b{name}=(\d+)")).expect("field pattern");
    re.captures(line)
        .and_then(|c| c[1].parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// A fresh cluster's secrets and a valid machine config for a hosted node.
pub fn secrets_and_config(
    hostname: &str,
) -> (cairn_api::bundle::Secrets, cairn_api::MachineConfig) {
    let secrets = cairn_api::bundle::Secrets::generate("test").expect("secrets");
    let config = secrets
        .machine_config(&cairn_api::bundle::NodeSpec {
            machine_type: cairn_api::machine_config::MachineType::Controlplane,
            hostname: hostname.to_owned(),
            addresses: vec!["10.5.0.2/24".into()],
            endpoint: "https://10.5.0.2:6443".into(),
            control_planes: vec!["10.5.0.2".into()],
            install_disk: None,
        })
        .expect("config");
    (secrets, config)
}

/// The pod `name` as the node's machine API lists it.
pub async fn pod_named(
    client: &cairnctl::client::NodeClient,
    name: &str,
) -> Option<cairn_api::machine_api::PodInfo> {
    let pods: Vec<cairn_api::machine_api::PodInfo> =
        client.get(cairn_api::machine_api::paths::PODS).await.ok()?;
    pods.into_iter().find(|p| p.name == name)
}

/// Polls pod `name` until `check` gives a value (within `within`); panics with the
/// last state seen.
pub async fn until_pod<T>(
    client: &cairnctl::client::NodeClient,
    name: &str,
    what: &str,
    within: Duration,
    check: impl Fn(&cairn_api::machine_api::PodInfo) -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(info) = pod_named(client, name).await {
            if let Some(value) = check(&info) {
                return value;
            }
            last = Some(info);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}; last: {last:#?}");
}
