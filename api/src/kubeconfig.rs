//! Kubeconfig files for the cluster's Kubernetes API: a user's client certificate,
//! issued by the cluster CA, with the CA to trust and the server to reach (`cairnctl
//! kubeconfig`, the local cluster provisioner, tests).

use base64::Engine;
use time::Duration;

use crate::pki::{Ca, PkiError};

/// The group whose members may do everything (as in Kubernetes).
pub const ADMIN_GROUP: &str = "system:masters";
/// The user name of admin kubeconfigs.
pub const ADMIN_USER: &str = "admin";
/// The group node agents are in (the kubelets' group in Kubernetes).
pub const NODES_GROUP: &str = "system:nodes";
/// How node agents' user names start: `system:node:<node name>`.
pub const NODE_USER_PREFIX: &str = "system:node:";
/// How long an admin kubeconfig's certificate is valid.
pub const ADMIN_VALIDITY: Duration = Duration::days(365);

/// Who a kubeconfig authenticates as.
pub enum Credentials<'a> {
    /// A client certificate for `user` in `group`, issued now.
    Certificate {
        /// The user (the certificate's Common Name).
        user: &'a str,
        /// The group (its Organization), if any.
        group: Option<&'a str>,
        /// How long it is valid.
        valid_for: Duration,
    },
    /// A bearer token (a ServiceAccount's).
    Token(&'a str),
}

/// A kubeconfig for `server` (`https://10.5.0.2:6443`) of cluster `cluster`.
pub fn render(
    ca: &Ca,
    cluster: &str,
    server: &str,
    credentials: Credentials<'_>,
) -> Result<String, PkiError> {
    Ok(match credentials {
        Credentials::Certificate {
            user,
            group,
            valid_for,
        } => {
            let cert = ca.issue_user(user, group, valid_for)?;
            with_certificate(
                ca.cert_pem(),
                cluster,
                server,
                user,
                &cert.cert_pem,
                &cert.key_pem,
            )
        }
        Credentials::Token(token) => document(
            ca.cert_pem(),
            cluster,
            server,
            "token",
            &format!("    token: {token}\n"),
        ),
    })
}

/// A kubeconfig for `server` of cluster `cluster` (whose CA certificate is
/// `ca_cert_pem`) as `user`, with a client certificate issued before.
pub fn with_certificate(
    ca_cert_pem: &str,
    cluster: &str,
    server: &str,
    user: &str,
    cert_pem: &str,
    key_pem: &str,
) -> String {
    document(
        ca_cert_pem,
        cluster,
        server,
        user,
        &format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(cert_pem),
            b64(key_pem)
        ),
    )
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The kubeconfig document: one cluster, one user authenticating with `auth` (its
/// indented YAML lines), one context.
fn document(ca_cert_pem: &str, cluster: &str, server: &str, user: &str, auth: &str) -> String {
    let context = format!("{user}@{cluster}");
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: {context}\n  context:\n    cluster: {cluster}\n    user: {context}\n    namespace: default\ncurrent-context: {context}\nusers:\n- name: {context}\n  user:\n{auth}",
        ca = b64(ca_cert_pem),
    )
}

/// An admin kubeconfig (`system:masters`) for `server`.
pub fn admin(ca: &Ca, cluster: &str, server: &str) -> Result<String, PkiError> {
    render(
        ca,
        cluster,
        server,
        Credentials::Certificate {
            user: ADMIN_USER,
            group: Some(ADMIN_GROUP),
            valid_for: ADMIN_VALIDITY,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admin_kubeconfig_carries_a_masters_certificate_from_the_ca() {
        let ca = Ca::generate("t").unwrap();
        let text = admin(&ca, "demo", "https://10.5.0.2:6443").unwrap();
        let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(doc["current-context"], "admin@demo");
        assert_eq!(
            doc["clusters"][0]["cluster"]["server"],
            "https://10.5.0.2:6443"
        );
        let cert = doc["users"][0]["user"]["client-certificate-data"]
            .as_str()
            .unwrap();
        let pem = base64::engine::general_purpose::STANDARD
            .decode(cert)
            .unwrap();
        let info = crate::pki::cert_info(std::str::from_utf8(&pem).unwrap(), "cert").unwrap();
        assert_eq!(info.common_name.as_deref(), Some("admin"));
        assert_eq!(info.organizations, ["system:masters"]);
    }
}
