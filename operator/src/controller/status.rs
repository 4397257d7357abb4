//! The PolicyService status, computed without I/O from the plan and what the agents wrote into
//! their OptimizationProfiles. Every condition says Unknown/Measuring until there is a
//! measurement to judge, and every message carries the figures behind it.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use policyserve_crds::conditions::{
    self, LATENCY_TARGET_MET, LOADED, MEMORY_WITHIN_LIMIT, PERFORMANCE_COMPLIANT,
    PROFILES_ASSIGNED, READY, THROUGHPUT_TARGET_MET, status as cs,
};
use policyserve_crds::{
    AGENT_GRPC_PORT, Capacity, Compliance, FigureSource, Figures, NodeStatus, OptimizationProfile,
    PolicyService, PolicyServiceStatus, Quantile, ScalingStatus, Served, ServiceEndpoint, Target,
    Targets, describe, latency_basis, model_name, round,
};

use super::desired::{Assignment, Plan, reports_serving};
use super::liveness::Liveness;
use super::service::service_name;
use super::validate::Invalid;

pub use policyserve_crds::conditions::reasons;

/// How many names a message lists before it says "and N more".
const LIST_LIMIT: usize = 10;

/// One condition's verdict.
#[derive(Clone, Debug, PartialEq)]
struct Verdict {
    status: &'static str,
    reason: &'static str,
    message: String,
}

fn verdict(status: &'static str, reason: &'static str, message: impl Into<String>) -> Verdict {
    Verdict {
        status,
        reason,
        message: message.into(),
    }
}

/// A planned node as the conditions see it.
#[derive(Clone, Debug)]
struct Planned<'a> {
    node: &'a str,
    /// The agent reports Serving and renews its Lease.
    serving: bool,
    /// The agent reports Serving but its Lease is stale: how old, seconds.
    lost: Option<i64>,
    capacity: Option<&'a Capacity>,
    served: Option<&'a Served>,
    /// (reason, message) of a Loaded=False condition.
    load_failure: Option<(&'a str, &'a str)>,
    /// The agent's own MemoryLimitExceeded report, if any.
    memory_report: Option<&'a str>,
}

impl Planned<'_> {
    /// Whether this node will never measure until something changes.
    fn failed(&self) -> bool {
        self.load_failure.is_some() || self.lost.is_some()
    }

    /// The figures latency is judged on, with where they came from.
    fn basis(&self) -> Option<(FigureSource, &dyn Figures)> {
        latency_basis(self.capacity, self.served)
    }

    /// `node-a (judged on served; served p99 …; capacity …)`.
    fn describe(&self) -> String {
        let source = self
            .basis()
            .map_or("nothing yet", |(source, _)| source.as_str());
        format!(
            "{} (judged on {source}; {})",
            self.node,
            describe(self.capacity, self.served)
        )
    }
}

/// The status for a PolicyService whose spec is invalid: Ready and ProfilesAssigned False,
/// the rest Unknown, all with reason InvalidSpec. The last plan (nodes, scaling) is kept: the
/// operator leaves existing profiles alone until the spec is fixed.
pub fn invalid(ps: &PolicyService, invalid: &Invalid, now: &Time) -> PolicyServiceStatus {
    let mut status = ps.status.clone().unwrap_or_default();
    let generation = ps.metadata.generation;
    status.observed_generation = generation;
    let message = format!("{invalid}; existing profiles are kept until the spec is fixed");
    for (type_, value) in [
        (READY, cs::FALSE),
        (PROFILES_ASSIGNED, cs::FALSE),
        (PERFORMANCE_COMPLIANT, cs::UNKNOWN),
        (LATENCY_TARGET_MET, cs::UNKNOWN),
        (THROUGHPUT_TARGET_MET, cs::UNKNOWN),
        (MEMORY_WITHIN_LIMIT, cs::UNKNOWN),
    ] {
        conditions::set(
            &mut status.conditions,
            type_,
            value,
            reasons::INVALID_SPEC,
            message.clone(),
            generation,
            now,
        );
    }
    status
}

