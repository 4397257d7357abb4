//! The tuner: measures engine configurations on this machine and chooses the one with the
//! most throughput within the latency and memory targets (the seed's `auto_optimize`).
//!
//! The search is a coordinate hill-climb in the spirit of Triton Model Analyzer's quick
//! search: start from the smallest configuration, measure its neighbours along each axis
//! (one step up or down a list, every value of a short categorical list), move to the best,
//! and stop at a local optimum or when the time budget is spent. [`exhaustive`] measures every
//! configuration, as the reference the quick search is benchmarked against.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use policyserve_crds::{EngineConfig, ExecutionProvider, Measurement, SearchSpace, Targets};
use serde::Serialize;

use crate::engine::{Engine, EngineOptions, ModelFiles};
use crate::{Error, Result};

/// One measured configuration.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// The configuration in effect (after provider fallback).
    pub config: EngineConfig,
    /// What it achieved.
    pub measured: Measurement,
    /// Targets it misses, with the figures (`"latencyP99Ms 1.3 > 1.0"`).
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

/// How one configuration is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeasureSettings {
    /// How long the closed-loop load runs, after warm-up.
    pub window: Duration,
}

impl MeasureSettings {
    /// A window sized so that about a dozen candidates fit in `budget`.
    pub fn for_budget(budget: Duration) -> Self {
        Self {
            window: (budget / 12).clamp(Duration::from_millis(150), Duration::from_secs(2)),
        }
    }
}

/// The search result.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TuneReport {
    /// Every configuration measured, in order.
    pub candidates: Vec<Candidate>,
    /// The best: most throughput among those meeting the latency and memory targets, or the
    /// one closest to meeting them.
    pub chosen: Candidate,
    /// Whether the chosen configuration meets every target.
    pub targets_met: bool,
    /// What the chosen configuration misses.
    pub failing: Vec<String>,
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
    let mut search = Search::new(
        model,
        targets,
        space,
        options,
        MeasureSettings::for_budget(budget),
    )?;
    let deadline = Instant::now() + budget;
    let mut current = vec![0; AXES];
    let mut current_score = search.evaluate(&current, progress)?;
    loop {
        let mut best: Option<(Vec<usize>, Score)> = None;
        for neighbour in search.neighbours(&current) {
            if search.seen(&neighbour) {
                continue;
            }
            if Instant::now() >= deadline {
                break;
            }
            // A configuration that fails to load (a missing variant) is skipped, not fatal.
            let Ok(score) = search.evaluate(&neighbour, progress) else {
                continue;
            };
            if best.as_ref().is_none_or(|(_, s)| score > *s) {
                best = Some((neighbour, score));
            }
        }
        match best {
            Some((next, score)) if score > current_score => {
                current = next;
                current_score = score;
            }
            _ => break,
        }
    }
    Ok(search.report())
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
    let mut search = Search::new(model, targets, space, options, settings)?;
    let lengths = search.lengths;
    let mut index = vec![0; AXES];
    'all: loop {
        let _ = search.evaluate(&index, progress);
        for axis in (0..AXES).rev() {
            index[axis] += 1;
            if index[axis] < lengths[axis] {
                continue 'all;
            }
            index[axis] = 0;
        }
        break;
    }
    if search.measured.is_empty() {
        return Err(Error::Config(
            "no configuration of the search space loads".into(),
        ));
    }
    Ok(search.report())
}

/// Axes of the search space, in the order the index vectors use.
const AXES: usize = 8;

/// Feasible configurations rank by throughput; infeasible ones below all feasible ones, by how
/// far they miss (the sum of relative excesses).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
struct Score {
    feasible: bool,
    value: f64,
}

struct Search<'a> {
    model: &'a ModelFiles,
    targets: &'a Targets,
    space: &'a SearchSpace,
    options: &'a EngineOptions,
    settings: MeasureSettings,
    memory_limit_mib: Option<f64>,
    lengths: [usize; AXES],
    measured: BTreeMap<Vec<usize>, (Candidate, Score)>,
    order: Vec<Vec<usize>>,
}

