//! Tier 3 (end to end), the figures a status reports: capacity measured through the serving
//! path, live served traffic, judgements on them, and agent liveness. The operator and agents
//! run in-process on the test apiserver with real ONNX Runtime and real gRPC; the agents'
//! served window is 4 s and they write at most every second (60 s and 30 s in a cluster).
//!
//! Figures depend on this machine and on the other tests running beside these, so the tests
//! assert what the figures mean (which basis, what moved, what left the sums), never how fast.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use policyserve_crds::conditions::{self, LATENCY_TARGET_MET, READY, TUNED};
use policyserve_crds::{
    AGENT_LEASE_TIMEOUT_SECONDS, Capacity, FigureSource, OptimizationProfile, PolicyService, Served,
};
use policyserve_tests::eventually;
use policyserve_tests::local::{
    Cluster, SERVED_WINDOW_SECONDS, TIMEOUT, burst_load, load, tiny_spec,
};
use serde_json::json;

fn served_of(profile: &OptimizationProfile) -> Option<Served> {
    profile.status.as_ref()?.served.clone()
}

fn capacity_of(profile: &OptimizationProfile) -> Option<Capacity> {
    profile.status.as_ref()?.capacity.clone()
}

/// Waits until the one profile of `name` satisfies `check`, and returns it; on a timeout the
/// error carries the status last seen.
async fn profile_until(
    cluster: &Cluster,
    name: &str,
    what: &str,
    check: impl Fn(&OptimizationProfile) -> bool,
) -> Result<OptimizationProfile> {
    profile_within(cluster, name, what, TIMEOUT, check).await
}

/// [`profile_until`] with its own timeout.
async fn profile_within(
    cluster: &Cluster,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&OptimizationProfile) -> bool,
) -> Result<OptimizationProfile> {
    let last = std::sync::Mutex::new(None);
    let found = eventually(what, timeout, || async {
        let profiles = cluster.profiles_of(name).await?;
        if let (Ok(mut last), Some(first)) = (last.lock(), profiles.first()) {
            *last = first.status.clone();
        }
        Ok(profiles.into_iter().find(|p| check(p)))
    })
    .await;
    found.with_context(|| format!("last seen: {:?}", last.lock().ok().and_then(|l| l.clone())))
}

/// Waits until PolicyService `name` satisfies `check`, and returns it.
async fn policy_service_until(
    cluster: &Cluster,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&PolicyService) -> bool,
) -> Result<PolicyService> {
    let api = cluster.policy_services();
    eventually(what, timeout, || async {
        let ps = api.get(name).await?;
        Ok(check(&ps).then_some(ps))
    })
    .await
}

/// Waits until PolicyService `name`'s condition `type_` satisfies `check`, and returns it.
async fn condition_until(
    cluster: &Cluster,
    name: &str,
    type_: &str,
    check: impl Fn(&Condition) -> bool,
) -> Result<Condition> {
    let ps = policy_service_until(cluster, name, &format!("{name} {type_}"), TIMEOUT, |ps| {
        ps.status
            .as_ref()
            .is_some_and(|s| conditions::find(&s.conditions, type_).is_some_and(&check))
    })
    .await?;
    ps.status
        .and_then(|s| conditions::find(&s.conditions, type_).cloned())
        .context("the condition")
}

