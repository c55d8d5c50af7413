"""The room list carries the newest applied command beside the latest one, so the wall
shows the pressure in force from one request (issue #16: the refresh fetches one summary)."""
from __future__ import annotations

import pytest

from sleeplab import storage as storage_module
from tests.api_support import upload_body


def room(client, number: int) -> dict:
    (entry,) = [r for r in client.get("/api/v1/rooms").get_json()["rooms"]
                if r["room"] == number]
    return entry


def command(client, pressure: int, mrn: int = 12, number: int = 3) -> str:
    resp = client.put(f"/api/v1/rooms/{number}/pressure",
                      json={"pressure_cmh2o": pressure, "mrn": mrn})
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()["id"]


def applied(client, command_id: str, number: int = 3) -> None:
    resp = client.post(f"/api/v1/rooms/{number}/pressure/{command_id}/applied")
    assert resp.status_code == 200, resp.get_json()


def test_empty_room_list_and_a_room_never_commanded(client):
    assert client.get("/api/v1/rooms").get_json()["rooms"] == []
    assert client.post("/api/v1/patients", json=upload_body()).status_code == 201
    assert room(client, 3)["applied"] is None and room(client, 3)["command"] is None


def test_a_pending_command_keeps_the_applied_one_beside_it(client):
    client.post("/api/v1/patients", json=upload_body())
    first = command(client, 14)
    assert room(client, 3)["applied"] is None               # sent, not applied yet
    applied(client, first)
    entry = room(client, 3)
    assert entry["applied"]["id"] == first and entry["applied"]["pressure_cmh2o"] == 14
    second = command(client, 16)
    entry = room(client, 3)
    assert entry["command"]["id"] == second and entry["command"]["applied"] is False
    assert entry["applied"]["id"] == first                  # still in force until applied
    applied(client, first)                                  # a repeated old ack changes nothing
    assert room(client, 3)["applied"]["id"] == first
    applied(client, second)
    assert room(client, 3)["applied"]["id"] == second


def test_a_new_occupant_does_not_inherit_the_applied_command(client):
    client.post("/api/v1/patients", json=upload_body())
    applied(client, command(client, 14))
    client.post("/api/v1/patients", json=upload_body(mrn=13, name="Bob"))
    assert room(client, 3)["applied"] is None


def test_rooms_stored_before_the_field_get_it_on_start(make_app):
    app = make_app()
    client = app.test_client()
    client.post("/api/v1/patients", json=upload_body())
    first = command(client, 14)
    applied(client, first)
    command(client, 16)
    database = app.extensions["storage_db"]
    database.rooms.update_many({}, {"$unset": {"applied": ""}})   # as an older version left it
    assert "applied" not in database.rooms.find_one({"_id": 3})
    storage_module.Storage(database).ensure_indexes()               # what every start runs
    assert room(client, 3)["applied"]["id"] == first
    assert room(client, 3)["command"]["applied"] is False


@pytest.mark.parametrize("doc", [{"_id": 4}, {"_id": 4, "patient": None}])
def test_backfill_of_a_free_room_is_none(make_app, doc):
    app = make_app()
    database = app.extensions["storage_db"]
    database.rooms.insert_one(doc)
    storage_module.Storage(database).ensure_indexes()
    assert database.rooms.find_one({"_id": 4})["applied"] is None
