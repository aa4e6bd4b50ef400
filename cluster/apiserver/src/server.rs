//! The HTTPS server and the request pipeline: TLS (HTTP/2 and HTTP/1.1) with optional
//! client certificates of the cluster CA, authentication (certificate or
//! ServiceAccount token), the fixed paths (discovery, `/version`, OpenAPI, health),
//! authorization by RBAC, and dispatch to the REST operations.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info_span, warn};

use crate::auth::{BoundKind, Tokens, User};
use crate::discovery;
use crate::error::ApiError;
use crate::openapi::OpenApi;
use crate::rbac::{Attributes, Authorizer, forbidden_message};
use crate::registry::{Kind, Registry, ResourceType};
use crate::request::{self, Query, Target};
use crate::rest::Call;
use crate::storage::Storage;
use crate::watch::Hubs;

/// The largest request body taken (kube-apiserver's limit is 3 MiB for objects).
const MAX_BODY: usize = 8 * 1024 * 1024;
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a request may need.
pub struct ApiState {
    /// The served resource types.
    pub registry: Arc<Registry>,
    /// The store.
    pub storage: Storage,
    /// Watch fan-out.
    pub hubs: Arc<Hubs>,
    /// RBAC.
    pub authorizer: Arc<Authorizer>,
    /// ServiceAccount token signing (absent without the CA key).
    pub tokens: Option<Arc<Tokens>>,
    /// The cluster CA certificate (PEM), for the `ca.crt` of ServiceAccount token
    /// Secrets.
    pub ca_cert: String,
    /// OpenAPI documents.
    pub openapi: OpenApi,
    /// Rung when RBAC objects change here.
    pub rbac_changed: Arc<Notify>,
    /// Rung when CRDs change here.
    pub crds_changed: Arc<Notify>,
    /// Rung when a namespace starts terminating here.
    pub namespaces_changed: Arc<Notify>,
    /// The CRDs (name and revision) the custom resource types were last built from.
    pub crd_fingerprint: std::sync::Mutex<Vec<String>>,
    /// How pods' logs and exec sessions reach their nodes (absent: they are refused).
    pub nodes: Option<crate::nodes::NodeAccess>,
}

impl ApiState {
    /// Notes a write to RBAC objects or CRDs, so this server's views follow at once
    /// (the watches bring other servers' writes).
    pub fn changed(&self, resource: &ResourceType, _object: &Value) {
        match resource.builtin {
            Some(Kind::CustomResourceDefinition) => self.crds_changed.notify_one(),
            Some(Kind::Role | Kind::ClusterRole | Kind::RoleBinding | Kind::ClusterRoleBinding) => {
                self.rbac_changed.notify_one()
            }
            _ => {}
        }
    }

    /// Notes that a namespace began terminating.
    pub fn namespace_terminating(&self, _name: &str) {
        self.namespaces_changed.notify_one();
    }
}

/// The identity a connection's client certificate gives.
#[derive(Clone, Debug)]
struct PeerIdentity(Option<User>);

