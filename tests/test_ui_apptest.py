"""Streamlit client (patient_streamlit.py) with AppTest against the real API over HTTP.

Every test serves the real Flask app (``server.create_app`` on a fresh mongomock
database) from a thread on a free port and points ``API_URL`` at it; the script talks
to it with ``requests`` exactly as in production. Recordings come from ``sample_data/``
(through the picker and through the file uploader), each with its known truth.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import re
import time
from contextlib import contextmanager
from pathlib import Path

import mongomock
import pytest
import requests
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

import patient_streamlit as ui
from server import create_app
from tests.ui_support import click, closed_port_url, pressure_field, run, serve_api

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "patient_streamlit.py")
SAMPLE_DIR = ROOT / "sample_data"
SAMPLES = sorted(p.name for p in SAMPLE_DIR.glob("*.txt"))


# --- fixtures -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def recordings():
    """sample_data/ recordings with their true metrics (written by cpap_synth, not the UI)."""
    out = {}
    for key, name in (("calm", "normal_15bpm"), ("apneic", "apnea_4"), ("one", "apnea_1")):
        out[key] = (SAMPLE_DIR / f"{name}.txt").read_bytes()
        out[f"{key}_truth"] = json.loads((SAMPLE_DIR / f"{name}.truth.json").read_text())
    assert (out["calm_truth"]["apnea_count"], out["one_truth"]["apnea_count"],
            out["apneic_truth"]["apnea_count"]) == (0, 1, 4)
    return out


@pytest.fixture
def api(monkeypatch, make_app):
    """Base URL of the real API on a fresh database; API_URL points at it."""
    app = make_app()
    with serve_api(app) as url:
        monkeypatch.setenv("API_URL", url)
        st.cache_data.clear()
        yield url


@pytest.fixture
def at(api):
    app = AppTest.from_file(SCRIPT, default_timeout=30)
    app.run()
    assert not app.exception
    return app


def png_bytes(color="red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def api_upload(url, mrn, room, name=None, pressure=10, rate=14.0, apneas=0, image=True):
    body = {"mrn": mrn, "room": room, "cpap_pressure_cmh2o": pressure,
            "breath_rate_bpm": rate, "apnea_count": apneas}
    if name:
        body["name"] = name
    if image:
        body["flow_image"] = base64.b64encode(png_bytes()).decode()
    resp = requests.post(f"{url}/api/v1/patients", json=body, timeout=5)
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


def station(at):
    return at.tabs[0]


def monitor(at):
    return at.tabs[1]


def patients_tab(at):
    return at.tabs[2]


def metric_values(block, label) -> list[str]:
    return [m.value for m in block.metric if m.label == label]


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def enter_patient(at, name="Ada", mrn="12", room="3", pressure="10"):
    at.text_input(key="ps_name").input(name)
    at.text_input(key="ps_mrn").input(mrn)
    at.text_input(key="ps_room").input(room)
    pressure_field(at).input(pressure)


def load_file(at, content: bytes, name="night.txt"):
    at.file_uploader[0].set_value((name, content, "text/plain"))


def patient(url, mrn):
    return requests.get(f"{url}/api/v1/patients/{mrn}", timeout=5).json()


def api_command(url, room: int, pressure: int, mrn: int) -> dict:
    """Command ``pressure`` for patient ``mrn`` in ``room`` through the API, as the
    monitoring station does; returns the command."""
    resp = requests.put(f"{url}/api/v1/rooms/{room}/pressure",
                        json={"pressure_cmh2o": pressure, "mrn": mrn}, timeout=5)
    assert resp.status_code == 201, resp.text
    return resp.json()


# --- Patient Station ------------------------------------------------------------------

@pytest.mark.slow
def test_pressure_outside_4_to_25_is_refused_not_clamped(at):
    enter_patient(at)
    for value in ["3", "26", "12.5", "ten", "-5", "1e1"]:
        pressure_field(at).input(value)
        run(at)
        assert any("whole number from 4 to 25 cmH2O" in e for e in texts(at.error)), value
        assert pressure_field(at).value == value        # not clamped
        assert at.button(key="ps_upload").disabled, value


@pytest.mark.slow
def test_pressure_within_range_is_accepted(at):
    enter_patient(at)
    for value in ["4", "25", " 12 "]:
        pressure_field(at).input(value)
        run(at)
        assert not at.error, value
        assert not at.button(key="ps_upload").disabled, value


@pytest.mark.slow
@pytest.mark.parametrize("field,label", [("ps_mrn", "MRN"), ("ps_room", "Room number")])
def test_mrn_and_room_must_be_positive_integers(at, field, label):
    enter_patient(at)
    for value in ["0", "-2", "abc", "1.5", str(2**60)]:
        at.text_input(key=field).input(value)
        run(at)
        assert f"{label} must be a positive whole number" in " ".join(texts(at.error)), value
        assert at.button(key="ps_upload").disabled, value


@pytest.mark.slow
@pytest.mark.parametrize("field,label", [("ps_mrn", "MRN"), ("ps_room", "Room number")])
def test_too_large_mrn_or_room_message_states_the_limit(at, field, label):
    enter_patient(at)
    at.text_input(key=field).input("99999999999999999999")
    run(at)
    assert texts(at.error) == [f"{label} must be a positive whole number, at most "
                               "9007199254740991 (you entered 99999999999999999999)."]
    at.text_input(key=field).input("9007199254740991")
    run(at)
    assert not at.error and not at.button(key="ps_upload").disabled


def test_chart_frame_keeps_each_buckets_extremes():
    import numpy as np
    time_s = np.arange(100_000) / 100.0
    flow = np.sin(time_s)
    flow[54_321] = 99.0                                      # one spike must survive
    frame = ui.chart_frame(time_s, flow, max_points=1000)
    assert len(frame) <= 1000 and frame["flow_lpm"].max() == 99.0
    assert frame["flow_lpm"].min() == flow.min()
    assert frame["time_s"].is_monotonic_increasing
    small = ui.chart_frame(time_s[:500], flow[:500], max_points=1000)
    assert len(small) == 500


@pytest.mark.slow
def test_upload_enabled_only_with_mrn_and_room(at):
    assert at.button(key="ps_upload").disabled
    at.text_input(key="ps_mrn").input("12")
    run(at)
    assert at.button(key="ps_upload").disabled
    at.text_input(key="ps_room").input("3")
    run(at)
    assert not at.button(key="ps_upload").disabled


@pytest.mark.slow
def test_apnea_count_red_from_two_normal_below(at, recordings):
    load_file(at, recordings["apneic"])
    run(at)
    assert metric_values(station(at), "Apnea count") == [":red[4]"]
    load_file(at, recordings["calm"], name="calm.txt")
    run(at)
    assert metric_values(station(at), "Apnea count") == ["0"]
    assert ui.apnea_markdown(1) == "1" and ui.apnea_markdown(2) == ":red[2]"


@pytest.mark.slow
def test_analysis_shows_metrics_plot_and_zoomable_chart(at, recordings):
    load_file(at, recordings["apneic"])
    run(at)
    metrics = {m.label: m.value for m in station(at).metric}
    truth = recordings["apneic_truth"]
    assert metrics["Breath rate"] == f"{truth['breath_rate_bpm']:.1f} bpm"
    assert metrics["Breaths"] == str(truth["breaths"])
    assert len(at.image) == 1                       # the flow plot PNG
    charts = at.get("vega_lite_chart")
    assert charts, "the zoomable flow chart is missing"


@pytest.mark.slow
def test_sample_picker_analyses_a_sample(at, recordings):
    at.radio(key="ps_source").set_value(ui.SAMPLE_SOURCE)
    run(at)
    assert at.selectbox(key="ps_sample").options == SAMPLES      # .txt only, no truth files
    at.selectbox(key="ps_sample").set_value("apnea_1.txt")
    run(at)
    metrics = {m.label: m.value for m in station(at).metric}
    assert metrics["Apnea count"] == "1"                           # normal colour at 1
    assert metrics["Breath rate"] == f"{recordings['one_truth']['breath_rate_bpm']:.1f} bpm"


@pytest.mark.slow
def test_text_file_that_is_not_a_recording_is_told_so(at):
    enter_patient(at)
    load_file(at, b"hello", name="notes.txt")
    run(at)
    (message,) = texts(at.error)
    assert message.startswith("`notes.txt` is not a usable CPAP recording: no valid samples")
    assert "7 comma-separated numbers" in message and "Nothing from this file is sent" in message
    assert not metric_values(station(at), "Apnea count")


@pytest.mark.slow
def test_unusable_file_blocks_sending_and_stores_nothing(at, api, recordings):
    """After a failed analysis the station neither offers Send nor claims "Load a
    recording": it says the chosen file cannot be used; nothing reaches the server."""
    enter_patient(at, pressure="10")
    load_file(at, b"hello\n", name="notes.txt")
    run(at)
    assert at.button(key="ps_upload").disabled     # (AppTest, like a browser, cannot press it)
    captions = " ".join(texts(station(at).caption))
    assert "`notes.txt` cannot be used" in captions and "Load a recording" not in captions
    assert requests.get(f"{api}/api/v1/patients/12", timeout=5).status_code == 404
    assert requests.get(f"{api}/api/v1/rooms", timeout=5).json()["rooms"] == []
    load_file(at, recordings["calm"], name="night.txt")          # a usable one: sent
    run(at)
    click(at, "ps_upload")
    assert len(patient(api, 12)["records"]) == 1


