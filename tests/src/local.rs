//! The end-to-end harness: the operator's controller and agents in-process on the test
//! apiserver, with simulated hardware (examples/hardware), real ONNX Runtime and real gRPC.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use policyserve_agent::cli::{Cli, Command};
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
/// How long the agents here serve a model after its profile is deleted (30 s in a cluster).
pub const UNLOAD_GRACE_SECONDS: u64 = 3;

#[derive(Debug)]
struct Agent {
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

/// One cluster at a time per test binary: each agent's capacity sweep loads this machine's
/// CPUs, and two sweeps side by side would measure each other (on 2 vCPUs their requests leave
/// late and their capacity reads 0), which is not what these tests are about.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    /// More flags for agents started from now on (TLS, say).
    pub agent_args: Vec<String>,
    _operator: oneshot::Sender<()>,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    /// Installs the CRDs, makes a namespace and starts the operator's controller for it, with
    /// a tuning budget of 2 s.
    ///
    /// # Errors
    /// When ONNX Runtime or the apiserver is missing.
    pub async fn start(prefix: &str) -> Result<Self> {
        let turn = ONE_AT_A_TIME.lock().await;
        policyserve_runtime::telemetry::init("warn", policyserve_runtime::LogFormat::Text);
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
            agent_args: Vec::new(),
            _operator: stop,
            _turn: turn,
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
        let temp = std::env::temp_dir();
        let mut line: Vec<String> = [
            "policyserve-agent",
            "run",
            "--node-name",
            node,
            "--namespace",
            &self.namespace,
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--redetect-seconds",
            "300",
            "--served-write-seconds",
            "1",
            "--drift-windows",
            "2",
            "--max-message-bytes",
            "16777216",
        ]
        .map(String::from)
        .to_vec();
        line.extend([
            format!("--served-window-seconds={SERVED_WINDOW_SECONDS}"),
            format!("--unload-grace-seconds={UNLOAD_GRACE_SECONDS}"),
            format!("--revalidate-seconds={}", self.revalidate_seconds),
            format!(
                "--model-cache={}",
                temp.join(format!("policyserve-cache-{node}")).display()
            ),
            format!(
                "--tensorrt-cache={}",
                temp.join(format!("policyserve-tensorrt-{node}")).display()
            ),
        ]);
        if let Some(file) = self.hardware.get(node) {
            line.push(format!("--hardware-file={}", file.display()));
        }
        line.extend(self.agent_args.iter().cloned());
        // Parsed as the binary parses its command line, so the flags tested are the real ones.
        let args = match Cli::try_parse_from(&line).map(|cli| cli.command) {
            Ok(Command::Run(args)) => args,
            other => panic!("`{}` does not parse: {other:?}", line.join(" ")),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let client = self.client.clone();
        let done = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = policyserve_agent::run::serve_node(client, *args, shutdown).await {
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

/// Where a serving profile is reached (`http://address:port`) and a request of `rows`
/// observations of `width` values for its model.
///
/// # Errors
/// When the profile has no endpoint.
pub fn served_request(
    profile: &OptimizationProfile,
    width: usize,
    rows: usize,
) -> Result<(String, ModelInferRequest)> {
    let endpoint = profile
        .status
        .as_ref()
        .and_then(|s| s.endpoint.clone())
        .context("no endpoint")?;
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
    Ok((
        format!("http://{}:{}", endpoint.address, endpoint.port),
        request,
    ))
}

/// Sends one observation to the model behind a serving profile and returns the action.
///
/// # Errors
/// When the profile has no endpoint or the request fails.
pub async fn infer_through(profile: &OptimizationProfile, width: usize) -> Result<Vec<f32>> {
    let (url, request) = served_request(profile, width, 1)?;
    let mut client = GrpcInferenceServiceClient::connect(url).await?;
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
    let (url, request) = served_request(profile, width, rows)?;
    let client = GrpcInferenceServiceClient::connect(url).await?;
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

/// Bursty real traffic: every `every`, `burst` single-row requests of `width` values at once,
/// for `duration`. On average far below a node's capacity, each burst still queues behind
/// itself, so the served tail is long: what a smooth capacity sweep never sees. Returns how
/// many were answered OK.
///
/// # Errors
/// When the profile has no endpoint or a connection fails.
pub async fn burst_load(
    profile: &OptimizationProfile,
    width: usize,
    burst: usize,
    every: Duration,
    duration: Duration,
) -> Result<u64> {
    let (url, request) = served_request(profile, width, 1)?;
    let client = GrpcInferenceServiceClient::connect(url).await?;
    let until = Instant::now() + duration;
    let mut tick = tokio::time::interval(every);
    let mut answered = 0;
    while Instant::now() < until {
        tick.tick().await;
        let requests: Vec<_> = (0..burst)
            .map(|_| {
                let (mut client, request) = (client.clone(), request.clone());
                tokio::spawn(async move { client.model_infer(request).await.is_ok() })
            })
            .collect();
        for request in requests {
            answered += u64::from(request.await?);
        }
    }
    Ok(answered)
}
