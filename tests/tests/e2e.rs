//! Tier 3 (end to end): a real kube-apiserver, the operator's controller and agents in-process
//! with simulated hardware (examples/hardware), real ONNX Runtime and real gRPC clients.
//!
//! What cannot run here: a kubelet (Nodes are plain API objects; agents run as tasks, not
//! pods) and a GPU (the simulated GPU node executes on CPU; its profile reports the fallback).
//! Each test has its own namespace, node label and controller, so tests run in parallel.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use policyserve_agent::args::{HardwareArgs, OrtArgs, RunArgs};
use policyserve_agent::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use policyserve_agent::grpc::proto::model_infer_request::InferInputTensor;
use policyserve_agent::grpc::proto::{InferTensorContents, ModelInferRequest};
use policyserve_crds::conditions::{self, LOADED, PERFORMANCE_COMPLIANT, READY, SERVING};
use policyserve_crds::{OptimizationProfile, PolicyService};
use policyserve_tests::{
    ControllerScope, RUN_LABEL, controller_scope, eventually, unique_name, workspace_root,
};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const TIMEOUT: Duration = Duration::from_secs(90);

struct Agent {
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

/// One test's cluster: namespace, operator, and agents keyed by node name.
struct Cluster {
    client: Client,
    namespace: String,
    run: String,
    agents: BTreeMap<String, Agent>,
    hardware: BTreeMap<String, PathBuf>,
    _operator: oneshot::Sender<()>,
}

impl Cluster {
    async fn start(prefix: &str) -> Result<Self> {
        policyserve_agent::telemetry::init("warn");
        policyserve_agent::engine::runtime::environment(None)
            .context("ORT_DYLIB_PATH must name libonnxruntime.so (run `make deps`)")?;
        let ControllerScope {
            client,
            namespace,
            run,
            stop,
        } = controller_scope(prefix, |config| config.tuning_budget_seconds = 2).await?;
        Ok(Self {
            client,
            namespace,
            run,
            agents: BTreeMap::new(),
            hardware: BTreeMap::new(),
            _operator: stop,
        })
    }

    /// Creates a Node (as a kubelet would register it) and starts its agent.
    async fn add_node(&mut self, prefix: &str, hardware: &str) -> Result<String> {
        let name = unique_name(prefix);
        let node: Node = serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {RUN_LABEL: self.run}}}),
        )?;
        Api::<Node>::all(self.client.clone())
            .create(&PostParams::default(), &node)
            .await?;
        self.hardware.insert(
            name.clone(),
            workspace_root().join("examples/hardware").join(hardware),
        );
        self.start_agent(&name);
        Ok(name)
    }

    fn start_agent(&mut self, node: &str) {
        let args = RunArgs {
            node_name: node.to_owned(),
            redetect_seconds: 300,
            hardware: HardwareArgs {
                hardware_file: self.hardware.get(node).cloned(),
            },
            grpc_addr: "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
            metrics_addr: "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
            async_threads: None,
            advertise_address: None,
            model_cache: std::env::temp_dir().join(format!("policyserve-cache-{node}")),
            revalidate_seconds: 600,
            queue_capacity: 1024,
            max_message_bytes: 16 * 1024 * 1024,
            ort: OrtArgs { ort_lib: None },
            tensorrt_cache: std::env::temp_dir().join(format!("policyserve-tensorrt-{node}")),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let client = self.client.clone();
        let done = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = policyserve_agent::run::serve_node(client, args, shutdown).await {
                eprintln!("agent failed: {e:#}");
            }
        });
        self.agents.insert(node.to_owned(), Agent { stop, done });
    }

    async fn stop_agent(&mut self, node: &str) -> Result<()> {
        let agent = self.agents.remove(node).context("no such agent")?;
        let _ = agent.stop.send(());
        agent.done.await?;
        Ok(())
    }

    async fn model_config_map(&self, name: &str, model: &str) -> Result<()> {
        let bytes = std::fs::read(workspace_root().join("models").join(model))?;
        let config_map = ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            binary_data: Some(BTreeMap::from([(
                "model.onnx".to_owned(),
                ByteString(bytes),
            )])),
            ..Default::default()
        };
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), &self.namespace);
        api.patch(
            name,
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&config_map),
        )
        .await?;
        Ok(())
    }

    fn policy_services(&self) -> Api<PolicyService> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn profiles(&self) -> Api<OptimizationProfile> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn apply(&self, name: &str, spec: Value) -> Result<()> {
        let ps = json!({"apiVersion": "policyserve.io/v1alpha1", "kind": "PolicyService", "metadata": {"name": name}, "spec": spec});
        self.policy_services()
            .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&ps))
            .await?;
        Ok(())
    }

    /// Waits until the PolicyService's condition `type_` has `status`, and returns it.
    async fn condition(&self, name: &str, type_: &str, status: &str) -> Result<Condition> {
        let api = self.policy_services();
        eventually(&format!("{name} {type_}={status}"), TIMEOUT, || async {
            let ps = api.get(name).await?;
            let conditions = ps.status.map(|s| s.conditions).unwrap_or_default();
            Ok(conditions::find(&conditions, type_)
                .filter(|c| c.status == status)
                .cloned())
        })
        .await
    }

    async fn profiles_of(&self, name: &str) -> Result<Vec<OptimizationProfile>> {
        let selector = format!("{}={name}", policyserve_crds::POLICY_SERVICE_LABEL);
        Ok(self
            .profiles()
            .list(&kube::api::ListParams::default().labels(&selector))
            .await?
            .items)
    }
}

