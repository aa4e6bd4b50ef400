//! Host tests of pods on the real runtime (root: namespaces, cgroups, overlay mounts,
//! libcontainer through `cairn-shim`): the busybox test image, logs, limits in the
//! cgroup files, OOM kills, crash-loop back-off, probes, init containers, sidecars,
//! volumes, graceful stops, exec, and a runtime restart re-attaching to its shims.
//! Each test leaves no cgroup, mount, shim or state behind, even when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cairn_net::netns::NetNamespace;
use cairn_net::pod_network::{PodNetwork, PodNetworkConfig, PodNetworkSlot};
use cairn_runtime::cgroups::CgroupLayout;
use cairn_runtime::container::ShimProgram;
use cairn_runtime::cri_log::ReadOptions;
use cairn_runtime::exec::{ExecOptions, ExecSession};
use cairn_runtime::plan::PodIdentity;
use cairn_runtime::pod::{BackoffPolicy, Phase, PodRuntimeStatus};
use cairn_runtime::runtime::{PodRequest, Runtime, RuntimeConfig};
use cairn_runtime::test_images::write_busybox_layout;
use cairn_runtime::volumes::{PodSources, SourceReader, SourceRefresh};
use k8s_openapi::api::core::v1::{ConfigMap, ContainerStatus, PodSpec};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A runtime in a temporary directory with the busybox image, cleaned up on drop
/// (shims killed, mounts undone, cgroups removed) whatever the test did.
struct Node {
    runtime: Option<Runtime>,
    config: RuntimeConfig,
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        Self::with_backoff(BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(4),
            reset_after: Duration::from_secs(600),
        })
    }

    fn with_backoff(backoff: BackoffPolicy) -> Self {
        Self::build(backoff, None)
    }

    /// A node whose pods join `network`.
    fn with_pod_network(network: Arc<PodNetwork>) -> Self {
        Self::build(BackoffPolicy::default(), Some(network))
    }

    fn build(backoff: BackoffPolicy, pod_network: Option<Arc<PodNetwork>>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cairn-pods-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let shim = ShimProgram {
            program: PathBuf::from(env!("CARGO_BIN_EXE_cairn-shim")),
            args: vec![],
        };
        let mut config = RuntimeConfig::new(
            &dir.path().join("state"),
            &dir.path().join("logs"),
            shim,
            "test-node",
        );
        config.cgroup_parent = format!("/cairn-test-{}-{n}", std::process::id());
        config.pids_limit = Some(256);
        config.backoff = backoff;
        config.pod_network = pod_network.map(PodNetworkSlot::ready);
        let runtime = Runtime::open(config.clone()).unwrap();
        let layout = dir.path().join("busybox");
        write_busybox_layout(Path::new("/bin/busybox"), &layout).unwrap();
        runtime.images().import(&layout).unwrap();
        Self {
            runtime: Some(runtime),
            config,
            dir,
        }
    }

    fn runtime(&self) -> &Runtime {
        self.runtime.as_ref().unwrap()
    }

    /// Restarts the runtime as a restarted service would: pods and shims stay.
    fn restart_runtime(&mut self) {
        self.runtime.take().unwrap().detach();
        self.runtime = Some(Runtime::open(self.config.clone()).unwrap());
    }

    fn run(&self, name: &str, spec: &str) -> String {
        self.run_with(name, spec, PodSources::default())
    }

    fn run_with(&self, name: &str, spec: &str, sources: PodSources) -> String {
        let uid = format!("uid-{name}");
        let spec: PodSpec = serde_json::from_str(spec).unwrap();
        self.runtime()
            .ensure_pod(PodRequest {
                identity: PodIdentity {
                    namespace: "default".into(),
                    name: name.into(),
                    uid: uid.clone(),
                },
                spec,
                sources,
                ..PodRequest::default()
            })
            .unwrap();
        uid
    }

    fn status(&self, uid: &str) -> PodRuntimeStatus {
        self.runtime().pod_status(uid).unwrap()
    }

    fn log(&self, uid: &str, container: &str, previous: bool) -> String {
        let mut text = Vec::new();
        self.runtime()
            .read_log(
                uid,
                container,
                previous,
                &ReadOptions::default(),
                || true,
                |chunk| {
                    text.extend_from_slice(chunk);
                    Ok(())
                },
            )
            .unwrap();
        String::from_utf8(text).unwrap()
    }

    /// Everything of this node still mounted.
    fn mounts(&self) -> Vec<String> {
        let root = self.dir.path().to_string_lossy().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&root))
            .map(str::to_owned)
            .collect()
    }

    /// Asserts that removing every pod left nothing behind.
    async fn remove_all_and_check(&self) {
        for pod in self.runtime().list_pods() {
            self.runtime().remove_pod(&pod.uid).await.unwrap();
        }
        assert_eq!(self.mounts(), Vec::<String>::new(), "stray mounts");
        let parent = CgroupLayout::detect().dir("memory", &self.config.cgroup_parent);
        let children: Vec<PathBuf> = std::fs::read_dir(&parent)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        assert_eq!(children, Vec::<PathBuf>::new(), "stray cgroups");
        let state = self.config.root.join("containers");
        assert_eq!(
            std::fs::read_dir(&state).unwrap().count(),
            0,
            "stray libcontainer state"
        );
        assert_eq!(
            std::fs::read_dir(self.config.root.join("pods"))
                .unwrap()
                .count(),
            0
        );
        let strays: Vec<String> = shim_pids(self.dir.path())
            .iter()
            .map(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
                    .into_iter()
                    .flatten()
                    .filter_map(Result::ok)
                    .map(|t| {
                        let wchan =
                            std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
                        let syscall =
                            std::fs::read_to_string(t.path().join("syscall")).unwrap_or_default();
                        format!("{wchan} {syscall}")
                    })
                    .collect();
                format!(
                    "{pid} {} [{stat}] tasks {tasks:?}",
                    String::from_utf8_lossy(&cmdline).replace('\0', " ")
                )
            })
            .collect();
        assert_eq!(strays, Vec::<String>::new(), "stray shims");
    }
}

