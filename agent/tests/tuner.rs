//! Tier 1 with real ONNX Runtime: the tuner's choices on this machine.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use policyserve_agent::engine::{EngineOptions, ModelFiles, runtime};
use policyserve_agent::tuner::{self, Candidate, MeasureSettings};
use policyserve_crds::{ExecutionProvider, Precision, SearchSpace, Targets};

fn tiny() -> ModelFiles {
    runtime::environment(None).expect("ORT_DYLIB_PATH names libonnxruntime.so (run `make deps`)");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/policy-mlp-tiny.onnx");
    ModelFiles::read("tiny", &path, &[]).unwrap()
}

fn space() -> SearchSpace {
    SearchSpace {
        execution_providers: vec![vec![ExecutionProvider::Cpu]],
        precisions: vec![Precision::Fp32],
        intra_op_threads: vec![1, 2],
        instances: vec![1, 2],
        max_batch_sizes: vec![1, 8, 32],
        batch_delays_micros: vec![0, 100, 500],
        memory_arena: vec![true],
    }
}

fn ignore(_: &Candidate) {}

#[test]
fn quick_search_meets_generous_targets_without_measuring_everything() {
    let targets = Targets {
        latency_p99_ms: Some(50.0),
        ..Targets::default()
    };
    let report = tuner::quick_search(
        &tiny(),
        &targets,
        &space(),
        &EngineOptions::default(),
        Duration::from_secs(4),
        &mut ignore,
    )
    .unwrap();
    assert!(report.targets_met, "{:?}", report.failing);
    assert!(
        report.candidates.len() < space().size(),
        "quick search measured all {}",
        space().size()
    );
    let best = report
        .candidates
        .iter()
        .filter(|c| c.meets_targets())
        .map(|c| c.ranked.throughput_rps);
    assert_eq!(
        Some(report.chosen.ranked.throughput_rps),
        best.reduce(f64::max)
    );
    assert!(report.chosen.ranked.latency_p50_ms > 0.0 && report.chosen.ranked.memory_mib > 0.0);
}

#[test]
fn an_impossible_target_returns_the_closest_configuration_and_says_what_fails() {
    let targets = Targets {
        latency_p99_ms: Some(0.000_001),
        memory_limit: Some(Quantity("1Gi".into())),
        ..Targets::default()
    };
    let report = tuner::quick_search(
        &tiny(),
        &targets,
        &space(),
        &EngineOptions::default(),
        Duration::from_secs(2),
        &mut ignore,
    )
    .unwrap();
    assert!(!report.targets_met);
    assert!(
        report
            .failing
            .iter()
            .any(|f| f.starts_with("latencyP99Ms ")),
        "{:?}",
        report.failing
    );
    let lowest_p99 = report
        .candidates
        .iter()
        .map(|c| c.ranked.latency_p99_ms)
        .fold(f64::INFINITY, f64::min);
    assert_eq!(report.chosen.ranked.latency_p99_ms, lowest_p99);
}

#[test]
fn exhaustive_search_measures_every_configuration() {
    let small = SearchSpace {
        intra_op_threads: vec![1],
        batch_delays_micros: vec![0],
        ..space()
    };
    let settings = MeasureSettings {
        window: Duration::from_millis(100),
    };
    let report = tuner::exhaustive(
        &tiny(),
        &Targets::default(),
        &small,
        &EngineOptions::default(),
        settings,
        &mut ignore,
    )
    .unwrap();
    assert_eq!(report.candidates.len(), small.size());
    assert!(report.targets_met, "no targets, nothing can fail");
}
