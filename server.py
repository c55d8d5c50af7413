"""Sleep Lab Monitor REST API (Flask).

Run with ``python server.py`` (Flask's development server on API_HOST:API_PORT; its
debugger and reloader only with ``FLASK_DEBUG=1`` or ``API_DEBUG=1``) or under
gunicorn: ``gunicorn 'server:create_app()'``. All state lives in MongoDB, so any
number of workers or hosts can serve at once.

Routes live on one blueprint mounted at ``/api/v1`` (canonical) and ``/api``
(alias of the latest version); the older API's routes are kept for existing
clients. Each route declares its request and answer bodies with the models of
``sleeplab.api.models`` (``@spec.validate`` and its arguments' annotations): SpecTree
validates the request before the route runs and serialises the model it returns, and
the OpenAPI document is generated from the same declarations. Route handlers call
``storage``; they never touch pymongo.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import tempfile
import threading
import time

from flask import Blueprint, Flask, Request, Response, abort, current_app, g, jsonify, request
from werkzeug.exceptions import (HTTPException, RequestEntityTooLarge, ServiceUnavailable,
                                 UnsupportedMediaType)

from sleeplab.api import accounts
from sleeplab.analysis import slots as analysis_slots
from sleeplab.api import auth
from sleeplab import live, storage
import validation
from sleeplab.api.auth import ANYONE, MONITOR, STATION, ADMIN, public, reads, writes
from sleeplab.api.csv_export import csv_text
from sleeplab.api import models, openapi
from sleeplab.api.models import iso
from sleeplab.api.openapi import CONFLICT, REPLAY_HEADER, answers, spec
from sleeplab.storage import get_storage
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
MAX_RECORDS_LIMIT = validation.MAX_LIST_LIMIT
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

api = Blueprint("api", __name__)


# -- request helpers -------------------------------------------------------------
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


def actor() -> dict:
    """Who is calling, as the audit trail records it."""
    caller = auth.current_caller()
    return {"name": caller.name, "role": caller.role, "address": caller.address,
            "user": caller.user, "via": caller.via}


def save_upload(upload: models.UploadRules, digest: str | None = None,
                with_record_count: bool = True):
    """Store a validated upload (storage's default digest: the one recipe,
    ``storage.upload_digest``, over the metrics and the image)."""
    auth.require_room(upload.room)  # a room-scoped station uploads for its room only
    try:
        return get_storage().upload(upload.mrn, upload.room, name=upload.name,
                                    metrics=upload.metrics(), image=upload.flow_image,
                                    actor=actor(), upload_id=upload.upload_id, digest=digest,
                                    with_record_count=with_record_count)
    except storage.UploadConflict as exc:
        raise ValidationError(str(exc), "upload_id", status=409) from None


def upload_answer(answer, result, created_status: int = 201):
    """Status 201 for a new patient (recording: a new record), 200 otherwise; a
    replayed upload_id is always a 200 with ``Idempotent-Replay: true``."""
    if result.replay:
        return answer, 200, {REPLAY_HEADER: "true"}
    return answer, created_status


def uploaded(model, result, **extra):
    return model.model_validate({"patient": result.patient, "record": result.record, **extra})


# -- patients --------------------------------------------------------------------
@api.post("/patients")
@writes(STATION, ADMIN)
@spec.validate(resp=answers(400, CONFLICT, (413, "body or image too large"), 415,
                            HTTP_201=(models.Uploaded, "new patient"),
                            HTTP_200=(models.Uploaded, "known patient updated, or a repeated "
                                                       "upload_id: the stored answer")))
def upload_patient(json: models.Upload):
    """Upload from a patient station (create or update a patient, add a record)"""
    result = save_upload(json)
    return upload_answer(uploaded(models.Uploaded, result), result,
                         201 if result.created else 200)


@api.get("/patients")
@reads(*WARD)
@spec.validate(resp=answers(400, HTTP_200=(models.PatientPage, "one page")))
def list_patients(query: models.PageQuery):
    """Patients, paginated, sorted by room then MRN"""
    docs, total = get_storage().list_patients(query.page, query.per_page)
    return models.PatientPage(patients=docs, page=query.page, per_page=query.per_page,
                              total=total)


@api.get("/patients/<mrn>")
@reads(*WARD)
@spec.validate(resp=answers(400, 404, HTTP_200=(models.PatientRecords, "the patient")))
def get_patient(mrn, query: models.RecordsQuery):
    """One patient with its records (newest first)"""
    number, doc = existing_patient(mrn)
    with read_guard(query.limit):
        records = get_storage().patient_records(number, query.limit)
    return models.PatientRecords(patient=doc, records=records)


@api.get("/patients/<mrn>/records")
@reads(*WARD)
@spec.validate(resp=answers(400, 404, HTTP_200=(models.RecordList, "records")))
def patient_records(mrn, query: models.RecordsQuery):
    """A patient's records, newest first"""
    number, _ = existing_patient(mrn)
    with read_guard(query.limit):
        records = get_storage().patient_records(number, query.limit)
    return models.RecordList(records=records)


