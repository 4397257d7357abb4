//! Tier 2 (real kube-apiserver + etcd): the agent labels its own Node by server-side apply.
//! Nodes are cluster-scoped, so every test makes its own uniquely named Node and deletes it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use policyserve_agent::FIELD_MANAGER;
use policyserve_agent::hardware::{CpuFlag, Hardware};
use policyserve_agent::labels::labels;
use policyserve_agent::node::{keep_labelled, publish};
use policyserve_crds::{CAPABILITY_LABEL_PREFIX, HARDWARE_ANNOTATION, HARDWARE_CLASS_LABEL};
use policyserve_tests::{client, eventually, unique_name, workspace_root};
use serde_json::json;

/// A label that someone else (an administrator's tool) owns on the same Node.
const OTHER_KEY: &str = "topology.example.com/rack";
const OTHER_MANAGER: &str = "rack-labeller";

fn load(name: &str) -> Result<Hardware> {
    let file = workspace_root().join("examples/hardware").join(name);
    Ok(policyserve_agent::hardware::load(Some(file.as_path()))?)
}

/// Creates a Node carrying another manager's label, as a kubelet and an admin would leave it.
async fn create_node(client: &Client, prefix: &str) -> Result<(Api<Node>, String)> {
    let api = Api::<Node>::all(client.clone());
    let name = unique_name(prefix);
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {OTHER_KEY: "r7", "kubernetes.io/os": "linux"}}
    }))?;
    let params = PostParams {
        field_manager: Some(OTHER_MANAGER.into()),
        ..PostParams::default()
    };
    api.create(&params, &node).await?;
    Ok((api, name))
}

fn node_labels(node: &Node) -> BTreeMap<String, String> {
    node.metadata.labels.clone().unwrap_or_default()
}

/// The labels under our prefix plus the class label: what the agent owns.
fn agent_labels(node: &Node) -> BTreeMap<String, String> {
    node_labels(node)
        .into_iter()
        .filter(|(key, _)| key.starts_with(CAPABILITY_LABEL_PREFIX) || key == HARDWARE_CLASS_LABEL)
        .collect()
}

/// The managers whose managedFields entries claim `metadata.labels.<key>`.
fn label_owners(node: &Node, key: &str) -> Vec<String> {
    let field = format!("f:{key}");
    node.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| {
            entry
                .fields_v1
                .as_ref()
                .is_some_and(|fields| fields.0["f:metadata"]["f:labels"].get(&field).is_some())
        })
        .filter_map(|entry| entry.manager.clone())
        .collect()
}

#[tokio::test]
async fn the_agent_labels_its_node_and_a_restart_changes_nothing() -> Result<()> {
    let client = client().await?;
    let (api, node) = create_node(&client, "labels").await?;
    let hw = load("gpu-node.json")?;

    publish(&client, &node, &hw).await?;
    let labelled = api.get(&node).await?;
    assert_eq!(agent_labels(&labelled), labels(&hw));
    assert_eq!(
        node_labels(&labelled)[HARDWARE_CLASS_LABEL],
        "gpu-accelerated"
    );
    assert_eq!(
        node_labels(&labelled)["hw.policyserve.io/source"],
        "simulated"
    );
    let annotation = labelled
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(HARDWARE_ANNOTATION))
        .context("no hardware annotation")?;
    assert_eq!(serde_json::from_str::<Hardware>(annotation)?, hw);
    for key in labels(&hw).keys() {
        assert_eq!(label_owners(&labelled, key), [FIELD_MANAGER], "{key}");
    }

    // A restarted agent: a fresh client, the same machine. Nothing may be removed and re-added,
    // so the Node is not even written.
    let restarted = policyserve_tests::client().await?;
    publish(&restarted, &node, &load("gpu-node.json")?).await?;
    let after = api.get(&node).await?;
    assert_eq!(agent_labels(&after), agent_labels(&labelled));
    assert_eq!(
        after.metadata.resource_version, labelled.metadata.resource_version,
        "an identical apply must not write the Node"
    );
    assert_eq!(node_labels(&after)[OTHER_KEY], "r7");
    assert_eq!(label_owners(&after, OTHER_KEY), [OTHER_MANAGER]);

    api.delete(&node, &DeleteParams::default()).await?;
    Ok(())
}

