//! The inference engine: a model's precision variants, ONNX Runtime sessions built from an
//! [`EngineConfig`], and the dynamic batcher that serves them.

mod batcher;
mod error;
pub mod gpu;
pub mod model;
pub mod runtime;
mod session;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use batcher::{BatchSettings, Batcher, Response};
pub use error::{Error, Result};
pub use model::{ModelSignature, TensorSpec};
use policyserve_crds::{EngineConfig, ExecutionProvider, Precision};
pub use session::GpuOptions;

/// A model's files, one per precision, held in memory (they come from files, ConfigMaps or
/// downloads alike). fp32 is always present.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    name: String,
    files: BTreeMap<Precision, Arc<[u8]>>,
}

impl ModelFiles {
    /// A model from bytes; `files` must hold fp32.
    ///
    /// # Errors
    /// [`Error::Config`] without an fp32 file.
    pub fn new(name: impl Into<String>, files: BTreeMap<Precision, Arc<[u8]>>) -> Result<Self> {
        let name = name.into();
        if !files.contains_key(&Precision::Fp32) {
            return Err(Error::Config(format!("model {name} has no fp32 file")));
        }
        Ok(Self { name, files })
    }

    /// Reads the fp32 file and its variants from disk.
    ///
    /// # Errors
    /// [`Error::ReadModel`] when a file cannot be read.
    pub fn read(
        name: impl Into<String>,
        fp32: &Path,
        variants: &[(Precision, &Path)],
    ) -> Result<Self> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map(Arc::from)
                .map_err(|source| Error::ReadModel {
                    path: path.to_owned(),
                    source,
                })
        };
        let mut files = BTreeMap::from([(Precision::Fp32, read(fp32)?)]);
        for (precision, path) in variants {
            files.insert(*precision, read(path)?);
        }
        Self::new(name, files)
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Precisions with a file of their own.
    pub fn precisions(&self) -> Vec<Precision> {
        self.files.keys().copied().collect()
    }

    /// Size of the smallest file, bytes: the least memory any variant can take.
    pub fn smallest_file_bytes(&self) -> usize {
        self.files.values().map(|f| f.len()).min().unwrap_or(0)
    }

    /// The bytes to load for `precision` on `providers`. fp16 without an fp16 file is
    /// TensorRT's fp16 mode over the fp32 file.
    fn file_for(&self, precision: Precision, providers: &[ExecutionProvider]) -> Result<&[u8]> {
        if let Some(bytes) = self.files.get(&precision) {
            return Ok(bytes);
        }
        if precision == Precision::Fp16 && providers.contains(&ExecutionProvider::TensorRT) {
            return Ok(&self.files[&Precision::Fp32]);
        }
        Err(Error::Config(format!(
            "model {} has no {precision} variant{}",
            self.name,
            if precision == Precision::Fp16 {
                " and TensorRT is not requested"
            } else {
                ""
            }
        )))
    }
}

/// Default bound on the bytes a model's queued requests hold: 256 MiB, four of the largest
/// gRPC messages the server accepts by default, and some 800,000 queued rows of a 64-input
/// policy model.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 256 * 1024 * 1024;

/// Default for the most rows one request may carry: the largest batch a PolicyService may pin
/// (`tuning.maxBatchSize` ≤ 4096). Independent of the tuned `maxBatchSize`, which a client
/// cannot know: a request larger than the tuned batch runs as a batch of its own.
pub const DEFAULT_MAX_REQUEST_ROWS: usize = 4096;

/// Settings of the engine that are not part of a tuned configuration.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// GPU memory limit and TensorRT cache.
    pub gpu: GpuOptions,
    /// Requests that may wait in the batcher's queue before new ones are refused.
    pub queue_capacity: usize,
    /// Bytes that a model's accepted, unanswered requests may hold before new ones are refused
    /// with RESOURCE_EXHAUSTED; never less than one full batch per instance.
    pub max_queued_bytes: usize,
    /// Most rows one request may carry; more get INVALID_ARGUMENT.
    pub max_request_rows: usize,
    /// CPUs that other busy threads of the process need, such as the async runtime that
    /// serves the requests: polling for work or answers never counts them as free.
    pub reserved_cpus: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            gpu: GpuOptions::default(),
            queue_capacity: 1024,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            max_request_rows: DEFAULT_MAX_REQUEST_ROWS,
            reserved_cpus: 0,
        }
    }
}

/// A loaded model serving through its batcher.
#[derive(Debug)]
pub struct Engine {
    batcher: Batcher,
    config: EngineConfig,
    fallbacks: Vec<String>,
}

