"""Live nights at lab scale: how many rooms streaming every 10 s one API host serves.

    python -m benchmarks.bench_live [--rooms 50,100,200,300] [--duration-s 180]
                                    [--saturation-clients 4,8,16] [--saturation-s 60]

One API host as deployed: nx-27017 (as the quick start) and ``gunicorn --config
gunicorn.conf.py`` (serving.Worker, API_WORKERS/API_THREADS as set, default 2 x 4) on
loopback ports, started here; the load generator runs on the same machine and shares its
cores (on the 2-core development machine: database, API and generator on 2 cores).

The chunks are made before any timing (so the virtual patients' CPU is not measured):
``--patients`` virtual patients (:mod:`sleeplab.virtual_patient`, 2 cmH2O below their
optimum: apneas and hypopneas) of 10 s chunks (~35 KB of recording lines each); rooms
share them (each room its own night, session and patient).

- **Paced** (one run per room count N, each on fresh rooms): every room posts one chunk
  every 10 s, the N rooms spread evenly over the 10 s, for ``--duration-s``. Measured:
  chunks/s sustained, the round trip of each ``POST /rooms/{room}/stream`` (client side:
  p50/p95/p99/max), errors, how late the generator started posts (it must keep the pace
  for the figures to mean anything), and for a few probed rooms the time from a chunk's
  post starting until ``GET /rooms/{room}/live`` shows it (``next_sequence`` past it and
  its ``last_time_s``), polled every 10 ms beside the post.
- **Saturation**: K client threads each streaming its own room's night back to back,
  as fast as the server answers: the most chunks/s one host takes.
- **Storage**: one room streams an hour (360 chunks, back to back) first: the bytes of
  its raw chunks (BSON of their documents), of its night document, and how much the
  database folder grew.

CPU seconds of the API (gunicorn's process group) and of nx-27017 per chunk are read from
/proc. Prints one markdown table per part. Everything started here is stopped at the end.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import bson
import numpy as np
import pymongo
import requests

from sleeplab.virtual_patient import VirtualPatient
from tools.api_process import ApiServer
from tools.local_mongo import LocalMongo, free_port
from tools.processes import process_group_cpu_s

CHUNK_S = 10.0
HOUR_CHUNKS = 360
BELOW_OPTIMUM_CMH2O = 2
#: Rooms whose /live is polled beside each post (the chunk-to-/live latency).
PROBED_ROOMS = 3
PROBE_POLL_S = 0.01
TARGET_P99_S = 0.200
MRN_BASE = 100_000
HTTP_TIMEOUT_S = 30.0
def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@dataclass
class Night:
    """Pre-made chunks of one virtual patient's night."""
    pressure_cmh2o: int
    chunks: list[str]


def make_nights(patients: int, chunks_per_night: int) -> list[Night]:
    nights = []
    for seed in range(patients):
        patient = VirtualPatient(seed)
        pressure = int(round(patient.optimal_pressure_cmh2o)) - BELOW_OPTIMUM_CMH2O
        nights.append(Night(pressure, [patient.next_chunk(CHUNK_S, pressure, header=k == 0)
                                       for k in range(chunks_per_night)]))
    return nights


@dataclass
class Room:
    number: int
    night: Night
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    sequence: int = 0

    @property
    def mrn(self) -> int:
        return MRN_BASE + self.number

    def body(self) -> dict:
        chunks = self.night.chunks
        if self.sequence >= len(chunks):  # the made night is used up: a new night
            self.session_id, self.sequence = uuid.uuid4().hex, 0
        return {"mrn": self.mrn, "session_id": self.session_id, "sequence": self.sequence,
                "pressure_cmh2o": self.night.pressure_cmh2o,
                "samples": chunks[self.sequence]}


class Client:
    """One HTTP session per thread (requests' sessions are not thread-safe)."""

    def __init__(self, api: str):
        self.api = api
        self.local = threading.local()

    @property
    def http(self) -> requests.Session:
        if not hasattr(self.local, "http"):
            self.local.http = requests.Session()
        return self.local.http

    def post(self, room: Room) -> tuple[float, int]:
        body = room.body()
        start = time.perf_counter()
        try:
            status = self.http.post(f"{self.api}/api/v1/rooms/{room.number}/stream", json=body,
                                    timeout=HTTP_TIMEOUT_S).status_code
        except requests.RequestException:
            status = 0
        if status == 201:
            room.sequence += 1
        return time.perf_counter() - start, status

    def live(self, room: int) -> dict | None:
        answer = self.http.get(f"{self.api}/api/v1/rooms/{room}/live", timeout=HTTP_TIMEOUT_S)
        return answer.json() if answer.status_code == 200 else None


