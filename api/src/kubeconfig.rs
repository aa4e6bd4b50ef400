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
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let (user, auth) = match credentials {
        Credentials::Certificate {
            user,
            group,
            valid_for,
        } => {
            let cert = ca.issue_user(user, group, valid_for)?;
            (
                user.to_owned(),
                format!(
                    "    client-certificate-data: {}\n    client-key-data: {}\n",
                    b64(&cert.cert_pem),
                    b64(&cert.key_pem)
                ),
            )
        }
        Credentials::Token(token) => ("token".to_owned(), format!("    token: {token}\n")),
    };
    let context = format!("{user}@{cluster}");
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: {context}\n  context:\n    cluster: {cluster}\n    user: {context}\n    namespace: default\ncurrent-context: {context}\nusers:\n- name: {context}\n  user:\n{auth}",
        ca = b64(ca.cert_pem()),
    ))
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
