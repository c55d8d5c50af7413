"""Sleep Lab Monitor REST API (Flask).

Run with ``python server.py`` (Flask's development server on API_HOST:API_PORT; its
debugger and reloader only with ``FLASK_DEBUG=1`` or ``API_DEBUG=1``) or under
gunicorn: ``gunicorn 'server:create_app()'``. All state lives in MongoDB, so any
number of workers or hosts can serve at once.

Routes live on one blueprint mounted at ``/api/v1`` (canonical) and ``/api``
(alias of the latest version); the older API's routes are kept for existing
clients. Route handlers validate (``validation``), call ``storage`` and shape
the JSON (``*_out`` functions); they never touch pymongo.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
import threading
import time

from flask import Blueprint, Flask, Request, Response, abort, current_app, g, jsonify, request
from werkzeug.exceptions import (HTTPException, RequestEntityTooLarge, ServiceUnavailable,
                                 UnsupportedMediaType)

import accounts
import analysis_slots
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
#: A recording larger than this is a heavy analysis (~4-5x its size in memory, seconds of
#: CPU): it needs one of the host's analysis slots (API_ANALYSIS_SLOTS, waiting at most
#: API_ANALYSIS_WAIT_S, else 503 + Retry-After). Smaller ones (an hour is ~14 MB) do not.
DEFAULT_HEAVY_UPLOAD_BYTES = 16 * 1024 * 1024
DEFAULT_ANALYSIS_WAIT_S = 0.2
#: Environment variables that turn on the debugger of ``python server.py`` (off otherwise).
DEBUG_ENV = ("FLASK_DEBUG", "API_DEBUG")
ANALYSIS_RETRY_AFTER_S = 5
#: Records are immutable, so their images may be cached for a year.
IMAGE_CACHE_CONTROL = "private, max-age=31536000, immutable"
DEFAULT_RECORDS_LIMIT, MAX_RECORDS_LIMIT = 100, validation.MAX_LIST_LIMIT
DEFAULT_PER_PAGE, MAX_PER_PAGE = 50, 500
DEFAULT_HISTORY_LIMIT = 50
DEFAULT_AUDIT_LIMIT = 100
#: The CSV export holds at most this many records (the newest); X-Truncated says when
#: the patient has more.
MAX_CSV_RECORDS = MAX_RECORDS_LIMIT
#: Heavy reads (more than validation.HEAVY_READ_ROWS rows) one worker serves at once
#: (API_MAX_HEAVY_READS); more are refused with 503 + Retry-After, so polls and uploads
#: keep the worker's other threads. Each is stopped after API_HEAVY_READ_TIMEOUT_S.
DEFAULT_MAX_HEAVY_READS = 1
HEAVY_READ_RETRY_AFTER_S = 2
#: /health's write probe runs at most this often per worker; its answer is reused between.
HEALTH_PROBE_INTERVAL_S = 5.0
#: After a write refused for lack of space, /health reports "cannot write" this long
#: (a small probe can still fit in a database file's free pages when uploads no longer do).
STORAGE_FULL_MEMORY_S = 60.0
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
            "who": {"name": who.get("name"), "role": who.get("role"),
                    **{k: who[k] for k in ("user", "via") if who.get(k)}},
            "address": doc.get("address"), "old": doc.get("old"), "new": doc.get("new")}


def command_out(doc: dict | None) -> dict | None:
    if doc is None:
        return None
    ack = doc.get("ack")
    cancelled = doc.get("cancelled")
    return {"id": str(doc.get("_id", doc.get("id"))), "room": doc["room"],
            "mrn": doc.get("mrn"), "pressure_cmh2o": int(doc["pressure_cmh2o"]),
            "commanded_at": iso(doc["commanded_at"]), "source": doc.get("source"),
            "applied": ack is not None, "applied_at": iso(ack["at"]) if ack else None,
            "cancelled": ({"at": iso(cancelled["at"]), "reason": cancelled.get("reason")}
                          if cancelled else None)}


def room_out(doc: dict) -> dict:
    occupant = doc.get("patient") if storage.occupant_mrn(doc) is not None else None
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
    if storage.occupant_mrn(doc) is None:
        abort(404, description=f"room {number} has no patient")
    return number, doc


def existing_patient(mrn: str) -> tuple[int, dict]:
    number = mrn_param(mrn)
    doc = get_storage().get_patient(number)
    if doc is None:
        abort(404, description=f"no patient with mrn {number}")
    return number, doc


def records_limit(default: int = DEFAULT_RECORDS_LIMIT) -> int:
    return validation.query_int(request.args, "limit", default, 1, MAX_RECORDS_LIMIT)


@contextlib.contextmanager
def heavy_read():
    """Guard a read that may return many rows: at most API_MAX_HEAVY_READS of them run
    at once in this worker (another is a 503 with Retry-After, at once: waiting would
    hold the thread a poll or an upload needs), and each is stopped after
    API_HEAVY_READ_TIMEOUT_S (503)."""
    slots: threading.BoundedSemaphore = current_app.extensions["heavy_reads"]
    if not slots.acquire(blocking=False):
        raise ServiceUnavailable("the server is busy with other large reads; try again in "
                                 f"{HEAVY_READ_RETRY_AFTER_S} s",
                                 retry_after=HEAVY_READ_RETRY_AFTER_S)
    limit_s = current_app.config["HEAVY_READ_TIMEOUT_S"]
    try:
        with storage.time_limit(limit_s):
            yield
    except storage.DatabaseError as exc:
        if not storage.is_slow_query(exc):
            raise
        log.warning("heavy read %s stopped after %g s: %s", request.path, limit_s, exc)
        raise ServiceUnavailable(f"this read took longer than {limit_s:g} s and was "
                                 "stopped; ask for fewer records (limit) or try again later",
                                 retry_after=HEAVY_READ_RETRY_AFTER_S) from None
    finally:
        slots.release()


def read_guard(rows: int):
    """:func:`heavy_read` for a read of more than HEAVY_READ_ROWS rows, else nothing."""
    return heavy_read() if rows > validation.HEAVY_READ_ROWS else contextlib.nullcontext()


def single_form_values() -> None:
    """Refuse a multipart form that gives a field or file part twice (400 naming it),
    as a JSON body with a duplicate key is: a script sending ``-F mrn=30 -F mrn=31``
    must not have one of them silently chosen."""
    for parts in (request.form, request.files):
        for name in parts:
            if len(parts.getlist(name)) > 1:
                raise ValidationError(f"the form field {name!r} is given more than once",
                                      name)


def actor() -> dict:
    """Who is calling, as the audit trail records it."""
    caller = auth.current_caller()
    return {"name": caller.name, "role": caller.role, "address": caller.address,
            "user": caller.user, "via": caller.via}


def save_upload(clean: dict, digest: str | None = None, with_record_count: bool = True):
    auth.require_room(clean["room"])  # a room-scoped station uploads for its room only
    try:
        return get_storage().upload(clean["mrn"], clean["room"], name=clean["name"],
                                    metrics=clean["metrics"], image=clean["image"],
                                    actor=actor(), upload_id=clean.get("upload_id"),
                                    digest=digest, with_record_count=with_record_count)
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
    limit = records_limit()
    with read_guard(limit):
        records = get_storage().patient_records(number, limit)
    return jsonify(patient=patient_out(doc), records=[record_out(r) for r in records])


@api.get("/patients/<mrn>/records")
@reads(*WARD)
def patient_records(mrn):
    number, _ = existing_patient(mrn)
    limit = records_limit()
    with read_guard(limit):
        records = get_storage().patient_records(number, limit)
    return jsonify(records=[record_out(r) for r in records])


CSV_COLUMNS = ("received_at", "mrn", "room", "cpap_pressure_cmh2o", "breath_rate_bpm",
               "apnea_count", "breaths", "duration_s", "ahi", "leakage_l", "has_image", "id")
#: Decimal places in the CSV: what the screens show (leakage in the station's 2 places).
CSV_DECIMALS = {"breath_rate_bpm": 1, "duration_s": 1, "ahi": 1, "leakage_l": 2}


@api.get("/patients/<mrn>/records.csv")
@reads(*WARD)
def patient_records_csv(mrn):
    """The newest ``limit`` records (at most MAX_CSV_RECORDS), newest first, written by
    :func:`csv_export.csv_text` (formula cells quoted, numbers rounded as on screen);
    ``X-Total-Count`` is the patient's number of records and ``X-Truncated`` says
    whether the file holds fewer."""
    number, patient = existing_patient(mrn)
    limit = records_limit(default=MAX_CSV_RECORDS)
    with read_guard(limit):
        records = get_storage().patient_records(number, limit)
    total = max(int(patient.get("record_count") or 0), len(records))
    rows = (record_out(doc) for doc in records)
    return Response(csv_text(rows, CSV_COLUMNS, CSV_DECIMALS), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="patient-{number}-records.csv"',
        "X-Total-Count": str(total), "X-Truncated": "true" if total > len(records) else "false"})


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
    if (request.content_length or 0) > request.max_content_length:
        raise _too_large()  # before waiting for an analysis slot it would never use
    hold_analysis_slot(request.content_length)  # before a large body is read
    try:
        upload = request.files.get("file")
    except RequestEntityTooLarge:  # a streamed body over the limit
        raise _too_large() from None
    single_form_values()
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
    hold_analysis_slot(upload.stream.seek(0, os.SEEK_END))  # a large body sent without its length
    try:
        analysis, png = _analyse_recording(cpap_measurements, upload.stream)
    except cpap_measurements.CpapFileError as exc:
        raise ValidationError(str(exc), "file", status=422) from exc
    # A repeated upload_id must repeat the same request: the file and the form values.
    digest = storage.fingerprint("recording", first["mrn"], number, first["name"],
                                 validation.pressure(form.get("cpap_pressure_cmh2o")),
                                 _sha256(upload.stream))
    metrics = {"cpap_pressure_cmh2o": form.get("cpap_pressure_cmh2o"),
               "breath_rate_bpm": analysis["breath_rate_bpm"],
               "apnea_count": analysis["apnea_count"], "breaths": analysis["breaths"],
               "duration_s": analysis["duration"], "ahi": analysis["ahi"],
               "leakage_l": analysis["leakage"]}
    try:
        clean = validation.upload({**base, **metrics})
    except ValidationError as exc:
        raise ValidationError(f"the recording gives an implausible result: {exc.message}",
                              "file", status=422) from exc
    clean["image"] = (png, "image/png")
    saved = save_upload(clean, digest=digest)
    return upload_answer(jsonify(patient=patient_out(saved.patient),
                                 record=record_out(saved.record), metrics=analysis),
                         saved)


def _too_large() -> ValidationError:
    return ValidationError(f"the recording is larger than the upload limit of "
                           f"{request.max_content_length / 2**20:.3g} MB", "file", status=413)


def _sha256(stream) -> str:
    """SHA-256 of an uploaded file, read in blocks (never whole); after the analysis, so a
    refused file does not wait for it (~0.3 s for 100 MB)."""
    stream.seek(0)
    return hashlib.file_digest(stream, "sha256").hexdigest()


def _analyse_recording(cpap_measurements, stream) -> tuple[dict, bytes]:
    """``result.to_dict()`` and the flow plot of an uploaded recording. Read from its
    temporary file on disk (:class:`ApiRequest`): the fast whole-file path, and the
    content is never held in memory. The large arrays die with this call."""
    stream.flush()
    path = getattr(stream, "name", None)
    if not isinstance(path, str):  # not a named file: read from the stream
        stream.seek(0)
        path = stream
    result = cpap_measurements.analyze(path)
    return result.to_dict(), cpap_measurements.flow_plot_png(result)


def hold_analysis_slot(size_bytes: int | None) -> None:
    """For a heavy upload (over HEAVY_UPLOAD_BYTES), hold one of the host's analysis slots
    until the request ends: receiving, analysing and storing it. Taken before the body is
    read when its length is known, so a busy server refuses at once (503 + Retry-After,
    after waiting ANALYSIS_WAIT_S) and at most ANALYSIS_SLOTS workers of the host are
    tied up by heavy uploads; the others stay free for everything else."""
    if (size_bytes is None or size_bytes <= current_app.config["HEAVY_UPLOAD_BYTES"]
            or "analysis_slot" in g):
        return
    try:
        g.analysis_slot = current_app.extensions["analysis_slots"].hold()
    except analysis_slots.SlotsBusy:
        raise ServiceUnavailable(
            f"the server is busy analysing other large recordings; retry in "
            f"{ANALYSIS_RETRY_AFTER_S} s", retry_after=ANALYSIS_RETRY_AFTER_S) from None


def release_analysis_slot(exc: BaseException | None = None) -> None:
    """At the end of a request that held a slot: give the memory the analysis freed back
    to the system, then the slot, so the next analysis starts on returned memory."""
    held = g.pop("analysis_slot", None)
    if held is not None:
        analysis_slots.release_memory()
        held.__exit__(None, None, None)


# -- pressure commands -------------------------------------------------------------
def occupant_changed(room: int, mrn: int) -> ValidationError:
    return ValidationError(str(storage.OccupantChanged(room, mrn)), "mrn", status=409)


def room_for_patient(room: str, mrn: int | None) -> tuple[int, int]:
    """The room number and its occupant's MRN; 409 when ``mrn`` (the patient the
    caller saw in the room) is given and no longer occupies it."""
    number, doc = existing_room(room)
    occupant = doc["patient"]["mrn"]
    if mrn is not None and mrn != occupant:
        raise occupant_changed(number, mrn)
    return number, occupant


def command_pressure(room: str, pressure_cmh2o: int, source: str,
                     mrn: int | None = None) -> dict:
    """Store a command for the patient ``mrn`` in ``room`` (None: the current
    occupant, for the older API, which cannot name the patient)."""
    number, mrn = room_for_patient(room, mrn)
    try:
        return get_storage().add_command(number, mrn, pressure_cmh2o, source,
                                         actor=actor())
    except storage.OccupantChanged:
        raise occupant_changed(number, mrn) from None


def latest_command(room: str, mrn: int | None = None) -> dict:
    """The latest command for the room's current patient (409 when it is not ``mrn``);
    404 when there is none."""
    number, mrn = room_for_patient(room, mrn)
    command = get_storage().latest_command(number, mrn)
    if command is None:
        abort(404, description=f"no pressure command for room {number}")
    return command


@api.put("/rooms/<room>/pressure")
@writes(MONITOR, ADMIN)
def set_pressure(room):
    body = json_body()
    validation.known_fields(body, {"pressure_cmh2o", "mrn", "source"})
    if body.get("pressure_cmh2o") is None:
        raise ValidationError("pressure_cmh2o is required", "pressure_cmh2o")
    value = validation.pressure(body["pressure_cmh2o"], "pressure_cmh2o")
    source = validation.text(body.get("source"), "source", validation.MAX_SOURCE_CHARS)
    if body.get("mrn") is None:  # a command names its patient: never whoever is there now
        raise ValidationError("mrn is required: the MRN of the patient the command is for "
                              "(as shown for the room)", "mrn")
    mrn = validation.positive_id(body["mrn"], "mrn")
    command = command_pressure(room, value, source or "monitor", mrn=mrn)
    return jsonify(command_out(command)), 201


@api.get("/rooms/<room>/pressure")
@reads(*ANYONE)
def get_pressure(room):
    """``?mrn=`` (a bedside station's own patient): 409 when another patient now
    occupies the room, so a station never applies another patient's command."""
    mrn = request.args.get("mrn")
    return jsonify(command_out(latest_command(
        room, None if mrn is None else validation.positive_id(mrn, "mrn"))))


@api.post("/rooms/<room>/pressure/<command_id>/applied")
@writes(STATION, ADMIN)
def mark_applied(room, command_id):
    number = room_param(room)
    command = get_storage().mark_applied(number, command_id, actor=actor())
    if command is None:
        abort(404, description=f"no command {command_id!r} for room {number}")
    if command.get("cancelled"):
        raise ValidationError(f"this command was cancelled ({command['cancelled']['reason']})"
                              "; do not apply it", "command_id", status=409)
    return jsonify(command_out(command))


@api.get("/rooms/<room>/pressure/history")
@reads(*ANYONE)
def pressure_history(room):
    number = room_param(room)
    limit = validation.query_int(request.args, "limit", DEFAULT_HISTORY_LIMIT, 1,
                                 MAX_RECORDS_LIMIT)
    with read_guard(limit):
        commands = get_storage().command_history(number, limit)
    return jsonify(commands=[command_out(c) for c in commands])


@api.get("/rooms/<room>/audit")
@reads(MONITOR, ADMIN, always=True)
def room_audit(room):
    """Who changed what in a room (pressure commands, acknowledgements, patient
    changes), newest first. Always needs a monitor or admin token when auth is on."""
    number = room_param(room)
    limit = validation.query_int(request.args, "limit", DEFAULT_AUDIT_LIMIT, 1,
                                 MAX_RECORDS_LIMIT)
    with read_guard(limit):
        entries = get_storage().audit_trail(number, limit)
    return jsonify(entries=[audit_out(d) for d in entries])


# -- people's sign-in sessions -------------------------------------------------------------
@api.post("/sessions")
@public
def sign_in():
    """A person signs in with user name and password: a session token for a shift."""
    settings = current_app.extensions["auth"]
    session = accounts.sign_in(get_storage(), json_body(), auth.current_caller().address,
                               settings.session_hours, accounts.throttle_of(current_app))
    return jsonify({**session, "expires_at": iso(session["expires_at"])}), 201


@api.delete("/sessions/current")
@writes(*ANYONE)
def sign_out():
    """End the sign-in session whose token is in the Authorization header."""
    caller = auth.current_caller()
    if caller.session is None:
        raise ValidationError("the Authorization header holds no sign-in session (an API "
                              "token is revoked in the tokens file, not here)")
    get_storage().end_session(caller.session)
    return Response(status=204)


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
    result = save_upload(clean, with_record_count=False)  # the answer is a sentence
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
    """One entry per room's current occupant, its lists built from its newest
    validation.LEGACY_MAX_RECORDS records (oldest first)."""
    with heavy_read():
        occupants = get_storage().occupants()
        lists = get_storage().record_lists([doc["patient"]["mrn"] for doc in occupants],
                                           validation.LEGACY_MAX_RECORDS)
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
        if storage.is_storage_full(exc):
            current_app.extensions["storage_full_at"] = time.monotonic()
            return error_response(507, "Insufficient Storage",
                                  "the database cannot store data: its disk is full. This "
                                  "request was not completed; send it again (an upload with "
                                  "the same upload_id) once space has been freed")
        return error_response(503, "Service Unavailable",
                              "the database is unavailable; try again shortly")

    @app.errorhandler(Exception)
    def on_unexpected(exc):  # a bug: logged with its traceback, never shown to the caller
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "Internal Server Error", "unexpected server error")


