//! The agent binary as a user runs it.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_policyserve-agent"))
}

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(name)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn tune_json_prints_the_object_design_pins() {
    let output = agent()
        .args([
            "tune", "--output", "json", "--budget", "2s", "--p99-ms", "50", "--memory", "1Gi",
        ])
        .arg("--model")
        .arg(model("policy-mlp-tiny.onnx"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for key in [
        "model",
        "targets",
        "candidates",
        "chosen",
        "targetsMet",
        "failing",
    ] {
        assert!(json.get(key).is_some(), "missing {key}: {json}");
    }
    assert_eq!(json["targets"]["latencyP99Ms"], 50.0);
    assert_eq!(json["targets"]["memoryLimit"], "1Gi");
    let chosen = &json["chosen"];
    assert!(chosen["config"]["executionProviders"].is_array());
    // What the sweep finds depends on this machine's load; that it swept and reported does not.
    assert!(chosen["capacity"]["latencyP99Ms"].as_f64().unwrap() > 0.0);
    let capacity = chosen["capacity"]["throughputRps"].as_f64().unwrap();
    assert!(capacity >= 0.0);
    let steps = json["swept"][0]["steps"].as_array().unwrap();
    assert!(!steps.is_empty());
    // The capacity is the highest rate that passed twice (what clients got there, so never
    // more than that rate); 0 when none did.
    let passes = |rate: f64| {
        steps
            .iter()
            .filter(|s| s["passed"] == true && s["rateRps"].as_f64() == Some(rate))
            .count()
    };
    let confirmed = steps
        .iter()
        .filter_map(|s| s["rateRps"].as_f64())
        .filter(|rate| passes(*rate) >= 2)
        .fold(0.0, f64::max);
    assert!(
        (confirmed == 0.0 && capacity == 0.0) || (capacity > 0.0 && capacity <= confirmed),
        "capacity {capacity} against the steps: {steps:?}"
    );
    assert!(
        chosen["capacity"]["method"]
            .as_str()
            .unwrap()
            .contains("loopback gRPC")
    );
    let ranked = &json["candidates"][0]["ranked"];
    assert!(ranked["throughputRps"].as_f64().unwrap() > 0.0, "{ranked}");
    assert_eq!(
        json["targetsMet"].as_bool().unwrap(),
        json["failing"].as_array().unwrap().is_empty()
    );
}

#[test]
fn a_missing_onnx_runtime_library_is_a_clear_error_not_a_panic() {
    let output = agent()
        .args([
            "tune",
            "--budget",
            "1s",
            "--ort-lib",
            "/nonexistent/libonnxruntime.so",
        ])
        .arg("--model")
        .arg(model("policy-mlp-tiny.onnx"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output)
            .contains("failed to load ONNX Runtime: /nonexistent/libonnxruntime.so does not exist")
    );
    assert!(!text(&output).contains("panicked"));

    let unset = agent()
        .args(["tune", "--budget", "1s"])
        .arg("--model")
        .arg(model("policy-mlp-tiny.onnx"))
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    assert!(
        text(&unset).contains("pass --ort-lib PATH or set ORT_DYLIB_PATH"),
        "{}",
        text(&unset)
    );
}

#[test]
fn tuning_a_broken_model_fails_with_the_reason() {
    let output = agent()
        .args(["tune", "--budget", "1s"])
        .arg("--model")
        .arg(model("broken/static-batch.onnx"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains("fixed batch dimension of 1"),
        "{}",
        text(&output)
    );
}

#[test]
fn invalid_arguments_are_explained() {
    let output = agent()
        .args(["tune", "--model", "m.onnx", "--variant", "int4=x.onnx"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output).contains("unknown precision"),
        "{}",
        text(&output)
    );
}
