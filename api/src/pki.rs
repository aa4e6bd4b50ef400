//! The cluster's certificates: a CA, client certificates whose Organization is a
//! machine API role (`os:admin`, `os:operator`, `os:reader`), and serving certificates
//! for nodes. Generation and checks only (PEM text in, PEM text out); no files.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A PEM block could not be parsed.
    #[error("{what} is not valid PEM")]
    Pem {
        /// What was being parsed.
        what: &'static str,
    },
    /// A certificate could not be parsed.
    #[error("{what} is not an X.509 certificate")]
    Certificate {
        /// Which certificate.
        what: &'static str,
    },
    /// A private key could not be parsed.
    #[error("{what} is not a private key (PKCS#8 PEM)")]
    Key {
        /// Which key.
        what: &'static str,
    },
    /// The system's random number generator failed.
    #[error("no randomness available from the system")]
    Random,
    /// rcgen refused to build a certificate.
    #[error("cannot generate a certificate")]
    Generate(#[source] rcgen::Error),
}

/// A machine API role, carried as a client certificate's Organization.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Role {
    /// Read; secrets redacted.
    #[serde(rename = "os:reader")]
    Reader,
    /// Read, reboot, restart services.
    #[serde(rename = "os:operator")]
    Operator,
    /// Everything.
    #[serde(rename = "os:admin")]
    Admin,
}

impl Role {
    /// The Organization string of the role.
    pub fn organization(self) -> &'static str {
        match self {
            Role::Reader => "os:reader",
            Role::Operator => "os:operator",
            Role::Admin => "os:admin",
        }
    }

    /// The role named by an Organization, if any.
    pub fn from_organization(org: &str) -> Option<Self> {
        match org {
            "os:reader" => Some(Role::Reader),
            "os:operator" => Some(Role::Operator),
            "os:admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.organization())
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertAndKey {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

/// What is in a certificate, as far as Cairn cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject Common Name.
    pub common_name: Option<String>,
    /// Subject Organizations.
    pub organizations: Vec<String>,
    /// DNS and IP subject alternative names, as text.
    pub alt_names: Vec<String>,
    /// Whether it is a CA.
    pub is_ca: bool,
    /// Start of validity (Unix seconds).
    pub not_before: i64,
    /// End of validity (Unix seconds).
    pub not_after: i64,
}

fn first_der(pem_text: &str, what: &'static str, tag: &str) -> Result<Vec<u8>, PkiError> {
    pem::parse_many(pem_text)
        .map_err(|_| PkiError::Pem { what })?
        .into_iter()
        .find(|p| p.tag() == tag)
        .map(|p| p.contents().to_vec())
        .ok_or(PkiError::Pem { what })
}

/// Parses the first certificate of a PEM text.
pub fn cert_info(cert_pem: &str, what: &'static str) -> Result<CertInfo, PkiError> {
    let der = first_der(cert_pem, what, "CERTIFICATE")?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|_| PkiError::Certificate { what })?;
    let text =
        |attr: &x509_parser::x509::AttributeTypeAndValue<'_>| attr.as_str().ok().map(str::to_owned);
    let subject = cert.subject();
    let alt_names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    GeneralName::IPAddress(bytes) => ip_from_bytes(bytes).map(|ip| ip.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(CertInfo {
        common_name: subject.iter_common_name().next().and_then(text),
        organizations: subject.iter_organization().filter_map(text).collect(),
        alt_names,
        is_ca: cert.is_ca(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Whether `key_pem` is the private key of `cert_pem`.
pub fn key_matches_cert(cert_pem: &str, key_pem: &str) -> Result<bool, PkiError> {
    let der = first_der(cert_pem, "certificate", "CERTIFICATE")?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|_| PkiError::Certificate {
        what: "certificate",
    })?;
    let key = KeyPair::from_pem(key_pem).map_err(|_| PkiError::Key { what: "key" })?;
    Ok(key.subject_public_key_info() == cert.public_key().raw)
}

/// Whether `cert_pem` carries a valid signature by `ca_pem`'s key.
pub fn is_signed_by(cert_pem: &str, ca_pem: &str) -> Result<bool, PkiError> {
    let der = first_der(cert_pem, "certificate", "CERTIFICATE")?;
    let ca_der = first_der(ca_pem, "CA certificate", "CERTIFICATE")?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|_| PkiError::Certificate {
        what: "certificate",
    })?;
    let (_, ca) = X509Certificate::from_der(&ca_der).map_err(|_| PkiError::Certificate {
        what: "CA certificate",
    })?;
    Ok(cert.verify_signature(Some(ca.public_key())).is_ok())
}

/// A certificate authority that can issue certificates.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
}

impl Ca {
    /// A new self-signed CA named `name`, valid for ten years.
    pub fn generate(name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::Generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "cairn");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, Duration::days(3650));
        let cert = params.self_signed(&key).map_err(PkiError::Generate)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// An existing CA from its certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        // Parse both now so that issuing later cannot fail on them.
        cert_info(cert_pem, "CA certificate")?;
        KeyPair::from_pem(key_pem).map_err(|_| PkiError::Key { what: "CA key" })?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (PEM).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    fn issue(&self, params: &CertificateParams) -> Result<CertAndKey, PkiError> {
        let ca_key =
            KeyPair::from_pem(&self.key_pem).map_err(|_| PkiError::Key { what: "CA key" })?;
        let issuer =
            Issuer::from_ca_cert_pem(&self.cert_pem, ca_key).map_err(PkiError::Generate)?;
        let key = KeyPair::generate().map_err(PkiError::Generate)?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(PkiError::Generate)?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate for the machine API with `role` as its Organization,
    /// valid for `valid_for`.
    pub fn issue_client(
        &self,
        common_name: &str,
        role: Role,
        valid_for: Duration,
    ) -> Result<CertAndKey, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, role.organization());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        set_validity(&mut params, valid_for);
        self.issue(&params)
    }

    /// A client certificate for the Kubernetes API: the user `common_name`, in
    /// `group` when given (its Organization, as kube-apiserver reads groups; rcgen
    /// writes one Organization per certificate), valid for `valid_for`.
    pub fn issue_user(
        &self,
        common_name: &str,
        group: Option<&str>,
        valid_for: Duration,
    ) -> Result<CertAndKey, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        if let Some(group) = group {
            params
                .distinguished_name
                .push(DnType::OrganizationName, group);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        set_validity(&mut params, valid_for);
        self.issue(&params)
    }

    /// A serving certificate for a node: `names` are DNS names or IP addresses.
    pub fn issue_server(
        &self,
        common_name: &str,
        names: &[String],
        valid_for: Duration,
    ) -> Result<CertAndKey, PkiError> {
        let mut params = CertificateParams::new(names.to_vec()).map_err(PkiError::Generate)?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        set_validity(&mut params, valid_for);
        self.issue(&params)
    }
}

/// The Organization of certificates that identify Cairn nodes to each other (store
/// replication), as opposed to people and tools.
pub const NODE_ORGANIZATION: &str = "cairn:node";

impl Ca {
    /// A certificate a node uses both to serve and to dial other nodes, with
    /// [`NODE_ORGANIZATION`] as its Organization.
    pub fn issue_node(
        &self,
        common_name: &str,
        names: &[String],
        valid_for: Duration,
    ) -> Result<CertAndKey, PkiError> {
        let mut params = CertificateParams::new(names.to_vec()).map_err(PkiError::Generate)?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, NODE_ORGANIZATION);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        set_validity(&mut params, valid_for);
        self.issue(&params)
    }
}