def can_write() -> bool:
    """Whether the database stores data: a small write probe (at most once per
    HEALTH_PROBE_INTERVAL_S per worker), and no write refused for lack of space in
    this worker within STORAGE_FULL_MEMORY_S."""
    now = time.monotonic()
    full_at = current_app.extensions.get("storage_full_at")
    if full_at is not None and now - full_at < STORAGE_FULL_MEMORY_S:
        return False
    probed = current_app.extensions.get("write_probe")
    if probed is None or now - probed[0] >= HEALTH_PROBE_INTERVAL_S:
        try:
            get_storage().write_probe()
            ok = True
        except storage.DatabaseError as exc:
            log.error("health write probe failed: %s", exc)
            ok = False
        probed = current_app.extensions["write_probe"] = (now, ok)
    return probed[1]


class ApiRequest(Request):
    """A request whose uploaded files go to a named temporary file (deleted when the
    request ends), so a recording is analysed from disk, never held in memory whole."""

    def _get_file_stream(self, total_content_length, content_type, filename=None,
                         content_length=None):
        return tempfile.NamedTemporaryFile("w+b", prefix="sleeplab-upload-")


def create_app(test_config: dict | None = None) -> Flask:
    """Application factory (flaskr style).

    ``test_config`` may set ``MONGO_CLIENT`` (e.g. a mongomock client) to bypass
    ``MONGODB_URI``.
    """
    app = Flask(__name__, static_folder=None)
    app.request_class = ApiRequest
    app.config.from_mapping(
        MONGODB_URI=os.environ.get("MONGODB_URI", storage.DEFAULT_URI),
        MAX_CONTENT_LENGTH=int(os.environ.get("API_MAX_JSON_BYTES", DEFAULT_MAX_JSON_BYTES)),
        MAX_UPLOAD_BYTES=int(os.environ.get("API_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES)),
        MAX_HEAVY_READS=int(os.environ.get("API_MAX_HEAVY_READS", DEFAULT_MAX_HEAVY_READS)),
        HEAVY_READ_TIMEOUT_S=float(os.environ.get("API_HEAVY_READ_TIMEOUT_S",
                                                  validation.DEFAULT_HEAVY_READ_TIMEOUT_S)),
        HEAVY_UPLOAD_BYTES=int(os.environ.get("API_HEAVY_UPLOAD_BYTES",
                                              DEFAULT_HEAVY_UPLOAD_BYTES)),
        ANALYSIS_SLOTS=int(os.environ.get("API_ANALYSIS_SLOTS",
                                          analysis_slots.default_slot_count())),
        ANALYSIS_WAIT_S=float(os.environ.get("API_ANALYSIS_WAIT_S", DEFAULT_ANALYSIS_WAIT_S)),
        ANALYSIS_LOCK_DIR=os.environ.get("API_ANALYSIS_LOCK_DIR",
                                         analysis_slots.default_lock_dir()),
    )
    app.json.sort_keys = False
    if test_config:
        app.config.update(test_config)
    for key, value in auth.config_from_env().items():
        app.config.setdefault(key, value)
    app.extensions["heavy_reads"] = threading.BoundedSemaphore(
        max(1, int(app.config["MAX_HEAVY_READS"])))
    app.extensions["analysis_slots"] = analysis_slots.AnalysisSlots(
        app.config["ANALYSIS_LOCK_DIR"], app.config["ANALYSIS_SLOTS"],
        app.config["ANALYSIS_WAIT_S"])
    app.teardown_request(release_analysis_slot)
    storage.init_app(app)
    auth.init_app(app)
    register_error_handlers(app)

    @app.get("/health")
    @public
    def health():
        if not get_storage().ping():
            return jsonify(status="unavailable", database="unreachable"), 503
        if not can_write():
            return jsonify(status="unavailable", database="cannot write",
                           message="the database answers but cannot store data (is its "
                                   "disk full?)"), 503
        return jsonify(status="ok", database="ok")

    app.register_blueprint(api, url_prefix="/api/v1")
    app.register_blueprint(api, url_prefix="/api", name="api_latest")
    app.register_blueprint(legacy)
    return app


def debug_requested(environ=os.environ) -> bool:
    """``python server.py`` runs Flask's debugger (which executes code typed into an
    error page) only when ``FLASK_DEBUG`` or ``API_DEBUG`` asks for it."""
    return any((environ.get(name) or "").strip().lower() in auth.TRUE_WORDS
               for name in DEBUG_ENV)


if __name__ == "__main__":
    create_app().run(host=os.environ.get("API_HOST", "127.0.0.1"),
                     port=int(os.environ.get("API_PORT", "5000")), debug=debug_requested())
