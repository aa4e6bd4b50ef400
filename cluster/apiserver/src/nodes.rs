//! The pod subresources served by the node a pod runs on, as kube-apiserver proxies
//! them to the kubelet: `pods/log` (`kubectl logs [-f]`) and `pods/exec` (`kubectl
//! exec [-it]`, WebSocket remote command protocol v5 and v4). The API server finds
//! the pod's node, dials that node's machine API (its `InternalIP` and the port its
//! Node publishes as `status.daemonEndpoints.kubeletEndpoint`) with an `os:admin`
//! client certificate of the cluster CA, and relays: the log's bytes as they come,
//! the exec session's WebSocket messages both ways.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cairn_api::remote_command;
use cairn_machine_client::{ClientError, NodeClient};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite;
use tracing::{Instrument, debug, info, info_span};

use crate::error::ApiError;
use crate::meta;
use crate::registry::Kind;
use crate::request::Query;
use crate::server::ApiState;

/// The annotation naming the container `kubectl logs` and `exec` use by default.
const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// How the API server reaches the nodes' machine APIs.
pub struct NodeAccess {
    /// The cluster CA certificate (PEM): node certificates must chain to it.
    pub ca_cert: String,
    /// An `os:admin` client certificate of the cluster CA (PEM).
    pub client_cert: String,
    /// Its key (PEM).
    pub client_key: String,
    /// The node this server runs on: its own machine API is dialled where it listens.
    pub local_node: String,
    /// Where this node's machine API listens now (none while it does not).
    pub local_address: Arc<dyn Fn() -> Option<SocketAddr> + Send + Sync>,
}

impl NodeAccess {
    /// A client for the machine API of `node` (its Node object), or why there is none.
    fn client(&self, node_name: &str, node: &Value) -> Result<NodeClient, ApiError> {
        let target = if node_name == self.local_node {
            (self.local_address)()
                .map(|a| a.to_string())
                .ok_or_else(|| {
                    ApiError::Unavailable(format!(
                        "the machine API of node {node_name:?} is not listening"
                    ))
                })?
        } else {
            machine_api_target(node).ok_or_else(|| {
                ApiError::Unavailable(format!(
                    "node {node_name:?} has no InternalIP address to reach it at"
                ))
            })?
        };
        NodeClient::with_identity(&target, &self.ca_cert, &self.client_cert, &self.client_key)
            .map_err(|e| ApiError::Internal(e.to_string()))
    }
}

/// `InternalIP:port` of a Node, the port its `kubeletEndpoint` (the machine API's).
fn machine_api_target(node: &Value) -> Option<String> {
    let status = node.get("status")?;
    let address = status
        .get("addresses")?
        .as_array()?
        .iter()
        .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))?
        .get("address")?
        .as_str()?;
    let port = status
        .pointer("/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .filter(|p| *p > 0 && *p <= u64::from(u16::MAX))
        .unwrap_or(u64::from(cairn_api::machine_api::PORT));
    Some(if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    })
}

/// A pod's node and the container a request is for.
struct Located {
    client: NodeClient,
    container: String,
}

/// Finds pod `namespace/name`, the container the query names (or the default one),
/// and a client for its node.
async fn locate(
    state: &ApiState,
    namespace: &str,
    name: &str,
    query: &Query,
) -> Result<Located, ApiError> {
    let access = state.nodes.as_ref().ok_or_else(|| {
        ApiError::Unavailable("this API server has no access to the nodes".into())
    })?;
    let pods = state.registry.builtin(Kind::Pod);
    let pod = state
        .storage
        .get(&pods, Some(namespace), name, false)
        .await?
        .ok_or_else(|| ApiError::not_found(&pods, name))?
        .object;
    let container = container_for(&pod, name, query.get("container"))?;
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::BadRequest(format!("pod {name} does not have a host assigned")))?;
    let nodes = state.registry.builtin(Kind::Node);
    let node = state
        .storage
        .get(&nodes, None, node_name, false)
        .await?
        .ok_or_else(|| ApiError::not_found(&nodes, node_name))?
        .object;
    Ok(Located {
        client: access.client(node_name, &node)?,
        container,
    })
}

/// The container of `pod` a request names, or its default one, as kube-apiserver
/// chooses it.
fn container_for(pod: &Value, pod_name: &str, named: Option<&str>) -> Result<String, ApiError> {
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("containers");
    if let Some(named) = named.filter(|n| !n.is_empty()) {
        let init = names("initContainers");
        if containers.iter().chain(&init).any(|c| c == named) {
            return Ok(named.to_owned());
        }
        return Err(ApiError::BadRequest(format!(
            "container {named} is not valid for pod {pod_name}"
        )));
    }
    let annotated = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION))
        .and_then(Value::as_str)
        .filter(|c| containers.iter().any(|n| n == c));
    if let Some(container) = annotated {
        return Ok(container.to_owned());
    }
    match containers.as_slice() {
        [only] => Ok(only.clone()),
        _ => Err(ApiError::BadRequest(format!(
            "a container name must be specified for pod {pod_name}, choose one of: [{}]",
            containers.join(" ")
        ))),
    }
}

