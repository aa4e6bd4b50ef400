//! Host tier (root): a static pod on `cairn node` whose image lives in a private,
//! plain-HTTP registry (Debian's `docker-registry` with basic auth on loopback). The
//! node cannot pull it until `machine.registries` says how (plain HTTP, credentials);
//! applied live, the next attempt pulls the image and the pod runs to completion.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use cairn_api::client_config::Context;
use cairn_api::machine_api::{ApplyMode, ApplyRequest, ApplyResponse, PodInfo, paths};
use cairn_api::machine_config::{RegistryAuthSpec, RegistrySpec};
use cairn_api::pki::Role;
use cairn_runtime::test_images::write_busybox_layout;
use cairn_runtime::test_registry::{TestRegistry, TestRegistryAuth, push_layout};
use cairnctl::client::NodeClient;
use common::{HostedNode, config_file, secrets_and_config, until_pod};
use oci_client::secrets::RegistryAuth;

const T: Duration = Duration::from_secs(60);

async fn until(what: &str, client: &NodeClient, check: impl Fn(&PodInfo) -> bool) -> PodInfo {
    until_pod(client, "pulled", what, T, |p| check(p).then(|| p.clone())).await
}

#[test]
#[ignore = "needs root (namespaces, cgroups, mounts) and Debian's docker-registry"]
fn a_static_pod_pulls_from_a_private_registry_once_machine_registries_says_how() {
    let registry = TestRegistry::start(&TestRegistryAuth::Htpasswd {
        username: "puller".into(),
        password: "s3cret".into(),
    })
    .unwrap();
    let reference = format!("{}/private/busybox:1.0", registry.address());
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("busybox");
    write_busybox_layout(Path::new("/bin/busybox"), &layout).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let auth = RegistryAuth::Basic("puller".into(), "s3cret".into());
    runtime
        .block_on(push_layout(&layout, &reference, &auth))
        .unwrap();

    let (secrets, mut config) = secrets_and_config("pulls-1");
    config.machine.pods = vec![serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "pulled"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": reference, "command": ["echo", "pulled"]}]
        }
    })];
    let file = config_file(&config.to_yaml().unwrap());
    let mut node = HostedNode::start(file.path(), &[]);
    let address = node.api_address(T);
    let cert = secrets.client("tester", Role::Admin).unwrap();
    let context = Context {
        endpoints: Vec::new(),
        nodes: Vec::new(),
        ca: secrets.ca.cert_pem().to_owned(),
        crt: cert.cert_pem,
        key: cert.key_pem,
    };
    runtime.block_on(async {
        let client = NodeClient::new(&address, &context).unwrap();
        // Over HTTPS and without credentials the pull fails, and says so.
        let waiting = until("the pull to fail", &client, |p| {
            p.containers[0].reason.as_deref() == Some("ErrImagePull")
        })
        .await;
        assert_eq!(waiting.phase, "Pending");
        let mut with_registry = config.clone();
        with_registry.machine.registries.insert(
            registry.address().to_owned(),
            RegistrySpec {
                http: true,
                auth: Some(RegistryAuthSpec {
                    username: "puller".into(),
                    password: "s3cret".into(),
                }),
            },
        );
        let applied: ApplyResponse = client
            .post(
                paths::MACHINE_CONFIG,
                &ApplyRequest {
                    config: with_registry.to_yaml().unwrap(),
                    mode: ApplyMode::Auto,
                    try_timeout_secs: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(applied.changes.live, ["machine.registries"]);
        let done = until("the pod to pull and succeed", &client, |p| {
            p.phase == "Succeeded"
        })
        .await;
        assert_eq!(done.containers[0].exit_code, Some(0));
        let log = client
            .get_text(&format!(
                "{}/default/pulled/containers/main/logs",
                paths::PODS
            ))
            .await
            .unwrap();
        assert_eq!(log, "pulled\n");
        // Non-admins see the config without the registry's password.
        let reader = secrets.client("reader", Role::Reader).unwrap();
        let reader = NodeClient::new(
            &address,
            &Context {
                crt: reader.cert_pem,
                key: reader.key_pem,
                ..context.clone()
            },
        )
        .unwrap();
        let shown = reader.get_text(paths::MACHINE_CONFIG).await.unwrap();
        assert!(
            shown.contains("username: puller") && !shown.contains("s3cret"),
            "{shown}"
        );
    });
    node.signal("TERM");
    assert!(node.wait_exit(T).success());
}