@pytest.mark.slow
def test_only_one_button_is_labelled_upload(at):
    """The file picker has its own "Upload" button; sending to the server is another."""
    assert at.button(key="ps_upload").label == "Send to server"
    assert [b.label for b in at.button if b.label == "Upload"] == []
    assert at.file_uploader[0].label.startswith("Choose recording file")


@pytest.mark.slow
def test_upload_locks_mrn_and_room_and_keeps_entries(at, api, recordings):
    enter_patient(at, name="Ada", mrn="12", room="3", pressure="10")
    load_file(at, recordings["apneic"])
    run(at)
    click(at, "ps_upload")
    assert at.text_input(key="ps_mrn").disabled and at.text_input(key="ps_room").disabled
    assert at.text_input(key="ps_mrn").value == "12" and at.text_input(key="ps_room").value == "3"
    assert at.text_input(key="ps_name").value == "Ada"
    assert pressure_field(at).value == "10"
    assert any("Uploaded at" in s for s in texts(at.success))
    stored = patient(api, 12)
    assert stored["patient"]["name"] == "Ada" and stored["patient"]["room"] == 3
    (record,) = stored["records"]
    assert record["cpap_pressure_cmh2o"] == 10
    assert record["apnea_count"] == recordings["apneic_truth"]["apnea_count"]
    assert record["has_image"]
    image = requests.get(f"{api}/api/v1/records/{record['id']}/image", timeout=5)
    assert image.content.startswith(b"\x89PNG")