/// The status after a successful apply of `plan`, given the owned profiles (with the agents'
/// status) and which agents are alive.
pub fn planned(
    ps: &PolicyService,
    plan: &Plan,
    owned: &[Arc<OptimizationProfile>],
    liveness: &Liveness,
    now: &Time,
) -> PolicyServiceStatus {
    let previous = ps.status.clone().unwrap_or_default();
    let generation = ps.metadata.generation;
    let by_node: HashMap<&str, &OptimizationProfile> = owned
        .iter()
        .map(|p| (p.spec.node_name.as_str(), p.as_ref()))
        .collect();
    let planned: Vec<Planned> = plan
        .assignments
        .iter()
        .map(|a| planned_node(&a.node, by_node.get(a.node.as_str()).copied(), liveness))
        .collect();
    let targets = &ps.spec.targets;
    let desired = plan.scaling.desired;
    let limit_mib = targets.memory_limit_mib().ok().flatten();
    let previous_nodes: HashMap<&str, &NodeStatus> = previous
        .nodes
        .iter()
        .map(|n| (n.node.as_str(), n))
        .collect();

    let nodes = plan
        .assignments
        .iter()
        .zip(&planned)
        .map(|(a, p)| {
            let status = by_node.get(a.node.as_str()).and_then(|o| o.status.as_ref());
            let before = previous_nodes.get(a.node.as_str());
            NodeStatus {
                node: a.node.clone(),
                hardware_class: a.class,
                profile: a.profile,
                optimization_profile: a.object.name_any(),
                compliant: p.capacity.and_then(|_| node_compliant(p, targets, desired)),
                chosen: status.and_then(|s| s.chosen.clone()),
                capacity: p.capacity.cloned(),
                served: steady(before.and_then(|b| b.served.as_ref()), p.served.cloned()),
                reason: node_reason(a, p),
            }
        })
        .collect();
    let serving = planned.iter().filter(|p| p.serving).count();
    let serving_replicas = i32::try_from(serving).unwrap_or(i32::MAX);
    let desired_replicas = i32::try_from(desired).unwrap_or(i32::MAX);
    let last_decision_time = match &previous.scaling {
        Some(s) if s.desired_replicas == desired_replicas => s.last_decision_time.clone(),
        _ => Some(now.clone()),
    };

    let verdicts = if plan.eligible == 0 {
        no_eligible_nodes(plan)
    } else {
        let latency = latency(targets, &planned);
        let throughput = throughput(targets, &planned, plan);
        let memory = memory(limit_mib, &planned);
        let performance = performance(&[&latency, &throughput, &memory], planned.len());
        vec![
            (READY, ready(ps, plan, &planned, serving)),
            (PROFILES_ASSIGNED, assigned(plan)),
            (PERFORMANCE_COMPLIANT, performance),
            (LATENCY_TARGET_MET, latency),
            (THROUGHPUT_TARGET_MET, throughput),
            (MEMORY_WITHIN_LIMIT, memory),
        ]
    };
    let mut conditions: Vec<Condition> = previous.conditions.clone();
    for (type_, v) in verdicts {
        conditions::set(
            &mut conditions,
            type_,
            v.status,
            v.reason,
            v.message,
            generation,
            now,
        );
    }

    PolicyServiceStatus {
        observed_generation: generation,
        conditions,
        scaling: Some(ScalingStatus {
            desired_replicas,
            serving_replicas,
            reason: plan.scaling.reason.clone(),
            last_decision_time,
        }),
        capacity: aggregate_capacity(&planned),
        served: steady(previous.served.as_ref(), aggregate_served(&planned)),
        compliance: compliance(&planned),
        nodes,
        endpoint: Some(ServiceEndpoint {
            service: service_name(&ps.name_any()),
            port: i32::from(AGENT_GRPC_PORT),
            model_name: model_name(&ps.namespace().unwrap_or_default(), &ps.name_any()),
        }),
    }
}

/// Served figures change a little with every window: they are rewritten only when one moved
/// by more than 10%, the agents' own rule, so a thousand PolicyServices do not become a write
/// storm.
fn steady(previous: Option<&Served>, new: Option<Served>) -> Option<Served> {
    match (previous, new) {
        (Some(previous), Some(new)) if !new.moved_from(previous, MOVED) => Some(previous.clone()),
        (_, new) => new,
    }
}

/// The relative change that makes served figures worth rewriting.
const MOVED: f64 = 0.10;

fn planned_node<'a>(
    node: &'a str,
    profile: Option<&'a OptimizationProfile>,
    liveness: &Liveness,
) -> Planned<'a> {
    let status = profile.and_then(|p| p.status.as_ref());
    let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let load_failure = conditions::find(conditions, LOADED)
        .filter(|c| c.status == cs::FALSE)
        .map(|c| (c.reason.as_str(), c.message.as_str()));
    let memory_report = conditions
        .iter()
        .find(|c| c.status == cs::FALSE && c.reason == reasons::MEMORY_LIMIT_EXCEEDED)
        .map(|c| c.message.as_str());
    let reports_serving = profile.is_some_and(reports_serving);
    let live = liveness.is_live(node);
    Planned {
        node,
        serving: reports_serving && live,
        lost: (reports_serving && !live).then(|| liveness.age_seconds(node).unwrap_or(-1)),
        capacity: status.and_then(|s| s.capacity.as_ref()),
        served: status.and_then(|s| s.served.as_ref()),
        load_failure,
        memory_report,
    }
}

/// Whether one node's figures meet the targets (latency on its basis, its share of the
/// throughput and memory on capacity); `None` while memory is unmeasured under a limit.
fn node_compliant(p: &Planned, targets: &Targets, desired: u32) -> Option<bool> {
    let capacity = p.capacity?;
    let per_node = Targets {
        throughput_rps: targets
            .throughput_rps
            .map(|rps| rps / f64::from(desired.max(1))),
        ..targets.clone()
    };
    let latency_ok = p
        .basis()
        .is_none_or(|(_, basis)| per_node.latency_misses(basis).is_empty());
    let rest_ok = per_node
        .misses(capacity)
        .iter()
        .all(|m| matches!(m.target, Target::Latency(_)));
    if !(latency_ok && rest_ok) {
        return Some(false);
    }
    (!per_node.unmeasured(capacity).contains(&Target::Memory)).then_some(true)
}

