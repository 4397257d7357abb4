//! Which eligible nodes serve first, and why: nodes already serving keep their place (so
//! placement does not churn), then nodes that have measured this model, by capacity per usable
//! CPU (per GPU on GPU nodes), then the rest by hardware class. Each ranked node carries the
//! capacity it would add to the scaling sum, measured or estimated.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use policyserve_crds::{HardwareClass, OptimizationProfile, PolicyService, Quantile};

use super::desired::{is_serving, reports_serving};
use super::liveness::Liveness;
use super::node::NodeFacts;
use super::scaling::{Candidate, Estimate};

/// This model's measured capacity on each node, requests per second: from every
/// OptimizationProfile in view that serves the same model files at the same latency targets
/// (capacities at other targets are not comparable), the newest measurement per node.
pub type ModelCapacities = BTreeMap<String, f64>;

/// The capacities `profiles` report for `ps`'s model.
pub fn model_capacities(
    ps: &PolicyService,
    profiles: &[Arc<OptimizationProfile>],
) -> ModelCapacities {
    let same_latency = |p: &OptimizationProfile| {
        Quantile::ALL
            .iter()
            .all(|q| p.spec.targets.latency_ms(*q) == ps.spec.targets.latency_ms(*q))
    };
    let mut newest: BTreeMap<String, (Option<jiff::Timestamp>, f64)> = BTreeMap::new();
    for profile in profiles {
        let Some(capacity) = profile.status.as_ref().and_then(|s| s.capacity.as_ref()) else {
            continue;
        };
        if profile.spec.model != ps.spec.model || !same_latency(profile) {
            continue;
        }
        let at = capacity.measured_at.as_ref().map(|t| t.0);
        let entry = newest
            .entry(profile.spec.node_name.clone())
            .or_insert((at, capacity.throughput_rps));
        if at > entry.0 {
            *entry = (at, capacity.throughput_rps);
        }
    }
    newest
        .into_iter()
        .map(|(node, (_, rps))| (node, rps))
        .collect()
}

/// An eligible node in preference order, with why it stands there.
#[derive(Clone, Debug)]
pub struct Ranked<'a> {
    /// The node.
    pub node: &'a NodeFacts,
    /// Its hardware class.
    pub class: HardwareClass,
    /// Why it ranks where it does, in a few words with figures.
    pub why: String,
    /// What it would add to the scaling sum.
    pub candidate: Candidate,
}

/// Where a node stands, most preferred first.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
enum Standing {
    /// Serving this PolicyService now.
    Serving,
    /// Holding one of its profiles (loading or tuning).
    Planned,
    /// Has measured this model: by capacity per CPU (or GPU), higher first.
    Measured(Descending),
    /// Nothing measured: by class.
    Unmeasured(u8),
    /// Its agent stopped renewing its Lease: last, whatever it measured before.
    Lost,
}

/// An f64 that orders from high to low.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Descending(f64);

impl PartialOrd for Descending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        other.0.partial_cmp(&self.0)
    }
}

