//! Judging figures against targets, once for every kind of figure: the tuner's in-process
//! ranking, the capacity sweep and the served window all answer the same [`Figures`] questions,
//! and [`Targets::misses`] is the one place that compares them with what the user asked.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Targets;

/// A latency quantile that targets and figures both name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Quantile {
    /// The median.
    P50,
    /// The 95th percentile.
    P95,
    /// The 99th percentile.
    P99,
}

impl Quantile {
    /// Every quantile, lowest first.
    pub const ALL: [Self; 3] = [Self::P50, Self::P95, Self::P99];

    /// The target's field name (`latencyP99Ms`).
    pub fn target_field(self) -> &'static str {
        match self {
            Self::P50 => "latencyP50Ms",
            Self::P95 => "latencyP95Ms",
            Self::P99 => "latencyP99Ms",
        }
    }

    /// The quantile as a fraction (0.99).
    pub fn fraction(self) -> f64 {
        match self {
            Self::P50 => 0.50,
            Self::P95 => 0.95,
            Self::P99 => 0.99,
        }
    }
}

impl std::fmt::Display for Quantile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.target_field())
    }
}

/// What a set of figures says about the targets' quantities; `None` where it says nothing
/// (unmeasured memory, no requests in a window), which is never judged as met.
pub trait Figures {
    /// The latency at `quantile`, milliseconds.
    fn latency_ms(&self, quantile: Quantile) -> Option<f64>;
    /// Requests per second.
    fn throughput_rps(&self) -> Option<f64> {
        None
    }
    /// Memory, MiB.
    fn memory_mib(&self) -> Option<f64> {
        None
    }
}

/// One kind of target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A latency quantile.
    Latency(Quantile),
    /// Requests per second.
    Throughput,
    /// Memory per node.
    Memory,
}

impl Target {
    /// The spec field the target is set in.
    pub fn field(self) -> &'static str {
        match self {
            Self::Latency(quantile) => quantile.target_field(),
            Self::Throughput => "throughputRps",
            Self::Memory => "memoryLimit",
        }
    }
}

/// A target the figures miss, with both numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Miss {
    /// Which target.
    pub target: Target,
    /// The figure.
    pub value: f64,
    /// The target (MiB for memory).
    pub limit: f64,
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            target,
            value,
            limit,
        } = *self;
        match target {
            Target::Latency(q) => write!(f, "{q} {value:.3} > {limit}"),
            Target::Throughput => write!(f, "throughputRps {value:.0} < {limit}"),
            Target::Memory => write!(f, "memoryMiB {value:.1} > {limit:.1}"),
        }
    }
}

impl Targets {
    /// The latency target at `quantile`, milliseconds.
    pub fn latency_ms(&self, quantile: Quantile) -> Option<f64> {
        match quantile {
            Quantile::P50 => self.latency_p50_ms,
            Quantile::P95 => self.latency_p95_ms,
            Quantile::P99 => self.latency_p99_ms,
        }
    }

    /// The latency targets that are set, lowest quantile first.
    pub fn latency_limits(&self) -> impl Iterator<Item = (Quantile, f64)> + '_ {
        Quantile::ALL
            .into_iter()
            .filter_map(|q| self.latency_ms(q).map(|ms| (q, ms)))
    }

    /// Every target that is set, with its limit (MiB for memory; an unparsable memory limit,
    /// which validation refuses, is left out).
    pub fn limits(&self) -> Vec<(Target, f64)> {
        let mut limits: Vec<(Target, f64)> = self
            .latency_limits()
            .map(|(q, ms)| (Target::Latency(q), ms))
            .collect();
        if let Some(rps) = self.throughput_rps {
            limits.push((Target::Throughput, rps));
        }
        if let Ok(Some(mib)) = self.memory_limit_mib() {
            limits.push((Target::Memory, mib));
        }
        limits
    }

    /// The latency targets `figures` miss.
    pub fn latency_misses(&self, figures: &(impl Figures + ?Sized)) -> Vec<Miss> {
        self.misses(figures)
            .into_iter()
            .filter(|miss| matches!(miss.target, Target::Latency(_)))
            .collect()
    }

    /// The targets `figures` miss. A target whose figure is absent is not a miss: see
    /// [`Targets::unmeasured`].
    pub fn misses(&self, figures: &(impl Figures + ?Sized)) -> Vec<Miss> {
        self.limits()
            .into_iter()
            .filter_map(|(target, limit)| {
                let value = figure(figures, target)?;
                let missed = match target {
                    Target::Throughput => value < limit,
                    Target::Latency(_) | Target::Memory => value > limit,
                };
                missed.then_some(Miss {
                    target,
                    value,
                    limit,
                })
            })
            .collect()
    }

    /// The targets `figures` cannot judge because the figure is absent.
    pub fn unmeasured(&self, figures: &(impl Figures + ?Sized)) -> Vec<Target> {
        self.limits()
            .into_iter()
            .filter(|(target, _)| figure(figures, *target).is_none())
            .map(|(target, _)| target)
            .collect()
    }
}

