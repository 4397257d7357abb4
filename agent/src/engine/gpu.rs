//! Node-level GPU settings of the engine, derived from the detected hardware: the GPU memory
//! limit (docs/profiles.md: 80% of VRAM) and the folder of TensorRT's engine cache.
//!
//! A TensorRT engine is compiled for one GPU model by one TensorRT version, and ONNX Runtime's
//! TensorRT provider writes it for one ONNX Runtime version; a new driver can also change what
//! TensorRT picks. A stale engine either fails to deserialise or runs suboptimal kernels, so the
//! cache folder is keyed by all four and a change of any of them starts a fresh cache.

use std::path::{Path, PathBuf};

use super::GpuOptions;
use crate::hardware::Hardware;

/// Default base folder of TensorRT engine caches for `run`.
pub const DEFAULT_TENSORRT_CACHE: &str = "/var/cache/policyserve/tensorrt";

/// Share of the first GPU's memory ONNX Runtime may use.
const GPU_MEMORY_SHARE: f64 = 0.8;

impl GpuOptions {
    /// GPU options for a node with `hw`: 80% of the first GPU's memory, and a TensorRT cache
    /// under `tensorrt_base` keyed by GPU model, driver, ONNX Runtime and TensorRT versions.
    /// Without a GPU, neither is set.
    /// `ort_lib` is the ONNX Runtime library given on the command line, if any.
    pub fn for_node(hw: &Hardware, tensorrt_base: &Path, ort_lib: Option<&Path>) -> Self {
        let Some(gpu) = hw.gpus.first() else {
            return Self::default();
        };
        let ort_lib = ort_lib
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from));
        let key = tensorrt_cache_key(
            &gpu.product,
            &gpu.driver_version,
            ort_version(ort_lib.as_deref()).as_deref(),
            tensorrt_version(&library_dirs(ort_lib.as_deref())).as_deref(),
        );
        Self {
            memory_limit_bytes: memory_limit_bytes(hw),
            tensorrt_cache_dir: Some(tensorrt_base.join(key)),
        }
    }
}

/// 80% of the first GPU's memory in bytes; `None` without a GPU. Nodes hold one GPU model and
/// ONNX Runtime serves a session on one device, so the first GPU stands for all.
pub fn memory_limit_bytes(hw: &Hardware) -> Option<usize> {
    let mib = hw.gpus.first()?.memory_mib;
    // Float to int: a share of a memory size, far below usize::MAX; floor() makes the cut.
    let bytes = (mib as f64 * 1024.0 * 1024.0 * GPU_MEMORY_SHARE).floor();
    Some(bytes as usize)
}

/// The cache folder's name for a GPU model, driver, ONNX Runtime and TensorRT version, such as
/// `NVIDIA-H100-80GB-HBM3_drv-550.54.15_ort-1.31.1_trt-10.9.0`. One path component of
/// `[A-Za-z0-9._-]`, the same for the same inputs; unknown versions read `unknown`.
pub fn tensorrt_cache_key(
    gpu_product: &str,
    driver_version: &str,
    ort_version: Option<&str>,
    tensorrt_version: Option<&str>,
) -> String {
    [
        sanitize(gpu_product),
        format!("drv-{}", sanitize(driver_version)),
        format!("ort-{}", sanitize(ort_version.unwrap_or("unknown"))),
        format!("trt-{}", sanitize(tensorrt_version.unwrap_or("unknown"))),
    ]
    .join("_")
}

/// Keeps `[A-Za-z0-9.-]`, turns anything else into `-` (so `_` stays the key's separator),
/// collapses runs and never yields `.`, `..` or an empty string.
fn sanitize(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.trim().chars() {
        let c = if c.is_ascii_alphanumeric() || c == '.' {
            c
        } else {
            '-'
        };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    let out = out.trim_matches(|c| c == '-' || c == '.');
    if out.is_empty() {
        "unknown".into()
    } else {
        out.chars().take(64).collect()
    }
}

/// The loaded ONNX Runtime's version (`1.31.1`): from its build information when that names a
/// release branch, else from the library's file name (`libonnxruntime.so.1.31.1`, links
/// followed), else the build's commit (`git-6af1a93`), which identifies it as well. `None`
/// when no library is loaded.
pub fn ort_version(library: Option<&Path>) -> Option<String> {
    // Only ask a library that loaded: ort panics rather than erring without one.
    super::runtime::environment(None).ok()?;
    let info = ort::info();
    parse_ort_version(info)
        .or_else(|| {
            let path = std::fs::canonicalize(library?).ok()?;
            version_in_file_name(&path.file_name()?.to_string_lossy(), "libonnxruntime.so.")
        })
        .or_else(|| {
            info.split([',', ' '])
                .find_map(|part| part.trim().strip_prefix("git-commit-id="))
                .map(|commit| format!("git-{commit}"))
        })
}

/// The version in ONNX Runtime's build information (`git-branch=rel-1.31.1, ...`).
fn parse_ort_version(info: &str) -> Option<String> {
    let branch = info
        .split([',', ' '])
        .find_map(|part| part.trim().strip_prefix("git-branch="))?;
    let version = branch.strip_prefix("rel-").unwrap_or(branch);
    is_version(version).then(|| version.to_owned())
}

/// `10.9.0` from `libnvinfer.so.10.9.0` with prefix `libnvinfer.so.`.
fn version_in_file_name(name: &str, prefix: &str) -> Option<String> {
    let version = name.strip_prefix(prefix)?;
    is_version(version).then(|| version.to_owned())
}

/// Dot-separated numbers.
fn is_version(text: &str) -> bool {
    !text.is_empty()
        && text
            .split('.')
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Folders where TensorRT's library would be found: the ONNX Runtime library's own folder,
/// `LD_LIBRARY_PATH`, and the usual system folders.
fn library_dirs(ort_lib: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ort_lib
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .into_iter()
        .collect();
    if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&paths));
    }
    dirs.extend(
        [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/local/lib",
        ]
        .map(PathBuf::from),
    );
    dirs
}

