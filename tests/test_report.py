"""The pictures of issue #13: the flow plot's event shading, the stored night series and the
night report (empty / basic / raises, against synthetic nights of known truth)."""
from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pypdf import PdfReader

import cpap_measurements as cm
from sleeplab import report
from tools.cpap_synth import generate

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
A4_PX = (1753, 1240)  # A4 landscape at 150 dpi (matplotlib truncates 1753.9 px)
PER_MINUTE = ("breath_rate_bpm", "tidal_volume_l", "minute_ventilation_lpm", "leak_rate_lpm")
DECIMALS = {"minute_start_s": 2, "breath_rate_bpm": 2, "tidal_volume_l": 3,
            "minute_ventilation_lpm": 2, "leak_rate_lpm": 2, "flow_t_s": 2,
            "flow_min_lpm": 1, "flow_max_lpm": 1}


@pytest.fixture(scope="module")
def night():
    """Ten minutes with one apnea and two hypopneas of known times, a 4 L/min leak."""
    content, truth = generate(duration_s=600, rate_bpm=15, amplitude_lpm=40, leak_lpm=4.0,
                              apnea_gaps_s=(20.0,), hypopnea_durations_s=(20.0, 30.0), seed=11)
    return cm.analyze(content), truth


@pytest.fixture(scope="module")
def series(night):
    return report.night_series(night[0])


def true_events(truth) -> list:
    """(type, start_s, end_s) of the generated events, in time order."""
    return sorted([("apnea", a["start"], a["end"]) for a in truth["apnea_events"]]
                  + [("hypopnea", h["start_s"], h["end_s"]) for h in truth["hypopnea_events"]],
                  key=lambda e: e[1])


def event_spans(ax) -> dict:
    """x extent of each shaded span in ``ax`` labelled for the legend, by event type."""
    spans = {}
    for artist in ax.collections:
        if artist.get_gid() in cm.EVENT_COLOURS and artist.get_label() in cm.EVENT_LABELS.values():
            spans[artist.get_gid()] = [(p.vertices[:, 0].min(), p.vertices[:, 0].max())
                                       for p in artist.get_paths()]
    return spans


def saved_figure(monkeypatch, draw):
    """The figure that ``draw()`` saves (captured at savefig)."""
    from matplotlib.figure import Figure
    saved = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig",
                        lambda fig, *a, **kw: (saved.append(fig), original(fig, *a, **kw))[1])
    draw()
    (figure,) = saved
    return figure


# --- flow plot ------------------------------------------------------------------------------
def test_flow_plot_shades_apneas_and_hypopneas_in_two_colours(monkeypatch, night):
    result, truth = night
    ax = saved_figure(monkeypatch, lambda: cm.flow_plot_png(result)).axes[0]
    spans = event_spans(ax)
    assert set(spans) == {"apnea", "hypopnea"}
    for kind, start_s, end_s in true_events(truth):
        assert any(abs(a - start_s) < 1.0 and abs(b - end_s) < 1.5 for a, b in spans[kind]), (kind, start_s)
    assert len(spans["apnea"]) == 1 and len(spans["hypopnea"]) == 2
    colours = {c.get_gid(): tuple(c.get_facecolor()[0][:3]) for c in ax.collections if c.get_gid()}
    assert colours["apnea"] != colours["hypopnea"]
    assert {"apnea", "hypopnea"} <= {t.get_text() for t in ax.get_legend().get_texts()}


def test_flow_plot_legend_only_for_events_present(monkeypatch):
    result = cm.analyze(generate(duration_s=90, rate_bpm=14, apnea_gaps_s=(15.0,), seed=4)[0])
    assert (result.apnea_count, result.hypopnea_count) == (1, 0)
    ax = saved_figure(monkeypatch, lambda: cm.flow_plot_png(result)).axes[0]
    labels = {t.get_text() for t in ax.get_legend().get_texts()}
    assert "apnea" in labels and "hypopnea" not in labels
    assert set(event_spans(ax)) == {"apnea"}


