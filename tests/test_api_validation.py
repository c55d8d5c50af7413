"""Every validation rule: a field-specific 4xx in the one JSON error shape, never a 500."""
from __future__ import annotations

import json

import pytest

import validation
from tests.api_support import JPEG, PNG, b64, image_bytes, upload_body

HOSTILE = [{"$gt": ""}, {"$where": "sleep(1000)"}, ["1"], True, False, 1.5, -1, 0, "abc",
           "1e3", "12.5", " ", "0x10", 2**64, "9" * 40, float("inf"), float("nan"), "１２"]


def assert_error(resp, status: int, field: str | None, contains: str = ""):
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["status"] == status and body["error"] and body["message"]
    assert body.get("field") == field
    assert contains in body["message"]
    return body


def post_json(client, body, path="/api/v1/patients"):
    # json.dumps writes NaN/Infinity tokens, which Python's parser accepts: checked too.
    return client.post(path, data=json.dumps(body), content_type="application/json")


@pytest.mark.parametrize("field", ["mrn", "room"])
@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_mrn_and_room_must_be_positive_integers(client, field, value):
    assert_error(post_json(client, upload_body(**{field: value})), 400, field,
                 f"{field} must be a positive integer")


@pytest.mark.parametrize("field", ["mrn", "room"])
@pytest.mark.parametrize("value", [None, ""])
def test_mrn_and_room_required(client, field, value):
    assert_error(post_json(client, upload_body(**{field: value})), 400, field,
                 f"{field} is required")
    body = upload_body()
    del body[field]
    assert_error(post_json(client, body), 400, field, "is required")


@pytest.mark.parametrize("value", ["12", 12.0, " 7 ", 9007199254740991])
def test_numeric_strings_and_whole_floats_accepted(client, value):
    resp = post_json(client, upload_body(mrn=value, image=None))
    assert resp.status_code == 201
    assert resp.get_json()["patient"]["mrn"] == int(float(str(value).strip()))


@pytest.mark.parametrize("value", [3, 26, 10.5, "x", {"$gt": 0}, True, [10], -4, "4.5"],
                         ids=repr)
def test_pressure_integer_4_to_25(client, value):
    assert_error(post_json(client, upload_body(pressure=value)), 400, "cpap_pressure_cmh2o",
                 "from 4 to 25")


@pytest.mark.parametrize("value", [4, 25, "25"])
def test_pressure_bounds_accepted(client, value):
    assert post_json(client, upload_body(pressure=value)).status_code == 201


@pytest.mark.parametrize("value", [-0.1, 120.5, float("nan"), float("inf"), "NaN", "abc",
                                   [14], {"$gt": 1}, True], ids=repr)
def test_breath_rate_finite_0_to_120(client, value):
    assert_error(post_json(client, upload_body(rate=value)), 400, "breath_rate_bpm",
                 "finite number from 0 to 120")


@pytest.mark.parametrize("value", [0, 120, "14.5", 0.001])
def test_breath_rate_bounds_accepted(client, value):
    assert post_json(client, upload_body(rate=value)).status_code == 201


@pytest.mark.parametrize("value", [-1, 1.5, "x", True, {"$gt": 0}, 10**12], ids=repr)
def test_apnea_count_integer_at_least_0(client, value):
    assert_error(post_json(client, upload_body(apnea=value)), 400, "apnea_count", "integer")


@pytest.mark.parametrize("field, value, message", [
    ("breaths", -1, "integer"), ("breaths", 2.5, "integer"),
    ("duration_s", -1, "finite number"), ("duration_s", float("inf"), "finite number"),
    ("ahi", -0.5, "finite number"), ("ahi", "lots", "finite number"),
    ("leakage_l", float("nan"), "finite number"), ("leakage_l", {"$ne": 1}, "finite number"),
])
def test_richer_metrics_checked(client, field, value, message):
    assert_error(post_json(client, upload_body(**{field: value})), 400, field, message)


@pytest.mark.parametrize("value, message", [
    ("x" * 101, "at most 100 characters"), (123, "must be a string"),
    (["Ada"], "must be a string"), ({"$gt": ""}, "must be a string"),
    ("Ada\x00", "control characters"), ("Ada\nKing", "control characters"),
    ("Ada\ud800", "lone surrogates")], ids=repr)
