//! QEMU end-to-end: three control-plane VMs form the replicated store (bootstrap
//! once, the others join by themselves), replicate writes, and keep going when the
//! leader's VM powers off.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use cairn_api::machine_api::{Ack, KvList, KvPut, StoreMembers, paths};
use cairn_api::pki::Role;
use cairnctl::client::{ClientError, NodeClient};
use qemu_tests::{Cluster, VmSpec, configs, eventually};

const BOOT: Duration = Duration::from_secs(180);

#[test]
#[ignore = "boots QEMU: run by cargo xtask test"]
fn three_control_planes_replicate_and_survive_the_leader_powering_off() {
    let cluster =
        Cluster::new("three_control_planes_replicate_and_survive_the_leader_powering_off")
            .expect("cluster (needs root, QEMU and `cargo xtask image`)");
    let secrets = configs::secrets();
    let addresses = ["10.5.0.2", "10.5.0.3", "10.5.0.4"];
    let vms: Vec<_> = configs::control_planes(&secrets, &addresses)
        .into_iter()
        .enumerate()
        .map(|(i, config)| {
            cluster
                .start(
                    VmSpec::new(&format!("cp-{}", i + 1))
                        .config(&configs::yaml(&config))
                        .management(),
                )
                .expect("start")
        })
        .collect();
    for vm in &vms {
        vm.wait_for(r"\bready elapsed_ms=", BOOT).expect("ready");
    }
    let apis: Vec<String> = vms.iter().map(|vm| vm.api_address().to_owned()).collect();
    let admin = configs::client(&secrets, Role::Admin);
    let leader_id = cluster
        .in_namespace_async(|| async {
            let clients: Vec<NodeClient> = apis
                .iter()
                .map(|a| NodeClient::new(a, &admin).unwrap())
                .collect();
            let empty = serde_json::json!({});
            let _: Ack = eventually("bootstrap", BOOT, || {
                clients[0].post(paths::STORE_BOOTSTRAP, &empty)
            })
            .await;
            let members: StoreMembers = eventually("three voters", BOOT, || async {
                let m: StoreMembers = clients[0].get(paths::STORE_MEMBERS).await?;
                if m.members.iter().filter(|x| x.voter).count() == 3 {
                    Ok(m)
                } else {
                    Err(ClientError::Protocol {
                        node: "cp-1".into(),
                        reason: format!("{} members", m.members.len()),
                    })
                }
            })
            .await;
            let put = KvPut {
                key: "/cairn-test/first".into(),
                value: "one".into(),
            };
            let _: KvList = eventually("write through a follower", BOOT, || {
                clients[1].post(paths::STORE_KV, &put)
            })
            .await;
            let key = format!("{}?key=/cairn-test/first", paths::STORE_KV);
            let read: KvList =
                eventually("read from the third", BOOT, || clients[2].get(&key)).await;
            assert_eq!(read.entries[0].value, "one");
            members.leader.unwrap()
        })
        .expect("namespace");
    // The bootstrapper leads; find its VM from the member ids each node reports.
    let leader_index = cluster
        .in_namespace_async(|| async {
            let mut found = None;
            for (i, api) in apis.iter().enumerate() {
                let client = NodeClient::new(api, &admin).unwrap();
                let m: StoreMembers = client.get(paths::STORE_MEMBERS).await.unwrap();
                if m.this == leader_id {
                    found = Some(i);
                }
            }
            found
        })
        .expect("namespace")
        .expect("the leader is one of the VMs");
    vms[leader_index]
        .press_power_button()
        .expect("power button");
    vms[leader_index]
        .wait_exit(BOOT)
        .expect("the leader VM powered off");
    let survivors: Vec<String> = (0..3)
        .filter(|&i| i != leader_index)
        .map(|i| apis[i].clone())
        .collect();
    cluster
        .in_namespace_async(|| async {
            let clients: Vec<NodeClient> = survivors
                .iter()
                .map(|a| NodeClient::new(a, &admin).unwrap())
                .collect();
            let members: StoreMembers = eventually("a new leader", BOOT, || async {
                let m: StoreMembers = clients[0].get(paths::STORE_MEMBERS).await?;
                match m.leader {
                    Some(leader) if leader != leader_id => Ok(m),
                    _ => Err(ClientError::Protocol {
                        node: "survivor".into(),
                        reason: "no new leader yet".into(),
                    }),
                }
            })
            .await;
            assert_ne!(members.leader, Some(leader_id));
            let put = KvPut {
                key: "/cairn-test/second".into(),
                value: "two".into(),
            };
            let _: KvList = eventually("a write after the failover", BOOT, || {
                clients[0].post(paths::STORE_KV, &put)
            })
            .await;
            let prefix = format!("{}?prefix=/cairn-test/", paths::STORE_KV);
            let both: KvList = eventually("both keys", BOOT, || clients[1].get(&prefix)).await;
            let values: Vec<&str> = both.entries.iter().map(|e| e.value.as_str()).collect();
            assert_eq!(values, ["one", "two"]);
        })
        .expect("namespace");
}
