//! Tier 3 (end to end): a real kube-apiserver, the operator's controller and agents in-process
//! with simulated hardware (examples/hardware), real ONNX Runtime and real gRPC clients.
//!
//! What cannot run here: a kubelet (Nodes are plain API objects; agents run as tasks, not
//! pods) and a GPU (the simulated GPU node executes on CPU; its profile reports the fallback).
//! Each test has its own namespace, node label and controller, so tests run in parallel.

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use policyserve_crds::conditions::{self, LOADED, PERFORMANCE_COMPLIANT, READY, SERVING};
use policyserve_tests::eventually;
use policyserve_tests::local::{
    Cluster, TIMEOUT, UNLOAD_GRACE_SECONDS, infer_through, serving, tiny_spec,
};
use serde_json::json;

#[tokio::test]
async fn a_policy_service_is_tuned_served_and_reported_compliant_with_its_capacity() -> Result<()> {
    let mut cluster = Cluster::start("e2e-compliant").await?;
    cluster.add_node("cpu", "balanced-node.json").await?;
    cluster
        .model_config_map("tiny-model", "policy-mlp-tiny.onnx")
        .await?;
    cluster
        .apply(
            "cartpole",
            tiny_spec(
                "tiny-model",
                json!({"latencyP99Ms": 50.0, "memoryLimit": "2Gi"}),
            ),
        )
        .await?;

    let compliant = cluster
        .condition("cartpole", PERFORMANCE_COMPLIANT, "True")
        .await?;
    cluster.condition("cartpole", READY, "True").await?;
    let ps = cluster.policy_services().get("cartpole").await?;
    let status = ps.status.context("status")?;
    let capacity = status.capacity.context("aggregate figures")?;
    assert!(
        capacity.latency_p99_ms > 0.0 && capacity.latency_p99_ms < 50.0,
        "{capacity:?}"
    );
    // How much the sweep finds depends on this machine's load; where the figure comes from
    // and that it is the node's own do not.
    let node = status.nodes[0]
        .capacity
        .clone()
        .context("the node's capacity")?;
    assert_eq!(capacity.throughput_rps, node.throughput_rps, "{capacity:?}");
    assert!(capacity.memory_mib.is_some(), "{capacity:?}");
    assert!(
        capacity.method.contains("loopback gRPC"),
        "{}",
        capacity.method
    );
    assert_eq!(status.nodes.len(), 1);
    assert!(
        status.nodes[0].chosen.is_some(),
        "the node table shows the chosen configuration"
    );
    assert_eq!(compliant.observed_generation, ps.metadata.generation);

    let profiles = cluster.profiles_of("cartpole").await?;
    let profile = profiles.first().context("a profile")?;
    assert!(serving(profile));
    let action = infer_through(profile, 16).await?;
    assert_eq!(action.len(), 4, "the served model answers over gRPC");
    Ok(())
}

