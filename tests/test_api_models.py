"""One declaration per API shape (sleeplab/api/models.py) and one upload pipeline."""
from __future__ import annotations

import io

import pytest

import cpap_measurements
from tools import cpap_synth
from tests.api_support import upload_body
from sleeplab.api import models


@pytest.mark.parametrize("name, model, mode", [
    ("Upload", models.Upload, "validation"), ("PressureCommand", models.PressureCommand,
                                              "validation"),
    ("LegacyUpload", models.LegacyUpload, "validation"), ("Record", models.Record,
                                                          "serialization"),
    ("Command", models.Command, "serialization"), ("Room", models.Room, "serialization")])
def test_document_schemas_are_generated_from_the_models(client, name, model, mode):
    """The served schema is the model's own: no hand-kept copy to drift from it."""
    document = client.get("/api/openapi.json").get_json()
    served = document["components"]["schemas"][name]
    own = model.model_json_schema(mode=mode, ref_template="#/components/schemas/{model}")
    assert served["properties"] == own["properties"]
    assert set(served.get("required", [])) == set(own.get("required", []))


def test_a_recording_and_its_results_posted_as_json_make_the_same_record(client):
    """One pipeline: the raw-file route maps the analysis to the record's fields as the
    patient station does (models.analysis_fields), and both are checked the same way."""
    content, _ = cpap_synth.generate(seed=5, duration_s=60.0, rate_bpm=14.0,
                                     apnea_gaps_s=(12.0,))
    raw = client.post("/api/v1/rooms/4/recordings", content_type="multipart/form-data",
                      data={"mrn": "21", "cpap_pressure_cmh2o": "9",
                            "file": (io.BytesIO(content), "night.txt")})
    assert raw.status_code == 201, raw.get_json()
    fields = models.analysis_fields(cpap_measurements.analyze(content))
    posted = client.post("/api/v1/patients", json=upload_body(
        mrn=22, room=5, pressure=9, rate=fields.pop("breath_rate_bpm"),
        apnea=fields.pop("apnea_count"), **fields))
    assert posted.status_code == 201, posted.get_json()
    one, other = raw.get_json()["record"], posted.get_json()["record"]
    assert {f: one[f] for f in models.METRIC_FIELDS} == \
        {f: other[f] for f in models.METRIC_FIELDS}


@pytest.mark.parametrize("query", ["limit=1&limit=abc", "limit=1&limit=0"])
def test_a_repeated_query_parameter_keeps_its_first_value(client, query):
    for _ in range(2):
        client.post("/api/v1/patients", json=upload_body())
    resp = client.get(f"/api/v1/patients/12/records?{query}")
    assert resp.status_code == 200, resp.get_json()
    assert len(resp.get_json()["records"]) == 1


@pytest.mark.parametrize("body, field, message", [
    ({"mrn": "abc", "room": 1, "breaths": 3}, "mrn", "positive integer"),
    ({"mrn": "abc"}, "room", "room is required"),
    ({"mrn": 1, "room": 1, "breaths": -1}, "breaths", "only accepted with"),
    ({"mrn": 1, "room": 1, "cpap_pressure_cmh2o": 99}, "breath_rate_bpm", "come together"),
    ({"mrn": 1, "room": 1, "cpap_pressure_cmh2o": 9, "breath_rate_bpm": 12,
      "apnea_count": 0, "leakage_l": "x", "flow_image": "not base64"}, "leakage_l",
     "finite number"),
    ({"mrn": 1, "room": 1, "cpap_pressure_cmh2o": "", "breaths": "x"}, "breaths",
     "only accepted with"),
    ({"surprise": 1, "mrn": "abc"}, "surprise", "unknown field")])
def test_the_first_error_is_the_one_the_api_always_reported(client, body, field, message):
    """Several errors in one body: unknown fields, then a missing MRN or room, then the
    identity fields' values, then the measurement group rule, then the values in the
    order of the schema (the order validation.upload checked them in before the models)."""
    resp = client.post("/api/v1/patients", json=body)
    assert resp.status_code == 400
    assert resp.get_json()["field"] == field and message in resp.get_json()["message"]


@pytest.mark.parametrize("method, path, body", [
    ("post", "/api/v1/patients", {"mrn": 1, "room": 1, "surprise": None}),
    ("post", "/api/v1/patients", {"mrn": 1, "room": 1, "surprise": ""}),
    ("put", "/api/v1/rooms/1/pressure", {"pressure_cmh2o": 10, "mrn": 1, "surprise": None})])
def test_an_unknown_field_is_refused_whatever_its_value(client, method, path, body):
    """null and "" mean "not given" for the model's own fields only."""
    client.post("/api/v1/patients", json={"mrn": 1, "room": 1})
    resp = getattr(client, method)(path, json=body)
    assert resp.status_code == 400, resp.get_json()
    assert resp.get_json()["field"] == "surprise"


def test_a_recording_form_ignores_other_fields(client):
    """As before the models: scripts may send more form fields than the route reads."""
    content, _ = cpap_synth.generate(seed=3, duration_s=30.0, rate_bpm=15.0)
    resp = client.post("/api/v1/rooms/4/recordings", content_type="multipart/form-data",
                       data={"mrn": "21", "cpap_pressure_cmh2o": "9", "note": "night 2",
                             "file": (io.BytesIO(content), "night.txt")})
    assert resp.status_code == 201, resp.get_json()
