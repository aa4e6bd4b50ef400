//! The machine API server: HTTPS with mutual TLS on port 50000.
//!
//! Clients must present a certificate signed by the cluster CA, or the handshake fails.
//! The role comes from the certificate's Organization (`os:admin`, `os:operator`,
//! `os:reader`); a call the role may not make gets 403 naming the role. The serving
//! certificate is the config's node certificate, or one the node issues itself from the
//! CA key, naming its hostname and addresses (reissued when they change).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use cairn_api::machine_api::{
    Ack, ApiError, ApplyRequest, Health, PhaseInfo, ServiceInfo, VersionInfo, paths, required_role,
};
use cairn_api::machine_config::MachineConfig;
use cairn_api::pki::{self, Role};
use futures::FutureExt;
use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config_manager::{ApplyError, ConfigManager};
use crate::logging::LogHandles;
use crate::phase::{NodeState, PhaseState, Stage};
use crate::power::{PowerAction, PowerRequest};
use crate::supervisor::{Service, ServiceContext, ServiceError, Supervisor};

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The serving configuration, swapped when certificates or names change.
#[derive(Clone, Default)]
pub struct TlsState {
    config: Arc<RwLock<Option<Arc<rustls::ServerConfig>>>>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key in the config is unusable.
    #[error("machine.certs: {0}")]
    Certs(String),
    /// rustls refused the configuration.
    #[error("TLS configuration refused")]
    Rustls(#[source] rustls::Error),
    /// The node could not issue its own certificate.
    #[error("cannot issue the node certificate")]
    Issue(#[source] pki::PkiError),
}

/// The names the node's serving certificate carries: hostname, loopback and addresses.
pub fn certificate_names(hostname: &str, addresses: &[IpAddr]) -> Vec<String> {
    let mut names = vec![
        hostname.to_owned(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    for address in addresses {
        let text = address.to_string();
        if !names.contains(&text) {
            names.push(text);
        }
    }
    names
}

/// Installs ring as the process's TLS crypto provider (once; later calls do nothing).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl TlsState {
    /// The configuration for the next connection.
    pub fn current(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.config.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// Builds the server configuration from a machine config and the node's names.
    pub fn reload(&self, config: &MachineConfig, names: &[String]) -> Result<(), TlsError> {
        install_crypto_provider();
        let certs = &config.machine.certs;
        let (cert_pem, key_pem) = match (&certs.node, &certs.ca.key) {
            (Some(node), _) => (node.crt.clone(), node.key.clone()),
            (None, Some(ca_key)) => {
                let ca = pki::Ca::from_pem(&certs.ca.crt, ca_key).map_err(TlsError::Issue)?;
                let common_name = names.first().cloned().unwrap_or_else(|| "cairn".into());
                let issued = ca
                    .issue_server(&common_name, names, time_days(365))
                    .map_err(TlsError::Issue)?;
                (issued.cert_pem, issued.key_pem)
            }
            (None, None) => {
                return Err(TlsError::Certs(
                    "no node certificate and no CA key to issue one".into(),
                ));
            }
        };
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(certs.ca.crt.as_bytes()) {
            let ca = ca.map_err(|e| TlsError::Certs(format!("ca.crt: {e}")))?;
            roots
                .add(ca)
                .map_err(|e| TlsError::Certs(format!("ca.crt: {e}")))?;
        }
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|e| TlsError::Certs(format!("client verifier: {e}")))?;
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Certs(format!("node.crt: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::Certs(format!("node.key: {e}")))?;
        let server = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(TlsError::Rustls)?;
        if let Ok(mut slot) = self.config.write() {
            *slot = Some(Arc::new(server));
        }
        if let Ok(info) = pki::cert_info(&cert_pem, "node certificate") {
            info!(
                subject = info.common_name.as_deref().unwrap_or(""),
                names = info.alt_names.join(","),
                not_after = info.not_after,
                "machine API certificate loaded"
            );
        }
        Ok(())
    }
}

fn time_days(days: i64) -> ::time::Duration {
    ::time::Duration::days(days)
}

/// What the API reads and drives.
pub struct NodeContext {
    /// Boot phases and stage.
    pub state: NodeState,
    /// The services.
    pub supervisor: Supervisor,
    /// Service log rings.
    pub logs: LogHandles,
    /// The running config.
    pub config: Arc<ConfigManager>,
    /// Where reboot and shutdown requests go.
    pub power: mpsc::UnboundedSender<PowerRequest>,
    /// Where state lives.
    pub persistence: cairn_api::machine_api::Persistence,
    /// The serving TLS configuration.
    pub tls: TlsState,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where it can be dialled once it listens (the API server's relay, the Node's
    /// published port).
    pub bound: crate::services::listen::ListenAddress,
    /// The replicated store, on control planes.
    pub store: crate::services::store::StoreHandle,
    /// The container runtime.
    pub runtime: crate::services::runtime::RuntimeHandle,
    /// The network reconciler's last status (PID 1 only).
    pub network: crate::services::network::NetworkHandle,
}

/// Who is calling: from the client certificate.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The role, if the certificate names one.
    pub role: Option<Role>,
    /// The certificate's Common Name.
    pub name: String,
}

fn identity(certificates: Option<&[CertificateDer<'_>]>) -> Identity {
    let Some(first) = certificates.and_then(|c| c.first()) else {
        return Identity {
            role: None,
            name: "(no certificate)".into(),
        };
    };
    let pem = pem::encode(&pem::Pem::new("CERTIFICATE", first.to_vec()));
    match pki::cert_info(&pem, "client certificate") {
        Ok(info) => Identity {
            role: info
                .organizations
                .iter()
                .filter_map(|o| Role::from_organization(o))
                .max(),
            name: info.common_name.unwrap_or_default(),
        },
        Err(_) => Identity {
            role: None,
            name: "(unreadable certificate)".into(),
        },
    }
}

/// An error answer in the API's JSON shape.
pub fn error_response(
    status: StatusCode,
    error: impl Into<String>,
    problems: Vec<String>,
) -> Response {
    (
        status,
        Json(ApiError {
            error: error.into(),
            problems,
        }),
    )
        .into_response()
}

async fn authorize(
    Extension(identity): Extension<Identity>,
    request: Request,
    next: Next,
) -> Response {
    let needed = required_role(request.method().as_str(), request.uri().path());
    match identity.role {
        Some(role) if role >= needed => next.run(request).await,
        Some(role) => error_response(
            StatusCode::FORBIDDEN,
            format!(
                "role {role} may not {} {} (it needs {needed}); ask an admin for a certificate with that role",
                request.method(),
                request.uri().path()
            ),
            Vec::new(),
        ),
        None => error_response(
            StatusCode::FORBIDDEN,
            format!(
                "certificate {:?} carries no Cairn role (Organization os:admin, os:operator or os:reader)",
                identity.name
            ),
            Vec::new(),
        ),
    }
}

/// The authenticated API's routes.
pub fn router(ctx: Arc<NodeContext>) -> Router {
    Router::new()
        .route(paths::VERSION, get(version))
        .route(paths::HEALTH, get(health))
        .route(paths::SERVICES, get(services))
        .route("/v1/services/{name}/restart", post(restart_service))
        .route("/v1/services/{name}/logs", get(service_logs))
        .route(paths::DMESG, get(dmesg))
        .route(
            paths::MACHINE_CONFIG,
            get(machine_config).post(apply_config),
        )
        .route(paths::CONFIRM, post(confirm))
        .route(paths::REBOOT, post(reboot))
        .route(paths::SHUTDOWN, post(shutdown))
        .route(paths::STORE_BOOTSTRAP, post(store_bootstrap))
        .route(paths::STORE_MEMBERS, get(store_members))
        .route("/v1/store/members/{id}/remove", post(store_remove))
        .route(paths::STORE_KV, get(store_get).post(store_put))
        .route(paths::NETWORK, get(network))
        .route(paths::KUBECONFIG, post(kubeconfig))
        .merge(crate::api_runtime::routes())
        .layer(middleware::from_fn(authorize))
        .with_state(ctx)
}

/// This node's version answer.
pub fn version_info(maintenance: bool) -> VersionInfo {
    VersionInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        maintenance,
    }
}

async fn version() -> Json<VersionInfo> {
    Json(version_info(false))
}

/// The boot phases as the API shows them.
pub fn phase_infos(state: &NodeState) -> Vec<PhaseInfo> {
    state
        .phases()
        .into_iter()
        .map(|phase| {
            let (label, elapsed, detail) = match phase.state {
                PhaseState::Running => ("running", None, None),
                PhaseState::Done { elapsed } => ("done", Some(elapsed), None),
                PhaseState::Skipped { why } => ("skipped", None, Some(why)),
                PhaseState::Failed { elapsed, reason } => ("failed", Some(elapsed), Some(reason)),
            };
            PhaseInfo {
                name: phase.name.to_owned(),
                state: label.to_owned(),
                elapsed_ms: elapsed.map(crate::phase::millis),
                detail,
            }
        })
        .collect()
}

/// The stage as the API names it, and the maintenance reason.
pub fn stage_label(stage: Stage) -> (String, Option<String>) {
    match stage {
        Stage::Booting => ("booting".into(), None),
        Stage::Ready => ("ready".into(), None),
        Stage::Maintenance { reason } => ("maintenance".into(), Some(reason)),
        Stage::ShuttingDown => ("shutting-down".into(), None),
    }
}

fn service_infos(supervisor: &Supervisor) -> Vec<ServiceInfo> {
    supervisor
        .statuses()
        .into_iter()
        .map(|s| ServiceInfo {
            name: s.name,
            state: s.state.to_string(),
            restarts: s.restarts,
            last_exit: s.last_exit.map(|e| e.reason.to_string()),
        })
        .collect()
}

async fn health(State(ctx): State<Arc<NodeContext>>) -> Json<Health> {
    let (stage, reason) = stage_label(ctx.state.stage());
    Json(Health {
        stage,
        reason,
        phases: phase_infos(&ctx.state),
        services: service_infos(&ctx.supervisor),
        persistence: ctx.persistence.clone(),
        staged_config: ctx.config.has_staged().await,
        try_rollback_in_secs: ctx.config.try_rollback_in().await,
    })
}

async fn services(State(ctx): State<Arc<NodeContext>>) -> Json<Vec<ServiceInfo>> {
    Json(service_infos(&ctx.supervisor))
}

async fn restart_service(
    State(ctx): State<Arc<NodeContext>>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    match ctx.supervisor.restart(&name) {
        Ok(()) => Json(Ack {
            message: format!("service {name} is restarting"),
        })
        .into_response(),
        Err(err) => error_response(StatusCode::NOT_FOUND, err.to_string(), Vec::new()),
    }
}

/// `?follow=true&tail=100`.
#[derive(serde::Deserialize)]
pub struct StreamQuery {
    /// Keep the stream open for new lines.
    #[serde(default)]
    pub follow: bool,
    /// How many recent lines to start with.
    #[serde(default)]
    pub tail: Option<usize>,
}

fn line_body<S>(lines: S) -> Response
where
    S: futures::Stream<Item = String> + Send + 'static,
{
    use futures::StreamExt;
    let body = Body::from_stream(lines.map(|line| Ok::<_, Infallible>(Bytes::from(line + "\n"))));
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn service_logs(
    State(ctx): State<Arc<NodeContext>>,
    UrlPath(name): UrlPath<String>,
    Query(query): Query<StreamQuery>,
) -> Response {
    if ctx.supervisor.status(&name).is_none() {
        return error_response(
            StatusCode::NOT_FOUND,
            format!("no service named {name:?}"),
            Vec::new(),
        );
    }
    let tail = query.tail.unwrap_or(usize::MAX);
    if !query.follow {
        return line_body(futures::stream::iter(ctx.logs.services.tail(&name, tail)));
    }
    let (recent, feed) = ctx.logs.services.follow(&name, tail);
    let live = futures::stream::unfold(feed, |mut feed| async move {
        match feed.recv().await {
            Ok(line) => Some((line, feed)),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(skipped)) => {
                Some((format!("… {skipped} lines skipped (reader too slow)"), feed))
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    });
    use futures::StreamExt;
    line_body(futures::stream::iter(recent).chain(live))
}

async fn dmesg(Query(query): Query<StreamQuery>) -> Response {
    match crate::kmsg::stream(query.follow) {
        Ok(rx) => line_body(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|line| (line, rx))
        })),
        Err(err) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read /dev/kmsg: {err}"),
            Vec::new(),
        ),
    }
}

async fn machine_config(
    State(ctx): State<Arc<NodeContext>>,
    Extension(identity): Extension<Identity>,
) -> Response {
    let config = ctx.config.current().await;
    let shown = if identity.role == Some(Role::Admin) {
        config
    } else {
        config.redacted()
    };
    match shown.to_yaml() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/yaml")], text).into_response(),
        Err(err) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            err.to_string(),
            Vec::new(),
        ),
    }
}

/// An admin kubeconfig, its certificate issued now by the cluster CA (control planes
/// hold its key), pointing at `cluster.endpoint` (else this node's API server).
async fn kubeconfig(
    State(ctx): State<Arc<NodeContext>>,
    Extension(identity): Extension<Identity>,
) -> Response {
    let config = ctx.config.current().await;
    let Some(cluster) = &config.cluster else {
        return error_response(
            StatusCode::CONFLICT,
            "this machine's config has no cluster section, so there is no Kubernetes API",
            Vec::new(),
        );
    };
    let Some(key) = &config.machine.certs.ca.key else {
        return error_response(
            StatusCode::CONFLICT,
            "this node cannot issue kubeconfigs (no machine.certs.ca.key): ask a control plane",
            Vec::new(),
        );
    };
    let server = match &cluster.endpoint {
        Some(endpoint) => endpoint.clone(),
        None => {
            let own = config
                .interfaces()
                .unwrap_or_default()
                .iter()
                .flat_map(|i| i.addresses.iter().map(|a| a.addr()))
                .next();
            match own {
                Some(std::net::IpAddr::V6(ip)) => format!("https://[{ip}]:6443"),
                Some(ip) => format!("https://{ip}:6443"),
                None => "https://127.0.0.1:6443".to_owned(),
            }
        }
    };
    let made = pki::Ca::from_pem(&config.machine.certs.ca.crt, key)
        .and_then(|ca| cairn_api::kubeconfig::admin(&ca, &cluster.name, &server));
    match made {
        Ok(kubeconfig) => {
            info!(by = %identity.name, %server, "admin kubeconfig issued");
            Json(cairn_api::machine_api::KubeconfigResponse { kubeconfig, server }).into_response()
        }
        Err(err) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "cannot issue the kubeconfig's certificate: {}",
                crate::error_chain(&err)
            ),
            Vec::new(),
        ),
    }
}

