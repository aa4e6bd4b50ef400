//! `cairnctl`, the client of Cairn's machine API.
//!
//! - [`cli`]: the command line;
//! - [`client`]: HTTPS with mutual TLS to one node, with errors that say what to do;
//! - [`commands`]: node commands, run against several nodes at once;
//! - [`exec`]: a command in a container, streamed over a WebSocket;
//! - [`generate`]: new cluster configs and offline validation;
//! - [`provision`]: local clusters of Cairn VMs under QEMU;
//! - [`settings`]: the client file and target selection; [`output`]: tables, JSON, YAML.
//!
//! It depends on the node's pure types (`cairn-api`) only: no container runtime, no store.

#![forbid(unsafe_code)]

pub mod cli;
/// The machine API client (its own crate, shared with the API server's node relay).
pub use cairn_machine_client as client;
pub mod commands;
pub mod exec;
pub mod generate;
pub mod output;
pub mod provision;
pub mod settings;

use std::process::ExitCode;

use cli::{Cli, ClusterCommand, Command, GenCommand};

/// The async runtime of the node commands.
fn async_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Runs one `cairnctl` invocation.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ok = match cli.command {
        Command::Gen(GenCommand::Config {
            cluster_name,
            endpoint,
            output_dir,
            force,
            install_disk,
        }) => generate::config(&cluster_name, &endpoint, &output_dir, force, install_disk)
            .map(|()| true)?,
        Command::Gen(GenCommand::Client {
            name,
            role,
            ca_from,
            output,
        }) => generate::client(
            &name,
            &role,
            &ca_from,
            &output,
            cli.global.endpoints.clone(),
        )
        .map(|()| true)?,
        Command::Validate { file } => generate::validate(&file)?,
        Command::Cluster(ClusterCommand::Create(options)) => {
            provision::create(&cli.global, &options).map(|()| true)?
        }
        Command::Cluster(ClusterCommand::Destroy { name, clusters_dir }) => {
            provision::destroy(&cli.global, &name, clusters_dir.as_deref()).map(|()| true)?
        }
        Command::Exec {
            pod,
            container,
            stdin,
            tty,
            command,
        } => {
            let request = cairn_api::remote_command::ExecRequest {
                command,
                stdin,
                stdout: true,
                stderr: !tty,
                tty,
            };
            let code = async_runtime()?.block_on(commands::exec(
                &cli.global,
                &pod,
                container,
                &request,
            ))?;
            // Exit codes are 0..=255 on Unix; anything else says "failed".
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        command => async_runtime()?.block_on(commands::run(&cli.global, command))?,
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
