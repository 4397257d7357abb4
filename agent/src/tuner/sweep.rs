//! The capacity sweep: open-loop rate steps over gRPC until the highest rate at which every
//! latency target holds is found and confirmed.
//!
//! A step passes when at least 99% of its requests left within 1 ms of their schedule, every
//! one was answered OK, and every latency target held; without a latency target, when its p99
//! stays within twice the p99 at a tenth of its rate. Rates double from a low start until a
//! step fails, then the gap between the best pass and the first failure is halved (on a log
//! scale); the capacity is the highest rate that passed twice, the second time in a confirming
//! run [`CONFIRM_STEPS`] steps long. The search is a pure function of the step runner, so it is
//! tested without a server.

use std::time::Duration;

use policyserve_crds::{Capacity, Figures, Quantile, Target, Targets, round};

use crate::load::{ON_TIME, Outcome};

/// The lowest rate a sweep tries, requests per second.
pub const LOWEST_RPS: f64 = 50.0;
/// Fewest requests a step sends: a step of a few requests passes or fails on one of them.
pub const MIN_STEP_REQUESTS: f64 = 100.0;
/// How many steps long a confirming run is. The search's short steps find the knee; the best of
/// them passed partly by luck (a pause of the node's other work fell outside it), and a client
/// judges a longer run than one step. A longer confirmation gives the pause its chance.
pub const CONFIRM_STEPS: u32 = 3;
/// Confirming runs a sweep tries at most.
const CONFIRMATIONS: u32 = 2;

/// Bounds of one sweep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SweepSettings {
    /// How long each step sends (longer at low rates, to send [`MIN_STEP_REQUESTS`]).
    pub step: Duration,
    /// Steps of the search, confirmation runs not included.
    pub steps: usize,
    /// The first rate tried, requests per second.
    pub start_rps: f64,
    /// No rate above this is tried (the in-process ranking's figure: gRPC only adds cost).
    pub ceiling_rps: f64,
}

impl SweepSettings {
    /// How long a step at `rate` sends.
    pub fn step_at(&self, rate: f64) -> Duration {
        self.step.max(min_requests_at(rate))
    }

    /// How long a confirming run at `rate` sends.
    pub fn confirm_at(&self, rate: f64) -> Duration {
        (self.step * CONFIRM_STEPS).max(min_requests_at(rate))
    }

    /// Settings for a sweep that may take `budget`, below a ranking of `ceiling_rps`.
    pub fn for_budget(budget: Duration, ceiling_rps: f64) -> Self {
        const STEPS: usize = 7;
        // The search's steps plus the confirmations.
        let step = (budget / (STEPS as u32 + CONFIRMATIONS * CONFIRM_STEPS))
            .clamp(Duration::from_millis(250), Duration::from_secs(2));
        let ceiling_rps = ceiling_rps.max(100.0);
        Self {
            step,
            steps: STEPS,
            start_rps: (ceiling_rps / 64.0).max(LOWEST_RPS),
            ceiling_rps,
        }
    }
}

/// How long sending [`MIN_STEP_REQUESTS`] at `rate` takes.
fn min_requests_at(rate: f64) -> Duration {
    Duration::from_secs_f64(MIN_STEP_REQUESTS / rate.max(LOWEST_RPS))
}

/// One step of a sweep, for the record (`tune --output json`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    /// Offered rate, requests per second.
    pub rate_rps: f64,
    /// Whether the step passed.
    pub passed: bool,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Client-side P99 of its OK answers, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<f64>,
}

/// What a sweep found.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepResult {
    /// The capacity (memory and time are the caller's to fill in); `None` when the sweep was
    /// stopped before it could say anything.
    pub capacity: Option<Capacity>,
    /// Every step run, in order.
    pub steps: Vec<StepRecord>,
    /// Whether the sweep was stopped (a real request arrived during a probe).
    pub stopped: bool,
}

