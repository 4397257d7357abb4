//! The scaling decision: how many nodes serve a PolicyService. Pure, so every case is a table
//! row in the tests below.
//!
//! Until an agent has measured capacity the count stays where it is (minReplicas at first); a
//! measured capacity of 0 (no rate held the latency targets) plans maxReplicas.
//! Once measured: `ceil(targetRps × (1 + headroom) ÷ capacity rps per node)`, clamped to
//! [minReplicas, maxReplicas] and then to the eligible nodes. Scale-up is immediate; scale-down
//! waits until the lower count has been recommended for the whole stabilization window (the
//! HorizontalPodAutoscaler's rule: the highest recommendation within the window wins).

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

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
    /// Capacity at the targets of each serving node that has measured it.
    pub measured_rps: Vec<f64>,
    /// The previous decision, before eligibility clamping, if any.
    pub current: Option<u32>,
    /// Nodes that could serve.
    pub eligible: u32,
}

/// The decision.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingDecision {
    /// Nodes to serve on.
    pub desired: u32,
    /// Why, with the figures.
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

/// The recommendation before stabilization and eligibility: (replicas, reason).
fn recommend(input: &ScalingInput) -> (u32, String) {
    let min = input.min_replicas;
    let max = input.max_replicas.max(min);
    let Some(target) = input.target_rps else {
        return (min, format!("no throughput target: minReplicas {min}"));
    };
    let measured: Vec<f64> = input
        .measured_rps
        .iter()
        .copied()
        .filter(|rps| rps.is_finite() && *rps >= 0.0)
        .collect();
    if measured.is_empty() {
        return match input.current {
            Some(current) => (
                current.clamp(min, max),
                format!(
                    "keeping {} until agents measure capacity",
                    current.clamp(min, max)
                ),
            ),
            None => (
                min,
                format!("starting at minReplicas {min} until agents measure capacity"),
            ),
        };
    }
    let per_node = measured.iter().sum::<f64>() / measured.len() as f64;
    let needed = target * (1.0 + f64::from(input.headroom_percent) / 100.0);
    if per_node == 0.0 {
        // Measured, and no rate held the latency targets: no count of such nodes reaches the
        // target, so plan the most allowed while the status says why.
        return (
            max,
            format!(
                "{target:.0} rps target, but the nodes' capacity at the latency targets is 0 \
                 rps: maxReplicas {max}"
            ),
        );
    }
    let raw = (needed / per_node).ceil().max(1.0);
    let replicas = if raw >= f64::from(max) {
        max
    } else {
        (raw as u32).max(min)
    };
    let mut reason = format!(
        "{target:.0} rps target + {}% headroom = {needed:.0} rps ÷ {per_node:.0} rps capacity per node = {raw:.0}",
        input.headroom_percent
    );
    if raw > f64::from(max) {
        reason.push_str(&format!(", capped at maxReplicas {max}"));
    } else if raw < f64::from(min) {
        reason.push_str(&format!(", raised to minReplicas {min}"));
    }
    (replicas, reason)
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
    let desired = stabilized.min(input.eligible);
    if desired < stabilized {
        reason.push_str(&format!("; only {} eligible nodes", input.eligible));
    }
    ScalingDecision {
        desired,
        reason,
        recheck_after,
        unreachable: unreachable(input),
    }
}