/// The HTTP status of an apply error.
pub fn apply_error_response(err: &ApplyError) -> Response {
    let status = match err {
        ApplyError::Invalid(_) => StatusCode::BAD_REQUEST,
        ApplyError::NeedsReboot { .. }
        | ApplyError::Ephemeral { .. }
        | ApplyError::TryPending(_)
        | ApplyError::NothingToConfirm => StatusCode::CONFLICT,
        ApplyError::Live(_) | ApplyError::Persist { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_response(status, crate::error_chain(err), err.problems())
}

async fn apply_config(
    State(ctx): State<Arc<NodeContext>>,
    Json(request): Json<ApplyRequest>,
) -> Response {
    match ctx.config.apply(request).await {
        Ok(answer) => Json(answer).into_response(),
        Err(err) => {
            warn!(error = %crate::error_chain(&err), "apply-config refused");
            apply_error_response(&err)
        }
    }
}

async fn confirm(State(ctx): State<Arc<NodeContext>>) -> Response {
    match ctx.config.confirm().await {
        Ok(()) => Json(Ack {
            message: "the tried config is confirmed and saved".into(),
        })
        .into_response(),
        Err(err) => apply_error_response(&err),
    }
}

fn power(ctx: &NodeContext, action: PowerAction, identity: &Identity) -> Response {
    let power = ctx.power.clone();
    let cause = format!("machine API ({})", identity.name);
    // Answer first, then start the shutdown that stops this server.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = power.send(PowerRequest { action, cause });
    });
    Json(Ack {
        message: format!("{action} requested"),
    })
    .into_response()
}

