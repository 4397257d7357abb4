//! The tuner: measures engine configurations on this machine and chooses the one with the
//! most throughput within the latency and memory targets.
//!
//! Two measurements, never mixed: [`rank`] measures a configuration in-process (a closed loop
//! straight into the batcher: cheap, and used only to order candidates), and [`sweep`] measures
//! the capacity of the best few through the serving path (open-loop gRPC over loopback). Every
//! figure that reaches a status comes from the sweep. [`search`] walks the search space without
//! knowing how a point is measured; [`score`] orders measured points.

mod memory;
mod rank;
pub mod score;
pub mod search;
pub mod sweep;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use policyserve_crds::{
    Capacity, EngineConfig, ExecutionProvider, Measurement, SearchSpace, Targets, round,
};
use serde::Serialize;

pub use self::memory::{heap_in_use_bytes, peak_rss_mib};
pub use self::rank::{MeasureSettings, measure, percentile};
use self::score::{Score, score};
use self::sweep::{StepRecord, SweepResult, SweepSettings};
use crate::engine::{Engine, EngineOptions, ModelFiles};
use crate::registry::{ModelRegistry, ServedModel};
use crate::tls::ServerTls;
use crate::{Error, Result, load};

/// One configuration ranked in-process.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// The configuration in effect (after provider fallback).
    pub config: EngineConfig,
    /// The in-process figures that ordered it (not what a client gets: no gRPC, no pacing).
    pub ranked: Measurement,
    /// Targets it misses, with the figures (`"latencyP99Ms 1.300 > 1"`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<String>,
    /// Why requested providers or precisions were not in effect.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
}

impl Candidate {
    /// Whether every target is met.
    pub fn meets_targets(&self) -> bool {
        self.failing.is_empty()
    }
}

/// The ranking's result.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TuneReport {
    /// Every configuration measured, in order.
    pub candidates: Vec<Candidate>,
    /// The best: most throughput among those meeting the latency and memory targets, or the
    /// one closest to meeting them.
    pub chosen: Candidate,
    /// Whether the chosen configuration meets every target, in-process.
    pub targets_met: bool,
    /// What the chosen configuration misses, in-process.
    pub failing: Vec<String>,
}

impl TuneReport {
    /// The `n` best distinct configurations, best first.
    fn best(&self, n: usize, targets: &Targets) -> Vec<&Candidate> {
        let mut ranked: Vec<(&Candidate, Score)> = self
            .candidates
            .iter()
            .map(|c| (c, score(targets, &c.ranked)))
            .collect();
        ranked.sort_by(|(_, a), (_, b)| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
        let mut best: Vec<&Candidate> = Vec::new();
        for (candidate, _) in ranked {
            if best.len() < n && !best.iter().any(|b| b.config == candidate.config) {
                best.push(candidate);
            }
        }
        best
    }
}

/// A configuration whose capacity was swept.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Swept {
    /// The configuration in effect.
    pub config: EngineConfig,
    /// Its capacity at the targets.
    pub capacity: Capacity,
    /// Why requested providers or precisions were not in effect.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    /// The sweep's steps.
    pub steps: Vec<StepRecord>,
}

impl Swept {
    /// Why no rate held, when none did: the lowest rate tried and its failure (a capacity of 0
    /// says nothing a person can act on without it).
    pub fn why_no_capacity(&self) -> Option<String> {
        if self.capacity.throughput_rps > 0.0 {
            return None;
        }
        let lowest = self
            .steps
            .iter()
            .filter(|s| !s.passed)
            .min_by(|a, b| a.rate_rps.total_cmp(&b.rate_rps))?;
        Some(format!(
            "no rate held twice; at {} rps {}",
            lowest.rate_rps,
            lowest.failure.as_deref().unwrap_or("the step failed")
        ))
    }
}

/// What tuning found: the ranking, the sweeps, and the configuration chosen from them.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tuning {
    /// Every configuration ranked in-process, in order.
    pub candidates: Vec<Candidate>,
    /// The best-ranked few, swept over gRPC.
    pub swept: Vec<Swept>,
    /// The swept configuration with the most capacity at the targets.
    pub chosen: Swept,
    /// Whether its capacity meets every target.
    pub targets_met: bool,
    /// What its capacity misses (`"latencyP99Ms 1.300 > 1"`).
    pub failing: Vec<String>,
}