def apply_commanded_pressure(at, api, room: int, pressure: int, mrn: int) -> None:
    """The monitoring station commands ``pressure`` through the API; the station's poll
    puts it in the pressure field; the next poll, after a page run drew that field, marks
    it applied."""
    api_command(api, room, pressure, mrn)
    run(at)
    assert pressure_field(at).value == str(pressure)
    run(at)
    assert requests.get(f"{api}/api/v1/rooms/{room}/pressure", timeout=5).json()["applied"]


@pytest.mark.slow
def test_old_recording_is_not_stored_under_a_new_pressure(at, api, recordings):
    """After a commanded change, Send without a new recording must not store the previous
    recording's breath rate and apneas at the new pressure."""
    enter_patient(at, pressure="10")
    load_file(at, recordings["apneic"])
    run(at)
    click(at, "ps_upload")
    apply_commanded_pressure(at, api, room=3, pressure=14, mrn=12)
    click(at, "ps_upload")
    stored = patient(api, 12)
    assert [r["cpap_pressure_cmh2o"] for r in stored["records"]] == [10]
    assert stored["patient"]["record_count"] == 1
    # said plainly, before and after pressing
    captions = " ".join(texts(station(at).caption))
    assert "made at 10 cmH2O and is already stored" in captions
    assert "Load the next recording made at 14 cmH2O" in captions
    assert any("no new record" in m and "made at 14 cmH2O" in m for m in texts(at.success))
    load_file(at, recordings["calm"], name="at14.txt")          # the next recording: stored
    run(at)
    click(at, "ps_upload")
    stored = patient(api, 12)["records"]
    assert [(r["cpap_pressure_cmh2o"], r["apnea_count"]) for r in stored] == [
        (14, recordings["calm_truth"]["apnea_count"]),
        (10, recordings["apneic_truth"]["apnea_count"])]


@pytest.mark.slow
def test_send_during_an_interrupted_analysis_still_sends_the_results(at, api, recordings):
    """Pressing Send while the page still analyses a newly chosen file interrupts that run,
    leaving no analysis in the session: Send must analyse the chosen file itself (cached)
    instead of storing the patient details only as if no recording were loaded."""
    enter_patient(at, pressure="10")
    load_file(at, recordings["apneic"])
    run(at)
    at.session_state["ps_analysis"] = None           # what the interrupted run left behind
    click(at, "ps_upload")
    (record,) = patient(api, 12)["records"]
    assert record["apnea_count"] == recordings["apneic_truth"]["apnea_count"]


@pytest.mark.slow
def test_success_message_goes_when_the_entries_change(at, api, recordings):
    enter_patient(at, pressure="10")
    load_file(at, recordings["calm"])
    run(at)
    click(at, "ps_upload")
    assert any("Uploaded at" in m for m in texts(at.success))
    at.text_input(key="ps_name").input("Ada L.")
    run(at)
    assert not at.success, "a success message about other entries stayed on screen"
    click(at, "ps_upload")
    assert any("Patient details saved" in m for m in texts(at.success))


@pytest.mark.slow
def test_reupload_replaces_name_and_appends_history(at, api, recordings):
    enter_patient(at, name="Ada", pressure="10")
    load_file(at, recordings["apneic"])
    run(at)
    click(at, "ps_upload")
    click(at, "ps_upload")              # same file, same pressure: no duplicate record
    assert len(patient(api, 12)["records"]) == 1
    at.text_input(key="ps_name").input("Ada Lovelace")
    pressure_field(at).input("11")
    load_file(at, recordings["calm"], name="second.txt")
    run(at)
    click(at, "ps_upload")
    stored = patient(api, 12)
    assert stored["patient"]["name"] == "Ada Lovelace"
    assert [r["cpap_pressure_cmh2o"] for r in stored["records"]] == [11, 10]  # newest first
    assert [r["apnea_count"] for r in stored["records"]] == [0, 4]


@pytest.mark.slow
def test_upload_without_pressure_sends_patient_only(at, api, recordings):
    enter_patient(at, pressure="")
    load_file(at, recordings["calm"])
    run(at)
    click(at, "ps_upload")
    stored = patient(api, 12)
    assert stored["patient"]["mrn"] == 12 and stored["records"] == []
    assert any("Enter a CPAP pressure" in s for s in texts(at.success))


@pytest.mark.slow
def test_reset_clears_everything_unlocks_and_sends_nothing_old(at, api, recordings):
    enter_patient(at, name="Ada", pressure="10")
    load_file(at, recordings["apneic"])
    run(at)
    click(at, "ps_upload")
    click(at, "ps_reset")
    for key in ("ps_name", "ps_mrn", "ps_room", "ps_pressure"):
        assert at.text_input(key=key).value == ""
        assert not at.text_input(key=key).disabled
    assert not metric_values(station(at), "Apnea count")
    assert at.file_uploader[0].value is None
    # The next patient gets nothing of the previous one, even with a pressure entered.
    enter_patient(at, name="Bob", mrn="13", room="4", pressure="9")
    run(at)
    click(at, "ps_upload")
    stored = patient(api, 13)
    assert stored["patient"]["name"] == "Bob" and stored["records"] == []
    assert len(patient(api, 12)["records"]) == 1


