//! Tier 2 (real kube-apiserver + etcd): the operator's controller, run in-process.
//!
//! Each test starts its own controller restricted to its namespace and to Nodes carrying its
//! own `policyserve.io/test-run` label, so tests run in parallel on one apiserver. Nodes are
//! plain API objects (no kubelet); agents are played by patching OptimizationProfile status.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use policyserve_crds::conditions::{PROFILES_ASSIGNED, READY, THROUGHPUT_TARGET_MET};
use policyserve_operator::FINALIZER;
use policyserve_operator::leader::{Leadership, LeaseSettings};
use policyserve_tests::world::{TIMEOUT, World, condition, policy_service, serving};
use policyserve_tests::{client, eventually, test_namespace};
use serde_json::json;

#[tokio::test]
async fn a_policy_service_gets_a_profile_on_the_best_node_and_reports_measuring() -> Result<()> {
    let world = World::start("op-assign").await?;
    let big = world
        .node(
            "big",
            "high-performance-cpu",
            &[
                ("cpu-usable", "32"),
                ("cpu-cores", "16"),
                ("memory-usable-mib", "65536"),
            ],
        )
        .await?;
    world
        .node(
            "mid",
            "balanced",
            &[("cpu-usable", "4"), ("memory-usable-mib", "16384")],
        )
        .await?;
    world
        .create(policy_service(
            "lander",
            json!({"latencyP99Ms": 5.0, "memoryLimit": "2Gi"}),
            json!({}),
        ))
        .await?;

    let profiles = world.profiles_on("lander", &[&big]).await?;
    let profile = &profiles[0];
    assert_eq!(profile.name_any(), format!("lander-{big}"));
    assert_eq!(profile.labels()["policyserve.io/node"], big);
    assert_eq!(profile.labels()["policyserve.io/policy-service"], "lander");
    assert_eq!(profile.spec.profile.as_str(), "HighPerformanceCPU");
    assert_eq!(
        profile.spec.search_space.intra_op_threads,
        vec![1, 2, 4, 8, 16]
    );
    let owner = &profile.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("PolicyService", "lander", Some(true))
    );
    let managers: Vec<String> = profile
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, ["policyserve-operator"]);

    let assigned = world
        .condition("lander", PROFILES_ASSIGNED, "True", "ProfilesAssigned")
        .await?;
    assert!(assigned.message.contains(&big), "{}", assigned.message);
    world
        .condition("lander", READY, "False", "Measuring")
        .await?;
    world
        .condition("lander", "PerformanceCompliant", "Unknown", "Measuring")
        .await?;
    let ps = world.policy_services().get("lander").await?;
    assert!(ps.finalizers().iter().any(|f| f == FINALIZER));
    let status = ps.status.context("status")?;
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.nodes.len(), 1);
    assert_eq!(status.scaling.context("scaling")?.desired_replicas, 1);
    let endpoint = status.endpoint.context("endpoint")?;
    assert_eq!(endpoint.model_name, format!("{}.lander", world.namespace));
    Ok(())
}

#[tokio::test]
async fn measured_capacity_scales_out_then_in_after_the_stabilization_window() -> Result<()> {
    let world = World::start("op-scale").await?;
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
            json!({"throughputRps": 5000, "latencyP99Ms": 5.0}),
            json!({"minReplicas": 1, "maxReplicas": 3, "headroomPercent": 20}),
        ))
        .await?;
    let first = world.profiles_on("swarm", &[&nodes[0]]).await?;
    assert_eq!(first[0].spec.targets.throughput_rps, Some(5000.0));

    // 5000 × 1.2 ÷ 2000 = 3 nodes.
    world
        .agent_reports(&first[0].name_any(), serving(2000.0, 1.0, 200.0))
        .await?;
    let all: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let profiles = world.profiles_on("swarm", &all).await?;
    assert!(
        profiles
            .iter()
            .all(|p| p.spec.targets.throughput_rps == Some(5000.0 / 3.0))
    );
    world
        .condition("swarm", THROUGHPUT_TARGET_MET, "Unknown", "Measuring")
        .await?;
    for profile in &profiles {
        world
            .agent_reports(&profile.name_any(), serving(2000.0, 1.0, 200.0))
            .await?;
    }
    let met = world
        .condition("swarm", THROUGHPUT_TARGET_MET, "True", "TargetsMet")
        .await?;
    assert!(
        met.message
            .contains("capacity 6000 rps summed over 3 serving nodes"),
        "{}",
        met.message
    );
    world
        .condition("swarm", "PerformanceCompliant", "True", "TargetsMet")
        .await?;
    world.condition("swarm", READY, "True", "Serving").await?;
    let ps = world.policy_services().get("swarm").await?;
    let status = ps.status.context("status")?;
    assert_eq!(status.capacity.context("capacity")?.throughput_rps, 6000.0);
    assert!(status.nodes.iter().all(|n| n.compliant == Some(true)));

    // Faster agents: one node suffices, after the (2 s) window.
    for profile in &profiles {
        world
            .agent_reports(&profile.name_any(), serving(20000.0, 1.0, 200.0))
            .await?;
    }
    world.profiles_on("swarm", &[&nodes[0]]).await?;
    // The extra profiles go before the status is written: wait for the status too.
    let services = world.policy_services();
    eventually("the status to want one replica", TIMEOUT, || {
        let services = services.clone();
        async move {
            let ps = services.get("swarm").await?;
            let scaling = ps.status.and_then(|s| s.scaling);
            Ok(scaling.filter(|s| s.desired_replicas == 1).map(|_| ()))
        }
    })
    .await?;

    // Events are recorded just after the status they describe is written.
    let events = Api::<Event>::namespaced(world.client.clone(), &world.namespace);
    let wanted = ["ProfilesAssigned", "ScaledUp", "TargetsMet", "ScaledDown"];
    let found = eventually("an Event of each decision", TIMEOUT, || {
        let events = events.clone();
        async move {
            let reasons: Vec<String> = events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter_map(|e| e.reason)
                .collect();
            let all = wanted.iter().all(|w| reasons.iter().any(|r| r == w));
            Ok(all.then_some(reasons))
        }
    })
    .await;
    assert!(found.is_ok(), "{found:?}: want {wanted:?}");
    Ok(())
}

