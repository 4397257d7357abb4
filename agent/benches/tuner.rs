//! Tuner: quick search vs exhaustive (docs/benchmarks.md).
//!
//! On a 36-configuration space (intra-op threads {1,2} × instances {1,2} × max batch
//! {1,8,32} × batch delay {0,100,500} µs, CPU, fp32) it runs `tuner::exhaustive` with a
//! `--window` per configuration, then `tuner::quick_search` with a budget of `--fraction` of
//! the exhaustive search's measured wall time, and re-measures both winners side by side
//! (interleaved, `--remeasure` rounds, medians) so that the exhaustive winner's lucky window
//! does not decide the ratio. The whole comparison repeats `--repeats` times.
//! Run with `cargo bench -p policyserve-agent --bench tuner`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use policyserve_agent::engine::{Engine, EngineOptions, ModelFiles, runtime};
use policyserve_agent::tuner::{self, MeasureSettings};
use policyserve_crds::{EngineConfig, ExecutionProvider, Precision, SearchSpace, Targets};

#[derive(Debug)]
struct Options {
    model: PathBuf,
    window: Duration,
    fraction: f64,
    repeats: usize,
    remeasure: usize,
}

fn options() -> Result<Options> {
    let mut options = Options {
        model: Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/policy-mlp.onnx"),
        window: Duration::from_millis(1000),
        fraction: 0.2,
        repeats: 3,
        remeasure: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--window" => options.window = Duration::from_secs_f64(value()?.parse()?),
            "--fraction" => options.fraction = value()?.parse()?,
            "--repeats" => options.repeats = value()?.parse()?,
            "--remeasure" => options.remeasure = value()?.parse()?,
            "--model" => options.model = value()?.into(),
            _ => {} // `cargo bench` passes `--bench`
        }
    }
    Ok(options)
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

fn describe(config: &EngineConfig) -> String {
    format!(
        "threads {} · instances {} · batch {} · delay {} µs",
        config.intra_op_threads, config.instances, config.max_batch_size, config.batch_delay_micros
    )
}

/// Throughput of `config` measured the way the tuner measures it, one window.
fn rps(files: &ModelFiles, config: &EngineConfig, window: Duration) -> Result<f64> {
    let engine = Engine::load(files, config, &EngineOptions::default())?;
    engine.warm_up()?;
    Ok(tuner::measure(&engine, MeasureSettings { window })?.throughput_rps)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not: stay out of tests.
    if !std::env::args().any(|a| a == "--bench") {
        println!("a benchmark: run it with `cargo bench` (scripts/bench.sh)");
        return Ok(());
    }
    let options = options()?;
    runtime::environment(None)
        .context("set ORT_DYLIB_PATH (source ~/.cache/policyserve/env.sh)")?;
    let files = ModelFiles::read("policy", &options.model, &[])?;
    let space = space();
    // The `make tune` targets: latency and memory are constraints, throughput is maximised.
    let targets = Targets {
        latency_p99_ms: Some(2.0),
        memory_limit: Some(Quantity("512Mi".into())),
        ..Targets::default()
    };
    let engine_options = EngineOptions::default();
    println!(
        "search space: {} configurations; exhaustive window {:.2} s; quick-search budget {:.0} % \
         of the exhaustive wall time; winners re-measured {} × {:.2} s interleaved",
        space.size(),
        options.window.as_secs_f64(),
        options.fraction * 100.0,
        options.remeasure,
        options.window.as_secs_f64()
    );
    println!(
        "| run | exhaustive: time, measured | exhaustive best (its own window) | quick: time, measured | quick choice (its own window) | re-measured rps: exhaustive best / quick choice | rps ratio | time ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let (mut ratios, mut time_ratios) = (Vec::new(), Vec::new());
    for run in 1..=options.repeats {
        let started = Instant::now();
        let exhaustive = tuner::exhaustive(
            &files,
            &targets,
            &space,
            &engine_options,
            MeasureSettings {
                window: options.window,
            },
            &mut |_| {},
        )?;
        let exhaustive_time = started.elapsed();
        let budget = exhaustive_time.mul_f64(options.fraction);
        let started = Instant::now();
        let quick = tuner::quick_search(
            &files,
            &targets,
            &space,
            &engine_options,
            budget,
            &mut |_| {},
        )?;
        let quick_time = started.elapsed();
        let (mut best_rps, mut quick_rps) = (Vec::new(), Vec::new());
        for _ in 0..options.remeasure {
            best_rps.push(rps(&files, &exhaustive.chosen.config, options.window)?);
            quick_rps.push(rps(&files, &quick.chosen.config, options.window)?);
        }
        let (best_rps, quick_rps) = (median(best_rps), median(quick_rps));
        let ratio = quick_rps / best_rps;
        let time_ratio = quick_time.as_secs_f64() / exhaustive_time.as_secs_f64();
        ratios.push(ratio);
        time_ratios.push(time_ratio);
        println!(
            "| {run} | {:.1} s, {} | {} ({:.0} rps) | {:.1} s, {} | {} ({:.0} rps) | {:.0} / {:.0} | {:.1} % | {:.1} % |",
            exhaustive_time.as_secs_f64(),
            exhaustive.candidates.len(),
            describe(&exhaustive.chosen.config),
            exhaustive.chosen.ranked.throughput_rps,
            quick_time.as_secs_f64(),
            quick.candidates.len(),
            describe(&quick.chosen.config),
            quick.chosen.ranked.throughput_rps,
            best_rps,
            quick_rps,
            ratio * 100.0,
            time_ratio * 100.0
        );
    }
    println!(
        "median over {} runs: quick choice at {:.1} % of the exhaustive best's throughput, in {:.1} % of its time",
        options.repeats,
        median(ratios) * 100.0,
        median(time_ratios) * 100.0
    );
    Ok(())
}