@pytest.mark.slow
def test_pressure_command_reaches_patient_station_on_next_poll(at, api, recordings):
    enter_patient(at, pressure="10")
    load_file(at, recordings["calm"])
    run(at)
    click(at, "ps_upload")
    # The monitoring station (same app, Monitoring tab) commands 14 cmH2O for room 3.
    at.text_input(key="mon_pressure_3").input("14")
    click(at, "mon_send_3")
    assert requests.get(f"{api}/api/v1/rooms/3/pressure", timeout=5).status_code == 404
    click(at, "mon_confirm_3")
    command = requests.get(f"{api}/api/v1/rooms/3/pressure", timeout=5).json()
    # The station applied it in the same run (its poll runs first) or does on the next one.
    run(at)
    assert pressure_field(at).value == "14"
    notice = " ".join(texts(at.info))
    assert "set the CPAP pressure to 14 cmH2O" in notice and "applied at" in notice
    command = requests.get(f"{api}/api/v1/rooms/3/pressure", timeout=5).json()
    assert command["applied"] is True and command["applied_at"]
    # The monitor shows the applied status.
    at.button(key="mon_refresh").click()
    run(at)
    assert any("applied" in m for m in texts(at.markdown) if "14 cmH2O commanded" in m)
    # Later uploads use the commanded pressure.
    load_file(at, recordings["apneic"], name="later.txt")
    run(at)
    click(at, "ps_upload")
    assert patient(api, 12)["records"][0]["cpap_pressure_cmh2o"] == 14


