//! `cairn-shim run <dir>` / `cairn-shim exec <dir> -- cmd…`: the per-container shim
//! outside the `cairn` binary, for the runtime's own tests and benchmarks.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = cairn_runtime::shim::cli(&args);
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
}
