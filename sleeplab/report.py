"""The night report: a recording's compact series, and a one-page picture of a night.

:func:`night_series` turns an :class:`~cpap_measurements.AnalysisResult` into the small,
JSON-ready series the server stores with each record (per minute: breath rate, tidal
volume, minute ventilation, leak; a min/max envelope of the flow), so a report can be
drawn later without the raw samples.

:func:`render_report` draws one or more *segments* (stored records) on one time axis, as
OSCAR's daily view does: stacked panels (flow overview with the apneas and hypopneas,
breath rate, tidal volume and minute ventilation, leak, CPAP pressure) and a summary table.
It returns PNG (A4 landscape, 150 dpi) or one-page vector PDF bytes. A segment is a mapping
(or an object with these attributes):

``start``
    The recording's start (``datetime`` or ISO 8601 text; its first sample), or ``None``:
    then the axis shows file time (h:min). Aware times are shown in the local time zone.
``pressure_cmh2o``
    The CPAP pressure the record was made at (int or None).
``series``
    :func:`night_series`'s dict, or None (a record stored before the series existed).
``events``
    ``[{"type": "apnea" | "hypopnea", "start_s", "end_s"}, ...]`` in file time, s.
``breaths``, ``duration_s``, ``breath_rate_bpm``, ``apnea_count``, ``hypopnea_count``,
``ahi``, ``apnea_index``, ``tidal_volume_l``, ``minute_ventilation_lpm``,
``leak_rate_lpm``, ``leakage_l``
    The record's metrics (None when unknown).

Drawing uses matplotlib's object-oriented API on an Agg canvas (no pyplot state, thread
safe), as :func:`cpap_measurements.flow_plot_png` does. Empty or missing values draw a
"no data" panel; nothing here raises on a record's content.
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta

import numpy as np

import cpap_measurements as cm

SERIES_STEP_S = cm.SERIES_STEP_S     # one value per minute
SERIES_FLOW_BINS = 1500              # flow envelope bins: ~1 per pixel of the report's flow panel
SERIES_KEYS = ("step_s", "minute_start_s", "breath_rate_bpm", "tidal_volume_l",
               "minute_ventilation_lpm", "leak_rate_lpm", "flow_t_s", "flow_min_lpm", "flow_max_lpm")
TIME_DECIMALS = 2                    # s
FLOW_DECIMALS = 1                    # L/min of the envelope (an ADC step is ~5 L/min)
RATE_DECIMALS = 2                    # breaths/min, L/min of the per-minute series
VOLUME_DECIMALS = 3                  # L

REPORT_SIZE_IN = (297 / 25.4, 210 / 25.4)   # A4 landscape
REPORT_DPI = 150
REPORT_FONT_PT = 10
EVENT_FLAG_BAND = (0.93, 1.0)        # of the flow panel's height
REPORT_FORMATS = ("png", "pdf")
LEFT, RIGHT, PANELS_TOP = 0.075, 0.925, 0.895   # figure fractions
REPORT_MARGIN_IN = 0.2               # below the table
TIME_AXIS_IN = 0.5                   # the time axis' tick labels and label, between panels and table
TABLE_ROW_IN = 0.22
TABLE_HEADER_ROWS = 3                # the header's lines
TABLE_MAX_RECORDS = 8                # record rows in the table (a night has a few uploads)
NIGHT_ROW = "night"                  # the label of the table's totals row
PNG_COLOURS = 256
PNG_COMPRESS_LEVEL = 6               # the report is made once per download: size over speed
NO_DATA = "no data"
MISSING = "–"
#: Tick spacings of the time axis, s; the first giving at most MAX_TIME_TICKS ticks is used.
TIME_TICK_STEPS_S = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800)
MAX_TIME_TICKS = 12
FEW_MINUTES = 30                     # per-minute series shorter than this get dots too
SECONDS_PER_DAY = 86400.0
RATE_COLOUR = "#2ca02c"
TIDAL_COLOUR = "#9467bd"
VENTILATION_COLOUR = "#17becf"
LEAK_COLOUR = "#8c564b"
PRESSURE_COLOUR = "#444444"
METRICS = ("breaths", "duration_s", "breath_rate_bpm", "apnea_count", "hypopnea_count", "ahi",
           "apnea_index", "tidal_volume_l", "minute_ventilation_lpm", "leak_rate_lpm", "leakage_l")


# --- Series ---------------------------------------------------------------------------------
def _rounded(values, decimals: int) -> list:
    """Plain floats rounded to ``decimals``; NaN and infinities become None (JSON has neither)."""
    values = np.round(np.asarray(values, dtype=np.float64), decimals)
    return [v if math.isfinite(v) else None for v in values.tolist()]


def _per_minute_breaths(start_s: np.ndarray, tidal_volume_l: np.ndarray, edges_s: np.ndarray):
    """Breath rate (/min) and median tidal volume (L, NaN without breaths) of the breaths
    starting in each bin of ``edges_s``; the rate over the bin's own length (the last may
    be shorter), as the analysis's minute ventilation series does."""
    n_bins = len(edges_s) - 1
    bin_of = np.clip(np.searchsorted(edges_s, start_s, side="right") - 1, 0, n_bins - 1)
    length_min = np.diff(edges_s) / 60.0
    counts = np.bincount(bin_of, minlength=n_bins)
    rate_bpm = np.divide(counts, length_min, out=np.full(n_bins, np.nan), where=length_min > 0)
    groups = np.split(tidal_volume_l, np.searchsorted(bin_of, np.arange(1, n_bins)))
    median_l = np.array([np.median(g) if len(g) else np.nan for g in groups])
    return rate_bpm, median_l


