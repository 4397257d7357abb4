//! `policyserve-agent run`: the agent in a cluster. It keeps its Node's capability labels
//! current, serves the OptimizationProfiles planned for its node over gRPC, and writes what it
//! measured into their status.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::cli::{HardwareArgs, RunArgs, ServingArgs};
use crate::engine::{GpuOptions, runtime};
use crate::fetch::{FetchOptions, Fetcher};
use crate::metrics::Metrics;
use crate::profiles::{ProfileServer, ProfileServerConfig};
use crate::registry::ModelRegistry;

/// `run` from the command line, on an async runtime of `--async-threads` threads.
///
/// # Errors
/// As [`run`], and when the runtime cannot start.
pub fn main(args: RunArgs) -> anyhow::Result<()> {
    let threads = args
        .serving
        .async_threads
        .unwrap_or_else(crate::async_runtime::threads_for_node);
    crate::async_runtime::build(threads)?.block_on(run(args))
}

/// Runs the agent until SIGTERM or Ctrl-C.
///
/// # Errors
/// When no Kubernetes client can be built (no in-cluster config and no kubeconfig), ONNX
/// Runtime does not load, or an address cannot be bound.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("failed to build a Kubernetes client")?;
    serve_node(client, args, policyserve_runtime::shutdown_signal()).await
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
        hardware: HardwareArgs { hardware_file },
        serving,
        model_root,
        max_model_bytes,
        advertise_address,
        model_cache,
        revalidate_seconds,
        served_window_seconds,
        served_write_seconds,
        drift_windows,
        drift_fraction,
        unload_grace_seconds,
        tuning_lock_file,
        namespace,
        watch_namespace,
        tensorrt_cache,
    } = args;
    // TLS files first: a bad one is reported before anything else starts.
    let transport = crate::serve::GrpcTransport::from_args(&serving).await?;
    runtime::environment(serving.ort.ort_lib.as_deref())?;
    let gpu = gpu_options(
        hardware_file.clone(),
        tensorrt_cache,
        serving.ort.ort_lib.clone(),
    )
    .await;
    let engine = serving.engine_options(gpu, crate::async_runtime::workers());
    let ServingArgs {
        grpc_addr,
        metrics_addr,
        max_message_bytes,
        ..
    } = serving;
    let fetch = FetchOptions {
        model_root,
        max_model_bytes,
        ..FetchOptions::default()
    };
    let address = advertise_address
        .or_else(|| (!grpc_addr.ip().is_unspecified()).then(|| grpc_addr.ip()))
        .context("set --advertise-address (POD_IP): the address clients reach this agent on")?;
    let listener = TcpListener::bind(grpc_addr)
        .await
        .with_context(|| format!("failed to bind {grpc_addr}"))?;
    let registry = Arc::new(ModelRegistry::new());
    let metrics = Arc::new(Metrics::default());
    let bound = listener.local_addr()?;
    // Sweeps load the server from the node itself: over loopback when it listens everywhere.
    let loopback = if bound.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], bound.port()))
    } else {
        bound
    };
    let profiles = Arc::new(ProfileServer::new(
        client.clone(),
        ProfileServerConfig {
            node: node_name.clone(),
            address,
            port: bound.port(),
            loopback,
            loopback_tls: transport.tls.clone(),
            revalidate: Duration::from_secs(revalidate_seconds.max(1)),
            served_window: Duration::from_secs(served_window_seconds.max(1)),
            served_write: Duration::from_secs(served_write_seconds.max(1)),
            drift_windows,
            drift_fraction: drift_fraction.clamp(0.0, 1.0),
            unload_grace: Duration::from_secs(unload_grace_seconds),
            tuning_lock_file,
            watch_namespace,
            engine,
        },
        Arc::clone(&registry),
        Fetcher::with_options(client.clone(), model_cache, fetch)?,
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
    let grpc_server = tokio::spawn(crate::serve::serve_grpc_on(
        listener,
        transport,
        Arc::clone(&registry),
        metrics,
        max_message_bytes,
        when_stopped(),
    ));
    let every = Duration::from_secs(redetect_seconds.max(1));
    tracing::info!(node = %node_name, %address, "agent running");
    tokio::select! {
        () = crate::node::keep_labelled(client.clone(), node_name.clone(), hardware_file, every) => {}
        () = crate::lease::keep_renewed(client, namespace, node_name) => {}
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

/// The node's GPU memory limit and TensorRT cache, from the hardware as detected at start. A
/// GPU appearing later is labelled by re-detection and served after a restart.
async fn gpu_options(
    hardware_file: Option<std::path::PathBuf>,
    tensorrt_base: std::path::PathBuf,
    ort_lib: Option<std::path::PathBuf>,
) -> GpuOptions {
    let detected =
        tokio::task::spawn_blocking(move || crate::hardware::load(hardware_file.as_deref())).await;
    match detected {
        Ok(Ok(hw)) => {
            let options = GpuOptions::for_node(&hw, &tensorrt_base, ort_lib.as_deref());
            if let Some(dir) = &options.tensorrt_cache_dir {
                tracing::info!(
                    gpu_memory_limit_bytes = options.memory_limit_bytes,
                    tensorrt_cache = %dir.display(),
                    "GPU settings"
                );
            }
            options
        }
        Ok(Err(e)) => {
            tracing::warn!("hardware not detected, no GPU settings: {e}");
            GpuOptions::default()
        }
        Err(e) => {
            tracing::warn!("hardware detection failed, no GPU settings: {e}");
            GpuOptions::default()
        }
    }
}
