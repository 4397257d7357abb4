//! Desired state, computed without I/O: which nodes are eligible, how many serve (the scaling
//! decision), which nodes those are, and the OptimizationProfile for each.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use jiff::Timestamp;
use policyserve_crds::conditions::{self, SERVING};
use policyserve_crds::{
    ExecutionProvider, HardwareClass, NODE_LABEL, OptimizationProfile, OptimizationProfileSpec,
    POLICY_SERVICE_LABEL, PolicyService, Precision, Profile, SearchSpace, Targets, TuningPins,
    optimization_profile_name,
};

use super::liveness::Liveness;
use super::node::NodeFacts;
use super::observe::Observed;
use super::placement;
use super::scaling::{self, History, ScalingDecision, ScalingInput};
use super::selector;
use super::validate::Validated;

/// Operator-wide settings that shape every plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Seconds each agent may tune (`tuningBudgetSeconds` of every profile).
    pub tuning_budget_seconds: u32,
    /// Scale-down stabilization window.
    pub stabilization_window: Duration,
}

/// A policyserve node that cannot serve this PolicyService, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Exclusion {
    /// Node name.
    pub node: String,
    /// Why, with the figures.
    pub reason: String,
}

/// One chosen node and its OptimizationProfile.
#[derive(Clone, Debug)]
pub struct Assignment {
    /// Node name.
    pub node: String,
    /// The node's hardware class.
    pub class: HardwareClass,
    /// The profile chosen for it.
    pub profile: Profile,
    /// Why this node and this profile, with figures.
    pub why: String,
    /// The OptimizationProfile to apply.
    pub object: OptimizationProfile,
}

/// Everything the apply and status steps need.
#[derive(Clone, Debug)]
pub struct Plan {
    /// How many policyserve nodes were considered.
    pub considered: usize,
    /// How many of them could serve.
    pub eligible: usize,
    /// Nodes left out by `spec.placement.nodeSelector`.
    pub unselected: usize,
    /// Nodes that match the selector but cannot serve, with the reason.
    pub excluded: Vec<Exclusion>,
    /// How many nodes serve, and why.
    pub scaling: ScalingDecision,
    /// The chosen nodes, most preferred first.
    pub assignments: Vec<Assignment>,
}

/// Plans a validated PolicyService onto `nodes`, given the profiles it already owns. Updates
/// the scaling `history`.
pub fn plan(
    validated: &Validated,
    observed: &Observed,
    history: &mut History,
    settings: &Settings,
    now: Timestamp,
) -> Plan {
    let Observed {
        nodes,
        owned,
        liveness,
        measured,
    } = observed;
    let Validated {
        ps,
        name,
        namespace,
        owner,
    } = validated;
    let spec = &ps.spec;
    let by_node: HashMap<&str, &OptimizationProfile> = owned
        .iter()
        .map(|p| (p.spec.node_name.as_str(), p.as_ref()))
        .collect();

    let mut unselected = 0;
    let mut excluded = Vec::new();
    let mut candidates: Vec<(&NodeFacts, HardwareClass)> = Vec::new();
    for node in nodes {
        if let Some(selector) = &spec.placement.node_selector
            && !selector::matches(selector, &node.labels)
        {
            unselected += 1;
            continue;
        }
        match eligibility(ps, node) {
            Ok(class) => candidates.push((node, class)),
            Err(reason) => excluded.push(Exclusion {
                node: node.name.clone(),
                reason,
            }),
        }
    }
    let ranked = placement::rank(candidates, &by_node, liveness, measured);
    let demand_rps = owned
        .iter()
        .filter(|p| is_serving(p, liveness))
        .filter_map(|p| p.status.as_ref()?.served.as_ref())
        .map(|s| s.demand_rps)
        .reduce(|a, b| a + b);
    let as_u32 = |n: i32| u32::try_from(n).unwrap_or(0);
    let input = ScalingInput {
        min_replicas: as_u32(spec.placement.min_replicas).max(1),
        max_replicas: as_u32(spec.placement.max_replicas).max(1),
        headroom_percent: as_u32(spec.placement.headroom_percent),
        target_rps: spec.targets.throughput_rps,
        demand_rps,
        candidates: ranked.iter().map(|r| r.candidate.clone()).collect(),
        current: ps
            .status
            .as_ref()
            .and_then(|s| s.scaling.as_ref())
            .map(|s| as_u32(s.desired_replicas))
            .filter(|n| *n > 0),
    };
    let scaling = scaling::decide(&input, history, now, settings.stabilization_window);

    let targets = per_node_targets(&spec.targets, scaling.desired);
    let variants: Vec<Precision> = spec.model.variants.iter().map(|v| v.precision).collect();
    let assignments = ranked
        .iter()
        .take(scaling.desired as usize)
        .map(|ranked| {
            let (node, class) = (ranked.node, &ranked.class);
            let profile = spec.profile.resolve(*class, &spec.targets);
            let why = format!("{}; {}", ranked.why, profile_reason(spec, profile));
            let mut capacity = node.capacity.clone();
            capacity.variants = variants.clone();
            let search_space = narrow(profile.search_space(&capacity), spec.tuning.as_ref());
            let mut object = OptimizationProfile::new(
                &optimization_profile_name(name, &node.name),
                OptimizationProfileSpec {
                    policy_service: (*name).to_owned(),
                    node_name: node.name.clone(),
                    hardware_class: *class,
                    profile,
                    model: spec.model.clone(),
                    targets: targets.clone(),
                    search_space,
                    tuning_budget_seconds: settings.tuning_budget_seconds,
                },
            );
            object.metadata.namespace = Some((*namespace).to_owned());
            object.metadata.labels = Some(BTreeMap::from([
                (NODE_LABEL.to_owned(), node.name.clone()),
                (POLICY_SERVICE_LABEL.to_owned(), (*name).to_owned()),
            ]));
            object.metadata.owner_references = Some(vec![owner.clone()]);
            Assignment {
                node: node.name.clone(),
                class: *class,
                profile,
                why,
                object,
            }
        })
        .collect();

    Plan {
        considered: nodes.len(),
        eligible: ranked.len(),
        unselected,
        excluded,
        scaling,
        assignments,
    }
}

