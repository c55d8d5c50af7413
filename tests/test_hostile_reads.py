"""Hostile load and exposure (issue #11, items 3, 5, 8, 9, 10): bounded reads, reads
protected by default, foreign Host headers, a full disk, duplicate form fields, tokens
kept out of the access log, and 409 answers that name no other patient."""
from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import mongomock
import pymongo
import pytest
import requests
import yaml
from bson import ObjectId

from sleeplab.api import logconfig
from sleeplab import storage
from tests.api_support import PNG, upload_body
from tools.api_process import gunicorn_command
from tools.local_mongo import LocalMongo, free_port
from tools.processes import stop_process, wait_http
from server import create_app

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MONITOR_TOKEN = "monitor-token-0123456789abcdef"
STATION_TOKEN = "station-token-0123456789abcdef"
AS_MONITOR = {"Authorization": f"Bearer {MONITOR_TOKEN}"}
AS_STATION = {"Authorization": f"Bearer {STATION_TOKEN}"}
FOREIGN_HOST = "rebind.evil.example"


def tokens_file(tmp_path) -> str:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [
        {"name": "ward-monitor", "role": "monitor", "token": MONITOR_TOKEN},
        {"name": "bed-3", "role": "station", "token": STATION_TOKEN, "room": 3}]}))
    return str(path)


def db_of(app):
    return app.extensions["storage_db"]


def snapshot(app) -> dict:
    db = db_of(app)
    return {name: list(db[name].find({}, sort=[("_id", 1)]))
            for name in db.list_collection_names() if name != "meta"}


def seed_records(db, mrn: int, room: int, count: int, start=dt.datetime(2026, 1, 1)):
    """``count`` records of one patient (apnea_count = the record's number), directly in
    the database, with the patient and room documents an upload would leave."""
    start = start.replace(tzinfo=dt.timezone.utc)
    docs = [{"_id": ObjectId(), "mrn": mrn, "room": room,
             "received_at": start + dt.timedelta(minutes=i),
             "cpap_pressure_cmh2o": 4 + i % 20, "breath_rate_bpm": 14.0, "apnea_count": i,
             "breaths": None, "duration_s": None, "ahi": None, "leakage_l": None,
             "has_image": False} for i in range(count)]
    db.records.insert_many(docs)
    latest = storage.record_summary(docs[-1])
    db.patients.insert_one({"mrn": mrn, "name": f"P{mrn}", "room": room, "created_at": start,
                            "updated": {"at": docs[-1]["received_at"]}, "latest": latest})
    db.rooms.insert_one({"_id": room, "room": room, "latest": latest,
                         "patient": {"mrn": mrn, "name": f"P{mrn}", "since": start}})


# -- item 5: reads protected by default --------------------------------------------------
WARD_READS = ["/api/v1/rooms", "/api/v1/patients", "/api/v1/patients/12",
              "/api/v1/patients/12/records", "/api/v1/patients/12/records.csv",
              "/get_all_patients", "/api/rooms/3", "/CPAP_query/3"]


@pytest.fixture
def protected(tmp_path, make_app):
    """Tokens configured, API_PROTECT_READS not set (what the quick start does)."""
    app = make_app(API_TOKENS_FILE=tokens_file(tmp_path))
    client = app.test_client()
    client.post("/api/v1/patients", json=upload_body(mrn=12, room=3), headers=AS_STATION)
    client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 9, "mrn": 12}, headers=AS_MONITOR)
    return client


@pytest.mark.parametrize("path", WARD_READS)
def test_patient_data_needs_a_token_by_default(protected, path):
    anonymous = protected.get(path)
    assert anonymous.status_code == 401, anonymous.data
    assert b"Ada" not in anonymous.data and anonymous.get_json()["error"] == "Unauthorized"
    assert protected.get(path, headers=AS_MONITOR).status_code == 200


def test_the_image_needs_a_token_by_default(protected):
    record_id = protected.get("/api/v1/patients/12", headers=AS_MONITOR
                              ).get_json()["records"][0]["id"]
    assert protected.get(f"/api/v1/records/{record_id}/image").status_code == 401
    image = protected.get(f"/api/v1/records/{record_id}/image", headers=AS_MONITOR)
    assert image.status_code == 200 and image.data == PNG


