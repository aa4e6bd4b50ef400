//! QEMU end-to-end scenario of the container runtime inside a Cairn VM (cgroup v2,
//! PID 1 reaping, the node's own overlay module): static pods from the machine config
//! wait for their image, which is imported over the machine API; a pod with a sidecar,
//! a readiness probe, limits and a config map volume crashes once, is restarted and
//! runs, its logs (both instances) are read and commands run in it (with and without
//! a terminal) through the API; a pod over its memory limit is OOM-killed and reported
//! so; the node powers off with its pods stopped in order.
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

const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(90);

fn pods() -> Vec<serde_json::Value> {
    vec![
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web"},
            "spec": {
                "terminationGracePeriodSeconds": 5,
                "volumes": [{"name": "shared", "emptyDir": {"medium": "Memory"}},
                            {"name": "conf", "configMap": {"name": "settings"}}],
                "initContainers": [{
                    "name": "sidecar", "image": BUSYBOX_IMAGE, "restartPolicy": "Always",
                    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do date > /shared/now; sleep 1; done"],
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]
                }],
                "containers": [{
                    "name": "main", "image": BUSYBOX_IMAGE,
                    "command": ["sh", "-c", "if [ ! -f /shared/crashed ]; then touch /shared/crashed; echo first run; exit 3; fi; echo hello from $(hostname), $(cat /etc/conf/greeting); cat /sys/fs/cgroup/memory.max; trap 'echo stopping; exit 0' TERM; while true; do sleep 0.5; done"],
                    "resources": {"limits": {"memory": "32Mi", "cpu": "500m"}},
                    "readinessProbe": {"exec": {"command": ["test", "-f", "/shared/now"]}, "periodSeconds": 2},
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"},
                                     {"name": "conf", "mountPath": "/etc/conf"}]
                }]
            }
        }),
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "hog"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "hog", "image": BUSYBOX_IMAGE,
                    "command": ["sh", "-c", "dd if=/dev/zero bs=1M count=128 | tail > /dev/null"],
                    "resources": {"limits": {"memory": "16Mi"}}
                }]
            }
        }),
    ]
}

fn config_maps() -> Vec<serde_json::Value> {
    vec![serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings"},
        "data": {"greeting": "hi there"}
    })]
}

/// Runs `command` in web's main container as `cairnctl exec` does; exit code and
/// output.
async fn exec(client: &NodeClient, command: &[&str], tty: bool) -> (i32, String) {
    common::exec_capture(client, "web", command, tty).await
}

fn find<'a>(pods: &'a [PodInfo], name: &str) -> Option<&'a PodInfo> {
    pods.iter().find(|p| p.name == name)
}

#[test]
#[ignore = "boots QEMU: run by cargo xtask test"]
fn pods_run_with_limits_probes_and_logs_inside_a_vm() {
    let cluster = Cluster::new("pods_run_with_limits_probes_and_logs_inside_a_vm")
        .expect("cluster (needs root, QEMU and `cargo xtask image`)");
    let secrets = configs::secrets();
    let mut config = configs::node(&secrets, "node-1", "10.5.0.2/24", true, false);
    config.machine.pods = pods();
    config.machine.config_maps = config_maps();
    let mut spec = VmSpec::new("node-1")
        .config(&configs::yaml(&config))
        .management();
    spec.memory_mib = 384;
    let vm = cluster.start(spec).expect("start");
    vm.wait_for_each(&[r" ready elapsed_ms=", r"container runtime ready"], BOOT)
        .expect("ready, with the runtime service");
    let address = vm.api_address().to_owned();
    let archive = common::busybox_archive();
    cluster
        .in_namespace_async(|| async {
            let client =
                NodeClient::new(&address, &configs::client(&secrets, Role::Operator)).unwrap();
            let admin = NodeClient::new(&address, &configs::client(&secrets, Role::Admin)).unwrap();
            // Pods wait for the pod network, which waits for the cluster store.
            let empty = serde_json::json!({});
            let _: Ack = eventually("the store bootstrapped", BOOT, || {
                admin.post(paths::STORE_BOOTSTRAP, &empty)
            })
            .await;
            // Without the image (and no registry to pull it from) the pods wait and
            // say why.
            eventually("the static pods to fail their pulls", BOOT, || async {
                let pods: Vec<PodInfo> =
                    client.get(paths::PODS).await.map_err(|e| e.to_string())?;
                let hog = find(&pods, "hog").ok_or("no hog".to_owned())?;
                if pods.len() == 2 && hog.containers[0].reason.as_deref() == Some("ErrImagePull") {
                    Ok(())
                } else {
                    Err(format!("{pods:?}"))
                }
            })
            .await;
            let imported: Vec<ImageInfo> = client
                .post_bytes(paths::IMAGES, archive.clone(), "application/x-tar")
                .await
                .unwrap();
            assert_eq!(imported[0].name, BUSYBOX_IMAGE);

            let pods = eventually("web ready and hog OOM-killed", STEP, || async {
                let pods: Vec<PodInfo> =
                    client.get(paths::PODS).await.map_err(|e| e.to_string())?;
                let web = find(&pods, "web").ok_or("no web".to_owned())?;
                let main = web
                    .containers
                    .iter()
                    .find(|c| c.name == "main")
                    .ok_or("no main")?;
                let hog = &find(&pods, "hog").ok_or("no hog".to_owned())?.containers[0];
                if main.ready && main.restart_count == 1 && hog.state == "terminated" {
                    Ok(pods)
                } else {
                    Err(format!("web {web:?}; hog {hog:?}"))
                }
            })
            .await;
            let web = find(&pods, "web").unwrap();
            assert_eq!(web.phase, "Running");
            let ip = web.pod_ip.as_deref().unwrap_or_default();
            assert!(
                ip.starts_with("10.244."),
                "web's pod IP {ip:?} is from the pod network"
            );
            let hog = find(&pods, "hog").unwrap();
            assert_eq!(hog.phase, "Failed");
            assert_eq!(hog.containers[0].reason.as_deref(), Some("OOMKilled"));
            assert_eq!(hog.containers[0].exit_code, Some(137));

            let log = client
                .get_text(&format!("{}/default/web/containers/main/logs", paths::PODS))
                .await
                .unwrap();
            // The container's own view of its cgroup: the limit, enforced above.
            assert_eq!(log, format!("hello from web, hi there\n{}\n", 32 << 20));
            let previous = client
                .get_text(&format!(
                    "{}/default/web/containers/main/logs?previous=true",
                    paths::PODS
                ))
                .await
                .unwrap();
            assert_eq!(previous, "first run\n");
            assert_eq!(
                exec(
                    &admin,
                    &["sh", "-c", "cat /etc/conf/greeting; exit 5"],
                    false
                )
                .await,
                (5, "hi there".to_owned())
            );
            let (code, screen) = exec(&admin, &["tty"], true).await;
            assert_eq!(code, 0);
            assert!(screen.starts_with("/dev/pts/"), "{screen:?}");
        })
        .expect("namespace");
    vm.press_power_button().expect("power button");
    vm.wait_for(r"container runtime stopped", STEP)
        .expect("pods stopped at power-off");
    vm.wait_exit(STEP).expect("QEMU ends");
}
