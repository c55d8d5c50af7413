"""Every JSON route of the API against mongomock (through the real storage module)."""
from __future__ import annotations

import datetime as dt

import pytest

from sleeplab import storage
from tests.api_support import JPEG, PNG, upload_body

PREFIXES = ["/api/v1", "/api"]


@pytest.fixture(params=PREFIXES)
def prefix(request):
    return request.param


def post(client, prefix, **kw):
    return client.post(f"{prefix}/patients", json=upload_body(**kw))


def test_health(client):
    assert client.get("/health").get_json() == {"status": "ok", "database": "ok"}


@pytest.mark.slow
def test_health_and_routes_answer_503_when_database_is_down():
    from tools.local_mongo import free_port
    from server import create_app

    app = create_app({"TESTING": True, "MONGO_TIMEOUT_MS": 200,
                      "MONGODB_URI": f"mongodb://127.0.0.1:{free_port()}/x"})
    client = app.test_client()
    health = client.get("/health")
    assert health.status_code == 503 and health.get_json()["database"] == "unreachable"
    rooms = client.get("/api/rooms")
    assert rooms.status_code == 503
    assert rooms.get_json()["message"].startswith("the database is unavailable")


def test_new_patient_then_known_patient(client, prefix):
    first = post(client, prefix, name="Ada")
    assert first.status_code == 201
    body = first.get_json()
    assert body["patient"]["mrn"] == 12 and body["patient"]["name"] == "Ada"
    assert body["patient"]["record_count"] == 1
    record = body["record"]
    assert record["cpap_pressure_cmh2o"] == 10 and record["breath_rate_bpm"] == 14.5
    assert record["apnea_count"] == 1 and record["has_image"] is True
    assert record["received_at"].endswith("Z") and len(record["id"]) == 24
    assert record["breaths"] is None and record["ahi"] is None

    second = post(client, prefix, name="Ada King", pressure=11, image=None)
    assert second.status_code == 200
    patient = second.get_json()["patient"]
    assert patient["name"] == "Ada King" and patient["record_count"] == 2
    assert patient["created_at"] == body["patient"]["created_at"]
    assert patient["updated_at"] >= patient["created_at"]
    assert second.get_json()["record"]["has_image"] is False


def test_upload_without_measurements_creates_patient_only(client, prefix):
    resp = client.post(f"{prefix}/patients", json={"mrn": "44", "room": "7"})
    assert resp.status_code == 201
    assert resp.get_json() == {"patient": resp.get_json()["patient"], "record": None}
    assert resp.get_json()["patient"]["name"] is None
    # a later upload without a name keeps the known name
    post(client, prefix, mrn=44, room=7, name="Grace")
    again = client.post(f"{prefix}/patients", json={"mrn": 44, "room": 7})
    assert again.status_code == 200 and again.get_json()["patient"]["name"] == "Grace"


def test_richer_metrics_are_stored(client, prefix):
    resp = post(client, prefix, breaths=30, duration_s=120.5, ahi=30, leakage_l=-0.4)
    record = resp.get_json()["record"]
    assert (record["breaths"], record["duration_s"], record["ahi"], record["leakage_l"]) == \
        (30, 120.5, 30.0, -0.4)


def test_rooms_wall_sorted_latest_no_images(client, prefix):
    for room in (9, 2, 5):
        post(client, prefix, mrn=100 + room, room=room, pressure=room + 4)
    post(client, prefix, mrn=102, room=2, pressure=20, image=None)
    resp = client.get(f"{prefix}/rooms")
    data = resp.get_json()
    assert [r["room"] for r in data["rooms"]] == [2, 5, 9]
    assert data["server_time"].endswith("Z")
    room2 = data["rooms"][0]
    assert room2["patient"]["mrn"] == 102 and room2["latest"]["cpap_pressure_cmh2o"] == 20
    assert room2["command"] is None
    assert b"flow_image" not in resp.data and b"iVBOR" not in resp.data


def test_new_mrn_in_room_replaces_occupant_and_keeps_old_data(client, prefix):
    post(client, prefix, mrn=1, room=4, name="Old")
    client.put(f"{prefix}/rooms/4/pressure", json={"pressure_cmh2o": 15, "mrn": 1})
    client.post(f"{prefix}/patients", json={"mrn": 2, "room": 4, "name": "New"})
    room = client.get(f"{prefix}/rooms/4").get_json()
    assert room["patient"]["mrn"] == 2 and room["patient"]["name"] == "New"
    assert room["latest"] is None, "the new occupant must not show the old patient's record"
    assert room["command"] is None
    assert client.get(f"{prefix}/rooms/4/pressure").status_code == 404
    old = client.get(f"{prefix}/patients/1").get_json()
    assert old["patient"]["name"] == "Old" and len(old["records"]) == 1


