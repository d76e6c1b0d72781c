"""Helper of scripts/bench-mqtt (see there).

`record SETTING NODE REP REPORT_JSON DAEMON_TICKS BROKER_TICKS` prints one JSON line: the
`onnxd bench --mqtt --json` report with the broker setting, the daemon, the repetition and the
CPU time the daemon and the broker spent per request. `table FILE` turns those lines into the
Markdown tables of BENCHMARKS.md: per figure the median over the repetitions, and per broker
setting the onnxd / Python ratios (and onnxd / the no-work responder at 64 in flight), each the
median of the per-repetition ratios (measured back to back) with their range, because the shared machine's noise moves both.
"""
import json
import os
import statistics
import sys

PYTHON = "Python reference"
CEILING = "no-work responder"
DAEMONS = {"bench": "onnxd", "reference": PYTHON, "ceiling": CEILING}


def record(setting, node, rep, report, daemon_ticks, broker_ticks):
    report = json.loads(report)
    hz = os.sysconf("SC_CLK_TCK")
    answered = max(report["requests"] + report["errors"], 1)
    report.update(setting=setting, daemon=DAEMONS[node], rep=int(rep),
                  daemon_cpu_us_per_request=int(daemon_ticks) / hz * 1e6 / answered,
                  broker_cpu_us_per_request=int(broker_ticks) / hz * 1e6 / answered)
    print(json.dumps(report))


def median(rows, get):
    return statistics.median(get(r) for r in rows)


def figures(rows):
    print("| broker | daemon | in flight | req/s | p50 µs | p90 µs | p99 µs | errors / lost "
          "| CPU µs/req: daemon | broker | client |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    groups = {}
    for r in rows:
        groups.setdefault((r["setting"], r["window"], r["daemon"]), []).append(r)
    for (setting, window, daemon), rs in groups.items():
        lat = {q: median(rs, lambda r: r["latency_us"][q]) for q in ("p50", "p90", "p99")}
        print(f"| {setting} | {daemon} | {window} | {median(rs, lambda r: r['throughput']):,.0f} | "
              f"{lat['p50']:,.0f} | {lat['p90']:,.0f} | {lat['p99']:,.0f} | "
              f"{sum(r['errors'] for r in rs)} / {sum(r['lost'] for r in rs)} | "
              f"{median(rs, lambda r: r['daemon_cpu_us_per_request']):,.0f} | "
              f"{median(rs, lambda r: r['broker_cpu_us_per_request']):,.0f} | "
              f"{median(rs, lambda r: r['client_cpu_us_per_request']):,.0f} |")


def ratios(rows):
    at = {(r["setting"], r["window"], r["daemon"], r["rep"]): r for r in rows}

    def ratio(setting, window, get, base=PYTHON):
        values = [get(at[(setting, window, "onnxd", rep)]) / get(at[(setting, window, base, rep)])
                  for (s, w, d, rep) in at if (s, w, d) == (setting, window, "onnxd")
                  and (setting, window, base, rep) in at]
        if not values:
            return "–"
        return f"{statistics.median(values):.2f}× ({min(values):.2f}–{max(values):.2f})"

    print("| broker | req/s at 64 in flight, onnxd / Python | p99 at 64, onnxd / Python "
          "| p99 one at a time, onnxd / Python | req/s at 64, onnxd / no-work responder |")
    print("|---|---|---|---|---|")
    for setting in dict.fromkeys(r["setting"] for r in rows):
        p99 = lambda r: r["latency_us"]["p99"]
        throughput = lambda r: r["throughput"]
        print(f"| {setting} | {ratio(setting, 64, throughput)} | "
              f"{ratio(setting, 64, p99)} | {ratio(setting, 1, p99)} | "
              f"{ratio(setting, 64, throughput, CEILING)} |")


def table(path):
    rows = [json.loads(line) for line in open(path)]
    figures(rows)
    print()
    ratios(rows)


if __name__ == "__main__":
    {"record": record, "table": table}[sys.argv[1]](*sys.argv[2:])
