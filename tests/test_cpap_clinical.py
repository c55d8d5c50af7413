"""Clinical measures of issue #13 (empty / basic / raises, and known truth): breath table,
tidal volume, minute ventilation, leak rate, hypopneas, AHI, the events list."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cpap_measurements as cm
from tools.cpap_synth import SAMPLE_RECORDINGS, SynthConfig, clinical_config, generate

ROOT = Path(__file__).resolve().parents[1]
NEW_KEYS = {"hypopnea_count", "ahi", "apnea_index", "tidal_volume_l", "minute_ventilation_lpm",
            "leak_rate_lpm", "events"}


def sine_breathing(duration_s=120.0, period_s=4.0, ti_s=1.2, te_s=2.0, amp_lpm=30.0, leak_lpm=0.0):
    """Noise-free balanced breathing at 100 Hz: sine inspiration, sine expiration of equal
    volume, a pause, plus a constant leak. Tidal volume = 2 amp ti / pi / 60 L."""
    time_s = np.arange(0, duration_s, 0.01)
    phase_s = time_s % period_s
    flow = np.where(phase_s < ti_s, amp_lpm * np.sin(np.pi * phase_s / ti_s), 0.0)
    expiring = (phase_s >= ti_s) & (phase_s < ti_s + te_s)
    flow[expiring] = -amp_lpm * ti_s / te_s * np.sin(np.pi * (phase_s[expiring] - ti_s) / te_s)
    return time_s, flow + leak_lpm


def table_of(volumes_l, period_s=4.0, breath_s=3.5):
    """A breath table with breaths every ``period_s`` of the given tidal volumes."""
    start_s = np.arange(len(volumes_l)) * period_s
    return {"start_s": start_s, "peak_s": start_s + 0.6, "end_s": start_s + breath_s,
            "tidal_volume_l": np.asarray(volumes_l, dtype=float)}


# --- cycle baselines / breath table -------------------------------------------------------
def test_cycle_baselines_empty_and_single():
    assert len(cm.cycle_baselines_lpm([1.0, 2.0], [])) == 0
    assert cm.cycle_baselines_lpm([1.0, 3.0], [0]) == pytest.approx([2.0])


def test_cycle_baselines_are_the_mean_over_each_cycle():
    flow = np.array([5.0, -3.0, 2.0, 2.0, 9.0])
    np.testing.assert_allclose(cm.cycle_baselines_lpm(flow, [0, 2, 4]), [1.0, 2.0, 2.0])


def test_breath_table_empty_without_breaths():
    table = cm.breath_table(cm.breath_detection(np.arange(5) * 0.01, np.zeros(5)))
    assert set(table) == {"start_s", "peak_s", "end_s", "inspiratory_time_s",
                          "expiratory_time_s", "tidal_volume_l"}
    assert all(len(v) == 0 for v in table.values())


@pytest.mark.parametrize("leak_lpm", [0.0, 6.0])
def test_breath_table_known_breaths(leak_lpm):
    time_s, flow = sine_breathing(leak_lpm=leak_lpm)
    table = cm.breath_table(cm.breath_detection(time_s, flow))
    inner = slice(1, -1)  # the first and last breath touch the recording's ends
    assert len(table["peak_s"]) == 30
    np.testing.assert_allclose(table["tidal_volume_l"][inner], 2 * 30 * 1.2 / np.pi / 60, rtol=0.03)
    np.testing.assert_allclose(table["inspiratory_time_s"][inner], 1.2, atol=0.1)
    np.testing.assert_allclose(table["expiratory_time_s"][inner], 2.0, atol=0.15)
    np.testing.assert_allclose(table["start_s"][inner] % 4.0, 0.0, atol=0.1)
    np.testing.assert_allclose(table["end_s"] - table["start_s"],
                               table["inspiratory_time_s"] + table["expiratory_time_s"])


# --- tidal volume, minute ventilation, leak ------------------------------------------------
def test_median_tidal_volume():
    assert cm.median_tidal_volume_l([]) == 0.0
    assert cm.median_tidal_volume_l([0.3, 0.9, 0.5]) == 0.5


def test_minute_ventilation():
    assert cm.minute_ventilation_lpm([], 60.0) == 0.0
    assert cm.minute_ventilation_lpm([0.5] * 30, 120.0) == pytest.approx(7.5)


@pytest.mark.parametrize("func", [cm.minute_ventilation_lpm, cm.leak_rate_lpm, cm.per_hour])
@pytest.mark.parametrize("duration_s", [0.0, -5.0, float("nan")])
def test_per_duration_measures_raise_on_bad_duration(func, duration_s):
    with pytest.raises(ValueError, match="positive duration"):
        func(1, duration_s)


def test_minute_ventilation_series_per_minute_last_minute_shorter():
    start_s, mv_lpm = cm.minute_ventilation_series([10, 20, 70, 125], [0.5, 0.5, 0.4, 0.3], 5.0, 155.0)
    np.testing.assert_allclose(start_s, [5, 65, 125])
    np.testing.assert_allclose(mv_lpm, [1.0, 0.4, 0.3 / 0.5])


def test_minute_ventilation_series_empty_and_raises():
    start_s, mv_lpm = cm.minute_ventilation_series([], [], 0.0, 30.0)
    assert list(start_s) == [0.0] and list(mv_lpm) == [0.0]
    with pytest.raises(ValueError, match="same length"):
        cm.minute_ventilation_series([1.0], [], 0.0, 30.0)


def test_leak_rate_is_mean_net_flow():
    assert cm.leak_rate_lpm(3.0, 90.0) == pytest.approx(2.0)
    time_s, flow = sine_breathing(duration_s=120.0, leak_lpm=4.0)
    leakage_l = cm.leakage_litres(time_s, flow / cm.M3S_TO_LPM)
    assert cm.leak_rate_lpm(leakage_l, time_s[-1] - time_s[0]) == pytest.approx(4.0, abs=0.05)


def test_leak_rate_series():
    time_s = np.arange(0, 150, 0.5)
    start_s, leak_lpm = cm.leak_rate_series(time_s, np.where(time_s < 60, 2.0, 5.0))
    np.testing.assert_allclose(start_s, [0, 60, 120])
    np.testing.assert_allclose(leak_lpm, [2.0, 5.0, 5.0])
    assert [len(a) for a in cm.leak_rate_series([], [])] == [0, 0]
    with pytest.raises(ValueError, match="same length"):
        cm.leak_rate_series([0.0, 1.0], [1.0])


# --- hypopneas, events, AHI ------------------------------------------------------------------
def test_hypopneas_empty():
    assert cm.find_hypopneas(table_of([])) == []


@pytest.mark.parametrize("reduced_l, n_reduced, expected", [
    (0.2, 4, 1),    # 4 breaths x 4 s: 15.5 s >= 10 s
    (0.25, 4, 1),   # exactly 50 % counts ("at most")
    (0.26, 4, 0),   # just above 50 %
    (0.2, 2, 0),    # 7.5 s: too short
])
def test_hypopnea_rule(reduced_l, n_reduced, expected):
    volumes = [0.5] * 30 + [reduced_l] * n_reduced + [0.5] * 10
    events = cm.find_hypopneas(table_of(volumes))
    assert len(events) == expected
    if expected:
        assert events[0] == cm.Event("hypopnea", 120.0, 120.0 + 4 * (n_reduced - 1) + 3.5)


def test_hypopnea_needs_a_reference():
    assert cm.find_hypopneas(table_of([0.2] * 5 + [0.5] * 10)) == []


def test_hypopnea_reference_is_the_preceding_120_s():
    # 0.2 L is not reduced against old 0.3 L breaths once 0.5 L breaths are > 120 s back
    volumes = [0.5] * 10 + [0.3] * 31 + [0.2] * 4
    assert cm.find_hypopneas(table_of(volumes)) == []
    # ... but is while most breaths of the last 120 s (30 breaths) are 0.5 L
    assert len(cm.find_hypopneas(table_of([0.5] * 25 + [0.3] * 10 + [0.2] * 4))) == 1


def test_hypopnea_breaths_leave_the_reference():
    # a second reduced run right after the first: its reference is still the normal breaths
    volumes = [0.5] * 20 + [0.2] * 4 + [0.5] + [0.2] * 4 + [0.5] * 5
    assert len(cm.find_hypopneas(table_of(volumes))) == 2


def test_hypopnea_is_ended_by_an_apnea():
    table = table_of([0.5] * 20 + [0.2] * 4)
    table["peak_s"][22:] += 12.0  # a gap of > 10 s between reduced breaths 2 and 3
    table["start_s"][22:] += 12.0
    table["end_s"][22:] += 12.0
    assert cm.find_hypopneas(table) == []


def test_hypopneas_raise_on_ragged_table():
    table = table_of([0.5] * 3)
    table["end_s"] = table["end_s"][:2]
    with pytest.raises(ValueError, match="same length"):
        cm.find_hypopneas(table)


def test_events_list_one_ordered_list():
    events = cm.events_list([cm.ApneaEvent(50.0, 65.0, 15.0)], [cm.Event("hypopnea", 20.0, 35.0)])
    assert events == [cm.Event("hypopnea", 20.0, 35.0), cm.Event("apnea", 50.0, 65.0)]
    assert cm.events_list([], []) == []


def test_per_hour():
    assert cm.per_hour(3, 1800.0) == 6.0


# --- the whole analysis against known truth --------------------------------------------------
@pytest.fixture(scope="module")
def hypopnea_night():
    return generate(duration_s=400, rate_bpm=15, amplitude_lpm=40, leak_lpm=4.0,
                    apnea_gaps_s=(20.0,), hypopnea_durations_s=(20.0, 30.0), seed=11)


def test_analyze_hypopneas_and_ahi_against_truth(hypopnea_night):
    content, truth = hypopnea_night
    result = cm.analyze(content)
    assert (truth["hypopnea_count"], truth["apnea_count"]) == (2, 1)
    assert (result.hypopnea_count, result.apnea_count) == (2, 1)
    assert result.ahi == pytest.approx(3 * 3600 / result.duration)
    assert result.apnea_index == pytest.approx(3600 / result.duration)
    assert [e.type for e in result.events] == [e for _, e in sorted(
        [(h["start_s"], "hypopnea") for h in truth["hypopnea_events"]]
        + [(a["start"], "apnea") for a in truth["apnea_events"]])]
    for found, true in zip(result.hypopnea_events, truth["hypopnea_events"]):
        assert found.start_s == pytest.approx(true["start_s"], abs=0.5)
        assert found.end_s == pytest.approx(true["end_s"], abs=1.0)
    assert result.tidal_volume_l == pytest.approx(truth["tidal_volume_l"], rel=0.05)
    assert result.minute_ventilation_lpm == pytest.approx(truth["minute_ventilation_lpm"], rel=0.05)
    assert result.leak_rate_lpm == pytest.approx(truth["leak_rate_lpm"], abs=0.5)
    assert truth["leak_rate_lpm"] == pytest.approx(4.0, abs=0.1)  # balanced breaths: the set leak


def test_breath_table_tidal_volumes_against_truth(hypopnea_night):
    content, truth = hypopnea_night
    table = cm.analyze(content).breath_table
    assert len(table["tidal_volume_l"]) == truth["breaths"]
    np.testing.assert_allclose(table["tidal_volume_l"], truth["tidal_volumes_l"], rtol=0.1)


def test_series_cover_the_recording(hypopnea_night):
    result = cm.analyze(hypopnea_night[0])
    for start_s, values in (result.minute_ventilation_series, result.leak_rate_series):
        assert len(start_s) == len(values) == 7  # 400 s: six whole minutes and a part
        assert start_s[0] == result.time[0]
    np.testing.assert_allclose(result.leak_rate_series[1], result.leak_rate_lpm, atol=1.5)


@pytest.mark.parametrize("seed", range(6))
def test_clinical_nights_known_truth(seed):
    content, truth = generate(clinical_config(seed))
    result = cm.analyze(content)
    assert result.hypopnea_count == truth["hypopnea_count"]
    assert result.apnea_count == truth["apnea_count"]
    assert result.tidal_volume_l == pytest.approx(truth["tidal_volume_l"], rel=0.1)
    assert result.minute_ventilation_lpm == pytest.approx(truth["minute_ventilation_lpm"], rel=0.1)
    assert result.leak_rate_lpm == pytest.approx(truth["leak_rate_lpm"], abs=1.5)


def test_cli_json_has_the_new_keys(tmp_path, hypopnea_night):
    path = tmp_path / "night.txt"
    path.write_bytes(hypopnea_night[0])
    proc = subprocess.run([sys.executable, "cpap_measurements.py", str(path), "--json"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert NEW_KEYS <= set(metrics)
    assert metrics["hypopnea_count"] == 2
    assert {e["type"] for e in metrics["events"]} == {"apnea", "hypopnea"}


# --- the generator's new truth ---------------------------------------------------------------
def test_synth_hypopnea_truth():
    _, truth = generate(duration_s=300, rate_bpm=12, amplitude_lpm=40, hypopnea_durations_s=(25.0,),
                        hypopnea_fraction=0.4, amplitude_jitter=0.0, seed=3)
    assert truth["hypopnea_count"] == 1
    event = truth["hypopnea_events"][0]
    assert 20.0 <= event["end_s"] - event["start_s"] <= 35.0
    volumes = np.array(truth["tidal_volumes_l"])
    inside = (np.array(truth["breath_times"]) > event["start_s"]) & \
             (np.array(truth["breath_times"]) < event["end_s"])
    assert inside.sum() >= 4
    assert volumes[inside].max() <= 0.5 * np.median(volumes[~inside])


def test_synth_without_hypopneas_writes_the_same_sample_data():
    for name, (_, params) in SAMPLE_RECORDINGS.items():
        content, truth = generate(SynthConfig(**params))
        assert content == (ROOT / "sample_data" / f"{name}.txt").read_bytes(), name
        assert truth["hypopnea_count"] == 0


def test_synth_cli_hypopneas(tmp_path):
    out = tmp_path / "h.txt"
    proc = subprocess.run([sys.executable, "-m", "tools.cpap_synth", str(out), "--duration-s", "300",
                           "--amplitude-lpm", "40", "--hypopnea-durations", "20", "30", "--seed", "2"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    truth = json.loads(out.with_suffix(".truth.json").read_text())
    assert truth["hypopnea_count"] == 2 and cm.analyze(out).hypopnea_count == 2


def hypopneas_by_the_letter(table, gap_s=cm.APNEA_GAP_S):
    """The hypopnea rule written out breath by breath, as the docstring states it."""
    start_s, peak_s, end_s, volume_l = (np.asarray(table[k]) for k in
                                        ("start_s", "peak_s", "end_s", "tidal_volume_l"))
    in_event, run, events = np.zeros(len(start_s), bool), [], []

    def close():
        if run and end_s[run[-1]] - start_s[run[0]] >= 10.0:
            in_event[run] = True
            events.append((start_s[run[0]], end_s[run[-1]]))
        run.clear()

    for i in range(len(start_s)):
        if run and peak_s[i] - peak_s[run[-1]] > gap_s:
            close()
        earlier = [j for j in range(i) if start_s[j] >= start_s[i] - 120.0
                   and not in_event[j] and j not in run]
        if earlier and volume_l[i] <= 0.5 * np.median(volume_l[earlier]):
            run.append(i)
        else:
            close()
    close()
    return events


@pytest.mark.parametrize("seed", range(20))
def test_hypopneas_match_the_rule_written_out(seed):
    rng = np.random.default_rng(seed)
    period_s = rng.uniform(2.0, 6.0, size=300)
    period_s[rng.random(300) < 0.02] = 14.0  # a few apneas
    start_s = np.cumsum(period_s)
    volume_l = rng.choice([0.5, 0.45, 0.3, 0.2, 0.15], p=[0.4, 0.2, 0.1, 0.2, 0.1], size=300)
    table = {"start_s": start_s, "peak_s": start_s + 0.5, "end_s": start_s + 0.9 * period_s,
             "tidal_volume_l": volume_l}
    found = [(e.start_s, e.end_s) for e in cm.find_hypopneas(table)]
    assert found == hypopneas_by_the_letter(table)
    assert len(found) > 0


@pytest.mark.parametrize("path", sorted((ROOT / "sample_data").glob("*.txt")), ids=lambda p: p.name)
def test_cli_new_keys_on_every_sample_file(path):
    truth = json.loads(path.with_suffix(".truth.json").read_text())
    proc = subprocess.run([sys.executable, "cpap_measurements.py", str(path), "--json"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert NEW_KEYS <= set(metrics)
    assert metrics["hypopnea_count"] == truth["hypopnea_count"] == 0
    assert metrics["ahi"] == metrics["apnea_index"] == pytest.approx(3600 * truth["apnea_count"] / truth["duration"])
    assert metrics["leak_rate_lpm"] == pytest.approx(truth["leak_rate_lpm"], abs=1.5)
    if truth["config"]["expiration_scale"] == 1.0:  # an unseen expiration lifts the baseline
        assert metrics["tidal_volume_l"] == pytest.approx(truth["tidal_volume_l"], rel=0.1)
        assert metrics["minute_ventilation_lpm"] == pytest.approx(truth["minute_ventilation_lpm"], rel=0.1)