/// Ranks `eligible` nodes for a PolicyService whose profiles are `owned` (by node).
pub fn rank<'a>(
    eligible: Vec<(&'a NodeFacts, HardwareClass)>,
    owned: &HashMap<&str, &OptimizationProfile>,
    liveness: &Liveness,
    measured: &ModelCapacities,
) -> Vec<Ranked<'a>> {
    // The lowest capacity measured per class: what an unmeasured node of that class is
    // counted as (conservative: the class's worst case seen).
    let mut lowest: HashMap<HardwareClass, f64> = HashMap::new();
    for (node, class) in &eligible {
        if let Some(rps) = measured.get(&node.name) {
            let entry = lowest.entry(*class).or_insert(*rps);
            *entry = entry.min(*rps);
        }
    }
    let mut ranked: Vec<(Standing, Ranked)> = eligible
        .into_iter()
        .map(|(node, class)| {
            let profile = owned.get(node.name.as_str()).copied();
            let measured_rps = measured.get(&node.name).copied();
            let (per, unit) = if node.has_gpu() {
                (node.gpu_count.max(1), "GPU")
            } else {
                (node.capacity.usable_cpus.max(1), "CPU")
            };
            let efficiency = measured_rps.map(|rps| rps / f64::from(per));
            let lost = liveness.is_lost(&node.name);
            let standing = match (profile, efficiency) {
                _ if lost => Standing::Lost,
                (Some(p), _) if is_serving(p, liveness) => Standing::Serving,
                (Some(p), _) if !reports_serving(p) => Standing::Planned,
                (_, Some(e)) => Standing::Measured(Descending(e)),
                _ => Standing::Unmeasured(class_rank(class)),
            };
            let figures = match (measured_rps, efficiency) {
                (Some(rps), Some(e)) => {
                    format!("{rps:.0} rps measured for this model, {e:.0} per {unit}")
                }
                _ => "not yet measured for this model".to_owned(),
            };
            let why = match standing {
                Standing::Serving => format!("already serving ({figures})"),
                Standing::Planned => format!("already planned ({figures})"),
                Standing::Measured(_) => figures,
                Standing::Unmeasured(_) => format!("{figures}; ranked by class ({class})"),
                Standing::Lost => format!(
                    "agent lost: its Lease is {} s old ({figures})",
                    liveness.age_seconds(&node.name).unwrap_or_default()
                ),
            };
            let capacity = match (measured_rps, lowest.get(&class)) {
                _ if lost => Estimate::Lost,
                (Some(rps), _) => Estimate::Measured(rps),
                (None, Some(rps)) => Estimate::Estimated { rps: *rps, class },
                (None, None) => Estimate::Unknown,
            };
            let candidate = Candidate {
                node: node.name.clone(),
                capacity,
            };
            (
                standing,
                Ranked {
                    node,
                    class,
                    why,
                    candidate,
                },
            )
        })
        .collect();
    // The name breaks ties, so that equal nodes are chosen the same way every time.
    ranked.sort_by(|(a, x), (b, y)| {
        a.partial_cmp(b)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| x.node.name.cmp(&y.node.name))
    });
    ranked.into_iter().map(|(_, r)| r).collect()
}

