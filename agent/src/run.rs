//! `policyserve-agent run`. PLACEHOLDER: replaced by the detection issue's implementation.

use crate::args::RunArgs;

/// Runs the agent in a cluster.
///
/// # Errors
/// Always, for now.
pub async fn run(_args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("in-cluster mode is not built yet")
}
