#!/usr/bin/env python3
"""Where an open loop piled up: reads a `loadgen --trace` file and prints, per time bin, the
requests started and finished, those in flight and the slowest one started in the bin, from a
little before the first request slower than the threshold to a little after the last.

    scripts/pileup.py TRACE.csv [--bin-ms 5] [--slow-ms 5]

A stall in the server shows as bins where requests keep starting but none finish; a client
short of CPU shows as bins where few requests start at all (the pacer's tasks wait to run).
"""
import argparse
import csv
from collections import Counter, defaultdict


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--bin-ms", type=float, default=5.0)
    parser.add_argument("--slow-ms", type=float, default=5.0)
    args = parser.parse_args()
    width = args.bin_ms * 1000
    started, finished, slowest = Counter(), Counter(), defaultdict(int)
    with open(args.trace) as f:
        rows = [(int(r["start_us"]), int(r["latency_us"])) for r in csv.DictReader(f)]
    for start, latency in rows:
        b = int(start // width)
        started[b] += 1
        finished[int((start + latency) // width)] += 1
        slowest[b] = max(slowest[b], latency)
    slow = sorted(b for b, latency in slowest.items() if latency > args.slow_ms * 1000)
    print(f"{len(rows)} requests; {len(slow)} bins of {args.bin_ms:g} ms started a request "
          f"slower than {args.slow_ms:g} ms")
    if not slow:
        return
    first, last = max(0, slow[0] - 5), slow[-1] + 5
    print("| from ms | started | finished | in flight | slowest started, ms |")
    print("|---|---|---|---|---|")
    in_flight = 0
    for b in range(last + 1):
        in_flight += started[b] - finished[b]
        if b >= first:
            print(f"| {b * args.bin_ms:.0f} | {started[b]} | {finished[b]} | {in_flight} "
                  f"| {slowest[b] / 1000:.2f} |")


if __name__ == "__main__":
    main()
