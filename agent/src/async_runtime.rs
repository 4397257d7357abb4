//! The tokio runtime the agent's network side (gRPC, metrics, Kubernetes watches) runs on,
//! sized so that it and the inference workers do not take turns on the same cores.
//!
//! Inference runs on the batcher's own threads; every async thread beyond the CPUs they leave
//! free only adds context switches. On two CPUs with one inference thread, one async thread
//! served ~25 % more requests per second than tokio's default of one per CPU, with a p99 of
//! 0.9–1.2 ms instead of 1.5–1.9 ms (docs/benchmarks.md).

use std::num::NonZero;

/// CPUs this process may use: the cgroup quota and affinity mask included.
pub fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, NonZero::get)
}

/// Async threads beside `inference_threads` busy inference threads: the CPUs they leave,
/// at least one.
pub fn threads_beside(inference_threads: usize) -> usize {
    usable_cpus().saturating_sub(inference_threads).max(1)
}

/// Async threads for `run`, whose models and their threads arrive later: a quarter of the
/// CPUs, at least one, leaving the rest to inference.
pub fn threads_for_node() -> usize {
    (usable_cpus() / 4).max(1)
}

/// Worker threads of the runtime the caller runs on (none outside one): the CPUs serving
/// requests needs beside inference.
pub fn workers() -> usize {
    tokio::runtime::Handle::try_current().map_or(0, |runtime| runtime.metrics().num_workers())
}

/// A multi-thread runtime with `threads` workers (at least one).
///
/// # Errors
/// When the runtime's threads or its I/O driver cannot be created.
pub fn build(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tracing::debug!(threads, "async runtime");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_leave_inference_its_cpus_but_never_drop_to_zero() {
        let cpus = usable_cpus();
        assert_eq!(threads_beside(0), cpus);
        assert_eq!(threads_beside(cpus - 1), 1);
        assert_eq!(threads_beside(cpus), 1);
        assert_eq!(threads_beside(cpus + 8), 1);
        assert!((1..=cpus).contains(&threads_for_node()));
    }

    #[test]
    fn the_runtime_has_the_threads_asked_for() {
        let runtime = build(3).unwrap();
        assert_eq!(runtime.metrics().num_workers(), 3);
        assert_eq!(runtime.block_on(async { workers() }), 3);
        assert_eq!(build(0).unwrap().metrics().num_workers(), 1);
        assert_eq!(workers(), 0, "outside a runtime");
    }
}
