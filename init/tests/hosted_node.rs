//! Host tier: runs `cairn node` as a process and checks what a user sees on its log:
//! boot phases, ready, supervised restarts with growing backoff, no zombies, orderly
//! stop on SIGTERM, and maintenance (still stoppable) on a bad config.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{HostedNode, config_file, field, secrets_and_config};

fn valid() -> String {
    secrets_and_config("hosted-1").1.to_yaml().expect("yaml")
}

const T: Duration = Duration::from_secs(20);

#[test]
fn hosted_node_boots_to_ready_and_stops_in_order_on_sigterm() {
    let config = config_file(&valid());
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
    let config = config_file(&valid());
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
    let config = config_file(&valid());
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
    let mut text = valid().replace("hostname: hosted-1", "hostname: Bad_Name");
    text = text.replace("- 10.5.0.2/24", "- 10.0.0.300/24");
    let config = config_file(&text);
    let mut node = HostedNode::start(config.path(), &[]);
    let line = node.wait_for(r"maintenance: waiting for a machine config", T);
    assert!(line.contains("machine config has 2 problem(s)"), "{line}");
    assert!(line.contains("machine.hostname"), "{line}");
    assert!(
        line.contains(
            r#"machine.network.interfaces[0].addresses[0]: "10.0.0.300/24" is not an IP prefix"#
        ),
        "{line}"
    );
    node.wait_for(r"maintenance: machine API waiting", T);
    node.signal("TERM");
    node.wait_for(r"shutdown: complete", T);
    assert!(node.wait_exit(T).success());
}

#[test]
fn unknown_test_service_is_a_clear_maintenance_reason() {
    let config = config_file(&valid());
    let mut node = HostedNode::start(config.path(), &["nosuch"]);
    let line = node.wait_for(r"maintenance: boot stopped", T);
    assert!(line.contains(r#"unknown test service "nosuch""#), "{line}");
    node.signal("TERM");
    assert!(node.wait_exit(T).success());
}

#[test]
fn sigpwr_stops_the_node_and_a_child_ignoring_sigterm_is_killed() {
    let config = config_file(&valid());
    let mut node = HostedNode::start(config.path(), &["stubborn"]);
    node.wait_for(r"stubborn child started", T);
    node.signal("PWR");
    node.wait_for(r"shutdown: begin action=power-off cause=SIGPWR", T);
    node.wait_for(r"processes ignored SIGTERM; killing them left=1 ", T);
    node.wait_for(r"shutdown: complete", T);
    assert!(node.wait_exit(T).success());
}
