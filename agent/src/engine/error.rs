//! What can go wrong in the engine: loading ONNX Runtime and models, and running requests.
//! The gRPC service maps these, and only these, to status codes.

use std::path::PathBuf;
use std::time::Duration;

/// An engine failure, with the context a person needs to act.
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
    /// A configuration the engine cannot run: a precision the model has no file for, or a
    /// zero batch size, instance count or thread count.
    #[error("invalid engine configuration: {0}")]
    Config(String),
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
    /// An inference worker thread could not start.
    #[error("failed to start an inference worker: {0}")]
    Worker(#[source] std::io::Error),
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
    DeadlineExceeded(Duration),
    /// The engine is shutting down.
    #[error("engine stopped")]
    Stopped,
    /// ONNX Runtime failed while running a batch.
    #[error("inference failed: {0}")]
    Inference(String),
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
