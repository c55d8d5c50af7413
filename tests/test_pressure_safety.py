"""Safety of pressure commands and room occupancy (issue: a command reaches the intended
patient and is never lost; one patient occupies one room; every change is audited).

Unit cases run on mongomock through the Flask test client; the races run through
gunicorn workers on the real nx-27017 server, 20 rounds each, as the review did.
"""
from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tools.api_process import ApiServer
from tests.api_support import upload_body

PUT = "/api/v1/rooms/{room}/pressure"
RACES = 20


def command(client, room, mrn, pressure=14):
    return client.put(PUT.format(room=room), json={"pressure_cmh2o": pressure, "mrn": mrn})


def trail(client, room):
    return client.get(f"/api/v1/rooms/{room}/audit?limit=1000").get_json()["entries"]


# --- a command names its patient --------------------------------------------------------

def test_command_must_name_the_patient(client):
    client.post("/api/v1/patients", json=upload_body(mrn=40, room=7))
    resp = client.put(PUT.format(room=7), json={"pressure_cmh2o": 14})
    assert resp.status_code == 400
    assert resp.get_json()["field"] == "mrn" and "is required" in resp.get_json()["message"]
    assert client.get("/api/v1/rooms/7/pressure").status_code == 404


def test_command_for_a_patient_who_left_is_refused_with_409(client):
    client.post("/api/v1/patients", json=upload_body(mrn=40, room=7))
    client.post("/api/v1/patients", json=upload_body(mrn=41, room=7))  # a new patient
    resp = command(client, 7, 40)                                       # the monitor saw 40
    assert resp.status_code == 409
    body = resp.get_json()
    assert body["field"] == "mrn" and "occupant changed" in body["message"]
    assert "41" not in body["message"]                       # the other patient is not named
    # Nothing reached the new patient, nothing is pending, nothing was audited.
    assert client.get("/api/v1/rooms/7/pressure").status_code == 404
    assert client.get("/api/v1/rooms/7/pressure/history").get_json()["commands"] == []
    assert not [e for e in trail(client, 7) if e["action"] == "pressure_commanded"]
    assert command(client, 7, 41).status_code == 201


def test_station_poll_with_its_mrn_never_gets_another_patients_command(client):
    client.post("/api/v1/patients", json=upload_body(mrn=40, room=7))
    client.post("/api/v1/patients", json=upload_body(mrn=41, room=7))
    assert command(client, 7, 41).status_code == 201
    stale_station = client.get("/api/v1/rooms/7/pressure?mrn=40")
    assert stale_station.status_code == 409 and stale_station.get_json()["field"] == "mrn"
    assert client.get("/api/v1/rooms/7/pressure?mrn=41").get_json()["pressure_cmh2o"] == 14


def test_pending_command_is_cancelled_visibly_when_its_patient_leaves(client):
    client.post("/api/v1/patients", json=upload_body(mrn=40, room=7))
    sent = command(client, 7, 40).get_json()
    client.post("/api/v1/patients", json=upload_body(mrn=41, room=7))
    (history,) = client.get("/api/v1/rooms/7/pressure/history").get_json()["commands"]
    assert history["id"] == sent["id"] and history["applied"] is False
    assert "new patient" in history["cancelled"]["reason"]
    cancelled = [e for e in trail(client, 7) if e["action"] == "pressure_cancelled"]
    assert len(cancelled) == 1 and cancelled[0]["mrn"] == 40
    assert cancelled[0]["old"]["command_id"] == sent["id"]
    # A late acknowledgement from the old bedside is refused, not recorded as applied.
    late = client.post(f"/api/v1/rooms/7/pressure/{sent['id']}/applied")
    assert late.status_code == 409 and "cancelled" in late.get_json()["message"]
    assert not [e for e in trail(client, 7) if e["action"] == "pressure_applied"]


# --- one patient, one room ---------------------------------------------------------------

def test_patient_who_moves_frees_the_old_room(client):
    client.post("/api/v1/patients", json=upload_body(mrn=40, room=40))
    sent = command(client, 40, 40).get_json()
    client.post("/api/v1/patients", json=upload_body(mrn=40, room=41))
    rooms = {r["room"]: r for r in client.get("/api/v1/rooms").get_json()["rooms"]}
    assert rooms[41]["patient"]["mrn"] == 40
    assert rooms[40]["patient"] is None and rooms[40]["latest"] is None
    assert client.get("/api/v1/rooms/40").status_code == 404          # "has no patient"
    assert command(client, 40, 40).status_code == 404                 # goes nowhere: refused
    (old,) = client.get("/api/v1/rooms/40/pressure/history").get_json()["commands"]
    assert old["id"] == sent["id"] and "moved to room 41" in old["cancelled"]["reason"]
    assert [p["room_number"] for p in client.get("/get_all_patients").get_json()] == [41]
    # The free room takes a new patient as usual.
    client.post("/api/v1/patients", json=upload_body(mrn=50, room=40))
    assert client.get("/api/v1/rooms/40").get_json()["patient"]["mrn"] == 50


