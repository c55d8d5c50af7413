"""CPAP venturi recording analysis: ADC -> pressure -> flow -> breaths -> events -> metrics.

A recording is a text file with one header line and one line per sample (100 Hz) of 7
comma-separated values: time [s], V1 p2, V1 p1-ins, V1 p1-exp, V2 p2, V2 p1-ins, V2 p1-exp
(pressures in ADC units). V1, the patient-side venturi, is what the analysis uses.
:mod:`sleeplab.analysis.reader` reads the file into those pressures; this module turns them
into flow, breaths and metrics, and draws the flow plot.

The pipeline is a chain of small pure functions composed by :func:`analyze`::

    read_samples -> venturi_flow -> breath_detection -> find_apneas
                 -> breath_table -> find_hypopneas -> metrics (AHI, tidal volume, ventilation, leak)

Command line::

    python cpap_measurements.py FILE [--json] [--plot OUT.png] [--report OUT.pdf|OUT.png]

Every unusable input raises :class:`CpapFileError` (a ``ValueError``) whose message is
meant for a clinician. Lines that cannot be read are skipped, logged and reported in
``AnalysisResult.skipped_lines`` with their 1-based file line number and the reason.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import math
import statistics
import sys
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

# The reader's public names, imported from here by the API, the UI, the tests and the
# benchmarks since before the reader had its own module.
from sleeplab.analysis.reader import (  # noqa: F401
    N_COLUMNS, CpapFileError, Samples, SkippedLine, Source, read_bytes, read_samples)

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

# --- Recording ----------------------------------------------------------------------------
MIN_DURATION_S = 5.0            # less than this cannot show even one slow breath cycle

# --- Breath detection (reasons in docs/README-analysis.md) ------------------------------
DETECT_BLOCK = 5                # 100 Hz -> 20 Hz by block median: kills 1-2 sample ADC spikes
                                # (fixed: _median_of_5 is a network for exactly 5)
SAMPLE_RATE_HZ = 100.0          # the recorders' rate; the time column rules where it can
BLOCK_INTERVAL_S = DETECT_BLOCK / SAMPLE_RATE_HZ  # a block's step when the times do not give one
SMOOTH_S = 0.25                 # centred moving average after the block median
BASELINE_WINDOW_S = 30.0        # window of the no-flow baseline (median) estimate
AMPLITUDE_PERCENTILE = 98.0     # typical inspiratory peak above baseline ...
AMPLITUDE_WINDOW_S = 120.0      # ... over windows of this length
HIGH_FRACTION = 0.25            # hysteresis: enter inspiration above baseline + 25 % of peak
LOW_FRACTION = 0.10             # ... leave it below baseline + 10 % of peak
LOW_MAX_OF_HIGH = 0.5           # ... and below half the entry threshold at most: the band stays open
MIN_HIGH_LPM = 6.0              # above one ADC step (~5 L/min): a one-step level or ripple is no breath
MIN_LOW_LPM = 1.5
MIN_INSPIRATION_S = 0.12        # an inspiration shorter than this is a glitch
MIN_BREATH_INTERVAL_S = 0.4     # two peaks closer than this are one breath (150/min)
APNEA_GAP_S = 10.0              # apnea: more than this between consecutive breaths
HYPOPNEA_FRACTION = 0.5         # hypopnea: tidal volume at most this share of the reference ...
HYPOPNEA_MIN_S = 10.0           # ... for a run of consecutive breaths lasting at least this ...
HYPOPNEA_REFERENCE_S = 120.0    # ... the reference: median of event-free breaths in this long before
SERIES_STEP_S = 60.0            # minute ventilation and leak series: one value per minute

PLOT_MAX_COLUMNS = 2000         # min/max envelope bins for long recordings (<= image width)
FLOW_COLOUR = "#1f77b4"
PNG_COMPRESS_LEVEL = 2          # zlib level: 6 (default) costs ~3x the time for ~20 % smaller files
#: Fixed flow axis (L/min) of every plot, so two plots side by side compare at a glance; it
#: covers the sample recordings (-20..43 L/min). A flow outside widens it in steps of
#: FLOW_PLOT_STEP_LPM instead of being clipped.
FLOW_PLOT_RANGE_LPM = (-40.0, 60.0)
FLOW_PLOT_STEP_LPM = 20.0
PLOT_FONT_PT = 16               # the 1200 px image is shown at half width on the monitor
#: Shading of each event type in the flow plot and the night report: two clearly distinct hues.
EVENT_COLOURS = {"apnea": "#d62728", "hypopnea": "#ff9f1c"}
EVENT_LABELS = {"apnea": "apnea", "hypopnea": "hypopnea"}  # definitions: docs/README-analysis.md
EVENT_ALPHA = 0.25
EVENT_MIN_WIDTH_FRACTION = 0.004  # of the time axis: ~5 px, so a short event on a long night shows


class BreathDetection(NamedTuple):
    """What :func:`breath_detection` found, kept for the per-breath measurements.

    Attributes
    ----------
    block_time_s : numpy.ndarray
        Mean time of each block of DETECT_BLOCK samples, s.
    smoothed_lpm : numpy.ndarray
        Block-median flow after the SMOOTH_S moving average, L/min (no baseline removed).
    interval_s : float
        Time step of the blocks, s.
    starts, ends : numpy.ndarray of int
        Block index of each inspiration run kept and the index just after it.
    peak_times_s : numpy.ndarray
        Inspiratory peak times, s, ascending (one per breath).
    """

    block_time_s: np.ndarray
    smoothed_lpm: np.ndarray
    interval_s: float
    starts: np.ndarray
    ends: np.ndarray
    peak_times_s: np.ndarray


class ApneaEvent(NamedTuple):
    """A gap of more than ``APNEA_GAP_S`` between two breaths (times in s)."""

    start: float
    end: float
    duration: float


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
        Apnea-hypopnea index: (apneas + hypopneas) per hour of recording.
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
    hypopnea_events : list of Event
        Hypopneas (:func:`find_hypopneas`).
    apnea_index : float
        Apneas per hour of recording.
    breath_table : dict of numpy.ndarray
        Per breath (:func:`breath_table`): start, peak, end, inspiratory and expiratory
        time (s), tidal volume (L).
    tidal_volume_l : float
        Median tidal volume, L.
    minute_ventilation_lpm : float
        Total inspired volume / duration, L/min.
    minute_ventilation_series : tuple of numpy.ndarray
        Start of each minute (s) and the minute ventilation in it (L/min).
    leak_rate_lpm : float
        Mean net flow, L/min.
    leak_rate_series : tuple of numpy.ndarray
        Start of each minute (s) and the mean net flow in it (L/min).
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
    hypopnea_events: list = field(default_factory=list)
    apnea_index: float = 0.0
    breath_table: dict = field(default_factory=dict, repr=False)
    tidal_volume_l: float = 0.0
    minute_ventilation_lpm: float = 0.0
    minute_ventilation_series: tuple = field(default=(), repr=False)
    leak_rate_lpm: float = 0.0
    leak_rate_series: tuple = field(default=(), repr=False)

    @property
    def hypopnea_count(self) -> int:
        """Number of hypopneas."""
        return len(self.hypopnea_events)

    @property
    def events(self) -> list:
        """Apneas and hypopneas, one list of :class:`Event` ordered by start (s)."""
        return events_list(self.apnea_events, self.hypopnea_events)

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
            "hypopnea_count": int(self.hypopnea_count),
            "apnea_index": float(self.apnea_index),
            "tidal_volume_l": float(self.tidal_volume_l),
            "minute_ventilation_lpm": float(self.minute_ventilation_lpm),
            "leak_rate_lpm": float(self.leak_rate_lpm),
            "events": [{"type": e.type, "start_s": float(e.start_s), "end_s": float(e.end_s)}
                       for e in self.events],
        }


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
    """Reduce consecutive blocks of DETECT_BLOCK samples (a shorter last block by its median)."""
    n = len(x) // DETECT_BLOCK * DETECT_BLOCK
    out = how(x[:n].reshape(-1, DETECT_BLOCK))
    if n < len(x):
        out = np.append(out, np.median(x[n:]))
    return out


def _windowed(x: np.ndarray, samples_per_window: int, statistic) -> np.ndarray:
    """A slowly varying level: ``statistic(windows, axis=1)`` of consecutive equal windows,
    interpolated between window centres (one vectorised call; cheap at 8 hours, unlike a
    sliding-window median). The last partial window joins the previous one."""
    if len(x) == 0:
        return np.zeros(0)
    n_win = len(x) // samples_per_window
    if n_win <= 1:
        return np.full(len(x), statistic(x[np.newaxis, :], axis=1)[0])
    full = x[: n_win * samples_per_window].reshape(n_win, samples_per_window)
    levels = statistic(full, axis=1)
    centres = (np.arange(n_win) + 0.5) * samples_per_window
    return np.interp(np.arange(len(x)), centres, levels)


def _peak_level(x: np.ndarray, axis: int) -> np.ndarray:
    """The typical inspiratory peak of each window: the AMPLITUDE_PERCENTILE of ``x``."""
    return np.percentile(x, AMPLITUDE_PERCENTILE, axis=axis)


def _window_samples(window_s: float, interval_s: float) -> int:
    """Samples in a window of ``window_s`` seconds at one sample per ``interval_s`` (>= 1).

    Raises
    ------
    ValueError
        If ``interval_s`` is not positive.
    """
    if not interval_s > 0:
        raise ValueError(f"interval_s must be a positive time step in s, not {interval_s!r}")
    return max(1, round(window_s / interval_s))


def _same_length(time, flow_lpm, names=("time", "flow_lpm")) -> tuple[np.ndarray, np.ndarray]:
    """``time`` and ``flow_lpm`` as float64 arrays; ValueError naming them (``names``) if
    their lengths differ."""
    time = np.asarray(time, dtype=np.float64)
    flow_lpm = np.asarray(flow_lpm, dtype=np.float64)
    if time.shape != flow_lpm.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same length")
    return time, flow_lpm


def downsample(time_s, flow_lpm) -> tuple[np.ndarray, np.ndarray]:
    """One value per block of DETECT_BLOCK samples: the mean time and the median flow.

    The median of 5 removes spikes of one or two samples (one ADC step is ~5 L/min near
    zero flow), and 20 Hz is plenty for breaths while every later step is 5x cheaper.

    Parameters
    ----------
    time_s : array_like
        Sample times, s.
    flow_lpm : array_like
        Flow, L/min.

    Returns
    -------
    block_time_s : numpy.ndarray
        Mean time of each block, s.
    block_flow_lpm : numpy.ndarray
        Median flow of each block, L/min. A shorter last block gives the median of its
        times and flows.

    Raises
    ------
    ValueError
        If ``time_s`` and ``flow_lpm`` differ in length.
    """
    time_s, flow_lpm = _same_length(time_s, flow_lpm)
    return _block_reduce(time_s, _block_mean), _block_reduce(flow_lpm, _median_of_5)


def sample_interval_s(time_s) -> float:
    """The typical time step of a signal, s: the median step between samples.

    Parameters
    ----------
    time_s : array_like
        Sample times, s, ascending (gaps allowed: the median ignores them).

    Returns
    -------
    float
        The median step, s; BLOCK_INTERVAL_S (a block at the recorders' rate) when there
        is no positive one (fewer than two samples, or times not increasing).
    """
    time_s = np.asarray(time_s, dtype=np.float64)
    step_s = float(np.median(np.diff(time_s))) if len(time_s) > 1 else BLOCK_INTERVAL_S
    return step_s if step_s > 0 else BLOCK_INTERVAL_S


def smooth(flow_lpm, interval_s: float, window_s: float = SMOOTH_S) -> np.ndarray:
    """Centred moving average over ``window_s`` (the edge values repeat beyond the ends).

    Parameters
    ----------
    flow_lpm : array_like
        Flow, L/min, one value per ``interval_s``.
    interval_s : float
        Time step of ``flow_lpm``, s.
    window_s : float
        Averaging window, s (at least one sample).

    Returns
    -------
    numpy.ndarray
        Smoothed flow, L/min, same length.

    Raises
    ------
    ValueError
        If ``interval_s`` is not positive.
    """
    flow_lpm = np.asarray(flow_lpm, dtype=np.float64)
    size = _window_samples(window_s, interval_s)
    if size == 1 or len(flow_lpm) == 0:
        return flow_lpm.copy()
    # Each value is the sum of its own window (the same window as scipy's uniform_filter1d,
    # origin 0), not a running sum, whose rounding depends on every value before: the live
    # analysis (sleeplab.analysis.incremental) smooths a night's recent blocks only and must
    # get the very same floats.
    left = size // 2
    padded = np.pad(flow_lpm, (left, size - 1 - left), mode="edge")
    total = padded[:len(flow_lpm)].copy()
    for shift in range(1, size):
        total += padded[shift:shift + len(flow_lpm)]
    total /= size
    return total


def above_baseline(flow_lpm, interval_s: float, window_s: float = BASELINE_WINDOW_S) -> np.ndarray:
    """Flow above the slowly varying no-flow baseline, L/min.

    The baseline is the median of consecutive windows of ``window_s``, interpolated
    between their centres: a leak offset that drifts over minutes is followed, and the
    median, unlike a mean, stays at the level where the flow spends most time.

    Parameters
    ----------
    flow_lpm : array_like
        Flow, L/min, one value per ``interval_s``.
    interval_s : float
        Time step of ``flow_lpm``, s.
    window_s : float
        Baseline window, s.

    Returns
    -------
    numpy.ndarray
        ``flow_lpm`` minus the baseline, L/min.

    Raises
    ------
    ValueError
        If ``interval_s`` is not positive.
    """
    flow_lpm = np.asarray(flow_lpm, dtype=np.float64)
    return flow_lpm - _windowed(flow_lpm, _window_samples(window_s, interval_s), np.median)


def hysteresis_thresholds(above_lpm, interval_s: float,
                          window_s: float = AMPLITUDE_WINDOW_S) -> tuple[np.ndarray, np.ndarray]:
    """Entry and exit thresholds of an inspiration, following the local breath size.

    The typical inspiratory peak is the AMPLITUDE_PERCENTILE of ``above_lpm`` in windows
    of ``window_s`` (interpolated between them), so a night's drift in tidal volume is
    fine. An inspiration starts above HIGH_FRACTION of it, at least MIN_HIGH_LPM (more than
    one ADC step, so quantization and cardiogenic ripple stay out), and ends below
    LOW_FRACTION of it, at least MIN_LOW_LPM and at most LOW_MAX_OF_HIGH of the entry.

    Parameters
    ----------
    above_lpm : array_like
        Flow above baseline, L/min, one value per ``interval_s``.
    interval_s : float
        Time step of ``above_lpm``, s.
    window_s : float
        Window of the typical peak, s.

    Returns
    -------
    high_lpm, low_lpm : numpy.ndarray
        Entry and exit threshold at each sample, L/min above baseline; ``low <= high``.

    Raises
    ------
    ValueError
        If ``interval_s`` is not positive.
    """
    above_lpm = np.asarray(above_lpm, dtype=np.float64)
    peak_lpm = _windowed(above_lpm, _window_samples(window_s, interval_s), _peak_level)
    high_lpm = np.maximum(HIGH_FRACTION * peak_lpm, MIN_HIGH_LPM)
    low_lpm = np.minimum(np.maximum(LOW_FRACTION * peak_lpm, MIN_LOW_LPM), LOW_MAX_OF_HIGH * high_lpm)
    return high_lpm, low_lpm


def in_inspiration(above_lpm, high_lpm, low_lpm) -> np.ndarray:
    """Hysteresis: inspiration from a rise above ``high_lpm`` until a fall below ``low_lpm``.

    A dip between the two thresholds (inside a double-humped inspiration) does not end
    an inspiration, and a rise between them does not start one. Vectorised: the state at
    each sample is the last threshold crossed up to it.

    Parameters
    ----------
    above_lpm : array_like
        Flow above baseline, L/min.
    high_lpm, low_lpm : float or array_like
        Entry and exit thresholds, L/min (per sample or one for all).

    Returns
    -------
    numpy.ndarray of bool
        True while in inspiration; False before the first crossing of either threshold.

    Raises
    ------
    ValueError
        If ``low_lpm`` is above ``high_lpm`` anywhere.
    """
    above_lpm = np.asarray(above_lpm, dtype=np.float64)
    if np.any(np.greater(low_lpm, high_lpm)):
        raise ValueError("the exit threshold low_lpm must not be above the entry threshold high_lpm")
    crossed = np.full(len(above_lpm), -1, dtype=np.int8)  # -1 none, 0 below low, 1 above high
    crossed[above_lpm < low_lpm] = 0
    crossed[above_lpm > high_lpm] = 1
    last = np.where(crossed >= 0, np.arange(len(crossed)), 0)
    np.maximum.accumulate(last, out=last)
    return crossed[last] == 1


def inspiration_runs(inspiring) -> tuple[np.ndarray, np.ndarray]:
    """Start and end index of each inspiration that has ended within the signal.

    An inspiration still open at the end is left out: its fall to baseline, which would
    make it a breath, is not in the recording.

    Parameters
    ----------
    inspiring : array_like of bool
        True while in inspiration (:func:`in_inspiration`).

    Returns
    -------
    starts, ends : numpy.ndarray of int
        First index of each run of True and the index just after it (``ends < len``).

    Raises
    ------
    ValueError
        If ``inspiring`` is not one-dimensional.
    """
    inspiring = np.asarray(inspiring, dtype=bool)
    if inspiring.ndim != 1:
        raise ValueError(f"inspiring must be one-dimensional, not of shape {inspiring.shape}")
    starts, ends = _true_runs(inspiring)
    closed = ends < len(inspiring)
    return starts[closed], ends[closed]


def drop_short_runs(time_s, starts, ends,
                    min_duration_s: float = MIN_INSPIRATION_S) -> tuple[np.ndarray, np.ndarray]:
    """The runs lasting at least ``min_duration_s`` from their first to their last sample.

    Parameters
    ----------
    time_s : array_like
        Sample times, s.
    starts, ends : array_like of int
        First index of each run and the index just after it.
    min_duration_s : float
        Shortest inspiration, s; a shorter one is a glitch.

    Returns
    -------
    starts, ends : numpy.ndarray of int
        The runs kept.

    Raises
    ------
    ValueError
        If ``starts`` and ``ends`` differ in length.
    """
    time_s = np.asarray(time_s, dtype=np.float64)
    starts, ends = np.asarray(starts, dtype=np.intp), np.asarray(ends, dtype=np.intp)
    if starts.shape != ends.shape:
        raise ValueError("starts and ends must have the same length")
    long_enough = (time_s[ends - 1] - time_s[starts]) >= min_duration_s
    return starts[long_enough], ends[long_enough]


def run_peaks(x, starts, ends) -> np.ndarray:
    """Index of the (first) maximum of ``x`` in each run ``[starts[i], ends[i])``.

    Vectorised: at 8 hours there are thousands of runs, and a Python ``argmax`` per run
    cost a tenth of the analysis.

    Parameters
    ----------
    x : array_like
        Signal (flow above baseline, L/min).
    starts, ends : array_like of int
        Runs: non-empty, ascending, disjoint, ``ends[i] < len(x)``.

    Returns
    -------
    numpy.ndarray of int
        One index per run.

    Raises
    ------
    ValueError
        If a run is empty or reaches the end of ``x``.
    """
    x = np.asarray(x, dtype=np.float64)
    starts, ends = np.asarray(starts, dtype=np.intp), np.asarray(ends, dtype=np.intp)
    if len(starts) == 0:
        return np.zeros(0, dtype=np.intp)
    if not ((ends > starts).all() and ends[-1] < len(x)):
        raise ValueError("runs must be non-empty and end before the last sample of x")
    run_max = np.maximum.reduceat(x, np.column_stack((starts, ends)).ravel())[::2]
    lengths = ends - starts
    run_of = np.repeat(np.arange(len(starts)), lengths)
    index = np.arange(len(run_of)) - np.repeat(np.cumsum(lengths) - lengths, lengths) + starts[run_of]
    at_max = np.flatnonzero(x[index] == run_max[run_of])
    first = at_max[np.unique(run_of[at_max], return_index=True)[1]]
    return index[first]


def merge_close_peaks(peak_times_s, peak_heights_lpm,
                      min_interval_s: float = MIN_BREATH_INTERVAL_S) -> np.ndarray:
    """Merge peaks closer than ``min_interval_s`` to the previous kept one, keeping the higher.

    Parameters
    ----------
    peak_times_s : array_like
        Peak times, s, ascending.
    peak_heights_lpm : array_like
        Height of each peak, L/min.
    min_interval_s : float
        Shortest time between two breaths, s.

    Returns
    -------
    numpy.ndarray
        Times of the peaks kept, s.

    Raises
    ------
    ValueError
        If ``peak_times_s`` and ``peak_heights_lpm`` differ in length.
    """
    peak_times_s = np.asarray(peak_times_s, dtype=np.float64)
    peak_heights_lpm = np.asarray(peak_heights_lpm, dtype=np.float64)
    if peak_times_s.shape != peak_heights_lpm.shape:
        raise ValueError("peak_times_s and peak_heights_lpm must have the same length")
    if (np.diff(peak_times_s) >= min_interval_s).all():  # the usual case: nothing to merge
        return peak_times_s
    keep_t, keep_h = [peak_times_s[0]], [peak_heights_lpm[0]]
    for t, h in zip(peak_times_s[1:], peak_heights_lpm[1:]):
        if t - keep_t[-1] < min_interval_s:
            if h > keep_h[-1]:
                keep_t[-1], keep_h[-1] = t, h
        else:
            keep_t.append(t)
            keep_h.append(h)
    return np.array(keep_t)


def breath_detection(time, flow_lpm) -> BreathDetection:
    """Find breaths; return the inspiratory peaks and the signals they were found in.

    The steps, each a function of its own:

    1. :func:`downsample`: 5-sample blocks, median flow (removes single ADC-step spikes,
       100 -> 20 Hz);
    2. :func:`smooth`: 0.25 s centred moving average;
    3. :func:`above_baseline`: minus a slowly varying no-flow baseline (30 s window
       medians, so a leak offset is followed);
    4. :func:`hysteresis_thresholds` relative to the local typical inspiratory peak (98th
       percentile above baseline in 120 s windows): enter inspiration above 25 % of it (at
       least 6 L/min, more than one ADC step, so quantization and cardiogenic ripple stay
       out), leave it below 10 % (at least 1.5 L/min), so a dip inside a double-humped
       inspiration does not split it and a weak expiration that is quantized to zero
       still ends it;
    5. :func:`in_inspiration` and :func:`inspiration_runs`: the inspirations; one still
       open at the end is not counted;
    6. :func:`drop_short_runs`: inspirations shorter than 0.12 s are glitches;
    7. :func:`run_peaks`: the peak of each inspiration;
    8. :func:`merge_close_peaks`: peaks closer than 0.4 s are one breath (the higher kept).

    Parameters
    ----------
    time : array_like
        Sample times, s (100 Hz; gaps allowed).
    flow_lpm : array_like
        Flow, L/min, inspiration positive.

    Returns
    -------
    BreathDetection
        Block times and flows, the inspiration runs kept and the inspiratory peak times
        (s, ascending; empty for fewer than two blocks of samples).

    Raises
    ------
    ValueError
        If ``time`` and ``flow_lpm`` differ in length.
    """
    time, flow_lpm = _same_length(time, flow_lpm)
    if len(time) < 2 * DETECT_BLOCK:
        empty = np.zeros(0)
        return BreathDetection(empty, empty, BLOCK_INTERVAL_S, empty.astype(np.intp),
                               empty.astype(np.intp), empty)
    block_time_s, block_flow_lpm = downsample(time, flow_lpm)
    interval_s = sample_interval_s(block_time_s)
    smoothed_lpm = smooth(block_flow_lpm, interval_s)
    above_lpm = above_baseline(smoothed_lpm, interval_s)
    high_lpm, low_lpm = hysteresis_thresholds(above_lpm, interval_s)
    runs = inspiration_runs(in_inspiration(above_lpm, high_lpm, low_lpm))
    starts, ends = drop_short_runs(block_time_s, *runs)
    peaks = run_peaks(above_lpm, starts, ends)
    return BreathDetection(block_time_s, smoothed_lpm, interval_s, starts, ends,
                           merge_close_peaks(block_time_s[peaks], above_lpm[peaks]))


def detect_breaths(time, flow_lpm) -> np.ndarray:
    """Inspiratory peak times, s, ascending: :func:`breath_detection`'s ``peak_times_s``
    (same parameters and errors; empty for fewer than two blocks of samples)."""
    return breath_detection(time, flow_lpm).peak_times_s


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


# --- Clinical measures (issue #13) -----------------------------------------------------
def cycle_baselines_lpm(smoothed_lpm, starts) -> np.ndarray:
    """The no-flow baseline of each breath, L/min: the mean flow over its whole cycle.

    A breath's cycle runs from the start of its inspiration run to the start of the next
    one; over a whole cycle the inspired and expired volumes are equal, so the mean flow is
    the level of no breathing flow (the leak). The last breath has no whole cycle and takes
    the previous breath's baseline (the mean of the whole signal when it is the only one).

    Parameters
    ----------
    smoothed_lpm : array_like
        Flow, L/min, one value per block.
    starts : array_like of int
        Block index of each breath's inspiration run, ascending.

    Returns
    -------
    numpy.ndarray
        One baseline per breath, L/min.
    """
    smoothed_lpm = np.asarray(smoothed_lpm, dtype=np.float64)
    starts = np.asarray(starts, dtype=np.intp)
    if len(starts) == 0:
        return np.zeros(0)
    if len(starts) == 1:
        return np.array([float(np.mean(smoothed_lpm))])
    cumulative = np.concatenate(([0.0], np.cumsum(smoothed_lpm)))
    means = (cumulative[starts[1:]] - cumulative[starts[:-1]]) / np.diff(starts)
    return np.append(means, means[-1])


def breath_table(detection: BreathDetection) -> dict:
    """One row per breath: times and tidal volume.

    Per breath, with ``net`` = flow minus the breath's no-flow baseline
    (:func:`cycle_baselines_lpm`):

    - **inspiration**: the span around the breath's inspiratory peak where ``net`` stays
      above MIN_LOW_LPM (the exit threshold's floor; below it an ADC step blurs the sign);
    - **tidal volume** (L): the integral of ``net`` over the inspiration;
    - **expiration**: from the inspiration's end to the last block with ``net`` below
      -MIN_LOW_LPM before the next inspiration (zero when the expiration is too weak to
      be seen, e.g. quantized away);
    - **end** of the breath: the end of its expiration.

    Parameters
    ----------
    detection : BreathDetection
        From :func:`breath_detection`.

    Returns
    -------
    dict of numpy.ndarray
        ``start_s``, ``peak_s``, ``end_s`` (s), ``inspiratory_time_s``,
        ``expiratory_time_s`` (s) and ``tidal_volume_l`` (L), one value per breath.
    """
    names = ("start_s", "peak_s", "end_s", "inspiratory_time_s", "expiratory_time_s", "tidal_volume_l")
    block_time_s, flow_lpm = detection.block_time_s, detection.smoothed_lpm
    peak_times_s = np.asarray(detection.peak_times_s, dtype=np.float64)
    if len(peak_times_s) == 0:
        return {name: np.zeros(0) for name in names}
    # the run of each kept peak (merged peaks keep the higher run's start)
    run_of_peak = np.searchsorted(block_time_s[detection.starts], peak_times_s, side="right") - 1
    starts = detection.starts[run_of_peak]
    baseline_lpm = cycle_baselines_lpm(flow_lpm, starts)
    n_blocks = len(flow_lpm)
    cycle_end = np.append(starts[1:], n_blocks)
    # each block takes the baseline of the breath whose cycle it is in (the first breath's
    # before it); repeat and index searches on the few edges, not on every block (8 h: 576k)
    net_lpm = flow_lpm - np.repeat(baseline_lpm, np.diff(np.concatenate(([0], cycle_end))))
    peak_block = np.minimum(np.searchsorted(block_time_s, peak_times_s), n_blocks - 1)
    span_start, span_end = _true_runs(net_lpm > MIN_LOW_LPM)
    if len(span_start) == 0:
        span_start = span_end = np.zeros(1, dtype=np.intp)  # an empty span holds no peak
    # the span holding each peak; a peak outside every span is an inspiration of one block
    k = np.maximum(np.searchsorted(span_start, peak_block, side="right") - 1, 0)
    holds = (span_start[k] <= peak_block) & (peak_block < span_end[k])
    insp_start = np.where(holds, span_start[k], peak_block)
    insp_end = np.where(holds, span_end[k], peak_block + 1)
    cumulative = np.concatenate(([0.0], np.cumsum(net_lpm)))
    tidal_volume_l = (cumulative[insp_end] - cumulative[insp_start]) * detection.interval_s / 60.0
    # -1 first: "no expiring block before the next inspiration" reads as index -1
    expiring_at = np.concatenate(([-1], np.flatnonzero(net_lpm < -MIN_LOW_LPM)))
    last_in_cycle = expiring_at[np.searchsorted(expiring_at, cycle_end, side="left") - 1]
    exp_end = np.where(last_in_cycle >= insp_end, np.minimum(last_in_cycle + 1, n_blocks - 1),
                       np.minimum(insp_end, n_blocks - 1))
    start_s = block_time_s[insp_start]
    insp_end_s = block_time_s[np.minimum(insp_end, n_blocks - 1)]
    end_s = np.maximum(block_time_s[exp_end], insp_end_s)
    return dict(zip(names, (start_s, peak_times_s, end_s, insp_end_s - start_s,
                            end_s - insp_end_s, tidal_volume_l)))


def _true_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First index of each run of True in ``mask`` and the index just after it."""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).view(np.int8)))
    return edges[::2], edges[1::2]


