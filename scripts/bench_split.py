"""One line of scripts/bench-split: the client's figures and, from a tcpdump text capture of
the loopback, the server's and the client's time per request.

    bench_split.py --header
    bench_split.py BUILD TARGET REPORT.json CAPTURE.txt SERVER_PORT
"""
import json
import sys


def turns(lines, port):
    """[start, end, towards_server, packets] of each run of data packets in one direction."""
    runs = []
    for line in lines:
        head, _, tail = line.rpartition(" length ")
        fields = head.split()
        if len(fields) < 5 or not tail.strip().isdigit() or int(tail) == 0:
            continue
        stamp, towards_server = float(fields[0]), not fields[2].endswith(f".{port}")
        if runs and runs[-1][2] == towards_server:
            runs[-1][1] = stamp
            runs[-1][3] += 1
        else:
            runs.append([stamp, stamp, towards_server, 1])
    return runs


def quantile(values, q):
    values = sorted(values)
    return values[int(q * (len(values) - 1))] if values else float("nan")


def main():
    if sys.argv[1] == "--header":
        print("| build | path | client p50 µs | p99 µs | req/s | server p50 µs (socket) | p90 | client p50 µs (socket) | p90 | packets in per request |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        return
    build, target, report, capture, port = sys.argv[1:6]
    report = json.load(open(report))
    server, client, packets_in = [], [], []
    if port:
        runs = turns(open(capture), port)
        for this, following in zip(runs, runs[1:]):
            (server if this[2] else client).append((following[0] - this[1]) * 1e6)
        packets_in = [run[3] for run in runs if run[2]]
    cells = [f"{quantile(v, q):.1f}" if v else "" for v in (server, client) for q in (0.5, 0.9)]
    latency = report["latency_us"]
    print(f"| {build.rsplit('/', 1)[-1]} | {target} | {latency['p50']:.1f} | {latency['p99']:.1f} | "
          f"{report['throughput']:.0f} | " + " | ".join(cells) + " | "
          + (f"{sum(packets_in) / len(packets_in):.1f}" if packets_in else "") + " |")


if __name__ == "__main__":
    main()
