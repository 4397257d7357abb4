#!/usr/bin/env python3
"""Python onnxruntime reference for the engine benchmark (docs/benchmarks.md).

Measures InferenceSession.run in a loop on one thread with the engine's session settings:
graph optimisation level ALL, intra_op_num_threads N, inter_op_num_threads 1, sequential
execution, intra-op spinning on, memory pattern and CPU arena on.

Two modes:
  python_onnxruntime.py MODEL --threads 1 --batch 1 --window 1.0 --repeats 5   # a table
  python_onnxruntime.py MODEL --serve     # reads "THREADS BATCH WINDOW_S" lines on stdin and
                                          # answers one JSON line each (the Rust bench drives
                                          # it so Python runs interleaved with the Rust figures)
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort


def session(model, threads):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_mem_pattern = True
    options.enable_cpu_mem_arena = True
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def measure(model, threads, batch, window):
    """One window: per-call latencies (ns) of sess.run, after a short warm-up."""
    sess = session(model, threads)
    name = sess.get_inputs()[0].name
    row = sess.get_inputs()[0].shape[1]
    x = (np.arange(batch * row, dtype=np.float32).reshape(batch, row) % 7) * 0.1
    feed = {name: x}
    warm_until = time.perf_counter() + 0.2
    while time.perf_counter() < warm_until:
        sess.run(None, feed)
    latencies = []
    clock = time.perf_counter_ns
    start = clock()
    stop = start + int(window * 1e9)
    now = start
    while now < stop:
        sent = now
        sess.run(None, feed)
        now = clock()
        latencies.append(now - sent)
    elapsed = (now - start) / 1e9
    latencies.sort()
    return {
        "p50_us": latencies[len(latencies) // 2] / 1e3,
        "mean_us": sum(latencies) / len(latencies) / 1e3,
        "inf_per_s": len(latencies) * batch / elapsed,
        "calls": len(latencies),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ort.set_default_logger_severity(3)
    if args.serve:
        print(json.dumps({"ready": True, "onnxruntime": ort.__version__}), flush=True)
        for line in sys.stdin:
            if not line.strip():
                continue
            threads, batch, window = line.split()
            result = measure(args.model, int(threads), int(batch), float(window))
            print(json.dumps(result), flush=True)
        return
    runs = [measure(args.model, args.threads, args.batch, args.window) for _ in range(args.repeats)]
    print(f"onnxruntime {ort.__version__} threads {args.threads} batch {args.batch}: "
          f"p50 {statistics.median(r['p50_us'] for r in runs):.1f} us, "
          f"mean {statistics.median(r['mean_us'] for r in runs):.1f} us, "
          f"{statistics.median(r['inf_per_s'] for r in runs):.0f} inf/s "
          f"(median of {args.repeats} windows of {args.window} s)")


if __name__ == "__main__":
    main()
