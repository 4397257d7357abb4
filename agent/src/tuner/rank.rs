//! Ranking one configuration in-process: a closed loop straight into the batcher, cheap and
//! repeatable, for ordering candidates.

use std::time::{Duration, Instant};

use policyserve_crds::{Measurement, round};

use super::memory::peak_rss_mib;
use crate::engine::Engine;
use crate::{Error, Result};

/// How one configuration is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeasureSettings {
    /// How long the closed-loop load runs, after warm-up.
    pub window: Duration,
}

impl MeasureSettings {
    /// A window sized so that about a dozen candidates fit in `budget`.
    pub fn for_budget(budget: Duration) -> Self {
        Self {
            window: (budget / 12).clamp(Duration::from_millis(150), Duration::from_secs(2)),
        }
    }
}

/// Closed-loop load through the batcher: `instances × maxBatchSize` clients (enough to fill
/// every batch), each sending one row and waiting for the answer, for the settings' window.
///
/// # Errors
/// When a request fails.
pub fn measure(engine: &Engine, settings: MeasureSettings) -> Result<Measurement> {
    let config = engine.config();
    let clients = (config.instances * config.max_batch_size).clamp(1, 256) as usize;
    let row = engine.signature().input.row_len();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| Error::Load(format!("failed to start the load generator: {e}")))?;
    let started = Instant::now();
    let stop_at = started + settings.window;
    let client = |client: usize| async move {
        let input: Vec<f32> = (0..row).map(|i| ((i + client) % 7) as f32 * 0.1).collect();
        let mut latencies = Vec::with_capacity(4096);
        while Instant::now() < stop_at {
            let sent = Instant::now();
            engine.infer(input.clone(), 1, None).await?;
            latencies.push(sent.elapsed());
        }
        Ok::<_, Error>(latencies)
    };
    let per_client = runtime.block_on(futures::future::try_join_all((0..clients).map(client)));
    let elapsed = started.elapsed();
    let mut latencies: Vec<Duration> = per_client?.into_iter().flatten().collect();
    latencies.sort_unstable();
    // Rounded to what the figures can resolve, so status and printer columns stay readable.
    Ok(Measurement {
        latency_p50_ms: round(percentile(&latencies, 0.50), 4),
        latency_p95_ms: round(percentile(&latencies, 0.95), 4),
        latency_p99_ms: round(percentile(&latencies, 0.99), 4),
        throughput_rps: round(latencies.len() as f64 / elapsed.as_secs_f64(), 0),
        // Ordering only: an unreadable figure counts as nothing here, never in a status.
        memory_mib: round(
            peak_rss_mib().unwrap_or(0.0) + super::gpu_memory_mib(config).unwrap_or(0.0),
            1,
        ),
        measured_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        )),
    })
}

/// The `q` quantile of sorted latencies, in milliseconds (nearest rank).
pub fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.50), 50.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&sorted[..1], 0.99), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
