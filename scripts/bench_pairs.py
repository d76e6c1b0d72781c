"""Tables for scripts/bench-pairs: one line per pair on stdin ("in-process req/s, in-process
with a busy neighbour core req/s, in-process with its engine on the other core req/s, HTTP
req/s, then the engine's CPU ns, runnable-waiting ns and involuntary switches before and after
the HTTP run"), Markdown rows and the medians out."""

import statistics
import sys


def main() -> None:
    seconds = float(sys.argv[1])
    print("| pair | in-process req/s | busy neighbour req/s | split req/s | HTTP req/s "
          "| busy / in-process | **HTTP / in-process** | HTTP / split "
          "| engine CPU µs/req | engine waiting µs/req | engine preempted /req |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for number, line in enumerate(sys.stdin, 1):
        alone, crowded, split, served, *counters = (float(v) for v in line.split())
        cpu0, wait0, switches0, cpu1, wait1, switches1 = counters
        requests = served * seconds
        row = (alone, crowded, split, served, crowded / alone, served / alone, served / split,
               (cpu1 - cpu0) / 1e3 / requests, (wait1 - wait0) / 1e3 / requests,
               (switches1 - switches0) / requests)
        rows.append(row)
        print(f"| {number} | {row[0]:.0f} | {row[1]:.0f} | {row[2]:.0f} | {row[3]:.0f} | {row[4]:.3f} "
              f"| {row[5]:.3f} | {row[6]:.3f} | {row[7]:.1f} | {row[8]:.1f} | {row[9]:.3f} |")
    if not rows:
        sys.exit("bench-pairs: no pair measured")
    med = [statistics.median(column) for column in zip(*rows)]
    print(f"| median | {med[0]:.0f} | {med[1]:.0f} | {med[2]:.0f} | {med[3]:.0f} | {med[4]:.3f} "
          f"| **{med[5]:.3f}** | {med[6]:.3f} | {med[7]:.1f} | {med[8]:.1f} | {med[9]:.3f} |")
    ratio_of_sums = sum(r[3] for r in rows) / sum(r[0] for r in rows)
    print(f"\nHTTP / in-process over all pairs (sum of req/s): {ratio_of_sums:.3f}")


if __name__ == "__main__":
    main()