/// What a node's refusal means to the API's client.
fn node_error(err: ClientError) -> ApiError {
    match &err {
        ClientError::Api { status, error, .. } if status.is_client_error() => {
            ApiError::BadRequest(error.error.clone())
        }
        ClientError::Api { status, error, .. } if *status == StatusCode::SERVICE_UNAVAILABLE => {
            ApiError::Unavailable(error.error.clone())
        }
        _ => ApiError::Internal(err.to_string()),
    }
}

/// `GET pods/{name}/log`: the container's log from its node, streamed as it comes.
pub async fn logs(
    state: &ApiState,
    namespace: &str,
    name: &str,
    query: &Query,
) -> Result<Response, ApiError> {
    let follow = query.flag("follow")?;
    let previous = query.flag("previous")?;
    let timestamps = query.flag("timestamps")?;
    let tail = query.number("tailLines")?;
    if tail.is_some_and(|t| t < 0) {
        return Err(ApiError::BadRequest(
            "tailLines: must be greater than or equal to 0".into(),
        ));
    }
    let positive = |key: &str| -> Result<Option<i64>, ApiError> {
        let value = query.number(key)?;
        if value.is_some_and(|v| v < 1) {
            return Err(ApiError::BadRequest(format!(
                "{key}: must be greater than 0"
            )));
        }
        Ok(value)
    };
    let since_seconds = positive("sinceSeconds")?;
    let limit_bytes = positive("limitBytes")?;
    let since_time = query.get("sinceTime").filter(|t| !t.is_empty());
    if since_time.is_some() && since_seconds.is_some() {
        return Err(ApiError::BadRequest(
            "at most one of sinceTime or sinceSeconds may be specified".into(),
        ));
    }
    if let Some(text) = since_time
        && meta::parse_time(text).is_none()
    {
        return Err(ApiError::BadRequest(format!(
            "sinceTime: {text:?} is not an RFC 3339 time"
        )));
    }
    let located = locate(state, namespace, name, query).await?;
    let node_query = {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("follow", bool_text(follow));
        query.append_pair("previous", bool_text(previous));
        query.append_pair("timestamps", bool_text(timestamps));
        if let Some(tail) = tail {
            query.append_pair("tail", &tail.to_string());
        }
        // The node applies `sinceSeconds` by its own clock, which wrote the times.
        if let Some(seconds) = since_seconds {
            query.append_pair("sinceSeconds", &seconds.to_string());
        }
        if let Some(time) = since_time {
            query.append_pair("sinceTime", time);
        }
        if let Some(limit) = limit_bytes {
            query.append_pair("limitBytes", &limit.to_string());
        }
        query.finish()
    };
    let path = format!(
        "/v1/pods/{namespace}/{name}/containers/{}/logs?{node_query}",
        located.container
    );
    debug!(node = %located.client.node(), %path, "relaying a log");
    let body = located.client.get_body(&path).await.map_err(node_error)?;
    Ok((
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "text/plain")],
        Body::new(body),
    )
        .into_response())
}

fn bool_text(value: bool) -> &'static str {
    if value { "true" } else { "false" }
}

/// `pods/{name}/exec` upgraded to a WebSocket: the session is opened on the node
/// first (so a command that cannot start is answered as an error), then the client's
/// WebSocket is accepted with the protocol the node chose and the two are joined.
pub async fn exec(
    state: &ApiState,
    namespace: &str,
    name: &str,
    query: &Query,
    raw_query: &str,
    upgrade: Option<WebSocketUpgrade>,
    offered: &[String],
) -> Result<Response, ApiError> {
    let Some(upgrade) = upgrade else {
        return Err(ApiError::BadRequest(
            "exec needs a WebSocket upgrade (channel.k8s.io protocols v5 or v4); SPDY is not supported"
                .into(),
        ));
    };
    let protocols: Vec<&str> = offered
        .iter()
        .map(String::as_str)
        .filter(|p| [remote_command::PROTOCOL_V5, remote_command::PROTOCOL_V4].contains(p))
        .collect();
    if protocols.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "none of the offered WebSocket protocols {offered:?} is spoken here (use {} or {})",
            remote_command::PROTOCOL_V5,
            remote_command::PROTOCOL_V4
        )));
    }
    let located = locate(state, namespace, name, query).await?;
    let path = format!(
        "/v1/pods/{namespace}/{name}/containers/{}/exec?{raw_query}",
        located.container
    );
    let (node_socket, protocol) = located
        .client
        .websocket(&path, &protocols)
        .await
        .map_err(node_error)?;
    let span = info_span!("exec", pod = %format!("{namespace}/{name}"), container = %located.container, node = %located.client.node(), %protocol);
    span.in_scope(|| info!("relaying an exec session"));
    Ok(upgrade
        .protocols([protocol])
        .on_upgrade(move |client| join(client, node_socket).instrument(span)))
}

