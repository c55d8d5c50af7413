"""Validation and answer-shaping cost of the API, in process (Flask test client, mongomock).

    python benchmarks/bench_validation.py [--repeat 300]

Times, per request (median of ``--repeat`` runs after a warm-up):

- ``POST /api/v1/patients`` with every field and a 50 KB PNG (201; the image is decoded);
- the same body refused for its last field (400: every other value checked first);
- the same body with a key given twice (400 at parse time);
- ``PUT /api/v1/rooms/1/pressure`` (201);
- ``GET /api/v1/patients/1?limit=1000``: 1,000 records shaped into the answer;
- ``GET /api/v1/rooms/1``;
- shaping 1,000 record documents into the JSON answer alone (no database, no Flask).

The database is in memory, so the figures are the API's own work (parsing, validation,
shaping, serialisation) plus mongomock's. Run it on two commits to compare them; it
only uses ``server.create_app`` and the test client, which both have.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import time

import mongomock
import numpy as np
from PIL import Image

from server import create_app

RECORDS = 1000
IMAGE_BYTES = 50 * 1024


def noise_png(target_bytes: int) -> bytes:
    side = int((target_bytes / 3) ** 0.5)
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def body(mrn: int, image: str) -> dict:
    return {"mrn": mrn, "room": mrn, "name": "Ada Lovelace", "cpap_pressure_cmh2o": 10,
            "breath_rate_bpm": 14.5, "apnea_count": 1, "breaths": 30, "duration_s": 120.0,
            "ahi": 3.5, "leakage_l": 0.4, "flow_image": image}


def shape_records(docs: list[dict]) -> bytes:
    """The answer of a record list from its documents: the models where this commit has
    them, else the hand-written ``server.record_out`` of the commits before them."""
    import server

    if hasattr(server, "record_out"):
        return json.dumps({"records": [server.record_out(d) for d in docs]}).encode()
    from sleeplab.api import models
    return models.RecordList(records=docs).model_dump_json().encode()


def median_ms(call, repeat: int) -> float:
    for _ in range(min(20, repeat)):
        call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args()
    app = create_app({"TESTING": True, "MONGO_CLIENT": mongomock.MongoClient(tz_aware=True)})
    client = app.test_client()
    image = base64.b64encode(noise_png(IMAGE_BYTES)).decode("ascii")
    for _ in range(RECORDS):
        client.post("/api/v1/patients", json=body(1, image), headers={"Host": "localhost"})
    upload = json.dumps(body(2, image))
    refused = json.dumps({**body(3, image), "leakage_l": "lots"})
    duplicate = upload[:-1] + ', "mrn": 4}'
    mrn = iter(range(10, 10**9))

    def post(data, status):
        def call():
            resp = client.post("/api/v1/patients", data=data(), content_type="application/json")
            assert resp.status_code == status, resp.get_data(as_text=True)
        return call

    def get(path):
        def call():
            assert client.get(path).status_code == 200
        return call

    cases = [
        ("POST /api/v1/patients, all fields + 50 KB PNG (201)",
         post(lambda: json.dumps(body(next(mrn), image)), 201)),
        ("POST /api/v1/patients refused for its last field (400)", post(lambda: refused, 400)),
        ("POST /api/v1/patients with a duplicate key (400)", post(lambda: duplicate, 400)),
        ("PUT /api/v1/rooms/1/pressure (201)", lambda: client.put(
            "/api/v1/rooms/1/pressure", json={"pressure_cmh2o": 12, "mrn": 1})),
        (f"GET /api/v1/patients/1?limit={RECORDS} ({RECORDS} records)",
         get(f"/api/v1/patients/1?limit={RECORDS}")),
        ("GET /api/v1/rooms/1", get("/api/v1/rooms/1")),
    ]
    del upload
    docs = list(app.extensions["storage_db"].records.find({"mrn": 1}).limit(RECORDS))
    cases.append((f"shaping {RECORDS} record documents into JSON (no database)",
                  lambda: shape_records(docs)))
    print("| request | median ms |\n|---|---:|")
    for label, call in cases:
        repeat = max(20, args.repeat // 10) if "limit=" in label else args.repeat
        print(f"| {label} | {median_ms(call, repeat):.3f} |")


if __name__ == "__main__":
    main()