/// Why a step failed, or `None` when it passed. `reference_p99_ms` is the P99 at about a tenth
/// of the step's rate, used only without latency targets.
pub fn judge(
    outcome: &Outcome,
    targets: &Targets,
    reference_p99_ms: Option<f64>,
) -> Option<String> {
    if outcome.on_time_fraction() < 0.99 {
        return Some(format!(
            "only {:.1}% of requests left within {} ms of their schedule",
            outcome.on_time_fraction() * 100.0,
            ON_TIME.as_millis()
        ));
    }
    if outcome.unsent > 0 {
        return Some(format!(
            "{} requests not sent (too many in flight)",
            outcome.unsent
        ));
    }
    if outcome.failed() > 0 {
        let codes: Vec<String> = outcome
            .errors
            .iter()
            .map(|(code, n)| format!("{n} {code}"))
            .collect();
        return Some(format!("answers not OK: {}", codes.join(", ")));
    }
    let misses: Vec<String> = targets
        .misses(outcome)
        .iter()
        .filter(|m| matches!(m.target, Target::Latency(_)))
        .map(ToString::to_string)
        .collect();
    if !misses.is_empty() {
        return Some(misses.join(", "));
    }
    let has_latency_target = targets.latency_limits().next().is_some();
    if !has_latency_target
        && let (Some(p99), Some(reference)) = (outcome.latency_ms(Quantile::P99), reference_p99_ms)
        && p99 > 2.0 * reference
    {
        return Some(format!(
            "p99 {p99:.3} ms is more than twice the {reference:.3} ms at a tenth of the rate"
        ));
    }
    None
}

/// Sweeps with `run`, which sends at the rate it is given for as long as it is given and returns
/// `None` once the sweep must stop.
pub fn sweep(
    settings: &SweepSettings,
    targets: &Targets,
    mut run: impl FnMut(f64, Duration) -> Option<Outcome>,
) -> SweepResult {
    let mut steps = Vec::new();
    let mut runs: Vec<Outcome> = Vec::new();
    let mut passes: Vec<f64> = Vec::new();
    let mut first_failure: Option<f64> = None;
    let mut rate = settings.start_rps.min(settings.ceiling_rps);
    let mut stopped = false;
    let mut step =
        |rate: f64, duration: Duration, runs: &mut Vec<Outcome>, steps: &mut Vec<StepRecord>| {
            let outcome = run(rate, duration)?;
            let reference = reference_p99(runs, rate);
            let failure = judge(&outcome, targets, reference);
            let p99_ms = outcome.latency_ms(Quantile::P99).map(|v| round(v, 4));
            tracing::debug!(
                rate = rate.round(),
                seconds = duration.as_secs_f64(),
                p99_ms,
                failure = failure.as_deref().unwrap_or("passed"),
                "sweep step"
            );
            steps.push(StepRecord {
                rate_rps: rate.round(),
                passed: failure.is_none(),
                failure: failure.clone(),
                latency_p99_ms: p99_ms,
            });
            runs.push(outcome);
            Some(failure.is_none())
        };

    for _ in 0..settings.steps {
        let Some(passed) = step(rate, settings.step_at(rate), &mut runs, &mut steps) else {
            stopped = true;
            break;
        };
        if passed {
            passes.push(rate);
        } else {
            first_failure = Some(first_failure.map_or(rate, |f: f64| f.min(rate)));
        }
        let best = passes
            .iter()
            .copied()
            .fold(None, |b: Option<f64>, r| Some(b.map_or(r, |b| b.max(r))));
        rate = match (best, first_failure) {
            // Below every failure: halve the gap on a log scale, until it is within 15%.
            (Some(best), Some(fail)) if fail / best > 1.15 => (best * fail).sqrt(),
            (Some(_), Some(_)) => break,
            // Nothing failed yet: double, up to the ceiling.
            (Some(best), None) if best < settings.ceiling_rps => {
                (best * 2.0).min(settings.ceiling_rps)
            }
            (Some(_), None) => break,
            // Even the start failed: a quarter of it, down to a request every 20 ms.
            (None, Some(fail)) if fail > LOWEST_RPS => (fail / 4.0).max(LOWEST_RPS),
            (None, _) => break,
        };
    }

    // Confirm from the highest pass down, in a longer run: the capacity passed twice. A failed
    // confirmation says the knee is lower than the short steps found, so the next try is at
    // least a quarter lower (the pass just below is likely to fail the same way).
    passes.sort_by(|a, b| b.total_cmp(a));
    passes.dedup();
    let mut capacity = None;
    let mut below = f64::INFINITY;
    for _ in 0..CONFIRMATIONS {
        if stopped {
            break;
        }
        let Some(rate) = passes.iter().copied().find(|&r| r <= below) else {
            break;
        };
        let first = runs
            .iter()
            .rposition(|o| o.rate == rate)
            .map(|i| runs[i].clone());
        match step(rate, settings.confirm_at(rate), &mut runs, &mut steps) {
            None => stopped = true,
            Some(true) => {
                let second = runs.last().cloned();
                capacity = first.zip(second).map(|(a, b)| at_rate(rate, &a, &b));
                break;
            }
            Some(false) => below = rate * 0.75,
        }
    }
    if capacity.is_none() && !stopped {
        // Nothing held twice: capacity 0, with the figures of the lowest rate tried.
        capacity = runs
            .iter()
            .min_by(|a, b| a.rate.total_cmp(&b.rate))
            .map(|lowest| Capacity {
                throughput_rps: 0.0,
                ..at_rate(0.0, lowest, lowest)
            });
    }
    SweepResult {
        capacity,
        steps,
        stopped,
    }
}

