"""Benchmark: hostile recordings and concurrent large uploads through the API (issue #11,
items 1 and 4), for one or more checkouts in the same run (before / after).

    python benchmarks/bench_hostile.py [--code DIR ...] [--part hostile large]
                                       [--timeout-s 20] [--uploads 8] [--hours 14] [--threads 1]

``--code``: the checkouts whose API (``server.py``, ``cpap_measurements.py``) is measured,
e.g. ``--code /work/main .`` for before and after; default: this one. Every server is
gunicorn with that checkout's ``gunicorn.conf.py`` in that checkout's folder (this checkout's
``tools.api_process.ApiServer``) on a free 127.0.0.1 port, with nx-27017 (``LocalMongo``) in a
temporary directory; nothing leaves the machine, and every process started is stopped.

``hostile``: each hostile shape (one huge line, millions of fields, no line ends, huge
numbers, CR-only, NUL bytes, a giant line after valid data) is posted to a fresh
one-worker server (after a small valid recording, which loads the analysis stack):
answer, wall time (client side, at most ``--timeout-s``; a worker still busy then is
killed with its server), the worker's resident memory before and its peak (``VmHWM``).
Then ``analyze()`` of each shape from a file and from memory, each in a fresh interpreter
under the same time bound, with its peak memory.

``large``: ``--uploads`` concurrent uploads of one ``--hours`` recording (cpap_synth; 14 h
is 191 MiB, just under the 200 MiB upload limit) to a server of two workers (``--threads``
each, through GUNICORN_CMD_ARGS), while a client
times ``GET /health`` every 0.5 s. A station retries a 503 or a reset connection after 5 s
(Retry-After; at most ``MAX_ATTEMPTS`` tries). Reported: answers, time until all are stored, /health p50 / p95 /
max latency, each worker's peak memory, the peak of all workers' memory at one moment (what
the host must have), and each worker's resident memory 3 s after the last upload.
"""
from __future__ import annotations

import argparse
import io
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tools.api_process import ApiServer
from tools.cpap_synth import HEADER, SynthConfig, write
from tools.local_mongo import LocalMongo, free_port

ROOT = Path(__file__).resolve().parents[1]

HEALTH_PERIOD_S = 0.5
RSS_PERIOD_S = 0.1
IDLE_AFTER_S = 3.0
MAX_ATTEMPTS = 40
MB = 1024 * 1024


def samples(n: int, t0_s: float = 0.0) -> bytes:
    return b"".join(b"%.2f,5000,5000,1638,5150,5150,1638\n" % (t0_s + i / 100) for i in range(n))


def hostile_shapes() -> dict:
    """name: content. Every one is refused (422) by the fixed reader."""
    header = HEADER.encode() + b"\n"
    valid = header + samples(60_000)  # 10 minutes, 2 MB
    return {
        "`1,` x 5 M after a header (10 MB)": header + b"1," * 5_000_000 + b"\n" + samples(1000),
        "`1,` x 5 M, no header (10 MB)": b"1," * 5_000_000,
        "`,` x 10 M (10 MB)": b"," * 10**7,
        "header + one 100 MB line of fields": header + b"1," * 50_000_000,
        "one 100 MB number, no line end": b"1" * 100_000_000,
        "no line ends, sample-like text (10 MB)": b"0.00,5000,5000,1638,5150,5150,1638 " * 300_000,
        "1 MB header line": b"T" * 1_000_000 + b"\n" + samples(1000),
        "20,000-digit numbers (12 MB)": header + b"".join(
            b"%d.00,%s,5000,1638,5150,5150,1638\n" % (i, b"9" * 20_000) for i in range(600)),
        "CR-only line ends (10 MB)": valid.replace(b"\n", b"\r") * 5,
        "valid 10 min + 10 MB of NUL bytes": valid + b"\x00" * 10_000_000,
        "valid 10 min + 10 MB line + valid": valid + b"1," * 5_000_000 + b"\n" + samples(1000, 600.0),
        "16 KB lines of commas (192 MB)": (b"," * 16_000 + b"\n") * 12_000,
    }


