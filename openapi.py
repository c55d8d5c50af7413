"""The OpenAPI 3 document of the REST API (served at ``/api/openapi.json``).

Paths are listed once for ``/api/v1`` and repeated for the ``/api`` alias; a test
checks that every Flask URL rule appears here and that the document is valid.
"""
from __future__ import annotations

import copy
import re
from functools import lru_cache

from sleeplab.api import accounts
import validation as v
from sleeplab.api.auth import ADMIN, ANYONE, VIA_HEADER, VIA_SCREENS

VERSION = "1.0.0"

_TIME = {"type": "string", "format": "date-time", "example": "2026-11-21T01:02:03.456Z"}
_ID = {"type": "string", "pattern": "^[0-9a-f]{24}$"}
_POSITIVE = {"type": "integer", "minimum": 1, "maximum": v.MAX_ID}
_PRESSURE = {"type": "integer", "minimum": v.PRESSURE_MIN_CMH2O,
             "maximum": v.PRESSURE_MAX_CMH2O, "description": "cmH2O"}


_UPLOAD_ID = {"type": "string", "pattern": f"^{v.UPLOAD_ID_PATTERN}$",
              "minLength": 8, "maxLength": 64, "example": "0b9e7c2e-5f4a-4d0b-9a51-3c2f1e8d7a64",
              "description": "Optional idempotency key chosen by the client (e.g. a UUID4), "
                             "fresh for each new upload and reused for its retries. The "
                             "first request with a key stores the upload; a later one with "
                             "the same key and the same values answers the same record "
                             "(200, header Idempotent-Replay: true) and stores nothing; "
                             "the key with another MRN, room or values is a 409."}
#: What every upload operation says about retries (docs/README-api.md has the same advice).
UPLOAD_ADVICE = (
    "Send an upload_id with every upload: a fresh UUID4 per new upload, and the same one "
    "on every retry of it. Without one, a retry after a lost answer (a timeout, a worker "
    "restart, a dropped connection) stores the upload a second time: 4 duplicates in 885 "
    "uploads when workers were killed. Example: "
    "ID=$(python3 -c 'import uuid; print(uuid.uuid4())'); "
    "curl --retry 5 --retry-all-errors -H 'Content-Type: application/json' -d "
    "'{\"mrn\": 12, \"room\": 3, \"upload_id\": \"'$ID'\"}' $API/api/v1/patients "
    "(curl resends the same body, so every retry carries the same key).")
_HEAVY = (f"A read of more than {v.HEAVY_READ_ROWS} rows is a heavy read: each API "
          "worker serves one at a time (API_MAX_HEAVY_READS) and stops it after "
          f"API_HEAVY_READ_TIMEOUT_S ({v.DEFAULT_HEAVY_READ_TIMEOUT_S:g} s); otherwise 503 "
          "with Retry-After.")
_REPLAY_HEADERS = {"Idempotent-Replay": {
    "description": "'true' when the upload_id was seen before: the stored answer, "
                   "nothing new written", "schema": {"type": "string", "enum": ["true"]}}}


def _nullable(schema: dict) -> dict:
    return {**schema, "nullable": True}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