/// Relays messages between the client's WebSocket and the node's until either side
/// closes; a close is passed on with its code (a normal one when the node gave none).
async fn join(client: WebSocket, node: cairn_machine_client::WebSocket) {
    let (mut to_client, mut from_client) = client.split();
    let (mut to_node, mut from_node) = node.split();
    let upstream = async {
        while let Some(Ok(message)) = from_client.next().await {
            let closing = matches!(message, ws::Message::Close(_));
            let Some(message) = for_node(message) else {
                continue;
            };
            if to_node.send(message).await.is_err() || closing {
                break;
            }
        }
        let _ = to_node.close().await;
    };
    let downstream = async {
        while let Some(Ok(message)) = from_node.next().await {
            let closing = matches!(message, tungstenite::Message::Close(_));
            let Some(message) = for_client(message) else {
                continue;
            };
            if to_client.send(message).await.is_err() || closing {
                return;
            }
        }
        let _ = to_client
            .send(ws::Message::Close(Some(normal_close())))
            .await;
    };
    tokio::select! {
        () = upstream => debug!("the client ended the exec session"),
        () = downstream => debug!("the node ended the exec session"),
    }
}

fn normal_close() -> ws::CloseFrame {
    ws::CloseFrame {
        code: ws::close_code::NORMAL,
        reason: ws::Utf8Bytes::from_static(""),
    }
}

/// A client message as the node gets it (pings and pongs stay on their hop).
fn for_node(message: ws::Message) -> Option<tungstenite::Message> {
    Some(match message {
        ws::Message::Binary(data) => tungstenite::Message::Binary(data),
        ws::Message::Text(text) => tungstenite::Message::Text(text.as_str().into()),
        ws::Message::Close(frame) => {
            tungstenite::Message::Close(frame.map(|f| tungstenite::protocol::CloseFrame {
                code: f.code.into(),
                reason: f.reason.as_str().into(),
            }))
        }
        ws::Message::Ping(_) | ws::Message::Pong(_) => return None,
    })
}

/// A node message as the client gets it; a close without a code becomes a normal
/// close, which client-go reads as the end of the stream rather than an error.
fn for_client(message: tungstenite::Message) -> Option<ws::Message> {
    Some(match message {
        tungstenite::Message::Binary(data) => ws::Message::Binary(data),
        tungstenite::Message::Text(text) => ws::Message::Text(text.as_str().into()),
        tungstenite::Message::Close(frame) => ws::Message::Close(Some(
            frame
                .map(|f| ws::CloseFrame {
                    code: f.code.into(),
                    reason: f.reason.as_str().into(),
                })
                .unwrap_or_else(normal_close),
        )),
        tungstenite::Message::Ping(_)
        | tungstenite::Message::Pong(_)
        | tungstenite::Message::Frame(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: &[&str], annotation: Option<&str>) -> Value {
        let mut pod = serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {
                "containers": containers.iter().map(|c| serde_json::json!({"name": c})).collect::<Vec<_>>(),
                "initContainers": [{"name": "setup"}],
            },
        });
        if let Some(default) = annotation {
            pod["metadata"]["annotations"] =
                serde_json::json!({ DEFAULT_CONTAINER_ANNOTATION: default });
        }
        pod
    }

    #[test]
    fn the_only_container_is_the_default() {
        assert_eq!(
            container_for(&pod(&["main"], None), "web", None).unwrap(),
            "main"
        );
    }

    #[test]
    fn several_containers_need_a_name_or_the_annotation() {
        let two = pod(&["main", "side"], None);
        let err = container_for(&two, "web", None).unwrap_err().to_string();
        assert!(err.contains("choose one of: [main side]"), "{err}");
        assert_eq!(container_for(&two, "web", Some("side")).unwrap(), "side");
        assert_eq!(container_for(&two, "web", Some("setup")).unwrap(), "setup");
        let annotated = pod(&["main", "side"], Some("side"));
        assert_eq!(container_for(&annotated, "web", None).unwrap(), "side");
    }

    #[test]
    fn an_unknown_container_is_refused_by_name() {
        let err = container_for(&pod(&["main"], None), "web", Some("nope"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "container nope is not valid for pod web");
    }

    #[test]
    fn a_node_is_reached_at_its_internal_ip_and_published_port() {
        let node = serde_json::json!({"status": {
            "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.5.0.3"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 50001}},
        }});
        assert_eq!(machine_api_target(&node).unwrap(), "10.5.0.3:50001");
        let default_port = serde_json::json!({"status": {
            "addresses": [{"type": "InternalIP", "address": "fd00::3"}],
        }});
        assert_eq!(
            machine_api_target(&default_port).unwrap(),
            "[fd00::3]:50000"
        );
        assert!(machine_api_target(&serde_json::json!({"status": {}})).is_none());
    }
}
