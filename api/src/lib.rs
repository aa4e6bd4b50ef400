//! Types shared by a Cairn node and the tools that talk to it.
//!
//! This crate does no I/O (like `kube-core`): it parses, validates and describes
//! documents, and leaves reading files, kernel parameters or sockets to its callers.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod client_config;
pub mod kubeconfig;
pub mod machine_api;
pub mod machine_config;
pub mod pki;
pub mod remote_command;
pub mod service_account;
pub mod tls;

pub use machine_config::{ConfigError, FieldError, MachineConfig};

/// An error and its sources on one line (`outer: inner: innermost`), for messages
/// and logs that must say the whole reason.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