@pytest.mark.slow
def test_command_from_before_this_patient_is_ignored(at, api):
    api_upload(api, mrn=5, room=3, name="Previous patient")
    requests.put(f"{api}/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 20, "mrn": 5}, timeout=5)
    enter_patient(at, pressure="10")
    run(at)
    click(at, "ps_upload")
    run(at)
    assert pressure_field(at).value == "10"
    assert not any("monitoring station set" in i for i in texts(station(at).info))


# --- Monitoring Station ---------------------------------------------------------------

@pytest.mark.slow
def test_monitor_command_validates_and_needs_confirmation(at, api):
    api_upload(api, mrn=12, room=3, name="Ada")
    click(at, "mon_refresh")
    at.text_input(key="mon_pressure_3").input("30")
    click(at, "mon_send_3")
    assert any("whole number from 4 to 25" in e for e in texts(at.error))
    at.text_input(key="mon_pressure_3").input("12")
    click(at, "mon_send_3")
    assert any("to **12 cmH2O**?" in w for w in texts(at.warning))
    click(at, "mon_cancel_3")
    assert requests.get(f"{api}/api/v1/rooms/3/pressure", timeout=5).status_code == 404
    click(at, "mon_send_3")
    click(at, "mon_confirm_3")
    assert requests.get(f"{api}/api/v1/rooms/3/pressure", timeout=5).json()["pressure_cmh2o"] == 12
    assert at.text_input(key="mon_pressure_3").value == ""
    (card,) = [m for m in texts(monitor(at).markdown) if m.startswith("**Room 3**")]
    assert "pending 12 cmH2O" in card                    # the wall shows the pending command
    assert any("waiting for the bedside station" in m for m in texts(at.markdown))


@pytest.mark.slow
def test_room_list_refreshes_from_server(at, api):
    assert any("No rooms yet" in i for i in texts(at.info))
    api_upload(api, mrn=12, room=3, name="Ada", apneas=2)
    click(at, "mon_refresh")
    assert at.selectbox(key="mon_room").options == ["Room 3 — MRN 12 Ada"]
    api_upload(api, mrn=40, room=7, name="Grace")
    click(at, "mon_refresh")
    assert at.selectbox(key="mon_room").options == ["Room 3 — MRN 12 Ada",
                                                     "Room 7 — MRN 40 Grace"]
    wall = metric_values(monitor(at), "apneas")
    assert wall == [":red[2]", "0"]


@pytest.mark.slow
def test_stale_marker_follows_setting(at, api, monkeypatch):
    api_upload(api, mrn=12, room=3)
    click(at, "mon_refresh")
    assert not any("stale" in m for m in texts(at.markdown))
    monkeypatch.setenv("STALE_AFTER_MIN", "0")
    click(at, "mon_refresh")
    assert any("stale" in m for m in texts(at.markdown) if m.startswith("**Room 3**"))


@pytest.mark.slow
def test_history_selection_shows_earlier_image_beside_latest(at, api):
    first = api_upload(api, mrn=12, room=3, name="Ada", pressure=8, apneas=1)["record"]
    api_upload(api, mrn=12, room=3, pressure=9, apneas=2)
    latest = api_upload(api, mrn=12, room=3, pressure=10, apneas=0)["record"]
    click(at, "mon_refresh")
    history = at.selectbox(key="mon_history_3_12")
    assert len(history.options) == 2                      # the two earlier records
    assert any(b.key == "mon_dl_latest_3" for b in at.get("download_button"))
    assert not any(b.key == "mon_dl_earlier_3" for b in at.get("download_button"))
    history.set_value(first["id"])
    run(at)
    headings = [m for m in texts(at.markdown) if m.startswith(("**Latest**", "**Earlier**"))]
    assert headings == [f"**Latest** — {ui.fmt_time(latest['received_at'])}",
                        f"**Earlier** — {ui.fmt_time(first['received_at'])}"]
    assert {b.key for b in at.get("download_button")} >= {"mon_dl_latest_3", "mon_dl_earlier_3"}
    assert len(at.image) == 2
    assert at.get("vega_lite_chart"), "trend chart missing"


def card_states(at) -> dict[int, str]:
    """Room -> state of its wall card, read from the card container's key
    (``mon_card_<state>_<room>``, which the page's CSS colours)."""
    states = {}
    for block in monitor(at).get("flex_container"):
        key = block.proto.id.rpartition("-")[2]
        if key.startswith("mon_card_"):
            _, _, state, room = key.split("_")
            states[int(room)] = state
    return states


def wall_order(at) -> list[int]:
    return [int(m.split("**")[1].split()[1]) for m in texts(monitor(at).markdown)
            if m.startswith("**Room ")]


@pytest.mark.slow
def test_wall_shows_the_pressure_in_force_and_the_records_pressure(at, api):
    api_upload(api, mrn=12, room=3, name="Ada", pressure=10)
    command = api_command(api, 3, 14, mrn=12)
    requests.post(f"{api}/api/v1/rooms/3/pressure/{command['id']}/applied", timeout=5)
    click(at, "mon_refresh")
    # large: the pressure the room runs at now (card and detail); the record's is labelled
    assert metric_values(monitor(at), "Pressure in force") == ["14 cmH2O", "14 cmH2O"]
    assert metric_values(monitor(at), "Record made at") == ["10 cmH2O"]
    assert any(c.startswith("Latest record made at 10 cmH2O") for c in texts(monitor(at).caption))
    assert not metric_values(monitor(at), "cmH2O")
    # a command not yet applied is pending, not in force
    api_command(api, 3, 16, mrn=12)
    click(at, "mon_refresh")
    assert metric_values(monitor(at), "Pressure in force") == ["14 cmH2O", "14 cmH2O"]
    (card,) = [m for m in texts(monitor(at).markdown) if m.startswith("**Room 3**")]
    assert "pending 16 cmH2O" in card
    # a record made after the applied command: its pressure is the one in force
    api_upload(api, mrn=12, room=3, pressure=15)
    click(at, "mon_refresh")
    assert metric_values(monitor(at), "Pressure in force") == ["15 cmH2O", "15 cmH2O"]


@pytest.mark.slow
def test_rooms_needing_attention_stand_out_and_can_come_first(at, api, monkeypatch):
    monkeypatch.setenv("PRESSURE_POLL_S", "1")          # a command is overdue after 3 s
    api_upload(api, mrn=11, room=2, name="Calm", apneas=0)
    api_upload(api, mrn=12, room=3, name="Apneic", apneas=2)
    requests.post(f"{api}/api/v1/patients", json={"mrn": 13, "room": 4}, timeout=5)
    api_upload(api, mrn=14, room=5, name="Waiting", apneas=0)
    api_command(api, 5, 12, mrn=14)
    click(at, "mon_refresh")
    assert card_states(at) == {2: "ok", 3: "attention", 4: "nodata", 5: "ok"}
    assert wall_order(at) == [2, 3, 4, 5]
    cards = {wall_order(at)[i]: m for i, m in enumerate(
        m for m in texts(monitor(at).markdown) if m.startswith("**Room "))}
    assert ":red-badge[:material/warning: 2 apneas]" in cards[3]
    assert any(m.startswith("**No data yet**") for m in texts(monitor(at).markdown))
    time.sleep(3.2)                                     # the command is still not applied
    click(at, "mon_refresh")
    assert card_states(at)[5] == "attention"
    assert any("pending 12 cmH2O not applied after 3 s" in m for m in texts(monitor(at).markdown))
    at.radio(key="mon_order").set_value("Needs attention first")
    run(at)
    assert wall_order(at) == [3, 5, 2, 4]
    assert at.selectbox(key="mon_room").options[:2] == ["Room 3 — MRN 12 Apneic",
                                                        "Room 5 — MRN 14 Waiting"]
    assert any("needs attention" in c for c in texts(monitor(at).caption))   # the legend


@pytest.mark.slow
def test_compare_list_and_latest_agree_when_the_room_list_is_older(at, api):
    """The room list and the history are cached apart: a new record seen in the history
    but not yet in the room list must not be offered as an "earlier" record (the choice
    would vanish on the next refresh, so it took two clicks)."""
    api_upload(api, mrn=12, room=3, name="Ada", pressure=8)
    previous = api_upload(api, mrn=12, room=3, pressure=9)["record"]
    click(at, "mon_refresh")
    newest = api_upload(api, mrn=12, room=3, pressure=10)["record"]
    click(at, "pt_refresh")                      # the history is fresh, the room list cached
    history = at.selectbox(key="mon_history_3_12")
    assert ui.record_label(newest) not in history.options
    assert ui.record_label(previous) in history.options
    headings = [m for m in texts(at.markdown) if m.startswith("**Latest**")]
    assert headings == [f"**Latest** — {ui.fmt_time(newest['received_at'])}"]
    history.set_value(previous["id"])
    run(at)
    click(at, "mon_refresh")                     # both fresh now: the choice stays
    assert at.selectbox(key="mon_history_3_12").value == previous["id"]
    assert any(m.startswith("**Earlier**") for m in texts(at.markdown))


@pytest.mark.slow
def test_one_date_format_and_whole_number_apnea_axis(at, api):
    record = api_upload(api, mrn=12, room=3, name="Ada", apneas=1)["record"]
    api_upload(api, mrn=12, room=3, apneas=3)
    click(at, "mon_refresh")
    records = patient(api, 12)["records"]
    assert metric_values(monitor(at), "Data time") == [ui.fmt_time(records[0]["received_at"])]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", ui.fmt_time(record["received_at"]))
    assert at.selectbox(key="mon_history_3_12").format_func(record["id"]).startswith(
        ui.fmt_time(record["received_at"]) + " · 10 cmH2O · 14.0 bpm · 1 apnea")
    (chart,) = [c for c in monitor(at).get("vega_lite_chart") if "apnea_count" in c.proto.spec]
    spec = json.loads(chart.proto.spec)
    breathing, ahi_panel = spec["vconcat"]
    bars, line = breathing["layer"]
    ahi_line, threshold = ahi_panel["layer"]        # the AHI trend under it, with its alert line
    assert ahi_line["encoding"]["y"]["field"] == "ahi"
    assert threshold["mark"]["type"] == "rule" and threshold["encoding"]["y"]["field"] == "ahi"
    apnea_axis = bars["encoding"]["y"]["axis"]
    assert apnea_axis["format"] == "d" and apnea_axis["tickMinStep"] == 1     # no 0.5 ticks
    assert bars["encoding"]["y"]["scale"]["domainMin"] == 0
    x = bars["encoding"]["x"]
    assert x["scale"]["padding"] >= bars["mark"]["size"] / 2    # the first bar is not clipped
    assert "%b" not in x["axis"]["format"]                      # no "28 Nov" style dates
    assert all(t.get("format") in (None, ui.TIME_FORMAT, ".1f")
               for layer in (bars, line) for t in layer["encoding"]["tooltip"])


@pytest.mark.slow
def test_switching_rooms_replaces_the_detail(at, api):
    api_upload(api, mrn=12, room=3, name="Ada", apneas=3)
    api_upload(api, mrn=40, room=7, name="Grace", apneas=0)
    click(at, "mon_refresh")
    at.text_input(key="mon_pressure_3").input("12")
    click(at, "mon_send_3")
    at.selectbox(key="mon_room").set_value(7)
    run(at)
    headers = [m for m in texts(at.markdown) if m.startswith("#### Room")]
    assert headers == ["#### Room 7 — MRN 40"]
    assert "Patient: Grace" in texts(monitor(at).text)
    assert metric_values(monitor(at), "Apnea count") == ["0"]
    assert not any("Set the CPAP pressure of room" in w for w in texts(at.warning))
    assert not any(w.key == "mon_pressure_3" for w in at.text_input)


@pytest.mark.slow
def test_refresh_interval_selectable_and_pausable(at):
    assert at.selectbox(key="mon_interval").options == list(ui.REFRESH_CHOICES_S)
    at.selectbox(key="mon_interval").set_value("Paused")
    run(at)
    assert any("Auto-refresh paused" in c for c in texts(at.caption))
    at.selectbox(key="mon_interval").set_value("30 s")
    run(at)
    assert any("Refreshes every 30 s" in c for c in texts(at.caption))


# --- Patients -------------------------------------------------------------------------

@pytest.mark.slow
def test_patients_table_history_and_highlight(at, api):
    api_upload(api, mrn=12, room=3, name="Ada", apneas=2)
    api_upload(api, mrn=12, room=3, apneas=0)
    api_upload(api, mrn=40, room=7, name="Grace", apneas=4)
    click(at, "pt_refresh")
    table = at.dataframe[-1].value
    assert list(table["MRN"]) == [12, 40] and list(table["Records"]) == [2, 1]
    assert list(table["Apnea count"]) == [0, 4]
    assert any(b.key == "pt_csv" for b in at.get("download_button"))
    styles = ui.highlight_alert_rows(ui.patients_frame(
        requests.get(f"{api}/api/v1/patients", timeout=5).json()["patients"]))
    styled = styles._compute().ctx
    assert ("background-color", "#fde8e8") not in styled.get((0, 0), [])
    assert ("background-color", "#fde8e8") in styled[(1, 0)]
    at.selectbox(key="pt_history").set_value(12)            # open Ada's history
    run(at)
    history = at.dataframe[-1].value
    assert list(history["Apnea count"]) == [0, 2]
    (csv_button,) = [b for b in at.get("download_button") if b.key == "pt_csv_12"]


@pytest.mark.slow
def test_patients_csv_matches_table(api):
    api_upload(api, mrn=12, room=3, name="Ada, \"Jr\"", apneas=2)
    patients = requests.get(f"{api}/api/v1/patients", timeout=5).json()["patients"]
    import pandas as pd
    back = pd.read_csv(io.BytesIO(ui.patients_csv(patients)))
    assert back.loc[0, "Name"] == "Ada, \"Jr\"" and back.loc[0, "Apnea count"] == 2


@pytest.mark.slow
def test_patients_csv_has_no_formula_cells_and_screen_precision(at, api):
    """A name starting with = + - @ is saved so a spreadsheet shows text, not a formula;
    numbers as on screen (8.5, not 8.468595624558928)."""
    names = ['=HYPERLINK("http://evil.example","click")', "+1+1", "-2+3", "@SUM(A1)"]
    for mrn, name in enumerate(names, start=1):
        api_upload(api, mrn=mrn, room=mrn, name=name, rate=8.468595624558928)
    click(at, "pt_refresh")
    (button,) = [b for b in at.get("download_button") if b.key == "pt_csv"]
    patients = requests.get(f"{api}/api/v1/patients", timeout=5).json()["patients"]
    rows = list(csv.DictReader(io.StringIO(ui.patients_csv(patients).decode())))
    assert [r["Name"] for r in rows] == ["'" + name for name in names]
    assert {r["Breath rate (bpm)"] for r in rows} == {"8.5"}
    assert at.dataframe[-1].value["Name"].tolist() == names       # the table shows them as typed


# --- Safety and failures --------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["<script>alert(1)</script>",
                                  "Ada see https://evil.example/x www.evil.com bob@evil.com",
                                  "**x** $y$ :red[z] `q`"], ids=["html", "links", "markdown"])