def test_name_rules(client, value, message):
    assert_error(post_json(client, upload_body(name=value)), 400, "name", message)


@pytest.mark.parametrize("char, described", [
    ("\u202e", "U+202E RIGHT-TO-LEFT OVERRIDE"), ("\u202a", "U+202A LEFT-TO-RIGHT EMBEDDING"),
    ("\u2066", "U+2066 LEFT-TO-RIGHT ISOLATE"), ("\u2069", "U+2069 POP DIRECTIONAL ISOLATE"),
    ("\u200e", "U+200E LEFT-TO-RIGHT MARK"), ("\u200f", "U+200F RIGHT-TO-LEFT MARK"),
    ("\u200b", "U+200B ZERO WIDTH SPACE"), ("\u200d", "U+200D ZERO WIDTH JOINER"),
    ("\u2060", "U+2060 WORD JOINER"), ("\ufeff", "U+FEFF ZERO WIDTH NO-BREAK SPACE"),
    ("\u00ad", "U+00AD SOFT HYPHEN"), ("\u2028", "U+2028 LINE SEPARATOR")], ids=repr)
def test_name_with_bidi_or_invisible_character_refused(client, char, described):
    """ "\u202eevil Bob" would display as "boB live": such names are refused, naming the
    character and its position, and nothing is stored."""
    body = assert_error(post_json(client, upload_body(name=f"evil {char}Bob")), 400, "name",
                        "invisible or text-direction characters")
    assert f"(found {described} at position 6)" in body["message"]
    assert client.get("/api/v1/patients/12").status_code == 404
    legacy = client.post("/add_patient", json={"patient_mrn": 12, "room_number": 3,
                                               "patient_name": f"Ada{char}King"})
    assert_error(legacy, 400, "patient_name", described)


@pytest.mark.parametrize("name", ["x" * 100, "Zoë <b>Ørsted</b> 山田", "  Ada  ",
                                  "Ada see https://evil.example/x", "عائشة"])
def test_name_stored_as_text(client, name):
    resp = post_json(client, upload_body(name=name))
    assert resp.status_code == 201 and resp.get_json()["patient"]["name"] == name.strip()


BIG_PNG = image_bytes("PNG", size=(1, 1)) + b"\0" * (validation.MAX_IMAGE_BYTES + 1)


@pytest.mark.parametrize("value, status, message", [
    ("not base64!!", 400, "not valid base64"),
    (b64(b"GIF89a" + b"\0" * 40), 400, "PNG or JPEG"),
    (b64(b"plain text, not an image"), 400, "PNG or JPEG"),
    (b64(PNG[:40]), 400, "not a readable PNG"),
    (b64(JPEG[:60]), 400, "not a readable JPEG"),
    (b64(b"\x89PNG\r\n\x1a\n" + b"junk" * 20), 400, "not a readable PNG"),
    (b64(BIG_PNG), 413, "at most 2 MB"),
    (12345, 400, "base64-encoded"), ({"$gt": ""}, 400, "base64-encoded"),
], ids=["not-base64", "gif", "text", "truncated-png", "truncated-jpeg", "png-magic-junk",
        "too-large", "number", "operator"])
def test_flow_image_rules(client, value, status, message):
    assert_error(post_json(client, upload_body(image=None, flow_image=value)), status,
                 "flow_image", message)


def test_data_url_image_accepted(client):
    body = upload_body(image=None, flow_image="data:image/jpeg;base64," + b64(JPEG))
    record = post_json(client, body).get_json()["record"]
    assert client.get(f"/api/records/{record['id']}/image").mimetype == "image/jpeg"


@pytest.mark.parametrize("given, missing", [
    ({"cpap_pressure_cmh2o": 10}, "breath_rate_bpm"),
    ({"cpap_pressure_cmh2o": 10, "breath_rate_bpm": 12}, "apnea_count"),
    ({"breath_rate_bpm": 12, "apnea_count": 0}, "cpap_pressure_cmh2o"),
])
def test_measurements_come_together(client, given, missing):
    assert_error(post_json(client, {"mrn": 1, "room": 1, **given}), 400, missing,
                 "come together")


@pytest.mark.parametrize("extra", ["flow_image", "breaths", "duration_s", "ahi", "leakage_l"])
def test_extras_only_with_measurements(client, extra):
    value = b64(PNG) if extra == "flow_image" else 3
    assert_error(post_json(client, {"mrn": 1, "room": 1, extra: value}), 400, extra,
                 "only accepted with")


