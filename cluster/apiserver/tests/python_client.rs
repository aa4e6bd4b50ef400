//! The official Kubernetes Python client (37.x, from PyPI, in the venv `cargo xtask
//! test` makes) against the API server: list, create, patch, watch, delete and the
//! errors it raises (`tests/python/client.py`).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Python client from the venv `cargo xtask test` makes"]
async fn the_python_client_lists_creates_patches_watches_and_deletes() {
    let c = common::Cluster::start().await;
    let python = common::venv().join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: `cargo xtask test` makes the venv",
        python.display()
    );
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client.py");
    let kubeconfig = c.dir.path().join("admin.kubeconfig");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(kubeconfig)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all steps passed"));
}
