"""Request validation and the OpenAPI document, both generated from
:mod:`sleeplab.api.models` by SpecTree.

Each route declares its bodies once: ``@spec.validate(resp=answers(...))`` and the
annotations of its arguments (``json: models.Upload``, ``query: models.RecordsQuery``).
SpecTree validates the request with those models before the route runs (through
:class:`StrictFlaskPlugin`: the API's strict JSON parsing, the first error in the one
JSON error shape) and serialises the model a route returns; :func:`document` builds the
OpenAPI 3.1 document from the app's URL rules and those declarations. Only what the
models cannot say is written here: the API's description, the bearer scheme, each
operation's access (from ``auth``'s decorators), the non-JSON answers and the upload
advice.
"""
from __future__ import annotations

import copy
import json
import re

from flask import Flask, request
from spectree import Response, SpecTree
from spectree.plugins.base import Context
from spectree.plugins.flask_plugin import FlaskPlugin
from werkzeug.exceptions import UnsupportedMediaType

import validation as v
from sleeplab.api.auth import ADMIN, VIA_HEADER, VIA_SCREENS
from sleeplab.api import models

VERSION = "1.0.0"
#: Set (to "true") on the answer to an upload whose upload_id was seen before.
REPLAY_HEADER = "Idempotent-Replay"


