"""Benchmark: full analysis vs. bare ``pandas.read_csv`` on 1-hour and 8-hour recordings.

Generates the recordings in a temporary directory, then in the same run times (median of
several runs) ``pandas.read_csv`` of the file alone and ``analyze()`` + ``flow_plot_png()``,
and measures the peak RSS of one full analysis in a fresh subprocess. Prints a markdown table.

    python benchmarks/bench_analysis.py [--hours 1 8] [--repeat 5]

Targets (issue 2): 8 h full analysis <= 2x bare read_csv; peak RSS < 1 GB at 8 h; 1 h < 0.5 s.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cpap_measurements import analyze, flow_plot_png  # noqa: E402
from cpap_synth import SynthConfig, write  # noqa: E402

RSS_CHILD = """
import sys
sys.path.insert(0, {root!r})
from cpap_measurements import analyze, flow_plot_png
flow_plot_png(analyze({path!r}))
# VmHWM is this process image's own peak; ru_maxrss would include the forking parent's
# pages, which Linux carries across exec.
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def median_time(fn, repeat: int) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs, s."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb(path: Path) -> float:
    """Peak resident memory of one analyze + plot in a fresh interpreter, MB."""
    out = subprocess.run([sys.executable, "-c", RSS_CHILD.format(root=str(ROOT), path=str(path))],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024  # kB -> MB


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, nargs="*", default=[1, 8])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for hours in args.hours:
            path = Path(tmp) / f"cpap_{hours:g}h.txt"
            truth = write(path, SynthConfig(duration_s=hours * 3600, rate_bpm=15,
                                            apnea_gaps_s=(15.0, 25.0, 35.0),
                                            seed=1))
            size_mb = path.stat().st_size / 1e6
            read_s = median_time(lambda: pd.read_csv(path), args.repeat)
            result = analyze(path)
            flow_plot_png(result)  # warm-up: first matplotlib use loads fonts
            full_s = median_time(lambda: flow_plot_png(analyze(path)), args.repeat)
            plot_s = median_time(lambda: flow_plot_png(result), args.repeat)
            rss = peak_rss_mb(path)
            rows.append((hours, len(result.time), size_mb, read_s, full_s, full_s / read_s, plot_s, rss,
                         f"{result.breaths}/{truth['breaths']}", f"{result.apnea_count}/{truth['apnea_count']}"))
            print(f"done {hours:g} h", file=sys.stderr)
    print("| recording | rows | size (MB) | bare read_csv (s) | analyze + plot (s) | ratio | plot alone (s) "
          "| peak RSS (MB) | breaths found/true | apneas found/true |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]:g} h | {r[1]:,} | {r[2]:.0f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.2f} "
              f"| {r[7]:.0f} | {r[8]} | {r[9]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
