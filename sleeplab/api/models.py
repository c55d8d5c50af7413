"""Every request and response body of the REST API, declared once (pydantic v2).

From these models come the request validation (``sleeplab.api.openapi``'s SpecTree
plugin hands each JSON body and query string to :meth:`RequestModel.from_body`), the
JSON answers (a route returns a model; its fields, aliases and serialisers shape the
JSON from the database documents) and the OpenAPI document at ``/api/openapi.json``.

Input values are checked by ``validation.py``'s checkers, run as pydantic "before"
validators (:func:`checked`): they keep the field-specific messages, accept numeric
strings, and refuse ``true`` as a number (plain pydantic would take it as 1). The JSON
schema of each field comes from the same bounds (``validation.PRESSURE_MIN_CMH2O``...).
A refused body raises ``validation.ValidationError`` for its first error in the order
the API has always reported them (:func:`first_error`), so every 4xx keeps the one
JSON error shape ``{status, error, message, field?}`` (:class:`Error`).
"""
from __future__ import annotations

import datetime as dt
import functools
import math
from typing import Annotated, Any, Callable, ClassVar, Literal

import pydantic
from pydantic import (AliasChoices, AliasPath, BaseModel, BeforeValidator, ConfigDict, Field,
                      PlainSerializer, RootModel, ValidationInfo, WithJsonSchema, computed_field,
                      model_validator)

from sleeplab.api import accounts
from sleeplab import storage
import validation as v
from sleeplab.api.auth import ANYONE, VIA_HEADER, VIA_SCREENS

#: What the document says about reads that may return many rows (server.heavy_read).
HEAVY_READ_NOTE = (f"A read of more than {v.HEAVY_READ_ROWS} rows is a heavy read: each API "
                   "worker serves one at a time (API_MAX_HEAVY_READS) and stops it after "
                   f"API_HEAVY_READ_TIMEOUT_S ({v.DEFAULT_HEAVY_READ_TIMEOUT_S:g} s); "
                   "otherwise 503 with Retry-After.")
#: An example time as the API writes it (ISO 8601 UTC, milliseconds, ``Z``).
TIME_EXAMPLE = "2026-11-21T01:02:03.456Z"
UPLOAD_ID_EXAMPLE = "0b9e7c2e-5f4a-4d0b-9a51-3c2f1e8d7a64"


# -- checked input values ---------------------------------------------------------------
def _field_name(info: ValidationInfo) -> str:
    """The name the caller used for the field (an alias, e.g. the older API's
    ``patient_mrn``, when :meth:`RequestModel.from_body` passes the model's aliases)."""
    names = (info.context or {}).get("names") or {}
    return names.get(info.field_name, info.field_name)


def checked(check: Callable[[Any, str], Any]) -> BeforeValidator:
    """Validate a field with one of validation.py's checkers, ``check(value, field)``:
    its clean value, or its ValidationError (kept whole: message, field, status)."""
    return BeforeValidator(lambda value, info: check(value, _field_name(info)))


def _required(base, check):
    return Annotated[base, checked(check)]


def _optional(base, check):
    """Optional: ``None`` and ``""`` mean "not given" (:class:`EmptyIsUnset`
    drops them before the checker runs)."""
    return Annotated[base | None, checked(check)]


# The values as stored and answered (JSON schema + the bounds of the answers) ...
PositiveIdValue = Annotated[int, Field(ge=1, le=v.MAX_ID)]
PressureValue = Annotated[int, Field(ge=v.PRESSURE_MIN_CMH2O, le=v.PRESSURE_MAX_CMH2O,
                                     description="cmH2O")]
BreathRateValue = Annotated[float, Field(ge=0, le=v.BREATH_RATE_MAX_BPM,
                                         description="breaths per minute")]
CountValue = Annotated[int, Field(ge=0, le=v.MAX_COUNT)]
DurationValue = Annotated[float, Field(ge=0, le=v.MAX_DURATION_S, description="seconds")]
AhiValue = Annotated[float, Field(ge=0, le=v.MAX_AHI,
                                  description="apneas and hypopneas per hour of recording "
                                              "(records without hypopnea_count: apneas only)")]
ApneaIndexValue = Annotated[float, Field(ge=0, le=v.MAX_AHI, description="apneas per hour")]
TidalVolumeValue = Annotated[float, Field(ge=0, le=v.MAX_TIDAL_VOLUME_L,
                                          description="litres: median inspired volume of a "
                                                      "breath")]
MinuteVentilationValue = Annotated[float, Field(ge=0, le=v.MAX_MINUTE_VENTILATION_LPM,
                                                description="litres per minute inspired")]
