//! The machine API's exec call (`cairnctl exec`, and what `kubectl exec` will reach):
//! `GET /v1/pods/{namespace}/{name}/containers/{container}/exec?command=…` upgraded to
//! a WebSocket that speaks Kubernetes' remote command protocol
//! ([`cairn_api::remote_command`]). The command starts before the upgrade, so a pod,
//! container or command that cannot run is answered as an ordinary API error; after
//! it, stdin (and terminal resizes) flow in, stdout and stderr (or the terminal) flow
//! out, and the exit code closes the stream as a `metav1.Status`. A client that goes
//! away ends the command.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use cairn_api::remote_command::{self, ExecRequest};
use cairn_runtime::exec::{ExecOptions, ExecSession, Terminal};
use cairn_runtime::process::{async_reader, async_writer, kill, terminate};
use cairn_runtime::runtime::RuntimeError;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info_span, warn};

use crate::api_runtime::{find_pod, no_pod, unavailable};
use crate::api_server::{NodeContext, error_response};

/// How long output may still arrive after the command exited (from processes it left
/// behind holding its stdout).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// How long a command told to end (its client gone) may take to do so.
const END_GRACE: Duration = Duration::from_secs(10);

/// One message for the client: a channel and its bytes.
type Frame = (u8, Bytes);

