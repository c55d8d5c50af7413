"""Reader robustness: the time-order rule and a Hypothesis property test of read_samples.

The property test builds files from random mixes of good sample lines and every kind of
bad line (with random header, LF or CRLF, with or without a final newline) and checks the
reader against what was written: the skipped lines are exactly the bad lines with their
1-based numbers, the good samples come back with their exact values, and nothing but
CpapFileError is ever raised.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cpap_measurements as cm
from cpap_synth import HEADER

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
    samples = cm.read_samples(lines_to_bytes(zero_flow_lines(times)))
    assert [s.line_number for s in samples.skipped_lines] == [302]  # header is line 1
    assert samples.skipped_lines[0].reason == "time not increasing: 2.990 s after 2.990 s"
    assert len(samples.time) == 599
    assert np.all(np.diff(samples.time) > 0)


def test_time_going_back_skips_until_it_passes_the_latest_time():
    times = [i / 100 for i in range(600)]
    times[400:403] = [3.5, 3.6, 3.7]  # back from 3.99 s for three samples, then on at 4.03
    samples = cm.read_samples(lines_to_bytes(zero_flow_lines(times)))
    assert [s.line_number for s in samples.skipped_lines] == [402, 403, 404]
    assert all(s.reason.startswith("time not increasing: ") and s.reason.endswith("after 3.990 s")
               for s in samples.skipped_lines)
    np.testing.assert_array_equal(samples.time, np.delete(np.array(times), [400, 401, 402]))


def test_time_order_skips_merge_with_bad_lines_in_line_order():
    lines = zero_flow_lines([i / 100 for i in range(600)])
    lines[10] = "bad data"
    lines[20] = sample_line(0.05)  # back in time
    samples = cm.read_samples(lines_to_bytes(lines, newline="\r\n"))
    assert [(s.line_number, s.reason.split(":")[0]) for s in samples.skipped_lines] == [
        (11, "not a number"), (21, "time not increasing")]


def test_joined_recordings_are_refused_naming_the_line():
    first = [i / 100 for i in range(600)]
    lines = zero_flow_lines(first + first)  # a second recording appended, clock restarted
    with pytest.raises(cm.CpapFileError, match=r"time goes back at line 602 \(0\.000 s after 5\.990 s\)"):
        cm.read_samples(lines_to_bytes(lines))


def test_out_of_order_limit_is_one_percent():
    times = [i / 100 for i in range(1000)]
    for i in range(100, 1000, 100):  # 9 repeats of 1000 samples: under 1 %, kept going
        times[i] = times[i - 1]
    assert len(cm.read_samples(lines_to_bytes(zero_flow_lines(times))).skipped_lines) == 9
    times[950] = times[949]  # 11 of 1000: refused
    times[50] = times[49]
    with pytest.raises(cm.CpapFileError, match="11 of 1000 samples are out of time order"):
        cm.read_samples(lines_to_bytes(zero_flow_lines(times)))


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
        with pytest.raises(cm.CpapFileError, match="out of time order"):
            cm.read_samples(content)
        return
    samples = cm.read_samples(content)
    assert [s.line_number for s in samples.skipped_lines] == [i + 2 for i in skipped]
    np.testing.assert_array_equal(samples.time, times[kept])


# --- property test of the reader -------------------------------------------------------------
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
)
def test_read_samples_property(kinds, data, header, newline, final_newline, decimals):
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
        samples = cm.read_samples(content)
    except cm.CpapFileError:
        assert not good
        return
    assert [s.line_number for s in samples.skipped_lines] == [n for n, _ in bad]
    for s, (_, reason) in zip(samples.skipped_lines, bad):
        assert re.match(reason, s.reason), (s, reason)
    np.testing.assert_array_equal(samples.time, [t for _, t, _ in good])
    got = np.column_stack([samples.p2, samples.p1_ins, samples.p1_exp])
    np.testing.assert_array_equal(got, np.array([adc for _, _, adc in good]).reshape(-1, 3))
