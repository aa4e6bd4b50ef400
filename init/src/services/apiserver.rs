//! `apiserver`: the Kubernetes API server on control-plane nodes. It serves HTTPS on
//! port 6443 over this node's replica of the store (writes go through the leader,
//! watches read the local replica), with a serving certificate the node issues itself
//! from the cluster CA, and encrypts Secrets with `cluster.secretsEncryption` (or a
//! key derived from the CA key when the config names none). Pods' logs and exec
//! sessions are relayed to their nodes' machine APIs with an `os:admin` certificate it
//! issues itself; this node's own is dialled where it listens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_api::MachineConfig;
use cairn_api::pki::{Ca, Role};
use cairn_apiserver::nodes::NodeAccess;
use cairn_apiserver::{ApiServer, ApiServerConfig};
use futures::FutureExt;
use futures::future::BoxFuture;
use tracing::info;

use crate::services::listen::ListenAddress;
use crate::services::store::StoreHandle;
use crate::supervisor::{Service, ServiceContext, ServiceError};

/// The Kubernetes API port.
pub const APISERVER_PORT: u16 = 6443;

/// The name of the key derived from the CA key when the config names none.
pub const DERIVED_KEY_NAME: &str = "ca-derived";

/// What the API server service needs from the machine config and the host.
#[derive(Clone)]
pub struct ApiServerSettings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The cluster CA certificate (PEM).
    pub ca_cert: String,
    /// The cluster CA key (PEM): issues the serving certificate, signs tokens.
    pub ca_key: String,
    /// Names for the serving certificate.
    pub names: Vec<String>,
    /// Secrets encryption keys, `(name, base64)`, the encrypting one first.
    pub encryption_keys: Vec<(String, String)>,
}

/// Why the API server cannot run on this node.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerSetupError {
    /// The config has no cluster section.
    #[error("a control plane needs a cluster section to serve the Kubernetes API")]
    NoCluster,
    /// The config has no CA key.
    #[error(
        "machine.certs.ca.key is needed on a control plane to issue the API server's certificate"
    )]
    NoCaKey,
}

impl ApiServerSettings {
    /// The settings of a control plane with `config`, known by `node_names`.
    pub fn from_config(
        config: &MachineConfig,
        listen: SocketAddr,
        node_names: Vec<String>,
    ) -> Result<Self, ApiServerSetupError> {
        let cluster = config
            .cluster
            .as_ref()
            .ok_or(ApiServerSetupError::NoCluster)?;
        let ca_key = config
            .machine
            .certs
            .ca
            .key
            .clone()
            .ok_or(ApiServerSetupError::NoCaKey)?;
        let mut names = node_names;
        for name in [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "localhost",
            "127.0.0.1",
        ] {
            names.push(name.to_owned());
        }
        names.extend(cluster.control_planes.iter().cloned());
        if let Some(host) = cluster.endpoint.as_deref().and_then(endpoint_host) {
            names.push(host);
        }
        names.sort();
        names.dedup();
        let encryption_keys = match &cluster.secrets_encryption {
            Some(spec) if !spec.keys.is_empty() => spec
                .keys
                .iter()
                .map(|k| (k.name.clone(), k.secret.clone()))
                .collect(),
            _ => vec![(DERIVED_KEY_NAME.to_owned(), derived_key(&ca_key))],
        };
        Ok(Self {
            listen,
            ca_cert: config.machine.certs.ca.crt.clone(),
            ca_key,
            names,
            encryption_keys,
        })
    }
}