def test_returning_to_the_old_room_occupies_it_again(client):
    for room in (40, 41, 40):
        client.post("/api/v1/patients", json=upload_body(mrn=40, room=room))
    rooms = {r["room"]: r["patient"] for r in client.get("/api/v1/rooms").get_json()["rooms"]}
    assert rooms[40]["mrn"] == 40 and rooms[41] is None


# --- races through gunicorn on nx-27017 ------------------------------------------------------

@pytest.fixture(scope="module")
def api(local_mongo):
    with ApiServer(local_mongo.uri(database=f"t{uuid.uuid4().hex[:12]}"), workers=2) as server:
        yield server.url


def race(*calls):
    """Run the calls at the same moment (a barrier), return their results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def test_racing_a_new_admission_a_command_is_delivered_or_refused(api):
    """A monitor commands MRN 1000+i while MRN 2000+i is admitted to the same room."""
    outcomes = {"refused": 0, "delivered-then-cancelled": 0}
    with requests.Session() as http:
        for i in range(RACES):
            room, old, new = 600 + i, 1000 + i, 2000 + i
            http.post(f"{api}/api/v1/patients", json=upload_body(mrn=old, room=room), timeout=30)
            put, post = race(
                lambda: http.put(f"{api}{PUT.format(room=room)}", timeout=30,
                                 json={"pressure_cmh2o": 14, "mrn": old}),
                lambda: http.post(f"{api}/api/v1/patients", timeout=30,
                                  json=upload_body(mrn=new, room=room)))
            assert post.status_code == 201
            assert put.status_code in (201, 409), put.text
            # The new patient never receives the old patient's command.
            assert http.get(f"{api}/api/v1/rooms/{room}/pressure", timeout=30).status_code == 404
            history = http.get(f"{api}/api/v1/rooms/{room}/pressure/history",
                               timeout=30).json()["commands"]
            if put.status_code == 409:
                assert history == []
                outcomes["refused"] += 1
            else:  # accepted for the old patient, then visibly cancelled when they left
                (sent,) = history
                assert sent["id"] == put.json()["id"] and sent["cancelled"] is not None
                outcomes["delivered-then-cancelled"] += 1
    assert sum(outcomes.values()) == RACES


def test_two_room_race_leaves_the_patient_in_one_room(api):
    with requests.Session() as http:
        for i in range(RACES):
            mrn, rooms = 3000 + i, (700 + 2 * i, 701 + 2 * i)
            results = race(*(lambda r=r: http.post(f"{api}/api/v1/patients", timeout=30,
                                                   json=upload_body(mrn=mrn, room=r))
                             for r in rooms))
            assert sorted(r.status_code for r in results) == [200, 201]
            patient = http.get(f"{api}/api/v1/patients/{mrn}", timeout=30).json()["patient"]
            shown = [r for r in rooms
                     if (http.get(f"{api}/api/v1/rooms/{r}", timeout=30).json()
                         .get("patient") or {}).get("mrn") == mrn]
            assert shown == [patient["room"]], (i, shown, patient["room"])


def test_racing_first_uploads_are_all_audited(api):
    """Two first uploads of one new MRN into two rooms with two names: whatever wins,
    the audit trail leads from the creation to the final name and room."""
    with requests.Session() as http:
        for i in range(RACES):
            mrn, rooms = 4000 + i, (800 + 2 * i, 801 + 2 * i)
            race(*(lambda r=r: http.post(f"{api}/api/v1/patients", timeout=30,
                                         json=upload_body(mrn=mrn, room=r, name=f"P{r}"))
                   for r in rooms))
            final = http.get(f"{api}/api/v1/patients/{mrn}", timeout=30).json()["patient"]
            entries = [e for r in rooms for e in http.get(
                f"{api}/api/v1/rooms/{r}/audit?limit=100", timeout=30).json()["entries"]
                if e["mrn"] == mrn]
            (created,) = [e for e in entries if e["action"] == "patient_created"]
            name, room = created["new"]["name"], created["new"]["room"]
            for entry in sorted(entries, key=lambda e: (e["at"],
                                                         e["action"] != "patient_created")):
                if entry["action"] == "name_changed":
                    assert entry["old"] == name, (i, entries)
                    name = entry["new"]
                elif entry["action"] == "room_changed" and entry["room"] == entry["new"]:
                    assert entry["old"] == room, (i, entries)
                    room = entry["new"]
            assert (name, room) == (final["name"], final["room"]), (i, entries, final)


def test_rooms_are_in_numeric_order_on_the_local_database(api):
    with requests.Session() as http:
        for room in (101, 3, 110, 40, 5, 4):
            http.post(f"{api}/api/v1/patients", json=upload_body(mrn=9000 + room, room=room),
                      timeout=30)
        numbers = [r["room"] for r in http.get(f"{api}/api/v1/rooms", timeout=30).json()["rooms"]]
    mine = [n for n in numbers if n in (101, 3, 110, 40, 5, 4)]
    assert mine == [3, 4, 5, 40, 101, 110]
    assert numbers == sorted(numbers)
