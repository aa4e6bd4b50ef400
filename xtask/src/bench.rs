#[derive(clap::Subcommand)]
pub enum Which {
    Boot,
}
pub fn run(_w: Which) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
