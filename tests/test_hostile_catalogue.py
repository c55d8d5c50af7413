"""A catalogue of hostile and broken inputs, each with the exact 4xx it must get.

Every case asserts the status, the one JSON error shape (``status``, ``error`` = the
HTTP reason phrase, ``message``, and ``field`` when one field is at fault), a phrase
of the message, and that the database is exactly as it was before the request.

``python -m tests.test_hostile_catalogue`` runs the catalogue and prints it as the
markdown table of docs/README-hardening.md (the "got" column is the live answer).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field as dc_field
from http import HTTPStatus
from urllib.parse import quote

import pytest

from tools import cpap_synth
from tests.api_support import JPEG, PNG, b64, image_bytes, upload_body

#: The recording upload limit for this catalogue (configured small on purpose).
UPLOAD_LIMIT_BYTES = 200 * 1024
TEN_MB = 10 * 1024 * 1024
COLLECTIONS = ("patients", "rooms", "records", "images", "commands", "meta", "audit",
               "uploads")
#: The upload_id of the seeded upload (a later request reusing it elsewhere is a 409).
SEEDED_KEY = "seeded-upload-0001"

GT, WHERE, NE = {"$gt": ""}, {"$where": "sleep(1000) || true"}, {"$ne": None}


def enc(value) -> str:
    """A JSON value as one URL path segment or query value."""
    return quote(json.dumps(value, separators=(",", ":")), safe="")


def _recording(duration_s: float) -> bytes:
    return cpap_synth.generate(seed=5, duration_s=duration_s, rate_bpm=15.0)[0]


RECORDING = _recording(30.0)          # ~110 KB: under the catalogue's limit
BIG_RECORDING = _recording(90.0)      # ~330 KB: a good file, over the limit
HEADER, *ROWS = RECORDING.decode().splitlines()


def rows(lines) -> bytes:
    return ("\n".join(lines) + "\n").encode()


@dataclass
class Case:
    id: str
    what: str
    method: str
    path: str
    status: int
    field: str | None
    message: str
    json: object = None            # a JSON body (serialised with NaN/Infinity allowed)
    raw: bytes | None = None       # a raw body, sent as-is with ``content_type``
    content_type: str | None = "application/json"
    form: dict | None = None       # multipart fields (``file`` given as bytes)
    kwargs: dict = dc_field(default_factory=dict)

    def send(self, client):
        if self.form is not None:
            data = {k: (io.BytesIO(v), "night.txt") if isinstance(v, bytes) else v
                    for k, v in self.form.items()}
            return client.open(self.path, method=self.method, data=data,
                               content_type=self.content_type or "multipart/form-data")
        data = self.raw
        if self.json is not None:
            data = json.dumps(self.json)  # writes NaN / Infinity literals on purpose
        return client.open(self.path, method=self.method, data=data,
                           content_type=self.content_type)


def up(**fields) -> dict:
    """A complete upload with some fields replaced."""
    return upload_body(**fields)


def legacy(**fields) -> dict:
    body = {"patient_name": "Ada", "patient_mrn": "40", "room_number": "5",
            "CPAP_pressure": "10", "breath_rate": "14", "apnea_count": "0", "flow_image": ""}
    body.update(fields)
    return body


def form(**fields) -> dict:
    base = {"mrn": "21", "cpap_pressure_cmh2o": "9", "name": "Lin", "file": RECORDING}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


P, REC = "/api/v1/patients", "/api/v1/rooms/3/recordings"
PRESSURE = "/api/v1/rooms/3/pressure"


def J(id, what, path, body, status, field, message, method="POST"):
    return Case(id, what, method, path, status, field, message, json=body)


def F(id, what, fields, status, field, message, path=REC):
    return Case(id, what, "POST", path, status, field, message, form=form(**fields),
                content_type="multipart/form-data")


def G(id, what, path, status, field, message):
    return Case(id, what, "GET", path, status, field, message, content_type=None)


CATALOGUE = [
    # -- operator injection in every field -------------------------------------------
    J("inject-mrn-gt", "mrn {$gt: ''}", P, up(mrn=GT), 400, "mrn", "positive integer"),
    J("inject-room-where", "room {$where: ...}", P, up(room=WHERE), 400, "room",
      "positive integer"),
    J("inject-name-ne", "name {$ne: null}", P, up(name=NE), 400, "name", "must be a string"),
    J("inject-pressure-gt", "cpap_pressure_cmh2o {$gt: ''}", P, up(pressure=GT), 400,
      "cpap_pressure_cmh2o", "from 4 to 25"),
    J("inject-rate-ne", "breath_rate_bpm {$ne: null}", P, up(rate=NE), 400,
      "breath_rate_bpm", "finite number"),
    J("inject-apnea-where", "apnea_count {$where: ...}", P, up(apnea=WHERE), 400,
      "apnea_count", "integer"),
    J("inject-image-gt", "flow_image {$gt: ''}", P, up(image=None, flow_image=GT), 400,
      "flow_image", "base64-encoded"),
    J("inject-ahi-gt", "ahi {$gt: ''}", P, up(ahi=GT), 400, "ahi", "finite number"),
    J("inject-command-pressure", "PUT pressure_cmh2o {$gt: ''}", PRESSURE,
      {"pressure_cmh2o": GT}, 400, "pressure_cmh2o", "from 4 to 25", method="PUT"),
    J("inject-command-source", "PUT source {$ne: null}", PRESSURE,
      {"pressure_cmh2o": 12, "source": NE}, 400, "source", "must be a string", method="PUT"),
    J("inject-operator-as-key", "a top-level key '$where'", P,
      up(**{"$where": "1"}), 400, "$where", "unknown field"),
    G("inject-path-room", "path room = {$gt: ''}", f"/api/v1/rooms/{enc(GT)}", 400, "room",
      "positive integer"),
    G("inject-path-mrn", "path mrn = {$ne: null}", f"/api/v1/patients/{enc(NE)}/records",
      400, "mrn", "positive integer"),
    G("inject-path-record-id", "path record_id = {$ne: null}",
      f"/api/v1/records/{enc(NE)}/image", 404, None, "no image"),
    Case("inject-path-command-id", "path command_id = {$gt: ''}", "POST",
         f"/api/v1/rooms/3/pressure/{enc(GT)}/applied", 404, None, "no command",
         content_type=None),
    G("inject-query-limit", "?limit={$gt: ''}", f"/api/v1/patients/12/records?limit={enc(GT)}",
      400, "limit", "integer"),
    G("inject-query-per-page", "?per_page={$ne: null}", f"/api/v1/patients?per_page={enc(NE)}",
      400, "per_page", "integer"),
    J("inject-compat-mrn", "/add_patient patient_mrn {$gt: ''}", "/add_patient",
      legacy(patient_mrn=GT), 400, "patient_mrn", "positive integer"),
    J("inject-compat-room", "/add_patient room_number {$where: ...}", "/add_patient",
      legacy(room_number=WHERE), 400, "room_number", "positive integer"),
    G("inject-compat-path-room", "/CPAP_query/{$gt: ''}", f"/CPAP_query/{enc(GT)}", 400,
      "room_number", "positive integer"),
    G("inject-compat-path-value", "/new_cpap_pressure/3/{$ne: null}",
      f"/new_cpap_pressure/3/{enc(NE)}", 400, "value", "from 4 to 25"),
    F("inject-form-mrn", "multipart mrn = '{\"$gt\": \"\"}'", {"mrn": json.dumps(GT)}, 400,
      "mrn", "positive integer"),
    F("inject-form-pressure", "multipart cpap_pressure_cmh2o = '{\"$ne\": null}'",
      {"cpap_pressure_cmh2o": json.dumps(NE)}, 400, "cpap_pressure_cmh2o", "from 4 to 25"),
    F("inject-form-room", "multipart path room = {$where: ...}", {}, 400, "room",
      "positive integer", path=f"/api/v1/rooms/{enc(WHERE)}/recordings"),
    # -- huge, negative, NaN and Infinity numbers --------------------------------------
    J("huge-mrn", "mrn 2**64", P, up(mrn=2**64), 400, "mrn", "positive integer"),
    J("negative-room", "room -3", P, up(room=-3), 400, "room", "positive integer"),
    J("huge-pressure", "pressure 1e30", P, up(pressure=1e30), 400, "cpap_pressure_cmh2o",
      "from 4 to 25"),
    J("negative-apnea", "apnea_count -1", P, up(apnea=-1), 400, "apnea_count", "integer"),
    J("huge-apnea", "apnea_count 10**20", P, up(apnea=10**20), 400, "apnea_count", "integer"),
    J("nan-literal-rate", "breath_rate_bpm NaN (JSON literal)", P, up(rate=float("nan")), 400,
      "breath_rate_bpm", "finite number"),
    J("infinity-literal-duration", "duration_s Infinity (JSON literal)", P,
      up(duration_s=float("inf")), 400, "duration_s", "finite number"),
    J("neg-infinity-literal-leakage", "leakage_l -Infinity (JSON literal)", P,
      up(leakage_l=float("-inf")), 400, "leakage_l", "finite number"),
    J("nan-string-rate", "breath_rate_bpm \"NaN\"", P, up(rate="NaN"), 400, "breath_rate_bpm",
      "finite number"),
    J("infinity-string-ahi", "ahi \"Infinity\"", P, up(ahi="Infinity"), 400, "ahi",
      "finite number"),
    J("nan-literal-mrn", "mrn NaN (JSON literal)", P, up(mrn=float("nan")), 400, "mrn",
      "positive integer"),
    J("huge-command", "PUT pressure_cmh2o 1e308", PRESSURE, {"pressure_cmh2o": 1e308}, 400,
      "pressure_cmh2o", "from 4 to 25", method="PUT"),
    G("huge-query-limit", "?limit=10**30", f"/api/v1/patients/12/records?limit={10**30}", 400,
      "limit", "integer"),
    # -- unicode and control characters in names ---------------------------------------
    J("name-nul", "name with NUL", P, up(name="Ada\x00"), 400, "name", "control characters"),
    J("name-ansi-escape", "name with an ANSI escape", P, up(name="\x1b[31mAda"), 400, "name",
      "control characters"),
    J("name-c1-control", "name with U+0085 (C1 control)", P, up(name="Ada\x85King"), 400,
      "name", "control characters"),
    J("name-lone-surrogate", "name with a lone surrogate \\ud800", P, up(name="Ada\ud800"), 400,
      "name", "lone surrogates"),
    J("name-rtl-override", "name with U+202E (displays reversed)", P,
      up(name="\u202eevil Bob"), 400, "name", "U+202E RIGHT-TO-LEFT OVERRIDE"),
    J("name-zero-width", "name with a zero-width joiner", P, up(name="Ada\u200dKing"), 400,
      "name", "U+200D ZERO WIDTH JOINER"),
    J("name-too-long", "name of 101 emoji", P, up(name="😴" * 101), 400, "name",
      "at most 100 characters"),
    J("source-newline", "PUT source with a newline", PRESSURE,
      {"pressure_cmh2o": 12, "source": "Dr\nGrey"}, 400, "source", "control characters",
      method="PUT"),
    F("form-name-control", "multipart name with a BEL", {"name": "Lin\x07"}, 400, "name",
      "control characters"),
    # -- 10 MB bodies ------------------------------------------------------------------
    Case("10mb-json-upload", "10 MB JSON upload", "POST", P, 413, None, "exceeds",
         raw=b'{"mrn": 1, "room": 1, "name": "' + b"x" * TEN_MB + b'"}'),
    Case("10mb-json-command", "10 MB pressure command", "PUT", PRESSURE, 413, None, "exceeds",
         raw=b'{"pressure_cmh2o": 12, "source": "' + b"x" * TEN_MB + b'"}'),
    Case("10mb-compat", "10 MB /add_patient", "POST", "/add_patient", 413, None, "exceeds",
         raw=b" " * TEN_MB),
    F("10mb-recording", "10 MB multipart recording", {"file": b"1" * TEN_MB}, 413, "file",
      "larger than the upload limit of 0.195 MB"),
    # -- images ------------------------------------------------------------------------
    J("image-text", "flow_image: base64 of text", P, up(image=b"hello, not an image"), 400,
      "flow_image", "PNG or JPEG"),
    J("image-gif", "flow_image: a GIF", P, up(image=image_bytes("GIF")), 400, "flow_image",
      "PNG or JPEG"),
    J("image-truncated-png", "flow_image: truncated PNG", P, up(image=PNG[:60]), 400,
      "flow_image", "not a readable PNG"),
    J("image-truncated-jpeg", "flow_image: truncated JPEG", P, up(image=JPEG[:len(JPEG) // 2]),
      400, "flow_image", "not a readable JPEG"),
    J("image-png-magic-junk", "flow_image: PNG magic + junk", P,
      up(image=PNG[:8] + b"\0" * 100), 400, "flow_image", "not a readable PNG"),
    J("image-not-base64", "flow_image: not base64", P, up(image=None, flow_image="@@@!!"), 400,
      "flow_image", "not valid base64"),
    J("image-over-2mb", "flow_image: 2.1 MB (PNG + padding)", P,
      up(image=PNG + b"\0" * (2 * 1024 * 1024)), 413, "flow_image", "at most 2 MB"),
    # -- wrong content types -----------------------------------------------------------
    Case("ctype-text-plain", "upload as text/plain", "POST", P, 415, None, "must be JSON",
         raw=json.dumps(up()).encode(), content_type="text/plain"),
    Case("ctype-form-urlencoded", "pressure as form-urlencoded", "PUT", PRESSURE, 415, None,
         "must be JSON", raw=b"pressure_cmh2o=12",
         content_type="application/x-www-form-urlencoded"),
    Case("ctype-none-compat", "/add_patient without a content type", "POST", "/add_patient",
         415, None, "must be JSON", raw=json.dumps(legacy()).encode(), content_type=None),
    Case("ctype-json-recording", "recording sent as JSON", "POST", REC, 415, None,
         "multipart/form-data", raw=b'{"mrn": 21}'),
    Case("ctype-xml", "upload as application/xml", "POST", P, 415, None, "must be JSON",
         raw=b"<patient><mrn>1</mrn></patient>", content_type="application/xml"),
    # -- duplicate keys ----------------------------------------------------------------
    Case("dup-key-mrn", "{\"mrn\": 1, \"mrn\": 2, ...}", "POST", P, 400, "mrn", "duplicate key",
         raw=b'{"mrn": 1, "room": 3, "mrn": 2}'),
    Case("dup-key-command", "pressure_cmh2o twice", "PUT", PRESSURE, 400, "pressure_cmh2o",
         "duplicate key", raw=b'{"pressure_cmh2o": 8, "pressure_cmh2o": 20}'),
    Case("dup-key-compat", "/add_patient room_number twice", "POST", "/add_patient", 400,
         "room_number", "duplicate key",
         raw=b'{"patient_mrn": "40", "room_number": "5", "room_number": "6"}'),
    # -- malformed JSON ----------------------------------------------------------------
    Case("json-truncated", "truncated JSON", "POST", P, 400, None, "not valid JSON",
         raw=b'{"mrn": 1, "room"'),
    Case("json-array", "a JSON array body", "POST", P, 400, None, "must be a JSON object",
         raw=b'[{"mrn": 1, "room": 1}]'),
    Case("json-deep-nesting", "nesting 100000 deep", "POST", P, 400, None,
         "not acceptable JSON", raw=b'{"mrn": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    # -- CPAP recordings ---------------------------------------------------------------
    F("cpap-empty", "empty file", {"file": b""}, 422, "file", "empty"),
    F("cpap-binary", "binary file", {"file": bytes(range(256)) * 64}, 422, "file", "binary"),
    F("cpap-one-column", "one column", {"file": rows([r.split(",")[0] for r in ROWS])}, 422,
      "file", "wrong number of columns"),
    F("cpap-all-nan", "every value NaN", {"file": rows([HEADER] + [",".join(["nan"] * 7)] * 500)},
      422, "file", "no valid samples"),
    F("cpap-single-row", "header + a single row", {"file": rows([HEADER, ROWS[0]])}, 422, "file",
      "too short"),
    F("cpap-over-limit", "a good file over the configured limit", {"file": BIG_RECORDING}, 413,
      "file", "larger than the upload limit"),
    F("cpap-missing", "no file part", {"file": None}, 400, "file", "file is required"),
    # idempotency key (upload_id)
    J("upload-id-inject-gt", "upload_id = {$gt: ''}", P, upload_body(upload_id=GT), 400,
      "upload_id", "upload_id must be 8 to 64 characters"),
    J("upload-id-inject-where", "upload_id = {$where: ...}", P, upload_body(upload_id=WHERE),
      400, "upload_id", "upload_id must be 8 to 64 characters"),
    J("upload-id-too-long", "upload_id of 65 characters", P, upload_body(upload_id="k" * 65),
      400, "upload_id", "upload_id must be 8 to 64 characters"),
    J("upload-id-too-short", "upload_id of 7 characters", P, upload_body(upload_id="k" * 7),
      400, "upload_id", "upload_id must be 8 to 64 characters"),
    J("upload-id-bad-chars", "upload_id with '/', '.', '$' and a space", P,
      upload_body(upload_id="../$x y-123456"), 400, "upload_id",
      "upload_id must be 8 to 64 characters"),
    J("upload-id-number", "upload_id as a number", P, upload_body(upload_id=12345678), 400,
      "upload_id", "upload_id must be 8 to 64 characters"),
    J("upload-id-reused-other-mrn", "the seeded upload_id sent for another MRN", P,
      upload_body(mrn=13, room=3, upload_id=SEEDED_KEY), 409, "upload_id",
      "was already used for another patient"),
    F("upload-id-form-bad-chars", "recording with upload_id '\\x00\\n'",
      {"upload_id": "abc\x00\ndefgh"}, 400, "upload_id", "upload_id must be 8 to 64"),
    J("upload-id-compat-inject", "/add_patient upload_id = {$ne: null}", "/add_patient",
      {"patient_mrn": 12, "room_number": 3, "upload_id": NE}, 400, "upload_id",
      "upload_id must be 8 to 64 characters"),
]

IDS = [case.id for case in CATALOGUE]
assert len(IDS) == len(set(IDS)), "catalogue ids must be unique"


def make_app():
    import mongomock

    from server import create_app

    return create_app({"TESTING": True, "MONGO_CLIENT": mongomock.MongoClient(tz_aware=True),
                       "MAX_UPLOAD_BYTES": UPLOAD_LIMIT_BYTES})


def seeded_client(app):
    """Room 3 has patient 12 with a record and a pressure command (so room routes get
    past the 404 and reach their validation)."""
    client = app.test_client()
    assert client.post(P, json=upload_body(mrn=12, room=3, upload_id=SEEDED_KEY)
                       ).status_code == 201
    assert client.put(PRESSURE, json={"pressure_cmh2o": 11, "mrn": 12}).status_code == 201
    return client


def snapshot(app) -> dict:
    db = app.extensions["storage_db"]
    return {name: sorted((repr(d) for d in db[name].find({})))
            for name in COLLECTIONS}


@pytest.fixture(scope="module")
def hostile_app():
    app = make_app()
    seeded_client(app)
    return app


def test_catalogue_is_big_enough():
    assert len(CATALOGUE) >= 30
    assert RECORDING.__len__() < UPLOAD_LIMIT_BYTES < len(BIG_RECORDING)


@pytest.mark.parametrize("case", CATALOGUE, ids=IDS)
def test_hostile_input_is_refused(hostile_app, case):
    before = snapshot(hostile_app)
    resp = case.send(hostile_app.test_client())
    body = resp.get_json(silent=True)
    assert resp.status_code == case.status, resp.get_data(as_text=True)[:300]
    assert resp.mimetype == "application/json" and isinstance(body, dict)
    assert body["status"] == case.status
    assert body["error"] == HTTPStatus(case.status).phrase
    assert case.message in body["message"]
    assert body.get("field") == case.field
    assert set(body) <= {"status", "error", "message", "field"}
    assert snapshot(hostile_app) == before, "a refused request changed the database"


@pytest.mark.parametrize("name", ["Zoë Ørsted", "山田 太郎", "😴 Ada", "عائشة",
                                  '{"$gt": ""}', "<script>alert(1)</script>", "x" * 100,
                                  "Ada https://evil.example/x"],
                         ids=["accents", "cjk", "emoji", "arabic", "operator-text",
                              "html", "100-chars", "url"])
def test_unicode_names_are_accepted_as_plain_text(name):
    """Printable text of any script (and text that merely looks like an operator or
    HTML) is a valid name: stored and returned exactly, never interpreted."""
    app = make_app()
    client = app.test_client()
    resp = client.post(P, json=upload_body(mrn=77, room=7, name=name))
    assert resp.status_code == 201 and resp.get_json()["patient"]["name"] == name
    assert client.get("/api/v1/rooms/7").get_json()["patient"]["name"] == name
    assert app.extensions["storage_db"].patients.find_one({"mrn": 77})["name"] == name


def test_recording_under_the_limit_is_accepted():
    """The control for the CPAP cases: the same form with a good file is stored."""
    app = make_app()
    resp = app.test_client().post(REC, data={**form(), "file": (io.BytesIO(RECORDING), "n.txt")},
                                  content_type="multipart/form-data")
    assert resp.status_code == 201, resp.get_json()
    assert app.extensions["storage_db"].records.count_documents({}) == 1


def markdown_table() -> str:
    """Run the catalogue and return it as a markdown table with the live answers."""
    app = make_app()
    seeded_client(app)
    lines = ["| # | id | input | request | expected | got | field | message (start) |",
             "|---:|---|---|---|---:|---:|---|---|"]
    for number, case in enumerate(CATALOGUE, 1):
        before = snapshot(app)
        resp = case.send(app.test_client())
        body = resp.get_json(silent=True) or {}
        unchanged = snapshot(app) == before
        ok = (resp.status_code == case.status and body.get("field") == case.field
              and case.message in body.get("message", "") and unchanged)
        message = body.get("message", "")[:60].replace("|", "\\|").replace("\n", " ")
        path = case.path if len(case.path) < 45 else case.path[:42] + "..."
        lines.append(f"| {number} | `{case.id}` | {case.what} | {case.method} `{path}` | "
                     f"{case.status} | {resp.status_code}{'' if ok else ' FAIL'} | "
                     f"{body.get('field') or ''} | {message} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
