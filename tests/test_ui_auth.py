"""The Streamlit client with access control on: it sends its token on every request,
turns 401/403 into messages a clinician can act on, and shows a room's audit trail.

The real Flask API (tokens file, mongomock) is served over HTTP from a thread, as in
tests/test_ui_apptest.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import mongomock
import pytest
import requests
import streamlit as st
from streamlit.testing.v1 import AppTest

import patient_streamlit as ui
from server import create_app
from tests.ui_support import click, pressure_field, run, serve_api, ui_sessions_from

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "patient_streamlit.py")
TOKENS = {"ui-screen": ("admin", "ui-admin-token-0123456789"),
          "ward-monitor": ("monitor", "ui-monitor-token-0123456789"),
          "bed-3": ("station", "ui-station-token-0123456789")}


def bearer(name):
    return {"Authorization": f"Bearer {TOKENS[name][1]}"}


@pytest.fixture
def api(tmp_path, monkeypatch, make_app):
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [
        {"name": name, "role": role, "token": token, **({"room": 3} if role == "station" else {})}
        for name, (role, token) in TOKENS.items()]}))
    app = make_app(API_TOKENS_FILE=str(path), API_PROTECT_READS="1")
    with serve_api(app) as url:
        monkeypatch.setenv("API_URL", url)
        st.cache_data.clear()
        yield url
    st.cache_data.clear()


def start(monkeypatch, token_name: str | None) -> AppTest:
    if token_name:
        monkeypatch.setenv(ui.TOKEN_ENV, TOKENS[token_name][1])
    else:
        monkeypatch.delenv(ui.TOKEN_ENV, raising=False)
    at = AppTest.from_file(SCRIPT, default_timeout=30)
    return run(at)


def upload(url, mrn=12, room=3, name="Ada", pressure=10, who="ui-screen"):
    body = {"mrn": mrn, "room": room, "name": name, "cpap_pressure_cmh2o": pressure,
            "breath_rate_bpm": 14.0, "apnea_count": 1}
    resp = requests.post(f"{url}/api/v1/patients", json=body, headers=bearer(who), timeout=5)
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


def texts(elements):
    return [e.value for e in elements]


@pytest.mark.slow
def test_every_request_carries_the_token(api, monkeypatch):
    sent = []

    class SpySession(requests.sessions.Session):
        """The UI's sessions (``requests.get`` here builds its own, unrecorded)."""

        def request(self, method, url, **kwargs):
            sent.append((method, url, (kwargs.get("headers") or {}).get("Authorization")))
            return super().request(method, url, **kwargs)

    upload(api)
    with ui_sessions_from(SpySession):
        at = start(monkeypatch, "ui-screen")
        at.text_input(key="mon_pressure_3").input("12")
        click(at, "mon_send_3")
        click(at, "mon_confirm_3")
        at.session_state["mon_audit_3"] = True
        run(at)
    assert {m for m, _, _ in sent} >= {"GET", "PUT"}
    assert any("/audit" in u for _, u, _ in sent)
    assert {h for _, _, h in sent} == {f"Bearer {TOKENS['ui-screen'][1]}"}
    # The server knew who it was: the command is audited under the UI's token name,
    # from the monitoring station.
    trail = requests.get(f"{api}/api/v1/rooms/3/audit", headers=bearer("ward-monitor"),
                         timeout=5).json()["entries"]
    assert trail[0]["action"] == "pressure_commanded"
    assert trail[0]["who"] == {"name": "ui-screen", "role": "admin",
                               "via": "monitoring-station"}


def test_no_header_without_a_token(monkeypatch):
    monkeypatch.delenv(ui.TOKEN_ENV, raising=False)
    assert ui.auth_headers() == {}
    monkeypatch.setenv(ui.TOKEN_ENV, "  abc-token-0123456789  ")
    assert ui.auth_headers() == {"Authorization": "Bearer abc-token-0123456789"}


@pytest.mark.slow
def test_missing_token_gives_a_clinician_message_on_every_tab(api, monkeypatch):
    upload(api)
    at = start(monkeypatch, None)
    messages = texts(at.error)
    assert sum("not signed in to the server" in m and "SLEEPLAB\\_API\\_TOKEN" not in m
               and ui.TOKEN_ENV in m for m in messages) >= 2, messages   # monitor + patients
    assert not any("Traceback" in m or "401" in m for m in messages)


@pytest.mark.slow
def test_wrong_token_says_it_is_not_valid(api, monkeypatch):
    monkeypatch.setenv(ui.TOKEN_ENV, "revoked-token-0123456789")
    with pytest.raises(ui.ApiError, match="access token is not valid") as caught:
        ui.api_json("GET", "/api/v1/rooms", base=api)
    assert caught.value.status == 401


