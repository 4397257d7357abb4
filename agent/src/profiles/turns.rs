//! Whose turn it is to measure. A tuning or a capacity probe loads the CPUs it measures, so two
//! side by side would measure each other: one at a time per agent, and, when several agents
//! share one machine's CPUs (simulated nodes on one host, a kind cluster), one at a time on the
//! host through a lock file they all name (`--tuning-lock-file`).

use std::fs::{File, OpenOptions};
use std::path::PathBuf;

use crate::{Error, Result};

/// The agent's measuring turns.
#[derive(Debug, Default)]
pub struct Turns {
    agent: tokio::sync::Mutex<()>,
    host: Option<PathBuf>,
}

/// A turn, held until dropped.
#[derive(Debug)]
pub struct Turn<'a> {
    _agent: tokio::sync::MutexGuard<'a, ()>,
    /// Holds the host's lock while open: closing the file releases it.
    _host: Option<File>,
}

impl Turns {
    /// Turns for this agent, and for the host when `host` names a lock file.
    pub fn new(host: Option<PathBuf>) -> Self {
        Self {
            agent: tokio::sync::Mutex::new(()),
            host,
        }
    }

    /// Waits for this agent's turn, then for the host's.
    ///
    /// # Errors
    /// [`Error::Io`] when the lock file cannot be opened or locked.
    pub async fn take(&self) -> Result<Turn<'_>> {
        let agent = self.agent.lock().await;
        let host = match &self.host {
            None => None,
            Some(path) => {
                let path = path.clone();
                let file = tokio::task::spawn_blocking(move || {
                    let io = |source| Error::Io {
                        path: path.clone(),
                        source,
                    };
                    let file = OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&path)
                        .map_err(io)?;
                    file.lock().map_err(io)?;
                    Ok::<_, Error>(file)
                })
                .await
                .map_err(Error::Task)??;
                Some(file)
            }
        };
        Ok(Turn {
            _agent: agent,
            _host: host,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn two_agents_naming_one_lock_file_measure_one_at_a_time() {
        let path = std::env::temp_dir().join(format!("policyserve-turns-{}", std::process::id()));
        let (first, second) = (
            Turns::new(Some(path.clone())),
            Turns::new(Some(path.clone())),
        );
        let held = first.take().await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(300), second.take()).await;
        assert!(waiting.is_err(), "the second agent waited for the first");
        drop(held);
        let turn = tokio::time::timeout(Duration::from_secs(5), second.take()).await;
        assert!(
            turn.is_ok_and(|t| t.is_ok()),
            "its turn came once the first let go"
        );
        let _ = std::fs::remove_file(path);
    }
}
