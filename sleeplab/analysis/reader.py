"""The CPAP file reader: a recording's bytes, path or stream -> validated samples.

A recording is a text file with one header line and one line per sample (100 Hz) of 7
comma-separated values: time [s], V1 p2, V1 p1-ins, V1 p1-exp, V2 p2, V2 p1-ins, V2 p1-exp
(pressures in ADC units). :func:`read_samples` returns the time and the three V1 pressures
of every usable line, in time order; :mod:`cpap_measurements` turns them into flow, breaths
and metrics.

Every unusable input raises :class:`CpapFileError` (a ``ValueError``) whose message is
meant for a clinician. Lines that cannot be read are skipped, logged and reported as
:class:`SkippedLine` with their 1-based file line number and the reason.
"""
from __future__ import annotations

import contextlib
import csv
import io
import itertools
import logging
import mmap
import os
import re
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, NamedTuple, TextIO, Union

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)
# A text column in a file pandas reads whole is a bad line the pieces then report; pandas'
# advice on mixed types would only be noise.
warnings.filterwarnings("ignore", category=pd.errors.DtypeWarning, module=__name__)

# --- File format ----------------------------------------------------------------------
N_COLUMNS = 7
COL_TIME, COL_P2, COL_P1_INS, COL_P1_EXP = 0, 1, 2, 3

Source = Union[str, "os.PathLike[str]", bytes, bytearray, BinaryIO, TextIO]


class CpapFileError(ValueError):
    """The recording cannot be analysed; the message says why, for a clinician."""


class SkippedLine(NamedTuple):
    """A line of the file that was not used: 1-based file line number and the reason."""

    line_number: int
    reason: str


class Samples(NamedTuple):
    """Valid samples of a recording: time [s] and the three V1 pressures [ADC units]."""

    time: np.ndarray
    p2: np.ndarray
    p1_ins: np.ndarray
    p1_exp: np.ndarray
    skipped_lines: list


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


def _drop_out_of_order(time: np.ndarray, line_index, after_s: float = -np.inf,
                       what: str = "file"):
    """Mask of samples to keep under the time-order rule, and the skipped lines.

    A sample is kept only if its time is later than every sample before it (and than
    ``after_s``, the last sample of the chunks before, s); a repeated time or a step back
    is skipped and reported. If more than ``MAX_OUT_OF_ORDER_FRACTION`` of the samples
    would go, the ``what`` ("file" or "chunk") is refused: that is no clock glitch but e.g.
    two recordings joined, and dropping half a night quietly is worse.
    """
    if len(time) == 0 or (time[0] > after_s and (time[1:] > time[:-1]).all()):  # usual: one pass
        return np.ones(len(time), dtype=bool), []
    # latest[i]: the latest time before sample i
    latest = np.maximum.accumulate(np.concatenate(([after_s], time)))[:-1]
    keep = time > latest
    n_out = len(time) - int(np.count_nonzero(keep))
    if n_out == 0:
        return keep, []
    out = np.flatnonzero(~keep)
    if n_out > MAX_OUT_OF_ORDER_FRACTION * len(time):
        first = out[0]
        raise CpapFileError(
            f"the time goes back at line {line_index[first] + 1} ({time[first]:.3f} s after "
            f"{latest[first]:.3f} s) and {n_out} of {len(time)} samples are out of time order; "
            f"is this several recordings joined into one {what}?")
    skipped = [SkippedLine(int(line_index[i]) + 1,
                           f"time not increasing: {time[i]:.3f} s after {latest[i]:.3f} s")
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


def read_chunk(source: Source, allow_header: bool = False, after_s: float | None = None) -> Samples:
    """Read one streamed piece of a recording: whole sample lines, without the file's rules
    on a whole night.

    The lines are read as :func:`read_samples` reads a file's (a bad line is skipped and
    reported), but a chunk may be empty, a header is taken only where ``allow_header`` (the
    first chunk of a night), and line numbers count from the chunk's first line (1-based).

    Parameters
    ----------
    source : str, os.PathLike, bytes or file-like
        The chunk's lines (recording format, 7 columns).
    allow_header : bool
        Whether a first line that is no sample is the recording's header (else it is a
        skipped bad line).
    after_s : float, optional
        Time of the night's last sample so far, s: a sample not later than it is skipped
        (out of time order, as in a file).

    Returns
    -------
    Samples
        ``time`` [s], ``p2``, ``p1_ins``, ``p1_exp`` [ADC units] and ``skipped_lines``
        (chunk line numbers); empty arrays for an empty or blank chunk.

    Raises
    ------
    CpapFileError
        Binary content, a line longer than ``MAX_ANY_LINE_BYTES``, lines of which none is a
        sample (naming one), or more than 1 % of the samples out of time order (naming the
        first) -- each message names the chunk line.
    """
    data = read_bytes(source)
    if not data.strip():
        empty = np.zeros(0)
        return Samples(empty, empty.astype(np.int64), empty.astype(np.int64),
                       empty.astype(np.int64), [])
    if _looks_binary(data[:4096]):
        raise CpapFileError("the chunk is not CPAP text (it contains binary data)")
    _check_line_lengths(data, len(data))
    header_lines = 0
    if allow_header:
        header_end = data.find(b"\n") + 1 or len(data)
        header_lines = int(not _scan_chunk(data[:header_end])[2][0])
    body = data[data.find(b"\n") + 1:] if header_lines else data
    piece = _parse_piece(body) if body.strip() else _parse_piece(b"")
    skipped = [SkippedLine(int(i) + header_lines + 1, _reason(piece.data, s, e))
               for i, s, e in zip(piece.bad_index, piece.bad_starts, piece.bad_ends)]
    if len(piece.line_index) == 0:
        if not skipped:  # the header alone
            return read_chunk(b"")
        raise CpapFileError("the chunk has " + _no_samples_message(skipped, len(skipped)))
    time = piece.columns[COL_TIME].astype(np.float64, copy=False)
    keep, out_of_order = _drop_out_of_order(time, piece.line_index + header_lines,
                                            -np.inf if after_s is None else after_s, "chunk")
    columns = [time] + piece.columns[COL_TIME + 1:]
    if out_of_order:
        skipped = sorted(skipped + out_of_order)
        columns = [c[keep] for c in columns]
    return Samples(*columns, skipped)
