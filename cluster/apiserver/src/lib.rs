//! Cairn's Kubernetes-compatible API server.
//!
//! It serves the Kubernetes REST API over HTTPS from the replicated store
//! (`cairn-store`): discovery and OpenAPI as kubectl expects them, CRUD, list and watch
//! with `resourceVersion` semantics, the four patch formats including server-side apply,
//! Tables for `kubectl get`, defaulting and validation of the built-in kinds with
//! Kubernetes' messages, CustomResourceDefinitions and their custom resources,
//! authentication by client certificate or ServiceAccount token, RBAC, and Secrets
//! encrypted at rest. Every control plane runs one; writes go through the store's
//! leader and watches are served from the local copy, one store watch per resource
//! type however many clients watch.
//!
//! It owns the API's semantics, not the cluster's behaviour: controllers, the
//! scheduler and the node agent are clients of it (the orchestration crates).
//!
//! - [`server`]: TLS, authentication, authorization, dispatch.
//! - [`rest`]: the operations on resources.
//! - [`registry`], [`discovery`], [`openapi`]: what is served and how it is described.
//! - [`kinds`], [`codec`], [`defaults`], [`validation`], [`meta`], [`crd`]: each kind's
//!   decoding, defaults, checks and lifecycle.
//! - [`patch`], [`managed`]: patches, field managers and server-side apply.
//! - [`watch`], [`selectors`], [`tables`], [`storage`], [`encryption`]: the rest.
//! - [`auth`], [`rbac`]: identities and permissions; [`service_accounts`]: a new
//!   pod's account and its mounted credentials.
//! - `testing` (feature `testing`): a store and a server in process, for tests.

#![forbid(unsafe_code)]

pub mod auth;
pub mod codec;
pub mod crd;
pub mod defaults;
pub mod discovery;
pub mod encryption;
pub mod error;
pub mod kinds;
pub mod managed;
pub mod meta;
pub mod nodes;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod rbac;
pub mod registry;
pub mod request;
pub mod rest;
pub mod selectors;
pub mod server;
pub mod service_accounts;
pub mod storage;
pub mod tables;
#[cfg(feature = "testing")]
pub mod testing;
pub mod validation;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_store::node::StoreNode;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::Tokens;
use crate::encryption::Encryption;
use crate::error::ApiError;
use crate::rbac::{Authorizer, Policy};
use crate::registry::{Kind, Registry};
use crate::server::ApiState;
use crate::storage::{Storage, WriteError};
use crate::watch::Hubs;

