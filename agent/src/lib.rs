//! The policyserve agent: detects its node's hardware, tunes ONNX Runtime for it and serves
//! policy models.

pub mod args;
pub mod async_runtime;
pub mod detect;
pub mod engine;
mod error;
pub mod fetch;
pub mod grpc;
pub mod hardware;
pub mod labels;
pub mod metrics;
pub mod node;
pub mod profiles;
pub mod registry;
pub mod run;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod tune;
pub mod tuner;

pub use error::{Error, Result};