def json_body() -> dict:
    """The request's JSON object: 415 for another content type, 400 when malformed or
    when an object names a key twice (``{"mrn": 1, "mrn": 2}`` must not have one of
    them silently chosen)."""
    if not request.is_json:
        raise UnsupportedMediaType("the request body must be JSON (Content-Type: "
                                   "application/json)")
    try:
        body = json.loads(request.get_data().decode("utf-8"),
                          object_pairs_hook=v.unique_keys)
    except v.ValidationError:  # a duplicate key
        raise
    except UnicodeDecodeError:
        raise v.ValidationError("the request body is not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise v.ValidationError(f"the request body is not valid JSON: {exc.msg} at line "
                                f"{exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # 5000-digit numbers, nesting too deep
        raise v.ValidationError(f"the request body is not acceptable JSON: {exc}") from None
    return v.object_body(body)


def single_values(parts) -> dict:
    """A form's fields (or a query string) as a dict; a name given twice is a 400 naming
    it (a script sending ``-F mrn=30 -F mrn=31`` must not have one silently chosen)."""
    for name in parts:
        if len(parts.getlist(name)) > 1:
            raise v.ValidationError(f"the form field {name!r} is given more than once", name)
    return dict(parts.items())


class StrictFlaskPlugin(FlaskPlugin):
    """SpecTree's Flask plugin with the API's own request handling: a JSON body is
    parsed strictly (:func:`json_body`) and validated by ``Model.from_body``, which raises
    the API's ValidationError for its first error (the one JSON error shape); a form is
    left to its route, which validates it (``models.RecordingForm``) only after taking an
    analysis slot for a large recording. An answer is a model instance that is
    serialised, or a response that is passed on: never parsed again to be checked."""

    def request_validation(self, req, query, json, form, headers, cookies):
        req.context = Context(
            # A query parameter given twice: its first value, as Flask's args.get gives.
            query.from_body(req.args.to_dict()) if query else None,
            json.from_body(json_body()) if json else None,
            None, None, None)

    def validate_response(self, resp, resp_model, skip_validation, force_resp_serialize):
        return super().validate_response(resp, resp_model, True, force_resp_serialize)


spec = SpecTree(
    backend=StrictFlaskPlugin, mode="strict", title="Sleep Lab Monitor API", version=VERSION,
    validation_error_status=400, validation_error_model=models.Error,
    naming_strategy=lambda model: model.__name__,
    nested_naming_strategy=lambda _parent, child: child,
    description=(
        "CPAP monitoring: patient stations upload, monitoring stations read and command "
        "pressure. /api is an alias of /api/v1. Errors: {status, error, message, field?}. "
        "Access: bearer tokens with roles station, monitor and admin (x-roles on each "
        "operation; a station token may name its room), or a person's session token from "
        "POST /api/v1/sessions; see x-access and security. Reads need a token too unless "
        "API_PROTECT_READS=0. A Host header that is not in API_TRUSTED_HOSTS (default: "
        "localhost, 127.0.0.1, ::1) is a 400. Lists are bounded: limit at most "
        f"{v.MAX_LIST_LIMIT}, per_page at most {models.MAX_PER_PAGE}, the CSV export the "
        f"newest {v.MAX_LIST_LIMIT} records, /get_all_patients the newest "
        f"{v.LEGACY_MAX_RECORDS} per patient. {models.HEAVY_READ_NOTE} The schemas are "
        "generated from sleeplab/api/models.py."))

#: What each error status means when an operation does not say more.
ERRORS = {
    400: "invalid input", 404: "not found", 409: "conflict", 413: "body too large",
    415: "not JSON", 422: "the input cannot be processed",
    503: "database unavailable, or (a heavy read) the worker is busy with another or the "
         "read took too long: try again after Retry-After",
    507: "the database's disk is full: nothing was stored"}
CONFLICT = (409, "upload_id already used for another MRN, room or values (field: upload_id)")


def answers(*errors: int | tuple[int, str], **codes) -> Response:
    """A route's answers: ``HTTP_200=Model`` (or ``(Model, description)``) and its error
    statuses (``404`` or ``(404, description)``), all in the one error shape; 503 and 507
    (database) on every operation."""
    for error in (*errors, 503, 507):
        status, description = error if isinstance(error, tuple) else (error, ERRORS[error])
        codes.setdefault(f"HTTP_{status}", (models.Error, description))
    return Response(**codes)


UPLOAD_ADVICE = (
    "Send an upload_id with every upload: a fresh UUID4 per new upload, and the same one "
    "on every retry of it. Without one, a retry after a lost answer (a timeout, a worker "
    "restart, a dropped connection) stores the upload a second time: 4 duplicates in 885 "
    "uploads when workers were killed. Example: "
    "ID=$(python3 -c 'import uuid; print(uuid.uuid4())'); "
    "curl --retry 5 --retry-all-errors -H 'Content-Type: application/json' -d "
    "'{\"mrn\": 12, \"room\": 3, \"upload_id\": \"'$ID'\"}' $API/api/v1/patients "
    "(curl resends the same body, so every retry carries the same key).")
_REPLAY_HEADERS = {REPLAY_HEADER: {
    "description": "'true' when the upload_id was seen before: the stored answer, "
                   "nothing new written", "schema": {"type": "string", "enum": ["true"]}}}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
#: Per view function: the upload advice, and the answers that are not JSON models.
EXTRA = {
    "upload_patient": {"description": UPLOAD_ADVICE, "headers": {"200": _REPLAY_HEADERS}},
    "upload_recording": {
        "description": UPLOAD_ADVICE + " Each form field and the file part may be given "
                                       "once (a repeated one is a 400 naming it).",
        "headers": {"200": _REPLAY_HEADERS}},
    "legacy_add_patient": {"description": UPLOAD_ADVICE, "headers": {"200": _REPLAY_HEADERS},
                           "content": {"200": _TEXT}},
    "legacy_new_cpap_pressure": {"content": {"200": _TEXT}},
    "record_image": {"content": {"200": {"image/png": _BINARY, "image/jpeg": _BINARY}}},
    "patient_records_csv": {
        "content": {"200": {"text/csv": {"schema": {"type": "string"}}}},
        "headers": {"200": {
            "X-Total-Count": {"description": "the patient's number of records",
                              "schema": {"type": "integer"}},
            "X-Truncated": {"description": "'true' when the file holds fewer records than "
                                           "the patient has",
                            "schema": {"type": "string", "enum": ["true", "false"]}}}}},
}

BEARER = {"type": "http", "scheme": "bearer",
          "description": "API token (API_TOKEN or API_TOKENS_FILE; see "
                         "docs/README-security.md) or a person's session token (POST "
                         "/api/v1/sessions). Without configured tokens the API is open."}
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
_ERROR_REF = {"$ref": "#/components/schemas/Error"}


def flask_path(rule: str) -> str:
    """A Flask URL rule in OpenAPI spelling (``/rooms/<room>`` -> ``/rooms/{room}``)."""
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": _ERROR_REF}}}


def _complete(op: dict, path: str, method: str, view) -> None:
    """What the models cannot say about one operation: its id, its path parameters'
    schemas (models.PathParams), its access, its non-JSON answers and extra notes."""
    alias = "latest_" if path.startswith("/api/") and not path.startswith("/api/v1") else ""
    slug = path.strip("/").replace("/", "_").replace("{", "").replace("}", "")
    op["operationId"] = f"{alias}{method}_{slug}".replace(".", "_")
    params = models.PathParams.model_json_schema()["properties"]
    for param in op["parameters"]:
        if param["in"] == "path" and param["name"] in params:
            schema = dict(params[param["name"]])
            param["description"] = schema.pop("description", "")
            schema.pop("title", None)
            param["schema"] = schema
    extra = EXTRA.get(getattr(view, "__name__", ""), {})
    for status, content in extra.get("content", {}).items():
        op["responses"][status]["content"] = content
    for status, headers in extra.get("headers", {}).items():
        op["responses"][status]["headers"] = headers
    access = getattr(view, "access", "write")
    roles = list(getattr(view, "allowed_roles", (ADMIN,)))
    op["security"] = _SECURITY[access]
    op["x-access"] = access
    notes = [extra.get("description")]
    if access != "public":
        op["x-roles"] = roles
        if access == "write":
            op["parameters"].append(_VIA)
        notes.insert(0, f"Roles: {', '.join(roles)}; {_ACCESS_NOTE[access]}.")
        op["responses"]["401"] = _error("missing or invalid token (WWW-Authenticate: Bearer)")
        op["responses"]["403"] = _error("the token's role (or station room) may not do this")
    op["description"] = " ".join(filter(None, [op.get("description"), *notes]))


def build(app: Flask) -> dict:
    """The OpenAPI document of ``app``'s routes (each decorated with ``spec.validate``)."""
    with app.app_context():
        # SpecTree builds the document once (every app has the same routes) and keeps it.
        doc = copy.deepcopy(spec.spec)
    doc.pop("security", None)  # per operation instead
    doc["components"]["securitySchemes"] = {"bearerAuth": BEARER}
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        item = doc["paths"].get(flask_path(rule.rule), {})
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if method.lower() in item:
                _complete(item[method.lower()], flask_path(rule.rule), method.lower(), view)
    return doc


def document(app: Flask | None = None) -> dict:
    """The OpenAPI document (of the API's routes when no ``app`` is given)."""
    if app is None:
        import server  # the routes; imported here as server imports this module

        app = Flask("sleeplab-openapi")
        server.register_routes(app)
    return build(app)