def test_names_render_as_plain_text_everywhere(at, api, name):
    """Names never go through Markdown (where URLs and e-mail addresses become links even
    when escaped): plain text elements, grid cells, option labels and code spans only."""
    api_upload(api, mrn=12, room=3, name=name)
    at.button(key="mon_refresh").click()
    click(at, "pt_refresh")
    assert "MRN 12 · " + name in texts(at.text) and "Patient: " + name in texts(at.text)
    markdown = list(at.markdown) + list(at.caption) + list(at.success) + list(at.info)
    assert not any(name.split()[0] in m.value for m in markdown)
    assert all(not m.proto.allow_html for m in markdown)
    assert at.dataframe[-1].value.loc[0, "Name"] == name    # grid cells are plain text
    assert at.selectbox(key="mon_room").options == [f"Room 3 — MRN 12 {name}"]
    assert at.selectbox(key="pt_history").options == [f"Room 3 · MRN 12 · {name} (1 record)"]
    assert ui.md_escape("**x** $y$ :red[z]") == "\\*\\*x\\*\\* \\$y\\$ \\:red\\[z\\]"


@pytest.mark.parametrize("text, span", [("Ada", "`Ada`"), ("a`b", "``a`b``"),
                                        ("`x`", "`` `x` ``"), ("a``b", "```a``b```")])
