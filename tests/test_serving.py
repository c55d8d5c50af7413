"""How gunicorn serves the API (serving.py, gunicorn.conf.py): slow clients hold no thread.

The middleware is tested in-process with a scripted ASGI ``receive``; the whole server
through gunicorn as every deployment starts it (api_process.ApiServer).
"""
import asyncio
import json
import socket
import time
from pathlib import Path

import pytest
import requests

from sleeplab.api import serving
from tools.api_process import ApiServer

ROOT = Path(__file__).resolve().parents[1]


# -- BufferedRequests in-process ---------------------------------------------------
def http_scope(content_length=None):
    headers = [(b"host", b"test")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    return {"type": "http", "method": "POST", "path": "/", "headers": headers}


class Script:
    """An ASGI ``receive`` that plays (delay_s, message) pairs, then waits for ever."""

    def __init__(self, *steps):
        self.steps = list(steps)

    async def __call__(self):
        if not self.steps:
            await asyncio.sleep(3600)
        delay_s, message = self.steps.pop(0)
        await asyncio.sleep(delay_s)
        return message


def chunk(data: bytes, more: bool = True, delay_s: float = 0.0):
    return delay_s, {"type": "http.request", "body": data, "more_body": more}


def run(middleware, scope, receive):
    """Run ``middleware``; return what it sent and what the app saw."""
    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    return sent


class RecordingApp:
    """The app behind the middleware: reads its whole body and records it."""

    def __init__(self):
        self.calls = []

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.calls.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def buffered(app, **kw):
    return serving.BufferedRequests(app, **{"max_body_bytes": 10_000, "idle_timeout_s": 0.3,
                                            "total_timeout_s": 2.0, **kw})


def error_answer(sent):
    start, body = sent
    return start["status"], dict(start["headers"]), json.loads(body["body"])


def test_the_app_runs_only_once_the_whole_body_is_in(monkeypatch):
    monkeypatch.setattr(serving, "REPLAY_CHUNK_BYTES", 4)  # the replay in several pieces
    app = RecordingApp()
    receive = Script(chunk(b"abc", delay_s=0.05), chunk(b"defgh", delay_s=0.05),
                     chunk(b"ij", more=False, delay_s=0.05))

    async def app_sees_nothing_early(scope, recv, send):
        assert receive.steps == [], "the app was called before the body was complete"
        await app(scope, recv, send)

    sent = run(buffered(app_sees_nothing_early), http_scope(10), receive)
    assert app.calls == [b"abcdefghij"]
    assert sent[0]["status"] == 200


def test_a_body_that_stalls_gets_408_and_the_app_never_runs():
    app = RecordingApp()
    started = time.monotonic()
    sent = run(buffered(app), http_scope(100), Script(chunk(b"x" * 10)))
    assert time.monotonic() - started < 1.5  # the idle timeout (0.3 s), not the total
    status, headers, body = error_answer(sent)
    assert (status, headers[b"connection"]) == (408, b"close")
    assert body == {"status": 408, "error": "Request Timeout",
                    "message": "the request body did not arrive in time; send it again"}
    assert app.calls == []


def test_a_trickling_body_is_cut_at_the_total_timeout():
    app = RecordingApp()
    trickle = Script(*[chunk(b"x", delay_s=0.2) for _ in range(50)])
    started = time.monotonic()
    sent = run(buffered(app, total_timeout_s=1.0), http_scope(50), trickle)
    assert 0.9 < time.monotonic() - started < 1.6
    assert error_answer(sent)[0] == 408 and app.calls == []


def test_a_body_without_length_over_the_limit_gets_413():
    app = RecordingApp()
    sent = run(buffered(app, max_body_bytes=8), http_scope(),
               Script(chunk(b"12345"), chunk(b"67890")))
    status, _, body = error_answer(sent)
    assert status == 413 and body["message"] == "the request body is larger than 7.63e-06 MB"
    assert app.calls == []


def test_a_declared_length_over_the_limit_goes_to_the_app_unread():
    """The app refuses it (413 with its own message) without reading 200 MB first."""
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent = run(buffered(app, max_body_bytes=8), http_scope(9), Script())
    assert seen == ["/"] and sent[0]["status"] == 413


def test_a_client_that_leaves_mid_body_is_not_served():
    app = RecordingApp()
    sent = run(buffered(app), http_scope(100),
               Script(chunk(b"x"), (0.0, {"type": "http.disconnect"})))
    assert sent == [] and app.calls == []


# -- the real server ----------------------------------------------------------------
@pytest.fixture(scope="module")
def api(local_mongo):
    """One worker with 2 threads: slow clients would take both threads under gthread."""
    with ApiServer(local_mongo.uri("serving"), workers=1,
                   extra_env={"API_THREADS": "2", "API_MAX_UPLOAD_BYTES": str(2 * 2**20)}) as server:
        yield server


def slow_head(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    return sock


@pytest.mark.slow
def test_health_answers_while_slow_clients_hold_connections(api):
    slow = [slow_head(api.port) for _ in range(8)]
    body = [socket.create_connection(("127.0.0.1", api.port), timeout=30) for _ in range(4)]
    try:
        for sock in body:  # a head that promises a body which never comes
            sock.sendall(b"POST /api/v1/patients HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{")
        for _ in range(5):
            time.sleep(0.3)
            for sock in slow:
                sock.sendall(b"X-Slow: 1\r\n")
            answer = requests.get(f"{api.url}/health", timeout=3)
            assert answer.status_code == 200 and answer.json()["database"] == "ok"
    finally:
        for sock in slow + body:
            sock.close()


@pytest.mark.slow
def test_a_request_head_that_takes_too_long_is_cut(api):
    sock = slow_head(api.port)
    started = time.monotonic()
    try:
        closed = False
        while time.monotonic() - started < serving.HEAD_TIMEOUT_S + 5:
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                closed = True
                break
            sock.settimeout(1.0)
            try:
                if sock.recv(1024) == b"":
                    closed = True
                    break
            except socket.timeout:
                pass
        assert closed, "the server kept a trickling request head open"
        assert time.monotonic() - started >= serving.HEAD_TIMEOUT_S - 0.5
    finally:
        sock.close()


@pytest.mark.slow
def test_a_raw_recording_upload_goes_through_the_buffer(api):
    truth = json.loads((ROOT / "sample_data" / "apnea_1.truth.json").read_text())
    with open(ROOT / "sample_data" / "apnea_1.txt", "rb") as recording:
        answer = requests.post(f"{api.url}/api/v1/rooms/31/recordings",
                               files={"file": recording},
                               data={"mrn": 3101, "cpap_pressure_cmh2o": 9}, timeout=60)
    assert answer.status_code == 201, answer.text
    metrics = answer.json()["metrics"]
    assert metrics["breaths"] == len(truth["breath_times"])
    assert metrics["apnea_count"] == len(truth["apnea_events"])


@pytest.mark.slow
def test_an_upload_over_the_limit_gets_the_apis_413(api):
    big = b"0" * (2 * 2**20 + 1)
    answer = requests.post(f"{api.url}/api/v1/rooms/31/recordings",
                           files={"file": ("big.txt", big)},
                           data={"mrn": 3101, "cpap_pressure_cmh2o": 9}, timeout=60)
    assert answer.status_code == 413
    assert answer.json()["field"] == "file"


def chunked(body: bytes, piece_bytes: int = 65536):
    """A body requests sends with Transfer-Encoding: chunked (no Content-Length)."""
    return (body[i:i + piece_bytes] for i in range(0, len(body), piece_bytes))


@pytest.mark.slow
def test_chunked_bodies_reach_the_app_whole(api):
    """Without Content-Length the app gets the buffered body and its length (a2wsgi
    alone hands Werkzeug no length, and Werkzeug then reads nothing)."""
    answer = requests.post(f"{api.url}/api/v1/patients",
                           data=chunked(b'{"mrn": 3102, "room": 32, "name": "Chunked"}', 7),
                           headers={"Content-Type": "application/json"}, timeout=30)
    assert answer.status_code == 201, answer.text
    assert answer.json()["patient"]["name"] == "Chunked"
    boundary = "sleeplab-boundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"mrn\"\r\n\r\n3103\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"cpap_pressure_cmh2o\""
            f"\r\n\r\n9\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"a.txt\"\r\n\r\n").encode()
    form += (ROOT / "sample_data" / "apnea_1.txt").read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    answer = requests.post(f"{api.url}/api/v1/rooms/33/recordings", data=chunked(form),
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
                           timeout=60)
    assert answer.status_code == 201, answer.text
    assert answer.json()["metrics"]["apnea_count"] == 1


@pytest.mark.slow
def test_a_chunked_body_over_the_limit_gets_413(api):
    """No Content-Length: the buffer stops at the largest body the API takes (JSON 4 MB)."""
    answer = requests.post(f"{api.url}/api/v1/rooms/31/recordings",
                           data=chunked(b"0" * 5 * 2**20, 2**20),
                           headers={"Content-Type": "multipart/form-data; boundary=x"},
                           timeout=60)
    assert answer.status_code == 413
    assert answer.json() == {"status": 413, "error": "Request Entity Too Large",
                             "message": "the request body is larger than 4 MB"}