/// One line on a node: why it was chosen and how it stands, with its figures.
fn node_reason(assignment: &Assignment, p: &Planned) -> String {
    let chosen = format!("{} node, {}", assignment.class, assignment.why);
    if let Some(age) = p.lost {
        return format!("{chosen}; agent Lease {age} s old: not serving");
    }
    if let Some((reason, message)) = p.load_failure {
        return format!("{chosen}; {reason}: {message}");
    }
    match (p.serving, p.capacity) {
        (true, Some(_)) => format!("{chosen}; serving: {}", describe(p.capacity, p.served)),
        (true, None) => format!("{chosen}; serving, capacity not yet measured"),
        (false, _) => format!("{chosen}; loading and tuning"),
    }
}

/// "a, b, c and 4 more".
fn list(items: &[String]) -> String {
    let shown = items
        .iter()
        .take(LIST_LIMIT)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    match items.len().saturating_sub(LIST_LIMIT) {
        0 => shown,
        more => format!("{shown}; and {more} more"),
    }
}

/// Planned nodes still expected to measure; `None` when all that can have measured.
fn waiting(planned: &[Planned]) -> Option<String> {
    let expected = planned.iter().filter(|p| !p.failed()).count();
    let measured = planned
        .iter()
        .filter(|p| !p.failed() && p.capacity.is_some())
        .count();
    (expected == 0 || measured < expected)
        .then(|| format!("{measured} of {} planned nodes measured", planned.len()))
}

/// The nodes whose figures count: serving, with a live agent.
fn counted<'p, 'a>(planned: &'p [Planned<'a>]) -> impl Iterator<Item = &'p Planned<'a>> {
    planned.iter().filter(|p| p.serving)
}

fn latency(targets: &Targets, planned: &[Planned]) -> Verdict {
    let limits: Vec<(Quantile, f64)> = targets.latency_limits().collect();
    if limits.is_empty() {
        return verdict(cs::TRUE, reasons::NO_TARGET, "no latency target set");
    }
    let misses: Vec<String> = counted(planned)
        .filter_map(|p| {
            let (_, basis) = p.basis()?;
            let misses: Vec<String> = targets
                .latency_misses(basis)
                .iter()
                .map(ToString::to_string)
                .collect();
            (!misses.is_empty()).then(|| format!("{}: {}", p.describe(), misses.join(", ")))
        })
        .collect();
    if !misses.is_empty() {
        return verdict(cs::FALSE, reasons::LATENCY_TARGET_MISSED, list(&misses));
    }
    if let Some(waiting) = waiting(planned) {
        return verdict(cs::UNKNOWN, reasons::MEASURING, waiting);
    }
    let met: Vec<String> = limits
        .iter()
        .map(|(quantile, limit)| {
            let value = counted(planned)
                .filter_map(|p| p.basis()?.1.latency_ms(*quantile))
                .fold(0.0, f64::max);
            format!("worst {quantile} {value:.3} ≤ {limit}")
        })
        .collect();
    let nodes: Vec<String> = counted(planned).map(Planned::describe).collect();
    verdict(
        cs::TRUE,
        reasons::TARGETS_MET,
        format!("{}; {}", met.join(", "), list(&nodes)),
    )
}

fn throughput(targets: &Targets, planned: &[Planned], plan: &Plan) -> Verdict {
    let Some(target) = targets.throughput_rps else {
        return verdict(cs::TRUE, reasons::NO_TARGET, "no throughput target set");
    };
    let capacities: Vec<f64> = counted(planned)
        .filter_map(|p| p.capacity.map(|c| c.throughput_rps))
        .collect();
    let total: f64 = capacities.iter().sum::<f64>() + 0.0;
    let demand: f64 = counted(planned)
        .filter_map(|p| p.served.map(|s| s.demand_rps))
        .sum::<f64>()
        + 0.0;
    let summary = format!(
        "capacity {total:.0} rps summed over {} serving nodes, target {target:.0} rps (demand \
         {demand:.0} rps)",
        capacities.len()
    );
    if total >= target {
        return verdict(cs::TRUE, reasons::TARGETS_MET, summary);
    }
    if let Some(unreachable) = &plan.scaling.unreachable
        && waiting(planned).is_none()
    {
        return verdict(
            cs::FALSE,
            reasons::THROUGHPUT_TARGET_MISSED,
            format!("{summary}; {unreachable}"),
        );
    }
    if let Some(waiting) = waiting(planned) {
        return verdict(
            cs::UNKNOWN,
            reasons::MEASURING,
            format!("{summary}; {waiting}"),
        );
    }
    verdict(
        cs::FALSE,
        reasons::THROUGHPUT_TARGET_MISSED,
        format!("{summary}; scaling: {}", plan.scaling.reason),
    )
}

