//! TLS configurations shared by every Cairn endpoint that authenticates with the
//! cluster CA: the CA is pinned, and a peer's certificate must chain to it and be valid
//! now. Server names are not matched against the address dialled: nodes are reached
//! through port forwards and DHCP addresses a certificate cannot always name, and the
//! CA is the cluster's own, so whatever it signed is a member of this cluster.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct TlsConfigError {
    /// Which input.
    pub what: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn err(what: &'static str, reason: impl std::fmt::Display) -> TlsConfigError {
    TlsConfigError {
        what,
        reason: reason.to_string(),
    }
}

/// The ring provider, installed process-wide if nothing else is.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA as a root store.
pub fn roots(ca_pem: &str) -> Result<Arc<rustls::RootCertStore>, TlsConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let ca = ca.map_err(|e| err("ca", e))?;
        roots.add(ca).map_err(|e| err("ca", e))?;
    }
    Ok(Arc::new(roots))
}

/// A certificate chain and its key from PEM.
pub fn identity(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsConfigError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("certificate", e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| err("key", e))?;
    Ok((chain, key))
}

/// Verifies server certificates against the pinned cluster CA, ignoring their names.
#[derive(Debug)]
pub struct PinnedCa {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl PinnedCa {
    /// A verifier for certificates signed by `ca_pem`.
    pub fn new(ca_pem: &str) -> Result<Self, TlsConfigError> {
        let inner =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca_pem)?, provider())
                .build()
                .map_err(|e| err("ca", e))?;
        Ok(Self { inner })
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client configuration: the CA pinned, this certificate presented.
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ClientConfig, TlsConfigError> {
    let (chain, key) = identity(cert_pem, key_pem)?;
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("protocol versions", e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa::new(ca_pem)?))
        .with_client_auth_cert(chain, key)
        .map_err(|e| err("certificate/key", e))
}

/// A server configuration requiring client certificates signed by the CA.
pub fn server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ServerConfig, TlsConfigError> {
    let (chain, key) = identity(cert_pem, key_pem)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .build()
        .map_err(|e| err("client verifier", e))?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("protocol versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| err("certificate/key", e))
}

/// The Organizations of the first certificate a peer presented.
pub fn peer_organizations(certificates: Option<&[CertificateDer<'_>]>) -> Vec<String> {
    let Some(first) = certificates.and_then(|c| c.first()) else {
        return Vec::new();
    };
    let pem = pem::encode(&pem::Pem::new("CERTIFICATE", first.to_vec()));
    crate::pki::cert_info(&pem, "peer certificate")
        .map(|info| info.organizations)
        .unwrap_or_default()
}
