//! Tier 2 (real kube-apiserver + etcd): the CRDs as the apiserver sees them.

use anyhow::Result;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use policyserve_crds::{PolicyService, PolicyServiceStatus, ProfileSelection, ScalingStatus};
use policyserve_tests::specs::{Enforced, invalid_policy_services, lander};
use policyserve_tests::{client, install_crds, test_namespace, workspace_root};
use serde_json::{Value, json};

async fn setup(prefix: &str) -> Result<(Client, String)> {
    let client = client().await?;
    install_crds(&client).await?;
    let namespace = test_namespace(&client, prefix).await?;
    Ok((client, namespace))
}

/// Creates `object` as a PolicyService and returns the apiserver's refusal message.
async fn rejection(client: &Client, namespace: &str, object: Value) -> Result<String> {
    let api = Api::<PolicyService>::namespaced(client.clone(), namespace);
    let object: PolicyService = match serde_json::from_value(object.clone()) {
        Ok(typed) => typed,
        // Not representable in the Rust types: send it untyped, as kubectl would.
        Err(_) => return untyped_rejection(client, namespace, object).await,
    };
    match api.create(&PostParams::default(), &object).await {
        Ok(created) => anyhow::bail!("apiserver accepted an invalid PolicyService: {created:?}"),
        Err(kube::Error::Api(status)) => Ok(status.message),
        Err(other) => Err(other.into()),
    }
}

async fn untyped_rejection(client: &Client, namespace: &str, object: Value) -> Result<String> {
    let gvk = GroupVersionKind::gvk("policyserve.io", "v1alpha1", "PolicyService");
    let api = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        namespace,
        &ApiResource::from_gvk_with_plural(&gvk, "policyservices"),
    );
    let object: DynamicObject = serde_json::from_value(object)?;
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => anyhow::bail!("apiserver accepted an invalid PolicyService"),
        Err(kube::Error::Api(status)) => Ok(status.message),
        Err(other) => Err(other.into()),
    }
}

#[tokio::test]
async fn crds_install_and_become_established_with_short_names() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    // Installing twice is a no-op, as helm upgrade and the operator's start-up expect.
    install_crds(&client).await?;
    let discovery = kube::discovery::Discovery::new(client).run().await?;
    let group = discovery
        .get("policyserve.io")
        .expect("policyserve.io is served");
    let kinds: Vec<String> = group
        .recommended_resources()
        .into_iter()
        .map(|(r, _)| r.kind)
        .collect();
    assert!(kinds.contains(&"PolicyService".to_owned()), "{kinds:?}");
    assert!(
        kinds.contains(&"OptimizationProfile".to_owned()),
        "{kinds:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_valid_policy_service_round_trips_with_defaults_filled_in() -> Result<()> {
    let (client, namespace) = setup("roundtrip").await?;
    let api = Api::<PolicyService>::namespaced(client, &namespace);
    let sent: PolicyService = serde_json::from_value(lander("lander"))?;
    api.create(&PostParams::default(), &sent).await?;
    let stored = api.get("lander").await?;
    assert_eq!(stored.spec.model, sent.spec.model);
    assert_eq!(stored.spec.targets, sent.spec.targets);
    assert_eq!(stored.spec.profile, ProfileSelection::Auto);
    assert_eq!(stored.spec.placement.min_replicas, 1);
    assert_eq!(stored.spec.placement.max_replicas, 10);
    assert_eq!(stored.spec.placement.headroom_percent, 20);
    Ok(())
}

#[tokio::test]
async fn invalid_policy_services_are_rejected_with_a_message_naming_the_field() -> Result<()> {
    // Kubernetes 1.20 drops the CEL rules, so it refuses only what the schema says; the
    // operator's validation covers the rest (apiserver_current_crds.rs runs the whole table on
    // 1.36 and through the operator).
    let (client, namespace) = setup("invalid").await?;
    let cases: Vec<_> = invalid_policy_services()
        .into_iter()
        .filter(|case| case.enforced == Enforced::Schema)
        .collect();
    assert!(
        cases.len() >= 8,
        "the schema cases shrank to {}",
        cases.len()
    );
    for case in cases {
        let message = rejection(&client, &namespace, case.object).await?;
        assert!(
            message.contains(case.field),
            "{}: message {message:?} should name {}",
            case.name,
            case.field
        );
    }
    Ok(())
}

#[tokio::test]
async fn status_is_a_subresource_and_spec_edits_bump_the_generation() -> Result<()> {
    let (client, namespace) = setup("status").await?;
    let api = Api::<PolicyService>::namespaced(client, &namespace);
    let created = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(lander("lander"))?,
        )
        .await?;
    assert_eq!(created.metadata.generation, Some(1));

    let status = PolicyServiceStatus {
        observed_generation: Some(1),
        scaling: Some(ScalingStatus {
            desired_replicas: 2,
            serving_replicas: 1,
            reason: "test".into(),
            last_decision_time: None,
        }),
        ..PolicyServiceStatus::default()
    };
    let patched = api
        .patch_status(
            "lander",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    assert_eq!(patched.status, Some(status.clone()));
    assert_eq!(
        patched.metadata.generation,
        Some(1),
        "a status write is not a spec change"
    );

    // A status sent through the main resource is ignored, as the subresource contract says.
    let ignored =
        json!({"spec": {"targets": {"latencyP99Ms": 9.0}}, "status": {"observedGeneration": 42}});
    let edited = api
        .patch("lander", &PatchParams::default(), &Patch::Merge(ignored))
        .await?;
    assert_eq!(edited.metadata.generation, Some(2));
    assert_eq!(edited.spec.targets.latency_p99_ms, Some(9.0));
    assert_eq!(edited.status.and_then(|s| s.observed_generation), Some(1));
    Ok(())
}

#[tokio::test]
async fn every_example_policy_service_is_accepted_by_the_apiserver() -> Result<()> {
    let (client, namespace) = setup("examples").await?;
    let api = Api::<PolicyService>::namespaced(client, &namespace);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut seen = 0;
    for entry in std::fs::read_dir(workspace_root().join("examples"))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document)?;
            if value["kind"] != "PolicyService" {
                continue;
            }
            let object: PolicyService = serde_json::from_value(value)?;
            api.create(&dry_run, &object)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            seen += 1;
        }
    }
    assert!(
        seen >= 3,
        "expected an example per model source kind, found {seen}"
    );
    Ok(())
}