CSV_COLUMNS = ("received_at", "mrn", "room", *models.METRIC_FIELDS, "has_image", "id")
#: Decimal places in the CSV: what the screens show (leakage in the station's 2 places).
CSV_DECIMALS = {"breath_rate_bpm": 1, "duration_s": 1, "ahi": 1, "leakage_l": 2,
                "apnea_index": 1, "tidal_volume_l": 3, "minute_ventilation_lpm": 2,
                "leak_rate_lpm": 2}


@api.get("/patients/<mrn>/records.csv")
@reads(*WARD)
@spec.validate(resp=answers(400, 404, HTTP_200=(None, (
    f"CSV download, newest first: at most `limit` (default and maximum "
    f"{MAX_CSV_RECORDS}) of the newest records"))))
def patient_records_csv(mrn, query: models.CsvQuery):
    """CSV export of a patient's records
    \f
    The newest ``limit`` records (at most MAX_CSV_RECORDS), newest first, written by
    :func:`csv_export.csv_text` (formula cells quoted, numbers rounded as on screen);
    ``X-Total-Count`` is the patient's number of records and ``X-Truncated`` says
    whether the file holds fewer."""
    number, patient = existing_patient(mrn)
    with read_guard(query.limit):
        records = get_storage().patient_records(number, query.limit)
    total = max(int(patient.get("record_count") or 0), len(records))
    rows = (models.dump(models.Record, doc) for doc in records)
    return Response(csv_text(rows, CSV_COLUMNS, CSV_DECIMALS), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="patient-{number}-records.csv"',
        "X-Total-Count": str(total), "X-Truncated": "true" if total > len(records) else "false"})


def existing_record(record_id: str) -> dict:
    doc = get_storage().get_record(record_id)
    if doc is None:
        abort(404, description=f"no record {record_id!r}")
    return doc


@api.get("/records/<record_id>")
@reads(*WARD)
@spec.validate(resp=answers(404, HTTP_200=(models.RecordDetail, "the record with its events")))
def get_record(record_id):
    """One record with its apnea and hypopnea events"""
    return models.RecordDetail.model_validate(existing_record(record_id))


@api.get("/records/<record_id>/image")
@reads(*WARD)
@spec.validate(resp=answers(404, HTTP_200=(None, "the image (immutable: long Cache-Control, "
                                                 "ETag)"),
                            HTTP_304=(None, "not modified (If-None-Match)")))
def record_image(record_id):
    """A record's flow image"""
    image = get_storage().get_image(record_id)
    if image is None:
        abort(404, description=f"no image for record {record_id!r}")
    response = Response(image.data, mimetype=image.content_type)
    response.headers["Cache-Control"] = IMAGE_CACHE_CONTROL
    response.set_etag(image.etag)
    return response.make_conditional(request)


#: The night report's formats (sleeplab.report.render_report) and their media types.
REPORT_TYPES = {"pdf": "application/pdf", "png": "image/png"}
#: A patient's night report holds at most this many of their records (a night has a few).
MAX_REPORT_RECORDS = 200


