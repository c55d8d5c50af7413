"""The virtual patient (issue #14): events depend on the pressure in force, leak grows with
pressure, chunks make one continuous recording, and the command line streams or writes it."""
from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import cpap_measurements as cm
from sleeplab import virtual_patient as vp
from sleeplab.analysis import incremental as inc

ROOT = Path(__file__).resolve().parents[1]
HALF_HOUR_S = 1800.0


def analyse(text: str):
    return cm.analyze(text.encode("ascii"))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_at_the_optimum_the_night_is_normal(seed):
    patient = vp.VirtualPatient(seed)
    result = analyse(patient.next_chunk(HALF_HOUR_S, patient.optimal_pressure_cmh2o, header=True))
    assert result.ahi < 5


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_three_below_the_optimum_the_apnea_is_at_least_moderate(seed):
    patient = vp.VirtualPatient(seed)
    result = analyse(patient.next_chunk(HALF_HOUR_S, patient.optimal_pressure_cmh2o - 3, header=True))
    assert result.ahi >= 15
    assert result.apnea_count > 0 and result.hypopnea_count > 0


def test_events_grow_with_the_deficit():
    ahi = []
    for below_cmh2o in (0.0, 1.0, 4.0):
        runs = [vp.VirtualPatient(seed, optimal_pressure_cmh2o=12.0) for seed in range(3)]
        ahi.append(np.mean([analyse(p.next_chunk(HALF_HOUR_S, 12.0 - below_cmh2o, header=True)).ahi
                            for p in runs]))
    assert ahi[0] < 5 < ahi[1] < ahi[2]


def test_the_analysis_scores_the_events_the_patient_was_given():
    patient = vp.VirtualPatient(5)
    result = analyse(patient.next_chunk(HALF_HOUR_S, patient.optimal_pressure_cmh2o - 4, header=True))
    given = [e["type"] for e in patient.events]
    assert result.apnea_count == given.count("apnea")
    assert result.hypopnea_count == given.count("hypopnea")


def test_leak_is_higher_at_high_pressure():
    leak = {p: analyse(vp.VirtualPatient(4, optimal_pressure_cmh2o=9.0).next_chunk(300, p, header=True)).leak_rate_lpm
            for p in (10.0, 20.0)}
    assert leak[20.0] > leak[10.0] + 10
    assert leak[10.0] == pytest.approx(vp.leak_lpm(10.0), abs=1.5)


def test_the_optimum_is_drawn_per_patient_in_the_range():
    optima = {vp.VirtualPatient(seed).optimal_pressure_cmh2o for seed in range(20)}
    low, high = vp.OPTIMAL_PRESSURE_RANGE_CMH2O
    assert len(optima) == 20 and all(low <= p <= high for p in optima)
    assert vp.VirtualPatient(1, optimal_pressure_cmh2o=11.5).optimal_pressure_cmh2o == 11.5


def test_deterministic_by_seed():
    a, b, c = vp.VirtualPatient(7), vp.VirtualPatient(7), vp.VirtualPatient(8)
    assert a.next_chunk(60, 8.0) == b.next_chunk(60, 8.0) != c.next_chunk(60, 8.0)


#: The pressure in force at each time of the night: 6 cmH2O, then 9 from 10 min, 13 from 20 min.
def pressure_at(time_s: float) -> float:
    return 6.0 if time_s < 600 else 9.0 if time_s < 1200 else 13.0