/// `GET …/containers/{container}/exec`.
pub async fn exec(
    State(ctx): State<Arc<NodeContext>>,
    UrlPath((namespace, name, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(runtime) = ctx.runtime.get() else {
        return unavailable();
    };
    let Some(pod) = find_pod(&runtime, &namespace, &name) else {
        return no_pod(&namespace, &name);
    };
    let request = match ExecRequest::from_query(query.as_deref().unwrap_or_default()) {
        Ok(request) => request,
        Err(err) => return error_response(StatusCode::BAD_REQUEST, err.to_string(), Vec::new()),
    };
    let upgrade = upgrade.protocols([remote_command::PROTOCOL_V5, remote_command::PROTOCOL_V4]);
    let Some(protocol) = upgrade.selected_protocol().cloned() else {
        return error_response(
            StatusCode::BAD_REQUEST,
            format!(
                "the WebSocket must offer the subprotocol {} or {}",
                remote_command::PROTOCOL_V5,
                remote_command::PROTOCOL_V4
            ),
            Vec::new(),
        );
    };
    let options = ExecOptions {
        command: request.command.clone(),
        tty: request.tty,
    };
    let session = match runtime.exec(&pod.uid, &container, &options).await {
        Ok(session) => session,
        Err(err) => {
            let status = match &err {
                RuntimeError::NoSuchPod(_) => StatusCode::NOT_FOUND,
                // No such container, or not running.
                RuntimeError::Container { .. } => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return error_response(status, err.to_string(), Vec::new());
        }
    };
    let pid = session.process.pid;
    let span = info_span!("exec", pod = %format!("{namespace}/{name}"), %container, pid);
    let closes_channels = protocol == remote_command::PROTOCOL_V5;
    upgrade
        .on_failed_upgrade(move |err| {
            warn!(error = %err, pid, "exec upgrade failed; ending the command");
            terminate(pid);
        })
        .on_upgrade(move |socket| relay(socket, session, request, closes_channels).instrument(span))
}

/// Where the client's input goes.
enum Input {
    /// Nowhere: the client sends none.
    None,
    /// The command's stdin pipe.
    Pipe(tokio::net::unix::pipe::Sender),
    /// The command's terminal.
    Terminal(Arc<Terminal>),
}

/// Relays one command's streams over `socket` until it has exited (or the client left).
async fn relay(
    socket: WebSocket,
    mut session: ExecSession,
    request: ExecRequest,
    closes_channels: bool,
) {
    let (mut sink, mut incoming) = socket.split();
    let (frames, mut outgoing) = mpsc::channel::<Frame>(16);
    let mut pumps = tokio::task::JoinSet::new();
    let process = &mut session.process;
    let stderr = process
        .stderr
        .take()
        .and_then(|pipe| readable(pipe, "stderr"));
    let mut input = Input::None;
    let mut resizable = None;
    match session.terminal.take() {
        Some(terminal) => {
            let terminal = Arc::new(terminal);
            resizable = Some(Arc::clone(&terminal));
            let output = Arc::clone(&terminal);
            let sender = frames.clone();
            pumps.spawn(async move { pump(&*output, remote_command::STDOUT, sender).await });
            // Only `cairn shim exec`'s own complaints arrive here.
            if let Some(stderr) = stderr {
                pumps.spawn(pump(stderr, remote_command::STDOUT, frames.clone()));
            }
            if request.stdin {
                input = Input::Terminal(terminal);
            }
        }
        None => {
            if let Some(stdout) = process.stdout.take().and_then(|p| readable(p, "stdout")) {
                let channel = request.stdout.then_some(remote_command::STDOUT);
                pumps.spawn(pump_or_drain(stdout, channel, frames.clone()));
            }
            if let Some(stderr) = stderr {
                let channel = request.stderr.then_some(remote_command::STDERR);
                pumps.spawn(pump_or_drain(stderr, channel, frames.clone()));
            }
            // Without stdin from the client, the command reads end-of-file at once.
            if let Some(stdin) = process.stdin.take()
                && request.stdin
            {
                match async_writer(stdin) {
                    Ok(stdin) => input = Input::Pipe(stdin),
                    Err(err) => warn!(error = %err, "the command's stdin is unusable"),
                }
            }
        }
    }
    let writer = tokio::spawn(async move {
        while let Some((channel, data)) = outgoing.recv().await {
            let mut message = Vec::with_capacity(data.len() + 1);
            message.push(channel);
            message.extend_from_slice(&data);
            if sink.send(Message::Binary(message.into())).await.is_err() {
                return;
            }
        }
        // A close without a code reads as an error to client-go ("close 1005 (no
        // status)"); the exit status went out on the error channel already.
        let close = axum::extract::ws::CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: axum::extract::ws::Utf8Bytes::from_static(""),
        };
        let _ = sink.send(Message::Close(Some(close))).await;
    });
    // Input is written by a task of its own: a command that does not read must not
    // stop the reader, which notices resizes and a client that leaves.
    let (input_tx, input_rx) = mpsc::unbounded_channel::<InputEvent>();
    let input_writer = tokio::spawn(write_input(input, input_rx));
    let (gone_tx, gone) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = incoming.next().await {
            match message {
                Message::Binary(data) => {
                    take_message(&data, &input_tx, resizable.as_deref(), closes_channels);
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = gone_tx.send(());
    });
    let exit = tokio::select! {
        exit = &mut process.exit => exit,
        _ = gone => {
            debug!("the client left; ending the command");
            terminate(process.pid);
            if tokio::time::timeout(END_GRACE, &mut process.exit).await.is_err() {
                warn!("the command did not end after its client left; killing it");
                kill(process.pid);
            }
            pumps.abort_all();
            writer.abort();
            input_writer.abort();
            return;
        }
    };
    if tokio::time::timeout(OUTPUT_DRAIN, async {
        while pumps.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        debug!("output still open after the command exited; not waiting for it");
        pumps.abort_all();
    }
    let status = match exit {
        Ok(code) => remote_command::exit_status(&request.command, code),
        Err(err) => remote_command::failure_status(format!("waiting for the command: {err}")),
    };
    match serde_json::to_vec(&status) {
        Ok(json) => {
            let _ = frames.send((remote_command::ERROR, json.into())).await;
        }
        Err(err) => warn!(error = %err, "encoding the exec status"),
    }
    drop(frames);
    let _ = writer.await;
    reader.abort();
    input_writer.abort();
}

/// What the client's messages ask of the command's input.
enum InputEvent {
    /// Bytes for its stdin.
    Data(Bytes),
    /// End of its stdin.
    Close,
}

/// Handles one client message: input for the input writer, a resize for the
/// terminal, a stdin close (v5).
fn take_message(
    data: &Bytes,
    input: &mpsc::UnboundedSender<InputEvent>,
    terminal: Option<&Terminal>,
    closes_channels: bool,
) {
    let Some(&channel) = data.first() else {
        return;
    };
    let payload = data.slice(1..);
    match channel {
        remote_command::STDIN => {
            let _ = input.send(InputEvent::Data(payload));
        }
        remote_command::RESIZE => {
            let Some(terminal) = terminal else { return };
            match serde_json::from_slice::<remote_command::TerminalSize>(&payload) {
                Ok(size) => {
                    if let Err(err) = terminal.resize(size.width, size.height) {
                        debug!(error = %err, "resizing the terminal");
                    }
                }
                Err(err) => debug!(error = %err, "an unreadable resize message"),
            }
        }
        remote_command::CLOSE
            if closes_channels && payload.first() == Some(&remote_command::STDIN) =>
        {
            let _ = input.send(InputEvent::Close);
        }
        _ => {}
    }
}

/// Writes the client's input into `input` until the client is done. Input that
/// cannot be written is dropped from then on (the command's input is gone, as at
/// end-of-file); that is no reason to end the command.
async fn write_input(mut input: Input, mut events: mpsc::UnboundedReceiver<InputEvent>) {
    while let Some(event) = events.recv().await {
        let written = match (event, &mut input) {
            (InputEvent::Data(data), Input::Pipe(stdin)) => stdin.write_all(&data).await.is_ok(),
            (InputEvent::Data(data), Input::Terminal(terminal)) => {
                terminal.write_all(&data).await.is_ok()
            }
            // A terminal has no end-of-file; a pipe closes.
            (InputEvent::Close, Input::Pipe(_)) => false,
            _ => true,
        };
        if !written {
            input = Input::None;
        }
    }
}

/// A child's pipe as an async reader; `None` (and a warning) when it cannot be one.
fn readable(
    pipe: impl Into<std::os::fd::OwnedFd>,
    name: &str,
) -> Option<tokio::net::unix::pipe::Receiver> {
    async_reader(pipe)
        .inspect_err(|err| warn!(error = %err, "the command's {name} is unusable"))
        .ok()
}

/// Sends what `reader` yields on `channel` until it ends or the client is gone.
async fn pump(mut reader: impl AsyncRead + Unpin, channel: u8, frames: mpsc::Sender<Frame>) {
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if frames
                    .send((channel, Bytes::copy_from_slice(&buffer[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// [`pump`] to `channel`, or reads and drops everything when the client did not ask
/// for it (so the command never blocks on a full pipe).
async fn pump_or_drain(
    mut reader: impl AsyncRead + Unpin,
    channel: Option<u8>,
    frames: mpsc::Sender<Frame>,
) {
    match channel {
        Some(channel) => pump(reader, channel, frames).await,
        None => {
            let _ = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await;
        }
    }
}
