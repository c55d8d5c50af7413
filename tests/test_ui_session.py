"""The UI's HTTP plumbing: one pooled ``requests.Session`` per process (plus one carrying
the upload retries), shared safely by concurrent browser sessions, and one table of the
caches each change makes stale.

The real Flask API is served over HTTP from a thread, as in tests/test_ui_apptest.py.
"""
from __future__ import annotations

import threading

import pytest
import requests
from flask import Flask, jsonify, request
from streamlit.testing.v1 import AppTest

from tests.test_ui_apptest import (  # noqa: F401  (fixtures)
    SCRIPT, api, api_upload, enter_patient, load_file, recordings, texts, ui)
from tests.ui_support import click, run, serve_api, ui_sessions_from


def test_many_requests_and_reruns_go_through_one_session_per_kind(api, monkeypatch, recordings):
    built, sent = [], []

    class CountingSession(requests.sessions.Session):
        def __init__(self):
            super().__init__()
            built.append(self)

        def request(self, method, url, **kwargs):
            sent.append((self, method, url))
            return super().request(method, url, **kwargs)

    api_upload(api, mrn=40, room=7, name="Ada")
    with ui_sessions_from(CountingSession):
        at = run(AppTest.from_file(SCRIPT, default_timeout=30))
        for _ in range(3):
            click(at, "mon_refresh")
            click(at, "pt_refresh")
        at.text_input(key="mon_pressure_7").input("14")
        click(at, "mon_send_7")
        click(at, "mon_confirm_7")
        enter_patient(at)
        load_file(at, recordings["calm"])
        run(at)
        click(at, "ps_upload")
        assert any("Uploaded at" in s for s in texts(at.success)), texts(at.error)
        second = run(AppTest.from_file(SCRIPT, default_timeout=30))   # another browser
        click(second, "mon_refresh")
    uploads = [s for s, method, url in sent if method == "POST" and url.endswith("/patients")]
    others = [s for s, method, url in sent if not (method == "POST" and url.endswith("/patients"))]
    assert len(sent) >= 20 and len(built) == 2, (len(sent), len(built))
    assert len(set(map(id, uploads))) == 1 and len(set(map(id, others))) == 1
    assert uploads[0] is not others[0]
    policy = uploads[0].get_adapter(api).max_retries      # the script's own UPLOAD_RETRY
    assert (policy.total, policy.status_forcelist, policy.allowed_methods) == (
        ui.UPLOAD_RETRY.total, ui.UPLOAD_RETRY.status_forcelist, ui.UPLOAD_RETRY.allowed_methods)
    assert others[0].get_adapter(api).max_retries.total == 0        # never retried blindly


@pytest.fixture
def echo():
    """A server that echoes the caller's Authorization header and sets a cookie."""
    app = Flask(__name__)

    @app.get("/echo")
    def echo_view():
        resp = jsonify(auth=request.headers.get("Authorization"),
                       cookie=request.headers.get("Cookie"))
        resp.set_cookie("session", request.headers.get("Authorization") or "none")
        return resp

    with serve_api(app) as url:
        yield url


def test_the_shared_session_keeps_no_cookie_between_people(echo, monkeypatch):
    monkeypatch.setenv(ui.TOKEN_ENV, "first-person-token-0123456789")
    first = ui.api_json("GET", "/echo", base=echo)
    monkeypatch.setenv(ui.TOKEN_ENV, "second-person-token-0123456789")
    second = ui.api_json("GET", "/echo", base=echo)
    assert first == {"auth": "Bearer first-person-token-0123456789", "cookie": None}
    assert second == {"auth": "Bearer second-person-token-0123456789", "cookie": None}
    assert not ui.api_session().cookies


def test_concurrent_browser_sessions_each_get_their_own_answer(echo):
    """Streamlit runs each browser session in its own thread, all on the one session."""
    answers: dict[int, list] = {n: [] for n in range(8)}

    def person(n):
        for _ in range(15):
            answers[n].append(ui.api_json("GET", "/echo", base=echo, side=None,
                                          headers={"Authorization": f"Bearer p{n}"})["auth"])

    threads = [threading.Thread(target=person, args=(n,)) for n in answers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert answers == {n: [f"Bearer p{n}"] * 15 for n in answers}


# --- which caches a change makes stale ------------------------------------------------

MUTATIONS = {
    "upload": lambda: ui.post_patient({"mrn": 40, "room": 7, "upload_id": "u-1"}),
    "command": lambda: ui.put_pressure(7, 12, 40),
    "applied": lambda: ui.post_applied(7, "c-1"),
}


@pytest.fixture
def counted_api(monkeypatch):
    """``api_json`` answering {} and counting the GETs behind each cached fetch."""
    gets: list[str] = []

    def fake_api_json(method, path, **kwargs):
        if method == "GET":
            gets.append(path)
        return {}

    monkeypatch.setattr(ui, "api_json", fake_api_json)
    ui.st.cache_data.clear()
    yield gets
    ui.st.cache_data.clear()


FETCHES = {
    "rooms": (lambda: ui.fetch_rooms("b"), "/api/v1/rooms"),
    "patients": (lambda: ui.fetch_patients("b"), "/api/v1/patients"),
    "patient": (lambda: ui.fetch_patient("b", 40), "/api/v1/patients/40"),
    "audit": (lambda: ui.fetch_audit("b", 7), "/api/v1/rooms/7/audit"),
}


@pytest.mark.parametrize("kind, stale", [
    ("upload", {"rooms", "patients", "patient", "audit"}),
    ("command", {"rooms", "audit"}),
    ("applied", {"rooms", "audit"}),
])
def test_each_change_refetches_what_it_made_stale_and_only_that(counted_api, kind, stale):
    for fetch, _ in FETCHES.values():
        fetch()
        fetch()                                         # cached: still one GET each
    assert len(counted_api) == len(FETCHES)
    MUTATIONS[kind]()
    for fetch, _ in FETCHES.values():
        fetch()
    refetched = {name for name, (_, path) in FETCHES.items()
                 if counted_api[len(FETCHES):].count(path) == 1}
    assert refetched == stale


def test_a_refused_command_refreshes_the_wall(counted_api, monkeypatch):
    def refuse(method, path, **kwargs):
        if method == "GET":
            counted_api.append(path)
            return {}
        raise ui.ApiError("occupied by another patient", status=409)

    ui.fetch_rooms("b")
    ui.fetch_patient("b", 40)
    monkeypatch.setattr(ui, "api_json", refuse)
    with pytest.raises(ui.ApiError, match="another patient"):
        ui.put_pressure(7, 12, 40)
    ui.fetch_rooms("b")
    ui.fetch_patient("b", 40)
    assert counted_api == ["/api/v1/rooms", "/api/v1/patients/40"] * 2
