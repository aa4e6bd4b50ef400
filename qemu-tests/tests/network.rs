//! QEMU end-to-end: the network reconciler on a real PID 1. The node's configured
//! address, route and link state are broken by hand from a privileged host-network
//! pod (busybox `ip`) and come back by themselves; `GET /v1/network` shows links,
//! addresses and routes marked as configured; a live apply-config adds an address; a
//! `try` apply that cuts the machine API off (a route sending the client's replies
//! away) is rolled back when its timeout ends, and the node answers again.
//!
//! Run by `cargo xtask test` (needs root, QEMU and a built image).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use cairn_api::machine_api::{
    ApplyMode, ApplyRequest, ImageInfo, NetworkStatus, PodInfo, VersionInfo, paths,
};
use cairn_api::machine_config::{BondConfig, InterfaceConfig, RouteConfig, VlanConfig};
use cairn_api::pki::Role;
use cairn_runtime::test_images::BUSYBOX_IMAGE;
use cairnctl::client::NodeClient;
use qemu_tests::{Cluster, VmSpec, configs, eventually};

const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(60);

fn has_address(status: &NetworkStatus, link: &str, address: &str) -> bool {
    status
        .addresses
        .iter()
        .any(|a| a.link == link && a.address == address && a.configured)
}

fn has_route(status: &NetworkStatus, to: &str) -> bool {
    status.routes.iter().any(|r| r.to == to && r.configured)
}

/// Polls `GET /v1/network` until `done` holds for the status, failing after
/// `within` with the last one.
async fn status_until(
    reader: &NodeClient,
    what: &str,
    within: Duration,
    done: impl Fn(&NetworkStatus) -> bool,
) -> NetworkStatus {
    eventually(what, within, || async {
        let status: NetworkStatus = reader
            .get(paths::NETWORK)
            .await
            .map_err(|e| e.to_string())?;
        if done(&status) {
            Ok(status)
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await
}

#[test]
#[ignore = "boots QEMU: run by cargo xtask test"]
fn drift_is_repaired_and_a_try_that_cuts_the_node_off_is_rolled_back() {
    let cluster = Cluster::new("drift_is_repaired_and_a_try_that_cuts_the_node_off_is_rolled_back")
        .expect("cluster (needs root, QEMU and `cargo xtask image`)");
    let secrets = configs::secrets();
    let mut config = configs::node(&secrets, "node-1", "10.5.0.2/24", true, false);
    config.machine.network.interfaces[0]
        .routes
        .push(RouteConfig {
            to: "10.77.0.0/16".into(),
            via: Some("10.5.0.1".into()),
        });
    config.machine.pods = vec![serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "netadmin"},
        "spec": {
            "hostNetwork": true,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": BUSYBOX_IMAGE, "command": ["sleep", "3600"],
                            "securityContext": {"privileged": true}}]
        }
    })];
    let mut spec = VmSpec::new("node-1")
        .config(&configs::yaml(&config))
        .management();
    spec.memory_mib = 320;
    let vm = cluster.start(spec).expect("start");
    vm.wait_for(r"\bready elapsed_ms=", BOOT).expect("ready");
    let address = vm.api_address().to_owned();
    let archive = common::busybox_archive();
    cluster
        .in_namespace_async(|| async {
            let admin = NodeClient::new(&address, &configs::client(&secrets, Role::Admin)).unwrap();
            let reader =
                NodeClient::new(&address, &configs::client(&secrets, Role::Reader)).unwrap();
            let status = status_until(&reader, "the network status", BOOT, |status| {
                has_address(status, "eth0", "10.5.0.2/24") && has_route(status, "10.77.0.0/16")
            })
            .await;
            assert!(status.problems.is_empty(), "{:?}", status.problems);
            let eth0 = status.links.iter().find(|l| l.name == "eth0").unwrap();
            assert!(eth0.up && eth0.configured);

            // Break it by hand from a privileged host-network pod.
            let _: Vec<ImageInfo> = admin
                .post_bytes(paths::IMAGES, archive.clone(), "application/x-tar")
                .await
                .unwrap();
            let _: PodInfo = eventually("the netadmin pod running", STEP, || async {
                let pods: Vec<PodInfo> = admin.get(paths::PODS).await.map_err(|e| e.to_string())?;
                pods.into_iter()
                    .find(|p| p.name == "netadmin" && p.phase == "Running")
                    .ok_or_else(|| "not running yet".to_owned())
            })
            .await;
            let mut repairs = status.repairs;
            for command in [
                "ip route del 10.77.0.0/16",
                "ip addr del 10.5.0.2/24 dev eth0",
                "ip link set eth0 down",
            ] {
                let (code, out) =
                    common::exec_capture(&admin, "netadmin", &["sh", "-c", command], false).await;
                assert_eq!(code, 0, "{command}: {out}");
                // Repaired: a repair counted since, and everything back.
                let repaired = status_until(&reader, command, STEP, |status| {
                    status.repairs > repairs
                        && status.links.iter().any(|l| l.name == "eth0" && l.up)
                        && has_address(status, "eth0", "10.5.0.2/24")
                        && has_route(status, "10.77.0.0/16")
                })
                .await;
                repairs = repaired.repairs;
            }

            // A live apply adds an address, seen as configured.
            let mut more = config.clone();
            more.machine.network.interfaces[0]
                .addresses
                .push("10.5.0.12/24".into());
            let _: cairn_api::machine_api::ApplyResponse = admin
                .post(
                    paths::MACHINE_CONFIG,
                    &ApplyRequest {
                        config: configs::yaml(&more),
                        mode: ApplyMode::NoReboot,
                        try_timeout_secs: None,
                    },
                )
                .await
                .unwrap();
            status_until(&reader, "the new address configured", STEP, |status| {
                has_address(status, "eth0", "10.5.0.12/24")
            })
            .await;

            // A try that cuts the machine API off: replies to the management NIC's
            // gateway (where the forwarded connections come from) are sent to eth0.
            let mut cut = more.clone();
            cut.machine.network.interfaces[0].routes.push(RouteConfig {
                to: "10.0.2.2/32".into(),
                via: Some("10.5.0.99".into()),
            });
            let request = ApplyRequest {
                config: configs::yaml(&cut),
                mode: ApplyMode::Try,
                try_timeout_secs: Some(15),
            };
            // The answer may or may not make it out before the route applies.
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                admin.post::<_, cairn_api::machine_api::ApplyResponse>(
                    paths::MACHINE_CONFIG,
                    &request,
                ),
            )
            .await;
            let cut_off = tokio::time::timeout(
                Duration::from_secs(3),
                reader.get::<VersionInfo>(paths::VERSION),
            )
            .await;
            assert!(
                !matches!(cut_off, Ok(Ok(_))),
                "the node is cut off while the try runs"
            );
        })
        .expect("namespace");
    vm.wait_for(r"try apply not confirmed; rolled back", STEP)
        .expect("rollback");
    cluster
        .in_namespace_async(|| async {
            let reader =
                NodeClient::new(&address, &configs::client(&secrets, Role::Reader)).unwrap();
            // Reachable again, and the reconciler's view shows the route gone.
            let status = status_until(&reader, "the node reachable again", STEP, |status| {
                !status.routes.iter().any(|r| r.to == "10.0.2.2/32")
            })
            .await;
            assert!(
                has_address(&status, "eth0", "10.5.0.12/24"),
                "the confirmed config stays"
            );
        })
        .expect("namespace");
}

