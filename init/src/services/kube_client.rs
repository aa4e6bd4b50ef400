//! Kubernetes API clients for the node's own services (scheduler, node agent): a
//! kubeconfig for the user they run as, turned into a `kube` client.

use cairn_api::kubeconfig::{self, Credentials};
use cairn_api::pki::Ca;

use crate::supervisor::ServiceError;

/// How long a certificate a service issues itself is valid (issued at each start).
const ISSUED_VALIDITY: ::time::Duration = ::time::Duration::days(365);

/// A client of the API server at `url` as `user` in `group`, with a certificate
/// issued now from `ca`.
pub async fn issued(
    ca: &Ca,
    cluster: &str,
    url: &str,
    user: &str,
    group: Option<&str>,
) -> Result<kube::Client, ServiceError> {
    let text = kubeconfig::render(
        ca,
        cluster,
        url,
        Credentials::Certificate {
            user,
            group,
            valid_for: ISSUED_VALIDITY,
        },
    )
    .map_err(|e| ServiceError::Fatal(format!("cannot issue a certificate for {user}: {e}")))?;
    from_kubeconfig(&text, user).await
}

/// A client of the API server at `url` as `user`, with the certificate `cert_pem`
/// (and its key) that the cluster CA `ca_cert_pem` issued.
pub async fn with_certificate(
    ca_cert_pem: &str,
    cluster: &str,
    url: &str,
    user: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<kube::Client, ServiceError> {
    let text = kubeconfig::with_certificate(ca_cert_pem, cluster, url, user, cert_pem, key_pem);
    from_kubeconfig(&text, user).await
}

async fn from_kubeconfig(text: &str, user: &str) -> Result<kube::Client, ServiceError> {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(text)
        .map_err(|e| ServiceError::failed(format!("kubeconfig for {user}"), e))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| ServiceError::failed(format!("client configuration for {user}"), e))?;
    kube::Client::try_from(config)
        .map_err(|e| ServiceError::failed(format!("API client for {user}"), e))
}
