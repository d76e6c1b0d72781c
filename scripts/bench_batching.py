"""Turns scripts/bench-batching's raw lines (name, clients, max_batch_size, bench JSON) into the
BENCHMARKS.md table: medians over rounds, batching vs none side by side."""
import json
import statistics
import sys


def median(runs, field):
    return statistics.median(field(r) for r in runs)


def throughput(r):
    return r["throughput"]


def p50(r):
    return r["latency_us"]["p50"]


def p99(r):
    return r["latency_us"]["p99"]


def mean_batch(r):
    return r["mean_batch"] or 1


def main():
    rows = {}
    for line in sys.stdin:
        name, clients, max_batch, report = line.rstrip("\n").split("\t", 3)
        rows.setdefault((name, int(clients)), {}).setdefault(int(max_batch), []).append(json.loads(report))
    print("| model | clients | no batching req/s | batching req/s | ratio | mean batch "
          "| p50 µs (none / batching) | p99 µs (none / batching) | p99 ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (name, clients), by in rows.items():
        a, b = by[0], by[32]
        ta, tb = median(a, throughput), median(b, throughput)
        pa, pb = median(a, p99), median(b, p99)
        print(f"| {name.split('-')[0]} | {clients} | {ta:,.0f} | {tb:,.0f} | {tb / ta:.2f}x "
              f"| {median(b, mean_batch):.1f} | {median(a, p50):.0f} / {median(b, p50):.0f} "
              f"| {pa:.0f} / {pb:.0f} | {pb / pa:.2f} |")


if __name__ == "__main__":
    main()
