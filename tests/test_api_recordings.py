"""POST /api/v1/rooms/{room}/recordings: a raw CPAP file analysed by the server."""
from __future__ import annotations

import io
import os
import tempfile

import pytest

from tools import cpap_synth


@pytest.fixture(scope="module")
def recording():
    """A synthetic 60 s recording with two apneas, and its known truth."""
    return cpap_synth.generate(seed=3, duration_s=90.0, rate_bpm=15.0,
                               apnea_gaps_s=(15.0, 20.0))


def send(client, content: bytes, room="4", filename="night.txt", environ_overrides=None, **form):
    data = {"mrn": "21", "cpap_pressure_cmh2o": "9", "name": "Lin", **form}
    if content is not None:
        data["file"] = (io.BytesIO(content), filename)
    return client.post(f"/api/v1/rooms/{room}/recordings", data=data,
                       content_type="multipart/form-data", environ_overrides=environ_overrides)


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


# --- hostile recordings (issue #11, item 1) ------------------------------------------------
HEADER_LINE = b"Time [s],V1 p2,V1 p1-ins,V1 p1-exp,V2 p2,V2 p1-ins,V2 p1-exp\n"
SAMPLES = b"".join(b"%.2f,5000,5000,1638,5150,5150,1638\n" % (i / 100) for i in range(1000))

HOSTILE = {  # name: (content, the line the message names)
    "5m fields after a header": (HEADER_LINE + b"1," * 5_000_000 + b"\n" + SAMPLES, 2),
    "10m empty fields": (b"," * 10**7, 1),
    "one 10 MB number, no line end": (b"1" * 10_000_000, 1),
    "1 MB header": (b"T" * 1_000_000 + b"\n" + SAMPLES, 1),
    "CR-only line ends": ((HEADER_LINE + SAMPLES).replace(b"\n", b"\r") * 20, 1),
    "NUL tail": (HEADER_LINE + SAMPLES + b"\x00" * 10_000_000, 1002),
    "giant line at the end": (HEADER_LINE + SAMPLES + b"1," * 5_000_000, 1002),
}


@pytest.mark.parametrize("shape", list(HOSTILE))
def test_hostile_recording_is_422_naming_the_line(client, shape):
    content, line = HOSTILE[shape]
    resp = send(client, content)
    assert resp.status_code == 422, resp.get_json()
    body = resp.get_json()
    assert body["field"] == "file" and body["status"] == 422
    assert body["message"].startswith(f"line {line} is longer than 16,384 characters")
    assert client.get("/api/v1/patients/21").status_code == 404, "nothing stored"


# --- large uploads: from disk, in a bounded number of slots (issue #11, item 4) -------------
@pytest.fixture
def slot_app(tmp_path):
    """The API with one analysis slot of its own, every upload counted as heavy, and the
    uploads' temporary files in their own directory."""
    import mongomock

    from server import create_app

    return create_app({"TESTING": True, "MONGO_CLIENT": mongomock.MongoClient(tz_aware=True),
                       "ANALYSIS_SLOTS": 1, "ANALYSIS_WAIT_S": 0.2, "HEAVY_UPLOAD_BYTES": 0,
                       "ANALYSIS_LOCK_DIR": str(tmp_path / "slots")})


@pytest.fixture
def upload_dir(tmp_path, monkeypatch):
    folder = tmp_path / "uploads"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_recording_is_analysed_from_its_temporary_file(client, recording, upload_dir, monkeypatch):
    """The upload is analysed from the file werkzeug wrote (never read into memory whole),
    and the file is gone when the request ends."""
    import cpap_measurements

    seen = []
    real_analyze = cpap_measurements.analyze

    def spy(source):
        seen.append((source, os.path.getsize(source), os.path.dirname(source)))
        return real_analyze(source)

    monkeypatch.setattr(cpap_measurements, "analyze", spy)
    resp = send(client, recording[0])
    assert resp.status_code == 201, resp.get_json()
    assert [(size, folder) for _, size, folder in seen] == [(len(recording[0]), str(upload_dir))]
    assert list(upload_dir.iterdir()) == []


