"""Summaries never go back in time, on the real local database (nx-27017).

nx-27017 compares dates in a filter to the second only: an older upload of the same second
passed the date guard and overwrote the newer summary (seen as a failure of
``test_concurrent_uploads_under_gunicorn``). The guards compare integer twins now.
"""
from __future__ import annotations

import datetime as dt
import uuid

import pytest
from pymongo import MongoClient

from sleeplab import storage as storage_module

SECOND = dt.datetime(2026, 11, 28, 9, 25, 5, tzinfo=dt.timezone.utc)
NEWER, OLDER = SECOND.replace(microsecond=683000), SECOND.replace(microsecond=682000)
METRICS = {"cpap_pressure_cmh2o": 10, "breath_rate_bpm": 14.0, "apnea_count": 0}


@pytest.fixture
def nx_storage(local_mongo):
    client = MongoClient(local_mongo.uri(f"g{uuid.uuid4().hex[:12]}"), tz_aware=True)
    storage = storage_module.Storage(client.get_default_database())
    storage.ensure_indexes()
    yield storage
    client.close()


def upload_at(monkeypatch, storage, moment, **metrics):
    monkeypatch.setattr(storage_module, "utc_now", lambda: moment)
    return storage.upload(12, 3, name="Ada", metrics={**METRICS, **metrics})


@pytest.mark.parametrize("first, second", [(NEWER, OLDER), (OLDER, NEWER)],
                         ids=["older-arrives-last", "newer-arrives-last"])
def test_the_newest_record_of_one_second_stays_the_summary(monkeypatch, nx_storage,
                                                           first, second):
    upload_at(monkeypatch, nx_storage, first, breath_rate_bpm=float(first.microsecond // 1000))
    upload_at(monkeypatch, nx_storage, second, breath_rate_bpm=float(second.microsecond // 1000))
    patient = nx_storage.patients.find_one({"mrn": 12})
    room = nx_storage.rooms.find_one({"_id": 3})
    for summary in (patient["latest"], room["latest"]):
        assert storage_module.as_utc(summary["received_at"]) == NEWER
        assert summary["breath_rate_bpm"] == 683.0
    assert storage_module.as_utc(patient["updated"]["at"]) == NEWER


def test_documents_from_before_the_twins_get_them_and_stay_guarded(monkeypatch, nx_storage):
    upload_at(monkeypatch, nx_storage, NEWER)
    nx_storage.patients.update_one({"mrn": 12}, {"$unset": {"updated.ms": "", "latest.ms": ""}})
    nx_storage.rooms.update_one({"_id": 3}, {"$unset": {"patient.ms": "", "latest.ms": ""}})
    nx_storage.ensure_indexes()                                    # every start runs it
    assert nx_storage.patients.find_one({"mrn": 12})["latest"]["ms"] == storage_module.ms(NEWER)
    upload_at(monkeypatch, nx_storage, OLDER, breath_rate_bpm=1.0)  # late, same second
    assert nx_storage.rooms.find_one({"_id": 3})["latest"]["breath_rate_bpm"] == 14.0


@pytest.mark.parametrize("moment, expected", [
    (None, None), (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc), 0), (NEWER, 1795857905683),
    (NEWER.replace(tzinfo=None), 1795857905683)])                  # mongomock: naive UTC
def test_ms(moment, expected):
    assert storage_module.ms(moment) == expected