fn memory(limit_mib: Option<f64>, planned: &[Planned]) -> Verdict {
    let Some(limit) = limit_mib else {
        return verdict(cs::TRUE, reasons::NO_TARGET, "no memory limit set");
    };
    let over: Vec<String> = planned
        .iter()
        .filter(|p| p.lost.is_none())
        .filter_map(
            |p| match (p.memory_report, p.capacity.and_then(|c| c.memory_mib)) {
                (Some(report), _) => Some(format!("{}: {report}", p.node)),
                (None, Some(mib)) if mib > limit => {
                    Some(format!("{}: {mib:.1} MiB > {limit:.1} MiB", p.node))
                }
                _ => None,
            },
        )
        .collect();
    if !over.is_empty() {
        return verdict(cs::FALSE, reasons::MEMORY_LIMIT_EXCEEDED, list(&over));
    }
    if let Some(waiting) = waiting(planned) {
        return verdict(cs::UNKNOWN, reasons::MEASURING, waiting);
    }
    let unmeasured: Vec<String> = counted(planned)
        .filter(|p| p.capacity.is_some_and(|c| c.memory_mib.is_none()))
        .map(|p| p.node.to_owned())
        .collect();
    if !unmeasured.is_empty() {
        return verdict(
            cs::UNKNOWN,
            reasons::MEASURING,
            format!(
                "memory unmeasured on {}: memoryLimit cannot be judged",
                list(&unmeasured)
            ),
        );
    }
    let worst = counted(planned)
        .filter_map(|p| p.capacity?.memory_mib)
        .fold(0.0, f64::max);
    verdict(
        cs::TRUE,
        reasons::TARGETS_MET,
        format!("worst {worst:.1} MiB ≤ {limit:.1} MiB"),
    )
}