@pytest.mark.parametrize("length_known", [True, False], ids=["length known", "streamed body"])
def test_busy_server_answers_503_with_retry_after(slot_app, recording, length_known):
    """Every slot taken: a body of known length is refused before it is read (no worker
    time spent receiving it); one sent without its length when it is in."""
    client = slot_app.test_client()
    overrides = {} if length_known else {"CONTENT_LENGTH": "", "wsgi.input_terminated": True}
    with slot_app.extensions["analysis_slots"].hold():  # another worker is analysing
        resp = send(client, recording[0], environ_overrides=overrides)
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
    body = resp.get_json()
    assert body["status"] == 503 and "busy analysing other large recordings" in body["message"]
    assert client.get("/api/v1/patients/21").status_code == 404, "nothing stored"
    assert send(client, recording[0], environ_overrides=overrides).status_code == 201  # free again


@pytest.mark.parametrize("content, status", [(None, 201), (b"1," * 5_000_000, 422)],
                         ids=["analysed", "refused"])
def test_heavy_analysis_frees_its_slot_and_memory(slot_app, recording, monkeypatch, content, status):
    from sleeplab.analysis import slots as analysis_slots

    released = []
    monkeypatch.setattr(analysis_slots, "release_memory", lambda: released.append(1))
    resp = send(slot_app.test_client(), recording[0] if content is None else content)
    assert resp.status_code == status
    assert released == [1]
    with slot_app.extensions["analysis_slots"].hold():  # free at once (the wait is 0.2 s)
        pass


def test_small_recording_needs_no_slot(app, recording, tmp_path, monkeypatch):
    """Below HEAVY_UPLOAD_BYTES an upload is analysed even when every slot is taken."""
    from sleeplab.analysis import slots as analysis_slots

    app.config["HEAVY_UPLOAD_BYTES"] = 2 * len(recording[0])  # the body: file and form
    slots = analysis_slots.AnalysisSlots(str(tmp_path), 1, 0.0)
    app.extensions["analysis_slots"] = slots
    released = []
    monkeypatch.setattr(analysis_slots, "release_memory", lambda: released.append(1))
    with slots.hold():
        assert send(app.test_client(), recording[0]).status_code == 201
    assert released == []


def test_analysis_limits_come_from_the_environment(monkeypatch, tmp_path):
    import mongomock

    from server import create_app

    monkeypatch.setenv("API_ANALYSIS_SLOTS", "3")
    monkeypatch.setenv("API_ANALYSIS_WAIT_S", "2.5")
    monkeypatch.setenv("API_HEAVY_UPLOAD_BYTES", "1000")
    monkeypatch.setenv("API_ANALYSIS_LOCK_DIR", str(tmp_path / "locks"))
    app = create_app({"TESTING": True, "MONGO_CLIENT": mongomock.MongoClient()})
    slots = app.extensions["analysis_slots"]
    assert (len(slots.paths), slots.wait_s, app.config["HEAVY_UPLOAD_BYTES"]) == (3, 2.5, 1000)
    assert all(p.startswith(str(tmp_path / "locks")) for p in slots.paths)


def test_heavy_upload_holds_its_slot_while_analysed(slot_app, recording, monkeypatch):
    from sleeplab.analysis import slots as analysis_slots
    import cpap_measurements

    other_worker = analysis_slots.AnalysisSlots(slot_app.config["ANALYSIS_LOCK_DIR"], 1, 0.0)
    real_analyze, refused = cpap_measurements.analyze, []

    def analyze(source):
        with pytest.raises(analysis_slots.SlotsBusy) as busy:
            other_worker.hold()
        refused.append(busy.value)
        return real_analyze(source)

    monkeypatch.setattr(cpap_measurements, "analyze", analyze)
    assert send(slot_app.test_client(), recording[0]).status_code == 201
    assert len(refused) == 1
    with other_worker.hold():  # released with the request
        pass


def test_oversized_recording_is_413_even_when_the_server_is_busy(slot_app, recording):
    slot_app.config["MAX_UPLOAD_BYTES"] = 10_000
    with slot_app.extensions["analysis_slots"].hold():
        resp = send(slot_app.test_client(), recording[0])
    assert resp.status_code == 413 and resp.get_json()["field"] == "file"
    assert "larger than the upload limit" in resp.get_json()["message"]
