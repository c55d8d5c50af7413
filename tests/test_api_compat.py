"""Compatibility routes of the older API: same payloads and status codes."""
from __future__ import annotations

import pytest

from tests.api_support import PNG, b64


def legacy_body(**overrides) -> dict:
    body = {"patient_name": "Ada", "patient_mrn": "12", "room_number": "3",
            "CPAP_pressure": "10", "breath_rate": "14.5", "apnea_count": "2",
            "flow_image": b64(PNG)}
    body.update(overrides)
    return body


def test_add_patient_new_then_updated(client):
    first = client.post("/add_patient", json=legacy_body())
    assert (first.status_code, first.get_data(as_text=True)) == (200, "New patient created")
    second = client.post("/add_patient", json=legacy_body(CPAP_pressure="11"))
    assert (second.status_code, second.get_data(as_text=True)) == \
        (200, "Patient successfully updated")
    records = client.get("/api/v1/patients/12").get_json()["records"]
    assert [r["cpap_pressure_cmh2o"] for r in records] == [11, 10]
    assert records[0]["breath_rate_bpm"] == 14.5 and records[0]["has_image"] is True


def test_add_patient_empty_strings_mean_not_given(client):
    body = legacy_body(patient_name="", CPAP_pressure="", breath_rate="", apnea_count="",
                       flow_image="")
    assert client.post("/add_patient", json=body).status_code == 200
    patient = client.get("/api/v1/patients/12").get_json()
    assert patient["patient"]["name"] is None and patient["records"] == []


def test_add_patient_numbers_as_numbers(client):
    body = legacy_body(patient_mrn=12, room_number=3, CPAP_pressure=10, breath_rate=14,
                       apnea_count=0)
    assert client.post("/add_patient", json=body).status_code == 200
    assert client.get("/api/v1/rooms/3").get_json()["latest"]["apnea_count"] == 0


@pytest.mark.parametrize("overrides, field", [
    ({"patient_mrn": "abc"}, "patient_mrn"), ({"patient_mrn": ""}, "patient_mrn"),
    ({"room_number": {"$gt": ""}}, "room_number"), ({"CPAP_pressure": "30"}, "CPAP_pressure"),
    ({"breath_rate": "fast"}, "breath_rate"), ({"apnea_count": "-1"}, "apnea_count"),
    ({"apnea_count": ""}, "apnea_count"), ({"flow_image": "nope"}, "flow_image"),
    ({"patient_name": "x" * 101}, "patient_name")])
def test_add_patient_errors_name_the_legacy_field(client, overrides, field):
    resp = client.post("/add_patient", json=legacy_body(**overrides))
    assert resp.status_code == 400 and resp.get_json()["field"] == field


def test_cpap_query_and_new_pressure(client):
    client.post("/add_patient", json=legacy_body())
    missing = client.get("/CPAP_query/3")
    assert missing.status_code == 404 and missing.get_json()["status"] == 404
    resp = client.get("/new_cpap_pressure/3/18")
    assert resp.status_code == 200 and "18" in resp.get_data(as_text=True)
    query = client.get("/CPAP_query/3")
    assert query.status_code == 200 and query.get_json() == 18
    # the new API sees the same command, and the reverse
    assert client.get("/api/v1/rooms/3/pressure").get_json()["source"] == "legacy"
    client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 7, "mrn": 12})
    assert client.get("/CPAP_query/3").get_json() == 7


@pytest.mark.parametrize("path, status, field", [
    ("/new_cpap_pressure/3/3", 400, "value"), ("/new_cpap_pressure/3/26", 400, "value"),
    ("/new_cpap_pressure/3/abc", 400, "value"), ("/new_cpap_pressure/x/12", 400, "room_number"),
    ("/new_cpap_pressure/4/12", 404, None), ("/CPAP_query/0", 400, "room_number"),
    ("/CPAP_query/4", 404, None)])
def test_legacy_pressure_errors(client, path, status, field):
    client.post("/add_patient", json=legacy_body())
    resp = client.get(path)
    assert resp.status_code == status and resp.get_json().get("field") == field


def test_get_all_patients_lists_from_records(client):
    assert client.get("/get_all_patients").get_json() == []
    client.post("/add_patient", json=legacy_body())
    client.post("/add_patient", json=legacy_body(CPAP_pressure="12", breath_rate="16",
                                                 apnea_count="0"))
    client.post("/add_patient", json=legacy_body(patient_mrn="20", room_number="1",
                                                 patient_name="Bob"))
    data = client.get("/get_all_patients").get_json()
    assert [(p["room_number"], p["patient_mrn"]) for p in data] == [(1, 20), (3, 12)]
    ada = data[1]
    assert ada["patient_name"] == "Ada"
    assert (ada["CPAP_pressure"], ada["breath_rate"], ada["apnea_count"]) == \
        ([10, 12], [14.5, 16.0], [2, 0])
    assert len(ada["timestamp"]) == 2 and ada["timestamp"][0] <= ada["timestamp"][1]
    assert set(ada) == {"room_number", "patient_mrn", "patient_name", "CPAP_pressure",
                        "breath_rate", "apnea_count", "timestamp"}


def test_get_all_patients_shows_new_occupant_only(client):
    client.post("/add_patient", json=legacy_body())
    client.post("/add_patient", json=legacy_body(patient_mrn="99", patient_name="Eve",
                                                 CPAP_pressure="", breath_rate="",
                                                 apnea_count="", flow_image=""))
    data = client.get("/get_all_patients").get_json()
    assert data == [{"room_number": 3, "patient_mrn": 99, "patient_name": "Eve",
                     "CPAP_pressure": [], "breath_rate": [], "apnea_count": [],
                     "timestamp": []}]
    assert client.get("/api/v1/patients/12").status_code == 200  # old data kept