# --- processes -------------------------------------------------------------------------------
def proc_status_mb(pid: int, key: str) -> float:
    """``VmRSS`` or ``VmHWM`` of a process, MB (nan when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(key + ":")) / 1024
    except (OSError, StopIteration):
        return float("nan")


def worker_pids(master_pid: int) -> list[int]:
    try:
        with open(f"/proc/{master_pid}/task/{master_pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def start_api(code: Path, mongo: LocalMongo, workers: int, lock_dir: str, threads: int = 1):
    env = {"API_ANALYSIS_LOCK_DIR": lock_dir}
    if threads > 1:  # gunicorn reads extra options from the environment
        env["GUNICORN_CMD_ARGS"] = f"--threads {threads}"
    api = ApiServer(mongodb_uri=mongo.uri(database=f"b{uuid.uuid4().hex[:10]}"), workers=workers,
                    extra_env=env, root=code)
    return api.start(timeout_s=60)


def stop_api(api) -> None:
    """Stop the server; kill its process group too, so a worker stuck in a parse dies."""
    pgid = api.process.pid if api.process else None
    api.stop(timeout_s=5)
    if pgid:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- requests ------------------------------------------------------------------------------
class MultipartBody:
    """A multipart/form-data body streamed from a file or bytes, with its length known
    (so it is sent with Content-Length and never built in memory). Deliberately no
    ``tell``: requests would take a failing one for an unknown length and send chunked."""

    def __init__(self, fields: dict, content, boundary: str):
        head = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                       for k, v in fields.items())
        head += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="recording.txt"\r\nContent-Type: text/plain\r\n\r\n')
        tail = f"\r\n--{boundary}--\r\n".encode()
        middle = open(content, "rb") if isinstance(content, Path) else io.BytesIO(content)
        size = content.stat().st_size if isinstance(content, Path) else len(content)
        self._parts = [io.BytesIO(head.encode()), middle, io.BytesIO(tail)]
        self._length = len(head.encode()) + size + len(tail)

    def __len__(self) -> int:
        return self._length

    def read(self, n: int = -1) -> bytes:
        out = b""
        while self._parts and (n < 0 or len(out) < n):
            chunk = self._parts[0].read(-1 if n < 0 else n - len(out))
            if not chunk:
                self._parts.pop(0).close()
                continue
            out += chunk
        return out


def post_recording(url: str, room: int, content, timeout_s: float):
    """(status, JSON body or None, seconds, headers); status None on a timeout."""
    boundary = uuid.uuid4().hex
    body = MultipartBody({"mrn": 1000 + room, "cpap_pressure_cmh2o": 9, "name": f"Bench {room}"},
                         content, boundary)
    start = time.perf_counter()
    try:
        resp = requests.post(f"{url}/api/v1/rooms/{room}/recordings", data=body, timeout=timeout_s,
                             headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    except requests.exceptions.Timeout:
        return None, None, time.perf_counter() - start, {}
    except requests.exceptions.ConnectionError as exc:
        return "conn", {"message": str(exc)[:80]}, time.perf_counter() - start, {}
    try:
        payload = resp.json()
    except ValueError:
        payload = None
    return resp.status_code, payload, time.perf_counter() - start, resp.headers


# --- hostile shapes -------------------------------------------------------------------------
# Run with the measured checkout as the working folder: ``python -c`` imports from there first.
ANALYZE_CHILD = """
import time
import cpap_measurements as cm
source = {path!r}
if {from_memory!r}:
    source = open(source, "rb").read()
start = time.perf_counter()
try:
    cm.analyze(source)
    outcome = "analysed"
except cm.CpapFileError as exc:
    outcome = str(exc)[:60]