def night_series(result: cm.AnalysisResult) -> dict:
    """The compact, JSON-ready series of one recording, stored with its record.

    Parameters
    ----------
    result : cpap_measurements.AnalysisResult

    Returns
    -------
    dict
        Exactly SERIES_KEYS:

        - ``step_s``: SERIES_STEP_S (60.0), s;
        - ``minute_start_s``: start of each minute, file time s (the first is the first
          sample's time; the last minute may be shorter);
        - per minute, lists as long as ``minute_start_s``: ``breath_rate_bpm`` (breaths
          starting in the minute / its length, /min), ``tidal_volume_l`` (median tidal
          volume of those breaths, L; None without any), ``minute_ventilation_lpm`` and
          ``leak_rate_lpm`` (the analysis's series, L/min; leak None for a minute without
          samples);
        - ``flow_t_s``, ``flow_min_lpm``, ``flow_max_lpm``: min/max envelope of the flow
          (bin start, s; minimum and maximum, L/min) in at most SERIES_FLOW_BINS bins
          (every sample, min = max, when the recording has no more samples than that).

        Times are rounded to 0.01 s, flow to 0.1 L/min, rates to 0.01, volumes to 0.001 L;
        NaN and infinities are None.
    """
    time_s, flow_lpm = result.time, result.flow_lpm
    minute_start_s, ventilation_lpm = result.minute_ventilation_series
    edges_s = np.append(minute_start_s, max(float(time_s[-1]), float(minute_start_s[-1])))
    table = result.breath_table
    rate_bpm, tidal_l = _per_minute_breaths(np.asarray(table["start_s"], dtype=np.float64),
                                            np.asarray(table["tidal_volume_l"], dtype=np.float64),
                                            edges_s)
    leak_start_s, leak_values = result.leak_rate_series
    leak_lpm = np.full(len(minute_start_s), np.nan)  # a minute without samples has no leak
    leak_lpm[np.searchsorted(minute_start_s, leak_start_s)] = leak_values
    if len(flow_lpm) <= SERIES_FLOW_BINS:
        flow_t_s, low_lpm, high_lpm = time_s, flow_lpm, flow_lpm
    else:  # _envelope keeps every sample up to twice its bins: halve them for those
        bins = SERIES_FLOW_BINS if len(flow_lpm) > 2 * SERIES_FLOW_BINS else SERIES_FLOW_BINS // 2
        flow_t_s, low_lpm, high_lpm = cm._envelope(time_s, flow_lpm, bins)
    return {
        "step_s": float(SERIES_STEP_S),
        "minute_start_s": _rounded(minute_start_s, TIME_DECIMALS),
        "breath_rate_bpm": _rounded(rate_bpm, RATE_DECIMALS),
        "tidal_volume_l": _rounded(tidal_l, VOLUME_DECIMALS),
        "minute_ventilation_lpm": _rounded(ventilation_lpm, RATE_DECIMALS),
        "leak_rate_lpm": _rounded(leak_lpm, RATE_DECIMALS),
        "flow_t_s": _rounded(flow_t_s, TIME_DECIMALS),
        "flow_min_lpm": _rounded(low_lpm, FLOW_DECIMALS),
        "flow_max_lpm": _rounded(high_lpm, FLOW_DECIMALS),
    }


