"""The OpenAPI 3 document of the REST API (served at ``/api/openapi.json``).

Paths are listed once for ``/api/v1`` and repeated for the ``/api`` alias; a test
checks that every Flask URL rule appears here and that the document is valid.
"""
from __future__ import annotations

import copy
import re
from functools import lru_cache

import validation as v
from auth import ADMIN, ANYONE

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
                       "applied": {"type": "boolean"}, "applied_at": _nullable(_TIME)},
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
        "type": "object", "required": ["pressure_cmh2o"], "additionalProperties": False,
        "properties": {"pressure_cmh2o": _PRESSURE,
                       "source": {"type": "string", "maxLength": v.MAX_SOURCE_CHARS}},
    },
    "AuditEntry": {
        "type": "object",
        "required": ["id", "room", "mrn", "at", "action", "who", "address", "old", "new"],
        "properties": {
            "id": _ID, "room": _POSITIVE, "mrn": _nullable(_POSITIVE), "at": _TIME,
            "action": {"type": "string", "enum": [
                "patient_created", "name_changed", "room_changed", "record_added",
                "pressure_commanded", "pressure_applied"]},
            "who": {"type": "object", "required": ["name", "role"], "properties": {
                "name": {"type": "string", "description": "token name, or 'anonymous' "
                                                          "when auth is off"},
                "role": _nullable({"type": "string", "enum": list(ANYONE)})}},
            "address": _nullable({"type": "string",
                                  "description": "the caller's IP address"}),
            "old": {"nullable": True, "description": "the value before (any JSON)"},
            "new": {"nullable": True, "description": "the value after (any JSON)"},
        },
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
_LIMIT = _param("limit", {"type": "integer", "minimum": 1, "maximum": 10000}, "query",
                "how many, newest first")
_BAD = {"400": _err("invalid input")}
_CONFLICT = {"409": _err("upload_id already used for another MRN, room or values "
                         "(field: upload_id)")}
_NOT_FOUND = {"404": _err("not found")}


def _op(summary: str, responses: dict, parameters=(), body: dict | None = None,
        tags=("api",)) -> dict:
    op = {"summary": summary, "tags": list(tags), "parameters": list(parameters),
          "responses": {**responses, "503": responses.get("503", _err("database unavailable"))}}
    if body is not None:
        op["requestBody"] = body
    return op


def _api_paths() -> dict:
    upload_body = {"required": True,
                   "content": {"application/json": {"schema": _ref("Upload")}}}
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
                            "415": _err("not JSON")}, body=upload_body),
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
            "200": {"description": "CSV download",
                    "content": {"text/csv": {"schema": {"type": "string"}}}},
            **_BAD, **_NOT_FOUND}, parameters=[_MRN])},
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
                "415": _err("not JSON")}, parameters=[_ROOM], body={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("PressureCommand")}}}),
            "get": _op("The room's latest pressure command (the station polls this)", {
                "200": _json(_ref("Command"), "latest command"), **_BAD,
                "404": _err("no command yet")}, parameters=[_ROOM]),
        },
        "/rooms/{room}/pressure/{command_id}/applied": {"post": _op(
            "The patient station confirms it applied a command", {
                "200": _json(_ref("Command"), "the command, applied"), **_BAD,
                **_NOT_FOUND},
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
            "415": _err("not JSON")}, tags=tags,
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
        "/get_all_patients": {"get": _op("Each room's patient with value lists", {
            "200": _json({"type": "array", "items": {"type": "object", "properties": {
                "room_number": _POSITIVE, "patient_mrn": _POSITIVE,
                "patient_name": {"type": "string"},
                "CPAP_pressure": {"type": "array", "items": {"type": "integer"}},
                "breath_rate": {"type": "array", "items": {"type": "number"}},
                "apnea_count": {"type": "array", "items": {"type": "integer"}},
                "timestamp": {"type": "array", "items": _TIME}}}}, "patients")},
            tags=tags)},
        "/health": {"get": _op("Liveness and database check", {
            "200": _json({"type": "object", "properties": {
                "status": {"type": "string"}, "database": {"type": "string"}}}, "healthy")},
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
                                "name its room); see x-access and security."},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {"bearerAuth": {
            "type": "http", "scheme": "bearer",
            "description": "API token (API_TOKEN or API_TOKENS_FILE; see "
                           "docs/README-security.md). Without configured tokens the API "
                           "is open."}}},
    }


#: How each kind of access (auth.py's view declarations) appears in the document:
#: a write always needs a token when auth is on; a read only when API_PROTECT_READS=1
#: (so the token is optional, ``{}``); a protected read always; a public one never.
_SECURITY = {"write": [{"bearerAuth": []}], "protected-read": [{"bearerAuth": []}],
             "read": [{}, {"bearerAuth": []}], "public": []}
_ACCESS_NOTE = {"write": "a token is needed whenever auth is on",
                "protected-read": "a token is needed whenever auth is on",
                "read": "a token is needed only when API_PROTECT_READS=1"}


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
            op["description"] = f"Roles: {', '.join(roles)}; {_ACCESS_NOTE[access]}."
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
