//! The search over a [`SearchSpace`], independent of how a configuration is measured: a
//! coordinate hill-climb in the spirit of Triton Model Analyzer's quick search, and the
//! exhaustive walk it is benchmarked against. Both take the measuring function as an argument,
//! so they are tested without ONNX Runtime.

use std::collections::BTreeMap;
use std::time::Instant;

use policyserve_crds::{EngineConfig, SearchSpace};

use super::score::Score;
use crate::Result;

/// One axis of the search space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// Execution-provider lists.
    Providers,
    /// Model precisions.
    Precision,
    /// Intra-op thread counts.
    Threads,
    /// Model instances.
    Instances,
    /// Largest batch.
    MaxBatch,
    /// Batcher delay.
    BatchDelay,
    /// CPU memory arena on or off.
    Arena,
}

impl Axis {
    /// Every axis, in the order a [`Point`] lists them.
    pub const ALL: [Self; 7] = [
        Self::Providers,
        Self::Precision,
        Self::Threads,
        Self::Instances,
        Self::MaxBatch,
        Self::BatchDelay,
        Self::Arena,
    ];

    /// Whether the order of the axis's values says nothing about speed (every value is a
    /// neighbour), as opposed to a ladder where only the next step up or down is.
    fn categorical(self) -> bool {
        matches!(self, Self::Providers | Self::Precision | Self::Arena)
    }

    /// How many values `space` lists on this axis.
    fn len(self, space: &SearchSpace) -> usize {
        match self {
            Self::Providers => space.execution_providers.len(),
            Self::Precision => space.precisions.len(),
            Self::Threads => space.intra_op_threads.len(),
            Self::Instances => space.instances.len(),
            Self::MaxBatch => space.max_batch_sizes.len(),
            Self::BatchDelay => space.batch_delays_micros.len(),
            Self::Arena => space.memory_arena.len(),
        }
    }
}

/// A configuration of the space: the index of its value on each axis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Point([usize; Axis::ALL.len()]);

impl Point {
    /// The index on `axis`.
    pub fn get(self, axis: Axis) -> usize {
        self.0[axis as usize]
    }

    /// This point with `axis` at `index`.
    pub fn with(mut self, axis: Axis, index: usize) -> Self {
        self.0[axis as usize] = index;
        self
    }

    /// The configuration at this point of `space`.
    pub fn config(self, space: &SearchSpace) -> EngineConfig {
        EngineConfig {
            execution_providers: space.execution_providers[self.get(Axis::Providers)].clone(),
            precision: space.precisions[self.get(Axis::Precision)],
            intra_op_threads: space.intra_op_threads[self.get(Axis::Threads)],
            instances: space.instances[self.get(Axis::Instances)],
            max_batch_size: space.max_batch_sizes[self.get(Axis::MaxBatch)],
            batch_delay_micros: space.batch_delays_micros[self.get(Axis::BatchDelay)],
            memory_arena: space.memory_arena[self.get(Axis::Arena)],
            spinning: true,
        }
    }

    /// One step along each ladder axis; every other value along the categorical ones.
    pub fn neighbours(self, space: &SearchSpace) -> Vec<Self> {
        let mut out = Vec::new();
        for axis in Axis::ALL {
            let (here, len) = (self.get(axis), axis.len(space));
            let values: Vec<usize> = if axis.categorical() {
                (0..len).filter(|v| *v != here).collect()
            } else {
                [here.checked_sub(1), Some(here + 1)]
                    .into_iter()
                    .flatten()
                    .filter(|v| *v < len)
                    .collect()
            };
            out.extend(values.into_iter().map(|v| self.with(axis, v)));
        }
        out
    }

    /// Every point of `space`, the last axis fastest.
    pub fn all(space: &SearchSpace) -> Vec<Self> {
        let mut points = vec![Self::default()];
        for axis in Axis::ALL {
            points = points
                .into_iter()
                .flat_map(|p| (0..axis.len(space)).map(move |v| p.with(axis, v)))
                .collect();
        }
        points
    }
}

/// Checks that every axis of `space` has a value.
///
/// # Errors
/// [`crate::Error::Config`] naming the first empty axis.
pub fn check(space: &SearchSpace) -> Result<()> {
    match Axis::ALL.into_iter().find(|axis| axis.len(space) == 0) {
        Some(axis) => Err(crate::Error::Config(format!(
            "the search space lists no value for {axis:?}"
        ))),
        None => Ok(()),
    }
}

/// Hill-climbs from the smallest configuration: measure the current point's neighbours, move
/// to the best if it beats the current one, stop at a local optimum or at `deadline`. Returns
/// every point measured with its score, in order.
///
/// # Errors
/// When the starting point cannot be measured (a broken model fails there); a neighbour that
/// fails (a missing variant) is skipped.
pub fn hill_climb(
    space: &SearchSpace,
    deadline: Instant,
    mut measure: impl FnMut(&EngineConfig) -> Result<Score>,
) -> Result<Vec<(Point, Score)>> {
    check(space)?;
    let mut seen: BTreeMap<Point, Option<Score>> = BTreeMap::new();
    let mut order = Vec::new();
    let mut current = Point::default();
    let mut current_score = measure(&current.config(space))?;
    seen.insert(current, Some(current_score));
    order.push((current, current_score));
    loop {
        let mut best: Option<(Point, Score)> = None;
        for neighbour in current.neighbours(space) {
            if seen.contains_key(&neighbour) {
                continue;
            }
            if Instant::now() >= deadline {
                break;
            }
            let score = measure(&neighbour.config(space)).ok();
            seen.insert(neighbour, score);
            let Some(score) = score else { continue };
            order.push((neighbour, score));
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((neighbour, score));
            }
        }
        match best {
            Some((next, score)) if score > current_score => {
                current = next;
                current_score = score;
            }
            _ => return Ok(order),
        }
    }
}