@pytest.mark.slow
def test_station_token_cannot_command_and_is_told_why(api, monkeypatch):
    upload(api)
    monkeypatch.setenv(ui.TOKEN_ENV, TOKENS["bed-3"][1])
    with pytest.raises(ui.ApiError) as caught:
        ui.put_pressure(3, 12, 12)
    assert caught.value.status == 403
    assert caught.value.message.startswith("This screen's access token does not allow this")
    assert "monitor or admin" in caught.value.message
    assert requests.get(f"{api}/api/v1/rooms/3/pressure", headers=bearer("bed-3"),
                        timeout=5).status_code == 404      # nothing was commanded


@pytest.mark.slow
def test_monitor_shows_the_rooms_audit_trail(api, monkeypatch):
    name = "<b>Ada</b> <script>alert(1)</script>"
    upload(api, name="Ada", pressure=9)
    upload(api, name=name, pressure=10, who="bed-3")
    command = requests.put(f"{api}/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 13, "mrn": 12},
                           headers=bearer("ward-monitor"), timeout=5).json()
    requests.post(f"{api}/api/v1/rooms/3/pressure/{command['id']}/applied",
                  headers=bearer("bed-3"), timeout=5)
    at = start(monkeypatch, "ward-monitor")
    assert not at.dataframe or all("Who" not in d.value.columns for d in at.dataframe)
    at.session_state["mon_audit_3"] = True                 # open the expander
    run(at)
    (frame,) = [d.value for d in at.dataframe if "Who" in d.value.columns]
    assert list(frame.columns) == ["When", "Who", "Action", "Old", "New", "From"]
    rows = frame.to_dict("records")
    assert [r["Action"] for r in rows] == [
        "Pressure applied at bedside", "Pressure commanded", "New CPAP record",
        "Name changed", "New CPAP record", "Patient added"]
    applied, commanded, _, renamed, _, created = rows
    assert applied["Who"] == "bed-3 (station)" and applied["New"] == "applied (13 cmH2O)"
    assert commanded["Who"] == "ward-monitor (monitor)"
    assert (commanded["Old"], commanded["New"]) == ("—", "13 cmH2O")
    assert (renamed["Old"], renamed["New"]) == ("Ada", name)    # the raw text, as text
    assert created["Who"] == "ui-screen (admin)" and created["From"] == "127.0.0.1"
    assert commanded["When"] == ui.fmt_time(
        requests.get(f"{api}/api/v1/rooms/3/audit", headers=bearer("ward-monitor"),
                     timeout=5).json()["entries"][1]["at"])
    # Nothing of the name reached Markdown unescaped anywhere on the page.
    assert not any("<script>" in m for m in texts(at.markdown))


@pytest.mark.slow
def test_audit_trail_refused_for_a_station_screen(api, monkeypatch):
    upload(api)
    at = start(monkeypatch, "bed-3")
    # The wall itself is ward-wide (monitors only when reads are protected): a message.
    assert any("does not allow this" in e for e in texts(at.error))
    with pytest.raises(ui.ApiError, match="does not allow this"):
        ui.fetch_audit(api, 3)


@pytest.mark.slow
def test_open_api_shows_anonymous_in_the_trail(monkeypatch, make_app):
    app = make_app()
    with serve_api(app) as url:
        monkeypatch.setenv("API_URL", url)
        st.cache_data.clear()
        requests.post(f"{url}/api/v1/patients", json={"mrn": 5, "room": 2}, timeout=5)
        at = start(monkeypatch, None)
        at.session_state["mon_audit_2"] = True
        run(at)
        (frame,) = [d.value for d in at.dataframe if "Who" in d.value.columns]
    st.cache_data.clear()
    assert frame.to_dict("records")[0]["Who"] == "anonymous"
    assert frame.to_dict("records")[0]["New"] == "MRN 5 · no name · room 2"


def upload_recording_at(at) -> AppTest:
    """Enter Ada (MRN 12, room 3, 10 cmH2O) with a sample recording and upload it."""
    recording = (ROOT / "sample_data" / "normal_15bpm.txt").read_bytes()
    for key, value in (("ps_name", "Ada"), ("ps_mrn", "12"), ("ps_room", "3"),
                       ("ps_pressure", "10")):
        at.text_input(key=key).input(value)
    at.file_uploader[0].set_value(("night.txt", recording, "text/plain"))
    run(at)
    click(at, "ps_upload")
    assert any("Uploaded at" in s for s in texts(at.success)), texts(at.error)
    return at