def test_shade_events_min_width_and_nothing_without_events():
    from matplotlib.figure import Figure
    ax = Figure().add_subplot()
    assert cm.shade_events(ax, []) == []
    (drawn,) = cm.shade_events(ax, [("hypopnea", 100.0, 101.0)], min_width=30.0)
    xs = drawn.get_paths()[0].vertices[:, 0]
    assert (xs.min(), xs.max()) == (100.0, 130.0)


# --- night series ---------------------------------------------------------------------------
def test_night_series_keys_and_lengths(night, series):
    result, _ = night
    assert tuple(series) == report.SERIES_KEYS
    assert series["step_s"] == 60.0
    n_minutes = math.ceil(result.duration / 60.0)
    assert len(series["minute_start_s"]) == n_minutes
    assert all(len(series[k]) == n_minutes for k in PER_MINUTE)
    assert len(series["flow_t_s"]) == len(series["flow_min_lpm"]) == len(series["flow_max_lpm"]) \
        == report.SERIES_FLOW_BINS


def test_night_series_per_minute_values_match_the_analysis_and_truth(night, series):
    result, truth = night
    start_s, ventilation_lpm = result.minute_ventilation_series
    np.testing.assert_allclose(series["minute_start_s"], start_s, atol=0.005)
    np.testing.assert_allclose(series["minute_ventilation_lpm"], ventilation_lpm, atol=0.005)
    np.testing.assert_allclose(series["leak_rate_lpm"], result.leak_rate_series[1], atol=0.005)
    # every breath counted once: rate x the minute's length adds up to the breaths
    lengths_min = np.diff(np.append(start_s, result.time[-1])) / 60.0
    assert np.sum(np.array(series["breath_rate_bpm"]) * lengths_min) == pytest.approx(truth["breaths"], abs=0.1)
    volumes = np.array(series["tidal_volume_l"], dtype=float)
    assert np.median(volumes) == pytest.approx(truth["tidal_volume_l"], rel=0.05)
    # each minute's median, minute by minute from the breath table
    table = result.breath_table
    edges_s = np.append(start_s, np.inf)
    for i, volume_l in enumerate(volumes):
        inside = (table["start_s"] >= edges_s[i]) & (table["start_s"] < edges_s[i + 1])
        assert volume_l == pytest.approx(np.median(table["tidal_volume_l"][inside]), abs=0.0005)


def test_night_series_envelope_holds_the_true_extremes(night, series):
    result, _ = night
    low, high = np.array(series["flow_min_lpm"]), np.array(series["flow_max_lpm"])
    assert low.min() == pytest.approx(result.flow_lpm.min(), abs=0.05)
    assert high.max() == pytest.approx(result.flow_lpm.max(), abs=0.05)
    assert np.all(low <= high)
    t_s = np.array(series["flow_t_s"])
    assert t_s[0] == pytest.approx(result.time[0], abs=0.005) and np.all(np.diff(t_s) > 0)
    assert t_s[-1] < result.time[-1]


def test_night_series_is_rounded_json(series):
    text = json.dumps(series, allow_nan=False)
    assert json.loads(text) == series
    for key, decimals in DECIMALS.items():
        assert all(v is None or v == round(v, decimals) for v in series[key]), key


def test_night_series_minute_without_breaths_is_none():
    result = cm.analyze(generate(duration_s=300, rate_bpm=15, amplitude_lpm=40,
                                 apnea_gaps_s=(80.0,), seed=3)[0])
    series = report.night_series(result)
    empty = [i for i, v in enumerate(series["tidal_volume_l"]) if v is None]
    assert len(empty) >= 1
    assert all(series["breath_rate_bpm"][i] == 0.0 for i in empty)
    assert "NaN" not in json.dumps(series)


def test_night_series_short_recording_keeps_every_sample():
    result = cm.analyze(generate(duration_s=12, rate_bpm=15, seed=5)[0])
    series = report.night_series(result)
    assert len(series["flow_t_s"]) == len(result.time) <= report.SERIES_FLOW_BINS
    assert series["flow_min_lpm"] == series["flow_max_lpm"]
    assert len(series["minute_start_s"]) == 1