fn tiny_spec(config_map: &str, targets: Value) -> Value {
    json!({
        "model": {"configMap": {"name": config_map, "key": "model.onnx"}},
        "targets": targets,
        "placement": {"minReplicas": 1, "maxReplicas": 3, "headroomPercent": 0},
    })
}

/// Sends one observation to the model behind a serving profile and returns the action.
async fn infer_through(profile: &OptimizationProfile, width: usize) -> Result<Vec<f32>> {
    let endpoint = profile
        .status
        .as_ref()
        .and_then(|s| s.endpoint.clone())
        .context("no endpoint")?;
    let mut client = GrpcInferenceServiceClient::connect(format!(
        "http://{}:{}",
        endpoint.address, endpoint.port
    ))
    .await?;
    let request = ModelInferRequest {
        model_name: endpoint.model_name.clone(),
        inputs: vec![InferInputTensor {
            name: "obs".into(),
            datatype: "FP32".into(),
            shape: vec![1, width as i64],
            contents: Some(InferTensorContents {
                fp32_contents: vec![0.25; width],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let response = client.model_infer(request).await?.into_inner();
    Ok(response
        .outputs
        .first()
        .and_then(|o| o.contents.clone())
        .map(|c| c.fp32_contents)
        .unwrap_or_default())
}

fn serving(profile: &OptimizationProfile) -> bool {
    profile
        .status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, SERVING))
}

#[tokio::test]
async fn a_policy_service_is_tuned_served_and_reported_compliant_with_measured_figures()
-> Result<()> {
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
    let measured = status.measured.context("aggregate figures")?;
    assert!(
        measured.latency_p99_ms > 0.0 && measured.latency_p99_ms < 50.0,
        "{measured:?}"
    );
    assert!(
        measured.throughput_rps > 0.0 && measured.memory_mib > 0.0,
        "{measured:?}"
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

impl Cluster {
    async fn condition_with_reason(
        &self,
        name: &str,
        type_: &str,
        reason: &str,
    ) -> Result<Condition> {
        let api = self.policy_services();
        eventually(
            &format!("{name} {type_} reason {reason}"),
            TIMEOUT,
            || async {
                let ps = api.get(name).await?;
                let conditions = ps.status.map(|s| s.conditions).unwrap_or_default();
                Ok(conditions::find(&conditions, type_)
                    .filter(|c| c.reason == reason)
                    .cloned())
            },
        )
        .await
    }
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
        during.status.as_ref().and_then(|s| s.measured.clone()),
        before.status.as_ref().and_then(|s| s.measured.clone())
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
