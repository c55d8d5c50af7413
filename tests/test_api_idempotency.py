"""Idempotent uploads (``upload_id``) and an exact ``record_count``.

Each behaviour runs on mongomock and on the real nx-27017 server over TCP. A replay
must answer the same record and write nothing; a key reused elsewhere is a 409; an
upload interrupted at any step (the database failing mid-request) is completed, not
duplicated, by its retry; ``record_count`` always equals the stored records.
"""
from __future__ import annotations

import io
import uuid
from concurrent.futures import ThreadPoolExecutor

import pymongo
import pytest
import requests

from tools import cpap_synth
from sleeplab import storage
from tools.api_process import ApiServer
from tests.api_support import PNG, image_bytes, upload_body
from server import REPLAY_HEADER, create_app

P = "/api/v1/patients"
WRITTEN = ("patients", "rooms", "records", "images", "audit", "uploads", "commands", "meta")


@pytest.fixture(params=["mongomock", pytest.param("nx-27017", marks=pytest.mark.slow)])
def app(request, make_app):
    if request.param == "mongomock":
        return make_app()
    server = request.getfixturevalue("local_mongo")
    return create_app({"TESTING": True,
                       "MONGODB_URI": server.uri(database=f"i{uuid.uuid4().hex[:12]}")})


def db_of(app):
    return app.extensions["storage_db"]


def snapshot(app) -> dict:
    db = db_of(app)
    return {name: sorted(repr(d) for d in db[name].find({})) for name in WRITTEN}


def key() -> str:
    return str(uuid.uuid4())


def assert_counts_exact(client, app) -> None:
    """Every patient's record_count (list and detail) equals its stored records."""
    db = db_of(app)
    listing = client.get(f"{P}?per_page=500").get_json()["patients"]
    for patient in listing:
        stored = db.records.count_documents({"mrn": patient["mrn"]})
        detail = client.get(f"{P}/{patient['mrn']}").get_json()["patient"]
        assert patient["record_count"] == detail["record_count"] == stored, patient


def test_replay_answers_the_same_record_and_writes_nothing(app):
    client = app.test_client()
    body = upload_body(mrn=5, room=2, upload_id=key())
    first = client.post(P, json=body)
    assert first.status_code == 201 and REPLAY_HEADER not in first.headers
    before = snapshot(app)
    for _ in range(2):
        again = client.post(P, json=body)
        assert again.status_code == 200, again.get_json()
        assert again.headers[REPLAY_HEADER] == "true"
        assert again.get_json() == first.get_json()     # same record, same patient
        assert snapshot(app) == before, "a replay wrote something"
    db = db_of(app)
    assert db.records.count_documents({}) == db.images.count_documents({}) == 1
    assert [e["action"] for e in db.audit.find({})] == ["patient_created", "record_added"]
    assert_counts_exact(client, app)


def test_replay_for_a_known_patient_and_details_only(app):
    client = app.test_client()
    assert client.post(P, json=upload_body(mrn=5, room=2)).status_code == 201
    body = upload_body(mrn=5, room=2, pressure=12, upload_id=key())
    first = client.post(P, json=body)
    assert first.status_code == 200 and REPLAY_HEADER not in first.headers
    again = client.post(P, json=body)
    assert again.status_code == 200 and again.headers[REPLAY_HEADER] == "true"
    assert again.get_json()["record"] == first.get_json()["record"]
    assert again.get_json()["patient"]["record_count"] == 2
    # details only (no record): a replay answers record null and writes nothing
    details = {"mrn": 5, "room": 2, "name": "Ada King", "upload_id": key()}
    assert client.post(P, json=details).get_json()["record"] is None
    before = snapshot(app)
    replay = client.post(P, json=details)
    assert replay.headers[REPLAY_HEADER] == "true" and replay.get_json()["record"] is None
    assert snapshot(app) == before
    assert_counts_exact(client, app)


@pytest.mark.parametrize("change, message", [
    ({"mrn": 6}, "was already used for another patient; send a new upload_id"),
    ({"room": 3}, "was already used for another room; send a new upload_id"),
    ({"pressure": 11}, "was already used for an upload with other values"),
    ({"image": image_bytes("PNG", color="red")}, "other values"),
    ({"name": "Somebody Else"}, "other values"),
])
def test_key_reused_for_another_upload_is_a_conflict(app, change, message):
    client = app.test_client()
    upload_id = key()
    assert client.post(P, json=upload_body(mrn=5, room=2, upload_id=upload_id)
                       ).status_code == 201
    before = snapshot(app)
    resp = client.post(P, json=upload_body(**{"mrn": 5, "room": 2, **change},
                                           upload_id=upload_id))
    assert resp.status_code == 409
    error = resp.get_json()
    assert error["field"] == "upload_id" and error["error"] == "Conflict"
    assert message in error["message"] and upload_id in error["message"]
    assert snapshot(app) == before


@pytest.mark.parametrize("bad", ["short", "k" * 65, "has space-1234", "ünïcode-12345",
                                 "../../etc/x", 12345678, ["abcdefgh"], {"$gt": ""}, True])
