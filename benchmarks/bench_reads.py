"""Large reads: list routes at ~200,000 records, and bedside traffic while 4 clients
loop on GET /get_all_patients.

    python benchmarks/bench_reads.py [--before /path/to/older/checkout]
                                     [--patients 200] [--records 1000]
                                     [--load-seconds 30] [--workers 2] [--threads 4]
                                     [--json out.json]

Starts its own nx-27017 on a free loopback port with a temporary data directory and
seeds ``--patients`` patients (one per room) x ``--records`` records and one pressure
command per room directly through pymongo (the documents an upload leaves). Then, for
this checkout ("after") and, with ``--before``, an older checkout of the project
("before"), each served by its own gunicorn (``--workers`` x ``--threads``, what the
quick start runs) against the same database, one after the other:

1. each list route once (three times when it takes under 10 s): time and size;
2. for ``--load-seconds``: 4 clients loop on GET /get_all_patients (waiting as long as
   a 503's Retry-After asks, plus 0.25 s) while the bedside station of room 1 uploads a
   record (POST /api/v1/patients) and, independently, polls its pressure
   (GET /CPAP_query/1), each every 0.5 s; latency and answers of every kind of request
   that ended within the window, and how many were still waiting when it closed.

"after" runs first: a "before" server stopped in the middle of a 35 s read leaves
nx-27017 busy finishing it. Prints markdown tables; nothing leaves the machine.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pymongo
import requests
from bson import ObjectId

from tools.local_mongo import LocalMongo, free_port
from tools.processes import stop_process, wait_http

ROOT = Path(__file__).resolve().parents[1]

HEAVY_CLIENTS = 4
BEDSIDE_PERIOD_S = 0.5
REPEAT_UNDER_S = 10.0
FIRST_MRN = 1000


def seed(uri: str, patients: int, records: int) -> float:
    """Fill the database as ``patients`` x ``records`` uploads would; returns seconds."""
    start = time.perf_counter()
    base = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    with pymongo.MongoClient(uri, tz_aware=True) as client:
        db = client.get_default_database()
        from sleeplab import storage
        storage.Storage(db).ensure_indexes()
        for number in range(patients):
            mrn, room = FIRST_MRN + number, number + 1
            docs = [{"_id": ObjectId(), "mrn": mrn, "room": room,
                     "received_at": base + dt.timedelta(minutes=i),
                     "cpap_pressure_cmh2o": 4 + i % 20, "breath_rate_bpm": 12.0 + i % 9,
                     "apnea_count": i % 5, "breaths": None, "duration_s": None, "ahi": None,
                     "leakage_l": None, "has_image": False} for i in range(records)]
            db.records.insert_many(docs, ordered=False)
            latest = storage.record_summary(docs[-1])
            occupant = {"mrn": mrn, "name": f"Patient {number}", "since": base}
            command = {"_id": ObjectId(), "room": room, "mrn": mrn, "pressure_cmh2o": 10,
                       "commanded_at": base, "source": "seed", "ack": None}
            db.commands.insert_one(command)
            db.patients.insert_one({"mrn": mrn, "name": occupant["name"], "room": room,
                                    "created_at": base, "updated": {"at": latest["received_at"]},
                                    "latest": latest})
            db.rooms.insert_one({"_id": room, "room": room, "patient": occupant,
                                 "latest": latest, "command": storage.command_summary(command)})
    return time.perf_counter() - start


def start_api(root: Path, uri: str, workers: int, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("gunicorn")), "--workers", str(workers),
         "--threads", str(threads), "--bind", f"127.0.0.1:{port}", "--timeout", "120",
         "--log-level", "warning", "server:create_app()"],
        cwd=root, env=dict(os.environ, MONGODB_URI=uri), stdout=subprocess.DEVNULL,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", proc, "gunicorn", 60)
    return proc, url


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def time_lists(url: str, mrn: int) -> list[dict]:
    """Each list route: median seconds over up to 3 requests, answer size and status."""
    rows = []
    for path in ["/get_all_patients", "/api/v1/patients?per_page=100",
                 f"/api/v1/patients/{mrn}", f"/api/v1/patients/{mrn}/records?limit=1000",
                 f"/api/v1/patients/{mrn}/records.csv", "/api/v1/rooms",
                 "/api/v1/rooms/1/pressure/history?limit=100"]:
        times, size, status = [], 0, None
        for _ in range(3):
            start = time.perf_counter()
            resp = requests.get(url + path, timeout=300)
            times.append(time.perf_counter() - start)
            size, status = len(resp.content), resp.status_code
            if times[-1] > REPEAT_UNDER_S:
                break
        rows.append({"request": f"GET {path}", "seconds": statistics.median(times),
                     "requests": len(times), "kb": size / 1024, "status": status})
    return rows


class Load:
    """Latencies and answers per kind of request that ended within the load window, and
    how many were still waiting for an answer when it closed."""

    def __init__(self):
        self.lock = threading.Lock()
        self.closed = False
        self.latency_s: dict[str, list[float]] = {}
        self.outcomes: dict[str, Counter] = {}
        self.waiting: Counter = Counter()

    def begin(self, kind: str) -> None:
        with self.lock:
            self.outcomes.setdefault(kind, Counter())
            self.waiting[kind] += 1

    def add(self, kind: str, latency_s: float, outcome: str) -> None:
        with self.lock:
            if self.closed:
                return  # ended after the window (e.g. cut off when the server stopped)
            self.waiting[kind] -= 1
            self.outcomes[kind][outcome] += 1
            if outcome.startswith("2"):
                self.latency_s.setdefault(kind, []).append(latency_s)

    def close(self) -> None:
        with self.lock:
            self.closed = True


def call(load: Load, kind: str, http: requests.Session, method: str, url: str,
         **kwargs) -> float:
    """One request; returns the Retry-After it was given (0 when none)."""
    load.begin(kind)
    start = time.perf_counter()
    retry_after_s = 0.0
    try:
        resp = http.request(method, url, timeout=120, **kwargs)
        outcome = str(resp.status_code)
        retry_after_s = float(resp.headers.get("Retry-After") or 0)
    except requests.RequestException as exc:
        outcome = type(exc).__name__
    load.add(kind, time.perf_counter() - start, outcome)
    return retry_after_s


#: Added to a Retry-After wait: gunicorn closes an idle connection after 2 s (its
#: keep-alive), and a client coming back at exactly 2 s may reuse one being closed.
RETRY_MARGIN_S = 0.25


def heavy_client(url: str, load: Load, stop: threading.Event) -> None:
    """Loops on the legacy list, waiting as long as a 503's Retry-After asks."""
    with requests.Session() as http:
        while not stop.is_set():
            retry_after_s = call(load, "GET /get_all_patients (4 clients, loop)", http, "GET",
                                 f"{url}/get_all_patients")
            if retry_after_s:
                stop.wait(retry_after_s + RETRY_MARGIN_S)


