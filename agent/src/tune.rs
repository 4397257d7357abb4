//! `policyserve-agent tune`: measure a model on this machine and choose its configuration.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use policyserve_crds::{NodeCapacity, Precision, ProfileSelection, SearchSpace, Targets};
use serde::Serialize;

use crate::cli::{OutputFormat, TuneArgs};
use crate::engine::{EngineOptions, GpuOptions, ModelFiles, runtime};
use crate::hardware::Hardware;
use crate::tuner::{self, Candidate, MeasureSettings, Tuning};

/// The object `tune --output json` prints: the in-process ranking of every candidate
/// (`candidates[].ranked`, ordering only), the capacity sweeps, and the chosen configuration
/// with its capacity (`chosen.capacity`, what a client on this machine gets).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TuneOutput<'a> {
    model: String,
    targets: &'a Targets,
    hardware_class: String,
    profile: String,
    search_space: &'a SearchSpace,
    #[serde(flatten)]
    tuning: &'a Tuning,
}

/// Runs `tune`.
///
/// # Errors
/// When ONNX Runtime or the model does not load, or no configuration can be measured.
pub fn run(args: &TuneArgs) -> anyhow::Result<()> {
    let TuneArgs {
        model,
        variants,
        budget,
        profile,
        exhaustive,
        output,
        json_out,
        ort,
        hardware,
        tensorrt_cache,
        ..
    } = args;
    let targets = targets(args);
    targets.memory_limit_mib().context("--memory")?;
    runtime::environment(ort.ort_lib.as_deref())?;
    let files = read_model(model, variants)?;
    let hw = crate::hardware::load(hardware.hardware_file.as_deref())?;
    let (class, profile, space) = plan(&hw, *profile, &targets, &files);
    if *output == OutputFormat::Table {
        println!(
            "model {} · class {class} · profile {profile} · {} configurations · budget {}",
            files.name(),
            space.size(),
            humantime::format_duration(*budget)
        );
        println!("{}", Row::header());
    }
    let show_progress = *output == OutputFormat::Table || std::io::stderr().is_terminal();
    let mut progress = |candidate: &Candidate| {
        if show_progress {
            let line = Row(candidate).to_string();
            if *output == OutputFormat::Table {
                println!("{line}");
            } else {
                eprintln!("{line}");
            }
            let _ = std::io::stdout().flush();
        }
    };
    let tensorrt_base = tensorrt_cache
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("policyserve-tensorrt"));
    let options = EngineOptions {
        gpu: GpuOptions::for_node(&hw, &tensorrt_base, ort.ort_lib.as_deref()),
        ..EngineOptions::default()
    };
    let tuning = crate::serve::with_loopback_server(|loopback| {
        if *exhaustive {
            let settings = MeasureSettings::for_budget(*budget);
            let ranking =
                tuner::exhaustive(&files, &targets, &space, &options, settings, &mut progress)?;
            tuner::sweep_best(&files, &targets, &options, ranking, *budget, loopback)
        } else {
            tuner::tune(
                &files,
                &targets,
                &space,
                &options,
                *budget,
                loopback,
                &mut progress,
            )
        }
        .map(|(tuning, _engine)| tuning)
    })?;
    let json = serde_json::to_string_pretty(&TuneOutput {
        model: model.display().to_string(),
        targets: &targets,
        hardware_class: class.to_string(),
        profile: profile.to_string(),
        search_space: &space,
        tuning: &tuning,
    })?;
    if let Some(path) = json_out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    match output {
        OutputFormat::Json => println!("{json}"),
        OutputFormat::Table => print_summary(&tuning),
    }
    Ok(())
}

fn targets(args: &TuneArgs) -> Targets {
    Targets {
        latency_p50_ms: args.p50_ms,
        latency_p95_ms: args.p95_ms,
        latency_p99_ms: args.p99_ms,
        throughput_rps: args.rps,
        memory_limit: args.memory.clone().map(Quantity),
    }
}

fn read_model(
    model: &std::path::Path,
    variants: &[(Precision, PathBuf)],
) -> anyhow::Result<ModelFiles> {
    let name = model
        .file_stem()
        .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    let variants: Vec<(Precision, &std::path::Path)> = variants
        .iter()
        .map(|(p, path)| (*p, path.as_path()))
        .collect();
    Ok(ModelFiles::read(name, model, &variants)?)
}

