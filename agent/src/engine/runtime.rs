//! The process's one ONNX Runtime environment, loaded from a shared library at run time.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

use super::{Error, Result};

static ENVIRONMENT: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime from `library` (or `ORT_DYLIB_PATH`) once per process and returns the
/// environment every session is built in. Later calls return the first result.
///
/// # Errors
/// When no library is named, the file is missing, or it does not load; the message says how
/// to point the agent at one. ort itself would panic on a missing library.
pub fn environment(library: Option<&Path>) -> Result<&'static Environment> {
    ENVIRONMENT
        .get_or_init(|| load(library).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|reason| Error::OnnxRuntime(reason.clone()))
}

fn load(library: Option<&Path>) -> Result<Environment> {
    let path: PathBuf = library
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
        .ok_or_else(|| {
            Error::OnnxRuntime(
                "no library given: pass --ort-lib PATH or set ORT_DYLIB_PATH to libonnxruntime.so \
                 (`make deps` installs one into ~/.cache/policyserve/onnxruntime)"
                    .into(),
            )
        })?;
    if !path.is_file() {
        return Err(Error::OnnxRuntime(format!(
            "{} does not exist",
            path.display()
        )));
    }
    let builder = ort::init_from(&path)
        .map_err(|e| Error::OnnxRuntime(format!("{}: {e}", path.display())))?;
    builder
        .with_name("policyserve")
        .with_telemetry(false)
        .build()
        .map_err(|e| Error::OnnxRuntime(format!("{}: {e}", path.display())))
}