def report_segment(record: dict) -> dict:
    """A stored record as a report segment: it started ``duration_s`` before it was
    received (the station uploads a recording when it ends)."""
    received = storage.as_utc(record["received_at"])
    return dict(record, start=received - dt.timedelta(seconds=record.get("duration_s") or 0))


def report_response(records: list[dict], fmt: str, title: str, filename: str) -> Response:
    """A night report of ``records`` (oldest first) as a download. Rendering takes a
    fraction of a second of CPU: one per worker at a time (a heavy read)."""
    from sleeplab import report  # the plotting stack loads on first use

    with heavy_read():
        data = report.render_report([report_segment(r) for r in records], fmt=fmt, title=title)
    return Response(data, mimetype=REPORT_TYPES[fmt], headers={
        "Content-Disposition": f'attachment; filename="{filename}.{fmt}"'})


@api.get("/records/<record_id>/report.<any(pdf, png):fmt>")
@reads(*WARD)
@spec.validate(resp=answers(404, (503, "busy rendering other reports (Retry-After)"),
                            HTTP_200=(None, "the record's night report: one page, PDF or PNG")))
def record_report(record_id, fmt):
    """A record's night report (PDF or PNG)"""
    record = existing_record(record_id)
    return report_response([record], fmt, f"Night report — MRN {record['mrn']}, room "
                                          f"{record['room']}",
                           f"report-mrn{record['mrn']}-{record_id}")


@api.get("/patients/<mrn>/report.<any(pdf, png):fmt>")
@reads(*WARD)
@spec.validate(resp=answers(400, 404, (503, "busy rendering other reports (Retry-After)"),
                            HTTP_200=(None, "the patient's night: their records of the last "
                                            "`hours` before the newest, one page")))
def patient_report(mrn, fmt, query: models.ReportQuery):
    """A patient's night report over their latest records (PDF or PNG)"""
    number, patient = existing_patient(mrn)
    records = get_storage().night_records(number, dt.timedelta(hours=query.hours),
                                          MAX_REPORT_RECORDS)
    if not records:
        abort(404, description=f"patient {number} has no records")
    name = f" ({patient['name']})" if patient.get("name") else ""
    return report_response(records, fmt, f"Night report — MRN {number}{name}",
                           f"report-mrn{number}")


# -- rooms -----------------------------------------------------------------------
#: The serialised wall is reused while the database's rooms version is unchanged;
#: this bound only matters if a writer died between its room update and the bump.
ROOMS_CACHE_MAX_AGE_S = 5.0


@api.get("/rooms")
@reads(*WARD)
@spec.validate(resp=answers(HTTP_200=(models.RoomList, "the wall")))
def list_rooms():
    """Every room: occupant, latest record, latest command (no images)
    \f
    The monitor wall. Each worker keeps the serialised rooms with the database's
    rooms version read *before* them, and reuses them while the version is unchanged:
    one tiny read per request instead of 100 documents (still stateless: the version
    lives in the database, so every worker and host sees every change)."""
    store = get_storage()
    version = store.rooms_version()
    cached = current_app.extensions.get("rooms_cache")
    now = time.monotonic()
    if not cached or cached[0] != version or now - cached[2] > ROOMS_CACHE_MAX_AGE_S:
        rooms_json = ",".join(room_out(doc).model_dump_json() for doc in store.list_rooms())
        cached = (version, rooms_json, now)
        current_app.extensions["rooms_cache"] = cached
    body = f'{{"rooms":[{cached[1]}],"server_time":"{iso(storage.utc_now())}"}}'
    return Response(body, mimetype="application/json")


#: A room document as its answer (the current occupant's record and command only).
room_out = models.Room.model_validate


@api.get("/rooms/<room>")
@reads(*ANYONE)
@spec.validate(resp=answers(400, 404, HTTP_200=(models.Room, "the room")))
def get_room(room):
    """One room"""
    _, doc = existing_room(room)
    return room_out(doc)


@api.post("/rooms/<room>/recordings")
@writes(STATION, ADMIN)
@spec.validate(form=models.RecordingForm, resp=answers(
    400, CONFLICT, (413, "file larger than the upload limit"),
    (415, "not multipart/form-data"),
    (422, "the file cannot be analysed (message names the line)"),
    (503, "database unavailable, or busy analysing other large recordings (Retry-After: "
          "seconds to wait)"),
    HTTP_201=(models.RecordingUploaded, "analysed and stored"),
    HTTP_200=(models.RecordingUploaded, "a repeated upload_id: the stored record (the file "
                                        "analysed again for metrics), nothing new stored")))