/// Preference among classes for serving: faster hardware first.
fn class_rank(class: HardwareClass) -> u8 {
    match class {
        HardwareClass::GpuAccelerated => 0,
        HardwareClass::HighPerformanceCpu => 1,
        HardwareClass::Balanced => 2,
        HardwareClass::MemoryConstrained => 3,
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;
    use crate::controller::fixtures::{NodeBuilder, PolicyServiceBuilder, ProfileBuilder};

    fn cpu(name: &str, cpus: u32, class: &str) -> NodeFacts {
        NodeBuilder::new(name)
            .class(class)
            .cpus(cpus)
            .memory_mib(16384)
            .build()
    }

    fn order(ranked: &[Ranked]) -> Vec<String> {
        ranked.iter().map(|r| r.node.name.clone()).collect()
    }

    #[test]
    fn measured_nodes_rank_by_capacity_per_cpu_and_unmeasured_ones_by_class_after_them() {
        let nodes = [
            cpu("big", 32, "high-performance-cpu"),
            cpu("small", 4, "balanced"),
            cpu("new-fast", 32, "high-performance-cpu"),
            cpu("new-slow", 4, "balanced"),
        ];
        let eligible = nodes.iter().map(|n| (n, n.class().unwrap())).collect();
        // 32 CPUs at 8000 rps is 250 per CPU; 4 CPUs at 2000 is 500 per CPU.
        let measured = ModelCapacities::from([("big".into(), 8000.0), ("small".into(), 2000.0)]);
        let live = Liveness::all([], Timestamp::UNIX_EPOCH);
        let ranked = rank(eligible, &HashMap::new(), &live, &measured);
        assert_eq!(order(&ranked), ["small", "big", "new-fast", "new-slow"]);
        assert!(
            ranked[0]
                .why
                .contains("2000 rps measured for this model, 500 per CPU")
        );
        assert!(
            ranked[2].why.contains("ranked by class"),
            "{}",
            ranked[2].why
        );
        // An unmeasured node counts as the lowest capacity measured in its class.
        assert_eq!(
            ranked[2].candidate.capacity,
            Estimate::Estimated {
                rps: 8000.0,
                class: HardwareClass::HighPerformanceCpu
            }
        );
    }

    #[test]
    fn a_serving_node_keeps_its_place_over_a_better_measured_one() {
        let ps = PolicyServiceBuilder::new("ps").build();
        let nodes = [cpu("old", 16, "balanced"), cpu("better", 4, "balanced")];
        let serving = ProfileBuilder::for_node(&ps, "old")
            .serving()
            .capacity(1000.0, 1.0, 10.0)
            .build();
        let owned = HashMap::from([("old", &serving)]);
        let measured = ModelCapacities::from([("old".into(), 1000.0), ("better".into(), 4000.0)]);
        let live = Liveness::all(["old"], Timestamp::UNIX_EPOCH);
        let eligible = nodes.iter().map(|n| (n, n.class().unwrap())).collect();
        let ranked = rank(eligible, &owned, &live, &measured);
        assert_eq!(order(&ranked), ["old", "better"]);
        assert!(ranked[0].why.starts_with("already serving"));
    }

    #[test]
    fn a_node_whose_agent_was_lost_ranks_last_and_counts_nothing() {
        let ps = PolicyServiceBuilder::new("ps").build();
        let nodes = [cpu("dead", 16, "balanced"), cpu("fresh", 4, "balanced")];
        let serving = ProfileBuilder::for_node(&ps, "dead")
            .serving()
            .capacity(4000.0, 1.0, 10.0)
            .build();
        let owned = HashMap::from([("dead", &serving)]);
        let measured = ModelCapacities::from([("dead".into(), 4000.0)]);
        // "dead" renewed a minute ago (the timeout is 40 s); "fresh" has no Lease yet.
        let now = Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(3600);
        let before = now - jiff::SignedDuration::from_secs(60);
        let live = Liveness::renewed([("dead", before)], now);
        let eligible = nodes.iter().map(|n| (n, n.class().unwrap())).collect();
        let ranked = rank(eligible, &owned, &live, &measured);
        assert_eq!(order(&ranked), ["fresh", "dead"]);
        assert_eq!(ranked[1].candidate.capacity, Estimate::Lost);
        assert!(
            ranked[1]
                .why
                .starts_with("agent lost: its Lease is 60 s old"),
            "{}",
            ranked[1].why
        );
        // The live node of the same class counts as what the lost one measured.
        assert_eq!(
            ranked[0].candidate.capacity,
            Estimate::Estimated {
                rps: 4000.0,
                class: HardwareClass::Balanced
            }
        );
    }

    #[test]
    fn capacities_come_from_profiles_of_the_same_model_and_latency_targets_only() {
        let ps = PolicyServiceBuilder::new("ps").latency_p99(5.0).build();
        let other_targets = PolicyServiceBuilder::new("other").latency_p99(1.0).build();
        let profiles: Vec<Arc<OptimizationProfile>> = [
            ProfileBuilder::for_node(&ps, "a")
                .capacity(3000.0, 1.0, 10.0)
                .build(),
            ProfileBuilder::for_node(&other_targets, "b")
                .capacity(9000.0, 1.0, 10.0)
                .build(),
        ]
        .into_iter()
        .map(Arc::new)
        .collect();
        let capacities = model_capacities(&ps, &profiles);
        assert_eq!(capacities, ModelCapacities::from([("a".into(), 3000.0)]));
    }
}