#[tokio::test]
async fn an_impossible_target_is_reported_with_numbers_and_scales_to_max_replicas() -> Result<()> {
    let mut cluster = Cluster::start("e2e-impossible").await?;
    for _ in 0..2 {
        cluster.add_node("cpu", "balanced-node.json").await?;
    }
    cluster
        .model_config_map("tiny-model", "policy-mlp-tiny.onnx")
        .await?;
    let mut spec = tiny_spec(
        "tiny-model",
        json!({"latencyP99Ms": 50.0, "throughputRps": 1.0e9}),
    );
    spec["placement"]["maxReplicas"] = json!(2);
    cluster.apply("greedy", spec).await?;

    let missed = cluster
        .condition("greedy", PERFORMANCE_COMPLIANT, "False")
        .await?;
    assert_eq!(missed.reason, "ThroughputTargetMissed", "{missed:?}");
    let api = cluster.policy_services();
    let scaling = eventually("scaling to maxReplicas", TIMEOUT, || async {
        let scaling = api.get("greedy").await?.status.and_then(|s| s.scaling);
        Ok(scaling.filter(|s| s.desired_replicas == 2))
    })
    .await?;
    let throughput = cluster
        .condition("greedy", "ThroughputTargetMet", "False")
        .await?;
    assert!(
        throughput.message.contains("1000000000"),
        "the message carries the target: {throughput:?}"
    );
    assert!(!scaling.reason.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_broken_model_reports_model_load_failed_while_other_services_stay_served() -> Result<()> {
    let mut cluster = Cluster::start("e2e-broken").await?;
    cluster.add_node("cpu", "balanced-node.json").await?;
    cluster
        .model_config_map("good-model", "policy-mlp-tiny.onnx")
        .await?;
    cluster
        .model_config_map("bad-model", "broken/truncated.onnx")
        .await?;
    cluster
        .apply(
            "good",
            tiny_spec("good-model", json!({"latencyP99Ms": 50.0})),
        )
        .await?;
    cluster
        .apply("bad", tiny_spec("bad-model", json!({"latencyP99Ms": 50.0})))
        .await?;

    let failed = cluster
        .condition_with_reason("bad", READY, "ModelLoadFailed")
        .await?;
    assert_eq!(failed.status, "False");
    assert!(
        failed.message.contains("failed to load model"),
        "{failed:?}"
    );
    cluster.condition("good", READY, "True").await?;
    let good = cluster.profiles_of("good").await?;
    assert_eq!(infer_through(&good[0], 16).await?.len(), 4);
    let bad = cluster.profiles_of("bad").await?;
    let loaded = bad[0]
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, LOADED).cloned());
    assert_eq!(loaded.map(|c| c.reason), Some("ModelLoadFailed".into()));
    Ok(())
}

#[tokio::test]
async fn removing_a_node_replans_onto_the_remaining_one() -> Result<()> {
    let mut cluster = Cluster::start("e2e-removal").await?;
    let first = cluster.add_node("cpu", "balanced-node.json").await?;
    let second = cluster.add_node("cpu", "balanced-node.json").await?;
    cluster
        .model_config_map("tiny-model", "policy-mlp-tiny.onnx")
        .await?;
    let mut spec = tiny_spec("tiny-model", json!({"latencyP99Ms": 50.0}));
    spec["placement"]["minReplicas"] = json!(1);
    spec["placement"]["maxReplicas"] = json!(1);
    cluster.apply("walker", spec).await?;
    cluster.condition("walker", READY, "True").await?;
    let planned = cluster.profiles_of("walker").await?;
    let planned_node = planned[0].spec.node_name.clone();
    let other = if planned_node == first { second } else { first };

    cluster.stop_agent(&planned_node).await?;
    Api::<Node>::all(cluster.client.clone())
        .delete(&planned_node, &DeleteParams::default())
        .await?;
    let profiles = cluster.profiles();
    let moved = eventually("the profile to move to the other node", TIMEOUT, || async {
        let list = profiles.list(&Default::default()).await?.items;
        Ok(list
            .into_iter()
            .find(|p| p.spec.node_name == other && serving(p)))
    })
    .await?;
    assert_eq!(infer_through(&moved, 16).await?.len(), 4);
    let left = cluster.profiles_of("walker").await?;
    assert!(
        left.iter().all(|p| p.spec.node_name != planned_node),
        "the removed node's profile is gone"
    );
    Ok(())
}

#[tokio::test]
async fn an_agent_restart_recovers_without_losing_status() -> Result<()> {
    let mut cluster = Cluster::start("e2e-restart").await?;
    let node = cluster.add_node("cpu", "balanced-node.json").await?;
    cluster
        .model_config_map("tiny-model", "policy-mlp-tiny.onnx")
        .await?;
    cluster
        .apply(
            "hopper",
            tiny_spec("tiny-model", json!({"latencyP99Ms": 50.0})),
        )
        .await?;
    cluster
        .condition("hopper", PERFORMANCE_COMPLIANT, "True")
        .await?;
    let before = cluster.profiles_of("hopper").await?.remove(0);

    cluster.stop_agent(&node).await?;
    // While the agent is down its last measurements stay on record.
    let during = cluster.profiles_of("hopper").await?.remove(0);
    assert_eq!(
        during.status.as_ref().and_then(|s| s.capacity.clone()),
        before.status.as_ref().and_then(|s| s.capacity.clone())
    );
    cluster.start_agent(&node);
    let profiles = cluster.profiles();
    let name = before.name_any();
    let after = eventually("the restarted agent to serve again", TIMEOUT, || async {
        let p = profiles.get(&name).await?;
        let fresh = p.status.as_ref().and_then(|s| s.endpoint.clone())
            != before.status.as_ref().and_then(|s| s.endpoint.clone());
        Ok((serving(&p) && fresh).then_some(p))
    })
    .await?;
    assert_eq!(infer_through(&after, 16).await?.len(), 4);
    cluster
        .condition("hopper", PERFORMANCE_COMPLIANT, "True")
        .await?;
    Ok(())
}

