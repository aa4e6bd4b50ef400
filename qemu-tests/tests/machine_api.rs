//! QEMU end-to-end scenarios of the machine API: roles and refusals, apply-config in
//! each mode on a real PID 1, persistence on an install disk across reboots,
//! maintenance mode, and the local cluster provisioner.
//!
//! Run by `cargo xtask test` (they need root, QEMU and a built image).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use cairn_api::machine_api::{
    Ack, ApplyMode, ApplyOutcome, ApplyRequest, ApplyResponse, Health, Persistence, VersionInfo,
    paths,
};
use cairn_api::pki::Role;
use cairnctl::client::{ClientError, NodeClient};
use qemu_tests::{Cluster, VmSpec, configs, eventually};

const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(60);

fn cluster(name: &str) -> Cluster {
    Cluster::new(name).expect("cluster (needs root, QEMU and `cargo xtask image`)")
}

fn request(config: String, mode: ApplyMode) -> ApplyRequest {
    ApplyRequest {
        config,
        mode,
        try_timeout_secs: Some(5),
    }
}

#[test]
#[ignore = "boots QEMU: run by cargo xtask test"]
fn roles_refusals_and_live_apply_on_a_running_node() {
    let cluster = cluster("roles_refusals_and_live_apply_on_a_running_node");
    let secrets = configs::secrets();
    let config = configs::node(&secrets, "node-1", "10.5.0.2/24", true, false);
    let vm = cluster
        .start(
            VmSpec::new("node-1")
                .config(&configs::yaml(&config))
                .management(),
        )
        .expect("start");
    vm.wait_for(r"\bready elapsed_ms=", BOOT).expect("ready");
    let address = vm.api_address().to_owned();
    cluster
        .in_namespace_async(|| async {
            let reader =
                NodeClient::new(&address, &configs::client(&secrets, Role::Reader)).unwrap();
            let admin = NodeClient::new(&address, &configs::client(&secrets, Role::Admin)).unwrap();
            let version: VersionInfo =
                eventually("version", BOOT, || reader.get(paths::VERSION)).await;
            assert_eq!(version.hostname, "node-1");
            let health: Health = reader.get(paths::HEALTH).await.unwrap();
            assert_eq!(health.stage, "ready");
            assert_eq!(health.persistence, Persistence::Ephemeral);
            assert!(
                !reader
                    .get_text(paths::MACHINE_CONFIG)
                    .await
                    .unwrap()
                    .contains("PRIVATE KEY")
            );

            // A reader may not apply; the answer names the role.
            let err = reader
                .post::<_, ApplyResponse>(
                    paths::MACHINE_CONFIG,
                    &request(configs::yaml(&config), ApplyMode::Auto),
                )
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("403") && err.to_string().contains("os:reader"),
                "{err}"
            );

            // No certificate, or one of another CA: the handshake fails.
            let err = NodeClient::insecure(&address)
                .unwrap()
                .get::<VersionInfo>(paths::VERSION)
                .await
                .unwrap_err();
            assert!(matches!(err, ClientError::Tls { .. }), "{err}");
            let foreign = configs::secrets();
            let mut stranger = configs::client(&foreign, Role::Admin);
            stranger.ca = secrets.ca.cert_pem().to_owned();
            let err = NodeClient::new(&address, &stranger)
                .unwrap()
                .get::<VersionInfo>(paths::VERSION)
                .await
                .unwrap_err();
            assert!(matches!(err, ClientError::Tls { .. }), "{err}");

            // Live: the hostname changes in the running kernel.
            let mut renamed = config.clone();
            renamed.machine.hostname = Some("renamed-1".into());
            let answer: ApplyResponse = admin
                .post(
                    paths::MACHINE_CONFIG,
                    &request(configs::yaml(&renamed), ApplyMode::NoReboot),
                )
                .await
                .unwrap();
            assert_eq!(answer.outcome, ApplyOutcome::AppliedLive);
            let version: VersionInfo = admin.get(paths::VERSION).await.unwrap();
            assert_eq!(version.hostname, "renamed-1");

            // Live: addresses, routes and sysctls follow the config, both ways.
            let mut more = renamed.clone();
            more.machine.network.interfaces[0]
                .addresses
                .push("10.5.0.3/24".into());
            more.machine.network.interfaces[0].routes.push(
                cairn_api::machine_config::RouteConfig {
                    to: "10.7.0.0/16".into(),
                    via: Some("10.5.0.1".into()),
                },
            );
            more.machine
                .sysctls
                .insert("net.ipv4.ip_forward".into(), "1".into());
            let answer: ApplyResponse = admin
                .post(
                    paths::MACHINE_CONFIG,
                    &request(configs::yaml(&more), ApplyMode::Auto),
                )
                .await
                .unwrap();
            assert_eq!(answer.changes.live, ["machine.network", "machine.sysctls"]);
            let answer: ApplyResponse = admin
                .post(
                    paths::MACHINE_CONFIG,
                    &request(configs::yaml(&renamed), ApplyMode::Auto),
                )
                .await
                .unwrap();
            assert_eq!(answer.outcome, ApplyOutcome::AppliedLive);

            // Invalid: refused with every problem, the running config stays.
            let mut invalid = renamed.clone();
            invalid.machine.hostname = Some("Not_Valid".into());
            invalid.machine.network.interfaces[0].addresses = vec!["10.5.0.300/24".into()];
            let err = admin
                .post::<_, ApplyResponse>(
                    paths::MACHINE_CONFIG,
                    &request(configs::yaml(&invalid), ApplyMode::Auto),
                )
                .await
                .unwrap_err();
            let ClientError::Api { status, error, .. } = err else {
                panic!("{err}")
            };
            assert_eq!(status.as_u16(), 400);
            assert_eq!(error.problems.len(), 2, "{:?}", error.problems);
            let version: VersionInfo = admin.get(paths::VERSION).await.unwrap();
            assert_eq!(version.hostname, "renamed-1");

            // Staged on an ephemeral node is refused: it would be lost.
            let err = admin
                .post::<_, ApplyResponse>(
                    paths::MACHINE_CONFIG,
                    &request(configs::yaml(&renamed), ApplyMode::Staged),
                )
                .await
                .unwrap_err();
            assert!(err.to_string().contains("ephemeral"), "{err}");

            // Try: applied now, rolled back when not confirmed.
            let mut trial = renamed.clone();
            trial.machine.hostname = Some("trial-1".into());
            let answer: ApplyResponse = admin
                .post(
                    paths::MACHINE_CONFIG,
                    &request(configs::yaml(&trial), ApplyMode::Try),
                )
                .await
                .unwrap();
            assert_eq!(answer.outcome, ApplyOutcome::AppliedWithRollback);
            let version: VersionInfo = admin.get(paths::VERSION).await.unwrap();
            assert_eq!(version.hostname, "trial-1");
        })
        .expect("namespace");
    vm.wait_for(r"try apply not confirmed; rolled back", STEP)
        .expect("rollback");
    cluster
        .in_namespace_async(|| async {
            let admin = NodeClient::new(&address, &configs::client(&secrets, Role::Admin)).unwrap();
            let version: VersionInfo = admin.get(paths::VERSION).await.unwrap();
            assert_eq!(version.hostname, "renamed-1", "rolled back");
            let mut lines = Vec::new();
            admin
                .stream("/v1/dmesg", |line| lines.push(line.to_owned()))
                .await
                .unwrap();
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains("cairn:") && l.contains("ready")),
                "kernel log holds cairn's lines"
            );
        })
        .expect("namespace");
}

