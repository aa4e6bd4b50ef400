//! Host tier: runs `cairn node` as a process and checks what a user sees on its log:
//! boot phases, ready, supervised restarts with growing backoff, no zombies, orderly
//! stop on SIGTERM, and maintenance (still stoppable) on a bad config.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use regex::Regex;

const VALID: &str = "apiVersion: cairn.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  type: worker\n  hostname: hosted-1\n";

/// A `cairn node` process with its log lines, killed on drop if still running.
struct HostedNode {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl HostedNode {
    fn start(config: &Path, test_services: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cairn"));
        command.arg("node").arg("--config").arg(config);
        for service in test_services {
            command.args(["--test-service", service]);
        }
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

    /// Waits for a line matching `pattern` and returns it.
    fn wait_for(&mut self, pattern: &str, timeout: Duration) -> String {
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

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
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

impl Drop for HostedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), text).expect("write config");
    file
}

fn field(line: &str, name: &str) -> u64 {
    let re = Regex::new(&format!(r"\b{name}=(\d+)")).expect("field pattern");
    re.captures(line)
        .and_then(|c| c[1].parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

const T: Duration = Duration::from_secs(20);

#[test]
fn hosted_node_boots_to_ready_and_stops_in_order_on_sigterm() {
    let config = config_file(VALID);
    let mut node = HostedNode::start(config.path(), &[]);
    node.wait_for(r"phase skipped phase=.early.", T);
    node.wait_for(r"machine config accepted", T);
    node.wait_for(r"\bready\b.*elapsed_ms=", T);
    node.signal("TERM");
    node.wait_for(r"shutdown: begin action=power-off cause=SIGTERM", T);
    node.wait_for(r"service stopped service=link-monitor", T);
    node.wait_for(r"shutdown: complete", T);
    assert!(node.wait_exit(T).success());
}

#[test]
fn crashing_service_is_restarted_with_growing_backoff_and_the_node_survives() {
    let config = config_file(VALID);
    let mut node = HostedNode::start(config.path(), &["crashloop"]);
    // No wait for `ready` first: the service may log before it.
    let mut delays = Vec::new();
    for restart in 1..=4 {
        let line = node.wait_for(
            &format!(r"service panicked: crashloop test service: deliberate panic; restarting after backoff service=crashloop restart={restart} "),
            T,
        );
        delays.push(field(&line, "delay_ms"));
    }
    assert!(
        delays.windows(2).all(|w| w[0] < w[1]),
        "delays must grow: {delays:?}"
    );
    // Still alive and obedient after the crashes.
    node.signal("INT");
    node.wait_for(r"shutdown: complete", T);
    assert!(node.wait_exit(T).success());
}

#[test]
fn orphans_of_children_are_reaped_so_no_zombies_accumulate() {
    let config = config_file(VALID);
    let mut node = HostedNode::start(config.path(), &["orphans"]);
    // No wait for `ready` first: the service may log before it.
    let mut last = String::new();
    for round in 1..=3 {
        last = node.wait_for(&format!(r"orphan round round={round} "), T);
        assert_eq!(field(&last, "zombies"), 0, "{last}");
    }
    assert!(field(&last, "orphans_reaped") >= 10, "{last}");
    node.signal("TERM");
    assert!(node.wait_exit(T).success());
}

#[test]
fn invalid_config_leaves_the_node_in_maintenance_naming_every_problem() {
    let config = config_file(
        "apiVersion: cairn.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  type: worker\n  hostname: Bad_Name\n  network:\n    interfaces:\n      - name: eth0\n        addresses: [10.0.0.300/24]\n",
    );
    let mut node = HostedNode::start(config.path(), &[]);
    let line = node.wait_for(r"maintenance: boot stopped", T);
    assert!(line.contains(r#"phase="config""#), "{line}");
    assert!(line.contains("machine.hostname"), "{line}");
    assert!(
        line.contains(
            r#"machine.network.interfaces[0].addresses[0]: "10.0.0.300/24" is not an IP prefix"#
        ),
        "{line}"
    );
    node.signal("TERM");
    node.wait_for(r"shutdown: complete", T);
    assert!(node.wait_exit(T).success());
}

#[test]
fn unknown_test_service_is_a_clear_maintenance_reason() {
    let config = config_file(VALID);
    let mut node = HostedNode::start(config.path(), &["nosuch"]);
    let line = node.wait_for(r"maintenance: boot stopped", T);
    assert!(line.contains(r#"unknown test service "nosuch""#), "{line}");
    node.signal("TERM");
    assert!(node.wait_exit(T).success());
}

#[test]
fn sigpwr_stops_the_node_and_a_child_ignoring_sigterm_is_killed() {
    let config = config_file(VALID);
    let mut node = HostedNode::start(config.path(), &["stubborn"]);
    node.wait_for(r"stubborn child started", T);
    node.signal("PWR");
    node.wait_for(r"shutdown: begin action=power-off cause=SIGPWR", T);
    node.wait_for(r"processes ignored SIGTERM; killing them left=1 ", T);
    node.wait_for(r"shutdown: complete", T);
    assert!(node.wait_exit(T).success());
}