/// Whether the agent reports the profile Serving (it may have died since: see
/// [`is_serving`]).
pub fn reports_serving(profile: &OptimizationProfile) -> bool {
    profile
        .status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, SERVING))
}

/// Whether the profile's node serves it: its agent reports Serving and renews its Lease.
pub fn is_serving(profile: &OptimizationProfile, liveness: &Liveness) -> bool {
    reports_serving(profile) && liveness.is_live(&profile.spec.node_name)
}

/// The node's class when it can serve this PolicyService, else why not. A model's int8 or
/// fp16 variant never excludes a node (fp32 runs everywhere); memory and pinned GPU-only
/// settings do.
fn eligibility(ps: &PolicyService, node: &NodeFacts) -> Result<HardwareClass, String> {
    let class = match (&node.class_label, node.class()) {
        (_, Some(class)) => class,
        (None, None) => return Err("no policyserve.io/hardware-class label (no agent)".into()),
        (Some(value), None) => return Err(format!("unknown hardware class {value:?}")),
    };
    let spec = &ps.spec;
    // A node that cannot even grant the model its allowed memory would fail under load.
    if let (Ok(Some(limit)), Some(usable)) =
        (spec.targets.memory_limit_mib(), node.memory_usable_mib)
        && usable < limit
    {
        return Err(format!(
            "memory-usable-mib {usable:.0} < memoryLimit {limit:.0} MiB"
        ));
    }
    let pins = spec.tuning.as_ref();
    if let Some(providers) = pins.and_then(|p| p.execution_providers.as_ref())
        && !providers.contains(&ExecutionProvider::Cpu)
        && !node.has_gpu()
    {
        let names: Vec<&str> = providers.iter().map(|p| p.as_str()).collect();
        return Err(format!(
            "no GPU for tuning.executionProviders [{}]",
            names.join(", ")
        ));
    }
    let fp16_variant = spec
        .model
        .variants
        .iter()
        .any(|v| v.precision == Precision::Fp16);
    if pins.and_then(|p| p.precision) == Some(Precision::Fp16)
        && !fp16_variant
        && node
            .capacity
            .gpu_compute_capability
            .is_none_or(|cc| cc < (7, 0))
    {
        return Err(
            "tuning.precision fp16 without an fp16 variant needs a GPU of compute capability 7.0 or newer"
                .into(),
        );
    }
    Ok(class)
}