/// `eth0` becomes a port of the bond `bond0` (active-backup), which carries the
/// node's segment address and VLAN 100 with an address of its own.
fn bonded(mut config: cairn_api::MachineConfig, vlan_address: &str) -> cairn_api::MachineConfig {
    let eth0 = &mut config.machine.network.interfaces[0];
    let addresses = std::mem::take(&mut eth0.addresses);
    let routes = std::mem::take(&mut eth0.routes);
    config.machine.network.interfaces.push(InterfaceConfig {
        name: Some("bond0".into()),
        bond: Some(BondConfig {
            interfaces: vec!["eth0".into()],
            mode: "active-backup".into(),
            miimon: Some(100),
        }),
        addresses,
        routes,
        vlans: vec![VlanConfig {
            vlan_id: 100,
            addresses: vec![vlan_address.into()],
            ..Default::default()
        }],
        ..Default::default()
    });
    config
}

fn link_is<'a>(
    status: &'a NetworkStatus,
    name: &str,
) -> Option<&'a cairn_api::machine_api::LinkInfo> {
    status.links.iter().find(|l| l.name == name)
}

/// Two nodes whose segment address is on a bond and who share VLAN 100 over it: the
/// links are made at boot, node-1 reaches node-2 over the VLAN, a port set down and
/// the VLAN deleted by hand come back, and a live config without the VLAN removes it.
#[test]
#[ignore = "boots QEMU: run by cargo xtask test"]
fn bonds_and_vlans_are_made_repaired_and_removed() {
    let cluster = Cluster::new("bonds_and_vlans_are_made_repaired_and_removed")
        .expect("cluster (needs root, QEMU and `cargo xtask image`)");
    let secrets = configs::secrets();
    let mut one = bonded(
        configs::node(&secrets, "node-1", "10.5.0.2/24", true, false),
        "192.168.100.2/24",
    );
    one.machine.pods = vec![serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "netadmin"},
        "spec": {
            "hostNetwork": true,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": BUSYBOX_IMAGE, "command": ["sleep", "3600"],
                            "securityContext": {"privileged": true}}]
        }
    })];
    let two = bonded(
        configs::node(&secrets, "node-2", "10.5.0.3/24", false, false),
        "192.168.100.3/24",
    );
    let mut spec = VmSpec::new("node-1")
        .config(&configs::yaml(&one))
        .management();
    spec.memory_mib = 320;
    let vm = cluster.start(spec).expect("start node-1");
    let peer = cluster
        .start(VmSpec::new("node-2").config(&configs::yaml(&two)))
        .expect("start node-2");
    vm.wait_for(r"\bready elapsed_ms=", BOOT)
        .expect("node-1 ready");
    peer.wait_for(r"\bready elapsed_ms=", BOOT)
        .expect("node-2 ready");
    let address = vm.api_address().to_owned();
    let archive = common::busybox_archive();
    cluster
        .in_namespace_async(|| async {
            let admin = NodeClient::new(&address, &configs::client(&secrets, Role::Admin)).unwrap();
            let reader =
                NodeClient::new(&address, &configs::client(&secrets, Role::Reader)).unwrap();
            let made = |status: &NetworkStatus| {
                link_is(status, "bond0")
                    .is_some_and(|l| l.kind.as_deref() == Some("bond") && l.up && l.configured)
                    && link_is(status, "eth0")
                        .is_some_and(|l| l.controller.as_deref() == Some("bond0") && l.up)
                    && link_is(status, "bond0.100")
                        .is_some_and(|l| l.kind.as_deref() == Some("vlan") && l.configured)
                    && has_address(status, "bond0", "10.5.0.2/24")
                    && has_address(status, "bond0.100", "192.168.100.2/24")
            };
            let status = status_until(&reader, "the bond and the VLAN", BOOT, made).await;
            assert!(status.problems.is_empty(), "{:?}", status.problems);

            let _: Vec<ImageInfo> = admin
                .post_bytes(paths::IMAGES, archive.clone(), "application/x-tar")
                .await
                .unwrap();
            let _: PodInfo = eventually("the netadmin pod running", STEP, || async {
                let pods: Vec<PodInfo> = admin.get(paths::PODS).await.map_err(|e| e.to_string())?;
                pods.into_iter()
                    .find(|p| p.name == "netadmin" && p.phase == "Running")
                    .ok_or_else(|| "not running yet".to_owned())
            })
            .await;
            let ping = |target: &'static str| {
                let admin = &admin;
                async move {
                    eventually(&format!("node-2 answering at {target}"), STEP, || async {
                        let (code, out) = common::exec_capture(
                            admin,
                            "netadmin",
                            &["ping", "-c", "1", "-W", "2", target],
                            false,
                        )
                        .await;
                        if code == 0 { Ok(()) } else { Err(out) }
                    })
                    .await;
                }
            };
            ping("10.5.0.3").await;
            ping("192.168.100.3").await;

            // Broken by hand, repaired: the bond's port set down, the VLAN deleted.
            let mut repairs = status.repairs;
            for command in ["ip link set eth0 down", "ip link delete bond0.100"] {
                let (code, out) =
                    common::exec_capture(&admin, "netadmin", &["sh", "-c", command], false).await;
                assert_eq!(code, 0, "{command}: {out}");
                let repaired = status_until(&reader, command, STEP, |status| {
                    status.repairs > repairs && made(status)
                })
                .await;
                repairs = repaired.repairs;
            }
            ping("192.168.100.3").await;

            // A live config without the VLAN deletes it; the bond stays.
            let mut without = one.clone();
            without.machine.network.interfaces[2].vlans.clear();
            let _: cairn_api::machine_api::ApplyResponse = admin
                .post(
                    paths::MACHINE_CONFIG,
                    &ApplyRequest {
                        config: configs::yaml(&without),
                        mode: ApplyMode::NoReboot,
                        try_timeout_secs: None,
                    },
                )
                .await
                .unwrap();
            let status = status_until(&reader, "the VLAN removed", STEP, |status| {
                link_is(status, "bond0.100").is_none() && link_is(status, "bond0").is_some()
            })
            .await;
            assert!(status.problems.is_empty(), "{:?}", status.problems);
        })
        .expect("namespace");
}