SCHEMAS = {
    "Error": {
        "type": "object", "required": ["status", "error", "message"],
        "properties": {"status": {"type": "integer"}, "error": {"type": "string"},
                       "message": {"type": "string"},
                       "field": {"type": "string", "description": "the input at fault"}},
    },
    "Patient": {
        "type": "object",
        "required": ["mrn", "name", "room", "created_at", "updated_at", "record_count"],
        "properties": {"mrn": _POSITIVE, "name": _nullable({"type": "string"}),
                       "room": _POSITIVE, "created_at": _TIME, "updated_at": _TIME,
                       "record_count": {"type": "integer", "minimum": 0}},
    },
    "PatientWithLatest": {"allOf": [_ref("Patient"), {
        "type": "object", "properties": {"latest": _nullable(_ref("Record"))}}]},
    "Record": {
        "type": "object",
        "required": ["id", "mrn", "room", "received_at", "cpap_pressure_cmh2o",
                     "breath_rate_bpm", "apnea_count", "has_image"],
        "properties": {
            "id": _ID, "mrn": _POSITIVE, "room": _POSITIVE, "received_at": _TIME,
            "cpap_pressure_cmh2o": _PRESSURE,
            "breath_rate_bpm": {"type": "number", "minimum": 0,
                                "maximum": v.BREATH_RATE_MAX_BPM},
            "apnea_count": {"type": "integer", "minimum": 0},
            "breaths": _nullable({"type": "integer", "minimum": 0}),
            "duration_s": _nullable({"type": "number", "minimum": 0}),
            "ahi": _nullable({"type": "number", "minimum": 0,
                              "description": "apnea events per hour"}),
            "leakage_l": _nullable({"type": "number", "description": "litres"}),
            "has_image": {"type": "boolean"},
        },
    },
    "Command": {
        "type": "object",
        "required": ["id", "room", "pressure_cmh2o", "commanded_at", "source", "applied",
                     "applied_at"],
        "properties": {"id": _ID, "room": _POSITIVE,
                       "mrn": {**_POSITIVE, "description": "the patient it was commanded for"},
                       "pressure_cmh2o": _PRESSURE,
                       "commanded_at": _TIME, "source": {"type": "string"},
                       "applied": {"type": "boolean"}, "applied_at": _nullable(_TIME),
                       "cancelled": _nullable({
                           "type": "object", "required": ["at", "reason"],
                           "description": "set when the patient left the room before the "
                                          "command was applied; never applied then",
                           "properties": {"at": _TIME, "reason": {"type": "string"}}})},
    },
    "Room": {
        "type": "object", "required": ["room", "patient", "latest", "command"],
        "properties": {
            "room": _POSITIVE,
            "patient": _nullable({"type": "object", "properties": {
                "mrn": _POSITIVE, "name": _nullable({"type": "string"}),
                "since": _TIME}}),
            "latest": _nullable(_ref("Record")),
            "command": _nullable(_ref("Command")),
        },
    },
    "Upload": {
        "type": "object", "required": ["mrn", "room"], "additionalProperties": False,
        "description": "cpap_pressure_cmh2o, breath_rate_bpm and apnea_count come together "
                       "or not at all; flow_image and the richer metrics only with them. "
                       "Numeric strings are accepted for numbers.",
        "properties": {
            "mrn": _POSITIVE, "room": _POSITIVE,
            "name": _nullable({"type": "string", "maxLength": v.MAX_NAME_CHARS}),
            "upload_id": _UPLOAD_ID,
            "cpap_pressure_cmh2o": _PRESSURE,
            "breath_rate_bpm": {"type": "number", "minimum": 0,
                                "maximum": v.BREATH_RATE_MAX_BPM},
            "apnea_count": {"type": "integer", "minimum": 0},
            "flow_image": {"type": "string", "format": "byte",
                           "description": f"base64 PNG or JPEG, at most "
                                          f"{v.MAX_IMAGE_BYTES // 2**20} MB decoded"},
            "breaths": _nullable({"type": "integer", "minimum": 0}),
            "duration_s": _nullable({"type": "number", "minimum": 0}),
            "ahi": _nullable({"type": "number", "minimum": 0}),
            "leakage_l": _nullable({"type": "number"}),
        },
    },
    "PressureCommand": {
        "type": "object", "required": ["pressure_cmh2o", "mrn"], "additionalProperties": False,
        "properties": {"pressure_cmh2o": _PRESSURE,
                       "mrn": {**_POSITIVE, "description": "the patient the command is for, "
                               "as the caller saw them in the room; 409 when another "
                               "patient occupies the room now"},
                       "source": {"type": "string", "maxLength": v.MAX_SOURCE_CHARS}},
    },
    "AuditEntry": {
        "type": "object",
        "required": ["id", "room", "mrn", "at", "action", "who", "address", "old", "new"],
        "properties": {
            "id": _ID, "room": _POSITIVE, "mrn": _nullable(_POSITIVE), "at": _TIME,
            "action": {"type": "string", "enum": [
                "patient_created", "name_changed", "room_changed", "record_added",
                "pressure_commanded", "pressure_applied", "pressure_cancelled"]},
            "who": {"type": "object", "required": ["name", "role"], "properties": {
                "name": {"type": "string", "description": "token name, a signed-in "
                                                          "person's display name, or "
                                                          "'anonymous' when auth is off"},
                "role": _nullable({"type": "string", "enum": list(ANYONE)}),
                "user": {"type": "string", "description": "a signed-in person's user name "
                                                          "(absent for tokens)"},
                "via": {"type": "string", "enum": list(VIA_SCREENS),
                        "description": f"the UI screen that acted (header {VIA_HEADER}; "
                                       "absent when not sent)"}}},
            "address": _nullable({"type": "string",
                                  "description": "the caller's IP address"}),
            "old": {"nullable": True, "description": "the value before (any JSON)"},
            "new": {"nullable": True, "description": "the value after (any JSON)"},
        },
    },
    "SignIn": {
        "type": "object", "required": ["username", "password"], "additionalProperties": False,
        "properties": {"username": {"type": "string", "minLength": 1,
                                    "maxLength": accounts.MAX_USERNAME_CHARS},
                       "password": {"type": "string", "minLength": 1,
                                    "maxLength": accounts.MAX_PASSWORD_CHARS,
                                    "format": "password"}},
    },
    "Session": {
        "type": "object", "required": ["token", "expires_at", "username", "name", "role"],
        "properties": {"token": {"type": "string", "description": "send as 'Authorization: "
                                                                  "Bearer <token>'"},
                       "expires_at": _TIME, "username": {"type": "string"},
                       "name": {"type": "string"},
                       "role": {"type": "string", "enum": list(ANYONE)}},
    },
    "LegacyPatient": {
        "type": "object", "required": ["patient_mrn", "room_number"],
        "description": "Older clients. Empty string = not given; numbers may be strings.",
        "properties": {**{k: {"oneOf": [{"type": "string"}, {"type": "number"}]}
                          for k in ("patient_name", "patient_mrn", "room_number",
                                    "CPAP_pressure", "breath_rate", "apnea_count",
                                    "flow_image")},
                       "upload_id": _UPLOAD_ID},
    },
}