def test_md_code_fences_any_backticks(text, span):
    assert ui.md_code(text) == span


@pytest.mark.slow
def test_station_refuses_bidi_and_invisible_characters_in_the_name(at, api):
    """ "\u202eevil Bob" would display reversed; the station refuses it with the server's
    rule before anything is sent."""
    for name, found in [("evil \u202eBob", "U+202E RIGHT-TO-LEFT OVERRIDE at position 6"),
                        ("Ada\u200bKing", "U+200B ZERO WIDTH SPACE at position 4")]:
        enter_patient(at, name=name)
        run(at)
        (error,) = texts(at.error)
        assert error.startswith("Patient name must not contain control characters, invisible "
                                "or text-direction characters") and found in error
        assert at.button(key="ps_upload").disabled
    assert requests.get(f"{api}/api/v1/patients/12", timeout=5).status_code == 404
    enter_patient(at, name="Ada King")
    run(at)
    assert not at.error and not at.button(key="ps_upload").disabled


@pytest.mark.slow
def test_record_counts_are_singular_and_plural(at, api):
    api_upload(api, mrn=12, room=3, name="Ada")
    api_upload(api, mrn=40, room=7, name="Grace")
    api_upload(api, mrn=40, room=7)
    click(at, "pt_refresh")
    assert at.selectbox(key="pt_history").options == [
        "Room 3 · MRN 12 · Ada (1 record)", "Room 7 · MRN 40 · Grace (2 records)"]


@pytest.mark.slow
def test_server_down_message_keeps_entries(monkeypatch, recordings):
    monkeypatch.setenv("API_URL", closed_port_url())
    st.cache_data.clear()
    at = AppTest.from_file(SCRIPT, default_timeout=30)
    run(at)
    enter_patient(at, name="Ada", pressure="10")
    load_file(at, recordings["calm"])
    run(at)
    click(at, "ps_upload")
    errors = " ".join(texts(at.error))
    assert "Not uploaded. Cannot reach the server" in errors
    assert "Your entries are kept" in errors
    assert at.text_input(key="ps_mrn").value == "12" and not at.text_input(key="ps_mrn").disabled
    assert pressure_field(at).value == "10"
    assert metric_values(station(at), "Apnea count")
    assert sum("Cannot reach the server" in e for e in texts(at.error)) >= 3   # every tab


@pytest.mark.slow
def test_server_error_message_is_shown(api):
    with pytest.raises(ui.ApiError) as caught:
        ui.api_json("GET", "/api/v1/patients/999", base=api)
    assert caught.value.status == 404
    server_message = requests.get(f"{api}/api/v1/patients/999", timeout=5).json()["message"]
    assert caught.value.message.endswith(ui.md_escape(server_message))


@pytest.mark.slow
def test_server_lost_after_upload_keeps_the_patient(monkeypatch, recordings, make_app):
    app = make_app()
    with serve_api(app) as url:
        monkeypatch.setenv("API_URL", url)
        st.cache_data.clear()
        at = run(AppTest.from_file(SCRIPT, default_timeout=30))
        enter_patient(at, name="Ada", pressure="10")
        load_file(at, recordings["calm"])
        run(at)
        click(at, "ps_upload")
    st.cache_data.clear()                     # the server is gone now
    at.text_input(key="ps_name").input("Ada L.")
    run(at)
    assert any("Pressure link: last check" in w and "Cannot reach the server" in w
               for w in texts(station(at).warning))
    assert at.text_input(key="ps_mrn").disabled and at.text_input(key="ps_mrn").value == "12"
    assert at.text_input(key="ps_name").value == "Ada L."
    click(at, "ps_upload")
    assert any(e.startswith("Not uploaded. Cannot reach the server") for e in texts(at.error))


@pytest.mark.slow
def test_malformed_server_answers_become_messages(monkeypatch):
    from flask import Flask, jsonify

    broken = Flask("broken")

    @broken.get("/api/v1/rooms")
    def rooms():
        return jsonify(rooms=[{"unexpected": True}], server_time="not a time")

    @broken.get("/api/v1/patients")
    def patients():
        return "<html>proxy error page</html>", 200

    @broken.post("/api/v1/patients")
    def upload():
        return jsonify([1, 2, 3]), 201

    with serve_api(broken) as url:
        monkeypatch.setenv("API_URL", url)
        st.cache_data.clear()
        at = run(AppTest.from_file(SCRIPT, default_timeout=30))
        errors = texts(at.error)
        assert any("unexpected problem" in e for e in texts(monitor(at).error)), errors
        assert any("not JSON" in e for e in texts(patients_tab(at).error)), errors
        enter_patient(at)
        run(at)
        click(at, "ps_upload")
    assert any("The last action hit an unexpected problem" in e for e in texts(at.error))
    assert at.text_input(key="ps_mrn").value == "12" and not at.text_input(key="ps_mrn").disabled


