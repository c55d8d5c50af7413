"""CPAP venturi recording analysis: ADC -> pressure -> flow -> breaths -> apneas -> metrics.

A recording is a text file with one header line and one line per sample (100 Hz) of 7
comma-separated values: time [s], V1 p2, V1 p1-ins, V1 p1-exp, V2 p2, V2 p1-ins, V2 p1-exp
(pressures in ADC units). V1, the patient-side venturi, is what the analysis uses.

The pipeline is a chain of small pure functions composed by :func:`analyze`::

    read_samples -> venturi_flow -> detect_breaths -> find_apneas -> metrics

Command line::

    python cpap_measurements.py FILE [--json] [--plot OUT.png]

Every unusable input raises :class:`CpapFileError` (a ``ValueError``) whose message is
meant for a clinician. Lines that cannot be read are skipped, logged and reported in
``AnalysisResult.skipped_lines`` with their 1-based file line number and the reason.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import itertools
import json
import logging
import math
import mmap
import os
import re
import stat
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple, TextIO, Union

import numpy as np
import pandas as pd
from scipy import ndimage

log = logging.getLogger(__name__)
# A text column in a file pandas reads whole is a bad line the pieces then report; pandas'
# advice on mixed types would only be noise.
warnings.filterwarnings("ignore", category=pd.errors.DtypeWarning, module=__name__)

# --- Sensor and physics constants -------------------------------------------------------
ADC_OFFSET = 1638               # ADC reading at 0 cmH2O
ADC_FULL_SCALE = 14745          # ADC reading at PRESSURE_FULL_SCALE_CMH2O
PRESSURE_FULL_SCALE_CMH2O = 25.4
PA_PER_CMH2O = 98.0665
CMH2O_PER_ADC = PRESSURE_FULL_SCALE_CMH2O / (ADC_FULL_SCALE - ADC_OFFSET)
PA_PER_ADC = CMH2O_PER_ADC * PA_PER_CMH2O
AIR_DENSITY_KG_M3 = 1.199
VENTURI_D1_M = 0.015            # inlet diameter
VENTURI_D2_M = 0.012            # throat diameter
VENTURI_A1_M2 = math.pi * (VENTURI_D1_M / 2) ** 2
VENTURI_A2_M2 = math.pi * (VENTURI_D2_M / 2) ** 2
VENTURI_AREA_TERM = (VENTURI_A1_M2 / VENTURI_A2_M2) ** 2 - 1
#: flow [m^3/s] = FLOW_M3S_PER_SQRT_ADC * sqrt(p1 - p2 [ADC steps])
FLOW_M3S_PER_SQRT_ADC = VENTURI_A1_M2 * math.sqrt(2 * PA_PER_ADC / (AIR_DENSITY_KG_M3 * VENTURI_AREA_TERM))
M3S_TO_LPM = 60_000.0           # m^3/s -> L/min
M3_TO_L = 1_000.0

# --- File format ----------------------------------------------------------------------
N_COLUMNS = 7
COL_TIME, COL_P2, COL_P1_INS, COL_P1_EXP = 0, 1, 2, 3
MIN_DURATION_S = 5.0            # less than this cannot show even one slow breath cycle

# --- Breath detection (reasons in docs/README-analysis.md) ------------------------------
DETECT_BLOCK = 5                # 100 Hz -> 20 Hz by block median: kills 1-2 sample ADC spikes
                                # (fixed: _median_of_5 is a network for exactly 5)
SMOOTH_S = 0.25                 # centred moving average after the block median
BASELINE_WINDOW_S = 30.0        # block length of the no-flow baseline (median) estimate
AMPLITUDE_PERCENTILE = 98.0     # typical inspiratory peak above baseline ...
AMPLITUDE_WINDOW_S = 120.0      # ... over windows of this length
HIGH_FRACTION = 0.25            # hysteresis: enter inspiration above baseline + 25 % of peak
LOW_FRACTION = 0.10             # ... leave it below baseline + 10 % of peak
MIN_HIGH_LPM = 6.0              # above one ADC step (~5 L/min): a one-step level or ripple is no breath
MIN_LOW_LPM = 1.5
MIN_INSPIRATION_S = 0.12        # an inspiration shorter than this is a glitch
MIN_BREATH_INTERVAL_S = 0.4     # two peaks closer than this are one breath (150/min)
APNEA_GAP_S = 10.0              # apnea: more than this between consecutive breaths

PLOT_MAX_COLUMNS = 2000         # min/max envelope bins for long recordings (<= image width)
FLOW_COLOUR = "#1f77b4"
PNG_COMPRESS_LEVEL = 2          # zlib level: 6 (default) costs ~3x the time for ~20 % smaller files
#: Fixed flow axis (L/min) of every plot, so two plots side by side compare at a glance; it
#: covers the sample recordings (-20..43 L/min). A flow outside widens it in steps of
#: FLOW_PLOT_STEP_LPM instead of being clipped.
FLOW_PLOT_RANGE_LPM = (-40.0, 60.0)
FLOW_PLOT_STEP_LPM = 20.0
PLOT_FONT_PT = 16               # the 1200 px image is shown at half width on the monitor

Source = Union[str, "os.PathLike[str]", bytes, bytearray, BinaryIO, TextIO]


class CpapFileError(ValueError):
    """The recording cannot be analysed; the message says why, for a clinician."""


class SkippedLine(NamedTuple):
    """A line of the file that was not used: 1-based file line number and the reason."""

    line_number: int
    reason: str


class ApneaEvent(NamedTuple):
    """A gap of more than ``APNEA_GAP_S`` between two breaths (times in s)."""

    start: float
    end: float
    duration: float


class Samples(NamedTuple):
    """Valid samples of a recording: time [s] and the three V1 pressures [ADC units]."""

    time: np.ndarray
    p2: np.ndarray
    p1_ins: np.ndarray
    p1_exp: np.ndarray
    skipped_lines: list


@dataclass
class AnalysisResult:
    """Metrics and signals of one recording.

    Attributes
    ----------
    duration : float
        Recording length, s (last minus first valid sample time).
    breaths : int
        Number of breaths.
    breath_rate_bpm : float
        Breaths per minute over the whole recording.
    breath_times : numpy.ndarray
        Time of each inspiratory peak, s.
    apnea_count : int
        Number of apnea events.
    apnea_events : list of ApneaEvent
        Start, end and duration (s) of each gap of more than 10 s between breaths.
    ahi : float
        Apnea events per hour of recording.
    leakage : float
        Net integral of flow, L (more in than out = positive).
    time : numpy.ndarray
        Sample times, s.
    flow : numpy.ndarray
        Flow, m^3/s (inspiration positive).
    skipped_lines : list of SkippedLine
        Lines not used, with their 1-based line number and the reason.
    flow_lpm : numpy.ndarray
        Flow, L/min (made from ``flow`` when not given).
    """

    duration: float
    breaths: int
    breath_rate_bpm: float
    breath_times: np.ndarray
    apnea_count: int
    apnea_events: list
    ahi: float
    leakage: float
    time: np.ndarray = field(repr=False)
    flow: np.ndarray = field(repr=False)
    skipped_lines: list = field(default_factory=list, repr=False)
    flow_lpm: np.ndarray = field(default=None, repr=False)

    def __post_init__(self):
        if self.flow_lpm is None:  # made once: detection and the plot both use it
            self.flow_lpm = self.flow * M3S_TO_LPM

    def to_dict(self) -> dict:
        """JSON-ready metrics (plain floats, ints, lists, dicts; no arrays)."""
        return {
            "duration": float(self.duration),
            "breaths": int(self.breaths),
            "breath_rate_bpm": float(self.breath_rate_bpm),
            "breath_times": [round(float(t), 3) for t in self.breath_times],
            "apnea_count": int(self.apnea_count),
            "leakage": float(self.leakage),
            "ahi": float(self.ahi),
            "apnea_events": [
                {"start": float(e.start), "end": float(e.end), "duration": float(e.duration)}
                for e in self.apnea_events
            ],
            "skipped_lines": [
                {"line": int(s.line_number), "reason": s.reason} for s in self.skipped_lines
            ],
        }


# --- Reading ------------------------------------------------------------------------------
def read_bytes(source: Source) -> bytes:
    """Return the raw content of a path, bytes, or binary/text file-like object.

    Raises
    ------
    CpapFileError
        If the path cannot be opened or the object cannot be read.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise CpapFileError(_open_error(source, exc)) from exc
    read = getattr(source, "read", None)
    if read is None:
        raise CpapFileError(f"cannot read a recording from a {type(source).__name__}")
    try:
        data = read()
    except (OSError, ValueError) as exc:
        raise CpapFileError(f"cannot read the uploaded recording: {exc}") from exc
    if isinstance(data, str):
        return data.encode("utf-8", errors="replace")
    return bytes(data)