def _json(schema: dict, description: str, headers: dict | None = None) -> dict:
    out = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _err(description: str) -> dict:
    return _json(_ref("Error"), description)


def _param(name: str, schema: dict, where: str = "path", description: str = "") -> dict:
    return {"name": name, "in": where, "required": where == "path", "schema": schema,
            "description": description}


_ROOM = _param("room", _POSITIVE, description="room number")
_MRN = _param("mrn", _POSITIVE, description="medical record number")
_LIMIT = _param("limit", {"type": "integer", "minimum": 1, "maximum": v.MAX_LIST_LIMIT},
                "query", f"how many, newest first (at most {v.MAX_LIST_LIMIT}). {_HEAVY}")
_BAD = {"400": _err("invalid input")}
_CONFLICT = {"409": _err("upload_id already used for another MRN, room or values "
                         "(field: upload_id)")}
_NOT_FOUND = {"404": _err("not found")}


def _op(summary: str, responses: dict, parameters=(), body: dict | None = None,
        tags=("api",), description: str | None = None) -> dict:
    op = {"summary": summary, "tags": list(tags), "parameters": list(parameters),
          "responses": {**responses,
                        "503": responses.get("503", _err(
                            "database unavailable, or (a heavy read) the worker is busy "
                            "with another or the read took too long: try again after "
                            "Retry-After")),
                        "507": _err("the database's disk is full: nothing was stored")}}
    if body is not None:
        op["requestBody"] = body
    if description:
        op["description"] = description
    return op


