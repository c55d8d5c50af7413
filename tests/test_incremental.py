"""The live night's incremental analysis (issue #14): a night streamed in chunks gives what
the offline analysis of the whole file gives, with a small plain-data state."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import bson
import numpy as np
import pytest

import cpap_measurements as cm
from sleeplab.analysis import incremental as inc
from sleeplab.analysis.reader import CpapFileError, read_chunk
from tools.cpap_synth import SynthConfig, clinical_config, generate, hard_config

ROOT = Path(__file__).resolve().parents[1]
#: Largest state of a night (BSON bytes): a few tens of KB is the budget of a database document.
MAX_STATE_BYTES = 32_000


def split_lines(content: bytes) -> tuple[bytes, list]:
    """A recording's header line and its sample lines (each with its line end)."""
    lines = content.splitlines(keepends=True)
    return lines[0], lines[1:]


def cut(content: bytes, sizes) -> list:
    """The recording cut into chunks of ``sizes`` lines in turn (the last size repeats),
    the header in the first chunk."""
    header, lines = split_lines(content)
    chunks, i, sizes = [], 0, list(sizes)
    while i < len(lines):
        n = sizes.pop(0) if len(sizes) > 1 else sizes[0]
        chunks.append(b"".join(lines[i:i + n]))
        i += n
    chunks[0] = header + chunks[0]
    return chunks


def stream(chunks, state=None):
    """Feed every chunk, then finish; the final state and all updates joined."""
    breaths, events, sizes = [], [], []
    for chunk in chunks:
        state, update = inc.feed(state, chunk)
        breaths += update["breaths"]
        events += update["events"]
        sizes.append(inc.state_size_bytes(state))
    state, update = inc.finish(state)
    return state, breaths + update["breaths"], events + update["events"], sizes


def offline_events(result) -> list:
    return [{"type": e.type, "start_s": e.start_s, "end_s": e.end_s} for e in result.events]


def assert_same_as_offline(content: bytes, chunks: list) -> dict:
    result = cm.analyze(content)
    state, breaths, events, sizes = stream(chunks)
    totals = state["totals"]
    assert totals["breaths"] == result.breaths == len(breaths)
    assert totals["apneas"] == result.apnea_count
    assert totals["hypopneas"] == result.hypopnea_count
    np.testing.assert_array_equal([b["peak_s"] for b in breaths], result.breath_times)
    for name in ("start_s", "end_s", "inspiratory_time_s", "expiratory_time_s"):
        np.testing.assert_array_equal([b[name] for b in breaths], result.breath_table[name])
    # volume integrals are running sums from another first block: equal to rounding
    np.testing.assert_allclose([b["tidal_volume_l"] for b in breaths],
                               result.breath_table["tidal_volume_l"], rtol=1e-9, atol=1e-12)
    assert events == offline_events(result)
    assert totals["duration_s"] == pytest.approx(result.duration)
    assert totals["leakage_l"] == pytest.approx(result.leakage, rel=1e-9)
    assert totals["inspired_volume_l"] == pytest.approx(float(np.sum(result.breath_table["tidal_volume_l"])))
    summary = inc.night_summary(totals)
    assert summary["ahi"] == pytest.approx(result.ahi)
    assert summary["leak_rate_lpm"] == pytest.approx(result.leak_rate_lpm)
    assert summary["minute_ventilation_lpm"] == pytest.approx(result.minute_ventilation_lpm)
    return {"sizes": sizes, "result": result, "events": events}


@pytest.fixture(scope="module")
def night():
    """A 15-min night with apneas, hypopneas and a leak (clinical seed 0 has 1 + 1)."""
    content, truth = generate(clinical_config(0))
    return content


LINES_PER_S = 100


@pytest.mark.parametrize("chunk_s", [10.0, 1.0, 37.3])
@pytest.mark.parametrize("seed", [0, 2, 5])
def test_chunked_equals_offline(chunk_s, seed):
    content, truth = generate(clinical_config(seed))
    assert truth["apnea_count"] + truth["hypopnea_count"] > 0  # the night has events to get right
    checked = assert_same_as_offline(content, cut(content, [round(chunk_s * LINES_PER_S)]))
    assert max(checked["sizes"]) <= MAX_STATE_BYTES


@pytest.mark.parametrize("seed", [1, 3])
def test_uneven_random_chunks_equal_offline(seed):
    content, _ = generate(clinical_config(seed))
    rng = np.random.default_rng(seed)
    assert_same_as_offline(content, cut(content, rng.integers(1, 4000, size=2000).tolist()))


@pytest.mark.parametrize("seed", [0, 3, 4, 6])  # leak, weak expiration, cardiogenic, double hump
def test_hard_recordings_equal_offline(seed):
    content, _ = generate(hard_config(seed), duration_s=420.0)
    assert_same_as_offline(content, cut(content, [1000]))


