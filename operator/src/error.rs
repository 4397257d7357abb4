//! The operator's one error type.

/// Everything that can go wrong in the operator. `error_policy` sorts these: an invalid spec
/// waits for the user to change it, everything else is transient and retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The PolicyService spec cannot be planned; the user must change it.
    #[error("invalid spec: {field}: {message}")]
    InvalidSpec {
        /// The offending field, as a path such as `spec.placement.minReplicas`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A Kubernetes API call failed.
    #[error("failed to {action}: {source}")]
    Kube {
        /// What the operator was doing.
        action: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Adding or removing the finalizer failed.
    #[error("failed to manage the finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// An object lacks a field the API server always sets.
    #[error("object has no {0}")]
    MissingField(&'static str),
    /// A watch cache stopped before it was filled (the controller is shutting down).
    #[error("the {0} cache stopped before it was filled")]
    CacheStopped(&'static str),
    /// No usable Kubernetes client configuration.
    #[error("failed to configure the Kubernetes client: {0}")]
    ClientConfig(String),
    /// Leader election failed.
    #[error("failed to hold the leader lease: {0}")]
    LeaderElection(#[from] kube_lease_manager::LeaseManagerError),
    /// An object could not be serialized for a patch.
    #[error("failed to serialize {what}: {source}")]
    Serialize {
        /// What was serialized.
        what: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Wraps a client error with what the operator was doing.
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Self::Kube { action, source }
    }

    /// Whether the user must change the spec before a retry can succeed.
    pub fn is_invalid_spec(&self) -> bool {
        matches!(self, Self::InvalidSpec { .. })
    }

    /// A short label for the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidSpec { .. } => "invalid_spec",
            Self::Kube { .. } => "kube_api",
            Self::Finalizer(_) => "finalizer",
            Self::MissingField(_) => "missing_field",
            Self::CacheStopped(_) => "cache_stopped",
            Self::ClientConfig(_) => "client_config",
            Self::LeaderElection(_) => "leader_election",
            Self::Serialize { .. } => "serialize",
        }
    }
}

/// The operator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
