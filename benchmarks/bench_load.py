"""Load benchmark: 50 station clients uploading while 5 monitors poll the wall.

    python benchmarks/bench_load.py [--stations 50] [--uploads 20] [--monitors 5]
                                    [--workers 2] [--threads 4] [--json out.json]

Starts its own nx-27017 and gunicorn (``--workers``) on free loopback ports with a
temporary data directory. Then, at the same time:

- ``--stations`` station clients (one thread and one HTTP connection each) post
  ``--uploads`` uploads each to POST /api/v1/patients, every upload with a small PNG
  flow image, one patient per station (its own room), back to back (closed loop);
- ``--monitors`` monitor clients GET /api/v1/rooms once a second (paced on a fixed
  schedule) until the last station is done.

A station retries nothing: any error or non-2xx answer counts as an error. At the end
the database is checked directly (pymongo): exactly stations x uploads records and
images, each patient's record_count and history complete. Prints a markdown table of
throughput and p50/p99 latency per kind of request. Stops by itself (a hard
``--max-seconds`` bound); nothing leaves the machine.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from PIL import Image

from tools.api_process import ApiServer
from tools.local_mongo import LocalMongo, free_port

MONITOR_PERIOD_S = 1.0


def small_png(station: int) -> bytes:
    """A 64x32 PNG (~200 bytes), coloured per station."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 32), (station * 5 % 256, 90, 160)).save(buf, "PNG")
    return buf.getvalue()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Results:
    def __init__(self):
        self.lock = threading.Lock()
        self.latency_s: dict[str, list[float]] = {"upload": [], "rooms": []}
        self.errors: dict[str, list[str]] = {"upload": [], "rooms": []}

    def add(self, kind: str, latency_s: float, error: str | None) -> None:
        with self.lock:
            (self.errors[kind].append(error) if error else self.latency_s[kind].append(latency_s))


def station(url: str, number: int, uploads: int, results: Results, stop: threading.Event):
    image = base64.b64encode(small_png(number)).decode("ascii")
    with requests.Session() as http:
        for i in range(uploads):
            if stop.is_set():
                return
            body = {"mrn": 10_000 + number, "room": number, "name": f"Station {number}",
                    "cpap_pressure_cmh2o": 4 + i % 22, "breath_rate_bpm": 12 + i % 8,
                    "apnea_count": i, "flow_image": image}
            start = time.perf_counter()
            try:
                resp = http.post(f"{url}/api/v1/patients", json=body, timeout=60)
                error = None if resp.status_code in (200, 201) else f"HTTP {resp.status_code}"
            except requests.RequestException as exc:
                error = type(exc).__name__
            results.add("upload", time.perf_counter() - start, error)


def monitor(url: str, results: Results, done: threading.Event, offset_s: float):
    """GET /api/v1/rooms every second on a fixed schedule until the stations are done."""
    with requests.Session() as http:
        next_at = time.perf_counter() + offset_s
        while not done.is_set():
            delay = next_at - time.perf_counter()
            if delay > 0 and done.wait(delay):
                return
            start = time.perf_counter()
            try:
                resp = http.get(f"{url}/api/v1/rooms", timeout=30)
                ok = resp.status_code == 200 and isinstance(resp.json().get("rooms"), list)
                error = None if ok else f"HTTP {resp.status_code}"
            except (requests.RequestException, ValueError) as exc:
                error = type(exc).__name__
            results.add("rooms", time.perf_counter() - start, error)
            next_at += MONITOR_PERIOD_S


def verify(uri: str, stations: int, uploads: int) -> dict:
    """Count what the database holds: nothing may be missing or extra."""
    import pymongo

    with pymongo.MongoClient(uri) as client:
        db = client.get_default_database()
        records = db.records.count_documents({})
        images = db.images.count_documents({})
        # record_count as the API reports it (counted from the records by storage)
        from sleeplab.storage import Storage
        listed, _ = Storage(db).list_patients(1, 10**6)
        per_patient = {p["mrn"]: p["record_count"] for p in listed}
        apneas: dict[int, list[int]] = {}
        for doc in db.records.find({}, {"mrn": 1, "apnea_count": 1}):
            apneas.setdefault(doc["mrn"], []).append(doc["apnea_count"])
        apneas = {mrn: sorted(values) for mrn, values in apneas.items()}
        histories = {mrn: len(values) for mrn, values in apneas.items()}
    expected = {10_000 + s for s in range(1, stations + 1)}
    lost = sum(max(0, uploads - histories.get(m, 0)) for m in expected)
    complete = all(apneas.get(m) == list(range(uploads)) for m in expected)
    return {"records": records, "images": images, "patients": len(per_patient),
            "expected_records": stations * uploads, "lost": lost,
            "histories_complete": complete and set(per_patient) == expected
            and all(per_patient[m] == uploads for m in expected)}


