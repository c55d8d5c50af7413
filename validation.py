"""Input checkers: small functions that return a clean value or raise
:class:`ValidationError` with a field-specific message.

The request models of ``sleeplab.api.models`` run these checkers on the values of
JSON bodies, forms and query strings (and the routes on the numbers in their paths),
so an operator object such as ``{"$gt": ""}`` is refused (400) before any query. Not
every request value passes through here: stored ids in paths go through
``storage.parse_object_id``, a sign-in's user name and password through
``accounts.credential``, and tokens are only ever looked up by their SHA-256.
"""
from __future__ import annotations

import base64
import binascii
import io
import math
import re
import unicodedata
import warnings

from PIL import Image

#: Largest integer accepted for an MRN or a room (JavaScript's safe integer).
MAX_ID = 2**53 - 1
PRESSURE_MIN_CMH2O, PRESSURE_MAX_CMH2O = 4, 25
BREATH_RATE_MAX_BPM = 120.0
MAX_NAME_CHARS = 100
MAX_SOURCE_CHARS = 50
MAX_IMAGE_BYTES = 2 * 1024 * 1024
#: Upper bounds that keep counts and durations inside BSON's 64-bit numbers.
MAX_COUNT = 10**7
MAX_DURATION_S = 7 * 24 * 3600.0
MAX_AHI = 10_000.0
MAX_LEAKAGE_L = 1e6
#: Bounds of the clinical metrics (issue #13): generous, physiological values are far
#: below; a value beyond is an implausible analysis, not a patient.
MAX_TIDAL_VOLUME_L = 20.0
MAX_MINUTE_VENTILATION_LPM = 500.0
MAX_LEAK_RATE_LPM = 1000.0
#: A record's events (apneas last > 10 s, hypopneas >= 10 s: a week holds < 60,480).
EVENT_TYPES = ("apnea", "hypopnea")
MAX_EVENTS = 20_000
#: A record's night series (sleeplab.report.night_series): per-step values and a flow
#: envelope. The step is a minute; a week's recording has 10,080 of them.
SERIES_STEP_RANGE_S = (1.0, 3600.0)
MAX_SERIES_STEPS = 10_081
MAX_SERIES_FLOW_BINS = 2_000
SERIES_STEP_KEYS = ("minute_start_s", "breath_rate_bpm", "tidal_volume_l",
                    "minute_ventilation_lpm", "leak_rate_lpm")
SERIES_FLOW_KEYS = ("flow_t_s", "flow_min_lpm", "flow_max_lpm")
SERIES_KEYS = ("step_s", *SERIES_STEP_KEYS, *SERIES_FLOW_KEYS)
#: Largest magnitude of a series value (seconds, L/min, L, breaths/min alike).
MAX_SERIES_VALUE = MAX_DURATION_S
#: Bounds of the lists the API returns (the query models of sleeplab/api/models.py).
MAX_LIST_LIMIT = 10_000           # ?limit= of records, audit entries, commands, CSV rows
LEGACY_MAX_RECORDS = 100          # newest records per patient in GET /get_all_patients
HEAVY_READ_ROWS = 1000            # a read that may return more rows is "heavy"
DEFAULT_HEAVY_READ_TIMEOUT_S = 15.0
#: A patient's night report: their records received this many hours before the newest.
DEFAULT_REPORT_HOURS, MAX_REPORT_HOURS = 12, 72

_DIGITS = re.compile(r"[0-9]{1,19}")
#: A client-chosen idempotency key, e.g. a UUID4 (36 characters).
UPLOAD_ID_PATTERN = r"[A-Za-z0-9_-]{8,64}"
_UPLOAD_ID = re.compile(UPLOAD_ID_PATTERN)
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
#: Unicode categories refused in free text: controls, format characters (bidi controls,
#: zero-width characters), lone surrogates, line and paragraph separators.
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg"}
_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}
#: How a complete file of each format ends (PNG: the IEND chunk with its CRC; JPEG: the
#: end-of-image marker); a truncated one does not.
IMAGE_ENDS = {"PNG": b"\0\0\0\0IEND\xaeB`\x82", "JPEG": b"\xff\xd9"}


class ValidationError(ValueError):
    """One input is wrong; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, field: str | None = None, status: int = 400):
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status


def integer(value, field: str, minimum: int, maximum: int, what: str | None = None) -> int:
    """An integer in [minimum, maximum]; numeric strings and whole floats accepted."""
    what = what or f"an integer from {minimum} to {maximum}"
    if isinstance(value, bool):
        raise ValidationError(f"{field} must be {what}", field)
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value.strip())
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or not minimum <= value <= maximum:
        raise ValidationError(f"{field} must be {what}", field)
    return value


def positive_id(value, field: str) -> int:
    """An MRN or a room number: a positive integer."""
    return integer(value, field, 1, MAX_ID, what="a positive integer")


def pressure(value, field: str = "cpap_pressure_cmh2o") -> int:
    return integer(value, field, PRESSURE_MIN_CMH2O, PRESSURE_MAX_CMH2O,
                   what=f"an integer from {PRESSURE_MIN_CMH2O} to {PRESSURE_MAX_CMH2O} cmH2O")


def count(value, field: str) -> int:
    return integer(value, field, 0, MAX_COUNT, what="an integer ≥ 0")


def number(value, field: str, minimum: float, maximum: float, what: str) -> float:
    """A finite number in [minimum, maximum]; numeric strings accepted."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value.strip())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"{field} must be {what}", field)
    value = float(value)
    if not math.isfinite(value) or not minimum <= value <= maximum:
        raise ValidationError(f"{field} must be {what}", field)
    return value


