"""Issue #13 in the API: the clinical metrics and events of a record (upload, raw
recording, record detail, lists, room summary, CSV) and their validation."""
from __future__ import annotations

import csv
import datetime as dt
import io
import re

import pytest

from sleeplab import storage
from tests.api_support import upload_body
from tools import cpap_synth

CLINICAL = {"hypopnea_count": 2, "apnea_index": 1.5, "ahi": 4.5, "tidal_volume_l": 0.512,
            "minute_ventilation_lpm": 7.25, "leak_rate_lpm": 3.4}
EVENTS = [{"type": "hypopnea", "start_s": 20.0, "end_s": 35.5},
          {"type": "apnea", "start_s": 50.0, "end_s": 64.0},
          {"type": "hypopnea", "start_s": 100.0, "end_s": 112.0}]


def series(minutes=3, bins=4):
    return {"step_s": 60.0, "minute_start_s": [60.0 * i for i in range(minutes)],
            "breath_rate_bpm": [15.0] * minutes, "tidal_volume_l": [0.5] * (minutes - 1) + [None],
            "minute_ventilation_lpm": [7.5] * minutes, "leak_rate_lpm": [3.0] * minutes,
            "flow_t_s": [10.0 * i for i in range(bins)], "flow_min_lpm": [-20.0] * bins,
            "flow_max_lpm": [30.0] * bins}


def post(client, **extra):
    return client.post("/api/v1/patients", json=upload_body(**extra))


def test_clinical_upload_round_trip(client, app):
    resp = post(client, **CLINICAL, events=EVENTS, series=series())
    assert resp.status_code == 201, resp.get_json()
    record = resp.get_json()["record"]
    assert {key: record[key] for key in CLINICAL} == CLINICAL
    assert "events" not in record and "series" not in record  # the upload's answer is light

    detail = client.get(f"/api/v1/records/{record['id']}").get_json()
    assert detail["events"] == EVENTS and detail["has_series"] is True
    assert {key: detail[key] for key in CLINICAL} == CLINICAL

    listed = client.get("/api/v1/patients/12/records").get_json()["records"][0]
    assert listed["ahi"] == 4.5 and listed["hypopnea_count"] == 2 and "events" not in listed
    room = client.get("/api/v1/rooms/3").get_json()
    assert room["latest"]["ahi"] == 4.5 and room["latest"]["hypopnea_count"] == 2
    # Details stay in the record: the summaries the wall reads do not carry them.
    with app.app_context():
        store = storage.get_storage()
        for doc in (store.get_room(3)["latest"], store.get_patient(12)["latest"]):
            assert "events" not in doc and "series" not in doc and doc["ahi"] == 4.5
        stored = store.get_record(record["id"])
        assert stored["events"] == EVENTS and stored["series"]["tidal_volume_l"][-1] is None


def test_record_without_details(client):
    record = post(client).get_json()["record"]
    assert record["hypopnea_count"] is None and record["tidal_volume_l"] is None
    detail = client.get(f"/api/v1/records/{record['id']}").get_json()
    assert detail["events"] == [] and detail["has_series"] is False


@pytest.mark.parametrize("record_id", ["nope", "0" * 24])
def test_unknown_record_404(client, record_id):
    resp = client.get(f"/api/v1/records/{record_id}")
    assert resp.status_code == 404 and record_id in resp.get_json()["message"]


