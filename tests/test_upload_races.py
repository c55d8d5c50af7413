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
from pymongo import MongoClient, monitoring
from pymongo.errors import OperationFailure

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
    injected = []

    def newer_upload_first(original):
        def wrapper(*args, **kwargs):
            if not injected:  # once: the injected upload frees rooms for itself
                injected.append(T1 + dt.timedelta(milliseconds=newer_ms))
                upload_at(monkeypatch, store, injected[0], OTHER)
            return original(*args, **kwargs)
        return wrapper

    # The older upload has learnt the patient's room: it searches for other rooms, or
    # (staying, no other room showed them after its room's update) goes on to its audit.
    for step in ("_vacate_other_rooms", "_audit_upload"):
        monkeypatch.setattr(store, step, newer_upload_first(getattr(store, step)))
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


def test_a_room_left_showing_the_patient_is_freed_by_their_next_upload(monkeypatch, store):
    """An upload that died after writing another room (a move never finished) leaves
    that room showing the patient; their next usual upload, staying in the room their
    document names, frees it (the one-round-trip count of other rooms saw it)."""
    upload_at(monkeypatch, store, T0, HOME)
    store.rooms.update_one({"_id": OTHER}, {"$set": {"room": OTHER, "patient": {
        "mrn": MRN, "name": "Ada", "since": T0, "ms": storage_module.ms(T0)}}}, upsert=True)
    upload_at(monkeypatch, store, T1, HOME)
    assert store.get_patient(MRN)["room"] == HOME
    assert [occupant(store, room) for room in (HOME, OTHER)] == [MRN, None]
    assert store.get_room(OTHER)["patient"]["left"]["mrn"] == MRN


class CommandCounter(monitoring.CommandListener):
    """pymongo command monitoring: the commands a client sent, by name."""

    def __init__(self):
        self.names: list[str] = []

    def started(self, event):
        self.names.append(event.command_name)

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


def test_the_usual_upload_is_three_commands_on_a_server_with_client_bulk_writes(
        local_mongo):
    """A known patient staying in their room: one bulkWrite (image, record, room,
    rooms version, the count of other rooms), the patient's findAndModify, the audit
    insert: nothing else goes to the database (issue #15)."""
    counter = CommandCounter()
    client = MongoClient(local_mongo.uri(f"r{uuid.uuid4().hex[:12]}"), tz_aware=True,
                         event_listeners=[counter])
    store = storage_module.Storage(client.get_default_database())
    store.ensure_indexes()
    store.upload(MRN, HOME, name="Ada", metrics=METRICS, image=(b"\xff\xd8jpeg", "image/jpeg"),
                 with_record_count=False)
    counter.names.clear()
    result = store.upload(MRN, HOME, name="Ada", metrics=METRICS,
                          image=(b"\xff\xd8jpeg", "image/jpeg"), with_record_count=False)
    assert counter.names == ["bulkWrite", "findAndModify", "insert"]
    assert result.patient["room"] == HOME and occupant(store, HOME) == MRN
    assert store.records.count_documents({"mrn": MRN}) == 2
    assert store.images.count_documents({}) == 2
    client.close()


def test_a_database_refusing_bulk_writes_gets_one_write_at_a_time(local_mongo, monkeypatch):
    """A server that refuses bulkWrite to the API's role (or does not know it) refuses
    it before writing; uploads go on, a collection at a time, and the command is not
    tried again."""
    client = MongoClient(local_mongo.uri(f"r{uuid.uuid4().hex[:12]}"), tz_aware=True)
    tried = []

    def refuse(*args, **kwargs):
        tried.append(1)
        raise OperationFailure("not authorized on admin to execute command bulkWrite",
                               code=13)

    monkeypatch.setattr(client, "bulk_write", refuse)
    store = storage_module.Storage(client.get_default_database())
    store.ensure_indexes()
    for _ in range(3):
        store.upload(MRN, HOME, name="Ada", metrics=METRICS,
                     image=(b"\xff\xd8jpeg", "image/jpeg"))
    assert len(tried) == 1
    assert store.records.count_documents({"mrn": MRN}) == 3
    assert store.images.count_documents({}) == 3
    assert occupant(store, HOME) == MRN and store.get_patient(MRN)["record_count"] == 3
    client.close()


