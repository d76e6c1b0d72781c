"""Driver of scripts/soak (see there): runs `onnxd run` (release build) for a set time under
mixed load with faults injected, then checks what an unattended edge daemon must keep.

Load: HTTP KServe requests (one client, back to back), MQTT 5 requests at QoS 1 (response
topic + correlation data, persistent session), and a camera (a 10 s clip it made, played in
real time and looped: a `file://` source) whose results go to MQTT. Faults, by the schedule
below (`--scale` shrinks every interval for a short debugging run): a new model version every
minute, a broken version every 5 minutes, SIGHUP every 10 minutes, a mosquitto restart every
10 minutes (5 minutes apart from the SIGHUPs), one `kill -9` of the daemon and a restart
halfway.

Checks at the end: every MQTT request got a response with the right numbers (0 lost;
duplicates are counted, they are allowed at QoS 1); every HTTP request succeeded with the
right numbers except in the kill window (kill until the restarted daemon is ready, + 2 s);
camera results arrived; RSS, threads and open files, sampled every 10 s, stayed flat
(FLAT_LIMITS) over each process's life after a warm-up when that is 10 minutes or more, their
slopes per hour reported; the outbox drained (its records gauge 0); SIGTERM exits 0. Writes a
JSON report and prints a Markdown summary; exit 1 when a check fails.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WARMUP_S = 120  # samples of a process's first minutes are left out of the slopes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto on a free port with persistence (its own user needs to write the folder)."""

    def __init__(self, root):
        self.port = free_port()
        self.dir = os.path.join(root, "broker")
        os.makedirs(self.dir, exist_ok=True)
        if os.geteuid() == 0:  # mosquitto started as root drops to its own user
            shutil.chown(self.dir, "mosquitto", "mosquitto")
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        with open(self.conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
                    f"persistence true\npersistence_location {self.dir}/\nautosave_interval 30\n"
                    f"max_queued_messages 100000\n")
        self.proc = None
        self.restarts = 0

    def start(self):
        self.proc = subprocess.Popen(["mosquitto", "-c", self.conf], stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "log"), "a"))
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def restart(self):
        self.stop()
        self.start()
        self.restarts += 1

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None


class Daemon:
    """`onnxd run` on the soak's config; its log appended to one file across restarts."""

    def __init__(self, binary, config, root, http_port):
        self.binary, self.config, self.root = binary, config, root
        self.base = f"http://127.0.0.1:{http_port}"
        self.log = open(os.path.join(root, "onnxd.log"), "ab")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([self.binary, "run", "-c", self.config], stdout=self.log, stderr=self.log)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.base + "/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError("onnxd did not become ready (see onnxd.log)")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self):
        self.proc.terminate()
        return self.proc.wait(timeout=120)


class Repository:
    """The served model `soak` (a new version every minute) and the camera's `digits`."""

    def __init__(self, root, fixtures, repo):
        self.path = os.path.join(root, "models")
        self.good = os.path.join(fixtures, "dynamic_batch.onnx")
        self.broken = [os.path.join(fixtures, n) for n in ("corrupt.onnx", "truncated.onnx", "not_onnx.onnx")]
        self.model = os.path.join(self.path, "soak")
        os.makedirs(self.model)
        self.version = 0
        self.new_version(self.good)
        shutil.copytree(os.path.join(repo, "models/digits"), os.path.join(self.path, "digits"))
        self.published = {"good": 0, "broken": 0}

    def new_version(self, source):
        self.version += 1
        staging = os.path.join(self.model, f"{self.version}.tmp")
        os.makedirs(staging)
        shutil.copy(source, os.path.join(staging, "model.onnx"))
        os.rename(staging, os.path.join(self.model, str(self.version)))
        for old in os.listdir(self.model):
            if old.isdigit() and int(old) < self.version - 3:
                shutil.rmtree(os.path.join(self.model, old))

    def good_version(self):
        self.new_version(self.good)
        self.published["good"] += 1

    def broken_version(self):
        self.new_version(self.broken[self.published["broken"] % len(self.broken)])
        self.published["broken"] += 1


