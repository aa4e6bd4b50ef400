//! Local clusters of Cairn VMs under QEMU (`cairnctl cluster create|destroy`).

use crate::cli::Global;

/// Options of `cairnctl cluster create`.
#[derive(clap::Args, Debug)]
pub struct CreateOptions {
    /// The cluster's name (several can exist side by side).
    #[arg(long, default_value = "cairn")]
    pub name: String,
}

/// Creates a cluster.
pub fn create(_global: &Global, _options: &CreateOptions) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}

/// Destroys a cluster.
pub fn destroy(_global: &Global, _name: &str) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
