//! Host tier: the machine API of a hosted node, driven through `cairnctl`'s client:
//! roles, refused clients, apply-config modes, maintenance mode, service control.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use cairn_api::bundle::Secrets;
use cairn_api::client_config::Context;
use cairn_api::machine_api::{
    Ack, ApplyMode, ApplyOutcome, ApplyRequest, ApplyResponse, Health, KubeconfigResponse,
    ServiceInfo, VersionInfo, paths,
};
use cairn_api::pki::Role;
use cairnctl::client::{ClientError, NodeClient};
use common::{HostedNode, config_file, secrets_and_config};

const T: Duration = Duration::from_secs(20);

fn context(secrets: &Secrets, role: Role) -> Context {
    let cert = secrets.client(&format!("{role}-user"), role).unwrap();
    Context {
        endpoints: Vec::new(),
        nodes: Vec::new(),
        ca: secrets.ca.cert_pem().to_owned(),
        crt: cert.cert_pem,
        key: cert.key_pem,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn apply(config: String, mode: ApplyMode) -> ApplyRequest {
    ApplyRequest {
        config,
        mode,
        try_timeout_secs: Some(2),
    }
}

#[test]
fn roles_decide_what_a_client_may_do_and_readers_see_no_secrets() {
    let (secrets, config) = secrets_and_config("node-a");
    let file = config_file(&config.to_yaml().unwrap());
    let mut node = HostedNode::start(file.path(), &[]);
    let address = node.api_address(T);
    runtime().block_on(async {
        let reader = NodeClient::new(&address, &context(&secrets, Role::Reader)).unwrap();
        let version: VersionInfo = reader.get(paths::VERSION).await.unwrap();
        assert!(!version.maintenance);
        let shown = reader.get_text(paths::MACHINE_CONFIG).await.unwrap();
        assert!(
            !shown.contains("PRIVATE KEY") && shown.contains("(redacted)"),
            "{shown}"
        );

        let err = reader
            .post::<_, ApplyResponse>(
                paths::MACHINE_CONFIG,
                &apply(config.to_yaml().unwrap(), ApplyMode::Auto),
            )
            .await
            .unwrap_err();
        let ClientError::Api { status, error, .. } = err else {
            panic!("{err}")
        };
        assert_eq!(status.as_u16(), 403);
        assert!(
            error
                .error
                .contains("role os:reader may not POST /v1/machineconfig"),
            "{}",
            error.error
        );

        let operator = NodeClient::new(&address, &context(&secrets, Role::Operator)).unwrap();
        let err = operator
            .post::<_, Ack>(paths::SHUTDOWN, &serde_json::json!({}))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("role os:operator may not POST /v1/shutdown"),
            "{err}"
        );

        let admin = NodeClient::new(&address, &context(&secrets, Role::Admin)).unwrap();
        let full = admin.get_text(paths::MACHINE_CONFIG).await.unwrap();
        assert!(full.contains("PRIVATE KEY"));
    });
}

#[test]
fn clients_without_a_certificate_or_of_a_foreign_ca_are_refused() {
    let (_, config) = secrets_and_config("node-a");
    let file = config_file(&config.to_yaml().unwrap());
    let mut node = HostedNode::start(file.path(), &[]);
    let address = node.api_address(T);
    runtime().block_on(async {
        let anonymous = NodeClient::insecure(&address).unwrap();
        let err = anonymous
            .get::<VersionInfo>(paths::VERSION)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Tls { .. }), "{err}");
        assert!(
            err.to_string().contains("requires a client certificate"),
            "{err}"
        );

        let foreign = Secrets::generate("foreign").unwrap();
        let mut stranger = context(&foreign, Role::Admin);
        // Even trusting the node's CA does not help a certificate of another CA.
        stranger.ca = config.machine.certs.ca.crt.clone();
        let err = NodeClient::new(&address, &stranger)
            .unwrap()
            .get::<VersionInfo>(paths::VERSION)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Tls { .. }), "{err}");

        let wrong_ca = NodeClient::new(&address, &context(&foreign, Role::Admin)).unwrap();
        let err = wrong_ca
            .get::<VersionInfo>(paths::VERSION)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("not signed by this context's CA"),
            "{err}"
        );
    });
    node.wait_for(r"TLS handshake refused", T);
}

