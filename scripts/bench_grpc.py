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


def bench(path):
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    by_key = {(r["model"], r["concurrency"], r["target"]): r for r in rows}
    print("| model | concurrency | path | req/s | p50 µs | p99 µs | p50 − in-process p50 µs | server CPU µs/req | client CPU µs/req |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (model, concurrency, target), r in by_key.items():
        report = r["report"]
        local = by_key[(model, concurrency, "in-process")]["report"]
        overhead = report["latency_us"]["p50"] - local["latency_us"]["p50"]
        server = "" if target == "in-process" else f"{r['server_ticks'] / r['hz'] * 1e6 / max(report['requests'], 1):.1f}"
        print(f"| {model} | {concurrency} | {target} | {report['throughput']:.0f} | {report['latency_us']['p50']:.1f} | "
              f"{report['latency_us']['p99']:.1f} | {'' if target == 'in-process' else f'{overhead:.1f}'} | {server} | "
              f"{report['client_cpu_us_per_request']:.1f} |")
    print()
    for concurrency in sorted({k[1] for k in by_key}):
        local = by_key.get(("digits", concurrency, "in-process"))
        if not local:
            continue
        base = local["report"]["latency_us"]["p50"]
        parts = []
        for target in TARGETS[1:]:
            r = by_key.get(("digits", concurrency, target))
            if r:
                parts.append(f"{target} {r['report']['latency_us']['p50'] - base:.1f} µs")
        print(f"Tiny-model non-compute overhead (p50 − in-process p50), concurrency {concurrency}: " + ", ".join(parts))
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