/// Processes whose command line names a directory of `root` (shims, containers).
fn shim_pids(root: &Path) -> Vec<i32> {
    let needle = root.to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.detach();
        }
        // Kill shims and their containers, then undo mounts and cgroups.
        for pid in shim_pids(self.dir.path()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for status in walk(&self.config.root.join("pods"), "status.json") {
            if let Ok(text) = std::fs::read_to_string(&status)
                && let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(pid) = value.get("pid").and_then(|p| p.as_i64())
                && value.get("state").and_then(|s| s.as_str()) == Some("running")
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = CgroupLayout::detect().remove_tree(&self.config.cgroup_parent);
    }
}

fn walk(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        let path = entry.path();
        if entry
            .file_type()
            .is_ok_and(|t| t.is_dir() && !t.is_symlink())
        {
            found.extend(walk(&path, name));
        } else if entry.file_name() == name {
            found.push(path);
        }
    }
    found
}

/// Polls `check` until it yields, failing after `within` with what `node` says about
/// its pods.
async fn eventually<T>(
    node: &Node,
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            let statuses: Vec<_> = node
                .runtime()
                .list_pods()
                .iter()
                .map(|p| node.runtime().pod_status(&p.uid))
                .collect();
            let shim_logs: Vec<String> = walk(&node.config.root.join("pods"), "shim.log")
                .iter()
                .map(|p| {
                    format!(
                        "{}: {}",
                        p.display(),
                        std::fs::read_to_string(p).unwrap_or_default()
                    )
                })
                .collect();
            panic!("timed out waiting for {what}; pods: {statuses:#?}\nshim logs: {shim_logs:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn container<'a>(status: &'a PodRuntimeStatus, name: &str) -> &'a ContainerStatus {
    status
        .container_statuses
        .iter()
        .chain(&status.init_container_statuses)
        .find(|c| c.name == name)
        .unwrap()
}

fn running(status: &ContainerStatus) -> bool {
    status.state.as_ref().is_some_and(|s| s.running.is_some())
}

fn exit_code(status: &ContainerStatus) -> Option<i32> {
    status
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

const IMAGE: &str = cairn_runtime::test_images::BUSYBOX_IMAGE;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root (namespaces, cgroups, mounts)"]
async fn a_pod_runs_writes_logs_and_ends_as_its_restart_policy_says() {
    let node = Node::new();
    let uid = node.run(
        "once",
        &format!(
            r#"{{"restartPolicy":"Never","containers":[{{"name":"main","image":"{IMAGE}",
                "command":["sh","-c","echo hello from $HOSTNAME as $(id -u); echo oops >&2; exit 3"]}}]}}"#
        ),
    );
    let status = eventually(&node, "the pod to fail", Duration::from_secs(30), || {
        let status = node.status(&uid);
        (status.phase == Phase::Failed).then_some(status)
    })
    .await;
    let main = container(&status, "main");
    assert_eq!(exit_code(main), Some(3));
    let terminated = main.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(terminated.reason.as_deref(), Some("Error"));
    assert_eq!(main.restart_count, 0);
    let log = node.log(&uid, "main", false);
    assert!(log.contains("hello from once as 0\n"), "{log}");
    assert!(log.contains("oops\n"), "{log}");
    node.remove_all_and_check().await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root (namespaces, cgroups, mounts)"]