#[test]
fn live_apply_replaces_the_config_and_an_invalid_one_changes_nothing() {
    let (secrets, config) = secrets_and_config("node-a");
    let file = config_file(&config.to_yaml().unwrap());
    let mut node = HostedNode::start(file.path(), &[]);
    let address = node.api_address(T);
    runtime().block_on(async {
        let admin = NodeClient::new(&address, &context(&secrets, Role::Admin)).unwrap();
        let mut renamed = config.clone();
        renamed.machine.hostname = Some("node-b".into());
        let answer: ApplyResponse = admin
            .post(
                paths::MACHINE_CONFIG,
                &apply(renamed.to_yaml().unwrap(), ApplyMode::NoReboot),
            )
            .await
            .unwrap();
        assert_eq!(answer.outcome, ApplyOutcome::AppliedLive);
        assert_eq!(answer.changes.live, ["machine.hostname"]);

        let invalid = renamed
            .to_yaml()
            .unwrap()
            .replace("hostname: node-b", "hostname: Node_C");
        let err = admin
            .post::<_, ApplyResponse>(paths::MACHINE_CONFIG, &apply(invalid, ApplyMode::Auto))
            .await
            .unwrap_err();
        let ClientError::Api { status, error, .. } = err else {
            panic!("{err}")
        };
        assert_eq!(status.as_u16(), 400);
        assert_eq!(error.problems.len(), 1);
        assert!(
            error.problems[0].starts_with("machine.hostname:"),
            "{:?}",
            error.problems
        );

        let mut retyped = renamed.clone();
        retyped.machine.machine_type = cairn_api::machine_config::MachineType::Worker;
        let err = admin
            .post::<_, ApplyResponse>(
                paths::MACHINE_CONFIG,
                &apply(retyped.to_yaml().unwrap(), ApplyMode::NoReboot),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("machine.type"), "{err}");

        let running = admin.get_text(paths::MACHINE_CONFIG).await.unwrap();
        assert!(
            running.contains("hostname: node-b") && running.contains("type: controlplane"),
            "{running}"
        );
    });
}

#[test]
fn try_apply_rolls_back_unless_confirmed() {
    let (secrets, config) = secrets_and_config("node-a");
    let file = config_file(&config.to_yaml().unwrap());
    let mut node = HostedNode::start(file.path(), &[]);
    let address = node.api_address(T);
    runtime().block_on(async {
        let admin = NodeClient::new(&address, &context(&secrets, Role::Admin)).unwrap();
        let mut trial = config.clone();
        trial.machine.hostname = Some("trial".into());
        let answer: ApplyResponse = admin
            .post(
                paths::MACHINE_CONFIG,
                &apply(trial.to_yaml().unwrap(), ApplyMode::Try),
            )
            .await
            .unwrap();
        assert_eq!(answer.outcome, ApplyOutcome::AppliedWithRollback);
        let health: Health = admin.get(paths::HEALTH).await.unwrap();
        assert!(health.try_rollback_in_secs.is_some());
        assert!(
            admin
                .get_text(paths::MACHINE_CONFIG)
                .await
                .unwrap()
                .contains("hostname: trial")
        );
    });
    node.wait_for(r"try apply not confirmed; rolled back", T);
    runtime().block_on(async {
        let admin = NodeClient::new(&address, &context(&secrets, Role::Admin)).unwrap();
        assert!(
            admin
                .get_text(paths::MACHINE_CONFIG)
                .await
                .unwrap()
                .contains("hostname: node-a")
        );
        let mut kept = config.clone();
        kept.machine.hostname = Some("kept".into());
        admin
            .post::<_, ApplyResponse>(
                paths::MACHINE_CONFIG,
                &apply(kept.to_yaml().unwrap(), ApplyMode::Try),
            )
            .await
            .unwrap();
        admin
            .post::<_, Ack>(paths::CONFIRM, &serde_json::json!({}))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            admin
                .get_text(paths::MACHINE_CONFIG)
                .await
                .unwrap()
                .contains("hostname: kept")
        );
    });
}

