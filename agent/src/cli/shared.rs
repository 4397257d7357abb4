//! Flag groups several subcommands flatten into theirs.

use std::path::PathBuf;

use clap::Args;

/// Where hardware facts come from.
#[derive(Clone, Debug, Default, Args)]
pub struct HardwareArgs {
    /// Describe the machine with this JSON file (the schema `detect --output json` prints)
    /// instead of detecting it; labels then carry `hw.policyserve.io/source=simulated`.
    #[arg(long, env = "POLICYSERVE_HARDWARE_FILE")]
    pub hardware_file: Option<PathBuf>,
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