@pytest.mark.slow
def test_bedside_screen_works_with_only_its_station_token(api, monkeypatch):
    """A hospital's bedside: station token for room 3, reads protected. The Patient
    Station uploads, receives the monitor's command and confirms it; all audited."""
    at = upload_recording_at(start(monkeypatch, "bed-3"))
    requests.put(f"{api}/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 14, "mrn": 12},
                 headers=bearer("ward-monitor"), timeout=5)
    run(at)
    assert pressure_field(at).value == "14"
    run(at)                      # the next poll acknowledges the field the page drew
    trail = requests.get(f"{api}/api/v1/rooms/3/audit", headers=bearer("ward-monitor"),
                         timeout=5).json()["entries"]
    assert [(e["action"], e["who"]["name"]) for e in trail] == [
        ("pressure_applied", "bed-3"), ("pressure_commanded", "ward-monitor"),
        ("record_added", "bed-3"), ("patient_created", "bed-3")]
    # The same screen entering another room is refused with a message, nothing stored.
    click(at, "ps_reset")
    for key, value in (("ps_mrn", "13"), ("ps_room", "4")):
        at.text_input(key=key).input(value)
    run(at)
    click(at, "ps_upload")
    assert any("does not allow this" in e and "room 3" in e for e in texts(at.error))
    assert requests.get(f"{api}/api/v1/patients/13", headers=bearer("ward-monitor"),
                        timeout=5).status_code == 404


# -- people sign in; single-user mode ------------------------------------------------------
PEOPLE = {"ada": ("Dr Ada", "monitor", "correct horse battery"),
          "bo": ("Nurse Bo", "station", "staple battery horse")}


@pytest.fixture
def people_api(tmp_path, monkeypatch):
    """The API with tokens (reads protected) and two people; yields (url, storage)."""
    from sleeplab.api import accounts
    from sleeplab import storage

    monkeypatch.setattr(accounts, "SCRYPT_N", 2**10)   # fast hashes; the cost is recorded
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [
        {"name": "station", "role": "station", "token": "quick-station-token-0123456789"},
        {"name": "monitor", "role": "monitor", "token": "quick-monitor-token-0123456789"},
        *({"name": name, "role": role, "token": token}
          for name, (role, token) in TOKENS.items() if role != "station")]}))
    mongo = mongomock.MongoClient(tz_aware=True)
    store = storage.Storage(mongo[storage.DEFAULT_DATABASE])
    for username, (name, role, password) in PEOPLE.items():
        assert store.add_user(username, name, role, accounts.hash_password(password))
    app = create_app({"TESTING": True, "MONGO_CLIENT": mongo, "API_TOKENS_FILE": str(path),
                      "API_PROTECT_READS": "1"})
    with serve_api(app) as url:
        monkeypatch.setenv("API_URL", url)
        st.cache_data.clear()
        yield url, store
    st.cache_data.clear()


@pytest.fixture
def loopback():
    """Streamlit's server.address as the launcher sets it (AppTest leaves it unset)."""
    from streamlit import config

    old = config.get_option("server.address")
    config.set_option("server.address", "127.0.0.1")
    yield
    config.set_option("server.address", old)


def tab_labels(at) -> list[str]:
    return [t.label for t in at.tabs]


def sign_in_at(at, username: str, password: str) -> AppTest:
    at.text_input(key="signin_user").input(username)
    at.text_input(key="signin_password").input(password)
    return click(at, "signin_submit")


def who_did(store, action: str) -> dict:
    (entry,) = list(store.audit.find({"action": action}))
    return entry["who"]


@pytest.mark.slow
def test_sign_in_comes_before_the_tabs(people_api, monkeypatch):
    url, store = people_api
    monkeypatch.setenv(ui.SIGN_IN_ENV, "1")
    monkeypatch.setenv(ui.TOKEN_ENV, TOKENS["ui-screen"][1])   # ignored: people sign in
    at = run(AppTest.from_file(SCRIPT, default_timeout=30))
    assert tab_labels(at) == []
    assert [t.label for t in at.text_input] == ["User name", "Password"]
    sign_in_at(at, "ada", "not her password")
    assert texts(at.error) == ["Unknown user name or wrong password."]
    assert tab_labels(at) == [] and "signin" not in at.session_state
    assert at.text_input(key="signin_password").value == ""     # not kept
    assert store.sessions.count_documents({}) == 0