@pytest.mark.parametrize("extra, field, message", [
    ({"hypopnea_count": -1}, "hypopnea_count", "integer ≥ 0"),
    ({"apnea_index": "many"}, "apnea_index", "apneas per hour"),
    ({"tidal_volume_l": -0.1}, "tidal_volume_l", "0 to 20 litres"),
    ({"minute_ventilation_lpm": 1e9}, "minute_ventilation_lpm", "litres per minute"),
    ({"leak_rate_lpm": float("nan")}, "leak_rate_lpm", "litres per minute"),
    ({"events": {"type": "apnea"}}, "events", "must be a list of events"),
    ({"events": [{"type": "snore", "start_s": 1, "end_s": 2}]}, "events",
     r"events\[0\].type must be one of apnea, hypopnea"),
    ({"events": [EVENTS[0], {"type": "apnea", "start_s": 9, "end_s": 3}]}, "events",
     r"events\[1\].end_s must not be before its start_s"),
    ({"events": [{"type": "apnea", "start_s": 1}]}, "events", r"events\[0\].end_s is required"),
    ({"events": [{"type": "apnea", "start_s": 1, "end_s": 2, "x": 1}]}, "events",
     "unknown key 'x'"),
    ({"events": [{"type": "apnea", "start_s": True, "end_s": 2}]}, "events",
     r"events\[0\].start_s must be seconds"),
    ({"events": [EVENTS[0]] * 20_001}, "events", "more than 20000 events"),
    ({"series": {**series(), "breath_rate_bpm": [1.0]}}, "series", "must have one length"),
    ({"series": {**series(), "step_s": 0}}, "series", r"series.step_s must be seconds"),
    ({"series": {k: v for k, v in series().items() if k != "flow_t_s"}}, "series",
     "series.flow_t_s is required"),
    ({"series": {**series(), "leak_rate_lpm": [1.0, "x", 2.0]}}, "series",
     r"series.leak_rate_lpm\[1\] must be a finite number"),
    ({"series": {**series(), "flow_t_s": [0.0] * 2001, "flow_min_lpm": [0.0] * 2001,
                 "flow_max_lpm": [0.0] * 2001}}, "series", "at most 2000 numbers"),
])
def test_clinical_values_refused(client, extra, field, message):
    resp = post(client, **extra)
    body = resp.get_json()
    assert resp.status_code == 400 and body["field"] == field
    assert re.search(message, body["message"]), body
    assert client.get("/api/v1/patients/12").status_code == 404  # nothing stored


@pytest.mark.parametrize("extra", [{"hypopnea_count": 1}, {"events": EVENTS},
                                   {"series": series()}])
def test_clinical_values_only_with_the_measurements(client, extra):
    body = {"mrn": 5, "room": 2, **extra}
    resp = client.post("/api/v1/patients", json=body)
    assert resp.status_code == 400
    assert resp.get_json()["field"] == next(iter(extra))
    assert "only accepted with cpap pressure" in resp.get_json()["message"]


def test_repeated_upload_id_with_other_events_is_a_conflict(client):
    key = "clinical-key-1"
    assert post(client, upload_id=key, events=EVENTS).status_code == 201
    assert post(client, upload_id=key, events=EVENTS).status_code == 200
    again = post(client, upload_id=key, events=EVENTS[:1])
    assert again.status_code == 409 and again.get_json()["field"] == "upload_id"


@pytest.fixture(scope="module")
def clinical_night():
    return cpap_synth.generate(duration_s=400, rate_bpm=15, amplitude_lpm=40, leak_lpm=4.0,
                               apnea_gaps_s=(20.0,), hypopnea_durations_s=(20.0, 30.0), seed=11)


def test_raw_recording_stores_the_clinical_analysis(client, clinical_night):
    content, truth = clinical_night
    resp = client.post("/api/v1/rooms/4/recordings", content_type="multipart/form-data",
                       data={"mrn": "21", "cpap_pressure_cmh2o": "9",
                             "file": (io.BytesIO(content), "night.txt")})
    assert resp.status_code == 201, resp.get_json()
    record = resp.get_json()["record"]
    assert (record["hypopnea_count"], record["apnea_count"]) == (2, 1)
    assert record["ahi"] == pytest.approx(3 * 3600 / record["duration_s"])
    assert record["apnea_index"] == pytest.approx(3600 / record["duration_s"])
    assert record["tidal_volume_l"] == pytest.approx(truth["tidal_volume_l"], rel=0.05)
    assert record["minute_ventilation_lpm"] == pytest.approx(truth["minute_ventilation_lpm"],
                                                             rel=0.05)
    assert record["leak_rate_lpm"] == pytest.approx(4.0, abs=0.5)
    events = client.get(f"/api/v1/records/{record['id']}").get_json()["events"]
    truth_events = sorted([("hypopnea", h["start_s"]) for h in truth["hypopnea_events"]]
                          + [("apnea", a["start"]) for a in truth["apnea_events"]],
                          key=lambda event: event[1])
    assert [e["type"] for e in events] == [kind for kind, _ in truth_events]
    for event, (_, start_s) in zip(events, truth_events):
        assert event["start_s"] == pytest.approx(start_s, abs=0.6)
    assert client.get("/api/v1/rooms/4").get_json()["latest"]["ahi"] == record["ahi"]