LeakRateValue = Annotated[float, Field(ge=-v.MAX_LEAK_RATE_LPM, le=v.MAX_LEAK_RATE_LPM,
                                       description="litres per minute: mean net flow")]
LeakageValue = Annotated[float, Field(ge=-v.MAX_LEAKAGE_L, le=v.MAX_LEAKAGE_L,
                                      description="litres")]
NameValue = Annotated[str, Field(max_length=v.MAX_NAME_CHARS)]
SourceValue = Annotated[str, Field(max_length=v.MAX_SOURCE_CHARS)]
UploadIdValue = Annotated[str, Field(
    pattern=f"^{v.UPLOAD_ID_PATTERN}$", min_length=8, max_length=64,
    examples=[UPLOAD_ID_EXAMPLE],
    description="Optional idempotency key chosen by the client (e.g. a UUID4), fresh for "
                "each new upload and reused for its retries. The first request with a key "
                "stores the upload; a later one with the same key and the same values "
                "answers the same record (200, header Idempotent-Replay: true) and stores "
                "nothing; the key with another MRN, room or values is a 409.")]
ImageValue = Annotated[tuple[bytes, str], WithJsonSchema({
    "type": "string", "format": "byte",
    "description": f"base64 PNG or JPEG, at most {v.MAX_IMAGE_BYTES // 2**20} MB decoded"})]


def _text(max_chars: int):
    return lambda value, field: v.text(value, field, max_chars)


def _number(maximum: float, what: str, minimum: float = 0.0):
    return lambda value, field: v.number(value, field, minimum, maximum, what)


check_duration = _number(v.MAX_DURATION_S, f"a finite number from 0 to {v.MAX_DURATION_S:g} s")
check_ahi = _number(v.MAX_AHI, f"a finite number from 0 to {v.MAX_AHI:g} events per hour")
check_leakage = _number(v.MAX_LEAKAGE_L, "a finite number of litres", -v.MAX_LEAKAGE_L)
check_apnea_index = _number(v.MAX_AHI, f"a finite number from 0 to {v.MAX_AHI:g} apneas per hour")
check_tidal_volume = _number(v.MAX_TIDAL_VOLUME_L,
                             f"a finite number from 0 to {v.MAX_TIDAL_VOLUME_L:g} litres")
check_minute_ventilation = _number(
    v.MAX_MINUTE_VENTILATION_LPM,
    f"a finite number from 0 to {v.MAX_MINUTE_VENTILATION_LPM:g} litres per minute")
check_leak_rate = _number(
    v.MAX_LEAK_RATE_LPM,
    f"a finite number from -{v.MAX_LEAK_RATE_LPM:g} to {v.MAX_LEAK_RATE_LPM:g} litres per minute",
    -v.MAX_LEAK_RATE_LPM)


class Event(BaseModel):
    """An apnea or hypopnea of a recording (times in seconds of the recording)."""

    type: Literal[v.EVENT_TYPES]  # type: ignore[valid-type]
    start_s: DurationValue
    end_s: DurationValue


SeriesValues = list[float | None]


class NightSeries(BaseModel):
    """A recording's series for the night report (``sleeplab.report.night_series``):
    one value per ``step_s`` (a minute) from ``minute_start_s`` (s of recording), and a
    min/max envelope of the flow. ``null`` where a step has no value."""

    step_s: float = Field(ge=v.SERIES_STEP_RANGE_S[0], le=v.SERIES_STEP_RANGE_S[1])
    minute_start_s: SeriesValues = Field(max_length=v.MAX_SERIES_STEPS)
    breath_rate_bpm: SeriesValues = Field(max_length=v.MAX_SERIES_STEPS)
    tidal_volume_l: SeriesValues = Field(max_length=v.MAX_SERIES_STEPS)
    minute_ventilation_lpm: SeriesValues = Field(max_length=v.MAX_SERIES_STEPS)
    leak_rate_lpm: SeriesValues = Field(max_length=v.MAX_SERIES_STEPS)
    flow_t_s: SeriesValues = Field(max_length=v.MAX_SERIES_FLOW_BINS)
    flow_min_lpm: SeriesValues = Field(max_length=v.MAX_SERIES_FLOW_BINS)
    flow_max_lpm: SeriesValues = Field(max_length=v.MAX_SERIES_FLOW_BINS)

