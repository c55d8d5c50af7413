"""API benchmark: gunicorn + nx-27017 on loopback, bounded loops, prints a markdown table.

    python benchmarks/bench_api.py [--workers 2] [--clients 4] [--quick]

Starts its own nx-27017 and gunicorn on free loopback ports (temporary data dir),
seeds 100 rooms x 20 records with 50 KB flow images, then measures:

- requests/s and p50/p99 latency of GET /api/v1/rooms, GET /api/v1/rooms/{room} and
  POST /api/v1/patients with a 50 KB image (closed loop, ``--clients`` threads);
- the size of the /api/rooms response;
- p99 of GET /api/rooms paced at 100 requests/s in three 10 s windows (open loop:
  latency counted from the scheduled send time, so a slow server cannot hide its queueing);
- upload throughput for the first vs the last 1,000 uploads to one patient.

Everything stops by itself; nothing leaves the machine.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from sleeplab.storage import Storage
from tools.api_process import ApiServer
from tools.local_mongo import LocalMongo, free_port

ROOMS, RECORDS_PER_ROOM = 100, 20
IMAGE_BYTES = 50 * 1024
PACED_RATE_HZ, PACED_SECONDS, PACED_WINDOWS = 100, 10, 3
HISTORY_BATCH = 1000


def noise_png(target_bytes: int, seed: int = 0) -> bytes:
    """A PNG of about ``target_bytes`` (random pixels do not compress)."""
    rng = np.random.default_rng(seed)
    side = int((target_bytes / 3) ** 0.5)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def seed_database(uri: str, image: bytes) -> None:
    """100 rooms x 20 records, each with the image, through the storage module."""
    import pymongo

    client = pymongo.MongoClient(uri, tz_aware=True)
    store = Storage(client.get_default_database())
    store.ensure_indexes()

    def one_room(room: int):
        for i in range(RECORDS_PER_ROOM):
            store.upload(1000 + room, room, name=f"Patient {room}",
                         metrics={"cpap_pressure_cmh2o": 4 + (room + i) % 20,
                                  "breath_rate_bpm": 12.0 + i % 7, "apnea_count": i % 3,
                                  "breaths": 100 + i, "duration_s": 600.0, "ahi": 1.5,
                                  "leakage_l": 0.2},
                         image=(image, "image/png"))
        store.add_command(room, 1000 + room, 4 + room % 20, "bench")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one_room, range(1, ROOMS + 1)))
    client.close()


_local = threading.local()


def session() -> requests.Session:
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


def timed(method: str, url: str, **kw) -> float:
    t0 = time.perf_counter()
    resp = session().request(method, url, timeout=60, **kw)
    elapsed = time.perf_counter() - t0
    if resp.status_code >= 400:
        raise RuntimeError(f"{method} {url} -> {resp.status_code} {resp.text[:200]}")
    return elapsed


def closed_loop(n: int, clients: int, make_request) -> dict:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(lambda i: make_request(i), range(n)))
    wall = time.perf_counter() - t0
    return summary(latencies, wall)


def summary(latencies: list[float], wall_s: float) -> dict:
    ms = np.array(latencies) * 1000
    return {"n": len(latencies), "rps": len(latencies) / wall_s,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def paced(url: str, rate_hz: int, seconds: int) -> dict:
    """Open loop: request k is due at start + k/rate; latency counts from that due time."""
    n = rate_hz * seconds
    start = time.perf_counter() + 0.2
    lock = threading.Lock()
    latencies: list[float] = []

    def fire(k: int):
        due = start + k / rate_hz
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        resp = session().get(url, timeout=60)
        resp.raise_for_status()
        with lock:
            latencies.append(time.perf_counter() - due)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(fire, range(n)))
    result = summary(latencies, time.perf_counter() - start)
    result["target_rps"] = rate_hz
    return result


def history_growth(api_url: str, clients: int, batch: int, body: dict) -> tuple[dict, dict]:
    """2 x ``batch`` uploads to one patient; throughput of the first vs the last batch."""
    url = f"{api_url}/api/v1/patients"

    def run():
        return closed_loop(batch, clients, lambda i: timed("POST", url, json=body))

    return run(), run()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    parser.add_argument("--quick", action="store_true", help="smaller loops (smoke run)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    scale = 0.2 if args.quick else 1.0
    history_batch = int(HISTORY_BATCH * scale)

    image = noise_png(IMAGE_BYTES)
    image_b64 = base64.b64encode(image).decode()
    results: dict = {"image_bytes": len(image), "load_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp, \
            LocalMongo(data_dir=Path(tmp), port=free_port()) as db:
        uri = db.uri()
        t0 = time.perf_counter()
        seed_database(uri, image)
        results["seed_s"] = time.perf_counter() - t0
        print(f"seeded {ROOMS} rooms x {RECORDS_PER_ROOM} records in {results['seed_s']:.1f} s",
              file=sys.stderr)
        with ApiServer(uri, workers=args.workers) as api:
            base = api.url
            rooms = session().get(f"{base}/api/rooms")
            results["rooms_bytes"] = len(rooms.content)
            results["rooms_count"] = len(rooms.json()["rooms"])
            for _ in range(20):  # warm up every worker
                timed("GET", f"{base}/api/v1/rooms")
            results["GET /api/v1/rooms"] = closed_loop(
                int(500 * scale), args.clients, lambda i: timed("GET", f"{base}/api/v1/rooms"))
            results["GET /api/v1/rooms/{room}"] = closed_loop(
                int(1000 * scale), args.clients,
                lambda i: timed("GET", f"{base}/api/v1/rooms/{1 + i % ROOMS}"))

            def post(i):
                room = 1 + random.randrange(ROOMS)
                body = {"mrn": 1000 + room, "room": room, "cpap_pressure_cmh2o": 10,
                        "breath_rate_bpm": 14.0, "apnea_count": 1, "flow_image": image_b64}
                return timed("POST", f"{base}/api/v1/patients", json=body)

            results["POST /api/v1/patients (50 KB image)"] = closed_loop(
                int(300 * scale), args.clients, post)
            # three paced windows: on a shared machine one burst of foreign load can own
            # a window's p99, so every window is reported
            results["paced"] = [paced(f"{base}/api/rooms", PACED_RATE_HZ,
                                      max(2, int(PACED_SECONDS * scale)))
                                for _ in range(PACED_WINDOWS)]
            body = {"mrn": 7, "room": 500, "cpap_pressure_cmh2o": 10, "breath_rate_bpm": 14.0,
                    "apnea_count": 1, "flow_image": base64.b64encode(noise_png(2048)).decode()}
            first, last = history_growth(base, args.clients, history_batch, body)
            results["history_first"], results["history_last"] = first, last
            count = session().get(f"{base}/api/v1/patients/7").json()["patient"]["record_count"]
            results["history_records"] = count

    results["load_end"] = os.getloadavg()[0]
    print(table(results, args, history_batch))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def table(r: dict, args, history_batch: int) -> str:
    rows = ["| measurement | requests | req/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    for key in ("GET /api/v1/rooms", "GET /api/v1/rooms/{room}",
                "POST /api/v1/patients (50 KB image)"):
        m = r[key]
        rows.append(f"| {key} ({args.clients} clients) | {m['n']} | {m['rps']:.0f} | "
                    f"{m['p50_ms']:.1f} | {m['p99_ms']:.1f} |")
    for i, p in enumerate(r["paced"], 1):
        rows.append(f"| GET /api/rooms paced at {p['target_rps']} req/s (open loop), window {i} "
                    f"| {p['n']} | {p['rps']:.0f} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} |")
    f, l = r["history_first"], r["history_last"]
    rows.append(f"| POST to one patient: first {history_batch} uploads | {f['n']} | "
                f"{f['rps']:.0f} | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} |")
    rows.append(f"| POST to one patient: last {history_batch} uploads | {l['n']} | "
                f"{l['rps']:.0f} | {l['p50_ms']:.1f} | {l['p99_ms']:.1f} |")
    rows += ["", "| figure | value |", "|---|---:|",
             f"| /api/rooms response for {r['rooms_count']} rooms | "
             f"{r['rooms_bytes'] / 1024:.1f} KB |",
             f"| last / first batch upload throughput | {l['rps'] / f['rps']:.2f} |",
             f"| records of the one patient at the end | {r['history_records']} |",
             f"| seed ({ROOMS} rooms x {RECORDS_PER_ROOM} records, "
             f"{r['image_bytes'] / 1024:.0f} KB images) | {r['seed_s']:.1f} s |",
             f"| gunicorn workers / client threads | {args.workers} / {args.clients} |",
             f"| 1-min load average at start / end ({os.cpu_count()} CPUs, shared) | "
             f"{r['load_start']:.1f} / {r['load_end']:.1f} |"]
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