class _RoomsProxy:
    """``store.rooms`` with a hook run once before the first update of a room showing
    the patient (the moment between the search for other rooms and freeing one)."""

    def __init__(self, rooms, hook):
        self._rooms, self._hook = rooms, hook

    def __getattr__(self, name):
        return getattr(self._rooms, name)

    def update_one(self, filter, update, *args, **kwargs):
        if self._hook and "patient.mrn" in filter and "_id" in filter:
            hook, self._hook = self._hook, None
            hook()
        return self._rooms.update_one(filter, update, *args, **kwargs)


def test_freeing_a_room_spares_a_new_admission_in_the_same_second(monkeypatch, store):
    """A room found showing the patient is freed only as it was found: if the patient
    was admitted there again meanwhile, in the same second (nx-27017 compares dates in
    a filter to the second), the new admission stays."""
    upload_at(monkeypatch, store, T0, OTHER)                  # the patient in OTHER at T0
    upload_at(monkeypatch, store, T0 + dt.timedelta(seconds=10), HOME)   # ... now HOME
    stale = {"mrn": MRN, "name": "Ada", "since": T0, "ms": storage_module.ms(T0)}
    store.rooms.update_one({"_id": OTHER}, {"$set": {"patient": stale}})  # left showing
    again = T0 + dt.timedelta(milliseconds=400)               # same second, later admission

    def readmitted():
        store.rooms.update_one({"_id": OTHER}, {"$set": {"patient": {
            "mrn": MRN, "name": "Ada", "since": again, "ms": storage_module.ms(again)}}})

    monkeypatch.setattr(store, "rooms", _RoomsProxy(store.rooms, readmitted))
    upload_at(monkeypatch, store, T1, HOME)
    assert store.get_room(OTHER)["patient"]["ms"] == storage_module.ms(again)
    assert occupant(store, OTHER) == MRN


@pytest.mark.parametrize("records, neighbours", [(0, 0), (1, 2), (3, 2)])
def test_an_uploads_record_count_counts_that_patient_only(store, records, neighbours):
    """The answer's ``record_count``: this patient's records, not a neighbouring MRN's
    (nx-27017 and MongoDB: the ``count`` command; mongomock: an aggregation)."""
    store.upload(MRN, HOME, name="Ada")  # known, no record yet
    store.upload(MRN + 1, OTHER, name="Bo")
    for _ in range(records):
        store.upload(MRN, HOME, name="Ada", metrics=METRICS)
    for _ in range(neighbours):
        store.upload(MRN + 1, OTHER, name="Bo", metrics=METRICS)
    assert store.get_patient(MRN)["record_count"] == records
    assert store.get_patient(MRN + 1)["record_count"] == neighbours
    answer = store.upload(MRN, HOME, name="Ada", metrics=METRICS)
    assert answer.patient["record_count"] == records + 1


def test_a_record_count_on_the_server_is_one_count_command(local_mongo):
    """Counted on the ``(mrn)`` index by one ``count`` (an aggregation makes nx-27017
    count the whole collection and read each of the patient's records: issue #15's
    flatness to 2,000 records)."""
    counter = CommandCounter()
    client = MongoClient(local_mongo.uri(f"r{uuid.uuid4().hex[:12]}"), tz_aware=True,
                         event_listeners=[counter])
    store = storage_module.Storage(client.get_default_database())
    store.ensure_indexes()
    store.upload(MRN, HOME, name="Ada", metrics=METRICS)
    counter.names.clear()
    assert store.get_patient(MRN)["record_count"] == 1
    assert counter.names == ["find", "count"]
    client.close()
