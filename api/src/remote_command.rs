//! Kubernetes' remote command protocol (`kubectl exec`) as Cairn speaks it on the
//! machine API, so that one relay serves `cairnctl exec` and, later, the API server:
//! a WebSocket with the `v5.channel.k8s.io` or `v4.channel.k8s.io` subprotocol whose
//! binary messages start with a channel number (stdin 0, stdout 1, stderr 2, the
//! final status 3 as a `metav1.Status`, terminal resizes 4; in v5, 255 closes a
//! channel). The request says what to run as query parameters, as Kubernetes does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusCause, StatusDetails};
use serde::{Deserialize, Serialize};

/// The WebSocket subprotocol with channel closing (Kubernetes 1.30+).
pub const PROTOCOL_V5: &str = "v5.channel.k8s.io";
/// The WebSocket subprotocol with a `metav1.Status` on the error channel.
pub const PROTOCOL_V4: &str = "v4.channel.k8s.io";

/// The channel of the command's standard input (client to server).
pub const STDIN: u8 = 0;
/// The channel of the command's standard output (and of its terminal).
pub const STDOUT: u8 = 1;
/// The channel of the command's standard error.
pub const STDERR: u8 = 2;
/// The channel of the final status (server to client, once).
pub const ERROR: u8 = 3;
/// The channel of terminal size changes (client to server, JSON [`TerminalSize`]).
pub const RESIZE: u8 = 4;
/// In v5, a message `[CLOSE, channel]` closes `channel` (the client's stdin at EOF).
pub const CLOSE: u8 = 255;

/// A terminal's size, as `kubectl` sends it on the resize channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// What to run, from the request's query (`command` repeated once per argument).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Whether the client sends standard input.
    pub stdin: bool,
    /// Whether the client wants standard output.
    pub stdout: bool,
    /// Whether the client wants standard error (never with a terminal).
    pub stderr: bool,
    /// Whether the command gets a terminal.
    pub tty: bool,
}

/// Why a query does not describe a command to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecRequestError {
    /// No `command` parameter.
    #[error("no command: give it as `command` query parameters, one per argument")]
    NoCommand,
    /// A flag that is not `true`, `false`, `1` or `0`.
    #[error("query parameter {name}: {value:?} is not true or false")]
    Flag {
        /// The parameter.
        name: String,
        /// Its value.
        value: String,
    },
    /// Nothing to relay.
    #[error("at least one of stdin, stdout and stderr must be true")]
    NoStreams,
}

impl ExecRequest {
    /// Reads the request from a URL query string (without the `?`).
    pub fn from_query(query: &str) -> Result<Self, ExecRequestError> {
        let mut request = Self::default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let flag = || match value.as_ref() {
                "true" | "1" => Ok(true),
                "false" | "0" | "" => Ok(false),
                other => Err(ExecRequestError::Flag {
                    name: name.to_string(),
                    value: other.to_owned(),
                }),
            };
            match name.as_ref() {
                "command" => request.command.push(value.to_string()),
                "stdin" => request.stdin = flag()?,
                "stdout" => request.stdout = flag()?,
                "stderr" => request.stderr = flag()?,
                "tty" => request.tty = flag()?,
                // `container` and others belong to the caller's route.
                _ => {}
            }
        }
        if request.command.is_empty() {
            return Err(ExecRequestError::NoCommand);
        }
        if request.tty {
            // A terminal has one output: stderr goes where stdout goes.
            request.stderr = false;
        }
        if !(request.stdin || request.stdout || request.stderr) {
            return Err(ExecRequestError::NoStreams);
        }
        Ok(request)
    }

    /// The request as a URL query string (without the `?`).
    pub fn to_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for argument in &self.command {
            query.append_pair("command", argument);
        }
        for (name, value) in [
            ("stdin", self.stdin),
            ("stdout", self.stdout),
            ("stderr", self.stderr),
            ("tty", self.tty),
        ] {
            query.append_pair(name, if value { "true" } else { "false" });
        }
        query.finish()
    }
}

/// The final status of a command that ran and exited with `exit_code`, as the kubelet
/// reports it.
pub fn exit_status(command: &[String], exit_code: i32) -> Status {
    if exit_code == 0 {
        return Status {
            status: Some("Success".into()),
            ..Status::default()
        };
    }
    Status {
        status: Some("Failure".into()),
        reason: Some("NonZeroExitCode".into()),
        message: Some(format!(
            "command terminated with non-zero exit code: error executing command {command:?}, exit code {exit_code}"
        )),
        details: Some(StatusDetails {
            causes: Some(vec![StatusCause {
                reason: Some("ExitCode".into()),
                message: Some(exit_code.to_string()),
                ..StatusCause::default()
            }]),
            ..StatusDetails::default()
        }),
        ..Status::default()
    }
}

/// The final status of a command that could not run.
pub fn failure_status(message: impl Into<String>) -> Status {
    Status {
        status: Some("Failure".into()),
        reason: Some("InternalError".into()),
        message: Some(message.into()),
        ..Status::default()
    }
}

/// The exit code a final status reports: 0 for success, the code of a
/// `NonZeroExitCode` failure; other failures are errors with their message.
pub fn exit_code(status: &Status) -> Result<i32, String> {
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    if status.reason.as_deref() == Some("NonZeroExitCode") {
        let code = status
            .details
            .as_ref()
            .and_then(|d| d.causes.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.reason.as_deref() == Some("ExitCode"))
            .and_then(|c| c.message.as_deref()?.parse().ok());
        if let Some(code) = code {
            return Ok(code);
        }
    }
    Err(status
        .message
        .clone()
        .unwrap_or_else(|| "the command failed without saying why".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_survives_its_query() {
        let request = ExecRequest {
            command: vec!["sh".into(), "-c".into(), "echo a&b=c; exit 3".into()],
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        assert_eq!(ExecRequest::from_query(&request.to_query()), Ok(request));
    }

    #[test]
    fn kubectl_queries_are_understood_and_bad_ones_named() {
        let request = ExecRequest::from_query(
            "command=ls&command=-l&container=web&stdout=1&tty=true&stderr=1",
        )
        .unwrap();
        assert_eq!(request.command, ["ls", "-l"]);
        assert!(request.stdout && request.tty && !request.stderr && !request.stdin);
        assert_eq!(
            ExecRequest::from_query("stdout=true"),
            Err(ExecRequestError::NoCommand)
        );
        assert_eq!(
            ExecRequest::from_query("command=ls&stdin=yes"),
            Err(ExecRequestError::Flag {
                name: "stdin".into(),
                value: "yes".into()
            })
        );
        assert_eq!(
            ExecRequest::from_query("command=ls"),
            Err(ExecRequestError::NoStreams)
        );
    }

    #[test]
    fn exit_codes_travel_in_statuses() {
        let command = vec!["false".to_owned()];
        assert_eq!(exit_code(&exit_status(&command, 0)), Ok(0));
        assert_eq!(exit_code(&exit_status(&command, 137)), Ok(137));
        assert_eq!(
            exit_code(&failure_status("container \"x\" is not running")),
            Err("container \"x\" is not running".into())
        );
        let json = serde_json::to_string(&exit_status(&command, 2)).unwrap();
        assert!(json.contains(r#""reason":"NonZeroExitCode""#), "{json}");
        assert!(
            json.contains(r#""causes":[{"message":"2","reason":"ExitCode"}]"#),
            "{json}"
        );
    }
}
