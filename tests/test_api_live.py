"""Issue #14: a live night streamed into a room in chunks (POST /rooms/{room}/stream),
analysed as it comes and counted exactly as the offline analysis of the whole night; its
running metrics (/live), the titration table, the raw night back as one file, and the
sequence rules (retries stored once, gaps and conflicts refused with 409)."""
from __future__ import annotations

import csv
import io

import pytest

import cpap_measurements as cm
from tools import cpap_synth

SESSION = "night-0001"
CHUNK_LINES = 1000                              # 10 s at 100 Hz


@pytest.fixture(scope="module")
def night():
    """A 12-minute night with apneas and hypopneas of known truth, and its offline analysis."""
    content, truth = cpap_synth.generate(duration_s=720, rate_bpm=15, amplitude_lpm=40,
                                         leak_lpm=3.0, apnea_gaps_s=(20.0, 15.0),
                                         hypopnea_durations_s=(20.0, 30.0), seed=5)
    return content, truth, cm.analyze(content)


def chunks_of(content: bytes, lines_per_chunk: int = CHUNK_LINES) -> list[str]:
    """The recording cut into chunks; the first one keeps the header."""
    header, *samples = content.decode().splitlines(keepends=True)
    parts = ["".join(samples[i:i + lines_per_chunk])
             for i in range(0, len(samples), lines_per_chunk)]
    parts[0] = header + parts[0]
    return parts


def send(client, samples, sequence, pressure=8, mrn=12, room=3, session=SESSION, end=False):
    return client.post(f"/api/v1/rooms/{room}/stream", json={
        "mrn": mrn, "session_id": session, "sequence": sequence, "pressure_cmh2o": pressure,
        "samples": samples, "end": end})


def stream(client, content, pressures=None, **kw):
    parts = chunks_of(content)
    answers = []
    for i, part in enumerate(parts):
        pressure = pressures(i) if pressures else 8
        answers.append(send(client, part, i, pressure=pressure, end=i == len(parts) - 1, **kw))
        assert answers[-1].status_code == 201, answers[-1].get_json()
    return answers


def test_a_streamed_night_counts_as_the_offline_analysis(client, night):
    content, truth, offline = night
    last = stream(client, content)[-1].get_json()
    assert (offline.apnea_count, offline.hypopnea_count) == (truth["apnea_count"],
                                                            truth["hypopnea_count"]) == (2, 2)
    assert abs(last["breaths"] - offline.breaths) <= 1
    assert (last["apnea_count"], last["hypopnea_count"]) == (2, 2)
    assert last["ended"] is True and last["next_sequence"] == len(chunks_of(content))
    assert last["leak_rate_lpm"] == pytest.approx(offline.leak_rate_lpm, abs=0.2)

    got = client.get("/api/v1/rooms/3/live").get_json()
    assert [(e["type"], round(e["start_s"], 1)) for e in got["events"]] == [
        (e.type, round(e.start_s, 1)) for e in offline.events]
    assert got["ahi"] == pytest.approx(4 * 3600 / (got["final_until_s"] - got["first_time_s"]))
    assert 0 < len(got["trace"]) <= 4 * 60 + 1 and got["trace"][-1][0] <= got["last_time_s"]

    wall = client.get("/api/v1/rooms").get_json()["rooms"]
    assert wall[0]["live"]["session_id"] == SESSION and wall[0]["live"]["hypopnea_count"] == 2


def test_the_night_comes_back_as_one_recording(client, night):
    content, _, offline = night
    stream(client, content)
    resp = client.get(f"/api/v1/nights/{SESSION}/recording.txt")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    assert resp.get_data() == content.replace(b"\r\n", b"\n")
    again = cm.analyze(resp.get_data())
    assert (again.breaths, again.apnea_count, again.hypopnea_count) == (
        offline.breaths, offline.apnea_count, offline.hypopnea_count)


def test_headerless_chunks_come_back_with_a_header(client, night):
    parts = chunks_of(night[0])
    parts[0] = parts[0].split("\n", 1)[1]
    for i, part in enumerate(parts[:3]):
        assert send(client, part, i).status_code == 201
    text = client.get(f"/api/v1/nights/{SESSION}/recording.txt").get_data(as_text=True)
    assert text.startswith("time,") and cm.analyze(text.encode()).duration > 25


