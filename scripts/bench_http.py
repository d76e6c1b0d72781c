"""Summarises scripts/bench-http's raw lines (model, pinning, clients, in-process JSON, HTTP JSON,
daemon CPU ticks over the HTTP run) into the table recorded in BENCHMARKS.md: medians over rounds."""

import json
import statistics
import sys
from collections import defaultdict


def main() -> None:
    hz = int(sys.argv[1])
    runs = defaultdict(list)
    for line in sys.stdin:
        model, pin, clients, local, http, ticks = line.rstrip("\n").split("\t")
        local, http = json.loads(local), json.loads(http)
        server_us = int(ticks) / hz * 1e6 / max(http["requests"], 1)
        runs[(model, pin, clients)].append((local, http, server_us))
    print("| model | clients, pinning | in-process req/s | HTTP req/s | HTTP / in-process | "
          "in-process p50 µs | HTTP p50 µs | HTTP − in-process p50 µs | server CPU µs/req | HTTP errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (model, pin, clients), rounds in runs.items():
        med = lambda f: statistics.median(f(r) for r in rounds)  # noqa: E731
        local_tp = med(lambda r: r[0]["throughput"])
        http_tp = med(lambda r: r[1]["throughput"])
        ratio = med(lambda r: r[1]["throughput"] / r[0]["throughput"])
        local_p50 = med(lambda r: r[0]["latency_us"]["p50"])
        http_p50 = med(lambda r: r[1]["latency_us"]["p50"])
        gap = med(lambda r: r[1]["latency_us"]["p50"] - r[0]["latency_us"]["p50"])
        server = med(lambda r: r[2])
        errors = sum(r[1]["errors"] for r in rounds)
        print(f"| {model} | {clients}, {pin} | {local_tp:.0f} | {http_tp:.0f} | {ratio:.3f} | "
              f"{local_p50:.0f} | {http_p50:.0f} | {gap:.0f} | {server:.0f} | {errors} |")
    print(f"\n(medians of {len(next(iter(runs.values())))} rounds; ratio and gap are per-round medians)")


if __name__ == "__main__":
    main()
