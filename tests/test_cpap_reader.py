"""Reader robustness: the time-order rule and a Hypothesis property test of read_samples.

The property test builds files from random mixes of good sample lines and every kind of
bad line (with random header, LF or CRLF, with or without a final newline) and checks the
reader against what was written: the skipped lines are exactly the bad lines with their
1-based numbers, the good samples come back with their exact values, and nothing but
CpapFileError is ever raised.
"""
from __future__ import annotations

import os
import re
import tempfile
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cpap_measurements as cm
from sleeplab.analysis import reader
from tools.cpap_synth import HEADER

ADC = st.integers(min_value=0, max_value=16383)


def lines_to_bytes(lines, newline="\n", final_newline=True) -> bytes:
    text = newline.join(lines) + (newline if final_newline else "")
    return text.encode()


def sample_line(t_s: float, adc=(5000, 5000, 1638, 5150, 5150, 1638), decimals=3) -> str:
    return ",".join([f"{t_s:.{decimals}f}"] + [str(v) for v in adc])


def zero_flow_lines(times_s):
    return [HEADER] + [sample_line(t) for t in times_s]


# --- time order -------------------------------------------------------------------------------
def test_repeated_time_is_skipped_and_reported():
    times = [i / 100 for i in range(600)]
    times[300] = times[299]  # the logger wrote the same time twice
    samples = reader.read_samples(lines_to_bytes(zero_flow_lines(times)))
    assert [s.line_number for s in samples.skipped_lines] == [302]  # header is line 1
    assert samples.skipped_lines[0].reason == "time not increasing: 2.990 s after 2.990 s"
    assert len(samples.time) == 599
    assert np.all(np.diff(samples.time) > 0)


def test_time_going_back_skips_until_it_passes_the_latest_time():
    times = [i / 100 for i in range(600)]
    times[400:403] = [3.5, 3.6, 3.7]  # back from 3.99 s for three samples, then on at 4.03
    samples = reader.read_samples(lines_to_bytes(zero_flow_lines(times)))
    assert [s.line_number for s in samples.skipped_lines] == [402, 403, 404]
    assert all(s.reason.startswith("time not increasing: ") and s.reason.endswith("after 3.990 s")
               for s in samples.skipped_lines)
    np.testing.assert_array_equal(samples.time, np.delete(np.array(times), [400, 401, 402]))


def test_time_order_skips_merge_with_bad_lines_in_line_order():
    lines = zero_flow_lines([i / 100 for i in range(600)])
    lines[10] = "bad data"
    lines[20] = sample_line(0.05)  # back in time
    samples = reader.read_samples(lines_to_bytes(lines, newline="\r\n"))
    assert [(s.line_number, s.reason.split(":")[0]) for s in samples.skipped_lines] == [
        (11, "not a number"), (21, "time not increasing")]


def test_joined_recordings_are_refused_naming_the_line():
    first = [i / 100 for i in range(600)]
    lines = zero_flow_lines(first + first)  # a second recording appended, clock restarted
    with pytest.raises(reader.CpapFileError, match=r"time goes back at line 602 \(0\.000 s after 5\.990 s\)"):
        reader.read_samples(lines_to_bytes(lines))


def test_out_of_order_limit_is_one_percent():
    times = [i / 100 for i in range(1000)]
    for i in range(100, 1000, 100):  # 9 repeats of 1000 samples: under 1 %, kept going
        times[i] = times[i - 1]
    assert len(reader.read_samples(lines_to_bytes(zero_flow_lines(times))).skipped_lines) == 9
    times[950] = times[949]  # 11 of 1000: refused
    times[50] = times[49]
    with pytest.raises(reader.CpapFileError, match="11 of 1000 samples are out of time order"):
        reader.read_samples(lines_to_bytes(zero_flow_lines(times)))


def test_analyze_reports_time_order_skips(tmp_path):
    times = [i / 100 for i in range(1000)]
    times[500] = times[499]
    path = tmp_path / "r.txt"
    path.write_bytes(lines_to_bytes(zero_flow_lines(times)))
    result = cm.analyze(path)
    assert result.to_dict()["skipped_lines"] == [
        {"line": 502, "reason": "time not increasing: 4.990 s after 4.990 s"}]
    assert result.duration == pytest.approx(9.99)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.01, -0.01, -1.0, 0.5]), min_size=20, max_size=200))