def test_titration_table_has_a_row_per_pressure(client, night):
    content, _, offline = night
    stream(client, content, pressures=lambda i: 6 if i < 36 else 10)   # 6 for 6 min, then 10
    table = client.get("/api/v1/rooms/3/titration").get_json()
    low, high = table["rows"]
    assert (low["pressure_cmh2o"], high["pressure_cmh2o"]) == (6, 10)
    assert low["to_s"] == pytest.approx(high["from_s"]) and low["minutes"] == pytest.approx(6.0, abs=0.05)
    assert low["breaths"] + high["breaths"] == client.get("/api/v1/rooms/3/live").get_json()["breaths"]
    events = {(e.type, e.start_s < high["from_s"]) for e in offline.events}
    assert low["apneas"] + high["apneas"] == 2 and low["hypopneas"] + high["hypopneas"] == 2
    assert low["apneas"] == sum(1 for e in offline.events
                                if e.type == "apnea" and e.start_s < high["from_s"]), events
    assert low["tidal_volume_l"] == pytest.approx(offline.tidal_volume_l, abs=0.05)
    rows = list(csv.DictReader(io.StringIO(
        client.get("/api/v1/rooms/3/titration.csv").get_data(as_text=True))))
    assert [row["pressure_cmh2o"] for row in rows] == ["6", "10"]
    assert rows[0]["minutes"] == f"{low['minutes']:.1f}"


def array_elements(value) -> int:
    """How many array elements a stored document holds, nested ones included (what a
    rewrite of the document costs nx-27017 most for)."""
    if isinstance(value, dict):
        return sum(array_elements(v) for v in value.values())
    if isinstance(value, list):
        return len(value) + sum(array_elements(v) for v in value)
    return 0


def stored_night(app) -> dict:
    with app.app_context():
        from sleeplab.storage import get_storage
        return get_storage().get_night(SESSION)


