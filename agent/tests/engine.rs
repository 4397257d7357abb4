//! Tier 1 with real ONNX Runtime (ORT_DYLIB_PATH must name the library; `make test` sets it):
//! loading, model checks, batching and the batcher's queue.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use policyserve_agent::engine::{Engine, EngineOptions, Error, ModelFiles, runtime};
use policyserve_crds::{EngineConfig, ExecutionProvider, Precision};

fn model_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(name)
}

fn model(name: &str) -> ModelFiles {
    runtime::environment(None).expect("ORT_DYLIB_PATH names libonnxruntime.so (run `make deps`)");
    ModelFiles::read(name, &model_path(name), &[]).unwrap()
}

fn config(max_batch_size: u32, batch_delay_micros: u64) -> EngineConfig {
    EngineConfig {
        max_batch_size,
        batch_delay_micros,
        ..EngineConfig::default()
    }
}

fn rows(count: usize, width: usize) -> Vec<Vec<f32>> {
    (0..count)
        .map(|r| {
            (0..width)
                .map(|c| ((r * 31 + c * 7) % 13) as f32 / 13.0 - 0.5)
                .collect()
        })
        .collect()
}

#[test]
fn concurrent_requests_are_batched_and_each_gets_its_own_rows_back() {
    let files = model("policy-mlp.onnx");
    let unbatched = Engine::load(&files, &config(1, 0), &EngineOptions::default()).unwrap();
    let batched = Engine::load(&files, &config(8, 20_000), &EngineOptions::default()).unwrap();
    let inputs = rows(12, 64);
    let expected: Vec<Vec<f32>> = inputs
        .iter()
        .map(|row| {
            unbatched
                .infer_blocking(row.clone(), 1)
                .unwrap()
                .outputs
                .remove(0)
        })
        .collect();

    // Submit all before waiting on any, so the worker finds them queued together.
    let pending: Vec<_> = inputs
        .iter()
        .map(|row| batched.batcher().submit(row.clone(), 1, None).unwrap())
        .collect();
    let responses: Vec<_> = pending
        .into_iter()
        .map(|r| r.blocking_recv().unwrap().unwrap())
        .collect();

    assert!(
        responses.iter().any(|r| r.batch_rows > 1),
        "no request shared a batch"
    );
    assert!(
        responses.iter().all(|r| r.batch_rows <= 8),
        "a batch exceeded maxBatchSize"
    );
    for (response, want) in responses.iter().zip(&expected) {
        assert_eq!(response.outputs[0].len(), 16);
        for (got, want) in response.outputs[0].iter().zip(want) {
            assert!((got - want).abs() < 1e-4, "batched {got} vs alone {want}");
        }
    }
}

#[test]
fn a_multi_row_request_comes_back_with_all_its_rows() {
    let engine = Engine::load(
        &model("policy-mlp-tiny.onnx"),
        &config(32, 0),
        &EngineOptions::default(),
    )
    .unwrap();
    let input: Vec<f32> = rows(5, 16).concat();
    let response = engine.infer_blocking(input, 5).unwrap();
    assert_eq!(response.outputs[0].len(), 5 * 4);
}

#[test]
fn a_request_of_the_wrong_size_is_refused_and_the_engine_keeps_serving() {
    let engine = Engine::load(
        &model("policy-mlp.onnx"),
        &config(4, 0),
        &EngineOptions::default(),
    )
    .unwrap();
    let error = engine.infer_blocking(vec![0.0; 63], 1).unwrap_err();
    assert!(
        matches!(error, Error::InvalidRequest(ref m) if m.contains("63 values")),
        "{error}"
    );
    assert!(matches!(
        engine.infer_blocking(vec![], 0),
        Err(Error::InvalidRequest(_))
    ));
    assert_eq!(
        engine.infer_blocking(vec![0.0; 64], 1).unwrap().outputs[0].len(),
        16
    );
}