def _per_duration(amount: float, duration_s: float, per_s: float) -> float:
    """``amount`` per ``per_s`` seconds of a recording of ``duration_s``; ValueError unless
    ``duration_s`` is positive."""
    if not duration_s > 0:
        raise ValueError(f"duration_s must be a positive duration in s, not {duration_s!r}")
    return amount * per_s / duration_s


def median_tidal_volume_l(tidal_volume_l) -> float:
    """Median tidal volume of a recording, L (0.0 without breaths).

    Parameters
    ----------
    tidal_volume_l : array_like
        Tidal volume of each breath, L.
    """
    tidal_volume_l = np.asarray(tidal_volume_l, dtype=np.float64)
    return float(np.median(tidal_volume_l)) if len(tidal_volume_l) else 0.0


def minute_ventilation_lpm(tidal_volume_l, duration_s: float) -> float:
    """Minute ventilation, L/min: total inspired volume / recording duration in minutes.

    Parameters
    ----------
    tidal_volume_l : array_like
        Tidal volume of each breath, L.
    duration_s : float
        Recording duration, s.

    Raises
    ------
    ValueError
        If ``duration_s`` is not positive.
    """
    return _per_duration(float(np.sum(tidal_volume_l)), duration_s, 60.0)


def _minute_edges_s(first_s: float, last_s: float) -> np.ndarray:
    """Edges of consecutive SERIES_STEP_S bins from ``first_s``; the last bin ends at ``last_s``."""
    n_bins = max(1, math.ceil((last_s - first_s) / SERIES_STEP_S))
    return np.append(first_s + SERIES_STEP_S * np.arange(n_bins), max(last_s, first_s))