def upload_recording(room):
    """Upload a raw CPAP recording; the server analyses it and stores the record with its flow plot
    \f
    The one upload pipeline with POST /patients: the form is checked once
    (models.RecordingForm), the analysis result becomes the record's fields through
    models.analysis_fields and is checked once (models.Analysed), and the record is
    stored by save_upload, the digest made by storage.upload_digest."""
    request.max_content_length = current_app.config["MAX_UPLOAD_BYTES"]
    number = room_param(room)
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType("send the recording as multipart/form-data with a "
                                   "'file' part")
    if (request.content_length or 0) > request.max_content_length:
        raise _too_large()  # before waiting for an analysis slot it would never use
    hold_analysis_slot(request.content_length)  # before a large body is read
    try:
        files = openapi.single_values(request.files)
    except RequestEntityTooLarge:  # a streamed body over the limit
        raise _too_large() from None
    # MRN and name errors first, before the analysis.
    form = models.RecordingForm.from_body({**files, **openapi.single_values(request.form)})

    import cpap_measurements  # the analysis stack (NumPy/SciPy/Matplotlib) loads on first use
    stream = form.file.stream
    hold_analysis_slot(stream.seek(0, os.SEEK_END))  # a large body sent without its length
    try:
        analysis, png, fields = _analyse_recording(cpap_measurements, stream)
    except cpap_measurements.CpapFileError as exc:
        raise ValidationError(str(exc), "file", status=422) from exc
    try:
        measured = models.Analysed.from_body(fields)
    except ValidationError as exc:
        raise ValidationError(f"the recording gives an implausible result: {exc.message}",
                              "file", status=422) from exc
    upload = models.Upload.model_construct(
        mrn=form.mrn, room=number, name=form.name, upload_id=form.upload_id,
        cpap_pressure_cmh2o=form.cpap_pressure_cmh2o, **dict(measured),
        flow_image=(png, "image/png"))
    # A repeated upload_id must repeat the same request: the file and the form values.
    digest = storage.upload_digest(form.mrn, number, form.name,
                                   {"cpap_pressure_cmh2o": form.cpap_pressure_cmh2o},
                                   _sha256(stream))
    saved = save_upload(upload, digest=digest)
    return upload_answer(uploaded(models.RecordingUploaded, saved, metrics=analysis), saved)


def _too_large() -> ValidationError:
    return ValidationError(f"the recording is larger than the upload limit of "
                           f"{request.max_content_length / 2**20:.3g} MB", "file", status=413)


def _sha256(stream) -> str:
    """SHA-256 of an uploaded file, read in blocks (never whole); after the analysis, so a
    refused file does not wait for it (~0.3 s for 100 MB)."""
    stream.seek(0)
    return hashlib.file_digest(stream, "sha256").hexdigest()


def _analyse_recording(cpap_measurements, stream) -> tuple[dict, bytes, dict]:
    """``result.to_dict()``, the flow plot and the record's fields
    (:func:`models.analysis_fields`) of an uploaded recording. Read from its temporary
    file on disk (:class:`ApiRequest`): the fast whole-file path, and the content is
    never held in memory. The large arrays die with this call."""
    stream.flush()
    path = getattr(stream, "name", None)
    if not isinstance(path, str):  # not a named file: read from the stream
        stream.seek(0)
        path = stream
    result = cpap_measurements.analyze(path)
    metrics = result.to_dict()
    return metrics, cpap_measurements.flow_plot_png(result), models.analysis_fields(result, metrics)


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
@spec.validate(resp=answers(
    400, 404, (409, "the room's occupant is not the patient named by mrn: nothing was stored"),
    415, HTTP_201=(models.Command, "the command")))