async fn limits_are_in_the_cgroup_files_and_an_oom_kill_is_reported() {
    let node = Node::new();
    let uid = node.run(
        "limits",
        &format!(
            r#"{{"restartPolicy":"Never","containers":[
                {{"name":"steady","image":"{IMAGE}","command":["sleep","3600"],
                  "resources":{{"limits":{{"memory":"32Mi","cpu":"250m"}},"requests":{{"cpu":"100m"}}}}}},
                {{"name":"hog","image":"{IMAGE}",
                  "command":["sh","-c","dd if=/dev/zero bs=1M count=256 | tail > /dev/null"],
                  "resources":{{"limits":{{"memory":"24Mi"}}}}}}]}}"#
        ),
    );
    eventually(&node, "steady to run", Duration::from_secs(30), || {
        running(container(&node.status(&uid), "steady")).then_some(())
    })
    .await;
    let layout = CgroupLayout::detect();
    let cgroup = format!("{}/pod{uid}/steady-0", node.config.cgroup_parent);
    let limits = layout.limits(&cgroup).unwrap();
    assert_eq!(limits.memory_bytes, Some(32 << 20));
    assert_eq!(limits.cpu_quota_micros, Some(25_000));
    assert_eq!(limits.cpu_period_micros, Some(100_000));
    assert_eq!(limits.pids, Some(256));
    match layout {
        CgroupLayout::Legacy => assert_eq!(limits.cpu_weight, Some(102), "cpu.shares"),
        CgroupLayout::Unified => assert!(limits.cpu_weight.is_some_and(|w| w >= 1)),
    }
    let hog = eventually(
        &node,
        "the hog to be killed",
        Duration::from_secs(60),
        || {
            let status = node.status(&uid);
            let hog = container(&status, "hog").clone();
            exit_code(&hog).map(|_| hog)
        },
    )
    .await;
    let terminated = hog.state.unwrap().terminated.unwrap();
    assert_eq!(
        terminated.reason.as_deref(),
        Some("OOMKilled"),
        "{terminated:?}"
    );
    assert_eq!(terminated.exit_code, 137);
    node.remove_all_and_check().await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root (namespaces, cgroups, mounts)"]