def _api_paths() -> dict:
    upload_body = {"required": True, "content": {"application/json": {
        "schema": _ref("Upload"),
        "example": {"mrn": 12, "room": 3, "name": "Ada Lovelace", "cpap_pressure_cmh2o": 10,
                    "breath_rate_bpm": 14.2, "apnea_count": 1,
                    "upload_id": "0b9e7c2e-5f4a-4d0b-9a51-3c2f1e8d7a64"}}}}
    uploaded = {"type": "object", "properties": {"patient": _ref("Patient"),
                                                 "record": _nullable(_ref("Record"))}}
    records = {"type": "object", "properties": {"records": {"type": "array",
                                                            "items": _ref("Record")}}}
    return {
        "/patients": {
            "post": _op("Upload from a patient station (create or update a patient, add a "
                        "record)", {
                            "201": _json(uploaded, "new patient"),
                            "200": _json(uploaded, "known patient updated, or a repeated "
                                                   "upload_id: the stored answer",
                                         _REPLAY_HEADERS),
                            **_BAD, **_CONFLICT, "413": _err("body or image too large"),
                            "415": _err("not JSON")}, body=upload_body,
                        description=UPLOAD_ADVICE),
            "get": _op("Patients, paginated, sorted by room then MRN", {
                "200": _json({"type": "object", "properties": {
                    "patients": {"type": "array", "items": _ref("PatientWithLatest")},
                    "page": {"type": "integer"}, "per_page": {"type": "integer"},
                    "total": {"type": "integer"}}}, "one page"), **_BAD},
                parameters=[_param("page", {"type": "integer", "minimum": 1}, "query"),
                            _param("per_page", {"type": "integer", "minimum": 1,
                                                "maximum": 500}, "query")]),
        },
        "/patients/{mrn}": {"get": _op("One patient with its records (newest first)", {
            "200": _json({"type": "object", "properties": {
                "patient": _ref("Patient"),
                "records": {"type": "array", "items": _ref("Record")}}}, "the patient"),
            **_BAD, **_NOT_FOUND}, parameters=[_MRN, _LIMIT])},
        "/patients/{mrn}/records": {"get": _op("A patient's records, newest first", {
            "200": _json(records, "records"), **_BAD, **_NOT_FOUND},
            parameters=[_MRN, _LIMIT])},
        "/patients/{mrn}/records.csv": {"get": _op("CSV export of a patient's records", {
            "200": {"description": "CSV download, newest first: at most `limit` (default and "
                                   f"maximum {v.MAX_LIST_LIMIT}) of the newest records",
                    "headers": {
                        "X-Total-Count": {"description": "the patient's number of records",
                                          "schema": {"type": "integer"}},
                        "X-Truncated": {"description": "'true' when the file holds fewer "
                                                       "records than the patient has",
                                        "schema": {"type": "string",
                                                   "enum": ["true", "false"]}}},
                    "content": {"text/csv": {"schema": {"type": "string"}}}},
            **_BAD, **_NOT_FOUND}, parameters=[_MRN, _LIMIT])},
        "/records/{record_id}/image": {"get": _op("A record's flow image", {
            "200": {"description": "the image (immutable: long Cache-Control, ETag)",
                    "content": {"image/png": {"schema": {"type": "string",
                                                         "format": "binary"}},
                                "image/jpeg": {"schema": {"type": "string",
                                                          "format": "binary"}}}},
            "304": {"description": "not modified (If-None-Match)"}, **_NOT_FOUND},
            parameters=[_param("record_id", {"type": "string"})])},
        "/rooms": {"get": _op("Every room: occupant, latest record, latest command (no "
                              "images)", {"200": _json({"type": "object", "properties": {
                                  "rooms": {"type": "array", "items": _ref("Room")},
                                  "server_time": _TIME}}, "the wall")})},
        "/rooms/{room}": {"get": _op("One room", {"200": _json(_ref("Room"), "the room"),
                                                  **_BAD, **_NOT_FOUND},
                                     parameters=[_ROOM])},
        "/rooms/{room}/recordings": {"post": _op(
            "Upload a raw CPAP recording; the server analyses it and stores the record "
            "with its flow plot", {
                "201": _json({"type": "object", "properties": {
                    "patient": _ref("Patient"), "record": _ref("Record"),
                    "metrics": {"type": "object",
                                "description": "cpap_measurements result.to_dict()"}}},
                    "analysed and stored"),
                "200": _json({"type": "object", "properties": {
                    "patient": _ref("Patient"), "record": _ref("Record"),
                    "metrics": {"type": "object"}}},
                    "a repeated upload_id: the stored record (the file analysed again "
                    "for metrics), nothing new stored", _REPLAY_HEADERS),
                **_BAD, **_CONFLICT, "413": _err("file larger than the upload limit"),
                "415": _err("not multipart/form-data"),
                "422": _err("the file cannot be analysed (message names the line)"),
                "503": _err("database unavailable, or busy analysing other large recordings "
                            "(Retry-After: seconds to wait)")},
            description=UPLOAD_ADVICE + " Each form field and the file part may be given "
                                        "once (a repeated one is a 400 naming it).",
            parameters=[_ROOM], body={"required": True, "content": {"multipart/form-data": {
                "schema": {"type": "object", "required": ["file", "mrn", "cpap_pressure_cmh2o"],
                           "properties": {"file": {"type": "string", "format": "binary"},
                                          "mrn": _POSITIVE, "cpap_pressure_cmh2o": _PRESSURE,
                                          "name": {"type": "string",
                                                   "maxLength": v.MAX_NAME_CHARS},
                                          "upload_id": _UPLOAD_ID}}}}})},
        "/rooms/{room}/pressure": {
            "put": _op("Command a new CPAP pressure for a room", {
                "201": _json(_ref("Command"), "the command"), **_BAD, **_NOT_FOUND,
                "409": _err("the room's occupant is not the patient named by mrn: "
                            "nothing was stored"),
                "415": _err("not JSON")}, parameters=[_ROOM], body={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("PressureCommand")}}}),
            "get": _op("The room's latest pressure command (the station polls this)", {
                "200": _json(_ref("Command"), "latest command"), **_BAD,
                "404": _err("no command yet"),
                "409": _err("mrn given and another patient occupies the room")},
                parameters=[_ROOM, _param("mrn", _POSITIVE, "query",
                                          "the bedside station's own patient (recommended)")]),
        },
        "/rooms/{room}/pressure/{command_id}/applied": {"post": _op(
            "The patient station confirms it applied a command", {
                "200": _json(_ref("Command"), "the command, applied"), **_BAD,
                **_NOT_FOUND, "409": _err("the command was cancelled (its patient left "
                                          "the room); it must not be applied")},
            parameters=[_ROOM, _param("command_id", {"type": "string"})])},
        "/rooms/{room}/pressure/history": {"get": _op("A room's commands, newest first", {
            "200": _json({"type": "object", "properties": {
                "commands": {"type": "array", "items": _ref("Command")}}}, "history"),
            **_BAD}, parameters=[_ROOM, _LIMIT])},
        "/rooms/{room}/audit": {"get": _op(
            "A room's audit trail, newest first: who (token name and role), when, from "
            "which address, old and new value of every pressure command, acknowledgement "
            "and patient change", {
                "200": _json({"type": "object", "properties": {
                    "entries": {"type": "array", "items": _ref("AuditEntry")}}}, "entries"),
                **_BAD}, parameters=[_ROOM, _LIMIT])},
        "/sessions": {"post": _op(
            "A person signs in (user name and password): a session token, valid for "
            "API_SESSION_HOURS (default 12)", {
                "201": _json(_ref("Session"), "signed in"), **_BAD,
                "401": _err("unknown user name, wrong password or disabled account (one "
                            "message for all)"),
                "415": _err("not JSON"),
                "429": {**_err("too many failed sign-ins for this user name or address"),
                        "headers": {"Retry-After": {"schema": {"type": "integer"},
                                                    "description": "seconds"}}}},
            body={"required": True,
                  "content": {"application/json": {"schema": _ref("SignIn")}}})},
        "/sessions/current": {"delete": _op("Sign out: end the session whose token is sent", {
            "204": {"description": "signed out"},
            "400": _err("the Authorization header holds no sign-in session")})},
        "/openapi.json": {"get": _op("This document", {
            "200": _json({"type": "object"}, "OpenAPI 3 document")})},
    }


