//! The end-to-end harness: the operator's controller and agents in-process on the test
//! apiserver, with simulated hardware (examples/hardware), real ONNX Runtime and real gRPC.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use policyserve_agent::args::{HardwareArgs, OrtArgs, RunArgs};
use policyserve_agent::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use policyserve_agent::grpc::proto::model_infer_request::InferInputTensor;
use policyserve_agent::grpc::proto::{InferTensorContents, ModelInferRequest};
use policyserve_crds::conditions::{self, SERVING};
use policyserve_crds::{OptimizationProfile, PolicyService};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::{
    ControllerScope, RUN_LABEL, controller_scope, eventually, unique_name, workspace_root,
};

/// How long a test waits for the operator and agents.
pub const TIMEOUT: Duration = Duration::from_secs(90);
/// The agents' served window in these tests (60 s in a cluster).
pub const SERVED_WINDOW_SECONDS: u64 = 4;

#[derive(Debug)]
struct Agent {
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

/// One test's cluster: namespace, operator, and agents keyed by node name.
#[allow(missing_debug_implementations)] // kube::Client has no Debug
pub struct Cluster {
    /// A client for the test apiserver.
    pub client: Client,
    /// The test's namespace (also the agents' Lease namespace).
    pub namespace: String,
    run: String,
    agents: BTreeMap<String, Agent>,
    hardware: BTreeMap<String, PathBuf>,
    /// Seconds between an idle model's capacity probes, for agents started from now on.
    pub revalidate_seconds: u64,
    _operator: oneshot::Sender<()>,
}

impl Cluster {
    /// Installs the CRDs, makes a namespace and starts the operator's controller for it, with
    /// a tuning budget of 2 s.
    ///
    /// # Errors
    /// When ONNX Runtime or the apiserver is missing.
    pub async fn start(prefix: &str) -> Result<Self> {
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
            revalidate_seconds: 600,
            _operator: stop,
        })
    }

    /// Creates a Node (as a kubelet would register it) and starts its agent.
    ///
    /// # Errors
    /// When the apiserver refuses the Node.
    pub async fn add_node(&mut self, prefix: &str, hardware: &str) -> Result<String> {
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

    /// Starts (again) the agent of `node`.
    pub fn start_agent(&mut self, node: &str) {
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
            revalidate_seconds: self.revalidate_seconds,
            served_window_seconds: SERVED_WINDOW_SECONDS,
            served_write_seconds: 1,
            drift_windows: 2,
            drift_fraction: 0.25,
            namespace: self.namespace.clone(),
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

    /// Stops the agent of `node` (it stops renewing its Lease).
    ///
    /// # Errors
    /// When there is no such agent.
    pub async fn stop_agent(&mut self, node: &str) -> Result<()> {
        let agent = self.agents.remove(node).context("no such agent")?;
        let _ = agent.stop.send(());
        agent.done.await?;
        Ok(())
    }

    /// Puts `models/<model>` into ConfigMap `name` under `model.onnx`.
    ///
    /// # Errors
    /// When the file or the apiserver fails.
    pub async fn model_config_map(&self, name: &str, model: &str) -> Result<()> {
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

    /// The test namespace's PolicyServices.
    pub fn policy_services(&self) -> Api<PolicyService> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The test namespace's OptimizationProfiles.
    pub fn profiles(&self) -> Api<OptimizationProfile> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Server-side applies PolicyService `name` with `spec`.
    ///
    /// # Errors
    /// When the apiserver refuses it.
    pub async fn apply(&self, name: &str, spec: Value) -> Result<()> {
        let ps = json!({"apiVersion": "policyserve.io/v1alpha1", "kind": "PolicyService", "metadata": {"name": name}, "spec": spec});
        self.policy_services()
            .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&ps))
            .await?;
        Ok(())
    }

    /// Waits until the PolicyService's condition `type_` has `status`, and returns it.
    ///
    /// # Errors
    /// When it does not within [`TIMEOUT`].
    pub async fn condition(&self, name: &str, type_: &str, status: &str) -> Result<Condition> {
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

    /// The OptimizationProfiles of PolicyService `name`.
    ///
    /// # Errors
    /// When the apiserver fails.
    pub async fn profiles_of(&self, name: &str) -> Result<Vec<OptimizationProfile>> {
        let selector = format!("{}={name}", policyserve_crds::POLICY_SERVICE_LABEL);
        Ok(self
            .profiles()
            .list(&kube::api::ListParams::default().labels(&selector))
            .await?
            .items)
    }
}

/// A PolicyService spec for the model in ConfigMap `config_map`, one to three nodes.
pub fn tiny_spec(config_map: &str, targets: Value) -> Value {
    json!({
        "model": {"configMap": {"name": config_map, "key": "model.onnx"}},
        "targets": targets,
        "placement": {"minReplicas": 1, "maxReplicas": 3, "headroomPercent": 0},
    })
}

/// Sends one observation to the model behind a serving profile and returns the action.
///
/// # Errors
/// When the profile has no endpoint or the request fails.
pub async fn infer_through(profile: &OptimizationProfile, width: usize) -> Result<Vec<f32>> {
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

/// Whether the agent reports the profile Serving.
pub fn serving(profile: &OptimizationProfile) -> bool {
    profile
        .status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, SERVING))
}

