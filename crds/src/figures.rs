//! Judging figures against targets, once for every kind of figure: the tuner's in-process
//! ranking, the capacity sweep and the served window all answer the same [`Figures`] questions,
//! and [`Targets::misses`] is the one place that compares them with what the user asked.

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

    /// The targets `figures` miss. A target whose figure is absent is not a miss: see
    /// [`Targets::unmeasured`].
    pub fn misses(&self, figures: &impl Figures) -> Vec<Miss> {
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
    pub fn unmeasured(&self, figures: &impl Figures) -> Vec<Target> {
        self.limits()
            .into_iter()
            .filter(|(target, _)| figure(figures, *target).is_none())
            .map(|(target, _)| target)
            .collect()
    }
}

fn figure(figures: &impl Figures, target: Target) -> Option<f64> {
    match target {
        Target::Latency(q) => figures.latency_ms(q),
        Target::Throughput => figures.throughput_rps(),
        Target::Memory => figures.memory_mib(),
    }
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
}
