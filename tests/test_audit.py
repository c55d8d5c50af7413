"""The audit trail: who, when, from where, old and new value of every pressure command,
acknowledgement and patient change; the route listing it; real nx-27017 with auth on."""
from __future__ import annotations

import datetime as dt
import inspect
import json
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import mongomock
import pytest
import requests

from sleeplab import storage
from tests.api_support import upload_body
from tools.api_process import gunicorn_command
from tools.local_mongo import free_port
from server import create_app

ROOT = Path(__file__).resolve().parents[1]
TOKENS = [{"name": "dr-grey", "role": "monitor", "token": "monitor-token-0123456789"},
          {"name": "bed-3", "role": "station", "token": "station-token-0123456789",
           "room": 3},
          {"name": "ops", "role": "admin", "token": "admin-token-0123456789ab"}]
AS = {t["name"]: {"Authorization": f"Bearer {t['token']}"} for t in TOKENS}


def tokens_file(tmp_path) -> str:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": TOKENS}))
    return str(path)


@pytest.fixture
def secured(tmp_path, make_app):
    return make_app(API_TOKENS_FILE=tokens_file(tmp_path)).test_client()


def trail(client, room, **params):
    response = client.get(f"/api/v1/rooms/{room}/audit", query_string=params,
                          headers=AS["ops"])
    assert response.status_code == 200, response.data
    return response.get_json()["entries"]


def only(entries, action):
    found = [e for e in entries if e["action"] == action]
    assert len(found) == 1, [e["action"] for e in entries]
    return found[0]


def recent(stamp: str) -> bool:
    at = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return abs((dt.datetime.now(dt.timezone.utc) - at).total_seconds()) < 60


def test_pressure_command_records_who_when_where_old_and_new(secured):
    c = secured
    c.post("/api/v1/patients", json=upload_body(mrn=12, room=3), headers=AS["bed-3"])
    first = c.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 12, "mrn": 12, "source": "Dr Grey"},
                  headers=AS["dr-grey"]).get_json()
    c.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 14, "mrn": 12}, headers=AS["dr-grey"],
          environ_base={"REMOTE_ADDR": "10.1.2.3"})
    commands = [e for e in trail(c, 3) if e["action"] == "pressure_commanded"]
    newest, oldest = commands
    assert oldest["who"] == {"name": "dr-grey", "role": "monitor"}
    assert oldest["address"] == "127.0.0.1" and recent(oldest["at"])
    assert oldest["old"] is None
    assert oldest["new"] == {"pressure_cmh2o": 12, "source": "Dr Grey",
                             "command_id": first["id"]}
    assert oldest["room"] == 3 and oldest["mrn"] == 12
    assert newest["old"] == 12 and newest["new"]["pressure_cmh2o"] == 14
    assert newest["new"]["source"] == "monitor" and newest["address"] == "10.1.2.3"


def test_acknowledgement_is_recorded_once(secured):
    c = secured
    c.post("/api/v1/patients", json=upload_body(mrn=12, room=3), headers=AS["bed-3"])
    command = c.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 12, "mrn": 12},
                    headers=AS["dr-grey"]).get_json()
    url = f"/api/v1/rooms/3/pressure/{command['id']}/applied"
    assert c.post(url, headers=AS["bed-3"]).status_code == 200
    assert c.post(url, headers=AS["bed-3"]).status_code == 200  # a station retrying
    applied = only(trail(c, 3), "pressure_applied")
    assert applied["who"] == {"name": "bed-3", "role": "station"}
    assert applied["old"] == {"applied": False}
    assert applied["new"] == {"applied": True, "pressure_cmh2o": 12, "command_id": command["id"]}
    assert applied["mrn"] == 12 and recent(applied["at"])


def test_patient_created_name_changed_and_new_record(secured):
    c = secured
    first = c.post("/api/v1/patients", json=upload_body(mrn=12, room=3, name="Ada", pressure=9),
                   headers=AS["bed-3"]).get_json()
    created = only(trail(c, 3), "patient_created")
    assert created["new"] == {"mrn": 12, "name": "Ada", "room": 3} and created["old"] is None
    assert created["who"] == {"name": "bed-3", "role": "station"}
    record = only(trail(c, 3), "record_added")
    assert record["old"] is None
    assert record["new"] == {"id": first["record"]["id"], "cpap_pressure_cmh2o": 9,
                             "breath_rate_bpm": 14.5, "apnea_count": 1}

    second = c.post("/api/v1/patients", json=upload_body(mrn=12, room=3, name="Ada King",
                                                         pressure=11, apnea=4),
                    headers=AS["ops"]).get_json()
    entries = trail(c, 3)
    renamed = only(entries, "name_changed")
    assert (renamed["old"], renamed["new"]) == ("Ada", "Ada King")
    assert renamed["who"] == {"name": "ops", "role": "admin"}
    newest_record = [e for e in entries if e["action"] == "record_added"][0]
    assert newest_record["old"]["id"] == first["record"]["id"]
    assert newest_record["new"]["id"] == second["record"]["id"]
    assert newest_record["new"]["apnea_count"] == 4
    # An upload without a name keeps the name: no name change is recorded.
    c.post("/api/v1/patients", json={"mrn": 12, "room": 3}, headers=AS["ops"])
    assert len([e for e in trail(c, 3) if e["action"] == "name_changed"]) == 1


