//! What can go wrong fetching a model file.

/// A fetch failure, naming the source and what to change; never a file's content.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be fetched (ConfigMap, download or node path).
    #[error("failed to fetch model from {source_name}: {reason}")]
    Failed {
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
    /// The HTTP client could not be built (no TLS roots).
    #[error("failed to build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// The fetcher's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
