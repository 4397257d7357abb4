//! The OptimizationProfile status the agent writes, as pure functions of what happened.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use policyserve_crds::conditions::{self, LOADED, SERVING, TARGETS_MET, TUNED, status};
use policyserve_crds::{
    AgentEndpoint, Capacity, EngineConfig, Miss, OptimizationProfileStatus, Served, Target,
    Targets, describe, latency_basis,
};

use super::neighbours::{self, Effect};
use crate::tuner::Tuning;
use crate::{Error, fetch};

pub use policyserve_crds::conditions::reasons;

/// The Loaded=False reason for a failure.
pub fn load_failure_reason(error: &Error) -> &'static str {
    match error {
        Error::Fetch(error) => fetch_failure_reason(error),
        Error::MemoryLimitExceeded(_) => reasons::MEMORY_LIMIT_EXCEEDED,
        _ => reasons::MODEL_LOAD_FAILED,
    }
}

fn fetch_failure_reason(error: &fetch::Error) -> &'static str {
    match error {
        fetch::Error::HashMismatch { .. } => reasons::HASH_MISMATCH,
        fetch::Error::Failed { .. } | fetch::Error::Client(_) => reasons::MODEL_FETCH_FAILED,
    }
}

/// The TargetsMet reason for a list of misses (latency first: nothing else makes up for it;
/// throughput last: more nodes do).
pub fn targets_reason(misses: &[Miss]) -> &'static str {
    let misses_a = |f: fn(&Target) -> bool| misses.iter().any(|m| f(&m.target));
    if misses.is_empty() {
        reasons::TARGETS_MET
    } else if misses_a(|t| matches!(t, Target::Latency(_))) {
        reasons::LATENCY_TARGET_MISSED
    } else if misses_a(|t| matches!(t, Target::Memory)) {
        reasons::MEMORY_LIMIT_EXCEEDED
    } else {
        reasons::THROUGHPUT_TARGET_MISSED
    }
}

/// A configuration a tuning chose, with its capacity.
#[derive(Clone, Debug, PartialEq)]
pub struct Tuned {
    /// The configuration.
    pub config: EngineConfig,
    /// Its capacity when it was chosen (or last probed).
    pub capacity: Capacity,
}

impl Tuned {
    /// What `status` records as chosen, when it records both a configuration and a capacity.
    pub fn recorded(status: Option<&OptimizationProfileStatus>) -> Option<Self> {
        let status = status?;
        Some(Self {
            config: status.chosen.clone()?,
            capacity: status.capacity.clone()?,
        })
    }
}

impl std::fmt::Display for Tuned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        write!(
            f,
            "{} {} × {} threads, batch {} ({} µs) at {:.0} rps, p99 {:.3} ms",
            c.execution_providers
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join("+"),
            c.precision,
            c.intra_op_threads,
            c.max_batch_size,
            c.batch_delay_micros,
            self.capacity.throughput_rps,
            self.capacity.latency_p99_ms
        )
    }
}

/// Builds up one profile's status as the agent works through it.
#[derive(Debug)]
pub struct StatusWriter {
    /// The status to send.
    pub status: OptimizationProfileStatus,
    generation: Option<i64>,
}

impl StatusWriter {
    /// Starts from the stored status (keeping condition transition times) for `generation`.
    pub fn new(stored: Option<OptimizationProfileStatus>, generation: Option<i64>) -> Self {
        let mut status = stored.unwrap_or_default();
        status.observed_generation = generation;
        Self { status, generation }
    }

    fn set(&mut self, type_: &str, value: &str, reason: &str, message: impl Into<String>) -> bool {
        let now = Time(jiff::Timestamp::now());
        conditions::set(
            &mut self.status.conditions,
            type_,
            value,
            reason,
            message,
            self.generation,
            &now,
        )
    }