@pytest.mark.parametrize("duration_s", [14.0, 16.0, 29.0, 31.0, 90.0])
def test_night_series_envelope_never_exceeds_its_bins(duration_s):
    """Around 1500 and 3000 samples (the envelope's own threshold is twice its bins)."""
    result = cm.analyze(generate(duration_s=duration_s, rate_bpm=15, seed=6)[0])
    series = report.night_series(result)
    assert len(series["flow_t_s"]) <= report.SERIES_FLOW_BINS
    assert min(series["flow_min_lpm"]) == pytest.approx(result.flow_lpm.min(), abs=0.05)
    assert max(series["flow_max_lpm"]) == pytest.approx(result.flow_lpm.max(), abs=0.05)


@pytest.mark.slow
def test_night_series_eight_hours_is_bounded():
    result = cm.analyze(generate(duration_s=8 * 3600, rate_bpm=14, amplitude_lpm=40, leak_lpm=3.0,
                                 apnea_gaps_s=(15.0, 25.0), hypopnea_durations_s=(20.0,), seed=8)[0])
    series = report.night_series(result)
    assert len(series["minute_start_s"]) == 480
    assert len(series["flow_t_s"]) == report.SERIES_FLOW_BINS
    assert len(json.dumps(series)) < 64_000
    png = report.report_from_result(result, 8)
    assert Image.open(io.BytesIO(png)).size == A4_PX


# --- segments and totals --------------------------------------------------------------------
def segment(series=None, **metrics):
    base = {"start": None, "pressure_cmh2o": None, "series": series, "events": [], "breaths": 600,
            "duration_s": 3600.0, "breath_rate_bpm": 10.0, "apnea_count": 2, "hypopnea_count": 1,
            "ahi": 3.0, "apnea_index": 2.0, "tidal_volume_l": 0.5, "minute_ventilation_lpm": 5.0,
            "leak_rate_lpm": 2.0, "leakage_l": 120.0}
    return {**base, **metrics}


def test_night_totals_of_two_records():
    total = report.night_totals([
        segment(breaths=600, duration_s=3600.0, apnea_count=2, hypopnea_count=1,
                tidal_volume_l=0.4, minute_ventilation_lpm=4.0, leak_rate_lpm=1.0, leakage_l=60.0),
        segment(breaths=1800, duration_s=7200.0, apnea_count=4, hypopnea_count=5,
                tidal_volume_l=0.6, minute_ventilation_lpm=7.0, leak_rate_lpm=4.0, leakage_l=480.0)])
    assert (total.breaths, total.duration_s, total.apnea_count, total.hypopnea_count) == (2400, 10800, 6, 6)
    assert total.ahi == pytest.approx(4.0) and total.apnea_index == pytest.approx(2.0)
    assert total.breath_rate_bpm == pytest.approx(2400 / 180)
    assert total.tidal_volume_l == pytest.approx((0.4 * 600 + 0.6 * 1800) / 2400)
    assert total.minute_ventilation_lpm == pytest.approx((4.0 + 7.0 * 2) / 3)
    assert total.leak_rate_lpm == pytest.approx(3.0) and total.leakage_l == 540.0


def test_night_totals_unknown_when_a_record_lacks_it():
    total = report.night_totals([segment(), segment(apnea_count=None, tidal_volume_l=None)])
    assert total.apnea_count is None and total.ahi is None and total.tidal_volume_l is None
    assert total.hypopnea_count == 2 and total.duration_s == 7200.0
    assert report.night_totals([]).ahi is None