fn performance(parts: &[&Verdict], nodes: usize) -> Verdict {
    let failed: Vec<&&Verdict> = parts.iter().filter(|v| v.status == cs::FALSE).collect();
    if let Some(first) = failed.first() {
        let message = failed
            .iter()
            .map(|v| v.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        return verdict(cs::FALSE, first.reason, message);
    }
    if let Some(unknown) = parts.iter().find(|v| v.status == cs::UNKNOWN) {
        return verdict(cs::UNKNOWN, reasons::MEASURING, unknown.message.clone());
    }
    verdict(
        cs::TRUE,
        reasons::TARGETS_MET,
        format!("all targets met on {nodes} nodes"),
    )
}

fn ready(ps: &PolicyService, plan: &Plan, planned: &[Planned], serving: usize) -> Verdict {
    let min = usize::try_from(ps.spec.placement.min_replicas).unwrap_or(1);
    let summary = format!(
        "{serving} of {} planned nodes serving (minReplicas {min})",
        planned.len()
    );
    if serving >= min {
        return verdict(cs::TRUE, reasons::SERVING, summary);
    }
    let lost: Vec<String> = planned
        .iter()
        .filter_map(|p| Some(format!("{}: agent Lease {} s old", p.node, p.lost?)))
        .collect();
    if !lost.is_empty() {
        return verdict(
            cs::FALSE,
            reasons::AGENT_LOST,
            format!("{summary}; not serving: {}", list(&lost)),
        );
    }
    let failures: Vec<String> = planned
        .iter()
        .filter_map(|p| {
            let (reason, message) = p.load_failure?;
            Some(format!("{}: {reason}: {message}", p.node))
        })
        .collect();
    if !failures.is_empty() {
        return verdict(
            cs::FALSE,
            reasons::MODEL_LOAD_FAILED,
            format!("{summary}; {}", list(&failures)),
        );
    }
    if plan.eligible < min {
        return verdict(
            cs::FALSE,
            reasons::NOT_ENOUGH_ELIGIBLE_NODES,
            format!("{summary}; only {} eligible nodes", plan.eligible),
        );
    }
    verdict(
        cs::FALSE,
        reasons::MEASURING,
        format!("{summary}; agents are loading and tuning"),
    )
}

fn exclusions(plan: &Plan) -> String {
    let mut parts: Vec<String> = plan
        .excluded
        .iter()
        .map(|e| format!("{}: {}", e.node, e.reason))
        .collect();
    if plan.unselected > 0 {
        parts.push(format!(
            "{} not selected by spec.placement.nodeSelector",
            plan.unselected
        ));
    }
    list(&parts)
}

fn assigned(plan: &Plan) -> Verdict {
    let names: Vec<String> = plan
        .assignments
        .iter()
        .map(|a| format!("{} ({})", a.node, a.profile))
        .collect();
    let mut message = format!(
        "{} of {} eligible nodes: {}",
        plan.assignments.len(),
        plan.eligible,
        list(&names)
    );
    if !plan.excluded.is_empty() || plan.unselected > 0 {
        message.push_str(&format!("; excluded: {}", exclusions(plan)));
    }
    verdict(cs::TRUE, reasons::PROFILES_ASSIGNED, message)
}

fn no_eligible_nodes(plan: &Plan) -> Vec<(&'static str, Verdict)> {
    let message = if plan.considered == 0 {
        "no node carries policyserve.io/hardware-class (is the agent DaemonSet running?)".to_owned()
    } else {
        format!(
            "none of {} policyserve nodes can serve: {}",
            plan.considered,
            exclusions(plan)
        )
    };
    let unknown = verdict(cs::UNKNOWN, reasons::NO_ELIGIBLE_NODES, message.clone());
    vec![
        (
            READY,
            verdict(cs::FALSE, reasons::NO_ELIGIBLE_NODES, message.clone()),
        ),
        (
            PROFILES_ASSIGNED,
            verdict(cs::FALSE, reasons::NO_ELIGIBLE_NODES, message),
        ),
        (PERFORMANCE_COMPLIANT, unknown.clone()),
        (LATENCY_TARGET_MET, unknown.clone()),
        (THROUGHPUT_TARGET_MET, unknown.clone()),
        (MEMORY_WITHIN_LIMIT, unknown),
    ]
}

/// The serving nodes' capacity: throughput summed, latency and memory of the worst node
/// (memory unmeasured when any serving node's is).
fn aggregate_capacity(planned: &[Planned]) -> Option<Capacity> {
    let capacities: Vec<&Capacity> = counted(planned).filter_map(|p| p.capacity).collect();
    let first = capacities.first()?;
    let worst = |pick: fn(&Capacity) -> f64| capacities.iter().map(|c| pick(c)).fold(0.0, f64::max);
    let memory = capacities
        .iter()
        .map(|c| c.memory_mib)
        .collect::<Option<Vec<f64>>>()
        .map(|all| all.into_iter().fold(0.0, f64::max));
    Some(Capacity {
        throughput_rps: round(
            capacities.iter().map(|c| c.throughput_rps).sum::<f64>() + 0.0,
            1,
        ),
        latency_p50_ms: worst(|c| c.latency_p50_ms),
        latency_p95_ms: worst(|c| c.latency_p95_ms),
        latency_p99_ms: worst(|c| c.latency_p99_ms),
        memory_mib: memory,
        measured_at: capacities
            .iter()
            .filter_map(|c| c.measured_at.clone())
            .max_by_key(|t| t.0),
        method: format!(
            "throughput summed over {} serving nodes, latency and memory of the worst; each \
             node's: {}",
            capacities.len(),
            first.method
        ),
    })
}

/// The serving nodes' traffic: counts and rates summed (throughput, and demand: what clients
/// asked for), latency of the worst node whose window holds enough requests to judge on.
fn aggregate_served(planned: &[Planned]) -> Option<Served> {
    let windows: Vec<&Served> = counted(planned).filter_map(|p| p.served).collect();
    if windows.is_empty() {
        return None;
    }
    let judged: Vec<&&Served> = windows.iter().filter(|s| s.judgeable()).collect();
    let worst = |pick: fn(&Served) -> Option<f64>| {
        judged
            .iter()
            .filter_map(|s| pick(s))
            .fold(None, |w: Option<f64>, v| Some(w.map_or(v, |w| w.max(v))))
    };
    let mut errors = std::collections::BTreeMap::new();
    for window in &windows {
        for (code, n) in &window.errors {
            *errors.entry(code.clone()).or_insert(0) += n;
        }
    }
    Some(Served {
        window_seconds: windows.iter().map(|s| s.window_seconds).max().unwrap_or(0),
        requests: windows.iter().map(|s| s.requests).sum(),
        throughput_rps: round(
            windows.iter().map(|s| s.throughput_rps).sum::<f64>() + 0.0,
            1,
        ),
        latency_p50_ms: worst(|s| s.latency_p50_ms),
        latency_p95_ms: worst(|s| s.latency_p95_ms),
        latency_p99_ms: worst(|s| s.latency_p99_ms),
        errors,
        rejected: windows.iter().map(|s| s.rejected).sum(),
        demand_rps: round(windows.iter().map(|s| s.demand_rps).sum::<f64>() + 0.0, 1),
        updated_at: windows
            .iter()
            .filter_map(|s| s.updated_at.clone())
            .max_by_key(|t| t.0),
    })
}

/// The P99 compliance is judged on: the worst serving node's, from its own basis.
fn compliance(planned: &[Planned]) -> Option<Compliance> {
    counted(planned)
        .filter_map(|p| {
            let (source, basis) = p.basis()?;
            Some((source, basis.latency_ms(Quantile::P99)?))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(source, p99)| Compliance {
            source,
            latency_p99_ms: Some(p99),
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jiff::Timestamp;

    use super::*;
    use crate::controller::desired::{Settings, plan};
    use crate::controller::fixtures::{NodeBuilder, PolicyServiceBuilder, ProfileBuilder};
    use crate::controller::liveness::Liveness;
    use crate::controller::node::NodeFacts;
    use crate::controller::observe::Observed;
    use crate::controller::scaling::History;

    fn now() -> Time {
        Time(Timestamp::from_second(1_700_000_000).unwrap())
    }

    fn nodes(n: usize) -> Vec<NodeFacts> {
        (0..n)
            .map(|i| {
                NodeBuilder::new(&format!("node-{i}"))
                    .class("balanced")
                    .cpus(8)
                    .memory_mib(16384)
                    .build()
            })
            .collect()
    }

    fn status_of(
        ps: &PolicyService,
        nodes: &[NodeFacts],
        profiles: Vec<OptimizationProfile>,
    ) -> PolicyServiceStatus {
        let live = Liveness::all(nodes.iter().map(|n| n.name.as_str()), now().0);
        status_with(ps, nodes, profiles, &live)
    }

    fn status_with(
        ps: &PolicyService,
        nodes: &[NodeFacts],
        profiles: Vec<OptimizationProfile>,
        live: &Liveness,
    ) -> PolicyServiceStatus {
        let owned: Vec<Arc<OptimizationProfile>> = profiles.into_iter().map(Arc::new).collect();
        let settings = Settings {
            tuning_budget_seconds: 30,
            stabilization_window: Duration::from_secs(60),
        };
        let observed = Observed {
            nodes: nodes.to_vec(),
            liveness: live.clone(),
            measured: crate::controller::placement::model_capacities(ps, &owned),
            owned: owned.clone(),
        };
        let validated = crate::controller::validate(ps).unwrap();
        let plan = plan(
            &validated,
            &observed,
            &mut History::default(),
            &settings,
            now().0,
        );
        planned(ps, &plan, &owned, live, &now())
    }

    fn message(status: &PolicyServiceStatus, type_: &str) -> String {
        conditions::find(&status.conditions, type_)
            .unwrap()
            .message
            .clone()
    }

    fn condition(status: &PolicyServiceStatus, type_: &str) -> (String, String) {
        let c = conditions::find(&status.conditions, type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    fn is(status: &str, reason: &str) -> (String, String) {
        (status.to_owned(), reason.to_owned())
    }

    #[test]
    fn conditions_move_from_measuring_to_met_or_missed_as_agents_report() {
        let ps = PolicyServiceBuilder::new("ps")
            .latency_p99(5.0)
            .throughput(1000.0)
            .memory_limit("1Gi")
            .build();
        let node = || ProfileBuilder::for_node(&ps, "node-0");
        // (profile as the agent wrote it, Ready, Performance, Latency, Throughput, Memory)
        let table = [
            (
                vec![],
                is("False", "Measuring"),
                is("Unknown", "Measuring"),
                is("Unknown", "Measuring"),
                is("Unknown", "Measuring"),
                is("Unknown", "Measuring"),
            ),
            (
                vec![node().serving().build()],
                is("True", "Serving"),
                is("Unknown", "Measuring"),
                is("Unknown", "Measuring"),
                is("Unknown", "Measuring"),
                is("Unknown", "Measuring"),
            ),
            (
                vec![node().serving().capacity(2000.0, 1.0, 100.0).build()],
                is("True", "Serving"),
                is("True", "TargetsMet"),
                is("True", "TargetsMet"),
                is("True", "TargetsMet"),
                is("True", "TargetsMet"),
            ),
            (
                vec![node().serving().capacity(2000.0, 9.0, 100.0).build()],
                is("True", "Serving"),
                is("False", "LatencyTargetMissed"),
                is("False", "LatencyTargetMissed"),
                is("True", "TargetsMet"),
                is("True", "TargetsMet"),
            ),
            (
                vec![node().serving().capacity(2000.0, 1.0, 2048.0).build()],
                is("True", "Serving"),
                is("False", "MemoryLimitExceeded"),
                is("True", "TargetsMet"),
                is("True", "TargetsMet"),
                is("False", "MemoryLimitExceeded"),
            ),
            (
                vec![
                    node()
                        .load_failed("HashMismatch", "sha256 abc != def")
                        .build(),
                ],
                is("False", "ModelLoadFailed"),
                is("Unknown", "Measuring"),
                is("Unknown", "Measuring"),
                is("Unknown", "Measuring"),
                is("Unknown", "Measuring"),
            ),
        ];
        for (i, (profiles, ready, performance, latency, throughput, memory)) in
            table.into_iter().enumerate()
        {
            let status = status_of(&ps, &nodes(1), profiles);
            assert_eq!(condition(&status, READY), ready, "row {i}");
            assert_eq!(
                condition(&status, PROFILES_ASSIGNED),
                is("True", "ProfilesAssigned")
            );
            assert_eq!(
                condition(&status, PERFORMANCE_COMPLIANT),
                performance,
                "row {i}"
            );
            assert_eq!(condition(&status, LATENCY_TARGET_MET), latency, "row {i}");
            assert_eq!(
                condition(&status, THROUGHPUT_TARGET_MET),
                throughput,
                "row {i}"
            );
            assert_eq!(condition(&status, MEMORY_WITHIN_LIMIT), memory, "row {i}");
        }
    }

    #[test]
    fn a_throughput_target_that_max_replicas_cannot_reach_says_so_with_the_numbers() {
        let ps = PolicyServiceBuilder::new("ps")
            .throughput(10000.0)
            .replicas(1, 2)
            .build();
        let profiles = vec![
            ProfileBuilder::for_node(&ps, "node-0")
                .serving()
                .capacity(1000.0, 1.0, 10.0)
                .build(),
            ProfileBuilder::for_node(&ps, "node-1")
                .serving()
                .capacity(1000.0, 1.0, 10.0)
                .build(),
        ];
        let status = status_of(&ps, &nodes(3), profiles);
        let c = conditions::find(&status.conditions, THROUGHPUT_TARGET_MET).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ThroughputTargetMissed")
        );
        assert!(
            c.message
                .contains("even maxReplicas 2 add up to 2000 rps capacity < target 10000 rps"),
            "{}",
            c.message
        );
        assert_eq!(status.scaling.as_ref().unwrap().desired_replicas, 2);
    }

    #[test]
    fn without_eligible_nodes_every_condition_says_no_eligible_nodes() {
        let ps = PolicyServiceBuilder::new("ps").memory_limit("64Gi").build();
        let status = status_of(&ps, &nodes(2), vec![]);
        assert_eq!(condition(&status, READY), is("False", "NoEligibleNodes"));
        assert_eq!(
            condition(&status, PROFILES_ASSIGNED),
            is("False", "NoEligibleNodes")
        );
        assert_eq!(
            condition(&status, PERFORMANCE_COMPLIANT),
            is("Unknown", "NoEligibleNodes")
        );
        let message = &conditions::find(&status.conditions, PROFILES_ASSIGNED)
            .unwrap()
            .message;
        assert!(
            message.contains("node-0: memory-usable-mib 16384 < memoryLimit 65536 MiB"),
            "{message}"
        );
        assert!(status.nodes.is_empty());
        assert_eq!(status.scaling.unwrap().desired_replicas, 0);
    }

    #[test]
    fn an_invalid_spec_sets_ready_and_profiles_assigned_false_naming_the_field() {
        let ps = PolicyServiceBuilder::new("ps").generation(4).build();
        let status = invalid(
            &ps,
            &Invalid {
                field: "spec.placement.maxReplicas".into(),
                message: "maxReplicas 1 is below minReplicas 2".into(),
            },
            &now(),
        );
        assert_eq!(condition(&status, READY), is("False", "InvalidSpec"));
        assert_eq!(
            condition(&status, PROFILES_ASSIGNED),
            is("False", "InvalidSpec")
        );
        let ready = conditions::find(&status.conditions, READY).unwrap();
        assert!(ready.message.starts_with("spec.placement.maxReplicas: "));
        assert_eq!(ready.observed_generation, Some(4));
        assert_eq!(status.observed_generation, Some(4));
    }

    #[test]
    fn the_node_table_and_aggregates_come_from_the_agents_figures() {
        let ps = PolicyServiceBuilder::new("lander")
            .throughput(3000.0)
            .replicas(2, 2)
            .build();
        let profiles = vec![
            ProfileBuilder::for_node(&ps, "node-0")
                .serving()
                .capacity(2000.0, 2.0, 100.0)
                .build(),
            ProfileBuilder::for_node(&ps, "node-1")
                .serving()
                .capacity(1000.0, 4.0, 300.0)
                .build(),
        ];
        let status = status_of(&ps, &nodes(2), profiles);
        let capacity = status.capacity.clone().unwrap();
        assert_eq!(capacity.throughput_rps, 3000.0);
        assert_eq!(capacity.latency_p99_ms, 4.0);
        assert_eq!(capacity.memory_mib, Some(300.0));
        assert_eq!(status.nodes.len(), 2);
        assert_eq!(status.nodes[0].optimization_profile, "lander-node-0");
        assert_eq!(status.nodes[0].compliant, Some(true));
        assert_eq!(
            status.nodes[1].compliant,
            Some(false),
            "below its 1500 rps share"
        );
        assert_eq!(status.scaling.as_ref().unwrap().serving_replicas, 2);
        let endpoint = status.endpoint.unwrap();
        assert_eq!((endpoint.service.as_str(), endpoint.port), ("lander", 8001));
        assert_eq!(endpoint.model_name, "robots.lander");
    }

    #[test]
    fn the_decision_time_moves_only_when_the_desired_count_changes() {
        let earlier = Time(Timestamp::from_second(1_600_000_000).unwrap());
        let ps = PolicyServiceBuilder::new("ps")
            .status(PolicyServiceStatus {
                scaling: Some(ScalingStatus {
                    desired_replicas: 1,
                    serving_replicas: 0,
                    reason: "old".into(),
                    last_decision_time: Some(earlier.clone()),
                }),
                ..PolicyServiceStatus::default()
            })
            .build();
        let status = status_of(&ps, &nodes(1), vec![]);
        assert_eq!(status.scaling.unwrap().last_decision_time, Some(earlier));
    }

    #[test]
    fn recomputing_an_unchanged_status_changes_nothing() {
        let ps = PolicyServiceBuilder::new("ps").build();
        let first = status_of(&ps, &nodes(1), vec![]);
        let again = PolicyServiceBuilder::new("ps")
            .status(first.clone())
            .build();
        assert_eq!(status_of(&again, &nodes(1), vec![]), first);
    }

    #[test]
    fn latency_is_judged_on_served_traffic_with_enough_requests_and_on_capacity_without() {
        let ps = PolicyServiceBuilder::new("ps").latency_p99(2.0).build();
        let node = || {
            ProfileBuilder::for_node(&ps, "node-0")
                .serving()
                .capacity(5000.0, 1.0, 50.0)
        };
        // A busy node whose served tail is over the target, though its sweep was fine.
        let busy = status_of(&ps, &nodes(1), vec![node().served(60_000, 3.0).build()]);
        assert_eq!(
            condition(&busy, LATENCY_TARGET_MET),
            is("False", "LatencyTargetMissed")
        );
        let said = message(&busy, LATENCY_TARGET_MET);
        assert!(said.contains("judged on served"), "{said}");
        assert!(
            said.contains("served p99 3.000 ms over 60000 requests")
                && said.contains("capacity 5000 rps at p99 1.000 ms"),
            "both figures: {said}"
        );
        let compliance = busy.compliance.unwrap();
        assert_eq!(compliance.source, FigureSource::Served);
        assert_eq!(compliance.latency_p99_ms, Some(3.0));
        // Too few requests to judge on: capacity decides, and the message says so.
        let quiet = status_of(&ps, &nodes(1), vec![node().served(10, 3.0).build()]);
        assert_eq!(
            condition(&quiet, LATENCY_TARGET_MET),
            is("True", "TargetsMet")
        );
        assert!(message(&quiet, LATENCY_TARGET_MET).contains("judged on capacity"));
        assert_eq!(quiet.compliance.unwrap().source, FigureSource::Capacity);
    }

    #[test]
    fn a_node_whose_agent_lease_is_stale_leaves_the_sums_and_is_not_serving() {
        let ps = PolicyServiceBuilder::new("ps")
            .throughput(3000.0)
            .replicas(2, 2)
            .build();
        let profiles = vec![
            ProfileBuilder::for_node(&ps, "node-0")
                .serving()
                .capacity(2000.0, 1.0, 50.0)
                .build(),
            ProfileBuilder::for_node(&ps, "node-1")
                .serving()
                .capacity(2000.0, 1.0, 50.0)
                .build(),
        ];
        let live = Liveness::all(["node-0"], now().0);
        let status = status_with(&ps, &nodes(2), profiles, &live);
        assert_eq!(status.capacity.as_ref().unwrap().throughput_rps, 2000.0);
        assert_eq!(status.scaling.as_ref().unwrap().serving_replicas, 1);
        assert_eq!(condition(&status, READY), is("False", "AgentLost"));
        assert!(message(&status, READY).contains("node-1: agent Lease"));
        assert_eq!(
            condition(&status, THROUGHPUT_TARGET_MET),
            is("False", "ThroughputTargetMissed")
        );
        assert!(
            status.nodes[1].reason.contains("not serving"),
            "{}",
            status.nodes[1].reason
        );
    }

    #[test]
    fn unmeasured_memory_is_not_judged_within_the_limit() {
        let ps = PolicyServiceBuilder::new("ps").memory_limit("1Gi").build();
        let profile = ProfileBuilder::for_node(&ps, "node-0")
            .serving()
            .capacity(2000.0, 1.0, 50.0)
            .memory_unmeasured()
            .build();
        let status = status_of(&ps, &nodes(1), vec![profile]);
        assert_eq!(
            condition(&status, MEMORY_WITHIN_LIMIT),
            is("Unknown", "Measuring")
        );
        assert!(message(&status, MEMORY_WITHIN_LIMIT).contains("memory unmeasured on node-0"));
        assert_eq!(status.capacity.unwrap().memory_mib, None);
        assert_eq!(status.nodes[0].compliant, None);
    }

    #[test]
    fn summed_figures_are_written_at_the_agents_precision() {
        let ps = PolicyServiceBuilder::new("ps").replicas(3, 3).build();
        // 0.1 rps from each of three nodes: as floats, 0.1 + 0.1 + 0.1 is 0.30000000000000004.
        let profiles = (0..3)
            .map(|i| {
                ProfileBuilder::for_node(&ps, &format!("node-{i}"))
                    .serving()
                    .capacity(0.1, 1.0, 50.0)
                    .served(6, 1.0)
                    .build()
            })
            .collect();
        let status = status_of(&ps, &nodes(3), profiles);
        assert_eq!(status.served.unwrap().demand_rps, 0.3);
        assert_eq!(status.capacity.unwrap().throughput_rps, 0.3);
    }

    #[test]
    fn served_figures_are_rewritten_only_when_they_move_by_more_than_ten_percent() {
        let ps = PolicyServiceBuilder::new("ps").build();
        let node = |requests| {
            ProfileBuilder::for_node(&ps, "node-0")
                .serving()
                .capacity(5000.0, 1.0, 50.0)
                .served(requests, 1.0)
                .build()
        };
        let first = status_of(&ps, &nodes(1), vec![node(6000)]);
        let again = PolicyServiceBuilder::new("ps")
            .status(first.clone())
            .build();
        let close = status_of(&again, &nodes(1), vec![node(6300)]);
        assert_eq!(close.served, first.served, "5% is not worth a write");
        let far = status_of(&again, &nodes(1), vec![node(9000)]);
        assert_eq!(far.served.unwrap().requests, 9000);
    }
}