def test_the_night_document_stays_small_as_levels_come(app, night):
    """It is rewritten with every chunk: a level's tidal bins keep only counted bins and
    the strip chart is one binary field (not 500 zeros per level and 240 small arrays)."""
    client = app.test_client()
    stream(client, night[0], pressures=lambda i: 6 + i // 24)           # 3 levels
    doc = stored_night(app)
    assert len(doc["levels"]) == 3
    assert array_elements(doc) < 800
    got = client.get("/api/v1/rooms/3/live").get_json()
    assert 0 < len(got["trace"]) <= 4 * 60 + 1 and got["trace"][-1][0] <= got["last_time_s"]
    assert all(t1 - t0 == pytest.approx(0.25, abs=0.011)
               for (t0, _), (t1, _) in zip(got["trace"], got["trace"][1:]))


def test_a_night_stored_in_the_first_form_still_reads():
    """Nights stored before the compact form (tidal bins as 500 counts, the trace as
    pairs) give the same table and strip chart."""
    from sleeplab import live

    bins = [0] * live.TIDAL_BINS
    bins[40], bins[45], bins[60] = 2, 1, 2          # 0.40 L x2, 0.45, 0.60 L x2
    level = {"pressure_cmh2o": 8, "from_s": 0.0, "to_s": 60.0, "duration_s": 60.0,
             "breaths": 5, "apneas": 0, "hypopneas": 0, "inspired_volume_l": 2.3,
             "leakage_l": 2.0, "tidal_bins": bins}
    import datetime as dt
    old = {"_id": SESSION, "started_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
           "first_time_s": 0.0, "levels": [level], "trace": [[59.5, 1.0], [59.75, -2.0]]}
    assert live.titration_rows(old)[0]["tidal_volume_l"] == 0.455
    assert live.trace_points(old) == [[59.5, 1.0], [59.75, -2.0]]


def test_a_retried_chunk_is_stored_once(client, night):
    parts = chunks_of(night[0])
    assert send(client, parts[0], 0).status_code == 201
    first = send(client, parts[1], 1)
    again = send(client, parts[1], 1)
    assert again.status_code == 200 and again.headers["Idempotent-Replay"] == "true"
    assert again.get_json() == first.get_json()
    assert send(client, parts[2], 2).get_json()["next_sequence"] == 3
    text = client.get(f"/api/v1/nights/{SESSION}/recording.txt").get_data(as_text=True)
    assert text == "".join(parts[:3])                 # chunk 1 once


@pytest.mark.parametrize("sequence, message", [
    (2, "sequence 2 is ahead: the next expected is 1; send the missing chunks first"),
    (0, "sequence 0 of this night was already stored with other samples; the next expected is 1"),
])
def test_gaps_and_conflicting_retries_are_refused(client, night, sequence, message):
    parts = chunks_of(night[0])
    send(client, parts[0], 0)
    resp = send(client, parts[3], sequence)
    body = resp.get_json()
    assert resp.status_code == 409 and body["field"] == "sequence" and body["message"] == message
    assert send(client, parts[1], 1).status_code == 201          # the night goes on


def test_a_night_starts_at_sequence_zero(client, night):
    resp = send(client, chunks_of(night[0])[0], 5)
    assert resp.status_code == 409 and "first chunk is sequence 0" in resp.get_json()["message"]
    assert client.get("/api/v1/rooms/3/live").status_code == 404


def test_a_bad_chunk_is_refused_and_the_night_kept(client, night):
    parts = chunks_of(night[0])
    send(client, parts[0], 0)
    bad = send(client, "1.0,2,3\n" * 50 + "\x00\x01binary", 1)
    assert bad.status_code == 422 and bad.get_json()["field"] == "samples"
    assert bad.get_json()["message"].startswith("chunk 1: ")
    assert send(client, parts[1], 1).status_code == 201


def test_a_new_patient_in_the_room_ends_the_stream(client, night):
    parts = chunks_of(night[0])
    send(client, parts[0], 0)
    client.post("/api/v1/patients", json={"mrn": 99, "room": 3})     # admitted meanwhile
    resp = send(client, parts[1], 1)
    assert resp.status_code == 409 and resp.get_json()["field"] == "mrn"
    assert client.get("/api/v1/rooms/3/live").status_code == 404     # not the occupant's night


def test_a_session_is_bound_to_its_room_and_patient(client, night):
    parts = chunks_of(night[0])
    send(client, parts[0], 0)
    resp = send(client, parts[1], 1, room=4, mrn=12)
    assert resp.status_code == 409 and resp.get_json()["field"] == "session_id"


def test_the_first_chunk_admits_the_patient(client, night):
    resp = client.post("/api/v1/rooms/5/stream", json={
        "mrn": 77, "name": "Night Owl", "session_id": SESSION, "sequence": 0,
        "pressure_cmh2o": 8, "samples": chunks_of(night[0])[0]})
    assert resp.status_code == 201
    occupant = client.get("/api/v1/rooms/5").get_json()["patient"]
    assert (occupant["mrn"], occupant["name"]) == (77, "Night Owl")
    assert client.get("/api/v1/patients/77").get_json()["patient"]["name"] == "Night Owl"


@pytest.mark.parametrize("body, field", [
    ({"sequence": -1}, "sequence"), ({"sequence": True}, "sequence"),
    ({"session_id": "short"}, "session_id"), ({"pressure_cmh2o": 30}, "pressure_cmh2o"),
    ({"samples": 5}, "samples"), ({"end": "yes"}, "end"), ({"extra": 1}, "extra"),
])
def test_stream_bodies_are_checked(client, body, field):
    good = {"mrn": 12, "session_id": SESSION, "sequence": 0, "pressure_cmh2o": 8,
            "samples": "0.0,1,2,3,4,5,6\n"}
    resp = client.post("/api/v1/rooms/3/stream", json={**good, **body})
    assert resp.status_code == 400 and resp.get_json()["field"] == field


def test_an_oversized_chunk_is_413(client):
    resp = send(client, "0.00,3000,3000,3000,3000,0,0\n" * 40_000, 0)
    assert resp.status_code == 413 and resp.get_json()["field"] == "samples"


# --- on the real server (nx-27017), under gunicorn workers -----------------------------------
@pytest.mark.slow
def test_racing_workers_count_each_chunk_once(local_mongo, night):
    """Every chunk is sent four times at once through 3 gunicorn workers (a bedside's
    retries racing each other): each is applied once, the counts equal the offline
    analysis, and the raw night comes back whole."""
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    import pymongo
    import requests

    from tools.api_process import ApiServer

    content, _, offline = night
    uri = local_mongo.uri(database=f"t{uuid.uuid4().hex[:12]}")
    parts = chunks_of(content)
    with ApiServer(uri, workers=3) as api, requests.Session() as http:
        def post(args):
            i, part = args
            return http.post(f"{api.url}/api/v1/rooms/3/stream", timeout=60, json={
                "mrn": 12, "session_id": SESSION, "sequence": i, "pressure_cmh2o": 8,
                "samples": part, "end": i == len(parts) - 1}).status_code

        with ThreadPoolExecutor(4) as pool:
            for i, part in enumerate(parts):
                statuses = list(pool.map(post, [(i, part)] * 4))
                assert sorted(statuses) == [200, 200, 200, 201], (i, statuses)
        got = http.get(f"{api.url}/api/v1/rooms/3/live").json()
        assert abs(got["breaths"] - offline.breaths) <= 1
        assert (got["apnea_count"], got["hypopnea_count"]) == (offline.apnea_count,
                                                              offline.hypopnea_count)
        text = http.get(f"{api.url}/api/v1/nights/{SESSION}/recording.txt").content
        assert text == content.replace(b"\r\n", b"\n")
    with pymongo.MongoClient(uri) as client:
        assert client.get_default_database().live_chunks.count_documents({}) == len(parts)