def test_room_change_is_in_both_rooms_trails(secured):
    c = secured
    c.post("/api/v1/patients", json=upload_body(mrn=12, room=3), headers=AS["ops"])
    c.post("/api/v1/patients", json=upload_body(mrn=12, room=5), headers=AS["ops"])
    for room in (3, 5):
        moved = only(trail(c, room), "room_changed")
        assert (moved["old"], moved["new"], moved["mrn"]) == (3, 5, 12)
    assert [e["action"] for e in trail(c, 5)] == ["record_added", "room_changed"]


def test_legacy_routes_are_audited_too(secured):
    c = secured
    assert c.post("/add_patient", json={"patient_mrn": 7, "room_number": 3,
                                        "patient_name": "Bob"},
                  headers=AS["bed-3"]).status_code == 200
    assert c.get("/new_cpap_pressure/3/10", headers=AS["dr-grey"]).status_code == 200
    entries = trail(c, 3)
    assert [e["action"] for e in entries] == ["pressure_commanded", "patient_created"]
    assert entries[0]["new"]["source"] == "legacy"
    assert entries[0]["who"]["name"] == "dr-grey"


def test_route_lists_newest_first_with_a_limit_and_needs_monitor(secured):
    c = secured
    c.post("/api/v1/patients", json=upload_body(mrn=12, room=3), headers=AS["ops"])
    for value in (5, 6, 7):
        c.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": value, "mrn": 12}, headers=AS["ops"])
    two = trail(c, 3, limit=2)
    assert [e["new"]["pressure_cmh2o"] for e in two] == [7, 6]
    stamps = [e["at"] for e in trail(c, 3)]
    assert stamps == sorted(stamps, reverse=True)
    assert trail(c, 99) == []
    assert c.get("/api/v1/rooms/3/audit?limit=0", headers=AS["ops"]).status_code == 400
    assert c.get("/api/v1/rooms/x/audit", headers=AS["ops"]).get_json()["field"] == "room"
    assert c.get("/api/v1/rooms/3/audit").status_code == 401  # even with reads open
    assert c.get("/api/v1/rooms/3/audit", headers=AS["bed-3"]).status_code == 403
    assert c.get("/api/v1/rooms/3/audit", headers=AS["dr-grey"]).status_code == 200


def test_refused_requests_leave_no_audit_entry(secured):
    c = secured
    c.post("/api/v1/patients", json=upload_body(mrn=12, room=3), headers=AS["ops"])
    before = trail(c, 3)
    c.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 9, "mrn": 12})                     # 401
    c.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 9, "mrn": 12}, headers=AS["bed-3"])  # 403
    c.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 99, "mrn": 12}, headers=AS["ops"])   # 400
    assert trail(c, 3) == before


def test_open_mode_records_anonymous(client):
    client.post("/api/v1/patients", json=upload_body(mrn=12, room=3))
    client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 9, "mrn": 12})
    entries = client.get("/api/v1/rooms/3/audit").get_json()["entries"]
    assert {e["who"]["name"] for e in entries} == {"anonymous"}
    assert {e["who"]["role"] for e in entries} == {None}
    assert {e["address"] for e in entries} == {"127.0.0.1"}


@pytest.mark.parametrize("trust,expected", [(None, "127.0.0.1"), ("1", "203.0.113.9")])
def test_forwarded_address_only_behind_a_trusted_proxy(tmp_path, trust, expected, make_app):
    c = make_app(API_TOKENS_FILE=tokens_file(tmp_path), API_TRUST_PROXY=trust).test_client()
    c.post("/api/v1/patients", json=upload_body(mrn=12, room=3), headers={
        **AS["ops"], "X-Forwarded-For": "203.0.113.9, 10.0.0.1"})
    assert {e["address"] for e in trail(c, 3)} == {expected}


def test_stored_text_comes_back_verbatim(secured):
    c = secured
    name = "<script>alert(1)</script> Zoë"
    c.post("/api/v1/patients", json=upload_body(mrn=12, room=3, name=name), headers=AS["ops"])
    assert only(trail(c, 3), "patient_created")["new"]["name"] == name


def test_audit_collection_is_insert_only():
    """The storage layer only ever inserts into and reads from ``audit``."""
    source = inspect.getsource(storage)
    uses = set(re.findall(r"self\.audit\.(\w+)", source))
    assert uses == {"insert_many", "find", "create_index"}
    indexes = mongomock.MongoClient().db
    storage.Storage(indexes).ensure_indexes()
    assert indexes["audit"].index_information()["room_at"]["key"] == [("room", 1), ("at", -1)]


