"""Lists of records keep every field but the details, whichever database read them before.

mongomock adds ``_id`` to the projection it is given, in place: the shared exclusion
projection of the lists (``{"events": 0, "series": 0}``) became ``{..., "_id": 1}``, which
nx-27017 reads as an inclusion, so every later list in that process held bare ids (seen
as a 500 of ``GET /patients/{mrn}`` in test_api_idempotency.py, on nx-27017 after its
mongomock run).
"""
from __future__ import annotations

import uuid

import mongomock
from pymongo import MongoClient

from sleeplab import storage as storage_module

METRICS = {"cpap_pressure_cmh2o": 10, "breath_rate_bpm": 14.0, "apnea_count": 0,
           "events": [{"type": "apnea", "start_s": 3.0, "duration_s": 11.0}]}


def stored_list(storage) -> list[dict]:
    storage.ensure_indexes()
    storage.upload(12, 3, name="Ada", metrics=METRICS)
    return storage.patient_records(12, 10)


def test_a_list_on_nx_after_one_on_mongomock_holds_the_records_fields(local_mongo):
    assert stored_list(storage_module.Storage(mongomock.MongoClient(tz_aware=True)["m"]))
    client = MongoClient(local_mongo.uri(f"l{uuid.uuid4().hex[:12]}"), tz_aware=True)
    try:
        [record] = stored_list(storage_module.Storage(client.get_default_database()))
    finally:
        client.close()
    assert record["mrn"] == 12 and record["cpap_pressure_cmh2o"] == 10
    assert "events" not in record
