//! The scaling decision: how many nodes serve a PolicyService, from the capacity each adds.
//! Pure, so every case is a table row in the tests below.
//!
//! `needed = max(targets.throughputRps, demand) × (1 + headroomPercent/100)`, where demand is
//! what clients sent (answered plus rejected requests per second). The eligible nodes, in
//! preference order, add their own capacities (heterogeneous nodes are not averaged): a node
//! that has measured the model adds its capacity; one that has not adds the lowest capacity
//! measured on a node of its hardware class, marked estimated, else 0. Desired is the fewest
//! nodes whose capacities cover `needed`, within [minReplicas, maxReplicas] and the eligible
//! nodes. Scale-up is immediate; a lower count must be recommended for the whole stabilization
//! window first (the HorizontalPodAutoscaler's rule), and since a count is only recommended when
//! its nodes cover demand with headroom, scaling in never leaves demand uncovered (the
//! oscillation NVIDIA Dynamo's planner fixed by checking the remaining capacity before scaling
//! in).

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use policyserve_crds::HardwareClass;

/// What one eligible node would add.
#[derive(Clone, Debug, PartialEq)]
pub enum Estimate {
    /// The node's measured capacity for this model at its targets.
    Measured(f64),
    /// The lowest capacity measured on another node of the same class.
    Estimated {
        /// Requests per second.
        rps: f64,
        /// The class it was taken from.
        class: HardwareClass,
    },
    /// Nothing measured on this node or its class: counts as 0.
    Unknown,
    /// The node's agent stopped renewing its Lease: whatever it measured, it serves nothing
    /// now, so it counts as 0.
    Lost,
}

impl Estimate {
    fn rps(&self) -> f64 {
        match self {
            Self::Measured(rps) | Self::Estimated { rps, .. } => *rps,
            Self::Unknown | Self::Lost => 0.0,
        }
    }

    /// Whether this is a figure at all (measured here or on the node's class).
    fn is_known(&self) -> bool {
        matches!(self, Self::Measured(_) | Self::Estimated { .. })
    }

    fn describe(&self, node: &str) -> String {
        match self {
            Self::Measured(rps) => format!("{node} {rps:.0}"),
            Self::Estimated { rps, class } => {
                format!("{node} {rps:.0} (estimated: lowest measured {class})")
            }
            Self::Unknown => format!("{node} 0 (estimated: unmeasured)"),
            Self::Lost => format!("{node} 0 (agent lost)"),
        }
    }
}

/// An eligible node and what it would add, in preference order.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Node name.
    pub node: String,
    /// Its capacity, measured or estimated.
    pub capacity: Estimate,
}

/// What the decision depends on.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingInput {
    /// `spec.placement.minReplicas` (validated ≥ 1).
    pub min_replicas: u32,
    /// `spec.placement.maxReplicas` (validated ≥ min).
    pub max_replicas: u32,
    /// `spec.placement.headroomPercent`.
    pub headroom_percent: u32,
    /// `spec.targets.throughputRps`, summed over nodes.
    pub target_rps: Option<f64>,
    /// Answered plus rejected requests per second over the serving nodes' last windows.
    pub demand_rps: Option<f64>,
    /// The eligible nodes, most preferred first.
    pub candidates: Vec<Candidate>,
    /// The previous decision, before eligibility clamping, if any.
    pub current: Option<u32>,
}

/// The decision.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingDecision {
    /// Nodes to serve on.
    pub desired: u32,
    /// Why, with the arithmetic.
    pub reason: String,
    /// When to look again because a scale-down is waiting out the window.
    pub recheck_after: Option<Duration>,
    /// Set when even the most nodes allowed cannot reach the throughput target.
    pub unreachable: Option<String>,
}

/// Recommendations seen within the stabilization window: for each replica count, the last time
/// it was recommended (an older time for the same count never decides anything).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    last_recommended: BTreeMap<u32, Timestamp>,
}

impl History {
    /// A history that starts with `replicas` recommended at `at` (after a restart, so the
    /// operator does not scale down before a full window has passed).
    pub fn seeded(replicas: u32, at: Timestamp) -> Self {
        Self {
            last_recommended: BTreeMap::from([(replicas, at)]),
        }
    }
}

/// How many node terms a reason spells out before it says "and N more".
const TERMS: usize = 6;