def test_time_order_property(steps):
    """Kept samples are exactly those later than every earlier one (a plain-loop oracle),
    or the file is refused when more than 1 % would go."""
    times = np.round(np.cumsum([1.0] + [s if s else 0.0 for s in steps]) * 100) / 100
    kept, skipped, latest = [], [], -np.inf
    for i, t in enumerate(times):
        (kept if t > latest else skipped).append(i)
        latest = max(latest, t)
    content = lines_to_bytes([HEADER] + [sample_line(t) for t in times])
    if len(skipped) > 0.01 * len(times):
        with pytest.raises(reader.CpapFileError, match="out of time order"):
            reader.read_samples(content)
        return
    samples = reader.read_samples(content)
    assert [s.line_number for s in samples.skipped_lines] == [i + 2 for i in skipped]
    np.testing.assert_array_equal(samples.time, times[kept])


# --- property test of the reader -------------------------------------------------------------
def read_as(content: bytes, piece_bytes: int, from_file: bool, whole_file: bool = False):
    """read_samples of ``content`` from memory or from a file, in pieces of ``piece_bytes``
    (a file is read by byte range: its line-end search window is made tiny as well), or,
    ``whole_file``, a file tried first in one pandas call as large clean files are."""
    with mock.patch.object(reader, "PARSE_PIECE_BYTES", piece_bytes), \
            mock.patch.object(reader, "_LINE_END_WINDOW_BYTES", 7), \
            mock.patch.object(reader, "CLEAN_FILE_MIN_BYTES", 0 if whole_file else reader.CLEAN_FILE_MIN_BYTES):
        if not from_file:
            return reader.read_samples(content)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "recording.txt")
            with open(path, "wb") as fh:
                fh.write(content)
            return reader.read_samples(path)


@st.composite
def good_values(draw):
    return tuple(draw(ADC) for _ in range(6))


def _fields(draw, n):
    return [str(draw(ADC)) for _ in range(n)]


@st.composite
def bad_line(draw):
    """(text, reason pattern) of one unusable line of any kind seen in real files."""
    kind = draw(st.sampled_from(["nan", "text", "empty", "few", "many", "blank", "invalid"]))
    fields = ["1.000"] + _fields(draw, 6)
    pos = draw(st.integers(0, 6))
    if kind == "nan":
        fields[pos] = draw(st.sampled_from(["NaN", "nan", "inf"]))
        return ",".join(fields), "not a number"
    if kind == "text":
        fields[pos] = draw(st.sampled_from(["bad data", "ERR", "x", "1e3", "#"]))
        return ",".join(fields), "not a number"
    if kind == "empty":
        fields[pos] = ""
        return ",".join(fields), "empty field"
    if kind == "few":
        n = draw(st.integers(2, 6))
        return ",".join(fields[:n]), rf"too few columns \({n} of 7\)"
    if kind == "many":
        n = draw(st.integers(8, 12))
        return ",".join(fields + _fields(draw, n - 7)), rf"too many columns \({n} of 7\)"
    if kind == "blank":
        return draw(st.sampled_from(["", " ", "   ", "\t"])), "blank line"
    # only time and the V1 pressures are parsed: a malformed V2 number does not matter
    fields[draw(st.integers(0, 3))] = draw(st.sampled_from(["1.2.3", "--5", ".", "+", "5-"]))
    return ",".join(fields), "invalid number"


HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kinds=st.lists(st.booleans(), min_size=1, max_size=60),  # True: a good line
    data=st.data(),
    header=st.one_of(st.none(), HEADER_TEXT.map(lambda text: "Time" + text)),
    newline=st.sampled_from(["\n", "\r\n"]),
    final_newline=st.booleans(),
    decimals=st.sampled_from([2, 3, 6]),
    # the default, and pieces of a line or a few lines (so several pieces, parsed in threads,
    # some clean and some scanned, must join with the right line numbers)
    piece_bytes=st.sampled_from([reader.PARSE_PIECE_BYTES, 1, 40, 97, 300]),
    from_file=st.sampled_from(["memory", "file", "whole file"]),
)
def test_read_samples_property(kinds, data, header, newline, final_newline, decimals,
                               piece_bytes, from_file):
    if header is None:
        kinds[0] = True  # without a header an unusable first line is taken as the header
    lines = [] if header is None else [header]
    good, bad = [], []  # (1-based line, expected values) and (line, reason pattern)
    t_s = data.draw(st.integers(0, 10**7), label="t0 (10 ms)") / 100
    for is_good in kinds:
        if is_good:
            t_s += 0.01
            adc = data.draw(good_values(), label="adc")
            text = sample_line(t_s, adc, decimals)
            good.append((len(lines) + 1, float(text.split(",")[0]), adc[:3]))
        else:
            text, reason = data.draw(bad_line(), label="bad")
            bad.append((len(lines) + 1, reason))
        lines.append(text)
    if not final_newline and not lines[-1].strip():
        final_newline = True  # a blank last line only exists with a newline after the one before
    content = lines_to_bytes(lines, newline, final_newline)

    try:
        samples = read_as(content, piece_bytes, from_file != "memory", from_file == "whole file")
    except reader.CpapFileError:
        assert not good
        return
    assert [s.line_number for s in samples.skipped_lines] == [n for n, _ in bad]
    for s, (_, reason) in zip(samples.skipped_lines, bad):
        assert re.match(reason, s.reason), (s, reason)
    np.testing.assert_array_equal(samples.time, [t for _, t, _ in good])
    got = np.column_stack([samples.p2, samples.p1_ins, samples.p1_exp])
    np.testing.assert_array_equal(got, np.array([adc for _, _, adc in good]).reshape(-1, 3))


# --- the one-call parse of clean pieces and the line scan agree ---------------------------------
CLEAN = [sample_line(0.01 * i) for i in range(1, 6)]


@pytest.fixture(params=["memory", "file", "whole file"])
def read(request):
    """read_samples of some content, from each kind of source and path through the reader."""
    return lambda content: read_as(content, reader.PARSE_PIECE_BYTES, request.param != "memory",
                                   request.param == "whole file")


@pytest.mark.parametrize("with_bad_line", [False, True], ids=["clean", "scanned"])
def test_bare_cr_is_not_a_line_end(with_bad_line, read):
    """pandas ends a line at a bare CR; the file's lines end at LF, so two samples joined by
    a CR are one line with too many columns, in either path."""
    lines = [HEADER, CLEAN[0] + "\r" + CLEAN[1]] + CLEAN[2:] + (["bad data"] if with_bad_line else [])
    samples = read(lines_to_bytes(lines))
    assert [s.line_number for s in samples.skipped_lines][:1] == [2]
    assert samples.skipped_lines[0].reason.startswith("too many columns (13 of 7)")
    np.testing.assert_allclose(samples.time, [0.03, 0.04, 0.05])


@pytest.mark.parametrize("with_bad_line", [False, True], ids=["clean", "scanned"])
def test_blanks_inside_fields_are_read_alike(with_bad_line, read):
    """Spaces, tabs, vertical tabs and form feeds around a number are skipped by pandas'
    number parser, so the line scan allows them too."""
    lines = [HEADER, "0.01, 5000 ,\t5010,\v1638\f,1,2,3"] + CLEAN[1:]
    lines += ["bad data"] if with_bad_line else []
    samples = read(lines_to_bytes(lines))
    assert [s.line_number for s in samples.skipped_lines] == ([7] if with_bad_line else [])
    assert (samples.p2[0], samples.p1_ins[0], samples.p1_exp[0]) == (5000, 5010, 1638)


def test_exponent_in_time_is_refused_although_pandas_reads_it(read):
    samples = read(lines_to_bytes([HEADER, "1e-2,5000,5000,1638,1,2,3"] + CLEAN[1:]))
    assert samples.skipped_lines == [reader.SkippedLine(2, "not a number: '1e-2,5000,5000,1638,1,2,3'")]


def test_extra_field_on_the_first_sample_line_is_not_taken_as_an_index(read):
    samples = read(lines_to_bytes([HEADER, CLEAN[0] + ",7"] + CLEAN[1:]))
    assert [s.line_number for s in samples.skipped_lines] == [2]
    assert samples.skipped_lines[0].reason.startswith("too many columns (8 of 7)")


