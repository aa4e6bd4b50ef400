//! Host tier (root): a static pod on `cairn node`, driven through the machine API as
//! `cairnctl` does: it waits for its image, which is then imported; an init-time
//! sidecar, a config map volume (from `machine.configMaps`), a readiness probe, limits in the cgroup files, a crash and its restart
//! (with the previous instance's log), a followed log that sees the graceful stop when
//! the node shuts down, exec through the machine API (streams, exit code, stdin, a
//! terminal), and nothing left behind (shims, mounts, cgroups).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_api::client_config::Context;
use cairn_api::machine_api::{ApplyMode, ApplyRequest, ApplyResponse, ImageInfo, PodInfo, paths};
use cairn_api::pki::Role;
use cairn_api::remote_command::ExecRequest;
use cairn_runtime::cgroups::CgroupLayout;
use cairn_runtime::test_images::{BUSYBOX_IMAGE, write_busybox_layout};
use cairnctl::client::NodeClient;
use cairnctl::exec::LocalStreams;
use common::{HostedNode, config_file, pod_named, secrets_and_config, until_pod};

const T: Duration = Duration::from_secs(30);

fn static_pod() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "volumes": [{"name": "shared", "emptyDir": {}},
                        {"name": "conf", "configMap": {"name": "settings"}}],
            "initContainers": [{
                "name": "sidecar", "image": BUSYBOX_IMAGE, "restartPolicy": "Always",
                "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do date > /shared/now; sleep 0.5; done"],
                "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]
            }],
            "containers": [{
                "name": "main", "image": BUSYBOX_IMAGE,
                "command": ["sh", "-c", "if [ -f /shared/crashed ]; then echo second run, $(cat /etc/conf/greeting); trap 'echo stopping; exit 0' TERM; while true; do sleep 0.2; done; else echo first run; touch /shared/crashed; exit 1; fi"],
                "resources": {"limits": {"memory": "48Mi", "cpu": "500m"}},
                "readinessProbe": {"exec": {"command": ["test", "-f", "/shared/now"]}, "periodSeconds": 1},
                "volumeMounts": [{"name": "shared", "mountPath": "/shared"},
                                 {"name": "conf", "mountPath": "/etc/conf"}]
            }]
        }
    })
}

fn config_map() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings"},
        "data": {"greeting": "hi there"}
    })
}

fn context(secrets: &cairn_api::bundle::Secrets, role: Role) -> Context {
    let cert = secrets.client("tester", role).unwrap();
    Context {
        endpoints: Vec::new(),
        nodes: Vec::new(),
        ca: secrets.ca.cert_pem().to_owned(),
        crt: cert.cert_pem,
        key: cert.key_pem,
    }
}

async fn pod(client: &NodeClient) -> Option<PodInfo> {
    pod_named(client, "web").await
}

async fn until<T>(what: &str, client: &NodeClient, check: impl Fn(&PodInfo) -> Option<T>) -> T {
    until_pod(client, "web", what, T, check).await
}

fn container<'a>(pod: &'a PodInfo, name: &str) -> &'a cairn_api::machine_api::ContainerInfo {
    pod.containers.iter().find(|c| c.name == name).unwrap()
}

/// Output captured from `cairnctl exec`.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Runs `command` in `main` as `cairnctl exec` does; exit code, stdout, stderr.
async fn exec(
    client: &NodeClient,
    container: &str,
    command: &[&str],
    stdin: Option<&str>,
    tty: bool,
) -> anyhow::Result<(i32, String, String)> {
    let request = ExecRequest {
        command: command.iter().map(|s| s.to_string()).collect(),
        stdin: stdin.is_some(),
        stdout: true,
        stderr: !tty,
        tty,
    };
    let (stdout, stderr) = (Captured::default(), Captured::default());
    let streams = LocalStreams {
        stdin: Box::new(std::io::Cursor::new(stdin.unwrap_or_default().to_owned())),
        stdout: Box::new(stdout.clone()),
        stderr: Box::new(stderr.clone()),
        terminal_size: false,
    };
    let code = cairnctl::exec::exec(client, "default", "web", container, &request, streams).await?;
    Ok((code, stdout.text(), stderr.text()))
}

/// Exec over the machine API's WebSocket: admins only; output on its streams, the
/// exit code, stdin to its end, a terminal, and a clear error for a wrong container.
async fn exec_through_the_api(operator: &NodeClient, admin: &NodeClient) {
    let refused = exec(operator, "main", &["true"], None, false)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("403"), "{refused:#}");
    let (code, out, err) = exec(
        admin,
        "main",
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
        None,
        false,
    )
    .await
    .unwrap();
    assert_eq!((code, out.as_str(), err.as_str()), (7, "out\n", "err\n"));
    let (code, out, _) = exec(
        admin,
        "main",
        &["sh", "-c", "cat; echo done"],
        Some("hello\n"),
        false,
    )
    .await
    .unwrap();
    assert_eq!((code, out.as_str()), (0, "hello\ndone\n"));
    let (code, out, _) = exec(
        admin,
        "main",
        &["sh", "-c", "tty; echo oops >&2"],
        None,
        true,
    )
    .await
    .unwrap();
    assert_eq!(code, 0);
    assert!(
        out.starts_with("/dev/pts/") && out.ends_with("\r\noops\r\n"),
        "{out:?}"
    );
    let wrong = exec(admin, "nope", &["true"], None, false)
        .await
        .unwrap_err();
    assert!(
        wrong
            .to_string()
            .contains(r#"container "nope" is not running"#),
        "{wrong:#}"
    );
}

