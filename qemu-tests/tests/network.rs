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
use cairn_api::machine_config::RouteConfig;
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
