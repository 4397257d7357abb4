//! The policyserve operator: reconciles PolicyServices into per-node OptimizationProfiles,
//! decides how many nodes serve, and keeps each PolicyService's status true to what the agents
//! measured. The binary is [`run`] behind a thin `main`; tests call [`run_controller`].

#![forbid(unsafe_code)]

mod args;
pub mod controller;
mod error;
pub mod leader;
pub mod metrics;

use std::sync::Arc;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

pub use args::Args;
pub use controller::{
    ControllerConfig, EndpointsApi, FIELD_MANAGER, FINALIZER, Invalid, Validated, run_controller,
    service_name, validate, validate_spec,
};
pub use error::{Error, Result};
pub use metrics::Metrics;
pub use policyserve_runtime::telemetry;

/// Runs the operator as the binary does: metrics server, leader election (unless disabled),
/// the controller, and a graceful stop on SIGINT or SIGTERM.
///
/// # Errors
/// When the Kubernetes client cannot be configured, the metrics address cannot be bound, the
/// Lease cannot be held, or the controller cannot start.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let Args {
        ref kubeconfig,
        metrics_addr,
        leader_election,
        ref lease_namespace,
        ref lease_name,
        ref identity,
        lease_duration_seconds,
        ..
    } = args;
    let config = args.controller_config();
    let client = client(kubeconfig.as_deref()).await?;
    let metrics = Arc::new(Metrics::default());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }
    };
    tokio::spawn(async move {
        policyserve_runtime::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let listener = policyserve_runtime::bind(metrics_addr).await?;
    let exposition: Arc<dyn policyserve_runtime::Exposition> = metrics.clone();
    let server = tokio::spawn(policyserve_runtime::serve_metrics(
        listener,
        exposition,
        stopped(),
    ));
    metrics.set_ready(true);

    if !leader_election {
        metrics.set_leader(true);
        run_controller(client, config, metrics, stopped()).await?;
    } else {
        let settings = leader::LeaseSettings {
            namespace: lease_namespace.clone(),
            name: lease_name.clone(),
            identity: identity.clone().unwrap_or_else(default_identity),
            duration_seconds: lease_duration_seconds,
        };
        let mut leadership = leader::Leadership::contend(client.clone(), &settings).await?;
        tracing::info!(lease = %format!("{}/{}", settings.namespace, settings.name), identity = %settings.identity, "waiting to lead");
        tokio::select! {
            () = leadership.acquired() => {}
            () = stopped() => {
                leadership.release().await;
                return Ok(());
            }
        }
        tracing::info!("leading");
        metrics.set_leader(true);
        let lost = leadership.lost();
        let stop = stopped();
        let end = async move {
            tokio::select! {
                () = lost => tracing::warn!("lost the leader lease; stopping"),
                () = stop => {}
            }
        };
        let result = run_controller(client, config, metrics.clone(), end).await;
        metrics.set_leader(false);
        // Release even after a failed start, so a standby need not wait for expiry.
        leadership.release().await;
        result?;
    }
    server.abort();
    Ok(())
}

async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|e| Error::ClientConfig(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| Error::ClientConfig(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::ClientConfig(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| Error::ClientConfig(e.to_string()))
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "policyserve-operator".into());
    format!("{host}-{}", std::process::id())
}