#[tokio::test]
async fn served_traffic_reaches_the_profile_and_the_policy_service_and_goes_idle_after()
-> Result<()> {
    let mut cluster = Cluster::start("fig-served").await?;
    cluster.add_node("cpu", "balanced-node.json").await?;
    cluster
        .model_config_map("tiny", "policy-mlp-tiny.onnx")
        .await?;
    cluster
        .apply("cartpole", tiny_spec("tiny", json!({"latencyP99Ms": 50.0})))
        .await?;
    cluster.condition("cartpole", READY, "True").await?;
    // The capacity sweep sent thousands of requests; none of them counts as served.
    let idle = profile_until(&cluster, "cartpole", "a served window", |p| {
        served_of(p).is_some()
    })
    .await?;
    assert_eq!(served_of(&idle).map(|s| s.requests), Some(0), "{idle:?}");

    let load_for = Duration::from_secs(3 * SERVED_WINDOW_SECONDS);
    let driving = tokio::spawn({
        let profile = idle.clone();
        async move { load(&profile, 16, 1, 2, load_for).await }
    });
    let busy = profile_until(
        &cluster,
        "cartpole",
        "served requests in the profile",
        |p| served_of(p).is_some_and(|s| s.requests > 0 && s.latency_p99_ms.is_some()),
    )
    .await?;
    let served = served_of(&busy).context("served")?;
    assert!(served.throughput_rps > 0.0 && served.demand_rps >= served.throughput_rps);
    assert!(
        served.errors.is_empty() && served.rejected == 0,
        "{served:?}"
    );
    policy_service_until(
        &cluster,
        "cartpole",
        "served requests in the PolicyService",
        TIMEOUT,
        |ps| {
            ps.status
                .as_ref()
                .and_then(|s| s.served.as_ref())
                .is_some_and(|s| s.requests > 0 && s.demand_rps > 0.0)
        },
    )
    .await?;
    let answered = driving.await??;
    assert!(answered > 0);

    profile_until(&cluster, "cartpole", "the profile to go idle", |p| {
        served_of(p).is_some_and(|s| s.requests == 0 && s.latency_p99_ms.is_none())
    })
    .await?;
    policy_service_until(
        &cluster,
        "cartpole",
        "the PolicyService to go idle",
        TIMEOUT,
        |ps| {
            ps.status
                .as_ref()
                .and_then(|s| s.served.as_ref())
                .is_some_and(|s| s.requests == 0)
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn latency_is_judged_on_served_traffic_under_load_and_on_capacity_without() -> Result<()> {
    let mut cluster = Cluster::start("fig-judged").await?;
    cluster.add_node("cpu", "balanced-node.json").await?;
    cluster.model_config_map("mlp", "policy-mlp.onnx").await?;
    let mut spec = tiny_spec("mlp", json!({"latencyP99Ms": 2.0}));
    spec["tuning"] = json!({"maxBatchSize": 256});
    cluster.apply("lander", spec).await?;
    cluster.condition("lander", READY, "True").await?;
    // No traffic yet: the judgement rests on the sweep, and says so.
    let quiet = condition_until(&cluster, "lander", LATENCY_TARGET_MET, |c| {
        c.message.contains("judged on capacity")
    })
    .await?;
    assert!(quiet.message.contains("capacity"), "{}", quiet.message);

    // Requests of 64 rows from sixteen clients at once: each waits behind the others, far
    // beyond 2 ms at the server, whatever the sweep found for single rows. Small enough that a
    // slow machine still answers the 1,000 requests a window needs to be judged on (256-row
    // requests from eight clients came to 800-900 per 4 s window on a slow 2-vCPU machine).
    let profile = cluster.profiles_of("lander").await?.remove(0);
    let driving = tokio::spawn({
        let profile = profile.clone();
        async move { load(&profile, 64, 64, 16, Duration::from_secs(12)).await }
    });
    let missed = condition_until(&cluster, "lander", LATENCY_TARGET_MET, |c| {
        c.status == "False" && c.message.contains("judged on served")
    })
    .await?;
    assert_eq!(missed.reason, "LatencyTargetMissed");
    assert!(
        missed.message.contains("served p99") && missed.message.contains("capacity"),
        "both figures: {}",
        missed.message
    );
    let ps = cluster.policy_services().get("lander").await?;
    let compliance = ps.status.and_then(|s| s.compliance).context("compliance")?;
    assert_eq!(compliance.source, FigureSource::Served);
    assert!(compliance.latency_p99_ms.is_some_and(|p99| p99 > 2.0));
    driving.await??;
    Ok(())
}

#[tokio::test]
async fn editing_the_latency_target_re_runs_the_capacity_sweep() -> Result<()> {
    let mut cluster = Cluster::start("fig-edit").await?;
    cluster.add_node("cpu", "balanced-node.json").await?;
    cluster
        .model_config_map("tiny", "policy-mlp-tiny.onnx")
        .await?;
    cluster
        .apply("hopper", tiny_spec("tiny", json!({"latencyP99Ms": 50.0})))
        .await?;
    let first = profile_until(&cluster, "hopper", "a capacity", |p| {
        capacity_of(p).is_some()
    })
    .await?;
    let before = capacity_of(&first).context("capacity")?;

    // 10 µs: no request over gRPC comes back that fast, so no rate holds it.
    cluster
        .apply("hopper", tiny_spec("tiny", json!({"latencyP99Ms": 0.01})))
        .await?;
    let after = profile_until(&cluster, "hopper", "a new sweep for the new target", |p| {
        capacity_of(p).is_some_and(|c| c.measured_at != before.measured_at)
            && p.metadata.generation > first.metadata.generation
            && p.status.as_ref().is_some_and(|s| {
                conditions::find(&s.conditions, TUNED).is_some_and(|c| {
                    c.status == "True" && c.observed_generation == p.metadata.generation
                })
            })
    })
    .await?;
    let capacity = capacity_of(&after).context("capacity")?;
    assert_eq!(capacity.throughput_rps, 0.0, "{capacity:?}");
    assert!(capacity.latency_p99_ms > 0.01, "{capacity:?}");
    let tuned = after
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, TUNED).cloned())
        .context("Tuned")?;
    assert_eq!(tuned.reason, "Retuned");
    assert!(
        tuned.message.contains("because the profile changed")
            && tuned.message.contains("was CPU")
            && tuned.message.contains("now CPU"),
        "the old and new figures: {}",
        tuned.message
    );
    // The operator judges the new figures once it has seen them (it may first judge the old
    // capacity against the new target, which misses it too).
    let missed = condition_until(&cluster, "hopper", "PerformanceCompliant", |c| {
        c.reason == "LatencyTargetMissed" && c.message.contains("capacity 0 rps")
    })
    .await?;
    assert!(
        missed.message.contains("served"),
        "served and capacity figures: {}",
        missed.message
    );
    Ok(())
}

#[tokio::test]
async fn an_agent_that_stops_leaves_the_sums_within_the_lease_timeout() -> Result<()> {
    let mut cluster = Cluster::start("fig-lost").await?;
    let first = cluster.add_node("cpu", "balanced-node.json").await?;
    let second = cluster.add_node("cpu", "balanced-node.json").await?;
    cluster
        .model_config_map("tiny", "policy-mlp-tiny.onnx")
        .await?;
    let mut spec = tiny_spec("tiny", json!({"latencyP99Ms": 50.0}));
    spec["placement"] = json!({"minReplicas": 2, "maxReplicas": 2});
    cluster.apply("walker", spec).await?;
    let both = policy_service_until(&cluster, "walker", "two serving nodes", TIMEOUT, |ps| {
        ps.status.as_ref().is_some_and(|s| {
            s.scaling.as_ref().is_some_and(|x| x.serving_replicas == 2)
                && s.nodes.iter().all(|n| n.capacity.is_some())
        })
    })
    .await?;
    let ready = both
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, READY).cloned());
    assert_eq!(ready.map(|c| c.status), Some("True".to_owned()));

    cluster.stop_agent(&first).await?;
    let started = std::time::Instant::now();
    let lost = policy_service_until(
        &cluster,
        "walker",
        "the stopped agent's node to leave",
        Duration::from_secs(AGENT_LEASE_TIMEOUT_SECONDS + 30),
        |ps| {
            ps.status
                .as_ref()
                .and_then(|s| s.scaling.as_ref())
                .is_some_and(|s| s.serving_replicas == 1)
        },
    )
    .await?;
    assert!(
        started.elapsed() >= Duration::from_secs(AGENT_LEASE_TIMEOUT_SECONDS - 15),
        "left after {:?}: the Lease, not the stop, decides",
        started.elapsed()
    );
    let status = lost.status.context("status")?;
    let capacity = status.capacity.clone().context("capacity")?;
    // The figure may have been re-swept meanwhile; what counts is that one node's is summed.
    let node = status
        .nodes
        .iter()
        .find(|n| n.node == second)
        .and_then(|n| n.capacity.clone())
        .context("the remaining node's capacity")?;
    assert_eq!(
        capacity.throughput_rps, node.throughput_rps,
        "{:?}",
        status.nodes
    );
    let ready = conditions::find(&status.conditions, READY).context("Ready")?;
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "AgentLost")
    );
    assert!(ready.message.contains(&first), "{}", ready.message);
    let reason = &status
        .nodes
        .iter()
        .find(|n| n.node == first)
        .context("the lost node's entry")?
        .reason;
    assert!(reason.contains("not serving"), "{reason}");
    Ok(())
}