impl<'a> Search<'a> {
    fn new(
        model: &'a ModelFiles,
        targets: &'a Targets,
        space: &'a SearchSpace,
        options: &'a EngineOptions,
        settings: MeasureSettings,
    ) -> Result<Self> {
        let lengths = [
            space.execution_providers.len(),
            space.precisions.len(),
            space.intra_op_threads.len(),
            space.instances.len(),
            space.max_batch_sizes.len(),
            space.batch_delays_micros.len(),
            space.memory_arena.len(),
            1,
        ];
        if lengths.contains(&0) {
            return Err(Error::Config(
                "every list of the search space needs a value".into(),
            ));
        }
        let memory_limit_mib = targets
            .memory_limit_mib()
            .map_err(|e| Error::Config(format!("memoryLimit: {e}")))?;
        Ok(Self {
            model,
            targets,
            space,
            options,
            settings,
            memory_limit_mib,
            lengths,
            measured: BTreeMap::new(),
            order: Vec::new(),
        })
    }

    fn config(&self, index: &[usize]) -> EngineConfig {
        EngineConfig {
            execution_providers: self.space.execution_providers[index[0]].clone(),
            precision: self.space.precisions[index[1]],
            intra_op_threads: self.space.intra_op_threads[index[2]],
            instances: self.space.instances[index[3]],
            max_batch_size: self.space.max_batch_sizes[index[4]],
            batch_delay_micros: self.space.batch_delays_micros[index[5]],
            memory_arena: self.space.memory_arena[index[6]],
            spinning: true,
        }
    }

    fn seen(&self, index: &[usize]) -> bool {
        self.measured.contains_key(index)
    }

    /// One step along each ordered axis; every value along the short categorical ones
    /// (providers, precision, arena), whose order says nothing about speed.
    fn neighbours(&self, index: &[usize]) -> Vec<Vec<usize>> {
        const CATEGORICAL: [usize; 3] = [0, 1, 6];
        let mut out = Vec::new();
        for axis in 0..AXES {
            let steps: Vec<usize> = if CATEGORICAL.contains(&axis) {
                (0..self.lengths[axis])
                    .filter(|v| *v != index[axis])
                    .collect()
            } else {
                [index[axis].checked_sub(1), Some(index[axis] + 1)]
                    .into_iter()
                    .flatten()
                    .filter(|v| *v < self.lengths[axis])
                    .collect()
            };
            for value in steps {
                let mut next = index.to_vec();
                next[axis] = value;
                out.push(next);
            }
        }
        out
    }

    fn evaluate(&mut self, index: &[usize], progress: Progress<'_>) -> Result<Score> {
        if let Some((_, score)) = self.measured.get(index) {
            return Ok(*score);
        }
        let config = self.config(index);
        reset_peak_rss();
        let engine = Engine::load(self.model, &config, self.options)?;
        engine.warm_up()?;
        let measured = measure(&engine, self.settings)?;
        let failing = failing(self.targets, self.memory_limit_mib, &measured);
        let score = score(self.targets, self.memory_limit_mib, &measured);
        let candidate = Candidate {
            config: engine.config().clone(),
            measured,
            failing,
            fallbacks: engine.fallbacks().to_vec(),
        };
        drop(engine);
        progress(&candidate);
        self.measured.insert(index.to_vec(), (candidate, score));
        self.order.push(index.to_vec());
        Ok(score)
    }

    fn report(self) -> TuneReport {
        let best = self
            .measured
            .values()
            .max_by(|(_, a), (_, b)| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal))
            .map(|(c, _)| c.clone());
        let candidates: Vec<Candidate> = self
            .order
            .iter()
            .filter_map(|i| self.measured.get(i))
            .map(|(c, _)| c.clone())
            .collect();
        #[allow(clippy::expect_used)]
        let chosen = best.expect("report follows at least one measured candidate");
        TuneReport {
            targets_met: chosen.meets_targets(),
            failing: chosen.failing.clone(),
            candidates,
            chosen,
        }
    }
}