def minute_ventilation_series(breath_start_s, tidal_volume_l, first_s: float, last_s: float):
    """Minute ventilation per minute, L/min: the tidal volumes of the breaths starting in
    each minute from ``first_s``, divided by that minute's length (the last may be shorter).

    Parameters
    ----------
    breath_start_s : array_like
        Start of each breath, s, ascending.
    tidal_volume_l : array_like
        Tidal volume of each breath, L.
    first_s, last_s : float
        Time of the first and last sample, s.

    Returns
    -------
    start_s : numpy.ndarray
        Start of each minute, s.
    ventilation_lpm : numpy.ndarray
        Minute ventilation in it, L/min (0 for a bin of zero length).

    Raises
    ------
    ValueError
        If ``breath_start_s`` and ``tidal_volume_l`` differ in length.
    """
    breath_start_s, tidal_volume_l = _same_length(breath_start_s, tidal_volume_l,
                                                  ("breath_start_s", "tidal_volume_l"))
    edges_s = _minute_edges_s(first_s, last_s)
    bin_of = np.clip(np.searchsorted(edges_s, breath_start_s, side="right") - 1, 0, len(edges_s) - 2)
    volume_l = np.bincount(bin_of, weights=tidal_volume_l, minlength=len(edges_s) - 1)
    length_min = np.diff(edges_s) / 60.0
    # float output: bincount of no breath gives integers
    return edges_s[:-1], np.divide(volume_l, length_min, out=np.zeros(len(length_min)),
                                   where=length_min > 0)