wall = time.perf_counter() - start
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(f"{{wall:.3f}}\\t{{hwm / 1024:.0f}}\\t{{outcome}}")
"""


def analyze_in_child(code: Path, path: Path, from_memory: bool, timeout_s: float) -> str:
    """'wall s / peak MB: outcome' of analyze() in a fresh interpreter, bounded in time."""
    child = subprocess.Popen([sys.executable, "-c", ANALYZE_CHILD.format(
        path=str(path), from_memory=from_memory)], cwd=code,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    peak = 0.0
    deadline = time.monotonic() + timeout_s
    while child.poll() is None and time.monotonic() < deadline:
        peak = max(peak, proc_status_mb(child.pid, "VmHWM") or 0.0)
        time.sleep(RSS_PERIOD_S)
    if child.poll() is None:
        peak = max(peak, proc_status_mb(child.pid, "VmHWM") or 0.0)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        return f"> {timeout_s:.0f} s (killed) / {peak:.0f} MB"
    wall, hwm, outcome = child.stdout.read().strip().split("\t", 2)
    return f"{float(wall):.2f} s / {float(hwm):.0f} MB: {outcome}"


def bench_hostile(codes, mongo, args, tmp: Path) -> None:
    shapes = hostile_shapes()
    warm = HEADER.encode() + b"\n" + samples(1000)
    print("\n### Hostile recordings through the API (one gunicorn worker, fresh per shape)\n")
    print("| shape | size (MB) | code | answer | wall (s) | worker RSS before / peak (MB) |")
    print("|---|---:|---|---|---:|---:|")
    for name, content in shapes.items():
        for code in codes:
            api = start_api(code, mongo, 1, str(tmp / "slots"))
            try:
                post_recording(api.url, 1, warm, 60)  # loads the analysis stack
                (worker,) = worker_pids(api.process.pid)
                before = proc_status_mb(worker, "VmRSS")
                status, body, wall_s, _ = post_recording(api.url, 2, content, args.timeout_s)
                peak = proc_status_mb(worker, "VmHWM")
            finally:
                stop_api(api)
            answer = (f"no answer in {args.timeout_s:.0f} s" if status is None else
                      f"{status} {(body or {}).get('message', '')[:48]}")
            print(f"| {name} | {len(content) / MB:.1f} | {code.name} | {answer} | "
                  f"{wall_s:.2f} | {before:.0f} / {peak:.0f} |", flush=True)

    print("\n### analyze() of each shape in a fresh interpreter (wall / peak RSS: outcome)\n")
    print("| shape | code | from a file | from memory |")
    print("|---|---|---|---|")
    for name, content in shapes.items():
        path = tmp / "shape.txt"
        path.write_bytes(content)
        for code in codes:
            cells = [analyze_in_child(code, path, memory, args.timeout_s) for memory in (False, True)]
            print(f"| {name} | {code.name} | {cells[0]} | {cells[1]} |", flush=True)


# --- large uploads -----------------------------------------------------------------------------
def percentile(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


class Sampler(threading.Thread):
    """Every worker's resident memory every RSS_PERIOD_S (workers may be replaced)."""

    def __init__(self, master_pid: int):
        super().__init__(daemon=True)
        self.master_pid, self.peak_mb, self.stop = master_pid, {}, threading.Event()
        self.peak_total_mb = 0.0  # all workers at the same moment

    def run(self) -> None:
        while not self.stop.is_set():
            total = 0.0
            for pid in worker_pids(self.master_pid):
                rss = proc_status_mb(pid, "VmRSS")
                if rss == rss:  # not nan
                    self.peak_mb[pid] = max(self.peak_mb.get(pid, 0.0), rss)
                    total += rss
            self.peak_total_mb = max(self.peak_total_mb, total)
            time.sleep(RSS_PERIOD_S)


