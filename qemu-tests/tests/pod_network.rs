//! QEMU end-to-end: the pod network across three control-plane VMs on one segment.
//! Pods wait for the network until the store is bootstrapped; then each node claims a
//! pod CIDR, starts its bridge and routes the others' CIDRs through them. A pod on the
//! first node reaches the pod on the third by its pod IP and the third's pod sees the
//! first's own address (no masquerade inside the cluster's pod subnet), and back.
//! Drift repair of those routes is covered by the host tests (a VM has no shell to
//! remove one by hand).
//!
//! Run by `cargo xtask test` (needs root, QEMU and a built image).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use cairn_api::machine_api::{Ack, ImageInfo, PodInfo, paths};
use cairn_api::pki::Role;
use cairn_runtime::test_images::BUSYBOX_IMAGE;
use cairnctl::client::NodeClient;
use qemu_tests::{Cluster, VmSpec, configs, eventually};

const BOOT: Duration = Duration::from_secs(180);

/// The static pod each node runs: a web server on 8080 answering with its name and
/// the address the request came from (busybox httpd's CGI sees `REMOTE_ADDR`).
fn server(name: &str) -> serde_json::Value {
    let script = format!(
        "mkdir -p /www/cgi-bin; printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho {name} saw $REMOTE_ADDR\\n' > /www/cgi-bin/who; chmod +x /www/cgi-bin/who; exec httpd -f -p 8080 -h /www"
    );
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", script]}]
        }
    })
}

/// The answer without httpd's IPv4-mapped form (it listens on `[::]`).
fn plain(answer: &str) -> String {
    answer.trim().replace("[::ffff:", "").replace(']', "")
}

#[test]
#[ignore = "boots QEMU: run by cargo xtask test"]
fn a_pod_on_one_node_reaches_a_pod_on_another_by_its_pod_ip() {
    let cluster = Cluster::new("a_pod_on_one_node_reaches_a_pod_on_another_by_its_pod_ip")
        .expect("cluster (needs root, QEMU and `cargo xtask image`)");
    let secrets = configs::secrets();
    let addresses = ["10.5.0.2", "10.5.0.3", "10.5.0.4"];
    let vms: Vec<_> = configs::control_planes(&secrets, &addresses)
        .into_iter()
        .enumerate()
        .map(|(i, mut config)| {
            let name = format!("cp-{}", i + 1);
            config.machine.pods = vec![server(&format!("web-{}", i + 1))];
            let mut spec = VmSpec::new(&name)
                .config(&configs::yaml(&config))
                .management();
            spec.memory_mib = 320;
            cluster.start(spec).expect("start")
        })
        .collect();
    for vm in &vms {
        vm.wait_for(r"\bready elapsed_ms=", BOOT).expect("ready");
    }
    let apis: Vec<String> = vms.iter().map(|vm| vm.api_address().to_owned()).collect();
    let admin = configs::client(&secrets, Role::Admin);
    let archive = common::busybox_archive();
    cluster
        .in_namespace_async(|| async {
            let clients: Vec<NodeClient> = apis
                .iter()
                .map(|a| NodeClient::new(a, &admin).unwrap())
                .collect();
            for client in &clients {
                let _: Vec<ImageInfo> = eventually("the image imported", BOOT, || {
                    client.post_bytes(paths::IMAGES, archive.clone(), "application/x-tar")
                })
                .await;
            }
            let empty = serde_json::json!({});
            let _: Ack = eventually("bootstrap", BOOT, || {
                clients[0].post(paths::STORE_BOOTSTRAP, &empty)
            })
            .await;
            // Every node's pod runs with an address from its own pod CIDR.
            let mut ips = Vec::new();
            for (i, client) in clients.iter().enumerate() {
                let pod: PodInfo =
                    eventually("the web pod running with a pod IP", BOOT, || async {
                        let pods: Vec<PodInfo> =
                            client.get(paths::PODS).await.map_err(|e| e.to_string())?;
                        match pods.into_iter().next() {
                            Some(pod) if pod.phase == "Running" && pod.pod_ip.is_some() => Ok(pod),
                            other => Err(format!("cp-{}: {other:?}", i + 1)),
                        }
                    })
                    .await;
                ips.push(pod.pod_ip.unwrap());
            }
            let cidrs: std::collections::BTreeSet<String> = ips
                .iter()
                .map(|ip| ip.rsplit_once('.').unwrap().0.to_owned())
                .collect();
            assert_eq!(cidrs.len(), 3, "one pod CIDR per node: {ips:?}");

            // web-1 asks web-3 across nodes by pod IP; web-3 sees web-1's own address.
            let url = format!("http://{}:8080/cgi-bin/who", ips[2]);
            let answer = eventually("web-1 reaching web-3", BOOT, || async {
                let (code, out) =
                    common::exec_capture(&clients[0], "web-1", &["wget", "-qO-", &url], false)
                        .await;
                if code == 0 {
                    Ok(out)
                } else {
                    Err(format!("wget exited {code}: {out}"))
                }
            })
            .await;
            assert_eq!(plain(&answer), format!("web-3 saw {}", ips[0]));
            // And the other way, through node 3's route to node 1.
            let url = format!("http://{}:8080/cgi-bin/who", ips[0]);
            let (code, answer) =
                common::exec_capture(&clients[2], "web-3", &["wget", "-qO-", &url], false).await;
            assert_eq!((code, plain(&answer)), (0, format!("web-1 saw {}", ips[2])));
        })
        .expect("namespace");
}