def leak_rate_lpm(leakage_l: float, duration_s: float) -> float:
    """Leak rate, L/min: the mean net flow, i.e. the net volume / duration in minutes.

    Over whole breaths the inspired and expired volumes are equal, so the net flow is what
    leaks.

    Parameters
    ----------
    leakage_l : float
        Net volume through the mask, L (:func:`leakage_litres`).
    duration_s : float
        Recording duration, s.

    Raises
    ------
    ValueError
        If ``duration_s`` is not positive.
    """
    return _per_duration(float(leakage_l), duration_s, 60.0)


def leak_rate_series(time_s, flow_lpm):
    """Leak rate per minute, L/min: the mean flow of the samples in each minute.

    Parameters
    ----------
    time_s : array_like
        Sample times, s, ascending.
    flow_lpm : array_like
        Flow, L/min.

    Returns
    -------
    start_s : numpy.ndarray
        Start of each minute, s (empty without samples).
    leak_lpm : numpy.ndarray
        Mean flow in it, L/min.

    Raises
    ------
    ValueError
        If ``time_s`` and ``flow_lpm`` differ in length.
    """
    time_s, flow_lpm = _same_length(time_s, flow_lpm)
    if len(time_s) == 0:
        return np.zeros(0), np.zeros(0)
    edges_s = _minute_edges_s(time_s[0], time_s[-1])
    first = np.searchsorted(time_s, edges_s[:-1])
    keep = np.append(first[1:] > first[:-1], True) & (first < len(time_s))
    first = first[keep]
    counts = np.diff(np.append(first, len(time_s)))
    return edges_s[:-1][keep], np.add.reduceat(flow_lpm, first) / counts


