//! The policyserve agent: detects its node's hardware, tunes ONNX Runtime for it and serves
//! policy models.

pub mod async_runtime;
pub mod cli;
pub mod detect;
pub mod engine;
mod error;
pub mod fetch;
pub mod grpc;
pub mod hardware;
pub mod labels;
pub mod lease;
pub mod load;
pub mod metrics;
pub mod node;
pub mod profiles;
pub mod registry;
pub mod run;
pub mod serve;
pub mod tls;
pub mod traffic;
pub mod tune;
pub mod tuner;

pub use error::{Error, Result};

/// The field manager of every write the agent makes (Node labels, profile statuses, its Lease).
pub const FIELD_MANAGER: &str = "policyserve-agent";
