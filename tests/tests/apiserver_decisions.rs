//! Tier 2 (real kube-apiserver + etcd): the operator's decisions from the agents' figures —
//! scaling on demand with each node's own capacity, placement by measured efficiency, and the
//! arithmetic and reasons in the status. Agents are played by writing profile statuses (and
//! renewing their Leases); the scale-down stabilization window is 2 s.

use std::time::Duration;

use anyhow::{Context, Result};
use kube::ResourceExt;
use policyserve_tests::eventually;
use policyserve_tests::world::{TIMEOUT, World, policy_service, serving};
use serde_json::{Value, json};

/// A serving agent's status whose last window saw `demand_rps` (all answered).
fn serving_with_demand(capacity_rps: f64, demand_rps: f64) -> Value {
    let mut status = serving(capacity_rps, 1.0, 100.0);
    status["served"] = json!({
        "windowSeconds": 60,
        "requests": (demand_rps * 60.0) as u64,
        "throughputRps": demand_rps,
        "latencyP50Ms": 0.5, "latencyP95Ms": 0.8, "latencyP99Ms": 1.0,
        "rejected": 0,
        "demandRps": demand_rps,
    });
    status
}

async fn desired(world: &World, ps: &str) -> Result<(i32, String)> {
    let status = world.policy_services().get(ps).await?.status;
    let scaling = status.and_then(|s| s.scaling).context("scaling")?;
    Ok((scaling.desired_replicas, scaling.reason))
}

#[tokio::test]
async fn demand_scales_out_over_estimated_nodes_and_back_in_without_oscillating() -> Result<()> {
    let world = World::start("dec-demand").await?;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(
            world
                .node(
                    "n",
                    "balanced",
                    &[("cpu-usable", "4"), ("memory-usable-mib", "8192")],
                )
                .await?,
        );
    }
    world
        .create(policy_service(
            "swarm",
            json!({"latencyP99Ms": 5.0}),
            json!({"minReplicas": 1, "maxReplicas": 3, "headroomPercent": 20}),
        ))
        .await?;
    let first = world.profiles_on("swarm", &[&nodes[0]]).await?;

    // 2500 rps of demand × 1.2 = 3000: the measured node's 1000 plus two unmeasured nodes of
    // its class, each counted as its 1000 (estimated).
    world
        .agent_reports(&first[0].name_any(), serving_with_demand(1000.0, 2500.0))
        .await?;
    let all: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let profiles = world.profiles_on("swarm", &all).await?;
    let (count, reason) = desired(&world, "swarm").await?;
    assert_eq!(count, 3, "{reason}");
    assert!(
        reason.contains("demand 2500") && reason.contains("= 3000 rps"),
        "{reason}"
    );
    assert!(
        reason.contains("(estimated: lowest measured balanced)"),
        "{reason}"
    );

    // Demand falls to 300 rps: one node covers 360, after the window and never oscillating.
    for profile in &profiles {
        let demand = if profile.spec.node_name == nodes[0] {
            300.0
        } else {
            0.0
        };
        world
            .agent_reports(&profile.name_any(), serving_with_demand(1000.0, demand))
            .await?;
    }
    let seen = std::sync::Mutex::new(Vec::new());
    eventually("scaling in to one node", TIMEOUT, || async {
        let (count, reason) = desired(&world, "swarm").await?;
        seen.lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .push(count);
        Ok((count == 1).then_some(reason))
    })
    .await?;
    let seen = seen.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
    assert!(seen.windows(2).all(|w| w[1] <= w[0]), "only down: {seen:?}");
    let (_, reason) = desired(&world, "swarm").await?;
    assert!(
        reason.contains("demand 300") && reason.contains("= 360 rps"),
        "{reason}"
    );
    Ok(())
}

#[tokio::test]
async fn the_more_efficient_node_serves_the_next_policy_service_of_the_same_model() -> Result<()> {
    let world = World::start("dec-place").await?;
    // Sixteen CPUs for 4000 rps (250 per CPU) against four CPUs for 4000 rps (1000 per CPU);
    // the wide node's name sorts first, so only the measured efficiency can put the lean first.
    let wide = world
        .node(
            "a-wide",
            "balanced",
            &[("cpu-usable", "16"), ("memory-usable-mib", "8192")],
        )
        .await?;
    let lean = world
        .node(
            "b-lean",
            "balanced",
            &[("cpu-usable", "4"), ("memory-usable-mib", "8192")],
        )
        .await?;
    let targets = json!({"latencyP99Ms": 5.0});
    world
        .create(policy_service(
            "first",
            targets.clone(),
            json!({"minReplicas": 2, "maxReplicas": 2}),
        ))
        .await?;
    for profile in world.profiles_on("first", &[&wide, &lean]).await? {
        world
            .agent_reports(&profile.name_any(), serving(4000.0, 1.0, 100.0))
            .await?;
    }
    world.condition("first", "Ready", "True", "Serving").await?;

    world
        .create(policy_service(
            "second",
            targets,
            json!({"minReplicas": 1, "maxReplicas": 1}),
        ))
        .await?;
    world.profiles_on("second", &[&lean]).await?;
    let status = world
        .policy_services()
        .get("second")
        .await?
        .status
        .context("status")?;
    let reason = &status.nodes.first().context("a node entry")?.reason;
    assert!(
        reason.contains("4000 rps measured for this model, 1000 per CPU"),
        "{reason}"
    );
    // The first PolicyService's serving nodes stay where they are.
    world.profiles_on("first", &[&wide, &lean]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = world
        .policy_services()
        .get("first")
        .await?
        .status
        .context("status")?;
    assert!(
        first
            .nodes
            .iter()
            .all(|n| n.reason.contains("already serving")),
        "{:?}",
        first.nodes
    );
    Ok(())
}