impl Engine {
    /// Loads `model` with `config`: one session per instance, then the batcher.
    ///
    /// # Errors
    /// When the model does not load or does not fit the engine ([`Error::ModelLoad`],
    /// [`Error::UnsupportedModel`]), or the configuration asks for a missing variant.
    pub fn load(
        model: &ModelFiles,
        config: &EngineConfig,
        options: &EngineOptions,
    ) -> Result<Self> {
        if config.max_batch_size == 0 || config.instances == 0 || config.intra_op_threads == 0 {
            return Err(Error::Config(
                "maxBatchSize, instances and intraOpThreads must be at least 1".into(),
            ));
        }
        let bytes = model.file_for(config.precision, &config.execution_providers)?;
        let mut sessions = Vec::with_capacity(config.instances as usize);
        let mut providers = Vec::new();
        let mut fallbacks = Vec::new();
        for _ in 0..config.instances {
            let built = session::build(model.name(), bytes, config, &options.gpu)?;
            providers = built.providers;
            fallbacks = built.fallbacks;
            sessions.push(built.session);
        }
        let signature = model::inspect(model.name(), &sessions[0])?;
        let settings = BatchSettings {
            max_batch_size: config.max_batch_size as usize,
            max_delay: Duration::from_micros(config.batch_delay_micros),
            queue_capacity: options.queue_capacity,
            max_queued_bytes: options.max_queued_bytes,
            max_request_rows: options.max_request_rows,
            // Polling for work or for an answer on the last free core would hold off the very
            // thread it waits for until the scheduler preempts the poller.
            spin: config.spinning && spare_core(config, options.reserved_cpus),
        };
        let mut effective = config.clone();
        // fp16 over the fp32 file exists only on TensorRT: report what really runs.
        if config.precision == Precision::Fp16
            && !model.files.contains_key(&Precision::Fp16)
            && !providers.contains(&ExecutionProvider::TensorRT)
        {
            effective.precision = Precision::Fp32;
            fallbacks.push("fp16: TensorRT unavailable, serving the fp32 model".into());
        }
        effective.execution_providers = providers;
        let batcher = Batcher::start(sessions, signature, settings)?;
        Ok(Self {
            batcher,
            config: effective,
            fallbacks,
        })
    }

    /// The configuration actually in effect (providers after fallback).
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Why requested providers or precisions are not in effect, one line each.
    pub fn fallbacks(&self) -> &[String] {
        &self.fallbacks
    }

    /// The model's signature.
    pub fn signature(&self) -> &ModelSignature {
        self.batcher.signature()
    }

    /// The batcher, for callers that submit without waiting (the gRPC server).
    pub fn batcher(&self) -> &Batcher {
        &self.batcher
    }

    /// Runs `rows` rows and waits, from async code.
    ///
    /// # Errors
    /// As [`Batcher::submit`], plus inference failures.
    pub async fn infer(
        &self,
        input: Vec<f32>,
        rows: usize,
        deadline: Option<Instant>,
    ) -> Result<Response> {
        self.batcher.infer(input, rows, deadline).await
    }

    /// Runs `rows` rows and waits, from a plain thread.
    ///
    /// # Errors
    /// As [`Engine::infer`].
    pub fn infer_blocking(&self, input: Vec<f32>, rows: usize) -> Result<Response> {
        self.batcher.infer_blocking(input, rows, None)
    }

    /// Runs one full batch of zeros per instance, so that lazy initialisation (thread pools,
    /// arenas, TensorRT engine builds) happens before the first real request or measurement.
    ///
    /// # Errors
    /// When inference fails.
    pub fn warm_up(&self) -> Result<()> {
        let rows = self.config.max_batch_size as usize;
        let input = vec![0.0; rows * self.signature().input.row_len()];
        let pending: Vec<_> = (0..self.config.instances)
            .map(|_| self.batcher.submit(input.clone(), rows, None))
            .collect::<Result<_>>()?;
        for reply in pending {
            reply.blocking_recv().map_err(|_| Error::Stopped)??;
        }
        Ok(())
    }
}

/// Threads busy running inference under `config`: each instance's intra-op threads.
pub fn inference_threads(config: &EngineConfig) -> usize {
    config.instances as usize * config.intra_op_threads as usize
}

/// Whether the inference threads and `reserved` other busy threads leave a core free, where
/// polling (a worker for work, a caller for its answer) takes no core from them.
fn spare_core(config: &EngineConfig, reserved: usize) -> bool {
    crate::async_runtime::usable_cpus() > inference_threads(config) + reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_needs_a_core_that_neither_inference_nor_the_reserved_threads_use() {
        let cpus = crate::async_runtime::usable_cpus();
        let threads = |n: usize| EngineConfig {
            intra_op_threads: n.try_into().unwrap(),
            instances: 1,
            ..EngineConfig::default()
        };
        assert_eq!(spare_core(&threads(1), 0), cpus > 1);
        assert!(!spare_core(&threads(cpus), 0));
        // The async runtime serving on the other CPUs leaves none to poll on.
        assert!(!spare_core(&threads(1), cpus - 1));
        if cpus >= 2 {
            assert!(spare_core(&threads(1), cpus - 2));
        }
    }
}
