//! What a tuning does to the models this node already serves. Its sweep's load runs on the
//! node's own CPUs, beside their real traffic, so each served model's figures over the tuning
//! are set beside its figures over as many seconds before it, and the Tuned condition says
//! what moved.

use std::fmt;
use std::time::{Duration, Instant};

use policyserve_crds::Served;

use crate::registry::{ModelRegistry, Models};

/// The served figures taken when a tuning started.
#[derive(Debug)]
pub struct Before {
    started: Instant,
    figures: Vec<(String, Served)>,
}

/// One served model's figures before and during a tuning.
#[derive(Clone, Debug, PartialEq)]
pub struct Effect {
    /// V2 model name.
    pub model: String,
    /// Over the seconds before the tuning (as many as its budget, within the served window).
    pub before: Served,
    /// Over the tuning (its last served window's worth when it took longer).
    pub during: Served,
}

impl Before {
    /// Every model `models` serves, over the `lookback` before now.
    pub fn take(models: &ModelRegistry, lookback: Duration) -> Self {
        let started = Instant::now();
        let from = started.checked_sub(lookback).unwrap_or(started);
        let figures = models
            .names()
            .into_iter()
            .filter_map(|name| {
                let served = models.model(&name)?.traffic.summary_between(from, started);
                Some((name, served))
            })
            .collect();
        Self { started, figures }
    }

    /// The models that served anything before or during the tuning, with both figures.
    pub fn effects(&self, models: &ModelRegistry) -> Vec<Effect> {
        let now = Instant::now();
        self.figures
            .iter()
            .filter_map(|(name, before)| {
                let during = models
                    .model(name)?
                    .traffic
                    .summary_between(self.started, now);
                (before.requests > 0 || during.requests > 0).then(|| Effect {
                    model: name.clone(),
                    before: before.clone(),
                    during,
                })
            })
            .collect()
    }
}

impl fmt::Display for Effect {
    /// "ns.a p99 0.91 ms over 30 s before, 1.40 ms over 30 s during (812 and 790 requests)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p99 = |s: &Served| {
            s.latency_p99_ms
                .map_or_else(|| "none".to_owned(), |v| format!("{v:.3} ms"))
        };
        write!(
            f,
            "{} p99 {} over {} s before, {} over {} s during ({} and {} requests)",
            self.model,
            p99(&self.before),
            self.before.window_seconds,
            p99(&self.during),
            self.during.window_seconds,
            self.before.requests,
            self.during.requests
        )
    }
}

/// The sentence the Tuned condition carries, or `None` when nothing else was served.
pub fn describe(effects: &[Effect]) -> Option<String> {
    (!effects.is_empty()).then(|| {
        let each: Vec<String> = effects.iter().map(ToString::to_string).collect();
        format!("served here while it tuned: {}", each.join("; "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_effect_reads_both_figures_and_an_idle_node_says_nothing() {
        let served = |requests: u64, p99: Option<f64>, seconds: u32| Served {
            window_seconds: seconds,
            requests,
            latency_p99_ms: p99,
            ..Served::default()
        };
        let effect = Effect {
            model: "ns.a".into(),
            before: served(812, Some(0.912), 30),
            during: served(0, None, 12),
        };
        assert_eq!(
            describe(std::slice::from_ref(&effect)).as_deref(),
            Some(
                "served here while it tuned: ns.a p99 0.912 ms over 30 s before, none over 12 s \
                 during (812 and 0 requests)"
            )
        );
        assert_eq!(describe(&[]), None);
    }
}