def test_chunks_make_one_recording_whatever_the_chunk_sizes():
    one = vp.VirtualPatient(3, optimal_pressure_cmh2o=12.0)
    long_text = "".join(one.next_chunk(600, pressure_at(t), header=t == 0) for t in (0, 600, 1200))
    chunked = vp.VirtualPatient(3, optimal_pressure_cmh2o=12.0)
    rng = np.random.default_rng(0)
    pieces = []
    while chunked.time_s < 1800 - 1e-9:
        until_s = min(chunked.time_s + float(rng.uniform(0.5, 25)), 600 * (chunked.time_s // 600 + 1))
        pieces.append(chunked.next_chunk(until_s - chunked.time_s, pressure_at(chunked.time_s),
                                         header=not pieces))
    assert "".join(pieces) == long_text
    result, truth = analyse("".join(pieces)), chunked.events
    assert result.apnea_count + result.hypopnea_count == len(truth) > 0
    assert result.duration == pytest.approx(1800, abs=0.02)


def test_streamed_into_the_incremental_analysis_as_offline():
    patient = vp.VirtualPatient(2)
    state, chunks = None, []
    for k in range(60):  # 10 min in 10 s chunks, 2 cmH2O below the optimum
        chunks.append(patient.next_chunk(10, patient.optimal_pressure_cmh2o - 2, header=k == 0))
        state, _ = inc.feed(state, chunks[-1])
    state, _ = inc.finish(state)
    result = analyse("".join(chunks))
    assert (state["totals"]["breaths"], state["totals"]["apneas"], state["totals"]["hypopneas"]) == (
        result.breaths, result.apnea_count, result.hypopnea_count)


@pytest.mark.parametrize("duration_s, pressure, message", [
    (-1.0, 8.0, "duration_s"), (float("nan"), 8.0, "duration_s"), (10.0, float("nan"), "pressure_cmh2o")])
def test_bad_arguments_are_refused(duration_s, pressure, message):
    with pytest.raises(ValueError, match=message):
        vp.VirtualPatient(1).next_chunk(duration_s, pressure)


def test_production_code_does_not_import_the_tools():
    run = subprocess.run([sys.executable, "-c", "import sys, sleeplab.virtual_patient; "
                          "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tools'))"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


# --- command line ---------------------------------------------------------------------------------
def test_cli_writes_a_growing_recording(tmp_path):
    out = tmp_path / "night.txt"
    code = vp.main(["--room", "3", "--mrn", "3003", "--out", str(out), "--duration-s", "60",
                    "--chunk-s", "10", "--speed", "1000"])
    assert code == 0
    result = cm.analyze(out)
    assert result.duration == pytest.approx(60, abs=0.02) and result.breaths > 5


class NoStreamRoute(http.server.BaseHTTPRequestHandler):
    """A server of today: no streaming route (404 to every POST, an OpenAPI document
    without it)."""

    paths = b'{"paths": {"/api/v1/rooms/{room}/recordings": {}}}'

    def answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 (the handler's name)
        self.answer(404, b'{"status": 404, "error": "Not Found", "message": "no room 3"}')

    def do_GET(self):  # noqa: N802
        self.answer(200, self.paths) if self.path == vp.OPENAPI_PATH else self.answer(404, b"{}")

    def log_message(self, *args):
        pass


class StreamRouteNoRoom(NoStreamRoute):
    """A server with the route, answering 404: the room is unknown."""

    paths = b'{"paths": {"/api/v1/rooms/{room}/stream": {}}}'


def serve(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture
def old_server():
    server = serve(NoStreamRoute)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_cli_reports_a_refused_chunk_without_a_traceback(capsys):
    server = serve(StreamRouteNoRoom)
    try:
        code = vp.main(["--room", "3", "--mrn", "3003", "--api",
                        f"http://127.0.0.1:{server.server_address[1]}", "--duration-s", "20", "--speed", "1000"])
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1
    assert "chunk 0 refused: HTTP 404" in capsys.readouterr().err


def test_cli_says_when_the_server_has_no_streaming_route(old_server, capsys):
    code = vp.main(["--room", "3", "--mrn", "3003", "--api", old_server, "--duration-s", "20",
                    "--speed", "1000"])
    assert code == 2
    assert "not available yet" in capsys.readouterr().err


def test_cli_keeps_writing_the_file_without_a_streaming_route(old_server, tmp_path, capsys):
    out = tmp_path / "night.txt"
    code = vp.main(["--room", "3", "--mrn", "3003", "--api", old_server, "--out", str(out),
                    "--duration-s", "30", "--speed", "1000"])
    assert code == 0 and "not available yet" in capsys.readouterr().err
    assert cm.analyze(out).duration == pytest.approx(30, abs=0.02)


def test_cli_needs_a_destination(capsys):
    with pytest.raises(SystemExit):
        vp.main(["--room", "3", "--mrn", "3003"])
    assert "--api, --out or both" in capsys.readouterr().err


@pytest.mark.parametrize("pressure, message", [
    ("6.5", "argument --pressure: invalid int value: '6.5'"),
    ("30", "--pressure must be 4 to 25 cmH2O")])
def test_cli_pressure_is_whole_cmh2o_as_the_api_takes_it(tmp_path, capsys, pressure, message):
    """The API takes integer pressures from 4 to 25: another would be refused with every chunk."""
    with pytest.raises(SystemExit):
        vp.main(["--room", "3", "--mrn", "3003", "--out", str(tmp_path / "night.txt"),
                 "--duration-s", "10", "--pressure", pressure])
    assert message in capsys.readouterr().err


class CancelledCommand(StreamRouteNoRoom):
    """A server with a command for the patient that is cancelled when the station
    confirms it (its patient left the room meanwhile): the station must not apply it."""

    bodies: list = []

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path.endswith("/applied"):
            self.answer(409, b'{"status": 409, "error": "Conflict", "message": '
                             b'"this command was cancelled (patient left); do not apply it"}')
        else:
            type(self).bodies.append(body)
            self.answer(201, b"{}")

    def do_GET(self):  # noqa: N802
        if self.path.startswith("/api/v1/rooms/3/pressure"):
            self.answer(200, b'{"id": "c1", "pressure_cmh2o": 14, "applied": false, '
                             b'"cancelled": null}')
        else:
            super().do_GET()


def test_cli_does_not_apply_a_command_the_server_refuses_to_confirm(capsys):
    import json

    server = serve(CancelledCommand)
    try:
        code = vp.main(["--room", "3", "--mrn", "3003", "--api",
                        f"http://127.0.0.1:{server.server_address[1]}", "--duration-s", "30",
                        "--speed", "1000", "--pressure", "7"])
    finally:
        server.shutdown()
        server.server_close()
    bodies = [json.loads(b) for b in CancelledCommand.bodies]
    assert code == 0 and len(bodies) == 3
    assert [b["pressure_cmh2o"] for b in bodies] == [7, 7, 7]
    assert [b["end"] for b in bodies] == [False, False, True]
    assert "not applied: this command was cancelled" in capsys.readouterr().err


# --- end to end: nx-27017, the API under gunicorn, the command line --------------------------------
E2E_ROOM, E2E_MRN = 3, 3003
E2E_OPTIMUM_CMH2O = 10.0
E2E_BELOW_CMH2O, E2E_ABOVE_CMH2O = 6, 11
E2E_BELOW_S = 360.0                 # simulated: 6 min obstructed, then the command
E2E_NIGHT_S = 1500.0                # 25 min in all


def test_virtual_patient_end_to_end_a_command_stops_the_events(local_mongo):
    """The CLI streams room 3 below the optimum; the monitor commands a pressure above it
    (PUT /rooms/3/pressure); the CLI confirms and applies it, the following chunks carry
    it: the titration table gets its second row, where the events stop."""
    import time
    import uuid

    import requests

    from tools.api_process import ApiServer

    with ApiServer(local_mongo.uri(database=f"t{uuid.uuid4().hex[:12]}")) as api, \
            requests.Session() as http:
        cli = subprocess.Popen(
            [sys.executable, "-m", "sleeplab.virtual_patient", "--room", str(E2E_ROOM),
             "--mrn", str(E2E_MRN), "--api", api.url, "--pressure", str(E2E_BELOW_CMH2O),
             "--optimal-pressure", str(E2E_OPTIMUM_CMH2O), "--duration-s", str(E2E_NIGHT_S),
             "--speed", "300"],  # as fast as the API answers
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            live_url = f"{api.url}/api/v1/rooms/{E2E_ROOM}/live"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                live = http.get(live_url, timeout=10)
                if live.status_code == 200 and live.json()["last_time_s"] >= E2E_BELOW_S:
                    break
                assert cli.poll() is None, cli.communicate()
                time.sleep(0.05)
            command = http.put(f"{api.url}/api/v1/rooms/{E2E_ROOM}/pressure", timeout=10,
                               json={"mrn": E2E_MRN, "pressure_cmh2o": E2E_ABOVE_CMH2O})
            assert command.status_code == 201, command.text
            out, err = cli.communicate(timeout=120)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
        assert cli.returncode == 0, err
        assert f"pressure now {E2E_ABOVE_CMH2O} cmH2O (commanded)" in out
        applied = http.get(f"{api.url}/api/v1/rooms/{E2E_ROOM}/pressure",
                           params={"mrn": E2E_MRN}, timeout=10).json()
        assert applied["applied"] is True and applied["pressure_cmh2o"] == E2E_ABOVE_CMH2O
        live = http.get(live_url, timeout=10).json()
        rows = http.get(f"{api.url}/api/v1/rooms/{E2E_ROOM}/titration", timeout=10).json()["rows"]
    assert live["ended"] is True and live["pressure_cmh2o"] == E2E_ABOVE_CMH2O
    assert live["duration_s"] == pytest.approx(E2E_NIGHT_S, abs=0.02)
    assert [row["pressure_cmh2o"] for row in rows] == [E2E_BELOW_CMH2O, E2E_ABOVE_CMH2O]
    below, above = rows
    assert below["to_s"] == above["from_s"] and below["from_s"] == 0.0
    assert below["minutes"] >= E2E_BELOW_S / 60 and above["minutes"] >= 10
    assert below["ahi"] >= 15 and below["apneas"] + below["hypopneas"] >= 3
    assert above["ahi"] < 5
