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
