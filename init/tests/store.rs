//! Host tier: three hosted control planes form a replicated store through the
//! machine API (bootstrap once, the others join by themselves), replicate writes, and
//! keep serving when the leader's process is killed.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use cairn_api::bundle::{NodeSpec, Secrets};
use cairn_api::client_config::Context;
use cairn_api::machine_api::{Ack, KvList, KvPut, StoreMembers, paths};
use cairn_api::machine_config::MachineType;
use cairn_api::pki::Role;
use cairnctl::client::{ClientError, NodeClient};
use common::{HostedNode, config_file};

const T: Duration = Duration::from_secs(30);

fn ip(i: usize) -> String {
    format!("127.0.0.{}", 21 + i)
}

async fn eventually<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let deadline = Instant::now() + T;
    loop {
        match call().await {
            Ok(value) => return value,
            Err(err) if Instant::now() < deadline => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("{what}: {err}"),
        }
    }
}

#[test]
fn three_control_planes_bootstrap_replicate_and_survive_losing_the_leader() {
    let secrets = Secrets::generate("store").unwrap();
    let control_planes: Vec<String> = (0..3).map(ip).collect();
    let state = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut nodes: Vec<Option<HostedNode>> = Vec::new();
    let mut addresses = Vec::new();
    for i in 0..3 {
        let config = secrets
            .machine_config(&NodeSpec {
                machine_type: MachineType::Controlplane,
                hostname: format!("cp-{i}"),
                addresses: vec![format!("{}/8", ip(i))],
                endpoint: format!("https://{}:6443", ip(0)),
                control_planes: control_planes.clone(),
                install_disk: None,
            })
            .unwrap();
        let file = config_file(&config.to_yaml().unwrap());
        let dir = state.path().join(format!("cp-{i}"));
        let mut node = HostedNode::start_with(&[
            "--config".into(),
            file.path().display().to_string(),
            "--state-dir".into(),
            dir.display().to_string(),
            "--store-listen".into(),
            format!("{}:50001", ip(i)),
        ]);
        addresses.push(node.api_address(T));
        files.push(file);
        nodes.push(Some(node));
    }
    let admin = Context {
        endpoints: Vec::new(),
        nodes: Vec::new(),
        ca: secrets.ca.cert_pem().to_owned(),
        crt: String::new(),
        key: String::new(),
    };
    let cert = secrets.client("admin", Role::Admin).unwrap();
    let admin = Context {
        crt: cert.cert_pem,
        key: cert.key_pem,
        ..admin
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let leader_index = runtime.block_on(async {
        let clients: Vec<NodeClient> = addresses
            .iter()
            .map(|a| NodeClient::new(a, &admin).unwrap())
            .collect();
        let empty = serde_json::json!({});
        let _: Ack = eventually("bootstrap", || {
            clients[0].post(paths::STORE_BOOTSTRAP, &empty)
        })
        .await;
        // A second bootstrap is refused.
        let again = clients[1]
            .post::<_, Ack>(paths::STORE_BOOTSTRAP, &serde_json::json!({}))
            .await;
        assert!(again.is_err(), "{again:?}");
        let members: StoreMembers = eventually("three voters", || async {
            let m: StoreMembers = clients[0].get(paths::STORE_MEMBERS).await?;
            if m.members.iter().filter(|x| x.voter).count() == 3 {
                Ok(m)
            } else {
                Err(ClientError::Protocol {
                    node: "cp-0".into(),
                    reason: format!("{} voters", m.members.len()),
                })
            }
        })
        .await;
        assert_eq!(members.leader, Some(members.this));
        // A write through a follower reaches the leader; a read through another sees it.
        // (Keys stay outside /registry/, where each control plane's API server writes.)
        let put: KvList = clients[1]
            .post(
                paths::STORE_KV,
                &KvPut {
                    key: "/cairn-test/demo".into(),
                    value: "one".into(),
                },
            )
            .await
            .unwrap();
        assert!(put.revision >= 1);
        let read: KvList = clients[2]
            .get(&format!("{}?key=/cairn-test/demo", paths::STORE_KV))
            .await
            .unwrap();
        assert_eq!(read.entries[0].value, "one");
        // Readers may not read raw store contents (secrets live there).
        let reader_cert = secrets.client("reader", Role::Reader).unwrap();
        let reader = Context {
            crt: reader_cert.cert_pem,
            key: reader_cert.key_pem,
            ..admin.clone()
        };
        let denied = NodeClient::new(&addresses[2], &reader)
            .unwrap()
            .get::<KvList>(&format!("{}?key=/cairn-test/demo", paths::STORE_KV))
            .await;
        assert!(
            matches!(denied, Err(ClientError::Api { ref status, .. }) if status.as_u16() == 403),
            "{denied:?}"
        );
        // The bootstrapper leads until something happens to it.
        let members: StoreMembers = clients[0].get(paths::STORE_MEMBERS).await.unwrap();
        assert_eq!(members.leader, Some(members.this));
        0
    });
    // Kill the leader's process outright (SIGKILL on drop).
    drop(nodes[leader_index].take());
    runtime.block_on(async {
        let survivors: Vec<NodeClient> = (0..3)
            .filter(|&i| i != leader_index)
            .map(|i| NodeClient::new(&addresses[i], &admin).unwrap())
            .collect();
        let after = KvPut {
            key: "/cairn-test/after".into(),
            value: "two".into(),
        };
        let put: KvList = eventually("a write after the leader died", || {
            survivors[0].post(paths::STORE_KV, &after)
        })
        .await;
        assert!(put.revision >= 2);
        let prefix = format!("{}?prefix=/cairn-test/", paths::STORE_KV);
        let both: KvList = eventually("both keys", || survivors[1].get(&prefix)).await;
        let values: Vec<&str> = both.entries.iter().map(|e| e.value.as_str()).collect();
        assert_eq!(values, ["two", "one"], "keys in order, nothing lost");
    });
}
