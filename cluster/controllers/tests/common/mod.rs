//! What the in-process controller tests share: an admin client of the test API server
//! and a bounded wait.

#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::time::{Duration, Instant};

use cairn_apiserver::testing::TestServer;

/// A `kube` client of `server` as a `system:masters` admin.
pub async fn client(server: &TestServer) -> kube::Client {
    let text = server.kubeconfig("admin", Some("system:masters")).unwrap();
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&text).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// Polls `check` every 50 ms until it gives a value; fails the test naming `what`
/// after 30 s.
pub async fn until<T, Fut: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> Fut,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