def set_pressure(room, json: models.PressureCommand):
    """Command a new CPAP pressure for a room"""
    # A command names its patient (json.mrn): never whoever is there now.
    command = command_pressure(room, json.pressure_cmh2o, json.source or "monitor",
                               mrn=json.mrn)
    return models.Command.model_validate(command), 201


@api.get("/rooms/<room>/pressure")
@reads(*ANYONE)
@spec.validate(resp=answers(400, (404, "no command yet"),
                            (409, "mrn given and another patient occupies the room"),
                            HTTP_200=(models.Command, "latest command")))
def get_pressure(room, query: models.StationQuery):
    """The room's latest pressure command (the station polls this)
    \f
    ``?mrn=`` (a bedside station's own patient): 409 when another patient now
    occupies the room, so a station never applies another patient's command."""
    return models.Command.model_validate(latest_command(room, query.mrn))


@api.post("/rooms/<room>/pressure/<command_id>/applied")
@writes(STATION, ADMIN)
@spec.validate(resp=answers(400, 404, (409, "the command was cancelled (its patient left the "
                                            "room); it must not be applied"),
                            HTTP_200=(models.Command, "the command, applied")))
def mark_applied(room, command_id):
    """The patient station confirms it applied a command"""
    number = room_param(room)
    command = get_storage().mark_applied(number, command_id, actor=actor())
    if command is None:
        abort(404, description=f"no command {command_id!r} for room {number}")
    if command.get("cancelled"):
        raise ValidationError(f"this command was cancelled ({command['cancelled']['reason']})"
                              "; do not apply it", "command_id", status=409)
    return models.Command.model_validate(command)


@api.get("/rooms/<room>/pressure/history")
@reads(*ANYONE)
@spec.validate(resp=answers(400, HTTP_200=(models.CommandList, "history")))
def pressure_history(room, query: models.HistoryQuery):
    """A room's commands, newest first"""
    number = room_param(room)
    with read_guard(query.limit):
        commands = get_storage().command_history(number, query.limit)
    return models.CommandList(commands=commands)


@api.get("/rooms/<room>/audit")
@reads(MONITOR, ADMIN, always=True)
@spec.validate(resp=answers(400, HTTP_200=(models.AuditList, "entries")))
def room_audit(room, query: models.AuditQuery):
    """A room's audit trail, newest first: who (token name and role), when, from which address, old and new value of every pressure command, acknowledgement and patient change
    \f
    Always needs a monitor or admin token when auth is on."""
    number = room_param(room)
    with read_guard(query.limit):
        entries = get_storage().audit_trail(number, query.limit)
    return models.AuditList(entries=entries)


# -- live nights (issue #14) ----------------------------------------------------------------
def _night_conflict(message: str, field: str = "sequence") -> ValidationError:
    return ValidationError(message, field, status=409)


def _start_night(store, number: int, chunk: models.StreamChunk) -> dict:
    """A night's first chunk: the patient is admitted to the room as an upload of their
    details would (the bedside says who is in the bed), and the night is stored."""
    if storage.occupant_mrn(store.get_room(number)) != chunk.mrn:
        store.upload(chunk.mrn, number, name=chunk.name, actor=actor(), with_record_count=False)
    return store.create_night(live.new_night(chunk.session_id, number, chunk.mrn,
                                             storage.utc_now()))


def _same_night(night: dict, number: int, chunk: models.StreamChunk) -> None:
    if night["room"] != number or night["mrn"] != chunk.mrn:
        # never names the other room or patient (the caller may not be allowed to know)
        raise _night_conflict(f"session_id {chunk.session_id!r} is another room's or "
                              "patient's night; start a new session", "session_id")


def _replayed(store, night: dict, number: int, chunk: models.StreamChunk, digest: str):
    """A chunk sent again (a retry): the same content answers the night as it is
    (stored once); other content under a used sequence number is a conflict."""
    kept = night["digests"].get(str(chunk.sequence))
    if kept is not None and kept != digest:
        raise _night_conflict(f"sequence {chunk.sequence} of this night was already stored "
                              f"with other samples; the next expected is "
                              f"{night['next_seq']}")
    store.save_chunk(chunk.session_id, chunk.sequence, number, chunk.samples,
                     storage.utc_now(), check_first=True)
    return models.LiveSummary.model_validate(live.summary(night)), 200, {REPLAY_HEADER: "true"}