def test_protection_by_default_also_from_the_environment(monkeypatch, tmp_path, make_app):
    monkeypatch.setenv("API_TOKENS_FILE", tokens_file(tmp_path))
    client = make_app().test_client()
    assert client.get("/get_all_patients").status_code == 401
    assert client.get("/get_all_patients", headers=AS_MONITOR).status_code == 200


@pytest.mark.parametrize("word", ["0", "false", "off", "No"])
def test_open_reads_only_when_asked_for_and_then_warned(tmp_path, caplog, word, make_app):
    with caplog.at_level(logging.WARNING, logger="sleeplab.api.auth"):
        client = make_app(API_TOKENS_FILE=tokens_file(tmp_path),
                          API_PROTECT_READS=word).test_client()
    assert "anyone who can reach the API can read patient" in caplog.text
    assert client.get("/api/v1/rooms").status_code == 200
    assert client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 9}
                      ).status_code == 401  # changes still need a token


def test_an_unknown_protect_reads_value_stops_the_start(tmp_path, make_app):
    from sleeplab.api import auth
    with pytest.raises(auth.TokenConfigError, match="API_PROTECT_READS must be 1 or 0"):
        make_app(API_TOKENS_FILE=tokens_file(tmp_path), API_PROTECT_READS="sometimes")


# -- item 5: Host header checked -----------------------------------------------------------
@pytest.mark.parametrize("host", [FOREIGN_HOST, f"{FOREIGN_HOST}:5000",
                                  "127.0.0.1.evil.example", "localhost.evil.example:5000",
                                  "localhost@evil.example", "localhost:99999", "10.0.0.9"])
@pytest.mark.parametrize("method, path", [("get", "/api/v1/patients"),
                                          ("get", "/get_all_patients"),
                                          ("get", "/api/v1/rooms/3"), ("get", "/health"),
                                          ("post", "/api/v1/patients")])
def test_a_foreign_host_is_refused_before_anything_else(host, method, path, make_app):
    app = make_app()  # open mode: the data would be readable by anyone otherwise
    client = app.test_client()
    client.post("/api/v1/patients", json=upload_body(mrn=12, room=3))
    before = snapshot(app)
    response = getattr(client, method)(path, headers={"Host": host},
                                       **({"json": upload_body(mrn=13)} if method == "post"
                                          else {}))
    assert response.status_code == 400, response.data
    error = response.get_json()
    assert set(error) == {"status", "error", "message"} and error["error"] == "Bad Request"
    assert "API_TRUSTED_HOSTS" in error["message"]
    assert b"Ada" not in response.data
    assert snapshot(app) == before


@pytest.mark.parametrize("host", ["localhost", "localhost:5000", "LocalHost:5000",
                                  "127.0.0.1:8080", "[::1]:5000", "localhost."])