# ... and as given in a request: each checked once, by its checker.
PositiveId = _required(PositiveIdValue, v.positive_id)
OptionalPositiveId = _optional(PositiveIdValue, v.positive_id)
Pressure = _required(PressureValue, v.pressure)
OptionalPressure = _optional(PressureValue, v.pressure)
OptionalBreathRate = _optional(BreathRateValue, v.breath_rate)
OptionalCount = _optional(CountValue, v.count)
OptionalDuration = _optional(DurationValue, check_duration)
OptionalAhi = _optional(AhiValue, check_ahi)
OptionalLeakage = _optional(LeakageValue, check_leakage)
OptionalApneaIndex = _optional(ApneaIndexValue, check_apnea_index)
OptionalTidalVolume = _optional(TidalVolumeValue, check_tidal_volume)
OptionalMinuteVentilation = _optional(MinuteVentilationValue, check_minute_ventilation)
OptionalLeakRate = _optional(LeakRateValue, check_leak_rate)
OptionalEvents = _optional(list[Event], v.events)
SessionId = _required(UploadIdValue, v.session_id)
Sequence = _required(CountValue, v.count)
ChunkSamples = _required(Annotated[str, Field(max_length=v.MAX_CHUNK_CHARS)], v.chunk_samples)
Flag = _required(bool, v.boolean)
OptionalSeries = _optional(NightSeries, v.night_series)
OptionalName = _optional(NameValue, _text(v.MAX_NAME_CHARS))
OptionalSource = _optional(SourceValue, _text(v.MAX_SOURCE_CHARS))
OptionalUploadId = _optional(UploadIdValue, v.upload_id)
OptionalImage = _optional(ImageValue, v.image_base64)


def _query_int(minimum: int, maximum: int):
    return lambda value, field: v.integer(value, field, minimum, maximum)


# -- errors ---------------------------------------------------------------------------------
class Error(BaseModel):
    """Every error answer (4xx and 5xx)."""

    status: int
    error: str
    message: str
    field: str | None = Field(None, exclude_if=lambda value: value is None,
                              description="the input at fault")


def _describe(error: dict, model) -> v.ValidationError:
    """One pydantic error as the API's ValidationError."""
    found = (error.get("ctx") or {}).get("error")
    if isinstance(found, v.ValidationError):  # a checker's (or a model rule's) own error
        return found
    field = str(error["loc"][0]) if error["loc"] else None
    if error["type"] == "extra_forbidden":
        return v.ValidationError(f"unknown field {field!r}", field)
    if error["type"] == "missing":
        return v.ValidationError(model.REQUIRED_MESSAGES.get(field, f"{field} is required"),
                                 field)
    return v.ValidationError(f"{field}: {error['msg']}" if field else error["msg"], field)


def _position(model: type[BaseModel], error: dict) -> int:
    """Where the error's field is declared in ``model`` (a model-wide error: first)."""
    if not error["loc"]:
        return -1
    aliases = [field.alias or name for name, field in model.model_fields.items()]
    return aliases.index(error["loc"][0]) if error["loc"][0] in aliases else len(aliases)


def _rank(model, error: dict) -> tuple[int, int]:
    if error["type"] == "extra_forbidden":
        return 0, _position(model, error)
    return (1 if error["type"] == "missing" and model.MISSING_FIRST else 2), \
        _position(model, error)


def first_error(exc: pydantic.ValidationError, model) -> v.ValidationError:
    """The error the API reports for a refused body: an unknown field first, then (an
    upload) a missing required field, then the first field in the model's declaration
    order that is missing or wrong (the models declare their fields in the order the API
    has always checked them)."""
    return _describe(min(exc.errors(), key=lambda error: _rank(model, error)), model)


# -- requests -----------------------------------------------------------------------------
class RequestModel(BaseModel):
    """A request body or query string: unknown fields refused."""

    model_config = ConfigDict(extra="forbid")
    #: The message for a missing field when "<field> is required" does not say enough.
    REQUIRED_MESSAGES: ClassVar[dict[str, str]] = {}
    #: Whether a missing required field is reported before any wrong value.
    MISSING_FIRST: ClassVar[bool] = False

    @classmethod
    def from_body(cls, body: dict):
        """The validated model, or ``validation.ValidationError`` for the first error;
        messages name the fields as the caller spelt them (aliases)."""
        names = {name: field.alias for name, field in cls.model_fields.items() if field.alias}
        try:
            return cls.model_validate(body, context={"names": names})
        except pydantic.ValidationError as exc:
            raise first_error(exc, cls) from None


#: A record's metrics: the measurement group (given together or not at all), then the
#: richer metrics; the order of the answer and of the CSV export.
MEASUREMENT_GROUP = ("cpap_pressure_cmh2o", "breath_rate_bpm", "apnea_count")
RICHER_METRICS = ("breaths", "duration_s", "ahi", "leakage_l", "hypopnea_count",
                  "apnea_index", "tidal_volume_l", "minute_ventilation_lpm", "leak_rate_lpm")