/// The targets `measured` misses, as `"<field> <measured> > <target>"`.
pub fn failing(
    targets: &Targets,
    memory_limit_mib: Option<f64>,
    measured: &Measurement,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, limit) in targets.latency_limits() {
        let value = latency(measured, name);
        if value > limit {
            out.push(format!("{name} {value:.3} > {limit}"));
        }
    }
    if let Some(rps) = targets.throughput_rps
        && measured.throughput_rps < rps
    {
        out.push(format!(
            "throughputRps {:.0} < {rps}",
            measured.throughput_rps
        ));
    }
    if let Some(limit) = memory_limit_mib
        && measured.memory_mib > limit
    {
        out.push(format!("memoryMiB {:.1} > {limit:.1}", measured.memory_mib));
    }
    out
}

fn latency(measured: &Measurement, name: &str) -> f64 {
    match name {
        "latencyP50Ms" => measured.latency_p50_ms,
        "latencyP95Ms" => measured.latency_p95_ms,
        _ => measured.latency_p99_ms,
    }
}

/// Latency and memory are constraints; throughput is what is maximised (more nodes make up
/// for a per-node throughput shortfall, nothing makes up for a latency miss).
fn score(targets: &Targets, memory_limit_mib: Option<f64>, measured: &Measurement) -> Score {
    let mut excess = 0.0;
    for (name, limit) in targets.latency_limits() {
        excess += (latency(measured, name) / limit - 1.0).max(0.0);
    }
    if let Some(limit) = memory_limit_mib {
        excess += (measured.memory_mib / limit - 1.0).max(0.0);
    }
    if excess > 0.0 {
        Score {
            feasible: false,
            value: -excess,
        }
    } else {
        Score {
            feasible: true,
            value: measured.throughput_rps,
        }
    }
}

/// Closed-loop load through the batcher: `instances × maxBatchSize` clients (enough to fill
/// every batch), each sending one row and waiting for the answer, for the settings' window.
///
/// # Errors
/// When a request fails.
pub fn measure(engine: &Engine, settings: MeasureSettings) -> Result<Measurement> {
    let config = engine.config();
    let clients = (config.instances * config.max_batch_size).clamp(1, 256) as usize;
    let row = engine.signature().input.row_len();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| Error::Config(format!("failed to start the load generator: {e}")))?;
    let started = Instant::now();
    let stop_at = started + settings.window;
    let client = |client: usize| async move {
        let input: Vec<f32> = (0..row).map(|i| ((i + client) % 7) as f32 * 0.1).collect();
        let mut latencies = Vec::with_capacity(4096);
        while Instant::now() < stop_at {
            let sent = Instant::now();
            engine.infer(input.clone(), 1, None).await?;
            latencies.push(sent.elapsed());
        }
        Ok::<_, Error>(latencies)
    };
    let per_client = runtime.block_on(futures::future::try_join_all((0..clients).map(client)));
    let elapsed = started.elapsed();
    let mut latencies: Vec<Duration> = per_client?.into_iter().flatten().collect();
    latencies.sort_unstable();
    // Rounded to what the figures can resolve, so status and printer columns stay readable.
    Ok(Measurement {
        latency_p50_ms: round(percentile(&latencies, 0.50), 4),
        latency_p95_ms: round(percentile(&latencies, 0.95), 4),
        latency_p99_ms: round(percentile(&latencies, 0.99), 4),
        throughput_rps: round(latencies.len() as f64 / elapsed.as_secs_f64(), 0),
        memory_mib: round(peak_rss_mib().unwrap_or(0.0) + gpu_memory_mib(config), 1),
        measured_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        )),
    })
}

/// GPU memory this process holds when `config` runs on a GPU provider, else 0: Measurement's
/// memory is the resident set plus GPU memory where a GPU serves. No driver counts 0.
fn gpu_memory_mib(config: &EngineConfig) -> f64 {
    if serves_on_gpu(config) {
        crate::hardware::process_gpu_memory_mib().unwrap_or(0.0)
    } else {
        0.0
    }
}

