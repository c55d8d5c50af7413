"""The API against the real nx-27017 server over TCP, and under gunicorn workers."""
from __future__ import annotations

import datetime as dt
import uuid
from concurrent.futures import ThreadPoolExecutor

import pymongo
import pytest
import requests

from sleeplab import storage
from tools.api_process import ApiServer
from tests.api_support import PNG, upload_body

pytestmark = pytest.mark.slow


@pytest.fixture
def db_uri(local_mongo):
    """A fresh database on the session's nx-27017 server."""
    return local_mongo.uri(database=f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def tcp_client(db_uri):
    from server import create_app

    return create_app({"TESTING": True, "MONGODB_URI": db_uri}).test_client()


def test_full_cycle_over_tcp_keeps_types(tcp_client):
    c = tcp_client
    assert c.get("/health").get_json() == {"status": "ok", "database": "ok"}
    first = c.post("/api/v1/patients", json=upload_body(mrn=1, room=2))
    assert first.status_code == 201
    second = c.post("/api/v1/patients", json=upload_body(mrn=1, room=2, pressure=11,
                                                         image=None, breaths=5))
    assert second.status_code == 200
    patient = second.get_json()["patient"]
    # nx-27017 turns a top-level date $set on an existing document into a string;
    # the storage layout must still give ISO dates back.
    assert patient["updated_at"].endswith("Z") and patient["created_at"].endswith("Z")
    assert patient["record_count"] == 2
    cmd = c.put("/api/v1/rooms/2/pressure", json={"pressure_cmh2o": 13, "mrn": 1}).get_json()
    applied = c.post(f"/api/v1/rooms/2/pressure/{cmd['id']}/applied").get_json()
    assert applied["applied"] is True and applied["applied_at"].endswith("Z")
    room = c.get("/api/v1/rooms/2").get_json()
    assert room["latest"]["cpap_pressure_cmh2o"] == 11 and room["latest"]["breaths"] == 5
    assert room["latest"]["has_image"] is False and room["latest"]["received_at"].endswith("Z")
    assert room["command"]["applied"] is True and room["command"]["pressure_cmh2o"] == 13
    assert room["patient"]["since"].endswith("Z")
    records = c.get("/api/v1/patients/1/records").get_json()["records"]
    assert [r["cpap_pressure_cmh2o"] for r in records] == [11, 10]
    image = c.get(f"/api/v1/records/{records[1]['id']}/image")
    assert image.status_code == 200 and image.data == PNG
    assert c.get("/get_all_patients").get_json()[0]["CPAP_pressure"] == [10, 11]
    listing = c.get("/api/v1/patients").get_json()
    assert listing["total"] == 1 and listing["patients"][0]["latest"]["cpap_pressure_cmh2o"] == 11


def test_each_room_and_patient_keeps_its_own_data(tcp_client):
    """Guards on many documents: an update must only ever touch its own room/patient."""
    for round_ in range(2):
        for room in range(1, 6):
            tcp_client.post("/api/v1/patients", json=upload_body(
                mrn=100 + room, room=room, pressure=4 + room + round_, image=None))
    for room in range(1, 6):
        tcp_client.put(f"/api/v1/rooms/{room}/pressure", json={"pressure_cmh2o": 10 + room,
                                                                        "mrn": 100 + room})
    rooms = tcp_client.get("/api/v1/rooms").get_json()["rooms"]
    assert [r["room"] for r in rooms] == [1, 2, 3, 4, 5]
    for r in rooms:
        assert r["patient"]["mrn"] == 100 + r["room"]
        assert r["latest"]["mrn"] == 100 + r["room"] and r["latest"]["room"] == r["room"]
        assert r["latest"]["cpap_pressure_cmh2o"] == 5 + r["room"]
        assert r["command"]["pressure_cmh2o"] == 10 + r["room"]
    patients = tcp_client.get("/api/v1/patients").get_json()["patients"]
    assert [(p["mrn"], p["latest"]["mrn"], p["record_count"]) for p in patients] == \
        [(100 + room, 100 + room, 2) for room in range(1, 6)]


def test_guard_on_real_server(tcp_client, monkeypatch):
    base = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    times = iter([base + dt.timedelta(seconds=10), base, base + dt.timedelta(seconds=20)])
    monkeypatch.setattr(storage, "utc_now", lambda: next(times))
    tcp_client.post("/api/v1/patients", json=upload_body(mrn=5, room=6, pressure=12))
    tcp_client.post("/api/v1/patients", json=upload_body(mrn=5, room=6, pressure=8))
    assert tcp_client.get("/api/v1/rooms/6").get_json()["latest"]["cpap_pressure_cmh2o"] == 12
    tcp_client.post("/api/v1/patients", json=upload_body(mrn=5, room=6, pressure=9))
    assert tcp_client.get("/api/v1/rooms/6").get_json()["latest"]["cpap_pressure_cmh2o"] == 9


def test_summaries_and_audit_by_both_upload_paths_on_real_server(tcp_client):
    """An upload sets a patient's and a room's values and latest summary in one guarded
    update when it can, else step by step (a patient without a record yet: no summary to
    compare with). Both paths on nx-27017: summaries, record counts, audit, moves."""
    c = tcp_client

    def latest(room):
        rooms = {r["room"]: r for r in c.get("/api/v1/rooms").get_json()["rooms"]}
        return rooms[room]["patient"] and rooms[room]["latest"]["cpap_pressure_cmh2o"]

    def patient_latest(mrn):
        listed = c.get("/api/v1/patients").get_json()["patients"]
        return next(p["latest"]["cpap_pressure_cmh2o"] for p in listed if p["mrn"] == mrn)

    def record_added(room):
        entries = c.get(f"/api/v1/rooms/{room}/audit").get_json()["entries"]
        return [(e["old"] or {}).get("id") for e in entries if e["action"] == "record_added"]

    assert c.post("/api/v1/patients", json={"mrn": 7, "room": 8, "name": "Ada"}).status_code == 201
    ids = []
    for pressure in (10, 11, 12):
        answer = c.post("/api/v1/patients", json=upload_body(mrn=7, room=8, name="Ada",
                                                            pressure=pressure)).get_json()
        ids.append(answer["record"]["id"])
        assert answer["patient"]["record_count"] == len(ids)
        assert latest(8) == patient_latest(7) == pressure
    assert record_added(8) == [ids[1], ids[0], None]  # newest first: each names the one before
    moved = c.post("/api/v1/patients", json=upload_body(mrn=7, room=9, name="Ada", pressure=13))
    assert (moved.get_json()["patient"]["room"], moved.get_json()["patient"]["record_count"]) \
        == (9, 4)
    rooms = {r["room"]: r["patient"] for r in c.get("/api/v1/rooms").get_json()["rooms"]}
    assert rooms[8] is None and rooms[9]["mrn"] == 7
    assert latest(9) == patient_latest(7) == 13
    assert record_added(9) == [ids[2]]
    changes = [e for room in (8, 9) for e in c.get(f"/api/v1/rooms/{room}/audit")
               .get_json()["entries"] if e["action"] == "room_changed"]
    assert [(e["room"], e["old"], e["new"]) for e in changes] == [(8, 8, 9), (9, 8, 9)]


def test_indexes_on_real_server(tcp_client, db_uri):
    tcp_client.get("/health")
    client = pymongo.MongoClient(db_uri)
    try:
        db = client.get_default_database()
        # nx-27017 names indexes its own way and reports every direction as 1:
        # compare the indexed fields
        patients = list(db.patients.index_information().values())
        assert any(i["key"] == [("mrn", 1)] and i.get("unique") for i in patients)
        record_keys = [[k for k, _ in i["key"]] for i in db.records.index_information().values()]
        assert ["mrn", "received_at"] in record_keys
        assert ["room", "received_at"] in record_keys
    finally:
        client.close()
    # duplicate MRNs are impossible even when written behind the API's back
    with pymongo.MongoClient(db_uri) as client, pytest.raises(pymongo.errors.DuplicateKeyError):
        patients = client.get_default_database().patients
        patients.insert_one({"mrn": 77})
        patients.insert_one({"mrn": 77})


UPLOADS = 120
THREADS = 12


def test_concurrent_uploads_under_gunicorn(db_uri):
    """Many threads upload to the same and to different (new) patients at once through
    3 gunicorn workers: exactly as many records as acknowledged uploads."""
    plan = []
    for i in range(UPLOADS):
        if i % 2:
            plan.append((1, 1))                      # one patient, hammered
        else:
            plan.append((100 + i % 10, 10 + i % 5))  # new MRNs racing to be created
    with ApiServer(db_uri, workers=3) as api, requests.Session() as http:
        def upload(args):
            mrn, room = args
            resp = http.post(f"{api.url}/api/v1/patients", timeout=60,
                             json=upload_body(mrn=mrn, room=room, pressure=4 + mrn % 20))
            return mrn, resp.status_code

        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(upload, plan))
        acknowledged = [mrn for mrn, status in results if 200 <= status < 300]
        assert all(status in (200, 201) for _, status in results), results
        created = sum(1 for _, status in results if status == 201)
        assert created == len(set(mrn for mrn, _ in plan)), "one 201 per new MRN"

        patients = http.get(f"{api.url}/api/v1/patients?per_page=500").json()["patients"]
        by_mrn = {p["mrn"]: p["record_count"] for p in patients}
        for mrn in set(acknowledged):
            records = http.get(f"{api.url}/api/v1/patients/{mrn}/records?limit=10000").json()
            assert len(records["records"]) == acknowledged.count(mrn) == by_mrn[mrn]
        # The summaries show the newest record, whatever the order the races ended in,
        # and every acknowledged record of the hammered patient is in its room's trail.
        latest = {p["mrn"]: p["latest"]["received_at"] for p in patients}
        for mrn in set(acknowledged):
            newest = http.get(f"{api.url}/api/v1/patients/{mrn}/records?limit=1").json()
            assert latest[mrn] == newest["records"][0]["received_at"]
        room = http.get(f"{api.url}/api/v1/rooms/1").json()
        assert room["latest"]["received_at"] == latest[1]
        trail = http.get(f"{api.url}/api/v1/rooms/1/audit?limit=1000").json()["entries"]
        assert sum(e["action"] == "record_added" for e in trail) == acknowledged.count(1)
    with pymongo.MongoClient(db_uri) as client:
        db = client.get_default_database()
        assert db.records.count_documents({}) == len(acknowledged)
        assert db.images.count_documents({}) == len(acknowledged)
        assert db.patients.count_documents({}) == len(set(acknowledged))


def test_python_server_py_serves(db_uri, tmp_path):
    """``python server.py``: Flask's development server on API_HOST/API_PORT, with the
    debugger off unless asked for (it would run code typed into an error page)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tools.api_process import ROOT
    from tools.local_mongo import free_port

    port = free_port()
    env = {name: value for name, value in os.environ.items()
           if name not in ("FLASK_DEBUG", "API_DEBUG")}
    env.update(MONGODB_URI=db_uri, API_HOST="127.0.0.1", API_PORT=str(port),
               PYTHONUNBUFFERED="1")
    output = tmp_path / "server.out"
    with output.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "server.py"], cwd=ROOT, env=env,
                                stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                resp = requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except (requests.ConnectionError, requests.Timeout):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.2)
        assert resp.json() == {"status": "ok", "database": "ok"}
        assert requests.get(f"http://127.0.0.1:{port}/api/rooms", timeout=5).json()["rooms"] == []
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # a debug reloader would run a child process
        proc.wait(timeout=10)
    banner = output.read_text()
    assert "Debug mode: off" in banner and "Debugger is active" not in banner, banner