#[tokio::test]
async fn an_idle_model_is_probed_again_and_a_busy_one_is_not() -> Result<()> {
    let mut cluster = Cluster::start("fig-probe").await?;
    cluster.revalidate_seconds = 1;
    cluster.add_node("cpu", "balanced-node.json").await?;
    cluster
        .model_config_map("tiny", "policy-mlp-tiny.onnx")
        .await?;
    cluster
        .apply("cartpole", tiny_spec("tiny", json!({"latencyP99Ms": 50.0})))
        .await?;
    let tuned = profile_until(&cluster, "cartpole", "a capacity", |p| {
        capacity_of(p).is_some() && served_of(p).is_some()
    })
    .await?;
    // Idle: within a few windows a probe measures the capacity again.
    let first = capacity_of(&tuned).context("capacity")?;
    let probed = profile_until(&cluster, "cartpole", "a probe of the idle model", |p| {
        capacity_of(p).is_some_and(|c| c.measured_at != first.measured_at)
    })
    .await?;
    let last_probe = capacity_of(&probed).context("capacity")?.measured_at;

    // Busy for four windows: no probe may run, so the capacity stays as it was.
    let busy_for = Duration::from_secs(4 * SERVED_WINDOW_SECONDS);
    let driving = tokio::spawn({
        let profile = probed.clone();
        async move { load(&profile, 16, 1, 1, busy_for).await }
    });
    // A probe that was already running when the load began stops at its first request.
    tokio::time::sleep(Duration::from_secs(SERVED_WINDOW_SECONDS)).await;
    let settled = cluster.profiles_of("cartpole").await?.remove(0);
    let during = capacity_of(&settled).context("capacity")?.measured_at;
    tokio::time::sleep(busy_for - Duration::from_secs(SERVED_WINDOW_SECONDS + 1)).await;
    let still = cluster.profiles_of("cartpole").await?.remove(0);
    assert!(
        served_of(&still).is_some_and(|s| s.requests > 0),
        "the load is served: {still:?}"
    );
    assert_eq!(
        capacity_of(&still).context("capacity")?.measured_at,
        during,
        "no probe while the model serves traffic"
    );
    assert!(during >= last_probe);
    driving.await??;
    Ok(())
}

