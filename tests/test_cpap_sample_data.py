"""The shipped sample_data/: the analysis must give the README table's expected results."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import cpap_measurements as cm

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data"


def readme_table():
    rows = {}
    for line in (SAMPLE_DIR / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0].endswith(".txt"):
            name, _, duration, breaths, rate, apneas, times, skipped = cells
            rows[name] = dict(duration=float(duration), breaths=int(breaths), rate=float(rate),
                              apneas=int(apneas), times=[] if times == "-" else times.split(", "),
                              skipped=int(skipped))
    return rows


TABLE = readme_table()


def test_at_least_six_small_recordings():
    assert len(TABLE) >= 6
    for name in TABLE:
        size = (SAMPLE_DIR / name).stat().st_size
        assert 0 < size < 1_000_000
    assert {row["apneas"] for row in TABLE.values()} >= {0, 1, 4}
    assert any(row["skipped"] for row in TABLE.values())


@pytest.mark.parametrize("name", sorted(TABLE))
def test_table_matches_truth_json(name):
    truth = json.loads((SAMPLE_DIR / name).with_suffix(".truth.json").read_text())
    row = TABLE[name]
    assert (row["breaths"], row["apneas"], row["skipped"]) == (
        truth["breaths"], truth["apnea_count"], len(truth["bad_lines"]))


@pytest.mark.parametrize("name", sorted(TABLE))
def test_analysis_gives_expected_results(name):
    row = TABLE[name]
    result = cm.analyze(SAMPLE_DIR / name)
    assert result.duration == pytest.approx(row["duration"], abs=0.01)
    assert result.breaths == row["breaths"]
    assert result.breath_rate_bpm == pytest.approx(row["rate"], abs=0.01)
    assert result.apnea_count == row["apneas"]
    assert len(result.skipped_lines) == row["skipped"]
    for event, expected in zip(result.apnea_events, row["times"]):
        start, end = map(float, expected.split("-"))
        assert (event.start, event.end) == (pytest.approx(start, abs=0.3), pytest.approx(end, abs=0.3))