/// The P99 of the run nearest to a tenth of `rate` (at or below it when there is one).
fn reference_p99(runs: &[Outcome], rate: f64) -> Option<f64> {
    let tenth = rate / 10.0;
    let below = runs
        .iter()
        .filter(|o| o.rate <= tenth)
        .max_by(|a, b| a.rate.total_cmp(&b.rate));
    let lowest = runs.iter().min_by(|a, b| a.rate.total_cmp(&b.rate));
    below.or(lowest)?.latency_ms(Quantile::P99)
}

/// The capacity at `rate` from its two passing runs: the lower throughput and the higher
/// latencies of the two, so that the figure is one both runs achieved.
fn at_rate(rate: f64, a: &Outcome, b: &Outcome) -> Capacity {
    let worst = |q: Quantile| {
        round(
            a.latency_ms(q)
                .unwrap_or(0.0)
                .max(b.latency_ms(q).unwrap_or(0.0)),
            4,
        )
    };
    Capacity {
        throughput_rps: rate.min(a.answered_rps()).min(b.answered_rps()).floor(),
        latency_p50_ms: worst(Quantile::P50),
        latency_p95_ms: worst(Quantile::P95),
        latency_p99_ms: worst(Quantile::P99),
        ..Capacity::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A server that answers every request at `base` latency up to `knee` requests per
    /// second and grows ten times slower past it.
    fn server(knee: f64, base_ms: f64) -> impl FnMut(f64, Duration) -> Option<Outcome> {
        move |rate, _| {
            let ms = if rate <= knee {
                base_ms
            } else {
                base_ms * 10.0 * rate / knee
            };
            let n = (rate as u64).max(1);
            Some(Outcome {
                rate,
                scheduled: n,
                on_time: n,
                latencies: vec![Duration::from_secs_f64(ms / 1000.0); n as usize],
                elapsed: Duration::from_secs(1),
                ..Outcome::default()
            })
        }
    }

    fn settings() -> SweepSettings {
        SweepSettings {
            step: Duration::from_secs(1),
            steps: 7,
            start_rps: 2_000.0,
            ceiling_rps: 100_000.0,
        }
    }

    fn p99(ms: f64) -> Targets {
        Targets {
            latency_p99_ms: Some(ms),
            ..Targets::default()
        }
    }

    #[test]
    fn the_capacity_is_the_highest_rate_that_held_the_targets_twice_within_15_percent() {
        let result = sweep(&settings(), &p99(1.0), server(10_000.0, 0.5));
        let capacity = result.capacity.unwrap();
        assert!(
            (8_700.0..=10_000.0).contains(&capacity.throughput_rps),
            "{capacity:?} {:?}",
            result.steps
        );
        assert_eq!(capacity.latency_p99_ms, 0.5);
        let confirmations = result
            .steps
            .iter()
            .filter(|s| (s.rate_rps - capacity.throughput_rps).abs() <= 1.0 && s.passed)
            .count();
        assert!(confirmations >= 2, "{:?}", result.steps);
        assert!(result.steps.len() <= 9, "{} steps", result.steps.len());
    }

    #[test]
    fn the_confirming_run_is_longer_and_a_rate_that_holds_only_for_a_step_is_not_the_capacity() {
        // Up to 10,000 rps the server holds; up to 14,000 rps it holds for one step, but a run
        // of several steps catches a pause of the node's other work.
        let mut durations = Vec::new();
        let result = sweep(&settings(), &p99(1.0), |rate, duration| {
            durations.push((rate, duration));
            let knee = if duration > settings().step {
                10_000.0
            } else {
                14_000.0
            };
            server(knee, 0.5)(rate, duration)
        });
        let capacity = result.capacity.unwrap();
        assert!(
            (5_000.0..=10_000.0).contains(&capacity.throughput_rps),
            "{capacity:?} {:?}",
            result.steps
        );
        let confirmations: Vec<_> = durations
            .iter()
            .filter(|(_, d)| *d == settings().step * CONFIRM_STEPS)
            .collect();
        assert!(!confirmations.is_empty(), "{durations:?}");
        assert!(
            confirmations
                .iter()
                .any(|(rate, _)| (rate - capacity.throughput_rps).abs() <= 1.0),
            "the capacity was confirmed in a long run: {durations:?}"
        );
    }

    #[test]
    fn a_step_whose_requests_left_late_fails_even_if_latency_was_fine() {
        let late = Outcome {
            rate: 1000.0,
            scheduled: 1000,
            on_time: 980,
            latencies: vec![Duration::from_micros(100); 1000],
            elapsed: Duration::from_secs(1),
            ..Outcome::default()
        };
        let why = judge(&late, &p99(1.0), None).unwrap();
        assert!(why.contains("98.0% of requests"), "{why}");
        let mut rejected = late.clone();
        rejected.on_time = 1000;
        rejected.errors.insert("ResourceExhausted".into(), 3);
        assert!(
            judge(&rejected, &p99(1.0), None)
                .unwrap()
                .contains("3 ResourceExhausted")
        );
        let mut fine = rejected.clone();
        fine.errors.clear();
        assert_eq!(judge(&fine, &p99(1.0), None), None);
    }

    #[test]
    fn without_a_latency_target_the_knee_is_where_p99_doubles_against_a_tenth_of_the_rate() {
        let result = sweep(&settings(), &Targets::default(), server(20_000.0, 0.2));
        let capacity = result.capacity.unwrap();
        assert!(
            (17_000.0..=20_000.0).contains(&capacity.throughput_rps),
            "{capacity:?} {:?}",
            result.steps
        );
    }

    #[test]
    fn a_target_no_rate_meets_gives_zero_capacity_with_the_lowest_rate_s_figures() {
        let result = sweep(&settings(), &p99(0.1), server(10_000.0, 0.5));
        let capacity = result.capacity.unwrap();
        assert_eq!(capacity.throughput_rps, 0.0);
        assert_eq!(capacity.latency_p99_ms, 0.5);
        assert!(result.steps.iter().all(|s| !s.passed));
        assert!(
            result.steps.iter().any(|s| s.rate_rps < 100.0),
            "it tried lower rates"
        );
    }

    #[test]
    fn a_stopped_sweep_reports_no_capacity() {
        let mut calls = 0;
        let result = sweep(&settings(), &p99(1.0), |rate, duration| {
            calls += 1;
            (calls < 3)
                .then(|| server(10_000.0, 0.5)(rate, duration))
                .flatten()
        });
        assert!(result.stopped);
        assert_eq!(result.capacity, None);
    }

    #[test]
    fn the_ceiling_bounds_the_rates_tried() {
        let settings = SweepSettings {
            ceiling_rps: 2_000.0,
            ..settings()
        };
        let result = sweep(&settings, &p99(1.0), server(1e9, 0.1));
        assert!(result.steps.iter().all(|s| s.rate_rps <= 2_000.0));
        assert_eq!(result.capacity.unwrap().throughput_rps, 2_000.0);
    }
}