#[test]
fn staged_apply_takes_effect_at_the_next_start_only() {
    let (secrets, config) = secrets_and_config("node-a");
    let state = tempfile::tempdir().unwrap();
    let file = config_file(&config.to_yaml().unwrap());
    let args = vec![
        "--config".to_owned(),
        file.path().display().to_string(),
        "--state-dir".to_owned(),
        state.path().display().to_string(),
    ];
    let mut node = HostedNode::start_with(&args);
    let address = node.api_address(T);
    runtime().block_on(async {
        let admin = NodeClient::new(&address, &context(&secrets, Role::Admin)).unwrap();
        let mut staged = config.clone();
        staged.machine.hostname = Some("after-reboot".into());
        let answer: ApplyResponse = admin
            .post(
                paths::MACHINE_CONFIG,
                &apply(staged.to_yaml().unwrap(), ApplyMode::Staged),
            )
            .await
            .unwrap();
        assert_eq!(answer.outcome, ApplyOutcome::Staged);
        let health: Health = admin.get(paths::HEALTH).await.unwrap();
        assert!(health.staged_config);
        assert!(
            admin
                .get_text(paths::MACHINE_CONFIG)
                .await
                .unwrap()
                .contains("hostname: node-a")
        );
    });
    node.signal("TERM");
    assert!(node.wait_exit(T).success());
    let mut again = HostedNode::start_with(&args);
    again.wait_for(r"the staged config becomes the running config", T);
    let address = again.api_address(T);
    runtime().block_on(async {
        let admin = NodeClient::new(&address, &context(&secrets, Role::Admin)).unwrap();
        assert!(
            admin
                .get_text(paths::MACHINE_CONFIG)
                .await
                .unwrap()
                .contains("hostname: after-reboot")
        );
    });
}

#[test]
fn maintenance_mode_takes_one_insecure_config_then_requires_certificates() {
    let (secrets, config) = secrets_and_config("node-m");
    let mut node = HostedNode::start_with(&[]);
    let address = node.api_address(T);
    runtime().block_on(async {
        let insecure = NodeClient::insecure(&address).unwrap();
        let version: VersionInfo = insecure.get(paths::VERSION).await.unwrap();
        assert!(version.maintenance);
        let health: Health = insecure.get(paths::HEALTH).await.unwrap();
        assert_eq!(health.stage, "maintenance");
        assert!(
            health
                .reason
                .unwrap()
                .contains("no machine configuration found")
        );
        let err = insecure
            .get::<Vec<ServiceInfo>>(paths::SERVICES)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("maintenance mode"), "{err}");

        let bad = config
            .to_yaml()
            .unwrap()
            .replace("hostname: node-m", "hostname: BAD");
        let err = insecure
            .post::<_, ApplyResponse>(paths::MACHINE_CONFIG, &apply(bad, ApplyMode::Auto))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("machine.hostname"), "{err}");
        let answer: ApplyResponse = insecure
            .post(
                paths::MACHINE_CONFIG,
                &apply(config.to_yaml().unwrap(), ApplyMode::Auto),
            )
            .await
            .unwrap();
        assert_eq!(answer.outcome, ApplyOutcome::Booting);
    });
    // The configured API (on a port of its own) and `ready` are logged in either order.
    let lines = node.wait_for_each(&[r"machine API listening.* address=", r"\bready\b"], T);
    let address = lines[0]
        .rsplit("address=")
        .next()
        .unwrap()
        .trim()
        .trim_matches('"')
        .to_owned();
    runtime().block_on(async {
        let admin = NodeClient::new(&address, &context(&secrets, Role::Admin)).unwrap();
        let version: VersionInfo = admin.get(paths::VERSION).await.unwrap();
        assert!(!version.maintenance);
        let err = NodeClient::insecure(&address)
            .unwrap()
            .get::<VersionInfo>(paths::VERSION)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Tls { .. }), "{err}");
    });
}