fn figure(figures: &(impl Figures + ?Sized), target: Target) -> Option<f64> {
    match target {
        Target::Latency(q) => figures.latency_ms(q),
        Target::Throughput => figures.throughput_rps(),
        Target::Memory => figures.memory_mib(),
    }
}

/// `value` rounded to `decimals` places: the precision figures are written with, so that a
/// status holds 1434.3 rps rather than the 1434.3000000000002 a sum of floats gives.
pub fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// Fewest requests a served window must hold before latency targets are judged on it rather
/// than on the capacity sweep: below it a p99 rests on a handful of requests.
pub const MIN_SERVED_REQUESTS: u64 = 1000;

/// A node's capacity for a model at its targets, measured by the agent through the serving
/// path: an open-loop load over loopback gRPC, through the same server, decoding, batcher and
/// encoding that clients use. Every figure is one a client on the node got.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    /// The highest offered rate, requests per second, at which every latency target held and
    /// nothing was rejected, in two runs; 0 when even the lowest rate tried missed a target.
    pub throughput_rps: f64,
    /// Median latency at that rate, milliseconds, timed by the client from each request's
    /// scheduled send (at the lowest rate tried when the throughput is 0).
    pub latency_p50_ms: f64,
    /// 95th percentile latency at that rate, milliseconds.
    pub latency_p95_ms: f64,
    /// 99th percentile latency at that rate, milliseconds.
    pub latency_p99_ms: f64,
    /// Memory the model's engine holds at that load, MiB: in-use heap after the sweep minus
    /// before the engine loaded, plus the agent's GPU memory on GPU providers. Absent when it
    /// could not be read.
    #[serde(default, rename = "memoryMiB", skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<f64>,
    /// When the sweep ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_at: Option<Time>,
    /// How the figures were measured, in words.
    #[schemars(length(max = 1024))]
    pub method: String,
}

impl Figures for Capacity {
    fn latency_ms(&self, quantile: Quantile) -> Option<f64> {
        Some(match quantile {
            Quantile::P50 => self.latency_p50_ms,
            Quantile::P95 => self.latency_p95_ms,
            Quantile::P99 => self.latency_p99_ms,
        })
    }

    fn throughput_rps(&self) -> Option<f64> {
        Some(self.throughput_rps)
    }

    fn memory_mib(&self) -> Option<f64> {
        self.memory_mib
    }
}

/// Live traffic a node served for a model over a sliding window, measured at the server from
/// request arrival to the response handed to the transport. The agent's own probe requests are
/// not counted.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Served {
    /// Length of the window, seconds.
    pub window_seconds: u32,
    /// Requests answered OK in the window.
    pub requests: u64,
    /// Requests answered OK per second over the window.
    pub throughput_rps: f64,
    /// Median latency, milliseconds; absent without requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p50_ms: Option<f64>,
    /// 95th percentile latency, milliseconds; absent without requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p95_ms: Option<f64>,
    /// 99th percentile latency, milliseconds; absent without requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<f64>,
    /// Answers other than OK and RESOURCE_EXHAUSTED, by gRPC code name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 17))]
    pub errors: BTreeMap<String, u64>,
    /// Requests refused with RESOURCE_EXHAUSTED (a full queue).
    #[serde(default)]
    pub rejected: u64,
    /// Answered plus rejected requests per second: what clients asked for.
    #[serde(default)]
    pub demand_rps: f64,
    /// When the window ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Time>,
}

impl Served {
    /// Whether these figures differ from `old` enough to be written again: a figure moved by
    /// more than `fraction` (relative), or a latency appeared or went away. Statuses are
    /// rewritten only then, so that steady traffic costs the apiserver nothing.
    pub fn moved_from(&self, old: &Self, fraction: f64) -> bool {
        let far = |a: f64, b: f64| {
            let scale = a.abs().max(b.abs());
            scale > 0.0 && (a - b).abs() / scale > fraction
        };
        let counts = |s: &Self| {
            [
                s.throughput_rps,
                s.demand_rps,
                s.rejected as f64,
                s.errors.values().sum::<u64>() as f64,
            ]
        };
        let latencies = |s: &Self| [s.latency_p50_ms, s.latency_p95_ms, s.latency_p99_ms];
        counts(old)
            .iter()
            .zip(counts(self).iter())
            .any(|(a, b)| far(*a, *b))
            || latencies(old)
                .iter()
                .zip(latencies(self).iter())
                .any(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) => far(*a, *b),
                    (None, None) => false,
                    _ => true,
                })
    }

    /// Whether the window holds enough requests to judge latency targets on
    /// ([`MIN_SERVED_REQUESTS`]).
    pub fn judgeable(&self) -> bool {
        self.requests >= MIN_SERVED_REQUESTS
    }
}

