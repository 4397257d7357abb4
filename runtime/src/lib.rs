//! The runtime layer both policyserve binaries share: the signal that starts a graceful
//! shutdown, logging (text or JSON), and one HTTP endpoint for Prometheus metrics and the
//! health probes.

#![forbid(unsafe_code)]

pub mod http;
pub mod telemetry;

pub use http::{Exposition, bind, serve_metrics};
pub use telemetry::LogFormat;

/// Resolves on SIGTERM (what the kubelet sends) or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested: draining");
}