#[test]
#[ignore = "boots QEMU: run by cargo xtask test"]
fn staged_config_applies_after_reboot_and_the_config_persists_on_the_disk() {
    let cluster = cluster("staged_config_applies_after_reboot_and_the_config_persists_on_the_disk");
    let secrets = configs::secrets();
    let config = configs::node(&secrets, "node-1", "10.5.0.2/24", true, true);
    let vm = cluster
        .start(
            VmSpec::new("node-1")
                .config(&configs::yaml(&config))
                .management()
                .disk(512),
        )
        .expect("start");
    vm.wait_for(r"state partition created and formatted ext4", BOOT)
        .expect("install");
    vm.wait_for(r"\bready elapsed_ms=", BOOT).expect("ready");
    let address = vm.api_address().to_owned();
    cluster
        .in_namespace_async(|| async {
            let admin = NodeClient::new(&address, &configs::client(&secrets, Role::Admin)).unwrap();
            let health: Health = eventually("health", BOOT, || admin.get(paths::HEALTH)).await;
            assert!(matches!(health.persistence, Persistence::Disk { ref device, .. } if device == "/dev/vda1"), "{:?}", health.persistence);
            let mut staged = config.clone();
            staged.machine.hostname = Some("staged-1".into());
            let answer: ApplyResponse = admin
                .post(paths::MACHINE_CONFIG, &request(configs::yaml(&staged), ApplyMode::Staged))
                .await
                .unwrap();
            assert_eq!(answer.outcome, ApplyOutcome::Staged);
            let health: Health = admin.get(paths::HEALTH).await.unwrap();
            assert!(health.staged_config);
            let version: VersionInfo = admin.get(paths::VERSION).await.unwrap();
            assert_eq!(version.hostname, "node-1", "nothing changes before the reboot");
            // An operator may reboot.
            let operator = NodeClient::new(&address, &configs::client(&secrets, Role::Operator)).unwrap();
            let _: Ack = operator.post(paths::REBOOT, &serde_json::json!({})).await.unwrap();
        })
        .expect("namespace");
    vm.wait_for(r"shutdown: complete action=reboot", STEP)
        .expect("reboot");
    vm.wait_for(r"state partition mounted", BOOT)
        .expect("state found again");
    vm.wait_for(r"the staged config becomes the running config", BOOT)
        .expect("staged promoted");
    vm.wait_for(
        r"machine config accepted source=file /var/lib/cairn/config.yaml",
        BOOT,
    )
    .expect("config from the disk");
    vm.wait_for(r"\bready elapsed_ms=", BOOT)
        .expect("ready again");
    cluster
        .in_namespace_async(|| async {
            let admin = NodeClient::new(&address, &configs::client(&secrets, Role::Admin)).unwrap();
            let version: VersionInfo =
                eventually("version", BOOT, || admin.get(paths::VERSION)).await;
            assert_eq!(version.hostname, "staged-1");
            // A live change is saved too, and survives the next reboot.
            let mut live = config.clone();
            live.machine.hostname = Some("live-1".into());
            let answer: ApplyResponse = admin
                .post(
                    paths::MACHINE_CONFIG,
                    &request(configs::yaml(&live), ApplyMode::Auto),
                )
                .await
                .unwrap();
            assert_eq!(answer.outcome, ApplyOutcome::AppliedLive);
        })
        .expect("namespace");
    vm.send_ctrl_alt_del().expect("ctrl-alt-del");
    vm.wait_for(r"shutdown: complete action=reboot", STEP)
        .expect("reboot");
    vm.wait_for(
        r#"machine config accepted source=file /var/lib/cairn/config.yaml .*hostname="live-1""#,
        BOOT,
    )
    .expect("the live change survived the reboot");
    vm.wait_for(r"\bready elapsed_ms=", BOOT)
        .expect("ready again");
}

