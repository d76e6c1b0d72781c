"""Footprint of onnxd binaries, next to a Python + onnxruntime baseline in the same run.

For each binary and engine: start the daemon on the example config and model (HTTP on a free
port, MQTT off, WATCHDOG_USEC as the unit sets it) with its own NOTIFY_SOCKET, time start to
READY=1, let it settle, then read its RSS (VmRSS) and CPU time (utime + stime) over an idle
window. The baseline is what onnxd replaces: python3 loading the same model in an
onnxruntime InferenceSession and sleeping, measured the same way (start to session ready,
RSS, idle CPU).

    bench_footprint.py IDLE_SECONDS ROUNDS NAME=BINARY:ENGINE ...

Figures are medians over ROUNDS interleaved rounds.
"""
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def idle(pid, seconds):
    time.sleep(2)  # settle after ready
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return {"rss_mib": rss_kib(pid) / 1024, "idle_cpu_percent": 100 * (cpu_seconds(pid) - before) / seconds}


def repository(work, engine):
    """The example model with its sidecar's `engine` set to the one measured."""
    models = os.path.join(work, "models")
    shutil.copytree(os.path.join(ROOT, "models/digits"), os.path.join(models, "digits"))
    sidecar = os.path.join(models, "digits/model.toml")
    with open(sidecar) as f:
        text = f.read().replace('engine = "auto"', f'engine = "{engine}"')
    with open(sidecar, "w") as f:
        f.write(text)
    return models


def platform(port):
    """The engine serving the example model, from its KServe metadata."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/digits") as response:
        return json.load(response)["platform"]


def daemon(binary, engine, seconds):
    with tempfile.TemporaryDirectory() as work:
        port = free_port()
        notify = os.path.join(work, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(notify)
        sock.settimeout(120)
        env = dict(os.environ, NOTIFY_SOCKET=notify, WATCHDOG_USEC="30000000", RUST_LOG="warn",
                   ONNXD_HTTP__LISTEN=f"127.0.0.1:{port}", ONNXD_GRPC__LISTEN="", ONNXD_STATE_DIR=work,
                   ONNXD_REPOSITORY__PATH=repository(work, engine))
        started = time.monotonic()
        proc = subprocess.Popen([binary, "run", "-c", os.path.join(ROOT, "config/onnxd.toml")], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while b"READY=1" not in sock.recv(4096):
                pass
            result = {"ready_ms": 1000 * (time.monotonic() - started), "platform": platform(port)}
            result.update(idle(proc.pid, seconds))
            return result
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            sock.close()


BASELINE = """
import sys, time, onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = 0
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
print("ready", flush=True)
time.sleep(3600)
"""


def python_baseline(seconds):
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", BASELINE, os.path.join(ROOT, "models/digits/model.onnx")],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        result = {"ready_ms": 1000 * (time.monotonic() - started), "platform": "onnxruntime (Python)"}
        result.update(idle(proc.pid, seconds))
        return result
    finally:
        proc.kill()
        proc.wait()


def main():
    seconds, rounds = float(sys.argv[1]), int(sys.argv[2])
    builds = [("python3 + onnxruntime (baseline)", None, None)]
    for spec in sys.argv[3:]:
        name, target = spec.split("=", 1)
        binary, _, engine = target.partition(":")
        builds.append((name, binary, engine))
    runs = {name: [] for name, _, _ in builds}
    for _ in range(rounds):  # interleaved, so drifting load hits every build alike
        for name, binary, engine in builds:
            runs[name].append(python_baseline(seconds) if binary is None else daemon(binary, engine, seconds))
    median = lambda name, key: statistics.median(r[key] for r in runs[name])
    base = builds[0][0]
    print(f"| build | serving engine | binary MiB | start→READY ms | idle RSS MiB | RSS / baseline | "
          f"idle CPU % over {seconds:.0f} s |")
    print("|---|---|---|---|---|---|---|")
    for name, binary, _ in builds:
        size = f"{os.path.getsize(binary) / 2**20:.1f}" if binary else "—"
        print(f"| {name} | {runs[name][0]['platform']} | {size} | {median(name, 'ready_ms'):.0f} | "
              f"{median(name, 'rss_mib'):.1f} | {median(name, 'rss_mib') / median(base, 'rss_mib'):.2f} | "
              f"{median(name, 'idle_cpu_percent'):.3f} |")
    print(json.dumps(runs), file=sys.stderr)


if __name__ == "__main__":
    main()
