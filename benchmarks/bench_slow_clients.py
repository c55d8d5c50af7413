"""Slow-client benchmark: does ``/health`` still answer while slow clients hold connections?

    python benchmarks/bench_slow_clients.py [--levels 0,8,16,32] [--duration-s 15]
                                            [--upload-hours 8] [--upload-rounds 3]
                                            [--configs before,after] [--json out.json]

Starts its own nx-27017 on a free loopback port, then for each configuration in turn
starts the API under gunicorn on a free loopback port:

- ``before``: the command line of the earlier quick start,
  ``gunicorn --workers 2 --threads 4 --timeout 120`` (gthread workers);
- ``after``: ``gunicorn -c gunicorn.conf.py``, as ``./run.sh``, the tests and the
  container start it (api_process.ApiServer).

For each level (0, 8, 16, 32 by default; 0 shows the machine's own noise), that many slow
clients each open a connection,
send a request line and then one header line every 2–3 s, never finishing the head (a
"slowloris"). A client whose connection the server closes opens a new one at once, so
the pressure stays on for the whole ``--duration-s``. Meanwhile one probe client sends
``GET /health`` on a new connection every 0.2 s and records its latency; an answer
that takes more than ``--probe-timeout-s`` counts as a timeout. Prints a markdown table
of /health p50/p99/max per configuration and level, the number of timeouts, and how
many slow connections the server cut (its head timeout at work).

Then, per configuration, the cost of the change for real work: a synthetic
``--upload-hours`` recording (8 h, 114 MB) is posted ``--upload-rounds`` times to
``POST /api/v1/rooms/{room}/recordings`` (read, analysed and stored by the server) while
the probe keeps asking for /health every 0.05 s: upload wall time, and /health latency
while the analysis runs.

Bounded in time (levels x configs x duration), traffic to 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import http.client
import statistics
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tools import cpap_synth
from tools.api_process import ApiServer
from tools.local_mongo import LocalMongo, free_port
from tools.processes import stop_process, wait_http

ROOT = Path(__file__).resolve().parents[1]

#: Seconds between two header lines of a slow client (uniform in this range).
SLOW_LINE_GAP_S = (2.0, 3.0)
PROBE_INTERVAL_S = 0.2
UPLOAD_PROBE_INTERVAL_S = 0.05
#: The earlier quick start's gunicorn command line (launcher.py before gunicorn.conf.py).
BEFORE_ARGS = ["--workers", "2", "--threads", "4", "--timeout", "120"]


@dataclass
class Probe:
    latency_ms: list[float] = field(default_factory=list)
    timeouts: int = 0
    errors: int = 0


@dataclass
class SlowStats:
    connections: int = 0
    cut_by_server: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, opened: int = 0, cut: int = 0) -> None:
        with self.lock:
            self.connections += opened
            self.cut_by_server += cut


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def slow_client(port: int, number: int, stop: threading.Event, stats: SlowStats) -> None:
    """Keep one never-finished request head open until ``stop``; reconnect when cut."""
    rng = random.Random(number)
    while not stop.is_set():
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            stop.wait(0.2)
            continue
        stats.add(opened=1)
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            line = 0
            while not stop.wait(rng.uniform(*SLOW_LINE_GAP_S)):
                line += 1
                sock.sendall(f"X-Slow-{line}: {number}\r\n".encode())
                if _closed_by_peer(sock):
                    raise ConnectionResetError
        except OSError:
            stats.add(cut=1)
        finally:
            sock.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    """True when the server has closed (or answered and closed) this connection."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) is not None
    except BlockingIOError:
        return False
    finally:
        sock.setblocking(True)


def probe(port: int, stop: threading.Event, timeout_s: float, result: Probe,
          interval_s: float = PROBE_INTERVAL_S) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
            conn.request("GET", "/health")
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                result.latency_ms.append((time.perf_counter() - started) * 1000)
            else:
                result.errors += 1
        except (TimeoutError, socket.timeout):
            result.timeouts += 1
        except OSError:
            result.errors += 1
        stop.wait(max(0.0, interval_s - (time.perf_counter() - started)))