    /// Fetching and checking the model.
    pub fn loading(&mut self) {
        self.set(
            LOADED,
            status::UNKNOWN,
            reasons::LOADING,
            "fetching and checking the model",
        );
        self.set(
            TUNED,
            status::UNKNOWN,
            reasons::MEASURING,
            "waiting for the model",
        );
        self.set(
            TARGETS_MET,
            status::UNKNOWN,
            reasons::MEASURING,
            "waiting for measurements",
        );
    }

    /// The model cannot be served; `still_serving` says whether an earlier version still is.
    pub fn failed(&mut self, error: &Error, still_serving: bool) {
        let message = error.to_string();
        self.set(
            LOADED,
            status::FALSE,
            load_failure_reason(error),
            message.clone(),
        );
        self.set(
            TUNED,
            status::FALSE,
            load_failure_reason(error),
            "the model did not load",
        );
        self.set(
            TARGETS_MET,
            status::FALSE,
            load_failure_reason(error),
            message,
        );
        self.serving(
            still_serving,
            None,
            "the previous model; the new one did not load",
        );
    }

    /// A fetch attempt failed and will be retried: Loaded=False with the failure's reason and
    /// the attempt count, so that a user sees a missing ConfigMap or a failing server at once.
    pub fn fetch_retrying(&mut self, retry: &fetch::Retrying<'_>) {
        self.set(
            LOADED,
            status::FALSE,
            fetch_failure_reason(retry.error),
            retry.to_string(),
        );
    }

    /// The model loaded and fits the engine.
    pub fn loaded(&mut self) {
        self.set(
            LOADED,
            status::TRUE,
            reasons::MODEL_LOADED,
            "the model loaded and fits the engine",
        );
    }

    /// Tuning starts (again: the engine serving now keeps serving meanwhile).
    pub fn tuning(&mut self, budget_seconds: u32, candidates: usize) {
        self.set(
            TUNED,
            status::UNKNOWN,
            reasons::TUNING,
            format!("measuring up to {candidates} configurations within {budget_seconds}s"),
        );
    }

    /// Tuning chose `tuning.chosen`, after ranking and sweeping. `retune` is what an earlier
    /// tuning chose and why it was tuned again: the reason is then `Retuned`, with the old and
    /// new figures. `beside` is what the tuning did to the models served here meanwhile.
    pub fn tuned(&mut self, tuning: &Tuning, retune: Option<&(Tuned, String)>, beside: &[Effect]) {
        let chosen = &tuning.chosen;
        let now = Tuned {
            config: chosen.config.clone(),
            capacity: chosen.capacity.clone(),
        };
        let mut message = match retune {
            Some((before, why)) => format!("re-tuned because {why}: was {before}; now {now}"),
            None => format!(
                "chose the best of {} ranked configurations; swept {} over gRPC: {now}",
                tuning.candidates.len(),
                tuning.swept.len(),
            ),
        };
        if let Some(why) = chosen.why_no_capacity() {
            message.push_str(&format!("; {why}"));
        }
        if !chosen.fallbacks.is_empty() {
            message.push_str(&format!("; fallbacks: {}", chosen.fallbacks.join("; ")));
        }
        if let Some(beside) = neighbours::describe(beside) {
            message.push_str(&format!("; {beside}"));
        }
        let reason = if retune.is_some() {
            reasons::RETUNED
        } else {
            reasons::TUNED
        };
        self.set(TUNED, status::TRUE, reason, message);
        self.status.chosen = Some(now.config);
        self.status.capacity = Some(now.capacity);
    }

    /// A new capacity figure (a periodic probe); memory, which probes do not measure, is kept.
    pub fn capacity(&mut self, mut capacity: Capacity) {
        if let Some(old) = &self.status.capacity {
            capacity.memory_mib = capacity.memory_mib.or(old.memory_mib);
        }
        self.status.capacity = Some(capacity);
    }

    /// The served window's figures; true when they moved enough (by more than `fraction`) to
    /// be worth writing.
    pub fn served(&mut self, served: Served, fraction: f64) -> bool {
        let moved = self
            .status
            .served
            .as_ref()
            .is_none_or(|old| served.moved_from(old, fraction));
        if moved {
            self.status.served = Some(served);
        }
        moved
    }

