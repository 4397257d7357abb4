//! `policyserve-agent serve`: serve models standalone over gRPC, without Kubernetes, and the
//! gRPC server that in-cluster mode shares.

use std::sync::Arc;

use anyhow::Context;
use policyserve_crds::EngineConfig;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::async_runtime;
use crate::cli::{ServeArgs, ServingArgs};
use crate::engine::{self, Engine, ModelFiles, runtime};
use crate::grpc::{GrpcInferenceServiceServer, InferenceService};
use crate::metrics::Metrics;
use crate::registry::{ModelRegistry, Models, ServedModel};
use crate::tls::ServerTls;

/// The configuration `serve` uses without `--profile`.
pub fn default_config() -> EngineConfig {
    EngineConfig {
        max_batch_size: 32,
        ..EngineConfig::default()
    }
}

/// `serve` from the command line: reads the profile, sizes the async runtime beside the
/// inference threads it asks for, and runs [`run`] on it.
///
/// # Errors
/// As [`run`], and when the profile does not load or the runtime cannot start.
pub fn main(args: ServeArgs) -> anyhow::Result<()> {
    let config = match &args.profile {
        Some(path) => read_profile(path)?,
        None => default_config(),
    };
    let threads = args.serving.async_threads.unwrap_or_else(|| {
        async_runtime::threads_beside(args.models.len() * engine::inference_threads(&config))
    });
    async_runtime::build(threads)?.block_on(run(args, config))
}

/// Runs `serve` with `config` for every model until SIGTERM, then drains: accepted requests
/// are answered before exit.
///
/// # Errors
/// When ONNX Runtime or a model does not load, or an address cannot be bound.
pub async fn run(args: ServeArgs, config: EngineConfig) -> anyhow::Result<()> {
    let ServeArgs {
        models, serving, ..
    } = args;
    // TLS files first: a bad one is reported before any model loads.
    let transport = GrpcTransport::from_args(&serving).await?;
    runtime::environment(serving.ort.ort_lib.as_deref())?;
    let options = serving.engine_options(Default::default(), async_runtime::workers());
    let ServingArgs {
        grpc_addr,
        metrics_addr,
        max_message_bytes,
        ..
    } = serving;
    let registry = Arc::new(ModelRegistry::new());
    for (name, path) in models {
        let (config, options) = (config.clone(), options.clone());
        let model = tokio::task::spawn_blocking(move || -> anyhow::Result<ServedModel> {
            let files = ModelFiles::read(&name, &path, &[])?;
            let engine = Engine::load(&files, &config, &options)?;
            engine.warm_up()?;
            Ok(ServedModel::new(
                name,
                engine,
                crate::traffic::DEFAULT_WINDOW_SECONDS,
            ))
        })
        .await??;
        tracing::info!(model = model.name, config = ?model.engine.config(), "model loaded");
        registry.insert(model);
    }
    let metrics = Arc::new(Metrics::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let metrics_server = tokio::spawn(crate::metrics::serve(metrics_addr, Arc::clone(&metrics), {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    }));
    let listener = TcpListener::bind(grpc_addr)
        .await
        .with_context(|| format!("failed to bind {grpc_addr}"))?;
    serve_grpc_on(
        listener,
        transport,
        Arc::clone(&registry),
        metrics,
        max_message_bytes,
        policyserve_runtime::shutdown_signal(),
    )
    .await?;
    let _ = stop.send(true);
    metrics_server.await??;
    // Dropping the engines joins their workers after the last accepted batch.
    tokio::task::spawn_blocking(move || drop(registry.clear())).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Reads an engine configuration from YAML or JSON.
///
/// # Errors
/// When the file cannot be read or is not an engine configuration.
pub fn read_profile(path: &std::path::Path) -> anyhow::Result<EngineConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not an engine configuration", path.display()))
}

/// How the gRPC server is reached, besides its listener.
#[derive(Debug, Default)]
pub struct GrpcTransport {
    /// TLS (mTLS with a client CA) on every connection; plaintext without.
    pub tls: Option<Arc<ServerTls>>,
    /// A plaintext listener for `grpc.health.v1` alone: kubelet's gRPC probes speak no TLS.
    pub health: Option<TcpListener>,
}

impl GrpcTransport {
    /// The transport `--tls-*` and `--health-addr` ask for: the TLS files loaded and checked,
    /// the health address bound.
    ///
    /// # Errors
    /// When a TLS file does not load, or the health address cannot be bound.
    pub async fn from_args(serving: &ServingArgs) -> anyhow::Result<Self> {
        let tls = serving.tls()?;
        let health = match serving.health_addr {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("failed to bind {address}"))?,
            ),
            None => None,
        };
        Ok(Self { tls, health })
    }
}

