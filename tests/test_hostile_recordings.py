"""Hostile recordings: over-long lines, millions of fields, no line ends, huge numbers.

Each file is refused with a CpapFileError that names the offending line, from memory and
from disk (a file of 8 MB or more is tried first by pandas' whole-file reader), before
pandas ever sees the line. Before the fix, ``b"1," * 5_000_000`` after a header pinned a
worker for 20+ minutes (pandas made its extra fields a 5-million-level index), and a
100 MB single line took 2 minutes and 8 GB. The inputs are big enough to have hung; the
tests do not assert a time (benchmarks/bench_hostile.py measures it).
"""
from __future__ import annotations

import os

import pytest

import cpap_measurements as cm
from sleeplab.analysis import reader
from tools.cpap_synth import HEADER

LIMIT = reader.MAX_ANY_LINE_BYTES


def samples(n: int, t0_s: float = 0.0) -> bytes:
    """``n`` good sample lines at 100 Hz from ``t0_s``."""
    return b"".join(b"%.2f,5000,5000,1638,5150,5150,1638\n" % (t0_s + i / 100) for i in range(n))


GOOD = HEADER.encode() + b"\n" + samples(1000)  # lines 1-1001
AFTER = samples(1000, 10.0)

# name: (content, line number in the message, pattern after it)
SHAPES = {
    "5m fields after a header": (HEADER.encode() + b"\n" + b"1," * 5_000_000 + b"\n" + samples(10), 2,
                                 r"'1,1,1,1"),
    "5m fields, no header": (b"1," * 5_000_000, 1, r"'1,1,1"),
    "10m empty fields": (b"," * 10**7, 1, r"',,,,"),
    "one 10 MB number": (b"1" * 10_000_000, 1, r"'1111"),
    "no line end at all": (b"0.00,5000,5000,1638,5150,5150,1638 " * 300_000, 1, r"'0\.00,5000"),
    "1 MB header": (b"T" * 1_000_000 + b"\n" + samples(1000), 1, r"'TTTT"),
    "CR-only line ends": (GOOD.replace(b"\n", b"\r") * 20, 1, r"CR only"),
    "NUL tail": (GOOD + b"\x00" * 10_000_000, 1002, r"'\\x00\\x00"),
    "giant line in the middle": (GOOD + b"1," * 5_000_000 + b"\n" + AFTER, 1002, r"'1,1,1"),
    "giant line at the end": (GOOD + b"1" * 10_000_000, 1002, r"'1111"),
    "20000-digit numbers": (HEADER.encode() + b"\n" + b"".join(
        b"%d.00,%s,5000,1638,5150,5150,1638\n" % (i, b"9" * 20_000) for i in range(600)), 2, r"'0\.00,9999"),
    "line just over the limit": (GOOD + b"7" * (LIMIT + 1) + b"\n" + AFTER, 1002, r"'7777"),
}


@pytest.fixture(params=["memory", "file"])
def analyze_as(request, tmp_path):
    """analyze() of content from memory (an upload) or from a file on disk."""
    def run(content: bytes):
        if request.param == "memory":
            return cm.analyze(content)
        path = tmp_path / "recording.txt"
        path.write_bytes(content)
        return cm.analyze(path)
    return run


@pytest.mark.parametrize("shape", list(SHAPES))
def test_over_long_line_refuses_the_file_naming_the_line(shape, analyze_as):
    content, line, pattern = SHAPES[shape]
    with pytest.raises(reader.CpapFileError, match=rf"^line {line} is longer than {LIMIT:,} characters"
                                               rf".*{pattern}"):
        analyze_as(content)


def test_line_at_the_limit_is_only_skipped(analyze_as):
    """A line of exactly the limit is a bad line like any other: skipped and reported."""
    content = GOOD + b"7" * LIMIT + b"\n" + AFTER
    result = analyze_as(content)
    assert [(s.line_number, s.reason.split(" (")[0]) for s in result.skipped_lines] == [
        (1002, "too few columns")]
    assert len(result.time) == 2000


def test_long_lines_below_the_limit_do_not_stop_the_analysis(analyze_as):
    """Lines of thousands of fields or digits, below the limit, are skipped with their
    reason; the samples around them are read."""
    many_fields = b"1," * 5000 + b"1"
    huge_number = b"0.5," + b"9" * 5000 + b",5000,1638,5150,5150,1638"
    content = GOOD + many_fields + b"\n" + huge_number + b"\n" + AFTER
    result = analyze_as(content)
    assert [(s.line_number, s.reason.split(":")[0]) for s in result.skipped_lines] == [
        (1002, "too many columns (5001 of 7)"), (1003, "invalid number")]
    assert len(result.time) == 2000


@pytest.mark.parametrize("n_fields", [8, 2000])
def test_extra_fields_on_the_first_data_line_never_become_an_index(n_fields, tmp_path, monkeypatch):
    """pandas makes extra fields on a first line an index of that many levels for every
    row (2,000 fields and 200,000 rows: 40 s). The reader never lets it, neither in the
    whole-file call (a file of 8 MB or more) nor in a piece: every frame pandas returns
    has a plain row index, and the line is skipped as any line with too many columns."""
    first = b",".join([b"0.00"] + [b"5000"] * (n_fields - 1))
    content = HEADER.encode() + b"\n" + first + b"\n" + samples(250_000, 0.01)
    path = tmp_path / "recording.txt"
    path.write_bytes(content)
    assert path.stat().st_size > reader.CLEAN_FILE_MIN_BYTES
    indexes = []
    read_csv = reader.pd.read_csv

    def spy(*args, **kwargs):
        frame = read_csv(*args, **kwargs)
        indexes.append(type(frame.index).__name__)
        return frame

    monkeypatch.setattr(reader.pd, "read_csv", spy)
    for source in (path, content):
        result = reader.read_samples(source)
        assert [(s.line_number, s.reason.split(":")[0]) for s in result.skipped_lines] == [
            (2, f"too many columns ({n_fields} of 7)")]
        assert len(result.time) == 250_000
    assert indexes and set(indexes) == {"RangeIndex"}


@pytest.fixture
def whole_file_calls(monkeypatch):
    """The paths pandas' whole-file reader was given (pieces are passed as byte streams)."""
    calls = []
    read_csv = reader.pd.read_csv

    def spy(source, *args, **kwargs):
        if isinstance(source, (str, bytes, os.PathLike)):
            calls.append(source)
        return read_csv(source, *args, **kwargs)

    monkeypatch.setattr(reader.pd, "read_csv", spy)
    return calls


def test_lines_of_long_numbers_skip_the_whole_file_call(tmp_path, whole_file_calls):
    """pandas converts a 2,000-digit number ~100x slower than a sample's bytes (a 200 MB
    file of them: 10 s); a file with such lines goes straight to the pieces."""
    huge = b",".join([b"9" * 2000] * 7) + b"\n"
    path = tmp_path / "recording.txt"
    path.write_bytes(HEADER.encode() + b"\n" + samples(1000) + huge * 700)
    assert path.stat().st_size > reader.CLEAN_FILE_MIN_BYTES
    result = cm.analyze(path)
    assert whole_file_calls == []
    assert len(result.skipped_lines) == 700 and result.skipped_lines[0].line_number == 1002
    assert result.skipped_lines[0].reason.startswith("invalid number")


def test_a_long_header_keeps_the_whole_file_call(tmp_path, whole_file_calls):
    path = tmp_path / "recording.txt"
    path.write_bytes(b"Time [s]" + b" " * 1000 + b"\n" + samples(250_000))
    result = cm.analyze(path)
    assert whole_file_calls == [path] and result.skipped_lines == []
