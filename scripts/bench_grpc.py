"""Markdown tables of scripts/bench-grpc's results.

    bench_grpc.py bench RESULTS/bench.jsonl   # onnxd bench: in-process, HTTP, gRPC, gRPC streaming
    bench_grpc.py perf RESULTS                # perf_analyzer sweeps (perf-MODEL-PROTOCOL.csv)
"""
import csv
import json
import sys
from pathlib import Path

TARGETS = ["in-process", "http", "grpc", "grpc-stream"]
PROTOCOLS = ["http", "grpc", "grpc-stream"]


def median(values):
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def cells(rows):
    """The figures of one (model, concurrency, target) over its rounds: each one's median."""
    def of(pick):
        return median([pick(r) for r in rows])
    return {
        "req/s": of(lambda r: r["report"]["throughput"]),
        "p50": of(lambda r: r["report"]["latency_us"]["p50"]),
        "p99": of(lambda r: r["report"]["latency_us"]["p99"]),
        "server": of(lambda r: r["server_ticks"] / r["hz"] * 1e6 / max(r["report"]["requests"], 1)),
        "client": of(lambda r: r["report"]["client_cpu_us_per_request"]),
    }


def bench(path):
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    by_key = {}
    for r in rows:
        by_key.setdefault((r["model"], r["concurrency"], r["target"]), []).append(r)
    rounds = max(len(v) for v in by_key.values())
    if rounds > 1:
        print(f"Medians of {rounds} rounds.")
        print()
    print("| model | concurrency | path | req/s | p50 µs | p99 µs | p50 − in-process p50 µs | server CPU µs/req | client CPU µs/req |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (model, concurrency, target), runs in by_key.items():
        c = cells(runs)
        local = cells(by_key[(model, concurrency, "in-process")])
        overhead = "" if target == "in-process" else f"{c['p50'] - local['p50']:.1f}"
        server = "" if target == "in-process" else f"{c['server']:.1f}"
        print(f"| {model} | {concurrency} | {target} | {c['req/s']:.0f} | {c['p50']:.1f} | {c['p99']:.1f} | "
              f"{overhead} | {server} | {c['client']:.1f} |")
    print()
    for concurrency in sorted({k[1] for k in by_key}):
        local = by_key.get(("digits", concurrency, "in-process"))
        if not local:
            continue
        parts = []
        for target in TARGETS[1:]:
            runs = by_key.get(("digits", concurrency, target))
            if runs:
                each = [r["report"]["latency_us"]["p50"] - l["report"]["latency_us"]["p50"] for r, l in zip(runs, local)]
                rounds_text = f" (rounds: {', '.join(f'{o:.1f}' for o in each)})" if len(each) > 1 else ""
                parts.append(f"{target} {median(each):.1f} µs{rounds_text}")
        print(f"Tiny-model non-compute overhead (p50 − in-process p50 of the same round), concurrency {concurrency}: "
              + ", ".join(parts))
    print()


def perf(directory):
    directory = Path(directory)
    models = sorted({p.name.split("-")[1] for p in directory.glob("perf-*.csv")}, key=lambda m: (m != "digits", m))
    for model in models:
        sweeps = {}
        for protocol in PROTOCOLS:
            path = directory / f"perf-{model}-{protocol}.csv"
            if path.exists():
                with path.open() as f:
                    sweeps[protocol] = {int(row["Concurrency"]): row for row in csv.DictReader(f)}
        levels = sorted(set().union(*[s.keys() for s in sweeps.values()]))
        print(f"## perf_analyzer -m {model} --concurrency-range 1:{levels[-1]}: HTTP, gRPC, gRPC --streaming")
        print()
        heads = " | ".join(f"{p} infer/s" for p in sweeps) + " | " + " | ".join(f"{p} p50 µs" for p in sweeps)
        print(f"| concurrency | {heads} |")
        print("|---" * (1 + 2 * len(sweeps)) + "|")
        for level in levels:
            rate = " | ".join(f"{float(s[level]['Inferences/Second']):.0f}" if level in s else "" for s in sweeps.values())
            p50 = " | ".join(s[level]["p50 latency"] if level in s else "" for s in sweeps.values())
            print(f"| {level} | {rate} | {p50} |")
        print()
        print("Server side at concurrency 1 (µs, perf_analyzer's breakdown): " + "; ".join(
            f"{p}: queue {s[1]['Server Queue']} + compute {s[1]['Server Compute Infer']}, "
            f"client send {s[1]['Client Send']} + network/server {s[1]['Network+Server Send/Recv']} + recv {s[1]['Client Recv']}"
            for p, s in sweeps.items() if 1 in s))
        print()


if __name__ == "__main__":
    {"bench": bench, "perf": perf}[sys.argv[1]](sys.argv[2])
