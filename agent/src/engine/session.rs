//! ONNX Runtime sessions built from an engine configuration, with execution providers tried
//! in priority order and every fallback reported.

use std::path::PathBuf;

use ort::ep;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use policyserve_crds::{EngineConfig, ExecutionProvider, Precision};

use super::runtime;
use super::{Error, Result};

/// Settings that belong to the node rather than to one configuration.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// GPU memory ONNX Runtime may use, bytes (docs/profiles.md: 80% of VRAM).
    pub memory_limit_bytes: Option<usize>,
    /// Folder for TensorRT engine caches; a cache is reused only by the same GPU model,
    /// driver, ONNX Runtime and TensorRT versions, which is why the caller keys the folder.
    pub tensorrt_cache_dir: Option<PathBuf>,
}

/// A session and the providers it actually got.
#[derive(Debug)]
pub struct BuiltSession {
    /// The session.
    pub session: Session,
    /// Providers registered, in priority order; CPU is always last, since ONNX Runtime places
    /// on it whatever the others do not take.
    pub providers: Vec<ExecutionProvider>,
    /// One line per requested provider that could not be used, and why.
    pub fallbacks: Vec<String>,
}

/// Builds a session for `model` with `config`.
///
/// # Errors
/// [`Error::ModelLoad`] when ONNX Runtime refuses the model or an option.
pub fn build(
    model_name: &str,
    model: &[u8],
    config: &EngineConfig,
    gpu: &GpuOptions,
) -> Result<BuiltSession> {
    let environment = runtime::environment(None)?;
    let failed = |reason: String| Error::ModelLoad {
        model: model_name.to_owned(),
        reason,
    };
    let option = |e: ort::Error<SessionBuilder>| failed(e.to_string());
    let mut builder = Session::builder(environment)
        .map_err(|e| failed(e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(option)?
        .with_intra_threads(config.intra_op_threads.max(1) as usize)
        .map_err(option)?
        // One operator at a time: policy MLPs are chains, and batching gives the parallelism.
        .with_inter_threads(1)
        .map_err(option)?
        .with_parallel_execution(false)
        .map_err(option)?
        .with_intra_op_spinning(config.spinning)
        .map_err(option)?
        .with_memory_pattern(config.memory_arena)
        .map_err(option)?;

    let mut providers = Vec::new();
    let mut fallbacks = Vec::new();
    for provider in &config.execution_providers {
        match register(&mut builder, *provider, config, gpu) {
            Ok(()) => providers.push(*provider),
            Err(reason) => fallbacks.push(format!("{provider}: {reason}")),
        }
    }
    if !providers.contains(&ExecutionProvider::Cpu) {
        register(&mut builder, ExecutionProvider::Cpu, config, gpu).map_err(failed)?;
        providers.push(ExecutionProvider::Cpu);
    }
    for fallback in &fallbacks {
        tracing::warn!(
            model = model_name,
            "execution provider unavailable, falling back: {fallback}"
        );
    }
    let session = builder
        .commit_from_memory(model)
        .map_err(|e| failed(e.to_string()))?;
    Ok(BuiltSession {
        session,
        providers,
        fallbacks,
    })
}

/// Registers one provider; the error says why it cannot be used here.
fn register(
    builder: &mut SessionBuilder,
    provider: ExecutionProvider,
    config: &EngineConfig,
    gpu: &GpuOptions,
) -> std::result::Result<(), String> {
    let dispatch = match provider {
        ExecutionProvider::Cpu => ep::CPU::default()
            .with_arena_allocator(config.memory_arena)
            .build(),
        ExecutionProvider::Cuda => {
            available::<ep::CUDA>("CUDA")?;
            let mut cuda = ep::CUDA::default();
            if let Some(limit) = gpu.memory_limit_bytes {
                cuda = cuda.with_memory_limit(limit);
            }
            cuda.build()
        }
        ExecutionProvider::TensorRT => {
            available::<ep::TensorRT>("TensorRT")?;
            let mut trt = ep::TensorRT::default().with_fp16(config.precision == Precision::Fp16);
            // Made here, and removed again when the provider library then fails to load (no
            // libnvinfer: seen on an H100), so nodes without TensorRT keep no cache folder. An
            // unwritable cache costs engine builds at each load, not TensorRT itself.
            let fresh = gpu.tensorrt_cache_dir.as_ref().filter(|dir| !dir.exists());
            if let Some(dir) = &gpu.tensorrt_cache_dir {
                match std::fs::create_dir_all(dir) {
                    Ok(()) => {
                        trt = trt
                            .with_engine_cache(true)
                            .with_engine_cache_path(dir.display());
                    }
                    Err(e) => tracing::warn!(
                        dir = %dir.display(),
                        "TensorRT engine cache unavailable, engines are rebuilt at each load: {e}"
                    ),
                }
            }
            let registered = register_dispatch(trt.build(), builder);
            if let (Err(_), Some(dir)) = (&registered, fresh) {
                let _ = std::fs::remove_dir(dir);
            }
            return registered;
        }
    };
    register_dispatch(dispatch, builder)
}

fn register_dispatch(
    dispatch: ep::ExecutionProviderDispatch,
    builder: &mut SessionBuilder,
) -> std::result::Result<(), String> {
    dispatch
        .error_on_failure()
        .register(builder)
        .map_err(|e| e.to_string())
}

fn available<P: ep::ExecutionProvider>(name: &str) -> std::result::Result<(), String> {
    match P::is_available() {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "this ONNX Runtime library was built without {name}; use the onnxruntime-gpu build"
        )),
        Err(e) => Err(e.to_string()),
    }
}
