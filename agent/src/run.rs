//! `policyserve-agent run`: the agent in a cluster. It keeps its Node's capability labels
//! current, serves the OptimizationProfiles planned for its node over gRPC, and writes what it
//! measured into their status.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::args::RunArgs;
use crate::engine::{EngineOptions, runtime};
use crate::fetch::Fetcher;
use crate::metrics::Metrics;
use crate::profiles::{ProfileServer, ProfileServerConfig};
use crate::registry::ModelRegistry;

/// Runs the agent until SIGTERM or Ctrl-C.
///
/// # Errors
/// When no Kubernetes client can be built (no in-cluster config and no kubeconfig), ONNX
/// Runtime does not load, or an address cannot be bound.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("failed to build a Kubernetes client")?;
    serve_node(client, args, crate::shutdown::signal()).await
}

/// The agent's work for one node, until `shutdown` resolves; then it stops accepting gRPC
/// requests, answers those accepted, and unloads every model.
///
/// # Errors
/// As [`run`].
pub async fn serve_node(
    client: kube::Client,
    args: RunArgs,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let RunArgs {
        node_name,
        redetect_seconds,
        hardware,
        grpc_addr,
        metrics_addr,
        advertise_address,
        model_cache,
        revalidate_seconds,
        queue_capacity,
        max_message_bytes,
        ort,
    } = args;
    runtime::environment(ort.ort_lib.as_deref())?;
    let address = advertise_address
        .or_else(|| (!grpc_addr.ip().is_unspecified()).then(|| grpc_addr.ip()))
        .context("set --advertise-address (POD_IP): the address clients reach this agent on")?;
    let listener = TcpListener::bind(grpc_addr)
        .await
        .with_context(|| format!("failed to bind {grpc_addr}"))?;
    let registry = Arc::new(ModelRegistry::new());
    let metrics = Arc::new(Metrics::default());
    let profiles = Arc::new(ProfileServer::new(
        client.clone(),
        ProfileServerConfig {
            node: node_name.clone(),
            address,
            port: listener.local_addr()?.port(),
            revalidate: Duration::from_secs(revalidate_seconds.max(1)),
            engine: EngineOptions {
                queue_capacity,
                ..EngineOptions::default()
            },
        },
        Arc::clone(&registry),
        Fetcher::new(client.clone(), model_cache),
    ));

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let when_stopped = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let metrics_server = tokio::spawn(crate::metrics::serve(
        metrics_addr,
        Arc::clone(&metrics),
        when_stopped(),
    ));
    let grpc_server = tokio::spawn(crate::serve::serve_grpc(
        listener,
        Arc::clone(&registry),
        metrics,
        max_message_bytes,
        when_stopped(),
    ));
    let every = Duration::from_secs(redetect_seconds.max(1));
    tracing::info!(node = %node_name, %address, "agent running");
    tokio::select! {
        () = crate::node::keep_labelled(client, node_name, hardware, every) => {}
        () = profiles.run() => {}
        () = shutdown => {}
    }
    let _ = stop.send(true);
    grpc_server.await??;
    metrics_server.await??;
    tokio::task::spawn_blocking(move || drop(registry.clear())).await?;
    tracing::info!("stopped");
    Ok(())
}