def test_csv_has_the_clinical_columns_rounded(client):
    post(client, **{**CLINICAL, "tidal_volume_l": 0.51234, "minute_ventilation_lpm": 7.256,
                    "leak_rate_lpm": -3.4449, "apnea_index": 1.55, "ahi": 4.44},
         events=EVENTS)
    text = client.get("/api/v1/patients/12/records.csv").get_data(as_text=True)
    row = next(csv.DictReader(io.StringIO(text)))
    assert {key: row[key] for key in ("hypopnea_count", "apnea_index", "ahi", "tidal_volume_l",
                                      "minute_ventilation_lpm", "leak_rate_lpm")} == {
        "hypopnea_count": "2", "apnea_index": "1.6", "ahi": "4.4", "tidal_volume_l": "0.512",
        "minute_ventilation_lpm": "7.26", "leak_rate_lpm": "-3.44"}
    assert "events" not in row and "series" not in row


# --- the night report ------------------------------------------------------------------------
def pdf_pages(data: bytes) -> int:
    import pypdf
    return len(pypdf.PdfReader(io.BytesIO(data)).pages)


def raw_upload(client, content, mrn="21", pressure="9"):
    resp = client.post("/api/v1/rooms/4/recordings", content_type="multipart/form-data",
                       data={"mrn": mrn, "cpap_pressure_cmh2o": pressure,
                             "file": (io.BytesIO(content), "night.txt")})
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()["record"]


def test_a_raw_recording_keeps_its_series_for_the_report(client, app, clinical_night):
    record = raw_upload(client, clinical_night[0])
    detail = client.get(f"/api/v1/records/{record['id']}").get_json()
    assert detail["has_series"] is True
    with app.app_context():
        series = storage.get_storage().get_record(record["id"])["series"]
    assert len(series["minute_start_s"]) == 7 and series["step_s"] == 60.0   # 400 s
    assert max(series["flow_max_lpm"]) > 30 and min(series["flow_min_lpm"]) < -10


@pytest.mark.parametrize("fmt, signature", [("pdf", b"%PDF-"), ("png", b"\x89PNG\r\n\x1a\n")])
def test_record_and_patient_reports_download(client, clinical_night, fmt, signature):
    first = raw_upload(client, clinical_night[0], pressure="8")
    raw_upload(client, clinical_night[0], pressure="10")
    for path in (f"/api/v1/records/{first['id']}/report.{fmt}", f"/api/v1/patients/21/report.{fmt}"):
        resp = client.get(path)
        assert resp.status_code == 200 and resp.data.startswith(signature), path
        assert resp.headers["Content-Disposition"].startswith("attachment;")
        assert resp.headers["Content-Disposition"].endswith(f'.{fmt}"')
        if fmt == "pdf":
            assert pdf_pages(resp.data) == 1


def test_the_patient_report_covers_the_night_before_the_newest_record(client, app, clinical_night):
    raw_upload(client, clinical_night[0])
    raw_upload(client, clinical_night[0])
    with app.app_context():
        store = storage.get_storage()
        store.records.update_one({}, {"$set": {"received_at": storage.utc_now()
                                               - dt.timedelta(hours=20)}})
        assert len(store.night_records(21, dt.timedelta(hours=12), 200)) == 1
        assert len(store.night_records(21, dt.timedelta(hours=24), 200)) == 2
    assert client.get("/api/v1/patients/21/report.pdf?hours=24").status_code == 200


@pytest.mark.parametrize("path, status", [
    ("/api/v1/records/nope/report.pdf", 404), ("/api/v1/records/" + "0" * 24 + "/report.png", 404),
    ("/api/v1/patients/999/report.pdf", 404), ("/api/v1/records/abc/report.svg", 404),
    ("/api/v1/patients/21/report.pdf?hours=0", 400), ("/api/v1/patients/21/report.pdf?hours=73", 400),
    ("/api/v1/patients/21/report.pdf?hours=x", 400),
])
def test_report_errors_are_clear(client, clinical_night, path, status):
    raw_upload(client, clinical_night[0])
    resp = client.get(path)
    assert resp.status_code == status and resp.get_json()["message"]


def test_a_record_without_series_still_has_a_report(client):
    record = post(client, **CLINICAL, events=EVENTS).get_json()["record"]
    resp = client.get(f"/api/v1/records/{record['id']}/report.pdf")
    assert resp.status_code == 200 and pdf_pages(resp.data) == 1
