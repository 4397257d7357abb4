//! The arguments of each subcommand.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use policyserve_crds::{Precision, ProfileSelection};

use super::OutputFormat;
use super::shared::{HardwareArgs, OrtArgs, ServingArgs};

/// `policyserve-agent detect`.
#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Hardware source.
    #[command(flatten)]
    pub hardware: HardwareArgs,
}

/// Arguments of `tune`.
#[derive(Debug, Args)]
pub struct TuneArgs {
    /// The fp32 ONNX model.
    #[arg(long)]
    pub model: PathBuf,
    /// A precision variant of the same model, as PRECISION=FILE (for example int8=model.int8.onnx).
    #[arg(long = "variant", value_parser = parse_variant)]
    pub variants: Vec<(Precision, PathBuf)>,
    /// Median latency target, milliseconds.
    #[arg(long = "p50-ms")]
    pub p50_ms: Option<f64>,
    /// 95th percentile latency target, milliseconds.
    #[arg(long = "p95-ms")]
    pub p95_ms: Option<f64>,
    /// 99th percentile latency target, milliseconds.
    #[arg(long = "p99-ms")]
    pub p99_ms: Option<f64>,
    /// Throughput target for this machine, requests per second.
    #[arg(long)]
    pub rps: Option<f64>,
    /// Memory limit, as a Kubernetes quantity (512Mi).
    #[arg(long)]
    pub memory: Option<String>,
    /// Time the search may take (30s, 2m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub budget: Duration,
    /// Profile: Auto picks one from the hardware class and the memory target.
    #[arg(long, default_value = "Auto", value_parser = parse_profile)]
    pub profile: ProfileSelection,
    /// Measure every configuration instead of searching (slow; the benchmark's reference).
    #[arg(long)]
    pub exhaustive: bool,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Also write the JSON object of `--output json` to this file (a table for people on
    /// stdout and the figures for programs from one run).
    #[arg(long = "json-out")]
    pub json_out: Option<PathBuf>,
    /// ONNX Runtime library.
    #[command(flatten)]
    pub ort: OrtArgs,
    /// Hardware source.
    #[command(flatten)]
    pub hardware: HardwareArgs,
    /// Base folder of TensorRT engine caches (default: policyserve-tensorrt in the temporary
    /// folder); each GPU model, driver, ONNX Runtime and TensorRT version gets its own.
    #[arg(long = "tensorrt-cache", env = "POLICYSERVE_TENSORRT_CACHE")]
    pub tensorrt_cache: Option<PathBuf>,
}

fn parse_variant(text: &str) -> Result<(Precision, PathBuf), String> {
    let (precision, path) = text
        .split_once('=')
        .ok_or("expected PRECISION=FILE, e.g. int8=model.int8.onnx")?;
    let precision = serde_json::from_value(serde_json::Value::String(precision.to_lowercase()))
        .map_err(|_| format!("unknown precision {precision:?}; use fp16 or int8"))?;
    Ok((precision, PathBuf::from(path)))
}

fn parse_profile(text: &str) -> Result<ProfileSelection, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|_| {
        format!("unknown profile {text:?}; use Auto, GPUAccelerated, HighPerformanceCPU, MemoryConstrained or Balanced")
    })
}

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A model to serve, as NAME=PATH (repeat for more).
    #[arg(long = "model", required = true, value_parser = parse_named_model)]
    pub models: Vec<(String, PathBuf)>,
    /// Engine configuration for every model, YAML or JSON (the `chosen.config` that
    /// `tune --output json` prints); defaults to one instance, one thread, batches up to 32.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Serving: addresses, limits, ONNX Runtime.
    #[command(flatten)]
    pub serving: ServingArgs,
}

fn parse_named_model(text: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = text
        .split_once('=')
        .ok_or("expected NAME=PATH, e.g. lander=models/policy-mlp.onnx")?;
    if name.is_empty() {
        return Err("the model name is empty".into());
    }
    Ok((name.to_owned(), PathBuf::from(path)))
}

