//! Pulling images from OCI registries (`oci-client`) into the [`ImageStore`]: image
//! references with tags or digests (normalised as Docker does), anonymous, basic and
//! bearer-token authentication (the token dance of `WWW-Authenticate` is the
//! client's), multi-architecture indexes resolved to linux/amd64, and every blob
//! verified against its digest as it enters the store.

use std::collections::BTreeMap;
use std::path::Path;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{ImageIndex, ImageManifest};
use tokio::io::AsyncWriteExt;

use crate::digest::Digest;
use crate::images::{ImageError, ImageRecord, ImageStore, linux_amd64, normalize_reference};

/// The largest manifest or index accepted.
const MAX_METADATA: u64 = 4 << 20;
/// The largest layer accepted.
const MAX_LAYER: u64 = 16 << 30;

/// Manifest media types the puller understands.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// How to authenticate to a registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials (public images, or a registry handing out anonymous tokens).
    #[default]
    Anonymous,
    /// A user name and password (HTTP basic, or exchanged for a bearer token).
    Basic {
        /// The user.
        username: String,
        /// The password.
        password: String,
    },
    /// A bearer token.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets stay out of logs.
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The reference is not an image reference.
    #[error("image reference {reference:?}: {reason}")]
    Reference {
        /// The reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// The registry refused or failed a request.
    #[error("pulling {reference}: {source}")]
    Registry {
        /// The reference.
        reference: String,
        /// The client's error.
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    /// What the registry sent is not a usable image.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A blob did not match its digest or could not be stored.
    #[error(transparent)]
    Blob(#[from] crate::blobs::BlobError),
    /// The registry client could not be made.
    #[error("{0}")]
    Setup(String),
    /// A staging file failed.
    #[error("staging a blob: {0}")]
    Io(#[from] std::io::Error),
}

/// Pulls images into a store.
pub struct Puller {
    settings: std::sync::RwLock<RegistrySettings>,
}

/// The node's own registry settings (the machine config's `machine.registries`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Registries (`host:port`) spoken to over plain HTTP, as the kubelet's and
    /// Docker's insecure-registry lists.
    pub insecure: Vec<String>,
    /// Credentials by registry host, for pulls that bring none of their own (a pod's
    /// `imagePullSecrets` come first).
    pub credentials: BTreeMap<String, Credentials>,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Puller")
    }
}

impl Puller {
    /// A puller speaking HTTPS, except plain HTTP to the `insecure` registries
    /// (`host:port`, as the kubelet's and Docker's insecure-registry lists).
    pub fn new(insecure: &[String]) -> Self {
        Self::with_settings(RegistrySettings {
            insecure: insecure.to_vec(),
            ..RegistrySettings::default()
        })
    }

    /// A puller with the node's registry settings.
    pub fn with_settings(settings: RegistrySettings) -> Self {
        // reqwest's rustls needs a process-wide crypto provider (ring here).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            settings: std::sync::RwLock::new(settings),
        }
    }

    /// Replaces the registry settings; later pulls use the new ones.
    pub fn configure(&self, settings: RegistrySettings) {
        *self
            .settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = settings;
    }

    /// The current registry settings.
    pub fn settings(&self) -> RegistrySettings {
        self.settings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A client for one pull: `oci-client` keeps the first credentials it saw per
    /// registry, so each pull gets its own (a retry with other credentials must count).
    fn client(insecure: &[String]) -> Result<Client, PullError> {
        let protocol = if insecure.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(insecure.to_vec())
        };
        // The HTTP client panics when the system has no CA certificates (an
        // initramfs without a bundle): report that instead of taking the caller down.
        std::panic::catch_unwind(|| {
            Client::new(ClientConfig {
                protocol,
                ..ClientConfig::default()
            })
        })
        .map_err(|_| {
            PullError::Setup(
                "the HTTP client could not be set up (no CA certificates on this node?)".into(),
            )
        })
    }

    /// Pulls `reference` into `store` (under its normalised name) and returns the
    /// image; anonymous `credentials` give way to the node's own for that registry.
    /// Blobs already present are not fetched again.
    pub async fn pull(
        &self,
        store: &ImageStore,
        reference: &str,
        credentials: &Credentials,
    ) -> Result<ImageRecord, PullError> {
        let name = normalize_reference(reference);
        let image: Reference =
            name.parse()
                .map_err(|e: oci_client::ParseError| PullError::Reference {
                    reference: reference.to_owned(),
                    reason: e.to_string(),
                })?;
        let settings = self.settings();
        let host = name.split('/').next().unwrap_or_default();
        let credentials = match credentials {
            Credentials::Anonymous => settings.credentials.get(host).unwrap_or(credentials),
            given => given,
        };
        let auth = match credentials {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credentials::Bearer(token) => RegistryAuth::Bearer(token.clone()),
        };
        let client = Self::client(&settings.insecure)?;
        let registry_err = |source| PullError::Registry {
            reference: name.clone(),
            source,
        };
        // The manifest, through any index down to linux/amd64.
        let (mut bytes, mut digest) = client
            .pull_manifest_raw(&image, &auth, MANIFEST_TYPES)
            .await
            .map_err(registry_err)?;
        for _ in 0..4 {
            let Ok(index) = ImageIndex::from_reader(&bytes[..]) else {
                break;
            };
            if index.manifests().is_empty() {
                break;
            }
            let chosen = linux_amd64(&index).ok_or_else(|| ImageError::NoPlatform(name.clone()))?;
            let at = image.clone_with_digest(chosen.digest().to_string());
            (bytes, digest) = client
                .pull_manifest_raw(&at, &auth, MANIFEST_TYPES)
                .await
                .map_err(registry_err)?;
        }
        let expected = Digest::parse(&digest).map_err(|e| ImageError::Invalid {
            what: format!("manifest digest of {name}"),
            reason: e.to_string(),
        })?;
        let manifest_digest = store.blobs().put_bytes(&bytes, Some(&expected))?;
        let manifest = ImageManifest::from_reader(&bytes[..]).map_err(|e| ImageError::Invalid {
            what: format!("manifest of {name}"),
            reason: e.to_string(),
        })?;
        let config = fetch(
            &client,
            store,
            &image,
            manifest.config().digest().as_ref(),
            MAX_METADATA,
        )
        .await?;
        let mut size = bytes.len() as u64 + manifest.config().size();
        let mut layers = Vec::new();
        for layer in manifest.layers() {
            layers.push(fetch(&client, store, &image, layer.digest().as_ref(), MAX_LAYER).await?);
            size += layer.size();
        }
        let record = ImageRecord {
            name,
            manifest: manifest_digest,
            config,
            layers,
            size,
        };
        store.add(record.clone())?;
        Ok(record)
    }
}

/// Fetches one blob into the store (verified) unless it is there already.
async fn fetch(
    client: &Client,
    store: &ImageStore,
    image: &Reference,
    digest: &str,
    limit: u64,
) -> Result<Digest, PullError> {
    let expected = Digest::parse(digest).map_err(|e| ImageError::Invalid {
        what: format!("blob digest {digest}"),
        reason: e.to_string(),
    })?;
    if store.blobs().contains(&expected) {
        return Ok(expected);
    }
    let staged = tempfile::NamedTempFile::new_in(store.staging_dir())?;
    {
        let mut file = tokio::fs::File::create(staged.path()).await?;
        client
            .pull_blob(image, digest, &mut file)
            .await
            .map_err(|source| PullError::Registry {
                reference: format!("{image} blob {digest}"),
                source,
            })?;
        file.flush().await?;
    }
    let path: &Path = staged.path();
    let file = std::fs::File::open(path)?;
    let (digest, _) = store.blobs().put(file, Some(&expected), limit)?;
    Ok(digest)
}