@api.post("/rooms/<room>/stream")
@writes(STATION, ADMIN)
@spec.validate(resp=answers(
    400, CONFLICT, (413, "samples larger than a chunk may be"),
    (422, "the samples cannot be analysed (the message names the chunk's line)"),
    HTTP_201=(models.LiveSummary, "the chunk analysed and stored: the night so far"),
    HTTP_200=(models.LiveSummary, "the same chunk again (a retry): stored once, nothing "
                                  "new")))
def stream_chunk(room, json: models.StreamChunk):
    """Stream the next chunk of a live night into a room
    \f
    The state between chunks lives in the night's document, so any worker takes the next
    chunk; the chunk is applied by one update conditioned on its sequence being the next
    (:meth:`storage.Storage.apply_chunk`): two workers racing on one chunk cannot both
    count it, and breaths and events spanning chunks are counted once."""
    number = room_param(room)
    auth.require_room(number)
    chunk = json
    store = get_storage()
    digest = storage.fingerprint(chunk.pressure_cmh2o, chunk.end, chunk.samples)
    night = store.get_night(chunk.session_id)
    if night is None:
        if chunk.sequence != 0:
            raise _night_conflict(f"no night {chunk.session_id!r} yet: its first chunk is "
                                  "sequence 0")
        night = _start_night(store, number, chunk)
    _same_night(night, number, chunk)
    if chunk.sequence < night["next_seq"]:
        return _replayed(store, night, number, chunk, digest)
    if chunk.sequence > night["next_seq"]:
        raise _night_conflict(f"sequence {chunk.sequence} is ahead: the next expected is "
                              f"{night['next_seq']}; send the missing chunks first")
    if night.get("ended"):
        raise _night_conflict("this night has ended: start a new session", "session_id")
    if storage.occupant_mrn(store.get_room(number)) != chunk.mrn:
        raise occupant_changed(number, chunk.mrn)
    from sleeplab.analysis import incremental  # the analysis stack loads on first use

    try:
        state, update = incremental.feed(night["state"], chunk.samples, end=chunk.end)
    except incremental.CpapFileError as exc:
        raise ValidationError(f"chunk {chunk.sequence}: {exc}", "samples", status=422) from exc
    now = storage.utc_now()
    changes = live.chunk_changes(night, state, update, chunk.pressure_cmh2o, chunk.sequence,
                                 digest, now, chunk.end,
                                 has_header=chunk.samples.lstrip()[:1].isalpha())
    if not store.apply_chunk(chunk.session_id, chunk.sequence, changes):
        # another worker applied this sequence first: this is its retry
        return _replayed(store, store.get_night(chunk.session_id), number, chunk, digest)
    store.save_chunk(chunk.session_id, chunk.sequence, number, chunk.samples, now)
    summary = live.summary({**night, **changes})
    store.set_room_live(number, chunk.mrn, summary)
    return models.LiveSummary.model_validate(summary), 201


def existing_night(room: str) -> dict:
    number, _ = existing_room(room)
    night = get_storage().room_night(number)
    if night is None:
        abort(404, description=f"room {number} has no live night for its patient")
    return night


@api.get("/rooms/<room>/live")
@reads(*WARD)
@spec.validate(resp=answers(400, 404, HTTP_200=(models.LiveNight, "the running night")))
def room_live(room):
    """The room's running night: metrics so far, events, the last minute of flow"""
    night = existing_night(room)
    return models.LiveNight.model_validate({**live.summary(night), "events": night["events"],
                                            "trace": live.trace_points(night)})


@api.get("/rooms/<room>/titration")
@reads(*WARD)
@spec.validate(resp=answers(400, 404, HTTP_200=(models.Titration, "one row per pressure")))
def room_titration(room):
    """The titration table of the room's night: one row per pressure level in force"""
    night = existing_night(room)
    return models.Titration(session_id=night["_id"], room=night["room"], mrn=night["mrn"],
                            rows=live.titration_rows(night))


