"""The OpenAPI document: valid OpenAPI 3, covering every Flask route, and its request
schemas agree with the validation the routes do."""
from __future__ import annotations

import re

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from tests.api_support import upload_body


@pytest.fixture
def document(client):
    return client.get("/api/openapi.json").get_json()


def test_document_is_valid_openapi(document):
    validate(document)
    assert document["openapi"].startswith("3.")


def test_both_prefixes_serve_the_same_document(client, document):
    assert client.get("/api/v1/openapi.json").get_json() == document


def test_every_flask_route_is_documented(app, document):
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        assert path in document["paths"], f"{rule.rule} missing from the OpenAPI document"
        documented = set(document["paths"][path])
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in documented, f"{method} {rule.rule} not documented"


def test_every_documented_operation_exists(app, document):
    rules: dict[str, set] = {}
    for rule in app.url_map.iter_rules():
        rules.setdefault(re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule),
                         set()).update(rule.methods)
    for path, item in document["paths"].items():
        assert path in rules, f"{path} documented but not served"
        assert {m.upper() for m in item} <= rules[path]


def _validator(document, name):
    schema = dict(document["components"]["schemas"][name])
    schema["components"] = document["components"]
    return OAS31Validator(schema)


def test_upload_schema_accepts_what_the_route_accepts(document, client):
    validator = _validator(document, "Upload")
    body = upload_body(breaths=3, duration_s=60.0, ahi=1.0, leakage_l=0.1)
    assert validator.is_valid(body)
    assert client.post("/api/v1/patients", json=body).status_code == 201


@pytest.mark.parametrize("bad", [{"mrn": 0}, {"cpap_pressure_cmh2o": 26},
                                 {"breath_rate_bpm": 121}, {"name": "x" * 101},
                                 {"apnea_count": -1}, {"surprise": 1}])
def test_upload_schema_refuses_what_the_route_refuses(document, client, bad):
    body = {**upload_body(), **bad}
    assert not _validator(document, "Upload").is_valid(body)
    assert client.post("/api/v1/patients", json=body).status_code == 400


def test_responses_match_documented_schemas(document, client):
    created = client.post("/api/v1/patients", json=upload_body()).get_json()
    assert _validator(document, "Patient").is_valid(created["patient"])
    assert _validator(document, "Record").is_valid(created["record"])
    client.put("/api/v1/rooms/3/pressure", json={"pressure_cmh2o": 12, "mrn": 12})
    room = client.get("/api/v1/rooms/3").get_json()
    assert _validator(document, "Room").is_valid(room)
    assert _validator(document, "Command").is_valid(room["command"])
    error = client.get("/api/v1/rooms/77").get_json()
    assert _validator(document, "Error").is_valid(error)
