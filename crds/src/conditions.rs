//! Condition types and reasons, and setting a condition the way Kubernetes API conventions
//! ask: one entry per type, lastTransitionTime moves only when the status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// PolicyService: serving on at least minReplicas nodes.
pub const READY: &str = "Ready";
/// PolicyService: every eligible node has an OptimizationProfile.
pub const PROFILES_ASSIGNED: &str = "ProfilesAssigned";
/// PolicyService: all targets met by the measured figures.
pub const PERFORMANCE_COMPLIANT: &str = "PerformanceCompliant";
/// PolicyService: latency targets met on every serving node.
pub const LATENCY_TARGET_MET: &str = "LatencyTargetMet";
/// PolicyService: summed throughput meets the target.
pub const THROUGHPUT_TARGET_MET: &str = "ThroughputTargetMet";
/// PolicyService: memory within the limit on every serving node.
pub const MEMORY_WITHIN_LIMIT: &str = "MemoryWithinLimit";

/// OptimizationProfile: the model loaded.
pub const LOADED: &str = "Loaded";
/// OptimizationProfile: the tuner chose a configuration.
pub const TUNED: &str = "Tuned";
/// OptimizationProfile: the agent serves the model.
pub const SERVING: &str = "Serving";
/// OptimizationProfile: the node's measured figures meet the targets.
pub const TARGETS_MET: &str = "TargetsMet";

/// Condition reasons, one CamelCase word each; both programs write them and the operator reads
/// the agent's (docs/conditions.md lists what each means and what to do).
pub mod reasons {
    // PolicyService (written by the operator).
    /// ProfilesAssigned=True: every chosen node has its OptimizationProfile.
    pub const PROFILES_ASSIGNED: &str = "ProfilesAssigned";
    /// Ready=True: serving on at least minReplicas nodes; Serving=True on a profile.
    pub const SERVING: &str = "Serving";
    /// Agents are loading, tuning or measuring; nothing to judge yet.
    pub const MEASURING: &str = "Measuring";
    /// The figures meet the target.
    pub const TARGETS_MET: &str = "TargetsMet";
    /// The PolicyService sets no target of this kind.
    pub const NO_TARGET: &str = "NoTarget";
    /// A latency target is missed.
    pub const LATENCY_TARGET_MISSED: &str = "LatencyTargetMissed";
    /// The throughput target is missed.
    pub const THROUGHPUT_TARGET_MISSED: &str = "ThroughputTargetMissed";
    /// Memory exceeds the limit, or the model would not fit it.
    pub const MEMORY_LIMIT_EXCEEDED: &str = "MemoryLimitExceeded";
    /// No policyserve node can serve this PolicyService.
    pub const NO_ELIGIBLE_NODES: &str = "NoEligibleNodes";
    /// Fewer eligible nodes than minReplicas.
    pub const NOT_ENOUGH_ELIGIBLE_NODES: &str = "NotEnoughEligibleNodes";
    /// A planned node's agent stopped renewing its Lease: it is not serving.
    pub const AGENT_LOST: &str = "AgentLost";
    /// The spec cannot be planned; the message names the field.
    pub const INVALID_SPEC: &str = "InvalidSpec";

    // OptimizationProfile (written by the agent).
    /// The model is being fetched and checked.
    pub const LOADING: &str = "Loading";
    /// The model loaded and fits the engine.
    pub const MODEL_LOADED: &str = "ModelLoaded";
    /// ConfigMap, download or node file could not be read.
    pub const MODEL_FETCH_FAILED: &str = "ModelFetchFailed";
    /// A download's SHA-256 differs from the spec's.
    pub const HASH_MISMATCH: &str = "HashMismatch";
    /// ONNX Runtime refused the model, or the engine cannot serve it (also the PolicyService's
    /// Ready reason when an agent reports it).
    pub const MODEL_LOAD_FAILED: &str = "ModelLoadFailed";
    /// The tuner is measuring candidates.
    pub const TUNING: &str = "Tuning";
    /// The tuner chose a configuration.
    pub const TUNED: &str = "Tuned";
    /// The tuner chose again because the figures drifted or the profile changed; the message
    /// has the old and the new figures.
    pub const RETUNED: &str = "Retuned";
    /// The agent does not serve the model.
    pub const NOT_SERVING: &str = "NotServing";
}

/// Condition status values.
pub mod status {
    /// The condition holds.
    pub const TRUE: &str = "True";
    /// The condition does not hold.
    pub const FALSE: &str = "False";
    /// Not known yet.
    pub const UNKNOWN: &str = "Unknown";
}

/// Sets (inserts or replaces) the condition of `type_`, keeping its lastTransitionTime when
/// the status is unchanged. Returns whether anything changed.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: &Time,
) -> bool {
    let message = message.into();
    let existing = conditions.iter_mut().find(|c| c.type_ == type_);
    match existing {
        Some(c)
            if c.status == status
                && c.reason == reason
                && c.message == message
                && c.observed_generation == observed_generation =>
        {
            false
        }
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.clone();
            }
            c.status = status.to_owned();
            c.reason = reason.to_owned();
            c.message = message;
            c.observed_generation = observed_generation;
            true
        }
        None => {
            conditions.push(Condition {
                type_: type_.to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message,
                observed_generation,
                last_transition_time: now.clone(),
            });
            true
        }
    }
}

/// The condition of `type_`, when present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == status::TRUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut conditions = Vec::new();
        assert!(set(
            &mut conditions,
            READY,
            status::FALSE,
            "Measuring",
            "wait",
            Some(1),
            &at(10)
        ));
        assert!(set(
            &mut conditions,
            READY,
            status::FALSE,
            "Measuring",
            "still",
            Some(2),
            &at(20)
        ));
        assert_eq!(conditions[0].last_transition_time, at(10));
        assert!(set(
            &mut conditions,
            READY,
            status::TRUE,
            "TargetsMet",
            "ok",
            Some(2),
            &at(30)
        ));
        assert_eq!(conditions[0].last_transition_time, at(30));
        assert_eq!(conditions.len(), 1);
    }

    #[test]
    fn setting_the_same_condition_again_changes_nothing() {
        let mut conditions = Vec::new();
        set(
            &mut conditions,
            TUNED,
            status::TRUE,
            "Tuned",
            "m",
            Some(1),
            &at(1),
        );
        assert!(!set(
            &mut conditions,
            TUNED,
            status::TRUE,
            "Tuned",
            "m",
            Some(1),
            &at(2)
        ));
        assert!(is_true(&conditions, TUNED));
        assert!(!is_true(&conditions, SERVING));
    }
}