def _legacy_paths() -> dict:
    tags = ("compatibility",)
    text = {"text/plain": {"schema": {"type": "string"}}}
    return {
        "/add_patient": {"post": _op("Older clients' upload", {
            "200": {"description": "'New patient created' or 'Patient successfully updated' "
                                   "(a repeated upload_id: 'Patient successfully updated' "
                                   "with Idempotent-Replay: true, nothing stored)",
                    "content": text, "headers": _REPLAY_HEADERS}, **_BAD, **_CONFLICT,
            "415": _err("not JSON")}, tags=tags, description=UPLOAD_ADVICE,
            body={"required": True, "content": {"application/json": {
                "schema": _ref("LegacyPatient")}}})},
        "/CPAP_query/{room_number}": {"get": _op("Commanded pressure as a JSON number", {
            "200": _json({"type": "integer"}, "pressure (cmH2O)"), **_BAD,
            "404": _err("no command")}, tags=tags,
            parameters=[_param("room_number", _POSITIVE)])},
        "/new_cpap_pressure/{room_number}/{value}": {"get": _op("Command a pressure", {
            "200": {"description": "confirmation", "content": text}, **_BAD, **_NOT_FOUND},
            tags=tags, parameters=[_param("room_number", _POSITIVE),
                                   _param("value", _PRESSURE)])},
        "/get_all_patients": {"get": _op(
            f"Each room's patient with value lists of its newest {v.LEGACY_MAX_RECORDS} "
            "records (oldest first)", {
            "200": _json({"type": "array", "items": {"type": "object", "properties": {
                "room_number": _POSITIVE, "patient_mrn": _POSITIVE,
                "patient_name": {"type": "string"},
                "CPAP_pressure": {"type": "array", "items": {"type": "integer"}},
                "breath_rate": {"type": "array", "items": {"type": "number"}},
                "apnea_count": {"type": "array", "items": {"type": "integer"}},
                "timestamp": {"type": "array", "items": _TIME}}}}, "patients")},
            tags=tags, description=(
                f"Each list holds at most the patient's {v.LEGACY_MAX_RECORDS} most recent "
                "records (the full history: GET /api/v1/patients/{mrn}/records). "
                + _HEAVY))},
        "/health": {"get": _op("Liveness and database check (it can read and write)", {
            "200": _json({"type": "object", "properties": {
                "status": {"type": "string", "enum": ["ok"]},
                "database": {"type": "string", "enum": ["ok"]}}}, "healthy"),
            "503": _json({"type": "object", "required": ["status", "database"], "properties": {
                "status": {"type": "string", "enum": ["unavailable"]},
                "database": {"type": "string", "enum": ["unreachable", "cannot write"]},
                "message": {"type": "string"}}},
                "the database is unreachable, or answers but cannot store data (a write "
                "probe failed, or an upload was refused for a full disk in the last 60 s)")},
            tags=("operations",))},
    }