#[test]
fn a_restarted_service_shows_in_its_status_and_followed_logs() {
    let (secrets, config) = secrets_and_config("node-a");
    let file = config_file(&config.to_yaml().unwrap());
    let mut node = HostedNode::start(file.path(), &[]);
    let address = node.api_address(T);
    runtime().block_on(async {
        let operator = NodeClient::new(&address, &context(&secrets, Role::Operator)).unwrap();
        // The machine API listens before the supervisor has started every service.
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let services: Vec<ServiceInfo> = operator.get(paths::SERVICES).await.unwrap();
            if services.iter().any(|s| s.name == "link-monitor") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "link-monitor never started: {services:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let follower = operator.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let following = tokio::spawn(async move {
            follower
                .stream("/v1/services/link-monitor/logs?follow=true", |line| {
                    let _ = tx.send(line.to_owned());
                })
                .await
        });
        let first = match tokio::time::timeout(T, rx.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("the log stream ended: {:?}", following.await),
            Err(_) => panic!("no log line of link-monitor within {T:?}"),
        };
        assert!(first.contains("watching link changes"), "{first}");
        let ack: Ack = operator
            .post("/v1/services/link-monitor/restart", &serde_json::json!({}))
            .await
            .unwrap();
        assert!(ack.message.contains("link-monitor"));
        let next = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
        assert!(next.contains("watching link changes"), "{next}");
        let services: Vec<ServiceInfo> = operator.get(paths::SERVICES).await.unwrap();
        let monitor = services.iter().find(|s| s.name == "link-monitor").unwrap();
        assert_eq!(monitor.restarts, 1);
        assert_eq!(monitor.last_exit.as_deref(), Some("restarted on request"));
        let err = operator
            .post::<_, Ack>("/v1/services/nosuch/restart", &serde_json::json!({}))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
        following.abort();
    });
}

#[test]
fn new_certificates_are_served_without_a_restart() {
    let (secrets, config) = secrets_and_config("node-a");
    let file = config_file(&config.to_yaml().unwrap());
    let mut node = HostedNode::start(file.path(), &[]);
    let address = node.api_address(T);
    let rotated = secrets
        .ca
        .issue_server(
            "rotated-node",
            &["127.0.0.1".into()],
            ::time::Duration::days(30),
        )
        .unwrap();
    runtime().block_on(async {
        let admin = NodeClient::new(&address, &context(&secrets, Role::Admin)).unwrap();
        let mut new = config.clone();
        new.machine.certs.node = Some(cairn_api::machine_config::NodeCerts {
            crt: rotated.cert_pem.clone(),
            key: rotated.key_pem.clone(),
        });
        let answer: ApplyResponse = admin
            .post(
                paths::MACHINE_CONFIG,
                &apply(new.to_yaml().unwrap(), ApplyMode::NoReboot),
            )
            .await
            .unwrap();
        assert_eq!(answer.changes.live, ["machine.certs"]);
    });
    node.wait_for(
        r#"machine API certificate loaded subject="rotated-node""#,
        T,
    );
    runtime().block_on(async {
        // New connections get the new certificate, and clients of the same CA still work.
        let admin = NodeClient::new(&address, &context(&secrets, Role::Admin)).unwrap();
        let _: VersionInfo = admin.get(paths::VERSION).await.unwrap();
    });
}

#[test]
fn admins_get_a_kubeconfig_from_a_control_plane_and_others_are_refused() {
    let (secrets, config) = secrets_and_config("node-k");
    let file = config_file(&config.to_yaml().unwrap());
    let mut node = HostedNode::start(file.path(), &[]);
    let address = node.api_address(T);
    runtime().block_on(async {
        let empty = serde_json::json!({});
        let operator = NodeClient::new(&address, &context(&secrets, Role::Operator)).unwrap();
        let err = operator
            .post::<_, KubeconfigResponse>(paths::KUBECONFIG, &empty)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("role os:operator may not POST /v1/kubeconfig"),
            "{err}"
        );
        let admin = NodeClient::new(&address, &context(&secrets, Role::Admin)).unwrap();
        let answer: KubeconfigResponse = admin.post(paths::KUBECONFIG, &empty).await.unwrap();
        assert_eq!(answer.server, "https://10.5.0.2:6443");
        let doc: serde_json::Value = serde_saphyr::from_str(&answer.kubeconfig).unwrap();
        assert_eq!(doc["clusters"][0]["cluster"]["server"], answer.server);
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD
            .decode(
                doc["clusters"][0]["cluster"]["certificate-authority-data"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(String::from_utf8(ca).unwrap(), secrets.ca.cert_pem());
        let cert = base64::engine::general_purpose::STANDARD
            .decode(
                doc["users"][0]["user"]["client-certificate-data"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        let info = cairn_api::pki::cert_info(std::str::from_utf8(&cert).unwrap(), "cert").unwrap();
        assert_eq!(info.organizations, ["system:masters"]);
        assert_eq!(info.common_name.as_deref(), Some("admin"));
    });
}