class Http(threading.Thread):
    """One client sending KServe requests back to back (at most `rate` a second)."""

    def __init__(self, base, request, expected, rate):
        super().__init__(daemon=True)
        self.url = base + "/v2/models/soak/infer"
        self.body = json.dumps(request).encode()
        self.expected = expected
        self.period = 1.0 / rate
        self.results = []  # (time, ok, detail)
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            started = time.time()
            try:
                req = urllib.request.Request(self.url, self.body, {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=30) as r:
                    body = json.loads(r.read())
                    got = body["outputs"][0]["data"]
                    ok = r.status == 200 and len(got) == len(self.expected) and all(
                        abs(g - e) <= 1e-4 + 1e-4 * abs(e) for g, e in zip(got, self.expected))
                    self.results.append((started, ok, "" if ok else str(body)[:200]))
            except Exception as e:  # refused connection, timeout, 5xx
                self.results.append((started, False, str(e)[:200]))
            self.stopping.wait(max(0.0, self.period - (time.time() - started)))


class Mqtt:
    """Publishes QoS 1 requests with a response topic and correlation data; matches replies."""

    def __init__(self, port, request, expected, rate):
        self.port, self.rate, self.expected = port, rate, expected
        self.body = json.dumps(request).encode()
        self.sent = {}  # id -> time
        self.replies = {}  # id -> count
        self.errors = {}
        self.camera_results = 0
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-requester",
                                  protocol=mqtt.MQTTv5)
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(100)
        self.client.reconnect_delay_set(0.2, 2)
        self.client.on_connect = self.on_connect
        self.client.on_message = self.on_message
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.publish_loop, daemon=True)

    def start(self):
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 7200
        self.client.connect("127.0.0.1", self.port, clean_start=False, properties=props)
        self.client.loop_start()
        self.thread.start()

    def on_connect(self, client, userdata, flags, reason, properties):
        client.subscribe([("soak/replies", 1), ("onnxd/soak/cameras/+/result", 0)])

    def on_message(self, client, userdata, msg):
        if msg.topic != "soak/replies":
            with self.lock:
                self.camera_results += 1
            return
        cid = msg.properties.CorrelationData.decode() if hasattr(msg.properties, "CorrelationData") else None
        body = json.loads(msg.payload)
        problem = body.get("error")
        if problem is None:
            got = body["outputs"][0]["data"]
            if len(got) != len(self.expected) or any(abs(g - e) > 1e-4 + 1e-4 * abs(e)
                                                      for g, e in zip(got, self.expected)):
                problem = f"wrong outputs {got}"
        with self.lock:
            self.replies[cid] = self.replies.get(cid, 0) + 1
            if problem is not None:
                self.errors[cid] = problem

    def publish_loop(self):
        n = 0
        while not self.stopping.is_set():
            n += 1
            cid = f"r{n}"
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "soak/replies"
            props.CorrelationData = cid.encode()
            with self.lock:
                self.sent[cid] = time.time()
            self.client.publish("onnxd/soak/models/soak/infer", self.body, qos=1, properties=props)
            self.stopping.wait(1.0 / self.rate)

    def lost(self):
        with self.lock:
            return [c for c in self.sent if c not in self.replies]

    def stop(self):
        self.stopping.set()
        self.thread.join()


