"""Per-function tests of cpap_measurements (empty / basic / raises), errors, bad lines, CLI, plot."""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cpap_measurements as cm
from tools.cpap_synth import HEADER, generate

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def recording(rows, header=True, newline="\n") -> bytes:
    """A file from rows of 7 values (or raw strings)."""
    lines = [HEADER] if header else []
    lines += [r if isinstance(r, str) else ",".join(str(v) for v in r) for r in rows]
    return (newline.join(lines) + newline).encode()


def zero_flow_rows(n, t0=0.0):
    """n samples at 100 Hz with p1-ins == p2 (zero flow)."""
    return [(f"{t0 + i / 100:.3f}", 5000, 5000, 1638, 5150, 5150, 1638) for i in range(n)]


@pytest.fixture(scope="module")
def sample():
    """A 60 s synthetic recording with one apnea, and its truth."""
    return generate(duration_s=60, rate_bpm=15, apnea_gaps_s=(15.0,), seed=5)


@pytest.fixture(scope="module")
def result(sample):
    return cm.analyze(sample[0])


# --- read_bytes ---------------------------------------------------------------------------------
def test_read_bytes_accepts_path_bytes_binary_and_text_file(tmp_path, sample):
    content = sample[0]
    path = tmp_path / "r.txt"
    path.write_bytes(content)
    assert cm.read_bytes(path) == content
    assert cm.read_bytes(str(path)) == content
    assert cm.read_bytes(content) == content
    assert cm.read_bytes(io.BytesIO(content)) == content
    assert cm.read_bytes(io.StringIO(content.decode())) == content


def test_read_bytes_missing_file_raises(tmp_path):
    with pytest.raises(cm.CpapFileError, match="cannot open the recording"):
        cm.read_bytes(tmp_path / "missing.txt")


def test_read_bytes_unreadable_object_raises():
    with pytest.raises(cm.CpapFileError, match="cannot read a recording from a int"):
        cm.read_bytes(42)


# --- read_samples -------------------------------------------------------------------------------
def test_read_samples_basic_columns_and_offsets():
    samples = cm.read_samples(recording([(2.5, 5000, 5010, 1638, 1, 2, 3), (2.51, 5001, 1638, 5020, 4, 5, 6)]))
    np.testing.assert_allclose(samples.time, [2.5, 2.51])
    np.testing.assert_array_equal(samples.p2, [5000, 5001])
    np.testing.assert_array_equal(samples.p1_ins, [5010, 1638])
    np.testing.assert_array_equal(samples.p1_exp, [1638, 5020])
    assert samples.skipped_lines == []


def test_read_samples_without_header_reads_first_line():
    samples = cm.read_samples(recording(zero_flow_rows(3), header=False))
    assert len(samples.time) == 3 and samples.skipped_lines == []


@pytest.mark.parametrize("bad, reason", [
    ("NaN,5000,5000,1638,5150,5150,1638", "not a number: 'NaN,"),
    ("0.030,5000,NaN,1638,5150,5150,1638", "not a number"),
    ("bad data,5129,1638,5131,5333,5343,1638", "not a number: 'bad data"),
    ("0.030,bad data,1638,5189,5334,5345,1638", "not a number"),
    ("0.030,5000,5000,,5150,5150,1638", "empty field"),
    ("0.030,5000,5000,1638,5150,5150,", "empty field"),
    (",5000,5000,1638,5150,5150,1638", "empty field"),
    ("0.030,5000,5000,1638", r"too few columns \(4 of 7\)"),
    ("0.030,5000,5000,1638,5150,5150,1638,1638", r"too many columns \(8 of 7\)"),
    ("", "blank line"),
    ("   ", "blank line"),
    ("0.030,5000,1.2.3,1638,5150,5150,1638", "invalid number"),
])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_read_samples_skips_and_reports_each_kind_of_bad_line(bad, reason, newline):
    rows = zero_flow_rows(6)
    rows[3] = bad
    samples = cm.read_samples(recording(rows, newline=newline))
    assert len(samples.time) == 5
    assert [s.line_number for s in samples.skipped_lines] == [5]  # header is line 1
    assert re.search(reason, samples.skipped_lines[0].reason)
    np.testing.assert_allclose(samples.time, [0.0, 0.01, 0.02, 0.04, 0.05])


