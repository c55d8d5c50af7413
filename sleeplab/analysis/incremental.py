"""Incremental analysis of a streamed night: one chunk of samples at a time, small state.

A live titration night arrives in chunks of a few seconds. :func:`feed` takes the state
left by the previous chunk (``None`` for the first) and the chunk's lines, and returns the
new state and an update: what became final with this chunk. The state is plain data
(``dict`` of ``int``, ``float``, ``bool``, ``None``, ``str``, lists and ``bytes``), a few tens
of KB, so it lives in the database between chunks and any worker takes the next one.

The result is the offline analysis's (:func:`cpap_measurements.analyze` of the whole night):
the same steps with the same window placement, each breath and event final only once
nothing later can change it, counted once whatever the chunk boundaries. The offline
pipeline's windowed statistics set the lag (:data:`MAX_LAG_S`): the no-flow baseline is the
median of 30 s windows and the typical peak the 98th percentile of 120 s windows, both
interpolated between window centres, so a block's entry and exit thresholds are known only
once the window after its own is complete (75-225 s after it). :func:`finish` ends the night:
the last samples are analysed with the offline rules for a recording's end.

Differences from offline: at rounding level, running sums (the trapezoid of the leak, the
volume integrals) start at a chunk or at the kept tail rather than at the file's first
sample, and the block interval is fixed from the first two minutes rather than the whole
night (it only sets window sizes in whole blocks). After a pause longer than MAX_CYCLE_S
the volumes of the breaths either side of it may differ slightly. The file rule "more than
1 % of the samples out of time order refuses the file" applies per chunk.
"""
from __future__ import annotations

import statistics
import zlib

import numpy as np

import cpap_measurements as cm
from sleeplab.analysis.reader import CpapFileError, read_chunk

STATE_VERSION = 1
#: Worst-case delay between a sample and the breaths and events around it becoming final,
#: s (at 20 blocks/s): the 120 s amplitude window after a block's own must be complete, and
#: its last block's baseline (the 30 s window after it) too.
MAX_LAG_S = 230.0
#: Nothing is final before two amplitude windows and the baseline after them are in (the
#: offline rules for a shorter recording differ): the first results come this late, s.
FIRST_RESULTS_S = 275.0
#: Blocks kept before the oldest one still needed: an inspiration's volume span may begin
#: a little before its detected start, and the moving average needs its left half.
MARGIN_BLOCKS = 200
#: The block interval is fixed once this many blocks are in (2 min; the offline median of
#: all block steps is the same to rounding, and only sets window sizes in whole blocks).
INTERVAL_BLOCKS = 2400
#: A breath's row waits for the next two breaths at most this long (s); after a longer
#: pause (the mask off, a central apnea of minutes) it is made from the cycle so far, so
#: the state stays small. Only the volume and end of the breaths either side of the pause
#: can then differ from offline (0.2 % in volume after 15 min mask off, in the tests).
MAX_CYCLE_S = 300.0
#: Hypopnea rows kept beyond the reference window, s.
REFERENCE_MARGIN_S = 1.0
#: The strip-chart trace in each update: one block in this many (20 Hz -> 4 Hz).
TRACE_EVERY_BLOCKS = 5
HIGH_CROSSING, LOW_CROSSING, NO_CROSSING = 1, 0, -1


# --- Plain-data packing ------------------------------------------------------------------------
def _pack(values) -> bytes:
    """float64 values as little-endian bytes (BSON ``Binary``, exact)."""
    return np.asarray(values, dtype="<f8").tobytes()