METRIC_FIELDS = MEASUREMENT_GROUP + RICHER_METRICS
#: A record's details (the events and the report's series): stored with the record,
#: never in lists or summaries.
RECORD_DETAILS = storage.RECORD_DETAILS
#: Accepted only with the measurement group.
MEASUREMENT_EXTRAS = ("flow_image", *RICHER_METRICS, *RECORD_DETAILS)


def _given(value) -> bool:
    return value is not None and value != ""


def _unset(model, data, given):
    """``data`` without the fields of ``model`` whose value is not ``given`` (an unknown
    key stays, to be refused whatever its value)."""
    if not isinstance(data, dict):
        return data
    names = {field.alias or name for name, field in model.model_fields.items()}
    return {key: value for key, value in data.items() if key not in names or given(value)}


class EmptyIsUnset(RequestModel):
    """A body where ``None`` and ``""`` mean "not given" (the older clients send "")."""

    @model_validator(mode="before")
    @classmethod
    def _unset_empty(cls, data):
        return _unset(cls, data, _given)


class UploadRules(EmptyIsUnset):
    """The rules every upload follows, whatever its field names."""

    MISSING_FIRST = True

    @model_validator(mode="wrap")
    @classmethod
    def _measurements_together(cls, data, handler, info: ValidationInfo):
        """CPAP pressure, breath rate and apnea count come together; the richer metrics
        and the image only with them. Checked after the identity fields (mrn, room,
        name, upload_id) and before the metric values, as the API always has."""
        names = (info.context or {}).get("names") or {}
        try:
            upload = handler(data)
        except pydantic.ValidationError as exc:
            first_metric = list(cls.model_fields).index(MEASUREMENT_GROUP[0])
            if isinstance(data, dict) and min(_rank(cls, e) for e in exc.errors()) \
                    >= (2, first_metric):
                given = {name for name, field in cls.model_fields.items()
                         if _given(data.get(field.alias or name))}
                measurement_group(given, names)
            raise
        measurement_group({f for f in cls.model_fields if getattr(upload, f) is not None},
                          names)
        return upload

    def metrics(self) -> dict | None:
        """The record's metrics (None: an upload of the patient's details only)."""
        if self.cpap_pressure_cmh2o is None:
            return None
        metrics = {field: getattr(self, field, None) for field in METRIC_FIELDS}
        for field in RECORD_DETAILS:  # only when given: an older client's digest stays
            value = getattr(self, field, None)
            if value is not None:
                metrics[field] = ([item.model_dump() for item in value]
                                  if isinstance(value, list) else value.model_dump())
        return metrics


def measurement_group(given: set[str], names: dict[str, str]) -> None:
    """Refuse part of the measurement group, or an extra without it (``given``: the
    fields present; ``names``: the caller's names for the messages)."""
    def n(field):
        return names.get(field, field)

    present = [f for f in MEASUREMENT_GROUP if f in given]
    if present and len(present) < len(MEASUREMENT_GROUP):
        missing = next(f for f in MEASUREMENT_GROUP if f not in present)
        raise v.ValidationError(
            f"{n(missing)} is required with {n(present[0])}: CPAP pressure, breath rate and "
            "apnea count come together", n(missing))
    if not present:
        extra = next((f for f in MEASUREMENT_EXTRAS if f in given), None)
        if extra:
            raise v.ValidationError(
                f"{n(extra)} is only accepted with cpap pressure, breath rate and apnea count",
                n(extra))