# --- Segments -------------------------------------------------------------------------------
@dataclass
class Segment:
    """One stored record as the report draws it (see the module docstring)."""

    start: datetime | None = None
    pressure_cmh2o: int | None = None
    series: dict | None = None
    events: list = field(default_factory=list)
    breaths: int | None = None
    duration_s: float | None = None
    breath_rate_bpm: float | None = None
    apnea_count: int | None = None
    hypopnea_count: int | None = None
    ahi: float | None = None
    apnea_index: float | None = None
    tidal_volume_l: float | None = None
    minute_ventilation_lpm: float | None = None
    leak_rate_lpm: float | None = None
    leakage_l: float | None = None


def _get(obj, name):
    """``obj[name]`` of a mapping, else its attribute; None when absent."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _plain(obj):
    """A pydantic model as its dict; anything else unchanged."""
    return obj.model_dump() if hasattr(obj, "model_dump") else obj


def _as_datetime(value) -> datetime | None:
    """A start as a naive local datetime (aware times converted to local time), or None."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value.astimezone().replace(tzinfo=None) if value.tzinfo else value


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _events(raw) -> list:
    """(type, start_s, end_s) of each well-formed event; others are left out."""
    out = []
    for event in raw or ():
        event = _plain(event)
        if isinstance(event, (tuple, list)) and len(event) == 3:  # (type, start_s, end_s)
            kind, start_s, end_s = event
        else:
            kind, start_s, end_s = (_get(event, k) for k in ("type", "start_s", "end_s"))
        start_s, end_s = _number(start_s), _number(end_s)
        if kind in cm.EVENT_COLOURS and start_s is not None and end_s is not None:
            out.append((kind, start_s, end_s))
    return out


def as_segment(record) -> Segment:
    """A :class:`Segment` from a record-like mapping or object (extra keys are ignored)."""
    record = _plain(record)
    values = {f.name: _get(record, f.name) for f in fields(Segment)}
    values["start"] = _as_datetime(values["start"])
    values["pressure_cmh2o"] = _number(values["pressure_cmh2o"])
    series = _plain(values["series"])
    values["series"] = series if isinstance(series, Mapping) else None
    values["events"] = _events(values["events"])
    for name in METRICS:
        values[name] = _number(values[name])
    return Segment(**values)


def _series_array(series, key) -> np.ndarray:
    """A series' list as floats (None -> NaN); empty when absent or malformed."""
    try:
        values = [np.nan if v is None else v for v in (series or {}).get(key) or ()]
        return np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return np.zeros(0)


@dataclass
class _Placed:
    """A segment placed on the report's x axis: x = x0_s + (file time - first_s)."""

    segment: Segment
    x0_s: float
    first_s: float
    duration_s: float

    @property
    def x1_s(self) -> float:
        return self.x0_s + self.duration_s

    def x(self, file_time_s):
        return self.x0_s + (np.asarray(file_time_s, dtype=np.float64) - self.first_s)


def _first_and_duration_s(segment: Segment) -> tuple[float, float]:
    """File time of the segment's first sample (0 without series) and its length, s."""
    minutes = _series_array(segment.series, "minute_start_s")
    flow_t_s = _series_array(segment.series, "flow_t_s")
    first_s = float(minutes[0]) if len(minutes) and math.isfinite(minutes[0]) else 0.0
    if segment.duration_s is not None:
        return first_s, max(segment.duration_s, 0.0)
    ends_s = [end_s for _, _, end_s in segment.events] + flow_t_s[np.isfinite(flow_t_s)].tolist()
    return first_s, max([0.0] + [end_s - first_s for end_s in ends_s])