class Event(NamedTuple):
    """A respiratory event in file time: ``type`` is "apnea" or "hypopnea"; times in s."""

    type: str
    start_s: float
    end_s: float


def find_hypopneas(table: dict, apnea_gap_s: float = APNEA_GAP_S) -> list:
    """Hypopneas: runs of consecutive reduced breaths lasting at least HYPOPNEA_MIN_S.

    A breath is reduced when its tidal volume is at most HYPOPNEA_FRACTION (50 %) of the
    reference: the median tidal volume of the breaths starting in the preceding
    HYPOPNEA_REFERENCE_S (120 s) that belong to no event (a breath of a run still open is
    left out too: it may become an event). Without such a breath there is no reference and
    no breath is reduced. A run lasts from the start of its first breath to the end of its
    last; a gap of more than ``apnea_gap_s`` between two breaths (an apnea) ends a run, so
    no hypopnea is counted as part of an apnea. This is a flow-only rule, as flow-only
    devices use: there is no SpO2 signal, so no desaturation criterion.

    Parameters
    ----------
    table : dict of array_like
        :func:`breath_table`'s ``start_s``, ``peak_s``, ``end_s`` and ``tidal_volume_l``.
    apnea_gap_s : float
        Apnea rule, s (a longer gap between consecutive peaks is an apnea).

    Returns
    -------
    list of Event
        The hypopneas, in time order.

    Raises
    ------
    ValueError
        If the columns differ in length.
    """
    start_s, peak_s, end_s, volume_l = (np.asarray(table[k], dtype=np.float64)
                                        for k in ("start_s", "peak_s", "end_s", "tidal_volume_l"))
    if not start_s.shape == peak_s.shape == end_s.shape == volume_l.shape:
        raise ValueError("the breath table's columns must have the same length")
    n_breaths = len(start_s)
    window_first = np.searchsorted(start_s, start_s - HYPOPNEA_REFERENCE_S, side="left")
    # Only a breath at most half the largest earlier one in its window can be reduced (a
    # median never exceeds the maximum): the exact, sequential rule then runs on those few.
    possible = np.zeros(n_breaths, dtype=bool)
    has_window = window_first < np.arange(n_breaths)
    if has_window.any():
        bounds = np.column_stack((window_first[has_window], np.flatnonzero(has_window))).ravel()
        window_max_l = np.maximum.reduceat(volume_l, bounds)[::2]
        possible[has_window] = volume_l[has_window] <= HYPOPNEA_FRACTION * window_max_l
    volumes = volume_l.tolist()
    in_event = [False] * n_breaths
    events, run = [], []

    def close(run):
        if run and end_s[run[-1]] - start_s[run[0]] >= HYPOPNEA_MIN_S:
            for j in run:
                in_event[j] = True
            events.append(Event("hypopnea", float(start_s[run[0]]), float(end_s[run[-1]])))
        return []

    for i in np.flatnonzero(possible).tolist():
        if run and (i != run[-1] + 1 or peak_s[i] - peak_s[run[-1]] > apnea_gap_s):
            run = close(run)
        first = int(window_first[i])
        upto = run[0] if run else i  # an open run is the breaths just before this one
        reference = [v for v, e in zip(volumes[first:upto], in_event[first:upto]) if not e]
        if reference and volumes[i] <= HYPOPNEA_FRACTION * statistics.median(reference):
            run.append(i)
        else:
            run = close(run)
    close(run)
    return events


