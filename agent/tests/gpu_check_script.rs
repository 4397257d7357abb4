//! `scripts/gpu-check.sh` within a tiny budget: it must run the CPU part and exit 0, so that the
//! script handed to a GPU machine is known to work up to the GPU itself. Without an NVIDIA
//! driver it must say that the GPU part was skipped; with one, that it ran the GPU part.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn gpu_check_runs_the_cpu_part_and_says_what_it_did_with_the_gpu_part() {
    let driver = Path::new("/proc/driver/nvidia/version").exists();
    let ort = std::env::var_os("ORT_DYLIB_PATH")
        .expect("ORT_DYLIB_PATH names libonnxruntime.so (source ~/.cache/policyserve/env.sh)");
    // The bundle scripts/gpu-bundle.sh would make, from this build.
    let bundle = tempfile::tempdir().unwrap();
    let b = bundle.path();
    std::fs::create_dir_all(b.join("models")).unwrap();
    std::fs::create_dir_all(b.join("ort-cpu")).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_policyserve-agent"),
        b.join("policyserve-agent"),
    )
    .unwrap();
    for model in ["policy-mlp.onnx", "policy-mlp-large.onnx"] {
        std::fs::copy(
            workspace().join("models").join(model),
            b.join("models").join(model),
        )
        .unwrap();
    }
    std::fs::copy(&ort, b.join("ort-cpu/libonnxruntime.so.1.31.1")).unwrap();
    let out = b.join("out");

    let run = Command::new("bash")
        .arg(workspace().join("scripts/gpu-check.sh"))
        .arg(b)
        .env("GPU_CHECK_BUDGET", "2s")
        .env("GPU_CHECK_OUT", &out)
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("ORT_GPU_DIR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    let said = if driver {
        ["GPU part ran", "GPU present, GPU tune skipped"]
            .iter()
            .any(|line| stdout.contains(line))
    } else {
        stdout.contains("no GPU: GPU part skipped")
    };
    assert!(said, "{stdout}");
    assert!(stdout.contains("hardware class"), "detect ran: {stdout}");
    for model in ["policy-mlp", "policy-mlp-large"] {
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("cpu-{model}.json"))).unwrap(),
        )
        .unwrap();
        // The capacity came from a sweep over gRPC (its figure depends on the machine's load).
        assert!(
            report["chosen"]["capacity"]["method"]
                .as_str()
                .is_some_and(|m| m.contains("loopback gRPC")),
            "{report}"
        );
        assert!(
            report["swept"][0]["steps"]
                .as_array()
                .is_some_and(|steps| !steps.is_empty()),
            "{report}"
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("{model} ")) && l.contains(" cpu ")),
            "a side-by-side row for {model}: {stdout}"
        );
    }
    let detect: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("detect.json")).unwrap()).unwrap();
    assert_eq!(detect["gpus"], serde_json::json!([]));
}
