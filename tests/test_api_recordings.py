"""POST /api/v1/rooms/{room}/recordings: a raw CPAP file analysed by the server."""
from __future__ import annotations

import io

import pytest

import cpap_synth


@pytest.fixture(scope="module")
def recording():
    """A synthetic 60 s recording with two apneas, and its known truth."""
    return cpap_synth.generate(seed=3, duration_s=90.0, rate_bpm=15.0,
                               apnea_gaps_s=(15.0, 20.0))


def send(client, content: bytes, room="4", filename="night.txt", **form):
    data = {"mrn": "21", "cpap_pressure_cmh2o": "9", "name": "Lin", **form}
    if content is not None:
        data["file"] = (io.BytesIO(content), filename)
    return client.post(f"/api/v1/rooms/{room}/recordings", data=data,
                       content_type="multipart/form-data")


def test_recording_analysed_and_stored(client, recording):
    content, truth = recording
    resp = send(client, content)
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    metrics, record = body["metrics"], body["record"]
    assert metrics["breaths"] == truth["breaths"]
    assert metrics["apnea_count"] == truth["apnea_count"] == 2
    assert record["breaths"] == metrics["breaths"] and record["apnea_count"] == 2
    assert record["breath_rate_bpm"] == pytest.approx(metrics["breath_rate_bpm"])
    assert record["duration_s"] == pytest.approx(truth["duration"], abs=0.05)
    assert record["ahi"] == pytest.approx(metrics["ahi"])
    assert record["leakage_l"] == pytest.approx(metrics["leakage"])
    assert record["cpap_pressure_cmh2o"] == 9 and record["room"] == 4 and record["has_image"]
    assert body["patient"]["name"] == "Lin" and body["patient"]["record_count"] == 1
    image = client.get(f"/api/v1/records/{record['id']}/image")
    assert image.mimetype == "image/png" and image.data.startswith(b"\x89PNG")
    assert client.get("/api/v1/rooms/4").get_json()["latest"]["id"] == record["id"]


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (bytes(range(256)) * 20, "binary"),
    (b"Time [s],a,b,c,d,e,f\nbad data\nmore bad data\n", "no valid samples"),
], ids=["empty", "binary", "no-samples"])
def test_unusable_file_is_422_with_the_analysis_message(client, content, message):
    resp = send(client, content)
    assert resp.status_code == 422
    body = resp.get_json()
    assert body["field"] == "file" and message in body["message"].lower()
    assert client.get("/api/v1/patients/21").status_code == 404, "nothing stored"


@pytest.mark.parametrize("form, field", [
    ({"mrn": "abc"}, "mrn"), ({"mrn": ""}, "mrn"), ({"cpap_pressure_cmh2o": "30"},
                                                    "cpap_pressure_cmh2o"),
    ({"cpap_pressure_cmh2o": ""}, "cpap_pressure_cmh2o"), ({"name": "x" * 101}, "name")])
def test_form_fields_checked_before_analysis(client, recording, form, field):
    resp = send(client, recording[0], **form)
    assert resp.status_code == 400 and resp.get_json()["field"] == field


def test_missing_file_is_400(client):
    resp = send(client, None)
    assert resp.status_code == 400 and resp.get_json()["field"] == "file"


def test_bad_room_is_400(client, recording):
    resp = send(client, recording[0], room="zero")
    assert resp.status_code == 400 and resp.get_json()["field"] == "room"


def test_json_instead_of_multipart_is_415(client):
    resp = client.post("/api/v1/rooms/4/recordings", json={"mrn": 1})
    assert resp.status_code == 415


def test_upload_limit_is_configurable_and_413(recording):
    import mongomock

    from server import create_app

    app = create_app({"TESTING": True, "MONGO_CLIENT": mongomock.MongoClient(),
                      "MAX_UPLOAD_BYTES": 10_000})
    resp = send(app.test_client(), recording[0])
    assert resp.status_code == 413 and resp.get_json()["status"] == 413


def test_default_upload_limit_fits_an_overnight_file(app):
    # 8 h at 100 Hz is ~110 MB of text; JSON bodies stay limited to a few MB.
    assert app.config["MAX_UPLOAD_BYTES"] >= 150 * 1024 * 1024
    assert app.config["MAX_CONTENT_LENGTH"] <= 8 * 1024 * 1024


SAMPLE_DATA = __import__("pathlib").Path(__file__).resolve().parents[1] / "sample_data"


@pytest.mark.parametrize("name", ["apnea_4", "bad_lines_crlf"])
def test_sample_recordings_through_the_api(client, name):
    """The repository's sample files, posted as a script would (curl -F file=@...)."""
    import json

    truth = json.loads((SAMPLE_DATA / f"{name}.truth.json").read_text())
    resp = send(client, (SAMPLE_DATA / f"{name}.txt").read_bytes(), filename=f"{name}.txt")
    assert resp.status_code == 201, resp.get_json()
    record = resp.get_json()["record"]
    assert record["apnea_count"] == truth["apnea_count"]
    assert record["breaths"] == pytest.approx(truth["breaths"], abs=1)
    assert record["duration_s"] == pytest.approx(truth["duration"], abs=0.05)
    skipped = resp.get_json()["metrics"]["skipped_lines"]
    assert [s["line"] for s in skipped] == [b["line"] for b in truth["bad_lines"]]
