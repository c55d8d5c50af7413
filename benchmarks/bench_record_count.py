"""Cost of counting ``record_count`` from the records on read (vs a stored counter).

    python -m benchmarks.bench_record_count [--repeats 3] [--requests 50]

Starts its own nx-27017 on a free loopback port (temporary data dir), seeds 100
patients x 20 records through the storage module, and times in-process (Flask test
client over TCP to the database, no gunicorn) the routes that report record_count:
``GET /api/v1/patients?per_page=100``, ``GET /api/v1/patients/{mrn}`` and an upload
``POST /api/v1/patients``. Each is timed counted (the shipped code: one ``$group`` on
``$mrn`` per page or patient) and "stored" (the count query switched off, i.e. what
reading a stored counter costs), alternating, median of each; prints a markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from server import create_app
from sleeplab import storage
from tests.api_support import upload_body
from tools.local_mongo import LocalMongo, free_port

PATIENTS, RECORDS = 100, 20


def median_ms(call, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args(argv)
    counted = storage.Storage._with_record_counts
    with tempfile.TemporaryDirectory() as tmp:
        server = LocalMongo(data_dir=Path(tmp) / "nx", port=free_port())
        server.start()
        try:
            app = create_app({"TESTING": True, "MONGODB_URI": server.uri("bench")})
            with app.app_context():
                store = storage.Storage(app.extensions["storage_db"])
                for mrn in range(1, PATIENTS + 1):
                    for i in range(RECORDS):
                        store.upload(mrn, mrn, name=f"P{mrn}", metrics={
                            "cpap_pressure_cmh2o": 10, "breath_rate_bpm": 14.0,
                            "apnea_count": i})
            client = app.test_client()
            body = upload_body(mrn=7, room=7, image=None)
            routes = {
                f"GET /api/v1/patients?per_page=100 ({PATIENTS} x {RECORDS})":
                    lambda: client.get("/api/v1/patients?per_page=100"),
                "GET /api/v1/patients/7 (20 records)":
                    lambda: client.get("/api/v1/patients/7?limit=1"),
                "POST /api/v1/patients (a record, no image)":
                    lambda: client.post("/api/v1/patients", json=body),
            }
            assert client.get("/api/v1/patients?per_page=100").json["patients"][0][
                "record_count"] == RECORDS
            results = {name: {"counted": [], "stored": []} for name in routes}
            for _ in range(args.repeats):
                for mode in ("counted", "stored"):
                    storage.Storage._with_record_counts = (
                        counted if mode == "counted" else lambda self, docs: docs)
                    for name, call in routes.items():
                        results[name][mode].append(median_ms(call, args.requests))
            storage.Storage._with_record_counts = counted
        finally:
            server.stop()
    print(f"| request | stored counter (ms) | counted on read (ms) | cost (ms) |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        stored, count = statistics.median(r["stored"]), statistics.median(r["counted"])
        print(f"| {name} | {stored:.2f} | {count:.2f} | {count - stored:+.2f} |")
    print(f"\nmedian of {args.repeats} x {args.requests} requests each, nx-27017 over TCP")
    return 0


if __name__ == "__main__":
    sys.exit(main())