#[tokio::test]
async fn served_latency_held_above_target_below_capacity_retunes_and_says_why() -> Result<()> {
    let mut cluster = Cluster::start("fig-drift").await?;
    // The test needs a capacity above its load. A sweep on a busy machine can find none (its
    // requests leave late: a CI run measured 0 rps), so the idle model is probed again until
    // one is found; the load below keeps every window busy, which stops the probes.
    cluster.revalidate_seconds = 3;
    cluster.add_node("cpu", "balanced-node.json").await?;
    cluster
        .model_config_map("tiny", "policy-mlp-tiny.onnx")
        .await?;
    cluster
        .apply("cartpole", tiny_spec("tiny", json!({"latencyP99Ms": 20.0})))
        .await?;
    let ready = profile_within(
        &cluster,
        "cartpole",
        "a capacity above the load",
        3 * TIMEOUT,
        |p| capacity_of(p).is_some_and(|c| c.throughput_rps >= 600.0) && served_of(p).is_some(),
    )
    .await?;
    let capacity = capacity_of(&ready).context("capacity")?.throughput_rps;
    // Half the capacity (300 to 600 requests) at once every second: demand below the capacity,
    // at least the 1,000 requests per 4 s window that served latency is judged on, and the last
    // of each burst waits behind the others for longer than 20 ms (the burst takes about half a
    // second of the server's capacity). The agents here re-tune after two windows. A loose
    // target, because the sweep confirms a capacity at 20 ms on a busy machine far more often
    // than at a few milliseconds.
    let burst = ((capacity / 2.0) as usize).clamp(300, 600);
    println!("capacity {capacity:.0} rps: bursts of {burst} requests a second");
    let driving = tokio::spawn({
        let profile = ready.clone();
        let run_for = Duration::from_secs(8 * SERVED_WINDOW_SECONDS);
        async move { burst_load(&profile, 16, burst, Duration::from_secs(1), run_for).await }
    });
    let retuned = profile_until(&cluster, "cartpole", "a re-tuning for drift", |p| {
        p.status.as_ref().is_some_and(|s| {
            conditions::find(&s.conditions, TUNED)
                .is_some_and(|c| c.reason == "Retuned" && c.message.contains("served latencyP"))
        })
    })
    .await?;
    let tuned = retuned
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, TUNED).cloned())
        .context("Tuned")?;
    assert!(
        tuned.message.contains("below capacity")
            && tuned.message.contains("was ")
            && tuned.message.contains("now "),
        "{}",
        tuned.message
    );
    assert!(driving.await?? > 0);
    Ok(())
}