def _nested_number(value, at: str, field: str, minimum: float, maximum: float,
                   what: str) -> float:
    """:func:`number` of an item inside ``field`` (the message names the item, e.g.
    ``events[3].end_s``; the error's field stays the body's field)."""
    try:
        return number(value, at, minimum, maximum, what)
    except ValidationError as exc:
        raise ValidationError(exc.message, field) from None


def _exact_keys(value, at: str, field: str, keys: tuple[str, ...], what: str) -> dict:
    """``value`` (the item ``at`` of ``field``) is an object of exactly ``keys``."""
    if not isinstance(value, dict):
        raise ValidationError(f"{at} must be {what}", field)
    unknown = next((key for key in value if key not in keys), None)
    if unknown is not None:
        raise ValidationError(f"{at}: unknown key {unknown!r}", field)
    missing = next((key for key in keys if key not in value), None)
    if missing is not None:
        raise ValidationError(f"{at}.{missing} is required", field)
    return value


def events(value, field: str = "events") -> list[dict]:
    """A record's events: a list of ``{type, start_s, end_s}`` (type "apnea" or
    "hypopnea", times in seconds of recording, start <= end), at most MAX_EVENTS."""
    what = "a list of events {type, start_s, end_s}"
    if not isinstance(value, list):
        raise ValidationError(f"{field} must be {what}", field)
    if len(value) > MAX_EVENTS:
        raise ValidationError(f"{field} holds more than {MAX_EVENTS} events", field)
    clean = []
    for i, event in enumerate(value):
        at = f"{field}[{i}]"
        _exact_keys(event, at, field, ("type", "start_s", "end_s"),
                    "an event {type, start_s, end_s}")
        if event["type"] not in EVENT_TYPES:
            raise ValidationError(f"{at}.type must be one of {', '.join(EVENT_TYPES)}", field)
        start_s, end_s = (_nested_number(event[key], f"{at}.{key}", field, 0.0,
                                         MAX_DURATION_S, f"seconds from 0 to {MAX_DURATION_S:g}")
                          for key in ("start_s", "end_s"))
        if end_s < start_s:
            raise ValidationError(f"{at}.end_s must not be before its start_s", field)
        clean.append({"type": event["type"], "start_s": start_s, "end_s": end_s})
    return clean


def _series_values(value, field: str, key: str, maximum: int) -> list[float | None]:
    at = f"{field}.{key}"
    if not isinstance(value, list) or len(value) > maximum:
        raise ValidationError(f"{at} must be a list of at most {maximum} numbers", field)
    what = f"a finite number from -{MAX_SERIES_VALUE:g} to {MAX_SERIES_VALUE:g} or null"
    return [None if item is None else
            _nested_number(item, f"{at}[{i}]", field, -MAX_SERIES_VALUE, MAX_SERIES_VALUE, what)
            for i, item in enumerate(value)]


def night_series(value, field: str = "series") -> dict:
    """A record's night series (``sleeplab.report.night_series``): ``step_s``, per-step
    lists of SERIES_STEP_KEYS (one length) and a flow envelope of SERIES_FLOW_KEYS
    (one length); numbers or null."""
    _exact_keys(value, field, field, SERIES_KEYS, "an object of " + ", ".join(SERIES_KEYS))
    low, high = SERIES_STEP_RANGE_S
    clean = {"step_s": _nested_number(value["step_s"], f"{field}.step_s", field, low, high,
                                      f"seconds from {low:g} to {high:g}")}
    for keys, maximum in ((SERIES_STEP_KEYS, MAX_SERIES_STEPS),
                          (SERIES_FLOW_KEYS, MAX_SERIES_FLOW_BINS)):
        for key in keys:
            clean[key] = _series_values(value[key], field, key, maximum)
        if len({len(clean[key]) for key in keys}) > 1:
            raise ValidationError(f"{field}: {', '.join(keys)} must have one length", field)
    return clean


def breath_rate(value, field: str = "breath_rate_bpm") -> float:
    return number(value, field, 0.0, BREATH_RATE_MAX_BPM,
                  f"a finite number from 0 to {BREATH_RATE_MAX_BPM:g} breaths per minute")


