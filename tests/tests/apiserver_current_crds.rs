//! Tier 2 on current Kubernetes: the chart's CRDs on Kubernetes 1.36's apiextensions-apiserver
//! (`scripts/apiext.sh`), which checks what the 1.20 control plane drops: CEL rules and their
//! cost budget, field-named CEL messages, validation ratcheting. That server has no core types
//! and no `/apis` discovery, so everything here goes through typed `Api`s or explicit
//! `ApiResource`s; the objects' namespaces exist on the 1.20 control plane it delegates to.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use policyserve_crds::{PolicyService, PolicyServiceStatus, ScalingStatus};
use policyserve_operator::FIELD_MANAGER;
use policyserve_tests::specs::{invalid_policy_services, lander, operator_verdict};
use policyserve_tests::{
    apply_crds, client, current_crd_client, eventually, install_crds, test_namespace, unique_name,
    wait_established, workspace_root,
};
use serde_json::{Value, json};

/// A client for the 1.36 server with the CRDs applied, and a fresh namespace for the test.
async fn setup(prefix: &str) -> Result<(Client, String)> {
    let core = client().await?;
    let namespace = test_namespace(&core, prefix).await?;
    let current = current_crd_client().await?;
    apply_crds(&current).await?;
    Ok((current, namespace))
}

fn policy_services(client: &Client, namespace: &str, group: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(group, "v1alpha1", "PolicyService");
    Api::namespaced_with(
        client.clone(),
        namespace,
        &ApiResource::from_gvk_with_plural(&gvk, "policyservices"),
    )
}

/// Creates `object` untyped, as kubectl would, and returns the server's refusal message.
async fn refusal(api: &Api<DynamicObject>, object: &Value) -> Result<String> {
    let object: DynamicObject = serde_json::from_value(object.clone())?;
    match api.create(&PostParams::default(), &object).await {
        Ok(created) => anyhow::bail!("accepted an invalid PolicyService: {created:?}"),
        Err(kube::Error::Api(status)) => Ok(status.message),
        Err(other) => Err(other.into()),
    }
}

/// The PolicyService CRD as committed, moved to `group` so a test can change its schema without
/// touching the CRD every other test uses.
fn policy_service_crd_in(group: &str) -> Result<Value> {
    let path = workspace_root().join("charts/policyserve/crds/policyservices.policyserve.io.yaml");
    let mut crd: Value = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
    crd["metadata"]["name"] = json!(format!("policyservices.{group}"));
    crd["spec"]["group"] = json!(group);
    Ok(crd)
}

async fn create_crd(client: &Client, crd: &Value) -> Result<Api<CustomResourceDefinition>> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(crd.clone())?;
    let name = crd.name_any();
    api.create(&PostParams::default(), &crd)
        .await
        .with_context(|| format!("the server refused CRD {name}"))?;
    wait_established(&api, &name).await?;
    Ok(api)
}

/// Applies `f` to every object in the schema tree (depth first).
fn walk(value: &mut Value, f: &mut impl FnMut(&mut serde_json::Map<String, Value>)) {
    match value {
        Value::Object(map) => {
            f(map);
            for child in map.values_mut() {
                walk(child, f);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| walk(item, f)),
        _ => {}
    }
}

#[tokio::test]
async fn the_committed_crds_are_accepted_and_established_by_kubernetes_1_36() -> Result<()> {
    let client = current_crd_client().await?;
    // Applying twice is a no-op, as helm upgrade expects.
    apply_crds(&client).await?;
    apply_crds(&client).await?;
    let version: Value = client
        .request(http::Request::get("/version").body(Vec::new())?)
        .await?;
    let minor: u32 = version["minor"]
        .as_str()
        .unwrap_or_default()
        .trim_end_matches('+')
        .parse()?;
    assert_eq!(version["major"], "1", "{version}");
    assert!(minor >= 35, "the current CRD server is {version}");
    Ok(())
}

#[tokio::test]
async fn every_cel_rule_fits_its_cost_budget_with_a_hundredfold_margin() -> Result<()> {
    // The estimated cost of a rule grows with the bounds of the lists and strings it sits in
    // (an unbounded variants list was 1.19 times over the budget): a copy of the CRD with every
    // bound a hundred times larger must still be accepted.
    let client = current_crd_client().await?;
    let group = format!("{}.margin.policyserve.io", unique_name("m"));
    let mut crd = policy_service_crd_in(&group)?;
    let mut bounds = 0;
    walk(&mut crd["spec"]["versions"], &mut |schema| {
        for key in ["maxItems", "maxLength", "maxProperties"] {
            if let Some(bound) = schema.get(key).and_then(Value::as_u64) {
                schema.insert(key.to_owned(), json!(bound * 100));
                bounds += 1;
            }
        }
    });
    assert!(bounds >= 5, "only {bounds} bounds in the schema");
    create_crd(&client, &crd).await?;
    Ok(())
}

#[tokio::test]
async fn every_example_policy_service_is_accepted_by_kubernetes_1_36_and_the_operator() -> Result<()>
{
    let (client, namespace) = setup("current-examples").await?;
    let api = policy_services(&client, &namespace, "policyserve.io");
    let mut seen = 0;
    for entry in std::fs::read_dir(workspace_root().join("examples"))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document)?;
            // The server has no ConfigMaps: only the PolicyServices are sent.
            if value["kind"] != "PolicyService" {
                continue;
            }
            operator_verdict(&value)
                .map_err(|e| anyhow::anyhow!("{}: the operator refused: {e}", path.display()))?;
            let object: DynamicObject = serde_json::from_value(value)?;
            api.create(&PostParams::default(), &object)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            seen += 1;
        }
    }
    assert!(
        seen >= 3,
        "expected an example per model source, found {seen}"
    );
    Ok(())
}