def run_level(port: int, clients: int, duration_s: float, probe_timeout_s: float) -> dict:
    stop = threading.Event()
    stats, result = SlowStats(), Probe()
    threads = [threading.Thread(target=slow_client, args=(port, n, stop, stats), daemon=True)
               for n in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # let every slow client connect and start trickling
    prober = threading.Thread(target=probe, args=(port, stop, probe_timeout_s, result))
    prober.start()
    time.sleep(duration_s)
    stop.set()
    prober.join()
    for thread in threads:
        thread.join(timeout=10)
    return {"clients": clients, "probes": len(result.latency_ms) + result.timeouts
            + result.errors, "p50_ms": percentile(result.latency_ms, 50),
            "p99_ms": percentile(result.latency_ms, 99),
            "max_ms": max(result.latency_ms, default=float("nan")),
            "timeouts": result.timeouts, "errors": result.errors,
            "slow_connections": stats.connections, "cut_by_server": stats.cut_by_server}


def run_uploads(port: int, recording: Path, rounds: int, probe_timeout_s: float) -> dict:
    """Post ``recording`` ``rounds`` times while probing /health; wall times and latency."""
    url = f"http://127.0.0.1:{port}/api/v1/rooms/7/recordings"
    walls_s, result, stop = [], Probe(), threading.Event()
    requests.post(url, files={"file": ("warm.txt", b"time\n")}, data={"mrn": 7},
                  timeout=60)  # loads the analysis stack once (a 4xx)
    prober = threading.Thread(target=probe, args=(port, stop, probe_timeout_s, result,
                                                  UPLOAD_PROBE_INTERVAL_S))
    prober.start()
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            with recording.open("rb") as data:
                answer = requests.post(url, files={"file": data},
                                       data={"mrn": 7, "cpap_pressure_cmh2o": 10}, timeout=300)
            answer.raise_for_status()
            walls_s.append(time.perf_counter() - started)
    finally:
        stop.set()
        prober.join()
    return {"uploads": rounds, "upload_median_s": statistics.median(walls_s),
            "upload_min_s": min(walls_s), "health_probes": len(result.latency_ms),
            "health_p50_ms": percentile(result.latency_ms, 50),
            "health_p99_ms": percentile(result.latency_ms, 99),
            "health_max_ms": max(result.latency_ms, default=float("nan")),
            "health_timeouts": result.timeouts}


class BeforeServer:
    """gunicorn with the earlier quick start's command line (no configuration file)."""

    def __init__(self, mongodb_uri: str, empty_config: Path):
        self.port = free_port()
        self.mongodb_uri = mongodb_uri
        self.empty_config = empty_config
        self.process: subprocess.Popen | None = None

    def __enter__(self):
        gunicorn = Path(sys.executable).with_name("gunicorn")
        env = dict(os.environ, MONGODB_URI=self.mongodb_uri)
        self.process = subprocess.Popen(
            # An empty --config: gunicorn would otherwise load ./gunicorn.conf.py ("after").
            [str(gunicorn), "--config", str(self.empty_config), *BEFORE_ARGS,
             "--bind", f"127.0.0.1:{self.port}", "--no-control-socket",
             "--log-level", "warning", "server:create_app()"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
        wait_http(f"http://127.0.0.1:{self.port}/health", self.process, "gunicorn", 30)
        return self

    def __exit__(self, *exc):
        stop_process(self.process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="0,8,16,32")  # 0: the machine's own noise
    parser.add_argument("--duration-s", type=float, default=15.0)
    parser.add_argument("--probe-timeout-s", type=float, default=5.0)
    parser.add_argument("--upload-hours", type=float, default=8.0)
    parser.add_argument("--upload-rounds", type=int, default=3)
    parser.add_argument("--configs", default="before,after")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",") if n]
    rows, uploads = [], []
    with tempfile.TemporaryDirectory() as tmp, \
            LocalMongo(data_dir=Path(tmp) / "db", port=free_port()) as database:
        empty_config = Path(tmp) / "empty.conf.py"
        empty_config.write_text("")
        recording, size_mb = Path(tmp) / "recording.txt", 0.0
        if args.upload_rounds:
            cpap_synth.write(recording, duration_s=args.upload_hours * 3600,
                             apnea_gaps_s=(15.0,))
            size_mb = recording.stat().st_size / 2**20
        for config in args.configs.split(","):
            server = (BeforeServer(database.uri(), empty_config) if config == "before"
                      else ApiServer(database.uri()))
            with server:
                for clients in levels:
                    row = {"config": config, **run_level(server.port, clients,
                                                         args.duration_s,
                                                         args.probe_timeout_s)}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                if args.upload_rounds:
                    row = {"config": config, **run_uploads(server.port, recording,
                                                           args.upload_rounds,
                                                           args.probe_timeout_s)}
                    uploads.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    names = {"before": "2 workers x 4 gthreads (before)", "after": "gunicorn.conf.py (after)"}
    print(f"\n/health latency under slow-header clients ({args.duration_s:.0f} s per level, "
          f"a probe every {PROBE_INTERVAL_S} s, timeout {args.probe_timeout_s:.0f} s; "
          f"load average {os.getloadavg()[0]:.1f})\n")
    print("| gunicorn | slow clients | probes | p50 ms | p99 ms | max ms | timeouts "
          "| slow connections opened / cut by the server |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {names.get(row['config'], row['config'])} | {row['clients']} "
              f"| {row['probes']} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} "
              f"| {row['max_ms']:.1f} | {row['timeouts']} "
              f"| {row['slow_connections']} / {row['cut_by_server']} |")
    if uploads:
        print(f"\nRaw recording uploads ({args.upload_hours:g} h, {size_mb:.0f} MB, analysed by "
              f"the server) with /health probed every {UPLOAD_PROBE_INTERVAL_S} s\n")
        print("| gunicorn | uploads | upload median / min s | /health probes "
              "| /health p50 / p99 / max ms | timeouts |")
        print("|---|---:|---:|---:|---:|---:|")
        for row in uploads:
            print(f"| {names.get(row['config'], row['config'])} | {row['uploads']} "
                  f"| {row['upload_median_s']:.2f} / {row['upload_min_s']:.2f} "
                  f"| {row['health_probes']} | {row['health_p50_ms']:.1f} / "
                  f"{row['health_p99_ms']:.1f} / {row['health_max_ms']:.1f} "
                  f"| {row['health_timeouts']} |")
    if args.json:
        args.json.write_text(json.dumps({"slow_clients": rows, "uploads": uploads}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