/// Where sweeps send their load: a gRPC server on this machine serving from `registry`.
#[derive(Clone, Copy, Debug)]
pub struct Loopback<'a> {
    /// The registry the server answers from; sweeps add their engines as probes.
    pub registry: &'a ModelRegistry,
    /// The server's address (its own address: the load generator runs beside it).
    pub address: SocketAddr,
    /// The TLS the server speaks, if any; sweeps connect as [`ServerTls::loopback_client`].
    pub tls: Option<&'a ServerTls>,
}

/// Share of the tuning budget spent ranking in-process; the rest sweeps.
const RANKING_SHARE: f64 = 0.35;

/// Ranks the search space in-process, sweeps the best one (two with a budget of 20 s or more)
/// through `loopback`, and returns what it found with the chosen configuration's engine, loaded
/// and warm, ready to serve.
///
/// # Errors
/// When no configuration loads, or no sweep can run (the load generator cannot connect).
pub fn tune(
    model: &ModelFiles,
    targets: &Targets,
    space: &SearchSpace,
    options: &EngineOptions,
    budget: Duration,
    loopback: Loopback<'_>,
    progress: Progress<'_>,
) -> Result<(Tuning, Engine)> {
    let ranking = quick_search(
        model,
        targets,
        space,
        options,
        budget.mul_f64(RANKING_SHARE),
        progress,
    )?;
    sweep_best(
        model,
        targets,
        options,
        ranking,
        budget.mul_f64(1.0 - RANKING_SHARE),
        loopback,
    )
}

/// Sweeps the best of `ranking` (two when `budget` is 13 s or more, one otherwise) and
/// chooses the one with the most capacity.
///
/// # Errors
/// When a sweep cannot run.
pub fn sweep_best(
    model: &ModelFiles,
    targets: &Targets,
    options: &EngineOptions,
    ranking: TuneReport,
    budget: Duration,
    loopback: Loopback<'_>,
) -> Result<(Tuning, Engine)> {
    let count: u32 = if budget >= Duration::from_secs(13) {
        2
    } else {
        1
    };
    let mut swept: Vec<(Swept, Engine)> = Vec::new();
    for candidate in ranking.best(count as usize, targets) {
        let settings = SweepSettings::for_budget(budget / count, candidate.ranked.throughput_rps);
        swept.push(sweep_config(
            model,
            &candidate.config,
            options,
            targets,
            loopback,
            &settings,
        )?);
    }
    // The most capacity; among equals (say every one 0), the better ranked.
    let best = swept
        .iter()
        .enumerate()
        .max_by(|(i, a), (j, b)| {
            a.0.capacity
                .throughput_rps
                .total_cmp(&b.0.capacity.throughput_rps)
                .then(j.cmp(i))
        })
        .map(|(i, _)| i)
        .ok_or_else(|| Error::Config("nothing to sweep".into()))?;
    let (chosen, engine) = swept.swap_remove(best);
    let failing = failing(targets, &chosen.capacity);
    let mut all: Vec<Swept> = swept.into_iter().map(|(s, _)| s).collect();
    all.insert(0, chosen.clone());
    Ok((
        Tuning {
            candidates: ranking.candidates,
            swept: all,
            targets_met: failing.is_empty(),
            failing,
            chosen,
        },
        engine,
    ))
}