impl Cluster {
    /// Waits until the PolicyService's condition `type_` has `reason`, and returns it.
    ///
    /// # Errors
    /// When it does not within [`TIMEOUT`].
    pub async fn condition_with_reason(
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

/// Real traffic at the model behind `profile`: `clients` tasks in a closed loop for `duration`,
/// each request `rows` rows of `width` values. Returns how many were answered OK.
///
/// # Errors
/// When the profile has no endpoint or a connection fails.
pub async fn load(
    profile: &OptimizationProfile,
    width: usize,
    rows: usize,
    clients: usize,
    duration: Duration,
) -> Result<u64> {
    let endpoint = profile
        .status
        .as_ref()
        .and_then(|s| s.endpoint.clone())
        .context("no endpoint")?;
    let client = GrpcInferenceServiceClient::connect(format!(
        "http://{}:{}",
        endpoint.address, endpoint.port
    ))
    .await?;
    let request = ModelInferRequest {
        model_name: endpoint.model_name.clone(),
        inputs: vec![InferInputTensor {
            name: "obs".into(),
            datatype: "FP32".into(),
            shape: vec![rows as i64, width as i64],
            contents: Some(InferTensorContents {
                fp32_contents: vec![0.25; rows * width],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let until = Instant::now() + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (mut client, request) = (client.clone(), request.clone());
            tokio::spawn(async move {
                let mut answered = 0u64;
                while Instant::now() < until {
                    if client.model_infer(request.clone()).await.is_ok() {
                        answered += 1;
                    }
                }
                answered
            })
        })
        .collect();
    let mut answered = 0;
    for task in tasks {
        answered += task.await?;
    }
    Ok(answered)
}

/// Real traffic at `rate` requests per second for `duration`, open loop (the agent's own load
/// generator, without the probe mark): single rows of `width` values.
///
/// # Errors
/// When the profile has no endpoint or the connection fails.
pub async fn open_load(
    profile: &OptimizationProfile,
    width: usize,
    rate: f64,
    duration: Duration,
) -> Result<policyserve_agent::load::Outcome> {
    use policyserve_agent::load;
    let endpoint = profile
        .status
        .as_ref()
        .and_then(|s| s.endpoint.clone())
        .context("no endpoint")?;
    let address = format!("{}:{}", endpoint.address, endpoint.port).parse()?;
    let target =
        load::Target::connect(address, 2, &endpoint.model_name, "obs", width, false).await?;
    let runtime = tokio::runtime::Handle::current();
    let plan = load::Plan {
        rate,
        duration,
        max_in_flight: 1024,
    };
    Ok(tokio::task::spawn_blocking(move || load::run(&runtime, &target, &plan, &|| false)).await?)
}

/// Keeps `threads` CPUs busy for `duration` (a noisy neighbour beside the agents).
pub fn cpu_hog(threads: usize, duration: Duration) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let until = Instant::now() + duration;
                let mut x = 0u64;
                while Instant::now() < until {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect()
}