/// Serves the V2 protocol and `grpc.health.v1` on `listener`, in plaintext, until `shutdown`
/// resolves, then stops accepting connections and waits for in-flight requests.
///
/// # Errors
/// When the server fails.
pub async fn serve_grpc<M: Models>(
    listener: TcpListener,
    models: Arc<M>,
    metrics: Arc<Metrics>,
    max_message_bytes: usize,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    serve_grpc_on(
        listener,
        GrpcTransport::default(),
        models,
        metrics,
        max_message_bytes,
        shutdown,
    )
    .await
}

/// As [`serve_grpc`], over `transport`: TLS when it has it, and health also on its health
/// listener, which reports NOT_SERVING from `shutdown` on and closes once the server has
/// drained.
///
/// # Errors
/// When a server fails.
pub async fn serve_grpc_on<M: Models>(
    listener: TcpListener,
    transport: GrpcTransport,
    models: Arc<M>,
    metrics: Arc<Metrics>,
    max_message_bytes: usize,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let GrpcTransport { tls, health } = transport;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<GrpcInferenceServiceServer<InferenceService<M>>>()
        .await;
    let address = listener.local_addr()?;
    let mode = match &tls {
        None => "plaintext",
        Some(tls) if tls.client_auth() => "mTLS",
        Some(_) => "TLS",
    };
    tracing::info!(%address, mode, "gRPC listening");

    let (drained, health_stop) = tokio::sync::oneshot::channel::<()>();
    let health_server = match health {
        Some(listener) => {
            tracing::info!(address = %listener.local_addr()?, "gRPC health listening, plaintext");
            let server = tonic::transport::Server::builder()
                .add_service(health_service.clone())
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = health_stop.await;
                });
            Some(tokio::spawn(server))
        }
        None => None,
    };
    let reloading = tls
        .as_ref()
        .map(|tls| tokio::spawn(Arc::clone(tls).keep_reloaded()));

    let service = InferenceService::new(models, metrics);
    let tally = service.tally();
    let service = service.into_server(max_message_bytes);
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(service);
    let shutdown = async {
        shutdown.await;
        reporter
            .set_not_serving::<GrpcInferenceServiceServer<InferenceService<M>>>()
            .await;
    };
    let served = match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(tls.incoming(listener), shutdown)
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(
                    // Small requests and answers: without TCP_NODELAY, Nagle's algorithm and
                    // delayed ACKs add ~40 ms to some of them.
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown,
                )
                .await
        }
    };
    if let Some(reloading) = reloading {
        reloading.abort();
    }
    // The account a drain is judged by: every request taken into a handler was answered.
    tracing::info!(
        accepted = tally.accepted(),
        answered = tally.answered(),
        "gRPC drained"
    );
    let _ = drained.send(());
    if let Some(health_server) = health_server {
        health_server.await??;
    }
    Ok(served?)
}

/// Runs `work` on a thread of its own beside a gRPC server on 127.0.0.1 (the agent's serving
/// stack on its own runtime), which capacity sweeps load as clients would: `tune` and the
/// tests measure capacity this way without a cluster.
///
/// # Errors
/// When the server cannot start, or `work` fails or panics.
pub fn with_loopback_server<T: Send>(
    work: impl FnOnce(crate::tuner::Loopback<'_>) -> crate::Result<T> + Send,
) -> anyhow::Result<T> {
    let runtime = crate::async_runtime::build(crate::async_runtime::threads_for_node())?;
    let registry = Arc::new(ModelRegistry::new());
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let address = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(crate::serve::serve_grpc(
        listener,
        Arc::clone(&registry),
        Arc::new(Metrics::default()),
        64 * 1024 * 1024,
        async {
            let _ = stopped.await;
        },
    ));
    let result = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                work(crate::tuner::Loopback {
                    registry: &registry,
                    address,
                    tls: None,
                })
            })
            .join()
    });
    let _ = stop.send(());
    runtime.block_on(server)??;
    drop(registry.clear());
    match result {
        Ok(result) => Ok(result?),
        Err(_) => anyhow::bail!("the tuner panicked"),
    }
}
