"""Crash durability: nothing acknowledged is lost, nothing stored is corrupted.

The API runs under gunicorn (2 workers) against its own nx-27017 over TCP. Station
threads upload concurrently while the test ``kill -9``s both gunicorn workers
(gunicorn starts new ones), then ``kill -9``s the database server and restarts it on
the same port and data directory, then kills the workers once more. Stations retry on
connection errors and 5xx answers, as a bedside station does.

Every upload carries unique values (its number is the apnea count; its 8x8 PNG is
coloured by the number), so at the end each stored record is matched to the upload
it came from: every upload that got a 2xx must be there with exactly its values and
image bytes (read through the API and directly with pymongo), and no record may hold
values that no station sent. Each upload carries an ``upload_id`` (a UUID4) that its
retries reuse, so an upload whose answer was lost is stored exactly once: zero
duplicates, and every patient's ``record_count`` equals its stored records.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pymongo
import pytest
import requests

from tools.api_process import ApiServer
from tests.api_support import b64, image_bytes
from tools.local_mongo import LocalMongo, free_port

pytestmark = pytest.mark.slow

STATIONS = 8
UPLOADS_PER_STATION = 15
TOTAL = STATIONS * UPLOADS_PER_STATION
#: Acknowledged uploads after which each fault is injected.
KILL_WORKERS_AT, KILL_DATABASE_AT, KILL_WORKERS_AGAIN_AT = 25, 55, 85
UPLOAD_DEADLINE_S = 40.0
PATIENTS = 6


def planned(number: int) -> dict:
    """Upload ``number``: unique values, a unique image."""
    image = image_bytes("PNG", size=(8, 8), color=(number % 256, number // 256, 77))
    return {"mrn": 900 + number % PATIENTS, "room": 40 + number % PATIENTS,
            "name": f"Patient {number % PATIENTS}", "cpap_pressure_cmh2o": 4 + number % 22,
            "breath_rate_bpm": round(1 + number / 10, 1), "apnea_count": number,
            "image": image}


def body(plan: dict) -> dict:
    out = {k: v for k, v in plan.items() if k != "image"}
    out["flow_image"] = b64(plan["image"])
    return out


def children(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return {int(p) for p in fh.read().split()}
    except FileNotFoundError:
        return set()


def wait_for_workers(master: int, count: int, exclude: set[int], timeout_s=20.0) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = children(master) - exclude
        if len(pids) >= count:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"gunicorn did not start {count} new workers")


class Station:
    """Uploads with retries; records what happened to each upload."""

    def __init__(self, url: str):
        self.url = url
        self.acked: dict[int, int] = {}          # upload number -> 2xx status
        self.replayed: set[int] = set()          # acknowledged as a replay of its upload_id
        self.ambiguous: dict[int, int] = {}      # upload number -> attempts with no clear answer
        self.refused: dict[int, str] = {}        # 4xx: a bug (every upload is valid)
        self.lock = threading.Lock()

    def upload(self, number: int) -> None:
        payload = dict(body(planned(number)), upload_id=str(uuid.uuid4()))  # kept for retries
        deadline = time.monotonic() + UPLOAD_DEADLINE_S
        with requests.Session() as http:
            while time.monotonic() < deadline:
                try:
                    resp = http.post(f"{self.url}/api/v1/patients", json=payload, timeout=15)
                except requests.RequestException:
                    status = None   # connection lost: the upload may or may not be stored
                else:
                    status = resp.status_code
                if status is not None and status < 300:
                    with self.lock:
                        self.acked[number] = status
                        if resp.headers.get("Idempotent-Replay") == "true":
                            self.replayed.add(number)
                    return
                if status is not None and status < 500:
                    with self.lock:
                        self.refused[number] = resp.text
                    return
                with self.lock:
                    self.ambiguous[number] = self.ambiguous.get(number, 0) + 1
                time.sleep(0.2)


@pytest.fixture
def database(tmp_path):
    server = LocalMongo(data_dir=tmp_path / "nx", port=free_port())
    server.start()
    yield server
    server.stop()


def test_acknowledged_uploads_survive_killed_workers_and_database(database):
    uri = database.uri("crash")
    started = time.monotonic()
    faults = []
    with ApiServer(uri, workers=2) as api:
        master = api.process.pid
        station = Station(api.url)
        first_workers = wait_for_workers(master, 2, set())

        def inject_faults():
            def wait_acked(n):
                while len(station.acked) < n and time.monotonic() - started < 50:
                    time.sleep(0.01)
                return len(station.acked)

            acked = wait_acked(KILL_WORKERS_AT)
            for pid in children(master):
                os.kill(pid, signal.SIGKILL)
            faults.append(("workers killed", acked))
            acked = wait_acked(KILL_DATABASE_AT)
            database.kill()
            faults.append(("database killed", acked))
            time.sleep(0.5)
            database.start()  # same port, same data directory
            faults.append(("database restarted", len(station.acked)))
            acked = wait_acked(KILL_WORKERS_AGAIN_AT)
            for pid in children(master):
                os.kill(pid, signal.SIGKILL)
            faults.append(("workers killed again", acked))

        injector = threading.Thread(target=inject_faults)
        injector.start()
        with ThreadPoolExecutor(STATIONS) as pool:
            list(pool.map(station.upload, range(TOTAL)))
        injector.join()

        # Every fault hit while uploads were still outstanding.
        assert [name for name, _ in faults] == ["workers killed", "database killed",
                                                "database restarted", "workers killed again"]
        assert all(acked < TOTAL for _, acked in faults), faults
        assert not wait_for_workers(master, 2, set()) & first_workers, "workers were replaced"
        assert not station.refused, station.refused
        assert sorted(station.acked) == list(range(TOTAL)), "every upload got its 2xx in time"
        assert sum(station.ambiguous.values()) > 0, "the faults interrupted some requests"
        verify_through_api(api.url, station)
    verify_in_database(uri, station)
    elapsed = time.monotonic() - started
    print(f"\ncrash test: {TOTAL} uploads acknowledged, "
          f"{sum(station.ambiguous.values())} attempts interrupted "
          f"({len(station.ambiguous)} uploads retried, {len(station.replayed)} answered as "
          f"a replay), faults {faults}, {elapsed:.1f} s")


def matches(record: dict, plan: dict) -> bool:
    return all(record[k] == plan[k] for k in ("mrn", "room", "cpap_pressure_cmh2o",
                                              "breath_rate_bpm", "apnea_count"))


def verify_through_api(url: str, station: Station) -> None:
    with requests.Session() as http:
        records = []
        for mrn in range(900, 900 + PATIENTS):
            resp = http.get(f"{url}/api/v1/patients/{mrn}/records?limit=10000", timeout=30)
            assert resp.status_code == 200
            records += resp.json()["records"]
        by_number: dict[int, list[dict]] = {}
        for record in records:
            by_number.setdefault(record["apnea_count"], []).append(record)
        assert set(by_number) <= set(range(TOTAL)), "records nobody sent"
        for number in station.acked:
            copies = by_number.get(number, [])
            assert len(copies) == 1, (number, copies)   # not lost, not stored twice
            plan = planned(number)
            for record in copies:
                assert matches(record, plan), (record, plan)
                assert record["has_image"] is True
                image = http.get(f"{url}/api/v1/records/{record['id']}/image", timeout=30)
                assert image.status_code == 200 and image.content == plan["image"]
        rooms = http.get(f"{url}/api/v1/rooms", timeout=30).json()["rooms"]
        assert {r["room"] for r in rooms} == {40 + i for i in range(PATIENTS)}
        # record_count (list and detail) equals the records of each patient
        patients = http.get(f"{url}/api/v1/patients?per_page=500", timeout=30).json()
        counts = {p["mrn"]: p["record_count"] for p in patients["patients"]}
        stored = {mrn: 0 for mrn in range(900, 900 + PATIENTS)}
        for record in records:
            stored[record["mrn"]] += 1
        assert counts == stored == {mrn: sum(1 for n in range(TOTAL) if 900 + n % PATIENTS
                                             == mrn) for mrn in stored}
        for mrn, count in stored.items():
            detail = http.get(f"{url}/api/v1/patients/{mrn}", timeout=30).json()
            assert detail["patient"]["record_count"] == count


def verify_in_database(uri: str, station: Station) -> None:
    with pymongo.MongoClient(uri, tz_aware=True) as client:
        db = client.get_default_database()
        records = list(db.records.find({}))
        counts: dict[int, int] = {}
        for record in records:
            number = record["apnea_count"]
            assert isinstance(number, int) and 0 <= number < TOTAL, record
            counts[number] = counts.get(number, 0) + 1
            plan = planned(number)
            assert matches(record, plan), (record, plan)
            assert isinstance(record["received_at"], dt.datetime)
            image = db.images.find_one({"_id": record["_id"]})
            assert image is not None, f"record {record['_id']} lost its image"
            assert bytes(image["data"]) == plan["image"]
            assert image["etag"] == hashlib.sha256(plan["image"]).hexdigest()[:32]
            assert image["content_type"] == "image/png" and image["size"] == len(plan["image"])
        for number in station.acked:
            assert counts.get(number, 0) == 1, (number, counts.get(number, 0))
        assert len(records) == TOTAL, "zero duplicates"
        # every upload's claim is complete and names its one record
        claims = list(db.uploads.find({}))
        assert len(claims) == TOTAL and all(c["done"] is not None for c in claims)
        assert {c["record_id"] for c in claims} == {r["_id"] for r in records}
        patients = {p["mrn"]: p for p in db.patients.find({})}
        assert set(patients) == {900 + i for i in range(PATIENTS)}
        # Summaries point at stored records with the same values.
        by_id = {str(r["_id"]): r for r in records}
        summaries = [p["latest"] for p in patients.values()]
        summaries += [r["latest"] for r in db.rooms.find({}) if r.get("latest")]
        for summary in summaries:
            assert matches(by_id[summary["id"]], summary), summary
        # one record_added audit entry per upload (none repeated by a retry)
        added = [e["new"]["id"] for e in db.audit.find({"action": "record_added"})]
        assert sorted(added) == sorted(str(r["_id"]) for r in records)
        print(f"\nrecords in the database: {len(records)} for {len(counts)} uploads "
              f"(0 duplicates); {len(station.replayed)} acknowledged as a replay of "
              "their upload_id")