def test_older_upload_never_overwrites_newer_summary(client, prefix, monkeypatch):
    base = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    times = iter([base + dt.timedelta(seconds=10), base])  # second upload is "older"
    monkeypatch.setattr(storage, "utc_now", lambda: next(times))
    post(client, prefix, mrn=5, room=6, pressure=12)
    post(client, prefix, mrn=5, room=6, pressure=8)
    room = client.get(f"{prefix}/rooms/6").get_json()
    assert room["latest"]["cpap_pressure_cmh2o"] == 12
    patients = client.get(f"{prefix}/patients").get_json()["patients"]
    assert patients[0]["latest"]["cpap_pressure_cmh2o"] == 12
    assert patients[0]["record_count"] == 2


def test_room_detail_and_unknown_room(client, prefix):
    post(client, prefix, mrn=8, room=8)
    room = client.get(f"{prefix}/rooms/8").get_json()
    assert set(room) == {"room", "patient", "latest", "command", "applied", "live"}
    assert room["room"] == 8 and room["latest"]["mrn"] == 8
    assert room["live"] is None                  # no night streamed
    missing = client.get(f"{prefix}/rooms/99")
    assert missing.status_code == 404
    assert missing.get_json() == {"status": 404, "error": "Not Found",
                                  "message": "room 99 has no patient"}


def test_pressure_command_cycle(client, prefix):
    post(client, prefix, mrn=3, room=3)
    assert client.get(f"{prefix}/rooms/3/pressure").status_code == 404
    put = client.put(f"{prefix}/rooms/3/pressure", json={"pressure_cmh2o": "12", "mrn": 3,
                                                          "source": "Dr Who"})
    assert put.status_code == 201
    command = put.get_json()
    assert command["pressure_cmh2o"] == 12 and command["source"] == "Dr Who"
    assert command["applied"] is False and command["applied_at"] is None
    assert client.get(f"{prefix}/rooms/3/pressure").get_json() == command
    assert client.get(f"{prefix}/rooms").get_json()["rooms"][0]["command"] == command

    applied = client.post(f"{prefix}/rooms/3/pressure/{command['id']}/applied")
    assert applied.status_code == 200
    assert applied.get_json()["applied"] is True and applied.get_json()["applied_at"]
    again = client.post(f"{prefix}/rooms/3/pressure/{command['id']}/applied").get_json()
    assert again["applied_at"] == applied.get_json()["applied_at"], "idempotent"
    assert client.get(f"{prefix}/rooms/3").get_json()["command"]["applied"] is True


def test_pressure_default_source_and_unknown_room(client, prefix):
    post(client, prefix, mrn=3, room=3)
    assert client.put(f"{prefix}/rooms/3/pressure",
                      json={"pressure_cmh2o": 9, "mrn": 3}).get_json()["source"] == "monitor"
    assert client.put(f"{prefix}/rooms/4/pressure",
                      json={"pressure_cmh2o": 9, "mrn": 3}).status_code == 404


@pytest.mark.parametrize("command_id", ["0" * 24, "not-an-id", "zz" * 12, "{'$gt': ''}"])
def test_applied_unknown_command_is_404(client, prefix, command_id):
    post(client, prefix, mrn=3, room=3)
    resp = client.post(f"{prefix}/rooms/3/pressure/{command_id}/applied")
    assert resp.status_code == 404 and resp.get_json()["status"] == 404


def test_applied_command_of_another_room_is_404(client, prefix):
    post(client, prefix, mrn=3, room=3)
    post(client, prefix, mrn=4, room=4)
    cid = client.put(f"{prefix}/rooms/3/pressure", json={"pressure_cmh2o": 9, "mrn": 3}).get_json()["id"]
    assert client.post(f"{prefix}/rooms/4/pressure/{cid}/applied").status_code == 404


