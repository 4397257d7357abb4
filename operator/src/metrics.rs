//! Prometheus metrics and the HTTP endpoint that serves them with the health probes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::Error;

/// Label of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
}

/// The operator's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<ErrorLabels, Counter>,
    duration: Histogram,
    leader: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("policyserve_operator");
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        // 1 ms to ~16 s.
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let leader = Gauge::default();
        registry.register("reconciles", "PolicyService reconciles", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by kind (invalid_spec waits for a change; the rest are retried)",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time per reconcile",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease (or runs without leader election)",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            leader,
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// Records one reconcile.
    pub fn reconciled(&self, took: Duration, error: Option<&Error>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(error) = error {
            self.errors
                .get_or_create(&ErrorLabels { kind: error.kind() })
                .inc();
        }
    }

    /// Total reconciles so far.
    pub fn reconcile_count(&self) -> u64 {
        self.reconciles.get()
    }

    /// Marks whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Marks the replica ready (`/readyz` answers 200).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl policyserve_runtime::Exposition for Metrics {
    fn encode(&self) -> String {
        Metrics::encode(self)
    }

    /// Ready once the binary has started (leading or standing by): both answer probes.
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_errors_and_durations_are_exported() {
        let metrics = Metrics::default();
        metrics.reconciled(Duration::from_millis(3), None);
        metrics.reconciled(
            Duration::from_millis(5),
            Some(&Error::MissingField("metadata.uid")),
        );
        let text = metrics.encode();
        assert!(
            text.contains("policyserve_operator_reconciles_total 2"),
            "{text}"
        );
        assert!(
            text.contains("policyserve_operator_reconcile_errors_total{kind=\"missing_field\"} 1"),
            "{text}"
        );
        assert!(text.contains("policyserve_operator_reconcile_duration_seconds_count 2"));
        assert_eq!(metrics.reconcile_count(), 2);
    }

    #[test]
    fn readiness_follows_the_flag() {
        use policyserve_runtime::Exposition;
        let metrics = Metrics::default();
        assert!(!metrics.ready());
        metrics.set_ready(true);
        assert!(metrics.ready());
    }
}