def test_unknown_field_refused(client):
    assert_error(post_json(client, upload_body(cpap_pressure=10)), 400, "cpap_pressure",
                 "unknown field")


@pytest.mark.parametrize("raw, message", [
    (b"{bad json", "not valid JSON"), (b'{"mrn": 1,', "not valid JSON"), (b"", "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"), (b"[" * 100_000 + b"]" * 100_000, "not acceptable JSON"),
    (b'{"mrn": ' + b"1" * 5000 + b', "room": 1}', "not acceptable JSON")],
    ids=["bad", "truncated", "empty", "not-utf8", "deep-nesting", "5000-digits"])
def test_malformed_json_is_400(client, raw, message):
    resp = client.post("/api/v1/patients", data=raw, content_type="application/json")
    assert_error(resp, 400, None, message)


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"5", b"null", b'[{"mrn": 1}]'])
def test_body_must_be_object(client, raw):
    resp = client.post("/api/v1/patients", data=raw, content_type="application/json")
    assert_error(resp, 400, None, "must be a JSON object")


@pytest.mark.parametrize("path, method", [("/api/v1/patients", "post"),
                                          ("/api/rooms/3/pressure", "put"),
                                          ("/add_patient", "post")])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          None])
def test_wrong_content_type_is_415(client, path, method, content_type):
    resp = getattr(client, method)(path, data='{"mrn": 1, "room": 1}',
                                   content_type=content_type)
    assert_error(resp, 415, None, "must be JSON")


def test_body_over_limit_is_413(client):
    body = upload_body(name="x" * (5 * 1024 * 1024))
    assert_error(post_json(client, body), 413, None)


def test_body_limit_is_configurable():
    import mongomock

    from server import create_app

    app = create_app({"TESTING": True, "MONGO_CLIENT": mongomock.MongoClient(),
                      "MAX_CONTENT_LENGTH": 200})
    body = upload_body()
    assert len(json.dumps(body)) > 200
    resp = post_json(app.test_client(), body)
    assert_error(resp, 413, None)


@pytest.mark.parametrize("path, field", [
    ("/api/v1/rooms/abc", "room"), ("/api/v1/rooms/0", "room"), ("/api/v1/rooms/-3", "room"),
    ("/api/v1/rooms/1.5", "room"), ("/api/rooms/99999999999999999999", "room"),
    ("/api/v1/patients/abc", "mrn"), ("/api/v1/patients/0/records", "mrn"),
    ("/api/v1/patients/x/records.csv", "mrn"), ("/api/v1/rooms/x/pressure", "room"),
    ("/api/v1/rooms/x/pressure/history", "room"),
    ("/CPAP_query/abc", "room_number")])
def test_bad_path_values_are_400(client, path, field):
    assert_error(client.get(path), 400, field, "positive integer")


@pytest.mark.parametrize("query, field", [
    ("page=0", "page"), ("page=abc", "page"), ("per_page=0", "per_page"),
    ("per_page=501", "per_page"), ("page=1.5", "page")])
def test_pagination_checked(client, query, field):
    assert_error(client.get(f"/api/v1/patients?{query}"), 400, field)


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "limit=10001", "limit=-1"])
def test_limit_checked(client, query):
    client.post("/api/v1/patients", json={"mrn": 1, "room": 1})
    assert_error(client.get(f"/api/v1/patients/1/records?{query}"), 400, "limit")
    assert_error(client.get(f"/api/v1/rooms/1/pressure/history?{query}"), 400, "limit")


@pytest.mark.parametrize("body, field, message", [
    ({}, "pressure_cmh2o", "is required"),
    ({"pressure_cmh2o": None}, "pressure_cmh2o", "is required"),
    ({"pressure_cmh2o": 3}, "pressure_cmh2o", "from 4 to 25"),
    ({"pressure_cmh2o": 26}, "pressure_cmh2o", "from 4 to 25"),
    ({"pressure_cmh2o": 12.5}, "pressure_cmh2o", "from 4 to 25"),
    ({"pressure_cmh2o": True}, "pressure_cmh2o", "from 4 to 25"),
    ({"pressure_cmh2o": {"$gt": 1}}, "pressure_cmh2o", "from 4 to 25"),
    ({"pressure_cmh2o": 12, "source": 5}, "source", "must be a string"),
    ({"pressure_cmh2o": 12, "source": "s" * 51}, "source", "at most 50"),
    ({"pressure_cmh2o": 12, "extra": 1}, "extra", "unknown field"),
])
def test_pressure_command_rules(client, body, field, message):
    client.post("/api/v1/patients", json={"mrn": 1, "room": 1})
    assert_error(client.put("/api/v1/rooms/1/pressure", json=body), 400, field, message)