    /// Judges `targets` (this node's share of the throughput) on the figures: latency on the
    /// served window when it holds enough requests, else on capacity; throughput and memory on
    /// capacity. True when the condition changed.
    pub fn judge(&mut self, targets: &Targets) -> bool {
        let capacity = self.status.capacity.clone();
        let served = self.status.served.clone();
        let Some((source, basis)) = latency_basis(capacity.as_ref(), served.as_ref()) else {
            return self.set(
                TARGETS_MET,
                status::UNKNOWN,
                reasons::MEASURING,
                "waiting for the capacity sweep",
            );
        };
        let mut misses = targets.latency_misses(basis);
        if let Some(capacity) = &capacity {
            misses.extend(
                targets
                    .misses(capacity)
                    .into_iter()
                    .filter(|m| !matches!(m.target, Target::Latency(_))),
            );
        }
        let unmeasured = capacity
            .as_ref()
            .map(|c| targets.unmeasured(c))
            .unwrap_or_default();
        let figures = describe(capacity.as_ref(), served.as_ref());
        let judged_on = format!("latency judged on {}", source.as_str());
        if !misses.is_empty() {
            let list: Vec<String> = misses.iter().map(ToString::to_string).collect();
            let message = format!("{} ({judged_on}; {figures})", list.join("; "));
            return self.set(TARGETS_MET, status::FALSE, targets_reason(&misses), message);
        }
        if unmeasured.contains(&Target::Memory) {
            return self.set(
                TARGETS_MET,
                status::UNKNOWN,
                reasons::MEASURING,
                format!(
                    "memory unmeasured, so memoryLimit cannot be judged ({judged_on}; {figures})"
                ),
            );
        }
        self.set(
            TARGETS_MET,
            status::TRUE,
            reasons::TARGETS_MET,
            format!("{judged_on}; {figures}"),
        )
    }

