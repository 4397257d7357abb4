//! `policyserve-agent tune` (placeholder).

/// Arguments of `tune`.
#[derive(Debug, clap::Args)]
pub struct TuneArgs {}

/// Runs `tune`.
///
/// # Errors
/// Always, for now.
pub fn run(_args: &TuneArgs) -> anyhow::Result<()> {
    anyhow::bail!("tune is not built yet")
}
