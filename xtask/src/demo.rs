pub fn run(_memory: u32) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
