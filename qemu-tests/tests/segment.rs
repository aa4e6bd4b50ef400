//! QEMU end-to-end: several nodes on one private L2 segment.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use qemu_tests::{Cluster, VmSpec, configs};

const BOOT: Duration = Duration::from_secs(180);

fn config(secrets: &cairn_api::bundle::Secrets, hostname: &str, address: &str) -> String {
    configs::yaml(&configs::node(secrets, hostname, address, false, false))
}

#[test]
#[ignore = "boots QEMU: run by cargo xtask test"]
fn three_nodes_on_one_segment_hear_each_other() {
    let cluster = Cluster::new("three_nodes_on_one_segment_hear_each_other")
        .expect("cluster (needs root, QEMU and `cargo xtask image`)");
    let names = ["node-1", "node-2", "node-3"];
    let secrets = configs::secrets();
    let vms: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            cluster
                .start(
                    VmSpec::new(name)
                        .config(&config(&secrets, name, &format!("10.5.0.{}/24", i + 2)))
                        .cmdline("cairn.test=beacon"),
                )
                .expect("start")
        })
        .collect();
    for vm in &vms {
        vm.wait_for(r"\bready elapsed_ms=", BOOT).expect("ready");
    }
    // Every node hears both others (in any order), over the shared segment.
    for (vm, me) in vms.iter().zip(names) {
        let others: Vec<&str> = names.iter().copied().filter(|n| *n != me).collect();
        let mut heard: Vec<&str> = Vec::new();
        while heard.len() < others.len() {
            let line = vm
                .wait_for(r#"beacon received from="node-\d""#, BOOT)
                .expect("a beacon from another node");
            heard.extend(
                others
                    .iter()
                    .filter(|o| line.contains(&format!(r#"from="{o}""#))),
            );
        }
        heard.sort();
        assert_eq!(heard, others, "{me} heard {heard:?}");
    }
}