def test_pieces_are_parsed_in_threads_and_joined_in_order(tmp_path, monkeypatch):
    """A file of many pieces (read by byte range in the parse threads) gives the same
    samples and line numbers as one piece from memory."""
    lines = [HEADER] + [sample_line(0.01 * i, (5000 + i % 7, 5000, 1638, i, 2, 3)) for i in range(1, 5001)]
    for i in (17, 2500, 4999):
        lines[i] = "bad data"
    content = lines_to_bytes(lines, "\r\n")
    path = tmp_path / "recording.txt"
    path.write_bytes(content)
    whole = reader.read_samples(content)
    monkeypatch.setattr(reader, "PARSE_PIECE_BYTES", 4096)
    threads = []
    real_map = reader._map_pieces
    monkeypatch.setattr(reader, "_map_pieces",
                        lambda content, ranges: threads.append(len(ranges)) or real_map(content, ranges))
    pieces = reader.read_samples(path)
    assert threads[0] > 20  # ~45 bytes a line
    assert pieces.skipped_lines == whole.skipped_lines == [
        reader.SkippedLine(i + 1, "not a number: 'bad data'") for i in (17, 2500, 4999)]
    for name in ("time", "p2", "p1_ins", "p1_exp"):
        np.testing.assert_array_equal(getattr(pieces, name), getattr(whole, name))
    assert len(whole.time) == 4997


BIG_BAD = {  # (line, reason) of each kind of bad line, none with a letter (those are seen
    # before pandas runs); {t} is the line's time
    "empty field": ("{t},5000,5000,,5150,5150,1638", "empty field"),
    "too few": ("{t},5000,5000,1638", "too few columns"),
    "too many": ("{t},5000,5000,1638,5150,5150,1638,9", "too many columns"),
    "blank": ("", "blank line"),
    "malformed": ("{t},5000,1.2.3,1638,5150,5150,1638", "invalid number"),
    "bare CR": ("{t},5000,5000,1638,5150,5150,1638\r{t},5000,5000,1638,5150,5150,1638", "too many columns"),
    "decimal ADC": ("{t},5000.5,5000,1638,5150,5150,1638", None),
}


@pytest.fixture(scope="module")
def big_lines():
    n = 200_000  # ~7 MB: above pandas' 5 MB threshold for its parallel reader
    times = np.arange(n) * 0.01 + 1.0
    return [HEADER] + [f"{t:.3f},5000,5000,1638,5150,5150,1638" for t in times]


@pytest.mark.parametrize("kind", list(BIG_BAD))
def test_large_file_with_a_bad_line_falls_back_to_the_pieces(kind, big_lines, tmp_path, monkeypatch):
    """One bad line in the middle of a large clean-looking file: the one-call parse is not
    used, and the line is skipped with its number as from memory."""
    text, reason = BIG_BAD[kind]
    lines = list(big_lines)
    lines[123_456] = text.format(t=lines[123_456].split(",")[0])
    path = tmp_path / "recording.txt"
    path.write_bytes(lines_to_bytes(lines))
    monkeypatch.setattr(reader, "CLEAN_FILE_MIN_BYTES", 0)
    samples = reader.read_samples(path)
    if reason is None:  # a decimal ADC value is a sample, read by the pieces
        assert samples.skipped_lines == [] and samples.p2[123_455] == 5000.5
        assert len(samples.time) == len(big_lines) - 1
        return
    assert [s.line_number for s in samples.skipped_lines] == [123_457]
    assert samples.skipped_lines[0].reason.startswith(reason)
    assert len(samples.time) == len(big_lines) - 2


def test_large_clean_file_is_read_in_one_call(big_lines, tmp_path, monkeypatch):
    path = tmp_path / "recording.txt"
    path.write_bytes(lines_to_bytes(big_lines, "\r\n"))
    monkeypatch.setattr(reader, "CLEAN_FILE_MIN_BYTES", 0)
    pieces = []
    monkeypatch.setattr(reader, "_map_pieces", lambda content, ranges: pieces.append(ranges))
    samples = reader.read_samples(path)
    assert pieces == [] and samples.skipped_lines == []
    assert len(samples.time) == len(big_lines) - 1 and samples.time[-1] == pytest.approx(2000.99)