@lru_cache(maxsize=1)
def _document() -> dict:
    paths = {}
    for prefix in ("/api/v1", "/api"):
        for path, item in _api_paths().items():
            paths[prefix + path] = copy.deepcopy(item)
    paths.update(_legacy_paths())
    for path, item in paths.items():
        for method, op in item.items():
            alias = "latest_" if path.startswith("/api/") and not path.startswith("/api/v1") \
                else ""
            slug = path.strip("/").replace("/", "_").replace("{", "").replace("}", "")
            op["operationId"] = f"{alias}{method}_{slug}".replace(".", "_")
    return {
        "openapi": "3.0.3",
        "info": {"title": "Sleep Lab Monitor API", "version": VERSION,
                 "description": "CPAP monitoring: patient stations upload, monitoring "
                                "stations read and command pressure. /api is an alias of "
                                "/api/v1. Errors: {status, error, message, field?}. "
                                "Access: bearer tokens with roles station, monitor and "
                                "admin (x-roles on each operation; a station token may "
                                "name its room), or a person's session token from POST "
                                "/api/v1/sessions; see x-access and security. Reads need a "
                                "token too unless API_PROTECT_READS=0. A Host header that "
                                "is not in API_TRUSTED_HOSTS (default: localhost, "
                                "127.0.0.1, ::1) is a 400. Lists are bounded: limit at most "
                                f"{v.MAX_LIST_LIMIT}, per_page at most 500, the CSV export "
                                f"the newest {v.MAX_LIST_LIMIT} records, /get_all_patients "
                                "the newest "
                                f"{v.LEGACY_MAX_RECORDS} per patient. {_HEAVY}"},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {"bearerAuth": {
            "type": "http", "scheme": "bearer",
            "description": "API token (API_TOKEN or API_TOKENS_FILE; see "
                           "docs/README-security.md) or a person's session token (POST "
                           "/api/v1/sessions). Without configured tokens the API is "
                           "open."}}},
    }


