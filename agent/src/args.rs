//! Command-line interface: one clap struct per subcommand, with environment fallbacks.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The policyserve agent: detects its node's hardware, tunes ONNX Runtime for it and serves
/// policy models over gRPC (KServe V2).
#[derive(Debug, Parser)]
#[command(name = "policyserve-agent", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log filter, as RUST_LOG (for example `info,policyserve_agent=debug`).
    #[arg(
        long,
        global = true,
        env = "POLICYSERVE_LOG",
        default_value = "info,ort=warn"
    )]
    pub log: String,
    /// Log line format: text for people, json for log collectors.
    #[arg(
        long,
        global = true,
        env = "POLICYSERVE_LOG_FORMAT",
        value_enum,
        default_value_t = policyserve_runtime::LogFormat::Text
    )]
    pub log_format: policyserve_runtime::LogFormat,
}

/// The agent's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Detect this machine's hardware and print its class and capability labels.
    Detect(DetectArgs),
    /// Measure a model under candidate engine configurations and choose the best for targets.
    Tune(crate::tune::TuneArgs),
    /// Serve models over gRPC (KServe V2) without Kubernetes.
    Serve(crate::serve::ServeArgs),
    /// In a cluster: label this node, then serve the OptimizationProfiles planned for it.
    Run(RunArgs),
}

/// How results are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    #[default]
    Table,
    /// One JSON object for programs.
    Json,
}

/// Where hardware facts come from.
#[derive(Clone, Debug, Default, Args)]
pub struct HardwareArgs {
    /// Describe the machine with this JSON file (the schema `detect --output json` prints)
    /// instead of detecting it; labels then carry `hw.policyserve.io/source=simulated`.
    #[arg(long, env = "POLICYSERVE_HARDWARE_FILE")]
    pub hardware_file: Option<PathBuf>,
}

/// `policyserve-agent detect`.
#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Hardware source.
    #[command(flatten)]
    pub hardware: HardwareArgs,
}

/// `policyserve-agent run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Name of the Node this agent runs on (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Seconds between hardware re-detections (a hot-plugged GPU, a changed cgroup quota).
    #[arg(long, env = "POLICYSERVE_REDETECT_SECONDS", default_value_t = 300)]
    pub redetect_seconds: u64,
    /// Hardware source.
    #[command(flatten)]
    pub hardware: HardwareArgs,
    /// The address clients reach this agent on, written into each profile's endpoint (the
    /// pod IP); defaults to the gRPC address when that is not 0.0.0.0.
    #[arg(long, env = "POD_IP")]
    pub advertise_address: Option<std::net::IpAddr>,
    /// Serving: addresses, limits, ONNX Runtime.
    #[command(flatten)]
    pub serving: ServingArgs,
    /// The folder `model.path` sources must lie in (symlinks resolved); the chart's optional
    /// hostPath mount puts the node's model folder here.
    #[arg(long, env = "POLICYSERVE_MODEL_ROOT", default_value = policyserve_crds::MODEL_ROOT)]
    pub model_root: PathBuf,
    /// Largest model file accepted from any source (ConfigMap, download, node path), bytes.
    #[arg(long, env = "POLICYSERVE_MAX_MODEL_BYTES", default_value_t = crate::fetch::DEFAULT_MAX_MODEL_BYTES)]
    pub max_model_bytes: u64,
    /// Folder where downloaded models are cached by digest.
    #[arg(
        long,
        env = "POLICYSERVE_MODEL_CACHE",
        default_value = "/var/cache/policyserve/models"
    )]
    pub model_cache: PathBuf,
    /// Seconds between capacity probes of a served model; a probe runs only when the last
    /// window had no real requests, and stops at the first one.
    #[arg(long, env = "POLICYSERVE_REVALIDATE_SECONDS", default_value_t = 600)]
    pub revalidate_seconds: u64,
    /// Length of the sliding window `status.served` describes, seconds.
    #[arg(long, env = "POLICYSERVE_SERVED_WINDOW_SECONDS", default_value_t = 60)]
    pub served_window_seconds: u64,
    /// Seconds between writes of `status.served` (each only when a figure moved by more than
    /// 10% or a condition changed).
    #[arg(long, env = "POLICYSERVE_SERVED_WRITE_SECONDS", default_value_t = 30)]
    pub served_write_seconds: u64,
    /// Re-tune a model whose served latency misses a target for this many windows in a row
    /// while demand stays below its capacity.
    #[arg(long, env = "POLICYSERVE_DRIFT_WINDOWS", default_value_t = 3)]
    pub drift_windows: u32,
    /// Re-tune a model when a capacity probe finds it lower than recorded by more than this
    /// fraction (0.25: a quarter).
    #[arg(long, env = "POLICYSERVE_DRIFT_FRACTION", default_value_t = 0.25)]
    pub drift_fraction: f64,
    /// Namespace of this agent's Lease (`policyserve-agent-<node>`), renewed every 10 s: the
    /// operator treats a node whose Lease is older than 40 s as not serving.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Serve only the OptimizationProfiles of this namespace (the operator's `--namespace`);
    /// by default every namespace's. The chart then grants the agent a Role in it instead of
    /// cluster-wide reads of profiles and ConfigMaps.
    #[arg(long, env = "POLICYSERVE_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Base folder of TensorRT engine caches; each GPU model, driver, ONNX Runtime and
    /// TensorRT version gets a folder of its own below it.
    #[arg(
        long = "tensorrt-cache",
        env = "POLICYSERVE_TENSORRT_CACHE",
        default_value = crate::engine::gpu::DEFAULT_TENSORRT_CACHE
    )]
    pub tensorrt_cache: PathBuf,
}

