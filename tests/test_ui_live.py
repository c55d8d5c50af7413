"""Issue #14 in the UI (AppTest against the real API over HTTP): the Patient Station's live
mode streams a virtual patient into its room and carries a pressure the monitor commands;
the Monitoring Station shows running nights on cards and tiles and the titration table."""
from __future__ import annotations

import pytest
import requests

import patient_streamlit as ui
from tests.test_api_live import chunks_of
from tests.test_ui_apptest import (api, api_command, at, card_states, click,  # noqa: F401
                                   enter_patient, metric_values, monitor, run, station)
from tools import cpap_synth

pytestmark = pytest.mark.slow

NOW = "2026-11-28T03:00:00+00:00"


def live_entry(**live):
    base = {"session_id": "s1", "room": 3, "mrn": 12, "started_at": "2026-11-28T01:00:00Z",
            "last_chunk_at": "2026-11-28T02:59:55+00:00", "pressure_cmh2o": 9,
            "next_sequence": 40, "ended": False, "ahi": 12.0, "ahi_last_hour": 8.0,
            "events_last_10_min": 1}
    return {"room": 3, "patient": {"mrn": 12, "name": "Ada Lovelace", "since": NOW},
            "latest": None, "command": None, "live": {**base, **live}}


@pytest.mark.parametrize("live, state, alert", [
    ({}, "ok", None),
    ({"ahi_last_hour": 22.0}, "attention", "AHI 22/h last hour"),
    ({"events_last_10_min": ui.LIVE_EVENTS_ALERT}, "attention", "3 events in 10 min"),
    ({"last_chunk_at": "2026-11-28T02:55:00+00:00"}, "stale", "live data stopped 5 min ago"),
    ({"ended": True, "ahi_last_hour": 40.0}, "nodata", None),       # an ended night: records view
])
def test_a_running_night_on_the_wall(live, state, alert):
    room = live_entry(**live)
    assert ui.tile_state(room, NOW) == state
    alerts = ui.room_alerts(room, NOW)
    assert (alert in alerts) if alert else not [a for a in alerts if "live" in a or "AHI" in a
                                                  or "events" in a]


def test_a_live_tile_shows_the_nights_ahi_events_and_age():
    assert ui.tile_lines(live_entry(), NOW, "normal") == (
        "AL · 9 cmH2O", "AHI 12 · 1h 8 · 1 ev/10m · 5s")
    assert ui.pressure_in_force(live_entry())[0] == 9


def stream_night(api_url, room=3, mrn=12, pressure=7, seed=5):
    content, _ = cpap_synth.generate(duration_s=420, rate_bpm=15, amplitude_lpm=40,
                                     apnea_gaps_s=(20.0, 15.0, 25.0),
                                     hypopnea_durations_s=(20.0, 30.0), seed=seed)
    for i, part in enumerate(chunks_of(content)):
        requests.post(f"{api_url}/api/v1/rooms/{room}/stream", timeout=10, json={
            "mrn": mrn, "session_id": f"ui-night-{room}-{seed}", "sequence": i,
            "pressure_cmh2o": pressure, "samples": part}).raise_for_status()


def test_monitor_shows_the_running_night_and_its_titration_table(at, api):
    stream_night(api)
    click(at, "mon_refresh")
    cards = [m.value for m in monitor(at).markdown if m.value.startswith(":green-badge[live]")]
    assert len(cards) == 1 and "AHI" in cards[0]
    live = requests.get(f"{api}/api/v1/rooms/3/live", timeout=5).json()
    assert metric_values(monitor(at), "AHI so far") == [ui.ahi_markdown(live["ahi"])]
    (table,) = [d.value for d in monitor(at).dataframe if "Pressure (cmH2O)" in d.value.columns]
    assert list(table["Pressure (cmH2O)"]) == [7]
    assert table["Apneas"].iloc[0] == live["apnea_count"] >= 1     # final data so far
    assert any(c.proto.spec and "pressure_cmh2o" in c.proto.spec
               for c in monitor(at).get("vega_lite_chart"))


def test_bedside_streams_a_virtual_patient_and_carries_a_commanded_pressure(
        at, api, monkeypatch):
    monkeypatch.setenv("SLEEPLAB_LIVE_CHUNK_S", "0.05")
    monkeypatch.setenv("SLEEPLAB_LIVE_SPEED", "300")
    enter_patient(at, name="Ada", mrn="12", room="3", pressure="6")
    at.radio(key="ps_source").set_value(ui.LIVE_SOURCE)
    run(at)
    click(at, "ps_live_start")
    for _ in range(12):
        run(at)
    live = requests.get(f"{api}/api/v1/rooms/3/live", timeout=5).json()
    assert live["mrn"] == 12 and live["next_sequence"] >= 10 and live["pressure_cmh2o"] == 6
    assert any(m.startswith("**Live night, room 3**") for m in
               [e.value for e in station(at).markdown])
    assert metric_values(station(at), "AHI so far")            # the running metrics are shown

    api_command(api, 3, 14, 12)                                  # the monitor raises it
    for _ in range(8):
        run(at)
    rows = requests.get(f"{api}/api/v1/rooms/3/titration", timeout=5).json()["rows"]
    assert [r["pressure_cmh2o"] for r in rows] == [6, 14]        # the following chunks carry it
    assert "next samples carry this pressure" in at.session_state["ps_notice"]
    history = requests.get(f"{api}/api/v1/rooms/3/pressure/history", timeout=5).json()
    assert history["commands"][0]["applied"] is True

    click(at, "ps_live_stop")
    assert requests.get(f"{api}/api/v1/rooms/3/live", timeout=5).json()["ended"] is True