def test_pressure_history_newest_first_with_limit(client, prefix):
    post(client, prefix, mrn=3, room=3)
    for value in (5, 6, 7, 8):
        client.put(f"{prefix}/rooms/3/pressure", json={"pressure_cmh2o": value, "mrn": 3})
    history = client.get(f"{prefix}/rooms/3/pressure/history").get_json()["commands"]
    assert [c["pressure_cmh2o"] for c in history] == [8, 7, 6, 5]
    limited = client.get(f"{prefix}/rooms/3/pressure/history?limit=2").get_json()["commands"]
    assert [c["pressure_cmh2o"] for c in limited] == [8, 7]
    assert client.get(f"{prefix}/rooms/77/pressure/history").get_json() == {"commands": []}


def test_patients_paginated_sorted_by_room_then_mrn(client, prefix):
    for mrn, room in [(50, 2), (10, 3), (30, 2), (20, 1)]:
        post(client, prefix, mrn=mrn, room=room)
    page1 = client.get(f"{prefix}/patients?per_page=3").get_json()
    assert [p["mrn"] for p in page1["patients"]] == [20, 30, 50]
    assert (page1["page"], page1["per_page"], page1["total"]) == (1, 3, 4)
    assert page1["patients"][0]["latest"]["mrn"] == 20
    page2 = client.get(f"{prefix}/patients?per_page=3&page=2").get_json()
    assert [p["mrn"] for p in page2["patients"]] == [10]


def test_patient_history_newest_first(client, prefix):
    for pressure in (5, 6, 7):
        post(client, prefix, pressure=pressure, image=None)
    detail = client.get(f"{prefix}/patients/12").get_json()
    assert detail["patient"]["record_count"] == 3
    assert [r["cpap_pressure_cmh2o"] for r in detail["records"]] == [7, 6, 5]
    records = client.get(f"{prefix}/patients/12/records?limit=2").get_json()["records"]
    assert [r["cpap_pressure_cmh2o"] for r in records] == [7, 6]
    assert client.get(f"{prefix}/patients/13").status_code == 404
    assert client.get(f"{prefix}/patients/13/records").status_code == 404


def test_csv_export(client, prefix):
    post(client, prefix, pressure=5, rate=12.25, apnea=2, image=None)
    post(client, prefix, pressure=6, breaths=10, duration_s=60)
    resp = client.get(f"{prefix}/patients/12/records.csv")
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="patient-12-records.csv"'
    lines = resp.get_data(as_text=True).splitlines()
    assert lines[0].startswith("received_at,mrn,room,cpap_pressure_cmh2o,breath_rate_bpm")
    assert len(lines) == 3
    assert ",12,3,6,14.5,1,10,60.0," in lines[1]
    assert ",12,3,5,12.2,2,,,,," in lines[2]                 # 1 decimal, as on screen
    assert client.get(f"{prefix}/patients/99/records.csv").status_code == 404


def test_csv_numbers_rounded_as_on_screen(client, prefix):
    """The CSV had 8.468595624558928 where the screen shows 8.5."""
    post(client, prefix, rate=8.468595624558928, duration_s=61.26, ahi=3.14159,
         leakage_l=-0.123456)
    header, row = client.get(f"{prefix}/patients/12/records.csv").get_data(
        as_text=True).splitlines()
    cells = dict(zip(header.split(","), row.split(",")))
    assert (cells["breath_rate_bpm"], cells["duration_s"], cells["ahi"],
            cells["leakage_l"]) == ("8.5", "61.3", "3.1", "-0.12")


@pytest.mark.parametrize("data, content_type", [(PNG, "image/png"), (JPEG, "image/jpeg")])
def test_image_served_with_type_cache_and_etag(client, prefix, data, content_type):
    record = post(client, prefix, image=data).get_json()["record"]
    resp = client.get(f"{prefix}/records/{record['id']}/image")
    assert resp.status_code == 200 and resp.mimetype == content_type
    assert resp.data == data
    assert "max-age=31536000" in resp.headers["Cache-Control"]
    etag = resp.headers["ETag"]
    cached = client.get(f"{prefix}/records/{record['id']}/image",
                        headers={"If-None-Match": etag})
    assert cached.status_code == 304 and cached.data == b""


@pytest.mark.parametrize("record_id", ["0" * 24, "abc", "x" * 24])
def test_image_unknown_or_bad_id_is_404(client, prefix, record_id):
    resp = client.get(f"{prefix}/records/{record_id}/image")
    assert resp.status_code == 404 and resp.get_json()["status"] == 404