@pytest.mark.slow
def test_signed_in_command_is_audited_under_the_person(people_api, monkeypatch):
    url, store = people_api
    requests.post(f"{url}/api/v1/patients", json={"mrn": 12, "room": 3, "name": "Ada"},
                  headers=bearer("ui-screen"), timeout=5).raise_for_status()
    monkeypatch.setenv(ui.SIGN_IN_ENV, "1")
    at = run(AppTest.from_file(SCRIPT, default_timeout=30))
    sign_in_at(at, "ADA", PEOPLE["ada"][2])
    assert not at.error, texts(at.error)
    assert tab_labels(at) == ["Monitoring Station", "Patients"]   # a monitor's tabs
    assert any("Signed in as **Dr Ada** (monitor) until" in m for m in texts(at.markdown))
    token = at.session_state["signin"]["token"]
    assert not any(token in m for m in texts(at.markdown) + texts(at.caption))
    at.text_input(key="mon_pressure_3").input("12")
    click(at, "mon_send_3")
    click(at, "mon_confirm_3")
    assert any("12 cmH2O sent for MRN 12 (`Ada`) in room 3" in s for s in texts(at.success)), \
        texts(at.error)
    assert who_did(store, "pressure_commanded") == {
        "name": "Dr Ada", "role": "monitor", "user": "ada", "via": "monitoring-station"}
    # Signing out ends the session on the server too.
    click(at, "signout")
    assert tab_labels(at) == [] and "You have signed out." in texts(at.info)
    assert requests.get(f"{url}/api/v1/rooms", timeout=5, headers={
        "Authorization": f"Bearer {token}"}).status_code == 401


@pytest.mark.slow
def test_a_station_person_sees_the_bedside_only_and_an_ended_session_asks_again(
        people_api, monkeypatch):
    url, store = people_api
    monkeypatch.setenv(ui.SIGN_IN_ENV, "1")
    at = run(AppTest.from_file(SCRIPT, default_timeout=30))
    sign_in_at(at, "bo", PEOPLE["bo"][2])
    assert tab_labels(at) == ["Patient Station"]
    for key, value in (("ps_name", "Ada"), ("ps_mrn", "12"), ("ps_room", "3")):
        at.text_input(key=key).input(value)
    run(at)
    click(at, "ps_upload")
    assert who_did(store, "patient_created") == {
        "name": "Nurse Bo", "role": "station", "user": "bo", "via": "patient-station"}
    store.sessions.update_many({}, {"$set": {"revoked": {"at": storage_now()}}})
    at.text_input(key="ps_name").input("Ada L")
    run(at)
    click(at, "ps_upload")                    # refused: the page asks to sign in again
    run(at)
    assert tab_labels(at) == []
    assert any("Your sign-in has ended" in i for i in texts(at.info))
    sign_in_at(at, "bo", PEOPLE["bo"][2])
    assert at.text_input(key="ps_name").value == "Ada L"          # entries kept


def storage_now():
    from sleeplab import storage

    return storage.utc_now()


@pytest.mark.slow
def test_single_user_mode_tells_bedside_and_monitor_apart(people_api, monkeypatch,
                                                          loopback):
    """The quick start: no sign-in, the station token for bedside actions and the
    monitor token for monitor actions; the audit trail in the database says which."""
    url, store = people_api
    monkeypatch.setenv(ui.STATION_TOKEN_ENV, "quick-station-token-0123456789")
    monkeypatch.setenv(ui.MONITOR_TOKEN_ENV, "quick-monitor-token-0123456789")
    at = run(AppTest.from_file(SCRIPT, default_timeout=30))
    assert tab_labels(at) == ["Patient Station", "Monitoring Station", "Patients"]
    assert any("Single-user mode (loopback only): no sign-in" in i for i in texts(at.info))
    upload_recording_at(at)
    st.cache_data.clear()
    run(at)
    at.text_input(key="mon_pressure_3").input("12")
    click(at, "mon_send_3")
    click(at, "mon_confirm_3")
    run(at)                                   # the bedside's poll applies it
    station = {"name": "station", "role": "station", "via": "patient-station"}
    assert who_did(store, "patient_created") == station
    assert who_did(store, "record_added") == station
    assert who_did(store, "pressure_commanded") == {
        "name": "monitor", "role": "monitor", "via": "monitoring-station"}
    assert who_did(store, "pressure_applied") == station


@pytest.mark.slow
def test_single_user_mode_refuses_to_serve_beyond_loopback(people_api, monkeypatch):
    monkeypatch.setenv(ui.STATION_TOKEN_ENV, "quick-station-token-0123456789")
    monkeypatch.setenv(ui.MONITOR_TOKEN_ENV, "quick-monitor-token-0123456789")
    at = run(AppTest.from_file(SCRIPT, default_timeout=30))   # server.address unset: all
    assert tab_labels(at) == []
    assert any("served beyond this computer" in e for e in texts(at.error))