async fn reboot(
    State(ctx): State<Arc<NodeContext>>,
    Extension(identity): Extension<Identity>,
) -> Response {
    power(&ctx, PowerAction::Reboot, &identity)
}

async fn shutdown(
    State(ctx): State<Arc<NodeContext>>,
    Extension(identity): Extension<Identity>,
) -> Response {
    power(&ctx, PowerAction::PowerOff, &identity)
}

async fn network(State(ctx): State<Arc<NodeContext>>) -> Response {
    match ctx.network.get() {
        Some(status) => Json(status).into_response(),
        None => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "the network reconciler does not run on this node (a hosted node leaves the \
             host's network alone) or has not made its first pass yet",
            Vec::new(),
        ),
    }
}

fn store_node(ctx: &NodeContext) -> Result<Arc<cairn_store::node::StoreNode>, Box<Response>> {
    ctx.store.get().ok_or_else(|| {
        Box::new(error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store does not run on this node (it runs on control planes once booted)",
            Vec::new(),
        ))
    })
}

fn store_error(err: cairn_store::protocol::ClientError) -> Response {
    use cairn_store::protocol::ClientError;
    let status = match &err {
        ClientError::Refused(_) => StatusCode::CONFLICT,
        ClientError::Store(_) => StatusCode::BAD_REQUEST,
        ClientError::NoLeader(_) | ClientError::NotSent(_) | ClientError::Unavailable(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    error_response(status, err.to_string(), Vec::new())
}

async fn store_bootstrap(State(ctx): State<Arc<NodeContext>>) -> Response {
    let node = match store_node(&ctx) {
        Ok(node) => node,
        Err(response) => return *response,
    };
    match node.bootstrap().await {
        Ok(()) => Json(Ack {
            message: format!(
                "store bootstrapped with node {} as its first member",
                node.id()
            ),
        })
        .into_response(),
        Err(err) => store_error(err),
    }
}

async fn store_members(State(ctx): State<Arc<NodeContext>>) -> Response {
    let node = match store_node(&ctx) {
        Ok(node) => node,
        Err(response) => return *response,
    };
    let members = node.members();
    let revision = node.revisions().map(|(r, _)| r).unwrap_or(0);
    Json(cairn_api::machine_api::StoreMembers {
        this: members.this,
        leader: members.leader,
        term: members.term,
        applied: members.applied,
        state: members.state,
        revision,
        members: members
            .members
            .into_iter()
            .map(|m| cairn_api::machine_api::StoreMember {
                id: m.id,
                addr: m.addr,
                voter: m.voter,
                matched: m.matched,
            })
            .collect(),
    })
    .into_response()
}

async fn store_remove(State(ctx): State<Arc<NodeContext>>, UrlPath(id): UrlPath<u64>) -> Response {
    let node = match store_node(&ctx) {
        Ok(node) => node,
        Err(response) => return *response,
    };
    match node
        .client(cairn_store::protocol::ClientRequest::Remove { id }, true)
        .await
    {
        Ok(_) => Json(Ack {
            message: format!("store member {id} removed"),
        })
        .into_response(),
        Err(err) => store_error(err),
    }
}

/// `?key=` or `?prefix=`.
#[derive(serde::Deserialize)]
pub struct KvQuery {
    /// One key.
    pub key: Option<String>,
    /// Every key with this prefix.
    pub prefix: Option<String>,
}

fn kv_list(response: cairn_store::types::RangeResponse) -> cairn_api::machine_api::KvList {
    cairn_api::machine_api::KvList {
        revision: response.revision,
        entries: response
            .kvs
            .into_iter()
            .map(|kv| cairn_api::machine_api::KvEntry {
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                value: String::from_utf8_lossy(&kv.value).into_owned(),
                mod_revision: kv.mod_revision,
            })
            .collect(),
    }
}

async fn store_get(State(ctx): State<Arc<NodeContext>>, Query(query): Query<KvQuery>) -> Response {
    let node = match store_node(&ctx) {
        Ok(node) => node,
        Err(response) => return *response,
    };
    let range = match (query.key, query.prefix) {
        (Some(key), None) => cairn_store::types::RangeRequest::key(key),
        (None, Some(prefix)) => cairn_store::types::RangeRequest::prefix(prefix),
        _ => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "give exactly one of key= and prefix=",
                Vec::new(),
            );
        }
    };
    match node.read(range, true).await {
        Ok(response) => Json(kv_list(response)).into_response(),
        Err(err) => store_error(err),
    }
}