/// The recommendation before stabilization and eligibility: (replicas, reason).
fn recommend(input: &ScalingInput) -> (u32, String) {
    let min = input.min_replicas;
    let max = input.max_replicas.max(min);
    let demand = input.demand_rps.filter(|d| d.is_finite() && *d > 0.0);
    let wanted = match (input.target_rps, demand) {
        (None, None) => {
            return (
                min,
                format!("no throughput target and no demand: minReplicas {min}"),
            );
        }
        (target, demand) => target.unwrap_or(0.0).max(demand.unwrap_or(0.0)),
    };
    let headroom = 1.0 + f64::from(input.headroom_percent) / 100.0;
    let needed = wanted * headroom;
    let needed_text = format!(
        "needed = max(target {}, demand {}) × {headroom:.2} = {needed:.0} rps",
        input
            .target_rps
            .map_or_else(|| "none".to_owned(), |t| format!("{t:.0}")),
        demand.map_or_else(|| "unmeasured".to_owned(), |d| format!("{d:.0}")),
    );
    if !input.candidates.iter().any(|c| c.capacity.is_known()) {
        let keep = input.current.unwrap_or(min).clamp(min, max);
        return (
            keep,
            format!("{needed_text}; keeping {keep} until agents measure capacity"),
        );
    }
    let allowed = input.candidates.iter().take(max as usize);
    let mut sum = 0.0;
    let mut terms = Vec::new();
    let mut covered = None;
    for (i, candidate) in allowed.enumerate() {
        sum += candidate.capacity.rps();
        terms.push(candidate.capacity.describe(&candidate.node));
        if sum >= needed {
            covered = Some(i as u32 + 1);
            break;
        }
    }
    let count = terms.len() as u32;
    let shown = match terms.len().saturating_sub(TERMS) {
        0 => terms.join(" + "),
        more => format!("{} + {more} more", terms[..TERMS].join(" + ")),
    };
    let bounds = format!("[minReplicas {min}, maxReplicas {max}]");
    match covered {
        Some(nodes) if nodes >= min => (
            nodes,
            format!("{needed_text}; {shown} = {sum:.0} rps ≥ needed: {nodes} nodes {bounds}"),
        ),
        Some(nodes) => (
            min,
            format!(
                "{needed_text}; {shown} = {sum:.0} rps ≥ needed with {nodes}, raised to \
                 minReplicas {min} {bounds}"
            ),
        ),
        None => (
            count.max(min),
            format!(
                "{needed_text}; all {count} allowed nodes: {shown} = {sum:.0} rps < needed \
                 {bounds}"
            ),
        ),
    }
}

/// The highest recommendation within the window, after recording `recommended` at `now`, and
/// how long until the window lets a lower count through.
fn stabilize(
    history: &mut History,
    now: Timestamp,
    window: Duration,
    recommended: u32,
) -> (u32, Option<Duration>) {
    let window = jiff::SignedDuration::try_from(window).unwrap_or(jiff::SignedDuration::MAX);
    history.last_recommended.insert(recommended, now);
    history
        .last_recommended
        .retain(|_, at| now.duration_since(*at) < window || *at == now);
    let highest = history
        .last_recommended
        .keys()
        .next_back()
        .copied()
        .unwrap_or(recommended);
    if highest <= recommended {
        return (recommended, None);
    }
    // The count drops once every higher recommendation has aged out of the window.
    let latest_higher = history
        .last_recommended
        .range(recommended + 1..)
        .map(|(_, at)| *at)
        .max()
        .unwrap_or(now);
    let remaining = window - now.duration_since(latest_higher);
    let remaining = Duration::try_from(remaining).unwrap_or(Duration::ZERO);
    (highest, Some(remaining))
}

/// The scaling decision for one reconcile; updates `history`.
pub fn decide(
    input: &ScalingInput,
    history: &mut History,
    now: Timestamp,
    window: Duration,
) -> ScalingDecision {
    let (recommended, mut reason) = recommend(input);
    let (stabilized, recheck_after) = stabilize(history, now, window, recommended);
    if stabilized > recommended {
        reason = format!(
            "holding {stabilized} for the scale-down stabilization window ({}s) before {recommended}: {reason}",
            window.as_secs()
        );
    }
    let eligible = u32::try_from(input.candidates.len()).unwrap_or(u32::MAX);
    let desired = stabilized.min(eligible);
    if desired < stabilized {
        reason.push_str(&format!("; only {eligible} eligible nodes"));
    }
    ScalingDecision {
        desired,
        reason,
        recheck_after,
        unreachable: unreachable(input),
    }
}

