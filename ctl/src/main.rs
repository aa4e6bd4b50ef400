//! `cairnctl`: talk to Cairn nodes (see `cairnctl --help`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cairnctl::cli::Cli::parse();
    match cairnctl::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