TITRATION_COLUMNS = tuple(models.TitrationRow.model_fields)
TITRATION_DECIMALS = {"from_s": 1, "to_s": 1, "minutes": 1, "breath_rate_bpm": 1, "ahi": 1,
                      "tidal_volume_l": 2, "leak_rate_lpm": 1}


@api.get("/rooms/<room>/titration.csv")
@reads(*WARD)
@spec.validate(resp=answers(400, 404, HTTP_200=(None, "CSV download of the titration table")))
def room_titration_csv(room):
    """The titration table as CSV"""
    night = existing_night(room)
    rows = (models.TitrationRow.model_validate(row).model_dump(mode="json")
            for row in live.titration_rows(night))
    return Response(csv_text(rows, TITRATION_COLUMNS, TITRATION_DECIMALS), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="room-'
                                                    f'{night["room"]}-titration.csv"'})


@api.get("/nights/<session_id>/recording.txt")
@reads(*WARD)
@spec.validate(resp=answers(400, 404, HTTP_200=(None, "the night's samples as one recording "
                                                      "file (re-analyse it offline)")))
def night_recording(session_id):
    """A streamed night as one recording file"""
    night = get_storage().get_night(validation.session_id(session_id, "session_id"))
    if night is None:
        abort(404, description=f"no night {session_id!r}")
    store = get_storage()

    def lines():
        if not night.get("has_header"):
            yield live.RECORDING_HEADER
        for text in store.night_samples(night["_id"]):
            yield text if text.endswith("\n") or not text else text + "\n"

    return Response(lines(), mimetype="text/plain", headers={
        "Content-Disposition": f'attachment; filename="night-{night["_id"]}.txt"'})


# -- people's sign-in sessions -------------------------------------------------------------
@api.post("/sessions")
@public
@spec.validate(resp=answers(
    400, (401, "unknown user name, wrong password or disabled account (one message for all)"),
    415, (429, "too many failed sign-ins for this user name or address (Retry-After: "
               "seconds)"), HTTP_201=(models.Session, "signed in")))
def sign_in(json: models.SignIn):
    """A person signs in (user name and password): a session token, valid for API_SESSION_HOURS (default 12)"""
    settings = current_app.extensions["auth"]
    session = accounts.sign_in(get_storage(), json.username, json.password,
                               auth.current_caller().address, settings.session_hours,
                               accounts.throttle_of(current_app))
    return models.Session.model_validate(session), 201


@api.delete("/sessions/current")
@writes(*ANYONE)
@spec.validate(resp=answers((400, "the Authorization header holds no sign-in session"),
                            HTTP_204=(None, "signed out")))
def sign_out():
    """Sign out: end the session whose token is sent"""
    caller = auth.current_caller()
    if caller.session is None:
        raise ValidationError("the Authorization header holds no sign-in session (an API "
                              "token is revoked in the tokens file, not here)")
    get_storage().end_session(caller.session)
    return Response(status=204)


@api.get("/openapi.json")
@public
@spec.validate(resp=answers(HTTP_200=(models.OpenApiDocument, "OpenAPI 3.1 document")))
def openapi_document():
    """This document (generated from sleeplab/api/models.py)"""
    cached = current_app.extensions.get("openapi")
    if cached is None:
        cached = current_app.extensions["openapi"] = openapi.document(current_app)
    return jsonify(cached)


# -- compatibility routes (the older API) -------------------------------------------
legacy = Blueprint("legacy", __name__)


@legacy.post("/add_patient")
@writes(STATION, ADMIN)
@spec.validate(tags=["compatibility"], resp=answers(400, CONFLICT, 415, HTTP_200=(None, (
    "'New patient created' or 'Patient successfully updated' (a repeated upload_id: "
    "'Patient successfully updated' with Idempotent-Replay: true, nothing stored)"))))
def legacy_add_patient(json: models.LegacyUpload):
    """Older clients' upload"""
    result = save_upload(json, with_record_count=False)  # the answer is a sentence
    message = "New patient created" if result.created else "Patient successfully updated"
    return upload_answer(Response(message, mimetype="text/plain"), result, 200)