def test_read_samples_many_bad_lines_keep_order_and_numbers():
    rows = zero_flow_rows(1000)
    bad_rows = {10: "bad data", 11: "", 500: "1,2,3", 998: "0.1,,,,,,"}
    for i, text in bad_rows.items():
        rows[i] = text
    samples = cm.read_samples(recording(rows))
    assert [s.line_number for s in samples.skipped_lines] == [i + 2 for i in sorted(bad_rows)]
    assert len(samples.time) == 1000 - len(bad_rows)
    assert np.all(np.diff(samples.time) > 0)


def test_read_samples_empty_raises():
    with pytest.raises(cm.CpapFileError, match="empty"):
        cm.read_samples(b"")
    with pytest.raises(cm.CpapFileError, match="empty"):
        cm.read_samples(b"\n\r\n  \n")


def test_read_samples_header_only_raises():
    with pytest.raises(cm.CpapFileError, match="only a header"):
        cm.read_samples(recording([]))


def test_read_samples_binary_raises():
    blob = bytes(range(256)) * 40
    with pytest.raises(cm.CpapFileError, match="binary"):
        cm.read_samples(blob)
    png = PNG_MAGIC + b"\x00\x00\x00\rIHDR" + b"\x00" * 100
    with pytest.raises(cm.CpapFileError, match="binary"):
        cm.read_samples(png)


def test_read_samples_all_bad_raises_with_example_line():
    rows = ["bad data,1,2,3,4,5,6"] * 5 + ["NaN,NaN,NaN,NaN,NaN,NaN,NaN"] * 5
    with pytest.raises(cm.CpapFileError, match=r"no valid samples: every one of the 10 data lines.*line 2: not a number"):
        cm.read_samples(recording(rows))


def test_read_samples_wrong_column_count_everywhere_raises():
    rows = [f"{i / 100:.2f},5000,5000" for i in range(50)]
    with pytest.raises(cm.CpapFileError, match=r"wrong number of columns.*7 comma-separated values.*line 2"):
        cm.read_samples(recording(rows))


# --- analyze errors --------------------------------------------------------------------------
def test_analyze_too_short_raises():
    with pytest.raises(cm.CpapFileError, match=r"too short: 2\.0 s of valid data, at least 5 s"):
        cm.analyze(recording(zero_flow_rows(201)))


def test_analyze_error_is_a_value_error():
    assert issubclass(cm.CpapFileError, ValueError)


# --- adc_to_cmh2o / venturi_flow ------------------------------------------------------------
def test_adc_to_cmh2o_basic():
    np.testing.assert_allclose(cm.adc_to_cmh2o([1638, 14745]), [0.0, 25.4])


def test_adc_to_cmh2o_empty():
    assert cm.adc_to_cmh2o([]).shape == (0,)


def test_venturi_flow_matches_formula():
    # 100 ADC steps of differential pressure, by hand from the formulas
    dp_pa = 25.4 / (14745 - 1638) * 100 * 98.0665
    a1 = np.pi * 0.0075 ** 2
    a2 = np.pi * 0.006 ** 2
    q = a1 * np.sqrt(2 * dp_pa / (1.199 * ((a1 / a2) ** 2 - 1)))
    flow = cm.venturi_flow([5000, 5000, 5000], [5100, 1638, 5000], [1638, 5100, 1638])
    np.testing.assert_allclose(flow, [q, -q, 0.0])
    assert 0.0008 < q < 0.00086  # ~50 L/min: 100 steps = 10 x the ~5 L/min of one step


def test_venturi_flow_pressure_below_offset_gives_zero_not_nan():
    flow = cm.venturi_flow([1640, 1700], [1630, 1690], [1600, 1638])
    assert np.all(np.isfinite(flow))
    np.testing.assert_array_equal(flow, [0.0, 0.0])


def test_venturi_flow_one_adc_step_is_about_5_lpm():
    flow_lpm = cm.venturi_flow([5000], [5001], [1638]) * cm.M3S_TO_LPM
    assert 4.5 < flow_lpm[0] < 5.5


def test_venturi_flow_empty():
    assert cm.venturi_flow([], [], []).shape == (0,)