@pytest.mark.parametrize("value", HOSTILE + [None, "", "null", [], {}], ids=repr)
@pytest.mark.parametrize("field", ["mrn", "room", "name", "cpap_pressure_cmh2o",
                                   "breath_rate_bpm", "apnea_count", "flow_image", "breaths",
                                   "duration_s", "ahi", "leakage_l", "unknown"])
def test_no_input_gives_a_500(client, field, value):
    resp = post_json(client, upload_body(**{field: value}))
    assert resp.status_code < 500
    assert resp.status_code in (200, 201) or resp.get_json()["status"] == resp.status_code


def test_operator_objects_never_reach_a_query(client, app):
    client.post("/api/v1/patients", json={"mrn": 1, "room": 1})
    resp = post_json(client, {"mrn": {"$gt": ""}, "room": 1, "name": "evil"})
    assert resp.status_code == 400
    db = app.extensions["storage_db"]
    assert db.patients.count_documents({}) == 1
    assert db.patients.find_one({"mrn": 1})["name"] is None


# -- the validation functions themselves ------------------------------------------
@pytest.mark.parametrize("value, expected", [(5, 5), ("5", 5), (5.0, 5), (" 42 ", 42)])
def test_positive_id_basic(value, expected):
    assert validation.positive_id(value, "mrn") == expected


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_positive_id_raises(value):
    with pytest.raises(validation.ValidationError, match="mrn must be a positive integer"):
        validation.positive_id(value, "mrn")


def test_image_bytes_returns_content_type():
    assert validation.image_bytes(PNG, "img") == (PNG, "image/png")
    assert validation.image_bytes(JPEG, "img") == (JPEG, "image/jpeg")


@pytest.mark.parametrize("value", HOSTILE + [None, "", [], {}, "x" * 10_000], ids=repr)
@pytest.mark.parametrize("path, method, field", [
    ("/api/v1/rooms/1/pressure", "put", "pressure_cmh2o"),
    ("/api/v1/rooms/1/pressure", "put", "source"),
    ("/add_patient", "post", "patient_mrn"), ("/add_patient", "post", "room_number"),
    ("/add_patient", "post", "CPAP_pressure"), ("/add_patient", "post", "breath_rate"),
    ("/add_patient", "post", "patient_name"), ("/add_patient", "post", "flow_image")])
def test_no_input_gives_a_500_on_other_json_routes(client, path, method, field, value):
    client.post("/api/v1/patients", json={"mrn": 1, "room": 1})
    base = ({"pressure_cmh2o": 10, "mrn": 1} if method == "put" else
            {"patient_mrn": "1", "room_number": "1", "patient_name": "", "CPAP_pressure": "10",
             "breath_rate": "12", "apnea_count": "0", "flow_image": ""})
    resp = getattr(client, method)(path, data=json.dumps({**base, field: value}),
                                   content_type="application/json")
    assert resp.status_code < 500
    if resp.status_code >= 400:
        assert resp.get_json()["status"] == resp.status_code


@pytest.mark.parametrize("segment", ["%00", "%7B%22%24gt%22%3A%22%22%7D", "1%0A", "9" * 300,
                                     "-0", "+1", "1_000", "٣"])
def test_no_path_value_gives_a_500(client, segment):
    for path in (f"/api/v1/rooms/{segment}", f"/api/v1/patients/{segment}",
                 f"/api/v1/records/{segment}/image", f"/CPAP_query/{segment}",
                 f"/new_cpap_pressure/{segment}/10", f"/api/v1/rooms/{segment}/pressure/history"):
        resp = client.get(path)
        assert resp.status_code < 500
        if resp.status_code >= 400:
            assert resp.get_json()["status"] == resp.status_code