/// Processes whose command line names `dir` (shims of this node).
fn processes_naming(dir: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(dir))
        })
        .collect()
}

#[test]
#[ignore = "needs root (namespaces, cgroups, mounts)"]
fn a_static_pod_runs_restarts_and_stops_on_a_hosted_node() {
    let (secrets, mut config) = secrets_and_config("pods-1");
    config.machine.pods = vec![static_pod()];
    config.machine.config_maps = vec![config_map()];
    let file = config_file(&config.to_yaml().unwrap());
    let mut node = HostedNode::start(file.path(), &[]);
    let address = node.api_address(T);
    // The runtime and the machine API start in no fixed order.
    let line = node.seen_or_wait_for(r"container runtime ready cgroups=", T);
    let root = line.rsplit("root=").next().unwrap().trim().to_owned();
    // A hosted node's pods go under a cgroup of its own, not the machine's `/cairn`.
    let cgroups = line.split("cgroups=").nth(1).unwrap();
    let cgroups = cgroups.split_whitespace().next().unwrap().to_owned();
    assert_ne!(cgroups, "/cairn");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let uid = runtime.block_on(async {
        let client = NodeClient::new(&address, &context(&secrets, Role::Operator)).unwrap();
        // Without its image the pod waits and says why.
        until("the pod to wait for its image", &client, |p| {
            (container(p, "sidecar").reason.as_deref() == Some("ErrImagePull")).then_some(())
        })
        .await;
        let work = tempfile::tempdir().unwrap();
        let layout = work.path().join("busybox");
        write_busybox_layout(Path::new("/bin/busybox"), &layout).unwrap();
        let mut archive = tar::Builder::new(Vec::new());
        archive.append_dir_all(".", &layout).unwrap();
        let imported: Vec<ImageInfo> = client
            .post_bytes(
                paths::IMAGES,
                archive.into_inner().unwrap(),
                "application/x-tar",
            )
            .await
            .unwrap();
        assert_eq!(imported[0].name, BUSYBOX_IMAGE);
        let running = until("main to run again after its crash, ready", &client, |p| {
            let main = container(p, "main");
            (main.state == "running" && main.restart_count == 1 && main.ready).then(|| p.clone())
        })
        .await;
        assert_eq!(running.phase, "Running");
        assert_eq!(container(&running, "sidecar").state, "running");
        let logs = |previous: bool| {
            format!(
                "{}/default/web/containers/main/logs?previous={previous}",
                paths::PODS
            )
        };
        assert_eq!(client.get_text(&logs(true)).await.unwrap(), "first run\n");
        assert_eq!(
            client.get_text(&logs(false)).await.unwrap(),
            "second run, hi there\n"
        );
        let limits = CgroupLayout::detect()
            .limits(&format!("{cgroups}/pod{}/main-1", running.uid))
            .unwrap();
        assert_eq!(limits.memory_bytes, Some(48 << 20));
        assert_eq!(limits.cpu_quota_micros, Some(50_000));
        let admin = NodeClient::new(&address, &context(&secrets, Role::Admin)).unwrap();
        exec_through_the_api(&client, &admin).await;
        // Follow the log while the pod is taken out of the config: it stops gracefully,
        // then goes.
        let follower = client.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let path = format!(
            "{}/default/web/containers/main/logs?follow=true",
            paths::PODS
        );
        let following = tokio::spawn(async move {
            let _ = follower
                .stream(&path, |line| {
                    let _ = tx.send(line.to_owned());
                })
                .await;
        });
        assert_eq!(
            tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap(),
            "second run, hi there"
        );
        let mut without = config.clone();
        without.machine.pods.clear();
        let applied: ApplyResponse = admin
            .post(
                paths::MACHINE_CONFIG,
                &ApplyRequest {
                    config: without.to_yaml().unwrap(),
                    mode: ApplyMode::Auto,
                    try_timeout_secs: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(applied.changes.live, ["machine.pods"]);
        let stopping = tokio::time::timeout(T, rx.recv()).await.unwrap();
        assert_eq!(stopping.as_deref(), Some("stopping"));
        following.abort();
        let deadline = Instant::now() + T;
        while pod(&client).await.is_some() {
            assert!(Instant::now() < deadline, "the pod was not removed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        running.uid
    });
    node.signal("TERM");
    node.wait_for(r"container runtime stopped", T);
    assert!(node.wait_exit(T).success());
    assert_eq!(processes_naming(&root), Vec::<i32>::new(), "stray shims");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&root), "stray mounts under {root}");
    let pod_cgroup = CgroupLayout::detect().dir("memory", &format!("{cgroups}/pod{uid}"));
    assert!(
        !pod_cgroup.exists(),
        "stray cgroup {}",
        pod_cgroup.display()
    );
    // An ephemeral node takes its pods' parent cgroup with it too.
    let parent = CgroupLayout::detect().dir("memory", &cgroups);
    assert!(!parent.exists(), "stray cgroup {}", parent.display());
    let _ = std::fs::remove_dir_all(Path::new(&root).parent().unwrap());
}