def probe_live(client: Client, room: Room, sequence: int, started: float, done: threading.Event,
               out: list) -> None:
    """Poll /live until it shows chunk ``sequence`` of the room's night; the time since
    ``started`` (the post's start) goes to ``out``."""
    session = room.session_id
    deadline = started + HTTP_TIMEOUT_S
    while time.perf_counter() < deadline:
        live = client.live(room.number)
        if live and live["session_id"] == session and live["next_sequence"] > sequence \
                and live["last_time_s"] is not None:
            out.append(time.perf_counter() - started)
            return
        if done.is_set() and live and live["session_id"] != session:
            return  # the post failed or started another night: nothing to wait for
        time.sleep(PROBE_POLL_S)


def percentiles(values: list[float]) -> dict:
    if not values:
        return {k: float("nan") for k in ("p50", "p95", "p99", "max")}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": p50, "p95": p95, "p99": p99, "max": max(values)}


def paced(client: Client, rooms: list[Room], duration_s: float, threads: int,
          pgids: dict) -> dict:
    """Every room posts a chunk every CHUNK_S, the rooms spread evenly; a pool of client
    threads takes the posts in schedule order."""
    n = len(rooms)
    schedule = sorted((k * CHUNK_S + i * CHUNK_S / n, i)
                      for k in range(int(duration_s / CHUNK_S)) for i in range(n))
    latencies, statuses, lateness, live_s = [], [], [], []
    lock = threading.Lock()
    room_locks = [threading.Lock() for _ in rooms]
    position = iter(schedule)
    cpu0 = {name: process_group_cpu_s(pgid) for name, pgid in pgids.items()}
    t0 = time.perf_counter() + 0.5

    def worker():
        while True:
            with lock:
                item = next(position, None)
            if item is None:
                return
            due_s, index = item
            wait_s = t0 + due_s - time.perf_counter()
            if wait_s > 0:
                time.sleep(wait_s)
            room = rooms[index]
            with room_locks[index]:        # a room's chunks in order, even when late
                started = time.perf_counter()
                lateness.append(started - (t0 + due_s))
                probe = None
                if index < PROBED_ROOMS and room.sequence < len(room.night.chunks):
                    done = threading.Event()
                    probe = threading.Thread(target=probe_live, args=(
                        client, room, room.sequence, started, done, live_s))
                    probe.start()
                elapsed_s, status = client.post(room)
                if probe is not None:
                    done.set()
                    probe.join()
            latencies.append(elapsed_s)
            statuses.append(status)

    with ThreadPoolExecutor(threads) as pool:
        for _ in range(threads):
            pool.submit(worker)
    wall_s = time.perf_counter() - t0
    cpu = {name: process_group_cpu_s(pgid) - cpu0[name] for name, pgid in pgids.items()}
    ok = sum(s == 201 for s in statuses)
    return {"rooms": n, "chunks": len(statuses), "ok": ok, "errors": len(statuses) - ok,
            "chunks_per_s": ok / wall_s, **percentiles(latencies),
            "late_p99": float(np.percentile(lateness, 99)) if lateness else 0.0,
            "live": percentiles(live_s), "live_n": len(live_s),
            "cpu_ms": {name: 1000 * s / max(ok, 1) for name, s in cpu.items()}}


def saturation(client: Client, rooms: list[Room], duration_s: float, pgids: dict) -> dict:
    """One thread per room, each posting its night's chunks back to back."""
    latencies, statuses = [], []
    cpu0 = {name: process_group_cpu_s(pgid) for name, pgid in pgids.items()}
    t0 = time.perf_counter()
    stop_at = t0 + duration_s

    def worker(room: Room):
        while time.perf_counter() < stop_at:
            elapsed_s, status = client.post(room)
            latencies.append(elapsed_s)
            statuses.append(status)

    with ThreadPoolExecutor(len(rooms)) as pool:
        list(pool.map(worker, rooms))
    wall_s = time.perf_counter() - t0
    cpu = {name: process_group_cpu_s(pgid) - cpu0[name] for name, pgid in pgids.items()}
    ok = sum(s == 201 for s in statuses)
    return {"clients": len(rooms), "chunks": len(statuses), "ok": ok,
            "errors": len(statuses) - ok, "chunks_per_s": ok / wall_s, **percentiles(latencies),
            "cpu_ms": {name: 1000 * s / max(ok, 1) for name, s in cpu.items()}}


def storage_per_room_hour(uri: str, session_id: str) -> dict:
    """Bytes per hour of one night: its raw chunks (BSON) and its night document."""
    db = pymongo.MongoClient(uri).get_default_database()
    chunks = list(db["live_chunks"].find({"session": session_id}))
    night = db["live_nights"].find_one({"_id": session_id})
    recorded_h = len(chunks) * CHUNK_S / 3600
    chunk_bytes = sum(len(bson.encode(doc)) for doc in chunks)
    return {"chunks_kb_per_h": chunk_bytes / recorded_h / 1024,
            "night_kb": len(bson.encode(night)) / 1024, "chunks": len(chunks)}