#[tokio::test]
async fn capabilities_that_disappear_take_their_labels_and_others_labels_stay() -> Result<()> {
    let client = client().await?;
    let (api, node) = create_node(&client, "vanish").await?;
    let hw = load("gpu-node.json")?;
    publish(&client, &node, &hw).await?;

    // The GPU is unplugged and the hypervisor stops passing AVX2 through.
    let mut shrunk = hw.clone();
    shrunk.gpus.clear();
    shrunk.cpu.flags.remove(&CpuFlag::Avx2);
    publish(&client, &node, &shrunk).await?;

    let after = api.get(&node).await?;
    let now = node_labels(&after);
    assert_eq!(agent_labels(&after), labels(&shrunk));
    assert!(
        !now.keys()
            .any(|k| k.contains("/gpu.") || k.contains("/cuda.")),
        "GPU labels left behind: {now:?}"
    );
    assert!(!now.contains_key("hw.policyserve.io/cpu-cpuid.AVX2"));
    assert!(!now.contains_key("hw.policyserve.io/mig.capable"));
    assert_eq!(now[HARDWARE_CLASS_LABEL], "balanced");
    assert_eq!(now[OTHER_KEY], "r7", "another manager's label was touched");
    assert_eq!(now["kubernetes.io/os"], "linux");

    // The GPU comes back: so do its labels.
    publish(&client, &node, &hw).await?;
    assert_eq!(agent_labels(&api.get(&node).await?), labels(&hw));

    api.delete(&node, &DeleteParams::default()).await?;
    Ok(())
}

#[tokio::test]
async fn publishing_to_a_missing_node_fails_without_creating_it() -> Result<()> {
    let client = client().await?;
    let name = unique_name("missing");
    let error = publish(&client, &name, &load("small-node.json")?)
        .await
        .expect_err("a missing node is an error");
    assert!(
        matches!(error, policyserve_agent::Error::NodeNotFound(ref n) if *n == name),
        "{error}"
    );
    assert!(Api::<Node>::all(client).get_opt(&name).await?.is_none());
    Ok(())
}

/// Waits until `node` carries the hardware-class label `class`.
async fn wait_for_class(api: &Api<Node>, node: &str, class: &str) -> Result<()> {
    eventually(
        &format!("class {class}"),
        Duration::from_secs(20),
        || async {
            let labels = node_labels(&api.get(node).await?);
            Ok(labels
                .get(HARDWARE_CLASS_LABEL)
                .is_some_and(|c| c == class)
                .then_some(()))
        },
    )
    .await
}

#[tokio::test]
async fn the_relabelling_loop_follows_a_changed_hardware_file() -> Result<()> {
    let client = client().await?;
    let (api, node) = create_node(&client, "loop").await?;
    let dir = std::env::temp_dir().join(unique_name("policyserve-hw"));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("machine.json");
    std::fs::copy(
        workspace_root().join("examples/hardware/large-cpu-node.json"),
        &file,
    )?;
    let agent = tokio::spawn(keep_labelled(
        client.clone(),
        node.clone(),
        Some(file.clone()),
        Duration::from_secs(1),
    ));
    wait_for_class(&api, &node, "high-performance-cpu").await?;

    // The quota shrinks to 1.5 CPUs and 512 MiB: re-detection relabels the node.
    std::fs::copy(
        workspace_root().join("examples/hardware/small-node.json"),
        &file,
    )?;
    wait_for_class(&api, &node, "memory-constrained").await?;
    agent.abort();
    let expected = labels(&policyserve_agent::hardware::load(Some(file.as_path()))?);
    assert_eq!(agent_labels(&api.get(&node).await?), expected);

    std::fs::remove_dir_all(&dir)?;
    api.delete(&node, &DeleteParams::default()).await?;
    Ok(())
}
