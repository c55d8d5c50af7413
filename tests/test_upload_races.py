"""One patient, one room, when uploads of the same patient to two rooms interleave.

Each upload frees the other rooms still showing its patient (``_vacate_other_rooms``)
after it has learnt the patient's current room. A newer upload that moves the patient
to another room can run entirely between that moment and the search for other rooms:
its room must not be taken for a stale one (the search used to free it, leaving the
patient in no room at all while their document named that room). Run on mongomock and
on nx-27017; the newer upload is injected at the moment the older one starts freeing.
"""
from __future__ import annotations

import datetime as dt
import uuid

import mongomock
import pytest
from pymongo import MongoClient

from sleeplab import storage as storage_module

T0 = dt.datetime(2026, 11, 28, 9, 0, 0, tzinfo=dt.timezone.utc)
T1 = T0 + dt.timedelta(seconds=30)
METRICS = {"cpap_pressure_cmh2o": 10, "breath_rate_bpm": 14.0, "apnea_count": 0}
MRN, HOME, OTHER, NEW_ROOM = 12, 3, 4, 5


@pytest.fixture(params=["mongomock", "nx-27017"])
def store(request):
    if request.param == "mongomock":
        yield storage_module.Storage(mongomock.MongoClient(tz_aware=True)["races"])
        return
    local_mongo = request.getfixturevalue("local_mongo")
    client = MongoClient(local_mongo.uri(f"r{uuid.uuid4().hex[:12]}"), tz_aware=True)
    storage = storage_module.Storage(client.get_default_database())
    storage.ensure_indexes()
    yield storage
    client.close()


def upload_at(monkeypatch, store, moment, room, upload_id=None):
    monkeypatch.setattr(storage_module, "utc_now", lambda: moment)
    return store.upload(MRN, room, name="Ada", metrics=METRICS, upload_id=upload_id)


def occupant(store, room):
    return storage_module.occupant_mrn(store.get_room(room))


@pytest.mark.parametrize("newer_ms", [1, 0], ids=["newer-upload", "same-millisecond"])
@pytest.mark.parametrize("first_room", [HOME, NEW_ROOM],
                         ids=["staying-in-its-room", "moving-in-too"])
def test_a_move_during_another_upload_leaves_the_patient_in_the_room_it_names(
        monkeypatch, store, newer_ms, first_room):
    upload_at(monkeypatch, store, T0, HOME)
    original = store._vacate_other_rooms
    injected = []

    def newer_upload_first(*args, **kwargs):
        if not injected:  # once: the injected upload frees rooms for itself
            injected.append(T1 + dt.timedelta(milliseconds=newer_ms))
            upload_at(monkeypatch, store, injected[0], OTHER)
        return original(*args, **kwargs)

    monkeypatch.setattr(store, "_vacate_other_rooms", newer_upload_first)
    upload_at(monkeypatch, store, T1, first_room)

    assert injected
    named = store.get_patient(MRN)["room"]
    shown_in = [room for room in (HOME, OTHER, NEW_ROOM) if occupant(store, room) == MRN]
    assert shown_in == [named]


class Interrupted(Exception):
    """The worker died in the middle of writing an upload's audit entries."""


def test_a_retry_after_part_of_the_audit_entries_adds_only_the_missing_ones(monkeypatch,
                                                                           store):
    original = store._append_audit

    def first_entry_then_die(entries):
        original(entries[:1])
        raise Interrupted

    monkeypatch.setattr(store, "_append_audit", first_entry_then_die)
    with pytest.raises(Interrupted):
        upload_at(monkeypatch, store, T0, HOME, upload_id="retry-0001")
    monkeypatch.setattr(store, "_append_audit", original)
    again = upload_at(monkeypatch, store, T0 + dt.timedelta(seconds=5), HOME,
                      upload_id="retry-0001")

    assert again.replay and again.record["_id"] == store.records.find_one()["_id"]
    trail = store.audit_trail(HOME, 10)
    assert sorted(entry["action"] for entry in trail) == ["patient_created", "record_added"]
