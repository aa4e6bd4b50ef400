//! `cargo xtask demo`: build the image, `cairnctl` and the demo's web server image,
//! boot a local Cairn cluster under QEMU with `cairnctl cluster create` (three
//! control planes unless told otherwise), load the web server image on every node,
//! run it as a Deployment of three behind a Service, and show the cluster through
//! real `kubectl`: `get nodes`, `get pods -o wide`, and a page fetched from one pod by
//! another over the pod network.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::build::{self, checked};
use crate::deps;

/// The demo's workload: its web server as a Deployment of three and a Service.
fn manifest(image: &str, port: u16) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
spec:
  replicas: 3
  selector:
    matchLabels:
      app: hello
  template:
    metadata:
      labels:
        app: hello
    spec:
      containers:
      - name: httpd
        image: {image}
        ports:
        - containerPort: {port}
        readinessProbe:
          tcpSocket:
            port: {port}
---
apiVersion: v1
kind: Service
metadata:
  name: hello
spec:
  selector:
    app: hello
  ports:
  - port: 80
    targetPort: {port}
"
    )
}

/// The web server image's name and port (as the runtime's test images define them).
const HTTPD_IMAGE: &str = "cairn.demo/httpd:1.0";
const HTTPD_PORT: u16 = 8080;

/// Creates (or shows) the local cluster `name` and runs the demo workload on it.
pub fn run(name: &str, control_planes: u8, workers: u8) -> anyhow::Result<()> {
    deps::ensure()?;
    let venv = deps::ensure_python_clients()?;
    let kubectl = venv.join("bin/kubectl");
    let build::ClusterTools { cairnctl, images } = build::cluster_tools("cairn-demo-images")?;
    let cluster_dir = home().join(".cairn/clusters").join(name);
    if cluster_dir.exists() {
        eprintln!("xtask: cluster {name:?} exists already; showing it");
    } else {
        checked(
            Command::new(&cairnctl)
                .args(["cluster", "create", "--name", name])
                .args(["--control-planes", &control_planes.to_string()])
                .args(["--workers", &workers.to_string()])
                .arg("--image-dir")
                .arg(build::image_dir()),
            "cairnctl cluster create",
        )?;
    }
    let kubeconfig = cluster_dir.join("kubeconfig");
    if !kubeconfig.exists() {
        bail!(
            "{} is missing (a cluster made by an older cairnctl?); `cairnctl cluster destroy --name {name}` and run the demo again",
            kubeconfig.display()
        );
    }
    checked(
        Command::new(&cairnctl)
            .args(["--context", name, "image", "import"])
            .arg(images.join("httpd")),
        "cairnctl image import",
    )?;
    let kube = Kubectl {
        binary: kubectl,
        kubeconfig: kubeconfig.clone(),
    };
    let nodes = usize::from(control_planes) + usize::from(workers);
    kube.until_ok(
        &format!("{nodes} nodes registered"),
        Duration::from_secs(300),
        |out| out.lines().count() >= nodes,
        &["get", "nodes", "--no-headers"],
    )?;
    kube.run(&[
        "wait",
        "--for=condition=Ready",
        "nodes",
        "--all",
        "--timeout=300s",
    ])?;
    let file = cluster_dir.join("hello.yaml");
    std::fs::write(&file, manifest(HTTPD_IMAGE, HTTPD_PORT))
        .with_context(|| format!("writing {}", file.display()))?;
    kube.run(&["apply", "-f", &file.display().to_string()])?;
    kube.run(&["rollout", "status", "deployment/hello", "--timeout=300s"])?;
    println!("\n$ kubectl get nodes -o wide");
    println!("{}", kube.run(&["get", "nodes", "-o", "wide"])?);
    println!("$ kubectl get pods -o wide");
    println!("{}", kube.run(&["get", "pods", "-o", "wide"])?);
    fetch_across_pods(&cairnctl, name, &kube)?;
    let ctl = cairnctl.display();
    let kubectl = kube.binary.display();
    let config = kubeconfig.display();
    println!(
        "\nThe cluster runs in the background. Drive it with kubectl and cairnctl, e.g.:\n\
         \x20 export KUBECONFIG={config}\n\
         \x20 {kubectl} get deployments,replicasets,pods,services,endpoints\n\
         \x20 {kubectl} scale deployment/hello --replicas=5\n\
         \x20 {kubectl} describe pod <name>\n\
         \x20 {ctl} --context {name} services\n\
         \x20 {ctl} --context {name} pods\n\
         \x20 {ctl} --context {name} logs machine-api\n\
         Remove it with:\n\
         \x20 {ctl} cluster destroy --name {name}"
    );
    Ok(())
}

/// Fetches the page of one `hello` pod from inside another on a different node (over
/// the pod network, with the busybox `wget` the image carries), through the machine
/// API's `exec`.
fn fetch_across_pods(cairnctl: &Path, cluster: &str, kube: &Kubectl) -> anyhow::Result<()> {
    let listed = kube.run(&[
        "get",
        "pods",
        "-l",
        "app=hello",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.podIP} {.spec.nodeName}{\"\\n\"}{end}",
    ])?;
    let pods: Vec<(&str, &str, &str)> = listed
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?, words.next()?, words.next()?))
        })
        .collect();
    let Some((from, _, from_node)) = pods.first().copied() else {
        bail!("no hello pod to fetch from:\n{listed}");
    };
    let Some((_, ip, to_node)) = pods
        .iter()
        .copied()
        .find(|(_, _, node)| *node != from_node)
        .or_else(|| pods.get(1).copied())
    else {
        println!("(one hello pod only: nothing to fetch across nodes)");
        return Ok(());
    };
    let url = format!("http://{ip}:{HTTPD_PORT}/");
    println!("$ cairnctl exec {from} -- wget -qO- {url}   # {from_node} to {to_node}");
    let out = Command::new(cairnctl)
        .args(["--context", cluster, "exec", from, "--"])
        .args(["wget", "-qO-", &url])
        .output()
        .context("running cairnctl exec")?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "fetching {url} from {from} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Real kubectl (from the venv) with the cluster's admin kubeconfig.
struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    /// Runs kubectl with `args`; its output, or an error with its stderr.
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.binary)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .with_context(|| format!("running {}", self.binary.display()))?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    /// Retries `args` every 2 s until they succeed with output that `done` accepts.
    fn until_ok(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
        args: &[&str],
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.run(args) {
                Ok(out) if done(&out) => return Ok(out),
                Ok(out) => out,
                Err(err) => err.to_string(),
            };
            if Instant::now() >= deadline {
                bail!("{what}: not within {timeout:?}; last: {last}");
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}
