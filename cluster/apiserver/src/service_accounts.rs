//! The ServiceAccount admission of pods, as Kubernetes' `ServiceAccount` plugin does
//! it on create: a pod runs as `default` unless it names its account, and unless the
//! pod (or else its account) turns `automountServiceAccountToken` off, every
//! container gets the account's credentials at
//! `/var/run/secrets/kubernetes.io/serviceaccount` from a projected
//! `kube-api-access-<suffix>` volume: a token bound to the pod, the cluster CA from
//! the `kube-root-ca.crt` ConfigMap, and the namespace.
//!
//! A container that already mounts something at that path keeps its own mount.
//!
//! A `kubernetes.io/service-account-token` Secret is filled on create, as
//! Kubernetes' token controller fills it (`rest.rs`): a token bound to the Secret, the
//! CA and the namespace.

pub use cairn_api::service_account::{
    DEFAULT_ACCOUNT, MOUNT_PATH, ROOT_CA_CONFIG_MAP, ROOT_CA_KEY,
};
use serde_json::{Value, json};

use crate::meta;

/// The token lifetime the volume asks for. A token bound to a pod with exactly this
/// lifetime is signed for a year ([`EXTENDED_TOKEN_SECONDS`]), as Kubernetes does
/// with `--service-account-extend-token-expiration`, so that a pod whose token is
/// never rotated keeps working.
pub const TOKEN_SECONDS: i64 = 3607;
/// How long such a token is valid.
pub const EXTENDED_TOKEN_SECONDS: i64 = 365 * 24 * 3600;

/// The type of a Secret that holds a long-lived token of an account.
pub const TOKEN_SECRET_TYPE: &str = "kubernetes.io/service-account-token";
/// The annotation naming such a Secret's account.
pub const ACCOUNT_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
/// The annotation the server adds with the account's uid.
pub const ACCOUNT_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";
/// How long a token Secret's token is signed for: a century, standing for Kubernetes'
/// "never". It is bound to its Secret, so deleting the Secret ends it.
pub const SECRET_TOKEN_SECONDS: i64 = 100 * 365 * 24 * 3600;

/// The account `pod` runs as: `spec.serviceAccountName`, else the deprecated
/// `spec.serviceAccount`, else `default`.
pub fn account_name(pod: &Value) -> String {
    ["/spec/serviceAccountName", "/spec/serviceAccount"]
        .iter()
        .find_map(|p| pod.pointer(p).and_then(Value::as_str))
        .filter(|name| !name.is_empty())
        .unwrap_or(DEFAULT_ACCOUNT)
        .to_owned()
}

/// Sets `pod`'s account fields and, when its token is to be mounted, adds the
/// `kube-api-access` volume and its mounts. `account` is the stored ServiceAccount,
/// if it exists.
pub fn admit(pod: &mut Value, account: Option<&Value>) {
    let name = account_name(pod);
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    spec.insert("serviceAccountName".into(), json!(name));
    spec.insert("serviceAccount".into(), json!(name));
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| account?.get("automountServiceAccountToken")?.as_bool())
        .unwrap_or(true);
    if !automount {
        return;
    }
    let volume_name = meta::generated_name("kube-api-access-");
    let mut mounted = false;
    for list in ["initContainers", "containers"] {
        for container in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let Some(container) = container.as_object_mut() else {
                continue;
            };
            let mounts = container.entry("volumeMounts").or_insert_with(|| json!([]));
            let Some(mounts) = mounts.as_array_mut() else {
                continue;
            };
            let taken = mounts.iter().any(|m| {
                m["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some(MOUNT_PATH)
            });
            if !taken {
                mounts.push(json!({
                    "name": volume_name,
                    "readOnly": true,
                    "mountPath": MOUNT_PATH,
                }));
                mounted = true;
            }
        }
    }
    if !mounted {
        return;
    }
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    if let Some(volumes) = volumes.as_array_mut() {
        volumes.push(json!({
            "name": volume_name,
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": TOKEN_SECONDS, "path": "token"}},
                    {"configMap": {"name": ROOT_CA_CONFIG_MAP, "items": [{"key": ROOT_CA_KEY, "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ],
            },
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    #[test]
    fn every_container_gets_the_projected_credentials() {
        let mut pod = pod(json!({
            "initContainers": [{"name": "init", "image": "busybox"}],
            "containers": [{"name": "app", "image": "busybox",
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }));
        admit(&mut pod, None);
        let spec = &pod["spec"];
        assert_eq!(spec["serviceAccountName"], "default");
        assert_eq!(spec["serviceAccount"], "default");
        let volume = &spec["volumes"][1];
        let name = volume["name"].as_str().unwrap();
        assert!(
            name.starts_with("kube-api-access-") && name.len() == 21,
            "{name}"
        );
        let sources = &volume["projected"]["sources"];
        assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3607);
        assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(
            sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
        for container in ["initContainers", "containers"] {
            let mounts = spec[container][0]["volumeMounts"].as_array().unwrap();
            let mount = mounts.last().unwrap();
            assert_eq!(mount["name"], name);
            assert_eq!(mount["mountPath"], MOUNT_PATH);
            assert_eq!(mount["readOnly"], true);
        }
    }

    #[test]
    fn automount_can_be_turned_off_by_the_pod_or_its_account() {
        let containers = json!([{"name": "app", "image": "busybox"}]);
        let mut off = pod(json!({"automountServiceAccountToken": false,
            "serviceAccountName": "robot", "containers": containers}));
        admit(
            &mut off,
            Some(&json!({"automountServiceAccountToken": true})),
        );
        assert_eq!(off["spec"]["serviceAccount"], "robot");
        assert!(off["spec"].get("volumes").is_none());

        let mut by_account = pod(json!({"containers": containers}));
        admit(
            &mut by_account,
            Some(&json!({"automountServiceAccountToken": false})),
        );
        assert!(by_account["spec"].get("volumes").is_none());

        // The pod's own word wins over its account's.
        let mut on = pod(json!({"automountServiceAccountToken": true, "containers": containers}));
        admit(
            &mut on,
            Some(&json!({"automountServiceAccountToken": false})),
        );
        assert_eq!(on["spec"]["volumes"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_container_that_mounts_the_path_itself_keeps_its_mount() {
        let mut pod = pod(json!({
            "containers": [{"name": "app", "image": "busybox",
                "volumeMounts": [{"name": "mine", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount/"}]}],
            "volumes": [{"name": "mine", "emptyDir": {}}],
        }));
        admit(&mut pod, None);
        assert_eq!(pod["spec"]["volumes"].as_array().unwrap().len(), 1);
        assert_eq!(
            pod["spec"]["containers"][0]["volumeMounts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}
