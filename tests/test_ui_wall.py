"""The monitoring wall at lab scale (AppTest against the real API over HTTP): compact
tiles from COMPACT_FROM_ROOMS rooms on, numeric order, a colour per state, a filter, and
a click on a tile opens that room's detail. The pure helpers are tested on their own.

How many tiles a 1920×1080 screen shows is a browser question: tests/test_browser.py
and benchmarks/bench_wall.py.
"""
from __future__ import annotations

import datetime as dt
import json

import pytest
import requests

import patient_streamlit as ui
from tests.test_ui_apptest import api, api_upload, at, texts  # noqa: F401  (fixtures)
from tests.ui_support import click, run

NOW = "2026-11-28T03:00:00+00:00"


def entry(room=1, mrn=40, name="Ada Lovelace", latest=True, apneas=0, command=None,
          received_at="2026-11-28T02:59:00+00:00"):
    """A room as GET /rooms describes it."""
    return {"room": room,
            "patient": {"mrn": mrn, "name": name, "since": received_at} if mrn else None,
            "latest": ({"apnea_count": apneas, "breath_rate_bpm": 14.2,
                        "cpap_pressure_cmh2o": 10, "received_at": received_at}
                       if latest else None),
            "command": command}


@pytest.mark.parametrize("name, expected", [
    ("Ada Lovelace", "AL"), ("ada", "A"), ("Émile Zola", "ÉZ"),
    ("<script>alert(1)</script>", "SAS"), ("**bold** [x](y)", "BXY"), ("", ""), (None, ""),
    ("Jean Paul Marie Sartre", "JPM"), ("12 34", "")])
def test_initials_are_letters_only(name, expected):
    assert ui.initials(name) == expected


@pytest.mark.parametrize("moment, expected", [
    ("2026-11-28T02:59:15+00:00", "45 s"), ("2026-11-28T02:48:00+00:00", "12 min"),
    ("2026-11-28T00:00:00+00:00", "3 h"), ("2026-11-26T03:00:00+00:00", "2 d"),
    ("2026-11-28T03:00:05+00:00", "0 s"), (None, "—")])
def test_age_is_measured_on_the_server_clock(moment, expected):
    assert ui.age_text(moment, NOW) == expected
    assert ui.age_text(moment, NOW, compact=True) == (
        expected if expected == "—" else expected.replace(" min", "m").replace(" ", ""))


@pytest.mark.parametrize("room, expected", [
    (entry(mrn=None, latest=False), "free"),
    (entry(apneas=ui.APNEA_ALERT_COUNT), "attention"),
    (entry(command={"pressure_cmh2o": 12, "applied": False,
                    "commanded_at": "2026-11-28T02:00:00+00:00"}), "attention"),   # overdue
    (entry(received_at="2026-11-28T01:00:00+00:00"), "stale"),
    (entry(command={"pressure_cmh2o": 12, "applied": False, "commanded_at": NOW}), "pending"),
    (entry(latest=False), "nodata"),
    (entry(), "ok"),
])
def test_tile_state(room, expected):
    assert ui.tile_state(room, NOW) == expected


def test_tile_lines_show_who_pressure_rate_apneas_and_age():
    assert ui.tile_lines(entry(room=12, apneas=3), NOW, "normal") == (
        "AL · 10 cmH2O", "14/min · 3 apn · 1m")
    assert ui.tile_lines(entry(name=None, latest=False), NOW, "small") == (
        "MRN 40 · —", "no data yet")
    assert ui.tile_lines(entry(mrn=None, latest=False), NOW, "small") == (
        "free", "")
    # pending: in force is what was applied before (here nothing: the record's 10)
    pending = ui.tile_lines(entry(room=7, command={
        "pressure_cmh2o": 12, "applied": False, "commanded_at": NOW}), NOW, "small")
    assert pending == ("AL · 10→12", "14/min · 0 apn · 1m")


def tiles(at) -> list[tuple[str, int]]:
    """(state, room) of every tile on the wall, in screen order (the wall is one custom
    component: its tiles are the data it was mounted with)."""
    walls = [e for e in at.get("bidi_component") if e.proto.component_name == "sleeplab_wall"]
    if not walls:
        return []
    (wall,) = walls
    return [(tile["state"], tile["room"]) for tile in json.loads(wall.proto.json)["tiles"]]


def command(api_url, room, mrn, pressure=12):
    requests.put(f"{api_url}/api/v1/rooms/{room}/pressure", timeout=5,
                 json={"pressure_cmh2o": pressure, "mrn": mrn}).raise_for_status()


@pytest.fixture
def ward(api):
    """14 rooms (numbers whose text order differs from their numeric order), one with
    apneas, one with a pending command, one with patient details only."""
    rooms = [1, 2, 3, 9, 10, 11, 12, 19, 20, 100, 101, 110, 200, 1000]
    for room in rooms:
        if room == 20:
            requests.post(f"{api}/api/v1/patients", timeout=5,
                          json={"mrn": 9020, "room": 20, "name": "Details Only"}
                          ).raise_for_status()
        else:
            api_upload(api, mrn=9000 + room, room=room, name=f"Pat {room}",
                       apneas=4 if room == 11 else 0, image=False)
    command(api, 100, 9100)
    return rooms