/// Whether CUDA or TensorRT is among the providers in effect.
fn serves_on_gpu(config: &EngineConfig) -> bool {
    config
        .execution_providers
        .iter()
        .any(|p| matches!(p, ExecutionProvider::Cuda | ExecutionProvider::TensorRT))
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// The `q` quantile of sorted latencies, in milliseconds (nearest rank).
pub fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

/// Resets the kernel's peak-RSS mark (VmHWM) so the next reading covers one candidate.
/// Linux only; elsewhere the reading covers the whole process.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory since the last reset, MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;

    fn measured(p50: f64, p99: f64, rps: f64, mib: f64) -> Measurement {
        Measurement {
            latency_p50_ms: p50,
            latency_p95_ms: p99,
            latency_p99_ms: p99,
            throughput_rps: rps,
            memory_mib: mib,
            measured_at: None,
        }
    }

    fn targets() -> Targets {
        Targets {
            latency_p99_ms: Some(1.0),
            throughput_rps: Some(5000.0),
            memory_limit: Some(Quantity("512Mi".into())),
            ..Targets::default()
        }
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.50), 50.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&sorted[..1], 0.99), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn failing_names_each_missed_target_with_its_numbers() {
        let failing = failing(&targets(), Some(512.0), &measured(0.5, 1.3, 1200.0, 600.0));
        assert_eq!(
            failing,
            vec![
                "latencyP99Ms 1.300 > 1",
                "throughputRps 1200 < 5000",
                "memoryMiB 600.0 > 512.0"
            ]
        );
        assert!(
            super::failing(&targets(), Some(512.0), &measured(0.2, 0.9, 9000.0, 100.0)).is_empty()
        );
    }

    #[test]
    fn any_feasible_configuration_outranks_every_infeasible_one() {
        let t = targets();
        let slow_but_ok = score(&t, Some(512.0), &measured(0.5, 0.9, 100.0, 50.0));
        let fast_but_late = score(&t, Some(512.0), &measured(0.5, 1.1, 90_000.0, 50.0));
        let later = score(&t, Some(512.0), &measured(0.5, 3.0, 90_000.0, 50.0));
        let faster_ok = score(&t, Some(512.0), &measured(0.5, 0.9, 200.0, 50.0));
        assert!(slow_but_ok > fast_but_late);
        assert!(fast_but_late > later, "closer to the target ranks higher");
        assert!(faster_ok > slow_but_ok);
    }

    #[test]
    fn neighbours_step_along_ordered_axes_and_try_every_categorical_value() {
        let space = SearchSpace {
            execution_providers: vec![vec![policyserve_crds::ExecutionProvider::Cpu]],
            precisions: vec![
                policyserve_crds::Precision::Fp32,
                policyserve_crds::Precision::Int8,
            ],
            intra_op_threads: vec![1, 2, 4],
            instances: vec![1],
            max_batch_sizes: vec![1, 8, 32],
            batch_delays_micros: vec![0],
            memory_arena: vec![true],
        };
        let files = ModelFiles::new(
            "m",
            std::collections::BTreeMap::from([(
                policyserve_crds::Precision::Fp32,
                std::sync::Arc::from(vec![0u8]),
            )]),
        )
        .unwrap();
        let t = Targets::default();
        let options = EngineOptions::default();
        let search = Search::new(
            &files,
            &t,
            &space,
            &options,
            MeasureSettings::for_budget(Duration::from_secs(1)),
        )
        .unwrap();
        let neighbours = search.neighbours(&[0, 0, 1, 0, 0, 0, 0, 0]);
        assert!(
            neighbours.contains(&vec![0, 1, 1, 0, 0, 0, 0, 0]),
            "other precision"
        );
        assert!(
            neighbours.contains(&vec![0, 0, 0, 0, 0, 0, 0, 0]),
            "fewer threads"
        );
        assert!(
            neighbours.contains(&vec![0, 0, 2, 0, 0, 0, 0, 0]),
            "more threads"
        );
        assert!(
            neighbours.contains(&vec![0, 0, 1, 0, 1, 0, 0, 0]),
            "bigger batch"
        );
        assert_eq!(neighbours.len(), 4);
    }

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
        // A CPU configuration adds nothing, whatever the machine has.
        assert_eq!(gpu_memory_mib(&on(vec![ExecutionProvider::Cpu])), 0.0);
    }
}