/// The serving flags `run` and `serve` share.
#[derive(Clone, Debug, Args)]
pub struct ServingArgs {
    /// gRPC listen address (KServe V2 protocol).
    #[arg(long, env = "POLICYSERVE_GRPC_ADDR", default_value = "0.0.0.0:8001")]
    pub grpc_addr: std::net::SocketAddr,
    /// Prometheus metrics listen address (plaintext HTTP, also with TLS on).
    #[arg(long, env = "POLICYSERVE_METRICS_ADDR", default_value = "0.0.0.0:8002")]
    pub metrics_addr: std::net::SocketAddr,
    /// PEM certificate chain (leaf first) the gRPC server presents; with `--tls-key`, gRPC is
    /// served over TLS only. Both files are re-read when they change (a renewed Secret); a
    /// renewal that does not load is refused with a warning and the old pair keeps serving.
    #[arg(long, env = "POLICYSERVE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "POLICYSERVE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates for mTLS: every gRPC client must present a certificate they signed.
    /// The capacity sweep presents `--tls-cert` as its client certificate, so that certificate
    /// must be signed by this CA and allow client authentication.
    #[arg(long, env = "POLICYSERVE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Plaintext listen address for `grpc.health.v1` only, for kubelet's gRPC probes, which
    /// cannot speak TLS.
    #[arg(long, env = "POLICYSERVE_HEALTH_ADDR")]
    pub health_addr: Option<std::net::SocketAddr>,
    /// Async runtime threads for gRPC, metrics and Kubernetes watches; by default the CPUs the
    /// inference threads leave free (`serve`) or a quarter of them (`run`), at least one.
    #[arg(long, env = "POLICYSERVE_ASYNC_THREADS")]
    pub async_threads: Option<usize>,
    /// Requests that may wait per model before new ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "POLICYSERVE_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,
    /// Bytes a model's accepted, unanswered requests may hold before new ones get
    /// RESOURCE_EXHAUSTED (never less than one full batch per instance).
    #[arg(long, env = "POLICYSERVE_MAX_QUEUED_BYTES", default_value_t = crate::engine::DEFAULT_MAX_QUEUED_BYTES)]
    pub max_queued_bytes: usize,
    /// Most rows one request may carry; more get INVALID_ARGUMENT (a request larger than the
    /// tuned batch runs as a batch of its own).
    #[arg(long, env = "POLICYSERVE_MAX_REQUEST_ROWS", default_value_t = crate::engine::DEFAULT_MAX_REQUEST_ROWS)]
    pub max_request_rows: usize,
    /// Largest gRPC message accepted or sent, bytes.
    #[arg(long, env = "POLICYSERVE_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// ONNX Runtime library.
    #[command(flatten)]
    pub ort: OrtArgs,
}

impl ServingArgs {
    /// The engine options these flags set, with the GPU settings and the CPUs the async
    /// runtime needs.
    pub fn engine_options(
        &self,
        gpu: crate::engine::GpuOptions,
        reserved_cpus: usize,
    ) -> crate::engine::EngineOptions {
        crate::engine::EngineOptions {
            gpu,
            queue_capacity: self.queue_capacity,
            max_queued_bytes: self.max_queued_bytes,
            max_request_rows: self.max_request_rows,
            reserved_cpus,
        }
    }

    /// The gRPC server's TLS configuration when `--tls-cert` and `--tls-key` are set, loaded
    /// and checked.
    ///
    /// # Errors
    /// As [`crate::tls::ServerTls::load`].
    pub fn tls(&self) -> crate::Result<Option<std::sync::Arc<crate::tls::ServerTls>>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let files = crate::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.tls_client_ca.clone(),
        };
        Ok(Some(std::sync::Arc::new(crate::tls::ServerTls::load(
            files,
        )?)))
    }
}

/// Where ONNX Runtime's shared library is.
#[derive(Clone, Debug, Args)]
pub struct OrtArgs {
    /// Path of libonnxruntime.so (the CPU build, or the GPU build for CUDA/TensorRT).
    #[arg(long = "ort-lib", env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
}