def _forbidden_byte_table() -> np.ndarray:
    """Lookup table: True for bytes that cannot appear in a numeric data line."""
    table = np.ones(256, dtype=bool)
    # the blanks are those pandas' number parser skips (vertical tab and form feed too)
    table[np.frombuffer(b"0123456789.,+- \t\v\f\r\n", dtype=np.uint8)] = False
    return table


_FORBIDDEN_BYTES = _forbidden_byte_table()
_ALLOWED_BYTES = bytes(np.flatnonzero(~_FORBIDDEN_BYTES).astype(np.uint8))
_MAX_ALLOWED_BYTE = max(_ALLOWED_BYTES)
NEWLINE, COMMA, CR = ord("\n"), ord(","), ord("\r")
SCAN_CHUNK_BYTES = 1 << 20
MAX_LINE_BYTES = 250            # a valid line is ~40 bytes; longer ones are not samples
# A longer line (the header too) refuses the whole file: no recorder writes one, and pandas
# would pay for it (extra fields on a first line become an index of that many levels).
MAX_ANY_LINE_BYTES = 16 * 1024
MAX_LOGGED_LINES = 20
MAX_OUT_OF_ORDER_FRACTION = 0.01  # more samples out of time order: refuse the file
MAX_REASONS_WITHOUT_SAMPLES = 1000  # a file without any sample: word this many reasons
PARSE_PIECE_BYTES = 4 << 20     # parsed in parallel pieces of this size (as pandas' own parallel reader)
MAX_PARSE_THREADS = 4           # more add little: parsing is bound by memory bandwidth
_LINE_END_WINDOW_BYTES = 1 << 16
# every ADC column an integer: an empty or malformed field raises instead of becoming NaN
_CLEAN_DTYPES = {COL_TIME: np.float64, **{c: np.int64 for c in range(COL_TIME + 1, N_COLUMNS)}}
_NO_LINES = np.zeros(0, dtype=np.int64)
# how pandas reads sample lines everywhere: no header (set aside first), 7 named columns,
# no quoting (faster; the format has none), a blank line kept as a row so it is seen
_SAMPLE_CSV = dict(header=None, names=range(N_COLUMNS), engine="c", quoting=csv.QUOTE_NONE,
                   skip_blank_lines=False)
CLEAN_FILE_MIN_BYTES = 8 << 20  # smaller files gain nothing from pandas' parallel reader
_FIRST_NON_SPACE = re.compile(rb"\S")


def _looks_binary(data: bytes) -> bool:
    """True when the start of the content is clearly not text (NULs or many control bytes)."""
    head = data[:4096]
    if b"\x00" in head:
        return True
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 13))
    return controls > 0.05 * len(head)


def _line_text(data: bytes, start: int, end: int, limit: int = 40) -> str:
    text = data[start:end].rstrip(b"\r").decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _scan_chunk(raw, check_bytes: bool = True):
    """Classify the lines of a chunk of whole lines (bytes or a memoryview).

    Returns relative line ``starts`` and ``ends`` and ``good``: the line has exactly 6
    commas, no byte that cannot be part of a number, no empty field, a plausible length.
    ``check_bytes=False`` skips the byte check when the caller knows the chunk is clean.
    """
    chunk = np.frombuffer(raw, dtype=np.uint8)
    nl = chunk == NEWLINE
    newlines = np.flatnonzero(nl)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.append(newlines, len(chunk))
    if starts[-1] == len(chunk):  # the chunk ends with a newline: no line after it
        starts, ends = starts[:-1], ends[:-1]
    safe_starts = np.minimum(starts, len(chunk) - 1)
    comma = chunk == COMMA
    good = _has_six_commas(comma, starts, ends)
    good &= (ends - starts) <= MAX_LINE_BYTES
    # bytes.translate deletes every allowed byte at C speed: usually nothing is left
    # (per line by one reduceat pass: a hostile file has millions of such bytes or fields)
    if check_bytes and bytes(raw).translate(None, _ALLOWED_BYTES):
        good &= ~np.logical_or.reduceat(_FORBIDDEN_BYTES[chunk], safe_starts)
    # an empty field: a comma followed by a comma or the line end, or a line starting with one
    # (the comma and newline masks are reused: each full-chunk pass costs as much as the test)
    ender = comma[1:] | nl[1:]
    ender |= chunk[1:] == CR
    empty = np.empty_like(comma)
    np.logical_and(comma[:-1], ender, out=empty[:-1])
    empty[-1] = comma[-1]
    empty[safe_starts] |= comma[safe_starts]
    if empty.any():
        good &= ~np.logical_or.reduceat(empty, safe_starts)
    return starts, ends, good