# --- detect_breaths ----------------------------------------------------------------------------
def sine_breathing(rate_bpm, duration_s, amplitude_lpm=30.0, offset_lpm=0.0):
    t = np.arange(0, duration_s, 0.01)
    return t, amplitude_lpm * np.sin(2 * np.pi * rate_bpm / 60 * t) + offset_lpm


def test_detect_breaths_basic_peaks_at_sine_maxima():
    t, q = sine_breathing(12, 60)
    peaks = cm.detect_breaths(t, q)
    np.testing.assert_allclose(peaks, 1.25 + 5.0 * np.arange(12), atol=0.06)


def test_detect_breaths_leak_offset_does_not_change_count():
    t, q = sine_breathing(20, 60, amplitude_lpm=20, offset_lpm=8)
    assert len(cm.detect_breaths(t, q)) == 20


def test_detect_breaths_ignores_single_sample_spikes_and_ripple():
    t = np.arange(0, 60, 0.01)
    q = 3.0 * np.sin(2 * np.pi * 1.1 * t)  # cardiogenic ripple
    q[::97] += 7.0  # single-sample quantization spikes
    assert len(cm.detect_breaths(t, q)) == 0


def test_detect_breaths_empty():
    assert cm.detect_breaths([], []).shape == (0,)


def test_detect_breaths_raises_on_length_mismatch():
    with pytest.raises(ValueError, match="same length"):
        cm.detect_breaths([0.0, 0.01], [1.0])


# --- find_apneas / leakage ---------------------------------------------------------------------
def test_find_apneas_basic():
    events = cm.find_apneas([1.0, 4.0, 16.0, 19.0, 29.0, 40.5])
    assert events == [cm.ApneaEvent(4.0, 16.0, 12.0), cm.ApneaEvent(29.0, 40.5, 11.5)]


def test_find_apneas_exactly_10_s_is_not_an_apnea():
    assert cm.find_apneas([0.0, 10.0, 20.0]) == []


def test_find_apneas_empty():
    assert cm.find_apneas([]) == []
    assert cm.find_apneas([3.0]) == []


def test_leakage_litres_basic():
    t = np.linspace(0, 60, 6001)
    assert cm.leakage_litres(t, np.full_like(t, 1e-4)) == pytest.approx(6.0)  # 0.1 L/s for 60 s


def test_leakage_litres_empty():
    assert cm.leakage_litres([], []) == 0.0


# --- analyze / result ------------------------------------------------------------------------
def test_analyze_basic_against_truth(result, sample):
    truth = sample[1]
    assert result.breaths == truth["breaths"]
    assert result.apnea_count == truth["apnea_count"] == 1
    assert result.duration == pytest.approx(truth["duration"])
    np.testing.assert_allclose(result.breath_times, truth["breath_times"], atol=0.15)
    # AHI counts apneas and hypopneas (issue #13); this recording has no hypopnea
    assert result.hypopnea_count == truth["hypopnea_count"] == 0
    assert result.ahi == result.apnea_index == pytest.approx(3600 / truth["duration"])
    assert result.flow_lpm == pytest.approx(result.flow * 60000)
    assert len(result.time) == len(result.flow) == 6000


@pytest.mark.parametrize("wrap", [bytes, io.BytesIO, lambda c: io.StringIO(c.decode())])
def test_analyze_accepts_uploads(sample, result, wrap):
    assert cm.analyze(wrap(sample[0])).breaths == result.breaths


def test_to_dict_is_json_ready_with_contract_keys(result):
    d = result.to_dict()
    assert {"duration", "breaths", "breath_rate_bpm", "breath_times", "apnea_count", "leakage",
            "ahi", "apnea_events", "skipped_lines",
            # issue #13's keys
            "hypopnea_count", "apnea_index", "tidal_volume_l", "minute_ventilation_lpm",
            "leak_rate_lpm", "events"} == set(d)
    assert d["events"] == [{"type": "apnea", "start_s": e["start"], "end_s": e["end"]}
                           for e in d["apnea_events"]]
    assert json.loads(json.dumps(d)) == d
    assert type(d["breaths"]) is int and type(d["duration"]) is float
    assert d["apnea_events"][0]["duration"] > 10
    assert len(d["breath_times"]) == d["breaths"]


