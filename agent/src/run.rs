//! `policyserve-agent run`: the agent in a cluster. For now it keeps its Node's capability
//! labels current; serving the node's OptimizationProfiles joins the `select!` below.

use std::time::Duration;

use anyhow::Context as _;

use crate::args::RunArgs;

/// Runs the agent until SIGTERM or Ctrl-C.
///
/// # Errors
/// When no Kubernetes client can be built (no in-cluster config and no kubeconfig), or the
/// signal handlers cannot be installed.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        node_name,
        redetect_seconds,
        hardware,
    } = args;
    let client = kube::Client::try_default()
        .await
        .context("failed to build a Kubernetes client")?;
    let every = Duration::from_secs(redetect_seconds.max(1));
    tracing::info!(node = %node_name, ?every, "labelling node");
    tokio::select! {
        () = crate::node::keep_labelled(client, node_name, hardware, every) => {}
        signal = shutdown_signal() => {
            let signal = signal?;
            tracing::info!(signal, "shutting down");
        }
    }
    Ok(())
}

/// Resolves with the name of the first termination signal: SIGTERM (the kubelet stopping the
/// pod) or SIGINT (Ctrl-C).
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("failed to watch SIGTERM")?;
        tokio::select! {
            _ = term.recv() => Ok("SIGTERM"),
            ctrl_c = tokio::signal::ctrl_c() => ctrl_c.map(|()| "SIGINT").context("failed to watch Ctrl-C"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("failed to watch Ctrl-C")?;
        Ok("Ctrl-C")
    }
}
