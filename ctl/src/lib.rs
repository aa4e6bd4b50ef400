//! `cairnctl`, the client of Cairn's machine API.
//!
//! - [`cli`]: the command line;
//! - [`client`]: HTTPS with mutual TLS to one node, with errors that say what to do;
//! - [`commands`]: node commands, run against several nodes at once;
//! - [`generate`]: new cluster configs and offline validation;
//! - [`provision`]: local clusters of Cairn VMs under QEMU;
//! - [`settings`]: the client file and target selection; [`output`]: tables, JSON, YAML.
//!
//! It depends on the node's pure types (`cairn-api`) only: no container runtime, no store.

#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod commands;
pub mod generate;
pub mod output;
pub mod provision;
pub mod settings;

use std::process::ExitCode;

use cli::{Cli, ClusterCommand, Command, GenCommand};

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
        command => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(commands::run(&cli.global, command))?
        }
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
