//! Leader election through a coordination.k8s.io Lease (kube-lease-manager): only the holder
//! reconciles, so running two replicas is safe.

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Result;

/// Where the Lease lives and who this replica is.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Lease namespace.
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This replica's identity.
    pub identity: String,
    /// Seconds the Lease stays valid without renewal.
    pub duration_seconds: u64,
}

/// A held (or awaited) Lease.
#[derive(Debug)]
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

impl Leadership {
    /// Starts contending for the Lease (creating it when absent).
    ///
    /// # Errors
    /// When the Lease cannot be read or created.
    pub async fn contend(client: Client, settings: &LeaseSettings) -> Result<Self> {
        // Renew a third of the duration before expiry, at least one second.
        let grace = (settings.duration_seconds / 3).max(1);
        let manager = LeaseManagerBuilder::new(client, &settings.name)
            .with_namespace(&settings.namespace)
            .with_identity(&settings.identity)
            .with_duration(settings.duration_seconds.max(grace + 1))
            .with_grace(grace)
            .with_field_manager(format!("policyserve-operator-lease-{}", settings.identity))
            .build()
            .await?;
        let (state, task) = manager.watch().await;
        Ok(Self { state, task })
    }

    /// Resolves once this replica holds the Lease.
    pub async fn acquired(&mut self) {
        // An error means the manager task ended; `lost` reports that too.
        let _ = self.state.wait_for(|leader| *leader).await;
    }

    /// Resolves when this replica no longer holds the Lease (or the manager stopped).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut state = self.state.clone();
        async move {
            let _ = state.wait_for(|leader| !*leader).await;
        }
    }

    /// Releases the Lease so a standby takes over at once rather than after it expires.
    pub async fn release(self) {
        drop(self.state);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("released the leader lease"),
            Ok(Err(error)) => tracing::warn!(%error, "failed to release the leader lease"),
            Err(error) => tracing::warn!(%error, "leader lease task failed"),
        }
    }
}