def sample(pid):
    status = open(f"/proc/{pid}/status").read()
    field = lambda k: int(next(l.split()[1] for l in status.splitlines() if l.startswith(k)))
    return {"t": time.time(), "pid": pid, "rss_kb": field("VmRSS:"), "threads": field("Threads:"),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def slope(points):
    """Least-squares slope per hour of (t, value) points."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return 3600 * sum((t - mt) * (v - mv) for t, v in points) / den if den else None


# What "flat" allows over a process's life after its warm-up (checked when that is at least
# FLAT_MIN_S long): the last samples against the first ones, each side the median of 5.
FLAT_MIN_S = 600
FLAT_LIMITS = {"rss_kb": 32 * 1024, "threads": 4, "fds": 8}


def growth(steady):
    """The resources that grew past FLAT_LIMITS over `steady` samples: {name: (first, last)}."""
    if len(steady) < 10 or steady[-1]["t"] - steady[0]["t"] < FLAT_MIN_S:
        return {}
    median = lambda xs: sorted(xs)[len(xs) // 2]
    grown = {}
    for key, limit in FLAT_LIMITS.items():
        first, last = median([s[key] for s in steady[:5]]), median([s[key] for s in steady[-5:]])
        if last - first > limit:
            grown[key] = (first, last)
    return grown


def metric(base, name):
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def write_config(root, http_port, broker_port, clip):
    config = os.path.join(root, "onnxd.toml")
    with open(config, "w") as f:
        f.write(f"""node_id = "soak"
state_dir = "state"
log = "info"
[repository]
path = "models"
settle_ms = 500
[http]
listen = "127.0.0.1:{http_port}"
[mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
[[camera]]
name = "cam"
source = "file://{clip}"
model = "digits"
fps = 5
stall_secs = 20
""")
    return config


def make_clip(root, seconds):
    clip = os.path.join(root, "clip.mkv")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"testsrc=size=64x64:rate=5:duration={int(seconds)}", "-c:v", "mjpeg", "-q:v", "5", clip],
                   check=True)
    return clip


class Schedule:
    """The fault schedule: (interval, offset, name) scaled by `scale`."""

    def __init__(self, duration, scale):
        self.events = [(60 * scale, 60 * scale, "version"), (300 * scale, 150 * scale, "broken"),
                       (600 * scale, 300 * scale, "sighup"), (600 * scale, 600 * scale, "broker")]
        self.kill_at = duration / 2 + 30 * scale
        self.next = {name: offset for _, offset, name in self.events}

    def due(self, elapsed):
        for interval, _, name in self.events:
            if elapsed >= self.next[name]:
                self.next[name] += interval
                yield name


def run(args):
    root = tempfile.mkdtemp(prefix="onnxd-soak-")
    os.chmod(root, 0o755)  # the broker's user reaches its folder inside
    request = json.load(open(os.path.join(args.fixtures, "dynamic_batch.request.json")))
    expected = json.load(open(os.path.join(args.fixtures, "dynamic_batch.expected.json")))["outputs"][0]["data"]
    broker = Broker(root)
    broker.start()
    repo = Repository(root, args.fixtures, args.repo)
    http_port = free_port()
    config = write_config(root, http_port, broker.port, make_clip(root, 10))
    daemon = Daemon(args.binary, config, root, http_port)
    daemon.start()
    http = Http(daemon.base, request, expected, args.rate)
    requester = Mqtt(broker.port, request, expected, args.rate)
    http.start()
    requester.start()
    schedule = Schedule(args.duration, args.scale)
    samples, events, kill_window = [], [], None
    started = time.time()
    next_sample = started
    while (elapsed := time.time() - started) < args.duration:
        for name in schedule.due(elapsed):
            events.append((round(elapsed), name))
            if name == "version":
                repo.good_version()
            elif name == "broken":
                repo.broken_version()
            elif name == "sighup":
                daemon.signal(signal.SIGHUP)
            elif name == "broker":
                broker.restart()
        if kill_window is None and elapsed >= schedule.kill_at:
            killed = time.time()
            daemon.kill9()
            daemon.start()
            kill_window = (killed, time.time() + 2)
            events.append((round(elapsed), "kill -9 + restart"))
        if time.time() >= next_sample:
            samples.append(sample(daemon.proc.pid))
            next_sample += 10
        time.sleep(0.2)
    http.stopping.set()
    http.join()
    requester.stop()
    deadline = time.time() + 120
    while requester.lost() and time.time() < deadline:
        time.sleep(0.5)
    outbox = None
    deadline = time.time() + 60
    while time.time() < deadline:
        outbox = metric(daemon.base, "onnxd_mqtt_outbox_records")
        if outbox == 0:
            break
        time.sleep(1)
    samples.append(sample(daemon.proc.pid))
    exit_code = daemon.stop()
    requester.client.loop_stop()
    broker.stop()
    return report(args, root, http, requester, samples, events, kill_window, outbox, exit_code, broker, repo)


def report(args, root, http, requester, samples, events, kill_window, outbox, exit_code, broker, repo):
    in_kill = lambda t: kill_window is not None and kill_window[0] <= t <= kill_window[1]
    http_failed = [r for r in http.results if not r[1] and not in_kill(r[0])]
    http_kill = [r for r in http.results if not r[1] and in_kill(r[0])]
    lost = requester.lost()
    duplicates = sum(c - 1 for c in requester.replies.values() if c > 1)
    slopes = {}
    for pid in sorted({s["pid"] for s in samples}):
        life = [s for s in samples if s["pid"] == pid]
        steady = [s for s in life if s["t"] - life[0]["t"] >= WARMUP_S * min(1.0, args.scale)]
        slopes[pid] = {k: slope([(s["t"], s[k]) for s in steady]) for k in ("rss_kb", "threads", "fds")}
        slopes[pid]["minutes"] = round((life[-1]["t"] - life[0]["t"]) / 60, 1)
        slopes[pid]["growth"] = growth(steady)
        slopes[pid]["first"] = {k: life[0][k] for k in ("rss_kb", "threads", "fds")}
        slopes[pid]["last"] = {k: life[-1][k] for k in ("rss_kb", "threads", "fds")}
    result = {
        "duration_s": args.duration, "scale": args.scale, "workdir": root, "events": events,
        "http": {"requests": len(http.results), "failed_outside_kill": len(http_failed),
                 "failed_in_kill_window": len(http_kill), "examples": [r[2] for r in http_failed[:5]]},
        "mqtt": {"requests": len(requester.sent), "answered": len(requester.replies), "lost": len(lost),
                 "lost_ids": lost[:20], "duplicates": duplicates, "error_replies": len(requester.errors),
                 "error_examples": list(requester.errors.values())[:5], "camera_results": requester.camera_results},
        "versions": repo.published, "broker_restarts": broker.restarts,
        "outbox_records_at_end": outbox, "exit_code": exit_code, "slopes_per_hour": slopes,
        "kill_window_s": None if kill_window is None else round(kill_window[1] - kill_window[0], 1),
    }
    with open(args.report, "w") as f:
        json.dump({**result, "samples": samples}, f, indent=1)
    grown = {pid: s["growth"] for pid, s in slopes.items() if s["growth"]}
    result["grown"] = grown
    ok = (not lost and not http_failed and outbox == 0 and exit_code == 0 and requester.camera_results > 0
          and not requester.errors and not grown)
    print(markdown(result, ok))
    return 0 if ok else 1


def markdown(r, ok):
    lines = [f"Soak of {r['duration_s'] / 60:.0f} min (scale {r['scale']}): {'PASS' if ok else 'FAIL'}", "",
             "| check | result |", "|---|---|",
             f"| MQTT requests (QoS 1) | {r['mqtt']['requests']} sent, {r['mqtt']['lost']} lost, "
             f"{r['mqtt']['duplicates']} duplicate replies, {r['mqtt']['error_replies']} error replies |",
             f"| HTTP requests | {r['http']['requests']}, {r['http']['failed_outside_kill']} failed outside the kill "
             f"window, {r['http']['failed_in_kill_window']} in it ({r['kill_window_s']} s) |",
             f"| camera results | {r['mqtt']['camera_results']} |",
             f"| model versions | {r['versions']['good']} good, {r['versions']['broken']} broken |",
             f"| broker restarts / SIGHUPs | {r['broker_restarts']} / "
             f"{sum(1 for _, e in r['events'] if e == 'sighup')} |",
             f"| outbox records at the end | {r['outbox_records_at_end']} |",
             f"| exit status (SIGTERM) | {r['exit_code']} |",
             f"| RSS / threads / open files grown past the limits | {r['grown'] or 'none'} |", "",
             "| process | minutes | RSS first → last (MiB), slope/h | threads first → last, slope/h "
             "| open files first → last, slope/h |", "|---|---|---|---|---|"]
    fmt = lambda v, scale=1: "n/a" if v is None else f"{v / scale:+.2f}"
    for i, (pid, s) in enumerate(r["slopes_per_hour"].items()):
        lines.append(f"| {'first' if i == 0 else 'after kill -9'} | {s['minutes']} | "
                     f"{s['first']['rss_kb'] / 1024:.0f} → {s['last']['rss_kb'] / 1024:.0f}, {fmt(s['rss_kb'], 1024)} | "
                     f"{s['first']['threads']} → {s['last']['threads']}, {fmt(s['threads'])} | "
                     f"{s['first']['fds']} → {s['last']['fds']}, {fmt(s['fds'])} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=3600)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=10)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--fixtures", required=True)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--report", required=True)
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