def test_bad_lines_and_crlf_are_skipped_as_offline():
    content, truth = generate(SynthConfig(duration_s=400, bad_lines=12, blank_lines=3, crlf=True,
                                          apnea_gaps_s=(15.0,), seed=7))
    chunks = cut(content, [1000])
    assert_same_as_offline(content, chunks)
    skipped = []
    for chunk in chunks:  # chunk line numbers, counted from each chunk's first line
        skipped += [(s.line_number, s.reason) for s in read_chunk(chunk, allow_header=True).skipped_lines]
    assert len(skipped) == len(truth["bad_lines"])


@pytest.mark.parametrize("duration_s", [3.0, 30.0, 100.0, 250.0])
def test_short_nights_use_the_offline_rules_for_short_recordings(duration_s):
    content, _ = generate(SynthConfig(duration_s=duration_s, seed=3))
    state, breaths, events, _ = stream(cut(content, [1000]))
    if duration_s < cm.MIN_DURATION_S:
        assert state["totals"]["breaths"] == 0  # offline refuses it; live reports nothing
        return
    result = cm.analyze(content)
    np.testing.assert_array_equal([b["peak_s"] for b in breaths], result.breath_times)


def test_an_event_across_a_chunk_boundary_is_counted_once(night):
    result = cm.analyze(night)
    header, lines = split_lines(night)
    first_line_s = float(lines[0].split(b",")[0])
    for event in result.events:  # cut every event in its middle
        middle = round(((event.start_s + event.end_s) / 2 - first_line_s) * LINES_PER_S)
        chunks = [header + b"".join(lines[:middle]), b"".join(lines[middle:])]
        state, _, events, _ = stream(chunks)
        assert events == offline_events(result)
        assert state["totals"]["apneas"] + state["totals"]["hypopneas"] == len(result.events)


def test_updates_report_each_breath_and_event_once_and_in_order(night):
    state, breaths, events, _ = stream(cut(night, [1000]))
    peaks = [b["peak_s"] for b in breaths]
    assert peaks == sorted(set(peaks))
    assert len(events) == len({(e["type"], e["start_s"]) for e in events})


def test_results_become_final_within_the_lag(night):
    """Before the end, everything older than MAX_LAG_S is final (from FIRST_RESULTS_S on)."""
    state, lags_s = None, []
    for chunk in cut(night, [1000]):
        state, update = inc.feed(state, chunk)
        totals = update["totals"]
        if totals["final_until_s"] is None:
            assert totals["duration_s"] < inc.FIRST_RESULTS_S
            continue
        lags_s.append(state["last_time_s"] - totals["final_until_s"])
    assert lags_s and max(lags_s) <= inc.MAX_LAG_S
    assert min(lags_s) < inc.MAX_LAG_S / 2  # the lag cycles with the 120 s windows


def test_state_is_small_and_plain_data(night):
    state = None
    for chunk in cut(night, [1000]):
        state, _ = inc.feed(state, chunk)
        assert inc.state_size_bytes(state) <= MAX_STATE_BYTES
    assert bson.decode(bson.encode(state)) == state


def test_state_survives_bson_midway(night):
    chunks = cut(night, [1000])
    direct, breaths, events, _ = stream(chunks)
    state, early_breaths, early_events = None, [], []
    for chunk in chunks[:40]:
        state, update = inc.feed(bson.decode(bson.encode(state)) if state else None, chunk)
        early_breaths += update["breaths"]
        early_events += update["events"]
    rest_state, rest_breaths, rest_events, _ = stream(chunks[40:], bson.decode(bson.encode(state)))
    assert early_breaths + rest_breaths == breaths
    assert early_events + rest_events == events
    assert rest_state["totals"] == direct["totals"]


SUBPROCESS_FEED = """
import sys, bson, json
from sleeplab.analysis import incremental as inc
state = bson.decode(open(sys.argv[1], 'rb').read())
state, update = inc.feed(state, open(sys.argv[2], 'rb').read())
open(sys.argv[1], 'wb').write(bson.encode(state))
print(json.dumps(update))
"""