#[tokio::test]
async fn a_target_that_max_replicas_cannot_reach_is_reported_with_the_numbers() -> Result<()> {
    let world = World::start("op-unreachable").await?;
    let node = world.node("n", "balanced", &[]).await?;
    world
        .create(policy_service(
            "big-ask",
            json!({"throughputRps": 10000}),
            json!({"maxReplicas": 1}),
        ))
        .await?;
    let profiles = world.profiles_on("big-ask", &[&node]).await?;
    world
        .agent_reports(&profiles[0].name_any(), serving(1000.0, 1.0, 100.0))
        .await?;
    let missed = world
        .condition(
            "big-ask",
            THROUGHPUT_TARGET_MET,
            "False",
            "ThroughputTargetMissed",
        )
        .await?;
    assert!(
        missed
            .message
            .contains("even maxReplicas 1 add up to 1000 rps capacity < target 10000 rps"),
        "{}",
        missed.message
    );
    Ok(())
}

#[tokio::test]
async fn a_gpu_node_joining_is_planned_and_its_removal_unplans_it() -> Result<()> {
    let world = World::start("op-gpu").await?;
    world.node("cpu", "balanced", &[]).await?;
    let mut ps = policy_service("cuda-only", json!({"latencyP99Ms": 2.0}), json!({}));
    ps["spec"]["tuning"] = json!({"executionProviders": ["CUDA"]});
    world.create(ps).await?;
    let none = world
        .condition("cuda-only", PROFILES_ASSIGNED, "False", "NoEligibleNodes")
        .await?;
    assert!(
        none.message
            .contains("no GPU for tuning.executionProviders [CUDA]"),
        "{}",
        none.message
    );
    world
        .condition("cuda-only", READY, "False", "NoEligibleNodes")
        .await?;

    let gpu = world
        .node(
            "gpu",
            "gpu-accelerated",
            &[
                ("gpu.count", "1"),
                ("gpu.compute.major", "8"),
                ("gpu.compute.minor", "0"),
            ],
        )
        .await?;
    let profiles = world.profiles_on("cuda-only", &[&gpu]).await?;
    assert_eq!(profiles[0].spec.profile.as_str(), "GPUAccelerated");
    world
        .condition("cuda-only", PROFILES_ASSIGNED, "True", "ProfilesAssigned")
        .await?;

    world.nodes().delete(&gpu, &DeleteParams::default()).await?;
    world.profiles_on("cuda-only", &[]).await?;
    world
        .condition("cuda-only", PROFILES_ASSIGNED, "False", "NoEligibleNodes")
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_node_label_change_makes_a_node_eligible() -> Result<()> {
    let world = World::start("op-relabel").await?;
    let node = world
        .node(
            "small",
            "memory-constrained",
            &[("memory-usable-mib", "512")],
        )
        .await?;
    world
        .create(policy_service(
            "hungry",
            json!({"memoryLimit": "1Gi"}),
            json!({}),
        ))
        .await?;
    let none = world
        .condition("hungry", PROFILES_ASSIGNED, "False", "NoEligibleNodes")
        .await?;
    assert!(
        none.message
            .contains("memory-usable-mib 512 < memoryLimit 1024 MiB"),
        "{}",
        none.message
    );

    world
        .nodes()
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "hw.policyserve.io/memory-usable-mib": "4096",
                "policyserve.io/hardware-class": "balanced"
            }}})),
        )
        .await?;
    let profiles = world.profiles_on("hungry", &[&node]).await?;
    assert_eq!(profiles[0].spec.hardware_class.as_str(), "balanced");
    world
        .condition("hungry", PROFILES_ASSIGNED, "True", "ProfilesAssigned")
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_model_load_failure_reported_by_an_agent_surfaces_as_model_load_failed() -> Result<()> {
    let world = World::start("op-loadfail").await?;
    let node = world.node("n", "balanced", &[]).await?;
    world
        .create(policy_service(
            "broken",
            json!({"latencyP99Ms": 5.0}),
            json!({}),
        ))
        .await?;
    let profiles = world.profiles_on("broken", &[&node]).await?;
    world
        .agent_reports(
            &profiles[0].name_any(),
            json!({"conditions": [
                condition("Loaded", "False", "HashMismatch", "sha256 of the download is 00ff…, expected ab12…"),
                condition("Serving", "False", "HashMismatch", "not serving"),
            ]}),
        )
        .await?;
    let ready = world
        .condition("broken", READY, "False", "ModelLoadFailed")
        .await?;
    assert!(
        ready.message.contains("HashMismatch: sha256"),
        "{}",
        ready.message
    );
    Ok(())
}

