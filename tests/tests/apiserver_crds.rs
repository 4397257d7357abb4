//! Tier 2 (real kube-apiserver + etcd): the CRDs as the apiserver sees them.

use anyhow::Result;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use policyserve_crds::{PolicyService, PolicyServiceStatus, ProfileSelection, ScalingStatus};
use policyserve_tests::{client, install_crds, test_namespace, workspace_root};
use serde_json::{Value, json};

async fn setup(prefix: &str) -> Result<(Client, String)> {
    let client = client().await?;
    install_crds(&client).await?;
    let namespace = test_namespace(&client, prefix).await?;
    Ok((client, namespace))
}

fn lander(name: &str) -> Value {
    json!({
        "apiVersion": "policyserve.io/v1alpha1",
        "kind": "PolicyService",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "configMap": {"name": "lander-model", "key": "model.onnx"},
                "variants": [{"precision": "int8", "configMap": {"name": "lander-model", "key": "model.int8.onnx"}}]
            },
            "targets": {"latencyP50Ms": 2.0, "latencyP99Ms": 5.0, "throughputRps": 5000, "memoryLimit": "512Mi"}
        }
    })
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
    let (client, namespace) = setup("invalid").await?;
    let mut negative_latency = lander("negative");
    negative_latency["spec"]["targets"]["latencyP99Ms"] = json!(-1.0);
    let mut unknown_profile = lander("unknown-profile");
    unknown_profile["spec"]["profile"] = json!("Turbo");
    let mut no_model = lander("no-model");
    no_model["spec"].as_object_mut().unwrap().remove("model");
    let mut no_targets = lander("no-targets");
    no_targets["spec"]
        .as_object_mut()
        .unwrap()
        .remove("targets");
    let mut empty_targets = lander("empty-targets");
    empty_targets["spec"]["targets"] = json!({});
    let mut bad_hash = lander("bad-hash");
    bad_hash["spec"]["model"] =
        json!({"url": {"uri": "https://models.example/l.onnx", "sha256": "abc"}});
    let mut zero_replicas = lander("zero-replicas");
    zero_replicas["spec"]["placement"] = json!({"minReplicas": 0});

    let cases = [
        (negative_latency, "spec.targets.latencyP99Ms"),
        (unknown_profile, "spec.profile"),
        (no_model, "spec.model"),
        (no_targets, "spec.targets"),
        (empty_targets, "spec.targets"),
        (bad_hash, "spec.model.url.sha256"),
        (zero_replicas, "spec.placement.minReplicas"),
    ];
    for (object, field) in cases {
        let name = object["metadata"]["name"].clone();
        let message = rejection(&client, &namespace, object).await?;
        assert!(
            message.contains(field),
            "{name}: message {message:?} should name {field}"
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