/// Why the throughput target is out of reach, when even the most nodes allowed (measured or
/// estimated) fall short of it.
fn unreachable(input: &ScalingInput) -> Option<String> {
    let target = input.target_rps?;
    if !input.candidates.iter().any(|c| c.capacity.is_known()) {
        return None;
    }
    let most = input.candidates.len().min(input.max_replicas as usize);
    let capacity: f64 = input
        .candidates
        .iter()
        .take(most)
        .map(|c| c.capacity.rps())
        .sum();
    (capacity < target).then(|| {
        let limit = if input.max_replicas as usize <= input.candidates.len() {
            format!("maxReplicas {}", input.max_replicas)
        } else {
            format!("all {most} eligible nodes")
        };
        format!("even {limit} add up to {capacity:.0} rps capacity < target {target:.0} rps")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn measured(rps: &[f64]) -> Vec<Candidate> {
        rps.iter()
            .enumerate()
            .map(|(i, rps)| Candidate {
                node: format!("n{i}"),
                capacity: Estimate::Measured(*rps),
            })
            .collect()
    }

    fn input(target: Option<f64>, capacities: &[f64]) -> ScalingInput {
        ScalingInput {
            min_replicas: 1,
            max_replicas: 10,
            headroom_percent: 20,
            target_rps: target,
            demand_rps: None,
            candidates: measured(capacities),
            current: None,
        }
    }

    fn decide_now(input: &ScalingInput) -> ScalingDecision {
        decide(
            input,
            &mut History::default(),
            at(0),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn nodes_add_their_own_capacities_in_preference_order_until_needed_is_covered() {
        // (target, demand, capacities in order, min, max, expected desired)
        type Row<'a> = (Option<f64>, Option<f64>, &'a [f64], u32, u32, u32);
        let table: &[Row] = &[
            (None, None, &[2000.0; 5], 2, 5, 2), // nothing asked: minReplicas
            (Some(5000.0), None, &[2000.0; 5], 1, 10, 3), // 6000: 2000 × 3
            (
                Some(5000.0),
                None,
                &[4000.0, 1000.0, 1000.0, 1000.0],
                1,
                10,
                3,
            ), // 4000+1000+1000
            (Some(5000.0), None, &[1000.0, 4000.0, 4000.0], 1, 10, 3), // order decides: 1000+4000+4000
            (Some(100.0), None, &[20000.0; 3], 2, 10, 2),              // raised to minReplicas
            (Some(50000.0), None, &[1000.0; 20], 1, 10, 10),           // capped at maxReplicas
            (Some(50000.0), None, &[1000.0; 4], 1, 10, 4),             // every eligible node
            (Some(5000.0), None, &[], 1, 10, 0),                       // nothing eligible
            (Some(5000.0), None, &[0.0; 4], 2, 10, 4), // capacity 0: every node allowed
            (None, Some(5000.0), &[2000.0; 5], 1, 10, 3), // demand alone: 6000
            (Some(1000.0), Some(5000.0), &[2000.0; 5], 1, 10, 3), // demand above the target
            (Some(5000.0), Some(100.0), &[2000.0; 5], 1, 10, 3), // the target above demand
        ];
        for (i, (target, demand, capacities, min, max, expected)) in table.iter().enumerate() {
            let input = ScalingInput {
                min_replicas: *min,
                max_replicas: *max,
                demand_rps: *demand,
                ..input(*target, capacities)
            };
            let decision = decide_now(&input);
            assert_eq!(decision.desired, *expected, "row {i}: {}", decision.reason);
        }
    }

    #[test]
    fn the_reason_shows_needed_demand_headroom_each_node_and_the_bounds() {
        let input = ScalingInput {
            demand_rps: Some(1200.0),
            candidates: vec![
                Candidate {
                    node: "a".into(),
                    capacity: Estimate::Measured(4000.0),
                },
                Candidate {
                    node: "b".into(),
                    capacity: Estimate::Estimated {
                        rps: 2500.0,
                        class: HardwareClass::HighPerformanceCpu,
                    },
                },
            ],
            ..input(Some(5000.0), &[])
        };
        let decision = decide_now(&input);
        assert_eq!(decision.desired, 2);
        assert_eq!(
            decision.reason,
            "needed = max(target 5000, demand 1200) × 1.20 = 6000 rps; a 4000 + b 2500 \
             (estimated: lowest measured high-performance-cpu) = 6500 rps ≥ needed: 2 nodes \
             [minReplicas 1, maxReplicas 10]"
        );
    }

    #[test]
    fn without_measurements_the_current_count_is_kept() {
        let unmeasured = vec![
            Candidate {
                node: "a".into(),
                capacity: Estimate::Unknown,
            };
            5
        ];
        let input = ScalingInput {
            current: Some(4),
            candidates: unmeasured,
            ..input(Some(5000.0), &[])
        };
        let decision = decide_now(&input);
        assert_eq!(decision.desired, 4, "{}", decision.reason);
        assert!(decision.reason.contains("until agents measure capacity"));
    }

    #[test]
    fn scale_up_is_immediate_and_scale_down_waits_for_the_window() {
        let window = Duration::from_secs(60);
        let mut history = History::default();
        let high = input(Some(5000.0), &[1000.0; 10]); // 6 nodes
        let low = input(Some(5000.0), &[3000.0; 10]); // 2 nodes
        assert_eq!(decide(&low, &mut history, at(0), window).desired, 2);
        assert_eq!(
            decide(&high, &mut history, at(5), window).desired,
            6,
            "up at once"
        );
        let held = decide(&low, &mut history, at(10), window);
        assert_eq!(held.desired, 6, "{}", held.reason);
        assert_eq!(held.recheck_after, Some(Duration::from_secs(55)));
        assert!(held.reason.starts_with("holding 6"), "{}", held.reason);
        assert_eq!(decide(&low, &mut history, at(64), window).desired, 6);
        let down = decide(&low, &mut history, at(65), window);
        assert_eq!(down.desired, 2, "{}", down.reason);
        assert_eq!(down.recheck_after, None);
    }

    #[test]
    fn demand_that_comes_and_goes_neither_flaps_nor_leaves_demand_uncovered() {
        let window = Duration::from_secs(60);
        let mut history = History::default();
        let load = |demand: f64| ScalingInput {
            demand_rps: Some(demand),
            ..input(None, &[1000.0; 10])
        };
        let mut decisions = Vec::new();
        // Demand swinging every 5 s between 5000 and 500 for a minute, then gone for good.
        for i in 0..12 {
            let demand = if i % 2 == 0 { 5000.0 } else { 500.0 };
            decisions.push(decide(&load(demand), &mut history, at(i * 5), window).desired);
        }
        assert!(decisions.iter().all(|d| *d == 6), "{decisions:?}");
        let quiet: Vec<u32> = (12..40)
            .map(|i| decide(&load(500.0), &mut history, at(i * 5), window).desired)
            .collect();
        assert!(
            quiet.windows(2).all(|w| w[1] <= w[0]),
            "only down: {quiet:?}"
        );
        assert_eq!(quiet.last(), Some(&1), "500 × 1.2 fits one node: {quiet:?}");
        // Every count decided covers the demand it was decided for, with headroom.
        assert!(quiet.iter().all(|d| f64::from(*d) * 1000.0 >= 500.0 * 1.2));
    }

    #[test]
    fn a_seeded_history_holds_the_previous_count_after_a_restart() {
        let mut history = History::seeded(5, at(0));
        let low = input(Some(5000.0), &[3000.0; 10]);
        assert_eq!(
            decide(&low, &mut history, at(30), Duration::from_secs(60)).desired,
            5
        );
        assert_eq!(
            decide(&low, &mut history, at(61), Duration::from_secs(60)).desired,
            2
        );
    }

    #[test]
    fn an_unreachable_target_is_reported_with_the_numbers() {
        let capped = ScalingInput {
            max_replicas: 3,
            ..input(Some(10000.0), &[1000.0; 10])
        };
        assert_eq!(
            decide_now(&capped).unreachable.as_deref(),
            Some("even maxReplicas 3 add up to 3000 rps capacity < target 10000 rps")
        );
        let few_nodes = input(Some(10000.0), &[1000.0; 2]);
        assert!(
            decide_now(&few_nodes)
                .unreachable
                .unwrap()
                .starts_with("even all 2 eligible nodes")
        );
        assert_eq!(
            decide_now(&input(Some(5000.0), &[1000.0; 10])).unreachable,
            None
        );
    }
}