/// Loads `config`, sweeps it as a probe of `loopback`, and returns its figures and engine.
fn sweep_config(
    model: &ModelFiles,
    config: &EngineConfig,
    options: &EngineOptions,
    targets: &Targets,
    loopback: Loopback<'_>,
    settings: &SweepSettings,
) -> Result<(Swept, Engine)> {
    let before = heap_in_use_bytes();
    let engine = Engine::load(model, config, options)?;
    engine.warm_up()?;
    let (input, row_len) = {
        let input = &engine.signature().input;
        (input.name.clone(), input.row_len())
    };
    let probe = format!("{}#probe", model.name());
    let fallbacks = engine.fallbacks().to_vec();
    let effective = engine.config().clone();
    loopback
        .registry
        .insert_probe(ServedModel::new(&probe, engine, 1));
    let result = capacity_sweep(
        loopback.address,
        loopback.tls,
        &probe,
        &input,
        row_len,
        targets,
        settings,
        &|| false,
    );
    let after = heap_in_use_bytes();
    let engine = take_probe(loopback.registry, &probe)?;
    let result = result?;
    let mut capacity = result.capacity.unwrap_or_default();
    let heap_mib = before
        .zip(after)
        .map(|(before, after)| after.saturating_sub(before) as f64 / (1024.0 * 1024.0));
    capacity.memory_mib = heap_mib
        .zip(gpu_memory_mib(&effective))
        .map(|(heap, gpu)| round(heap + gpu, 1));
    capacity.measured_at = Some(Time(jiff::Timestamp::now()));
    capacity.method = method(settings);
    Ok((
        Swept {
            config: effective,
            capacity,
            fallbacks,
            steps: result.steps,
        },
        engine,
    ))
}

/// Runs a capacity sweep against `model` at `address` (over `tls` when the server speaks it)
/// with probe requests; `stop` ends it early (a periodic probe stops at the first real
/// request).
///
/// # Errors
/// When the load generator cannot start or connect.
#[allow(clippy::too_many_arguments)]
pub fn capacity_sweep(
    address: SocketAddr,
    tls: Option<&ServerTls>,
    model: &str,
    input: &str,
    row_len: usize,
    targets: &Targets,
    settings: &SweepSettings,
    stop: &dyn Fn() -> bool,
) -> Result<SweepResult> {
    let runtime = load::client_runtime()?;
    let tls = tls.map(ServerTls::loopback_client).transpose()?;
    let target = runtime.block_on(load::Target::connect(
        address, tls, 4, model, input, row_len, true,
    ))?;
    Ok(sweep::sweep(settings, targets, |rate, duration| {
        let plan = load::Plan {
            rate,
            duration,
            max_in_flight: 4096,
        };
        let outcome = load::run(runtime.handle(), &target, &plan, stop);
        (!outcome.stopped).then_some(outcome)
    }))
}

/// How the capacity was measured, for `capacity.method`.
pub fn method(settings: &SweepSettings) -> String {
    format!(
        "open loop over loopback gRPC through this agent's server, load generator on the node's \
         own CPUs (it competes with the server as a client there would); up to {} rate steps of \
         {:.2} s from {:.0} rps, then a confirming run of {:.2} s: the highest rate that held \
         every latency target in both, with the worse figures of the two. Two samples, not a \
         bound: on a busy node a client's own run can see a longer tail",
        settings.steps,
        settings.step.as_secs_f64(),
        settings.start_rps,
        (settings.step * sweep::CONFIRM_STEPS).as_secs_f64()
    )
}

