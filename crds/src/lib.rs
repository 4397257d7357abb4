//! Custom resource types of policyserve (`policyserve.io/v1alpha1`) and the shared engine
//! configuration and measurement types. Every field's doc comment becomes `kubectl explain`.

pub mod conditions;
mod engine;
mod figures;
pub mod labels;
pub mod manifests;
mod model;
mod optimization_profile;
mod policy_service;
mod profile;
pub mod quantity;
mod targets;

pub use engine::{EngineConfig, ExecutionProvider, Measurement, Precision};
pub use figures::{
    Capacity, FigureSource, Figures, MIN_SERVED_REQUESTS, Miss, Quantile, Served, Target, describe,
    latency_basis, round,
};
pub use labels::{CAPABILITY_LABEL_PREFIX, CapabilityLabels, GpuLabels, HARDWARE_CLASS_LABEL};
pub use model::{
    ConfigMapModel, MAX_PATH_LENGTH, MAX_URI_LENGTH, MAX_VARIANTS, ModelSource, ModelSpec,
    ModelVariant, UrlModel,
};
pub use optimization_profile::{
    AgentEndpoint, OptimizationProfile, OptimizationProfileSpec, OptimizationProfileStatus,
};
pub use policy_service::{
    Compliance, NodeStatus, Placement, PolicyService, PolicyServiceSpec, PolicyServiceStatus,
    ProfileSelection, ScalingStatus, ServiceEndpoint, TuningPins,
};
pub use profile::{HardwareClass, NodeCapacity, Profile, SearchSpace};
pub use quantity::QuantityError;
pub use targets::Targets;

/// API group of both resources.
pub const GROUP: &str = "policyserve.io";

/// Label on an OptimizationProfile naming the node whose agent serves it.
pub const NODE_LABEL: &str = "policyserve.io/node";
/// Label on an OptimizationProfile naming its PolicyService.
pub const POLICY_SERVICE_LABEL: &str = "policyserve.io/policy-service";
/// Node annotation with the node's full hardware description as JSON.
pub const HARDWARE_ANNOTATION: &str = "policyserve.io/hardware";
/// The agent's gRPC port (Triton's convention).
pub const AGENT_GRPC_PORT: u16 = 8001;
/// The agent's metrics port.
pub const AGENT_METRICS_PORT: u16 = 8002;
/// The agent's model root: where `model.path` sources live on a node. The chart mounts a node
/// folder here, read-only, when `agent.hostModels.enabled` is set.
pub const MODEL_ROOT: &str = "/var/lib/policyserve/models";

/// gRPC metadata key that marks the agent's own probe requests (value `1`): they count neither
/// in `served` nor in the request metrics.
pub const PROBE_METADATA: &str = "policyserve-probe";

/// How often each agent renews its Lease, seconds.
pub const AGENT_LEASE_RENEW_SECONDS: u64 = 10;
/// A node whose agent Lease is older than this, seconds, is not serving.
pub const AGENT_LEASE_TIMEOUT_SECONDS: u64 = 40;

/// The name of the Lease the agent on `node` renews in its own namespace.
pub fn agent_lease_name(node: &str) -> String {
    shorten(&format!("policyserve-agent-{node}"), node, 253)
}

/// Longest Kubernetes object name that is also a label value.
const MAX_NAME: usize = 63;

/// The OptimizationProfile name for a PolicyService on a node: `<policyservice>-<node>`, cut
/// and given a stable hash suffix when longer than 63 characters so it also fits in a label.
pub fn optimization_profile_name(policy_service: &str, node: &str) -> String {
    let full = format!("{policy_service}-{node}");
    shorten(&full, &full, MAX_NAME)
}

/// `name` when it has at most `max` characters; else its first characters and a stable hash of
/// `identity` (`<start>-<10 hex digits>`), so that distinct identities (the name before any
/// rewriting) keep distinct names. ASCII names.
pub fn shorten(name: &str, identity: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = identity.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let suffix = format!("{:010x}", hash & 0xff_ffff_ffff);
    let keep = name[..max - suffix.len() - 1].trim_end_matches(['-', '.']);
    format!("{keep}-{suffix}")
}

/// The V2 model name under which agents serve a PolicyService: `<namespace>.<name>`.
pub fn model_name(namespace: &str, name: &str) -> String {
    format!("{namespace}.{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_profile_names_join_service_and_node() {
        assert_eq!(
            optimization_profile_name("lander", "node-a"),
            "lander-node-a"
        );
    }

    #[test]
    fn long_profile_names_are_cut_to_63_with_a_stable_suffix() {
        let node = "ip-10-0-12-34.eu-west-1.compute.internal";
        let a = optimization_profile_name("a-rather-long-policy-service-name", node);
        let b = optimization_profile_name("a-rather-long-policy-service-name", node);
        let other =
            optimization_profile_name("a-rather-long-policy-service-name", "x".repeat(60).as_str());
        assert!(a.len() <= 63, "{a}");
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert!(a.starts_with("a-rather-long-policy-service-name-ip-10"));
    }
}