impl Figures for Served {
    fn latency_ms(&self, quantile: Quantile) -> Option<f64> {
        match quantile {
            Quantile::P50 => self.latency_p50_ms,
            Quantile::P95 => self.latency_p95_ms,
            Quantile::P99 => self.latency_p99_ms,
        }
    }

    fn throughput_rps(&self) -> Option<f64> {
        Some(self.throughput_rps)
    }
}

/// Which figures a latency verdict rests on.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum FigureSource {
    /// The live served window (it held at least 1000 requests).
    Served,
    /// The capacity sweep (too little live traffic to judge on).
    Capacity,
}

impl FigureSource {
    /// The name as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Served => "served",
            Self::Capacity => "capacity",
        }
    }
}

/// The figures latency targets are judged on: the served window when it holds at least
/// [`MIN_SERVED_REQUESTS`], else the capacity sweep; `None` before either exists.
pub fn latency_basis<'a>(
    capacity: Option<&'a Capacity>,
    served: Option<&'a Served>,
) -> Option<(FigureSource, &'a dyn Figures)> {
    match (served, capacity) {
        (Some(served), _) if served.judgeable() => Some((FigureSource::Served, served)),
        (_, Some(capacity)) => Some((FigureSource::Capacity, capacity)),
        _ => None,
    }
}

/// Both kinds of figures in one phrase, for condition messages:
/// `served p99 0.95 ms over 120345 requests in 60 s; capacity 41000 rps at p99 0.90 ms`.
pub fn describe(capacity: Option<&Capacity>, served: Option<&Served>) -> String {
    let served = match served {
        Some(s) => match s.latency_p99_ms {
            Some(p99) => format!(
                "served p99 {p99:.3} ms over {} requests in {} s",
                s.requests, s.window_seconds
            ),
            None => format!("served nothing in the last {} s", s.window_seconds),
        },
        None => "served: not reported yet".to_owned(),
    };
    let capacity = match capacity {
        Some(c) => format!(
            "capacity {:.0} rps at p99 {:.3} ms",
            c.throughput_rps, c.latency_p99_ms
        ),
        None => "capacity unmeasured".to_owned(),
    };
    format!("{served}; {capacity}")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;

    struct Fixed {
        p99: Option<f64>,
        rps: Option<f64>,
        mib: Option<f64>,
    }

    impl Figures for Fixed {
        fn latency_ms(&self, quantile: Quantile) -> Option<f64> {
            (quantile == Quantile::P99).then_some(self.p99).flatten()
        }
        fn throughput_rps(&self) -> Option<f64> {
            self.rps
        }
        fn memory_mib(&self) -> Option<f64> {
            self.mib
        }
    }

    fn targets() -> Targets {
        Targets {
            latency_p50_ms: Some(0.5),
            latency_p99_ms: Some(1.0),
            throughput_rps: Some(5000.0),
            memory_limit: Some(Quantity("512Mi".into())),
            ..Targets::default()
        }
    }

    #[test]
    fn misses_name_each_missed_target_with_its_numbers() {
        let figures = Fixed {
            p99: Some(1.3),
            rps: Some(1200.0),
            mib: Some(600.0),
        };
        let misses: Vec<String> = targets()
            .misses(&figures)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            misses,
            [
                "latencyP99Ms 1.300 > 1",
                "throughputRps 1200 < 5000",
                "memoryMiB 600.0 > 512.0"
            ]
        );
    }

    #[test]
    fn absent_figures_are_unmeasured_not_met() {
        let figures = Fixed {
            p99: Some(0.9),
            rps: None,
            mib: None,
        };
        assert!(targets().misses(&figures).is_empty());
        assert_eq!(
            targets().unmeasured(&figures),
            [
                Target::Latency(Quantile::P50),
                Target::Throughput,
                Target::Memory
            ]
        );
    }

    #[test]
    fn quantiles_name_their_target_fields() {
        let fields: Vec<&str> = Quantile::ALL.iter().map(|q| q.target_field()).collect();
        assert_eq!(fields, ["latencyP50Ms", "latencyP95Ms", "latencyP99Ms"]);
        assert_eq!(Target::Memory.field(), "memoryLimit");
    }
    #[test]
    fn figures_are_rewritten_only_when_they_move_by_more_than_the_fraction() {
        let base = Served {
            throughput_rps: 1000.0,
            latency_p99_ms: Some(1.0),
            ..Served::default()
        };
        let close = Served {
            throughput_rps: 1050.0,
            latency_p99_ms: Some(1.05),
            ..base.clone()
        };
        let far = Served {
            latency_p99_ms: Some(1.2),
            ..base.clone()
        };
        let idle = Served::default();
        assert!(!close.moved_from(&base, 0.1));
        assert!(far.moved_from(&base, 0.1));
        assert!(idle.moved_from(&base, 0.1), "going idle is a change");
        assert!(!idle.clone().moved_from(&idle, 0.1));
    }
}