/// A self-signed serving certificate (maintenance mode, before any CA is known).
pub fn self_signed_server(common_name: &str, names: &[String]) -> Result<CertAndKey, PkiError> {
    let key = KeyPair::generate().map_err(PkiError::Generate)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(PkiError::Generate)?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    set_validity(&mut params, Duration::days(365));
    let cert = params.self_signed(&key).map_err(PkiError::Generate)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn set_validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = OffsetDateTime::now_utc();
    // An hour of slack for clocks that are a little behind.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + valid_for;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificate_carries_its_role_and_chains_to_the_ca() {
        let ca = Ca::generate("test").unwrap();
        let admin = ca
            .issue_client("alice", Role::Admin, Duration::days(1))
            .unwrap();
        let info = cert_info(&admin.cert_pem, "admin").unwrap();
        assert_eq!(info.common_name.as_deref(), Some("alice"));
        assert_eq!(info.organizations, ["os:admin"]);
        assert!(!info.is_ca);
        assert!(is_signed_by(&admin.cert_pem, ca.cert_pem()).unwrap());
        assert!(key_matches_cert(&admin.cert_pem, &admin.key_pem).unwrap());
        assert!(cert_info(ca.cert_pem(), "ca").unwrap().is_ca);
    }

    #[test]
    fn foreign_signatures_and_mismatched_keys_are_detected() {
        let ca = Ca::generate("ours").unwrap();
        let other = Ca::generate("theirs").unwrap();
        let cert = other
            .issue_client("mallory", Role::Admin, Duration::days(1))
            .unwrap();
        assert!(!is_signed_by(&cert.cert_pem, ca.cert_pem()).unwrap());
        let unrelated = ca
            .issue_client("bob", Role::Reader, Duration::days(1))
            .unwrap();
        assert!(!key_matches_cert(&cert.cert_pem, &unrelated.key_pem).unwrap());
    }

    #[test]
    fn server_certificate_lists_ip_and_dns_names() {
        let ca = Ca::generate("test").unwrap();
        let server = ca
            .issue_server(
                "node-1",
                &["node-1".into(), "10.5.0.2".into(), "127.0.0.1".into()],
                Duration::days(1),
            )
            .unwrap();
        let info = cert_info(&server.cert_pem, "server").unwrap();
        assert_eq!(info.alt_names, ["node-1", "10.5.0.2", "127.0.0.1"]);
        let reparsed = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert!(
            reparsed
                .issue_client("x", Role::Reader, Duration::days(1))
                .is_ok()
        );
    }

    #[test]
    fn garbage_is_named_in_errors() {
        let err = cert_info("not pem", "machine.certs.ca.crt").unwrap_err();
        assert!(err.to_string().contains("machine.certs.ca.crt"));
        assert_eq!(Role::from_organization("os:admin"), Some(Role::Admin));
        assert_eq!(Role::from_organization("admin"), None);
    }
}
