//! Host tier (root): the node agent on a hosted control plane, driven through the
//! Kubernetes API as kubectl would: the node registers itself Ready with its capacity
//! and renews its Lease; a pod created through the API is bound by the scheduler, run
//! by the runtime with the config map and secret it mounts, and reported Running and
//! Ready; a pod that ends is reported Succeeded; a deleted pod stops within its grace
//! period, leaves the node, and is then gone from the API. Real kubectl reads the
//! pods' logs and runs commands in them (`kubectl logs`, `kubectl exec [-i]`), relayed
//! by the API server to the node's machine API; a pod finds its ServiceAccount's
//! token, the cluster CA and its namespace where Kubernetes mounts them.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_api::client_config::Context;
use cairn_api::machine_api::{Ack, ImageInfo, paths};
use cairn_api::pki::Role;
use cairn_runtime::test_images::{BUSYBOX_IMAGE, write_busybox_layout};
use cairnctl::client::NodeClient;
use common::{HostedNode, config_file, pod_named, secrets_and_config};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};

const T: Duration = Duration::from_secs(30);
const NODE: &str = "agent-1";

async fn until<T, Fut: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> Fut,
) -> T {
    let deadline = Instant::now() + T;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {T:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pod(name: &str, command: &str, restart: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 20,
            "volumes": [{"name": "conf", "configMap": {"name": "settings"}},
                        {"name": "creds", "secret": {"secretName": "creds"}}],
            "containers": [{
                "name": "main", "image": BUSYBOX_IMAGE,
                "command": ["sh", "-c", command],
                "volumeMounts": [{"name": "conf", "mountPath": "/etc/conf"},
                                 {"name": "creds", "mountPath": "/etc/creds"}],
            }],
        },
    }))
    .unwrap()
}

fn condition(pod: &Pod, kind: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

#[test]
#[ignore = "needs root (namespaces, cgroups, mounts)"]
fn the_agent_registers_the_node_and_runs_reports_and_deletes_its_pods() {
    let (secrets, config) = secrets_and_config(NODE);
    let file = config_file(&config.to_yaml().unwrap());
    let mut node = HostedNode::start(file.path(), &[]);
    let machine_api = node.api_address(T);
    let line = node.seen_or_wait_for(r"Kubernetes API serving address=", T);
    let kube_api = line.rsplit("address=").next().unwrap().trim().to_owned();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(drive(&secrets, &machine_api, &kube_api));
    }));
    if let Err(panic) = outcome {
        eprintln!("node log:\n{}", node.log_so_far());
        std::panic::resume_unwind(panic);
    }
    node.signal("TERM");
    node.wait_for(r"shutdown: complete", T);
    assert!(node.wait_exit(T).success());
}