def hidden_character(value: str) -> str | None:
    """The first character of ``value`` that a reader cannot see as typed, described
    (``"U+202E RIGHT-TO-LEFT OVERRIDE at position 6"``), or None.

    Refused: controls (Cc), lone surrogates (Cs), line/paragraph separators (Zl, Zp) and
    format characters (Cf) -- the bidirectional embeddings, overrides, isolates and marks
    (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F), the zero-width characters (U+200B-U+200D,
    U+2060, U+FEFF) and the rest of Cf. A right-to-left override makes "\\u202eevil Bob"
    display as "boB live"; a zero-width space makes two different names look identical.
    """
    for position, ch in enumerate(value, start=1):
        category = unicodedata.category(ch)
        if category in HIDDEN_CATEGORIES:
            name = unicodedata.name(ch, "lone surrogate" if category == "Cs"
                                    else "control character")
            return f"U+{ord(ch):04X} {name} at position {position}"
    return None


def text(value, field: str, max_chars: int) -> str | None:
    """Free text (a name): a string ≤ max_chars without control, invisible or
    text-direction characters (:func:`hidden_character`); "" → None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string", field)
    value = value.strip()
    if len(value) > max_chars:
        raise ValidationError(f"{field} must be at most {max_chars} characters", field)
    found = hidden_character(value)
    if found:
        raise ValidationError(f"{field} must not contain control characters, invisible or "
                              f"text-direction characters, or lone surrogates (found {found}); "
                              "type it as plain text", field)
    return value or None


def upload_id(value, field: str = "upload_id") -> str | None:
    """An optional idempotency key: 8-64 characters of A-Z, a-z, 0-9, '_' and '-'."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _UPLOAD_ID.fullmatch(value):
        raise ValidationError(f"{field} must be 8 to 64 characters of letters, digits, "
                              "'_' or '-' (e.g. a UUID)", field)
    return value


#: A streamed chunk's samples (issue #14): 10 s are ~35 KB; a minute of long lines fits.
MAX_CHUNK_CHARS = 1024 * 1024


def session_id(value, field: str = "session_id") -> str:
    """A live night's id, chosen by the station (e.g. a UUID): like an upload_id."""
    if value is None or value == "":
        raise ValidationError(f"{field} is required", field)
    return upload_id(value, field)


def chunk_samples(value, field: str = "samples") -> str:
    """A streamed chunk: text of recording lines (the analysis checks the lines)."""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string of recording lines", field)
    if len(value) > MAX_CHUNK_CHARS:
        raise ValidationError(f"{field} must be at most {MAX_CHUNK_CHARS} characters: send "
                              "the night in smaller chunks", field, status=413)
    return value


def boolean(value, field: str) -> bool:
    """JSON true or false (no 0/1, no strings)."""
    if not isinstance(value, bool):
        raise ValidationError(f"{field} must be true or false", field)
    return value


def image_bytes(data: bytes, field: str) -> tuple[bytes, str]:
    """Check raw image bytes: a complete PNG or JPEG of a sane size.

    The pixels are not decoded (a 640x480 PNG took 4 ms, issue #15): Pillow reads the
    header (format; a pixel count over Pillow's bomb limit is refused), a PNG's every
    chunk is checked against its CRC, and the file must end as its format ends (PNG
    with IEND, JPEG with its end-of-image marker), so truncated and damaged files are
    refused. The bytes are stored and served as they came, never decoded here.

    Returns ``(data, content_type)``.
    """
    if len(data) > MAX_IMAGE_BYTES:
        raise ValidationError(f"{field} must be at most {MAX_IMAGE_BYTES // (1024 * 1024)} MB",
                              field, status=413)
    magic = next((fmt for sig, fmt in _MAGIC.items() if data.startswith(sig)), None)
    if magic is None:
        raise ValidationError(f"{field} must be a PNG or JPEG image", field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format
                img.verify()  # PNG: each chunk and its CRC, up to IEND
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:
        raise ValidationError(f"{field} is not a readable {magic} image ({exc})", field) from exc
    if fmt != magic:
        raise ValidationError(f"{field} must be a PNG or JPEG image", field)
    if not data.endswith(IMAGE_ENDS[fmt]):
        raise ValidationError(f"{field} is not a readable {fmt} image (truncated: it does "
                              "not end as a complete file does)", field)
    return data, IMAGE_FORMATS[fmt]


def image_base64(value, field: str = "flow_image") -> tuple[bytes, str]:
    """A base64 PNG/JPEG (a ``data:image/...;base64,`` prefix is accepted)."""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a base64-encoded PNG or JPEG image", field)
    if value.startswith("data:"):
        value = value.partition(",")[2]
    if len(value) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise ValidationError(f"{field} must be at most {MAX_IMAGE_BYTES // (1024 * 1024)} MB",
                              field, status=413)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationError(f"{field} is not valid base64", field) from exc
    return image_bytes(data, field)


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """``json.loads`` hook: refuse an object that names a key twice (a script sending
    ``{"mrn": 1, "mrn": 2}`` must not have one of them silently chosen)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValidationError(f"duplicate key {key!r} in the JSON body", key)
        out[key] = value
    return out


def object_body(body) -> dict:
    if not isinstance(body, dict):
        raise ValidationError("the request body must be a JSON object")
    return body
