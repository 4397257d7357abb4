//! Performance targets: what a user asks of a served model.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Performance targets for a served model; at least one must be set. Latencies are measured
/// per request at the agent, including queueing in the dynamic batcher.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend(
    "minProperties" = 1,
    "x-kubernetes-validations" = [
        {
            "rule": "!has(self.latencyP50Ms) || !has(self.latencyP95Ms) || self.latencyP50Ms <= self.latencyP95Ms",
            "message": "latencyP50Ms must not exceed latencyP95Ms",
            "fieldPath": ".latencyP50Ms"
        },
        {
            "rule": "!has(self.latencyP95Ms) || !has(self.latencyP99Ms) || self.latencyP95Ms <= self.latencyP99Ms",
            "message": "latencyP95Ms must not exceed latencyP99Ms",
            "fieldPath": ".latencyP95Ms"
        },
        {
            "rule": "!has(self.latencyP50Ms) || !has(self.latencyP99Ms) || self.latencyP50Ms <= self.latencyP99Ms",
            "message": "latencyP50Ms must not exceed latencyP99Ms",
            "fieldPath": ".latencyP50Ms"
        }
    ]
))]
pub struct Targets {
    /// Median latency target, milliseconds (greater than 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 0, "exclusiveMinimum" = true))]
    pub latency_p50_ms: Option<f64>,
    /// 95th percentile latency target, milliseconds (greater than 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 0, "exclusiveMinimum" = true))]
    pub latency_p95_ms: Option<f64>,
    /// 99th percentile latency target, milliseconds (greater than 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 0, "exclusiveMinimum" = true))]
    pub latency_p99_ms: Option<f64>,
    /// Requests per second the whole PolicyService must sustain, summed over its serving
    /// nodes (greater than 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 0, "exclusiveMinimum" = true))]
    pub throughput_rps: Option<f64>,
    /// Memory the model may use on each serving node, as a Kubernetes quantity (`512Mi`,
    /// `1.5Gi`, `2e9`); anything else is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = crate::quantity::QUANTITY_PATTERN))]
    pub memory_limit: Option<Quantity>,
}

impl Targets {
    /// Whether no target is set at all.
    pub fn is_empty(&self) -> bool {
        self.latency_p50_ms.is_none()
            && self.latency_p95_ms.is_none()
            && self.latency_p99_ms.is_none()
            && self.throughput_rps.is_none()
            && self.memory_limit.is_none()
    }

    /// The memory limit in MiB, when one is set.
    ///
    /// # Errors
    /// When the quantity is not a valid Kubernetes quantity.
    pub fn memory_limit_mib(&self) -> Result<Option<f64>, crate::QuantityError> {
        self.memory_limit
            .as_ref()
            .map(|q| crate::quantity::parse_bytes(&q.0).map(|bytes| bytes / (1024.0 * 1024.0)))
            .transpose()
    }
}
