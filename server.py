"""Sleep Lab Monitor REST API (Flask).

Run with ``python server.py`` (Flask debug server on API_HOST:API_PORT) or under
gunicorn: ``gunicorn 'server:create_app()'``. All state lives in MongoDB, so any
number of workers or hosts can serve at once.

Routes live on one blueprint mounted at ``/api/v1`` (canonical) and ``/api``
(alias of the latest version); the older API's routes are kept for existing
clients. Route handlers validate (``validation``), call ``storage`` and shape
the JSON (``*_out`` functions); they never touch pymongo.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import time

from flask import Blueprint, Flask, Response, abort, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, UnsupportedMediaType

import auth
import openapi
import storage
import validation
from auth import ANYONE, MONITOR, STATION, ADMIN, public, reads, writes
from csv_export import csv_text
from storage import get_storage
from validation import ValidationError

log = logging.getLogger(__name__)

#: Default body limits: JSON bodies (an upload with a 2 MB image is ~2.7 MB), and
#: raw CPAP recordings (an 8-hour file at 100 Hz is ~110 MB).
DEFAULT_MAX_JSON_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 200 * 1024 * 1024
#: Records are immutable, so their images may be cached for a year.
IMAGE_CACHE_CONTROL = "private, max-age=31536000, immutable"
DEFAULT_RECORDS_LIMIT, MAX_RECORDS_LIMIT = 100, 10_000
DEFAULT_PER_PAGE, MAX_PER_PAGE = 50, 500
DEFAULT_HISTORY_LIMIT = 50
DEFAULT_AUDIT_LIMIT = 100
#: Ward-wide reads (every patient's data): monitors and admins when reads are protected.
WARD = (MONITOR, ADMIN)
#: Set (to "true") on the answer to an upload whose upload_id was seen before.
REPLAY_HEADER = "Idempotent-Replay"

api = Blueprint("api", __name__)


# -- JSON shapes ---------------------------------------------------------------
def iso(value) -> str | None:
    """ISO 8601 UTC with a ``Z`` and milliseconds (BSON dates keep milliseconds)."""
    value = storage.as_utc(value)
    if not isinstance(value, dt.datetime):
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _opt(value, kind):
    return None if value is None else kind(value)


def record_out(doc: dict | None) -> dict | None:
    if doc is None:
        return None
    return {
        "id": str(doc.get("_id", doc.get("id"))),
        "mrn": doc["mrn"], "room": doc["room"], "received_at": iso(doc["received_at"]),
        "cpap_pressure_cmh2o": _opt(doc.get("cpap_pressure_cmh2o"), int),
        "breath_rate_bpm": _opt(doc.get("breath_rate_bpm"), float),
        "apnea_count": _opt(doc.get("apnea_count"), int),
        "breaths": _opt(doc.get("breaths"), int),
        "duration_s": _opt(doc.get("duration_s"), float),
        "ahi": _opt(doc.get("ahi"), float),
        "leakage_l": _opt(doc.get("leakage_l"), float),
        "has_image": bool(doc.get("has_image")),
    }


def patient_out(doc: dict, with_latest: bool = False) -> dict:
    out = {"mrn": doc["mrn"], "name": doc.get("name"), "room": doc.get("room"),
           "created_at": iso(doc.get("created_at")),
           "updated_at": iso((doc.get("updated") or {}).get("at")),
           "record_count": int(doc.get("record_count") or 0)}
    if with_latest:
        out["latest"] = record_out(doc.get("latest"))
    return out


def audit_out(doc: dict) -> dict:
    who = doc.get("who") or {}
    return {"id": str(doc["_id"]), "room": doc["room"], "mrn": doc.get("mrn"),
            "at": iso(doc["at"]), "action": doc["action"],
            "who": {"name": who.get("name"), "role": who.get("role")},
            "address": doc.get("address"), "old": doc.get("old"), "new": doc.get("new")}


def command_out(doc: dict | None) -> dict | None:
    if doc is None:
        return None
    ack = doc.get("ack")
    return {"id": str(doc.get("_id", doc.get("id"))), "room": doc["room"],
            "mrn": doc.get("mrn"), "pressure_cmh2o": int(doc["pressure_cmh2o"]),
            "commanded_at": iso(doc["commanded_at"]), "source": doc.get("source"),
            "applied": ack is not None, "applied_at": iso(ack["at"]) if ack else None}


def room_out(doc: dict) -> dict:
    occupant = doc.get("patient")
    latest = doc.get("latest")
    command = doc.get("command")
    # A new occupant must not inherit the previous patient's record or pressure command.
    if latest is not None and (occupant is None or latest.get("mrn") != occupant["mrn"]):
        latest = None
    if command is not None and (occupant is None or command.get("mrn") != occupant["mrn"]):
        command = None
    return {"room": doc["_id"],
            "patient": ({"mrn": occupant["mrn"], "name": occupant.get("name"),
                         "since": iso(occupant.get("since"))} if occupant else None),
            "latest": record_out(latest), "command": command_out(command)}


# -- request helpers -------------------------------------------------------------
def json_body() -> dict:
    """The request's JSON object (415 for another content type, 400 when malformed)."""
    if not request.is_json:
        raise UnsupportedMediaType("the request body must be JSON (Content-Type: "
                                   "application/json)")
    try:
        body = json.loads(request.get_data().decode("utf-8"),
                          object_pairs_hook=validation.unique_keys)
    except ValidationError:  # a duplicate key
        raise
    except UnicodeDecodeError:
        raise ValidationError("the request body is not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise ValidationError(f"the request body is not valid JSON: {exc.msg} at line "
                              f"{exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # 5000-digit numbers, nesting too deep
        raise ValidationError(f"the request body is not acceptable JSON: {exc}") from None
    return validation.object_body(body)


def room_param(room: str) -> int:
    return validation.positive_id(room, "room")


def mrn_param(mrn: str) -> int:
    return validation.positive_id(mrn, "mrn")


def existing_room(room: str) -> tuple[int, dict]:
    number = room_param(room)
    doc = get_storage().get_room(number)
    if doc is None:
        abort(404, description=f"room {number} has no patient")
    return number, doc


def existing_patient(mrn: str) -> tuple[int, dict]:
    number = mrn_param(mrn)
    doc = get_storage().get_patient(number)
    if doc is None:
        abort(404, description=f"no patient with mrn {number}")
    return number, doc


def records_limit() -> int:
    return validation.query_int(request.args, "limit", DEFAULT_RECORDS_LIMIT, 1,
                                MAX_RECORDS_LIMIT)


def actor() -> dict:
    """Who is calling, as the audit trail records it."""
    caller = auth.current_caller()
    return {"name": caller.name, "role": caller.role, "address": caller.address}


def save_upload(clean: dict, digest: str | None = None):
    auth.require_room(clean["room"])  # a room-scoped station uploads for its room only
    try:
        return get_storage().upload(clean["mrn"], clean["room"], name=clean["name"],
                                    metrics=clean["metrics"], image=clean["image"],
                                    actor=actor(), upload_id=clean.get("upload_id"),
                                    digest=digest)
    except storage.UploadConflict as exc:
        raise ValidationError(str(exc), "upload_id", status=409) from None


def upload_answer(response: Response, result, created_status: int = 201) -> Response:
    """Status 201 for a new patient (recording: a new record), 200 otherwise; a
    replayed upload_id is always a 200 with ``Idempotent-Replay: true``."""
    if result.replay:
        response.status_code = 200
        response.headers[REPLAY_HEADER] = "true"
    else:
        response.status_code = created_status
    return response


# -- patients --------------------------------------------------------------------
@api.post("/patients")
@writes(STATION, ADMIN)
def upload_patient():
    body = json_body()
    validation.known_fields(body, validation.UPLOAD_FIELDS)
    result = save_upload(validation.upload(body))
    return upload_answer(jsonify(patient=patient_out(result.patient),
                                 record=record_out(result.record)), result,
                         201 if result.created else 200)


@api.get("/patients")
@reads(*WARD)
def list_patients():
    page = validation.query_int(request.args, "page", 1, 1, 10**9)
    per_page = validation.query_int(request.args, "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
    docs, total = get_storage().list_patients(page, per_page)
    return jsonify(patients=[patient_out(d, with_latest=True) for d in docs],
                   page=page, per_page=per_page, total=total)


@api.get("/patients/<mrn>")
@reads(*WARD)
def get_patient(mrn):
    number, doc = existing_patient(mrn)
    records = get_storage().patient_records(number, records_limit())
    return jsonify(patient=patient_out(doc), records=[record_out(r) for r in records])


@api.get("/patients/<mrn>/records")
@reads(*WARD)
def patient_records(mrn):
    number, _ = existing_patient(mrn)
    records = get_storage().patient_records(number, records_limit())
    return jsonify(records=[record_out(r) for r in records])


CSV_COLUMNS = ("received_at", "mrn", "room", "cpap_pressure_cmh2o", "breath_rate_bpm",
               "apnea_count", "breaths", "duration_s", "ahi", "leakage_l", "has_image", "id")
#: Decimal places in the CSV: what the screens show (leakage in the station's 2 places).
CSV_DECIMALS = {"breath_rate_bpm": 1, "duration_s": 1, "ahi": 1, "leakage_l": 2}


@api.get("/patients/<mrn>/records.csv")
@reads(*WARD)
def patient_records_csv(mrn):
    number, _ = existing_patient(mrn)
    rows = (record_out(doc) for doc in get_storage().patient_records(number))
    return Response(csv_text(rows, CSV_COLUMNS, CSV_DECIMALS), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="patient-{number}-records.csv"'})


@api.get("/records/<record_id>/image")
@reads(*WARD)
def record_image(record_id):
    image = get_storage().get_image(record_id)
    if image is None:
        abort(404, description=f"no image for record {record_id!r}")
    response = Response(image.data, mimetype=image.content_type)
    response.headers["Cache-Control"] = IMAGE_CACHE_CONTROL
    response.set_etag(image.etag)
    return response.make_conditional(request)


# -- rooms -----------------------------------------------------------------------
#: The serialised wall is reused while the database's rooms version is unchanged;
#: this bound only matters if a writer died between its room update and the bump.
ROOMS_CACHE_MAX_AGE_S = 5.0


@api.get("/rooms")
@reads(*WARD)
def list_rooms():
    """The monitor wall. Each worker keeps the serialised rooms with the database's
    rooms version read *before* them, and reuses them while the version is unchanged:
    one tiny read per request instead of 100 documents (still stateless: the version
    lives in the database, so every worker and host sees every change)."""
    store = get_storage()
    version = store.rooms_version()
    cached = current_app.extensions.get("rooms_cache")
    now = time.monotonic()
    if not cached or cached[0] != version or now - cached[2] > ROOMS_CACHE_MAX_AGE_S:
        rooms_json = json.dumps([room_out(doc) for doc in store.list_rooms()],
                                separators=(",", ":"))
        cached = (version, rooms_json, now)
        current_app.extensions["rooms_cache"] = cached
    body = f'{{"rooms":{cached[1]},"server_time":"{iso(storage.utc_now())}"}}'
    return Response(body, mimetype="application/json")


@api.get("/rooms/<room>")
@reads(*ANYONE)
def get_room(room):
    _, doc = existing_room(room)
    return jsonify(room_out(doc))


@api.post("/rooms/<room>/recordings")
@writes(STATION, ADMIN)
def upload_recording(room):
    """A raw CPAP file (multipart): analysed here, stored as a record with its plot."""
    request.max_content_length = current_app.config["MAX_UPLOAD_BYTES"]
    number = room_param(room)
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType("send the recording as multipart/form-data with a "
                                   "'file' part")
    try:
        upload = request.files.get("file")
    except RequestEntityTooLarge:
        limit = current_app.config["MAX_UPLOAD_BYTES"]
        raise ValidationError(f"the recording is larger than the upload limit of "
                              f"{limit / 2**20:.3g} MB", "file", status=413) from None
    if upload is None:
        raise ValidationError("file is required (the CPAP recording)", "file")
    form = request.form
    base = {"mrn": form.get("mrn"), "room": number, "name": form.get("name"),
            "upload_id": form.get("upload_id")}
    first = validation.upload(base)  # MRN and name errors first, before the analysis
    if not form.get("cpap_pressure_cmh2o"):
        raise ValidationError("cpap_pressure_cmh2o is required", "cpap_pressure_cmh2o")
    validation.pressure(form.get("cpap_pressure_cmh2o"))

    import cpap_measurements  # the analysis stack (NumPy/SciPy/Matplotlib) loads on first use
    data = upload.stream.read()
    # A repeated upload_id must repeat the same request: the file and the form values.
    digest = storage.fingerprint("recording", first["mrn"], number, first["name"],
                                 validation.pressure(form.get("cpap_pressure_cmh2o")),
                                 hashlib.sha256(data).hexdigest())
    try:
        result = cpap_measurements.analyze(data)
    except cpap_measurements.CpapFileError as exc:
        raise ValidationError(str(exc), "file", status=422) from exc
    metrics = {"cpap_pressure_cmh2o": form.get("cpap_pressure_cmh2o"),
               "breath_rate_bpm": result.breath_rate_bpm, "apnea_count": result.apnea_count,
               "breaths": result.breaths, "duration_s": result.duration, "ahi": result.ahi,
               "leakage_l": result.leakage}
    try:
        clean = validation.upload({**base, **metrics})
    except ValidationError as exc:
        raise ValidationError(f"the recording gives an implausible result: {exc.message}",
                              "file", status=422) from exc
    clean["image"] = (cpap_measurements.flow_plot_png(result), "image/png")
    saved = save_upload(clean, digest=digest)
    return upload_answer(jsonify(patient=patient_out(saved.patient),
                                 record=record_out(saved.record), metrics=result.to_dict()),
                         saved)


# -- pressure commands -------------------------------------------------------------
def command_pressure(room: str, pressure_cmh2o: int, source: str) -> dict:
    number, doc = existing_room(room)
    return get_storage().add_command(number, doc["patient"]["mrn"], pressure_cmh2o, source,
                                     actor=actor())


def latest_command(room: str) -> dict:
    """The latest command for the room's current patient; 404 when there is none."""
    number, doc = existing_room(room)
    command = get_storage().latest_command(number, doc["patient"]["mrn"])
    if command is None:
        abort(404, description=f"no pressure command for room {number}")
    return command


@api.put("/rooms/<room>/pressure")
@writes(MONITOR, ADMIN)
def set_pressure(room):
    body = json_body()
    validation.known_fields(body, {"pressure_cmh2o", "source"})
    if body.get("pressure_cmh2o") is None:
        raise ValidationError("pressure_cmh2o is required", "pressure_cmh2o")
    value = validation.pressure(body["pressure_cmh2o"], "pressure_cmh2o")
    source = validation.text(body.get("source"), "source", validation.MAX_SOURCE_CHARS)
    return jsonify(command_out(command_pressure(room, value, source or "monitor"))), 201


@api.get("/rooms/<room>/pressure")
@reads(*ANYONE)
def get_pressure(room):
    return jsonify(command_out(latest_command(room)))


@api.post("/rooms/<room>/pressure/<command_id>/applied")
@writes(STATION, ADMIN)
def mark_applied(room, command_id):
    number = room_param(room)
    command = get_storage().mark_applied(number, command_id, actor=actor())
    if command is None:
        abort(404, description=f"no command {command_id!r} for room {number}")
    return jsonify(command_out(command))


@api.get("/rooms/<room>/pressure/history")
@reads(*ANYONE)
def pressure_history(room):
    number = room_param(room)
    limit = validation.query_int(request.args, "limit", DEFAULT_HISTORY_LIMIT, 1,
                                 MAX_RECORDS_LIMIT)
    return jsonify(commands=[command_out(c) for c in get_storage().command_history(number, limit)])


@api.get("/rooms/<room>/audit")
@reads(MONITOR, ADMIN, always=True)
def room_audit(room):
    """Who changed what in a room (pressure commands, acknowledgements, patient
    changes), newest first. Always needs a monitor or admin token when auth is on."""
    number = room_param(room)
    limit = validation.query_int(request.args, "limit", DEFAULT_AUDIT_LIMIT, 1,
                                 MAX_RECORDS_LIMIT)
    return jsonify(entries=[audit_out(d) for d in get_storage().audit_trail(number, limit)])


@api.get("/openapi.json")
@public
def openapi_document():
    cached = current_app.extensions.get("openapi")
    if cached is None:
        cached = current_app.extensions["openapi"] = openapi.document(current_app)
    return jsonify(cached)


# -- compatibility routes (the older API) -------------------------------------------
legacy = Blueprint("legacy", __name__)

LEGACY_NAMES = {"name": "patient_name", "mrn": "patient_mrn", "room": "room_number",
                "cpap_pressure_cmh2o": "CPAP_pressure", "breath_rate_bpm": "breath_rate",
                "apnea_count": "apnea_count", "flow_image": "flow_image",
                "upload_id": "upload_id"}


@legacy.post("/add_patient")
@writes(STATION, ADMIN)
def legacy_add_patient():
    body = json_body()
    clean = validation.upload({ours: body.get(theirs) for ours, theirs in LEGACY_NAMES.items()},
                              names=LEGACY_NAMES)
    result = save_upload(clean)
    message = "New patient created" if result.created else "Patient successfully updated"
    return upload_answer(Response(message, mimetype="text/plain"), result, 200)


@legacy.get("/CPAP_query/<room_number>")
@reads(*ANYONE)
def legacy_cpap_query(room_number):
    validation.positive_id(room_number, "room_number")
    return jsonify(int(latest_command(room_number)["pressure_cmh2o"]))


@legacy.get("/new_cpap_pressure/<room_number>/<value>")
@writes(MONITOR, ADMIN)
def legacy_new_cpap_pressure(room_number, value):
    number = validation.positive_id(room_number, "room_number")
    pressure_cmh2o = validation.pressure(value, "value")
    command_pressure(room_number, pressure_cmh2o, "legacy")
    return Response(f"CPAP pressure for room {number} set to {pressure_cmh2o} cmH2O",
                    status=200, mimetype="text/plain")


@legacy.get("/get_all_patients")
@reads(*WARD)
def legacy_get_all_patients():
    """One entry per room's current occupant, its lists built from the records."""
    occupants = [doc for doc in get_storage().list_rooms() if doc.get("patient")]
    lists = get_storage().record_lists([doc["patient"]["mrn"] for doc in occupants])
    out = []
    for doc in occupants:
        records = lists.get(doc["patient"]["mrn"], [])
        out.append({
            "room_number": doc["_id"], "patient_mrn": doc["patient"]["mrn"],
            "patient_name": doc["patient"].get("name") or "",
            "CPAP_pressure": [int(r["cpap_pressure_cmh2o"]) for r in records],
            "breath_rate": [float(r["breath_rate_bpm"]) for r in records],
            "apnea_count": [int(r["apnea_count"]) for r in records],
            "timestamp": [iso(r["received_at"]) for r in records],
        })
    return jsonify(out)


# -- errors ----------------------------------------------------------------------------
def error_response(status: int, error: str, message: str, field: str | None = None,
                   response: Response | None = None) -> Response:
    payload = {"status": status, "error": error, "message": message}
    if field:
        payload["field"] = field
    response = response or Response()
    response.status_code = status
    response.set_data(json.dumps(payload))
    response.mimetype = "application/json"
    return response


def register_error_handlers(app: Flask) -> None:
    from http import HTTPStatus

    @app.errorhandler(ValidationError)
    def on_validation_error(exc: ValidationError):
        return error_response(exc.status, HTTPStatus(exc.status).phrase, exc.message, exc.field)

    @app.errorhandler(HTTPException)
    def on_http_exception(exc: HTTPException):
        # get_response() keeps headers such as Allow (405); only the body is replaced.
        return error_response(exc.code or 500, exc.name, exc.description or exc.name,
                              response=exc.get_response())

    @app.errorhandler(storage.DatabaseError)
    def on_database_error(exc):
        log.error("database error: %s", exc)
        return error_response(503, "Service Unavailable",
                              "the database is unavailable; try again shortly")

    @app.errorhandler(Exception)
    def on_unexpected(exc):  # a bug: logged with its traceback, never shown to the caller
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "Internal Server Error", "unexpected server error")


def create_app(test_config: dict | None = None) -> Flask:
    """Application factory (flaskr style).

    ``test_config`` may set ``MONGO_CLIENT`` (e.g. a mongomock client) to bypass
    ``MONGODB_URI``.
    """
    app = Flask(__name__, static_folder=None)
    app.config.from_mapping(
        MONGODB_URI=os.environ.get("MONGODB_URI", storage.DEFAULT_URI),
        MAX_CONTENT_LENGTH=int(os.environ.get("API_MAX_JSON_BYTES", DEFAULT_MAX_JSON_BYTES)),
        MAX_UPLOAD_BYTES=int(os.environ.get("API_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES)),
    )
    app.json.sort_keys = False
    if test_config:
        app.config.update(test_config)
    for key, value in auth.config_from_env().items():
        app.config.setdefault(key, value)
    storage.init_app(app)
    auth.init_app(app)
    register_error_handlers(app)

    @app.get("/health")
    @public
    def health():
        ok = get_storage().ping()
        return jsonify(status="ok" if ok else "unavailable",
                       database="ok" if ok else "unreachable"), (200 if ok else 503)

    app.register_blueprint(api, url_prefix="/api/v1")
    app.register_blueprint(api, url_prefix="/api", name="api_latest")
    app.register_blueprint(legacy)
    return app


if __name__ == "__main__":
    create_app().run(host=os.environ.get("API_HOST", "127.0.0.1"),
                     port=int(os.environ.get("API_PORT", "5000")), debug=True)
