"""The synthetic recording generator: format, truth, inverse formulas, bad lines, CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cpap_measurements as cm
from tools.cpap_synth import HEADER, SynthConfig, flow_to_adc, generate, synth_flow

ROOT = Path(__file__).resolve().parents[1]


def test_file_format_header_and_seven_columns():
    content, truth = generate(duration_s=10, seed=1)
    lines = content.decode().split("\n")
    assert lines[0] == HEADER and lines[-1] == ""
    assert all(len(line.split(",")) == 7 for line in lines[1:-1])
    assert len(lines) - 2 == 1000
    assert all(field.isdigit() for field in lines[1].split(",")[1:])


def test_crlf_and_time_decimals():
    content, _ = generate(duration_s=6, crlf=True, time_decimals=6, start_time_s=2.685, seed=1)
    lines = content.split(b"\r\n")
    assert lines[1].startswith(b"2.685000,") and b"\n" not in content.replace(b"\r\n", b"")


def test_inverse_formulas_recover_flow():
    """Without noise, the analysis' flow equals the generated flow up to ADC quantization."""
    cfg = SynthConfig(duration_s=20, noise_adc=0.0, seed=3)
    rng = np.random.default_rng(0)
    time_s, flow_lpm, _ = synth_flow(cfg, rng)
    adc = flow_to_adc(flow_lpm, cfg, rng)
    recovered = cm.venturi_flow(adc[:, 0], adc[:, 1], adc[:, 2]) * cm.M3S_TO_LPM
    big = np.abs(flow_lpm) > 20  # where one ADC step is a small part of the flow
    np.testing.assert_allclose(recovered[big], flow_lpm[big], rtol=0.05)
    assert np.all(np.sign(recovered[big]) == np.sign(flow_lpm[big]))


def test_truth_apneas_follow_the_10_s_rule():
    _, truth = generate(duration_s=120, rate_bpm=15, apnea_gaps_s=(12.0, 25.0), seed=4)
    assert truth["apnea_count"] == 2
    gaps = np.diff(truth["breath_times"])
    assert sorted(np.round(gaps[gaps > 10], 3)) == [12.0, 25.0]
    assert truth["breaths"] == len(truth["breath_times"])
    assert truth["breath_rate_bpm"] == pytest.approx(60 * truth["breaths"] / truth["duration"], abs=1e-3)


def test_bad_lines_are_listed_with_line_numbers():
    content, truth = generate(duration_s=30, bad_lines=10, blank_lines=2, seed=5)
    lines = content.decode().split("\n")
    kinds = {b["kind"] for b in truth["bad_lines"]}
    assert kinds == {"nan", "bad data", "empty field", "too few columns", "too many columns", "blank"}
    for bad in truth["bad_lines"]:
        line = lines[bad["line"] - 1]
        assert line == "" or len(line.split(",")) != 7 or "NaN" in line or "bad data" in line or ",," in line


def test_seed_makes_it_deterministic():
    assert generate(duration_s=10, seed=7)[0] == generate(duration_s=10, seed=7)[0]
    assert generate(duration_s=10, seed=7)[0] != generate(duration_s=10, seed=8)[0]


def test_cli_writes_recording_and_truth(tmp_path):
    out = tmp_path / "r.txt"
    proc = subprocess.run([sys.executable, "-m", "tools.cpap_synth", str(out), "--duration-s", "30",
                           "--rate-bpm", "20", "--apnea-gaps", "15", "--seed", "3"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    truth = json.loads(out.with_suffix(".truth.json").read_text())
    assert truth["apnea_count"] == 1 and truth["config"]["rate_bpm"] == 20
    assert cm.analyze(out).breaths == truth["breaths"]