def test_analysis_driver_legacy_tuple(tmp_path, sample, result):
    path = tmp_path / "r.txt"
    path.write_bytes(sample[0])
    rate, apneas, time, flow = cm.analysis_driver(str(path))
    assert (rate, apneas) == (result.breath_rate_bpm, result.apnea_count)
    np.testing.assert_array_equal(flow, result.flow)


def test_leakage_sign_follows_leak():
    content, _ = generate(duration_s=60, rate_bpm=15, leak_lpm=6.0, seed=2)
    # 6 L/min net inflow for a minute ~ 6 L (breaths themselves are volume-balanced)
    assert cm.analyze(content).leakage == pytest.approx(6.0, abs=1.5)


# --- plot ----------------------------------------------------------------------------------------
def test_flow_plot_png_is_valid_png(result):
    png = cm.flow_plot_png(result)
    assert png.startswith(PNG_MAGIC)
    image = Image.open(io.BytesIO(png))
    image.verify()
    assert Image.open(io.BytesIO(png)).size == (1200, 450)


def test_flow_plot_png_long_recording_uses_envelope():
    t = np.arange(0, 3600, 0.01)
    q = np.sin(t)
    env_t, low, high = cm._envelope(t, q, 1000)
    assert len(env_t) == 1000 and low.min() == q.min() and high.max() == q.max()
    assert cm._envelope(t[:100], q[:100], 1000) is None


# --- CLI ---------------------------------------------------------------------------------------
def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "cpap_measurements.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_cli_json_and_plot(tmp_path, sample):
    path = tmp_path / "r.txt"
    path.write_bytes(sample[0])
    out = tmp_path / "flow.png"
    proc = run_cli(path, "--json", "--plot", out)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert metrics["breaths"] == sample[1]["breaths"] and metrics["apnea_count"] == 1
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_cli_text_summary(tmp_path, sample):
    path = tmp_path / "r.txt"
    path.write_bytes(sample[0])
    proc = run_cli(path)
    assert proc.returncode == 0
    assert f"breaths         {sample[1]['breaths']}" in proc.stdout


def test_cli_unusable_file_one_line_error(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"\x00\x01\x02" * 100)
    proc = run_cli(path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "binary" in proc.stderr


def test_cli_missing_file(tmp_path):
    proc = run_cli(tmp_path / "nope.txt")
    assert proc.returncode == 2 and "cannot open" in proc.stderr


def plotted_figure(monkeypatch, result):
    """The matplotlib figure that flow_plot_png saves (captured at savefig)."""
    from matplotlib.figure import Figure
    saved = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig",
                        lambda fig, *a, **kw: (saved.append(fig), original(fig, *a, **kw))[1])
    cm.flow_plot_png(result)
    (figure,) = saved
    return figure


def test_flow_plots_share_one_flow_scale_and_readable_text(monkeypatch):
    """Two recordings of different strength are drawn on the same flow axis (so the monitor's
    side-by-side images compare directly) with text still readable at half size."""
    weak = cm.analyze(generate(duration_s=60, rate_bpm=15, amplitude_lpm=15.0, seed=1)[0])
    strong = cm.analyze(generate(duration_s=90, rate_bpm=12, amplitude_lpm=35.0, seed=2)[0])
    assert weak.flow_lpm.max() < 0.6 * strong.flow_lpm.max()
    axes = [plotted_figure(monkeypatch, r).axes[0] for r in (weak, strong)]
    assert axes[0].get_ylim() == axes[1].get_ylim()
    low, high = axes[0].get_ylim()
    assert low <= strong.flow_lpm.min() and high >= strong.flow_lpm.max()
    for ax in axes:
        sizes = [ax.xaxis.label.get_fontsize(), ax.yaxis.label.get_fontsize(),
                 ax.title.get_fontsize() if ax.get_title() else ax._left_title.get_fontsize(),
                 *(t.get_fontsize() for t in ax.get_xticklabels() + ax.get_yticklabels())]
        assert min(sizes) >= cm.PLOT_FONT_PT - 2 >= 13


def test_flow_outside_the_fixed_scale_widens_it_never_clips(monkeypatch):
    result = cm.analyze(generate(duration_s=60, rate_bpm=15, amplitude_lpm=90.0, seed=3)[0])
    low, high = plotted_figure(monkeypatch, result).axes[0].get_ylim()
    assert high >= result.flow_lpm.max() and low <= result.flow_lpm.min()
