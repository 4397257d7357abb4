//! Prometheus metrics of the serving path, exposed over HTTP on the metrics port.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-model metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// V2 model name.
    pub model: String,
}

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// V2 model name (empty when the request named no served model).
    pub model: String,
    /// gRPC status code name (`Ok`, `InvalidArgument`, …).
    pub code: String,
}

/// The agent's serving metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Inference requests by model and gRPC code.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency at the server, seconds.
    pub latency: Family<ModelLabels, Histogram>,
    /// Rows per batch the engine ran.
    pub batch_rows: Family<ModelLabels, Histogram>,
    /// Requests accepted and not yet answered.
    pub queue_depth: Family<ModelLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 25 µs … ~0.8 s: policy models answer in microseconds, queues can take longer.
    Histogram::new(exponential_buckets(25e-6, 2.0, 16))
}

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 9))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("policyserve");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<ModelLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let batch_rows = Family::<ModelLabels, Histogram>::new_with_constructor(
            batch_histogram as fn() -> Histogram,
        );
        let queue_depth = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "inference_requests",
            "Inference requests by model and gRPC code",
            requests.clone(),
        );
        registry.register(
            "inference_latency_seconds",
            "Inference request latency at the server",
            latency.clone(),
        );
        registry.register(
            "batch_rows",
            "Rows in each batch the engine ran",
            batch_rows.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests accepted and not yet answered",
            queue_depth.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            batch_rows,
            queue_depth,
        }
    }
}

impl Metrics {
    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

impl policyserve_runtime::Exposition for Metrics {
    fn encode(&self) -> String {
        Metrics::encode(self)
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` (the shared endpoint) on `addr` until
/// `shutdown` resolves.
///
/// # Errors
/// When the address cannot be bound or serving fails.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), policyserve_runtime::http::Error> {
    let listener = policyserve_runtime::bind(addr).await?;
    policyserve_runtime::serve_metrics(listener, metrics, shutdown).await
}