#[test]
#[ignore = "boots QEMU: run by cargo xtask test"]
fn a_node_without_config_takes_one_insecure_apply_and_boots_configured() {
    let cluster = cluster("a_node_without_config_takes_one_insecure_apply_and_boots_configured");
    let secrets = configs::secrets();
    let config = configs::node(&secrets, "fresh-1", "10.5.0.2/24", true, false);
    let vm = cluster
        .start(VmSpec::new("fresh-1").management())
        .expect("start");
    vm.wait_for(r"maintenance: machine API waiting", BOOT)
        .expect("maintenance");
    let address = vm.api_address().to_owned();
    cluster
        .in_namespace_async(|| async {
            let insecure = NodeClient::insecure(&address).unwrap();
            // The management NIC gets its DHCP lease in the background.
            let version: VersionInfo =
                eventually("maintenance version", BOOT, || insecure.get(paths::VERSION)).await;
            assert!(version.maintenance);
            let answer: ApplyResponse = insecure
                .post(
                    paths::MACHINE_CONFIG,
                    &request(configs::yaml(&config), ApplyMode::Auto),
                )
                .await
                .unwrap();
            assert_eq!(answer.outcome, ApplyOutcome::Booting);
        })
        .expect("namespace");
    vm.wait_for(r"maintenance: config accepted; booting with it", STEP)
        .expect("accepted");
    vm.wait_for(r"\bready elapsed_ms=", BOOT).expect("ready");
    cluster
        .in_namespace_async(|| async {
            let admin = NodeClient::new(&address, &configs::client(&secrets, Role::Admin)).unwrap();
            let version: VersionInfo =
                eventually("configured version", BOOT, || admin.get(paths::VERSION)).await;
            assert!(!version.maintenance);
            assert_eq!(version.hostname, "fresh-1");
            let err = NodeClient::insecure(&address)
                .unwrap()
                .get::<VersionInfo>(paths::VERSION)
                .await
                .unwrap_err();
            assert!(
                matches!(err, ClientError::Tls { .. }),
                "insecure access ends with maintenance: {err}"
            );
        })
        .expect("namespace");
}