/// TensorRT's version from the name of its library (`libnvinfer.so.10.9.0`) in `dirs`: the
/// most precise name found. ONNX Runtime does not report the TensorRT it runs with, and
/// reading the library's own version would take FFI for a cache key.
pub fn tensorrt_version(dirs: &[PathBuf]) -> Option<String> {
    dirs.iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            tensorrt_version_in_name(&name.to_string_lossy())
        })
        .max_by_key(|version| (version.split('.').count(), version.clone()))
}

fn tensorrt_version_in_name(name: &str) -> Option<String> {
    version_in_file_name(name, "libnvinfer.so.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::tests::gpu_node;

    #[test]
    fn the_gpu_memory_limit_is_eighty_percent_of_the_first_gpu() {
        let mut hw = gpu_node();
        hw.gpus[0].memory_mib = 10 * 1024;
        assert_eq!(memory_limit_bytes(&hw), Some(8 * 1024 * 1024 * 1024));
        hw.gpus.clear();
        assert_eq!(memory_limit_bytes(&hw), None);
    }

    #[test]
    fn a_node_without_a_gpu_gets_no_gpu_options() {
        let mut hw = gpu_node();
        hw.gpus.clear();
        let options = GpuOptions::for_node(&hw, Path::new("/cache"), None);
        assert_eq!(options.memory_limit_bytes, None);
        assert_eq!(options.tensorrt_cache_dir, None);
    }

    #[test]
    fn a_gpu_node_gets_a_keyed_cache_folder_under_the_base() {
        let hw = gpu_node();
        let options = GpuOptions::for_node(&hw, Path::new("/cache"), None);
        let dir = options.tensorrt_cache_dir.unwrap();
        assert_eq!(dir.parent(), Some(Path::new("/cache")));
        let key = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(key.contains("_drv-"), "{key}");
        assert!(options.memory_limit_bytes.is_some());
    }

    #[test]
    fn the_cache_key_names_gpu_driver_runtime_and_tensorrt() {
        assert_eq!(
            tensorrt_cache_key(
                "NVIDIA H100 80GB HBM3",
                "550.54.15",
                Some("1.31.1"),
                Some("10.9.0")
            ),
            "NVIDIA-H100-80GB-HBM3_drv-550.54.15_ort-1.31.1_trt-10.9.0"
        );
    }

    #[test]
    fn the_cache_key_is_one_safe_path_component_and_stable() {
        let key = tensorrt_cache_key("../../etc/ A100/SXM4 (40GB)_x", "", None, Some(".."));
        assert_eq!(
            key,
            "etc-A100-SXM4-40GB-x_drv-unknown_ort-unknown_trt-unknown"
        );
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        );
        assert_eq!(
            key,
            tensorrt_cache_key("../../etc/ A100/SXM4 (40GB)_x", "", None, Some(".."))
        );
        // Different versions never share a folder.
        assert_ne!(
            tensorrt_cache_key("A100", "535.1", Some("1.31.1"), Some("10.9.0")),
            tensorrt_cache_key("A100", "535.1", Some("1.31.1"), Some("10.8.0"))
        );
    }

    #[test]
    fn the_runtime_version_comes_from_the_build_information() {
        assert_eq!(
            parse_ort_version(
                "ORT Build Info: git-branch=rel-1.31.1, git-commit-id=abc, build type=Release"
            )
            .as_deref(),
            Some("1.31.1")
        );
        // 1.31.1's own build says `git-branch=HEAD`: the file name or commit stands in.
        assert_eq!(
            parse_ort_version("ORT Build Info: git-branch=HEAD, git-commit-id=6af1a93"),
            None
        );
        assert_eq!(
            version_in_file_name("libonnxruntime.so.1.31.1", "libonnxruntime.so.").as_deref(),
            Some("1.31.1")
        );
        assert_eq!(parse_ort_version(""), None);
    }

    #[test]
    fn the_loaded_runtime_reports_its_version() {
        let lib = std::env::var_os("ORT_DYLIB_PATH")
            .expect("ORT_DYLIB_PATH names libonnxruntime.so (run `make deps`)");
        let version = ort_version(Some(Path::new(&lib))).unwrap();
        assert!(
            version.starts_with("1.") || version.starts_with("git-"),
            "{version}"
        );
    }

    #[test]
    fn the_tensorrt_version_comes_from_its_library_name() {
        assert_eq!(
            tensorrt_version_in_name("libnvinfer.so.10.9.0").as_deref(),
            Some("10.9.0")
        );
        assert_eq!(
            tensorrt_version_in_name("libnvinfer.so.10").as_deref(),
            Some("10")
        );
        assert_eq!(tensorrt_version_in_name("libnvinfer.so"), None);
        assert_eq!(tensorrt_version_in_name("libnvinfer_plugin.so.10"), None);

        let dir = tempfile::tempdir().unwrap();
        for name in [
            "libnvinfer.so.10",
            "libnvinfer.so.10.9.0",
            "libcudart.so.12",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(
            tensorrt_version(&[dir.path().to_path_buf()]).as_deref(),
            Some("10.9.0")
        );
        assert_eq!(tensorrt_version(&[]), None);
    }
}