/// `policyserve-agent run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Name of the Node this agent runs on (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Seconds between hardware re-detections (a hot-plugged GPU, a changed cgroup quota).
    #[arg(long, env = "POLICYSERVE_REDETECT_SECONDS", default_value_t = 300)]
    pub redetect_seconds: u64,
    /// Hardware source.
    #[command(flatten)]
    pub hardware: HardwareArgs,
    /// The address clients reach this agent on, written into each profile's endpoint (the
    /// pod IP); defaults to the gRPC address when that is not 0.0.0.0.
    #[arg(long, env = "POD_IP")]
    pub advertise_address: Option<std::net::IpAddr>,
    /// Serving: addresses, limits, ONNX Runtime.
    #[command(flatten)]
    pub serving: ServingArgs,
    /// The folder `model.path` sources must lie in (symlinks resolved); the chart's optional
    /// hostPath mount puts the node's model folder here.
    #[arg(long, env = "POLICYSERVE_MODEL_ROOT", default_value = policyserve_crds::MODEL_ROOT)]
    pub model_root: PathBuf,
    /// Largest model file accepted from any source (ConfigMap, download, node path), bytes.
    #[arg(long, env = "POLICYSERVE_MAX_MODEL_BYTES", default_value_t = crate::fetch::DEFAULT_MAX_MODEL_BYTES)]
    pub max_model_bytes: u64,
    /// Folder where downloaded models are cached by digest.
    #[arg(
        long,
        env = "POLICYSERVE_MODEL_CACHE",
        default_value = "/var/cache/policyserve/models"
    )]
    pub model_cache: PathBuf,
    /// Seconds between capacity probes of a served model; a probe runs only when the last
    /// window had no real requests, and stops at the first one.
    #[arg(long, env = "POLICYSERVE_REVALIDATE_SECONDS", default_value_t = 600)]
    pub revalidate_seconds: u64,
    /// Length of the sliding window `status.served` describes, seconds.
    #[arg(long, env = "POLICYSERVE_SERVED_WINDOW_SECONDS", default_value_t = 60)]
    pub served_window_seconds: u64,
    /// Seconds between writes of `status.served` (each only when a figure moved by more than
    /// 10% or a condition changed).
    #[arg(long, env = "POLICYSERVE_SERVED_WRITE_SECONDS", default_value_t = 30)]
    pub served_write_seconds: u64,
    /// Re-tune a model whose served latency misses a target for this many windows in a row
    /// while demand stays below its capacity.
    #[arg(long, env = "POLICYSERVE_DRIFT_WINDOWS", default_value_t = 3)]
    pub drift_windows: u32,
    /// Re-tune a model when two capacity probes in a row find it lower than recorded by more
    /// than this fraction (0.25: a quarter); after the first, the next idle moment probes again.
    #[arg(long, env = "POLICYSERVE_DRIFT_FRACTION", default_value_t = 0.25)]
    pub drift_fraction: f64,
    /// Seconds a model goes on serving after its profile is deleted (a scale-in), so that
    /// clients following the endpoints, which leave at the same time, stop sending first.
    #[arg(long, env = "POLICYSERVE_UNLOAD_GRACE_SECONDS", default_value_t = 30)]
    pub unload_grace_seconds: u64,
    /// A lock file every agent on this machine names when several share its CPUs (simulated
    /// nodes on one host, a kind cluster): their tunings and probes then take turns instead of
    /// measuring each other. One node per machine needs none.
    #[arg(long, env = "POLICYSERVE_TUNING_LOCK_FILE")]
    pub tuning_lock_file: Option<PathBuf>,
    /// Namespace of this agent's Lease (`policyserve-agent-<node>`), renewed every 10 s: the
    /// operator treats a node whose Lease is older than 40 s as not serving.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Serve only the OptimizationProfiles of this namespace (the operator's `--namespace`);
    /// by default every namespace's. The chart then grants the agent a Role in it instead of
    /// cluster-wide reads of profiles and ConfigMaps.
    #[arg(long, env = "POLICYSERVE_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Base folder of TensorRT engine caches; each GPU model, driver, ONNX Runtime and
    /// TensorRT version gets a folder of its own below it.
    #[arg(
        long = "tensorrt-cache",
        env = "POLICYSERVE_TENSORRT_CACHE",
        default_value = crate::engine::gpu::DEFAULT_TENSORRT_CACHE
    )]
    pub tensorrt_cache: PathBuf,
}