@legacy.get("/CPAP_query/<room_number>")
@reads(*ANYONE)
@spec.validate(tags=["compatibility"], resp=answers(
    400, (404, "no command"), HTTP_200=(models.CommandedPressure, "pressure (cmH2O)")))
def legacy_cpap_query(room_number):
    """Commanded pressure as a JSON number"""
    validation.positive_id(room_number, "room_number")
    return jsonify(int(latest_command(room_number)["pressure_cmh2o"]))


@legacy.get("/new_cpap_pressure/<room_number>/<value>")
@writes(MONITOR, ADMIN)
@spec.validate(tags=["compatibility"], resp=answers(400, 404,
                                                    HTTP_200=(None, "confirmation")))
def legacy_new_cpap_pressure(room_number, value):
    """Command a pressure"""
    number = validation.positive_id(room_number, "room_number")
    pressure_cmh2o = validation.pressure(value, "value")
    command_pressure(room_number, pressure_cmh2o, "legacy")
    return Response(f"CPAP pressure for room {number} set to {pressure_cmh2o} cmH2O",
                    status=200, mimetype="text/plain")


@legacy.get("/get_all_patients")
@reads(*WARD)
@spec.validate(tags=["compatibility"], resp=answers(
    HTTP_200=(models.LegacyPatients, "patients")))
def legacy_get_all_patients():
    """Each room's patient with value lists of its newest records (oldest first)
    \f
    One entry per room's current occupant, its lists built from its newest
    validation.LEGACY_MAX_RECORDS records (oldest first)."""
    with heavy_read():
        occupants = get_storage().occupants()
        lists = get_storage().record_lists([doc["patient"]["mrn"] for doc in occupants],
                                           validation.LEGACY_MAX_RECORDS)
    rows = []
    for doc in occupants:
        records = lists.get(doc["patient"]["mrn"], [])
        rows.append(models.LegacyPatientRow(
            room_number=doc["_id"], patient_mrn=doc["patient"]["mrn"],
            patient_name=doc["patient"].get("name") or "",
            CPAP_pressure=[r["cpap_pressure_cmh2o"] for r in records],
            breath_rate=[r["breath_rate_bpm"] for r in records],
            apnea_count=[r["apnea_count"] for r in records],
            timestamp=[r["received_at"] for r in records]))
    return models.LegacyPatients(rows)


# -- errors ----------------------------------------------------------------------------
def error_response(status: int, error: str, message: str, field: str | None = None,
                   response: Response | None = None) -> Response:
    response = response or Response()
    response.status_code = status
    response.set_data(models.Error(status=status, error=error, message=message,
                                       field=field or None).model_dump_json())
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


@public
@spec.validate(tags=["operations"], resp=answers(
    HTTP_200=(models.Health, "healthy"),
    HTTP_503=(models.Health, "the database is unreachable, or answers but cannot store data "
                             "(a write probe failed, or an upload was refused for a full "
                             "disk in the last 60 s)")))
def health():
    """Liveness and database check (it can read and write)"""
    if not get_storage().ping():
        return models.Health(status="unavailable", database="unreachable"), 503
    if not can_write():
        return models.Health(status="unavailable", database="cannot write",
                             message="the database answers but cannot store data (is its "
                                     "disk full?)"), 503
    return models.Health(status="ok", database="ok")


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
    register_routes(app)
    return app


def register_routes(app: Flask) -> None:
    """Every route: the API at /api/v1 and its /api alias, the older API, /health."""
    app.add_url_rule("/health", view_func=health, methods=["GET"])
    app.register_blueprint(api, url_prefix="/api/v1")
    app.register_blueprint(api, url_prefix="/api", name="api_latest")
    app.register_blueprint(legacy)


def debug_requested(environ=os.environ) -> bool:
    """``python server.py`` runs Flask's debugger (which executes code typed into an
    error page) only when ``FLASK_DEBUG`` or ``API_DEBUG`` asks for it."""
    return any((environ.get(name) or "").strip().lower() in auth.TRUE_WORDS
               for name in DEBUG_ENV)


if __name__ == "__main__":
    create_app().run(host=os.environ.get("API_HOST", "127.0.0.1"),
                     port=int(os.environ.get("API_PORT", "5000")), debug=debug_requested())