def events_list(apneas, hypopneas) -> list:
    """Apneas and hypopneas as one list of :class:`Event`, ordered by start time.

    Parameters
    ----------
    apneas : list of ApneaEvent
    hypopneas : list of Event
    """
    return sorted([Event("apnea", a.start, a.end) for a in apneas] + list(hypopneas),
                  key=lambda e: (e.start_s, e.end_s))


def per_hour(count: int, duration_s: float) -> float:
    """Events per hour of recording (AHI, apnea index).

    Raises
    ------
    ValueError
        If ``duration_s`` is not positive.
    """
    return _per_duration(count, duration_s, 3600.0)


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
        What :func:`~sleeplab.analysis.reader.read_samples` refuses (a file that cannot be
        read, is empty or binary, has an over-long line, no valid sample, or is mostly out
        of time order), or less than ``MIN_DURATION_S`` of valid data.
    """
    samples = read_samples(source)
    time = samples.time
    duration_s = float(time[-1] - time[0]) if len(time) else 0.0
    if duration_s < MIN_DURATION_S:
        raise CpapFileError(f"the recording is too short: {duration_s:.1f} s of valid data, "
                            f"at least {MIN_DURATION_S:.0f} s are needed")
    flow = venturi_flow(samples.p2, samples.p1_ins, samples.p1_exp)
    flow_lpm = flow * M3S_TO_LPM
    detection = breath_detection(time, flow_lpm)
    breath_times = detection.peak_times_s
    apneas = find_apneas(breath_times)
    table = breath_table(detection)
    hypopneas = find_hypopneas(table)
    leakage_l = leakage_litres(time, flow)
    return AnalysisResult(
        duration=duration_s,
        breaths=int(len(breath_times)),
        breath_rate_bpm=60.0 * len(breath_times) / duration_s,
        breath_times=breath_times,
        apnea_count=len(apneas),
        apnea_events=apneas,
        ahi=per_hour(len(apneas) + len(hypopneas), duration_s),
        leakage=leakage_l,
        time=time,
        flow=flow,
        skipped_lines=samples.skipped_lines,
        flow_lpm=flow_lpm,
        hypopnea_events=hypopneas,
        apnea_index=per_hour(len(apneas), duration_s),
        breath_table=table,
        tidal_volume_l=median_tidal_volume_l(table["tidal_volume_l"]),
        minute_ventilation_lpm=minute_ventilation_lpm(table["tidal_volume_l"], duration_s),
        minute_ventilation_series=minute_ventilation_series(table["start_s"], table["tidal_volume_l"],
                                                            time[0], time[-1]),
        leak_rate_lpm=leak_rate_lpm(leakage_l, duration_s),
        leak_rate_series=leak_rate_series(time, flow_lpm),
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


def shade_events(ax, events, min_width=0.0, band=(0.0, 1.0), alpha=EVENT_ALPHA,
                 labelled=True) -> list:
    """Shade each event's span over the full height of ``ax``, one colour per type.

    One collection per type (with its legend label, only when the type occurs): far
    cheaper than one ``axvspan`` per event on a night with hundreds of them.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    events : iterable of (type, start, end)
        :class:`Event` or equal triples; ``type`` is a key of EVENT_COLOURS, ``start`` and
        ``end`` in the x axis' data units.
    min_width : float
        Narrowest span drawn, x data units: a 20 s event on an 8-hour axis would be under
        one pixel.
    band : (float, float)
        Bottom and top of the spans, fractions of the axes' height.
    alpha : float
        Opacity.
    labelled : bool
        Label the collections for the legend.

    Returns
    -------
    list of matplotlib.collections.PolyCollection
        The collections drawn, labelled ``EVENT_LABELS[type]`` (gid = the type).
    """
    drawn = []
    for kind, colour in EVENT_COLOURS.items():
        spans = [(start, max(end - start, min_width)) for k, start, end in events if k == kind]
        if spans:
            drawn.append(ax.broken_barh(spans, (band[0], band[1] - band[0]),
                                        transform=ax.get_xaxis_transform(), facecolor=colour,
                                        alpha=alpha, linewidth=0, gid=kind,
                                        label=EVENT_LABELS[kind] if labelled else None))
    return drawn


def flow_plot_figure(result: AnalysisResult, width_px: int = 1200, height_px: int = 450):
    """The flow plot's figure: flow (L/min) against time (s) with breaths, apneas (red)
    and hypopneas (orange).

    Uses matplotlib's object-oriented API on an Agg canvas (no pyplot state, thread safe).

    Parameters
    ----------
    result : AnalysisResult
    width_px, height_px : int
        Image size, pixels (at 100 dpi).

    Returns
    -------
    matplotlib.figure.Figure
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
        ax.fill_between(*envelope, color=FLOW_COLOUR, linewidth=0.5, label="flow")
    shade_events(ax, result.events, EVENT_MIN_WIDTH_FRACTION * result.duration)
    if len(result.breath_times):
        # at the first sample from each peak on: a peak's time is a block's mean time, at
        # most one sample before it (np.interp into a night of samples costs ~6 ms)
        at_peak = np.minimum(np.searchsorted(result.time, result.breath_times), len(result.time) - 1)
        ax.plot(result.breath_times, flow_lpm[at_peak], linestyle="none", marker="v", markersize=4,
                color="#2ca02c", label="breath")
    ax.axhline(0.0, color="0.6", linewidth=0.5)
    ax.set_xlabel("time (s)", fontsize=PLOT_FONT_PT)
    ax.set_ylabel("flow (L/min)", fontsize=PLOT_FONT_PT)
    ax.tick_params(labelsize=small_pt)
    # y given: matplotlib then skips measuring every artist to place the title (~6 ms)
    ax.set_title(loc="left", y=1.0, fontsize=PLOT_FONT_PT,
                 label=f"{result.breaths} breaths, {result.breath_rate_bpm:.1f}/min, "
                 f"{_plural(result.apnea_count, 'apnea')}, "
                 f"{_plural(result.hypopnea_count, 'hypopnea')}, {result.duration:.0f} s")
    if len(result.time):
        ax.set_xlim(result.time[0], result.time[-1])
    ax.set_ylim(*flow_axis_range(flow_lpm))
    ax.grid(True, linewidth=0.3, alpha=0.5)
    # legend above the axes: inside it would hide peaks at the end of the recording
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=4, fontsize=small_pt,
              frameon=False, handlelength=1.2, columnspacing=0.8)
    fig.subplots_adjust(left=0.085, right=0.985, bottom=0.16, top=0.88)
    return fig


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def flow_plot_png(result: AnalysisResult, width_px: int = 1200, height_px: int = 450) -> bytes:
    """Render :func:`flow_plot_figure` as a PNG.

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
    out = io.BytesIO()
    flow_plot_figure(result, width_px, height_px).savefig(
        out, format="png", pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return out.getvalue()


# --- CLI --------------------------------------------------------------------------------
def _summary(result: AnalysisResult) -> str:
    lines = [
        f"duration        {result.duration:.1f} s",
        f"breaths         {result.breaths}",
        f"breath rate     {result.breath_rate_bpm:.1f} /min",
        f"apneas          {result.apnea_count} (apnea index {result.apnea_index:.1f} /h)",
        f"hypopneas       {result.hypopnea_count} (AHI {result.ahi:.1f} /h)",
    ]
    lines += [f"  {e.type:<13} {e.start_s:.1f} - {e.end_s:.1f} s ({e.end_s - e.start_s:.1f} s)"
              for e in result.events]
    lines += [f"tidal volume    {result.tidal_volume_l:.3f} L (median)",
              f"ventilation     {result.minute_ventilation_lpm:.2f} L/min",
              f"leak rate       {result.leak_rate_lpm:.2f} L/min",
              f"leakage         {result.leakage:.3f} L"]
    lines.append(f"skipped lines   {len(result.skipped_lines)}")
    lines += [f"  line {s.line_number}: {s.reason}" for s in result.skipped_lines[:10]]
    return "\n".join(lines)


REPORT_SUFFIXES = (".pdf", ".png")


def _report_path(path: str) -> str:
    """argparse type of ``--report``: the file's extension decides the format."""
    if not path.lower().endswith(REPORT_SUFFIXES):
        raise argparse.ArgumentTypeError(f"{path!r} must end in .pdf or .png (the extension "
                                         "decides the report's format)")
    return path


def main(argv=None) -> int:
    """Command line: print the metrics of a recording (``--json``), optionally save a plot
    and a night report."""
    parser = argparse.ArgumentParser(description="Analyse a CPAP venturi recording.")
    parser.add_argument("file", help="recording (text, header + 7 comma-separated columns)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--plot", metavar="OUT.png", help="write the flow plot to this PNG file")
    parser.add_argument("--report", metavar="OUT.pdf|OUT.png", type=_report_path,
                        help="write the night report (one page) to this PDF or PNG file")
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
    if args.report:
        from sleeplab.report import report_from_result  # it draws with this module's parts

        with open(args.report, "wb") as fh:
            fh.write(report_from_result(result, fmt=args.report.rsplit(".", 1)[-1].lower()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