#[tokio::test]
async fn updating_the_model_reloads_it() -> Result<()> {
    let mut cluster = Cluster::start("e2e-update").await?;
    cluster.add_node("cpu", "balanced-node.json").await?;
    cluster
        .model_config_map("tiny-model", "policy-mlp-tiny.onnx")
        .await?;
    cluster
        .model_config_map("small-model", "policy-mlp.onnx")
        .await?;
    cluster
        .apply(
            "swapper",
            tiny_spec("tiny-model", json!({"latencyP99Ms": 50.0})),
        )
        .await?;
    cluster.condition("swapper", READY, "True").await?;
    let profile = cluster.profiles_of("swapper").await?.remove(0);
    assert_eq!(infer_through(&profile, 16).await?.len(), 4);

    cluster
        .apply(
            "swapper",
            tiny_spec("small-model", json!({"latencyP99Ms": 50.0})),
        )
        .await?;
    let profiles = cluster.profiles();
    let name = profile.name_any();
    let reloaded = eventually("the new model to serve", TIMEOUT, || async {
        let p = profiles.get(&name).await?;
        let serving_now = p
            .status
            .as_ref()
            .and_then(|s| conditions::find(&s.conditions, SERVING).cloned());
        let new_spec = p
            .spec
            .model
            .source
            .config_map
            .as_ref()
            .is_some_and(|c| c.name == "small-model");
        let reloaded = new_spec
            && serving_now.is_some_and(|c| {
                c.status == "True" && c.observed_generation == p.metadata.generation
            });
        Ok(reloaded.then_some(p))
    })
    .await?;
    let action = infer_through(&reloaded, 64).await?;
    if action.len() != 16 {
        bail!(
            "expected the 64 -> 16 model after the update, got {} outputs",
            action.len()
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_deleted_profile_is_served_through_the_unload_grace_and_then_unloaded() -> Result<()> {
    let mut cluster = Cluster::start("e2e-grace").await?;
    cluster.add_node("cpu", "balanced-node.json").await?;
    cluster
        .model_config_map("tiny-model", "policy-mlp-tiny.onnx")
        .await?;
    cluster
        .apply(
            "walker",
            tiny_spec("tiny-model", json!({"latencyP99Ms": 50.0})),
        )
        .await?;
    cluster.condition("walker", READY, "True").await?;
    let profile = cluster.profiles_of("walker").await?.remove(0);
    assert_eq!(infer_through(&profile, 16).await?.len(), 4);

    // A scale-in to nothing: the profile goes, and with it the node's place in the endpoints.
    cluster
        .policy_services()
        .delete("walker", &DeleteParams::default())
        .await?;
    let profiles = cluster.profiles();
    eventually("the profile to be deleted", TIMEOUT, || async {
        Ok(profiles
            .get_opt(&profile.name_any())
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    let gone = std::time::Instant::now();
    // A client that has not followed the endpoints yet is still answered.
    assert_eq!(infer_through(&profile, 16).await?.len(), 4);
    assert!(
        gone.elapsed().as_secs() < UNLOAD_GRACE_SECONDS,
        "the check ran within the grace"
    );
    // Once the grace has passed the model is unloaded.
    let unloaded = eventually("the model to be unloaded", TIMEOUT, || async {
        Ok(infer_through(&profile, 16).await.err())
    })
    .await?;
    assert!(
        format!("{unloaded:?}").contains("is not served here"),
        "{unloaded:?}"
    );
    assert!(gone.elapsed().as_secs() >= UNLOAD_GRACE_SECONDS - 1);
    Ok(())
}
