//! What a pod's volumes need from the API before it starts: the config maps and
//! secrets of its namespace they project, and a service-account token bound to the
//! pod where a projected volume asks for one. Objects that do not exist are left out;
//! the runtime then refuses the volume with the field that names them, unless the
//! volume says the object is optional.

use std::collections::BTreeSet;
use std::pin::Pin;

use cairn_runtime::volumes::{self, PodSources, SourceReader};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec, Secret, ServiceAccount};
use kube::api::{Api, PostParams};

/// How long a projected token lives when the volume does not say (the kubelet's
/// default, `expirationSeconds: 3600`).
const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// The sources `pod` (in `namespace`) needs, read through `client`.
pub async fn gather(
    client: &kube::Client,
    namespace: &str,
    pod: &Pod,
) -> Result<PodSources, kube::Error> {
    let mut sources = PodSources::default();
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(sources);
    };
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    for name in volumes::referenced_config_maps(spec) {
        if let Some(map) = config_maps.get_opt(&name).await? {
            sources.config_maps.insert(name, map);
        }
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for name in referenced_secrets(spec) {
        if let Some(secret) = secrets.get_opt(&name).await? {
            sources.secrets.insert(name, secret);
        }
    }
    if let Some((audience, seconds)) = token_projection(spec) {
        let account = spec.service_account_name.as_deref().unwrap_or("default");
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(audience.into_iter().collect()),
                expiration_seconds: Some(seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        let issued: TokenRequest = accounts
            .create_subresource("token", account, &PostParams::default(), &request)
            .await?;
        sources.service_account_token = issued.status.and_then(|s| s.token);
    }
    Ok(sources)
}

/// Reads a pod's sources again from the API, for the runtime's retries of a setup
/// that failed (a config map the pod names is created after it).
pub struct Reread {
    client: kube::Client,
    namespace: String,
    pod: Pod,
}

impl Reread {
    /// A reader of `pod`'s (in `namespace`) sources through `client`.
    pub fn new(client: kube::Client, namespace: String, pod: Pod) -> Self {
        Self {
            client,
            namespace,
            pod,
        }
    }
}

impl SourceReader for Reread {
    fn read(&self) -> Pin<Box<dyn Future<Output = Result<PodSources, String>> + Send + '_>> {
        Box::pin(async move {
            gather(&self.client, &self.namespace, &self.pod)
                .await
                .map_err(|err| err.to_string())
        })
    }
}

/// The names of the secrets `spec`'s volumes project (`secret` volumes and
/// `projected` secret sources).
fn referenced_secrets(spec: &PodSpec) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for volume in spec.volumes.iter().flatten() {
        if let Some(name) = volume.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            names.insert(name);
        }
        let projected = volume.projected.as_ref().and_then(|p| p.sources.as_ref());
        for source in projected.into_iter().flatten() {
            if let Some(secret) = &source.secret {
                names.insert(secret.name.clone());
            }
        }
    }
    names
}

/// The audience and lifetime of the first projected service-account token, if a volume
/// asks for one.
fn token_projection(spec: &PodSpec) -> Option<(Option<String>, i64)> {
    spec.volumes
        .iter()
        .flatten()
        .filter_map(|v| v.projected.as_ref()?.sources.as_ref())
        .flatten()
        .find_map(|source| source.service_account_token.as_ref())
        .map(|token| {
            (
                token.audience.clone(),
                token.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(volumes: serde_json::Value) -> PodSpec {
        serde_json::from_value(serde_json::json!({
            "containers": [{"name": "app", "image": "busybox"}],
            "volumes": volumes,
        }))
        .unwrap()
    }

    #[test]
    fn secrets_and_tokens_are_found_in_plain_and_projected_volumes() {
        let spec = spec(serde_json::json!([
            {"name": "a", "secret": {"secretName": "tls"}},
            {"name": "b", "projected": {"sources": [
                {"secret": {"name": "extra"}},
                {"serviceAccountToken": {"path": "token", "audience": "vault"}},
            ]}},
            {"name": "c", "configMap": {"name": "settings"}},
        ]));
        assert_eq!(
            referenced_secrets(&spec).into_iter().collect::<Vec<_>>(),
            ["extra", "tls"]
        );
        assert_eq!(
            token_projection(&spec),
            Some((Some("vault".into()), DEFAULT_TOKEN_SECONDS))
        );
        assert_eq!(token_projection(&self::spec(serde_json::json!([]))), None);
    }
}
