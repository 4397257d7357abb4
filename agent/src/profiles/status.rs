//! The OptimizationProfile status the agent writes, as pure functions of what happened.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use policyserve_crds::conditions::{self, LOADED, SERVING, TARGETS_MET, TUNED, status};
use policyserve_crds::{AgentEndpoint, OptimizationProfileStatus};

use crate::Error;
use crate::tuner::Candidate;

pub use policyserve_crds::conditions::reasons;

/// The Loaded=False reason for a failure.
pub fn load_failure_reason(error: &Error) -> &'static str {
    match error {
        Error::ModelFetch { .. } => reasons::MODEL_FETCH_FAILED,
        Error::HashMismatch { .. } => reasons::HASH_MISMATCH,
        Error::MemoryLimitExceeded(_) => reasons::MEMORY_LIMIT_EXCEEDED,
        _ => reasons::MODEL_LOAD_FAILED,
    }
}

/// The TargetsMet reason for a list of failing targets (latency first: nothing else makes up
/// for it; throughput last: more nodes do).
pub fn targets_reason(failing: &[String]) -> &'static str {
    let misses = |prefix: &str| failing.iter().any(|f| f.starts_with(prefix));
    if failing.is_empty() {
        reasons::TARGETS_MET
    } else if misses("latency") {
        reasons::LATENCY_TARGET_MISSED
    } else if misses("memory") {
        reasons::MEMORY_LIMIT_EXCEEDED
    } else {
        reasons::THROUGHPUT_TARGET_MISSED
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

    fn set(&mut self, type_: &str, value: &str, reason: &str, message: impl Into<String>) {
        let now = Time(jiff::Timestamp::now());
        conditions::set(
            &mut self.status.conditions,
            type_,
            value,
            reason,
            message,
            self.generation,
            &now,
        );
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

    /// The model loaded; tuning starts.
    pub fn tuning(&mut self, budget_seconds: u32, candidates: usize) {
        self.set(
            LOADED,
            status::TRUE,
            reasons::MODEL_LOADED,
            "the model loaded and fits the engine",
        );
        self.set(
            TUNED,
            status::UNKNOWN,
            reasons::TUNING,
            format!("measuring up to {candidates} configurations within {budget_seconds}s"),
        );
    }

    /// The tuner chose `chosen`, after measuring `tried` configurations.
    pub fn tuned(&mut self, chosen: &Candidate, tried: usize) {
        let mut message = format!("chose the best of {tried} measured configurations");
        if !chosen.fallbacks.is_empty() {
            message.push_str(&format!("; fallbacks: {}", chosen.fallbacks.join("; ")));
        }
        self.set(TUNED, status::TRUE, reasons::TUNED, message);
        self.status.chosen = Some(chosen.config.clone());
        self.measured(chosen);
    }

    /// New figures for the served configuration.
    pub fn measured(&mut self, candidate: &Candidate) {
        self.status.measured = Some(candidate.measured.clone());
        let message = if candidate.failing.is_empty() {
            let m = &candidate.measured;
            format!(
                "p50 {:.3} ms, p99 {:.3} ms, {:.0} rps, {:.1} MiB",
                m.latency_p50_ms, m.latency_p99_ms, m.throughput_rps, m.memory_mib
            )
        } else {
            candidate.failing.join("; ")
        };
        let value = if candidate.failing.is_empty() {
            status::TRUE
        } else {
            status::FALSE
        };
        self.set(
            TARGETS_MET,
            value,
            targets_reason(&candidate.failing),
            message,
        );
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
    use policyserve_crds::{EngineConfig, Measurement};

    use super::*;

    fn candidate(failing: &[&str]) -> Candidate {
        Candidate {
            config: EngineConfig::default(),
            measured: Measurement {
                latency_p99_ms: 1.5,
                throughput_rps: 900.0,
                ..Measurement::default()
            },
            failing: failing.iter().map(|s| s.to_string()).collect(),
            fallbacks: vec!["CUDA: not in this build".into()],
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
        let hash = Error::HashMismatch {
            uri: "u".into(),
            expected: "a".into(),
            actual: "b".into(),
        };
        assert_eq!(load_failure_reason(&hash), "HashMismatch");
        assert_eq!(
            load_failure_reason(&Error::MemoryLimitExceeded("m".into())),
            "MemoryLimitExceeded"
        );
        let load = Error::ModelLoad {
            model: "m".into(),
            reason: "bad".into(),
        };
        assert_eq!(load_failure_reason(&load), "ModelLoadFailed");
        let fetch = Error::ModelFetch {
            source_name: "cm".into(),
            reason: "gone".into(),
        };
        assert_eq!(load_failure_reason(&fetch), "ModelFetchFailed");
    }

    #[test]
    fn the_most_serious_miss_names_the_reason() {
        assert_eq!(targets_reason(&[]), "TargetsMet");
        assert_eq!(
            targets_reason(&["throughputRps 1 < 2".into(), "latencyP99Ms 3 > 2".into()]),
            "LatencyTargetMissed"
        );
        assert_eq!(
            targets_reason(&["throughputRps 1 < 2".into(), "memoryMiB 9 > 8".into()]),
            "MemoryLimitExceeded"
        );
        assert_eq!(
            targets_reason(&["throughputRps 1 < 2".into()]),
            "ThroughputTargetMissed"
        );
    }

    #[test]
    fn a_tuned_and_served_profile_reports_every_condition_with_its_generation() {
        let mut writer = StatusWriter::new(None, Some(3));
        writer.loading();
        writer.tuning(30, 36);
        writer.tuned(&candidate(&["latencyP99Ms 1.500 > 1"]), 9);
        let endpoint = AgentEndpoint {
            address: "10.0.0.5".into(),
            port: 8001,
            model_name: "ns.ps".into(),
        };
        writer.serving(true, Some(endpoint), "the tuned model");
        assert_eq!(condition(&writer, LOADED).status, "True");
        assert_eq!(condition(&writer, TUNED).reason, "Tuned");
        assert!(
            condition(&writer, TUNED)
                .message
                .contains("CUDA: not in this build")
        );
        assert_eq!(
            condition(&writer, TARGETS_MET).reason,
            "LatencyTargetMissed"
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
            writer.status.measured.as_ref().unwrap().throughput_rps,
            900.0
        );
    }

    #[test]
    fn a_failed_load_says_why_and_whether_an_older_model_still_serves() {
        let mut writer = StatusWriter::new(None, Some(1));
        writer.failed(
            &Error::ModelLoad {
                model: "m".into(),
                reason: "truncated".into(),
            },
            false,
        );
        assert_eq!(condition(&writer, LOADED).reason, "ModelLoadFailed");
        assert!(condition(&writer, LOADED).message.contains("truncated"));
        assert_eq!(condition(&writer, SERVING).status, "False");
        assert!(writer.status.endpoint.is_none());
    }
}