/// The TLS configuration: the serving certificate, and client certificates of the
/// cluster CA accepted but not required (tokens authenticate too).
pub fn tls_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ServerConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| format!("the cluster CA: {e}"))?)
            .map_err(|e| format!("the cluster CA: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the serving certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("the serving key: {e}"))?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("the serving certificate: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The router: every path goes through [`handle`].
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// Accepts TLS connections on `listener` until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    stop: tokio_util::sync::CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    debug!(%peer, error = %err, "TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let user = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|cert| crate::auth::certificate_subject(cert.as_ref()))
                .map(|(cn, orgs)| User::from_certificate(&cn, &orgs));
            let service =
                TowerToHyperService::new(router.layer(axum::Extension(PeerIdentity(user))));
            let connection = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            tokio::select! {
                _ = connection => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

fn json(code: StatusCode, value: &Value, content_type: &str) -> Response {
    (
        code,
        [(axum::http::header::CONTENT_TYPE, content_type.to_owned())],
        value.to_string(),
    )
        .into_response()
}

async fn authenticate(
    state: &ApiState,
    headers: &HeaderMap,
    peer: Option<User>,
) -> Result<User, ApiError> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let Some(token) = bearer {
        let tokens = state.tokens.as_ref().ok_or(ApiError::Unauthorized)?;
        let claims = tokens.verify(token).ok_or(ApiError::Unauthorized)?;
        // The ServiceAccount must still exist as the one the token was made for.
        same_object(
            state,
            Kind::ServiceAccount,
            &claims.namespace,
            &claims.name,
            &claims.uid,
        )
        .await?;
        // A bound token dies with its object: the same one (by uid), not past the time
        // its deletion ends (a pod's token still works through its grace period).
        if let Some(bound) = &claims.bound {
            let kind = match bound.kind {
                BoundKind::Pod => Kind::Pod,
                BoundKind::Secret => Kind::Secret,
            };
            let object =
                same_object(state, kind, &claims.namespace, &bound.name, &bound.uid).await?;
            let deleted_by = crate::meta::meta_str(&object, "deletionTimestamp")
                .and_then(crate::meta::parse_time);
            if deleted_by.is_some_and(|t| t < time::OffsetDateTime::now_utc().unix_timestamp()) {
                return Err(ApiError::Unauthorized);
            }
        }
        return Ok(claims.user());
    }
    Ok(peer.unwrap_or_else(User::anonymous))
}

/// The object `namespace/name` of `kind` a token names, if it still exists with the
/// uid the token was made for (else the token is no longer valid: 401).
async fn same_object(
    state: &ApiState,
    kind: Kind,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Result<Value, ApiError> {
    let resource = state.registry.builtin(kind);
    let stored = state
        .storage
        .get(&resource, Some(namespace), name, false)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    if crate::meta::meta_str(&stored.object, "uid") != Some(uid) {
        return Err(ApiError::Unauthorized);
    }
    Ok(stored.object)
}

fn authorize(state: &ApiState, user: &User, attributes: &Attributes) -> Result<(), ApiError> {
    if state.authorizer.allows(user, attributes) {
        return Ok(());
    }
    if user.is_anonymous() {
        return Err(ApiError::Unauthorized);
    }
    let (resource, group, name) = match attributes {
        Attributes::Resource {
            resource,
            group,
            name,
            ..
        } => (resource.clone(), group.clone(), name.clone()),
        Attributes::Path { .. } => (String::new(), String::new(), None),
    };
    Err(ApiError::Forbidden {
        message: forbidden_message(user, attributes),
        resource,
        group,
        name,
    })
}

async fn handle(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let upgrade = if is_websocket(&parts.headers) {
        WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .ok()
    } else {
        None
    };
    let peer = parts
        .extensions
        .get::<PeerIdentity>()
        .and_then(|p| p.0.clone());
    let query = Query::parse(parts.uri.query());
    let method = parts.method.clone();
    let path = parts.uri.path().to_owned();
    let span = info_span!("request", %method, %path);
    async move {
        let watch = query.flag("watch").unwrap_or(false);
        let user = match authenticate(&state, &parts.headers, peer).await {
            Ok(user) => user,
            Err(err) => return err.into_response(),
        };
        let started = std::time::Instant::now();
        let incoming = Incoming { method: &method, path: &path, query: &query, raw_query: parts.uri.query().unwrap_or_default(), headers: &parts.headers, body, upgrade };
        let response = match dispatch(&state, &user, incoming, watch).await {
            Ok(response) => response,
            Err(err) => err.into_response(),
        };
        let status = response.status().as_u16();
        if status >= 500 {
            warn!(user = %user.name, status, elapsed_ms = started.elapsed().as_millis() as u64, "request failed");
        } else {
            debug!(user = %user.name, status, elapsed_ms = started.elapsed().as_millis() as u64, "request");
        }
        response
    }
    .instrument(span)
    .await
}

/// Whether a request asks to become a WebSocket.
fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// One request as dispatch takes it.
struct Incoming<'a> {
    method: &'a Method,
    path: &'a str,
    query: &'a Query,
    raw_query: &'a str,
    headers: &'a HeaderMap,
    body: Body,
    upgrade: Option<WebSocketUpgrade>,
}

async fn dispatch(
    state: &ApiState,
    user: &User,
    incoming: Incoming<'_>,
    watch: bool,
) -> Result<Response, ApiError> {
    let Incoming {
        method,
        path,
        query,
        raw_query,
        headers,
        body,
        upgrade,
    } = incoming;
    let target = request::parse(method, path, watch);
    let verb = method.as_str().to_lowercase();
    let path_attributes = Attributes::Path {
        verb: if verb == "head" {
            "get".into()
        } else {
            verb.clone()
        },
        path: path.trim_end_matches('/').to_owned(),
    };
    let aggregated = request::wants_aggregated_discovery(headers);
    match target {
        Target::Resource(resource_request) => {
            let resource = state
                .registry
                .lookup(
                    &resource_request.group,
                    &resource_request.version,
                    &resource_request.resource,
                )
                .ok_or(ApiError::NoSuchPath)?;
            if resource.namespaced
                && resource_request.namespace.is_none()
                && !matches!(resource_request.verb, "list" | "watch" | "deletecollection")
                && !resource.create_only
            {
                return Err(ApiError::NoSuchPath);
            }
            let node_served = resource.builtin == Some(Kind::Pod)
                && matches!(
                    resource_request.subresource.as_deref(),
                    Some("log" | "exec")
                );
            // A WebSocket exec is a GET, authorized as kube-apiserver does: `create`.
            let verb = match resource_request.subresource.as_deref() {
                Some("exec") if node_served => "create",
                _ => resource_request.verb,
            };
            let attributes = Attributes::Resource {
                verb: verb.to_owned(),
                group: resource.group.clone(),
                resource: resource.plural.clone(),
                subresource: resource_request.subresource.clone(),
                namespace: if resource.namespaced {
                    resource_request.namespace.clone()
                } else {
                    None
                },
                name: resource_request.name.clone(),
            };
            authorize(state, user, &attributes)?;
            if node_served {
                let namespace = resource_request.namespace.as_deref().unwrap_or_default();
                let name = resource_request.name.as_deref().unwrap_or_default();
                return match (resource_request.subresource.as_deref(), method) {
                    (Some("log"), &Method::GET) => {
                        crate::nodes::logs(state, namespace, name, query).await
                    }
                    (Some("exec"), &Method::GET | &Method::POST) => {
                        let offered = offered_protocols(headers);
                        crate::nodes::exec(
                            state, namespace, name, query, raw_query, upgrade, &offered,
                        )
                        .await
                    }
                    _ => Err(ApiError::MethodNotAllowed(format!(
                        "{method} is not supported on pods/{}",
                        resource_request.subresource.as_deref().unwrap_or_default()
                    ))),
                };
            }
            let content_type = headers
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_owned();
            let bytes = axum::body::to_bytes(body, MAX_BODY)
                .await
                .map_err(|e| ApiError::TooLarge(e.to_string()))?;
            let call = Call {
                state,
                resource: Arc::clone(&resource),
                request: &resource_request,
                query,
                headers,
                user,
            };
            let parse_body = |bytes: &[u8]| -> Result<Value, ApiError> {
                if bytes.is_empty() {
                    return Ok(Value::Object(Default::default()));
                }
                if content_type.starts_with("application/yaml") {
                    serde_saphyr::from_slice(bytes).map_err(|e| {
                        ApiError::BadRequest(format!("the body is not valid YAML: {e}"))
                    })
                } else if content_type.starts_with("application/json")
                    || content_type.is_empty()
                    || content_type.contains("+json")
                {
                    serde_json::from_slice(bytes).map_err(|e| {
                        ApiError::BadRequest(format!("the body is not valid JSON: {e}"))
                    })
                } else if content_type.starts_with(crate::protobuf::CONTENT_TYPE) {
                    crate::protobuf::decode(
                        bytes,
                        &resource.group,
                        &resource.version,
                        &resource.kind,
                    )
                    .map_err(|e| ApiError::BadRequest(e.to_string()))
                } else {
                    Err(ApiError::UnsupportedMediaType(format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type})"
                    )))
                }
            };
            match (
                resource_request.subresource.as_deref(),
                resource_request.verb,
            ) {
                (None, "get") => call.get().await,
                (None, "list") => call.list().await,
                (None | Some("status"), "watch") => call.watch().await,
                (None, "create") => call.create(&parse_body(&bytes)?).await,
                (None | Some("status"), "update") => call.update(&parse_body(&bytes)?).await,
                (None | Some("status"), "patch") => call.patch(&bytes, &content_type).await,
                (None, "delete") => call.delete(&parse_body(&bytes)?).await,
                (None, "deletecollection") => call.delete_collection(&parse_body(&bytes)?).await,
                (Some("status"), "get") if resource.status => call.get().await,
                (Some("scale"), "get" | "update" | "patch") if resource.scale.is_some() => {
                    call.scale(method.as_str(), &bytes, &content_type).await
                }
                (Some("binding"), "create") if resource.builtin == Some(Kind::Pod) => {
                    call.bind(&parse_body(&bytes)?).await
                }
                (Some("finalize"), "update") if resource.builtin == Some(Kind::Namespace) => {
                    call.finalize(&parse_body(&bytes)?).await
                }
                (Some("token"), "create") if resource.builtin == Some(Kind::ServiceAccount) => {
                    call.token(&parse_body(&bytes)?).await
                }
                (Some(_), _) => Err(ApiError::NoSuchPath),
                (None, verb) => Err(ApiError::MethodNotAllowed(format!(
                    "{verb} is not supported on resources of kind {:?}",
                    resource.plural
                ))),
            }
        }
        Target::Health => {
            authorize(state, user, &path_attributes)?;
            Ok((
                StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, "text/plain")],
                "ok",
            )
                .into_response())
        }
        Target::Version => {
            authorize(state, user, &path_attributes)?;
            Ok(json(
                StatusCode::OK,
                &discovery::version(),
                "application/json",
            ))
        }
        other => {
            authorize(state, user, &path_attributes)?;
            fixed(state, other, aggregated)
        }
    }
}