def test_as_segment_reads_records_and_drops_what_it_cannot_use():
    seg = report.as_segment({**segment(), "id": "r1", "start": "2026-11-27T22:40:00",
                             "pressure_cmh2o": "high", "breaths": float("nan"),
                             "events": [{"type": "apnea", "start_s": 5, "end_s": 20},
                                        {"type": "snore", "start_s": 1, "end_s": 2},
                                        {"type": "hypopnea", "start_s": None, "end_s": 3}]})
    assert seg.start == datetime(2026, 11, 27, 22, 40)
    assert seg.pressure_cmh2o is None and seg.breaths is None
    assert seg.events == [("apnea", 5.0, 20.0)]
    assert report.as_segment({"start": "yesterday"}).start is None


# --- render ---------------------------------------------------------------------------------
def test_render_png_signature_and_a4_size(night):
    png = report.report_from_result(night[0], pressure_cmh2o=8)
    assert png.startswith(PNG_MAGIC)
    assert Image.open(io.BytesIO(png)).size == A4_PX


def test_render_pdf_is_one_page(night):
    pdf = report.report_from_result(night[0], pressure_cmh2o=8, fmt="pdf")
    assert pdf.startswith(b"%PDF-")
    reader = PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == 1
    width_pt, height_pt = (float(v) for v in reader.pages[0].mediabox[2:])
    assert (width_pt, height_pt) == pytest.approx((297 / 25.4 * 72, 210 / 25.4 * 72), abs=1)
    assert "AHI" in reader.pages[0].extract_text()  # vector text, not a picture


def test_render_rejects_an_unknown_format(night):
    with pytest.raises(ValueError, match="fmt must be one of png, pdf"):
        report.render_report([segment()], fmt="svg")


def panels(fig):
    flow, rate, tidal, leak, pressure = fig.axes[:5]
    return flow, rate, tidal, leak, pressure


def no_data(ax) -> bool:
    return any(t.get_text() == report.NO_DATA for t in ax.texts)


def test_report_figure_five_panels_share_the_time_axis(night):
    result, _ = night
    fig = report.report_figure([report.segment_from_result(result, 8)])
    axes = panels(fig)
    for ax in axes[1:]:
        assert axes[0].get_shared_x_axes().joined(axes[0], ax)
        assert ax.get_xlim() == axes[0].get_xlim()
    assert axes[0].get_xlim() == pytest.approx((result.time[0], result.time[-1]), abs=0.01)
    assert [ax.get_ylabel().split("\n")[0] for ax in axes] == ["flow", "breath rate", "tidal volume",
                                                               "leak", "CPAP"]
    assert not any(no_data(ax) for ax in axes)
    assert {line.get_gid() for line in fig.axes[6].lines} == {"minute_ventilation_lpm"}


def test_report_marks_events_at_their_times(night):
    result, truth = night
    fig = report.report_figure([report.segment_from_result(result)])
    spans = event_spans(fig.axes[0])
    for kind, start_s, end_s in true_events(truth):
        assert any(abs(a - start_s) < 1.0 and abs(b - end_s) < 1.5 for a, b in spans[kind]), (kind, start_s)
    assert {t.get_text() for t in fig.axes[0].get_legend().get_texts()} >= {"apnea", "hypopnea"}


def table_text(fig) -> list:
    (table,) = fig.axes[5].tables
    cells = table.get_celld()
    n_rows = 1 + max(r for r, _ in cells)
    return [[cells[r, c].get_text().get_text() for c in range(len(report.TABLE_COLUMNS))]
            for r in range(n_rows)]


def test_segment_without_series_renders_its_metrics():
    fig = report.report_figure([segment(pressure_cmh2o=7, ahi=12.0)])
    flow, rate, tidal, leak, pressure = panels(fig)
    assert all(no_data(ax) for ax in (flow, rate, tidal, leak)) and not no_data(pressure)
    rows = table_text(fig)
    assert len(rows) == 2 and rows[1][7] == "12.0" and rows[1][2] == "1 h 00 min"
    assert report.render_report([segment()]).startswith(PNG_MAGIC)


def test_no_segment_renders_empty_panels():
    fig = report.report_figure([])
    assert all(no_data(ax) for ax in panels(fig))
    assert report.render_report([], fmt="pdf").startswith(b"%PDF-")