#[test]
#[ignore = "boots QEMU: run by cargo xtask test"]
fn cluster_create_and_destroy_leave_nothing_behind() {
    let home = tempfile::tempdir().expect("temp dir");
    let clusters = home.path().join("clusters");
    let client_file = home.path().join("cairnconfig");
    let name = format!("qt{}", std::process::id());
    let image = qemu_tests::Image::from_env().expect("image");
    let image_dir = image.manifest.initramfs.parent().unwrap().to_owned();
    let cli = |args: &[&str]| {
        let mut all = vec!["cairnctl", "--cairnconfig", client_file.to_str().unwrap()];
        all.extend_from_slice(args);
        cairnctl::run(<cairnctl::cli::Cli as clap::Parser>::parse_from(all))
    };
    let created = cli(&[
        "cluster",
        "create",
        "--name",
        &name,
        "--workers",
        "1",
        "--memory",
        "256",
        "--disk",
        "256",
        "--image-dir",
        image_dir.to_str().unwrap(),
        "--clusters-dir",
        clusters.to_str().unwrap(),
    ]);
    let record: cairnctl::provision::ClusterRecord = serde_json::from_str(
        &std::fs::read_to_string(clusters.join(&name).join("cluster.json")).expect("cluster state"),
    )
    .expect("cluster record");
    let pids: Vec<i32> = record
        .nodes
        .iter()
        .filter_map(|n| {
            std::fs::read_to_string(clusters.join(&name).join(&n.name).join("qemu.pid")).ok()
        })
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    // The kubeconfig it wrote drives the control plane's Kubernetes API from here,
    // through the forwarded port, with real kubectl.
    let kubeconfig = clusters.join(&name).join("kubeconfig");
    let kubectl = std::env::var_os("CAIRN_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| qemu_tests::target_dir().join("cairn-venv"))
        .join("bin/kubectl");
    let served = created.is_ok().then(|| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let out = std::process::Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["get", "namespaces", "-o", "name", "--request-timeout=20s"])
                .output()
                .expect("kubectl");
            // The server writes the default namespaces once the store has a leader.
            let listed = String::from_utf8_lossy(&out.stdout).contains("namespace/default");
            if (out.status.success() && listed) || std::time::Instant::now() > deadline {
                return out;
            }
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
    });
    // Destroy whatever happened, so a failure leaves no VM behind.
    let destroyed = cli(&[
        "cluster",
        "destroy",
        "--name",
        &name,
        "--clusters-dir",
        clusters.to_str().unwrap(),
    ]);
    created.expect("cluster create");
    destroyed.expect("cluster destroy");
    let served = served.expect("kubectl ran");
    let namespaces = String::from_utf8_lossy(&served.stdout);
    assert!(
        served.status.success() && namespaces.contains("namespace/default"),
        "kubectl through the written kubeconfig: {namespaces} {}",
        String::from_utf8_lossy(&served.stderr)
    );

    assert_eq!(record.nodes.len(), 2);
    assert_eq!(pids.len(), 2, "both VMs recorded their pid");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "QEMU {pid} still runs"
        );
    }
    assert!(
        !clusters.join(&name).exists(),
        "the cluster's state directory is gone"
    );
    let file = std::fs::read_to_string(&client_file).expect("client file");
    assert!(!file.contains(&name), "the context is gone: {file}");
    let left: Vec<_> = std::fs::read_dir(home.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut left = left;
    left.sort();
    assert_eq!(left, ["cairnconfig", "clusters"], "nothing else was made");
    assert_eq!(std::fs::read_dir(&clusters).unwrap().count(), 0);
}