async fn a_crash_looping_container_backs_off_doubling() {
    let node = Node::new();
    let uid = node.run(
        "crash",
        &format!(
            r#"{{"containers":[{{"name":"main","image":"{IMAGE}","command":["sh","-c","echo run; exit 1"]}}]}}"#
        ),
    );
    let mut messages: Vec<String> = Vec::new();
    eventually(&node, "three restarts", Duration::from_secs(60), || {
        let status = node.status(&uid);
        let main = container(&status, "main");
        if let Some(waiting) = main.state.as_ref().and_then(|s| s.waiting.as_ref())
            && waiting.reason.as_deref() == Some("CrashLoopBackOff")
        {
            let message = waiting.message.clone().unwrap_or_default();
            if messages.last() != Some(&message) {
                messages.push(message);
            }
        }
        (main.restart_count >= 3 && messages.len() >= 3).then_some(())
    })
    .await;
    let delays: Vec<&str> = messages
        .iter()
        .map(|m| m.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(&delays[..3], ["1s", "2s", "4s"], "{messages:?}");
    assert!(messages[0].contains("restarting failed container=main pod=crash_default"));
    let status = node.status(&uid);
    assert_eq!(status.phase, Phase::Running);
    let last = container(&status, "main").last_state.clone().unwrap();
    assert_eq!(last.terminated.unwrap().exit_code, 1);
    assert_eq!(
        node.log(&uid, "main", true),
        "run\n",
        "the previous instance's log"
    );
    node.remove_all_and_check().await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root (namespaces, cgroups, mounts)"]
async fn probes_flip_readiness_and_a_failed_liveness_probe_restarts() {
    let node = Node::new();
    let uid = node.run(
        "probed",
        &format!(
            r#"{{"containers":[{{"name":"web","image":"{IMAGE}",
                "command":["sh","-c","mkdir -p /www && echo ok > /www/index.html && touch /tmp/ready && exec httpd -f -p 8080 -h /www"],
                "ports":[{{"name":"http","containerPort":8080}}],
                "readinessProbe":{{"exec":{{"command":["cat","/tmp/ready"]}},"periodSeconds":1,"failureThreshold":1}},
                "livenessProbe":{{"httpGet":{{"path":"/index.html","port":"http"}},"periodSeconds":1,"failureThreshold":2}},
                "startupProbe":{{"tcpSocket":{{"port":8080}},"periodSeconds":1,"failureThreshold":30}}}}]}}"#
        ),
    );
    eventually(
        &node,
        "the container to be ready",
        Duration::from_secs(30),
        || {
            let status = node.status(&uid);
            let web = container(&status, "web");
            (web.ready && web.started == Some(true)).then_some(())
        },
    )
    .await;
    assert_eq!(
        exec_code(&node, &uid, "web", &["rm", "/tmp/ready"]).await,
        0
    );
    eventually(&node, "readiness to drop", Duration::from_secs(30), || {
        (!container(&node.status(&uid), "web").ready).then_some(())
    })
    .await;
    let status = node.status(&uid);
    assert!(status.container_statuses[0].restart_count == 0);
    // Each failed attempt is counted, with the kubelet's words, for `Unhealthy` events.
    let failures = status
        .probe_failures
        .iter()
        .find(|f| f.container == "web")
        .expect("web's probe failures");
    assert!(
        failures.count >= 1 && failures.last.starts_with("Readiness probe failed: "),
        "{failures:?}"
    );
    assert_eq!(
        exec_code(&node, &uid, "web", &["rm", "/www/index.html"]).await,
        0
    );
    eventually(
        &node,
        "the liveness probe to restart it",
        Duration::from_secs(60),
        || {
            let status = node.status(&uid);
            let web = container(&status, "web");
            (web.restart_count >= 1 && running(web) && web.ready).then_some(())
        },
    )
    .await;
    node.remove_all_and_check().await;
}

/// Hands out the `settings` config map, as the API has it once a user created it.
struct CreatedLater {
    reads: AtomicU32,
}