/// The engine of probe `name`, once the server has let go of it.
fn take_probe(registry: &ModelRegistry, name: &str) -> Result<Engine> {
    let mut probe = registry
        .remove_probe(name)
        .ok_or_else(|| Error::Probe(format!("{name} vanished from the registry")))?;
    // A request the server is still finishing holds a reference for a moment.
    for _ in 0..200 {
        match Arc::try_unwrap(probe) {
            Ok(model) => return Ok(model.engine),
            Err(shared) => probe = shared,
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(Error::Probe(format!("{name} is still in use")))
}

/// GPU memory this process holds when `config` runs on a GPU provider (`None` when the
/// driver cannot say, which leaves the whole figure unmeasured); 0 for a CPU configuration.
fn gpu_memory_mib(config: &EngineConfig) -> Option<f64> {
    if serves_on_gpu(config) {
        crate::hardware::process_gpu_memory_mib()
    } else {
        Some(0.0)
    }
}

/// Whether CUDA or TensorRT is among the providers in effect.
fn serves_on_gpu(config: &EngineConfig) -> bool {
    config
        .execution_providers
        .iter()
        .any(|p| matches!(p, ExecutionProvider::Cuda | ExecutionProvider::TensorRT))
}

/// What the caller sees as the search goes, for a progress display.
pub type Progress<'a> = &'a mut dyn FnMut(&Candidate);

/// Quick search within `budget`.
///
/// # Errors
/// When not a single configuration loads (a broken model fails the first one).
pub fn quick_search(
    model: &ModelFiles,
    targets: &Targets,
    space: &SearchSpace,
    options: &EngineOptions,
    budget: Duration,
    progress: Progress<'_>,
) -> Result<TuneReport> {
    let mut bench = Bench::new(model, targets, options, MeasureSettings::for_budget(budget));
    search::hill_climb(space, Instant::now() + budget, |config| {
        bench.measure(config, progress)
    })?;
    Ok(bench.report())
}

/// Measures every configuration of `space` (the reference for the quick search).
///
/// # Errors
/// When no configuration loads.
pub fn exhaustive(
    model: &ModelFiles,
    targets: &Targets,
    space: &SearchSpace,
    options: &EngineOptions,
    settings: MeasureSettings,
    progress: Progress<'_>,
) -> Result<TuneReport> {
    let mut bench = Bench::new(model, targets, options, settings);
    search::every(space, |config| bench.measure(config, progress))?;
    Ok(bench.report())
}

/// The targets `figures` miss, as `"<field> <figure> > <target>"`.
pub fn failing(targets: &Targets, figures: &impl policyserve_crds::Figures) -> Vec<String> {
    targets
        .misses(figures)
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Loads and measures configurations of one model, keeping every candidate.
struct Bench<'a> {
    model: &'a ModelFiles,
    targets: &'a Targets,
    options: &'a EngineOptions,
    settings: MeasureSettings,
    measured: Vec<(Candidate, Score)>,
}

impl<'a> Bench<'a> {
    fn new(
        model: &'a ModelFiles,
        targets: &'a Targets,
        options: &'a EngineOptions,
        settings: MeasureSettings,
    ) -> Self {
        Self {
            model,
            targets,
            options,
            settings,
            measured: Vec::new(),
        }
    }

    fn measure(&mut self, config: &EngineConfig, progress: Progress<'_>) -> Result<Score> {
        memory::reset_peak_rss();
        let engine = Engine::load(self.model, config, self.options)?;
        engine.warm_up()?;
        let measured = measure(&engine, self.settings)?;
        let score = score(self.targets, &measured);
        let candidate = Candidate {
            config: engine.config().clone(),
            failing: failing(self.targets, &measured),
            ranked: measured,
            fallbacks: engine.fallbacks().to_vec(),
        };
        drop(engine);
        progress(&candidate);
        self.measured.push((candidate, score));
        Ok(score)
    }

    fn report(self) -> TuneReport {
        let chosen = self
            .measured
            .iter()
            .max_by(|(_, a), (_, b)| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal))
            .map(|(c, _)| c.clone());
        let candidates: Vec<Candidate> = self.measured.into_iter().map(|(c, _)| c).collect();
        #[allow(clippy::expect_used)]
        let chosen = chosen.expect("a search returns only after measuring its first point");
        TuneReport {
            targets_met: chosen.meets_targets(),
            failing: chosen.failing.clone(),
            candidates,
            chosen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_memory_counts_only_where_a_gpu_provider_is_in_effect() {
        let on = |providers: Vec<ExecutionProvider>| EngineConfig {
            execution_providers: providers,
            ..EngineConfig::default()
        };
        assert!(!serves_on_gpu(&on(vec![ExecutionProvider::Cpu])));
        assert!(serves_on_gpu(&on(vec![
            ExecutionProvider::Cuda,
            ExecutionProvider::Cpu
        ])));
        assert!(serves_on_gpu(&on(vec![
            ExecutionProvider::TensorRT,
            ExecutionProvider::Cpu
        ])));
        assert_eq!(gpu_memory_mib(&on(vec![ExecutionProvider::Cpu])), Some(0.0));
    }
}