def _unpack(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f8").astype(np.float64)


#: zlib level of the kept blocks: 1 shrinks them ~5x (quantized flows, regular times) in
#: well under a millisecond; higher levels gain little for more time.
TAIL_ZLIB_LEVEL = 1
TAIL_KEYS = ("tail_time_s", "tail_flow_lpm")


def _open_tail(state: dict) -> None:
    """The kept blocks as arrays while a chunk is worked on (compressed bytes in between)."""
    for key in TAIL_KEYS:
        state[key] = _unpack(zlib.decompress(state[key])) if state[key] else np.zeros(0)


def _seal_tail(state: dict) -> None:
    for key in TAIL_KEYS:
        state[key] = zlib.compress(_pack(state[key]), TAIL_ZLIB_LEVEL) if len(state[key]) else b""


def new_state() -> dict:
    """The state of a night before its first chunk.

    Returns
    -------
    dict
        Keys (times in s, volumes in L, indices count 5-sample blocks from the night's
        first sample): ``version``; ``samples``; ``first_time_s``, ``last_time_s``,
        ``last_flow_m3s`` (the last sample, for the leak's trapezoid); ``carry_time_s``,
        ``carry_flow_lpm`` (bytes: samples of the block not yet complete); ``blocks``;
        ``interval_s`` (block step, ``None`` until fixed); ``tail_start``, ``tail_time_s``,
        ``tail_flow_lpm`` (bytes, zlib-compressed float64: block times and median flows from
        ``tail_start`` on);
        ``baseline_first``, ``baseline_levels`` and ``amplitude_first``,
        ``amplitude_levels`` (the window levels still needed); ``frontier`` (blocks before
        it are detected), ``crossed`` (last threshold crossed), ``open_run`` (start block
        of an inspiration still open); ``pending_peak`` ([time, height, run start] of the
        last peak, which a close one may still replace); ``peaks`` ([time, run start] of
        final breaths, from two before the first without its table row), ``rows_done``
        (of them with their row), ``last_peak_s``; ``hyp`` (the hypopnea scan: recent rows
        and the open run); ``totals``; ``finished``.
    """
    return {
        "version": STATE_VERSION, "samples": 0, "first_time_s": None, "last_time_s": None,
        "last_flow_m3s": None, "carry_time_s": b"", "carry_flow_lpm": b"", "blocks": 0,
        "interval_s": None, "tail_start": 0, "tail_time_s": b"", "tail_flow_lpm": b"",
        "baseline_first": 0, "baseline_levels": [], "amplitude_first": 0, "amplitude_levels": [],
        "frontier": 0, "crossed": NO_CROSSING, "open_run": None, "pending_peak": None,
        "peaks": [], "rows_done": 0, "last_peak_s": None,
        "hyp": {"first": 0, "start_s": [], "peak_s": [], "end_s": [], "volume_l": [],
                "in_event": [], "run": []},
        "totals": {"samples": 0, "duration_s": 0.0, "breaths": 0, "apneas": 0, "hypopneas": 0,
                   "inspired_volume_l": 0.0, "leakage_l": 0.0, "skipped_lines": 0,
                   "final_until_s": None},
        "finished": False,
    }


def _empty_update() -> dict:
    return {"breaths": [], "events": [], "skipped_lines": [], "trace": [], "totals": {}}


# --- Entry points --------------------------------------------------------------------------------
def feed(state: dict | None, chunk: bytes | str, end: bool = False) -> tuple[dict, dict]:
    """Analyse the next chunk of a night.

    Parameters
    ----------
    state : dict or None
        What the previous call returned (``None`` or :func:`new_state` for the first
        chunk). Not modified.
    chunk : bytes or str
        The chunk's lines in the recording format (7 ADC columns; text, not a path); the
        night's first chunk may start with the header. May be empty.
    end : bool
        The night ends with this chunk: analyse its last samples with the offline rules
        for a recording's end (:func:`finish`). No chunk may follow.

    Returns
    -------
    state : dict
        The new state (:func:`new_state` describes its keys).
    update : dict
        What became final: ``breaths`` (list of ``{start_s, peak_s, end_s,
        inspiratory_time_s, expiratory_time_s, tidal_volume_l}``), ``events`` (``{type:
        "apnea" | "hypopnea", start_s, end_s}``, night time, s), ``skipped_lines``
        (``{line, reason}``, chunk line numbers), ``trace`` (``[time_s, flow_lpm]`` of the
        chunk at 4 Hz: block medians, for a strip chart) and ``totals`` (running:
        ``samples``, ``duration_s``, ``breaths``, ``apneas``, ``hypopneas``,
        ``inspired_volume_l``, ``leakage_l`` (net flow volume), ``skipped_lines``,
        ``final_until_s``: results are final for the night before this time).

    Raises
    ------
    CpapFileError
        A chunk that is binary, has an over-long line, has lines of which none is a
        sample, or has more than 1 % of its samples out of time order (the message names
        the chunk line); or a chunk after the night's end. The state is then unchanged.
    ValueError
        A state of another STATE_VERSION (made by another version of this module).
    """
    state = _copy(state if state is not None else new_state())
    if state["version"] != STATE_VERSION:
        raise ValueError(f"state version {state['version']!r} is not {STATE_VERSION}")
    if state["finished"]:
        raise CpapFileError("the night has ended: no chunk can follow its last one")
    if isinstance(chunk, str):
        chunk = chunk.encode("utf-8", errors="replace")
    update = _empty_update()
    _open_tail(state)
    samples = read_chunk(chunk, allow_header=state["samples"] == 0, after_s=state["last_time_s"])
    update["skipped_lines"] = [{"line": s.line_number, "reason": s.reason} for s in samples.skipped_lines]
    state["totals"]["skipped_lines"] += len(samples.skipped_lines)
    if len(samples.time):
        flow_m3s = cm.venturi_flow(samples.p2, samples.p1_ins, samples.p1_exp)
        _take_samples(state, samples.time, flow_m3s, update)
    if end:
        _end_blocks(state)
    _advance(state, update, end)
    state["finished"] = bool(end)
    _seal_tail(state)
    update["totals"] = dict(state["totals"])
    return state, update


def finish(state: dict | None) -> tuple[dict, dict]:
    """End the night: :func:`feed` of an empty last chunk (same returns)."""
    return feed(state, b"", end=True)


def _copy(state: dict) -> dict:
    """A copy deep enough that the caller's state is never changed (bytes are immutable)."""
    out = dict(state)
    for key in ("baseline_levels", "amplitude_levels", "peaks"):
        out[key] = list(state[key])
    out["hyp"] = {k: (list(v) if isinstance(v, list) else v) for k, v in state["hyp"].items()}
    out["totals"] = dict(state["totals"])
    return out


# --- Samples -> blocks ---------------------------------------------------------------------------
def _take_samples(state: dict, time_s: np.ndarray, flow_m3s: np.ndarray, update: dict) -> None:
    """Append valid samples: leak integral, duration, complete 5-sample blocks."""
    if state["first_time_s"] is None:
        state["first_time_s"] = float(time_s[0])
    if state["last_time_s"] is not None:  # the trapezoid across the chunk boundary
        time_s_ext = np.concatenate(([state["last_time_s"]], time_s))
        flow_ext = np.concatenate(([state["last_flow_m3s"]], flow_m3s))
    else:
        time_s_ext, flow_ext = time_s, flow_m3s
    state["totals"]["leakage_l"] += cm.leakage_litres(time_s_ext, flow_ext)
    state["last_time_s"], state["last_flow_m3s"] = float(time_s[-1]), float(flow_m3s[-1])
    state["samples"] += len(time_s)
    state["totals"]["samples"] = state["samples"]
    state["totals"]["duration_s"] = state["last_time_s"] - state["first_time_s"]

    time_s = np.concatenate((_unpack(state["carry_time_s"]), time_s))
    flow_lpm = np.concatenate((_unpack(state["carry_flow_lpm"]), flow_m3s * cm.M3S_TO_LPM))
    n_full = len(time_s) // cm.DETECT_BLOCK * cm.DETECT_BLOCK
    state["carry_time_s"], state["carry_flow_lpm"] = _pack(time_s[n_full:]), _pack(flow_lpm[n_full:])
    if n_full:
        block_time_s, block_flow_lpm = cm.downsample(time_s[:n_full], flow_lpm[:n_full])
        _append_blocks(state, block_time_s, block_flow_lpm)
        update["trace"] = [[round(float(t), 3), round(float(f), 2)] for t, f in
                           zip(block_time_s[::TRACE_EVERY_BLOCKS], block_flow_lpm[::TRACE_EVERY_BLOCKS])]


def _append_blocks(state: dict, block_time_s, block_flow_lpm) -> None:
    state["tail_time_s"] = np.concatenate((state["tail_time_s"], block_time_s))
    state["tail_flow_lpm"] = np.concatenate((state["tail_flow_lpm"], block_flow_lpm))
    state["blocks"] += len(block_time_s)


def _end_blocks(state: dict) -> None:
    """At the night's end the last, shorter block counts too (its median, as offline)."""
    time_s, flow_lpm = _unpack(state["carry_time_s"]), _unpack(state["carry_flow_lpm"])
    if len(time_s):
        _append_blocks(state, *cm.downsample(time_s, flow_lpm))
    state["carry_time_s"] = state["carry_flow_lpm"] = b""


# --- Windowed levels (cpap_measurements._windowed, one window at a time) -----------------------
def _blocks(duration_s: float, interval_s: float) -> int:
    """Blocks in ``duration_s`` at one block per ``interval_s``."""
    return cm._window_samples(duration_s, interval_s)


def _window_reach(size: int) -> tuple[int, int]:
    """Blocks a centred moving average of ``size`` reaches to the left and the right."""
    return size // 2, size - 1 - size // 2


def _add_levels(first: int, levels: list, values_at, complete_upto: int, size: int, statistic) -> None:
    """Append the level of every window of ``size`` blocks complete before ``complete_upto``
    (``values_at(lo, hi)``: the final values of blocks lo..hi-1)."""
    k = first + len(levels)
    while (k + 1) * size <= complete_upto:
        levels.append(float(statistic(values_at(k * size, (k + 1) * size)[np.newaxis, :], axis=1)[0]))
        k += 1


def _level_at(index: np.ndarray, first: int, levels: list, size: int) -> np.ndarray:
    """Levels interpolated between window centres at block ``index`` (as offline)."""
    centres = (np.arange(first, first + len(levels)) + 0.5) * size
    return np.interp(index, centres, levels)


def _trim_levels(first: int, levels: list, from_block: int, size: int) -> tuple[int, list]:
    """Drop the levels no block from ``from_block`` on is interpolated from."""
    drop = max(0, min(len(levels) - 2, from_block // size - 1 - first))
    return first + drop, levels[drop:]


# --- Detection ------------------------------------------------------------------------------------
def _advance(state: dict, update: dict, end: bool) -> None:
    """Detect what the blocks now in make final (everything at the night's end)."""
    n_blocks = state["blocks"]
    if end and state["samples"] < 2 * cm.DETECT_BLOCK:
        _close(state, update, n_blocks, end)  # offline: too few samples for any breath
        return
    if state["interval_s"] is None:
        if not end and n_blocks < INTERVAL_BLOCKS:
            return
        state["interval_s"] = cm.sample_interval_s(state["tail_time_s"])
    interval_s = state["interval_s"]
    smooth_n = cm._window_samples(cm.SMOOTH_S, interval_s)
    base_n = cm._window_samples(cm.BASELINE_WINDOW_S, interval_s)
    amp_n = cm._window_samples(cm.AMPLITUDE_WINDOW_S, interval_s)
    t0 = state["tail_start"]
    tail_time_s = state["tail_time_s"]
    smoothed = cm.smooth(state["tail_flow_lpm"], interval_s)
    smooth_final = n_blocks if end else n_blocks - _window_reach(smooth_n)[1]

    # the no-flow baseline: 30 s window medians
    base_first, base_levels = state["baseline_first"], state["baseline_levels"]
    if end and n_blocks // base_n <= 1:  # offline: one level for a short recording
        base_first, base_levels = 0, [float(np.median(smoothed))]
    else:
        _add_levels(base_first, base_levels, lambda lo, hi: smoothed[lo - t0:hi - t0],
                    smooth_final, base_n, np.median)
    n_base = base_first + len(base_levels)
    # above baseline is final up to the last centre (the interpolation beyond moves on)
    above_final = n_blocks if end else (int((n_base - 0.5) * base_n) if n_base >= 2 else 0)
    above_final = min(above_final, n_blocks)

    def above_at(lo, hi):
        index = np.arange(lo, hi)
        return smoothed[lo - t0:hi - t0] - _level_at(index, base_first, base_levels, base_n)

    amp_first, amp_levels = state["amplitude_first"], state["amplitude_levels"]
    if end and n_blocks // amp_n <= 1:
        amp_first, amp_levels = 0, [float(cm._peak_level(above_at(0, n_blocks)[np.newaxis, :], axis=1)[0])]
    else:
        _add_levels(amp_first, amp_levels, above_at, above_final, amp_n, cm._peak_level)
    n_amp = amp_first + len(amp_levels)
    frontier = n_blocks if end else (int((n_amp - 0.5) * amp_n) if n_amp >= 2 else 0)
    frontier = max(min(frontier, above_final), state["frontier"])

    lo = state["frontier"]
    if frontier > lo:
        above = above_at(t0, frontier)  # from the tail's start: the open run's peak may be early
        peak_lpm = _level_at(np.arange(lo, frontier), amp_first, amp_levels, amp_n)
        high_lpm = np.maximum(cm.HIGH_FRACTION * peak_lpm, cm.MIN_HIGH_LPM)
        low_lpm = np.minimum(np.maximum(cm.LOW_FRACTION * peak_lpm, cm.MIN_LOW_LPM),
                             cm.LOW_MAX_OF_HIGH * high_lpm)
        runs = _closed_runs(state, above[lo - t0:], high_lpm, low_lpm, lo)
        for start, stop in runs:
            if tail_time_s[stop - 1 - t0] - tail_time_s[start - t0] < cm.MIN_INSPIRATION_S:
                continue
            peak = start + int(np.argmax(above[start - t0:stop - t0]))
            _merge_peak(state, update, float(tail_time_s[peak - t0]), float(above[peak - t0]), start)
        state["frontier"] = frontier
    _release_pending(state, update, tail_time_s, end)
    _rows(state, update, tail_time_s, smoothed, end)
    state["baseline_first"], state["baseline_levels"] = base_first, base_levels
    state["amplitude_first"], state["amplitude_levels"] = amp_first, amp_levels
    _close(state, update, n_blocks, end)


def _closed_runs(state: dict, above, high_lpm, low_lpm, lo: int) -> list:
    """Inspirations that end before the frontier, as (start, stop) blocks (stop exclusive),
    continuing the hysteresis state and the run open at the previous frontier."""
    crossed = np.full(len(above), NO_CROSSING, dtype=np.int8)
    crossed[above < low_lpm] = LOW_CROSSING
    crossed[above > high_lpm] = HIGH_CROSSING
    seen = np.where(crossed >= 0, np.arange(len(crossed)), -1)
    np.maximum.accumulate(seen, out=seen)
    state_at = np.where(seen >= 0, crossed[np.maximum(seen, 0)], state["crossed"])
    inspiring = state_at == HIGH_CROSSING
    starts, stops = cm._true_runs(inspiring)
    starts, stops = starts + lo, stops + lo
    if state["open_run"] is not None:
        if len(starts) and starts[0] == lo:
            starts[0] = state["open_run"]
        else:  # the open run ended right at the previous frontier
            starts, stops = np.append(state["open_run"], starts), np.append(lo, stops)
    state["crossed"] = int(state_at[-1])
    state["open_run"] = None
    if len(stops) and stops[-1] == lo + len(above):  # still inspiring at the frontier
        state["open_run"] = int(starts[-1])
        starts, stops = starts[:-1], stops[:-1]
    return list(zip(starts.tolist(), stops.tolist()))


def _merge_peak(state: dict, update: dict, time_s: float, height_lpm: float, run_start: int) -> None:
    """cpap_measurements.merge_close_peaks, one peak at a time."""
    pending = state["pending_peak"]
    if pending is not None and time_s - pending[0] < cm.MIN_BREATH_INTERVAL_S:
        if height_lpm > pending[1]:
            state["pending_peak"] = [time_s, height_lpm, run_start]
        return
    if pending is not None:
        _final_peak(state, update, pending)
    state["pending_peak"] = [time_s, height_lpm, run_start]


def _release_pending(state: dict, update: dict, tail_time_s, end: bool) -> None:
    """The last peak is final once no later one can come within MIN_BREATH_INTERVAL_S."""
    pending = state["pending_peak"]
    if pending is None:
        return
    if not end:
        earliest = state["open_run"] if state["open_run"] is not None else state["frontier"]
        if earliest - state["tail_start"] >= len(tail_time_s):
            return
        if tail_time_s[earliest - state["tail_start"]] - pending[0] < cm.MIN_BREATH_INTERVAL_S:
            return
    _final_peak(state, update, pending)
    state["pending_peak"] = None


def _final_peak(state: dict, update: dict, peak: list) -> None:
    time_s = peak[0]
    last = state["last_peak_s"]
    if last is not None and time_s - last > cm.APNEA_GAP_S:
        update["events"].append({"type": "apnea", "start_s": last, "end_s": time_s})
        state["totals"]["apneas"] += 1
    state["last_peak_s"] = time_s
    state["peaks"].append([time_s, int(peak[2])])
    state["totals"]["breaths"] += 1


# --- Breath table and hypopneas ------------------------------------------------------------------
def _rows(state: dict, update: dict, tail_time_s, smoothed, end: bool) -> None:
    """Table rows of the breaths whose cycle and the next one's are complete (all at the end):
    :func:`cpap_measurements.breath_table` on the kept blocks, from two breaths before."""
    peaks = state["peaks"]
    done = state["rows_done"]
    # a breath followed by a very long pause (the mask off): rather than keeping its whole
    # cycle, its row is made now, as for a night ending here
    stale = bool(peaks) and state["frontier"] - peaks[0][1] > _blocks(MAX_CYCLE_S, state["interval_s"])
    ready = len(peaks) if end or stale else len(peaks) - 2
    if ready <= done:
        return
    t0 = state["tail_start"]
    upto = (state["blocks"] if end else state["frontier"]) - t0
    starts = np.array([p[1] for p in peaks], dtype=np.intp) - t0
    detection = cm.BreathDetection(tail_time_s[:upto], smoothed[:upto], state["interval_s"],
                                   starts, starts, np.array([p[0] for p in peaks]))
    table = cm.breath_table(detection)
    for i in range(done, ready):
        row = {name: float(values[i]) for name, values in table.items()}
        update["breaths"].append(row)
        state["totals"]["inspired_volume_l"] += row["tidal_volume_l"]
        _hypopnea_step(state, update, row)
    keep_from = len(peaks) if stale else max(0, ready - 2)  # two before the next row's
    state["peaks"] = peaks[keep_from:]
    state["rows_done"] = ready - keep_from
    if end:
        _hypopnea_close(state, update)


def _hypopnea_step(state: dict, update: dict, row: dict) -> None:
    """cpap_measurements.find_hypopneas, one breath at a time (a run closes at the first
    breath that is not reduced, which is when offline closes it in effect)."""
    hyp = state["hyp"]
    for key, name in (("start_s", "start_s"), ("peak_s", "peak_s"), ("end_s", "end_s"),
                      ("volume_l", "tidal_volume_l")):
        hyp[key].append(row[name])
    hyp["in_event"].append(False)
    i = len(hyp["start_s"]) - 1  # local index
    run = [j - hyp["first"] for j in hyp["run"]]
    if run and hyp["peak_s"][i] - hyp["peak_s"][run[-1]] > cm.APNEA_GAP_S:
        _hypopnea_close(state, update)
        run = []
    first = int(np.searchsorted(hyp["start_s"], hyp["start_s"][i] - cm.HYPOPNEA_REFERENCE_S, side="left"))
    volumes = hyp["volume_l"]
    reduced = False
    if first < i and volumes[i] <= cm.HYPOPNEA_FRACTION * max(volumes[first:i]):
        upto = run[0] if run else i
        reference = [v for v, e in zip(volumes[first:upto], hyp["in_event"][first:upto]) if not e]
        reduced = bool(reference) and volumes[i] <= cm.HYPOPNEA_FRACTION * statistics.median(reference)
    if reduced:
        hyp["run"].append(i + hyp["first"])
    else:
        _hypopnea_close(state, update)
    _trim_hypopnea_rows(hyp)


def _hypopnea_close(state: dict, update: dict) -> None:
    hyp = state["hyp"]
    run = [j - hyp["first"] for j in hyp["run"]]
    if run and hyp["end_s"][run[-1]] - hyp["start_s"][run[0]] >= cm.HYPOPNEA_MIN_S:
        for j in run:
            hyp["in_event"][j] = True
        update["events"].append({"type": "hypopnea", "start_s": hyp["start_s"][run[0]],
                                 "end_s": hyp["end_s"][run[-1]]})
        state["totals"]["hypopneas"] += 1
    hyp["run"] = []


def _trim_hypopnea_rows(hyp: dict) -> None:
    """Keep the rows a later breath's reference window or the open run can reach."""
    horizon_s = hyp["start_s"][-1] - cm.HYPOPNEA_REFERENCE_S - REFERENCE_MARGIN_S
    drop = int(np.searchsorted(hyp["start_s"], horizon_s, side="left"))
    if hyp["run"]:
        drop = min(drop, hyp["run"][0] - hyp["first"])
    if drop > 0:
        for key in ("start_s", "peak_s", "end_s", "volume_l", "in_event"):
            hyp[key] = hyp[key][drop:]
        hyp["first"] += drop


# --- Bookkeeping ----------------------------------------------------------------------------------
def _close(state: dict, update: dict, n_blocks: int, end: bool) -> None:
    """Sort the update's events, note how far results are final, drop blocks no longer needed."""
    update["events"].sort(key=lambda e: (e["start_s"], e["end_s"]))
    t0 = state["tail_start"]
    tail_time_s = state["tail_time_s"]
    frontier = state["frontier"]
    if frontier > t0 and frontier - t0 <= len(tail_time_s):
        state["totals"]["final_until_s"] = float(tail_time_s[frontier - 1 - t0])
    if end:
        state["totals"]["final_until_s"] = state["last_time_s"]
        return
    needed = [frontier]
    if state["open_run"] is not None:
        needed.append(state["open_run"])
    if state["pending_peak"] is not None:
        needed.append(state["pending_peak"][2])
    if state["peaks"]:
        needed.append(state["peaks"][0][1])
    keep_from = max(t0, min(needed) - MARGIN_BLOCKS)
    if keep_from > t0:
        cut = keep_from - t0
        for key in TAIL_KEYS:
            state[key] = state[key][cut:]
        state["tail_start"] = keep_from
    if state["interval_s"] is not None:
        interval_s = state["interval_s"]
        state["baseline_first"], state["baseline_levels"] = _trim_levels(
            state["baseline_first"], state["baseline_levels"], keep_from,
            cm._window_samples(cm.BASELINE_WINDOW_S, interval_s))
        state["amplitude_first"], state["amplitude_levels"] = _trim_levels(
            state["amplitude_first"], state["amplitude_levels"], keep_from,
            cm._window_samples(cm.AMPLITUDE_WINDOW_S, interval_s))


def state_size_bytes(state: dict) -> int:
    """The state's size as a BSON document, bytes (what the database stores)."""
    import bson

    return len(bson.encode(state))


def night_summary(totals: dict) -> dict:
    """Rates from running totals: breath rate (/min), AHI and apnea index (/h), leak rate
    (L/min), minute ventilation (L/min); zeros before a positive duration."""
    duration_s = totals["duration_s"]
    if not duration_s > 0:
        return {"breath_rate_bpm": 0.0, "ahi": 0.0, "apnea_index": 0.0, "leak_rate_lpm": 0.0,
                "minute_ventilation_lpm": 0.0}
    return {
        "breath_rate_bpm": 60.0 * totals["breaths"] / duration_s,
        "ahi": cm.per_hour(totals["apneas"] + totals["hypopneas"], duration_s),
        "apnea_index": cm.per_hour(totals["apneas"], duration_s),
        "leak_rate_lpm": cm.leak_rate_lpm(totals["leakage_l"], duration_s),
        "minute_ventilation_lpm": cm.minute_ventilation_lpm([totals["inspired_volume_l"]], duration_s),
    }


__all__ = ["feed", "finish", "new_state", "night_summary", "state_size_bytes", "MAX_LAG_S",
           "FIRST_RESULTS_S", "CpapFileError"]