def test_the_next_chunk_can_go_to_another_process(night, tmp_path):
    """The state is pure data: a fresh interpreter takes the next chunk and goes on."""
    chunks = cut(night, [1000])
    state = None
    for chunk in chunks[:30]:
        state, _ = inc.feed(state, chunk)
    local_state, local_update = inc.feed(state, chunks[30])
    (tmp_path / "state.bson").write_bytes(bson.encode(state))
    (tmp_path / "chunk.txt").write_bytes(chunks[30])
    run = subprocess.run([sys.executable, "-c", SUBPROCESS_FEED, str(tmp_path / "state.bson"),
                          str(tmp_path / "chunk.txt")], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(run.stdout) == json.loads(json.dumps(local_update))
    assert bson.decode((tmp_path / "state.bson").read_bytes()) == bson.decode(bson.encode(local_state))


def test_empty_chunk_changes_nothing(night):
    chunks = cut(night, [1000])
    state, _ = inc.feed(None, chunks[0])
    for empty in (b"", b"\n\n", "   \n"):
        again, update = inc.feed(state, empty)
        assert again == state
        assert update["breaths"] == update["events"] == update["skipped_lines"] == []
    assert inc.feed(None, b"")[0] == inc.new_state()


@pytest.mark.parametrize("chunk, message", [
    (b"1.0,1,2\nabc\n", r"no valid samples.*line 1"),
    (b"\x00\x01binary", r"binary"),
    (b"1.00,1638,1638,1638,1788,1788,1638\n" + b"9" * 20_000 + b"\n", r"line 2 is longer"),
])
def test_bad_chunk_raises_naming_the_line(night, chunk, message):
    state, _ = inc.feed(None, cut(night, [1000])[0])
    before = bson.encode(state)
    with pytest.raises(CpapFileError, match=message):
        inc.feed(state, chunk)
    assert bson.encode(state) == before  # the caller's state is untouched: retry or skip


def test_a_chunk_going_back_in_time_is_refused_naming_its_line(night):
    chunks = cut(night, [1000])
    state, _ = inc.feed(None, chunks[0])
    with pytest.raises(CpapFileError, match=r"time goes back at line 1 .* one chunk"):
        inc.feed(state, chunks[0].split(b"\n", 1)[1])  # the same samples again


def test_a_bad_line_inside_a_chunk_is_skipped_with_its_chunk_line_number(night):
    chunks = cut(night, [1000])
    state, _ = inc.feed(None, chunks[0])
    lines = chunks[1].splitlines(keepends=True)
    lines[4] = b"1.0,NaN,1638\n"
    _, update = inc.feed(state, b"".join(lines))
    assert [s["line"] for s in update["skipped_lines"]] == [5]


def test_a_header_is_only_taken_in_the_first_chunk(night):
    chunks = cut(night, [1000])
    header = chunks[0].split(b"\n", 1)[0] + b"\n"
    state, update = inc.feed(None, chunks[0])
    assert update["skipped_lines"] == []
    _, update = inc.feed(state, header + chunks[1])
    assert [s["line"] for s in update["skipped_lines"]] == [1]


def test_no_chunk_after_the_end(night):
    state, _ = inc.feed(None, cut(night, [1000])[0], end=True)
    with pytest.raises(CpapFileError, match="the night has ended"):
        inc.feed(state, b"")


def test_trace_is_the_chunk_downsampled(night):
    chunk = cut(night, [1000])[0]
    _, update = inc.feed(None, chunk)
    times = [t for t, _ in update["trace"]]
    assert len(times) == 1000 // (cm.DETECT_BLOCK * inc.TRACE_EVERY_BLOCKS)
    assert np.allclose(np.diff(times), cm.DETECT_BLOCK * inc.TRACE_EVERY_BLOCKS / 100.0)


# --- the offline smoothing the live analysis relies on ------------------------------------------
def test_smoothing_a_slice_gives_the_very_same_values():
    """Each smoothed value depends only on its own window, to the last bit (a running sum's
    rounding would depend on everything before)."""
    flow_lpm = np.random.default_rng(1).normal(0, 20, 100_000)
    whole = cm.smooth(flow_lpm, 0.05)
    part = cm.smooth(flow_lpm[60_000:70_000], 0.05)
    np.testing.assert_array_equal(part[2:-2], whole[60_002:69_998])


@pytest.mark.parametrize("interval_s", [0.05, 0.0625, 0.1, 1.0])
def test_smoothing_is_the_centred_moving_average(interval_s):
    from scipy import ndimage

    flow_lpm = np.random.default_rng(2).normal(0, 20, 1000)
    size = cm._window_samples(cm.SMOOTH_S, interval_s)
    np.testing.assert_allclose(cm.smooth(flow_lpm, interval_s),
                               ndimage.uniform_filter1d(flow_lpm, size, mode="nearest"), rtol=1e-12, atol=1e-12)


def test_a_pause_of_many_minutes_keeps_the_state_small():
    """The mask off for 15 min: the state does not keep the whole pause; the counts and
    breath times stay the offline ones (only the breaths either side of the pause may
    differ in volume)."""
    content, _ = generate(SynthConfig(duration_s=1500, rate_bpm=15, apnea_gaps_s=(900.0,), seed=4))
    result = cm.analyze(content)
    state, breaths, events, sizes = stream(cut(content, [1000]))
    assert max(sizes) <= MAX_STATE_BYTES
    np.testing.assert_array_equal([b["peak_s"] for b in breaths], result.breath_times)
    assert events == offline_events(result)
    assert [e.type for e in result.events] == ["apnea"] and result.events[0].end_s - result.events[0].start_s >= 900
    volume_l = np.array([b["tidal_volume_l"] for b in breaths])
    differ = np.flatnonzero(~np.isclose(volume_l, result.breath_table["tidal_volume_l"], rtol=1e-9))
    last_before = np.searchsorted(result.breath_times, result.events[0].start_s)  # the apnea's first peak
    assert set(differ.tolist()) <= {last_before, last_before + 1}
    np.testing.assert_allclose(volume_l, result.breath_table["tidal_volume_l"], rtol=0.01)


def test_a_state_of_another_version_is_refused(night):
    state, _ = inc.feed(None, cut(night, [1000])[0])
    with pytest.raises(ValueError, match="state version 0 is not 1"):
        inc.feed({**state, "version": 0}, b"")