#[tokio::test]
async fn invalid_policy_services_are_refused_by_kubernetes_1_36_and_the_operator_alike()
-> Result<()> {
    let (client, namespace) = setup("current-invalid").await?;
    let api = policy_services(&client, &namespace, "policyserve.io");
    let cases = invalid_policy_services();
    assert!(cases.len() >= 14, "the table shrank to {}", cases.len());
    for case in cases {
        let server = refusal(&api, &case.object).await?;
        let operator = operator_verdict(&case.object)
            .err()
            .with_context(|| format!("{}: the operator accepted it", case.name))?;
        for (judge, message) in [("Kubernetes 1.36", &server), ("the operator", &operator)] {
            assert!(
                message.contains(case.field),
                "{}: {judge} said {message:?}, which does not name {}",
                case.name,
                case.field
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn spec_and_status_are_server_side_applied_as_the_operator() -> Result<()> {
    let (client, namespace) = setup("current-ssa").await?;
    let api = Api::<PolicyService>::namespaced(client, &namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = api
        .patch("lander", &params, &Patch::Apply(lander("lander")))
        .await?;
    assert_eq!(applied.metadata.generation, Some(1));
    // Defaults are filled in by the server, as on 1.20.
    assert_eq!(applied.spec.placement.min_replicas, 1);
    assert_eq!(applied.spec.placement.max_replicas, 10);
    assert_eq!(applied.spec.placement.headroom_percent, 20);
    assert_eq!(
        serde_json::to_value(applied.spec.profile)?,
        json!("Auto"),
        "profile default"
    );

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
    let patch = json!({
        "apiVersion": "policyserve.io/v1alpha1",
        "kind": "PolicyService",
        "status": status,
    });
    let patched = api
        .patch_status("lander", &params, &Patch::Apply(&patch))
        .await?;
    assert_eq!(patched.status, Some(status));
    assert_eq!(patched.metadata.generation, Some(1), "status is not spec");
    let managers: Vec<(String, String)> = patched
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            (
                m.manager.unwrap_or_default(),
                m.subresource.unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        managers.contains(&(FIELD_MANAGER.to_owned(), String::new()))
            && managers.contains(&(FIELD_MANAGER.to_owned(), "status".to_owned())),
        "{managers:?}"
    );
    Ok(())
}

/// `kubectl get` of one PolicyService as the server renders it (a meta.k8s.io Table): the column
/// names and the row's cells.
async fn table_row(client: &Client, namespace: &str, name: &str) -> Result<Vec<(String, Value)>> {
    let request = http::Request::get(format!(
        "/apis/policyserve.io/v1alpha1/namespaces/{namespace}/policyservices/{name}"
    ))
    .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
    .body(Vec::new())?;
    let table: Value = client.request(request).await?;
    let columns = table["columnDefinitions"]
        .as_array()
        .context("a Table has columnDefinitions")?;
    let cells = table["rows"][0]["cells"]
        .as_array()
        .context("a Table has a row")?;
    Ok(columns
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
        .zip(cells.iter().cloned())
        .collect())
}

#[tokio::test]
async fn printer_columns_read_the_same_on_kubernetes_1_36_as_on_1_20() -> Result<()> {
    let (current, namespace) = setup("current-columns").await?;
    let old = client().await?;
    install_crds(&old).await?;
    let status = json!({"status": {
        "observedGeneration": 1,
        "scaling": {"desiredReplicas": 3, "servingReplicas": 2, "reason": "test"},
        "conditions": [{"type": "PerformanceCompliant", "status": "True", "reason": "TargetsMet",
            "message": "ok", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }});
    let mut rows = Vec::new();
    for client in [&old, &current] {
        let api = Api::<PolicyService>::namespaced(client.clone(), &namespace);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(lander("columns"))?,
        )
        .await?;
        api.patch_status("columns", &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        let mut row = table_row(client, &namespace, "columns").await?;
        // Age depends on when each was created.
        row.retain(|(column, _)| column != "Age");
        rows.push(row);
    }
    assert_eq!(rows[0], rows[1], "1.20 vs 1.36");
    let columns: Vec<&str> = rows[1].iter().map(|(c, _)| c.as_str()).collect();
    assert!(
        columns.starts_with(&["Name", "Desired", "Serving", "Compliant"]),
        "{columns:?}"
    );
    assert!(
        rows[1].contains(&("Desired".to_owned(), json!(3))),
        "{rows:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_object_stored_before_a_rule_tightened_still_takes_unrelated_edits() -> Result<()> {
    // Validation ratcheting (GA in 1.33): a stored value that a newer schema refuses may stay as
    // long as it is not changed. The CRD starts without the memoryLimit pattern, stores a limit
    // the committed schema refuses, then tightens to the committed schema.
    let (client, namespace) = setup("current-ratchet").await?;
    let group = format!("{}.ratchet.policyserve.io", unique_name("r"));
    let strict = policy_service_crd_in(&group)?;
    let mut loose = strict.clone();
    walk(&mut loose["spec"]["versions"], &mut |schema| {
        if let Some(memory) = schema
            .get_mut("properties")
            .and_then(|p| p.get_mut("memoryLimit"))
            .and_then(Value::as_object_mut)
        {
            memory.remove("pattern");
        }
    });
    let crds = create_crd(&client, &loose).await?;
    let api = policy_services(&client, &namespace, &group);
    let mut object = lander("ratchet");
    object["apiVersion"] = json!(format!("{group}/v1alpha1"));
    object["spec"]["targets"]["memoryLimit"] = json!("lots");
    api.create(&PostParams::default(), &serde_json::from_value(object)?)
        .await?;

    let name = format!("policyservices.{group}");
    let mut tightened: CustomResourceDefinition = serde_json::from_value(strict)?;
    tightened.metadata.resource_version = crds.get(&name).await?.metadata.resource_version;
    crds.replace(&name, &PostParams::default(), &tightened)
        .await?;
    // The server applies a new schema a moment after storing it: wait until a new object with
    // the invalid limit is refused, so the edits below meet the tightened schema.
    let mut probe = lander("probe");
    probe["apiVersion"] = json!(format!("{group}/v1alpha1"));
    probe["spec"]["targets"]["memoryLimit"] = json!("lots");
    let probe: DynamicObject = serde_json::from_value(probe)?;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually(
        "the tightened schema to take effect",
        Duration::from_secs(30),
        || async { Ok(api.create(&dry_run, &probe).await.is_err().then_some(())) },
    )
    .await?;

    let unrelated = json!({"spec": {"placement": {"headroomPercent": 50}}});
    let edited = api
        .patch(
            "ratchet",
            &PatchParams::default(),
            &Patch::Merge(&unrelated),
        )
        .await
        .context("an unrelated edit of a ratcheted object was refused")?;
    assert_eq!(edited.data["spec"]["targets"]["memoryLimit"], "lots");
    assert_eq!(edited.data["spec"]["placement"]["headroomPercent"], 50);

    let changed = json!({"spec": {"targets": {"memoryLimit": "more"}}});
    match api
        .patch("ratchet", &PatchParams::default(), &Patch::Merge(&changed))
        .await
    {
        Err(kube::Error::Api(status)) => assert!(
            status.message.contains("spec.targets.memoryLimit"),
            "{}",
            status.message
        ),
        other => anyhow::bail!("changing the invalid value should be refused: {other:?}"),
    }
    Ok(())
}
