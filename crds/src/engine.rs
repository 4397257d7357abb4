//! The engine configuration and the measurement: one type each, used by the profile status,
//! `policyserve-agent tune --output json` and `policyserve-agent serve --profile FILE`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An ONNX Runtime execution provider.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum ExecutionProvider {
    /// NVIDIA TensorRT, through ONNX Runtime's TensorRT execution provider.
    TensorRT,
    /// NVIDIA CUDA, through ONNX Runtime's CUDA execution provider.
    #[serde(rename = "CUDA")]
    Cuda,
    /// ONNX Runtime's default CPU provider (MLAS kernels).
    #[serde(rename = "CPU")]
    Cpu,
}

impl ExecutionProvider {
    /// The name as written in manifests and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TensorRT => "TensorRT",
            Self::Cuda => "CUDA",
            Self::Cpu => "CPU",
        }
    }
}

impl std::fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Numeric precision of a model file.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    Deserialize,
    Serialize,
    JsonSchema,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floating point: the model as exported.
    #[default]
    Fp32,
    /// 16-bit floating point: a converted variant, or TensorRT's fp16 mode on GPUs with tensor cores.
    Fp16,
    /// 8-bit integer: a quantized variant, fast where the CPU has VNNI or AMX.
    Int8,
}

impl Precision {
    /// The name as written in manifests and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Fp16 => "fp16",
            Self::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One configuration of the inference engine: what the tuner explores and what it chooses.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EngineConfig {
    /// Execution providers in priority order; ONNX Runtime places each node on the first that
    /// supports it.
    pub execution_providers: Vec<ExecutionProvider>,
    /// Precision of the model variant that is loaded.
    #[serde(default)]
    pub precision: Precision,
    /// Threads ONNX Runtime uses inside one operator.
    #[schemars(range(min = 1))]
    pub intra_op_threads: u32,
    /// Model instances: sessions, each on its own worker thread, that take batches from one
    /// queue (Triton's instance count).
    #[serde(default = "default_one")]
    #[schemars(range(min = 1))]
    pub instances: u32,
    /// Largest batch the dynamic batcher forms from concurrent requests.
    #[schemars(range(min = 1))]
    pub max_batch_size: u32,
    /// How long, in microseconds, the batcher waits for more requests before running a
    /// partial batch.
    #[serde(default)]
    pub batch_delay_micros: u64,
    /// Whether ONNX Runtime's CPU memory arena is on (faster, holds on to memory).
    #[serde(default = "default_true")]
    pub memory_arena: bool,
    /// Whether intra-op threads spin while waiting for work (lower latency, busier CPUs).
    #[serde(default = "default_true")]
    pub spinning: bool,
}

fn default_true() -> bool {
    true
}

fn default_one() -> u32 {
    1
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            execution_providers: vec![ExecutionProvider::Cpu],
            precision: Precision::Fp32,
            intra_op_threads: 1,
            instances: 1,
            max_batch_size: 1,
            batch_delay_micros: 0,
            memory_arena: true,
            spinning: true,
        }
    }
}

/// Measured performance of one configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// Median request latency, milliseconds.
    pub latency_p50_ms: f64,
    /// 95th percentile request latency, milliseconds.
    pub latency_p95_ms: f64,
    /// 99th percentile request latency, milliseconds.
    pub latency_p99_ms: f64,
    /// Requests served per second.
    pub throughput_rps: f64,
    /// Peak memory of the serving process while measuring, MiB (resident set, plus GPU memory
    /// where a GPU serves).
    #[serde(rename = "memoryMiB")]
    pub memory_mib: f64,
    /// When the figures were measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_at: Option<Time>,
}

impl crate::Figures for Measurement {
    fn latency_ms(&self, quantile: crate::Quantile) -> Option<f64> {
        Some(match quantile {
            crate::Quantile::P50 => self.latency_p50_ms,
            crate::Quantile::P95 => self.latency_p95_ms,
            crate::Quantile::P99 => self.latency_p99_ms,
        })
    }

    fn throughput_rps(&self) -> Option<f64> {
        Some(self.throughput_rps)
    }

    fn memory_mib(&self) -> Option<f64> {
        Some(self.memory_mib)
    }
}