class HealthProbe(threading.Thread):
    """GET /health on a fixed 0.5 s schedule; each latency in s (a late answer delays
    the next probe: the latency is what a health check would see)."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.latency_s, self.failures, self.stop = url, [], 0, threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        with requests.Session() as http:
            while not self.stop.is_set():
                start = time.perf_counter()
                try:
                    ok = http.get(f"{self.url}/health", timeout=120).status_code == 200
                except requests.RequestException:
                    ok = False
                self.latency_s.append(time.perf_counter() - start)
                self.failures += not ok
                next_at = max(next_at + HEALTH_PERIOD_S, time.monotonic())
                self.stop.wait(next_at - time.monotonic())


def upload_with_retries(url: str, room: int, path: Path, timeout_s: float):
    """A station: post, and after a 503 (or a connection reset) wait its Retry-After (5 s)
    and post again."""
    statuses = []
    for _ in range(MAX_ATTEMPTS):
        status, _, _, headers = post_recording(url, room, path, timeout_s)
        statuses.append(status)
        if status not in (503, "conn"):
            break
        time.sleep(float(headers.get("Retry-After", 5)))
    return statuses, time.monotonic()


def bench_large(codes, mongo, args, tmp: Path) -> None:
    path = tmp / "large.txt"
    write(path, SynthConfig(duration_s=args.hours * 3600, rate_bpm=15, apnea_gaps_s=(15.0, 25.0),
                            seed=5))
    size_mb = path.stat().st_size / MB
    print(f"\n### {args.uploads} concurrent uploads of a {args.hours:g} h recording ({size_mb:.0f} MB), "
          f"2 gunicorn workers x {args.threads} thread(s), GET /health every {HEALTH_PERIOD_S} s\n")
    print("| code | answers (all attempts) | all stored after (s) | /health p50 / p95 / max (s) | "
          "/health probes (failed) | worker peak RSS (MB) | all workers at once, peak (MB) | "
          "worker RSS 3 s after (MB) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for code in codes:
        api = start_api(code, mongo, 2, str(tmp / "slots"), args.threads)
        try:
            sampler, probe = Sampler(api.process.pid), HealthProbe(api.url)
            sampler.start()
            probe.start()
            time.sleep(1.0)  # a few idle probes first
            start = time.monotonic()
            with ThreadPoolExecutor(args.uploads) as pool:
                runs = list(pool.map(lambda room: upload_with_retries(api.url, room, path, 600),
                                     range(1, args.uploads + 1)))
            done_s = max(t for _, t in runs) - start
            time.sleep(IDLE_AFTER_S)
            after = [proc_status_mb(pid, "VmRSS") for pid in worker_pids(api.process.pid)]
            probe.stop.set()
            sampler.stop.set()
            probe.join()
            sampler.join()
        finally:
            stop_api(api)
        answers = {}
        for statuses, _ in runs:
            for s in statuses:
                answers[s] = answers.get(s, 0) + 1
        lat = probe.latency_s
        print(f"| {code.name} | {', '.join(f'{k} x{v}' for k, v in sorted(answers.items(), key=str))} | "
              f"{done_s:.1f} | {statistics.median(lat):.3f} / {percentile(lat, 95):.3f} / {max(lat):.3f} | "
              f"{len(lat)} ({probe.failures}) | {' + '.join(f'{v:.0f}' for v in sampler.peak_mb.values())} | "
              f"{sampler.peak_total_mb:.0f} | {' + '.join(f'{v:.0f}' for v in after)} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, nargs="+", default=[ROOT],
                        help="checkouts to measure, e.g. the main branch and this one")
    parser.add_argument("--part", nargs="+", choices=["hostile", "large"], default=["hostile", "large"])
    parser.add_argument("--timeout-s", type=float, default=20.0, help="bound per hostile request")
    parser.add_argument("--uploads", type=int, default=8)
    parser.add_argument("--hours", type=float, default=14.0)
    parser.add_argument("--threads", type=int, default=1, help="gunicorn threads per worker (large)")
    args = parser.parse_args(argv)
    codes = [c.resolve() for c in args.code]
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        mongo = LocalMongo(data_dir=tmp / "db", port=free_port())
        mongo.start()
        try:
            if "hostile" in args.part:
                bench_hostile(codes, mongo, args, tmp)
            if "large" in args.part:
                bench_large(codes, mongo, args, tmp)
        finally:
            mongo.stop()
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
