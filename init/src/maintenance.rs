//! Maintenance mode: a node without a usable config waits for one. It serves the
//! machine API over TLS with a self-signed certificate and no client authentication,
//! answers version and health, and accepts exactly one valid `apply-config --insecure`
//! (as Talos does); every other call says what to do.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cairn_api::machine_api::{
    ApplyOutcome, ApplyRequest, ApplyResponse, Health, Persistence, paths,
};
use cairn_api::machine_config::{ConfigChanges, MachineConfig};
use cairn_api::pki;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api_server::{self, error_response, install_crypto_provider, phase_infos, version_info};
use crate::phase::NodeState;

/// Why maintenance mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    /// No certificate could be made.
    #[error("cannot make the maintenance certificate")]
    Certificate(#[source] pki::PkiError),
    /// rustls refused it.
    #[error("maintenance TLS configuration refused")]
    Tls(#[source] rustls::Error),
    /// The port could not be bound.
    #[error("cannot listen on {address}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

struct Waiting {
    reason: String,
    state: NodeState,
    accepted: Mutex<Option<oneshot::Sender<MachineConfig>>>,
}

/// Serves maintenance mode on `listen` until a valid config arrives, and returns it.
pub async fn wait_for_config(
    listen: SocketAddr,
    names: &[String],
    reason: &str,
    state: &NodeState,
) -> Result<MachineConfig, MaintenanceError> {
    install_crypto_provider();
    let cert = pki::self_signed_server("cairn maintenance", names)
        .map_err(MaintenanceError::Certificate)?;
    let chain = vec![rustls::pki_types::CertificateDer::from(
        pem::parse(&cert.cert_pem)
            .map_err(|_| {
                MaintenanceError::Certificate(pki::PkiError::Pem {
                    what: "certificate",
                })
            })?
            .contents()
            .to_vec(),
    )];
    let key = rustls::pki_types::PrivateKeyDer::try_from(
        pem::parse(&cert.key_pem)
            .map_err(|_| MaintenanceError::Certificate(pki::PkiError::Pem { what: "key" }))?
            .contents()
            .to_vec(),
    )
    .map_err(|_| MaintenanceError::Certificate(pki::PkiError::Key { what: "key" }))?;
    let tls = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(MaintenanceError::Tls)?,
    );
    let listener = api_server::bind(listen)
        .await
        .map_err(|source| MaintenanceError::Listen {
            address: listen,
            source,
        })?;
    let (tx, rx) = oneshot::channel();
    let waiting = Arc::new(Waiting {
        reason: reason.to_owned(),
        state: state.clone(),
        accepted: Mutex::new(Some(tx)),
    });
    let router = Router::new()
        .route(paths::VERSION, get(|| async { Json(version_info(true)) }))
        .route(paths::HEALTH, get(health))
        .route(paths::MACHINE_CONFIG, post(apply))
        .fallback(refuse)
        .with_state(waiting);
    let stop = CancellationToken::new();
    info!(
        address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "maintenance: machine API waiting for `cairnctl apply-config --insecure`"
    );
    let server = tokio::spawn(api_server::serve(
        listener,
        move || Some(Arc::clone(&tls)),
        router,
        stop.clone(),
    ));
    let config = rx.await;
    // Give the accepted request time to get its answer before the listener closes.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.cancel();
    let _ = server.await;
    match config {
        Ok(config) => Ok(config),
        // The sender lives in the router state until a config arrives; it cannot drop
        // first. Should it ever, wait forever rather than boot without a config.
        Err(_) => std::future::pending().await,
    }
}

async fn health(State(waiting): State<Arc<Waiting>>) -> Json<Health> {
    Json(Health {
        stage: "maintenance".into(),
        reason: Some(waiting.reason.clone()),
        phases: phase_infos(&waiting.state),
        services: Vec::new(),
        persistence: Persistence::Ephemeral,
        staged_config: false,
        try_rollback_in_secs: None,
    })
}

async fn apply(State(waiting): State<Arc<Waiting>>, Json(request): Json<ApplyRequest>) -> Response {
    let config = match MachineConfig::from_yaml(&request.config) {
        Ok(config) => config,
        Err(err) => {
            warn!(error = %err, "maintenance: config refused");
            return error_response(
                StatusCode::BAD_REQUEST,
                "the machine config is invalid; the node keeps waiting",
                err.problems(),
            );
        }
    };
    let Some(sender) = waiting.accepted.lock().ok().and_then(|mut s| s.take()) else {
        return error_response(
            StatusCode::CONFLICT,
            "a config was already accepted; the node is booting with it",
            Vec::new(),
        );
    };
    info!(
        hostname = config.machine.hostname.as_deref().unwrap_or(""),
        "maintenance: config accepted; booting with it"
    );
    let _ = sender.send(config);
    Json(ApplyResponse {
        outcome: ApplyOutcome::Booting,
        changes: ConfigChanges::default(),
        rollback_in_secs: None,
    })
    .into_response()
}

async fn refuse(State(waiting): State<Arc<Waiting>>) -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "this node is in maintenance mode ({}); it accepts only `cairnctl apply-config --insecure`",
            waiting.reason
        ),
        Vec::new(),
    )
}