def place_segments(segments) -> tuple[list, datetime | None]:
    """Place the segments on one x axis, s.

    With every segment's start known: clock time, x = seconds since midnight of the first
    segment's day (so ticks fall on round clock times). Otherwise the segments follow each
    other in the given order from the first one's file time (one segment: its file time).

    Returns
    -------
    placed : list of _Placed
    midnight : datetime or None
        The clock's origin, None for file time.
    """
    segments = [as_segment(s) for s in segments]
    clock = bool(segments) and all(s.start is not None for s in segments)
    midnight = min(s.start for s in segments).replace(hour=0, minute=0, second=0, microsecond=0) \
        if clock else None
    placed, next_x0_s = [], None
    for segment in segments:
        first_s, duration_s = _first_and_duration_s(segment)
        if clock:
            x0_s = (segment.start - midnight).total_seconds()
        else:
            x0_s = first_s if next_x0_s is None else next_x0_s
        placed.append(_Placed(segment, x0_s, first_s, duration_s))
        next_x0_s = x0_s + duration_s
    return placed, midnight


# --- Drawing --------------------------------------------------------------------------------
def _time_step_s(span_s: float) -> float:
    return next((s for s in TIME_TICK_STEPS_S if span_s / s <= MAX_TIME_TICKS), TIME_TICK_STEPS_S[-1])


def _clock_label(x_s: float, step_s: float) -> str:
    x_s = round(x_s) % SECONDS_PER_DAY
    hours, rest = divmod(int(x_s), 3600)
    text = f"{hours:02d}:{rest // 60:02d}"
    return text + f":{rest % 60:02d}" if step_s < 60 else text


def _elapsed_label(x_s: float, step_s: float) -> str:
    sign, x_s = ("−", -x_s) if x_s < 0 else ("", x_s)
    hours, rest = divmod(int(round(x_s)), 3600)
    if step_s < 60:
        return f"{sign}{hours * 60 + rest // 60}:{rest % 60:02d}"
    return f"{sign}{hours}:{rest // 60:02d}"