#[tokio::test]
async fn a_first_tune_beside_a_served_model_reports_that_models_latency_before_and_during()
-> Result<()> {
    let mut cluster = Cluster::start("fig-beside").await?;
    cluster.add_node("cpu", "balanced-node.json").await?;
    cluster
        .model_config_map("tiny", "policy-mlp-tiny.onnx")
        .await?;
    cluster
        .apply("first", tiny_spec("tiny", json!({"latencyP99Ms": 50.0})))
        .await?;
    let first = profile_until(&cluster, "first", "the first model serving", |p| {
        capacity_of(p).is_some() && p.status.as_ref().is_some_and(|s| s.endpoint.is_some())
    })
    .await?;
    let served_as = first
        .status
        .as_ref()
        .and_then(|s| s.endpoint.as_ref())
        .map(|e| e.model_name.clone())
        .context("endpoint")?;
    // Real traffic at the first model from before the second one's tuning to after it.
    let driving = tokio::spawn({
        let profile = first.clone();
        async move { load(&profile, 16, 1, 2, Duration::from_secs(20)).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster
        .apply("second", tiny_spec("tiny", json!({"latencyP99Ms": 50.0})))
        .await?;
    let second = profile_until(&cluster, "second", "the second model tuned", |p| {
        p.status.as_ref().is_some_and(|s| {
            conditions::find(&s.conditions, TUNED).is_some_and(|c| c.status == "True")
        })
    })
    .await?;
    let message = second
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, TUNED))
        .map(|c| c.message.clone())
        .context("Tuned")?;
    println!("the second model's Tuned: {message}");
    assert!(
        message.contains(&format!("served here while it tuned: {served_as} p99 ")),
        "{message}"
    );
    // Both figures come from real requests: the load ran before and through the tuning.
    let counts = message
        .rsplit_once('(')
        .map(|(_, counts)| counts.trim_end_matches(')').to_owned())
        .context("request counts")?;
    let numbers: Vec<u64> = counts
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        numbers.len() == 2 && numbers.iter().all(|n| *n > 0),
        "{message}"
    );
    assert!(driving.await?? > 0);
    Ok(())
}