def test_record_without_image_is_404(client, prefix):
    record = post(client, prefix, image=None).get_json()["record"]
    assert client.get(f"{prefix}/records/{record['id']}/image").status_code == 404


def test_images_are_stored_apart_from_records(app, client):
    post(client, "/api/v1")
    db = app.extensions["storage_db"]
    record = db.records.find_one()
    assert "flow_image" not in record and "data" not in record
    assert bytes(db.images.find_one({"_id": record["_id"]})["data"]) == PNG
    room = db.rooms.find_one({"_id": 3})  # (the collection also holds the rooms version)
    assert "data" not in str(room["latest"])


def test_indexes_created(app):
    db = app.extensions["storage_db"]
    patient_indexes = db.patients.index_information()
    assert patient_indexes["mrn_unique"]["unique"] is True
    assert "room_received" in db.records.index_information()
    assert "mrn_received" in db.records.index_information()
    assert "room_commanded" in db.commands.index_information()
    storage.Storage(db).ensure_indexes()  # idempotent
    assert db.patients.index_information() == patient_indexes


def test_unexpected_error_is_json_500_without_traceback(app):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    resp = app.test_client().get("/boom")
    assert resp.status_code == 500
    assert resp.get_json() == {"status": 500, "error": "Internal Server Error",
                               "message": "unexpected server error"}
    assert b"secret" not in resp.data and b"Traceback" not in resp.data


@pytest.mark.parametrize("method, path, allowed", [
    ("delete", "/api/v1/rooms", "GET"), ("get", "/add_patient", "POST"),
    ("post", "/api/rooms/3/pressure", "PUT")])
def test_wrong_method_is_json_405_with_allow(client, method, path, allowed):
    resp = getattr(client, method)(path)
    assert resp.status_code == 405 and resp.get_json()["error"] == "Method Not Allowed"
    assert allowed in resp.headers["Allow"]


def test_unknown_path_is_json_404(client):
    resp = client.get("/api/v1/nothing")
    assert resp.status_code == 404 and resp.get_json()["error"] == "Not Found"


def test_rooms_wall_cache_sees_changes_from_other_workers(monkeypatch):
    """Two apps on one database stand for two workers: a cached wall is reused only
    while nothing changed anywhere."""
    import mongomock

    from server import create_app

    shared = mongomock.MongoClient(tz_aware=True)
    worker_a = create_app({"TESTING": True, "MONGO_CLIENT": shared}).test_client()
    worker_b = create_app({"TESTING": True, "MONGO_CLIENT": shared}).test_client()
    calls = []
    real = storage.Storage.list_rooms
    monkeypatch.setattr(storage.Storage, "list_rooms",
                        lambda self: calls.append(1) or real(self))
    worker_b.post("/api/v1/patients", json=upload_body(mrn=1, room=1))
    assert len(worker_a.get("/api/rooms").get_json()["rooms"]) == 1
    assert len(worker_a.get("/api/rooms").get_json()["rooms"]) == 1
    assert len(calls) == 1, "unchanged wall served from the cache"
    worker_b.post("/api/v1/patients", json=upload_body(mrn=2, room=2))
    assert [r["room"] for r in worker_a.get("/api/rooms").get_json()["rooms"]] == [1, 2]
    cmd = worker_b.put("/api/v1/rooms/2/pressure", json={"pressure_cmh2o": 8, "mrn": 2}).get_json()
    assert worker_a.get("/api/rooms").get_json()["rooms"][1]["command"]["id"] == cmd["id"]
    worker_b.post(f"/api/v1/rooms/2/pressure/{cmd['id']}/applied")
    assert worker_a.get("/api/rooms").get_json()["rooms"][1]["command"]["applied"] is True
    # A record of a patient staying in their room (its room update bumps the version)
    worker_b.post("/api/v1/patients", json=upload_body(mrn=1, room=1, pressure=17))
    assert worker_a.get("/api/rooms").get_json()["rooms"][0]["latest"][
        "cpap_pressure_cmh2o"] == 17
    assert len(calls) == 5


@pytest.mark.parametrize("environ, debug", [
    ({}, False), ({"FLASK_DEBUG": "0"}, False), ({"API_DEBUG": ""}, False),
    ({"FLASK_DEBUG": "1"}, True), ({"API_DEBUG": "true"}, True),
])
def test_python_server_py_debugs_only_when_asked(environ, debug):
    from server import debug_requested

    assert debug_requested(environ) is debug