def test_the_local_names_are_trusted_by_default(client, host):
    assert client.get("/api/v1/rooms", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("setting, host, status", [
    ("ward-api.example.org, 10.1.2.3", "ward-api.example.org:5000", 200),
    ("ward-api.example.org, 10.1.2.3", "10.1.2.3", 200),
    ("ward-api.example.org, 10.1.2.3", "localhost", 400),  # the list replaces the default
    ("*", FOREIGN_HOST, 200)])
def test_trusted_hosts_are_configurable(setting, host, status, make_app):
    client = make_app(API_TRUSTED_HOSTS=setting).test_client()
    assert client.get("/api/v1/rooms", headers={"Host": host}).status_code == status


def test_the_bind_host_is_trusted_too(monkeypatch, make_app):
    monkeypatch.setenv("API_HOST", "10.20.30.40")
    client = make_app().test_client()
    assert client.get("/api/v1/rooms", headers={"Host": "10.20.30.40:5000"}).status_code == 200
    assert client.get("/api/v1/rooms", headers={"Host": "10.20.30.41"}).status_code == 400


def test_compose_trusts_the_name_the_ui_uses_for_the_api():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    api_url = compose["services"]["ui"]["environment"]["API_URL"]
    setting = compose["services"]["api"]["environment"]["API_TRUSTED_HOSTS"]
    default = setting.split(":-", 1)[1].rstrip("}")  # ${API_TRUSTED_HOSTS:-...}
    from sleeplab.api import auth
    assert auth.host_name(api_url.split("//", 1)[1]) in auth.trusted_hosts(default)


@pytest.fixture(scope="module")
def streamlit_ui():
    """The real UI (``streamlit run``, the repository's .streamlit/config.toml) on a free
    loopback port; yields the port."""
    port = free_port()
    env = dict(os.environ, API_URL="http://127.0.0.1:9", SLEEPLAB_API_TOKEN="x" * 20)
    env.pop("STREAMLIT_SERVER_ALLOWED_HOSTS", None)
    proc = subprocess.Popen([str(BIN / "streamlit"), "run", "patient_streamlit.py",
                             "--server.address", "127.0.0.1", "--server.port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc, "Streamlit", 60)
        yield port
    finally:
        stop_process(proc)


def websocket_status(port: int, host: str, origin: str) -> int:
    """Open the UI's websocket as a browser on ``origin`` that resolved ``host`` to this
    machine would; 101 when accepted, else the HTTP status of the refusal."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        with connect(f"ws://{host}:{port}/_stcore/stream", sock=sock, open_timeout=10,
                     origin=f"http://{origin}:{port}", subprotocols=["streamlit"]):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


@pytest.mark.slow
@pytest.mark.parametrize("host, origin, status", [
    (FOREIGN_HOST, FOREIGN_HOST, 403),      # DNS rebinding: same origin, foreign name
    ("127.0.0.1", "evil.example", 403),     # a cross-origin page
    ("127.0.0.1", "127.0.0.1", 101), ("localhost", "localhost", 101)])
def test_the_ui_websocket_refuses_foreign_hosts_and_origins(streamlit_ui, host, origin,
                                                            status):
    assert websocket_status(streamlit_ui, host, origin) == status


# -- item 3: bounded reads ---------------------------------------------------------------------
@pytest.fixture(params=["mongomock", pytest.param("nx-27017", marks=pytest.mark.slow)])
def any_db_app(request, make_app):
    """The app on mongomock, and on the real nx-27017 server over TCP (query shapes that
    nx-27017 serves natively must still give MongoDB's answers)."""
    if request.param == "mongomock":
        return make_app()
    server = request.getfixturevalue("local_mongo")
    return create_app({"TESTING": True,
                       "MONGODB_URI": server.uri(f"reads_{uuid.uuid4().hex[:8]}")})


def test_get_all_patients_lists_the_newest_records_only(any_db_app):
    db = db_of(any_db_app)
    seed_records(db, mrn=12, room=3, count=130)
    seed_records(db, mrn=20, room=1, count=5, start=dt.datetime(2026, 2, 1))
    data = any_db_app.test_client().get("/get_all_patients").get_json()
    assert [(p["room_number"], p["patient_mrn"]) for p in data] == [(1, 20), (3, 12)]
    assert data[0]["apnea_count"] == [0, 1, 2, 3, 4]
    long = data[1]
    assert long["apnea_count"] == list(range(30, 130)), "the newest 100, oldest first"
    assert len(long["CPAP_pressure"]) == len(long["breath_rate"]) == \
        len(long["timestamp"]) == 100
    assert long["timestamp"] == sorted(long["timestamp"])


def test_patient_page_counts_records_of_its_patients_only(any_db_app):
    db = db_of(any_db_app)
    for mrn, room, count in [(10, 1, 3), (20, 9, 7), (30, 2, 4)]:  # MRN 20 sorts last
        seed_records(db, mrn=mrn, room=room, count=count)
    client = any_db_app.test_client()
    page = client.get("/api/v1/patients?per_page=2").get_json()["patients"]
    assert [(p["mrn"], p["record_count"]) for p in page] == [(10, 3), (30, 4)]
    assert client.get("/api/v1/patients/20").get_json()["patient"]["record_count"] == 7


def test_records_and_csv_are_bounded_newest_first(client):
    seed_records(db_of(client.application), mrn=12, room=3, count=30)
    records = client.get("/api/v1/patients/12/records?limit=4").get_json()["records"]
    assert [r["apnea_count"] for r in records] == [29, 28, 27, 26]
    whole = client.get("/api/v1/patients/12/records.csv")
    assert (whole.headers["X-Total-Count"], whole.headers["X-Truncated"]) == ("30", "false")
    assert len(whole.get_data(as_text=True).splitlines()) == 31
    part = client.get("/api/v1/patients/12/records.csv?limit=10")
    assert (part.headers["X-Total-Count"], part.headers["X-Truncated"]) == ("30", "true")
    rows = part.get_data(as_text=True).splitlines()
    assert len(rows) == 11 and rows[1].split(",")[5] == "29"  # apnea_count column
    too_many = client.get("/api/v1/patients/12/records.csv?limit=10001")
    assert too_many.status_code == 400 and too_many.get_json()["field"] == "limit"


@pytest.mark.parametrize("path", ["/get_all_patients", "/api/v1/patients/12/records?limit=1001",
                                  "/api/v1/patients/12?limit=5000",
                                  "/api/v1/patients/12/records.csv",
                                  "/api/v1/rooms/3/audit?limit=2000",
                                  "/api/v1/rooms/3/pressure/history?limit=10000"])
def test_a_heavy_read_is_refused_while_the_worker_serves_another(app, client, path):
    client.post("/api/v1/patients", json=upload_body(mrn=12, room=3))
    slots = app.extensions["heavy_reads"]
    assert slots.acquire(blocking=False)  # another heavy read is running in this worker
    try:
        busy = client.get(path)
        assert busy.status_code == 503, busy.data
        assert busy.headers["Retry-After"] == "2"
        assert "busy with other large reads" in busy.get_json()["message"]
        # light reads, polls and uploads are served meanwhile
        assert client.get("/api/v1/patients/12/records?limit=1000").status_code == 200
        assert client.get("/CPAP_query/3").status_code == 404
        assert client.post("/api/v1/patients", json=upload_body(mrn=12, room=3)
                           ).status_code == 200
    finally:
        slots.release()
    assert client.get(path).status_code == 200


@pytest.mark.parametrize("error", [pymongo.errors.ExecutionTimeout("operation exceeded time "
                                                                   "limit", 50),
                                   pymongo.errors.NetworkTimeout("timed out")])
def test_a_heavy_read_that_runs_too_long_is_a_503(client, monkeypatch, error):
    def slow(*_args):
        raise error

    monkeypatch.setattr(storage.Storage, "record_lists", slow)
    client.post("/api/v1/patients", json=upload_body(mrn=12, room=3))
    response = client.get("/get_all_patients")
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"
    assert "took longer than 15 s and was stopped" in response.get_json()["message"]
    assert client.application.extensions["heavy_reads"].acquire(blocking=False), \
        "the slot is given back"


def test_heavy_reads_are_stopped_at_the_time_limit_on_a_real_database(local_mongo):
    """A limit that reading 3,000 records over TCP cannot meet (1 ms): the heavy read is
    stopped; a read within the light bound is not limited."""
    app = create_app({"TESTING": True, "HEAVY_READ_TIMEOUT_S": 0.001,
                      "MONGODB_URI": local_mongo.uri(f"reads_{uuid.uuid4().hex[:8]}")})
    client = app.test_client()
    seed_records(db_of(app), mrn=12, room=3, count=3000)
    stopped = client.get("/api/v1/patients/12/records?limit=5000")
    assert stopped.status_code == 503
    assert "took longer than 0.001 s" in stopped.get_json()["message"]
    assert client.get("/api/v1/patients/12/records?limit=1000").status_code == 200
    assert client.get("/health").get_json() == {"status": "ok", "database": "ok"}


# -- item 8: a full disk is not "database unavailable" --------------------------------------------
DISK_FULL = [
    pymongo.errors.WriteError("database or disk is full", 8,
                              {"index": 0, "code": 8, "errmsg": "database or disk is full"}),
    pymongo.errors.OperationFailure("Plan executor error :: caused by :: No space left on "
                                    "device", 14031),
    pymongo.errors.OperationFailure("write failed", 14031, {"codeName": "OutOfDiskSpace"})]


@pytest.mark.parametrize("error", DISK_FULL)
def test_a_full_disk_is_reported_as_such(app, client, monkeypatch, error):
    def full(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(mongomock.Collection, "insert_one", full)
    response = client.post("/api/v1/patients", json=upload_body())
    assert response.status_code == 507, response.data
    body = response.get_json()
    assert body["error"] == "Insufficient Storage"
    assert "disk is full" in body["message"] and "unavailable" not in body["message"]
    health = client.get("/health")
    assert health.status_code == 503
    assert health.get_json()["database"] == "cannot write"


def test_health_probes_writing(client, monkeypatch):
    assert client.get("/health").get_json() == {"status": "ok", "database": "ok"}
    assert db_of(client.application).meta.find_one({"_id": "health"})["probe"]["pad"]
    client.application.extensions.pop("write_probe")  # the next probe is due

    def full(self):
        raise DISK_FULL[0]

    monkeypatch.setattr(storage.Storage, "write_probe", full)
    health = client.get("/health")
    assert health.status_code == 503
    assert health.get_json()["database"] == "cannot write"
    assert "cannot store data" in health.get_json()["message"]


def test_an_unreachable_database_is_still_unavailable(monkeypatch, client):
    def down(*_args, **_kwargs):
        raise pymongo.errors.ServerSelectionTimeoutError("127.0.0.1:1: connection refused")

    monkeypatch.setattr(mongomock.Collection, "find", down)
    response = client.get("/api/v1/rooms/3")
    assert response.status_code == 503
    assert response.get_json()["message"] == "the database is unavailable; try again shortly"


@pytest.fixture
def tiny_disk(tmp_path):
    """A 4 MB tmpfs (root only); skipped where this machine cannot mount one."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a tmpfs")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def noise_png() -> bytes:
    """A PNG of random pixels (~270 KB: noise does not compress)."""
    from PIL import Image
    out = io.BytesIO()
    Image.frombytes("RGB", (300, 300), os.urandom(300 * 300 * 3)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.slow
def test_a_really_full_disk_on_nx27017(tiny_disk):
    """nx-27017 on a 4 MB tmpfs: uploads of ~270 KB images until the disk is full."""
    server = LocalMongo(data_dir=tiny_disk / "db", port=free_port()).start()
    try:
        client = create_app({"TESTING": True, "MONGODB_URI": server.uri()}).test_client()
        assert client.get("/health").status_code == 200
        statuses = []
        for number in range(40):
            statuses.append(client.post("/api/v1/patients", json=upload_body(
                mrn=1, room=1, apnea=number, image=noise_png())).status_code)
            if statuses[-1] not in (200, 201):
                break
        assert statuses[-1] == 507, statuses
        stored = client.get("/api/v1/patients/1").get_json()["patient"]["record_count"]
        acknowledged = len(statuses) - 1
        # Every acknowledged upload is there; the refused one may be partly written (its
        # record before a summary), which its retry with the same upload_id completes.
        assert acknowledged <= stored <= acknowledged + 1, (stored, statuses)
        health = client.get("/health")
        assert (health.status_code, health.get_json()["database"]) == (503, "cannot write")
    finally:
        server.stop()


# -- item 9: duplicate multipart fields -------------------------------------------------------------
RECORDING = (ROOT / "sample_data" / "normal_15bpm.txt").read_bytes()


def recording_form(**overrides) -> list[tuple]:
    fields = {"mrn": "30", "cpap_pressure_cmh2o": "10", "name": "Ada",
              "upload_id": "0b9e7c2e-5f4a-4d0b-9a51-3c2f1e8d7a64"}
    fields.update(overrides)
    return list(fields.items())


@pytest.mark.parametrize("field, second", [("mrn", "31"), ("cpap_pressure_cmh2o", "12"),
                                           ("name", "Bob"), ("upload_id", "another-key-1234"),
                                           ("mrn", "30")])
def test_a_form_field_given_twice_is_a_400(app, client, field, second):
    from werkzeug.datastructures import MultiDict
    form = MultiDict(recording_form() + [(field, second)])
    form.add("file", (io.BytesIO(RECORDING), "night.txt"))
    before = snapshot(app)
    response = client.post("/api/v1/rooms/3/recordings", data=form,
                           content_type="multipart/form-data")
    assert response.status_code == 400, response.data
    assert response.get_json() == {
        "status": 400, "error": "Bad Request", "field": field,
        "message": f"the form field '{field}' is given more than once"}
    assert snapshot(app) == before


def test_a_file_part_given_twice_is_a_400(app, client):
    from werkzeug.datastructures import MultiDict
    form = MultiDict(recording_form())
    form.add("file", (io.BytesIO(RECORDING), "night.txt"))
    form.add("file", (io.BytesIO(b"time,flow\n"), "other.txt"))
    before = snapshot(app)
    response = client.post("/api/v1/rooms/3/recordings", data=form,
                           content_type="multipart/form-data")
    assert response.status_code == 400 and response.get_json()["field"] == "file"
    assert snapshot(app) == before


def test_a_form_with_each_field_once_is_stored(client):
    from werkzeug.datastructures import MultiDict
    form = MultiDict(recording_form())
    form.add("file", (io.BytesIO(RECORDING), "night.txt"))
    response = client.post("/api/v1/rooms/3/recordings", data=form,
                           content_type="multipart/form-data")
    assert response.status_code == 201 and response.get_json()["patient"]["mrn"] == 30


# -- item 10: tokens out of the access log, no other patient's MRN in a 409 --------------------------
@pytest.mark.parametrize("line, secret", [
    ("GET /api/v1/rooms?token=s3cr3t-value HTTP/1.1", "s3cr3t-value"),
    ("GET /get_all_patients?limit=5&access_token=abc.def-ghi HTTP/1.1", "abc.def-ghi"),
    ("GET /x?API_KEY=K123;page=2 HTTP/1.0", "K123"),
    ("token=only-the-query&per_page=5", "only-the-query"),
    ("http://ward.example/ui?auth=Zm9vOmJhcg%3D%3D", "Zm9vOmJhcg%3D%3D"),
    ('GET /a?password=hunter2#frag HTTP/1.1', "hunter2")])
def test_redaction_removes_credentials_from_request_lines(line, secret):
    redacted = logconfig.redact(line)
    assert secret not in redacted and logconfig.REDACTED in redacted


@pytest.mark.parametrize("line", ["GET /api/v1/patients?page=2&per_page=50 HTTP/1.1",
                                  "GET /api/v1/rooms/3/audit?limit=20 HTTP/1.1",
                                  "GET /x?monkey=1&tokens_left=3&mytoken=9 HTTP/1.1"])
def test_redaction_leaves_other_parameters_alone(line):
    assert logconfig.redact(line) == line


def run_gunicorn_with_access_log(mongodb_uri: str, log_path: Path, *extra: str) -> str:
    """Serve the API under gunicorn (gunicorn.conf.py, ``extra`` options overriding it)
    with an access log; send requests that carry tokens in their query strings and
    referer; return the log."""
    port = free_port()
    proc = subprocess.Popen(
        gunicorn_command(*extra), cwd=ROOT,
        env=dict(os.environ, MONGODB_URI=mongodb_uri, API_HOST="127.0.0.1", API_PORT=str(port),
                 API_WORKERS="1", API_ACCESS_LOG=str(log_path)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", proc, "gunicorn", 30, poll_s=0.1)
        requests.get(f"{base}/api/v1/rooms?token=query-secret-0123456789&limit=2", timeout=10)
        requests.get(f"{base}/get_all_patients?access_token=second-secret-0123", timeout=10,
                     headers={"Referer": "http://ui.example/?api_key=referer-secret-0123"})
    finally:
        stop_process(proc)
    return log_path.read_text()


QUERY_SECRETS = ("query-secret-0123456789", "second-secret-0123", "referer-secret-0123")


def test_gunicorn_access_log_keeps_query_tokens_out(local_mongo, tmp_path):
    uri = local_mongo.uri(f"reads_{uuid.uuid4().hex[:8]}")
    plain = run_gunicorn_with_access_log(uri, tmp_path / "plain.log",
                                         "--logger-class", "gunicorn.glogging.Logger")
    assert all(secret in plain for secret in QUERY_SECRETS), "gunicorn's own log has them"
    redacted = run_gunicorn_with_access_log(uri, tmp_path / "redacted.log")  # the configured one
    assert "GET /api/v1/rooms?token=[REDACTED]&limit=2" in redacted
    assert "/get_all_patients?access_token=[REDACTED]" in redacted
    for secret in QUERY_SECRETS:
        assert secret not in redacted


@pytest.mark.parametrize("retry", [{"mrn": 31, "room": 876543},    # another patient
                                   {"mrn": 987654, "room": 3}])   # another room
def test_a_reused_upload_id_names_no_other_patient(client, retry):
    key = str(uuid.uuid4())
    assert client.post("/api/v1/patients", json=upload_body(mrn=987654, room=876543,
                                                            upload_id=key)).status_code == 201
    response = client.post("/api/v1/patients", json=upload_body(**retry, upload_id=key))
    assert response.status_code == 409
    message = response.get_json()["message"]
    assert "987654" not in message and "876543" not in message
    assert message.startswith(f"upload_id '{key}' was already used for another")
