//! Which Kubernetes Events a status change deserves: one per decision (nodes assigned, scaled,
//! targets met or missed, an invalid spec), never one per reconcile.

use std::collections::BTreeSet;

use policyserve_crds::PolicyServiceStatus;
use policyserve_crds::conditions::{
    self, PERFORMANCE_COMPLIANT, PROFILES_ASSIGNED, READY, status as cs,
};

use super::status::reasons;

/// An Event to publish about the PolicyService.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Warning rather than Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// What was decided, with the figures.
    pub note: String,
}

fn normal(reason: &str, note: impl Into<String>) -> Decision {
    Decision {
        warning: false,
        reason: reason.to_owned(),
        note: note.into(),
    }
}

fn warning(reason: &str, note: impl Into<String>) -> Decision {
    Decision {
        warning: true,
        reason: reason.to_owned(),
        note: note.into(),
    }
}

/// The decisions that turned `previous` into `next`.
pub fn decisions(previous: &PolicyServiceStatus, next: &PolicyServiceStatus) -> Vec<Decision> {
    let before = |type_| conditions::find(&previous.conditions, type_);
    let after = |type_| conditions::find(&next.conditions, type_);
    let moved = |type_| {
        let key = |c: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>| {
            c.map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        };
        key(before(type_)) != key(after(type_))
    };

    let mut out = Vec::new();
    if let Some(assigned) = after(PROFILES_ASSIGNED)
        && moved(PROFILES_ASSIGNED)
        && (assigned.reason == reasons::INVALID_SPEC
            || assigned.reason == reasons::NO_ELIGIBLE_NODES)
    {
        out.push(warning(&assigned.reason, assigned.message.clone()));
        return out;
    }

    let nodes = |s: &PolicyServiceStatus| -> BTreeSet<String> {
        s.nodes.iter().map(|n| n.node.clone()).collect()
    };
    if !next.nodes.is_empty() && nodes(previous) != nodes(next) {
        let list: Vec<String> = next
            .nodes
            .iter()
            .map(|n| format!("{} ({})", n.node, n.profile))
            .collect();
        out.push(normal(reasons::PROFILES_ASSIGNED, list.join(", ")));
    }

    if let (Some(old), Some(new)) = (&previous.scaling, &next.scaling)
        && old.desired_replicas != new.desired_replicas
    {
        let reason = if new.desired_replicas > old.desired_replicas {
            "ScaledUp"
        } else {
            "ScaledDown"
        };
        out.push(normal(
            reason,
            format!(
                "desired replicas {} → {}: {}",
                old.desired_replicas, new.desired_replicas, new.reason
            ),
        ));
    }

    if let Some(ready) = after(READY)
        && ready.reason == reasons::MODEL_LOAD_FAILED
        && moved(READY)
    {
        out.push(warning(reasons::MODEL_LOAD_FAILED, ready.message.clone()));
    }

    if let Some(compliant) = after(PERFORMANCE_COMPLIANT)
        && before(PERFORMANCE_COMPLIANT).map(|c| (&c.status, &c.reason))
            != Some((&compliant.status, &compliant.reason))
    {
        match compliant.status.as_str() {
            cs::TRUE => out.push(normal(reasons::TARGETS_MET, compliant.message.clone())),
            cs::FALSE => out.push(warning(&compliant.reason, compliant.message.clone())),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use policyserve_crds::{HardwareClass, NodeStatus, Profile, ScalingStatus};

    use super::*;

    fn with(
        conditions_: &[(&str, &str, &str)],
        nodes: &[&str],
        desired: i32,
    ) -> PolicyServiceStatus {
        let mut status = PolicyServiceStatus::default();
        for (type_, value, reason) in conditions_ {
            conditions::set(
                &mut status.conditions,
                type_,
                value,
                reason,
                "m",
                Some(1),
                &Time(jiff::Timestamp::UNIX_EPOCH),
            );
        }
        status.nodes = nodes
            .iter()
            .map(|n| NodeStatus {
                node: (*n).into(),
                hardware_class: HardwareClass::Balanced,
                profile: Profile::Balanced,
                optimization_profile: format!("ps-{n}"),
                compliant: None,
                chosen: None,
                capacity: None,
                served: None,
                reason: String::new(),
            })
            .collect();
        status.scaling = Some(ScalingStatus {
            desired_replicas: desired,
            serving_replicas: 0,
            reason: "r".into(),
            last_decision_time: None,
        });
        status
    }

    fn reasons_of(previous: &PolicyServiceStatus, next: &PolicyServiceStatus) -> Vec<String> {
        decisions(previous, next)
            .into_iter()
            .map(|d| d.reason)
            .collect()
    }

    #[test]
    fn each_decision_gets_one_event_and_an_unchanged_status_none() {
        let empty = PolicyServiceStatus::default();
        let assigned = with(
            &[(PROFILES_ASSIGNED, "True", "ProfilesAssigned")],
            &["a"],
            1,
        );
        let scaled = with(
            &[(PROFILES_ASSIGNED, "True", "ProfilesAssigned")],
            &["a", "b"],
            2,
        );
        let met = with(
            &[
                (PROFILES_ASSIGNED, "True", "ProfilesAssigned"),
                (PERFORMANCE_COMPLIANT, "True", "TargetsMet"),
            ],
            &["a", "b"],
            2,
        );
        let missed = with(
            &[(PERFORMANCE_COMPLIANT, "False", "LatencyTargetMissed")],
            &["a", "b"],
            2,
        );
        let invalid = with(&[(PROFILES_ASSIGNED, "False", "InvalidSpec")], &["a"], 1);
        let table = [
            (&empty, &assigned, vec!["ProfilesAssigned"]),
            (&assigned, &assigned, vec![]),
            (&assigned, &scaled, vec!["ProfilesAssigned", "ScaledUp"]),
            (&scaled, &assigned, vec!["ProfilesAssigned", "ScaledDown"]),
            (&scaled, &met, vec!["TargetsMet"]),
            (&met, &missed, vec!["LatencyTargetMissed"]),
            (&assigned, &invalid, vec!["InvalidSpec"]),
            (&invalid, &invalid, vec![]),
        ];
        for (i, (previous, next, expected)) in table.into_iter().enumerate() {
            assert_eq!(reasons_of(previous, next), expected, "row {i}");
        }
        assert!(decisions(&met, &missed)[0].warning);
    }
}
