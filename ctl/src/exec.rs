//! `cairnctl exec`: runs a command in a container over the machine API's WebSocket
//! (Kubernetes' remote command protocol, [`cairn_api::remote_command`]), relaying this
//! terminal's stdin, stdout and stderr, with the local terminal in raw mode and its
//! size followed when the command has a terminal. The command's exit code becomes
//! `cairnctl`'s.

use std::io::{IsTerminal, Read, Write};

use anyhow::{Context as _, bail};
use cairn_api::machine_api::paths;
use cairn_api::remote_command::{self, ExecRequest, TerminalSize};
use futures::{SinkExt, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use nix::sys::termios::{self, SetArg, Termios};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::client::NodeClient;

/// Where a command's streams come from and go to on this side.
pub struct LocalStreams {
    /// Read for the command's stdin (when the request has stdin).
    pub stdin: Box<dyn Read + Send>,
    /// The command's stdout (and terminal) output.
    pub stdout: Box<dyn Write + Send>,
    /// The command's stderr output.
    pub stderr: Box<dyn Write + Send>,
    /// Whether to send this process's terminal size, and its changes.
    pub terminal_size: bool,
}

impl LocalStreams {
    /// This process's stdin, stdout and stderr.
    pub fn standard() -> Self {
        Self {
            stdin: Box::new(std::io::stdin()),
            stdout: Box::new(std::io::stdout()),
            stderr: Box::new(std::io::stderr()),
            terminal_size: std::io::stdout().is_terminal(),
        }
    }
}

/// Runs `request` in `container` of pod `namespace/name` from this terminal: in raw
/// mode when the command has a terminal and stdin is one. Returns the exit code.
pub async fn exec_here(
    client: &NodeClient,
    namespace: &str,
    name: &str,
    container: &str,
    request: &ExecRequest,
) -> anyhow::Result<i32> {
    let _raw = if request.tty && request.stdin && std::io::stdin().is_terminal() {
        Some(RawMode::enable().context("putting the terminal into raw mode")?)
    } else {
        None
    };
    let mut streams = LocalStreams::standard();
    streams.terminal_size &= request.tty;
    exec(client, namespace, name, container, request, streams).await
}

/// Runs `request` in `container` of pod `namespace/name` on the node of `client`,
/// relaying `streams`; returns the command's exit code.
pub async fn exec(
    client: &NodeClient,
    namespace: &str,
    name: &str,
    container: &str,
    request: &ExecRequest,
    mut streams: LocalStreams,
) -> anyhow::Result<i32> {
    let path = format!(
        "{}/{namespace}/{name}/containers/{container}/exec?{}",
        paths::PODS,
        request.to_query()
    );
    let (socket, protocol) = client
        .websocket(
            &path,
            &[remote_command::PROTOCOL_V5, remote_command::PROTOCOL_V4],
        )
        .await?;
    let closes_channels = protocol == remote_command::PROTOCOL_V5;
    let (mut sink, mut incoming) = socket.split();
    let (to_node, mut outgoing) = mpsc::channel::<Vec<u8>>(16);
    let writer = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            if sink.send(Message::Binary(message.into())).await.is_err() {
                return;
            }
        }
    });
    if streams.terminal_size {
        follow_terminal_size(to_node.clone()).await;
    }
    if request.stdin {
        send_stdin(streams.stdin, to_node.clone(), closes_channels);
    }
    drop(to_node);
    let mut status: Option<Status> = None;
    let (stdout, stderr) = (&mut streams.stdout, &mut streams.stderr);
    while let Some(message) = incoming.next().await {
        let message = message.context("reading from the node")?;
        let data = match message {
            Message::Binary(data) => data,
            Message::Close(_) => break,
            _ => continue,
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue;
        };
        match channel {
            remote_command::STDOUT => {
                stdout.write_all(payload)?;
                stdout.flush()?;
            }
            remote_command::STDERR => {
                stderr.write_all(payload)?;
                stderr.flush()?;
            }
            remote_command::ERROR => {
                status = Some(
                    serde_json::from_slice(payload)
                        .with_context(|| "the node's final status is not a metav1.Status")?,
                );
            }
            _ => {}
        }
    }
    writer.abort();
    match status {
        Some(status) => remote_command::exit_code(&status).map_err(anyhow::Error::msg),
        None => bail!("the connection ended before the command's exit status arrived"),
    }
}

/// Sends `stdin` to the node from a thread of its own (a blocking read of a terminal
/// must not hold the async runtime), and at its end closes the command's stdin when
/// the protocol can say so.
fn send_stdin(
    mut stdin: Box<dyn Read + Send>,
    to_node: mpsc::Sender<Vec<u8>>,
    closes_channels: bool,
) {
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut message = Vec::with_capacity(n + 1);
                    message.push(remote_command::STDIN);
                    message.extend_from_slice(&buffer[..n]);
                    if to_node.blocking_send(message).is_err() {
                        return;
                    }
                }
            }
        }
        if closes_channels {
            let _ = to_node.blocking_send(vec![remote_command::CLOSE, remote_command::STDIN]);
        }
    });
}

/// Sends this terminal's size now and whenever it changes (SIGWINCH); nothing when
/// stdout is not a terminal.
async fn follow_terminal_size(to_node: mpsc::Sender<Vec<u8>>) {
    let size = || {
        let (terminal_size::Width(width), terminal_size::Height(height)) =
            terminal_size::terminal_size()?;
        let mut message = vec![remote_command::RESIZE];
        serde_json::to_writer(&mut message, &TerminalSize { width, height }).ok()?;
        Some(message)
    };
    let Some(first) = size() else {
        return;
    };
    let _ = to_node.send(first).await;
    let Ok(mut changes) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
    else {
        return;
    };
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            if let Some(message) = size()
                && to_node.send(message).await.is_err()
            {
                return;
            }
        }
    });
}

/// The local terminal in raw mode (keys go to the remote terminal as typed, Ctrl-C
/// included), restored when dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enable() -> nix::Result<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw)?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}