def _joined(parts) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate (x, y) parts with a NaN between them, so no line joins two segments."""
    xs, ys = [], []
    for x, y in parts:
        if len(x):
            xs += [x, [np.nan]]
            ys += [y, [np.nan]]
    if not xs:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(xs[:-1]), np.concatenate(ys[:-1])


def _minute_series(placed: list, key: str) -> tuple[np.ndarray, np.ndarray]:
    """One per-minute series of every segment at the middle of its minutes (x in s)."""
    parts = []
    for p in placed:
        start_s = _series_array(p.segment.series, "minute_start_s")
        values = _series_array(p.segment.series, key)
        if len(start_s) and len(values) == len(start_s):
            step_s = _number(_get(p.segment.series, "step_s")) or SERIES_STEP_S
            end_s = start_s + step_s
            if p.duration_s > 0:  # the last minute may be shorter
                end_s = np.minimum(end_s, p.first_s + p.duration_s)
            parts.append((p.x((start_s + np.maximum(end_s, start_s)) / 2), values))
    return _joined(parts)


def _no_data(ax) -> None:
    ax.text(0.5, 0.5, NO_DATA, transform=ax.transAxes, ha="center", va="center",
            color="0.45", fontsize=REPORT_FONT_PT + 1, gid="no-data")


def _line_panel(ax, placed, key, colour, label) -> bool:
    """Draw one per-minute series; "no data" when it has no value. True when drawn."""
    x, y = _minute_series(placed, key)
    if not np.isfinite(y).any():
        _no_data(ax)
        return False
    _plot_minutes(ax, x, y, colour, label, key)
    return True


def _plot_minutes(ax, x, y, colour, label, gid) -> None:
    # dots as well on a short recording: a lone minute between gaps is no line
    marker = "o" if np.count_nonzero(np.isfinite(y)) < FEW_MINUTES else None
    ax.plot(x, y, color=colour, linewidth=1.0, marker=marker, markersize=3, label=label, gid=gid)


def _flow_panel(ax, placed, min_width_s: float) -> None:
    drew_flow = False
    lows, highs = [], []
    for p in placed:
        series = p.segment.series
        t_s, low, high = (_series_array(series, k) for k in ("flow_t_s", "flow_min_lpm", "flow_max_lpm"))
        if len(t_s) and len(low) == len(high) == len(t_s):
            ax.fill_between(p.x(t_s), low, high, color=cm.FLOW_COLOUR, linewidth=0.3,
                            label=None if drew_flow else "flow (min/max)")
            drew_flow = True
            lows.append(np.nanmin(low) if np.isfinite(low).any() else 0.0)
            highs.append(np.nanmax(high) if np.isfinite(high).any() else 0.0)
    events = [(kind, float(p.x(start_s)), float(p.x(end_s)))
              for p in placed for kind, start_s, end_s in p.segment.events]
    cm.shade_events(ax, events, min_width_s)
    # solid flags along the top: a short event still shows where the flow band hides its shade
    cm.shade_events(ax, events, min_width_s, band=EVENT_FLAG_BAND, alpha=1.0, labelled=False)
    if not drew_flow:
        _no_data(ax)
    ax.set_ylim(*cm.flow_axis_range(np.array(lows + highs)))
    ax.axhline(0.0, color="0.6", linewidth=0.5)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, frameon=False,
                  fontsize=REPORT_FONT_PT, handlelength=1.2, columnspacing=1.0, borderaxespad=0.1)


def _pressure_panel(ax, placed) -> None:
    parts = [(np.array([p.x0_s, p.x1_s]), np.full(2, p.segment.pressure_cmh2o))
             for p in placed if p.segment.pressure_cmh2o is not None]
    x, y = _joined(parts)
    if not len(x):
        _no_data(ax)
        return
    ax.plot(x, y, color=PRESSURE_COLOUR, linewidth=1.8, drawstyle="steps-post", gid="pressure_cmh2o")
    low, high = float(np.nanmin(y)), float(np.nanmax(y))
    ax.set_ylim(max(0.0, low - 2.0), high + 2.0)


def _count(value, noun: str) -> str:
    """``"3 apneas"``, ``"1 apnea"``, ``"– apneas"``."""
    return f"{MISSING if value is None else int(value)} {noun}{'' if value == 1 else 's'}"


def _fmt(value, spec: str) -> str:
    return MISSING if value is None else format(value, spec)


def _duration_text(duration_s) -> str:
    if duration_s is None:
        return MISSING
    minutes = int(round(duration_s / 60.0))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{duration_s / 60.0:.1f} min"


def _total(values) -> float | None:
    return None if any(v is None for v in values) else float(sum(values))


def night_totals(segments) -> Segment:
    """The night's metrics from its segments' (None where a segment lacks the inputs).

    Counts, durations and leakage add up; rates and indexes are recomputed over the total
    duration (minute ventilation and leak rate weighted by duration, which is exact); the
    tidal volume is the breath-weighted mean of the segments' medians (the breaths
    themselves are not stored).
    """
    segments = [as_segment(s) for s in segments]
    duration_s = _total([s.duration_s for s in segments])
    breaths = _total([s.breaths for s in segments])
    apneas = _total([s.apnea_count for s in segments])
    hypopneas = _total([s.hypopnea_count for s in segments])
    hours = duration_s / 3600.0 if duration_s else None

    def weighted(name, weight):
        pairs = [(getattr(s, name), getattr(s, weight)) for s in segments]
        if not pairs or any(v is None or w is None for v, w in pairs):
            return None
        total_weight = sum(w for _, w in pairs)
        return sum(v * w for v, w in pairs) / total_weight if total_weight else None

    return Segment(
        breaths=breaths, duration_s=duration_s,
        breath_rate_bpm=breaths * 60.0 / duration_s if hours and breaths is not None else None,
        apnea_count=apneas, hypopnea_count=hypopneas,
        ahi=(apneas + hypopneas) / hours if hours and None not in (apneas, hypopneas) else None,
        apnea_index=apneas / hours if hours and apneas is not None else None,
        tidal_volume_l=weighted("tidal_volume_l", "breaths"),
        minute_ventilation_lpm=weighted("minute_ventilation_lpm", "duration_s"),
        leak_rate_lpm=weighted("leak_rate_lpm", "duration_s"),
        leakage_l=_total([s.leakage_l for s in segments]))


TABLE_COLUMNS = ("", "start", "duration", "breaths", "breath\nrate\n/min", "apneas", "hypopneas",
                 "AHI\n/h", "apnea\nindex\n/h", "median\ntidal vol.\nL", "minute\nventilation\nL/min",
                 "leak\nrate\nL/min", "leakage\nL", "pressure\ncmH2O")
TABLE_WIDTHS = (0.75, 1.6, 1.45, 0.8, 0.8, 0.8, 1.1, 0.7, 0.8, 0.95, 1.1, 0.8, 0.9, 0.95)


def _table_row(name: str, s: Segment, start_text: str) -> list:
    count = lambda v: MISSING if v is None else str(int(v))  # noqa: E731
    return [name, start_text, _duration_text(s.duration_s), count(s.breaths),
            _fmt(s.breath_rate_bpm, ".1f"), count(s.apnea_count), count(s.hypopnea_count),
            _fmt(s.ahi, ".1f"), _fmt(s.apnea_index, ".1f"), _fmt(s.tidal_volume_l, ".3f"),
            _fmt(s.minute_ventilation_lpm, ".2f"), _fmt(s.leak_rate_lpm, ".2f"),
            _fmt(s.leakage_l, ".1f"), _fmt(s.pressure_cmh2o, "g")]


def _start_text(p: _Placed, midnight) -> str:
    if midnight is None:
        return _elapsed_label(p.x0_s, 60.0)
    return p.segment.start.strftime("%d.%m. %H:%M")


def _table_rows(placed, midnight) -> list[list]:
    """The summary table's rows: each record (the newest TABLE_MAX_RECORDS when there are
    more, after a row saying how many earlier ones the night row also counts), then the
    night's totals when there are several."""
    rows = [_table_row(str(i + 1), p.segment, _start_text(p, midnight)) for i, p in enumerate(placed)]
    if len(rows) > TABLE_MAX_RECORDS:
        hidden = len(rows) - TABLE_MAX_RECORDS + 1
        rows = [["…", f"{hidden} earlier", "records"] + [""] * (len(TABLE_COLUMNS) - 3)] \
            + rows[hidden:]
    if len(placed) > 1:
        row = _table_row(NIGHT_ROW, night_totals([p.segment for p in placed]), _start_text(placed[0], midnight))
        pressures = {p.segment.pressure_cmh2o for p in placed}
        row[-1] = _fmt(pressures.pop(), "g") if len(pressures) == 1 else "varies"
        rows.append(row)
    return rows


