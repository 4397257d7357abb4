//! What a served model served: a sliding window of per-second slots, each with answered,
//! rejected and failed requests and a latency histogram, summed into [`Served`] figures on
//! demand. Recording a request costs one short lock; the agent's own probe requests are never
//! recorded.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use policyserve_crds::{Served, round};
use tonic::Code;

/// The served window's length unless a flag says otherwise, seconds.
pub const DEFAULT_WINDOW_SECONDS: u32 = 60;

/// Histogram buckets grow by 5%: a percentile read from it is at most 5% above the true one
/// (it reports the bucket's upper bound, so never below it).
const GROWTH: f64 = 1.05;
/// The first bucket ends at 1 µs.
const FIRST_BUCKET_SECONDS: f64 = 1e-6;
/// 1 µs × 1.05^400 ≈ 300 s: anything longer lands in the last bucket.
const BUCKETS: usize = 400;

/// One second of traffic.
#[derive(Clone, Debug)]
struct Slot {
    /// Seconds since the window's origin this slot counts; slots are reused round-robin.
    second: u64,
    answered: u64,
    rejected: u64,
    /// By `tonic::Code` number (codes have no order of their own).
    errors: BTreeMap<i32, u64>,
    latency: Vec<u32>,
}

impl Slot {
    fn new(second: u64) -> Self {
        Self {
            second,
            answered: 0,
            rejected: 0,
            errors: BTreeMap::new(),
            latency: Vec::new(),
        }
    }
}

/// The sliding window of one served model.
#[derive(Debug)]
pub struct Window {
    origin: Instant,
    seconds: u64,
    slots: Mutex<Vec<Slot>>,
    /// Every request recorded since the start, answered or not: a cheap "did anything arrive"
    /// for probes that must stop at the first real request.
    arrivals: AtomicU64,
}

impl Window {
    /// A window of `seconds` (at least 1), starting now.
    pub fn new(seconds: u32) -> Self {
        let seconds = u64::from(seconds.max(1));
        Self {
            origin: Instant::now(),
            seconds,
            slots: Mutex::new(Vec::new()),
            arrivals: AtomicU64::new(0),
        }
    }

    /// The window's length.
    pub fn length(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }

    /// Requests recorded since the window was made.
    pub fn arrivals(&self) -> u64 {
        self.arrivals.load(Ordering::Relaxed)
    }

    /// Records one answered request: its gRPC code and, for OK answers, its latency.
    pub fn record(&self, at: Instant, latency: Duration, code: Code) {
        self.arrivals.fetch_add(1, Ordering::Relaxed);
        let second = at.saturating_duration_since(self.origin).as_secs();
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.is_empty() {
            *slots = (0..self.seconds).map(|_| Slot::new(u64::MAX)).collect();
        }
        let index = usize::try_from(second % self.seconds).unwrap_or(0);
        let slot = &mut slots[index];
        if slot.second != second {
            *slot = Slot::new(second);
        }
        match code {
            Code::Ok => {
                slot.answered += 1;
                if slot.latency.is_empty() {
                    slot.latency = vec![0; BUCKETS];
                }
                slot.latency[bucket(latency)] += 1;
            }
            Code::ResourceExhausted => slot.rejected += 1,
            other => *slot.errors.entry(other as i32).or_insert(0) += 1,
        }
    }

    /// The figures of the last full window before `now` (the current, partial second is
    /// left out so that a window is always whole seconds).
    pub fn summary(&self, now: Instant) -> Served {
        Served {
            window_seconds: u32::try_from(self.seconds).unwrap_or(u32::MAX),
            ..self.summary_between(self.origin, now)
        }
    }

    /// The figures of the whole seconds from `from` to `to` that the window still holds (at
    /// most its length, ending at `to`); `window_seconds` says how many seconds they cover.
    pub fn summary_between(&self, from: Instant, to: Instant) -> Served {
        let elapsed = to.saturating_duration_since(self.origin).as_secs();
        let start = from.saturating_duration_since(self.origin).as_secs();
        // Whole seconds covered: the window, or less while the model is new or the range short.
        let span = elapsed.saturating_sub(start).min(self.seconds);
        let first = elapsed - span;
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut answered = 0;
        let mut rejected = 0;
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let mut latency = vec![0u64; BUCKETS];
        for slot in slots
            .iter()
            .filter(|s| s.second >= first && s.second < elapsed)
        {
            answered += slot.answered;
            rejected += slot.rejected;
            for (code, n) in &slot.errors {
                *errors
                    .entry(format!("{:?}", Code::from(*code)))
                    .or_insert(0) += n;
            }
            for (total, n) in latency.iter_mut().zip(&slot.latency) {
                *total += u64::from(*n);
            }
        }
        let per_second = |n: u64| {
            if span == 0 {
                0.0
            } else {
                round(n as f64 / span as f64, 1)
            }
        };
        let quantile = |q: f64| quantile_ms(&latency, answered, q);
        Served {
            window_seconds: u32::try_from(span.max(1)).unwrap_or(u32::MAX),
            requests: answered,
            throughput_rps: per_second(answered),
            latency_p50_ms: quantile(0.50),
            latency_p95_ms: quantile(0.95),
            latency_p99_ms: quantile(0.99),
            errors,
            rejected,
            demand_rps: per_second(answered + rejected),
            updated_at: Some(Time(jiff::Timestamp::now())),
        }
    }
}

