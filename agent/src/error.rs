//! The agent's error type: the engine's and the fetcher's errors, each kept whole, and what
//! the agent itself adds (Kubernetes, hardware, TLS, files, settings).

use std::path::PathBuf;

/// Everything that can go wrong in the agent, with the context a person needs to act.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine failed: ONNX Runtime, a model, or a request.
    #[error(transparent)]
    Engine(#[from] crate::engine::Error),
    /// A model file could not be fetched.
    #[error(transparent)]
    Fetch(#[from] crate::fetch::Error),
    /// Serving the model would exceed its memory limit.
    #[error("{0}")]
    MemoryLimitExceeded(String),
    /// The load generator of a capacity sweep could not run.
    #[error("load generator: {0}")]
    Load(String),
    /// A capacity probe's engine is not where the sweep left it (a bug, never a user's doing).
    #[error("capacity probe {0}")]
    Probe(String),
    /// A task on the blocking pool panicked or was cancelled.
    #[error("a background task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
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