def _summary_table(ax, rows) -> None:
    ax.axis("off")
    widths = np.array(TABLE_WIDTHS) / sum(TABLE_WIDTHS)
    # bbox: the table fills its axes, which report_figure sized to its rows
    table = ax.table(cellText=rows or [[MISSING] * len(TABLE_COLUMNS)], colLabels=TABLE_COLUMNS,
                     colWidths=widths, bbox=(0.0, 0.0, 1.0, 1.0), cellLoc="center", colLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(REPORT_FONT_PT)
    for (row, _), cell in table.get_celld().items():
        cell.set_linewidth(0.4)
        cell.set_height(TABLE_HEADER_ROWS if row == 0 else 1)
        if row == 0:
            cell.set_facecolor("#eeeeee")
        elif row == len(rows) and rows[-1][0] == NIGHT_ROW:
            cell.get_text().set_fontweight("bold")
    table.set_gid("summary")


def _headline(placed, midnight) -> str:
    total = night_totals([p.segment for p in placed]) if len(placed) > 1 else \
        (placed[0].segment if placed else Segment())
    parts = [f"AHI {_fmt(total.ahi, '.1f')}/h",
             f"{_count(total.apnea_count, 'apnea')}, {_count(total.hypopnea_count, 'hypopnea')}",
             _duration_text(total.duration_s),
             f"tidal volume {_fmt(total.tidal_volume_l, '.2f')} L",
             f"ventilation {_fmt(total.minute_ventilation_lpm, '.1f')} L/min",
             f"leak {_fmt(total.leak_rate_lpm, '.1f')} L/min"]
    return "   ·   ".join(parts)


def _default_title(placed, midnight) -> str:
    if midnight is None or not placed:
        return "Night report"
    first = min(p.segment.start for p in placed)
    last = max(p.segment.start + timedelta(seconds=p.duration_s) for p in placed)
    return f"Night report  {first:%Y-%m-%d %H:%M} – {last:%H:%M}"


def report_figure(segments, title: str | None = None):
    """The night report's figure (see :func:`render_report`).

    Returns
    -------
    matplotlib.figure.Figure
        Axes in this order: flow, breath rate, tidal volume, leak, pressure, table, then
        the minute ventilation's twin of the tidal volume axes. The five panels share x.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    placed, midnight = place_segments(segments)
    fig = Figure(figsize=REPORT_SIZE_IN, dpi=REPORT_DPI)
    FigureCanvasAgg(fig)
    height_in = REPORT_SIZE_IN[1]
    rows = _table_rows(placed, midnight)
    table_in = TABLE_ROW_IN * (TABLE_HEADER_ROWS + max(len(rows), 1))
    table_bottom_in = REPORT_MARGIN_IN
    panels_bottom_in = table_bottom_in + table_in + TIME_AXIS_IN
    grid = fig.add_gridspec(5, 1, height_ratios=(2.4, 1, 1, 1, 0.8), left=LEFT, right=RIGHT,
                            top=PANELS_TOP, bottom=panels_bottom_in / height_in, hspace=0.16)
    flow_ax = fig.add_subplot(grid[0])
    rate_ax, tidal_ax, leak_ax, pressure_ax = (fig.add_subplot(grid[i], sharex=flow_ax) for i in range(1, 5))
    table_ax = fig.add_axes((LEFT, table_bottom_in / height_in, RIGHT - LEFT, table_in / height_in))
    ventilation_ax = tidal_ax.twinx()

    x0_s = min((p.x0_s for p in placed), default=0.0)
    x1_s = max((p.x1_s for p in placed), default=0.0)
    if x1_s <= x0_s:
        x1_s = x0_s + SERIES_STEP_S
    span_s = x1_s - x0_s
    _flow_panel(flow_ax, placed, cm.EVENT_MIN_WIDTH_FRACTION * span_s)
    _line_panel(rate_ax, placed, "breath_rate_bpm", RATE_COLOUR, "breath rate")
    tidal = _line_panel(tidal_ax, placed, "tidal_volume_l", TIDAL_COLOUR, "tidal volume (L, left)")
    x, y = _minute_series(placed, "minute_ventilation_lpm")
    if np.isfinite(y).any():
        _plot_minutes(ventilation_ax, x, y, VENTILATION_COLOUR, "minute ventilation (L/min, right)",
                      "minute_ventilation_lpm")
        if not tidal:  # the left axes' "no data" would contradict the line drawn
            tidal_ax.texts[-1].remove()
    _line_panel(leak_ax, placed, "leak_rate_lpm", LEAK_COLOUR, "leak rate")
    _pressure_panel(pressure_ax, placed)

    ylabels = ((flow_ax, "flow\n(L/min)", cm.FLOW_COLOUR), (rate_ax, "breath rate\n(/min)", RATE_COLOUR),
               (tidal_ax, "tidal volume\n(L)", TIDAL_COLOUR), (leak_ax, "leak\n(L/min)", LEAK_COLOUR),
               (pressure_ax, "CPAP\n(cmH2O)", PRESSURE_COLOUR),
               (ventilation_ax, "minute vent.\n(L/min)", VENTILATION_COLOUR))
    for ax, label, colour in ylabels:
        ax.set_ylabel(label, fontsize=REPORT_FONT_PT, color=colour)
        ax.tick_params(labelsize=REPORT_FONT_PT - 1)
        ax.tick_params(axis="y", labelcolor=colour)
    for ax in (rate_ax, tidal_ax, leak_ax, pressure_ax):
        _from_zero(ax)
        ax.yaxis.set_major_locator(_few_ticks())
    _from_zero(ventilation_ax)
    ventilation_ax.yaxis.set_major_locator(_few_ticks())
    for ax in (flow_ax, rate_ax, tidal_ax, leak_ax, pressure_ax):
        ax.grid(True, linewidth=0.3, alpha=0.6)
        if ax is not pressure_ax:
            ax.tick_params(labelbottom=False)
        for p in placed[1:]:  # where one record ends and the next begins
            ax.axvline(p.x0_s, color="0.5", linewidth=0.6, linestyle=":")

    step_s = _time_step_s(span_s)
    label = _clock_label if midnight is not None else _elapsed_label
    pressure_ax.xaxis.set_major_locator(MultipleLocator(step_s))
    pressure_ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: label(x, step_s)))
    pressure_ax.set_xlim(x0_s, x1_s)
    unit = "h:min" if step_s >= 60 else "min:s"
    pressure_ax.set_xlabel(f"clock time (hh:mm{':ss' if step_s < 60 else ''})" if midnight is not None
                           else f"time in the recording ({unit})", fontsize=REPORT_FONT_PT)
    _summary_table(table_ax, rows)
    fig.text(LEFT, 0.965, title or _default_title(placed, midnight), fontsize=REPORT_FONT_PT + 5,
             fontweight="bold", va="baseline")
    fig.text(LEFT, 0.935, _headline(placed, midnight), fontsize=REPORT_FONT_PT + 2, va="baseline")
    return fig


def _from_zero(ax) -> None:
    """Let the y axis include 0 (a leak may be negative: the sensor's offset)."""
    ax.margins(y=0.12)  # a dot at the top stays whole
    low, high = min(ax.get_ylim()[0], 0.0), max(ax.get_ylim()[1], 0.0)
    ax.set_ylim(low, high if high > low else low + 1.0)


def _few_ticks():
    from matplotlib.ticker import MaxNLocator
    return MaxNLocator(nbins=4, min_n_ticks=2)


def render_report(segments, fmt: str = "png", title: str | None = None) -> bytes:
    """Render the night report of one or more segments (stored records) as PNG or PDF.

    Parameters
    ----------
    segments : iterable of mapping, object or Segment
        The records, in time order (keys in the module docstring). One segment without a
        start is drawn in its file time; several with starts on one clock time axis.
    fmt : {"png", "pdf"}
        PNG: A4 landscape at REPORT_DPI (150 dpi, 1753 x 1240 px). PDF: one A4 page, vector.
    title : str, optional
        Heading; by default "Night report" and the night's clock times.

    Returns
    -------
    bytes

    Raises
    ------
    ValueError
        If ``fmt`` is not "png" or "pdf" (the only thing checked: a record's content
        never raises, a missing value shows as "no data" or "–").
    """
    if fmt not in REPORT_FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(REPORT_FORMATS)}, not {fmt!r}")
    fig = report_figure(segments, title)
    out = io.BytesIO()
    if fmt == "png":
        _save_png(fig, out)
    else:
        fig.savefig(out, format="pdf", metadata={"Title": title or "Night report"})
    return out.getvalue()


def _save_png(fig, out) -> None:
    """PNG of ``fig`` in 256 colours: a third of the RGBA file's size (the flow band's edge
    is noise to zlib), looks the same (a few flat colours), ~40 ms to quantize."""
    from PIL import Image

    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    image = Image.fromarray(rgb).quantize(PNG_COLOURS, method=Image.Quantize.FASTOCTREE)
    image.save(out, format="png", compress_level=PNG_COMPRESS_LEVEL, dpi=(REPORT_DPI, REPORT_DPI))


def segment_from_result(result: cm.AnalysisResult, pressure_cmh2o=None, start=None) -> Segment:
    """The segment a stored record of ``result`` would give (series, events and metrics)."""
    return Segment(
        start=_as_datetime(start), pressure_cmh2o=_number(pressure_cmh2o),
        series=night_series(result), events=[tuple(e) for e in result.events],
        breaths=result.breaths, duration_s=result.duration, breath_rate_bpm=result.breath_rate_bpm,
        apnea_count=result.apnea_count, hypopnea_count=result.hypopnea_count, ahi=result.ahi,
        apnea_index=result.apnea_index, tidal_volume_l=result.tidal_volume_l,
        minute_ventilation_lpm=result.minute_ventilation_lpm, leak_rate_lpm=result.leak_rate_lpm,
        leakage_l=result.leakage)


def report_from_result(result: cm.AnalysisResult, pressure_cmh2o=None, fmt: str = "png",
                       title: str | None = None, start=None) -> bytes:
    """The night report of one analysed recording (the bedside's, before it is stored).

    Parameters
    ----------
    result : cpap_measurements.AnalysisResult
    pressure_cmh2o : int, optional
        CPAP pressure of the recording.
    fmt : {"png", "pdf"}
    title : str, optional
    start : datetime, optional
        The recording's start; without it the axis shows file time.

    Returns
    -------
    bytes
    """
    return render_report([segment_from_result(result, pressure_cmh2o, start)], fmt, title)