    /// Whether the model is served, and where.
    pub fn serving(&mut self, serving: bool, endpoint: Option<AgentEndpoint>, what: &str) {
        if let Some(endpoint) = endpoint {
            self.status.endpoint = Some(endpoint);
        }
        match (serving, &self.status.endpoint) {
            (true, Some(e)) => {
                let message = format!(
                    "serving {what} as {} at {}:{}",
                    e.model_name, e.address, e.port
                );
                self.set(SERVING, status::TRUE, reasons::SERVING, message);
            }
            _ => {
                self.status.endpoint = None;
                self.set(SERVING, status::FALSE, reasons::NOT_SERVING, "not serving");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use policyserve_crds::{EngineConfig, Quantile};

    use super::*;
    use crate::tuner::Swept;

    fn capacity(rps: f64, p99: f64, memory_mib: Option<f64>) -> Capacity {
        Capacity {
            throughput_rps: rps,
            latency_p50_ms: p99 / 2.0,
            latency_p95_ms: p99,
            latency_p99_ms: p99,
            memory_mib,
            ..Capacity::default()
        }
    }

    fn tuning(capacity: Capacity) -> Tuning {
        let chosen = Swept {
            config: EngineConfig::default(),
            capacity,
            fallbacks: vec!["CUDA: not in this build".into()],
            steps: Vec::new(),
        };
        Tuning {
            candidates: Vec::new(),
            swept: vec![chosen.clone()],
            chosen,
            targets_met: true,
            failing: Vec::new(),
        }
    }

    fn served(requests: u64, p99: f64) -> Served {
        Served {
            window_seconds: 60,
            requests,
            throughput_rps: requests as f64 / 60.0,
            latency_p99_ms: Some(p99),
            ..Served::default()
        }
    }

    fn targets(p99: f64) -> Targets {
        Targets {
            latency_p99_ms: Some(p99),
            throughput_rps: Some(1000.0),
            memory_limit: Some(Quantity("512Mi".into())),
            ..Targets::default()
        }
    }

    fn condition<'a>(
        w: &'a StatusWriter,
        type_: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        conditions::find(&w.status.conditions, type_).unwrap()
    }

    #[test]
    fn failures_map_to_the_reasons_design_names() {
        let hash = Error::from(fetch::Error::HashMismatch {
            uri: "u".into(),
            expected: "a".into(),
            actual: "b".into(),
        });
        assert_eq!(load_failure_reason(&hash), "HashMismatch");
        assert_eq!(
            load_failure_reason(&Error::MemoryLimitExceeded("m".into())),
            "MemoryLimitExceeded"
        );
        let load = Error::from(crate::engine::Error::ModelLoad {
            model: "m".into(),
            reason: "bad".into(),
        });
        assert_eq!(load_failure_reason(&load), "ModelLoadFailed");
        let fetch_failed = Error::from(fetch::Error::Failed {
            source_name: "cm".into(),
            reason: "gone".into(),
        });
        assert_eq!(load_failure_reason(&fetch_failed), "ModelFetchFailed");
    }

    #[test]
    fn the_most_serious_miss_names_the_reason() {
        let miss = |target| Miss {
            target,
            value: 2.0,
            limit: 1.0,
        };
        assert_eq!(targets_reason(&[]), "TargetsMet");
        assert_eq!(
            targets_reason(&[
                miss(Target::Throughput),
                miss(Target::Latency(Quantile::P99))
            ]),
            "LatencyTargetMissed"
        );
        assert_eq!(
            targets_reason(&[miss(Target::Throughput), miss(Target::Memory)]),
            "MemoryLimitExceeded"
        );
        assert_eq!(
            targets_reason(&[miss(Target::Throughput)]),
            "ThroughputTargetMissed"
        );
    }

    #[test]
    fn a_capacity_of_zero_says_which_rate_failed_and_why() {
        use crate::tuner::sweep::StepRecord;
        let step = |rate: f64, failure: Option<&str>| StepRecord {
            rate_rps: rate,
            passed: failure.is_none(),
            failure: failure.map(str::to_string),
            latency_p99_ms: Some(1.0),
        };
        let mut zero = tuning(capacity(0.0, 1.0, None));
        zero.chosen.steps = vec![
            step(200.0, Some("answers not OK: 3 Unavailable")),
            step(
                50.0,
                Some("only 97.0% of requests left within 1 ms of their schedule"),
            ),
        ];
        let mut writer = StatusWriter::new(None, Some(1));
        writer.tuned(&zero, None, &[]);
        let tuned = &condition(&writer, TUNED).message;
        assert!(
            tuned.contains("no rate held twice; at 50 rps only 97.0% of requests left"),
            "{tuned}"
        );

        let mut held = tuning(capacity(900.0, 1.0, None));
        held.chosen.steps = vec![step(1800.0, Some("p99 over target"))];
        writer.tuned(&held, None, &[]);
        assert!(!condition(&writer, TUNED).message.contains("no rate held"));
    }

    #[test]
    fn a_tuned_and_served_profile_reports_every_condition_with_its_generation() {
        let mut writer = StatusWriter::new(None, Some(3));
        writer.loading();
        writer.loaded();
        writer.tuning(30, 36);
        writer.tuned(&tuning(capacity(900.0, 1.5, Some(40.0))), None, &[]);
        writer.judge(&targets(1.0));
        let endpoint = AgentEndpoint {
            address: "10.0.0.5".into(),
            port: 8001,
            model_name: "ns.ps".into(),
        };
        writer.serving(true, Some(endpoint), "the tuned model");
        assert_eq!(condition(&writer, LOADED).status, "True");
        assert_eq!(condition(&writer, TUNED).reason, "Tuned");
        let tuned = &condition(&writer, TUNED).message;
        assert!(
            tuned.contains("CUDA: not in this build") && tuned.contains("900 rps"),
            "{tuned}"
        );
        let met = condition(&writer, TARGETS_MET);
        assert_eq!(met.reason, "LatencyTargetMissed");
        assert!(
            met.message.contains("latency judged on capacity"),
            "{}",
            met.message
        );
        assert_eq!(condition(&writer, SERVING).status, "True");
        assert!(
            writer
                .status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
        assert_eq!(writer.status.observed_generation, Some(3));
        assert_eq!(
            writer.status.capacity.as_ref().unwrap().throughput_rps,
            900.0
        );
    }

    #[test]
    fn latency_is_judged_on_served_traffic_once_the_window_holds_enough_requests() {
        let mut writer = StatusWriter::new(None, Some(1));
        writer.tuned(&tuning(capacity(5000.0, 0.5, Some(40.0))), None, &[]);
        assert!(writer.served(served(999, 3.0), 0.1));
        writer.judge(&targets(1.0));
        assert_eq!(
            condition(&writer, TARGETS_MET).status,
            "True",
            "999 requests: capacity"
        );
        assert!(writer.served(served(60_000, 3.0), 0.1));
        writer.judge(&targets(1.0));
        let met = condition(&writer, TARGETS_MET);
        assert_eq!(
            (met.status.as_str(), met.reason.as_str()),
            ("False", "LatencyTargetMissed")
        );
        assert!(
            met.message.contains("latency judged on served"),
            "{}",
            met.message
        );
        assert!(
            met.message.contains("served p99 3.000 ms")
                && met.message.contains("capacity 5000 rps"),
            "both figures: {}",
            met.message
        );
    }

    #[test]
    fn unmeasured_memory_is_not_judged_within_the_limit() {
        let mut writer = StatusWriter::new(None, Some(1));
        writer.tuned(&tuning(capacity(5000.0, 0.5, None)), None, &[]);
        writer.judge(&targets(1.0));
        let met = condition(&writer, TARGETS_MET);
        assert_eq!(met.status, "Unknown");
        assert!(met.message.contains("memory unmeasured"), "{}", met.message);
    }

    #[test]
    fn served_figures_are_kept_until_they_move_by_more_than_the_fraction() {
        let mut writer = StatusWriter::new(None, Some(1));
        assert!(writer.served(served(6000, 1.0), 0.1));
        assert!(!writer.served(served(6300, 1.04), 0.1));
        assert_eq!(writer.status.served.as_ref().unwrap().requests, 6000);
        assert!(
            writer.served(served(0, 1.0), 0.1),
            "going idle moves every figure"
        );
    }

    #[test]
    fn a_retuning_says_why_with_the_old_and_the_new_figures() {
        let mut writer = StatusWriter::new(None, Some(2));
        writer.tuned(&tuning(capacity(5000.0, 0.5, Some(40.0))), None, &[]);
        let before = Tuned::recorded(Some(&writer.status)).unwrap();
        let why = "served latencyP99Ms 3.000 > 1 for 180 s".to_owned();
        writer.tuned(
            &tuning(capacity(7000.0, 0.4, Some(40.0))),
            Some(&(before, why)),
            &[],
        );
        let tuned = condition(&writer, TUNED);
        assert_eq!(tuned.reason, "Retuned");
        assert!(
            tuned
                .message
                .contains("because served latencyP99Ms 3.000 > 1")
                && tuned
                    .message
                    .contains("was CPU fp32 × 1 threads, batch 1 (0 µs) at 5000 rps")
                && tuned
                    .message
                    .contains("now CPU fp32 × 1 threads, batch 1 (0 µs) at 7000 rps"),
            "{}",
            tuned.message
        );
    }

    #[test]
    fn a_failed_load_says_why_and_whether_an_older_model_still_serves() {
        let mut writer = StatusWriter::new(None, Some(1));
        writer.failed(
            &crate::engine::Error::ModelLoad {
                model: "m".into(),
                reason: "truncated".into(),
            }
            .into(),
            false,
        );
        assert_eq!(condition(&writer, LOADED).reason, "ModelLoadFailed");
        assert!(condition(&writer, LOADED).message.contains("truncated"));
        assert_eq!(condition(&writer, SERVING).status, "False");
        assert!(writer.status.endpoint.is_none());
    }
}
