"""Where one upload's time goes: each step and each database round trip, timed.

    python -m benchmarks.profile_upload [--uploads 200] [--records 10] [--json out.json]

Starts its own nx-27017 (temporary data directory) and runs the app in this process
(Flask's test client: no HTTP, no gunicorn, one thread), so what is timed is the
server's own work for an upload: request parsing, validation (with the image check),
each database round trip (named by collection and operation), and the rest (routing,
access control, serialising the answer). Three routes, each ``--uploads`` times after
a warm-up: POST /api/v1/patients (JSON, a 23 KB base64 JPEG), the compatibility route
POST /add_patient (same body in its names), and POST /api/v1/rooms/{room}/recordings
(a raw sample recording, analysed here). Uploads go round ``--records`` records per
patient over 20 rooms, as in benchmarks/bench_origin.py.

Prints one markdown table per route: mean milliseconds per upload for each step and
round trip, and how many round trips an upload makes. Nothing leaves the machine.
"""
from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import pymongo.collection
import pymongo.cursor

import server
import validation
from sleeplab.api import models, openapi
from benchmarks.bench_origin import ROOMS, flow_jpeg
from tools.local_mongo import LocalMongo, free_port

ROOT = Path(__file__).resolve().parents[1]

#: pymongo operations an upload may use, each one round trip (``find`` and ``find_one``
#: are counted when their cursor is read).
DB_OPERATIONS = ("insert_one", "find_one_and_update", "update_one",
                 "aggregate", "bulk_write", "insert_many", "update_many")
RECORDING = ROOT / "sample_data" / "normal_15bpm.txt"


class Timers:
    """Milliseconds spent per named step during the current upload, and in total."""

    def __init__(self):
        self.total_ms: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)
        self.children_s: list[float] = []  # time of the steps inside each open step

    @contextlib.contextmanager
    def step(self, name: str):
        """Time a step; a step inside another counts for itself only (self time)."""
        self.children_s.append(0.0)
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed_s = time.perf_counter() - start
            inner_s = self.children_s.pop()
            if self.children_s:
                self.children_s[-1] += elapsed_s
            self.total_ms[name] += (elapsed_s - inner_s) * 1000
            self.calls[name] += 1

    def wrap(self, owner, attribute: str, name) -> None:
        """Time ``owner.attribute`` (a function) under ``name`` (a str, or a callable
        of the call's arguments giving the name)."""
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            with self.step(name(*args) if callable(name) else name):
                return original(*args, **kwargs)
        setattr(owner, attribute, timed)


def instrument(timers: Timers) -> None:
    """Time each database operation (by collection) and each step of the upload path."""
    for operation in DB_OPERATIONS:
        timers.wrap(pymongo.collection.Collection, operation,
                    lambda self, *a, op=operation: f"db {self.name}.{op}")
    timers.wrap(pymongo.MongoClient, "bulk_write",
                "db bulkWrite (one command: image, record, room, rooms version, other rooms)")
    timers.wrap(pymongo.cursor.Cursor, "_refresh",
                lambda self: f"db {self.collection.name}.find (reading the cursor)")
    for owner, name, step in STEPS:
        timers.wrap(owner, name, step)
    # A classmethod: wrapped as one, so each model still receives its own class.
    validate = _ORIGINALS[(models.RequestModel, "from_body")]

    def from_body(cls, body):
        with timers.step("validate the fields (pydantic; image check apart)"):
            return validate.__func__(cls, body)
    models.RequestModel.from_body = classmethod(from_body)


