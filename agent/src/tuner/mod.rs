//! The tuner: measures engine configurations on this machine and chooses the one with the
//! most throughput within the latency and memory targets.
//!
//! Three parts: [`search`] walks the search space (a hill-climb, or every point as the
//! reference) and knows nothing of ONNX Runtime; [`score`] orders measured candidates;
//! [`rank`] measures one configuration in-process.

mod memory;
mod rank;
pub mod score;
pub mod search;

use std::time::{Duration, Instant};

use policyserve_crds::{EngineConfig, Measurement, SearchSpace, Targets};
use serde::Serialize;

pub use self::memory::peak_rss_mib;
pub use self::rank::{MeasureSettings, measure, percentile};
use self::score::{Score, score};
use crate::Result;
use crate::engine::{Engine, EngineOptions, ModelFiles};

/// One measured configuration.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// The configuration in effect (after provider fallback).
    pub config: EngineConfig,
    /// What it achieved.
    pub measured: Measurement,
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

/// The targets `measured` misses, as `"<field> <measured> > <target>"`.
pub fn failing(targets: &Targets, measured: &Measurement) -> Vec<String> {
    targets
        .misses(measured)
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
            measured,
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