def ms(value_s: float) -> str:
    return f"{1000 * value_s:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", default="50,100,200,300")
    parser.add_argument("--duration-s", type=float, default=180.0)
    parser.add_argument("--saturation-clients", default="4,8,16")
    parser.add_argument("--saturation-s", type=float, default=60.0)
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--client-threads", type=int, default=64,
                        help="threads taking the paced posts")
    args = parser.parse_args()
    counts = [int(n) for n in args.rooms.split(",") if n]
    clients = [int(n) for n in args.saturation_clients.split(",") if n]
    chunks_per_night = max(int(args.duration_s / CHUNK_S), 60)
    began = time.perf_counter()
    nights = make_nights(args.patients, chunks_per_night)
    print(f"made {args.patients} nights x {chunks_per_night} chunks of {CHUNK_S:g} s "
          f"(~{np.mean([len(c) for c in nights[0].chunks]) / 1024:.0f} KB each) in "
          f"{time.perf_counter() - began:.0f} s", flush=True)
    load_start = os.getloadavg()[0]
    paced_rows, saturation_rows = [], []
    with tempfile.TemporaryDirectory() as tmp, \
            LocalMongo(data_dir=Path(tmp) / "db", port=free_port()) as database, \
            ApiServer(database.uri()) as server:
        client = Client(server.url)
        pgids = {"api": server.process.pid, "db": database.process.pid}
        db_before = folder_bytes(Path(tmp) / "db")
        hour = Room(1, make_nights(1, HOUR_CHUNKS)[0])
        for _ in range(HOUR_CHUNKS):
            if client.post(hour)[1] != 201:
                raise SystemExit(f"the hour's chunk {hour.sequence} was refused")
        per_night = storage_per_room_hour(database.uri(), hour.session_id)
        db_growth_per_room_h = folder_bytes(Path(tmp) / "db") - db_before
        next_room = 2
        for n in counts:
            rooms = [Room(next_room + i, nights[(next_room + i) % len(nights)]) for i in range(n)]
            next_room += n
            paced_rows.append(paced(client, rooms, args.duration_s, args.client_threads, pgids))
            print(paced_rows[-1], flush=True)
        for k in clients:
            rooms = [Room(next_room + i, nights[(next_room + i) % len(nights)]) for i in range(k)]
            next_room += k
            saturation_rows.append(saturation(client, rooms, args.saturation_s, pgids))
            print(saturation_rows[-1], flush=True)

    workers = os.environ.get("API_WORKERS") or "2"
    threads = os.environ.get("API_THREADS") or "4"
    print(f"\nOne host: nx-27017 + gunicorn --config gunicorn.conf.py ({workers} workers x "
          f"{threads} threads), load generator on the same {os.cpu_count()} cores; "
          f"10 s chunks; load average {load_start:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at the end.\n")
    print("| rooms | chunks/s | posts | errors | p50 ms | p95 ms | p99 ms | max ms | "
          "p99 < 200 ms | post → /live p50 / p99 ms | API / DB CPU ms per chunk | "
          "generator late p99 ms |\n|---:|---:|---:|---:|---:|---:|---:|---:|:-:|---:|---:|---:|")
    for r in paced_rows:
        print(f"| {r['rooms']} | {r['chunks_per_s']:.1f} | {r['chunks']} | {r['errors']} | "
              f"{ms(r['p50'])} | {ms(r['p95'])} | {ms(r['p99'])} | {ms(r['max'])} | "
              f"{'yes' if r['p99'] < TARGET_P99_S and not r['errors'] else 'no'} | "
              f"{ms(r['live']['p50'])} / {ms(r['live']['p99'])} (n={r['live_n']}) | "
              f"{r['cpu_ms']['api']:.1f} / {r['cpu_ms']['db']:.1f} | {ms(r['late_p99'])} |")
    print("\n| saturation: client threads | chunks/s | errors | p50 ms | p99 ms | "
          "API / DB CPU ms per chunk |\n|---:|---:|---:|---:|---:|---:|")
    for r in saturation_rows:
        print(f"| {r['clients']} | {r['chunks_per_s']:.1f} | {r['errors']} | {ms(r['p50'])} | "
              f"{ms(r['p99'])} | {r['cpu_ms']['api']:.1f} / {r['cpu_ms']['db']:.1f} |")
    print(f"\nStorage per room-hour: raw chunks {per_night['chunks_kb_per_h'] / 1024:.2f} MB "
          f"(BSON, zlib level 1), night document {per_night['night_kb']:.0f} KB "
          f"(after {per_night['chunks']} chunks); nx-27017's folder grew "
          f"{db_growth_per_room_h / 1024 ** 2:.2f} MB in that room-hour.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