/// The WebSocket subprotocols a request offers, in its order.
fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

fn fixed(state: &ApiState, target: Target, aggregated: bool) -> Result<Response, ApiError> {
    let registry = &state.registry;
    let mut response = match target {
        Target::CoreVersions if aggregated => json(
            StatusCode::OK,
            &discovery::aggregated(registry, true),
            discovery::AGGREGATED_CONTENT_TYPE,
        ),
        Target::Groups if aggregated => json(
            StatusCode::OK,
            &discovery::aggregated(registry, false),
            discovery::AGGREGATED_CONTENT_TYPE,
        ),
        Target::CoreVersions => json(
            StatusCode::OK,
            &discovery::core_versions(),
            "application/json",
        ),
        Target::Groups => json(
            StatusCode::OK,
            &discovery::groups(registry),
            "application/json",
        ),
        Target::Group(name) => json(
            StatusCode::OK,
            &discovery::group(registry, &name).ok_or(ApiError::NoSuchPath)?,
            "application/json",
        ),
        Target::Resources { group, version } => json(
            StatusCode::OK,
            &discovery::resources(registry, &group, &version).ok_or(ApiError::NoSuchPath)?,
            "application/json",
        ),
        Target::OpenApiV3(None) => json(
            StatusCode::OK,
            &state.openapi.index(registry),
            "application/json",
        ),
        Target::OpenApiV3(Some(key)) => {
            let (_, bytes) = state
                .openapi
                .document(registry, &key)
                .ok_or(ApiError::NoSuchPath)?;
            (
                StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                bytes,
            )
                .into_response()
        }
        _ => return Err(ApiError::NoSuchPath),
    };
    response.headers_mut().insert(
        axum::http::header::VARY,
        axum::http::HeaderValue::from_static("Accept"),
    );
    Ok(response)
}
