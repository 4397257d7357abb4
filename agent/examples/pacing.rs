//! How well the load generator's pacer keeps its schedule on this machine (docs/benchmarks.md,
//! "The pacer"): the pacer of `policyserve_agent::load` next to the one it replaced (a sleep
//! until shortly before the send time, then `yield_now` until it), each at `--rate` for
//! `--seconds`, while `--busy-threads` threads spin as a busy server would.
//!
//! ```text
//! cargo run --release -p policyserve-agent --example pacing -- --rate 300 --busy-threads 2
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use policyserve_agent::load::{self, ON_TIME};

#[derive(Debug, Parser)]
struct Options {
    /// Sends per second.
    #[arg(long, default_value_t = 300.0)]
    rate: f64,
    /// How long each pacer runs.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// CPU-bound threads running meanwhile.
    #[arg(long, default_value_t = 2)]
    busy_threads: usize,
}

/// The pacer before: `std::thread::sleep` oversleeps, so it slept until 200 µs before the
/// send time and yielded from there.
fn sleep_then_yield(due: Instant) {
    const SPIN: Duration = Duration::from_micros(200);
    let now = Instant::now();
    if due > now + SPIN {
        std::thread::sleep(due - now - SPIN);
    }
    while Instant::now() < due {
        std::thread::yield_now();
    }
}

/// Paces `rate` sends a second for `seconds` with `wait`; prints how many left on time.
fn pace(name: &str, options: &Options, wait: fn(Instant)) {
    let interval = Duration::from_secs_f64(1.0 / options.rate);
    let total = (options.rate * options.seconds).round() as u64;
    let (mut on_time, mut worst) = (0_u64, Duration::ZERO);
    let start = Instant::now();
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        wait(due);
        let late = Instant::now().saturating_duration_since(due);
        on_time += u64::from(late <= ON_TIME);
        worst = worst.max(late);
    }
    println!(
        "{name:<18} {:>6.2}% of {total} sends within {} ms of their time, worst {:.3} ms late",
        100.0 * on_time as f64 / total as f64,
        ON_TIME.as_millis(),
        worst.as_secs_f64() * 1e3
    );
}

fn main() {
    let options = Options::parse();
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (0..options.busy_threads)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    println!(
        "{} rps for {} s each, {} busy threads, {} usable CPUs",
        options.rate,
        options.seconds,
        options.busy_threads,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    // Each twice, alternating, so a change of the machine's load shows as a spread.
    for _ in 0..2 {
        pace("load::wait_until", &options, load::wait_until);
        pace("sleep then yield", &options, sleep_then_yield);
    }
    stop.store(true, Ordering::Relaxed);
    for thread in busy {
        let _ = thread.join();
    }
}