/// The bucket holding `latency`: bucket `i` ends at 1 µs × 1.05^i.
fn bucket(latency: Duration) -> usize {
    let seconds = latency.as_secs_f64();
    if seconds <= FIRST_BUCKET_SECONDS {
        return 0;
    }
    let index = (seconds / FIRST_BUCKET_SECONDS).ln() / GROWTH.ln();
    (index.ceil() as usize).min(BUCKETS - 1)
}

/// The `q` quantile (nearest rank) of a histogram of `count` answers, as its bucket's upper
/// bound in milliseconds; `None` without answers.
fn quantile_ms(histogram: &[u64], count: u64, q: f64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
    let mut seen = 0;
    let index = histogram.iter().position(|n| {
        seen += n;
        seen >= rank
    })?;
    let upper = FIRST_BUCKET_SECONDS * GROWTH.powi(i32::try_from(index).unwrap_or(i32::MAX));
    Some(round(upper * 1000.0, 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_sums_whole_seconds_and_reads_percentiles_at_most_five_percent_high() {
        let window = Window::new(10);
        let start = window.origin;
        for i in 0..1000u64 {
            let at = start + Duration::from_millis(i * 3); // 0 … 3 s
            let latency = Duration::from_micros(100 + i); // 100 … 1099 µs
            window.record(at, latency, Code::Ok);
        }
        window.record(start, Duration::ZERO, Code::ResourceExhausted);
        window.record(start, Duration::ZERO, Code::InvalidArgument);
        let served = window.summary(start + Duration::from_secs(4));
        assert_eq!(served.requests, 1000);
        assert_eq!(served.window_seconds, 10);
        assert_eq!(served.throughput_rps, 250.0, "1000 answers over 4 s");
        assert_eq!(served.demand_rps, 250.3, "answered and rejected, rounded");
        assert_eq!(served.rejected, 1);
        assert_eq!(
            served.errors,
            BTreeMap::from([("InvalidArgument".into(), 1)])
        );
        let p99 = served.latency_p99_ms.unwrap();
        assert!((1.089..=1.089 * 1.05).contains(&p99), "p99 {p99}");
        let p50 = served.latency_p50_ms.unwrap();
        assert!((0.599..=0.599 * 1.05).contains(&p50), "p50 {p50}");
    }

    #[test]
    fn old_seconds_leave_the_window_and_an_idle_window_has_no_latency() {
        let window = Window::new(2);
        let start = window.origin;
        window.record(start, Duration::from_micros(50), Code::Ok);
        assert_eq!(window.summary(start + Duration::from_secs(1)).requests, 1);
        let later = window.summary(start + Duration::from_secs(5));
        assert_eq!(later.requests, 0);
        assert_eq!(later.throughput_rps, 0.0);
        assert_eq!(later.latency_p99_ms, None);
        assert_eq!(window.arrivals(), 1);
    }

    #[test]
    fn a_range_counts_its_own_whole_seconds_and_at_most_the_window() {
        let window = Window::new(10);
        let start = window.origin;
        for second in 0..8u64 {
            let latency = Duration::from_micros(if second < 4 { 100 } else { 900 });
            for _ in 0..10 {
                window.record(start + Duration::from_secs(second), latency, Code::Ok);
            }
        }
        let before = window.summary_between(start, start + Duration::from_secs(4));
        let during = window.summary_between(
            start + Duration::from_secs(4),
            start + Duration::from_secs(8),
        );
        assert_eq!((before.requests, before.window_seconds), (40, 4));
        assert_eq!((during.requests, during.window_seconds), (40, 4));
        assert!(before.latency_p99_ms.unwrap() < 0.11 && during.latency_p99_ms.unwrap() > 0.89);
        // A range longer than the window is cut to the window's last seconds.
        let long = window.summary_between(start, start + Duration::from_secs(14));
        assert_eq!(
            (long.requests, long.window_seconds),
            (40, 10),
            "seconds 4 … 7"
        );
    }

    #[test]
    fn a_reused_slot_forgets_the_second_it_held_before() {
        let window = Window::new(2);
        let start = window.origin;
        window.record(start, Duration::from_micros(50), Code::Ok);
        // Second 2 reuses second 0's slot.
        window.record(
            start + Duration::from_secs(2),
            Duration::from_micros(50),
            Code::Ok,
        );
        let served = window.summary(start + Duration::from_secs(3));
        assert_eq!(served.requests, 1, "second 0 is outside the window [1, 3)");
    }
}