impl SourceReader for CreatedLater {
    fn read(&self) -> Pin<Box<dyn Future<Output = Result<PodSources, String>> + Send + '_>> {
        Box::pin(async move {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let config_map: ConfigMap = serde_json::from_str(
                r#"{"metadata":{"name":"settings"},"data":{"greeting":"late"}}"#,
            )
            .unwrap();
            Ok(PodSources {
                config_maps: [("settings".to_owned(), config_map)].into(),
                ..PodSources::default()
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root (namespaces, cgroups, mounts)"]
async fn a_config_map_created_after_the_pod_is_read_again_before_the_retry() {
    let node = Node::new();
    let reader = Arc::new(CreatedLater {
        reads: AtomicU32::new(0),
    });
    let spec: PodSpec = serde_json::from_str(&format!(
        r#"{{"volumes":[{{"name":"conf","configMap":{{"name":"settings"}}}}],
            "containers":[{{"name":"app","image":"{IMAGE}",
              "command":["sh","-c","cat /etc/conf/greeting; echo; while true; do sleep 0.2; done"],
              "volumeMounts":[{{"name":"conf","mountPath":"/etc/conf"}}]}}]}}"#
    ))
    .unwrap();
    node.runtime()
        .ensure_pod(PodRequest {
            identity: PodIdentity {
                namespace: "default".into(),
                name: "late".into(),
                uid: "uid-late".into(),
            },
            spec,
            // The map did not exist when the agent first looked.
            sources: PodSources::default(),
            refresh: Some(SourceRefresh(reader.clone())),
            ..PodRequest::default()
        })
        .unwrap();
    let message = eventually(&node, "the setup to fail", Duration::from_secs(10), || {
        node.status("uid-late").message
    })
    .await;
    assert!(message.contains("settings"), "{message}");
    eventually(&node, "the app to run", Duration::from_secs(30), || {
        let status = node.status("uid-late");
        (status.phase == Phase::Running && running(container(&status, "app"))).then_some(())
    })
    .await;
    assert!(reader.reads.load(Ordering::SeqCst) >= 1);
    let log = eventually(&node, "the app's output", Duration::from_secs(10), || {
        let log = node.log("uid-late", "app", false);
        log.contains('\n').then_some(log)
    })
    .await;
    assert_eq!(log, "late\n");
    node.remove_all_and_check().await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root (namespaces, cgroups, mounts)"]
async fn init_containers_sidecars_volumes_and_a_graceful_stop() {
    let node = Node::new();
    let config_map: ConfigMap =
        serde_json::from_str(r#"{"metadata":{"name":"settings"},"data":{"greeting":"hi there"}}"#)
            .unwrap();
    let sources = PodSources {
        config_maps: [("settings".to_owned(), config_map)].into(),
        ..PodSources::default()
    };
    let uid = node.run_with(
        "full",
        &format!(
            r#"{{"terminationGracePeriodSeconds":20,
                "volumes":[{{"name":"shared","emptyDir":{{}}}},{{"name":"conf","configMap":{{"name":"settings"}}}}],
                "initContainers":[
                  {{"name":"prepare","image":"{IMAGE}","command":["sh","-c","echo prepared > /shared/note"],
                    "volumeMounts":[{{"name":"shared","mountPath":"/shared"}}]}},
                  {{"name":"sidecar","image":"{IMAGE}","restartPolicy":"Always",
                    "securityContext":{{"runAsUser":1234}},
                    "command":["sh","-c","trap 'echo sidecar stops; exit 0' TERM; while true; do sleep 0.2; done"]}}],
                "containers":[{{"name":"app","image":"{IMAGE}",
                  "command":["sh","-c","cat /shared/note /etc/conf/greeting; echo; hostname; trap 'sleep 1; echo got TERM; exit 0' TERM; while true; do sleep 0.2; done"],
                  "volumeMounts":[{{"name":"shared","mountPath":"/shared"}},{{"name":"conf","mountPath":"/etc/conf"}}],
                  "resources":{{"limits":{{"memory":"64Mi"}}}}}}]}}"#
        ),
        sources,
    );
    eventually(&node, "the app to run", Duration::from_secs(30), || {
        let status = node.status(&uid);
        (status.phase == Phase::Running && running(container(&status, "app"))).then_some(())
    })
    .await;
    let status = node.status(&uid);
    assert!(status.initialized);
    assert_eq!(exit_code(container(&status, "prepare")), Some(0));
    assert!(running(container(&status, "sidecar")));
    let log = eventually(&node, "the app's output", Duration::from_secs(10), || {
        let log = node.log(&uid, "app", false);
        log.contains("full\n").then_some(log)
    })
    .await;
    assert_eq!(log, "prepared\nhi there\nfull\n");
    // The config map is read-only inside; exec reports the command's output and code.
    let mut exec = start_exec(
        &node,
        &uid,
        "app",
        &[
            "sh",
            "-c",
            "cat /etc/conf/greeting; echo x > /etc/conf/greeting",
        ],
        false,
    )
    .await;
    let mut output = String::new();
    {
        use tokio::io::AsyncReadExt;
        let stdout = exec.process.stdout.take().unwrap();
        cairn_runtime::process::async_reader(stdout)
            .unwrap()
            .read_to_string(&mut output)
            .await
            .unwrap();
    }
    assert_eq!(output, "hi there");
    assert_ne!(
        exec.process.exit.await.unwrap(),
        0,
        "writing a config map volume fails"
    );
    // Exec runs as the container's process does: here as the sidecar's user.
    assert_eq!(
        exec_code(
            &node,
            &uid,
            "sidecar",
            &["sh", "-c", "test $(id -u) = 1234"]
        )
        .await,
        0
    );
    // With a terminal: sized as asked, input echoed, stdout and stderr on it.
    let session = start_exec(
        &node,
        &uid,
        "app",
        &[
            "sh",
            "-c",
            "read line; stty size; tty; echo \"got $line\" >&2; exit 3",
        ],
        true,
    )
    .await;
    let terminal = session.terminal.unwrap();
    terminal.resize(100, 30).unwrap();
    terminal.write_all(b"hello\n").await.unwrap();
    let mut screen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        use tokio::io::AsyncReadExt;
        let n = (&terminal).read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        screen.extend_from_slice(&buf[..n]);
    }
    let screen = String::from_utf8_lossy(&screen);
    assert!(
        screen.starts_with("hello\r\n30 100\r\n/dev/pts/") && screen.ends_with("got hello\r\n"),
        "{screen:?}"
    );
    assert_eq!(session.process.exit.await.unwrap(), 3);
    node.runtime().stop_pod(&uid, None).await.unwrap();
    // Both ended by their SIGTERM handlers (a SIGKILL after the grace would be 137),
    // the sidecar only after the app.
    let status = node.status(&uid);
    assert_eq!(exit_code(container(&status, "app")), Some(0));
    assert_eq!(exit_code(container(&status, "sidecar")), Some(0));
    let finished = |name: &str| {
        container(&status, name)
            .state
            .clone()
            .and_then(|s| s.terminated)
            .and_then(|t| t.finished_at)
            .unwrap()
            .0
    };
    assert!(
        finished("app") <= finished("sidecar"),
        "the sidecar stopped after the app"
    );
    assert!(node.log(&uid, "app", false).ends_with("got TERM\n"));
    assert!(
        node.log(&uid, "sidecar", false)
            .ends_with("sidecar stops\n")
    );
    node.remove_all_and_check().await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root (namespaces, cgroups, mounts)"]
async fn a_restarted_runtime_re_attaches_to_running_containers() {
    let mut node = Node::new();
    let uid = node.run(
        "survivor",
        &format!(
            r#"{{"terminationGracePeriodSeconds":1,"containers":[{{"name":"main","image":"{IMAGE}",
                "command":["sh","-c","echo started; exec sleep 3600"]}}]}}"#
        ),
    );
    let before = eventually(
        &node,
        "the container to run",
        Duration::from_secs(30),
        || {
            let status = node.status(&uid);
            let main = container(&status, "main").clone();
            running(&main).then_some(main)
        },
    )
    .await;
    node.restart_runtime();
    let after = eventually(
        &node,
        "the container to be found running",
        Duration::from_secs(30),
        || {
            let status = node.status(&uid);
            let main = container(&status, "main").clone();
            running(&main).then_some(main)
        },
    )
    .await;
    assert_eq!(
        after.container_id, before.container_id,
        "the same instance, not a new one"
    );
    assert_eq!(after.restart_count, 0);
    // Stopping still works through the shim found again.
    node.runtime().stop_pod(&uid, None).await.unwrap();
    let status = node.status(&uid);
    assert_eq!(
        exit_code(container(&status, "main")),
        Some(137),
        "SIGKILLed after 1 s grace"
    );
    node.remove_all_and_check().await;
}

