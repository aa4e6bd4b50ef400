//! The ServiceAccount and root-CA publisher controllers, as kube-controller-manager
//! runs them: every namespace that is not being deleted has a `default`
//! ServiceAccount and the `kube-root-ca.crt` ConfigMap whose `ca.crt` is the cluster
//! CA, which pods' `kube-api-access` volumes project. Both are made again when
//! deleted, and the map's content is put back when someone changes it.

use std::collections::BTreeMap;

pub use cairn_api::service_account::{DEFAULT_ACCOUNT, ROOT_CA_CONFIG_MAP, ROOT_CA_KEY};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::ObjectRef;
use tracing::{debug, info, warn};

use crate::{Caches, ControllerOptions};

/// Runs both controllers over `caches` (never returns; dropped to stop).
pub async fn run(client: kube::Client, caches: Caches, options: ControllerOptions) {
    let mut tick = tokio::time::interval(options.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for namespace in caches.namespaces.state() {
            if !open(&namespace) {
                continue;
            }
            let Some(name) = namespace.metadata.name.as_deref() else {
                continue;
            };
            ensure_default_account(&client, &caches, name).await;
            if let Some(ca) = options.root_ca.as_deref() {
                ensure_root_ca(&client, &caches, name, ca).await;
            }
        }
    }
}

/// Whether new content may go into `namespace` (it is not being deleted).
fn open(namespace: &Namespace) -> bool {
    namespace.metadata.deletion_timestamp.is_none()
        && namespace.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
}

async fn ensure_default_account(client: &kube::Client, caches: &Caches, namespace: &str) {
    let key = ObjectRef::new(DEFAULT_ACCOUNT).within(namespace);
    if caches.service_accounts.get(&key).is_some() {
        return;
    }
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT_ACCOUNT.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    match api.create(&PostParams::default(), &account).await {
        Ok(_) => info!(%namespace, "created the namespace's default ServiceAccount"),
        Err(err) => settle(err, namespace, "creating the default ServiceAccount"),
    }
}

async fn ensure_root_ca(client: &kube::Client, caches: &Caches, namespace: &str, ca: &str) {
    let key = ObjectRef::new(ROOT_CA_CONFIG_MAP).within(namespace);
    let data = BTreeMap::from([(ROOT_CA_KEY.to_owned(), ca.to_owned())]);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    match caches.root_ca_maps.get(&key) {
        Some(map) if map.data.as_ref() == Some(&data) && map.binary_data.is_none() => {}
        Some(map) => {
            let mut fixed = (*map).clone();
            fixed.data = Some(data);
            fixed.binary_data = None;
            // The resourceVersion it carries makes a stale replace fail, not clobber.
            match api
                .replace(ROOT_CA_CONFIG_MAP, &PostParams::default(), &fixed)
                .await
            {
                Ok(_) => info!(%namespace, "put the cluster CA back into kube-root-ca.crt"),
                Err(err) => settle(err, namespace, "updating kube-root-ca.crt"),
            }
        }
        None => {
            let map = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(ROOT_CA_CONFIG_MAP.into()),
                    namespace: Some(namespace.into()),
                    annotations: Some(BTreeMap::from([(
                        "kubernetes.io/description".to_owned(),
                        "Contains a CA bundle that can be used to verify the kube-apiserver \
                         when using internal endpoints such as the internal service IP or \
                         kubernetes.default.svc. No other usage is guaranteed across \
                         distributions of Kubernetes clusters."
                            .to_owned(),
                    )])),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                ..ConfigMap::default()
            };
            match api.create(&PostParams::default(), &map).await {
                Ok(_) => info!(%namespace, "published the cluster CA as kube-root-ca.crt"),
                Err(err) => settle(err, namespace, "creating kube-root-ca.crt"),
            }
        }
    }
}

/// Logs a failed write: quietly when the cache was only behind (409: it exists, or
/// changed) or the namespace is going away (403, 404), loudly otherwise. The next
/// resync tries again either way.
fn settle(err: kube::Error, namespace: &str, what: &str) {
    match &err {
        kube::Error::Api(status) if matches!(status.code, 403 | 404 | 409) => {
            debug!(%namespace, error = %err, "{what} can wait for the next look");
        }
        _ => warn!(%namespace, error = %err, "{what} failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminating_namespaces_get_nothing_new() {
        let namespace =
            |json: serde_json::Value| -> Namespace { serde_json::from_value(json).unwrap() };
        assert!(open(&namespace(serde_json::json!({
            "metadata": {"name": "a"}, "status": {"phase": "Active"}
        }))));
        assert!(!open(&namespace(serde_json::json!({
            "metadata": {"name": "a"}, "status": {"phase": "Terminating"}
        }))));
        assert!(!open(&namespace(serde_json::json!({
            "metadata": {"name": "a", "deletionTimestamp": "2026-01-01T00:00:00Z"}
        }))));
    }
}