class Upload(UploadRules):
    """A patient station's upload: create or update the patient; with measurements, add
    a record. cpap_pressure_cmh2o, breath_rate_bpm and apnea_count come together or not
    at all; flow_image and the richer metrics only with them. Numeric strings are
    accepted for numbers."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "mrn": 12, "room": 3, "name": "Ada Lovelace", "cpap_pressure_cmh2o": 10,
        "breath_rate_bpm": 14.2, "apnea_count": 1, "upload_id": UPLOAD_ID_EXAMPLE}]})

    mrn: PositiveId
    room: PositiveId
    name: OptionalName = None
    upload_id: OptionalUploadId = None
    cpap_pressure_cmh2o: OptionalPressure = None
    breath_rate_bpm: OptionalBreathRate = None
    apnea_count: OptionalCount = None
    breaths: OptionalCount = None
    duration_s: OptionalDuration = None
    ahi: OptionalAhi = None
    leakage_l: OptionalLeakage = None
    hypopnea_count: OptionalCount = None
    apnea_index: OptionalApneaIndex = None
    tidal_volume_l: OptionalTidalVolume = None
    minute_ventilation_lpm: OptionalMinuteVentilation = None
    leak_rate_lpm: OptionalLeakRate = None
    events: OptionalEvents = None
    series: OptionalSeries = None
    flow_image: OptionalImage = None


class StreamChunk(RequestModel):
    """A chunk of a live night from a bedside (issue #14): the next samples of the
    recording (7 ADC columns; the first chunk may start with the header), the patient,
    the pressure in force while they were recorded, the night's id and the chunk's
    sequence number (0, 1, 2, ... with no gap). A repeated chunk (same session, sequence
    and content) is stored once; another sequence than the next is a 409 naming it."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "mrn": 12, "session_id": UPLOAD_ID_EXAMPLE, "sequence": 0, "pressure_cmh2o": 8,
        "samples": "time,p1_ins,p2_ins,p1_exp,p2_exp,p3,p4\n0.00,3110,2990,3101,2995,0,0\n"}]})

    mrn: PositiveId
    name: OptionalName = Field(None, description="the patient's name, stored when the first "
                                                 "chunk admits them")
    session_id: SessionId
    sequence: Sequence
    pressure_cmh2o: Pressure
    samples: ChunkSamples
    end: Flag = Field(False, description="the night ends with this chunk (its last samples "
                                         "are analysed with the rules for a recording's end)")


class LegacyUpload(UploadRules):
    """Older clients' upload (``POST /add_patient``): the same rules under the older
    names. Empty string = not given; numbers may be strings; other keys are ignored."""

    model_config = ConfigDict(extra="ignore")

    mrn: PositiveId = Field(alias="patient_mrn")
    room: PositiveId = Field(alias="room_number")
    name: OptionalName = Field(None, alias="patient_name")
    upload_id: OptionalUploadId = None
    cpap_pressure_cmh2o: OptionalPressure = Field(None, alias="CPAP_pressure")
    breath_rate_bpm: OptionalBreathRate = Field(None, alias="breath_rate")
    apnea_count: OptionalCount = None
    flow_image: OptionalImage = None


class PressureCommand(RequestModel):
    """A monitoring station commands a CPAP pressure for the patient it saw in a room."""

    REQUIRED_MESSAGES = {"mrn": "mrn is required: the MRN of the patient the command is "
                                "for (as shown for the room)"}

    pressure_cmh2o: Pressure
    source: OptionalSource = None
    mrn: PositiveId = Field(description="the patient the command is for, as the caller saw "
                                        "them in the room; 409 when another patient "
                                        "occupies the room now")

    @model_validator(mode="before")
    @classmethod
    def _unset_null(cls, data):
        return _unset(cls, data, lambda value: value is not None)


class SignIn(RequestModel):
    """A person's user name and password."""

    REQUIRED_MESSAGES = {"username": "username is required (a string)",
                         "password": "password is required (a string)"}

    username: _required(Annotated[str, Field(min_length=1,
                                             max_length=accounts.MAX_USERNAME_CHARS)],
                        lambda value, field: accounts.credential(
                            value, field, accounts.MAX_USERNAME_CHARS))
    password: _required(Annotated[str, Field(min_length=1,
                                             max_length=accounts.MAX_PASSWORD_CHARS,
                                             json_schema_extra={"format": "password"})],
                        lambda value, field: accounts.credential(
                            value, field, accounts.MAX_PASSWORD_CHARS))