def run(args) -> dict:
    results = Results()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        with LocalMongo(data_dir=Path(tmp), port=free_port()) as db:
            uri = db.uri("benchload")
            env = {"API_THREADS": str(args.threads)}  # app threads per worker (serving.py)
            with ApiServer(uri, workers=args.workers, extra_env=env) as api:
                requests.get(f"{api.url}/api/v1/rooms", timeout=30)  # warm-up
                stop, done = threading.Event(), threading.Event()
                timer = threading.Timer(args.max_seconds, stop.set)
                timer.start()
                monitors = [threading.Thread(target=monitor, args=(
                    api.url, results, done, k * MONITOR_PERIOD_S / args.monitors))
                    for k in range(args.monitors)]
                for t in monitors:
                    t.start()
                load_before = os.getloadavg()[0]
                start = time.perf_counter()
                with ThreadPoolExecutor(args.stations) as pool:
                    list(pool.map(lambda s: station(api.url, s, args.uploads, results, stop),
                                  range(1, args.stations + 1)))
                wall_s = time.perf_counter() - start
                done.set()
                timer.cancel()
                for t in monitors:
                    t.join()
                load_after = os.getloadavg()[0]
            stored = verify(uri, args.stations, args.uploads)
    return {"wall_s": wall_s, "stopped_by_time_bound": stop.is_set(),
            "load": (load_before, load_after), "stored": stored,
            "kinds": {kind: {"requests": len(lat) + len(results.errors[kind]),
                             "errors": len(results.errors[kind]),
                             "error_kinds": sorted(set(results.errors[kind])),
                             "per_s": len(lat) / wall_s,
                             "p50_ms": percentile(lat, 50) * 1000,
                             "p99_ms": percentile(lat, 99) * 1000,
                             "max_ms": max(lat, default=float("nan")) * 1000,
                             "mean_ms": (statistics.fmean(lat) * 1000 if lat
                                         else float("nan"))}
                      for kind, lat in results.latency_s.items()}}


def table(r: dict, args) -> str:
    names = {"upload": f"POST /api/v1/patients, small PNG ({args.stations} stations x "
                       f"{args.uploads})",
             "rooms": f"GET /api/v1/rooms every 1 s ({args.monitors} monitors)"}
    lines = ["| requests | count | errors | req/s | p50 ms | p99 ms | max ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, k in r["kinds"].items():
        lines.append(f"| {names[kind]} | {k['requests']} | {k['errors']} | {k['per_s']:.1f} | "
                     f"{k['p50_ms']:.1f} | {k['p99_ms']:.1f} | {k['max_ms']:.1f} |")
    s = r["stored"]
    lines += ["", "| figure | value |", "|---|---:|",
              f"| wall time of the upload phase | {r['wall_s']:.1f} s |",
              f"| records / images stored (expected) | {s['records']} / {s['images']} "
              f"({s['expected_records']}) |",
              f"| lost records | {s['lost']} |",
              f"| every patient's history complete (apnea counts 0..{args.uploads - 1}, "
              f"record_count) | {'yes' if s['histories_complete'] else 'NO'} |",
              f"| gunicorn workers x threads | {args.workers} x {args.threads} |",
              f"| 1-min load average at start / end (2 CPUs, shared) | "
              f"{r['load'][0]:.1f} / {r['load'][1]:.1f} |"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stations", type=int, default=50)
    parser.add_argument("--uploads", type=int, default=20, help="uploads per station")
    parser.add_argument("--monitors", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=4,
                        help="threads per gunicorn worker that run the app (API_THREADS)")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="stop the stations after this long, whatever is left")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    r = run(args)
    print(table(r, args))
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    failed = (any(k["errors"] for k in r["kinds"].values()) or r["stored"]["lost"]
              or r["stored"]["records"] != r["stored"]["expected_records"]
              or not r["stored"]["histories_complete"] or r["stopped_by_time_bound"])
    if failed:
        print("\nFAILED: errors, lost records or the time bound hit", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