def test_malformed_upload_id_is_a_400(client, bad):
    resp = client.post(P, json=upload_body(upload_id=bad))
    assert resp.status_code == 400
    assert resp.get_json()["field"] == "upload_id"
    assert "8 to 64 characters" in resp.get_json()["message"]
    assert client.get(P).get_json()["total"] == 0


@pytest.mark.parametrize("good", ["abcdefgh", "A" * 64, str(uuid.uuid4()),
                                  uuid.uuid4().hex, "station-3_2026-11-21_0007"])
def test_well_formed_upload_ids_are_accepted(client, good):
    assert client.post(P, json=upload_body(upload_id=good)).status_code == 201


def test_without_a_key_every_upload_is_stored(client):
    """Old clients keep their behaviour: no key, no deduplication."""
    for _ in range(2):
        client.post(P, json=upload_body(mrn=5, room=2))
    assert client.get(f"{P}/5").get_json()["patient"]["record_count"] == 2


class Crash(pymongo.errors.AutoReconnect):
    """The database connection lost mid-request (the API answers 503)."""


def crash_once(monkeypatch, target, name, *, after: bool = False, when=lambda *a: True):
    """Make ``target.name`` fail once (before or after doing its work)."""
    original = getattr(target, name)
    state = {"armed": True}

    def failing(*args, **kwargs):
        hit = state["armed"] and when(*args)
        if hit and not after:
            state["armed"] = False
            raise Crash("connection lost")
        result = original(*args, **kwargs)
        if hit:
            state["armed"] = False
            raise Crash("connection lost")
        return result

    monkeypatch.setattr(target, name, failing)
    return state


def _is(collection_name):
    return lambda collection, *rest: collection.name == collection_name


def crash_at_write(monkeypatch, collection_name, *, after: bool = False):
    """Fail once just before (or just after) the upload's write into
    ``collection_name``, however it is sent: one ``_insert_once`` round trip, or inside
    the one-round-trip ``client_bulk_write`` (the writes before it are done there)."""
    state = crash_once(monkeypatch, storage, "_insert_once", after=after,
                       when=_is(collection_name))
    original = storage.client_bulk_write

    def failing(db, writes):
        names = [collection.name for collection, _ in writes]
        if not state["armed"] or collection_name not in names:
            return original(db, writes)
        done = names.index(collection_name) + after
        if done and original(db, writes[:done]) is None:
            return None  # no such command here: the writes go one at a time
        if not done and not isinstance(db.client, pymongo.MongoClient):
            return None
        state["armed"] = False
        raise Crash("connection lost")

    monkeypatch.setattr(storage, "client_bulk_write", failing)
    return state


CRASH_POINTS = {
    # after the claim, before the patient is written
    "after-claim": lambda mp: crash_once(mp, storage.Storage, "_guarded_set"),
    # nothing of the record written yet (its image goes first)
    "before-image": lambda mp: crash_at_write(mp, "images"),
    # image stored, record not yet
    "before-record": lambda mp: crash_at_write(mp, "records"),
    # record stored (its answer lost), summaries and audit not yet
    "after-record": lambda mp: crash_at_write(mp, "records", after=True),
    # everything but the claim's "done" mark
    "before-done": lambda mp: crash_once(mp, storage.Storage, "_audit_upload", after=True),
}


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_retry_completes_an_interrupted_upload_once(app, monkeypatch, point):
    client = app.test_client()
    assert client.post(P, json=upload_body(mrn=5, room=2, apnea=0)).status_code == 201
    # a name change, a room move and a record: 4 audit entries, each planned up front
    body = upload_body(mrn=5, room=4, name="Ada King", apnea=7, upload_id=key())
    state = CRASH_POINTS[point](monkeypatch)
    failed = client.post(P, json=body)
    assert failed.status_code == 503 and not state["armed"], "the crash point was reached"
    monkeypatch.undo()
    retry = client.post(P, json=body)
    assert retry.status_code == 200 and retry.headers[REPLAY_HEADER] == "true"
    record = retry.get_json()["record"]
    assert record["apnea_count"] == 7 and record["room"] == 4
    db = db_of(app)
    assert db.records.count_documents({"apnea_count": 7}) == 1
    assert db.images.count_documents({}) == 2
    assert client.get(f"/api/v1/records/{record['id']}/image").data == PNG
    actions = sorted((e["action"], e["room"]) for e in db.audit.find({}))
    assert actions == sorted([("patient_created", 2), ("record_added", 2),
                              ("name_changed", 4), ("room_changed", 2),
                              ("room_changed", 4), ("record_added", 4)]), actions
    room = client.get("/api/v1/rooms/4").get_json()
    assert room["latest"]["id"] == record["id"] and room["patient"]["name"] == "Ada King"
    assert client.post(P, json=body).get_json() == retry.get_json()   # now a plain replay
    assert_counts_exact(client, app)