#[test]
fn a_full_queue_refuses_new_work_instead_of_growing() {
    let files = model("policy-mlp.onnx");
    let options = EngineOptions {
        queue_capacity: 2,
        ..EngineOptions::default()
    };
    // A large batch delay keeps the single worker collecting while the queue fills.
    let engine = Engine::load(&files, &config(1000, 2_000_000), &options).unwrap();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..50 {
        match engine.batcher().submit(vec![0.0; 64], 1, None) {
            Ok(reply) => accepted.push(reply),
            Err(Error::QueueFull(_)) => refused += 1,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(refused > 0, "50 requests fit a queue of 2");
    // Everything accepted is still answered.
    for reply in accepted {
        reply.blocking_recv().unwrap().unwrap();
    }
}

#[test]
fn an_expired_deadline_is_reported_not_run() {
    let engine = Engine::load(
        &model("policy-mlp.onnx"),
        &config(1, 0),
        &EngineOptions::default(),
    )
    .unwrap();
    let past = std::time::Instant::now() - Duration::from_millis(1);
    let reply = engine
        .batcher()
        .submit(vec![0.0; 64], 1, Some(past))
        .unwrap();
    assert!(matches!(
        reply.blocking_recv().unwrap(),
        Err(Error::DeadlineExceeded(_))
    ));
}

#[test]
fn broken_models_fail_with_a_reason_a_person_can_act_on() {
    let cases = [
        ("broken/truncated.onnx", "failed to load model"),
        ("broken/not-onnx.onnx", "failed to load model"),
        ("broken/unsupported-op.onnx", "Teleport"),
        ("broken/int64-input.onnx", "the engine serves float32"),
        ("broken/static-batch.onnx", "fixed batch dimension"),
    ];
    for (file, expected) in cases {
        let error =
            Engine::load(&model(file), &config(8, 0), &EngineOptions::default()).unwrap_err();
        assert!(error.to_string().contains(expected), "{file}: {error}");
    }
}

#[test]
fn gpu_providers_fall_back_to_cpu_and_say_why() {
    // The CPU build of ONNX Runtime has neither CUDA nor TensorRT: the engine must still load
    // and report the fallback. On a GPU machine with the GPU build this test is not about
    // fallback, so it only runs when the library lacks CUDA.
    let requested = vec![
        ExecutionProvider::TensorRT,
        ExecutionProvider::Cuda,
        ExecutionProvider::Cpu,
    ];
    let config = EngineConfig {
        execution_providers: requested,
        ..config(8, 0)
    };
    let engine = Engine::load(
        &model("policy-mlp.onnx"),
        &config,
        &EngineOptions::default(),
    )
    .unwrap();
    // `make deps` installs the CPU-only library; the GPU build's providers are
    // scripts/gpu-check.sh's to test, with the tests marked "needs an NVIDIA GPU".
    assert_eq!(
        engine.config().execution_providers,
        vec![ExecutionProvider::Cpu],
        "this test needs the CPU-only ONNX Runtime of `make deps` in ORT_DYLIB_PATH"
    );
    let reasons = engine.fallbacks().join("\n");
    assert!(
        reasons.contains("TensorRT") && reasons.contains("CUDA"),
        "{reasons}"
    );
    assert_eq!(
        engine.infer_blocking(vec![0.0; 64], 1).unwrap().outputs[0].len(),
        16
    );
}

#[test]
fn an_int8_variant_loads_and_a_missing_variant_is_a_clear_error() {
    runtime::environment(None).unwrap();
    let files = ModelFiles::read(
        "policy-mlp",
        &model_path("policy-mlp.onnx"),
        &[(
            Precision::Int8,
            model_path("policy-mlp.int8.onnx").as_path(),
        )],
    )
    .unwrap();
    let int8 = EngineConfig {
        precision: Precision::Int8,
        ..config(4, 0)
    };
    let engine = Engine::load(&files, &int8, &EngineOptions::default()).unwrap();
    assert_eq!(engine.config().precision, Precision::Int8);
    assert_eq!(
        engine.infer_blocking(vec![0.1; 64], 1).unwrap().outputs[0].len(),
        16
    );

    let only_fp32 = ModelFiles::new(
        "m",
        BTreeMap::from([(Precision::Fp32, Arc::from(vec![0u8]))]),
    )
    .unwrap();
    let error = Engine::load(&only_fp32, &int8, &EngineOptions::default()).unwrap_err();
    assert!(error.to_string().contains("no int8 variant"), "{error}");
}