async fn store_put(
    State(ctx): State<Arc<NodeContext>>,
    Json(put): Json<cairn_api::machine_api::KvPut>,
) -> Response {
    let node = match store_node(&ctx) {
        Ok(node) => node,
        Err(response) => return *response,
    };
    let request = cairn_store::types::Request::Txn(cairn_store::types::Txn::put(
        put.key.clone(),
        put.value.clone(),
    ));
    match node.write(request).await {
        Ok(cairn_store::types::Response::Txn(t)) => Json(cairn_api::machine_api::KvList {
            revision: t.revision,
            entries: vec![cairn_api::machine_api::KvEntry {
                key: put.key,
                value: put.value,
                mod_revision: t.revision,
            }],
        })
        .into_response(),
        Ok(other) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected answer {other:?}"),
            Vec::new(),
        ),
        Err(err) => store_error(err),
    }
}

/// Accepts TLS connections on `listener` until `stop` fires, serving `router` with the
/// client's identity attached; the TLS configuration is read per connection.
pub async fn serve(
    listener: TcpListener,
    tls: impl Fn() -> Option<Arc<rustls::ServerConfig>> + Send + Sync + 'static,
    router: Router,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(config) = tls() else {
            warn!("no TLS configuration yet; connection dropped");
            continue;
        };
        let router = router.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let acceptor = TlsAcceptor::from(config);
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    info!(%peer, error = %err, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let who = identity(stream.get_ref().1.peer_certificates());
            debug!(%peer, client = %who.name, role = ?who.role, "machine API connection");
            let service = TowerToHyperService::new(router.layer(Extension(who)));
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                _ = connection => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

/// Binds the API's address, on IPv6 and IPv4 when given `[::]`.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    match TcpListener::bind(address).await {
        Ok(listener) => Ok(listener),
        Err(err) if address.ip().is_unspecified() && address.is_ipv6() => {
            debug!(error = %err, "no IPv6; listening on IPv4 only");
            TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], address.port()))).await
        }
        Err(err) => Err(err),
    }
}

/// The `machine-api` service.
pub struct MachineApiService {
    ctx: Arc<NodeContext>,
}

impl MachineApiService {
    /// A service serving `ctx`.
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }
}

impl Service for MachineApiService {
    fn name(&self) -> &str {
        "machine-api"
    }

    fn run(&self, service: ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>> {
        let ctx = Arc::clone(&self.ctx);
        async move {
            if ctx.tls.current().is_none() {
                return Err(ServiceError::Fatal("no TLS configuration".into()));
            }
            let listener = bind(ctx.listen)
                .await
                .map_err(|e| ServiceError::failed(format!("cannot listen on {}", ctx.listen), e))?;
            let address = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            info!(address, "machine API listening");
            ctx.bound.set(listener.local_addr().ok());
            let tls = ctx.tls.clone();
            serve(
                listener,
                move || tls.current(),
                router(Arc::clone(&ctx)),
                service.shutdown,
            )
            .await;
            ctx.bound.set(None);
            Ok(())
        }
        .boxed()
    }
}