/// The scenario, through the machine API at `machine_api` and the Kubernetes API at
/// `kube_api`.
async fn drive(secrets: &cairn_api::bundle::Secrets, machine_api: &str, kube_api: &str) {
    {
        // A one-node store: bootstrapped as an operator would.
        let operator = NodeClient::new(machine_api, &context(secrets)).unwrap();
        let deadline = Instant::now() + T;
        loop {
            let done: Result<Ack, _> = operator
                .post(paths::STORE_BOOTSTRAP, &serde_json::json!({}))
                .await;
            match done {
                Ok(_) => break,
                Err(err) => {
                    assert!(Instant::now() < deadline, "bootstrap: {err}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let text =
            cairn_api::kubeconfig::admin(&secrets.ca, "test", &format!("https://{kube_api}"))
                .unwrap();
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        config.read_timeout = Some(Duration::from_secs(10));
        let client = kube::Client::try_from(config).unwrap();

        // The node registers itself Ready, with what it has, and keeps its Lease.
        let nodes: Api<Node> = Api::all(client.clone());
        let registered = until("the node to register Ready", || async {
            let node = nodes.get_opt(NODE).await.ok().flatten()?;
            let ready = node
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(node)
        })
        .await;
        let labels = registered.metadata.labels.clone().unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], NODE);
        assert!(labels.contains_key("node-role.kubernetes.io/control-plane"));
        let status = registered.status.clone().unwrap();
        assert!(status.allocatable.unwrap().contains_key("cpu"));
        let info = status.node_info.unwrap();
        assert!(info.kubelet_version.starts_with("v1."), "{info:?}");
        assert_eq!(info.operating_system, "linux");
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
        let first = until("the node lease", || async {
            leases.get_opt(NODE).await.ok().flatten()?.spec?.renew_time
        })
        .await;
        until("the node lease to be renewed", || async {
            let now = leases
                .get_opt(NODE)
                .await
                .ok()
                .flatten()?
                .spec?
                .renew_time?;
            (now != first).then_some(())
        })
        .await;

        // The image the pods need, through the machine API as cairnctl imports it.
        let operator = NodeClient::new(machine_api, &context(secrets)).unwrap();
        let work = tempfile::tempdir().unwrap();
        let layout = work.path().join("busybox");
        write_busybox_layout(Path::new("/bin/busybox"), &layout).unwrap();
        let mut archive = tar::Builder::new(Vec::new());
        archive.append_dir_all(".", &layout).unwrap();
        let imported: Vec<ImageInfo> = operator
            .post_bytes(
                paths::IMAGES,
                archive.into_inner().unwrap(),
                "application/x-tar",
            )
            .await
            .unwrap();
        assert_eq!(imported[0].name, BUSYBOX_IMAGE);

        // The sources the pods mount.
        let maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(client.clone(), "default");
        maps.create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "settings"}, "data": {"greeting": "hello"}}))
            .unwrap(),
        )
        .await
        .unwrap();
        let secrets_api: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(client.clone(), "default");
        secrets_api
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "creds"}, "stringData": {"password": "s3cret"}}))
                .unwrap(),
            )
            .await
            .unwrap();

        // A long-running pod: bound, started, reported Running and Ready.
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let serve = "test \"$(cat /etc/conf/greeting)$(cat /etc/creds/password)\" = hellos3cret \
                     || exit 3; echo serving; trap 'exit 0' TERM; while true; do sleep 0.2; done";
        pods.create(&PostParams::default(), &pod("web", serve, "Always"))
            .await
            .unwrap();
        let running = until("web to run and be ready", || async {
            let pod = pods.get("web").await.ok()?;
            (phase(&pod) == Some("Running") && condition(&pod, "Ready").as_deref() == Some("True"))
                .then_some(pod)
        })
        .await;
        assert_eq!(
            running.spec.as_ref().unwrap().node_name.as_deref(),
            Some(NODE)
        );
        let status = running.status.as_ref().unwrap();
        assert_eq!(status.host_ip.as_deref(), Some("10.5.0.2"));
        assert!(status.start_time.is_some());
        let main = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(main.restart_count, 0, "{main:?}");
        assert!(main.state.as_ref().unwrap().running.is_some(), "{main:?}");
        assert_eq!(condition(&running, "PodScheduled").as_deref(), Some("True"));
        // What `kubectl describe pod web` lists: the scheduler's event, then the
        // agent's, in the kubelet's words.
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(client.clone(), "default");
        let reasons_of = |name: &'static str| {
            let events = events.clone();
            async move {
                let listed = events.list(&Default::default()).await.ok()?;
                Some(
                    listed
                        .items
                        .into_iter()
                        .filter(|e| e.involved_object.name.as_deref() == Some(name))
                        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
                        .collect::<Vec<_>>(),
                )
            }
        };
        let told = until("web's kubelet events", || async {
            let told = reasons_of("web").await?;
            told.iter().any(|(r, _)| r == "Started").then_some(told)
        })
        .await;
        for (reason, message) in [
            (
                "Scheduled",
                format!("Successfully assigned default/web to {NODE}"),
            ),
            (
                "Pulled",
                format!("Container image \"{BUSYBOX_IMAGE}\" already present on machine"),
            ),
            ("Created", "Created container: main".to_owned()),
            ("Started", "Started container main".to_owned()),
        ] {
            assert!(
                told.iter().any(|(r, m)| *r == reason && *m == message),
                "no {reason} event {message:?} in {told:?}"
            );
        }

        // A pod that ends: Succeeded, not restarted.
        pods.create(&PostParams::default(), &pod("once", "echo done", "Never"))
            .await
            .unwrap();
        let done = until("once to succeed", || async {
            let pod = pods.get("once").await.ok()?;
            (phase(&pod) == Some("Succeeded")).then_some(pod)
        })
        .await;
        let ended = &done
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0];
        let terminated = ended.state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(terminated.exit_code, 0);
        assert_eq!(condition(&done, "Ready").as_deref(), Some("False"));

        // kubectl reads the logs and runs commands, through the API server's relay.
        let kubeconfig = work.path().join("kubeconfig");
        std::fs::write(&kubeconfig, &text).unwrap();
        let kubectl = |args: &[&str], input: &str| kubectl(&kubeconfig, args, input);
        let (code, out, err) = kubectl(&["logs", "web"], "");
        assert_eq!((code, out.as_str()), (0, "serving\n"), "{err}");
        let (code, out, err) = kubectl(&["logs", "once", "--tail=1"], "");
        assert_eq!((code, out.as_str()), (0, "done\n"), "{err}");
        let (code, out, err) = kubectl(&["logs", "once", "--limit-bytes=2"], "");
        assert_eq!((code, out.as_str()), (0, "do"), "{err}");
        let (code, out, err) = kubectl(&["logs", "once", "--since=1h"], "");
        assert_eq!((code, out.as_str()), (0, "done\n"), "{err}");
        // Written before this time: nothing to show.
        let later = "2100-01-01T00:00:00Z";
        let (code, out, err) = kubectl(&["logs", "once", &format!("--since-time={later}")], "");
        assert_eq!((code, out.as_str()), (0, ""), "{err}");
        // Following a container that has exited ends with its log.
        let (code, out, err) = kubectl(&["logs", "-f", "once"], "");
        assert!(code == 0 && out.ends_with("done\n"), "{code} {out:?} {err}");
        let (code, _, err) = kubectl(&["logs", "web", "-c", "nope"], "");
        assert_ne!(code, 0);
        assert!(
            err.contains("container nope is not valid for pod web"),
            "{err}"
        );
        let (code, out, err) = kubectl(&["exec", "web", "--", "cat", "/etc/conf/greeting"], "");
        assert_eq!((code, out.as_str()), (0, "hello"), "{err}");
        let (code, out, err) = kubectl(&["exec", "-i", "web", "--", "cat"], "ping\n");
        assert_eq!((code, out.as_str()), (0, "ping\n"), "{err}");
        let (code, _, err) = kubectl(&["exec", "web", "--", "sh", "-c", "exit 3"], "");
        assert_eq!(code, 3, "{err}");
        let (code, _, err) = kubectl(&["exec", "web", "--", "/no/such/command"], "");
        assert_ne!(code, 0, "{err}");
        // The pod's account credentials, mounted by the API server's admission from
        // the token the agent requested and the controllers' kube-root-ca.crt.
        let account = |file: &str| {
            let path = format!("/var/run/secrets/kubernetes.io/serviceaccount/{file}");
            let (code, out, err) = kubectl(&["exec", "web", "--", "cat", &path], "");
            assert_eq!(code, 0, "{file}: {err}");
            out
        };
        assert_eq!(account("namespace"), "default");
        assert_eq!(account("ca.crt"), secrets.ca.cert_pem());
        let token = account("token");
        let claims = token.split('.').nth(1).expect("a JWT");
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["sub"], "system:serviceaccount:default:default");

        // A readiness probe that always fails: one Unhealthy event, its count growing
        // with each failed attempt (the same event again adds to it).
        let mut sick = pod("sick", "exec sleep 600", "Always");
        sick.spec.as_mut().unwrap().containers[0].readiness_probe = Some(
            serde_json::from_value(serde_json::json!({
                "exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 1
            }))
            .unwrap(),
        );
        pods.create(&PostParams::default(), &sick).await.unwrap();
        let unhealthy = until("sick's Unhealthy event counted twice", || async {
            let listed = events.list(&Default::default()).await.ok()?;
            let told: Vec<_> = listed
                .items
                .into_iter()
                .filter(|e| {
                    e.involved_object.name.as_deref() == Some("sick")
                        && e.reason.as_deref() == Some("Unhealthy")
                })
                .collect();
            told.iter()
                .any(|e| e.count.unwrap_or(0) >= 2)
                .then_some(told)
        })
        .await;
        assert_eq!(unhealthy.len(), 1, "{unhealthy:?}");
        let told = &unhealthy[0];
        assert_eq!(told.type_.as_deref(), Some("Warning"));
        assert!(
            told.message
                .as_deref()
                .is_some_and(|m| m.starts_with("Readiness probe failed: ")),
            "{told:?}"
        );
        pods.delete("sick", &DeleteParams::default()).await.unwrap();

        // Deleting web: it is stopped (its TERM trap exits at once, well inside the
        // grace period), leaves the node, and then the API.
        let uid = running.metadata.uid.clone().unwrap();
        pods.delete("web", &DeleteParams::default()).await.unwrap();
        let deleting = pods.get("web").await.unwrap();
        assert!(deleting.metadata.deletion_timestamp.is_some());
        until("web to be gone from the API", || async {
            pods.get_opt("web").await.ok()?.is_none().then_some(())
        })
        .await;
        until("web's Killing event", || async {
            let told = reasons_of("web").await?;
            told.iter()
                .any(|(r, m)| r == "Killing" && m == "Stopping container main")
                .then_some(())
        })
        .await;
        assert!(
            pod_named(&operator, "web").await.is_none(),
            "the runtime still has web ({uid})"
        );
        // A finished pod is deleted at once and leaves the node too.
        pods.delete("once", &DeleteParams::default()).await.unwrap();
        until("once to leave the node", || async {
            pod_named(&operator, "once").await.is_none().then_some(())
        })
        .await;
    }
}

/// Runs the kubectl of the test venv (`cargo xtask test` makes it) with `kubeconfig`,
/// writing `input` to its stdin: its exit code, stdout and stderr.
fn kubectl(kubeconfig: &Path, args: &[&str], input: &str) -> (i32, String, String) {
    use std::io::Write;
    let venv = std::env::var_os("CAIRN_VENV")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            Path::new(env!("CARGO_BIN_EXE_cairn"))
                .ancestors()
                .map(|dir| dir.join("cairn-venv"))
                .find(|venv| venv.exists())
        })
        .expect("the test venv with kubectl (cargo xtask test makes it under the target dir)");
    let mut child = std::process::Command::new(venv.join("bin/kubectl"))
        // Global flags first: everything after `--` is the command's.
        .args(["--request-timeout", "30s"])
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", kubeconfig.parent().unwrap())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn context(secrets: &cairn_api::bundle::Secrets) -> Context {
    let cert = secrets.client("tester", Role::Admin).unwrap();
    Context {
        endpoints: Vec::new(),
        nodes: Vec::new(),
        ca: secrets.ca.cert_pem().to_owned(),
        crt: cert.cert_pem,
        key: cert.key_pem,
    }
}
