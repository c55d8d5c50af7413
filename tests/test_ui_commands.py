"""Pressure commands in the UI (AppTest against the real API over HTTP): the confirm step
names patient and room, the command carries the MRN, a changed occupant is refused
visibly, and the bedside acknowledges only what its pressure field holds.

The fragments' own clocks (the race between the bedside poll and the monitor wall of one
browser session) need a real browser: tests/test_browser.py.
"""
from __future__ import annotations

import pytest
import requests

from tests.test_ui_apptest import (  # noqa: F401  (fixtures)
    api, api_upload, at, enter_patient, load_file, patient, recordings, texts)
from tests.ui_support import click, pressure_field, run

#: Every case runs the whole UI script several times (about a second or two each).
pytestmark = pytest.mark.slow


def commands(api_url, room):
    return requests.get(f"{api_url}/api/v1/rooms/{room}/pressure/history",
                        timeout=5).json()["commands"]


def ask_to_send_14_to_room_7(at, api):
    """The monitor opens room 7 (MRN 40, Ada), enters 14 cmH2O and presses Send…"""
    api_upload(api, mrn=40, room=7, name="Ada")
    click(at, "mon_refresh")
    at.selectbox(key="mon_room").set_value(7)
    run(at)
    at.text_input(key="mon_pressure_7").input("14")
    click(at, "mon_send_7")


def test_confirm_names_patient_and_room_and_the_command_carries_the_mrn(at, api):
    ask_to_send_14_to_room_7(at, api)
    (question,) = [w for w in texts(at.warning) if "Set the CPAP pressure" in w]
    assert "room 7" in question and "MRN 40" in question and "Ada" in question
    click(at, "mon_confirm_7")
    (sent,) = commands(api, 7)
    assert (sent["mrn"], sent["pressure_cmh2o"]) == (40, 14)


def test_a_new_occupant_before_confirm_is_refused_and_nothing_is_sent(at, api):
    ask_to_send_14_to_room_7(at, api)
    api_upload(api, mrn=41, room=7, name="Bob")       # admitted while the monitor hesitates
    click(at, "mon_confirm_7")
    assert commands(api, 7) == []                      # the effect: nothing stored
    assert requests.get(f"{api}/api/v1/rooms/7/pressure", timeout=5).status_code == 404
    (error,) = [e for e in texts(at.error) if "Not sent" in e]
    assert "no longer MRN 40" in error
    assert not [s for s in texts(at.success) if "sent" in s]


def test_station_acknowledges_only_when_its_field_holds_the_command(at, api, recordings):
    enter_patient(at, mrn="12", room="3", pressure="10")
    load_file(at, recordings["calm"])
    run(at)
    click(at, "ps_upload")
    for pressure in (14, 9, 17):
        requests.put(f"{api}/api/v1/rooms/3/pressure", timeout=5,
                     json={"pressure_cmh2o": pressure, "mrn": 12})
        run(at)
        command = requests.get(f"{api}/api/v1/rooms/3/pressure", timeout=5).json()
        assert pressure_field(at).value == str(pressure)
        # the run that wrote the field has not told the server yet: the browser may not
        # have drawn it; the next poll, after a page run that drew it, does
        assert command["pressure_cmh2o"] == pressure and command["applied"] is False
        run(at)
        command = requests.get(f"{api}/api/v1/rooms/3/pressure", timeout=5).json()
        assert pressure_field(at).value == str(pressure)
        assert command["applied"] is True
    # One pressure field on screen, holding the last command.
    assert [t.key for t in at.text_input if t.key.startswith("ps_pressure")] == ["ps_pressure"]


def test_a_late_report_of_the_old_pressure_does_not_undo_the_command(at, api, recordings):
    """The browser reports the field's old value with runs it asked for before it drew
    the command: the field keeps the command, the next upload sends it, and the server
    hears "applied" only once the browser reports the command back."""
    enter_patient(at, mrn="12", room="3", pressure="10")
    load_file(at, recordings["calm"])
    run(at)
    click(at, "ps_upload")
    requests.put(f"{api}/api/v1/rooms/3/pressure", timeout=5,
                 json={"pressure_cmh2o": 14, "mrn": 12})
    run(at)                                            # the poll writes 14 into the field
    for _ in range(2):
        pressure_field(at).set_value("10")             # a report sent before it drew 14
        run(at)
        assert pressure_field(at).value == "14"
        assert requests.get(f"{api}/api/v1/rooms/3/pressure",
                            timeout=5).json()["applied"] is False
    run(at)                                            # the browser reports 14 back
    assert requests.get(f"{api}/api/v1/rooms/3/pressure", timeout=5).json()["applied"] is True
    load_file(at, recordings["apneic"])
    run(at)
    click(at, "ps_upload")
    newest = patient(api, 12)["records"][0]
    assert (newest["apnea_count"], newest["cpap_pressure_cmh2o"]) == (4, 14)


def test_station_whose_patient_was_replaced_stops_taking_commands(at, api, recordings):
    enter_patient(at, mrn="12", room="3", pressure="10")
    load_file(at, recordings["calm"])
    run(at)
    click(at, "ps_upload")
    api_upload(api, mrn=13, room=3, name="Next patient")
    requests.put(f"{api}/api/v1/rooms/3/pressure", timeout=5,
                 json={"pressure_cmh2o": 20, "mrn": 13})
    run(at)
    assert pressure_field(at).value == "10"            # not the other patient's 20
    assert any("now has another patient" in w for w in texts(at.warning))
    assert requests.get(f"{api}/api/v1/rooms/3/pressure", timeout=5).json()["applied"] is False
    assert len(patient(api, 12)["records"]) == 1


def test_a_room_its_patient_left_shows_free_and_takes_no_command(at, api):
    api_upload(api, mrn=40, room=40, name="Ada")
    api_upload(api, mrn=40, room=41, name="Ada")       # moved to room 41
    click(at, "mon_refresh")
    at.selectbox(key="mon_room").set_value(40)
    run(at)
    assert any("Free: no patient in this room" in t for t in texts(at.text))
    assert not [t for t in at.text_input if t.key == "mon_pressure_40"]   # nothing to send
    assert any("Room 40 is free" in c for c in texts(at.caption))