#: How each kind of access (auth.py's view declarations) appears in the document:
#: a write always needs a token when auth is on; a read too unless API_PROTECT_READS=0
#: (so the token is optional, ``{}``); a protected read always; a public one never.
_SECURITY = {"write": [{"bearerAuth": []}], "protected-read": [{"bearerAuth": []}],
             "read": [{}, {"bearerAuth": []}], "public": []}
_VIA = {"name": VIA_HEADER, "in": "header", "required": False,
        "schema": {"type": "string", "enum": list(VIA_SCREENS)},
        "description": "the UI screen acting (recorded in the audit trail)"}
_ACCESS_NOTE = {"write": "a token is needed whenever auth is on",
                "protected-read": "a token is needed whenever auth is on",
                "read": "a token is needed unless API_PROTECT_READS=0"}


def flask_path(rule: str) -> str:
    """A Flask URL rule in OpenAPI spelling (``/rooms/<room>`` -> ``/rooms/{room}``)."""
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)


def add_security(doc: dict, app) -> None:
    """Describe each operation's access from its view's declaration (one source of
    truth: the ``auth.public/reads/writes`` decorators on the routes)."""
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        item = doc["paths"].get(flask_path(rule.rule), {})
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            op = item.get(method.lower())
            if op is None or view is None:
                continue
            access = getattr(view, "access", "write")
            roles = list(getattr(view, "allowed_roles", (ADMIN,)))
            op["security"] = _SECURITY[access]
            op["x-access"] = access
            if access == "public":
                continue
            op["x-roles"] = roles
            if access == "write" and _VIA not in op["parameters"]:
                op["parameters"].append(_VIA)
            roles_note = f"Roles: {', '.join(roles)}; {_ACCESS_NOTE[access]}."
            op["description"] = " ".join(filter(None, [roles_note, op.get("description")]))
            op["responses"]["401"] = _err("missing or invalid token "
                                          "(WWW-Authenticate: Bearer)")
            op["responses"]["403"] = _err("the token's role (or station room) may not "
                                          "do this")


def document(app=None) -> dict:
    """The OpenAPI document; with ``app``, each operation's security and roles."""
    doc = copy.deepcopy(_document())
    if app is not None:
        add_security(doc, app)
    return doc
