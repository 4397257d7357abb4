//! The agent's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the agent, with the context a person needs to act.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// ONNX Runtime's library could not be found or loaded.
    #[error("failed to load ONNX Runtime: {0}")]
    OnnxRuntime(String),
    /// A model file could not be read.
    #[error("failed to read model {path}: {source}")]
    ReadModel {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A model file could not be fetched (ConfigMap, download or node path).
    #[error("failed to fetch model from {source_name}: {reason}")]
    ModelFetch {
        /// Where it was fetched from.
        source_name: String,
        /// Why it failed.
        reason: String,
    },
    /// A downloaded model does not have the digest the PolicyService names.
    #[error("model from {uri} has sha256 {actual}, expected {expected}")]
    HashMismatch {
        /// The download address.
        uri: String,
        /// The digest in the spec.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// Serving the model would exceed its memory limit.
    #[error("{0}")]
    MemoryLimitExceeded(String),
    /// ONNX Runtime refused the model (corrupt file, unsupported operator, ...).
    #[error("failed to load model {model}: {reason}")]
    ModelLoad {
        /// Model name or file.
        model: String,
        /// ONNX Runtime's words.
        reason: String,
    },
    /// The model loads but the engine cannot serve it (inputs, outputs, dtypes, batch dimension).
    #[error("unsupported model {model}: {reason}")]
    UnsupportedModel {
        /// Model name or file.
        model: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A request does not fit the model.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The batcher's queue is full; the caller should back off.
    #[error("queue full: {0} requests waiting")]
    QueueFull(usize),
    /// The work queued for a model would exceed its byte bound
    /// (`EngineOptions::max_queued_bytes`); the caller should back off.
    #[error("queue full: {queued_bytes} bytes of requests waiting (bound {limit_bytes})")]
    QueueBytesFull {
        /// Bytes held by requests already accepted.
        queued_bytes: usize,
        /// Bytes the refused request would have added.
        request_bytes: usize,
        /// The bound.
        limit_bytes: usize,
    },
    /// The request's deadline passed before it ran.
    #[error("deadline exceeded after {0:?} in the queue")]
    DeadlineExceeded(std::time::Duration),
    /// The engine is shutting down.
    #[error("engine stopped")]
    Stopped,
    /// ONNX Runtime failed while running a batch.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The load generator of a capacity sweep could not run.
    #[error("load generator: {0}")]
    Load(String),
    /// An invalid setting or argument.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Hardware detection failed in a way that is not "this hardware is absent".
    #[error("failed to detect hardware: {0}")]
    Hardware(String),
    /// A file could not be read or written.
    #[error("failed to access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A TLS certificate, key or CA file that cannot be used as given.
    #[error("invalid TLS file {path}: {reason}")]
    Tls {
        /// The file.
        path: PathBuf,
        /// What is wrong with it (never its contents).
        reason: String,
    },
    /// The Kubernetes API failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// JSON or YAML that does not parse.
    #[error("failed to parse {what}: {reason}")]
    Parse {
        /// What was parsed.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// The agent's own Node does not exist (a wrong `--node-name`); labelling it would create it.
    #[error("node {0} not found")]
    NodeNotFound(String),
}

/// The agent's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