/// Why a node gets `profile`.
fn profile_reason(spec: &policyserve_crds::PolicyServiceSpec, profile: Profile) -> String {
    if spec.profile.pinned().is_some() {
        return format!("profile {profile}: pinned by spec.profile");
    }
    match spec.targets.memory_limit_mib() {
        Ok(Some(mib)) if profile == Profile::MemoryConstrained && mib < 1024.0 => {
            format!("profile {profile}: memoryLimit {mib:.0} MiB is under 1 GiB")
        }
        _ => format!("profile {profile}: the node's hardware class"),
    }
}

/// The targets one node is asked to meet: the PolicyService's, with the throughput divided
/// evenly over the serving nodes (latency and memory are per node already).
fn per_node_targets(targets: &Targets, desired: u32) -> Targets {
    let mut targets = targets.clone();
    if desired > 0 {
        targets.throughput_rps = targets.throughput_rps.map(|rps| rps / f64::from(desired));
    }
    targets
}

/// The profile's search space with each pinned setting reduced to the pinned value.
fn narrow(mut space: SearchSpace, pins: Option<&TuningPins>) -> SearchSpace {
    let Some(pins) = pins else {
        return space;
    };
    if let Some(providers) = &pins.execution_providers {
        space.execution_providers = vec![providers.clone()];
    }
    if let Some(precision) = pins.precision {
        space.precisions = vec![precision];
    }
    if let Some(batch) = pins.max_batch_size {
        space.max_batch_sizes = vec![batch];
    }
    if let Some(threads) = pins.intra_op_threads {
        space.intra_op_threads = vec![threads];
    }
    space
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::{NodeBuilder, PolicyServiceBuilder, ProfileBuilder};
    use crate::controller::validate;
    use policyserve_crds::ProfileSelection;

    fn settings() -> Settings {
        Settings {
            tuning_budget_seconds: 30,
            stabilization_window: Duration::from_secs(60),
        }
    }

    fn plan_for(ps: &PolicyService, nodes: &[NodeFacts], owned: &[OptimizationProfile]) -> Plan {
        let owned: Vec<std::sync::Arc<OptimizationProfile>> =
            owned.iter().cloned().map(std::sync::Arc::new).collect();
        let observed = Observed {
            nodes: nodes.to_vec(),
            liveness: Liveness::all(nodes.iter().map(|n| n.name.as_str()), Timestamp::UNIX_EPOCH),
            measured: crate::controller::placement::model_capacities(ps, &owned),
            owned,
        };
        plan(
            &validate(ps).unwrap(),
            &observed,
            &mut History::default(),
            &settings(),
            Timestamp::UNIX_EPOCH,
        )
    }

    fn gpu() -> NodeFacts {
        NodeBuilder::new("gpu")
            .class("gpu-accelerated")
            .cpus(8)
            .gpu(1, (8, 0))
            .memory_mib(65536)
            .build()
    }
    fn big() -> NodeFacts {
        NodeBuilder::new("big")
            .class("high-performance-cpu")
            .cpus(32)
            .memory_mib(65536)
            .build()
    }
    fn mid() -> NodeFacts {
        NodeBuilder::new("mid")
            .class("balanced")
            .cpus(8)
            .memory_mib(16384)
            .build()
    }
    fn small() -> NodeFacts {
        NodeBuilder::new("small")
            .class("memory-constrained")
            .cpus(2)
            .memory_mib(4096)
            .build()
    }

    #[test]
    fn profiles_follow_class_targets_and_pins() {
        // (node, profile selection, memory limit, expected profile)
        let table = [
            (
                gpu(),
                ProfileSelection::Auto,
                "2Gi",
                Profile::GPUAccelerated,
            ),
            (
                big(),
                ProfileSelection::Auto,
                "2Gi",
                Profile::HighPerformanceCPU,
            ),
            (mid(), ProfileSelection::Auto, "2Gi", Profile::Balanced),
            (
                small(),
                ProfileSelection::Auto,
                "2Gi",
                Profile::MemoryConstrained,
            ),
            (
                gpu(),
                ProfileSelection::Auto,
                "512Mi",
                Profile::MemoryConstrained,
            ),
            (
                big(),
                ProfileSelection::Auto,
                "512Mi",
                Profile::MemoryConstrained,
            ),
            (
                big(),
                ProfileSelection::Balanced,
                "512Mi",
                Profile::Balanced,
            ),
            (
                small(),
                ProfileSelection::HighPerformanceCPU,
                "2Gi",
                Profile::HighPerformanceCPU,
            ),
            (
                mid(),
                ProfileSelection::GPUAccelerated,
                "2Gi",
                Profile::GPUAccelerated,
            ),
        ];
        for (node, selection, limit, expected) in table {
            let ps = PolicyServiceBuilder::new("ps")
                .memory_limit(limit)
                .profile(selection)
                .build();
            let plan = plan_for(&ps, std::slice::from_ref(&node), &[]);
            assert_eq!(
                plan.assignments.len(),
                1,
                "{}: {:?}",
                node.name,
                plan.excluded
            );
            assert_eq!(
                plan.assignments[0].profile, expected,
                "{} {selection:?} {limit}",
                node.name
            );
            assert_eq!(plan.assignments[0].object.spec.profile, expected);
        }
    }

    #[test]
    fn nodes_are_chosen_by_serving_then_class_then_name() {
        let ps = PolicyServiceBuilder::new("ps").replicas(2, 2).build();
        let nodes = [small(), mid(), big(), gpu()];
        let chosen: Vec<String> = plan_for(&ps, &nodes, &[])
            .assignments
            .into_iter()
            .map(|a| a.node)
            .collect();
        assert_eq!(chosen, ["gpu", "big"]);
        let serving_on_mid = ProfileBuilder::for_node(&ps, "mid").serving().build();
        let chosen: Vec<String> = plan_for(&ps, &nodes, &[serving_on_mid])
            .assignments
            .into_iter()
            .map(|a| a.node)
            .collect();
        assert_eq!(chosen, ["mid", "gpu"], "a serving node keeps its place");
    }

    #[test]
    fn eligibility_excludes_small_memory_and_gpu_only_pins_but_never_int8() {
        // (node, spec changes, eligible)
        let with = |b: PolicyServiceBuilder| b.build();
        let table: Vec<(NodeFacts, PolicyService, bool)> = vec![
            (
                small(),
                with(PolicyServiceBuilder::new("ps").memory_limit("8Gi")),
                false,
            ),
            (
                small(),
                with(PolicyServiceBuilder::new("ps").memory_limit("4Gi")),
                true,
            ),
            (
                NodeBuilder::new("unlabelled-memory")
                    .class("balanced")
                    .build(),
                with(PolicyServiceBuilder::new("ps").memory_limit("64Gi")),
                true,
            ),
            (
                mid(),
                with(PolicyServiceBuilder::new("ps").pin_providers(vec![ExecutionProvider::Cuda])),
                false,
            ),
            (
                gpu(),
                with(PolicyServiceBuilder::new("ps").pin_providers(vec![ExecutionProvider::Cuda])),
                true,
            ),
            (
                mid(),
                with(
                    PolicyServiceBuilder::new("ps")
                        .pin_providers(vec![ExecutionProvider::Cuda, ExecutionProvider::Cpu]),
                ),
                true,
            ),
            (
                mid(),
                with(PolicyServiceBuilder::new("ps").pin_precision(Precision::Fp16)),
                false,
            ),
            (
                gpu(),
                with(PolicyServiceBuilder::new("ps").pin_precision(Precision::Fp16)),
                true,
            ),
            (
                mid(),
                with(
                    PolicyServiceBuilder::new("ps")
                        .variant(Precision::Int8)
                        .pin_precision(Precision::Int8),
                ),
                true,
            ),
            (
                NodeBuilder::new("odd").class("turbo").build(),
                with(PolicyServiceBuilder::new("ps")),
                false,
            ),
        ];
        for (node, ps, eligible) in table {
            let plan = plan_for(&ps, std::slice::from_ref(&node), &[]);
            assert_eq!(
                plan.eligible == 1,
                eligible,
                "{}: {:?}",
                node.name,
                plan.excluded
            );
            assert_eq!(plan.excluded.len(), usize::from(!eligible));
        }
    }

    #[test]
    fn an_exclusion_says_why_with_the_figures() {
        let ps = PolicyServiceBuilder::new("ps").memory_limit("8Gi").build();
        let plan = plan_for(&ps, &[small()], &[]);
        assert_eq!(
            plan.excluded[0].reason,
            "memory-usable-mib 4096 < memoryLimit 8192 MiB"
        );
    }

    #[test]
    fn the_node_selector_narrows_the_candidates() {
        let ps = PolicyServiceBuilder::new("ps")
            .node_selector("pool", "inference")
            .build();
        let selected = NodeBuilder::new("in")
            .class("balanced")
            .label("pool", "inference")
            .build();
        let plan = plan_for(&ps, &[selected, mid()], &[]);
        assert_eq!(plan.unselected, 1);
        assert_eq!(plan.assignments[0].node, "in");
    }

    #[test]
    fn profiles_carry_names_labels_owner_and_per_node_throughput() {
        let ps = PolicyServiceBuilder::new("lander")
            .throughput(6000.0)
            .replicas(3, 3)
            .build();
        let plan = plan_for(&ps, &[gpu(), big(), mid()], &[]);
        let first = &plan.assignments[0].object;
        assert_eq!(first.metadata.name.as_deref(), Some("lander-gpu"));
        assert_eq!(first.metadata.namespace.as_deref(), Some("robots"));
        let labels = first.metadata.labels.clone().unwrap();
        assert_eq!(labels[NODE_LABEL], "gpu");
        assert_eq!(labels[POLICY_SERVICE_LABEL], "lander");
        let owner = &first.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("PolicyService", Some(true))
        );
        assert_eq!(first.spec.targets.throughput_rps, Some(2000.0));
        assert_eq!(first.spec.tuning_budget_seconds, 30);
        assert_eq!(first.spec.model, ps.spec.model);
    }

    #[test]
    fn pins_narrow_the_search_space_to_the_pinned_values() {
        let ps = PolicyServiceBuilder::new("ps")
            .pin_providers(vec![ExecutionProvider::Cpu])
            .pin_batch(16)
            .pin_threads(2)
            .build();
        let space = &plan_for(&ps, &[big()], &[]).assignments[0]
            .object
            .spec
            .search_space;
        assert_eq!(
            space.execution_providers,
            vec![vec![ExecutionProvider::Cpu]]
        );
        assert_eq!(space.max_batch_sizes, vec![16]);
        assert_eq!(space.intra_op_threads, vec![2]);
        assert_eq!(space.precisions, vec![Precision::Fp32]);
    }

    #[test]
    fn int8_variants_reach_the_search_space_on_vnni_nodes() {
        let ps = PolicyServiceBuilder::new("ps")
            .variant(Precision::Int8)
            .build();
        let vnni = NodeBuilder::new("vnni")
            .class("high-performance-cpu")
            .cpus(16)
            .vnni()
            .build();
        let space = &plan_for(&ps, &[vnni], &[]).assignments[0]
            .object
            .spec
            .search_space;
        assert_eq!(space.precisions, vec![Precision::Fp32, Precision::Int8]);
    }

    #[test]
    fn measured_capacity_of_serving_profiles_drives_the_replica_count() {
        let ps = PolicyServiceBuilder::new("ps")
            .throughput(5000.0)
            .replicas(1, 10)
            .build();
        let measured = ProfileBuilder::for_node(&ps, "big")
            .serving()
            .capacity(2000.0, 1.0, 100.0)
            .build();
        // Only "big" has measured, and no other node shares its class: the others count 0
        // (estimated), so 6000 rps needs every node allowed.
        let plan = plan_for(
            &ps,
            &[gpu(), big(), mid(), small()],
            std::slice::from_ref(&measured),
        );
        assert_eq!(plan.scaling.desired, 4, "{}", plan.scaling.reason);
        assert!(plan.scaling.reason.contains("(estimated: unmeasured)"));
        let nodes: Vec<&str> = plan.assignments.iter().map(|a| a.node.as_str()).collect();
        assert_eq!(nodes, ["big", "gpu", "mid", "small"]);
        // A second node of big's class counts as big's capacity: 2000 + 2000 + 2000 = 6000.
        let twin = NodeBuilder::new("twin")
            .class("high-performance-cpu")
            .cpus(32)
            .memory_mib(65536)
            .build();
        let plan = plan_for(&ps, &[twin, big(), small()], &[measured]);
        let nodes: Vec<&str> = plan.assignments.iter().map(|a| a.node.as_str()).collect();
        assert_eq!(plan.scaling.desired, 3, "{}", plan.scaling.reason);
        assert_eq!(nodes, ["big", "twin", "small"]);
        assert!(
            plan.scaling
                .reason
                .contains("twin 2000 (estimated: lowest measured high-performance-cpu)"),
            "{}",
            plan.scaling.reason
        );
        assert!(plan.assignments[0].why.starts_with("already serving"));
    }
}