fn unreachable(input: &ScalingInput) -> Option<String> {
    let target = input.target_rps?;
    let measured: Vec<f64> = input
        .measured_rps
        .iter()
        .copied()
        .filter(|rps| rps.is_finite() && *rps >= 0.0)
        .collect();
    if measured.is_empty() {
        return None;
    }
    let per_node = measured.iter().sum::<f64>() / measured.len() as f64;
    let most = input.max_replicas.min(input.eligible);
    let capacity = per_node * f64::from(most);
    (capacity < target).then(|| {
        let limit = if input.max_replicas <= input.eligible {
            format!("maxReplicas {}", input.max_replicas)
        } else {
            format!("all {} eligible nodes", input.eligible)
        };
        format!(
            "even {limit} × {per_node:.0} rps capacity per node = {capacity:.0} rps < target {target:.0} rps"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn input(target: Option<f64>, measured: &[f64]) -> ScalingInput {
        ScalingInput {
            min_replicas: 1,
            max_replicas: 10,
            headroom_percent: 20,
            target_rps: target,
            measured_rps: measured.to_vec(),
            current: None,
            eligible: 100,
        }
    }

    #[test]
    fn replica_math_follows_target_headroom_and_measured_throughput() {
        // (target, measured per node, min, max, eligible, expected desired)
        type Row<'a> = (Option<f64>, &'a [f64], u32, u32, u32, u32);
        let table: &[Row] = &[
            (None, &[], 2, 5, 10, 2),          // no throughput target
            (Some(5000.0), &[], 1, 10, 10, 1), // not measured yet: minReplicas
            (Some(5000.0), &[], 3, 10, 10, 3),
            (Some(5000.0), &[2000.0], 1, 10, 10, 3), // 6000 / 2000 = 3
            (Some(5000.0), &[2500.0], 1, 10, 10, 3), // 6000 / 2500 = 2.4 → 3
            (Some(5000.0), &[1000.0, 3000.0], 1, 10, 10, 3), // mean 2000
            (Some(100.0), &[20000.0], 2, 10, 10, 2), // raised to minReplicas
            (Some(50000.0), &[1000.0], 1, 10, 100, 10), // capped at maxReplicas
            (Some(50000.0), &[1000.0], 1, 10, 4, 4), // clamped to eligible nodes
            (Some(5000.0), &[2000.0], 1, 10, 0, 0),  // nothing eligible
            (Some(5000.0), &[0.0], 2, 10, 10, 10),   // capacity 0 at the targets: maxReplicas
        ];
        for (i, (target, measured, min, max, eligible, expected)) in table.iter().enumerate() {
            let input = ScalingInput {
                min_replicas: *min,
                max_replicas: *max,
                eligible: *eligible,
                ..input(*target, measured)
            };
            let decision = decide(
                &input,
                &mut History::default(),
                at(0),
                Duration::from_secs(60),
            );
            assert_eq!(decision.desired, *expected, "row {i}: {}", decision.reason);
        }
    }

    #[test]
    fn the_reason_carries_the_figures() {
        let decision = decide(
            &input(Some(5000.0), &[2000.0]),
            &mut History::default(),
            at(0),
            Duration::from_secs(60),
        );
        assert_eq!(
            decision.reason,
            "5000 rps target + 20% headroom = 6000 rps ÷ 2000 rps capacity per node = 3"
        );
    }

    #[test]
    fn without_measurements_the_current_count_is_kept() {
        let input = ScalingInput {
            current: Some(4),
            ..input(Some(5000.0), &[])
        };
        let decision = decide(
            &input,
            &mut History::default(),
            at(0),
            Duration::from_secs(60),
        );
        assert_eq!(decision.desired, 4);
    }

    #[test]
    fn scale_up_is_immediate_and_scale_down_waits_for_the_window() {
        let window = Duration::from_secs(60);
        let mut history = History::default();
        let high = input(Some(5000.0), &[1000.0]); // 6 nodes
        let low = input(Some(5000.0), &[3000.0]); // 2 nodes
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
    fn a_flapping_recommendation_does_not_flap_the_decision() {
        let window = Duration::from_secs(60);
        let mut history = History::default();
        let high = input(Some(5000.0), &[1000.0]);
        let low = input(Some(5000.0), &[3000.0]);
        let decisions: Vec<u32> = (0..10)
            .map(|i| {
                let which = if i % 2 == 0 { &high } else { &low };
                decide(which, &mut history, at(i * 5), window).desired
            })
            .collect();
        assert!(decisions.iter().all(|d| *d == 6), "{decisions:?}");
    }

    #[test]
    fn a_seeded_history_holds_the_previous_count_after_a_restart() {
        let mut history = History::seeded(5, at(0));
        let low = input(Some(5000.0), &[3000.0]);
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
            ..input(Some(10000.0), &[1000.0])
        };
        let decision = decide(
            &capped,
            &mut History::default(),
            at(0),
            Duration::from_secs(60),
        );
        assert_eq!(
            decision.unreachable.as_deref(),
            Some("even maxReplicas 3 × 1000 rps capacity per node = 3000 rps < target 10000 rps")
        );
        let few_nodes = ScalingInput {
            eligible: 2,
            ..input(Some(10000.0), &[1000.0])
        };
        let decision = decide(
            &few_nodes,
            &mut History::default(),
            at(0),
            Duration::from_secs(60),
        );
        assert!(
            decision
                .unreachable
                .unwrap()
                .starts_with("even all 2 eligible nodes")
        );
        let fine = decide(
            &input(Some(5000.0), &[1000.0]),
            &mut History::default(),
            at(0),
            Duration::from_secs(60),
        );
        assert_eq!(fine.unreachable, None);
    }
}
