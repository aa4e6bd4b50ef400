//! The machine API's container calls: the pods on the node with their containers'
//! states, a container's log (CRI log read back as `kubectl logs` shows it, with
//! `follow`, `tail`, `previous` and `timestamps`), and images (list, import an OCI
//! layout or `docker save` archive streamed in the request body, remove). Exec is
//! `api_exec`'s.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cairn_api::machine_api::{Ack, ContainerInfo, ImageInfo, PodInfo, paths};
use cairn_runtime::cri_log::ReadOptions;
use cairn_runtime::plan::PodIdentity;
use cairn_runtime::runtime::Runtime;
use k8s_openapi::api::core::v1::ContainerStatus;
use tokio::io::AsyncWriteExt;

use crate::api_server::{NodeContext, error_response};

/// The largest image archive accepted.
const MAX_ARCHIVE: u64 = 8 << 30;

/// The routes of this module, for the authenticated router.
pub fn routes() -> axum::Router<Arc<NodeContext>> {
    axum::Router::new()
        .route(paths::PODS, get(pods))
        .route(
            "/v1/pods/{namespace}/{name}/containers/{container}/logs",
            get(container_log),
        )
        .route(
            "/v1/pods/{namespace}/{name}/containers/{container}/exec",
            get(crate::api_exec::exec),
        )
        .route(
            paths::IMAGES,
            get(images).post(import_image).delete(remove_image),
        )
}

/// The answer while the runtime service is not running.
pub(crate) fn unavailable() -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "the container runtime is not running (see `cairnctl services`)",
        Vec::new(),
    )
}

fn container_info(status: &ContainerStatus, init: bool) -> ContainerInfo {
    let state = status.state.clone().unwrap_or_default();
    let (name, reason, message, exit_code) = if state.running.is_some() {
        ("running", None, None, None)
    } else if let Some(terminated) = state.terminated {
        (
            "terminated",
            terminated.reason,
            terminated.message,
            Some(terminated.exit_code),
        )
    } else if let Some(waiting) = state.waiting {
        ("waiting", waiting.reason, waiting.message, None)
    } else {
        ("waiting", None, None, None)
    };
    ContainerInfo {
        name: status.name.clone(),
        image: status.image.clone(),
        init,
        state: name.to_owned(),
        reason,
        message,
        exit_code,
        ready: status.ready,
        restart_count: status.restart_count,
    }
}

async fn pods(State(ctx): State<Arc<NodeContext>>) -> Response {
    let Some(runtime) = ctx.runtime.get() else {
        return unavailable();
    };
    let mut infos: Vec<PodInfo> = runtime
        .list_pods()
        .into_iter()
        .filter_map(|identity| {
            let status = runtime.pod_status(&identity.uid)?;
            let containers = status
                .init_container_statuses
                .iter()
                .map(|c| container_info(c, true))
                .chain(
                    status
                        .container_statuses
                        .iter()
                        .map(|c| container_info(c, false)),
                )
                .collect();
            Some(PodInfo {
                namespace: identity.namespace,
                name: identity.name,
                uid: identity.uid,
                phase: status.phase.as_str().to_owned(),
                pod_ip: status.pod_ip,
                message: status.message,
                containers,
            })
        })
        .collect();
    infos.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Json(infos).into_response()
}

/// The pod `namespace/name` on this node.
pub(crate) fn find_pod(runtime: &Runtime, namespace: &str, name: &str) -> Option<PodIdentity> {
    runtime
        .list_pods()
        .into_iter()
        .find(|p| p.namespace == namespace && p.name == name)
}

/// The answer for a pod [`find_pod`] did not find.
pub(crate) fn no_pod(namespace: &str, name: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        format!("no pod {namespace}/{name} on this node"),
        Vec::new(),
    )
}

/// Query of a container log.
#[derive(Debug, Default, serde::Deserialize)]
struct LogQuery {
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    tail: Option<usize>,
    #[serde(default)]
    previous: bool,
    #[serde(default)]
    timestamps: bool,
    /// Only what the last this many seconds wrote, by this node's clock.
    #[serde(default, rename = "sinceSeconds")]
    since_seconds: Option<u64>,
    /// Only what was written at or after this RFC 3339 time.
    #[serde(default, rename = "sinceTime")]
    since_time: Option<String>,
    /// At most this many bytes.
    #[serde(default, rename = "limitBytes")]
    limit_bytes: Option<u64>,
}

impl LogQuery {
    /// The earliest record to show, or a message naming the parameter that is wrong.
    fn since(&self) -> Result<Option<time::OffsetDateTime>, String> {
        match (&self.since_time, self.since_seconds) {
            (Some(_), Some(_)) => {
                Err("at most one of sinceTime or sinceSeconds may be specified".into())
            }
            (Some(text), None) => {
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .map(Some)
                    .map_err(|err| format!("sinceTime: {text:?} is not an RFC 3339 time: {err}"))
            }
            (None, Some(seconds)) => {
                let seconds = i64::try_from(seconds).unwrap_or(i64::MAX);
                let now = time::OffsetDateTime::now_utc();
                Ok(Some(
                    now.checked_sub(time::Duration::seconds(seconds))
                        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                ))
            }
            (None, None) => Ok(None),
        }
    }
}

