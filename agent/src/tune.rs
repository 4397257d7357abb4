//! `policyserve-agent tune`: measure a model on this machine and choose its configuration.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use policyserve_crds::{NodeCapacity, Precision, ProfileSelection, SearchSpace, Targets};
use serde::Serialize;

use crate::args::{HardwareArgs, OrtArgs, OutputFormat};
use crate::engine::{EngineOptions, GpuOptions, ModelFiles, runtime};
use crate::hardware::Hardware;
use crate::tuner::{self, Candidate, MeasureSettings, Tuning};

/// Arguments of `tune`.
#[derive(Debug, clap::Args)]
pub struct TuneArgs {
    /// The fp32 ONNX model.
    #[arg(long)]
    pub model: PathBuf,
    /// A precision variant of the same model, as PRECISION=FILE (for example int8=model.int8.onnx).
    #[arg(long = "variant", value_parser = parse_variant)]
    pub variants: Vec<(Precision, PathBuf)>,
    /// Median latency target, milliseconds.
    #[arg(long = "p50-ms")]
    pub p50_ms: Option<f64>,
    /// 95th percentile latency target, milliseconds.
    #[arg(long = "p95-ms")]
    pub p95_ms: Option<f64>,
    /// 99th percentile latency target, milliseconds.
    #[arg(long = "p99-ms")]
    pub p99_ms: Option<f64>,
    /// Throughput target for this machine, requests per second.
    #[arg(long)]
    pub rps: Option<f64>,
    /// Memory limit, as a Kubernetes quantity (512Mi).
    #[arg(long)]
    pub memory: Option<String>,
    /// Time the search may take (30s, 2m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub budget: Duration,
    /// Profile: Auto picks one from the hardware class and the memory target.
    #[arg(long, default_value = "Auto", value_parser = parse_profile)]
    pub profile: ProfileSelection,
    /// Measure every configuration instead of searching (slow; the benchmark's reference).
    #[arg(long)]
    pub exhaustive: bool,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Also write the JSON object of `--output json` to this file (a table for people on
    /// stdout and the figures for programs from one run).
    #[arg(long = "json-out")]
    pub json_out: Option<PathBuf>,
    /// ONNX Runtime library.
    #[command(flatten)]
    pub ort: OrtArgs,
    /// Hardware source.
    #[command(flatten)]
    pub hardware: HardwareArgs,
    /// Base folder of TensorRT engine caches (default: policyserve-tensorrt in the temporary
    /// folder); each GPU model, driver, ONNX Runtime and TensorRT version gets its own.
    #[arg(long = "tensorrt-cache", env = "POLICYSERVE_TENSORRT_CACHE")]
    pub tensorrt_cache: Option<PathBuf>,
}

fn parse_variant(text: &str) -> Result<(Precision, PathBuf), String> {
    let (precision, path) = text
        .split_once('=')
        .ok_or("expected PRECISION=FILE, e.g. int8=model.int8.onnx")?;
    let precision = serde_json::from_value(serde_json::Value::String(precision.to_lowercase()))
        .map_err(|_| format!("unknown precision {precision:?}; use fp16 or int8"))?;
    Ok((precision, PathBuf::from(path)))
}

fn parse_profile(text: &str) -> Result<ProfileSelection, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|_| {
        format!("unknown profile {text:?}; use Auto, GPUAccelerated, HighPerformanceCPU, MemoryConstrained or Balanced")
    })
}

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
    let hw = crate::hardware::load(hardware)?;
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