class RecordingForm(EmptyIsUnset):
    """A raw CPAP recording (multipart/form-data); each field and the file part once;
    other form fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    REQUIRED_MESSAGES = {"file": "file is required (the CPAP recording)"}

    file: Annotated[Any, WithJsonSchema({"type": "string", "format": "binary"})] = Field(
        description="the CPAP recording (the analysis's text format)")
    mrn: PositiveId
    name: OptionalName = None
    upload_id: OptionalUploadId = None
    cpap_pressure_cmh2o: Pressure


# Query strings: unknown parameters are ignored.
class QueryModel(RequestModel):
    model_config = ConfigDict(extra="ignore")


@functools.cache
def _limit_query(default: int) -> type[QueryModel]:
    class Limit(QueryModel):
        limit: _required(Annotated[int, Field(ge=1, le=v.MAX_LIST_LIMIT)],
                         _query_int(1, v.MAX_LIST_LIMIT)) = Field(
            default, description=f"how many, newest first (at most {v.MAX_LIST_LIMIT}). "
                                 f"{HEAVY_READ_NOTE}")
    Limit.__name__ = Limit.__qualname__ = f"Limit{default}"
    return Limit


#: Default ``?limit=`` of each list.
DEFAULT_RECORDS_LIMIT = 100
DEFAULT_HISTORY_LIMIT = 50
DEFAULT_AUDIT_LIMIT = 100
DEFAULT_PER_PAGE, MAX_PER_PAGE = 50, 500
RecordsQuery = _limit_query(DEFAULT_RECORDS_LIMIT)
CsvQuery = _limit_query(v.MAX_LIST_LIMIT)
HistoryQuery = _limit_query(DEFAULT_HISTORY_LIMIT)
AuditQuery = _limit_query(DEFAULT_AUDIT_LIMIT)


class PageQuery(QueryModel):
    page: _required(Annotated[int, Field(ge=1, le=10**9)], _query_int(1, 10**9)) = 1
    per_page: _required(Annotated[int, Field(ge=1, le=MAX_PER_PAGE)],
                        _query_int(1, MAX_PER_PAGE)) = DEFAULT_PER_PAGE


class ReportQuery(QueryModel):
    hours: _required(Annotated[int, Field(ge=1, le=v.MAX_REPORT_HOURS)],
                     _query_int(1, v.MAX_REPORT_HOURS)) = Field(
        v.DEFAULT_REPORT_HOURS,
        description="the night: records received in this many hours before the newest")


class StationQuery(QueryModel):
    mrn: OptionalPositiveId = Field(None, description="the bedside station's own patient "
                                                      "(recommended): 409 when another "
                                                      "patient occupies the room")


class PathParams(BaseModel):
    """The values in the routes' paths (checked by the routes: 400 naming them)."""

    room: PositiveIdValue = Field(description="room number")
    mrn: PositiveIdValue = Field(description="medical record number")
    room_number: PositiveIdValue = Field(description="room number")
    value: PressureValue = Field(description="the pressure to command (cmH2O)")
    record_id: str = Field(description="a record's id")
    command_id: str = Field(description="a pressure command's id")


# -- answers: shaped from the database documents ---------------------------------------------
def iso(value) -> str | None:
    """ISO 8601 UTC with a ``Z`` and milliseconds (BSON dates keep milliseconds)."""
    value = storage.as_utc(value)
    if not isinstance(value, dt.datetime):
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


Time = Annotated[dt.datetime, BeforeValidator(storage.as_utc),
                 PlainSerializer(iso, return_type=str),
                 WithJsonSchema({"type": "string", "format": "date-time",
                                 "examples": [TIME_EXAMPLE]})]
StoredId = Annotated[str, BeforeValidator(str),
                     WithJsonSchema({"type": "string", "pattern": "^[0-9a-f]{24}$"})]
Role = Literal[ANYONE]  # type: ignore[valid-type]


class Answer(BaseModel):
    """An answer shaped from a database document: other keys of the document ignored."""

    # A field with a default is still always in the answer: the schema says so.
    model_config = ConfigDict(extra="ignore", json_schema_serialization_defaults_required=True)


class Record(Answer):
    id: StoredId = Field(validation_alias=AliasChoices("_id", "id"))
    mrn: PositiveIdValue
    room: PositiveIdValue
    received_at: Time
    cpap_pressure_cmh2o: PressureValue | None = None
    breath_rate_bpm: BreathRateValue | None = None
    apnea_count: CountValue | None = None
    breaths: CountValue | None = None
    duration_s: DurationValue | None = None
    ahi: AhiValue | None = None
    leakage_l: LeakageValue | None = None
    hypopnea_count: CountValue | None = None
    apnea_index: ApneaIndexValue | None = None
    tidal_volume_l: TidalVolumeValue | None = None
    minute_ventilation_lpm: MinuteVentilationValue | None = None
    leak_rate_lpm: LeakRateValue | None = None
    has_image: Annotated[bool, BeforeValidator(bool)] = False


class RecordDetail(Record):
    """One record with its events (``GET /records/{id}``)."""

    events: list[Event] = Field(default_factory=list)
    has_series: Annotated[bool, BeforeValidator(lambda value: value is not None)] = Field(
        False, validation_alias=AliasChoices("series", "has_series"),
        description="whether the record holds the series its night report draws (records "
                    "stored before the report existed do not: their report shows the metrics)")


class Patient(Answer):
    mrn: PositiveIdValue
    name: str | None = None
    room: PositiveIdValue | None = None
    created_at: Time | None = None
    updated_at: Time | None = Field(None, validation_alias=AliasPath("updated", "at"))
    record_count: Annotated[int, BeforeValidator(lambda value: int(value or 0)),
                            Field(ge=0)] = 0


