//! The OptimizationProfile resource: one PolicyService's plan for one node, and what that
//! node's agent measured.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Capacity, EngineConfig, HardwareClass, ModelSpec, Profile, SearchSpace, Served, Targets,
};

/// The plan for serving one PolicyService on one node, written by the operator; its status is
/// written by the agent on that node.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "policyserve.io",
    version = "v1alpha1",
    kind = "OptimizationProfile",
    namespaced,
    shortname = "optprof",
    category = "policyserve",
    status = "OptimizationProfileStatus",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"Profile","type":"string","jsonPath":".spec.profile"}"#,
    printcolumn = r#"{"name":"Serving","type":"string","jsonPath":".status.conditions[?(@.type==\"Serving\")].status"}"#,
    printcolumn = r#"{"name":"Capacity","type":"number","jsonPath":".status.capacity.throughputRps","description":"requests/s at which every latency target held, measured over gRPC on the node"}"#,
    printcolumn = r#"{"name":"P99","type":"number","jsonPath":".status.capacity.latencyP99Ms","description":"client-side P99 at that rate, ms"}"#,
    printcolumn = r#"{"name":"Served","type":"number","jsonPath":".status.served.throughputRps","description":"requests/s answered over the last window"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct OptimizationProfileSpec {
    /// Name of the PolicyService this profile serves, in the same namespace.
    pub policy_service: String,
    /// The node whose agent serves this profile.
    pub node_name: String,
    /// The node's hardware class when the plan was made.
    pub hardware_class: HardwareClass,
    /// The profile chosen for the node.
    pub profile: Profile,
    /// The model and its variants, as in the PolicyService.
    pub model: ModelSpec,
    /// The targets, as in the PolicyService (throughput is per node here).
    pub targets: Targets,
    /// The configurations the agent's tuner may explore.
    pub search_space: SearchSpace,
    /// Seconds the agent may spend measuring candidates before it serves the best one.
    #[schemars(range(min = 1, max = 3600))]
    pub tuning_budget_seconds: u32,
}

/// What the node's agent loaded, chose and measured; written by the agent only.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OptimizationProfileStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Loaded, Tuned, Serving, TargetsMet.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The configuration the tuner chose and the agent serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<EngineConfig>,
    /// The chosen configuration's capacity at the targets, measured through the serving path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// Live traffic served over the last window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<Served>,
    /// Where the agent serves this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<AgentEndpoint>,
}

/// The agent's serving address for one model.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentEndpoint {
    /// IP address the agent serves on.
    pub address: String,
    /// gRPC port.
    pub port: i32,
    /// V2 model name, `<namespace>.<name>`.
    pub model_name: String,
}