/// The hardware class, the profile and its search space on this machine.
fn plan(
    hw: &Hardware,
    selection: ProfileSelection,
    targets: &Targets,
    files: &ModelFiles,
) -> (
    policyserve_crds::HardwareClass,
    policyserve_crds::Profile,
    SearchSpace,
) {
    let class = hw.class();
    let profile = selection.resolve(class, targets);
    let usable_cpus = hw.usable_cpus().floor().max(1.0) as u32;
    let capacity = NodeCapacity {
        usable_cpus,
        physical_cores: hw.usable_physical_cores().clamp(1, usable_cpus),
        int8_acceleration: hw.int8_acceleration(),
        gpu_compute_capability: hw.gpu_compute_capability(),
        variants: files
            .precisions()
            .into_iter()
            .filter(|p| *p != Precision::Fp32)
            .collect(),
    };
    (class, profile, profile.search_space(&capacity))
}

/// One table row per candidate.
struct Row<'a>(&'a Candidate);

impl Row<'_> {
    fn header() -> String {
        format!(
            "{:<14} {:<5} {:>7} {:>5} {:>5} {:>7} {:>5} {:>9} {:>9} {:>9} {:>10} {:>8}  {}",
            "providers",
            "prec",
            "threads",
            "inst",
            "batch",
            "delayµs",
            "arena",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "rps",
            "MiB",
            "targets"
        )
    }
}

impl std::fmt::Display for Row<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Candidate {
            config,
            ranked: measured,
            failing,
            ..
        } = self.0;
        let providers: Vec<&str> = config
            .execution_providers
            .iter()
            .map(|p| p.as_str())
            .collect();
        write!(
            f,
            "{:<14} {:<5} {:>7} {:>5} {:>5} {:>7} {:>5} {:>9.3} {:>9.3} {:>9.3} {:>10.0} {:>8.1}  {}",
            providers.join(","),
            config.precision.as_str(),
            config.intra_op_threads,
            config.instances,
            config.max_batch_size,
            config.batch_delay_micros,
            if config.memory_arena { "on" } else { "off" },
            measured.latency_p50_ms,
            measured.latency_p95_ms,
            measured.latency_p99_ms,
            measured.throughput_rps,
            measured.memory_mib,
            if failing.is_empty() {
                "met".to_owned()
            } else {
                failing.join("; ")
            }
        )
    }
}

fn print_summary(tuning: &Tuning) {
    println!();
    println!(
        "ranked {} configurations in-process (ordering only); swept {} over gRPC:",
        tuning.candidates.len(),
        tuning.swept.len()
    );
    println!(
        "{:<14} {:<5} {:>7} {:>5} {:>5} {:>7} {:>5} {:>12} {:>9} {:>9} {:>8}",
        "providers",
        "prec",
        "threads",
        "inst",
        "batch",
        "delayµs",
        "arena",
        "capacity rps",
        "p50 ms",
        "p99 ms",
        "MiB"
    );
    for swept in &tuning.swept {
        let (c, cap) = (&swept.config, &swept.capacity);
        let providers: Vec<&str> = c.execution_providers.iter().map(|p| p.as_str()).collect();
        println!(
            "{:<14} {:<5} {:>7} {:>5} {:>5} {:>7} {:>5} {:>12.0} {:>9.3} {:>9.3} {:>8}",
            providers.join(","),
            c.precision.as_str(),
            c.intra_op_threads,
            c.instances,
            c.max_batch_size,
            c.batch_delay_micros,
            if c.memory_arena { "on" } else { "off" },
            cap.throughput_rps,
            cap.latency_p50_ms,
            cap.latency_p99_ms,
            cap.memory_mib
                .map_or_else(|| "unmeasured".to_owned(), |m| format!("{m:.1}"))
        );
    }
    println!("chosen: the first row; {}", tuning.chosen.capacity.method);
    for fallback in &tuning.chosen.fallbacks {
        println!("  fallback: {fallback}");
    }
    if tuning.targets_met {
        println!("all targets met");
    } else {
        println!("targets missed: {}", tuning.failing.join("; "));
    }
}
