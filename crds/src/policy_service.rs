//! The PolicyService resource: a model plus performance targets, as a user writes it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Capacity, EngineConfig, ExecutionProvider, FigureSource, HardwareClass, ModelSpec, Precision,
    Profile, Served, Targets,
};

/// Serve an ONNX policy model with latency, throughput and memory targets on the nodes whose
/// hardware fits; the status says whether the targets are met, measured, and why not.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "policyserve.io",
    version = "v1alpha1",
    kind = "PolicyService",
    namespaced,
    shortname = "ps",
    category = "policyserve",
    status = "PolicyServiceStatus",
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.scaling.desiredReplicas"}"#,
    printcolumn = r#"{"name":"Serving","type":"integer","jsonPath":".status.scaling.servingReplicas"}"#,
    printcolumn = r#"{"name":"Compliant","type":"string","jsonPath":".status.conditions[?(@.type==\"PerformanceCompliant\")].status"}"#,
    printcolumn = r#"{"name":"P99","type":"number","jsonPath":".status.compliance.latencyP99Ms","description":"the P99 compliance is judged on (served, or capacity with little traffic), worst node, ms"}"#,
    printcolumn = r#"{"name":"Capacity","type":"number","jsonPath":".status.capacity.throughputRps","description":"requests/s the serving nodes sustain within the latency targets, summed"}"#,
    printcolumn = r#"{"name":"Demand","type":"number","jsonPath":".status.served.demandRps","description":"requests/s clients sent over the last window (answered and rejected), summed"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PolicyServiceSpec {
    /// The ONNX model to serve: exactly one of configMap, url or path, plus optional variants.
    pub model: ModelSpec,
    /// Performance targets; at least one.
    pub targets: Targets,
    /// The optimization profile: Auto chooses per node from its hardware class and the targets.
    #[serde(default)]
    pub profile: ProfileSelection,
    /// Which nodes may serve and how many.
    #[serde(default)]
    pub placement: Placement,
    /// Engine settings to pin instead of tuning them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning: Option<TuningPins>,
}

/// Auto, or one of the four profiles pinned for every node.
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ProfileSelection {
    /// MemoryConstrained when memoryLimit is under 1 GiB, else the node's hardware class.
    #[default]
    Auto,
    /// Pin the GPU profile (TensorRT → CUDA → CPU).
    GPUAccelerated,
    /// Pin the high-performance CPU profile.
    HighPerformanceCPU,
    /// Pin the memory-constrained profile.
    MemoryConstrained,
    /// Pin the balanced profile.
    Balanced,
}

impl ProfileSelection {
    /// The profile for a node of `class` (docs/profiles.md): the pinned one, else MemoryConstrained
    /// when the memory limit is under 1 GiB, else the class's own profile. An unparsable
    /// memory limit is left to validation and does not change the choice.
    pub fn resolve(self, class: HardwareClass, targets: &Targets) -> Profile {
        if let Some(profile) = self.pinned() {
            return profile;
        }
        match targets.memory_limit_mib() {
            Ok(Some(mib)) if mib < 1024.0 => Profile::MemoryConstrained,
            _ => class.default_profile(),
        }
    }

    /// The pinned profile, or None for Auto.
    pub fn pinned(self) -> Option<Profile> {
        match self {
            Self::Auto => None,
            Self::GPUAccelerated => Some(Profile::GPUAccelerated),
            Self::HighPerformanceCPU => Some(Profile::HighPerformanceCPU),
            Self::MemoryConstrained => Some(Profile::MemoryConstrained),
            Self::Balanced => Some(Profile::Balanced),
        }
    }
}

/// Where and on how many nodes the model is served.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.minReplicas <= self.maxReplicas",
    "message": "minReplicas must not exceed maxReplicas",
    "fieldPath": ".maxReplicas"
}]))]
pub struct Placement {
    /// Only nodes whose labels match may serve; all nodes with a policyserve agent when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Serve on at least this many nodes.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    /// Serve on at most this many nodes.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Extra throughput, percent, to plan above the target when sizing the replica count.
    #[serde(default = "default_headroom_percent")]
    #[schemars(range(min = 0, max = 1000))]
    pub headroom_percent: i32,
}

fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    10
}
fn default_headroom_percent() -> i32 {
    20
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            node_selector: None,
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            headroom_percent: default_headroom_percent(),
        }
    }
}

/// Engine settings pinned by the user; the tuner explores only what is left open.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TuningPins {
    /// Execution providers in priority order, each at most once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 3))]
    pub execution_providers: Option<Vec<ExecutionProvider>>,
    /// Model precision; needs a variant of that precision (or fp16 on TensorRT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// Largest batch the dynamic batcher forms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub max_batch_size: Option<u32>,
    /// Intra-op threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub intra_op_threads: Option<u32>,
}

/// What the operator observed and decided; written by the operator only.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyServiceStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, ProfilesAssigned, PerformanceCompliant, LatencyTargetMet, ThroughputTargetMet,
    /// MemoryWithinLimit.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The scaling decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingStatus>,
    /// Capacity of the serving nodes: throughput summed, latency and memory of the worst node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// Traffic served: requests, throughput and demand summed, latency of the worst node with
    /// enough requests to judge on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<Served>,
    /// The P99 latency compliance is judged on, and which figures it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<Compliance>,
    /// One entry per node the PolicyService is planned on.
    #[serde(default)]
    pub nodes: Vec<NodeStatus>,
    /// Where clients send inference requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<ServiceEndpoint>,
}

/// How many nodes serve, and why.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingStatus {
    /// Nodes the operator wants serving.
    pub desired_replicas: i32,
    /// Nodes whose agent reports Serving.
    pub serving_replicas: i32,
    /// Why this number, with the figures it came from.
    pub reason: String,
    /// When the desired count last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision_time: Option<Time>,
}

/// One planned node.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Node name.
    pub node: String,
    /// The node's hardware class.
    pub hardware_class: HardwareClass,
    /// The profile chosen for the node.
    pub profile: Profile,
    /// Name of the OptimizationProfile for this node.
    pub optimization_profile: String,
    /// Whether this node's figures meet the latency and memory targets and its capacity its
    /// share of the throughput target; unset until measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliant: Option<bool>,
    /// The configuration the node's tuner chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<EngineConfig>,
    /// The node's capacity at the targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// What the node served over the last window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<Served>,
    /// Why this node and profile, and how it stands, in one line with the figures.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The latency compliance is judged on.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Compliance {
    /// `served` when the serving nodes' windows held enough requests, else `capacity`.
    pub source: FigureSource,
    /// The worst serving node's P99 from that source, milliseconds; absent until measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<f64>,
}

/// The stable address of a PolicyService.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEndpoint {
    /// The Service name, in the PolicyService's namespace.
    pub service: String,
    /// gRPC port (KServe V2 protocol).
    pub port: i32,
    /// The model name to use in V2 requests: `<namespace>.<name>`.
    pub model_name: String,
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;

    fn memory(limit: &str) -> Targets {
        Targets {
            memory_limit: Some(Quantity(limit.into())),
            ..Targets::default()
        }
    }

    #[test]
    fn auto_follows_the_hardware_class() {
        for (class, profile) in [
            (HardwareClass::GpuAccelerated, Profile::GPUAccelerated),
            (
                HardwareClass::HighPerformanceCpu,
                Profile::HighPerformanceCPU,
            ),
            (HardwareClass::MemoryConstrained, Profile::MemoryConstrained),
            (HardwareClass::Balanced, Profile::Balanced),
        ] {
            assert_eq!(
                ProfileSelection::Auto.resolve(class, &memory("2Gi")),
                profile
            );
        }
    }

    #[test]
    fn auto_with_a_memory_limit_under_one_gib_is_memory_constrained_on_any_class() {
        let targets = memory("512Mi");
        assert_eq!(
            ProfileSelection::Auto.resolve(HardwareClass::GpuAccelerated, &targets),
            Profile::MemoryConstrained
        );
        assert_eq!(
            ProfileSelection::Auto.resolve(HardwareClass::Balanced, &memory("1Gi")),
            Profile::Balanced
        );
    }

    #[test]
    fn a_pinned_profile_wins_over_class_and_memory() {
        let targets = memory("128Mi");
        assert_eq!(
            ProfileSelection::HighPerformanceCPU.resolve(HardwareClass::Balanced, &targets),
            Profile::HighPerformanceCPU
        );
    }
}