def _has_six_commas(comma: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """True for lines with exactly N_COLUMNS - 1 commas (``comma``: the chunk's comma mask)."""
    n_lines = len(starts)
    if np.count_nonzero(comma) == (N_COLUMNS - 1) * n_lines:
        # Usual case, proved cheaply: the k-th group of 6 commas lies inside line k.
        groups = np.flatnonzero(comma).reshape(n_lines, N_COLUMNS - 1)
        if (groups[:, 0] >= starts).all() and (groups[:, -1] < ends).all():
            return np.ones(n_lines, dtype=bool)
    # uint8 sums wrap above 255 commas; such lines are longer than MAX_LINE_BYTES and
    # rejected on length anyway. Summing in uint8 is ~10x faster than in int64.
    n_commas = np.add.reduceat(comma.view(np.uint8), np.minimum(starts, len(comma) - 1))
    return (n_commas == N_COLUMNS - 1) & (ends > starts)


def _has_letters(buffer, offset: int = 0) -> bool:
    """True when a byte above every allowed one occurs from ``offset`` on: letters (``NaN``,
    ``bad data``, ``inf``, exponents). One ``max`` pass, a few ms for 100 MB."""
    if len(buffer) <= offset:
        return False
    return np.frombuffer(buffer, dtype=np.uint8, offset=offset).max() > _MAX_ALLOWED_BYTE


def _has_forbidden_bytes(data: bytes) -> bool:
    """True when a byte that cannot be part of a number occurs: :func:`_has_letters` settles
    most dirty content; otherwise one ``bytes.translate`` pass."""
    return _has_letters(data) or bool(data.translate(None, _ALLOWED_BYTES))


def _check_line_lengths(buffer, size: int) -> bool:
    """Refuse the content if a line (the header too) is longer than MAX_ANY_LINE_BYTES.

    ``buffer`` is the content or a map of the file (anything with ``find`` and ``rfind``).
    Every block of half the limit must hold a line end: one ``memchr`` per 8 KB block
    (2-7 ms for 114 MB), no copy, bounded memory. A longer line covers a whole block, so it
    is always found; only then is its exact length measured.

    Returns
    -------
    bool
        True when a line after the first (a header may be long) longer than MAX_LINE_BYTES
        was seen on the way (running on for that long after a block start): a sample, not
        a proof of absence. pandas is slow on such lines (a 2,000-digit number costs ~100x
        a sample's bytes), so the whole-file call is not tried when there are enough of
        them to matter.

    Raises
    ------
    CpapFileError
        Naming the first over-long line.
    """
    block = MAX_ANY_LINE_BYTES // 2
    pos = 0
    long_lines = False
    while pos < size:
        line_end = buffer.find(b"\n", pos, pos + block)
        if line_end >= 0:
            long_lines = long_lines or (pos > 0 and line_end - pos > MAX_LINE_BYTES)
            pos += block
            continue
        start = buffer.rfind(b"\n", 0, pos) + 1  # the previous block ended a line: a short search
        end = buffer.find(b"\n", pos, start + MAX_ANY_LINE_BYTES + 1)
        if end < 0 and size - start <= MAX_ANY_LINE_BYTES:
            end = size  # the last line, without a line end
        if end < 0:
            raise CpapFileError(_long_line_message(buffer, start))
        long_lines = long_lines or (start > 0 and end - start > MAX_LINE_BYTES)
        pos = end + 1
    return long_lines


def _long_line_message(buffer, start: int) -> str:
    """Why a file with an over-long line from ``start`` on is refused, naming the line."""
    line_number = _count_newlines(buffer, start) + 1
    text = _line_text(buffer, start, start + 2 * MAX_LINE_BYTES, limit=20)
    message = (f"line {line_number} is longer than {MAX_ANY_LINE_BYTES:,} characters ({text!r}); "
               f"a CPAP recording has one sample of about 40 characters per line")
    if buffer.find(b"\r", start, start + MAX_ANY_LINE_BYTES) >= 0:
        return message + ": its lines seem to end with CR only; save it with LF or CRLF line ends"
    return message + ": this is not a CPAP text recording, or the file is damaged at that line"


def _count_newlines(buffer, stop: int) -> int:
    """Line ends in ``buffer[:stop]``, counted in chunks (a map of a file has no ``count``)."""
    total = 0
    for pos in range(0, stop, SCAN_CHUNK_BYTES):
        chunk = np.frombuffer(buffer, dtype=np.uint8, count=min(SCAN_CHUNK_BYTES, stop - pos), offset=pos)
        total += int(np.count_nonzero(chunk == NEWLINE))
    return total


def _extra_fields_ahead(buffer, start: int) -> bool:
    """True when the line from ``start`` has more than N_COLUMNS fields. pandas must never
    see one first: it makes the extra fields an index of that many levels for every row
    (2,000 fields and 200,000 rows: 40 s)."""
    end = buffer.find(b"\n", start)
    return buffer[start:end if end >= 0 else len(buffer)].count(b",") > N_COLUMNS - 1


def _scan_lines(data: bytes, chunk_bytes: int = SCAN_CHUNK_BYTES):
    """Locate lines and find the good ones without a Python loop over lines.

    The content is scanned in chunks of whole lines that fit in the CPU cache, which is
    several times faster than whole-file temporaries and keeps memory flat.

    Returns
    -------
    starts, ends : numpy.ndarray
        Byte offsets of each line (``end`` excludes the newline).
    good : numpy.ndarray of bool
        The line looks like a sample: 7 non-empty fields of digits, signs, points and
        blanks, not longer than any valid line. Numbers are checked by the parser.
    """
    parts = []
    pos = 0
    view = memoryview(data)
    dirty = _has_forbidden_bytes(data)  # else the per-chunk byte check can be skipped
    while pos < len(data):
        stop = min(pos + chunk_bytes, len(data))
        if stop < len(data):
            nl = data.rfind(b"\n", pos, stop)
            stop = nl + 1 if nl >= pos else (data.find(b"\n", stop) + 1 or len(data))
        starts, ends, good = _scan_chunk(view[pos:stop], check_bytes=dirty)
        parts.append((starts + pos, ends + pos, good))
        pos = stop
    if not parts:
        return _NO_LINES, _NO_LINES, np.zeros(0, dtype=bool)
    starts, ends, good = (np.concatenate(p) for p in zip(*parts))
    return starts, ends, good


def _reason(data: bytes, start: int, end: int) -> str:
    """Why a line is not a sample, in words (called only for skipped lines)."""
    raw = data[start:end].rstrip(b"\r")
    text = _line_text(data, start, end)
    if not raw.strip():
        return "blank line"
    n_fields = raw.count(b",") + 1
    if raw.translate(None, _ALLOWED_BYTES):
        return f"not a number: {text!r}"
    if n_fields < N_COLUMNS:
        return f"too few columns ({n_fields} of {N_COLUMNS}): {text!r}"
    if n_fields > N_COLUMNS:
        return f"too many columns ({n_fields} of {N_COLUMNS}): {text!r}"
    if raw.startswith(b",") or raw.endswith(b",") or b",," in raw:
        return f"empty field: {text!r}"
    return f"invalid number: {text!r}"


def _parse_clean(piece: bytes):
    """All 7 columns of a piece of whole lines when every line is a sample, else ``None``.

    pandas' C parser is the proof: with integer ADC columns and no NA filter an empty,
    missing or malformed field raises, and so does an extra field (no ``usecols``, which
    would silently drop it; a first line with one is not given to pandas). The byte check
    keeps out what the parser would take but a sample must not have (``1e3``, ``nan``,
    ``inf``), and the line count a bare CR, which pandas ends a line at. Returns the time
    and V1 columns and the number of lines.
    """
    if not piece or _has_letters(piece) or _extra_fields_ahead(piece, 0):
        return None
    try:
        frame = pd.read_csv(io.BytesIO(piece), dtype=_CLEAN_DTYPES, na_filter=False, **_SAMPLE_CSV)
    except (ValueError, OverflowError):  # pandas' ParserError is a ValueError
        return None
    n_lines = piece.count(b"\n") + (not piece.endswith(b"\n"))
    if len(frame) != n_lines or not isinstance(frame.index, pd.RangeIndex):
        return None
    return [frame[c].to_numpy() for c in range(COL_P1_EXP + 1)], n_lines


def _parse_columns(data: bytes, good: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pd.DataFrame:
    """Parse time and the V1 pressures of the good lines with pandas' C engine.

    pandas reads a stream of the runs of good lines (no copy). That is much faster than
    pandas' ``skiprows`` with a set, which tests every row. Quoting is off (faster, and
    the format has none). The C parser infers int64 for the ADC columns, float64 where a
    field is empty; a malformed number such as ``1.2.3`` (rare) makes a column text, and
    only then is it coerced to numbers (NaN where malformed).
    """
    flips = np.flatnonzero(np.diff(np.concatenate(([0], good.view(np.int8), [0]))))
    # each run up to and including the newline after its last line
    stream = _GoodLines(data, [(starts[first], ends[stop - 1] + 1)
                               for first, stop in zip(flips[::2], flips[1::2])])
    # no NA filter: the scan has ruled out empty fields, and NA matching costs ~15 %
    frame = pd.read_csv(stream, usecols=range(COL_P1_EXP + 1), na_filter=False, **_SAMPLE_CSV)
    if any(not pd.api.types.is_numeric_dtype(dtype) for dtype in frame.dtypes):
        frame = frame.apply(pd.to_numeric, errors="coerce")
    return frame


class _GoodLines(io.RawIOBase):
    """A read-only stream of the good runs of lines, served straight from the content
    (no joined copy of a 100 MB file for a few bad lines)."""

    def __init__(self, data: bytes, ranges):
        super().__init__()
        view = memoryview(data)
        self._pieces = [view[start:stop] for start, stop in ranges if stop > start]
        if self._pieces and bytes(self._pieces[-1][-1:]) != b"\n":  # last line without a newline
            self._pieces.append(memoryview(b"\n"))
        self._pieces.reverse()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._pieces and not len(self._pieces[-1]):
            self._pieces.pop()
        if not self._pieces:
            return 0
        piece = self._pieces[-1]
        n = min(len(buffer), len(piece))
        buffer[:n] = piece[:n]
        self._pieces[-1] = piece[n:]
        return n


class _Piece(NamedTuple):
    """Rows of a piece of whole lines; line numbers are 0-based within the piece.

    ``columns``: time and the V1 pressures of the rows used; ``line_index``: their lines;
    ``bad_index``, ``bad_starts``, ``bad_ends``: the lines not used and their byte ranges in
    ``data`` (kept only when there are some, to word the reasons); ``n_lines``.
    """

    columns: list
    line_index: np.ndarray
    bad_index: np.ndarray
    bad_starts: np.ndarray
    bad_ends: np.ndarray
    data: bytes
    n_lines: int


def _parse_piece(piece: bytes) -> _Piece:
    """Parse a piece of whole lines: in one pandas call when every line is a sample, else
    classify the lines with :func:`_scan_lines` and parse only the good ones."""
    clean = _parse_clean(piece)
    if clean is not None:
        columns, n_lines = clean
        return _Piece(columns, np.arange(n_lines), _NO_LINES, _NO_LINES, _NO_LINES, b"", n_lines)
    starts, ends, good = _scan_lines(piece)
    good_idx = np.flatnonzero(good)
    columns = [np.zeros(0)] * (COL_P1_EXP + 1)
    if len(good_idx):
        frame = _parse_columns(piece, good, starts, ends)
        if len(frame) != len(good_idx):  # the scanner and pandas disagree on lines: not our format
            raise CpapFileError("the recording could not be read line by line; is it a CPAP text "
                                "file with one sample per line?")
        valid = ~frame.isna().to_numpy().any(axis=1)
        columns = [frame[c].to_numpy()[valid] for c in range(COL_P1_EXP + 1)]
        good[good_idx[~valid]] = False
        good_idx = good_idx[valid]
    bad = np.flatnonzero(~good)
    return _Piece(columns, good_idx, bad, starts[bad], ends[bad], piece if len(bad) else b"", len(starts))


class _Content:
    """The recording's bytes, read by byte range: from memory, or from the file itself with
    ``os.pread`` (which releases the GIL, so the parse threads read their pieces in parallel
    and a file is never held in memory whole)."""

    def __init__(self, data: bytes = b"", fd: int | None = None, size: int | None = None,
                 path=None):
        self._data, self._fd, self.path = data, fd, path
        self.size = len(data) if size is None else size

    @classmethod
    def of(cls, source: Source) -> "_Content":
        if isinstance(source, (str, os.PathLike)) and hasattr(os, "pread"):
            try:
                fd = os.open(source, os.O_RDONLY)
            except OSError as exc:
                raise CpapFileError(_open_error(source, exc)) from exc
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode):
                return cls(fd=fd, size=info.st_size, path=source)
            os.close(fd)  # a pipe or device: read it as a stream
        return cls(read_bytes(source))

    def __enter__(self) -> "_Content":
        return self

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @contextlib.contextmanager
    def mapped(self):
        """The whole content for searching without a copy: the bytes, or a map of the file
        (its pages are the page cache's, not this process's memory)."""
        if self._fd is None:
            yield self._data
            return
        mapped = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
        try:
            yield mapped
        finally:
            mapped.close()

    def read(self, start: int, stop: int) -> bytes:
        if self._fd is None:
            return self._data[start:stop]
        return os.pread(self._fd, max(0, stop - start), start)

    def line_end(self, pos: int) -> int:
        """Offset just after the first newline at or after ``pos`` (the size if none)."""
        if self._fd is None:
            return self._data.find(b"\n", pos) + 1 or self.size
        while pos < self.size:
            window = self.read(pos, pos + _LINE_END_WINDOW_BYTES)
            nl = window.find(b"\n")
            if nl >= 0:
                return pos + nl + 1
            pos += len(window) or self.size
        return self.size

    def is_blank(self, head: bytes) -> bool:
        """True when the content, which starts with ``head``, is empty or only white space."""
        if head.strip() or self.size <= len(head):
            return not head.strip()
        return _FIRST_NON_SPACE.search(self.read(0, self.size)) is None


def _open_error(source, exc: OSError) -> str:
    return f"cannot open the recording {os.fspath(source)!r}: {exc.strerror}"


def _parse_threads() -> int:
    """Threads for parsing: the CPUs this process may use, at most MAX_PARSE_THREADS."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_PARSE_THREADS))


def _map_pieces(content: _Content, ranges: list) -> list:
    """:func:`_parse_piece` over the byte ranges, in parallel threads when there are several
    (reading, pandas' tokenizer and NumPy release the GIL)."""
    def work(byte_range):
        return _parse_piece(content.read(*byte_range))

    n_threads = min(len(ranges), _parse_threads())
    if n_threads <= 1:
        return [work(r) for r in ranges]
    with ThreadPoolExecutor(n_threads, thread_name_prefix="cpap-parse") as pool:
        return list(pool.map(work, ranges))


class _Parsed(NamedTuple):
    """Rows of a recording: ``columns`` time and the V1 pressures, ``line_index`` the 0-based
    file line of each row (an array, or a ``range`` when the rows are consecutive lines),
    ``skipped`` the lines left out."""

    columns: list
    line_index: Union[np.ndarray, range]
    skipped: list


def _parse_clean_file(content: _Content, body_start: int, header_lines: int, long_lines: bool):
    """A file on disk whose every line after the header is a sample, parsed by one call of
    pandas' own parallel reader (it maps the file and parses byte ranges in threads, with
    less overhead than our pieces); ``None`` when the file is small, from memory, has
    ``long_lines`` (:func:`_check_line_lengths`) or is not clean.

    Cheap checks first, on the mapped file: no byte above the digits (letters: ``NaN``,
    ``bad data``, exponents), no bare CR (pandas ends a line there) and no extra field on
    the first line (pandas would make it an index). pandas then raises on a line with too
    many fields; an empty or missing field or a blank line shows as a NaN, which makes an
    ADC column float; a malformed number makes a column text. Any of these, and the pieces
    take over (the whole-file parse is then wasted, once: not the usual case)."""
    if long_lines or content.path is None or content.size - body_start < CLEAN_FILE_MIN_BYTES:
        return None
    with content.mapped() as mapped:
        dirty = _has_letters(mapped, body_start) or _extra_fields_ahead(mapped, body_start)
        if not dirty and mapped.find(b"\r", body_start) >= 0:
            body = np.frombuffer(mapped, dtype=np.uint8, offset=body_start)
            cr = np.flatnonzero(body == CR)
            dirty = cr[-1] + 1 >= len(body) or not (body[cr + 1] == NEWLINE).all()
            del body  # the map cannot close while a view of it exists
    if dirty:
        return None
    try:
        frame = pd.read_csv(content.path, skiprows=header_lines, **_SAMPLE_CSV)
    except (ValueError, OverflowError):  # pandas' ParserError is a ValueError
        return None
    time = frame[COL_TIME].to_numpy()
    if (not isinstance(frame.index, pd.RangeIndex) or time.dtype.kind not in "if"
            or any(frame[c].dtype.kind != "i" for c in range(COL_TIME + 1, N_COLUMNS))
            or (time.dtype.kind == "f" and np.isnan(time).any())):
        return None
    columns = [time] + [frame[c].to_numpy() for c in range(COL_TIME + 1, COL_P1_EXP + 1)]
    return _Parsed(columns, range(header_lines, header_lines + len(frame)), [])


def _parse_content(content: _Content, long_lines: bool) -> _Parsed:
    """Parse the lines after the header: a clean file on disk with :func:`_parse_clean_file`;
    anything else in pieces of about PARSE_PIECE_BYTES, parsed in parallel
    (:func:`_parse_piece`) and joined with file line numbers."""
    header_end = content.line_end(0)
    has_header = not _scan_chunk(content.read(0, header_end))[2][0]
    body_start = header_end if has_header else 0
    clean = _parse_clean_file(content, body_start, int(has_header), long_lines)
    if clean is not None:
        return clean
    cuts = [body_start]
    while cuts[-1] < content.size:
        target = cuts[-1] + PARSE_PIECE_BYTES
        cuts.append(content.size if target >= content.size else content.line_end(target))
    pieces = _map_pieces(content, list(zip(cuts[:-1], cuts[1:])))

    first_lines = np.cumsum([int(has_header)] + [p.n_lines for p in pieces])
    n_good = sum(len(p.line_index) for p in pieces)
    n_bad = sum(len(p.bad_index) for p in pieces)
    bad = ((first + i, p, s, e) for p, first in zip(pieces, first_lines)
           for i, s, e in zip(p.bad_index, p.bad_starts, p.bad_ends))
    # without a single sample, word only a sample of the reasons: the file may be huge
    bad = itertools.islice(bad, None if n_good else MAX_REASONS_WITHOUT_SAMPLES)
    skipped = [SkippedLine(int(line) + 1, _reason(p.data, s, e)) for line, p, s, e in bad]
    if n_good == 0:
        raise CpapFileError(_no_samples_message(skipped, n_bad))
    columns = [np.concatenate([p.columns[c] for p in pieces]) for c in range(COL_P1_EXP + 1)]
    line_index = np.concatenate([p.line_index + first for p, first in zip(pieces, first_lines)])
    return _Parsed(columns, line_index, skipped)


def _drop_out_of_order(time: np.ndarray, line_index):
    """Mask of samples to keep under the time-order rule, and the skipped lines.

    A sample is kept only if its time is later than every sample before it; a repeated
    time or a step back is skipped and reported. If more than
    ``MAX_OUT_OF_ORDER_FRACTION`` of the samples would go, the file is refused: that is no
    clock glitch but e.g. two recordings joined, and dropping half a night quietly is worse.
    """
    if len(time) < 2 or (time[1:] > time[:-1]).all():  # the usual case, in one pass
        return np.ones(len(time), dtype=bool), []
    latest = np.maximum.accumulate(time)
    keep = np.ones(len(time), dtype=bool)
    keep[1:] = time[1:] > latest[:-1]
    n_out = len(time) - int(np.count_nonzero(keep))
    if n_out == 0:
        return keep, []
    out = np.flatnonzero(~keep)
    if n_out > MAX_OUT_OF_ORDER_FRACTION * len(time):
        first = out[0]
        raise CpapFileError(
            f"the time goes back at line {line_index[first] + 1} ({time[first]:.3f} s after "
            f"{latest[first - 1]:.3f} s) and {n_out} of {len(time)} samples are out of time order; "
            f"is this several recordings joined into one file?")
    skipped = [SkippedLine(int(line_index[i]) + 1,
                           f"time not increasing: {time[i]:.3f} s after {latest[i - 1]:.3f} s")
               for i in out]
    return keep, skipped


def read_samples(source: Source) -> Samples:
    """Read a CPAP recording into V1 pressures, skipping (and reporting) unusable lines.

    The lines after the header are parsed in parallel threads: a large clean file on disk
    in one call of pandas' parallel reader; anything else in pieces of about
    ``PARSE_PIECE_BYTES``, a piece whose every line is a sample in one call of pandas' C
    parser, any other piece by classifying its lines with NumPy on the raw bytes (no
    Python loop per line) and parsing only the good ones. So a few bad lines never force a
    slow path for the whole file.

    Samples must be in time order: a sample whose time is not later than every earlier
    sample (a repeated time or a step back) is skipped and reported with its line number;
    if more than 1 % of the samples are out of order the file is refused.

    Parameters
    ----------
    source : str, os.PathLike, bytes or file-like
        Path, content, or a binary or text file object (e.g. a web upload).

    Returns
    -------
    Samples
        ``time`` [s], ``p2``, ``p1_ins``, ``p1_exp`` [ADC units] and ``skipped_lines``.

    Raises
    ------
    CpapFileError
        Empty, binary, a line longer than ``MAX_ANY_LINE_BYTES``, without a single valid
        sample, or mostly out of time order.
    """
    with _Content.of(source) as content:
        head = content.read(0, 4096)
        if content.is_blank(head):
            raise CpapFileError("the recording is empty: no samples to analyse")
        if _looks_binary(head):
            raise CpapFileError("the file is not a CPAP text recording (it contains binary data)")
        with content.mapped() as buffer:  # before pandas sees any line
            long_lines = _check_line_lengths(buffer, content.size)
        parsed = _parse_content(content, long_lines)
    skipped = parsed.skipped
    time = parsed.columns[COL_TIME].astype(np.float64, copy=False)
    keep, out_of_order = _drop_out_of_order(time, parsed.line_index)
    columns = [time] + parsed.columns[COL_TIME + 1:]
    if out_of_order:
        skipped = sorted(skipped + out_of_order)
        columns = [c[keep] for c in columns]
    if skipped:
        log.warning("skipped %d unusable line(s), first: line %d: %s",
                    len(skipped), skipped[0].line_number, skipped[0].reason)
    for s in skipped[:MAX_LOGGED_LINES]:
        log.debug("skipped line %d: %s", s.line_number, s.reason)
    return Samples(*columns, skipped)


def _no_samples_message(skipped: list, n_bad: int) -> str:
    """Why a file has no sample, from (a sample of) its skipped lines."""
    if not skipped:
        return "no valid samples: the file holds only a header line"
    reasons = [s.reason for s in skipped]
    if all(r.startswith(("too few columns", "too many columns")) for r in reasons):
        return (f"no valid samples: every line has the wrong number of columns; a CPAP recording "
                f"has {N_COLUMNS} comma-separated values per line (e.g. line "
                f"{skipped[0].line_number}: {skipped[0].reason})")
    return (f"no valid samples: every one of the {n_bad} data lines is unusable "
            f"(e.g. line {skipped[0].line_number}: {skipped[0].reason})")


# --- Flow ---------------------------------------------------------------------------------
def adc_to_cmh2o(adc):
    """Convert ADC readings to pressure.

    Parameters
    ----------
    adc : array_like
        Pressure in ADC units.

    Returns
    -------
    numpy.ndarray
        Pressure, cmH2O (``25.4 / (14745 - 1638) * (adc - 1638)``).
    """
    return CMH2O_PER_ADC * (np.asarray(adc, dtype=np.float64) - ADC_OFFSET)


def venturi_flow(p2, p1_ins, p1_exp) -> np.ndarray:
    """Venturi flow from the V1 pressures.

    ``Q = A1 * sqrt(2 (p1 - p2) / (rho ((A1/A2)^2 - 1)))``; inspiratory (positive, p1 =
    p1-ins) where p1-ins >= p1-exp, otherwise expiratory (negative, p1 = p1-exp). A
    differential pressure slightly below zero (ADC noise around the offset) gives zero flow.

    Parameters
    ----------
    p2, p1_ins, p1_exp : array_like
        Throat, inspiratory-inlet and expiratory-inlet pressures, ADC units (or any unit
        with the same offset and scale).

    Returns
    -------
    numpy.ndarray
        Flow, m^3/s (inspiration positive).
    """
    p2, p1_ins, p1_exp = (np.asarray(p) for p in (p2, p1_ins, p1_exp))
    inspiratory = p1_ins >= p1_exp
    # The larger inlet pressure is the one of the flow's direction (p1-ins where
    # inspiratory). One new array, worked on in place: at 8 hours every extra copy of the
    # recording costs a pass over 23 MB and fresh memory.
    dp_adc = np.maximum(p1_ins, p1_exp, dtype=np.float64)
    np.subtract(dp_adc, p2, out=dp_adc)
    np.maximum(dp_adc, 0.0, out=dp_adc)
    flow = np.sqrt(dp_adc, out=dp_adc)
    flow *= FLOW_M3S_PER_SQRT_ADC
    np.negative(flow, out=flow, where=~inspiratory)
    return flow


# --- Breaths ------------------------------------------------------------------------------
def _median_of_5(blocks: np.ndarray) -> np.ndarray:
    """Row medians of an (n, 5) array with a min/max network (~10x faster than np.median)."""
    a, b, c, d, e = blocks.T
    low = np.maximum(np.minimum(a, b), np.minimum(c, d))
    high = np.minimum(np.maximum(a, b), np.maximum(c, d))
    return np.maximum(np.minimum(e, low), np.minimum(np.maximum(e, low), high))


def _block_mean(blocks: np.ndarray) -> np.ndarray:
    """Row means of an (n, DETECT_BLOCK) array: column by column, the same sums as
    ``mean(axis=1)`` at half its time (it reduces the short rows one by one)."""
    total = blocks[:, 0].copy()
    for column in range(1, blocks.shape[1]):
        total += blocks[:, column]
    total /= blocks.shape[1]
    return total


def _block_reduce(x: np.ndarray, how) -> np.ndarray:
    """Reduce consecutive blocks of DETECT_BLOCK samples (a shorter last block included)."""
    n = len(x) // DETECT_BLOCK * DETECT_BLOCK
    out = how(x[:n].reshape(-1, DETECT_BLOCK))
    if n < len(x):
        out = np.append(out, np.median(x[n:]))
    return out


def _windowed(x: np.ndarray, samples_per_window: int, statistic) -> np.ndarray:
    """A slowly varying level: ``statistic(windows, axis=1)`` of consecutive equal windows,
    interpolated between window centres (one vectorised call; cheap at 8 hours, unlike a
    sliding-window median). The last partial window joins the previous one."""
    n_win = len(x) // samples_per_window
    if n_win <= 1:
        return np.full(len(x), statistic(x[np.newaxis, :], axis=1)[0])
    full = x[: n_win * samples_per_window].reshape(n_win, samples_per_window)
    levels = statistic(full, axis=1)
    centres = (np.arange(n_win) + 0.5) * samples_per_window
    return np.interp(np.arange(len(x)), centres, levels)


def _peak_level(x: np.ndarray, axis: int) -> np.ndarray:
    return np.percentile(x, AMPLITUDE_PERCENTILE, axis=axis)


def detect_breaths(time, flow_lpm) -> np.ndarray:
    """Find breaths; return the time of each inspiratory peak.

    Method: 5-sample block median (removes single ADC-step spikes, 100 -> 20 Hz), 0.25 s
    centred moving average, a slowly varying no-flow baseline (30 s window medians, so a
    leak offset is followed), and hysteresis relative to the local typical inspiratory
    peak (98th percentile above baseline in 120 s windows): an inspiration starts above
    baseline + 25 % of it (at least 6 L/min, more than one ADC step, so quantization and
    cardiogenic ripple stay out) and ends below baseline + 10 % (at least 1.5 L/min), so a
    dip inside a double-humped inspiration does not split it and a weak expiration that is
    quantized to zero still ends it. Inspirations shorter than 0.12 s are discarded, peaks
    closer than 0.4 s are merged, an inspiration still open at the end is not counted.

    Parameters
    ----------
    time : array_like
        Sample times, s (100 Hz; gaps allowed).
    flow_lpm : array_like
        Flow, L/min, inspiration positive.

    Returns
    -------
    numpy.ndarray
        Inspiratory peak times, s, ascending.

    Raises
    ------
    ValueError
        If ``time`` and ``flow_lpm`` differ in length.
    """
    time = np.asarray(time, dtype=np.float64)
    flow_lpm = np.asarray(flow_lpm, dtype=np.float64)
    if time.shape != flow_lpm.shape:
        raise ValueError("time and flow_lpm must have the same length")
    if len(time) < 2 * DETECT_BLOCK:
        return np.zeros(0)
    t = _block_reduce(time, _block_mean)
    x = _block_reduce(flow_lpm, _median_of_5)
    dt = float(np.median(np.diff(t))) if len(t) > 1 else 0.05
    dt = dt if dt > 0 else 0.05
    x = ndimage.uniform_filter1d(x, max(1, round(SMOOTH_S / dt)), mode="nearest")
    above = x - _windowed(x, max(1, round(BASELINE_WINDOW_S / dt)), np.median)
    # thresholds follow the local breath size, so a night's drift in tidal volume is fine
    peak_scale = _windowed(above, max(1, round(AMPLITUDE_WINDOW_S / dt)), _peak_level)
    high = np.maximum(HIGH_FRACTION * peak_scale, MIN_HIGH_LPM)
    low = np.minimum(np.maximum(LOW_FRACTION * peak_scale, MIN_LOW_LPM), 0.5 * high)

    # Vectorised hysteresis: the state is the last threshold crossed (1 high, 0 low).
    event = np.full(len(above), -1, dtype=np.int8)
    event[above < low] = 0
    event[above > high] = 1
    idx = np.where(event >= 0, np.arange(len(event)), 0)
    np.maximum.accumulate(idx, out=idx)
    state = event[idx] == 1
    state[event[idx] < 0] = False
    edges = np.flatnonzero(np.diff(np.concatenate(([False], state, [False])).view(np.int8)))
    run_starts, run_ends = edges[::2], edges[1::2]
    closed = run_ends < len(above)  # an inspiration must be followed by the fall to baseline
    run_starts, run_ends = run_starts[closed], run_ends[closed]
    long_enough = (t[run_ends - 1] - t[run_starts]) >= MIN_INSPIRATION_S
    run_starts, run_ends = run_starts[long_enough], run_ends[long_enough]
    if len(run_starts) == 0:
        return np.zeros(0)
    peaks = _run_argmax(above, run_starts, run_ends)
    return _merge_close(t[peaks], above[peaks])


def _run_argmax(x: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Index of the (first) maximum of ``x`` in each run ``[starts[i], ends[i])``; runs are
    non-empty, ascending and disjoint, ``ends[i] < len(x)``. Vectorised: at 8 hours there
    are thousands of runs and a Python ``argmax`` per run cost a tenth of the analysis."""
    run_max = np.maximum.reduceat(x, np.column_stack((starts, ends)).ravel())[::2]
    lengths = ends - starts
    run_of = np.repeat(np.arange(len(starts)), lengths)
    index = np.arange(len(run_of)) - np.repeat(np.cumsum(lengths) - lengths, lengths) + starts[run_of]
    at_max = np.flatnonzero(x[index] == run_max[run_of])
    first = at_max[np.unique(run_of[at_max], return_index=True)[1]]
    return index[first]


def _merge_close(peak_times: np.ndarray, peak_heights: np.ndarray) -> np.ndarray:
    """Merge peaks closer than MIN_BREATH_INTERVAL_S, keeping the higher one."""
    if (np.diff(peak_times) >= MIN_BREATH_INTERVAL_S).all():  # the usual case: nothing to merge
        return peak_times
    keep_t, keep_h = [peak_times[0]], [peak_heights[0]]
    for t, h in zip(peak_times[1:], peak_heights[1:]):
        if t - keep_t[-1] < MIN_BREATH_INTERVAL_S:
            if h > keep_h[-1]:
                keep_t[-1], keep_h[-1] = t, h
        else:
            keep_t.append(t)
            keep_h.append(h)
    return np.array(keep_t)


def find_apneas(breath_times, gap_s: float = APNEA_GAP_S) -> list:
    """Apnea events: gaps of more than ``gap_s`` between consecutive breaths.

    Parameters
    ----------
    breath_times : array_like
        Breath (inspiratory peak) times, s, ascending.
    gap_s : float
        Minimum gap, s (exclusive).

    Returns
    -------
    list of ApneaEvent
        One event per gap, from the earlier to the later breath.
    """
    bt = np.asarray(breath_times, dtype=np.float64)
    if len(bt) < 2:
        return []
    gaps = np.diff(bt)
    return [ApneaEvent(float(bt[i]), float(bt[i + 1]), float(gaps[i]))
            for i in np.flatnonzero(gaps > gap_s)]


def leakage_litres(time, flow_m3s) -> float:
    """Net volume through the mask, L: trapezoidal integral of flow (inspiration positive).

    Parameters
    ----------
    time : array_like
        Sample times, s.
    flow_m3s : array_like
        Flow, m^3/s.
    """
    time = np.asarray(time, dtype=np.float64)
    flow_m3s = np.asarray(flow_m3s, dtype=np.float64)
    if len(time) < 2:
        return 0.0
    # the trapezoid rule as two dot products: no temporaries of the recording's length
    # but the time steps (np.trapezoid makes four)
    dt_s = np.diff(time)
    return float((dt_s @ flow_m3s[:-1] + dt_s @ flow_m3s[1:]) / 2 * M3_TO_L)


# --- Composition -------------------------------------------------------------------------
def analyze(source: Source) -> AnalysisResult:
    """Analyse a CPAP recording.

    Parameters
    ----------
    source : str, os.PathLike, bytes or file-like
        Path of the recording, its content, or a binary/text file object.

    Returns
    -------
    AnalysisResult

    Raises
    ------
    CpapFileError
        The file is empty, binary, has a line longer than ``MAX_ANY_LINE_BYTES``, no
        valid sample, or less than ``MIN_DURATION_S`` of data.
    """
    samples = read_samples(source)
    time = samples.time
    duration_s = float(time[-1] - time[0]) if len(time) else 0.0
    if duration_s < MIN_DURATION_S:
        raise CpapFileError(f"the recording is too short: {duration_s:.1f} s of valid data, "
                            f"at least {MIN_DURATION_S:.0f} s are needed")
    flow = venturi_flow(samples.p2, samples.p1_ins, samples.p1_exp)
    flow_lpm = flow * M3S_TO_LPM
    breath_times = detect_breaths(time, flow_lpm)
    apneas = find_apneas(breath_times)
    return AnalysisResult(
        duration=duration_s,
        breaths=int(len(breath_times)),
        breath_rate_bpm=60.0 * len(breath_times) / duration_s,
        breath_times=breath_times,
        apnea_count=len(apneas),
        apnea_events=apneas,
        ahi=3600.0 * len(apneas) / duration_s,
        leakage=leakage_litres(time, flow),
        time=time,
        flow=flow,
        skipped_lines=samples.skipped_lines,
        flow_lpm=flow_lpm,
    )


def analysis_driver(path):
    """Legacy entry point: ``(breath_rate_bpm, apnea_count, time [s], flow [m^3/s])``."""
    result = analyze(path)
    return result.breath_rate_bpm, result.apnea_count, result.time, result.flow


# --- Plot -------------------------------------------------------------------------------
def _envelope(time: np.ndarray, values: np.ndarray, columns: int = PLOT_MAX_COLUMNS):
    """Min/max envelope for drawing long recordings without losing any extreme.

    Returns
    -------
    bin_time, low, high : numpy.ndarray or None
        Start time, minimum and maximum of each of at most ``columns`` bins; ``None`` when
        the signal is short enough to draw every sample.
    """
    if len(values) <= 2 * columns:
        return None
    edges = np.unique(np.linspace(0, len(values), columns + 1).astype(np.int64)[:-1])
    return time[edges], np.minimum.reduceat(values, edges), np.maximum.reduceat(values, edges)


def flow_axis_range(flow_lpm: np.ndarray) -> tuple[float, float]:
    """The flow axis (L/min): FLOW_PLOT_RANGE_LPM, widened in FLOW_PLOT_STEP_LPM steps
    only as far as a flow outside it needs."""
    low, high = FLOW_PLOT_RANGE_LPM
    if len(flow_lpm):
        step = FLOW_PLOT_STEP_LPM
        low = min(low, math.floor(float(flow_lpm.min()) / step) * step)
        high = max(high, math.ceil(float(flow_lpm.max()) / step) * step)
    return low, high


def flow_plot_png(result: AnalysisResult, width_px: int = 1200, height_px: int = 450) -> bytes:
    """Render flow (L/min) against time (s) with breaths and apneas as a PNG.

    Uses matplotlib's object-oriented API on an Agg canvas (no pyplot state, thread safe).

    Parameters
    ----------
    result : AnalysisResult
    width_px, height_px : int
        Image size, pixels.

    Returns
    -------
    bytes
        PNG image.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    small_pt = PLOT_FONT_PT - 2
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    flow_lpm = result.flow_lpm
    envelope = _envelope(result.time, flow_lpm, min(PLOT_MAX_COLUMNS, width_px))
    if envelope is None:
        ax.plot(result.time, flow_lpm, color=FLOW_COLOUR, linewidth=0.7, label="flow")
    else:  # a filled min/max band draws far faster than a zig-zag line through the extremes
        ax.fill_between(*envelope, color=FLOW_COLOUR, linewidth=0.5, label="flow (min/max)")
    for i, event in enumerate(result.apnea_events):
        ax.axvspan(event.start, event.end, color="#d62728", alpha=0.18,
                   label="apnea (> 10 s)" if i == 0 else None)
    if len(result.breath_times):
        # at the sample nearest each peak (np.interp into a night of samples costs ~6 ms)
        nearest = np.minimum(np.searchsorted(result.time, result.breath_times), len(result.time) - 1)
        ax.plot(result.breath_times, flow_lpm[nearest], linestyle="none", marker="v", markersize=4,
                color="#2ca02c", label="breath")
    ax.axhline(0.0, color="0.6", linewidth=0.5)
    ax.set_xlabel("time (s)", fontsize=PLOT_FONT_PT)
    ax.set_ylabel("flow (L/min)", fontsize=PLOT_FONT_PT)
    ax.tick_params(labelsize=small_pt)
    # y given: matplotlib then skips measuring every artist to place the title (~6 ms)
    ax.set_title(loc="left", y=1.0, fontsize=PLOT_FONT_PT,
                 label=f"{result.breaths} breaths, {result.breath_rate_bpm:.1f} /min, "
                 f"{result.apnea_count} apnea{'s' if result.apnea_count != 1 else ''} "
                 f"in {result.duration:.0f} s")
    if len(result.time):
        ax.set_xlim(result.time[0], result.time[-1])
    ax.set_ylim(*flow_axis_range(flow_lpm))
    ax.grid(True, linewidth=0.3, alpha=0.5)
    # legend above the axes: inside it would hide peaks at the end of the recording
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, fontsize=small_pt,
              frameon=False, handlelength=1.2, columnspacing=1.0)
    fig.subplots_adjust(left=0.085, right=0.985, bottom=0.16, top=0.88)
    out = io.BytesIO()
    fig.savefig(out, format="png", pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return out.getvalue()


# --- CLI --------------------------------------------------------------------------------
def _summary(result: AnalysisResult) -> str:
    lines = [
        f"duration        {result.duration:.1f} s",
        f"breaths         {result.breaths}",
        f"breath rate     {result.breath_rate_bpm:.1f} /min",
        f"apneas          {result.apnea_count} (AHI {result.ahi:.1f} /h)",
    ]
    lines += [f"  apnea         {e.start:.1f} - {e.end:.1f} s ({e.duration:.1f} s)"
              for e in result.apnea_events]
    lines.append(f"leakage         {result.leakage:.3f} L")
    lines.append(f"skipped lines   {len(result.skipped_lines)}")
    lines += [f"  line {s.line_number}: {s.reason}" for s in result.skipped_lines[:10]]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Command line: print the metrics of a recording (``--json``), optionally save a plot."""
    parser = argparse.ArgumentParser(description="Analyse a CPAP venturi recording.")
    parser.add_argument("file", help="recording (text, header + 7 comma-separated columns)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--plot", metavar="OUT.png", help="write the flow plot to this PNG file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s: %(message)s")
    try:
        result = analyze(args.file)
    except CpapFileError as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(_summary(result))
    if args.plot:
        with open(args.plot, "wb") as fh:
            fh.write(flow_plot_png(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