class PatientWithLatest(Patient):
    latest: Record | None = None


class Cancelled(Answer):
    """Set when the patient left the room before the command was applied; never
    applied then."""

    at: Time
    reason: str | None = None


class Command(Answer):
    id: StoredId = Field(validation_alias=AliasChoices("_id", "id"))
    room: PositiveIdValue
    mrn: PositiveIdValue | None = Field(None, description="the patient it was commanded for")
    pressure_cmh2o: PressureValue
    commanded_at: Time
    source: str | None = None
    applied_at: Time | None = Field(None, validation_alias=AliasPath("ack", "at"))
    cancelled: Cancelled | None = None

    @computed_field
    def applied(self) -> bool:
        """Whether the patient station confirmed it applied the command."""
        return self.applied_at is not None


class Occupant(Answer):
    mrn: PositiveIdValue
    name: str | None = None
    since: Time | None = None


class LiveSummary(Answer):
    """A live night's running metrics (final data only: up to a few minutes behind the
    last sample; ``final_until_s`` says how far). Times ``*_s`` are the recording's own
    clock, s; AHI per hour of final data."""

    session_id: str
    room: PositiveIdValue
    mrn: PositiveIdValue
    started_at: Time
    last_chunk_at: Time | None = None
    pressure_cmh2o: PressureValue | None = None
    next_sequence: CountValue
    ended: bool = False
    first_time_s: float | None = None
    last_time_s: float | None = None
    final_until_s: float | None = None
    duration_s: float = 0.0
    breaths: CountValue = 0
    breath_rate_bpm: float | None = Field(None, description="over the last 5 minutes")
    apnea_count: CountValue = 0
    hypopnea_count: CountValue = 0
    ahi: float | None = Field(None, description="apneas and hypopneas per hour so far")
    ahi_last_hour: float | None = None
    events_last_10_min: CountValue = 0
    leak_rate_lpm: float | None = None


class LiveNight(LiveSummary):
    """``GET /rooms/{room}/live``: the summary, the night's events and the last minute of
    flow (``[time_s, flow_lpm]`` at 4 Hz) for a strip chart."""

    events: list[Event] = Field(default_factory=list)
    trace: list[tuple[float, float]] = Field(default_factory=list)


class TitrationRow(Answer):
    pressure_cmh2o: PressureValue
    from_s: float
    to_s: float
    from_at: Time
    to_at: Time
    minutes: float
    breaths: CountValue
    breath_rate_bpm: float | None = None
    apneas: CountValue
    hypopneas: CountValue
    ahi: float | None = None
    tidal_volume_l: float | None = Field(None, description="median (to 10 mL)")
    leak_rate_lpm: float | None = None


class Titration(Answer):
    """One row per pressure level in force during the night: the titration table."""

    session_id: str
    room: PositiveIdValue
    mrn: PositiveIdValue
    rows: list[TitrationRow]


class Room(Answer):
    room: PositiveIdValue = Field(validation_alias=AliasChoices("_id", "room"))
    patient: Occupant | None = None
    latest: Record | None = None
    command: Command | None = None
    applied: Command | None = Field(
        None, description="the occupant's newest command the bedside applied (the pressure "
                          "in force when it is newer than the latest record)")
    live: LiveSummary | None = Field(None, description="the occupant's live night, if one "
                                                       "was streamed")

    @model_validator(mode="before")
    @classmethod
    def _current_occupant_only(cls, doc):
        """A new occupant must not inherit the previous patient's record or command."""
        if not isinstance(doc, dict) or "_id" not in doc:
            return doc
        occupant = doc.get("patient") if storage.occupant_mrn(doc) is not None else None
        mrn = occupant["mrn"] if occupant else None
        return {"_id": doc["_id"], "patient": occupant,
                **{key: doc.get(key) for key in ("latest", "command", "applied", "live")
                   if doc.get(key) is not None and doc[key].get("mrn") == mrn}}


class Who(Answer):
    model_config = ConfigDict(json_schema_serialization_defaults_required=False)

    name: str | None = Field(None, description="token name, a signed-in person's display name, or "
                                          "'anonymous' when auth is off")
    role: Role | None = None
    user: str | None = Field(None, exclude_if=lambda value: not value,
                             description="a signed-in person's user name (absent for tokens)")
    via: Literal[VIA_SCREENS] | None = Field(  # type: ignore[valid-type]
        None, exclude_if=lambda value: not value,
        description=f"the UI screen that acted (header {VIA_HEADER}; absent when not sent)")


