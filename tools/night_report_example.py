"""The manual's night report example: a synthetic 8-hour night of three recordings.

The night is titrated as a technician would: 2.5 h at 6 cmH2O with many events, 3 h at
8 cmH2O with fewer, 2.5 h at 10 cmH2O with almost none and more leak. Each recording is
made by :mod:`tools.cpap_synth`, analysed, reduced to its stored series and drawn as one
night on the clock::

    python -m tools.night_report_example [OUT.png|OUT.pdf]   # default docs/night_report_example.png
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta
from pathlib import Path

import cpap_measurements as cm
from sleeplab.report import render_report, segment_from_result
from tools.cpap_synth import generate

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "night_report_example.png"
NIGHT_START = datetime(2026, 11, 27, 22, 40)
#: (hours, pressure cmH2O, apneas per hour, hypopneas per hour, leak L/min)
RECORDINGS = ((2.5, 6, 14, 12, 3.0), (3.0, 8, 4, 6, 4.0), (2.5, 10, 1, 2, 7.0))


def _spread(per_hour: float, hours: float, low_s: float, high_s: float) -> tuple:
    """Event lengths (s) from low_s to high_s, ``per_hour`` of them each hour."""
    n = round(per_hour * hours)
    return tuple(low_s + (high_s - low_s) * ((i * 0.618) % 1.0) for i in range(n))


def night_segments() -> list:
    """The three recordings' segments, one after the other from NIGHT_START."""
    segments, start = [], NIGHT_START
    for i, (hours, pressure_cmh2o, apneas, hypopneas, leak_lpm) in enumerate(RECORDINGS):
        content, _ = generate(duration_s=hours * 3600.0, rate_bpm=14, amplitude_lpm=38,
                              leak_lpm=leak_lpm, apnea_gaps_s=_spread(apneas, hours, 12, 35),
                              hypopnea_durations_s=_spread(hypopneas, hours, 15, 35),
                              cpap_cmh2o=pressure_cmh2o, seed=700 + i)
        result = cm.analyze(content)
        segments.append(segment_from_result(result, pressure_cmh2o, start))
        start += timedelta(seconds=result.duration + 60.0)  # a minute to upload and restart
    return segments


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(DEFAULT_OUT), type=cm._report_path)
    args = parser.parse_args(argv)
    Path(args.out).write_bytes(render_report(night_segments(), args.out.rsplit(".", 1)[-1].lower()))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