def bedside(url: str, load: Load, stop: threading.Event, kind: str, request) -> None:
    """Room 1's station: one kind of request every BEDSIDE_PERIOD_S (on a fixed schedule;
    a late answer delays the next one)."""
    with requests.Session() as http:
        number, next_at = 0, time.perf_counter()
        while not stop.wait(max(0.0, next_at - time.perf_counter())):
            method, path, body = request(number)
            call(load, kind, http, method, f"{url}{path}", json=body)
            number += 1
            next_at += BEDSIDE_PERIOD_S


def upload_request(number: int) -> tuple[str, str, dict]:
    body = {"mrn": FIRST_MRN, "room": 1, "cpap_pressure_cmh2o": 10, "breath_rate_bpm": 14,
            "apnea_count": number % 5}
    return "POST", "/api/v1/patients", body


def poll_request(_number: int) -> tuple[str, str, None]:
    return "GET", "/CPAP_query/1", None


def run_load(url: str, seconds: float) -> list[dict]:
    load, stop = Load(), threading.Event()
    threads = [threading.Thread(target=heavy_client, args=(url, load, stop), daemon=True)
               for _ in range(HEAVY_CLIENTS)]
    threads += [threading.Thread(target=bedside, args=(url, load, stop, kind, request),
                                 daemon=True)
                for kind, request in (("POST /api/v1/patients (room 1, every 0.5 s)",
                                       upload_request),
                                      ("GET /CPAP_query/1 (room 1, every 0.5 s)", poll_request))]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    load.close()
    stop.set()
    rows = []
    for kind in sorted(load.outcomes):
        latencies = load.latency_s.get(kind, [])
        outcomes = load.outcomes[kind]
        rows.append({"request": kind, "answered_2xx": sum(n for o, n in outcomes.items()
                                                          if o.startswith("2")),
                     "other": ", ".join(f"{o}x{n}" for o, n in sorted(outcomes.items())
                                        if not o.startswith("2")) or "-",
                     "waiting_at_end": load.waiting[kind],
                     "p50_ms": percentile(latencies, 50) * 1000,
                     "p95_ms": percentile(latencies, 95) * 1000,
                     "max_ms": max(latencies, default=float("nan")) * 1000})
    return rows


def measure(label: str, root: Path, uri: str, args) -> dict:
    print(f"==> {label}: {root}", flush=True)
    proc, url = start_api(root, uri, args.workers, args.threads)
    try:
        lists = time_lists(url, FIRST_MRN + 1)
        print("    lists done", flush=True)
        load = run_load(url, args.load_seconds)
    finally:
        stop_process(proc)  # also ends heavy reads still in flight
    return {"label": label, "root": str(root), "lists": lists, "load": load}


def print_tables(results: list[dict]) -> None:
    labels = [r["label"] for r in results]
    print("\n| request | " + " | ".join(f"{label} s | {label} KB" for label in labels) + " |")
    print("|---|" + "---:|---:|" * len(labels))
    for i, row in enumerate(results[0]["lists"]):
        cells = []
        for result in results:
            other = result["lists"][i]
            note = "" if other["status"] == 200 else f" ({other['status']})"
            cells += [f"{other['seconds']:.3f}{note}", f"{other['kb']:.0f}"]
        print(f"| {row['request']} | " + " | ".join(cells) + " |")
    for result in results:
        print(f"\n{result['label']}: {HEAVY_CLIENTS} clients loop on GET /get_all_patients "
              f"while room 1 uploads and polls\n")
        print("| request | 2xx | other answers | still waiting at the end | p50 ms | p95 ms "
              "| max ms |")
        print("|---|---:|---|---:|---:|---:|---:|")
        for row in result["load"]:
            print(f"| {row['request']} | {row['answered_2xx']} | {row['other']} | "
                  f"{row['waiting_at_end']} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} | "
                  f"{row['max_ms']:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="an older checkout of the project")
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-reads-") as tmp:
        with LocalMongo(data_dir=Path(tmp), port=free_port()) as database:
            uri = database.uri()
            seconds = seed(uri, args.patients, args.records)
            print(f"==> seeded {args.patients} patients x {args.records} records in "
                  f"{seconds:.0f} s", flush=True)
            results = [measure("after", ROOT, uri, args)]
            if args.before:
                results.append(measure("before", args.before.resolve(), uri, args))
    print_tables(results)
    print(f"\n{args.patients * args.records} records; gunicorn {args.workers} workers x "
          f"{args.threads} threads; 1-min load average at the end: {os.getloadavg()[0]:.1f} "
          f"(2 shared CPUs)")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