/// The host of an endpoint URL like `https://10.5.0.2:6443`.
fn endpoint_host(endpoint: &str) -> Option<String> {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// A secrets key derived from the CA key (HKDF-SHA256), the same on every control
/// plane of the cluster, base64.
fn derived_key(ca_key_pem: &str) -> String {
    use base64::Engine;
    use ring::hkdf::{HKDF_SHA256, KeyType, Salt};
    struct Len32;
    impl KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let mut out = [0u8; 32];
    let prk =
        Salt::new(HKDF_SHA256, b"cairn secrets encryption").extract(ca_key_pem.trim().as_bytes());
    // Expanding to 32 bytes of SHA-256 is within HKDF's limit (255 blocks), so these
    // cannot fail.
    if let Ok(okm) = prk.expand(&[b"v1"], Len32) {
        let _ = okm.fill(&mut out);
    }
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// The API server service.
pub struct ApiServerService {
    settings: ApiServerSettings,
    store: StoreHandle,
    handle: ListenAddress,
    node: (String, ListenAddress),
}

impl ApiServerService {
    /// A service serving the API with `settings` over the store in `store`, publishing
    /// its address in `handle`; `node` is this node's name and where its machine API
    /// listens.
    pub fn new(
        settings: ApiServerSettings,
        store: StoreHandle,
        handle: ListenAddress,
        node: (String, ListenAddress),
    ) -> Self {
        Self {
            settings,
            store,
            handle,
            node,
        }
    }
}

impl Service for ApiServerService {
    fn name(&self) -> &str {
        "apiserver"
    }

    fn run(&self, ctx: ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>> {
        let settings = self.settings.clone();
        let store = self.store.clone();
        let handle = self.handle.clone();
        let (node_name, machine_api) = self.node.clone();
        async move {
            // The store service starts first; wait for its node.
            let node = loop {
                if let Some(node) = store.get() {
                    break node;
                }
                tokio::select! {
                    () = ctx.shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            };
            let ca = Ca::from_pem(&settings.ca_cert, &settings.ca_key)
                .map_err(|e| ServiceError::Fatal(format!("cluster CA unusable: {e}")))?;
            let serving = ca
                .issue_server(
                    "kube-apiserver",
                    &settings.names,
                    ::time::Duration::days(365),
                )
                .map_err(|e| {
                    ServiceError::Fatal(format!("cannot issue the API server's certificate: {e}"))
                })?;
            let relay = ca
                .issue_client("kube-apiserver", Role::Admin, ::time::Duration::days(365))
                .map_err(|e| {
                    ServiceError::Fatal(format!(
                        "cannot issue the API server's machine API certificate: {e}"
                    ))
                })?;
            let nodes = NodeAccess {
                ca_cert: settings.ca_cert.clone(),
                client_cert: relay.cert_pem,
                client_key: relay.key_pem,
                local_node: node_name,
                local_address: Arc::new(move || machine_api.addr()),
            };
            let server = ApiServer::start(
                ApiServerConfig {
                    listen: settings.listen,
                    ca_cert: settings.ca_cert.clone(),
                    ca_key: Some(settings.ca_key.clone()),
                    serving_cert: serving.cert_pem,
                    serving_key: serving.key_pem,
                    encryption_keys: settings.encryption_keys.clone(),
                    nodes: Some(nodes),
                },
                node,
            )
            .await
            .map_err(|e| ServiceError::failed("cannot start the Kubernetes API server", e))?;
            info!(address = %server.addr, "Kubernetes API serving");
            handle.set(Some(server.addr));
            ctx.shutdown.cancelled().await;
            handle.set(None);
            server.stop();
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_hosts_are_found() {
        assert_eq!(
            endpoint_host("https://10.5.0.2:6443").as_deref(),
            Some("10.5.0.2")
        );
        assert_eq!(
            endpoint_host("https://[fd00::2]:6443/").as_deref(),
            Some("fd00::2")
        );
        assert_eq!(
            endpoint_host("https://cp.example").as_deref(),
            Some("cp.example")
        );
    }

    #[test]
    fn the_derived_key_is_stable_32_bytes_and_depends_on_the_ca_key() {
        use base64::Engine;
        let a = derived_key("key a");
        assert_eq!(a, derived_key("key a\n"));
        assert_ne!(a, derived_key("key b"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&a)
            .unwrap();
        assert_eq!(bytes.len(), 32);
        assert!(bytes.iter().any(|b| *b != 0));
    }

    #[test]
    fn settings_take_the_configured_keys_and_name_the_endpoint() {
        let secrets = cairn_api::bundle::Secrets::generate("t").unwrap();
        let config = secrets
            .machine_config(&cairn_api::bundle::NodeSpec {
                machine_type: cairn_api::machine_config::MachineType::Controlplane,
                hostname: "cp-1".into(),
                addresses: vec!["10.5.0.2/24".into()],
                endpoint: "https://10.5.0.2:6443".into(),
                control_planes: vec!["10.5.0.2".into()],
                install_disk: None,
            })
            .unwrap();
        let settings = ApiServerSettings::from_config(
            &config,
            SocketAddr::from(([0, 0, 0, 0], APISERVER_PORT)),
            vec!["cp-1".into()],
        )
        .unwrap();
        assert_eq!(settings.encryption_keys.len(), 1);
        assert_eq!(settings.encryption_keys[0].0, "key1");
        for name in ["cp-1", "10.5.0.2", "kubernetes.default.svc"] {
            assert!(settings.names.iter().any(|n| n == name), "{name} missing");
        }
    }
}
