"""Driver of scripts/bench-engine (see there). Each round runs onnxruntime-Python's
session.run and `onnxd bench` (in-process, end to end through the inference thread) on the
same model, input and intra-op thread count; rounds alternate so machine noise hits both.
The ratio is onnxd p50 / Python p50 per round; the reported figure is the median ratio."""
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort

BIN = os.environ["ONNXDTEST_BIN"]
FIXTURES = os.environ["ONNXDTEST_FIXTURES"]
MODELS = [("digits (example)", "models/digits/model.onnx", "image", (1, 1, 8, 8), 20000),
          ("cnn (mid-size)", os.path.join(FIXTURES, "cnn.onnx"), "x", (1, 3, 96, 96), 400)]
ROUNDS = int(os.environ.get("ROUNDS", "5"))


def synthetic(shape):
    """The same inputs `onnxd bench` synthesises (its LCG, floats in [-1, 1))."""
    state = 0x2545F491
    out = np.empty(int(np.prod(shape)), dtype=np.float32)
    for i in range(out.size):
        state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out[i] = (state >> 33) / float(1 << 31) * 2.0 - 1.0
    return out.reshape(shape)


def python_p50(path, name, shape, count, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {name: synthetic(shape)}
    for _ in range(10):
        session.run(None, feed)
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times), statistics.mean(times)


def onnxd_p50(path, count, threads):
    out = subprocess.run([BIN, "bench", path, "--engine", "ort", "--threads", str(threads),
                          "--count", str(count), "--json"], check=True, capture_output=True, text=True)
    report = json.loads(out.stdout)
    return report["latency_us"]["p50"], report["latency_us"]["mean"], report["compute_us"]["p50"]


def idle_cpu(seconds=10):
    log = open("/tmp/onnxd-bench-idle.log", "w+")
    proc = subprocess.Popen([BIN, "run", "-c", "config/onnxd.toml"], stderr=log,
                            env=dict(os.environ, RUST_LOG="info,ort=warn"))
    while "onnxd ready" not in open(log.name).read():
        if proc.poll() is not None:
            sys.exit(f"onnxd run exited: {open(log.name).read()}")
        time.sleep(0.1)
    time.sleep(2)
    tick = os.sysconf("SC_CLK_TCK")

    def cpu():
        fields = open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    c0, t0 = cpu(), time.monotonic()
    time.sleep(seconds)
    used = cpu() - c0
    wall = time.monotonic() - t0
    threads = len(os.listdir(f"/proc/{proc.pid}/task"))
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    return used / wall * 100, threads


def main():
    print(f"onnxruntime {ort.__version__}, {os.cpu_count()} cores, {ROUNDS} interleaved rounds")
    print("| model | intra threads | Python p50 µs | onnxd p50 µs | onnxd engine-only p50 µs | ratio (median of rounds) |")
    print("|---|---|---|---|---|---|")
    for label, path, name, shape, count in MODELS:
        for threads in (1, 2):
            ratios, py, od, comp = [], [], [], []
            for _ in range(ROUNDS):
                p50_py, _ = python_p50(path, name, shape, count, threads)
                p50_od, _, c50 = onnxd_p50(path, count, threads)
                ratios.append(p50_od / p50_py)
                py.append(p50_py)
                od.append(p50_od)
                comp.append(c50)
            print(f"| {label} | {threads} | {statistics.median(py):.1f} | {statistics.median(od):.1f} | "
                  f"{statistics.median(comp):.1f} | {statistics.median(ratios):.3f} |")
            sys.stdout.flush()
    cpu, threads = idle_cpu()
    print(f"\nidle daemon (example config, digits loaded in ONNX Runtime): {cpu:.2f}% of one core over 10 s, {threads} threads")


if __name__ == "__main__":
    main()