def test_several_segments_on_one_clock_with_their_pressures(series):
    first = datetime(2026, 11, 27, 22, 40)
    records = [segment(series, start=first + timedelta(hours=i), pressure_cmh2o=p, duration_s=600.0,
                       events=[{"type": "apnea", "start_s": 100.0, "end_s": 120.0}])
               for i, p in enumerate((6, 8, 10))]
    fig = report.report_figure(records)
    pressure = panels(fig)[4]
    (line,) = [ln for ln in pressure.lines if ln.get_gid() == "pressure_cmh2o"]
    y = np.asarray(line.get_ydata(), dtype=float)
    assert list(dict.fromkeys(y[np.isfinite(y)])) == [6.0, 8.0, 10.0]
    x0_s = (22 * 60 + 40) * 60.0  # clock time: seconds from midnight
    assert np.nanmin(line.get_xdata()) == x0_s
    # each segment's apnea at its own clock time (file time from the series' first sample)
    first_s = series["minute_start_s"][0]
    starts = sorted(a for a, _ in event_spans(panels(fig)[0])["apnea"])
    assert starts == pytest.approx([x0_s + h * 3600 + 100.0 - first_s for h in range(3)])
    labels = [pressure.xaxis.get_major_formatter()(x, 0) for x in (x0_s, x0_s + 3600 * 2)]
    assert labels == ["22:40", "00:40"]
    rows = table_text(fig)
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "night"]
    assert rows[-1][-1] == "varies" and rows[-1][5] == "6"


def test_segments_without_start_follow_each_other(series):
    placed, midnight = report.place_segments([segment(series, duration_s=600.0),
                                              segment(None, duration_s=300.0)])
    assert midnight is None
    first_s = series["minute_start_s"][0]
    assert [(p.x0_s, p.x1_s) for p in placed] == [(first_s, first_s + 600.0),
                                                  (first_s + 600.0, first_s + 900.0)]


# --- CLI ------------------------------------------------------------------------------------
def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "cpap_measurements.py"), *map(str, args)],
                          capture_output=True, timeout=120, cwd=ROOT)


@pytest.mark.parametrize("name, magic", [("night.pdf", b"%PDF-"), ("night.PNG", PNG_MAGIC)])
def test_cli_writes_the_report(tmp_path, night, name, magic):
    path = tmp_path / "r.txt"
    path.write_bytes(generate(duration_s=90, rate_bpm=14, apnea_gaps_s=(15.0,), seed=4)[0])
    proc = run_cli(path, "--report", tmp_path / name)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / name).read_bytes().startswith(magic)


def test_cli_report_needs_pdf_or_png(tmp_path):
    proc = run_cli(tmp_path / "r.txt", "--report", tmp_path / "night.svg")
    assert proc.returncode == 2
    assert b"must end in .pdf or .png" in proc.stderr and b"Traceback" not in proc.stderr
    assert not (tmp_path / "night.svg").exists()


def test_a_night_of_many_records_still_fits_one_page():
    """A patient with hundreds of uploads in a night (a script posting every minute): the
    table shows the newest records and how many earlier ones the night row counts."""
    import datetime as dt

    start = dt.datetime(2026, 11, 27, 22, 0)
    segments = [{"start": start + dt.timedelta(minutes=i), "duration_s": 50.0, "breaths": 12,
                 "apnea_count": i % 2, "pressure_cmh2o": 8} for i in range(200)]
    fig = report.report_figure(segments)
    table = [ax for ax in fig.axes if ax.tables][0].tables[0]
    cells = table.get_celld()
    rows = {row for row, _ in cells}
    assert len(rows) == 1 + report.TABLE_MAX_RECORDS + 1          # header, records, night
    assert cells[(1, 1)].get_text().get_text() == f"{200 - report.TABLE_MAX_RECORDS + 1} earlier"
    assert cells[(max(rows), 0)].get_text().get_text() == "night"
    assert cells[(max(rows), 5)].get_text().get_text() == "100"     # apneas of all 200
    assert report.render_report(segments, fmt="pdf").startswith(b"%PDF-")