async fn container_log(
    State(ctx): State<Arc<NodeContext>>,
    UrlPath((namespace, name, container)): UrlPath<(String, String, String)>,
    Query(query): Query<LogQuery>,
) -> Response {
    let Some(runtime) = ctx.runtime.get() else {
        return unavailable();
    };
    let Some(pod) = find_pod(&runtime, &namespace, &name) else {
        return no_pod(&namespace, &name);
    };
    // Errors that come before any output (no such container, no previous instance)
    // are answered as such.
    if let Err(err) = runtime.log_path(&pod.uid, &container, query.previous) {
        return error_response(StatusCode::NOT_FOUND, err.to_string(), Vec::new());
    }
    let since = match query.since() {
        Ok(since) => since,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, message, Vec::new()),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let options = ReadOptions {
        tail: query.tail,
        follow: query.follow,
        timestamps: query.timestamps,
        since,
        limit_bytes: query.limit_bytes,
    };
    tokio::task::spawn_blocking(move || {
        let closed = tx.clone();
        let wanted = move || !closed.is_closed();
        let result = runtime.read_log(
            &pod.uid,
            &container,
            query.previous,
            &options,
            wanted,
            |chunk| {
                tx.blocking_send(Bytes::copy_from_slice(chunk))
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            },
        );
        if let Err(err) = result {
            let _ = tx.blocking_send(Bytes::from(format!("\n(log read failed: {err})\n")));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn image_infos(runtime: &Runtime) -> Vec<ImageInfo> {
    runtime
        .images()
        .list()
        .into_iter()
        .map(|image| ImageInfo {
            name: image.name,
            digest: image.manifest.to_string(),
            size: image.size,
        })
        .collect()
}

async fn images(State(ctx): State<Arc<NodeContext>>) -> Response {
    match ctx.runtime.get() {
        Some(runtime) => Json(image_infos(&runtime)).into_response(),
        None => unavailable(),
    }
}

/// Streams the body (a tar archive) to a file beside the image store, then imports
/// it; the file goes either way.
async fn import_image(State(ctx): State<Arc<NodeContext>>, body: Body) -> Response {
    let Some(runtime) = ctx.runtime.get() else {
        return unavailable();
    };
    let incoming = match tempfile::Builder::new()
        .prefix("import-")
        .suffix(".tar")
        .tempfile_in(runtime.state_dir())
    {
        Ok(file) => file.into_temp_path(),
        Err(err) => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot stage the upload: {err}"),
                Vec::new(),
            );
        }
    };
    let written = async {
        use futures::StreamExt;
        let mut file = tokio::fs::File::create(&incoming).await?;
        let mut stream = body.into_data_stream();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(std::io::Error::other)?;
            total += chunk.len() as u64;
            if total > MAX_ARCHIVE {
                return Err(std::io::Error::other(format!(
                    "the archive is larger than {MAX_ARCHIVE} bytes"
                )));
            }
            file.write_all(&chunk).await?;
        }
        file.sync_all().await?;
        Ok::<u64, std::io::Error>(total)
    }
    .await;
    if let Err(err) = written {
        return error_response(
            StatusCode::BAD_REQUEST,
            format!("receiving the archive: {err}"),
            Vec::new(),
        );
    }
    let path = incoming.to_path_buf();
    let importer = Arc::clone(&runtime);
    let imported = tokio::task::spawn_blocking(move || importer.images().import(&path)).await;
    drop(incoming);
    match imported {
        Ok(Ok(records)) => {
            let names: Vec<String> = records.iter().map(|r| r.name.clone()).collect();
            tracing::info!(?names, "images imported");
            Json(
                image_infos(&runtime)
                    .into_iter()
                    .filter(|i| names.contains(&i.name))
                    .collect::<Vec<_>>(),
            )
            .into_response()
        }
        Ok(Err(err)) => error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the archive was refused: {err}"),
            Vec::new(),
        ),
        Err(err) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("import task: {err}"),
            Vec::new(),
        ),
    }
}

/// Query of an image removal.
#[derive(Debug, serde::Deserialize)]
struct NameQuery {
    name: String,
}

async fn remove_image(
    State(ctx): State<Arc<NodeContext>>,
    Query(query): Query<NameQuery>,
) -> Response {
    let Some(runtime) = ctx.runtime.get() else {
        return unavailable();
    };
    let name = query.name;
    let result = tokio::task::spawn_blocking(move || {
        let removed = runtime.remove_image(&name)?;
        Ok::<_, cairn_runtime::runtime::RuntimeError>((name, removed))
    })
    .await;
    match result {
        Ok(Ok((name, true))) => Json(Ack {
            message: format!("image {name} removed"),
        })
        .into_response(),
        Ok(Ok((name, false))) => error_response(
            StatusCode::NOT_FOUND,
            format!("no image named {name:?} on this node"),
            Vec::new(),
        ),
        Ok(Err(err @ cairn_runtime::runtime::RuntimeError::Container { .. })) => {
            error_response(StatusCode::CONFLICT, err.to_string(), Vec::new())
        }
        Ok(Err(err)) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            err.to_string(),
            Vec::new(),
        ),
        Err(err) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("removal task: {err}"),
            Vec::new(),
        ),
    }
}