#[tokio::test]
async fn an_invalid_spec_reports_invalid_spec_naming_the_field_until_fixed() -> Result<()> {
    let world = World::start("op-invalid").await?;
    let node = world.node("n", "balanced", &[]).await?;
    // The CEL rule minReplicas <= maxReplicas is dropped by this 1.20 apiserver, so the
    // operator is what catches it (as it must on any cluster before 1.25).
    world
        .create(policy_service(
            "upside-down",
            json!({"latencyP99Ms": 5.0}),
            json!({"minReplicas": 3, "maxReplicas": 2}),
        ))
        .await?;
    let ready = world
        .condition("upside-down", READY, "False", "InvalidSpec")
        .await?;
    assert!(
        ready.message.starts_with("spec.placement.maxReplicas: "),
        "{}",
        ready.message
    );
    world
        .condition("upside-down", PROFILES_ASSIGNED, "False", "InvalidSpec")
        .await?;
    assert!(
        world
            .profiles()
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
    );

    world
        .policy_services()
        .patch(
            "upside-down",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"placement": {"minReplicas": 1}}})),
        )
        .await?;
    world.profiles_on("upside-down", &[&node]).await?;
    let assigned = world
        .condition("upside-down", PROFILES_ASSIGNED, "True", "ProfilesAssigned")
        .await?;
    assert_eq!(assigned.observed_generation, Some(2));
    Ok(())
}

#[tokio::test]
async fn deleting_a_policy_service_deletes_its_profiles_before_it_goes() -> Result<()> {
    let world = World::start("op-delete").await?;
    let a = world.node("a", "balanced", &[]).await?;
    let b = world.node("b", "balanced", &[]).await?;
    world
        .create(policy_service(
            "doomed",
            json!({"latencyP99Ms": 5.0}),
            json!({"minReplicas": 2}),
        ))
        .await?;
    world.profiles_on("doomed", &[&a, &b]).await?;
    world
        .policy_services()
        .delete("doomed", &DeleteParams::default())
        .await?;
    world.profiles_on("doomed", &[]).await?;
    let api = world.policy_services();
    eventually("the PolicyService to be gone", TIMEOUT, || {
        let api = api.clone();
        async move { Ok(api.get_opt("doomed").await?.is_none().then_some(())) }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn of_two_replicas_only_one_leads_and_the_other_takes_over_on_release() -> Result<()> {
    let client = client().await?;
    let namespace = test_namespace(&client, "op-lease").await?;
    let settings = |identity: &str| LeaseSettings {
        namespace: namespace.clone(),
        name: "policyserve-operator".into(),
        identity: identity.into(),
        duration_seconds: 3,
    };
    let mut first = Leadership::contend(client.clone(), &settings("first")).await?;
    tokio::time::timeout(TIMEOUT, first.acquired()).await?;
    let mut second = Leadership::contend(client.clone(), &settings("second")).await?;
    assert!(
        tokio::time::timeout(Duration::from_secs(2), second.acquired())
            .await
            .is_err(),
        "the second replica must not lead while the first holds the Lease"
    );
    first.release().await;
    tokio::time::timeout(TIMEOUT, second.acquired()).await?;
    second.release().await;
    Ok(())
}