def bodies(route: str, n: int, records: int, image_b64: str):
    """``n`` (path, keyword arguments of the test client's post) for a route."""
    recording = RECORDING.read_bytes()
    for i in range(n):
        room = 1 + (i // records) % ROOMS
        mrn = 50_000 + room
        if route == "json":
            yield "/api/v1/patients", {"json": {
                "mrn": mrn, "room": room, "name": f"Patient {room}",
                "cpap_pressure_cmh2o": 4 + i % 20, "breath_rate_bpm": 12.5,
                "apnea_count": i % 4, "flow_image": image_b64}}
        elif route == "compat":
            yield "/add_patient", {"json": {
                "patient_mrn": mrn, "room_number": room, "patient_name": f"Patient {room}",
                "CPAP_pressure": 4 + i % 20, "breath_rate": 12.5, "apnea_count": i % 4,
                "flow_image": image_b64}}
        else:
            import io
            yield f"/api/v1/rooms/{room}/recordings", {
                "data": {"mrn": str(mrn), "name": f"Patient {room}",
                         "cpap_pressure_cmh2o": "10",
                         "file": (io.BytesIO(recording), "recording.txt")},
                "content_type": "multipart/form-data"}


def profile(app, route: str, uploads: int, records: int, image_b64: str) -> dict:
    client = app.test_client()
    for path, kwargs in bodies(route, 3, records, image_b64):  # warm-up (imports, caches)
        assert client.post(path, **kwargs).status_code in (200, 201)
    timers = Timers()
    instrument(timers)
    total_ms = 0.0
    try:
        for path, kwargs in bodies(route, uploads, records, image_b64):
            start = time.perf_counter()
            response = client.post(path, **kwargs)
            total_ms += (time.perf_counter() - start) * 1000
            assert response.status_code in (200, 201), response.get_data(as_text=True)
    finally:
        uninstrument()
    return {"uploads": uploads, "total_ms": total_ms / uploads,
            "steps": {k: v / uploads for k, v in timers.total_ms.items()},
            "calls": {k: v / uploads for k, v in timers.calls.items()}}


#: The upload path's steps (module, function, the name it is timed under).
STEPS = ((openapi, "json_body", "parse the JSON body"),
         (validation, "image_bytes", "image check (header, chunks, end; no pixel decode)"),
         (server, "_analyse_recording", "analyse the recording + plot"),
         (server, "_sha256", "SHA-256 of the recording"),
         (server, "uploaded", "shape the answer (pydantic)"))
_ORIGINALS = {(pymongo.collection.Collection, op): getattr(pymongo.collection.Collection, op)
              for op in DB_OPERATIONS}
_ORIGINALS[(pymongo.cursor.Cursor, "_refresh")] = pymongo.cursor.Cursor._refresh
_ORIGINALS[(pymongo.MongoClient, "bulk_write")] = pymongo.MongoClient.bulk_write
_ORIGINALS.update({(owner, name): getattr(owner, name) for owner, name, _ in STEPS})
_ORIGINALS[(models.RequestModel, "from_body")] = models.RequestModel.__dict__["from_body"]


def uninstrument() -> None:
    for (owner, name), original in _ORIGINALS.items():
        setattr(owner, name, original)


def table(name: str, result: dict) -> str:
    steps = result["steps"]
    db = {k: v for k, v in steps.items() if k.startswith("db ")}
    other = {k: v for k, v in steps.items() if not k.startswith("db ")}
    accounted = sum(steps.values())
    lines = [f"**{name}** — {result['uploads']} uploads, mean "
             f"{result['total_ms']:.1f} ms each (in-process, one thread)", "",
             "| step | ms per upload | calls per upload |", "|---|---:|---:|"]
    for key in sorted(other, key=other.get, reverse=True):
        lines.append(f"| {key} | {other[key]:.2f} | {result['calls'][key]:.1f} |")
    db_calls = sum(result["calls"][k] for k in db)
    lines.append(f"| database round trips (all) | {sum(db.values()):.2f} | {db_calls:.1f} |")
    for key in sorted(db, key=db.get, reverse=True):
        lines.append(f"| &nbsp;&nbsp;{key} | {db[key]:.2f} | {result['calls'][key]:.1f} |")
    lines.append(f"| the rest (routing, access control, Flask, JSON out) | "
                 f"{result['total_ms'] - accounted:.2f} | |")
    return "\n".join(lines)


ROUTES = {"json": "POST /api/v1/patients (JSON, 23 KB base64 JPEG)",
          "compat": "POST /add_patient (compatibility route, same body)",
          "recording": "POST /api/v1/rooms/{room}/recordings (raw sample file, analysed)"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=200, help="uploads per route")
    parser.add_argument("--recording-uploads", type=int, default=20,
                        help="uploads of the raw-file route (each is analysed)")
    parser.add_argument("--records", type=int, default=10, help="records per patient")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    image_b64 = base64.b64encode(flow_jpeg()).decode("ascii")
    results = {}
    with tempfile.TemporaryDirectory(prefix="profile-upload-") as tmp:
        with LocalMongo(data_dir=Path(tmp), port=free_port()) as db:
            for route in ROUTES:
                app = server.create_app({"MONGODB_URI": db.uri(f"profile_{route}")})
                n = args.recording_uploads if route == "recording" else args.uploads
                results[route] = profile(app, route, n, args.records, image_b64)
                app.config["MONGO_CLIENT"].close()
    for route, name in ROUTES.items():
        print(table(name, results[route]), end="\n\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