pytestmark = pytest.mark.slow


def test_many_rooms_are_compact_tiles_in_numeric_order_coloured_by_state(at, ward):
    click(at, "mon_refresh")
    shown = tiles(at)
    assert [room for _, room in shown] == ward                 # 1, 2, 3, 9, 10, 11, …
    states = dict((room, state) for state, room in shown)
    assert states[11] == "attention" and states[100] == "pending"
    assert states[20] == "nodata" and states[1] == "ok"


def test_attention_first_and_the_filter(at, ward):
    click(at, "mon_refresh")
    at.radio(key="mon_order").set_value(ui.ORDER_CHOICES[1])
    run(at)
    assert [room for _, room in tiles(at)][0] == 11
    at.selectbox(key="mon_filter").set_value(ui.FILTER_CHOICES[1])
    run(at)
    assert tiles(at) == [("attention", 11)]
    at.selectbox(key="mon_filter").set_value(ui.FILTER_CHOICES[2])
    run(at)
    assert tiles(at) == [("pending", 100)]


def test_few_rooms_or_the_switch_give_detailed_cards(at, api):
    for room in (1, 2):
        api_upload(api, mrn=800 + room, room=room, name="Few", image=False)
    click(at, "mon_refresh")
    assert tiles(at) == []                                     # Auto: cards for 2 rooms
    at.radio(key="mon_wall").set_value(ui.WALL_MODES[1])
    run(at)
    assert [room for _, room in tiles(at)] == [1, 2]


def test_a_lab_wall_opens_no_room_until_one_is_chosen(at, ward):
    """Many rooms: no detail (and no chart or image fetched) until a room is chosen."""
    click(at, "mon_refresh")
    assert at.session_state.mon_room is None
    assert not [m for m in texts(at.markdown) if m.startswith("#### Room")]
    at.selectbox(key="mon_room").set_value(12)
    run(at)
    assert any(m.startswith("#### Room 12 — MRN 9012") for m in texts(at.markdown))


@pytest.mark.parametrize("age_s, overdue", [(2 * ui.PRESSURE_POLL_S + 1, False),
                                            (ui.COMMAND_OVERDUE_S + 1, True)])
def test_a_command_the_bedside_may_still_be_acknowledging_is_not_overdue(age_s, overdue):
    """A working bedside needs up to two polls (field, then acknowledgement): a command
    just past two polls must not raise the alarm."""
    now = ui.parse_time(NOW)
    commanded = (now - dt.timedelta(seconds=age_s)).isoformat()
    assert ui.command_overdue({"pressure_cmh2o": 12, "applied": False,
                               "commanded_at": commanded}, NOW) is overdue


# --- issue #13: AHI on the wall ---------------------------------------------------------------
def with_ahi(ahi, hypopneas=1, **kw):
    room = entry(**kw)
    room["latest"].update({"ahi": ahi, "hypopnea_count": hypopneas})
    return room


@pytest.mark.parametrize("ahi, state", [(None, "ok"), (14.9, "ok"), (ui.AHI_ALERT_PER_H, "attention"),
                                        (42.0, "attention")])
def test_an_ahi_from_the_alert_threshold_needs_attention(ahi, state):
    room = with_ahi(ahi)
    assert ui.tile_state(room, NOW) == state
    assert ui.room_state(room, NOW) == state
    assert [a for a in ui.room_alerts(room, NOW) if a.startswith("AHI")] == (
        [f"AHI {ahi:.0f}/h"] if state == "attention" else [])


def test_tile_lines_show_the_ahi_next_to_the_apneas():
    assert ui.tile_lines(with_ahi(18.4, apneas=3), NOW, "normal") == (
        "AL · 10 cmH2O", "14/min · 3 apn · AHI 18 · 1m")
    assert ui.tile_lines(with_ahi(2.0), NOW, "small")[1] == "14/min · 0 apn · AHI 2 · 1m"


def test_the_trend_chart_draws_the_ahi_and_its_alert_line():
    chart = ui.trend_chart([{"received_at": "2026-11-28T01:00:00Z", "breath_rate_bpm": 14.0,
                             "apnea_count": 1, "ahi": 3.0},
                            {"received_at": "2026-11-28T02:00:00Z", "breath_rate_bpm": 15.0,
                             "apnea_count": 4, "ahi": 21.5}]).to_dict()
    ahi_line, threshold = chart["vconcat"][1]["layer"]
    assert ahi_line["encoding"]["y"]["field"] == "ahi"
    assert [[row.get("ahi") for row in rows] for rows in chart["datasets"].values()] == [
        [3.0, 21.5], [ui.AHI_ALERT_PER_H]]
    assert chart["datasets"][threshold["data"]["name"]] == [{"ahi": ui.AHI_ALERT_PER_H}]


def test_patient_rows_highlight_an_ahi_from_the_threshold():
    patients = [{"mrn": 1, "room": 1, "latest": {"apnea_count": 0, "ahi": 20.0}},
                {"mrn": 2, "room": 2, "latest": {"apnea_count": 0, "ahi": 3.0}}]
    styles = ui.highlight_alert_rows(ui.patients_frame(patients))._compute().ctx
    shaded = {row for (row, _), css in styles.items() if ("background-color", "#fde8e8") in css}
    assert shaded == {0}