/// Measures every point of `space`; points that fail to measure are left out.
///
/// # Errors
/// When the space has an empty axis, or no point measures.
pub fn every(
    space: &SearchSpace,
    mut measure: impl FnMut(&EngineConfig) -> Result<Score>,
) -> Result<Vec<(Point, Score)>> {
    check(space)?;
    let measured: Vec<(Point, Score)> = Point::all(space)
        .into_iter()
        .filter_map(|p| measure(&p.config(space)).ok().map(|s| (p, s)))
        .collect();
    if measured.is_empty() {
        return Err(crate::Error::Config(
            "no configuration of the search space loads".into(),
        ));
    }
    Ok(measured)
}

#[cfg(test)]
mod tests {
    use policyserve_crds::{ExecutionProvider, Precision};

    use super::*;

    fn space() -> SearchSpace {
        SearchSpace {
            execution_providers: vec![vec![ExecutionProvider::Cpu]],
            precisions: vec![Precision::Fp32, Precision::Int8],
            intra_op_threads: vec![1, 2, 4],
            instances: vec![1],
            max_batch_sizes: vec![1, 8, 32],
            batch_delays_micros: vec![0],
            memory_arena: vec![true],
        }
    }

    fn feasible(value: f64) -> Score {
        Score {
            feasible: true,
            value,
        }
    }

    #[test]
    fn neighbours_step_along_ladders_and_try_every_categorical_value() {
        let here = Point::default().with(Axis::Threads, 1);
        let neighbours = here.neighbours(&space());
        assert!(
            neighbours.contains(&here.with(Axis::Precision, 1)),
            "other precision"
        );
        assert!(
            neighbours.contains(&here.with(Axis::Threads, 0)),
            "fewer threads"
        );
        assert!(
            neighbours.contains(&here.with(Axis::Threads, 2)),
            "more threads"
        );
        assert!(
            neighbours.contains(&here.with(Axis::MaxBatch, 1)),
            "bigger batch"
        );
        assert_eq!(neighbours.len(), 4);
    }

    #[test]
    fn the_climb_follows_the_best_neighbour_to_a_local_optimum() {
        // Throughput grows with threads and batch, int8 is best: the climb must end at
        // int8, 4 threads, batch 32 without measuring the whole space (18 points).
        let mut measured = Vec::new();
        let order = hill_climb(
            &space(),
            Instant::now() + std::time::Duration::from_secs(60),
            |c| {
                measured.push(c.clone());
                let int8 = if c.precision == Precision::Int8 {
                    2.0
                } else {
                    1.0
                };
                Ok(feasible(
                    int8 * f64::from(c.intra_op_threads) * f64::from(c.max_batch_size),
                ))
            },
        )
        .unwrap();
        let (best, _) = order
            .iter()
            .max_by(|a, b| a.1.partial_cmp(&b.1).unwrap())
            .unwrap();
        let config = best.config(&space());
        assert_eq!(
            (
                config.precision,
                config.intra_op_threads,
                config.max_batch_size
            ),
            (Precision::Int8, 4, 32)
        );
        assert!(measured.len() < 18, "measured {}", measured.len());
        let unique: std::collections::BTreeSet<String> =
            measured.iter().map(|c| format!("{c:?}")).collect();
        assert_eq!(unique.len(), measured.len(), "no point measured twice");
    }

    #[test]
    fn a_feasible_point_beats_a_faster_infeasible_one() {
        let order = hill_climb(
            &space(),
            Instant::now() + std::time::Duration::from_secs(60),
            |c| {
                Ok(if c.max_batch_size > 8 {
                    Score {
                        feasible: false,
                        value: -0.1,
                    }
                } else {
                    feasible(f64::from(c.max_batch_size))
                })
            },
        )
        .unwrap();
        let best = order
            .iter()
            .map(|(_, s)| *s)
            .fold(None, |b: Option<Score>, s| {
                Some(b.map_or(s, |b| if s > b { s } else { b }))
            });
        assert_eq!(best, Some(feasible(8.0)));
    }

    #[test]
    fn a_failing_start_is_an_error_and_failing_neighbours_are_skipped() {
        let broken = hill_climb(
            &space(),
            Instant::now() + std::time::Duration::from_secs(60),
            |_| Err(crate::Error::Config("broken".into())),
        );
        assert!(broken.is_err());
        let order = hill_climb(
            &space(),
            Instant::now() + std::time::Duration::from_secs(60),
            |c| {
                if c.precision == Precision::Int8 {
                    Err(crate::Error::Config("no int8 file".into()))
                } else {
                    Ok(feasible(f64::from(c.intra_op_threads)))
                }
            },
        )
        .unwrap();
        assert!(order.iter().all(|(p, _)| p.get(Axis::Precision) == 0));
    }

    #[test]
    fn the_deadline_stops_the_climb() {
        let mut calls = 0;
        let order = hill_climb(&space(), Instant::now(), |_| {
            calls += 1;
            Ok(feasible(1.0))
        })
        .unwrap();
        assert_eq!((calls, order.len()), (1, 1));
    }

    #[test]
    fn every_point_is_visited_once_by_the_exhaustive_walk() {
        let mut calls = 0;
        let measured = every(&space(), |_| {
            calls += 1;
            Ok(feasible(1.0))
        })
        .unwrap();
        assert_eq!((calls, measured.len()), (18, 18));
        let mut empty = space();
        empty.instances.clear();
        assert!(every(&empty, |_| Ok(feasible(1.0))).is_err());
    }
}