# --- automatic retries (upload_id) ------------------------------------------------------

class DropAnswers:
    """WSGI middleware: the first ``drops`` requests matching ``method`` and ``path`` are
    handled by the API (so they are stored), then their connection is cut before any
    answer is sent: the client sees a dropped connection, as when a worker dies
    mid-request. Every matching request body is kept in ``bodies``."""

    def __init__(self, app, method: str, path: str, drops: int = 1):
        self.app, self.method, self.path, self.drops = app, method, path, drops
        self.bodies: list[bytes] = []

    def __call__(self, environ, start_response):
        if environ["REQUEST_METHOD"] != self.method or environ["PATH_INFO"] != self.path:
            return self.app(environ, start_response)
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        self.bodies.append(body)
        environ["wsgi.input"] = io.BytesIO(body)
        if len(self.bodies) > self.drops:
            return self.app(environ, start_response)
        for _ in self.app(environ, lambda *args, **kw: None):   # stored, answer discarded
            pass
        environ["werkzeug.socket"].shutdown(2)                   # connection lost
        start_response("502 Bad Gateway", [])                    # (never reaches the client)
        return []


@contextmanager
def api_dropping(monkeypatch, method: str, path: str, drops: int = 1):
    """The real API behind :class:`DropAnswers`; API_URL points at it."""
    app = create_app({"TESTING": True, "MONGO_CLIENT": mongomock.MongoClient(tz_aware=True)})
    app.wsgi_app = dropping = DropAnswers(app.wsgi_app, method, path, drops)
    with serve_api(app) as url:
        monkeypatch.setenv("API_URL", url)
        st.cache_data.clear()
        yield url, dropping


def station_with_recording(recordings, pressure="10"):
    at = run(AppTest.from_file(SCRIPT, default_timeout=30))
    enter_patient(at, name="Ada", pressure=pressure)
    load_file(at, recordings["apneic"])
    return run(at)


@pytest.mark.slow
def test_upload_retried_after_a_lost_answer_is_stored_once(monkeypatch, recordings):
    with api_dropping(monkeypatch, "POST", "/api/v1/patients") as (url, dropping):
        at = station_with_recording(recordings)
        click(at, "ps_upload")
        assert any("Uploaded at" in s for s in texts(at.success)), texts(at.error)
        stored = patient(url, 12)
    sent = [json.loads(body) for body in dropping.bodies]
    assert len(sent) == 2, "the lost answer was retried automatically"
    assert sent[0] == sent[1] and len(sent[0]["upload_id"]) == 36   # same upload, same key
    (record,) = stored["records"]
    assert stored["patient"]["record_count"] == 1
    assert record["apnea_count"] == recordings["apneic_truth"]["apnea_count"]


@pytest.mark.slow
def test_pressing_upload_again_after_no_answer_reuses_the_key(monkeypatch, recordings):
    """All automatic attempts lose their answer (each was stored): the station shows
    the failure; pressing Upload again re-sends the same key and gets the one record."""
    attempts = 1 + ui.UPLOAD_RETRY.total
    with api_dropping(monkeypatch, "POST", "/api/v1/patients", drops=attempts) as (
            url, dropping):
        at = station_with_recording(recordings)
        click(at, "ps_upload")
        assert any(e.startswith("Not uploaded. Cannot reach the server")
                   for e in texts(at.error)), texts(at.error)
        assert len(dropping.bodies) == attempts
        click(at, "ps_upload")
        assert any("Uploaded at" in s for s in texts(at.success)), texts(at.error)
        stored = patient(url, 12)
        pressure_field(at).input("11")         # a new upload: a new key
        load_file(at, recordings["calm"], name="next.txt")
        run(at)
        click(at, "ps_upload")
        newest = patient(url, 12)
    keys = [json.loads(body)["upload_id"] for body in dropping.bodies]
    assert len(set(keys[:attempts + 1])) == 1 and keys[-1] != keys[0]
    assert len(stored["records"]) == 1 and stored["patient"]["record_count"] == 1
    assert [r["cpap_pressure_cmh2o"] for r in newest["records"]] == [11, 10]
    assert at.session_state["ps_pending"] is None              # answered: nothing pending


@pytest.mark.slow
def test_pressure_command_is_not_retried_blindly(monkeypatch):
    with api_dropping(monkeypatch, "PUT", "/api/v1/rooms/3/pressure") as (url, dropping):
        api_upload(url, mrn=12, room=3, name="Ada")
        at = run(AppTest.from_file(SCRIPT, default_timeout=30))
        click(at, "mon_refresh")
        at.text_input(key="mon_pressure_3").input("12")
        click(at, "mon_send_3")
        click(at, "mon_confirm_3")
        history = requests.get(f"{url}/api/v1/rooms/3/pressure/history", timeout=5).json()
    assert len(dropping.bodies) == 1, "a pressure command is sent once, never repeated"
    assert len(history["commands"]) == 1
    assert any("Cannot reach the server" in e for e in texts(at.error)), texts(at.error)
