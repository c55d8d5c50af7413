"""Accuracy of the analysis against generator truth on two seeded sets of recordings.

Plain set (varied rate 6-30 /min, amplitude, I:E, noise, 0-3 apneas of 11-40 s): apnea count
exact on every file, breath count exact on >= 95 % and within +-1 on all, rate within 0.5 /min.
Hard set (leak, weak expiration, cardiogenic ripple, spikes, double humps, pauses just under and
over 10 s, fast breathing): apnea count exact and breath count within +-1 on >= 95 %.
"""
from __future__ import annotations

import pytest

import cpap_measurements as cm
from tools.cpap_synth import HARD_KINDS, generate, hard_config, plain_config

pytestmark = pytest.mark.slow

N_PLAIN = 32
N_HARD = 45  # five of each of the nine hard kinds


def run_set(make_config, n):
    rows = []
    for seed in range(n):
        content, truth = generate(make_config(seed))
        result = cm.analyze(content)
        rows.append((seed, truth, result))
    return rows


@pytest.fixture(scope="module")
def plain_set():
    return run_set(plain_config, N_PLAIN)


@pytest.fixture(scope="module")
def hard_set():
    return run_set(hard_config, N_HARD)


def describe(rows):
    return [(seed, truth["breaths"], r.breaths, truth["apnea_count"], r.apnea_count)
            for seed, truth, r in rows]


def test_plain_set_is_varied(plain_set):
    configs = [truth["config"] for _, truth, _ in plain_set]
    rates = [c["rate_bpm"] for c in configs]
    assert min(rates) < 9 and max(rates) > 26
    assert {len(c["apnea_gaps_s"]) for c in configs} == {0, 1, 2, 3}
    assert sum(t["apnea_count"] for _, t, _ in plain_set) >= N_PLAIN


def test_plain_apnea_count_exact_on_every_file(plain_set):
    wrong = [d for d in describe(plain_set) if d[3] != d[4]]
    assert wrong == []


def test_plain_breath_count(plain_set):
    errors = [r.breaths - truth["breaths"] for _, truth, r in plain_set]
    assert all(abs(e) <= 1 for e in errors), describe(plain_set)
    assert sum(e == 0 for e in errors) >= 0.95 * len(errors)


def test_plain_breath_rate_within_half_bpm(plain_set):
    for seed, truth, r in plain_set:
        assert r.breath_rate_bpm == pytest.approx(truth["breath_rate_bpm"], abs=0.5), seed


def test_plain_apnea_times_match(plain_set):
    for seed, truth, r in plain_set:
        for found, true in zip(r.apnea_events, truth["apnea_events"]):
            assert found.start == pytest.approx(true["start"], abs=0.3), seed
            assert found.end == pytest.approx(true["end"], abs=0.3), seed


def test_hard_set_covers_every_kind(hard_set):
    assert len({HARD_KINDS[seed % len(HARD_KINDS)] for seed, _, _ in hard_set}) == len(HARD_KINDS)


def test_hard_apnea_count_exact_on_95_percent(hard_set):
    exact = sum(truth["apnea_count"] == r.apnea_count for _, truth, r in hard_set)
    assert exact >= 0.95 * len(hard_set), describe(hard_set)


def test_hard_breath_count_within_one_on_95_percent(hard_set):
    close = sum(abs(truth["breaths"] - r.breaths) <= 1 for _, truth, r in hard_set)
    assert close >= 0.95 * len(hard_set), describe(hard_set)


@pytest.mark.parametrize("gap_s, apneas", [(9.5, 0), (10.5, 1)])
def test_pause_just_under_and_over_10_s(gap_s, apneas):
    content, truth = generate(duration_s=60, rate_bpm=15, apnea_gaps_s=(gap_s,), seed=11)
    assert truth["apnea_count"] == apneas
    assert cm.analyze(content).apnea_count == apneas


def test_fast_breathing_45_per_minute():
    content, truth = generate(duration_s=60, rate_bpm=45, amplitude_lpm=20, seed=12)
    assert truth["breaths"] > 40
    assert abs(cm.analyze(content).breaths - truth["breaths"]) <= 1