# -- real database, auth on ----------------------------------------------------------------
@pytest.fixture
def db_uri(local_mongo):
    return local_mongo.uri(database=f"t{uuid.uuid4().hex[:12]}")


def test_audited_flow_with_auth_on_real_nx27017(tmp_path, db_uri):
    c = create_app({"TESTING": True, "MONGODB_URI": db_uri,
                    "API_TOKENS_FILE": tokens_file(tmp_path)}).test_client()
    assert c.post("/api/v1/patients", json=upload_body(mrn=12, room=3, name="Ada")
                  ).status_code == 401
    assert c.post("/api/v1/patients", json=upload_body(mrn=12, room=3, name="Ada"),
                  headers=AS["bed-3"]).status_code == 201
    c.post("/api/v1/patients", json=upload_body(mrn=12, room=3, name="Ada K"), headers=AS["ops"])
    command = c.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 13, "mrn": 12},
                    headers=AS["dr-grey"]).get_json()
    assert c.post(f"/api/v1/rooms/3/pressure/{command['id']}/applied",
                  headers=AS["bed-3"]).status_code == 200
    assert c.post(f"/api/v1/rooms/3/pressure/{command['id']}/applied",
                  headers=AS["bed-3"]).status_code == 200
    entries = trail(c, 3)
    assert [e["action"] for e in entries] == [
        "pressure_applied", "pressure_commanded", "record_added", "name_changed",
        "record_added", "patient_created"]
    assert [e["who"]["name"] for e in entries] == ["bed-3", "dr-grey", "ops", "ops",
                                                   "bed-3", "bed-3"]
    assert all(e["at"].endswith("Z") and recent(e["at"]) for e in entries)
    assert entries[3]["old"] == "Ada" and entries[3]["new"] == "Ada K"
    assert entries[1]["new"]["pressure_cmh2o"] == 13


def test_gunicorn_access_log_never_holds_a_token_and_hup_rotates(tmp_path, db_uri):
    """The real server as the quick start runs it (access log on): tokens stay out;
    a changed tokens file takes effect on SIGHUP."""
    port = free_port()
    access, errors = tmp_path / "access.log", tmp_path / "error.log"
    # The production configuration (gunicorn.conf.py) with the access log in a file.
    env = {"MONGODB_URI": db_uri, "API_TOKENS_FILE": tokens_file(tmp_path),
           "PATH": "/usr/bin:/bin", "API_HOST": "127.0.0.1", "API_PORT": str(port),
           "API_WORKERS": "1", "API_ACCESS_LOG": str(access), "API_LOG_LEVEL": "debug"}
    proc = subprocess.Popen(gunicorn_command("--error-logfile", str(errors)), cwd=ROOT, env=env,
                            start_new_session=True)
    api = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{api}/health", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.2)
        ok = requests.post(f"{api}/api/v1/patients", json=upload_body(mrn=1, room=3),
                           headers=AS["bed-3"], timeout=10)
        assert ok.status_code == 201
        bad = requests.put(f"{api}/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 9, "mrn": 12},
                           headers={"Authorization": "Bearer wrong-token-0123456789"},
                           timeout=10)
        assert bad.status_code == 401 and bad.headers["WWW-Authenticate"].startswith("Bearer")
        assert requests.put(f"{api}/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 9, "mrn": 12},
                            headers=AS["bed-3"], timeout=10).status_code == 403
        assert requests.get(f"{api}/api/v1/rooms/3/audit", headers=AS["dr-grey"],
                            timeout=10).json()["entries"][0]["address"] == "127.0.0.1"
        # Rotation as documented: edit the file, SIGHUP the master; new workers read it.
        rotated = [t for t in TOKENS if t["name"] != "bed-3"] + [
            {"name": "bed-3-new", "role": "station", "token": "rotated-token-0123456789"}]
        Path(env["API_TOKENS_FILE"]).write_text(json.dumps({"tokens": rotated}))
        proc.send_signal(signal.SIGHUP)
        new = {"Authorization": "Bearer rotated-token-0123456789"}
        deadline = time.monotonic() + 30
        while requests.post(f"{api}/api/v1/patients", json=upload_body(mrn=1, room=3),
                            headers=new, timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the new token never became valid"
            time.sleep(0.3)
        assert requests.post(f"{api}/api/v1/patients", json=upload_body(mrn=1, room=3),
                             headers=AS["bed-3"], timeout=10).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    logged = access.read_text() + errors.read_text()
    assert "/api/v1/rooms/3/pressure" in logged  # the log is really written
    for secret in [t["token"] for t in TOKENS] + ["wrong-token-0123456789",
                                                  "rotated-token-0123456789"]:
        assert secret not in logged