/// Starts `command` in `container` of pod `uid`, with a terminal when `tty`.
async fn start_exec(
    node: &Node,
    uid: &str,
    container: &str,
    command: &[&str],
    tty: bool,
) -> ExecSession {
    let options = ExecOptions {
        command: command.iter().map(|s| s.to_string()).collect(),
        tty,
    };
    node.runtime().exec(uid, container, &options).await.unwrap()
}

/// Runs `command` in `container` of pod `uid` without a terminal; its exit code.
async fn exec_code(node: &Node, uid: &str, container: &str, command: &[&str]) -> i32 {
    let session = start_exec(node, uid, container, command, false).await;
    session.process.exit.await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root (namespaces, cgroups, mounts)"]
async fn pods_on_the_pod_network_get_addresses_reach_each_other_and_give_them_back() {
    // The node's side of the pod network lives in a namespace of the test's own.
    let node_namespace = NetNamespace::create().unwrap();
    let state = tempfile::tempdir().unwrap();
    let network = Arc::new(
        PodNetwork::start_in(
            PodNetworkConfig {
                bridge: "cairn0".into(),
                pod_cidr: "10.244.5.0/24".parse().unwrap(),
                cluster_cidr: "10.244.0.0/16".parse().unwrap(),
                mtu: None,
                ipam_state: state.path().join("ipam.json"),
            },
            Some(node_namespace.as_fd()),
        )
        .await
        .unwrap(),
    );
    let node = Node::with_pod_network(Arc::clone(&network));
    let server = node.run(
        "server",
        &format!(
            r#"{{"containers": [{{"name": "main", "image": "{IMAGE}",
                "command": ["sh", "-c", "echo hello from the server > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]}}]}}"#
        ),
    );
    let client = node.run(
        "client",
        &format!(
            r#"{{"containers": [{{"name": "main", "image": "{IMAGE}", "command": ["sleep", "3600"],
                "env": [{{"name": "POD_IP", "valueFrom": {{"fieldRef": {{"fieldPath": "status.podIP"}}}}}}]}}]}}"#
        ),
    );
    let host = node.run(
        "host",
        &format!(
            r#"{{"hostNetwork": true, "containers": [{{"name": "main", "image": "{IMAGE}", "command": ["sleep", "3600"]}}]}}"#
        ),
    );
    let addresses = eventually(
        &node,
        "both pods running with addresses",
        Duration::from_secs(30),
        || {
            let (s, c) = (node.status(&server), node.status(&client));
            let up = running(container(&s, "main")) && running(container(&c, "main"));
            if up {
                Some((s.pod_ip.clone()?, c.pod_ip.clone()?))
            } else {
                None
            }
        },
    )
    .await;
    let (server_ip, client_ip) = addresses;
    assert_ne!(server_ip, client_ip);
    for ip in [&server_ip, &client_ip] {
        assert!(
            ip.starts_with("10.244.5."),
            "{ip} is not from the node's pod CIDR"
        );
    }
    assert_eq!(
        node.status(&host).pod_ip,
        None,
        "hostNetwork pods have none"
    );

    // The downward API sees the address, and the client reaches the server by it.
    let (code, seen) = exec_output(&node, &client, &["sh", "-c", "echo $POD_IP"]).await;
    assert_eq!((code, seen.trim()), (0, client_ip.as_str()));
    let url = format!("http://{server_ip}:8080/index.html");
    let mut answer = (1, String::new());
    for _ in 0..50 {
        answer = exec_output(&node, &client, &["wget", "-qO-", &url]).await;
        if answer.0 == 0 {
            break;
        }
        // The server may not listen yet.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!((answer.0, answer.1.trim()), (0, "hello from the server"));

    node.remove_all_and_check().await;
    network.settle().await;
    assert!(network.attached().await.is_empty(), "addresses given back");
    let links: Vec<String> = node_namespace
        .run_async(|| async {
            let netlink = cairn_net::Netlink::connect().unwrap();
            netlink
                .links()
                .await
                .unwrap()
                .into_iter()
                .map(|l| l.name)
                .collect()
        })
        .unwrap();
    assert_eq!(links, ["lo", "cairn0"], "no veth left on the node");
}

/// Runs `command` in the `main` container of pod `uid`: its exit code and stdout.
async fn exec_output(node: &Node, uid: &str, command: &[&str]) -> (i32, String) {
    let mut session = start_exec(node, uid, "main", command, false).await;
    let mut stdout =
        cairn_runtime::process::async_reader(session.process.stdout.take().unwrap()).unwrap();
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut text)
        .await
        .unwrap();
    (session.process.exit.await.unwrap(), text)
}