/// What the server needs.
pub struct ApiServerConfig {
    /// Where to listen (`0.0.0.0:6443` on a node).
    pub listen: SocketAddr,
    /// The cluster CA certificate (PEM): client certificates are checked against it.
    pub ca_cert: String,
    /// The cluster CA key (PEM): it signs ServiceAccount tokens (none without it).
    pub ca_key: Option<String>,
    /// The serving certificate and key (PEM).
    pub serving_cert: String,
    /// Its key.
    pub serving_key: String,
    /// Secrets encryption keys, `(name, base64 of 32 bytes)`, the encrypting one first.
    pub encryption_keys: Vec<(String, String)>,
    /// How pods' logs and exec sessions reach their nodes (none: they are refused).
    pub nodes: Option<nodes::NodeAccess>,
}

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The TLS material is unusable.
    #[error("the API server's TLS: {0}")]
    Tls(String),
    /// An encryption key is unusable.
    #[error("cluster.secretsEncryption")]
    Encryption(#[from] encryption::EncryptionError),
    /// The token key is unusable.
    #[error("machine.certs.ca.key")]
    TokenKey(#[from] auth::TokenKeyError),
    /// The port is taken.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A running API server.
pub struct ApiServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its state (tests and embedders use it directly).
    pub state: Arc<ApiState>,
    stop: CancellationToken,
}

impl ApiServer {
    /// Starts serving over `store`: listens, then (in the background, retrying until
    /// the store has a leader) writes the default namespaces and RBAC roles, and keeps
    /// the RBAC policy, the custom resources and terminating namespaces in step with
    /// the store.
    pub async fn start(config: ApiServerConfig, store: Arc<StoreNode>) -> Result<Self, StartError> {
        let tls = server::tls_config(&config.ca_cert, &config.serving_cert, &config.serving_key)
            .map_err(StartError::Tls)?;
        let encryption = Encryption::new(&config.encryption_keys)?.map(Arc::new);
        let tokens = match &config.ca_key {
            Some(key) => Some(Arc::new(Tokens::new(key)?)),
            None => None,
        };
        let state = Arc::new(ApiState {
            registry: Arc::new(Registry::new()),
            storage: Storage::new(store, encryption),
            hubs: Arc::new(Hubs::default()),
            authorizer: Arc::new(Authorizer::default()),
            tokens,
            ca_cert: config.ca_cert.clone(),
            openapi: openapi::OpenApi::default(),
            rbac_changed: Arc::new(Notify::new()),
            crds_changed: Arc::new(Notify::new()),
            namespaces_changed: Arc::new(Notify::new()),
            crd_fingerprint: std::sync::Mutex::new(Vec::new()),
            nodes: config.nodes,
        });
        let listener = server::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let stop = CancellationToken::new();
        tokio::spawn(server::serve(
            listener,
            Arc::new(tls),
            server::router(Arc::clone(&state)),
            stop.clone(),
        ));
        tokio::spawn(background(Arc::clone(&state), stop.clone()));
        info!(%addr, "Kubernetes API server listening");
        Ok(Self { addr, state, stop })
    }

    /// Stops serving (open connections end).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How long background work waits before trying again after a store error.
const RETRY: Duration = Duration::from_secs(1);
/// How often the views are refreshed without a change notification (other servers'
/// writes arrive through watches; this bounds any miss).
const RESYNC: Duration = Duration::from_secs(10);

async fn background(state: Arc<ApiState>, stop: CancellationToken) {
    loop {
        match bootstrap(&state).await {
            Ok(()) => break,
            Err(err) => {
                warn!(error = %err, "API defaults not written yet (the store may have no leader); retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
    tokio::spawn(follow(Arc::clone(&state), stop.clone(), Follow::Rbac));
    tokio::spawn(follow(Arc::clone(&state), stop.clone(), Follow::Crds));
    tokio::spawn(follow(Arc::clone(&state), stop.clone(), Follow::Namespaces));
    if let Err(err) = reseal_secrets(&state).await {
        warn!(error = %err, "secrets not re-encrypted with the current key");
    }
}

/// Creates `object` of `kind` unless it exists.
async fn ensure(state: &ApiState, kind: Kind, object: Value) -> Result<(), ApiError> {
    let resource = state.registry.builtin(kind);
    let mut object = object;
    object["apiVersion"] = json!(resource.api_version());
    object["kind"] = json!(resource.kind);
    let name = meta::name_of(&object).to_owned();
    let namespace = meta::meta_str(&object, "namespace").map(str::to_owned);
    let (mut object, _) = kinds::admit(&resource, &object, codec::FieldValidation::Ignore)?;
    kinds::on_create(&resource, &mut object);
    let key = resource.key(namespace.as_deref(), &name);
    match state.storage.create(&resource, &key, &object, None).await {
        Ok(_) | Err(WriteError::Exists) => Ok(()),
        Err(WriteError::Api(err)) => Err(err),
        Err(other) => Err(ApiError::Internal(format!("{other:?}"))),
    }
}

/// The namespaces and RBAC objects every cluster has.
async fn bootstrap(state: &ApiState) -> Result<(), ApiError> {
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ensure(state, Kind::Namespace, json!({"metadata": {"name": name}})).await?;
    }
    for role in rbac::default_cluster_roles() {
        ensure(state, Kind::ClusterRole, role).await?;
    }
    for binding in rbac::default_cluster_role_bindings() {
        ensure(state, Kind::ClusterRoleBinding, binding).await?;
    }
    info!("API defaults in place (namespaces, default roles)");
    Ok(())
}

#[derive(Clone, Copy)]
enum Follow {
    Rbac,
    Crds,
    Namespaces,
}

async fn all_of(state: &ApiState, kind: Kind) -> Result<Vec<Value>, ApiError> {
    let resource = state.registry.builtin(kind);
    let page = state
        .storage
        .list(&resource.key_prefix(), None, None, None, false)
        .await?;
    Ok(page.items.into_iter().map(|s| s.object).collect())
}

async fn refresh(state: &ApiState, what: Follow) -> Result<(), ApiError> {
    match what {
        Follow::Rbac => {
            let policy = Policy {
                roles: all_of(state, Kind::Role).await?,
                cluster_roles: all_of(state, Kind::ClusterRole).await?,
                role_bindings: all_of(state, Kind::RoleBinding).await?,
                cluster_role_bindings: all_of(state, Kind::ClusterRoleBinding).await?,
            };
            state.authorizer.set(policy);
        }
        Follow::Crds => {
            let crds = all_of(state, Kind::CustomResourceDefinition).await?;
            // Each CRD's name and revision: the custom types change when this does.
            let fingerprint: Vec<String> = crds
                .iter()
                .map(|c| {
                    format!(
                        "{}@{}",
                        meta::name_of(c),
                        meta::meta_str(c, "resourceVersion").unwrap_or("")
                    )
                })
                .collect();
            let changed = state
                .crd_fingerprint
                .lock()
                .map(|mut seen| {
                    let changed = *seen != fingerprint;
                    *seen = fingerprint;
                    changed
                })
                .unwrap_or(true);
            if changed {
                state
                    .registry
                    .set_custom(crds.iter().flat_map(crd::resource_types).collect());
            }
            finish_crd_deletions(state, &crds).await?;
        }
        Follow::Namespaces => finish_namespaces(state).await?,
    }
    Ok(())
}

/// Keeps one view current: a refresh now, then on every change to its kinds (a watch
/// on the hub, or a write on this server) and every [`RESYNC`].
async fn follow(state: Arc<ApiState>, stop: CancellationToken, what: Follow) {
    let kinds: &[Kind] = match what {
        Follow::Rbac => &[
            Kind::Role,
            Kind::ClusterRole,
            Kind::RoleBinding,
            Kind::ClusterRoleBinding,
        ],
        Follow::Crds => &[Kind::CustomResourceDefinition],
        Follow::Namespaces => &[Kind::Namespace],
    };
    let notify = match what {
        Follow::Rbac => Arc::clone(&state.rbac_changed),
        Follow::Crds => Arc::clone(&state.crds_changed),
        Follow::Namespaces => Arc::clone(&state.namespaces_changed),
    };
    // Changes seen through the store watches ring the same bell.
    for kind in kinds {
        let resource = state.registry.builtin(*kind);
        let state = Arc::clone(&state);
        let notify = Arc::clone(&notify);
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let now = match state.storage.current_revision().await {
                    Ok(now) => now,
                    Err(_) => {
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                };
                let mut source =
                    match watch::Source::open(&state.hubs, &state.storage, &resource, now, now) {
                        Ok(source) => source,
                        Err(_) => {
                            tokio::time::sleep(RETRY).await;
                            continue;
                        }
                    };
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        next = source.next() => match next {
                            Ok(Some(_)) => notify.notify_one(),
                            _ => break,
                        },
                    }
                }
                tokio::time::sleep(RETRY).await;
            }
        });
    }
    loop {
        if let Err(err) = refresh(&state, what).await {
            warn!(error = %err, "API view not refreshed; retrying");
            tokio::time::sleep(RETRY).await;
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = notify.notified() => {}
            () = tokio::time::sleep(RESYNC) => {}
        }
    }
}

/// CRDs being deleted: their custom resources go, then the CRD.
async fn finish_crd_deletions(state: &ApiState, crds: &[Value]) -> Result<(), ApiError> {
    let resource = state.registry.builtin(Kind::CustomResourceDefinition);
    for crd in crds.iter().filter(|c| meta::is_deleting(c)) {
        let group = crd
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .unwrap_or("");
        let plural = crd
            .pointer("/spec/names/plural")
            .and_then(Value::as_str)
            .unwrap_or("");
        let prefix = format!("/registry/{group}/{plural}/");
        let (kvs, _, _) = state.storage.range(&prefix, None, None, None, true).await?;
        for kv in kvs {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let _ = state.storage.delete(&key, kv.mod_revision).await;
        }
        let name = meta::name_of(crd);
        if let Some(current) = state.storage.get(&resource, None, name, true).await? {
            let mut object = current.object.clone();
            let mut finalizers = meta::finalizers(&object);
            finalizers.retain(|f| f != "customresourcecleanup.apiextensions.k8s.io");
            if finalizers.is_empty() {
                let _ = state
                    .storage
                    .delete(&resource.key(None, name), current.revision)
                    .await;
            } else {
                meta::set_meta(&mut object, "finalizers", json!(finalizers));
                let _ = state
                    .storage
                    .update(
                        &resource,
                        &resource.key(None, name),
                        &object,
                        current.revision,
                    )
                    .await;
            }
        }
    }
    Ok(())
}

/// Terminating namespaces: their content is deleted, then the `kubernetes` finalizer
/// is removed and the namespace goes (the namespace controller's job, done here so
/// that `kubectl delete namespace` completes).
async fn finish_namespaces(state: &ApiState) -> Result<(), ApiError> {
    let namespaces = state.registry.builtin(Kind::Namespace);
    for ns in all_of(state, Kind::Namespace).await? {
        if !meta::is_deleting(&ns) {
            continue;
        }
        let name = meta::name_of(&ns).to_owned();
        let mut remaining = 0;
        for resource in state
            .registry
            .all()
            .iter()
            .filter(|r| r.namespaced && !r.create_only)
        {
            let prefix = resource.namespace_prefix(Some(&name));
            let page = state.storage.list(&prefix, None, None, None, true).await?;
            for stored in page.items {
                remaining += 1;
                if meta::is_deleting(&stored.object) {
                    // Pods on nodes finish their grace period; finalizers their owners'.
                    if resource.builtin == Some(Kind::Pod)
                        && stored
                            .object
                            .pointer("/metadata/deletionTimestamp")
                            .and_then(Value::as_str)
                            .and_then(meta::parse_time)
                            .is_some_and(|t| t <= time::OffsetDateTime::now_utc().unix_timestamp())
                    {
                        let key = resource.key(Some(&name), meta::name_of(&stored.object));
                        let _ = state.storage.delete(&key, stored.revision).await;
                    }
                    continue;
                }
                let key = resource.key(Some(&name), meta::name_of(&stored.object));
                match kinds::deletion(resource, &stored.object, None) {
                    kinds::Deletion::Now => {
                        let _ = state.storage.delete(&key, stored.revision).await;
                    }
                    kinds::Deletion::Graceful { grace } => {
                        let mut object = stored.object.clone();
                        meta::set_meta(
                            &mut object,
                            "deletionTimestamp",
                            Value::String(meta::after(grace)),
                        );
                        meta::set_meta(&mut object, "deletionGracePeriodSeconds", json!(grace));
                        let _ = state
                            .storage
                            .update(resource, &key, &object, stored.revision)
                            .await;
                    }
                }
            }
        }
        if remaining > 0 {
            continue;
        }
        let Some(current) = state.storage.get(&namespaces, None, &name, true).await? else {
            continue;
        };
        let mut object = current.object.clone();
        object["spec"]["finalizers"] = json!([]);
        let key = namespaces.key(None, &name);
        if meta::finalizers(&object).is_empty() {
            let _ = state.storage.delete(&key, current.revision).await;
            info!(namespace = %name, "namespace deleted");
        } else {
            let _ = state
                .storage
                .update(&namespaces, &key, &object, current.revision)
                .await;
        }
    }
    Ok(())
}

/// Writes again every Secret not sealed with the current key (after a key rotation,
/// or when encryption was turned on).
async fn reseal_secrets(state: &ApiState) -> Result<(), ApiError> {
    let secrets = state.registry.builtin(Kind::Secret);
    let (kvs, _, _) = state
        .storage
        .range(&secrets.key_prefix(), None, None, None, true)
        .await?;
    let mut count = 0;
    for kv in kvs {
        if !state.storage.needs_reseal(&secrets, &kv) {
            continue;
        }
        let object = state.storage.decode(&kv, kv.mod_revision)?;
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        if state
            .storage
            .update(&secrets, &key, &object, kv.mod_revision)
            .await
            .is_ok()
        {
            count += 1;
        }
    }
    if count > 0 {
        info!(count, "secrets re-encrypted with the current key");
    }
    Ok(())
}