def test_record_count_is_counted_from_the_records(app):
    """A record stored behind the counter's back (what an interrupted upload leaves)
    is counted: the count is never a separate number that can drift."""
    client = app.test_client()
    for apnea in range(3):
        client.post(P, json=upload_body(mrn=5, room=2, apnea=apnea))
    client.post(P, json=upload_body(mrn=6, room=3))
    db_of(app).records.delete_one({"mrn": 5, "apnea_count": 1})
    listing = {p["mrn"]: p["record_count"] for p in client.get(P).get_json()["patients"]}
    assert listing == {5: 2, 6: 1}
    assert client.get(f"{P}/5").get_json()["patient"]["record_count"] == 2
    assert "record_count" not in db_of(app).patients.find_one({"mrn": 5})


def test_recording_route_replay_and_conflict(app):
    content, _ = cpap_synth.generate(seed=3, duration_s=40.0, rate_bpm=15.0)
    client = app.test_client()
    upload_id = key()

    def send(data: bytes, **form):
        fields = {"mrn": "21", "cpap_pressure_cmh2o": "9", "upload_id": upload_id, **form,
                  "file": (io.BytesIO(data), "night.txt")}
        return client.post("/api/v1/rooms/4/recordings", data=fields,
                           content_type="multipart/form-data")

    first = send(content)
    assert first.status_code == 201
    before = snapshot(app)
    again = send(content)
    assert again.status_code == 200 and again.headers[REPLAY_HEADER] == "true"
    assert again.get_json()["record"] == first.get_json()["record"]
    assert again.get_json()["metrics"] == first.get_json()["metrics"]
    assert snapshot(app) == before
    other_file = send(content + content.splitlines(True)[-1])
    assert other_file.status_code == 409 and other_file.get_json()["field"] == "upload_id"
    other_pressure = send(content, cpap_pressure_cmh2o="10")
    assert other_pressure.status_code == 409
    bad = send(content, upload_id="no spaces allowed")
    assert bad.status_code == 400 and bad.get_json()["field"] == "upload_id"
    assert snapshot(app) == before
    assert_counts_exact(client, app)


def test_compat_route_accepts_an_upload_id(app):
    client = app.test_client()
    body = {"patient_name": "Ada", "patient_mrn": "7", "room_number": "2",
            "CPAP_pressure": "10", "breath_rate": "14", "apnea_count": "1",
            "flow_image": "", "upload_id": key()}
    first = client.post("/add_patient", json=body)
    assert first.status_code == 200 and first.get_data(as_text=True) == "New patient created"
    before = snapshot(app)
    again = client.post("/add_patient", json=body)
    assert again.status_code == 200 and again.headers[REPLAY_HEADER] == "true"
    assert again.get_data(as_text=True) == "Patient successfully updated"
    assert snapshot(app) == before
    other = client.post("/add_patient", json={**body, "room_number": "3"})
    assert other.status_code == 409 and other.get_json()["field"] == "upload_id"
    empty = client.post("/add_patient", json={**body, "upload_id": ""})   # "" = not given
    assert empty.status_code == 200 and REPLAY_HEADER not in empty.headers
    assert_counts_exact(client, app)


THREADS = 8
KEYS = 4


def test_concurrent_duplicates_under_gunicorn_store_one_record(local_mongo):
    """Several threads send the same upload_id at once through 2 gunicorn workers:
    exactly one record (and one record_added entry) per key, every answer the same."""
    uri = local_mongo.uri(database=f"c{uuid.uuid4().hex[:12]}")
    keys = [key() for _ in range(KEYS)]
    bodies = {k: upload_body(mrn=50 + i % 2, room=5 + i % 2, apnea=i, upload_id=k)
              for i, k in enumerate(keys)}
    jobs = [k for k in keys for _ in range(THREADS)]
    with ApiServer(uri, workers=2) as api:
        def post(upload_id):
            with requests.Session() as http:
                resp = http.post(f"{api.url}{P}", json=bodies[upload_id], timeout=60)
                return upload_id, resp.status_code, resp.headers.get(REPLAY_HEADER), \
                    resp.json()

        with ThreadPoolExecutor(THREADS * 2) as pool:
            answers = list(pool.map(post, jobs))
        listing = requests.get(f"{api.url}{P}", timeout=30).json()["patients"]
    assert all(status in (200, 201) for _, status, _, _ in answers), answers
    for k in keys:
        mine = [a for a in answers if a[0] == k]
        assert len({a[3]["record"]["id"] for a in mine}) == 1, "one record per key"
        assert sum(1 for a in mine if a[2] is None) == 1, "exactly one original answer"
    with pymongo.MongoClient(uri) as client:
        db = client.get_default_database()
        assert sorted(r["apnea_count"] for r in db.records.find({})) == list(range(KEYS))
        assert db.images.count_documents({}) == KEYS
        assert db.audit.count_documents({"action": "record_added"}) == KEYS
        assert db.audit.count_documents({"action": "patient_created"}) == 2
        assert {p["mrn"]: p["record_count"] for p in listing} == {
            50: db.records.count_documents({"mrn": 50}), 51: db.records.count_documents(
                {"mrn": 51})} == {50: 2, 51: 2}
