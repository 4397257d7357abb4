//! How candidates are ordered: latency and memory are constraints, throughput is what is
//! maximised (more nodes make up for a per-node throughput shortfall, nothing makes up for a
//! latency miss).

use policyserve_crds::{Figures, Target, Targets};

/// Feasible configurations rank by throughput; infeasible ones below all feasible ones, by how
/// far they miss (the sum of relative excesses).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Score {
    /// Whether every latency and memory target holds.
    pub feasible: bool,
    /// Throughput when feasible, else minus the summed relative excess.
    pub value: f64,
}

/// The score of `figures` against `targets`.
pub fn score(targets: &Targets, figures: &impl Figures) -> Score {
    let excess: f64 = targets
        .misses(figures)
        .iter()
        .filter(|miss| !matches!(miss.target, Target::Throughput))
        .map(|miss| miss.value / miss.limit - 1.0)
        .sum();
    if excess > 0.0 {
        Score {
            feasible: false,
            value: -excess,
        }
    } else {
        Score {
            feasible: true,
            value: figures.throughput_rps().unwrap_or(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use policyserve_crds::Measurement;

    use super::*;

    fn measured(p99: f64, rps: f64, mib: f64) -> Measurement {
        Measurement {
            latency_p50_ms: p99 / 2.0,
            latency_p95_ms: p99,
            latency_p99_ms: p99,
            throughput_rps: rps,
            memory_mib: mib,
            measured_at: None,
        }
    }

    #[test]
    fn any_feasible_configuration_outranks_every_infeasible_one() {
        let t = Targets {
            latency_p99_ms: Some(1.0),
            throughput_rps: Some(5000.0),
            memory_limit: Some(Quantity("512Mi".into())),
            ..Targets::default()
        };
        let slow_but_ok = score(&t, &measured(0.9, 100.0, 50.0));
        let fast_but_late = score(&t, &measured(1.1, 90_000.0, 50.0));
        let later = score(&t, &measured(3.0, 90_000.0, 50.0));
        let faster_ok = score(&t, &measured(0.9, 200.0, 50.0));
        let too_big = score(&t, &measured(0.9, 90_000.0, 600.0));
        assert!(slow_but_ok > fast_but_late);
        assert!(fast_but_late > later, "closer to the target ranks higher");
        assert!(faster_ok > slow_but_ok);
        assert!(slow_but_ok > too_big, "memory is a constraint too");
    }
}