class AuditEntry(Answer):
    id: StoredId = Field(validation_alias=AliasChoices("_id", "id"))
    room: PositiveIdValue
    mrn: PositiveIdValue | None = None
    at: Time
    action: Literal["patient_created", "name_changed", "room_changed", "record_added",
                    "pressure_commanded", "pressure_applied", "pressure_cancelled"]
    who: Who = Field(default_factory=lambda: Who(name=None))
    address: str | None = Field(None, description="the caller's IP address")
    old: Any = Field(None, description="the value before (any JSON)")
    new: Any = Field(None, description="the value after (any JSON)")


class Session(Answer):
    token: str = Field(description="send as 'Authorization: Bearer <token>'")
    expires_at: Time
    username: str
    name: str
    role: Role


class Uploaded(Answer):
    patient: Patient
    record: Record | None = None


class RecordingUploaded(Answer):
    patient: Patient
    record: Record
    metrics: dict[str, Any] = Field(description="the analysis: cpap_measurements "
                                                "AnalysisResult.to_dict()")


class PatientPage(Answer):
    patients: list[PatientWithLatest]
    page: int
    per_page: int
    total: int


class PatientRecords(Answer):
    patient: Patient
    records: list[Record]


class RecordList(Answer):
    records: list[Record]


class RoomList(Answer):
    rooms: list[Room]
    server_time: Time


class CommandList(Answer):
    commands: list[Command]


class AuditList(Answer):
    entries: list[AuditEntry]


class LegacyPatientRow(Answer):
    """One room's patient for the older clients, value lists oldest first."""

    room_number: PositiveIdValue
    patient_mrn: PositiveIdValue
    patient_name: str
    CPAP_pressure: list[int]
    breath_rate: list[float]
    apnea_count: list[int]
    timestamp: list[Time]


class LegacyPatients(RootModel[list[LegacyPatientRow]]):
    """Every room's patient (GET /get_all_patients)."""


class CommandedPressure(RootModel[PressureValue]):
    """The commanded pressure of a room (GET /CPAP_query), cmH2O."""


class OpenApiDocument(RootModel[dict[str, Any]]):
    """An OpenAPI 3.1 document."""


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    database: Literal["ok", "unreachable", "cannot write"]
    message: str | None = Field(None, exclude_if=lambda value: value is None)


def dump(model: type[BaseModel], doc: dict | None) -> dict | None:
    """A database document as the JSON answer ``model`` declares (Python values)."""
    return None if doc is None else model.model_validate(doc).model_dump(mode="json")


# -- one upload pipeline -------------------------------------------------------------------
def night_series(result) -> dict:
    """The record's night series (``sleeplab.report.night_series``; the report module
    and its plotting stack load only where a recording is analysed)."""
    from sleeplab import report
    return report.night_series(result)


#: A record's field for each key of the analysis' ``AnalysisResult.to_dict()`` it keeps.
RECORD_FIELD_OF = {"breath_rate_bpm": "breath_rate_bpm", "apnea_count": "apnea_count",
                   "breaths": "breaths", "duration": "duration_s", "ahi": "ahi",
                   "leakage": "leakage_l", "hypopnea_count": "hypopnea_count",
                   "apnea_index": "apnea_index", "tidal_volume_l": "tidal_volume_l",
                   "minute_ventilation_lpm": "minute_ventilation_lpm",
                   "leak_rate_lpm": "leak_rate_lpm", "events": "events"}


def analysis_fields(result, metrics: dict | None = None) -> dict:
    """A record's measured fields from an analysis result
    (``cpap_measurements.AnalysisResult``; ``metrics``: its ``to_dict()`` when the caller
    has it): the one mapping used by the raw-recording route and by the patient station's
    upload. Non-finite values stay (NaN): the validation refuses them as implausible."""
    metrics = metrics if metrics is not None else result.to_dict()
    return {**{field: metrics[key] for key, field in RECORD_FIELD_OF.items()},
            "series": night_series(result)}


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


#: What a recording's analysis gives (:func:`analysis_fields`): every metric but the
#: pressure, which the caller gives. Checked as an upload's same fields are (the
#: raw-recording route: a value out of bounds is an implausible result).
ANALYSED_FIELDS = METRIC_FIELDS[1:] + RECORD_DETAILS
Analysed = pydantic.create_model(
    "Analysed", __base__=RequestModel,
    **{name: (Upload.model_fields[name].annotation, Upload.model_fields[name])
       for name in ANALYSED_FIELDS})
